"""What a call is checked for, in which order, and what its audit record says.

Through real servers on free ports. The caller is identified before the body
is read (its metadata is there whatever the body holds), so a call without
credentials is UNAUTHENTICATED whatever it sends, and a refused call is
audited under the caller who made it, with the checks it asked for. A request
is validated before the list is looked for, so a bad request is
INVALID_ARGUMENT with or without a list. A check is charged to the caller's
rate only once it is valid and in scope, so checks outside the caller's
channels cost no token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.server.auth import add_key
from tests.accessdata import bearer, flight, hotel, refusal
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_errors import details

Serve = Callable[..., RunningServer]
GARBAGE = b"\xff\xff\xff"
BAD_ID = "123"


def raw(server: RunningServer, method: str) -> Callable[..., bytes]:
    """``method`` of the service, sending bytes as they are."""
    return server.channel.unary_unary(  # type: ignore[no-any-return]
        f"/shixin.v1.ConsumptionCheck/{method}",
        request_serializer=None, response_deserializer=None,
    )  # fmt: skip


def audited(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- the caller first -------------------------------------------------------------


def test_without_credentials_any_body_is_unauthenticated(guarded: RunningServer) -> None:
    oversize = pb.CheckBatchRequest(checks=[hotel()] * 1001)
    calls = {
        "garbage to CheckConsumption": lambda: raw(guarded, "CheckConsumption")(GARBAGE),
        "garbage to CheckConsumptionBatch": lambda: raw(guarded, "CheckConsumptionBatch")(GARBAGE),
        "garbage to GetListStatus": lambda: raw(guarded, "GetListStatus")(GARBAGE),
        "garbage to GetPrefilter": lambda: list(
            guarded.channel.unary_stream("/shixin.v1.ConsumptionCheck/GetPrefilter")(GARBAGE)
        ),
        "a batch over max_batch": lambda: guarded.stub().CheckConsumptionBatch(oversize),
    }
    for what, call in calls.items():
        error = refusal(call)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, what
        assert details(error)["ErrorInfo"].reason == "API_KEY_MISSING", what  # type: ignore[attr-defined]


def test_a_refused_body_is_audited_under_its_caller_with_its_checks(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    key = bearer(keys["hotel"])
    error = refusal(lambda: raw(guarded, "CheckConsumption")(GARBAGE, metadata=key))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = refusal(lambda: raw(guarded, "CheckConsumptionBatch")(GARBAGE, metadata=key))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    oversize = pb.CheckBatchRequest(checks=[hotel()] * 1001)
    error = refusal(lambda: guarded.stub().CheckConsumptionBatch(oversize, metadata=key))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)["ErrorInfo"].reason == "BATCH_TOO_LARGE"  # type: ignore[attr-defined]
    records = [(r["method"], r["caller"], r["outcome"], r["checks"])
               for r in audited(tmp_path / "audit.log")]  # fmt: skip
    assert records == [
        ("CheckConsumption", "hotel-chain", "INVALID_ARGUMENT", 1),
        ("CheckConsumptionBatch", "hotel-chain", "INVALID_ARGUMENT", 0),  # no checks parsed
        ("CheckConsumptionBatch", "hotel-chain", "INVALID_ARGUMENT", 1001),
    ]


def test_a_caller_without_the_role_is_refused_before_its_body_is_read(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    """The operator key holds only ``status``: the check methods are not its to call."""
    check = raw(guarded, "CheckConsumption")
    error = refusal(lambda: check(GARBAGE, metadata=bearer(keys["ops"])))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details(error)["ErrorInfo"].reason == "ROLE_NOT_ALLOWED"  # type: ignore[attr-defined]


# --- the checks a refused call asked for ----------------------------------------------


def test_refused_calls_are_audited_with_the_checks_they_asked_for(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    stub = guarded.stub()
    slow, hotel_key = bearer(keys["slow"]), bearer(keys["hotel"])  # slow: 2/s, burst 3
    over_burst = pb.CheckBatchRequest(checks=[flight()] * 5)
    out_of_scope = pb.CheckBatchRequest(checks=[hotel(), flight(), hotel()])
    refused = {
        grpc.StatusCode.FAILED_PRECONDITION: [
            lambda: stub.CheckConsumptionBatch(over_burst, metadata=slow),
        ],
        grpc.StatusCode.PERMISSION_DENIED: [
            lambda: stub.CheckConsumptionBatch(out_of_scope, metadata=hotel_key),
            lambda: stub.GetListStatus(pb.ListStatusRequest(), metadata=hotel_key),
            lambda: list(stub.GetPrefilter(pb.PrefilterRequest(), metadata=hotel_key)),
        ],
    }
    for code, calls in refused.items():
        for call in calls:
            assert refusal(call).code() is code
    ops = bearer(keys["ops"])
    assert stub.GetListStatus(pb.ListStatusRequest(), metadata=ops).serving
    records = [(r["method"], r["outcome"], r["checks"]) for r in audited(tmp_path / "audit.log")]
    assert records == [
        ("CheckConsumptionBatch", "FAILED_PRECONDITION", 5),
        ("CheckConsumptionBatch", "PERMISSION_DENIED", 3),
        ("GetListStatus", "PERMISSION_DENIED", 0),
        ("GetPrefilter", "PERMISSION_DENIED", 0),
        ("GetListStatus", "OK", 0),
    ]


# --- no list loaded -------------------------------------------------------------------


@pytest.fixture
def listless(serve: Serve, tmp_path: Path) -> RunningServer:
    """A server following an empty feed folder: no list loaded."""
    feed = tmp_path / "feed"
    feed.mkdir()
    return serve(feed)


def test_with_no_list_a_bad_request_is_still_invalid(listless: RunningServer) -> None:
    stub = listless.stub()
    error = refusal(lambda: stub.CheckConsumption(flight(BAD_ID)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("subject.person.id_number: ")
    batch = pb.CheckBatchRequest(checks=[flight(ZHAO), flight(BAD_ID)])
    error = refusal(lambda: stub.CheckConsumptionBatch(batch))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("checks[1].subject.person.id_number: ")
    # a good request with no list stays UNAVAILABLE: the client retries it
    error = refusal(lambda: stub.CheckConsumption(flight(ZHAO)))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert details(error)["ErrorInfo"].reason == "NO_LIST_LOADED"  # type: ignore[attr-defined]
    batch = pb.CheckBatchRequest(checks=[flight(ZHAO)])
    assert refusal(lambda: stub.CheckConsumptionBatch(batch)).code() is (
        grpc.StatusCode.UNAVAILABLE
    )


def test_with_no_list_a_bad_request_on_a_stream_is_answered_and_the_stream_goes_on(
    listless: RunningServer,
) -> None:
    answers = listless.stub().CheckConsumptionStream(
        iter([flight(BAD_ID, "r-1"), flight("", "r-2"), flight(ZHAO, "r-3")]), timeout=10
    )
    for rid in ("r-1", "r-2"):
        bad = next(answers)
        assert bad.request_id == rid and bad.decision == pb.DECISION_UNSPECIFIED
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in bad.error.field_violations] == ["subject.person.id_number"]
    with pytest.raises(grpc.RpcError) as ended:  # a good request with no list ends it
        next(answers)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE


# --- scope before rate ----------------------------------------------------------------


@pytest.fixture
def scoped(serve: Serve, tmp_path: Path) -> tuple[RunningServer, tuple[tuple[str, str]]]:
    """A server and a HOTEL-only key with a small bucket (3 checks, 0.2/s refill)."""
    path = tmp_path / "keys.json"
    key = add_key(path, "hotel-chain", ["HOTEL"], ["check"], rate_per_second=0.2, burst=3)
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=path)
    return server, bearer(key)


def test_checks_outside_the_scope_cost_no_tokens(
    scoped: tuple[RunningServer, tuple[tuple[str, str]]],
) -> None:
    server, key = scoped
    stub = server.stub()
    for _ in range(5):  # more than the bucket holds
        error = refusal(lambda: stub.CheckConsumption(flight(ZHAO), metadata=key))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    mixed = pb.CheckBatchRequest(checks=[hotel(), flight(), hotel()])
    for _ in range(3):
        error = refusal(lambda: stub.CheckConsumptionBatch(mixed, metadata=key))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    answers = list(stub.CheckConsumptionStream(
        iter([flight(ZHAO, f"f-{i}") for i in range(5)]), metadata=key, timeout=10,
    ))  # fmt: skip
    assert [a.error.reason for a in answers] == ["CHANNEL_NOT_ALLOWED"] * 5
    # the bucket is still full: three in-scope checks go through at once
    assert stub.CheckConsumption(hotel(ZHAO), metadata=key).decision == pb.ALLOW
    batch = pb.CheckBatchRequest(checks=[hotel(ZHAO), hotel(ZHANG)])
    assert [a.decision for a in stub.CheckConsumptionBatch(batch, metadata=key).results] == [
        pb.ALLOW, pb.DENY,
    ]  # fmt: skip
    error = refusal(lambda: stub.CheckConsumption(hotel(ZHAO), metadata=key))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # the rate still holds


def test_a_bad_request_costs_no_token(
    scoped: tuple[RunningServer, tuple[tuple[str, str]]],
) -> None:
    server, key = scoped
    stub = server.stub()
    for _ in range(5):
        error = refusal(lambda: stub.CheckConsumption(hotel(BAD_ID), metadata=key))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(3):
        assert stub.CheckConsumption(hotel(ZHAO), metadata=key).decision == pb.ALLOW


# --- one retry delay ------------------------------------------------------------------


def test_the_retry_delay_is_the_same_in_the_message_and_the_details(
    scoped: tuple[RunningServer, tuple[tuple[str, str]]],
) -> None:
    server, key = scoped
    stub = server.stub()
    for _ in range(3):
        stub.CheckConsumption(hotel(ZHAO), metadata=key)
    for _ in range(20):  # each at a different moment: a fraction of a millisecond apart
        error = refusal(lambda: stub.CheckConsumption(hotel(ZHAO), metadata=key))
        said = re.search(r"retry in (\d+) ms", error.details())
        assert said is not None, error.details()
        delay = details(error)["RetryInfo"].retry_delay  # type: ignore[attr-defined]
        trailers = dict(error.trailing_metadata())
        assert int(said.group(1)) == delay.ToMilliseconds() == int(trailers["retry-after-ms"])
        assert int(trailers["grpc-retry-pushback-ms"]) == int(said.group(1))
