"""The in-memory index: a compact, immutable base plus a small delta overlay.

Ten million entries must fit in well under 2 GB, and a Python dict costs
~100 bytes a key before any entry detail. So the base is columnar: each
(subject key, entry) pair is a row of flat ``array`` columns sorted by the
key's high 64 bits and found by ``bisect``; entry details are packed bytes.
Only a hit builds Python objects (``ListedMatch``).

Deltas never touch the base: each delta file yields a new ``Overlay`` (entries
removed, status and exemption overrides, entries added since the snapshot)
and a new ``MemoryView`` sharing the base. Views are immutable; the current
one is swapped by a single reference assignment (``MemoryIndex.install``),
so a check that took a view sees that version whole.

The Bloom filter is shared by a base and its overlays and only grows: keys
are added to it before the view holding them is installed, so it never
clears a listed subject.
"""

from __future__ import annotations

import hashlib
import mmap
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from rbloom import Bloom

from shixin_check.domain.errors import RowError
from shixin_check.domain.identity import mask_id, normalize_name
from shixin_check.domain.index import Counts, ListedMatch, VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import NO_END, EntryStatus, Exemption, ListEntry, ListType, Role

_LOW64 = (1 << 64) - 1
_SEP = b"\x1f"
BLOOM_ERROR_RATE = 0.001


def new_bloom(expected: int) -> Bloom:
    """Items are the keys' high 64 bits, already keyed hashes: ``int`` is a
    stable hash for them (unlike the process-salted default for bytes)."""
    return Bloom(max(expected, 1024), BLOOM_ERROR_RATE, hash_func=int)


def entry_id_hash(entry_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(entry_id.encode(), digest_size=8).digest())


#: An entry row's exemptions as an index holds them: (subject key of the person it
#: covers, the exemption ``bare``). Exemptions are rare, so they sit in a dict by
#: entry row beside the columns, and a match takes those of its own key only:
#: ``own_exemptions``, which a row without any never reaches (the hot path costs
#: what it did). Keys, not identities: no plaintext ID number is kept (DESIGN §3).
KeyedExemptions = tuple[tuple[int, Exemption], ...]


def keyed_exemptions(entry: ListEntry, keyer: SubjectKeyer) -> KeyedExemptions:
    """``entry``'s exemptions keyed by the person each names (``listfile.exempted_in``
    made sure each names one of its subjects)."""
    return tuple((keyer.subject_key(e.id_type, e.id_number), e.bare()) for e in entry.exemptions)


def own_exemptions(exemptions: KeyedExemptions, key: int) -> tuple[Exemption, ...]:
    """Those of ``exemptions`` that cover the subject of ``key``: what its match carries."""
    return tuple(e for k, e in exemptions if k == key)


def matches_of(entry: ListEntry, keyer: SubjectKeyer) -> list[tuple[int, ListedMatch]]:
    """(subject key, match) for the debtor and each related person of ``entry``; each
    match carries only the exemptions that name its own subject."""
    out = []
    for subject in entry.subjects():
        org = entry.organization_name if subject.role is not Role.DEBTOR else ""
        match = ListedMatch(
            entry_id=entry.entry_id,
            list_type=entry.list_type,
            status=entry.status,
            role=subject.role,
            name_key=keyer.name_key(normalize_name(subject.name)),
            case_number=entry.case_number,
            court=entry.court,
            organization_name=org,
            masked_id=mask_id(subject.id_number),
            listed_on=entry.published_on,
            valid_until=entry.valid_until,
            exemptions=tuple(e.bare() for e in entry.exemptions if entry.exempts(e, subject)),
        )
        out.append((keyer.subject_key(subject.id_type, subject.id_number), match))
    return out


class BaseBuilder:
    """Collects validated entries (of a snapshot, or one chunk of it) as flat columns.

    ``parts()`` hands them over as bytes, cheap to send between processes;
    ``merge_parts`` joins the parts of every chunk and sorts them into a ``Base``.
    A load uses ``loader.columns.ColumnBuilder``, which fills the same columns
    from parsed rows many times faster; this one, an entry at a time, is the
    plain statement of what goes where, and the tests hold that one to it.
    """

    def __init__(self, keyer: SubjectKeyer, expected: int = 0) -> None:
        self._keyer = keyer
        self.k_hi = array("Q")
        self.k_lo = array("Q")
        self.m_entry = array("I")
        self.m_role = bytearray()
        self.m_name = array("Q")
        self.m_mask = bytearray()
        self.e_idh = array("Q")
        self.e_line = array("I")
        self.e_type = bytearray()
        self.e_status = bytearray()
        self.e_listed = array("i")
        self.e_valid = array("i")
        self.e_court = array("I")
        self.e_text_at = array("Q", [0])
        self.text = bytearray()
        self.courts: dict[str, int] = {}
        self.exemptions: dict[int, KeyedExemptions] = {}
        self.bloom = new_bloom(expected)

    def add(self, entry: ListEntry, line: int) -> None:
        row = len(self.e_type)
        keyer = self._keyer
        self.e_idh.append(entry_id_hash(entry.entry_id))
        self.e_line.append(line)
        self.e_type.append(entry.list_type)
        self.e_status.append(entry.status)
        self.e_listed.append(entry.published_on)
        self.e_valid.append(entry.valid_until)
        court = self.courts.setdefault(entry.court, len(self.courts))
        self.e_court.append(court)
        self.text += _SEP.join(
            (entry.entry_id.encode(), entry.case_number.encode(), entry.organization_name.encode())
        )
        self.e_text_at.append(len(self.text))
        if entry.exemptions:
            self.exemptions[row] = keyed_exemptions(entry, keyer)
        for subject in entry.subjects():
            key = keyer.subject_key(subject.id_type, subject.id_number)
            hi = key >> 64
            self.bloom.add(hi)  # before the index can hold it
            self.k_hi.append(hi)
            self.k_lo.append(key & _LOW64)
            self.m_entry.append(row)
            self.m_role.append(subject.role)
            self.m_name.append(keyer.name_key(normalize_name(subject.name)))
            self.m_mask += mask_id(subject.id_number).encode().ljust(_MASK_WIDTH)[:_MASK_WIDTH]

    def parts(self) -> BaseParts:
        return BaseParts(
            columns={
                name: getattr(self, name).tobytes()
                if isinstance(getattr(self, name), array)
                else bytes(getattr(self, name))
                for name in _COLUMNS
            },  # fmt: skip
            courts=list(self.courts),
            exemptions=self.exemptions,
            bloom=self.bloom.save_bytes(),
        )


_MASK_WIDTH = 20
# column name -> numpy dtype of one element (m_mask: _MASK_WIDTH bytes a row)
_COLUMNS = {
    "k_hi": "<u8", "k_lo": "<u8", "m_entry": "<u4", "m_role": "u1", "m_name": "<u8",
    "m_mask": "u1", "e_idh": "<u8", "e_line": "<u4", "e_type": "u1", "e_status": "u1",
    "e_listed": "<i4", "e_valid": "<i4", "e_court": "<u4", "e_text_at": "<u8", "text": "u1",
}  # fmt: skip
#: optional: a part's entry rows in entry_id hash order, when its builder sorted them
_COLUMNS_SORTED = {"id_order": "<u4"}


@dataclass(frozen=True, slots=True)
class BaseParts:
    """A builder's columns as bytes: what a load worker sends back."""

    columns: dict[str, bytes]
    courts: list[str]
    exemptions: dict[int, KeyedExemptions]
    bloom: bytes


def _col(parts: BaseParts, name: str) -> np.ndarray[Any, Any]:
    return np.frombuffer(parts.columns[name], dtype=_COLUMNS.get(name) or _COLUMNS_SORTED[name])


def _column(code: str, values: np.ndarray[Any, Any]) -> memoryview:
    """A merged column as ``Base`` holds it: the array's own memory, read as ``code``
    (no copy; the mapped columns of a compiled index are memoryviews too)."""
    return np.ascontiguousarray(values).data.cast("B").cast(cast(Any, code))


def merge_parts(
    all_parts: list[BaseParts], first_lines: list[int] | None = None
) -> tuple[Base, list[RowError]]:
    """One sorted ``Base`` from the chunks' parts, in order; and duplicate entry_ids.

    ``first_lines``: lines before each chunk, so errors name the file's lines.
    """
    entry_offsets = np.cumsum([0] + [len(p.columns["e_type"]) for p in all_parts])
    text_offsets = np.cumsum([0] + [len(p.columns["text"]) for p in all_parts])
    courts: dict[str, int] = {}
    court_cols, entry_cols, text_at, exemptions = [], [], [], {}
    for i, parts in enumerate(all_parts):
        remap = np.array([courts.setdefault(c, len(courts)) for c in parts.courts] or [0], "<u4")
        court_cols.append(remap[_col(parts, "e_court")])
        entry_cols.append(_col(parts, "m_entry") + np.uint32(entry_offsets[i]))
        text_at.append(_col(parts, "e_text_at")[:-1] + np.uint64(text_offsets[i]))
        exemptions.update({row + int(entry_offsets[i]): e for row, e in parts.exemptions.items()})
    text_at.append(np.array([text_offsets[-1]], "<u8"))

    def joined(name: str) -> np.ndarray[Any, Any]:
        return np.concatenate([_col(p, name) for p in all_parts])

    bloom = Bloom.load_bytes(all_parts[0].bloom, int)
    for parts in all_parts[1:]:
        bloom.update(Bloom.load_bytes(parts.bloom, int))  # same size and hash: a bitwise OR

    k_hi = joined("k_hi")
    order = np.argsort(k_hi, kind="stable")  # fast when each part comes sorted (columns.py)
    mask = joined("m_mask").reshape(-1, _MASK_WIDTH)[order]
    e_idh = joined("e_idh")
    if all("id_order" in p.columns for p in all_parts):  # each part's rows by hash: merge
        runs = np.concatenate(
            [_col(p, "id_order") + np.uint32(entry_offsets[i]) for i, p in enumerate(all_parts)]
        )
        id_order = runs[np.argsort(e_idh[runs], kind="stable")].astype("<u4")
    else:
        id_order = np.argsort(e_idh, kind="stable").astype("<u4")
    e_type, e_status = joined("e_type"), joined("e_status")
    counts: dict[tuple[ListType, EntryStatus], int] = {}
    for t in np.unique(e_type):
        for st in np.unique(e_status):
            n = int(np.count_nonzero((e_type == t) & (e_status == st)))
            if n:
                counts[(ListType(int(t)), EntryStatus(int(st)))] = n
    e_valid = joined("e_valid")
    expiries = _expiries(e_type, e_status, e_valid)
    base = Base(
        k_hi=_column("Q", k_hi[order]),
        k_lo=_column("Q", joined("k_lo")[order]),
        m_entry=_column("I", np.concatenate(entry_cols)[order]),
        m_role=joined("m_role")[order].tobytes(),
        m_name=_column("Q", joined("m_name")[order]),
        m_mask=mask.tobytes(),
        id_sorted=_column("Q", e_idh[id_order]),
        id_rows=_column("I", id_order),
        e_type=e_type.tobytes(),
        e_status=e_status.tobytes(),
        e_listed=_column("i", joined("e_listed")),
        e_valid=_column("i", e_valid),
        e_court=_column("I", np.concatenate(court_cols)),
        e_text_at=_column("Q", np.concatenate(text_at)),
        text=b"".join(p.columns["text"] for p in all_parts),
        courts=tuple(courts),
        exemptions=exemptions,
        counts=counts,
        expiries=expiries,
        bloom=bloom,
    )
    offsets = first_lines or [0] * len(all_parts)
    lines = np.concatenate(
        [_col(p, "e_line") + np.uint32(o) for p, o in zip(all_parts, offsets, strict=True)]
    )
    return base, _duplicates(base, e_idh, id_order, lines)


def _expiries(
    e_type: np.ndarray[Any, Any], e_status: np.ndarray[Any, Any], e_valid: np.ndarray[Any, Any]
) -> dict[tuple[ListType, EntryStatus, int], int]:
    """Entries by (list type, status, valid_until), for those with an end: counted by
    ``bincount`` over the days they span, where a sort would take three times as long."""
    ending = e_valid != NO_END
    days = e_valid[ending].astype(np.int64)
    if not len(days):
        return {}
    first, statuses = int(days.min()), int(e_status.max()) + 1
    span = int(days.max()) - first + 1
    group = e_type[ending].astype(np.int64) * statuses + e_status[ending]
    if (int(group.max()) + 1) * span <= 4 * len(days) + 65536:
        tallies = np.bincount(group * span + (days - first))
        found = np.flatnonzero(tallies)
        groups, values, counts = found // span, found % span + first, tallies[found]
    else:  # dates far apart: as many counts as bins would be too many
        keys, counts = np.unique(group * (1 << 32) + (days - first), return_counts=True)
        groups, values = keys >> 32, (keys & 0xFFFFFFFF) + first
    return {
        (ListType(int(g) // statuses), EntryStatus(int(g) % statuses), int(v)): int(n)
        for g, v, n in zip(groups, values, counts, strict=True)
    }


def _duplicates(
    base: Base, e_idh: np.ndarray[Any, Any], id_order: np.ndarray[Any, Any],
    lines: np.ndarray[Any, Any],
) -> list[RowError]:  # fmt: skip
    """Rows whose entry_id repeats an earlier row's (hash neighbours, then the text)."""
    sorted_ids = e_idh[id_order]
    errors = []
    for at in np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]):
        first, second = sorted((int(id_order[at]), int(id_order[at + 1])))
        eid = base.texts(second)[0]
        if eid == base.texts(first)[0]:
            errors.append(
                RowError(int(lines[second]), "entry_id", f"{eid!r} repeats line {lines[first]}")
            )
    return sorted(errors, key=lambda e: e.line)


#: A column of numbers: an ``array`` when parsed here, a ``memoryview`` over a
#: mapped file when compiled (``loader.compiled``); both index and bisect alike.
Numbers = Sequence[int]
#: A column of bytes: ``bytes`` when parsed, the ``mmap`` of a compiled file.
Bytes = bytes | mmap.mmap


@dataclass(frozen=True, slots=True, eq=False)
class Base:
    """One snapshot's entries, sorted and packed. Never modified."""

    k_hi: Numbers  # per (key, entry) row, sorted
    k_lo: Numbers
    m_entry: Numbers
    m_role: Bytes
    m_name: Numbers
    m_mask: Bytes  # _MASK_WIDTH bytes a row
    id_sorted: Numbers  # entry_id hashes, sorted
    id_rows: Numbers  # entry row of each
    e_type: Bytes
    e_status: Bytes
    e_listed: Numbers
    e_valid: Numbers
    e_court: Numbers
    e_text_at: Numbers
    text: Bytes  # entry_id \x1f case_number \x1f organisation name, per entry
    courts: tuple[str, ...]
    exemptions: dict[int, KeyedExemptions]  # by entry row: only rows that have any
    counts: dict[tuple[ListType, EntryStatus], int]
    expiries: dict[tuple[ListType, EntryStatus, int], int]  # entries by valid_until, if any
    bloom: Bloom

    @property
    def entries(self) -> int:
        return len(self.e_type)

    def row_of(self, entry_id: str) -> int | None:
        h = entry_id_hash(entry_id)
        i = bisect_left(self.id_sorted, h)
        while i < len(self.id_sorted) and self.id_sorted[i] == h:
            row = self.id_rows[i]
            if self.texts(row)[0] == entry_id:
                return row
            i += 1
        return None

    def texts(self, row: int) -> list[str]:
        return self.text[self.e_text_at[row] : self.e_text_at[row + 1]].decode().split("\x1f")


@dataclass(frozen=True, slots=True, eq=False)
class Overlay:
    """Changes since the snapshot, applied in delta order."""

    removed: frozenset[int] = frozenset()  # base rows delisted or replaced
    status: dict[int, EntryStatus] = field(default_factory=dict)  # base row overrides
    exemptions: dict[int, KeyedExemptions] = field(default_factory=dict)  # base row overrides
    added: dict[str, tuple[ListEntry, tuple[tuple[int, ListedMatch], ...]]] = field(
        default_factory=dict
    )
    by_key: dict[int, tuple[ListedMatch, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.removed or self.status or self.exemptions or self.added)


_EMPTY = Overlay()


# Stored bytes back to enums by indexing: an Enum() call costs ten times as much.
_STATUS = (None, *EntryStatus)
_ROLE = (None, *Role)
_LIST_TYPE = (None, *ListType)


class MemoryView:
    """One list version: a base and an overlay. Implements ``ListView``."""

    __slots__ = ("base", "overlay", "info", "_bloom", "_k_hi", "_n", "_plain")

    def __init__(self, base: Base, overlay: Overlay, info: VersionInfo) -> None:
        self.base = base
        self.overlay = overlay
        self.info = info
        self._bloom = base.bloom
        self._k_hi = base.k_hi
        self._n = len(base.k_hi)
        self._plain = overlay.empty

    def might_contain(self, key: int) -> bool:
        return (key >> 64) in self._bloom

    def look_up(self, key: int) -> list[ListedMatch]:
        hi = key >> 64
        k_hi = self._k_hi
        i = bisect_left(k_hi, hi)
        out: list[ListedMatch] = []
        if i < self._n and k_hi[i] == hi:
            lo = key & _LOW64
            base = self.base
            while i < self._n and k_hi[i] == hi:
                if base.k_lo[i] == lo:
                    match = self.match_at(i)
                    if match is not None:
                        out.append(match)
                i += 1
        if not self._plain:
            out.extend(self.overlay.by_key.get(key, ()))
        return out

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        return [self.look_up(k) for k in keys]

    def match_at(self, i: int) -> ListedMatch | None:
        """Row ``i`` of the base as this version sees it; None if delisted since."""
        base = self.base
        row = base.m_entry[i]
        overlay = self.overlay
        status = _STATUS[base.e_status[row]]
        keyed = base.exemptions.get(row, ())
        if not self._plain:
            if row in overlay.removed:
                return None
            status = overlay.status.get(row, status)
            keyed = overlay.exemptions.get(row, keyed)
        # only an entry with exemptions pays for finding those of this row's key
        exemptions = own_exemptions(keyed, (base.k_hi[i] << 64) | base.k_lo[i]) if keyed else ()
        entry_id, case_number, organization = base.texts(row)
        role = _ROLE[base.m_role[i]]
        w = _MASK_WIDTH
        return ListedMatch(
            entry_id=entry_id,
            list_type=_LIST_TYPE[base.e_type[row]],
            status=status,
            role=role,
            name_key=base.m_name[i],
            case_number=case_number,
            court=base.courts[base.e_court[row]],
            organization_name=organization if role is not Role.DEBTOR else "",
            masked_id=base.m_mask[i * w : (i + 1) * w].rstrip().decode(),
            listed_on=base.e_listed[row],
            valid_until=base.e_valid[row],
            exemptions=exemptions,
        )


class MemoryIndex:
    """The serving pointer: ``current()`` for checks, ``install()`` for the loader."""

    def __init__(self) -> None:
        self._view: MemoryView | None = None
        #: (file, its first problem) of the newest refusal since the last good
        #: snapshot: the served list is behind the feed while this is set.
        self.refused: tuple[str, str] | None = None

    def current(self) -> MemoryView | None:
        return self._view

    def install(self, view: MemoryView) -> None:
        self._view = view  # one reference assignment: atomic for readers

    def refuse(self, source: str | None, problem: str = "") -> None:
        """Note a refused list file (the list is behind), or clear it with None."""
        self.refused = None if source is None else (source, problem)

    def health_problem(self) -> str:
        """Why checks cannot be answered from this index ("" when they can)."""
        if self._view is not None:
            return ""
        refused = self.refused
        return f"no list loaded yet ({refused[0]} was refused)" if refused else "no list loaded yet"

    def replica_status(self) -> dict[str, object]:
        refused = self.refused
        return {
            "index_backend": "memory",
            "index_reachable": True,
            "not_serving_reason": self.health_problem(),
            "behind": refused is not None,
            "rejected_source": refused[0] if refused else "",
            "rejected_problem": refused[1] if refused else "",
        }


def view_of_base(
    base: Base, source: str, source_timestamp: float, version: str, includes_seq: int = 0
) -> MemoryView:
    """The version of a fresh snapshot: ``includes_seq`` is its header's delta watermark."""
    counts = Counts(
        tuple((t, s, n) for (t, s), n in sorted(base.counts.items())),
        len(base.k_hi),
        tuple((t, s, v, n) for (t, s, v), n in sorted(base.expiries.items())),
    )
    info = VersionInfo(
        version, source, time.time(), source_timestamp, includes_seq, counts, includes_seq
    )
    return MemoryView(base, _EMPTY, info)


def counts_after(
    info: VersionInfo, changes: Iterable[tuple[ListType, EntryStatus, int, int]], keys_delta: int
) -> Counts:
    """``info``'s counts after ``changes``: (list type, status, valid_until, +1 or -1)."""
    tally = {(t, s): n for t, s, n in info.counts.by_type_status}
    ends = {(t, s, v): n for t, s, v, n in info.counts.expiries}
    for t, s, v, d in changes:
        tally[(t, s)] = tally.get((t, s), 0) + d
        if v != NO_END:
            ends[(t, s, v)] = ends.get((t, s, v), 0) + d
    rows = tuple((t, s, n) for (t, s), n in sorted(tally.items()) if n)
    expiries = tuple((t, s, v, n) for (t, s, v), n in sorted(ends.items()) if n)
    return Counts(rows, info.counts.subject_keys + keys_delta, expiries)
