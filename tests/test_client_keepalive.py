"""Keepalive: a stream to a server that hangs ends, and the client's pings suit the server.

A real server process is stopped with SIGSTOP (it keeps its connections and
answers nothing, as a hung host or a network that drops packets would) while a
stream is open: the client's pings go unanswered and the stream ends with
``ServiceUnavailable`` in about ``time + timeout`` seconds of the client's
``Keepalive`` (short here), instead of blocking forever.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients import channel
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.channel import DEFAULT_KEEPALIVE, Keepalive
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.errors import CheckError, ServiceUnavailable
from shixin_check.server import app
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess

#: Pings every second, a second to answer: a hung server is noticed within a few seconds.
QUICK = Keepalive(time=1.0, timeout=1.0)
#: The test fails rather than waits longer than this for the stream to end.
BOUND_S = 15.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    running = ServeProcess(
        "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())), log=tmp_path / "serve.log"
    )
    try:
        running.wait_serving()
        yield running
    finally:
        running.proc.send_signal(signal.SIGCONT)  # whatever happened: let it stop
        running.stop()


def flight(request_id: str) -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=ZHANG, request_id=request_id)


def test_a_stream_to_a_hung_server_ends_with_service_unavailable(server: ServeProcess) -> None:
    answered = threading.Event()
    done = threading.Event()  # the request iterator's end: set when the test is over
    ended: list[tuple[str, float]] = []

    def requests() -> Iterator[pb.CheckRequest]:
        yield flight("before")
        done.wait(BOUND_S * 2)  # a gateway's stream: open, nothing to send for now

    def read() -> None:
        with CheckClient(server.target, keepalive=QUICK) as client:
            try:
                for _answer in client.check_stream(requests()):
                    answered.set()
                ended.append(("ended", time.monotonic()))
            except CheckError as exc:
                ended.append((type(exc).__name__, time.monotonic()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert answered.wait(BOUND_S), "the stream was never answered"
        server.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        reader.join(BOUND_S)
        assert not reader.is_alive(), f"the stream still waits {BOUND_S:g} s after SIGSTOP"
    finally:
        done.set()
    ((what, when),) = ended
    assert what == ServiceUnavailable.__name__
    assert when - stopped < BOUND_S


def test_a_stream_opened_to_a_server_already_hung_ends_with_service_unavailable(
    server: ServeProcess,
) -> None:
    """Frozen before the stream's first answer: the retry policy applied to the stream
    too, so grpc sent it again, on and on, once keepalive had ended the first attempt
    (no answer, no error after 200 s with the default pings). A stream is not retried."""
    ended: list[str] = []
    done = threading.Event()

    def requests() -> Iterator[pb.CheckRequest]:
        yield flight("first")
        done.wait(BOUND_S * 2)

    def read() -> None:
        with CheckClient(server.target, keepalive=QUICK) as client:
            client.status()  # connected, before the server hangs
            server.proc.send_signal(signal.SIGSTOP)
            try:
                for _answer in client.check_stream(requests()):
                    ended.append("answered")
            except CheckError as exc:
                ended.append(type(exc).__name__)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        reader.join(BOUND_S)
        assert not reader.is_alive(), f"the stream still waits {BOUND_S:g} s after SIGSTOP"
    finally:
        done.set()
    assert ended == [ServiceUnavailable.__name__]


def test_an_async_stream_to_a_hung_server_ends_with_service_unavailable(
    server: ServeProcess,
) -> None:
    async def go() -> tuple[str, float]:
        answered = asyncio.Event()
        done = asyncio.Event()

        async def requests() -> AsyncIterator[pb.CheckRequest]:
            yield flight("before")
            await asyncio.wait_for(done.wait(), BOUND_S * 2)

        async def read() -> str:
            async with AsyncCheckClient(server.target, keepalive=QUICK) as client:
                try:
                    async for _answer in client.check_stream(requests()):
                        answered.set()
                    return "ended"
                except CheckError as exc:
                    return type(exc).__name__

        reader = asyncio.ensure_future(read())
        try:
            await asyncio.wait_for(answered.wait(), BOUND_S)
            server.proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            what = await asyncio.wait_for(reader, BOUND_S)
            return what, time.monotonic() - stopped
        finally:
            done.set()

    what, took = asyncio.run(go())
    assert what == ServiceUnavailable.__name__ and took < BOUND_S


def test_the_clients_default_pings_are_within_the_servers_policy() -> None:
    """Never a GOAWAY too_many_pings for a client left at its default: the server
    accepts a ping every KEEPALIVE_MIN_INTERVAL_S, calls or not."""
    assert channel.KEEPALIVE_MIN_INTERVAL_S == app.KEEPALIVE_MIN_INTERVAL_S
    assert DEFAULT_KEEPALIVE.time >= app.KEEPALIVE_MIN_INTERVAL_S
    options = dict(DEFAULT_KEEPALIVE.options())
    assert options["grpc.keepalive_time_ms"] == DEFAULT_KEEPALIVE.time * 1000
    # grpcio waits for a ping's answer ping_timeout_ms (1 minute unless set), not keepalive's
    assert options["grpc.http2.ping_timeout_ms"] == DEFAULT_KEEPALIVE.timeout * 1000
    assert options["grpc.keepalive_permit_without_calls"] == 1  # the server permits it too
    assert options["grpc.http2.max_pings_without_data"] == 0  # keeps pinging a quiet stream
    # a dead server is noticed within tens of seconds
    assert DEFAULT_KEEPALIVE.time + DEFAULT_KEEPALIVE.timeout <= 60


def test_keepalive_values_are_checked() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        Keepalive(time=0)
    assert dict(QUICK.options())["grpc.keepalive_timeout_ms"] == 1000
