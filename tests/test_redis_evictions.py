"""Keys Redis may have evicted, and a read-only Redis replica that is not current.

An ``allkeys-*`` maxmemory-policy under a limit lets Redis evict the list's subject
buckets, which then read as "not listed". Setting ``noeviction`` again brings none
of them back: a version Redis evicted keys from while its policy could (INFO stats
``evicted_keys``) is never served again, on any replica, until a snapshot is loaded
again. A server reading a read-only Redis replica sees its master's policy and
evictions too (the replica reports its own ``noeviction``, the evictions reach it as
deletions), and is behind, not current, once that replica's link to its master has
been down for a while; while the link is up it is current, lag 0.

Everything is real: redis-servers on free loopback ports (one a ``replicaof`` the
other), ``shixin-check load`` as a child process, servers in Redis mode.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.loader.index_redis import (
    EVICTED_FIELD,
    LINK_DOWN_SECONDS,
    POLICY_CHECK_SECONDS,
    Client,
    RedisFollower,
    RedisKeys,
    connect,
    read_meta,
)
from shixin_check.server.app import LIST_CURRENT
from tests import test_redis_replicas, test_redis_seq
from tests.conftest import RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_redis_failures import codes, health, status
from tests.test_redis_replicas import decision
from tests.test_redis_seq import (
    UNAVAILABLE,
    cli,
    listing_zhao,
    load,
    one_line,
    snapshot_with_header,
)
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
#: fixtures shared: basic_rows() loaded and replica r1 serving it (test_redis_seq); a
#: second redis-server, a read-only replica of ``redis_server`` (test_redis_replicas)
replica = test_redis_seq.replica
read_only_copy = test_redis_replicas.read_only_copy

#: Long enough for a follower to have read INFO again twice (its own, and a master's).
TWO_READS_S = 2.5 * POLICY_CHECK_SECONDS


def may_evict(client: Client) -> None:
    """An operator's mistake after the load: an allkeys policy under a limit, still
    above what Redis holds (nothing evicted yet). Another application's keys are there
    too, written first: Redis's LRU clock counts whole seconds, so a second later they
    are older than anything of the list's touched since (``evict_some``)."""
    for n in range(500):
        client.set(f"other-app:{n}", b"x" * 2000)
    time.sleep(1.1)  # the LRU clock's resolution: the other keys are now the oldest
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 1_000_000))
    client.config_set("maxmemory-policy", "allkeys-lru")


def evict_some(client: Client) -> int:
    """Redis evicts keys: its limit lowered below what it holds; the count. The list's
    keys are touched first, so LRU takes the other application's (older) ones: which
    keys went does not matter to a replica, which cannot tell (a lost pointer or Bloom
    filter is another test's case)."""
    prefix = RedisKeys().prefix
    kept = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    client.touch(*kept)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used - 200_000))
    for n in range(1000):
        client.set(f"other-app:new:{n}", b"x")
        evicted = int(client.info("stats")["evicted_keys"])
        if evicted:
            assert client.exists(*kept) == len(kept)  # the other application's went
            return evicted
    raise AssertionError("Redis evicted nothing")


def safe_again(client: Client) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "0")


def list_current(server: RunningServer) -> str:
    reply = health_pb2_grpc.HealthStub(server.channel).Check(
        health_pb2.HealthCheckRequest(service=LIST_CURRENT), timeout=5
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def follower_of(server: RunningServer) -> RedisFollower:
    follower = server.service.redis
    assert follower is not None
    return follower


def never_allowed(server: RunningServer) -> None:
    """Every listed person gets --unavailable (REVIEW, INDEX_UNAVAILABLE), never ALLOW."""
    assert codes(decision(server, ZHANG, "张伟")) == UNAVAILABLE


def test_a_version_redis_evicted_from_is_not_served_after_noeviction(
    replica: RunningServer, redis_server: RedisServer, client: Client, serve: Serve,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The old code was SERVING again once the policy was noeviction: whoever's bucket
    had gone got ALLOW NOT_LISTED, and ``status --redis`` exited 0."""
    url, keys = redis_server.url, RedisKeys()
    version = status(replica).version
    may_evict(client)
    eventually(lambda: "allkeys-lru" in status(replica).not_serving_reason, "NOT_SERVING")
    evict_some(client)
    safe_again(client)
    eventually(lambda: "may have been evicted" in status(replica).not_serving_reason, "said")
    time.sleep(TWO_READS_S)  # the policy read safe again since: it stays NOT_SERVING
    reason = status(replica).not_serving_reason
    assert reason.startswith(f"keys of version {version} may have been evicted"), reason
    assert "maxmemory-policy was allkeys-lru" in reason and "load the snapshot again" in reason
    assert "(INFO stats evicted_keys 0 -> " in reason, reason  # seen rise under allkeys-lru
    assert health(replica) == "NOT_SERVING"
    never_allowed(replica)
    assert decision(replica, ZHAO, "赵六").decision == pb.ALLOW  # the filter in hand clears

    # in the version's meta: a replica started now, its policy never unsafe, knows too
    assert read_meta(client, keys, version)[EVICTED_FIELD].decode() == reason
    late = serve(None, redis=url, replica_id="r2")
    eventually(lambda: status(late).not_serving_reason == reason, "the late replica told")
    never_allowed(late)
    redis_view = cli("status", "--redis", url)
    assert redis_view.returncode == 1, redis_view.stdout
    # nothing is loaded on it: its keys may be gone
    refused = load(write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)]), url)
    assert refused.returncode == 2, refused.stderr
    assert f"nothing was loaded: keys of version {version} may have been" in one_line(refused)

    done = load(snapshot_with_header(tmp_path / "s2.jsonl", 0, basic_rows()), url)
    assert done.returncode == 0, done.stderr
    for server in (replica, late):
        eventually(lambda s=server: health(s) == "SERVING", "SERVING the snapshot again")
        assert decision(server, ZHANG, "张伟").decision == pb.DENY


def test_a_load_refused_by_a_redis_that_evicted_keys_flags_the_current_version(
    redis_server: RedisServer, client: Client, serve: Serve, tmp_path: Path
) -> None:
    """No replica was running to see it: the next load finds the policy unsafe and keys
    evicted, is refused, and flags the current version, so the replicas started once
    the policy is safe again do not serve it (the old code served it: SERVING)."""
    url, keys = redis_server.url, RedisKeys()
    assert load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url).returncode == 0
    version = client.get(keys.current).decode()
    may_evict(client)
    evict_some(client)
    refused = load(write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)]), url)
    assert refused.returncode == 2, refused.stderr
    line = one_line(refused)
    assert "maxmemory-policy is allkeys-lru" in line, line
    assert f"version {version} is not served again" in line, line
    safe_again(client)
    assert read_meta(client, keys, version)[EVICTED_FIELD].startswith(
        f"keys of version {version} may have been evicted".encode()
    )
    late = serve(None, redis=url, replica_id="late")
    eventually(lambda: "may have been evicted" in status(late).not_serving_reason, "told")
    assert health(late) == "NOT_SERVING"
    never_allowed(late)


def test_a_server_reading_a_read_only_redis_sees_its_masters_policy_and_evictions(
    redis_server: RedisServer, read_only_copy: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    """The read-only replica reports its own noeviction, and the master's evictions reach
    it as deletions: the old code stayed SERVING throughout, listed people ALLOW."""
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=read_only_copy.url, replica_id="ro")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    master = connect(redis_server.url, timeout=5)
    copy = connect(read_only_copy.url, timeout=5)
    try:
        version = master.get(RedisKeys().current).decode()
        may_evict(master)
        where = f"the master 127.0.0.1:{redis_server.port} of the read-only Redis replica"
        eventually(lambda: where in status(server).not_serving_reason, "the master's policy")
        assert "allkeys-lru" in status(server).not_serving_reason
        never_allowed(server)
        evict_some(master)
        safe_again(master)
        eventually(lambda: "may have been evicted" in status(server).not_serving_reason, "said")
        time.sleep(TWO_READS_S)
        assert health(server) == "NOT_SERVING"
        assert where in status(server).not_serving_reason
        never_allowed(server)
        # flagged on the master, through the master: the copy holds it too
        eventually(
            lambda: EVICTED_FIELD in read_meta(copy, RedisKeys(), version), "the flag replicated"
        )
        late = serve(None, redis=read_only_copy.url, replica_id="ro-late")
        eventually(lambda: "may have been evicted" in status(late).not_serving_reason, "told")
    finally:
        master.close()
        copy.close()


def test_a_read_only_redis_is_current_while_its_link_is_up_and_behind_once_down(
    redis_server: RedisServer, read_only_copy: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    """The old code counted a read-only replica as lagging from start-up
    (shixin_replica_lag_seconds grew for every healthy one), and one whose master was
    gone as current: SERVING, lag 0, listed since got ALLOW NOT_LISTED unannounced."""
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=read_only_copy.url, replica_id="ro")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    follower = follower_of(server)
    eventually(lambda: follower.lag_seconds() == 0.0, "current: its link is up")
    time.sleep(TWO_READS_S)  # heartbeats refused meanwhile (read-only): still current
    assert follower.lag_seconds() == 0.0
    assert status(server).redis_write_refused  # it is read-only, as before
    assert not status(server).behind and list_current(server) == "SERVING"

    redis_server.stop()  # the copy's master is gone
    try:
        eventually(lambda: status(server).behind, "behind once the link is down long enough")
        answer = status(server)
        assert answer.rejected_source == f"the read-only Redis replica {read_only_copy.url}"
        assert f"link to its master 127.0.0.1:{redis_server.port}" in answer.rejected_problem
        found = re.search(r"has been down since (\S+Z)", answer.rejected_problem)
        assert found, answer.rejected_problem  # a time of today's, not of 1970
        down = _dt.datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
        assert abs((_dt.datetime.now(_dt.UTC) - down).total_seconds()) < 120, found.group(1)
        assert follower.lag_seconds() >= LINK_DOWN_SECONDS
        eventually(lambda: list_current(server) == "NOT_SERVING", f"{LIST_CURRENT} told")
        assert health(server) == "SERVING"  # what the copy holds still answers
        assert decision(server, ZHANG, "张伟").decision == pb.DENY
    finally:
        redis_server.start()
    eventually(lambda: not status(server).behind, "current again once the link is up")
    eventually(lambda: follower.lag_seconds() == 0.0, "lag 0 again")
    eventually(lambda: list_current(server) == "SERVING", f"{LIST_CURRENT} told")


def test_a_master_it_cannot_read_is_said_once_and_changes_nothing_else(
    redis_server: RedisServer, read_only_copy: RedisServer, serve: Serve, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The master's INFO refused (it wants a password this server does not have; the
    copy's link, authenticated before, stays up): one ERROR line says what cannot be
    seen, and the server serves from the copy as before, current."""
    caplog.set_level(logging.INFO)
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    with connect(redis_server.url, timeout=5) as master:
        master.acl_setuser("default", enabled=True, nopass=False, passwords=["+other-pw"])
    try:
        server = serve(None, redis=read_only_copy.url, replica_id="ro")
        eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "served")
        follower = follower_of(server)
        eventually(lambda: follower.lag_seconds() == 0.0, "current: the copy's link is up")
        said = f"cannot read INFO of 127.0.0.1:{redis_server.port}, the master of the"
        eventually(lambda: any(said in r.getMessage() for r in caplog.records), "said")
        time.sleep(TWO_READS_S)
        assert sum(said in r.getMessage() for r in caplog.records) == 1, caplog.text
        assert health(server) == "SERVING" and not status(server).behind
        assert follower.lag_seconds() == 0.0
    finally:
        with connect(redis_server.url.replace("//", "//:other-pw@"), timeout=5) as admin:
            admin.acl_setuser("default", enabled=True, nopass=True, reset_passwords=True)
