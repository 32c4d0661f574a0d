"""A version label does not pin its content: a gateway's filter is still the server's.

The README serves a delta rewritten in place on purpose: stop the server,
delete the ``applied-*`` record in the index folder (or run without one) and
start it again. The list is then other content under the same
``list_version`` (``BASE+N``: the snapshot file's details and the last seq).
A gateway holding that label's filter asked for the additions since it and
got none, computed from the server's own filter of the label rather than
from what the gateway holds: it went on clearing locally a person the server
now DENYs, and each refresh confirmed the filter, past ``prefilter_max_age``.
The header's ``filter_sha256`` (the whole filter's digest) lets the client
see that its filter is not the server's: it discards it, says so once and
downloads the whole filter.

Real servers on a free port, stopped and started again on it; real blocking
and asyncio clients with ``prefilter=True``; their filter's own clock frozen,
so nothing here waits for it to age out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rbloom import Bloom

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.errors import ServiceUnavailable
from shixin_check.domain.identity import IdType
from shixin_check.server.convert import LOOKUP_RULES
from tests.conftest import RunningServer, log_records, settings_for, start_server
from tests.listdata import ZHAO, basic_rows, delta, person_entry, rid, write_jsonl
from tests.test_prefilter_stale import KINDS, Gateway, flight, gateway, gateways  # noqa: F401
from tests.waiting import eventually

#: Listed by delta 1 as the feed first wrote it; ZHAO is listed by its rewrite instead.
SUN = rid("32010219700303005")
#: How the server keeps the ops it applied: no index folder, or one whose record is deleted.
MODES = ("no index folder", "applied record deleted")


class Restartable:
    """A real server on a list folder, stopped and started again on the same port."""

    def __init__(self, feed: Path, **settings: Any) -> None:
        self.feed = feed
        self.settings = settings
        self.handle: RunningServer | None = start_server(settings_for(feed, **settings))
        self.port = self.handle.service.port

    @property
    def running(self) -> RunningServer:
        assert self.handle is not None, "the server is stopped"
        return self.handle

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def version(self) -> str:
        status: pb.ListStatus = self.running.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)
        return status.version

    def ask(self, request: pb.CheckRequest) -> pb.CheckResponse:
        answer: pb.CheckResponse = self.running.stub().CheckConsumption(request, timeout=5)
        return answer

    def whole_filter(self) -> tuple[pb.PrefilterHeader, bytes]:
        request = pb.PrefilterRequest(lookup_rules=LOOKUP_RULES)
        chunks = list(self.running.stub().GetPrefilter(request, timeout=10))
        return chunks[0].header, b"".join(c.data for c in chunks[1:])

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None

    def start(self) -> None:
        assert self.handle is None
        listen = f"127.0.0.1:{self.port}"
        self.handle = start_server(settings_for(self.feed, listen=listen, **self.settings))


@pytest.fixture
def servers() -> Iterator[list[Restartable]]:
    made: list[Restartable] = []
    yield made
    for server in made:
        server.stop()


def served(made: list[Restartable], feed: Path, **settings: Any) -> Restartable:
    server = Restartable(feed, **settings)
    made.append(server)
    return server


def feed_listing(tmp_path: Path, number: str) -> Path:
    """A list folder: basic_rows() as the snapshot, delta 1 listing ``number`` as E9."""
    folder = tmp_path / "feed"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())
    write_delta(folder, 1, "LIST", entry=person_entry("E9", number, "孙七"))
    return folder


def write_delta(folder: Path, seq: int, op: str, **fields: Any) -> None:
    write_jsonl(folder / f"delta-{seq:04d}.jsonl", [delta(seq, op, **fields)])


def applied(server: Restartable, seq: int) -> None:
    eventually(lambda: server.version().endswith(f"+{seq}"), f"delta {seq} applied")


def refreshed(client: Gateway) -> None:
    """A refresh that succeeds, once the client's channel has found the restarted server."""

    def refresh() -> bool:
        try:
            client.refresh()
        except ServiceUnavailable:
            return False
        return True

    eventually(refresh, "a refresh reached the restarted server", step=0.1)


def held_bytes(client: Gateway) -> bytes:
    state = client.client.prefilter
    assert state is not None and state.filter is not None
    return bytes(state.filter.bloom.save_bytes())


def held_version(client: Gateway) -> str:
    state = client.client.prefilter
    assert state is not None and state.filter is not None
    return state.filter.version


def mismatch_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "shixin.client" and "is not the server's" in r.getMessage()
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_restart_serving_a_rewritten_delta_under_the_same_label_replaces_the_filter(
    kind: str,
    mode: str,
    tmp_path: Path,
    servers: list[Restartable],
    gateways: list[Gateway],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = tmp_path / "index" if mode == "applied record deleted" else None
    feed = feed_listing(tmp_path, SUN)
    server = served(servers, feed, index_dir=index)
    applied(server, 1)
    label = server.version()
    client = gateway(gateways, kind, server.running, tmp_path / "local.jsonl")
    assert client.check(flight(ZHAO)).decided_locally  # not listed: cleared locally

    # The operator serves delta 1 rewritten on purpose, as the README says.
    server.stop()
    write_delta(feed, 1, "LIST", entry=person_entry("E9", ZHAO, "赵六"))
    if index is not None:
        records = list(index.glob("applied-*"))
        assert records, "the index folder recorded the ops applied"
        for record in records:
            record.unlink()
    server.start()
    eventually(lambda: server.version() == label, "the rewritten delta served")
    assert server.ask(flight(ZHAO)).decision == pb.DENY  # the same label, other content

    with caplog.at_level(logging.WARNING, logger="shixin.client"):
        refreshed(client)
        answer = client.check(flight(ZHAO))
        assert not answer.decided_locally, "a listed person was cleared by a filter of old content"
        assert answer.decision == pb.DENY and answer.list_version == label
        header, whole = server.whole_filter()
        assert header.version == label and header.filter_sha256 == hashlib.sha256(whole).digest()
        assert held_bytes(client) == whole  # the server's filter, byte for byte
        # SUN is no longer listed: the new filter clears him, as the server's does
        assert client.check(flight(SUN)).decided_locally
        refreshed(client)  # now it matches: additions (none), no second word
    [said] = mismatch_logs(caplog)
    assert label in said and "downloading the whole filter" in said
    assert held_bytes(client) == whole


@pytest.mark.parametrize("kind", KINDS)
def test_ordinary_deltas_still_arrive_as_additions_that_end_with_the_servers_filter(
    kind: str,
    tmp_path: Path,
    servers: list[Restartable],
    gateways: list[Gateway],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit = tmp_path / "audit.jsonl"
    feed = feed_listing(tmp_path, SUN)
    server = served(servers, feed, audit_log=audit)
    applied(server, 1)
    client = gateway(gateways, kind, server.running, tmp_path / "local.jsonl")

    def downloads() -> int:
        return sum(1 for r in log_records(audit) if r.get("method") == "GetPrefilter")

    with caplog.at_level(logging.WARNING, logger="shixin.client"):
        for seq, number in ((2, ZHAO), (3, rid("53010219900404006"))):
            write_delta(feed, seq, "LIST", entry=person_entry(f"E{seq}0", number, "某某"))
            applied(server, seq)
            known = pb.PrefilterRequest(
                known_version=held_version(client), lookup_rules=LOOKUP_RULES
            )
            [first, *data] = server.running.stub().GetPrefilter(known, timeout=10)
            assert first.header.content == pb.PREFILTER_ADDITIONS and len(data) == 1
            whole = server.whole_filter()[1]
            assert first.header.filter_sha256 == hashlib.sha256(whole).digest()
            before = downloads()  # each call is audited before its header is sent
            client.refresh()
            assert downloads() == before + 1  # the additions matched: no second download
            assert held_bytes(client) == whole
            assert client.check(flight(number)).decision == pb.DENY
    assert mismatch_logs(caplog) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_delta_delisting_an_entry_a_delta_added_sends_the_whole_filter(
    kind: str,
    tmp_path: Path,
    servers: list[Restartable],
    gateways: list[Gateway],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's filter of the later version lacks that entry's keys (they were never in
    the snapshot), so additions would leave the gateway a filter that is not the server's:
    the server sends the whole filter at once, and the client has nothing to report."""
    feed = feed_listing(tmp_path, SUN)
    server = served(servers, feed)
    applied(server, 1)
    client = gateway(gateways, kind, server.running, tmp_path / "local.jsonl")
    before = client.client.prefilter.filter  # type: ignore[union-attr]
    assert before is not None and not client.check(flight(SUN)).decided_locally
    write_delta(feed, 2, "DELIST", entry_id="E9")
    applied(server, 2)
    known = pb.PrefilterRequest(known_version=before.version, lookup_rules=LOOKUP_RULES)
    [first, *_] = server.running.stub().GetPrefilter(known, timeout=10)
    assert first.header.content == pb.PREFILTER_FULL
    with caplog.at_level(logging.WARNING, logger="shixin.client"):
        client.refresh()
    assert held_bytes(client) == server.whole_filter()[1]
    assert client.check(flight(SUN)).decided_locally  # delisted: cleared, as the server would
    assert mismatch_logs(caplog) == []
    keyer = before.keyer
    assert keyer.subject_key(IdType.RESIDENT_ID, SUN) >> 64 in before.bloom
    assert keyer.subject_key(IdType.RESIDENT_ID, SUN) >> 64 not in Bloom.load_bytes(
        held_bytes(client), int
    )
