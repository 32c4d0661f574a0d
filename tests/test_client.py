"""The Python client library against a real server on a free port (issue 13).

``CheckClient`` must answer exactly what the server answers, whichever way
the checks go (one, a batch of any size, a stream); name enum values
exactly; raise its small exception family with the server's details; retry
only where it is safe; and the booking-flow helpers and ``check --batch``
must turn real bookings into one answer per person.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.channel import NO_RETRY, Credentials, RetryPolicy
from shixin_check.clients.check_client import CheckClient, build_request, error_details
from shixin_check.clients.errors import (
    CheckError,
    DeadlineExceeded,
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
)
from shixin_check.clients.flows import (
    Person,
    airline_pnr,
    hotel_checkin,
    rail_order,
    school_enrolment,
)
from shixin_check.clients.names import UnknownName, enum_name
from shixin_check.server.auth import add_key
from tests.conftest import RunningServer, log_records
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    person_entry,
    rid,
    write_jsonl,
)
from tests.processes import free_port, run_cli

Serve = Callable[..., RunningServer]

SUN = rid("32010219700303005")  # listed, but the listing is suspended
ZHOU = rid("33010619880808006")  # listed, exempted for flights
BAD_ID = "110105198001010010"  # a bad check digit


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    """basic_rows() (Zhang, Li, ACME with Wang), Sun suspended, Zhou exempted for AIRLINE."""
    rows = [
        *basic_rows(),
        person_entry("E5", SUN, "孙丽", status="SUSPENDED", case_number="(2025)苏0102执5号"),
        person_entry(
            "E6", ZHOU, "周杰", case_number="(2025)浙0106执6号",
            exemptions=[{"channel": "AIRLINE", "from": "2020-01-01", "until": "2099-12-31"}],
        ),
    ]  # fmt: skip
    return serve(write_jsonl(tmp_path / "l.jsonl", rows), audit_log=tmp_path / "audit.log")


def rail(number: str, name: str = "", train: str = "G1234", seat: str = "SECOND_CLASS",
         request_id: str = "") -> pb.CheckRequest:  # fmt: skip
    purchase = {"train_number": train, "seat": seat}
    return build_request("RAIL", id_number=number, name=name, purchase=purchase,
                         request_id=request_id)  # fmt: skip


def flight(number: str, request_id: str = "") -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, purchase={"flight_number": "CA1234"},
                         request_id=request_id)  # fmt: skip


def hotel(number: str, stars: int = 4) -> pb.CheckRequest:
    return build_request("HOTEL", id_number=number, purchase={"star_rating": stars})


def school(number: str) -> pb.CheckRequest:
    return build_request(
        "SCHOOL", id_number=number, purchase={"private_school": True, "high_fee": True}
    )


def decided(answer: pb.CheckResponse) -> tuple[str, list[str]]:
    return pb.Decision.Name(answer.decision), [r.code for r in answer.reasons]


def without_check_id(answer: pb.CheckResponse) -> pb.CheckResponse:
    """The answer less the one field that differs per call (the server's check id)."""
    copy = pb.CheckResponse()
    copy.CopyFrom(answer)
    copy.check_id = ""
    return copy


def audit_outcomes(path: Path, method: str) -> list[str]:
    time.sleep(0.1)  # the audit writer appends as it goes
    records = log_records(path)
    return [r["outcome"] for r in records if r["method"] == method]


# --- the same answers as the server's ---------------------------------------------

#: (request, the decision and reasons it must get) across subjects and channels.
CASES = [
    (rail(ZHANG, "张伟"), ("DENY", ["RAIL_G_TRAIN"])),
    (rail(ZHANG, "张伟", train="D301"), ("ALLOW", ["NOT_RESTRICTED_CLASS"])),
    (rail(ZHAO, "赵六"), ("ALLOW", ["NOT_LISTED"])),
    (rail(SUN, "孙丽"), ("ALLOW", ["LISTING_SUSPENDED"])),
    (rail(WANG, "王芳"), ("DENY", ["RAIL_G_TRAIN"])),
    (flight(ZHOU), ("ALLOW", ["EXEMPTED"])),
    (flight(LI), ("DENY", ["AIR_TRAVEL"])),
    (flight(ZHAO), ("ALLOW", ["NOT_LISTED"])),
    (hotel(ZHOU), ("DENY", ["HOTEL_STAR_RATED"])),
    (hotel(WANG), ("DENY", ["HOTEL_STAR_RATED"])),
    (hotel(ZHANG, stars=0), ("ALLOW", ["NOT_RESTRICTED_CLASS"])),
    (school(SUN), ("ALLOW", ["LISTING_SUSPENDED"])),
    (school(LI), ("DENY", ["SCHOOL_HIGH_FEE_PRIVATE"])),
    (build_request("HOTEL", uscc=ACME_USCC, purchase={"star_rating": 5}),
     ("DENY", ["HOTEL_STAR_RATED"])),
]  # fmt: skip


def test_answers_equal_the_servers_one_by_one_in_a_batch_and_on_a_stream(
    server: RunningServer,
) -> None:
    requests = [request for request, _ in CASES]
    direct = [server.stub().CheckConsumption(r, timeout=5) for r in requests]
    assert [decided(a) for a in direct] == [expected for _, expected in CASES]
    with CheckClient(server.address) as client:
        one_by_one = [client.check(r) for r in requests]
        batch = client.check_batch(requests)
        streamed = list(client.check_stream(requests))
    expected = [without_check_id(a) for a in direct]
    assert [without_check_id(a) for a in one_by_one] == expected
    assert [without_check_id(a) for a in batch] == expected
    # the stream gave each request an id (they had none): the rest is the same
    assert len({a.request_id for a in streamed}) == len(requests)
    assert all(a.request_id for a in streamed)
    for answer, want in zip(streamed, expected, strict=True):
        answer.request_id = ""
        assert without_check_id(answer) == want


def test_a_related_person_is_denied_in_role_for_the_organisation(server: RunningServer) -> None:
    with CheckClient(server.address) as client:
        answer = client.check(hotel(WANG))
    assert decided(answer) == ("DENY", ["HOTEL_STAR_RATED"])
    [match] = answer.matches
    assert (match.role, match.organization_name) == (
        pb.ROLE_LEGAL_REPRESENTATIVE,
        "北京艾克米科技有限公司",
    )


def test_status_and_the_channel_are_reused(server: RunningServer) -> None:
    with CheckClient(server.address) as client:
        channel = client.channel
        assert client.status().serving
        client.check(rail(ZHAO))
        assert client.channel is channel
        assert client.status().entries_total == 5


# --- enum names are exact -----------------------------------------------------------


def test_enum_names_are_exact() -> None:
    assert rail(ZHANG, seat="SOFT_SLEEPER").rail.seat == pb.RAIL_SEAT_SOFT_SLEEPER
    assert rail(ZHANG, seat="soft-sleeper").rail.seat == pb.RAIL_SEAT_SOFT_SLEEPER
    assert rail(ZHANG, seat="DELUXE_SOFT_SLEEPER").rail.seat == pb.RAIL_SEAT_DELUXE_SOFT_SLEEPER
    assert rail(ZHANG, seat="RAIL_SEAT_SOFT_SLEEPER").rail.seat == pb.RAIL_SEAT_SOFT_SLEEPER
    with pytest.raises(UnknownName) as caught:
        rail(ZHANG, seat="SLEEPER")
    message = str(caught.value)
    assert message.startswith("purchase.rail.seat: 'SLEEPER' is not one of BUSINESS, PREMIER")
    assert "DELUXE_SOFT_SLEEPER, SOFT_SLEEPER, HARD_SLEEPER" in message
    assert isinstance(caught.value, ValueError)
    with pytest.raises(UnknownName, match="channel: 'RAILS' is not one of RAIL, AIRLINE"):
        build_request("RAILS", id_number=ZHANG)
    with pytest.raises(UnknownName, match="id_type: 'ID_CARD' is not one of RESIDENT_ID"):
        build_request("AIRLINE", id_number=ZHANG, id_type="ID_CARD")
    with pytest.raises(UnknownName, match="purchase.hotel.stars: no such field"):
        build_request("HOTEL", id_number=ZHANG, purchase={"stars": 4})
    travel = build_request("TRAVEL", id_number=ZHANG, purchase={"service": "domestic"})
    assert travel.travel.service == pb.TRAVEL_DOMESTIC
    # a program may send the zero value (the server refuses it); a clerk's flag may not
    assert rail(ZHANG, seat="UNSPECIFIED").rail.seat == pb.RAIL_SEAT_UNSPECIFIED
    with pytest.raises(UnknownName, match="'UNSPECIFIED' is not one of BUSINESS"):
        enum_name(pb.RailSeat.DESCRIPTOR, "UNSPECIFIED", "--seat")


# --- batches of any size --------------------------------------------------------


def test_a_batch_of_2500_comes_back_as_2500_answers_in_order(
    server: RunningServer, tmp_path: Path
) -> None:
    people = [ZHANG, ZHAO, SUN, WANG, ZHOU]
    requests = [flight(people[i % 5], request_id=f"b-{i}") for i in range(2500)]
    with CheckClient(server.address, timeout=30) as client:
        answers = client.check_batch(iter(requests))  # any iterable
    assert [a.request_id for a in answers] == [f"b-{i}" for i in range(2500)]
    want = ["DENY", "ALLOW", "ALLOW", "DENY", "ALLOW"]
    assert [pb.Decision.Name(a.decision) for a in answers] == want * 500
    assert len(audit_outcomes(tmp_path / "audit.log", "CheckConsumptionBatch")) == 3  # 3 calls


def test_a_bad_check_in_a_split_batch_is_named_by_its_place_in_the_whole(
    server: RunningServer,
) -> None:
    requests = [flight(ZHAO) for _ in range(1500)]
    requests[1234] = flight(BAD_ID)
    with CheckClient(server.address, timeout=30) as client, pytest.raises(InvalidRequest) as caught:
        client.check_batch(requests)
    [(field, problem)] = caught.value.field_violations
    assert field == "checks[1234].subject.person.id_number"
    assert "check digit" in problem
    assert caught.value.details().startswith("checks[1234].subject.person.id_number: ")


# --- streams ----------------------------------------------------------------------


def test_a_stream_answers_a_bad_request_in_the_middle_and_goes_on(server: RunningServer) -> None:
    requests = [flight(ZHANG), flight(BAD_ID, request_id="mine"), flight(ZHAO)]
    with CheckClient(server.address) as client:
        good, bad, again = client.check_stream(requests)
    assert (decided(good), decided(again)) == (("DENY", ["AIR_TRAVEL"]), ("ALLOW", ["NOT_LISTED"]))
    assert bad.request_id == "mine" and bad.decision == pb.DECISION_UNSPECIFIED
    assert good.request_id and again.request_id and good.request_id != again.request_id
    assert not requests[0].request_id  # the caller's requests are left as they were
    details = error_details(bad)
    assert details is not None and details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.field_violations[0][0] == "subject.person.id_number"


def test_a_stream_can_raise_on_the_first_refused_request(server: RunningServer) -> None:
    requests = [flight(ZHANG), flight(BAD_ID), flight(ZHAO)]
    seen: list[pb.CheckResponse] = []
    with CheckClient(server.address) as client, pytest.raises(InvalidRequest) as caught:
        for answer in client.check_stream(requests, raise_on_error=True):
            seen.append(answer)
    assert [decided(a) for a in seen] == [("DENY", ["AIR_TRAVEL"])]
    assert caught.value.reason == "INVALID_FIELD"
    assert caught.value.field_violations[0][0] == "subject.person.id_number"


# --- the exception family ---------------------------------------------------------


def test_a_bad_id_raises_invalid_request_with_the_field(server: RunningServer) -> None:
    with CheckClient(server.address) as client, pytest.raises(InvalidRequest) as caught:
        client.check(flight(BAD_ID))
    error = caught.value
    assert isinstance(error, CheckError) and isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FIELD"
    [(field, problem)] = error.field_violations
    assert field == "subject.person.id_number" and "check digit" in problem
    assert error.details() == f"{field}: {problem}"
    assert error_details(error) == error.info


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """A hotel chain (HOTEL only) and a slow caller (any channel, 1 check per 100 s)."""
    path = tmp_path / "keys.json"
    return {
        "path": str(path),
        "hotel": add_key(path, "hotel-chain", ["HOTEL"], ["check"]),
        "slow": add_key(path, "slow-caller", "*", ["check"], rate_per_second=0.01, burst=2),
    }


@pytest.fixture
def guarded(serve: Serve, tmp_path: Path, keys: dict[str, str]) -> RunningServer:
    return serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=Path(keys["path"]))


def test_credentials_and_scope_raise_with_their_reasons(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    with CheckClient(guarded.address) as anonymous, pytest.raises(Unauthenticated) as caught:
        anonymous.check(hotel(ZHAO))
    assert caught.value.reason == "API_KEY_MISSING"
    with CheckClient(guarded.address, api_key="sk_not-a-key") as wrong:
        with pytest.raises(Unauthenticated) as caught:
            wrong.check(hotel(ZHAO))
    assert caught.value.reason in ("API_KEY_UNKNOWN", "API_KEY_MALFORMED")
    with CheckClient(guarded.address, api_key=keys["hotel"]) as hotel_chain:
        assert decided(hotel_chain.check(hotel(ZHANG))) == ("DENY", ["HOTEL_STAR_RATED"])
        with pytest.raises(PermissionDenied) as denied:
            hotel_chain.check(flight(ZHAO))
    assert denied.value.reason == "CHANNEL_NOT_ALLOWED"
    assert denied.value.metadata["channel"] == "AIRLINE"


def test_credentials_never_show_their_secrets_in_a_repr(tmp_path: Path) -> None:
    """A log line or an error reporter's locals printed the API key and the client's
    private key: a repr shows neither, and still says what is set."""
    shown = repr(Credentials(api_key="sk_never-shown"))
    assert "sk_never-shown" not in shown and shown.startswith("Credentials("), shown
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "gw.key", "-out", "gw.pem",
                    "-days", "30", "-subj", "/CN=gw"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)  # fmt: skip
    key, cert = (tmp_path / "gw.key").read_bytes(), (tmp_path / "gw.pem").read_bytes()
    shown = repr(Credentials(root_ca=cert, client_cert=cert, client_key=key))
    body = key.decode().split("-----")[2].strip().splitlines()[0]  # the key's first line
    assert body not in shown and "PRIVATE KEY" not in shown and "client_cert=b'" in shown, shown


def test_rate_and_burst_raise_rate_limited_and_limit_exceeded(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    with CheckClient(guarded.address, api_key=keys["slow"], retry=NO_RETRY) as slow:
        with pytest.raises(LimitExceeded) as over:  # 3 checks in one call, burst 2: never
            slow.check_batch([flight(ZHAO)] * 3)
        assert over.value.reason == "BATCH_OVER_BURST"
        slow.check_batch([flight(ZHAO)] * 2)
        with pytest.raises(RateLimited) as caught:
            slow.check(flight(ZHAO))
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after is not None and 1 < caught.value.retry_after <= 100


UNLISTED = rid("11010519900303003")  # never listed either (ZHAO is the other)


def slow_server(serve: Serve, tmp_path: Path) -> tuple[RunningServer, str, Path]:
    """A server on a list directory (the prefilter needs one) with a key for two checks
    per 100 s (roles check and prefilter), and its audit log."""
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())
    keys = tmp_path / "keys.json"
    key = add_key(keys, "slow-gateway", "*", ["check", "prefilter"], rate_per_second=0.01,
                  burst=2)  # fmt: skip
    audit = tmp_path / "audit.log"
    return serve(feed, keys_file=keys, audit_log=audit), key, audit


def test_a_batch_refused_after_its_first_calls_carries_their_answers(
    serve: Serve, tmp_path: Path
) -> None:
    server, key, audit = slow_server(serve, tmp_path)
    pnr = airline_pnr([(ZHANG, "张伟"), (ZHAO, "赵六"), (WANG, "王五")], flight="CA1234",
                      booking_id="PNR1")  # fmt: skip
    with CheckClient(server.address, api_key=key, batch_size=2, retry=NO_RETRY) as client:
        with pytest.raises(RateLimited) as caught:
            client.check_batch(pnr)  # the first call (2 checks) answered, the second refused
        error = caught.value
        assert error.first_unanswered == 2
        assert [(a.request_id, decided(a)) for a in error.answers] == [
            ("PNR1/1", ("DENY", ["AIR_TRAVEL"])),
            ("PNR1/2", ("ALLOW", ["NOT_LISTED"])),
        ]
        with pytest.raises(RateLimited) as again:  # the retry of the rest: refused at once
            client.check_batch(pnr[error.first_unanswered :])
    assert (again.value.answers, again.value.first_unanswered) == ([], 0)
    # the first two were decided once: a retry of pnr[2:] does not decide them again
    outcomes = audit_outcomes(audit, "CheckConsumptionBatch")
    assert outcomes == ["OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]


def test_a_refused_batch_with_the_prefilter_carries_the_local_answers_before_it(
    serve: Serve, tmp_path: Path
) -> None:
    server, key, _ = slow_server(serve, tmp_path)
    local_audit = tmp_path / "local-audit.jsonl"
    requests = [
        flight(ZHAO, request_id="local-1"),
        flight(ZHANG, request_id="sent-1"),
        flight(UNLISTED, request_id="local-2"),
        flight(LI, request_id="sent-2"),
        flight(WANG, request_id="sent-3"),  # the second call: refused
        flight(ZHAO, request_id="local-3"),
    ]
    with CheckClient(server.address, api_key=key, batch_size=2, retry=NO_RETRY, prefilter=True,
                     local_audit_path=local_audit) as client:  # fmt: skip
        with pytest.raises(RateLimited) as caught:
            client.check_batch(requests)
        with pytest.raises(RateLimited) as again:  # the server answers none: nothing handed out
            client.check_batch(requests[caught.value.first_unanswered :])
    assert (again.value.answers, again.value.first_unanswered) == ([], 0)
    error = caught.value
    assert error.first_unanswered == 4
    assert [(a.request_id, a.decided_locally, decided(a)[0]) for a in error.answers] == [
        ("local-1", True, "ALLOW"),
        ("sent-1", False, "DENY"),
        ("local-2", True, "ALLOW"),
        ("sent-2", False, "DENY"),
    ]
    handed_out = [
        orjson.loads(line)["request_id"] for line in local_audit.read_bytes().splitlines()
    ]
    assert handed_out == ["local-1", "local-2"]  # not "local-3": never handed out


def test_unavailable_deadline_and_oversize(serve: Serve, tmp_path: Path) -> None:
    empty = tmp_path / "feed"
    empty.mkdir()
    waiting = serve(empty)  # no list loaded yet
    with CheckClient(waiting.address) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            client.check(flight(ZHAO))
        assert caught.value.reason == "NO_LIST_LOADED"
    with CheckClient(f"127.0.0.1:{free_port()}") as nobody:
        with pytest.raises(ServiceUnavailable) as down:
            nobody.check(flight(ZHAO))
        assert down.value.reason == ""  # from grpc itself: no details
    with socket.socket() as mute:  # takes the connection, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        with CheckClient(f"127.0.0.1:{mute.getsockname()[1]}", timeout=0.3) as client:
            with pytest.raises(DeadlineExceeded):
                client.check(flight(ZHAO))
    with CheckClient(waiting.address) as client:
        huge = build_request("AIRLINE", id_number=ZHAO, name="名" * 2_000_000)
        with pytest.raises(LimitExceeded, match="bytes; the server takes at most 4194304"):
            client.check(huge)  # refused here: never sent, never retried


# --- retries ----------------------------------------------------------------------


def test_unavailable_is_retried_and_a_bad_request_is_not(serve: Serve, tmp_path: Path) -> None:
    empty = tmp_path / "feed"
    empty.mkdir()
    audit = tmp_path / "audit.log"
    waiting = serve(empty, audit_log=audit)
    with CheckClient(waiting.address) as client, pytest.raises(ServiceUnavailable):
        client.check(flight(ZHAO))
    assert audit_outcomes(audit, "CheckConsumption") == ["UNAVAILABLE"] * 4  # 1 + 3 retries
    with CheckClient(waiting.address, retry=NO_RETRY) as client, pytest.raises(ServiceUnavailable):
        client.check(flight(ZHAO))
    assert audit_outcomes(audit, "CheckConsumption") == ["UNAVAILABLE"] * 5
    listed = tmp_path / "listed"
    audit = tmp_path / "listed-audit.log"
    server = serve(write_jsonl(listed, basic_rows()), audit_log=audit)
    with CheckClient(server.address) as client, pytest.raises(InvalidRequest):
        client.check(flight(BAD_ID))
    assert audit_outcomes(audit, "CheckConsumption") == ["INVALID_ARGUMENT"]  # once


def test_a_call_refused_while_the_list_loads_is_answered_by_a_retry(
    serve: Serve, tmp_path: Path
) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    audit = tmp_path / "audit.log"
    waiting = serve(feed, audit_log=audit)
    later = threading.Timer(0.1, lambda: write_jsonl(feed / "l.jsonl", basic_rows()))
    patient = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=1.0, multiplier=1.0)
    with CheckClient(waiting.address, timeout=10, retry=patient) as client:
        later.start()
        answer = client.check(flight(ZHANG))  # one call for the caller
    later.join()
    assert decided(answer) == ("DENY", ["AIR_TRAVEL"])
    outcomes = audit_outcomes(audit, "CheckConsumption")
    assert outcomes[0] == "UNAVAILABLE" and outcomes[-1] == "DENY", outcomes


# --- booking flows ----------------------------------------------------------------


def test_a_rail_order_is_one_batch_with_one_answer_per_passenger(server: RunningServer) -> None:
    order = rail_order(
        [(ZHANG, "张伟", "SECOND_CLASS"), (ZHAO, "赵六", "FIRST_CLASS"), (LI, "李娜", "NO_SEAT")],
        train="G1234",
        booking_id="E20261128",
    )
    assert [r.request_id for r in order] == ["E20261128/1", "E20261128/2", "E20261128/3"]
    d_train = rail_order(
        [(ZHANG, "张伟", "SECOND_CLASS"), (ZHANG, "张伟", "FIRST_CLASS")], train="D301"
    )
    with CheckClient(server.address) as client:
        answers = client.check_batch(order)
        on_d = client.check_batch(d_train)
    assert [decided(a) for a in answers] == [
        ("DENY", ["RAIL_G_TRAIN"]),
        ("ALLOW", ["NOT_LISTED"]),
        ("DENY", ["RAIL_G_TRAIN"]),
    ]
    assert [a.request_id for a in answers] == [r.request_id for r in order]
    assert [decided(a) for a in on_d] == [
        ("ALLOW", ["NOT_RESTRICTED_CLASS"]),
        ("DENY", ["RAIL_EMU_FIRST_CLASS"]),
    ]


def test_an_airline_pnr_checks_every_passenger(server: RunningServer) -> None:
    pnr = airline_pnr(
        [(ZHAO, "赵六"), Person(ZHOU, "周杰"), Person(ZHANG, "张伟", "PASSPORT")],
        flight="CA1234", cabin="Y", booking_id="HX7K2P",
    )  # fmt: skip
    assert pnr[2].person.id_type == pb.PASSPORT and pnr[0].flight.cabin == "Y"
    with CheckClient(server.address) as client:
        answers = client.check_batch(pnr)
    # a resident ID sent as a passport is still found (never a silent ALLOW)
    assert [decided(a) for a in answers] == [
        ("ALLOW", ["NOT_LISTED"]),
        ("ALLOW", ["EXEMPTED"]),
        ("DENY", ["AIR_TRAVEL"]),
    ]


def test_a_hotel_check_in_checks_every_guest_at_its_star_rating(server: RunningServer) -> None:
    guests = [(ZHAO, "赵六"), (WANG, "王芳")]
    with CheckClient(server.address) as client:
        rated = client.check_batch(hotel_checkin(guests, star_rating=4, booking_id="H-1"))
        unrated = client.check_batch(hotel_checkin(guests, star_rating=0))
        high_end = client.check_batch(hotel_checkin(guests, star_rating=0, high_end=True))
    assert [decided(a) for a in rated] == [
        ("ALLOW", ["NOT_LISTED"]),
        ("DENY", ["HOTEL_STAR_RATED"]),
    ]
    assert [decided(a)[0] for a in unrated] == ["ALLOW", "ALLOW"]
    assert [decided(a)[0] for a in high_end] == ["ALLOW", "DENY"]


def test_a_school_enrolment_checks_the_payer_not_the_child(server: RunningServer) -> None:
    [request] = school_enrolment(
        [(LI, "李娜")], private_school=True, high_fee=True, booking_id="2026-0042"
    )
    assert (request.person.id_number, request.channel) == (LI, pb.SCHOOL)
    assert request.school.private_school and request.school.high_fee
    ordinary = school_enrolment([(LI, "李娜")], private_school=True, high_fee=False)
    with CheckClient(server.address) as client:
        assert decided(client.check(request)) == ("DENY", ["SCHOOL_HIGH_FEE_PRIVATE"])
        assert decided(client.check_batch(ordinary)[0]) == ("ALLOW", ["NOT_RESTRICTED_CLASS"])


# --- check --batch through the real CLI ---------------------------------------------


def write_lines(path: Path, lines: list[object]) -> str:
    path.write_text(
        "".join((x if isinstance(x, str) else orjson.dumps(x).decode()) + "\n" for x in lines)
    )
    return str(path)


BATCH_LINES: list[object] = [
    {"channel": "RAIL", "id": ZHANG, "name": "张伟", "train": "G1234", "seat": "SECOND_CLASS",
     "request_id": "r-1"},
    {"channel": "HOTEL", "id": ZHAO, "star_rating": 4},
    "",
    {"channel": "rail", "id": ZHANG, "train": "D301", "seat": "soft_sleeper"},
    {"channel": "SCHOOL", "id": LI, "private-school": True, "high_fee": True},
]  # fmt: skip


def test_check_batch_prints_one_answer_per_line(server: RunningServer, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "checks.jsonl", BATCH_LINES)
    done = run_cli("check", "--target", server.address, "--batch", path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("DENY  RAIL_G_TRAIN  (request r-1, check ")
    assert lines[1].startswith("ALLOW  NOT_LISTED  (check ")
    assert lines[2].startswith("DENY  RAIL_SOFT_SLEEPER  (check ")
    assert lines[3].startswith("DENY  SCHOOL_HIGH_FEE_PRIVATE  (check ")
    done = run_cli("check", "--target", server.address, "--batch", path, "--json")
    assert done.returncode == 0, done.stderr
    answers = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [a["decision"] for a in answers] == ["DENY", "ALLOW", "DENY", "DENY"]
    assert answers[0]["requestId"] == "r-1" and answers[0]["matches"][0]["caseNumber"]


def test_check_batch_flags_are_defaults_for_every_line(
    server: RunningServer, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "people.jsonl", [{"id": ZHANG}, {"id": ZHAO}, {"id": LI}])
    done = run_cli("check", "--target", server.address, "--channel", "AIRLINE", "--batch", path)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["DENY", "ALLOW", "DENY"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"channel": "RAIL", "id": ZHANG, "train": "G1", "seat": "SLEEPER"},
         "line 2: --seat: 'SLEEPER' is not one of BUSINESS"),
        ('{"channel": "RAIL", "id": ', "line 2: not JSON"),
        ({"channel": "RAIL", "seet": "NO_SEAT"}, "line 2: 'seet' is not a field; the fields are"),
        ({"channel": "HOTEL", "star_rating": "four"}, "line 2: star_rating: 'four' is not an integer"),
        ({"id": ZHANG}, "line 2: --channel (SHIXIN_CHANNEL) is required"),
        (["RAIL"], "line 2: a line must be one JSON object"),
    ],
)  # fmt: skip
def test_check_batch_names_a_bad_line(
    server: RunningServer, tmp_path: Path, bad: object, says: str
) -> None:
    path = write_lines(tmp_path / "checks.jsonl", [BATCH_LINES[0], bad, BATCH_LINES[1]])
    done = run_cli("check", "--target", server.address, "--batch", path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"shixin-check check: {path}:{says}" in done.stderr, done.stderr
    assert done.stdout == ""  # nothing was checked


def test_check_batch_with_the_server_down_says_so(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "checks.jsonl", BATCH_LINES)
    done = run_cli("check", "--target", f"127.0.0.1:{free_port()}", "--batch", path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("UNAVAILABLE: ")


@pytest.mark.parametrize("key", ["k\u4e2d", "a key", "k\n"])
def test_an_api_key_grpc_cannot_send_is_refused_when_the_client_is_made(key: str) -> None:
    """grpcio refused such a header only at the first call, as INTERNAL "Invalid metadata"."""
    from shixin_check.clients.check_client import CheckClient

    with pytest.raises(ValueError, match="api_key: must be printable ASCII without spaces"):
        CheckClient("127.0.0.1:1", api_key=key)


def test_an_api_key_too_long_for_grpc_metadata_is_refused_when_the_client_is_made() -> None:
    """grpc refused a 20,000-character key at each call with a bare RESOURCE_EXHAUSTED
    (metadata over 16 KiB), which the client retried for a second and raised as
    LimitExceeded with no reason."""
    from shixin_check.clients.aio import AsyncCheckClient
    from shixin_check.clients.check_client import CheckClient

    for make in (CheckClient, AsyncCheckClient):
        with pytest.raises(ValueError, match="api_key: is 20000 characters long; at most 1024"):
            make("127.0.0.1:1", api_key="k" * 20000)
    CheckClient("127.0.0.1:1", api_key="k" * 1024).close()
