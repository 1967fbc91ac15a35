"""GPT-2 (``GPT2LMHeadModel``): learned positions, fused q/k/v, Conv1D weights stored [in, out].

The name table and config mapping are those of :mod:`zoo.hf.gpt2` (kept there for the
catalog search and messages GPT-2 checkpoints have always had); this plugin states them
as a checkpoint format like any other family's."""

from zoo import CheckpointFormat
from zoo.hf import gpt2
from zoo.hf.transforms import Same, Transposed


class GPT2Format(CheckpointFormat):
    """GPT-2's config.json <-> spec comes from :mod:`zoo.hf.gpt2`; weights from the table."""

    def spec_problem(self, spec):
        return gpt2.gpt2_layout_problem(spec)

    def check_config(self, config, spec, where):
        gpt2.check_gpt2_config(config, spec, where)

    def spec_from_config(self, config, name):
        return gpt2.gpt2_spec(config, name)

    def hf_config(self, spec, dtype=None):
        return gpt2.gpt2_config(spec, *(() if dtype is None else (dtype,)))


def _weights() -> dict:
    table = {}
    for hf, ours in gpt2.GPT2_WEIGHT_MAP.items():
        kind = Transposed if hf in gpt2.GPT2_TRANSPOSED else Same
        table[ours.replace("{}", "{i}")] = kind(gpt2.HF_PREFIX + hf.replace("{}", "{i}"))
    return table


GPT2 = GPT2Format(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    weights=_weights(),
    template={},
    fields=(),
    head=Same(gpt2.GPT2_LM_HEAD),
    ignored=tuple(gpt2.HF_PREFIX + p.replace("{}", "{i}") for p in gpt2.GPT2_IGNORED),
    optional_prefix=gpt2.HF_PREFIX,
    description="GPT-2: learned positions, Conv1D weights (GPT-2 small to XL)",
)
