"""The loader: list files in, versions out, whole or not at all."""

from __future__ import annotations

import csv
import itertools
import threading
import time
from collections import Counter
from dataclasses import fields
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin_check.domain.decision import Query, decide
from shixin_check.domain.errors import InvalidInput, LoadRejected, RowError
from shixin_check.domain.identity import IdType, normalize_uscc, resident_id_check_char
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import (
    NO_END,
    Channel,
    Decision,
    EntryStatus,
    ListType,
    Role,
    china_day,
)
from shixin_check.domain.rules import Flight, Policy
from shixin_check.loader import columns, listfile, publish_redis
from shixin_check.loader.columns import ColumnBuilder, plain_uscc
from shixin_check.loader.feed import is_header
from shixin_check.loader.index_memory import (
    BaseBuilder,
    BaseParts,
    MemoryIndex,
    _expiries,
    entry_id_hash,
    merge_parts,
)
from shixin_check.loader.index_redis import RedisKeys, bucket_of, encode_match
from shixin_check.loader.listfile import (
    FileKind,
    detect_kind,
    iter_rows,
    line_starts,
    parse_entry,
)
from shixin_check.loader.versions import DirectoryFollower, Loader, build_snapshot, validate_file
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
    rid,
    uscc,
    write_jsonl,
)
from tests.waiting import eventually

TODAY = china_day(time.time())


def flight_query(keyer: SubjectKeyer, number: str, name: str = "") -> Query:
    key = keyer.subject_key(IdType.RESIDENT_ID, number)
    return Query(key, name, "", Channel.AIRLINE, Flight("CA1234", "Y"), 0)


def decision_for(index: MemoryIndex, keyer: SubjectKeyer, number: str) -> Decision:
    view = index.current()
    assert view is not None
    return decide(view, flight_query(keyer, number), keyer, Policy(), TODAY).decision


@pytest.fixture
def loaded(tmp_path: Path, keyer: SubjectKeyer) -> tuple[Loader, MemoryIndex]:
    """A loader serving basic_rows()."""
    index = MemoryIndex()
    loader = Loader(index, keyer)
    loader.load_path(write_jsonl(tmp_path / "a-snapshot.jsonl", basic_rows()))
    return loader, index


def test_snapshot_serves_debtors_and_related_persons(tmp_path: Path, keyer: SubjectKeyer) -> None:
    view = build_snapshot(write_jsonl(tmp_path / "s.jsonl", basic_rows()), keyer)
    wang = view.look_up(keyer.subject_key(IdType.RESIDENT_ID, WANG))
    assert [(m.role, m.organization_name) for m in wang] == [
        (Role.LEGAL_REPRESENTATIVE, "北京艾克米科技有限公司")
    ]
    org = view.look_up(keyer.subject_key(None, ACME_USCC))
    assert [(m.role, m.organization_name, m.entry_id) for m in org] == [(Role.DEBTOR, "", "E3")]
    assert view.look_up(keyer.subject_key(IdType.RESIDENT_ID, ZHAO)) == []
    assert view.info.counts.total == 3
    assert dict(((t, s), n) for t, s, n in view.info.counts.by_type_status) == {
        (ListType.SHIXIN, EntryStatus.ACTIVE): 2,
        (ListType.XIANGAO, EntryStatus.ACTIVE): 1,
    }


def test_snapshot_keeps_no_plaintext_id(tmp_path: Path, keyer: SubjectKeyer) -> None:
    view = build_snapshot(write_jsonl(tmp_path / "s.jsonl", basic_rows()), keyer)
    base = view.base
    blob = b"".join(bytes(getattr(base, name)) for name in ("text", "m_mask"))
    for number in (ZHANG, LI, WANG, ACME_USCC):
        assert number.encode() not in blob
    zhang = view.look_up(keyer.subject_key(IdType.RESIDENT_ID, ZHANG))[0]
    assert zhang.masked_id == ZHANG[:6] + "********" + ZHANG[-4:]


def test_every_bad_row_is_reported_with_its_line(tmp_path: Path, keyer: SubjectKeyer) -> None:
    rows = basic_rows()
    bad_check = person_entry("E4", ZHANG[:17] + ("0" if ZHANG[17] != "0" else "1"), "甲")
    bad_type = person_entry("E5", ZHAO, "乙", list_type="BLACKLIST")
    bad_date = person_entry("E6", ZHAO, "丙", valid_until="2026-13-01")
    path = write_jsonl(tmp_path / "s.jsonl", [*rows, bad_check, bad_type, bad_date])
    with path.open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(LoadRejected) as caught:
        build_snapshot(path, keyer)
    found = [(e.line, e.field) for e in caught.value.errors]
    assert found == [
        (4, "subject.id_number"),
        (5, "list_type"),
        (6, "valid_until"),
        (7, ""),
    ]
    assert "check digit" in caught.value.errors[0].problem


def test_duplicate_entry_ids_name_both_lines(tmp_path: Path, keyer: SubjectKeyer) -> None:
    rows = [*basic_rows(), person_entry("E1", ZHAO, "赵六")]
    with pytest.raises(LoadRejected) as caught:
        build_snapshot(write_jsonl(tmp_path / "s.jsonl", rows), keyer)
    [error] = caught.value.errors
    assert (error.line, error.field) == (4, "entry_id")
    assert "line 1" in error.problem


def test_bad_file_never_replaces_the_serving_version(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer
) -> None:
    loader, index = loaded
    before = index.current()
    bad = write_jsonl(tmp_path / "b.jsonl", [person_entry("E9", ZHAO, "赵六", status="GONE")])
    with pytest.raises(LoadRejected):
        loader.load_path(bad)
    assert index.current() is before
    assert decision_for(index, keyer, ZHANG) is Decision.DENY
    assert decision_for(index, keyer, ZHAO) is Decision.ALLOW


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b'{"snapshot": {"includes_seq": 3}}\n', b"entry_id,list_type\n"],
    ids=["empty", "blank line", "header only", "csv header only"],
)
def test_a_snapshot_without_entries_is_refused_and_never_replaces_the_list(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer, content: bytes
) -> None:
    """A snapshot replaces the whole list: an export cut to nothing would have emptied it
    (every listed person allowed) in one step, and validate called it OK."""
    loader, index = loaded
    before = index.current()
    path = tmp_path / ("s.csv" if content.startswith(b"entry_id") else "s.jsonl")
    path.write_bytes(content)
    with pytest.raises(LoadRejected) as refused:
        loader.load_path(path)
    [error] = refused.value.errors
    assert error.line == 0 and str(error).startswith("holds no entries")
    assert index.current() is before
    assert decision_for(index, keyer, ZHANG) is Decision.DENY


def test_csv_snapshot_reads_like_json_lines(tmp_path: Path, keyer: SubjectKeyer) -> None:
    path = tmp_path / "s.csv"
    columns = [
        "entry_id", "list_type", "subject.type", "subject.name", "subject.id_number",
        "subject.uscc", "related_persons.0.role", "related_persons.0.name",
        "related_persons.0.id_number", "case_number", "court", "valid_until", "status",
        "exemptions.0.channel", "exemptions.0.from", "exemptions.0.until",
    ]  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(columns)
        out.writerow(["E1", "SHIXIN", "PERSON", "张伟", ZHANG, "", "", "", "", "(2024)京0105执1号",
                      "北京市朝阳区人民法院", "2099-01-01", "ACTIVE", "RAIL", "2026-01-01",
                      "2026-01-31"])  # fmt: skip
        out.writerow(["E3", "SHIXIN", "ORGANIZATION", "艾克米", "", ACME_USCC,
                      "LEGAL_REPRESENTATIVE", "王芳", WANG, "(2024)京0105执2号",
                      "北京市朝阳区人民法院", "", "SUSPENDED", "", "", ""])  # fmt: skip
    view = build_snapshot(path, keyer)
    [zhang] = view.look_up(keyer.subject_key(IdType.RESIDENT_ID, ZHANG))
    assert zhang.exemptions[0].channel is Channel.RAIL
    [wang] = view.look_up(keyer.subject_key(IdType.RESIDENT_ID, WANG))
    assert (wang.role, wang.status) == (Role.LEGAL_REPRESENTATIVE, EntryStatus.SUSPENDED)


def test_delta_ops_apply_in_seq_order(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer
) -> None:
    loader, index = loaded
    rows = [  # written out of order: seq decides
        delta(3, "DELIST", entry_id="E1"),
        delta(1, "LIST", entry=person_entry("E7", ZHAO, "赵六")),
        delta(2, "SUSPEND", entry_id="E2"),
    ]
    loader.load_path(write_jsonl(tmp_path / "d1.jsonl", rows))
    assert decision_for(index, keyer, ZHAO) is Decision.DENY
    assert decision_for(index, keyer, ZHANG) is Decision.ALLOW
    assert decision_for(index, keyer, LI) is Decision.ALLOW  # suspended
    view = index.current()
    assert view is not None
    assert view.info.last_delta_seq == 3
    assert view.info.version.endswith("+3")
    counts = {(t, s): n for t, s, n in view.info.counts.by_type_status}
    assert counts == {
        (ListType.SHIXIN, EntryStatus.ACTIVE): 2,  # E3 and E7
        (ListType.XIANGAO, EntryStatus.SUSPENDED): 1,
    }


def test_delta_then_inverse_restores_decisions(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer
) -> None:
    loader, index = loaded
    exemption = {"channel": "AIRLINE", "from": "2020-01-01", "until": "2099-01-01"}
    forward = [
        delta(1, "SUSPEND", entry_id="E1"),
        delta(2, "EXEMPT", entry_id="E2", exemption=exemption),
        delta(3, "LIST", entry=person_entry("E8", ZHAO, "赵六")),
    ]
    inverse = [
        delta(4, "RESUME", entry_id="E1"),
        delta(5, "UNEXEMPT", entry_id="E2", exemption=exemption),
        delta(6, "DELIST", entry_id="E8"),
    ]
    people = (ZHANG, LI, WANG, ZHAO)
    before = [decision_for(index, keyer, p) for p in people]
    loader.load_path(write_jsonl(tmp_path / "d1.jsonl", forward))
    middle = [decision_for(index, keyer, p) for p in people]
    loader.load_path(write_jsonl(tmp_path / "d2.jsonl", inverse))
    after = [decision_for(index, keyer, p) for p in people]
    assert middle == [Decision.ALLOW, Decision.ALLOW, Decision.DENY, Decision.DENY]
    assert before == after == [Decision.DENY, Decision.DENY, Decision.DENY, Decision.ALLOW]


def test_replayed_delta_is_skipped(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer
) -> None:
    loader, index = loaded
    listing = write_jsonl(
        tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵"))]
    )
    loader.load_path(listing)
    loader.load_path(write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E8")]))
    replayed = loader.load_path(listing)  # seq 1 again: must not re-list
    assert replayed.info.last_delta_seq == 2
    assert decision_for(index, keyer, ZHAO) is Decision.ALLOW


def test_bad_delta_applies_nothing(
    tmp_path: Path, loaded: tuple[Loader, MemoryIndex], keyer: SubjectKeyer
) -> None:
    loader, index = loaded
    before = index.current()
    rows = [delta(1, "DELIST", entry_id="E1"), delta(2, "SUSPEND", entry_id="NOPE")]
    with pytest.raises(LoadRejected) as caught:
        loader.load_path(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [(e.line, e.field) for e in caught.value.errors] == [(2, "entry_id")]
    assert index.current() is before
    assert decision_for(index, keyer, ZHANG) is Decision.DENY


def test_malformed_delta_rows_are_reported(tmp_path: Path, keyer: SubjectKeyer) -> None:
    rows = [
        delta(1, "LIST"),
        delta(2, "EXPLODE", entry_id="E1"),
        {"op": "DELIST", "entry_id": "E1"},
        delta(
            4,
            "EXEMPT",
            entry_id="E1",
            exemption={"channel": "SPACESHIP", "from": "2026-01-01", "until": "2026-02-01"},
        ),  # fmt: skip
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert detect_kind(path) is FileKind.DELTA
    kind, count, errors = validate_file(path, keyer)
    assert kind is FileKind.DELTA
    assert [(e.line, e.field) for e in errors] == [
        (1, "entry"),
        (2, "op"),
        (3, "seq"),
        (4, "exemption.channel"),
    ]


def test_followed_directory_applies_new_files(tmp_path: Path, keyer: SubjectKeyer) -> None:
    events: list[tuple[str, str]] = []
    index = MemoryIndex()
    loader = Loader(index, keyer)
    write_jsonl(tmp_path / "001-snapshot.jsonl", basic_rows())
    follower = DirectoryFollower(
        tmp_path, loader, lambda what, path, _d: events.append((what, path.name)), 0.05
    )
    follower.initial_load()
    follower.start()
    try:
        assert decision_for(index, keyer, ZHAO) is Decision.ALLOW
        (tmp_path / "ignored.part").write_text("{broken")
        write_jsonl(
            tmp_path / "002-delta.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵"))]
        )
        eventually(lambda: ("loaded", "002-delta.jsonl") in events, "loading 002-delta.jsonl")
        assert decision_for(index, keyer, ZHAO) is Decision.DENY
        write_jsonl(tmp_path / "003-delta.jsonl", [delta(2, "SUSPEND", entry_id="NOPE")])
        write_jsonl(tmp_path / "004-snapshot.jsonl", [person_entry("E1", ZHANG, "张伟")])
        eventually(lambda: ("loaded", "004-snapshot.jsonl") in events, "loading 004-snapshot")
        assert decision_for(index, keyer, LI) is Decision.ALLOW  # not in the new snapshot
        assert decision_for(index, keyer, ZHANG) is Decision.DENY
    finally:
        follower.stop()
    assert ("rejected", "003-delta.jsonl") in events
    assert all(name != "ignored.part" for _, name in events)


def _read(last_read: list[object], view: object) -> bool:
    return last_read[0] is view


def test_checks_never_see_a_half_loaded_list(tmp_path: Path, keyer: SubjectKeyer) -> None:
    """Version A lists Zhang and Li; version B lists neither. A reader that
    looks both up in one view sees both or neither, through many swaps."""
    index = MemoryIndex()
    loader = Loader(index, keyer)
    version_a = write_jsonl(tmp_path / "a.jsonl", basic_rows())
    version_b = write_jsonl(tmp_path / "b.jsonl", [person_entry("E9", ZHAO, "赵六")])
    loader.load_path(version_a)
    keys = [keyer.subject_key(IdType.RESIDENT_ID, p) for p in (ZHANG, LI)]
    seen: set[tuple[bool, bool]] = set()
    stop = threading.Event()
    last_read: list[object] = [None]

    def reader() -> None:
        while not stop.is_set():
            view = index.current()
            assert view is not None
            seen.add(tuple(bool(view.look_up(k)) for k in keys))  # type: ignore[arg-type]
            last_read[0] = view

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            loader.load_path(version_b if i % 2 == 0 else version_a)
            # the reader looks at every version at least once: both states are seen,
            # however the threads happen to be scheduled
            eventually(partial(_read, last_read, index.current()),
                       "the reader saw the new version", step=0.0005)  # fmt: skip
    finally:
        stop.set()
        thread.join()
    assert seen <= {(True, True), (False, False)}
    assert seen == {(True, True), (False, False)}


def many_rows(n: int) -> list[dict[str, object]]:
    """n people and every tenth an organisation with a legal representative."""
    rows: list[dict[str, object]] = []
    for i in range(n):
        number = rid(f"1101051980{1 + i // 28:02d}{1 + i % 28:02d}{i % 1000:03d}")
        if i % 10 == 0:
            rows.append(org_entry(f"E{i}", uscc(f"91110105MA{i:07d}"), f"公司{i}",
                                  [("LEGAL_REPRESENTATIVE", f"代表{i}", number)]))  # fmt: skip
        else:
            rows.append(
                person_entry(f"E{i}", number, f"人{i}", status="SUSPENDED" if i % 7 else "ACTIVE")
            )
    return rows


def test_parallel_load_builds_the_same_index(tmp_path: Path, keyer: SubjectKeyer) -> None:
    rows = many_rows(300)
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    single = build_snapshot(path, keyer, workers=1)
    parallel = build_snapshot(path, keyer, workers=3)
    assert parallel.info.counts == single.info.counts
    for row in rows:
        subject = row["subject"]
        assert isinstance(subject, dict)
        key = (
            keyer.subject_key(None, subject["uscc"])
            if subject["type"] == "ORGANIZATION"
            else keyer.subject_key(IdType.RESIDENT_ID, subject["id_number"])
        )
        assert parallel.look_up(key) == single.look_up(key) != []


def test_parallel_load_reports_the_files_line_numbers(tmp_path: Path, keyer: SubjectKeyer) -> None:
    rows = many_rows(300)
    rows[4] = person_entry("E4", "123", "坏")  # line 5
    rows[249] = person_entry("E1", ZHAO, "重复")  # line 250: E1 again
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(LoadRejected) as caught:
        build_snapshot(path, keyer, workers=3)
    assert [(e.line, e.field) for e in caught.value.errors] == [(5, "subject.id_number")]
    rows[4] = many_rows(5)[4]
    with pytest.raises(LoadRejected) as caught:
        build_snapshot(write_jsonl(path, rows), keyer, workers=3)
    assert [(e.line, e.field, e.problem) for e in caught.value.errors] == [
        (250, "entry_id", "'E1' repeats line 2")
    ]


def test_blank_lines_count_in_every_chunks_line_numbers(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Each load worker tells the next chunk how many lines its own held, blank ones
    too: with runs of blank lines (some ending a chunk), bad JSON and a repeated
    entry_id are reported with the file's line numbers by 1, 3 and 7 processes alike."""

    def problems(changed: int, line: bytes) -> list[list[tuple[int, str, str]]]:
        lines = [orjson.dumps(row) for row in many_rows(300)]
        lines[changed] = line
        lines[100:100] = [b""] * 60 + [b"   "]  # blank lines, one of spaces
        lines[20:20] = [b""] * 3
        path = tmp_path / "s.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n\n\n")
        found = []
        for workers in (1, 3, 7):
            with pytest.raises(LoadRejected) as caught:
                build_snapshot(path, keyer, workers=workers)
            found.append([(e.line, e.field, e.problem[:19]) for e in caught.value.errors])
        return found

    cut = problems(259, b'{"entry_id": "E260",')  # line 260, 64 blank lines before it
    assert cut == [[(324, "", "not valid JSON (une")]] * 3
    again = problems(279, orjson.dumps(person_entry("E1", ZHAO, "重复")))
    assert again == [[(344, "entry_id", "'E1' repeats line 2")]] * 3


# --- the fast path (loader.columns) against parse_entry and BaseBuilder ------------


def _merged(parts: list[BaseParts]) -> dict[str, object]:
    """Everything a Base built from ``parts`` holds, comparable."""
    base, duplicates = merge_parts(parts)
    out: dict[str, object] = {f.name: getattr(base, f.name) for f in fields(base)}
    out["bloom"] = base.bloom.save_bytes()
    out["duplicates"] = duplicates
    return out


def _legacy(rows: list[dict[str, Any]], keyer: SubjectKeyer) -> tuple[object, list[RowError]]:
    """What the load built before loader.columns: parse_entry, then BaseBuilder.add."""
    builder = BaseBuilder(keyer, 1024)
    errors = []
    for line, row in enumerate(rows, 1):
        try:
            entry = parse_entry(row)
        except InvalidInput as exc:
            errors.append(RowError(line, exc.field, exc.problem))
            continue
        builder.add(entry, line)
    return _merged([builder.parts()]), errors


@pytest.fixture(params=["compiled", "python"])
def row_checker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """ColumnBuilder with the C row checker (loader/_rowcheck.c), and without it as
    where no compiler built it: both must build what parse_entry builds."""
    if request.param == "python":
        monkeypatch.setattr(columns, "_rowcheck", None)
    else:
        assert columns._rowcheck is not None, "loader/_rowcheck.c is not built: scripts/setup"
    return str(request.param)


def _columnar(
    rows: list[dict[str, Any]], keyer: SubjectKeyer, pieces: int = 1
) -> tuple[object, list[RowError], int, int]:
    """The same through ColumnBuilder, in ``pieces`` parts as load workers make them;
    and how many rows took the fast path, and how many of those the C checker took."""
    builders = [ColumnBuilder(keyer, 1024) for _ in range(pieces)]
    errors = []
    for line, row in enumerate(rows, 1):
        builder = builders[(line - 1) * pieces // len(rows)]
        if error := builder.add(row, line):
            errors.append(error)
    fast = sum(b.fast_rows for b in builders)
    compiled = sum(b._columns.taken for b in builders if b._columns is not None)
    return _merged([b.parts() for b in builders]), errors, fast, compiled


def _unusual_but_valid() -> list[dict[str, Any]]:
    """Rows parse_entry accepts that are not in the plain form: the fast path
    normalises them with the same domain functions, or leaves them to parse_entry."""
    rows = [
        person_entry("U1", ZHANG[:6] + ZHANG[8:17], "十五位"),  # a 15-digit card
        person_entry("U2", " " + LI.lower() + " ", " 李 娜 "),  # spaces; x for X when it has one
        person_entry("U3", "".join(chr(ord(c) + 0xFEE0) for c in WANG), "全角"),  # full width
        org_entry(" U4 ", ACME_USCC.lower(), "小写代码", [("PRINCIPAL", "Ａｂｃ", ZHAO)]),
        person_entry("U5", ZHAO, "阿依古丽・买买提", status=""),  # status "" is ACTIVE
        person_entry("U6", ZHAO, "无期限", valid_until=""),
        person_entry("U7", "G12345678", "护照"),
        person_entry("   ", ZHAO, "空白"),  # accepted as an empty entry_id: parse_entry's path
        # day 0 twice (the second from the cache of dates seen): valid_until 0 is no end
        person_entry("U9", ZHAO, "纪元", published_on="1970-01-01", valid_until="1970-01-01"),
        person_entry("U10", ZHAO, "纪元", published_on="1970-01-01", valid_until="1970-01-01"),
    ]
    rows[6]["subject"]["id_type"] = "PASSPORT"
    del rows[0]["subject"]["id_type"]  # RESIDENT_ID by default
    del rows[4]["filed_on"]
    rows[5]["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31"}]
    return rows


def test_fast_path_builds_what_parse_entry_builds(
    keyer: SubjectKeyer, monkeypatch: pytest.MonkeyPatch, row_checker: str
) -> None:
    monkeypatch.setattr(ColumnBuilder, "FLUSH_ROWS", 7)  # rows staged and flushed many times
    plain = [*basic_rows(), *many_rows(60)]
    plain[5]["exemptions"] = [{"channel": "HOTEL", "from": "2025-03-01", "until": "2025-03-02"}]
    rows = [*plain, *_unusual_but_valid(), *plain[:3]]  # and three repeated entry_ids
    legacy = _legacy(rows, keyer)  # parse_entry sees every date first: the C checker knows them
    for pieces in (1, 3):
        base, errors, fast, compiled = _columnar(rows, keyer, pieces)
        assert (base, errors) == legacy
        # all but the blank entry_id and the two with an exemption (each names a person
        # to find in its entry: parse_entry's) took the fast path
        assert fast == len(rows) - 3
        # the C checker takes every plain row but the one with an exemption and, of the
        # unusual ones, those whose values need no normalising (U5, U7, U9, U10; U6 has
        # an exemption); the others it leaves to _plain
        assert compiled == (len(plain) - 1 + 3 + 4 if row_checker == "compiled" else 0)


BAD_VALUES: list[Any] = [None, "", " ", 0, 1, True, [], {}, ["x"], "BOGUS", "2024-02-30", "x" * 30]
FIELDS = [
    ("entry_id",), ("list_type",), ("status",), ("subject",), ("subject", "type"),
    ("subject", "name"), ("subject", "id_type"), ("subject", "id_number"), ("subject", "uscc"),
    ("related_persons",), ("related_persons", 0), ("related_persons", 0, "role"),
    ("related_persons", 0, "id_number"), ("related_persons", 0, "id_type"),
    ("related_persons", 0, "name"), ("exemptions",), ("exemptions", 0),
    ("exemptions", 0, "channel"), ("exemptions", 0, "from"), ("exemptions", 0, "until"),
    ("case_number",), ("court",), ("published_on",), ("valid_until",), ("filed_on",),
]  # fmt: skip


def _mutated(row: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> dict[str, Any]:
    row = orjson.loads(orjson.dumps(row))
    node: Any = row
    for step in path[:-1]:
        if isinstance(node, dict) and step in node or isinstance(node, list) and step < len(node):
            node = node[step]
        else:
            return row
    last = path[-1]
    if isinstance(node, dict) and drop:
        node.pop(last, None)
    elif isinstance(node, dict) or isinstance(node, list) and last < len(node):
        node[last] = value
    return row


def test_fast_path_reports_every_bad_row_as_parse_entry_does(
    keyer: SubjectKeyer, row_checker: str
) -> None:
    """Every field of three row shapes set to each odd value, or dropped: the same
    errors (line, field, problem) and, for rows still good, the same columns."""
    org = org_entry("E9", ACME_USCC, "艾克米", [("PRINCIPAL", "王芳", WANG)])
    org["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31"}]
    shapes = [person_entry("E1", ZHANG, "张伟"), org, org_entry("E8", ACME_USCC, "甲", [])]
    values = [*BAD_VALUES, "RESIDENT_ID", "PASSPORT", "PERSON", "ORGANIZATION", "RAIL"]
    rejected = 0
    for row, path, value, drop in itertools.product(shapes, FIELDS, values, (False, True)):
        rows = [row, _mutated(row, path, value, drop), row]
        parts, errors, _, _ = _columnar(rows, keyer)
        assert (parts, errors) == _legacy(rows, keyer), (path, value, drop)
        rejected += bool(errors)
    assert rejected > 1000  # most mutations make a bad row


def test_a_row_no_check_could_find_is_refused_with_its_line(
    tmp_path: Path, keyer: SubjectKeyer, row_checker: str
) -> None:
    """A number given under a document type that a check refuses under every type (a
    resident ID with one keying slip, a foreign permanent resident card with a bad check
    character) loaded, and its person could never be checked: every check of the number
    was INVALID_ARGUMENT, and ``validate`` said the file was OK. Refused now, as a check
    refuses it, with the row's line and field, in the subject, a related person and an
    exemption alike; the load applies nothing."""
    card = "91184019800101001"  # a foreign card's first 17 characters
    card += next(c for c in "0123456789X" if c != resident_id_check_char(card))
    passport = person_entry("E4", ZHANG[:17], "甲")  # its check character left out
    passport["subject"]["id_type"] = "PASSPORT"
    foreign = person_entry("E5", card, "JOHN SMITH")
    foreign["subject"]["id_type"] = "FOREIGN_PERMANENT_RESIDENT"
    related = org_entry("E6", ACME_USCC, "艾克米", [("PRINCIPAL", "王芳", WANG)])
    related["related_persons"][0].update(
        id_type="HK_MACAO_PERMIT", id_number=WANG[:9] + "5" + WANG[9:]
    )
    exempt = person_entry("E7", ZHAO, "赵六", exemptions=[{
        "channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31",
        "id_type": "PASSPORT", "id_number": ZHAO[:6] + ZHAO[7] + ZHAO[6] + ZHAO[8:],
    }])  # fmt: skip
    path = write_jsonl(tmp_path / "s.jsonl", [*basic_rows(), passport, foreign, related, exempt])
    with pytest.raises(LoadRejected) as caught:
        build_snapshot(path, keyer)
    found = [(e.line, e.field, e.problem.split(":")[0]) for e in caught.value.errors]
    assert found == [
        (4, "subject.id_number", "reads as a resident ID with one character left out"),
        (5, "subject.id_number", "reads as a foreign permanent resident ID card (18 characters "
                                 "beginning with 9) with a bad check character (GB 11643)"),
        (6, "related_persons.0.id_number", "reads as a resident ID with one character too many"),
        (7, "exemptions.0.id_number", "reads as a resident ID with two characters swapped"),
    ]  # fmt: skip
    assert "list a resident ID with id_type RESIDENT_ID" in caught.value.errors[0].problem
    # the same numbers under RESIDENT_ID were refused already; a real document still loads
    fine = person_entry("E4", "E82067303", "甲")
    fine["subject"]["id_type"] = "PASSPORT"
    build_snapshot(write_jsonl(tmp_path / "ok.jsonl", [*basic_rows(), fine]), keyer)


def test_plain_uscc_agrees_with_normalize_uscc() -> None:
    codes = [ACME_USCC, ACME_USCC.lower(), ACME_USCC[:17] + "0", "", "91110105MA000000I"]
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    for i in range(3000):
        head = alphabet[i % 31] + alphabet[i * 7 % 31] + f"{i * 7919 % 1000000:06d}"
        body = head + "".join(alphabet[(i * k + k * k) % 31] for k in range(9))
        codes += [uscc(body), body + alphabet[i % 31]]
    for code in codes:
        try:
            expected = normalize_uscc(code) == code
        except InvalidInput:
            expected = False
        assert plain_uscc(code) is expected, code


def _old_iter_rows(path: Path) -> list[tuple[int, object]]:
    """iter_rows as it was: line by line, with the file's own iteration."""
    out: list[tuple[int, object]] = []
    first = True
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                out.append((line_no, RowError(line_no, "", f"not valid JSON ({exc})")))
                continue
            if not isinstance(obj, dict):
                out.append((line_no, RowError(line_no, "", "a row must be a JSON object")))
                continue
            if first and is_header(obj):
                first = False
                continue
            first = False
            out.append((line_no, obj))
    return out


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_rows_read_in_blocks_are_the_lines_read_one_by_one(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listfile, "_BLOCK", block)
    row = orjson.dumps(person_entry("E1", ZHANG, "张伟"))
    body = b"\n".join([
        b"", b'{"broken": ', b'{"snapshot": {"includes_seq": 2}}', row, b"  \t", b"[1, 2]",
        row + b"\r", b'{"a": 1} x', b"\x0b", row, b'{"last": ',
    ])  # fmt: skip
    for text in (body, body + b"\n", body + b"\n\n"):
        path = tmp_path / "rows.jsonl"
        path.write_bytes(text)
        assert list(iter_rows(path)) == _old_iter_rows(path)
        starts = line_starts(path, 4)
        pieces = []  # in ranges, numbered on as the load's workers do
        for a, b in zip(starts, starts[1:], strict=False):
            before = text[:a].count(b"\n")
            pieces += [(n + before, r) for n, r in iter_rows(path, a, b)]
        old = _old_iter_rows(path)
        assert [n for n, _ in pieces] == [n for n, _ in old]


class _RecordingPipe:
    """Just enough of a redis-py pipeline for ``_write_version``: HSETs, recorded."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.queued = 0

    def hset(self, key: str, mapping: dict[bytes, bytes]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)
        self.queued += 1

    def __len__(self) -> int:
        return self.queued

    def execute(self) -> None:
        self.queued = 0


def test_redis_version_holds_each_match_as_match_at_gives_it(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    rows = many_rows(300)
    rows[3]["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31"}]
    view = build_snapshot(write_jsonl(tmp_path / "s.jsonl", rows), keyer)
    pipe = _RecordingPipe()
    client = SimpleNamespace(pipeline=lambda transaction: pipe)
    lock = SimpleNamespace(check=lambda: None)
    keys, bits, ebits = RedisKeys(), 3, 2
    publish_redis._write_version(cast(Any, client), keys, "V", view, bits, ebits, cast(Any, lock))
    expected: dict[str, dict[bytes, list[Any]]] = {}
    entry_keys: dict[str, dict[bytes, bytes]] = {}
    base = view.base
    for i in range(len(base.k_hi)):  # the subject and entry hashes as they were first written
        key16 = ((base.k_hi[i] << 64) | base.k_lo[i]).to_bytes(16, "big")
        match = view.match_at(i)
        assert match is not None
        bucket = expected.setdefault(keys.subjects("V", bucket_of(base.k_hi[i], bits)), {})
        organisation = base.texts(base.m_entry[i])[2]  # stored on its debtor's match too
        bucket.setdefault(key16, []).append(encode_match(match, organisation))
        entry_id = match.entry_id
        entries = entry_keys.setdefault(
            keys.entries("V", bucket_of(entry_id_hash(entry_id), ebits)), {}
        )
        entries[entry_id.encode()] = entries.get(entry_id.encode(), b"") + key16
    want = {k: {f: orjson.dumps(v) for f, v in m.items()} for k, m in expected.items()}
    assert pipe.hashes == {**want, **entry_keys}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(ListType)),
            st.sampled_from(list(EntryStatus)),
            st.one_of(
                st.integers(19000, 19040),
                st.integers(-719_162, 2_900_000),  # 0001-01-01 to 9909: valid_until may be any
                st.just(NO_END),
            ),
        ),
        max_size=60,
    )
)
def test_expiries_count_entries_by_type_status_and_day(
    rows: list[tuple[ListType, EntryStatus, int]],
) -> None:
    """Counted by bincount over the days spanned, or by sorting when the days lie far
    apart (a few wide dates): either way, what counting them one by one gives."""
    e_type = np.array([int(t) for t, _, _ in rows], "u1")
    e_status = np.array([int(s) for _, s, _ in rows], "u1")
    e_valid = np.array([v for _, _, v in rows], "<i4")
    expected = Counter((t, s, v) for t, s, v in rows if v != NO_END)
    assert _expiries(e_type, e_status, e_valid) == expected


def test_a_list_with_entries_ending_far_apart_loads(tmp_path: Path, keyer: SubjectKeyer) -> None:
    """Counting ends by (type, status, day) once crashed the load (ValueError from
    ListType(-1)) with dates this far apart (a file can no longer hold a day before
    2000 but 1970-01-01, which is no end: the counts' own test covers negative days)."""
    rows = [
        person_entry("E1", ZHAO, "早", valid_until="2000-01-01"),
        person_entry("E2", ZHANG, "晚", valid_until="2100-01-01"),
    ]
    for row in rows:
        del row["published_on"]
    view = build_snapshot(write_jsonl(tmp_path / "s.jsonl", rows), keyer)
    ends = {day: n for _, _, day, n in view.info.counts.expiries}
    assert ends == {10957: 1, 47482: 1}


@pytest.mark.parametrize("value", [0, False, {}, [], 0.0])
def test_a_field_given_a_false_value_of_the_wrong_type_is_a_bad_row(
    keyer: SubjectKeyer, row_checker: str, value: Any
) -> None:
    """Missing, null and "" take a field's default (or no items); 0, false, {} or []
    where a name or list belongs is a mistake in the feed (``status: 0`` was taken as
    ACTIVE, ``exemptions: {}`` as none), reported naming the field, by every path."""
    org = org_entry("E9", ACME_USCC, "艾克米", [("PRINCIPAL", "王芳", WANG)])
    org["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31"}]
    person = person_entry("E1", ZHANG, "张伟")
    cases = [
        (person, ("status",), "status"), (person, ("list_type",), "list_type"),
        (person, ("subject", "id_type"), "subject.id_type"),
        (org, ("related_persons", 0, "role"), "related_persons.0.role"),
        (org, ("related_persons", 0, "id_type"), "related_persons.0.id_type"),
        (org, ("exemptions", 0, "channel"), "exemptions.0.channel"),
    ]  # fmt: skip
    if value != []:  # [] is a list: no related persons, no exemptions
        cases += [(org, ("related_persons",), "related_persons"),
                  (org, ("exemptions",), "exemptions"), (person, ("exemptions",), "exemptions")]  # fmt: skip
    for row, path, field in cases:
        rows = [_mutated(row, path, value, drop=False)]
        _, errors, _, _ = _columnar(rows, keyer)
        assert [(e.line, e.field) for e in errors] == [(1, field)], (path, value, errors)
        with pytest.raises(InvalidInput) as refused:
            parse_entry(rows[0])
        assert refused.value.field == field


@pytest.mark.parametrize("value", [None, "", "drop"])
def test_a_field_left_out_takes_its_default(
    keyer: SubjectKeyer, row_checker: str, value: Any
) -> None:
    """status ACTIVE, id_type RESIDENT_ID, no related persons, no exemptions; and []
    is no items on a person's row too, by the fast path (not handed to parse_entry)."""
    org = org_entry("E9", ACME_USCC, "艾克米", [("PRINCIPAL", "王芳", WANG)])
    person = person_entry("E1", ZHANG, "张伟")
    rows = [_mutated(person, ("status",), value, value == "drop"),
            _mutated(person, ("subject", "id_type"), value, value == "drop"),
            _mutated(org, ("related_persons", 0, "id_type"), value, value == "drop"),
            _mutated(person, ("exemptions",), value, value == "drop"),
            _mutated(person, ("related_persons",), [] if value == "drop" else value, False),
            _mutated(person, ("exemptions",), [], False)]  # fmt: skip
    parts, errors, fast, compiled = _columnar(rows, keyer)
    assert errors == []
    assert fast == len(rows)
    assert compiled == (len(rows) if row_checker == "compiled" else 0)
    assert (parts, errors) == _legacy(rows, keyer)
    entries = [parse_entry(row) for row in rows]
    assert all(e.status is EntryStatus.ACTIVE and not e.exemptions for e in entries)
    people = [e.related[0] if e.related else e.debtor for e in entries]  # the org's principal
    assert all(p.id_type is IdType.RESIDENT_ID for p in people)
