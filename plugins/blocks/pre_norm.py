"""Pre-norm residual block, as in GPT-2: x + f(norm(x))."""

from zoo import Block


class PreNormBlock(Block):
    final_norm = True

    def forward(self, x, ctx):
        x = x + self.dropout(self.attn(self.ln_1(x), ctx))
        if self.crossattention is not None:
            x = x + self.dropout(self.crossattention(self.ln_cross_attn(x), ctx))
        return x + self.dropout(self.mlp(self.ln_2(x)))
