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
import pytest
import redis

from server.app import Service
from server.settings import ServeSettings
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_domain.keys import SubjectKeyer
from shixin_domain.rules import Policy

SECRET = b"tests-only-secret-0123456789abcdef"


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With SHIXIN_REQUIRE_REDIS=1 (CI), a skipped Redis-backed test is a failure."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and "redis" in item.keywords
        and os.environ.get("SHIXIN_REQUIRE_REDIS") == "1"
    ):
        report.outcome = "failed"
        report.longrepr = f"Redis-backed test skipped but SHIXIN_REQUIRE_REDIS=1: {report.longrepr}"


class RedisServer:
    """A real redis-server of our own on a free loopback port, in a temporary folder.

    Append-only file on, so ``stop()`` then ``start()`` keeps the data, as a
    restarted production Redis would.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
             "--protected-mode", "no"],
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
