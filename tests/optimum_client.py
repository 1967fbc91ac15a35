"""Run a zoo web export in Hugging Face Optimum (ONNX Runtime), as a user would; print JSON.

    .venv-optimum/bin/python tests/optimum_client.py EXPORT_DIR REQUEST_JSON

Run with the interpreter of a separate environment (``.venv-optimum``: Optimum's ONNX
Runtime package needs transformers < 4.58, zoo has transformers 5), so it imports nothing
from zoo. ``EXPORT_DIR`` is a ``--format web`` folder as it is written (``config.json`` and
the tokenizer at the top, the graphs in ``onnx/``); Optimum opens it with
``ORTModelForCausalLM.from_pretrained(EXPORT_DIR, subfolder="onnx", file_name=...)``.
The request holds ``prompts`` (lists of token ids), ``new_tokens`` and ``file_name``
(``model.onnx`` unless given: ``model_fp16.onnx``, ``model_q4.onnx``, ``model_int8.onnx``).
The answer holds for each prompt alone its ``ids``, the greedy ``tokens`` of
``model.generate`` (prompt included) and the first-step ``logits`` (V,): the raw logits
at the prompt's last position; and the greedy tokens of all prompts in one left-padded
``batch`` (pad = eos, masked out by ``attention_mask``).
"""

import json
import sys
from functools import partial

import torch
from optimum.onnxruntime import ORTModelForCausalLM

from client_answer import print_answer  # beside this file, in every client's environment


def greedy(model, rows: list[list[int]], new_tokens: int, pad: int) -> tuple[list[list[int]], torch.Tensor]:
    """``model.generate``'s greedy continuations of ``rows``, padded on the left with ``pad``,
    and the raw logits (B, V) of the first step (the prompts' last position)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.int64)
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0,
                         pad_token_id=pad, return_dict_in_generate=True, output_logits=True)
    tokens = [[int(t) for t in seq[width - len(r):]] for seq, r in zip(out.sequences, rows)]
    return tokens, out.logits[0].float()


def main(directory: str, request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    model = ORTModelForCausalLM.from_pretrained(directory, subfolder="onnx",
                                                file_name=request.get("file_name", "model.onnx"))
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos if eos is not None else 0)
    rows = [[int(t) for t in p] for p in request["prompts"]]
    print_answer(partial(greedy, model), rows, request["new_tokens"], pad)


if __name__ == "__main__":
    main(*sys.argv[1:])
