"""Requests and keys files for the access-control tests: the smallest that show each point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.server.auth import add_key
from tests.conftest import RunningServer
from tests.listdata import ZHAO, basic_rows, write_jsonl

Serve = Callable[..., RunningServer]


def flight(number: str = ZHAO, request_id: str = "", **fields: Any) -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, request_id=request_id, **fields)


def hotel(number: str = ZHAO, request_id: str = "") -> pb.CheckRequest:
    return build_request(
        "HOTEL", id_number=number, purchase={"star_rating": 4}, request_id=request_id
    )


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    """The error a call is refused with (the test fails if it is answered)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """A hotel chain (HOTEL only, check), an operator (status only), a slow caller
    (every channel, 2/s, burst 3); the keys file's path under "path"."""
    path = tmp_path / "keys.json"
    return {
        "path": str(path),
        "hotel": add_key(path, "hotel-chain", ["HOTEL"], ["check"]),
        "ops": add_key(path, "operator", "*", ["status"]),
        "slow": add_key(path, "slow-caller", "*", ["check"], rate_per_second=2, burst=3),
    }


@pytest.fixture
def guarded(serve: Serve, tmp_path: Path, keys: dict[str, str]) -> RunningServer:
    """A server on basic_rows() with authentication on, by the ``keys`` file, and its
    audit and hit logs in ``tmp_path`` (``audit.log``, ``hits.log``)."""
    return serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        keys_file=Path(keys["path"]),
        audit_log=tmp_path / "audit.log",
        hit_log=tmp_path / "hits.log",
    )
