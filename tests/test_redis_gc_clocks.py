"""Garbage collection of Redis versions must never delete what a replica still reads.

Whether a replica is live is judged by Redis's clock, never a loader's or a
replica's own: a replica whose clock runs behind, or a loader whose clock runs
ahead, keeps nobody's version from it (a record of older code, stamped with its
replica's clock, counts as live until Redis's clock says it went silent). A
version is deleted meta first, so a replica still reading it answers by the fail
policy at every step, never "not listed". The version replaced by a load is kept
``RETIRED_GRACE_SECONDS``, so a replica that cannot register (``--redis`` naming
a read-only Redis replica) keeps a whole version until it switches.

Everything is real: redis-server on free loopback ports (and a read-only copy),
``shixin-check load`` as a child process (with its own clock where a test says
so), replicas in Redis mode. A machine's clock running off is
``index_redis.time`` shifted, in the process it runs in.
"""

from __future__ import annotations

import datetime
import os
import queue
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import index_redis
from shixin_check.loader.index_redis import (
    PASSWORD_ENV,
    Client,
    RedisKeys,
    delete_version,
    try_collect_garbage,
)
from shixin_check.loader.publish_redis import publish_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, person_entry, rid, write_jsonl
from tests.test_redis_failures import codes
from tests.test_redis_guards import OTHER_SECRET
from tests.test_redis_replicas import decision, read_only_copy_of
from tests.test_redis_seq import UNAVAILABLE, load, snapshot_with_header
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
DENIED = (pb.DENY, ["AIR_TRAVEL"])
#: how far a machine's clock runs off in these tests: twice what a heartbeat may age
SKEW_S = 30.0

#: ``shixin-check ARGS`` on a machine whose clock (as ``index_redis`` reads it) runs
#: ``argv[1]`` seconds off, with a grace of ``argv[2]`` seconds for replaced versions.
CHILD = """
import sys, time, types
from shixin_check.loader import index_redis
skew, grace = float(sys.argv[1]), float(sys.argv[2])
clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
clock.time = lambda: time.time() + skew
index_redis.time = clock
index_redis.RETIRED_GRACE_SECONDS = grace
from shixin_check.cli import main
sys.exit(main(sys.argv[3:]))
"""


def clock_off_by(seconds: float) -> types.SimpleNamespace:
    """The ``time`` module as a machine whose wall clock runs ``seconds`` off sees it."""
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if k[0] != "_"})
    clock.time = lambda: time.time() + seconds
    return clock


def load_on(
    path: Path, url: str, skew: float, grace: float, secret: bytes = SECRET, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``shixin-check load PATH --redis URL`` from a machine whose clock runs ``skew`` s off."""
    env = {**os.environ, "SHIXIN_KEY_SECRET": secret.decode()}
    env.pop(PASSWORD_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(skew), str(grace), "load", str(path), "--redis", url,
         *extra],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def redis_now(client: Client) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def version_keys(client: Client, version: str) -> set[bytes]:
    return set(client.scan_iter(match=RedisKeys().version_pattern(version), count=1000))


def past_the_grace(client: Client, *versions: str) -> None:
    """Stamp ``versions`` (each replaced, so stamped ``retired_at`` by a collection) as
    replaced over ``RETIRED_GRACE_SECONDS`` ago by Redis's clock: the next collection
    deletes them unless a live replica serves one."""
    keys, past = RedisKeys(), redis_now(client) - index_redis.RETIRED_GRACE_SECONDS - 1.0
    for version in versions:
        assert client.hget(keys.meta(version), "retired_at") is not None, version
        client.hset(keys.meta(version), "retired_at", repr(past))


def current(client: Client) -> str:
    raw = client.get(RedisKeys().current)
    assert raw is not None
    return str(raw.decode())


class Checking:
    """A thread asking a replica about ``number`` over and over: every answer, counted."""

    def __init__(self, server: RunningServer, number: str) -> None:
        self.answers: Counter[tuple[int, tuple[str, ...]]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, args=(server, number), daemon=True)
        self._thread.start()

    def _ask(self, server: RunningServer, number: str) -> None:
        while not self._stop.is_set():
            answer = decision(server, number)
            self.answers[answer.decision, tuple(r.code for r in answer.reasons)] += 1

    def stop(self) -> Counter[tuple[int, tuple[str, ...]]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.answers


# --- 1. liveness by Redis's clock -----------------------------------------------------


@pytest.mark.parametrize(
    ("replica_skew", "loader_skew"),
    [(-SKEW_S, 0.0), (0.0, SKEW_S)],
    ids=["replica-clock-behind", "loader-clock-ahead"],
)
def test_a_replica_keeps_its_version_through_loads_whatever_the_clocks(
    replica_skew: float, loader_skew: float, redis_server: RedisServer, client: Client,
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A replica staying on its version while loads go on (they are built with another key
    secret, which it refuses: it serves the one it has) keeps that version whole through
    several loads, with no grace at all, although its clock is 30 s behind the loader's
    (or the loader's 30 s ahead): it answers DENY throughout, never ALLOW NOT_LISTED or
    the fail policy. The versions nobody serves still go, at each load."""
    monkeypatch.setattr(index_redis, "time", clock_off_by(replica_skew))
    url, keys = redis_server.url, RedisKeys()
    first = load_on(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url, 0.0, 0.0)
    assert first.returncode == 0, first.stderr
    served = current(client)
    server = serve(None, redis=url, replica_id="r1")
    eventually(lambda: codes(decision(server, ZHANG)) == DENIED, "the list served")
    eventually(lambda: client.hget(keys.replicas, "r1") is not None, "r1 registered")
    whole = version_keys(client, served)
    checking = Checking(server, ZHANG)
    try:
        for n in range(2, 5):
            rows = [*basic_rows(), person_entry(f"E{n + 6}", ZHAO, "赵六")]
            path = snapshot_with_header(tmp_path / f"s{n}.jsonl", 0, rows)
            done = load_on(path, url, loader_skew, 0.0, OTHER_SECRET, "--new-key-secret")
            assert done.returncode == 0, done.stderr
            assert version_keys(client, served) == whole, f"load {n} deleted what r1 serves"
            assert client.smembers(keys.versions) == {served.encode(), current(client).encode()}
            assert codes(decision(server, ZHANG)) == DENIED
    finally:
        answers = checking.stop()
    assert set(answers) == {(pb.DENY, ("AIR_TRAVEL",))}, answers


def test_a_record_of_older_code_is_live_until_redis_time_says_it_went_silent(
    client: Client, keyer: SubjectKeyer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat written by older code carries its replica's own clock, here an hour
    and a minute behind Redis's: that alone never makes it dead (it was deleted, with
    the version it served). It counts as live while it keeps changing, and goes silent
    once it has not changed for LIVE_SECONDS (here 1 s) of Redis's time."""
    monkeypatch.setattr(index_redis, "RETIRED_GRACE_SECONDS", 0.0, raising=False)
    monkeypatch.setattr(index_redis, "LIVE_SECONDS", 1.0)
    keys = RedisKeys()
    v1 = publish_snapshot(client, snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()),
                          keyer)  # fmt: skip
    behind = redis_now(client) - 3660.0

    def beat(at: float) -> None:  # as older code wrote it: no "clock", its own time
        record = {"version": v1, "seq": 0, "token": "", "at": at, "pid": 1, "host": "old",
                  "problem": ""}  # fmt: skip
        client.hset(keys.replicas, "old", orjson.dumps(record))

    beat(behind)
    rows = [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    v2 = publish_snapshot(client, snapshot_with_header(tmp_path / "s2.jsonl", 0, rows), keyer)
    assert client.sismember(keys.versions, v1), "a clock an hour off was taken for silence"
    time.sleep(1.2)
    beat(behind + 1.0)  # it beat again, its clock still an hour off
    assert try_collect_garbage(client, keys, "gc test")
    assert client.sismember(keys.versions, v1), "a replica that beats was taken for dead"
    time.sleep(1.2)  # no beat for over LIVE_SECONDS of Redis's time: silent
    assert try_collect_garbage(client, keys, "gc test")
    assert client.smembers(keys.versions) == {v2.encode()}
    assert version_keys(client, v1) == set()


# --- 2. a version is deleted meta first -------------------------------------------------


class Stepping(redis.Redis):
    """A real client that stops before each command deleting keys until the test lets it
    go on: the test sees every state a collection passes through (a collector that dies,
    or loses Redis, at that point leaves Redis in it)."""

    def __init__(self, url: str) -> None:
        super().__init__(connection_pool=redis.ConnectionPool.from_url(url))
        #: each deleting command, before it is sent (None: the collection returned)
        self.deleting: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.go = threading.Semaphore(0)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] in ("DEL", "UNLINK"):
            self.deleting.put(args)
            self.go.acquire()
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def people(n: int) -> list[str]:
    """``n`` resident IDs, born on consecutive days from 1970-01-01."""
    born = datetime.date(1970, 1, 1)
    return [rid(f"330102{born + datetime.timedelta(days=i):%Y%m%d}00{i % 10}") for i in range(n)]


def test_a_version_deleted_under_a_replica_is_never_read_as_not_listed(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, serve: Serve,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The version a replica serves, deleted under it (as a collection that took the
    replica for dead did), in batches of 4 keys: the meta goes first, alone, and at
    every state after it (the buckets partly gone, then all) every listed person gets
    REVIEW INDEX_UNAVAILABLE, never ALLOW NOT_LISTED."""
    monkeypatch.setattr(index_redis, "DELETE_BATCH", 4, raising=False)
    keys, listed = RedisKeys(), people(300)
    rows = [person_entry(f"P{i}", number, "某某") for i, number in enumerate(listed)]
    version = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", rows), keyer)
    buckets = {k for k in version_keys(client, version) if b":s:" in k}
    assert len(buckets) >= 8  # several batches of them
    server = serve(None, redis=redis_server.url, replica_id="r1")
    batch = pb.CheckBatchRequest(checks=[build_request("AIRLINE", id_number=n) for n in listed])

    def answers() -> set[tuple[int, tuple[str, ...]]]:
        reply = server.stub().CheckConsumptionBatch(batch, timeout=10)
        return {(a.decision, tuple(r.code for r in a.reasons)) for a in reply.results}

    eventually(lambda: answers() == {(pb.DENY, ("AIR_TRAVEL",))}, "the list served")
    collector = Stepping(redis_server.url)

    def collect() -> None:
        try:
            delete_version(collector, keys, version)
        finally:
            collector.deleting.put(None)

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    seen: list[tuple[int, set[tuple[int, tuple[str, ...]]]]] = []
    try:
        assert collector.deleting.get(timeout=10) == ("DEL", keys.meta(version))
        collector.go.release()
        while collector.deleting.get(timeout=10) is not None:
            left = len(buckets & version_keys(client, version))
            seen.append((left, answers()))  # the state the commands so far left
            collector.go.release()
        seen.append((len(buckets & version_keys(client, version)), answers()))
    finally:
        for _ in range(1000):
            collector.go.release()
        thread.join(timeout=10)
        collector.connection_pool.disconnect()
    unavailable = {(UNAVAILABLE[0], tuple(UNAVAILABLE[1]))}
    assert all(said == unavailable for _, said in seen), seen
    assert any(0 < left < len(buckets) for left, _ in seen), "never partly deleted"
    assert seen[-1][0] == 0 and not client.sismember(keys.versions, version)


# --- 3. the version replaced is kept for a grace ------------------------------------------


@pytest.fixture
def read_only_copy(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    with read_only_copy_of(redis_server, tmp_path / "copy") as copy:
        yield copy


def test_the_version_replaced_is_kept_for_the_grace_whoever_registered(
    redis_server: RedisServer, read_only_copy: RedisServer, client: Client, serve: Serve,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A replica reading a read-only Redis replica cannot register, so no heartbeat
    protects what it serves: the versions replaced by loads stay whole for
    RETIRED_GRACE_SECONDS of Redis's time all the same (two loads within it keep both),
    and the first collection after the grace deletes them."""
    url, keys = redis_server.url, RedisKeys()
    assert load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url).returncode == 0
    v1 = current(client)
    server = serve(None, redis=read_only_copy.url, replica_id="ro")
    eventually(lambda: codes(decision(server, ZHANG)) == DENIED, "the list served")
    assert client.hget(keys.replicas, "ro") is None  # it cannot register
    whole = version_keys(client, v1)
    checking = Checking(server, ZHANG)
    try:
        rows = [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
        assert load(snapshot_with_header(tmp_path / "s2.jsonl", 0, rows), url).returncode == 0
        v2 = current(client)
        eventually(lambda: codes(decision(server, ZHAO)) == DENIED, "the replica switched")
        s3 = snapshot_with_header(tmp_path / "s3.jsonl", 0, basic_rows())
        assert load(s3, url).returncode == 0
        v3 = current(client)
        eventually(lambda: codes(decision(server, ZHAO))[0] == pb.ALLOW, "switched again")
    finally:
        answers = checking.stop()
    assert set(answers) == {(pb.DENY, ("AIR_TRAVEL",))}, answers
    assert version_keys(client, v1) == whole, "the version replaced was deleted at once"
    assert client.smembers(keys.versions) == {v.encode() for v in (v1, v2, v3)}

    past_the_grace(client, v1, v2)
    assert try_collect_garbage(client, keys, "gc test")
    assert client.smembers(keys.versions) == {v3.encode()}
    assert version_keys(client, v1) == version_keys(client, v2) == set()


def test_a_replica_deletes_the_version_it_left_once_the_grace_is_over(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, serve: Serve,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The version a load replaced is kept for the grace (here 3 s), then deleted by a
    replica's own collection, without waiting for another load: Redis holds one version
    again between loads."""
    monkeypatch.setattr(index_redis, "RETIRED_GRACE_SECONDS", 3.0, raising=False)
    monkeypatch.setattr(index_redis, "LIVE_SECONDS", 2.0)
    keys = RedisKeys()
    v1 = publish_snapshot(client, snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()),
                          keyer)  # fmt: skip
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: codes(decision(server, ZHANG)) == DENIED, "the list served")
    rows = [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    v2 = publish_snapshot(client, snapshot_with_header(tmp_path / "s2.jsonl", 0, rows), keyer)
    eventually(lambda: codes(decision(server, ZHAO)) == DENIED, "the replica switched")
    time.sleep(1.0)  # the replica's collection right after it switched has run
    assert client.sismember(keys.versions, v1), "deleted within the grace"
    eventually(lambda: client.smembers(keys.versions) == {v2.encode()}, "deleted after it")
    assert version_keys(client, v1) == set()
