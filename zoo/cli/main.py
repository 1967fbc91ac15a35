"""The ``zoo`` command line: one short function per command, each calling the Python API.

Heavy imports (torch, transformers, onnx) happen inside the commands, so ``zoo --help``
stays fast. Every :class:`zoo.errors.ZooError` is printed as one line on stderr with a
non-zero exit and no traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from zoo.errors import ZooError
from zoo.translation.train_config import TrainConfig, parse_interval


class ZooGroup(click.Group):
    """Turns zoo's user errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was left half-written", err=True)
            sys.exit(130)


class OverrideType(click.ParamType):
    """``PATH=VALUE`` for ``--set``; the value is parsed as YAML (``4``, ``true``, ``rotary``)."""

    name = "PATH=VALUE"

    def convert(self, value, param, ctx):
        from zoo.core.spec import parse_override

        try:
            return parse_override(value)
        except ZooError as exc:
            self.fail(str(exc), param, ctx)


def spec_options(func):
    """``MODEL`` argument (registry name or spec file) plus repeatable ``--set``."""
    func = click.option("--set", "overrides", multiple=True, type=OverrideType(),
                        help="Override a spec field, e.g. --set attention.n_kv_heads=4 (repeatable).")(func)
    return click.argument("model")(func)


def load_spec_arg(model: str, overrides) -> "ModelSpec":  # noqa: F821
    from zoo.core.spec import load_spec

    return load_spec(model, dict(overrides) or None)


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="PATH_OR_MODULE",
              help="Load a local plugin file or module (repeatable; also ZOO_PLUGINS).")
@click.version_option(package_name="zoo")
def cli(plugins):
    """zoo: assemble, check and ship transformer models."""
    from zoo.core.registry import use_local_plugins

    use_local_plugins(plugins)


@cli.command("list")
def list_cmd():
    """List the models in the registry."""
    from zoo.core.builder import assemble, count_parameters
    from zoo.core.spec import list_models, load_spec

    rows = []
    for name in list_models():
        spec = load_spec(name)
        rows.append((name, spec.family, f"{count_parameters(assemble(spec)):,}", spec.description))
    _table(("model", "family", "parameters", "description"), rows)


@cli.command()
def plugins():
    """List every registered component by kind, with where it came from."""
    from zoo.core.registry import get_registry

    rows = [(e.kind, e.name, _qualname(e.component), e.origin) for e in get_registry().entries()]
    _table(("kind", "name", "class", "origin"), rows)


@cli.command()
@spec_options
def describe(model, overrides):
    """Print the resolved spec and a parameter table, without allocating weights."""
    from zoo.core.builder import parameter_table

    spec = load_spec_arg(model, overrides)
    click.echo(spec.to_yaml().rstrip())
    click.echo()
    rows = parameter_table(spec)
    total = sum(r.count for r in rows)
    _table(("part", "plugin", "parameters", "share"),
           [(r.part, r.plugin, f"{r.count:,}", f"{100 * r.count / total:.1f}%") for r in rows]
           + [("total", "", f"{total:,}", "100.0%")])


@cli.command()
@spec_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write model.safetensors, spec.yaml and manifest.json into.")
@click.option("--weights", default=None, help="'hf' (the spec's hub id), a hub id, a Hugging Face directory or a zoo model directory; default: random init.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for initialisation.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def build(model, overrides, output, weights, seed, dtype, force):
    """Assemble MODEL (a registry name or spec file) and write it to a directory."""
    import torch

    from zoo.core.model_dir import save_model

    spec = load_spec_arg(model, overrides)
    net = model_from_args(spec, weights, seed=seed, dtype=getattr(torch, dtype))
    manifest = save_model(net, spec, output, overwrite=force)
    source = f"weights from {weights}" if weights else f"random init, seed {seed}"
    click.echo(f"built {spec.name}: {manifest['parameters']:,} parameters ({manifest['dtype']}, {source}) -> {output}")


@cli.command()
@spec_options
@click.option("--format", "fmt", default="onnx", show_default=True, help="Export format (a registered exporter: onnx, hf).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--weights", default=None, help="'hf' (the spec's hub id), a hub id, a Hugging Face directory or a zoo model directory; default: random init.")
@click.option("--kv-cache", is_flag=True, help="Export past key/values as inputs and present ones as outputs.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice).")
@click.option("--no-validate", is_flag=True, help="Skip running the exported model against PyTorch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export(model, overrides, fmt, output, weights, kv_cache, dtype, opset, no_validate, seed, force):
    """Export MODEL to another format; the directory appears complete or not at all."""
    from zoo.core.export import export_model

    spec = load_spec_arg(model, overrides)
    net = model_from_args(spec, weights, seed=seed)
    extra = {}
    if fmt == "onnx" and weights and Path(weights).is_dir():
        extra["tokenizer_dir"] = weights  # a run or Hugging Face directory: its tokenizer files go along
    manifest = export_model(net, spec, output, fmt, overwrite=force, kv_cache=kv_cache, dtype=dtype,
                            opset=opset, validate=not no_validate, **extra)
    click.echo(f"exported {spec.name} as {fmt} -> {output} ({len(manifest.get('files', {}))} files)")


def _given(ctx, name: str) -> bool:
    """Whether option ``name`` was set by the user rather than left at its default."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def _interval(ctx, param, value):
    """Check ``--checkpoint-every``/``--eval-every``: a step count or a time such as 5m."""
    try:
        parse_interval(value)
    except ZooError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


_TRAIN = TrainConfig()  # zoo train's defaults

# Options of `zoo train` that decide the run's trajectory: fixed once a run starts.
_TRAJECTORY = ("batch_tokens", "lr", "warmup_steps", "label_smoothing", "clip_norm", "weight_decay", "vocab_size",
               "tokenizer", "vocabulary", "amp", "seed")
# ... and those a resumed run may change: when to stop, checkpoint and validate.
_ADJUSTABLE = ("max_minutes", "max_steps", "epochs", "checkpoint_every", "eval_every", "eval_sentences")


@cli.command()
@spec_options
@click.option("--data", required=True, help="A TSV (English<TAB>Italian) or JSONL (en/it) file, or 'opus_books' from the local Hugging Face cache.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None, help="New run directory.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), default=None, help="Continue this run directory from its newest checkpoint.")
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
@click.option("--checkpoint-every", default=_TRAIN.checkpoint_every, show_default=True, callback=_interval,
              help="Between checkpoints: steps (200) or training time (90s, 5m).")
@click.option("--eval-every", default=_TRAIN.eval_every, show_default=True, callback=_interval,
              help="Between validation runs: steps (500) or training time (5m).")
@click.option("--eval-sentences", type=click.IntRange(min=0), default=_TRAIN.eval_sentences, show_default=True, help="Validation sources translated for BLEU.")
@click.option("--seed", type=int, default=_TRAIN.seed, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed data lines (reported) instead of stopping.")
@click.option("--force", is_flag=True, help="Replace an existing -o directory.")
@click.pass_context
def train(ctx, model, overrides, data, output, resume, force, **options):
    """Train translation MODEL on English-Italian pairs; -o starts a run, --resume continues one.

    Runs distributed, unchanged, under torchrun (gloo on CPU, NCCL on GPU).
    """
    import dataclasses

    from zoo.translation.training import train as train_run

    if (output is None) == (resume is None):
        raise click.UsageError("give -o RUN_DIR to start a run or --resume RUN_DIR to continue one")
    data_path = Path(data)
    data = str(data_path.resolve()) if data_path.is_file() else data
    if resume is not None:
        config = TrainConfig.load(resume)
        if config.model != model:
            raise ZooError(f"{resume} trains {config.model}, not {model}; name the same model to resume it")
        if config.data != data:
            raise ZooError(f"{resume} was trained on {config.data}, not {data}; resume it with the same --data")
        changed = [name for name in _TRAJECTORY if _given(ctx, name) and options[name] != getattr(config, name)]
        if changed or (overrides and dict(overrides) != config.overrides):
            what = f"--{changed[0].replace('_', '-')}" if changed else "--set"
            raise ZooError(f"{what} differs from the run's setting; a resumed run keeps its settings (see {resume}/train.json)")
        budget = {name: options[name] for name in _ADJUSTABLE if _given(ctx, name)}
        config = dataclasses.replace(config, **budget)
    else:
        config = TrainConfig(model=model, data=data, overrides=dict(overrides), **options)
    run_dir = resume or output
    summary = train_run(config, run_dir, resume=resume is not None, force=force,
                        warn=lambda message: click.echo(f"warning: {message}", err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        bleu = summary["validation_bleu"]
        click.echo(f"trained {config.model}: {summary['steps']:,} steps ({summary['epochs']} epochs) in "
                   f"{summary['seconds'] / 60:.1f} min, {summary['tokens_per_second'] or 0:,.0f} tokens/s; "
                   f"validation BLEU {bleu if bleu is None else round(bleu, 2)} -> {run_dir}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True)
@click.option("--data", default=None, help="Parallel data to split (default: the run's training data).")
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True, help="Beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=0.6, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N sources of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True, help="Sample translations to print.")
def evaluate(run_dir, split, data, beam, alpha, limit, batch_size, device, samples):
    """Translate a split of the run's data and report BLEU, chrF (sacrebleu), CER and WER.

    Writes RUN_DIR/eval/SPLIT-DECODING.tsv (source, translation, references) and .json.
    """
    from zoo.translation.data import group_references, read_pairs, split_pairs
    from zoo.translation.evaluate import evaluate as evaluate_split, write_evaluation
    from zoo.translation.search import load_translator

    translator = load_translator(run_dir, "torch", device)
    config = TrainConfig.load(run_dir)
    warn = lambda message: click.echo(f"warning: {message}", err=True)  # noqa: E731
    pairs = read_pairs(data or config.data, config.skip_bad_lines, warn)
    chosen = split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)[split]
    sources, references = group_references(chosen)
    if limit:
        sources, references = sources[:limit], references[:limit]
    if not sources:
        raise ZooError(f"the {split} split of {data or config.data} is empty")
    result, hypotheses = evaluate_split(translator, sources, references, split, beam=beam, alpha=alpha,
                                        batch_size=batch_size, progress=True)
    tsv, _ = write_evaluation(run_dir / "eval", result, sources, hypotheses, references)
    click.echo(f"{split}: {result.sources:,} English sources, {result.pairs:,} pairs, {result.decoding}, "
               f"{result.sentences_per_second:.1f} sentences/s")
    click.echo(f"  all references  {result.all_references.line()}")
    click.echo(f"  per pair        {result.per_pair.line()}")
    for src, hyp, refs in list(zip(sources, hypotheses, references))[:samples]:
        click.echo(f"  EN  {src}\n  MT  {hyp}\n  REF {refs[0]}" + (f"  (+{len(refs) - 1} more)" if len(refs) > 1 else ""))
    click.echo(f"translations next to their references: {tsv}")


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("sentences", nargs=-1)
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True, help="Beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=0.6, show_default=True)
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


@cli.command()
@spec_options
@click.option("--runtime", "runtimes", default="torch,onnxruntime,hf", show_default=True,
              help="Comma-separated runtimes to measure: torch, onnxruntime, hf.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for PyTorch and ONNX Runtime (default: every core this process may use).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per figure (median, min and max are reported).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed runs first.")
@click.option("--new-tokens", type=click.IntRange(min=2), default=32, show_default=True,
              help="Tokens generated per decode run.")
@click.option("--tiny", is_flag=True, help="A tiny model and small ceilings: checks the harness in seconds.")
@click.option("--skip-xl", is_flag=True,
              help="Skip building gpt2-xl from a 6.2 GB safetensors file (written to a temp dir, deleted after).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as JSON here and a PNG chart beside it.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the PNG chart (default: the JSON path with .png).")
def bench(model, overrides, runtimes, device, threads, repeats, warmup, new_tokens, tiny, skip_xl, output, chart):
    """Measure MODEL's prefill, decode, ONNX export and gpt2-xl build against Hugging Face and the machine's ceilings."""
    from zoo.bench.options import BenchOptions
    from zoo.bench.run import run_bench
    from zoo.bench.report import render, write_chart, write_json

    options = BenchOptions(model=model, overrides=dict(overrides), device=device, threads=threads,
                           runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), repeats=repeats,
                           warmup=warmup, new_tokens=new_tokens, tiny=tiny, skip_xl=skip_xl)
    report = run_bench(options)
    click.echo(render(report))
    chart = chart or (output.with_suffix(".png") if output else None)
    if output:
        write_json(report, output)
    if chart:
        write_chart(report, chart)
    if output or chart:
        click.echo("wrote " + " and ".join(str(p) for p in (output, chart) if p))


WEIGHTS_HELP = ("'hf' (the spec's hub id), a hub id, a Hugging Face directory or a zoo model directory; "
                "default: random init.")
TOKENIZER_HELP = "GPT-2 tokenizer directory (vocab.json + merges.txt); default: the copy shipped with zoo."


@cli.command()
@spec_options
@click.option("--against", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="Reference implementation: transformers' GPT2LMHeadModel.")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False), default=None, help=TOKENIZER_HELP)
@click.option("--prompt", "prompts", multiple=True, help="Text to compare on (repeatable; default: four built-in prompts).")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Greedy decoding steps whose tokens must be identical.")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Largest allowed |logit difference| (default: 1e-4 in float32).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def verify(model, overrides, against, weights, tokenizer_dir, prompts, steps, atol, seed, device):
    """Run MODEL and Hugging Face's GPT2LMHeadModel on the same weights and print a parity
    report; exit 0 only when logits are within tolerance and greedy tokens identical."""
    from zoo.generation.tokenizer import gpt2_tokenizer
    from zoo.hf.verify import PROMPTS, hf_reference, verify_against_hf
    from zoo.hf.gpt2 import gpt2_layout_problem

    spec = load_spec_arg(model, overrides)
    problem = gpt2_layout_problem(spec)
    if problem:
        raise ZooError(f"cannot verify against {against}: {problem}")
    tokenizer = gpt2_tokenizer(tokenizer_dir)
    net = model_from_args(spec, weights, seed=seed, device=device)
    report = verify_against_hf(net, hf_reference(net, weights), tokenizer, prompts or PROMPTS, steps, atol,
                               weights=weights or f"random init (seed {seed})")
    click.echo("\n".join(report.lines()))
    if not report.passed:
        sys.exit(1)


@cli.command()
@spec_options
@click.argument("prompts", nargs=-1, required=True)
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature; 0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample from the K most likely tokens.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Sample from the smallest set of tokens whose probability reaches P.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling (and random init).")
@click.option("--no-cache", is_flag=True, help="Re-run the whole sequence every step (same tokens, slower).")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past <|endoftext|>.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False), default=None, help=TOKENIZER_HELP)
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="onnxruntime: MODEL is a directory written by 'zoo export --format onnx'.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="PyTorch CPU threads (default: PyTorch's choice; 1 decodes faster on a busy machine).")
def generate(model, overrides, prompts, weights, max_new_tokens, temperature, top_k, top_p, seed, no_cache,
             ignore_eos, tokenizer_dir, runtime, device, dtype, threads):
    """Continue each PROMPT with MODEL; one prompt is streamed as it is generated, several
    run as one left-padded batch."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)

    from zoo.generation.sampling import generate as generate_tokens
    from zoo.generation.tokenizer import TextStream, gpt2_tokenizer

    tokenizer = gpt2_tokenizer(tokenizer_dir)
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt")
    empty = [i + 1 for i, row in enumerate(batch.attention_mask) if not row.any()]
    if empty:
        raise ZooError(f"prompt {empty[0]} is empty; give each prompt some text")
    if runtime == "onnxruntime":
        if overrides or weights:
            raise ZooError("--set and --weights do not apply to --runtime onnxruntime: MODEL is an exported directory")
        from zoo.exporters.onnx_runtime import load

        net = load(model, device=device)
        device = str(net.device)  # cpu when ONNX Runtime's CUDA provider does not load (it says so)
    else:
        spec = load_spec_arg(model, overrides)
        net = model_from_args(spec, weights, seed=seed, device=device, dtype=getattr(torch, dtype))
        if not weights:
            click.echo(f"note: {spec.name} has random weights (seed {seed}); pass --weights hf for trained ones", err=True)
    batch = batch.to(device)
    eos = None if ignore_eos else tokenizer.eos_token_id
    stream = None
    if len(prompts) == 1:
        click.echo(prompts[0], nl=False)
        stream = TextStream(tokenizer, lambda text: click.echo(text, nl=False))
    start = time.perf_counter()
    tokens = generate_tokens(net, batch.input_ids, batch.attention_mask, max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos, use_cache=not no_cache,
                             stream=stream)
    seconds = time.perf_counter() - start
    new = tokens[:, batch.input_ids.shape[1]:]  # (B, N)
    if stream is not None:
        click.echo()
    else:
        for i, (prompt, row) in enumerate(zip(prompts, new)):
            click.echo(("\n" if i else "") + prompt + tokenizer.decode(row, skip_special_tokens=True))
    click.echo(f"{new.numel()} tokens in {seconds:.2f} s ({new.numel() / seconds:.1f} tokens/s)", err=True)


@cli.group()
def show():
    """Draw pictures, PNG or SVG: positional encodings, attention maps, model structure."""


def picture_output(default: str):
    """``-o/--output`` (a .png or .svg file) and ``--dpi`` for the ``zoo show`` commands."""
    def decorate(func):
        func = click.option("--dpi", type=click.IntRange(min=20, max=600), default=100, show_default=True,
                            help="Pixels per inch of a PNG.")(func)
        return click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
                            help=f"Picture to write, *.png or *.svg (default: {default}).")(func)
    return decorate


def _picture_model(model: str, overrides, weights: str | None, seed: int):
    """The model a picture shows and its directory (None for a registry name or spec file):
    a model directory's own weights, ``--weights``, or a seeded random init."""
    from zoo.errors import PictureError

    directory = Path(model) if Path(model).is_dir() else None
    if directory is not None and not weights and (directory / "model.safetensors").is_file():
        from zoo.core.model_dir import load_model

        if overrides:
            raise PictureError(f"--set cannot change the trained model in {directory}; drop --set")
        return load_model(directory), directory
    return model_from_args(load_spec_arg(model, overrides), weights, seed=seed), directory


def _wrote(output: Path, size: tuple[int, int]) -> None:
    unit = "pt" if output.suffix.lower() == ".svg" else "px"
    click.echo(f"wrote {output} ({size[0]}×{size[1]} {unit})")


@show.command("positional")
@click.argument("scheme")
@click.option("--model", "model_name", default=None, metavar="MODEL",
              help="Draw the scheme at MODEL's size (registry name, spec file or model directory); "
                   "a model directory or --weights gives learned positions their trained values.")
@click.option("--weights", default=None, help="MODEL's weights ('hf', a hub id, a Hugging Face or zoo directory).")
@click.option("--d-model", type=click.IntRange(min=2), default=None, help="Model width (default: MODEL's, else 128).")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="Attention heads (default: MODEL's, else 8).")
@click.option("--length", type=click.IntRange(min=2), default=64, show_default=True, help="Positions to show.")
@click.option("--set", "overrides", multiple=True, type=OverrideType(),
              help="Override a spec field, e.g. --set positional.base=500 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for learned positions without weights.")
@picture_output("SCHEME.png")
def show_positional(scheme, model_name, weights, d_model, heads, length, overrides, seed, output, dpi):
    """Draw positional scheme SCHEME and its effect on attention."""
    from zoo.errors import PictureError
    from zoo.show.figures import check_output, save_figure
    from zoo.show.positional import fresh_scheme, positional_figure, positional_spec, trained_scheme

    output = check_output(output or f"{scheme}.png")
    if weights and model_name is None:
        raise PictureError("--weights needs --model, the model the weights belong to")
    if model_name is not None and (weights or Path(model_name, "model.safetensors").is_file()):
        if d_model or heads:
            raise PictureError("--d-model and --heads cannot resize a model with weights; drop them")
        net, _ = _picture_model(model_name, overrides, weights, seed)
        spec, source = net.spec, f"weights: {weights or model_name}"
        positions = trained_scheme(net, scheme, length)
    else:
        spec = positional_spec(scheme, model_name, d_model, heads, length, dict(overrides))
        positions, source = fresh_scheme(spec, seed), f"random init, seed {seed}"
    _wrote(output, save_figure(positional_figure(positions, spec, length, source), output, dpi))


@show.command("attention")
@spec_options
@click.argument("text")
@click.option("--weights", default=None, help="'hf', a hub id, a Hugging Face directory or a zoo model directory; default: MODEL's directory, else random init.")
@click.option("--layer", type=int, default=None, help="Show this layer only (default: every layer).")
@click.option("--head", default=None, help="Show this head only, or 'mean' for the average of the heads (default: every head).")
@click.option("--kind", type=click.Choice(["cross", "encoder", "decoder"]), default=None,
              help="Translation models: cross-attention alignment (default), encoder or decoder self-attention.")
@click.option("--target", default=None, help="Translation models: the target text (default: the model's greedy translation).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Translation models: longest greedy translation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no weights.")
@picture_output("attention.png")
def show_attention(model, overrides, text, weights, layer, head, kind, target, max_tokens, seed, output, dpi):
    """Draw MODEL's attention maps over TEXT, tokens on the axes."""
    from zoo.show.figures import check_output, save_figure
    from zoo.show.attention import attention_figure, attention_maps

    output = check_output(output or "attention.png")
    net, directory = _picture_model(model, overrides, weights, seed)
    maps = attention_maps(net, text, directory, kind, target, max_tokens)
    maps.notes.append(f"weights: {weights or directory}" if weights or directory else f"random init, seed {seed}")
    head = int(head) if head is not None and head.lstrip("-").isdigit() else head
    _wrote(output, save_figure(attention_figure(maps, layer, head), output, dpi))


@show.command("model")
@spec_options
@picture_output("MODEL.svg")
def show_model(model, overrides, output, dpi):
    """Draw MODEL's architecture, with plugins and parameter counts."""
    from zoo.show.figures import check_output, save_figure
    from zoo.show.model import model_figure

    spec = load_spec_arg(model, overrides)
    output = check_output(output or f"{spec.name}.svg")
    _wrote(output, save_figure(model_figure(spec), output, dpi))


def model_from_args(spec, weights: str | None, seed: int = 0, device: str = "cpu", dtype=None):
    """The model a command works on: weights from ``--weights`` or a seeded random init."""
    import torch

    if weights:
        from zoo.hf.checkpoint import load_weights

        return load_weights(spec, weights, device=device, dtype=dtype or torch.float32)
    from zoo.core.builder import build as build_model

    return build_model(spec, seed=seed, device=device, dtype=dtype or torch.float32)


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _table(header, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(line.format(*header).rstrip())
    click.echo(line.format(*("-" * w for w in widths)).rstrip())
    for row in rows:
        click.echo(line.format(*row).rstrip())


def main() -> None:
    cli(prog_name="zoo")


if __name__ == "__main__":
    main()
