"""The generator: one ``random.Random(seed)``, a table look-up per choice, an entry per index."""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterator

from shixin_check.domain.identity import resident_id_check_char
from shixin_check.loader.synthetic.corpus import (
    AMOUNT_BUCKETS,
    BRAND_CHARS,
    CIRCUMSTANCE_WEIGHTS,
    CIRCUMSTANCES,
    COMMON_SURNAMES,
    COMPOUND_SURNAMES,
    FEMALE_GIVEN,
    INDUSTRIES,
    MALE_GIVEN,
    MINORITIES,
    OBLIGATIONS,
    Entry,
    spread,
    unique,
    weighted,
)
from shixin_check.loader.synthetic.tables import Region, births, learned_tables


class _Generator:
    """Draws entries from one ``random.Random(seed)``; the order of draws is fixed.

    Look-ups go through tables of ``2**k`` slots indexed by ``getrandbits(k)``;
    probabilities are ``random() < p``. Hot tables are attributes of ``self``.
    """

    def __init__(self, seed: int, as_of: datetime.date) -> None:
        t = self._t = learned_tables()
        rng = random.Random(seed)
        self._rand = rng.random
        self._bits = rng.getrandbits
        self._as_of = as_of.toordinal()
        self._date_base = self._as_of - 8 * 366
        self._dates = tuple(
            datetime.date.fromordinal(o).isoformat()
            for o in range(self._date_base, self._as_of + 7 * 366)
        )
        self._births = births(t, as_of)
        self._regions = t.regions
        self._ages = spread([b[2] for b in self._births[:: 1 << 9]], 8)
        common = tuple(COMMON_SURNAMES)
        self._surnames = spread(common + common[:20] * 3 + COMPOUND_SURNAMES, 9)
        self._male = spread(unique(MALE_GIVEN), 8)
        self._female = spread(unique(FEMALE_GIVEN), 8)
        self._brands = spread(BRAND_CHARS, 6)
        self._industries = spread(INDUSTRIES, 5)
        self._circumstances = spread(weighted(CIRCUMSTANCES, CIRCUMSTANCE_WEIGHTS), 7)
        self._severities = spread(weighted(("一般", "较重", "严重"), (6, 3, 1)), 7)
        self._obligations = spread(OBLIGATIONS, 4)
        self._amounts = spread([(lo, n) for lo, n, w in AMOUNT_BUCKETS for _ in range(w)], 7)
        self._exec_kinds = spread(weighted(("执", "执恢", "执保"), (16, 3, 1)), 5)
        self._basis_kinds = spread(weighted(("民初", "民特", "刑初"), (17, 2, 1)), 5)
        self._cents = tuple(f".{c:02d}" for c in range(100))
        self._draw_pools()

    def _draw_pools(self) -> None:
        """Pools drawn once per generator (from the same stream), picked from per row.

        Drawing the dates and case numbers of every row afresh would cost about a
        fifth of the row; 2**15 date triples and 2**12 numbers look just as varied.
        """
        rand = self._rand
        self._date_triples = tuple(self._draw_dates() for _ in range(1 << 15))
        self._case_numbers = tuple(str(1 + int(rand() ** 2 * 30000)) for _ in range(1 << 12))
        self._basis_numbers = tuple(str(1 + int(rand() ** 2 * 40000)) for _ in range(1 << 12))
        years = {int(filed[:4]) for filed, _, _ in self._date_triples}
        self._basis_years = {
            str(y): (str(y), str(y), str(y - 1), str(y - 2)) for y in sorted(years)
        }

    # -- people -------------------------------------------------------------

    def _han_name(self, male: bool) -> str:
        bits = self._bits
        given = self._male if male else self._female
        if self._rand() < 0.7:
            return self._surnames[bits(9)] + given[bits(8)] + given[bits(8)]
        return self._surnames[bits(9)] + given[bits(8)]

    def _minority(self, male: bool) -> tuple[str, Region]:
        """A Uyghur, Tibetan or Mongolian name with a middle dot, and a home region."""
        rand = self._rand
        people = MINORITIES[int(rand() * len(MINORITIES))]
        first = people.male if male else people.female
        name = first[int(rand() * len(first))] + "\u00b7"
        name += people.second[int(rand() * len(people.second))]
        code = people.regions[int(rand() * len(people.regions))]
        return name, self._t.region_by_code[code]

    def _resident_id(self, region: Region, male: bool) -> tuple[str, int]:
        """A valid resident ID of someone from ``region``, and their age at as_of."""
        ymd, birth_part, age = self._births[self._bits(17)]
        seq, seq_part = (self._t.male_seq if male else self._t.female_seq)[self._bits(9)]
        check = self._t.id_final[region.id_row[birth_part]][seq_part]
        return region.code + ymd + seq + check, age

    def _document(self) -> tuple[str, str]:
        """(id_type, number) of a passport or a Hong Kong, Macao or Taiwan permit."""
        r = self._rand()
        number = f"{int(self._rand() * 100_000_000):08d}"
        if r < 0.4:
            return "PASSPORT", ("E" if r < 0.3 else "G") + number
        if r < 0.8:
            return "HK_MACAO_PERMIT", ("H" if r < 0.6 else "M" if r < 0.7 else "C") + number
        return "TAIWAN_PERMIT", number

    def _person(self) -> tuple[dict[str, object], Region]:
        rand = self._rand
        male = rand() < 0.7
        if rand() < 0.03:
            name, region = self._minority(male)
        else:
            name, region = self._han_name(male), self._regions[self._bits(7)]
        if rand() < 0.01:
            id_type, number = self._document()
            age = self._ages[self._bits(8)]
        else:
            id_type = "RESIDENT_ID"
            number, age = self._resident_id(region, male)
        subject: dict[str, object] = {
            "type": "PERSON",
            "name": name,
            "id_type": id_type,
            "id_number": number,
            "gender": "男" if male else "女",
            "age": age,
        }
        return subject, region

    # -- organisations ------------------------------------------------------

    def _uscc(self, region: Region) -> str:
        """91 + region + a 9-character organisation code + the GB 32100 check character."""
        t, bits = self._t, self._bits
        rows = t.uscc_rows
        if self._rand() < 0.7:  # registered since 2015: MA + 7 characters
            code, part, pairs, k = "MA", region.uscc_new, t.uscc_pairs, 10
        else:  # a former organisation code: digits
            code, part, pairs, k = "", region.uscc_old, t.uscc_digit_pairs, 7
        for choices in pairs:
            text, p = choices[bits(k)]
            code += text
            part = rows[part][p]
        last, p = t.uscc_last[bits(5)]
        return "91" + region.code + code + last + t.uscc_final[part][p]

    def _org_name(self, region: Region) -> str:
        bits = self._bits
        brand = self._brands[bits(6)] + self._brands[bits(6)]
        form = "股份有限公司" if self._rand() < 0.15 else "有限公司"
        return region.city + brand + self._industries[bits(5)] + form

    def _related(self, region: Region, role: str, male: bool) -> dict[str, object]:
        home = region if self._rand() < 0.8 else self._regions[self._bits(7)]
        return {
            "role": role,
            "name": self._han_name(male),
            "id_type": "RESIDENT_ID",
            "id_number": self._resident_id(home, male)[0],
        }

    def _organisation(self) -> tuple[dict[str, object], list[dict[str, object]], Region]:
        """The organisation, its 1 to 3 related persons (the legal representative first)."""
        rand = self._rand
        region = self._regions[self._bits(7)]
        legal = self._related(region, "LEGAL_REPRESENTATIVE", rand() < 0.8)
        related = [legal]
        r = rand()
        if r < 0.5:
            others = ("PRINCIPAL", "ACTUAL_CONTROLLER", "RESPONSIBLE_PERSON")
            first = int(rand() * 3)
            related.append(self._related(region, others[first], rand() < 0.7))
            if r < 0.2:
                second = others[(first + 1 + int(rand() * 2)) % 3]
                related.append(self._related(region, second, rand() < 0.7))
        subject: dict[str, object] = {
            "type": "ORGANIZATION",
            "name": self._org_name(region),
            "uscc": self._uscc(region),
            "legal_representative": legal["name"],
        }
        return subject, related, region

    # -- the case -----------------------------------------------------------

    def _money(self) -> tuple[str, str, str, str]:
        """(obligation, performance, performed part, unperformed part)."""
        rand, bits, cents = self._rand, self._bits, self._cents
        lo, span = self._amounts[bits(7)]
        yuan = lo + int(rand() * span)
        fen = 0 if rand() < 0.7 else int(rand() * 100)
        total = str(yuan) + cents[fen]
        prefix, suffix = self._obligations[bits(4)]
        if rand() < 0.8:
            return prefix + total + suffix, "全部未履行", "0.00元", total + "元"
        done = int((yuan * 100 + fen) * (0.05 + 0.75 * rand()))
        rest = yuan * 100 + fen - done
        return (
            prefix + total + suffix,
            "部分未履行",
            str(done // 100) + cents[done % 100] + "元",
            str(rest // 100) + cents[rest % 100] + "元",
        )

    def _draw_dates(self) -> tuple[str, str, str]:
        """ISO (filed_on, published_on, valid_until); about 10% already expired."""
        as_of, rand = self._as_of, self._rand
        if rand() < 0.1:
            published = as_of - 400 - int(rand() * (6 * 365 - 600))
            lo = published + 365
            valid = lo + int(rand() * (min(published + 5 * 365, as_of) - lo))
        else:
            published = as_of - int(rand() * (5 * 365 - 30))
            lo = max(published + 365, as_of + 1)
            valid = lo + int(rand() * (published + 5 * 365 + 1 - lo))
        filed = published - 10 - int(rand() * 170)
        dates, base = self._dates, self._date_base
        return dates[filed - base], dates[published - base], dates[valid - base]

    def _exemptions(self) -> list[dict[str, object]]:
        """One exemption window; half of them are open at as_of."""
        rand, as_of = self._rand, self._as_of
        r = rand()
        if r < 0.5:
            start, end = as_of - int(rand() * 30), as_of + int(rand() * 30)
        elif r < 0.75:
            start = as_of + 1 + int(rand() * 60)
            end = start + int(rand() * 14)
        else:
            end = as_of - 1 - int(rand() * 60)
            start = end - int(rand() * 14)
        channel = ("RAIL", "AIRLINE", "HOTEL")[int(rand() * 3)]
        dates, base = self._dates, self._date_base
        return [{"channel": channel, "from": dates[start - base], "until": dates[end - base]}]

    def _case(self, home: Region, year: str) -> tuple[str, Region, str, str]:
        """(case number, executing court, basis document, its issuer).

        The court is usually where the debtor lives or is registered; the basis
        document usually comes from the same court, up to two years earlier.
        """
        rand, bits, regions = self._rand, self._bits, self._regions
        court = home if rand() < 0.75 else regions[bits(7)]
        issuer = court if rand() < 0.8 else regions[bits(7)]
        kind, number = self._exec_kinds[bits(5)], self._case_numbers[bits(12)]
        case = f"({year}){court.case_prefix}{kind}{number}号"
        basis_year = self._basis_years[year][bits(2)]
        kind, number = self._basis_kinds[bits(5)], self._basis_numbers[bits(12)]
        basis = f"({basis_year}){issuer.case_prefix}{kind}{number}号"
        return case, court, basis, issuer.court

    def entry(self, index: int) -> Entry:
        rand = self._rand
        list_type = "SHIXIN" if rand() < 0.7 else "XIANGAO"
        related: list[dict[str, object]]
        if rand() < 0.75:
            subject, home = self._person()
            related = []
        else:
            subject, related, home = self._organisation()
        filed_on, published_on, valid_until = self._date_triples[self._bits(15)]
        case_number, court, basis_document, basis_issuer = self._case(home, filed_on[:4])
        obligation, performance, performed, unperformed = self._money()
        return {
            "entry_id": "E" + str(index).zfill(10),
            "list_type": list_type,
            "subject": subject,
            "related_persons": related,
            "case_number": case_number,
            "court": court.court,
            "basis_document": basis_document,
            "basis_issuer": basis_issuer,
            "obligation": obligation,
            "performance": performance,
            "circumstance": self._circumstances[self._bits(7)],
            "published_on": published_on,
            "filed_on": filed_on,
            "performed_part": performed,
            "unperformed_part": unperformed,
            "severity": self._severities[self._bits(7)],
            "valid_until": valid_until,
            "status": "ACTIVE" if rand() < 0.95 else "SUSPENDED",
            "exemptions": self._exempt(related) if rand() < 0.01 else [],
        }

    def _exempt(self, related: list[dict[str, object]]) -> list[dict[str, object]]:
        """``_exemptions`` for an entry: a person's covers its debtor (no id_number
        needed); an organisation's names its legal representative (the court allows
        a person, never the organisation: it has no personal assets). The same draws
        either way, so a seed gives the same list as before but for that."""
        exemptions = self._exemptions()
        if not related:  # a person's entry (an organisation has 1 to 3 related persons)
            return exemptions
        person = related[0]
        named: dict[str, object] = {k: person[k] for k in ("id_type", "id_number") if k in person}
        return [{**e, **named} for e in exemptions]


# --------------------------------------------------------------------------
# --------------------------------------------------------------------------


def iter_entries(count: int, seed: int, as_of: datetime.date) -> Iterator[dict[str, object]]:
    """Yield ``count`` snapshot entries (DESIGN section 4 format).

    Deterministic for ``(count, seed, as_of)``; the first ``n`` entries do not
    depend on ``count``. Entry ids are ``E`` + the zero-padded index from 1.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    generator = _Generator(seed, as_of)
    entry = generator.entry
    for index in range(1, count + 1):
        yield entry(index)


def never_listed_id() -> str:
    """A valid resident ID no generated list holds: born 1930, and the generator
    makes ages 18-80. Composed at run time, so no ID number is written in the code."""
    prefix = "110105" + "19300101" + "003"
    return prefix + resident_id_check_char(prefix)
