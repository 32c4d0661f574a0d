"""The index seen by a check: a consistent view of one list version.

Backends (in memory, Redis) implement ``ListView`` and hand out views from
an ``IndexSource``. A check takes one view and uses it to the end, so it sees
one version whole even while the loader swaps in the next.

``might_contain`` is the Bloom prefilter: False means surely not listed and
is the answer for almost every caller; True costs a ``look_up``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from shixin_check.domain.model import EntryStatus, Exemption, ListType, Role


class ListedMatch(NamedTuple):
    """One entry restricting the looked-up subject, in one role.

    A named tuple: every hit builds one, and a frozen dataclass costs several
    times as much to construct.
    """

    entry_id: str
    list_type: ListType
    status: EntryStatus  # as loaded: ACTIVE or SUSPENDED
    role: Role
    name_key: int  # keyed hash of the listed name (0: none recorded)
    case_number: str
    court: str
    organization_name: str  # for a related person: the debtor organisation
    masked_id: str
    listed_on: int  # day number
    valid_until: int  # day number
    exemptions: tuple[Exemption, ...]


@dataclass(frozen=True, slots=True)
class Counts:
    """Entries by list type and loaded status, for GetListStatus."""

    by_type_status: tuple[tuple[ListType, EntryStatus, int], ...]
    subject_keys: int
    #: (list type, status, valid_until day, entries) of the entries that have an
    #: end date: what ``on`` moves to EXPIRED once the day has passed.
    expiries: tuple[tuple[ListType, EntryStatus, int, int], ...] = ()

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.by_type_status)

    def on(self, today: int) -> list[tuple[str, str, int]]:
        """(list type, status, entries) as of ``today``: an entry past its valid_until
        counts as EXPIRED, whatever its listed status, since it no longer restricts."""
        tally = {(t.name, s.name): n for t, s, n in self.by_type_status}
        for t, s, valid_until, n in self.expiries:
            if valid_until < today:
                tally[(t.name, s.name)] -= n
                tally[(t.name, "EXPIRED")] = tally.get((t.name, "EXPIRED"), 0) + n
        return [(t, s, n) for (t, s), n in sorted(tally.items()) if n]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a version is and where it came from."""

    version: str
    source: str
    loaded_at: float  # unix seconds
    source_timestamp: float  # unix seconds: the feed's own time (loader.feed)
    last_delta_seq: int
    counts: Counts
    includes_seq: int = 0  # the delta seq its snapshot declared it includes
    mapped_from: str = ""  # the compiled index folder it was mapped from, if any
    #: each file mapped from it, as it was when mapped: (name, a descriptor of it held
    #: open, size, mtime_ns, ctime_ns, CRC-32), for ``loader.compiled.changed_under`` to
    #: see it written in place, by whatever name
    mapped_files: tuple[tuple[str, int, int, int, int, int], ...] = ()
    #: on a snapshot without a header: the seq of the first delta applied on it, which
    #: set where the numbering stands (0 otherwise); a later delta below it is refused
    first_delta_seq: int = 0


class ListView(Protocol):
    """One list version, read-only."""

    @property
    def info(self) -> VersionInfo: ...

    def might_contain(self, key: int) -> bool: ...

    def look_up(self, key: int) -> Sequence[ListedMatch]:
        """Every entry naming the subject; ``IndexUnavailable`` if the backend is down."""
        ...

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        """``look_up`` for each key, in one round trip where the backend has them."""
        ...


class IndexSource(Protocol):
    """Where checks get the current view; None until a list is loaded."""

    def current(self) -> ListView | None: ...
