"""Two checks under one check id are two checks; a hit's day is the day its file says.

A check id is a process's random 32-bit prefix and a counter, so two server
processes (replicas, workers, restarts) may draw the same prefix and number a
check each under the same id. The feedback report and the Redis forwarder used
to key on the check id alone and dropped the second, a real denial, as a
duplicate. Here two real servers (in this process, real gRPC, real hit logs,
a real Redis) draw the same prefix: the engine's random draw is pinned, the
one thing no test could wait for. Then the real ``feedback`` command (over the
files, and ``--redis``) must count both, and say so.

A hit stamped in the last fraction of a microsecond of a quarter goes to the
file of that day (``china_day`` floors); the report and the Redis forwarder
must put it in that quarter too, not round it into the next.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import pytest

from shixin_check.clients.check_client import build_request
from shixin_check.domain.decision import MatchOutcome, Query, Verdict
from shixin_check.domain.index import ListedMatch
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, EntryStatus, ListType, Role, china_day
from shixin_check.domain.rules import AIR_TRAVEL, Flight
from shixin_check.loader.index_redis import connect
from shixin_check.loader.publish_redis import publish_snapshot
from shixin_check.server import engine as engine_module
from shixin_check.server.hitlog import HitLog, log_files
from shixin_check.server.hitsink import HitForwarder, hits_stream, read_stream
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, ZHANG, basic_rows, write_jsonl
from tests.processes import run_cli
from tests.test_hit_stream import forwarded_to_the_end, has_a_list
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
PREFIX = "c0111de5"  # the prefix both servers draw


@pytest.fixture
def same_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine started in this test draws ``PREFIX`` as its random check-id prefix."""
    monkeypatch.setattr(engine_module, "secrets", types.SimpleNamespace(token_hex=lambda n: PREFIX))


def quarter_of(stamp: float) -> str:
    day = time.gmtime(stamp + 8 * 3600)
    return f"{day.tm_year}Q{(day.tm_mon - 1) // 3 + 1}"


def hit_records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(raw) for f in log_files(path) for raw in f.read_bytes().splitlines()]


def summary_and_totals(*args: str, out: Path) -> tuple[str, dict[str, object]]:
    """``shixin-check feedback ... --format json --out OUT``: (its summary, the totals)."""
    done = run_cli("feedback", *args, "--format", "json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return done.stderr, orjson.loads(out.read_bytes())["totals"]


def test_two_checks_sharing_a_check_id_are_both_counted(
    serve: Serve, tmp_path: Path, same_prefix: None
) -> None:
    listed = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    logs = [tmp_path / f"r{i}" / "hits.jsonl" for i in (1, 2)]
    ids = []
    for log, number in zip(logs, (ZHANG, LI), strict=True):
        server = serve(listed, hit_log=log)
        reply = server.stub().CheckConsumption(build_request("AIRLINE", id_number=number))
        ids.append(reply.check_id)
    assert ids == [f"{PREFIX}-1"] * 2  # two denials, one check id
    first, second = (hit_records(log)[0] for log in logs)
    assert first["decision"] == second["decision"] == "DENY"
    quarter = quarter_of(float(first["time"]))  # type: ignore[arg-type]
    copy = tmp_path / "copy" / "hits.jsonl"  # the first replica's log given twice
    copy.parent.mkdir()
    copy.write_bytes(logs[0].read_bytes())

    summary, totals = summary_and_totals(
        "--quarter", quarter, "--hit-log", str(logs[0]), str(logs[1]), str(copy),
        out=tmp_path / "report.json",
    )  # fmt: skip
    assert (totals["checks"], totals["denied"]) == (2, 2), summary
    assert (totals["duplicates"], totals["collisions"]) == (1, 1), summary
    assert "2 checks (2 denied" in summary and "1 duplicates" in summary
    assert (
        "1 check sharing a check_id with an earlier, different check (another time or "
        "subject: each counted)"
    ) in summary


@pytest.mark.redis
def test_the_stream_keeps_both_checks_and_each_once(
    redis_server: RedisServer, serve: Serve, tmp_path: Path, same_prefix: None
) -> None:
    client = connect(redis_server.url, timeout=5)
    publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", basic_rows()), SubjectKeyer(SECRET))
    logs = [tmp_path / f"r{i}" / "hits.jsonl" for i in (1, 2)]
    for i, (log, number) in enumerate(zip(logs, (ZHANG, LI), strict=True), 1):
        replica = serve(None, redis=redis_server.url, replica_id=f"r{i}", hit_log=log)
        eventually(partial(has_a_list, replica), "loading the list")
        reply = replica.stub().CheckConsumption(build_request("AIRLINE", id_number=number))
        assert reply.check_id == f"{PREFIX}-1"
        eventually(partial(forwarded_to_the_end, replica), "forwarding the hit log")
    assert client.xlen(hits_stream("shixin")) == 2  # the second was refused as seen before

    again = HitForwarder(client, logs[0])  # the first replica's log forwarded once more
    again.cursor_path.unlink()  # as if it died before saving its cursor
    assert again.forward_once() == 0  # still exactly once
    assert [r["masked_id"] for r in read_stream(client)] == [
        hit_records(log)[0]["masked_id"] for log in logs
    ]

    stamp = float(hit_records(logs[0])[0]["time"])  # type: ignore[arg-type]
    summary, totals = summary_and_totals(
        "--quarter", quarter_of(stamp), "--redis", redis_server.url, out=tmp_path / "r.json"
    )
    assert (totals["checks"], totals["duplicates"], totals["collisions"]) == (2, 0, 1), summary
    client.close()


# --- the last instant of a quarter ---------------------------------------------------

LAST_INSTANT_OF_Q3 = 1790783999.9999998  # 2026-09-30 23:59:59.9999998 in China
FIRST_OF_Q4 = 1790784000.25


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_hit(log: HitLog, check_id: str) -> None:
    match = ListedMatch(
        "E1", ListType.SHIXIN, EntryStatus.ACTIVE, Role.DEBTOR, 0, "(2024)京0105执1001号",
        "北京市朝阳区人民法院", "", "110105********0011", china_day(LAST_INSTANT_OF_Q3) - 10,
        2**31 - 1, (),
    )  # fmt: skip
    query = Query(1, "", ZHANG, Channel.AIRLINE, Flight("CA1", "Y"), 0)
    verdict = Verdict(Decision.DENY, (AIR_TRAVEL,), (MatchOutcome(match, EntryStatus.ACTIVE),))
    log.record(check_id, "", query, verdict, "v1", "m", "t", "peer")


@pytest.fixture
def edge_log(tmp_path: Path) -> Path:
    """A hit log whose first hit came in the last instant of 2026Q3, the next just after
    midnight: the hit log put the first in the 2026-09-30 file."""
    path = tmp_path / "hits.jsonl"
    clock = Clock(LAST_INSTANT_OF_Q3)
    log = HitLog(path, clock=clock)
    write_hit(log, "last-of-q3")
    clock.now = FIRST_OF_Q4
    write_hit(log, "first-of-q4")
    log.close()
    assert [f.name for f in log_files(path)] == ["hits.jsonl.20260930.1", "hits.jsonl"]
    assert hit_records(path)[0]["time"] == LAST_INSTANT_OF_Q3
    return path


def test_a_hit_counts_in_the_quarter_of_its_file(edge_log: Path, tmp_path: Path) -> None:
    for quarter, first_denied in (("2026Q3", "2026-09-30"), ("2026Q4", "2026-10-01")):
        summary, totals = summary_and_totals(
            "--quarter", quarter, "--hit-log", str(edge_log), out=tmp_path / f"{quarter}.json"
        )
        assert (totals["checks"], totals["outside_quarter"]) == (1, 1), (quarter, summary)
        [case] = orjson.loads((tmp_path / f"{quarter}.json").read_bytes())["cases"]
        assert case["channels"][0]["first_denied"] == first_denied


@pytest.mark.redis
def test_the_forwarder_claims_a_hit_in_the_quarter_of_its_file(
    edge_log: Path, redis_server: RedisServer
) -> None:
    client = connect(redis_server.url, timeout=5)
    assert HitForwarder(client, edge_log).forward_once() == 2
    assert sorted(client.keys("shixin:hits:seen:*")) == [
        b"shixin:hits:seen:2026Q3", b"shixin:hits:seen:2026Q4"
    ]  # fmt: skip
    assert client.scard("shixin:hits:seen:2026Q3") == 1
    client.close()
