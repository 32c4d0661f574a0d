"""The quarterly enforcement feedback the courts require, built from hit logs.

Every seller must report, each quarter and within 30 days of its end, what
it enforced against listed people (seed 004). The hit log already holds one
record per check that matched a listed subject; this module turns a
quarter's worth of them into that report: per case number and court, per
channel, the purchases denied (how many, first and last day, which
merchants), the checks sent for review, and the purchases allowed because
the listing was suspended, exempted, expired or the purchase not restricted.

Records are read from every file given (rotated ones included), kept when
their ``time`` falls in the quarter in China time (the day ``china_day``
gives it, as the hit log's rotation does), and counted once however many
replicas, rotations or the Redis stream hold them: a record with the
``check_id``, ``time`` and ``masked_id`` of one counted is that check again
(a duplicate). A check id is a process's random 32-bit prefix and a counter,
so two processes may draw the same prefix: a record with a counted check id
but another time or subject is another check, counted too, and said
(``Totals.collisions``). A line that is
not a hit record is counted in ``skipped_lines``, never fatal: a record
needs a ``check_id``, a ``decision`` of ALLOW, DENY or REVIEW and a ``time``
that is a number of seconds (``true`` is not one). A record of the audit log
is another matter: it means the wrong file was given, and ``NotAHitLog``
says so at once rather than report an empty quarter. The report holds no ID
number, not even masked.

A check is told to each case it matched once, however many entries of the
case matched (a SHIXIN entry and a XIANGAO order of one enforcement case are
two entries, one case): every list type of the case is named, a DENY or
REVIEW counts once, and an ALLOW counts in one ``allowed_*`` column, by a
fixed precedence (``_allowed_because``) over the outcomes of the case's own
matches (each match's ``outcome``: EXEMPTED, NOT_RESTRICTED_CLASS, ...), not
the answer's codes: one answer may hold a SHIXIN entry that does not restrict
the purchase and a XIANGAO order whose exemption lifted it, each its own case.
A record written before matches carried their outcome is read by its codes.

The command reads files opened when it listed their sets
(``server.hitlog.open_log_files``), as they were then, so a rotation while
it runs takes nothing out of the report: it covers every record written
before it began. Files a set is missing, or holds compressed beside it, are
named in ``Totals.missing_files`` and ``unread_files`` (``files_not_read``)
where they may hold records of the quarter.

A withdrawal record (``server.hitlog.HitLog.withdraw``: a hit written for a
call whose answer never left, its audit record unwritten) takes its checks
out of the report: a withdrawn hit of the quarter is counted in ``withdrawn``
and nowhere else. It applies to its check ids wherever their hits are, in
any file given (rotated files, other workers' and replicas' logs, the Redis
stream) and whatever its own time. It names check ids only, so where two
checks share one (``collisions``) it withdraws both. So a report can be read
as records in the quarter = ``checks`` + ``withdrawn`` + ``duplicates``.

``serve --workers N`` writes worker 1 to N's sets; a worker's set missing
below the highest one found (``sets_not_read``) is named in
``Totals.missing_sets``: its checks are not in the report.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from shixin_check.domain.model import CHINA_TZ, china_day
from shixin_check.server.convert import unseen_kind
from shixin_check.server.hitlog import HeldFile, unread_siblings, withdrawn_ids, worker_gaps

REPORT_DUE_DAYS = 30  # seed 004: within 30 days of the quarter's end
_LATEST_TIME = 253402272000  # 10000-01-01 in China time: later stamps are not dates
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_QUARTER = re.compile(r"([0-9]{4})Q([1-4])", re.IGNORECASE | re.ASCII)
DECISIONS = frozenset({"ALLOW", "DENY", "REVIEW"})

HitSource = Path | HeldFile | Mapping[str, Any]


class NotAHitLog(ValueError):
    """A file given as a hit log holds audit-log records: the wrong log was named."""


@dataclass(frozen=True)
class Quarter:
    """A calendar quarter in China time, and when its report is due."""

    year: int
    number: int

    @classmethod
    def parse(cls, text: str) -> Quarter:
        found = _QUARTER.fullmatch(text.strip())
        if not found:
            raise ValueError(f"quarter {text!r} is not like 2026Q3")
        year = int(found.group(1))
        if not 1970 <= year <= 9998:  # 9999Q4's report would be due in year 10000
            raise ValueError(f"quarter {text!r}: the year must be from 1970 to 9998")
        return cls(year, int(found.group(2)))

    def __str__(self) -> str:
        return f"{self.year}Q{self.number}"

    @property
    def start(self) -> _dt.date:
        return _dt.date(self.year, 3 * self.number - 2, 1)

    @property
    def end(self) -> _dt.date:
        if self.number == 4:
            return _dt.date(self.year, 12, 31)
        return _dt.date(self.year, 3 * self.number + 1, 1) - _dt.timedelta(days=1)

    @property
    def due(self) -> _dt.date:
        return self.end + _dt.timedelta(days=REPORT_DUE_DAYS)


@dataclass
class ChannelEnforcement:
    """What one case's restrictions did on one channel during the quarter."""

    channel: str
    denied: int = 0
    first_denied: str = ""  # ISO date, China time
    last_denied: str = ""
    merchants: set[str] = field(default_factory=set)
    #: denials by the role the person checked holds in the case (DEBTOR,
    #: LEGAL_REPRESENTATIVE, ...): the debtor stopped, or a related person
    denied_roles: dict[str, int] = field(default_factory=dict)
    reviews: int = 0
    allowed_suspended: int = 0
    allowed_exempted: int = 0
    allowed_expired: int = 0
    allowed_not_restricted: int = 0

    def deny(self, day: str, merchant: str, roles: set[str]) -> None:
        self.denied += 1
        self.first_denied = min(self.first_denied or day, day)
        self.last_denied = max(self.last_denied, day)
        if merchant:
            self.merchants.add(merchant)
        for role in roles:
            self.denied_roles[role] = self.denied_roles.get(role, 0) + 1


@dataclass
class CaseEnforcement:
    """One case (case number at a court) and its enforcement per channel."""

    case_number: str
    court: str
    list_types: set[str] = field(default_factory=set)
    channels: dict[str, ChannelEnforcement] = field(default_factory=dict)

    def channel(self, name: str) -> ChannelEnforcement:
        if name not in self.channels:
            self.channels[name] = ChannelEnforcement(name)
        return self.channels[name]


@dataclass
class Totals:
    """Counts over the whole quarter (checks, not case matches)."""

    checks: int = 0  # distinct checks in the quarter
    denied: int = 0
    reviews: int = 0
    allowed: int = 0
    #: records of a check already counted (or withdrawn): its check_id, time and subject
    duplicates: int = 0
    withdrawn: int = 0  # checks not counted: withdrawn, their answers never left
    outside_quarter: int = 0
    skipped_lines: int = 0  # not JSON, or not a hit record
    first_skipped: str = ""  # where the first of them is: FILE:LINE ("" when none)
    #: files of the sets read that may hold records of the quarter but were not read
    #: (``files_not_read``): rotated numbers skipped (``logs/hits.jsonl.*.7``, or
    #: ``.*.7-9``: moved, compressed or removed), and files named like rotated ones
    #: with more after the number (``logs/hits.jsonl.20261001.2.gz``: compressed)
    missing_files: list[str] = field(default_factory=list)
    unread_files: list[str] = field(default_factory=list)
    #: checks counted whose check_id an earlier, different check had (another time or
    #: subject): two processes drew the same random prefix
    collisions: int = 0
    #: per-worker sets missing below the highest-numbered one read (``sets_not_read``)
    missing_sets: list[str] = field(default_factory=list)


@dataclass
class Report:
    """One quarter's feedback: cases ordered by court and case number, and the totals."""

    quarter: Quarter
    generated_at: str  # ISO timestamp, China time
    cases: list[CaseEnforcement]
    totals: Totals


def build_report(
    sources: Iterable[HitSource], quarter: str | Quarter, *, now: float | None = None
) -> Report:
    """The report for ``quarter`` from hit-log files (``Path``, or ``HeldFile``: opened
    when its set was listed, and read as it was then) or hit records (mappings)."""
    period = quarter if isinstance(quarter, Quarter) else Quarter.parse(quarter)
    sources = list(sources)  # read twice: a withdrawal may come after its hit
    withdrawn = _withdrawn(sources)
    totals = Totals()
    cases: dict[tuple[str, str], CaseEnforcement] = {}
    #: the (time, subject) of the first check counted under each check_id, and those of
    #: any later check that shares it
    seen: dict[str, tuple[float, str]] = {}
    shared: set[tuple[str, float, str]] = set()
    for record in _records(sources, totals):
        day = _china_date(record["time"])
        if not period.start <= day <= period.end:
            totals.outside_quarter += 1
            continue
        check_id = record["check_id"]
        which = (record["time"], str(record.get("masked_id", "")))
        first = seen.setdefault(check_id, which)
        if first is not which:  # the check_id was counted: this check again, or another
            if first == which or (check_id, *which) in shared:
                totals.duplicates += 1
                continue
            shared.add((check_id, *which))
            totals.collisions += 1
        if check_id in withdrawn:
            totals.withdrawn += 1
        else:
            _count(record, day.isoformat(), cases, totals)
    stamp = _dt.datetime.fromtimestamp(time.time() if now is None else now, CHINA_TZ)
    ordered = sorted(cases.values(), key=lambda c: (c.court, c.case_number))
    return Report(period, stamp.isoformat(timespec="seconds"), ordered, totals)


def _records(sources: Iterable[HitSource], totals: Totals) -> Iterator[Mapping[str, Any]]:
    """Usable hit records; anything else is counted in ``totals.skipped_lines``."""
    for n, source in enumerate(sources, 1):
        if isinstance(source, os.PathLike | HeldFile):
            found: Iterable[tuple[str, object]] = _read(source)
        else:
            found = [(f"record {n}", source)]
        for where, record in found:
            if _is_hit(record):
                yield record
            elif withdrawn_ids(record) is not None:
                continue  # read by ``_withdrawn``
            elif _is_audit(record):
                raise NotAHitLog(
                    f"{where} is an audit-log record, not a hit record: give the hit log "
                    "(serve --hit-log), not the audit log (serve --audit-log)"
                )
            else:
                totals.skipped_lines += 1
                totals.first_skipped = totals.first_skipped or where


def _withdrawn(sources: Iterable[HitSource]) -> set[str]:
    """The check ids every withdrawal record among ``sources`` withdraws.

    Read before the hits are counted, since a withdrawal follows its hit (in
    the same file, or the next of its set). Withdrawals are rare: a file's
    lines are only looked at, and those that name the field parsed.
    """
    found: set[str] = set()
    for source in sources:
        if isinstance(source, HeldFile):  # as far as it goes now: a withdrawal follows its hit
            for raw, _ in source.lines(grown=True):
                if _WITHDRAWN_FIELD in raw:
                    found.update(withdrawn_ids(_loads(raw)) or ())
        elif isinstance(source, os.PathLike):
            with source.open("rb") as f:
                for raw in f:
                    if _WITHDRAWN_FIELD in raw:
                        found.update(withdrawn_ids(_loads(raw)) or ())
        else:
            found.update(withdrawn_ids(source) or ())
    return found


_WITHDRAWN_FIELD = b'"withdrawn"'


def _loads(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _read(source: Path | HeldFile) -> Iterator[tuple[str, object]]:
    """(FILE:LINE, the record or None) for each line that is not blank; of a
    ``HeldFile``, the lines written before its set was listed."""
    if isinstance(source, HeldFile):
        yield from _parsed(source.path, (raw for raw, _ in source.lines()))
    else:
        with source.open("rb") as f:
            yield from _parsed(source, f)


def _parsed(path: Path, lines: Iterable[bytes]) -> Iterator[tuple[str, object]]:
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield f"{path}:{number}", orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield f"{path}:{number}", None


def _is_hit(record: object) -> TypeGuard[Mapping[str, Any]]:
    if not isinstance(record, Mapping):
        return False
    stamp = record.get("time")
    return (
        isinstance(record.get("check_id"), str)
        and isinstance(record.get("decision"), str)
        and record["decision"] in DECISIONS
        and isinstance(stamp, int | float)
        and not isinstance(stamp, bool)  # JSON true is no time, though Python counts it 1
        and 0 <= stamp < _LATEST_TIME
    )


def _is_audit(record: object) -> bool:
    """A record of the audit log (``server.hitlog.AuditLog``): its chain link and method."""
    return (
        isinstance(record, Mapping)
        and isinstance(record.get("seq"), int)
        and isinstance(record.get("prev"), str)
        and isinstance(record.get("method"), str)
    )


def _china_date(unix: float) -> _dt.date:
    """The China-time day of ``unix``, floored as ``china_day`` floors it (the hit log
    rotates by it): ``datetime.fromtimestamp`` rounds to the microsecond, and would
    put 23:59:59.9999998 on the last day of a quarter in the next one."""
    return _dt.date.fromordinal(_EPOCH_ORDINAL + china_day(unix))


@dataclass
class _Matched:
    """What the matches of one case in one record say: list types, statuses, the roles
    the person checked holds, outcomes (``""`` for a match that names none)."""

    list_types: set[str] = field(default_factory=set)
    statuses: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    outcomes: set[str] = field(default_factory=set)


def _cases(record: Mapping[str, Any]) -> dict[tuple[str, str], _Matched]:
    """The matches of each case (case number, court) a record names: a case listed
    twice (a SHIXIN entry and a XIANGAO order of one enforcement case) is one case,
    told once about the check."""
    found: dict[tuple[str, str], _Matched] = {}
    matches = record.get("matches")
    if isinstance(matches, list) and matches:
        for m in matches:
            if isinstance(m, Mapping):
                key = (str(m.get("case_number", "")), str(m.get("court", "")))
                case = found.get(key)
                if case is None:
                    case = found[key] = _Matched()
                case.list_types.add(str(m.get("list_type", "")))
                case.statuses.add(str(m.get("status", "")))
                if m.get("role"):
                    case.roles.add(str(m["role"]))
                outcome = m.get("outcome")
                case.outcomes.add(outcome if isinstance(outcome, str) else "")
    else:  # a record without match details: its case numbers alone
        for number in record.get("case_numbers") or []:
            found.setdefault((str(number), ""), _Matched({""}, {""}, set(), {""}))
    return found


def _count(
    record: Mapping[str, Any],
    day: str,
    cases: dict[tuple[str, str], CaseEnforcement],
    totals: Totals,
) -> None:
    decision = record["decision"]
    codes = set(record.get("codes") or [])
    channel = str(record.get("channel", ""))
    merchant = str(record.get("merchant_id", "") or "")
    totals.checks += 1
    if decision == "DENY":
        totals.denied += 1
    elif decision == "REVIEW":
        totals.reviews += 1
    else:
        totals.allowed += 1
    for (case_number, court), matched in _cases(record).items():
        case = cases.setdefault((case_number, court), CaseEnforcement(case_number, court))
        case.list_types.update(t for t in matched.list_types if t)
        _tally(case.channel(channel), decision, matched, codes, day, merchant)


def _tally(
    enforcement: ChannelEnforcement,
    decision: str,
    matched: _Matched,
    codes: set[str],
    day: str,
    merchant: str,
) -> None:
    """One check, once, on one case's row: ``matched``, what every entry of the case
    that matched says (its status and outcome, the role the person checked holds)."""
    if decision == "DENY":
        enforcement.deny(day, merchant, matched.roles)
    elif decision == "REVIEW":
        enforcement.reviews += 1
    else:
        reason = _allowed_because(matched.statuses, codes, matched.outcomes)
        setattr(enforcement, reason, getattr(enforcement, reason) + 1)


#: An ALLOW's column by the outcomes of a case's own matches, the first found of these
_ALLOWED_BY_OUTCOME = {
    "EXEMPTED": "allowed_exempted",
    "NOT_RESTRICTED_CLASS": "allowed_not_restricted",
    "LISTING_SUSPENDED": "allowed_suspended",
    "EXPIRED": "allowed_expired",
}


def _allowed_because(statuses: set[str], codes: set[str], outcomes: set[str]) -> str:
    """The one ``allowed_*`` column an ALLOW counts in for a case, whichever of its
    entries matched, by a fixed precedence.

    Where every match of the case names its own ``outcome`` (hit records written
    since they do): a restriction first (never written in an ALLOW; read by the
    answer's codes), then EXEMPTED (an entry in force that only a court's exemption
    let the purchase past), NOT_RESTRICTED_CLASS, LISTING_SUSPENDED, EXPIRED. So a
    case counts by what its own entries did, whatever other cases of the answer did.

    Otherwise (a record written before): an entry in force (neither suspended nor
    expired) first, for the purchase passed it only by an exemption or by not being
    restricted, told apart by the answer's codes; then a suspended entry; then an
    expired one. A record without match statuses goes by the answer's codes, in the
    same order from suspended on."""
    if outcomes and "" not in outcomes:
        if outcomes - _ALLOWED_BY_OUTCOME.keys():
            return _exempted_or_not_restricted(codes)
        for outcome, column in _ALLOWED_BY_OUTCOME.items():
            if outcome in outcomes:
                return column
    if statuses - {"SUSPENDED", "EXPIRED", ""}:
        return _exempted_or_not_restricted(codes)
    if "SUSPENDED" in statuses:
        return "allowed_suspended"
    if "EXPIRED" in statuses:
        return "allowed_expired"
    if "LISTING_SUSPENDED" in codes:
        return "allowed_suspended"
    if "EXPIRED" in codes:
        return "allowed_expired"
    return _exempted_or_not_restricted(codes)


def _exempted_or_not_restricted(codes: set[str]) -> str:
    # By the answer's codes alone (a record without per-match outcomes): EXEMPTED
    # alone means it lifted the restriction; both codes are read, as they always were,
    # as not restricted, though since entries are judged by their own list type they
    # may be two cases' (a SHIXIN entry not restricting, a XIANGAO order exempted),
    # which such a record cannot tell apart.
    if "EXEMPTED" in codes and "NOT_RESTRICTED_CLASS" not in codes:
        return "allowed_exempted"
    return "allowed_not_restricted"


def sets_not_read(paths: Iterable[Path]) -> list[str]:
    """The per-worker sets of each hit log named (``hits.w1.jsonl``, ...) missing below
    the highest-numbered one found (``server.hitlog.worker_gaps``): every worker from 1
    writes one, so such a set was moved or removed whole and its checks are not read.
    A highest-numbered set removed whole cannot be seen."""
    missing: list[str] = []
    for path in paths:
        missing += [str(gap) for gap in worker_gaps(path) if str(gap) not in missing]
    return missing


def files_not_read(
    sets: Iterable[tuple[Path, Sequence[HeldFile]]], quarter: Quarter
) -> tuple[list[str], list[str]]:
    """What of each set (its path, and its files as ``open_log_files`` gave them) was
    not read though it may hold records of ``quarter``: (rotated numbers skipped,
    files beside it not read), for ``Totals.missing_files`` and ``unread_files``.

    A set's ``n`` grows by one from 1, so a number skipped below the highest one
    read is a file moved, compressed or removed; a file named like a rotated one
    with more after it (``hits.jsonl.20261001.2.gz``) was compressed or renamed,
    and is not read (unless the file of its number is there too). The day in a rotated file's name is the China day of its
    records (one decided in the last milliseconds of the day before may be in it too), so a number skipped lies between its neighbours' days: only files
    whose days may fall in the quarter, or on the day after it (a withdrawal
    follows its hit, maybe into the next day's file), are named. Files archived
    from older quarters are not.
    """
    first = quarter.start.strftime("%Y%m%d")
    last = (quarter.end + _dt.timedelta(days=1)).strftime("%Y%m%d")
    missing: list[str] = []
    unread: list[str] = []
    for path, files in sets:
        numbers = {(f.n, f.day) for f in files if f.n is not None}
        read = {n for n, _ in numbers}
        beside = [(n, day, file) for n, day, file in unread_siblings(path) if n not in read]
        unread += [str(file) for _, day, file in beside if first <= day <= last]
        numbers |= {(n, day) for n, day, _ in beside}
        below, below_day = 0, ""  # the number before, and its day ("": none, any day)
        for n, day in sorted(numbers):
            if n > below + 1 and below_day <= last and day >= first:
                skipped = f"{below + 1}" if n == below + 2 else f"{below + 1}-{n - 1}"
                missing.append(f"{path}.*.{skipped}")
            below, below_day = n, day
    return missing, unread


# --- output ----------------------------------------------------------------

#: a column added later goes at the end: a consumer reading by position keeps its fields
CSV_COLUMNS = (
    "quarter", "period_start", "period_end", "due_date", "case_number", "court", "list_types",
    "channel", "denied", "first_denied", "last_denied", "merchant_count", "merchants",
    "reviews", "allowed_suspended", "allowed_exempted", "allowed_expired",
    "allowed_not_restricted", "denied_roles",
)  # fmt: skip


def _channel_fields(c: ChannelEnforcement) -> dict[str, Any]:
    return {
        "channel": c.channel,
        "denied": c.denied,
        "denied_roles": dict(sorted(c.denied_roles.items())),
        "first_denied": c.first_denied,
        "last_denied": c.last_denied,
        "merchant_count": len(c.merchants),
        "merchants": sorted(c.merchants),
        "reviews": c.reviews,
        "allowed_suspended": c.allowed_suspended,
        "allowed_exempted": c.allowed_exempted,
        "allowed_expired": c.allowed_expired,
        "allowed_not_restricted": c.allowed_not_restricted,
    }


def _period_fields(report: Report) -> dict[str, str]:
    q = report.quarter
    return {
        "quarter": str(q),
        "period_start": q.start.isoformat(),
        "period_end": q.end.isoformat(),
        "due_date": q.due.isoformat(),
    }


#: a cell a spreadsheet would read as a formula begins with one of these (OWASP, CSV
#: injection); and with a quote, so that one leading quote is always the one added
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _escaped(value: str, separators: str = "") -> str:
    """``value`` as a CSV cell holds it, whatever an old hit record says: a backslash
    before each backslash and each of ``separators`` (a list cell's ``;``, so that a
    merchant ``M1;M2`` stays one), a character no one sees (``unseen_kind``: a
    newline, U+001E, U+202E) written as ``\\u001e`` (``\\U`` and 8 digits past U+FFFF)."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    for separator in separators:
        if separator in value:
            value = value.replace(separator, "\\" + separator)
    if not value.isprintable():
        value = "".join(_visible(char) for char in value)
    return value


def _visible(char: str) -> str:
    if char.isprintable() or unseen_kind(char) is None:
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _cell(value: Any) -> Any:
    """A text cell that would start a formula, after a single quote (OWASP)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def report_csv(report: Report) -> str:
    """One row per case, court and channel; list cells (list types, merchants, denied
    roles) joined with ``;``. Text is escaped (``_escaped``) and kept from starting a
    formula (``_cell``), so the file opens safely whatever the hit logs hold."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    period = _period_fields(report)
    for case in report.cases:
        for name in sorted(case.channels):
            row = {**period, "case_number": _escaped(case.case_number),
                   "court": _escaped(case.court),
                   "list_types": ";".join(_escaped(t, ";") for t in sorted(case.list_types)),
                   **_channel_fields(case.channels[name])}  # fmt: skip
            row["channel"] = _escaped(row["channel"])
            row["merchants"] = ";".join(_escaped(m, ";") for m in row["merchants"])
            row["denied_roles"] = ";".join(
                f"{_escaped(k, ';=')}={v}" for k, v in row["denied_roles"].items()
            )
            writer.writerow({column: _cell(value) for column, value in row.items()})
    return out.getvalue()


def report_json(report: Report) -> str:
    """The whole report, totals included, as indented JSON (UTF-8 text, not escaped)."""
    document = {
        **_period_fields(report),
        "generated_at": report.generated_at,
        "totals": vars(report.totals),
        "cases": [
            {
                "case_number": case.case_number,
                "court": case.court,
                "list_types": sorted(case.list_types),
                "channels": [_channel_fields(case.channels[n]) for n in sorted(case.channels)],
            }
            for case in report.cases
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
