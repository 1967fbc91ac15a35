"""The files that let onnxruntime-genai run an ONNX export as it is.

    import onnxruntime_genai as og
    model = og.Model("out/gpt2-onnx")          # reads genai_config.json
    tokenizer = og.Tokenizer(model)            # reads tokenizer.json + tokenizer_config.json

A decoder-only export with a key/value cache gets ``genai_config.json``: the decoder's
file, shape and input/output names (the shared ones of
:mod:`zoo.exporters.onnx.graphs`) and greedy search defaults. A GPT-2 vocabulary also
gets ``tokenizer.json`` + ``tokenizer_config.json``; any other vocabulary has no
tokenizer zoo knows, so none is written and genai is given token ids
(``generator.append_tokens``). What was written, or why not, goes into the manifest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from zoo.core.files import GPT2_VOCAB, TOKENIZER
from zoo.core.spec import ModelSpec

GENAI_CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# genai's generic decoder-only model with separate past_key_values.{i}.key/.value inputs
# ("gpt2" in genai means the older combined past_{i} cache of ONNX Runtime's GPT-2 tools).
GENAI_TYPE = "llama"


def write_genai_files(spec: ModelSpec, out: Path, decoder: dict, kv_cache: bool) -> dict:
    """Write ``genai_config.json`` (and the tokenizer files genai reads) into ``out``
    for the decoder graph whose manifest entry is ``decoder``; return the manifest's
    ``genai`` entry: the files written, or the reason there are none."""
    if spec.is_encoder_decoder:
        return {"config": None, "reason": "onnxruntime-genai does not run zoo's encoder-decoder graphs; "
                                          "use zoo's runtime (zoo translate --runtime onnxruntime)"}
    if not kv_cache:
        return {"config": None, "reason": "onnxruntime-genai needs the key/value cache; export with --kv-cache"}
    (out / GENAI_CONFIG).write_text(json.dumps(genai_config(spec, decoder), indent=2) + "\n", encoding="utf-8")
    tokenizer, reason = write_tokenizer(spec, out)
    return {"config": GENAI_CONFIG, "tokenizer": tokenizer, **({"tokenizer_reason": reason} if reason else {})}


def genai_config(spec: ModelSpec, decoder: dict) -> dict:
    """The ``genai_config.json`` of the decoder graph ``decoder`` (its manifest entry)."""
    names = {entry["name"] for entry in decoder["inputs"]}
    eos = spec.eos_token_id if spec.eos_token_id is not None else spec.vocab_size - 1
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if "position_ids" in names:
        inputs["position_ids"] = "position_ids"
    return {
        "model": {
            "type": GENAI_TYPE,
            "context_length": spec.context_length,
            "vocab_size": spec.vocab_size,
            "bos_token_id": spec.bos_token_id if spec.bos_token_id is not None else eos,
            "eos_token_id": eos,
            "pad_token_id": spec.pad_token_id if spec.pad_token_id is not None else eos,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": decoder["file"],
                "head_size": spec.head_dim,
                "hidden_size": spec.d_model,
                "num_attention_heads": spec.n_heads,
                "num_hidden_layers": spec.n_layers,
                "num_key_value_heads": spec.n_kv_heads,
                "inputs": inputs,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {  # greedy, as `zoo generate` with no sampling options
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": spec.context_length,
            "min_length": 0, "early_stopping": True, "length_penalty": 1.0, "diversity_penalty": 0.0,
            "no_repeat_ngram_size": 0, "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
            "past_present_share_buffer": False,  # the graph returns a grown cache, not an updated buffer
        },
    }


def write_tokenizer(spec: ModelSpec, out: Path) -> tuple[list[str], str | None]:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` for a GPT-2 vocabulary, built
    from the GPT-2 files already in ``out`` (or zoo's copy); return the names written, or
    no names and the reason."""
    if spec.tokenizer != "gpt2":
        return [], (f"no tokenizer is known for the {spec.tokenizer or 'unnamed'} vocabulary; "
                    "give onnxruntime-genai token ids (generator.append_tokens)")
    from zoo.generation.tokenizer import gpt2_tokenizer

    copied = (out / GPT2_VOCAB).is_file() or (out / TOKENIZER).is_file()
    tokenizer = gpt2_tokenizer(out if copied else None)
    if len(tokenizer) > spec.vocab_size:
        return [], (f"the GPT-2 tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size "
                    f"{spec.vocab_size}; give onnxruntime-genai token ids (generator.append_tokens)")
    written = [TOKENIZER_CONFIG] if (out / TOKENIZER).is_file() else [TOKENIZER, TOKENIZER_CONFIG]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in written:
            shutil.copyfile(Path(tmp) / name, out / name)
    return written, None
