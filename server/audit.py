"""Checking an audit log's hash chain: was any record edited, removed, reordered or cut off?

The audit log is evidence, so an operator (or a court) must be able to show
it is whole. ``verify`` walks a set (rotated files oldest first, then the
live file) and names the first record that breaks the chain written by
``server.hitlog.AuditLog``:

- ``not JSON``: a line that is not an audit record (edited beyond parsing);
- ``edited``: the next record's ``prev`` is not this record's hash while
  ``seq`` runs on by one, or a record's own ``seq`` is not the one its
  ``prev`` link says it must be;
- ``removed``: ``seq`` jumps and the missing records appear nowhere later;
- ``reordered``: ``seq`` jumps to a record that belongs later, or goes back;
- ``truncated``: the chain is whole but ends before the head its writer
  noted in ``<path>.head`` (records were cut off the end, or lost to a power
  loss before they reached the disk), or the set's last file ends in part of
  a line (a record torn by a power loss), whatever the head says;
- ``rewritten``: the record at the noted head's ``seq`` is not the one noted;
- ``bad head``: ``<path>.head`` is there but is not a head (it is replaced
  whole, so only an edit or a damaged disk leaves it so), or a record of the
  chain says its writer found it so at its start (``head_at_start``
  ``"unreadable"``: the writer went on from the log's end, so a cut before that
  record cannot be ruled out);
- ``misplaced``: the head names a file that is not one of this set's (it was
  noted by another set's writer): sets swapped, or one copied over another; or
  a record says its writer found the head so at its start (``head_at_start``
  ``"misplaced"``);
- ``copied``: another set under the same path begins with the same record
  (and so holds the same records as far as both go): one of them is a copy,
  not a chain of its own (``verify_sets``). A chain's first record is its
  writer's own: its time, to a fraction of a microsecond, and the peer of a
  connection that writer alone accepted.

Not a failure, but not a plain OK either (``VerifyResult.unanchored``): a
record saying its writer started on this log with no head noted (``head_at_start``
``"missing"``: the head removed, or a log written before heads were kept).
The chain is whole as far as it goes, but records cut off the end before that
record would not show, and nothing can show it now.

A chain alone cannot show records cut off its end; the head noted beside it
can. The head is read before the log, and a writer notes it only after the
records it names, so verifying a live log never makes the head look ahead.
Every file of the set is opened before the walk and read through its
descriptor (``server.hitlog.open_log_files``): a rotation during the walk
renames a file held, so it takes nothing out of it (read by name, the
renamed live file would be missed and its records read as ``removed``).
A head behind the log's end is not a failure: the writer notes it at most
every ``server.hitlog.HEAD_INTERVAL`` seconds, so it lags while the writer
runs and after a kill (records cut within that window cannot be shown).
A set without a head is a warning, not a failure (a choice): logs written
before heads were kept have none, and failing them would fail every old log;
``VerifyResult.warning`` says what could not be checked.

What the chain cannot show: it is SHA-256 without a key, so whoever can write
the files can edit a record and write every later record and the head again
(or append made-up records and a new head), and the set verifies whole. A
whole set removed with its head leaves nothing to verify. Only a head kept
off the machine (``audit verify``'s ``head seq N sha256 ...``) shows such a
rewrite: put it back as ``<path>.head`` beside a copy of the set, and
``verify`` reports the record at its ``seq`` ``rewritten`` (or the log
``truncated``) unless the set still holds that very record.

``serve --workers N`` writes one audit set per worker (``audit.w1.jsonl``,
...), each its own chain with its own head: ``verify_sets`` verifies every set
found under the path given (``server.hitlog.log_sets``), each on its own, then
holds them to one another (no two alike: ``copied``). A worker's set missing
below the highest one found is ``server.hitlog.worker_gaps``'s to name, and so is
one above it: each worker's set starts, at each start of the worker, with a record
of how many workers its server runs (``AuditLog.note_start``; ``VerifyResult.workers``),
so the highest-numbered set removed whole is seen in the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from shixin_check.server.hitlog import (
    GENESIS,
    HEAD_AT_START,
    ChainHead,
    HeldFile,
    head_path,
    line_hash,
    log_files,
    log_sets,
    names_a_file_of,
    open_log_files,
    read_head,
)

__all__ = ["Problem", "VerifyResult", "log_files", "verify", "verify_sets"]


@dataclass(frozen=True)
class Problem:
    """The first break in the chain: where, which record, and what is wrong."""

    file: Path
    line: int | None  # 1-based, within ``file``; None when the problem is the set's end
    seq: int | None  # the record concerned (for ``removed``: the first missing one)
    #: "edited", "removed", "reordered", "not JSON", "truncated", "rewritten", "bad head",
    #: "misplaced", "copied"; "unanchored" (``VerifyResult.unanchored``, no failure)
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        seq = f"seq {self.seq} " if self.seq is not None else ""
        return f"{where}: {seq}{self.kind}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found; ``head_*`` is the last good record, ``noted`` the head kept beside."""

    files: list[Path]
    records: int  # records read before the first problem (all of them when intact)
    problem: Problem | None
    head_seq: int = 0
    head_hash: str = GENESIS
    noted: ChainHead | None = None
    warning: str = ""  # what could not be checked (no head noted)
    #: the first record saying its writer started with no head noted: the chain is whole
    #: as far as it goes, but a cut before it cannot be ruled out (None when none says so)
    unanchored: Problem | None = None
    genesis: str = ""  # ``line_hash`` of the set's first record: no other set may share it
    #: the most workers a start record of the set says its server ran (``serve --workers``:
    #: ``AuditLog.note_start``); 0 when none says
    workers: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Line:
    file: Path
    number: int
    raw: bytes  # without its newline
    ended: bool  # had a newline: only a file's last line can lack one


@dataclass
class _Walk:
    """The last good record seen: what the next one must link to."""

    seq: int = 0
    hash: str = GENESIS
    at: _Line | None = None
    records: int = 0
    #: the record at the noted head's seq, its hash, and how many records came before it
    noted_at: tuple[_Line, str, int] | None = None
    genesis: str = ""  # the first record's hash
    #: records saying their writer started without a head: (line, record, records before)
    restarts: list[tuple[_Line, dict[str, Any], int]] = field(default_factory=list)
    workers: int = 0  # the most workers a start record said (``VerifyResult.workers``)


def _lines(files: list[HeldFile]) -> Iterator[_Line]:
    for file in files:
        for number, (raw, ended) in enumerate(file.lines(), 1):
            yield _Line(file.path, number, raw, ended)


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if not isinstance(value.get("seq"), int) or not isinstance(value.get("prev"), str):
        return None
    return value


def verify(path: Path) -> VerifyResult:
    """Walk the audit set at ``path`` and hold it to its noted head.

    Every file of the set is opened before the walk (``open_log_files``) and
    read as it was then: a rotation while a live log is verified moves nothing
    out of the walk. ``FileNotFoundError`` when the set has no file.
    """
    try:
        noted = read_head(path)  # before the log: a live writer notes only what it has written
    except ValueError:
        noted, unreadable = None, True
    else:
        unreadable = False
    held = open_log_files(path)
    if not held:
        raise FileNotFoundError(f"no audit log at {path}")
    try:
        return _verify_held(path, noted, unreadable, held)
    finally:
        for file in held:
            file.close()


def _verify_held(
    path: Path, noted: ChainHead | None, unreadable: bool, held: list[HeldFile]
) -> VerifyResult:
    files = [file.path for file in held]
    walk = _Walk()
    for position, line in enumerate(_lines(held)):
        record = _record(line.raw)
        if record is None:
            problem = _torn_end(noted, walk, line, files[-1]) or Problem(
                line.file, line.number, None, "not JSON", "not an audit record"
            )
            return _result(files, walk, walk.records, problem, noted)
        broken = _check(walk, line, record, held, position)
        if broken is not None:
            return _result(files, walk, _intact(walk, broken), broken, noted)
        if walk.at is None:  # seq 1, linked to the genesis: the chain's first record
            walk.genesis = line_hash(line.raw)
        if "head_at_start" in record:
            walk.restarts.append((line, record, walk.records))
        workers = record.get("workers")
        if type(workers) is int and workers > walk.workers:
            walk.workers = workers
        if noted is not None and record["seq"] == noted.seq:
            walk.noted_at = (line, line_hash(line.raw), walk.records)
        walk.seq, walk.hash, walk.at = record["seq"], line_hash(line.raw), line
        walk.records += 1
    if unreadable:
        bad = Problem(head_path(path), None, None, "bad head", "not an audit head (edited?)")
        return _result(files, walk, walk.records, bad, None)
    found = _misplaced(path, noted, walk) or _bad_head_at_start(path, walk)
    if found is not None:
        return _result(files, walk, found[1], found[0], noted)
    unanchored = _unanchored(path, walk)
    if noted is None:
        warning = (
            f"no head noted ({head_path(path).name} is missing): records cut off the end "
            "would not show; logs written before heads were kept have none"
        )
        return _result(files, walk, walk.records, None, None, warning, unanchored)
    short = _held_to(noted, walk, files[-1])
    intact = walk.records
    if short is not None and short.kind == "rewritten" and walk.noted_at is not None:
        intact = walk.noted_at[2]
    return _result(files, walk, intact, short, noted, "", unanchored)


def _result(
    files: list[Path], walk: _Walk, intact: int, problem: Problem | None,
    noted: ChainHead | None, warning: str = "", unanchored: Problem | None = None,
) -> VerifyResult:  # fmt: skip
    return VerifyResult(files, intact, problem, walk.seq, walk.hash, noted, warning,
                        unanchored if problem is None else None, walk.genesis, walk.workers)  # fmt: skip


def _misplaced(path: Path, noted: ChainHead | None, walk: _Walk) -> tuple[Problem, int] | None:
    """A head noted by another set's writer: (the problem, records intact)."""
    if noted is not None and noted.file and not names_a_file_of(path, noted.file):
        detail = (f"the head names {noted.file}, not a file of {path.name}: it was noted by "
                  "another set's writer (sets swapped, or copied over one another?)")  # fmt: skip
        return Problem(head_path(path), None, None, "misplaced", detail), walk.records
    return None


def _restart_detail(path: Path, record: dict[str, Any], seen: str) -> str:
    after = record.get("after_seq")
    where = f" after seq {after}" if isinstance(after, int) else ""
    if record["head_at_start"] == "misplaced":
        other = record.get("head_file")
        named = f" ({other})" if isinstance(other, str) and other else ""
        return (f"its writer started{where} with {head_path(path).name} noted by another "
                f"set's writer{named}: these files were swapped, or copied over one another?")  # fmt: skip
    return (f"its writer started{where} with {head_path(path).name} {seen}, and went on from "
            "the log's end: records cut off the end before this record would not show")  # fmt: skip


def _bad_head_at_start(path: Path, walk: _Walk) -> tuple[Problem, int] | None:
    """The first record saying its writer found the head unreadable, or noted by another
    set's writer: as a ``bad head`` (or ``misplaced``) seen now would be, with the
    records before it intact as far as they go."""
    for line, record, before in walk.restarts:
        how = record["head_at_start"]
        if how == "misplaced":
            detail = _restart_detail(path, record, HEAD_AT_START[how])
            return Problem(line.file, line.number, record["seq"], how, detail), before
        if how != "missing":
            detail = _restart_detail(path, record, "not an audit head (edited?)")
            return Problem(line.file, line.number, record["seq"], "bad head", detail), before
    return None


def _unanchored(path: Path, walk: _Walk) -> Problem | None:
    """The first record saying its writer started with no head noted; how many do."""
    if not walk.restarts:
        return None
    line, record, _ = walk.restarts[0]
    detail = _restart_detail(path, record, "missing")
    if len(walk.restarts) > 1:
        detail += f" ({len(walk.restarts)} such starts in all)"
    return Problem(line.file, line.number, record["seq"], "unanchored", detail)


def verify_sets(path: Path) -> list[tuple[Path, VerifyResult]]:
    """``verify`` of every audit set under ``path``: a single server's, then each worker's.

    ``FileNotFoundError`` when there is none.
    """
    sets = log_sets(path)
    if not sets:
        raise FileNotFoundError(f"no audit log at {path}")
    return _copies([(one, _verify_or_gone(one)) for one in sets])


def _copies(results: list[tuple[Path, VerifyResult]]) -> list[tuple[Path, VerifyResult]]:
    """Sets sharing a first record (and so every record as far as both go) are one chain
    written once and copied: each not broken otherwise is ``copied`` (which one is the
    original cannot be told). A chain's first record is its writer's own: its time, to a
    fraction of a microsecond, and the peer of a connection that writer alone accepted."""
    by_genesis: dict[str, list[Path]] = {}
    for one, result in results:
        if result.genesis:
            by_genesis.setdefault(result.genesis, []).append(one)
    found = []
    for one, result in results:
        alike = [other.name for other in by_genesis.get(result.genesis, ()) if other != one]
        if alike and result.problem is None:
            detail = (f"its first record is also the first of {', '.join(alike)}: one of "
                      "these sets is a copy of another, not a chain of its own")  # fmt: skip
            copied = Problem(result.files[0], 1, 1, "copied", detail)
            result = replace(result, problem=copied, unanchored=None)
        found.append((one, result))
    return found


def _verify_or_gone(path: Path) -> VerifyResult:
    """``verify``; a set whose head is all that is left lost every record it noted."""
    try:
        return verify(path)
    except FileNotFoundError:
        try:
            noted = read_head(path)
        except ValueError:
            noted = None
        detail = (
            f"the head records {noted} but no file of the log is left"
            if noted
            else (f"only {head_path(path).name} is left")
        )
        return VerifyResult([], 0, Problem(path, None, None, "truncated", detail), noted=noted)


def _intact(walk: _Walk, problem: Problem) -> int:
    """Records read before ``problem``: an edit shows at the next record's link, so a
    problem named at the last record read leaves that one out too."""
    at = walk.at
    named_last = at is not None and (problem.file, problem.line) == (at.file, at.number)
    return walk.records - 1 if named_last else walk.records


def _torn_end(noted: ChainHead | None, walk: _Walk, line: _Line, last: Path) -> Problem | None:
    """A record cut in the middle at the very end (power loss): a truncation, whatever
    the noted head says. The head is noted after its records, so it is most often
    at or behind the last whole record when the power fails."""
    if line.ended or line.file != last:
        return None
    if noted is not None and noted.seq > walk.seq:
        detail = f"the head records {noted} but the log ends at seq {walk.seq} and part of a record"
    else:
        detail = (
            f"the log ends in part of a record after seq {walk.seq} (cut short by a power "
            f"loss?); the writer's next start moves those bytes to {last.name}.torn"
        )
    return Problem(line.file, line.number, None, "truncated", detail)


def _held_to(noted: ChainHead, walk: _Walk, last: Path) -> Problem | None:
    """Whether an intact chain reaches its noted head, and has the noted record there."""
    if noted.seq > walk.seq:
        detail = f"the head records {noted} but the log ends at seq {walk.seq}"
        return Problem(last, None, None, "truncated", detail)
    if noted.seq == 0 or walk.noted_at is None:  # an intact chain has every seq to its end
        return None
    line, found, _ = walk.noted_at
    if found != noted.sha256:
        detail = f"the head records {noted}, the log holds sha256 {found[:12]}…"
        return Problem(line.file, line.number, noted.seq, "rewritten", detail)
    return None


def _check(
    walk: _Walk, line: _Line, record: dict[str, Any], files: list[HeldFile], position: int
) -> Problem | None:
    seq: int = record["seq"]
    expected = walk.seq + 1
    linked = record["prev"] == walk.hash
    if linked and seq == expected:
        return None
    if linked:
        detail = f"its seq is {seq}, but it links to seq {walk.seq}"
        return Problem(line.file, line.number, seq, "edited", detail)
    if seq == expected:
        return _edited_before(walk, line, seq)
    if seq > expected and not _appears_later(files, position, expected):
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        detail = f"{missing} missing before this record (seq {seq})"
        return Problem(line.file, line.number, expected, "removed", detail)
    detail = f"seq {seq} comes after seq {walk.seq}"
    return Problem(line.file, line.number, seq, "reordered", detail)


def _edited_before(walk: _Walk, line: _Line, seq: int) -> Problem:
    """The chain breaks although seq runs on: the record before was changed."""
    if walk.at is None:  # the very first record: its own link to the genesis was changed
        return Problem(line.file, line.number, seq, "edited", "the first record must link to 0s")
    at = walk.at
    detail = f"its hash no longer matches the prev of seq {seq} ({line.file}:{line.number})"
    return Problem(at.file, at.number, walk.seq, "edited", detail)


def _appears_later(files: list[HeldFile], position: int, seq: int) -> bool:
    """Whether a record with ``seq`` comes after line ``position`` of the set."""
    for later, line in enumerate(_lines(files)):
        if later <= position:
            continue
        record = _record(line.raw)
        if record is not None and record["seq"] == seq:
            return True
    return False
