"""--checkpoint-activations: the same loss and gradients (dropout masks included), fewer saved tensors."""

from __future__ import annotations

import torch
from torch.autograd.graph import saved_tensors_hooks

import zoo
from zoo.core.model import Stack


def loss_and_grads(checkpointing: bool):
    model = zoo.build("baby-gpt-cpu", seed=0, n_layers=3, d_model=32, vocab_size=50,
                      **{"attention.n_heads": 2, "context_length": 16, "dropout": 0.2}).train()
    for module in model.modules():
        if isinstance(module, Stack):
            module.checkpointing = checkpointing
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    saved = []
    torch.manual_seed(3)  # the dropout masks
    with saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, sum(saved)


def test_checkpointed_blocks_give_the_same_gradients_and_save_less():
    loss, grads, saved = loss_and_grads(False)
    loss2, grads2, saved2 = loss_and_grads(True)
    assert torch.equal(loss, loss2)
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-5, atol=1e-6)
    assert saved2 < 0.5 * saved  # only each block's input is kept for the backward pass
