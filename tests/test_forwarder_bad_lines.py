"""The hit forwarder gets past what it cannot read, and never dies of a bug.

A line it cannot make a record of is skipped and said, the lines around it
forwarded; a withdrawal appended by hand with an ISO time is forwarded, since
the report from the files honours it. Anything else that stops a round is
said once with its traceback, counted where a stuck forwarder shows
(``errors``: ``shixin_redis_errors_total``), and tried again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shixin_check.loader.index_redis import connect
from shixin_check.server.feedback import build_report
from shixin_check.server.hitlog import HitLog, log_files
from shixin_check.server.hitsink import HitForwarder, hits_stream, read_stream
from tests.conftest import RedisServer
from tests.test_hit_stream import _hit, quarter_now
from tests.waiting import eventually

pytestmark = pytest.mark.redis

BY_HAND = b'{"withdrawn": "check-2", "reason": "by hand", "time": "2027-01-01T10:00:00+08:00"}'
NULL_ID = b'{"check_id": null, "decision": "DENY", "time": 1700000000}'
NOT_JSON = b"half a record, then a crash"


def test_lines_it_cannot_read_are_skipped_and_the_hits_around_them_forwarded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A withdrawal appended by hand with an ISO time, a hit whose check_id is null and
    a line that is not JSON, between hits: the forwarder thread forwards every hit and
    the withdrawal once each, hits written after them too, says each line it skips,
    counts no error; the report from the stream is the report from the files."""
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(redis_server.url, timeout=1)
    events: list[tuple[str, str]] = []
    forwarder = HitForwarder(client, path, interval=0.05,
                             on_event=lambda *event: events.append(event))  # fmt: skip
    stream = hits_stream("shixin")
    try:
        for n in (1, 2):
            _hit(log, n)
        with path.open("ab") as out:  # by hand, while the server runs
            out.write(b"\n".join((BY_HAND, NULL_ID, NOT_JSON)) + b"\n")
        forwarder.start()
        eventually(lambda: client.xlen(stream) == 3, "the hits and the withdrawal forwarded")
        _hit(log, 3)  # answered after the lines it cannot read
        eventually(lambda: client.xlen(stream) == 4, "a later hit forwarded")
    finally:
        forwarder.stop()
        log.close()
    assert [r.get("check_id") or r["withdrawn"] for r in read_stream(client)] == [
        "check-1", "check-2", "check-2", "check-3",
    ]  # fmt: skip
    assert events == [("hits-unreadable", NULL_ID.decode()), ("hits-unreadable", NOT_JSON.decode())]
    assert forwarder.errors.count == 0
    forwarder.cursor_path.unlink()  # as if the process died before saving its cursor
    assert forwarder.forward_once() == 0  # the withdrawal, too, is not added twice
    from_stream = build_report(list(read_stream(client)), quarter_now()).totals
    assert (from_stream.checks, from_stream.withdrawn) == (2, 1)
    assert from_stream.skipped_lines == 0  # the two lines never reached the stream
    from_files = build_report(log_files(path), quarter_now()).totals
    assert (from_files.checks, from_files.withdrawn, from_files.skipped_lines) == (2, 1, 2)
    client.close()


def test_a_bug_in_a_round_is_said_once_with_its_traceback_counted_and_tried_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A round that fails with an exception no one expects (here the event hook, while
    it is broken): the thread lives on; one event says it is a bug, with its traceback;
    each failed round is counted in ``errors`` (shixin_redis_errors_total), so a
    forwarder that cannot get past it shows; once it clears the hits held back are
    forwarded, each once, and that is said."""
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(redis_server.url, timeout=1)
    events: list[tuple[str, str]] = []
    broken = True

    def hook(what: str, detail: str) -> None:
        if broken and what == "hits-unreadable":
            raise RuntimeError("the event hook is broken")
        events.append((what, detail))

    forwarder = HitForwarder(client, path, interval=0.05, on_event=hook)
    try:
        _hit(log, 1)
        with path.open("ab") as out:
            out.write(NOT_JSON + b"\n")
        _hit(log, 2)
        forwarder.start()
        eventually(lambda: forwarder.errors.count >= 4, "the failed rounds counted")
        [(what, detail)] = events  # one event, not one a round
        assert what == "hits-spooling"
        assert detail.startswith(f"cannot forward hits from {path}: an unexpected error (a bug"), (
            detail
        )
        assert "RuntimeError: the event hook is broken" in detail, detail
        assert "Traceback (most recent call last)" in detail and "in hook" in detail, detail
        assert "shixin_redis_errors_total" in detail, detail
        assert client.xlen(hits_stream("shixin")) == 0  # held back, not lost
        broken = False
        eventually(lambda: events[-1] == ("hits-forwarding", ""), "said to work again")
        _hit(log, 3)
        eventually(lambda: client.xlen(hits_stream("shixin")) == 3, "forwarded once it cleared")
    finally:
        forwarder.stop()
        log.close()
    assert [what for what, _ in events] == ["hits-spooling", "hits-unreadable", "hits-forwarding"]
    assert [r["check_id"] for r in read_stream(client)] == ["check-1", "check-2", "check-3"]
    client.close()


def test_a_bug_in_the_last_round_at_stop_is_said_and_stop_returns(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``stop`` forwards what was answered just before it; a bug there is said, and
    ``stop`` returns all the same (the server closes its logs after it); the hits wait
    in the log for the next start."""
    path = tmp_path / "hits.log"
    log = HitLog(path)
    client = connect(redis_server.url, timeout=1)
    events: list[tuple[str, str]] = []

    def hook(what: str, detail: str) -> None:
        if what == "hits-unreadable":
            raise RuntimeError("the event hook is broken")
        events.append((what, detail))

    forwarder = HitForwarder(client, path, on_event=hook)  # never started: stop's round only
    _hit(log, 1)
    with path.open("ab") as out:
        out.write(NOT_JSON + b"\n")
    forwarder.stop()
    log.close()
    [(what, detail)] = events
    assert what == "hits-spooling" and "RuntimeError: the event hook is broken" in detail, events
    assert client.xlen(hits_stream("shixin")) == 0
    again = HitForwarder(client, path, on_event=lambda *event: None)  # the next start
    assert again.forward_once() == 1
    client.close()
