"""Portico's errors: one root, a few precise subclasses the callers can tell apart."""
from __future__ import annotations


class PorticoError(Exception):
    """Portico could not complete the operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidJobError(PorticoError, ValueError):
    """The job is not valid and was not stored."""


class UnknownJobTypeError(InvalidJobError):
    """No handler is registered for this job type."""


class DuplicateJobError(InvalidJobError):
    """A job with this id already exists."""


class JobNotFoundError(PorticoError, LookupError):
    """No job has this id."""


class InvalidJobStateError(PorticoError):
    """The job is not in a state that allows this operation."""


class StaleClaimError(InvalidJobStateError):
    """This claim on the job is no longer current: the job was rescued or released."""
