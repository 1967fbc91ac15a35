"""The answer tests/genai_client.py and tests/optimum_client.py print, in one place: each runs
in its own environment (this file imports nothing but json), and the tests read one format.

``greedy(rows, new_tokens, pad)`` is the client's: greedy token rows for ``rows`` in one
generator, and its first-step logits (B, V).
"""

import json


def print_answer(greedy, rows: list[list[int]], new_tokens: int, pad: int) -> None:
    """Print, as JSON, each prompt alone (``tokens``, first ``logits``) and all prompts in one ``batch``."""
    singles = [greedy([row], new_tokens, pad) for row in rows]
    batch, _ = greedy(rows, new_tokens, pad) if len(rows) > 1 else ([], None)
    print(json.dumps({"ids": rows, "tokens": [tokens[0] for tokens, _ in singles],
                      "logits": [logits[0].tolist() for _, logits in singles], "batch": batch}))
