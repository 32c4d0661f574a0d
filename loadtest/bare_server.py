"""A bare ``shixin.v1.ConsumptionCheck`` servicer: the yardstick for our server.

DESIGN §6 states its goals as ratios to bare grpcio, so the benchmark needs a
server that pays everything grpcio and protobuf cost (the request is parsed,
a realistic answer is built and serialised) and nothing else: no keys, no
index, no rules. Every check gets the same ALLOW / NOT_LISTED answer, with
the caller's ``request_id`` copied, for unary, batch (one answer per check,
in order) and stream calls. Same server options as ``server/app.py``.

    python -m loadtest.bare_server --listen 127.0.0.1:0
    python -m loadtest.bare_server --listen 127.0.0.1:0 --sync [--threads 32]

prints ``serving on HOST:PORT`` (the bound port) once it accepts calls. The
default is a ``grpc.aio`` server, like ours; ``--sync`` serves the same
answers from a ``grpc.server`` with a ``ThreadPoolExecutor`` of ``--threads``
threads (a stream holds one thread for its whole life, so give at least as
many threads as streams the driver keeps open), the other yardstick issue 12
asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

import grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# The size and shape of our server's answer for an unlisted subject.
_REASON = pb.Reason(code="NOT_LISTED", message="未在失信被执行人及限制消费人员名单中")
_VERSION = "20260101T000000Z-bare0000"
_CHECK_ID = "bare0000-1"


def fixed_answer(request_id: str) -> pb.CheckResponse:
    return pb.CheckResponse(
        request_id=request_id,
        check_id=_CHECK_ID,
        decision=pb.ALLOW,
        reasons=[_REASON],
        list_version=_VERSION,
    )


class BareCheckService(pb_grpc.ConsumptionCheckServicer):
    """Parses (grpcio does) and answers; decides nothing."""

    async def CheckConsumption(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        return fixed_answer(request.request_id)

    async def CheckConsumptionBatch(
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        return pb.CheckBatchResponse(results=[fixed_answer(c.request_id) for c in request.checks])

    async def CheckConsumptionStream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CheckResponse]:
        async for request in request_iterator:
            yield fixed_answer(request.request_id)

    async def GetListStatus(
        self, request: pb.ListStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStatus:
        return pb.ListStatus(version=_VERSION, serving=True, source="bare")


class BareSyncCheckService(pb_grpc.ConsumptionCheckServicer):
    """The same answers as ``BareCheckService``, from grpcio's thread-pool server."""

    def CheckConsumption(
        self, request: pb.CheckRequest, context: grpc.ServicerContext
    ) -> pb.CheckResponse:
        return fixed_answer(request.request_id)

    def CheckConsumptionBatch(
        self, request: pb.CheckBatchRequest, context: grpc.ServicerContext
    ) -> pb.CheckBatchResponse:
        return pb.CheckBatchResponse(results=[fixed_answer(c.request_id) for c in request.checks])

    def CheckConsumptionStream(
        self, request_iterator: Iterator[pb.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckResponse]:
        for request in request_iterator:
            yield fixed_answer(request.request_id)

    def GetListStatus(
        self, request: pb.ListStatusRequest, context: grpc.ServicerContext
    ) -> pb.ListStatus:
        return pb.ListStatus(version=_VERSION, serving=True, source="bare-sync")


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_ConsumptionCheckServicer_to_server(BareCheckService(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    print(f"serving on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def serve_sync(listen: str, threads: int) -> None:
    """``--sync``: the thread-pool server until SIGTERM or SIGINT."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bare"),
        options=SERVER_OPTIONS,
    )
    pb_grpc.add_ConsumptionCheckServicer_to_server(BareSyncCheckService(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {listen}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"serving on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    while not stop.wait(1.0):  # a bounded wait, so the signal handler gets to run
        pass
    server.stop(0.5).wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bare_server", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--sync", action="store_true", help="grpc.server with a thread pool")
    parser.add_argument("--threads", type=int, default=32, help="--sync: the pool's threads")
    args = parser.parse_args(argv)
    if args.sync:
        serve_sync(args.listen, args.threads)
    else:
        asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
