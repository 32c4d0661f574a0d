"""One contract for every index backend: the same files give the same answers.

Each test runs against the in-memory index and against a real Redis (its own
redis-server on a free port), through the same small ``Backend`` handle:
``load(path)`` as the operator would, ``view()`` as a check would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from shixin_check.domain.errors import LoadRejected
from shixin_check.domain.identity import IdType
from shixin_check.domain.index import ListView
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import EntryStatus, ListType, Role, day_number
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.index_redis import RedisFollower, RedisKeys, connect
from shixin_check.loader.listfile import FileKind, detect_kind
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from shixin_check.loader.versions import Loader
from tests.conftest import RedisServer
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    delta,
    person_entry,
    write_jsonl,
)


class Backend(Protocol):
    def load(self, path: Path) -> None: ...
    def view(self) -> ListView: ...


class MemoryBackend:
    def __init__(self, keyer: SubjectKeyer) -> None:
        self.index = MemoryIndex()
        self.loader = Loader(self.index, keyer)

    def load(self, path: Path) -> None:
        self.loader.load_path(path)

    def view(self) -> ListView:
        view = self.index.current()
        assert view is not None
        return view


class RedisBackend:
    """The loader writes to Redis; a replica follows it."""

    def __init__(self, url: str, keyer: SubjectKeyer) -> None:
        self.client = connect(url, timeout=5)
        self.keyer = keyer
        self.replica = RedisFollower(url, keyer, replica_id="contract")

    def load(self, path: Path) -> None:
        if detect_kind(path) is FileKind.DELTA:
            publish_delta(self.client, path, self.keyer)
        else:
            publish_snapshot(self.client, path, self.keyer)
        self.replica.sync_once()

    def view(self) -> ListView:
        view = self.replica.current()
        assert view is not None
        return view

    def close(self) -> None:
        self.client.close()
        self.replica.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(
    request: pytest.FixtureRequest, keyer: SubjectKeyer, tmp_path: Path
) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend(keyer)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    handle = RedisBackend(server.url, keyer)
    try:
        yield handle
    finally:
        handle.close()


def key(keyer: SubjectKeyer, number: str) -> int:
    return keyer.subject_key(IdType.RESIDENT_ID, number)


def summary(view: ListView, k: int) -> list[tuple[Any, ...]]:
    return sorted(
        (m.entry_id, m.role, m.status, m.organization_name, m.case_number, len(m.exemptions))
        for m in view.look_up(k)
    )


def counts(view: ListView) -> dict[tuple[ListType, EntryStatus], int]:
    return {(t, s): n for t, s, n in view.info.counts.by_type_status}


def test_snapshot_is_served(backend: Backend, keyer: SubjectKeyer, tmp_path: Path) -> None:
    backend.load(write_jsonl(tmp_path / "s.jsonl", basic_rows()))
    view = backend.view()
    for number in (ZHANG, LI, WANG):
        assert view.might_contain(key(keyer, number))
    assert summary(view, key(keyer, ZHANG)) == [
        ("E1", Role.DEBTOR, EntryStatus.ACTIVE, "", "(2024)京0105执1001号", 0)
    ]
    assert summary(view, key(keyer, WANG)) == [
        (
            "E3",
            Role.LEGAL_REPRESENTATIVE,
            EntryStatus.ACTIVE,
            "北京艾克米科技有限公司",
            "(2024)京0105执1001号",
            0,
        )
    ]
    assert [m.role for m in view.look_up(keyer.subject_key(None, ACME_USCC))] == [Role.DEBTOR]
    assert view.look_up(key(keyer, ZHAO)) == []
    assert counts(view) == {
        (ListType.SHIXIN, EntryStatus.ACTIVE): 2,
        (ListType.XIANGAO, EntryStatus.ACTIVE): 1,
    }
    masked = view.look_up(key(keyer, ZHANG))[0].masked_id
    assert masked == ZHANG[:6] + "********" + ZHANG[-4:]


def test_deltas_apply_in_order(backend: Backend, keyer: SubjectKeyer, tmp_path: Path) -> None:
    backend.load(write_jsonl(tmp_path / "s.jsonl", basic_rows()))
    # an organisation's entry: the exemption names the person the court allowed
    exemption = {"channel": "AIRLINE", "from": "2026-01-01", "until": "2026-12-31",
                 "id_number": WANG}  # fmt: skip
    backend.load(write_jsonl(tmp_path / "d1.jsonl", [
        delta(2, "SUSPEND", entry_id="E2"),
        delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六")),
        delta(3, "DELIST", entry_id="E1"),
        delta(4, "EXEMPT", entry_id="E3", exemption=exemption),
    ]))  # fmt: skip
    view = backend.view()
    assert view.info.last_delta_seq == 4
    assert view.might_contain(key(keyer, ZHAO))
    assert summary(view, key(keyer, ZHAO))[0][:3] == ("E8", Role.DEBTOR, EntryStatus.ACTIVE)
    assert summary(view, key(keyer, ZHANG)) == []
    assert summary(view, key(keyer, LI))[0][2] is EntryStatus.SUSPENDED
    assert summary(view, key(keyer, WANG))[0][5] == 1
    assert counts(view) == {
        (ListType.SHIXIN, EntryStatus.ACTIVE): 2,
        (ListType.XIANGAO, EntryStatus.SUSPENDED): 1,
    }
    backend.load(write_jsonl(tmp_path / "d2.jsonl", [
        delta(5, "RESUME", entry_id="E2"),
        delta(6, "UNEXEMPT", entry_id="E3", exemption=exemption),
        delta(7, "LIST", entry=person_entry("E1", ZHANG, "张伟")),
    ]))  # fmt: skip
    view = backend.view()
    assert summary(view, key(keyer, LI))[0][2] is EntryStatus.ACTIVE
    assert summary(view, key(keyer, WANG))[0][5] == 0
    assert summary(view, key(keyer, ZHANG))[0][0] == "E1"


def test_replayed_delta_changes_nothing(
    backend: Backend, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    backend.load(write_jsonl(tmp_path / "s.jsonl", basic_rows()))
    listing = write_jsonl(
        tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵"))]
    )
    backend.load(listing)
    backend.load(write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E8")]))
    backend.load(listing)
    view = backend.view()
    assert view.look_up(key(keyer, ZHAO)) == []
    assert view.info.last_delta_seq == 2


def test_bad_files_change_nothing(backend: Backend, keyer: SubjectKeyer, tmp_path: Path) -> None:
    backend.load(write_jsonl(tmp_path / "s.jsonl", basic_rows()))
    before = backend.view().info
    with pytest.raises(LoadRejected) as caught:
        backend.load(write_jsonl(tmp_path / "d.jsonl", [
            delta(1, "DELIST", entry_id="E1"),
            delta(2, "SUSPEND", entry_id="NOT-THERE"),
        ]))  # fmt: skip
    assert [(e.line, e.field) for e in caught.value.errors] == [(2, "entry_id")]
    bad_snapshot = [*basic_rows(), person_entry("E9", "12345", "坏")]
    with pytest.raises(LoadRejected):
        backend.load(write_jsonl(tmp_path / "bad.jsonl", bad_snapshot))
    view = backend.view()
    assert view.info.version == before.version
    assert summary(view, key(keyer, ZHANG))[0][0] == "E1"


def test_a_new_snapshot_replaces_the_list(
    backend: Backend, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    backend.load(write_jsonl(tmp_path / "s1.jsonl", basic_rows()))
    first = backend.view().info.version
    time.sleep(1.1)  # versions are named to the second
    backend.load(write_jsonl(tmp_path / "s2.jsonl", [person_entry("E9", ZHAO, "赵六")]))
    view = backend.view()
    assert view.info.version != first
    assert view.look_up(key(keyer, ZHANG)) == []
    assert summary(view, key(keyer, ZHAO))[0][0] == "E9"


@pytest.mark.redis
def test_redis_holds_no_plaintext_id(
    redis_server: RedisServer, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    handle = RedisBackend(redis_server.url, keyer)
    try:
        handle.load(write_jsonl(tmp_path / "s.jsonl", basic_rows()))
        handle.load(
            write_jsonl(
                tmp_path / "d.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵"))]
            )
        )
    finally:
        handle.close()
    client = redis.Redis.from_url(redis_server.url)
    dumped = b""
    for name in client.scan_iter(count=1000):  # every value, read as its type (no compression)
        kind = client.type(name)
        if kind == b"string":
            dumped += name + client.get(name)
        elif kind == b"hash":
            dumped += name + b"".join(k + v for k, v in client.hgetall(name).items())
        elif kind == b"set":
            dumped += name + b"".join(client.smembers(name))
        elif kind == b"stream":
            dumped += name + repr(client.xrange(name)).encode()
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {name!r}")
    assert dumped
    for number in (ZHANG, LI, WANG, ZHAO, ACME_USCC):
        assert number.encode() not in dumped
    keys = RedisKeys()
    assert client.get(keys.current)


def test_counts_put_entries_past_valid_until_in_an_expired_bucket(
    backend: Backend, tmp_path: Path
) -> None:
    rows = [
        person_entry("E1", ZHANG, "张伟", valid_until="2026-06-30", published_on="2025-01-01"),
        person_entry("E2", LI, "李娜", valid_until="2027-06-30", published_on="2025-01-01"),
        *basic_rows()[2:],  # open-ended
    ]
    backend.load(write_jsonl(tmp_path / "s.jsonl", rows))
    counts = backend.view().info.counts
    july_2026 = day_number(date(2026, 7, 1))
    assert counts.on(july_2026) == [("SHIXIN", "ACTIVE", 2), ("SHIXIN", "EXPIRED", 1)]
    assert counts.on(july_2026 - 1) == [("SHIXIN", "ACTIVE", 3)]
    # Deltas keep the buckets: E1 suspended (still expired), E2 delisted, E9 listed expired.
    backend.load(
        write_jsonl(
            tmp_path / "d.jsonl",
            [
                delta(1, "SUSPEND", entry_id="E1"),
                delta(2, "DELIST", entry_id="E2"),
                delta(
                    3,
                    "LIST",
                    entry=person_entry(
                        "E9",
                        ZHAO,
                        "赵六",
                        list_type="XIANGAO",
                        valid_until="2026-01-31",
                        published_on="2025-01-01",
                    ),
                ),  # fmt: skip
            ],
        )
    )
    after = backend.view().info.counts
    assert after.on(july_2026) == [
        ("SHIXIN", "ACTIVE", 1),
        ("SHIXIN", "EXPIRED", 1),
        ("XIANGAO", "EXPIRED", 1),
    ]
    assert after.on(day_number(date(2026, 1, 1))) == [
        ("SHIXIN", "ACTIVE", 1),
        ("SHIXIN", "SUSPENDED", 1),
        ("XIANGAO", "ACTIVE", 1),
    ]
