"""Built-in attention: multi-head self-attention (with grouped/multi-query) and cross-attention."""

from zoo import hookimpl
from zoo.plugins.attention.cross import CrossAttention
from zoo.plugins.attention.multi_head import MultiHeadAttention


@hookimpl
def zoo_register_components(registry):
    registry.add("attention", "multi_head", MultiHeadAttention)
    registry.add("attention", "cross", CrossAttention)
