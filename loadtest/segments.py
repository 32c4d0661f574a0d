"""The targets, drivers and segments every RPC figure of ``loadtest`` comes from.

``loadtest.ratio_bench``, ``loadtest.bench`` and ``loadtest.redis_bench``
start their own servers and hand them here: ``Target`` (a server: name,
loopback address, processes, headers such as ``authorization: Bearer KEY``,
and, where it has a metrics endpoint, its own count of checks), ``drivers()``
(the kinds of segment), ``write_bodies`` (the pre-framed request bodies) and
``run_segments`` (alternating segments over the targets, each bounded in
calls and in time). The caller owns the servers; this module starts and
stops only the drivers.

The drivers: h2load (C) posting pre-framed gRPC bodies for unary, batch and
a stream of many requests per call, one call in flight (``-c 1 -m 1``, every
call's latency from ``--log-file``), and unary calls open loop at a fixed
rate (``--rps``: h2load sends on a timer whatever the answers do; the
latency is from the actual send); several raw-bytes Python client processes
(``loadtest.rawclient``: requests serialized once, no protobuf work) for batch
and for long-lived bidirectional streams. A Python stream client spends about
as much CPU per message as the server (~140 µs), so on a 2-core machine that
driver is the bottleneck and the tables say so: the stream figure to trust is
h2load's. ``check_requests`` and ``interleaved`` build the requests, with 1
listed subject in ``1 / listed_share`` so that the hit log is written.

Segments alternate between the targets, ``Plan.rounds`` of them, each bounded
in calls and in time, and a run stops starting segments after
``Plan.max_minutes``. Every segment records: the rate from the answers (for a
target with metrics, the checks it counted itself, ``shixin_checks_total``,
never more than the driver saw; for one without, the driver's count, and the
table says so), the CPU of the server (its processes and their children), of
its helpers (a replica's redis-server), of the driver (h2load's from
``wait4``; each raw client's own ``getrusage`` over the window), of this
process, and of everything else on the machine (``foreign``), and the load
average before it. The tables (``loadtest.report``) turn the segments into
medians, ratios between servers and driver checks.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtest.common import (
    CHILDREN,
    cpu_by_pid,
    frame,
    h2load_latencies_us,
    log,
    machine_busy,
    run_h2load,
    step,
    unframe,
)
from loadtest.rawclient import METHODS, RawClients
from loadtest.report import percentiles
from loadtest.traffic import listed_subjects, unlisted_person
from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request

#: The seed of the list ``check_requests`` draws listed people from (by default; the
#: ratio run's list) and of the unlisted people it makes up.
SEED = 20261124
RAIL = {"train_number": "G1234", "seat": "SECOND_CLASS"}
STREAM_RING = 2048  # distinct request_ids: twice the server's window of 1,024
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Driver:
    """One kind of segment: which call, driven how, and the issue's target for it."""

    name: str
    label: str
    method: str  # a key of rawclient.METHODS
    body: str  # which pre-built body or message file
    checks_per_call: int  # 0: the calls are streams, each answer is a check
    h2load: tuple[int, int] | None = None  # (-c, -m); None: raw clients
    share: float | None = None  # subject/bare target on the rate
    latency: bool = False  # every call's latency from h2load --log-file
    paced: bool = False  # open loop at the run's pace (h2load --rps), not as fast as it can


def drivers(batch: int = 100, per_stream_call: int = 1000) -> list[Driver]:
    """Every kind of segment, in the order a run drives them (``paced`` after ``unary``,
    whose rate on the bare servicer sets the pace)."""
    return [
        Driver("latency", "unary, 1 in flight (h2load -c 1 -m 1)", "unary", "unary", 1, (1, 1),
               latency=True),
        Driver("unary", "unary, h2load -c 16 -m 8: calls/s", "unary", "unary", 1, (16, 8), 0.80),
        Driver("paced", "unary, open loop (h2load --rps, staggered processes)", "unary",
               "unary", 1, (1, 64), latency=True, paced=True),
        Driver("batch-h2load", f"batch of {batch}, h2load -c 4 -m 2: checks/s", "batch", "batch",
               batch, (4, 2), 0.50),
        Driver("batch-raw", f"batch of {batch}, raw clients: checks/s", "batch", "batch",
               batch, None, 0.50),
        Driver("stream-raw", "stream, raw clients: checks/s", "stream", "ring", 0, None, 0.50),
        Driver("stream-h2load", f"stream, {per_stream_call} per call, h2load -c 4 -m 2: checks/s",
               "stream", "stream", per_stream_call, (4, 2), 0.50),
    ]  # fmt: skip


def pick_drivers(
    names: str, default: Sequence[str], batch: int = 100, per_stream_call: int = 1000
) -> list[Driver]:
    """The drivers named in ``names`` (comma-separated; empty: ``default``), in run order."""
    every = drivers(batch, per_stream_call)
    wanted = [n.strip() for n in names.split(",") if n.strip()] or list(default)
    unknown = sorted(set(wanted) - {d.name for d in every})
    if unknown:
        raise ValueError(f"unknown drivers {', '.join(unknown)} (choose from "
                         f"{', '.join(d.name for d in every)})")  # fmt: skip
    return [d for d in every if d.name in wanted]


# --- requests ------------------------------------------------------------------------------


def check_requests(
    count: int, prefix: str, listed_share: float, entries: int, seed: int = SEED,
    as_of: _dt.date | None = None,
) -> list[bytes]:  # fmt: skip
    """``count`` serialized RAIL checks with distinct request_ids; every ``1/listed_share``
    th one is for a person on the list (from the list's own seed), the rest unlisted."""
    rng = random.Random(SEED ^ 0xBA7C)
    people, _ = listed_subjects(entries, seed, as_of or _dt.date.today(), want=50)
    every = round(1 / listed_share) if listed_share > 0 else 0
    out = []
    for i in range(count):
        rid = f"{prefix}{i:05d}"
        if every and i % every == every - 1:
            who = people[i // every % len(people)]
        else:
            who = unlisted_person(rng)
        request = build_request("RAIL", id_number=who.number, id_type=who.id_type,
                                name=who.name, purchase=RAIL, request_id=rid)  # fmt: skip
        out.append(request.SerializeToString())
    return out


def interleaved(
    listed: Sequence[pb.CheckRequest], unlisted: Sequence[pb.CheckRequest], count: int,
    prefix: str, listed_share: float,
) -> list[bytes]:  # fmt: skip
    """``count`` serialized checks taken from a traffic mix, renumbered ``prefix00000``...
    (distinct request_ids); every ``1/listed_share`` th from ``listed``, the rest from
    ``unlisted`` (all from ``listed`` when the share is 1), each pool cycled."""
    every = round(1 / listed_share) if listed_share > 0 else 0
    out = []
    for i in range(count):
        if every and i % every == every - 1:
            source = listed[i // every % len(listed)]
        else:
            source = unlisted[i % len(unlisted)]
        request = pb.CheckRequest()
        request.CopyFrom(source)
        request.request_id = f"{prefix}{i:05d}"
        out.append(request.SerializeToString())
    return out


def batch_message(checks: list[bytes]) -> bytes:
    """A serialized CheckBatchRequest of the serialized ``checks``, in order."""
    batch = pb.CheckBatchRequest()
    for check in checks:
        batch.checks.add().ParseFromString(check)
    return batch.SerializeToString()


def write_bodies(
    folder: Path, unary: bytes, ring: list[bytes], batch: list[bytes], per_stream_call: int
) -> dict[str, Path]:
    """The h2load bodies (framed, one call each) and the raw clients' message files.

    ``unary``: one serialized CheckRequest; ``ring``: at least ``STREAM_RING`` of them
    with distinct request_ids (the stream requests, cycled); ``batch``: the checks of
    the one batch every batch call sends."""
    files = {
        "unary": frame(unary),
        "batch": frame(batch_message(batch)),
        "ring": b"".join(frame(m) for m in ring),
        "stream": b"".join(frame(m) for m in ring[: min(per_stream_call, len(ring))]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(data)
    return paths


# --- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server under test as the drivers see it.

    ``pids``: its processes (their children are counted too); ``headers``: sent with
    every call (``authorization: Bearer KEY``); ``counted``: its own count of checks
    answered so far (``checks_counted`` on its metrics endpoint), None when it has none
    and the driver's count stands alone; ``helpers``: processes that serve it (a
    replica's redis-server), whose CPU is shown apart rather than as foreign."""

    name: str
    address: str
    pids: tuple[int, ...]
    headers: tuple[str, ...] = ()
    counted: Callable[[], float] | None = None
    helpers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        host = self.address.rpartition(":")[0]
        if host not in LOOPBACK:
            raise ValueError(f"{self.name}: {self.address} is not a loopback address")

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of the server's processes, by pid."""
        return cpu_by_pid(self.pids, children=True)

    def helper_cpu(self) -> dict[int, float]:
        return cpu_by_pid(self.helpers, children=False)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k.strip().lower(), v.strip())
                     for k, _, v in (h.partition(":") for h in self.headers))  # fmt: skip


def probe(target: Target, batch_body: Path, timeout: float = 30.0) -> dict[str, int]:
    """One batch call with the segments' batch body, answers parsed: the decisions, by
    name. Raises if the call fails (a wrong key, a dead server), before any segment."""
    (message,) = unframe(batch_body.read_bytes())
    with grpc.insecure_channel(target.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        call = channel.unary_unary(METHODS["batch"], request_serializer=None,
                                   response_deserializer=pb.CheckBatchResponse.FromString)  # fmt: skip
        reply = call(message, metadata=target.metadata(), timeout=timeout)
    return dict(sorted(Counter(pb.Decision.Name(r.decision) for r in reply.results).items()))


# --- one segment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a run drives its targets: segment length, rounds, the raw clients, the pace."""

    seconds: float
    rounds: int
    max_minutes: float
    raw_procs: int = 2
    raw_inflight: int = 4  # per raw client process: batch calls in flight, or streams
    stream_window: int = 16  # requests unanswered per raw stream
    pace: float = 0.0  # calls/s of the paced driver; 0: pace_share of pace_from's unary rate
    pace_share: float = 0.25
    pace_from: str = ""  # the target whose unary rate sets the pace (a bare servicer)


def add_driver_args(p: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """The options of a bench that drives servers with ``run_segments``."""
    p.add_argument("--drivers", default="", help="a comma-separated subset of: "
                   + ", ".join(d.name for d in drivers()) + " (default: "
                   + ", ".join(default) + ")")  # fmt: skip
    p.add_argument("--rate", type=float, default=0.0, help="the paced driver's calls/s "
                   "(default: 25%% of the bare servicer's unary calls/s in the run)")  # fmt: skip
    p.add_argument("--raw-procs", type=int, default=2, help="raw client processes per segment")
    p.add_argument("--max-minutes", type=float, default=None, help="start no RPC segment past "
                   "this many minutes of a set of segments (default 30; 8 with --quick)")  # fmt: skip


def plan_from(args: argparse.Namespace, pace_from: str) -> Plan:
    """The ``Plan`` of ``add_driver_args``'s options (and ``--quick``, ``--seconds``,
    ``--rounds``): 4 s segments, 2 rounds; 3 s and 1 with ``--quick``."""
    return Plan(
        seconds=args.seconds or (3.0 if args.quick else 4.0),
        rounds=args.rounds or (1 if args.quick else 2),
        max_minutes=args.max_minutes or (8.0 if args.quick else 30.0),
        raw_procs=args.raw_procs, pace=args.rate, pace_from=pace_from,
    )  # fmt: skip


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def counted_after(target: Target, before: float, expected: int) -> int:
    """The checks ``target`` counted since ``before``; waits up to 2 s for a lagging count."""
    assert target.counted is not None
    deadline = time.monotonic() + 2.0
    while True:
        got = int(target.counted() - before)
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def segment(
    target: Target, driver: Driver, bodies: dict[str, Path], calls: int, plan: Plan, run: Path,
    pace: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """Drive ``target`` once with ``driver`` (``calls`` for h2load, ``pace``/s when paced);
    every figure of the segment."""
    url = f"http://{target.address}{METHODS[driver.method]}"
    clients: RawClients | None = None
    if driver.h2load is None:
        argv = [
            "--target", target.address, "--kind", driver.method,
            "--messages", str(bodies[driver.body]), "--inflight", str(plan.raw_inflight),
            "--window", str(plan.stream_window), "--seconds", str(plan.seconds),
            *(arg for h in target.headers for arg in ("--header", h)),
        ]  # fmt: skip
        clients = RawClients(plan.raw_procs, argv, run / "rawclients.log", CHILDREN.check)
    latency_log = run / f"latency-{target.name}.tsv"
    latency_log.unlink(missing_ok=True)  # h2load appends to it
    try:
        if clients is not None:
            clients.wait_ready(60)
        load = os.getloadavg()
        before = target.counted() if target.counted else 0.0
        cpu0, help0 = target.cpu(), target.helper_cpu()
        busy0, self0, t0 = machine_busy(), self_cpu(), time.perf_counter()
        if clients is not None:
            clients.go()
            results = clients.results(plan.seconds + 90)
            driven = {
                "seconds": max(r["seconds"] for r in results),
                "calls": sum(r["calls"] for r in results),
                "answers": sum(r["answers"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
                "driver_cpu_s": sum(r["cpu_s"] for r in results),
                "driver_processes": len(results),
            }
        else:
            assert driver.h2load is not None
            connections, streams = driver.h2load
            if driver.paced:
                h2 = paced_h2load(url, bodies[driver.body], pace, calls, streams, target.headers,
                                  plan.seconds * 4 + 10, latency_log)  # fmt: skip
            else:
                h2 = run_h2load(url, bodies[driver.body], bound=["-n", str(calls)],
                                clients=connections, streams=streams, headers=target.headers,
                                max_seconds=plan.seconds * 4 + 10,
                                log_file=latency_log if driver.latency else None)  # fmt: skip
            driven = {
                "seconds": h2["seconds"], "calls": h2["succeeded"], "answers": h2["succeeded"],
                "errors": h2["failed"], "first_error": "", "driver_cpu_s": h2["driver_cpu_s"],
                "driver_processes": h2.get("processes", 1), "h2load_exit": h2["exit"],
            }  # fmt: skip
        cpu1, help1 = target.cpu(), target.helper_cpu()
        busy1, self1 = machine_busy(), self_cpu()
        window = time.perf_counter() - t0
    finally:
        if clients is not None:
            clients.stop()
    per_call = driver.checks_per_call or 1
    driver_checks = driven["answers"] * per_call if driver.checks_per_call else driven["answers"]
    server_counted = counted_after(target, before, driver_checks) if target.counted else None
    answers = min(driver_checks, server_counted) if server_counted is not None else driver_checks
    server_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
    helper_cpu = sum(help1[p] - help0[p] for p in help1 if p in help0)
    harness = self1 - self0
    foreign = max(0.0, busy1 - busy0 - server_cpu - helper_cpu - driven["driver_cpu_s"] - harness)
    out = {
        "target": target.name, "driver": driver.name, "load_average_before": load,
        **driven, "window_s": window, "checks_by_driver": driver_checks,
        "checks_counted_by_server": server_counted, "answers": answers,
        "rate": answers / max(driven["seconds"], 1e-9), "pace": pace if driver.paced else None,
        "server_cpu_s": server_cpu, "helper_cpu_s": helper_cpu, "harness_cpu_s": harness,
        "foreign_cpu_s": foreign,
        "server_cores": server_cpu / window, "helper_cores": helper_cpu / window,
        "driver_cores": driven["driver_cpu_s"] / window,
        "harness_cores": harness / window, "foreign_cores": foreign / window,
        "server_us_per_check": server_cpu / max(answers, 1) * 1e6,
        "driver_us_per_check": driven["driver_cpu_s"] / max(answers, 1) * 1e6,
    }  # fmt: skip
    if driver.latency:
        out["latencies_us"] = h2load_latencies_us(latency_log)
        out["p50_us"], out["p99_us"] = percentiles(out["latencies_us"])
        out["latency_samples"] = len(out["latencies_us"])
        latency_log.unlink(missing_ok=True)
    return out


#: h2load --rps releases the calls due on a timer that ticks every max(10 ms, 1/rate):
#: at 400/s, 4 calls at once. Up to this many h2load processes share a pace, their
#: ticks staggered, so that the calls arrive evenly (about 1 per tick of each).
PACED_PROCESSES = 8


def paced_h2load(
    url: str, body: Path, pace: float, calls: int, streams: int, headers: tuple[str, ...],
    max_seconds: float, log_file: Path,
) -> dict[str, Any]:  # fmt: skip
    """``calls`` unary calls open loop at ``pace``/s: ``ceil(pace / 100)`` h2load processes
    (at most ``PACED_PROCESSES``), one connection each, started a tick's share apart; every
    call's latency appended to ``log_file``. Their figures summed (``seconds``: the longest)."""
    procs = min(PACED_PROCESSES, max(1, math.ceil(pace / 100)))
    each = pace / procs
    stagger = max(0.01, 1 / each) / procs
    results: list[dict[str, Any] | BaseException | None] = [None] * procs
    logs = [log_file.with_suffix(f".{i}.tsv") for i in range(procs)]

    def one(i: int) -> None:
        logs[i].unlink(missing_ok=True)
        try:
            results[i] = run_h2load(url, body, bound=["-n", str(max(1, calls // procs))],
                                    clients=1, streams=streams, headers=headers,
                                    max_seconds=max_seconds, log_file=logs[i],
                                    extra=("--rps", f"{each:.3f}"))  # fmt: skip
        except BaseException as exc:  # handed to the caller below
            results[i] = exc

    threads = []
    for i in range(procs):
        threads.append(threading.Thread(target=one, args=(i,), daemon=True))
        threads[-1].start()
        time.sleep(stagger)
    for thread in threads:
        thread.join(max_seconds + 30)  # each h2load is killed 10 s past max_seconds
    with log_file.open("ab") as merged:
        for path in logs:
            if path.exists():
                merged.write(path.read_bytes())
                path.unlink()
    done = [r for r in results if isinstance(r, dict)]
    failed = [r for r in results if not isinstance(r, dict)]
    if failed:
        raise RuntimeError(f"paced h2load: {failed[0]!r}")
    return {
        "seconds": max(r["seconds"] for r in done),
        "succeeded": sum(r["succeeded"] for r in done),
        "failed": sum(r["failed"] for r in done),
        "exit": max(abs(r["exit"]) for r in done),
        "driver_cpu_s": sum(r["driver_cpu_s"] for r in done),
        "processes": procs,
    }


def calibrate(target: Target, driver: Driver, bodies: dict[str, Path], seconds: float) -> int:
    """Warm ``target`` up with ``driver`` (at least half a second of calls, at most 8 tries);
    the calls that make a segment of ``seconds`` at the rate seen, so that each segment is
    bounded in calls (and the server's count can be held to the driver's exactly)."""
    assert driver.h2load is not None
    url = f"http://{target.address}{METHODS[driver.method]}"
    slots = driver.h2load[0] * driver.h2load[1]
    n = slots
    for _ in range(8):
        h2 = run_h2load(url, bodies[driver.body], bound=["-n", str(n)], clients=driver.h2load[0],
                        streams=driver.h2load[1], headers=target.headers, max_seconds=30)  # fmt: skip
        if h2["succeeded"] < n:
            raise RuntimeError(f"{target.name}: {driver.name} warm-up answered {h2}")
        if h2["seconds"] >= 0.5:
            break
        n *= min(10, max(2, math.ceil(0.6 / max(h2["seconds"], 1e-3))))
    return max(slots * 2, round(float(h2["calls_per_s"]) * seconds))


def _pace(plan: Plan, segments: list[dict[str, Any]]) -> float:
    """The paced driver's calls/s: ``plan.pace``, else ``pace_share`` of the median unary
    rate of ``pace_from`` (of any target when it has none) in this run so far."""
    if plan.pace:
        return plan.pace
    unary = [s for s in segments if s["driver"] == "unary"]
    mine = [s["rate"] for s in unary if s["target"] == plan.pace_from] or [s["rate"] for s in unary]
    if not mine:
        raise RuntimeError("the paced driver needs --rate, or the unary driver before it")
    return max(50.0, round(float(plan.pace_share * sorted(mine)[len(mine) // 2]), -1))


def run_segments(
    targets: Sequence[Target], chosen: Sequence[Driver], bodies: dict[str, Path], plan: Plan,
    run: Path, started: float | None = None, check: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every driver on every target, ``plan.rounds`` times, the targets' order rotated each
    round; no segment starts ``plan.max_minutes`` after ``started``.

    Returns ``segments`` (every figure of each), ``decisions`` (each target's answers to
    one batch call, parsed: a check that they answer, and answer alike), ``pace`` and
    ``cut_short``. Starts and stops only the raw clients and h2load; the caller owns the
    servers. Each step is named (``common.step``) and after each segment, before its
    figures are kept, ``check`` (default ``CHILDREN.check``: every server the run
    started still running) raises if the segment cannot be trusted."""
    started = time.monotonic() if started is None else started
    check = check or CHILDREN.check
    out: dict[str, Any] = {"segments": [], "cut_short": False, "pace": None}
    step("the first batch call to each server")
    out["decisions"] = {t.name: probe(t, bodies["batch"]) for t in targets}
    check()
    calls: dict[tuple[str, str], int] = {}
    pace = 0.0
    for r in range(plan.rounds):
        order = [*targets[r % len(targets) :], *targets[: r % len(targets)]]
        for driver in chosen:
            if driver.paced and not pace:
                pace = out["pace"] = _pace(plan, out["segments"])
            for target in order:
                if time.monotonic() - started > plan.max_minutes * 60:
                    out["cut_short"] = True
                    return out
                key = (target.name, driver.name)
                now = f"round {r + 1}: {driver.name} on {target.name}"
                if driver.paced:
                    calls[key] = max(1, round(pace * plan.seconds))
                elif driver.h2load and key not in calls:
                    step(f"{now} (warm-up)")
                    calls[key] = calibrate(target, driver, bodies, plan.seconds)
                step(now)
                fig = segment(target, driver, bodies, calls.get(key, 0), plan, run, pace)
                check()
                fig["round"] = r + 1
                out["segments"].append(fig)
                log(progress(fig))
    return out


def progress(fig: dict[str, Any]) -> str:
    """One segment's figures in a line, for the log while a run goes on."""
    counted = fig["checks_counted_by_server"]
    text = (f"round {fig['round']} {fig['driver']} {fig['target']}: {fig['rate']:,.0f}/s, "
            f"server {fig['server_cores']:.2f} cores {fig['server_us_per_check']:.1f} µs/check, "
            f"driver {fig['driver_cores']:.2f}, foreign {fig['foreign_cores']:.2f}, load "
            f"{fig['load_average_before'][0]:.2f}, errors {fig['errors']}"
            + (f", server counted {counted:,}/{fig['checks_by_driver']:,}" if counted is not None
               else ", counted by the driver only"))  # fmt: skip
    if fig["helper_cores"] >= 0.01:
        text += f", helpers {fig['helper_cores']:.2f} cores"
    if "p99_us" in fig:
        text += f", p50 {fig['p50_us']:.0f} µs p99 {fig['p99_us']:.0f} µs"
    return text


def without_samples(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segments without their per-call latencies (for a JSON file of figures)."""
    return [{k: v for k, v in s.items() if k != "latencies_us"} for s in segments]
