"""User-facing errors: each one is a single line a person can act on.

The CLI prints ``str(error)`` on stderr with no traceback and exits non-zero.
"""

from __future__ import annotations

import re


class ZooError(Exception):
    """Base class of every error the zoo reports to a user."""


class SpecError(ZooError, ValueError):
    """A model spec is malformed: bad YAML, unknown field, wrong type, impossible shape."""


class PluginError(ZooError):
    """A plugin failed to load or registered something invalid."""


class RegistryError(ZooError, KeyError):
    """A name is not registered, or is registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(ZooError):
    """Weights cannot be read or do not fit the model: a Hugging Face checkpoint, a zoo
    model directory or a training snapshot."""


class ExportError(ZooError):
    """A model cannot be exported, or the exported model failed verification."""


class DataError(ZooError):
    """Training or evaluation data is missing or malformed."""


class PictureError(ZooError):
    """A picture cannot be drawn: bad output path, layer or head out of range, text too long."""


ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes in a library's messages


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of the innermost cause's message, without colour codes,
    cut to ``limit`` characters: a library's error as part of one of ours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in ANSI_COLOUR.sub("", str(exc)).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
