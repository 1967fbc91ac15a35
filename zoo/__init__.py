"""zoo: a plugin-based transformer model zoo.

The public API mirrors the command line::

    import zoo
    zoo.list_models()                        # names in registry.yaml
    spec = zoo.load_spec("gpt2", {"attention.n_kv_heads": 4})
    model = zoo.build("gpt2-medium")        # random init, GPT-2's scheme
"""

from zoo.builder import build, count_parameters, parameter_table
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.registry import get_registry
from zoo.spec import ModelSpec, list_models, load_spec

__all__ = [
    "build", "count_parameters", "parameter_table", "ZooError", "hookimpl", "get_registry",
    "ModelSpec", "list_models", "load_spec",
]
