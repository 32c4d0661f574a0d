"""A string field that is not UTF-8 is refused as that field, not as the whole message.

protobuf refuses a message for one string that is not valid UTF-8 without
saying which; a gateway that cut a name in the middle of a character (a Node
client slicing UTF-16) or sent GBK learned only that its batch was "not a valid
CheckBatchRequest", and a stream ended there, losing the requests behind it.
Through a real server and channel, with the bytes as such gateways send them.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import error_details
from shixin_check.server.wire_text import MOST_FIELDS, NOT_UTF8, bad_text
from tests.accessdata import flight
from tests.conftest import RunningServer, log_records
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_errors import reason, refused, violations

GBK_NAME = "张伟".encode("gbk")  # 4 bytes: what a legacy till sends
HALF = "伟".encode()[:2]  # a character cut in two


def spoiled(message: pb.CheckRequest | pb.CheckBatchRequest, marker: str, bad: bytes) -> bytes:
    """``message`` serialised, with the text ``marker`` (as many bytes as ``bad``) replaced
    by ``bad``: every length stays right, only the text is not UTF-8."""
    raw = message.SerializeToString()
    assert len(marker.encode()) == len(bad) and raw.count(marker.encode()) == 1
    return raw.replace(marker.encode(), bad)


@pytest.fixture
def server(tmp_path: Path, serve) -> RunningServer:  # type: ignore[no-untyped-def]
    return serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=tmp_path / "audit.jsonl"
    )


def raw_call(server: RunningServer, method: str):  # type: ignore[no-untyped-def]
    return server.channel.unary_unary(
        f"/shixin.v1.ConsumptionCheck/{method}", request_serializer=None,
        response_deserializer=None,
    )  # fmt: skip


def test_a_name_in_gbk_is_refused_as_that_field_and_audited_with_its_subject(
    server: RunningServer, tmp_path: Path
) -> None:
    body = spoiled(flight(ZHANG, name="ABCD"), "ABCD", GBK_NAME)
    error = refused(lambda: raw_call(server, "CheckConsumption")(body))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "INVALID_FIELD"
    assert violations(error) == [("subject.person.name", NOT_UTF8)]
    [record] = [r for r in log_records(tmp_path / "audit.jsonl") if r["outcome"] != "OK"]
    assert record["outcome"] == "INVALID_ARGUMENT"
    assert record["subject"] == f"{ZHANG[:6]}********{ZHANG[-4:]}"  # the rest was readable


def test_a_bad_name_in_a_batch_names_its_check(server: RunningServer) -> None:
    checks = [flight(ZHAO) for _ in range(500)]
    checks[317] = flight(ZHANG, name="张XX")
    body = spoiled(pb.CheckBatchRequest(checks=checks), "XX", HALF)
    error = refused(lambda: raw_call(server, "CheckConsumptionBatch")(body))
    assert violations(error) == [("checks[317].subject.person.name", NOT_UTF8)]
    assert reason(error) == "INVALID_FIELD"


def test_a_stream_answers_the_bad_request_with_its_error_and_goes_on(
    server: RunningServer,
) -> None:
    call = server.channel.stream_stream(
        "/shixin.v1.ConsumptionCheck/CheckConsumptionStream",
        request_serializer=None, response_deserializer=pb.CheckResponse.FromString,
    )  # fmt: skip
    bodies = [
        flight(ZHANG, request_id="r1").SerializeToString(),
        spoiled(flight(ZHANG, request_id="r2", name="ABCD"), "ABCD", GBK_NAME),
        spoiled(flight(ZHAO, request_id="r3", terminal_id="T-XX"), "XX", HALF),
        flight(ZHANG, request_id="r4").SerializeToString(),
    ]
    answers = list(call(iter(bodies), timeout=30))
    assert [a.request_id for a in answers] == ["r1", "r2", "r3", "r4"]
    assert answers[0].decision == answers[3].decision == pb.DENY
    for answer, field in ((answers[1], "subject.person.name"), (answers[2], "terminal_id")):
        told = error_details(answer)
        assert told is not None and told.reason == "INVALID_FIELD"
        assert told.field_violations == [(field, NOT_UTF8)]


def test_bytes_wrong_beyond_their_text_are_still_refused_whole(server: RunningServer) -> None:
    body = spoiled(flight(ZHANG, name="ABCD"), "ABCD", GBK_NAME)[:-3]  # and cut short
    error = refused(lambda: raw_call(server, "CheckConsumption")(body))
    assert reason(error) == "MALFORMED_REQUEST"
    [(field, problem)] = violations(error)
    assert field == "" and "not a valid shixin.v1.CheckRequest" in problem


# --- the walk itself ------------------------------------------------------------


def test_the_walk_names_the_first_bad_string_and_mends_every_one() -> None:
    checks = [flight(ZHAO, request_id=f"q{i}") for i in range(3)]
    checks[1] = flight(ZHAO, request_id="qXX", merchant_id="M-ABCD")
    raw = spoiled(pb.CheckBatchRequest(checks=checks), "XX", HALF)
    raw = raw.replace(b"M-ABCD", b"M-" + GBK_NAME)
    with pytest.raises(Exception, match="UTF-8"):
        pb.CheckBatchRequest.FromString(raw)
    found = bad_text(raw, pb.CheckBatchRequest.DESCRIPTOR)
    assert found is not None
    field, mended = found
    assert field == "checks[1].request_id"  # the first in the bytes
    again = pb.CheckBatchRequest.FromString(mended)
    assert again.checks[1].request_id == "q\ufffd"
    assert again.checks[1].merchant_id == (b"M-" + GBK_NAME).decode("utf-8", "replace")
    assert again.checks[0] == checks[0] and again.checks[2] == checks[2]


@pytest.mark.parametrize(
    "raw", [b"", flight(ZHAO).SerializeToString(), b"\xff\xff\xff", b"\x12\x10short"]
)
def test_the_walk_finds_nothing_in_good_text_or_in_what_is_no_message(raw: bytes) -> None:
    assert bad_text(raw, pb.CheckRequest.DESCRIPTOR) is None


def test_a_whole_batch_is_walked_but_a_message_of_countless_tiny_fields_is_not() -> None:
    """A batch of 1,000 checks is within the walk's bound (``MOST_FIELDS``); 4 MiB of
    one-byte fields is not: refused whole, as before, rather than walked for seconds
    on the event loop (an unauthenticated caller's, before any credentials are read)."""
    checks = [flight(ZHAO, request_id=f"b{i}", merchant_id="M-1") for i in range(1000)]
    checks[999] = flight(ZHAO, request_id="bXX", merchant_id="M-1")
    raw = spoiled(pb.CheckBatchRequest(checks=checks), "XX", HALF)
    found = bad_text(raw, pb.CheckBatchRequest.DESCRIPTOR)
    assert found is not None and found[0] == "checks[999].request_id"
    countless = b"\x32\x01a" * (MOST_FIELDS + 1) + spoiled(
        flight(ZHANG, name="ABCD"), "ABCD", GBK_NAME
    )
    with pytest.raises(Exception, match="UTF-8"):
        pb.CheckRequest.FromString(countless)
    assert bad_text(countless, pb.CheckRequest.DESCRIPTOR) is None


def test_a_batch_with_bad_text_is_held_to_its_size_first_and_audited_with_its_checks(
    server: RunningServer, tmp_path: Path
) -> None:
    """As any batch: over 1,000 checks is BATCH_TOO_LARGE whatever else is wrong, and the
    audit record counts the checks asked for (it said 0 for a batch refused so)."""
    too_many = [flight(ZHAO) for _ in range(1001)]
    too_many[700] = flight(ZHANG, name="张XX")
    body = spoiled(pb.CheckBatchRequest(checks=too_many), "XX", HALF)
    error = refused(lambda: raw_call(server, "CheckConsumptionBatch")(body))
    assert reason(error) == "BATCH_TOO_LARGE"
    ten = [flight(ZHAO) for _ in range(10)]
    ten[3] = flight(ZHANG, name="张XX")
    body = spoiled(pb.CheckBatchRequest(checks=ten), "XX", HALF)
    error = refused(lambda: raw_call(server, "CheckConsumptionBatch")(body))
    assert violations(error) == [("checks[3].subject.person.name", NOT_UTF8)]
    records = [r for r in log_records(tmp_path / "audit.jsonl") if r["outcome"] != "OK"]
    assert [(r["outcome"], r["checks"]) for r in records] == [
        ("INVALID_ARGUMENT", 1001), ("INVALID_ARGUMENT", 10)
    ]  # fmt: skip
