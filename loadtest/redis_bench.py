"""The list in Redis: load, memory, a replica's latency and checks/s, delta propagation.

    python -m loadtest.redis_bench [--entries 1000000] [--quick] [--out redis.json]
    python -m loadtest.bench --redis          # the same, after the memory-mode figures

What runs, in order (each step bounded in calls and in time; every child
process, ``redis-server`` included, is killed in a ``finally``, and the run's
folder under ``--data-dir`` removed, unless ``--keep-logs``; a server or
redis-server that dies, or a replica that stops reaching Redis, ends the run
with one line and exit status 1):

1. our own ``redis-server`` on a free 127.0.0.1 port, in a temporary
   directory, with persistence off (never the shared one on 6379);
2. ``shixin-check load LIST --redis URL`` (``SHIXIN_KEY_SECRET`` set to a
   fresh 32-character secret): its wall time, and Redis ``used_memory``
   after minus before, per entry and per subject key;
3. one replica, ``shixin-check serve --redis URL --listen 127.0.0.1:0``: the
   announce to health SERVING, and its resident memory once SERVING;
4. a memory-mode server (``serve --list LIST``) and the bare servicer beside
   it, and the drivers of ``loadtest.segments`` (h2load and raw-bytes
   client processes, ``--drivers``) measuring the three alike in alternating
   segments, twice: with the memory-mode run's traffic (99% unlisted, 1%
   listed: the replica answers Bloom negatives locally) and with 100% listed
   subjects (every check pays a Redis round trip; a batch, one pipelined
   round trip for its positives). One call in flight (latency), unary
   calls/s, batch of 100 checks/s; for each, the CPU of the server, of the
   driver, of ``redis-server`` (helper cores) and of everything else, the
   server CPU per check, and a ``DRIVER-BOUND`` flag where the driver's CPU
   is not well below the server's. The replica and the memory-mode server
   count the checks they answer on their metrics endpoints; the bare
   servicer has none, so its count is the driver's;
5. delta propagation: ``--deltas`` times, a delta file with one ``LIST`` op
   for a new person is published in this process
   (``loader.index_redis.publish_delta``) and the replica is asked with
   ``CheckConsumption`` (AIRLINE, so a listed person is DENY) until it
   answers DENY; then a ``DELIST`` of the same entry, until it answers
   ALLOW again. Each delay is from the start of ``publish_delta`` (what an
   operator's ``load`` sees) and from its return (the MULTI/EXEC commit) to
   the first answer that shows the change.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import functools
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import redis

from loadtest.common import (
    BATCH_SIZE,
    CHILDREN,
    RunAborted,
    ServerProcess,
    add_common_args,
    bare_argv,
    checks_counted,
    cli_argv,
    ensure_list,
    exit_status,
    finish,
    last_line,
    list_status,
    log,
    machine,
    metric_total,
    ours_argv,
    own_folder,
    revision,
    run_folder,
    run_main,
    serve_argv,
    server_env,
    step,
    stop_process,
)
from loadtest.report import (
    MIB,
    Pair,
    _fmt,
    _verdict,
    ratio_rows,
    render,
    segment_notes,
    segment_rows,
    summarise,
)
from loadtest.segments import (
    STREAM_RING,
    Driver,
    Target,
    add_driver_args,
    interleaved,
    pick_drivers,
    plan_from,
    run_segments,
    without_samples,
    write_bodies,
)
from loadtest.traffic import Traffic, build_traffic
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import resident_id_check_char
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.index_redis import connect, redis_status
from shixin_check.loader.publish_redis import publish_delta
from shixin_check.loader.synthetic import iter_entries

DELTA_DEADLINE_S = 5.0  # give up on one delta after this long (the target is 1 s)
#: ``shixin-check load LIST --redis URL`` of 10 million entries: under 2 minutes (issue 12)
LOAD_TARGET_10M_S = 120.0


# --- redis-server --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Our own ``redis-server`` on 127.0.0.1, no persistence, in a temporary directory."""

    def __init__(self, log_dir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH")
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=log_dir))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(log_dir / "redis-server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        CHILDREN.add("redis-server", self.proc, log=log_dir / "redis-server.log")
        client = connect(self.url, timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.RedisError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start (see {self.log.name})") from exc
                time.sleep(0.1)
        client.close()

    def used_memory(self) -> dict[str, int]:
        client = connect(self.url, timeout=10)
        try:
            info = client.info("memory")
            return {k: int(info[k]) for k in ("used_memory", "used_memory_rss")} | {
                "keys": int(client.dbsize())
            }
        finally:
            client.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- delta propagation -----------------------------------------------------------


def _template(seed: int, as_of: _dt.date) -> dict[str, Any]:
    for entry in iter_entries(100, seed, as_of):
        if entry["subject"]["type"] == "PERSON":  # type: ignore[index]
            return entry
    raise RuntimeError("no person in the first 100 synthetic entries")


def new_person_entry(template: dict[str, Any], i: int, as_of: _dt.date) -> dict[str, Any]:
    """An ACTIVE entry for a person on no list: born 1941 (the generator's ages end at 80)."""
    entry = copy.deepcopy(template)
    birth = _dt.date(1941, 1, 1) + _dt.timedelta(days=i % 365)
    first17 = "110101" + birth.strftime("%Y%m%d") + f"{900 + i // 365 % 100:03d}"
    entry["entry_id"] = f"E9{i:09d}"
    entry["subject"]["id_number"] = first17 + resident_id_check_char(first17)
    entry["subject"]["name"] = "测试" + "甲乙丙丁戊己庚辛壬癸"[i % 10]
    entry["subject"].pop("age", None)
    entry["status"] = "ACTIVE"
    entry["exemptions"] = []
    entry["valid_until"] = (as_of + _dt.timedelta(days=3 * 365)).isoformat()
    return entry


def _airline(entry: dict[str, Any], i: int) -> pb.CheckRequest:
    return build_request(
        "AIRLINE",
        id_number=entry["subject"]["id_number"],
        name=entry["subject"]["name"],
        purchase={"flight_number": "CA1501", "cabin": "Y"},
        request_id=f"D{i:06d}",
        merchant_id="M0001",
        terminal_id="T01",
    )


def _wait_for(stub: Any, request: pb.CheckRequest, decision: int, deadline: float) -> float:
    """Ask until the answer is ``decision``: perf_counter at that answer, or nan."""
    while True:
        reply = stub.CheckConsumption(request, timeout=2)
        now = time.perf_counter()
        if reply.decision == decision:
            return now
        if now > deadline:
            return float("nan")


def propagation(
    url: str, secret: bytes, address: str, count: int, work_dir: Path, seed: int, as_of: _dt.date
) -> dict[str, Any]:
    """``count`` LIST deltas then DELISTs of the same entries, each timed to the replica."""
    client = connect(url, timeout=10)
    keyer = SubjectKeyer(secret)
    template = _template(seed, as_of)
    seq = int(redis_status(client)["last_seq"])
    times: dict[str, dict[str, list[float]]] = {
        op: {"publish_ms": [], "after_commit_ms": [], "total_ms": []} for op in ("LIST", "DELIST")
    }
    missed = {"LIST": 0, "DELIST": 0}
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            for i in range(count):
                entry = new_person_entry(template, i, as_of)
                request = _airline(entry, i)
                if stub.CheckConsumption(request, timeout=2).decision != pb.ALLOW:
                    raise RuntimeError(f"{entry['subject']['id_number']} is listed already")
                for op, row, want in (
                    ("LIST", {"op": "LIST", "entry": entry}, pb.DENY),
                    ("DELIST", {"op": "DELIST", "entry_id": entry["entry_id"]}, pb.ALLOW),
                ):
                    seq += 1
                    path = work_dir / f"delta-{seq:06d}.jsonl"
                    path.write_bytes(orjson.dumps({"seq": seq, **row}) + b"\n")
                    t0 = time.perf_counter()
                    result = publish_delta(client, path, keyer)
                    t1 = time.perf_counter()
                    if result.applied != 1:
                        raise RuntimeError(f"delta seq {seq} not applied: {result}")
                    t2 = _wait_for(stub, request, want, t1 + DELTA_DEADLINE_S)
                    if t2 != t2:  # nan: not seen in time
                        missed[op] += 1
                        continue
                    times[op]["publish_ms"].append((t1 - t0) * 1e3)
                    times[op]["after_commit_ms"].append((t2 - t1) * 1e3)
                    times[op]["total_ms"].append((t2 - t0) * 1e3)
                    path.unlink()
    finally:
        client.close()
    out: dict[str, Any] = {"count": count, "deadline_s": DELTA_DEADLINE_S}
    for op, series in times.items():
        out[op] = {"missed": missed[op]}
        for name, values in series.items():
            out[op][name] = _percentiles(values)
    return out


def _percentiles(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    if not s:
        return {"n": 0, "p50": None, "p90": None, "max": None, "values": []}

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"n": len(s), "p50": pct(0.5), "p90": pct(0.9), "max": s[-1], "values": values}


# --- the run ---------------------------------------------------------------------


class ReplicaReachesRedis:
    """After each Redis-backed segment: every server of the run still running
    (``CHILDREN.check``, redis-server among them), and the replica still reaching Redis:
    its ``shixin_redis_errors_total`` unchanged since the first check and its status
    ``index_reachable``. A replica that lost Redis answers with its ``--unavailable``
    fallback, without an error a driver would count, so its figures would be no Redis
    figures at all: ``RunAborted`` instead."""

    def __init__(self, replica: ServerProcess, metrics_url: str) -> None:
        self.replica = replica
        self.metrics_url = metrics_url
        self.errors = self._errors()

    def _errors(self) -> float:
        return metric_total(self.metrics_url, "shixin_redis_errors_total") or 0.0

    def check(self) -> None:
        CHILDREN.check()
        errors = self._errors()
        reachable = list_status(self.replica.address).index_reachable
        if errors != self.errors or not reachable:
            said = last_line(Path(self.replica.stderr.name))
            raise RunAborted(
                f"the replica (pid {self.replica.proc.pid}) lost Redis during {CHILDREN.step}"
                f" (shixin_redis_errors_total {self.errors:g} -> {errors:g}, index_reachable "
                f"{reachable}): its answers were its --unavailable fallback, not Redis"
                + (f" (its last line: {said})" if said else "")
            )


#: The drivers of a run unless ``--drivers`` says otherwise.
DRIVERS = ("latency", "unary", "batch-h2load", "batch-raw")
METRICS = ["--metrics-listen", "127.0.0.1:0"]
NAMES = ("redis", "memory", "bare")
PAIRS = (Pair("redis", "bare"), Pair("memory", "bare"), Pair("redis", "memory", judged=False))


def mix_bodies(folder: Path, listed: list[pb.CheckRequest], unlisted: list[pb.CheckRequest],
               share: float) -> dict[str, Path]:  # fmt: skip
    """The drivers' bodies for one mix: unary, the first of ``unlisted``; a batch of 100
    and the stream requests with ``share`` of them listed."""
    return write_bodies(
        folder,
        unlisted[0].SerializeToString(),
        interleaved(listed, unlisted, STREAM_RING, "s", share),
        interleaved(listed, unlisted, BATCH_SIZE, "b", share),
        1000,
    )


def run(
    args: argparse.Namespace,
    list_path: Path,
    traffic: Traffic,
    log_dir: Path,
    chosen: list[Driver] | None = None,
) -> dict[str, Any]:
    """Every Redis-mode figure, with ``traffic`` (the memory-mode run's mix) and 100% listed;
    the RPC figures from ``chosen`` drivers (default ``DRIVERS``)."""
    chosen = chosen or pick_drivers("", DRIVERS)
    as_of = _dt.datetime.now(CHINA_TZ).date()
    secret = secrets.token_hex(16)  # 32 characters, for the loader and the replica alike
    env = server_env()
    env["SHIXIN_KEY_SECRET"] = secret
    listed = build_traffic(
        max(1000, len(traffic.requests) // 4), args.entries, args.seed, as_of, listed_share=1.0
    )
    mixes = {
        "mix": mix_bodies(log_dir / "bodies-mix", traffic.listed, traffic.unlisted, 0.01),
        "listed": mix_bodies(log_dir / "bodies-listed", listed.listed, listed.listed, 1.0),
    }
    out: dict[str, Any] = {"entries": args.entries, "drivers": [d.name for d in chosen]}
    redis: RedisServer | None = None
    servers: list[ServerProcess] = []
    try:
        step("starting redis-server")
        redis = RedisServer(log_dir)
        log(
            f"redis-server: pid {redis.proc.pid}, port {redis.port}; loading {list_path.name} into it"
        )
        before = redis.used_memory()
        step("load --redis")
        t0 = time.perf_counter()
        with open(log_dir / "redis-load.log", "wb") as load_log:
            loaded = subprocess.run(
                cli_argv(["load", str(list_path), "--redis", redis.url]),
                env=env,
                stdout=load_log,
                stderr=subprocess.STDOUT,
                timeout=args.load_timeout,
                cwd=Path(__file__).resolve().parent.parent,
            )
        out["load_s"] = time.perf_counter() - t0
        CHILDREN.check()
        if loaded.returncode != 0:
            raise RunAborted(f"shixin-check load --redis {exit_status(loaded.returncode)}: "
                             f"{last_line(Path(load_log.name)) or 'it said nothing'}")  # fmt: skip
        time.sleep(0.5)
        after = redis.used_memory()
        out["redis_memory"] = {"before": before, "after": after}
        log(f"loaded into Redis in {out['load_s']:.1f}s; the replica next")

        step("starting the replica")
        replica = ServerProcess(
            "replica", serve_argv(["--redis", redis.url, *METRICS]), log_dir, env
        )
        servers.append(replica)
        replica.wait_announced(60)
        replica_metrics = replica.wait_metrics(30)
        out["replica_start_s"] = replica.wait_serving(args.load_timeout)
        time.sleep(0.5)
        out["rss_replica"] = replica.rss()
        status = list_status(replica.address)
        out["counts"] = {
            "entries_total": status.entries_total,
            "subject_keys": status.subject_keys,
        }

        log("a memory-mode server on the same list, for comparison")
        step("starting the memory-mode server")
        # its compiled index in the run's folder: beside the list, a version a run (the
        # secret is new each run) piled up in --data-dir
        memory_args = [*METRICS, "--index-dir", str(log_dir / "index-memory")]
        memory = ServerProcess("memory", ours_argv(list_path, memory_args), log_dir, env)
        servers.append(memory)
        memory.wait_announced(60)
        memory_metrics = memory.wait_metrics(30)
        out["memory_load_s"] = memory.wait_serving(args.load_timeout)
        time.sleep(0.5)
        out["rss_memory"] = memory.rss()

        bare = ServerProcess("bare-r", bare_argv(), log_dir, env)
        servers.append(bare)
        bare.wait_announced(60)

        targets = [
            Target("redis", replica.address, (replica.proc.pid,),
                   counted=functools.partial(checks_counted, replica_metrics),
                   helpers=(redis.proc.pid,)),
            Target("memory", memory.address, (memory.proc.pid,),
                   counted=functools.partial(checks_counted, memory_metrics)),
            Target("bare", bare.address, (bare.proc.pid,)),
        ]  # fmt: skip
        plan = plan_from(args, pace_from="bare")
        reached = ReplicaReachesRedis(replica, replica_metrics)
        for mix, bodies in mixes.items():
            log(f"driving {mix}: {len(chosen)} drivers x {plan.rounds} rounds x "
                f"{len(targets)} servers")  # fmt: skip
            rpc = run_segments(targets, chosen, bodies, plan, log_dir, check=reached.check)
            rpc["summary"] = summarise(rpc["segments"], chosen, NAMES, PAIRS)
            rpc["segments"] = without_samples(rpc["segments"])
            out[f"rpc_{mix}"] = rpc
        out["rss_replica_after_load_test"] = replica.rss()
        out["rss_memory_after_load_test"] = memory.rss()
        memory.stop()
        bare.stop()

        log(f"delta propagation: {args.deltas} LIST and {args.deltas} DELIST")
        step("delta propagation")
        work = Path(tempfile.mkdtemp(prefix="deltas-", dir=log_dir))
        out["propagation"] = propagation(
            redis.url, secret.encode(), replica.address, args.deltas, work, args.seed, as_of
        )
        reached.check()  # before any figure is reported
        out["redis_memory"]["end"] = redis.used_memory()
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()
    return out


# --- the tables ----------------------------------------------------------------


def summary_table(r: dict[str, Any]) -> list[list[str]]:
    n = r["entries"]
    scale = 10_000_000 / n
    mem = r["redis_memory"]
    used = mem["after"]["used_memory"] - mem["before"]["used_memory"]
    keys = r["counts"]["subject_keys"]
    rows = [["figure", "value", "target", "verdict"]]
    rows.append(
        [
            f"load {n:,} entries into Redis (`shixin-check load`), s",
            _fmt(r["load_s"], 1),
            f"10M < {LOAD_TARGET_10M_S / 60:g} min (x{scale:g}: {r['load_s'] * scale:,.0f} s)",
            _verdict(r["load_s"] * scale < LOAD_TARGET_10M_S),
        ]
    )
    rows.append(
        [
            "Redis used_memory after - before, MiB",
            f"{_fmt(used / MIB, 1)} ({mem['after']['keys']:,} keys)",
            f"x{scale:g}: {used * scale / 1024**3:.2f} GiB (no target)",
            "-",
        ]
    )
    rows.append(
        [
            "Redis bytes per entry" + (f" / per subject key ({keys:,})" if keys else ""),
            f"{used / n:,.0f}" + (f" / {used / keys:,.0f}" if keys else ""),
            "-",
            "-",
        ]
    )
    rows.append(
        [
            "replica: announce to SERVING (Bloom filter fetched), s",
            _fmt(r["replica_start_s"], 2),
            f"memory mode: {_fmt(r['memory_load_s'], 1)} s",
            "-",
        ]
    )
    rows.append(
        [
            "replica RSS once SERVING / after the RPC phases, MiB",
            f"{_fmt(r['rss_replica'] / MIB, 1)} / {_fmt(r['rss_replica_after_load_test'] / MIB, 1)}",
            f"memory mode: {_fmt(r['rss_memory'] / MIB, 1)} / "
            f"{_fmt(r['rss_memory_after_load_test'] / MIB, 1)}",
            "-",
        ]
    )
    prop = r.get("propagation")
    if prop:
        for op in ("LIST", "DELIST"):
            p = prop[op]
            if not p["total_ms"]["n"]:
                rows.append([f"delta {op} visible on the replica", "never", "< 1000 ms", "MISSED"])
                continue
            worst = p["total_ms"]["max"]
            ok = p["missed"] == 0 and worst < 1000
            rows.append(
                [
                    f"delta {op}: publish_delta (validate + commit), p50 / max ms",
                    f"{_fmt(p['publish_ms']['p50'], 1)} / {_fmt(p['publish_ms']['max'], 1)}",
                    "-",
                    "-",
                ]
            )
            rows.append(
                [
                    f"delta {op}: commit to replica answer, p50 / p90 / max ms",
                    f"{_fmt(p['after_commit_ms']['p50'], 1)} / "
                    f"{_fmt(p['after_commit_ms']['p90'], 1)} / "
                    f"{_fmt(p['after_commit_ms']['max'], 1)}",
                    "-",
                    "-",
                ]
            )
            rows.append(
                [
                    f"delta {op}: publish start to replica answer, p50 / max ms "
                    f"({p['total_ms']['n']} of {prop['count']})",
                    f"{_fmt(p['total_ms']['p50'], 1)} / {_fmt(worst, 1)}",
                    "< 1000 ms on every replica",
                    _verdict(ok),
                ]
            )
    return rows


def print_tables(r: dict[str, Any]) -> None:
    print(f"\nRedis mode: {r['entries']:,} entries, one replica, our own redis-server")
    print(render(summary_table(r)))
    chosen = pick_drivers(",".join(r.get("drivers", [])), DRIVERS)
    titles = {
        "mix": "traffic as the memory-mode run (99% unlisted, 1% listed)",
        "listed": "100% listed subjects (every check a Redis round trip)",
    }
    for mix, title in titles.items():
        rpc = r.get(f"rpc_{mix}")
        if not rpc:
            continue
        print(
            f"\nRedis replica beside a memory-mode server and bare, {title} (cores = CPU "
            "seconds per second; helper = redis-server; x bare, x memory: ratio of the rates, "
            "of the p99s for the latency driver)"
        )
        print(render(segment_rows(rpc["summary"], chosen, PAIRS, helpers=True)))
        print()
        print(render(ratio_rows(rpc["summary"], chosen, PAIRS)))
        for line in segment_notes(rpc["segments"]):
            print(line)
        if rpc.get("cut_short"):
            print("CUT SHORT by --max-minutes: some segments did not run")
        d = rpc["decisions"]
        print(f"answers to one batch of {BATCH_SIZE}, parsed: " + "; ".join(
            f"{name} " + " ".join(f"{k}={v}" for k, v in got.items()) for name, got in d.items()
        ))  # fmt: skip
        if d.get("redis") != d.get("memory"):
            print(f"WARNING: decisions differ: redis {d.get('redis')}, memory {d.get('memory')}")


# --- its own entry point -----------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.redis_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    add_driver_args(p, DRIVERS)
    p.add_argument("--deltas", type=int, default=20, help="LIST and DELIST deltas timed")
    p.add_argument("--load-timeout", type=float, default=900.0, help="seconds to wait for a load")
    args = p.parse_args(argv)
    if args.entries is None:
        args.entries = 100_000 if args.quick else 1_000_000
    if args.traffic is None:
        args.traffic = 10_000 if args.quick else 20_000
    try:
        args.chosen = pick_drivers(args.drivers, DRIVERS)
    except ValueError as exc:
        p.error(f"--drivers: {exc}")
    if shutil.which("h2load") is None:
        p.error("h2load not found (apt-get install nghttp2-client)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    as_of = _dt.datetime.now(CHINA_TZ).date()
    own_folder(args.data_dir)
    step("writing the list")
    list_path, gen_s = ensure_list(args.data_dir, args.entries, args.seed, as_of)
    log(f"building {args.traffic:,} requests (1% listed)")
    traffic = build_traffic(args.traffic, args.entries, args.seed, as_of)
    results: dict[str, Any] = {
        "command": "python -m loadtest.redis_bench "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "revision": revision(),
        "list_file": {"path": str(list_path), "generated_s": gen_s},
    }
    with run_folder(args.data_dir, "redis-logs-", args.keep_logs) as log_dir:
        results["redis"] = run(args, list_path, traffic, log_dir, args.chosen)
    finish(results, started, args.out)
    m = results["machine"]
    print(
        f"\nshixin-check Redis-mode benchmarks: {args.entries:,} entries, {m['nproc']} x "
        f"{m['cpu_model']}, Python {m['python']}, grpcio {m['grpcio']}, "
        f"revision {results['revision']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in m['load_average_at_end'])}"
    )
    print_tables(results["redis"])
    print(f"\ntotal {results['total_s']:.0f}s" + (f"; server logs in {log_dir}" if args.keep_logs
                                                   else ""))  # fmt: skip
    if args.out:
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main("redis_bench", main))
