"""An audit record that cannot be written: the call is INTERNAL, counted, never answered.

Through a real server whose audit log is a link to ``/dev/full`` (every write
fails with ENOSPC, as on a full disk; the link lives in the test's folder, so
the chain head beside it is an ordinary file). As with a failed hit-log write,
no decision leaves the server without its record: the caller gets INTERNAL
with a check id, the refusal is counted, and one line is logged per call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.server.auth import add_key
from tests.accessdata import bearer, flight, hotel, refusal
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import free_port
from tests.test_errors import details
from tests.test_metrics import counted, labels, scrape, value

Serve = Callable[..., RunningServer]
CHECK_ID = re.compile(r"internal error \(check_id ([0-9a-f]{8}-[0-9a-f]+)\)")


@pytest.fixture
def full_audit(tmp_path: Path) -> Path:
    """An audit log path every write to fails with 'No space left on device'."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(full)
    return link


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_failed_audit_write_is_internal_counted_and_nothing_is_answered(
    serve: Serve, tmp_path: Path, full_audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=full_audit,
                   metrics_listen=f"127.0.0.1:{free_port()}")  # fmt: skip
    stub = server.stub()
    calls: dict[str, Callable[[], object]] = {
        "CheckConsumption": lambda: stub.CheckConsumption(flight(ZHANG)),
        "CheckConsumptionBatch": lambda: stub.CheckConsumptionBatch(
            pb.CheckBatchRequest(checks=[flight(ZHAO), flight(ZHANG)])
        ),
        "GetListStatus": lambda: stub.GetListStatus(pb.ListStatusRequest()),
    }
    for method, call in calls.items():
        caplog.clear()
        error = refusal(call)
        assert error.code() is grpc.StatusCode.INTERNAL, method
        found = CHECK_ID.search(error.details())
        assert found is not None, error.details()
        info = details(error)["ErrorInfo"]
        assert info.metadata["check_id"] == found.group(1)  # type: ignore[attr-defined]
        [logged] = errors(caplog)  # one line for the call
        assert f"{method} failed" in logged.getMessage()
        assert f"check_id {found.group(1)}" in logged.getMessage()
        assert "No space left on device" in logged.getMessage()
    samples = scrape(server)
    assert counted(samples, "shixin_refusals_total") == {labels(code="INTERNAL"): 3}
    assert not counted(samples, "shixin_checks_total")  # nothing was answered
    assert not counted(samples, "shixin_hits_total")
    assert value(samples, "shixin_audit_log_errors_total") >= 3


def test_a_failed_audit_write_ends_a_stream_with_internal(
    serve: Serve, tmp_path: Path, full_audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=full_audit)
    answers = server.stub().CheckConsumptionStream(
        iter([flight(ZHAO, "r-1"), flight(ZHAO, "r-2")]), timeout=10
    )
    with pytest.raises(grpc.RpcError) as ended:
        next(answers)
    assert ended.value.code() is grpc.StatusCode.INTERNAL
    assert ended.value.details().startswith("request_id 'r-1': internal error (check_id ")
    assert len(errors(caplog)) == 1
    # the server goes on: the next call is refused the same way, not hung or crashed
    assert refusal(lambda: server.stub().CheckConsumption(flight(ZHAO))).code() is (
        grpc.StatusCode.INTERNAL
    )


def test_a_refusal_that_cannot_be_audited_is_still_that_refusal(
    serve: Serve, tmp_path: Path, full_audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad request, or a caller without credentials, is told so: the failed audit
    write is one line in the log, not a different answer."""
    caplog.set_level(logging.WARNING)
    keys = tmp_path / "keys.json"
    key = add_key(keys, "hotel-chain", ["HOTEL"], ["check"])
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=full_audit,
                   keys_file=keys)  # fmt: skip
    stub = server.stub()
    error = refusal(lambda: stub.CheckConsumption(hotel("123"), metadata=bearer(key)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = refusal(lambda: stub.CheckConsumption(hotel(ZHAO)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    logged = [r.getMessage() for r in errors(caplog)]
    assert len(logged) == 2 and all("not audited: " in line for line in logged), logged
    assert all(r.exc_info is None for r in errors(caplog))  # no traceback for a refusal


def test_a_refusal_on_a_stream_that_cannot_be_audited_is_still_that_refusal(
    serve: Serve, tmp_path: Path, full_audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a stream too: the bad request is answered with its error and the stream goes
    on (it ended INTERNAL when the refusal's audit record failed)."""
    caplog.set_level(logging.WARNING)
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=full_audit)
    requests = iter([hotel("123", request_id="bad-1")])
    [answer] = list(server.stub().CheckConsumptionStream(requests))
    assert (answer.request_id, answer.error.code) == (
        "bad-1", grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )  # fmt: skip
    logged = [r.getMessage() for r in errors(caplog)]
    assert len(logged) == 1 and "not audited: " in logged[0], logged
