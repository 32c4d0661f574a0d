"""Each case of an answer counts in the quarterly report by what its own entries did.

Since each match is judged by its own list type, one ALLOW may mix a SHIXIN entry
that does not restrict the purchase (a domestic tour) with a XIANGAO order that
restricts it and whose court exemption lifted it. The answer's codes are the
answer's; the hit log writes each match's own ``outcome``, and ``feedback`` counts
each case by the outcomes of its own matches: the order's case ``allowed_exempted``,
the listing's ``allowed_not_restricted``, as for a person under the order alone.
The first reason of such an answer is EXEMPTED, and its first match the order.

A real server on a free port with ``--hit-log``, real checks over a real channel,
and the real ``feedback`` command over the log it wrote. A record written before
matches carried their outcome is read by the answer's codes, as before.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.clients.check_client import build_request
from shixin_check.domain.model import CHINA_TZ
from tests.conftest import RunningServer, log_records
from tests.listdata import person_entry, rid, write_jsonl

A = rid("11010519800707006")  # SHIXIN in 执1号, and a XIANGAO order in 执2号 exempted for travel
B = rid("11010519801212011")  # a XIANGAO order in 执3号 exempted for travel, alone
C = rid("11010519790303004")  # SHIXIN and an exempted XIANGAO order in one case, 执4号
D = rid("11010519780404003")  # a XIANGAO order in 执5号, not exempted
LISTING_A, ORDER_A, ORDER_B, BOTH_C, ORDER_D = (
    f"(2024)京0105执{n}号" for n in (1, 2, 3, 4, 5)
)  # fmt: skip
TRAVEL_EXEMPTION = [{"channel": "TRAVEL", "from": "2020-01-01", "until": "2099-12-31"}]


def quarter_now() -> str:
    today = _dt.datetime.now(CHINA_TZ).date()
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    rows = [
        person_entry("S1", A, "张六", case_number=LISTING_A),
        person_entry("X1", A, "张六", list_type="XIANGAO", case_number=ORDER_A,
                     exemptions=TRAVEL_EXEMPTION),
        person_entry("X2", B, "李四", list_type="XIANGAO", case_number=ORDER_B,
                     exemptions=TRAVEL_EXEMPTION),
        person_entry("S3", C, "王五", case_number=BOTH_C),
        person_entry("X3", C, "王五", list_type="XIANGAO", case_number=BOTH_C,
                     exemptions=TRAVEL_EXEMPTION),
        person_entry("X4", D, "赵七", list_type="XIANGAO", case_number=ORDER_D),
    ]  # fmt: skip
    (tmp_path / "list").mkdir()
    return write_jsonl(tmp_path / "list" / "l.jsonl", rows)


def domestic_tour(server: RunningServer, who: str, name: str) -> pb.CheckResponse:
    request = build_request("TRAVEL", id_number=who, name=name,
                            purchase={"service": "DOMESTIC"}, amount_fen=150_000,
                            merchant_id="m-ctrip")  # fmt: skip
    return server.stub().CheckConsumption(request, timeout=10)  # type: ignore[no-any-return]


def report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hits: Path, *more: Path
) -> dict[str, Any]:
    """The JSON report of the quarter, made by the real command (more hit logs as
    arguments)."""
    out = tmp_path / "report.json"
    code = main(["feedback", "--quarter", quarter_now(), "--format", "json", "--hit-log",
                 str(hits), "--out", str(out), *map(str, more)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    return orjson.loads(out.read_bytes())  # type: ignore[no-any-return]


COLUMNS = ("denied", "reviews", "allowed_suspended", "allowed_exempted", "allowed_expired",
           "allowed_not_restricted")  # fmt: skip


def counts(doc: dict[str, Any], case_number: str) -> dict[str, int]:
    """The non-zero counts of the TRAVEL row of ``case_number``."""
    [case] = [c for c in doc["cases"] if c["case_number"] == case_number]
    [travel] = case["channels"]
    assert travel["channel"] == "TRAVEL"
    return {k: travel[k] for k in COLUMNS if travel[k]}


def served(
    tmp_path: Path, listed: Path, serve: Callable[..., RunningServer]
) -> tuple[Path, dict[str, pb.CheckResponse]]:
    """Each of A, B, C and D books a domestic tour; the hit log the server wrote."""
    hits = tmp_path / "logs" / "hits.jsonl"
    server = serve(listed, hit_log=hits)
    answers = {
        who: domestic_tour(server, number, name)
        for who, number, name in (("A", A, "张六"), ("B", B, "李四"), ("C", C, "王五"),
                                  ("D", D, "赵七"))
    }  # fmt: skip
    return hits, answers


def test_an_exempted_order_beside_a_listing_is_counted_exempted_on_its_own_case(
    tmp_path: Path,
    listed: Path,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hits, answers = served(tmp_path, listed, serve)
    a = answers["A"]
    assert a.decision == pb.ALLOW
    # the order's exemption first: a restriction applies, and only the court lifted it;
    # the first match shown goes with the first reason
    assert [r.code for r in a.reasons] == ["EXEMPTED", "NOT_RESTRICTED_CLASS"]
    assert [(m.list_type, m.case_number) for m in a.matches] == [
        (pb.XIANGAO, ORDER_A), (pb.SHIXIN, LISTING_A),
    ]  # fmt: skip
    assert [r.code for r in answers["B"].reasons] == ["EXEMPTED"]
    assert answers["D"].decision == pb.DENY

    # each match of a hit record says its own outcome
    outcomes = {
        (m["case_number"], m["list_type"]): m["outcome"]
        for record in log_records(hits)
        for m in record["matches"]
    }
    assert outcomes == {
        (LISTING_A, "SHIXIN"): "NOT_RESTRICTED_CLASS",
        (ORDER_A, "XIANGAO"): "EXEMPTED",
        (ORDER_B, "XIANGAO"): "EXEMPTED",
        (BOTH_C, "SHIXIN"): "NOT_RESTRICTED_CLASS",
        (BOTH_C, "XIANGAO"): "EXEMPTED",
        (ORDER_D, "XIANGAO"): "TRAVEL_HOLIDAY",
    }

    doc = report(tmp_path, capsys, hits)
    # the same exemption counts the same, whether or not the person is also on SHIXIN
    assert counts(doc, ORDER_A) == {"allowed_exempted": 1}
    assert counts(doc, ORDER_B) == {"allowed_exempted": 1}
    assert counts(doc, LISTING_A) == {"allowed_not_restricted": 1}
    # one case, both entries: its order's exemption let the tour through
    assert counts(doc, BOTH_C) == {"allowed_exempted": 1}
    assert counts(doc, ORDER_D) == {"denied": 1}
    assert (doc["totals"]["checks"], doc["totals"]["allowed"]) == (4, 3)


def test_a_record_without_outcomes_is_read_by_its_codes_as_before(
    tmp_path: Path,
    listed: Path,
    serve: Callable[..., RunningServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Beside the server's records, the same checks as an older release wrote them (no
    ``outcome`` in the matches, other check ids): those are read by the answer's codes,
    as they always were (EXEMPTED and NOT_RESTRICTED_CLASS together: not restricted;
    EXEMPTED alone: exempted), the new ones by their matches' outcomes."""
    hits, _ = served(tmp_path, listed, serve)
    older = []
    for record in log_records(hits):
        if "check_id" not in record:
            continue
        matches = [{k: v for k, v in m.items() if k != "outcome"} for m in record["matches"]]
        older.append({**record, "check_id": f"old-{record['check_id']}", "matches": matches})
    old_log = write_jsonl(tmp_path / "older.jsonl", older)

    before = report(tmp_path, capsys, old_log)
    assert counts(before, ORDER_A) == {"allowed_not_restricted": 1}
    assert counts(before, ORDER_B) == {"allowed_exempted": 1}
    assert counts(before, LISTING_A) == {"allowed_not_restricted": 1}
    assert counts(before, BOTH_C) == {"allowed_not_restricted": 1}
    assert counts(before, ORDER_D) == {"denied": 1}

    both = report(tmp_path, capsys, hits, old_log)
    assert counts(both, ORDER_A) == {"allowed_exempted": 1, "allowed_not_restricted": 1}
    assert counts(both, ORDER_B) == {"allowed_exempted": 2}
    assert counts(both, LISTING_A) == {"allowed_not_restricted": 2}
    assert counts(both, BOTH_C) == {"allowed_exempted": 1, "allowed_not_restricted": 1}
    assert counts(both, ORDER_D) == {"denied": 2}
    assert (both["totals"]["checks"], both["totals"]["duplicates"]) == (8, 0)
