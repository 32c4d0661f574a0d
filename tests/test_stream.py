"""A gateway's stream survives its bad requests, through a real server.

Each bad request (a bad field, a missing, over-long or duplicate request_id,
a channel outside the caller's scope, the caller's rate) is answered in
order with its request_id and ``error``, and the stream goes on; only a
broken stream (bytes that do not parse, a refusal at its start) ends.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import InvalidInput
from shixin_check.server.convert import StreamIds
from tests.accessdata import bearer, flight, hotel
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    return serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=tmp_path / "audit.log")


def stream(
    server: RunningServer, requests: list[pb.CheckRequest], **kw: object
) -> list[pb.CheckResponse]:
    return list(server.stub().CheckConsumptionStream(iter(requests), timeout=10, **kw))


def assert_refused(answer: pb.CheckResponse, request_id: str, field: str, reason: str) -> None:
    """An answer with no decision, carrying its request_id and the problem of ``field``."""
    assert answer.request_id == request_id
    assert answer.HasField("error")
    assert answer.decision == pb.DECISION_UNSPECIFIED
    assert not (answer.reasons or answer.matches or answer.check_id or answer.list_version)
    assert answer.error.code == INVALID_ARGUMENT
    assert answer.error.reason == reason
    [violation] = answer.error.field_violations
    assert violation.field == field
    assert answer.error.message == f"{field}: {violation.description}"


def test_good_bad_good_gets_three_answers_in_order(server: RunningServer) -> None:
    good, bad, again = stream(
        server, [flight(ZHANG, "r-1"), flight("110105", "r-2"), flight(ZHAO, "r-3")]
    )
    assert (good.request_id, good.decision, good.HasField("error")) == ("r-1", pb.DENY, False)
    assert_refused(bad, "r-2", "subject.person.id_number", "INVALID_FIELD")
    assert (again.request_id, again.decision, again.HasField("error")) == ("r-3", pb.ALLOW, False)


def test_a_missing_request_id_is_refused_and_the_stream_goes_on(server: RunningServer) -> None:
    missing, good = stream(server, [flight(ZHANG), flight(ZHANG, "r-2")])
    assert_refused(missing, "", "request_id", "REQUEST_ID_MISSING")
    assert (good.request_id, good.decision) == ("r-2", pb.DENY)


def test_a_duplicate_request_id_is_refused(server: RunningServer) -> None:
    first, duplicate, other = stream(
        server, [flight(ZHAO, "dup"), flight(ZHANG, "dup"), flight(ZHANG, "other")]
    )
    assert (first.request_id, first.decision) == ("dup", pb.ALLOW)
    assert_refused(duplicate, "dup", "request_id", "REQUEST_ID_DUPLICATE")
    assert "'dup' is already in use on this stream" in duplicate.error.message
    assert (other.request_id, other.decision) == ("other", pb.DENY)
    # ids are per stream: another stream may use "dup" again
    [again] = stream(server, [flight(ZHAO, "dup")])
    assert (again.request_id, again.decision) == ("dup", pb.ALLOW)


def test_a_refused_request_may_be_sent_again_under_its_id(server: RunningServer) -> None:
    """A refused request was answered (``error``): corrected, it comes again under the
    id its booking knows it by, and is decided; an answered decision's id stays taken."""
    bad, fixed, again = stream(
        server, [flight("110105", "r-1"), flight(ZHANG, "r-1"), flight(ZHAO, "r-1")]
    )
    assert_refused(bad, "r-1", "subject.person.id_number", "INVALID_FIELD")
    assert (fixed.request_id, fixed.decision, fixed.HasField("error")) == ("r-1", pb.DENY, False)
    assert_refused(again, "r-1", "request_id", "REQUEST_ID_DUPLICATE")


def test_request_ids_must_differ_only_within_the_window() -> None:
    ids = StreamIds(window=3)
    for rid in ("a", "b", "c"):
        ids.admit(rid)
    with pytest.raises(InvalidInput) as caught:
        ids.admit("a")
    assert caught.value.reason == "REQUEST_ID_DUPLICATE"
    ids.admit("d")  # "a" falls out of the window of the last three ...
    ids.admit("a")  # ... and may be used again
    with pytest.raises(InvalidInput):
        ids.admit("d")


def test_an_oversize_field_is_refused_and_the_stream_goes_on(server: RunningServer) -> None:
    huge = flight(ZHANG, "r-1", name="张" * 200_000)
    long_id = flight(ZHANG, "x" * 129)
    refused, too_long_id, good = stream(server, [huge, long_id, flight(ZHANG, "r-3")])
    assert_refused(refused, "r-1", "subject.person.name", "FIELD_TOO_LONG")
    assert "200000 characters" in refused.error.message
    assert_refused(too_long_id, "x" * 129, "request_id", "FIELD_TOO_LONG")
    assert (good.request_id, good.decision) == ("r-3", pb.DENY)


def test_refused_stream_requests_are_audited(server: RunningServer, tmp_path: Path) -> None:
    stream(server, [flight(ZHANG, "r-1"), flight("110105", "r-2"), flight(ZHAO)])
    records = [orjson.loads(x) for x in (tmp_path / "audit.log").read_bytes().splitlines()]
    outcomes = [r["outcome"] for r in records if r["method"] == "CheckConsumptionStream"]
    assert outcomes == ["DENY", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]


def test_bytes_that_do_not_parse_end_the_stream(server: RunningServer) -> None:
    call = server.channel.stream_stream(
        "/shixin.v1.ConsumptionCheck/CheckConsumptionStream",
        request_serializer=None, response_deserializer=pb.CheckResponse.FromString,
    )  # fmt: skip
    frames = [
        flight(ZHANG, "r-1").SerializeToString(),
        b"\xff\xff\xff",
        flight(ZHAO, "r-3").SerializeToString(),
    ]
    answers = call(iter(frames), timeout=10)
    assert next(answers).request_id == "r-1"
    with pytest.raises(grpc.RpcError) as caught:
        next(answers)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid shixin.v1.CheckRequest" in caught.value.details()


# --- with authentication on ------------------------------------------------------


def test_a_channel_outside_the_scope_is_refused_for_that_request_only(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    ok, denied, again = stream(
        guarded, [hotel(ZHAO, "h-1"), flight(ZHAO, "f-2"), hotel(ZHANG, "h-3")],
        metadata=bearer(keys["hotel"]),
    )  # fmt: skip
    assert (ok.request_id, ok.decision) == ("h-1", pb.ALLOW)
    assert denied.request_id == "f-2" and denied.decision == pb.DECISION_UNSPECIFIED
    assert denied.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "channel AIRLINE is outside the scope" in denied.error.message
    assert dict(denied.error.metadata) == {"principal": "hotel-chain", "channel": "AIRLINE"}
    assert denied.error.reason == "CHANNEL_NOT_ALLOWED"
    assert (again.request_id, again.decision) == ("h-3", pb.DENY)


def test_a_rate_limited_request_says_when_to_retry_and_the_stream_goes_on(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    requests = [flight(ZHAO, f"r-{i}") for i in range(5)]
    answers = stream(guarded, requests, metadata=bearer(keys["slow"]))
    assert [a.request_id for a in answers] == [f"r-{i}" for i in range(5)]
    assert [a.decision for a in answers[:3]] == [pb.ALLOW] * 3  # the burst
    limited = answers[3]
    assert limited.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert 0 < limited.error.retry_after_ms <= 500
    assert limited.error.reason == "RATE_LIMITED"


def test_a_rate_limited_request_goes_again_under_its_id_on_the_same_stream(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    def requests() -> Iterator[pb.CheckRequest]:
        for i in range(4):  # the burst of three, then one refused
            yield flight(ZHAO, f"r-{i}")
        time.sleep(0.6)  # past any retry_after_ms (at most 500)
        yield flight(ZHAO, "r-3")  # the refused one, under its own id

    answers = list(guarded.stub().CheckConsumptionStream(
        requests(), timeout=10, metadata=bearer(keys["slow"])))  # fmt: skip
    assert answers[3].error.reason == "RATE_LIMITED"
    retried = answers[4]
    assert (retried.request_id, retried.decision, retried.HasField("error")) == (
        "r-3", pb.ALLOW, False)  # fmt: skip


def test_a_refusal_at_stream_start_ends_it(guarded: RunningServer, keys: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stream(guarded, [flight(ZHAO, "r-1")])
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        stream(guarded, [flight(ZHAO, "r-1")], metadata=bearer(keys["ops"]))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 §4.1)."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _header(name: str, value: str) -> bytes:
    """An HPACK literal header field, never indexed, new name, no Huffman (RFC 7541 §6.2.3)."""
    raw_name, raw_value = name.encode(), value.encode()
    assert len(raw_name) < 127 and len(raw_value) < 127
    return b"\x10" + bytes((len(raw_name),)) + raw_name + bytes((len(raw_value),)) + raw_value


def test_a_stream_caller_gone_while_its_answer_waits_for_room_leaves_no_traceback(
    tmp_path: Path,
) -> None:
    """A caller that stops reading (its window full: each answer waits for room) and then
    closes its socket made grpcio log an ERROR, `ExecuteBatchError raised in core by
    servicer method`, with a traceback, once a connection: the write failed in grpcio's
    own loop over the answers yielded. Written by the service, it ends the call quietly."""
    server = ServeProcess("--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
                          "--metrics-listen", "off", log=tmp_path / "serve.log")  # fmt: skip
    try:
        server.wait_serving()
        body = flight(ZHANG).SerializeToString()
        message = b"\x00" + len(body).to_bytes(4, "big") + body
        headers = b"".join(_header(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"),
            (":path", "/shixin.v1.ConsumptionCheck/CheckConsumptionStream"),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers"),
        ))  # fmt: skip
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as caller:
                # a window of 16 bytes for each stream's answers, never opened further
                settings = (4).to_bytes(2, "big") + (16).to_bytes(4, "big")
                caller.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings))
                caller.sendall(_frame(1, 4, 1, headers))  # HEADERS, END_HEADERS, stream 1
                caller.sendall(b"".join(_frame(0, 0, 1, message) for _ in range(50)))
                time.sleep(1.0)  # the first answer waits for room; the caller goes
        eventually(lambda: server.proc.poll() is None, "the server still up")
        time.sleep(1.0)
    finally:
        server.stop()
    output = server.output()
    assert "ExecuteBatchError" not in output and "Traceback" not in output, output
