"""Identity normalisation: resident IDs, USCCs, documents, names, masking.

Valid numbers are never written out whole: every resident ID and USCC is built
from its first 17 characters with the check character computed by the code
under test's own ``resident_id_check_char`` / ``uscc_check_char``, whose
correctness is pinned separately by the GB 11643 and GB 32100 examples below
(weighted sums worked by hand in the test).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.identity import (
    IdType,
    mask_id,
    normalize_document,
    normalize_name,
    normalize_person_id,
    normalize_resident_id,
    normalize_uscc,
    other_reading,
    other_readings,
    reads_as_resident_id,
    reads_as_uscc,
    resident_id_check_char,
    uscc_check_char,
)
from shixin_check.domain.keys import SubjectKeyer

FIELD = "subject.person.id_number"

# County-level region codes (GB/T 2260) used to build test IDs.
REGIONS = ("110105", "310104", "440305", "510107", "650102")

FULL_WIDTH = str.maketrans("0123456789Xx", "０１２３４５６７８９Ｘｘ")


def make_id(first17: str) -> str:
    """An 18-character resident ID: ``first17`` and its computed check character."""
    assert len(first17) == 17 and first17.isdigit()
    return first17 + resident_id_check_char(first17)


def id_prefix(region: str = "110105", born: str = "19900101", seq: str = "123") -> str:
    """The first 17 digits of a resident ID: region, birth date, sequence."""
    return region + born + seq


def make_uscc(first17: str) -> str:
    """An 18-character USCC: ``first17`` and its computed check character."""
    return first17 + uscc_check_char(first17)


def wrong_check_chars(number: str) -> list[str]:
    """``number`` with each possible wrong resident-ID check character."""
    return [number[:17] + c for c in "0123456789X" if c != number[17]]


# --- check characters against the standards' arithmetic -------------------------


def test_resident_id_check_char_follows_gb11643() -> None:
    """Weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, sum mod 11 into 1 0 X 9 8 7 6 5 4 3 2."""
    first17 = "11010519491231002"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(first17, weights, strict=True))
    assert total % 11 == 2
    assert resident_id_check_char(first17) == "X"
    assert resident_id_check_char("00000000000000000") == "1"  # sum 0


def test_uscc_check_char_follows_gb32100() -> None:
    """Check = 31 - (weighted sum mod 31), the value 31 written as 0."""
    assert uscc_check_char("0" * 17) == "0"
    # '1' at the first position weighs 1: 31 - 1 = 30, the last letter 'Y'.
    assert uscc_check_char("1" + "0" * 16) == "Y"
    # 'A' (value 10) at the second position weighs 3: 31 - 30 = 1.
    assert uscc_check_char("0A" + "0" * 15) == "1"
    # '1' at the last position weighs 28: 31 - 28 = 3.
    assert uscc_check_char("0" * 16 + "1") == "3"
    # 9,1,1,1,0,1,1,9,8,0,0,1,0,1,0,2,4 weighted: 612 = 19 * 31 + 23, and 31 - 23 = 8.
    assert uscc_check_char("91110119800101024") == "8"


#: GB 32100's weights, 3**i mod 31
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


@given(st.from_regex(r"[0-9]{17}", fullmatch=True))
def test_uscc_check_char_of_digits_is_the_weighted_sum(first17: str) -> None:
    """All digits take a shortcut (base 34, in C): it must agree with the standard's sum."""
    total = sum(int(c) * w for c, w in zip(first17, USCC_WEIGHTS, strict=True))
    assert uscc_check_char(first17) == "0123456789ABCDEFGHJKLMNPQRTUWXY"[-total % 31]


# --- resident IDs -------------------------------------------------------------


def test_canonical_resident_id_is_returned_unchanged() -> None:
    number = make_id(id_prefix())
    assert normalize_resident_id(number, FIELD) == number


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda n: f"  {n}  ", id="padded"),
        pytest.param(lambda n: f"{n[:6]} {n[6:14]} {n[14:]}", id="inner-spaces"),
        pytest.param(lambda n: f"{n[:6]}\u3000{n[6:]}\u3000", id="ideographic-space"),
        pytest.param(lambda n: f"\t{n}\n", id="tab-newline"),
        pytest.param(lambda n: f"{n[:9]}\u200b{n[9:]}", id="zero-width-space"),
        pytest.param(lambda n: n.translate(FULL_WIDTH), id="full-width-digits"),
        pytest.param(lambda n: " ".join(n.translate(FULL_WIDTH)), id="full-width-spaced"),
    ],
)
def test_resident_id_spellings_normalise(spell: object) -> None:
    number = make_id(id_prefix())
    assert normalize_resident_id(spell(number), FIELD) == number  # type: ignore[operator]


def test_lowercase_x_check_char_is_upper_cased() -> None:
    first17 = next(
        id_prefix(born=f"1985{m:02d}{d:02d}")
        for m in range(1, 13)
        for d in range(1, 29)
        if resident_id_check_char(id_prefix(born=f"1985{m:02d}{d:02d}")) == "X"
    )
    number = make_id(first17)
    assert number.endswith("X")
    assert normalize_resident_id(number[:17] + "x", FIELD) == number
    assert normalize_resident_id(number[:17] + "ｘ", FIELD) == number  # full-width x


def test_fifteen_digit_id_becomes_eighteen_with_computed_check_digit() -> None:
    region, born, seq = "310104", "19750815", "456"
    old = region + born[2:] + seq
    assert len(old) == 15
    assert normalize_resident_id(old, FIELD) == make_id(region + born + seq)
    assert normalize_resident_id(" " + old.translate(FULL_WIDTH), FIELD) == make_id(
        region + born + seq
    )


def test_fifteen_digit_id_with_impossible_date_is_rejected() -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id("110105" + "750230" + "456", FIELD)
    assert err.value.field == FIELD
    assert "birth date" in err.value.problem


def test_wrong_check_digit_is_rejected() -> None:
    for bad in wrong_check_chars(make_id(id_prefix())):
        with pytest.raises(InvalidInput) as err:
            normalize_resident_id(bad, FIELD)
        assert err.value.field == FIELD
        assert "check digit" in err.value.problem


@pytest.mark.parametrize(
    ("first17", "problem"),
    [
        pytest.param(id_prefix(region="000000"), "region code", id="region-00"),
        pytest.param(id_prefix(region="990101"), "region code", id="region-99"),
        pytest.param(id_prefix(region="101010"), "region code", id="region-10"),
        pytest.param(id_prefix(born="19900230"), "birth date", id="feb-30"),
        pytest.param(id_prefix(born="19901301"), "birth date", id="month-13"),
        pytest.param(id_prefix(born="19900100"), "birth date", id="day-00"),
        pytest.param(id_prefix(born="18700101"), "birth date", id="before-1880"),
        pytest.param(id_prefix(born="19000229"), "birth date", id="1900-not-leap"),
    ],
)
def test_resident_id_with_valid_check_but_bad_content_is_rejected(
    first17: str, problem: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id(make_id(first17), FIELD)
    assert err.value.field == FIELD
    assert problem in err.value.problem
    assert str(err.value).startswith(FIELD + ": ")


def test_leap_day_birth_date_is_accepted() -> None:
    number = make_id(id_prefix(born="20000229"))
    assert normalize_resident_id(number, FIELD) == number


def test_a_resident_id_with_hyphens_is_read_as_documents_are() -> None:
    number = id_prefix() + resident_id_check_char(id_prefix())
    hyphenated = f"{number[:6]}-{number[6:14]}-{number[14:]}"
    assert normalize_resident_id(hyphenated, FIELD) == number


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        pytest.param(
            "E82067303", "with letters: a passport or permit number? set id_type", id="passport"
        ),  # fmt: skip
        pytest.param(
            "91110108MA01ABCD7" + uscc_check_char("91110108MA01ABCD7"),
            "a unified social credit code: an organisation's, send organization.uscc",
            id="uscc",
        ),  # fmt: skip
    ],
)
def test_a_number_that_is_plainly_something_else_says_what(raw: str, hint: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id(raw, FIELD)
    assert err.value.problem.startswith("is not a resident ID: expected 18 characters")
    assert err.value.problem.endswith(hint), err.value.problem


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param(" \u3000 ", "is empty", id="only-spaces"),
        pytest.param(id_prefix(), "got 17 characters", id="17-digits"),
        pytest.param(id_prefix() + "12", "got 19 characters", id="19-digits"),
        pytest.param(id_prefix()[:16], "got 16 characters", id="16-digits"),
        pytest.param(id_prefix()[:14], "got 14 characters", id="14-digits"),
        pytest.param(id_prefix()[:16] + "X1", "got 18 characters", id="x-not-last"),
        pytest.param("ABCDEFGHIJKLMNOPQR", "not a resident ID", id="letters"),
    ],
)
def test_resident_id_of_wrong_shape_is_rejected(raw: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id(raw, FIELD)
    assert err.value.field == FIELD
    assert problem in err.value.problem


def test_field_defaults_to_id_number() -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id("")
    assert err.value.field == "id_number"


# --- USCC ---------------------------------------------------------------------

USCC_FIELD = "subject.organization.uscc"
USCC_PREFIXES = ("91110108MA01ABCD7", "12100000400000123", "93440300MA5FHJ8K2", "Y1310104MA1FR9X0P")


@pytest.mark.parametrize("first17", USCC_PREFIXES)
def test_valid_uscc_normalises_to_itself(first17: str) -> None:
    code = make_uscc(first17)
    assert normalize_uscc(code, USCC_FIELD) == code
    assert normalize_uscc(f" {code.lower()}\u3000", USCC_FIELD) == code


def test_full_width_uscc_normalises() -> None:
    code = make_uscc(USCC_PREFIXES[0])
    wide = "".join(chr(ord(c) + 0xFEE0) for c in code)
    assert normalize_uscc(wide, USCC_FIELD) == code


def test_uscc_with_wrong_check_char_is_rejected() -> None:
    code = make_uscc(USCC_PREFIXES[0])
    for c in "0123456789ABCDEFGHJKLMNPQRTUWXY":
        if c == code[17]:
            continue
        with pytest.raises(InvalidInput) as err:
            normalize_uscc(code[:17] + c, USCC_FIELD)
        assert err.value.field == USCC_FIELD
        assert "check character" in err.value.problem


@pytest.mark.parametrize("letter", ["I", "O", "S", "V", "Z"])
@pytest.mark.parametrize("position", [0, 10, 17], ids=["first", "org-code", "check"])
def test_uscc_with_letters_outside_the_alphabet_is_rejected(letter: str, position: int) -> None:
    code = make_uscc(USCC_PREFIXES[0])
    bad = code[:position] + letter + code[position + 1 :]
    with pytest.raises(InvalidInput) as err:
        normalize_uscc(bad, USCC_FIELD)
    assert err.value.field == USCC_FIELD
    assert "alphabet" in err.value.problem


def test_uscc_with_letter_in_region_digits_is_rejected() -> None:
    code = make_uscc(USCC_PREFIXES[0])
    with pytest.raises(InvalidInput) as err:
        normalize_uscc(code[:3] + "A" + code[4:], USCC_FIELD)
    assert err.value.field == USCC_FIELD


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param("\u3000", "is empty", id="only-space"),
        pytest.param(USCC_PREFIXES[0], "got 17", id="17"),
        pytest.param(make_uscc(USCC_PREFIXES[0]) + "0", "got 19", id="19"),
    ],
)
def test_uscc_of_wrong_length_is_rejected(raw: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_uscc(raw, USCC_FIELD)
    assert err.value.field == USCC_FIELD
    assert problem in err.value.problem


# --- passports and permits ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("E12345678", "E12345678", id="canonical"),
        pytest.param("e1234 5678", "E12345678", id="lower-spaced"),
        pytest.param("Ｅ１２３４５６７８", "E12345678", id="full-width"),
        pytest.param("H-1234567-8", "H12345678", id="hyphens"),
        pytest.param("\u3000c12345678\u3000", "C12345678", id="ideographic-space"),
        pytest.param("12345", "12345", id="shortest"),
        pytest.param("A" * 20, "A" * 20, id="longest"),
    ],
)
def test_document_numbers_normalise(raw: str, expected: str) -> None:
    assert normalize_document(raw, FIELD) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param(" - ", "is empty", id="only-separators"),
        pytest.param("E123", "5 to 20", id="too-short"),
        pytest.param("E" * 21, "5 to 20", id="too-long"),
        pytest.param("E1234/567", "5 to 20", id="slash"),
        pytest.param("护照12345", "5 to 20", id="han"),
    ],
)
def test_bad_document_numbers_are_rejected(raw: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_document(raw, FIELD)
    assert err.value.field == FIELD
    assert problem in err.value.problem


def test_person_id_dispatches_on_id_type() -> None:
    number = make_id(id_prefix())
    assert normalize_person_id(IdType.RESIDENT_ID, " " + number.lower(), FIELD) == number
    for id_type in (
        IdType.PASSPORT,
        IdType.HK_MACAO_PERMIT,
        IdType.TAIWAN_PERMIT,
        IdType.FOREIGN_PERMANENT_RESIDENT,
    ):
        assert normalize_person_id(id_type, "h 1234 5678", FIELD) == "H12345678"
    # A passport number is not held to the resident-ID check digit.
    bad = wrong_check_chars(number)[0]
    assert normalize_person_id(IdType.PASSPORT, bad, FIELD) == bad
    with pytest.raises(InvalidInput):
        normalize_person_id(IdType.RESIDENT_ID, bad, FIELD)


# --- a number under the wrong id type -------------------------------------------

DOCUMENT_TYPES = (
    IdType.PASSPORT,
    IdType.HK_MACAO_PERMIT,
    IdType.TAIWAN_PERMIT,
    IdType.FOREIGN_PERMANENT_RESIDENT,
)


@pytest.mark.parametrize("id_type", DOCUMENT_TYPES)
def test_a_resident_id_under_a_document_type_also_reads_as_a_resident_id(id_type: IdType) -> None:
    number = make_id(id_prefix())
    sent = normalize_person_id(id_type, " " + number.lower(), FIELD)  # as a clerk would type it
    assert sent == number
    assert other_reading(id_type, sent) == (IdType.RESIDENT_ID, number)


@pytest.mark.parametrize("id_type", DOCUMENT_TYPES)
def test_a_uscc_under_a_document_type_also_reads_as_an_organisation(id_type: IdType) -> None:
    code = make_uscc("91110105MA0000001")
    assert other_reading(id_type, normalize_person_id(id_type, code, FIELD)) == (None, code)


@pytest.mark.parametrize("id_type", DOCUMENT_TYPES)
def test_a_first_generation_card_under_a_document_type_reads_as_its_resident_id(
    id_type: IdType,
) -> None:
    full = make_id(id_prefix(born="19800101"))
    card = full[:6] + full[8:17]  # the 15 digits it replaced: no century, no check digit
    assert other_reading(id_type, normalize_person_id(id_type, card, FIELD)) == (
        IdType.RESIDENT_ID, full
    )  # fmt: skip
    assert normalize_resident_id(card, FIELD) == full  # the same number a resident ID check keys
    assert other_reading(id_type, "990105800101001") is None  # no region 99
    assert other_reading(id_type, card[:6] + "801301" + card[12:]) is None  # no month 13
    assert other_reading(id_type, "E" + card[1:]) is None  # not all digits


@pytest.mark.parametrize(
    "number",
    [
        "E12345678",  # a Chinese passport
        "H12345678",  # a home-return permit
        "ABCDEFGHJK12345678",  # 18 characters, but neither a resident ID nor a USCC
    ],
)
def test_ordinary_document_numbers_have_no_other_reading(number: str) -> None:
    assert other_reading(IdType.PASSPORT, number) is None


def test_an_eighteen_digit_number_must_pass_gb11643_whole_to_read_as_a_resident_id() -> None:
    good = make_id(id_prefix())
    assert reads_as_resident_id(good)
    for bad in wrong_check_chars(good):  # a bad check digit
        assert not reads_as_resident_id(bad)
        assert other_reading(IdType.PASSPORT, bad) is None
    assert not reads_as_resident_id(make_id(id_prefix(region="990105")))  # no such region
    assert not reads_as_resident_id(make_id(id_prefix(born="19900230")))  # no such day
    assert not reads_as_uscc(good[:17] + "Z")


def test_a_resident_id_sent_as_one_has_no_other_reading() -> None:
    assert other_reading(IdType.RESIDENT_ID, make_id(id_prefix())) is None


def both_readings(region: str, born: str) -> str:
    """A resident ID of ``region`` and ``born`` that is a well-formed USCC too: the
    first sequence number whose GB 11643 check digit also passes GB 32100 (about
    one in 31 does)."""
    for seq in range(1000):
        number = make_id(id_prefix(region=region, born=born, seq=f"{seq:03d}"))
        if reads_as_uscc(number):
            return number
    raise AssertionError(f"no number of region {region} born {born} reads as a USCC")


#: the reviewer's example: a resident ID (region 911101, born 1980-01-01) that is a
#: well-formed USCC too (an enterprise, "91")
BOTH = make_id(id_prefix(region="911101", born="19800101", seq="024"))


@pytest.mark.parametrize("id_type", DOCUMENT_TYPES)
@pytest.mark.parametrize(
    "number", [BOTH, both_readings("110105", "19900101"), both_readings("440305", "20010228")]
)
def test_a_number_that_is_both_a_resident_id_and_a_uscc_reads_as_both(
    id_type: IdType, number: str
) -> None:
    """Neither reading may hide the other: the organisation listed under the USCC
    is looked up as surely as the person listed under the resident ID."""
    assert normalize_resident_id(number, FIELD) == number
    assert normalize_uscc(number, FIELD) == number
    sent = normalize_person_id(id_type, number.translate(FULL_WIDTH), FIELD)
    assert other_readings(id_type, sent) == ((IdType.RESIDENT_ID, number), (None, number))
    assert other_reading(id_type, sent) == (IdType.RESIDENT_ID, number)  # what a list row keeps
    assert other_readings(IdType.RESIDENT_ID, number) == ()  # sent as what it is


@pytest.mark.parametrize("id_type", DOCUMENT_TYPES)
def test_other_readings_of_one_reading_or_none(id_type: IdType) -> None:
    resident = make_id(id_prefix())
    assert not reads_as_uscc(resident)
    assert other_readings(id_type, resident) == ((IdType.RESIDENT_ID, resident),)
    code = make_uscc("91110105MA0000001")
    assert other_readings(id_type, code) == ((None, code),)
    full = make_id(id_prefix(born="19800101"))
    card = full[:6] + full[8:17]
    assert other_readings(id_type, card) == ((IdType.RESIDENT_ID, full),)
    assert other_readings(id_type, "E12345678") == ()


SEQUENCES = st.from_regex(r"[0-9]{3}", fullmatch=True)
EIGHTEEN = st.one_of(
    st.text(alphabet="0123456789X", min_size=18, max_size=18),
    st.builds(
        lambda r, q: make_id(id_prefix(region=r, seq=q)), st.sampled_from(REGIONS), SEQUENCES
    ),
    st.builds(lambda q: make_uscc("91110105MA0000" + q), SEQUENCES),
)


@settings(max_examples=300)
@given(st.one_of(EIGHTEEN, st.sampled_from([BOTH, both_readings("650102", "19751231")])))
def test_other_readings_are_exactly_the_checks_a_number_passes(number: str) -> None:
    """Every reading, in one order: the resident ID first, then the organisation."""
    expected: list[tuple[IdType | None, str]] = []
    if reads_as_resident_id(number):
        expected.append((IdType.RESIDENT_ID, number))
    if reads_as_uscc(number):
        expected.append((None, number))
    assert other_readings(IdType.PASSPORT, number) == tuple(expected)


@settings(max_examples=300)
@given(EIGHTEEN)
def test_other_reading_agrees_with_the_normalisers(number: str) -> None:
    """Whatever reads as a resident ID or USCC is one that normalises to itself."""
    found = other_reading(IdType.PASSPORT, number)
    if found is None:
        return
    kind, same = found
    assert same == number
    if kind is IdType.RESIDENT_ID:
        assert normalize_resident_id(number, FIELD) == number
    else:
        assert normalize_uscc(number, FIELD) == number


# --- names --------------------------------------------------------------------

# the last four: NFKC turns them into other characters, so they are read before it too
MIDDLE_DOTS = ["\u00b7", "\u2022", "\u2027", "\u30fb", "\uff65", "\u2219", "\u22c5", "\u0387"]
MIDDLE_DOTS += ["\uff0e", "\u2024", "\u00b8", "\u318d"]
#: and a plain keyboard's full stop, beside a Han character (a Latin name keeps it)
DOTS_BESIDE_HAN = [*MIDDLE_DOTS, "."]


@pytest.mark.parametrize("dot", DOTS_BESIDE_HAN, ids=[f"U+{ord(d):04X}" for d in DOTS_BESIDE_HAN])
def test_middle_dot_variants_are_one_dot(dot: str) -> None:
    assert normalize_name(f"阿依古丽{dot}买买提") == "阿依古丽\u00b7买买提"
    assert normalize_name(f"阿依古丽 {dot} 买买提") == "阿依古丽\u00b7买买提"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("张三", "张 三", id="space"),
        pytest.param("张三", "\u3000张\u3000三\u3000", id="ideographic-space"),
        pytest.param("张三", "张\u200b三", id="zero-width-space"),
        pytest.param("Zhang San", "ZHANGSAN", id="latin-case-and-space"),
        pytest.param("Zhang San", "ｚｈａｎｇ　ｓａｎ", id="full-width-latin"),
        pytest.param("MÜLLER", "müller", id="latin-1-case"),
        pytest.param("Müller", "Mu\u0308ller", id="combining-diaeresis"),
        pytest.param("STRASSE", "straße", id="sharp-s-casefold"),
    ],
)
def test_names_written_differently_normalise_equal(a: str, b: str) -> None:
    assert normalize_name(a) == normalize_name(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("张三", "张四", id="different-han"),
        pytest.param("阿依古丽·买买提", "阿依古丽买买提", id="dot-is-kept"),
        pytest.param("Zhang San", "Zhang Shan", id="different-latin"),
    ],
)
def test_different_names_stay_different(a: str, b: str) -> None:
    assert normalize_name(a) != normalize_name(b)


def test_a_full_stop_is_a_middle_dot_beside_han_only() -> None:
    """阿依古丽.买买提 was REVIEW NAME_MISMATCH against the list's 阿依古丽·买买提 (the
    full-width ．was read as the dot, the plain keyboard's . was not); a Latin name's
    full stop stays one."""
    assert normalize_name("阿依古丽.买买提") == normalize_name("阿依古丽·买买提")
    assert normalize_name("J.SMITH") == "j.smith" != normalize_name("J·SMITH")
    assert normalize_name("Zhang.San") == "zhang.san"
    # the full-width full stop and the one-dot leader alike (NFKC makes each a "."):
    # a full-width Latin name matches its plain self (they were read as middle dots)
    assert normalize_name("Ｊ．ＳＭＩＴＨ") == normalize_name("J\u2024SMITH") == "j.smith"


def test_normalised_name_has_no_spaces_and_is_case_folded() -> None:
    assert normalize_name("  Li\tSi  ") == "lisi"
    assert normalize_name("") == ""


@pytest.mark.parametrize(
    "raw",
    ["ß\u0327", "\u1e9e\u0327", "\u0130\u0327", "ß \u0327", "\u1f80\u0345"],
    ids=["sharp-s", "capital-sharp-s", "I-dot", "sharp-s-space-mark", "iota-subscript"],
)
def test_normalize_name_idempotent_where_casefold_decomposes(raw: str) -> None:
    """Case folding (ß -> ss, İ -> i + U+0307) can leave a sequence that NFKC composes."""
    once = normalize_name(raw)
    assert normalize_name(once) == once


def test_sharp_s_with_cedilla_equals_its_composed_spelling() -> None:
    """'ß' + U+0327 and 's' + U+015F are one name under NFKC and case folding."""
    assert normalize_name("ß\u0327") == normalize_name("s\u015f") == "s\u015f"


# --- masking ------------------------------------------------------------------


def test_mask_id_keeps_region_and_last_four() -> None:
    first17 = next(
        p
        for day in range(1, 29)
        for p in [id_prefix(born=f"198001{day:02d}", seq="123")]
        if resident_id_check_char(p) == "X"
    )
    number = make_id(first17)
    assert number.endswith("123X")
    assert mask_id(number) == "110105********123X"


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        pytest.param("110105770707001", "110105******001", id="first-generation card"),
        pytest.param("11010519770707001", "110105********001", id="17 characters"),
        pytest.param("1101051977070701", "110105********01", id="16 characters"),
        pytest.param("1101051977070700161", "110105*********0161", id="19 characters"),
        pytest.param("E12345678", "E1*****78", id="passport"),
        pytest.param("12345", "12*45", id="five"),
        pytest.param("1234", "****", id="four"),
        pytest.param("", "", id="empty"),
    ],
)
def test_mask_id_of_other_lengths(number: str, masked: str) -> None:
    assert mask_id(number) == masked
    assert len(mask_id(number)) == len(number)


# --- properties ---------------------------------------------------------------

# Name-like text: Han, Latin (ASCII, Latin-1, full-width), combining marks,
# spaces of every kind and the middle-dot variants; and then any text at all.
NAME_CHARS = st.one_of(
    st.characters(min_codepoint=0x300, max_codepoint=0x36F),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(min_codepoint=0x41, max_codepoint=0x7A),
    st.characters(min_codepoint=0xC0, max_codepoint=0xFF),
    st.characters(min_codepoint=0xFF21, max_codepoint=0xFF5A),
    st.sampled_from([" ", "\t", "\u3000", "\u200b", "\u00a0", *MIDDLE_DOTS]),
)


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(st.one_of(st.text(NAME_CHARS, max_size=20), st.text()))
def test_normalize_name_is_idempotent(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(st.text(NAME_CHARS, max_size=20))
def test_normalised_name_has_one_kind_of_dot_and_no_spaces(raw: str) -> None:
    name = normalize_name(raw)
    assert not any(c.isspace() or c == "\u3000" for c in name)
    assert not any(d in name for d in MIDDLE_DOTS[1:])


birth_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2024, 12, 31))


@st.composite
def id_prefixes(draw: st.DrawFn, born: st.SearchStrategy[dt.date] = birth_dates) -> str:
    """A valid 17-digit prefix: known region, real birth date, any sequence."""
    region = draw(st.sampled_from(REGIONS))
    day = draw(born)
    return f"{region}{day:%Y%m%d}{draw(st.integers(0, 999)):03d}"


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(id_prefixes())
def test_valid_prefix_with_its_check_char_normalises_to_itself(first17: str) -> None:
    number = make_id(first17)
    assert normalize_resident_id(number, FIELD) == number


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(id_prefixes(), st.sampled_from("0123456789X"))
def test_any_other_check_char_is_invalid(first17: str, check: str) -> None:
    if check == resident_id_check_char(first17):
        check = "0" if check != "0" else "1"
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id(first17 + check, FIELD)
    assert err.value.field == FIELD
    assert "check digit" in err.value.problem


@pytest.fixture(scope="module")
def keyer() -> SubjectKeyer:
    """A keyer with a fixed 24-byte test secret."""
    return SubjectKeyer(b"test-secret-for-identity")


@st.composite
def respellings(draw: st.DrawFn, number: str) -> str:
    """``number`` as a clerk or scanner might send it: full-width, spaced, lowercase x."""
    chars = list(number.lower() if draw(st.booleans()) else number)
    if draw(st.booleans()):
        chars = [c.translate(FULL_WIDTH) if draw(st.booleans()) else c for c in chars]
    spaces = st.sampled_from([" ", "\u3000", "\t", "\u200b"])
    for _ in range(draw(st.integers(0, 4))):
        chars.insert(draw(st.integers(0, len(chars))), draw(spaces))
    return "".join(chars)


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(st.data())
def test_normalize_resident_id_is_idempotent(data: st.DataObject) -> None:
    """Idempotent on its own output, whatever spelling (18 or 15 digits) it came from."""
    first17 = data.draw(id_prefixes())
    form = data.draw(st.sampled_from([make_id(first17), first17[:6] + first17[8:]]))
    once = normalize_resident_id(data.draw(respellings(form)), FIELD)
    assert normalize_resident_id(once, FIELD) == once


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(st.data())
def test_subject_keys_of_one_identity_written_differently_are_equal(
    keyer: SubjectKeyer, data: st.DataObject
) -> None:
    first17 = data.draw(id_prefixes())
    number = make_id(first17)
    key = keyer.subject_key(IdType.RESIDENT_ID, normalize_resident_id(number, FIELD))
    variant = data.draw(respellings(number))
    assert keyer.subject_key(IdType.RESIDENT_ID, normalize_resident_id(variant, FIELD)) == key


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(st.data())
def test_fifteen_digit_form_has_the_key_of_the_eighteen_digit_form(
    keyer: SubjectKeyer, data: st.DataObject
) -> None:
    last_century = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31))
    first17 = data.draw(id_prefixes(born=last_century))
    old = first17[:6] + first17[8:]
    assert len(old) == 15
    number = make_id(first17)
    variant = data.draw(respellings(old))
    assert keyer.subject_key(IdType.RESIDENT_ID, normalize_resident_id(variant, FIELD)) == (
        keyer.subject_key(IdType.RESIDENT_ID, number)
    )


def test_key_spaces_of_identity_kinds_are_apart(keyer: SubjectKeyer) -> None:
    """The same characters as a passport and as a resident ID are different subjects."""
    number = make_id(id_prefix())
    assert keyer.subject_key(IdType.RESIDENT_ID, number) != keyer.subject_key(
        IdType.PASSPORT, number
    )
    assert keyer.subject_key(IdType.RESIDENT_ID, number) != keyer.subject_key(None, number)


def test_the_keyers_hashers_give_its_keys_as_bytes(keyer: SubjectKeyer) -> None:
    """A bulk build hashes with ``hashers()`` and must get exactly ``subject_key``/``name_key``."""
    by_kind, name = keyer.hashers()
    number = make_id(id_prefix())
    for kind in (IdType.RESIDENT_ID, IdType.PASSPORT, None):
        h = by_kind[kind].copy()
        h.update(number.encode())
        assert int.from_bytes(h.digest()) == keyer.subject_key(kind, number)
    h = name.copy()
    h.update("张三".encode())
    assert int.from_bytes(h.digest()) == keyer.name_key("张三")


def digit_uscc(problem: str) -> str:
    """An all-digit USCC (18 digits, a valid GB 32100 check character) whose reading as
    a resident ID fails with ``problem``: some organisations' codes are all digits."""
    draw = random.Random(7)
    for _ in range(100_000):
        first17 = "".join(draw.choice("0123456789") for _ in range(17))
        code = first17 + uscc_check_char(first17)
        if not code.isdigit():
            continue
        try:
            normalize_resident_id(code, FIELD)
        except InvalidInput as exc:
            if exc.problem.startswith(problem):
                return code
    raise AssertionError(f"no all-digit USCC failing with {problem!r}")


@pytest.mark.parametrize(
    "problem", ["has no valid region code", "has an impossible birth date", "has a bad check"]
)
def test_an_all_digit_uscc_sent_as_a_resident_id_says_where_to_send_it(problem: str) -> None:
    """It was told only "has an impossible birth date (04433998)": 21 of 770 listed
    organisations in a synthetic list have such codes, and organization.uscc finds them."""
    code = digit_uscc(problem)
    assert reads_as_uscc(code)
    with pytest.raises(InvalidInput) as err:
        normalize_resident_id(code, FIELD)
    assert err.value.problem.startswith(problem)
    assert err.value.problem.endswith("an organisation's: send organization.uscc")


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x7f", "\x9b"])
def test_a_control_character_in_a_number_is_named_not_counted(control: str) -> None:
    """A NUL pasted into an 18-character ID was "got 19 characters" (the clerk sees 18);
    a name with one is refused by the character and its place: numbers alike."""
    number = make_id(id_prefix())
    typed = number[:9] + control + number[9:]
    said = f"must not contain control characters (U+{ord(control):04X} at character 10)"
    for normalize in (normalize_resident_id, normalize_document, normalize_uscc):
        with pytest.raises(InvalidInput) as err:
            normalize(typed, FIELD)
        assert err.value.problem == said, (normalize.__name__, err.value.problem)
    assert normalize_resident_id(number[:9] + "\t" + number[9:], FIELD) == number  # a tab: space
