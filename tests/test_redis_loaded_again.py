"""A snapshot loaded again into Redis without the deltas its replicas applied.

After a FLUSHALL, a restart empty or from an older save, Redis no longer knows
the deltas it held, so ``load`` cannot refuse the snapshot loaded again alone;
the replicas that applied them know, and so does a replica started after, from
their records. They stay NOT_SERVING (``redis lost deltas``, the fail policy
for every check) until the deltas are loaded again, whether the snapshot comes
back under its name or as a copy (another name, the same ``published_at``),
once or twice. A load made with ``--allow-rollback`` is taken, also by a
replica that was stopped through it; a plain load after it is weighed as any.
Real redis-servers (the fixtures'), followers polled a round at a time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import Client, RedisFollower, RedisKeys
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import RedisServer
from tests.listdata import ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_failures import key_of

pytestmark = pytest.mark.redis
KEYS = RedisKeys()


def snapshot(folder: Path, name: str, day: str = "28") -> Path:
    header = {"snapshot": {"includes_seq": 0, "published_at": f"2026-11-{day}T09:00:00+08:00"}}
    return write_jsonl(folder / name, [header, *basic_rows()])


def listing(folder: Path, seq: int) -> Path:
    """Delta ``seq``, listing Zhao (in no snapshot) as entry Z<seq>."""
    entry = person_entry(f"Z{seq}", ZHAO, "赵六")
    return write_jsonl(folder / f"d{seq}.jsonl", [delta(seq, "LIST", entry=entry)])


def copy_of(path: Path) -> Path:
    """The file downloaded again: another name in Redis, the same published_at."""
    (path.parent / "again").mkdir(exist_ok=True)
    return Path(shutil.copy(path, path.parent / "again" / path.name))


def follower(url: str, keyer: SubjectKeyer, replica_id: str) -> RedisFollower:
    taken = RedisFollower(url, keyer, replica_id=replica_id)
    taken.sync_once()
    return taken


def rounds(*followers: RedisFollower) -> None:
    """A few polls of each, each writing its record as its heartbeat does."""
    for _ in range(3):
        for one in followers:
            one.sync_once()
            one._write(one._heartbeat, time.monotonic())
        time.sleep(0.05)


def zhao_allowed(replica: RedisFollower, keyer: SubjectKeyer) -> bool:
    """Zhao, listed only by a delta, would be ALLOW NOT_LISTED: the view finds nothing."""
    view = replica.current()
    if view is None:
        return False  # no list: UNAVAILABLE
    try:
        return view.look_up(key_of(keyer, ZHAO)) == []
    except IndexUnavailable:
        return False  # the fail policy


def served_with_delta_1(
    client: Client, keyer: SubjectKeyer, folder: Path, url: str
) -> tuple[Path, RedisFollower]:
    s1 = snapshot(folder, "s1.jsonl")
    publish_snapshot(client, s1, keyer)
    publish_delta(client, listing(folder, 1), keyer)
    r1 = follower(url, keyer, "r1")
    assert not zhao_allowed(r1, keyer)
    return s1, r1


def assert_protected(url: str, keyer: SubjectKeyer, r1: RedisFollower) -> None:
    """r1, and r2 started now, say Redis lost deltas; neither lets Zhao through."""
    rounds(r1)
    r2 = follower(url, keyer, "r2")
    try:
        rounds(r2)
        for replica in (r1, r2):
            assert "lost deltas" in replica.health_problem(), replica.health_problem()
            assert not zhao_allowed(replica, keyer)
    finally:
        r1.stop()
        r2.stop()


@pytest.mark.parametrize("how", ["its own file", "a copy"])
@pytest.mark.parametrize("times", [1, 2])
def test_after_a_flush_the_snapshot_loaded_again_waits_for_its_deltas(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path,
    how: str, times: int,
) -> None:  # fmt: skip
    s1, r1 = served_with_delta_1(client, keyer, tmp_path, redis_server.url)
    client.flushall()
    for _ in range(times):  # loaded twice: an operator's retry
        publish_snapshot(client, s1 if how == "its own file" else copy_of(s1), keyer)
        rounds(r1)
    assert_protected(redis_server.url, keyer, r1)


def test_after_a_partial_flush_the_snapshot_loaded_again_waits_for_its_deltas(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    s1, r1 = served_with_delta_1(client, keyer, tmp_path, redis_server.url)
    current = client.get(KEYS.current)
    assert current is not None
    client.delete(KEYS.meta(current.decode()))  # the version's meta alone
    rounds(r1)
    publish_snapshot(client, copy_of(s1), keyer)
    assert_protected(redis_server.url, keyer, r1)


@pytest.mark.parametrize("saved", ["with the load served", "before it", "of a rollback"])
def test_back_from_an_older_save_the_snapshot_loaded_again_waits_for_its_deltas(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path, saved: str
) -> None:
    if saved == "before it":
        publish_snapshot(client, snapshot(tmp_path, "s0.jsonl", "27"), keyer)
        dump = [(key, client.dump(key)) for key in client.scan_iter(count=1000)]
    s1 = snapshot(tmp_path, "s1.jsonl")
    publish_snapshot(client, s1, keyer, allow_rollback=saved == "of a rollback")
    if saved != "before it":  # deltas land on a rollback's load too, until the next
        dump = [(key, client.dump(key)) for key in client.scan_iter(count=1000)]
    publish_delta(client, listing(tmp_path, 1), keyer)
    r1 = follower(redis_server.url, keyer, "r1")
    assert not zhao_allowed(r1, keyer)
    with client.pipeline(transaction=True) as restore:
        restore.flushall()
        for key, raw in dump:
            restore.restore(key, 0, raw)
        restore.execute()
    rounds(r1)
    publish_snapshot(client, s1, keyer)  # the same file: Redis may still hold its name
    assert_protected(redis_server.url, keyer, r1)


def test_a_replica_stopped_through_a_rollback_takes_it_and_its_deltas(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """Paused on s1 + deltas 1-3 while s1 was loaded again with --allow-rollback and
    delta 1 anew on it: nobody is NOT_SERVING, the paused replica, one that followed,
    or one started after (a rollback made on purpose is never weighed)."""
    s1 = snapshot(tmp_path, "s1.jsonl")
    publish_snapshot(client, s1, keyer)
    for seq in (1, 2, 3):
        publish_delta(client, listing(tmp_path, seq), keyer)
    live, paused = (
        follower(redis_server.url, keyer, "live"),
        follower(redis_server.url, keyer, "paused"),
    )
    rounds(live, paused)
    publish_snapshot(client, copy_of(s1), keyer, allow_rollback=True)
    publish_delta(client, listing(tmp_path / "again", 1), keyer)
    rounds(live)
    rounds(paused, live)
    fresh = follower(redis_server.url, keyer, "fresh")
    try:
        rounds(fresh)
        assert [r.health_problem() for r in (paused, live, fresh)] == ["", "", ""]
        for replica in (paused, live, fresh):  # each serves s1 with the new delta 1
            view = replica.current()
            assert view is not None
            assert view.info.last_delta_seq == 1
            assert view.look_up(key_of(keyer, ZHAO)), "Zhao, listed by delta 1, not found"
    finally:
        for replica in (live, paused, fresh):
            replica.stop()


def test_a_plain_reload_after_a_rollback_a_replica_missed_waits_for_allow_rollback(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """The price of never serving a list without deltas Redis lost: a replica paused
    through a rollback (s1 with --allow-rollback) and a plain load of s1 after it
    cannot tell that from Redis losing deltas 1-3, so it, and a replica started after
    it, say so; loading s1 again with --allow-rollback (as the message says) clears
    it for all (README: "When Redis lost the data")."""
    s1 = snapshot(tmp_path, "s1.jsonl")
    publish_snapshot(client, s1, keyer)
    for seq in (1, 2, 3):
        publish_delta(client, listing(tmp_path, seq), keyer)
    paused = follower(redis_server.url, keyer, "paused")
    publish_snapshot(client, copy_of(s1), keyer, allow_rollback=True)
    publish_snapshot(client, s1, keyer)
    rounds(paused)
    fresh = follower(redis_server.url, keyer, "fresh")
    try:
        rounds(fresh, paused)
        for replica in (paused, fresh):
            assert "lost deltas" in replica.health_problem(), replica.health_problem()
        publish_snapshot(client, s1, keyer, allow_rollback=True)
        rounds(paused, fresh)
        assert [r.health_problem() for r in (paused, fresh)] == ["", ""]
    finally:
        paused.stop()
        fresh.stop()
