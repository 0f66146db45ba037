"""User-facing errors: one line that names the input and the fix, never a traceback."""

from __future__ import annotations


class EmotionStreamError(Exception):
    """An error the CLI prints as one line (``error: <message>``) and exits non-zero with.

    ``message`` must name the input at fault and say what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SourceError(EmotionStreamError):
    """A video source cannot be opened or decoded."""


class ModelError(EmotionStreamError):
    """A model file is missing, unreadable or of the wrong kind."""


class SinkError(EmotionStreamError):
    """Kafka, Redis or a file sink cannot be reached or written."""


class ConfigError(EmotionStreamError):
    """A configuration value or file is invalid."""


class MissingDependencyError(EmotionStreamError):
    """An optional dependency is not installed; the message says how to install it."""

    def __init__(self, package: str, feature: str, install: str) -> None:
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed: {install}"
        )
        self.package = package
