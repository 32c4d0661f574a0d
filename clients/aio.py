"""``AsyncCheckClient``: the client of ``clients/check_client.py`` on ``grpc.aio``.

Same methods, same deadlines, retries, batching and exceptions, awaited; for
booking systems that already run an event loop (aiohttp, FastAPI, ...).
Make it inside the loop that uses it, and close it there (``async with``).
With ``prefilter=True`` the filter is fetched on entering ``async with`` (or
by the first check) and kept current by a task of that loop.

``close()`` cancels the calls in flight; grpc.aio then raises
``asyncio.CancelledError`` in the tasks awaiting them, which nobody cancelled.
Those become ``client_closed()``'s CANCELLED ``CheckError``, as in the blocking
client (a batch's carrying its ``answers``); a task that is itself being
cancelled still gets its ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from pathlib import Path

import grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.calls import (
    RequestIds,
    batches,
    refuse_oversize,
    with_request_ids,
)
from shixin_check.clients.channel import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RETRY,
    Credentials,
    Keepalive,
    RetryPolicy,
    open_aio_channel,
)
from shixin_check.clients.check_client import (
    DEFAULT_TIMEOUT,
    MAX_BATCH,
    answered_locally_too,
    batch_error,
    batch_results,
    call_error,
    log,
    prefilter_state,
    with_answers,
)
from shixin_check.clients.errors import (
    CheckError,
    PermissionDenied,
    Unauthenticated,
    from_answer,
)
from shixin_check.clients.prefilter import (
    DEFAULT_MAX_AGE,
    DOWNLOAD_TIMEOUT,
    Download,
    NeedsFull,
    RulesNewer,
    client_closed,
)


async def _with_request_ids_async(
    requests: AsyncIterable[pb.CheckRequest],
) -> AsyncIterator[pb.CheckRequest]:
    """``with_request_ids`` for requests that arrive asynchronously."""
    ids = RequestIds()
    async for request in requests:
        yield ids(request)


class AsyncCheckStream:
    """The answers of one ``AsyncCheckClient.check_stream``: ``async for`` over it.

    As ``CheckStream``: leaving a loop early cancels the stream only once
    nothing refers to it any more; ``async with client.check_stream(requests)
    as answers:`` (or ``await answers.aclose()``) cancels it on leaving.
    """

    __slots__ = ("_answers",)

    def __init__(self, answers: AsyncGenerator[pb.CheckResponse, None]) -> None:
        self._answers = answers

    def __aiter__(self) -> AsyncIterator[pb.CheckResponse]:
        return self._answers  # a loop runs on the generator itself: no call more per answer

    def __anext__(self) -> Awaitable[pb.CheckResponse]:
        return self._answers.__anext__()

    async def aclose(self) -> None:
        """Cancel the stream: no more requests are sent, no more answers read."""
        await self._answers.aclose()

    async def __aenter__(self) -> AsyncCheckStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncCheckClient:
    """Asynchronous client over one ``grpc.aio`` channel. Use ``async with``.

    The arguments are ``CheckClient``'s: ``timeout`` (the default deadline in
    seconds), ``api_key``, ``root_ca``, ``client_cert``, ``client_key``,
    ``retry``, ``keepalive``, ``batch_size``, and ``prefilter``,
    ``prefilter_max_age``, ``local_audit_path`` and ``clock``. A refused call
    raises a ``CheckError`` (a CANCELLED from the server a ``ServiceUnavailable``:
    the cancellation of the caller's own task is ``asyncio.CancelledError``,
    never a status). Once ``close()`` is called, every call raises
    ``client_closed()`` (CANCELLED, reason ``CLIENT_CLOSED``) before any
    decision, local or not, and so does every call it cancels.
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
        self.channel = open_aio_channel(target, credentials, retry, keepalive)
        self.stub = pb_grpc.ConsumptionCheckStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.batch_size = batch_size
        self.metadata = credentials.metadata()
        self._refresh_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    async def __aenter__(self) -> AsyncCheckClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """With the prefilter: fetch it and start keeping it current (once; the first
        check does it too). A key without the role raises ``PermissionDenied``."""
        if self.prefilter is None or self._started:
            return
        self._started = True
        try:
            await self.refresh_prefilter()
        except (PermissionDenied, Unauthenticated):
            await self.close()
            raise
        except CheckError as exc:
            log.warning("prefilter: no filter yet (%s); checks go to the server", exc)
        if not self._closed:
            self._refresher = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def close(self) -> None:
        self._closed = True
        refresher, self._refresher = self._refresher, None
        cancelled = False  # the task closing it was cancelled meanwhile: say so after
        if refresher is not None:
            refresher.cancel()
            try:
                await asyncio.wait([refresher])  # its own CancelledError stays in it
            except asyncio.CancelledError:
                cancelled = True
        await self.channel.close()
        if self.prefilter is not None:
            self.prefilter.audit.close()
        if cancelled:
            raise asyncio.CancelledError

    # --- the prefilter ---------------------------------------------------------

    async def refresh_prefilter(self, *, timeout: float = DOWNLOAD_TIMEOUT) -> None:
        """As ``CheckClient.refresh_prefilter``."""
        state = self.prefilter
        if state is None:
            raise ValueError("this client was made without prefilter=True")
        if self._closed:
            raise client_closed()
        async with self._refresh_lock:
            started = state.clock()
            try:
                try:
                    await self._download(state.request(), started, timeout)
                except NeedsFull:
                    await self._download(state.request(full=True), started, timeout)
            except RulesNewer as exc:
                state.outdated(exc)
            except CheckError as exc:
                state.failed(exc)
                raise

    async def _download(self, request: pb.PrefilterRequest, started: float, timeout: float) -> None:
        assert self.prefilter is not None
        download = Download()
        call = self.stub.GetPrefilter(request, timeout=timeout, metadata=self.metadata)
        try:
            async for chunk in call:
                download.add(chunk)
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        except asyncio.CancelledError:
            if self._cancelled_by_close():
                raise client_closed() from None
            raise
        finally:
            call.cancel()  # a download given up on its header reads no more (else: no-op)
        self.prefilter.install(download, started)

    async def _keep_fresh(self) -> None:
        state = self.prefilter
        assert state is not None
        wait = state.refresh_interval if state.filter is not None else state.retry_interval
        while True:
            await asyncio.sleep(wait)
            try:
                await self.refresh_prefilter()
                wait = state.refresh_interval
            except CheckError as exc:
                log.warning("prefilter refresh failed: %s", exc)
                wait = state.retry_interval
            except Exception:  # never let the task die: the filter would just age out
                log.exception("prefilter refresh failed")
                wait = state.retry_interval

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _cancelled_by_close(self) -> bool:
        """Whether a call's ``asyncio.CancelledError`` came from ``close()``: the client
        is closed and the awaiting task is not itself being cancelled (``cancelling()``;
        that cancellation goes on as a ``CancelledError``)."""
        task = asyncio.current_task()
        return self._closed and task is not None and task.cancelling() == 0

    async def check(
        self, request: pb.CheckRequest, *, timeout: float | None = None
    ) -> pb.CheckResponse:
        """One check: the decision, or a ``CheckError``; with the prefilter, a definite
        negative is answered here (``decided_locally``)."""
        state = self.prefilter
        if state is not None and not self._started:
            await self.start()
        if self._closed:
            raise client_closed()
        if state is not None and (answer := state.local_answer(request)) is not None:
            return answer
        refuse_oversize(request)
        try:
            response: pb.CheckResponse = await self.stub.CheckConsumption(
                request, timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        except asyncio.CancelledError:
            if self._cancelled_by_close():
                raise client_closed() from None
            raise
        return response

    async def check_batch(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        """One answer per request, in order: ``batch_size`` checks a call, one call after
        another (as ``CheckClient.check_batch``, the prefilter's answers included); a
        refusal carries the answers before it (``exc.answers``, ``exc.first_unanswered``)."""
        state = self.prefilter
        if state is not None and not self._started:
            await self.start()
        if self._closed:
            raise client_closed()
        if state is None:
            return await self._send_batches(requests, timeout)
        split = state.split(list(requests))
        try:
            sent = (
                await self._send_batches(split.send, timeout, split.positions) if split.send else []
            )
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

    async def _send_batches(
        self, requests: Iterable[pb.CheckRequest], timeout: float | None,
        positions: Sequence[int] | None = None,
    ) -> list[pb.CheckResponse]:  # fmt: skip
        answers: list[pb.CheckResponse] = []
        try:
            for batch in batches(requests, self.batch_size):
                if self._closed:  # closed between two calls
                    raise client_closed()
                message = pb.CheckBatchRequest(checks=batch)
                refuse_oversize(message)
                try:
                    reply = await self.stub.CheckConsumptionBatch(
                        message, timeout=self._deadline(timeout), metadata=self.metadata
                    )
                except grpc.RpcError as exc:
                    error = call_error(exc, self._closed)
                    raise batch_error(error, len(answers), positions) from exc
                except asyncio.CancelledError:
                    if self._cancelled_by_close():
                        raise client_closed() from None
                    raise
                answers.extend(batch_results(batch, reply))
        except CheckError as exc:
            with_answers(exc, answers, len(answers))
            raise
        return answers

    def check_stream(
        self,
        requests: Iterable[pb.CheckRequest] | AsyncIterable[pb.CheckRequest],
        *,
        raise_on_error: bool = False,
        timeout: float | None = None,
    ) -> AsyncCheckStream:
        """One answer per request, in order, on one stream (as ``CheckClient.check_stream``):
        a refused request is answered with ``error`` unless ``raise_on_error``. Every
        request goes to the server. Leaving the loop early cancels the stream once
        nothing holds the returned ``AsyncCheckStream``; one kept in a name stays
        open, the server deciding what it is sent, until ``await answers.aclose()``.
        ``async with client.check_stream(requests) as answers:`` closes it on leaving."""
        return AsyncCheckStream(self._stream(requests, raise_on_error, timeout))

    async def _stream(
        self, requests: Iterable[pb.CheckRequest] | AsyncIterable[pb.CheckRequest],
        raise_on_error: bool, timeout: float | None,
    ) -> AsyncGenerator[pb.CheckResponse, None]:  # fmt: skip
        if self._closed:
            raise client_closed()
        numbered = (
            _with_request_ids_async(requests)
            if isinstance(requests, AsyncIterable)
            else with_request_ids(requests)
        )
        call = self.stub.CheckConsumptionStream(numbered, timeout=timeout, metadata=self.metadata)
        try:
            async for answer in call:
                refused = from_answer(answer) if raise_on_error else None
                if refused is not None:
                    raise refused
                yield answer
        except CheckError:
            raise
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        except asyncio.CancelledError:
            if self._cancelled_by_close():
                raise client_closed() from None
            raise
        finally:
            call.cancel()

    async def status(self, *, timeout: float | None = None) -> pb.ListStatus:
        """What list the server holds and how fresh it is (GetListStatus)."""
        if self._closed:
            raise client_closed()
        try:
            reply: pb.ListStatus = await self.stub.GetListStatus(
                pb.ListStatusRequest(), timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise call_error(exc, self._closed) from exc
        except asyncio.CancelledError:
            if self._cancelled_by_close():
                raise client_closed() from None
            raise
        return reply
