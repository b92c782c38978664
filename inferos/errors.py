"""The one exception tree of Infer-OS.

    InferOSError
     +-- ConfigError (ValueError)        a config file, env override or policy is invalid
     +-- UpstreamError                   the backend could not be reached or misbehaved
     |    +-- UpstreamTimeout (TimeoutError)
     +-- ModelError                      a model is missing, unprepared or unusable

Errors from libraries underneath (aiohttp, onnxruntime, yaml) are translated where they
enter, with ``raise ... from exc``.
"""

from __future__ import annotations


class InferOSError(Exception):
    """Root of every error Infer-OS raises on purpose."""


class ConfigError(InferOSError, ValueError):
    """Invalid configuration. ``key`` names the offending setting; ``line`` its YAML line."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None):
        where = ""
        if key is not None:
            where = f"{key}: "
        if line is not None:
            where = f"line {line}: {where}"
        super().__init__(f"{where}{message}")
        self.key = key
        self.line = line
        self.reason = message


class UpstreamError(InferOSError):
    """The backend could not be reached or answered in a way we cannot relay."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The backend stayed silent past the idle-read or connect timeout."""


class ModelError(InferOSError):
    """A model is missing, not prepared, or cannot be loaded."""
