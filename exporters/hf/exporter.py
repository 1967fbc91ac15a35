"""The ``hf`` exporter: a zoo GPT-2 as a Hugging Face model directory.

    zoo export gpt2 --format hf -o out/gpt2-hf
    GPT2LMHeadModel.from_pretrained("out/gpt2-hf")      # same logits as the zoo model

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (names and
Conv1D layout of ``GPT2LMHeadModel``, through the ``gpt2`` checkpoint format's table), the
GPT-2 tokenizer files and ``manifest.json``. Verification loads the directory back with
both ``transformers`` and the zoo's loader and compares their logits; an fp32 export
must also come back bit-identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from zoo.core.files import WEIGHTS, write_manifest
from zoo.errors import ExportError, ZooError, first_line
from zoo.core.spec import ModelSpec
from zoo.hf.checkpoint import load_weights
from zoo.hf.formats import closest_format, format_for_spec, layout_problem, to_hf_state_dict

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ATOL = 1e-4  # both sides run in fp32 on the exported weights


def hf_exporter(model: nn.Module, spec: ModelSpec, out_dir: str | Path, *, dtype: str = "fp32",
                verify: bool = True, tokenizer_dir: str | Path | None = None,
                adapter_run: str | Path | None = None) -> dict:
    """Write ``model`` into ``out_dir`` in Hugging Face layout; return the manifest.

    ``adapter_run``: ``model`` is that LoRA run's frozen base, and its adapter goes into
    ``out_dir/adapter`` as a PEFT folder (:mod:`zoo.exporters.hf.adapter`).
    """
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not supported by the hf exporter; choose one of: {', '.join(DTYPES)}")
    if adapter_run is not None and spec.is_encoder_decoder:
        raise ExportError("--adapter writes PEFT adapters for decoders only (Marian's layout permutes the translator's "
                          "projections); export the translator's merged weights: leave --adapter out")
    if spec.is_encoder_decoder:  # a translator, with its run's vocabulary (exporters/hf/translator.py)
        from zoo.exporters.hf.translator import export_translator

        return export_translator(model, spec, out, dtype=DTYPES[dtype], verify=verify, tokenizer_dir=tokenizer_dir)
    problem = layout_problem(spec)
    if problem:
        closest = closest_format(spec)
        target = closest.architecture if closest else "checkpoint format"
        raise ExportError(f"no Hugging Face {target} can hold this model: {problem}")
    fmt = format_for_spec(spec)
    torch_dtype = DTYPES[dtype]

    tensors = {name: t.detach().to("cpu", torch_dtype).contiguous() for name, t in to_hf_state_dict(model).items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    config = fmt.hf_config(spec, torch_dtype)
    config.save_pretrained(out)
    write_generation_config(config, out)
    tokenizer = write_tokenizer(spec, out, tokenizer_dir)
    manifest = {"format": "hf", "model": spec.name, "dtype": dtype, "architecture": fmt.architecture,
                "tokenizer": tokenizer}
    if verify:
        manifest["verification"] = verify_export(model, spec, out, exact=torch_dtype == model.token_table.weight.dtype)
    if adapter_run is not None:
        from zoo.exporters.hf.adapter import write_hf_adapter

        manifest["adapter"] = write_hf_adapter(Path(adapter_run), spec, out, verify=verify)
    return write_manifest(out, manifest)


def write_generation_config(config, out: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(config).save_pretrained(out)


def write_tokenizer(spec: ModelSpec, out: Path, tokenizer_dir: str | Path | None) -> list[str]:
    """The tokenizer files: GPT-2's (and their licence) for a spec whose tokenizer is ``gpt2``;
    otherwise a checkpoint's or training run's own ``tokenizer.json`` (``tokenizer_dir``), as transformers saves it."""
    from zoo.core.files import TOKENIZER
    from zoo.generation.tokenizer import ASSETS, gpt2_tokenizer

    from zoo.core.files import GPT2_VOCAB

    if tokenizer_dir is not None and not any((Path(tokenizer_dir) / name).is_file() for name in (TOKENIZER, GPT2_VOCAB)):
        tokenizer_dir = None  # weights without tokenizer files: the spec's own, if it names one
    if spec.tokenizer != "gpt2" and tokenizer_dir is None:
        return []
    before = set(out.iterdir())
    if spec.tokenizer != "gpt2" and (Path(tokenizer_dir) / TOKENIZER).is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(tokenizer_dir) / TOKENIZER),
                                            model_max_length=spec.context_length)
        for role in ("bos", "eos", "pad"):
            token_id = getattr(spec, f"{role}_token_id", None)
            if token_id is not None and token_id < len(tokenizer):
                setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
        tokenizer.save_pretrained(out)
        return sorted(p.name for p in set(out.iterdir()) - before)
    tokenizer = gpt2_tokenizer(tokenizer_dir)
    tokenizer.model_max_length = spec.context_length
    tokenizer.save_pretrained(out)
    if (ASSETS / "LICENSE").is_file() and tokenizer_dir is None:
        shutil.copyfile(ASSETS / "LICENSE", out / "LICENSE.gpt2-tokenizer")
    return sorted(p.name for p in set(out.iterdir()) - before)


def verify_export(model: nn.Module, spec: ModelSpec, out: Path, exact: bool) -> dict:
    """Load ``out`` with ``transformers`` and with the zoo, compare logits in fp32 on a fixed
    batch, and (``exact``) check the zoo's copy equals ``model`` bit for bit."""
    try:
        theirs = format_for_spec(spec).hf_class().from_pretrained(out, dtype=torch.float32).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ExportError(f"transformers cannot load the export of {spec.name}: {first_line(exc)}") from None
    try:
        ours = load_weights(spec, str(out), dtype=torch.float32)
    except ZooError as exc:
        raise ExportError(f"the zoo cannot load its own export of {spec.name}: {exc}") from None
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (2, min(16, spec.context_length)), generator=generator)  # (2, T)
    with torch.inference_mode():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    if diff > ATOL:
        raise ExportError(f"transformers and the zoo disagree on the export of {spec.name}: max |difference| "
                          f"{diff:.2e} exceeds {ATOL}; nothing was written")
    report = {"max_abs_diff": diff, "atol": ATOL}
    if exact:
        original = model.state_dict()
        changed = [name for name, t in ours.state_dict().items()
                   if not torch.equal(t.to(original[name].dtype), original[name].cpu())]
        if changed:
            raise ExportError(f"the export of {spec.name} does not load back bit-identical ({', '.join(changed[:3])} "
                              "differ); nothing was written")
        report["round_trip"] = "bit-identical"
    return report
