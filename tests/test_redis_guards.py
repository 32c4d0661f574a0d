"""What a Redis that lost, may lose, or never had the right data must not do: look healthy.

Redis that may evict the list's keys (an ``allkeys-*`` maxmemory-policy under a
maxmemory limit), deltas Redis lost before a replica started (and records that do
not prove it: no load token, too old, copied), a follower that reads nothing that
grows with the list each round, a snapshot built with
another key secret, an older snapshot, a version name used again, a delta rewritten
under an applied seq, Redis out of memory during a load, and a lost Sentinel.

Everything is real: redis-server (and sentinels) on free loopback ports,
``shixin-check load`` as a child process, replicas in Redis mode.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import index_redis
from shixin_check.loader.index_redis import (
    PASSWORD_ENV,
    Client,
    RedisFollower,
    RedisKeys,
    connect,
    read_meta,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from shixin_check.server.app import LIST_CURRENT
from tests import test_redis_seq
from tests.conftest import SECRET, RedisSentinels, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.processes import free_port, run_cli
from tests.test_failure_paths import ONE_ROW_CSV
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
#: fixture shared with tests/test_redis_seq.py (``client`` is conftest's)
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
    client.config_set("maxmemory", "10mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    eventually(lambda: health(replica) == "NOT_SERVING", "NOT_SERVING while it may evict")
    assert "maxmemory-policy is allkeys-lru" in status(replica).not_serving_reason
    assert codes(decision(replica, ZHANG, "张伟")) == UNAVAILABLE  # never ALLOW from Redis
    client.config_set("maxmemory-policy", "noeviction")
    eventually(lambda: health(replica) == "SERVING", "SERVING once it cannot evict")
    assert decision(replica, ZHANG, "张伟").decision == pb.DENY


class EvictingRedis(RedisServer):
    """A redis-server started with ``--maxmemory-policy allkeys-lru --maxmemory 0``: an
    evicting policy, but no limit (64-bit Redis), so nothing is ever evicted."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no",
             "--maxmemory-policy", "allkeys-lru", "--maxmemory", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            probe.close()


@pytest.fixture
def unlimited_lru(tmp_path: Path) -> Iterator[EvictingRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    folder = tmp_path / "redis-lru"
    folder.mkdir()
    server = EvictingRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_allkeys_policy_without_a_maxmemory_limit_evicts_nothing(
    unlimited_lru: EvictingRedis, serve: Serve, tmp_path: Path
) -> None:
    """maxmemory 0 is no limit: allkeys-lru evicts nothing, so load and replicas go on;
    a limit set later takes the replica out of service, and removing it brings it back."""
    url = unlimited_lru.url
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=url, replica_id="r1")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    assert health(server) == "SERVING"
    with connect(url, timeout=5) as admin:
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] in (
            "allkeys-lru",
            b"allkeys-lru",
        )
        admin.config_set("maxmemory", "10mb")
        eventually(lambda: health(server) == "NOT_SERVING", "NOT_SERVING under a limit")
        assert "maxmemory-policy is allkeys-lru" in status(server).not_serving_reason
        assert codes(decision(server, ZHANG, "张伟")) == UNAVAILABLE
        admin.config_set("maxmemory", "0")
        eventually(lambda: health(server) == "SERVING", "SERVING without a limit")
        assert decision(server, ZHANG, "张伟").decision == pb.DENY


# --- what a follower asks Redis each round --------------------------------------------


def _commands(client: Client) -> dict[str, int]:
    """Redis's command counts (``INFO commandstats``) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_a_replica_never_counts_subject_buckets(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """Nothing a replica asks when it takes a version, or each round after, grows with
    the list: no EXISTS over every bucket name (seconds at 10M entries, blocking every
    client), no SCAN, no read of a whole bucket or Bloom filter each round."""
    publish_snapshot(client, snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), keyer)
    client.config_resetstat()
    follower = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    try:
        follower.sync_once()  # takes the version
        assert follower.health_problem() == ""
        taken = _commands(client)
        assert "exists" not in taken, taken
        client.config_resetstat()
        deadline = time.monotonic() + 2.5  # past the claims (1 s) and policy (1 s) checks
        while time.monotonic() < deadline:
            follower.sync_once()
            time.sleep(0.05)
        rounds = _commands(client)
        grows = {"exists", "scan", "keys", "hgetall", "hkeys", "hvals", "xrange", "smembers"}
        per_round = {name for name in rounds if name in grows}
        # HGETALL is of P:replicas (one record per replica), never of a bucket
        assert per_round <= {"hgetall"}, rounds
        assert rounds.get("get", 0) <= rounds.get("hmget", 0), rounds  # P:current only
    finally:
        follower.stop()


class _Gets:
    """The keys a follower's client GETs directly (a Bloom filter is one such GET)."""

    def __init__(self, client: Client) -> None:
        self.keys: list[bytes | str] = []
        self._get = client.get

    def __call__(self, name: Any) -> Any:
        self.keys.append(name)
        return self._get(name)


def test_a_version_not_taken_is_never_read_whole_each_round(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """A version a replica cannot take (another key secret; records say Redis lost its
    deltas) is looked at every round: its meta and the records, never its Bloom filter
    (tens of MB at 10M entries, every 0.1 s)."""
    keys = RedisKeys()
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    behind = RedisFollower(redis_server.url, keyer, replica_id="behind")
    try:
        behind.sync_once()
        other = SubjectKeyer(OTHER_SECRET)
        newer = write_jsonl(
            tmp_path / "s2.jsonl", [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
        )
        v2 = publish_snapshot(client, newer, other, new_key_secret=True)
        gets = _Gets(behind.client)
        behind.client.get = gets  # type: ignore[method-assign]
        for _ in range(5):
            behind.sync_once()
        assert "another key secret" in behind.behind_problem()
        assert keys.bloom(v2) not in gets.keys, gets.keys
    finally:
        behind.stop()
    v3 = publish_snapshot(client, write_jsonl(tmp_path / "s3.jsonl", basic_rows()), keyer,
                          new_key_secret=True)  # fmt: skip
    token = read_meta(client, keys, v3)["load_token"].decode()
    client.hset(keys.replicas, "r-ahead", orjson.dumps(
        {"version": v3, "token": token, "seq": 2, "at": time.time()}))  # fmt: skip
    late = RedisFollower(redis_server.url, keyer, replica_id="late")
    try:
        gets = _Gets(late.client)
        late.client.get = gets  # type: ignore[method-assign]
        for _ in range(5):
            late.sync_once()
        assert "replica r-ahead applied up to seq 2" in late.health_problem()
        assert keys.bloom(v3) not in gets.keys, gets.keys
    finally:
        late.stop()


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


def _take(url: str, keyer: SubjectKeyer, replica_id: str) -> RedisFollower:
    follower = RedisFollower(url, keyer, replica_id=replica_id)
    follower.sync_once()
    return follower


def test_records_and_claims_without_a_load_token_prove_nothing(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """A record of older code (no token), a claim copied without one, or a record of
    another load under the version's name written before this load was made current
    says nothing of this load: the replica serves. One with the load's token does
    count, and so does another load's written since (a replica still serving deltas
    Redis lost, when the snapshot was loaded again after a flush)."""
    keys = RedisKeys()
    version = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    token = read_meta(client, keys, version)["load_token"].decode()
    now = time.time()
    client.hset(keys.replicas, mapping={
        "old-code": orjson.dumps({"version": version, "seq": 3, "at": now}),
        "empty-token": orjson.dumps({"version": version, "seq": 3, "token": "", "at": now}),
        "other-load": orjson.dumps({"version": version, "seq": 3, "token": "0123456789abcdef",
                                    "at": now - 30}),
        "copier": orjson.dumps({"version": version, "seq": 0, "token": token, "at": now,
                                "claim": {"version": version, "seq": 4, "replica": "x",
                                          "at": now}}),
    })  # fmt: skip
    follower = _take(redis_server.url, keyer, "by-hand")
    try:
        assert follower.health_problem() == ""
        view = follower.current()
        assert view is not None and view.look_up(key_of(keyer, ZHANG)) != []
    finally:
        follower.stop()
    client.hset(keys.replicas, "with-token",
                orjson.dumps({"version": version, "seq": 3, "token": token, "at": now}))  # fmt: skip
    counted = _take(redis_server.url, keyer, "by-hand-2")
    try:
        assert "replica with-token applied up to seq 3" in counted.health_problem()
    finally:
        counted.stop()
    client.hdel(keys.replicas, "with-token")
    client.hset(keys.replicas, "other-load-since", orjson.dumps(
        {"version": version, "seq": 2, "token": "0123456789abcdef", "at": now}))  # fmt: skip
    since = _take(redis_server.url, keyer, "by-hand-3")
    try:
        problem = since.health_problem()
        assert "replica other-load-since applied up to seq 2" in problem, problem
        assert "of an earlier load of it: deltas 1 to 2 are missing" in problem, problem
    finally:
        since.stop()


def test_a_claim_older_than_records_are_kept_proves_nothing(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """A claim counts from the time of the record it came from, not of the record it is
    copied into; one copied now carries that time along."""
    keys = RedisKeys()
    version = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    token = read_meta(client, keys, version)["load_token"].decode()
    now = time.time()
    old = now - index_redis.RECORD_SECONDS - 10
    client.hset(keys.replicas, "keeper", orjson.dumps(
        {"version": version, "seq": 0, "token": token, "at": now,
         "claim": {"version": version, "seq": 3, "token": token, "replica": "gone",
                   "at": old}}))  # fmt: skip
    follower = _take(redis_server.url, keyer, "by-hand")
    try:
        assert follower.health_problem() == ""
    finally:
        follower.stop()
    recent = now - 60
    client.hset(keys.replicas, "keeper", orjson.dumps(
        {"version": version, "seq": 0, "token": token, "at": now,
         "claim": {"version": version, "seq": 3, "token": token, "replica": "gone",
                   "at": recent}}))  # fmt: skip
    copier = _take(redis_server.url, keyer, "copier")
    try:
        assert "replica gone applied up to seq 3" in copier.health_problem()
        record = orjson.loads(client.hget(keys.replicas, "copier") or b"{}")
        assert record["claim"]["at"] == recent, record  # the source's time, not its own
    finally:
        copier.stop()


def test_claims_copied_between_replicas_lapse_with_their_source(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replicas re-asserting each other's copy of a claim do not keep it alive for
    ever: it lapses RECORD_SECONDS (here 1.5 s) after the record it came from."""
    monkeypatch.setattr(index_redis, "RECORD_SECONDS", 1.5)
    keys = RedisKeys()
    version = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    token = read_meta(client, keys, version)["load_token"].decode()
    client.hset(keys.replicas, "gone", orjson.dumps(
        {"version": version, "seq": 3, "token": token, "at": time.time()}))  # fmt: skip
    a, b = _take(redis_server.url, keyer, "a"), _take(redis_server.url, keyer, "b")
    try:
        for follower in (a, b):
            assert "replica gone applied up to seq 3" in follower.health_problem()
        for name in (b"a", b"b"):
            assert b'"claim"' in (client.hget(keys.replicas, name) or b"")
        client.hdel(keys.replicas, "gone")  # collected: only the copies are left
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and (a.health_problem() or b.health_problem()):
            a.sync_once()
            b.sync_once()
            time.sleep(0.1)
        assert a.health_problem() == "" and b.health_problem() == ""
    finally:
        a.stop()
        b.stop()


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
    newer = snapshot_with_header(
        tmp_path / "s2.jsonl", 0, [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    )
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


def test_a_replica_refusing_a_version_says_so_in_its_metrics(
    redis_server: RedisServer, serve: Serve, client: Client, tmp_path: Path
) -> None:
    """shixin_list_behind was exported in directory mode only: in Redis mode (both shipped
    deployments) ShixinListBehind could never fire for a version a replica refuses."""
    from tests.test_metrics import scrape, value

    url = redis_server.url
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=url, replica_id="r1", metrics_listen=f"127.0.0.1:{free_port()}")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    eventually(lambda: value(scrape(server), "shixin_list_behind") == 0, "current, not behind")
    newer = snapshot_with_header(
        tmp_path / "s2.jsonl", 0, [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    )
    done = load_with(OTHER_SECRET, newer, url, "--new-key-secret")
    assert done.returncode == 0, done.stderr
    eventually(lambda: value(scrape(server), "shixin_list_behind") == 1, "behind in the metrics")
    assert value(scrape(server), "shixin_ready") == 1  # the version in hand still answers
    shown = run_cli("status", "--target", server.address)
    assert "BEHIND: redis version" in shown.stdout, shown.stdout
    assert "behind by a version it refused" in shown.stdout  # was "behind by 0 delta(s)"


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


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_an_undated_snapshot_over_a_dated_one_is_refused_unless_asked(
    redis_server: RedisServer, client: Client, tmp_path: Path, kind: str
) -> None:
    """An old headerless export copied in under a new name: directory mode refuses it,
    and ``load`` took it (the people only the served list named ALLOW NOT_LISTED,
    every replica SERVING)."""
    url = redis_server.url
    dated = write_jsonl(tmp_path / "s30.jsonl", [
        {"snapshot": {"includes_seq": 0, "published_at": "2026-11-30T09:00:00+08:00"}},
        *basic_rows(), person_entry("E8", ZHAO, "赵六")])  # fmt: skip
    assert load(dated, url).returncode == 0
    served = client.get(RedisKeys().current)
    if kind == "csv":
        undated = tmp_path / "export.csv"
        undated.write_text(ONE_ROW_CSV, encoding="utf-8")
    else:
        undated = write_jsonl(tmp_path / "export.jsonl", basic_rows())
    refused = load(undated, url)
    assert refused.returncode == 1, refused.stderr
    line = one_line(refused)
    assert "does not say when it was published" in line, line
    assert "while the current version" in line and "2026-11-30T01:00:00Z" in line, line
    hint = "a sidecar export.csv.meta.json" if kind == "csv" else "the feed's header row"
    assert hint in line, line
    assert client.get(RedisKeys().current) == served
    done = load(undated, url, "--allow-rollback")
    assert done.returncode == 0, done.stderr
    assert "is replaced by an undated snapshot" in done.stderr


def test_a_snapshot_whose_header_does_not_read_is_told_so_not_that_it_is_undated(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """The undated rule ran before validation, so a header with a bad time was refused
    as saying no time at all, with --allow-rollback for advice."""
    url = redis_server.url
    assert load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url).returncode == 0
    bad = write_jsonl(tmp_path / "s2.jsonl", [
        {"snapshot": {"includes_seq": 0, "published_at": "2026-13-45T00:00:00+08:00"}},
        *basic_rows()])  # fmt: skip
    refused = load(bad, url)
    assert refused.returncode == 1, refused.stderr
    assert "snapshot.published_at" in refused.stderr, refused.stderr
    assert "does not say when it was published" not in refused.stderr, refused.stderr


# --- 6. a version name used again -------------------------------------------------------


def test_a_snapshot_loaded_again_after_its_version_was_collected_is_followed(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index_redis, "RETIRED_GRACE_SECONDS", 0.0)  # collected at once
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


def test_a_replica_that_missed_a_rollback_and_the_loads_since_takes_the_newest(
    redis_server: RedisServer,
    client: Client,
    keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:
    """A replica paused on s1 + deltas 1-3 while s0 was loaded with --allow-rollback,
    deltas 1-2 on it, then s4 (includes seq 2): it took s4 as undoing delta 3 and its
    record, written since s4 was made current, kept every replica NOT_SERVING for an
    hour. Only the snapshot it served loaded again is weighed against the seq applied
    (tests/test_redis_loaded_again.py)."""
    keys = RedisKeys()

    def snapshot(name: str, includes: int, day: str, rows: list[dict[str, Any]]) -> Path:
        header = {
            "snapshot": {"includes_seq": includes, "published_at": f"2026-11-{day}T09:00:00+08:00"}
        }
        return write_jsonl(tmp_path / name, [header, *rows])

    def delta_file(name: str, seq: int) -> Path:
        return write_jsonl(tmp_path / name, [delta(seq, "DELIST", entry_id=f"E{seq}")])

    rows = basic_rows()
    s1 = publish_snapshot(client, snapshot("s1.jsonl", 0, "28", rows), keyer)
    for seq in (1, 2, 3):
        publish_delta(client, delta_file(f"a{seq}.jsonl", seq), keyer)
    paused = _take(redis_server.url, keyer, "paused")
    try:
        assert paused.current().info.last_delta_seq == 3  # type: ignore[union-attr]
        token = read_meta(client, keys, s1)["load_token"].decode()
        publish_snapshot(client, snapshot("s0.jsonl", 0, "27", rows), keyer, allow_rollback=True)
        for seq in (1, 2):
            publish_delta(client, delta_file(f"b{seq}.jsonl", seq), keyer)
        s4 = publish_snapshot(client, snapshot("s4.jsonl", 2, "30", rows), keyer)
        # its record, as it writes it every second, since s4 was made current
        client.hset(keys.replicas, "paused", orjson.dumps(
            {"version": s1, "seq": 3, "token": token, "at": time.time() + 1}))  # fmt: skip
        paused.sync_once()
        assert paused.health_problem() == ""
        assert paused.current().info.version == s4  # type: ignore[union-attr]
    finally:
        paused.stop()
    client.hset(keys.replicas, "paused", orjson.dumps(
        {"version": s1, "seq": 3, "token": token, "at": time.time() + 1}))  # fmt: skip
    fresh = _take(redis_server.url, keyer, "fresh")
    try:
        assert fresh.health_problem() == ""
        assert fresh.current().info.version == s4  # type: ignore[union-attr]
    finally:
        fresh.stop()
