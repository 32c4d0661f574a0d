"""Shared fixtures: a keyer, and real servers on free loopback ports.

``serve`` starts the real service (``server.app.Service``: grpc.aio server,
health, reflection, loader) in a background thread on 127.0.0.1:0 and gives
back a handle with its address and a real channel. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import orjson
import pytest
import redis

from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.rules import Policy
from shixin_check.loader.index_redis import Client, RedisFollower, connect
from shixin_check.server.app import Service
from shixin_check.server.hitlog import log_files
from shixin_check.server.settings import ServeSettings

SECRET = b"tests-only-secret-0123456789abcdef"

#: Fixtures shared by the access-control tests (``keys``, ``guarded``).
pytest_plugins = ("tests.accessdata",)


def log_records(path: Path) -> list[dict[str, object]]:
    """Every record of the hit or audit log set at ``path``, rotated files too: a test
    running across midnight in China (16:00 UTC) sees the live file renamed under it."""
    return [orjson.loads(line) for f in log_files(path) for line in f.read_bytes().splitlines()]


@pytest.fixture
def keyer() -> SubjectKeyer:
    return SubjectKeyer(SECRET)


def settings_for(list_path: Path | None, **changes: object) -> ServeSettings:
    base = ServeSettings(
        listen="127.0.0.1:0",
        list_path=list_path,
        demo=False,
        secret=SECRET,
        secret_source="tests",
        policy=Policy(),
        hit_log=None,
        audit_log=None,
        grace_seconds=1.0,
        poll_interval=0.05,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class RunningServer:
    """A real server in a background thread, and a channel to it."""

    service: Service
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel = field(init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    def stub(self) -> pb_grpc.ConsumptionCheckStub:
        return pb_grpc.ConsumptionCheckStub(self.channel)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.service.request_stop)
        self.thread.join(timeout=10)
        self.channel.close()


def start_server(settings: ServeSettings) -> RunningServer:
    service = Service(settings, announce=lambda _line: None)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(service.run(on_ready=lambda _s: ready.set()))
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    if errors:
        raise errors[0]
    handle = RunningServer(service, thread, loop)
    handle.channel = grpc.insecure_channel(handle.address)
    return handle


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """``serve(list_path, **settings)`` starts a server; all are stopped after the test."""
    started: list[RunningServer] = []

    def _serve(list_path: Path | None, **changes: object) -> RunningServer:
        handle = start_server(settings_for(list_path, **changes))
        started.append(handle)
        return handle

    yield _serve
    for handle in started:
        handle.stop()


#: the fixtures that start a redis-server of their own, and skip without one
REDIS_FIXTURES = frozenset({"redis_server", "redis_sentinels"})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With SHIXIN_REQUIRE_REDIS=1 (CI), a skipped Redis-backed test is a failure: one
    marked ``redis``, or one using a redis-server fixture (directly or through another
    fixture: a test whose helper carried the mark and it not was skipped unseen)."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and ("redis" in item.keywords or REDIS_FIXTURES & set(getattr(item, "fixturenames", ())))
        and os.environ.get("SHIXIN_REQUIRE_REDIS") == "1"
    ):
        report.outcome = "failed"
        report.longrepr = f"Redis-backed test skipped but SHIXIN_REQUIRE_REDIS=1: {report.longrepr}"


class RedisServer:
    """A real redis-server of our own on a free loopback port, in a temporary folder.

    Append-only file on, so ``stop()`` then ``start()`` keeps the data, as a
    restarted production Redis would (``append_only=False``: only what a ``SAVE``
    wrote to its RDB file survives).
    """

    def __init__(self, folder: Path, append_only: bool = True) -> None:
        self.folder = folder
        self.port = _free_port()
        self.append_only = append_only
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.append_only else "no", "--appendfsync", "always",
             "--dir", str(self.folder), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test (skipped, and failed in CI, without one)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Client]:
    """A plain client of the test's own Redis (``redis_server``)."""
    handle = connect(redis_server.url, timeout=5)
    yield handle
    handle.close()


@pytest.fixture
def follower(redis_server: RedisServer, keyer: SubjectKeyer) -> Iterator[RedisFollower]:
    """A follower of the test's own Redis, driven by hand (``sync_once``) unless a test
    starts its thread."""
    handle = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    yield handle
    handle.stop()


class RedisSentinels:
    """A Redis master, one replica and three sentinels watching them: Redis HA of our own.

    All real redis-servers on free loopback ports, each in its own folder under
    ``folder``, with the password ``PASSWORD`` on both data servers (what
    ``SHIXIN_REDIS_PASSWORD`` must hold). ``url`` names the service through
    the sentinels. The sentinels call the master down after 1 s, so stopping
    it (``stop_master``) has the replica promoted within seconds.
    """

    SERVICE = "shixin-test"
    PASSWORD = "tests-only-redis-password"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.master_port = _free_port()
        self.replica_port = _free_port()
        self.sentinel_ports = [_free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{self.SERVICE}/0"

    def start(self) -> None:
        self._start_server("master", self.master_port)
        self._start_server("replica", self.replica_port,
                           "--replicaof", "127.0.0.1", str(self.master_port))  # fmt: skip
        self._wait(  # a load waits for a replica's acknowledgement: it must be in sync
            lambda: self._replication(self.replica_port).get("master_link_status") == "up",
            "the replica to sync with the master",
        )
        for i, port in enumerate(self.sentinel_ports):
            folder = self._folder(f"sentinel-{i}")
            conf = folder / "sentinel.conf"  # a sentinel rewrites its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel auth-pass {self.SERVICE} {self.PASSWORD}\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
            self._spawn(f"sentinel-{i}", port, None, str(conf), "--sentinel")
        self._wait(self._all_watching, "sentinels that see the replica and each other")

    def _folder(self, name: str) -> Path:
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _start_server(self, name: str, port: int, *extra: str) -> None:
        self._spawn(name, port, self.PASSWORD,
                    "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self._folder(name)),
                    "--requirepass", self.PASSWORD, "--masterauth", self.PASSWORD, *extra)  # fmt: skip

    def _spawn(self, name: str, port: int, password: str | None, *args: str) -> None:
        self.procs[name] = subprocess.Popen(
            ["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def answers() -> bool:
            with self._client(port, password) as client:
                return bool(client.ping())

        self._wait(answers, f"{name} to answer")

    def _client(self, port: int, password: str | None) -> redis.Redis:
        return redis.Redis(port=port, password=password, socket_timeout=2,
                           socket_connect_timeout=0.2)  # fmt: skip

    def _wait(self, done: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, f"waited {seconds:g}s for {what}"
            time.sleep(0.05)

    def _sentinel_says(self, port: int) -> dict[str, str]:
        """What the sentinel on ``port`` knows of the service's master."""
        with self._client(port, None) as client:
            state = client.sentinel_master(self.SERVICE)
        assert isinstance(state, dict), state
        return {str(k): str(v) for k, v in state.items()}

    def _replication(self, port: int) -> dict[str, str]:
        with self._client(port, self.PASSWORD) as client:
            info = client.info("replication")
        assert isinstance(info, dict), info
        return {str(k): str(v) for k, v in info.items()}

    def _all_watching(self) -> bool:
        states = [self._sentinel_says(port) for port in self.sentinel_ports]
        return all(s["num-slaves"] == "1" and s["num-other-sentinels"] == "2" for s in states)

    def wait_replicated(self) -> None:
        """Until the replica holds every write the master has taken."""
        written = int(self._replication(self.master_port)["master_repl_offset"])

        def caught_up() -> bool:
            info = self._replication(self.replica_port)
            return info["master_link_status"] == "up" and int(info["slave_repl_offset"]) >= written

        self._wait(caught_up, "the replica to catch up")

    def stop_master(self) -> None:
        """The master dies: the sentinels call it down, then promote the replica."""
        self._stop("master")

    def hand_over(self) -> None:
        """A planned failover (SENTINEL FAILOVER): the replica is promoted and the
        master, alive, becomes its replica."""
        with self._client(self.sentinel_ports[0], None) as client:
            client.sentinel_failover(self.SERVICE)

    def promoted(self) -> bool:
        """Every sentinel names the replica as the master, and it says it is one."""
        try:
            ports = {self._sentinel_says(port)["port"] for port in self.sentinel_ports}
            role = self._replication(self.replica_port)["role"]
        except redis.RedisError:
            return False
        return ports == {str(self.replica_port)} and role == "master"

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self._stop(name)


@pytest.fixture
def redis_sentinels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisSentinels]:
    """A fresh Sentinel setup for one test, its password in SHIXIN_REDIS_PASSWORD
    (so in-process servers and ``shixin-check`` children both use it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    setup = RedisSentinels(tmp_path / "sentinel")
    monkeypatch.setenv("SHIXIN_REDIS_PASSWORD", setup.PASSWORD)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()
