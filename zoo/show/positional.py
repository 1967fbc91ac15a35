"""``zoo show positional``: a positional scheme as a picture.

The picture comes from the ``zoo_positional_picture`` hook, so the plugin that provides
a scheme can draw it; the built-in ``zoo.plugins.pictures`` draws any scheme from its
effects when no plugin does.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from zoo.core.registry import get_plugin_manager, get_registry
from zoo.core.spec import ModelSpec, load_spec, merge, overrides_to_dict, parse_spec
from zoo.errors import PictureError, PluginError, ZooError
from zoo.show.figures import docstring_summary, new_figure

D_MODEL = 128  # the size drawn when no model is named
N_HEADS = 8


def positional_spec(scheme: str, model: str | None = None, d_model: int | None = None,
                    n_heads: int | None = None, length: int = 64,
                    overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The spec whose positional ``scheme`` is drawn.

    With ``model`` (registry name or spec file): that model with its positional scheme
    switched to ``scheme``. Without: a one-layer decoder of ``d_model`` (128) and
    ``n_heads`` (8) whose context is ``length``. ``overrides`` are ``--set`` values, e.g.
    ``{"positional.base": 500.0}``.
    """
    get_registry().entry("positional", scheme)  # an unknown scheme lists the registered ones
    if length < 2:
        raise PictureError(f"--length {length}: show at least 2 positions")
    changes: dict[str, Any] = {"positional": scheme}
    if d_model is not None:
        changes["d_model"] = d_model
    if n_heads is not None:
        changes["attention.n_heads"] = n_heads
    changes.update(overrides or {})
    if model is not None:
        spec = load_spec(model, changes)
        if length > spec.context_length:
            raise PictureError(f"--length {length} is longer than {spec.name}'s context of {spec.context_length} positions")
        return spec
    d_model = d_model or D_MODEL
    n_heads = n_heads or N_HEADS
    if d_model % n_heads:
        raise PictureError(f"--d-model {d_model} is not divisible by --heads {n_heads}; pick sizes that divide")
    raw = {"family": "decoder", "vocab_size": 2, "context_length": length, "d_model": d_model, "n_layers": 1,
           "attention": {"type": "multi_head", "n_heads": n_heads}, "block": "pre_norm", "norm": "layer_norm",
           "mlp": "gelu"}
    return parse_spec(merge(raw, overrides_to_dict(changes)), "picture", scheme)


def fresh_scheme(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The spec's positional scheme on its own, its parameters (if any) seeded like a model's."""
    from zoo.core.builder import init_weights
    from zoo.core.meta import InitMode
    from zoo.core.model import make_component

    with InitMode(seed):
        scheme = make_component(spec, "positional")
        init_weights(scheme, spec)
    return scheme.eval()


def trained_scheme(model: nn.Module, scheme: str, length: int) -> nn.Module:
    """The positional scheme of a loaded ``model``, which must be ``scheme`` and long enough."""
    spec = model.spec
    if spec.positional.type != scheme:
        raise PictureError(
            f"{spec.name} has {spec.positional.type} positions, not {scheme}; "
            f"drop --weights to draw {scheme} positions at its size"
        )
    if length > spec.context_length:
        raise PictureError(f"--length {length} is longer than {spec.name}'s context of {spec.context_length} positions")
    return model.positional


def positional_figure(scheme: nn.Module, spec: ModelSpec, length: int, source: str = ""):
    """The picture of ``scheme`` (an instance) at positions 0..length-1 as a matplotlib Figure.

    ``source`` says where learned weights came from, for the title.
    """
    name = spec.positional.type
    figure = new_figure(13, 5)
    hook = get_plugin_manager().hook.zoo_positional_picture
    try:
        with torch.no_grad():
            drawn = hook(scheme=scheme, spec=spec, length=length, figure=figure)
    except ZooError:
        raise
    except Exception as exc:  # a plugin's drawing bug is reported in one line
        raise PluginError(f"the picture of positional scheme {name!r} failed: {type(exc).__name__}: {exc}") from None
    if not drawn:
        raise PictureError(f"no plugin draws positional scheme {name!r}; "
                           "its plugin can provide one through the zoo_positional_picture hook")
    about = docstring_summary(sys.modules[type(scheme).__module__].__doc__) or docstring_summary(type(scheme).__doc__)
    size = f"d_model {spec.d_model} · {spec.n_heads} heads of {spec.head_dim} · {length} positions"
    if any(True for _ in scheme.parameters()) and source:
        size += f" · {source}"
    figure.suptitle(f"{name} positions: {about}\n{size}" if about else f"{name} positions\n{size}", fontsize=13)
    return figure
