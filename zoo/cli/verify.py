"""``zoo verify``: a model against its family's transformers class (GPT2LMHeadModel, LlamaForCausalLM,
...; a translator: MarianMTModel) on the same weights."""

from __future__ import annotations

import sys

import click

from zoo.cli.options import TOKENIZER_HELP, WEIGHTS_HELP, load_spec_arg, model_from_args, run_weights, spec_options


@click.command()
@spec_options
@click.option("--against", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="Reference implementation: the family's transformers class (GPT2LMHeadModel, LlamaForCausalLM, ...).")
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
    """Run MODEL and its family's transformers class on the same weights and print a parity
    report; exit 0 only when logits are within tolerance and greedy tokens identical.
    A translator's run directory (zoo verify RUN_DIR) is compared with MarianMTModel."""
    from zoo.hf.verify import verify as verify_model

    spec = load_spec_arg(model, overrides)
    weights = run_weights(model, weights)
    net = model_from_args(spec, weights, seed=seed, device=device)
    report = verify_model(net, against, weights, tokenizer_dir, prompts, steps, atol,
                          label=weights or f"random init (seed {seed})")
    click.echo("\n".join(report.lines()))
    if not report.passed:
        sys.exit(1)


COMMANDS = (verify,)
