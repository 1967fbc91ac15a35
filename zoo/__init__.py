"""zoo: a plugin-based transformer model zoo.

The public API mirrors the command line; names are imported on first use, so
``import zoo`` stays light and the rooms behind it can move without breaking users::

    import zoo
    zoo.list_models()                              # names in registry.yaml
    spec = zoo.load_spec("gpt2", {"attention.n_kv_heads": 4})
    model = zoo.build("gpt2-medium")              # random init, GPT-2's scheme
    model = zoo.load("out/gpt2")                  # a zoo or Hugging Face directory, or a hub id
    zoo.save(model, "out/gpt2-medium")           # model.safetensors + spec.yaml + manifest.json
    tokens = zoo.generate(model, input_ids, max_new_tokens=20)
    zoo.export(model, "out/gpt2-onnx", "onnx", kv_cache=True)
    report = zoo.verify(model)                    # parity with Hugging Face's GPT2LMHeadModel
    zoo.train("baby-gpt", "input.txt", "runs/baby", max_minutes=3)   # a run directory, as zoo train writes

Plugin authors find the hook marker and every component base class here too
(``zoo.hookimpl``, ``zoo.PositionalScheme``, ``zoo.Attention``, ``zoo.Block``, ...).
"""

from __future__ import annotations

import importlib

# public name -> "module:attribute"
_API = {
    # specs and the model catalog
    "ModelSpec": "zoo.core.spec:ModelSpec",
    "list_models": "zoo.core.catalog:list_models",
    "load_spec": "zoo.core.spec:load_spec",
    # building and loading
    "build": "zoo.core.builder:build",
    "count_parameters": "zoo.core.meta:count_parameters",
    "parameter_table": "zoo.core.meta:parameter_table",
    "save": "zoo.core.model_dir:save",
    "load": "zoo.hf.checkpoint:load",
    "load_weights": "zoo.hf.checkpoint:load_weights",
    # using a model
    "generate": "zoo.generation.sampling:generate",
    "verify": "zoo.hf.verify:verify",
    "export": "zoo.core.export:export",
    # training (every family: a decoder learns text, an encoder-decoder translates)
    "train": "zoo.training.run:train",
    "evaluate": "zoo.training.evaluate:evaluate",
    # plugins
    "hookimpl": "zoo.core.hookspecs:hookimpl",
    "get_registry": "zoo.core.registry:get_registry",
    "NoOptions": "zoo.core.components:NoOptions",
    "Range": "zoo.core.typed:Range",
    "PositionalScheme": "zoo.core.components:PositionalScheme",
    "Attention": "zoo.core.components:Attention",
    "Block": "zoo.core.components:Block",
    "BlockParts": "zoo.core.components:BlockParts",
    "Norm": "zoo.core.components:Norm",
    "MLP": "zoo.core.components:MLP",
    "Exporter": "zoo.core.components:Exporter",
    "ExportOption": "zoo.core.components:ExportOption",
    "Context": "zoo.core.components:Context",
    "CheckpointFormat": "zoo.hf.formats:CheckpointFormat",
    "ConfigField": "zoo.hf.formats:ConfigField",
    # errors
    "ZooError": "zoo.errors:ZooError",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
