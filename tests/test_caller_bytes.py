"""A caller's bytes never put a traceback in the server's log (a traceback there is a bug).

A real ``shixin-check serve`` child writes its log to a file; the calls come
over real sockets: a hand-framed HTTP/2 request for header values that no
gRPC library would send (bytes that are not UTF-8), and grpc channels with
identity serialisers for bodies that are not the method's message, to the
standard health and reflection services. Each is one WARNING line in the
log, and the bodies are INVALID_ARGUMENT with ``MALFORMED_REQUEST``, as for
``shixin.v1.ConsumptionCheck``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tests.listdata import basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.waiting import eventually

GARBAGE = b"\xff\xff"  # a field number 0 wire tag: never a message


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    """A single server on a small list, its output in ``serve.log``."""
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    path = write_jsonl(tmp_path / "s.jsonl", [header, *basic_rows()])
    (tmp_path / "key").write_text("tests-only-secret-0123456789abcdef")
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    running = ServeProcess("--list", str(path), "--key-secret-file", str(tmp_path / "key"),
                           "--index-dir", "off", log=tmp_path / "serve.log")  # fmt: skip
    try:
        running.wait_serving()
        yield running
    finally:
        running.stop()


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header without indexing, lengths under 127."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def raw_call(port: int, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """One gRPC call framed by hand, so header values may be any bytes; what came back."""
    block = b"".join(
        _literal(k, v)
        for k, v in [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                     (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"),
                     (b"te", b"trailers"), *headers]
    )  # fmt: skip
    message = b"\x00" + struct.pack(">I", len(body)) + body
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        conn.sendall(_frame(1, 4, 1, block) + _frame(0, 1, 1, message))  # END_HEADERS, END_STREAM
        conn.settimeout(2)
        try:
            while b"grpc-status" not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


def test_header_values_that_are_not_utf8_are_one_warning_line(server: ServeProcess) -> None:
    headers = [(b"user-agent", b"\xff\xfe"), (b"x-request-id", b"caf\xe9")]
    answered = raw_call(server.port, "/shixin.v1.ConsumptionCheck/GetListStatus", headers, b"")
    assert b"grpc-status" in answered  # answered, as grpcio reads the values as Latin-1
    server.wait_serving()
    eventually(lambda: server.output().count("not UTF-8") == 2, "a line for each value")
    log = server.output()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "\\xff" not in log and "caf" not in log  # the bytes themselves (a credential?) stay out


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def test_bodies_that_do_not_parse_are_invalid_argument_for_health_and_reflection(
    server: ServeProcess,
) -> None:
    calls = {
        "/grpc.health.v1.Health/Check": "unary_unary",
        "/grpc.health.v1.Health/Watch": "unary_stream",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "stream_stream",
    }
    with grpc.insecure_channel(server.target) as channel:
        for method, kind in calls.items():
            call = getattr(channel, kind)(
                method, request_serializer=bytes, response_deserializer=bytes
            )
            body = iter([GARBAGE]) if kind == "stream_stream" else GARBAGE
            with pytest.raises(grpc.RpcError) as refused:
                reply = call(body, timeout=10)
                if kind != "unary_unary":
                    list(reply)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, refused.value)
            assert "request is not a valid" in str(refused.value.details())
            assert reason_of(refused.value) == "MALFORMED_REQUEST"
        health = health_pb2_grpc.HealthStub(channel)  # the services themselves go on as ever
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    log = server.output()
    assert "Traceback" not in log and "ERROR" not in log, log
    for method in calls:
        assert log.count(f"{method[1:]} from ") == 1, log
