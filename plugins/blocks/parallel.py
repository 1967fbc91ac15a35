"""Parallel block, as in GPT-J and PaLM: x + attn(norm(x)) + mlp(norm(x)), one norm shared;
with ``shared_norm: false``, GPT-NeoX's x + attn(ln_1(x)) + mlp(ln_2(x)), a norm per branch.

Cross-attention, when present, runs first as its own pre-norm sublayer.
"""

from dataclasses import dataclass

from zoo import Block


class ParallelBlock(Block):
    final_norm = True

    @dataclass
    class Options:
        shared_norm: bool = True  # False: attention and MLP each have their own norm (GPT-NeoX)

    def __init__(self, spec, options, parts):
        super().__init__(spec, options, parts)
        self.shared_norm = options.shared_norm
        if self.shared_norm:
            del self.ln_2  # one norm feeds both branches

    def forward(self, x, ctx):
        if self.crossattention is not None:
            x = x + self.dropout(self.crossattention(self.ln_cross_attn(x), ctx))
        h = self.ln_1(x)
        h_mlp = h if self.shared_norm else self.ln_2(x)
        return x + self.dropout(self.attn(h, ctx)) + self.dropout(self.mlp(h_mlp))
