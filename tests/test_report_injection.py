"""What a caller's identifiers can do to the courts' quarterly report, and cannot.

request_id, merchant_id and terminal_id go into the hit log and merchant_id
from there into the CSV report a spreadsheet opens. A request holding a
control or format character in one of them is refused, as a name holding a
control character is (through a real server: unary, batch and stream); and
the CSV is safe whatever a hit log already holds: no cell starts a formula,
a ``;`` inside a merchant does not split it, a control character is written
visibly (through the ``feedback`` command over real files).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from tests.conftest import RunningServer, log_records
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_feedback import COURT_A, china, current_quarter, hit, run_cli, write_lines

Serve = Callable[..., RunningServer]

#: (character, what the refusal calls it): controls, format characters, separators,
#: noncharacters
UNSEEN = [
    ("\x00", "a control character"),
    ("\n", "a control character"),
    ("\x1e", "a control character"),
    ("\x7f", "a control character"),
    ("\x85", "a control character"),
    ("\u200b", "a format character"),
    ("\u202e", "a format character"),
    ("\ufeff", "a format character"),
    ("\u2028", "a line separator"),
    ("\u2029", "a paragraph separator"),
    ("\ufdd0", "a noncharacter"),
    ("\ufffe", "a noncharacter"),
    ("\uffff", "a noncharacter"),
]


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    listed = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    return serve(listed, hit_log=tmp_path / "hits.jsonl")


def zhang(request_id: str = "", merchant_id: str = "", terminal_id: str = "") -> pb.CheckRequest:
    """A check of a listed debtor: a DENY, logged, unless refused."""
    rail = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    return build_request(
        "RAIL", id_number=ZHANG, name="张伟", purchase=rail,
        request_id=request_id, merchant_id=merchant_id, terminal_id=terminal_id,
    )  # fmt: skip


def refusal(field: str, char: str, kind: str, at: int = 3) -> str:
    return (
        f"{field}: must not contain control or format characters "
        f"(U+{ord(char):04X}, {kind}, at character {at})"
    )


@pytest.mark.parametrize("field", ["request_id", "merchant_id", "terminal_id"])
def test_an_identifier_with_a_control_or_format_character_is_refused_naming_it(
    server: RunningServer, tmp_path: Path, field: str
) -> None:
    stub = server.stub()
    for char, kind in UNSEEN:
        with pytest.raises(grpc.RpcError) as refused:
            stub.CheckConsumption(zhang(**{field: f"ab{char}cd"}))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, char
        assert refused.value.details() == refusal(field, char, kind), char
    # spaces are not printable either, and are fine; so are a quote, ; and =, and the
    # format characters that are part of the text: an emoji's joiner, Persian's
    # non-joiner, Mongolian's vowel separator and variation selectors
    texts = ["a\u3000b\u00a0c;'=d", "\U0001f469\u200d\U0001f4bb科技店",
             "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645", "\u182c\u1823\u1832\u1820\u180e\u1820\u180b"]  # fmt: skip
    for text in texts:
        assert stub.CheckConsumption(zhang(**{field: text})).decision == pb.DENY, text
    assert [r[field] for r in log_records(tmp_path / "hits.jsonl")] == texts


def test_a_batch_names_the_check_holding_one(server: RunningServer, tmp_path: Path) -> None:
    good = zhang(merchant_id="m-1")
    bad = zhang(terminal_id="t-1\u202e")
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=[good, bad]))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "checks[1]." + refusal(
        "terminal_id", "\u202e", "a format character", at=4
    )
    assert not (tmp_path / "hits.jsonl").exists() or log_records(tmp_path / "hits.jsonl") == []


def test_a_stream_answers_one_with_its_error_and_goes_on(
    server: RunningServer, tmp_path: Path
) -> None:
    requests = [
        zhang(request_id="s-1"),
        zhang(request_id="s-2", merchant_id="m\n=1"),
        zhang(request_id="s-2", merchant_id="m-1"),  # refused, so its id may come again
        zhang(request_id="s\x003"),
        build_request("AIRLINE", id_number=ZHAO, request_id="s-4"),
    ]
    answers = list(server.stub().CheckConsumptionStream(iter(requests)))
    assert [(a.request_id, a.decision) for a in answers] == [
        ("s-1", pb.DENY), ("s-2", pb.DECISION_UNSPECIFIED), ("s-2", pb.DENY),
        ("s\x003", pb.DECISION_UNSPECIFIED), ("s-4", pb.ALLOW),
    ]  # fmt: skip
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (answers[1].error.code, answers[1].error.message) == (
        invalid, refusal("merchant_id", "\n", "a control character", at=2)
    )  # fmt: skip
    assert (answers[3].error.code, answers[3].error.message) == (
        invalid, refusal("request_id", "\x00", "a control character", at=2)
    )  # fmt: skip
    logged = log_records(tmp_path / "hits.jsonl")
    assert [(r["request_id"], r["merchant_id"]) for r in logged] == [("s-1", ""), ("s-2", "m-1")]


# --- the CSV report, whatever the hit logs hold ------------------------------


def split_list(cell: str) -> list[str]:
    """A list cell read back: split at each ``;`` no backslash escapes, then unescaped."""
    items = re.findall(r"(?:\\.|[^;\\])*", cell)[::2]  # each item, then the "" at its ;
    return [unescape(item) for item in items]


def unescape(text: str) -> str:
    def one(found: re.Match[str]) -> str:
        escaped = found.group(1)
        return chr(int(escaped[1:], 16)) if escaped[0] in "uU" else escaped

    return re.sub(r"\\(u[0-9a-f]{4}|U[0-9a-f]{8}|.)", one, text)


def feedback_csv(tmp_path: Path, hits: Path, quarter: str = "2026Q3") -> list[dict[str, str]]:
    out = tmp_path / "report.csv"
    assert run_cli("feedback", "--quarter", quarter, "--format", "csv", "--hit-log", str(hits),
                   "--out", str(out)) == 0  # fmt: skip
    with out.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


FORMULAS = {
    '=HYPERLINK("http://evil/","ok")': '\'=HYPERLINK("http://evil/","ok")',
    "+1+2": "'+1+2",
    "-2+3": "'-2+3",
    "@SUM(A1)": "'@SUM(A1)",
    "'quoted": "''quoted",  # so that one leading quote is always the one added
    "\tx": "\\u0009x",  # written visibly: it no longer starts the cell
    "\r=x": "\\u000d=x",
}


def test_no_cell_of_the_csv_starts_a_formula(tmp_path: Path) -> None:
    records = [
        hit(f"h{i}", china(8, 1), merchant=merchant, cases=((f"case-{i}", COURT_A, "ACTIVE"),))
        for i, merchant in enumerate(FORMULAS)
    ]
    records.append(hit("evil-court", china(8, 2), merchant="m-1",
                       cases=(("=1+1", "@court", "ACTIVE"),)))  # fmt: skip
    rows = feedback_csv(tmp_path, write_lines(tmp_path / "hits.jsonl", records))
    merchants = {r["case_number"]: r["merchants"] for r in rows}
    assert merchants == {
        **{f"case-{i}": cell for i, cell in enumerate(FORMULAS.values())},
        "'=1+1": "m-1",
    }
    assert {(r["case_number"], r["court"]) for r in rows if r["merchants"] == "m-1"} == {
        ("'=1+1", "'@court")
    }
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)


def test_a_separator_inside_a_merchant_does_not_split_it(tmp_path: Path) -> None:
    merchants = ["M1;M2;M3", "a\\b", "c\\;d", "m-2"]
    records = [hit(f"h{i}", china(8, 1 + i), merchant=m) for i, m in enumerate(merchants)]
    role = hit("role", china(8, 9), merchant="m-2")
    role["matches"][0]["role"] = "A=B;C"
    role["matches"][0]["list_type"] = "SHIXIN;XIANGAO"
    rows = feedback_csv(tmp_path, write_lines(tmp_path / "hits.jsonl", [*records, role]))
    [row] = rows
    assert row["merchant_count"] == "4"
    assert row["merchants"] == "M1\\;M2\\;M3;a\\\\b;c\\\\\\;d;m-2"
    assert split_list(row["merchants"]) == sorted(merchants)
    assert split_list(row["list_types"]) == ["SHIXIN", "SHIXIN;XIANGAO"]
    assert row["denied_roles"] == "A\\=B\\;C=1;DEBTOR=4"


def test_control_characters_of_old_records_are_written_visibly(tmp_path: Path) -> None:
    """Records the server now refuses, as an older release logged them: every row one
    line, every hidden character a visible escape; the JSON report keeps them as JSON does."""
    merchant = "line1\nline2\x1e\u202eRLO\x00\ufffe\U000e0001"
    cases = (("case\u2028no", "法院\r\n", "ACTIVE"),)
    records = [hit("h1", china(8, 1), merchant=merchant, cases=cases),
               hit("h2", china(8, 2), merchant="m\u3000", cases=cases)]  # fmt: skip
    hits = write_lines(tmp_path / "hits.jsonl", records)
    rows = feedback_csv(tmp_path, hits)
    raw = (tmp_path / "report.csv").read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 1 + len(rows) == 2
    assert not re.search("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff\ufffe\uffff]",
                         raw.replace("\n", "")), raw  # fmt: skip
    [row] = rows
    assert row["merchants"] == (
        "line1\\u000aline2\\u001e\\u202eRLO\\u0000\\ufffe\\U000e0001;m\u3000"
    )
    assert split_list(row["merchants"]) == [merchant, "m\u3000"]
    assert (row["case_number"], row["court"]) == ("case\\u2028no", "法院\\u000d\\u000a")
    assert unescape(row["court"]) == "法院\r\n"
    out = tmp_path / "report.json"
    assert run_cli("feedback", "--quarter", "2026Q3", "--format", "json", "--hit-log",
                   str(hits), "--out", str(out)) == 0  # fmt: skip
    [case] = orjson.loads(out.read_bytes())["cases"]
    assert case["court"] == "法院\r\n"
    assert case["channels"][0]["merchants"] == [merchant, "m\u3000"]


def test_what_a_server_logged_reaches_the_csv_harmless(
    server: RunningServer, tmp_path: Path
) -> None:
    """The reviewer's case end to end: printable merchants a server accepts."""
    stub = server.stub()
    for merchant in ('=HYPERLINK("http://evil/","ok")', "M1;M2;M3"):
        assert stub.CheckConsumption(zhang(merchant_id=merchant)).decision == pb.DENY
    with pytest.raises(grpc.RpcError):
        stub.CheckConsumption(zhang(merchant_id="line1\nline2\x1e\u202eRLO"))
    [row] = feedback_csv(tmp_path, tmp_path / "hits.jsonl", current_quarter())
    assert row["merchant_count"] == "2"
    assert row["merchants"] == '\'=HYPERLINK("http://evil/","ok");M1\\;M2\\;M3'
    assert split_list(row["merchants"][1:]) == ['=HYPERLINK("http://evil/","ok")', "M1;M2;M3"]
