"""Redis mode: one look-up call (a unary check's keys, a batch's keys) reads Redis in
one transaction, so a batch never answers from two states of the list.

A delta load rewrites the subject buckets in place inside MULTI/EXEC; reads sent as
a plain pipeline are run by Redis as they arrive, so a batch of 1,000 checks of one
person could read some of its keys before a delta's EXEC and the rest after it
(926 DENY and 74 ALLOW NOT_LISTED for the same person in one answer).

Everything is real: redis-server on a free port, versions and deltas written by
the project's loader, a ``RedisFollower`` and its ``RedisView``, Redis's MONITOR.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    Client,
    RedisFollower,
    RedisKeys,
    RedisView,
    bucket_of,
    connect,
    read_meta,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import RedisServer
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_failures import key_of
from tests.waiting import eventually

pytestmark = pytest.mark.redis

#: how long the flipping run lasts: bounded, whatever it finds
FLIP_SECONDS = 6.0
BATCH = 1000


def served(follower: RedisFollower) -> RedisView:
    view = follower.current()
    assert isinstance(view, RedisView)
    return view


def monitored(url: str, client: Client, marker: str, call: Any) -> list[dict[str, Any]]:
    """Every command Redis's MONITOR saw from ``call()``, up to ``client``'s ECHO of
    ``marker`` (``client``: connected already, so its ECHO is all it sends)."""
    watcher = connect(url, timeout=5)
    try:
        with watcher.monitor() as monitor:
            call()
            client.echo(marker)
            seen: list[dict[str, Any]] = []
            while True:
                command = monitor.next_command()
                if marker in command["command"]:
                    return seen
                seen.append(command)
    finally:
        watcher.close()


def words(seen: list[dict[str, Any]]) -> list[str]:
    return [c["command"].split(" ", 1)[0].upper() for c in seen]


def test_every_look_up_reads_inside_one_multi_exec(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    view = served(follower)
    keys = [key_of(keyer, n) for n in (ZHANG, LI, ZHAO)] * 40  # a batch: listed and not

    found: list[Any] = []
    seen = monitored(
        redis_server.url, client, "end-of-batch", lambda: found.extend(view.look_up_many(keys))
    )
    assert words(seen) == ["MULTI"] + ["HGET"] * len(keys) + ["EXISTS", "EXEC"]
    assert len({(c["client_address"], c["client_port"]) for c in seen}) == 1  # one connection
    assert [bool(m) for m in found] == [True, True, False] * 40

    unary: list[Any] = []
    seen = monitored(
        redis_server.url, client, "end-of-unary", lambda: unary.append(view.look_up(keys[0]))
    )
    assert words(seen) == ["MULTI", "HGET", "EXISTS", "EXEC"]
    assert [m.entry_id for m in unary[0]] == ["E1"]


def test_a_redis_error_mid_call_is_index_unavailable(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    view = served(follower)
    redis_server.stop()
    for call in (lambda: view.look_up_many([key_of(keyer, ZHANG)] * 3),
                 lambda: view.look_up(key_of(keyer, ZHANG))):  # fmt: skip
        with pytest.raises(IndexUnavailable, match="redis: "):
            call()
    assert follower.lookup_errors.count == 2


def test_no_batch_mixes_two_states_while_deltas_flip_a_person(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """Deltas DELIST and LIST Zhao in turn, as fast as the loader goes, while batches of
    1,000 look-ups of Zhao are read: each batch is all listed or all not listed."""
    rows = [*basic_rows(), person_entry("Z0", ZHAO, "赵六")]
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", rows), keyer)
    follower.start()
    eventually(lambda: isinstance(follower.current(), RedisView), "the version served")
    stop = threading.Event()
    loaded = [0]
    failed: list[Exception] = []

    def flip() -> None:
        seq, entry_id = 0, "Z0"
        try:
            while not stop.is_set():
                seq += 1
                if seq % 2:
                    op = delta(seq, "DELIST", entry_id=entry_id)
                else:
                    entry_id = f"Z{seq}"
                    op = delta(seq, "LIST", entry=person_entry(entry_id, ZHAO, "赵六"))
                path = write_jsonl(tmp_path / f"d{seq}.jsonl", [op])
                publish_delta(client, path, keyer)
                path.unlink()
                loaded[0] = seq
        except Exception as exc:  # the test fails with it
            failed.append(exc)

    feeder = threading.Thread(target=flip, daemon=True)
    keys = [key_of(keyer, ZHAO)] * BATCH
    batches, mixed, listed_seen = 0, [], set()
    feeder.start()
    try:
        deadline = time.monotonic() + FLIP_SECONDS
        while time.monotonic() < deadline and not failed:
            found = served(follower).look_up_many(keys)
            states = {bool(m) for m in found}
            listed_seen |= states
            batches += 1
            if len(states) > 1:
                mixed.append(sum(map(bool, found)))
    finally:
        stop.set()
        feeder.join(timeout=30)
    print(f"{batches} batches of {BATCH} over {loaded[0]} deltas, {len(mixed)} mixed")
    assert not failed, failed
    assert loaded[0] >= 4 and listed_seen == {True, False}, (loaded[0], listed_seen)
    assert mixed == [], (
        f"{len(mixed)} of {batches} batches mixed listed and not listed "
        f"(listed answers in each: {mixed[:10]}) over {loaded[0]} deltas"
    )


def test_a_transaction_refused_by_redis_is_index_unavailable(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """A command Redis refuses inside the transaction (a bucket that is no hash) fails
    the whole call: the fail policy, never a partial answer."""
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    view = served(follower)
    key = key_of(keyer, ZHAO)
    bits = int(read_meta(client, RedisKeys(), view.version)["bucket_bits"])
    bucket = RedisKeys().subjects(view.version, bucket_of(key >> 64, bits))
    client.delete(bucket)
    client.set(bucket, b"not a hash")
    with pytest.raises(IndexUnavailable, match="redis: .*WRONGTYPE"):
        view.look_up_many([key_of(keyer, ZHANG), key])
    assert follower.lookup_errors.count == 1
