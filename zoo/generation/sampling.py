"""Autoregressive generation with a key/value cache: greedy, temperature, top-k, top-p.

:func:`generate` works on any object that follows :class:`zoo.core.model.DecoderLM`'s call
protocol, so a PyTorch model and an ONNX Runtime session wrapper share it:

* ``model(input_ids, attention_mask=..., cache=..., last_only=True)`` returns logits
  (B, T, V) as a torch tensor, and with a cache consumes only the new tokens;
* ``model.new_cache(batch, capacity)`` returns a cache object with ``.length``.

Batches are left-padded: ``attention_mask`` (B, T) marks real tokens with 1.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import DataError

StreamCallback = Callable[[torch.Tensor], None]


# oneDNN's own (blocked) layout of a weight (float32 for batched decode, bfloat16): layer -> (weight's
# identity when packed, packed copy). Weak keys: a model's copies go with it, and the module
# itself holds nothing that deepcopy, pickle or state_dict would meet.
_packed: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


def prepare_for_decode(model, batch: int = 1) -> None:
    """Ready a CPU model's linear layers for inference; values, ties and training stay as they were.

    * Every ``nn.Linear`` computes with oneDNN (:func:`inference_linear`) when no gradient is
      recorded. Its weight is kept [out, in] in memory (a Hugging Face Conv1D weight, loaded as a
      transposed view, is copied once). On an AMD EPYC (Zen 4) with two threads, the 49 products
      of one GPT-2 Small decode step took 16 ms with oneDNN against 35 ms with MKL's
      matrix-vector product (which ``F.linear`` calls and which uses one core there): batch-1
      decode went from 31 to 51 tokens/s.
    * For ``batch`` > 1 each float32 weight also gets a copy in oneDNN's own layout, when the
      machine's free memory holds it with room to spare. A decode step of several rows reads the
      plain [out, in] weight at half the speed it reads a packed one (4 rows: 27 against 13-18 ms
      a step there; batch-4 decode 119 against 186 tokens/s). A single float32 row reads the plain
      weight fastest, so a batch-1 user pays no memory for it. A bfloat16 weight is packed at any
      batch on a CPU that computes bfloat16 natively: the step's products took 12 ms packed
      against 21 with ``F.linear`` at one row, 11 against 26 at four. A copy whose weight has
      changed since (training, ``load_state_dict``) is not used, and the next call makes it again.
    """
    if not isinstance(model, nn.Module) or not onednn_available():
        return
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.device.type == "cpu"]
    for module in layers:
        if not module.weight.is_contiguous():  # e.g. a Conv1D weight loaded as an [in, out] view
            module.weight.data = module.weight.data.contiguous()
        if type(module).forward is nn.Linear.forward and "forward" not in module.__dict__:
            module.forward = functools.partial(inference_linear, module)  # this layer only, not the class
    from zoo.core.limits import cpu_has_bf16

    bf16 = cpu_has_bf16()
    pack_weights([m for m in layers if (m.weight.dtype == torch.float32 and batch > 1)
                  or (m.weight.dtype == torch.bfloat16 and bf16)])


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def weight_identity(module: nn.Linear) -> tuple[int, int]:
    """What changes when a weight's values may have: its storage and its in-place version count."""
    return module.weight.data_ptr(), module.weight._version


def pack_weights(layers: list[nn.Linear]) -> None:
    """Give each layer a packed copy of its weight (see :func:`prepare_for_decode`), all or none:
    none when the copies would leave less than as much memory again free, or when oneDNN cannot
    pack them on this CPU (the layers then compute from their plain weights)."""
    from zoo.core.limits import host_memory_available

    todo = [m for m in layers if m not in _packed or _packed[m][0] != weight_identity(m)]
    for module in todo:
        _packed.pop(module, None)  # a stale copy is never read again: its memory counts as free
    needed = sum(m.weight.numel() * m.weight.element_size() for m in todo)
    available = host_memory_available()
    if not todo or (available is not None and available < 2 * needed):
        return
    with torch.no_grad():
        for module in todo:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(module.weight, None)
            except RuntimeError:  # oneDNN has no packed layout for this dtype on this CPU (bfloat16 without AVX-512)
                for done in todo:
                    _packed.pop(done, None)
                return
            _packed[module] = (weight_identity(module), packed)


def inference_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, computed by oneDNN (the kernel ``torch.compile`` uses for CPU linear layers)
    on the CPU when no gradient is recorded: float32 from the plain weight for one row and from the
    packed one for several when the layer has it; bfloat16 from the packed weight only."""
    weight, bias = module.weight, module.bias
    if (torch.is_grad_enabled() or x.dim() < 2 or x.device.type != "cpu" or x.dtype != weight.dtype
            or weight.dtype not in (torch.float32, torch.bfloat16)):
        return F.linear(x, weight, bias)
    packed = _packed.get(module)
    if packed is not None and packed[0] == weight_identity(module):
        if weight.dtype == torch.bfloat16 or x.numel() > x.shape[-1]:  # one float32 row reads the plain weight fastest
            weight = packed[1]
    elif weight.dtype == torch.bfloat16:
        return F.linear(x, weight, bias)  # oneDNN reads a plain bfloat16 weight no faster
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def next_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from ``logits`` (B, V): greedy when ``temperature`` is 0, else
    sample from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens
    and then to the smallest set whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature  # (B, V)
    vocab = logits.shape[-1]
    nucleus = top_p is not None and top_p < 1.0
    if (top_k is None or top_k >= vocab) and not nucleus:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]  # (B,)
    if top_k is not None and top_k < vocab:
        candidates, order = torch.topk(logits, top_k, dim=-1)  # (B, k), most likely first
    else:
        candidates, order = logits.sort(dim=-1, descending=True)  # (B, V)
    if nucleus:
        probs = candidates.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass ranked above each candidate
        candidates = candidates.masked_fill(before >= top_p, float("-inf"))  # the top one always stays
    choice = torch.multinomial(candidates.softmax(dim=-1), 1, generator=generator)  # (B, 1)
    return order.gather(-1, choice)[:, 0]  # (B,)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` for settings outside their ranges."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def context_limit(model) -> int | None:
    """The longest sequence ``model`` can attend over (its spec's context length), if known."""
    spec = getattr(model, "spec", None)
    return getattr(spec, "context_length", None)


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, generator: torch.Generator | None = None,
             eos_token_id: int | None = None, use_cache: bool = True,
             stream: StreamCallback | None = None) -> torch.Tensor:
    """Continue ``input_ids`` (B, T) by up to ``max_new_tokens``; returns (B, T + n) token ids.

    Greedy when ``temperature`` is 0, else sampling (``top_k``, ``top_p``) from a
    generator seeded with ``seed`` (or the given ``generator``). A row that produces
    ``eos_token_id`` is finished and padded with it; generation stops when every row is.
    ``stream(tokens)`` is called with each step's new tokens (B,) as they are produced.
    ``use_cache=False`` re-runs the whole sequence each step (same tokens, slower).
    A PyTorch model on the CPU first gets :func:`prepare_for_decode`.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    batch, prompt = input_ids.shape
    device = input_ids.device
    total = prompt + max_new_tokens
    limit = context_limit(model)
    if limit is not None and total > limit:
        raise DataError(f"{prompt} prompt tokens + {max_new_tokens} new tokens exceed the context length of "
                        f"{limit}; ask for at most {max(limit - prompt, 0)} new tokens")
    if generator is None and seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the model takes its cheaper unmasked path
    prepare_for_decode(model, batch)  # outside inference mode: the weights stay usable for training
    with torch.inference_mode():
        return sampling_loop(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, generator,
                             eos_token_id, use_cache, stream)


def sampling_loop(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                  temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None,
                  eos_token_id: int | None, use_cache: bool, stream: StreamCallback | None) -> torch.Tensor:
    """The token-by-token loop of :func:`generate` (prefill, then one token a step), its arguments checked.
    (``decode`` names a model's decoder pass, :meth:`zoo.core.model.EncoderDecoder.decode`.)"""
    batch, prompt = input_ids.shape
    device = input_ids.device
    total = prompt + max_new_tokens
    tokens = torch.empty(batch, total, dtype=torch.long, device=device)  # (B, T + N)
    tokens[:, :prompt] = input_ids
    mask = None
    if attention_mask is not None:
        mask = torch.ones(batch, total, dtype=attention_mask.dtype, device=device)  # (B, T + N)
        mask[:, :prompt] = attention_mask
    cache = model.new_cache(batch, total) if use_cache else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)

    length = prompt
    while length < total:
        if cache is None:
            step_ids = tokens[:, :length]  # (B, length)
        else:
            step_ids = tokens[:, cache.length:length]  # (B, new): the whole prompt first, then one token
        step_mask = mask[:, :length] if mask is not None else None
        logits = model(step_ids, attention_mask=step_mask, cache=cache, last_only=True)  # (B, 1, V)
        chosen = next_tokens(logits[:, -1], temperature, top_k, top_p, generator)  # (B,)
        if eos_token_id is not None:
            chosen = chosen.masked_fill(finished, eos_token_id)
            finished |= chosen == eos_token_id
        tokens[:, length] = chosen
        length += 1
        if stream is not None:
            stream(chosen)
        if eos_token_id is not None and bool(finished.all()):
            break
    return tokens[:, :length]
