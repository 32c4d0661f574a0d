"""Identity numbers and names: normalise, validate, mask.

Booking systems send identities as clerks typed or scanners read them:
full-width digits, stray spaces, a lowercase ``x``, a 15-digit
first-generation card, a minority name with one of many middle-dot look-alikes.
Everything here turns such input into one canonical form, so that the same
person always yields the same subject key, and rejects what cannot be a real
number with a message that says why (``InvalidInput``).

- Resident ID (GB 11643-1999): 17 digits and a check character (0-9 or X);
  15-digit cards are converted (century 19 inserted, check digit computed).
- USCC (GB 32100-2015): 18 characters over a 31-letter alphabet, the last a
  check character.
- Passports and permits: letters and digits, upper case, no separators.

A number sent under the wrong id type is recognised when it plainly is
another identity (``other_readings``): the check then looks it up every way it
reads.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
import unicodedata
from collections.abc import Iterable, Iterator
from enum import IntEnum

from shixin_check.domain.errors import InvalidInput


class IdType(IntEnum):
    """How a natural person is identified. Values match the wire enum."""

    RESIDENT_ID = 1
    PASSPORT = 2
    HK_MACAO_PERMIT = 3
    TAIWAN_PERMIT = 4
    FOREIGN_PERMANENT_RESIDENT = 5


#: One-letter tags that keep the key spaces of the identity kinds apart.
KEY_TAGS: dict[IdType | None, bytes] = {
    IdType.RESIDENT_ID: b"R",
    IdType.PASSPORT: b"P",
    IdType.HK_MACAO_PERMIT: b"H",
    IdType.TAIWAN_PERMIT: b"T",
    IdType.FOREIGN_PERMANENT_RESIDENT: b"F",
    None: b"U",  # organisations, by USCC
}

_ID_CHECK = "10X98765432"
_CHECK_CHARS = frozenset(_ID_CHECK)
_CANONICAL_ID = re.compile(r"[0-9]{17}[0-9X]\Z")
_DIGITS15 = re.compile(r"[0-9]{15}\Z")
# Province-level codes in use (GB/T 2260), plus 71/81/82 for Taiwan, Hong Kong
# and Macao residents and 83 for their residence permits.
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 "
    "50 51 52 53 54 61 62 63 64 65 71 81 82 83 91".split()
)


def _birth_dates(first: _dt.date, last: _dt.date) -> frozenset[str]:
    """Every YYYYMMDD from first to last: one set look-up instead of building a date."""
    return frozenset(
        f"{year}{month:02d}{day:02d}"
        for year in range(first.year, last.year + 1)
        for month in range(1, 13)
        for day in range(1, calendar.monthrange(year, month)[1] + 1)
    )


_BIRTH_DATES = _birth_dates(_dt.date(1880, 1, 1), _dt.date(2099, 12, 31))  # whole years

_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {c: i for i, c in enumerate(_USCC_ALPHABET)}
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_USCC_SHAPE = re.compile(r"[0-9A-HJ-NPQRTUW-Y]{2}[0-9]{6}[0-9A-HJ-NPQRTUW-Y]{10}\Z")

_DOCUMENT_SHAPE = re.compile(r"[A-Z0-9]{5,20}\Z")

#: A Home Return Permit (港澳居民来往内地通行证) number as the old booklet printed it: the
#: letter, the holder's 8-digit lifetime number, then two digits counting its renewals.
#: The card's number is the first nine characters (``permit_card``).
OLD_PERMIT = re.compile(r"[HM][0-9]{10}\Z")
#: A Taiwan residents' permit (台湾居民来往大陆通行证) number as the old booklet printed
#: it: the holder's 8-digit lifetime number, then two digits counting its issues
#: (``12345678(01)``, written without the brackets). The card's number is the first
#: eight digits; booking forms take either (``permit_card``).
OLD_TAIWAN_PERMIT = re.compile(r"[0-9]{10}\Z")

# Middle dots seen in minority names (阿依古丽·买买提), as typed on every kind
# of keyboard and input method: all read as U+00B7.
# The full-width full stop and the one-dot leader are not among them: NFKC makes
# each a plain full stop, read as such a dot beside a Han character only.
_MIDDLE_DOTS = "\u00b7\u0387\u16eb\u2022\u2027\u2219\u22c5\u2e31\u30fb\uff65\u318d\u00b8\u02d1\u0e3a\u2e30\u25cf\u25e6\u30fb\ua78f"
_DOT_TABLE = {ord(c): "\u00b7" for c in _MIDDLE_DOTS}
# A full stop beside a Han character is such a dot typed on a plain keyboard
# (阿依古丽.买买提); in Latin names it stays a full stop (J.SMITH).
_HAN_FULL_STOP = re.compile(
    "(?<=[\u3400-\u4dbf\u4e00-\u9fff])\\.|\\.(?=[\u3400-\u4dbf\u4e00-\u9fff])"
)
_PLAIN_NAME = re.compile("[\u4e00-\u9fff\u00b7]+\\Z")
# What a clerk cannot see, read past like a space: every format character (category
# Cf: soft hyphen, ZWSP and its kin, direction marks, invisible operators, BOM, tags),
# the combining grapheme joiner, variation selectors (U+FE00-FE0F, U+E0100-E01EF, the
# Mongolian ones) and the Hangul fillers; the rest of the default-ignorable code
# points are unassigned. tests/test_identity_invisible.py holds this to unicodedata.
_IGNORABLE = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
# Every dash (category Pd: hyphen, en and em dashes, the wave dash...) and the minus
# sign, read past in numbers as "-" is (110105-19800101-001X).
_DASHES = (
    "\\-\u058a\u05be\u1400\u1806\u2010-\u2015\u2212\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u2e5d\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d\U00010ead"
)
_SPACES = re.compile(f"[\\s\u3000{_IGNORABLE}]+")  # in names
_SEPARATORS = re.compile(f"[\\s\u3000{_IGNORABLE}{_DASHES}]+")  # in numbers
_ASCII_SEPARATORS = re.compile(r"[\s\-]+")  # the same, in an ASCII number


def _squeeze(raw: str) -> str:
    """A number as read: NFKC (full-width to ASCII), without white space, invisible
    characters and dashes, upper case."""
    if raw.isascii():
        return _ASCII_SEPARATORS.sub("", raw).upper()
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)).upper()


def _other_digit(number: str) -> str:
    """Why ``number`` (squeezed) is refused when it holds a digit of another script
    (Arabic-Indic, Devanagari...: NFKC keeps them), else "": its length and shape
    would otherwise be all a clerk is told."""
    if number.isascii():
        return ""
    for c in number:
        if c.isdecimal() and not c.isascii():
            name = unicodedata.name(c, "a digit")
            return (f"has a digit of another script (U+{ord(c):04X} {name}): "
                    "digits must be 0-9 (full-width too)")  # fmt: skip
    return ""


def resident_id_check_char(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits (ASCII, already checked)."""
    # The weights are 2**(18-i) mod 11 and 13 = 2 (mod 11), so the weighted sum
    # is 2 * (the digits read in base 13) mod 11: int() does it in C, ten times
    # faster than a weighted sum in Python, on every check.
    return _ID_CHECK[2 * int(first17, 13) % 11]


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters."""
    if first17.isascii() and first17.isdigit():
        # The weights are 3**i mod 31 and 34 = 3 (mod 31), so for digits the weighted
        # sum is the digits read backwards in base 34, mod 31: int() does it in C, as
        # in resident_id_check_char: every resident ID sent as a document, and some
        # sent as one, is tried as a USCC (resident_id_is_uscc).
        return _USCC_ALPHABET[-int(first17[::-1], 34) % 31]
    total = sum(_USCC_VALUE[c] * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31]


def normalize_resident_id(raw: str, field: str = "id_number") -> str:
    """Canonical 18-character resident ID, or ``InvalidInput`` saying why."""
    if len(raw) == 18 and raw.isascii():  # the common case: canonical and valid, in one pass
        first17 = raw[:17]
        if (
            first17.isdigit()
            and raw[17] == _ID_CHECK[2 * int(first17, 13) % 11]
            and raw[:2] in _PROVINCES
            and raw[6:14] in _BIRTH_DATES
        ):
            return raw
    typed = True  # 18 characters as typed: not a first-generation card's 15 made 18 here
    if len(raw) == 18 and raw.isascii() and raw[:17].isdigit() and raw[17] in _CHECK_CHARS:
        number = raw  # canonical in form; which check fails is said below
    else:
        number = _squeeze(raw)  # region-birth date-rest: as documents are read
        if _DIGITS15.match(number) is not None:
            number = number[:6] + "19" + number[6:]
            number += resident_id_check_char(number)
            typed = False
        elif _CANONICAL_ID.match(number) is None:
            if not number:
                raise InvalidInput(field, "is empty")
            refuse_controls(raw, field)  # named, not counted as a wrong length
            raise InvalidInput(field, _not_resident(number))
    said = _or_uscc if typed else _as_said  # a USCC or a foreign card is 18 characters
    if number[:2] not in _PROVINCES:
        if typed and _foreign_card(number):
            raise InvalidInput(field, f"has no valid region code ({number[:2]}...): a foreign "
                               "permanent resident ID card's number? set id_type "
                               "FOREIGN_PERMANENT_RESIDENT")  # fmt: skip
        raise InvalidInput(field, said(number, f"has no valid region code ({number[:2]}...)"))
    if number[6:14] not in _BIRTH_DATES:
        raise InvalidInput(field, said(number, f"has an impossible birth date ({number[6:14]})"))
    expected = resident_id_check_char(number[:17])
    if number[17] != expected:
        raise InvalidInput(field, said(number, "has a bad check digit (GB 11643)"))
    return number


def _as_said(_number: str, problem: str) -> str:
    return problem


def _or_uscc(number: str, problem: str) -> str:
    """``problem``, and, for an all-digit number that is a valid USCC (an organisation's
    code typed as a resident ID), where to send it."""
    if reads_as_uscc(number):
        return f"{problem}: it is a unified social credit code, an organisation's: send organization.uscc"
    return problem


def _not_resident(number: str) -> str:
    """Why ``number`` (squeezed) is no resident ID, and what it may be instead."""
    other_digit = _other_digit(number)
    if other_digit:
        return other_digit
    shape = (f"is not a resident ID: expected 18 characters (17 digits and a digit or X) "
             f"or 15 digits, got {len(number)} characters")  # fmt: skip
    if len(number) == 18 and reads_as_uscc(number):
        return f"{shape}, a unified social credit code: an organisation's, send organization.uscc"
    slip = resident_id_slip(number)
    if slip is not None:  # a letter O for a zero is no passport: setting id_type answers it
        return f"{shape}: reads as {slip[1]} with {slip[0]}: check the number"
    if not number[:17].isdigit() and any(c.isalpha() for c in number):
        return f"{shape} with letters: a passport or permit number? set id_type"
    return shape


def normalize_uscc(raw: str, field: str = "uscc") -> str:
    """Canonical unified social credit code, or ``InvalidInput`` saying why."""
    code = _squeeze(raw)
    if not code:
        raise InvalidInput(field, "is empty")
    if _USCC_SHAPE.match(code) is None:  # 18 characters of the alphabet, or why not
        refuse_controls(raw, field)
        other_digit = _other_digit(code)
        if other_digit:
            raise InvalidInput(field, other_digit)
        if len(code) != 18:
            raise InvalidInput(field, f"must be 18 characters, got {len(code)}")
        raise InvalidInput(field, "has characters outside the GB 32100 alphabet (no I, O, S, V, Z)")
    if code[17] != uscc_check_char(code[:17]):
        raise InvalidInput(field, "has a bad check character (GB 32100)")
    return code


def normalize_document(raw: str, field: str = "id_number") -> str:
    """Passport or permit number: letters and digits, upper case."""
    number = _squeeze(raw)
    if not number:
        raise InvalidInput(field, "is empty")
    if _DOCUMENT_SHAPE.match(number) is None:
        refuse_controls(raw, field)
        raise InvalidInput(field, _other_digit(number) or "must be 5 to 20 letters and digits")
    return number


def normalize_person_id(id_type: IdType, raw: str, field: str = "id_number") -> str:
    if id_type is IdType.RESIDENT_ID:
        return normalize_resident_id(raw, field)
    return normalize_document(raw, field)


def permit_card(number: str) -> tuple[IdType, str] | None:
    """The permit card a number in an old booklet's form names: a Home Return Permit's
    (``H1234567801``: the lifetime number and a renewal count) as
    ``(HK_MACAO_PERMIT, "H12345678")``, a Taiwan permit's (``1234567801``: the
    lifetime number and an issue count) as ``(TAIWAN_PERMIT, "12345678")``; None for
    any other number (normalised, as ``normalize_document`` returns it). A check looks
    the old form up as the card too (``convert.to_query``), and a list keys a row
    giving the old form as the card (``listfile.as_resident``), so either form finds
    the holder, whichever the list or the clerk wrote."""
    size = len(number)
    if size == 11 and OLD_PERMIT.match(number) is not None:
        return IdType.HK_MACAO_PERMIT, number[:9]
    if size == 10 and OLD_TAIWAN_PERMIT.match(number) is not None:
        return IdType.TAIWAN_PERMIT, number[:8]
    return None


def reads_as_resident_id(number: str) -> bool:
    """True for a canonical 18-character resident ID that GB 11643 accepts whole.

    For a number sent under another id type: a real region code, a possible
    birth date and a good check digit together pass by chance for about one
    random 18-digit number in 40,000, so such a number is far more likely a
    resident ID under the wrong type than some other document's number.
    """
    return (
        _CANONICAL_ID.match(number) is not None
        and number[:2] in _PROVINCES
        and number[6:14] in _BIRTH_DATES
        and number[17] == resident_id_check_char(number[:17])
    )


def misread_resident_id(number: str) -> bool:
    """True for 18 characters (normalised) with a resident ID's shape, a real region
    code and a possible birth date but a wrong GB 11643 check character: a resident
    ID mistyped, far more likely than a document of that form (China's foreign
    permanent resident card, 18 characters beginning with 9, has the same check;
    passports and permits are shorter). A check refuses such a number under a
    document type, as it is refused sent as RESIDENT_ID, unless it is a valid USCC
    (then it reads as that organisation)."""
    return (
        _CANONICAL_ID.match(number) is not None
        and number[:2] in _PROVINCES
        and number[6:14] in _BIRTH_DATES
        and number[17] != resident_id_check_char(number[:17])
    )


_DIGITS = "0123456789"


def _old_card(number: str) -> bool:
    """A first-generation card's 15 digits whose region code and birth date are possible."""
    return (
        _DIGITS15.match(number) is not None
        and number[:2] in _PROVINCES
        and "19" + number[6:12] in _BIRTH_DATES
    )


def _foreign_card(number: str) -> bool:
    """A foreign permanent resident ID card's number since 2023: 18 characters, 9 first,
    the holder's birth date where a resident ID has it, a good GB 11643 check character."""
    return (
        _CANONICAL_ID.match(number) is not None
        and number[0] == "9"
        and number[6:14] in _BIRTH_DATES
        and number[17] == resident_id_check_char(number[:17])
    )


#: By length, where an X may stand in a number one slip from a resident ID: its last
#: place (18), the last before a character inserted there (17), either of the last two
#: of 19 (one dropped before it, or after it); a first-generation card holds none
_X_PLACES: dict[int, tuple[int, ...]] = {17: (16,), 18: (17,), 19: (17, 18)}


def _edits(number: str) -> Iterator[tuple[str, str]]:
    """(slip, number) for the numbers one keying slip away from ``number`` (15 to 19
    characters): a character replaced by a digit (X too as an 18th), two neighbours
    swapped, for 17 or 19 characters one inserted or dropped. Only where such a slip
    could make a resident ID or a foreign card of it: the character that is no digit,
    else the region code or birth date that is impossible, else any (the check
    character alone is wrong); of 15 characters only one that is no digit (15 digits
    hold no check character: one in six would be one digit from a possible card)."""
    length = len(number)
    ends = _X_PLACES.get(length, ())  # where an X may stand that ends the number mended
    odd = [i for i, c in enumerate(number) if c not in _DIGITS and not (c == "X" and i in ends)]
    if len(odd) > 1 or length == 17 and odd:  # two slips; or a digit added fixes no letter
        return
    if length in (15, 18):
        if odd:
            places: Iterable[int] = odd
        elif length == 15:
            return
        else:
            spots: set[int] = set()
            if number[:2] not in _PROVINCES:
                spots.update((0, 1))
            if number[6:14] not in _BIRTH_DATES:
                spots.update(range(6, 14))
            places = sorted(spots) or range(18)
            for i in range(17):  # two neighbours swapped
                if number[i] != number[i + 1]:
                    yield (
                        "two characters swapped",
                        (number[:i] + number[i + 1] + number[i] + number[i + 2 :]),
                    )
        for i in places:
            for c in _DIGITS + ("X" if i == 17 else ""):
                if c != number[i]:
                    yield "one character wrong", number[:i] + c + number[i + 1 :]
    elif length == 17:
        for i in range(18):
            for c in _DIGITS + ("X" if i == 17 else ""):
                yield "one character left out", number[:i] + c + number[i:]
    elif length == 19:
        for i in odd or range(19):
            yield "one character too many", number[:i] + number[i + 1 :]


#: what ``resident_id_slip`` finds a number to be
RESIDENT_ID_READING = "a resident ID"
FOREIGN_CARD_READING = "a foreign permanent resident ID card"


def resident_id_slip(number: str) -> tuple[str, str] | None:
    """(slip, what) where one keying slip makes ``number`` (normalised; sent under a
    document type, and no resident ID or USCC as it is) a resident ID, or a foreign
    permanent resident card (``RESIDENT_ID_READING``, ``FOREIGN_CARD_READING``); None
    for none. A character wrong (a letter O for a zero, an impossible birth date, a
    bad check character), two swapped, one left out or one too many: a check refuses
    such a number under a document type, as it is refused sent as RESIDENT_ID, where
    taking the type at its word would answer for a document nobody holds (ALLOW).
    Real documents are not refused: passports and permits are shorter (Chinese ones 8
    to 11 characters), and a foreign card's 18 characters carry a good check
    character, which no one slip keeps. 15, 17, 18 and 19 characters cost the tries
    (at most ~190); others one ``len``."""
    length = len(number)
    if not 15 <= length <= 19 or length == 16:
        return None
    if (
        length == 18
        and _CANONICAL_ID.match(number)
        and number[17] == resident_id_check_char(number[:17])
    ):  # a good check character (a foreign card's): no one slip keeps it
        return None
    for slip, edit in _edits(number):
        if len(edit) == 15:
            if _old_card(edit):
                return slip, RESIDENT_ID_READING
        elif reads_as_resident_id(edit):
            return slip, RESIDENT_ID_READING
        elif _foreign_card(edit):
            return slip, FOREIGN_CARD_READING
    return None


def foreign_card_misread(number: str) -> bool:
    """True for the form of a foreign permanent resident ID card since 2023 (18
    characters, 9 first, 17 digits and a digit or X) with a wrong GB 11643 check
    character: the card mistyped, a document nobody holds."""
    return (
        _CANONICAL_ID.match(number) is not None
        and number[0] == "9"
        and number[17] != resident_id_check_char(number[:17])
    )


def reads_as_uscc(number: str) -> bool:
    """True for a canonical unified social credit code with a good GB 32100 check character."""
    return _USCC_SHAPE.match(number) is not None and number[17] == uscc_check_char(number[:17])


def resident_id_is_uscc(number: str) -> bool:
    """True for a valid resident ID (canonical, as ``normalize_resident_id`` returns it)
    that is a well-formed USCC too (about one in 31): an organisation's code sent as
    a resident ID may be one, so a check looks it up as that organisation as well.
    17 digits and a digit or X are a USCC's shape already: only the check character
    can tell."""
    return number[17] == uscc_check_char(number[:17])


def other_readings(id_type: IdType, number: str) -> tuple[tuple[IdType | None, str], ...]:
    """Every other identity a person's normalised number plainly is: ``()`` for none.

    A booking form's id type is easy to get wrong: a resident ID sent as
    PASSPORT (or any other document type) reads as a resident ID, and an
    organisation's USCC sent as a person's document reads as that
    organisation (``(None, number)``, the USCC key space). The check looks up
    every reading, so a listed subject is never let through by a mistyped id
    type. An 18-digit number can pass both checks at once (about one resident
    ID in 31 is also a well-formed USCC: its 17 digits weighed the GB 32100
    way give its last character too), so such a number has
    two readings, the resident ID first: neither may hide the other's listing.
    A first-generation card's 15 digits read as the 18-character resident ID
    they convert to, when their region code and birth date are possible
    (Chinese passports and permits are a letter and 8 or 9 digits; 15 such
    digits are far more likely an old card sent under the wrong type). Only
    15- and 18-character numbers can qualify: others cost one ``len``.
    """
    if id_type is IdType.RESIDENT_ID:  # a USCC too? ``to_query`` asks (resident_id_is_uscc)
        return ()
    length = len(number)
    if length == 15:
        if _old_card(number):
            full = number[:6] + "19" + number[6:]
            return ((IdType.RESIDENT_ID, full + resident_id_check_char(full)),)
        return ()
    if length != 18:
        return ()
    if reads_as_resident_id(number):
        if resident_id_is_uscc(number):
            return (IdType.RESIDENT_ID, number), (None, number)
        return ((IdType.RESIDENT_ID, number),)
    if reads_as_uscc(number):
        return ((None, number),)
    return ()


def other_reading(id_type: IdType, number: str) -> tuple[IdType | None, str] | None:
    """The first of ``other_readings``, or None: the resident ID where the number
    reads as one, else the organisation.

    For a list row's person (``listfile.as_resident``), which is kept under the
    resident ID its number plainly is. A check must look up every reading
    (``other_readings``), never just this one: a number that is both a resident
    ID and a USCC would hide the organisation.
    """
    readings = other_readings(id_type, number)
    return readings[0] if readings else None


def refuse_misread(id_type: IdType, number: str, field: str, verb: str = "send") -> None:
    """``InvalidInput`` naming ``field`` for a number (15 to 19 characters, no resident
    ID or USCC as it is: ``other_readings`` found none) given under ``id_type`` that is
    a resident ID with a keying slip, or a foreign permanent resident card with a bad
    check character: refused as under RESIDENT_ID, so a document type must not make
    either an ALLOW (``resident_id_slip``). A check refuses it, and so does a list row
    (``verb`` "list"): a row a check can never find must not load as if it could."""
    if id_type is IdType.FOREIGN_PERMANENT_RESIDENT and foreign_card_misread(number):
        raise InvalidInput(field, "reads as a foreign permanent resident ID card (18 characters "
                           "beginning with 9) with a bad check character (GB 11643): check "
                           "the number")  # fmt: skip
    if len(number) == 18 and misread_resident_id(number):
        raise InvalidInput(field, "reads as a resident ID (region code, birth date) with a bad "
                           f"check character (GB 11643): check the number; {verb} a resident "
                           "ID with id_type RESIDENT_ID")  # fmt: skip
    slip = resident_id_slip(number)
    if slip is not None:
        what, advice = slip[1], f"{verb} a resident ID with id_type RESIDENT_ID"
        if what == FOREIGN_CARD_READING:
            advice = f"{verb} it with id_type FOREIGN_PERMANENT_RESIDENT"
        raise InvalidInput(field, f"reads as {what} with {slip[0]}: check the number; {advice}")


#: C0 and C1 control characters and DEL: no name, number, court or date holds one
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def refuse_controls(text: str, field: str) -> None:
    """``InvalidInput`` naming ``field`` and the first control character in ``text``:
    a list row and a request alike (a broken export, a pasted name)."""
    found = CONTROL_CHARACTERS.search(text)
    if found is not None:
        raise InvalidInput(
            field,
            f"must not contain control characters (U+{ord(found.group()):04X} at"
            f" character {found.start() + 1})",
        )


def normalize_name(raw: str) -> str:
    """Names compared as people read them: NFKC, one middle dot, no spaces, case-folded.

    Idempotent: ``normalize_name(normalize_name(x)) == normalize_name(x)``.
    """
    if _PLAIN_NAME.match(raw) is not None:
        return raw  # unified ideographs and U+00B7 only: already normal (most names)
    text = raw
    for _ in range(4):  # to a fixed point: case folding and removing spaces can
        # expose new compositions (ß + U+0327 folds to "ss" + U+0327, then "sş").
        # The dots are read before NFKC too, which turns some into other characters
        # (U+FF0E into ".", U+2024 into ".", U+00B8 into a cedilla, U+318D into U+119E).
        dotted = text.translate(_DOT_TABLE)
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", dotted).casefold())
        new = _HAN_FULL_STOP.sub("\u00b7", _SPACES.sub("", folded.translate(_DOT_TABLE)))
        if new == text:
            break
        text = new
    return text


def mask_id(number: str) -> str:
    """Shown in answers and logs: ``110105********123X``; short numbers keep less.

    No birth date is shown: a first-generation card's six digits of it are hidden
    (``110105******001``), and in 16 or 17 characters (an 18-digit number keyed
    short) the eight from the seventh character on, where its birth date is unless
    a character of the region code was left out."""
    n = len(number)
    if n >= 18:
        return number[:6] + "*" * (n - 10) + number[-4:]
    if n == 15:
        return number[:6] + "******" + number[-3:]
    if n > 15:
        return number[:6] + "********" + number[14:]
    if n > 4:
        return number[:2] + "*" * (n - 4) + number[-2:]
    return "*" * n
