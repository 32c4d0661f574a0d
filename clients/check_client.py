"""The Python client for booking systems, the CLI and the benchmarks.

``build_request`` turns plain values (as a clerk or a shell user gives them)
into a ``CheckRequest``; ``CheckClient`` sends checks over one reused channel
with a default deadline and gRPC's own retries (``clients/channel.py``), and
raises the exception family of ``clients/errors.py`` when a call is refused.
``AsyncCheckClient`` (``clients/aio.py``) does the same on ``grpc.aio``;
``clients/flows.py`` turns rail orders, PNRs, check-ins and enrolments into
checks. ``error_details`` reads what a refusal says for machines (the
google.rpc details of its status, or a stream answer's ``error``) in one shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from clients.calls import batches, refuse_oversize, shifted, with_request_ids
from clients.channel import DEFAULT_RETRY, NO_RETRY, Credentials, RetryPolicy, open_channel
from clients.errors import (
    CheckError,
    ErrorDetails,
    error_details,
    from_answer,
    from_info,
    from_rpc_error,
)
from clients.names import UnknownName, enum_name, enum_number
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

__all__ = [
    "MAX_BATCH",
    "NO_RETRY",
    "PURCHASE_FIELD",
    "CheckClient",
    "ErrorDetails",
    "RetryPolicy",
    "UnknownName",
    "build_request",
    "enum_name",
    "error_details",
]

#: Checks the server takes in one batch call; ``check_batch`` sends more as several calls.
MAX_BATCH = 1000
#: The deadline of a call when none is given, in seconds.
DEFAULT_TIMEOUT = 2.0

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
    exact names with or without the prefix: ``{"train_number": "G1234",
    "seat": "SECOND_CLASS"}``. A name that is no value (``"SLEEPER"``), an
    unknown channel, document type or purchase field raises ``UnknownName``
    (a ``ValueError``) listing the valid ones. The zero value
    (``"UNSPECIFIED"``) of a document type or purchase enum may be sent; the
    server reads it as RESIDENT_ID or refuses it.
    """
    channel = enum_name(pb.Channel.DESCRIPTOR, channel, "channel")
    request = pb.CheckRequest(
        request_id=request_id,
        channel=channel,
        amount_fen=amount_fen,
        merchant_id=merchant_id,
        terminal_id=terminal_id,
    )
    if uscc:
        request.organization.uscc = uscc
        request.organization.name = name
    else:
        request.person.CopyFrom(
            pb.PersonSubject(
                id_type=enum_name(pb.IdType.DESCRIPTOR, id_type, "id_type", unspecified=True),
                id_number=id_number,
                name=name,
            )
        )
    field = PURCHASE_FIELD[channel]
    message = getattr(request, field)
    message.SetInParent()
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in (purchase or {}).items():
        what = f"purchase.{field}.{key}"
        if key not in fields:
            raise UnknownName(f"{what}: no such field; {field} has {', '.join(fields)}")
        if fields[key].enum_type is not None:
            value = enum_number(fields[key].enum_type, value, what, unspecified=True)
        setattr(message, key, value)
    return request


class CheckClient:
    """Blocking client over one channel, reused by every call. Use as a context manager.

    ``timeout`` is the default deadline of a call in seconds (retries
    included); every method takes its own ``timeout=`` too. ``api_key`` is
    sent as ``authorization: Bearer <key>``; ``root_ca`` (PEM bytes) turns TLS
    on, and ``client_cert``/``client_key`` add a client certificate for
    mutual TLS. ``retry`` is gRPC's retry policy (``NO_RETRY`` turns it off);
    ``batch_size`` the checks per batch call (lower it to a key's burst).
    A refused call raises a ``clients.errors.CheckError``.
    """

    def __init__(
        self,
        target: str,
        timeout: float = DEFAULT_TIMEOUT,
        api_key: str = "",
        root_ca: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        batch_size: int = MAX_BATCH,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size: {batch_size} is not in 1..{MAX_BATCH}")
        credentials = Credentials(api_key, root_ca, client_cert, client_key)
        self.channel = open_channel(target, credentials, retry)
        self.stub = pb_grpc.ConsumptionCheckStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.batch_size = batch_size
        self.metadata = credentials.metadata()

    def __enter__(self) -> CheckClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def check(self, request: pb.CheckRequest, *, timeout: float | None = None) -> pb.CheckResponse:
        """One check: the decision, or a ``CheckError``."""
        refuse_oversize(request)
        try:
            response: pb.CheckResponse = self.stub.CheckConsumption(
                request, timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response

    def check_batch(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        """One answer per request, in order, however many: ``batch_size`` checks a call,
        one call after another, each with its own deadline. A refused call raises
        (the fields it names count from the caller's first request); the answers of
        calls before it are lost with it."""
        answers: list[pb.CheckResponse] = []
        for batch in batches(requests, self.batch_size):
            message = pb.CheckBatchRequest(checks=batch)
            refuse_oversize(message)
            try:
                reply = self.stub.CheckConsumptionBatch(
                    message, timeout=self._deadline(timeout), metadata=self.metadata
                )
            except grpc.RpcError as exc:
                raise shifted(from_rpc_error(exc), len(answers)) from exc
            if len(reply.results) != len(batch):
                raise from_info(ErrorDetails(
                    grpc.StatusCode.INTERNAL,
                    f"{len(batch)} checks sent, {len(reply.results)} answers received",
                ))  # fmt: skip
            answers.extend(reply.results)
        return answers

    def check_stream(
        self,
        requests: Iterable[pb.CheckRequest],
        *,
        raise_on_error: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.CheckResponse]:
        """One answer per request, in order, as they come, on one stream.

        Requests without a ``request_id`` get one (``with_request_ids``); each
        answer carries its request's. A refused request is *answered*: its
        answer has ``error`` set (read it with ``error_details``) and the stream
        goes on. With ``raise_on_error=True`` the first such answer raises its
        ``CheckError`` instead and the stream is cancelled. A broken stream
        raises. No deadline unless ``timeout`` is given: a gateway's stream
        lives long. Leaving the loop early cancels the stream.
        """
        call = self.stub.CheckConsumptionStream(
            with_request_ids(requests), timeout=timeout, metadata=self.metadata
        )
        try:
            for answer in call:
                refused = from_answer(answer) if raise_on_error else None
                if refused is not None:
                    raise refused
                yield answer
        except CheckError:
            raise
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def status(self, *, timeout: float | None = None) -> pb.ListStatus:
        """What list the server holds and how fresh it is (GetListStatus)."""
        try:
            reply: pb.ListStatus = self.stub.GetListStatus(
                pb.ListStatusRequest(), timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return reply
