"""The offline-capable client on the realistic traffic: what it answers itself, and how fast.

A gateway made with ``CheckClient(..., prefilter=True)`` answers the checks
its Bloom prefilter clears without a round trip (``clients/prefilter.py``).
This measures, against one server process in the default configuration
(memory mode, ``shixin-check serve --list FILE``) and the traffic of the
other benchmarks (``loadtest/traffic.py``: 1% listed, a rail-heavy mix):

- the download: the filter's size, the first GetPrefilter (which builds it
  from the list file on the server), a second full one (cached), and a
  refresh of a current filter (additions: none);
- the share of checks answered locally, overall and of the unlisted (the
  rest of the unlisted are the filter's false positives);
- latency per check, one at a time from one blocking client: local answers,
  the same client's server round trips, and a plain client (prefilter off)
  for every request;
- batches of 100 with and without the prefilter.

    python -m loadtest.prefilter_bench [--entries N] [--traffic N] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.common import (
    DATA_DIR,
    ServerProcess,
    add_keep_logs,
    ensure_list,
    finish,
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
from loadtest.inprocess import summarize
from loadtest.report import render
from loadtest.traffic import Traffic, build_traffic
from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import CheckClient
from shixin_check.clients.errors import CheckError
from shixin_check.domain.model import CHINA_TZ

BATCH = 100


def _timed(call: Callable[[], Any]) -> tuple[int, Any]:
    t0 = time.perf_counter_ns()
    result = call()
    return time.perf_counter_ns() - t0, result


def _download_figures(address: str, audit: Path, limit: float) -> dict[str, Any]:
    """The first fetch (the server builds the filter: PREFILTER_BUILDING until it has it),
    a whole download of the cached filter, and a refresh of a current one."""
    t0 = time.perf_counter()
    with CheckClient(address, prefilter=True, local_audit_path=audit, timeout=10) as client:
        state = client.prefilter
        assert state is not None
        while state.filter is None:
            if time.perf_counter() - t0 > limit:
                raise RuntimeError(f"no filter after {limit:.0f}s: {state.last_error}")
            with contextlib.suppress(CheckError):
                client.refresh_prefilter()
        first_s = time.perf_counter() - t0
        items = state.filter.items
        size = len(state.filter.bloom.save_bytes())
        current_ns, _ = _timed(client.refresh_prefilter)  # additions: none
        state.filter = None  # forget it: the next refresh is a whole download
        cached_ns, _ = _timed(client.refresh_prefilter)
    return {
        "filter_bytes": size,
        "filter_items": items,
        "first_download_s": first_s,
        "cached_download_ms": cached_ns / 1e6,
        "current_refresh_ms": current_ns / 1e6,
    }


def _one_by_one(
    client: CheckClient, requests: Sequence[pb.CheckRequest]
) -> tuple[list[int], list[int], list[pb.CheckResponse]]:
    """(local samples ns, server samples ns, answers) of one check at a time."""
    local, remote, answers = [], [], []
    for request in requests:
        ns, answer = _timed(lambda r=request: client.check(r))  # type: ignore[misc]
        (local if answer.decided_locally else remote).append(ns)
        answers.append(answer)
    return local, remote, answers


def _batches(client: CheckClient, requests: Sequence[pb.CheckRequest]) -> list[int]:
    samples = []
    for at in range(0, len(requests) - BATCH + 1, BATCH):
        ns, _ = _timed(lambda at=at: client.check_batch(requests[at : at + BATCH]))  # type: ignore[misc]
        samples.append(ns)
    return samples


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    as_of = _dt.datetime.now(CHINA_TZ).date()
    results: dict[str, Any] = {
        "machine": machine(),
        "revision": revision(),
        "entries": args.entries,
        "traffic": args.traffic,
        "as_of": as_of.isoformat(),
    }
    own_folder(args.data_dir)
    list_path, _ = ensure_list(args.data_dir, args.entries, args.seed, as_of)
    traffic = build_traffic(args.traffic, args.entries, args.seed, as_of)
    with run_folder(args.data_dir, "prefilter-", args.keep_logs) as log_dir:
        measure(args, list_path, traffic, log_dir, results)
    finish(results, started, args.out)
    return results


def measure(
    args: argparse.Namespace, list_path: Path, traffic: Traffic, log_dir: Path,
    results: dict[str, Any],
) -> None:  # fmt: skip
    """Start the server in ``log_dir`` (its log and the local audit file go there too),
    take every figure into ``results``, stop it."""
    audit = log_dir / "local-audit.jsonl"
    server = ServerProcess("ours", ours_argv(list_path, []), log_dir, server_env())
    try:
        step("the server's first load")
        address = server.wait_announced(60)
        results["load_s"] = server.wait_serving(args.load_timeout)
        log(f"serving {args.entries:,} entries on {address}; downloading the filter")
        step("downloading the filter")
        results["download"] = _download_figures(address, audit, args.load_timeout)
        requests = traffic.requests
        step("checks, prefilter off")
        with CheckClient(address, timeout=10) as plain:
            for request in requests[:200]:  # warm the channel and the server
                plain.check(request)
            log(f"{len(requests):,} checks one at a time, prefilter off")
            _, plain_ns, plain_answers = _one_by_one(plain, requests)
            plain_batches = _batches(plain, requests)
        step("checks, prefilter on")
        with CheckClient(address, prefilter=True, local_audit_path=audit, timeout=10) as gateway:
            for request in requests[:200]:
                gateway.check(request)
            log(f"{len(requests):,} checks one at a time, prefilter on")
            local_ns, remote_ns, answers = _one_by_one(gateway, requests)
            gateway_batches = _batches(gateway, requests)
        unlisted = {r.request_id for r in traffic.unlisted}
        local_ids = {a.request_id for a in answers if a.decided_locally}
        same = sum(
            (a.decision, list(a.reasons), list(a.matches))
            == (b.decision, list(b.reasons), list(b.matches))
            for a, b in zip(answers, plain_answers, strict=True)
        )
        results["share"] = {
            "checks": len(requests),
            "answered_locally": len(local_ns),
            "local_share": len(local_ns) / len(requests),
            "unlisted": len(unlisted),
            "unlisted_cleared_locally": len(local_ids & unlisted),
            "unlisted_sent_to_server": len(unlisted - local_ids),  # false positives
            "listed_answered_locally": len(local_ids - unlisted),  # must be 0
            "answers_equal_plain_client": same,
        }
        results["latency"] = {
            "local": summarize(local_ns),
            "prefilter_client_server_round_trip": summarize(remote_ns),
            "plain_client_round_trip": summarize(plain_ns),
            "batch100_prefilter": summarize(gateway_batches),
            "batch100_plain": summarize(plain_batches),
        }
    finally:
        server.stop()


def table(r: dict[str, Any]) -> str:
    d, s, lat = r["download"], r["share"], r["latency"]

    def us(name: str, key: str) -> str:
        value = lat[name].get(key)
        return "-" if value is None else f"{value:,.1f}"

    rows = [
        ["figure", "value"],
        ["list entries", f"{r['entries']:,}"],
        ["filter size / items", f"{d['filter_bytes']:,} bytes / {d['filter_items']:,} keys"],
        ["first download (server builds it from the list file)", f"{d['first_download_s']:.2f} s"],
        ["a cached whole download", f"{d['cached_download_ms']:.1f} ms"],
        ["refresh of a current filter (additions: none)", f"{d['current_refresh_ms']:.2f} ms"],
        ["checks answered locally", f"{s['answered_locally']:,} of {s['checks']:,} "
                                    f"({100 * s['local_share']:.2f}%)"],
        ["unlisted sent to the server (false positives)",
         f"{s['unlisted_sent_to_server']:,} of {s['unlisted']:,}"],
        ["listed answered locally (must be 0)", f"{s['listed_answered_locally']}"],
        ["answers equal to the plain client's", f"{s['answers_equal_plain_client']:,}"],
    ]  # fmt: skip
    check_rows = [["per check, µs", "p50", "p99", "mean", "checks"]]
    for label, name in (
        ("local answer (prefilter on)", "local"),
        ("server round trip (prefilter on, the rest)", "prefilter_client_server_round_trip"),
        ("server round trip (prefilter off, every check)", "plain_client_round_trip"),
    ):
        check_rows.append(
            [label, us(name, "p50_us"), us(name, "p99_us"), us(name, "mean_us"),
             f"{lat[name].get('n', 0):,}"]
        )  # fmt: skip
    batch_rows = [[f"per call of a batch of {BATCH} checks, µs", "p50", "p99", "mean", "calls"]]
    for label, name in (
        ("prefilter on", "batch100_prefilter"),
        ("prefilter off", "batch100_plain"),
    ):
        batch_rows.append(
            [label, us(name, "p50_us"), us(name, "p99_us"), us(name, "mean_us"),
             f"{lat[name].get('n', 0):,}"]
        )  # fmt: skip
    return render(rows) + "\n\n" + render(check_rows) + "\n\n" + render(batch_rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=1_000_000, help="list size")
    p.add_argument("--traffic", type=int, default=20_000, help="distinct requests")
    p.add_argument("--seed", type=int, default=20261124, help="list and traffic seed")
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds to load the list")
    p.add_argument(
        "--data-dir", type=Path, default=DATA_DIR,
        help="where list files are cached and server logs go",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    add_keep_logs(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    results = run(parse_args(argv))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main("prefilter_bench", main))
