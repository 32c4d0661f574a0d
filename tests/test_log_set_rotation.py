"""Reading a log set that a running server rotates: ``feedback`` and ``audit verify``.

Both list the set's files, then read them. A rotation in between renames the
live file: read by name, it would be missed (a report short of a whole file, a
chain "removed"). They open every file when they list the set and read those
(``server.hitlog.open_log_files``). The rotation is made to fall in between on
purpose: a real server rotates its real logs (a few hundred bytes each) from
inside the command's first step after the listing. The real command runs
around it, and a hook runs the real step once the rotation is done.

Also: rotated hit files compressed beside the set or missing from it are named
by ``feedback``, and an audit log ending in part of a record reads as cut
(``truncated``), however far behind its head is.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.clients.check_client import build_request
from shixin_check.domain.model import CHINA_TZ
from shixin_check.server import audit as audit_mod
from shixin_check.server import feedback as feedback_mod
from shixin_check.server.hitlog import HitLog, log_files, read_head
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, write_jsonl

SMALL_FILES = 4096  # bytes: a rotation every few records


def quarter_now() -> str:
    today = _dt.datetime.now(CHINA_TZ).date()
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


def refuse(server: RunningServer) -> None:
    """One check that is refused: a hit record and an audit record."""
    request = build_request("RAIL", id_number=ZHANG, name="张伟",
                            purchase={"train_number": "G1234", "seat": "SECOND_CLASS"})  # fmt: skip
    assert server.stub().CheckConsumption(request).decision == pb.DENY


def rotate(server: RunningServer, path: Path) -> None:
    """Checks until the server has rotated the live file of the set at ``path``."""
    before = len(log_files(path))
    for _ in range(50):
        refuse(server)
        if len(log_files(path)) > before:
            return
    raise AssertionError(f"{path} never rotated")


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def server(tmp_path: Path, logs: Path, serve: Callable[..., RunningServer]) -> RunningServer:
    """A real server whose hit and audit logs rotate every few records."""
    (tmp_path / "list").mkdir()
    listed = write_jsonl(tmp_path / "list" / "l.jsonl", basic_rows())
    return serve(listed, hit_log=logs / "hits.jsonl", audit_log=logs / "audit.jsonl",
                 log_max_bytes=SMALL_FILES)  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def feedback_json(
    capsys: pytest.CaptureFixture[str], *hit_logs: Path
) -> tuple[dict[str, Any], str]:
    """(the JSON report of this quarter, the summary line) from the real command."""
    code, out, err = run(capsys, "feedback", "--quarter", quarter_now(), "--format", "json",
                         "--hit-log", *map(str, hit_logs))  # fmt: skip
    assert code == 0, err
    return orjson.loads(out), err


def test_feedback_reads_the_live_file_renamed_while_it_runs(
    server: RunningServer,
    logs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three refusals are in the live file when ``feedback`` lists the set; the server
    then rotates it before a line is read. The report counts all three: the file is
    read as it was when listed, under whatever name it has now."""
    hits = logs / "hits.jsonl"
    for _ in range(3):
        refuse(server)
    assert log_files(hits) == [hits]
    real = feedback_mod.build_report

    def rotated_first(*args: Any, **kwargs: Any) -> Any:
        rotate(server, hits)
        return real(*args, **kwargs)

    monkeypatch.setattr(feedback_mod, "build_report", rotated_first)
    doc, summary = feedback_json(capsys, hits)
    assert len(log_files(hits)) == 2  # the rotation did happen while the report ran
    assert (doc["totals"]["checks"], doc["totals"]["denied"]) == (3, 3), summary
    assert " from 1 files;" in summary  # the records written after it began are not read


def test_audit_verify_is_not_broken_by_a_rotation_during_its_walk(
    server: RunningServer,
    logs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``audit verify`` of a live log while the server rotates it, as the walk reads the
    first rotated file: OK (exit 0), not "removed", and the records read are those of
    the set when the walk began."""
    audit_path = logs / "audit.jsonl"
    rotate(server, audit_path)
    rotate(server, audit_path)
    refuse(server)
    deadline = time.monotonic() + 10
    while (head := read_head(audit_path)) is None or head.seq < 1:
        assert time.monotonic() < deadline, "the server never noted its head"
        time.sleep(0.02)
    listed = sum(len(f.read_bytes().splitlines()) for f in log_files(audit_path))
    real = audit_mod._record
    rotated: list[bool] = []

    def rotated_first(raw: bytes) -> Any:
        if not rotated:
            rotate(server, audit_path)
            rotated.append(True)
        return real(raw)

    monkeypatch.setattr(audit_mod, "_record", rotated_first)
    code, out, _ = run(capsys, "audit", "verify", str(audit_path))
    assert rotated, "the walk read no record"
    assert code == 0, out
    assert out.startswith(f"OK: {listed} records in 3 files;"), out


def test_a_file_under_a_second_name_is_read_once_in_its_rotated_place(
    server: RunningServer, logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotation between the opening of the live file and the listing of the rotated
    ones leaves the file held under a rotated name. A hard link is that moment held
    still: both commands read the file once, where its rotated name puts it."""
    for _ in range(3):
        refuse(server)
    day = _dt.datetime.now(CHINA_TZ).strftime("%Y%m%d")
    for name in ("hits.jsonl", "audit.jsonl"):
        os.link(logs / name, logs / f"{name}.{day}.1")
    doc, summary = feedback_json(capsys, logs / "hits.jsonl")
    totals = doc["totals"]
    assert (totals["checks"], totals["duplicates"]) == (3, 0), summary
    assert " from 1 files;" in summary
    code, out, _ = run(capsys, "audit", "verify", str(logs / "audit.jsonl"))
    assert code == 0 and out.startswith("OK: 3 records in 1 files;"), out


# --- rotated hit files the report cannot read --------------------------------------


def china(y: int, m: int, d: int, hh: int = 12) -> float:
    return _dt.datetime(y, m, d, hh, tzinfo=CHINA_TZ).timestamp()


@pytest.fixture
def four_days(tmp_path: Path) -> Iterator[Path]:
    """A hit log written by the real writer on four China days, one refusal a day:
    rotated files .1 (30 September), .2 (1 October), .3 (31 December), and the live
    file (1 January). 2026Q4 holds the refusals of .2 and .3."""
    path = tmp_path / "hits.jsonl"
    now = [0.0]
    log = HitLog(path, clock=lambda: now[0])
    for n, when in enumerate((china(2026, 9, 30), china(2026, 10, 1), china(2026, 12, 31),
                              china(2027, 1, 1))):  # fmt: skip
        now[0] = when
        log.append({"check_id": f"c{n}", "decision": "DENY", "channel": "RAIL",
                    "matches": [{"case_number": "(2026)京0105执1号", "court": "北京市朝阳区人民法院",
                                 "status": "ACTIVE", "list_type": "SHIXIN"}]})  # fmt: skip
    log.close()
    yield path


def report_of(
    capsys: pytest.CaptureFixture[str], quarter: str, path: Path
) -> tuple[dict[str, Any], str]:
    code, out, err = run(capsys, "feedback", "--quarter", quarter, "--format", "json", "--hit-log",
                         str(path))  # fmt: skip
    assert code == 0, err
    return orjson.loads(out), err


def test_a_compressed_rotated_file_is_named_in_the_summary_and_the_totals(
    four_days: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = four_days.with_name("hits.jsonl.20261001.2")
    packed = second.with_name(second.name + ".gz")
    packed.write_bytes(gzip.compress(second.read_bytes()))
    second.unlink()
    doc, summary = report_of(capsys, "2026Q4", four_days)
    assert doc["totals"]["checks"] == 1  # .2 is not read
    assert doc["totals"]["unread_files"] == [str(packed)]
    assert doc["totals"]["missing_files"] == []
    assert (
        f"WARNING: not read, though they may hold records of 2026Q4: {packed} (compressed"
        in summary
    )
    doc, summary = report_of(capsys, "2027Q1", four_days)  # an archive of an earlier quarter
    assert doc["totals"]["unread_files"] == [] and "WARNING" not in summary


def test_a_rotated_number_skipped_is_named_where_it_may_hold_the_quarter(
    four_days: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """.2 (1 October) removed: 2026Q3 and 2026Q4 are warned (the file lay between 30
    September and 31 December), 2027Q1 is not. Without .1 as well, the numbers up to
    .3 are missing, which for 2026Q4 may matter."""
    four_days.with_name("hits.jsonl.20261001.2").unlink()
    for quarter in ("2026Q3", "2026Q4"):
        doc, summary = report_of(capsys, quarter, four_days)
        assert doc["totals"]["missing_files"] == [f"{four_days}.*.2"], quarter
        assert f"rotated files missing (moved or removed): {four_days}.*.2" in summary
    doc, summary = report_of(capsys, "2027Q1", four_days)
    assert doc["totals"]["missing_files"] == [] and "WARNING" not in summary
    four_days.with_name("hits.jsonl.20260930.1").unlink()
    doc, _ = report_of(capsys, "2026Q4", four_days)
    assert doc["totals"]["missing_files"] == [f"{four_days}.*.1-2"]


# --- an audit log cut mid-record -----------------------------------------------------


def test_a_torn_last_record_reads_truncated_when_the_head_lags(
    server: RunningServer, logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A power loss cuts the last record short; the head, noted after its records,
    names the last whole one. ``audit verify`` says the log is cut (``truncated``),
    not that a line is "not JSON" (an edit)."""
    audit_path = logs / "audit.jsonl"
    for _ in range(3):
        refuse(server)
    deadline = time.monotonic() + 10
    while (head := read_head(audit_path)) is None or head.seq < 3:
        assert time.monotonic() < deadline, "the server never noted its head"
        time.sleep(0.02)
    with audit_path.open("ab") as f:
        f.write(b'{"seq":4,"prev":"ab')
    code, out, _ = run(capsys, "audit", "verify", str(audit_path))
    assert code == 1
    assert out.startswith(f"BROKEN: {audit_path}:4: truncated: the log ends in part of a record "
                          "after seq 3"), out  # fmt: skip
