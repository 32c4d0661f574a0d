"""A gateway's local answers are stale when the server's are (PrefilterHeader.stale_since).

A real server on a free port serving a list folder whose snapshot header gives
the feed's time, with ``max_list_age``; real blocking and asyncio clients with
``prefilter=True`` and a local audit file. The filter's own trust clock is a
frozen ``Clock`` (it never ages out here); staleness is the wall clock's, so the
test that waits for a list to turn stale waits for the time the header names,
never for a duration of its own.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.errors import CheckError
from shixin_check.clients.prefilter import HASH_SCHEME, KEY_SCHEME, Download
from shixin_check.server.convert import LOOKUP_RULES
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import ZHANG, ZHAO, rid
from tests.test_client_offline import Clock
from tests.test_staleness import rfc3339, snapshot
from tests.waiting import WAIT_S, eventually

HOUR = 3600.0
#: Long enough that the client never refreshes on its own during a test.
FILTER_MAX_AGE = 600.0
#: Never listed (ZHAO is the other).
SUN = rid("32010219700303005")
KINDS = ("blocking", "asyncio")


class Gateway:
    """A prefiltering client of either kind, called the same way: the asyncio one on
    a loop of its own, run until each call is answered."""

    def __init__(self, kind: str, address: str, audit_path: Path) -> None:
        options: dict[str, Any] = {
            "prefilter": True,
            "prefilter_max_age": FILTER_MAX_AGE,
            "local_audit_path": audit_path,
            "clock": Clock(),
        }
        self.loop: asyncio.AbstractEventLoop | None = None
        self.blocking: CheckClient | None = None
        self.aio: AsyncCheckClient | None = None
        if kind == "blocking":
            self.blocking = CheckClient(address, **options)
        else:
            self.loop = asyncio.new_event_loop()

            async def start() -> AsyncCheckClient:
                client = AsyncCheckClient(address, **options)
                await client.start()
                return client

            self.aio = self.loop.run_until_complete(start())

    @property
    def client(self) -> CheckClient | AsyncCheckClient:
        client = self.blocking or self.aio
        assert client is not None
        return client

    def check(self, request: pb.CheckRequest) -> pb.CheckResponse:
        if self.blocking is not None:
            return self.blocking.check(request)
        assert self.aio is not None and self.loop is not None
        return self.loop.run_until_complete(self.aio.check(request))

    def check_batch(self, requests: list[pb.CheckRequest]) -> list[pb.CheckResponse]:
        if self.blocking is not None:
            return self.blocking.check_batch(requests)
        assert self.aio is not None and self.loop is not None
        return self.loop.run_until_complete(self.aio.check_batch(requests))

    def refresh(self) -> None:
        if self.blocking is not None:
            self.blocking.refresh_prefilter()
        else:
            assert self.aio is not None and self.loop is not None
            self.loop.run_until_complete(self.aio.refresh_prefilter())

    def close(self) -> None:
        if self.blocking is not None:
            self.blocking.close()
        if self.aio is not None and self.loop is not None:
            self.loop.run_until_complete(self.aio.close())
            self.loop.close()


@pytest.fixture
def running() -> Iterator[list[RunningServer]]:
    """The servers a test starts (``start``), all stopped after it."""
    started: list[RunningServer] = []
    yield started
    for handle in started:
        handle.stop()


def start(running: list[RunningServer], feed: Path, **settings: Any) -> RunningServer:
    handle = start_server(settings_for(feed, **settings))
    running.append(handle)
    return handle


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gateway in made:
        gateway.close()


def gateway(made: list[Gateway], kind: str, server: RunningServer, audit: Path) -> Gateway:
    client = Gateway(kind, server.address, audit)
    made.append(client)
    return client


def feed_published(tmp_path: Path, published: float) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    snapshot(folder / "snapshot-0001.jsonl", published)
    return folder


def header(server: RunningServer) -> pb.PrefilterHeader:
    stub = pb_grpc.ConsumptionCheckStub(server.channel)  # type: ignore[no-untyped-call]
    call = stub.GetPrefilter(pb.PrefilterRequest(lookup_rules=LOOKUP_RULES), timeout=10)
    try:
        first: pb.PrefilterChunk = next(iter(call))
    finally:
        call.cancel()  # the header is all this reads
    return first.header


def flight(number: str, request_id: str = "") -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, request_id=request_id)


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def server_stale(server: RunningServer) -> bool:
    answer: pb.CheckResponse = server.stub().CheckConsumption(flight(ZHAO), timeout=5)
    return answer.stale


@pytest.mark.parametrize("kind", KINDS)
def test_local_answers_from_a_list_past_the_maximum_age_are_stale_as_the_servers_are(
    kind: str, tmp_path: Path, running: list[RunningServer], gateways: list[Gateway]
) -> None:
    published = int(time.time() - 2 * HOUR)
    feed = feed_published(tmp_path, published)
    server = start(running, feed, max_list_age=HOUR)
    # the header says when the list went stale, as GetListStatus does
    assert header(server).stale_since == rfc3339(published + HOUR)
    eventually(lambda: server_stale(server), "the server marks its answers stale")
    audit = tmp_path / "local-audit.jsonl"
    client = gateway(gateways, kind, server, audit)

    one = client.check(flight(ZHAO, "one"))
    assert one.decided_locally and one.decision == pb.ALLOW
    assert one.stale
    batch = client.check_batch([flight(ZHAO, "a"), flight(ZHANG, "b"), flight(SUN, "c")])
    assert [(a.request_id, a.decided_locally, a.stale) for a in batch] == [
        ("a", True, True), ("b", False, True), ("c", True, True),
    ]  # fmt: skip
    assert batch[1].decision == pb.DENY  # the server's answer, stale too
    records = audit_records(audit)
    assert [(r["request_id"], r["stale"]) for r in records] == [
        ("one", True), ("a", True), ("c", True),
    ]  # fmt: skip

    # the feed publishes again: the next refresh brings the new time, answers are fresh
    snapshot(feed / "snapshot-0002.jsonl", time.time())
    eventually(lambda: not server_stale(server), "the server's answers fresh again")
    client.refresh()
    fresh = client.check(flight(ZHAO, "fresh"))
    assert fresh.decided_locally and not fresh.stale
    assert audit_records(audit)[-1]["stale"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_a_list_that_turns_stale_while_the_filter_is_held_makes_local_answers_stale(
    kind: str, tmp_path: Path, running: list[RunningServer], gateways: list[Gateway]
) -> None:
    published = int(time.time())
    max_list_age = 6.0
    server = start(running, feed_published(tmp_path, published), max_list_age=max_list_age)
    audit = tmp_path / "local-audit.jsonl"
    client = gateway(gateways, kind, server, audit)
    prefilter = client.client.prefilter
    assert prefilter is not None
    held = prefilter.filter
    assert held is not None
    stale_since = header(server).stale_since
    assert stale_since == rfc3339(published + max_list_age)
    stale_at = calendar.timegm(time.strptime(stale_since, "%Y-%m-%dT%H:%M:%SZ"))

    before = client.check(flight(ZHAO, "before"))
    answered = time.time()
    assert answered < stale_at, f"the test reached its first check after {stale_since}"
    assert before.decided_locally and not before.stale

    deadline = time.monotonic() + WAIT_S
    while time.time() < stale_at:  # the wall clock reaches the header's time
        assert time.monotonic() < deadline, f"the wall clock never reached {stale_since}"
        time.sleep(min(0.1, max(stale_at - time.time(), 0.0)))
    after = client.check(flight(ZHAO, "after"))
    batch = client.check_batch([flight(SUN, "a"), flight(ZHAO, "b")])
    assert prefilter.filter is held  # the same filter: no refresh came between
    assert after.decided_locally and after.stale
    assert [(a.decided_locally, a.stale) for a in batch] == [(True, True), (True, True)]
    records = audit_records(audit)
    assert [(r["request_id"], r["stale"]) for r in records] == [
        ("before", False), ("after", True), ("a", True), ("b", True),
    ]  # fmt: skip
    eventually(lambda: server_stale(server), "the server marks its answers stale too")


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_maximum_age_local_answers_are_never_stale(
    kind: str, tmp_path: Path, running: list[RunningServer], gateways: list[Gateway]
) -> None:
    server = start(running, feed_published(tmp_path, time.time() - 400 * 24 * HOUR))
    assert header(server).stale_since == ""  # what an older server sends too
    audit = tmp_path / "local-audit.jsonl"
    client = gateway(gateways, kind, server, audit)
    answer = client.check(flight(ZHAO, "old"))
    assert answer.decided_locally and not answer.stale
    assert not server_stale(server)
    assert [(r["request_id"], r["stale"]) for r in audit_records(audit)] == [("old", False)]


@pytest.mark.parametrize("text", ["yesterday", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z"])
def test_a_header_whose_stale_since_does_not_read_is_refused_naming_it(text: str) -> None:
    download = Download()
    bad = pb.PrefilterHeader(
        hash_scheme=HASH_SCHEME, key_scheme=KEY_SCHEME, lookup_rules=LOOKUP_RULES,
        stale_since=text,
    )  # fmt: skip
    with pytest.raises(CheckError) as refused:
        download.add(pb.PrefilterChunk(header=bad))
    assert refused.value.info.reason == "PREFILTER_CORRUPT"
    assert f"header.stale_since: {text!r} is not an RFC 3339 time" in refused.value.info.message
