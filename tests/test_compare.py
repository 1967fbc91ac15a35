"""``zoo compare``: synthetic run directories compared through click's CliRunner, with every
expected figure worked out by hand from the records written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import tiny_overrides
from zoo.cli import ZooGroup
from zoo.cli.compare import COMMANDS
from zoo.core.spec import load_spec
from zoo.training.compare import read_run

DATA = "/data/tiny-shakespeare.txt"


def zoo(*args):
    return CliRunner().invoke(ZooGroup("zoo", commands=COMMANDS), [str(a) for a in args])


def write_run(run_dir, config, records, model="gpt2", spec_text=None):
    run_dir.mkdir(parents=True)
    (run_dir / "train.json").write_text(json.dumps({"model": model, "overrides": {}, **config}))
    (run_dir / "spec.yaml").write_text(spec_text or load_spec(model, tiny_overrides(model)).to_yaml())
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def lm_run(run_dir, losses, tokens_per_step, seconds_per_step, tokenizer="char", data=DATA, val_fraction=0.1):
    """A language-modelling run: training and validation records at steps 10, 20, 30, ..."""
    records = [{"event": "start", "step": 0, "parameters": 12345, "flops_per_token": 1e5,
                "matmul_ceiling_flop_per_s": 1e12, "dtype": "float32", "world": 1, "device": "cpu"}]
    for i, loss in enumerate(losses, 1):
        records.append({"event": "train", "step": 10 * i, "loss": loss + 0.1, "lr": 1e-3, "mfu": 0.1 * i,
                        "tokens_per_second": tokens_per_step / seconds_per_step,
                        "seconds": seconds_per_step * i, "tokens": tokens_per_step * i})
        records.append({"event": "validation", "step": 10 * i, "seconds": seconds_per_step * i,
                        "tokens": tokens_per_step * i, "loss": loss, "perplexity": math.exp(loss),
                        "bits_per_character": loss / 4})
    return write_run(run_dir, {"task": "language-modelling", "data": data, "tokenizer": tokenizer,
                               "val_fraction": val_fraction}, records)


def old_translation_run(run_dir, windows, bleu, spec_text=None):
    """A translation run from before ``task`` and ``tokens`` were logged, and with its parameter
    count in manifest.json only: a training record every 10 steps for each (tokens/s, training
    seconds so far) of ``windows``, one validation at step 15 and one at the end."""
    train = [{"event": "train", "step": 10 * i, "loss": 5.0, "lr": 1e-3, "tokens_per_second": rate, "mfu": None,
              "seconds": seconds} for i, (rate, seconds) in enumerate(windows, 1)]
    midway = (windows[0][1] + windows[1][1]) / 2
    records = [train[0], {"event": "validation", "step": 15, "seconds": midway, "loss": 4.5, "bleu": None},
               *train[1:], {"event": "validation", "step": 10 * len(windows), "seconds": windows[-1][1],
                            "loss": 4.0, "bleu": bleu, "averaged_steps": [10, 20]}]
    model = "transformer-en-it-small"
    run_dir = write_run(run_dir, {"data": "/data/en-it.tsv", "tokenizer": "bpe", "vocab_size": 8000,
                                  "validation_fraction": 0.01, "test_fraction": 0.02, "split_seed": 0},
                        records, model, spec_text)
    (run_dir / "manifest.json").write_text(json.dumps({"parameters": 54321}))
    return run_dir


def table(output: str) -> list[dict]:
    """The printed table as one dict per row, cut at the columns the dashes line marks."""
    lines = output.splitlines()
    dashes = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans, start = [], 0
    for part in lines[dashes].split("  "):
        spans.append((start, start + len(part)))
        start += len(part) + 2
    cut = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    return [dict(zip(cut(lines[dashes - 1]), cut(line))) for line in lines[dashes + 1:] if line.strip()
            and not line.startswith("tokenizers differ")]


def test_table_shows_final_and_best_loss_tokens_and_speed(tmp_path):
    a = lm_run(tmp_path / "a", [3.0, 2.5, 2.7], tokens_per_step=1000, seconds_per_step=2.0)
    b = lm_run(tmp_path / "b", [2.9, 2.8, 2.6], tokens_per_step=4000, seconds_per_step=1.0)
    with open(a / "metrics.jsonl", "a") as f:
        f.write('{"event": "validation", "step": 40, "lo')  # a line cut short by a kill
    result = zoo("compare", a, b)
    assert result.exit_code == 0, result.output
    rows = table(result.output)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0] == {"run": "a", "model": "gpt2", "plugins": "learned/multi_head/gelu_tanh", "tokenizer": "char",
                       "parameters": "12,345", "tokens seen": "3,000", "tokens/s": "500", "MFU": "20.0%",
                       "final loss": "2.7000", "best loss": "2.5000", "perplexity": "14.88", "bits/char": "0.6750"}
    assert (rows[1]["tokens seen"], rows[1]["tokens/s"], rows[1]["final loss"], rows[1]["best loss"]) == \
        ("12,000", "4,000", "2.6000", "2.6000")
    assert "tokenizers differ" not in result.output


@pytest.mark.parametrize("b_data, b_fraction, says", [
    ("/data/other.txt", 0.1, f"a was trained on {DATA} (val_fraction 0.1), b on /data/other.txt (val_fraction 0.1)"),
    (DATA, 0.2, f"a was trained on {DATA} (val_fraction 0.1), b on {DATA} (val_fraction 0.2)"),
])
def test_runs_on_different_data_are_refused_and_nothing_is_drawn(tmp_path, b_data, b_fraction, says):
    a = lm_run(tmp_path / "a", [3.0], 1000, 1.0)
    b = lm_run(tmp_path / "b", [3.0], 1000, 1.0, data=b_data, val_fraction=b_fraction)
    result = zoo("compare", a, b, "-o", tmp_path / "curves.png")
    assert result.exit_code == 1
    assert result.output == f"error: {says}; compare runs on the same data\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_other_refusals_are_one_line(tmp_path):
    lm = lm_run(tmp_path / "lm", [3.0], 1000, 1.0)
    translation = old_translation_run(tmp_path / "mt", [(100.0, 5.0), (300.0, 10.0)], 10.0)
    (tmp_path / "empty").mkdir()
    fresh = write_run(tmp_path / "fresh", {"task": "language-modelling", "data": DATA, "val_fraction": 0.1},
                      [{"event": "train", "step": 10, "loss": 3.0, "tokens": 10, "seconds": 1.0}])
    for args, says in [
        ((lm, translation), "lm is a language-modelling run, mt a translation run; compare runs of the same task"),
        ((lm, tmp_path / "empty"), f"{tmp_path / 'empty'}: not a run directory (no train.json); "
                                   f"make one with zoo train MODEL --data FILE -o {tmp_path / 'empty'}"),
        ((lm, fresh), "fresh: no validation yet; train it longer or lower --eval-every"),
    ]:
        result = zoo("compare", *args)
        assert (result.exit_code, result.output) == (1, f"error: {says}\n")


def test_an_unknown_picture_type_is_refused_before_reading_runs(tmp_path):
    result = zoo("compare", tmp_path / "no-run", "-o", tmp_path / "curves.txt")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'curves.txt'}: cannot draw a picture of that type")
    assert ".png" in result.output and len(result.output.splitlines()) == 1


def test_different_tokenizers_compare_bits_per_character(tmp_path):
    a = lm_run(tmp_path / "a", [3.0, 2.5], 1000, 1.0, tokenizer="char")
    b = lm_run(tmp_path / "b", [6.0, 5.0], 1000, 1.0, tokenizer="bpe")
    result = zoo("compare", a, b, "-o", tmp_path / "curves.svg")
    assert result.exit_code == 0, result.output
    assert ("tokenizers differ (char, bpe): compare bits per character; loss per token is not comparable"
            in result.output.splitlines())
    svg = (tmp_path / "curves.svg").read_text()
    assert "validation bits per character" in svg and "validation loss" not in svg
    same = zoo("compare", a, lm_run(tmp_path / "c", [3.0], 1000, 1.0), "-o", tmp_path / "same.svg")
    assert "tokenizers differ" not in same.output
    assert "validation loss per token" in (tmp_path / "same.svg").read_text()
    for run_dir, vocab_size in ((a, 4000), (b, 8000)):  # one tokenizer, two vocabularies
        config = json.loads((run_dir / "train.json").read_text())
        (run_dir / "train.json").write_text(json.dumps({**config, "tokenizer": "bpe", "vocab_size": vocab_size}))
    assert "tokenizers differ (bpe-4000, bpe-8000)" in zoo("compare", a, b).output


def test_the_picture_is_a_png(tmp_path):
    a = lm_run(tmp_path / "a", [3.0, 2.5, 2.7], 1000, 2.0)
    b = lm_run(tmp_path / "b", [2.9, 2.8, 2.6], 4000, 1.0)
    out = tmp_path / "pictures" / "curves.png"
    result = zoo("compare", a, b, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"wrote {out}"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1024
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left beside it


def test_a_failed_drawing_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def disk_full(self, path, **options):
        Path(path).write_bytes(b"half a picture")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    out = tmp_path / "pictures" / "curves.png"
    result = zoo("compare", lm_run(tmp_path / "a", [3.0], 1000, 1.0), "-o", out)
    assert (result.exit_code, result.output.splitlines()[-1]) == \
        (1, f"error: {out}: cannot write the picture (No space left on device)")
    assert list(out.parent.iterdir()) == []


def test_old_translation_runs_compare_with_estimated_tokens(tmp_path):
    a = old_translation_run(tmp_path / "a", [(100.0, 5.0), (300.0, 20.0)], 12.5)
    broken = load_spec("transformer-en-it-small", tiny_overrides("transformer-en-it-small")).to_yaml()
    b = old_translation_run(tmp_path / "b", [(200.0, 5.0), (200.0, 10.0), (200.0, 15.0)], 20.25,
                            spec_text=broken.replace("type: sinusoidal", "type: not-installed"))
    result = zoo("compare", a, b, "-o", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    rows = table(result.output)
    # a: 100 tok/s for 5 s, then 300 tok/s for 15 s: 5,000 tokens in 20 s
    assert {k: rows[0][k] for k in ("plugins", "parameters", "tokens seen", "tokens/s", "MFU", "final loss",
                                    "best loss", "BLEU")} \
        == {"plugins": "sinusoidal/multi_head/relu", "parameters": "54,321", "tokens seen": "5,000", "tokens/s": "250",
            "MFU": "-", "final loss": "4.0000", "best loss": "4.0000", "BLEU": "12.50"}
    assert (rows[1]["plugins"], rows[1]["tokens seen"], rows[1]["tokens/s"], rows[1]["BLEU"]) == \
        ("?", "3,000", "200", "20.25")
    assert "perplexity" not in rows[0]
    # the validation at step 15 lies halfway between 500 tokens (step 10) and 5,000 (step 20)
    assert [v["tokens"] for v in read_run(a).validations] == [2750.0, 5000.0]
    assert (tmp_path / "curves.png").stat().st_size > 1024
