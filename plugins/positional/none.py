"""No positional information (a causal model can still infer order, Haviv et al. 2022)."""

from zoo import PositionalScheme


class NoPositions(PositionalScheme):
    """Adds nothing anywhere."""
