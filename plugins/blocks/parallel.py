"""Parallel block, as in GPT-J and PaLM: x + attn(norm(x)) + mlp(norm(x)), one norm shared.

Cross-attention, when present, runs first as its own pre-norm sublayer.
"""

from zoo import Block


class ParallelBlock(Block):
    final_norm = True

    def __init__(self, spec, options, parts):
        super().__init__(spec, options, parts)
        del self.ln_2  # one norm feeds both branches

    def forward(self, x, ctx):
        if self.crossattention is not None:
            x = x + self.dropout(self.crossattention(self.ln_cross_attn(x), ctx))
        h = self.ln_1(x)
        return x + self.dropout(self.attn(h, ctx)) + self.dropout(self.mlp(h))
