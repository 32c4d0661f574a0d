"""Every DESIGN §6 figure in one run, our server beside a bare servicer.

    python -m loadtest.bench [--entries 1000000] [--quick] [--out results.json]

What runs, in order (each step bounded in calls and in time, every child
process killed in a ``finally``):

1. a synthetic list of ``--entries`` entries (``loader.synthetic``), cached
   under ``--data-dir`` by (entries, seed, day);
2. our server (``shixin-check serve``) on a 1-entry list: its resident memory
   is the baseline; then on the real list: load time (the announce to health
   SERVING) and resident memory after load;
3. the variants of our server on the same list, each its own process:
   ``ours+logs`` (``--hit-log`` and ``--audit-log``) and ``ours+auth``
   (``--keys-file``; the driver sends ``authorization: Bearer <key>``);
   ``--variants`` picks them (both by default);
4. the bare servicer (``loadtest.bare_server``) beside them, and one driver
   process (``loadtest.driver``) that measures every server alike,
   alternating segments: unary latency with 1 and 32 calls in flight, unary
   calls/s, unary latency at a moderate open-loop rate, batch (100 checks)
   and stream checks/s, and the server CPU per check of each;
5. with the servers gone, the in-process decision (``loadtest.inprocess``);
6. rbloom against pybloom-live (``loadtest.bloom_compare``);
7. with ``--redis``, the list in Redis (``loadtest.redis_bench``: load time,
   Redis memory, a replica's memory, its latency and checks/s beside a
   memory-mode server, delta propagation).

The servers run one process each on 127.0.0.1 free ports; the driver and the
in-process part run in ``spawn`` child processes, so no GIL is shared.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import bloom_compare, inprocess
from loadtest.common import (
    BATCH_SIZE,
    ServerProcess,
    add_common_args,
    bare_argv,
    ensure_list,
    finish,
    in_child,
    list_status,
    log,
    machine,
    ours_argv,
    revision,
    server_env,
)
from loadtest.driver import Phase, TargetSpec, drive
from loadtest.report import bloom_table, noise_rows, render, table, variant_table
from loadtest.traffic import build_traffic
from shixin.v1 import check_pb2 as pb
from shixin_check.domain.model import CHINA_TZ

VARIANTS = ("logs", "auth")


def phases(quick: bool, seconds: float | None, rate: float) -> list[Phase]:
    s = seconds or (3.0 if quick else 4.0)
    return [
        Phase("unary_c1", "unary", 1, 20_000, s),
        Phase("unary_c32", "unary", 32, 100_000, s),
        Phase("unary_paced", "paced", 0, 100_000, s, rate=rate),
        Phase("batch100", "batch", 4, 10_000, s),
        Phase("stream", "stream", 4, 1_000_000, s),
    ]


def variant_setup(variant: str, log_dir: Path) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """(extra serve flags, call metadata) of ``ours+<variant>``."""
    if variant == "logs":
        return [
            "--hit-log",
            str(log_dir / "hits.jsonl"),
            "--audit-log",
            str(log_dir / "audit.jsonl"),
        ], ()
    if variant == "auth":
        from shixin_check.server.auth import add_key

        keys_file = log_dir / "keys.json"
        keys_file.unlink(missing_ok=True)
        key = add_key(keys_file, "bench", "*", ["check", "status"])
        return ["--keys-file", str(keys_file)], (("authorization", f"Bearer {key}"),)
    raise ValueError(f"unknown variant {variant!r}")


def run_rpc(
    args: argparse.Namespace,
    list_path: Path,
    tiny_path: Path,
    log_dir: Path,
    requests: list[bytes],
    batches: list[bytes],
) -> dict[str, Any]:
    env = server_env()
    out: dict[str, Any] = {"variants": {}}
    servers: list[ServerProcess] = []
    try:
        log("our server on a 1-entry list: the memory baseline")
        base = ServerProcess("ours-baseline", ours_argv(tiny_path, []), log_dir, env)
        servers.append(base)
        base.wait_announced(60)
        base.wait_serving(60)
        out["rss_baseline"] = base.rss()
        base.stop()

        log(f"our server on {list_path.name}: loading")
        ours = ServerProcess("ours", ours_argv(list_path, []), log_dir, env)
        servers.append(ours)
        ours.wait_announced(60)
        out["rss_at_announce"] = ours.rss()
        out["load_s"] = ours.wait_serving(args.load_timeout)
        time.sleep(0.5)  # let the loader's garbage go before reading RSS
        out["rss_loaded"] = ours.rss()
        status = list_status(ours.address)
        out["entries_total"] = status.entries_total
        out["subject_keys"] = status.subject_keys
        log(f"loaded {status.entries_total:,} entries in {out['load_s']:.1f}s")
        targets = [TargetSpec("ours", ours.address, ours.proc.pid)]
        variants: list[ServerProcess] = []

        # One at a time: each load uses every core.
        for variant in args.variants:
            name = f"ours+{variant}"
            extra, metadata = variant_setup(variant, log_dir)
            log(f"{name} ({' '.join(extra)}): loading")
            server = ServerProcess(name, ours_argv(list_path, extra), log_dir, env)
            servers.append(server)
            variants.append(server)
            server.wait_announced(60)
            load_s = server.wait_serving(args.load_timeout)
            time.sleep(0.5)
            out["variants"][name] = {"flags": extra, "load_s": load_s, "rss_loaded": server.rss()}
            targets.append(TargetSpec(name, server.address, server.proc.pid, metadata))

        bare = ServerProcess("bare", bare_argv(), log_dir, env)
        servers.append(bare)
        bare.wait_announced(60)
        out["rss_bare"] = bare.rss()
        targets.append(TargetSpec("bare", bare.address, bare.proc.pid))

        plan = phases(args.quick, args.seconds, args.rate)
        rounds = args.rounds or (1 if args.quick else 2)
        log(f"driving {len(plan)} phases x {rounds} rounds x {len(targets)} servers")
        budget = 60 + rounds * len(targets) * sum(p.seconds + 35 for p in plan)
        out["rpc"] = in_child(
            drive, targets, plan, rounds, requests, batches, BATCH_SIZE, timeout=budget
        )
        out["rss_ours_after_load_test"] = ours.rss()
        out["rss_bare_after_load_test"] = bare.rss()
        for server in variants:
            out["variants"][server.name]["rss_after_load_test"] = server.rss()
        if "ours+logs" in out["variants"]:
            out["variants"]["ours+logs"]["log_bytes"] = {
                f.name: f.stat().st_size for f in sorted(log_dir.glob("*.jsonl*"))
            }
    finally:
        for server in servers:
            server.stop()
    return out


# --- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open-loop unary rate/s (default: 25%% of the bare servicer's calls/s)",
    )
    p.add_argument("--calls", type=int, default=100_000, help="in-process calls per series")
    p.add_argument(
        "--bloom-keys",
        type=int,
        default=None,
        help="keys per Bloom filter (default 1,000,000; 200,000 with --quick)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="variants of our server driven beside it, comma-separated: logs (--hit-log and "
        "--audit-log), auth (--keys-file, calls carry a key); 'none' for neither "
        "(default: logs,auth)",
    )
    p.add_argument("--with-logs", action="store_true", help=argparse.SUPPRESS)  # now a variant
    p.add_argument(
        "--redis",
        action="store_true",
        help="also the list in Redis (loadtest.redis_bench): load, memory, replica "
        "latency and checks/s beside a memory-mode server, delta propagation",
    )
    p.add_argument(
        "--deltas", type=int, default=20, help="with --redis: LIST and DELIST deltas timed"
    )
    p.add_argument("--profile", action="store_true", help="cProfile the in-process check mix")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["rpc", "inprocess", "bloom", "redis"],
        help="leave a part out (repeatable)",
    )
    p.add_argument("--load-timeout", type=float, default=900.0, help="seconds to wait for a load")
    args = p.parse_args(argv)
    if args.entries is None:
        args.entries = 100_000 if args.quick else 1_000_000
    if args.bloom_keys is None:
        args.bloom_keys = 200_000 if args.quick else 1_000_000
    if args.traffic is None:
        args.traffic = 10_000 if args.quick else 20_000
    wanted = [v.strip() for v in args.variants.split(",") if v.strip() not in ("", "none")]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    args.variants = [v for v in VARIANTS if v in wanted]
    if args.with_logs and "logs" not in args.variants:
        args.variants.insert(0, "logs")
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
        "revision": revision(),
        "entries": args.entries,
        "seed": args.seed,
        "as_of": as_of.isoformat(),
    }
    list_path, gen_s = ensure_list(args.data_dir, args.entries, args.seed, as_of)
    tiny_path, _ = ensure_list(args.data_dir, 1, args.seed, as_of)
    results["list_file"] = {
        "path": str(list_path),
        "bytes": list_path.stat().st_size,
        "generated_s": gen_s,
    }

    log(f"building {args.traffic:,} requests (1% listed)")
    traffic = build_traffic(args.traffic, args.entries, args.seed, as_of)
    requests = [r.SerializeToString() for r in traffic.requests]
    batches = [
        pb.CheckBatchRequest(checks=traffic.requests[i : i + BATCH_SIZE]).SerializeToString()
        for i in range(0, len(traffic.requests) - BATCH_SIZE + 1, BATCH_SIZE)
    ]
    results["traffic"] = {
        "requests": len(requests),
        "listed": len(traffic.listed),
        "mean_request_bytes": sum(map(len, requests)) / len(requests),
    }

    if "rpc" not in args.skip:
        rpc = run_rpc(args, list_path, tiny_path, log_dir, requests, batches)
        results["rpc"] = rpc.pop("rpc")
        results["variants"] = rpc.pop("variants")
        results["load"] = rpc
    if "inprocess" not in args.skip:
        log("in-process decision (builds its own index)")
        results["inprocess"] = in_child(
            inprocess.run,
            str(list_path),
            [r.SerializeToString() for r in traffic.unlisted],
            [r.SerializeToString() for r in traffic.listed],
            requests,
            args.calls,
            15.0,
            args.profile,
            timeout=args.load_timeout + 300,
        )
    if "bloom" not in args.skip:
        log(f"Bloom filters: {args.bloom_keys:,} keys each")
        results["bloom"] = in_child(
            bloom_compare.compare, args.bloom_keys, min(args.bloom_keys, 200_000), timeout=900
        )
    if args.redis and "redis" not in args.skip:
        from loadtest import redis_bench

        log("the list in Redis")
        results["redis"] = redis_bench.run(args, list_path, traffic, log_dir)
    finish(results, started, args.out)
    m = results["machine"]
    print(
        f"\nshixin-check benchmarks: {args.entries:,} entries, {m['nproc']} x {m['cpu_model']}, "
        f"{m['ram_gib']} GiB, Python {m['python']}, grpcio {m['grpcio']}, "
        f"revision {results['revision']}"
    )
    print(render(table(results)))
    for name in results.get("variants", {}):
        print(f"\n{name} beside ours (same list, same driver, same run)")
        print(render(variant_table(results, name)))
    if results.get("redis"):
        from loadtest import redis_bench

        redis_bench.print_tables(results["redis"])
    if results.get("rpc"):
        print(
            "\nper phase (cores = CPU seconds per second; foreign = other processes on the machine)"
        )
        print(render(noise_rows(results)))
    if results.get("bloom"):
        print()
        print(render(bloom_table(results["bloom"])))
    if results.get("inprocess", {}).get("profile"):
        print("\ncProfile of engine.check over the traffic mix:")
        print(results["inprocess"]["profile"])
    print(f"\ntotal {results['total_s']:.0f}s; server logs in {log_dir}")
    if args.out:
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
