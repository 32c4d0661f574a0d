"""The synthetic list generator: valid identities, realistic fields, same bytes every time."""

from __future__ import annotations

import datetime
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from shixin_check.domain.identity import normalize_document, normalize_resident_id, normalize_uscc
from shixin_check.loader.synthetic import iter_entries, never_listed_id, write_snapshot, writer
from shixin_check.loader.synthetic.tables import learned_tables

AS_OF = datetime.date(2026, 5, 1)
ROWS = 5_000
CASE_NUMBER = re.compile(r"^\(\d{4}\)[\u4e00-\u9fa5]\d{4}执(恢|保)?\d+号$")
BASIS_DOCUMENT = re.compile(r"^\((\d{4})\)[\u4e00-\u9fa5]\d{4}(民初|民特|刑初)\d+号$")
AMOUNT = re.compile(r"^\d+\.\d\d元$")
NAME = re.compile(r"[\u4e00-\u9fa5]{2,4}(\u00b7[\u4e00-\u9fa5]{2,6})?")
ENTRY_FIELDS = {
    "entry_id", "list_type", "subject", "related_persons", "case_number", "court",
    "basis_document", "basis_issuer", "obligation", "performance", "circumstance",
    "published_on", "filed_on", "performed_part", "unperformed_part", "severity",
    "valid_until", "status", "exemptions",
}  # fmt: skip
CIRCUMSTANCES = {
    "有履行能力而拒不履行生效法律文书确定义务",
    "违反财产报告制度",
    "违反限制消费令",
    "以伪造证据、暴力、威胁等方法妨碍、抗拒执行",
    "以虚假诉讼、虚假仲裁或者以隐匿、转移财产等方法规避执行",
    "无正当理由拒不履行执行和解协议",
}

Entry = dict[str, object]


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return list(iter_entries(ROWS, 7, AS_OF))


def _dict(value: object) -> dict[str, object]:
    assert isinstance(value, dict)
    return value


def _list(value: object) -> list[dict[str, object]]:
    assert isinstance(value, list)
    return value


def _str(value: object) -> str:
    assert isinstance(value, str)
    return value


def _persons(entries: list[Entry]) -> list[dict[str, object]]:
    return [s for e in entries if (s := _dict(e["subject"]))["type"] == "PERSON"]


def _organisations(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if _dict(e["subject"])["type"] == "ORGANIZATION"]


def _resident_ids(entries: list[Entry]) -> list[str]:
    ids = [_str(p["id_number"]) for p in _persons(entries) if p["id_type"] == "RESIDENT_ID"]
    for entry in entries:
        ids += [_str(r["id_number"]) for r in _list(entry["related_persons"])]
    return ids


def _age_at(resident_id: str, day: datetime.date) -> int:
    born = datetime.date(int(resident_id[6:10]), int(resident_id[10:12]), int(resident_id[12:14]))
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


# -- determinism ---------------------------------------------------------------


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "a.jsonl", 2_000, 11, AS_OF)
    write_snapshot(tmp_path / "b.jsonl", 2_000, 11, AS_OF)
    write_snapshot(tmp_path / "c.jsonl", 2_000, 12, AS_OF)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a != (tmp_path / "c.jsonl").read_bytes()


def test_a_prefix_does_not_depend_on_count(entries: list[Entry]) -> None:
    assert list(iter_entries(100, 7, AS_OF)) == entries[:100]


def test_entry_ids_are_unique_and_stable(entries: list[Entry]) -> None:
    ids = [e["entry_id"] for e in entries]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "E0000000001"
    assert ids[-1] == f"E{ROWS:010d}"


# -- identities -----------------------------------------------------------------


def test_every_resident_id_is_canonical_and_valid(entries: list[Entry]) -> None:
    ids = _resident_ids(entries)
    assert len(ids) > ROWS * 0.8
    for number in ids:
        assert normalize_resident_id(number) == number


def test_some_resident_ids_end_in_upper_case_x(entries: list[Entry]) -> None:
    ids = _resident_ids(entries)
    assert sum(number.endswith("X") for number in ids) > len(ids) / 30
    assert not any(number.endswith("x") for number in ids)


def test_every_uscc_is_canonical_and_valid(entries: list[Entry]) -> None:
    codes = [_str(_dict(e["subject"])["uscc"]) for e in _organisations(entries)]
    assert len(codes) > ROWS * 0.2
    for code in codes:
        assert normalize_uscc(code) == code
        assert code.startswith("91")


def test_age_matches_the_birth_date_in_the_id(entries: list[Entry]) -> None:
    for person in _persons(entries):
        age = person["age"]
        assert isinstance(age, int) and 18 <= age <= 80
        if person["id_type"] == "RESIDENT_ID":
            assert abs(_age_at(_str(person["id_number"]), AS_OF) - age) <= 1


def test_ages_stay_in_range_on_a_leap_day() -> None:
    leap_day = datetime.date(2024, 2, 29)
    for person in _persons(list(iter_entries(2_000, 3, leap_day))):
        if person["id_type"] == "RESIDENT_ID":
            number = _str(person["id_number"])
            assert normalize_resident_id(number) == number
            assert _age_at(number, leap_day) == person["age"]


def test_gender_matches_the_17th_digit(entries: list[Entry]) -> None:
    genders: Counter[object] = Counter()
    for person in _persons(entries):
        genders[person["gender"]] += 1
        if person["id_type"] == "RESIDENT_ID":
            odd = int(_str(person["id_number"])[16]) % 2 == 1
            assert person["gender"] == ("男" if odd else "女")
    assert genders["男"] > genders["女"] > 0


def test_some_people_hold_passports_or_permits() -> None:
    people = _persons(list(iter_entries(20_000, 5, AS_OF)))
    documents = [p for p in people if p["id_type"] != "RESIDENT_ID"]
    assert 0.003 * len(people) < len(documents) < 0.03 * len(people)
    kinds = {p["id_type"] for p in documents}
    assert kinds == {"PASSPORT", "HK_MACAO_PERMIT", "TAIWAN_PERMIT"}
    for person in documents:
        number = _str(person["id_number"])
        assert normalize_document(number) == number
        assert re.fullmatch(r"[EGHMC]?\d{8}", number)


# -- names and organisations ------------------------------------------------------


def test_names_are_chinese_and_some_carry_a_middle_dot(entries: list[Entry]) -> None:
    names = [_str(p["name"]) for p in _persons(entries)]
    dotted = [n for n in names if "\u00b7" in n]
    assert 0.01 * len(names) < len(dotted) < 0.06 * len(names)
    for name in names:
        assert NAME.fullmatch(name), name


def test_organisations_have_their_related_persons(entries: list[Entry]) -> None:
    sizes: Counter[int] = Counter()
    for entry in _organisations(entries):
        subject = _dict(entry["subject"])
        assert _str(subject["name"]).endswith("有限公司")
        related = _list(entry["related_persons"])
        sizes[len(related)] += 1
        roles = [r["role"] for r in related]
        assert roles[0] == "LEGAL_REPRESENTATIVE"
        assert len(set(roles)) == len(roles)
        assert set(roles) <= {
            "LEGAL_REPRESENTATIVE", "PRINCIPAL", "ACTUAL_CONTROLLER", "RESPONSIBLE_PERSON"
        }  # fmt: skip
        assert related[0]["name"] == subject["legal_representative"]
        assert all(r["id_type"] == "RESIDENT_ID" for r in related)
    assert set(sizes) == {1, 2, 3}


def test_people_have_no_related_persons(entries: list[Entry]) -> None:
    for entry in entries:
        if _dict(entry["subject"])["type"] == "PERSON":
            assert entry["related_persons"] == []


def test_mix_of_subjects_and_list_types(entries: list[Entry]) -> None:
    people = len(_persons(entries)) / ROWS
    shixin = sum(e["list_type"] == "SHIXIN" for e in entries) / ROWS
    assert 0.70 < people < 0.80
    assert 0.65 < shixin < 0.75
    assert {e["list_type"] for e in entries} == {"SHIXIN", "XIANGAO"}


# -- the case -------------------------------------------------------------------


def test_every_entry_has_the_snapshot_fields(entries: list[Entry]) -> None:
    for entry in entries:
        assert set(entry) == ENTRY_FIELDS
        assert entry["circumstance"] in CIRCUMSTANCES
        assert entry["performance"] in {"全部未履行", "部分未履行"}
        assert entry["severity"] in {"一般", "较重", "严重"}
        assert entry["status"] in {"ACTIVE", "SUSPENDED"}
        assert AMOUNT.match(_str(entry["performed_part"]))
        assert AMOUNT.match(_str(entry["unperformed_part"]))
        assert _str(entry["obligation"])


def test_case_numbers_have_the_courts_form(entries: list[Entry]) -> None:
    courts = {r.case_prefix: r.court for r in learned_tables().regions}
    for entry in entries:
        case_number = _str(entry["case_number"])
        assert CASE_NUMBER.match(case_number), case_number
        assert courts[case_number[6:11]] == entry["court"]
        assert case_number[1:5] == _str(entry["filed_on"])[:4]
        basis = BASIS_DOCUMENT.match(_str(entry["basis_document"]))
        assert basis is not None, entry["basis_document"]
        assert courts[_str(entry["basis_document"])[6:11]] == entry["basis_issuer"]
        assert int(basis.group(1)) <= int(case_number[1:5])


def test_dates_are_ordered_and_recent(entries: list[Entry]) -> None:
    for entry in entries:
        filed = datetime.date.fromisoformat(_str(entry["filed_on"]))
        published = datetime.date.fromisoformat(_str(entry["published_on"]))
        valid_until = datetime.date.fromisoformat(_str(entry["valid_until"]))
        assert AS_OF - datetime.timedelta(days=7 * 365) < filed < published <= AS_OF
        assert published + datetime.timedelta(days=365) <= valid_until
        assert valid_until <= published + datetime.timedelta(days=5 * 365)


def test_some_entries_are_expired_and_some_suspended(entries: list[Entry]) -> None:
    iso = AS_OF.isoformat()
    expired = sum(_str(e["valid_until"]) < iso for e in entries) / ROWS
    suspended = sum(e["status"] == "SUSPENDED" for e in entries) / ROWS
    assert 0.06 < expired < 0.14
    assert 0.02 < suspended < 0.08


def test_some_entries_carry_exemption_windows() -> None:
    rows = list(iter_entries(20_000, 9, AS_OF))
    windows = [w for e in rows for w in _list(e["exemptions"])]
    assert 0.005 * len(rows) < len(windows) < 0.02 * len(rows)
    iso = AS_OF.isoformat()
    open_now = 0
    for e in rows:  # an organisation's names the related person allowed: never itself
        for window in _list(e["exemptions"]):
            people = _list(e["related_persons"])
            if people:
                assert window["id_number"] in {_dict(p)["id_number"] for p in people}
            else:
                assert "id_number" not in window  # a person's: its debtor
    for window in windows:
        assert set(window) - {"id_type", "id_number"} == {"channel", "from", "until"}
        assert window["channel"] in {"RAIL", "AIRLINE", "HOTEL"}
        start, end = _str(window["from"]), _str(window["until"])
        assert start <= end
        open_now += start <= iso <= end
    assert 0.3 * len(windows) < open_now < 0.7 * len(windows)


# -- the file -------------------------------------------------------------------


def test_write_snapshot_writes_count_json_lines(tmp_path: Path, entries: list[Entry]) -> None:
    path = tmp_path / "snapshot.jsonl"
    assert write_snapshot(path, ROWS, 7, AS_OF) == ROWS
    header, *lines = path.read_bytes().split(b"\n")
    assert orjson.loads(header) == {
        "snapshot": {
            "includes_seq": 0,
            "published_at": f"{AS_OF.isoformat()}T00:00:00+08:00",
            "entries": ROWS,
        }
    }
    assert lines[-1] == b""
    assert len(lines) - 1 == ROWS
    assert [orjson.loads(line) for line in lines[:-1]] == entries
    assert not (tmp_path / "snapshot.jsonl.part").exists()
    assert "\u00b7" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes


def test_progress_is_reported_every_so_many_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "_CHUNK_ROWS", 10)
    monkeypatch.setattr(writer, "_PROGRESS_ROWS", 100)
    seen: list[int] = []
    assert write_snapshot(str(tmp_path / "s.jsonl"), 250, 1, AS_OF, seen.append) == 250
    assert seen == [100, 200, 250]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_CHUNK_ROWS", 10)
    monkeypatch.setattr(writer, "_PROGRESS_ROWS", 100)

    def fail(_: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_snapshot(tmp_path / "s.jsonl", 250, 1, AS_OF, fail)
    assert list(tmp_path.iterdir()) == []


def test_zero_rows_write_only_the_header(tmp_path: Path) -> None:
    assert write_snapshot(tmp_path / "empty.jsonl", 0, 1, AS_OF) == 0
    (header,) = (tmp_path / "empty.jsonl").read_bytes().splitlines()
    assert orjson.loads(header)["snapshot"]["includes_seq"] == 0


def test_the_never_listed_id_is_valid_and_in_no_generated_list(entries: list[Entry]) -> None:
    number = never_listed_id()
    assert normalize_resident_id(number) == number
    listed = {str(e["subject"].get("id_number")) for e in entries}  # type: ignore[attr-defined]
    listed |= {str(p["id_number"]) for e in entries for p in e["related_persons"]}  # type: ignore[attr-defined]
    assert number not in listed
