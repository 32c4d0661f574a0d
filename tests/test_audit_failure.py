"""An audit record that cannot be written: the call is INTERNAL, counted, never answered.

Through a real server whose audit log is a link to ``/dev/full`` (every write
fails with ENOSPC, as on a full disk; the link lives in the test's folder, so
the chain head beside it is an ordinary file). As with a failed hit-log write,
no decision leaves the server without its record: the caller gets INTERNAL
with a check id, the refusal is counted, and one line is logged per call.

A hit record is written before the audit record, so a call that fails so has
logged hits under check ids no client ever got: they are withdrawn in the hit
log, and the quarterly feedback (``shixin-check feedback``, run as a command)
does not count them; the client's retry is counted once. A withdrawal the disk
refuses too (the file size limit of a server process: the audit log past it,
the hit log with room for one hit only) is logged with its check id and the
line that withdraws it. So are, in the same way, the hits a batch logged before
one of its hit records could not be written (the call is INTERNAL too).
"""

from __future__ import annotations

import logging
import re
import resource
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.domain.identity import mask_id
from shixin_check.server.auth import add_key
from shixin_check.server.hitlog import WITHDRAWN_HIT_UNWRITTEN, WITHDRAWN_UNAUDITED, log_files
from tests.accessdata import bearer, flight, hotel, refusal
from tests.conftest import SECRET, RunningServer, settings_for, start_server
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess, free_port, run_cli
from tests.test_errors import details
from tests.test_feedback import current_quarter
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
    """The ERROR lines of calls: not health's (NOT_SERVING from the start on a full disk)."""
    return [
        r for r in caplog.records
        if r.levelno >= logging.ERROR and not r.getMessage().startswith("health: ")
    ]  # fmt: skip


def test_a_failed_audit_write_is_internal_counted_and_no_check_is_answered(
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
    # the operator's diagnosis is answered without its record, saying why
    status = stub.GetListStatus(pb.ListStatusRequest())
    assert "(--audit-log) cannot be written" in status.not_serving_reason, status
    samples = scrape(server)
    assert counted(samples, "shixin_refusals_total") == {labels(code="INTERNAL"): 2}
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


# --- the hits of a call that was not answered ----------------------------------------

Stub = pb_grpc.ConsumptionCheckStub


def _unary(stub: Stub, numbers: Sequence[str]) -> list[pb.CheckResponse]:
    return [stub.CheckConsumption(flight(number)) for number in numbers]


def _batch(stub: Stub, numbers: Sequence[str]) -> list[pb.CheckResponse]:
    reply = stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=[flight(n) for n in numbers]))
    return list(reply.results)


def _stream(stub: Stub, numbers: Sequence[str]) -> list[pb.CheckResponse]:
    requests = iter([flight(number, f"r-{i}") for i, number in enumerate(numbers)])
    return list(stub.CheckConsumptionStream(requests, timeout=10))


#: each method, how it is called, and the subjects it checks (Zhang and Li are listed):
#: a stream's first message fails, so it checks one listed subject
CALLS: dict[str, tuple[Callable[[Stub, Sequence[str]], list[pb.CheckResponse]], list[str]]] = {
    "CheckConsumption": (_unary, [ZHANG]),
    "CheckConsumptionBatch": (_batch, [ZHAO, ZHANG, LI]),
    "CheckConsumptionStream": (_stream, [ZHANG]),
}


def hit_log_lines(path: Path) -> list[dict[str, Any]]:
    """Every record of the hit-log set at ``path``, rotated files first."""
    return [orjson.loads(raw) for f in log_files(path) for raw in f.read_bytes().splitlines()]


def feedback(hits: Path, out: Path) -> tuple[dict[str, Any], str]:
    """``shixin-check feedback`` of this quarter over ``hits``, as a command: the JSON
    report's totals, and its summary on standard error."""
    done = run_cli("feedback", "--quarter", current_quarter(), "--format", "json",
                   "--out", str(out), "--hit-log", str(hits))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return orjson.loads(out.read_bytes())["totals"], done.stderr


@pytest.mark.parametrize("method", list(CALLS))
def test_the_hits_of_a_call_whose_audit_write_failed_are_withdrawn_and_not_fed_back(
    method: str, serve: Serve, tmp_path: Path, full_audit: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    call, numbers = CALLS[method]
    listed_numbers = [n for n in numbers if n != ZHAO]
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    hits = tmp_path / "logs" / "hits.jsonl"
    failing = start_server(settings_for(listed, hit_log=hits, audit_log=full_audit))
    try:
        error = refusal(lambda: call(failing.stub(), numbers))
        assert error.code() is grpc.StatusCode.INTERNAL
        [logged] = errors(caplog)  # the call's line: the withdrawal itself was written
        assert f"{method} failed" in logged.getMessage()
    finally:
        failing.stop()
    *written, withdrawal = hit_log_lines(hits)
    if len(written) == 1:  # one answer made, not sent: the caller, the log and the hit log
        named = CHECK_ID.search(error.details())  # share its id (before, a new id was told)
        assert named is not None and named.group(1) == written[0]["check_id"], error.details()
        assert f"check_id {named.group(1)}" in logged.getMessage()
        assert "the check was decided but not answered (withdrawn)" in error.details()
    assert [r["masked_id"] for r in written] == [mask_id(n) for n in listed_numbers]
    assert [r["decision"] for r in written] == ["DENY"] * len(listed_numbers)
    assert withdrawal == {
        "time": withdrawal["time"],
        "withdrawn": [r["check_id"] for r in written],  # each hit of the call, in one record
        "reason": WITHDRAWN_UNAUDITED,
    }
    assert withdrawal["time"] >= written[-1]["time"]
    totals, summary = feedback(hits, tmp_path / "before.json")
    assert (totals["checks"], totals["denied"], totals["withdrawn"]) == (
        0, 0, len(listed_numbers)
    )  # fmt: skip
    assert (totals["skipped_lines"], totals["duplicates"]) == (0, 0)
    assert f" {len(listed_numbers)} withdrawn, " in summary, summary
    assert "none of the" not in summary  # the withdrawn hits were read in the quarter

    # the client retries, once the audit log takes records again: each check counted once
    retry = serve(listed, hit_log=hits, audit_log=tmp_path / "logs" / "audit.jsonl")
    answers = call(retry.stub(), numbers)
    answered = [a.check_id for a in answers if a.matches]
    assert len(answered) == len(listed_numbers)
    assert not set(answered) & set(withdrawal["withdrawn"])  # new checks, new check ids
    totals, summary = feedback(hits, tmp_path / "after.json")
    assert (totals["checks"], totals["denied"], totals["withdrawn"]) == (
        len(listed_numbers), len(listed_numbers), len(listed_numbers)
    )  # fmt: skip


def _samples(port: int) -> dict[str, float]:
    """The unlabelled samples of a server process's metrics endpoint, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if not s.labels}  # fmt: skip


def test_a_withdrawal_the_disk_refuses_too_is_logged_with_its_check_id(tmp_path: Path) -> None:
    """The audit record and then the withdrawal are refused (the server process's
    file size limit, as a full disk would): the call is INTERNAL as before, the
    failed withdrawal counts as a hit-log write error, and one line names the check
    id and the line that withdraws it, which mends the feedback once appended."""
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    (tmp_path / "key").write_bytes(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    hits, audit, metrics = tmp_path / "hits.jsonl", tmp_path / "audit.jsonl", free_port()
    server = ServeProcess("--list", str(listed), "--key-secret-file", str(tmp_path / "key"),
                          "--index-dir", "off", "--hit-log", str(hits), "--audit-log", str(audit),
                          "--metrics-listen", f"127.0.0.1:{metrics}")  # fmt: skip
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        for _ in range(40):  # audit records only: that log grows past the limit set below
            stub.CheckConsumption(flight(ZHAO))
        stub.CheckConsumption(flight(ZHANG))  # answered: the hit log holds one hit
        one_hit = hits.stat().st_size
        limit = 2 * one_hit + 48  # room for one more hit, not for a withdrawal after it
        assert audit.stat().st_size > limit
        _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
        error = refusal(lambda: stub.CheckConsumption(flight(ZHANG)))
        assert error.code() is grpc.StatusCode.INTERNAL
        samples = _samples(metrics)
        channel.close()
    finally:
        server.stop()
    assert server.proc.stdout is not None
    logged = server.proc.stdout.read().splitlines()  # all of it: the server has stopped
    [line] = [text for text in logged if "withdrawing them failed" in text]
    *_, unanswered = hit_log_lines(hits)  # the hit stays, its withdrawal is not there
    assert unanswered["masked_id"] == mask_id(ZHANG)
    assert f"CheckConsumption: the hit records of check_id {unanswered['check_id']} " in line
    assert "File too large" in line and f"appended to {hits}: " in line, line
    assert samples["shixin_hit_log_errors_total"] == 1
    assert samples["shixin_audit_log_errors_total"] >= 1
    assert feedback(hits, tmp_path / "unmended.json")[0]["checks"] == 2
    mend = line[line.index('{"withdrawn"') :].strip()  # as the on-call person would
    assert orjson.loads(mend) == {"withdrawn": [unanswered["check_id"]],
                                  "reason": WITHDRAWN_UNAUDITED}  # fmt: skip
    with hits.open("a") as f:
        f.write(mend + "\n")
    totals, _ = feedback(hits, tmp_path / "mended.json")
    assert (totals["checks"], totals["withdrawn"]) == (1, 1)


# --- a batch whose later hit record could not be written -----------------------------


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a server process's metrics endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.mark.parametrize("withdrawal_fits", [True, False], ids=["withdrawn", "logged"])
def test_a_batch_whose_later_hit_cannot_be_written_withdraws_its_earlier_hits(
    withdrawal_fits: bool, tmp_path: Path
) -> None:
    """The hit log takes a batch's first hit, then refuses its second (the server
    process's file size limit, as a full disk would): the call is INTERNAL, so no
    answer leaves; the first hit is withdrawn (by the server when the withdrawal
    still fits, else by the line it logs, appended by hand) and the feedback does
    not count it, and the metrics count none of the batch's answers. The client's
    retry, once there is room again, is counted once."""
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    (tmp_path / "key").write_bytes(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    hits, metrics = tmp_path / "hits.jsonl", free_port()
    server = ServeProcess("--list", str(listed), "--key-secret-file", str(tmp_path / "key"),
                          "--index-dir", "off", "--hit-log", str(hits),
                          "--metrics-listen", f"127.0.0.1:{metrics}")  # fmt: skip
    batch = pb.CheckBatchRequest(checks=[flight(ZHAO), flight(ZHANG), flight(LI)])
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        answered = stub.CheckConsumption(flight(ZHANG))  # the hit log holds one hit
        one_hit = hits.stat().st_size
        # room for the batch's first hit (Zhang's again), not for its second (Li's);
        # and for a withdrawal after it, or not
        limit = 2 * one_hit + (400 if withdrawal_fits else 48)
        _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
        error = refusal(lambda: stub.CheckConsumptionBatch(batch))
        assert error.code() is grpc.StatusCode.INTERNAL
        failed = _scrape(metrics)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        retried = stub.CheckConsumptionBatch(batch).results  # the client's retry
        again = _scrape(metrics)
        channel.close()
    finally:
        server.stop()
    assert server.proc.stdout is not None
    logged = server.proc.stdout.read().splitlines()  # all of it: the server has stopped
    records = hit_log_lines(hits)  # every line whole: Li's cut-off part is gone
    assert [r.get("masked_id") for r in records[:2]] == [mask_id(ZHANG)] * 2
    assert records[0]["check_id"] == answered.check_id
    unanswered = records[1]["check_id"]  # the batch's first hit, which never left
    withdrawal = {"withdrawn": [unanswered], "reason": WITHDRAWN_HIT_UNWRITTEN}
    failures = [text for text in logged if "withdrawing them failed" in text]
    if withdrawal_fits:  # the server wrote it, right after the hit
        assert records[2] == {"time": records[2]["time"], **withdrawal}
        assert not failures, failures
    else:  # one line names the check id and ends with the line that withdraws it
        [line] = failures
        assert f"CheckConsumptionBatch: the hit records of check_id {unanswered} " in line
        assert "a later hit record of the batch could not be written" in line, line
        assert "File too large" in line and f"appended to {hits}: " in line, line
        assert unanswered not in {r.get("check_id") for r in records[2:]}
        unmended, _ = feedback(hits, tmp_path / "unmended.json")
        assert (unmended["checks"], unmended["withdrawn"]) == (4, 0)  # with the retry's two
        mend = line[line.index('{"withdrawn"') :].strip()  # as the on-call person would
        assert orjson.loads(mend) == withdrawal
        with hits.open("a") as f:
            f.write(mend + "\n")
    assert unanswered not in {a.check_id for a in retried}  # a new check, a new check id
    totals, summary = feedback(hits, tmp_path / "report.json")
    # the unary check and the retry's two hits; the failed batch's hit withdrawn
    assert (totals["checks"], totals["denied"], totals["withdrawn"]) == (3, 3, 1), summary
    assert (totals["skipped_lines"], totals["duplicates"]) == (0, 0), summary

    # the failed batch's answers (Zhao's ALLOW, Zhang's DENY) are not counted ...
    assert counted(failed, "shixin_checks_total") == {
        labels(channel="AIRLINE", decision="DENY"): 1,  # the unary check
    }
    assert counted(failed, "shixin_hits_total") == {labels(channel="AIRLINE"): 1}
    assert counted(failed, "shixin_refusals_total") == {labels(code="INTERNAL"): 1}
    assert value(failed, "shixin_hit_log_errors_total") == (1 if withdrawal_fits else 2)
    # ... and the retry's are, once
    assert counted(again, "shixin_checks_total") == {
        labels(channel="AIRLINE", decision="ALLOW"): 1,
        labels(channel="AIRLINE", decision="DENY"): 3,
    }
    assert counted(again, "shixin_hits_total") == {labels(channel="AIRLINE"): 3}
