"""Every DESIGN §6 figure in one run, our server beside a bare servicer.

    python -m loadtest.bench [--entries 1000000] [--quick] [--out results.json]

What runs, in order (each step bounded in calls and in time, every child
process killed in a ``finally``):

1. a synthetic list of ``--entries`` entries (``loader.synthetic``), cached
   under ``--data-dir`` by (entries, seed, day);
2. our server (``shixin-check serve``) on a 1-entry list: its resident memory
   is the baseline; then on the real list: load time (the announce to health
   SERVING) and resident memory after load;
3. the bare servicer (``loadtest.bare_server``) beside it, and one driver
   process (``loadtest.driver``) that measures both alike, alternating
   segments: unary latency with 1 and 32 calls in flight, unary calls/s,
   unary latency at a moderate open-loop rate, batch (100 checks) and stream
   checks/s, and the server CPU per check of each;
4. with the servers gone, the in-process decision (``loadtest.inprocess``);
5. rbloom against pybloom-live (``loadtest.bloom_compare``).

The servers run one process each on 127.0.0.1 free ports; the driver and the
in-process part run in ``spawn`` child processes, so no GIL is shared.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import multiprocessing
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

from loadtest import bloom_compare, inprocess
from loadtest.driver import Phase, drive
from loadtest.traffic import build_traffic
from loader.synthetic import write_snapshot
from shixin_domain.model import CHINA_TZ

BATCH_SIZE = 100
MIB = 1024 * 1024


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- servers -------------------------------------------------------------------


class ServerProcess:
    """A server child process on 127.0.0.1, its announced address and its logs."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.stderr = open(log_dir / f"{name}.stderr.log", "wb")  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.address = ""
        self.announced_at = 0.0

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_announced(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("serving on "):
                self.announced_at = time.perf_counter()
                self.address = line.split()[-1]
                return self.address
        raise RuntimeError(f"{self.name} did not announce itself (see {self.stderr.name})")

    def wait_serving(self, timeout: float) -> float:
        """Poll standard health until SERVING; seconds since the announce."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited (see {self.stderr.name})")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - self.announced_at
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not SERVING after {timeout:.0f}s")

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()


def _server_env() -> dict[str, str]:
    """The default configuration: no SHIXIN_* from the caller's shell (logs off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ours_argv(list_path: Path, extra: list[str]) -> list[str]:
    script = Path(sys.executable).with_name("shixin-check")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]
    return [*head, "serve", "--list", str(list_path), "--listen", "127.0.0.1:0", *extra]


def bare_argv() -> list[str]:
    return [sys.executable, "-m", "loadtest.bare_server", "--listen", "127.0.0.1:0"]


def list_status(address: str) -> pb.ListStatus:
    with grpc.insecure_channel(address) as channel:
        reply: pb.ListStatus = pb_grpc.ConsumptionCheckStub(channel).GetListStatus(
            pb.ListStatusRequest(), timeout=10
        )
        return reply


# --- steps ---------------------------------------------------------------------


def ensure_list(data_dir: Path, entries: int, seed: int, as_of: _dt.date) -> tuple[Path, float]:
    """The cached list file, and the seconds spent writing it (0 when cached)."""
    path = data_dir / f"list-{entries}-seed{seed}-{as_of.isoformat()}.jsonl"
    if path.exists():
        return path, 0.0
    log(f"writing a {entries:,}-entry synthetic list to {path}")
    t0 = time.perf_counter()
    write_snapshot(path, entries, seed=seed, as_of=as_of)
    return path, time.perf_counter() - t0


def in_child(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """``fn(*args)`` in a fresh ``spawn`` process (its own interpreter, no shared GIL)."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        future = pool.submit(fn, *args)
        try:
            return future.result(timeout=timeout)
        except cf.TimeoutError:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            raise


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import google.protobuf

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def phases(quick: bool, seconds: float | None, rate: float) -> list[Phase]:
    s = seconds or (3.0 if quick else 4.0)
    return [
        Phase("unary_c1", "unary", 1, 20_000, s),
        Phase("unary_c32", "unary", 32, 100_000, s),
        Phase("unary_paced", "paced", 0, 100_000, s, rate=rate),
        Phase("batch100", "batch", 4, 10_000, s),
        Phase("stream", "stream", 4, 1_000_000, s),
    ]


def run_rpc(
    args: argparse.Namespace, list_path: Path, tiny_path: Path, log_dir: Path,
    requests: list[bytes], batches: list[bytes],
) -> dict[str, Any]:  # fmt: skip
    env = _server_env()
    extra: list[str] = []
    if args.with_logs:
        extra = ["--hit-log", str(log_dir / "hits.jsonl"), "--audit-log", str(log_dir / "audit.jsonl")]
    out: dict[str, Any] = {}
    servers: list[ServerProcess] = []
    try:
        log("our server on a 1-entry list: the memory baseline")
        base = ServerProcess("ours-baseline", ours_argv(tiny_path, extra), log_dir, env)
        servers.append(base)
        base.wait_announced(60)
        base.wait_serving(60)
        out["rss_baseline"] = base.rss()
        base.stop()

        log(f"our server on {list_path.name}: loading")
        ours = ServerProcess("ours", ours_argv(list_path, extra), log_dir, env)
        servers.append(ours)
        ours.wait_announced(60)
        out["rss_at_announce"] = ours.rss()
        out["load_s"] = ours.wait_serving(args.load_timeout)
        time.sleep(0.5)  # let the loader's garbage go before reading RSS
        out["rss_loaded"] = ours.rss()
        status = list_status(ours.address)
        out["entries_total"] = status.entries_total
        out["subject_keys"] = status.subject_keys
        log(f"loaded {status.entries_total:,} entries in {out['load_s']:.1f}s; starting bare servicer")

        bare = ServerProcess("bare", bare_argv(), log_dir, env)
        servers.append(bare)
        bare.wait_announced(60)
        out["rss_bare"] = bare.rss()

        plan = phases(args.quick, args.seconds, args.rate)
        rounds = args.rounds or (1 if args.quick else 2)
        log(f"driving {len(plan)} phases x {rounds} rounds x 2 servers")
        targets = [("ours", ours.address, ours.proc.pid), ("bare", bare.address, bare.proc.pid)]
        budget = 60 + rounds * 2 * sum(p.seconds + 35 for p in plan)
        out["rpc"] = in_child(
            drive, targets, plan, rounds, requests, batches, BATCH_SIZE, timeout=budget
        )
        out["rss_ours_after_load_test"] = ours.rss()
        out["rss_bare_after_load_test"] = bare.rss()
    finally:
        for server in servers:
            server.stop()
    return out


# --- report --------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def table(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = [["figure", "ours", "bare", "ours/bare", "target", "verdict"]]
    ip = results.get("inprocess")
    if ip:
        rows.append(["in-process harness floor p50/p99 µs",
                     f"{_fmt(ip['floor']['p50_us'], 2)} / {_fmt(ip['floor']['p99_us'], 2)}",
                     "-", "-", "(in every sample below)", "-"])  # fmt: skip
        rows.append(["keyed subject key (blake2b) p50 µs", _fmt(ip["subject_key"]["p50_us"], 2),
                     "-", "-", "~0.8 µs (DESIGN)", "-"])  # fmt: skip
        for key, label, target, ok in (
            ("decide_unlisted", "decide() unlisted p50/p99 µs", "p50 < 5 µs",
             ip["decide_unlisted"]["p50_us"] < 5),
            ("decide_listed", "decide() listed p50/p99 µs", "p99 < 20 µs",
             ip["decide_listed"]["p99_us"] < 20),
            ("check_unlisted", "engine.check() unlisted p50/p99 µs", "few µs/check", None),
            ("check_listed", "engine.check() listed p50/p99 µs", "p99 < 20 µs", None),
        ):  # fmt: skip
            s = ip[key]
            rows.append([label, f"{_fmt(s['p50_us'], 2)} / {_fmt(s['p99_us'], 2)}", "-", "-",
                         target, _verdict(ok)])  # fmt: skip
        rows.append(["engine.check() 99/1 mix, checks/s, one core",
                     _fmt(ip["check_mixed_per_s"]), "-", "-", "-", "-"])  # fmt: skip
    rpc = results.get("rpc", {})
    ours, bare = rpc.get("ours", {}), rpc.get("bare", {})

    def both(phase: str, pick: Callable[[dict[str, Any]], float]) -> tuple[float | None, float | None]:  # fmt: skip
        o, b = ours.get(phase), bare.get(phase)
        return (pick(o) if o else None), (pick(b) if b else None)

    def cpu_row(phase: str, label: str) -> None:
        o, b = both(phase, lambda r: r["server_cpu_us_per_check"])
        if o is None or b is None:
            return
        rows.append([label, _fmt(o, 1), _fmt(b, 1), _ratio(o, b), f"ours - bare: {o - b:,.1f} µs", "-"])

    def lat_row(phase: str, label: str, target: str, limit_us: float | None) -> None:
        o, b = ours.get(phase), bare.get(phase)
        if not o or not b:
            return
        lo, lb = o["latency"], b["latency"]
        ok = None if limit_us is None else lo["p99_us"] < limit_us
        rows.append([label, f"{_fmt(lo['p50_us'], 0)} / {_fmt(lo['p99_us'], 0)}",
                     f"{_fmt(lb['p50_us'], 0)} / {_fmt(lb['p99_us'], 0)}",
                     f"{_ratio(lo['p50_us'], lb['p50_us'])} / {_ratio(lo['p99_us'], lb['p99_us'])}",
                     target, _verdict(ok)])  # fmt: skip

    def rate_row(phase: str, label: str, key: str, share: float | None) -> None:
        o, b = both(phase, lambda r: r[key])
        if o is None or b is None:
            return
        ok = None if share is None else o >= share * b
        target = f">= {share:.0%} of bare" if share else "-"
        rows.append([label, _fmt(o), _fmt(b), _ratio(o, b), target, _verdict(ok)])

    lat_row("unary_c1", "unary, 1 in flight: p50/p99 µs", "-", None)
    rate_row("unary_c1", "unary, 1 in flight: calls/s", "calls_per_s", None)
    lat_row("unary_c32", "unary, 32 in flight: p50/p99 µs", "-", None)
    rate_row("unary_c32", "unary, 32 in flight: calls/s", "calls_per_s", 0.8)
    cpu_row("unary_c32", "unary: server CPU µs per call")
    if "unary_paced" in ours:
        paced_rate = ours["unary_paced"]["rate"]
        lat_row("unary_paced", f"unary at {paced_rate:,.0f}/s (open loop): p50/p99 µs",
                "p99 < 1000 µs", 1000)  # fmt: skip
    rate_row("batch100", "batch of 100: checks/s", "checks_per_s", 0.5)
    cpu_row("batch100", "batch: server CPU µs per check")
    rate_row("stream", "stream (4 streams): checks/s", "checks_per_s", 0.5)
    cpu_row("stream", "stream: server CPU µs per check")
    load = results.get("load")
    if load:
        n = load["entries_total"] or 1
        delta = load["rss_loaded"] - load["rss_baseline"]
        rows.append([f"load {n:,} entries (announce to SERVING), s", _fmt(load["load_s"], 1),
                     "-", "-", f"10M < 60 s (x{10_000_000 / n:g}: {load['load_s'] * 10_000_000 / n:,.0f} s)",
                     _verdict(load["load_s"] * 10_000_000 / n < 60)])  # fmt: skip
        rows.append(["resident memory after load - baseline, MiB", _fmt(delta / MIB, 1),
                     _fmt(load["rss_bare"] / MIB, 1) + " (bare RSS)", "-",
                     f"10M < 2 GiB (x{10_000_000 / n:g}: {delta * 10_000_000 / n / 1024**3:.2f} GiB)",
                     _verdict(delta * 10_000_000 / n < 2 * 1024**3)])  # fmt: skip
        rows.append(["resident bytes per entry", _fmt(delta / n, 0), "-", "-",
                     "< 200 (2 GiB / 10M)", _verdict(delta / n < 200)])  # fmt: skip
    return rows


def bloom_table(cases: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["Bloom filter", "adds", "add µs", "lookup hit µs", "lookup miss µs", "false pos."]]
    for c in cases:
        rows.append([c["case"], f"{c['adds']:,}", _fmt(c["add_us"], 2), _fmt(c["lookup_hit_us"], 2),
                     _fmt(c["lookup_miss_us"], 2), f"{c['false_positive_rate']:.4%}"])  # fmt: skip
    return rows


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def noise_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = [["phase", "server", "calls", "errors", "srv cores", "client cores/srv", "foreign cores",
             "decisions"]]  # fmt: skip
    for server, by_phase in results.get("rpc", {}).items():
        for phase, r in by_phase.items():
            el = r["elapsed_s"] or 1
            rows.append([phase, server, f"{r['calls']:,}", str(r["errors"]),
                         f"{r['server_cores']:.2f}", f"{r['client_cpu_s'] / el:.2f}",
                         f"{r['foreign_cores']:.2f}",
                         " ".join(f"{k}={v}" for k, v in sorted(r["decisions"].items()))])  # fmt: skip
    return rows


# --- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--entries", type=int, default=None,
                   help="list size (default 1,000,000; 100,000 with --quick)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small list, short segments, 1 round")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    p.add_argument("--seed", type=int, default=20261124, help="list and traffic seed")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shixin-bench",
                   help="where list files are cached and server logs go")  # fmt: skip
    p.add_argument("--traffic", type=int, default=None, help="distinct requests (default 20,000)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per RPC segment")
    p.add_argument("--rounds", type=int, default=None, help="segments per figure and server")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open-loop unary rate/s (default: 40%% of the bare servicer's calls/s)")  # fmt: skip
    p.add_argument("--calls", type=int, default=100_000, help="in-process calls per series")
    p.add_argument("--bloom-keys", type=int, default=None,
                   help="keys per Bloom filter (default 1,000,000; 200,000 with --quick)")  # fmt: skip
    p.add_argument("--with-logs", action="store_true", help="run our server with hit and audit logs")
    p.add_argument("--profile", action="store_true", help="cProfile the in-process check mix")
    p.add_argument("--skip", action="append", default=[], choices=["rpc", "inprocess", "bloom"],
                   help="leave a part out (repeatable)")  # fmt: skip
    p.add_argument("--load-timeout", type=float, default=900.0, help="seconds to wait for a load")
    args = p.parse_args(argv)
    if args.entries is None:
        args.entries = 100_000 if args.quick else 1_000_000
    if args.bloom_keys is None:
        args.bloom_keys = 200_000 if args.quick else 1_000_000
    if args.traffic is None:
        args.traffic = 10_000 if args.quick else 20_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    as_of = _dt.datetime.now(CHINA_TZ).date()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="logs-", dir=args.data_dir))
    results: dict[str, Any] = {
        "command": "python -m loadtest.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "entries": args.entries,
        "seed": args.seed,
        "as_of": as_of.isoformat(),
    }
    list_path, gen_s = ensure_list(args.data_dir, args.entries, args.seed, as_of)
    tiny_path, _ = ensure_list(args.data_dir, 1, args.seed, as_of)
    results["list_file"] = {"path": str(list_path), "bytes": list_path.stat().st_size,
                            "generated_s": gen_s}  # fmt: skip

    log(f"building {args.traffic:,} requests (1% listed)")
    traffic = build_traffic(args.traffic, args.entries, args.seed, as_of)
    requests = [r.SerializeToString() for r in traffic.requests]
    batches = [
        pb.CheckBatchRequest(checks=traffic.requests[i : i + BATCH_SIZE]).SerializeToString()
        for i in range(0, len(traffic.requests) - BATCH_SIZE + 1, BATCH_SIZE)
    ]
    results["traffic"] = {"requests": len(requests), "listed": len(traffic.listed),
                          "mean_request_bytes": sum(map(len, requests)) / len(requests)}  # fmt: skip

    if "rpc" not in args.skip:
        rpc = run_rpc(args, list_path, tiny_path, log_dir, requests, batches)
        results["rpc"] = rpc.pop("rpc")
        results["load"] = rpc
    if "inprocess" not in args.skip:
        log("in-process decision (builds its own index)")
        results["inprocess"] = in_child(
            inprocess.run, str(list_path),
            [r.SerializeToString() for r in traffic.unlisted],
            [r.SerializeToString() for r in traffic.listed],
            requests, args.calls, 15.0, args.profile,
            timeout=args.load_timeout + 300,
        )  # fmt: skip
    if "bloom" not in args.skip:
        log(f"Bloom filters: {args.bloom_keys:,} keys each")
        results["bloom"] = in_child(
            bloom_compare.compare, args.bloom_keys, min(args.bloom_keys, 200_000), timeout=900
        )
    results["total_s"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()

    m = results["machine"]
    print(f"\nshixin-check benchmarks: {args.entries:,} entries, {m['nproc']} x {m['cpu_model']}, "
          f"{m['ram_gib']} GiB, Python {m['python']}, grpcio {m['grpcio']}")  # fmt: skip
    print(render(table(results)))
    if results.get("rpc"):
        print("\nper phase (cores = CPU seconds per second; foreign = other processes on the machine)")
        print(render(noise_rows(results)))
    if results.get("bloom"):
        print()
        print(render(bloom_table(results["bloom"])))
    if results.get("inprocess", {}).get("profile"):
        print("\ncProfile of engine.check over the traffic mix:")
        print(results["inprocess"]["profile"])
    print(f"\ntotal {results['total_s']:.0f}s; server logs in {log_dir}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
