"""Redis failing under the list: a load killed midway, and Redis losing its data.

Everything is real: redis-server on a free port, ``shixin-check load`` as a
child process (killed with SIGKILL where a test says so), servers in Redis
mode on free ports. Waits poll with a generous limit, never a tight timing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import publish_redis
from shixin_check.loader.columns import compiled
from shixin_check.loader.index_redis import (
    LOCK_SECONDS,
    Client,
    HeldLock,
    RedisFollower,
    RedisKeys,
    connect,
    read_meta,
    try_collect_garbage,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_replicas import decision, load_cli
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
#: Enough for a killed loader's lock to lapse, and for the load after it.
LAPSE_WAIT_S = LOCK_SECONDS + 30.0


def every_key(client: Client) -> set[str]:
    return {k.decode() for k in client.scan_iter(count=1000)}


def assert_only_current(client: Client, keys: RedisKeys, replaced: bytes | None = None) -> None:
    """Redis holds the current version's keys, those of the version it ``replaced`` (kept
    whole RETIRED_GRACE_SECONDS) and the fixed ones: nothing a crash left."""
    current = client.get(keys.current)
    assert current is not None
    kept = {current} | ({replaced} if replaced else set())
    assert client.smembers(keys.versions) == kept
    fixed = {keys.current, keys.versions, keys.replicas, keys.names}
    mine = tuple(f"{keys.prefix}:v:{version.decode()}:" for version in kept)
    strays = sorted(k for k in every_key(client) if k not in fixed and not k.startswith(mine))
    assert strays == []
    for version in kept:
        assert read_meta(client, keys, version.decode())["state"] == b"ready"


# --- a load killed midway -------------------------------------------------------


@pytest.fixture(scope="module")
def big_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated snapshot big enough that writing it to Redis takes a while."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "gen-data", "--count", "40000", "--out", str(path),
         "--seed", "9"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return path


def load_process(path: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SHIXIN_KEY_SECRET": SECRET.decode()}
    return subprocess.Popen(
        [sys.executable, "-m", "shixin_check.cli", "load", str(path), "--redis", url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def lock_lines(stderr: str) -> list[str]:
    """The lines of a load's stderr about the lock (a missing header is warned of too)."""
    return [line for line in stderr.splitlines() if "shixin:lock" in line]


def load_until_it_succeeds(path: Path, url: str) -> list[str]:
    """Run ``load`` until it succeeds; the refusals on the way (stderr of each)."""
    refusals: list[str] = []
    deadline = time.monotonic() + LAPSE_WAIT_S
    while True:
        done = load_cli(path, url)
        if done.returncode == 0:
            return refusals
        assert done.returncode == 2, done.stderr
        refusals.append(done.stderr)
        assert time.monotonic() < deadline, f"the lock never lapsed: {refusals[-1]}"


def version_keys_written(client: Client, keys: RedisKeys) -> int:
    """Keys of versions other than the current one, so far."""
    current = client.get(keys.current)
    prefix = f"{keys.prefix}:v:"
    skip = f"{prefix}{current.decode()}:" if current else "\0"
    return sum(1 for k in every_key(client) if k.startswith(prefix) and not k.startswith(skip))


#: Where the loader dies: still reading the file (before the lock), just after
#: taking the lock, and with part of the version's keys written.
KILL_POINTS = ["reading", "lock_taken", "writing_keys"]


@pytest.mark.parametrize("when", KILL_POINTS)
def test_a_killed_load_leaves_nothing_and_blocks_nobody(
    when: str, big_list: Path, redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    keys = RedisKeys()
    first = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert first.returncode == 0, first.stderr
    served = client.get(keys.current)

    proc = load_process(big_list, redis_server.url)
    try:
        if when == "reading":
            time.sleep(0.2)
        elif when == "lock_taken":
            eventually(lambda: client.exists(keys.lock) == 1, "lock taken", step=0.002)
        else:
            eventually(lambda: version_keys_written(client, keys) > 20, "keys written", step=0.005)
        assert proc.poll() is None, "the load finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert client.get(keys.current) == served  # the killed load made nothing current
    if when != "reading":
        assert client.pttl(keys.lock) > 0  # left behind, lapsing
    if when == "writing_keys":  # listed before its first key: the next collection finds it
        [left] = client.smembers(keys.versions) - {served}
        assert read_meta(client, keys, left.decode())["state"] == b"writing"

    refusals = load_until_it_succeeds(big_list, redis_server.url)
    for refused in refusals:  # while the dead loader's lock lapses: one clear line
        assert lock_lines(refused) == [lock_lines(refused)[0]]
        assert "another load holds shixin:lock" in refused and "try again later" in refused
    assert client.get(keys.current) != served
    assert_only_current(client, keys, replaced=served)


def version_content(client: Client, keys: RedisKeys, version: str) -> dict[str, object]:
    """Every subject and entry hash of ``version``, by its name within the version."""
    prefix = f"{keys.prefix}:v:{version}:"
    return {
        k.removeprefix(prefix): client.hgetall(k)
        for k in every_key(client)
        if k.startswith(prefix) and k.removeprefix(prefix)[:2] in ("s:", "e:")
    }


def test_a_snapshot_written_by_several_processes_is_the_one_written_by_one(
    big_list: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyer = SubjectKeyer(SECRET)
    contents = {}
    # a writer takes its keys and entries into lists a run at a time: runs of 1 and of 97
    # end inside buckets and between the matches of one key, where one run (the whole list)
    # has no end
    # the subject fields are made in C (loader/_rowcheck.c) and, where it is not built, in
    # Python: both write the same
    assert compiled() is not None, "loader/_rowcheck.c is not built"
    whole, in_c = publish_redis._RUN, publish_redis._compiled_fields
    for writers, run, python in ((1, whole, False), (3, whole, False), (1, 1, False),
                                 (3, 97, False), (1, whole, True), (3, 97, True)):  # fmt: skip
        monkeypatch.setattr(publish_redis, "_RUN", run)
        monkeypatch.setattr(
            publish_redis, "_compiled_fields", publish_redis._python_fields if python else in_c
        )
        keys = RedisKeys(f"w{writers}-{run}-{python}")
        version = publish_snapshot(client, big_list, keyer, keys, writers=writers)
        contents[writers, run, python] = version_content(client, keys, version)
    reference = contents.pop((1, whole, False))
    assert len(reference) > 100 and sum(len(v) for v in reference.values()) > 40_000
    several = [v for name, h in reference.items() if name.startswith("s:") for v in h.values()
               if len(orjson.loads(v)) > 1]  # fmt: skip
    assert several, "no subject with several matches: runs of 1 would split none"
    for written in contents.values():
        assert written == reference


def test_a_writer_process_that_dies_fails_the_load_and_leaves_nothing(
    big_list: Path, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = RedisKeys()
    keyer = SubjectKeyer(SECRET)
    first = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer, keys)
    real, parent = publish_redis._write_share, os.getpid()

    def dying(*args: Any, **kwargs: Any) -> None:
        if os.getpid() != parent:  # a forked writer: gone without a word, as if killed
            os._exit(3)
        real(*args, **kwargs)

    monkeypatch.setattr(publish_redis, "_write_share", dying)
    with pytest.raises(IndexUnavailable, match=r"1 of 2 writer processes failed \(exit 3\)"):
        publish_snapshot(client, big_list, keyer, keys, writers=2)
    assert client.get(keys.current) == first.encode()
    assert_only_current(client, keys)  # the half-written version is deleted


def test_a_load_killed_with_writer_processes_leaves_nothing_behind(
    big_list: Path, redis_server: RedisServer, client: Client
) -> None:
    keys = RedisKeys()
    proc = load_process(big_list, redis_server.url, "--writers", "2")
    try:
        eventually(lambda: version_keys_written(client, keys) > 20, "keys written", step=0.005)
        writers = psutil.Process(proc.pid).children()
        assert proc.poll() is None and writers, "the load finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)

    def stopped() -> bool:
        return not [w for w in writers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    eventually(stopped, "the writers of the killed load gone")
    assert client.get(keys.current) is None
    load_until_it_succeeds(big_list, redis_server.url)
    assert_only_current(client, keys)


def test_a_load_is_refused_while_another_holds_the_lock(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    keys = RedisKeys()
    path = write_jsonl(tmp_path / "s1.jsonl", basic_rows())
    other = HeldLock(client, keys, "load")
    assert other.acquire()
    try:
        refused = load_cli(path, redis_server.url)
        assert refused.returncode == 2
        [line] = lock_lines(refused.stderr)
        assert line.startswith("shixin-check load: another load holds shixin:lock (load ")
        assert line.endswith("; try again later")
        assert client.get(keys.current) is None
    finally:
        other.release()
    done = load_cli(path, redis_server.url)
    assert done.returncode == 0, done.stderr
    assert client.exists(keys.lock) == 0
    assert_only_current(client, keys)


def test_a_live_holder_keeps_the_lock_past_its_timeout(client: Client) -> None:
    keys = RedisKeys()
    lock = HeldLock(client, keys, "load", timeout=0.6)
    assert lock.acquire()
    time.sleep(2.0)  # three timeouts: only the renewals keep it
    assert client.get(keys.lock) == lock.token.encode()
    lock.check()
    lock.release()
    assert client.exists(keys.lock) == 0


def test_a_lost_lock_makes_nothing_current(client: Client) -> None:
    keys = RedisKeys()
    lock = HeldLock(client, keys, "load")
    assert lock.acquire()
    client.set(keys.lock, "load another-host:1 x")  # lapsed, and another load took it
    with pytest.raises(IndexUnavailable, match="lost shixin:lock"):
        lock.commit(lambda tx: tx.set(keys.current, "v-of-the-lost-load"))
    assert client.get(keys.current) is None
    lock.release()
    assert client.get(keys.lock) == b"load another-host:1 x"  # not ours to delete


def test_garbage_collection_spares_a_version_a_live_load_is_writing(client: Client) -> None:
    keys = RedisKeys()
    writer = HeldLock(client, keys, "load")
    assert writer.acquire()
    client.sadd(keys.versions, "being-written")
    client.hset(keys.meta("being-written"), mapping={"state": "writing"})
    client.hset(keys.subjects("being-written", 0), "k", "v")
    assert not try_collect_garbage(client, keys, "gc r1")  # the writer holds the lock
    assert client.exists(keys.subjects("being-written", 0)) == 1
    writer.release()  # as if it died: its version is garbage now
    assert try_collect_garbage(client, keys, "gc r1")
    assert client.smembers(keys.versions) == set()
    assert every_key(client) == set()


# --- Redis that lost its data --------------------------------------------------


@pytest.fixture
def replica(redis_server: RedisServer, serve: Serve, tmp_path: Path) -> RunningServer:
    """basic_rows() published by a loader process; one replica serving it."""
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    return server


def status(server: RunningServer) -> pb.ListStatus:
    reply: pb.ListStatus = server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)
    return reply


def health(server: RunningServer) -> str:
    reply = health_pb2_grpc.HealthStub(server.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def flush(redis_server: RedisServer) -> None:
    c = connect(redis_server.url, timeout=5)
    c.flushall()
    c.close()


def restart_empty(redis_server: RedisServer) -> None:
    redis_server.stop()
    for item in redis_server.folder.iterdir():  # the append-only files: the data
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    redis_server.start()


LOSSES = {"flushall": flush, "restarted_empty": restart_empty}


def codes(answer: pb.CheckResponse) -> tuple[int, list[str]]:
    return answer.decision, [r.code for r in answer.reasons]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_redis_that_lost_the_list_fails_every_check_until_a_load(
    loss: str, replica: RunningServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    served = status(replica).version
    LOSSES[loss](redis_server)
    eventually(lambda: "lost" in status(replica).not_serving_reason, "loss noticed", step=0.05)
    lost = status(replica)
    assert served in lost.not_serving_reason
    assert lost.lag_deltas == -1  # never "0 behind" a list Redis no longer holds
    assert not lost.index_reachable
    assert lost.version == served  # what it served, still shown
    # every subject gets the fail policy (REVIEW by default): the listed one,
    # and one the local Bloom filter clears, since nobody holds the list now
    unavailable = (pb.REVIEW, ["INDEX_UNAVAILABLE"])
    assert codes(decision(replica, ZHANG, "张伟")) == unavailable
    assert codes(decision(replica, ZHAO)) == unavailable

    done = load_cli(write_jsonl(tmp_path / "again.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: status(replica).not_serving_reason == "", "recovered", step=0.05)
    assert decision(replica, ZHANG, "张伟").decision == pb.DENY
    assert codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"])
    recovered = status(replica)
    assert (recovered.lag_deltas, recovered.index_reachable) == (0, True)


def test_health_is_not_serving_while_redis_has_lost_the_list(
    replica: RunningServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Health follows ``RedisFollower.health_problem`` (the server's watch loop)."""
    assert health(replica) == "SERVING"
    flush(redis_server)
    eventually(lambda: health(replica) == "NOT_SERVING", "health NOT_SERVING", step=0.05)
    done = load_cli(write_jsonl(tmp_path / "again.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: health(replica) == "SERVING", "health SERVING again", step=0.05)


def test_redis_unreachable_is_not_lost_data(
    replica: RunningServer, redis_server: RedisServer
) -> None:
    """Connection errors keep the version in hand: Bloom negatives answered, no problem."""
    redis_server.stop()
    eventually(lambda: not status(replica).index_reachable, "Redis unreachable", step=0.05)
    assert status(replica).not_serving_reason == ""
    assert codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"])
    assert codes(decision(replica, ZHANG, "张伟")) == (pb.REVIEW, ["INDEX_UNAVAILABLE"])
    redis_server.start()  # the append-only file kept the data
    eventually(lambda: status(replica).index_reachable, "Redis back", step=0.05)
    assert status(replica).not_serving_reason == ""
    assert decision(replica, ZHANG, "张伟").decision == pb.DENY


def test_redis_over_its_maxmemory_is_said_once_as_such_and_never_clears_a_listed_person(
    replica: RunningServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Over its maxmemory (a limit lowered below what it holds), Redis refuses every
    command queued in a transaction (MULTI): the follower's rounds and the look-ups.
    Listed subjects get the --unavailable decision, never ALLOW; the log says what it
    is once, not "unreachable" then "connected" every second."""
    c = connect(redis_server.url, timeout=5)
    caplog.set_level(logging.INFO)
    try:
        used = int(c.info("memory")["used_memory"])
        c.config_set("maxmemory", str(used // 2))
        unavailable = (pb.REVIEW, ["INDEX_UNAVAILABLE"])
        eventually(lambda: codes(decision(replica, ZHANG, "张伟")) == unavailable,
                   "a listed subject: --unavailable", step=0.05)  # fmt: skip
        assert codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"])  # the Bloom filter's
        time.sleep(2.5)  # two more of the follower's rounds, each refused
        said = [r.getMessage() for r in caplog.records]
        assert sum("is over its maxmemory" in m for m in said) == 1, said
        assert not any("unreachable" in m for m in said), said
        assert codes(decision(replica, ZHANG, "张伟")) == unavailable
    finally:
        c.config_set("maxmemory", "0")
        c.close()
    eventually(lambda: decision(replica, ZHANG, "张伟").decision == pb.DENY, "back", step=0.05)
    eventually(lambda: any("under its maxmemory again" in r.getMessage()
                           for r in caplog.records), "said back")  # fmt: skip


# --- the follower itself: losses a FLUSHALL does not show ----------------------


def key_of(keyer: SubjectKeyer, number: str) -> int:
    return keyer.subject_key(IdType.RESIDENT_ID, number)


def test_no_version_yet_is_said(follower: RedisFollower) -> None:
    follower.sync_once()
    assert follower.current() is None
    assert follower.health_problem() == "redis holds no version yet"


def test_lost_deltas_are_noticed_and_recovered_when_loaded_again(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    keys = RedisKeys()
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    listing = write_jsonl(
        tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六"))]
    )
    publish_delta(client, listing, keyer)
    follower.sync_once()
    view = follower.current()
    assert view is not None and view.info.last_delta_seq == 1
    # a failover to a Redis replica that never got the delta
    version = client.get(keys.current).decode()
    client.hset(keys.meta(version), "last_seq", 0)
    client.delete(keys.deltas(version))
    follower.sync_once()
    assert "lost deltas" in follower.health_problem()
    assert follower.lag() == -1
    lost = follower.current()
    assert lost is not None and lost.might_contain(key_of(keyer, ZHAO))
    with pytest.raises(IndexUnavailable):
        lost.look_up(key_of(keyer, ZHAO))

    publish_delta(client, listing, keyer)  # the feed's delta, loaded again
    follower.sync_once()
    assert follower.health_problem() == ""
    view = follower.current()
    assert view is not None and [m.entry_id for m in view.look_up(key_of(keyer, ZHAO))] == ["E8"]


def test_redis_going_back_to_an_older_version_is_lost_data(
    follower: RedisFollower, redis_server: RedisServer, client: Client, keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:  # fmt: skip
    keys = RedisKeys()
    older = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    stale = RedisFollower(redis_server.url, keyer, replica_id="stale")  # keeps `older` alive
    try:
        stale.sync_once()
        follower.sync_once()
        time.sleep(1.1)  # versions are named to the second
        newer = publish_snapshot(
            client, write_jsonl(tmp_path / "s2.jsonl", [person_entry("E9", ZHAO, "赵六")]), keyer
        )
        follower.sync_once()
        view = follower.current()
        assert view is not None and view.info.version == newer
        client.set(keys.current, older)  # a failover to a Redis without the newest load
        follower.sync_once()
        assert f"went back to version {older}" in follower.health_problem()
        time.sleep(1.1)
        third = publish_snapshot(
            client, write_jsonl(tmp_path / "s3.jsonl", [person_entry("E9", ZHAO, "赵六")]), keyer
        )
        follower.sync_once()
        assert follower.health_problem() == ""
        view = follower.current()
        assert view is not None and view.info.version == third
    finally:
        stale.stop()


def test_another_load_under_the_same_name_is_followed_afresh(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """The load token tells that the data under a version's name was replaced."""
    keys = RedisKeys()
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    version = client.get(keys.current).decode()
    client.hset(keys.meta(version), "load_token", "another-load")
    follower.sync_once()
    assert follower.health_problem() == ""
    view = follower.current()
    assert view is not None and view.look_up(key_of(keyer, ZHANG))


# --- the feed's watermark and time in Redis (loader.feed) ------------------------


def test_a_snapshot_publishes_its_own_watermark_and_the_feeds_time(
    client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    keys = RedisKeys()
    header = {"snapshot": {"includes_seq": 3, "published_at": "2026-11-28T09:00:00+08:00"}}
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [header, *basic_rows()]))
    version = publish_snapshot(client, path, keyer)
    meta = read_meta(client, keys, version)
    assert (meta["last_seq"], meta["snapshot_seq"]) == (b"3", b"3")
    published = datetime(2026, 11, 28, 1, tzinfo=UTC).timestamp()
    assert float(meta["source_timestamp"]) == published
    ops = [
        delta(3, "LIST", entry=person_entry("E7", ZHAO, "赵六")),  # in the snapshot already
        {**delta(4, "SUSPEND", entry_id="E1"), "published_at": "2026-11-28T10:00:00+08:00"},
    ]
    result = publish_delta(client, write_jsonl(tmp_path / "d.jsonl", ops), keyer)
    assert (result.applied, result.last_seq) == (1, 4)
    meta = read_meta(client, keys, version)
    assert float(meta["source_timestamp"]) == published + 3600
    assert client.hget(keys.meta(version), "snapshot_seq") == b"3"
