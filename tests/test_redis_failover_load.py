"""A load through Sentinel while a failover takes the master's replica away: never
reported done.

Real redis-servers and sentinels (``tests.conftest.RedisSentinels``) on free ports,
``shixin-check load`` as a child process. A failover starts with the sentinels
detaching the replica they promote (``REPLICAOF NO ONE``), and the master being
demoted then has no replica: a write it takes meanwhile is thrown away when it
becomes a replica of the new master. The tests put Redis in that state themselves
rather than racing the sentinels' timers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from shixin_check.domain.errors import IndexUnavailable
from shixin_check.loader.index_redis import RedisKeys, connect, read_meta
from shixin_check.loader.publish_redis import await_replica, sentinel_master
from tests.conftest import RedisSentinels
from tests.listdata import ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_replicas import load_cli
from tests.waiting import eventually

pytestmark = pytest.mark.redis


def data_client(setup: RedisSentinels, port: int) -> redis.Redis:
    return redis.Redis(port=port, password=setup.PASSWORD, socket_timeout=5)


def last_seq(setup: RedisSentinels, port: int) -> int:
    with data_client(setup, port) as c:
        current = c.get(RedisKeys().current)
        assert current is not None
        return int(read_meta(c, RedisKeys(), current.decode()).get("last_seq", b"0"))


def test_a_delta_written_to_a_master_whose_replica_left_is_not_reported_done(
    redis_sentinels: RedisSentinels, tmp_path: Path
) -> None:
    """The replica is detached, as a failover promoting it does first: the master has
    no connected replica (the old code skipped WAIT and exited 0), but the sentinels
    know of one that is up. The load exits 2 and says to load again."""
    setup = redis_sentinels
    url = setup.url
    assert load_cli(write_jsonl(tmp_path / "s.jsonl", basic_rows()), url).returncode == 0
    setup.wait_replicated()
    with data_client(setup, setup.replica_port) as c:
        c.replicaof("NO", "ONE")  # what SENTINEL FAILOVER does to the replica it promotes
    with data_client(setup, setup.master_port) as c:
        eventually(lambda: c.info("replication")["connected_slaves"] == 0, "replica detached")
    listing = write_jsonl(tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry(
        "E8", ZHAO, "赵六"))])  # fmt: skip
    done = load_cli(listing, url)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "no Redis replica acknowledged it" in done.stderr, done.stderr
    assert "load the file again" in done.stderr and "Traceback" not in done.stderr
    assert "applied" not in done.stdout  # never "1 op(s) applied"
    # the master took it, the replica (a new master, had the failover gone on) did not
    assert (last_seq(setup, setup.master_port), last_seq(setup, setup.replica_port)) == (1, 0)

    with data_client(setup, setup.replica_port) as c:  # the replica back: loading again is fine
        c.replicaof("127.0.0.1", str(setup.master_port))
    setup.wait_replicated()
    again = load_cli(listing, url)
    assert again.returncode == 0, again.stderr
    assert last_seq(setup, setup.replica_port) == 1


def test_a_failover_during_a_load_is_refused_at_its_end(
    redis_sentinels: RedisSentinels, tmp_path: Path
) -> None:
    """A replica acknowledges the write, but the sentinels no longer name the master the
    load began on: what it wrote there before the failover may be lost."""
    setup = redis_sentinels
    url = setup.url
    assert load_cli(write_jsonl(tmp_path / "s.jsonl", basic_rows()), url).returncode == 0
    setup.wait_replicated()
    client = connect(url, timeout=5)
    try:
        started_on = sentinel_master(client)
        assert started_on == ("127.0.0.1", setup.master_port)
        setup.hand_over()  # SENTINEL FAILOVER: the replica is promoted
        deadline = time.monotonic() + 60
        while not setup.promoted():
            assert time.monotonic() < deadline, "the sentinels never promoted the replica"
            time.sleep(0.05)
        with data_client(setup, setup.master_port) as old:  # now the new master's replica
            eventually(lambda: old.info("replication").get("master_link_status") == "up",
                       "the old master replicating the new one")  # fmt: skip
        with pytest.raises(IndexUnavailable) as refused:
            await_replica(client, RedisKeys(), "delta seq 1..1", started_on)
        said = str(refused.value)
        assert f"named 127.0.0.1:{setup.master_port} as master when the load began" in said, said
        assert f"127.0.0.1:{setup.replica_port} when it ended" in said, said
        assert "load the file again" in said
        await_replica(client, RedisKeys(), "delta seq 1..1", sentinel_master(client))  # no failover
    finally:
        client.close()
