"""``AsyncCheckClient``: the client of ``clients/check_client.py`` on ``grpc.aio``.

Same methods, same deadlines, retries, batching and exceptions, awaited; for
booking systems that already run an event loop (aiohttp, FastAPI, ...).
Make it inside the loop that uses it, and close it there (``async with``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc

from clients.calls import RequestIds, batches, refuse_oversize, shifted, with_request_ids
from clients.channel import DEFAULT_RETRY, Credentials, RetryPolicy, open_aio_channel
from clients.check_client import DEFAULT_TIMEOUT, MAX_BATCH
from clients.errors import CheckError, ErrorDetails, from_answer, from_info, from_rpc_error
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc


async def _with_request_ids_async(
    requests: AsyncIterable[pb.CheckRequest],
) -> AsyncIterator[pb.CheckRequest]:
    """``with_request_ids`` for requests that arrive asynchronously."""
    ids = RequestIds()
    async for request in requests:
        yield ids(request)


class AsyncCheckClient:
    """Asynchronous client over one ``grpc.aio`` channel. Use ``async with``.

    The arguments are ``CheckClient``'s: ``timeout`` (the default deadline in
    seconds), ``api_key``, ``root_ca``, ``client_cert``, ``client_key``,
    ``retry`` and ``batch_size``. A refused call raises a ``CheckError``.
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
        self.channel = open_aio_channel(target, credentials, retry)
        self.stub = pb_grpc.ConsumptionCheckStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.batch_size = batch_size
        self.metadata = credentials.metadata()

    async def __aenter__(self) -> AsyncCheckClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def check(
        self, request: pb.CheckRequest, *, timeout: float | None = None
    ) -> pb.CheckResponse:
        """One check: the decision, or a ``CheckError``."""
        refuse_oversize(request)
        try:
            response: pb.CheckResponse = await self.stub.CheckConsumption(
                request, timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response

    async def check_batch(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        """One answer per request, in order: ``batch_size`` checks a call, one call after
        another (as ``CheckClient.check_batch``)."""
        answers: list[pb.CheckResponse] = []
        for batch in batches(requests, self.batch_size):
            message = pb.CheckBatchRequest(checks=batch)
            refuse_oversize(message)
            try:
                reply = await self.stub.CheckConsumptionBatch(
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

    async def check_stream(
        self,
        requests: Iterable[pb.CheckRequest] | AsyncIterable[pb.CheckRequest],
        *,
        raise_on_error: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.CheckResponse]:
        """One answer per request, in order, on one stream (as ``CheckClient.check_stream``):
        a refused request is answered with ``error`` unless ``raise_on_error``."""
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
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def status(self, *, timeout: float | None = None) -> pb.ListStatus:
        """What list the server holds and how fresh it is (GetListStatus)."""
        try:
            reply: pb.ListStatus = await self.stub.GetListStatus(
                pb.ListStatusRequest(), timeout=self._deadline(timeout), metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return reply
