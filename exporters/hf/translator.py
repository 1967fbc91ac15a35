"""The ``hf`` exporter's encoder-decoder path: a zoo translator run as a directory of its checkpoint
family (``MarianMTModel`` for the built-in translators), with the run's vocabulary as its tokenizer.

    zoo export RUN_DIR --format hf -o out/en-it-hf
    pipeline("translation", model="out/en-it-hf")           # translates as zoo translate does

Writes ``config.json``, ``generation_config.json`` and ``model.safetensors`` (through the
table and channel permutation of the ``marian`` checkpoint format), the run's shared subword
vocabulary as ``tokenizer.json`` + ``tokenizer_config.json`` (``AutoTokenizer`` loads it),
and ``manifest.json``. Verification loads the directory back with transformers, checks the
weights it holds are the ones written, the tokenizer encodes as the zoo's vocabulary does,
and the logits on a right-padded batch are within ``ATOL`` of the zoo model's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from zoo.core.files import write_manifest
from zoo.core.spec import ModelSpec
from zoo.errors import ExportError, first_line
from zoo.hf.formats import format_for_spec, layout_problem, to_hf_model, to_hf_state_dict
from zoo.hf.marian import save_marian_tokenizer, shared_vocabulary_problem
from zoo.plugins.checkpoints.marian import MARIAN_EPS

ATOL = 1e-4  # both sides run in fp32 on the exported weights
CHECK_SENTENCES = ("Tom sees the red cat.", "Where is the station? I don't know.")


def export_translator(model: nn.Module, spec: ModelSpec, out: Path, *, dtype: torch.dtype = torch.float32,
                  verify: bool = True, tokenizer_dir: str | Path | None = None) -> dict:
    """Write translator ``model`` into ``out`` as a ``MarianMTModel`` with its tokenizer; return the manifest.

    ``dtype``: of the written weights (the hf exporter checks ``--dtype``); ``tokenizer_dir``: the run
    directory whose shared ``tokenizer.json`` goes along.
    """
    from zoo.translation.vocabulary import Vocabulary

    problem = layout_problem(spec)
    if problem:
        raise ExportError(f"no Hugging Face MarianMTModel can hold this model: {problem}")
    fmt = format_for_spec(spec)
    if tokenizer_dir is None:
        raise ExportError(f"{spec.name}: a translator's vocabulary lives in its run directory; "
                          "export the run: zoo export RUN_DIR --format hf -o OUT")
    problem = shared_vocabulary_problem(Path(tokenizer_dir))
    if problem:
        raise ExportError(problem)
    vocabulary = Vocabulary.load(tokenizer_dir)
    if vocabulary.size != spec.vocab_size:
        raise ExportError(f"{tokenizer_dir}: its vocabulary has {vocabulary.size} tokens but {spec.name} has "
                          f"vocab_size {spec.vocab_size}; export the run directory the model was trained in")

    to_hf_model(model, fmt).to(dtype).save_pretrained(out)
    write_generation_config(spec, out)
    tokenizer = save_marian_tokenizer(vocabulary.source, spec.context_length, out)
    manifest = {"format": "hf", "model": spec.name, "dtype": "fp16" if dtype == torch.float16 else "fp32",
                "architecture": fmt.architecture, "tokenizer": tokenizer,
                "channel_order": "zoo channels 0, 2, 4, ... then 1, 3, 5, ... (Marian's sines-then-cosines)",
                "inexact": marian_inexact(spec) if fmt.model_type == "marian" else []}
    if verify:
        manifest["verification"] = verify_translator(model, spec, fmt, vocabulary, out, dtype)
    return write_manifest(out, manifest)


def marian_inexact(spec: ModelSpec) -> list[str]:
    """What differs between the zoo model and its Marian export (empty: the export is exact)."""
    import math

    eps = spec.norm.options.eps
    if math.isclose(eps, MARIAN_EPS, rel_tol=1e-9):
        return []
    return [f"layer norm eps {eps:g} (Marian's is fixed at {MARIAN_EPS:g})"]


def write_generation_config(spec: ModelSpec, out: Path) -> None:
    """Greedy decoding that starts at ``<s>`` and stops at ``</s>``, as the zoo's greedy search does."""
    from transformers import GenerationConfig

    config = format_for_spec(spec).hf_config(spec)
    GenerationConfig(decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
                     eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                     max_length=spec.context_length, num_beams=1, do_sample=False).save_pretrained(out)


def verify_translator(model: nn.Module, spec: ModelSpec, fmt, vocabulary, out: Path, dtype: torch.dtype) -> dict:
    """Load ``out`` with transformers; compare weights, tokenization and fp32 logits with the zoo's."""
    from transformers import AutoTokenizer

    try:
        theirs = fmt.hf_class().from_pretrained(out, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ExportError(f"transformers cannot load the export of {spec.name}: {first_line(exc)}") from None
    ours = copy.deepcopy(model).to("cpu", dtype).float().eval()  # the zoo model at the exported precision
    loaded = theirs.state_dict()
    changed = [name for name, t in to_hf_state_dict(ours, fmt).items() if not torch.equal(loaded[name], t)]
    if changed:
        raise ExportError(f"{fmt.architecture} does not load the export of {spec.name} as written ({', '.join(changed[:3])} "
                          "differ); nothing was written")
    expected = vocabulary.encode_source(CHECK_SENTENCES)
    if tokenizer(list(CHECK_SENTENCES)).input_ids != expected:
        raise ExportError(f"the exported tokenizer of {spec.name} does not encode as the run's vocabulary does; "
                          "nothing was written")
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, spec.vocab_size, (2, 12), generator=generator)  # (2, S)
    src[1, 7:] = 0  # right padding, as the translator pads
    tgt = torch.randint(4, spec.vocab_size, (2, 9), generator=generator)  # (2, T)
    tgt[:, 0] = 1
    mask = (src != 0).long()
    with torch.inference_mode():
        diff = (ours(src, tgt, mask) - theirs(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits)
    diff = diff.abs().max().item()
    if diff > ATOL:
        raise ExportError(f"{fmt.architecture} and the zoo disagree on the export of {spec.name}: max |difference| "
                          f"{diff:.2e} exceeds {ATOL}; nothing was written")
    return {"max_abs_diff": diff, "atol": ATOL, "weights": "as written", "tokenizer": "encodes as the run's"}
