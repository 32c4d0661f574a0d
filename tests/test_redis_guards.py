"""What a Redis that lost, may lose, or never had the right data must not do: look healthy.

Redis that may evict the list's keys (an ``allkeys-*`` maxmemory-policy), subject
buckets gone, deltas Redis lost before a replica started, a snapshot built with
another key secret, an older snapshot, a version name used again, a delta rewritten
under an applied seq, Redis out of memory during a load, and a lost Sentinel.

Everything is real: redis-server (and sentinels) on free loopback ports,
``shixin-check load`` as a child process, replicas in Redis mode.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    PASSWORD_ENV,
    Client,
    RedisFollower,
    RedisKeys,
    connect,
)
from shixin_check.loader.publish_redis import publish_snapshot
from shixin_check.server.app import LIST_CURRENT
from tests import test_redis_seq
from tests.conftest import SECRET, RedisSentinels, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_failures import codes, health, key_of, status
from tests.test_redis_replicas import decision
from tests.test_redis_seq import (
    UNAVAILABLE,
    listing_zhao,
    load,
    one_line,
    snapshot_with_header,
)
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
#: fixtures shared with tests/test_redis_seq.py
client = test_redis_seq.client
replica = test_redis_seq.replica
OTHER_SECRET = b"another-tests-only-secret-0123456789"


def load_with(secret: bytes, path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIXIN_KEY_SECRET": secret.decode()}
    env.pop(PASSWORD_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "load", str(path), "--redis", url, *extra],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


# --- 1. eviction ----------------------------------------------------------------------


def test_a_load_is_refused_by_a_redis_that_may_evict_the_list(
    redis_server: RedisServer,
    client: Client,
    tmp_path: Path,
) -> None:
    client.config_set("maxmemory", "10mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    done = load(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 2, done.stderr
    line = one_line(done)
    assert "maxmemory-policy is allkeys-lru" in line and "noeviction" in line, line
    assert client.get(RedisKeys().current) is None


def test_a_replica_is_not_serving_while_redis_may_evict_the_list(
    replica: RunningServer,
    client: Client,
) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    eventually(lambda: health(replica) == "NOT_SERVING", "NOT_SERVING while it may evict")
    assert "maxmemory-policy is allkeys-lru" in status(replica).not_serving_reason
    assert codes(decision(replica, ZHANG, "张伟")) == UNAVAILABLE  # never ALLOW from Redis
    client.config_set("maxmemory-policy", "noeviction")
    eventually(lambda: health(replica) == "SERVING", "SERVING once it cannot evict")
    assert decision(replica, ZHANG, "张伟").decision == pb.DENY


def test_subject_buckets_lost_are_noticed(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """A bucket evicted (here deleted) reads as "not listed": the count in meta tells."""
    keys = RedisKeys()
    version = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    try:
        follower.bucket_check_seconds = 0.0
        follower.sync_once()
        assert follower.health_problem() == ""
        client.delete(keys.subjects(version, 0))  # basic_rows: one bucket
        follower.sync_once()
        follower.sync_once()
        assert "lost 1 of the 1 subject buckets" in follower.health_problem()
        view = follower.current()
        assert view is not None
        with pytest.raises(IndexUnavailable):
            view.look_up(key_of(keyer, ZHANG))
        publish_snapshot(client, write_jsonl(tmp_path / "s2.jsonl", basic_rows()), keyer)
        follower.sync_once()
        assert follower.health_problem() == ""
    finally:
        follower.stop()


# --- 3. deltas Redis lost before a replica started ---------------------------------


def test_a_replica_started_after_redis_lost_deltas_is_not_serving(
    replica: RunningServer, redis_server: RedisServer, client: Client, serve: Serve,
    tmp_path: Path,
) -> None:  # fmt: skip
    url = redis_server.url
    saved = [(key, client.dump(key)) for key in client.scan_iter(count=1000)]
    first = write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)])
    assert load(first, url).returncode == 0
    eventually(lambda: decision(replica, ZHAO).decision == pb.DENY, "delta 1 served")
    with client.pipeline(transaction=True) as restore:  # Redis back from an older save
        restore.flushall()
        for key, raw in saved:
            restore.restore(key, 0, raw)
        restore.execute()
    eventually(lambda: health(replica) == "NOT_SERVING", "r1 NOT_SERVING")
    eventually(  # r1's heartbeat says seq 1 again
        lambda: b'"seq":1' in (client.hget(RedisKeys().replicas, "r1") or b""), "r1's record"
    )
    late = serve(None, redis=url, replica_id="r2")
    time.sleep(0.5)
    assert health(late) == "NOT_SERVING"
    reason = status(late).not_serving_reason
    assert "replica r1 applied up to seq 1" in reason and "load delta 1 again" in reason, reason
    with pytest.raises(grpc.RpcError) as refused:  # never ALLOW: delta 1 listed Zhao
        decision(late, ZHAO)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert load(first, url).returncode == 0  # the lost delta loaded again
    for server in (replica, late):
        eventually(lambda s=server: health(s) == "SERVING", "SERVING again")
        assert decision(server, ZHAO).decision == pb.DENY


# --- 2. a lost Sentinel ---------------------------------------------------------------


def test_a_lost_sentinel_fails_checks_and_health_fast(
    redis_sentinels: RedisSentinels, serve: Serve, tmp_path: Path
) -> None:
    keyer = SubjectKeyer(SECRET)
    with connect(redis_sentinels.url, timeout=5) as loader:
        publish_snapshot(loader, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    server = serve(None, redis=redis_sentinels.url, replica_id="r1")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    stopped = [p for name, p in redis_sentinels.procs.items() if name.startswith("sentinel")]
    for proc in stopped:
        proc.send_signal(signal.SIGSTOP)
    try:
        master = redis_sentinels._client(redis_sentinels.master_port, redis_sentinels.PASSWORD)
        with master:
            master.client_kill_filter(_type="normal", skipme=True)
        liveness = health_pb2_grpc.HealthStub(server.channel)
        for _ in range(4):
            started = time.monotonic()
            answer = decision(server, ZHANG, "张伟")
            checked = time.monotonic() - started
            started = time.monotonic()
            liveness.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)
            alive = time.monotonic() - started
            assert checked < 2.0 and alive < 2.0, (checked, alive)
            assert answer.decision in (pb.REVIEW, pb.DENY)  # never ALLOW
            time.sleep(0.3)
    finally:
        for proc in stopped:
            proc.send_signal(signal.SIGCONT)


# --- 4. another key secret ------------------------------------------------------------


def test_a_snapshot_with_another_key_secret_is_refused_unless_asked(
    replica: RunningServer, redis_server: RedisServer, client: Client, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    url, keys = redis_server.url, RedisKeys()
    served = client.get(keys.current)
    newer = write_jsonl(tmp_path / "s2.jsonl", [*basic_rows(), person_entry("E8", ZHAO, "赵六")])
    refused = load_with(OTHER_SECRET, newer, url)
    assert refused.returncode == 2, refused.stderr
    line = one_line(refused)
    assert "another key secret" in line and "--new-key-secret" in line, line
    assert client.get(keys.current) == served
    caplog.set_level(logging.ERROR)
    done = load_with(OTHER_SECRET, newer, url, "--new-key-secret")
    assert done.returncode == 0, done.stderr
    eventually(lambda: status(replica).behind, "behind")
    time.sleep(2.5)
    seen = status(replica)
    assert "another key secret" in seen.rejected_problem, seen
    assert health(replica) == "SERVING"  # the version in hand still answers
    current = health_pb2_grpc.HealthStub(replica.channel).Check(
        health_pb2.HealthCheckRequest(service=LIST_CURRENT), timeout=5
    )
    assert current.status == health_pb2.HealthCheckResponse.NOT_SERVING  # but it is behind
    said = [r for r in caplog.records if "another key secret" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]


# --- 5. an older snapshot ---------------------------------------------------------------


def test_an_older_snapshot_with_the_same_includes_seq_is_refused_unless_asked(
    redis_server: RedisServer,
    client: Client,
    tmp_path: Path,
) -> None:
    url = redis_server.url
    zhao = person_entry("E8", ZHAO, "赵六")
    newer = write_jsonl(tmp_path / "s30.jsonl", [
        {"snapshot": {"includes_seq": 0, "published_at": "2026-11-30T09:00:00+08:00"}},
        *basic_rows(), zhao])  # fmt: skip
    older = write_jsonl(tmp_path / "s20.jsonl", [
        {"snapshot": {"includes_seq": 0, "published_at": "2026-11-20T09:00:00+08:00"}},
        *basic_rows()])  # fmt: skip
    assert load(newer, url).returncode == 0
    served = client.get(RedisKeys().current)
    refused = load(older, url)
    assert refused.returncode == 1, refused.stderr
    line = one_line(refused)
    assert "published at 2026-11-20T01:00:00Z, before the current version" in line, line
    assert client.get(RedisKeys().current) == served
    done = load(older, url, "--allow-rollback")
    assert done.returncode == 0, done.stderr
    assert "is replaced by an older snapshot" in done.stderr


# --- 6. a version name used again -------------------------------------------------------


def test_a_snapshot_loaded_again_after_its_version_was_collected_is_followed(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    keys = RedisKeys()
    first = snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows())
    v1 = publish_snapshot(client, first, keyer)
    follower = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    try:
        follower.sync_once()
        second = snapshot_with_header(tmp_path / "s2.jsonl", 0, [*basic_rows(),
                                      person_entry("E8", ZHAO, "赵六")])  # fmt: skip
        time.sleep(1.1)
        publish_snapshot(client, second, keyer, allow_rollback=True)
        follower.sync_once()  # follows it, then collects v1
        assert not client.sismember(keys.versions, v1)
        again = publish_snapshot(client, first, keyer, allow_rollback=True)
        follower.sync_once()
        assert follower.health_problem() == ""
        view = follower.current()
        assert view is not None and view.info.version.split("+")[0] == again
        assert view.look_up(key_of(keyer, ZHAO)) == []
    finally:
        follower.stop()


# --- 7. a delta rewritten under an applied seq --------------------------------------------


def test_a_delta_rewritten_under_an_applied_seq_is_refused(
    replica: RunningServer,
    redis_server: RedisServer,
    client: Client,
    tmp_path: Path,
) -> None:
    url = redis_server.url
    first = write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)])
    assert load(first, url).returncode == 0
    again = load(first, url)  # the same delta again: harmless
    assert again.returncode == 0 and "0 op(s) applied" in again.stdout, again.stderr
    rewritten = write_jsonl(tmp_path / "d1b.jsonl", [delta(1, "DELIST", entry_id="E1")])
    refused = load(rewritten, url)
    assert refused.returncode == 1, refused.stderr
    line = one_line(refused)
    assert "seq 1 is applied already as LIST E8" in line, line
    other = write_jsonl(tmp_path / "d1c.jsonl",
                        [delta(1, "LIST", entry=person_entry("E8", ZHANG, "张伟"))])  # fmt: skip
    line = one_line(load(other, url))
    assert "seq 1 is applied already as LIST E8, not as this file's LIST E8 with other" in line


# --- 8. Redis out of memory during a load ---------------------------------------------------


def test_a_load_into_a_redis_out_of_memory_says_so_in_one_line(
    redis_server: RedisServer,
    client: Client,
    tmp_path: Path,
) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) + 1000))
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    client.config_set("maxmemory", "0")
    assert done.returncode == 2, done.stderr
    line = one_line(done)
    assert "Redis is out of memory (maxmemory" in line and "\\x" not in line, line
    assert client.get(RedisKeys().current) is None
