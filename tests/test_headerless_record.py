"""On a snapshot without a header, the numbering the first delta set is kept by every
worker and every restart (issue: rereview, finding 3).

delta-0006 and delta-0007 arrive first on a snapshot without a header: the first
applied, seq 6, sets the numbering. delta-0005 (it lists Zhao) arrives late and is
refused below it, BEHIND, the list served without Zhao. The ops applied are
recorded in the index folder, so the lowest seq recorded there is that numbering:
a worker started in a dead one's place, a restart, and a worker that reads the
late delta together with seq 6 all take it first, and refuse delta-0005 as the
running workers do, with the same message. Before, they applied every delta
lowest seq first and served Zhao DENY under the same label as ALLOW elsewhere.

Real pieces throughout: ``shixin-check serve --workers 2`` child processes (the
kill is a real SIGKILL), real servers on 127.0.0.1 (``start_server``), real gRPC
on fresh connections, loaders and followers over real list and index folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.errors import LoadRejected
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.compiled import IndexStore
from shixin_check.loader.index_memory import MemoryIndex, MemoryView
from shixin_check.loader.versions import DirectoryFollower, Loader
from shixin_check.server.settings import ServeSettings
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_failure_paths import decision
from tests.test_feed_order import status
from tests.test_workers import (
    SECRET,
    fresh_channel,
    kill_one_and_await_its_replacement,
    serve_workers,
)
from tests.waiting import eventually

#: fresh connections per round: with two workers, one is missed with odds 2 in 2**24
CONNECTIONS = 24
#: how the late delta is refused, by every worker and every restart alike
BEFORE_FIRST = (
    "line 1: seq 5 comes before seq 6, the first delta applied on top of a snapshot without "
    "a header (snapshot-0001.jsonl): its changes are not in the served list; publish a "
    "snapshot with a header whose includes_seq covers it (a restart keeps this numbering, "
    "recorded in the index folder; to apply every delta lowest seq first, stop the server, "
    "delete applied-"
)
#: Zhang delisted (it sets the numbering), then ACME (Wang), then the late one: Zhao listed
DELTA_6 = [delta(6, "DELIST", entry_id="E1")]
DELTA_7 = [delta(7, "DELIST", entry_id="E3")]
LATE_5 = [delta(5, "LIST", entry=person_entry("E9", ZHAO, "赵某"))]


def one_round(target: str) -> list[tuple[str, str, str, str]]:
    """(worker, list_version, Zhang's decision, Zhao's) on ``CONNECTIONS`` fresh connections."""
    answers = []
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            zhang = stub.CheckConsumption(build_request("AIRLINE", id_number=ZHANG), timeout=10)
            zhao = stub.CheckConsumption(build_request("AIRLINE", id_number=ZHAO), timeout=10)
            worker = zhang.check_id.split("-", 1)[0]
            answers.append((worker, zhang.list_version, pb.Decision.Name(zhang.decision),
                            pb.Decision.Name(zhao.decision)))  # fmt: skip
    return answers


def statuses(target: str) -> set[tuple[str, int, bool, str]]:
    """(version, last seq, behind, refusal) as each fresh connection is told."""
    seen = set()
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            shown = pb_grpc.ConsumptionCheckStub(channel).GetListStatus(
                pb.ListStatusRequest(), timeout=10
            )
            seen.add((shown.version, shown.last_delta_seq, shown.behind, shown.rejected_problem))
    return seen


def _at(answers: list[tuple[str, str, str, str]], seq: int) -> bool:
    """True when every answer is under one label ending ``+seq``, Zhang delisted, Zhao not
    listed."""
    labels = {version for _, version, _, _ in answers}
    return (
        len(labels) == 1 and labels.pop().endswith(f"+{seq}")
        and {(zhang, zhao) for _, _, zhang, zhao in answers} == {("ALLOW", "ALLOW")}
    )  # fmt: skip


def test_a_worker_started_in_a_dead_ones_place_refuses_the_late_delta_as_the_others_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIXIN_WORKERS", "2")
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())  # no header row
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    server = serve_workers(tmp_path, feed, "late")
    try:
        write_jsonl(feed / "delta-0006.jsonl", DELTA_6)
        eventually(lambda: _at(one_round(server.target), 6), "delta 6 on both", step=0.2)
        write_jsonl(feed / "delta-0007.jsonl", DELTA_7)
        eventually(lambda: _at(one_round(server.target), 7), "delta 7 on both", step=0.2)
        before = one_round(server.target)
        version = before[0][1]
        assert len({worker for worker, *_ in before}) == 2

        write_jsonl(feed / "delta-0005.jsonl", LATE_5)
        eventually(
            lambda: all(s[2] for s in statuses(server.target)),
            "both workers refuse the late delta",
            step=0.2,
        )  # fmt: skip
        live = statuses(server.target)
        assert len(live) == 1, live  # both alike
        assert next(iter(live))[1:3] == (7, True)
        assert next(iter(live))[3].startswith(BEFORE_FIRST)
        assert _at(one_round(server.target), 7)  # Zhao not listed, on both

        kill_one_and_await_its_replacement(server)

        after = one_round(server.target)
        replacement = {w for w, *_ in after} - {w for w, *_ in before}
        assert replacement, after  # the replacement answered some of them
        # every answer from every worker, the replacement's too: Zhao not listed (delta 5
        # refused), under the one label
        assert {a[1:] for a in after} == {(version, "ALLOW", "ALLOW")}, after
        # and the replacement says BEHIND with the same message as the others
        assert statuses(server.target) == live
    finally:
        code = server.stop()
    assert code == 0, server.output()


def _serves(server: RunningServer, seq: int, zhao: str) -> pb.ListStatus:
    shown = status(server)
    assert shown.last_delta_seq == seq
    assert (decision(server.stub(), ZHANG), decision(server.stub(), ZHAO)) == ("ALLOW", zhao)
    return shown


def test_a_restart_keeps_the_numbering_and_refuses_the_late_delta(tmp_path: Path) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())  # no header row
    settings: ServeSettings = settings_for(folder, index_dir=tmp_path / "index")
    server = start_server(settings)
    try:
        write_jsonl(folder / "delta-0006.jsonl", DELTA_6)
        eventually(lambda: status(server).last_delta_seq == 6, "delta 6 applied")
        write_jsonl(folder / "delta-0007.jsonl", DELTA_7)
        eventually(lambda: status(server).last_delta_seq == 7, "delta 7 applied")
        clean = _serves(server, 7, "ALLOW")
        assert not clean.behind
    finally:
        server.stop()

    again = start_server(settings)  # a restart after a clean run: as it was, nothing refused
    try:
        shown = _serves(again, 7, "ALLOW")
        assert (shown.version, shown.behind) == (clean.version, False)
        write_jsonl(folder / "delta-0005.jsonl", LATE_5)
        eventually(lambda: status(again).behind, "the late delta refused")
        live = _serves(again, 7, "ALLOW")
        assert live.rejected_source.endswith("delta-0005.jsonl")
        assert live.rejected_problem.startswith(BEFORE_FIRST)
    finally:
        again.stop()

    third = start_server(settings)  # every delta there at start: seq 6 still comes first
    try:
        shown = _serves(third, 7, "ALLOW")
        assert (shown.version, shown.behind) == (live.version, True)
        assert (shown.rejected_source, shown.rejected_problem) == (
            live.rejected_source, live.rejected_problem,
        )  # fmt: skip
    finally:
        third.stop()


def _loader(tmp_path: Path, keyer: SubjectKeyer) -> tuple[Loader, MemoryIndex]:
    index = MemoryIndex()
    return Loader(index, keyer, IndexStore(tmp_path / "index", keyer.fingerprint)), index


def _listed(view: MemoryView | None, keyer: SubjectKeyer, number: str) -> bool:
    assert view is not None
    return bool(view.look_up(keyer.subject_key(IdType.RESIDENT_ID, number)))


def test_a_worker_reading_the_late_delta_with_the_first_refuses_it_as_the_first_does(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Two workers' followers over one list folder and one index folder, polled by hand:
    the first applies delta-0006 alone; delta-0005 lands before the second has read
    either. The second sees both in one poll: it takes the numbering the first set (6)
    rather than applying 5 first, and refuses 5 as the first does."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())  # no header row
    pairs = [_loader(tmp_path, keyer) for _ in range(2)]
    followers = [
        DirectoryFollower(folder, loader, lambda *_: None, interval=0.05, settle=0.0)
        for loader, _ in pairs
    ]  # fmt: skip
    for follower in followers:
        follower.initial_load()
    write_jsonl(folder / "delta-0006.jsonl", DELTA_6)
    for _ in range(2):  # seen, then settled
        followers[0].poll_once()
    write_jsonl(folder / "delta-0005.jsonl", LATE_5)
    for _ in range(2):
        for follower in followers:
            follower.poll_once()
    first, second = (index.current() for _, index in pairs)
    assert first is not None and second is not None
    assert (second.info.version, second.info.last_delta_seq) == (first.info.version, 6)
    assert second.info.first_delta_seq == first.info.first_delta_seq == 6
    assert not _listed(first, keyer, ZHAO) and not _listed(second, keyer, ZHAO)
    assert not _listed(second, keyer, ZHANG)
    refusals = [index.refused for _, index in pairs]
    assert refusals[0] == refusals[1]
    assert refusals[0] is not None and refusals[0][1].startswith(BEFORE_FIRST)


def test_a_restart_missing_the_delta_that_set_the_numbering_refuses_the_next(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """delta-0006 set the numbering and was applied, then its file removed. A restart does
    not take delta-0007 for the first (serving +7 without seq 6's change, under the label
    the running server gives it with it): seq 6 is missing, as on a snapshot with a
    header; BEHIND on the snapshot alone."""
    folder = tmp_path / "list"
    folder.mkdir()
    snapshot = write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())  # no header row
    live, live_index = _loader(tmp_path, keyer)
    live.load_snapshot(snapshot, [])
    for name, rows in (("delta-0006.jsonl", DELTA_6), ("delta-0007.jsonl", DELTA_7)):
        live.load_delta(write_jsonl(folder / name, rows))
    assert not _listed(live_index.current(), keyer, ZHANG)
    (folder / "delta-0006.jsonl").unlink()

    restart, index = _loader(tmp_path, keyer)
    refused: list[tuple[str, LoadRejected]] = []
    view = restart.load_snapshot(
        snapshot, [folder / "delta-0007.jsonl"], lambda path, exc: refused.append((path.name, exc))
    )
    assert view.info.last_delta_seq == 0 and _listed(view, keyer, ZHANG)
    [(name, exc)] = refused
    assert name == "delta-0007.jsonl"
    assert [str(e) for e in exc.errors] == ["line 1: seq 7 follows seq 5: delta 6 is missing"]
