"""Shared fixtures: a keyer, and real servers on free loopback ports.

``serve`` starts the real service (``server.app.Service``: grpc.aio server,
health, reflection, loader) in a background thread on 127.0.0.1:0 and gives
back a handle with its address and a real channel. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

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
    if report.skipped and "redis" in item.keywords and os.environ.get("SHIXIN_REQUIRE_REDIS") == "1":
        report.outcome = "failed"
        report.longrepr = f"Redis-backed test skipped but SHIXIN_REQUIRE_REDIS=1: {report.longrepr}"
