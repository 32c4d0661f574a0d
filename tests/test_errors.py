"""Every refusal carries machine-readable google.rpc details, through a real server.

Integrators branch on these in Java, Go, Node and Python: the ErrorInfo
reason (domain ``shixin-check``), the BadRequest field paths of an
INVALID_ARGUMENT, the RetryInfo of a RESOURCE_EXHAUSTED. They are read here as
any client would, with grpcio-status's ``rpc_status.from_call`` on the
failed call's trailers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request, error_details
from shixin_check.domain.errors import (
    ConfigurationError,
    DeadlineExceeded,
    IndexUnavailable,
    InvalidInput,
    LoadRejected,
    MalformedRequest,
    NotReady,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from shixin_check.server.status import refusal
from tests.accessdata import bearer, flight, hotel
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, rid, write_jsonl
from tests.test_internal_errors import BrokenSource

Serve = Callable[..., RunningServer]
KINDS = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def details(error: grpc.RpcError) -> dict[str, Message]:
    """The google.rpc details of a failed call, by type name; the status matches the call's."""
    status = rpc_status.from_call(error)  # raises if code or message disagree with the call
    assert status is not None, "no grpc-status-details-bin trailer"
    found: dict[str, Message] = {}
    for packed in status.details:
        for kind in KINDS:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                found[kind.__name__] = message
    assert found["ErrorInfo"].domain == "shixin-check"  # type: ignore[attr-defined]
    return found


def reason(error: grpc.RpcError) -> str:
    return details(error)["ErrorInfo"].reason  # type: ignore[attr-defined,no-any-return]


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    bad = details(error)["BadRequest"]
    return [(v.field, v.description) for v in bad.field_violations]  # type: ignore[attr-defined]


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    return serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))


# --- INVALID_ARGUMENT: BadRequest with the field path ---------------------------


def test_a_bad_field_names_its_path_in_bad_request(server: RunningServer) -> None:
    error = refused(lambda: server.stub().CheckConsumption(flight("110105")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("subject.person.id_number: ")  # the readable message stays
    [(field, problem)] = violations(error)
    assert field == "subject.person.id_number"
    assert error.details() == f"{field}: {problem}"
    assert reason(error) == "INVALID_FIELD"


def test_a_bad_check_in_a_batch_is_named_from_the_batch(server: RunningServer) -> None:
    checks = [flight(), flight(ZHANG), build_request("RAIL", id_number=ZHAO)]  # no seat
    error = refused(
        lambda: server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=checks))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == [("checks[2].purchase.rail.seat", "is required (rail seat)")]
    bad_id = [flight(), flight(), flight("11010519800101001X")]
    error = refused(
        lambda: server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=bad_id))
    )
    [(field, _)] = violations(error)
    assert field == "checks[2].subject.person.id_number"


def test_a_batch_over_a_thousand_names_checks(server: RunningServer) -> None:
    too_many = pb.CheckBatchRequest(checks=[flight()] * 1001)
    error = refused(lambda: server.stub().CheckConsumptionBatch(too_many))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    [(field, problem)] = violations(error)
    assert (field, reason(error)) == ("checks", "BATCH_TOO_LARGE")
    assert "at most 1000" in problem


def test_bytes_that_do_not_parse_are_a_bad_request_of_the_whole(server: RunningServer) -> None:
    call = server.channel.unary_unary(
        "/shixin.v1.ConsumptionCheck/CheckConsumption",
        request_serializer=None, response_deserializer=None,
    )  # fmt: skip
    error = refused(lambda: call(b"\xff\xff\xff"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    [(field, problem)] = violations(error)
    assert field == "" and "request is not a valid shixin.v1.CheckRequest" in problem
    assert reason(error) == "MALFORMED_REQUEST"


# --- RESOURCE_EXHAUSTED: RetryInfo ----------------------------------------------


def test_a_rate_limited_caller_gets_retry_info(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    stub = guarded.stub()
    for _ in range(3):  # the burst
        stub.CheckConsumption(flight(), metadata=bearer(keys["slow"]))
    error = refused(lambda: stub.CheckConsumption(flight(), metadata=bearer(keys["slow"])))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    delay = found["RetryInfo"].retry_delay  # type: ignore[attr-defined]
    delay_ms = delay.seconds * 1000 + delay.nanos // 1_000_000
    assert 0 < delay_ms <= 500
    # deprecated, kept for one release: the same delay in retry-after-ms
    assert int(dict(error.trailing_metadata())["retry-after-ms"]) == delay_ms
    assert found["ErrorInfo"].metadata["principal"] == "slow-caller"  # type: ignore[attr-defined]
    assert "BadRequest" not in found


def test_rate_limit_reason_is_rate_limited(guarded: RunningServer, keys: dict[str, str]) -> None:
    """The specific reason, set by server/auth.py."""
    stub = guarded.stub()
    for _ in range(3):
        stub.CheckConsumption(flight(), metadata=bearer(keys["slow"]))
    error = refused(lambda: stub.CheckConsumption(flight(), metadata=bearer(keys["slow"])))
    assert reason(error) == "RATE_LIMITED"


def test_a_batch_over_the_burst_says_no_wait_will_do(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    big = pb.CheckBatchRequest(checks=[flight()] * 10)  # burst 3
    error = refused(
        lambda: guarded.stub().CheckConsumptionBatch(big, metadata=bearer(keys["slow"]))
    )
    found = details(error)
    assert found["ErrorInfo"].reason == "BATCH_OVER_BURST"  # type: ignore[attr-defined]
    assert "RetryInfo" not in found


def test_an_enumeration_throttle_says_when_the_window_ends(serve: Serve, tmp_path: Path) -> None:
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        enumeration_threshold=2, enumeration_window=3600.0, enumeration_throttle=True,
    )  # fmt: skip
    stub = server.stub()
    people = [rid(f"1101051970010100{i}") for i in range(3)]
    for number in people[:2]:
        stub.CheckConsumption(flight(number))
    error = refused(lambda: stub.CheckConsumption(flight(people[2])))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    delay = found["RetryInfo"].retry_delay  # type: ignore[attr-defined]
    assert 0 < delay.seconds <= 3600
    assert found["ErrorInfo"].reason == "ENUMERATION_THROTTLED"  # type: ignore[attr-defined]


# --- UNAUTHENTICATED, PERMISSION_DENIED: ErrorInfo reasons ------------------------


def test_auth_refusals_carry_error_info_of_their_class(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    """Whatever the reason, every auth refusal has ErrorInfo with a non-empty reason."""
    stub = guarded.stub()
    for error, code in (
        (refused(lambda: stub.CheckConsumption(hotel())), grpc.StatusCode.UNAUTHENTICATED),
        (
            refused(lambda: stub.CheckConsumption(hotel(), metadata=bearer("sk_nope"))),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            refused(lambda: stub.CheckConsumption(flight(), metadata=bearer(keys["hotel"]))),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ):
        assert error.code() is code
        assert reason(error)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), "API_KEY_MISSING"),
        ((("authorization", "Bearer sk_not-a-key"),), "API_KEY_UNKNOWN"),
        ((("authorization", "Basic dXNlcjpwdw=="),), "API_KEY_MALFORMED"),
        # two different credentials, the good one first or last: neither is served
        (
            (("authorization", "Bearer GOOD"), ("authorization", "Bearer sk_not-a-key")),
            "API_KEY_MALFORMED",
        ),
        (
            (("authorization", "Bearer sk_not-a-key"), ("authorization", "Bearer GOOD")),
            "API_KEY_MALFORMED",
        ),
    ],
)
def test_unauthenticated_reasons_are_specific(
    guarded: RunningServer,
    keys: dict[str, str],
    metadata: tuple[tuple[str, str], ...],
    expected: str,
) -> None:
    """The specific reasons, set by server/auth.py."""
    metadata = tuple((k, v.replace("GOOD", keys["hotel"])) for k, v in metadata)
    error = refused(lambda: guarded.stub().CheckConsumption(hotel(), metadata=metadata))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == expected
    assert "principal" not in details(error)["ErrorInfo"].metadata  # type: ignore[attr-defined]


def test_the_same_key_sent_twice_is_served(guarded: RunningServer, keys: dict[str, str]) -> None:
    """A proxy that repeats the header is no ambiguity: one credential, served."""
    twice = (("authorization", f"Bearer {keys['hotel']}"),) * 2
    assert guarded.stub().CheckConsumption(hotel(), metadata=twice).decision


def test_a_channel_outside_the_scope_names_principal_and_channel(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    stub = guarded.stub()
    error = refused(lambda: stub.CheckConsumption(flight(), metadata=bearer(keys["hotel"])))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    info = details(error)["ErrorInfo"]
    assert dict(info.metadata) == {"principal": "hotel-chain", "channel": "AIRLINE"}  # type: ignore[attr-defined]
    assert info.reason == "CHANNEL_NOT_ALLOWED"  # type: ignore[attr-defined]
    batch = pb.CheckBatchRequest(checks=[hotel(), flight()])
    error = refused(lambda: stub.CheckConsumptionBatch(batch, metadata=bearer(keys["hotel"])))
    assert error.details().startswith("checks[1]: ")
    info = details(error)["ErrorInfo"]
    assert dict(info.metadata) == {"principal": "hotel-chain", "channel": "AIRLINE"}  # type: ignore[attr-defined]
    assert info.reason == "CHANNEL_NOT_ALLOWED"  # type: ignore[attr-defined]


def test_a_role_outside_the_scope_names_principal_and_role(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    stub = guarded.stub()
    error = refused(
        lambda: stub.GetListStatus(pb.ListStatusRequest(), metadata=bearer(keys["hotel"]))
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    info = details(error)["ErrorInfo"]
    assert dict(info.metadata) == {"principal": "hotel-chain", "role": "status"}  # type: ignore[attr-defined]
    assert info.reason == "ROLE_NOT_ALLOWED"  # type: ignore[attr-defined]
    error = refused(lambda: stub.CheckConsumption(hotel(), metadata=bearer(keys["ops"])))
    assert dict(details(error)["ErrorInfo"].metadata) == {"principal": "operator", "role": "check"}  # type: ignore[attr-defined]


# --- UNAVAILABLE, INTERNAL ---------------------------------------------------------


def test_no_list_loaded_is_unavailable_with_its_reason(tmp_path: Path, serve: Serve) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    server = serve(folder)
    error = refused(lambda: server.stub().CheckConsumption(flight()))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert reason(error) == "NO_LIST_LOADED"


def test_internal_names_its_check_id_in_error_info(server: RunningServer) -> None:
    engine = server.service.engine
    real = engine.source
    engine.source = BrokenSource()  # type: ignore[assignment]
    try:
        error = refused(lambda: server.stub().CheckConsumption(flight()))
    finally:
        engine.source = real
    assert error.code() is grpc.StatusCode.INTERNAL
    found = re.search(r"check_id ([0-9a-f]+-[0-9a-f]+)", error.details())
    assert found is not None
    info = details(error)["ErrorInfo"]
    assert info.reason == "INTERNAL"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"check_id": found.group(1)}  # type: ignore[attr-defined]


# --- the mapping itself, and the client's reading of it ----------------------------


@pytest.mark.parametrize(
    ("exc", "code", "default_reason"),
    [
        (InvalidInput("f", "p"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        (MalformedRequest("x"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (RateLimited("x", 1.0), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
        (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (NotReady("x"), grpc.StatusCode.UNAVAILABLE, "NO_LIST_LOADED"),
        (IndexUnavailable("x"), grpc.StatusCode.UNAVAILABLE, "INDEX_UNAVAILABLE"),
        (LoadRejected("f", []), grpc.StatusCode.FAILED_PRECONDITION, "LOAD_REJECTED"),
        (ConfigurationError("x"), grpc.StatusCode.FAILED_PRECONDITION, "CONFIGURATION_ERROR"),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_every_error_class_has_a_code_and_a_default_reason(
    exc: BaseException, code: grpc.StatusCode, default_reason: str
) -> None:
    told = refusal(exc)
    assert (told.code, told.reason) == (code, default_reason)
    assert told.rich_status().code == code.value[0]
    assert told.check_error().reason == default_reason


def test_the_client_reads_details_and_stream_errors_alike(server: RunningServer) -> None:
    error = refused(lambda: server.stub().CheckConsumption(flight("110105")))
    read = error_details(error)
    assert read is not None
    assert (read.code, read.reason, read.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "shixin-check",
    )  # fmt: skip
    assert [f for f, _ in read.field_violations] == ["subject.person.id_number"]
    [answer] = server.stub().CheckConsumptionStream(iter([flight("110105", request_id="s-1")]))
    from_stream = error_details(answer)
    assert from_stream == read  # the same refusal, whichever way it came
    [good] = server.stub().CheckConsumptionStream(iter([flight(request_id="s-2")]))
    assert error_details(good) is None


@pytest.mark.parametrize("form", ["Bearer {}", "bearer  {} ", " Bearer {}", "  BEARER {}"])
def test_a_key_with_white_space_around_it_is_the_same_key(
    guarded: RunningServer, keys: dict[str, str], form: str
) -> None:
    """As a hand-written header or a pasted key may have it: inside, before, after."""
    metadata = (("authorization", form.format(keys["hotel"])),)
    assert guarded.stub().CheckConsumption(hotel(), metadata=metadata).decision == pb.ALLOW
