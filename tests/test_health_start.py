"""What a single ``serve`` says of its health at start, and what SIGHUP does to it.

Real ``shixin-check serve`` child processes on loopback; a real redis-server
(``tests.conftest.redis_server``) and the real ``load`` command for Redis mode.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from tests.conftest import SECRET, RedisServer
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.test_redis_replicas import load_cli
from tests.waiting import eventually


def listed_decision(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ConsumptionCheckStub(channel)
        request = build_request("AIRLINE", id_number=ZHANG, name="张伟")
        return int(stub.CheckConsumption(request, timeout=10).decision)


def test_sighup_without_a_keys_file_is_one_line_and_the_server_goes_on(tmp_path: Path) -> None:
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    server = ServeProcess("--list", str(listing), log=tmp_path / "serve.log")
    try:
        server.wait_serving()
        server.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "SIGHUP: nothing to reload (no --keys-file)" in server.output(),
                   "the SIGHUP line")  # fmt: skip
        assert server.proc.poll() is None, server.output()  # SIGHUP's default: exit 129
        server.wait_serving(timeout=5)
        assert listed_decision(server.target) == pb.DENY
        assert server.output().count("SIGHUP") == 1
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert "stopped: in-flight calls done" in server.output()


def test_a_server_waiting_for_its_first_snapshot_says_so_once(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    server = ServeProcess("--list", str(feed), log=tmp_path / "serve.log")
    try:
        waiting = f"health: NOT_SERVING: no list yet: waiting for a snapshot in {feed}"
        eventually(lambda: waiting in server.output(), "the NOT_SERVING line at start")
        header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
        write_jsonl(feed / "snapshot-0001.jsonl", [header, *basic_rows()])
        server.wait_serving()
        eventually(lambda: "health: SERVING" in server.output(), "the SERVING line")
        assert server.output().count("health: NOT_SERVING") == 1, server.output()
    finally:
        server.stop()


@pytest.mark.redis
def test_a_replica_of_an_empty_redis_says_once_what_to_load(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIXIN_KEY_SECRET", SECRET.decode())
    server = ServeProcess("--redis", redis_server.url, log=tmp_path / "serve.log")
    try:
        eventually(lambda: "health: NOT_SERVING: nothing loaded in Redis yet" in server.output(),
                   "the NOT_SERVING line at start")  # fmt: skip
        assert f"shixin-check load --redis {redis_server.url}" in server.output()
        done = load_cli(write_jsonl(tmp_path / "s.jsonl", basic_rows()), redis_server.url)
        assert done.returncode == 0, done.stderr
        server.wait_serving()
        eventually(lambda: "health: SERVING" in server.output(), "the SERVING line")
        assert server.output().count("health: NOT_SERVING") == 1, server.output()
    finally:
        server.stop()
