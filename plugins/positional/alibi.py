"""ALiBi (Press et al., 2022): a per-head linear penalty on query-key distance."""

import math

import torch

from zoo import PositionalScheme


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The geometric slopes of the paper, with its rule for non-power-of-two head counts."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PositionalScheme):
    """No embeddings; attention scores get ``-slope_h * |i - j|``."""

    def attention_bias(self, q_index, k_index, causal):
        slopes = alibi_slopes(self.spec.n_heads).to(q_index.device)  # (H,)
        distance = (q_index[:, None] - k_index[None, :]).abs().to(torch.float32)  # (Tq, Tk)
        return (-slopes[:, None, None] * distance)[None]  # (1, H, Tq, Tk)
