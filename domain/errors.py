"""The one exception family of shixin-check.

::

    ShixinError
     +-- InvalidInput        a field of a request or list row is wrong (INVALID_ARGUMENT)
     +-- LoadRejected        a list file failed validation; nothing was applied
     +-- NotReady            no list is loaded yet (UNAVAILABLE)
     +-- IndexUnavailable    the index backend cannot be reached (UNAVAILABLE)
     +-- ConfigurationError  a setting is missing or wrong; names the variable
     +-- Unauthenticated     no or bad credentials (UNAUTHENTICATED)
     +-- PermissionDenied    a channel or role outside the caller's scope (PERMISSION_DENIED)
     +-- RateLimited         the caller's rate or an enumeration throttle (RESOURCE_EXHAUSTED)
     +-- LimitExceeded       more than the caller's limit ever allows (FAILED_PRECONDITION)
     +-- MalformedRequest    bytes that are not the message the method takes (INVALID_ARGUMENT)
     +-- DeadlineExceeded    the caller's deadline passed before the work began (DEADLINE_EXCEEDED)

The server maps these to ``grpc.StatusCode`` in exactly one place
(``server/status.py``); backends wrap their own errors with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ShixinError(Exception):
    """Base of every error this project raises on purpose.

    ``reason`` is a stable, machine-readable code (``API_KEY_UNKNOWN``,
    ``CHANNEL_NOT_ALLOWED``, ...) that callers may branch on; the server sends
    it as ``google.rpc.ErrorInfo``. Empty where the status code says enough.
    """

    reason: str = ""

    def with_reason(self, reason: str) -> ShixinError:
        """This error, carrying ``reason``; returns itself so ``raise X(...).with_reason(R)`` reads."""
        self.reason = reason
        return self


class InvalidInput(ShixinError):
    """A field is wrong. ``field`` is its path (``subject.person.id_number``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def under(self, prefix: str) -> InvalidInput:
        """The same problem (and reason), with the field named from a larger message."""
        moved = InvalidInput(f"{prefix}.{self.field}", self.problem)
        moved.reason = self.reason
        return moved


@dataclass(frozen=True)
class RowError:
    """One bad row of a list file: where it is and what is wrong with it."""

    line: int  # 1-based; 0 for the file as a whole (no row is to blame)
    field: str
    problem: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.problem}" if self.field else f"{where}{self.problem}"


class LoadRejected(ShixinError):
    """A list file did not validate. The serving version is untouched."""

    def __init__(self, source: str, errors: Sequence[RowError]) -> None:
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{source}: {len(errors)} bad row(s), nothing applied\n{shown}{more}")
        self.source = source
        self.errors = list(errors)


class NotReady(ShixinError):
    """No list has been loaded yet."""


class IndexUnavailable(ShixinError):
    """The index backend cannot answer (Redis down, for instance)."""


class ConfigurationError(ShixinError):
    """A setting is missing or has a bad value; the message names the variable."""


class Unauthenticated(ShixinError):
    """The call carries no credentials, or ones that are not valid."""


class PermissionDenied(ShixinError):
    """The caller is known but may not do this (a channel or role outside its scope)."""


class RateLimited(ShixinError):
    """Too many checks: ``retry_after`` seconds until the caller may try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LimitExceeded(ShixinError):
    """A request larger than the caller's limit allows, ever: waiting will not help.

    A batch bigger than the caller's burst, for instance. Unlike ``RateLimited``
    it carries no retry delay; the caller must send less.
    """


class MalformedRequest(ShixinError):
    """The request bytes do not parse as the method's message."""


class DeadlineExceeded(ShixinError):
    """The caller's deadline had passed before the work began: not worth deciding."""
