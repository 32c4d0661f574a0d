"""GetPrefilter refuses a client whose lookup rules are below the server's.

A gateway that tests fewer readings of an identity than a check looks up would
answer ALLOW NOT_LISTED for a person the server DENYs (a passport holder
checked as an HK/Macao permit: the server looks the number up under every
document type). Only the server can stop an old client library, which never
looked at the header's ``lookup_rules``: every request says the client's rules
(``PrefilterRequest.lookup_rules``), and one below the server's, or none (every
client library before that field), is refused FAILED_PRECONDITION,
``PREFILTER_CLIENT_OUTDATED``.

Real servers on free ports, real channels, the bytes an old client puts on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import CheckClient
from shixin_check.clients.errors import CheckError
from shixin_check.server.convert import LOOKUP_RULES
from tests.accessdata import flight, refusal
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, person_entry, write_jsonl

Serve = Callable[..., RunningServer]

METHOD = "/shixin.v1.ConsumptionCheck/GetPrefilter"
PASSPORT = "E12345678"  # a listed passport number (synthetic)


def rows() -> list[dict[str, Any]]:
    passport = person_entry("E9", "", "钱多")
    passport["subject"].update(id_type="PASSPORT", id_number=PASSPORT)
    return [*basic_rows(), passport]


@pytest.fixture
def server(serve: Serve, tmp_path: Path) -> RunningServer:
    return serve(write_jsonl(tmp_path / "l.jsonl", rows()))


def raw(server: RunningServer, request: bytes) -> list[bytes]:
    """GetPrefilter called with ``request`` as its bytes, as any client library sends them."""
    call = server.channel.unary_stream(METHOD)  # bytes in, bytes out
    return list(call(request, timeout=10))


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def assert_outdated(error: grpc.RpcError, client: int, server: int) -> None:
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert (info.domain, info.reason) == ("shixin-check", "PREFILTER_CLIENT_OUTDATED")
    message = error.details()
    assert message.startswith(f"lookup_rules: the client's lookup rules are {client}")
    assert f"below this server's {server}:" in message
    assert "upgrade the gateway's shixin-check client library" in message
    assert "\n" not in message


def listed_passport_as_permit() -> pb.CheckRequest:
    """The reviewer's case: a passport holder checked as an HK/Macao permit holder."""
    return flight(PASSPORT, id_type="HK_MACAO_PERMIT")


# --- old clients --------------------------------------------------------------------


@pytest.mark.parametrize("known_version", ["", "20240101T000000Z-00000000"])
def test_a_request_without_lookup_rules_is_refused_as_an_outdated_client(
    server: RunningServer, known_version: str
) -> None:
    """What every client library before the field sends: at most known_version (field 1,
    tag 0x0a), whatever it knows of the header."""
    version = known_version.encode()
    old = b"\x0a" + bytes([len(version)]) + version if version else b""
    assert old == pb.PrefilterRequest(known_version=known_version).SerializeToString()
    error = refusal(lambda: raw(server, old))
    assert_outdated(error, 0, LOOKUP_RULES)
    assert "0 (not sent: a client library older than PrefilterRequest.lookup_rules)" in (
        error.details() or ""
    )


def test_only_lookup_rules_below_the_servers_are_refused(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own rules and any above (a server older than its client) get the
    filter; below them is refused: also once the server's rules move past a client
    that sends its own."""
    stub = server.stub()

    def fetch(rules: int) -> list[pb.PrefilterChunk]:
        return list(stub.GetPrefilter(pb.PrefilterRequest(lookup_rules=rules), timeout=10))

    for rules in (LOOKUP_RULES, LOOKUP_RULES + 1):
        [first, *data] = fetch(rules)
        assert first.header.lookup_rules == LOOKUP_RULES
        assert first.header.content == pb.PREFILTER_FULL and data
    assert_outdated(refusal(lambda: fetch(LOOKUP_RULES - 1)), LOOKUP_RULES - 1, LOOKUP_RULES)
    monkeypatch.setattr("shixin_check.server.prefilter.LOOKUP_RULES", LOOKUP_RULES + 1)
    assert_outdated(refusal(lambda: fetch(LOOKUP_RULES)), LOOKUP_RULES, LOOKUP_RULES + 1)
    assert fetch(LOOKUP_RULES + 1)[0].header.lookup_rules == LOOKUP_RULES + 1


def test_the_outdated_refusal_comes_before_the_list_is_looked_at(
    serve: Serve, tmp_path: Path
) -> None:
    """No list loaded yet (an empty feed folder): an old client is told to upgrade, not
    to retry (NO_LIST_LOADED)."""
    feed = tmp_path / "feed"
    feed.mkdir()
    server = serve(feed)
    error = refusal(lambda: raw(server, b""))
    assert_outdated(error, 0, LOOKUP_RULES)
    current = pb.PrefilterRequest(lookup_rules=LOOKUP_RULES)
    error = refusal(lambda: list(server.stub().GetPrefilter(current, timeout=10)))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "NO_LIST_LOADED"


# --- the current client -------------------------------------------------------------


def test_the_current_client_sends_its_rules_and_answers_locally(
    server: RunningServer, tmp_path: Path
) -> None:
    with CheckClient(
        server.address, prefilter=True, local_audit_path=tmp_path / "local.jsonl"
    ) as client:
        assert client.prefilter is not None
        assert client.prefilter.request().lookup_rules == LOOKUP_RULES
        assert client.prefilter.request(full=True).lookup_rules == LOOKUP_RULES
        assert client.prefilter.filter is not None
        unlisted = client.check(flight(ZHAO))
        assert unlisted.decided_locally and unlisted.decision == pb.ALLOW
        for listed in (flight(ZHANG), listed_passport_as_permit()):
            answer = client.check(listed)
            assert not answer.decided_locally and answer.decision == pb.DENY


def test_the_current_async_client_answers_locally_until_the_server_finds_it_outdated(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with AsyncCheckClient(
            server.address, prefilter=True, local_audit_path=tmp_path / "local.jsonl"
        ) as client:
            assert (await client.check(flight(ZHAO))).decided_locally
            denied = await client.check(listed_passport_as_permit())
            assert not denied.decided_locally and denied.decision == pb.DENY
            monkeypatch.setattr("shixin_check.server.prefilter.LOOKUP_RULES", LOOKUP_RULES + 1)
            with pytest.raises(CheckError) as refused:
                await client.refresh_prefilter()
            assert refused.value.reason == "PREFILTER_CLIENT_OUTDATED"
            answer = await client.check(flight(ZHAO))
            assert not answer.decided_locally and answer.decision == pb.ALLOW

    asyncio.run(go())


def test_a_client_the_server_finds_outdated_drops_its_filter_and_asks_the_server(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's rules move past the client's while it holds a filter (what an old
    client library meets at the upgrade): the refresh is refused and raises, the
    filter goes at once, and every check goes to the server."""
    with CheckClient(
        server.address, prefilter=True, local_audit_path=tmp_path / "local.jsonl"
    ) as client:
        assert client.check(flight(ZHAO)).decided_locally
        monkeypatch.setattr("shixin_check.server.prefilter.LOOKUP_RULES", LOOKUP_RULES + 1)
        with pytest.raises(CheckError) as refused:
            client.refresh_prefilter()
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "PREFILTER_CLIENT_OUTDATED"
        assert client.prefilter is not None and client.prefilter.filter is None
        answer = client.check(flight(ZHAO))
        assert not answer.decided_locally and answer.decision == pb.ALLOW
        denied = client.check(listed_passport_as_permit())
        assert not denied.decided_locally and denied.decision == pb.DENY
