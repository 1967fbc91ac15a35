"""Attention masks and token positions, computed once per forward pass from the padding mask.

Eager PyTorch takes shortcuts: no mask at all, or SDPA's own ``is_causal``, when nothing
is padded. ``static=True`` turns them off: the mask is always built and no Python
branch looks at tensor values, which is what an exported graph needs.
"""

from __future__ import annotations

import torch


def build_mask(q_len: int, past: int, key_padding: torch.Tensor | None, causal: bool,
               bias: torch.Tensor | None, dtype: torch.dtype, device,
               static: bool = False) -> tuple[torch.Tensor | None, bool]:
    """Combine causality, key padding and a positional bias into one SDPA mask.

    Returns ``(mask, is_causal)``; the mask is None where SDPA's own ``is_causal`` (or
    no mask) suffices, a bool "allowed" mask (B or 1, 1, Tq, Tk) without bias, or an
    additive float mask (B or 1, H, Tq, Tk). ``key_padding`` is (B, past + q_len),
    True for real tokens. ``static`` always returns a materialised mask.
    """
    k_len = past + q_len
    if not static:
        if key_padding is not None and bool(key_padding.all()):
            key_padding = None
        if key_padding is None and bias is None:
            if not causal or q_len == 1:
                return None, False
            if past == 0:
                return None, True
    q_index = torch.arange(past, k_len, device=device)[:, None]  # (Tq, 1)
    k_index = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
    allowed = (k_index <= q_index) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, Tq, Tk)
    if key_padding is not None:
        # a query always sees itself, so rows of padding never become all -inf (NaN)
        allowed = (allowed & key_padding[:, None, None, :].bool()) | (k_index == q_index)  # (B, 1, Tq, Tk)
    if bias is None:
        return allowed, False
    return bias.to(dtype).masked_fill(~allowed, float("-inf")), False


def memory_mask(src_mask: torch.Tensor | None, q_len: int, static: bool = False) -> torch.Tensor | None:
    """The cross-attention mask (B, 1, 1, S) from the source padding mask (B, S), or None.

    ``static`` spells out the query axis, (B, 1, q_len, S), as ONNX Runtime's fused
    Attention operator wants.
    """
    if src_mask is None:
        return None
    mask = src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return mask.expand(-1, -1, q_len, -1) if static else mask


def positions_from_mask(attention_mask: torch.Tensor | None, past: int, length: int, batch: int, device) -> torch.Tensor:
    """Positions of the current tokens (B, T); left padding shifts each row's positions."""
    if attention_mask is None:
        return torch.arange(past, past + length, device=device).expand(batch, length)
    positions = attention_mask.long().cumsum(-1) - 1  # (B, past + T)
    return positions.clamp(min=0)[:, past : past + length]
