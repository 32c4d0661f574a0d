"""The offline-capable client (``prefilter=True``): local answers, their limits, and outages.

A real server on a free port serving a list directory (so deltas can arrive),
real channels, and a clock the test moves (``Clock``) to age the filter: no
test sleeps or measures a duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.errors import (
    CheckError,
    InvalidRequest,
    PermissionDenied,
    ServiceUnavailable,
)
from shixin_check.server.auth import add_key, read_keys_document, write_keys_document
from shixin_check.server.convert import LOOKUP_RULES
from tests.conftest import settings_for, start_server
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    delta,
    org_entry,
    person_entry,
    rid,
    uscc,
    write_jsonl,
)
from tests.test_grpc import resident_id_that_reads_as_a_uscc
from tests.waiting import eventually

MAX_AGE = 60.0
#: Never listed either (ZHAO is the other).
SUN = rid("32010219700303005")
UNLISTED_ORG = uscc("91320102MA0000002")


class Clock:
    """The client's clock, moved by the test: the filter's age without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Server:
    """A real server on a list directory that a test may stop (once)."""

    def __init__(self, feed: Path, **settings: Any) -> None:
        self.feed = feed
        self.handle = start_server(settings_for(feed, **settings))
        self.running = True

    @property
    def address(self) -> str:
        return self.handle.address

    def version(self) -> str:
        return self.handle.stub().GetListStatus(pb.ListStatusRequest(), timeout=5).version

    def ask(self, request: pb.CheckRequest) -> pb.CheckResponse:
        return self.handle.stub().CheckConsumption(request, timeout=5)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.handle.stop()


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())
    return folder


@pytest.fixture
def server(feed: Path) -> Iterator[Server]:
    running = Server(feed)
    yield running
    running.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "local-audit.jsonl"


@pytest.fixture
def client(server: Server, clock: Clock, audit_path: Path) -> Iterator[CheckClient]:
    with CheckClient(
        server.address, prefilter=True, prefilter_max_age=MAX_AGE,
        local_audit_path=audit_path, clock=clock,
    ) as made:  # fmt: skip
        yield made


def flight(number: str, **fields: Any) -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, **fields)


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decided(answer: pb.CheckResponse) -> tuple[Any, ...]:
    """What an answer decides, without the ids of the check and where it was decided."""
    return (
        answer.request_id,
        answer.decision,
        list(answer.reasons),
        list(answer.matches),
        answer.list_version,
    )


def requests_of_every_kind() -> list[pb.CheckRequest]:
    """Unlisted people and organisations, listed debtors, a related person, a listed
    organisation, a mistyped id type, a name that differs, a purchase not restricted."""
    return [
        flight(ZHAO, request_id="unlisted"),
        build_request("HOTEL", uscc=UNLISTED_ORG, purchase={"star_rating": 5}, request_id="org"),
        flight(ZHANG, name="张伟", request_id="debtor"),
        flight(LI, request_id="second-entry"),
        flight(WANG, request_id="related"),
        build_request("HOTEL", uscc=ACME_USCC, purchase={"star_rating": 4}, request_id="acme"),
        flight(ZHANG, id_type="PASSPORT", request_id="mistyped"),
        flight(ZHANG, name="王五", request_id="other-name"),
        build_request(
            "RAIL",
            id_number=ZHANG,
            purchase={"train_number": "D301", "seat": "SECOND_CLASS"},
            request_id="not-restricted",
        ),  # fmt: skip
        flight(SUN, request_id="unlisted-2"),
    ]


# --- answers ------------------------------------------------------------------------


def test_the_librarys_answers_equal_the_servers_with_the_prefilter_on(
    server: Server, client: CheckClient, audit_path: Path
) -> None:
    requests = requests_of_every_kind()
    direct = [server.ask(r) for r in requests]
    one_by_one = [client.check(r) for r in requests]
    batch = client.check_batch(requests)
    for answers in (one_by_one, batch):
        assert [decided(a) for a in answers] == [decided(a) for a in direct]
        local = [a.request_id for a in answers if a.decided_locally]
        assert local == ["unlisted", "org", "unlisted-2"]  # only the definite negatives
        assert all(a.check_id.startswith("local-") == a.decided_locally for a in answers)
    assert [pb.Decision.Name(a.decision) for a in batch] == [
        "ALLOW", "ALLOW", "DENY", "DENY", "DENY", "DENY", "DENY", "REVIEW", "ALLOW", "ALLOW",
    ]  # fmt: skip
    records = audit_records(audit_path)
    assert [r["request_id"] for r in records] == ["unlisted", "org", "unlisted-2"] * 2
    assert {r["check_id"] for r in records} == {
        a.check_id for a in one_by_one + batch if a.decided_locally
    }


def test_bad_requests_are_never_answered_locally(
    client: CheckClient, audit_path: Path, server: Server
) -> None:
    bad_seat = flight(ZHAO)
    bad_seat.ClearField("flight")
    bad_seat.rail.train_number = "G1"
    no_subject = flight(ZHAO)
    no_subject.ClearField("person")
    unknown_channel = flight(ZHAO)
    unknown_channel.channel = 99  # type: ignore[assignment]
    unknown_id_type = flight(ZHAO)
    unknown_id_type.person.id_type = 42  # type: ignore[assignment]
    bad = [
        flight(ZHAO[:-1] + ("0" if ZHAO[-1] != "0" else "1")),  # a bad check digit
        flight(ZHAO, name="名" * 129),
        flight(ZHAO, request_id="r" * 129),
        build_request("HOTEL", id_number=ZHAO, purchase={"star_rating": 9}),
        build_request("RAIL", id_number=ZHAO, purchase={"train_number": "G1"}),  # no seat
        build_request("TRAVEL", id_number=ZHAO, purchase={"service": "RATED_RESORT"}),
        build_request("VEHICLE", id_number=ZHAO, amount_fen=-1),
        bad_seat,
        no_subject,
        unknown_channel,
        unknown_id_type,
    ]
    for request in bad:
        with pytest.raises(InvalidRequest):
            client.check(request)
    with pytest.raises(InvalidRequest) as caught:
        client.check_batch([flight(ZHAO), flight(SUN), bad[0], flight(ZHANG)])
    assert caught.value.field_violations[0][0] == "checks[2].subject.person.id_number"
    assert audit_records(audit_path) == []  # a refused batch hands out no local answer

    server.stop()  # offline, a bad request is still never an ALLOW
    with pytest.raises(ServiceUnavailable):
        client.check(bad[0])


# --- freshness ----------------------------------------------------------------------


def test_a_delta_listing_someone_is_never_cleared_after_the_next_refresh(
    server: Server, client: CheckClient, feed: Path
) -> None:
    assert client.check(flight(ZHAO)).decided_locally
    before = server.version()
    write_jsonl(feed / "delta-0001.jsonl", [delta(1, "LIST", entry=person_entry("E9", ZHAO, "赵六"))])  # fmt: skip
    eventually(lambda: server.version() != before, "the delta applied")
    client.refresh_prefilter()
    answer = client.check(flight(ZHAO))
    assert pb.Decision.Name(answer.decision) == "DENY" and not answer.decided_locally
    assert decided(answer) == decided(server.ask(flight(ZHAO)))
    [in_batch] = client.check_batch([flight(ZHAO)])
    assert in_batch.decision == pb.DENY and not in_batch.decided_locally
    assert client.check(flight(SUN)).list_version == server.version()  # the filter is current


def test_a_stale_filter_is_not_trusted(server: Server, client: CheckClient, clock: Clock) -> None:
    assert client.check(flight(ZHAO)).decided_locally
    clock.advance(MAX_AGE)  # as old as it may be: no longer trusted
    answer = client.check(flight(ZHAO))
    assert answer.decision == pb.ALLOW and not answer.decided_locally  # the server's answer
    client.refresh_prefilter()
    assert client.check(flight(ZHAO)).decided_locally
    server.stop()
    clock.advance(MAX_AGE + 1)
    with pytest.raises(ServiceUnavailable):
        client.check(flight(ZHAO))


def test_a_failed_refresh_ages_the_filter_out(
    server: Server, client: CheckClient, clock: Clock
) -> None:
    server.stop()
    clock.advance(MAX_AGE * 0.6)  # past the refresh point
    with pytest.raises(ServiceUnavailable):
        client.refresh_prefilter()
    assert client.check(flight(ZHAO)).decided_locally  # still young enough
    clock.advance(MAX_AGE * 0.4)
    with pytest.raises(ServiceUnavailable):
        client.check(flight(ZHAO))


# --- offline ------------------------------------------------------------------------


def test_offline_unlisted_subjects_are_cleared_locally_and_listed_ones_raise(
    server: Server, client: CheckClient, audit_path: Path
) -> None:
    version = server.version()
    server.stop()
    answer = client.check(flight(ZHAO, request_id="r-1", merchant_id="M1", terminal_id="T9"))
    assert answer.decided_locally and answer.check_id.startswith("local-")
    assert pb.Decision.Name(answer.decision) == "ALLOW"
    assert [r.code for r in answer.reasons] == ["NOT_LISTED"]
    assert answer.list_version == version and answer.request_id == "r-1"
    organisation = build_request("OFFICE_RENTAL", uscc=UNLISTED_ORG, purchase={"high_end": True})
    assert client.check(organisation).decided_locally
    for listed in (flight(ZHANG), flight(WANG), flight(ZHANG, id_type="PASSPORT")):
        with pytest.raises(ServiceUnavailable):
            client.check(listed)
    with pytest.raises(ServiceUnavailable):  # a batch needing the server fails whole
        client.check_batch([flight(SUN, request_id="lost"), flight(ZHANG)])
    answers = client.check_batch([flight(SUN, request_id="a"), flight(ZHAO, request_id="b")])
    assert [a.request_id for a in answers] == ["a", "b"]
    assert all(a.decided_locally for a in answers)

    records = audit_records(audit_path)
    assert [r["request_id"] for r in records] == ["r-1", "", "a", "b"]  # never "lost"
    first = records[0]
    assert (
        first["check_id"] == answer.check_id
        and first["masked_id"] == ZHAO[:6] + "********" + ZHAO[-4:]
    )
    assert first["decision"] == "ALLOW" and first["codes"] == ["NOT_LISTED"]
    assert first["channel"] == "AIRLINE" and first["list_version"] == version
    assert (first["merchant_id"], first["terminal_id"], first["decided_locally"]) == (
        "M1",
        "T9",
        True,
    )
    assert records[1]["masked_id"] == UNLISTED_ORG[:6] + "********" + UNLISTED_ORG[-4:]
    text = audit_path.read_text()
    assert ZHAO not in text and SUN not in text and UNLISTED_ORG not in text


#: A resident ID (region 911101, born 1980-01-01) that is a well-formed USCC too.
BOTH = rid("91110119800101024")
DOCUMENT_TYPES = ("PASSPORT", "HK_MACAO_PERMIT", "TAIWAN_PERMIT", "FOREIGN_PERMANENT_RESIDENT")


def test_a_number_any_of_whose_readings_is_listed_is_never_cleared_locally(
    tmp_path: Path, clock: Clock, audit_path: Path
) -> None:
    """An organisation listed under a USCC that also reads as a resident ID, its
    number sent as a person's document: the server looks it up as the
    organisation too, so the filter's answer for that key counts, online and off."""
    assert BOTH == uscc("91110119800101024")
    folder = tmp_path / "both"
    folder.mkdir()
    rows = [*basic_rows(), org_entry("O1", BOTH, "北京双读科技有限公司", [])]
    write_jsonl(folder / "snapshot-0001.jsonl", rows)
    server = Server(folder)
    try:
        with CheckClient(
            server.address, prefilter=True, prefilter_max_age=MAX_AGE,
            local_audit_path=audit_path, clock=clock,
        ) as client:  # fmt: skip
            for id_type in DOCUMENT_TYPES:
                request = flight(BOTH, id_type=id_type, request_id=id_type)
                answer = client.check(request)
                assert not answer.decided_locally, id_type
                assert pb.Decision.Name(answer.decision) == "DENY"
                assert decided(answer) == decided(server.ask(request))
                [sun, in_batch] = client.check_batch([flight(SUN), request])
                assert sun.decided_locally and not in_batch.decided_locally
                assert decided(in_batch) == decided(answer)
            server.stop()
            for id_type in DOCUMENT_TYPES:  # offline: never a local ALLOW
                with pytest.raises(ServiceUnavailable):
                    client.check(flight(BOTH, id_type=id_type))
            assert client.check(flight(SUN)).decided_locally
    finally:
        server.stop()
    assert all(
        r["masked_id"] != BOTH[:6] + "********" + BOTH[-4:] for r in audit_records(audit_path)
    )


def test_a_persons_resident_id_sent_as_a_uscc_is_never_cleared_locally(
    tmp_path: Path, clock: Clock, audit_path: Path
) -> None:
    """A listed person's resident ID that passes GB 32100 too, sent as an
    organisation's USCC: the server looks it up as the person too, so the client
    does not clear it, online or off."""
    listed = resident_id_that_reads_as_a_uscc("330203", "19540812")
    folder = tmp_path / "person"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [*basic_rows(), person_entry("P1", listed, "张伟")])
    server = Server(folder)
    stay = {"star_rating": 5}
    try:
        with CheckClient(
            server.address, prefilter=True, prefilter_max_age=MAX_AGE,
            local_audit_path=audit_path, clock=clock,
        ) as client:  # fmt: skip
            request = build_request("HOTEL", uscc=listed, purchase=stay, request_id="as-org")
            answer = client.check(request)
            assert not answer.decided_locally
            assert (pb.Decision.Name(answer.decision), [m.entry_id for m in answer.matches]) == (
                "DENY", ["P1"]
            )  # fmt: skip
            assert decided(answer) == decided(server.ask(request))
            [org, in_batch] = client.check_batch(
                [build_request("HOTEL", uscc=UNLISTED_ORG, purchase=stay), request]
            )
            assert org.decided_locally and not in_batch.decided_locally
            server.stop()
            with pytest.raises(ServiceUnavailable):  # offline: never a local ALLOW
                client.check(request)
            assert client.check(
                build_request("HOTEL", uscc=UNLISTED_ORG, purchase=stay)
            ).decided_locally
    finally:
        server.stop()


# --- lookup rules -------------------------------------------------------------------


def warnings_to_upgrade(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "upgrade" in r.getMessage()
    ]  # fmt: skip


def test_the_filter_header_says_which_lookups_the_server_makes(server: Server) -> None:
    [header, *_] = server.handle.stub().GetPrefilter(
        pb.PrefilterRequest(lookup_rules=LOOKUP_RULES), timeout=10
    )
    assert header.HasField("header")
    assert header.header.lookup_rules == LOOKUP_RULES >= 1  # above what older clients know


def test_a_client_behind_the_servers_lookup_rules_sends_every_check_to_the_server(
    server: Server, clock: Clock, audit_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A client that tests fewer readings than the server looks up would clear what the
    server DENYs: it answers nothing locally, as without the filter, and says once to
    upgrade; a client that knows the rules again answers locally again."""
    monkeypatch.setattr(
        "shixin_check.clients.prefilter.LOOKUP_RULES", LOOKUP_RULES - 1, raising=False
    )
    caplog.set_level(logging.WARNING, logger="shixin.client")
    requests = requests_of_every_kind()
    with CheckClient(
        server.address, prefilter=True, prefilter_max_age=MAX_AGE,
        local_audit_path=audit_path, clock=clock,
    ) as client:  # fmt: skip
        answers = [client.check(r) for r in requests] + client.check_batch(requests)
        assert not any(a.decided_locally for a in answers)
        assert [decided(a) for a in answers] == [decided(server.ask(r)) for r in requests] * 2
        client.refresh_prefilter()  # asks again, and says nothing more
        client.refresh_prefilter()
        assert not client.check(flight(ZHAO)).decided_locally
        [warning] = warnings_to_upgrade(caplog)
        assert f"({LOOKUP_RULES})" in warning and f"({LOOKUP_RULES - 1})" in warning
        monkeypatch.setattr("shixin_check.clients.prefilter.LOOKUP_RULES", LOOKUP_RULES)
        client.refresh_prefilter()  # upgraded (or the server rolled back): local again
        assert client.check(flight(ZHAO)).decided_locally
        monkeypatch.setattr("shixin_check.clients.prefilter.LOOKUP_RULES", LOOKUP_RULES - 1)
        client.refresh_prefilter()
        server.stop()  # offline, as without the filter: nothing is answered
        with pytest.raises(ServiceUnavailable):
            client.check(flight(ZHAO))
    assert len(audit_records(audit_path)) == 1  # the one local answer
    assert len(warnings_to_upgrade(caplog)) == 2  # once again after it was current again


def test_the_async_client_behind_the_servers_lookup_rules_sends_every_check_to_the_server(
    server: Server, clock: Clock, audit_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(
        "shixin_check.clients.prefilter.LOOKUP_RULES", LOOKUP_RULES - 1, raising=False
    )
    caplog.set_level(logging.WARNING, logger="shixin.client")

    async def go() -> None:
        async with AsyncCheckClient(
            server.address, prefilter=True, prefilter_max_age=MAX_AGE,
            local_audit_path=audit_path, clock=clock,
        ) as client:  # fmt: skip
            answers = await client.check_batch(requests_of_every_kind())
            assert not any(a.decided_locally for a in answers)
            await client.refresh_prefilter()
            assert not (await client.check(flight(ZHAO))).decided_locally

    asyncio.run(go())
    assert len(warnings_to_upgrade(caplog)) == 1
    assert audit_records(audit_path) == []


# --- who may use it -----------------------------------------------------------------


@pytest.fixture
def keys_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.json"
    return path, {
        "till": add_key(path, "till", "*", ["check"]),
        "gateway": add_key(path, "gateway", "*", ["check", "prefilter"]),
        "hotel": add_key(path, "hotel-gateway", ["HOTEL"], ["check", "prefilter"]),
    }


def test_a_key_without_the_role_fails_the_client_and_a_scope_is_kept(
    feed: Path, keys_file: tuple[Path, dict[str, str]], audit_path: Path
) -> None:
    path, keys = keys_file
    guarded = Server(feed, keys_file=path)
    try:
        with pytest.raises(PermissionDenied) as caught:
            CheckClient(
                guarded.address, api_key=keys["till"], prefilter=True, local_audit_path=audit_path
            )
        assert caught.value.reason == "ROLE_NOT_ALLOWED"
        with CheckClient(
            guarded.address, api_key=keys["hotel"], prefilter=True, local_audit_path=audit_path
        ) as hotel:
            stay = build_request("HOTEL", id_number=ZHAO, purchase={"star_rating": 4})
            assert hotel.check(stay).decided_locally
            with pytest.raises(PermissionDenied):  # outside its scope: the server says so
                hotel.check(flight(ZHAO))
    finally:
        guarded.stop()


def test_a_refresh_the_server_refuses_drops_the_filter_at_once(
    feed: Path, keys_file: tuple[Path, dict[str, str]], audit_path: Path
) -> None:
    path, keys = keys_file
    guarded = Server(feed, keys_file=path)
    try:
        with CheckClient(
            guarded.address, api_key=keys["gateway"], prefilter=True, local_audit_path=audit_path
        ) as client:
            assert client.check(flight(ZHAO)).decided_locally
            document = read_keys_document(path)
            for entry in document["keys"]:
                if entry["principal"] == "gateway":
                    entry["roles"] = ["check"]  # the operator withdraws the filter
            write_keys_document(path, document)

            def refused() -> bool:
                try:
                    client.refresh_prefilter()
                except PermissionDenied:
                    return True
                return False

            eventually(refused, "the server reloads the keys file and refuses the refresh")
            answer = client.check(flight(ZHAO))  # the filter is young, but gone
            assert answer.decision == pb.ALLOW and not answer.decided_locally
    finally:
        guarded.stop()


def test_prefilter_needs_a_local_audit_path(server: Server) -> None:
    with pytest.raises(ValueError, match="local_audit_path"):
        CheckClient(server.address, prefilter=True)


def test_a_fifo_as_local_audit_is_refused_not_waited_on(server: Server, tmp_path: Path) -> None:
    """A FIFO nothing reads made the client's constructor wait for a reader for good (a
    gateway hung at start); one something reads would hold up each check on the reader."""
    fifo = tmp_path / "local-audit.fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def make() -> None:
        try:
            CheckClient(server.address, prefilter=True, local_audit_path=fifo).close()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    maker = threading.Thread(target=make, daemon=True)
    maker.start()
    maker.join(5)
    if maker.is_alive():  # let the old code's open go, then fail
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        maker.join(5)
        pytest.fail("the constructor waited for a reader of the FIFO")
    assert isinstance(outcome[0], ValueError), outcome
    assert f"local_audit_path {fifo} is a FIFO" in str(outcome[0])
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # and with a reader too
    try:
        with pytest.raises(ValueError, match="is a FIFO"):
            CheckClient(server.address, prefilter=True, local_audit_path=fifo)
    finally:
        os.close(reader)
    with socket.socket(socket.AF_UNIX) as listening:  # a socket is named as one
        listening.bind(str(tmp_path / "audit.sock"))
        with pytest.raises(ValueError, match="audit.sock is a socket"):
            CheckClient(server.address, prefilter=True, local_audit_path=tmp_path / "audit.sock")


# --- the asynchronous client --------------------------------------------------------


def test_the_async_client_answers_locally_online_and_offline(
    server: Server, clock: Clock, audit_path: Path
) -> None:
    requests = requests_of_every_kind()
    direct = [server.ask(r) for r in requests]

    async def go() -> None:
        async with AsyncCheckClient(
            server.address, prefilter=True, prefilter_max_age=MAX_AGE,
            local_audit_path=audit_path, clock=clock,
        ) as client:  # fmt: skip
            one_by_one = [await client.check(r) for r in requests]
            batch = await client.check_batch(requests)
            for answers in (one_by_one, batch):
                assert [decided(a) for a in answers] == [decided(a) for a in direct]
                assert [a.request_id for a in answers if a.decided_locally] == [
                    "unlisted", "org", "unlisted-2",
                ]  # fmt: skip
            await asyncio.to_thread(server.stop)
            assert (await client.check(flight(ZHAO))).decided_locally
            with pytest.raises(ServiceUnavailable):
                await client.check(flight(ZHANG))
            clock.advance(MAX_AGE * 0.6)
            with pytest.raises(ServiceUnavailable):
                await client.refresh_prefilter()
            clock.advance(MAX_AGE * 0.4)
            with pytest.raises(ServiceUnavailable):
                await client.check(flight(ZHAO))

    asyncio.run(go())
    assert len(audit_records(audit_path)) == 7


def test_the_local_audit_file_is_made_for_the_gateways_user_and_group_alone(
    server: Server, tmp_path: Path
) -> None:
    """Its records say who was checked where: under ``umask 000`` it was made 0666."""
    path = tmp_path / "local-audit.jsonl"
    old = os.umask(0)
    try:
        with CheckClient(server.address, prefilter=True, local_audit_path=path) as made:
            made.refresh_prefilter()
            made.check(flight(ZHAO))
    finally:
        os.umask(old)
    assert [r["decision"] for r in audit_records(path)] == ["ALLOW"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, oct(path.stat().st_mode)


def test_a_local_audit_that_cannot_be_written_hands_out_no_local_answer(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk under ``local_audit_path`` (``/dev/full``: every write ENOSPC) made
    ``check`` raise a bare ``OSError`` naming no file, and the failed record stayed in
    a write buffer to be written at the next local answer: a record of an answer no
    till got. Now nothing is buffered; a check goes to the server instead (its answer
    is the server's, logged there), and a batch with local answers is refused naming
    the file, the server's answers before the first local one carried."""
    caplog.set_level(logging.WARNING, logger="shixin.client")
    with CheckClient(server.address, prefilter=True, local_audit_path="/dev/full") as client:
        client.refresh_prefilter()
        for _ in range(2):
            answer = client.check(flight(ZHAO))
            assert not answer.decided_locally
            assert answer.decision == pb.ALLOW
            assert not answer.check_id.startswith("local-")
        assert client.check(flight(ZHANG)).decision == pb.DENY
        with pytest.raises(CheckError) as refused:
            client.check_batch([flight(ZHANG), flight(ZHAO), flight(ZHANG)])
    error = refused.value
    assert error.reason == "LOCAL_AUDIT_UNWRITABLE"
    assert "the local audit /dev/full (local_audit_path) cannot be written: ENOSPC" in str(
        error.details()
    )
    assert [a.decision for a in error.answers] == [pb.DENY]  # up to the local answer
    assert error.first_unanswered == 1
    said = [r.getMessage() for r in caplog.records if "/dev/full" in r.getMessage()]
    assert len(said) == 1, said  # once, not at every check


#: Two clients' local audits on one file, in a process whose file-size limit rises a
#: little at a time (a disk freed page by page): writes fail and succeed in turn
_TWO_WRITERS = """
import json, resource, sys, threading, time
from shixin_check.clients.errors import CheckError
from shixin_check.clients.prefilter import LocalAudit
path = sys.argv[1]
audits = [LocalAudit(path), LocalAudit(path)]
ok = []
stop = time.monotonic() + 1.5
def run(i):
    n = 0
    while time.monotonic() < stop:
        n += 1
        try:
            audits[i].write([{"request_id": f"{i}-{n}", "pad": "x" * (n % 97)}])
        except CheckError:
            continue
        ok.append(f"{i}-{n}")
def free():
    size = 1000
    while time.monotonic() < stop:
        size += 150
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        time.sleep(0.0005)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
threads.append(threading.Thread(target=free))
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(ok))
"""


def test_two_clients_on_one_local_audit_never_cut_each_others_records(tmp_path: Path) -> None:
    """A write the disk refused is cut back off the file; with two clients (or two
    gateway processes) on one file, that cut took the other's records written in
    between, answers handed out, and could leave NUL bytes. Each write holds the
    file's lock now. A real file under a real, moving file-size limit."""
    path = tmp_path / "local.jsonl"
    done = subprocess.run([sys.executable, "-c", _TWO_WRITERS, str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    handed_out = json.loads(done.stdout)
    raw = path.read_bytes()
    assert b"\0" not in raw
    found = [json.loads(line)["request_id"] for line in raw.splitlines()]
    assert len(handed_out) > 100  # writes went in, and failed, in turn
    assert sorted(found) == sorted(handed_out)


def test_a_local_audit_locked_by_another_holder_sends_the_check_to_the_server(
    server: Server, tmp_path: Path
) -> None:
    """Another process holding the local audit's lock (a rotation script's ``flock``,
    a paused peer) held every local answer, past the call's timeout, and the async
    client's whole event loop; the check goes to the server after a short wait now."""
    path = tmp_path / "local.jsonl"
    holder = subprocess.Popen(["flock", "-x", str(path), "sleep", "5"])
    try:
        time.sleep(0.3)  # the lock taken
        with CheckClient(server.address, prefilter=True, local_audit_path=path) as client:
            client.refresh_prefilter()
            answer = client.check(flight(ZHAO))
            still_held = holder.poll() is None  # answered while the lock was held
    finally:
        holder.kill()
        holder.wait()
    assert not answer.decided_locally and answer.decision == pb.ALLOW
    assert still_held  # it did not wait for the holder's 5 s
    assert path.read_bytes() == b""
