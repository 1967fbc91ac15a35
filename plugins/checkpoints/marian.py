"""Marian (``MarianMTModel``): the 2017 Transformer as transformers has it, the zoo translator's
family. Post-norm layers, sinusoidal positions, embeddings scaled by √d_model, one vocabulary
shared by encoder, decoder and output layer, no final layer norm; an encoder-decoder, so the
weight table has two stacks: ``{i}`` the encoder's layers, ``{j}`` the decoder's.

Two layout differences, both transforms in the table:

* **Positions.** The zoo's sinusoid table interleaves sines and cosines (channel ``2i`` sin,
  ``2i+1`` cos of one frequency); Marian's puts every sine first (channel ``i`` sin,
  ``d/2 + i`` cos) and rebuilds its table when the model is made, so the residual stream is
  permuted instead (:func:`stream_order`). Every layer is equivariant under a permutation of
  the d_model channels applied to what reads the stream (columns of q/k/v, ``fc1`` and the
  embedding, which the tied output layer reads), writes it (rows and biases of ``out_proj``
  and ``fc2``) or normalises it (LayerNorm's gain and bias): exact, as ``Permuted``.
* **Fused projections.** The zoo fuses q/k/v into ``c_attn`` (cross-attention k/v into
  ``crossattention.c_attn``); Marian keeps ``q_proj``, ``k_proj``, ``v_proj``.

Not exact: Marian's LayerNorm eps is fixed at 1e-5 (no config field); a spec with another
eps (the catalog translators use 1e-6) differs by it alone, which the hf exporter measures.
"""

import torch

from zoo import CheckpointFormat, ConfigField
from zoo.hf.formats import activation_field
from zoo.hf.transforms import Copies, Fused, Permuted, Same

MARIAN_EPS = 1e-5
READS, WRITES = 1, 0  # the axis a layer's width sits on: weight columns, or rows (and biases, gains)


def stream_order(spec) -> torch.Tensor:
    """Marian channel ``j`` <- zoo channel ``order[j]``: the zoo's even (sine) channels, then its odd (cosine) ones."""
    return torch.cat([torch.arange(0, spec.d_model, 2), torch.arange(1, spec.d_model, 2)])  # (d_model,)


def permuted(transform, axis: int) -> Permuted:
    return Permuted(transform, axis, stream_order)


def thirds(spec) -> tuple[int, int, int]:
    return spec.d_model, spec.d_model, spec.d_model


def halves(spec) -> tuple[int, int]:
    return spec.d_model, spec.d_model


def layer(zoo: str, marian: str, cross: bool = False) -> dict:
    """One stack's layer: zoo parameter -> transform (``zoo``/``marian`` the name prefixes)."""
    table = {}
    attentions = [("attn.c_attn", "self_attn", "qkv", thirds)]
    if cross:
        attentions += [("crossattention.q_attn", "encoder_attn", "q", None),
                       ("crossattention.c_attn", "encoder_attn", "kv", halves)]
    for ours, attention, parts, sizes in attentions:
        names = tuple(f"{marian}{attention}.{p}_proj" for p in parts)
        fused = (lambda kind: Fused(tuple(f"{n}.{kind}" for n in names), sizes)) if sizes else \
                (lambda kind: Same(f"{names[0]}.{kind}"))
        table[f"{zoo}{ours}.weight"] = permuted(fused("weight"), READS)
        table[f"{zoo}{ours}.bias"] = fused("bias")  # a reading layer's bias is not in the stream
    writes = {"attn.c_proj": "self_attn.out_proj", "mlp.c_proj": "fc2", "ln_1": "self_attn_layer_norm",
              "ln_2": "final_layer_norm"}
    if cross:
        writes.update({"crossattention.c_proj": "encoder_attn.out_proj", "ln_cross_attn": "encoder_attn_layer_norm"})
    for ours, theirs in writes.items():
        for kind in ("weight", "bias"):
            table[f"{zoo}{ours}.{kind}"] = permuted(Same(f"{marian}{theirs}.{kind}"), WRITES)
    table[f"{zoo}mlp.c_fc.weight"] = permuted(Same(f"{marian}fc1.weight"), READS)
    table[f"{zoo}mlp.c_fc.bias"] = Same(f"{marian}fc1.bias")
    return table


TABLES = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")


def embedding(spec):
    """The shared table; with an untied output layer transformers ties neither copy to it, so all three are written."""
    return permuted(Same(TABLES[0]) if spec.tie_embeddings else Copies(TABLES), READS)


WEIGHTS = {
    "embed.weight": embedding,
    **layer("encoder.h.{i}.", "model.encoder.layers.{i}."),
    **layer("decoder.h.{j}.", "model.decoder.layers.{j}.", cross=True),
}

FIELDS = (
    ConfigField("vocab_size", "vocab_size"),
    ConfigField("decoder_vocab_size", "vocab_size"),
    ConfigField("max_position_embeddings", "context_length"),
    ConfigField("d_model", "d_model"),
    ConfigField("encoder_layers", "n_layers"),
    ConfigField("decoder_layers", "n_decoder_layers"),
    ConfigField("encoder_attention_heads", "attention.n_heads"),
    ConfigField("decoder_attention_heads", "attention.n_heads"),
    ConfigField("encoder_ffn_dim", "mlp.d_ff", write=lambda s: s.d_ff),
    ConfigField("decoder_ffn_dim", "mlp.d_ff", write=lambda s: s.d_ff),
    activation_field(),
    ConfigField("scale_embedding", "scale_embeddings"),
    ConfigField("tie_word_embeddings", "tie_embeddings"),
    ConfigField("decoder_start_token_id", "bos_token_id", checked=False),  # the zoo's decoder starts at <s>
    ConfigField("dropout", "dropout", checked=False),
)

TEMPLATE = {
    "family": "encoder-decoder",
    "vocab_size": 58101,
    "context_length": 512,
    "d_model": 512,
    "n_layers": 6,
    "n_decoder_layers": 6,
    "positional": {"type": "sinusoidal", "base": 10000.0},
    "attention": {"type": "multi_head", "n_heads": 8, "n_kv_heads": None, "bias": True, "causal": None,
                  "out_bias": None},
    "cross_attention": {"type": "cross", "bias": True},
    "block": {"type": "post_norm"},
    "norm": {"type": "layer_norm", "bias": True},
    "mlp": {"type": "relu", "bias": True},
}

MARIAN = CheckpointFormat(
    model_type="marian",
    architecture="MarianMTModel",
    weights=WEIGHTS,
    template=TEMPLATE,
    fields=FIELDS,
    fixed={"share_encoder_decoder_embeddings": True, "forced_eos_token_id": None},
    head=permuted(Same("lm_head.weight"), READS),
    # not weights: the position tables Marian rebuilds; a tied checkpoint's copies of the shared table
    ignored=("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight", *TABLES[1:]),
    zero=("final_logits_bias",),  # the zoo's output layer has no bias: read only when it is all zero
    defaults={"norm": {"eps": MARIAN_EPS}, "init": "xavier"},
    description="Marian: the 2017 Transformer (post-norm, sinusoidal), the zoo translator's family",
)
