"""A followed list directory serves what the feed says, or says it is behind (issue: feed order).

Real pieces throughout: list files written into a real directory, the real
``DirectoryFollower`` over a real ``Loader`` and ``MemoryIndex`` (polled by
hand where the order of events matters), real servers on 127.0.0.1 (the
``serve`` fixture, or a ``shixin-check serve`` child process), real gRPC.

- Deltas apply in ``seq`` order without a gap: one that arrives before the
  delta it follows, or after a lost one, is refused whole (the list behind,
  naming the missing seqs) and applies once the missing one arrives; a
  restart serves the same.
- After a snapshot without a header, the first delta applied sets the
  numbering; a delta below it, come later, is refused (behind, naming both
  seqs), never skipped as a replay; a restart applies them all in seq order.
- A UTF-8 byte order mark is read past; a file whose kind cannot be told, or
  whose name says otherwise than its content, is refused, never ignored.
- An unreadable file is refused naming it; at start the older snapshot serves.
- *Behind* says what is wrong now: a fixed, deleted or included file no
  longer counts.
- A file written in place is read only once it has settled.
- A snapshot's version label is the same for every load of the same file.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.domain.decision import Query, decide
from shixin_check.domain.errors import LoadRejected
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, EntryStatus, china_day
from shixin_check.domain.rules import Flight, Policy
from shixin_check.loader.feed import pending
from shixin_check.loader.index_memory import MemoryIndex, MemoryView
from shixin_check.loader.versions import DirectoryFollower, Loader, build_snapshot
from tests.conftest import RunningServer
from tests.listdata import LI, WANG, ZHANG, basic_rows, delta, person_entry, rid, write_jsonl
from tests.processes import ServeProcess, free_port, run_cli
from tests.test_failure_paths import decision, header, health
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
LIST_CURRENT = "shixin.v1.ListCurrent"
X = rid("23010219700303005")  # listed by a delta
Y = rid("23010219700404006")  # listed by a later delta
BOM = b"\xef\xbb\xbf"


def lists(number: str, name: str, entry_id: str) -> dict[str, Any]:
    return person_entry(entry_id, number, name)


def status(server: RunningServer) -> pb.ListStatus:
    return server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)


class Feed:
    """A list directory and the real follower over it, polled by hand (no thread)."""

    def __init__(self, folder: Path, keyer: SubjectKeyer) -> None:
        self.folder = folder
        self.keyer = keyer
        self.events: list[tuple[str, str, str]] = []
        self.index = MemoryIndex()
        self.follower = DirectoryFollower(
            folder, Loader(self.index, keyer), self._record, interval=0.05, settle=0.0
        )

    def _record(self, what: str, path: Path, detail: str) -> None:
        self.events.append((what, path.name, detail))

    def start(self) -> Feed:
        self.follower.initial_load()
        return self

    def poll(self) -> None:
        """Two polls: a new file is seen, then (unchanged, settle 0) taken."""
        self.follower.poll_once()
        self.follower.poll_once()

    def write(self, name: str, rows: list[dict[str, Any]]) -> None:
        write_jsonl(self.folder / name, rows)
        self.poll()

    def view(self) -> MemoryView:
        view = self.index.current()
        assert view is not None
        return view

    def decision(self, number: str) -> Decision:
        key = self.keyer.subject_key(IdType.RESIDENT_ID, number)
        query = Query(key, "", "", Channel.AIRLINE, Flight("CA1234", "Y"), 0)
        today = china_day(time.time())
        return decide(self.view(), query, self.keyer, Policy(), today).decision

    @property
    def behind(self) -> tuple[str, str] | None:
        refused = self.index.refused
        return None if refused is None else (Path(refused[0]).name, refused[1])


# --- 1, 2. deltas in seq order, without a gap ------------------------------------------------


def test_a_delta_that_arrives_before_the_one_it_follows_waits_for_it(
    tmp_path: Path, serve: Serve
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(tmp_path)
    stub = server.stub()
    # the feed publishes seq 1 (list X) and seq 2 (delist Zhang); seq 2's file lands first
    write_jsonl(tmp_path / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E1")])
    eventually(lambda: status(server).behind, "delta-0002 refused: seq 1 is missing")
    shown = status(server)
    assert shown.rejected_source.endswith("delta-0002.jsonl")
    assert "seq 2 follows seq 0: delta 1 is missing" in shown.rejected_problem
    assert shown.last_delta_seq == 0
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "health: behind")
    assert health(server.channel) == "SERVING"  # the last good list still answers
    cli = run_cli("status", "--target", server.address)
    assert "BEHIND: " in cli.stdout and "delta 1 is missing" in cli.stdout
    assert decision(stub, ZHANG) == "DENY"  # seq 2 not applied on its own

    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    # seq 1 applies, and then the waiting seq 2: nothing skipped, no longer behind
    eventually(lambda: status(server).last_delta_seq == 2, "seq 1, then seq 2 applied")
    eventually(lambda: not status(server).behind, "no longer behind")
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "list current")
    assert (decision(stub, X), decision(stub, ZHANG)) == ("DENY", "ALLOW")
    live_version = status(server).version

    again = serve(tmp_path)  # a fresh start reads the files in name order: the same list
    shown = status(again)
    assert (shown.version, shown.last_delta_seq, shown.behind) == (live_version, 2, False)
    assert (decision(again.stub(), X), decision(again.stub(), ZHANG)) == ("DENY", "ALLOW")


def test_a_seq_gap_refuses_the_delta_naming_the_missing_seqs(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    feed.write("delta-0002.jsonl", [delta(10, "DELIST", entry_id="E2")])
    assert feed.behind == (
        "delta-0002.jsonl",
        "line 1: seq 10 follows seq 1: deltas 2 to 9 are missing",
    )
    assert feed.view().info.last_delta_seq == 1
    assert feed.decision(LI) is Decision.DENY  # not applied
    assert ("rejected", "delta-0002.jsonl") in [(w, n) for w, n, _ in feed.events]
    # a gap inside one file refuses it just the same
    feed.write(
        "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E2"), delta(4, "DELIST", entry_id="E3")]
    )
    assert feed.behind == ("delta-0002.jsonl", "line 2: seq 4 follows seq 2: delta 3 is missing")
    assert feed.decision(LI) is Decision.DENY
    done = run_cli("validate", str(tmp_path / "delta-0002.jsonl"))
    assert done.returncode == 1 and "line 2: seq 4 follows seq 2: delta 3 is missing" in done.stdout
    # a file read again is harmless: seqs at or below the watermark are skipped
    feed.write(
        "delta-0002.jsonl", [delta(1, "DELIST", entry_id="E1"), delta(2, "DELIST", entry_id="E2")]
    )
    assert feed.behind is None
    assert feed.view().info.last_delta_seq == 2 and feed.decision(LI) is Decision.ALLOW


def test_a_refused_delta_holds_back_the_next_until_it_is_corrected(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0003.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X")),
                                    delta(2, "SUSPEND", entry_id="NO-SUCH")])  # fmt: skip
    assert feed.behind is not None and feed.behind[0] == "delta-0003.jsonl"
    feed.write("delta-0004.jsonl", [delta(3, "LIST", entry=lists(Y, "羊羊", "E-Y"))])
    assert feed.view().info.last_delta_seq == 0  # 0004 waits for 0003's seqs
    assert feed.decision(Y) is Decision.ALLOW
    assert feed.behind is not None and feed.behind[0] == "delta-0003.jsonl"
    assert "delta-0004.jsonl" in feed.behind[1]  # named too, as refused

    feed.write("delta-0003.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X")),
                                    delta(2, "SUSPEND", entry_id="E2")])  # fmt: skip
    view = feed.view()
    assert view.info.last_delta_seq == 3
    assert (feed.decision(X), feed.decision(Y), feed.decision(LI)) == (
        Decision.DENY, Decision.DENY, Decision.ALLOW,
    )  # fmt: skip
    assert feed.behind is None
    loaded = [n for w, n, _ in feed.events if w == "loaded"]
    assert loaded[-2:] == ["delta-0003.jsonl", "delta-0004.jsonl"]

    restarted = Feed(tmp_path, keyer).start()
    assert restarted.view().info.version == view.info.version
    assert restarted.view().info.last_delta_seq == 3 and restarted.behind is None


def test_after_a_snapshot_without_header_the_first_delta_sets_the_seq(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """A snapshot without a header says nothing of where the feed's numbering stands."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0005.jsonl", [delta(5, "DELIST", entry_id="E1")])
    assert feed.behind is None and feed.view().info.last_delta_seq == 5
    feed.write("delta-0007.jsonl", [delta(7, "DELIST", entry_id="E2")])
    assert feed.behind == ("delta-0007.jsonl", "line 1: seq 7 follows seq 5: delta 6 is missing")


def test_deltas_named_out_of_seq_order_apply_at_start_too(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_jsonl(tmp_path / "delta-a.jsonl", [delta(2, "DELIST", entry_id="E1")])
    write_jsonl(tmp_path / "delta-b.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    feed = Feed(tmp_path, keyer).start()
    assert feed.view().info.last_delta_seq == 2 and feed.behind is None
    assert (feed.decision(X), feed.decision(ZHANG)) == (Decision.DENY, Decision.ALLOW)


# --- 2b. after a snapshot without a header, a delta below the first one applied --------------

#: what a delta below the first one applied on the headerless snapshot-0001.jsonl is refused with
BEFORE_FIRST = (
    "seq 4 comes before seq 5, the first delta applied on top of a snapshot without a header "
    "(snapshot-0001.jsonl): its changes are not in the served list; restart the server or "
    "publish a snapshot with a header"
)


def served(stub: pb_grpc.ConsumptionCheckStub) -> pb.ListStatus:
    return stub.GetListStatus(pb.ListStatusRequest(), timeout=5)


def list_behind_metric(port: int) -> float:
    """``shixin_list_behind`` as a Prometheus scrape of ``serve --metrics-listen`` reads it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = [
        line.split()[-1] for line in text.splitlines() if line.startswith("shixin_list_behind ")
    ]
    assert len(found) == 1, text
    return float(found[0])


def test_a_delta_below_the_first_on_a_snapshot_without_header_is_refused_not_skipped(
    tmp_path: Path,
) -> None:
    """Delta 5 applied first on a snapshot without a header set the numbering; delta 4
    (its file still being copied when 5 settled) lands after it. Skipped as a replay,
    the person it lists would be ALLOW with health SERVING: it is refused, the list
    behind naming both seqs, and a restart (every delta in seq order) serves it."""
    feed_dir = tmp_path / "feed"
    feed_dir.mkdir()
    write_jsonl(feed_dir / "snapshot-0001.jsonl", basic_rows())  # no header row
    metrics = free_port()
    server = ServeProcess("--list", str(feed_dir), "--index-dir", "off", "--metrics-listen",
                          f"127.0.0.1:{metrics}", log=tmp_path / "first.log")  # fmt: skip
    channel = grpc.insecure_channel(server.target)
    try:
        server.wait_serving()
        stub = pb_grpc.ConsumptionCheckStub(channel)
        write_jsonl(feed_dir / "delta-0005.jsonl", [delta(5, "DELIST", entry_id="E1")])
        eventually(lambda: served(stub).last_delta_seq == 5, "delta 5 applied")
        assert decision(stub, ZHANG) == "ALLOW" and not served(stub).behind

        write_jsonl(
            feed_dir / "delta-0004.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))]
        )
        eventually(lambda: served(stub).behind, "delta 4 refused, the list behind")
        shown = served(stub)
        assert shown.rejected_source.endswith("delta-0004.jsonl")
        assert shown.rejected_problem == f"line 1: {BEFORE_FIRST}"
        assert shown.last_delta_seq == 5
        eventually(lambda: health(channel, LIST_CURRENT) == "NOT_SERVING", "health: behind")
        assert health(channel) == "SERVING"  # the list as it was still answers, said to be behind
        assert list_behind_metric(metrics) == 1
        cli = run_cli("status", "--target", server.target)
        assert "BEHIND: " in cli.stdout and "seq 4 comes before seq 5" in cli.stdout, cli.stdout
        assert decision(stub, Y) == "ALLOW"  # delta 4 is not in the list served: behind says so

        # the next delta applies; delta 4 is tried again, refused again, not logged again
        write_jsonl(
            feed_dir / "delta-0006.jsonl", [delta(6, "LIST", entry=lists(X, "牛犇", "E-X"))]
        )
        eventually(lambda: served(stub).last_delta_seq == 6, "delta 6 applied")
        assert decision(stub, X) == "DENY"
        shown = served(stub)
        assert shown.behind and shown.rejected_source.endswith("delta-0004.jsonl")
        assert shown.rejected_problem == f"line 1: {BEFORE_FIRST}"
    finally:
        channel.close()
        server.stop()
    output = server.output()
    refusals = [line for line in output.splitlines() if "seq 4 comes before seq 5" in line]
    assert len(refusals) == 1, output
    assert "Traceback" not in output

    # a restart reads every delta again, the lowest seq first: 4, 5, 6; no alarm
    again = ServeProcess("--list", str(feed_dir), "--index-dir", "off", log=tmp_path / "again.log")
    channel = grpc.insecure_channel(again.target)
    try:
        again.wait_serving()
        stub = pb_grpc.ConsumptionCheckStub(channel)
        shown = served(stub)
        assert (shown.last_delta_seq, shown.behind) == (6, False)
        assert health(channel, LIST_CURRENT) == "SERVING"
        assert (decision(stub, Y), decision(stub, X), decision(stub, ZHANG)) == (
            "DENY", "DENY", "ALLOW",
        )  # fmt: skip
        version = shown.version
        # delta 4 copied in again, as the feed may: read again, it applies nothing, quietly
        write_jsonl(
            feed_dir / "delta-0004.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))]
        )
        eventually(lambda: "delta-0004.jsonl" in again.output(), "delta 4 read again")
        shown = served(stub)
        assert (shown.version, shown.last_delta_seq, shown.behind) == (version, 6, False)
        assert health(channel, LIST_CURRENT) == "SERVING"
    finally:
        channel.close()
        again.stop()
    assert "rejected" not in again.output(), again.output()


def test_deltas_on_a_snapshot_without_header_all_apply_at_start_whatever_their_names(
    tmp_path: Path, serve: Serve
) -> None:
    """No false alarm: both deltas there at start, seq 5 in the file named first."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())  # no header row
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(5, "DELIST", entry_id="E1")])
    write_jsonl(tmp_path / "delta-0002.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))])
    server = serve(tmp_path)
    shown = status(server)
    assert (shown.last_delta_seq, shown.behind) == (5, False)
    assert health(server.channel, LIST_CURRENT) == "SERVING"
    stub = server.stub()
    assert (decision(stub, Y), decision(stub, ZHANG)) == ("DENY", "ALLOW")


def test_a_delta_below_the_first_stays_refused_until_a_snapshot_holds_it(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())  # no header row
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0005.jsonl", [delta(5, "DELIST", entry_id="E1")])
    feed.write("delta-0006.jsonl", [delta(6, "DELIST", entry_id="E2")])
    assert feed.view().info.first_delta_seq == 5  # kept through later deltas
    # a bad row too: never taken for a file the version already holds
    feed.write("delta-0004.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y")),
                                    {"seq": 3, "op": "NOPE"}])  # fmt: skip
    assert feed.behind is not None and feed.behind[0] == "delta-0004.jsonl"
    assert "line 2: op" in feed.behind[1]
    feed.write("delta-0004.jsonl", [delta(3, "SUSPEND", entry_id="E3"),
                                    delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))])  # fmt: skip
    assert feed.behind is not None and feed.behind[0] == "delta-0004.jsonl"
    assert feed.behind[1].startswith("line 1: seq 3 comes before seq 5, the first delta")
    assert feed.decision(Y) is Decision.ALLOW and feed.view().info.last_delta_seq == 6
    # ops at or above the first seq and at or below the last are a file read again
    feed.write("delta-0004.jsonl", [delta(5, "DELIST", entry_id="E1")])
    assert feed.behind is None and feed.view().info.last_delta_seq == 6
    feed.write("delta-0004.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))])
    assert feed.behind == ("delta-0004.jsonl", f"line 1: {BEFORE_FIRST}")
    # the feed's next snapshot, with a header, holds seqs up to 6: nothing missing any more
    rows = [r for r in basic_rows() if r["entry_id"] not in ("E1", "E2")]
    feed.write("snapshot-0002.jsonl", [header(6), *rows, lists(Y, "羊羊", "E-Y")])
    assert feed.behind is None and feed.decision(Y) is Decision.DENY
    assert feed.view().info.first_delta_seq == 0  # a new snapshot: reset


class _Op:
    def __init__(self, seq: int, line: int) -> None:
        self.seq, self.line = seq, line


def test_pending_refuses_a_seq_below_the_first_on_a_snapshot_without_header() -> None:
    ops = [_Op(4, 1), _Op(5, 2), _Op(6, 3)]
    with pytest.raises(LoadRejected) as refused:
        pending(ops, 5, first_seq=5, base="snapshot-0001.jsonl")
    assert [str(e) for e in refused.value.errors] == [f"line 1: {BEFORE_FIRST}"]
    assert [op.seq for op in pending(ops, 5, first_seq=4)] == [6]  # 4 and 5: read again
    assert [op.seq for op in pending(ops[1:], 5, first_seq=5)] == [6]
    assert pending(ops[:2], 5) == []  # a snapshot with a header: at or below, a replay
    remedy = "load it first"
    with pytest.raises(LoadRejected, match="header \\(s.jsonl\\): .*; load it first$"):
        pending(ops, 5, first_seq=5, base="s.jsonl", remedy=remedy)


# --- 2c. a snapshot without a header that already holds a delta ------------------------------


def without_e1() -> list[dict[str, Any]]:
    """basic_rows() as the feed's snapshot holding delta 1 (DELIST E1): Zhang not listed."""
    return [row for row in basic_rows() if row["entry_id"] != "E1"]


def test_a_delta_the_snapshot_without_header_holds_is_no_alarm_at_start_or_after_a_restart(
    tmp_path: Path,
) -> None:
    """The snapshot (no header) already holds delta 1: E1 is gone. Delta 1 (DELIST E1)
    changes nothing on it, so it applies as a no-op (no ``no listed entry``), delta 2
    after it; never a BEHIND saying delta 1 is not served (its change is). A restart
    does the same."""
    feed_dir = tmp_path / "feed"
    feed_dir.mkdir()
    write_jsonl(feed_dir / "snapshot-0001.jsonl", without_e1())  # no header row
    write_jsonl(feed_dir / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    write_jsonl(feed_dir / "delta-0002.jsonl", [delta(2, "LIST", entry=lists(X, "牛犇", "E-X"))])
    for start in ("first", "again"):
        server = ServeProcess("--list", str(feed_dir), "--index-dir", "off",
                              log=tmp_path / f"{start}.log")  # fmt: skip
        channel = grpc.insecure_channel(server.target)
        try:
            server.wait_serving()
            stub = pb_grpc.ConsumptionCheckStub(channel)
            shown = served(stub)
            assert (shown.last_delta_seq, shown.behind, shown.rejected_problem) == (2, False, "")
            assert health(channel, LIST_CURRENT) == "SERVING"
            assert (decision(stub, ZHANG), decision(stub, X), decision(stub, LI)) == (
                "ALLOW", "DENY", "DENY",
            )  # fmt: skip
        finally:
            channel.close()
            server.stop()
        output = server.output()
        assert "rejected" not in output and "Traceback" not in output, output


def test_a_new_snapshot_without_header_holding_the_deltas_still_there_is_no_alarm(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Live: the feed's next snapshot, again without a header, holds deltas 1 and 2,
    whose files are still in the folder. On it delta 1 (DELIST E1) changes nothing and
    delta 2 lists X as it is: both apply (delta 1 as a no-op, setting the numbering),
    nothing refused; delta 3 follows."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())  # no header row
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    feed.write("delta-0002.jsonl", [delta(2, "LIST", entry=lists(X, "牛犇", "E-X"))])
    assert feed.view().info.last_delta_seq == 2 and feed.behind is None
    feed.write("snapshot-0002.jsonl", [*without_e1(), lists(X, "牛犇", "E-X")])
    info = feed.view().info
    assert info.source.endswith("snapshot-0002.jsonl")
    assert (info.last_delta_seq, info.first_delta_seq, feed.behind) == (2, 1, None)
    assert (feed.decision(ZHANG), feed.decision(X)) == (Decision.ALLOW, Decision.DENY)
    feed.write("delta-0003.jsonl", [delta(3, "LIST", entry=lists(Y, "羊羊", "E-Y"))])
    assert feed.view().info.last_delta_seq == 3 and feed.behind is None
    assert (feed.decision(ZHANG), feed.decision(X), feed.decision(Y)) == (
        Decision.ALLOW, Decision.DENY, Decision.DENY,
    )  # fmt: skip
    assert not [event for event in feed.events if event[0] == "rejected"]


def test_a_delta_below_the_first_whose_every_change_is_held_is_skipped_not_refused(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Delta 10 came first on a snapshot without a header and set the numbering. A delta
    below it whose every op the list already shows (the snapshot held it) is skipped
    quietly, for every kind of op; one op it does not show refuses it, naming that op."""
    exemption = {"channel": "AIRLINE", "from": "2026-01-01", "until": "2026-12-31"}
    other = {"channel": "RAIL", "from": "2026-01-01", "until": "2026-12-31"}
    li, acme = without_e1()
    li = {**li, "status": "SUSPENDED", "exemptions": [exemption]}
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [li, acme])  # no header row
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0010.jsonl", [delta(10, "LIST", entry=lists(X, "牛犇", "E-X"))])
    version = feed.view().info.version
    feed.write("delta-0001.jsonl", [
        delta(1, "DELIST", entry_id="E1"),  # not listed
        delta(2, "LIST", entry=acme),  # listed just so (Wang, a related person, too)
        delta(3, "SUSPEND", entry_id="E2"),  # suspended
        delta(4, "EXEMPT", entry_id="E2", exemption=exemption),  # it has it
        delta(5, "UNEXEMPT", entry_id="E2", exemption=other),  # it has it not
        delta(6, "LIST", entry=li),
        delta(7, "LIST", entry=lists(X, "牛犇", "E-X")),  # listed by delta 10, just so
    ])  # fmt: skip
    assert feed.behind is None
    assert (feed.view().info.version, feed.view().info.last_delta_seq) == (version, 10)
    assert not [event for event in feed.events if event[0] == "rejected"]

    without_wang = {**acme, "related_persons": []}
    feed.write("delta-0008.jsonl", [
        delta(7, "DELIST", entry_id="E1"),
        delta(8, "LIST", entry=without_wang),  # Wang dropped: not what the list holds
        delta(9, "RESUME", entry_id="E2"),
    ])  # fmt: skip
    assert feed.behind == (
        "delta-0008.jsonl",
        "line 2: seq 8 comes before seq 10, the first delta applied on top of a snapshot "
        "without a header (snapshot-0001.jsonl): its changes are not in the served list; "
        "restart the server or publish a snapshot with a header (and 1 more)",
    )
    assert feed.view().info.version == version
    # the restart applies them all, lowest seq first, and so serves their changes
    restarted = Feed(tmp_path, keyer).start()
    assert restarted.behind is None and restarted.view().info.last_delta_seq == 10
    assert restarted.decision(WANG) is Decision.ALLOW
    held = restarted.view().look_up(keyer.subject_key(IdType.RESIDENT_ID, LI))
    assert [m.status for m in held] == [EntryStatus.ACTIVE]


def test_on_a_snapshot_without_header_each_op_is_judged_after_those_before_it(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """As if each op were a file of its own: a DELIST of an entry an earlier op of the
    file delisted changes nothing. A status change of an entry that is not listed stays
    refused, and on a snapshot with a header so does the DELIST (the strict rule)."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())  # no header row
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [
        delta(1, "LIST", entry=lists(X, "牛犇", "E-X")), delta(2, "DELIST", entry_id="E-X"),
        delta(3, "DELIST", entry_id="E1"), delta(4, "DELIST", entry_id="E1"),
    ])  # fmt: skip
    assert feed.behind is None and feed.view().info.last_delta_seq == 4
    assert (feed.decision(X), feed.decision(ZHANG), feed.decision(LI)) == (
        Decision.ALLOW, Decision.ALLOW, Decision.DENY,
    )  # fmt: skip
    feed.write("delta-0005.jsonl", [delta(5, "SUSPEND", entry_id="E1")])
    assert feed.behind == ("delta-0005.jsonl", "line 1: entry_id: no listed entry 'E1'")

    strict = tmp_path / "strict"
    strict.mkdir()
    write_jsonl(strict / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(strict, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1"),
                                    delta(2, "DELIST", entry_id="E1")])  # fmt: skip
    assert feed.behind == ("delta-0001.jsonl", "line 2: entry_id: no listed entry 'E1'")
    assert feed.view().info.last_delta_seq == 0 and feed.decision(ZHANG) is Decision.DENY


def test_deltas_settling_in_one_poll_on_a_snapshot_without_header_go_lowest_seq_first(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Live, two deltas settle in the same poll; by name delta-a (seq 5) comes before
    delta-b (seq 4). Taken in name order, seq 5 would set the numbering and seq 4 be
    refused below it: they are taken lowest seq first, as a start takes them."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())  # no header row
    feed = Feed(tmp_path, keyer).start()
    write_jsonl(tmp_path / "delta-a.jsonl", [delta(5, "LIST", entry=lists(X, "牛犇", "E-X"))])
    write_jsonl(tmp_path / "delta-b.jsonl", [delta(4, "LIST", entry=lists(Y, "羊羊", "E-Y"))])
    feed.poll()
    info = feed.view().info
    assert (info.last_delta_seq, info.first_delta_seq, feed.behind) == (5, 4, None)
    assert (feed.decision(X), feed.decision(Y)) == (Decision.DENY, Decision.DENY)
    loaded = [name for what, name, _ in feed.events if what == "loaded"]
    assert loaded[-2:] == ["delta-b.jsonl", "delta-a.jsonl"]


# --- 3. a byte order mark; a file whose kind cannot be told ----------------------------------


def test_a_delta_with_a_byte_order_mark_applies(tmp_path: Path, serve: Serve) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(tmp_path)
    body = orjson.dumps(delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))) + b"\n"
    (tmp_path / "delta-0001.jsonl").write_bytes(BOM + body)  # a Windows export
    eventually(lambda: status(server).last_delta_seq == 1, "the BOM delta applied")
    assert decision(server.stub(), X) == "DENY"
    assert not status(server).behind
    done = run_cli("validate", str(tmp_path / "delta-0001.jsonl"))
    assert done.returncode == 0, done.stdout


def test_a_snapshot_with_a_byte_order_mark_keeps_its_header(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    rows = b"".join(orjson.dumps(r) + b"\n" for r in [header(1), *basic_rows()])
    (tmp_path / "snapshot-0001.jsonl").write_bytes(BOM + rows)
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E-included")])
    feed = Feed(tmp_path, keyer).start()
    info = feed.view().info
    assert (info.includes_seq, info.counts.total, feed.behind) == (1, 3, None)
    done = run_cli("validate", str(tmp_path / "snapshot-0001.jsonl"))
    assert done.returncode == 0, done.stdout
    parallel = build_snapshot(tmp_path / "snapshot-0001.jsonl", keyer, workers=2)
    assert (parallel.info.includes_seq, parallel.info.counts.total) == (1, 3)


def test_a_csv_sidecar_with_a_byte_order_mark_is_read(tmp_path: Path, keyer: SubjectKeyer) -> None:
    csv_path = tmp_path / "snapshot-0001.csv"
    csv_path.write_bytes(
        BOM
        + "entry_id,list_type,subject.type,subject.name,subject.id_number,case_number,court\n"
        f"E1,SHIXIN,PERSON,张伟,{ZHANG},(2024)京0105执1001号,北京市朝阳区人民法院\n".encode()
    )
    (tmp_path / "snapshot-0001.csv.meta.json").write_bytes(BOM + orjson.dumps(header(7)))
    feed = Feed(tmp_path, keyer).start()
    assert feed.view().info.includes_seq == 7 and feed.behind is None


def test_a_file_whose_kind_cannot_be_told_is_refused_not_ignored(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    # named a delta, its first row cut: read as a delta, that row reported
    (tmp_path / "delta-0001.jsonl").write_bytes(b'{"seq": 1, "op": "DEL\n')
    feed.poll()
    assert feed.behind is not None
    assert feed.behind[0] == "delta-0001.jsonl" and "line 1: not valid JSON" in feed.behind[1]
    assert not any(w == "ignored" for w, _, _ in feed.events)
    # no telling name, a first row that is not JSON: refused as such
    (tmp_path / "delta-0001.jsonl").unlink()
    (tmp_path / "feed-0002.jsonl").write_bytes(b"\x00garbage\n")
    feed.poll()
    assert feed.behind is not None and feed.behind[0] == "feed-0002.jsonl"
    assert "cannot tell a snapshot from a delta" in feed.behind[1]
    # a snapshot's rows under a delta's name: refused, never taken for an older snapshot
    (tmp_path / "feed-0002.jsonl").unlink()
    write_jsonl(tmp_path / "delta-0002.jsonl", [lists(X, "牛犇", "E-X")])
    feed.poll()
    assert feed.behind is not None and feed.behind[0] == "delta-0002.jsonl"
    assert "is named as a delta but its first row has no op" in feed.behind[1]
    # and a delta's rows under a snapshot's name
    (tmp_path / "delta-0002.jsonl").unlink()
    write_jsonl(tmp_path / "snapshot-0003.jsonl", [delta(1, "DELIST", entry_id="E1")])
    feed.poll()
    assert feed.behind is not None and feed.behind[0] == "snapshot-0003.jsonl"
    assert "is named as a snapshot but its first row has op" in feed.behind[1]
    assert feed.view().info.source.endswith("snapshot-0001.jsonl")
    assert feed.decision(ZHANG) is Decision.DENY and feed.decision(X) is Decision.ALLOW
    done = run_cli("validate", str(tmp_path / "snapshot-0003.jsonl"))
    assert done.returncode == 1 and "is named as a snapshot" in done.stdout


# --- 4. an unreadable file ------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_an_unreadable_snapshot_at_start_falls_back_to_the_older_one(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    feed_dir = tmp_path / "feed"
    feed_dir.mkdir()
    write_jsonl(feed_dir / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    os.symlink("/proc/self/mem", feed_dir / "snapshot-0002.jsonl")  # reading it: EIO
    feed = Feed(feed_dir, keyer).start()
    assert feed.view().info.source.endswith("snapshot-0001.jsonl")
    assert feed.behind is not None and feed.behind[0] == "snapshot-0002.jsonl"
    assert "Input/output error" in feed.behind[1]

    server = ServeProcess("--list", str(feed_dir), "--index-dir", "off", log=tmp_path / "s.log")
    try:
        server.wait_serving()
        cli = run_cli("status", "--target", server.target)
        assert "BEHIND: " in cli.stdout and "snapshot-0002.jsonl" in cli.stdout, cli.stdout
        output = server.output()
        refused = [line for line in output.splitlines() if "snapshot-0002.jsonl" in line]
        assert refused and "Input/output error" in refused[0], output
        assert "Traceback" not in output
    finally:
        server.stop()


# --- 5. behind says what is wrong now ------------------------------------------------------------


def test_a_corrected_delta_clears_behind(tmp_path: Path, keyer: SubjectKeyer) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1"),
                                    delta(2, "DELIST", entry_id="NO-SUCH")])  # fmt: skip
    assert feed.behind is not None
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    assert feed.behind is None
    assert feed.decision(ZHANG) is Decision.ALLOW


def test_a_refused_delta_that_is_deleted_no_longer_counts(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="NO-SUCH")])
    assert feed.behind is not None
    (tmp_path / "delta-0001.jsonl").unlink()
    feed.poll()
    assert feed.behind is None


def test_a_snapshot_that_includes_a_refused_delta_clears_behind(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    feed.write("delta-0002.jsonl", [{**delta(2, "DELIST", entry_id="E2"),
                                     "published_at": "2026-13-01T00:00:00+08:00"}])  # fmt: skip
    assert feed.behind is not None and feed.behind[0] == "delta-0002.jsonl"
    (tmp_path / "delta-0001.jsonl").unlink()  # applied, then cleared away by the operator
    feed.poll()
    # the feed's next snapshot holds seqs 1 and 2
    rows = [r for r in basic_rows() if r["entry_id"] not in ("E1", "E2")]
    feed.write("snapshot-0002.jsonl", [header(2), *rows])
    assert feed.view().info.source.endswith("snapshot-0002.jsonl")
    assert feed.behind is None
    rejected = [(n, d) for w, n, d in feed.events if w == "rejected"]
    assert rejected == [("delta-0002.jsonl", rejected[0][1])]  # reported once, when it came
    assert not any("No such file" in d for _, _, d in feed.events)

    restarted = Feed(tmp_path, keyer).start()
    assert restarted.behind is None and not restarted.events[:-1]  # only "loaded"
    assert restarted.view().info.last_delta_seq == 2


def test_a_newer_snapshot_supersedes_a_refused_one(tmp_path: Path, keyer: SubjectKeyer) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("snapshot-0002.jsonl", [header(0), person_entry("E1", "123", "坏")])
    assert feed.behind is not None and feed.behind[0] == "snapshot-0002.jsonl"
    feed.write("snapshot-0003.jsonl", [header(0), *basic_rows()[1:]])
    assert feed.behind is None and feed.decision(ZHANG) is Decision.ALLOW


# --- 6. a file copied in slowly is read once it has settled ----------------------------------


def test_a_snapshot_copied_in_place_with_a_stall_is_not_read_half_written(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    people = [rid(f"1101051980{1 + i // 28:02d}{1 + i % 28:02d}{i:03d}") for i in range(300)]
    rows = [header(0), *[lists(number, "某", f"E{i}") for i, number in enumerate(people)]]
    lines = [orjson.dumps(r) + b"\n" for r in rows]
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    index = MemoryIndex()
    installed: list[int] = []
    original = index.install

    def install(view: MemoryView) -> None:
        installed.append(view.info.counts.total)
        original(view)

    index.install = install  # type: ignore[method-assign]
    # a 0.1 s poll: by default a new file must stay unchanged for 10 polls, 1 s
    follower = DirectoryFollower(tmp_path, Loader(index, keyer), lambda *_: None, interval=0.1)
    follower.initial_load()
    follower.start()
    try:
        with (tmp_path / "snapshot-0002.jsonl").open("wb") as copy:
            copy.write(b"".join(lines[: len(lines) // 2]))
            copy.flush()
            time.sleep(0.4)  # the copy stalls at a row boundary, for several polls
            view = index.current()
            assert view is not None and view.info.source.endswith("snapshot-0001.jsonl")
            copy.write(b"".join(lines[len(lines) // 2 :]))
        eventually(lambda: _source_is(index, "snapshot-0002.jsonl"), "snapshot-0002 served")
    finally:
        follower.stop()
    assert installed == [3, 300]  # never the half


def _source_is(index: MemoryIndex, name: str) -> bool:
    view = index.current()
    return view is not None and view.info.source.endswith(name)


def test_a_file_still_being_written_at_start_is_left_to_the_poll(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    old = time.time() - 60
    os.utime(tmp_path / "snapshot-0001.jsonl", (old, old))  # long complete
    first, *rest = [orjson.dumps(r) + b"\n" for r in [header(0), *basic_rows()[1:]]]
    copy = (tmp_path / "snapshot-0002.jsonl").open("wb")
    copy.write(first + rest[0])  # a header and one entry: loadable, but half the file
    copy.flush()

    def copy_the_rest() -> None:
        time.sleep(0.1)  # while the start watches the fresh file
        copy.write(b"".join(rest[1:]))
        copy.close()

    writer = threading.Thread(target=copy_the_rest)
    writer.start()
    index = MemoryIndex()
    installed: list[tuple[str, int]] = []
    original = index.install

    def install(view: MemoryView) -> None:
        installed.append((Path(view.info.source).name, view.info.counts.total))
        original(view)

    index.install = install  # type: ignore[method-assign]
    follower = DirectoryFollower(
        tmp_path, Loader(index, keyer), lambda *_: None, interval=0.05, settle=0.25
    )
    try:
        follower.initial_load()  # snapshot-0002 changes while it watches: not read yet
        writer.join()
        follower.start()
        eventually(lambda: _source_is(index, "snapshot-0002.jsonl"), "snapshot-0002 served")
    finally:
        writer.join()
        copy.close()
        follower.stop()
    assert installed == [("snapshot-0001.jsonl", 3), ("snapshot-0002.jsonl", 2)]


# --- 7. a version label names the file, not the moment it was loaded -------------------------


def test_every_load_of_the_same_snapshot_has_the_same_version(
    tmp_path: Path, keyer: SubjectKeyer, serve: Serve
) -> None:
    path = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    first = Loader(MemoryIndex(), keyer).load_path(path).info.version
    time.sleep(1.1)  # a load time in another second
    second = Loader(MemoryIndex(), keyer).load_path(path).info.version
    assert first == second
    server = serve(tmp_path)  # no compiled index: parsed again, labelled alike
    assert status(server).version == first
    (tmp_path / "snapshot-0001.jsonl").write_bytes(path.read_bytes() + b"\n")
    assert Loader(MemoryIndex(), keyer).load_path(path).info.version != first


def test_a_delta_being_rewritten_is_not_read_until_it_settles(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """A known delta rewritten in place while a new snapshot loads: the snapshot's
    version leaves it out until it settles (it read the half-written file, refused it
    and flagged the list behind)."""
    old = time.time() - 3600
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    first = write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E2")])
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    index = MemoryIndex()
    follower = DirectoryFollower(tmp_path, Loader(index, keyer), lambda *_: None, interval=0.05,
                                 settle=60)  # fmt: skip
    follower.initial_load()
    with first.open("ab") as rewrite:  # the next ops being appended: cut mid-line for now
        rewrite.write(b'{"seq": 2, "op": "DELI')
    follower.poll_once()  # changed: waits to settle
    second = write_jsonl(tmp_path / "snapshot-0002.jsonl", [header(0), *basic_rows()])
    os.utime(second, (old, old))  # moved in with its times kept: taken without waiting
    follower.poll_once()
    follower.poll_once()
    assert _source_is(index, "snapshot-0002.jsonl")
    assert index.refused is None  # not behind: nothing was refused


def test_a_delta_refused_for_a_date_still_ahead_goes_in_once_that_day_comes(
    tmp_path: Path, keyer: SubjectKeyer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta listing someone published two days ahead of this host's day (a clock
    behind at midnight) is refused; it was never judged again, so when its day came the
    person stayed unlisted and the deltas after it waited for good. The follower judges
    its refused files again when China's day changes (the wall clock moved here as
    libfaketime or NTP moves it; the follower's polls run by hand)."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    x = rid("11010519900101002")
    wall = time.time
    day = 86400.0
    ahead = china_day(wall()) + 2
    published_on = _dt.date.fromordinal(_dt.date(1970, 1, 1).toordinal() + ahead).isoformat()
    feed.write("delta-0001.jsonl", [
        delta(1, "LIST", entry=person_entry("E-X", x, "牛犇", published_on=published_on)),
    ])  # fmt: skip
    assert feed.behind is not None and "is after today" in feed.behind[1], feed.behind
    feed.write("delta-0002.jsonl", [delta(2, "SUSPEND", entry_id="E1")])
    assert feed.decision(x) is Decision.ALLOW and feed.view().info.last_delta_seq == 0
    monkeypatch.setattr(time, "time", lambda: wall() + day)  # the next day in China
    feed.poll()
    assert feed.behind is None, feed.behind
    assert feed.view().info.last_delta_seq == 2  # and the one after it, waiting, went in
    assert feed.decision(x) is Decision.DENY
