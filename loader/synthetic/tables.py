"""Check characters composed from parts, and the tables learned once from the validator.

The generator can never disagree with ``shixin_check.domain.identity``: each ID and
USCC is composed from pieces whose check-character classes were learned from
it (``_Composer``)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from shixin_check.domain.identity import resident_id_check_char, uscc_check_char
from shixin_check.loader.synthetic.corpus import (
    AGE_WEIGHTS,
    PROVINCE_ABBR,
    REGION_ROWS,
    USCC_ALPHABET,
    spread,
)

# --------------------------------------------------------------------------
# --------------------------------------------------------------------------


class _Composer:
    """Check characters of 17-character strings assembled from parts.

    GB 11643 and GB 32100 both derive the check character one-to-one from a
    weighted sum of the positions modulo a prime (11 and 31). So the check
    character of a whole string follows from those of its parts, each taken
    alone with the other positions set to ``0``: ``rows[a][b]`` is the class of
    two parts of classes ``a`` and ``b`` together, and ``final[a][b]`` its check
    character. Both tables are learned from the domain's own check function (a
    few thousand calls, once), so a row costs a few tuple look-ups instead of
    calls of several microseconds, and can never disagree with the validator.
    """

    def __init__(self, check: Callable[[str], str], symbols: str, length: int = 17) -> None:
        zero = symbols[0]
        heads: dict[str, str] = {}
        tails: dict[str, str] = {}
        for a in symbols:
            for b in symbols:
                heads.setdefault(check(a + b + zero * (length - 2)), a + b)
                tails.setdefault(check(zero * (length - 2) + a + b), a + b)
        if heads.keys() != tails.keys():
            raise RuntimeError("check function is not a weighted sum over a prime field")
        chars = tuple(sorted(heads))
        self._index = {c: i for i, c in enumerate(chars)}
        middle = zero * (length - 4)
        self.rows: tuple[tuple[int, ...], ...] = tuple(
            tuple(self._index[check(heads[x] + middle + tails[y])] for y in chars) for x in chars
        )
        self.final: tuple[tuple[str, ...], ...] = tuple(
            tuple(chars[v] for v in row) for row in self.rows
        )
        self._check = check
        self._zero = zero
        self._length = length

    def part(self, text: str, offset: int) -> int:
        """The class of ``text`` placed at ``offset``, zeros elsewhere."""
        tail = self._length - offset - len(text)
        return self._index[self._check(self._zero * offset + text + self._zero * tail)]


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    court: str  # 北京市朝阳区人民法院
    city: str  # 北京, for company names
    case_prefix: str  # 京0105, for case numbers
    id_row: tuple[int, ...]  # resident ID classes: the code combined with any class
    uscc_new: int  # USCC class of "91" + code + "MA"
    uscc_old: int  # USCC class of "91" + code


Choices = tuple[tuple[str, int], ...]  # (text, composer class), 2**k of them


@dataclass(frozen=True, slots=True)
class _Tables:
    """Everything that depends on neither the seed nor the date (built once)."""

    id_final: tuple[tuple[str, ...], ...]
    id_rows: tuple[tuple[int, ...], ...]
    year_parts: dict[str, int]
    mmdd_parts: dict[str, int]
    male_seq: Choices  # odd sequence numbers (the 17th digit is odd for men)
    female_seq: Choices
    uscc_final: tuple[tuple[str, ...], ...]
    uscc_rows: tuple[tuple[int, ...], ...]
    uscc_pairs: tuple[Choices, ...]  # positions 10, 12, 14 after "MA": any two characters
    uscc_digit_pairs: tuple[Choices, ...]  # positions 8, 10, 12, 14: two digits
    uscc_last: Choices  # position 16
    regions: tuple[Region, ...]  # 2**7 slots
    region_by_code: dict[str, Region]


def _choices(composer: _Composer, offset: int, texts: Sequence[str], bits: int) -> Choices:
    return spread([(text, composer.part(text, offset)) for text in texts], bits)


def _regions(ids: _Composer, uscc: _Composer) -> tuple[Region, ...]:
    rows = []
    for line in REGION_ROWS.strip().splitlines():
        code, place, city = line.split()
        rows.append(
            Region(
                code=code,
                court=place + "人民法院",
                city=city,
                case_prefix=PROVINCE_ABBR[code[:2]] + code[2:],
                id_row=ids.rows[ids.part(code, 0)],
                uscc_new=uscc.part("91" + code + "MA", 0),
                uscc_old=uscc.part("91" + code, 0),
            )
        )
    return tuple(rows)


@cache
def learned_tables() -> _Tables:
    ids = _Composer(resident_id_check_char, "0123456789")
    uscc = _Composer(uscc_check_char, USCC_ALPHABET)
    regions = _regions(ids, uscc)
    days = [datetime.date(2000, 1, 1) + datetime.timedelta(days=d) for d in range(366)]
    digit_pairs = [a + b for a in "0123456789" for b in "0123456789"]
    any_pairs = [a + b for a in USCC_ALPHABET for b in USCC_ALPHABET]
    return _Tables(
        id_final=ids.final,
        id_rows=ids.rows,
        year_parts={str(y): ids.part(str(y), 6) for y in range(1900, 2100)},
        mmdd_parts={(m := d.strftime("%m%d")): ids.part(m, 10) for d in days},
        male_seq=_choices(ids, 14, [f"{n:03d}" for n in range(1, 1000, 2)], 9),
        female_seq=_choices(ids, 14, [f"{n:03d}" for n in range(0, 1000, 2)], 9),
        uscc_final=uscc.final,
        uscc_rows=uscc.rows,
        uscc_pairs=tuple(_choices(uscc, p, any_pairs, 10) for p in (10, 12, 14)),
        uscc_digit_pairs=tuple(_choices(uscc, p, digit_pairs, 7) for p in (8, 10, 12, 14)),
        uscc_last=_choices(uscc, 16, USCC_ALPHABET, 5),
        regions=spread(regions, 7),
        region_by_code={r.code: r for r in regions},
    )


Birth = tuple[str, int, int]  # (YYYYMMDD, resident ID class of the date, age at as_of)


def births(tables: _Tables, as_of: datetime.date) -> tuple[Birth, ...]:
    """2**17 birth dates of people aged 18 to 80 at ``as_of``, ages weighted."""
    by_age: dict[int, list[Birth]] = {age: [] for age in range(18, 81)}
    rows = tables.id_rows
    for ordinal in range(as_of.toordinal() - 82 * 366, as_of.toordinal() - 17 * 365):
        born = datetime.date.fromordinal(ordinal)
        age = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))
        if age in by_age:
            ymd = born.strftime("%Y%m%d")
            part = rows[tables.year_parts[ymd[:4]]][tables.mmdd_parts[ymd[4:]]]
            by_age[age].append((ymd, part, age))
    weighted = [age for lo, hi, w in AGE_WEIGHTS for age in range(lo, hi + 1) for _ in range(w)]
    ages = spread(weighted, 8)
    return tuple(birth for age in ages for birth in spread(by_age[age], 9))
