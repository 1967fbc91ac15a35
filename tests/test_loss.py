"""The blocked label-smoothed cross-entropy equals PyTorch's, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from zoo.training import loss as blocked


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_and_gradient_equal_f_cross_entropy(monkeypatch, dtype, smoothing):
    monkeypatch.setattr(blocked, "BLOCK", 0)
    monkeypatch.setattr(blocked, "ROWS", 4)  # several blocks and a short last one: 3 x 5 = 15 rows
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 50) * 3).to(dtype)
    target = torch.randint(1, 50, (3, 5))
    target[0, 3:] = 0  # padding
    target[2, 1] = 0

    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    value = blocked.smoothed_cross_entropy(ours, target, smoothing, ignore_index=0)
    expected = F.cross_entropy(theirs.float().flatten(0, 1), target.flatten(), ignore_index=0,
                               label_smoothing=smoothing, reduction="sum")
    (value * 0.5).backward()
    (expected * 0.5).backward()

    torch.testing.assert_close(value, expected)
    assert ours.grad.dtype == dtype
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 1e-2}
    torch.testing.assert_close(ours.grad.float(), theirs.grad.float(), **tolerance)
    assert ours.grad[0, 3:].abs().sum() == 0  # padding gets no gradient


def test_all_padding_is_zero_loss():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    value = blocked.smoothed_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), 0.1, ignore_index=0)
    value.backward()
    assert value.item() == 0.0 and logits.grad.abs().sum() == 0
