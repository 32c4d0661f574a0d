"""Hostile input: every RPC answers every input with a decision or a clear status.

Property-based (hypothesis) over the request's field values, and raw bytes
sent through a generic channel. Bounded example counts, so CI time is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shixin.v1 import check_pb2 as pb
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWED_FAILURES = {grpc.StatusCode.INVALID_ARGUMENT}
DECISIONS = {pb.ALLOW, pb.DENY, pb.REVIEW}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    handle = start_server(settings_for(write_jsonl(folder / "l.jsonl", basic_rows())))
    yield handle
    handle.stop()


ids = st.one_of(
    st.sampled_from([ZHANG, ZHAO, ZHANG.lower(), f" {ZHANG} ", ZHANG[:15], ""]),
    st.text(max_size=40),
    st.text(alphabet="0123456789Xx ０１２３", max_size=20),
)
small_ints = st.one_of(st.integers(-5, 20), st.integers(-(2**31), 2**31 - 1))
purchases = st.one_of(
    st.builds(pb.RailPurchase, train_number=st.text(max_size=8), seat=small_ints).map(
        lambda m: ("rail", m)
    ),
    st.builds(pb.FlightPurchase, flight_number=st.text(max_size=8), cabin=st.text(max_size=3)).map(
        lambda m: ("flight", m)
    ),
    st.builds(pb.HotelPurchase, star_rating=small_ints, high_end=st.booleans()).map(
        lambda m: ("hotel", m)
    ),
    st.builds(pb.ShipPurchase, cabin_class=small_ints).map(lambda m: ("ship", m)),
    st.builds(pb.TravelPurchase, service=small_ints).map(lambda m: ("travel", m)),
    st.builds(pb.LeisurePurchase, venue=small_ints).map(lambda m: ("leisure", m)),
    st.builds(pb.InsurancePurchase, cash_value=st.booleans()).map(lambda m: ("insurance", m)),
    st.builds(pb.RealEstatePurchase, kind=small_ints).map(lambda m: ("real_estate", m)),
    st.none(),
)


@st.composite
def requests(draw: st.DrawFn) -> pb.CheckRequest:
    request = pb.CheckRequest(
        request_id=draw(st.text(max_size=10)),
        channel=draw(small_ints),
        amount_fen=draw(st.integers(-(2**63), 2**63 - 1)),
        merchant_id=draw(st.text(max_size=10)),
    )
    if draw(st.booleans()):
        request.person.id_number = draw(ids)
        request.person.id_type = draw(small_ints)
        request.person.name = draw(st.text(max_size=12))
    elif draw(st.booleans()):
        request.organization.uscc = draw(st.text(max_size=20))
    chosen = draw(purchases)
    if chosen is not None:
        getattr(request, chosen[0]).CopyFrom(chosen[1])
    return request


@FUZZ
@given(requests())
def test_any_request_is_decided_or_refused_clearly(
    server: RunningServer, request: pb.CheckRequest
) -> None:
    try:
        answer = server.stub().CheckConsumption(request, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED_FAILURES, (exc.code(), exc.details())
        assert ": " in exc.details()  # "field: problem"
    else:
        assert answer.decision in DECISIONS


@FUZZ
@given(st.lists(requests(), max_size=5))
def test_any_batch_is_answered_in_order_or_refused(
    server: RunningServer, checks: list[pb.CheckRequest]
) -> None:
    try:
        reply = server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=checks), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED_FAILURES, (exc.code(), exc.details())
        assert exc.details().startswith("checks")
    else:
        assert [r.request_id for r in reply.results] == [c.request_id for c in checks]


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=5))
def test_any_stream_gets_one_answer_per_request_in_order(
    server: RunningServer, checks: list[pb.CheckRequest]
) -> None:
    """Bad requests (fields, missing or repeated request_ids) are answered, never the end."""
    answers = list(server.stub().CheckConsumptionStream(iter(checks), timeout=5))
    assert [a.request_id for a in answers] == [c.request_id for c in checks]
    for answer in answers:
        if answer.HasField("error"):
            assert answer.decision == pb.DECISION_UNSPECIFIED
            assert answer.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert ": " in answer.error.message  # "field: problem"
        else:
            assert answer.decision in DECISIONS


METHODS = [
    "/shixin.v1.ConsumptionCheck/CheckConsumption",
    "/shixin.v1.ConsumptionCheck/CheckConsumptionBatch",
    "/shixin.v1.ConsumptionCheck/GetListStatus",
]


@FUZZ
@given(st.sampled_from(METHODS), st.binary(max_size=64))
def test_raw_bytes_get_a_clear_status(server: RunningServer, method: str, raw: bytes) -> None:
    call = server.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(raw, timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED_FAILURES, (exc.code(), exc.details())
        assert "request is not a valid" in exc.details() or ": " in exc.details()


@FUZZ
@given(st.lists(st.binary(max_size=32), min_size=1, max_size=4))
def test_raw_bytes_in_a_stream_get_a_clear_status(
    server: RunningServer, frames: list[bytes]
) -> None:
    call = server.channel.stream_stream(
        "/shixin.v1.ConsumptionCheck/CheckConsumptionStream",
        request_serializer=None, response_deserializer=None,
    )  # fmt: skip
    try:
        for raw in call(iter(frames), timeout=5):  # frames that parse are answered
            answer = pb.CheckResponse.FromString(raw)
            assert answer.HasField("error") or answer.decision in DECISIONS
    except grpc.RpcError as exc:  # bytes that do not parse end the stream
        assert exc.code() in ALLOWED_FAILURES, (exc.code(), exc.details())


def test_server_still_serves_after_the_fuzzing(server: RunningServer) -> None:
    request = pb.CheckRequest(
        person=pb.PersonSubject(id_number=ZHANG), channel=pb.AIRLINE, flight=pb.FlightPurchase()
    )
    assert server.stub().CheckConsumption(request, timeout=5).decision == pb.DENY
