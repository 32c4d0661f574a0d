"""Redis high availability: the list in a Sentinel-watched Redis, and a failover.

Everything is real: a master, its replica and three sentinels
(``tests.conftest.RedisSentinels``), ``shixin-check load`` as a child process
and a server in Redis mode, both through the ``redis+sentinel://`` URL, the
servers' password in ``SHIXIN_REDIS_PASSWORD``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    PASSWORD_ENV,
    SENTINEL_FORM,
    Client,
    RedisFollower,
    SentinelURL,
    connect,
    redis_status,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from shixin_check.server.hitlog import log_files
from shixin_check.server.hitsink import hits_stream, read_stream
from tests.conftest import RedisSentinels, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_replicas import Serve, decision, has_a_list, load_cli
from tests.waiting import eventually

pytestmark = pytest.mark.redis

#: Only so a broken build fails instead of hanging: sentinels told to call a
#: master down after 1 s promote its replica in a few seconds.
FAILOVER_WAIT_S = 30.0


def codes(answer: pb.CheckResponse) -> tuple[int, list[str]]:
    return answer.decision, [r.code for r in answer.reasons]


def status(server: RunningServer) -> pb.ListStatus:
    reply: pb.ListStatus = server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)
    return reply


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis+sentinel://10.0.0.5:26379/shixin", ((("10.0.0.5", 26379),), "shixin", 0)),
        ("redis+sentinel://a:1,b.example:2,[::1]:3/list-1/2",
         ((("a", 1), ("b.example", 2), ("::1", 3)), "list-1", 2)),
    ],
)  # fmt: skip
def test_sentinel_urls(url: str, parsed: tuple[object, ...]) -> None:
    where = SentinelURL.parse(url)
    assert (where.sentinels, where.service, where.db) == parsed


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.5/shixin",  # no port
        "redis+sentinel://10.0.0.5:26379",  # no service
        "redis+sentinel://10.0.0.5:26379/",
        "redis+sentinel://10.0.0.5:26379,/shixin",
        "redis+sentinel://10.0.0.5:0/shixin",
        "redis+sentinel://10.0.0.5:65536/shixin",
        "redis+sentinel://10.0.0.5:26379/shixin/zero",
        "redis+sentinel://10.0.0.5:26379/shixin/0/",
        "redis+sentinel://10.0.0.5:26379/shixin?db=0",
        "redis+sentinel://:hunter2@10.0.0.5:26379/shixin",  # the password is the variable's
        "sentinel://10.0.0.5:26379/shixin",
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_form(url: str) -> None:
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://HOST:PORT") as refused:
        connect(url)
    assert "hunter2" not in str(refused.value)


def test_a_bad_redis_url_is_one_line_from_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "status", "--redis", "redis+sentinel://h/shixin"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and SENTINEL_FORM in done.stderr, done.stderr


def test_the_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    for url, password in [("redis://127.0.0.1:1/0", "from-env"),
                          ("redis://:in-url@127.0.0.1:1/0", "in-url")]:  # fmt: skip
        client = connect(url)
        assert client.connection_pool.connection_kwargs["password"] == password
        client.close()
    client = connect("redis+sentinel://127.0.0.1:1/shixin")
    assert client.connection_pool.connection_kwargs["password"] == "from-env"
    assert all(
        s.connection_pool.connection_kwargs.get("password") is None
        for s in client.connection_pool.sentinel_manager.sentinels
    )  # the sentinels' own connections carry none
    client.close()


@pytest.mark.parametrize("failover", ["master_dies", "planned"])
def test_a_replica_rides_a_sentinel_failover(
    failover: str, redis_sentinels: RedisSentinels, serve: Serve, tmp_path: Path
) -> None:
    url = redis_sentinels.url
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), url)
    assert done.returncode == 0, done.stderr
    replica = serve(None, redis=url, replica_id="r1")
    eventually(partial(has_a_list, replica), "loading the list")
    assert decision(replica, ZHANG, "张伟").decision == pb.DENY
    redis_sentinels.wait_replicated()

    if failover == "master_dies":
        redis_sentinels.stop_master()
    else:  # the old master lives on as a replica: the follower must leave it for the new one
        redis_sentinels.hand_over()
    answers, problems = set(), set()
    deadline = time.monotonic() + FAILOVER_WAIT_S
    while not redis_sentinels.promoted():
        assert time.monotonic() < deadline, "the sentinels never promoted the replica"
        listed = codes(decision(replica, ZHANG, "张伟"))
        assert listed[0] != pb.ALLOW, listed  # never a silent ALLOW for a listed subject
        answers.add((listed[0], tuple(listed[1])))
        # a failover is Redis unreachable, not lost data: Bloom negatives still answered
        assert codes(decision(replica, ZHAO)) == (pb.ALLOW, ["NOT_LISTED"])
        problems.add(replica.service.health_problem())  # what health reports
        time.sleep(0.05)
    if failover == "master_dies":
        assert (pb.REVIEW, ("INDEX_UNAVAILABLE",)) in answers, answers
    assert problems == {""}, problems

    # a delta loaded through the new master reaches the replica
    path = write_jsonl(
        tmp_path / "d1.jsonl",
        [
            delta(1, "DELIST", entry_id="E1"),
            delta(2, "LIST", entry=person_entry("E8", ZHAO, "赵六")),
        ],
    )
    done = load_cli(path, url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: decision(replica, ZHAO).decision == pb.DENY, "the LIST after the failover")
    assert codes(decision(replica, ZHANG, "张伟")) == (pb.ALLOW, ["NOT_LISTED"])
    after = status(replica)
    assert (after.last_delta_seq, after.lag_deltas) == (2, 0)
    assert after.index_reachable and after.not_serving_reason == ""
    # its heartbeat reaches the new master too: it writes there, not to the old one
    client = connect(url, timeout=5)
    try:
        eventually(lambda: [r["seq"] for r in redis_status(client)["replicas"]] == [2], "heartbeat")
    finally:
        client.close()


class CutOnce:
    """A client whose connection drops on the first ``hgetall``: a failover that
    strikes between two reads of one round."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.cut = False

    def hgetall(self, *args: Any) -> Any:
        if not self.cut:
            self.cut = True
            raise redis.ConnectionError("connection lost mid-round")
        return self._client.hgetall(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_connection_lost_mid_round_leaves_the_round_to_be_redone(
    redis_server: RedisServer, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """The stream cursor moves past deltas only once the view holds them."""
    client = connect(redis_server.url, timeout=5)
    follower = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    try:
        publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
        follower.sync_once()
        listing = [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六"))]
        publish_delta(client, write_jsonl(tmp_path / "d1.jsonl", listing), keyer)
        follower.client = CutOnce(follower.client)
        with pytest.raises(redis.ConnectionError):
            follower.sync_once()  # read the delta, lost the connection reading the meta
        follower.sync_once()
        view = follower.current()
        assert view is not None and view.info.last_delta_seq == 1
        assert follower.lag() == 0
    finally:
        follower.stop()
        client.close()


def test_a_load_no_replica_acknowledged_is_not_reported_done(
    redis_sentinels: RedisSentinels, tmp_path: Path
) -> None:
    """A planned failover drops what the old master's replicas never got: so a load
    succeeds only once a replica holds it, and says so when none did."""
    url = redis_sentinels.url
    assert load_cli(write_jsonl(tmp_path / "s.jsonl", basic_rows()), url).returncode == 0
    replica = redis_sentinels.procs["replica"]
    change = write_jsonl(tmp_path / "d.jsonl", [delta(1, "DELIST", entry_id="E1")])
    replica.send_signal(signal.SIGSTOP)  # connected, but acknowledging nothing
    try:
        stalled = load_cli(change, url)
    finally:
        replica.send_signal(signal.SIGCONT)
    assert stalled.returncode == 2
    assert "no Redis replica acknowledged" in stalled.stderr and "Traceback" not in stalled.stderr
    again = load_cli(change, url)  # replaying is harmless: the seq is already applied
    assert again.returncode == 0, again.stderr


def _hit_ids(path: Path) -> list[str]:
    """The check ids of the hit records in the files of the hit log at ``path``."""
    lines = (raw for f in log_files(path) for raw in f.read_bytes().splitlines())
    return [r["check_id"] for r in map(orjson.loads, lines) if "check_id" in r]


def test_hits_forwarded_across_a_planned_failover_all_reach_the_new_master(
    redis_sentinels: RedisSentinels, serve: Serve, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """SENTINEL FAILOVER while listed checks run: the old master takes hits until it is
    demoted, then drops them; the forwarder finds the new master and sends the last
    seconds again, so every hit in the files is in the stream, once."""
    caplog.set_level(logging.INFO, logger="shixin.server")
    url = redis_sentinels.url
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), url)
    assert done.returncode == 0, done.stderr
    hits = tmp_path / "hits.log"
    replica = serve(None, redis=url, replica_id="r1", hit_log=hits)
    eventually(partial(has_a_list, replica), "loading the list")
    redis_sentinels.wait_replicated()
    stop = threading.Event()

    def check_listed() -> None:
        while not stop.is_set():
            try:
                decision(replica, ZHANG, "张伟")
            except grpc.RpcError:
                pass
            time.sleep(0.005)

    checker = threading.Thread(target=check_listed, daemon=True)
    checker.start()
    try:
        eventually(lambda: len(_hit_ids(hits)) >= 20, "hits before the failover")
        redis_sentinels.hand_over()
        deadline = time.monotonic() + FAILOVER_WAIT_S
        while not redis_sentinels.promoted():
            assert time.monotonic() < deadline, "the sentinels never promoted the replica"
            time.sleep(0.05)
        time.sleep(2.0)  # hits to the new master too, and the old one demoted meanwhile
    finally:
        stop.set()
        checker.join(timeout=10)
    logged = _hit_ids(hits)
    assert len(logged) == len(set(logged)) > 20
    client = connect(url, timeout=5)
    try:

        def every_hit_once() -> bool:
            streamed = [r["check_id"] for r in read_stream(client) if "check_id" in r]
            return sorted(streamed) == sorted(logged)

        eventually(every_hit_once, "every hit of the files in the new master's stream, once")
        assert client.xlen(hits_stream("shixin")) == len(logged)
    finally:
        client.close()
    [line] = [r.getMessage() for r in caplog.records if "were sent again" in r.getMessage()]
    assert "the Redis master changed" in line and "re-read" in line, line
