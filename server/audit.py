"""Checking an audit log's hash chain: was any record edited, removed or reordered?

The audit log is evidence, so an operator (or a court) must be able to show
it is whole. ``verify`` walks a set (rotated files oldest first, then the
live file) and names the first record that breaks the chain written by
``server.hitlog.AuditLog``:

- ``not JSON``: a line that is not an audit record (edited beyond parsing,
  or torn by power loss);
- ``edited``: the next record's ``prev`` is not this record's hash while
  ``seq`` runs on by one, or a record's own ``seq`` is not the one its
  ``prev`` link says it must be;
- ``removed``: ``seq`` jumps and the missing records appear nowhere later;
- ``reordered``: ``seq`` jumps to a record that belongs later, or goes back.

A hash chain cannot show that records were cut off its end: compare the
head (``VerifyResult.head_seq`` / ``head_hash``) with one noted earlier.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from server.hitlog import GENESIS, line_hash, log_files

__all__ = ["Problem", "VerifyResult", "log_files", "verify"]


@dataclass(frozen=True)
class Problem:
    """The first break in the chain: where, which record, and what is wrong."""

    file: Path
    line: int  # 1-based, within ``file``
    seq: int | None  # the record concerned (for ``removed``: the first missing one)
    kind: str  # "edited", "removed", "reordered" or "not JSON"
    detail: str

    def __str__(self) -> str:
        seq = f"seq {self.seq} " if self.seq is not None else ""
        return f"{self.file}:{self.line}: {seq}{self.kind}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found; ``head_*`` is the last good record, to compare with a noted one."""

    files: list[Path]
    records: int  # records read before the first problem (all of them when intact)
    problem: Problem | None
    head_seq: int = 0
    head_hash: str = GENESIS

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Line:
    file: Path
    number: int
    raw: bytes


@dataclass
class _Walk:
    """The last good record seen: what the next one must link to."""

    seq: int = 0
    hash: str = GENESIS
    at: _Line | None = None
    records: int = 0


def _lines(files: list[Path]) -> Iterator[_Line]:
    for file in files:
        with file.open("rb") as f:
            for number, raw in enumerate(f, 1):
                yield _Line(file, number, raw[:-1] if raw.endswith(b"\n") else raw)


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
    """Walk the audit set at ``path``; ``FileNotFoundError`` when it has no file."""
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"no audit log at {path}")
    walk = _Walk()
    for position, line in enumerate(_lines(files)):
        record = _record(line.raw)
        if record is None:
            problem = Problem(line.file, line.number, None, "not JSON", "not an audit record")
            return VerifyResult(files, walk.records, problem, walk.seq, walk.hash)
        broken = _check(walk, line, record, files, position)
        if broken is not None:
            return VerifyResult(files, walk.records, broken, walk.seq, walk.hash)
        walk.seq, walk.hash, walk.at = record["seq"], line_hash(line.raw), line
        walk.records += 1
    return VerifyResult(files, walk.records, None, walk.seq, walk.hash)


def _check(
    walk: _Walk, line: _Line, record: dict[str, Any], files: list[Path], position: int
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


def _appears_later(files: list[Path], position: int, seq: int) -> bool:
    """Whether a record with ``seq`` comes after line ``position`` of the set."""
    for later, line in enumerate(_lines(files)):
        if later <= position:
            continue
        record = _record(line.raw)
        if record is not None and record["seq"] == seq:
            return True
    return False
