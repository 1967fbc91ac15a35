"""An independent reference for exported decoder graphs: greedy decoding written directly
against ``onnxruntime.InferenceSession``, with no zoo code, on any graph with the standard
decoder's inputs and outputs (``input_ids``, ``attention_mask``, ``past_key_values.{i}.*``
→ ``logits``, ``present.{i}.*``)."""

from __future__ import annotations

import numpy as np
import onnxruntime

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_greedy(path, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """The prompt ``ids`` and ``new_tokens`` greedy tokens, and the prompt's last logits (V,)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), DTYPES[i.type]) for i in pasts}
    names = [o.name for o in session.get_outputs()]
    tokens, step, first = list(ids), list(ids), None
    for _ in range(new_tokens):
        feed["input_ids"] = np.array([step], np.int64)
        feed["attention_mask"] = np.ones((1, len(tokens)), np.int64)
        out = dict(zip(names, session.run(None, feed)))
        logits = out["logits"][0, -1].astype(np.float32)
        first = logits if first is None else first
        step = [int(logits.argmax())]
        tokens += step
        feed.update({i.name: out[i.name.replace("past_key_values.", "present.")] for i in pasts})
    return tokens, first
