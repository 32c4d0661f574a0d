"""The load's row checker in C (``loader/_rowcheck.c``) against the Python it stands in for.

``ColumnBuilder`` asks the C checker first and ``_plain`` only where it
returns None, so the C checker may decline any row but must never take one
differently. ``tests/test_loader.py`` runs the load's equivalence tests with
and without it; these hold it to ``_plain`` on generated identities, names
and codes, hold the columns it builds (keys, name keys, masks, texts) to the
columns Python builds, and check that a checkout never runs a stale build.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import ConfigurationError, InvalidInput
from shixin_check.domain.identity import (
    KEY_TAGS,
    IdType,
    mask_id,
    normalize_name,
    normalize_resident_id,
    resident_id_is_uscc,
)
from shixin_check.domain.keys import PrefilterKeyer, SubjectKeyer
from shixin_check.domain.model import Channel, Exemption
from shixin_check.loader import columns, listfile, publish_redis
from shixin_check.loader.columns import ColumnBuilder
from shixin_check.loader.listfile import parse_entry
from shixin_check.loader.versions import build_snapshot
from shixin_check.server.convert import to_query
from tests.listdata import org_entry, person_entry, rid, uscc, write_jsonl

SOURCE = Path(columns.__file__).with_name("_rowcheck.c")
DIGITS = "0123456789"
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def _compiled() -> Any:
    module = columns._rowcheck
    assert module is not None, "loader/_rowcheck.c is not built: run scripts/setup"
    return module


def _python_plain(row: dict[str, Any]) -> Any:
    """What ``_plain`` makes of ``row``, or None where it leaves it to parse_entry."""
    builder = ColumnBuilder(SubjectKeyer(b"k" * 32), 16)
    try:
        return builder._plain(row, 3)
    except (columns._NotFast, InvalidInput, TypeError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _dates_seen() -> None:
    """The rows' dates in listfile's cache, as a load's first rows put them there:
    the C checker declines a date it has not seen."""
    row = person_entry("E0", rid("11010519800101001"), "张伟")
    row["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "2026-01-31"}]
    parse_entry(row)


def test_the_row_checker_is_built_from_the_source_beside_it() -> None:
    digest = hashlib.blake2b(SOURCE.read_bytes(), digest_size=16).hexdigest()
    assert _compiled().SOURCE_DIGEST == digest


def test_a_build_older_than_its_source_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = _compiled()
    monkeypatch.setattr(columns, "__file__", str(tmp_path / "columns.py"))
    (tmp_path / "_rowcheck.c").write_bytes(SOURCE.read_bytes() + b"/* edited */\n")
    with caplog.at_level(logging.WARNING, logger=columns.__name__):
        assert columns.compiled_module() is None
    assert "changed since it was compiled" in caplog.text
    (tmp_path / "_rowcheck.c").write_bytes(SOURCE.read_bytes())
    assert columns.compiled_module() is module


def _agrees(row: dict[str, Any]) -> Any:
    """The C checker's answer for ``row``, having checked that it is None or _plain's."""
    found = _compiled().plain(row, 3)
    if found is not None:
        assert found == _python_plain(row)
    return found


birth_dates = st.dates(_dt.date(1850, 1, 1), _dt.date(2120, 12, 31)).map(
    lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}"
)
regions = st.sampled_from(["11", "31", "44", "65", "83", "91", "00", "20", "99"])
resident_ids = st.builds(
    lambda region, area, born, serial: rid(region + area + born + serial),
    regions, st.text(DIGITS, min_size=4, max_size=4), birth_dates,
    st.text(DIGITS, min_size=3, max_size=3),
)  # fmt: skip
odd_numbers = st.text("0123456789Xx -\u3000\uff10ABZ", max_size=21)
documents = st.text("0123456789ABXZxz[_", min_size=3, max_size=22)  # passports, permits
names = st.one_of(
    st.sampled_from(["张伟", "阿依古丽·买买提", "李 娜", " 王芳", "王芳\u3000", "Ｗang", "x\x1f"]),
    st.text(max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(
    number=st.one_of(resident_ids, odd_numbers, documents),
    name=names,
    id_type=st.sampled_from(["RESIDENT_ID", "PASSPORT", "TAIWAN_PERMIT", "", None, "BOGUS"]),
)
def test_a_person_row_is_taken_as_python_takes_it(
    number: str, name: str, id_type: str | None
) -> None:
    row = person_entry("E1", number, name)
    row["subject"]["id_type"] = id_type
    found = _agrees(row)
    python = _python_plain(row)
    # a row whose values need no normalising is the C checker's to take, but for a
    # document number of 10, 11, 15 or 18 characters (listfile.as_resident decides those)
    document = id_type not in ("RESIDENT_ID", "", None) and len(number) in (10, 11, 15, 18)
    if python is not None and python[1][0][3] == number and name and name == name.strip():
        assert found is not None or document


def test_a_home_return_permit_in_its_old_form_is_keyed_as_the_card() -> None:
    """A row giving a Home Return Permit in the old booklet's form (the card's nine
    characters and a renewal count) is keyed as the card, under any document type,
    where a check by either form looks; the C checker leaves it to Python."""
    for id_type in ("HK_MACAO_PERMIT", "PASSPORT", "TAIWAN_PERMIT"):
        row = person_entry("E1", "H1234567801", "陈大文")
        row["subject"]["id_type"] = id_type
        assert _compiled().plain(row, 3) is None
        kind, number = parse_entry(row).subjects()[0][2:]
        assert (kind, number) == (IdType.HK_MACAO_PERMIT, "H12345678"), id_type
        assert _python_plain(row)[1][0][2:] == (IdType.HK_MACAO_PERMIT, "H12345678")
    for other in ("H123456780", "H123456780101", "X1234567801", "HX234567801"):
        row = person_entry("E1", other, "陈大文")
        row["subject"]["id_type"] = "HK_MACAO_PERMIT"
        assert parse_entry(row).subjects()[0][3] == other


def test_a_taiwan_permit_in_its_old_form_is_keyed_as_the_card() -> None:
    """A row giving a Taiwan permit in the old booklet's form (the card's eight digits
    and an issue count) is keyed as the card, where a check by either form looks; ten
    digits under another type stay as given (two passports sharing their first eight
    digits are two people). The C checker leaves ten characters to Python."""
    for id_type in ("TAIWAN_PERMIT", "PASSPORT", "HK_MACAO_PERMIT"):
        row = person_entry("E1", "1234567801", "林志明")
        row["subject"]["id_type"] = id_type
        assert _compiled().plain(row, 3) is None
        kind, number = parse_entry(row).subjects()[0][2:]
        keyed = (IdType.TAIWAN_PERMIT, "12345678") if id_type == "TAIWAN_PERMIT" else (
            IdType[id_type], "1234567801")  # fmt: skip
        assert (kind, number) == keyed, id_type
        assert _python_plain(row)[1][0][2:] == keyed
    for other in ("123456780", "123456780101", "A234567801"):
        row = person_entry("E1", other, "林志明")
        row["subject"]["id_type"] = "TAIWAN_PERMIT"
        assert parse_entry(row).subjects()[0][3] == other


uscc_prefixes = st.text(USCC_ALPHABET, min_size=17, max_size=17)


@settings(max_examples=300, deadline=None)
@given(
    code=st.one_of(uscc_prefixes.map(uscc), uscc_prefixes.map(lambda p: p + "0"),
                   st.text(USCC_ALPHABET + "IOSVZio -", max_size=19)),
    person=st.one_of(resident_ids, odd_numbers),
    role=st.sampled_from(["LEGAL_REPRESENTATIVE", "PRINCIPAL", "DEBTOR", ""]),
)  # fmt: skip
def test_an_organisation_row_is_taken_as_python_takes_it(code: str, person: str, role: str) -> None:
    row = org_entry("E2", code, "北京艾克米科技有限公司", [(role, "王芳", person)])
    found = _agrees(row)
    python = _python_plain(row)
    if python is not None and [s[3] for s in python[1]] == [code, person]:
        assert found is not None


def test_dates_are_taken_as_python_takes_them_and_exemptions_never() -> None:
    """Every combination: dates in and out of order, unknown, empty, missing. A row
    with an exemption is always declined: its exemption names a person to find among
    the entry's subjects and key (listfile.exempted_in), which parse_entry does."""
    channels = ["RAIL", "HOTEL", "rail", "", None]
    firsts = ["2026-01-01", "2026-01-31", "2026-02-30", "", None]
    lasts = ["2026-01-31", "2026-01-01", "20260131", None]
    published = ["2024-01-15", "2026-01-31", "", None, "2024-1-15"]
    valid_until = ["2099-12-31", "2026-01-01", "1970-01-01", "", None]
    taken = 0
    for values in itertools.product(published, valid_until):
        row = person_entry("E3", rid("11010519800101001"), "张伟")
        row["published_on"], row["valid_until"] = values
        taken += _agrees(row) is not None
    assert taken > 5  # the C checker takes the good combinations, not only declines
    for values in itertools.product(channels, firsts, lasts):
        row = person_entry("E3", rid("11010519800101001"), "张伟")
        row["exemptions"] = [dict(zip(("channel", "from", "until"), values, strict=True))]
        assert _compiled().plain(row, 3) is None
        assert _python_plain(row) is None


KEYER = SubjectKeyer(b"k" * 32)
NAMES = st.one_of(
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=60),
    st.text(max_size=8),  # anything: normalised in Python, or no name at all
)
NUMBERS = st.one_of(st.text(DIGITS + "XAB", min_size=1, max_size=24), st.text(max_size=6))


def _builders() -> tuple[ColumnBuilder, ColumnBuilder]:
    """A builder with its columns in C and one with them in Python."""
    compiled = ColumnBuilder(KEYER, 16)
    assert compiled._columns is not None, "loader/_rowcheck.c is not built: run scripts/setup"
    saved, columns._rowcheck = columns._rowcheck, None
    try:
        python = ColumnBuilder(KEYER, 16)
    finally:
        columns._rowcheck = saved
    assert python._columns is None
    return compiled, python


@st.composite
def _staged_rows(draw: st.DrawFn) -> list[tuple[Any, list[Any], tuple[Any, ...]]]:
    """Rows as ``ColumnBuilder`` stages them, with any text where the columns take text:
    long entry ids and names (BLAKE2b blocks beyond the first), names that are not
    plain, numbers that are not ASCII or longer than a mask, repeated courts."""
    rows = []
    for i in range(draw(st.integers(1, 12))):
        entry_id = draw(
            st.one_of(st.text(min_size=1, max_size=8), st.text(min_size=120, max_size=300))
        )
        court = draw(st.sampled_from(["北京市海淀区人民法院", "昆山市人民法院", "X"]))
        organization = draw(st.sampled_from(["", "艾克米有限公司"]))
        text = f"{entry_id}\x1f(2024)京0108执{i}号\x1f{organization}"
        entry = (entry_id, i + 2, draw(st.integers(0, 3)), draw(st.integers(0, 3)),
                 draw(st.integers(0, 30000)), draw(st.integers(0, 2**31 - 1)), court, text)  # fmt: skip
        subjects = [
            (draw(st.integers(0, 4)), draw(NAMES), draw(st.sampled_from(list(KEY_TAGS))), draw(NUMBERS))
            for _ in range(draw(st.integers(0, 3)))
        ]  # fmt: skip
        exemptions = draw(st.sampled_from([(), (Exemption(Channel.RAIL, 20000, 20030),)]))
        rows.append((entry, subjects, exemptions))
    return rows


@settings(max_examples=300, deadline=None)
@given(_staged_rows())
def test_columns_in_c_are_the_columns_python_builds(rows: list[Any]) -> None:
    """Every column byte for byte, the courts and the exemptions: entry id hashes,
    subject keys, name keys (plain names hashed in C, the others normalised in
    Python), masks (in C where the number is ASCII and fits, else mask_id), texts."""
    compiled, python = _builders()
    for entry, subjects, exemptions in rows:
        compiled._store(entry, subjects, exemptions)
        python._store(entry, subjects, exemptions)
    assert compiled._columns is not None and compiled._columns.entries == len(rows)
    c_raw, p_raw = compiled._raw(), python._raw()
    assert c_raw[0].keys() == p_raw[0].keys()
    for name, column in p_raw[0].items():
        assert c_raw[0][name] == bytes(column), name
    assert c_raw[1:] == p_raw[1:]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(list(KEY_TAGS)), st.text(max_size=300), NAMES)
def test_keys_made_in_c_are_the_keyers(kind: Any, number: str, name: str) -> None:
    """Numbers and names of any length (BLAKE2b blocks beyond the first): the server's
    keyer where the extension is built makes the keys SubjectKeyer makes."""
    keyer = columns.keyer_for(b"k" * 32)
    assert isinstance(keyer, columns.CompiledKeyer), "loader/_rowcheck.c is not built"
    assert keyer.subject_key(kind, number) == KEYER.subject_key(kind, number)
    normal = normalize_name(name)
    assert keyer.name_key(normal) == KEYER.name_key(normal)
    assert keyer.fingerprint == KEYER.fingerprint


@pytest.mark.parametrize("length", [16, 64])
def test_keys_made_in_c_with_the_shortest_and_longest_secrets(length: int) -> None:
    """BLAKE2b's key is 16 to 64 bytes here (shorter or longer is refused): at both
    ends the C keyer and SubjectKeyer make the same keys."""
    secret = bytes(range(length))
    keyer, python = columns.keyer_for(secret), SubjectKeyer(secret)
    assert isinstance(keyer, columns.CompiledKeyer), "loader/_rowcheck.c is not built"
    for kind in KEY_TAGS:
        assert keyer.subject_key(kind, "123456") == python.subject_key(kind, "123456")
    assert keyer.name_key("张三") == python.name_key("张三")


@pytest.mark.parametrize("length", [15, 65])
def test_a_secret_blake2b_cannot_key_with_is_a_configuration_error(length: int) -> None:
    with pytest.raises(ConfigurationError, match=f"16 to 64 bytes, got {length}"):
        SubjectKeyer(b"k" * length)
    with pytest.raises(
        ConfigurationError, match=f"prefilter key must be 16 to 64 bytes, got {length}"
    ):
        PrefilterKeyer(b"k" * length)


def test_a_build_that_keys_otherwise_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys the checks cannot find would answer a listed subject as unlisted: a C
    keyer whose keys differ from SubjectKeyer's is neither served nor loaded with."""
    monkeypatch.setattr(columns, "SUBJECT_PERSON", b"shixin-other")
    with pytest.raises(columns.CompiledKeysDiffer, match="numbers"):
        columns.keyer_for(b"k" * 32)
    with pytest.raises(columns.CompiledKeysDiffer, match="numbers"):
        ColumnBuilder(KEYER, 16)
    monkeypatch.undo()
    monkeypatch.setattr(columns, "NAME_PERSON", b"shixin-other")
    with pytest.raises(columns.CompiledKeysDiffer, match="names"):
        columns.keyer_for(b"k" * 32)
    with pytest.raises(columns.CompiledKeysDiffer, match="names"):
        ColumnBuilder(KEYER, 16)


def test_a_row_that_fails_to_store_leaves_every_column_as_it_was() -> None:
    compiled, python = _builders()
    good = (("E1", 2, 0, 0, 19000, 20000, "法院", "E1\x1fC\x1f"), [(0, "张伟", None, "91110000100000000A")], ())  # fmt: skip
    bad_subjects = [(0, "张伟", None, "91110000100000000A"), (0, "王芳", "NO SUCH KIND", "X12345")]
    for builder in (compiled, python):
        builder._store(*good)
    with pytest.raises(KeyError):
        compiled._store(("E2", 3, 0, 0, 19000, 20000, "新法院", "E2\x1fC\x1f"), bad_subjects, ())
    with pytest.raises(OverflowError):
        compiled._store(("E3", 2**40, 0, 0, 19000, 20000, "法院", "E3\x1fC\x1f"), [], ())
    for builder in (compiled, python):
        builder._store(("E4", 5, 1, 1, 19000, 20000, "法院", "E4\x1fC\x1f"), good[1], ())
    c_raw, p_raw = compiled._raw(), python._raw()
    assert {k: bytes(v) for k, v in p_raw[0].items()} == c_raw[0]
    assert c_raw[1] == p_raw[1] == {"法院": 0}  # the failed row's new court went with it
    with pytest.raises(RuntimeError, match="already"):
        compiled._columns.take({}, 1)  # type: ignore[union-attr]


def test_callbacks_cannot_reenter_the_columns_they_are_called_from() -> None:
    """A mask or name-key callback that touched the columns mid-row would write into
    a buffer it had just moved; it is refused, and the row is not stored."""
    assert columns._rowcheck is not None, "loader/_rowcheck.c is not built: run scripts/setup"
    keyer = columns.keyer_for(b"k" * 32)
    assert isinstance(keyer, columns.CompiledKeyer)
    made: list[Any] = []

    def mask(number: str) -> str:
        made[0].columns()
        return number

    made.append(columns._rowcheck.Columns(keyer=keyer.compiled, name_key=lambda n: bytes(8), mask=mask, width=20))  # fmt: skip
    row = (("E1", 2, 0, 0, 19000, 20000, "法院", "E1\x1fC\x1f"), [(0, "张伟", None, "名字 不是 ASCII")], ())  # fmt: skip
    with pytest.raises(RuntimeError, match="while it stores a row"):
        made[0].put(*row)
    assert made[0].entries == 0
    raw, courts, _ = made[0].columns()
    assert all(not column for column in raw.values()) and courts == {}


def test_unready_and_odd_keyers_are_refused() -> None:
    module = _compiled()
    with pytest.raises(RuntimeError, match="not initialised"):
        module.Columns.__new__(module.Columns).columns()
    with pytest.raises(RuntimeError, match="not initialised"):
        module.Keyer.__new__(module.Keyer).name_key("张伟")
    person = {"secret": b"k" * 32, "subject_person": b"p", "name_person": b"n"}
    with pytest.raises(TypeError, match="not empty"):
        module.Keyer(tags={None: b""}, **person)  # an empty message would be the key block
    tags = dict(KEY_TAGS)
    keyer = module.Keyer(tags=tags, **person)
    before = keyer.subject_key(None, "91110000100000000A")
    tags.clear()  # the keyer keeps its own copy
    assert keyer.subject_key(None, "91110000100000000A") == before


def test_a_builder_that_stopped_keeping_still_checks_rows() -> None:
    builder = _builders()[0]
    row = person_entry("E7", rid("11010519800101001"), "张伟")
    builder.keeping = False
    assert builder.take(row, 2) is True
    assert builder.add({**row, "list_type": "BOGUS"}, 3) is not None
    assert builder._columns is not None and builder._columns.entries == 0
    assert builder.fast_rows == 1


def test_rows_that_are_not_plain_objects_are_declined() -> None:
    row = person_entry("E4", rid("11010519800101001"), "张伟")
    assert _agrees(row) is not None
    for odd in ([row], "row", None, {**row, "subject": [row["subject"]]}, {**row, "court": 7}):
        assert _compiled().plain(odd, 3) is None


def test_no_reference_is_leaked_or_lost() -> None:
    """1,000 calls, taken and declined, leave every object's reference count as it was:
    a leak would grow it (memory never freed), a lost reference shrink it (a crash later)."""
    module = _compiled()
    taken = org_entry("E5", uscc("91110105MA0000001"), "艾克米", [("PRINCIPAL", "王芳", rid("44030519900909003"))])  # fmt: skip
    declined = {**taken, "court": " 法院 "}  # declined after most of the row was read
    exempting = {**taken, "exemptions": [{"channel": "RAIL", "from": "2026-01-01",
                                          "until": "2026-01-31"}]}  # fmt: skip
    assert module.plain(taken, 3) is not None
    assert module.plain(declined, 3) is None
    assert module.plain(exempting, 3) is None
    watched = [
        taken["entry_id"], taken["court"], taken["case_number"], taken["subject"]["name"],
        taken["subject"]["uscc"], taken["related_persons"][0]["id_number"],
        taken["related_persons"][0]["name"], taken["published_on"], columns._DAYS["2026-01-01"],
        columns._ACTIVE, columns._DEBTOR, columns.NO_END, 3,
    ]  # fmt: skip
    staged = module.plain(taken, 3)
    made = _builders()[0]._columns
    # stored rows keep their exemptions: the rows stored here have none (put's share one)
    stored = {**taken, "exemptions": []}
    assert made is not None and made.take(stored, 3)  # the court now a key of its courts
    watched += [staged[0][7], taken["related_persons"][0]["id_number"]]
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(1000):
        module.plain(taken, 3)
        module.plain(declined, 3)
        module.plain(exempting, 3)
        made.take(stored, 3)
        made.take(declined, 3)
        made.put(*staged)
    assert [sys.getrefcount(o) for o in watched] == before
    assert made.entries == 2001


def test_a_value_whose_truth_test_fails_is_left_to_parse_entry() -> None:
    """Not from orjson, but a row another reader made could hold one: the C checker's
    error means "not sure", as ``_plain``'s TypeError does, and parse_entry words it."""

    class NoTruth:
        def __bool__(self) -> bool:
            raise TypeError("no truth value")

    row = person_entry("E6", rid("11010519800101001"), "张伟")
    row["subject"]["type"], row["related_persons"] = "BOGUS", NoTruth()
    error = ColumnBuilder(SubjectKeyer(b"k" * 32), 16).add(row, 9)
    assert error is not None
    assert (error.line, error.field) == (9, "subject.type")


def _with_text(field: str, value: str) -> dict[str, Any]:
    row = org_entry("E9", uscc("91110105MA01ABCDE"), "北京艾克米科技有限公司",
                    [("LEGAL_REPRESENTATIVE", "王芳", rid("11010519800101002"))])  # fmt: skip
    if field == "organization":
        row["subject"]["name"] = value
    elif field == "related":
        row["related_persons"][0]["name"] = value
    else:
        row[field] = value
    return row


@pytest.mark.parametrize("field", ["entry_id", "case_number", "court", "organization", "related"])
@pytest.mark.parametrize("control", ["\x1f", "\t", "\x00", "\x7f", "\x85"])
def test_a_control_character_inside_a_text_is_a_row_error(field: str, control: str) -> None:
    """A case number with \\x1f inside split the index's text column (entry_id \\x1f
    case_number \\x1f organisation) in the wrong place, so hits and the feedback report
    named a wrong case and organisation. Now every text field refuses a control
    character inside it, in C, in _plain and in parse_entry alike; white space at
    either end is still stripped, as before."""
    row = _with_text(field, f"甲{control}乙")
    assert _compiled().plain(row, 3) is None  # not taken in C: Python decides
    for builder in _builders():
        error = builder.add(row, 7)
        assert error is not None and error.line == 7, (field, error)
        assert error.problem == (
            f"must not contain control characters (U+{ord(control):04X} at character 2)"
        ), error
        assert error.field.endswith({"organization": "name", "related": "name"}.get(field, field))
    for builder in _builders():  # at the ends: white space, stripped as before
        assert builder.add(_with_text(field, "\t甲乙\n"), 8) is None


def test_subject_fields_in_c_are_the_ones_python_writes(tmp_path: Path) -> None:
    """``load --redis`` writes each subject bucket's fields (key to the JSON of its
    matches) from C where built: byte for byte what the Python path writes, for texts
    orjson must escape (quotes, backslashes) or pass through (CJK, emoji), several
    matches for one key, related persons (their organisation named), exemptions, and
    runs of keys that end inside a bucket."""
    rows: list[dict[str, Any]] = []
    odd = ['法院"引号"', "back\\slash", "é€😀 x", "(2024)京0105执1001号"]
    for n in range(60):
        text = odd[n % len(odd)]
        row = org_entry(f"E{n}", uscc(f"9111010{n:02d}MA01ABCD"), f"{text} 公司{n}",
                        [("LEGAL_REPRESENTATIVE", "王芳", rid(f"440305199009{n % 7 + 1:02d}003"))],
                        case_number=f"{text}{n}")  # fmt: skip
        row["court"] = odd[(n + 1) % len(odd)]
        if n % 5 == 0:  # the legal representative's own: on that person's match only
            row["exemptions"] = [
                {
                    "channel": "RAIL",
                    "from": "2026-01-01",
                    "until": "2026-01-31",
                    "id_number": rid(f"440305199009{n % 7 + 1:02d}003"),
                }
            ]
        rows.append(row)
        rows.append(person_entry(f"P{n}", rid(f"310104197505{n % 9 + 1:02d}002"), f"李{text}",
                                 case_number=text))  # fmt: skip
    view = build_snapshot(write_jsonl(tmp_path / "odd.jsonl", rows), KEYER, workers=1)
    base = view.base
    table = publish_redis._columns(base, 4)
    share = publish_redis._Share(0, len(table.k_hi), 0, 16)
    written = list(publish_redis._python_fields(base, table, 3, share))
    assert any(b'\\"' in v and b"\\\\" in v for _, f in written for v in f.values())
    assert any(len(orjson.loads(v)) > 1 for _, f in written for v in f.values())
    for bits in (0, 3, 9):
        for run in (1, 7, publish_redis._RUN):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(publish_redis, "_RUN", run)
                in_c = list(publish_redis._compiled_fields(base, table, bits, share))
                in_python = list(publish_redis._python_fields(base, table, bits, share))
            assert in_c == in_python, (bits, run)


def test_subject_fields_refuses_columns_too_short_for_its_range() -> None:
    """A wrong call is a ValueError, never a read beyond a buffer."""
    empty = b""
    args = [0, 1, 0, empty, empty, empty, empty, empty, empty, 18, empty, bytes(8),
            empty, empty, empty, empty, empty, [], {}, 1]  # fmt: skip
    with pytest.raises(ValueError, match="k_hi"):
        _compiled().subject_fields(*args)


_CHECK_CHARS = "0123456789X"
#: resident IDs one step from canonical: the wrong check character, a lower-case x,
#: an impossible birth date or region (with a check character that fits them)
near_ids = st.one_of(
    resident_ids.map(lambda n: n[:17] + _CHECK_CHARS[(_CHECK_CHARS.index(n[17]) + 1) % 11]),
    resident_ids.filter(lambda n: n.endswith("X")).map(str.lower),
    resident_ids.map(lambda n: rid(n[:10] + "13" + n[12:17])),
    resident_ids.map(lambda n: rid("00" + n[2:17])),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(resident_ids, near_ids, odd_numbers, documents, st.text(max_size=20)))
def test_resident_key_is_the_key_of_what_normalising_leaves_unchanged(number: str) -> None:
    """The checks' fast path (server.convert.to_query): the C keyer keys a canonical
    resident ID at once, and answers None for everything normalize_resident_id would
    change or refuse, which to_query then normalises as before."""
    keyer = columns.keyer_for(b"k" * 32)
    assert isinstance(keyer, columns.CompiledKeyer), "loader/_rowcheck.c is not built"
    found = keyer.resident_key(number)
    try:
        normal: str | None = normalize_resident_id(number)
    except InvalidInput:
        normal = None
    if normal == number and not resident_id_is_uscc(number):
        assert found == KEYER.subject_key(IdType.RESIDENT_ID, number)
    else:  # to normalise, or a USCC too: to_query's Python path adds the USCC's key
        assert found is None
    assert SubjectKeyer(b"k" * 32).resident_key(number) is None  # Python: normalise first


@settings(max_examples=300, deadline=None)
@given(
    number=st.one_of(resident_ids, near_ids, odd_numbers, documents),
    id_type=st.sampled_from(list(pb.IdType.values())),
)
def test_to_query_with_the_c_keyer_is_to_query_with_the_python_one(
    number: str, id_type: int
) -> None:
    request = pb.CheckRequest(
        channel=pb.RAIL, rail=pb.RailPurchase(train_number="G1234", seat=pb.RAIL_SEAT_SECOND_CLASS),
        person=pb.PersonSubject(id_number=number, name="张三", id_type=id_type),
    )  # fmt: skip
    compiled, python = columns.keyer_for(b"k" * 32), SubjectKeyer(b"k" * 32)
    try:
        expected = to_query(request, python)
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as refused:
            to_query(request, compiled)
        assert (refused.value.field, refused.value.problem) == (exc.field, exc.problem)
    else:
        assert to_query(request, compiled) == expected


@pytest.mark.parametrize("field", ["entry_id", "case_number", "court", "organization", "related"])
def test_a_text_of_white_space_only_is_missing(field: str) -> None:
    """ "   " was taken as a name, a court or a case number; it is as good as missing."""
    row = _with_text(field, " \u3000\t ")
    assert _compiled().plain(row, 3) is None
    for builder in _builders():
        error = builder.add(row, 5)
        assert error is not None and error.problem.startswith("is required"), (field, error)


def _fields_args(courts: list[bytes], exemptions: dict[Any, bytes]) -> list[Any]:
    """subject_fields' arguments for one key of one entry (bucket bits 0)."""
    key, text = (1).to_bytes(8, "big") + bytes(8), b"E1\x1fcase1\x1fname1"
    return [
        0, 1, 0, (1).to_bytes(8, "little"), key, bytes(4), bytes(1), (7).to_bytes(8, "little"),
        b"ab  ", 4, text, bytes(8) + len(text).to_bytes(8, "little"), b"\x01",
        b"\x02", bytes(4), bytes(4), bytes(4), courts, exemptions, 1,
    ]  # fmt: skip


def test_subject_fields_holds_its_own_courts_while_python_code_runs() -> None:
    """An exemption key's __eq__ (Python code run during the call) that empties and
    refills the courts list: the C kept a pointer into the list's items, read freed
    memory (a crash under PYTHONMALLOC=malloc_debug). It reads the courts it was given."""
    courts = [orjson.dumps("court-1")]

    class Meddler:
        def __hash__(self) -> int:
            return 0  # row 0's hash: the look-up compares

        def __eq__(self, other: object) -> bool:
            courts.clear()
            courts.extend([b"x"] * 100_000)
            return False

    [(bucket, fields)] = _compiled().subject_fields(*_fields_args(courts, {Meddler(): b"[]"}))
    assert bucket == 0
    [value] = fields.values()
    assert orjson.loads(value)[0][6] == "court-1"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.text(DIGITS + "XAB", max_size=24), st.text(max_size=6)), max_size=12))
def test_masked_json_in_c_is_what_python_writes(numbers: list[str]) -> None:
    """A batch's audit subjects: the C array byte for byte orjson's of ``mask_id``, or
    None (Python's turn) for a number that is not ASCII letters and digits."""
    found = _compiled().masked_json(numbers)
    if all(n.isascii() and (n.isalnum() or not n) for n in numbers):
        assert found == orjson.dumps([mask_id(n) for n in numbers])
    else:
        assert found is None


def test_a_row_published_days_after_today_is_left_to_python_which_refuses_it() -> None:
    """The C checker compares day numbers: a published_on more than a day after today
    (China time) is never taken, whatever the date tables hold; parse_entry refuses it
    naming the field. Tomorrow is taken (a host whose clock is behind the feed's)."""
    today = _dt.datetime.now(_dt.timezone(_dt.timedelta(hours=8))).date()
    for ahead in (2, 3, 30_000):
        day = (today + _dt.timedelta(days=ahead)).isoformat()
        listfile._date({"d": day}, "d")  # in the date tables, as a load's earlier row puts it
        row = person_entry("E4", rid("11010519800101001"), "张伟", published_on=day)
        assert _compiled().plain(row, 3) is None
        assert _python_plain(row) is None
        with pytest.raises(InvalidInput) as refused:
            parse_entry(row)
        assert refused.value.field == "published_on"
    for ahead in (0, 1):  # today and tomorrow are taken
        day = (today + _dt.timedelta(days=ahead)).isoformat()
        row = person_entry("E4", rid("11010519800101001"), "张伟", published_on=day)
        listfile._date({"d": day}, "d")
        assert _agrees(row) is not None


def test_valid_until_day_zero_is_no_end_in_c_and_python() -> None:
    """1970-01-01 is what exports write for an empty date: no end, never expired."""
    listfile._date({"d": "1970-01-01"}, "d")
    row = person_entry("E5", rid("11010519800101001"), "张伟", valid_until="1970-01-01")
    for published in ("2020-01-01", None):
        row["published_on"] = published
        for field in ("published_on", "filed_on"):  # in the date tables, as a load puts them
            listfile._date(row, field)
        taken = _agrees(row)
        assert taken is not None and taken[0][5] == columns.NO_END


def test_a_uscc_under_a_document_type_is_keyed_as_the_organisation() -> None:
    code = uscc("92110105MA0000007")
    row = person_entry("E6", code, "张三烧烤店")
    row["subject"]["id_type"] = "PASSPORT"
    assert _compiled().plain(row, 3) is None  # left to Python (listfile.as_resident)
    python = _python_plain(row)
    assert python is not None and python[1][0][2:] == (None, code)
    assert parse_entry(row).debtor.id_type is None
