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
   (``--keys-file``; every call carries ``authorization: Bearer <key>``);
   ``--variants`` picks them (both by default); every one of ours with
   ``--metrics-listen``, so that it counts the checks it answered itself;
4. the bare servicer (``loadtest.bare_server``) beside them, and the drivers
   of ``loadtest.segments`` measuring every server alike in alternating
   segments (``--drivers``): one call in flight (h2load ``-c 1 -m 1``, every
   call's latency), unary calls/s (h2load ``-c 16 -m 8``), unary calls open
   loop at a moderate rate (h2load ``--rps``, 25% of the bare servicer's
   unary calls/s unless ``--rate``), batch of 100 checks/s (h2load, and
   raw-bytes client processes), stream checks/s (h2load, 1,000 requests per
   call); each with the CPU of the server, of the driver and of everything
   else on the machine, and a ``DRIVER-BOUND`` flag where the driver's CPU
   is not well below the server's;
5. with the servers gone, the in-process decision (``loadtest.inprocess``);
6. rbloom against pybloom-live (``loadtest.bloom_compare``);
7. with ``--redis``, the list in Redis (``loadtest.redis_bench``: load time,
   Redis memory, a replica's memory, its latency and checks/s beside a
   memory-mode server, delta propagation).

The servers run one process each on 127.0.0.1 free ports. The drivers are
h2load (C) and raw-bytes client processes, and the in-process part runs in a
``spawn`` child process, so no GIL is shared. No figure comes from a Python
client that builds and parses messages: such a client spends about as much
CPU per call as the server, so it measures itself (issue 12).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import bloom_compare, inprocess
from loadtest.common import (
    BATCH_SIZE,
    CHILDREN,
    ServerProcess,
    add_common_args,
    bare_argv,
    checks_counted,
    ensure_list,
    finish,
    in_child,
    list_status,
    log,
    machine,
    ours_argv,
    own_folder,
    revision,
    run_folder,
    run_main,
    server_env,
    step,
)
from loadtest.report import (
    Pair,
    bloom_table,
    ratio_rows,
    render,
    segment_notes,
    segment_rows,
    summarise,
    table,
    variant_rows,
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
from shixin_check.domain.model import CHINA_TZ

VARIANTS = ("logs", "auth")
#: The drivers of a run unless ``--drivers`` says otherwise: every figure from a driver
#: that is not the bottleneck (``stream-raw``, a Python stream client as costly per
#: message as the server, only when asked for).
DRIVERS = ("latency", "unary", "paced", "batch-h2load", "batch-raw", "stream-h2load")
METRICS = ["--metrics-listen", "127.0.0.1:0"]
PER_STREAM_CALL = 1000


def variant_setup(variant: str, log_dir: Path) -> tuple[list[str], tuple[str, ...]]:
    """(extra serve flags, headers of every call) of ``ours+<variant>``."""
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
        return ["--keys-file", str(keys_file)], (f"authorization: Bearer {key}",)
    raise ValueError(f"unknown variant {variant!r}")


def rpc_bodies(folder: Path, traffic: Traffic) -> dict[str, Path]:
    """The drivers' bodies from the traffic mix: unary, an unlisted subject (the 99% case);
    a batch of 100 and the stream requests, 1 listed subject in 100."""
    return write_bodies(
        folder,
        traffic.unlisted[0].SerializeToString(),
        interleaved(traffic.listed, traffic.unlisted, STREAM_RING, "s", 0.01),
        interleaved(traffic.listed, traffic.unlisted, BATCH_SIZE, "b", 0.01),
        PER_STREAM_CALL,
    )


def counted_by(server: ServerProcess) -> functools.partial[float]:
    """Its own count of checks answered, from the metrics endpoint it announced."""
    return functools.partial(checks_counted, server.wait_metrics(30))


def run_rpc(
    args: argparse.Namespace,
    list_path: Path,
    tiny_path: Path,
    log_dir: Path,
    bodies: dict[str, Path],
    chosen: list[Driver],
) -> dict[str, Any]:
    env = server_env()
    out: dict[str, Any] = {"variants": {}}
    servers: list[ServerProcess] = []
    try:
        log("our server on a 1-entry list: the memory baseline")
        step("the memory baseline")
        base = ServerProcess("ours-baseline", ours_argv(tiny_path, METRICS), log_dir, env)
        servers.append(base)
        base.wait_announced(60)
        base.wait_serving(60)
        out["rss_baseline"] = base.rss()
        base.stop()

        log(f"our server on {list_path.name}: loading")
        step("loading ours")
        ours = ServerProcess("ours", ours_argv(list_path, METRICS), log_dir, env)
        servers.append(ours)
        ours.wait_announced(60)
        out["rss_at_announce"] = ours.rss()
        targets = [Target("ours", ours.address, (ours.proc.pid,), counted=counted_by(ours))]
        out["load_s"] = ours.wait_serving(args.load_timeout)
        time.sleep(0.5)  # let the loader's garbage go before reading RSS
        out["rss_loaded"] = ours.rss()
        status = list_status(ours.address)
        out["entries_total"] = status.entries_total
        out["subject_keys"] = status.subject_keys
        log(f"loaded {status.entries_total:,} entries in {out['load_s']:.1f}s")
        variants: list[ServerProcess] = []

        # One at a time: each load uses every core.
        for variant in args.variants:
            name = f"ours+{variant}"
            extra, headers = variant_setup(variant, log_dir)
            log(f"{name} ({' '.join(extra)}): loading")
            step(f"loading {name}")
            server = ServerProcess(name, ours_argv(list_path, [*extra, *METRICS]), log_dir, env)
            servers.append(server)
            variants.append(server)
            server.wait_announced(60)
            counted = counted_by(server)
            load_s = server.wait_serving(args.load_timeout)
            time.sleep(0.5)
            out["variants"][name] = {"flags": extra, "load_s": load_s, "rss_loaded": server.rss()}
            targets.append(Target(name, server.address, (server.proc.pid,), headers, counted))

        bare = ServerProcess("bare", bare_argv(), log_dir, env)
        servers.append(bare)
        bare.wait_announced(60)
        out["rss_bare"] = bare.rss()
        targets.append(Target("bare", bare.address, (bare.proc.pid,)))

        plan = plan_from(args, pace_from="bare")
        log(f"driving {len(chosen)} drivers x {plan.rounds} rounds x {len(targets)} servers")
        out["rpc"] = run_segments(targets, chosen, bodies, plan, log_dir)
        CHILDREN.check("the end of the segments")
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


def pairs(variants: list[str]) -> list[Pair]:
    """Every one of ours against bare (judged); each variant against ours (what it costs)."""
    names = ["ours", *(f"ours+{v}" for v in variants)]
    return [*(Pair(n, "bare") for n in names),
            *(Pair(n, "ours", judged=False) for n in names[1:])]  # fmt: skip


# --- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    add_driver_args(p, DRIVERS)
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
    try:
        args.chosen = pick_drivers(args.drivers, DRIVERS, BATCH_SIZE, PER_STREAM_CALL)
    except ValueError as exc:
        p.error(f"--drivers: {exc}")
    if "rpc" not in args.skip and shutil.which("h2load") is None:
        p.error("h2load not found (apt-get install nghttp2-client), or give --skip rpc")
    return args


def print_rpc(rpc: dict[str, Any], chosen: list[Driver], variants: list[str]) -> None:
    """The drivers' tables: every server per driver, then the ratios and their verdicts."""
    print(
        "\nRPC, every server by the same drivers in alternating segments (cores = CPU "
        "seconds per second; foreign = other processes on the machine; x bare, x ours: "
        "ratio of the rates, of the p99s for latency drivers)"
    )
    print(render(segment_rows(rpc["summary"], chosen, pairs(variants))))
    print(
        "\nratios: rate = of the rates (p99s for latency drivers); cpu = base/subject of "
        "the server CPU µs per check, the rate ratio each would reach on a core of its own"
    )
    print(render(ratio_rows(rpc["summary"], chosen, pairs(variants))))
    for line in segment_notes(rpc["segments"]):
        print(line)
    if rpc.get("pace"):
        print(f"paced driver: {rpc['pace']:,.0f} calls/s offered to every server")
    if rpc.get("cut_short"):
        print("CUT SHORT by --max-minutes: some segments did not run")
    decisions = "; ".join(
        f"{name} " + " ".join(f"{k}={v}" for k, v in d.items())
        for name, d in rpc["decisions"].items()
    )
    print(f"answers to one batch of {BATCH_SIZE}, parsed: {decisions}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    as_of = _dt.datetime.now(CHINA_TZ).date()
    own_folder(args.data_dir)
    results: dict[str, Any] = {
        "command": "python -m loadtest.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "revision": revision(),
        "entries": args.entries,
        "seed": args.seed,
        "as_of": as_of.isoformat(),
    }
    step("writing the lists")
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
    results["traffic"] = {
        "requests": len(requests),
        "listed": len(traffic.listed),
        "mean_request_bytes": sum(map(len, requests)) / len(requests),
    }

    with run_folder(args.data_dir, "logs-", args.keep_logs) as log_dir:
        if "rpc" not in args.skip:
            bodies = rpc_bodies(log_dir / "bodies", traffic)
            rpc = run_rpc(args, list_path, tiny_path, log_dir, bodies, args.chosen)
            results["rpc"] = rpc.pop("rpc")
            results["variants"] = rpc.pop("variants")
            results["load"] = rpc
            names = ["ours", *results["variants"], "bare"]
            results["rpc"]["summary"] = summarise(
                results["rpc"]["segments"], args.chosen, names, pairs(args.variants)
            )
        if "inprocess" not in args.skip:
            log("in-process decision (builds its own index)")
            step("the in-process decision")
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
            step("the Bloom filters")
            results["bloom"] = in_child(
                bloom_compare.compare, args.bloom_keys, min(args.bloom_keys, 200_000), timeout=900
            )
        if args.redis and "redis" not in args.skip:
            from loadtest import redis_bench

            log("the list in Redis")
            results["redis"] = redis_bench.run(args, list_path, traffic, log_dir)
    samples = results.get("rpc", {}).get("segments")
    if samples:  # the per-call latencies stay out of the JSON file
        results["rpc"]["segments"] = without_samples(samples)
    finish(results, started, args.out)
    m = results["machine"]
    print(
        f"\nshixin-check benchmarks: {args.entries:,} entries, {m['nproc']} x {m['cpu_model']}, "
        f"{m['ram_gib']} GiB, Python {m['python']}, grpcio {m['grpcio']}, "
        f"revision {results['revision']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in m['load_average_at_end'])}"
    )
    print(render(table(results)))
    if results.get("rpc"):
        print_rpc(results["rpc"], args.chosen, args.variants)
        print()
        print(render(variant_rows(results)))
    if results.get("redis"):
        from loadtest import redis_bench

        redis_bench.print_tables(results["redis"])
    if results.get("bloom"):
        print()
        print(render(bloom_table(results["bloom"])))
    if results.get("inprocess", {}).get("profile"):
        print("\ncProfile of engine.check over the traffic mix:")
        print(results["inprocess"]["profile"])
    print(f"\ntotal {results['total_s']:.0f}s" + (f"; server logs in {log_dir}" if args.keep_logs
                                                   else ""))  # fmt: skip
    if args.out:
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main("bench", main))
