"""A followed list directory survives what it does not expect (issue: follower robust).

- A file whose reading raises an error no handler expects (a bug below the
  follower: here a fake parser raising ``_csv.Error``, the error a CSV with
  CR-only line ends raised) is refused as a bad file is: the list behind,
  naming it; its traceback logged once; the follower goes on and takes the
  files after it. At start the newest older snapshot that validates serves.
- A follower thread that ends all the same leaves the list behind (health:
  ListCurrent NOT_SERVING, ``status`` BEHIND saying why), never SERVING.
- A file named as a list file whose name ends in what is not read
  (``delta-0003.jsonl.gz``) is refused once and keeps the list behind until
  it is removed; the names the README says are ignored stay ignored.

Real files in a real directory, the real ``DirectoryFollower`` (polled by hand,
or the thread of a real server on 127.0.0.1 with real gRPC); only the parser
below the follower is faked where a bug must be made to happen.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Decision
from shixin_check.loader import listfile, versions
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, delta, write_jsonl
from tests.processes import run_cli
from tests.test_failure_paths import decision, header, health
from tests.test_feed_order import LIST_CURRENT, Feed, X, lists, status
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
#: what the fake parser raises: the error ``csv`` gave a CSV with CR-only line ends
CHOKED = "new-line character seen in unquoted field"


@pytest.fixture
def choking(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Names of files whose parsing raises ``_csv.Error`` (a fake of the layer below the
    loader: ``build_snapshot`` for snapshots, ``read_delta`` for deltas); others parse."""
    names: set[str] = set()
    build, read = versions.build_snapshot, listfile.read_delta

    def fake_build(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name in names:
            raise csv.Error(CHOKED)
        return build(path, *args, **kwargs)

    def fake_read(path: Path) -> Any:
        if path.name in names:
            raise csv.Error(CHOKED)
        return read(path)

    monkeypatch.setattr(versions, "build_snapshot", fake_build)
    monkeypatch.setattr(versions, "read_delta", fake_read)
    return names


def tracebacks(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    """The records logged with a traceback that name the file ``name``."""
    return [r for r in caplog.records if r.exc_info and name in r.getMessage()]


def rejected(feed: Feed, name: str) -> int:
    return sum(1 for what, n, _ in feed.events if (what, n) == ("rejected", name))


# --- 1. a file that raises what no handler expects -------------------------------------------


def test_a_snapshot_whose_parser_raises_is_refused_and_later_files_are_taken(
    tmp_path: Path, keyer: SubjectKeyer, choking: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    choking.add("snapshot-0002.jsonl")
    feed.write("snapshot-0002.jsonl", [header(0), *basic_rows()])
    assert feed.behind is not None and feed.behind[0] == "snapshot-0002.jsonl"
    assert "_csv.Error" in feed.behind[1] and CHOKED in feed.behind[1]
    assert feed.view().info.source.endswith("snapshot-0001.jsonl")  # the last good list
    [logged] = tracebacks(caplog, "snapshot-0002.jsonl")
    assert "a bug" in logged.getMessage()
    # the follower goes on: a later delta applies, and nothing is said again
    feed.write("delta-0001.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    feed.poll()
    assert feed.view().info.last_delta_seq == 1 and feed.decision(X) is Decision.DENY
    assert feed.behind is not None and feed.behind[0] == "snapshot-0002.jsonl"  # still behind
    assert len(tracebacks(caplog, "snapshot-0002.jsonl")) == 1
    assert rejected(feed, "snapshot-0002.jsonl") == 1
    # and a newer snapshot that reads loads, superseding it
    feed.write("snapshot-0003.jsonl", [header(1), *basic_rows()])
    assert feed.view().info.source.endswith("snapshot-0003.jsonl") and feed.behind is None


def test_a_delta_whose_parser_raises_is_refused_until_it_reads(
    tmp_path: Path, keyer: SubjectKeyer, choking: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    choking.add("delta-0001.jsonl")
    feed.write("delta-0001.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    assert feed.behind is not None and feed.behind[0] == "delta-0001.jsonl"
    assert "_csv.Error" in feed.behind[1]
    assert feed.decision(X) is Decision.ALLOW
    # another file applying tries the refused delta again: it is not said again
    feed.write("delta-0000.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    feed.poll()
    assert len(tracebacks(caplog, "delta-0001.jsonl")) == 1
    assert rejected(feed, "delta-0001.jsonl") == 1
    # the file changed, and reads now: taken, no longer behind
    choking.clear()
    feed.write(
        "delta-0001.jsonl",
        [delta(1, "LIST", entry=lists(X, "牛犇", "E-X")), delta(2, "DELIST", entry_id="E1")],
    )
    assert feed.behind is None and feed.view().info.last_delta_seq == 2
    assert (feed.decision(X), feed.decision(ZHANG)) == (Decision.DENY, Decision.ALLOW)


def test_at_start_a_newest_snapshot_whose_parser_raises_leaves_the_older_serving(
    tmp_path: Path, serve: Serve, choking: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_jsonl(tmp_path / "snapshot-0002.jsonl", [header(0), *basic_rows()[1:]])
    choking.add("snapshot-0002.jsonl")
    server = serve(tmp_path)
    shown = status(server)
    assert shown.source.endswith("snapshot-0001.jsonl")
    assert shown.behind and shown.rejected_source.endswith("snapshot-0002.jsonl")
    assert "_csv.Error" in shown.rejected_problem
    assert decision(server.stub(), ZHANG) == "DENY"  # 0001's list answers
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "health: behind")
    assert health(server.channel) == "SERVING"
    assert len(tracebacks(caplog, "snapshot-0002.jsonl")) == 1
    # the follower runs: a delta applies on top of the older snapshot
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    eventually(lambda: status(server).last_delta_seq == 1, "delta-0001 applied")
    assert decision(server.stub(), X) == "DENY"


def test_a_csv_snapshot_the_csv_reader_chokes_on_never_stops_the_follower(
    tmp_path: Path, serve: Serve
) -> None:
    """The reviewer's case through the real parser, nothing faked: a CSV snapshot with
    CR-only line ends. Whether it is refused (a bad file, or one the parser chokes on)
    or read, the follower takes the delta after it, and behind names it if refused."""
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(tmp_path)
    columns = "entry_id,list_type,subject.type,subject.name,subject.id_number,case_number,court,published_on,valid_until,status"
    row = f"E1,SHIXIN,PERSON,张伟,{ZHANG},(2024)京0105执1001号,北京市朝阳区人民法院,2024-01-15,2099-12-31,ACTIVE"
    (tmp_path / "snapshot-0002.csv").write_bytes(f"{columns}\r{row}\r".encode())
    (tmp_path / "snapshot-0002.csv.meta.json").write_bytes(orjson.dumps(header(0)))
    eventually(
        lambda: status(server).behind or status(server).source.endswith("snapshot-0002.csv"),
        "snapshot-0002.csv taken (refused or read)",
    )
    write_jsonl(tmp_path / "delta-0001.jsonl", [delta(1, "LIST", entry=lists(X, "牛犇", "E-X"))])
    eventually(lambda: status(server).last_delta_seq == 1, "delta-0001 applied")
    assert decision(server.stub(), X) == "DENY"
    shown = status(server)
    if shown.behind:
        assert shown.rejected_source.endswith("snapshot-0002.csv")
    assert server.service.follower is not None and server.service.follower._thread.is_alive()


def test_a_follower_that_ends_leaves_the_list_behind_not_serving(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(tmp_path)
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "list current")

    def broken(directory: Path) -> Any:
        raise RuntimeError("a bug outside any one file")

    monkeypatch.setattr(versions, "_candidates", broken)  # the next poll raises
    follower = server.service.follower
    assert follower is not None
    eventually(lambda: not follower._thread.is_alive(), "the follower thread ended")
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "health: behind")
    shown = status(server)
    assert shown.behind and "the list follower stopped" in shown.rejected_problem
    assert "restart the server" in shown.rejected_problem
    assert shown.rejected_source == str(tmp_path)
    assert health(server.channel) == "SERVING"  # the last list loaded still answers
    assert decision(server.stub(), ZHANG) == "DENY"
    cli = run_cli("status", "--target", server.address)
    assert "BEHIND: " in cli.stdout and "follower stopped" in cli.stdout
    [logged] = [r for r in caplog.records if r.exc_info and "follower stopped" in r.getMessage()]
    assert "a bug outside any one file" in str(logged.exc_info[1] if logged.exc_info else "")


# --- 2. a file named as a list file that is not read ----------------------------------------


UNREAD = ("delta-0003.jsonl.gz", "snapshot-0002.jsonl.gz", "delta-0003b.txt")
IGNORED = (
    ".delta-0004.jsonl.gz", "delta-0004.jsonl.gz.part", "snapshot-0004.jsonl.gz.tmp",
    "snapshot-0001.csv.meta.json", "notes.txt",
    # a feed's checksums, signatures and backups beside its files
    "snapshot-0001.jsonl.sha256", "delta-0001.jsonl.MD5", "snapshot-0003.CSV.sig",
    "delta-0002.jsonl.asc", "snapshot-0001.jsonl~", "delta-0001.jsonl.bak",
)  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    for name in IGNORED:
        (tmp_path / name).write_bytes(b"\x1f\x8b not read")
    yield tmp_path


@pytest.mark.parametrize("name", UNREAD)
def test_a_file_named_as_a_list_file_but_not_read_keeps_the_list_behind(
    folder: Path, keyer: SubjectKeyer, name: str
) -> None:
    feed = Feed(folder, keyer).start()
    assert feed.behind is None  # the ignored names stay ignored
    assert not [n for w, n, _ in feed.events if w == "rejected"]
    (folder / name).write_bytes(b"\x1f\x8b gzip or another format")
    feed.poll()
    feed.poll()
    assert feed.behind is not None and feed.behind[0] == name
    assert "is not read" in feed.behind[1] and ".jsonl, .ndjson, .json, .csv" in feed.behind[1]
    assert rejected(feed, name) == 1  # said once
    (folder / name).unlink()
    feed.poll()
    assert feed.behind is None
    # at start as well
    (folder / name).write_bytes(b"\x1f\x8b gzip")
    restarted = Feed(folder, keyer).start()
    assert restarted.behind is not None and restarted.behind[0] == name
    assert rejected(restarted, name) == 1


def test_an_unread_snapshot_named_before_the_served_one_is_said_but_not_behind(
    folder: Path, keyer: SubjectKeyer
) -> None:
    """As any refused snapshot named before the one served: it would change nothing."""
    write_jsonl(folder / "snapshot-0002.jsonl", [header(0), *basic_rows()])
    (folder / "snapshot-0001.jsonl.gz").write_bytes(b"\x1f\x8b an old archive")
    feed = Feed(folder, keyer).start()
    assert feed.view().info.source.endswith("snapshot-0002.jsonl")
    assert rejected(feed, "snapshot-0001.jsonl.gz") == 1 and feed.behind is None


def test_a_feed_switched_to_gzip_shows_on_health(folder: Path, serve: Serve) -> None:
    server = serve(folder)
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "list current")
    (folder / "delta-0001.jsonl.gz").write_bytes(b"\x1f\x8b compressed delta")
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "health: behind")
    shown = status(server)
    assert shown.behind and shown.rejected_source.endswith("delta-0001.jsonl.gz")
    (folder / "delta-0001.jsonl.gz").unlink()
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "list current again")


def test_a_delta_that_is_a_link_to_nothing_keeps_the_list_behind(
    folder: Path, keyer: SubjectKeyer
) -> None:
    """Every delta's name sorts before every snapshot's: a delta linked to a mount not
    there was taken for an old archive named before the served snapshot, logged but
    not behind, while the delta's changes were missing."""
    feed = Feed(folder, keyer).start()
    (folder / "delta-0001.jsonl").symlink_to(folder / "gone" / "delta-0001.jsonl")
    feed.poll()
    feed.poll()
    assert feed.behind is not None and feed.behind[0] == "delta-0001.jsonl"
    assert "symbolic link" in feed.behind[1]
    (folder / "delta-0001.jsonl").unlink()
    feed.poll()
    assert feed.behind is None
