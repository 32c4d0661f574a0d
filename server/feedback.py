"""The quarterly enforcement feedback the courts require, built from hit logs.

Every seller must report, each quarter and within 30 days of its end, what
it enforced against listed people (seed 004). The hit log already holds one
record per check that matched a listed subject; this module turns a
quarter's worth of them into that report: per case number and court, per
channel, the purchases denied (how many, first and last day, which
merchants), the checks sent for review, and the purchases allowed because
the listing was suspended, exempted, expired or the purchase not restricted.

Records are read from every file given (rotated ones included), kept when
their ``time`` falls in the quarter in China time, and counted once per
``check_id`` however many replicas or rotations hold them. A line that is
not a hit record is counted in ``skipped_lines``, never fatal: a record
needs a ``check_id``, a ``decision`` of ALLOW, DENY or REVIEW and a ``time``
that is a number of seconds (``true`` is not one). A record of the audit log
is another matter: it means the wrong file was given, and ``NotAHitLog``
says so at once rather than report an empty quarter. The report holds no ID
number, not even masked.

A withdrawal record (``server.hitlog.HitLog.withdraw``: a hit written for a
call whose answer never left, its audit record unwritten) takes its checks
out of the report: a withdrawn hit of the quarter is counted in ``withdrawn``
and nowhere else. It applies to its check ids wherever their hits are, in
any file given (rotated files, other workers' and replicas' logs, the Redis
stream) and whatever its own time: check ids are unique across processes,
which is what counting each check once relies on. So a report can be read as
records in the quarter = ``checks`` + ``withdrawn`` + ``duplicates``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from shixin_check.domain.model import CHINA_TZ
from shixin_check.server.hitlog import withdrawn_ids

REPORT_DUE_DAYS = 30  # seed 004: within 30 days of the quarter's end
_LATEST_TIME = 253402300800  # 10000-01-01: later stamps are not dates
_QUARTER = re.compile(r"([0-9]{4})Q([1-4])", re.IGNORECASE | re.ASCII)
DECISIONS = frozenset({"ALLOW", "DENY", "REVIEW"})

HitSource = Path | Mapping[str, Any]


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
    reviews: int = 0
    allowed_suspended: int = 0
    allowed_exempted: int = 0
    allowed_expired: int = 0
    allowed_not_restricted: int = 0

    def deny(self, day: str, merchant: str) -> None:
        self.denied += 1
        self.first_denied = min(self.first_denied or day, day)
        self.last_denied = max(self.last_denied, day)
        if merchant:
            self.merchants.add(merchant)


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

    checks: int = 0  # distinct check_ids in the quarter
    denied: int = 0
    reviews: int = 0
    allowed: int = 0
    duplicates: int = 0  # records of a check_id already counted (or withdrawn)
    withdrawn: int = 0  # checks not counted: withdrawn, their answers never left
    outside_quarter: int = 0
    skipped_lines: int = 0  # not JSON, or not a hit record
    first_skipped: str = ""  # where the first of them is: FILE:LINE ("" when none)


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
    """The report for ``quarter`` from hit-log files (``Path``) or hit records (mappings)."""
    period = quarter if isinstance(quarter, Quarter) else Quarter.parse(quarter)
    sources = list(sources)  # read twice: a withdrawal may come after its hit
    withdrawn = _withdrawn(sources)
    totals = Totals()
    cases: dict[tuple[str, str], CaseEnforcement] = {}
    seen: set[str] = set()
    for record in _records(sources, totals):
        day = _china_date(record["time"])
        if not period.start <= day <= period.end:
            totals.outside_quarter += 1
        elif record["check_id"] in seen:
            totals.duplicates += 1
        else:
            seen.add(record["check_id"])
            if record["check_id"] in withdrawn:
                totals.withdrawn += 1
            else:
                _count(record, day.isoformat(), cases, totals)
    stamp = _dt.datetime.fromtimestamp(time.time() if now is None else now, CHINA_TZ)
    ordered = sorted(cases.values(), key=lambda c: (c.court, c.case_number))
    return Report(period, stamp.isoformat(timespec="seconds"), ordered, totals)


def _records(sources: Iterable[HitSource], totals: Totals) -> Iterator[Mapping[str, Any]]:
    """Usable hit records; anything else is counted in ``totals.skipped_lines``."""
    for n, source in enumerate(sources, 1):
        if isinstance(source, os.PathLike):
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
        if isinstance(source, os.PathLike):
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


def _read(path: Path) -> Iterator[tuple[str, object]]:
    """(FILE:LINE, the record or None) for each line that is not blank."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
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
    return _dt.datetime.fromtimestamp(unix, CHINA_TZ).date()


def _case_matches(record: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(case_number, court, list_type, status) per match, each case once."""
    matches = record.get("matches")
    if isinstance(matches, list) and matches:
        found = [
            (str(m.get("case_number", "")), str(m.get("court", "")),
             str(m.get("list_type", "")), str(m.get("status", "")))
            for m in matches if isinstance(m, Mapping)
        ]  # fmt: skip
    else:  # a record without match details: its case numbers alone
        found = [(str(n), "", "", "") for n in record.get("case_numbers") or []]
    return list(dict.fromkeys(found))


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
    for case_number, court, list_type, status in _case_matches(record):
        case = cases.setdefault((case_number, court), CaseEnforcement(case_number, court))
        if list_type:
            case.list_types.add(list_type)
        _tally(case.channel(channel), decision, status, codes, day, merchant)


def _tally(
    enforcement: ChannelEnforcement,
    decision: str,
    status: str,
    codes: set[str],
    day: str,
    merchant: str,
) -> None:
    if decision == "DENY":
        enforcement.deny(day, merchant)
    elif decision == "REVIEW":
        enforcement.reviews += 1
    elif status == "SUSPENDED" or (not status and "LISTING_SUSPENDED" in codes):
        enforcement.allowed_suspended += 1
    elif status == "EXPIRED" or (not status and "EXPIRED" in codes):
        enforcement.allowed_expired += 1
    # Both codes in one answer mean the purchase was not restricted at all, so the
    # exemption decided nothing; EXEMPTED alone means it lifted the restriction.
    elif "EXEMPTED" in codes and "NOT_RESTRICTED_CLASS" not in codes:
        enforcement.allowed_exempted += 1
    else:
        enforcement.allowed_not_restricted += 1


# --- output ----------------------------------------------------------------

CSV_COLUMNS = (
    "quarter", "period_start", "period_end", "due_date", "case_number", "court", "list_types",
    "channel", "denied", "first_denied", "last_denied", "merchant_count", "merchants",
    "reviews", "allowed_suspended", "allowed_exempted", "allowed_expired",
    "allowed_not_restricted",
)  # fmt: skip


def _channel_fields(c: ChannelEnforcement) -> dict[str, Any]:
    return {
        "channel": c.channel,
        "denied": c.denied,
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


def report_csv(report: Report) -> str:
    """One row per case, court and channel; merchants joined with ``;``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    period = _period_fields(report)
    for case in report.cases:
        for name in sorted(case.channels):
            row = {**period, "case_number": case.case_number, "court": case.court,
                   "list_types": ";".join(sorted(case.list_types)),
                   **_channel_fields(case.channels[name])}  # fmt: skip
            row["merchants"] = ";".join(row["merchants"])
            writer.writerow(row)
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
