"""Run a zoo export in onnxruntime-genai, as a user would; print what it did as JSON.

    .venv-genai/bin/python tests/genai_client.py EXPORT_DIR REQUEST_JSON

Run by tests/test_genai.py with the interpreter of a separate environment
(``.venv-genai``: onnxruntime-genai replaces onnxruntime-gpu wherever it is installed),
so it imports nothing from zoo. The request holds ``prompts`` (texts, encoded by genai's
tokenizer, or lists of token ids given as they are) and ``new_tokens``. The answer holds
for each prompt alone its ``ids`` and the greedy ``tokens`` and first-step ``logits``
(V,) genai computed, and the greedy tokens of all prompts in one ``batch``.
"""

import json
import sys
from functools import partial

import numpy as np
import onnxruntime_genai as og

from client_answer import print_answer  # beside this file, in every client's environment


def prompt_ids(tokenizer, prompt) -> list[int]:
    return [int(t) for t in (tokenizer.encode(prompt) if isinstance(prompt, str) else prompt)]


def greedy(model, rows: list[list[int]], new_tokens: int, pad: int) -> tuple[list[list[int]], np.ndarray]:
    """Greedy continuations of ``rows`` in one generator, and its first logits (B, V).

    Rows of different lengths are padded on the right with ``pad``: genai masks every
    ``pad_token_id`` of its config out of ``attention_mask``, as its own batches do."""
    params = og.GeneratorParams(model)
    params.set_search_options(batch_size=len(rows), max_length=max(map(len, rows)) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    width = max(map(len, rows))
    generator.append_tokens(np.array([r + [pad] * (width - len(r)) for r in rows], dtype=np.int32))
    logits = np.array(generator.get_output("logits"))  # (B, T, V) of the prefill
    first = logits[:, -1] if logits.ndim == 3 else logits
    while not generator.is_done():
        generator.generate_next_token()
    return [[int(t) for t in generator.get_sequence(i)] for i in range(len(rows))], first


def main(directory: str, request_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    model = og.Model(directory)
    tokenizer = og.Tokenizer(model) if request.get("tokenizer", True) else None
    with open(f"{directory}/genai_config.json", encoding="utf-8") as config:
        pad = json.load(config)["model"]["pad_token_id"]
    rows = [prompt_ids(tokenizer, p) for p in request["prompts"]]
    print_answer(partial(greedy, model), rows, request["new_tokens"], pad)


if __name__ == "__main__":
    main(*sys.argv[1:])
