"""A call that ends before its answer leaves: its hits withdrawn, audited so, not fed back.

Through real servers with a hit log, an audit log and a metrics listener, and
real channels. A batch of 1,000 listed subjects takes the server tens of
milliseconds to decide; a caller whose deadline is shorter gets
DEADLINE_EXCEEDED, and one that cancels gets nothing: the hits the server
logged for such a batch are withdrawn in the hit log (``"reason": "the call
ended before its answer left: ..."``), a record of the call in the audit log
says how it ended and names them (``withdrawn_hits``), the metrics do not
count its checks, and the quarterly feedback (``shixin-check feedback``, run as
a command) counts none of them. A batch answered in time is counted as
before.

A stream still open when the server stops is cut at the end of ``--grace``:
the server says so in its last line, with no traceback, and every answer its
caller read is counted (only the one whose write the cut interrupted is
withdrawn).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.server.service import WITHDRAWN_CANCELLED, WITHDRAWN_CUT, WITHDRAWN_LATE
from tests.accessdata import flight
from tests.conftest import SECRET, RunningServer, log_records
from tests.listdata import person_entry, rid, write_jsonl
from tests.processes import ServeProcess, free_port
from tests.test_audit_failure import feedback
from tests.test_metrics import scrape
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
#: listed subjects in a batch: the server needs tens of milliseconds to decide it
LISTED = 1000
#: batches sent looking for one the server decides after its caller stopped waiting
TRIES = 12


def listed_numbers() -> list[str]:
    """``LISTED`` distinct resident ID numbers (check characters computed)."""
    numbers = [
        rid(f"1101051980{1 + i // 28 % 12:02d}{1 + i % 28:02d}{i // 336:03d}")
        for i in range(LISTED)
    ]
    assert len(set(numbers)) == LISTED
    return numbers


@pytest.fixture
def numbers() -> list[str]:
    return listed_numbers()


@pytest.fixture
def listed(tmp_path: Path, numbers: list[str]) -> Path:
    """Every number of ``numbers`` on the list: each check of a batch is a DENY."""
    rows = [person_entry(f"E{i}", n, "张伟") for i, n in enumerate(numbers)]
    return write_jsonl(tmp_path / "list.jsonl", rows)


def batch(numbers: list[str], tag: str) -> pb.CheckBatchRequest:
    return pb.CheckBatchRequest(checks=[flight(n, f"{tag}-{i}") for i, n in enumerate(numbers)])


def hits_of(hits: Path, tag: str) -> list[str]:
    """The check ids of the hit records of the batch or stream ``tag``, in order."""
    return [
        str(r["check_id"])
        for r in log_records(hits)
        if str(r.get("request_id", "")).startswith(f"{tag}-")
    ]  # fmt: skip


def withdrawals(hits: Path) -> list[dict[str, Any]]:
    return [r for r in log_records(hits) if "withdrawn" in r]


def batch_records(audit: Path) -> list[dict[str, Any]]:
    return [r for r in log_records(audit) if r["method"] == "CheckConsumptionBatch"]


def batches_done(server: RunningServer) -> float:
    """Batches the server is done with (answered, refused, cut): each is timed once."""
    samples = scrape(server)
    return samples.get(
        ("shixin_check_duration_seconds_count", frozenset({("method", "CheckConsumptionBatch")})),
        0.0,
    )


def wait_done(server: RunningServer, batches: int) -> None:
    """Until the server is done with ``batches`` batches (the client may have given up)."""
    eventually(lambda: batches_done(server) >= batches, "the server done with the batch")


def logged(hits: Path, tag: str) -> int:
    """Hit records of the batch ``tag`` so far (one being written counts)."""
    return hits.read_bytes().count(f'"request_id":"{tag}-'.encode()) if hits.exists() else 0


def count_of(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_batch_decided_past_its_deadline_is_withdrawn_audited_and_not_fed_back(
    serve: Serve, tmp_path: Path, listed: Path, numbers: list[str]
) -> None:
    hits, audit = tmp_path / "logs" / "hits.jsonl", tmp_path / "logs" / "audit.jsonl"
    server = serve(listed, hit_log=hits, audit_log=audit,
                   metrics_listen=f"127.0.0.1:{free_port()}")  # fmt: skip
    stub = server.stub()
    in_time = stub.CheckConsumptionBatch(batch(numbers, "in-time"), timeout=60)
    assert {a.decision for a in in_time.results} == {pb.DENY}
    answered = 1  # batches whose answer reached the caller: counted whole
    deciding = batch_records(audit)[-1]["latency_us"] / 1e6  # what a batch takes here
    deadline = deciding / 4
    late = ""  # a batch the server decided after its caller had stopped waiting
    for attempt in range(TRIES):
        tag, before = f"late{attempt}", len(batch_records(audit))
        try:
            stub.CheckConsumptionBatch(batch(numbers, tag), timeout=deadline)
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED, error
        else:  # answered in time on this machine: try a shorter deadline
            answered, deadline = answered + 1, deadline / 2
            continue
        wait_done(server, attempt + 2)
        if not hits_of(hits, tag):  # refused before it was decided: a longer deadline
            deadline *= 2
            continue
        first = batch_records(audit)[before]
        if first["outcome"] == "OK" and first["latency_us"] < deadline * 1e6:
            answered += 1  # answered in time, lost on the way: no server can tell
            continue
        late = tag
        break
    assert late, f"no batch decided past its deadline in {TRIES} tries"

    late_hits = hits_of(hits, late)
    assert len(late_hits) == LISTED  # decided, each check a hit, logged: then withdrawn
    [withdrawal] = withdrawals(hits)
    assert withdrawal == {"time": withdrawal["time"], "withdrawn": late_hits,
                          "reason": WITHDRAWN_LATE}  # fmt: skip
    [record] = [r for r in batch_records(audit) if r.get("withdrawn_hits")]
    assert (record["outcome"], record["checks"]) == ("DEADLINE_EXCEEDED", LISTED)
    assert record["withdrawn_hits"] == late_hits
    assert "outcomes" not in record  # no answer was made of its decisions

    # the batches answered in time are counted; the late one nowhere
    counted = LISTED * answered
    totals, summary = feedback(hits, tmp_path / "report.json")
    assert (totals["checks"], totals["denied"], totals["withdrawn"]) == (
        counted, counted, LISTED
    ), summary  # fmt: skip
    samples = scrape(server)
    assert count_of(samples, "shixin_checks_total", channel="AIRLINE", decision="DENY") == counted
    assert count_of(samples, "shixin_hits_total", channel="AIRLINE") == counted


def test_a_batch_its_caller_cancels_while_it_is_decided_is_withdrawn_and_not_fed_back(
    serve: Serve, tmp_path: Path, listed: Path, numbers: list[str]
) -> None:
    hits, audit = tmp_path / "logs" / "hits.jsonl", tmp_path / "logs" / "audit.jsonl"
    server = serve(listed, hit_log=hits, audit_log=audit,
                   metrics_listen=f"127.0.0.1:{free_port()}")  # fmt: skip
    stub = server.stub()
    cancelled = ""
    for attempt in range(TRIES):
        tag = f"cancelled{attempt}"
        future = stub.CheckConsumptionBatch.future(batch(numbers, tag), timeout=60)
        eventually(lambda f=future, t=tag: logged(hits, t) > 0 or f.done(),
                   "the batch being decided", step=0.001)  # fmt: skip
        deciding = 0 < logged(hits, tag) < LISTED and not future.done()
        future.cancel()  # while the server decides it: its answer has not left
        wait_done(server, attempt + 1)
        if deciding:
            cancelled = tag
            break
    assert cancelled, f"no batch cancelled while it was decided in {TRIES} tries"

    cancelled_hits = hits_of(hits, cancelled)
    assert len(cancelled_hits) == LISTED
    [withdrawal] = [w for w in withdrawals(hits) if w["withdrawn"] == cancelled_hits]
    assert withdrawal["reason"] == WITHDRAWN_CANCELLED
    # the audit log is append-only: the batch's record stays, the next one says how it ended
    [ended] = [r for r in batch_records(audit) if r.get("withdrawn_hits") == cancelled_hits]
    assert (ended["outcome"], ended["checks"]) == ("CANCELLED", LISTED)
    decided = batch_records(audit)[batch_records(audit).index(ended) - 1]
    assert (decided["outcome"], decided["outcomes"]) == ("OK", {"DENY": LISTED})
    # every batch's hits are counted but those withdrawn: the cancelled one's among them
    written = sum(len(hits_of(hits, f"cancelled{n}")) for n in range(TRIES))
    withdrawn = {i for w in withdrawals(hits) for i in w["withdrawn"]}
    totals, summary = feedback(hits, tmp_path / "report.json")
    assert (totals["checks"], totals["withdrawn"]) == (written - len(withdrawn), len(withdrawn))
    samples = scrape(server)
    assert count_of(samples, "shixin_refusals_total", code="CANCELLED") == len(withdrawals(hits))
    assert count_of(samples, "shixin_hits_total", channel="AIRLINE") == totals["checks"]


def test_a_stream_cut_at_the_end_of_the_grace_period_is_said_so_and_what_was_read_counts(
    tmp_path: Path, listed: Path, numbers: list[str]
) -> None:
    (tmp_path / "key").write_bytes(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    hits, audit = tmp_path / "hits.jsonl", tmp_path / "audit.jsonl"
    server = ServeProcess("--list", str(listed), "--key-secret-file", str(tmp_path / "key"),
                          "--index-dir", "off", "--hit-log", str(hits), "--audit-log", str(audit),
                          "--grace", "1", log=tmp_path / "server.log")  # fmt: skip
    read: list[str] = []
    enough = threading.Event()  # the caller stops sending (bounded)

    def requests() -> Iterator[pb.CheckRequest]:
        for i in range(20 * LISTED):
            if enough.is_set():
                return
            yield flight(numbers[i % LISTED], f"stream-{i}")
            time.sleep(0.001)

    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stream = pb_grpc.ConsumptionCheckStub(channel).CheckConsumptionStream(requests())
        with pytest.raises(grpc.RpcError):  # the server cuts it: the stream never ends well
            for answer in stream:
                read.append(answer.check_id)
                if len(read) == 50:  # the stream is busy: stop the server under it
                    server.proc.send_signal(signal.SIGTERM)
        enough.set()
        assert server.proc.wait(timeout=30) == 0
        channel.close()
    finally:
        enough.set()
        server.stop()
    output = server.output()
    assert "stopped: 1 in-flight call cut at the end of the grace period (--grace 1s)" in output
    assert "in-flight calls done" not in output
    assert "Traceback" not in output and "Exception not handled" not in output, output
    written = hits_of(hits, "stream")
    assert set(read) <= set(written)
    withdrawn = [i for w in withdrawals(hits) for i in w["withdrawn"]]
    assert not set(withdrawn) & set(read)  # no answer the caller read is withdrawn
    for w in withdrawals(hits):  # at most the answer whose write was cut
        assert w["reason"] == WITHDRAWN_CUT
    assert len(withdrawn) <= 1
    totals, _ = feedback(hits, tmp_path / "report.json")
    assert totals["checks"] == len(written) - len(withdrawn) >= len(read)
    if withdrawn:
        [ended] = [orjson.loads(line) for line in audit.read_bytes().splitlines()
                   if b'"withdrawn_hits"' in line]  # fmt: skip
        assert (ended["outcome"], ended["withdrawn_hits"]) == ("CANCELLED", withdrawn)


#: how long the race below is run for at most (old code logged it within ~3 s here)
RACE_SECONDS = 10.0


def test_a_batch_whose_deadline_passes_as_it_arrives_is_refused_without_a_traceback(
    tmp_path: Path, listed: Path, numbers: list[str]
) -> None:
    """grpc ends a call whose deadline passes as it arrives, so the server's refusal
    (``DEADLINE_EXCEEDED``, "the deadline passed before the batch was started") can no
    longer be sent. grpc logged each such failed send as an ERROR with two tracebacks
    (``ExecuteBatchError raised in core by servicer method``), a few a minute under
    traffic with deadlines of a millisecond; the server ends such a call quietly, its
    refusal audited."""
    out, audit = tmp_path / "out.txt", tmp_path / "audit.jsonl"
    server = ServeProcess("--list", str(listed), "--audit-log", str(audit), log=out)
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def drive(worker: int) -> None:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        batches = [batch(numbers[:size], f"w{worker}") for size in (1, 10, 100)]
        stop = time.monotonic() + RACE_SECONDS
        sent = 0
        while time.monotonic() < stop and "ExecuteBatchError" not in out.read_text():
            sent += 1
            try:
                stub.CheckConsumptionBatch(
                    batches[sent % 3], timeout=(0.3, 0.6, 1, 2)[sent % 4] / 1e3
                )
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            with lock:
                codes[code] = codes.get(code, 0) + 1
        channel.close()

    try:
        server.wait_serving()
        threads = [threading.Thread(target=drive, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RACE_SECONDS + 30)
    finally:
        server.proc.terminate()
        server.proc.wait(30)
    text = out.read_text()
    assert "ExecuteBatchError" not in text and "Traceback" not in text, text[-4000:]
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
    assert codes.get("DEADLINE_EXCEEDED", 0) > 100, codes
    refused = [r for r in log_records(audit) if r["outcome"] == "DEADLINE_EXCEEDED"]
    assert len(refused) > 100 and {r["method"] for r in refused} == {"CheckConsumptionBatch"}
