"""The loader: list files in, versions out, whole or not at all."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from shixin_check.domain.decision import Query, decide
from shixin_check.domain.errors import LoadRejected
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, EntryStatus, ListType, Role, china_day
from shixin_check.domain.rules import Flight, Policy
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.listfile import FileKind, detect_kind
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

    def reader() -> None:
        while not stop.is_set():
            view = index.current()
            assert view is not None
            seen.add(tuple(bool(view.look_up(k)) for k in keys))  # type: ignore[arg-type]

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            loader.load_path(version_b if i % 2 == 0 else version_a)
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
