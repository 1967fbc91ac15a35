"""zoo's CPU dropout: the drop rate, scale, gradient and seeding of nn.Dropout."""

import pytest
import torch
from torch import nn

from zoo.core.dropout import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_at_rate_p_and_scales_the_rest(dtype):
    torch.manual_seed(0)
    x = torch.ones(1000, 999, dtype=dtype)  # numel not a multiple of 4
    y = Dropout(0.1).train()(x)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5  # within 5 standard errors
    assert torch.equal(torch.unique(y.float()), torch.tensor([0.0, (torch.tensor(1 / 0.9, dtype=dtype)).item()]))


def test_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(1)
    x = torch.randn(64, 37, requires_grad=True)
    layer = Dropout(0.3).train()
    y = layer(x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.where(y != 0, 1 / 0.7, 0.0))
    assert torch.equal(layer.eval()(x), x)


def test_seeded_like_torch_and_independent_between_calls():
    layer = Dropout(0.5).train()
    x = torch.ones(4096)
    torch.manual_seed(3)
    first, second = layer(x), layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert not torch.equal(first, second)


def test_edge_rates_and_in_place_follow_nn_dropout():
    x = torch.randn(8, 8)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.1), nn.Dropout)  # pictures and tooling treat it as dropout
