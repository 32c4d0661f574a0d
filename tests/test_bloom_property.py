"""The Bloom prefilter never clears a listed subject, whatever the list went through.

A check that the Bloom filter clears never looks the subject up, so one false
negative lets a listed debtor buy the ticket. The filter is shared by a base
and its overlays and only grows; this drives the real ``Loader`` and
``MemoryIndex`` through random snapshots, delta files (LIST, DELIST, SUSPEND,
RESUME) and rebuilds, and after every step holds the current view to a plain
model of what is listed: every listed subject key passes ``might_contain`` and
``look_up`` names its entry; a subject that is no longer listed in an entry is
never named by it (the filter may still let it through: that is allowed).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Role
from shixin_check.loader.index_memory import MemoryIndex, matches_of
from shixin_check.loader.listfile import parse_entry
from shixin_check.loader.versions import Loader
from tests.conftest import SECRET
from tests.listdata import delta, org_entry, person_entry, rid, uscc, write_jsonl

#: Few entry ids, so LISTs often replace a listed entry and DELISTs find one.
ENTRY_IDS = [f"E{n}" for n in range(6)]
RELATED_ROLES = [r.name for r in Role if r is not Role.DEBTOR]
STATUSES = ["ACTIVE", "SUSPENDED"]

resident_ids = st.builds(
    lambda region, born, n: rid(f"{region}{born:%Y%m%d}{n:03d}"),
    st.sampled_from(["110105", "310104", "440305"]),
    st.dates(min_value=dt.date(1950, 1, 1), max_value=dt.date(2005, 12, 31)),
    st.integers(0, 999),
)
usccs = st.builds(lambda n: uscc(f"91110105MA{n:07d}"), st.integers(0, 9_999_999))


def organisation_row(
    entry_id: str, code: str, related: list[tuple[str, str]], status: str
) -> dict[str, Any]:
    people = [(role, "王芳", number) for role, number in related]
    return org_entry(entry_id, code, "北京艾克米科技有限公司", people, status=status)


def list_rows(people: list[str], orgs: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """One list row: a person debtor, or an organisation with up to two related persons."""
    person = st.builds(
        lambda entry_id, number, status: person_entry(entry_id, number, "张伟", status=status),
        st.sampled_from(ENTRY_IDS),
        st.sampled_from(people),
        st.sampled_from(STATUSES),
    )
    organisation = st.builds(
        organisation_row,
        st.sampled_from(ENTRY_IDS),
        st.sampled_from(orgs),
        st.lists(st.tuples(st.sampled_from(RELATED_ROLES), st.sampled_from(people)), max_size=2),
        st.sampled_from(STATUSES),
    )
    return st.one_of(person, organisation)


class ListHistory(RuleBasedStateMachine):
    """The real loader fed random list files, beside a model of what is listed."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="bloom-property-"))
        self.keyer = SubjectKeyer(SECRET)
        self.index = MemoryIndex()
        self.loader = Loader(self.index, self.keyer)
        self.people: list[str] = []
        self.orgs: list[str] = []
        self.listed: dict[str, dict[str, Any]] = {}  # entry_id -> its row as listed now
        self.ever: set[tuple[int, str]] = set()  # every (subject key, entry_id) once listed
        self.seq = 0
        self.files = 0

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _load(self, kind: str, rows: list[dict[str, Any]]) -> None:
        self.files += 1
        self.loader.load_path(write_jsonl(self.folder / f"{self.files:04d}-{kind}.jsonl", rows))

    def _keys(self, row: dict[str, Any]) -> list[tuple[int, Role]]:
        return [(key, m.role) for key, m in matches_of(parse_entry(row), self.keyer)]

    @initialize(
        people=st.lists(resident_ids, min_size=2, max_size=6, unique=True),
        orgs=st.lists(usccs, min_size=1, max_size=3, unique=True),
        data=st.data(),
    )
    def first_snapshot(self, people: list[str], orgs: list[str], data: st.DataObject) -> None:
        self.people, self.orgs = people, orgs
        snapshot = st.lists(
            list_rows(people, orgs), min_size=1, max_size=5, unique_by=lambda r: r["entry_id"]
        )
        rows = data.draw(snapshot)
        self._load("snapshot", rows)
        self.listed = {row["entry_id"]: row for row in rows}

    @rule(data=st.data(), ops=st.integers(1, 3))
    def delta_file(self, data: st.DataObject, ops: int) -> None:
        """One delta file of a few ops, each valid for the list as the ops before it left it."""
        rows = []
        for _ in range(ops):
            kinds = ["LIST", "DELIST", "SUSPEND", "RESUME"] if self.listed else ["LIST"]
            op = data.draw(st.sampled_from(kinds))
            self.seq += 1
            if op == "LIST":
                row = data.draw(list_rows(self.people, self.orgs))
                rows.append(delta(self.seq, op, entry=row))
                self.listed[row["entry_id"]] = row
                continue
            entry_id = data.draw(st.sampled_from(sorted(self.listed)))
            rows.append(delta(self.seq, op, entry_id=entry_id))
            if op == "DELIST":
                del self.listed[entry_id]
            else:
                status = "SUSPENDED" if op == "SUSPEND" else "ACTIVE"
                self.listed[entry_id] = {**self.listed[entry_id], "status": status}
        self._load("delta", rows)

    @precondition(lambda self: bool(self.listed))
    @rule()
    def rebuild(self) -> None:
        """A new snapshot of exactly what is listed now: a new base and a new filter."""
        self._load("snapshot", list(self.listed.values()))

    @invariant()
    def bloom_never_clears_a_listed_subject(self) -> None:
        view = self.index.current()
        assert view is not None
        now: set[tuple[int, str]] = set()
        for entry_id, row in self.listed.items():
            for key, role in self._keys(row):
                now.add((key, entry_id))
                assert view.might_contain(key), f"Bloom clears {role.name} of listed {entry_id}"
                named = {(m.entry_id, m.role, m.status.name) for m in view.look_up(key)}
                assert (entry_id, role, row["status"]) in named, f"{entry_id} not found: {named}"
        self.ever |= now
        for key, entry_id in self.ever - now:
            assert entry_id not in {m.entry_id for m in view.look_up(key)}, f"{entry_id} stayed"


def test_bloom_never_clears_a_listed_subject() -> None:
    run_state_machine_as_test(
        ListHistory,
        # correctness, not timing: no flaky deadline under load; small, so it stays quick
        settings=settings(max_examples=100, stateful_step_count=15, deadline=None),
    )
