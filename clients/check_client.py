"""The Python client for booking systems, the CLI and the benchmarks.

``build_request`` turns plain values (as a clerk or a shell user gives them)
into a ``CheckRequest``; ``CheckClient`` sends checks over one reused channel
with a default deadline and gRPC's own retries (``clients/channel.py``), and
raises the exception family of ``clients/errors.py`` when a call is refused.
``AsyncCheckClient`` (``clients/aio.py``) does the same on ``grpc.aio``;
``clients/flows.py`` turns rail orders, PNRs, check-ins and enrolments into
checks. ``error_details`` reads what a refusal says for machines (the
google.rpc details of its status, or a stream answer's ``error``) in one shape.

With ``prefilter=True`` a client keeps the server's Bloom prefilter and
answers definite negatives itself, offline too (``clients/prefilter.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.calls import batches, refuse_oversize, shifted, with_request_ids
from shixin_check.clients.channel import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RETRY,
    NO_RETRY,
    Credentials,
    Keepalive,
    RetryPolicy,
    open_channel,
)
from shixin_check.clients.errors import (
    CheckError,
    ErrorDetails,
    PermissionDenied,
    ServiceUnavailable,
    Unauthenticated,
    error_details,
    from_answer,
    from_info,
    from_rpc_error,
)
from shixin_check.clients.names import UnknownName, enum_name, enum_number
from shixin_check.clients.prefilter import (
    DEFAULT_MAX_AGE,
    DOWNLOAD_TIMEOUT,
    Download,
    LocalAudit,
    NeedsFull,
    Prefilter,
    RulesNewer,
    Split,
    client_closed,
    renumbered,
)
from shixin_check.domain.wire import PURCHASE_FIELD as _BY_CHANNEL

__all__ = [
    "MAX_BATCH",
    "NO_RETRY",
    "PURCHASE_FIELD",
    "CheckClient",
    "CheckStream",
    "ErrorDetails",
    "Keepalive",
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

log = logging.getLogger("shixin.client")


def prefilter_state(
    prefilter: bool, max_age: float, local_audit_path: str | Path | None,
    clock: Callable[[], float],
) -> Prefilter | None:  # fmt: skip
    """The prefilter state of a client made with these arguments (None: off)."""
    if not prefilter:
        return None
    if local_audit_path is None:
        raise ValueError(
            "prefilter=True needs local_audit_path: every check answered locally is "
            "recorded there (JSON Lines, masked IDs) for the operator"
        )
    return Prefilter(max_age, clock, LocalAudit(local_audit_path))


def call_error(exc: grpc.RpcError, closing: bool = False) -> CheckError:
    """The ``CheckError`` for a failed call (``from_rpc_error``), where a CANCELLED
    the caller did not cause is a ``ServiceUnavailable`` (``code()`` stays CANCELLED).

    The server cancels the calls it has taken in but not yet handed to the
    service when it begins to shut down (grpcio's core, grpc/grpc#41785): never
    decided, retried as UNAVAILABLE is (``clients/channel.py``). A call cannot
    be cancelled by its caller except by closing the client (``closing``):
    a plain CANCELLED ``CheckError``, ``client_closed()``'s. (An asyncio
    caller's cancellation of its own task is ``asyncio.CancelledError``, never
    a status.)
    """
    error = from_rpc_error(exc)
    if error.code() is grpc.StatusCode.CANCELLED and type(error) is CheckError:
        return (
            CheckError(client_closed().info, exc)
            if closing
            else ServiceUnavailable(error.info, exc)
        )
    return error


def batch_error(error: CheckError, answered: int, positions: Sequence[int] | None) -> CheckError:
    """``error`` of a batch call sent after ``answered`` answers, naming the checks as
    the caller numbers them: ``positions`` where each sent check stands in the
    caller's list (the prefilter answered the others), else in order from ``answered``."""
    if positions is not None:
        return renumbered(error, positions[answered:])
    return shifted(error, answered)


def batch_results(
    batch: Sequence[pb.CheckRequest], reply: pb.CheckBatchResponse
) -> Sequence[pb.CheckResponse]:
    """The answers of a batch call, one for each check sent, or ``CheckError`` (INTERNAL)."""
    if len(reply.results) != len(batch):
        raise from_info(ErrorDetails(
            grpc.StatusCode.INTERNAL,
            f"{len(batch)} checks sent, {len(reply.results)} answers received",
        ))  # fmt: skip
    return reply.results


def with_answers(
    error: CheckError, answers: list[pb.CheckResponse], first_unanswered: int
) -> CheckError:
    """``error`` of a ``check_batch``, carrying what was answered before it: ``answers``
    to the caller's requests ``[:first_unanswered]``, decided and logged already;
    send only ``requests[first_unanswered:]`` again."""
    error.answers = answers
    error.first_unanswered = first_unanswered
    return error


def answered_locally_too(error: CheckError, split: Split, state: Prefilter) -> CheckError:
    """``error`` of the calls of a prefiltered ``check_batch`` (its ``answers`` those of
    ``split.send``), made the caller's: the answers to the caller's first requests,
    local ones included (and recorded, since they are handed out), up to the first
    the server did not answer. When the server answered none, none: ``[]`` and 0 (the
    local answers cost nothing to give again, and are recorded when they are). When
    the client was closed meanwhile (the local audit refuses them), up to the first
    local answer: one that is not recorded is never handed out."""
    sent: list[pb.CheckResponse] = error.answers
    if not sent:
        return with_answers(error, [], 0)
    slots = list(split.answers)
    first = split.positions[len(sent)] if len(sent) < len(split.positions) else len(slots)
    for position, answer in zip(split.positions, sent, strict=False):
        slots[position] = answer
    try:
        state.record(split.local[: first - len(sent)])
    except CheckError:  # closed: the part handed out ends at the first local answer
        first = next((i for i, at in enumerate(split.positions) if at != i), len(split.positions))
    prefix = [a for a in slots[:first] if a is not None]
    return with_answers(error, prefix, first)


#: Channel name to the purchase field it takes.
PURCHASE_FIELD = {channel.name: field for channel, field in _BY_CHANNEL.items()}


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
    """A request for a person (``id_number``) or an organisation (``uscc``): one
    subject a check, so both given raise ``ValueError`` (a check of the organisation
    alone would let a listed person by; send two checks).

    ``purchase`` holds the channel's purchase fields by name, enums by their
    exact names with or without the prefix: ``{"train_number": "G1234",
    "seat": "SECOND_CLASS"}``. A name that is no value (``"SLEEPER"``), an
    unknown channel, document type or purchase field raises ``UnknownName``
    (a ``ValueError``) listing the valid ones. The zero value
    (``"UNSPECIFIED"``) of a document type or purchase enum may be sent; the
    server reads it as RESIDENT_ID or refuses it.
    """
    if id_number and uscc:
        raise ValueError(
            "id_number and uscc are both given: a check is of one subject, a person "
            "(id_number) or an organisation (uscc); send one check for each"
        )
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


class CheckStream:
    """The answers of one ``check_stream``, in order, as they come: iterate it.

    Leaving a loop over it early cancels the stream only once nothing refers to
    it any more (the generator inside is collected); while a name still holds
    it, grpc keeps sending the caller's requests and the server keeps deciding
    them. ``with client.check_stream(requests) as answers:`` (or
    ``answers.close()``) cancels it on leaving, whatever still refers to it.
    """

    __slots__ = ("_answers", "call", "closed")

    def __init__(self) -> None:
        self._answers: Generator[pb.CheckResponse, None, None] | None = None
        #: the grpc call, once the first answer is asked for (``CheckClient._stream``)
        self.call: Any = None
        self.closed = False

    def run(self, answers: Generator[pb.CheckResponse, None, None]) -> CheckStream:
        self._answers = answers
        return self

    def __iter__(self) -> Iterator[pb.CheckResponse]:
        assert self._answers is not None
        return self._answers  # a loop runs on the generator itself: no call more per answer

    def __next__(self) -> pb.CheckResponse:
        assert self._answers is not None
        return next(self._answers)

    def close(self) -> None:
        """Cancel the stream: no more requests are sent, no more answers read. From
        any thread: one iterating it meanwhile sees the answers end."""
        self.closed = True
        if self.call is not None:
            self.call.cancel()
        try:
            if self._answers is not None:
                self._answers.close()
        except ValueError:
            pass  # being iterated in another thread: the cancelled call ends its loop

    def __enter__(self) -> CheckStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckClient:
    """Blocking client over one channel, reused by every call. Use as a context manager.

    ``timeout`` is the default deadline of a call in seconds (retries
    included); every method takes its own ``timeout=`` too. ``api_key`` is
    sent as ``authorization: Bearer <key>``; ``root_ca`` (PEM bytes) turns TLS
    on, and ``client_cert``/``client_key`` add a client certificate for
    mutual TLS. ``retry`` is gRPC's retry policy (``NO_RETRY`` turns it off);
    ``keepalive`` the channel's pings (``clients.channel.Keepalive``: a dead
    server ends a stream within about 15 s); ``batch_size`` the checks per
    batch call (lower it to a key's burst). A refused call raises a
    ``clients.errors.CheckError``.

    ``prefilter=True`` (the key needs the roles ``prefilter`` and ``check``)
    downloads the server's prefilter at start, refreshes it in a background
    thread every ``prefilter_max_age / 2`` seconds (``refresh_prefilter()``
    forces one), and answers ``check`` and ``check_batch`` requests that the
    filter clears locally (``clients/prefilter.py``), each recorded in
    ``local_audit_path``. ``clock`` measures the filter's age
    (``time.monotonic``). A key without the role fails the constructor
    (``PermissionDenied``); an unreachable server does not (the client starts
    without a filter and keeps trying).

    Once ``close()`` is called, every call raises ``client_closed()`` (a plain
    CANCELLED ``CheckError``, reason ``CLIENT_CLOSED``) before any decision,
    local or not; so does a call in flight, which ``close()`` cancels.
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
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
        batch_size: int = MAX_BATCH,
        prefilter: bool = False,
        prefilter_max_age: float = DEFAULT_MAX_AGE,
        local_audit_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size: {batch_size} is not in 1..{MAX_BATCH}")
        self.prefilter = prefilter_state(prefilter, prefilter_max_age, local_audit_path, clock)
        credentials = Credentials(api_key, root_ca, client_cert, client_key)
        self.channel = open_channel(target, credentials, retry, keepalive)
        self.stub = pb_grpc.ConsumptionCheckStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.batch_size = batch_size
        self.metadata = credentials.metadata()
        self._refresh_lock = threading.Lock()
        self._closing = threading.Event()  # wakes the refresher
        self._closed = False  # read by every call (cheaper than the event)
        self._refresher: threading.Thread | None = None
        if self.prefilter is not None:
            try:
                self.refresh_prefilter()
            except (PermissionDenied, Unauthenticated):
                self.close()
                raise
            except CheckError as exc:
                log.warning("prefilter: no filter yet (%s); checks go to the server", exc)
            self._refresher = threading.Thread(
                target=self._keep_fresh, name="shixin-prefilter", daemon=True
            )
            self._refresher.start()

    def __enter__(self) -> CheckClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        self.channel.close()  # ends a refresh in flight
        if self._refresher is not None and self._refresher is not threading.current_thread():
            self._refresher.join(timeout=5)
        if self.prefilter is not None:
            self.prefilter.audit.close()

    # --- the prefilter ---------------------------------------------------------

    def refresh_prefilter(self, *, timeout: float = DOWNLOAD_TIMEOUT) -> None:
        """Bring the prefilter up to the server's version now; raises the call's
        ``CheckError`` when that fails (the filter then ages out, or goes at once
        when the server refused or the download did not check out). A server whose
        ``lookup_rules`` are newer than this library's leaves no filter (every check
        goes to the server; one WARNING says to upgrade): not an error."""
        state = self.prefilter
        if state is None:
            raise ValueError("this client was made without prefilter=True")
        if self._closed:
            raise client_closed()
        with self._refresh_lock:
            started = state.clock()
            try:
                try:
                    self._download(state.request(), started, timeout)
                except NeedsFull:
                    self._download(state.request(full=True), started, timeout)
            except RulesNewer as exc:
                state.outdated(exc)
            except CheckError as exc:
                state.failed(exc)
                raise

    def _download(self, request: pb.PrefilterRequest, started: float, timeout: float) -> None:
        assert self.prefilter is not None
        download = Download()
        call = self.stub.GetPrefilter(request, timeout=timeout, metadata=self.metadata)
        try:
            for chunk in call:
                download.add(chunk)
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        finally:
            call.cancel()  # a download given up on its header reads no more (else: no-op)
        self.prefilter.install(download, started)

    def _keep_fresh(self) -> None:
        state = self.prefilter
        assert state is not None
        wait = state.refresh_interval if state.filter is not None else state.retry_interval
        while not self._closing.wait(wait):
            try:
                self.refresh_prefilter()
                wait = state.refresh_interval
            except CheckError as exc:
                if self._closed:
                    return
                log.warning("prefilter refresh failed: %s", exc)
                wait = state.retry_interval
            except Exception:  # never let the thread die: the filter would just age out
                log.exception("prefilter refresh failed")
                wait = state.retry_interval

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def check(self, request: pb.CheckRequest, *, timeout: float | None = None) -> pb.CheckResponse:
        """One check: the decision, or a ``CheckError``; with the prefilter, a definite
        negative is answered here (``decided_locally``)."""
        if self._closed:
            raise client_closed()
        state = self.prefilter
        if state is not None and (answer := state.local_answer(request)) is not None:
            return answer
        refuse_oversize(request)
        try:
            response: pb.CheckResponse = self.stub.CheckConsumption(
                request, timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        return response

    def check_batch(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        """One answer per request, in order, however many: ``batch_size`` checks a call,
        one call after another, each with its own deadline. A refused call raises
        (the fields it names count from the caller's first request), carrying the
        answers already received: ``exc.answers`` to ``requests[:exc.first_unanswered]``
        (``with_answers``), decided and logged by the server; send only the rest
        again. With the prefilter, the requests it clears are answered here and the
        rest sent, answers in order all the same."""
        if self._closed:
            raise client_closed()
        state = self.prefilter
        if state is None:
            return self._send_batches(requests, timeout)
        split = state.split(list(requests))
        try:
            sent = self._send_batches(split.send, timeout, split.positions) if split.send else []
        except CheckError as exc:
            answered_locally_too(exc, split, state)
            raise
        answers = split.merge(sent)
        try:
            state.record(split.local)
        except CheckError as exc:  # closed meanwhile: the server's answers, up to a local one
            answered_locally_too(with_answers(exc, sent, len(sent)), split, state)
            raise
        return answers

    def _send_batches(
        self, requests: Iterable[pb.CheckRequest], timeout: float | None,
        positions: Sequence[int] | None = None,
    ) -> list[pb.CheckResponse]:  # fmt: skip
        """``requests`` to the server, ``batch_size`` a call; ``positions``: where each
        stands in the caller's list (errors name that), when not simply in order. A
        refusal carries the answers before it (``with_answers``, counted in ``requests``)."""
        answers: list[pb.CheckResponse] = []
        try:
            for batch in batches(requests, self.batch_size):
                if self._closed:  # closed between two calls
                    raise client_closed()
                message = pb.CheckBatchRequest(checks=batch)
                refuse_oversize(message)
                try:
                    reply = self.stub.CheckConsumptionBatch(
                        message, timeout=self._deadline(timeout), metadata=self.metadata
                    )
                except grpc.RpcError as exc:
                    error = call_error(exc, self._closed)
                    raise batch_error(error, len(answers), positions) from exc
                answers.extend(batch_results(batch, reply))
        except CheckError as exc:
            with_answers(exc, answers, len(answers))
            raise
        return answers

    def check_stream(
        self,
        requests: Iterable[pb.CheckRequest],
        *,
        raise_on_error: bool = False,
        timeout: float | None = None,
    ) -> CheckStream:
        """One answer per request, in order, as they come, on one stream.

        Requests without a ``request_id`` get one (``with_request_ids``); each
        answer carries its request's. A refused request is *answered*: its
        answer has ``error`` set (read it with ``error_details``) and the stream
        goes on. With ``raise_on_error=True`` the first such answer raises its
        ``CheckError`` instead and the stream is cancelled. A broken stream
        raises. No deadline unless ``timeout`` is given: a gateway's stream
        lives long. Every request on a stream goes to the server, prefilter or not.

        Leaving the loop early cancels the stream once nothing holds the
        returned ``CheckStream``; one kept in a name (``answers =
        client.check_stream(...)``) stays open, and the server goes on deciding
        the requests it is sent, until ``answers.close()``. ``with
        client.check_stream(requests) as answers:`` closes it on leaving.
        """
        stream = CheckStream()
        return stream.run(self._stream(requests, raise_on_error, timeout, stream))

    def _stream(
        self, requests: Iterable[pb.CheckRequest], raise_on_error: bool, timeout: float | None,
        stream: CheckStream,
    ) -> Generator[pb.CheckResponse, None, None]:  # fmt: skip
        if self._closed:
            raise client_closed()
        if stream.closed:
            return
        call = stream.call = self.stub.CheckConsumptionStream(
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
            if stream.closed and not self._closed:  # the caller's own close(): the answers end
                return
            raise call_error(exc, self._closed) from exc
        finally:
            call.cancel()

    def status(self, *, timeout: float | None = None) -> pb.ListStatus:
        """What list the server holds and how fresh it is (GetListStatus)."""
        if self._closed:
            raise client_closed()
        try:
            reply: pb.ListStatus = self.stub.GetListStatus(
                pb.ListStatusRequest(), timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        return reply
