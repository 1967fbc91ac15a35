"""FLOPs per token (the numerator of model FLOP utilisation), checked against hand counts."""

from __future__ import annotations

import pytest

from zoo.core.flops import training_flops, training_flops_per_token
from zoo.core.spec import load_spec
from zoo.training.loop import Utilisation


def matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an (m, k) @ (k, n) product: one multiply and one add per term."""
    return 2 * m * k * n


def test_encoder_decoder_training_flops_match_a_hand_count():
    d, ff, V, S, T = 8, 16, 32, 3, 4
    spec = load_spec("transformer-en-it-small", {"d_model": d, "n_layers": 1, "n_decoder_layers": 1,
                                                  "attention.n_heads": 2, "mlp.d_ff": ff, "vocab_size": V})
    encoder = (matmul(S, d, 3 * d)  # q, k, v projections
               + 2 * matmul(S, d, S)  # q kᵀ and (scores) v, summed over the 2 heads of d/2
               + matmul(S, d, d)  # output projection
               + matmul(S, d, ff) + matmul(S, ff, d))  # MLP
    decoder = (matmul(T, d, 3 * d) + 2 * matmul(T, d, T) + matmul(T, d, d)  # self-attention
               + matmul(T, d, d) + matmul(S, d, 2 * d)  # cross-attention: q from targets, k and v from the source
               + 2 * matmul(T, d, S) + matmul(T, d, d)
               + matmul(T, d, ff) + matmul(T, ff, d)  # MLP
               + matmul(T, d, V))  # LM head
    forward = encoder + decoder
    assert forward == 12_192
    assert training_flops(spec, T, S) == 3 * forward  # backward: a product for each input's gradient
    assert training_flops_per_token(spec, T, S) == pytest.approx(3 * forward / (S + T))


def test_decoder_training_flops_match_a_hand_count():
    d, ff, V, T = 16, 64, 50, 5
    spec = load_spec("gpt2", {"d_model": d, "n_layers": 2, "attention.n_heads": 4, "mlp.d_ff": ff,
                              "vocab_size": V, "context_length": 32, "bos_token_id": 0, "eos_token_id": 0})
    layer = matmul(T, d, 3 * d) + 2 * matmul(T, d, T) + matmul(T, d, d) + matmul(T, d, ff) + matmul(T, ff, d)
    assert training_flops(spec, T) == 3 * (2 * layer + matmul(T, d, V))


def test_utilisation_is_model_flops_per_second_over_the_ceiling():
    utilisation = Utilisation(flops_per_token=2e7, ceiling=2e12, dtype="bfloat16")
    assert utilisation.of(10_000) == pytest.approx(0.1)
    assert Utilisation(2e7, None, "float32").of(10_000) is None
