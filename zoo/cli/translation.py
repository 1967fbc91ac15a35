"""``zoo train``, ``zoo evaluate`` and ``zoo translate``: English-Italian translation runs."""

from __future__ import annotations

import dataclasses

import os
import sys
from pathlib import Path

import click

from zoo.cli.options import IntervalType, given_options, optional_spec_options
from zoo.errors import ZooError
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY
from zoo.translation.train_config import TrainConfig

_TRAIN = TrainConfig()  # zoo train's defaults


@click.command()
@optional_spec_options
@click.option("--data", default=None, help="A TSV (English<TAB>Italian) or JSONL (en/it) file, or 'opus_books' from the local "
              "Hugging Face cache. Needed with -o; with --resume, the run's own.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None, help="New run directory.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue this run directory from its newest checkpoint, with its model, data and settings.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after this much training time (over all sessions).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=click.IntRange(min=1), default=_TRAIN.epochs, show_default=True, help="Stop after this many passes over the data.")
@click.option("--batch-tokens", type=click.IntRange(min=16), default=_TRAIN.batch_tokens, show_default=True, help="Padded tokens per batch and process (best on a 2-core CPU; raise it on GPUs, e.g. 8192).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_TRAIN.lr, show_default=True, help="Peak learning rate, reached after --warmup steps, then decayed as 1/sqrt(step).")
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=1), default=_TRAIN.warmup_steps, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=_TRAIN.label_smoothing, show_default=True)
@click.option("--clip-norm", type=click.FloatRange(min=0, min_open=True), default=_TRAIN.clip_norm, show_default=True, help="Clip the gradient norm to this.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=_TRAIN.weight_decay, show_default=True)
@click.option("--vocab-size", type=click.IntRange(min=64), default=_TRAIN.vocab_size, show_default=True, help="Subword vocabulary size (both languages together).")
@click.option("--tokenizer", type=click.Choice(["bpe", "unigram"]), default=_TRAIN.tokenizer, show_default=True)
@click.option("--vocabulary", type=click.Choice(["shared", "per-language"]), default=_TRAIN.vocabulary, show_default=True)
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=_TRAIN.amp, show_default=True, help="Mixed precision; auto: bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else off.")
@click.option("--checkpoint-every", type=IntervalType(), default=_TRAIN.checkpoint_every, show_default=True,
              help="Between checkpoints: steps (200) or training time (90s, 5m).")
@click.option("--eval-every", type=IntervalType(), default=_TRAIN.eval_every, show_default=True,
              help="Between validation runs: steps (500) or training time (5m).")
@click.option("--average-last", type=click.IntRange(min=1), default=_TRAIN.average_last, show_default=True,
              help="Publish the mean of the last N weight points (checkpoint averaging); 1 publishes the last weights.")
@click.option("--average-every", type=IntervalType(), default=_TRAIN.average_every, show_default=True,
              help="Between weight points for --average-last: steps (100) or training time (30s, 1m).")
@click.option("--eval-sentences", type=click.IntRange(min=0), default=_TRAIN.eval_sentences, show_default=True, help="Validation sources translated for BLEU.")
@click.option("--seed", type=int, default=_TRAIN.seed, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed data lines (reported) instead of stopping.")
@click.option("--force", is_flag=True, help="Replace an existing -o directory.")
@click.option("--profile", is_flag=True, help="Train nothing: time the training step before and after each measured "
              "speed-up, side by side on the same batches, with tokens/s, MFU and where the time goes.")
@click.option("--profile-steps", type=click.IntRange(min=1), default=40, show_default=True,
              help="Steps per stage and round for --profile.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --profile: also write the figures to this JSON file.")
@click.pass_context
def train(ctx, model, overrides, data, output, resume, force, profile, profile_steps, json_out, **options):
    """Train translation MODEL on English-Italian pairs: MODEL --data FILE -o RUN_DIR starts a run,
    --resume RUN_DIR continues one (MODEL, --data and the settings come from RUN_DIR/train.json;
    only the budget options, e.g. --max-minutes, may change).

    Runs distributed, unchanged, under torchrun (gloo on CPU, NCCL on GPU). The progress bar,
    metrics.jsonl and the summary show tokens/s and model FLOP utilisation (MFU: the model's
    FLOPs per second over the matmul ceiling measured at start).
    """
    from zoo.translation.resume import run_config

    if profile:
        return _profile(ctx, model, overrides, data, resume, profile_steps, json_out, options)
    from zoo.translation.training import train as train_run

    if (output is None) == (resume is None):
        raise click.UsageError("give -o RUN_DIR to start a run or --resume RUN_DIR to continue one")
    if output is not None and (model is None or data is None):
        missing = " and ".join(name for name, value in (("MODEL", model), ("--data FILE", data)) if value is None)
        raise click.UsageError(f"a new run (-o) needs {missing}, e.g. zoo train transformer-en-it-small --data pairs.tsv -o RUN_DIR")
    config = run_config(model, data, dict(overrides), options, given_options(ctx, options), resume)
    run_dir = resume or output
    summary = train_run(config, run_dir, resume=resume is not None, force=force,
                        warn=lambda message: click.echo(f"warning: {message}", err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        bleu = summary["validation_bleu"]
        mfu = "" if summary["mfu"] is None else f" ({summary['mfu']:.1%} MFU)"
        averaged = f", weights averaged over {len(summary['averaged_steps'])} points" if summary["averaged_steps"] else ""
        click.echo(f"trained {config.model}: {summary['steps']:,} steps ({summary['epochs']} epochs) in "
                   f"{summary['seconds'] / 60:.1f} min, {summary['tokens_per_second'] or 0:,.0f} tokens/s{mfu}; "
                   f"validation BLEU {bleu if bleu is None else round(bleu, 2)}{averaged} -> {run_dir}")


def _profile(ctx, model, overrides, data, resume, steps, json_out, options) -> None:
    """``zoo train --profile``: the step profile of a new run's settings (or of --resume RUN_DIR's)."""
    import json

    from zoo.core.files import atomic_file
    from zoo.translation.profile import profile_training, report_lines
    from zoo.translation.resume import run_config

    if resume is None and (model is None or data is None):
        raise click.UsageError("--profile needs MODEL and --data FILE (or --resume RUN_DIR for a run's settings)")
    config = TrainConfig.load(resume) if resume is not None else \
        run_config(model, data, dict(overrides), options, given_options(ctx, options))
    result = profile_training(config, steps=steps, warn=lambda message: click.echo(f"warning: {message}", err=True))
    for line in report_lines(result):
        click.echo(line)
    if json_out is not None:
        with atomic_file(json_out) as f:
            f.write((json.dumps(result, indent=2) + "\n").encode("utf-8"))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True,
              help="The split of the run's training data to score.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score all pairs of this file instead (TSV English<TAB>Italian or JSONL en/it; no split), "
                   "grouped by English source; writes RUN_DIR/eval/FILESTEM-DECODING.tsv/.json.")
@click.option("--beam", type=click.IntRange(min=1), default=DEFAULT_BEAM, show_default=True, help="Beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=DEFAULT_LENGTH_PENALTY, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Score N English sources sampled at random (--seed) across the whole split or file, in its order.")
@click.option("--seed", type=int, default=0, show_default=True, help="The --limit sample's seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True, help="Sample translations to print.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed data lines (reported) instead of stopping.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Translate with this ONNX export of the run (zoo export RUN_DIR --format onnx --kv-cache "
                   "[--quantize ...]) in ONNX Runtime instead of PyTorch.")
@click.pass_context
def evaluate(ctx, run_dir, split, data, beam, alpha, limit, seed, batch_size, device, samples, skip_bad_lines, onnx_dir):
    """Translate a split of the run's data (or a --data file) and report BLEU, chrF (sacrebleu), CER and WER.

    The headline is sacrebleu's single-reference corpus BLEU and chrF (every pair scored on its
    own, as published single-reference figures are), printed with sacrebleu's signatures; the
    multi-reference figure (each English source against all its Italian translations) follows.
    Writes RUN_DIR/eval/SPLIT-DECODING.tsv (source, translation, references) and .json
    (FILESTEM-DECODING with --data); with --onnx, DECODING names the export too
    (test-greedy-onnx-NAME.tsv).
    """
    from zoo.translation.data import group_references, read_pairs, sample_sources, split_pairs
    from zoo.translation.evaluate import evaluate as evaluate_sources, report, write_evaluation
    from zoo.translation.resume import data_source
    from zoo.translation.search import load_translator

    if data is not None and "split" in given_options(ctx, ["split"]):
        raise click.UsageError("--split chooses a split of the run's data; --data FILE scores all of FILE: give one")
    translator = load_translator(onnx_dir, "onnxruntime", device) if onnx_dir else load_translator(run_dir, "torch", device)
    config = TrainConfig.load(run_dir)
    warn = lambda message: click.echo(f"warning: {message}", err=True)  # noqa: E731
    if data is not None:
        chosen, name, split, where = read_pairs(data, skip_bad_lines, warn), data.stem, None, str(data)
    else:
        pairs = read_pairs(config.data, config.skip_bad_lines or skip_bad_lines, warn)
        chosen = split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)[split]
        name, where = split, f"the {split} split of {config.data}"
    sources, references = group_references(chosen)
    if not sources:
        raise ZooError(f"{where} is empty; evaluate another split or give --data FILE")
    total = len(sources)
    if limit:
        sources, references = sample_sources(sources, references, limit, seed)
    result, hypotheses = evaluate_sources(translator, sources, references, name,
                                          data=data_source(data) if data else config.data,
                                          split=split, limit=limit, seed=seed if limit else None, beam=beam,
                                          alpha=alpha, batch_size=batch_size, progress=True)
    if onnx_dir:
        result = dataclasses.replace(result, decoding=f"{result.decoding}-onnx-{onnx_dir.resolve().name}")
    tsv, _ = write_evaluation(run_dir / "eval", result, sources, hypotheses, references)
    sampled = f" (sampled from {total:,}, seed {seed})" if len(sources) < total else ""
    click.echo(f"{where}: {result.sources:,} English sources{sampled}, {result.pairs:,} pairs, {result.decoding}, "
               f"{result.sentences_per_second:.1f} sentences/s")
    for line in report(result):
        click.echo(line)
    for src, hyp, refs in list(zip(sources, hypotheses, references))[:samples]:
        click.echo(f"  EN  {src}\n  MT  {hyp}\n  REF {refs[0]}" + (f"  (+{len(refs) - 1} more)" if len(refs) > 1 else ""))
    click.echo(f"translations next to their references: {tsv}")


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("sentences", nargs=-1)
@click.option("--beam", type=click.IntRange(min=1), default=DEFAULT_BEAM, show_default=True, help="Beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=DEFAULT_LENGTH_PENALTY, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="torch: DIRECTORY is a run directory; onnxruntime: an exported directory holding tokenizer.json.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def translate(directory, sentences, beam, alpha, batch_size, runtime, device):
    """Translate English SENTENCES (or stdin, one per line) into Italian, one line each."""
    from zoo.translation.search import load_translator

    translator = load_translator(directory, runtime, device)
    lines = list(sentences) if sentences and sentences != ("-",) else [line.rstrip("\r\n") for line in sys.stdin]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    if not todo:
        raise ZooError("no sentences to translate; give them as arguments or one per line on stdin")
    out = [""] * len(lines)
    for i, text in zip(todo, translator.translate([lines[i].strip() for i in todo], beam=beam, alpha=alpha,
                                                  batch_size=batch_size)):
        out[i] = text
    for text in out:
        click.echo(text)


COMMANDS = (train, evaluate, translate)
