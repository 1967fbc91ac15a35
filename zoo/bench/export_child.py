"""One ``zoo export`` run in this process, as the command line runs it, reporting its own wall time
and peak resident memory (``VmHWM``) as one JSON line: the child of
:func:`zoo.bench.build.measure_export`. It lives apart from :mod:`zoo.bench.build` because it
imports the command line, which imports the bench.

    python -m zoo.bench.export_child OUT_DIR SPEC_YAML --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zoo.bench.build import EXPORT_OPTIONS, memory_status
from zoo.cli import cli


def export_child(out: Path, spec_path: Path) -> dict:
    """Run ``zoo export SPEC --format onnx --kv-cache -o OUT`` here and report on it."""
    start = time.perf_counter()
    try:
        cli.main(["export", str(spec_path), *EXPORT_OPTIONS, "-o", str(out)], prog_name="zoo", standalone_mode=False)
    except SystemExit as exc:  # zoo's one-line errors exit this way
        if exc.code:
            raise
    return {"seconds": time.perf_counter() - start, "peak_rss_bytes": memory_status()["VmHWM"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run zoo export once and report its time and peak memory.")
    parser.add_argument("out", type=Path)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(export_child(args.out, args.spec)), flush=True)


if __name__ == "__main__":
    main()
