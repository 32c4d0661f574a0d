"""``AsyncCheckClient`` on grpc.aio against a real server: the same basics as the
blocking client (answers equal the server's, batches of any size, a stream
with a bad request in the middle, the exception family, status)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.channel import NO_RETRY
from shixin_check.clients.check_client import build_request, error_details
from shixin_check.clients.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
)
from shixin_check.clients.flows import rail_order
from shixin_check.server.auth import add_key
from tests.conftest import RunningServer
from tests.listdata import LI, WANG, ZHANG, ZHAO, basic_rows, rid, write_jsonl
from tests.processes import free_port

Serve = Callable[..., RunningServer]
T = TypeVar("T")
BAD_ID = "110105198001010010"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    return serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))


def flight(number: str, request_id: str = "") -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, request_id=request_id)


def decision(answer: pb.CheckResponse) -> str:
    return str(pb.Decision.Name(answer.decision))


def test_check_batch_and_status_equal_the_servers(server: RunningServer) -> None:
    requests = [flight(ZHANG), flight(ZHAO), flight(WANG), flight(LI)]
    direct = [server.stub().CheckConsumption(r, timeout=5) for r in requests]

    async def go() -> tuple[list[pb.CheckResponse], list[pb.CheckResponse], pb.ListStatus]:
        async with AsyncCheckClient(server.address) as client:
            one_by_one = [await client.check(r) for r in requests]
            return one_by_one, await client.check_batch(requests), await client.status()

    one_by_one, batch, status = run(go())
    for answers in (one_by_one, batch):
        assert [decision(a) for a in answers] == ["DENY", "ALLOW", "DENY", "DENY"]
        assert [(list(a.reasons), list(a.matches)) for a in answers] == [
            (list(a.reasons), list(a.matches)) for a in direct
        ]
    assert status.serving and status.entries_total == 3


def test_a_batch_of_1001_is_two_calls_in_order(server: RunningServer) -> None:
    requests = [flight(ZHANG if i % 2 else ZHAO, request_id=f"a-{i}") for i in range(1001)]

    async def go() -> list[pb.CheckResponse]:
        async with AsyncCheckClient(server.address, timeout=30) as client:
            return await client.check_batch(requests)

    answers = run(go())
    assert [a.request_id for a in answers] == [f"a-{i}" for i in range(1001)]
    assert [decision(a) for a in answers[:4]] == ["ALLOW", "DENY", "ALLOW", "DENY"]


def test_a_stream_of_async_requests_with_a_bad_one_in_the_middle(server: RunningServer) -> None:
    async def requests() -> AsyncIterator[pb.CheckRequest]:
        for request in (flight(ZHANG), flight(BAD_ID), flight(ZHAO)):
            await asyncio.sleep(0)
            yield request

    async def go(raise_on_error: bool) -> list[pb.CheckResponse]:
        async with AsyncCheckClient(server.address) as client:
            return [a async for a in client.check_stream(requests(), raise_on_error=raise_on_error)]

    good, bad, again = run(go(False))
    assert (decision(good), decision(again)) == ("DENY", "ALLOW")
    assert len({good.request_id, bad.request_id, again.request_id}) == 3
    details = error_details(bad)
    assert details is not None and details.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidRequest) as caught:
        run(go(True))
    assert caught.value.field_violations[0][0] == "subject.person.id_number"


def test_a_plain_list_streams_too(server: RunningServer) -> None:
    async def go() -> list[pb.CheckResponse]:
        order = rail_order([(ZHANG, "张伟", "SECOND_CLASS"), (ZHAO, "赵六", "SECOND_CLASS")],
                           train="G1234", booking_id="E1")  # fmt: skip
        async with AsyncCheckClient(server.address) as client:
            return [a async for a in client.check_stream(order)]

    answers = run(go())
    assert [(a.request_id, decision(a)) for a in answers] == [("E1/1", "DENY"), ("E1/2", "ALLOW")]


def test_errors_are_the_family(server: RunningServer, serve: Serve, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    add_key(keys, "hotel-chain", ["HOTEL"], ["check"])
    guarded = serve(write_jsonl(tmp_path / "g.jsonl", basic_rows()), keys_file=keys)

    async def go() -> list[BaseException]:
        raised: list[BaseException] = []
        for target, request in (
            (server.address, flight(BAD_ID)),
            (guarded.address, flight(ZHAO)),
            (f"127.0.0.1:{free_port()}", flight(ZHAO)),
        ):
            async with AsyncCheckClient(target) as client:
                try:
                    await client.check(request)
                except grpc.RpcError as exc:
                    raised.append(exc)
        return raised

    invalid, anonymous, down = run(go())
    assert isinstance(invalid, InvalidRequest)
    assert invalid.field_violations[0][0] == "subject.person.id_number"
    assert isinstance(anonymous, Unauthenticated) and anonymous.reason == "API_KEY_MISSING"
    assert isinstance(down, ServiceUnavailable)


def test_a_refused_later_call_of_a_batch_carries_the_answers_before_it(
    serve: Serve, tmp_path: Path
) -> None:
    feed = tmp_path / "feed"  # a list directory: the prefilter needs one
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())
    keys = tmp_path / "keys.json"
    four = add_key(keys, "four", "*", ["check"], rate_per_second=0.01, burst=4)
    two = add_key(keys, "two", "*", ["check", "prefilter"], rate_per_second=0.01, burst=2)
    server = serve(feed, keys_file=keys)
    unlisted = rid("11010519900303003")
    requests = [flight(ZHANG, "a"), flight(ZHAO, "b"), flight(LI, "c"), flight(WANG, "d")]
    prefiltered = [flight(unlisted, "e"), flight(WANG, "f"), flight(ZHANG, "g"), flight(LI, "h")]
    local_audit = tmp_path / "local.jsonl"

    async def go() -> tuple[RateLimited, RateLimited]:
        caught = []
        async with AsyncCheckClient(server.address, api_key=four, batch_size=2,
                                    retry=NO_RETRY) as client:  # fmt: skip
            try:  # two calls of two answered (the burst), the third refused
                await client.check_batch([*requests, flight(ZHAO, "x")])
            except RateLimited as exc:
                caught.append(exc)
        async with AsyncCheckClient(server.address, api_key=two, batch_size=2, retry=NO_RETRY,
                                    prefilter=True, local_audit_path=local_audit,
                                    ) as client:  # fmt: skip
            try:  # "e" answered here, f and g by the first call, h's call refused
                await client.check_batch(prefiltered)
            except RateLimited as exc:
                caught.append(exc)
        plain, local = caught
        return plain, local

    plain, local = run(go())
    assert plain.first_unanswered == 4
    assert [(a.request_id, decision(a)) for a in plain.answers] == [
        ("a", "DENY"), ("b", "ALLOW"), ("c", "DENY"), ("d", "DENY"),
    ]  # fmt: skip
    assert local.first_unanswered == 3
    assert [(a.request_id, a.decided_locally) for a in local.answers] == [
        ("e", True), ("f", False), ("g", False),
    ]  # fmt: skip
    assert [json.loads(line)["request_id"] for line in local_audit.read_text().splitlines()] == [
        "e"
    ]
