"""Specs: exact parameter counts without allocation, overrides, inheritance, errors."""

import pytest

import zoo
from zoo.core.meta import assemble, count_parameters, parameter_table
from zoo.errors import SpecError
from zoo.core.catalog import catalog, catalog_entries, catalog_files
from zoo.core.spec import load_spec

EXPECTED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


def test_catalog_lists_every_model():
    assert set(zoo.list_models()) >= {*EXPECTED, "transformer-en-it", "transformer-en-it-small"}


@pytest.mark.parametrize("variable", ["ZOO_CATALOG", "ZOO_REGISTRY"])  # the old spelling still works
def test_catalog_reads_zoo_catalog_files_and_inherits_family(tmp_path, monkeypatch, variable):
    extra = tmp_path / "mine.yaml"
    extra.write_text("models:\n  tiny-gpt:\n    extends: gpt2-medium\n    n_layers: 2\n")
    monkeypatch.delenv("ZOO_CATALOG", raising=False)
    monkeypatch.delenv("ZOO_REGISTRY", raising=False)
    monkeypatch.setenv(variable, str(extra))
    assert catalog_files()[-1] == extra
    entry = {e.name: e for e in catalog()}["tiny-gpt"]
    assert (entry.family, entry.description) == ("decoder", "GPT-2 Medium, 355M parameters")
    assert load_spec("tiny-gpt").n_layers == 2


def test_catalog_file_without_models_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("gpt2: {}\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "bad.yaml"))
    with pytest.raises(SpecError, match="bad.yaml: a model catalog file needs a top-level 'models:' mapping"):
        catalog_entries()


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_gpt2_parameter_counts_on_meta_device(name, count):
    model = assemble(load_spec(name))
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    assert count_parameters(model) == count
    assert sum(r.count for r in parameter_table(load_spec(name), model)) == count


def test_transformer_en_it_is_the_2017_base_model():
    spec = load_spec("transformer-en-it")
    assert (spec.n_layers, spec.n_decoder_layers, spec.d_model, spec.n_heads) == (6, 6, 512, 8)
    assert spec.mlp.options.d_ff == 2048 and spec.dropout == 0.1
    assert (spec.block.type, spec.positional.type, spec.scale_embeddings) == ("post_norm", "sinusoidal", True)


def test_small_translation_model_is_about_ten_million_parameters():
    n = count_parameters(assemble(load_spec("transformer-en-it-small")))
    assert 8_000_000 < n < 12_000_000


def test_overrides_replace_components_and_merge_options():
    spec = load_spec("gpt2", {"positional": "rotary", "attention.n_kv_heads": 4})
    assert spec.positional.type == "rotary"
    assert spec.n_heads == 12 and spec.n_kv_heads == 4
    assert spec.mlp.type == "gelu_tanh"  # untouched


def test_extends_inherits_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: gpt2\nname: mine\nn_layers: 2\nnorm: rms_norm\n")
    spec = load_spec(path)
    assert (spec.name, spec.n_layers, spec.d_model, spec.norm.type) == ("mine", 2, 768, "rms_norm")


def test_resolved_spec_round_trips(tmp_path):
    spec = load_spec("gpt2-medium", {"attention.n_kv_heads": 8})
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert load_spec(path) == spec


@pytest.mark.parametrize("overrides,message", [
    ({"attention.n_heads": 10}, "models.gpt2.attention.n_heads: d_model 768 is not divisible by 10 heads"),
    ({"attention.n_kv_heads": 5}, "models.gpt2.attention.n_kv_heads: 5 does not divide n_heads 12"),
    ({"attention.flash": True}, "models.gpt2.attention.flash: unknown field"),
    ({"n_layer": 3}, "models.gpt2.n_layer: unknown field"),
    ({"n_layers": "twelve"}, "models.gpt2.n_layers: 'twelve' is not an integer"),
    ({"positional": "relative"}, "unknown positional 'relative'; choose one of: alibi, learned, none, rotary, sinusoidal"),
    ({"block": {"type": "sandwich"}}, "unknown block 'sandwich'; choose one of: parallel, post_norm, pre_norm"),
    ({"positional": "rotary", "positional.fraction": 2.0}, "positional.fraction: 2.0 is too large; it must be above 0 and at most 1"),
    ({"dropout": 1.5}, "models.gpt2.dropout: 1.5 must be in [0, 1)"),
    ({"context_length": 2 ** 63}, "models.gpt2.context_length: 9223372036854775808 does not fit in 64 bits"),
    ({"mlp.d_ff": -(2 ** 63) - 1}, "models.gpt2.mlp.d_ff: -9223372036854775809 does not fit in 64 bits"),
])
def test_bad_specs_name_the_field(overrides, message):
    with pytest.raises(SpecError) as info:
        load_spec("gpt2", overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("extends: gpt2\nn_layers: [2\nd_model: 64\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+:\d+: invalid YAML"):
        load_spec(path)


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(SpecError, match="cycle"):
        load_spec(tmp_path / "a.yaml")


def test_unknown_model_lists_choices():
    with pytest.raises(SpecError, match="unknown model 'gpt5'; choose one of: gpt2, gpt2-medium"):
        load_spec("gpt5")
