"""A flood of refusals for credentials must not fill the audit log's disk.

A client retrying a revoked key in a hot loop, or anyone on the network without a
key, is refused thousands of times a second; each refusal was one audit record, and
the log is never deleted, so the disk filled and every check of every caller failed.
Now each host's refusals are recorded one by one only up to a burst and a rate
(``REFUSALS_AUDITED_*`` in server/service.py); the rest are counted and written as
``unrecorded_refusals`` in the host's next record or a summary record. Through a real
server with keys and an audit log (``guarded``), real gRPC calls, and the real
``audit verify``.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.server import metrics as metrics_mod
from shixin_check.server import service as service_mod
from shixin_check.server.auth import remove_keys
from shixin_check.server.service import refusal_host
from tests.accessdata import Serve, bearer, hotel, refusal
from tests.conftest import RunningServer, log_records, settings_for, start_server
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import run_cli
from tests.test_errors import reason
from tests.waiting import eventually

FLOOD = 400
UNKNOWN = bearer("sk_revoked-key-retried-in-a-loop")
#: the summary's interval in these tests (the server's is 10 s)
SUMMARY_S = 0.2
Records = list[dict[str, object]]


def flood(server: RunningServer, calls: int, good_key: str = "", every: int = 0) -> set[object]:
    """``calls`` checks with an unknown key, one after another from one client (and,
    with ``every``, one with ``good_key`` after each ``every``, which must be
    answered); every way they were refused."""
    stub = server.stub()
    seen: set[object] = set()
    for i in range(calls):
        error = refusal(lambda: stub.CheckConsumption(hotel(ZHANG), metadata=UNKNOWN))
        seen.add((error.code(), error.details(), reason(error)))
        if every and i % every == 0:
            answer = stub.CheckConsumption(hotel(ZHANG), metadata=bearer(good_key))
            assert answer.decision == pb.DENY
    return seen


def one_by_one(records: Records) -> Records:
    """The records of the flood's refusals, each of its own."""
    return [r for r in records if r.get("reason") == "API_KEY_UNKNOWN"]


def held_back(records: Records) -> int:
    """The flood's refusals that records count without being theirs."""
    return sum(int(r.get("unrecorded_refusals", 0)) for r in records)  # type: ignore[call-overload]


def summaries(records: Records) -> Records:
    return [r for r in records if r.get("method") == "" and "unrecorded_refusals" in r]


def most_one_by_one(seconds: float) -> float:
    """The burst, and what the host's bucket refilled in ``seconds``."""
    per_s = service_mod.REFUSALS_AUDITED_PER_HOST_S
    return service_mod.REFUSALS_AUDITED_PER_HOST_BURST + seconds * per_s + 1


def accounted(path: Path, refused: int) -> Records:
    """The audit log once every refusal is in it, one by one or counted."""
    records: Records = []

    def whole() -> bool:
        nonlocal records
        records = log_records(path)
        return len(one_by_one(records)) + held_back(records) == refused

    eventually(whole, f"{refused} refusals recorded or counted in {path}")
    return records


def test_a_flood_of_refusals_is_recorded_up_to_a_burst_and_the_rest_counted(
    guarded: RunningServer, tmp_path: Path
) -> None:
    assert guarded.service.checks is not None
    guarded.service.checks.refusal_summary_s = SUMMARY_S
    started = time.monotonic()
    seen = flood(guarded, FLOOD)
    took = time.monotonic() - started
    # each refused as before: the same status, message and reason
    assert seen == {(grpc.StatusCode.UNAUTHENTICATED, "unknown API key", "API_KEY_UNKNOWN")}
    records = accounted(tmp_path / "audit.log", FLOOD)
    recorded = one_by_one(records)
    # what the person on call sees: shixin_audit_refusals_unrecorded_total
    assert guarded.service.engine.tally.refusals_unrecorded == FLOOD - len(recorded)
    engine = guarded.service.engine
    reading = metrics_mod.take_reading(engine, trusted=True)
    exported = {m.name: m for m in metrics_mod.MetricsCollector(lambda: reading).collect()}
    samples = exported["shixin_audit_refusals_unrecorded"].samples
    assert [s.value for s in samples] == [FLOOD - len(recorded)]
    assert len(recorded) <= most_one_by_one(took), (len(recorded), took)
    assert all(r["caller"] == "anonymous" for r in recorded)
    made = summaries(records)  # one every SUMMARY_S while refusals were held back
    assert made
    for summary in made:
        assert summary["peer"] == "ipv4:127.0.0.1"
        assert summary["caller"] == "anonymous"
        assert summary["outcome"] == "UNAUTHENTICATED"
        counted = {"API_KEY_UNKNOWN": summary["unrecorded_refusals"]}
        assert summary["unrecorded_reasons"] == counted
        assert float(summary["unrecorded_since"]) <= float(summary["time"])  # type: ignore[arg-type]


def test_good_callers_on_the_same_host_are_answered_and_audited_through_a_flood(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    """Only refusals count against a host: a good key's calls from the flooding client's
    own address (as behind a proxy) are each answered and each recorded."""
    assert guarded.service.checks is not None
    guarded.service.checks.refusal_summary_s = SUMMARY_S
    good = FLOOD // 10
    flood(guarded, FLOOD, keys["hotel"], every=10)
    records = accounted(tmp_path / "audit.log", FLOOD)
    answered = [r for r in records if r["caller"] == "hotel-chain"]
    assert [r["outcome"] for r in answered] == ["DENY"] * good
    assert len(one_by_one(records)) < FLOOD / 2  # the flood itself was held back


def test_audit_verify_passes_on_a_log_with_counted_refusals(
    guarded: RunningServer, tmp_path: Path
) -> None:
    assert guarded.service.checks is not None
    guarded.service.checks.refusal_summary_s = SUMMARY_S
    flood(guarded, FLOOD // 2)
    records = accounted(tmp_path / "audit.log", FLOOD // 2)
    assert summaries(records)
    verified = run_cli("audit", "verify", str(tmp_path / "audit.log"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK"), verified.stdout


def test_a_graceful_stop_writes_the_refusals_still_held_back(
    serve: Serve, keys: dict[str, str], tmp_path: Path
) -> None:
    """The summary's interval is far off: the host's next record carries what was held
    back before it, and only the stop can write what was held back after it, before
    the log closes."""
    audit = tmp_path / "audit.log"
    server = start_server(
        settings_for(write_jsonl(tmp_path / "l.jsonl", basic_rows()),
                     keys_file=Path(keys["path"]), audit_log=audit)
    )  # fmt: skip
    first, then = FLOOD // 4, FLOOD // 8
    try:
        assert server.service.checks is not None
        server.service.checks.refusal_summary_s = 3600.0
        flood(server, first)
        before = log_records(audit)
        pending = first - len(one_by_one(before)) - held_back(before)
        assert pending > 0
        time.sleep(1 / service_mod.REFUSALS_AUDITED_PER_HOST_S)  # a token again for the host
        flood(server, then)
        after = log_records(audit)[len(before) :]
        [carried] = [r for r in after if "unrecorded_refusals" in r]
        assert carried["unrecorded_refusals"] == pending
        assert carried["reason"] == "API_KEY_UNKNOWN"  # a refusal of its own as well
    finally:
        server.stop()
    assert not server.thread.is_alive()
    records = log_records(audit)
    [summary] = summaries(records)
    assert summary["seq"] == records[-1]["seq"]  # written at the stop
    assert len(one_by_one(records)) + held_back(records) == first + then
    verified = run_cli("audit", "verify", str(audit))
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.1:5555", "ipv4:10.0.0.1"),
        ("ipv6:[::1]:5555", "ipv6:[::]/64"),
        ("ipv6:%5B::1%5D:5555", "ipv6:[::]/64"),  # as grpc 1.85 writes it
        ("ipv6:[2001:db8:1:2:a::5]:1", "ipv6:[2001:db8:1:2::]/64"),
        ("ipv6:[2001:db8:1:2:ffff::9]:2", "ipv6:[2001:db8:1:2::]/64"),  # one machine's spray
        ("ipv6:[2001:db8:1:3::9]:2", "ipv6:[2001:db8:1:3::]/64"),
        ("ipv6:[::ffff:10.0.0.7]:80", "ipv4:10.0.0.7"),  # IPv4 on a dual-stack socket
        ("unix:/run/shixin.sock", "unix:/run/shixin.sock"),
        ("unix:", "unix:"),
        ("ipv6:not-an-address:1", "ipv6:not-an-address:1"),
    ],
)
def test_refusals_are_counted_per_host(peer: str, host: str) -> None:
    assert refusal_host(peer) == host


def test_a_stream_cut_for_its_removed_key_is_recorded_under_its_caller_through_a_flood(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    """Only refusals of callers whose credentials were never taken are held back: a
    stream cut at its next message because its key was removed (once a stream, never a
    loop) is recorded under its caller with its subject, even while the same host's
    bad-key refusals are past their rate (the README promises that record)."""
    assert guarded.service.checks is not None
    guarded.service.checks.refusal_summary_s = SUMMARY_S
    sent: queue.Queue[pb.CheckRequest | None] = queue.Queue()
    answers = guarded.stub().CheckConsumptionStream(
        iter(sent.get, None), metadata=bearer(keys["hotel"]), timeout=30
    )
    sent.put(hotel(ZHANG, request_id="before"))
    assert next(answers).decision == pb.DENY
    flood(guarded, 120)  # the host's bucket spent
    generation = guarded.service.gate.generation
    remove_keys(Path(keys["path"]), principal="hotel-chain")
    eventually(lambda: guarded.service.gate.generation != generation, "the keys reloaded")
    flood(guarded, 10)  # whatever the bucket refilled meanwhile, spent again
    sent.put(hotel(ZHANG, request_id="after"))
    with pytest.raises(grpc.RpcError) as cut:
        next(answers)
    sent.put(None)
    assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED
    records = log_records(tmp_path / "audit.log")
    (told,) = [r for r in records if r["method"] == "CheckConsumptionStream"
               and r["outcome"] == "UNAUTHENTICATED"]  # fmt: skip
    assert told["caller"] == "hotel-chain" and told["subject"], told
    assert told["reason"] == "API_KEY_UNKNOWN", told
