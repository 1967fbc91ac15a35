"""The decoding ``zoo evaluate`` and ``zoo translate`` use unless told otherwise.

Kept torch-free (unlike :mod:`zoo.translation.search`, which re-exports them) so the command
line can show these defaults in ``--help`` without importing torch.
"""

DEFAULT_BEAM = 1  # beam size; 1 is greedy
DEFAULT_LENGTH_PENALTY = 0.6  # GNMT's alpha (Wu et al., 2016); no effect on greedy search
