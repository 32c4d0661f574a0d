"""Domain errors to gRPC statuses: the one place they are mapped.

Integrators handle errors in Java, Go, Node and Python, so a refusal is more
than a code and a sentence. ``refusal`` turns an exception into what the
caller sees: the status code, the readable message (unchanged: people read
it), and the machine-readable part, sent as a ``google.rpc.Status`` in the
standard ``grpc-status-details-bin`` trailer that every gRPC library decodes:

- ``google.rpc.ErrorInfo`` always: domain ``shixin-check``, a stable reason
  (the error's own ``reason``, else the default of its class below) and
  metadata such as the principal, the channel or an INTERNAL call's check id;
- ``google.rpc.BadRequest`` on INVALID_ARGUMENT: the field path and problem;
- ``google.rpc.RetryInfo`` on RESOURCE_EXHAUSTED from a rate or a throttle.

A refused request on a stream gets the same content as a ``CheckError`` in
its answer (``Refusal.check_error``), so the two can never say different things.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.rpc import error_details_pb2, status_pb2

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import (
    ConfigurationError,
    DeadlineExceeded,
    IndexUnavailable,
    InvalidInput,
    LimitExceeded,
    LoadRejected,
    MalformedRequest,
    NotReady,
    PermissionDenied,
    RateLimited,
    ShixinError,
    Unauthenticated,
)

#: ErrorInfo.domain of every error this service sends.
DOMAIN = "shixin-check"
#: The standard trailer that carries a serialised ``google.rpc.Status``.
DETAILS_KEY = "grpc-status-details-bin"
#: Deprecated (one release): RetryInfo says the same. Milliseconds, as text.
RETRY_AFTER_MS_KEY = "retry-after-ms"
#: The reason of an unexpected failure.
INTERNAL = "INTERNAL"
#: A batch larger than the caller's burst can never pass whole: waiting will not help.
BATCH_OVER_BURST = "BATCH_OVER_BURST"

_CODES: tuple[tuple[type[ShixinError], grpc.StatusCode, str], ...] = (
    # class, status code, the reason when the error names none
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    (MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    (LimitExceeded, grpc.StatusCode.FAILED_PRECONDITION, BATCH_OVER_BURST),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    (NotReady, grpc.StatusCode.UNAVAILABLE, "NO_LIST_LOADED"),
    (IndexUnavailable, grpc.StatusCode.UNAVAILABLE, "INDEX_UNAVAILABLE"),
    (LoadRejected, grpc.StatusCode.FAILED_PRECONDITION, "LOAD_REJECTED"),
    (ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION, "CONFIGURATION_ERROR"),
)


def _classify(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ShixinError):
        for kind, code, default in _CODES:
            if isinstance(exc, kind):
                return code, exc.reason or default
    return grpc.StatusCode.INTERNAL, INTERNAL


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code of ``exc``; INTERNAL for anything not raised on purpose."""
    return _classify(exc)[0]


@dataclass(frozen=True)
class Refusal:
    """An error as the caller sees it: code, message, reason and details."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: (field path, problem) pairs, INVALID_ARGUMENT only
    violations: tuple[tuple[str, str], ...] = ()
    #: seconds until a retry may succeed, RESOURCE_EXHAUSTED from a rate only
    retry_after: float | None = None

    @property
    def retry_after_ms(self) -> int:
        """The delay rounded up to whole milliseconds (0 when there is none)."""
        if self.retry_after is None:
            return 0
        return max(1, math.ceil(self.retry_after * 1000))

    def rich_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` of the trailer: code, message and details."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata)
        )
        details = [info]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.violations
                    ]
                )
            )
        if self.retry_after is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(self.retry_after_ms)
            details.append(retry)
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in details:
            packed = AnyPb()
            packed.Pack(detail)
            status.details.append(packed)
        return status

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """What goes in the trailers beside the status: the details (and the old retry header)."""
        trailers: tuple[tuple[str, str | bytes], ...] = (
            (DETAILS_KEY, self.rich_status().SerializeToString()),
        )
        if self.retry_after is not None:
            trailers += ((RETRY_AFTER_MS_KEY, str(self.retry_after_ms)),)
        return trailers

    def check_error(self) -> pb.CheckError:
        """The same refusal as a stream answer's ``error``."""
        return pb.CheckError(
            code=self.code.value[0],
            message=self.message,
            reason=self.reason,
            field_violations=[
                pb.FieldViolation(field=f, description=d) for f, d in self.violations
            ],
            retry_after_ms=self.retry_after_ms,
            metadata=dict(self.metadata),
        )


def refusal(
    exc: BaseException,
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Refusal:
    """What the caller is told about ``exc``.

    ``message`` replaces ``str(exc)`` (an INTERNAL message names a check id and
    never the exception); ``metadata`` goes to ErrorInfo.
    """
    code, reason = _classify(exc)
    violations: tuple[tuple[str, str], ...] = ()
    retry_after = None
    if isinstance(exc, InvalidInput):
        violations = ((exc.field, exc.problem),)
    elif isinstance(exc, MalformedRequest):
        violations = (("", str(exc)),)  # the request as a whole
    elif isinstance(exc, RateLimited):
        retry_after = max(0.0, exc.retry_after)
    return Refusal(
        code=code,
        message=str(exc) if message is None else message,
        reason=reason,
        metadata=dict(metadata or {}),
        violations=violations,
        retry_after=retry_after,
    )
