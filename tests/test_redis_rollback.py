"""Redis back on an older snapshot than the one replicas served: lost data, never the
older list.

A real redis-server that keeps its data only in an RDB file (``SAVE``), stopped
without saving and started again on the same folder: it comes back with what it
held at the save, the pointer on the older snapshot A and none of the newer B's
keys. Servers in Redis mode on free ports, loads by ``shixin-check load``. Waits
poll with a generous limit (``tests.waiting``), never a tight timing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import index_redis
from shixin_check.loader.index_redis import RedisFollower, RedisKeys
from tests.conftest import RedisServer, RunningServer, settings_for, start_server
from tests.listdata import ZHANG, ZHAO, basic_rows, person_entry, write_jsonl
from tests.test_redis_failures import codes, health, status
from tests.test_redis_replicas import decision
from tests.test_redis_seq import load
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
A_PUBLISHED, A_UTC = "2026-11-20T09:00:00+08:00", "2026-11-20T01:00:00Z"
B_PUBLISHED, B_UTC = "2026-11-30T09:00:00+08:00", "2026-11-30T01:00:00Z"
UNAVAILABLE = (pb.REVIEW, ["INDEX_UNAVAILABLE"])  # the default --unavailable answer


class SavingRedis(RedisServer):
    """A redis-server whose data lives only in its RDB file: ``crash`` stops it without
    saving, ``start`` brings it back with what the last ``SAVE`` held."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, append_only=False)

    def client(self) -> redis.Redis:
        # one try, no retry: redis-py 6 and later retry a command by default, up to
        # seconds, and a SHUTDOWN retried against the stopped server held the restart
        # back that long, hiding what a replica does when Redis is back at once
        return redis.Redis(
            port=self.port,
            socket_timeout=5,
            socket_connect_timeout=0.2,
            retry=Retry(NoBackoff(), 0),
        )

    def save(self) -> None:
        with self.client() as c:
            c.save()

    def crash(self) -> None:
        """Down without saving (``SHUTDOWN NOSAVE``), then up again from the last save,
        at once: within the second between two heartbeats of a replica."""
        with self.client() as c:
            try:
                c.shutdown(nosave=True)
            except redis.ConnectionError:
                pass  # it closes the connection as it goes
        assert self.proc is not None
        self.proc.wait(timeout=10)
        self.start()


@pytest.fixture
def saving_redis(tmp_path: Path) -> Iterator[SavingRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    folder = tmp_path / "rdb"
    folder.mkdir()
    server = SavingRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def snapshot(path: Path, published: str, rows: list[dict[str, Any]]) -> Path:
    return write_jsonl(path, [{"snapshot": {"includes_seq": 0, "published_at": published}}, *rows])


def current(server: SavingRedis) -> str:
    with server.client() as c:
        raw = c.get(RedisKeys().current)
    return raw.decode() if raw else ""


def snapshots(tmp_path: Path) -> tuple[Path, Path]:
    """A (published 2026-11-20) and B (2026-11-30), which lists ZHAO too."""
    a = snapshot(tmp_path / "a.jsonl", A_PUBLISHED, basic_rows())
    b = snapshot(
        tmp_path / "b.jsonl", B_PUBLISHED, [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    )
    return a, b


def a_saved_then_b(saving_redis: SavingRedis, tmp_path: Path) -> tuple[str, str, Path]:
    """Load A, SAVE, load B: (A's version, B's version, B's file)."""
    a, b = snapshots(tmp_path)
    done = load(a, saving_redis.url)
    assert done.returncode == 0, done.stderr
    older = current(saving_redis)
    saving_redis.save()
    done = load(b, saving_redis.url)
    assert done.returncode == 0, done.stderr
    newer = current(saving_redis)
    assert newer != older
    return older, newer, b


def serving_b(server: RunningServer) -> bool:
    return decision(server, ZHAO, "赵六").decision == pb.DENY


def test_redis_back_from_an_older_save_is_lost_data_until_a_load(
    saving_redis: SavingRedis, serve: Serve, tmp_path: Path
) -> None:
    """The server never served A: it started on B. Redis comes back on A, without B:
    the person only B lists must never get ALLOW NOT_LISTED from A's list."""
    older, newer, b = a_saved_then_b(saving_redis, tmp_path)
    replica = serve(None, redis=saving_redis.url, replica_id="r1")
    eventually(lambda: serving_b(replica), "B served")

    saving_redis.crash()
    assert current(saving_redis) == older  # what the save held
    eventually(lambda: health(replica) == "NOT_SERVING", "health NOT_SERVING", step=0.05)
    reason = status(replica).not_serving_reason
    assert f"went back to version {older} (published {A_UTC})" in reason, reason
    assert f"from version {newer} (published {B_UTC})" in reason, reason
    assert "load the snapshot of" in reason, reason
    assert codes(decision(replica, ZHAO, "赵六")) == UNAVAILABLE  # was ALLOW NOT_LISTED
    assert codes(decision(replica, ZHANG, "张伟")) == UNAVAILABLE
    assert status(replica).lag_deltas == -1

    done = load(b, saving_redis.url)  # B's snapshot again: as new as what was served
    assert done.returncode == 0, done.stderr
    eventually(lambda: health(replica) == "SERVING", "health SERVING again", step=0.05)
    assert serving_b(replica)
    assert status(replica).not_serving_reason == ""


def refuses_having_gone_back(again: RunningServer, older: str, newer: str) -> None:
    """A server started after Redis went back from ``newer`` to ``older`` says so, from
    replica r1's record, and answers no check from ``older`` (it would ALLOW ZHAO)."""
    eventually(lambda: "went back" in status(again).not_serving_reason, "the loss told")
    reason = status(again).not_serving_reason
    assert f"from version {newer} (published {B_UTC})" in reason, reason
    assert f"to version {older} (published {A_UTC})" in reason, reason
    assert "replica r1 served" in reason, reason
    assert health(again) == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as refused:  # it served A: ALLOW NOT_LISTED
        decision(again, ZHAO, "赵六")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("served_a_first", [False, True])
def test_a_server_started_after_redis_went_back_is_not_serving(
    served_a_first: bool, saving_redis: SavingRedis, serve: Serve, tmp_path: Path
) -> None:
    """A server (re)started after Redis came back on A never served B: the record of the
    replica that did, kept in ``P:replicas`` when it stopped, says what was lost. That
    replica served A before B or not."""
    a, b = snapshots(tmp_path)
    assert load(a, saving_redis.url).returncode == 0
    older = current(saving_redis)
    saving_redis.save()
    settings = settings_for(None, redis=saving_redis.url, replica_id="r1")
    first = start_server(settings) if served_a_first else None
    try:
        if served_a_first:
            early = first
            assert early is not None
            eventually(lambda: health(early) == "SERVING", "A served")
        assert load(b, saving_redis.url).returncode == 0
        newer = current(saving_redis)
        first = first or start_server(settings)
        eventually(lambda: serving_b(first), "B served")
        saving_redis.crash()
        eventually(lambda: health(first) == "NOT_SERVING", "the loss noticed", step=0.05)
        said = status(first).not_serving_reason
        assert f"from version {newer} (published {B_UTC})" in said, said
    finally:
        if first is not None:
            first.stop()  # the on-call restarts it

    again = serve(None, redis=saving_redis.url, replica_id="r2")
    refuses_having_gone_back(again, older, newer)

    done = load(b, saving_redis.url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: health(again) == "SERVING", "health SERVING again", step=0.05)
    assert serving_b(again)


def a_round_after_the_crash(follower: RedisFollower) -> None:
    """One round of ``follower`` on the Redis back from its save: the first command may
    go to the connection the crash closed (a connection error, no retry), then one that
    reaches it."""
    for _ in range(5):
        try:
            follower.sync_once()
            return
        except redis.ConnectionError:
            continue
    raise AssertionError("the follower never reached the restarted Redis")


def record_of(server: SavingRedis, replica_id: str) -> dict[str, Any] | None:
    with server.client() as c:
        raw = c.hget(RedisKeys().replicas, replica_id)
    return None if raw is None else dict(orjson.loads(raw))


@pytest.mark.parametrize("served_a_first", [False, True])
def test_a_replica_stopped_within_a_second_of_the_going_back_leaves_its_record(
    served_a_first: bool, saving_redis: SavingRedis, serve: Serve, tmp_path: Path,
    keyer: SubjectKeyer,
) -> None:  # fmt: skip
    """The interleaving forced, one round at a time: the replica takes B in a round that
    writes its record, Redis crashes back to its save (A, and no record) at once, and
    the replica's next round, well within the second before its next heartbeat, sees
    Redis went back. A replica killed then, or stopped, must have left its record
    naming B, or a server started next serves A: ALLOW NOT_LISTED for the person only
    B lists."""
    a, b = snapshots(tmp_path)
    assert load(a, saving_redis.url).returncode == 0
    older = current(saving_redis)
    saving_redis.save()
    first = RedisFollower(saving_redis.url, keyer, replica_id="r1")  # rounds run by hand
    try:
        if served_a_first:
            first.sync_once()
            assert first.upstream_version == older and first.health_problem() == ""
        assert load(b, saving_redis.url).returncode == 0
        newer = current(saving_redis)
        first.sync_once()  # takes B and writes its record at once
        assert first.upstream_version == newer and first.health_problem() == ""
        saving_redis.crash()
        assert current(saving_redis) == older and record_of(saving_redis, "r1") is None
        a_round_after_the_crash(first)
        assert "went back" in first.health_problem(), first.health_problem()
        told = record_of(saving_redis, "r1")  # a replica killed now: this is all it left
        assert told is not None, "the replica that saw Redis go back left no record"
        assert told["version"] == newer and "went back" in told["problem"], told
    finally:
        first.stop()
    kept = record_of(saving_redis, "r1")
    assert kept is not None and kept["version"] == newer, kept

    again = serve(None, redis=saving_redis.url, replica_id="r2")
    refuses_having_gone_back(again, older, newer)


def test_an_older_snapshot_loaded_with_allow_rollback_is_followed(
    saving_redis: SavingRedis, serve: Serve, tmp_path: Path
) -> None:
    """Going back on purpose is no loss: the replica follows it."""
    a, b = snapshots(tmp_path)
    assert load(b, saving_redis.url).returncode == 0
    replica = serve(None, redis=saving_redis.url, replica_id="r1")
    eventually(lambda: serving_b(replica), "B served")
    done = load(a, saving_redis.url, "--allow-rollback")
    assert done.returncode == 0, done.stderr
    eventually(lambda: codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"]), "A served")
    assert health(replica) == "SERVING"
    assert status(replica).not_serving_reason == ""
    # and a server started now takes A too: the old records name B, which Redis keeps
    later = serve(None, redis=saving_redis.url, replica_id="r2")
    eventually(lambda: codes(decision(later, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"]), "A served")
    assert health(later) == "SERVING"


def test_the_same_snapshot_loaded_again_after_a_flush_is_followed(
    saving_redis: SavingRedis, serve: Serve, tmp_path: Path
) -> None:
    """Same ``published_at``: not going back."""
    _, b = snapshots(tmp_path)
    assert load(b, saving_redis.url).returncode == 0
    replica = serve(None, redis=saving_redis.url, replica_id="r1")
    eventually(lambda: serving_b(replica), "B served")
    with saving_redis.client() as c:
        c.flushall()
    eventually(lambda: health(replica) == "NOT_SERVING", "the flush noticed", step=0.05)
    assert load(b, saving_redis.url).returncode == 0
    eventually(lambda: health(replica) == "SERVING", "health SERVING again", step=0.05)
    assert serving_b(replica)


def test_going_back_is_accepted_by_loading_the_older_snapshot_with_allow_rollback(
    saving_redis: SavingRedis, serve: Serve, tmp_path: Path
) -> None:
    """The operator's way to keep A after all: ``load A --allow-rollback``."""
    older, newer, b = a_saved_then_b(saving_redis, tmp_path)
    replica = serve(None, redis=saving_redis.url, replica_id="r1")
    eventually(lambda: serving_b(replica), "B served")
    saving_redis.crash()
    eventually(lambda: health(replica) == "NOT_SERVING", "the loss noticed", step=0.05)
    done = load(tmp_path / "a.jsonl", saving_redis.url, "--allow-rollback")
    assert done.returncode == 0, done.stderr
    eventually(lambda: health(replica) == "SERVING", "A followed", step=0.05)
    assert codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"])
    later = serve(None, redis=saving_redis.url, replica_id="r2")  # r1's record names B
    eventually(lambda: health(later) == "SERVING", "A taken by a new server")


def test_a_replica_remembers_only_the_last_versions_it_left(
    saving_redis: SavingRedis, tmp_path: Path, keyer: SubjectKeyer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A feed that loads often must not grow a replica's memory of the versions it moved
    off for good: the last ``LEFT_KEPT`` are kept, the oldest dropped first."""
    monkeypatch.setattr(index_redis, "LEFT_KEPT", 2)
    a, b = snapshots(tmp_path)
    follower = RedisFollower(saving_redis.url, keyer, replica_id="r1")  # rounds run by hand
    taken = []
    try:
        for i in range(4):
            done = load(b if i % 2 else a, saving_redis.url, "--allow-rollback")
            assert done.returncode == 0, done.stderr
            follower.sync_once()
            taken.append(follower.upstream_version)
    finally:
        follower.stop()
    assert len(set(taken)) == 4, taken
    left = [version for version, _ in follower._left]
    assert left == taken[1:3], (left, taken)  # the first one left is forgotten
