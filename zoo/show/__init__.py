"""``zoo show``: pictures of models, positional schemes and attention maps."""
