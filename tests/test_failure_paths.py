"""Never answer from wrong data: restarts, bad feeds, a taken port (issue 9).

Real pieces throughout: ``shixin-check serve`` child processes killed with
SIGKILL and started again on the same list directory, real gRPC channels,
list files written as the feed would write them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_memory import MemoryIndex, MemoryView
from shixin_check.loader.versions import DirectoryFollower, Loader
from shixin_check.server.app import LIST_CURRENT
from tests.conftest import RunningServer
from tests.listdata import LI, ZHANG, basic_rows, delta, person_entry, rid, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.waiting import eventually

N = rid("23010219700303005")  # listed by a delta, then delisted
N_NAME = "牛犇"
P = ZHANG  # in the first snapshot, delisted by a delta
Serve = Callable[..., RunningServer]


def header(includes_seq: int, published_at: str = "2026-11-28T09:00:00+08:00") -> dict[str, Any]:
    return {"snapshot": {"includes_seq": includes_seq, "published_at": published_at}}


def decision(stub: pb_grpc.ConsumptionCheckStub, number: str) -> str:
    reply = stub.CheckConsumption(build_request("AIRLINE", id_number=number), timeout=5)
    return pb.Decision.Name(reply.decision)


def health(channel: grpc.Channel, service: str = "") -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture
def channels() -> Iterator[Callable[[str], grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def open_channel(target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


# --- 1. a restart serves exactly what was served before it -------------------------------


def test_a_restart_after_a_snapshot_does_not_replay_its_deltas(
    tmp_path: Path, channels: Callable[[str], grpc.Channel]
) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = ServeProcess("--list", str(feed), log=tmp_path / "first.log")
    try:
        server.wait_serving()
        stub = pb_grpc.ConsumptionCheckStub(channels(server.target))
        write_jsonl(
            feed / "delta-0001.jsonl", [delta(1, "LIST", entry=person_entry("E-N", N, N_NAME))]
        )
        eventually(lambda: decision(stub, N) == "DENY", "N listed by delta-0001")
        write_jsonl(
            feed / "delta-0002.jsonl",
            [delta(2, "DELIST", entry_id="E-N"), delta(3, "DELIST", entry_id="E1")],
        )
        eventually(lambda: decision(stub, P) == "ALLOW", "P delisted by delta-0002")
        assert decision(stub, N) == "ALLOW"
        # The feed's next snapshot holds that state and says so.
        rows = [r for r in basic_rows() if r["entry_id"] != "E1"]
        write_jsonl(feed / "snapshot-0002.jsonl", [header(3), *rows])
        eventually(
            lambda: stub.GetListStatus(pb.ListStatusRequest()).source.endswith(
                "snapshot-0002.jsonl"
            ),
            "snapshot-0002 served",
        )
        assert (decision(stub, N), decision(stub, P), decision(stub, LI)) == ("ALLOW",) * 2 + (
            "DENY",
        )
    finally:
        server.kill()

    again = ServeProcess("--list", str(feed), log=tmp_path / "second.log")
    try:
        again.wait_serving()
        stub = pb_grpc.ConsumptionCheckStub(channels(again.target))
        assert decision(stub, N) == "ALLOW", "delta-0001 replayed over snapshot-0002"
        assert decision(stub, P) == "ALLOW"
        assert decision(stub, LI) == "DENY"
        status = stub.GetListStatus(pb.ListStatusRequest())
        assert status.last_delta_seq == 3 and status.snapshot_includes_seq == 3
        assert not status.behind, status.rejected_problem
        assert "rejected" not in again.output()

        # Re-listed after the snapshot: a restart keeps it listed.
        write_jsonl(
            feed / "delta-0003.jsonl", [delta(4, "LIST", entry=person_entry("E-N", N, N_NAME))]
        )
        eventually(lambda: decision(stub, N) == "DENY", "N re-listed by delta-0003")
    finally:
        again.kill()

    third = ServeProcess("--list", str(feed), log=tmp_path / "third.log")
    try:
        third.wait_serving()
        stub = pb_grpc.ConsumptionCheckStub(channels(third.target))
        assert (decision(stub, N), decision(stub, P)) == ("DENY", "ALLOW")
        assert stub.GetListStatus(pb.ListStatusRequest()).last_delta_seq == 4
    finally:
        third.stop()


class RecordingIndex(MemoryIndex):
    """A real MemoryIndex that remembers every view installed in it."""

    def __init__(self) -> None:
        super().__init__()
        self.installed: list[MemoryView] = []

    def install(self, view: MemoryView) -> None:
        self.installed.append(view)
        super().install(view)


def test_start_up_deltas_are_applied_before_anything_is_served(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    write_jsonl(tmp_path / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E2")])
    index = RecordingIndex()
    DirectoryFollower(tmp_path, Loader(index, keyer), lambda *_: None).initial_load()
    # One install, already holding both deltas: no check saw the bare snapshot.
    assert [v.info.last_delta_seq for v in index.installed] == [2]


def test_deltas_at_or_below_the_header_are_skipped(tmp_path: Path, keyer: SubjectKeyer) -> None:
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E1")])
    write_jsonl(tmp_path / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E-gone")])
    rows = [header(1), *[r for r in basic_rows() if r["entry_id"] != "E1"]]
    write_jsonl(tmp_path / "snapshot-0002.jsonl", rows)
    events: list[tuple[str, str]] = []
    index = MemoryIndex()
    follower = DirectoryFollower(
        tmp_path, Loader(index, keyer), lambda what, path, _d: events.append((what, path.name))
    )
    follower.initial_load()
    view = index.current()
    assert view is not None
    # seq 1 is in the snapshot: skipped; seq 2 applies on top and is refused (no such entry)
    assert ("rejected", "delta-0002.jsonl") in events
    assert ("rejected", "delta-0001.jsonl") not in events
    assert view.info.last_delta_seq == 1
    assert index.refused is not None and index.refused[0].endswith("delta-0002.jsonl")


def test_a_snapshot_without_header_includes_no_delta_and_says_so(
    tmp_path: Path, keyer: SubjectKeyer, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "DELIST", entry_id="E2")])
    write_jsonl(tmp_path / "snapshot-0001.jsonl", basic_rows())
    index = MemoryIndex()
    with caplog.at_level("WARNING", logger="shixin.loader"):
        DirectoryFollower(tmp_path, Loader(index, keyer), lambda *_: None).initial_load()
    view = index.current()
    assert view is not None and view.info.last_delta_seq == 1  # the delta applied on top
    assert view.info.includes_seq == 0
    assert any("no header row" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("bad_header", "field"),
    [
        ({"snapshot": {"includes_seq": -1}}, "snapshot.includes_seq"),
        (
            {"snapshot": {"includes_seq": 1, "published_at": "2026-11-28T09:00:00"}},
            "snapshot.published_at",
        ),
        ({"snapshot": {"includes_seq": 1, "since": 3}}, "snapshot.since"),
    ],
)
def test_a_bad_header_refuses_the_snapshot_naming_line_1(
    tmp_path: Path, bad_header: dict[str, Any], field: str
) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [bad_header, *basic_rows()])
    done = run_cli("validate", str(path))
    assert done.returncode == 1
    assert f"{path}:line 1: {field}" in done.stdout


#: a CSV snapshot of one listed person, with no header of its own
ONE_ROW_CSV = (
    "entry_id,list_type,subject.type,subject.name,subject.id_number,case_number,court,"
    "published_on,valid_until,status\n"
    f"E1,SHIXIN,PERSON,张伟,{ZHANG},(2024)京0105执1001号,北京市朝阳区人民法院,"
    "2024-01-15,2099-12-31,ACTIVE\n"
)


def test_a_csv_snapshot_takes_its_header_from_the_sidecar(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    csv_path = tmp_path / "snapshot-0001.csv"
    csv_path.write_text(ONE_ROW_CSV, encoding="utf-8")
    (tmp_path / "snapshot-0001.csv.meta.json").write_bytes(orjson.dumps(header(7)))
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(7, "DELIST", entry_id="E1")])
    index = MemoryIndex()
    DirectoryFollower(tmp_path, Loader(index, keyer), lambda *_: None).initial_load()
    view = index.current()
    assert view is not None
    assert view.info.includes_seq == 7 and view.info.counts.total == 1  # seq 7 skipped


def test_a_snapshot_without_a_header_is_told_where_its_header_goes(tmp_path: Path) -> None:
    """A CSV's header is a sidecar, not a first line: the warning says which."""
    csv_path = tmp_path / "snapshot-0001.csv"
    csv_path.write_text(ONE_ROW_CSV, encoding="utf-8")
    lines = write_jsonl(tmp_path / "snapshot-0002.jsonl", basic_rows())
    csv_said = run_cli("validate", str(csv_path)).stderr
    assert "has no header row" in csv_said and "snapshot-0001.csv.meta.json" in csv_said
    jsonl_said = run_cli("validate", str(lines)).stderr
    assert "as its first line" in jsonl_said and "meta.json" not in jsonl_said


# --- 2. a bad newest snapshot never takes the service down -------------------------------


def bad_check_digit_rows() -> list[dict[str, Any]]:
    rows = basic_rows()
    good = rows[0]["subject"]["id_number"]
    rows[0]["subject"]["id_number"] = good[:-1] + ("0" if good[-1] != "0" else "1")
    return rows


def test_a_fresh_start_serves_the_newest_snapshot_that_validates(
    tmp_path: Path, channels: Callable[[str], grpc.Channel]
) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_jsonl(feed / "snapshot-0002.jsonl", [header(0), *bad_check_digit_rows()])
    server = ServeProcess("--list", str(feed), log=tmp_path / "serve.log")
    try:
        server.wait_serving()
        channel = channels(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        assert decision(stub, LI) == "DENY"  # answered from snapshot-0001
        status = stub.GetListStatus(pb.ListStatusRequest())
        assert status.serving and status.source.endswith("snapshot-0001.jsonl")
        assert status.behind
        assert status.rejected_source.endswith("snapshot-0002.jsonl")
        assert "line 2: subject.id_number" in status.rejected_problem
        assert "check digit" in status.rejected_problem
        assert health(channel) == "SERVING"
        assert health(channel, LIST_CURRENT) == "NOT_SERVING"
        assert "snapshot-0002.jsonl" in server.output()  # the log names the refused file
        shown = run_cli("status", "--target", server.target)
        assert "BEHIND: " in shown.stdout and "snapshot-0002.jsonl" in shown.stdout

        # The feed sends a good one: no longer behind.
        write_jsonl(feed / "snapshot-0003.jsonl", [header(0), *basic_rows()[1:]])
        eventually(lambda: health(channel, LIST_CURRENT) == "SERVING", "list current again")
        status = stub.GetListStatus(pb.ListStatusRequest())
        assert not status.behind and status.source.endswith("snapshot-0003.jsonl")
        assert decision(stub, ZHANG) == "ALLOW"
    finally:
        server.stop()


def test_a_bad_snapshot_arriving_live_leaves_the_last_good_list_serving(
    tmp_path: Path, serve: Serve
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(tmp_path)
    stub = server.stub()
    write_jsonl(tmp_path / "snapshot-0002.jsonl", [header(0), *bad_check_digit_rows()])
    eventually(lambda: stub.GetListStatus(pb.ListStatusRequest()).behind, "reported behind")
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "health says behind")
    assert decision(stub, ZHANG) == "DENY"
    assert health(server.channel) == "SERVING"


def test_no_valid_snapshot_is_not_serving_and_says_why(tmp_path: Path, serve: Serve) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *bad_check_digit_rows()])
    server = serve(tmp_path)
    assert health(server.channel) == "NOT_SERVING"
    status = server.stub().GetListStatus(pb.ListStatusRequest())
    assert not status.serving
    assert "no list loaded yet" in status.not_serving_reason
    assert "snapshot-0001.jsonl" in status.not_serving_reason
    with pytest.raises(grpc.RpcError) as refused:
        decision(server.stub(), ZHANG)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # the on-call engineer is not told a last good list is served: there is none
    shown = run_cli("status", "--target", server.address)
    assert shown.returncode == 1
    assert "NOT_SERVING: no list loaded yet" in shown.stdout, shown.stdout
    assert "BEHIND: " in shown.stdout and "nothing is served" in shown.stdout, shown.stdout
    assert "last good list" not in shown.stdout, shown.stdout


# --- 3. one server per port -----------------------------------------------------------------


def test_a_second_server_on_a_taken_port_fails_at_start(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [header(0), *basic_rows()])
    first = ServeProcess("--list", str(path), log=tmp_path / "first.log")
    try:
        first.wait_serving()
        second = run_cli("serve", "--list", str(path), "--listen", first.target)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"port {first.port} is in use" in lines[0]
        assert first.proc.poll() is None  # the first one goes on serving
    finally:
        first.stop()


# --- 7. staleness comes from the data --------------------------------------------------------


def test_source_time_is_the_feeds_not_the_files(tmp_path: Path, keyer: SubjectKeyer) -> None:
    original = write_jsonl(
        tmp_path / "orig.jsonl", [header(0, "2026-11-28T09:00:00+08:00"), *basic_rows()]
    )
    feed = tmp_path / "feed"
    feed.mkdir()
    shutil.copy(original, feed / "snapshot-0001.jsonl")  # a copy: a new mtime
    os.utime(feed / "snapshot-0001.jsonl")
    index = MemoryIndex()
    loader = Loader(index, keyer)
    DirectoryFollower(feed, loader, lambda *_: None).initial_load()
    published = 1_795_827_600.0  # 2026-11-28T01:00:00Z
    view = index.current()
    assert view is not None and view.info.source_timestamp == published
    # A delta row with its own time moves it on; one without leaves it.
    moved = write_jsonl(
        tmp_path / "d1.jsonl",
        [{**delta(1, "DELIST", entry_id="E1"), "published_at": "2026-11-28T10:30:00+08:00"}],
    )
    assert loader.load_path(moved).info.source_timestamp == published + 5400
    still = write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E2")])
    assert loader.load_path(still).info.source_timestamp == published + 5400


def test_without_a_header_source_time_is_the_newest_publish_date(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    rows = [person_entry("E1", ZHANG, "张伟", published_on="2026-03-02"), *basic_rows()[1:]]
    index = MemoryIndex()
    view = Loader(index, keyer).load_path(write_jsonl(tmp_path / "s.jsonl", rows))
    assert view.info.source_timestamp == 1_772_380_800.0  # 2026-03-02T00:00:00+08:00


def test_status_counts_expired_entries_as_their_own_bucket(tmp_path: Path, serve: Serve) -> None:
    rows = [
        person_entry("E1", ZHANG, "张伟", valid_until="2020-12-31", published_on="2019-01-01"),
        person_entry(
            "E2",
            LI,
            "李娜",
            status="SUSPENDED",
            valid_until="2021-06-30",
            published_on="2019-01-01",
        ),  # fmt: skip
        *basic_rows()[2:],
    ]
    server = serve(write_jsonl(tmp_path / "s.jsonl", [header(0), *rows]))
    status = server.stub().GetListStatus(pb.ListStatusRequest())
    counts = {(c.list_type, c.status): c.entries for c in status.counts}
    assert counts == {("SHIXIN", "EXPIRED"): 2, ("SHIXIN", "ACTIVE"): 1}
    assert status.entries_total == 3
