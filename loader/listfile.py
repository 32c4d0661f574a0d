"""Reading the credit platform's list files: snapshots and deltas.

Formats (DESIGN §4): a snapshot is JSON Lines, one entry per line, or a CSV
with the same column names, nested fields flattened with dots
(``subject.id_number``, ``related_persons.0.role``). A delta is JSON Lines of
``{"seq", "op", ...}``. Each row is validated and normalised into a
``ListEntry`` or ``DeltaOp``; a bad row becomes a ``RowError`` with its line
number and the field at fault. Callers decide what to do with errors: the
loader refuses the whole file if there is any (``LoadRejected``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import difflib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, cast

import orjson

from shixin_check.domain.errors import InvalidInput, LoadRejected, RowError
from shixin_check.domain.identity import (
    IdType,
    normalize_person_id,
    normalize_uscc,
    other_reading,
    permit_card,
    refuse_controls,
    refuse_misread,
)
from shixin_check.domain.model import (
    NO_END,
    Channel,
    EntryStatus,
    Exemption,
    ListedSubject,
    ListEntry,
    ListType,
    Role,
    china_day,
    day_iso,
    day_number,
)
from shixin_check.loader.feed import (
    HEADER_KEY,
    MAX_SEQ,
    feed_time,
    is_header,
    parse_instant,
    strip_bom,
    written_at,
)


class FileKind(Enum):
    """Snapshots replace the list; deltas change it."""

    SNAPSHOT = "snapshot"
    DELTA = "delta"


class DeltaKind(Enum):
    """The ops a delta file may hold."""

    LIST = "LIST"
    DELIST = "DELIST"
    SUSPEND = "SUSPEND"
    RESUME = "RESUME"
    EXEMPT = "EXEMPT"
    UNEXEMPT = "UNEXEMPT"


@dataclass(frozen=True, slots=True)
class DeltaOp:
    """One change to apply on top of the current list, in ``seq`` order."""

    seq: int
    op: DeltaKind
    entry_id: str
    entry: ListEntry | None = None
    exemption: Exemption | None = None
    line: int = 0
    published_at: float | None = None  # the feed's time for this op, when the row gives one


#: The keys an entry row may hold (DESIGN §4; README "Snapshot files"): those read here
#: and those of a court's record that nothing here reads. Any other key is a bad row
#: naming it (``_known``): a misspelt ``related_persons`` left out silently would leave
#: an organisation's legal representative free to buy.
ENTRY_FIELDS = frozenset({
    "entry_id", "list_type", "subject", "related_persons", "case_number", "court",
    "basis_document", "basis_issuer", "obligation", "performance", "circumstance",
    "published_on", "filed_on", "performed_part", "unperformed_part", "severity",
    "valid_until", "status", "exemptions",
})  # fmt: skip
#: a subject's keys: a person's (gender and age read by nothing) and an organisation's
SUBJECT_FIELDS = frozenset({
    "type", "name", "id_type", "id_number", "gender", "age", "uscc", "legal_representative",
})  # fmt: skip
RELATED_FIELDS = frozenset({"role", "name", "id_type", "id_number"})
EXEMPTION_FIELDS = frozenset({"channel", "from", "until", "id_type", "id_number"})
#: what a key that is no field most likely is, where no field's name is close to it
_KEY_HINTS = {HEADER_KEY: "a snapshot's header is its first row only"}

_LIST_TYPES = {t.name: t for t in ListType}
_STATUSES = {"ACTIVE": EntryStatus.ACTIVE, "SUSPENDED": EntryStatus.SUSPENDED}
_RELATED_ROLES = {r.name: r for r in Role if r is not Role.DEBTOR}
_ID_TYPES = {t.name: t for t in IdType}
_CHANNELS = {c.name: c for c in Channel}


def detect_kind(path: Path) -> FileKind:
    """What a list file is, or ``LoadRejected`` when that cannot be told or is contradictory.

    CSV files are snapshots; a JSON Lines file is a delta when its first row has
    ``op``. A name beginning ``delta-`` or ``snapshot-`` says what the file must
    be: content that disagrees refuses the file (a snapshot named as a delta
    would otherwise replace the list, a delta named as a snapshot be ignored).
    A first row that is not JSON is read as the name says, so the loader reports
    that row; a file with no such name whose first row is not JSON is refused
    as such, never taken for a snapshot that is older than the one served.
    """
    kind, problem = sniff_kind(path)
    if problem is not None:
        raise LoadRejected(str(path), [problem])
    return kind


def named_kind(path: Path) -> FileKind | None:
    """The kind a file's name gives (``delta-0003.jsonl``, ``snapshot-0002.csv``), if any."""
    name = path.name.lower()
    if name.startswith("delta-"):
        return FileKind.DELTA
    if name.startswith("snapshot-"):
        return FileKind.SNAPSHOT
    return None


def sniff_kind(path: Path) -> tuple[FileKind, RowError | None]:
    """(the kind a file is taken for, why it cannot be loaded as anything, if so)."""
    named = named_kind(path)
    if path.suffix.lower() == ".csv":
        if named is FileKind.DELTA:
            return FileKind.DELTA, RowError(
                0, "", "is named as a delta, but a delta is JSON Lines (a CSV file is a snapshot)"
            )
        return FileKind.SNAPSHOT, None
    line_no, first = 0, None
    with path.open("rb") as fh:
        for raw in fh:
            line_no += 1
            if line_no == 1:
                raw = strip_bom(raw)
            if not raw.strip():
                continue
            try:
                first = orjson.loads(raw)
            except orjson.JSONDecodeError:
                if named is not None:
                    return named, None  # the loader reports the row, as a row of that kind
                # worded as the loader words the row (not valid UTF-8, CR line ends, ...)
                ended = raw.endswith(b"\n")
                why = _not_json(raw[:-1] if ended else raw, line_no, ended).problem
                return FileKind.SNAPSHOT, RowError(
                    line_no, "", f"cannot tell a snapshot from a delta: {why}"
                )
            break
    if first is None:  # empty: refused as a snapshot with no entries, or a delta of nothing
        return named or FileKind.SNAPSHOT, None
    content = FileKind.DELTA if isinstance(first, dict) and "op" in first else FileKind.SNAPSHOT
    if named is not None and named is not content:
        has = "has op" if content is FileKind.DELTA else "has no op"
        return content, RowError(
            line_no, "", f"is named as a {named.value} but its first row {has}, as a "
            f"{content.value}'s does: rename it or have the feed fix it",
        )  # fmt: skip
    return content, None


def iter_rows(
    path: Path, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(line number, parsed object or the error) for each non-blank row.

    ``start``/``end`` (JSON Lines only) read the lines beginning in that byte
    range, numbered from 1 at ``start``: how load workers split a big file.
    """
    if path.suffix.lower() == ".csv":
        yield from _iter_csv(path)
        return
    first = start == 0
    for lines, first_line, unended in line_blocks(path, start, end):
        for line_no, raw in enumerate(lines, first_line):
            item = row_of(raw, line_no, unended)
            if item is None:
                continue
            if first and type(item) is dict:
                first = False
                if is_header(item):
                    continue  # the snapshot's header (loader.feed), not an entry
            yield line_no, item


def line_blocks(
    path: Path, start: int = 0, end: int | None = None
) -> Iterator[tuple[list[bytes], int, int]]:
    """The lines of a JSON Lines file (those beginning in [start, end)) a block at a
    time: (lines without their newlines, the number of the first, the number of the
    file's last line when it has no newline and is in this block, else 0). A UTF-8
    byte order mark before the first line is dropped."""
    line_no = 0
    with path.open("rb") as fh:
        fh.seek(start)
        for block in _blocks(fh, end):
            lines = block.split(b"\n")
            if lines[-1] == b"":  # the block ends with a newline: no row after it
                lines.pop()
                unended = 0
            else:  # the file's last line, with no newline
                unended = line_no + len(lines)
            if line_no == 0 and start == 0:  # a UTF-8 byte order mark (a Windows export)
                lines[0] = strip_bom(lines[0])
            yield lines, line_no + 1, unended
            line_no += len(lines)


def row_of(raw: bytes, line_no: int, unended: int) -> dict[str, Any] | RowError | None:
    """One line of a JSON Lines file: its object, its error, or None when blank."""
    try:  # parse first: a blank line is rare, checking every line for one is not
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if not raw.strip():
            return None
        return _not_json(raw, line_no, line_no != unended)
    if type(obj) is not dict:
        return RowError(line_no, "", "a row must be a JSON object")
    return cast(dict[str, Any], obj)


#: Why a file written with classic Mac line ends (a lone CR, Excel's "CSV (Macintosh)")
#: is refused: read by lines, the whole file is one line
CR_ONLY = "line ends are CR only (classic Mac); save the file with LF or CRLF line ends"


def _not_json(raw: bytes, line_no: int, had_newline: bool) -> RowError:
    try:  # orjson words a byte that is not UTF-8 as a surrogate: say what it is
        raw.decode()
    except UnicodeDecodeError as exc:
        return RowError(
            line_no, "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        )
    if b"\r" in raw.rstrip(b"\r"):  # a CR inside the line (JSON reads it as white space)
        first = raw.strip(b"\r").split(b"\r", 1)[0]
        try:  # the line up to its first CR is a row: the file's lines end with CR alone
            orjson.loads(first)
        except orjson.JSONDecodeError:
            pass
        else:
            return RowError(line_no, "", CR_ONLY)
    try:  # orjson's message (its line and column) as for the line read with its newline
        orjson.loads(raw + b"\n" if had_newline else raw)
    except orjson.JSONDecodeError as exc:
        return RowError(line_no, "", f"not valid JSON ({exc})")
    return RowError(line_no, "", "not valid JSON")  # pragma: no cover - raw did not parse


#: Bytes read at a time: big enough that reading costs nothing per line.
_BLOCK = 4 * 1024 * 1024


def _blocks(fh: Any, end: int | None) -> Iterator[bytes]:
    """Whole lines from ``fh``'s position: those beginning before ``end`` (all when None)."""
    position = fh.tell()
    carry = b""
    while end is None or position < end:
        data = fh.read(_BLOCK if end is None else min(_BLOCK, end - position))
        if not data:
            break
        position += len(data)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry += data
            continue
        yield carry + data[:cut]
        carry = data[cut:]
    if carry:  # a line that began before ``end`` runs on past it, or the file has no last newline
        yield carry + (fh.readline() if end is not None else b"")


def line_starts(path: Path, pieces: int) -> list[int]:
    """Byte offsets splitting a JSON Lines file into about ``pieces`` runs of whole lines."""
    size = path.stat().st_size
    offsets = [0]
    with path.open("rb") as fh:
        for i in range(1, pieces):
            fh.seek(size * i // pieces)
            fh.readline()  # to the start of the next line
            at = fh.tell()
            if offsets[-1] < at < size:
                offsets.append(at)
    return offsets + [size]


#: The longest CSV field read, in characters: the most ``csv.field_size_limit`` takes on
#: every platform (a C long). A JSON Lines row may be of any length, so a CSV cell may be
#: as long as any line (the csv module's own limit, 131,072, made a longer one an uncaught
#: ``_csv.Error``: no file was read, and a followed folder's thread died)
CSV_FIELD_LIMIT = 2**31 - 1

#: A CSV record that csv.reader has read to its end: each field unquoted, or quoted and
#: closed. A record the file's end cut off inside quotes does not match (the strict
#: reader says so itself, ``unexpected end of data``; this stays as the check of it).
_QUOTED = r'"[^"]*(?:""[^"]*)*"(?:[^",\r\n][^,\r\n]*)?'
_UNQUOTED = r'(?:[^",\r\n][^,\r\n]*)?'
_FIELD = f"(?:{_QUOTED}|{_UNQUOTED})"
_CLOSED_RECORD = re.compile(rf"{_FIELD}(?:,{_FIELD})*(?:\r\n|\n|\r)?\Z")


class _CsvLines:
    """A CSV file's lines as text for ``csv.reader`` (a UTF-8 byte order mark dropped), up
    to the first that is not UTF-8, which goes into ``undecodable`` with its line and
    column. It keeps the lines of the record being read (``record``), the number of the
    last line read (``number``) and whether the reader came to the file's end (``ended``)."""

    def __init__(self, fh: Any, undecodable: list[RowError]) -> None:
        self._fh = fh
        self.undecodable = undecodable
        self.number = 0
        self.record: list[str] = []
        self.ended = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self.ended or self.undecodable:
            raise StopIteration
        raw: bytes = self._fh.readline()
        if not raw:
            self.ended = True
            raise StopIteration
        self.number += 1
        try:
            line = raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            self.undecodable.append(RowError(
                self.number, "", f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); the rest of the file was not read",
            ))  # fmt: skip
            raise StopIteration from None
        self.record.append(line)
        return line


def _csv_problem(exc: csv.Error, lines: _CsvLines) -> str:
    """What a record csv.reader cannot read is, in the file's terms."""
    line = lines.record[-1] if lines.record else ""
    if "new-line character" in str(exc):  # a CR (a lone one: LF ends every line read)
        if "\n" not in line and "\r" in line.rstrip("\r"):  # no LF at all: CR ends lines
            return CR_ONLY
        return (
            "holds a carriage return (CR) outside quotes: quote the field that holds it, "
            "or save the file with LF or CRLF line ends"
        )
    if "field limit" in str(exc):
        return f"holds a field longer than {csv.field_size_limit():,} characters"
    if "expected after" in str(exc):  # strict: a closing quote, then more text
        return (
            "a quoted field is followed by more text before the next comma: a quote inside "
            'a quoted field is written twice (""), and a field with a quote in it is '
            "quoted whole"
        )
    if "unexpected end of data" in str(exc):  # strict: the file ends inside quotes
        return (
            "a quoted field opened in this row is never closed: the rest of the file "
            f"(to line {lines.number}) was read into it"
        )
    return f"is not a CSV record ({exc})"  # pragma: no cover - the errors above are all


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Each record of a CSV snapshot, numbered by the line it starts on (a quoted field
    may hold line breaks): its row, or why it is bad. A record the csv module cannot
    read is a bad row like any other, and the records after it are read on."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:  # the process's setting: only ever raised
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with path.open("rb") as fh:
        lines = _CsvLines(fh, [])
        # strict: a quote closed and followed by anything but a comma or the line's end is
        # an error, not text; leniently, a stray quote in one row made the next row's
        # opening quote close it and swallowed that row, a listed person, unreported
        reader = csv.reader(lines, strict=True)
        header: list[str] | None = None
        while not (lines.ended or lines.undecodable):
            line_no = lines.number + 1
            lines.record.clear()
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield line_no, RowError(line_no, "", _csv_problem(exc, lines))
                if header is None:  # without its header no row can be read
                    break
                continue
            if lines.ended and not _CLOSED_RECORD.match("".join(lines.record)):
                yield line_no, RowError(line_no, "", (
                    "a quoted field opened in this row is never closed: the rest of the file "
                    f"(to line {lines.number}) was read into it"
                ))  # fmt: skip
                continue
            if header is None:  # the first record, as csv.DictReader takes it
                header = cells
                continue
            if not cells:  # a blank line
                continue
            if len(cells) > len(header):
                yield line_no, RowError(line_no, "", "more cells than header columns")
                continue
            row: dict[str, str | None] = dict(zip(header, cells, strict=False))
            for column in header[len(cells) :]:  # fewer cells: the rest are missing
                row[column] = None
            try:
                yield line_no, _unflatten(row)
            except InvalidInput as exc:
                yield line_no, RowError(line_no, exc.field, exc.problem)
    for error in lines.undecodable:  # the file ends for the reader at the line it cannot decode
        yield error.line, error


#: items of one list a CSV row may number (related_persons.0 to .99, exemptions likewise)
MAX_CSV_ITEMS = 100


def _unflatten(row: dict[str, str | None]) -> dict[str, Any]:
    """``{"subject.name": "x", "related_persons.0.role": "PRINCIPAL"}`` to nested values."""
    out: dict[str, Any] = {}
    for column, value in row.items():
        if value is None or value == "":
            continue
        parts = column.strip().split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part.isdigit():
                if not isinstance(node, list):
                    raise InvalidInput(column, "numbered column under a field that is not a list")
                # ("³".isdigit() is true and int() refuses it; 5,000 digits int() refuses too)
                if not part.isascii() or len(part) > 3 or int(part) >= MAX_CSV_ITEMS:
                    raise InvalidInput(column, f"numbered from 0 to {MAX_CSV_ITEMS - 1}")
                index = int(part)
                while len(node) <= index:
                    node.append({})
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif last:
                node[part] = value
            else:
                nxt = parts[i + 1]
                node = node.setdefault(part, [] if nxt.isdigit() else {})
    for name in ("related_persons", "exemptions"):
        if isinstance(out.get(name), str):  # a JSON list in one cell
            try:
                out[name] = orjson.loads(out[name])
            except orjson.JSONDecodeError:
                raise InvalidInput(name, "is not a JSON list") from None
    return out


# --- rows to domain values ---------------------------------------------------


def _text(obj: dict[str, Any], name: str, prefix: str = "", required: bool = True) -> str:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(prefix + name, "is required")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(prefix + name, "must be a string")
    value = value.strip()
    if not value:  # white space only: as good as missing
        if required:
            raise InvalidInput(prefix + name, "is required (it is only white space)")
        return ""
    # a case number with a tab or \x1f in it is a broken export, and \x1f would
    # split the index's text column (entry_id \x1f case_number \x1f name) wrongly
    refuse_controls(value, prefix + name)
    return value


_DAYS: dict[str, int] = {}  # a list has a few thousand distinct dates: parse each once


#: The first day a ``published_on``, ``valid_until`` or exemption date may be, but for
#: 1970-01-01 (day 0, read as no date): no list existed before it (the courts' list began
#: in 2013). An earlier date is what an export writes for an empty one: 1900-01-01 (SQL
#: Server), 1899-12-30 (Excel), 1753-01-01 (SQL datetime), 0001-01-01 (.NET); read as a
#: date, such a ``valid_until`` would make the entry expired and clear a listed person.
#: loader/_rowcheck.c holds the same day (``EARLIEST_DAY``).
EARLIEST_DAY = day_number(_dt.date(2000, 1, 1))


def before_any_list(text: str, required: bool = False) -> str:
    """Why a date before ``EARLIEST_DAY`` (not 1970-01-01) is refused: for a field that
    may be left out, saying so; for a required one (an exemption's ``from`` and
    ``until``), not: left empty it would be refused as required."""
    advice = REQUIRED_DATE if required else "leave the field empty or null"
    return (
        f"{text!r} is before {day_iso(EARLIEST_DAY)}, before any list existed (an export's "
        f"placeholder for an empty date? {advice})"
    )


#: What a required date given as an export's placeholder for an empty one needs
REQUIRED_DATE = "the field is required: give the date the court set"


def empty_date_placeholder(text: str) -> str:
    """Why 1970-01-01 (day 0, what exports write for an empty date) is refused in a
    required date: read as a date, an exemption ``from`` it would run from 1970."""
    return f"{text!r} is what exports write for an empty date, and {REQUIRED_DATE}"


def _date(
    obj: dict[str, Any], name: str, prefix: str = "", required: bool = False, missing: int = 0,
    early_ok: bool = False,
) -> int:  # fmt: skip
    """A date field's day number; ``missing`` when the row leaves it out.

    A day before ``EARLIEST_DAY`` other than 0 is refused (``before_any_list``), or
    with ``early_ok`` (a date nothing reads: ``filed_on``) returned; either way it is
    never kept in ``_DAYS``, so a date found there is good for every field that may be
    left out (the C row checker takes its dates from there alone). Day 0 is no date:
    ``missing``'s stand-in where the field may be left out, refused where it is
    ``required`` as a missing date is."""
    text = obj.get(name)
    day = _DAYS.get(text) if type(text) is str else None
    if day is not None and (day or not required):
        return day
    text = _text(obj, name, prefix, required)
    if not text:
        return missing
    try:
        if not _DAY_FORM.fullmatch(text):  # fromisoformat reads week dates too: 2026-W53
            raise ValueError(text)
        day = day_number(_dt.date.fromisoformat(text))
    except ValueError:
        raise InvalidInput(
            prefix + name, f"{text!r} is not a date of the form YYYY-MM-DD (or YYYYMMDD)"
        ) from None
    if day == 0 and required:
        raise InvalidInput(prefix + name, empty_date_placeholder(text))
    if 0 != day < EARLIEST_DAY:
        if early_ok:
            return day
        raise InvalidInput(prefix + name, before_any_list(text, required))
    if len(_DAYS) < 100_000:
        _DAYS[text] = day
    return day


#: the forms of a date a list may use: ``2026-12-31`` and the same without dashes (an
#: export's ``20261231``); not the other forms ``date.fromisoformat`` reads, whose week
#: dates would move a day silently (``2026-W01-1`` is 2025-12-29)
_DAY_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}")


def today() -> int:
    """Today's day number in China, the courts' calendar."""
    return china_day(time.time())


#: Days a ``published_on`` may lie after today in China before the row is refused: a
#: feed stamped just after midnight, read on a host whose clock is behind, is no error
#: (a list folder's file refused for it is read again when the day changes)
PUBLISHED_AHEAD_DAYS = 1


def not_published_yet(published: int) -> str:
    """Why a ``published_on`` days after today is refused: a date no court gave (the
    list's time is never taken past now, ``versions.source_time``, so it cannot make
    an old list read as fresh)."""
    return (
        f"{day_iso(published)!r} is after today ({day_iso(today())}, China time): an entry "
        "is not listed before the court publishes it"
    )


def _choice(obj: dict[str, Any], name: str, table: dict[str, Any], prefix: str = "",
            default: str | None = None) -> Any:  # fmt: skip
    value = obj.get(name)
    if value is None or value == "":  # as _text: missing; any other value must be a name
        value = default
        if value is None:
            raise InvalidInput(prefix + name, "is required")
    found = table.get(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidInput(prefix + name, f"{value!r} is not one of {', '.join(table)}")
    return found


def _known(obj: dict[str, Any], fields: frozenset[str], prefix: str, what: str) -> None:
    """``InvalidInput`` naming the first key of ``obj`` that is not one of ``fields``
    (and the field it is likely a slip for): a key read by nothing is a feed's mistake
    (``relatedPersons``, ``related_person``, ``validUntil``), never dropped silently."""
    if obj.keys() <= fields:
        return
    for key in obj:
        if key not in fields:
            plain = key.isprintable() and key.strip() == key != "" and len(key) <= 64
            shown = key if plain else repr(key[:64]) + ("..." if len(key) > 64 else "")
            raise InvalidInput(prefix + shown, f"is not a field of {what}{_hint(key, fields)}")


def _hint(key: str, fields: frozenset[str]) -> str:
    """`` (did you mean related_persons?)`` for a key that is a slip for a field, or ``""``."""
    folded = key.lower().replace("_", "").replace("-", "").replace(" ", "")
    near = [f for f in sorted(fields) if f.replace("_", "") == folded]
    near = near or difflib.get_close_matches(key.lower(), sorted(fields), n=1, cutoff=0.75)
    if near:
        return f" (did you mean {near[0]}?)"
    return f" ({_KEY_HINTS[key]})" if key in _KEY_HINTS else ""


def _listed(obj: dict[str, Any], name: str) -> Any:
    """A list field: missing, null and "" are no items; anything else must be a list
    (``{}``, ``0`` or ``false`` is a mistake, not "none")."""
    value = obj.get(name)
    return [] if value is None or value == "" else value


def _person(obj: Any, prefix: str, role: Role) -> ListedSubject:
    if not isinstance(obj, dict):
        raise InvalidInput(prefix.rstrip("."), "must be an object")
    id_type: IdType = _choice(obj, "id_type", _ID_TYPES, prefix, default="RESIDENT_ID")
    number = normalize_person_id(id_type, _text(obj, "id_number", prefix), prefix + "id_number")
    keyed_as, number = as_resident(id_type, number, prefix + "id_number")
    return ListedSubject(role, _text(obj, "name", prefix), keyed_as, number)


def as_resident(
    id_type: IdType, number: str, field: str = "id_number"
) -> tuple[IdType | None, str]:
    """A person's identity as the list keys it: a number under a document type
    that plainly is another identity (``identity.other_reading``) is kept as that
    identity, where a check by it looks: a resident ID as that resident ID, a USCC
    (a sole proprietor's ``92...`` listed as a person) as that organisation
    (``None``, the USCC key space), where a check by USCC looks. A check under the
    document type finds it too, through the same reading (``convert.to_query``). A
    Home Return Permit number in the old booklet's form (under any type: its letter
    marks it), or a Taiwan permit's given as one, is kept as the card's number
    (``identity.permit_card``), which a check by either form looks up. Ten digits
    under another type stay as given: two people's passports that share their first
    eight digits must not become one person (an exemption of one would free both).

    A number that no check could find is refused (``InvalidInput`` naming ``field``):
    one keying slip from a resident ID or a foreign permanent resident card, which a
    check refuses under every document type (``identity.refuse_misread``)."""
    if id_type is not IdType.RESIDENT_ID:
        other = other_reading(id_type, number)
        if other is not None:
            return other
        if 15 <= len(number) <= 19:
            refuse_misread(id_type, number, field, "list")
        card = permit_card(number)
        if card is not None and (card[0] is IdType.HK_MACAO_PERMIT or card[0] is id_type):
            return card
    return id_type, number


def _exemption(obj: Any, prefix: str) -> Exemption:
    """An exemption as a row gives it: channel, dates and, when named, the person it
    covers (``id_type``, default RESIDENT_ID, and ``id_number``, normalised as a
    related person's). Whether that person is in the entry is ``exempted_in``'s to say.

    A number that is no person's document but reads as a USCC is kept as that USCC
    (``id_type`` None), so that naming the organisation itself is refused as such."""
    if not isinstance(obj, dict):
        raise InvalidInput(prefix.rstrip("."), "must be an object")
    _known(obj, EXEMPTION_FIELDS, prefix, "an exemption")
    channel: Channel = _choice(obj, "channel", _CHANNELS, prefix)
    first = _date(obj, "from", prefix, required=True)
    last = _date(obj, "until", prefix, required=True)
    if last < first:
        raise InvalidInput(prefix + "until", "is before from")
    id_type: IdType = _choice(obj, "id_type", _ID_TYPES, prefix, default="RESIDENT_ID")
    text = _text(obj, "id_number", prefix, required=False)
    if not text:
        return Exemption(channel, first, last)
    try:
        number = normalize_person_id(id_type, text, prefix + "id_number")
    except InvalidInput:
        try:
            return Exemption(channel, first, last, None, normalize_uscc(text, prefix + "id_number"))
        except InvalidInput:
            pass
        raise
    keyed_as, number = as_resident(id_type, number, prefix + "id_number")
    return Exemption(channel, first, last, keyed_as, number)


#: Why an exemption is refused (``exempted_in``, and the delta paths that cannot hold
#: a ``ListEntry``: ``versions``, ``publish_redis``): the SPC rules let a court allow a
#: listed *person* a consumption paid from personal assets, and no one else with it.
EXEMPTION_NEEDS_PERSON = (
    "is required on an organisation's entry: name the related person the court allowed "
    "(an organisation has no personal assets)"
)
EXEMPTION_NAMES_ORGANISATION = (
    "names the organisation itself, which has no personal assets: name the related person "
    "the court allowed"
)
EXEMPTION_NAMES_NO_ONE = "names no one in this entry: name its debtor or one of its related persons"


def exempted_in(entry: ListEntry, exemption: Exemption, field: str) -> Exemption:
    """``exemption`` naming the person of ``entry`` it covers, or ``InvalidInput`` on
    ``field`` (its ``id_number``). Unnamed, it covers the debtor of a person's entry
    (so feeds that name no one keep their meaning); an organisation's entry must name
    one of its related persons."""
    debtor = entry.debtor
    # an organisation's entry has its name; a person's debtor may still be keyed by a
    # USCC (``as_resident``: a sole proprietor's code given as a document number)
    organisation = bool(entry.organization_name)
    if not exemption.id_number:
        if organisation:
            raise InvalidInput(field, EXEMPTION_NEEDS_PERSON)
        return exemption._replace(id_type=debtor.id_type, id_number=debtor.id_number)
    same_as_debtor = (exemption.id_type, exemption.id_number) == (debtor.id_type, debtor.id_number)
    if organisation and same_as_debtor:
        raise InvalidInput(field, EXEMPTION_NAMES_ORGANISATION)
    if any(entry.exempts(exemption, subject) for subject in entry.subjects()):
        return exemption
    raise InvalidInput(field, EXEMPTION_NAMES_NO_ONE)


def parse_entry(obj: dict[str, Any], prefix: str = "") -> ListEntry:
    """One snapshot row (or a delta's ``entry``), validated and normalised."""
    _known(obj, ENTRY_FIELDS, prefix, "an entry")  # first: a misspelt key explains what is missing
    entry_id = _text(obj, "entry_id", prefix)
    list_type: ListType = _choice(obj, "list_type", _LIST_TYPES, prefix)
    status: EntryStatus = _choice(obj, "status", _STATUSES, prefix, default="ACTIVE")
    subject = obj.get("subject")
    sp = prefix + "subject."
    if not isinstance(subject, dict):
        raise InvalidInput(prefix + "subject", "is required and must be an object")
    _known(subject, SUBJECT_FIELDS, sp, "a subject")
    kind = subject.get("type")
    related: tuple[ListedSubject, ...] = ()
    organization_name = ""
    if kind == "PERSON":
        debtor = _person(subject, sp, Role.DEBTOR)
    elif kind == "ORGANIZATION":
        organization_name = _text(subject, "name", sp)
        uscc = normalize_uscc(_text(subject, "uscc", sp), sp + "uscc")
        debtor = ListedSubject(Role.DEBTOR, organization_name, None, uscc)
    else:
        raise InvalidInput(sp + "type", f"{kind!r} is not one of PERSON, ORGANIZATION")
    people = _listed(obj, "related_persons")
    if not isinstance(people, list):
        raise InvalidInput(prefix + "related_persons", "must be a list")
    if people and kind != "ORGANIZATION":
        raise InvalidInput(prefix + "related_persons", "only an organisation has related persons")
    for i, p in enumerate(people):
        if not isinstance(p, dict):  # before its role is looked for
            raise InvalidInput(f"{prefix}related_persons.{i}", "must be an object")
        _known(p, RELATED_FIELDS, f"{prefix}related_persons.{i}.", "a related person")
    related = tuple(
        _person(p, f"{prefix}related_persons.{i}.", _choice(
            p, "role", _RELATED_ROLES, f"{prefix}related_persons.{i}."))
        for i, p in enumerate(people)
    )  # fmt: skip
    exemptions_raw = _listed(obj, "exemptions")
    if not isinstance(exemptions_raw, list):
        raise InvalidInput(prefix + "exemptions", "must be a list")
    exemptions = tuple(
        _exemption(e, f"{prefix}exemptions.{i}.") for i, e in enumerate(exemptions_raw)
    )
    published = _date(obj, "published_on", prefix)
    if published > today() + PUBLISHED_AHEAD_DAYS:
        raise InvalidInput(prefix + "published_on", not_published_yet(published))
    # left out, or 1970-01-01 (day 0: what exports write for an empty date): no end.
    # Never "expired": that would clear a listed person (as would another placeholder,
    # 1900-01-01: _date refuses those)
    valid_until = _date(obj, "valid_until", prefix) or NO_END
    if published and valid_until < published:
        raise InvalidInput(prefix + "valid_until", "is before published_on")
    _date(obj, "filed_on", prefix, early_ok=True)  # read by nothing: its placeholder is harmless
    entry = ListEntry(
        entry_id=entry_id,
        list_type=list_type,
        status=status,
        case_number=_text(obj, "case_number", prefix),
        court=_text(obj, "court", prefix),
        published_on=published,
        valid_until=valid_until,
        debtor=debtor,
        organization_name=organization_name,
        related=related,
    )
    if not exemptions:
        return entry
    return entry._replace(exemptions=tuple(
        exempted_in(entry, e, f"{prefix}exemptions.{i}.id_number")
        for i, e in enumerate(exemptions)
    ))  # fmt: skip


def parse_delta(obj: dict[str, Any]) -> DeltaOp:
    """One delta row, validated."""
    seq = obj.get("seq")
    if isinstance(seq, str) and seq.isascii() and seq.isdigit() and len(seq) <= 19:
        seq = int(seq)  # ("³".isdigit() is true, and int() refuses it)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise InvalidInput("seq", f"must be a positive integer, at most {MAX_SEQ}")
    at = obj.get("published_at")
    published_at = None if at is None else parse_instant(at, "published_at")
    op_name = obj.get("op")
    try:
        op = DeltaKind(op_name)
    except ValueError:
        kinds = ", ".join(k.value for k in DeltaKind)
        raise InvalidInput("op", f"{op_name!r} is not one of {kinds}") from None
    if op is DeltaKind.LIST:
        entry_obj = obj.get("entry")
        if not isinstance(entry_obj, dict):
            raise InvalidInput("entry", "is required for LIST and must be an object")
        entry = parse_entry(entry_obj, "entry.")
        return DeltaOp(seq, op, entry.entry_id, entry=entry, published_at=published_at)
    entry_id = _text(obj, "entry_id")
    exemption = None
    if op in (DeltaKind.EXEMPT, DeltaKind.UNEXEMPT):
        exemption = _exemption(obj.get("exemption"), "exemption.")
    return DeltaOp(seq, op, entry_id, exemption=exemption, published_at=published_at)


def read_entries(
    path: Path, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, ListEntry | RowError]]:
    """Each snapshot row as an entry or the reason it is bad."""
    for line_no, obj in iter_rows(path, start, end):
        if isinstance(obj, RowError):
            yield line_no, obj
            continue
        try:
            yield line_no, parse_entry(obj)
        except InvalidInput as exc:
            yield line_no, RowError(line_no, exc.field, exc.problem)


def read_delta(path: Path) -> tuple[list[DeltaOp], list[RowError]]:
    """All ops of a delta file, in seq order, and every bad row."""
    ops: list[DeltaOp] = []
    errors: list[RowError] = []
    seen: dict[int, int] = {}
    for line_no, obj in iter_rows(path):
        if isinstance(obj, RowError):
            errors.append(obj)
            continue
        try:
            op = parse_delta(obj)
        except InvalidInput as exc:
            errors.append(RowError(line_no, exc.field, exc.problem))
            continue
        if op.seq in seen:
            errors.append(RowError(line_no, "seq", f"{op.seq} repeats line {seen[op.seq]}"))
            continue
        seen[op.seq] = line_no
        ops.append(replace(op, line=line_no))
    ops.sort(key=lambda o: o.seq)
    written = written_at(path)
    for i, op in enumerate(ops):  # as the file's time holds them, wherever it is read again
        if op.published_at is not None:
            ops[i] = replace(op, published_at=feed_time(op.published_at, written))
    return ops, errors
