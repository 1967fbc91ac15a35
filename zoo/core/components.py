"""The base class and protocol of every plugin kind, and the per-forward context.

Every model component is an ``nn.Module`` constructed as ``cls(spec, options, **site)``,
where ``options`` is an instance of the class's ``Options`` dataclass (checked when
the spec loads) and ``site`` carries where it sits (``layer_index=`` for attention,
``parts=`` for a block). A class may also define ``check_spec(spec, options)``, a static
method returning a one-line problem (or None) that the spec loader reports with the
field path. Plugins subclass the bases below, imported from ``zoo``
(``from zoo import Attention``); a plain ``nn.Module`` with the same constructor and
``forward`` works too.

Initialisation contract (torch's for meta-device construction, as in timm and litgpt):
zoo constructs a model on the meta device, so a constructor declares shapes and its
values are not kept. A random build gives every tensor storage, applies the spec's scheme
to the ``nn.Linear`` and ``nn.Embedding`` layers and calls ``reset_parameters()`` on every
other module that defines one (innermost first); a module holding other parameters or
buffers must define it (the build refuses one that does not). Loading a checkpoint calls
``reset_parameters()`` only on modules whose tensors the checkpoint does not hold (a
plugin's tables). The gpt2 scheme scales the init of the layers that write into the
residual stream, which :class:`Attention` and :class:`MLP` declare by name
(``residual_projection``).

Positional schemes may act in three places, and the model calls all three on every
scheme, so learned, sinusoidal, rotary and ALiBi fit without special cases:

* :meth:`PositionalScheme.embed` adds to the token embeddings (learned, sinusoidal);
* :meth:`PositionalScheme.rotate` turns queries and keys inside attention (rotary);
* :meth:`PositionalScheme.attention_bias` adds to attention scores (ALiBi).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Protocol

import torch
from torch import nn

from zoo.core.dropout import Dropout
from zoo.core.typed import Range


@dataclass
class NoOptions:
    """Options of a component that takes none."""


class PositionalScheme(nn.Module):
    """Base class of positional plugins; each method defaults to doing nothing."""

    Options = NoOptions

    def __init__(self, spec, options) -> None:
        super().__init__()
        self.spec = spec
        self.options = options

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Add positions to token embeddings ``x`` (B, T, D) at ``positions`` (B, T)."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys (B, H, T, hd) of the current tokens at ``positions`` (B, T)."""
        return q, k

    def attention_bias(self, q_index: torch.Tensor, k_index: torch.Tensor, causal: bool) -> torch.Tensor | None:
        """An additive score bias (1, H, Tq, Tk) from query and key sequence indices, or None."""
        return None


@dataclass
class AttentionOptions:
    """What the model reads from every self-attention's options (``spec.n_heads``, and
    ``spec.n_kv_heads`` to size the key/value cache); extend it with your own fields."""

    n_heads: Annotated[int, Range(min=1)]
    n_kv_heads: Annotated[int, Range(min=1)] | None = None  # None: as many as n_heads; 1: multi-query


class Attention(nn.Module):
    """Base class of attention plugins: ``forward(x, ctx) -> y``, both (B, T, D).

    Constructed as ``cls(spec, options, layer_index=i)``; ``layer_index`` names this
    layer's slot in the key/value cache (``ctx.cache.update(self.layer_index, k, v)``).
    Self-attention turns its queries and keys with ``ctx.positional.rotate`` and adds
    ``ctx.mask`` (which already holds the causal mask and any positional bias) to its
    scores, or lets SDPA apply the causal mask when ``ctx.is_causal``; cross-attention
    attends over ``ctx.memory`` under ``ctx.memory_mask``.
    """

    Options = AttentionOptions
    residual_projection: str | None = "c_proj"  # the child nn.Linear writing into the residual stream

    def __init__(self, spec, options, layer_index: int = 0) -> None:
        super().__init__()
        self.layer_index = layer_index


class Norm(nn.Module):
    """Base class of norm plugins: ``cls(spec, options)``, ``forward(x) -> x`` normalised
    over its last dimension (``spec.d_model``).

    It defines no ``__init__`` and no ``forward``, so it mixes with a torch layer without
    changing its parameter names: ``class LayerNorm(Norm, nn.LayerNorm)``.
    """

    Options = NoOptions


class MLP(nn.Module):
    """Base class of feed-forward plugins: ``cls(spec, options)``, ``forward(x) -> y``,
    both (B, T, D). Like :class:`Norm` it defines no ``__init__`` or ``forward``."""

    Options = NoOptions
    residual_projection: str | None = "c_proj"  # the child nn.Linear writing into the residual stream


@dataclass
class BlockParts:
    """The sublayers a block arranges; the builder makes them from the spec."""

    attention: nn.Module
    mlp: nn.Module
    norm: Callable[[], nn.Module]  # a fresh norm each call
    cross_attention: nn.Module | None = None
    dropout: float = 0.0


class Block(nn.Module):
    """Holds ``attn``, ``mlp``, ``crossattention`` and their norms under GPT-2's names.

    Subclasses define ``forward(x, ctx)`` and say whether the stack needs a final norm
    (``final_norm``): pre-norm layouts leave the residual stream un-normalised.
    """

    Options = NoOptions
    final_norm = True

    def __init__(self, spec, options, parts: BlockParts) -> None:
        super().__init__()
        self.ln_1 = parts.norm()
        self.attn = parts.attention
        if parts.cross_attention is not None:
            self.ln_cross_attn = parts.norm()
            self.crossattention = parts.cross_attention
        else:
            self.crossattention = None
        self.ln_2 = parts.norm()
        self.mlp = parts.mlp
        self.dropout = Dropout(parts.dropout)


@dataclass(frozen=True)
class ExportOption:
    """One option an exporter takes: ``zoo export --format NAME --the-option VALUE`` on the
    command line (shown under ``zoo export --help``) and ``the_option=VALUE`` in
    ``zoo.export(...)``.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` (a flag) or a tuple of the allowed
    strings; ``default`` is what the exporter gets when the option is not given.
    """

    name: str  # the Python keyword; the command line spells it --name-with-dashes
    help: str
    type: Any = str
    default: Any = None
    metavar: str | None = None
    command_line: bool = True  # False: passed by zoo itself or from Python only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Exporter:
    """Base class of export formats: ``exporter(model, spec, out_dir, **options) -> manifest``.

    Register an instance (``registry.add("exporter", "names", NamesExporter())``). The call
    writes its files into ``out_dir`` (a fresh temporary directory that the zoo renames into
    place once the call returns) and returns a manifest dictionary with a ``files`` mapping.

    ``options`` declares what the format takes (:class:`ExportOption`); ``zoo export`` adds
    each to its command line, refuses another format's, and passes the declared ones, as
    ``zoo.export`` does, together with the two every exporter gets: ``verify`` (bool) and
    ``tokenizer_dir`` (the run or Hugging Face directory the weights came from, or None).
    :meth:`check` refuses bad values before the model is built; ``hints`` says, for an
    option of another format given to this one, what to use instead.
    """

    options: tuple[ExportOption, ...] = ()
    hints: dict[str, str] = {}

    def check(self, spec, **options: Any) -> None:
        """Raise :class:`zoo.errors.ExportError` (one line) for option values this format
        cannot honour for ``spec``; called before any work. The default accepts all."""

    def __call__(self, model: nn.Module, spec, out_dir: Path, **options: Any) -> dict:
        raise NotImplementedError(f"{type(self).__qualname__} must define __call__(model, spec, out_dir, **options)")

    def __repr__(self) -> str:  # how ``zoo plugins`` names an instance
        return type(self).__qualname__


class LayerCache(Protocol):
    """A key/value cache, as the model, attention and the decoding loops use it
    (:class:`zoo.core.cache.KVCache`; while exporting, the graph's ``PastKeyValues``, which
    beam search never reorders).

    Attention calls :meth:`update`; the model reads :attr:`length` (tokens cached: the
    position of the next one) and calls :meth:`advance` after each forward pass;
    cross-attention keeps its keys and values per layer in :attr:`memory`; beam search
    calls :meth:`reorder` when it keeps some rows."""

    length: int  # tokens stored per row
    memory: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer → cross-attention (keys, values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s new keys and values (B, KV, T, hd); return all so far (B, KV, length + T, hd)."""
        ...

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens as cached, once every layer has stored them."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) of the batch, in that order (beam search)."""
        ...


@dataclass
class Context:
    """Everything attention needs besides its input, computed once per forward pass."""

    positions: torch.Tensor  # (B, T) position of each current token
    positional: PositionalScheme
    mask: torch.Tensor | None = None  # bool (allowed) or float (additive), broadcast to (B, H, Tq, Tk)
    is_causal: bool = False  # let SDPA apply the causal mask itself
    cache: LayerCache | None = None
    memory: torch.Tensor | None = None  # encoder output (B, S, D) for cross-attention
    memory_mask: torch.Tensor | None = None  # bool (B, 1, 1, S)
    memory_cache: dict | None = None  # layer -> precomputed cross-attention (k, v)
