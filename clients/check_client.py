"""A small Python client for booking systems, the CLI and the benchmarks.

``build_request`` turns plain values (as a clerk or a shell user gives them)
into a ``CheckRequest``; ``CheckClient`` sends it over a real channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc

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
