"""Issue 12's ratio figures in one run: our server against both bare servicers, same drivers.

    python -m loadtest.ratio_bench [--quick] [--entries 100000] [--out PATH]

A figure, not a test. Three targets on 127.0.0.1, each one process:

- ``ours``: ``shixin-check serve --workers 1`` with ``--hit-log``,
  ``--audit-log`` (fsync ``never``, the default), ``--keys-file`` (one key
  made by ``shixin-check keys add``, every call carries ``authorization:
  Bearer KEY``) and ``--metrics-listen``, on a list of ``--entries``;
- ``bare-aio``: ``loadtest/bare_server.py`` (grpc.aio, a fixed answer);
- ``bare-sync``: the same answers from ``bare_server.py --sync`` (grpc.server
  with a thread pool).

Drivers that are not the bottleneck (``drivers()``): h2load (C) posting
pre-framed gRPC bodies for unary, batch of 100 and a stream of 1,000 requests
per call, and one call in flight (``-c 1 -m 1``, every call's latency from
``--log-file``); several raw-bytes Python client processes
(``loadtest.rawclient``: requests serialized once, no protobuf work) for batch
and for long-lived bidirectional streams. A Python stream client spends about
as much CPU per message as the server (~140 µs), so on a 2-core machine that
driver is the bottleneck and the table says so: the stream figure to trust is
h2load's. Batches and the stream ring carry 1 listed subject in 100
(``--listed-share``), so the hit log is written; the unary body is the 99%
case, an unlisted subject.

Segments alternate between the targets, ``--rounds`` of them, each bounded in
calls and in time, and the whole run stops starting segments after
``--max-minutes``. Every segment records: the rate from the answers (for
``ours`` the checks it counted itself, ``shixin_checks_total``, never more
than the driver saw), the CPU of the server (its process and children), of
the driver (h2load's from ``wait4``; each raw client's own ``getrusage`` over
the window), of this process, and of everything else on the machine
(``foreign``), and the load average before it. The table gives medians, the
ratios ours/bare-aio and ours/bare-sync of the rates and of the server CPU per
check (what foreign load disturbs least), the verdicts against the issue's
targets, and whether each driver stayed well below its server's CPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import (
    cli_argv,
    ensure_list,
    frame,
    h2load_latencies_us,
    log,
    machine,
    revision,
    run_h2load,
    server_env,
)
from loadtest.rawclient import METHODS, RawClients
from loadtest.traffic import listed_subjects, unlisted_person
from loadtest.workers_bench import SECRET, Server, grpc_body, machine_busy
from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request

SEED = 20261124
TARGETS = ("ours", "bare-aio", "bare-sync")
RAIL = {"train_number": "G1234", "seat": "SECOND_CLASS"}
STREAM_RING = 2048  # distinct request_ids: twice the server's window of 1,024


@dataclass(frozen=True)
class Driver:
    """One kind of segment: which call, driven how, and the issue's target for it."""

    name: str
    label: str
    method: str  # a key of rawclient.METHODS
    body: str  # which pre-built body or message file
    checks_per_call: int  # 0: the calls are streams, each answer is a check
    h2load: tuple[int, int] | None = None  # (-c, -m); None: raw clients
    share: float | None = None  # ours/bare target on the rate
    latency: bool = False


def drivers(batch: int, per_stream_call: int) -> list[Driver]:
    return [
        Driver("unary", "unary, h2load -c 16 -m 8: calls/s", "unary", "unary", 1, (16, 8), 0.80),
        Driver("batch-h2load", f"batch of {batch}, h2load -c 4 -m 2: checks/s", "batch", "batch",
               batch, (4, 2), 0.50),
        Driver("batch-raw", f"batch of {batch}, raw clients: checks/s", "batch", "batch",
               batch, None, 0.50),
        Driver("stream-raw", "stream, raw clients: checks/s", "stream", "ring", 0, None, 0.50),
        Driver("stream-h2load", f"stream, {per_stream_call} per call, h2load -c 4 -m 2: checks/s",
               "stream", "stream", per_stream_call, (4, 2), 0.50),
        Driver("latency", "unary, 1 in flight (h2load -c 1 -m 1)", "unary", "unary", 1, (1, 1),
               latency=True),
    ]  # fmt: skip


# --- requests ------------------------------------------------------------------------------


def check_requests(count: int, prefix: str, listed_share: float, entries: int) -> list[bytes]:
    """``count`` serialized RAIL checks with distinct request_ids; every ``1/listed_share``
    th one is for a person on the list (from the list's own seed), the rest unlisted."""
    rng = random.Random(SEED ^ 0xBA7C)
    people, _ = listed_subjects(entries, SEED, _dt.date.today(), want=50)
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


def batch_message(checks: list[bytes]) -> bytes:
    """A serialized CheckBatchRequest of the serialized ``checks``, in order."""
    batch = pb.CheckBatchRequest()
    for check in checks:
        batch.checks.add().ParseFromString(check)
    return batch.SerializeToString()


def write_bodies(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The h2load bodies (framed, one call each) and the raw clients' message files."""
    ring = check_requests(STREAM_RING, "s", args.listed_share, args.entries)
    batch = batch_message(check_requests(args.batch, "b", args.listed_share, args.entries))
    files = {
        "unary": grpc_body(),
        "batch": frame(batch),
        "ring": b"".join(frame(m) for m in ring),
        "stream": b"".join(frame(m) for m in ring[: args.per_stream_call]),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.bin"
        paths[name].write_bytes(data)
    return paths


# --- targets -------------------------------------------------------------------------------


class Bare:
    """``loadtest.bare_server`` (``--sync`` for the thread-pool one) on a free port."""

    def __init__(self, name: str, extra: list[str], folder: Path) -> None:
        self.name = name
        self.output = folder / f"{name}.log"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loadtest.bare_server", "--listen", "127.0.0.1:0", *extra],
                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        self.port = 0

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"serving on \S+:(\d+)", self.output.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready (see {self.output})")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class Target:
    """A server under test: its port, processes, key and (ours only) its own count."""

    name: str
    server: Any  # workers_bench.Server or Bare
    headers: tuple[str, ...] = ()
    counted: Callable[[], float] | None = None

    def cpu(self) -> dict[int, float]:
        root = psutil.Process(self.server.proc.pid)
        out = {}
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[p.pid] = t.user + t.system
        return out


def start_targets(run: Path, list_path: Path, args: argparse.Namespace) -> dict[str, Target]:
    keys = run / "keys.json"
    made = subprocess.run(
        cli_argv(["keys", "add", "--keys-file", str(keys), "--principal", "ratio-bench",
                  "--roles", "check,status"]),
        capture_output=True, text=True, env=server_env(), timeout=60, check=True,
    )  # fmt: skip
    key = made.stdout.strip().splitlines()[-1]
    (run / "key").write_text(SECRET)
    ours_args = [
        "--list", str(list_path), "--workers", "1", "--key-secret-file", str(run / "key"),
        "--index-dir", str(run / "index"), "--metrics-listen", "127.0.0.1:0",
        "--hit-log", str(run / "hits.jsonl"), "--audit-log", str(run / "audit.jsonl"),
        "--keys-file", str(keys),
    ]  # fmt: skip
    targets: dict[str, Target] = {}
    try:
        ours = Server("ours", ours_args, 1, run)
        targets["ours"] = Target("ours", ours, (f"authorization: Bearer {key}",), ours.answers)
        targets["bare-aio"] = Target("bare-aio", Bare("bare-aio", [], run))
        targets["bare-sync"] = Target(
            "bare-sync", Bare("bare-sync", ["--sync", "--threads", str(args.sync_threads)], run)
        )
        for target in targets.values():
            target.server.wait_ready(300)
            log(f"{target.name}: pid {target.server.proc.pid}, port {target.server.port}")
    except BaseException:
        stop_targets(targets)
        raise
    return targets


def stop_targets(targets: dict[str, Target]) -> dict[str, int | None]:
    return {name: t.server.stop() for name, t in targets.items()}


# --- one segment ---------------------------------------------------------------------------


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
    target: Target, driver: Driver, bodies: dict[str, Path], calls: int, args: argparse.Namespace,
    run: Path,
) -> dict[str, Any]:  # fmt: skip
    """Drive ``target`` once with ``driver``; every figure of the segment."""
    url = f"http://127.0.0.1:{target.server.port}{METHODS[driver.method]}"
    clients: RawClients | None = None
    if driver.h2load is None:
        argv = [
            "--target", f"127.0.0.1:{target.server.port}", "--kind", driver.method,
            "--messages", str(bodies[driver.body]), "--inflight", str(args.raw_inflight),
            "--window", str(args.stream_window), "--seconds", str(args.seconds),
            *(arg for h in target.headers for arg in ("--header", h)),
        ]  # fmt: skip
        clients = RawClients(args.raw_procs, argv, run / "rawclients.log")
    latency_log = run / f"latency-{target.name}.tsv"
    try:
        if clients is not None:
            clients.wait_ready(60)
        load = os.getloadavg()
        before = target.counted() if target.counted else 0.0
        cpu0, busy0, self0, t0 = target.cpu(), machine_busy(), self_cpu(), time.perf_counter()
        if clients is not None:
            clients.go()
            results = clients.results(args.seconds + 90)
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
            h2 = run_h2load(url, bodies[driver.body], bound=["-n", str(calls)],
                            clients=connections, streams=streams, headers=target.headers,
                            max_seconds=args.seconds * 4 + 10,
                            log_file=latency_log if driver.latency else None)  # fmt: skip
            driven = {
                "seconds": h2["seconds"], "calls": h2["succeeded"], "answers": h2["succeeded"],
                "errors": h2["failed"], "first_error": "", "driver_cpu_s": h2["driver_cpu_s"],
                "driver_processes": 1, "h2load_exit": h2["exit"],
            }  # fmt: skip
        cpu1, busy1, self1 = target.cpu(), machine_busy(), self_cpu()
        window = time.perf_counter() - t0
    finally:
        if clients is not None:
            clients.stop()
    per_call = driver.checks_per_call or 1
    driver_checks = driven["answers"] * per_call if driver.checks_per_call else driven["answers"]
    server_counted = counted_after(target, before, driver_checks) if target.counted else None
    answers = min(driver_checks, server_counted) if server_counted is not None else driver_checks
    server_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
    harness = self1 - self0
    foreign = max(0.0, busy1 - busy0 - server_cpu - driven["driver_cpu_s"] - harness)
    out = {
        "target": target.name, "driver": driver.name, "load_average_before": load,
        **driven, "window_s": window, "checks_by_driver": driver_checks,
        "checks_counted_by_server": server_counted, "answers": answers,
        "rate": answers / max(driven["seconds"], 1e-9),
        "server_cpu_s": server_cpu, "harness_cpu_s": harness, "foreign_cpu_s": foreign,
        "server_cores": server_cpu / window, "driver_cores": driven["driver_cpu_s"] / window,
        "harness_cores": harness / window, "foreign_cores": foreign / window,
        "server_us_per_check": server_cpu / max(answers, 1) * 1e6,
        "driver_us_per_check": driven["driver_cpu_s"] / max(answers, 1) * 1e6,
    }  # fmt: skip
    if driver.latency:
        out["latencies_us"] = h2load_latencies_us(latency_log)
        out["p50_us"], out["p99_us"] = _percentiles(out["latencies_us"])
        out["latency_samples"] = len(out["latencies_us"])
        latency_log.unlink(missing_ok=True)
    return out


def calibrate(target: Target, driver: Driver, bodies: dict[str, Path], seconds: float) -> int:
    """Warm ``target`` up with ``driver`` (at least half a second of calls, at most 8 tries);
    the calls that make a segment of ``seconds`` at the rate seen, so that each segment is
    bounded in calls (and the server's count can be held to the driver's exactly)."""
    assert driver.h2load is not None
    url = f"http://127.0.0.1:{target.server.port}{METHODS[driver.method]}"
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


# --- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="1 round of 2.5 s segments (~1.5 min)")
    p.add_argument("--entries", type=int, default=100_000, help="list size")
    p.add_argument(
        "--seconds", type=float, default=None, help="per segment (default 5; 2.5 with --quick)"
    )
    p.add_argument("--rounds", type=int, default=None, help="segments per target and driver "
                   "(default 3; 1 with --quick)")  # fmt: skip
    p.add_argument(
        "--drivers",
        default="",
        help="a comma-separated subset of: unary, batch-h2load, "
        "batch-raw, stream-raw, stream-h2load, latency (default all)",
    )
    p.add_argument("--batch", type=int, default=100, help="checks per batch call")
    p.add_argument("--per-stream-call", type=int, default=1000,
                   help="requests per h2load stream call (at most 2,048)")  # fmt: skip
    p.add_argument("--listed-share", type=float, default=0.01,
                   help="share of batch and stream checks for listed people")  # fmt: skip
    p.add_argument("--raw-procs", type=int, default=2, help="raw client processes per segment")
    p.add_argument("--raw-inflight", type=int, default=4,
                   help="per raw client process: batch calls in flight, or streams")  # fmt: skip
    p.add_argument("--stream-window", type=int, default=16,
                   help="requests unanswered per raw stream")  # fmt: skip
    p.add_argument("--sync-threads", type=int, default=32, help="bare-sync's thread pool")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no segment past this (default 20; 5 with --quick)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shixin-bench")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.5 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.max_minutes = args.max_minutes or (5.0 if args.quick else 20.0)
    args.per_stream_call = min(args.per_stream_call, STREAM_RING)
    if shutil.which("h2load") is None:
        print("ratio_bench: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    chosen = [d for d in drivers(args.batch, args.per_stream_call)
              if not args.drivers or d.name in args.drivers.split(",")]  # fmt: skip
    started = time.monotonic()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    list_path, _ = ensure_list(args.data_dir, args.entries, SEED, _dt.date.today())
    run = Path(tempfile.mkdtemp(prefix="ratio-bench-", dir=args.data_dir))
    bodies = write_bodies(run, args)
    results: dict[str, Any] = {
        "revision": revision(), "machine": machine(), "argv": sys.argv, "entries": args.entries,
        "options": {k: str(v) for k, v in vars(args).items()},
        "drivers": {d.name: d.label for d in chosen}, "segments": [], "cut_short": False,
    }  # fmt: skip
    targets: dict[str, Target] = {}
    try:
        targets = start_targets(run, list_path, args)
        calls: dict[tuple[str, str], int] = {}
        for r in range(args.rounds):
            order = TARGETS[r % 3 :] + TARGETS[: r % 3]
            for driver in chosen:
                for name in order:
                    if time.monotonic() - started > args.max_minutes * 60:
                        results["cut_short"] = True
                        break
                    key = (name, driver.name)
                    if driver.h2load and key not in calls:
                        calls[key] = calibrate(targets[name], driver, bodies, args.seconds)
                    fig = segment(targets[name], driver, bodies, calls.get(key, 0), args, run)
                    fig["round"] = r + 1
                    results["segments"].append(fig)
                    log(_progress(fig))
        results["logs_written"] = {
            f.name: f.stat().st_size for f in sorted(run.glob("*.jsonl*")) if f.is_file()
        }
    finally:
        results["exit"] = stop_targets(targets)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_s"] = time.monotonic() - started
    results["summary"] = summarise(results["segments"], chosen)
    if args.out:
        slim = {**results, "segments": [
            {k: v for k, v in s.items() if k != "latencies_us"} for s in results["segments"]
        ]}  # fmt: skip
        args.out.write_text(json.dumps(slim, indent=2, ensure_ascii=False, default=str))
    print(render(results, chosen))
    shutil.rmtree(run, ignore_errors=True)
    return 0


def _progress(fig: dict[str, Any]) -> str:
    counted = fig["checks_counted_by_server"]
    text = (f"round {fig['round']} {fig['driver']} {fig['target']}: {fig['rate']:,.0f}/s, "
            f"server {fig['server_cores']:.2f} cores {fig['server_us_per_check']:.1f} µs/check, "
            f"driver {fig['driver_cores']:.2f}, foreign {fig['foreign_cores']:.2f}, load "
            f"{fig['load_average_before'][0]:.2f}, errors {fig['errors']}"
            + (f", server counted {counted:,}/{fig['checks_by_driver']:,}" if counted is not None
               else ""))  # fmt: skip
    if "p99_us" in fig:
        text += f", p50 {fig['p50_us']:.0f} µs p99 {fig['p99_us']:.0f} µs"
    return text


# --- summary and report --------------------------------------------------------------------

MEDIANS = ("rate", "server_cores", "driver_cores", "foreign_cores", "harness_cores",
           "server_us_per_check", "driver_us_per_check")  # fmt: skip


def _percentiles(values: list[int]) -> tuple[float, float]:
    if len(values) < 2:
        return (float(values[0]) if values else float("nan"),) * 2
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def summarise(segments: list[dict[str, Any]], chosen: list[Driver]) -> dict[str, Any]:
    """Medians per driver and target; ratios of ours to each bare; verdicts."""
    out: dict[str, Any] = {}
    for driver in chosen:
        per: dict[str, Any] = {}
        for name in TARGETS:
            rows = [s for s in segments if s["driver"] == driver.name and s["target"] == name]
            if not rows:
                continue
            m = {k: statistics.median(r[k] for r in rows) for k in MEDIANS}
            m["segments"] = len(rows)
            m["errors"] = sum(r["errors"] for r in rows)
            m["short_counts"] = sum(
                1 for r in rows
                if r["checks_counted_by_server"] is not None
                and r["checks_counted_by_server"] < r["checks_by_driver"]
            )  # fmt: skip
            m["load_average_before"] = [r["load_average_before"][0] for r in rows]
            if driver.latency:
                pooled = [v for r in rows for v in r.get("latencies_us", [])]
                m["p50_us"], m["p99_us"] = _percentiles(pooled)
                m["latency_samples"] = len(pooled)
            m["driver_check"] = _driver_check(m, os.cpu_count() or 1)
            per[name] = m
        entry: dict[str, Any] = {"label": driver.label, "targets": per}
        ours = per.get("ours")
        bound = any(m["driver_check"].startswith("DRIVER-BOUND") for m in per.values())
        entry["driver_bound"] = bound
        for bare in ("bare-aio", "bare-sync"):
            if ours is None or bare not in per:
                continue
            cpu_ratio = None
            if driver.latency:
                ratio = ours["p99_us"] / per[bare]["p99_us"]
                ok = ours["p99_us"] < 1000 or ratio <= 1.25
            else:
                ratio = ours["rate"] / per[bare]["rate"]
                ok = ratio >= (driver.share or 0)
                # the rate each would reach on a whole core of its own: what foreign load
                # and an unequal share of the machine disturb least
                cpu_ratio = per[bare]["server_us_per_check"] / ours["server_us_per_check"]
            entry[f"ours/{bare}"] = {
                "ratio": ratio, "meets_target": ok, "per_round": _paired(segments, driver, bare),
                "cpu_ratio": cpu_ratio,
                "cpu_meets_target": None if cpu_ratio is None else cpu_ratio >= (driver.share or 0),
            }  # fmt: skip
        out[driver.name] = entry
    return out


def _paired(segments: list[dict[str, Any]], driver: Driver, bare: str) -> list[float]:
    """ours/bare in each round, the two segments nearest in time: the rate, or for the
    latency driver the p99."""
    key = "p99_us" if driver.latency else "rate"
    out = []
    for r in sorted({s["round"] for s in segments}):
        got = {s["target"]: s for s in segments if s["driver"] == driver.name and s["round"] == r}
        if "ours" in got and bare in got and got[bare][key]:
            out.append(round(got["ours"][key] / got[bare][key], 3))
    return out


def _driver_check(m: dict[str, Any], cores: int) -> str:
    """Is the server, not the driver, what limits the rate?"""
    share = m["driver_cores"] / max(m["server_cores"], 1e-9)
    used = m["server_cores"] + m["driver_cores"] + m["foreign_cores"] + m["harness_cores"]
    if share > 0.5:
        return f"DRIVER-BOUND: the driver used {share:.0%} of the server's CPU"
    if m["server_cores"] < 0.85 and used > 0.9 * cores:
        return (f"machine full ({m['foreign_cores']:.2f} foreign cores): the server got "
                f"{m['server_cores']:.2f}; driver {share:.0%} of the server's CPU")  # fmt: skip
    if m["server_cores"] < 0.85:
        return f"server at {m['server_cores']:.2f} cores: not saturated (latency bound?)"
    return f"ok: driver {share:.0%} of the server's CPU"


def _cells(e: dict[str, Any] | None, flag: str) -> str:
    """rate ratio | cpu ratio | verdict (on the rate; the cpu one in brackets)."""
    if not e:
        return "- | - | -"
    verdict = ("MEETS" if e["meets_target"] else "MISSES") + flag
    if e["cpu_ratio"] is None:
        return f"{e['ratio']:.2f} | - | {verdict}"
    cpu = "meets" if e["cpu_meets_target"] else "misses"
    return f"{e['ratio']:.2f} | {e['cpu_ratio']:.2f} | {verdict} (cpu: {cpu})"


def render(results: dict[str, Any], chosen: list[Driver]) -> str:
    mach, s = results["machine"], results["summary"]
    lines = [
        f"revision {results['revision']}; {mach['nproc']} CPUs ({mach['cpu_model']}); "
        f"Python {mach['python']}, grpcio {mach['grpcio']}, protobuf {mach['protobuf']}; "
        f"{results['entries']:,} entries; load average at start "
        f"{', '.join(f'{v:.2f}' for v in mach['load_average_at_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in mach['load_average_at_end'])}; "
        f"{results['total_s']:.0f} s" + (" (CUT SHORT by --max-minutes)" if results["cut_short"]
                                        else ""),
        "",
        "| driver | target | rate /s | server cores | driver cores | foreign cores "
        "| server µs/check | driver µs/check | p50 / p99 µs | driver check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]  # fmt: skip
    for driver in chosen:
        for name, m in s.get(driver.name, {}).get("targets", {}).items():
            lat = f"{m['p50_us']:.0f} / {m['p99_us']:.0f}" if driver.latency else "-"
            note = m["driver_check"] if not driver.latency else "-"
            if m["errors"] or m["short_counts"]:
                note += f"; {m['errors']} errors, {m['short_counts']} short server counts"
            lines.append(
                f"| {driver.name} | {name} | {m['rate']:,.0f} | {m['server_cores']:.2f} | "
                f"{m['driver_cores']:.2f} | {m['foreign_cores']:.2f} | "
                f"{m['server_us_per_check']:.1f} | {m['driver_us_per_check']:.1f} | {lat} | "
                f"{note} |"
            )
    lines += [
        "",
        "Ratios: `rate` is ours/bare of the rates (the issue's figure; for the latency row, of "
        "the p99s); `cpu` is bare/ours of the server CPU µs per check, the rate ratio each "
        "would reach on a core of its own.",
        "",
        "| figure | target | vs bare-aio: rate | cpu | verdict | vs bare-sync: rate | cpu "
        "| verdict | rate per round (aio; sync) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | --- | --- |",
    ]  # fmt: skip
    for driver in chosen:
        entry = s.get(driver.name, {})
        aio, sync = entry.get("ours/bare-aio"), entry.get("ours/bare-sync")
        if not aio and not sync:
            continue
        target = ("p99 < 1000 µs or ≤ 1.25× bare p99" if driver.latency
                  else f"≥ {driver.share:.2f}")  # fmt: skip
        flag = " (driver-bound)" if entry.get("driver_bound") else ""
        rounds = "; ".join(", ".join(f"{v:.2f}" for v in e["per_round"]) if e else "-"
                           for e in (aio, sync))  # fmt: skip
        lines.append(f"| {driver.label} | {target} | {_cells(aio, flag)} | {_cells(sync, flag)} "
                     f"| {rounds} |")  # fmt: skip
    loads = [seg["load_average_before"][0] for seg in results["segments"]]
    if loads:
        lines += ["", f"load average (1 min) before the segments: {min(loads):.2f} to "
                      f"{max(loads):.2f}"]  # fmt: skip
    foreign = statistics.median(seg["foreign_cores"] for seg in results["segments"] or [{
        "foreign_cores": 0.0}])  # fmt: skip
    if foreign > 0.3:
        lines.append(f"other processes used {foreign:.2f} cores (median over segments): the "
                     "absolute rates are low, and only the ratios of alternating segments and "
                     "the CPU µs per check are meaningful")  # fmt: skip
    logs = results.get("logs_written", {})
    lines += ["", "ours wrote: " + (", ".join(f"{k} {v:,} bytes" for k, v in logs.items())
                                    or "no log (check the run)")]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
