"""The log tools, ``feedback`` and ``audit verify``, on an operator's slips and odd files.

Each test runs the real ``shixin-check`` in a child process over real files:
hit records in the shape ``HitLog`` writes (``tests.test_feedback.hit``), and
audit logs written by ``AuditLog`` itself. A slip gets one line naming the
argument and the problem, exit 2; a record that is not a hit is counted and
located, never counted as a check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin_check.server.hitlog import AuditLog
from tests.processes import run_cli
from tests.test_feedback import china, hit


def one_line_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The single line of a refusal (exit 2, no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def write_hits(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def audit_log(path: Path, records: int) -> Path:
    """A real audit log of ``records`` records, closed (its head noted)."""
    log = AuditLog(path)
    for i in range(records):
        log.record("CheckConsumption", "ipv4:127.0.0.1:5", f"110105********{i:04d}", "DENY", 0.0)
    log.close()
    return path


# --- paths that name no log ---------------------------------------------------------------


@pytest.mark.parametrize("given", ["", ".", "/", "DIR"])
def test_audit_verify_of_an_empty_path_or_a_folder_is_one_line(tmp_path: Path, given: str) -> None:
    text = str(tmp_path) if given == "DIR" else given
    line = one_line_refusal(run_cli("audit", "verify", text))
    assert line.startswith("audit verify: PATH: "), line
    assert ("is empty" if not text else f"{text} is a directory") in line, line


@pytest.mark.parametrize("given", ["", ".", "DIR"])
def test_feedback_names_the_hit_log_argument_that_is_no_log(tmp_path: Path, given: str) -> None:
    hits = write_hits(tmp_path / "hits.jsonl", [hit("c-1", china(8, 1))])
    text = str(tmp_path) if given == "DIR" else given
    done = run_cli("feedback", "--quarter", "2026Q3", "--hit-log", str(hits), text)
    line = one_line_refusal(done)
    assert line.startswith("feedback: hit log argument 1: "), line
    assert ("is empty" if not text else f"{text} is a directory") in line, line


# --- feedback: what is a quarter, what is a hit ---------------------------------------------


@pytest.mark.parametrize("quarter", ["２026Q4", "2026Q４", "٢٠٢٦Q3"])
def test_a_quarter_in_other_digits_is_refused(tmp_path: Path, quarter: str) -> None:
    hits = write_hits(tmp_path / "hits.jsonl", [hit("c-1", china(8, 1))])
    line = one_line_refusal(run_cli("feedback", "--quarter", quarter, "--hit-log", str(hits)))
    assert "is not like 2026Q3" in line, line


def test_an_audit_log_given_as_the_hit_log_is_refused_saying_so(tmp_path: Path) -> None:
    audit = audit_log(tmp_path / "audit.jsonl", 5)
    out = tmp_path / "report.csv"
    done = run_cli("feedback", "--quarter", "2026Q4", "--hit-log", str(audit), "--out", str(out))
    line = one_line_refusal(done)
    assert f"{audit}:1 is an audit-log record, not a hit record" in line, line
    assert not out.exists()  # no empty report passed off as the quarter's


def test_a_time_that_is_not_a_number_and_an_unknown_decision_are_unreadable(
    tmp_path: Path,
) -> None:
    boolean_time = {**hit("c-2", china(8, 2)), "time": True}
    maybe = hit("c-3", china(8, 3), decision="MAYBE")
    hits = write_hits(tmp_path / "hits.jsonl", [hit("c-1", china(8, 1)), boolean_time, maybe])
    out = tmp_path / "report.json"
    done = run_cli("feedback", "--quarter", "2026Q3", "--format", "json", "--out", str(out),
                   "--hit-log", str(hits))  # fmt: skip
    assert done.returncode == 0, done.stderr
    totals = orjson.loads(out.read_bytes())["totals"]
    assert (totals["checks"], totals["allowed"], totals["outside_quarter"]) == (1, 0, 0), totals
    assert totals["skipped_lines"] == 2 and totals["first_skipped"] == f"{hits}:2", totals
    assert f"2 unreadable lines (the first at {hits}:2)" in done.stderr, done.stderr


def test_an_empty_quarter_says_where_the_records_were(tmp_path: Path) -> None:
    hits = write_hits(tmp_path / "hits.jsonl", [hit(f"c-{d}", china(8, d)) for d in (1, 2, 3)])
    done = run_cli("feedback", "--quarter", "2026Q4", "--hit-log", str(hits))
    assert done.returncode == 0, done.stderr
    assert " 0 checks " in done.stderr
    assert "none of the 3 records read falls in 2026Q4" in done.stderr, done.stderr
    some = run_cli("feedback", "--quarter", "2026Q3", "--hit-log", str(hits),
                   str(write_hits(tmp_path / "more.jsonl", [hit("c-9", china(11, 9))])))  # fmt: skip
    assert " 3 checks " in some.stderr and "1 records outside 2026Q3" in some.stderr, some.stderr


# --- audit verify: how much is intact -------------------------------------------------------


def test_audit_verify_counts_the_records_intact_before_an_edit(tmp_path: Path) -> None:
    path = audit_log(tmp_path / "audit.jsonl", 12)
    lines = path.read_bytes().splitlines()
    lines[9] = lines[9].replace(b'"DENY"', b'"ALLOW"')  # record 10, still JSON
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    done = run_cli("audit", "verify", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BROKEN: {path}:10: seq 10 edited" in done.stdout, done.stdout
    assert "(9 records intact before it, in 1 files)" in done.stdout, done.stdout


def test_audit_verify_counts_the_records_intact_before_a_rewritten_head(tmp_path: Path) -> None:
    path = audit_log(tmp_path / "audit.jsonl", 12)
    lines = path.read_bytes().splitlines()
    lines[11] = lines[11].replace(b'"DENY"', b'"ALLOW"')  # the last record, noted in the head
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    done = run_cli("audit", "verify", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BROKEN: {path}:12: seq 12 rewritten" in done.stdout, done.stdout
    assert "(11 records intact before it, in 1 files)" in done.stdout, done.stdout
