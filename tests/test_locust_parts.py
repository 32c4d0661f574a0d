"""The locust load test's pure parts, without locust (``loadtest/bookings.py``,
``loadtest/latency_report.py``).

``tests/test_locust_smoke.py`` runs the whole locustfile against a server; these check
the pieces it is built from on their own: the µs buckets and their percentiles against
a plain sorted list, the ``-H`` parser, the answer checks on hand-built responses, and
the pre-built pools (the same in every process, listed people where asked). Nothing
here imports locust (which would monkey-patch this process with gevent).
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bookings import (
    FLOWS,
    MATCHED,
    NOT_RESTRICTED,
    RESTRICTED,
    UNLISTED,
    BadHost,
    Call,
    Options,
    Pools,
    grpc_target,
    listed_people,
    wrong_answer,
)
from loadtest.latency_report import Latencies, bucket_us, percentile, report_lines
from shixin.v1 import check_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
AS_OF = _dt.date(2026, 11, 30)


def nearest_rank(values: list[int], q: float) -> int:
    """The ``q`` quantile of ``values`` by the nearest-rank rule, from the sorted list."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# --- µs buckets and percentiles -----------------------------------------------------


def test_modules_import_without_locust_or_gevent() -> None:
    """In a fresh interpreter, so another test's import of locust cannot hide one."""
    code = (
        "import sys; import loadtest.bookings, loadtest.latency_report; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'locust', 'gevent'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_percentile_over_buckets_is_the_nearest_rank_of_the_sorted_list(q: float) -> None:
    rng = random.Random(3)
    values = [rng.randrange(1, 1024) for _ in range(5000)]  # below 1,024 µs: exact buckets
    lat = Latencies("unary", "x")
    for us in values:
        lat.record(us * 1000 + 999, 1, 0)  # ns, truncated to whole µs
    assert sum(lat.counts.values()) == len(values)
    assert percentile(lat.counts, len(values), q) == nearest_rank(values, q)


def test_percentile_of_a_round_share_is_not_pushed_up_by_float_drift() -> None:
    # 0.9 * 10 is 9.000000000000002 in floats: a naive ceil would give the 10th value.
    counts = {us: 1 for us in range(1, 11)}
    assert percentile(counts, 10, 0.9) == 9
    assert percentile(counts, 10, 0.5) == 5
    assert percentile(counts, 10, 0.0) == 1  # the rank is at least the first call


def test_buckets_are_exact_below_1024_us_and_keep_10_leading_bits_above() -> None:
    assert bucket_us(0) == 0
    assert bucket_us(1023_999) == 1023
    assert bucket_us(1024_000) == 1024
    assert bucket_us(1025_000) == 1024  # 1025 needs 11 bits: the last one dropped
    assert bucket_us(1_234_567_000) == 1_234_567 >> 11 << 11
    for us in range(1024, 3_000_000, 997):
        got = bucket_us(us * 1000)
        # rounded down by under 1/512 of the figure (about 0.2%: 9,997 µs falls in 9,984)
        assert got <= us and (us - got) / us < 1 / 512, us
        low = got.bit_length() - 10
        assert got >> low << low == got, us  # no more than 10 significant bits


def test_latencies_record_add_and_clear() -> None:
    lat = Latencies("batch", "rail order")
    lat.record(250_400, 3, 1)
    lat.record(250_900, 2, 0)
    lat.record(5_003_999, 1, 1)  # 5,003 µs: 13 bits, the last 3 dropped
    assert lat.counts == {250: 2, 5000: 1} and lat.checks == 6 and lat.listed == 2
    other = Latencies("batch", "rail order")
    other.add(lat.counts, lat.checks, lat.listed)
    other.add({250: 1}, 1, 0)
    assert other.counts == {250: 3, 5000: 1} and other.checks == 7 and other.listed == 2
    lat.clear()
    assert lat.counts == {} and lat.checks == 0 and lat.listed == 0


def test_report_lines_with_no_calls_says_so() -> None:
    assert report_lines([Latencies("unary", "hotel check-in")], 10.0, 1.0, 1) == [
        "shixin-check: no calls were made"
    ]


def test_report_lines_table_rows_total_and_cpu() -> None:
    hotel, rail = Latencies("unary", "hotel check-in"), Latencies("batch", "rail order")
    for us in (100, 200, 300, 400):
        hotel.record(us * 1000, 1, 0)
    for us in (500, 600):
        rail.record(us * 1000, 3, 1)
    lines = report_lines([rail, hotel, Latencies("unary", "unused")], 2.0, 0.5, 2)
    assert lines[0].startswith("shixin-check latency per call in µs, client side, over 2.0 s")
    assert lines[1].split() == ["type", "name", "calls", "checks", "listed", "calls/s",
                                "checks/s", "p50", "p90", "p99", "p99.9", "max"]  # fmt: skip
    # Sorted by name; the empty kind left out; then every call together.
    assert lines[2].split() == ["unary", "hotel", "check-in", "4", "4", "0", "2", "2",
                                "200", "400", "400", "400", "400"]  # fmt: skip
    assert lines[3].split() == ["batch", "rail", "order", "2", "6", "2", "1", "3",
                                "500", "600", "600", "600", "600"]  # fmt: skip
    assert lines[4].split() == ["all", "6", "10", "2", "3", "5",
                                "300", "600", "600", "600", "600"]  # fmt: skip
    assert lines[5] == (
        "shixin-check locust: 3 calls/s, 5 checks/s; CPU 0.50 s in 2 process(es) running "
        "users (0.25 cores): 83,333 µs per call, 50,000 µs per check"
    )
    assert len(lines) == 6


# --- the -H parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1:50051", "localhost:1", "grpc.example.cn:65535", "[::1]:50051"]
)
def test_host_port_is_accepted_as_it_is(host: str) -> None:
    assert grpc_target(host) == host


@pytest.mark.parametrize(
    ("host", "said"),
    [
        (None, "no host: give the gRPC server as -H HOST:PORT"),
        ("", "no host: give the gRPC server as -H HOST:PORT"),
        ("http://127.0.0.1:50051", "-H 'http://127.0.0.1:50051' is a URL, not HOST:PORT"),
        ("grpc://127.0.0.1:50051", "is a URL, not HOST:PORT"),
        ("127.0.0.1", "-H '127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:", "-H '127.0.0.1:' is not HOST:PORT"),
        (":50051", "-H ':50051' is not HOST:PORT"),
        ("host:port", "-H 'host:port' is not HOST:PORT"),
        ("127.0.0.1:50051/", "is not HOST:PORT"),
        ("127.0.0.1:0", "-H '127.0.0.1:0': port 0 is not 1 to 65535"),
        ("127.0.0.1:65536", "port 65536 is not 1 to 65535"),
    ],
)
def test_a_host_that_is_not_host_port_is_refused(host: str | None, said: str) -> None:
    with pytest.raises(BadHost) as refused:
        grpc_target(host)
    assert said in str(refused.value)
    assert "e.g. -H 127.0.0.1:50051" in str(refused.value)


# --- answer checks ------------------------------------------------------------------


def call_of(*expect: int) -> Call:
    """A hand-built call of ``len(expect)`` checks, ids r0, r1, ..."""
    return Call(
        batch=len(expect) > 1,
        payload=b"",
        request_ids=tuple(f"r{i}" for i in range(len(expect))),
        expect=expect,
        listed=sum(want != UNLISTED for want in expect),
        latencies=Latencies("unary", "test"),
    )


def answer(request_id: str, decision: str, *codes: str, matches: int = 0) -> pb.CheckResponse:
    return pb.CheckResponse(
        request_id=request_id,
        decision=decision,
        reasons=[pb.Reason(code=code) for code in codes],
        matches=[pb.Match(case_number=f"C{i}") for i in range(matches)],
    )


def test_right_answers_pass() -> None:
    call = call_of(UNLISTED, RESTRICTED, RESTRICTED, NOT_RESTRICTED, MATCHED, MATCHED)
    answers = [
        answer("r0", "ALLOW", "NOT_LISTED"),
        answer("r1", "DENY", "LISTED", matches=1),
        answer("r2", "REVIEW", "LISTED", matches=2),
        answer("r3", "ALLOW", "NOT_RESTRICTED_CLASS", matches=1),
        answer("r4", "ALLOW", "NOT_RESTRICTED_CLASS", matches=1),  # MATCHED: any decision
        answer("r5", "DENY", "LISTED", matches=1),
    ]
    assert wrong_answer(answers, call) is None


@pytest.mark.parametrize(
    ("want", "got", "said"),
    [
        (UNLISTED, answer("r0", "DENY", "LISTED", matches=1), "unlisted person got DENY LISTED, 1 matches"),
        (UNLISTED, answer("r0", "ALLOW", "NOT_LISTED", matches=1), "unlisted person got ALLOW NOT_LISTED, 1 matches"),
        (UNLISTED, answer("r0", "ALLOW"), "unlisted person got ALLOW no reason, 0 matches"),
        (UNLISTED, answer("r0", "ALLOW", "NOT_LISTED", "STALE"), "unlisted person got ALLOW NOT_LISTED+STALE"),
        (RESTRICTED, answer("r0", "ALLOW", "NOT_LISTED"), "listed person got ALLOW NOT_LISTED, 0 matches (--list-seed"),
        (MATCHED, answer("r0", "DENY", "LISTED"), "listed person got DENY LISTED, 0 matches"),
        (RESTRICTED, answer("r0", "ALLOW", "NOT_RESTRICTED_CLASS", matches=1), "listed person, restricted purchase, got ALLOW"),
        (NOT_RESTRICTED, answer("r0", "DENY", "LISTED", matches=1), "listed person, unrestricted purchase, got DENY"),
        (NOT_RESTRICTED, answer("r0", "ALLOW", "LISTED", matches=1), "listed person, unrestricted purchase, got ALLOW LISTED"),
    ],
)  # fmt: skip
def test_a_wrong_answer_is_named(want: int, got: pb.CheckResponse, said: str) -> None:
    verdict = wrong_answer([got], call_of(want))
    assert verdict is not None and verdict.startswith(said), verdict


def test_answers_must_match_the_checks_in_number_and_order() -> None:
    call = call_of(UNLISTED, UNLISTED)
    right = [answer("r0", "ALLOW", "NOT_LISTED"), answer("r1", "ALLOW", "NOT_LISTED")]
    assert wrong_answer(right[:1], call) == "1 answers to 2 checks"
    assert wrong_answer([*right, right[0]], call) == "3 answers to 2 checks"
    assert wrong_answer(right[::-1], call) == "answer out of order: request_id differs"


# --- pre-built pools ----------------------------------------------------------------


def options(listed_share: float = 0.1, pool_size: int = 200) -> Options:
    return Options(7, 1000, AS_OF, listed_share, pool_size, 5.0, None)


def test_listed_people_are_active_and_unexempted_entries_of_the_list() -> None:
    people = listed_people(1000, 7, AS_OF)
    assert 0 < len(people) and len({p.number for p in people}) > 1
    assert people == listed_people(1000, 7, AS_OF)  # the same list, the same people


@pytest.mark.parametrize("flow_key", sorted(FLOWS))
def test_pools_are_the_same_in_every_process_and_parse_back(flow_key: str) -> None:
    first, second = Pools(), Pools()
    first.options = second.options = options()
    calls = first.for_flow(flow_key)
    assert first.for_flow(flow_key) is calls  # built once
    assert [c.payload for c in calls] == [c.payload for c in second.for_flow(flow_key)]
    flow = FLOWS[flow_key]
    assert len(calls) == 200
    for call in calls:
        if call.batch:
            requests = list(pb.CheckBatchRequest.FromString(call.payload).checks)
        else:
            requests = [pb.CheckRequest.FromString(call.payload)]
        assert call.batch == (len(requests) >= flow.batch_from)
        assert tuple(r.request_id for r in requests) == call.request_ids
        assert len(call.expect) == len(requests)
        assert call.listed == sum(want != UNLISTED for want in call.expect)
        assert call.latencies is first.latency("batch" if call.batch else "unary", flow.name)


def test_pools_put_the_listed_share_of_people_among_the_checks() -> None:
    pools = Pools()
    pools.options = options(listed_share=0.1)
    calls = pools.for_flow("rail")
    checks = sum(len(c.expect) for c in calls)
    assert sum(c.listed for c in calls) == round(checks * 0.1)
    none = Pools()
    none.options = options(listed_share=0.0)
    assert sum(c.listed for c in none.for_flow("hotel")) == 0
    tiny = Pools()
    tiny.options = options(listed_share=0.0001, pool_size=10)
    assert sum(c.listed for c in tiny.for_flow("school")) == 1  # a share above 0: at least one


def test_pools_need_the_options_first() -> None:
    with pytest.raises(AssertionError, match="init event"):
        Pools().for_flow("rail")
