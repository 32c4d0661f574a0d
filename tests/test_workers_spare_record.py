"""A pool whose index folder cannot record the delta ops applied records them in a spare
folder of its own (issue: workers review, an index folder that cannot be written).

Each worker of ``serve --workers N`` said it could not open ``applied-<stamp>`` and
served: the running workers held the applied ops in memory and refused a delta
rewritten in place under an applied seq (BEHIND), but a worker started in a dead
one's place found no record, applied the file as it then read, and the two answered
a listed person DENY and ALLOW under one list_version, both SERVING. Now the record
moves to the pool's private folder (``IndexStore.spare``, made by the supervisor),
with what the index folder's record held, and every worker, a replacement included,
reads it there.

Real pieces: ``IndexStore`` over real folders, its record made unopenable without
root (a directory in its place: EISDIR, even for root), unwritable (a link to
``/dev/full``) or immutable (``chattr +i``, where root and the file system allow it);
and a real ``shixin-check serve --workers 2`` whose worker is killed with SIGKILL,
asked on fresh gRPC connections to 127.0.0.1.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from shixin_check.loader.compiled import APPLIED_PREFIX, IndexStore
from tests.listdata import basic_rows, write_jsonl
from tests.test_delta_digests_shared import (
    FIRST,
    REWRITE,
    REWRITTEN,
    _alike,
    one_round,
    statuses,
)
from tests.test_failure_paths import header
from tests.test_workers import SECRET, kill_one_and_await_its_replacement, serve_workers
from tests.waiting import eventually

STAMP = "0123456789abcdef01234567"
MOVED = "recorded in the pool's private folder"
LINE_1 = b'{"file": "delta-0001.jsonl", "ops": 1}'
LINE_2 = b'{"file": "delta-0002.jsonl", "ops": 2}'


def _stores(tmp_path: Path) -> tuple[IndexStore, IndexStore, Path]:
    """Two workers' stores over one index folder, sharing one spare folder."""
    index, spare = tmp_path / "index", tmp_path / "spare"
    index.mkdir()
    spare.mkdir()
    return IndexStore(index, "fp", spare), IndexStore(index, "fp", spare), spare


def test_a_record_the_index_folder_cannot_open_is_kept_in_the_spare_for_every_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, spare = _stores(tmp_path)
    first.applied_path(STAMP).mkdir()  # the record cannot be opened as a file: EISDIR

    with caplog.at_level(logging.WARNING, logger="shixin.loader"):
        with first.applied(STAMP) as record:
            assert record.usable and record.lines == []
            record.add([LINE_1])
        with second.applied(STAMP) as record:  # another worker: reads what the first applied
            assert record.usable and record.lines == [LINE_1]
            record.add([LINE_2])
        with first.applied(STAMP) as record:  # and the first what the second did
            assert record.lines == [LINE_1, LINE_2]
    assert (spare / f"{APPLIED_PREFIX}{STAMP}").read_bytes() == LINE_1 + b"\n" + LINE_2 + b"\n"
    assert first.applied_path(STAMP).is_dir()  # the index folder's is left as it is
    said = [r.getMessage() for r in caplog.records if MOVED in r.getMessage()]
    assert len(said) == 1, said  # by the worker that moved it; the other finds it there
    assert "a restart reads the delta files anew" in said[0]

    alone = IndexStore(tmp_path / "index", "fp")  # a single server: no spare, as before
    with alone.applied(STAMP) as record:
        assert not record.usable and record.lines == []


def test_a_record_that_fails_a_write_moves_to_the_spare_with_the_lines_not_written(
    tmp_path: Path,
) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    first, second, spare = _stores(tmp_path)
    first.applied_path(STAMP).symlink_to(full)  # opens and locks; every write fails

    with first.applied(STAMP) as record:
        assert record.usable
        record.add([LINE_1])  # fails there: the line goes to the spare
    with second.applied(STAMP) as record:
        assert record.path.parent == spare and record.lines == [LINE_1]
        record.add([LINE_2])
    with first.applied(STAMP) as record:  # the next delta is recorded there too
        assert record.path.parent == spare and record.lines == [LINE_1, LINE_2]


def _immutable(path: Path, on: bool) -> bool:
    """``chattr +i``/``-i`` on ``path`` (its content cannot be written, even by root)."""
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return done.returncode == 0


def test_what_the_index_folders_record_holds_is_carried_to_the_spare_and_read_whole(
    tmp_path: Path,
) -> None:
    first, second, spare = _stores(tmp_path)
    with first.applied(STAMP) as record:  # recorded in the index folder while it can be
        record.add([LINE_1])
    with first.applied(STAMP) as record:
        since = record.since  # where the first worker read to
        assert record.lines == [LINE_1]
    path = first.applied_path(STAMP)
    path.write_bytes(LINE_1 + b"\n" + b'{"torn')  # a last line cut short: never served
    if not _immutable(path, True):
        pytest.skip("needs chattr +i (root, on a file system that has it)")
    try:
        with first.applied(STAMP, since) as record:
            # another file than the one read to ``since``: read from its start
            assert record.path.parent == spare and record.lines == [LINE_1]
            record.add([LINE_2])
        with second.applied(STAMP) as record:
            assert record.lines == [LINE_1, LINE_2]
    finally:
        _immutable(path, False)
    assert (spare / path.name).read_bytes() == LINE_1 + b"\n" + LINE_2 + b"\n"
    with first.applied(STAMP) as record:  # once moved, it stays there for the pool's life
        assert record.path.parent == spare


def test_a_replacement_worker_refuses_a_rewritten_delta_when_the_index_folder_cannot_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIXIN_WORKERS", "2")
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    server = serve_workers(tmp_path, feed, "spare")
    try:
        index = feed / ".shixin-index"
        [version] = index.glob("v-*")  # compiled by the first worker: its stamp names the record
        (index / f"{APPLIED_PREFIX}{version.name.removeprefix('v-')}").mkdir()  # EISDIR

        write_jsonl(feed / "delta-0001.jsonl", FIRST)
        eventually(
            lambda: _alike(one_round(server.target), "ALLOW", "DENY"),
            "delta-0001 (Zhang delisted) applied by both workers",
            step=0.2,
        )  # fmt: skip
        before = one_round(server.target)
        label = before[0][1]
        assert len({worker for worker, *_ in before}) == 2, before

        write_jsonl(feed / "delta-0001.jsonl", REWRITE)  # in place: Li instead
        eventually(
            lambda: all(s[2] and s[3] == "NOT_SERVING" for s in statuses(server.target)),
            "both workers refuse the rewritten delta",
            step=0.2,
        )  # fmt: skip
        live = statuses(server.target)
        assert len(live) == 1 and next(iter(live))[4].startswith(REWRITTEN), live

        kill_one_and_await_its_replacement(server)

        after = one_round(server.target)
        assert {w for w, *_ in after} - {w for w, *_ in before}, after  # the replacement's
        # every worker alike: Zhang as first delisted, Li listed, under the one label
        assert {a[1:] for a in after} == {(label, "ALLOW", "DENY")}, after
        assert statuses(server.target) == live  # the replacement BEHIND, saying the same
        output = server.output()
        spares = set(re.findall(rf"{MOVED} (\S+) for this run", output))
        assert len(spares) == 1, output
        spare = Path(spares.pop())
        assert spare.is_dir() and spare.parent != feed
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert not spare.exists()  # the pool's own: removed at exit
