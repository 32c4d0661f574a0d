"""What a refused check raises in the client library: one small exception family.

::

    grpc.RpcError
     +-- CheckError              any refusal: code(), details(), reason, metadata
          +-- InvalidRequest      INVALID_ARGUMENT: field_violations name the fields at fault
          +-- Unauthenticated     UNAUTHENTICATED: no, unknown or malformed credentials (reason)
          +-- PermissionDenied    PERMISSION_DENIED: a channel or role outside the scope (reason)
          +-- RateLimited         RESOURCE_EXHAUSTED from a rate or throttle: retry_after seconds
          +-- LimitExceeded       more than the server ever takes (a batch over the burst,
          |                       a message over 4 MiB): send less, do not retry
          +-- ServiceUnavailable  UNAVAILABLE: unreachable, shutting down, or no list loaded;
          |                       CANCELLED by a server that began to shut down
          +-- DeadlineExceeded    DEADLINE_EXCEEDED: the call's deadline passed

Every error is a ``grpc.RpcError`` with ``code()`` and ``details()``, so code
written against plain grpcio keeps working, and carries ``info``, the
structured details (``ErrorDetails``) read from the standard
``grpc-status-details-bin`` trailer or from a stream answer's ``error``. The
mapping from status codes to classes is ``from_rpc_error`` and nowhere else.

With the prefilter on (``clients/prefilter.py``) a check answered locally raises
only once the client is closed (CANCELLED ``CLIENT_CLOSED``: its audit is closed,
so no local answer is handed out unrecorded); a prefilter download that does not check out raises a plain
``CheckError`` (DATA_LOSS ``PREFILTER_CORRUPT``, or FAILED_PRECONDITION
``PREFILTER_SCHEME_UNKNOWN`` for a filter this client cannot read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shixin.v1 import check_pb2 as pb

_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True)
class ErrorDetails:
    """A refusal as a program reads it: the code, the reason to branch on, the fields at fault."""

    code: grpc.StatusCode
    message: str
    #: the google.rpc.ErrorInfo reason (API_KEY_UNKNOWN, CHANNEL_NOT_ALLOWED, ...)
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    #: (field path, problem) of google.rpc.BadRequest: ("checks[2].subject.person.id_number", ...)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    #: seconds of google.rpc.RetryInfo: when a retry may succeed (None: not a wait)
    retry_after: float | None = None


def error_details(error: grpc.RpcError | pb.CheckResponse) -> ErrorDetails | None:
    """The details of a failed call, or of a stream answer's ``error`` (None if it has none)."""
    if isinstance(error, CheckError):
        return error.info
    if isinstance(error, pb.CheckResponse):
        if not error.HasField("error"):
            return None
        e = error.error
        return ErrorDetails(
            _CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message, e.reason, "shixin-check",
            dict(e.metadata), [(v.field, v.description) for v in e.field_violations],
            e.retry_after_ms / 1000 if e.retry_after_ms else None,
        )  # fmt: skip
    code, message = error.code(), error.details() or ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a trailer that contradicts the status: trust the status
        status = None
    if status is None:  # from grpc itself (message too large, deadline, unreachable)
        return ErrorDetails(code, message)
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    retry_after = None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return ErrorDetails(
        code, message, info.reason, info.domain, dict(info.metadata), violations, retry_after
    )


class CheckError(grpc.RpcError):  # type: ignore[misc]
    """A refused call (or, with ``raise_on_error``, a refused request on a stream).

    ``code()`` and ``details()`` as on any ``grpc.RpcError``; ``info`` holds
    everything the server said for machines. Raised by ``check_batch``, it also
    carries what was answered before it: ``answers`` to the caller's requests
    ``[:first_unanswered]``, decided (and logged) already: send only the rest
    again. Elsewhere ``[]`` and 0.
    """

    def __init__(self, info: ErrorDetails, call: Any = None) -> None:
        super().__init__(f"{info.code.name}: {info.message}")
        self.info = info
        self._call = call
        self.answers: list[pb.CheckResponse] = []
        self.first_unanswered = 0

    def with_info(self, info: ErrorDetails) -> CheckError:
        """The same kind of error, of the same call, saying ``info``."""
        return type(self)(info, self._call)

    def code(self) -> grpc.StatusCode:
        return self.info.code

    def details(self) -> str:
        return self.info.message

    def trailing_metadata(self) -> Any:
        """The trailers of the failed call (None for a stream answer's error)."""
        return self._call.trailing_metadata() if self._call is not None else None

    @property
    def reason(self) -> str:
        """The stable ErrorInfo reason to branch on (``API_KEY_MISSING``, ...); "" from grpc itself."""
        return self.info.reason

    @property
    def metadata(self) -> dict[str, str]:
        """ErrorInfo metadata: ``principal``, ``channel``, ``role``, ``check_id`` where they apply."""
        return self.info.metadata

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """(field path, problem) pairs; empty unless INVALID_ARGUMENT."""
        return self.info.field_violations

    @property
    def retry_after(self) -> float | None:
        """Seconds until a retry may succeed (RetryInfo); None when waiting will not help."""
        return self.info.retry_after


class InvalidRequest(CheckError):
    """A field is wrong, missing or too long (or the batch too large): fix the request."""


class Unauthenticated(CheckError):
    """No, unknown or malformed credentials; ``reason`` says which."""


class PermissionDenied(CheckError):
    """The caller may not do this: ``reason`` is CHANNEL_NOT_ALLOWED or ROLE_NOT_ALLOWED."""


class RateLimited(CheckError):
    """Over the caller's rate or enumeration throttle: try again after ``retry_after`` seconds."""


class LimitExceeded(CheckError):
    """More than the server will ever take in one call: send less; waiting will not help."""


class ServiceUnavailable(CheckError):
    """The server cannot be reached, is shutting down or has no list yet: try again or elsewhere."""


class DeadlineExceeded(CheckError):
    """The call's deadline passed before an answer came; nothing is known about the check."""


_CLASSES: dict[grpc.StatusCode, type[CheckError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _class_of(info: ErrorDetails) -> type[CheckError]:
    if info.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        # with a delay: a rate or throttle; without: grpc's "larger than max" (send less)
        return RateLimited if info.retry_after is not None else LimitExceeded
    if info.code is grpc.StatusCode.FAILED_PRECONDITION and info.reason == "BATCH_OVER_BURST":
        return LimitExceeded
    return _CLASSES.get(info.code, CheckError)


def from_rpc_error(error: grpc.RpcError) -> CheckError:
    """The family member for a failed call (itself if it already is one)."""
    if isinstance(error, CheckError):
        return error
    info = error_details(error)
    assert info is not None  # a failed call always has a code
    return _class_of(info)(info, error)


def from_answer(answer: pb.CheckResponse) -> CheckError | None:
    """The family member for a stream answer's ``error`` (None for an answer with a decision)."""
    info = error_details(answer)
    return None if info is None else _class_of(info)(info)


def from_info(info: ErrorDetails) -> CheckError:
    """The family member for details made on this side (a request refused before sending)."""
    return _class_of(info)(info)
