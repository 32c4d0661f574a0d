"""Our per-check CPU on the server's hot path, in process: before and after a cut.

    python -m loadtest.hotpath_bench [--entries 20000] [--rounds 7] [--out PATH]

A figure, not a test (issue 12, point 3). The profile under load
(``loadtest/profile_bench.py``) says where a server's CPU goes; this measures
the code those cuts touch, with nothing else running in the loop, so a cut
shows as a before/after difference of a fraction of a microsecond:

- ``to_query``: validate and convert one request (``server.convert``);
- ``check_many``: a batch of 100 through ``CheckEngine.check_many`` into a
  ``CheckBatchResponse``, per check (what a batch call costs in our frames);
- ``serialize``: that batch answer's ``SerializeToString``, per check (grpcio
  does it, but the answer's shape is ours);
- ``check``: one unary ``CheckEngine.check``, per call.

Each on two request sets: ``rail``, 100 copies of the unlisted RAIL request
the h2load benches post (``loadtest.workers_bench.grpc_body``), and ``mix``,
10,000 requests of ``loadtest.traffic`` (~99% unlisted people and
organisations on every channel, ~1% listed). Every figure is the best of
``--rounds`` timed passes (the least disturbed by other load on the machine),
each pass bounded in count. The index is a ``MemoryIndex`` of a synthetic list
of ``--entries`` built in this process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.common import DATA_DIR, ensure_list, finish, log, machine, own_folder, revision
from loadtest.inprocess import BENCH_SECRET
from loadtest.traffic import build_traffic
from loadtest.workers_bench import grpc_body
from shixin.v1 import check_pb2 as pb
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.rules import Policy
from shixin_check.loader.columns import keyer_for
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.versions import build_snapshot
from shixin_check.server.convert import to_query
from shixin_check.server.engine import CheckEngine

SEED = 20261124
AS_OF = _dt.date(2026, 11, 30)
BATCH = 100


def best_us(fn: Callable[[], object], per_pass: int, rounds: int) -> float:
    """The fastest of ``rounds`` passes of ``fn()``, in µs per item (``per_pass`` items a pass)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / per_pass * 1e6


def figures(
    engine: CheckEngine, view: Any, keyer: SubjectKeyer, requests: Sequence[pb.CheckRequest],
    rounds: int,
) -> dict[str, float]:  # fmt: skip
    """The four timings over ``requests`` (cut into batches of ``BATCH``)."""
    batches = [requests[i : i + BATCH] for i in range(0, len(requests), BATCH)]
    answers = []
    for batch in batches:
        out = pb.CheckBatchResponse()
        engine.check_many(batch, view, out.results)
        answers.append(out)
    n = len(requests)

    def queries() -> None:
        for r in requests:
            to_query(r, keyer)

    def many() -> None:
        for batch in batches:
            engine.check_many(batch, view, pb.CheckBatchResponse().results)

    def serialize() -> None:
        for out in answers:
            out.SerializeToString()

    def unary() -> None:
        for r in requests:
            engine.check(r, view)

    return {
        "to_query_us": best_us(queries, n, rounds),
        "check_many_us": best_us(many, n, rounds),
        "serialize_us": best_us(serialize, n, rounds),
        "check_us": best_us(unary, n, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--entries", type=int, default=20_000, help="list size")
    p.add_argument("--rounds", type=int, default=7, help="timed passes per figure (best kept)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    own_folder(args.data_dir)
    list_path, _ = ensure_list(args.data_dir, args.entries, SEED, AS_OF)
    keyer = keyer_for(BENCH_SECRET)  # as the server makes it: its keys in C where built
    index = MemoryIndex()
    index.install(build_snapshot(list_path, keyer))
    view = index.current()
    assert view is not None
    engine = CheckEngine(index, keyer, Policy())
    rail = pb.CheckRequest.FromString(grpc_body()[5:])
    sets = {
        "rail": [rail] * 10 * BATCH,
        "mix": build_traffic(10_000, args.entries, SEED, AS_OF).requests,
    }
    results: dict[str, Any] = {"revision": revision(), "machine": machine(), "args": vars(args)}
    for name, requests in sets.items():
        log(f"timing {name}: {len(requests):,} requests, best of {args.rounds}")
        results[name] = figures(engine, view, keyer, requests, args.rounds)
    finish(results, started, args.out)
    print(f"{'µs per check':<14}" + "".join(f"{k[:-3]:>12}" for k in results["rail"]))
    for name in sets:
        print(f"{name:<14}" + "".join(f"{v:>12.2f}" for v in results[name].values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
