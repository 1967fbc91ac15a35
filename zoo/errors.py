"""User-facing errors: each one is a single line a person can act on.

The CLI prints ``str(error)`` on stderr with no traceback and exits non-zero.
"""


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
    """A checkpoint cannot be read or does not fit the model."""


class ExportError(ZooError):
    """A model cannot be exported, or the exported model failed validation."""


class DataError(ZooError):
    """Training or evaluation data is missing or malformed."""
