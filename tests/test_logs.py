"""The hit log and audit log contracts: durable writes, rotation, the hash chain, verify.

Clocks are injected (``Clock``) so rotation at the China-time midnight is
shown without waiting for one. The SIGKILL test runs the real console script.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.cli import main as cli_main
from shixin_check.cli_logs import add_parsers
from shixin_check.clients.check_client import build_request
from shixin_check.domain.decision import MatchOutcome, Verdict
from shixin_check.domain.index import ListedMatch
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import CHINA_TZ, Decision, EntryStatus, ListType, Role
from shixin_check.domain.rules import RAIL_G_TRAIN
from shixin_check.server import audit as audit_mod
from shixin_check.server import hitlog
from shixin_check.server.convert import to_query
from shixin_check.server.hitlog import AppendLog, AuditLog, HitLog, log_files
from tests.conftest import RunningServer
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess

ROTATED = re.compile(r"audit\.jsonl\.(\d{8})\.(\d+)")


class Clock:
    """A settable wall clock (unix seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def china(y: int, m: int, d: int, hh: int = 12, mm: int = 0) -> float:
    """Unix seconds of a China-time wall-clock moment."""
    return _dt.datetime(y, m, d, hh, mm, tzinfo=CHINA_TZ).timestamp()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of the set at ``path``, oldest first."""
    return [orjson.loads(raw) for f in log_files(path) for raw in lines(f)]


def write_audit(log: AuditLog, n: int, outcome: str = "DENY") -> None:
    for i in range(n):
        log.record("CheckConsumption", "ipv4:127.0.0.1:5", f"110105********{i:04d}", outcome, 0.0)


# --- rotation ------------------------------------------------------------------


def test_rotates_by_size_into_numbered_files_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=800, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 20)
    log.close()
    files = log_files(path)
    assert len(files) > 3 and files[-1] == path
    for n, rotated in enumerate(files[:-1], 1):
        found = ROTATED.fullmatch(rotated.name)
        assert found is not None and found.groups() == ("20260701", str(n))
        assert rotated.stat().st_size <= 800
    assert [r["seq"] for r in records(path)] == list(range(1, 21))


def test_a_record_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=10, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 3)
    log.close()
    assert [len(lines(f)) for f in log_files(path)] == [1, 1, 1]


def test_rotates_at_china_midnight_not_utc_midnight(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(china(2026, 7, 1, 7, 59))  # 23:59 UTC on 30 June
    log = AuditLog(path, clock=clock)
    write_audit(log, 1)
    clock.now = china(2026, 7, 1, 8, 1)  # UTC day changed, China day did not
    write_audit(log, 1)
    assert log_files(path) == [path]
    clock.now = china(2026, 7, 2, 0, 0)
    write_audit(log, 1)
    log.close()
    assert [f.name for f in log_files(path)] == ["audit.jsonl.20260701.1", "audit.jsonl"]
    assert [len(lines(f)) for f in log_files(path)] == [2, 1]


def test_reopening_keeps_the_day_of_the_live_file_and_numbers_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=300, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 2)  # the second record rotates the first out as .1
    log.close()
    log = AuditLog(path, clock=Clock(china(2026, 7, 3)))  # days later
    write_audit(log, 1)
    log.close()
    names = [f.name for f in log_files(path)]
    assert names == ["audit.jsonl.20260701.1", "audit.jsonl.20260701.2", "audit.jsonl"]


def test_the_chain_continues_across_rotation_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(china(2026, 7, 1))
    log = AuditLog(path, max_bytes=700, clock=clock)
    write_audit(log, 6)
    log.close()
    log = AuditLog(path, max_bytes=700, clock=clock)
    clock.now = china(2026, 7, 2)
    write_audit(log, 6)
    log.close()
    result = audit_mod.verify(path)
    assert result.ok, result.problem
    assert (result.records, result.head_seq) == (12, 12)
    assert len(result.files) >= 3
    assert result.head_hash == hitlog.line_hash(lines(path)[-1])


def test_the_chain_continues_from_a_rotated_file_when_the_live_one_is_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 3)
    log.close()
    path.rename(tmp_path / "audit.jsonl.20260701.1")  # as if killed right after a rotation
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 2)
    log.close()
    assert [r["seq"] for r in records(path)] == [1, 2, 3, 4, 5]
    assert audit_mod.verify(path).ok


def test_a_torn_last_line_is_moved_aside_and_the_chain_goes_on_whole(tmp_path: Path) -> None:
    """Bytes of a record cut short by a power loss are no record: a restarted writer
    moves them to ``<path>.torn`` (kept, not lost), so the next record starts a line
    of its own and `audit verify` does not read the cut as an edit ("not JSON")."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 2)
    log.close()
    with path.open("ab") as f:
        f.write(b'{"seq":3,"prev":"ab')  # power lost mid-record
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 1)
    log.close()
    assert [orjson.loads(line)["seq"] for line in lines(path)] == [1, 2, 3]
    assert (tmp_path / "audit.jsonl.torn").read_bytes() == b'{"seq":3,"prev":"ab\n'
    result = audit_mod.verify(path)
    assert result.ok and result.records == 3, result.problem


def test_a_log_that_is_one_torn_line_is_moved_aside_whole(tmp_path: Path) -> None:
    path = tmp_path / "hits.jsonl"
    path.write_bytes(b"x" * 20_000)  # longer than the tail read in one go, and no newline
    log = HitLog(path)
    log.append({"a": 1})
    log.close()
    assert [orjson.loads(line) for line in lines(path)] == [{"time": ANY, "a": 1}]
    assert (tmp_path / "hits.jsonl.torn").read_bytes() == b"x" * 20_000 + b"\n"


# --- what the records hold -----------------------------------------------------


def test_hit_records_carry_the_contract_fields_and_no_plaintext_id(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    request = build_request("RAIL", id_number=ZHANG, name="张伟",
                            purchase={"train_number": "G1234", "seat": "FIRST_CLASS"})  # fmt: skip
    match = ListedMatch(
        "E1", ListType.SHIXIN, EntryStatus.ACTIVE, Role.DEBTOR, 0, "(2024)京0105执1001号",
        "北京市朝阳区人民法院", "", ZHANG[:6] + "********" + ZHANG[-4:], 0, 99999, (),
    )  # fmt: skip
    verdict = Verdict(Decision.DENY, (RAIL_G_TRAIN,), (MatchOutcome(match, EntryStatus.ACTIVE),))
    path = tmp_path / "hits.jsonl"
    log = HitLog(path, clock=Clock(1_780_000_000.0))
    query = to_query(request, keyer)
    log.record("c-1", "r-1", query, verdict, "v1", "m-9", "t-2", "ipv4:10.0.0.1:1",
               caller="rail-gateway")  # fmt: skip
    log.close()
    [hit] = records(path)
    assert hit["time"] == 1_780_000_000.0
    assert {k: hit[k] for k in ("check_id", "list_version", "decision", "caller", "peer")} == {
        "check_id": "c-1", "list_version": "v1", "decision": "DENY",
        "caller": "rail-gateway", "peer": "ipv4:10.0.0.1:1",
    }  # fmt: skip
    assert (hit["merchant_id"], hit["terminal_id"], hit["channel"]) == ("m-9", "t-2", "RAIL")
    assert hit["matches"][0]["court"] == "北京市朝阳区人民法院"
    assert ZHANG.encode() not in path.read_bytes()


def test_audit_records_hold_caller_metadata_and_withhold_credentials(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    log.record("CheckConsumption", "ipv4:10.0.0.1:1", "110105********0011", "DENY", 0.0,
               caller="gw", metadata={"User-Agent": "pos/1", "authorization": "Bearer s3cret",
                                      "trace-bin": "\x00\x01"})  # fmt: skip
    log.close()
    [rec] = records(path)
    assert (rec["seq"], rec["prev"], rec["caller"]) == (1, hitlog.GENESIS, "gw")
    assert rec["metadata"] == {
        "user-agent": "pos/1", "authorization": "[withheld]", "trace-bin": "[binary]"
    }  # fmt: skip
    assert b"s3cret" not in path.read_bytes()


def test_audit_lines_are_what_orjson_writes_for_the_record(tmp_path: Path) -> None:
    """``record_call`` formats the line itself: it must be the JSON of the record, byte
    for byte, with text that needs escaping and a failure's check_id."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=Clock(china(2026, 7, 1) + 0.123456))
    odd = 'a"b\\c\n张\x01'
    log.record("CheckConsumption", "ipv6:[::1]:7", odd, "INVALID_ARGUMENT", 0.0,
               caller=odd, metadata={"x-terminal-id": odd}, check_id="c0ffee")  # fmt: skip
    call = hitlog.call_fields("CheckConsumptionStream", "", "ipv4:127.0.0.1:9", None)
    log.record_call(call, "110105********0011", "ALLOW", time.perf_counter(), 3)
    log.close()
    first, second = lines(path)
    for raw in (first, second):
        assert raw == orjson.dumps(orjson.loads(raw))  # keys in order, nothing but JSON
    rec = orjson.loads(first)
    assert list(rec) == ["seq", "prev", "time", "method", "caller", "peer", "metadata",
                         "subject", "checks", "outcome", "latency_us", "check_id"]  # fmt: skip
    assert (rec["subject"], rec["caller"], rec["metadata"]) == (odd, odd, {"x-terminal-id": odd})
    assert rec["time"] == china(2026, 7, 1) + 0.123456
    assert (rec["outcome"], rec["check_id"]) == ("INVALID_ARGUMENT", "c0ffee")
    rec = orjson.loads(second)
    assert (rec["seq"], rec["prev"]) == (2, hitlog.line_hash(first))
    assert (rec["method"], rec["peer"], rec["checks"], rec["metadata"]) == (
        "CheckConsumptionStream", "ipv4:127.0.0.1:9", 3, {}
    )  # fmt: skip
    assert "check_id" not in rec
    assert audit_mod.verify(path).ok


def test_an_audit_record_the_disk_refuses_fails_is_counted_and_leaves_the_chain_whole(
    tmp_path: Path,
) -> None:
    """A write that fails (here: ENOSPC from /dev/full in place of the live file) raises,
    is counted, and takes no seq: the next record links to the last one written."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 2)
    live, log._fd = log._fd, os.open(full, os.O_WRONLY)  # the disk is full from here
    with pytest.raises(OSError):
        write_audit(log, 1)
    assert (log.write_errors, log.head[0]) == (1, 2)
    os.close(log._fd)
    log._fd = live  # room again
    write_audit(log, 1)
    log.close()
    assert [r["seq"] for r in records(path)] == [1, 2, 3]
    assert audit_mod.verify(path).ok


# --- fsync ---------------------------------------------------------------------


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fdatasync the logs make, by file descriptor (still performed)."""
    calls: list[int] = []
    real = hitlog._sync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(hitlog, "_sync", counting)
    return calls


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("never", 0), ("always", 5), ("interval", 2)],  # interval: at t=1.0 and t=2.5
)
def test_fsync_modes(tmp_path: Path, syncs: list[int], mode: hitlog.FsyncMode,
                     expected: int) -> None:  # fmt: skip
    clock = Clock(china(2026, 7, 1))
    start = clock.now
    log = AppendLog(tmp_path / "hits.jsonl", fsync=mode, fsync_interval=1.0, clock=clock)
    for offset in (0.0, 0.5, 1.0, 1.2, 2.5):
        clock.now = start + offset
        log.append({"n": offset})
    assert len(syncs) == expected
    log.close()
    assert len(syncs) == expected + (mode != "never")  # close syncs what is left
    assert len(lines(tmp_path / "hits.jsonl")) == 5


def test_a_bad_fsync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of never, always, interval"):
        AppendLog(tmp_path / "x.jsonl", fsync="sometimes")  # type: ignore[arg-type]


# --- verify ----------------------------------------------------------------------


@pytest.fixture
def audit_set(tmp_path: Path) -> Path:
    """An intact audit set of 15 records: two rotated files of 5 (days 1 and 2 July), live 5."""
    path = tmp_path / "audit.jsonl"
    clock = Clock(china(2026, 7, 1))
    log = AuditLog(path, clock=clock)
    for day in (1, 2, 3):
        clock.now = china(2026, 7, day)
        write_audit(log, 5)
    log.close()
    return path


def first_rotated(path: Path) -> Path:
    return path.with_name("audit.jsonl.20260701.1")


def rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in change(lines(path))))


def test_an_intact_set_verifies(audit_set: Path) -> None:
    result = audit_mod.verify(audit_set)
    assert result.ok and (result.records, len(result.files)) == (15, 3)


def test_verify_names_an_edited_record_in_a_rotated_file(audit_set: Path) -> None:
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [*ls[:2], ls[2].replace(b'"DENY"', b'"ALLOW"'), *ls[3:]])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq, problem.kind) == (rotated, 3, 3, "edited")


def test_verify_names_an_edited_last_record_of_a_rotated_file(audit_set: Path) -> None:
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [*ls[:4], ls[4].replace(b"0.0.1", b"0.0.2")])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq, problem.kind) == (rotated, 5, 5, "edited")


def test_verify_names_an_edited_seq(audit_set: Path) -> None:
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [*ls[:3], ls[3].replace(b'"seq":4', b'"seq":9'), *ls[4:]])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq, problem.kind) == (rotated, 4, 9, "edited")


def test_verify_names_a_removed_record_in_a_rotated_file(audit_set: Path) -> None:
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [*ls[:2], *ls[3:]])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq, problem.kind) == (rotated, 3, 3, "removed")


def test_verify_names_a_removed_rotated_file(audit_set: Path) -> None:
    first_rotated(audit_set).unlink()
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.kind) == (1, 1, "removed")
    assert "seq 1..5 missing" in problem.detail


def test_verify_names_swapped_records_in_a_rotated_file(audit_set: Path) -> None:
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.seq, problem.kind) == (rotated, 2, 3, "reordered")


def test_verify_names_a_line_that_is_not_json(audit_set: Path) -> None:
    rotated = audit_set.with_name("audit.jsonl.20260702.2")
    rewrite(rotated, lambda ls: [*ls[:1], ls[1][:-5], *ls[2:]])
    problem = audit_mod.verify(audit_set).problem
    assert problem is not None
    assert (problem.file, problem.line, problem.kind) == (rotated, 2, "not JSON")


def run_audit_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    handlers = add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return handlers[args.command](args)


def test_audit_verify_command(audit_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit_cli("audit", "verify", str(audit_set)) == 0
    assert capsys.readouterr().out.startswith("OK: 15 records in 3 files")
    rotated = first_rotated(audit_set)
    rewrite(rotated, lambda ls: [*ls[:1], *ls[2:]])
    assert run_audit_cli("audit", "verify", str(audit_set)) == 1
    out = capsys.readouterr().out
    assert f"{rotated}:2: seq 2 removed" in out
    assert run_audit_cli("audit", "verify", str(audit_set.with_name("nothing.jsonl"))) == 2


# --- the noted head: a cut tail ---------------------------------------------------


def verify_cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``shixin-check audit verify PATH`` through the real entry point: (exit, out, err)."""
    code = cli_main(["audit", "verify", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def truncated(path: Path, noted: int, sha256: str, ends: int, where: str = "") -> str:
    return (
        f"BROKEN: {path}{where}: truncated: the head records seq {noted} "
        f"(sha256 {sha256[:12]}…, in {path.name}) but the log ends at seq {ends}"
    )


def test_a_closed_log_notes_its_head_and_verifies_without_warning(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = hitlog.read_head(audit_set)
    assert head == hitlog.ChainHead(15, hitlog.line_hash(lines(audit_set)[-1]), "audit.jsonl")
    code, out, err = verify_cli(audit_set, capsys)
    assert (code, err) == (0, "")
    assert out.startswith("OK: 15 records in 3 files; head seq 15 sha256 ")


def test_records_cut_at_a_line_boundary_are_reported(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = hitlog.line_hash(lines(audit_set)[-1])
    rewrite(audit_set, lambda ls: ls[:-3])
    code, out, _ = verify_cli(audit_set, capsys)
    assert code == 1
    assert out.startswith(truncated(audit_set, 15, head, 12) + "\n")


def test_records_cut_mid_record_are_reported(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = lines(audit_set)
    audit_set.write_bytes(b"".join(x + b"\n" for x in raw[:2]) + raw[2][:40])
    code, out, _ = verify_cli(audit_set, capsys)
    assert code == 1
    expected = truncated(audit_set, 15, hitlog.line_hash(raw[-1]), 12, ":3")
    assert out.startswith(expected + " and part of a record\n")


def test_a_cut_across_a_rotation_is_reported(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = hitlog.line_hash(lines(audit_set)[-1])
    audit_set.unlink()  # the whole live file, and with it the last 5 records
    code, out, _ = verify_cli(audit_set, capsys)
    assert code == 1
    last_rotated = audit_set.with_name("audit.jsonl.20260702.2")
    expected = (
        f"BROKEN: {last_rotated}: truncated: the head records seq 15 (sha256 {head[:12]}…, "
        "in audit.jsonl) but the log ends at seq 10"
    )
    assert out.startswith(expected + "\n")


def test_a_rewritten_last_record_is_reported(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rewrite(audit_set, lambda ls: [*ls[:-1], ls[-1].replace(b'"DENY"', b'"ALLOW"')])
    code, out, _ = verify_cli(audit_set, capsys)  # the chain alone cannot see it: nothing follows
    assert code == 1
    assert out.startswith(f"BROKEN: {audit_set}:5: seq 15 rewritten: the head records seq 15")


def test_a_log_without_a_head_verifies_with_a_warning(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hitlog.head_path(audit_set).unlink()  # as a log written before heads were kept
    rewrite(audit_set, lambda ls: ls[:-3])
    code, out, err = verify_cli(audit_set, capsys)
    assert code == 0 and out.startswith("OK: 12 records in 3 files")
    assert err == (
        "audit verify: warning: no head noted (audit.jsonl.head is missing): records cut off "
        "the end would not show; logs written before heads were kept have none\n"
    )


def test_a_head_that_is_not_one_is_reported(
    audit_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hitlog.head_path(audit_set).write_text('{"seq": "many"}\n')
    code, out, _ = verify_cli(audit_set, capsys)
    assert code == 1 and out.startswith(f"BROKEN: {audit_set}.head: bad head: ")


def test_a_head_behind_the_end_is_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, head_interval=3600, clock=Clock(china(2026, 7, 1)))
    write_audit(log, 4)  # still running: the head was noted at the start only
    try:
        assert hitlog.read_head(path) == hitlog.ChainHead(0, hitlog.GENESIS, "")
        code, out, _ = verify_cli(path, capsys)
        assert code == 0 and "the noted head is seq 0, 4 records behind" in out
    finally:
        log.close()
    assert hitlog.read_head(path) == hitlog.ChainHead(4, log.head[1], "audit.jsonl")


def test_a_writer_restarted_on_a_cut_log_keeps_the_gap(
    audit_set: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    rewrite(audit_set, lambda ls: ls[:-3])
    log = AuditLog(audit_set, clock=Clock(china(2026, 7, 3)))  # restarted after the cut
    write_audit(log, 2)
    log.close()
    [warned] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "does not end where its head says" in warned.getMessage()
    assert [r["seq"] for r in records(audit_set)][-4:] == [11, 12, 16, 17]
    code, out, _ = verify_cli(audit_set, capsys)
    assert code == 1
    assert f"{audit_set}:3: seq 13 removed: seq 13..15 missing before this record" in out


def test_a_restart_on_an_intact_log_goes_on_from_its_head(
    audit_set: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(audit_set, max_bytes=900, clock=Clock(china(2026, 7, 3)))
    write_audit(log, 6)  # rotates again on size
    log.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    code, out, err = verify_cli(audit_set, capsys)
    assert (code, err) == (0, "") and out.startswith("OK: 21 records in ")
    assert hitlog.read_head(audit_set) == hitlog.ChainHead(
        21, hitlog.line_hash(lines(audit_set)[-1]), "audit.jsonl"
    )


def test_a_running_server_notes_its_head_and_a_cut_shows(
    tmp_path: Path, serve: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]
) -> None:
    audit_path = tmp_path / "logs" / "audit.jsonl"
    server = serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()), audit_log=audit_path)
    stub = server.stub()
    for _ in range(5):
        stub.CheckConsumption(rail(ZHANG, "张伟"))
    deadline = time.monotonic() + 10
    while (head := hitlog.read_head(audit_path)) is None or head.seq < 5:
        assert time.monotonic() < deadline, "the server never noted the head"
        time.sleep(0.02)
    assert verify_cli(audit_path, capsys)[0] == 0
    rewrite(audit_path, lambda ls: ls[:-2])  # cut under the running writer
    code, out, _ = verify_cli(audit_path, capsys)
    assert code == 1
    assert out.startswith(truncated(audit_path, 5, head.sha256, 3) + "\n")


# --- through a server ----------------------------------------------------------------


def rail(number: str, name: str = "", **kw: str) -> pb.CheckRequest:
    seat = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    return build_request("RAIL", id_number=number, name=name, purchase=seat, **kw)  # type: ignore[arg-type]


def test_every_call_is_audited_refused_ones_included(
    tmp_path: Path, serve: Callable[..., RunningServer]
) -> None:
    audit_path = tmp_path / "logs" / "audit.jsonl"
    server = serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()), audit_log=audit_path)
    stub = server.stub()
    stub.CheckConsumption(rail(ZHANG, "张伟"))
    stub.CheckConsumption(rail(ZHAO))
    bad = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    with pytest.raises(grpc.RpcError):
        stub.CheckConsumption(rail(bad))
    outcomes = [(r["method"], r["outcome"]) for r in records(audit_path)]
    assert outcomes == [("CheckConsumption", "DENY"), ("CheckConsumption", "ALLOW"),
                        ("CheckConsumption", "INVALID_ARGUMENT")]  # fmt: skip
    assert audit_mod.verify(audit_path).ok
    raw = audit_path.read_bytes()
    assert not any(n.encode() in raw for n in (ZHANG, ZHAO, bad))


def test_a_batch_is_audited_with_each_subject_masked_and_its_outcomes(
    tmp_path: Path, serve: Callable[..., RunningServer]
) -> None:
    """One record per call, as for any call; a batch's names every subject it
    checked (masked, in order) and counts its decisions: who asked about whom."""
    audit_path = tmp_path / "logs" / "audit.jsonl"
    server = serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()), audit_log=audit_path)
    checks = [rail(ZHAO), rail(ZHANG, "张伟"), rail(LI), rail(ZHAO)]
    server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=checks))
    [record] = records(audit_path)
    assert (record["method"], record["outcome"], record["checks"]) == (
        "CheckConsumptionBatch", "OK", 4
    )  # fmt: skip
    masked = [n[:6] + "********" + n[-4:] for n in (ZHAO, ZHANG, LI, ZHAO)]
    assert record["subjects"] == masked
    assert record["outcomes"] == {"ALLOW": 2, "DENY": 2}
    raw = audit_path.read_bytes()
    assert not any(n.encode() in raw for n in (ZHANG, ZHAO, LI))
    assert audit_mod.verify(audit_path).ok


def test_each_hit_is_joined_to_its_call_s_audit_record_by_check_id(
    tmp_path: Path, serve: Callable[..., RunningServer]
) -> None:
    """The courts' auditor reconciles the hit log with the calls: every hit record's
    check_id is in the audit record of the call that answered it (a unary call's or a
    stream message's ``check_id``, a batch's ``hits``), and no other check's is."""
    hits_path, audit_path = tmp_path / "logs" / "hits.jsonl", tmp_path / "logs" / "audit.jsonl"
    server = serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()), hit_log=hits_path,
                   audit_log=audit_path)  # fmt: skip
    stub = server.stub()
    denied = stub.CheckConsumption(rail(ZHANG, "张伟"))
    allowed = stub.CheckConsumption(rail(ZHAO))
    batch = stub.CheckConsumptionBatch(pb.CheckBatchRequest(
        checks=[rail(ZHAO), rail(ZHANG, "张伟"), rail(LI), rail(ZHAO)]
    ))  # fmt: skip
    unlisted = stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=[rail(ZHAO)] * 3))
    streamed = list(stub.CheckConsumptionStream(iter([
        rail(ZHAO, request_id="s1"), rail(LI, request_id="s2"),
    ])))  # fmt: skip
    unary, plain, listed_batch, unlisted_batch, *stream = records(audit_path)
    assert unary["check_id"] == denied.check_id and "check_id" not in plain
    assert allowed.check_id not in audit_path.read_text()
    matched = [a.check_id for a in batch.results if a.matches]
    assert len(matched) == 2 and listed_batch["hits"] == matched
    assert "hits" not in unlisted_batch and not any(a.matches for a in unlisted.results)
    assert "check_id" not in stream[0] and stream[1]["check_id"] == streamed[1].check_id
    logged = [r["check_id"] for r in records(hits_path)]
    assert logged == [denied.check_id, *matched, streamed[1].check_id]
    assert audit_mod.verify(audit_path).ok


def test_sigkill_loses_no_answered_hit(tmp_path: Path) -> None:
    hits, audit_path = tmp_path / "hits.jsonl", tmp_path / "audit.jsonl"
    listed = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    server = ServeProcess("--list", str(listed), "--hit-log", str(hits),
                          "--audit-log", str(audit_path))  # fmt: skip
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        answered: list[str] = []
        for i in range(60):
            answer = stub.CheckConsumption(rail(ZHANG, "张伟", request_id=f"r{i}"))
            assert answer.decision == pb.DENY
            answered.append(answer.check_id)
            assert stub.CheckConsumption(rail(ZHAO)).decision == pb.ALLOW  # not a hit
        server.proc.kill()  # SIGKILL right after the last answer arrived
        assert server.proc.wait(timeout=10) == -9
        channel.close()
    finally:
        server.stop()
    logged = records(hits)
    assert [r["check_id"] for r in logged] == answered
    assert {r["decision"] for r in logged} == {"DENY"}
    result = audit_mod.verify(audit_path)
    assert result.ok and result.records == 120
    for path in (hits, audit_path):
        raw = path.read_bytes()
        assert ZHANG.encode() not in raw and ZHAO.encode() not in raw and LI.encode() not in raw
