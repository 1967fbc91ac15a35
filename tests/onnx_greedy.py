"""An independent reference for exported decoder graphs: greedy decoding written directly
against ``onnxruntime.InferenceSession``, with no zoo code, on any graph with the standard
decoder's inputs and outputs (``input_ids``, ``attention_mask``, ``past_key_values.{i}.*``
→ ``logits``, ``present.{i}.*``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import onnxruntime

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def greedy_steps(path, ids: list[int], new_tokens: int, threads: int = 0) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield, after each of ``new_tokens`` greedy steps, the tokens so far and that step's last logits (V,)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), DTYPES[i.type]) for i in pasts}
    names = [o.name for o in session.get_outputs()]
    tokens, step = list(ids), list(ids)
    for _ in range(new_tokens):
        feed["input_ids"] = np.array([step], np.int64)
        feed["attention_mask"] = np.ones((1, len(tokens)), np.int64)
        out = dict(zip(names, session.run(None, feed)))
        logits = out["logits"][0, -1].astype(np.float32)
        step = [int(logits.argmax())]
        tokens += step
        feed.update({i.name: out[i.name.replace("past_key_values.", "present.")] for i in pasts})
        yield tokens, logits


def ort_greedy(path, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """The prompt ``ids`` and ``new_tokens`` greedy tokens, and the prompt's last logits (V,)."""
    steps = list(greedy_steps(path, ids, new_tokens))
    return steps[-1][0], steps[0][1]


def decode_rate(path, ids: list[int], new_tokens: int, threads: int = 2) -> float:
    """Greedy decode tokens/s on ``path`` after the first token (as zoo's web page counts)."""
    started = None
    for n, _ in enumerate(greedy_steps(path, ids, new_tokens, threads)):
        started = time.perf_counter() if n == 0 else started
    return (new_tokens - 1) / (time.perf_counter() - started)


def seq2seq_greedy(folder, suffix: str, source: list[int], new_tokens: int, start: int,
                   eos: int) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of an encoder-decoder in Hugging Face's client layout (``onnx/encoder_model``
    + ``onnx/decoder_model_merged{suffix}.onnx``, Optimum's names), written against
    onnxruntime alone: the tokens from ``start`` up to ``eos`` or ``new_tokens`` tokens, and the
    first step's logits (V,)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3

    def session(name):
        return onnxruntime.InferenceSession(f"{folder}/onnx/{name}{suffix}.onnx", options,
                                            providers=["CPUExecutionProvider"])

    encoder, decoder = session("encoder_model"), session("decoder_model_merged")
    src = np.array([source], np.int64)
    mask = np.ones_like(src)
    hidden = encoder.run(None, {"input_ids": src, "attention_mask": mask})[0]
    pasts = [i for i in decoder.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), DTYPES[i.type]) for i in pasts}
    names = [o.name for o in decoder.get_outputs()]
    tokens, first = [start], None
    for _ in range(new_tokens):
        out = dict(zip(names, decoder.run(None, {**feed, "input_ids": np.array([tokens[-1:]], np.int64),
                                                 "encoder_hidden_states": hidden, "encoder_attention_mask": mask,
                                                 "use_cache_branch": np.array([len(tokens) > 1])})))
        logits = out["logits"][0, -1].astype(np.float32)
        first = logits if first is None else first
        tokens.append(int(logits.argmax()))
        feed = {i.name: out[i.name.replace("past_key_values.", "present.")] for i in pasts}
        if tokens[-1] == eos:
            break
    return tokens, first
