"""The quarterly feedback report: what it counts, how it dedupes, what it never shows.

Hit records are made by hand (``hit``) in the shape ``HitLog`` writes, so
each test shows one rule with a handful of records; the last test builds the
report from the logs of a real server and greps every file for the IDs used.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin_check.cli_logs import add_parsers
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import mask_id
from shixin_check.domain.model import CHINA_TZ
from shixin_check.server.feedback import (
    ChannelEnforcement,
    Quarter,
    build_report,
    report_csv,
    report_json,
)
from shixin_check.server.hitlog import WITHDRAWN_UNAUDITED, HitLog, log_files
from tests.conftest import RunningServer
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    person_entry,
    write_jsonl,
)

COURT_A = "北京市朝阳区人民法院"
COURT_B = "上海市黄浦区人民法院"
CASE_A = "(2024)京0105执1001号"
CASE_B = "(2023)沪0101执88号"


def china(m: int, d: int, hh: int = 12, mm: int = 0, y: int = 2026) -> float:
    return _dt.datetime(y, m, d, hh, mm, tzinfo=CHINA_TZ).timestamp()


def hit(
    check_id: str,
    when: float,
    decision: str = "DENY",
    *,
    channel: str = "RAIL",
    cases: tuple[tuple[str, str, str], ...] = ((CASE_A, COURT_A, "ACTIVE"),),
    codes: tuple[str, ...] = ("RAIL_G_TRAIN",),
    merchant: str = "m-1",
) -> dict[str, Any]:
    """A hit record as ``HitLog`` writes it; ``cases``: (case number, court, status)."""
    return {
        "time": when, "check_id": check_id, "request_id": "", "list_version": "v1",
        "masked_id": mask_id(ZHANG), "channel": channel, "purchase": {}, "amount_fen": 0,
        "decision": decision, "codes": list(codes), "case_numbers": [c[0] for c in cases],
        "matches": [
            {"case_number": n, "court": court, "entry_id": "E1", "role": "DEBTOR",
             "status": status, "list_type": "SHIXIN"}
            for n, court, status in cases
        ],
        "merchant_id": merchant, "terminal_id": "t-1", "caller": "", "peer": "ipv4:10.0.0.1:1",
    }  # fmt: skip


def quarter_hits() -> list[dict[str, Any]]:
    """2026Q3: ten checks, one of them logged twice, and two just outside the quarter."""
    both = ((CASE_A, COURT_A, "ACTIVE"), (CASE_B, COURT_B, "ACTIVE"))
    return [
        hit("h0", china(6, 30, 23, 59)),  # Q2 in China time
        hit("h1", china(7, 3), merchant="m-1"),
        hit("h2", china(8, 15), merchant="m-2"),
        hit("h3", china(9, 30, 23, 30), cases=both),  # 15:30 UTC: still Q3 in China
        hit("h4", china(7, 10), channel="AIRLINE", codes=("AIR_TRAVEL",), merchant=""),
        hit("h5", china(7, 11), "REVIEW", codes=("RAIL_G_TRAIN", "NAME_MISMATCH")),
        hit("h6", china(7, 12), "ALLOW", channel="AIRLINE",
            cases=((CASE_B, COURT_B, "SUSPENDED"),), codes=("LISTING_SUSPENDED",)),
        hit("h7", china(7, 13), "ALLOW", channel="HOTEL", codes=("EXEMPTED",)),
        hit("h8", china(7, 14), "ALLOW", cases=((CASE_A, COURT_A, "EXPIRED"),), codes=("EXPIRED",)),
        hit("h9", china(7, 15), "ALLOW", codes=("NOT_RESTRICTED_CLASS",)),
        hit("h10", china(7, 16), "ALLOW", channel="HOTEL", cases=both,
            codes=("EXEMPTED", "NOT_RESTRICTED_CLASS")),
        hit("h1", china(7, 3), merchant="m-1"),  # the same check again (another file)
        hit("h11", china(10, 1, 0, 30)),  # 16:30 UTC on 30 September: Q4 in China
    ]  # fmt: skip


def enforcement(report: Any, case_number: str, channel: str) -> ChannelEnforcement:
    [case] = [c for c in report.cases if c.case_number == case_number]
    return case.channels[channel]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("text", "start", "end", "due"),
    [
        ("2026Q3", "2026-07-01", "2026-09-30", "2026-10-30"),
        ("2026q4", "2026-10-01", "2026-12-31", "2027-01-30"),
        ("2024Q1", "2024-01-01", "2024-03-31", "2024-04-30"),
        ("2026Q2", "2026-04-01", "2026-06-30", "2026-07-30"),
    ],
)
def test_quarter_period_and_due_date(text: str, start: str, end: str, due: str) -> None:
    q = Quarter.parse(text)
    assert (q.start.isoformat(), q.end.isoformat(), q.due.isoformat()) == (start, end, due)


@pytest.mark.parametrize("text", ["2026Q5", "2026-Q3", "Q3", "2026Q0"])
def test_a_bad_quarter_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not like 2026Q3"):
        Quarter.parse(text)


def test_counts_per_case_and_channel() -> None:
    report = build_report(quarter_hits(), "2026Q3")
    rail_a = enforcement(report, CASE_A, "RAIL")
    assert (rail_a.denied, rail_a.first_denied, rail_a.last_denied) == (
        3, "2026-07-03", "2026-09-30"
    )  # fmt: skip
    assert sorted(rail_a.merchants) == ["m-1", "m-2"]
    assert (rail_a.reviews, rail_a.allowed_expired, rail_a.allowed_not_restricted) == (1, 1, 1)
    air_a = enforcement(report, CASE_A, "AIRLINE")
    assert (air_a.denied, air_a.merchants) == (1, set())
    hotel_a = enforcement(report, CASE_A, "HOTEL")
    assert (hotel_a.allowed_exempted, hotel_a.allowed_not_restricted) == (1, 1)
    assert enforcement(report, CASE_B, "RAIL").denied == 1  # h3 denied for both cases
    assert enforcement(report, CASE_B, "AIRLINE").allowed_suspended == 1
    assert enforcement(report, CASE_B, "HOTEL").allowed_not_restricted == 1
    assert [(c.court, c.case_number) for c in report.cases] == sorted(
        [(COURT_A, CASE_A), (COURT_B, CASE_B)]
    )
    t = report.totals
    assert (t.checks, t.denied, t.reviews, t.allowed) == (10, 4, 1, 5)
    assert (t.duplicates, t.outside_quarter, t.skipped_lines) == (1, 2, 0)


def write_lines(path: Path, rows: list[dict[str, Any]], extra: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + extra)
    return path


@pytest.fixture
def hit_logs(tmp_path: Path) -> tuple[Path, Path]:
    """(live hit log of replica 1 with two rotated files, live hit log of replica 2)."""
    rows = quarter_hits()
    one = tmp_path / "r1" / "hits.jsonl"
    write_lines(one.with_name("hits.jsonl.20260630.1"), rows[:2])
    write_lines(one.with_name("hits.jsonl.20260814.2"), rows[2:6], b"not json\n\n[1, 2]\n")
    write_lines(one, rows[6:11])
    two = write_lines(tmp_path / "r2" / "hits.jsonl", rows[11:])
    return one, two


def test_rotated_files_and_replicas_are_read_once_per_check(hit_logs: tuple[Path, Path]) -> None:
    one, two = hit_logs
    report = build_report([*log_files(one), *log_files(two)], "2026Q3")
    t = report.totals
    assert (t.checks, t.denied, t.duplicates, t.outside_quarter) == (10, 4, 1, 2)
    assert t.skipped_lines == 2  # "not json" and a JSON list; the blank line is no record
    assert t.first_skipped == f"{one.with_name('hits.jsonl.20260814.2')}:5"  # after 4 rows
    assert enforcement(report, CASE_A, "RAIL").denied == 3


def test_csv_has_one_row_per_case_court_and_channel() -> None:
    text = report_csv(build_report(quarter_hits(), "2026Q3"))
    rows = list(csv.DictReader(io.StringIO(text)))
    by_key = {(r["case_number"], r["channel"]): r for r in rows}
    assert len(rows) == 6
    rail_a = by_key[(CASE_A, "RAIL")]
    assert rail_a["court"] == COURT_A and rail_a["list_types"] == "SHIXIN"
    assert rail_a["denied"] == "3" and rail_a["merchant_count"] == "2"
    assert rail_a["merchants"] == "m-1;m-2"
    assert (rail_a["first_denied"], rail_a["last_denied"]) == ("2026-07-03", "2026-09-30")
    assert {(r["quarter"], r["period_start"], r["due_date"]) for r in rows} == {
        ("2026Q3", "2026-07-01", "2026-10-30")
    }


def test_json_holds_period_totals_and_cases() -> None:
    generated = china(10, 2, 9)
    doc = orjson.loads(report_json(build_report(quarter_hits(), "2026Q3", now=generated)))
    assert {k: doc[k] for k in ("quarter", "period_start", "period_end", "due_date")} == {
        "quarter": "2026Q3", "period_start": "2026-07-01", "period_end": "2026-09-30",
        "due_date": "2026-10-30",
    }  # fmt: skip
    assert doc["generated_at"] == "2026-10-02T09:00:00+08:00"
    assert doc["totals"]["checks"] == 10 and doc["totals"]["duplicates"] == 1
    case_a = next(c for c in doc["cases"] if c["case_number"] == CASE_A)
    channels = {c["channel"]: c for c in case_a["channels"]}
    assert sorted(channels) == ["AIRLINE", "HOTEL", "RAIL"]
    assert channels["RAIL"]["merchants"] == ["m-1", "m-2"]


def withdrawal(*check_ids: str, when: float = 0.0) -> dict[str, Any]:
    """A withdrawal record as ``HitLog.withdraw`` writes it."""
    return {"time": when or china(7, 20), "withdrawn": list(check_ids),
            "reason": WITHDRAWN_UNAUDITED}  # fmt: skip


def test_withdrawn_hits_are_not_counted() -> None:
    """h2 is withdrawn, and h1 (logged twice), and h0 (outside the quarter); a
    withdrawal of a check no record holds changes nothing. Every record of the
    quarter is a check, a withdrawn one or a duplicate: 10 + 1 = 8 + 2 + 1."""
    records = [*quarter_hits(), withdrawal("h2", "h1"), withdrawal("h0"), withdrawal("nowhere")]
    report = build_report(records, "2026Q3")
    t = report.totals
    assert (t.checks, t.denied, t.reviews, t.allowed) == (8, 2, 1, 5)
    assert (t.withdrawn, t.duplicates, t.outside_quarter, t.skipped_lines) == (2, 1, 2, 0)
    rail_a = enforcement(report, CASE_A, "RAIL")  # h1 and h2 were two of its three denials
    assert (rail_a.denied, rail_a.first_denied, rail_a.merchants) == (1, "2026-09-30", {"m-1"})


def test_a_withdrawal_applies_from_a_later_file_and_whatever_its_time(tmp_path: Path) -> None:
    """A withdrawal follows its hit, in the same file or in a later one of the set (a
    rotation in between), even in the next quarter; one written by hand (a single
    check id, spaces in the JSON) counts too. Neither is an unreadable line."""
    live = tmp_path / "hits.jsonl"
    write_lines(live.with_name("hits.jsonl.20260930.1"), [hit("h1", china(9, 30, 23, 59))])
    write_lines(live, [withdrawal("h1", when=china(10, 1, 0, 0)), hit("h2", china(9, 1))],
                b'{"withdrawn": "h2", "reason": "by hand"}\n')  # fmt: skip
    t = build_report(log_files(live), "2026Q3").totals
    assert (t.checks, t.withdrawn, t.outside_quarter, t.skipped_lines) == (0, 2, 0, 0)
    assert build_report(log_files(live), "2026Q4").totals.withdrawn == 0  # no hit of Q4


@pytest.mark.parametrize(
    "record",
    [
        {"time": 1.0, "withdrawn": []},
        {"time": 1.0, "withdrawn": ""},
        {"time": 1.0, "withdrawn": ["h1", 2]},
        {"time": 1.0, "withdrawn": {"h1": True}},
        {"time": 1.0, "withdrawn": ["h1"], "check_id": "x"},  # a hit's field: not a withdrawal
    ],
)
def test_a_record_that_is_not_quite_a_withdrawal_withdraws_nothing(record: dict[str, Any]) -> None:
    t = build_report([hit("h1", china(7, 1)), record], "2026Q3").totals
    assert (t.checks, t.withdrawn, t.skipped_lines) == (1, 0, 1)


def test_the_hit_logs_withdrawal_is_read_by_the_report(tmp_path: Path) -> None:
    """What ``HitLog.withdraw`` writes is what the report reads."""
    log = HitLog(tmp_path / "hits.jsonl", clock=lambda: china(8, 1))
    log.withdraw(["h1", "h2"], WITHDRAWN_UNAUDITED)
    log.close()
    [line] = (tmp_path / "hits.jsonl").read_bytes().splitlines()
    assert orjson.loads(line) == withdrawal("h1", "h2", when=china(8, 1))
    records = [hit("h1", china(7, 1)), hit("h2", china(7, 2)), hit("h3", china(7, 3))]
    t = build_report([*records, tmp_path / "hits.jsonl"], "2026Q3").totals
    assert (t.checks, t.withdrawn, t.skipped_lines) == (1, 2, 0)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    handlers = add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return handlers[args.command](args)


def test_feedback_command_writes_csv_or_json(
    hit_logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = hit_logs
    out = tmp_path / "reports" / "2026Q3.json"
    code = run_cli("feedback", "--quarter", "2026Q3", "--format", "json", "--out", str(out),
                   "--hit-log", str(one), str(two))  # fmt: skip
    assert code == 0
    assert orjson.loads(out.read_bytes())["totals"]["checks"] == 10
    assert "10 checks (4 denied" in capsys.readouterr().err
    withdrawn = write_lines(tmp_path / "more" / "withdrawn.jsonl", [withdrawal("h1", "h2")])
    assert run_cli("feedback", "--quarter", "2026Q3", "--format", "json", "--out", str(out),
                   "--hit-log", str(one), str(two), str(withdrawn)) == 0  # fmt: skip
    assert orjson.loads(out.read_bytes())["totals"]["withdrawn"] == 2
    assert "8 checks (2 denied" in (summary := capsys.readouterr().err), summary
    assert "1 duplicates, 2 withdrawn, 2 unreadable lines" in summary
    assert run_cli("feedback", "--quarter", "2026Q3", "--hit-log", str(one), str(two)) == 0
    assert capsys.readouterr().out.startswith("quarter,period_start,period_end,due_date,")


def test_feedback_command_applies_each_workers_withdrawals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --workers 2``: each worker's set holds its own hits and withdrawals (one
    past a rotation); the command finds both sets under the path it is given."""
    base = tmp_path / "hits.jsonl"
    write_lines(tmp_path / "hits.w1.jsonl.20260801.1", [hit("w1-1", china(8, 1)),
                                                        hit("w1-2", china(8, 1, 13))])  # fmt: skip
    write_lines(tmp_path / "hits.w1.jsonl", [withdrawal("w1-1", when=china(8, 1, 12))])
    write_lines(tmp_path / "hits.w2.jsonl", [hit("w2-1", china(8, 2)), withdrawal("w2-1"),
                                             hit("w2-2", china(8, 3))])  # fmt: skip
    assert run_cli("feedback", "--quarter", "2026Q3", "--format", "json", "--hit-log",
                   str(base)) == 0  # fmt: skip
    captured = capsys.readouterr()
    totals = orjson.loads(captured.out)["totals"]
    assert (totals["checks"], totals["denied"], totals["withdrawn"]) == (2, 2, 2), totals
    assert "2 checks (2 denied" in captured.err and " 2 withdrawn, " in captured.err


def test_feedback_command_reads_the_hit_log_from_the_environment(
    hit_logs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHIXIN_HIT_LOG", str(hit_logs[0]))
    assert run_cli("feedback", "--quarter", "2026Q3", "--format", "json") == 0
    assert orjson.loads(capsys.readouterr().out)["totals"]["checks"] == 10


def test_feedback_command_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "none.jsonl")
    assert run_cli("feedback", "--quarter", "2026Q9", "--hit-log", missing) == 2
    assert run_cli("feedback", "--quarter", "2026Q3", "--hit-log", missing) == 2
    assert "no hit log at" in capsys.readouterr().err


def current_quarter() -> str:
    today = _dt.datetime.now(CHINA_TZ).date()
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


def test_no_id_number_in_any_log_or_report(
    tmp_path: Path, serve: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*basic_rows(), person_entry("E4", LI, "李娜", status="SUSPENDED",
                                        case_number="(2025)沪0104执9号")]  # fmt: skip
    (tmp_path / "list").mkdir()
    listed = write_jsonl(tmp_path / "list" / "l.jsonl", rows)
    logs, reports = tmp_path / "logs", tmp_path / "reports"
    server = serve(listed, hit_log=logs / "hits.jsonl", audit_log=logs / "audit.jsonl")
    stub = server.stub()
    rail = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    for number, name in (
        (ZHANG, "张伟"),
        (ZHANG, "李四"),
        (LI, "李娜"),
        (WANG, "王芳"),
        (ZHAO, ""),
    ):
        stub.CheckConsumption(build_request("RAIL", id_number=number, name=name, purchase=rail,
                                            merchant_id="m-12306"))  # fmt: skip
    stub.CheckConsumption(build_request("HOTEL", uscc=ACME_USCC, purchase={"star_rating": 5}))
    quarter = current_quarter()
    for fmt in ("csv", "json"):
        out = str(reports / f"r.{fmt}")
        hits = str(logs / "hits.jsonl")
        assert run_cli("feedback", "--quarter", quarter, "--format", fmt, "--hit-log", hits,
                       "--out", out) == 0  # fmt: skip
    doc = orjson.loads((reports / "r.json").read_bytes())
    assert doc["totals"]["denied"] == 4 and doc["totals"]["reviews"] == 1
    assert run_cli("audit", "verify", str(logs / "audit.jsonl")) == 0
    capsys.readouterr()
    produced = [*logs.iterdir(), *reports.iterdir()]
    assert len(produced) == 7  # hits, audit and its head, the two logs' locks, two reports
    plaintext = [ZHANG, LI, WANG, ZHAO, ACME_USCC]
    for path in produced:
        raw = path.read_bytes()
        assert [n for n in plaintext if n.encode() in raw] == [], path
    for path in reports.iterdir():  # the report holds no ID number, not even masked
        raw = path.read_bytes()
        assert [n for n in plaintext if mask_id(n).encode() in raw] == [], path


def test_feedback_of_a_quarter_not_over_says_it_counts_only_so_far(
    hit_logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A report made before its quarter ends looked complete (due date and all): the
    summary says it counts the hits up to the report's time only."""
    now = current_quarter()
    assert run_cli("feedback", "--quarter", now, "--hit-log", str(hit_logs[0])) == 0
    summary = capsys.readouterr().err
    quarter = Quarter.parse(now)
    assert (
        f"; {now} is not over (it ends {quarter.end}, China time): this report counts " in summary
    )
    year, number = quarter.year + (quarter.number == 4), quarter.number % 4 + 1
    later = f"{year}Q{number}"
    assert run_cli("feedback", "--quarter", later, "--hit-log", str(hit_logs[0])) == 0
    assert f"; {later} has not begun" in capsys.readouterr().err
    assert run_cli("feedback", "--quarter", "2026Q3", "--hit-log", str(hit_logs[0])) == 0
    summary = capsys.readouterr().err
    assert "not over" not in summary and "not begun" not in summary


def test_records_dated_in_a_quarter_not_begun_are_not_called_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hits dated in next quarter (a server whose clock ran ahead): the summary no
    longer says there is nothing to count; it counts them and blames a clock."""
    quarter = Quarter.parse(current_quarter())
    year, number = quarter.year + (quarter.number == 4), quarter.number % 4 + 1
    later = Quarter.parse(f"{year}Q{number}")
    day = later.start + _dt.timedelta(days=3)
    when = china(day.month, day.day, y=day.year)
    hits = write_lines(tmp_path / "hits.jsonl", [hit("a1", when), hit("a2", when + 60)])
    assert run_cli("feedback", "--quarter", str(later), "--hit-log", str(hits)) == 0
    summary = capsys.readouterr().err
    assert f"feedback {later}: 1 cases, 2 checks" in summary, summary
    assert "nothing to count" not in summary
    assert f"; {later} has not begun by this machine's clock (it starts {later.start}" in summary
    assert "yet 2 records are dated in it: the server's clock or this one is wrong" in summary
