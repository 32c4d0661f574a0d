"""The clients while a real server process shuts down (SIGTERM), and ``serve --drain``.

A server that begins to stop cancels the calls grpcio has taken in but not
yet handed to the service (grpc/grpc#41785): never decided, so the clients
retry them as they retry UNAVAILABLE, and raise ``ServiceUnavailable`` once
the server is gone; never a bare CANCELLED ``CheckError`` the caller did not
cause. Closing the client under a blocked call is the caller's doing and stays
a plain CANCELLED.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.channel import RetryPolicy
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.errors import CheckError, ServiceUnavailable
from tests.conftest import RunningServer, log_records, settings_for, start_server
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.waiting import eventually

#: Calls in flight at once when SIGTERM comes: enough that grpcio holds some unrequested.
THREADS = 32
TASKS = 64
#: Each caller stops this long after SIGTERM, or after this many calls, whichever first.
AFTER_S = 1.5
MAX_CALLS = 3000
#: Past the server's --grace (5 s): a call waiting behind the others in flight is answered
#: or UNAVAILABLE, not cut by the default 2 s deadline on a loaded machine (a CI run saw
#: one DEADLINE_EXCEEDED among 733 calls).
PATIENT_S = 10.0


def flight(number: str = ZHAO) -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    running = ServeProcess(
        "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
        "--audit-log", str(tmp_path / "audit.log"), log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        running.wait_serving()
        yield running
    finally:
        running.stop()


def decided(audit: Path) -> int:
    """The checks a server decided (its audit log's CheckConsumption records)."""
    records = log_records(audit)
    return sum(1 for r in records if r["method"] == "CheckConsumption")


def outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, CheckError):
        return f"{type(exc).__name__} {exc.code().name} {exc.details()[:60]!r}"
    return repr(exc)


def test_calls_in_flight_at_sigterm_are_answered_or_unavailable(
    server: ServeProcess, tmp_path: Path
) -> None:
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    terminated = threading.Event()
    stop_at = [float("inf")]

    with CheckClient(server.target, timeout=PATIENT_S) as client:
        client.check(flight())  # connected

        def call_on() -> None:
            for _ in range(MAX_CALLS):
                if time.monotonic() > stop_at[0]:
                    return
                try:
                    client.check(flight())
                    got = outcome(None)
                except ServiceUnavailable:  # the server is gone, or going
                    got = "ServiceUnavailable"
                except CheckError as exc:
                    got = outcome(exc)
                with lock:
                    seen[got] += 1
                if got == "ServiceUnavailable" and terminated.is_set():
                    return  # once refused after SIGTERM, calling on says nothing new

        callers = [threading.Thread(target=call_on) for _ in range(THREADS)]
        for caller in callers:
            caller.start()
        time.sleep(0.3)
        stop_at[0] = time.monotonic() + AFTER_S
        server.proc.send_signal(signal.SIGTERM)
        terminated.set()
        for caller in callers:
            caller.join(timeout=30)
        assert not any(caller.is_alive() for caller in callers)
    assert server.proc.wait(timeout=15) == 0
    refused = {k: n for k, n in seen.items() if k not in ("OK", "ServiceUnavailable")}
    assert not refused, f"calls refused otherwise than ServiceUnavailable: {dict(seen)}"
    assert seen["OK"] > 0 and seen["ServiceUnavailable"] > 0, dict(seen)
    # what was refused was never decided: one decision per answer (and the first call)
    assert decided(tmp_path / "audit.log") == seen["OK"] + 1


def test_async_calls_in_flight_at_sigterm_are_answered_or_unavailable(
    server: ServeProcess,
) -> None:
    async def go() -> collections.Counter[str]:
        seen: collections.Counter[str] = collections.Counter()
        stop_at = float("inf")
        async with AsyncCheckClient(server.target, timeout=PATIENT_S) as client:
            await client.check(flight())  # connected

            async def call_on() -> None:
                for _ in range(MAX_CALLS):
                    if asyncio.get_running_loop().time() > stop_at:
                        return
                    try:
                        await client.check(flight())
                        seen["OK"] += 1
                    except ServiceUnavailable:
                        seen["ServiceUnavailable"] += 1
                        if stop_at != float("inf"):
                            return
                    except CheckError as exc:
                        seen[outcome(exc)] += 1

            callers = [asyncio.ensure_future(call_on()) for _ in range(TASKS)]
            await asyncio.sleep(0.3)
            stop_at = asyncio.get_running_loop().time() + AFTER_S
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*callers), 30)
        return seen

    seen = asyncio.run(go())
    assert server.proc.wait(timeout=15) == 0
    refused = {k: n for k, n in seen.items() if k not in ("OK", "ServiceUnavailable")}
    assert not refused, f"calls refused otherwise than ServiceUnavailable: {dict(seen)}"
    assert seen["OK"] > 0 and seen["ServiceUnavailable"] > 0, dict(seen)


def test_calls_a_stopping_server_cancelled_are_answered_by_another_once(
    tmp_path: Path, serve: Callable[..., RunningServer]
) -> None:
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    stopping = start_server(settings_for(listed, audit_log=tmp_path / "a.log"))
    other = serve(listed, audit_log=tmp_path / "b.log")
    patient = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=1.0)
    answers: list[pb.CheckResponse] = []
    with CheckClient(f"ipv4:{stopping.address},{other.address}", timeout=10,
                     retry=patient) as client:  # fmt: skip
        client.check(flight(ZHANG))  # pick_first: the first address
        # The stopping server's loop is held while four calls come in: grpcio takes
        # them in, and hands one at most to the service before the stop cancels the rest.
        stopping.loop.call_soon_threadsafe(time.sleep, 0.8)
        stopping.loop.call_soon_threadsafe(stopping.service.request_stop)
        time.sleep(0.1)
        callers = [
            threading.Thread(target=lambda: answers.append(client.check(flight(ZHANG))))
            for _ in range(4)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=30)
    stopping.thread.join(timeout=10)
    stopping.channel.close()
    assert [a.decision for a in answers] == [pb.DENY] * 4
    time.sleep(0.1)  # the audit writer appends as it goes
    first, second = decided(tmp_path / "a.log"), decided(tmp_path / "b.log")
    assert second >= 1, "no cancelled call was answered by the other server"
    assert first + second == 5, (first, second)  # each check decided once


def test_closing_the_client_under_a_blocked_call_stays_a_plain_cancelled() -> None:
    with socket.socket() as mute:  # takes the connection, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        client = CheckClient(f"127.0.0.1:{mute.getsockname()[1]}", timeout=10)
        raised: list[Exception] = []

        def call() -> None:
            try:
                client.check(flight())
            except Exception as exc:  # whatever it is, the test reads it
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        client.close()  # the caller's own doing
        caller.join(timeout=10)
    assert not caller.is_alive()
    (error,) = raised
    assert type(error) is CheckError and error.code() is grpc.StatusCode.CANCELLED


# --- serve --drain ---------------------------------------------------------------


def readiness(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="shixin.v1.ConsumptionCheck"), timeout=2
        )
    return int(reply.status)


def test_drain_answers_new_calls_while_health_says_not_serving(tmp_path: Path) -> None:
    server = ServeProcess(
        "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())), "--drain", "2",
        log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        server.wait_serving()
        with CheckClient(server.target) as client:
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 1.5
            while readiness(server.target) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never went NOT_SERVING"
                time.sleep(0.02)
            answer = client.check(flight(ZHANG))  # a new call, draining: answered
            assert answer.decision == pb.DENY
            assert server.proc.poll() is None
        assert server.proc.wait(timeout=15) == 0
        assert "--drain" in server.output()
    finally:
        server.stop()


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    server = ServeProcess(
        "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())), "--drain", "120",
        log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        server.wait_serving()
        server.proc.send_signal(signal.SIGTERM)
        eventually(lambda: "answering new calls for 120.0s (--drain)" in server.output(),
                   "the drain begun")  # fmt: skip
        assert server.proc.poll() is None  # draining
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0  # well before the 120 s
    finally:
        server.stop()
    # the one who sent it is told what it did (it was silent)
    assert "SIGTERM again: the drain (--drain) ends now; calls in flight get up to" in (
        server.output()
    ), server.output()
