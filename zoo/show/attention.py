"""``zoo show attention``: attention maps as heat maps with the tokens on the axes.

``scaled_dot_product_attention`` does not return its weights, and the model classes
are not changed to return them. Instead :func:`capture_attention` records them during one
forward pass, in one of two ways:

- a module with an ``attend(q, k, v, mask, is_causal)`` method (zoo's multi-head and cross
  attention, and plugins built on them) has it wrapped and called a second time with ``v``
  set to the identity: an attention whose output is a weighted sum of the values returns
  exactly its weight matrix then, masks and biases included;
- any other :class:`zoo.Attention` (a plugin that writes its own ``forward``) runs under a
  torch function mode that sees what it calls: ``F.scaled_dot_product_attention``, whose
  weights are computed from the same arguments (:func:`sdpa_weights`), or a softmax over the
  last dimension of a (B, H, Tq, Tk) tensor, which is taken as the weights. So any attention
  that computes softmax(QKᵀ) somewhere can be drawn, however the plugin is written.

For a decoder the maps are its causal self-attention; for an encoder-decoder (a
translation run directory) the default is the cross-attention alignment between the
source tokens and target tokens, the target either given or produced by greedy decoding.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from zoo.core.files import TOKENIZER
from zoo.errors import PictureError, first_line
from zoo.show.figures import new_figure

KINDS = ("decoder", "encoder", "cross")  # decoder self-attention, encoder self-attention, cross-attention
MAX_PANELS = 256  # more maps than this are unreadable in one picture; pick --layer or --head


@dataclass
class AttentionRecord:
    """The weights one attention module used in one call."""

    module: str  # its name in the model, e.g. "stack.h.3.attn"
    kind: str  # "decoder", "encoder" or "cross"
    layer: int
    weights: torch.Tensor  # (B, H, Tq, Tk), rows sum to 1


def attention_site(name: str) -> tuple[str, int]:
    """(kind, layer) of the attention module called ``name``: ``decoder.h.2.crossattention`` → ("cross", 2)."""
    match = re.search(r"(?:^|\.)h\.(\d+)\.", name)
    layer = int(match.group(1)) if match else 0
    if name.endswith("crossattention"):
        return "cross", layer
    return ("encoder" if name.startswith("encoder.") else "decoder"), layer


def _recording_attend(original, records: list[AttentionRecord], name: str):
    kind, layer = attention_site(name)

    def attend(q, k, v, mask, is_causal):
        B, _, Tk, _ = k.shape
        identity = torch.eye(Tk, dtype=q.dtype, device=q.device).expand(B, k.shape[1], Tk, Tk)  # (B, KV, Tk, Tk)
        weights = original(q, k, identity, mask, is_causal)  # (B, H, Tq, Tk)
        records.append(AttentionRecord(name, kind, layer, weights.detach().float().cpu()))
        return original(q, k, v, mask, is_causal)

    return attend


def sdpa_weights(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False) -> torch.Tensor:
    """The weights ``F.scaled_dot_product_attention`` applies for these arguments (no dropout):
    softmax(q kᵀ · scale + mask), key heads shared across query heads as ``enable_gqa`` does."""
    if key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.shape[-1]) if scale is None else scale)
    if is_causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1),
                                    float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1)


SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}


class FunctionRecorder(torch.overrides.TorchFunctionMode):
    """Record, for the attention module running now (``current``), the weights of its first
    ``scaled_dot_product_attention`` call or softmax over the keys of a (B, H, Tq, Tk) tensor."""

    def __init__(self, records: list[AttentionRecord]) -> None:
        super().__init__()
        self.records = records
        self.current: str | None = None
        self.recorded = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.current is None or self.recorded:
            return out
        weights = None
        if func is torch.nn.functional.scaled_dot_product_attention:
            weights = sdpa_weights(*args, **kwargs)
        elif func in SOFTMAXES and isinstance(out, torch.Tensor) and out.dim() == 4:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            weights = out if dim in (-1, 3) else None
        if weights is not None:
            kind, layer = attention_site(self.current)
            self.records.append(AttentionRecord(self.current, kind, layer, weights.detach().float().cpu()))
            self.recorded = True
        return out

    def enter(self, name: str):
        def hook(module, args):
            self.current, self.recorded = name, False
        return hook

    def leave(self, module, args, output) -> None:
        self.current = None


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[AttentionRecord]]:
    """Record the attention weights of every attention module while the block runs (see the
    module docstring for how); the list yielded fills up as the model is called. The modules
    are left exactly as they were on exit."""
    from zoo.core.components import Attention

    records: list[AttentionRecord] = []
    wrapped = []  # (module, the attend it had on the instance itself, if any)
    recorder = FunctionRecorder(records)
    hooks = []
    for name, module in model.named_modules():
        if callable(getattr(type(module), "attend", None)):
            wrapped.append((module, module.__dict__.get("attend")))
            module.attend = _recording_attend(module.attend, records, name)
        elif isinstance(module, Attention):
            hooks += [module.register_forward_pre_hook(recorder.enter(name)),
                      module.register_forward_hook(recorder.leave)]
    if not wrapped and not hooks:
        raise PictureError(f"{type(model).__name__} has no attention module (a zoo.Attention) to capture")
    try:
        with recorder if hooks else contextlib.nullcontext():
            yield records
    finally:
        for hook in hooks:
            hook.remove()
        for module, own in wrapped:
            if own is None:
                del module.attend
            else:
                module.attend = own


# --------------------------------------------------------------------------- tokens


def backend_tokenizer_for(spec, directory: str | Path | None = None):
    """A decoder's tokenizer as a ``tokenizers.Tokenizer``: ``tokenizer.json`` in its model
    directory, else GPT-2's (the copy shipped with the zoo) for a spec whose tokenizer is ``gpt2``."""
    from tokenizers import Tokenizer

    if directory is not None and (Path(directory) / TOKENIZER).is_file():
        path = Path(directory) / TOKENIZER
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a plain Exception for any parse error
            raise PictureError(f"{path}: not a valid tokenizers JSON file ({first_line(exc)})") from None
    if spec.tokenizer == "gpt2":
        from zoo.generation.tokenizer import gpt2_tokenizer

        return gpt2_tokenizer().backend_tokenizer
    where = directory if directory is not None else spec.name
    raise PictureError(f"{where}: no {TOKENIZER} here and tokenizer {spec.tokenizer!r} is not gpt2; "
                       f"give a model directory that holds its {TOKENIZER}")


def token_label(tokenizer, token_id: int) -> str:
    """A token as a readable axis label: its text, with spaces and newlines made visible."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    text = text.replace("\n", "↵").replace("\t", "⇥").strip()
    return text or "␣"


def encode(tokenizer, text: str, spec, what: str) -> list[int]:
    """Token ids of ``text`` (no special tokens added), checked against the model."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise PictureError(f"{what} {text!r} has no tokens; give some text")
    too_big = [i for i in ids if i >= spec.vocab_size]
    if too_big:
        raise PictureError(f"{what}: token id {too_big[0]} is outside {spec.name}'s vocabulary of {spec.vocab_size}; "
                           "the tokenizer does not belong to this model")
    return ids


# --------------------------------------------------------------------------- maps


@dataclass
class AttentionMaps:
    """Attention weights of one kind, every layer, for one text."""

    kind: str  # "decoder", "encoder" or "cross"
    weights: torch.Tensor  # (layers, H, Tq, Tk)
    query_tokens: list[str]
    key_tokens: list[str]
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]


def stack_records(records: list[AttentionRecord], kind: str) -> torch.Tensor:
    """The first batch row's weights of ``kind``, by layer: (layers, H, Tq, Tk)."""
    chosen = sorted((r for r in records if r.kind == kind), key=lambda r: r.layer)
    if not chosen:
        raise PictureError(f"the model has no {kind} attention to show; choose one of: "
                           f"{', '.join(sorted({r.kind for r in records}))}")
    return torch.stack([r.weights[0] for r in chosen])


def decoder_attention(model: nn.Module, tokenizer, text: str) -> AttentionMaps:
    """Causal self-attention maps of a decoder-only ``model`` over ``text``."""
    spec = model.spec
    ids = encode(tokenizer, text, spec, "TEXT")
    if len(ids) > spec.context_length:
        raise PictureError(f"TEXT is {len(ids)} tokens, longer than {spec.name}'s context of {spec.context_length}")
    labels = [token_label(tokenizer, i) for i in ids]
    with torch.no_grad(), capture_attention(model) as records:
        model(torch.tensor([ids]))
    return AttentionMaps("decoder", stack_records(records, "decoder"), labels, labels,
                         title=f"{spec.name} self-attention")


def target_label(vocabulary, token_id: int) -> str:
    """A target-side id as a label: special tokens by name, others through the target tokenizer."""
    from zoo.translation.vocabulary import SPECIAL_TOKENS

    if token_id < len(SPECIAL_TOKENS):
        return SPECIAL_TOKENS[token_id]
    return token_label(vocabulary.target, token_id - vocabulary.target_offset)


def translation_attention(model: nn.Module, vocabulary, text: str, target: str | None = None,
                          kind: str = "cross", max_tokens: int | None = None) -> AttentionMaps:
    """Attention of an encoder-decoder over source ``text`` (tokens + ``</s>``) and a target.

    ``vocabulary`` is the run's :class:`zoo.translation.vocabulary.Vocabulary`. The target is ``target``
    or the model's own greedy translation (at most ``max_tokens``, by default as many as
    ``zoo translate`` allows). The decoder reads ``<s>`` + the target, so each row of the
    decoder and cross-attention maps is labelled with the token produced at that step.
    """
    from zoo.translation.vocabulary import BOS_ID, EOS_ID
    from zoo.translation.search import Translator, greedy_search

    spec = model.spec
    src_ids = vocabulary.encode_source([text])[0]
    if len(src_ids) < 2:
        raise PictureError(f"TEXT {text!r} has no tokens; give some text")
    if target is not None:
        produced = vocabulary.encode_target([target])[0][1:]  # tokens + </s>
        how = "given target"
    else:
        limit = max_tokens or Translator(model, vocabulary).max_length(len(src_ids))
        with torch.no_grad():
            tokens = greedy_search(model, torch.tensor([src_ids]), torch.ones(1, len(src_ids), dtype=torch.long),
                                   limit)[0]
        produced = tokens + [EOS_ID] if len(tokens) < limit else tokens
        how = "greedy translation" + ("" if len(tokens) < limit else f", cut at {limit} tokens")
    for what, ids in (("TEXT", src_ids), ("target", produced)):
        if len(ids) > spec.context_length:
            raise PictureError(f"{what} is {len(ids)} tokens, longer than {spec.name}'s context of {spec.context_length}")
        if max(ids) >= spec.vocab_size:
            raise PictureError(f"{what}: token id {max(ids)} is outside {spec.name}'s vocabulary of {spec.vocab_size}; "
                               "the tokenizer does not belong to this model")
    tgt_in = [BOS_ID] + produced[:-1]
    model.eval()
    with torch.no_grad(), capture_attention(model) as records:
        model(torch.tensor([src_ids]), torch.tensor([tgt_in]))
    source = [token_label(vocabulary.source, i) for i in src_ids]
    produced_labels = [target_label(vocabulary, i) for i in produced]
    queries = {"encoder": source, "decoder": produced_labels, "cross": produced_labels}[kind]
    keys = {"encoder": source, "decoder": [target_label(vocabulary, i) for i in tgt_in], "cross": source}[kind]
    name = {"encoder": "encoder self-attention", "decoder": "decoder self-attention",
            "cross": "cross-attention alignment"}[kind]
    translation = vocabulary.decode_target([produced])[0]
    translation = translation if len(translation) <= 80 else translation[:79] + "…"
    return AttentionMaps(kind, stack_records(records, kind), queries, keys, title=f"{spec.name} {name}",
                         notes=[f"{how}: {translation!r}"])


def attention_maps(model: nn.Module, text: str, directory: str | Path | None = None, kind: str | None = None,
                   target: str | None = None, max_tokens: int | None = None) -> AttentionMaps:
    """The attention maps of ``model`` over ``text``.

    A decoder shows its self-attention, tokenised by ``directory``'s ``tokenizer.json`` or
    GPT-2's tokenizer. An encoder-decoder needs its run ``directory`` (for its vocabulary)
    and shows ``kind``: ``cross`` (default, the source-target alignment), ``encoder`` or
    ``decoder`` self-attention, over ``target`` or its own greedy translation.
    """
    spec = model.spec
    if spec.is_encoder_decoder:
        from zoo.translation.vocabulary import Vocabulary

        kind = kind or "cross"
        if kind not in KINDS:
            raise PictureError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
        if directory is None or not (Path(directory) / TOKENIZER).is_file():
            raise PictureError(f"{spec.name} is a translation model: give its run directory (with {TOKENIZER}) "
                               "as MODEL, e.g. the one 'zoo train' wrote")
        return translation_attention(model, Vocabulary.load(directory), text, target, kind, max_tokens)
    if kind not in (None, "decoder"):
        raise PictureError(f"--kind {kind}: {spec.name} is a decoder; it has only decoder self-attention")
    if target is not None:
        raise PictureError(f"--target is for translation models; {spec.name} is a decoder")
    model.eval()
    return decoder_attention(model, backend_tokenizer_for(spec, directory), text)


# --------------------------------------------------------------------------- picture


def select(maps: AttentionMaps, layer: int | None, head: int | str | None) -> list[tuple[str, torch.Tensor]]:
    """The panels to draw, each (title, (Tq, Tk) weights), checking ``layer`` and ``head``.

    ``head`` is an index or ``"mean"`` (the average over heads)."""
    n_layers, n_heads = maps.n_layers, maps.n_heads
    if layer is not None and not 0 <= layer < n_layers:
        raise PictureError(f"--layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    if isinstance(head, str) and head != "mean":
        raise PictureError(f"--head {head!r}: give a head index (0-{n_heads - 1}) or 'mean'")
    if isinstance(head, int) and not 0 <= head < n_heads:
        raise PictureError(f"--head {head} is out of range: each layer has {n_heads} heads (0-{n_heads - 1})")
    layers = range(n_layers) if layer is None else [layer]
    panels = []
    for l in layers:
        if head == "mean":
            panels.append((f"layer {l} · mean of heads", maps.weights[l].mean(0)))
        elif head is not None:
            panels.append((f"layer {l} · head {head}", maps.weights[l, head]))
        else:
            panels += [(f"layer {l} · head {h}", maps.weights[l, h]) for h in range(n_heads)]
    if len(panels) > MAX_PANELS:
        raise PictureError(f"{len(panels)} maps ({n_layers} layers × {n_heads} heads) are too many for one picture; "
                           "pick --layer L or --head H (or --head mean)")
    return panels


def grid_shape(n_panels: int, columns_hint: int) -> tuple[int, int]:
    """Rows and columns: one row per layer when every head is shown, else near-square."""
    if columns_hint and n_panels % columns_hint == 0 and n_panels // columns_hint > 1:
        return n_panels // columns_hint, columns_hint
    columns = math.ceil(math.sqrt(n_panels))
    return math.ceil(n_panels / columns), columns


def attention_figure(maps: AttentionMaps, layer: int | None = None, head: int | str | None = None):
    """Heat maps of ``maps`` (a grid: layers × heads, or the chosen layer/head) with the
    query tokens down the side, key tokens along the bottom and one shared colour bar.

    The layout is computed in inches rather than by constrained layout, which would take
    most of the time for a grid of a hundred maps."""
    panels = select(maps, layer, head)
    every_head = layer is None and head is None
    rows, columns = grid_shape(len(panels), maps.n_heads if every_head else 0)
    n_q, n_k = len(maps.query_tokens), len(maps.key_tokens)
    label_size = 9 if max(n_q, n_k) <= 24 else 7
    char_w = label_size / 72 * 0.62  # inches per character of a tick label
    label_w = max(map(len, maps.query_tokens)) * char_w + 0.15
    label_h = max(map(len, maps.key_tokens)) * char_w + 0.15
    smallest = 3.5 if len(panels) == 1 else 2.4 if len(panels) <= 6 else 1.4  # one map, inches
    cell_w = min(max(smallest, 0.2 * n_k), 8.0)
    cell_h = min(max(smallest, 0.2 * n_q), 8.0)
    pad_w, pad_h = 0.2, 0.4  # between maps: room for each map's title
    title_lines = 1 + len(maps.notes)
    left, right = 0.45 + label_w, 1.3  # supylabel + tick labels; colour bar
    top, bottom = 0.35 + 0.25 * title_lines, 0.45 + label_h  # titles; tick labels + supxlabel
    grid_w = columns * cell_w + (columns - 1) * pad_w
    grid_h = rows * cell_h + (rows - 1) * pad_h
    width, height = left + grid_w + right, top + pad_h + grid_h + bottom
    figure = new_figure(width, height)
    figure.set_layout_engine("none")
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=left / width, right=(left + grid_w) / width, bottom=bottom / height,
        top=(bottom + grid_h) / height, wspace=pad_w / cell_w, hspace=pad_h / cell_h))
    vmax = max(float(w.max()) for _, w in panels)
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.set_axis_off()
            continue
        title, weights = panels[index]
        image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest",
                          aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n_k))
        ax.set_yticks(range(n_q))
        lowest = index + columns >= len(panels)  # no map below it in its column
        ax.set_xticklabels(maps.key_tokens if lowest else [], rotation=90, fontsize=label_size)
        ax.set_yticklabels(maps.query_tokens if index % columns == 0 else [], fontsize=label_size)
        ax.tick_params(length=2)
    key_label, query_label = {
        "decoder": ("key token (attended to)", "query token"),
        "encoder": ("source token (attended to)", "source token"),
        "cross": ("source token", "target token produced"),
    }[maps.kind]
    figure.text((left + grid_w / 2) / width, 0.15 / height, key_label, ha="center", va="bottom", fontsize=10)
    figure.text(0.15 / width, (bottom + grid_h / 2) / height, query_label, ha="left", va="center", fontsize=10,
                rotation=90)
    bar_h = min(grid_h, 5.0)
    bar = figure.add_axes(((left + grid_w + 0.35) / width, (bottom + (grid_h - bar_h) / 2) / height,
                           0.18 / width, bar_h / height))
    figure.colorbar(image, cax=bar, label="attention weight")
    figure.suptitle("\n".join([maps.title, *maps.notes]), fontsize=12, y=1 - 0.15 / height, va="top")
    return figure
