"""File names the zoo shares, and writing outputs so that a failure or an interrupt
never leaves half a result behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from zoo.errors import ZooError, first_line

# ---------------------------------------------------------------- shared file names
# A zoo model directory (zoo.core.model_dir), and the same names inside exports and run directories.
WEIGHTS = "model.safetensors"
SPEC = "spec.yaml"
MANIFEST = "manifest.json"
# An exported directory's record of its check against PyTorch.
VERIFICATION = "verification.json"
# A Hugging Face checkpoint (zoo.hf.checkpoint): config and weights in one of three layouts.
HF_CONFIG = "config.json"
HF_SAFETENSORS = WEIGHTS
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_SAFETENSORS_SHARDS = "model-*-of-*.safetensors"
HF_PYTORCH_BIN = "pytorch_model.bin"
# Tokenizers: GPT-2's byte-level BPE files, and the translation vocabularies (one, or one per language).
GPT2_VOCAB = "vocab.json"
GPT2_MERGES = "merges.txt"
TOKENIZER = "tokenizer.json"
TARGET_TOKENIZER = "tokenizer.target.json"
TOKENIZER_FILES = (TOKENIZER, TARGET_TOKENIZER, GPT2_VOCAB, GPT2_MERGES)
# A training run directory (zoo.translation): its settings, its log and its training snapshots.
TRAIN_CONFIG = "train.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
# A model held as frozen base + LoRA adapter (zoo.core.adapters): the two parts' folders, and PEFT's file names.
BASE = "base"
ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SNAPSHOTS = "checkpoints"  # the folder of training snapshots (its name on disk predates the word)
SNAPSHOT_STATE = "state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
AVERAGING = "averaging"  # the folder of weight points that checkpoint averaging takes the mean of


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path, directory: bool = False) -> None:
    """mkdtemp/mkstemp create private (0700/0600) paths; give the final output the
    permissions an ordinary ``mkdir``/``open`` would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def read_json(path: str | os.PathLike, error: type[ZooError] = ZooError) -> dict:
    """The JSON object in file ``path``; ``error`` when it is unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object")
    return value


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: dict, files: bool | tuple[str, ...] = True) -> dict:
    """Write ``directory/manifest.json`` from ``manifest``, first recording under ``files`` the
    size and sha256 of every other file in ``directory`` (``True``, subfolders included), of
    the named ones (a tuple), or of none (``False``, any old record dropped); returns it."""
    directory = Path(directory)
    manifest.pop("files", None)
    if files:
        paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST) if files is True \
            else [directory / name for name in files]
        manifest["files"] = {str(p.relative_to(directory)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                             for p in paths}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; rename it into place on success.

    On any exception (an interrupt included) the temporary directory is removed and
    ``target`` is left as it was. An existing non-empty ``target`` is an error unless
    ``overwrite`` is set, in which case it is replaced only once the new one is complete.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ZooError(f"{target} exists and is not a directory; choose another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ZooError(f"{target} already exists and is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _normal_permissions(tmp, directory=True)
        for path in tmp.rglob("*"):
            if path.is_file() and path.stat().st_mode & 0o777 == 0o600:
                _normal_permissions(path)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` for a library that writes by name
    (matplotlib, safetensors); rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _normal_permissions(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``target`` and rename it over ``target`` on success."""
    with atomic_path(target) as tmp, open(tmp, mode) as f:
        yield f
