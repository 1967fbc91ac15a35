"""ONNX Runtime inference for directories written by ``zoo export --format onnx``.

    lm = zoo.exporters.onnx.runtime.load("out/gpt2-onnx", device="cuda", threads=2)
    cache = lm.new_cache(1, 64)
    logits = lm(input_ids, cache=cache, last_only=True)   # (1, 1, V), a torch tensor

:func:`load` returns an object with the call protocol of the PyTorch model it was
exported from (:class:`OnnxDecoderLM` for ``DecoderLM``, :class:`OnnxEncoderDecoder`
for ``EncoderDecoder``), so generation, translation and the benchmark drive either
unchanged. The CUDA execution provider is used when it loads, otherwise the CPU one
with a single notice on stderr. Inputs and outputs are bound to torch tensors on the
session's device (I/O binding), so on a GPU the key/value cache never leaves it.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from zoo.core.files import MANIFEST, SPEC, read_json
from zoo.errors import ZooError, first_line
from zoo.core.spec import ModelSpec, load_spec
from zoo.exporters.onnx.graphs import LOGITS_SEQUENCE, LOGITS_START, past_name, present_name

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool}
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bool: np.bool_}

_cpu_notice_shown = False


def session_options(threads: int | None = None, prepack: bool = True):
    """ONNX Runtime session options: full graph optimisation, ``threads`` intra-op
    threads (None: one per physical core); failures arrive as exceptions, not log lines.

    ``prepack=False`` keeps ONNX Runtime from copying every weight into its packed GEMM layout:
    the weights are then read from the memory-mapped external data file, file pages the system
    can reclaim, instead of a second anonymous copy (gpt2-xl: 5.9 GB). Slower matmuls, for a
    session that runs a few times (export verification)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    # worker threads spin between a run's operators but stop when it returns: left spinning they
    # took the cores from what the caller does next (GPT-2 Small at batch 4: the argmax over the
    # logits after each decode step took 3.7 ms instead of 0.1 on a 2-core AMD EPYC)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def probe_model() -> bytes:
    """A one-node ONNX model (``y = x``) for trying whether an execution provider loads."""
    import onnx

    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    probe.ir_version = 8  # onnx writes newer IR versions than an onnxruntime may read
    return probe.SerializeToString()


@functools.lru_cache(maxsize=None)
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA execution provider cannot be used here, or None if it loads.

    Loading is tried once per process on a one-node graph, so a missing CUDA or cuDNN
    library shows up here rather than as ONNX Runtime's multi-line log.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA execution provider"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe_model(), options, providers=["CUDAExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        return f"onnxruntime could not start it ({first_line(exc)})"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return "onnxruntime could not load its CUDA libraries (CUDA runtime, cuBLAS or cuDNN missing)"
    return None


def resolve_device(device: str | torch.device) -> torch.device:
    """``cuda`` when ONNX Runtime's CUDA provider loads, else ``cpu`` with one notice."""
    global _cpu_notice_shown
    device = torch.device(device)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ZooError(f"device {device.type!r} is not supported by the ONNX Runtime path; use cpu or cuda")
    reason = cuda_unavailable_reason()
    if reason is None:
        return torch.device("cuda", device.index or 0)
    if not _cpu_notice_shown:
        print(f"notice: ONNX Runtime's CUDA execution provider is not available ({reason}); running on CPU",
              file=sys.stderr)
        _cpu_notice_shown = True
    return torch.device("cpu")


def providers_for(device: torch.device) -> list:
    if device.type == "cuda":
        # ONNX Runtime runs on PyTorch's stream, so tensors PyTorch wrote are ready
        stream = torch.cuda.current_stream(device).cuda_stream
        return [("CUDAExecutionProvider", {"device_id": device.index, "user_compute_stream": str(stream)}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Port(NamedTuple):
    """One input or output of a graph, from the manifest, parsed once: each of ``dims`` is an
    int, a name, or a tuple of names whose sizes add up (``past_sequence + sequence``)."""

    name: str
    shape: list  # as the manifest declares it (for messages)
    dims: tuple
    dtype: torch.dtype
    element: type  # the numpy type ONNX Runtime's binding takes
    optional: bool

    @classmethod
    def of(cls, entry: dict) -> "Port":
        dims = tuple(d if isinstance(d, int) or "+" not in d else tuple(p.strip() for p in d.split("+"))
                     for d in entry["shape"])
        dtype = TORCH_DTYPES[entry["dtype"]]
        return cls(entry["name"], entry["shape"], dims, dtype, NUMPY_DTYPES[dtype], bool(entry.get("optional")))

    def size(self, sizes: dict[str, int]) -> list[int]:
        return [d if isinstance(d, int) else sizes[d] if isinstance(d, str) else sum(sizes[p] for p in d)
                for d in self.dims]


class GraphSession:
    """One exported graph in an ONNX Runtime session, run on torch tensors.

    Inputs and outputs are bound by pointer (I/O binding); output tensors are allocated
    by torch on the session's device with the shapes the manifest declares. The manifest's
    entries are parsed once: a decode step binds some fifty tensors, and working each shape
    out from its text again took GPT-2 Small 0.85 ms a step, a sixth of its int4 step.
    """

    def __init__(self, path: Path, entry: dict, device: torch.device, threads: int | None, prepack: bool = True) -> None:
        import onnxruntime as ort

        self.path = path
        self.device = device
        self.inputs = entry["inputs"]
        self.outputs = entry["outputs"]
        self.input_ports = [Port.of(e) for e in self.inputs]
        self.output_ports = [Port.of(e) for e in self.outputs]
        self.session = ort.InferenceSession(str(path), session_options(threads, prepack), providers=providers_for(device))
        self.provider = self.session.get_providers()[0]
        self._where = (device.type, device.index or 0)

    def dtype_of(self, name: str) -> torch.dtype:
        return next(p.dtype for p in self.input_ports + self.output_ports if p.name == name)

    def takes(self, name: str) -> bool:
        """Whether the graph has the input ``name`` (an optional one, say)."""
        return any(port.name == name for port in self.input_ports)

    def run(self, feeds: dict[str, torch.Tensor], sizes: dict[str, int] | None = None,
            into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run the graph on ``feeds`` (every input by name; an optional one may be left out) and
        return every output by name; ``sizes`` gives output dimensions no input has. An output
        named in ``into`` is written into that tensor (contiguous, of the output's shape and
        dtype, on the session's device); the others into new ones."""
        binding = self.session.io_binding()
        device_type, device_id = self._where
        sizes = dict(sizes or {})
        kept = []  # the bound tensors must live until the run ends
        for port in self.input_ports:
            if port.optional and port.name not in feeds:
                continue
            tensor = feeds[port.name]
            if tensor.dtype != port.dtype or tensor.device != self.device:
                tensor = tensor.to(self.device, port.dtype)
            if not tensor.is_contiguous():
                tensor = tensor.contiguous()
            for dim, size in zip(port.dims, tensor.shape):
                if isinstance(dim, str):
                    sizes.setdefault(dim, size)
            kept.append((port, tensor))
        for port, tensor in kept:
            shape = list(tensor.shape)
            if shape != port.size(sizes):
                raise ZooError(f"{self.path.name}: input {port.name} has shape {tuple(shape)}, "
                               f"expected {tuple(port.size(sizes))} ({', '.join(map(str, port.shape))})")
            binding.bind_input(port.name, device_type, device_id, port.element, shape, tensor.data_ptr())
        results = {}
        into = into or {}
        for port in self.output_ports:
            shape = port.size(sizes)
            given = into.get(port.name)
            if given is None:
                given = torch.empty(shape, dtype=port.dtype, device=self.device)
            elif list(given.shape) != shape or given.dtype != port.dtype or not given.is_contiguous():
                wanted = str(port.dtype).removeprefix("torch.")
                raise ZooError(f"{self.path.name}: output {port.name} needs a contiguous {wanted} tensor of shape "
                               f"{tuple(shape)}, got {given.dtype} {tuple(given.shape)}")
            results[port.name] = given
            binding.bind_output(port.name, device_type, device_id, port.element, shape, given.data_ptr())
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ZooError(f"{self.path.name}: ONNX Runtime failed to run it: {first_line(exc)}") from None
        return results


class OnnxKVCache:
    """Past keys and values of every layer as torch tensors on the session's device.

    Each call feeds them to the graph and keeps its ``present`` outputs in their place;
    ``memory`` holds the cross-attention keys and values of an encoder-decoder.

    With a ``capacity``, the graph writes its ``present`` outputs into two sets of buffers
    made once, room for ``capacity`` tokens each, taking turns: the past is read from one
    while the present is written into the other. Without them every step allocated the
    whole cache afresh, and the system handed over (and zeroed) new pages for it: 47 MB a
    step for GPT-2 Small at batch 4 after 160 tokens. A sequence that outgrows ``capacity``
    goes on in new tensors.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, capacity: int = 0) -> None:
        empty = torch.empty(batch, n_kv_heads, 0, head_dim, dtype=dtype, device=device)  # (B, KV, 0, hd)
        self.keys = [empty] * n_layers
        self.values = [empty] * n_layers
        self.memory: list[torch.Tensor] | None = None
        self.length = 0
        self.capacity = capacity
        self.buffers: list[list[torch.Tensor]] | None = None  # two sets of 2 * n_layers flat buffers, made on first use
        self.current = 0  # the set that ``keys`` and ``values`` may be views of; the graph writes into the other
        self.pending = False  # whether the run now going writes into the other set (``store`` then turns to it)

    def outputs(self, new_tokens: int) -> dict[str, torch.Tensor]:
        """Tensors for the next run's ``present.*`` outputs, (B, KV, length + new, hd) views of
        the buffer set the past is not in; none when the sequence would outgrow ``capacity``."""
        total = self.length + new_tokens
        self.pending = total <= self.capacity
        if not self.pending:
            return {}
        batch, heads, _, head_dim = self.keys[0].shape
        if self.buffers is None:
            like = self.keys[0]
            size = batch * heads * self.capacity * head_dim
            self.buffers = [[like.new_empty(size) for _ in range(2 * len(self.keys))] for _ in range(2)]
        shape = (batch, heads, total, head_dim)
        views = [flat[: batch * heads * total * head_dim].view(shape) for flat in self.buffers[1 - self.current]]
        n = len(self.keys)
        names = [present_name(i, "key") for i in range(n)] + [present_name(i, "value") for i in range(n)]
        return dict(zip(names, views))

    def feeds(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            out[past_name(i, "key")], out[past_name(i, "value")] = k, v
        return out

    def store(self, outputs: dict[str, torch.Tensor], new_tokens: int) -> None:
        """Keep the graph's ``present.*`` outputs and advance ``length``."""
        self.keys = [outputs[present_name(i, "key")] for i in range(len(self.keys))]  # (B, KV, past + T, hd)
        self.values = [outputs[present_name(i, "value")] for i in range(len(self.values))]
        self.length += new_tokens
        if self.pending:  # the present is in the other set now: the next run writes over the past's
            self.current = 1 - self.current
            self.pending = False

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows ``index`` (beam search)."""
        index = index.to(self.keys[0].device)
        self.keys = [k.index_select(0, index) for k in self.keys]  # new tensors: neither buffer set is read from
        self.values = [v.index_select(0, index) for v in self.values]
        if self.memory is not None:
            self.memory = [m.index_select(0, index) for m in self.memory]


class TokenHistory:
    """The cache of an export without ``--kv-cache``: the tokens seen so far, which
    each call runs again in full (correct, but cost grows with the length)."""

    def __init__(self, batch: int) -> None:
        self.ids = torch.empty(batch, 0, dtype=torch.int64)
        self.mask = torch.empty(batch, 0, dtype=torch.int64)
        self.length = 0

    def extend(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """All ids (B, length + T) and their mask after appending ``ids`` (B, T)."""
        self.ids = torch.cat((self.ids, ids.cpu().long()), dim=1)
        if mask is None:
            mask = torch.cat((self.mask, torch.ones_like(ids, dtype=torch.int64, device="cpu")), dim=1)
        self.mask = mask.cpu().long()
        self.length = self.ids.shape[1]
        return self.ids, self.mask

    def reorder(self, index: torch.Tensor) -> None:
        index = index.cpu()
        self.ids, self.mask = self.ids.index_select(0, index), self.mask.index_select(0, index)


def last_logits(outputs: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """The graph's ``logits`` (B, T, V) at the last ``count`` positions (B, count, V)."""
    return outputs["logits"][:, -count:]


def ones_mask(batch: int, length: int) -> torch.Tensor:
    return torch.ones(batch, length, dtype=torch.int64)


class OnnxModel:
    """What both runtime models share: the spec, the sessions and the cache shape."""

    def __init__(self, spec: ModelSpec, manifest: dict, graphs: dict[str, GraphSession], device: torch.device) -> None:
        self.spec = spec
        self.manifest = manifest
        self.graphs = graphs
        self.device = device
        self.kv_cache = manifest["kv_cache"]
        self.dtype = graphs["decoder"].dtype_of("logits")
        self.provider = graphs["decoder"].provider

    def new_cache(self, batch: int, capacity: int = 0, **_) -> OnnxKVCache | TokenHistory:
        """A cache for ``batch`` sequences, written in place up to ``capacity`` tokens
        (:class:`OnnxKVCache`); an export without a cache runs the tokens again each call."""
        if not self.kv_cache:
            return TokenHistory(batch)
        spec = self.spec
        layers = spec.n_decoder_layers if spec.is_encoder_decoder else spec.n_layers
        return OnnxKVCache(layers, batch, spec.n_kv_heads, spec.head_dim, self.dtype, self.device, capacity)

    def eval(self) -> "OnnxModel":
        """For code written for ``nn.Module``: an ONNX model is always in inference mode."""
        return self


class OnnxDecoderLM(OnnxModel):
    """A decoder-only export with :class:`zoo.core.model.DecoderLM`'s call protocol."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 positions: torch.Tensor | None = None, cache: OnnxKVCache | TokenHistory | None = None,
                 last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T), or (B, 1, V) with ``last_only``.

        ``attention_mask`` (B, past + T) is 1 for real tokens (left padding); with a
        ``cache`` only the new tokens are given and the cache advances by T.
        """
        if positions is not None:
            raise ZooError("the ONNX graph derives positions from attention_mask; pass attention_mask instead")
        B, T = input_ids.shape
        if isinstance(cache, TokenHistory):
            ids, mask = cache.extend(input_ids, attention_mask)
            return last_logits(self._run(ids, mask, None, last_only), 1 if last_only else T)
        past = cache.length if cache is not None else 0
        mask = attention_mask if attention_mask is not None else ones_mask(B, past + T)
        feeds = (cache or self.new_cache(B)).feeds() if self.kv_cache else None
        into = cache.outputs(T) if cache is not None else None
        outputs = self._run(input_ids, mask, feeds, last_only, into)
        if cache is not None:
            cache.store(outputs, T)
        return last_logits(outputs, 1 if last_only else T)

    forward = __call__

    def _run(self, ids, mask, past: dict | None, last_only: bool = False,
             into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run the decoder graph on ``ids`` (B, T): logits (B, T, V), or (B, 1, V) with ``last_only``
        where the graph can skip the other positions' (``logits_start``), and the present cache
        (into the tensors ``into`` names, where given)."""
        feeds = {"input_ids": ids, "attention_mask": mask, **(past or {})}
        decoder, T = self.graphs["decoder"], ids.shape[1]
        if last_only and T > 1 and decoder.takes(LOGITS_START):
            feeds[LOGITS_START] = torch.tensor([-1], dtype=torch.int64)
            T = 1
        return decoder.run(feeds, sizes={LOGITS_SEQUENCE: T}, into=into)


class OnnxEncoderDecoder(OnnxModel):
    """An encoder-decoder export with :class:`zoo.core.model.EncoderDecoder`'s protocol."""

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, D); ``src_mask`` (B, S) is 1 for real tokens."""
        if src_mask is None:
            src_mask = ones_mask(*src_ids.shape)
        return self.graphs["encoder"].run({"src_ids": src_ids, "src_mask": src_mask})["memory"]

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               tgt_mask: torch.Tensor | None = None, cache: OnnxKVCache | TokenHistory | None = None,
               last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for target tokens given encoder ``memory``; with a ``cache``
        only new tokens are given and the cross-attention keys/values are computed once."""
        B, T = tgt_ids.shape
        if src_mask is None:
            src_mask = ones_mask(B, memory.shape[1])
        if isinstance(cache, TokenHistory):
            ids, mask = cache.extend(tgt_ids, tgt_mask)
            return last_logits(self._run(ids, mask, src_mask, {"memory": memory}), 1 if last_only else T)
        if not self.kv_cache:
            mask = tgt_mask if tgt_mask is not None else ones_mask(B, T)
            return last_logits(self._run(tgt_ids, mask, src_mask, {"memory": memory}), 1 if last_only else T)
        work = cache if cache is not None else self.new_cache(B)
        if work.memory is None:
            kv = self.graphs["cross_attention_kv"].run({"memory": memory})
            work.memory = [kv[e["name"]] for e in self.graphs["cross_attention_kv"].outputs]
        memory_feeds = {e["name"]: t for e, t in zip(self.graphs["cross_attention_kv"].outputs, work.memory)}
        mask = tgt_mask if tgt_mask is not None else ones_mask(B, work.length + T)
        into = cache.outputs(T) if cache is not None else None
        outputs = self._run(tgt_ids, mask, src_mask, {**work.feeds(), **memory_feeds}, into)
        if cache is not None:
            cache.store(outputs, T)
        return last_logits(outputs, 1 if last_only else T)

    def __call__(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: torch.Tensor | None = None,
                 tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V)."""
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask, tgt_mask)

    forward = __call__

    def _run(self, ids, mask, src_mask, extra: dict, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run the decoder graph on ``ids`` (B, T): logits (B, T, V) and the present cache
        (into the tensors ``into`` names, where given)."""
        return self.graphs["decoder"].run({"tgt_ids": ids, "tgt_mask": mask, "src_mask": src_mask, **extra},
                                          into=into)


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise ZooError(f"{directory}: no {MANIFEST}; is it a directory written by 'zoo export --format onnx'?")
    manifest = read_json(path)
    if manifest.get("format") != "onnx":
        raise ZooError(f"{directory}: holds a {manifest.get('format', 'zoo model')!r} export, not an ONNX one; "
                       f"export it with 'zoo export MODEL --format onnx -o DIR'")
    if "graphs" not in manifest or not isinstance(manifest.get("files", {}), dict):
        raise ZooError(f"{path}: has no 'graphs' table; re-export with 'zoo export MODEL --format onnx -o {directory}'")
    listed = [*manifest.get("files", {}), *(entry["file"] for entry in manifest["graphs"].values())]
    for name in dict.fromkeys(listed):
        if not (directory / name).is_file():
            raise ZooError(f"{directory / name}: missing from the export (listed in {MANIFEST}); "
                           f"re-export with 'zoo export MODEL --format onnx -o {directory}'")
    return manifest


def load(directory: str | Path, device: str | torch.device = "cpu",
         threads: int | None = None, prepack: bool = True) -> OnnxDecoderLM | OnnxEncoderDecoder:
    """Open an ONNX export for inference on ``device`` with ``threads`` intra-op threads.

    Returns :class:`OnnxDecoderLM` or :class:`OnnxEncoderDecoder` by the spec's family.
    ``prepack=False``: see :func:`session_options`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ZooError(f"{directory}: no such directory; create it with 'zoo export MODEL --format onnx -o {directory}'")
    manifest = read_manifest(directory)
    spec = load_spec(directory / SPEC)
    device = resolve_device(device)
    graphs = {}
    for name, entry in manifest["graphs"].items():
        path = directory / entry["file"]
        try:
            graphs[name] = GraphSession(path, entry, device, threads, prepack)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ZooError(f"{path}: ONNX Runtime cannot load it: {first_line(exc)}") from None
    cls = OnnxEncoderDecoder if spec.is_encoder_decoder else OnnxDecoderLM
    return cls(spec, manifest, graphs, device)
