"""Raw-bytes gRPC client processes: a Python driver that does no protobuf work.

Why it exists: a Python client that builds and parses messages spends about as
much CPU per call as the server it drives, so it measures itself (issue 12).
This one sends requests serialized once, before the run, through
``channel.unary_unary`` / ``channel.stream_stream`` with no serializer and no
deserializer, and only counts the answers' bytes; several such processes, each
with its own interpreter, drive one server. Each process measures its own CPU
(``getrusage``, every thread) over exactly the measured window, so the
benchmark can show that the driver is not the bottleneck.

One process, as ``RawClients`` starts it::

    python -m loadtest.rawclient --target HOST:PORT --kind batch|stream \
        --messages FILE --inflight M --seconds S [--window W] [--header 'k: v']

``FILE`` holds gRPC-framed messages (``loadtest.common.frame``): for a batch,
the calls cycle through them; for a stream, the requests do (a ring of
distinct ``request_id`` values longer than the server's 1,024-id window).
With ``--kind batch`` (or ``unary``) the process keeps ``M`` calls in flight,
a thread each on a sync channel; with ``--kind stream`` it holds ``M``
bidirectional streams on a grpc.aio channel (for streams the cheaper client:
about 140 µs of CPU per message against 240 µs for a sync stream), each with
at most ``W`` requests unanswered. It warms up for ``--warmup`` seconds, prints
``ready``, waits for ``go`` on standard input, drives for ``--seconds``, lets
the calls in flight finish, and prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import grpc

from loadtest.common import CHILDREN, unframe

METHODS = {
    "unary": "/shixin.v1.ConsumptionCheck/CheckConsumption",
    "batch": "/shixin.v1.ConsumptionCheck/CheckConsumptionBatch",
    "stream": "/shixin.v1.ConsumptionCheck/CheckConsumptionStream",
}
#: Give up a run after this many failed calls or streams (a wrong key, a dead server).
MAX_ERRORS = 50
CALL_TIMEOUT_S = 30.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 4 << 20)]
Metadata = tuple[tuple[str, str], ...]


class Tally:
    """What the threads of one process counted; one lock, taken once per thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.answers = 0
        self.errors = 0
        self.first_error = ""

    def add(self, calls: int, answers: int, errors: int, error: str) -> None:
        with self.lock:
            self.calls += calls
            self.answers += answers
            self.errors += errors
            self.first_error = self.first_error or error


def _calls(
    channel: grpc.Channel,
    kind: str,
    bodies: list[bytes],
    metadata: Metadata,
    deadline: float,
    tally: Tally,
    offset: int,
) -> None:
    """Blocking calls one after the other until ``deadline``: one thread's share."""
    call = channel.unary_unary(METHODS[kind], request_serializer=None, response_deserializer=None)
    calls = errors = 0
    error = ""
    i = offset
    while time.monotonic() < deadline and errors < MAX_ERRORS:
        try:
            call(bodies[i % len(bodies)], metadata=metadata, timeout=CALL_TIMEOUT_S)
            calls += 1
        except grpc.RpcError as exc:
            errors += 1
            error = error or f"{exc.code()}: {exc.details()}"
        i += 1
    tally.add(calls, calls, errors, error)


async def _stream(
    channel: grpc.aio.Channel,
    ring: list[bytes],
    window: int,
    metadata: Metadata,
    deadline: float,
    tally: Tally,
    offset: int,
) -> None:
    """One bidirectional stream until ``deadline``, at most ``window`` requests unanswered.

    On grpc.aio: a sync stream costs its client ~1.7x as much CPU per message
    (a thread hand-off each way), more than the server spends on it."""
    call = channel.stream_stream(
        METHODS["stream"], request_serializer=None, response_deserializer=None
    )(metadata=metadata, timeout=deadline - time.monotonic() + CALL_TIMEOUT_S)
    room = asyncio.Semaphore(window)

    async def requests() -> None:
        i = offset
        while time.monotonic() < deadline:
            await room.acquire()  # the call's timeout ends a wait that an answer never ends
            await call.write(ring[i % len(ring)])
            i += 1
        await call.done_writing()

    writer = asyncio.create_task(requests())
    answers = 0
    error = ""
    try:
        async for _ in call:
            answers += 1
            room.release()
    except grpc.RpcError as exc:
        error = f"{exc.code()}: {exc.details()}"
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    tally.add(1, answers, 1 if error else 0, error)


async def drive_streams(
    channel: grpc.aio.Channel,
    ring: list[bytes],
    streams: int,
    window: int,
    seconds: float,
    metadata: Metadata,
) -> Tally:
    """``streams`` streams on ``channel`` for ``seconds``, then every answer in."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(
        _stream(channel, ring, window, metadata, deadline, tally, n * len(ring) // streams)
        for n in range(streams)
    ))  # fmt: skip
    return tally


def drive_calls(
    channel: grpc.Channel,
    kind: str,
    bodies: list[bytes],
    inflight: int,
    seconds: float,
    metadata: Metadata,
) -> Tally:
    """``inflight`` threads calling on ``channel`` for ``seconds``, then joined."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_calls,
            args=(channel, kind, bodies, metadata, deadline, tally, n * len(bodies) // inflight),
            daemon=True,
        )
        for n in range(inflight)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 2 * CALL_TIMEOUT_S)
    return tally


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_go(timeout: float) -> bool:
    """Say ``ready``; True once the parent says ``go`` (False past ``timeout``)."""
    print("ready", flush=True)
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(readable) and sys.stdin.readline().strip() == "go"


def report(tally: Tally, seconds: float, cpu: float) -> None:
    print(json.dumps({
        "pid": os.getpid(), "calls": tally.calls, "answers": tally.answers,
        "errors": tally.errors, "first_error": tally.first_error, "seconds": seconds,
        "cpu_s": cpu,
    }), flush=True)  # fmt: skip


def run_calls(args: argparse.Namespace, bodies: list[bytes], metadata: Metadata) -> int:
    with grpc.insecure_channel(args.target, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        warm = drive_calls(channel, args.kind, bodies, args.inflight, args.warmup, metadata)
        if warm.errors:
            print(json.dumps({"error": warm.first_error, "phase": "warm-up"}), flush=True)
            return 1
        if not wait_for_go(args.go_timeout):
            return 3
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        tally = drive_calls(channel, args.kind, bodies, args.inflight, args.seconds, metadata)
        report(tally, time.perf_counter() - t0, cpu_seconds() - cpu0)
    return 0


async def run_streams(args: argparse.Namespace, ring: list[bytes], metadata: Metadata) -> int:
    async with grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        warm = await drive_streams(channel, ring, args.inflight, args.window, args.warmup,
                                   metadata)  # fmt: skip
        if warm.errors:
            print(json.dumps({"error": warm.first_error, "phase": "warm-up"}), flush=True)
            return 1
        if not wait_for_go(args.go_timeout):  # blocks the loop: nothing else is running
            return 3
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        tally = await drive_streams(channel, ring, args.inflight, args.window, args.seconds,
                                    metadata)  # fmt: skip
        report(tally, time.perf_counter() - t0, cpu_seconds() - cpu0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.rawclient", description=__doc__)
    p.add_argument("--target", required=True, metavar="HOST:PORT")
    p.add_argument("--kind", choices=sorted(METHODS), required=True)
    p.add_argument("--messages", type=Path, required=True, help="a file of framed messages")
    p.add_argument("--inflight", type=int, default=4, help="calls in flight, or streams")
    p.add_argument("--window", type=int, default=16, help="stream: requests unanswered")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--go-timeout", type=float, default=120.0, help="exit if no 'go' by then")
    p.add_argument("--header", action="append", default=[], help="metadata 'name: value'")
    args = p.parse_args(argv)
    messages = unframe(args.messages.read_bytes())
    metadata = tuple(
        (name.strip().lower(), value.strip())
        for name, _, value in (h.partition(":") for h in args.header)
    )
    if args.kind == "stream":
        return asyncio.run(run_streams(args, messages, metadata))
    return run_calls(args, messages, metadata)


# --- the parent's side ---------------------------------------------------------------------


class RawClients:
    """``count`` client processes on one target: started, warmed, released together."""

    def __init__(
        self, count: int, argv: list[str], log: Path, alive: Callable[[], None] | None = None
    ) -> None:
        """``alive`` is called while waiting for their lines: it raises when the target
        is gone (``CHILDREN.check``), so that a dead server is named at once, not as raw
        clients that never got ready."""
        self.log = log.open("ab")
        self.alive = alive
        self.lines: queue.Queue[tuple[int, str]] = queue.Queue()
        self.procs = []
        for n in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "loadtest.rawclient", *argv],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
            CHILDREN.add("raw client", proc, server=False)
            self.procs.append(proc)
            threading.Thread(target=self._drain, args=(n, proc.stdout), daemon=True).start()

    def _drain(self, n: int, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((n, line.strip()))

    def _expect(self, timeout: float, what: str) -> list[str]:
        """One line from every process, or ``RuntimeError`` past ``timeout``."""
        got: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            if self.alive is not None:
                self.alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"raw clients: {len(got)} of {len(self.procs)} {what} "
                                   f"after {timeout:.0f}s (see {self.log.name})")  # fmt: skip
            try:
                n, line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            got[n] = line
        return [got[n] for n in range(len(self.procs))]

    def wait_ready(self, timeout: float) -> None:
        lines = self._expect(timeout, "ready")
        if any(line != "ready" for line in lines):
            raise RuntimeError(f"raw clients did not warm up: {lines}")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._expect(timeout, "results")]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            CHILDREN.forget(proc)
        self.log.close()


if __name__ == "__main__":
    sys.exit(main())
