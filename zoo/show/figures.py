"""What the picture commands share: figures on matplotlib's Agg canvas, written atomically.

Figures are made with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so
drawing never touches a display or matplotlib's global state. ``zoo show positional``,
``zoo show attention`` and ``zoo show model`` live in :mod:`zoo.show.positional`,
:mod:`zoo.show.attention` and :mod:`zoo.show.model`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from zoo.core.files import atomic_path
from zoo.errors import PictureError

FORMATS = (".png", ".svg")
DPI = 100


def new_figure(width: float, height: float):
    """An empty figure of ``width`` × ``height`` inches on the Agg canvas, laid out by
    matplotlib's constrained layout (titles, labels and colour bars never overlap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.get_layout_engine().set(wspace=0.06, hspace=0.06)
    FigureCanvasAgg(figure)
    return figure


def check_output(path: str | os.PathLike) -> Path:
    """``path`` if it names a picture format zoo writes, else a :class:`PictureError`."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise PictureError(
            f"{path}: cannot write a {path.suffix or 'suffix-less'} picture; name the output *.png or *.svg"
        )
    if path.is_dir():
        raise PictureError(f"{path} is a directory; give a file name ending in .png or .svg")
    return path


def save_figure(figure, path: str | os.PathLike, dpi: int = DPI) -> tuple[int, int]:
    """Write ``figure`` as PNG or SVG (by suffix) through a temporary file renamed into
    place; return its size in pixels (PNG) or points (SVG)."""
    import matplotlib

    path = check_output(path)
    fmt = path.suffix.lower()[1:]
    # SVG keeps its text as text (small, searchable) and carries no date, so it is reproducible
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "zoo"}), atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
        size = picture_size(tmp)
    return size


def picture_size(path: str | os.PathLike) -> tuple[int, int]:
    """Width and height of a PNG (pixels, from its IHDR header) or an SVG (points, rounded)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    match = re.search(rb'<svg[^>]*?width="([\d.]+)pt"[^>]*?height="([\d.]+)pt"', head)
    if match is None:
        raise PictureError(f"{path}: neither a PNG nor an SVG with a size")
    return round(float(match.group(1))), round(float(match.group(2)))


def docstring_summary(text: str | None) -> str:
    """The first line of a docstring without reST markup, or ''."""
    return (text or "").strip().split("\n")[0].strip().replace("``", "")


def compact(count: int) -> str:
    """A parameter count for a label: 786,432 → '786K', 354,823,168 → '354.8M'."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            value = count / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)
