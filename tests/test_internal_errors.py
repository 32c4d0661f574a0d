"""An unexpected exception in a handler: INTERNAL, one logged traceback, one check id.

Through a real server on a free port. The list index is swapped for
``BrokenSource``, whose view fails on every read as a backend bug would;
everything above it (engine, servicer, audit log, grpc) is the real one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import mask_id
from shixin_check.domain.index import ListedMatch, VersionInfo
from tests.conftest import RunningServer, log_records
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, write_jsonl

CHECK_ID = re.compile(r"check_id ([0-9a-f]{8}-[0-9a-f]+)")


class BrokenView:
    """A list view whose every read raises, as a bug in an index backend would."""

    def _fail(self) -> RuntimeError:
        return RuntimeError("index backend exploded")

    @property
    def info(self) -> VersionInfo:
        raise self._fail()

    def might_contain(self, key: int) -> bool:
        raise self._fail()

    def look_up(self, key: int) -> Sequence[ListedMatch]:
        raise self._fail()

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        raise self._fail()


class BrokenSource:
    """An index source that hands out a ``BrokenView``."""

    def current(self) -> BrokenView:
        return BrokenView()


def rail(number: str, request_id: str = "") -> pb.CheckRequest:
    seat = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    return build_request("RAIL", id_number=number, purchase=seat, request_id=request_id)


Call = Callable[[pb_grpc.ConsumptionCheckStub], object]

CALLS: dict[str, tuple[Call, str]] = {  # method -> (the call, the masked subject it logs)
    "CheckConsumption": (lambda stub: stub.CheckConsumption(rail(ZHANG)), mask_id(ZHANG)),
    "CheckConsumptionBatch": (
        lambda stub: stub.CheckConsumptionBatch(
            pb.CheckBatchRequest(checks=[rail(ZHANG), rail(LI)])
        ),
        "-",
    ),
    "CheckConsumptionStream": (
        lambda stub: list(stub.CheckConsumptionStream(iter([rail(ZHANG, "r-7"), rail(LI)]))),
        mask_id(ZHANG),
    ),
    "GetListStatus": (lambda stub: stub.GetListStatus(pb.ListStatusRequest()), "-"),
}


@pytest.fixture
def broken(tmp_path: Path, serve: Callable[..., RunningServer]) -> Iterator[RunningServer]:
    """A real server with an audit log whose index fails on every read; mended afterwards."""
    server = serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()),
                   audit_log=tmp_path / "audit.jsonl")  # fmt: skip
    engine = server.service.engine
    real = engine.source
    engine.source = BrokenSource()
    yield server
    engine.source = real


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("method", list(CALLS))
def test_an_unexpected_exception_is_internal_logged_once_and_audited(
    method: str, broken: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    call, subject = CALLS[method]
    with pytest.raises(grpc.RpcError) as failed:
        call(broken.stub())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    message = failed.value.details()
    found = CHECK_ID.search(message)
    assert found is not None, message
    check_id = found.group(1)
    assert check_id.startswith(broken.service.engine._prefix)
    if method == "CheckConsumptionStream":
        assert message.startswith("request_id 'r-7': internal error (check_id ")
    [logged] = errors(caplog)  # once: grpc does not log the aborted call again
    assert logged.name == "shixin.server"
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError
    text = logged.getMessage()
    assert f"{method} failed" in text and f"check_id {check_id}" in text
    assert f"subject {subject}" in text
    assert "Traceback" in caplog.text and "index backend exploded" in caplog.text
    assert not any(n in caplog.text for n in (ZHANG, LI))
    audited = log_records(tmp_path / "audit.jsonl")[-1]
    assert (audited["method"], audited["outcome"]) == (method, "INTERNAL")
    assert audited["check_id"] == check_id


def test_the_server_keeps_serving_and_numbering_after_a_failure(
    broken: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stub = broken.stub()
    ids = []
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as failed:
            stub.CheckConsumption(rail(ZHANG))
        found = CHECK_ID.search(failed.value.details())
        assert found is not None
        ids.append(found.group(1))
    assert ids[0] != ids[1] and len(errors(caplog)) == 2
    engine = broken.service.engine
    engine.source = broken.service.index  # mended
    answer = stub.CheckConsumption(rail(ZHANG))
    assert answer.decision == pb.DENY
    prefix, n = answer.check_id.rsplit("-", 1)
    assert f"{prefix}-" == engine._prefix and int(n, 16) > int(ids[1].rsplit("-", 1)[1], 16)
    assert stub.CheckConsumption(rail(ZHAO)).decision == pb.ALLOW


def test_an_expected_failure_is_not_logged_as_an_error(
    broken: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bad = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    with pytest.raises(grpc.RpcError) as failed:
        broken.stub().CheckConsumption(rail(bad))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "check_id" not in failed.value.details()
    assert errors(caplog) == []
