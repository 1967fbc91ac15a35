"""How many floating-point operations a model does per token: the numerator of utilisation.

Counted, not estimated by formula: one training pass (forward and backward) of the model
assembled on the meta device runs under ``torch.utils.flop_counter.FlopCounterMode``,
which adds up every matrix product (``mm``, ``addmm``, ``bmm``, attention kernels) at
2 FLOP per multiply-add. Nothing is allocated and nothing is computed, so it takes
milliseconds for any size and counts whatever a plugin's components do. Element-wise
work (norms, softmax, activations) is left out, as model FLOP utilisation (MFU, Chowdhery
et al., 2022) leaves it out: it is a small share of the work and no matrix unit runs it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.core.meta import assemble
from zoo.core.spec import ModelSpec


def training_flops(spec: ModelSpec, target_length: int, source_length: int = 0) -> int:
    """FLOPs of one forward and backward pass of one unpadded sequence (batch of one).

    A decoder reads ``target_length`` tokens; an encoder-decoder reads ``source_length``
    source tokens and ``target_length`` target tokens (teacher forcing, logits at every
    target position). The backward pass is counted as it runs (about twice the forward).
    """
    model = assemble(spec).train()
    target = torch.zeros(1, target_length, dtype=torch.long, device="meta")  # (1, T)
    with FlopCounterMode(display=False) as counter:
        if spec.is_encoder_decoder:
            source = torch.zeros(1, source_length, dtype=torch.long, device="meta")  # (1, S)
            logits = model(source, target)  # (1, T, V)
        else:
            logits = model(target)  # (1, T, V)
        logits.float().sum().backward()
    return counter.get_total_flops()


def training_flops_per_token(spec: ModelSpec, target_length: int, source_length: int = 0) -> float:
    """:func:`training_flops` per token read (source and target tokens together), at these lengths.

    Attention's share grows with length, so pass the lengths the data has on average.
    """
    return training_flops(spec, target_length, source_length) / (target_length + source_length)
