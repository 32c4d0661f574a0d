"""The feed's sequencing contract: which deltas a snapshot holds, and the feed's own time.

A snapshot may say which deltas it already contains. A JSON Lines snapshot
may begin with a header row, a CSV snapshot may have a sidecar
``<name>.meta.json`` (``snapshot-0002.csv.meta.json``) holding the same object::

    {"snapshot": {"includes_seq": 3, "published_at": "2026-11-29T08:00:00+08:00",
                  "entries": 1000}}

meaning: every delta with ``seq`` <= 3 is already in it; and, where ``entries``
is given, the file holds exactly that many entry rows (a copy cut off at a line
boundary would otherwise load as a smaller list). A snapshot without one
includes no delta. ``pending`` is the one rule, used by the memory index,
the directory follower and the Redis publisher alike, for which ops of a delta
still apply on top of a version: those above the version's watermark, in
``seq`` order, carrying on from it without a gap (a delta that would skip a
seq is refused whole, and so is one below the first delta applied on a
snapshot without a header, unless the version already shows its every
change). A restart therefore rebuilds exactly what was served: the newest
good snapshot, then every delta op above its watermark.

The feed's time (``source_timestamp``, what staleness is measured from) comes
from the data, never from a file's mtime, which a copy resets: the header's
``published_at``, moved on by each delta row's ``published_at`` where the
rows carry one; failing those, the newest ``published_on`` in the data (the
start of that day, China time).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from shixin_check.domain.errors import InvalidInput, LoadRejected, RowError
from shixin_check.domain.model import CHINA_TZ, NO_END

HEADER_KEY = "snapshot"
#: how far ahead of this machine's clock a published_at counts as it is for the list's
#: age (the feed's clock may run a little fast); one further ahead counts as this far
#: ahead (``feed_time``), so that the age cannot read 0 for longer (never stale). The
#: ordering of snapshots compares the times as the feed wrote them.
FUTURE_TOLERANCE_S = 3600.0
#: seconds between the log's lines about such times, at most (a delta file may carry one
#: on every row)
AHEAD_LINE_EVERY_S = 60.0
#: the largest delta seq (and includes_seq): status, metrics and the wire carry it as int64
MAX_SEQ = 2**63 - 1
#: The one form of a time in a feed (RFC 3339: ISO 8601's calendar date and time with
#: an offset; seconds may be left out): Python reads week dates (``2026-W48-1``), a
#: basic form and a comma fraction too, which no feed of this list writes
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_EPOCH_DAY_START = _dt.datetime(1970, 1, 1, tzinfo=CHINA_TZ).timestamp()
log = logging.getLogger("shixin.loader")


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """What a snapshot says of itself; ``declared`` is False when it said nothing."""

    includes_seq: int = 0
    published_at: float | None = None  # unix seconds
    declared: bool = False
    entries: int | None = None  # entry rows the file holds, when the header says


def is_header(obj: Any) -> bool:
    """True for the header row of a JSON Lines snapshot."""
    return isinstance(obj, dict) and HEADER_KEY in obj and "entry_id" not in obj


def parse_instant(value: Any, field: str) -> float:
    """An ISO 8601 time with an offset, as unix seconds (``InvalidInput`` otherwise)."""
    if not isinstance(value, str):
        raise InvalidInput(field, "must be an ISO 8601 time with an offset, as a string")
    shaped = _INSTANT.fullmatch(value)
    try:  # RFC 3339's lower-case t and z, which Python 3.11 does not read
        moment = _dt.datetime.fromisoformat(value.upper() if shaped else value)
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is None:
        raise InvalidInput(field, f"{value!r} has no UTC offset (e.g. +08:00)")
    if moment is None or shaped is None:
        raise InvalidInput(
            field, f"{value!r} is not a valid time of the form 2026-11-28T09:00:00+08:00 (RFC 3339)"
        )
    at = moment.timestamp()
    ahead = at - time.time()
    if ahead > FUTURE_TOLERANCE_S:
        # This machine's clock behind (or the feed's wrong): refusing the file served an
        # older list, its newly listed people ALLOW NOT_LISTED, for as long as the clock
        # lagged. Taken as written (snapshots are ordered by it); the list's age is
        # measured from it capped (``feed_time``).
        _said_ahead(field, value, ahead)
    return at


def feed_time(at: float, written: float | None = None) -> float:
    """A ``published_at`` as the list's age is measured from it: as written, unless it
    is more than ``FUTURE_TOLERANCE_S`` ahead of this machine's clock now; then at most
    that long after ``written`` (the time its file was written, its mtime; now, if that
    is unknown or ahead too). Measured from the file, a restart or a worker started
    later takes the same time from the same file: measured from now, each took a later
    one, and a list dated ahead read fresh again at every restart. A time not ahead is
    never moved (a file's mtime may be older than what it holds: copied with ``cp -p``,
    unpacked, or baked into an image)."""
    now = time.time()
    if at <= now + FUTURE_TOLERANCE_S:
        return at
    return min(at, min(now if written is None else written, now) + FUTURE_TOLERANCE_S)


def written_at(path: Path) -> float | None:
    """``path``'s mtime (``feed_time``'s ``written``); None where it cannot be read."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


#: [monotonic time of the last line, times ahead seen since it]
_AHEAD_SAID: list[float] = [-AHEAD_LINE_EVERY_S, 0]


def _said_ahead(field: str, value: str, ahead: float) -> None:
    """One WARNING a minute at most for a feed time ahead of this machine's clock."""
    now = time.monotonic()
    _AHEAD_SAID[1] += 1
    if now - _AHEAD_SAID[0] < AHEAD_LINE_EVERY_S:
        return
    more = int(_AHEAD_SAID[1]) - 1
    _AHEAD_SAID[:] = [now, 0]
    log.warning(
        "%s: %r is %s ahead of this machine's clock: this clock is behind (check NTP) or "
        "the feed's time is wrong; the file is loaded, the list's age measured from %s "
        "ahead%s", field, value, _hours_minutes(ahead),
        _hours_minutes(FUTURE_TOLERANCE_S),
        f"; {more} more such times since the last line" if more > 0 else "",
    )  # fmt: skip


def _hours_minutes(seconds: float) -> str:
    """``seconds`` as "1 h 1 min", minutes rounded up: a time past the limit never
    reads as the limit itself ("1.0 h" for 61 minutes)."""
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return f"{hours:,} h {minutes} min" if minutes else f"{hours:,} h"


def parse_header(obj: Any) -> SnapshotHeader:
    """The header object (the whole row, ``{"snapshot": {...}}``), validated."""
    body = obj.get(HEADER_KEY) if isinstance(obj, dict) else None
    if not isinstance(body, dict):
        raise InvalidInput(HEADER_KEY, "must be an object with includes_seq and published_at")
    unknown = sorted(set(body) - {"includes_seq", "published_at", "entries"})
    if unknown:
        raise InvalidInput(f"{HEADER_KEY}.{unknown[0]}", "is not a header field")
    seq = body.get("includes_seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise InvalidInput(f"{HEADER_KEY}.includes_seq", f"must be an integer from 0 to {MAX_SEQ}")
    published = body.get("published_at")
    at = None if published is None else parse_instant(published, f"{HEADER_KEY}.published_at")
    entries = body.get("entries")
    if entries is not None and (
        not isinstance(entries, int) or isinstance(entries, bool) or not 0 <= entries <= MAX_SEQ
    ):
        raise InvalidInput(f"{HEADER_KEY}.entries", "must be the number of entry rows, an integer")
    return SnapshotHeader(seq, at, declared=True, entries=entries)


#: what a file saved by some Windows tools begins with: dropped wherever a list file is read
UTF8_BOM = b"\xef\xbb\xbf"


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte order mark."""
    return data[3:] if data.startswith(UTF8_BOM) else data


def sidecar_of(path: Path) -> Path:
    """Where a CSV snapshot's header lives."""
    return path.with_name(path.name + ".meta.json")


def read_header(path: Path) -> SnapshotHeader:
    """The header of the snapshot at ``path`` (a bare ``SnapshotHeader()`` if it has none).

    A header that is there but bad refuses the snapshot (``LoadRejected``): line 1
    of a JSON Lines file, or the sidecar of a CSV.
    """
    if path.suffix.lower() == ".csv":
        sidecar = sidecar_of(path)
        if not sidecar.exists():
            return SnapshotHeader()
        where, line = str(sidecar), 1
        try:
            obj = orjson.loads(strip_bom(sidecar.read_bytes()))
        except orjson.JSONDecodeError as exc:
            raise LoadRejected(where, [RowError(1, "", f"not valid JSON ({exc})")]) from None
    else:
        where, line, obj = str(path), 0, None
        with path.open("rb") as fh:
            for raw in fh:
                line += 1
                if line == 1:
                    raw = strip_bom(raw)
                if raw.strip():
                    try:
                        obj = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        return SnapshotHeader()  # reported row by row by the loader
                    break
        if not is_header(obj):
            return SnapshotHeader()
    try:
        return parse_header(obj)
    except InvalidInput as exc:
        raise LoadRejected(where, [RowError(line, exc.field, exc.problem)]) from None


def header_row(includes_seq: int, published_at: _dt.datetime, entries: int | None = None) -> bytes:
    """The header line a snapshot writer puts first (with its newline); ``entries``,
    the number of entry rows that follow, lets a load tell a cut-off copy."""
    body: dict[str, Any] = {"includes_seq": includes_seq, "published_at": published_at.isoformat()}
    if entries is not None:
        body["entries"] = entries
    return orjson.dumps({HEADER_KEY: body}) + b"\n"


def entries_problem(declared: int, found: int) -> str:
    """Why a snapshot whose header counts ``declared`` entry rows is refused."""
    return (
        f"the header says {declared:,} entries but the file holds {found:,}: a copy cut off "
        "or padded, never loaded (have the feed send it again)"
    )


class Sequenced(Protocol):
    """Anything with a delta ``seq`` and the line it was read from (a ``DeltaOp``)."""

    @property
    def seq(self) -> int: ...

    @property
    def line(self) -> int: ...


_Op = TypeVar("_Op", bound=Sequenced)


def pending(
    ops: Iterable[_Op], applied_seq: int, source: str = "delta", *, unknown_base: bool = False,
    first_seq: int = 0, base: str = "", remedy: str = "",
    reflected: Callable[[_Op], bool] | None = None,
) -> list[_Op]:  # fmt: skip
    """The ops that still apply on top of a version holding every seq <= ``applied_seq``,
    in ``seq`` order; ``LoadRejected`` (naming ``source``) if they do not carry on from it.

    The one rule for every path: a start, a directory poll, a Redis load. Ops at
    or below ``applied_seq`` are skipped (a file read again is harmless); the
    first one above must be ``applied_seq + 1`` and the rest follow it without a
    gap, so a delta that arrives before the one it follows, or after a lost one,
    is refused whole instead of being applied out of order (and the earlier one
    skipped for ever once it arrives).

    ``unknown_base``: the version is a snapshot without a header and no delta is
    applied on it yet, so where the feed's numbering stands is not known: the
    first op may have any seq, and the rest follow it without a gap.

    ``first_seq``: the seq of the first delta applied on top of such a snapshot
    (``base``, its name; 0 for a snapshot with a header). Seqs below it are not
    replays: nothing says the snapshot holds them, only that the numbering was
    set by whichever delta came first. So an op below it refuses the file
    (``before_first_problem``, ending in ``remedy``) instead of being skipped
    for good, its changes never served; unless ``reflected(op)`` says the
    version already shows its change (applying it would change nothing: the
    snapshot holds it, or what came after it): that op is skipped like a
    replay. ``reflected`` judges the version as it is, before any op of this
    file: the ops below ``first_seq`` come first in ``seq`` order, and none of
    them that is skipped changes anything.
    """
    ops = list(ops)
    errors = [
        RowError(op.line, "", before_first_problem(op.seq, first_seq, base, remedy))
        for op in ops if op.seq < first_seq and not (reflected is not None and reflected(op))
    ]  # fmt: skip
    todo = sorted((op for op in ops if op.seq > applied_seq), key=lambda op: op.seq)
    previous = todo[0].seq - 1 if todo and unknown_base and applied_seq == 0 else applied_seq
    for op in todo:
        if op.seq != previous + 1:
            errors.append(RowError(op.line, "", gap_problem(previous, op.seq)))
        previous = op.seq
    if errors:
        raise LoadRejected(source, errors)
    return todo


#: What to do about a delta older than the first one applied on a snapshot without a
#: header, in directory mode: a restart applies every delta file in seq order.
RESTART_REMEDY = "restart the server or publish a snapshot with a header"


def before_first_problem(seq: int, first_seq: int, base: str, remedy: str = "") -> str:
    """Why ``seq`` cannot go in after ``first_seq``, the first delta applied on top of
    ``base``, a snapshot without a header: ``seq 4 comes before seq 5, the first delta
    applied on top of a snapshot without a header (snapshot-0001.jsonl): ...``."""
    return (
        f"seq {seq} comes before seq {first_seq}, the first delta applied on top of a "
        f"snapshot without a header ({base}): its changes are not in the served list; "
        f"{remedy or RESTART_REMEDY}"
    )


def missing_deltas(first: int, last: int) -> str:
    """``delta 3`` or ``deltas 3 to 9``: what a gap in the numbering lacks."""
    return f"delta {first}" if first == last else f"deltas {first} to {last}"


def gap_problem(previous: int, seq: int, where: str = "") -> str:
    """Why ``seq`` cannot follow ``previous``: ``seq 10 follows seq 2: deltas 3 to 9 are
    missing`` (``where`` after ``seq 2``, e.g. `` (the last Redis holds)``)."""
    if seq <= previous:
        return f"seq {seq} repeats seq {previous}"
    first, last = previous + 1, seq - 1
    verb = "is" if first == last else "are"
    return f"seq {seq} follows seq {previous}{where}: {missing_deltas(first, last)} {verb} missing"


def day_start(day: int) -> float:
    """Unix seconds at the start of a day number, China time (0 for no day)."""
    return _EPOCH_DAY_START + day * 86400.0 if day and day != NO_END else 0.0
