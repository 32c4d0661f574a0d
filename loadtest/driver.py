"""The RPC load driver: one grpc.aio client process, the same for every server.

It runs in its own process (``bench.py`` starts it with the ``spawn`` start
method) so that it never shares a GIL with a server. Requests travel as
pre-serialised bytes (the client pays no protobuf encoding; answers are
parsed, to count decisions and to keep the client honest).

Every figure is measured in segments that alternate between the servers
(ours, bare, bare, ours, ...), so that a neighbour's burst of CPU on this
shared machine hits both alike. Each segment stops after ``max_calls`` or
``seconds``, whichever comes first. Around each segment the driver reads the
CPU time of the server process, of itself, and of the whole machine, so every
figure comes with the server's CPU per call and the CPU that other processes
took meanwhile (``foreign_cores``).

A target may carry call metadata (``authorization: Bearer <key>`` for a
server with authentication on), sent with every call to it, and helper
processes (a replica's Redis) whose CPU is counted beside the server's
(``helper_cpu_s``) rather than as foreign.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import grpc
import psutil

from loadtest.inprocess import summarize
from shixin.v1 import check_pb2 as pb

_SERVICE = "/shixin.v1.ConsumptionCheck/"
_DECISIONS = {v.number: v.name for v in pb.Decision.DESCRIPTOR.values}


class TargetSpec(NamedTuple):
    """A server to drive: picklable, so it crosses into the driver process."""

    name: str
    address: str
    pid: int
    metadata: tuple[tuple[str, str], ...] = ()
    helpers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Phase:
    """One figure: ``kind`` is unary, paced (open loop at ``rate``/s), batch or stream."""

    name: str
    kind: str
    concurrency: int
    max_calls: int
    seconds: float
    rate: float = 0.0  # paced only; 0: ``rate_share`` of the bare server's unary calls/s
    rate_share: float = 0.25


@dataclass
class Tally:
    """What one server did in one phase, summed over its segments."""

    calls: int = 0
    checks: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    helper_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    decisions: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    rate: float = 0.0

    def result(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ns", "decisions")}
        out["decisions"] = dict(self.decisions)
        out["latency"] = summarize(self.latencies_ns)
        el = self.elapsed_s or 1e-9
        out["calls_per_s"] = self.calls / el
        out["checks_per_s"] = self.checks / el
        out["server_cpu_us_per_check"] = self.server_cpu_s / max(self.checks, 1) * 1e6
        out["client_cpu_us_per_check"] = self.client_cpu_s / max(self.checks, 1) * 1e6
        out["helper_cpu_us_per_check"] = self.helper_cpu_s / max(self.checks, 1) * 1e6
        out["helper_cores"] = self.helper_cpu_s / el
        out["server_cores"] = self.server_cpu_s / el
        out["foreign_cores"] = self.foreign_cpu_s / el
        return out


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


class Target:
    """One server: its channel, its methods, its process, the metadata it is sent."""

    def __init__(
        self,
        name: str,
        address: str,
        pid: int,
        metadata: tuple[tuple[str, str], ...] = (),
        helpers: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.process = psutil.Process(pid)
        self.helpers = [psutil.Process(h) for h in helpers]
        self.metadata = metadata or None
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        )
        self.unary = self.channel.unary_unary(
            _SERVICE + "CheckConsumption", response_deserializer=pb.CheckResponse.FromString
        )
        self.batch = self.channel.unary_unary(
            _SERVICE + "CheckConsumptionBatch",
            response_deserializer=pb.CheckBatchResponse.FromString,
        )
        self.stream = self.channel.stream_stream(
            _SERVICE + "CheckConsumptionStream", response_deserializer=pb.CheckResponse.FromString
        )


class Driver:
    """Runs the phases against one server and collects its figures."""

    def __init__(self, requests: list[bytes], batches: list[bytes], batch_size: int) -> None:
        self.requests = requests
        self.batches = batches
        self.batch_size = batch_size

    async def _closed_loop(
        self,
        call: Callable[[bytes], Awaitable[Any]],
        payloads: list[bytes],
        phase: Phase,
        tally: Tally,
        per_call: int,
        count: Callable[[Any], None],
    ) -> None:
        """``phase.concurrency`` callers, each sending its next call when the last returns."""
        clock = time.perf_counter_ns
        deadline = clock() + int(phase.seconds * 1e9)
        n = len(payloads)
        issued = 0

        async def caller() -> None:
            nonlocal issued
            while issued < phase.max_calls and clock() < deadline:
                payload = payloads[issued % n]
                issued += 1
                t0 = clock()
                try:
                    reply = await call(payload)
                except grpc.aio.AioRpcError as exc:
                    tally.errors += 1
                    tally.first_error = tally.first_error or f"{exc.code().name}: {exc.details()}"
                    continue
                tally.latencies_ns.append(clock() - t0)
                tally.calls += 1
                tally.checks += per_call
                count(reply)

        await asyncio.gather(*(caller() for _ in range(phase.concurrency)))

    async def _paced(self, target: Target, phase: Phase, tally: Tally, rate: float) -> None:
        """Open loop: a new call every 1/rate s whatever the answers do."""
        clock = time.perf_counter
        interval = 1.0 / rate
        start = clock()
        deadline = start + phase.seconds
        n = len(self.requests)
        pending: set[asyncio.Task[None]] = set()
        issued = 0

        async def one(payload: bytes) -> None:
            t0 = time.perf_counter_ns()
            try:
                reply = await target.unary(payload, timeout=30, metadata=target.metadata)
            except grpc.aio.AioRpcError as exc:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{exc.code().name}: {exc.details()}"
                return
            tally.latencies_ns.append(time.perf_counter_ns() - t0)
            tally.calls += 1
            tally.checks += 1
            tally.decisions[_DECISIONS[reply.decision]] += 1

        next_at = start
        while issued < phase.max_calls:
            now = clock()
            if now >= deadline:
                break
            while next_at <= now and issued < phase.max_calls:
                task = asyncio.create_task(one(self.requests[issued % n]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                issued += 1
                next_at += interval
            await asyncio.sleep(max(0.0, next_at - clock()))
        if pending:
            await asyncio.wait(pending, timeout=30)

    async def _streams(self, target: Target, phase: Phase, tally: Tally) -> None:
        """``phase.concurrency`` bidirectional streams sharing one budget of messages."""
        clock = time.perf_counter
        deadline = clock() + phase.seconds
        n = len(self.requests)
        sent = 0

        async def feed() -> AsyncIterator[bytes]:
            nonlocal sent
            while sent < phase.max_calls and clock() < deadline:
                payload = self.requests[sent % n]
                sent += 1
                yield payload

        async def one_stream() -> None:
            call = target.stream(feed(), timeout=phase.seconds + 60, metadata=target.metadata)
            try:
                async for reply in call:
                    tally.checks += 1
                    tally.decisions[_DECISIONS[reply.decision]] += 1
            except grpc.aio.AioRpcError as exc:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{exc.code().name}: {exc.details()}"
            tally.calls += 1

        await asyncio.gather(*(one_stream() for _ in range(phase.concurrency)))

    async def segment(self, target: Target, phase: Phase, tally: Tally, rate: float) -> None:
        me = psutil.Process()
        srv0, me0, all0 = _cpu(target.process), _cpu(me), _machine_busy()
        help0 = sum(map(_cpu, target.helpers))
        t0 = time.perf_counter()
        if phase.kind == "unary":

            def count_unary(reply: Any) -> None:
                tally.decisions[_DECISIONS[reply.decision]] += 1

            await self._closed_loop(
                lambda p: target.unary(p, timeout=30, metadata=target.metadata),
                self.requests,
                phase,
                tally,
                1,
                count_unary,
            )
        elif phase.kind == "batch":

            def count_batch(reply: Any) -> None:
                tally.decisions.update(_DECISIONS[r.decision] for r in reply.results)

            await self._closed_loop(
                lambda p: target.batch(p, timeout=30, metadata=target.metadata),
                self.batches,
                phase,
                tally,
                self.batch_size,
                count_batch,
            )
        elif phase.kind == "paced":
            tally.rate = rate
            await self._paced(target, phase, tally, rate)
        elif phase.kind == "stream":
            await self._streams(target, phase, tally)
        else:
            raise ValueError(f"unknown phase kind {phase.kind!r}")
        elapsed = time.perf_counter() - t0
        srv, mine = _cpu(target.process) - srv0, _cpu(me) - me0
        helper = sum(map(_cpu, target.helpers)) - help0
        tally.elapsed_s += elapsed
        tally.server_cpu_s += srv
        tally.client_cpu_s += mine
        tally.helper_cpu_s += helper
        # Everything else the machine did meanwhile (the idle other servers included: ~0).
        tally.foreign_cpu_s += max(0.0, _machine_busy() - all0 - srv - mine - helper)


async def _drive(
    targets: list[TargetSpec],
    phases: list[Phase],
    rounds: int,
    requests: list[bytes],
    batches: list[bytes],
    batch_size: int,
    warmup_s: float,
) -> dict[str, dict[str, Any]]:
    servers = [Target(*t) for t in targets]
    driver = Driver(requests, batches, batch_size)
    for server in servers:
        await server.channel.channel_ready()
        for warm in (
            Phase("warmup", "unary", 8, 100_000, warmup_s),
            Phase("warmup", "batch", 2, 1_000, warmup_s / 2),
            Phase("warmup", "stream", 2, 100_000, warmup_s / 2),
        ):
            await driver.segment(server, warm, Tally(), 0.0)
    results: dict[str, dict[str, Any]] = {s.name: {} for s in servers}
    for phase in phases:
        tallies = {s.name: Tally() for s in servers}
        rate = phase.rate
        if phase.kind == "paced" and not rate:
            bare = (
                results.get("bare", {}).get("unary_c32")
                or next(iter(results.values()))["unary_c32"]
            )
            rate = max(50.0, round(phase.rate_share * bare["calls_per_s"], -1))
        for r in range(rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for server in order:
                await driver.segment(server, phase, tallies[server.name], rate)
        for name, tally in tallies.items():
            results[name][phase.name] = tally.result()
    for server in servers:
        await server.channel.close()
    return results


def drive(
    targets: list[TargetSpec],
    phases: list[Phase],
    rounds: int,
    requests: list[bytes],
    batches: list[bytes],
    batch_size: int,
    warmup_s: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """Entry point in the driver process: {server: {phase: figures}}."""
    return asyncio.run(_drive(targets, phases, rounds, requests, batches, batch_size, warmup_s))
