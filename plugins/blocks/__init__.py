"""Built-in block layouts: pre-norm (GPT-2), post-norm (2017 Transformer), parallel (GPT-J)."""

from zoo import hookimpl
from zoo.plugins.blocks.parallel import ParallelBlock
from zoo.plugins.blocks.post_norm import PostNormBlock
from zoo.plugins.blocks.pre_norm import PreNormBlock


@hookimpl
def zoo_register_components(registry):
    registry.add("block", "pre_norm", PreNormBlock)
    registry.add("block", "post_norm", PostNormBlock)
    registry.add("block", "parallel", ParallelBlock)
