"""Loads as versions: build aside, validate whole, then swap in.

``Loader`` owns the serving ``MemoryIndex``. A snapshot is read and checked
row by row into a new base while the old version keeps serving; if any row is
bad (or two rows share an entry_id) the file is refused with every error and
line number (``LoadRejected``) and nothing changes. A delta file is validated
whole as well, then applied on top of the current version as a new overlay.
Ops whose ``seq`` was already applied are skipped, so replaying a file is
harmless; on a snapshot without a header, which may hold deltas that come
again, so is an op whose change the list already shows (``apply_delta``).
With a store, what each seq applied held is recorded beside the compiled
version (``_AppliedOps``), so that every process and every restart refuses a
delta rewritten in place alike, and serves the ops first applied; and on a
snapshot without a header, keeps the numbering the first delta applied set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from shixin_check.domain.errors import (
    ConfigurationError,
    InvalidInput,
    LoadRejected,
    RowError,
    ShixinError,
)
from shixin_check.domain.identity import IdType
from shixin_check.domain.index import ListedMatch, VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import (
    Channel,
    EntryStatus,
    Exemption,
    ListedSubject,
    ListEntry,
    ListType,
    Role,
)
from shixin_check.domain.system import limit_advice
from shixin_check.loader.background import Background
from shixin_check.loader.columns import ROW_CHECKS, ColumnBuilder, keyer_for
from shixin_check.loader.compiled import (
    FORMAT,
    AppliedRecord,
    IndexStore,
    file_identity,
    map_compiled,
    snapshot_stamp,
)
from shixin_check.loader.feed import (
    HEADER_KEY,
    MAX_SEQ,
    day_start,
    entries_problem,
    feed_time,
    is_header,
    pending,
    read_header,
    sidecar_of,
    written_at,
)
from shixin_check.loader.index_memory import (
    BaseParts,
    KeyedExemptions,
    MemoryIndex,
    MemoryView,
    Overlay,
    counts_after,
    matches_of,
    merge_parts,
    own_exemptions,
    view_of_base,
)
from shixin_check.loader.listfile import (
    EXEMPTION_NAMES_NO_ONE,
    EXEMPTION_NAMES_ORGANISATION,
    EXEMPTION_NEEDS_PERSON,
    DeltaKind,
    DeltaOp,
    FileKind,
    detect_kind,
    exempted_in,
    iter_rows,
    line_blocks,
    line_starts,
    named_kind,
    read_delta,
    row_of,
    sniff_kind,
    today,
)

Progress = Callable[[int], None]
log = logging.getLogger("shixin.loader")


#: how to give a snapshot its header, in the log line saying it has none
_HEADER_HINT = '{"snapshot": {"includes_seq": N, "published_at": ...}} as its first line'
_HEADER_HINT_CSV = 'a sidecar %s.meta.json holding {"snapshot": {"includes_seq": N, ...}}'


def _version_label(path: Path) -> str:
    """A snapshot's version label, from what identifies the file (name, size, mtime, inode,
    ctime) and never from the time it is loaded: every worker, and a restart, that loads
    the same file label it alike. The time in it is the file's mtime, in UTC."""
    st = path.stat()
    tag = hashlib.blake2b(
        f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}".encode(),
        digest_size=4,
    )
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(st.st_mtime)) + "-" + tag.hexdigest()


#: Bytes a snapshot row takes, about: sizes the Bloom filter before reading.
_ROW_BYTES = 500  # the feed's rows run 700-800 bytes (764 in gen-data's lists); CSV less
#: Files smaller than this load in the calling process.
PARALLEL_FROM_BYTES = 64 * 1024 * 1024


def _expected_keys(path: Path) -> int:
    # ~1.4 subject keys a row (related persons): sized above that, so the filter keeps
    # its false-positive rate with room to spare; 300 bytes a row made it 2.5 times
    # too big (loadtest/scale_bench.py)
    return max(int(path.stat().st_size / _ROW_BYTES * 1.5), 1024)


def _parse_range(
    path: Path, keyer: SubjectKeyer, expected: int, start: int = 0, end: int | None = None,
    progress: Progress | None = None,
) -> tuple[BaseParts, list[RowError], int]:  # fmt: skip
    """Parts, bad rows and line count (blank lines too: the next chunk numbers its
    lines on from there) of the lines beginning in [start, end).

    The builder's ``feed`` (in C, where built) parses and takes a block's lines
    while they are plain rows; each line it stops at is read here, row by row as
    ``iter_rows`` reads it (a blank line, bad JSON, the header, any other row).
    """
    if path.suffix.lower() == ".csv":
        return _parse_rows(path, keyer, expected, progress)
    builder = ColumnBuilder(keyer, expected)
    feed, read = builder.feed, builder.read
    errors: list[RowError] = []
    rows = lines = 0
    reported = 100_000
    header = start == 0  # the file's first row may be its header
    for block, first_line, unended in line_blocks(path, start, end):
        i, count = 0, len(block)
        lines = first_line + count - 1
        while i < count:
            if not header:
                taken = feed(block, i, first_line)
                rows += taken - i
                if taken == count:
                    break
                i = taken
            line_no = first_line + i
            item = row_of(block[i], line_no, unended)
            i += 1
            if item is None:
                continue
            if header and type(item) is dict:
                header = False
                if is_header(item):
                    continue
            rows += 1
            if (error := read(item, line_no)) is not None:
                errors.append(error)
        while progress is not None and rows >= reported:
            progress(reported)
            reported += 100_000
    return builder.parts(), errors, lines


def _parse_rows(
    path: Path, keyer: SubjectKeyer, expected: int, progress: Progress | None
) -> tuple[BaseParts, list[RowError], int]:
    """``_parse_range`` of a whole file read row by row by ``iter_rows`` (CSV)."""
    builder = ColumnBuilder(keyer, expected)
    read = builder.read
    errors: list[RowError] = []
    lines = 0
    for n, (line_no, item) in enumerate(iter_rows(path), 1):
        lines = line_no
        if (error := read(item, line_no)) is not None:
            errors.append(error)
        if progress is not None and n % 100_000 == 0:
            progress(n)
    return builder.parts(), errors, lines


#: how often a parse process looks whether the process that started it is still there
PARENT_POLL_S = 0.5


def _die_with(parent: int) -> None:
    """A parse process's initialiser: exit once ``parent`` is gone. A server killed
    (SIGKILL, the OOM killer) mid-parse left its parse processes blocked for good on
    the result pipe, which they hold both ends of, each some 90 MB, one set more at
    every such restart."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parse_chunk(
    path: str, secret: bytes, expected: int, start: int, end: int
) -> tuple[BaseParts, list[RowError], int]:
    """Load worker: one chunk of a JSON Lines snapshot (runs in another process)."""
    return _parse_range(Path(path), keyer_for(secret), expected, start, end)


def default_workers(path: Path) -> int:
    if path.suffix.lower() == ".csv" or path.stat().st_size < PARALLEL_FROM_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 32))


def build_snapshot(
    path: Path, keyer: SubjectKeyer, progress: Progress | None = None, version: str = "",
    workers: int | None = None,
) -> MemoryView:  # fmt: skip
    """A new version from a snapshot file, or ``LoadRejected`` with every bad row.

    Big JSON Lines files are parsed by ``workers`` processes (default: one per
    core), each taking a run of whole lines; their columns are merged and
    sorted here. Line numbers in errors are the file's own.
    """
    header = read_header(path)  # a bad header refuses the file before any row is read
    started = time.perf_counter()
    expected = _expected_keys(path)
    workers = workers or default_workers(path)
    if workers <= 1:
        parts, errors, _ = _parse_range(path, keyer, expected, progress=progress)
        all_parts, first_lines = [parts], [0]
    else:
        offsets = line_starts(path, workers * 4)
        spawn = multiprocessing.get_context("spawn")  # never fork a process running gRPC
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=spawn, initializer=_die_with, initargs=(os.getpid(),)
        ) as pool:
            futures = [
                pool.submit(_parse_chunk, str(path), keyer.secret, expected, a, b)
                for a, b in zip(offsets, offsets[1:], strict=False)
            ]
            results = []
            for future in futures:
                results.append(future.result())
                if progress is not None:
                    progress(sum(r[2] for r in results))
        all_parts, errors, first_lines, first_line = [], [], [], 0
        for parts, chunk_errors, lines in results:
            all_parts.append(parts)
            first_lines.append(first_line)
            errors += [RowError(e.line + first_line, e.field, e.problem) for e in chunk_errors]
            first_line += lines
    if errors:
        raise LoadRejected(str(path), errors)
    parsed = time.perf_counter()
    base, duplicates = merge_parts(all_parts, first_lines)
    if duplicates:
        raise LoadRejected(str(path), duplicates)
    if not base.entries:  # a truncated or failed export would empty the list in one step
        raise LoadRejected(str(path), [RowError(0, "", _NO_ENTRIES)])
    if header.entries is not None and base.entries != header.entries:  # cut at a line's end
        field = f"{HEADER_KEY}.entries"
        where = 0 if path.suffix.lower() == ".csv" else 1
        raise LoadRejected(
            str(path), [RowError(where, field, entries_problem(header.entries, base.entries))]
        )
    log.info("%s: %d entries parsed in %.1f s (%d processes, %s), merged in %.1f s", path,
             base.entries, parsed - started, workers, ROW_CHECKS, time.perf_counter() - parsed)  # fmt: skip
    if not header.declared:
        log.warning(
            "%s has no header row: it includes no delta, so every delta file is applied on top "
            "(give it %s)", path,
            _HEADER_HINT_CSV % path.name if path.suffix.lower() == ".csv" else _HEADER_HINT,
        )  # fmt: skip
    newest = (
        int(np.frombuffer(cast(Any, base.e_listed), dtype=np.int32).max()) if base.entries else 0
    )
    published = header.published_at
    source_time = (
        feed_time(published, written_at(path)) if published is not None else source_time_of(newest)
    )
    label = version or _version_label(path)
    return view_of_base(base, str(path), source_time, label, header.includes_seq)


def source_time_of(published_on: int) -> float:
    """The feed's time a row's ``published_on`` gives: the start of that day in China,
    never after now (a row dated tomorrow must not make the list read as fresh then)."""
    return min(day_start(published_on), time.time())


def delta_source_time(ops: Sequence[DeltaOp], previous: float) -> float:
    """The feed's time after ``ops``: their newest ``published_at`` or, where no row
    gives one, the newest ``published_on`` they list; never earlier than ``previous``."""
    stamps = [feed_time(op.published_at) for op in ops if op.published_at is not None]
    if not stamps:
        stamps = [source_time_of(op.entry.published_on) for op in ops if op.entry is not None]
    return max([previous, *stamps])


_NO_ENTRIES = (
    "holds no entries: a snapshot replaces the whole list, and an empty one is taken for "
    "a failed export, never loaded"
)


def validate_file(path: Path, keyer: SubjectKeyer) -> tuple[FileKind, int, list[RowError]]:
    """(kind, rows, every bad row) of a snapshot or delta file; changes nothing."""
    kind, problem = sniff_kind(path)
    if problem is not None:  # what it is cannot be told: nothing else is checked
        return kind, sum(1 for _ in iter_rows(path)), [problem]
    if kind is FileKind.DELTA:
        ops, errors = read_delta(path)
        if not errors and ops:  # a gap inside the file refuses it on top of any version
            try:
                pending(ops, ops[0].seq - 1)
            except LoadRejected as exc:
                errors = exc.errors
        return kind, len(ops) + len(errors), errors
    try:
        view = build_snapshot(path, keyer)
    except LoadRejected as exc:
        rows, repeats = _repeated_entry_ids(path)
        reported = {(e.line, e.field) for e in exc.errors}
        extra = [e for e in repeats if (e.line, e.field) not in reported]
        return kind, rows, sorted([*exc.errors, *extra], key=lambda e: e.line)
    return kind, view.base.entries, []


def _repeated_entry_ids(path: Path) -> tuple[int, list[RowError]]:
    """(rows, rows repeating an earlier row's entry_id), whatever else is wrong with them.

    A load stops building once a row is bad, so its duplicate check sees only
    the rows before; ``validate`` reports every repeat in one go.
    """
    first_line: dict[str, int] = {}
    repeats = []
    rows = 0
    for line_no, obj in iter_rows(path):
        rows += 1
        entry_id = obj.get("entry_id") if isinstance(obj, dict) else None
        if not isinstance(entry_id, str) or not entry_id.strip():
            continue
        entry_id = entry_id.strip()
        if entry_id in first_line:
            problem = f"{entry_id!r} repeats line {first_line[entry_id]}"
            repeats.append(RowError(line_no, "entry_id", problem))
        else:
            first_line[entry_id] = line_no
    return rows, repeats


def validate_delta_against(
    delta: Path, snapshot: Path, keyer: SubjectKeyer
) -> tuple[int, list[RowError]]:
    """(ops, every problem) of applying ``delta`` on top of ``snapshot`` (and its header)."""
    ops, errors = read_delta(delta)
    if errors:
        return len(ops) + len(errors), errors
    view = build_snapshot(snapshot, keyer)  # LoadRejected: the snapshot itself is bad
    try:
        apply_delta(view, ops, keyer)
    except LoadRejected as exc:
        return len(ops), exc.errors
    return len(ops), []


class _DeltaState:
    """Mutable copies of an overlay's parts while one delta file is applied.

    ``headerless``: the version's snapshot has no header, so nothing says which
    deltas it already holds, and a delta it holds may come again. There an op
    whose change the list already shows (``reflected``) is a no-op, not an
    error: DELIST of an entry that is not listed is not refused (``no listed
    entry``), nor an UNEXEMPT of an exemption the entry does not have. Each op
    is judged on the list as the file's earlier ops leave it, exactly as if it
    were a file of its own: so the result never depends on how the feed cut
    its ops into files (a second DELIST of the same entry in one file is a
    no-op, as it would be in a file of its own). On a snapshot with a header
    every op must change something it names, as before.
    """

    def __init__(self, view: MemoryView, keyer: SubjectKeyer, headerless: bool = False) -> None:
        ov = view.overlay
        self.view = view
        self.keyer = keyer
        self.headerless = headerless
        self._keys_per_row: np.ndarray[Any, Any] | None = None  # the base's, when first needed
        self.removed = set(ov.removed)
        self.status = dict(ov.status)
        self.exemptions = dict(ov.exemptions)
        self.added = dict(ov.added)
        self.changes: list[tuple[ListType, EntryStatus, int, int]] = []
        self.keys_delta = 0

    def _base_row(self, entry_id: str) -> int | None:
        row = self.view.base.row_of(entry_id)
        return None if row is None or row in self.removed else row

    def _base_state(self, row: int) -> tuple[ListType, EntryStatus, KeyedExemptions]:
        base = self.view.base
        status = self.status.get(row, EntryStatus(base.e_status[row]))
        exemptions = self.exemptions.get(row, base.exemptions.get(row, ()))
        return ListType(base.e_type[row]), status, exemptions

    def _count(self, list_type: ListType, status: EntryStatus, row: int, d: int) -> None:
        self.changes.append((list_type, status, self.view.base.e_valid[row], d))

    def _put(self, entry: ListEntry) -> None:
        pairs = tuple(matches_of(entry, self.keyer))
        for key, _ in pairs:
            self.view.base.bloom.add(key >> 64)  # before the index holds it
        self.added[entry.entry_id] = (entry, pairs)
        self.changes.append((entry.list_type, entry.status, entry.valid_until, 1))
        self.keys_delta += len(pairs)

    def _drop(self, entry_id: str) -> bool:
        if entry_id in self.added:
            entry, pairs = self.added.pop(entry_id)
            self.changes.append((entry.list_type, entry.status, entry.valid_until, -1))
            self.keys_delta -= len(pairs)
            return True
        row = self._base_row(entry_id)
        if row is None:
            return False
        list_type, status, _ = self._base_state(row)
        self.removed.add(row)
        self._count(list_type, status, row, -1)
        self.keys_delta -= self._keys_of(row)  # as the snapshot counted them: len(k_hi)
        return True

    def reflected(self, op: DeltaOp) -> bool:
        """True when applying ``op`` now would change nothing: the list already shows it.

        A LIST: the entry is listed exactly so (the same subject keys, and all a
        check reads of each: ``ListedMatch``). A DELIST: the entry is not listed.
        A SUSPEND or RESUME: the entry is listed with that status; an EXEMPT: it
        is listed with that exemption; an UNEXEMPT: it is listed without it. A
        status or exemption op on an entry that is not listed is never shown: it
        stays ``no listed entry``, as the list cannot tell it from an entry the
        feed never listed. An exemption op naming no one it may is never shown
        either: ``apply`` refuses it. Changes nothing itself.
        """
        if op.op is DeltaKind.LIST:
            assert op.entry is not None
            return self._listed_as(op.entry)
        exemptions: tuple[Any, ...]
        if op.entry_id in self.added:
            entry, _ = self.added[op.entry_id]
            status, exemptions = entry.status, entry.exemptions
        else:
            row = self._base_row(op.entry_id)
            if row is None:
                return op.op is DeltaKind.DELIST
            _, status, exemptions = self._base_state(row)
        if op.op is DeltaKind.DELIST:
            return False
        if op.op in (DeltaKind.SUSPEND, DeltaKind.RESUME):
            wanted = EntryStatus.SUSPENDED if op.op is DeltaKind.SUSPEND else EntryStatus.ACTIVE
            return status is wanted
        item = self._exempted(op)
        if isinstance(item, RowError):
            return False
        return (item in exemptions) is (op.op is DeltaKind.EXEMPT)

    def _exempted(self, op: DeltaOp) -> Exemption | tuple[int, Exemption] | RowError:
        """The exemption of an EXEMPT or UNEXEMPT as the entry holds it: on an entry a
        delta listed, naming its person (``listfile.exempted_in``); on a base row,
        keyed by its person (``index_memory.KeyedExemptions``). Or why it may not
        name whom it names, as ``exempted_in`` refuses a snapshot row's."""
        assert op.exemption is not None
        field = "exemption.id_number"
        if op.entry_id in self.added:
            entry, _ = self.added[op.entry_id]
            try:
                return exempted_in(entry, op.exemption, field)
            except InvalidInput as exc:
                return RowError(op.line, exc.field, exc.problem)
        row = self._base_row(op.entry_id)
        assert row is not None
        base, e = self.view.base, op.exemption
        organisation = base.texts(row)[2] != ""  # only an organisation's entry has its name
        subjects = self._subjects_of(row)
        if not e.id_number:
            if organisation:
                return RowError(op.line, field, EXEMPTION_NEEDS_PERSON)
            return subjects[0][0], e.bare()  # a person's entry: its debtor, its one subject
        key = self.keyer.subject_key(e.id_type, e.id_number)
        if organisation and (key, Role.DEBTOR) in subjects:
            return RowError(op.line, field, EXEMPTION_NAMES_ORGANISATION)
        if any(k == key for k, _ in subjects):
            return key, e.bare()
        return RowError(op.line, field, EXEMPTION_NAMES_NO_ONE)

    def _subjects_of(self, row: int) -> list[tuple[int, Role]]:
        """(subject key, role) of each subject of base row ``row``, read off the whole
        entry column: only an exemption op (rare) asks."""
        base = self.view.base
        at = np.flatnonzero(np.frombuffer(cast(Any, base.m_entry), dtype="<u4") == row)
        return [((base.k_hi[i] << 64) | base.k_lo[i], Role(base.m_role[i])) for i in at.tolist()]

    def _listed_as(self, entry: ListEntry) -> bool:
        """True when ``entry`` is listed exactly as the list holds it now."""
        wanted = Counter(matches_of(entry, self.keyer))
        if entry.entry_id in self.added:
            return Counter(self.added[entry.entry_id][1]) == wanted
        row = self._base_row(entry.entry_id)
        if row is None:
            return False
        held = self._base_pairs(row, {key for key, _ in wanted})
        # keys the row has and ``entry`` lacks (a related person dropped) show in their number
        return Counter(held) == wanted and self._keys_of(row) == len(held)

    def _base_pairs(self, row: int, keys: set[int]) -> list[tuple[int, ListedMatch]]:
        """(key, match as the list holds it now) of base row ``row``, for each of ``keys``."""
        view, base = self.view, self.view.base
        _, status, exemptions = self._base_state(row)
        out = []
        for key in keys:
            hi, lo = key >> 64, key & ((1 << 64) - 1)
            i = bisect_left(base.k_hi, hi)
            while i < len(base.k_hi) and base.k_hi[i] == hi:
                if base.k_lo[i] == lo and base.m_entry[i] == row:
                    match = view.match_at(i)
                    assert match is not None  # _base_row: not removed
                    own = own_exemptions(exemptions, key)
                    out.append((key, match._replace(status=status, exemptions=own)))
                i += 1
        return out

    def _keys_of(self, row: int) -> int:
        """How many subject keys base row ``row`` has: every row's counted at once, the
        first time one is asked for (counting one row reads the whole column too)."""
        if self._keys_per_row is None:
            base = self.view.base
            entries = np.frombuffer(cast(Any, base.m_entry), dtype="<u4")
            self._keys_per_row = np.bincount(entries, minlength=base.entries)
        return int(self._keys_per_row[row])

    def apply(self, op: DeltaOp) -> RowError | None:
        if self.headerless and self.reflected(op):
            return None  # its change is in the list already: the snapshot may hold it
        if op.op is DeltaKind.LIST:
            assert op.entry is not None
            self._drop(op.entry_id)
            self._put(op.entry)
            return None
        if op.op is DeltaKind.DELIST:
            return None if self._drop(op.entry_id) else self._unknown(op)
        if op.entry_id in self.added:
            entry, _ = self.added[op.entry_id]
            changed = self._changed(entry.status, entry.exemptions, op)
            if isinstance(changed, RowError):
                return changed
            self._drop(op.entry_id)
            self._put(entry._replace(status=changed[0], exemptions=changed[1]))
            return None
        row = self._base_row(op.entry_id)
        if row is None:
            return self._unknown(op)
        list_type, status, keyed = self._base_state(row)
        changed = self._changed(status, keyed, op)
        if isinstance(changed, RowError):
            return changed
        if changed[0] is not status:
            self._count(list_type, status, row, -1)
            self._count(list_type, changed[0], row, 1)
        self.status[row] = changed[0]
        self.exemptions[row] = changed[1]
        return None

    def _changed(
        self, status: EntryStatus, exemptions: tuple[Any, ...], op: DeltaOp
    ) -> tuple[EntryStatus, tuple[Any, ...]] | RowError:
        """The status and exemptions after ``op``, the exemptions as the entry holds
        them (``_exempted``: an added entry's naming their person, a base row's keyed).
        An UNEXEMPT removes the exemption equal in channel, dates and person."""
        if op.op is DeltaKind.SUSPEND:
            return EntryStatus.SUSPENDED, exemptions
        if op.op is DeltaKind.RESUME:
            return EntryStatus.ACTIVE, exemptions
        item = self._exempted(op)
        if isinstance(item, RowError):
            return item
        if op.op is DeltaKind.EXEMPT:
            return status, (*exemptions, item)
        if item not in exemptions:
            return RowError(op.line, "exemption", f"entry {op.entry_id!r} has no such exemption")
        return status, tuple(e for e in exemptions if e != item)

    @staticmethod
    def _unknown(op: DeltaOp) -> RowError:
        return RowError(op.line, "entry_id", f"no listed entry {op.entry_id!r}")

    def overlay(self) -> Overlay:
        by_key: dict[int, list[ListedMatch]] = {}
        for _, pairs in self.added.values():
            for key, match in pairs:
                by_key.setdefault(key, []).append(match)
        return Overlay(
            removed=frozenset(self.removed),
            status=self.status,
            exemptions=self.exemptions,
            added=self.added,
            by_key={k: tuple(v) for k, v in by_key.items()},
        )


def apply_delta(
    view: MemoryView, ops: list[DeltaOp], keyer: SubjectKeyer, remedy: str = ""
) -> MemoryView:
    """``view`` with the ops not yet applied on top, or ``LoadRejected`` (nothing applied).

    On a snapshot without a header the first delta applied sets where the numbering
    stands; its seq is kept (``first_delta_seq``) so that a delta below it, come
    later, is refused rather than skipped as a replay (``feed.pending``; the
    refusal ends in ``remedy``). Such a snapshot may hold deltas that come again,
    so there an op whose change the list already shows is a no-op
    (``_DeltaState.reflected``): a delta all of whose ops are applies as a no-op
    (it counts for the numbering, as any delta applied), and one below
    ``first_delta_seq`` all of whose ops are is skipped, not refused.

    A ``view`` of such a snapshot with no delta applied yet but a
    ``first_delta_seq`` has the numbering another process set on it
    (``_AppliedOps.numbered``): its first op must be that seq, as if applied there.
    """
    info = view.info
    unknown = _unknown_base(view)
    numbered = unknown and info.first_delta_seq > 0
    state = _DeltaState(view, keyer, headerless=unknown or info.first_delta_seq > 0)
    todo = pending(
        ops, info.first_delta_seq - 1 if numbered else info.last_delta_seq,
        unknown_base=unknown and not numbered, first_seq=info.first_delta_seq,
        base=Path(info.source).name, remedy=remedy, reflected=state.reflected,
    )  # fmt: skip
    if not todo:
        return view
    errors = [e for e in (state.apply(op) for op in todo) if e is not None]
    if errors:
        raise LoadRejected("delta", errors)
    base_version = info.version.split("+", 1)[0]
    new_info = replace(
        info,
        version=f"{base_version}+{todo[-1].seq}",
        last_delta_seq=todo[-1].seq,
        first_delta_seq=todo[0].seq if unknown else info.first_delta_seq,
        source_timestamp=delta_source_time(todo, info.source_timestamp),
        counts=counts_after(info, state.changes, state.keys_delta),
    )
    return MemoryView(view.base, state.overlay(), new_info)


def _unknown_base(view: MemoryView) -> bool:
    """True for a snapshot without a header that no delta was applied to yet: it says
    nothing of the feed's seq numbering (``feed.pending``)."""
    info = view.info
    if info.last_delta_seq or info.includes_seq or not info.source:
        return False
    try:
        return not read_header(Path(info.source)).declared
    except (OSError, LoadRejected):
        return False  # cannot tell: the strict rule


def read_delta_file(
    path: Path, applied_seq: int | None = None, first_seq: int = 0
) -> list[DeltaOp]:
    """Every op of a delta file, or ``LoadRejected`` naming each bad row.

    With ``applied_seq``: a file with bad rows whose every row (bad ones too) has a
    ``seq`` at or below it holds nothing still to apply (a snapshot's header
    includes all of it), so it gives no ops instead of being refused; unless a
    row's seq is below ``first_seq`` (the version's ``first_delta_seq``): that
    one is not in the version at all.
    """
    ops, errors = read_delta(path)
    if errors:
        if applied_seq is not None and _included(path, applied_seq, first_seq):
            return []
        raise LoadRejected(str(path), errors)
    return ops


def _included(path: Path, applied_seq: int, first_seq: int = 0) -> bool:
    """True when every row of a delta file has a readable ``seq`` from ``first_seq`` (1
    at least) to ``applied_seq``."""
    rows = 0
    lowest = max(first_seq, 1)
    for _, obj in iter_rows(path):
        rows += 1
        seq = obj.get("seq") if isinstance(obj, dict) else None
        if isinstance(seq, str) and seq.isascii() and seq.isdigit() and len(seq) <= 19:
            seq = int(seq)
        if not isinstance(seq, int) or isinstance(seq, bool) or not lowest <= seq <= applied_seq:
            return False
    return rows > 0


def _lowest_seq(path: Path) -> int:
    """The lowest ``seq`` of a delta file's good rows (``MAX_SEQ`` + 1 if none can be read)."""
    try:
        ops, _ = read_delta(path)
    except Exception:  # noqa: BLE001 - only an order: reading it to apply it says why
        ops = []
    return min((op.seq for op in ops), default=MAX_SEQ + 1)


def _is_delta(path: Path) -> bool:
    """True for a file taken for a delta (``sniff_kind``; False if it cannot be read)."""
    try:
        kind, problem = sniff_kind(path)
    except Exception:  # noqa: BLE001 - only an order: reading it to apply it says why
        return False
    return kind is FileKind.DELTA and problem is None


#: Called with a delta file that could not be applied, and why.
OnRefused = Callable[[Path, LoadRejected], None]


class ListFileChanged(ShixinError):
    """The list file of ``serve --workers N --list FILE`` is no longer the one the pool
    started with (``pinned``), and its version from then cannot be had: serving the file
    as it is now would answer from another list than the other workers."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"the list file {path} changed under a running pool ({why}): this worker cannot "
            "serve what the others do; restart the server to serve the new file"
        )


class Loader:
    """Loads list files into a ``MemoryIndex``, one at a time.

    Whatever the path (one file at start, a directory followed live, a
    restart), a version is built the same way: a snapshot, then the ops of
    each delta file above its watermark (``loader.feed.pending``), and only
    then installed. So checks never see a bare snapshot whose deltas are still
    to come, and a restart serves what was served before it.
    """

    def __init__(
        self, index: MemoryIndex, keyer: SubjectKeyer, store: IndexStore | None = None
    ) -> None:
        self.index = index
        self.keyer = keyer
        self.store = store
        self._lock = threading.Lock()
        # what each delta seq applied on the served version held: a file rewritten in
        # place with other ops under those seqs is refused, not skipped
        self._applied = _AppliedOps(None, None)

    def _snapshot_view(
        self, path: Path, progress: Progress | None, pinned: str | None = None
    ) -> tuple[MemoryView, str | None]:
        """The snapshot at ``path`` as a version: mapped from its compiled folder when
        ``store`` has one (a restart, or another worker compiled it), else parsed,
        compiled into ``store`` and mapped. Its ``source`` is ``path``, where the
        snapshot is now, never the path it was compiled from: the list folder may
        have been moved or renamed since, and whether the snapshot has a header
        (which rules the deltas on top, ``_unknown_base``) is read from there.

        All of it runs under the store's inter-process lock (``IndexStore.lock``):
        of N workers loading the same snapshot, the first parses and compiles it,
        the others wait and then map that one compiled version, so the snapshot is
        parsed once and its columns are in the page cache once. Mapping inside the
        lock too means no other process prunes the folder between find and map.
        With it comes the snapshot's stamp (None without a store): the deltas
        applied on top are recorded under it (``_AppliedOps``).

        ``pinned``: the ``file_identity`` the file had when the pool of workers it
        is loaded for started (``serve --workers N --list FILE``). A file that no
        longer has it is served as the pool serves it, from the compiled version
        of that identity, or not at all (``ListFileChanged``); one that changes
        while it is parsed is never compiled nor served.
        """
        store = self.store
        identity = pinned
        if pinned is not None:
            identity = self._identity_of(path)
            if identity != pinned:
                return self._pinned_view(path, pinned, "replaced or rewritten since it started")
        if store is None:
            built = build_snapshot(path, self.keyer, progress)
            self._still(path, pinned)
            return built, None
        stamp = snapshot_stamp(path, self.keyer.fingerprint, identity)
        unsafe = store.others_may_write()
        if unsafe:  # what is compiled there could be changed under every worker: not used
            log.error("index folder %s is %s: another user could change the index compiled "
                      "there (a listed person answered ALLOW NOT_LISTED); serving %s unshared, "
                      "from memory, until only this server's user may write it (chmod go-w, "
                      "chown)", store.folder, unsafe, path)  # fmt: skip
            built = build_snapshot(path, self.keyer, progress)
            self._still(path, pinned)
            return built, None
        with store.lock():
            compiled = store.find(stamp)
            if compiled is not None:
                try:
                    base, info = map_compiled(compiled, self.keyer.fingerprint)
                except (OSError, ValueError, KeyError, ConfigurationError) as exc:
                    log.warning("compiled index %s unusable (%s): compiling %s again",
                                compiled, exc, path)  # fmt: skip
                    store.discard(compiled)
                else:
                    log.info("%s: mapping its compiled index %s (no re-parse)", path, compiled)
                    return MemoryView(base, Overlay(), _as_loaded(info, path)), stamp
            built = build_snapshot(path, self.keyer, progress)
            self._still(path, pinned)
            try:
                compiled = store.put(built.base, built.info, stamp)
            except OSError as exc:
                log.warning("cannot compile %s into %s (%s): serving it unshared, from "
                            "memory", path, store.folder, exc)  # fmt: skip
                return built, stamp
            try:
                base, info = map_compiled(compiled, self.keyer.fingerprint)
            except (OSError, ValueError, KeyError, ConfigurationError) as exc:
                log.warning("compiled index %s unusable right after compiling (%s): serving "
                            "%s unshared, from memory", compiled, exc, path)  # fmt: skip
                return built, stamp
            log.info("%s: compiled into %s (mapped by every process)", path, compiled)
        return MemoryView(base, Overlay(), _as_loaded(info, path)), stamp

    @staticmethod
    def _identity_of(path: Path) -> str:
        try:
            return file_identity(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"

    def _still(self, path: Path, pinned: str | None) -> None:
        """``ListFileChanged`` if the file at ``path`` lost its ``pinned`` identity
        (while it was parsed: what was read may be either file, or half of each)."""
        if pinned is not None and self._identity_of(path) != pinned:
            raise ListFileChanged(path, "replaced or rewritten while this worker read it")

    def _pinned_view(self, path: Path, pinned: str, why: str) -> tuple[MemoryView, str]:
        """The version the pool serves of the file at ``path`` as it was (``pinned``):
        its compiled folder, mapped; else ``ListFileChanged``."""
        store = self.store
        if store is None:
            raise ListFileChanged(path, f"{why}; no index folder holds the version served")
        stamp = snapshot_stamp(path, self.keyer.fingerprint, pinned)
        with store.lock():
            compiled = store.find(stamp)
            if compiled is None:
                raise ListFileChanged(
                    path, f"{why}; {store.folder} holds no compiled version of it as it was"
                )
            try:
                base, info = map_compiled(compiled, self.keyer.fingerprint)
            except (OSError, ValueError, KeyError, ConfigurationError) as exc:
                raise ListFileChanged(
                    path, f"{why}; its compiled version {compiled} is unusable: {exc}"
                ) from exc
        log.warning("%s: %s; mapping the compiled index %s of the file as the pool started "
                    "with it, which the other workers serve (restart the server to serve the "
                    "new file)", path, why, compiled)  # fmt: skip
        return MemoryView(base, Overlay(), _as_loaded(info, path)), stamp

    def load_path(
        self, path: Path, progress: Progress | None = None, pinned: str | None = None
    ) -> MemoryView:
        """Apply a snapshot (alone) or a delta file whole, or raise ``LoadRejected``.

        ``pinned``: the file's ``file_identity`` when the pool of workers started
        (see ``_snapshot_view``); a file that no longer has it is not read.
        """
        if (pinned is None or self._identity_of(path) == pinned) and detect_kind(
            path
        ) is FileKind.DELTA:
            return self.load_delta(path)
        return self.load_snapshot(path, (), progress=progress, pinned=pinned)

    def load_delta(self, path: Path) -> MemoryView:
        """Apply the pending ops of a delta file to the serving version, whole or not at all."""
        with self._lock:
            current = self.index.current()
            if current is None:
                raise LoadRejected(str(path), [RowError(0, "", "a delta needs a snapshot first")])
            refusal = None
            with self._applied.held():
                try:
                    view = self._with_delta(current, path, self._applied)
                except _RefusedOnRecorded as exc:  # served as another process serves it
                    view, refusal = exc.view, LoadRejected(exc.source, exc.errors)
            self.index.install(view)
            if refusal is not None:
                raise refusal
            return view

    def load_snapshot(
        self, path: Path, deltas: Sequence[Path], on_refused: OnRefused | None = None,
        progress: Progress | None = None, pinned: str | None = None,
    ) -> MemoryView:  # fmt: skip
        """Build ``path``, apply ``deltas`` (in order) on top, then install it.

        A bad snapshot raises ``LoadRejected`` and changes nothing. A delta file
        that cannot be applied is left out and passed to ``on_refused``, exactly
        as it was when it arrived live, so the version is the same either way.
        ``pinned``: see ``_snapshot_view`` (``ListFileChanged``, nothing changed).
        """
        with self._lock:
            view, stamp = self._snapshot_view(path, progress, pinned)
            applied = _AppliedOps(self.store, stamp)
            if deltas:  # (a lone snapshot file has none: its record is never read)
                with applied.held():
                    view, refused = self._with_deltas(view, deltas, applied)
            else:
                refused = []
            if on_refused is not None:
                for delta, exc in refused:
                    on_refused(delta, exc)
            self.index.install(view)
            self._applied = applied
            return view

    def _with_deltas(
        self, view: MemoryView, deltas: Sequence[Path], applied: _AppliedOps
    ) -> tuple[MemoryView, list[tuple[Path, LoadRejected]]]:
        """``view`` with every delta file that applies, and those that do not, with why.

        In name order (on a snapshot without a header, in order of each file's
        lowest ``seq``), then again over the refused ones for as long as one more
        applies: a file that arrived before the one it follows (by ``seq``)
        applies once that one has, whatever their names. A file gone since it
        was listed is passed over (it is no longer part of the list).
        """
        remaining = list(deltas)
        if _unknown_base(view):
            # the first delta applied on a snapshot without a header sets the numbering, and
            # one below it is refused from then on: so the lowest seq goes first, whatever
            # the names (without a record of the numbering, a restart after such a refusal
            # serves every delta; with one, ``_AppliedOps.numbered`` keeps the refusal)
            remaining.sort(key=lambda delta: (_lowest_seq(delta), delta.name))
        refused: dict[Path, LoadRejected] = {}
        while remaining:
            before = view.info.last_delta_seq
            still: list[Path] = []
            for delta in remaining:
                try:
                    view = self._with_delta(view, delta, applied)
                except FileNotFoundError:
                    refused.pop(delta, None)
                    continue
                except _RefusedOnRecorded as exc:
                    view, refused[delta] = exc.view, LoadRejected(exc.source, exc.errors)
                except LoadRejected as exc:
                    refused[delta] = exc
                except OSError as exc:
                    refused[delta] = LoadRejected(str(delta), [RowError(0, "", str(exc))])
                except Exception as exc:  # a bug: that file refused, the others still read
                    problem = unexpected_problem(exc)
                    if delta not in refused or _first_problem(refused[delta]) != problem:
                        log_unexpected(delta, exc)
                    refused[delta] = LoadRejected(str(delta), [RowError(0, "", problem)])
                else:
                    refused.pop(delta, None)
                    continue
                still.append(delta)
            if view.info.last_delta_seq == before:
                break  # a whole round applied nothing more: what is left stays refused
            remaining = still
        return view, [(delta, refused[delta]) for delta in remaining if delta in refused]

    def _with_delta(self, view: MemoryView, path: Path, applied: _AppliedOps) -> MemoryView:
        """``view`` with the delta file at ``path`` applied (``_apply_file``).

        When it does not apply, but some process of this version (this one before
        a restart, or another worker) applied ops from a file of that name above
        ``view``'s last seq, the file was rewritten since, or holds rows that can
        no longer be read: those ops are served as that process serves them (read
        from the record, ``_AppliedOps.recorded``), and the file is judged again on
        top of them, as it is judged there. Refused still: ``_RefusedOnRecorded``,
        with the version to serve.

        On a snapshot without a header that no delta is applied to here yet, the
        numbering the record shows is taken first (``_AppliedOps.numbered``).
        """
        view = applied.numbered(view)
        try:
            return self._apply_file(view, path, applied)
        except LoadRejected:
            replayed = self._replayed(view, path, applied)
            if replayed is None:
                raise
        try:
            return self._apply_file(replayed, path, applied)
        except LoadRejected as exc:
            raise _RefusedOnRecorded(replayed, exc) from None

    def _replayed(self, view: MemoryView, path: Path, applied: _AppliedOps) -> MemoryView | None:
        """``view`` with the ops ``path`` held when they were applied on this version (the
        record's), all of them, or None when there are none above ``view``'s last seq or
        they do not all apply (a delta before them missing here)."""
        batches = applied.recorded(path.name, view.info.last_delta_seq)
        if not batches:
            return None
        replayed = view
        try:
            for ops in batches:
                replayed = apply_delta(replayed, ops, self.keyer)
        except LoadRejected:
            return None
        first, last = view.info.last_delta_seq + 1, replayed.info.last_delta_seq
        if last < first:
            return None
        log.warning("list %s: seqs %d to %d served as first applied (recorded in %s), not as the "
                    "file holds them now", path, first, last, applied.where)  # fmt: skip
        return replayed

    def _apply_file(self, view: MemoryView, path: Path, applied: _AppliedOps) -> MemoryView:
        """``view`` with the delta file at ``path`` applied; ``applied`` (what each seq
        applied on ``view``'s snapshot held) gets the seqs it applies. An op at a seq
        applied before that is not what was applied there refuses the file: skipping
        it would serve the old op under a label that a restart gives the new one. (On
        a snapshot without a header, not if the list shows its change: as
        ``reflected`` ops are.) So does one above ``view``'s last seq whose seq the
        record says was applied with another op (by another process, or before a
        restart), whatever the list shows."""
        last_seq = view.info.last_delta_seq
        # on a snapshot without a header, a delta it holds may come again under other
        # seqs: there an op whose change the list shows is harmless at any seq
        headerless = view.info.first_delta_seq > 0
        shown = _DeltaState(view, self.keyer, headerless=True).reflected if headerless else None
        digests = applied.digests
        try:
            ops = read_delta_file(path, last_seq, view.info.first_delta_seq)
            errors = [
                RowError(op.line, "", rewritten_problem(op.seq, path.name, applied.recorded_in))
                for op in ops
                if (held := digests.get(op.seq)) is not None and held != op_digest(op)
                and (op.seq > last_seq or not (shown is not None and shown(op)))
            ]  # fmt: skip
            if errors:
                raise LoadRejected(str(path), errors)
            new = apply_delta(view, ops, self.keyer, applied.remedy)
        except LoadRejected as exc:
            raise LoadRejected(str(path), exc.errors) from None
        applied.add(path.name, [op for op in ops if last_seq < op.seq <= new.info.last_delta_seq])
        return new


class _RefusedOnRecorded(LoadRejected):
    """A delta file refused on top of the ops some process applied from it before
    (``Loader._with_delta``): ``view`` serves those ops, as that process does."""

    def __init__(self, view: MemoryView, refusal: LoadRejected) -> None:
        super().__init__(refusal.source, refusal.errors)
        self.view = view


class _AppliedOps:
    """What each delta seq applied on top of one snapshot's version held (``op_digest``).

    This process's, and with a store, every other's: the ops applied are recorded
    beside the compiled version (``IndexStore.applied``, one line per delta file
    applied at once: its name, and each op with its digest), read as the record
    grows. So every worker, a worker started in a dead one's place and a restart
    all refuse a delta rewritten in place under a seq some process applied, and
    serve the op that process applied (``Loader._with_delta``), under one label.

    A record line that cannot be read (damaged, or written by a release with
    another compiled format, whose ops may read otherwise) is said once and
    passed over; a line cut short by a writer killed mid-append was never served
    and is not read at all (``AppliedRecord``).
    """

    def __init__(self, store: IndexStore | None, stamp: str | None) -> None:
        self.store = store
        self.stamp = stamp
        self.digests: dict[int, bytes] = {}
        self._record: AppliedRecord | None = None  # held: between reading and appending
        self._fresh: list[bytes] = []  # lines to append when the record is let go
        self._since = (0, 0)  # where the record was read to

    @property
    def recording(self) -> bool:
        """True when the record is held and usable: what is applied now is recorded."""
        return self._record is not None and self._record.usable

    @property
    def recorded_in(self) -> str:
        """Where what is applied now is recorded: ``"index"`` (the index folder),
        ``"spare"`` (a pool's private folder), or ``""`` (nowhere: this process only)."""
        if not self.recording or self.store is None or self._record is None:
            return ""
        spare = self.store.spare
        return "spare" if spare is not None and self._record.path.parent == spare else "index"

    @property
    def where(self) -> str:
        return str(self._record.path) if self._record is not None else "this process"

    @property
    def remedy(self) -> str:
        """What to do about a delta below the first applied on a snapshot without a
        header (``feed.before_first_problem``) when the numbering is recorded: a
        restart keeps it, so the default remedy (restart) would not do. Recorded in a
        pool's private folder (the index folder cannot hold it), a restart forgets it:
        the default remedy then holds."""
        if self.recorded_in != "index":
            return ""
        assert self._record is not None
        return (
            "publish a snapshot with a header whose includes_seq covers it (a restart keeps "
            "this numbering, recorded in the index folder; to apply every delta lowest seq "
            f"first, stop the server, delete {self._record.path.name} there and start it)"
        )

    def numbered(self, view: MemoryView) -> MemoryView:
        """``view``, or on a snapshot without a header that no delta is applied to yet
        (``_unknown_base``), one with the numbering the record shows: some process
        (another worker, or this server before a restart) applied deltas on it, and
        the first it applied set the numbering there, refusing any delta below. Its
        seq, the lowest recorded (no seq below it is ever applied there), is taken
        as ``first_delta_seq``, so a worker started in a dead one's place, a restart,
        and a worker reading the deltas later, in another order, refuse what the
        first refused, with the same message, instead of applying every delta
        lowest seq first and serving, under the same label, what it does not."""
        if view.info.last_delta_seq or not self.digests or not _unknown_base(view):
            return view
        info = replace(view.info, first_delta_seq=min(self.digests))
        return MemoryView(view.base, view.overlay, info)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the record locked while deltas are judged and applied: what the others
        applied since it was last read comes in first, and what is applied meanwhile is
        appended, durable, when the block ends (before the caller serves it)."""
        if self.store is None or self.stamp is None:
            yield
            return
        with self.store.applied(self.stamp, self._since) as record:
            for _, ops in self._batches(record, record.lines):
                for op in ops:
                    self.digests.setdefault(op.seq, op_digest(op))
            self._record = record
            try:
                yield
                record.add(self._fresh)
            finally:
                self._record, self._fresh = None, []
            self._since = record.since

    def add(self, name: str, ops: list[DeltaOp]) -> None:
        """``ops`` of the file ``name`` applied (at once): those at seqs not known yet are
        recorded."""
        fresh = [op for op in ops if op.seq not in self.digests]
        for op in fresh:
            self.digests[op.seq] = op_digest(op)
        if fresh and self.recording:
            self._fresh.append(_record_line(name, fresh))

    def recorded(self, name: str, above: int) -> list[list[DeltaOp]]:
        """The ops of the file ``name`` recorded above seq ``above``, as they were applied
        at once, in order."""
        if self._record is None or all(seq <= above for seq in self.digests):
            return []  # (every seq recorded is held in ``digests``: nothing to read)
        batches = []
        for file, ops in self._batches(self._record, self._record.every_line()):
            ops = [op for op in ops if op.seq > above]
            if file == name and ops:
                batches.append(ops)
        return batches

    @staticmethod
    def _batches(record: AppliedRecord, lines: list[bytes]) -> Iterator[tuple[str, list[DeltaOp]]]:
        for line in lines:
            try:
                yield _recorded_batch(line)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                record.report(f"{record.path.name}: a line cannot be read ({exc}): passed over")


def _op_content(op: DeltaOp) -> tuple[Any, ...]:
    """What an op changes: its seq, kind, entry and exemption (not its line nor feed time)."""
    return (op.seq, op.op, op.entry_id, op.entry, op.exemption)


def _record_line(name: str, ops: list[DeltaOp]) -> bytes:
    """The record line (``_AppliedOps``) of ``ops``, applied at once from the file ``name``."""
    return orjson.dumps({
        "format": FORMAT,
        "file": name,
        "ops": [[op_digest(op).hex(), _canonical(_op_content(op)), op.line, op.published_at]
                for op in ops],
    })  # fmt: skip


def _recorded_batch(line: bytes) -> tuple[str, list[DeltaOp]]:
    """The file name and ops of a record line; ``ValueError`` (or another) for a line not
    written whole by this format, or whose op does not match its digest."""
    raw = orjson.loads(line)
    if raw["format"] != FORMAT:
        raise ValueError(f"format {raw['format']!r}, not {FORMAT}")
    ops = []
    for digest, (seq, kind, entry_id, entry, exemption), line_no, published_at in raw["ops"]:
        op = DeltaOp(
            seq, DeltaKind[kind], entry_id, None if entry is None else _entry_of(entry),
            None if exemption is None else _exemption_of(exemption), line_no, published_at,
        )  # fmt: skip
        if op_digest(op).hex() != digest:
            raise ValueError(f"seq {seq} does not match its digest")
        ops.append(op)
    return raw["file"], ops


def _entry_of(raw: list[Any]) -> ListEntry:
    """A ``ListEntry`` from its ``_canonical`` form."""
    entry_id, list_type, status, case, court, published, valid, debtor, org, related, ex = raw
    return ListEntry(
        entry_id, ListType[list_type], EntryStatus[status], case, court, published, valid,
        _subject_of(debtor), org, tuple(_subject_of(r) for r in related),
        tuple(_exemption_of(e) for e in ex),
    )  # fmt: skip


def _subject_of(raw: list[Any]) -> ListedSubject:
    role, name, id_type, id_number = raw
    return ListedSubject(Role[role], name, None if id_type is None else IdType[id_type], id_number)


def _exemption_of(raw: list[Any]) -> Exemption:
    channel, first_day, last_day, id_type, id_number = raw
    return Exemption(
        Channel[channel], first_day, last_day, None if id_type is None else IdType[id_type],
        id_number,
    )  # fmt: skip


def _canonical(value: Any) -> Any:
    """An op's values as plain JSON values: named tuples as lists, enums by name."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


def op_digest(op: DeltaOp) -> bytes:
    """What a delta op changes, as a digest: its seq, kind, entry and exemption, as
    normalised (not where it stands in its file, nor how the row was spelt, nor its
    feed time: a cumulative delta sent again with a new export time changes nothing;
    as ``publish_redis.op_digest`` has it)."""
    return hashlib.blake2b(orjson.dumps(_canonical(_op_content(op))), digest_size=16).digest()


def rewritten_problem(seq: int, name: str, recorded: str = "") -> str:
    """Why a delta file whose op at an applied ``seq`` is not the one applied is refused;
    ``recorded``: where the ops applied are recorded (``_AppliedOps.recorded_in``):
    ``"index"``, the index folder; ``"spare"``, the pool's private folder; else nowhere
    but in this process."""
    restart = {
        "index": "a restart serves the op applied too: it is recorded in the index folder",
        "spare": "every worker of this server serves the op applied: it is recorded in the "
                 "pool's private folder, as the index folder cannot hold it; a restart "
                 "serves the file as it is then",
    }.get(recorded, "not recorded in an index folder: a restart serves the file as it is now")  # fmt: skip
    return (
        f"seq {seq} was applied with another op than {name} now holds (rewritten in place?): "
        "the served list keeps the op applied; a delta's seq is never reused, so have the "
        f"feed send the change under a new seq ({restart})"
    )


def _as_loaded(info: VersionInfo, path: Path) -> VersionInfo:
    """A mapped version's info as loaded now from the snapshot at ``path``."""
    return replace(info, source=str(path), loaded_at=time.time())


#: The endings of the names list files are read from, in a followed folder.
READ_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
#: Endings of files a feed keeps beside its list files (checksums, signatures, an
#: editor's backups): no list, never read, and no sign of a feed gone another format
SIDECAR_SUFFIXES = (".sha256", ".sha512", ".sha1", ".md5", ".sig", ".asc", ".bak", "~")


def _candidates(directory: Path) -> tuple[list[Path], list[Path]]:
    """The list files in ``directory``, by name; a symbolic link to nothing too (so
    that it is refused, not passed over as if it were not there). And, by name, the
    files not read that are named as list files (``delta-0003.jsonl.gz``,
    ``snapshot-0002.txt``): refused while they are there, never passed over in
    silence (a feed switched to gzip would go stale with nothing said)."""
    names, unread = [], []
    for entry in os.scandir(directory):
        name = entry.name
        if name.startswith(".") or name.endswith((".part", ".tmp")):
            continue
        if not entry.is_file() and not (entry.is_symlink() and not os.path.exists(entry.path)):
            continue
        if name.lower().endswith((".meta.json", *SIDECAR_SUFFIXES)):
            continue  # a CSV snapshot's header, read with it; or a checksum, a backup
        if name.lower().endswith(READ_SUFFIXES):
            names.append(Path(entry.path))
        elif named_kind(Path(name)) is not None:
            unread.append(Path(entry.path))
    return sorted(names), sorted(unread)


def unread_problem(path: Path) -> str:
    """Why a file named as a list file is not read (``_candidates``)."""
    kind = "delta" if named_kind(path) is FileKind.DELTA else "snapshot"
    return (
        f"is named as a {kind} file but is not read: only names ending "
        f"{', '.join(READ_SUFFIXES)} are (a compressed file is not: decompress it into one "
        "of those); the list is behind while it is here (a file not part of the feed: "
        "remove it, or give it a name beginning with . or ending in .part or .tmp)"
    )


#: The line (with the traceback) of a file refused for an error no handler expects.
UNEXPECTED_LOG = "list %s: unexpected error while reading it, a bug in shixin-check: refused"


def short_of(exc: BaseException) -> str:
    """What the machine lacked, when ``exc`` is reading a list running out of memory (or
    threads, or a parse process killed, by the OOM killer most often), else "": not a
    bug, and no traceback helps the person on call."""
    if isinstance(exc, BrokenProcessPool):
        return (f"a parse process died before it finished ({exc}): most often the kernel's "
                "OOM killer (see dmesg): give the server more memory (one parse process "
                "a core reads a big snapshot, each holding its part)")  # fmt: skip
    advice = limit_advice(exc)
    return f"{str(exc) or type(exc).__name__}: {advice}" if advice else ""


def unexpected_problem(exc: Exception) -> str:
    """Why a file is refused whose reading raised what no handler expects: a bug (its
    traceback is logged with it), which must not stop the files after it being read;
    or the machine short of memory (``short_of``: said so, without a traceback)."""
    short = short_of(exc)
    if short:
        return (f"reading it failed, the machine short of what it takes: {short}; refused, "
                "the last good list keeps serving (read again when the file changes, or "
                "at a restart)")  # fmt: skip
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return (
        f"reading it failed unexpectedly ({name}: {exc}): refused, the last "
        "good list keeps serving; a bug in shixin-check, please report it with the "
        "traceback logged"
    )


def _unreadable_folder(exc: OSError) -> str:
    """Why the list folder cannot be read, and what to do when a limit is the cause (out
    of open files, the folder is not to blame)."""
    advice = short_of(exc)
    why = advice if advice else str(exc)
    return f"cannot be read ({why}): the last good list keeps serving"


def log_unexpected(path: Path, exc: Exception) -> None:
    """The line of a file refused for an error no handler expects: with the traceback
    of the bug; the machine short of memory said in one line (``short_of``)."""
    if short_of(exc):
        log.error("list %s: %s", path, unexpected_problem(exc))
    else:
        log.error(UNEXPECTED_LOG, path, exc_info=exc)


#: What identifies a file's content cheaply, one ``(size, mtime_ns, ctime_ns, inode)`` per
#: file read for it: the file, and a CSV snapshot's header sidecar when it has one.
_Stamp = tuple[tuple[int, int, int, int], ...]

#: Polls a new or changed file must stay unchanged before it is read, when no ``settle``
#: is given (``serve`` gives ``--settle``, 1 s): a copy written in place that stalls for
#: less is not read half-written.
SETTLE_POLLS = 10


def _stat_of(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _stamp(path: Path) -> _Stamp:
    stamp: _Stamp = (_stat_of(path),)
    if path.suffix.lower() == ".csv":  # its header sidecar is part of it
        try:
            stamp += (_stat_of(sidecar_of(path)),)
        except FileNotFoundError:
            pass
    return stamp


def _dangling(path: Path) -> str | None:
    """Why ``path`` cannot be read when it is a symbolic link to nothing, else None."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return f"is a symbolic link to {target}, which does not exist (a mount not there?)"


def _published_at(path: Path) -> float | None:
    """The ``published_at`` of a snapshot's header, None if it has none or it cannot
    be read, whatever the error (the load then says why)."""
    try:
        return read_header(path).published_at
    except Exception:  # noqa: BLE001 - the load reads it again and refuses it, saying why
        return None


def _says_no_time(path: Path) -> bool:
    """True when the snapshot's header gives no ``published_at`` (it has no header, or
    one without it); False when it gives one or cannot be read (the load says why)."""
    try:
        return read_header(path).published_at is None
    except Exception:  # noqa: BLE001 - the load reads it again and refuses it, saying why
        return False


def _instant(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(at + 8 * 3600))


def _unchanged_since(stamp: _Stamp, seconds: float) -> bool:
    """True when no file of ``stamp`` was written in the last ``seconds`` (by its mtime):
    a file moved in with its times kept (``rsync``, ``cp -p`` then ``mv``), or one that
    was there before the server started, need not be watched that long."""
    now = time.time_ns()
    return all(now - mtime >= seconds * 1e9 for _, mtime, _, _ in stamp)


class DirectoryFollower(Background):
    """Watches a list directory: new snapshots replace the list, new deltas apply.

    The version served is always the newest snapshot (by name) that
    validates, plus the ops of every delta file above its watermark, in
    ``seq`` order without a gap: at start (``initial_load``) and live alike. A
    refused newest snapshot leaves the last good version serving and the
    follower *behind* (``MemoryIndex.refused``), until a newer snapshot loads;
    at start the newest snapshot that validates is served. A refused delta
    file (a bad row, or a seq gap: it arrived before the delta it follows; or,
    on a snapshot without a header, a seq below the first delta applied on it
    whose change the list does not show already) is left out and also marks it behind; it is tried again when it changes and
    whenever another file applies (logged again only if refused for another
    reason), so it applies once the missing delta arrives. Behind always says
    what is wrong now: a refused file that is fixed, deleted, superseded by a
    newer snapshot or included in the served one (its every seq at or below
    the watermark) no longer counts. A snapshot newer by name whose header's
    ``published_at`` is older than the served one's is refused (an old export
    copied in); so is a delta whose op at a seq already applied is not the op
    applied there (``Loader._with_delta``), a symbolic link to nothing, and,
    while it lasts, the folder itself when it holds no snapshot or cannot be
    read: each said once, and again only when it changes.

    Files are taken in name order once they have settled: unchanged (size,
    mtime, ctime, inode) for ``settle`` seconds (``SETTLE_POLLS`` polls by
    default), watched or by their mtime, and for one poll at least (on a
    snapshot without a header that no delta is applied to yet, the deltas
    that settle in one poll lowest ``seq`` first, as at start); so a file
    copied in place that stalls for less is not read half-written (writing
    ``x.part`` and renaming it is safer still). At start, a file written in
    the last ``settle`` seconds is watched that long first. Names starting
    with a dot or ending in ``.part`` / ``.tmp`` are ignored; one named as a
    list file whose name ends in what is not read (``READ_SUFFIXES``) is
    refused until it is removed. A file that cannot be read (an I/O error,
    or an error no handler expects: a bug, its traceback logged once) is
    refused like a bad one, naming it, and the files after it are taken; at
    start the newest older snapshot that validates is served instead. A
    thread that ends unasked leaves the list behind (``FOLLOWER_STOPPED``).
    """

    def __init__(
        self,
        directory: Path,
        loader: Loader,
        on_event: Callable[[str, Path, str], None],
        interval: float = 0.2,
        settle: float | None = None,
    ) -> None:
        super().__init__("list-follower")
        self.directory = directory
        self.loader = loader
        self.on_event = on_event
        self.interval = interval
        self.settle = SETTLE_POLLS * interval if settle is None else settle
        self.serving: Path | None = None  # the snapshot the served version was built from
        self._seen: dict[Path, _Stamp] = {}  # files taken, as they were when taken
        self._pending: dict[Path, tuple[_Stamp, float]] = {}  # changed: since when (monotonic)
        self._kinds: dict[Path, FileKind] = {}
        self._refused: dict[Path, str] = {}  # refused now, and why (the first problem)
        # files named as list files whose names end in what is not read, and the kind
        # their names say: refused (once) until removed
        self._unread: dict[Path, FileKind] = {}
        self._published: float | None = None  # the served snapshot's header published_at
        # what is wrong with the folder itself (gone, unreadable, no snapshot left): said
        # once, and again when it changes or clears; the list is behind meanwhile
        self._folder_problem: str | None = None
        self._empty_since: float | None = None  # monotonic: since when it holds no snapshot
        self._day = today()  # China's: a file refused for a date ahead is judged again after it

    def initial_load(self) -> None:
        """Serve the newest snapshot that validates, with its deltas, now.

        A file written in the last ``settle`` seconds is watched that long first:
        one still changing is left to the poll, which takes it once it settles.
        """
        stamps: dict[Path, _Stamp] = {}
        files, unread = _candidates(self.directory)
        self._note_unread(unread)
        for path in files:
            try:
                stamps[path] = _stamp(path)
            except FileNotFoundError:
                dangling = _dangling(path)
                if dangling is not None:
                    self._refuse(path, f"{path}: {dangling}", dangling)
                continue  # else gone since it was listed
            except OSError as exc:
                self._refuse(path, f"{path}: {exc}", str(exc))
        for path, stamp in self._settled_at_start(stamps).items():
            self._seen[path] = stamp
            kind = self._detect(path)
            if kind is not None:
                self._kinds[path] = kind
        snapshots = sorted(p for p, kind in self._kinds.items() if kind is FileKind.SNAPSHOT)
        # as live, where one without a published_at is refused only after one served
        # that has it: each such (newest first) waits until it is known what loads
        timeless: list[Path] = []
        for i in reversed(range(len(snapshots))):
            # as live: a snapshot published before one it follows by name is not served
            # (live, that one was served and this one refused)
            if self._older_than_before(snapshots[i], snapshots[:i]):
                continue
            if self._waits_for_a_time(snapshots[i], snapshots[:i]):
                timeless.append(snapshots[i])
                continue
            if self._try_snapshot(snapshots[i]):
                break
        if timeless:
            self._take_timeless_at_start(timeless)
        self._report()

    def _waits_for_a_time(self, path: Path, before: list[Path]) -> bool:
        """True when ``path`` gives no ``published_at`` and a snapshot before it by name
        does: whether it may be served depends on what of those loads."""
        if not _says_no_time(path):
            return False
        return any(_published_at(earlier) is not None for earlier in before)

    def _take_timeless_at_start(self, timeless: list[Path]) -> None:
        """Snapshots without a ``published_at`` that wait (newest first; each newer than
        what was served, if anything was): refused if the snapshot served says when it
        was published, as live; else the newest of them that loads is served."""
        served, then = self.serving, self._published
        if served is not None and then is not None:
            for path in timeless:
                self._refuse_timeless(path, served, then)
            return
        for path in timeless:
            if self._try_snapshot(path):
                return

    def _older_than_before(self, path: Path, before: list[Path]) -> bool:
        """True (and ``path`` refused) when its header's ``published_at`` is older than
        that of a snapshot before it by name."""
        at = _published_at(path)
        if at is None:
            return False
        for earlier in reversed(before):
            then = _published_at(earlier)
            if then is not None and at < then:
                self._refuse_older(path, at, earlier, then)
                return True
        return False

    def _refuse_older(self, path: Path, at: float, served: Path, then: float) -> None:
        exc = LoadRejected(str(path), [RowError(1, "snapshot.published_at", (
            f"{_instant(at)} is older than {_instant(then)}, when {served.name} was "
            "published: an older list is never served in place of a newer one (have the "
            "feed send a newer snapshot; remove this one if it was copied in by mistake)"
        ))])  # fmt: skip
        self._refuse(path, str(exc), _first_problem(exc))

    def _refuse_timeless(self, path: Path, served: Path, then: float) -> None:
        header = (f"its sidecar {path.name}.meta.json with the feed's header"
                  if path.suffix.lower() == ".csv" else "the feed's header row")  # fmt: skip
        exc = LoadRejected(str(path), [RowError(1, "snapshot.published_at", (
            f"missing (no header row, or one without it), while {served.name} says it was "
            f"published {_instant(then)}: a snapshot that does not say when it was "
            "published is never served in place of one that does (it may be older); give "
            f"it {header}, or remove it if it was copied in by mistake"
        ))])  # fmt: skip
        self._refuse(path, str(exc), _first_problem(exc))

    def _settled_at_start(self, stamps: dict[Path, _Stamp]) -> dict[Path, _Stamp]:
        fresh = [
            p for p, stamp in stamps.items()
            if not _unchanged_since(stamp, self.settle)
        ]  # fmt: skip
        if not fresh:
            return stamps
        self._stop.wait(self.settle)
        settled = dict(stamps)
        for path in fresh:
            try:
                again: _Stamp | None = _stamp(path)
            except OSError:
                again = None
            if again != stamps[path]:
                del settled[path]  # still being written (or gone): the poll sees to it
        return settled

    def _deltas(self) -> list[Path]:
        """The delta files known, in name order, but those changing now (they are read
        once they settle, as any new file is)."""
        pending = self._pending
        return sorted(
            p for p, kind in self._kinds.items() if kind is FileKind.DELTA and p not in pending
        )

    def _detect(self, path: Path) -> FileKind | None:
        try:
            return detect_kind(path)
        except LoadRejected as exc:
            self._refuse(path, str(exc), _first_problem(exc))
        except OSError as exc:
            self._refuse(path, f"{path}: {exc}", str(exc))
        except Exception as exc:
            self._refuse_unexpected(path, exc)
        return None

    def _refuse(self, path: Path, detail: str, problem: str) -> None:
        self._refused[path] = problem
        self.on_event("rejected", path, detail)

    def _unexpected(self, path: Path, exc: Exception) -> str | None:
        """The problem of a file whose reading raised what no handler expects (a bug,
        not a bad file), its traceback logged when it is new for the file; None when
        the file is refused for it already (said once)."""
        problem = unexpected_problem(exc)
        if self._refused.get(path) == problem:
            return None
        log_unexpected(path, exc)
        return problem

    def _refuse_unexpected(self, path: Path, exc: Exception) -> None:
        """Refuse ``path`` as any refused file (behind; the follower goes on to the next
        file) for an error no handler expects while reading or applying it."""
        problem = self._unexpected(path, exc)
        if problem is not None:
            self._refuse(path, f"{path}: {problem}", problem)

    def _note_unread(self, unread: list[Path]) -> bool:
        """Refuse each file named as a list file whose name ends in what is not read
        (``_candidates``), once: it counts as refused until it is removed. True when
        one is new."""
        new = [path for path in unread if path not in self._unread]
        for path in new:
            self._unread[path] = named_kind(path) or FileKind.DELTA
            problem = unread_problem(path)
            self._refuse(path, f"{path}: {problem}", problem)
        return bool(new)

    def _try_snapshot(self, path: Path) -> bool:
        try:
            self._load_snapshot(path)
            return True
        except LoadRejected as exc:
            self._refuse(path, str(exc), _first_problem(exc))
        except (OSError, ValueError) as exc:
            self._refuse(path, f"{path}: {exc}", str(exc))
        except Exception as exc:  # a bug: refused as a bad file is, at start an older serves
            self._refuse_unexpected(path, exc)
        return False

    def _load_snapshot(self, path: Path) -> None:
        refused: list[tuple[Path, LoadRejected]] = []
        view = self.loader.load_snapshot(
            path, self._deltas(), lambda delta, exc: refused.append((delta, exc))
        )
        self.serving = path
        self._published = _published_at(path)
        for old in list(self._refused):  # every delta was judged again; older snapshots lost
            kind = self._kinds.get(old)
            if kind is FileKind.DELTA or (kind is FileKind.SNAPSHOT and old.name <= path.name):
                del self._refused[old]
        for delta, exc in refused:
            self._refuse(delta, str(exc), _first_problem(exc))
        self.on_event("loaded", path, view.info.version)

    def poll_once(self) -> None:
        try:
            files, unread = _candidates(self.directory)
        except OSError as exc:  # gone (an unmounted mount, a removed folder): keep serving
            self._folder(_unreadable_folder(exc))
            return
        present = {*files, *unread}
        changed = False
        for gone in [p for p in (*self._seen, *self._refused, *self._unread) if p not in present]:
            self._seen.pop(gone, None)
            self._kinds.pop(gone, None)
            self._unread.pop(gone, None)
            changed |= self._refused.pop(gone, None) is not None  # deleted: no longer behind
        changed |= self._note_unread(unread)
        for gone in [p for p in self._pending if p not in present]:
            del self._pending[gone]
        day = today()
        if day != self._day:  # a refusal may have been for a date still ahead then
            self._day = day
            for path in self._refused:
                self._seen.pop(path, None)  # taken again as it is, once it has settled
        now = time.monotonic()
        settled: list[tuple[Path, _Stamp]] = []
        for path in files:
            try:
                stamp = _stamp(path)
            except FileNotFoundError:
                problem = _dangling(path)
                if problem is not None and self._refused.get(path) != problem:
                    self._seen.pop(path, None)
                    self._kinds.pop(path, None)
                    self._refuse(path, f"{path}: {problem}", problem)
                    changed = True
                continue
            except OSError as exc:
                if self._refused.get(path) != str(exc):
                    self._refuse(path, f"{path}: {exc}", str(exc))
                    changed = True
                continue
            if self._seen.get(path) == stamp:
                continue
            waiting = self._pending.get(path)
            if waiting is None or waiting[0] != stamp:
                self._pending[path] = (stamp, now)  # new or changed: wait until it settles
                continue
            if not (now - waiting[1] >= self.settle or _unchanged_since(stamp, self.settle)):
                continue
            del self._pending[path]
            settled.append((path, stamp))
        # deltas refused in this poll are said once the poll's files are all in: one may
        # be refused for a gap that a delta settled in the same poll fills
        fresh: dict[Path, str] = {}
        applied = False
        for path, stamp in self._taking_order(settled):
            try:
                applied |= self._take(path, stamp, fresh)
            except Exception as exc:  # a bug: that file refused, the next ones still taken
                self._refuse_unexpected(path, exc)
            changed = True
        if applied:
            self._retry_refused_deltas(fresh)
        for path, detail in fresh.items():
            if path in self._refused:
                self.on_event("rejected", path, detail)
        changed |= self._watch_for_snapshots(files, now)
        if changed:
            self._report()

    def _watch_for_snapshots(self, files: list[Path], now: float) -> bool:
        """Note (once) a folder that has held no snapshot for ``settle`` seconds while a
        list is served (emptied, or a mount gone from under it): the list is behind
        until one is back. True when what is noted changed."""
        empty = self.serving is not None and all(
            self._kinds.get(p) is FileKind.DELTA for p in files if p not in self._pending
        ) and not any(named_kind(p) is not FileKind.DELTA for p in self._pending)  # fmt: skip
        if not empty:
            self._empty_since = None
            return self._folder(None, report=False)
        if self._empty_since is None:
            self._empty_since = now
        if now - self._empty_since < self.settle:
            return False
        served = self.serving.name if self.serving is not None else "?"
        return self._folder(
            f"holds no snapshot (emptied, or a mount not there?): the last good list "
            f"({served}) keeps serving until one is back", report=False,
        )  # fmt: skip

    def _folder(self, problem: str | None, report: bool = True) -> bool:
        """Set what is wrong with the folder itself (None: nothing), saying so once when it
        changes; True when it changed."""
        if problem == self._folder_problem:
            return False
        if problem is not None:
            self.on_event("error", self.directory, problem)
        else:
            log.info("list folder %s: %s", self.directory, "holds a snapshot again")
        self._folder_problem = problem
        if report:
            self._report()
        return True

    def _taking_order(self, settled: list[tuple[Path, _Stamp]]) -> list[tuple[Path, _Stamp]]:
        """The files settled in one poll, in name order; but on a snapshot without a
        header that no delta is applied to yet, the deltas among them lowest ``seq``
        first (in the places deltas have in name order), as a start takes them
        (``Loader._with_deltas``): the first applied sets the numbering, and one below
        it is refused from then on, so delta-a.jsonl (seq 5) must not go before
        delta-b.jsonl (seq 4) only for its name."""
        current = self.loader.index.current()
        if len(settled) < 2 or current is None or not _unknown_base(current):
            return settled
        places = [i for i, (path, _) in enumerate(settled) if _is_delta(path)]
        deltas = sorted(
            (settled[i] for i in places), key=lambda taken: (_lowest_seq(taken[0]), taken[0].name)
        )
        ordered = list(settled)
        for i, taken in zip(places, deltas, strict=True):
            ordered[i] = taken
        return ordered

    def _take(self, path: Path, stamp: _Stamp, fresh: dict[Path, str]) -> bool:
        """Read a settled file; True when a delta of it applied. A delta refused goes
        into ``fresh`` (path: the detail to log), for the poll to say once the others
        of the poll are in."""
        self._seen[path] = stamp
        self._refused.pop(path, None)  # changed: judged afresh
        kind = self._detect(path)
        if kind is None:
            self._kinds.pop(path, None)
            return False
        self._kinds[path] = kind
        if kind is FileKind.SNAPSHOT:
            if self.serving is not None and path.name < self.serving.name:
                self.on_event("ignored", path, f"older than the served {self.serving.name}")
                return False
            at, then = _published_at(path), self._published
            if self.serving is not None and at is not None and then is not None and at < then:
                self._refuse_older(path, at, self.serving, then)
                return False
            if self.serving is not None and at is None and then is not None and _says_no_time(path):
                self._refuse_timeless(path, self.serving, then)
                return False
            self._try_snapshot(path)
            return False
        if self.serving is None:
            return False  # applied with the first snapshot that loads
        before = self.loader.index.current()
        try:
            view = self.loader.load_delta(path)
        except LoadRejected as exc:
            self._refused[path] = _first_problem(exc)
            fresh[path] = str(exc)
            return False
        except (OSError, ValueError) as exc:
            self._refused[path] = str(exc)
            fresh[path] = f"{path}: {exc}"
            return False
        except Exception as exc:  # a bug: refused as a bad file is, the next files taken
            problem = unexpected_problem(exc)
            log_unexpected(path, exc)
            self._refused[path] = problem
            fresh[path] = f"{path}: {problem}"
            return False
        self.on_event("loaded", path, view.info.version)
        # read again, every seq of it already applied as it is: harmless, nothing new
        return before is None or view.info.version != before.info.version

    def _retry_refused_deltas(self, fresh: dict[Path, str] | None = None) -> None:
        """Apply each refused delta that applies now that another file has (in name order,
        again while one more does): the one its seq follows may just have arrived.
        One still refused is said again only if for another reason now; those in
        ``fresh`` (refused in this poll, not said yet) only get their detail updated."""
        fresh = {} if fresh is None else fresh
        progressed = True
        while progressed:
            progressed = False
            refused = [p for p in self._refused if p not in self._pending]  # settled ones only
            for path in sorted(p for p in refused if self._kinds.get(p) is FileKind.DELTA):
                try:
                    view = self.loader.load_delta(path)
                except LoadRejected as exc:
                    problem = _first_problem(exc)
                    if path in fresh:
                        self._refused[path], fresh[path] = problem, str(exc)
                    elif problem != self._refused[path]:  # refused still, for another reason
                        self._refuse(path, str(exc), problem)
                    continue
                except (OSError, ValueError):
                    continue  # gone or unreadable: the next poll sees to it
                except Exception as exc:  # a bug: refused still, said once
                    said = self._unexpected(path, exc)
                    if said is not None and path in fresh:
                        self._refused[path], fresh[path] = said, f"{path}: {said}"
                    elif said is not None:
                        self._refuse(path, f"{path}: {said}", said)
                    continue
                del self._refused[path]
                fresh.pop(path, None)
                self.on_event("loaded", path, view.info.version)
                progressed = True

    def _report(self) -> None:
        """Set the list's *behind* to what is refused now (or clear it): first what is
        wrong with the folder itself, if anything."""
        if self._folder_problem is not None:
            self.loader.index.refuse(str(self.directory), self._folder_problem)
            return
        serving = self.serving
        kinds = {**self._unread, **self._kinds}  # a file not read: the kind its name says
        # a refused snapshot named before the one served (or a link to nothing named
        # so, or named as neither: an old archive's link) would change nothing served;
        # a link to nothing named as a delta would (every delta's name sorts first)
        live = {
            path: problem for path, problem in self._refused.items()
            if not (serving is not None and path.name <= serving.name and (
                kinds.get(path) is FileKind.SNAPSHOT
                or (path not in kinds and named_kind(path) is not FileKind.DELTA
                    and _dangling(path) is not None)))
        }  # fmt: skip
        if not live:
            self.loader.index.refuse(None)
            return
        # named: the newest refused snapshot, else the first refused file by name
        snapshots = sorted(p for p in live if kinds.get(p) is FileKind.SNAPSHOT)
        first = snapshots[-1] if snapshots else min(live)
        others = sorted(p.name for p in live if p != first)
        problem = live[first]
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            problem += f" (and {len(others)} more refused file(s): {shown})"
        self.loader.index.refuse(str(first), problem)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.poll_once()
                except OSError as exc:  # the folder failing under a poll: keep serving, retry
                    self._folder(_unreadable_folder(exc))
        except Exception as exc:  # a bug outside any one file: said here, not by threading
            log.critical("list folder %s: %s", self.directory, FOLLOWER_STOPPED, exc_info=exc)
        finally:
            if not self._stop.is_set():  # ended unasked: no file is read from now on
                self.loader.index.refuse(str(self.directory), FOLLOWER_STOPPED)


#: Why the list is behind once the follower ended, unasked (health: ListCurrent
#: NOT_SERVING; ``status``: BEHIND).
FOLLOWER_STOPPED = (
    "the list follower stopped on an unexpected error (a bug in shixin-check: the traceback "
    "is logged): no snapshot or delta is read from now on and the last list loaded keeps "
    "serving; restart the server"
)


def _first_problem(exc: LoadRejected) -> str:
    first = exc.errors[0] if exc.errors else None
    more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
    return f"{first}{more}" if first is not None else str(exc)
