"""A delta rewritten in place is refused alike by every worker and every restart (issue:
workers review, finding 1).

The ops applied on top of a compiled version are recorded beside it in the index
folder, so a worker started in a dead one's place, and a restart, refuse a delta
file rewritten in place under an applied seq exactly as the running workers do:
they serve the ops first applied, under the same label, and say BEHIND with the
same message. Before, they read the file as it was then and served the rewritten
ops under the same label: a listed person ALLOW on one worker, DENY on another.

Real pieces throughout: ``shixin-check serve --workers 2`` child processes (the
kill is a real SIGKILL), real servers on 127.0.0.1 (``start_server``), real gRPC
on fresh connections (SO_REUSEPORT spreads connections, not calls), list files
and the record in real folders.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.compiled import FORMAT, IndexStore
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.versions import DirectoryFollower, Loader
from shixin_check.server.settings import ServeSettings
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import LI, ZHANG, basic_rows, delta, write_jsonl
from tests.test_failure_paths import decision, header, health
from tests.test_feed_order import LIST_CURRENT, status
from tests.test_workers import (
    SECRET,
    fresh_channel,
    kill_one_and_await_its_replacement,
    serve_workers,
)
from tests.waiting import eventually

#: fresh connections per round: with two workers, one is missed with odds 2 in 2**24
CONNECTIONS = 24
REWRITTEN = "line 1: seq 1 was applied with another op than delta-0001.jsonl now holds"
#: delta-0001 as first written (Zhang delisted), then as rewritten in place (Li instead)
FIRST = [delta(1, "DELIST", entry_id="E1")]
REWRITE = [delta(1, "DELIST", entry_id="E2")]


def one_round(target: str) -> list[tuple[str, str, str, str]]:
    """(worker, list_version, Zhang's decision, Li's) on ``CONNECTIONS`` fresh connections."""
    answers = []
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            zhang = stub.CheckConsumption(build_request("AIRLINE", id_number=ZHANG), timeout=10)
            li = stub.CheckConsumption(build_request("AIRLINE", id_number=LI), timeout=10)
            worker = zhang.check_id.split("-", 1)[0]
            answers.append((worker, zhang.list_version, pb.Decision.Name(zhang.decision),
                            pb.Decision.Name(li.decision)))  # fmt: skip
    return answers


def statuses(target: str) -> set[tuple[str, int, bool, str, str]]:
    """(version, last seq, behind, ListCurrent, refusal) as each fresh connection is told."""
    seen = set()
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            shown = pb_grpc.ConsumptionCheckStub(channel).GetListStatus(
                pb.ListStatusRequest(), timeout=10
            )
            current = health(channel, LIST_CURRENT)
            seen.add((shown.version, shown.last_delta_seq, shown.behind, current,
                      shown.rejected_problem))  # fmt: skip
    return seen


def test_a_worker_started_in_a_dead_ones_place_serves_what_the_others_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIXIN_WORKERS", "2")
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    server = serve_workers(tmp_path, feed, "split")
    try:
        write_jsonl(feed / "delta-0001.jsonl", FIRST)
        eventually(
            lambda: _alike(one_round(server.target), "ALLOW", "DENY"),
            "delta-0001 (Zhang delisted) applied by both workers",
            step=0.2,
        )  # fmt: skip
        before = one_round(server.target)
        version = before[0][1]
        assert version.endswith("+1") and len({worker for worker, *_ in before}) == 2

        write_jsonl(feed / "delta-0001.jsonl", REWRITE)  # in place: the same file, Li instead
        eventually(
            lambda: all(s[2] and s[3] == "NOT_SERVING" for s in statuses(server.target)),
            "both workers refuse the rewritten delta",
            step=0.2,
        )  # fmt: skip
        live = statuses(server.target)
        assert len(live) == 1, live  # both alike
        assert next(iter(live))[4].startswith(REWRITTEN)

        kill_one_and_await_its_replacement(server)

        after = one_round(server.target)
        replacement = {w for w, *_ in after} - {w for w, *_ in before}
        assert replacement, after  # the replacement answered some of them
        # every answer from every worker, the replacement's too: Zhang as first delisted,
        # Li still listed, under the one label
        assert {a[1:] for a in after} == {(version, "ALLOW", "DENY")}, after
        # and the replacement says BEHIND with the same message as the others
        assert statuses(server.target) == live
    finally:
        code = server.stop()
    assert code == 0, server.output()


def _alike(answers: list[tuple[str, str, str, str]], zhang: str, li: str) -> bool:
    """True when every answer is under one label ending ``+1``, with these decisions."""
    labels = {version for _, version, _, _ in answers}
    return (
        len(labels) == 1 and labels.pop().endswith("+1")
        and {(z, w) for _, _, z, w in answers} == {(zhang, li)}
    )  # fmt: skip


def _first_run(folder: Path, settings: ServeSettings) -> pb.ListStatus:
    """A server over ``folder`` applies delta-0001 (Zhang delisted); the file is then
    rewritten in place (Li instead) and refused; the server stops. Its last status."""
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_jsonl(folder / "delta-0001.jsonl", FIRST)
    server = start_server(settings)
    try:
        eventually(lambda: status(server).last_delta_seq == 1, "delta 1 applied")
        write_jsonl(folder / "delta-0001.jsonl", REWRITE)
        eventually(lambda: status(server).behind, "the rewritten delta refused")
        assert (decision(server.stub(), ZHANG), decision(server.stub(), LI)) == ("ALLOW", "DENY")
        return status(server)
    finally:
        server.stop()


def _serves_as_first_applied(server: RunningServer, live: pb.ListStatus) -> None:
    shown = status(server)
    assert (shown.version, shown.last_delta_seq) == (live.version, live.last_delta_seq)
    assert shown.behind and shown.rejected_source.endswith("delta-0001.jsonl")
    assert shown.rejected_problem == live.rejected_problem
    assert live.rejected_problem.startswith(REWRITTEN)
    assert "recorded in the index folder" in live.rejected_problem
    assert (decision(server.stub(), ZHANG), decision(server.stub(), LI)) == ("ALLOW", "DENY")
    assert health(server.channel, LIST_CURRENT) == "NOT_SERVING"
    assert health(server.channel) == "SERVING"


def test_a_restart_serves_the_ops_first_applied_and_says_behind(tmp_path: Path) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    settings = settings_for(folder, index_dir=tmp_path / "index")
    live = _first_run(folder, settings)
    again = start_server(settings)
    try:
        _serves_as_first_applied(again, live)
    finally:
        again.stop()


def test_a_torn_or_damaged_record_line_does_not_stop_a_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    settings = settings_for(folder, index_dir=tmp_path / "index")
    live = _first_run(folder, settings)
    [record] = (tmp_path / "index").glob("applied-*")
    good = record.read_bytes()
    assert good.endswith(b"\n") and len(good.splitlines()) == 1
    # a damaged line, then a last line cut short (a writer killed mid-append)
    damaged = b'{"format": %d, "not": "a record"}\n' % FORMAT
    record.write_bytes(good + damaged + b'{"format": %d, "fi' % FORMAT)

    with caplog.at_level("WARNING", logger="shixin.loader"):
        again = start_server(settings)
        try:
            _serves_as_first_applied(again, live)
            # the next delta applies, and is recorded after the cut-off line is cut away
            write_jsonl(folder / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E3")])
            eventually(lambda: status(again).last_delta_seq == 2, "delta 2 applied")
        finally:
            again.stop()
    lines = record.read_bytes().splitlines(keepends=True)
    assert lines[0] == good and lines[1] == damaged
    assert len(lines) == 3 and orjson.loads(lines[2])["file"] == "delta-0002.jsonl"
    said = [r.getMessage() for r in caplog.records if "a line cannot be read" in r.getMessage()]
    assert len(said) == 1, said

    third = start_server(settings)  # and a restart reads it all again
    try:
        assert status(third).last_delta_seq == 2 and status(third).behind
        assert (decision(third.stub(), ZHANG), decision(third.stub(), LI)) == ("ALLOW", "DENY")
    finally:
        third.stop()


def test_a_record_that_cannot_be_read_is_said_once_and_taken_as_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    settings = settings_for(folder, index_dir=tmp_path / "index")
    _first_run(folder, settings)
    [record] = (tmp_path / "index").glob("applied-*")
    record.unlink()
    record.mkdir()  # a record that cannot be opened (as a file)

    with caplog.at_level("WARNING", logger="shixin.loader"):
        again = start_server(settings)
        try:
            # nothing recorded to go by: the files as they are now, as with no index folder
            assert status(again).last_delta_seq == 1 and not status(again).behind
            assert (decision(again.stub(), ZHANG), decision(again.stub(), LI)) == ("DENY", "ALLOW")
            write_jsonl(folder / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E3")])
            eventually(lambda: status(again).last_delta_seq == 2, "delta 2 applied all the same")
        finally:
            again.stop()
    said = [
        r.getMessage() for r in caplog.records if f"cannot open {record.name}" in r.getMessage()
    ]
    assert len(said) == 1, said


def test_a_worker_reading_a_delta_after_its_rewrite_serves_what_the_first_applied(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Two workers' followers over one list folder and one index folder, polled by hand:
    the first applies delta-0001, the file is rewritten before the second reads it. The
    second serves what the first applied and refuses the rewrite, as the first does."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    indexes = [MemoryIndex(), MemoryIndex()]
    followers = [
        DirectoryFollower(folder, Loader(index, keyer, IndexStore(tmp_path / "index",
                          keyer.fingerprint)), lambda *_: None, interval=0.05, settle=0.0)
        for index in indexes
    ]  # fmt: skip
    for follower in followers:
        follower.initial_load()
    write_jsonl(folder / "delta-0001.jsonl", FIRST)
    for _ in range(2):  # seen, then settled
        followers[0].poll_once()
    write_jsonl(folder / "delta-0001.jsonl", REWRITE)
    for _ in range(2):
        for follower in followers:
            follower.poll_once()
    first, second = (index.current() for index in indexes)
    assert first is not None and second is not None
    assert second.info.version == first.info.version and second.info.last_delta_seq == 1
    for number in (ZHANG, LI):  # Zhang delisted on both, Li listed on both
        assert bool(second.look_up(_key(keyer, number))) == bool(first.look_up(_key(keyer, number)))
    assert not first.look_up(_key(keyer, ZHANG)) and first.look_up(_key(keyer, LI))
    assert indexes[0].refused == indexes[1].refused
    assert indexes[1].refused is not None and indexes[1].refused[1].startswith(REWRITTEN)


def _key(keyer: SubjectKeyer, number: str) -> int:
    return keyer.subject_key(IdType.RESIDENT_ID, number)
