"""``zoo train`` and ``zoo evaluate``: training runs of every family (a decoder learns text, an
encoder-decoder translates), and their evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import click

from zoo.cli.options import IntervalType, given_options, optional_spec_options
from zoo.errors import ZooError
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY


@click.command()
@optional_spec_options
@click.option("--data", default=None, help="Text for a decoder: a UTF-8 .txt file, a JSONL file with a 'text' field, or "
              "a folder of .txt files. Pairs for a translator: a TSV (English<TAB>Italian) or JSONL (en/it) file, or "
              "'opus_books' from the local Hugging Face cache. Needed with -o; with --resume, the run's own.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None, help="New run directory.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue this run directory from its newest snapshot, with its model, data and settings.")
@click.option("--weights", default=None, help="Fine-tune these weights instead of random ones. Decoders: 'hf', a hub "
              "id, a Hugging Face or zoo directory, with the checkpoint's tokenizer. Translators: a translation run "
              "directory, with its vocabulary. Defaults: --lr 1e-4 --warmup 20 --weight-decay 0 (decoders also "
              "--batch-size 4 --seq-len 256).")
@click.option("--lora", "lora_rank", type=int, default=None, metavar="RANK",
              help="With --weights: train a LoRA adapter of this rank (8, 16) on the frozen weights "
                   "(through PEFT) instead of every weight; default --lr 1e-3.")
@click.option("--lora-alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --lora: the update is scaled by alpha / rank [2 x rank].")
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="With --lora: dropout on the adapter's input [0].")
@click.option("--lora-targets", default=None, help="With --lora: the linear layers to adapt, comma-separated: roles "
              "(attention, mlp) or layer names (c_attn, attn.c_proj) [attention,mlp].")
@click.option("--lora-base", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="With --lora: hold the frozen matrices (projections, embeddings) in this dtype; bfloat16 halves "
                   "their memory and "
                   "needs --amp bf16 (a GPU or a CPU with native bf16) [float32].")
@click.option("--merge/--no-merge", default=None, help="With --lora: publish the merged weights (default), or keep "
              "base/ + adapter/ (zoo loads them merged).")
@click.option("--tokenizer", type=click.Choice(["model", "char", "byte", "bpe", "unigram"]), default=None,
              help="Decoders: model (the spec's or checkpoint's own; default), char, byte, or bpe trained on the "
                   "text. Translators: bpe (default) or unigram.")
@click.option("--vocab-size", type=click.IntRange(min=64), default=None,
              help="bpe/unigram vocabulary size (translators: 8000, both languages together).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Decoders: tokens per training sequence "
              "(default: the spec's context length).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Decoders: sequences per step and process [12].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Decoders: the end of the text that validates [0.1].")
@click.option("--eval-tokens", type=click.IntRange(min=1), default=None,
              help="Decoders: validation tokens scored during training [32768]; the end of the run scores all.")
@click.option("--batch-tokens", type=click.IntRange(min=16), default=None, help="Translators: padded tokens per batch "
              "and process [1024] (best on a 2-core CPU; raise it on GPUs, e.g. 8192).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None, help="Translators [0.1].")
@click.option("--vocabulary", type=click.Choice(["shared", "per-language"]), default=None, help="Translators [shared].")
@click.option("--eval-sentences", type=click.IntRange(min=0), default=None,
              help="Translators: validation sources translated for BLEU [200].")
@click.option("--skip-bad-lines", is_flag=True, default=None, help="Translators: skip malformed data lines (reported).")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this much training time (over all sessions).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Stop after this many passes over the data [30].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate, reached after --warmup steps [1e-3].")
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=1), default=None,
              help="Warm-up steps [decoders 100, translators 400].")
@click.option("--schedule", type=click.Choice(["cosine", "inverse-sqrt", "constant"]), default=None,
              help="After warm-up: cosine to lr/10 over the budget [decoders] or 1/sqrt(step) [translators].")
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=None, help="AdamW β2 [decoders 0.99, translators 0.98].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[decoders 0.1, translators 0.01]")
@click.option("--clip-norm", type=click.FloatRange(min=0, min_open=True), default=None, help="Clip the gradient norm to this [1.0].")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None,
              help="Mixed precision; auto (default): bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else off.")
@click.option("--checkpoint-every", type=IntervalType(), default=None,
              help="Between training snapshots: steps (200) or training time (90s, 5m) [5m].")
@click.option("--eval-every", type=IntervalType(), default=None,
              help="Between validations: steps (500) or training time (5m) [decoders 1m, translators 5m].")
@click.option("--average-last", type=click.IntRange(min=1), default=None,
              help="Publish the mean of the last N weight points if it validates better than the last weights "
                   "[decoders 1: off, translators 5].")
@click.option("--average-every", type=IntervalType(), default=None,
              help="Between weight points for --average-last: steps (100) or training time (30s, 1m) [1m].")
@click.option("--strategy", type=click.Choice(["ddp", "fsdp"]), default=None,
              help="Under torchrun: ddp (every process holds the whole model; default) or fsdp (FSDP2: weights, "
                   "gradients and optimizer state sharded across the processes, snapshots sharded with DCP).")
@click.option("--checkpoint-activations", is_flag=True, default=None,
              help="Keep only each block's input and recompute the block in the backward pass: the activation "
                   "memory of one block instead of all, for about a third more compute.")
@click.option("--seed", type=int, default=None, help="[0]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--force", is_flag=True, help="Replace an existing -o directory.")
@click.option("--plan", "plan_processes", type=click.IntRange(min=1), default=None, metavar="PROCESSES",
              help="Train nothing: print the memory one process needs (weights, gradients, optimizer state, "
                   "activations) with ddp and fsdp over PROCESSES processes, and whether it fits this device.")
@click.option("--profile", is_flag=True, help="Keep nothing: run a few training steps of these settings in a "
              "temporary run under PyTorch's profiler and print tokens/s, MFU and where the step's time goes.")
@click.option("--profile-steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Steps timed by --profile (after 3 to warm up).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --profile: also write the figures to this JSON file.")
@click.pass_context
def train(ctx, model, overrides, data, output, resume, force, plan_processes, profile, profile_steps, json_out,
          **settings):
    """Train MODEL: MODEL --data FILE -o RUN_DIR starts a run, --resume RUN_DIR continues one
    (MODEL, --data and the settings come from RUN_DIR/train.json; only the budget options,
    e.g. --max-minutes, may change).

    The model's family decides the task: a decoder (gpt2, baby-gpt, a spec file, any plugin)
    learns to continue the text; an encoder-decoder learns to translate English-Italian pairs.
    Options marked "Decoders" or "Translators" apply to that task only. Runs distributed,
    unchanged, under torchrun (gloo on CPU, NCCL on GPU). The progress bar, metrics.jsonl and
    the summary show tokens/s and model FLOP utilisation (MFU).
    """
    from zoo.training.run import settings_for

    given = given_options(ctx, settings)
    if profile:
        return _profile(model, overrides, data, resume, profile_steps, json_out, settings, given)
    if plan_processes is not None:
        return _plan(model, overrides, data, resume, plan_processes, settings, given)
    if (output is None) == (resume is None):
        raise click.UsageError("give -o RUN_DIR to start a run or --resume RUN_DIR to continue one")
    if output is not None and (model is None or data is None):
        missing = " and ".join(name for name, value in (("MODEL", model), ("--data FILE", data)) if value is None)
        raise click.UsageError(f"a new run (-o) needs {missing}, e.g. zoo train baby-gpt --data input.txt -o RUN_DIR")
    lora_options = sorted(name for name in given if name.startswith("lora_") and name != "lora_rank") + \
        (["merge"] if "merge" in given else [])
    if lora_options and settings.get("lora_rank") is None and resume is None:
        flag = "--no-merge" if lora_options[0] == "merge" else f"--{lora_options[0].replace('_', '-')}"
        raise click.UsageError(f"{flag} applies to a LoRA run; add --lora RANK (e.g. --lora 8)")
    config = settings_for(model, data, dict(overrides), settings, given, resume)
    kept = sorted(given & {"vocab_size", "tokenizer", "vocabulary"}) if config.task == "translation" and config.weights else []
    if kept:
        raise ZooError(f"--{kept[0].replace('_', '-')}: a fine-tuned translator keeps the vocabulary of its --weights; "
                       "leave the option out")
    unused = sorted(name for name in given if not hasattr(config, name))
    if unused:
        raise ZooError(f"--{unused[0].replace('_', '-')} does not apply to {config.task} ({config.model}); "
                       "see zoo train --help")
    from zoo.training.run import train_run

    run_dir = resume or output
    summary = train_run(config, run_dir, resume=resume is not None, force=force,
                        warn=lambda message: click.echo(f"warning: {message}", err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(summary_line(config, summary, run_dir))


def summary_line(config, summary: dict, run_dir: Path) -> str:
    """The line ``zoo train`` ends with."""
    mfu = "" if summary["mfu"] is None else f" ({summary['mfu']:.1%} MFU)"
    validation = summary["validation"]
    if config.task == "translation":
        bleu = validation.get("bleu")
        figure = f"validation BLEU {bleu if bleu is None else round(bleu, 2)}"
    else:
        figure = (f"validation loss {validation['loss']:.4f} (perplexity {validation['perplexity']:.2f}, "
                  f"{validation['bits_per_character']:.3f} bits per character)")
    averaged = f", weights averaged over {len(summary['averaged_steps'])} points" if summary["averaged_steps"] else ""
    return (f"trained {config.model}: {summary['steps']:,} steps ({summary['epochs']} epochs) in "
            f"{summary['seconds'] / 60:.1f} min, {summary['tokens_per_second'] or 0:,.0f} tokens/s{mfu}; "
            f"{figure}{averaged} -> {run_dir}")


def _plan(model, overrides, data, resume, processes, settings, given) -> None:
    """``zoo train --plan N``: the memory table of a run's settings; nothing is trained or written."""
    import torch

    from zoo.cli.options import print_table
    from zoo.training.config import task_class
    from zoo.training.loop import autocast_for
    from zoo.training.plan import device_budget, plan_lines
    from zoo.training.run import settings_for

    if resume is None and model is None:
        raise click.UsageError("--plan needs MODEL (or --resume RUN_DIR for a run's settings)")
    config = settings_for(model, data or "-", dict(overrides), settings, given, resume)
    task = task_class(config.task)(config, lambda message: None)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast, _ = autocast_for(config, device)
    compute = getattr(autocast, "fast_dtype", torch.float32)
    spec, seq_len, batch = task.planned()
    budget, where = device_budget(device, processes)
    from zoo.core.limits import format_bytes

    click.echo(f"{spec.name}: batch {batch} x {seq_len} tokens a process, {str(compute).removeprefix('torch.')} "
               f"compute{', activations checkpointed' if config.checkpoint_activations else ''}; GiB a process; "
               f"{where}: {'unknown' if budget is None else format_bytes(budget)}")
    print_table(["strategy", "processes", "weights", "gradients", "optimizer", "activations", "total", "fits"],
                plan_lines(task, processes, device, compute))


def _profile(model, overrides, data, resume, steps, json_out, settings, given) -> None:
    """``zoo train --profile``: where a new run's training step spends its time (or --resume RUN_DIR's settings')."""
    import json

    from zoo.core.files import atomic_file
    from zoo.training.config import TrainConfig
    from zoo.training.profile import profile_training, report_lines
    from zoo.training.run import settings_for

    if resume is None and (model is None or data is None):
        raise click.UsageError("--profile needs MODEL and --data FILE (or --resume RUN_DIR for a run's settings)")
    config = TrainConfig.load(resume) if resume is not None else settings_for(model, data, dict(overrides), settings, given)
    result = profile_training(config, steps=steps, warn=lambda message: click.echo(f"warning: {message}", err=True))
    for line in report_lines(result):
        click.echo(line)
    if json_out is not None:
        with atomic_file(json_out) as f:
            f.write((json.dumps(result, indent=2) + "\n").encode("utf-8"))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default=None,
              help="The split of the run's data to score [translators: test; decoders: validation].")
@click.option("--data", type=click.Path(exists=False, path_type=Path), default=None,
              help="Score all of this file instead (no split). Decoders: text (.txt, JSONL 'text', a folder); "
                   "translators: TSV English<TAB>Italian or JSONL en/it pairs. Writes RUN_DIR/eval/FILESTEM-....json.")
@click.option("--beam", type=click.IntRange(min=1), default=DEFAULT_BEAM, show_default=True, help="Translators: beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=DEFAULT_LENGTH_PENALTY, show_default=True,
              help="Translators.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Translators: score N English sources sampled at random (--seed) across the whole split or file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Translators: the --limit sample's seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sentences (translators, 64) or windows "
              "(decoders: as many as keep the logits near 64 MB) per forward pass.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True, help="Translators: sample translations to print.")
@click.option("--skip-bad-lines", is_flag=True, help="Translators: skip malformed data lines (reported) instead of stopping.")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Translators: translate with this ONNX export of the run (zoo export RUN_DIR --format onnx --kv-cache "
                   "[--quantize ...]) in ONNX Runtime instead of PyTorch.")
@click.pass_context
def evaluate(ctx, run_dir, split, data, batch_size, device, **options):
    """Score a training run on a split of its data (or a --data file).

    Decoders: validation loss (nats per token), perplexity and bits per character over the
    whole split, deterministically; writes RUN_DIR/eval/SPLIT.json (FILESTEM.json with --data).
    Translators: translate and report BLEU, chrF (sacrebleu), CER and WER; the headline is
    sacrebleu's single-reference corpus BLEU and chrF with its signatures, the
    multi-reference figure follows. Writes RUN_DIR/eval/SPLIT-DECODING.tsv and .json.
    """
    from zoo.training.evaluate import evaluate as evaluate_run

    if data is not None and split is not None:
        raise click.UsageError("--split chooses a split of the run's data; --data FILE scores all of FILE: give one")
    given = given_options(ctx, ["beam", "alpha", "limit", "seed", "skip_bad_lines", "onnx_dir"])
    samples = options.pop("samples")
    if given_options(ctx, ["samples"]):
        from zoo.training.config import TrainConfig

        task = TrainConfig.load(run_dir).task
        if task != "translation":
            raise ZooError(f"--samples is for translation runs; {run_dir} is a {task} run")
    result = evaluate_run(run_dir, split=split, data=data, device=device, batch_size=batch_size,
                          **{name: options[name] for name in given})
    if isinstance(result, dict):  # a decoder's run
        click.echo(f"{result['where']}: {result['scored_tokens']:,} tokens, {result['characters']:,.0f} characters "
                   f"(windows of {result['seq_len']} tokens)")
        click.echo(f"loss {result['loss']:.4f} nats per token, perplexity {result['perplexity']:.2f}, "
                   f"{result['bits_per_character']:.4f} bits per character")
        click.echo(f"written: {result['path']}")
        return
    from zoo.translation.evaluate import report

    scored = result.result
    sampled = f" (sampled from {result.total:,}, seed {scored.seed})" if scored.sources < result.total else ""
    click.echo(f"{result.where}: {scored.sources:,} English sources{sampled}, {scored.pairs:,} pairs, "
               f"{scored.decoding}, {scored.sentences_per_second:.1f} sentences/s")
    for line in report(scored):
        click.echo(line)
    for src, hyp, refs in list(zip(result.sources, result.hypotheses, result.references))[:samples]:
        click.echo(f"  EN  {src}\n  MT  {hyp}\n  REF {refs[0]}" + (f"  (+{len(refs) - 1} more)" if len(refs) > 1 else ""))
    click.echo(f"translations next to their references: {result.tsv}")


COMMANDS = (train, evaluate)
