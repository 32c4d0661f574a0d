"""Every replica's hits in one Redis stream: once each, even across outages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import redis

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.decision import MatchOutcome, Query, Verdict
from shixin_check.domain.index import ListedMatch
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, EntryStatus, ListType, Role, china_day
from shixin_check.domain.rules import AIR_TRAVEL, Flight
from shixin_check.loader.index_redis import connect
from shixin_check.loader.publish_redis import publish_snapshot
from shixin_check.server.feedback import build_report
from shixin_check.server.hitlog import WITHDRAWN_UNAUDITED, HitLog, log_files
from shixin_check.server.hitsink import HitForwarder, hits_stream, read_stream
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, WANG, ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_redis_replicas import read_only_copy_of
from tests.waiting import eventually

pytestmark = pytest.mark.redis
Serve = Callable[..., RunningServer]


def has_a_list(replica: RunningServer) -> bool:
    return replica.service.engine.source.current() is not None


def forwarded_to_the_end(replica: RunningServer) -> bool:
    """The replica's forwarder has saved a cursor (inode, offset) at the end of its log."""
    forwarder = replica.service.forwarder
    assert forwarder is not None
    try:
        inode, offset = map(int, forwarder.cursor_path.read_text().split())
    except (OSError, ValueError):
        return False
    live = log_files(forwarder.hit_log)[-1].stat()
    return (inode, offset) == (live.st_ino, live.st_size)


def quarter_now() -> str:
    today = time.gmtime(time.time() + 8 * 3600)
    return f"{today.tm_year}Q{(today.tm_mon - 1) // 3 + 1}"


def test_two_replicas_hits_appear_once_in_one_report(
    redis_server: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    client = connect(redis_server.url, timeout=5)
    publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", basic_rows()), SubjectKeyer(SECRET))
    replicas = [
        serve(
            None,
            redis=redis_server.url,
            replica_id=f"r{i}",
            hit_log=tmp_path / f"r{i}" / "hits.log",
        )
        for i in (1, 2)
    ]
    denied = 0
    for i, replica in enumerate(replicas):
        eventually(partial(has_a_list, replica), "loading the list")
        stub = replica.stub()
        for number in (ZHANG, LI, WANG, ZHAO):  # three listed, one not
            stub.CheckConsumption(build_request("AIRLINE", id_number=number, merchant_id=f"m{i}"))
        batch = [build_request("AIRLINE", id_number=n) for n in (ZHANG, ZHAO)]
        stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=batch))
        denied += 4
    for replica in replicas:  # every record a replica logged has gone to the stream ...
        eventually(partial(forwarded_to_the_end, replica), "forwarding the whole hit log")
    assert client.xlen(hits_stream("shixin")) == denied  # ... and each went once
    report = build_report(list(read_stream(client)), quarter_now())
    assert report.totals.denied == denied
    by_case = {c.case_number: c.channels["AIRLINE"] for c in report.cases}
    # Zhang (E1, twice per replica) and Wang (E3, once) share a case number; Li is alone
    assert by_case["(2024)京0105执1001号"].denied == 6
    assert by_case["(2023)沪0104执88号"].denied == 2
    assert by_case["(2024)京0105执1001号"].merchants == {"m0", "m1"}
    client.close()


def _hit(log: HitLog, n: int) -> None:
    match = ListedMatch(
        f"E{n}", ListType.SHIXIN, EntryStatus.ACTIVE, Role.DEBTOR, 0, f"(2024)京0105执{n}号",
        "北京市朝阳区人民法院", "", "110105********0011", china_day(time.time()) - 10, 2**31 - 1, (),
    )  # fmt: skip
    query = Query(n, "", ZHANG, Channel.AIRLINE, Flight("CA1", "Y"), 0)
    verdict = Verdict(Decision.DENY, (AIR_TRAVEL,), (MatchOutcome(match, EntryStatus.ACTIVE),))
    log.record(f"check-{n}", f"r{n}", query, verdict, "v1", "m", "t", "peer")


def test_spooled_hits_are_forwarded_once_after_an_outage(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "hits.log"
    log = HitLog(path, max_bytes=2000)  # small: rotates every few records
    client = connect(redis_server.url, timeout=1)
    forwarder = HitForwarder(client, path)
    for n in range(1, 6):
        _hit(log, n)
    assert forwarder.forward_once() == 5
    redis_server.stop()
    for n in range(6, 16):  # answered while Redis is down: they wait in the log
        _hit(log, n)
    with pytest.raises(redis.RedisError):
        forwarder.forward_once()
    redis_server.start()
    assert forwarder.forward_once() == 10
    forwarder.cursor_path.unlink()  # as if the process died before saving its cursor
    assert forwarder.forward_once() == 0  # every record again, none added twice
    for n in range(16, 18):
        _hit(log, n)
    assert forwarder.forward_once() == 2
    log.close()
    ids = [r["check_id"] for r in read_stream(client)]
    assert ids == [f"check-{n}" for n in range(1, 18)]
    assert len(list(path.parent.glob("hits.log.*"))) >= 2  # rotation happened on the way
    client.close()


def test_hits_written_after_the_live_file_was_truncated_are_forwarded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """logrotate's ``copytruncate`` cut the live file under a cursor past its new end:
    nothing was forwarded until the file grew past it, and then from the middle of a
    record (unreadable), so the hits written meanwhile never reached the stream."""
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(redis_server.url, timeout=5)
    forwarder = HitForwarder(client, path)
    for n in range(1, 6):
        _hit(log, n)
    assert forwarder.forward_once() == 5
    path.with_name("hits.log.1").write_bytes(path.read_bytes())  # as copytruncate does
    os.truncate(path, 0)
    for n in range(6, 9):  # fewer bytes than the cursor's offset
        _hit(log, n)
    assert forwarder.forward_once() == 3
    for n in range(9, 12):  # past it now
        _hit(log, n)
    assert forwarder.forward_once() == 3
    # cut again, and written past the cursor before the forwarder looks
    os.truncate(path, 0)
    for n in range(12, 20):
        _hit(log, n)
    assert forwarder.forward_once() == 8
    log.close()
    assert [r["check_id"] for r in read_stream(client)] == [f"check-{n}" for n in range(1, 20)]
    client.close()


def test_withdrawals_are_forwarded_once_so_the_stream_reports_what_the_files_do(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A withdrawal (hits of a call whose answer never left) goes to the stream
    with the hits, once, and the report from the stream leaves out the same checks
    as the report from the files."""
    path = tmp_path / "hits.log"
    log = HitLog(path, max_bytes=2000)  # small: rotates every few records
    client = connect(redis_server.url, timeout=1)
    events: list[tuple[str, str]] = []
    forwarder = HitForwarder(client, path, on_event=lambda *event: events.append(event))
    for n in range(1, 5):
        _hit(log, n)
    log.withdraw(["check-3", "check-4"], WITHDRAWN_UNAUDITED)  # a batch's two hits
    _hit(log, 5)  # its retry
    assert forwarder.forward_once() == 6
    forwarder.cursor_path.unlink()  # as if the process died before saving its cursor
    assert forwarder.forward_once() == 0  # the withdrawal, too, is not added twice
    log.withdraw(["check-1"], WITHDRAWN_UNAUDITED)
    assert forwarder.forward_once() == 1
    log.withdraw(["check-1", "check-2"], "mended by hand")  # names one more: another record
    assert forwarder.forward_once() == 1
    log.close()
    assert events == []  # no record was taken for an unreadable line
    records = list(read_stream(client))
    assert [r.get("check_id") or r["withdrawn"] for r in records] == [
        "check-1", "check-2", "check-3", "check-4", ["check-3", "check-4"], "check-5",
        ["check-1"], ["check-1", "check-2"],
    ]  # fmt: skip
    from_stream = build_report(records, quarter_now()).totals
    assert (from_stream.checks, from_stream.withdrawn, from_stream.skipped_lines) == (1, 4, 0)
    assert from_stream == build_report(log_files(path), quarter_now()).totals
    client.close()


def test_a_redis_that_refuses_the_hits_or_is_down_is_said_once_until_it_clears(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The forwarder against a read-only Redis replica, then against no Redis at all:
    each is one event (what is wrong, what to do, no record's check id nor the refused
    command), each try counted, and one event when forwarding works again; the
    records wait in the local log meanwhile and are forwarded once each."""
    with read_only_copy_of(redis_server, tmp_path / "copy") as read_only_copy:
        _refused_then_down(read_only_copy, tmp_path)


def _refused_then_down(read_only_copy: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(read_only_copy.url, timeout=1)
    events: list[tuple[str, str]] = []
    forwarder = HitForwarder(client, path, interval=0.05, url=read_only_copy.url,
                             on_event=lambda *event: events.append(event))  # fmt: skip
    for n in range(1, 4):
        _hit(log, n)
    forwarder.start()
    try:
        eventually(lambda: forwarder.errors.count >= 5, "refused tries counted")
        [(what, detail)] = events  # one event, not one a try
        assert what == "hits-spooling"
        assert detail.startswith(
            f"cannot forward hits to {read_only_copy.url}: it is a read-only replica ("
        ), detail
        assert "point --redis at the master, or use Sentinel" in detail, detail
        assert "check-" not in detail and "EVALSHA" not in detail, detail
        assert client.xlen(hits_stream("shixin")) == 0

        client.replicaof("NO", "ONE")  # promoted: it takes writes now
        eventually(lambda: client.xlen(hits_stream("shixin")) == 3, "forwarded once promoted")
        eventually(lambda: events[-1] == ("hits-forwarding", ""), "said to work again")
        assert len(events) == 2

        read_only_copy.stop()  # Redis down: the same, in its own words
        _hit(log, 4)
        counted = forwarder.errors.count
        eventually(lambda: forwarder.errors.count >= counted + 4, "failed tries counted")
        assert [what for what, _ in events] == ["hits-spooling", "hits-forwarding", "hits-spooling"]
        assert events[2][1].startswith(f"cannot forward hits to {read_only_copy.url}: "), events
        assert "check-" not in events[2][1], events
        read_only_copy.start()
        eventually(lambda: client.xlen(hits_stream("shixin")) == 4, "forwarded once back")
        eventually(lambda: len(events) == 4, "said to work again")
        assert events[3] == ("hits-forwarding", "")
    finally:
        forwarder.stop()
        log.close()
    assert [r["check_id"] for r in read_stream(client)] == [f"check-{n}" for n in range(1, 5)]
    client.close()


def test_a_local_failure_to_forward_is_said_once_and_the_forwarder_carries_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The forwarder's cursor cannot be saved (a directory where its temporary file
    goes: a real OSError, as a full disk gives): one event naming it, the thread
    alive, and once it clears the records are forwarded, each once."""
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(redis_server.url, timeout=1)
    events: list[tuple[str, str]] = []
    forwarder = HitForwarder(client, path, interval=0.05,
                             on_event=lambda *event: events.append(event))  # fmt: skip
    blocker = forwarder.cursor_path.with_name(forwarder.cursor_path.name + ".part")
    blocker.mkdir()
    for n in range(1, 3):
        _hit(log, n)
    forwarder.start()
    try:
        eventually(lambda: bool(events), "the failure said")
        time.sleep(0.5)  # several more rounds fail the same way: not said again
        [(what, detail)] = events
        assert what == "hits-spooling"
        assert detail.startswith(f"cannot forward hits from {path}: "), detail
        assert str(blocker) in detail, detail
        blocker.rmdir()
        eventually(lambda: events[-1] == ("hits-forwarding", ""), "said to work again")
        _hit(log, 3)
        eventually(lambda: client.xlen(hits_stream("shixin")) == 3, "forwarded after it cleared")
    finally:
        forwarder.stop()
        log.close()
    assert [r["check_id"] for r in read_stream(client)] == ["check-1", "check-2", "check-3"]
    client.close()
