"""Several replicas following one Redis, a loader process, and Redis failing.

Everything is real: redis-server on a free port, two servers on free ports
in Redis mode, ``shixin-check load`` as a child process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    RETIRED_GRACE_SECONDS,
    Client,
    RedisKeys,
    connect,
    redis_status,
    try_collect_garbage,
)
from shixin_check.loader.publish_redis import publish_delta
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.processes import ServeProcess, free_port, run_cli
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]


def load_cli(path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """``shixin-check load PATH --redis URL`` in a child process."""
    env = {**os.environ, "SHIXIN_KEY_SECRET": SECRET.decode()}
    return subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "load", str(path), "--redis", url],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def decision(server: RunningServer, number: str, name: str = "") -> pb.CheckResponse:
    request = build_request("AIRLINE", id_number=number, name=name)
    return server.stub().CheckConsumption(request, timeout=5)


def has_a_list(server: RunningServer) -> bool:
    return server.service.engine.source.current() is not None


@pytest.fixture
def replicas(redis_server: RedisServer, serve: Serve, tmp_path: Path) -> list[RunningServer]:
    """basic_rows() published by a loader process; two replicas serving it."""
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    servers = [serve(None, redis=redis_server.url, replica_id=f"r{i}") for i in (1, 2)]
    for server in servers:
        eventually(partial(has_a_list, server), "loading the list")
    return servers


def test_deltas_reach_every_replica(
    replicas: list[RunningServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    assert all(decision(r, ZHAO).decision == pb.ALLOW for r in replicas)
    client = connect(redis_server.url, timeout=5)
    listing = write_jsonl(
        tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六"))]
    )
    publish_delta(client, listing, SubjectKeyer(SECRET))
    eventually(lambda: all(decision(r, ZHAO).decision == pb.DENY for r in replicas), "LIST seen")
    delisting = write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E1")])
    publish_delta(client, delisting, SubjectKeyer(SECRET))
    eventually(
        lambda: all(decision(r, ZHANG).decision == pb.ALLOW for r in replicas), "DELIST seen"
    )
    for r in replicas:
        status = r.stub().GetListStatus(pb.ListStatusRequest())
        assert (status.index_backend, status.last_delta_seq) == ("redis", 2)
        assert status.index_reachable
    eventually(
        lambda: all(x["seq"] == 2 for x in redis_status(client)["replicas"]), "seq 2 reported"
    )
    assert {x["replica"] for x in redis_status(client)["replicas"]} == {"r1", "r2"}
    client.close()


def test_loader_process_delta_reaches_replicas(
    replicas: list[RunningServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d1.jsonl", [delta(1, "SUSPEND", entry_id="E2")])
    done = load_cli(path, redis_server.url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: all(decision(r, LI).decision == pb.ALLOW for r in replicas), "SUSPEND seen")
    answer = decision(replicas[0], LI)
    assert [x.code for x in answer.reasons] == ["LISTING_SUSPENDED"]


def test_corrupt_snapshot_reaches_no_replica(
    replicas: list[RunningServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    client, keys = connect(redis_server.url, timeout=5), RedisKeys()
    published = (client.get(keys.current), client.smembers(keys.versions))
    before = [r.stub().GetListStatus(pb.ListStatusRequest()).version for r in replicas]
    rows = [person_entry("E9", ZHAO, "赵六"), {"entry_id": "E10", "list_type": "SHIXIN"}]
    done = load_cli(write_jsonl(tmp_path / "bad.jsonl", rows), redis_server.url)
    assert done.returncode == 1
    assert "line 2: subject" in done.stderr
    # nothing was published, so there is nothing for a replica to follow
    assert (client.get(keys.current), client.smembers(keys.versions)) == published
    client.close()
    after = [r.stub().GetListStatus(pb.ListStatusRequest()).version for r in replicas]
    assert after == before
    assert all(decision(r, ZHANG).decision == pb.DENY for r in replicas)
    assert all(decision(r, ZHAO).decision == pb.ALLOW for r in replicas)


def test_redis_down_never_allows_silently_and_replicas_catch_up(
    replicas: list[RunningServer], redis_server: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    strict = serve(None, redis=redis_server.url, replica_id="strict",
                   policy=replicas[0].service.settings.policy.__class__(unavailable="DENY"))  # fmt: skip
    eventually(partial(has_a_list, strict), "loading the list")
    redis_server.stop()
    for r in replicas:
        listed = decision(r, ZHANG, "张伟")
        assert (listed.decision, [x.code for x in listed.reasons]) == (
            pb.REVIEW,
            ["INDEX_UNAVAILABLE"],
        )
        unlisted = decision(r, ZHAO)
        assert (unlisted.decision, [x.code for x in unlisted.reasons]) == (pb.ALLOW, ["NOT_LISTED"])
    assert decision(strict, ZHANG).decision == pb.DENY
    eventually(
        lambda: not replicas[0].stub().GetListStatus(pb.ListStatusRequest()).index_reachable,
        "Redis reported unreachable",
    )
    status = replicas[0].stub().GetListStatus(pb.ListStatusRequest())
    assert status.lag_deltas == -1

    redis_server.start()  # same data folder: the list is still there
    client = connect(redis_server.url, timeout=5)
    path = write_jsonl(
        tmp_path / "d1.jsonl", [delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六"))]
    )
    publish_delta(client, path, SubjectKeyer(SECRET))  # before the replicas are back
    client.close()
    eventually(lambda: all(decision(r, ZHAO).decision == pb.DENY for r in replicas), "catch-up")
    assert all(decision(r, ZHANG, "张伟").decision == pb.DENY for r in replicas)
    assert all(r.stub().GetListStatus(pb.ListStatusRequest()).lag_deltas == 0 for r in replicas)


def test_old_versions_go_once_no_replica_reads_them(
    replicas: list[RunningServer], redis_server: RedisServer, tmp_path: Path
) -> None:
    client = connect(redis_server.url, timeout=5)
    keys = RedisKeys()
    first = client.get(keys.current)
    assert first is not None
    time.sleep(1.1)  # versions are named to the second
    done = load_cli(
        write_jsonl(tmp_path / "s2.jsonl", [person_entry("E9", ZHAO, "赵六")]), redis_server.url
    )
    assert done.returncode == 0, done.stderr
    second = client.get(keys.current)
    eventually(lambda: all(decision(r, ZHAO).decision == pb.DENY for r in replicas), "new version")
    # kept RETIRED_GRACE_SECONDS once replaced (tests/test_redis_gc_clocks.py): as if they passed
    eventually(lambda: client.hexists(keys.meta(first.decode()), "retired_at"), "first retired")
    seconds, _ = client.time()  # as if the grace had passed, by Redis's clock
    client.hset(keys.meta(first.decode()), "retired_at", seconds - RETIRED_GRACE_SECONDS - 1)
    eventually(lambda: try_collect_garbage(client, keys, "gc test"), "a collection", step=0.1)
    eventually(lambda: client.smembers(keys.versions) == {second}, "old version gone", step=0.1)
    assert not list(client.scan_iter(match=keys.version_pattern(first.decode())))
    assert all(decision(r, ZHANG).decision == pb.ALLOW for r in replicas)
    client.close()


# --- a replica pointed at a read-only Redis replica ----------------------------------------


def _rewritten(client: Client) -> bool:
    persistence = client.info("persistence")
    return not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"])


@contextlib.contextmanager
def read_only_copy_of(master: RedisServer, folder: Path) -> Iterator[RedisServer]:
    """A second real redis-server in ``folder``, a replica (read-only) of ``master``, in sync."""
    copy = RedisServer(folder)
    copy.folder.mkdir()
    copy.start()
    try:
        with connect(master.url, timeout=5) as client:  # no 5 s wait for more replicas
            client.config_set("repl-diskless-sync-delay", 0)
        with connect(copy.url, timeout=5) as client:
            client.replicaof("127.0.0.1", master.port)
            eventually(lambda: client.info("replication")["master_link_status"] == "up",
                       "the copy in sync with its master")  # fmt: skip
            # the append-only file it rewrites after the sync: stopped during that,
            # redis-server 7.0 took longer than RedisServer.stop waits
            eventually(partial(_rewritten, client), "the copy's append-only file rewritten")
        yield copy
    finally:
        copy.stop()


@pytest.fixture
def read_only_copy(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A second real redis-server, a replica (read-only) of ``redis_server``, in sync."""
    with read_only_copy_of(redis_server, tmp_path / "copy") as copy:
        yield copy


def redis_errors(metrics: str) -> float:
    with urllib.request.urlopen(metrics, timeout=5) as reply:
        text = reply.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("shixin_redis_errors_total ")]
    return float(line.split()[1])


def test_a_read_only_redis_is_logged_once_then_counted_until_it_clears(
    redis_server: RedisServer, read_only_copy: RedisServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``serve --redis`` at a read-only Redis replica: the list is read and served from
    it, but this server cannot register; one ERROR line says so and what to do, not one
    every round; the failed writes are counted; one line when writing works again."""
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr  # acknowledged by the copy: it holds the load
    monkeypatch.setenv("SHIXIN_KEY_SECRET", SECRET.decode())
    monkeypatch.delenv("SHIXIN_REDIS_PASSWORD", raising=False)
    metrics = f"http://127.0.0.1:{free_port()}/metrics"
    server = ServeProcess("--redis", read_only_copy.url, "--metrics-listen",
                          metrics.split("/")[2], log=tmp_path / "serve.log")  # fmt: skip
    try:
        server.wait_serving()  # health as before: the list is in, checks are answered
        checked = run_cli("check", "--id", ZHANG, "--name", "张伟", "--channel", "AIRLINE",
                          "--target", server.target)  # fmt: skip
        assert checked.returncode == 0 and "DENY" in checked.stdout, checked.stdout
        time.sleep(4)  # the old code logged two lines a second here
        about = [x for x in server.output().splitlines() if "read only replica" in x]
        assert len(about) == 1, server.output()
        assert f"cannot write to {read_only_copy.url}: it is a read-only replica" in about[0]
        assert "point --redis at the master, or use Sentinel" in about[0], about[0]
        assert server.output().count("redis: connected") <= 1, server.output()
        assert "Traceback" not in server.output()
        errors = redis_errors(metrics)
        assert errors >= 3, errors  # one refused heartbeat a second, counted
        eventually(lambda: redis_errors(metrics) > errors, "counting on")
        status = run_cli("status", "--target", server.target)
        assert status.returncode == 0, status.stderr  # serving: the list is read as ever
        assert (f"WRITE REFUSED: cannot write to {read_only_copy.url}: it is a read-only replica"
                in status.stdout), status.stdout  # fmt: skip

        with connect(read_only_copy.url, timeout=5) as client:
            client.replicaof("NO", "ONE")  # promoted: it takes writes now
            eventually(lambda: "writing to Redis works again" in server.output(), "cleared")
            eventually(lambda: len(redis_status(client)["replicas"]) == 1, "registered")
        status = run_cli("status", "--target", server.target)
        assert status.returncode == 0 and "WRITE REFUSED" not in status.stdout, status.stdout
        assert server.output().count("read only replica") == 1, server.output()
    finally:
        assert server.stop() == 0, server.output()


def test_hits_against_a_read_only_redis_are_logged_once_spooled_then_forwarded(
    redis_server: RedisServer, read_only_copy: RedisServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``serve --redis`` at a read-only Redis replica with ``--hit-log``: the hit
    forwarder's refused writes are one ERROR line saying what to do (not one every
    try, each quoting the refused command with a check id), counted; the hits wait
    in the local log and reach the stream, with one line, once Redis takes writes."""
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("SHIXIN_KEY_SECRET", SECRET.decode())
    monkeypatch.delenv("SHIXIN_REDIS_PASSWORD", raising=False)
    metrics = f"http://127.0.0.1:{free_port()}/metrics"
    hits = tmp_path / "hits.jsonl"
    server = ServeProcess("--redis", read_only_copy.url, "--hit-log", str(hits),
                          "--metrics-listen", metrics.split("/")[2],
                          log=tmp_path / "serve.log")  # fmt: skip
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        answers = [stub.CheckConsumption(build_request("AIRLINE", id_number=ZHANG), timeout=5)
                   for _ in range(3)]  # fmt: skip
        channel.close()
        assert all(a.decision == pb.DENY for a in answers)
        check_ids = [a.check_id for a in answers]
        time.sleep(4)  # the old code logged a line every 0.4 to 2 s here
        about = [x for x in server.output().splitlines()
                 if "read only replica" in x and "cannot write to" not in x]  # fmt: skip
        assert len(about) == 1, server.output()  # the follower's heartbeat says its own
        assert (
            f"cannot forward hits to {read_only_copy.url}: it is a read-only replica" in (about[0])
        ), about[0]
        assert "point --redis at the master, or use Sentinel" in about[0], about[0]
        for check_id in check_ids:  # nor the command redis-py quotes with the error
            assert check_id not in server.output(), server.output()
        assert "EVALSHA" not in server.output(), server.output()
        assert redis_errors(metrics) >= 3  # the refused tries are counted
        with connect(read_only_copy.url, timeout=5) as client:
            assert client.xlen("shixin:hits") == 0
            assert [orjson.loads(x)["check_id"] for x in hits.read_bytes().splitlines()] == (
                check_ids
            )  # spooled in the local hit log

            client.replicaof("NO", "ONE")  # promoted: it takes writes now
            eventually(lambda: "forwarding hits works again" in server.output(), "cleared")
            eventually(lambda: client.xlen("shixin:hits") == len(check_ids), "forwarded")
            forwarded = [orjson.loads(fields[b"record"])["check_id"]
                         for _, fields in client.xrange("shixin:hits")]  # fmt: skip
        assert forwarded == check_ids
        assert server.output().count("cannot forward hits to") == 1, server.output()
        assert "Traceback" not in server.output()
    finally:
        assert server.stop() == 0, server.output()


def test_status_redis_marks_a_replica_that_stopped_beating_as_gone(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``status --redis`` lists a live replica with its lag, and one killed long ago
    as GONE (it was shown as current, ``behind 0 (seen 257.8s ago)``)."""
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("SHIXIN_KEY_SECRET", SECRET.decode())
    monkeypatch.delenv("SHIXIN_REDIS_PASSWORD", raising=False)
    server = ServeProcess("--redis", redis_server.url, log=tmp_path / "serve.log")
    with connect(redis_server.url, timeout=5) as client:
        try:
            server.wait_serving()
            eventually(lambda: len(redis_status(client)["replicas"]) == 1, "registered")
            live = run_cli("status", "--redis", redis_server.url)
            assert live.returncode == 0, live.stderr
            assert " behind 0 (seen " in live.stdout and "GONE" not in live.stdout, live.stdout
        finally:
            server.kill()
        # its last heartbeat as it stands a minute after the kill
        ((replica_id, raw),) = client.hgetall(RedisKeys().replicas).items()
        record = orjson.loads(raw)
        record["at"] -= 60
        client.hset(RedisKeys().replicas, replica_id, orjson.dumps(record))
    gone = run_cli("status", "--redis", redis_server.url)
    assert gone.returncode == 0, gone.stderr
    assert "GONE: not seen for 6" in gone.stdout and "behind 0" not in gone.stdout, gone.stdout
    as_json = orjson.loads(run_cli("status", "--redis", redis_server.url, "--json").stdout)
    assert [r["live"] for r in as_json["replicas"]] == [False]
