"""``zoo generate``: continue prompts with a model, in PyTorch or ONNX Runtime."""

from __future__ import annotations

import click

from zoo.cli.options import TOKENIZER_HELP, WEIGHTS_HELP, run_weights, load_spec_arg, model_from_args, spec_options
from zoo.errors import ZooError


@click.command()
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
@click.option("--runtime", default="torch", show_default=True,
              help="torch, or a registered runtime (onnxruntime: MODEL is a directory written by "
                   "'zoo export --format onnx').")
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

    if runtime != "torch":
        from zoo.core.registry import get_registry

        if runtime not in get_registry().names("runtime"):
            raise ZooError(f"unknown runtime {runtime!r}; choose torch or {', '.join(get_registry().names('runtime'))}")
        tokenizer = gpt2_tokenizer(tokenizer_dir)
    else:  # the checkpoint's own tokenizer.json; GPT-2 keeps its shipped tokenizer
        from zoo.hf.tokenizer import weights_tokenizer

        weights = run_weights(model, weights)
        if weights:
            from zoo.training.run import check_trained

            check_trained(weights)
        tokenizer = weights_tokenizer(load_spec_arg(model, overrides), tokenizer_dir, weights)
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt")
    empty = [i + 1 for i, row in enumerate(batch.attention_mask) if not row.any()]
    if empty:
        raise ZooError(f"prompt {empty[0]} is empty; give each prompt some text")
    if runtime != "torch":
        if overrides or weights:
            raise ZooError(f"--set and --weights do not apply to --runtime {runtime}: MODEL is an exported directory")
        net = get_registry().get("runtime", runtime)(model, device=device)
        device = str(getattr(net, "device", None) or next(net.parameters()).device)  # cpu when ONNX Runtime's CUDA provider does not load (it says so)
    else:
        spec = load_spec_arg(model, overrides)
        if dtype == "bfloat16" and device == "cpu":
            from zoo.core.limits import cpu_has_bf16

            if not cpu_has_bf16():
                click.echo("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bfloat16 would run slower "
                           "than float32; generating in float32", err=True)
                dtype = "float32"
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


COMMANDS = (generate,)
