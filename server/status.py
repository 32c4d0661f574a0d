"""Domain errors to gRPC status codes: the one place they are mapped."""

from __future__ import annotations

import grpc

from shixin_domain.errors import (
    ConfigurationError,
    DeadlineExceeded,
    IndexUnavailable,
    InvalidInput,
    LoadRejected,
    MalformedRequest,
    NotReady,
    PermissionDenied,
    RateLimited,
    ShixinError,
    Unauthenticated,
)

_CODES: tuple[tuple[type[ShixinError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (IndexUnavailable, grpc.StatusCode.UNAVAILABLE),
    (LoadRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_of(exc: ShixinError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
