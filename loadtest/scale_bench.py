"""The cost curve of a list from 100 thousand to 10 million entries, end to end.

Per size: ``gen-data`` (cached under ``--data-dir`` by size, seed and day),
``validate``, the first load of ``serve --list DIR --key-secret-file K
--index-dir D`` (parse, compile, map: announce to health SERVING), the
compiled folder on disk, its Bloom filter and that filter's measured false
positive rate, a restart (which must map, not re-parse: its "mapping its
compiled index" log line is checked), the memory of one server and of
``--workers 2`` (RSS, and PSS/USS since mapped pages are shared), and
``decide()`` per call against the mapped version, unlisted and listed.

The servers' logs, the key secret and the compiled index go to a folder of the
run under ``--data-dir``, removed at the end however the run ends (``--keep-logs``
keeps it); the generated lists (``scale-N-seedS-DAY/list``) stay, for the next run.

Not a test: a benchmark, its figures in ``docs/benchmarks.md`` ("Scale").
Redis is left out (``loadtest.redis_bench`` times ``load --redis``).

    python -m loadtest.scale_bench --sizes 100000,1000000,10000000 --out scale.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import (
    DATA_DIR,
    ServerProcess,
    add_keep_logs,
    cli_argv,
    finish,
    log,
    machine,
    own_folder,
    revision,
    run_folder,
    run_main,
    server_env,
    step,
)
from loadtest.inprocess import BENCH_SECRET, time_calls
from loadtest.traffic import build_traffic, unlisted_person
from shixin_check.domain.decision import decide
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import china_day
from shixin_check.domain.rules import Policy
from shixin_check.loader.compiled import map_compiled
from shixin_check.loader.index_memory import MemoryIndex, MemoryView, Overlay
from shixin_check.server.engine import CheckEngine

TARGETS = {
    "first_load_s": 60.0,  # 10M entries, 2 cores
    "restart_s": 5.0,
    "index_bytes": 2 * 1024**3,
    "decide_listed_p99_us": 20.0,
}


def size_dir(data_dir: Path, entries: int, seed: int, as_of: _dt.date) -> Path:
    return data_dir / f"scale-{entries}-seed{seed}-{as_of.isoformat()}"


def ensure_snapshot(folder: Path, entries: int, seed: int, as_of: _dt.date) -> tuple[Path, dict]:
    """``folder/list/snapshot-0001.jsonl`` made by ``gen-data``; its generate time is kept
    in ``folder/generate.json`` so a cached run still reports it."""
    path = folder / "list" / "snapshot-0001.jsonl"
    record = folder / "generate.json"
    if path.exists() and record.exists():
        got = json.loads(record.read_text())
        return path, {"generate_s": got.get("generate_s"), "cached": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"gen-data {entries:,} entries -> {path}")
    t0 = time.perf_counter()
    subprocess.run(
        cli_argv(["gen-data", "--count", str(entries), "--seed", str(seed),
                  "--as-of", as_of.isoformat(), "--out", str(path)]),
        check=True, stdout=subprocess.DEVNULL, timeout=3600,
    )  # fmt: skip
    took = time.perf_counter() - t0
    record.write_text(json.dumps({"generate_s": took}))
    return path, {"generate_s": took, "cached": False}


def validate(path: Path, timeout: float) -> dict[str, Any]:
    log(f"validate {path}")
    t0 = time.perf_counter()
    done = subprocess.run(
        cli_argv(["validate", str(path)]), capture_output=True, text=True, timeout=timeout
    )
    return {"validate_s": time.perf_counter() - t0, "validate_rc": done.returncode}


def memory(pid: int) -> dict[str, int]:
    full = psutil.Process(pid).memory_full_info()
    return {"rss": full.rss, "pss": getattr(full, "pss", 0), "uss": full.uss}


def serve(
    name: str, list_dir: Path, key: Path, index_dir: Path, log_dir: Path, timeout: float,
    workers: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Start ``serve``, time it to SERVING, take its memory, stop it."""
    argv = cli_argv(["serve", "--list", str(list_dir), "--key-secret-file", str(key),
                     "--index-dir", str(index_dir), "--listen", "127.0.0.1:0"])  # fmt: skip
    if workers > 1:
        argv += ["--workers", str(workers)]
    server = ServerProcess(name, argv, log_dir, server_env())
    try:
        server.wait_announced(timeout)
        if workers > 1:  # "serving on HOST:PORT (2 workers)": not the last word
            server.address = _supervisor_address(server)
        announce_s = server.announced_at - server.started
        serving_s = server.wait_serving(timeout)
        if workers > 1:  # every worker SERVING: each loads on its own; wait for the log
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = Path(server.stderr.name).read_text(errors="replace")
                if "every worker is past its first load" in text:
                    break
                time.sleep(0.1)
            serving_all_s = time.perf_counter() - server.announced_at
        time.sleep(1.0)  # let the load's garbage go
        out: dict[str, Any] = {"announce_s": announce_s, "to_serving_s": serving_s}
        if workers > 1:
            out["all_workers_loaded_s"] = serving_all_s
            sup = psutil.Process(server.proc.pid)
            procs = [sup, *sup.children(recursive=True)]
            each = [{"pid": p.pid, "role": role(p, sup), **memory(p.pid)} for p in procs]
            out["processes"] = each
            out["total_pss"] = sum(m["pss"] for m in each)
            out["total_rss"] = sum(m["rss"] for m in each)
        else:
            out.update(memory(server.proc.pid))
    finally:
        server.stop()
    text = Path(server.stderr.name).read_text(errors="replace")
    out["log_compiled"] = text.count("compiled into")
    out["log_mapped"] = text.count("mapping its compiled index")
    return out


def role(proc: psutil.Process, supervisor: psutil.Process) -> str:
    """What a process of ``serve --workers N`` is: the supervisor, a worker, or
    multiprocessing's resource tracker (the supervisor's helper, no list in it)."""
    if proc.pid == supervisor.pid:
        return "supervisor"
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return "worker" if "spawn_main" in cmdline or "forkserver" in cmdline else "other"


def _supervisor_address(server: ServerProcess) -> str:
    """HOST:PORT from the supervisor's "starting N workers on HOST:PORT" log line."""
    text = Path(server.stderr.name).read_text(errors="replace")
    return text.split(" workers on ", 1)[1].split()[0]


def compiled_sizes(index_dir: Path) -> dict[str, Any]:
    versions = [p for p in index_dir.glob("v-*") if p.is_dir()]
    if len(versions) != 1:
        return {"compiled_versions": len(versions)}
    folder = versions[0]
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    return {
        "compiled_folder": str(folder),
        "compiled_bytes": sum(files.values()),
        "bloom_bytes": files.get("bloom.bin", 0),
        "compiled_files": files,
    }


def in_process(
    folder: Path, entries: int, seed: int, as_of: _dt.date, probes: int, calls: int
) -> dict[str, Any]:
    """Map the compiled folder; the Bloom filter's false positives; ``decide()`` per call."""
    keyer = SubjectKeyer(BENCH_SECRET)
    t0 = time.perf_counter()
    base, info = map_compiled(folder, keyer.fingerprint)
    map_s = time.perf_counter() - t0
    view = MemoryView(base, Overlay(), info)
    # People born 1925-1940: the generator lists none of them (loadtest.traffic).
    rng = random.Random(seed ^ 0xB100)
    numbers = {unlisted_person(rng).number for _ in range(probes)}
    positives = listed = 0
    t0 = time.perf_counter()
    for number in numbers:
        key = keyer.subject_key(IdType.RESIDENT_ID, number)
        if view.might_contain(key):
            positives += 1
            listed += bool(view.look_up(key))
    fp_s = time.perf_counter() - t0
    index = MemoryIndex()
    index.install(view)
    policy = Policy()
    engine = CheckEngine(index, keyer, policy)
    traffic = build_traffic(20_000, entries, seed, as_of)
    q_unlisted = [engine.query(r) for r in traffic.unlisted]
    q_listed = [engine.query(r) for r in traffic.listed]
    today = china_day(time.time())

    def decide_one(q: Any) -> object:
        return decide(view, q, keyer, policy, today)

    found = sum(1 for q in q_listed if view.look_up(q.subject_key))
    return {
        "map_s": map_s,
        "bloom_probes": len(numbers),
        "bloom_positives": positives,
        "bloom_fp_rate": positives / len(numbers),
        "bloom_probe_s": fp_s,
        "probes_really_listed": listed,
        "listed_queries_found": f"{found}/{len(q_listed)}",
        "decide_unlisted": time_calls(decide_one, q_unlisted, calls, 10.0),
        "decide_listed": time_calls(decide_one, q_listed, calls, 10.0),
    }


def run_size(
    args: argparse.Namespace, entries: int, as_of: _dt.date, log_dir: Path, key: Path
) -> dict[str, Any]:
    folder = size_dir(args.data_dir, entries, args.seed, as_of)
    out: dict[str, Any] = {"entries": entries}
    path, gen = ensure_snapshot(folder, entries, args.seed, as_of)
    out.update(gen)
    out["list_bytes"] = path.stat().st_size
    scale = max(1.0, entries / 1_000_000)
    if "validate" not in args.skip:
        out.update(validate(path, timeout=300 * scale))
    index_dir = log_dir / f"index-{entries}"  # the run's own: removed with its folder
    timeout = args.load_timeout * scale
    step(f"{entries:,} entries: the first load")
    log(f"{entries:,}: first load (parse + compile + map)")
    out["first"] = serve(f"first-{entries}", path.parent, key, index_dir, log_dir, timeout)
    out.update(compiled_sizes(index_dir))
    step(f"{entries:,} entries: the restart")
    log(f"{entries:,}: restart (map)")
    out["restart"] = serve(f"restart-{entries}", path.parent, key, index_dir, log_dir, timeout)
    if "workers" not in args.skip:
        step(f"{entries:,} entries: --workers 2")
        log(f"{entries:,}: --workers 2")
        out["workers2"] = serve(
            f"workers2-{entries}", path.parent, key, index_dir, log_dir, timeout, workers=2
        )
    if "inprocess" not in args.skip and "compiled_folder" in out:
        log(f"{entries:,}: Bloom false positives and decide() on the mapped version")
        out["inprocess"] = in_process(
            Path(out["compiled_folder"]), entries, args.seed, as_of, args.probes, args.calls
        )
    return out


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024**2:,.1f}"


def _f(n: float | None, fmt: str = ".1f") -> str:
    return "-" if n is None else format(n, fmt)


def table(results: dict[str, Any]) -> str:
    rows = [
        "| entries | generate s | validate s | first load s | compiled MiB | bloom MiB "
        "| bloom FP | restart s | mapped | RSS / PSS / USS MiB (1 server) "
        "| 2 workers: PSS of each process; total, MiB | decide unlisted p50/p99 µs "
        "| decide listed p50/p99 µs |",
        "|" + " --- |" * 13,
    ]
    for r in results["sizes"]:
        first, restart = r.get("first", {}), r.get("restart", {})
        w2 = r.get("workers2", {})
        ip = r.get("inprocess", {})
        du, dl = ip.get("decide_unlisted", {}), ip.get("decide_listed", {})
        each = ", ".join(f"{p.get('role', 'process')} {_mib(p['pss'])}"
                         for p in w2.get("processes", []))  # fmt: skip
        rows.append(
            f"| {r['entries']:,} | {_f(r.get('generate_s'))}"
            f"{' (cached)' if r.get('cached') else ''} | {_f(r.get('validate_s'))} "
            f"| {_f(first.get('to_serving_s'), '.2f')} | {_mib(r.get('compiled_bytes'))} "
            f"| {_mib(r.get('bloom_bytes'))} | {_f(ip.get('bloom_fp_rate'), '.4%')} "
            f"| {_f(restart.get('to_serving_s'), '.2f')} "
            f"| {'yes' if restart.get('log_mapped') and not restart.get('log_compiled') else 'NO'} "
            f"| {_mib(restart.get('rss'))} / {_mib(restart.get('pss'))} / "
            f"{_mib(restart.get('uss'))} | {each}; {_mib(w2.get('total_pss'))} "
            f"| {_f(du.get('p50_us'), '.2f')} / {_f(du.get('p99_us'), '.2f')} "
            f"| {_f(dl.get('p50_us'), '.2f')} / {_f(dl.get('p99_us'), '.2f')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--probes", type=int, default=200_000, help="unlisted keys for the FP rate")
    p.add_argument("--calls", type=int, default=200_000, help="decide() calls per figure")
    p.add_argument(
        "--load-timeout", type=float, default=300.0, help="seconds per 1M entries (min 1M)"
    )
    p.add_argument(
        "--skip", action="append", default=[], choices=["validate", "workers", "inprocess"]
    )
    add_keep_logs(p)
    args = p.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    as_of = _dt.date.fromordinal(_dt.date(1970, 1, 1).toordinal() + china_day(time.time()))
    own_folder(args.data_dir)
    with run_folder(args.data_dir, "scale-logs-", args.keep_logs) as log_dir:
        results = measure(args, sizes, as_of, log_dir)
    print(table(results))
    return 0


def measure(
    args: argparse.Namespace, sizes: list[int], as_of: _dt.date, log_dir: Path
) -> dict[str, Any]:
    """Every size, its servers' logs, key secret and compiled index in ``log_dir``."""
    key = log_dir / "key"
    key.write_bytes(BENCH_SECRET)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, "-m", "loadtest.scale_bench", *sys.argv[1:]]),
        "revision": revision(),
        "machine": machine(),
        "as_of": as_of.isoformat(),
        "log_dir": str(log_dir),
        "targets": TARGETS,
        "sizes": [],
    }  # fmt: skip
    try:
        for entries in sizes:
            try:
                results["sizes"].append(run_size(args, entries, as_of, log_dir, key))
            except Exception as exc:  # noqa: BLE001 - keep the sizes already measured
                log(f"{entries:,}: failed: {exc!r}")
                results["sizes"].append({"entries": entries, "error": repr(exc)})
            finally:  # its compiled index (GBs at 10M) is not needed past its size
                shutil.rmtree(log_dir / f"index-{entries}", ignore_errors=True)
            finish(results, started, args.out)
    finally:
        finish(results, started, args.out)
    return results


if __name__ == "__main__":
    sys.exit(run_main("scale_bench", main))
