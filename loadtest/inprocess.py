"""The decision inside the server, timed call by call (no gRPC).

Two levels, as in DESIGN §6 "Decision inside the server":

- ``decide()``: the domain decision on a prebuilt ``Query`` (Bloom filter,
  index look-up, lifecycle and rule table), what the p50 < 5 µs unlisted /
  p99 < 20 µs listed targets are about;
- ``CheckEngine.check()``: the whole per-check work of the servicer, from the
  parsed ``CheckRequest`` (validation, normalisation, keyed hash) to the built
  ``CheckResponse``: what a batch or stream pays per check on top of grpcio.

Each call is timed with ``perf_counter_ns``; the timer's own cost (the
``floor`` figure) is included in every sample and reported so it can be
discounted. Every loop stops after ``max_calls`` or ``max_seconds``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.decision import decide
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import china_day
from shixin_check.domain.rules import Policy
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.versions import build_snapshot
from shixin_check.server.engine import CheckEngine

BENCH_SECRET = b"loadtest-secret-not-for-production"


def summarize(samples_ns: Sequence[int], elapsed_s: float | None = None) -> dict[str, float]:
    """Percentiles in µs of per-call samples (and calls/s when ``elapsed_s`` is given)."""
    s = sorted(samples_ns)
    n = len(s)
    if n == 0:
        return {"n": 0}

    def pct(p: float) -> float:
        return s[min(n - 1, int(p * n))] / 1000.0

    out = {
        "n": n,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": s[-1] / 1000.0,
        "mean_us": sum(s) / n / 1000.0,
    }
    if elapsed_s:
        out["per_s"] = n / elapsed_s
    return out


def time_calls(
    fn: Callable[[Any], object], args: Sequence[Any], max_calls: int, max_seconds: float
) -> dict[str, float]:
    """Time ``fn(arg)`` per call, cycling through ``args``."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    n_args = len(args)
    deadline = clock() + int(max_seconds * 1e9)
    i = 0
    while i < max_calls:
        arg = args[i % n_args]
        t0 = clock()
        fn(arg)
        t1 = clock()
        append(t1 - t0)
        i += 1
        if i & 1023 == 0 and t1 > deadline:
            break
    return summarize(samples)


def run(
    list_path: str,
    unlisted: Sequence[bytes],
    listed: Sequence[bytes],
    mixed: Sequence[bytes],
    max_calls: int,
    max_seconds: float,
    profile: bool = False,
) -> dict[str, Any]:
    """Build the index from ``list_path`` and time decisions (requests as wire bytes)."""
    keyer = SubjectKeyer(BENCH_SECRET)
    t0 = time.perf_counter()
    view = build_snapshot(Path(list_path), keyer)
    build_s = time.perf_counter() - t0
    index = MemoryIndex()
    index.install(view)
    policy = Policy()
    engine = CheckEngine(index, keyer, policy)
    parse = pb.CheckRequest.FromString
    req_unlisted = [parse(b) for b in unlisted]
    req_listed = [parse(b) for b in listed]
    req_mixed = [parse(b) for b in mixed]
    q_unlisted = [engine.query(r) for r in req_unlisted]
    q_listed = [engine.query(r) for r in req_listed]
    today = china_day(time.time())

    def decide_one(q: Any) -> object:
        return decide(view, q, keyer, policy, today)

    def check_one(r: pb.CheckRequest) -> object:
        return engine.check(r, view)

    out: dict[str, Any] = {
        "build_s": build_s,
        "entries": view.info.counts.total,
        "subject_keys": view.info.counts.subject_keys,
        "floor": time_calls(lambda _: None, [None], max_calls, max_seconds),
        "subject_key": time_calls(
            lambda n: keyer.subject_key(IdType.RESIDENT_ID, n),
            [r.person.id_number for r in req_unlisted if r.person.id_number][:1000],
            max_calls,
            max_seconds,
        ),
        "decide_unlisted": time_calls(decide_one, q_unlisted, max_calls, max_seconds),
        "decide_listed": time_calls(decide_one, q_listed, max_calls, max_seconds),
        "check_unlisted": time_calls(check_one, req_unlisted, max_calls, max_seconds),
        "check_listed": time_calls(check_one, req_listed, max_calls, max_seconds),
    }
    # The mix as a batch sees it, without per-call timers: checks/s on one core.
    n = min(max_calls, 200_000)
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    done = 0
    while done < n and time.perf_counter() < deadline:
        for r in req_mixed[: n - done]:
            engine.check(r, view)
        done += min(len(req_mixed), n - done)
    out["check_mixed_per_s"] = done / (time.perf_counter() - t0)
    if profile:
        out["profile"] = _profile(lambda: [engine.check(r, view) for r in req_mixed])
    return out


def _profile(fn: Callable[[], object]) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()
