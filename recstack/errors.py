"""The exceptions recstack raises on purpose; each carries a message a user can act on."""

from __future__ import annotations


class RecstackError(Exception):
    """Base class of every error recstack raises deliberately."""


class ConfigError(RecstackError):
    """The configuration file or an environment override is invalid."""


class DataFormatError(RecstackError):
    """A data file is malformed. The message names the file, the line and the reason."""

    def __init__(self, path: object, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class DatasetNotFoundError(RecstackError):
    """A data set folder or one of its files is absent."""


class EventValidationError(RecstackError):
    """One event failed validation. The message names the field and the offending value."""

    def __init__(self, index: int | None, field: str, value: object, reason: str) -> None:
        at = f"event {index}: " if index is not None else ""
        super().__init__(f"{at}field '{field}' = {value!r}: {reason}")
        self.index = index
        self.field = field
        self.value = value
        self.reason = reason


class BackendUnavailableError(RecstackError):
    """A configured service (Redis, PostgreSQL) cannot be reached."""


class CheckpointError(RecstackError):
    """A checkpoint or model file is missing, corrupt or does not fit the model."""
