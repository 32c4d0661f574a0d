"""What each feature of ours costs a call: server CPU per unary call (or streamed check), by thread.

    python -m loadtest.features_bench [--mode unary|stream] [--rounds 3] [--seconds 5]

A figure, not a test (issue 12, point 3). ``ratio_bench`` says how far ours
is from a bare servicer with everything on; this says which feature the
difference goes to, so that a change meant to make one cheaper is measured
where it acts. One server per configuration, all started at once on free
loopback ports with the same list and key secret, driven in turn (the
configurations alternate within each round) by h2load with the same
pre-framed body as ``ratio_bench``:

- ``bare``: ``loadtest.bare_server`` (grpc.aio, the floor);
- ``none``: ours with no hit log, no audit log and no API keys;
- ``hits``, ``audit``, ``keys``: ours with that one feature on;
- ``all``: ours with the three on (``ratio_bench``'s "ours").

Every configuration of ours has its metrics endpoint on (the benches read
readiness from it). Per segment: calls/s (checks/s for ``stream``) as h2load
reports them, the server's CPU in cores and in µs per call, the µs per call
of its busiest threads (``psutil``'s per-thread times: on Linux the event
loop's thread first, then grpc's pollers), and h2load's own CPU. Its table
shows each configuration's median, and the difference to ``none``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import (
    CHILDREN,
    DATA_DIR,
    add_keep_logs,
    add_key,
    cpu_by_pid,
    ensure_list,
    log,
    machine,
    own_folder,
    revision,
    run_folder,
    run_h2load,
    run_main,
    step,
)
from loadtest.ratio_bench import Bare
from loadtest.segments import SEED, STREAM_RING, check_requests, write_bodies
from loadtest.workers_bench import SECRET, Server, grpc_body

#: ours' configurations: the serve flags each adds (besides list, key secret and metrics)
FEATURES = {
    "none": (),
    "hits": ("hits",),
    "audit": ("audit",),
    "keys": ("keys",),
    "all": ("hits", "audit", "keys"),
}
CONFIGS = ("bare", *FEATURES)
METHODS = {"unary": "CheckConsumption", "stream": "CheckConsumptionStream"}
#: h2load's connections and calls in flight per connection (ratio_bench's)
SHAPES = {"unary": (16, 8), "stream": (4, 2)}


def _serve_args(run: Path, list_path: Path, name: str, keys_file: Path) -> list[str]:
    args = ["--list", str(list_path), "--workers", "1", "--key-secret-file", str(run / "key"),
            "--index-dir", str(run / f"index-{name}"), "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    on = FEATURES[name]
    if "hits" in on:
        args += ["--hit-log", str(run / f"hits-{name}.jsonl")]
    if "audit" in on:
        args += ["--audit-log", str(run / f"audit-{name}.jsonl")]
    if "keys" in on:
        args += ["--keys-file", str(keys_file)]
    return args


def _threads(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid``."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def segment(server: Any, name: str, url: str, body: Path, args: argparse.Namespace,
            header: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """One bounded h2load run against ``server``: rates and CPU, per call."""
    clients, streams = SHAPES[args.mode]
    per_call = args.per_stream_call if args.mode == "stream" else 1
    threads_before = _threads(server.proc.pid)
    before = sum(cpu_by_pid([server.proc.pid]).values())
    out = run_h2load(url, body, bound=["-D", str(int(args.seconds))], clients=clients,
                     streams=streams, headers=header, max_seconds=args.seconds + 10)  # fmt: skip
    CHILDREN.check()  # a server gone: named, not "0 failed calls of 0"
    cpu = sum(cpu_by_pid([server.proc.pid]).values()) - before
    threads_after = _threads(server.proc.pid)
    if out["failed"] or not out["succeeded"]:
        raise RuntimeError(f"{name}: {out['failed']} failed calls of {out['succeeded']}")
    checks = out["succeeded"] * per_call
    busiest = sorted(
        (
            (spent - threads_before.get(tid, 0.0)) / checks * 1e6
            for tid, spent in threads_after.items()
        ),
        reverse=True,
    )[:3]
    return {
        "config": name,
        "checks_per_s": checks / out["seconds"],
        "server_cores": cpu / out["seconds"],
        "server_us_per_check": cpu / checks * 1e6,
        "threads_us_per_check": busiest,
        "driver_cores": out["driver_cpu_s"] / out["seconds"],
    }


def render(segments: list[dict[str, Any]], mode: str) -> str:
    unit = "call" if mode == "unary" else "check"
    by_config = {c: [s for s in segments if s["config"] == c] for c in CONFIGS}
    base = statistics.median(s["server_us_per_check"] for s in by_config["none"])
    lines = [
        f"| config | {unit}s/s | server cores | server µs/{unit} | vs none | busiest threads µs/{unit}"
        " | driver cores |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for config, found in by_config.items():
        us = statistics.median(s["server_us_per_check"] for s in found)
        threads = [statistics.median(s["threads_us_per_check"][i] for s in found)
                   for i in range(min(len(s["threads_us_per_check"]) for s in found))]  # fmt: skip
        lines.append(
            f"| {config} | {statistics.median(s['checks_per_s'] for s in found):,.0f}"
            f" | {statistics.median(s['server_cores'] for s in found):.2f} | {us:.1f}"
            f" | {us - base:+.1f} | {', '.join(f'{t:.1f}' for t in threads)}"
            f" | {statistics.median(s['driver_cores'] for s in found):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--mode", choices=sorted(METHODS), default="unary")
    p.add_argument("--entries", type=int, default=100_000, help="list size")
    p.add_argument("--seconds", type=float, default=5.0, help="per segment (whole seconds)")
    p.add_argument("--rounds", type=int, default=3, help="segments per configuration")
    p.add_argument("--per-stream-call", type=int, default=1000,
                   help="requests per h2load stream call (at most 2,048)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    add_keep_logs(p)
    args = p.parse_args(argv)
    if shutil.which("h2load") is None:
        print("features_bench: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    if args.seconds < 1 or args.rounds < 1:
        p.error("--seconds and --rounds must be at least 1")
    args.per_stream_call = min(args.per_stream_call, STREAM_RING)
    started = time.monotonic()
    own_folder(args.data_dir)
    step("writing the list")
    list_path, _ = ensure_list(args.data_dir, args.entries, SEED, _dt.date.today())
    with run_folder(args.data_dir, "features-bench-", args.keep_logs) as run:
        segments = measure(args, list_path, run)
    table = render(segments, args.mode)
    if args.out:
        results = {"revision": revision(), "machine": machine(), "argv": sys.argv,
                   "options": {k: str(v) for k, v in vars(args).items()}, "segments": segments,
                   "load_average_at_end": os.getloadavg(),
                   "total_s": time.monotonic() - started}  # fmt: skip
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(table)
    return 0


def measure(args: argparse.Namespace, list_path: Path, run: Path) -> list[dict[str, Any]]:
    """Start bare and every configuration of ours in ``run``, drive them in turn, stop
    them: every segment's figures."""
    bodies = write_bodies(
        run, grpc_body()[5:], check_requests(STREAM_RING, "s", 0.01, args.entries),
        check_requests(100, "b", 0.01, args.entries), args.per_stream_call,
    )  # fmt: skip
    keys_file = run / "keys.json"
    key = add_key(keys_file, "features-bench")
    (run / "key").write_text(SECRET)
    servers: dict[str, Any] = {}
    segments: list[dict[str, Any]] = []
    try:
        step("starting the servers")
        for name in CONFIGS:
            servers[name] = (
                Bare(name, [], run) if name == "bare"
                else Server(name, _serve_args(run, list_path, name, keys_file), 1, run)
            )  # fmt: skip
        for name, server in servers.items():
            server.wait_ready(300)
            log(f"{name}: pid {server.proc.pid}, port {server.port}")
        for round_ in range(args.rounds):
            order = CONFIGS[round_ % len(CONFIGS) :] + CONFIGS[: round_ % len(CONFIGS)]
            for name in order:
                server = servers[name]
                url = f"http://127.0.0.1:{server.port}/shixin.v1.ConsumptionCheck/{METHODS[args.mode]}"
                header = (
                    (f"authorization: Bearer {key}",) if "keys" in FEATURES.get(name, ()) else ()
                )
                step(f"round {round_ + 1}: {name}")
                fig = segment(server, name, url, bodies[args.mode], args, header)
                segments.append(fig)
                log(f"round {round_ + 1} {name}: {fig['checks_per_s']:,.0f}/s, server "
                    f"{fig['server_cores']:.2f} cores {fig['server_us_per_check']:.1f} µs, driver "
                    f"{fig['driver_cores']:.2f} cores")  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    return segments


if __name__ == "__main__":
    sys.exit(run_main("features_bench", main))
