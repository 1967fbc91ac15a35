"""Run a zoo translator's web export in Hugging Face Optimum (ONNX Runtime), as a user would; print JSON.

    .venv-optimum/bin/python tests/optimum_translator.py EXPORT_DIR REQUEST_JSON

Like tests/optimum_client.py, in Optimum's own environment and importing nothing from zoo.
Optimum opens the folder with ``ORTModelForSeq2SeqLM.from_pretrained(EXPORT_DIR,
subfolder="onnx", use_merged=True)`` (``encoder_model.onnx`` + ``decoder_model_merged.onnx``).
The request holds ``sources`` (lists of token ids) and ``new_tokens``; the answer holds the
greedy ``tokens`` of ``model.generate`` for each source alone, and for all of them in one
right-padded ``batch`` (pad masked out by ``attention_mask``), each from the decoder's start
token, cut after the first end token.
"""

import json
import sys

import torch
from optimum.onnxruntime import ORTModelForSeq2SeqLM


def cut(row: list[int], eos: int, pad: int) -> list[int]:
    row = [int(t) for t in row]
    return row[: row.index(eos) + 1] if eos in row else [t for t in row if t != pad]


def main(directory: str, request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    model = ORTModelForSeq2SeqLM.from_pretrained(directory, subfolder="onnx", use_merged=True)
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    rows = [[int(t) for t in s] for s in request["sources"]]

    def generate(ids, mask):
        out = model.generate(ids, attention_mask=mask, do_sample=False, num_beams=1,
                             max_new_tokens=request["new_tokens"], min_new_tokens=0)
        return [cut(row, eos, pad) for row in out.tolist()]

    alone = [generate(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.int64))[0] for r in rows]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    print(json.dumps({"tokens": alone, "batch": generate(ids, mask), "merged": model.use_merged}))


if __name__ == "__main__":
    main(*sys.argv[1:])
