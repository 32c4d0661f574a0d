"""Where the server's CPU goes under load: py-spy on ``serve`` (and the bare servicer) under h2load.

    python -m loadtest.profile_bench [--entries 100000] [--duration 15] [--kinds unary,batch]

A figure, not a test (issue 12, point 3). For each target (``ours``:
``shixin-check serve`` in the default configuration with a key secret;
``bare``: ``loadtest/bare_server.py``) and each kind of call (``unary``: one
pre-framed ``CheckRequest`` for an unlisted subject as ``workers_bench``
sends it; ``batch``: a pre-framed ``CheckBatchRequest`` of ``--batch``
such checks), h2load drives the server for ``--duration`` seconds and
``py-spy record --native --format raw`` samples the server's process for
``--profile-seconds`` of it (starting ``--settle`` seconds in). The raw
(collapsed) stacks stay in ``--out-dir`` (never in the repository); the
summary gives calls/s, server CPU µs per call and per check, and the share
of samples whose innermost frame (self) or any frame (inclusive) falls in
each bucket of ``BUCKETS``. Needs ``h2load`` and ``py-spy`` (root, or
ptrace allowed) on PATH or in the virtual environment.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import (
    CHILDREN,
    DATA_DIR,
    add_keep_logs,
    add_key,
    ensure_list,
    log,
    machine,
    machine_busy,
    own_folder,
    revision,
    run_folder,
    run_main,
    step,
)
from loadtest.features_bench import FEATURES
from loadtest.ratio_bench import Bare
from loadtest.workers_bench import SECRET, Server, grpc_body
from shixin.v1 import check_pb2 as pb

PATHS = {
    "unary": "/shixin.v1.ConsumptionCheck/CheckConsumption",
    "batch": "/shixin.v1.ConsumptionCheck/CheckConsumptionBatch",
}

#: (bucket, pattern): the first pattern a frame matches names its bucket; the
#: order matters (our functions before the generic files they call).
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in (
        ("ours: to_query (convert)", r"\bto_query |server/convert\.py|domain/identity\.py"
                                     r"|domain/purchase|domain/keys"),
        ("ours: decide", r"\bdecide(_many)? |domain/decision\.py|loader/|rbloom"),
        ("ours: fill_response", r"\bfill_response |_not_listed "),
        ("ours: hit log / audit", r"server/hitlog\.py|server/audit\.py|\._audit |_log_hit "),
        ("ours: _answer (rest)", r"\._answer "),
        ("ours: view / CountedView", r"CheckEngine\.view |CountedView"),
        ("ours: Tally.observe", r"Tally\.observe "),
        ("ours: _identify / _admit", r"\._identify |\._admit |server/auth\.py"),
        ("ours: engine.check (rest)", r"CheckEngine\.(check|check_many|query) "),
        ("ours: servicer (rest)", r"server/service\.py|bare_server\.py"),
        ("epoll_wait (the loop waiting)", r"^epoll_wait \(libc"),
        ("syscalls: send/recv/write/getpid", r"^(sendmsg|recv|recvmsg|write|read|getpid|poll) \(libc"),
        ("protobuf", r"google/protobuf|_message|upb|\bPyUpb|Message_"),
        ("grpcio cython (aio server)", r"cygrpc|_cython|\.pyx|grpc_core|grpc/aio|\bgrpc_"),
        ("asyncio loop", r"asyncio/|selectors\.py|_asynciomodule|epoll"),
    )
]  # fmt: skip
OTHER = "other (interpreter, libc, ...)"


def batch_body(size: int) -> bytes:
    """One CheckBatchRequest of ``size`` unlisted checks, framed as on the wire."""
    one = pb.CheckRequest.FromString(grpc_body()[5:])
    batch = pb.CheckBatchRequest()
    for i in range(size):
        check = batch.checks.add()
        check.CopyFrom(one)
        check.request_id = f"bench-{i}"
    message = batch.SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise SystemExit(f"profile_bench: {name} not found")
    return found


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def profile(
    target: Any, kind: str, body: Path, args: argparse.Namespace, headers: list[str]
) -> dict[str, Any]:
    """One h2load run with py-spy attached for part of it: the figures and the raw stacks."""
    raw = args.out_dir / f"{target.name}-{kind}.txt"
    argv = [
        tool("h2load"), "-D", str(args.duration), "-c", str(args.clients),
        "-m", str(args.streams), "-t", "1", "-T", str(args.duration + 10),
        "--header", "content-type: application/grpc", "--header", "te: trailers", *headers,
        "-d", str(body), f"http://127.0.0.1:{target.port}{PATHS[kind]}",
    ]  # fmt: skip
    cpu0, busy0 = server_cpu(target.proc.pid), machine_busy()
    with tempfile.TemporaryFile() as out:
        h2 = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        CHILDREN.add("h2load", h2, server=False)
        try:
            time.sleep(args.settle)
            spy = [
                tool("py-spy"), "record", "--pid", str(target.proc.pid), "--rate",
                str(args.rate), "--duration", str(args.profile_seconds), "--format", "raw",
                "--output", str(raw), "--threads", *(["--native"] if args.native else []),
            ]  # fmt: skip
            subprocess.run(spy, check=True, timeout=args.profile_seconds + 30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            before_driver = children_cpu()  # py-spy is reaped; h2load is not yet
            h2.wait(args.duration + 30)
            driver = children_cpu() - before_driver  # h2load's own CPU, exactly
        finally:
            if h2.poll() is None:
                h2.kill()
                h2.wait()
            CHILDREN.forget(h2)
        CHILDREN.check()
        cpu1, busy1 = server_cpu(target.proc.pid), machine_busy()
        out.seek(0)
        text = out.read().decode(errors="replace")
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", text)
    if not finished or not done:
        raise RuntimeError(f"h2load said:\n{text}")
    wall = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    calls = int(done.group(1))
    checks = calls * (args.batch if kind == "batch" else 1)
    cpu = cpu1 - cpu0
    return {
        "target": target.name, "kind": kind, "raw": str(raw), "calls": calls,
        "calls_per_s": float(finished.group(3)), "checks_per_s": checks / wall,
        "server_cores": cpu / wall, "driver_cores": driver / wall,
        "machine_cores": (busy1 - busy0) / wall,
        "server_cpu_us_per_call": cpu / max(calls, 1) * 1e6,
        "server_cpu_us_per_check": cpu / max(checks, 1) * 1e6,
        "buckets": summarise(raw),
    }  # fmt: skip


def bucket_of(frame: str) -> str | None:
    for name, pattern in BUCKETS:
        if pattern.search(frame):
            return name
    return None


def _function(frame: str) -> str:
    """A frame without its line number: ``f (file.py:12)`` -> ``f (file.py)``."""
    return re.sub(r":\d+\)$", ")", frame)


def summarise(raw: Path) -> dict[str, Any]:
    """From collapsed stacks (py-spy ``--threads``): samples per thread, and for the
    thread running the asyncio loop the self and inclusive shares of each bucket and
    the top functions by self and inclusive samples."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        loop = any("run_forever" in f for f in parts)
        threads["asyncio loop thread" if loop else parts[0]] += n
        if not loop:
            continue
        total += n
        leaf = _function(parts[-1])
        frames[leaf] += n
        own[bucket_of(leaf) or OTHER] += n
        for name in {bucket_of(f) for f in parts} - {None}:
            inclusive[name] += n  # type: ignore[index]
        for name in {_function(f) for f in parts}:
            functions[name] += n
    pct = 100.0 / max(total, 1)
    return {
        "samples": total,
        "threads": dict(threads.most_common()),
        "self_pct": {k: round(v * pct, 1) for k, v in own.most_common()},
        "inclusive_pct": {k: round(v * pct, 1) for k, v in inclusive.most_common()},
        "top_self_frames": [(f, round(v * pct, 1)) for f, v in frames.most_common(30)],
        "top_inclusive": [(f, round(v * pct, 1)) for f, v in functions.most_common(60)],
    }


def feature_args(run: Path, features: str) -> tuple[list[str], list[str]]:
    """The serve flags of ``features`` (``features_bench.FEATURES``), files under ``run``,
    and the headers h2load then sends (the API key's)."""
    on = FEATURES[features]
    args: list[str] = []
    headers: list[str] = []
    if "hits" in on:
        args += ["--hit-log", str(run / "hits.jsonl")]
    if "audit" in on:
        args += ["--audit-log", str(run / "audit.jsonl")]
    if "keys" in on:
        key = add_key(run / "keys.json", "profile-bench")
        args += ["--keys-file", str(run / "keys.json")]
        headers += ["--header", f"authorization: Bearer {key}"]
    return args, headers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--entries", type=int, default=100_000, help="list size")
    p.add_argument("--duration", type=int, default=15, help="seconds of h2load per run (-D)")
    p.add_argument("--profile-seconds", type=int, default=12, help="py-spy --duration")
    p.add_argument("--settle", type=float, default=1.5, help="seconds before py-spy attaches")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--no-native", dest="native", action="store_false",
                   help="Python frames only (no --native)")  # fmt: skip
    p.add_argument("--clients", type=int, default=16, help="connections (h2load -c)")
    p.add_argument("--streams", type=int, default=8, help="calls in flight per connection (-m)")
    p.add_argument("--batch", type=int, default=100, help="checks per batch call")
    p.add_argument("--kinds", default="unary,batch", help="unary, batch or both")
    p.add_argument("--targets", default="ours,bare", help="ours, bare or both")
    p.add_argument(
        "--features",
        default="none",
        choices=sorted(FEATURES),
        help="ours' logs and keys, as features_bench names them (all: ratio_bench's)",
    )
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"shixin-profile-{os.getuid()}",
    )
    add_keep_logs(p)
    args = p.parse_args(argv)
    own_folder(args.data_dir)
    own_folder(args.out_dir)
    step("writing the list")
    list_path, _ = ensure_list(args.data_dir, args.entries, 20261124, _dt.date.today())
    with run_folder(args.data_dir, "profile-bench-", args.keep_logs) as run:
        results = measure(args, list_path, run)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    summary = args.out_dir / "summary.json"
    summary.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["runs"], indent=1, ensure_ascii=False))
    log(f"summary in {summary}, raw stacks in {args.out_dir}")
    return 0


def measure(args: argparse.Namespace, list_path: Path, run: Path) -> dict[str, Any]:
    """Each target started in ``run``, profiled under each kind of call, stopped."""
    (run / "key").write_text(SECRET)
    bodies = {"unary": run / "unary.bin", "batch": run / "batch.bin"}
    bodies["unary"].write_bytes(grpc_body())
    bodies["batch"].write_bytes(batch_body(args.batch))
    common = ["--list", str(list_path), "--key-secret-file", str(run / "key"),
              "--index-dir", str(run / "index"), "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    features, headers = feature_args(run, args.features)
    results: dict[str, Any] = {
        "revision": revision(), "machine": machine(), "argv": sys.argv, "entries": args.entries,
        "options": {k: str(v) for k, v in vars(args).items()}, "runs": [],
    }  # fmt: skip
    for name in args.targets.split(","):
        step(f"starting {name}")
        target: Any = (
            Server("ours", [*common, *features], 1, run)
            if name == "ours"
            else Bare("bare", [], run)
        )
        try:
            target.wait_ready(300)
            log(f"{name}: pid {target.proc.pid}, port {target.port}")
            for kind in args.kinds.split(","):
                step(f"{name} {kind}")
                figures = profile(
                    target, kind, bodies[kind], args, headers if name == "ours" else []
                )
                results["runs"].append(figures)
                log(f"{name} {kind}: {figures['calls_per_s']:,.0f} calls/s, "
                    f"{figures['server_cpu_us_per_call']:.0f} µs CPU/call, "
                    f"{figures['server_cpu_us_per_check']:.1f} µs/check, "
                    f"{figures['buckets']['samples']} samples")  # fmt: skip
        finally:
            target.stop()
    return results


if __name__ == "__main__":
    sys.exit(run_main("profile_bench", main))
