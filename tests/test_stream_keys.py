"""A reload of the keys file reaches streams already open, through a real server.

The keys file is rewritten while a stream is open (atomically, as ``keys
add``/``remove`` do) and the server's watcher reloads it; the stream's next
message is judged by the keys now in force: a narrowed key has its new
channels and rate, a removed key ends the stream with UNAUTHENTICATED.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.server.auth import add_key, read_keys_document, write_keys_document
from tests.accessdata import bearer, flight, hotel
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.test_errors import details
from tests.waiting import eventually

Serve = Callable[..., RunningServer]


class OpenStream:
    """A stream kept open: each ``ask`` sends one request and waits for its answer."""

    def __init__(self, server: RunningServer, key: str) -> None:
        self._outbox: queue.Queue[pb.CheckRequest | None] = queue.Queue()
        self._answers = server.stub().CheckConsumptionStream(
            self._requests(), metadata=bearer(key), timeout=60
        )

    def _requests(self) -> Iterator[pb.CheckRequest]:
        while (request := self._outbox.get()) is not None:
            yield request

    def ask(self, request: pb.CheckRequest) -> pb.CheckResponse:
        self._outbox.put(request)
        return next(self._answers)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._outbox.put(None)


def edit_keys(path: Path, principal: str, **changes: object) -> None:
    """Change (or with ``remove=True`` drop) ``principal``'s entry, in one atomic write."""
    data = read_keys_document(path)
    entries = [e for e in data["keys"] if e["principal"] == principal]
    assert entries, principal
    if changes.pop("remove", False):
        data["keys"] = [e for e in data["keys"] if e["principal"] != principal]
    for entry in entries:
        entry.update(changes)
    write_keys_document(path, data)


def reloads(audit: Path) -> int:
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    return sum(1 for r in records if r["method"] == "KEYS_RELOAD")


@pytest.fixture
def keyed(serve: Serve, tmp_path: Path) -> tuple[RunningServer, Path, Path, str]:
    """A server with a keys file holding one key (HOTEL and AIRLINE, no rate): the
    server, the keys file, the audit log, the key."""
    path = tmp_path / "keys.json"
    key = add_key(path, "travel-agency", ["HOTEL", "AIRLINE"], ["check"])
    add_key(path, "operator", "*", ["status"])  # so the file never empties
    audit = tmp_path / "audit.log"
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=path,
                   audit_log=audit)  # fmt: skip
    return server, path, audit, key


def test_a_narrowed_key_applies_to_an_open_stream_from_its_next_message(
    keyed: tuple[RunningServer, Path, Path, str],
) -> None:
    server, path, audit, key = keyed
    stream = OpenStream(server, key)
    try:
        assert stream.ask(flight(ZHAO, "f-1")).decision == pb.ALLOW
        edit_keys(path, "travel-agency", channels=["HOTEL"], rate_per_second=0.1, burst=1)
        eventually(lambda: reloads(audit) == 1, "the narrowed key reloaded")
        denied = stream.ask(flight(ZHAO, "f-2"))
        assert denied.error.reason == "CHANNEL_NOT_ALLOWED"
        assert stream.ask(hotel(ZHANG, "h-3")).decision == pb.DENY  # the one token of the burst
        limited = stream.ask(hotel(ZHAO, "h-4"))
        assert limited.error.reason == "RATE_LIMITED"
        assert limited.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    finally:
        stream.close()


def test_a_removed_key_ends_an_open_stream(
    keyed: tuple[RunningServer, Path, Path, str],
) -> None:
    server, path, audit, key = keyed
    stream = OpenStream(server, key)
    try:
        assert stream.ask(hotel(ZHAO, "h-1")).decision == pb.ALLOW
        edit_keys(path, "travel-agency", remove=True)
        eventually(lambda: reloads(audit) == 1, "the removed key reloaded")
        with pytest.raises(grpc.RpcError) as ended:
            stream.ask(hotel(ZHAO, "h-2"))
    finally:
        stream.close()
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details(ended.value)["ErrorInfo"].reason == "API_KEY_UNKNOWN"  # type: ignore[attr-defined]
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    last = records[-1]  # the stream's caller, refused
    assert (last["method"], last["caller"], last["outcome"], last["checks"]) == (
        "CheckConsumptionStream", "travel-agency", "UNAUTHENTICATED", 1,
    )  # fmt: skip


def test_a_key_that_loses_the_check_role_ends_an_open_stream(
    keyed: tuple[RunningServer, Path, Path, str],
) -> None:
    server, path, audit, key = keyed
    stream = OpenStream(server, key)
    try:
        assert stream.ask(hotel(ZHAO, "h-1")).decision == pb.ALLOW
        edit_keys(path, "travel-agency", roles=["status"])
        eventually(lambda: reloads(audit) == 1, "the changed key reloaded")
        with pytest.raises(grpc.RpcError) as ended:
            stream.ask(hotel(ZHAO, "h-2"))
    finally:
        stream.close()
    assert ended.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details(ended.value)["ErrorInfo"].reason == "ROLE_NOT_ALLOWED"  # type: ignore[attr-defined]


def test_a_reload_that_leaves_the_key_alone_leaves_the_stream_alone(
    keyed: tuple[RunningServer, Path, Path, str],
) -> None:
    server, path, audit, key = keyed
    stream = OpenStream(server, key)
    try:
        assert stream.ask(hotel(ZHAO, "h-1")).decision == pb.ALLOW
        edit_keys(path, "operator", channels=["RAIL"])
        eventually(lambda: reloads(audit) == 1, "the other key reloaded")
        assert stream.ask(flight(ZHANG, "f-2")).decision == pb.DENY
    finally:
        stream.close()
