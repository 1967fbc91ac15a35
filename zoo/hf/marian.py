"""The zoo's encoder-decoder translator in Hugging Face's ``MarianMTModel`` layout: config,
parameter names, the channel permutation, and the tokenizer files.

``MarianMTModel`` is the 2017 Transformer as transformers has it: post-norm layers,
sinusoidal positions, embeddings scaled by √d_model (``scale_embedding``), one vocabulary
shared by encoder, decoder and the tied output layer, no final layer norm. The zoo's
``post_norm`` translator is the same network with two layout differences:

* **Positions.** The zoo's sinusoid table interleaves sines and cosines (channel ``2i``
  is sin, ``2i+1`` cos, of the same frequency); Marian's puts every sine first and every
  cosine after (channel ``i`` sin, ``d/2 + i`` cos). Marian's table cannot be loaded (it is
  rebuilt when the model is made), so the residual stream is permuted instead:
  Marian's channel ``j`` holds the zoo's channel ``STREAM_ORDER[j]``
  (:func:`stream_permutation`). Every layer is equivariant under a permutation of the
  d_model channels applied to everything that reads the stream (columns of q/k/v and
  ``fc1`` weights, embedding columns, which the tied output layer reads), writes it (rows
  and biases of ``out_proj`` and ``fc2``) or normalises it (LayerNorm's mean and variance
  do not depend on channel order; its gain and bias are permuted). The scale √d_model,
  head split and attention scores are unchanged, so the mapping is exact.
* **Fused projections.** The zoo fuses q/k/v into ``c_attn`` (and cross-attention k/v
  into ``crossattention.c_attn``); Marian keeps ``q_proj``, ``k_proj``, ``v_proj``.

Not exact: Marian's LayerNorm eps is fixed at 1e-5 (``nn.LayerNorm`` default, no config
field); a zoo spec with another eps (the catalog translators use 1e-6) differs by that
eps alone, which :func:`marian_inexact` names and the exporter measures.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from zoo.core.files import TARGET_TOKENIZER, TOKENIZER
from zoo.core.spec import ModelSpec

MARIAN_EPS = 1e-5  # nn.LayerNorm's default; Marian has no config field for it
MARIAN_BASE = 10000.0  # MarianSinusoidalPositionalEmbedding's fixed base
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}  # zoo MLP -> Marian activation_function

# How a Marian parameter touches the residual stream (d_model channels), i.e. which axis the
# permutation applies to: "reads" -> weight columns; "writes" -> weight rows and bias; "norm" -> both.
READS, WRITES, NORM = "reads", "writes", "norm"



def projections(marian_attention: str, parts: str, zoo_module: str) -> dict:
    """Marian's separate ``{q,k,v}_proj`` cut, in order, out of one fused zoo projection."""
    return {f"{marian_attention}.{part}_proj": (zoo_module, i, len(parts), READS) for i, part in enumerate(parts)}


# Marian module under ``model.{encoder,decoder}.layers.{i}.`` -> (zoo module under
# ``{encoder,decoder}.h.{i}.``, chunk index, chunks of the fused zoo projection, role).
ENCODER_LAYER = {
    **projections("self_attn", "qkv", "attn.c_attn"),
    "self_attn.out_proj": ("attn.c_proj", 0, 1, WRITES),
    "self_attn_layer_norm": ("ln_1", 0, 1, NORM),
    "fc1": ("mlp.c_fc", 0, 1, READS),
    "fc2": ("mlp.c_proj", 0, 1, WRITES),
    "final_layer_norm": ("ln_2", 0, 1, NORM),
}
DECODER_LAYER = {
    **ENCODER_LAYER,
    **projections("encoder_attn", "q", "crossattention.q_attn"),
    **projections("encoder_attn", "kv", "crossattention.c_attn"),
    "encoder_attn.out_proj": ("crossattention.c_proj", 0, 1, WRITES),
    "encoder_attn_layer_norm": ("ln_cross_attn", 0, 1, NORM),
}
# The zoo's one token table; an untied Marian (tie_word_embeddings false) ties none of these three itself.
EMBEDDINGS = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
EMBEDDING = "embed.weight"
LM_HEAD = ("lm_head.weight", "lm_head.weight")  # written only when the spec unties it


# --------------------------------------------------------------------------- positions


def stream_permutation(d_model: int) -> torch.Tensor:
    """Marian channel j <- zoo channel ``perm[j]``: the zoo's even (sine) channels, then its odd (cosine) ones."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])  # (d_model,)


# --------------------------------------------------------------------------- spec <-> config


def marian_layout_problem(spec: ModelSpec) -> str | None:
    """Why no ``MarianMTModel`` can hold this spec's model, or None."""
    checks = [
        (spec.is_encoder_decoder, f"{spec.name} is a {spec.family}, not an encoder-decoder"),
        (spec.positional.type == "sinusoidal" and getattr(spec.positional.options, "base", None) == MARIAN_BASE,
         f"positional {spec.positional.type} (Marian has sinusoidal positions with base {MARIAN_BASE:g})"),
        (spec.block.type == "post_norm", f"block {spec.block.type} (Marian's layers are post_norm)"),
        (spec.norm.type == "layer_norm" and getattr(spec.norm.options, "bias", False),
         f"norm {spec.norm.type} (Marian has layer_norm with bias)"),
        (spec.mlp.type in ACTIVATIONS and spec.mlp.options.bias,
         f"mlp {spec.mlp.type} (Marian takes {', '.join(ACTIVATIONS)} with bias)"),
        (spec.attention.type == "multi_head" and spec.attention.options.bias and
         (spec.attention.options.n_kv_heads or spec.n_heads) == spec.n_heads and spec.attention.options.causal is None,
         f"attention {spec.attention.type} (Marian has multi_head with bias, one key/value head per head, "
         "bidirectional encoder and causal decoder)"),
        (spec.cross_attention is not None and spec.cross_attention.type == "cross" and spec.cross_attention.options.bias,
         "cross_attention other than cross with bias (Marian's encoder_attn)"),
    ]
    problems = [why for ok, why in checks if not ok]
    return problems[0] if problems else None


def marian_inexact(spec: ModelSpec) -> list[str]:
    """What differs between the zoo model and its Marian export (empty: the export is exact)."""
    eps = spec.norm.options.eps
    if math.isclose(eps, MARIAN_EPS, rel_tol=1e-9):
        return []
    return [f"layer norm eps {eps:g} (Marian's is fixed at {MARIAN_EPS:g})"]


def marian_config(spec: ModelSpec, dtype: torch.dtype = torch.float32):
    """The ``MarianConfig`` of the spec's model; special ids are the zoo vocabulary's."""
    from transformers import MarianConfig

    from zoo.translation.vocabulary import BOS_ID, EOS_ID, PAD_ID

    return MarianConfig(
        vocab_size=spec.vocab_size, decoder_vocab_size=spec.vocab_size, d_model=spec.d_model,
        encoder_layers=spec.n_layers, decoder_layers=spec.n_decoder_layers,
        encoder_attention_heads=spec.n_heads, decoder_attention_heads=spec.n_heads,
        encoder_ffn_dim=spec.mlp.options.d_ff or 4 * spec.d_model,
        decoder_ffn_dim=spec.mlp.options.d_ff or 4 * spec.d_model,
        activation_function=ACTIVATIONS[spec.mlp.type], max_position_embeddings=spec.context_length,
        scale_embedding=spec.scale_embeddings, dropout=spec.dropout, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None, share_encoder_decoder_embeddings=True, tie_word_embeddings=spec.tie_embeddings,
        architectures=["MarianMTModel"], dtype=dtype,
    )


# --------------------------------------------------------------------------- tensors


def permute_stream(tensor: torch.Tensor, role: str, perm: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a weight [out, in] or a bias/gain [n]) with its d_model axis in Marian's order."""
    if role == READS:
        return tensor[:, perm] if tensor.dim() == 2 else tensor  # a reading layer's bias is not in the stream
    return tensor[perm]  # WRITES (weight rows, bias) and NORM (gain, bias)


def to_marian_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The zoo translator's weights under ``MarianMTModel`` names, stream-permuted (see module doc)."""
    spec = model.spec
    ours = model.state_dict()
    perm = stream_permutation(spec.d_model).to(ours[EMBEDDING].device)
    table = ours[EMBEDDING][:, perm]  # (V, D) in Marian's channel order
    out = {name: table for name in EMBEDDINGS}
    if not spec.tie_embeddings:
        out[LM_HEAD[0]] = ours[LM_HEAD[1]][:, perm]
    for side, n_layers, table in (("encoder", spec.n_layers, ENCODER_LAYER),
                                  ("decoder", spec.n_decoder_layers, DECODER_LAYER)):
        for i in range(n_layers):
            for marian, (zoo, chunk, chunks, role) in table.items():
                for kind in ("weight", "bias"):
                    tensor = ours[f"{side}.h.{i}.{zoo}.{kind}"].chunk(chunks, dim=0)[chunk]
                    out[f"model.{side}.layers.{i}.{marian}.{kind}"] = permute_stream(tensor, role, perm).contiguous()
    return out


def to_marian_model(model: nn.Module, dtype: torch.dtype | None = None):
    """A ``transformers.MarianMTModel`` holding the zoo translator ``model``'s weights, in eval mode."""
    from transformers import MarianMTModel

    dtype = dtype or model.token_table.weight.dtype
    marian = MarianMTModel(marian_config(model.spec, dtype))
    missing, unexpected = marian.load_state_dict(to_marian_state_dict(model), strict=False)
    left = [name for name in missing if not name.endswith(("embed_positions.weight", "final_logits_bias",
                                                           "lm_head.weight"))]
    if left or unexpected:  # a table bug, never a user error
        raise RuntimeError(f"Marian name table incomplete: missing {left[:3]}, unexpected {unexpected[:3]}")
    return marian.to(dtype).eval()


# --------------------------------------------------------------------------- tokenizer


def shared_vocabulary_problem(directory: Path) -> str | None:
    """Why the vocabulary in run ``directory`` cannot become one Hugging Face tokenizer, or None."""
    if (directory / TARGET_TOKENIZER).is_file():
        return (f"{directory} has a per-language vocabulary ({TARGET_TOKENIZER}), which no single Hugging Face "
                "tokenizer can hold; train with the shared vocabulary (the default) to export it")
    if not (directory / TOKENIZER).is_file():
        return f"{directory} holds no {TOKENIZER}; export a run directory written by 'zoo train'"
    return None


def marian_tokenizer(source, context_length: int):
    """A ``PreTrainedTokenizerFast`` around the zoo's shared ``tokenizers`` vocabulary ``source``:
    encoding adds ``</s>`` as the zoo's ``encode_source`` does, decoding drops special tokens."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from zoo.translation.vocabulary import EOS_ID

    tokenizer = Tokenizer.from_str(source.to_str())
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=context_length, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"],
                                   clean_up_tokenization_spaces=False)
