"""Issue 12's ratio run: ours beside two bare servicers, under drivers that are not the bottleneck.

    python -m loadtest.ratio_bench [--quick] [--entries 100000] [--out PATH]

Three targets on 127.0.0.1, each one process:

- ``ours``: ``shixin-check serve --workers 1`` with ``--hit-log``,
  ``--audit-log`` (fsync ``never``, the default), ``--keys-file`` (one key
  made by ``shixin-check keys add``, every call carries ``authorization:
  Bearer KEY``) and ``--metrics-listen``, on a list of ``--entries``;
- ``bare-aio``: ``loadtest/bare_server.py`` (grpc.aio, a fixed answer);
- ``bare-sync``: the same answers from ``bare_server.py --sync`` (grpc.server
  with a thread pool).

The drivers and segments are ``loadtest.segments``' (the same that
``loadtest.bench`` and ``loadtest.redis_bench`` use): h2load for unary,
batch of 100 and a stream of 1,000 requests per call, one call in flight,
and unary calls open loop at a fixed rate (``--rps``); raw-bytes client
processes for batch and for long-lived bidirectional streams. Batches and the
stream ring carry 1 listed subject in 100 (``--listed-share``), so the hit
log is written; the unary body is the 99% case, an unlisted subject.

Segments alternate between the targets, ``--rounds`` of them, each bounded in
calls and in time, and the whole run stops starting segments after
``--max-minutes``. The tables (``loadtest.report``) give medians, the ratios
between servers of the rates and of the server CPU per check (what foreign
load disturbs least), verdicts against the issue's targets, and whether each
driver stayed well below its server's CPU (``DRIVER-BOUND`` where not: such a
ratio is shown but not judged).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.common import (
    CHILDREN,
    DATA_DIR,
    add_keep_logs,
    add_key,
    ensure_list,
    log,
    machine,
    own_folder,
    revision,
    run_folder,
    run_main,
    step,
    stop_process,
)
from loadtest.report import Pair, markdown, ratio_rows, segment_notes, segment_rows
from loadtest.report import summarise as summarise_segments
from loadtest.segments import (
    SEED,
    STREAM_RING,
    Driver,
    Plan,
    Target,
    check_requests,
    drivers,
    pick_drivers,
    run_segments,
    without_samples,
    write_bodies,
)
from loadtest.workers_bench import SECRET, Server, grpc_body

TARGETS = ("ours", "bare-aio", "bare-sync")
#: The drivers of the ratio run unless ``--drivers`` says otherwise.
RATIO_DRIVERS = ("unary", "batch-h2load", "batch-raw", "stream-raw", "stream-h2load", "latency")


# --- the ratio run's own targets -----------------------------------------------------------


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
        CHILDREN.add(name, self.proc, log=self.output)
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
        return stop_process(self.proc)


def start_servers(
    run: Path, list_path: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], str]:
    """ours, bare-aio and bare-sync, each ready (stopped again if one is not), and the API
    key ours wants."""
    keys = run / "keys.json"
    key = add_key(keys, "ratio-bench")
    (run / "key").write_text(SECRET)
    ours_args = [
        "--list", str(list_path), "--workers", "1", "--key-secret-file", str(run / "key"),
        "--index-dir", str(run / "index"), "--metrics-listen", "127.0.0.1:0",
        "--hit-log", str(run / "hits.jsonl"), "--audit-log", str(run / "audit.jsonl"),
        "--keys-file", str(keys),
    ]  # fmt: skip
    servers: dict[str, Any] = {}
    try:
        servers["ours"] = Server("ours", ours_args, 1, run)
        servers["bare-aio"] = Bare("bare-aio", [], run)
        servers["bare-sync"] = Bare("bare-sync", ["--sync", "--threads", str(args.sync_threads)],
                                    run)  # fmt: skip
        for name, server in servers.items():
            server.wait_ready(300)
            log(f"{name}: pid {server.proc.pid}, port {server.port}")
    except BaseException:
        stop_servers(servers)
        raise
    return servers, key


def stop_servers(servers: dict[str, Any]) -> dict[str, int | None]:
    return {name: s.stop() for name, s in servers.items()}


# --- the ratio run -------------------------------------------------------------------------

PAIRS = (Pair("ours", "bare-aio"), Pair("ours", "bare-sync"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="1 round of 2.5 s segments (~1.5 min)")
    p.add_argument("--entries", type=int, default=100_000, help="list size")
    p.add_argument(
        "--seconds", type=float, default=None, help="per segment (default 5; 2.5 with --quick)"
    )
    p.add_argument("--rounds", type=int, default=None, help="segments per target and driver "
                   "(default 3; 1 with --quick)")  # fmt: skip
    p.add_argument("--drivers", default="", help="a comma-separated subset of: "
                   + ", ".join(d.name for d in drivers()) + " (default: "
                   + ", ".join(RATIO_DRIVERS) + ")")  # fmt: skip
    p.add_argument("--rate", type=float, default=0.0, help="paced driver: calls/s (default: "
                   "25%% of bare-aio's unary calls/s)")  # fmt: skip
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
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    add_keep_logs(p)
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.5 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.max_minutes = args.max_minutes or (5.0 if args.quick else 20.0)
    args.per_stream_call = min(args.per_stream_call, STREAM_RING)
    if shutil.which("h2load") is None:
        print("ratio_bench: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    try:
        chosen = pick_drivers(args.drivers, RATIO_DRIVERS, args.batch, args.per_stream_call)
    except ValueError as exc:
        p.error(f"--drivers: {exc}")
    plan = Plan(args.seconds, args.rounds, args.max_minutes, args.raw_procs, args.raw_inflight,
                args.stream_window, args.rate, 0.25, "bare-aio")  # fmt: skip
    started = time.monotonic()
    own_folder(args.data_dir)
    step("writing the list")
    list_path, _ = ensure_list(args.data_dir, args.entries, SEED, _dt.date.today())
    with run_folder(args.data_dir, "ratio-bench-", args.keep_logs) as run:
        results = measure(args, chosen, plan, list_path, run, started)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_s"] = time.monotonic() - started
    results["summary"] = summarise_segments(results["segments"], chosen, TARGETS, PAIRS)
    if args.out:
        slim = {**results, "segments": without_samples(results["segments"])}
        args.out.write_text(json.dumps(slim, indent=2, ensure_ascii=False, default=str))
    print(render(results, chosen))
    return 0


def measure(
    args: argparse.Namespace, chosen: list[Driver], plan: Plan, list_path: Path, run: Path,
    started: float,
) -> dict[str, Any]:  # fmt: skip
    """Start the three servers in ``run``, drive them, stop them: the run's figures."""
    step("writing the bodies")
    bodies = write_bodies(
        run, grpc_body()[5:], check_requests(STREAM_RING, "s", args.listed_share, args.entries),
        check_requests(args.batch, "b", args.listed_share, args.entries), args.per_stream_call,
    )  # fmt: skip
    results: dict[str, Any] = {
        "revision": revision(), "machine": machine(), "argv": sys.argv, "entries": args.entries,
        "options": {k: str(v) for k, v in vars(args).items()},
        "drivers": {d.name: d.label for d in chosen}, "segments": [], "cut_short": False,
    }  # fmt: skip
    servers: dict[str, Any] = {}
    try:
        step("starting the servers")
        servers, key = start_servers(run, list_path, args)
        ours = servers["ours"]
        targets = [
            Target("ours", f"127.0.0.1:{ours.port}", (ours.proc.pid,),
                   (f"authorization: Bearer {key}",), ours.answers),
            *(Target(name, f"127.0.0.1:{servers[name].port}", (servers[name].proc.pid,))
              for name in ("bare-aio", "bare-sync")),
        ]  # fmt: skip
        results.update(run_segments(targets, chosen, bodies, plan, run, started))
        CHILDREN.check("the end of the segments")
        results["logs_written"] = {
            f.name: f.stat().st_size for f in sorted(run.glob("*.jsonl*")) if f.is_file()
        }
    finally:
        results["exit"] = stop_servers(servers)
    return results


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
        markdown(segment_rows(s, chosen, PAIRS)),
        "",
        "Ratios: `rate` is ours/bare of the rates (the issue's figure; for a latency row, of "
        "the p99s); `cpu` is bare/ours of the server CPU µs per check, the rate ratio each "
        "would reach on a core of its own.",
        "",
        markdown(ratio_rows(s, chosen, PAIRS)),
        "",
        *segment_notes(results["segments"]),
    ]  # fmt: skip
    if results.get("pace"):
        lines.append(f"paced driver: {results['pace']:,.0f} calls/s")
    logs = results.get("logs_written", {})
    lines += ["", "ours wrote: " + (", ".join(f"{k} {v:,} bytes" for k, v in logs.items())
                                    or "no log (check the run)")]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main("ratio_bench", main))
