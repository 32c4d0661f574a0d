"""A small Python client for booking systems, the CLI and the benchmarks.

``build_request`` turns plain values (as a clerk or a shell user gives them)
into a ``CheckRequest``; ``CheckClient`` sends it over a real channel.
``error_details`` reads what a refusal says for machines (the google.rpc
details of its status, or a stream answer's ``error``) in one shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

#: Channel name to the purchase field it takes.
PURCHASE_FIELD = {
    "RAIL": "rail",
    "AIRLINE": "flight",
    "HOTEL": "hotel",
    "SCHOOL": "school",
    "SHIP": "ship",
    "TRAVEL": "travel",
    "LEISURE": "leisure",
    "INSURANCE": "insurance",
    "REAL_ESTATE": "real_estate",
    "VEHICLE": "vehicle",
    "OFFICE_RENTAL": "office_rental",
}


def build_request(
    channel: str,
    *,
    id_number: str = "",
    name: str = "",
    id_type: str = "RESIDENT_ID",
    uscc: str = "",
    purchase: dict[str, Any] | None = None,
    amount_fen: int = 0,
    request_id: str = "",
    merchant_id: str = "",
    terminal_id: str = "",
) -> pb.CheckRequest:
    """A request for a person (``id_number``) or an organisation (``uscc``).

    ``purchase`` holds the channel's purchase fields by name, enums by their
    short name: ``{"train_number": "G1234", "seat": "SECOND_CLASS"}``.
    """
    request = pb.CheckRequest(
        request_id=request_id,
        channel=channel.upper(),
        amount_fen=amount_fen,
        merchant_id=merchant_id,
        terminal_id=terminal_id,
    )
    if uscc:
        request.organization.uscc = uscc
        request.organization.name = name
    else:
        request.person.CopyFrom(
            pb.PersonSubject(id_type=id_type.upper(), id_number=id_number, name=name)
        )
    field = PURCHASE_FIELD[channel.upper()]
    message = getattr(request, field)
    message.SetInParent()
    for key, value in (purchase or {}).items():
        target = message.DESCRIPTOR.fields_by_name[key]
        if target.enum_type is not None and isinstance(value, str):
            value = _enum_value(target.enum_type, value)
        setattr(message, key, value)
    return request


def _enum_value(enum: Any, name: str) -> int:
    name = name.upper()
    for value in enum.values:
        if value.name == name or value.name.endswith("_" + name):
            return int(value.number)
    known = ", ".join(v.name for v in enum.values if v.number)
    raise ValueError(f"{name!r} is not one of {known}")


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
    status = rpc_status.from_call(error)
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


class CheckClient:
    """Blocking client over one channel. Use as a context manager.

    ``api_key`` is sent as ``authorization: Bearer <key>``; ``root_ca`` (PEM
    bytes) turns TLS on, and ``client_cert``/``client_key`` add a client
    certificate for mutual TLS.
    """

    def __init__(
        self,
        target: str,
        timeout: float = 5.0,
        api_key: str = "",
        root_ca: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
    ) -> None:
        if root_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_ca, client_key, client_cert)
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ConsumptionCheckStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def __enter__(self) -> CheckClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def check(self, request: pb.CheckRequest) -> pb.CheckResponse:
        response: pb.CheckResponse = self.stub.CheckConsumption(
            request, timeout=self.timeout, metadata=self.metadata
        )
        return response

    def check_batch(self, requests: Iterable[pb.CheckRequest]) -> list[pb.CheckResponse]:
        reply = self.stub.CheckConsumptionBatch(
            pb.CheckBatchRequest(checks=list(requests)),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return list(reply.results)

    def check_stream(self, requests: Iterable[pb.CheckRequest]) -> Iterator[pb.CheckResponse]:
        yield from self.stub.CheckConsumptionStream(
            iter(requests), timeout=self.timeout, metadata=self.metadata
        )

    def status(self) -> pb.ListStatus:
        reply: pb.ListStatus = self.stub.GetListStatus(
            pb.ListStatusRequest(), timeout=self.timeout, metadata=self.metadata
        )
        return reply
