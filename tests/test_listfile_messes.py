"""List files as exports mess them up: each is a bad row with its line, never a traceback,
a dead follower or a row read otherwise than it was written.

- A CSV saved with classic Mac line ends (a lone CR, Excel's "CSV (Macintosh)"), or
  with a cell longer than the csv module's default 131,072 characters, raised an
  uncaught ``_csv.Error``: ``validate`` printed a traceback and the folder's follower
  thread died (nothing applied again, health still SERVING). CR line ends are now a
  bad row saying so; a long cell is read as JSON Lines reads a long line. A record
  over several lines is reported at the line it starts on, and a quote never closed
  where it opens.
- A key that is no field of an entry (``relatedPersons``, ``related_person``,
  ``validUntil``, ``subject.idNumber``, an exemption's ``form``) was dropped: an
  organisation's legal representative was ALLOW NOT_LISTED. It is a bad row naming
  the key, in C and Python alike, in snapshots (JSON Lines, CSV) and deltas.
- A file that is not UTF-8 (UTF-16, gzip) and not named as a snapshot or delta was
  refused in orjson's words (``surrogates not allowed``); a JSON Lines file with CR
  line ends as "unexpected content after document".
- An exemption ``from`` of 1970-01-01 (what exports write for an empty date) was read
  as 1970, exempting a listed person for decades; and the placeholder advice for a
  required date said to leave it empty, which is then refused as required.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import columns, compiled, listfile, versions
from shixin_check.loader.columns import ColumnBuilder
from shixin_check.loader.listfile import parse_entry
from shixin_check.loader.synthetic.generator import iter_entries
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    delta,
    org_entry,
    person_entry,
    write_jsonl,
)
from tests.test_failure_paths import header
from tests.test_feed_order import status
from tests.waiting import eventually

Serve = Callable[..., RunningServer]

#: the shixin-check command line, with the C row checker or with rows checked in Python
COMMAND = {
    "compiled": [sys.executable, "-m", "shixin_check.cli"],
    "python": [sys.executable, "-c", (
        "import sys; from shixin_check.loader import columns; columns._rowcheck = None; "
        "from shixin_check.cli import main; sys.exit(main(sys.argv[1:]))"
    )],
}  # fmt: skip

CR_ONLY = "line ends are CR only (classic Mac); save the file with LF or CRLF line ends"
COLUMNS = ["entry_id", "list_type", "subject.type", "subject.name", "subject.id_number",
           "case_number", "court", "obligation", "published_on", "valid_until"]  # fmt: skip
META = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-29T09:00:00+08:00"}}


@pytest.fixture(params=["compiled", "python"])
def checker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C row checker (loader/_rowcheck.c), or none: rows checked in Python."""
    if request.param == "python":
        monkeypatch.setattr(columns, "_rowcheck", None)
    else:
        assert columns._rowcheck is not None, "loader/_rowcheck.c is not built: scripts/setup"
    return str(request.param)


def validate(path: Path, checker: str = "compiled") -> tuple[int, list[str]]:
    """``shixin-check validate PATH``: its exit status and each line it printed but the
    summary, without the path; a traceback fails the test."""
    done = subprocess.run(
        [*COMMAND[checker], "validate", str(path)], capture_output=True, text=True,
        timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    return done.returncode, [line.split(":", 1)[1] for line in lines[:-1]]


def person_cells(entry_id: str, number: str, name: str, **values: str) -> list[str]:
    """A person's row as ``COLUMNS`` hold it."""
    row = {"entry_id": entry_id, "list_type": "SHIXIN", "subject.type": "PERSON",
           "subject.name": name, "subject.id_number": number,
           "case_number": f"(2024)京0105执{entry_id}号", "court": "北京市朝阳区人民法院",
           "obligation": "", "published_on": "2024-01-15", "valid_until": "2099-12-31",
           **values}  # fmt: skip
    return [row[column] for column in COLUMNS]


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\r\n') else value


def write_csv(path: Path, rows: list[list[str]], end: str = "\n") -> Path:
    """A CSV snapshot of ``rows`` under ``COLUMNS``, each record ended by ``end``, and its
    header sidecar."""
    text = "".join(",".join(map(csv_cell, cells)) + end for cells in [COLUMNS, *rows])
    path.with_name(path.name + ".meta.json").write_bytes(orjson.dumps(META))
    path.write_bytes(text.encode())
    return path


def airline(server: RunningServer, number: str) -> str:
    """The decision and first reason of an AIRLINE check, as ``DENY AIR_TRAVEL``."""
    reply = server.stub().CheckConsumption(build_request("AIRLINE", id_number=number), timeout=5)
    return " ".join([pb.Decision.Name(reply.decision), *[r.code for r in reply.reasons][:1]])


def acme(**changes: Any) -> dict[str, Any]:
    """ACME, Wang its legal representative (line 4 of a snapshot of basic_rows)."""
    row = org_entry(
        "E3", ACME_USCC, "北京艾克米科技有限公司", [("LEGAL_REPRESENTATIVE", "王芳", WANG)]
    )
    row.update(changes)
    return row


# --- 1. CSV: CR line ends, long cells, records over several lines ----------------------------


def test_a_csv_with_cr_only_line_ends_is_a_bad_row_saying_so(tmp_path: Path) -> None:
    rows = [person_cells("E1", ZHANG, "张伟"), person_cells("E2", LI, "李娜")]
    path = write_csv(tmp_path / "snapshot-0001.csv", rows, end="\r")

    assert validate(path) == (1, [f"line 1: {CR_ONLY}"])
    assert validate(write_csv(tmp_path / "crlf.csv", rows, end="\r\n")) == (0, [])


def test_a_csv_cell_longer_than_the_csv_modules_limit_is_read_as_json_lines_reads_it(
    tmp_path: Path,
) -> None:
    long = "欠款" * 100_000  # 200,000 characters: over csv's default 131,072
    rows = [person_cells("E1", ZHANG, "张伟", obligation=long), person_cells("E2", LI, "李娜")]
    as_csv = write_csv(tmp_path / "snapshot-0001.csv", rows)
    entries = [person_entry("E1", ZHANG, "张伟"), person_entry("E2", LI, "李娜")]
    entries[0]["obligation"] = long
    as_jsonl = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *entries])

    assert validate(as_jsonl) == (0, [])
    assert validate(as_csv) == (0, [])

    rows[1][COLUMNS.index("valid_until")] = "2027-02-30"  # and the rows after it still read
    assert validate(write_csv(tmp_path / "bad.csv", rows)) == (
        1, ["line 3: valid_until: '2027-02-30' is not a date of the form YYYY-MM-DD (or YYYYMMDD)"]
    )  # fmt: skip


def test_a_csv_record_over_several_lines_is_reported_at_its_first(tmp_path: Path) -> None:
    rows = [
        person_cells("E1", ZHANG, "张伟"),
        person_cells("E2", LI, "李娜", obligation="a\nb\nc\nd", valid_until="2027-02-30"),
        person_cells("E3", ZHAO, "赵六", valid_until="2027-02-31"),
    ]  # E2 is on lines 3 to 6, E3 on line 7

    assert validate(write_csv(tmp_path / "snapshot-0001.csv", rows)) == (1, [
        "line 3: valid_until: '2027-02-30' is not a date of the form YYYY-MM-DD (or YYYYMMDD)",
        "line 7: valid_until: '2027-02-31' is not a date of the form YYYY-MM-DD (or YYYYMMDD)",
    ])  # fmt: skip


def test_a_csv_quote_never_closed_is_reported_where_it_opens(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "snapshot-0001.csv", [
        person_cells("E1", ZHANG, "张伟"), person_cells("E2", LI, "李娜"),
        person_cells("E3", ZHAO, "赵六"), person_cells("E4", WANG, "王芳"),
    ])  # fmt: skip
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '"' + lines[2]  # E2's row opens a quote nothing closes
    path.write_text("".join(lines))

    assert validate(path) == (1, [
        "line 3: a quoted field opened in this row is never closed: the rest of the file "
        "(to line 5) was read into it"
    ])  # fmt: skip


def test_a_stray_quote_never_swallows_the_next_csv_row(tmp_path: Path) -> None:
    """A cell opening a quote it never closes, then a row whose cell is quoted: read
    leniently, that row's opening quote closed the first and the whole row went into
    the cell, and the file still had the right number of cells: LI, listed, was gone
    with no bad row. The quote that closes and is followed by more text is the error."""
    path = write_csv(tmp_path / "snapshot-0001.csv", [
        person_cells("E1", ZHANG, "张伟", obligation="偿还借款"),
        person_cells("E2", LI, "李娜", obligation="支付租金, 利息"),
        person_cells("E3", ZHAO, "赵六"),
    ])  # fmt: skip
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(",偿还借款,", ',"偿还借款 5000元,')  # opened, never closed
    path.write_text("".join(lines))

    code, errors = validate(path)
    assert code == 1
    assert errors == [
        "line 2: a quoted field is followed by more text before the next comma: a quote "
        'inside a quoted field is written twice (""), and a field with a quote in it is '
        "quoted whole"
    ]


def test_a_lone_cr_inside_a_csv_row_is_a_bad_row_and_the_rows_after_it_are_read(
    tmp_path: Path,
) -> None:
    rows = [
        person_cells("E1", ZHANG, "张伟"),
        person_cells("E2", LI, "李娜"),
        person_cells("E3", ZHAO, "赵六", valid_until="2027-02-31"),
    ]
    path = write_csv(tmp_path / "snapshot-0001.csv", rows)
    path.write_bytes(path.read_bytes().replace("李娜".encode(), "李\r娜".encode()))

    assert validate(path) == (1, [
        "line 3: holds a carriage return (CR) outside quotes: quote the field that holds it, "
        "or save the file with LF or CRLF line ends",
        "line 4: valid_until: '2027-02-31' is not a date of the form YYYY-MM-DD (or YYYYMMDD)",
    ])  # fmt: skip


def test_the_folder_follower_refuses_a_cr_only_csv_and_applies_the_next_delta(
    tmp_path: Path, serve: Serve
) -> None:
    """The reviewer's repro: the follower thread died on the CSV, and the delta listing
    Zhao was never applied while health stayed SERVING."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder)
    assert airline(server, ZHAO) == "ALLOW NOT_LISTED"

    write_csv(folder / "snapshot-0002.csv", [person_cells("E1", ZHANG, "张伟")], end="\r")
    eventually(lambda: status(server).rejected_source.endswith("snapshot-0002.csv"), "refused")
    assert status(server).rejected_problem == f"line 1: {CR_ONLY}"

    write_jsonl(
        folder / "delta-0001.jsonl", [delta(1, "LIST", entry=person_entry("E9", ZHAO, "赵六"))]
    )
    eventually(lambda: status(server).last_delta_seq == 1, "the delta applied")
    assert airline(server, ZHAO) == "DENY AIR_TRAVEL"


def test_a_server_starts_beside_a_cr_only_csv_serving_the_snapshot_before_it(
    tmp_path: Path, serve: Serve
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    write_csv(folder / "snapshot-0002.csv", [person_cells("E1", LI, "李娜")], end="\r")

    server = serve(folder)

    assert status(server).behind and status(server).rejected_problem == f"line 1: {CR_ONLY}"
    assert airline(server, ZHANG) == "DENY AIR_TRAVEL"


# --- 2. keys that are no field of an entry ----------------------------------------------------


def test_keys_that_are_no_field_are_bad_rows_naming_them(tmp_path: Path, checker: str) -> None:
    """Each row but the first would have been plain (taken by the C checker) with its key
    dropped: ACME's legal representative, Zhang's end date, Li's ID number."""
    camel = acme(entry_id="E9")
    camel["relatedPersons"] = camel.pop("related_persons")
    singular = acme(entry_id="E4")
    singular["related_person"] = singular.pop("related_persons")
    until = person_entry("E5", ZHANG, "张伟")
    until["validUntil"] = until.pop("valid_until")
    subject = person_entry("E6", LI, "李娜")
    subject["subject"]["idNumber"] = subject["subject"].pop("id_number")
    related = acme(entry_id="E7")
    related["related_persons"][0]["idNumber"] = WANG
    exempt = person_entry("E8", ZHAO, "赵六")
    exempt["exemptions"] = [{"channel": "RAIL", "form": "2026-01-01", "until": "2026-01-31"}]
    rows = [header(0), *basic_rows(), camel, singular, until, subject, related, exempt]
    path = write_jsonl(tmp_path / "snapshot-0001.jsonl", [*rows, header(0)])  # a header again

    assert validate(path, checker) == (1, [
        "line 5: relatedPersons: is not a field of an entry (did you mean related_persons?)",
        "line 6: related_person: is not a field of an entry (did you mean related_persons?)",
        "line 7: validUntil: is not a field of an entry (did you mean valid_until?)",
        "line 8: subject.idNumber: is not a field of a subject (did you mean id_number?)",
        "line 9: related_persons.0.idNumber: is not a field of a related person "
        "(did you mean id_number?)",
        "line 10: exemptions.0.form: is not a field of an exemption (did you mean from?)",
        "line 11: snapshot: is not a field of an entry (a snapshot's header is its first row "
        "only)",
    ])  # fmt: skip


def test_every_field_a_feed_or_gen_data_writes_is_taken_by_the_c_checker(
    keyer: SubjectKeyer,
) -> None:
    """The documented fields (a court's record: basis document, obligation, gender,
    age, legal representative...) are no unknown keys: gen-data's rows, which carry
    them all, still take the fast path in C, every one without an exemption."""
    rows = list(iter_entries(400, seed=5, as_of=_dt.date(2026, 11, 30)))
    for row in rows:
        parse_entry(row)  # the rows' dates seen, as a load's first rows make them
    builder = ColumnBuilder(keyer, 1024)

    errors = [builder.add(row, line) for line, row in enumerate(rows, 1)]

    assert errors == [None] * len(rows)
    plain = [row for row in rows if not row["exemptions"]]
    assert len(plain) > 300 and builder._columns is not None
    assert builder._columns.taken == len(plain)


def test_the_c_checker_leaves_a_row_with_a_key_that_is_no_field_to_python() -> None:
    rowcheck = columns.compiled()
    assert rowcheck is not None, "loader/_rowcheck.c is not built: scripts/setup"
    row = acme()
    parse_entry(row)  # its dates seen
    assert rowcheck.plain(row, 1) is not None
    for where, key in [(row, "relatedPersons"), (row["subject"], "idNumber"),
                       (row["related_persons"][0], "gender"), (row, "")]:  # fmt: skip
        where[key] = None
        assert rowcheck.plain(row, 1) is None, key
        del where[key]
        assert rowcheck.plain(row, 1) is not None, key


def test_a_csv_column_that_is_no_field_is_a_bad_row(tmp_path: Path, checker: str) -> None:
    path = write_csv(tmp_path / "snapshot-0001.csv", [person_cells("E1", ZHANG, "张伟")])
    text = path.read_text().replace("subject.id_number", "subject.idNumber", 1)
    path.write_text(text)

    assert validate(path, checker) == (
        1, ["line 2: subject.idNumber: is not a field of a subject (did you mean id_number?)"]
    )  # fmt: skip


def test_a_delta_entry_or_exemption_with_a_key_that_is_no_field_is_refused(
    tmp_path: Path,
) -> None:
    camel = acme()
    camel["relatedPersons"] = camel.pop("related_persons")
    path = write_jsonl(tmp_path / "delta-0001.jsonl", [
        delta(1, "LIST", entry=camel),
        delta(2, "EXEMPT", entry_id="E1",
              exemption={"channel": "AIRLINE", "from": "2026-01-01", "untill": "2026-01-31"}),
    ])  # fmt: skip

    assert validate(path) == (1, [
        "line 1: entry.relatedPersons: is not a field of an entry (did you mean related_persons?)",
        "line 2: exemption.untill: is not a field of an exemption (did you mean until?)",
    ])  # fmt: skip


def test_a_server_keeps_serving_the_list_before_a_snapshot_with_a_misspelt_key(
    tmp_path: Path, serve: Serve
) -> None:
    """Loaded, the newer snapshot made Wang, ACME's legal representative, ALLOW NOT_LISTED."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    camel = acme()
    camel["relatedPersons"] = camel.pop("related_persons")
    newer = [header(0, "2026-11-29T09:00:00+08:00"), *basic_rows()[:2], camel]
    write_jsonl(folder / "snapshot-0002.jsonl", newer)

    server = serve(folder)

    assert status(server).rejected_problem == (
        "line 4: relatedPersons: is not a field of an entry (did you mean related_persons?)"
    )
    assert airline(server, WANG) == "DENY AIR_TRAVEL"


# --- 3. files that cannot be told apart: the loader's words -----------------------------------


def test_an_unnamed_file_that_is_not_utf8_says_so_as_the_loader_does(tmp_path: Path) -> None:
    text = b"".join(orjson.dumps(r) + b"\n" for r in [header(0), *basic_rows()])
    utf16 = tmp_path / "list.jsonl"
    utf16.write_bytes(text.decode().encode("utf-16"))
    packed = tmp_path / "list2.jsonl"
    packed.write_bytes(gzip.compress(text, mtime=0))
    named = tmp_path / "snapshot-0001.jsonl"
    named.write_bytes(text.decode().encode("utf-16"))

    assert validate(utf16)[1] == [
        "line 1: cannot tell a snapshot from a delta: not valid UTF-8 (byte 0xff at column 1)"
    ]
    assert validate(packed)[1] == [
        "line 1: cannot tell a snapshot from a delta: not valid UTF-8 (byte 0x8b at column 2)"
    ]
    assert validate(named)[1][0] == "line 1: not valid UTF-8 (byte 0xff at column 1)"


def test_a_json_lines_file_with_cr_only_line_ends_says_so(tmp_path: Path) -> None:
    text = b"".join(orjson.dumps(r) + b"\r" for r in [header(0), *basic_rows()])
    unnamed = tmp_path / "list.jsonl"
    unnamed.write_bytes(text)
    named = tmp_path / "snapshot-0001.jsonl"
    named.write_bytes(text)

    assert validate(unnamed) == (1, [f"line 1: cannot tell a snapshot from a delta: {CR_ONLY}"])
    assert validate(named) == (1, [f"line 1: {CR_ONLY}"])


# --- 4. a required date given as an export's empty date ---------------------------------------


REQUIRED = "the field is required: give the date the court set"


def test_an_exemption_from_1970_is_refused_as_an_empty_required_date(
    tmp_path: Path, checker: str
) -> None:
    epoch = person_entry("E1", ZHANG, "张伟")
    epoch["exemptions"] = [{"channel": "AIRLINE", "from": "1970-01-01", "until": "2027-06-30"}]
    again = person_entry("E2", LI, "李娜")  # 1970-01-01 now among the days seen
    again["exemptions"] = [{"channel": "AIRLINE", "from": "2026-01-01", "until": "1970-01-01"}]
    old = person_entry("E3", ZHAO, "赵六")
    old["exemptions"] = [{"channel": "AIRLINE", "from": "1900-01-01", "until": "2027-06-30"}]
    no_end = person_entry("E4", WANG, "王芳", published_on="1970-01-01", valid_until="1970-01-01")
    path = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), epoch, again, old, no_end])

    assert validate(path, checker) == (
        1,
        [
            f"line 2: exemptions.0.from: '1970-01-01' is what exports write for an empty date, "
            f"and {REQUIRED}",
            f"line 3: exemptions.0.until: '1970-01-01' is what exports write for an empty date, "
            f"and {REQUIRED}",
            "line 4: exemptions.0.from: '1900-01-01' is before 2000-01-01, before any list "
            f"existed (an export's placeholder for an empty date? {REQUIRED})",
        ],
    )  # fmt: skip  (line 5: 1970-01-01 where a date may be left out is no date, as before)


def test_a_delta_exempt_from_1970_is_refused_and_the_person_stays_restricted(
    tmp_path: Path, serve: Serve
) -> None:
    """Applied, it made Zhang ALLOW EXEMPTED for flights from 1970 on."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder)
    window = {"channel": "AIRLINE", "from": "1970-01-01", "until": "2099-12-31"}

    write_jsonl(folder / "delta-0001.jsonl", [delta(1, "EXEMPT", entry_id="E1", exemption=window)])
    eventually(lambda: status(server).rejected_source.endswith("delta-0001.jsonl"), "refused")

    assert status(server).rejected_problem == (
        "line 1: exemption.from: '1970-01-01' is what exports write for an empty date, and "
        f"{REQUIRED}"
    )
    assert airline(server, ZHANG) == "DENY AIR_TRAVEL"


@pytest.mark.parametrize("checked_by", ["compiled", "python"])
def test_a_date_is_yyyy_mm_dd_or_the_same_without_dashes_never_a_week_date(
    tmp_path: Path, checked_by: str
) -> None:
    """``date.fromisoformat`` reads ISO week dates too: ``2026-W01-1`` is 2025-12-29, so
    an end date exported in a week form moved silently. A date is ``2026-12-31``, or
    ``20261231`` as exports write it; anything else is a bad row."""
    good = [person_entry("E1", ZHANG, "张伟", valid_until="2029-12-31"),
            person_entry("E2", LI, "李娜", valid_until="20291231")]  # fmt: skip
    assert validate(write_jsonl(tmp_path / "good.jsonl", [header(0), *good]), checked_by) == (0, [])
    weeks = ["2029-W53-4", "2029W534", "2029-W01", "2029-12-31T00:00:00", "２０２９-12-31"]
    rows = [person_entry(f"W{i}", ZHANG, "张伟", valid_until=week) for i, week in enumerate(weeks)]
    assert validate(write_jsonl(tmp_path / "weeks.jsonl", [header(0), *rows]), checked_by) == (1, [
        f"line {line}: valid_until: {week!r} is not a date of the form YYYY-MM-DD (or YYYYMMDD)"
        for line, week in enumerate(weeks, 2)
    ])  # fmt: skip


def refused_after_older_code_compiled_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]],
    older_code: dict[tuple[object, str], object], fmt: int, refusal: str,
) -> None:  # fmt: skip
    """``rows`` served by older code (``older_code``'s attributes set, compiled format
    ``fmt``) from an index folder, then a start of this code on that folder: the list
    parsed again and refused with ``refusal``, no list served, as with a fresh folder."""
    folder, index = tmp_path / "list", tmp_path / "index"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *rows])
    with monkeypatch.context() as older:
        for (owner, name), value in older_code.items():
            older.setattr(owner, name, value)
        older.setattr(compiled, "FORMAT", fmt)
        older.setattr(versions, "FORMAT", fmt)
        first = start_server(settings_for(folder, index_dir=index))
        try:
            eventually(lambda: status(first).version != "", "the list loaded by older code")
        finally:
            first.stop()
    again = start_server(settings_for(folder, index_dir=index))
    try:
        eventually(lambda: refusal in status(again).rejected_problem,
                   "the list parsed again and refused")  # fmt: skip
        assert status(again).version == ""  # nothing older validates: no list, as documented
    finally:
        again.stop()


def test_a_list_compiled_by_code_that_took_a_slipped_number_is_parsed_again_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row whose passport number is a resident ID with a character left out (which
    every check refuses) loaded before; compiled so (format 9) it was mapped again,
    SERVING, while the same files with a fresh index folder were refused. Format 10
    parses it again."""
    slipped = person_entry("E1", ZHANG[:17], "张伟")
    slipped["subject"]["id_type"] = "PASSPORT"
    refused_after_older_code_compiled_it(
        tmp_path, monkeypatch, [slipped, person_entry("E2", LI, "李娜")],
        {(listfile, "refuse_misread"): lambda *args: None},  # no such refusal at load
        9, "reads as a resident ID with one character left out",
    )  # fmt: skip


def test_a_list_compiled_by_code_that_read_week_dates_is_parsed_again_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule above holds after an upgrade too: a list with a week date compiled by
    older code (compiled format 7) was mapped as it was, SERVING, its end moved, while
    the same files with a fresh index folder were refused. Format 8 parses it again."""
    rows = [person_entry("E1", ZHANG, "张伟", valid_until="2026-W01-1"),
            person_entry("E2", LI, "李娜")]  # fmt: skip
    refused_after_older_code_compiled_it(
        tmp_path, monkeypatch, rows,
        {(listfile, "_DAY_FORM"): re.compile(r".*"), (listfile, "_DAYS"): {}},  # any ISO form
        7, "is not a date of the form YYYY-MM-DD",
    )  # fmt: skip
