"""The quarterly report counts each check once per case, however many entries of the case matched.

Courts often list one person twice in one enforcement case: a SHIXIN entry
and a XIANGAO order, each an entry of its own with the same case number and
court. A real server answers real checks against such a list, and the real
``feedback`` command reports them: each case row is told about a check once,
with every list type of the case, and an ALLOW counts in one ``allowed_*``
column chosen by a fixed precedence (an entry in force, then a suspended one,
then an expired one).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.clients.check_client import build_request
from shixin_check.domain.model import CHINA_TZ
from tests.conftest import RunningServer
from tests.listdata import ACME_USCC, LI, WANG, ZHANG, basic_rows, person_entry, rid, write_jsonl

CASE_TWICE = "(2024)京0105执1001号"  # ZHANG: SHIXIN and XIANGAO, both in force
CASE_LIFTED = "(2023)沪0101执88号"  # LI: SHIXIN suspended, XIANGAO expired
CASE_MIXED = "(2025)粤0305执77号"  # a third person: SHIXIN in force, XIANGAO suspended
G_TRAIN = {"train_number": "G1234", "seat": "SECOND_CLASS"}  # restricted
K_TRAIN = {"train_number": "K1", "seat": "HARD_SEAT"}  # never restricted


def quarter_now() -> str:
    today = _dt.datetime.now(CHINA_TZ).date()
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


@pytest.fixture
def third() -> str:
    """A listed person of this file only, built at run time."""
    return rid("44030519900909017")


@pytest.fixture
def listed(tmp_path: Path, third: str) -> Path:
    """Three people, each with two entries (SHIXIN and XIANGAO) in one case."""
    rows = [
        person_entry("T1", ZHANG, "张伟", case_number=CASE_TWICE),
        person_entry("T2", ZHANG, "张伟", list_type="XIANGAO", case_number=CASE_TWICE),
        person_entry("L1", LI, "李娜", status="SUSPENDED", case_number=CASE_LIFTED),
        person_entry("L2", LI, "李娜", list_type="XIANGAO", published_on="2019-01-01",
                     valid_until="2020-01-01", case_number=CASE_LIFTED),
        person_entry("M1", third, "陈静", case_number=CASE_MIXED),
        person_entry("M2", third, "陈静", list_type="XIANGAO", status="SUSPENDED",
                     case_number=CASE_MIXED),
    ]  # fmt: skip
    (tmp_path / "list").mkdir()
    return write_jsonl(tmp_path / "list" / "l.jsonl", rows)


def check(server: RunningServer, who: str, name: str, purchase: dict[str, str]) -> pb.CheckResponse:
    request = build_request("RAIL", id_number=who, name=name, purchase=purchase,
                            merchant_id="m-12306")  # fmt: skip
    return server.stub().CheckConsumption(request)  # type: ignore[no-any-return]


def report(tmp_path: Path, hits: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The JSON report of the quarter, made by the real command."""
    out = tmp_path / "report.json"
    code = main(["feedback", "--quarter", quarter_now(), "--format", "json", "--hit-log",
                 str(hits), "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    return orjson.loads(out.read_bytes())  # type: ignore[no-any-return]


def row(doc: dict[str, Any], case_number: str) -> tuple[list[str], dict[str, Any]]:
    """(list types, the RAIL channel) of the report's row of ``case_number``."""
    [case] = [c for c in doc["cases"] if c["case_number"] == case_number]
    [rail] = case["channels"]
    return case["list_types"], rail


COLUMNS = ("denied", "reviews", "allowed_suspended", "allowed_exempted", "allowed_expired",
           "allowed_not_restricted")  # fmt: skip


def counts(channel: dict[str, Any]) -> dict[str, int]:
    return {k: channel[k] for k in COLUMNS if channel[k]}


def test_one_refused_purchase_of_a_case_listed_twice_is_one_denial(
    tmp_path: Path,
    listed: Path,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One refusal: the case row says denied 1, as the totals do, and names both lists."""
    hits = tmp_path / "logs" / "hits.jsonl"
    server = serve(listed, hit_log=hits)
    answer = check(server, ZHANG, "张伟", G_TRAIN)
    assert answer.decision == pb.DENY
    assert sorted(m.list_type for m in answer.matches) == [pb.SHIXIN, pb.XIANGAO]
    doc = report(tmp_path, hits, capsys)
    list_types, rail = row(doc, CASE_TWICE)
    assert list_types == ["SHIXIN", "XIANGAO"]
    assert counts(rail) == {"denied": 1} and rail["merchant_count"] == 1
    assert (doc["totals"]["checks"], doc["totals"]["denied"]) == (1, 1)


def test_an_allow_counts_once_per_case_by_its_precedence(
    tmp_path: Path,
    listed: Path,
    third: str,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Suspended and expired entries of one case: one ``allowed_suspended`` (a
    suspended listing still stands, an expired one no longer does). An entry in
    force beside a suspended one, for a purchase never restricted: one
    ``allowed_not_restricted`` (the purchase passed the listing in force only by
    not being restricted). And the ALLOW of the case listed twice: one too."""
    hits = tmp_path / "logs" / "hits.jsonl"
    server = serve(listed, hit_log=hits)
    lifted = check(server, LI, "李娜", G_TRAIN)
    assert lifted.decision == pb.ALLOW
    assert sorted(m.status for m in lifted.matches) == [pb.SUSPENDED, pb.EXPIRED]
    mixed = check(server, third, "陈静", K_TRAIN)
    assert mixed.decision == pb.ALLOW
    assert sorted(m.status for m in mixed.matches) == [pb.ACTIVE, pb.SUSPENDED]
    assert check(server, ZHANG, "张伟", K_TRAIN).decision == pb.ALLOW
    doc = report(tmp_path, hits, capsys)
    assert counts(row(doc, CASE_LIFTED)[1]) == {"allowed_suspended": 1}
    assert counts(row(doc, CASE_MIXED)[1]) == {"allowed_not_restricted": 1}
    assert counts(row(doc, CASE_TWICE)[1]) == {"allowed_not_restricted": 1}
    assert (doc["totals"]["checks"], doc["totals"]["allowed"]) == (3, 3)


def test_a_case_row_says_which_role_each_denial_stopped(
    tmp_path: Path, serve: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """The organisation and its legal representative refused on one case: the row says
    DEBTOR=1 and LEGAL_REPRESENTATIVE=1 (it merged them into denied 2, which DESIGN's
    "in which role" could not be read from), in the JSON and the CSV."""
    hits = tmp_path / "logs" / "hits.jsonl"
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), hit_log=hits)
    office = {"high_end": True}
    for request in (
        build_request("OFFICE_RENTAL", uscc=ACME_USCC, purchase=office),
        build_request("OFFICE_RENTAL", id_number=WANG, name="王芳", purchase=office),
    ):
        assert server.stub().CheckConsumption(request).decision == pb.DENY
    doc = report(tmp_path, hits, capsys)
    [case] = [c for c in doc["cases"] if c["channels"][0]["channel"] == "OFFICE_RENTAL"]
    [office_row] = case["channels"]
    assert office_row["denied"] == 2
    assert office_row["denied_roles"] == {"DEBTOR": 1, "LEGAL_REPRESENTATIVE": 1}
    out = tmp_path / "report.csv"
    code = main(["feedback", "--quarter", quarter_now(), "--format", "csv", "--hit-log",
                 str(hits), "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    header, line = out.read_text().splitlines()
    assert dict(zip(header.split(","), line.split(","), strict=True))["denied_roles"] == (
        "DEBTOR=1;LEGAL_REPRESENTATIVE=1"
    )
    # the columns of the release before keep their places (consumers read by position);
    # denied_roles came later, so it is last
    assert header.split(",") == [
        "quarter", "period_start", "period_end", "due_date", "case_number", "court",
        "list_types", "channel", "denied", "first_denied", "last_denied", "merchant_count",
        "merchants", "reviews", "allowed_suspended", "allowed_exempted", "allowed_expired",
        "allowed_not_restricted", "denied_roles",
    ]  # fmt: skip


def test_a_hit_is_dated_when_its_check_was_decided_not_when_it_was_written(
    tmp_path: Path,
    listed: Path,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hit log's clock reads 100 days on (a write that lagged its decision, as one
    in a quarter's last milliseconds may): each record, of a single check and of a
    batch, is dated between the call's start and its end, so the report of the
    quarter it was decided in counts it."""
    hits = tmp_path / "logs" / "hits.jsonl"
    server = serve(listed, hit_log=hits)
    assert server.service.checks is not None
    hit_log = server.service.checks.engine.hit_log
    assert hit_log is not None
    late = time.time() + 100 * 86400
    hit_log._clock = lambda: late
    started = time.time()
    assert check(server, ZHANG, "张伟", G_TRAIN).decision == pb.DENY
    batch = pb.CheckBatchRequest(checks=[
        build_request("RAIL", id_number=ZHANG, name="张伟", purchase=G_TRAIN),
        build_request("RAIL", id_number=LI, name="李娜", purchase=G_TRAIN),
    ])  # fmt: skip
    assert len(server.stub().CheckConsumptionBatch(batch).results) == 2
    ended = time.time()
    records = [orjson.loads(line) for line in hits.read_bytes().splitlines()]
    assert len(records) == 3
    assert all(started <= r["time"] <= ended for r in records), (started, records, ended)
    assert report(tmp_path, hits, capsys)["totals"]["checks"] == 3
