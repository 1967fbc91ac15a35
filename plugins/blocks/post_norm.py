"""Post-norm residual block, as in the 2017 Transformer: norm(x + f(x))."""

from zoo import Block


class PostNormBlock(Block):
    final_norm = False

    def forward(self, x, ctx):
        x = self.ln_1(x + self.dropout(self.attn(x, ctx)))
        if self.crossattention is not None:
            x = self.ln_cross_attn(x + self.dropout(self.crossattention(x, ctx)))
        return self.ln_2(x + self.dropout(self.mlp(x)))
