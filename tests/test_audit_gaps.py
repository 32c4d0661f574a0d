"""What ``audit verify`` must still see after the evidence of a cut was tampered with.

Real pieces throughout: ``shixin-check serve`` child processes write the audit
(and hit) logs, real gRPC calls fill them, the files are then cut, removed,
swapped or copied as an intruder with access to a stopped server's folder
would, and the real ``audit verify`` and ``feedback`` commands judge what is
left. Nothing is mocked.

- A restart used to erase the evidence of a cut: with the head removed (or
  garbled) the server went on from the log's end and noted a head that
  vouched for it, so ``audit verify`` said OK. Now the server writes a record
  saying so, and verify reports it: ``UNPROVEN`` (exit 3) for a head that was
  missing, ``BROKEN`` ``bad head`` (exit 1) for one that was not a head.
- ``serve --workers``: each worker's set is its own chain; a swap or a copy
  of one set over another, or a worker's set removed below a later one,
  passed as ``OK: 2 audit chains``.
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.model import CHINA_TZ
from shixin_check.server.hitlog import head_path, log_files
from tests.conftest import log_records
from tests.listdata import LI, ZHANG, ZHAO
from tests.processes import ServeProcess, run_cli
from tests.test_workers import make_feed as make_list
from tests.waiting import eventually

SECRET = "tests-only-secret-0123456789abcdef"
UNPROVEN = 3  # ``audit verify``: whole as far as it goes, but not shown complete
MAX_CONNECTIONS = 200  # fresh connections tried, at most, to reach every worker


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    return make_list(tmp_path)


def started(
    tmp_path: Path, listed: Path, name: str, *logs: str, workers: bool = False
) -> ServeProcess:
    """``shixin-check serve`` writing ``logs`` (flags and paths), once it serves (every
    worker of it, with ``workers``)."""
    server = ServeProcess(
        "--list", str(listed), "--key-secret-file", str(tmp_path / "key"), *logs,
        log=tmp_path / f"{name}.log",
    )  # fmt: skip
    try:
        if workers:
            eventually(lambda: "every worker is past its first load" in server.output(),
                       "every worker serving its list")  # fmt: skip
        server.wait_serving()
    except AssertionError:
        server.kill()
        raise AssertionError(server.output()) from None
    return server


def serve_calls(tmp_path: Path, listed: Path, audit: Path, calls: int, name: str) -> str:
    """Start a server on ``audit``, make ``calls`` checks, stop it (SIGTERM: the head is
    noted at the stop); what it printed."""
    server = started(tmp_path, listed, name, "--audit-log", str(audit))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            for i in range(calls):
                stub.CheckConsumption(build_request("AIRLINE", id_number=(ZHANG, ZHAO)[i % 2]),
                                      timeout=10)  # fmt: skip
    finally:
        assert server.stop() == 0, server.output()
    return server.output()


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "verify", str(path))


def audit_lines(path: Path) -> list[bytes]:
    return [line for f in log_files(path) for line in f.read_bytes().splitlines()]


def cut_last(path: Path, n: int) -> None:
    """Cut the last ``n`` records off the set's live file (the server is stopped)."""
    kept = path.read_bytes().splitlines(keepends=True)[:-n]
    path.write_bytes(b"".join(kept))


# --- a restart on a log whose head is gone -------------------------------------------


def test_a_restart_after_the_head_was_removed_leaves_the_cut_shown(
    tmp_path: Path, listed: Path
) -> None:
    audit = tmp_path / "logs" / "audit.jsonl"
    serve_calls(tmp_path, listed, audit, 6, "first")
    assert verify(audit).returncode == 0
    cut_last(audit, 2)  # seq 5 and 6 cut off ...
    head_path(audit).unlink()  # ... and the head that would show it removed
    before = verify(audit)
    assert before.returncode == 0 and "no head noted" in before.stderr  # as ever: maybe old

    said = serve_calls(tmp_path, listed, audit, 0, "restarted")  # started and stopped
    assert "holds records to seq 4 but its head audit.jsonl.head is missing" in said
    mark = orjson.loads(audit_lines(audit)[-1])
    assert (mark["seq"], mark["head_at_start"], mark["after_seq"]) == (5, "missing", 4)

    after = verify(audit)
    assert after.returncode == UNPROVEN, after.stdout + after.stderr
    first = after.stdout.splitlines()[0]
    assert first.startswith("UNPROVEN: ") and not after.stdout.startswith("OK")
    assert (
        "seq 5 unanchored: its writer started after seq 4 with audit.jsonl.head missing, "
        "and went on from the log's end: records cut off the end before this record would "
        "not show"
    ) in first

    serve_calls(tmp_path, listed, audit, 2, "again")  # later starts keep it, head or not
    assert verify(audit).returncode == UNPROVEN


def test_a_restart_after_the_head_was_garbled_stays_broken(tmp_path: Path, listed: Path) -> None:
    audit = tmp_path / "logs" / "audit.jsonl"
    serve_calls(tmp_path, listed, audit, 6, "first")
    cut_last(audit, 2)
    head_path(audit).write_text("garbage\n")
    assert verify(audit).returncode == 1  # BROKEN: bad head, before the restart ...

    serve_calls(tmp_path, listed, audit, 1, "restarted")
    after = verify(audit)  # ... and after it
    assert after.returncode == 1, after.stdout + after.stderr
    assert after.stdout.startswith("BROKEN: "), after.stdout
    assert (
        "seq 5 bad head: its writer started after seq 4 with audit.jsonl.head not an "
        "audit head (edited?)"
    ) in after.stdout.splitlines()[0]
    assert "(4 records intact before it" in after.stdout


def test_an_empty_log_without_a_head_needs_no_mark(tmp_path: Path, listed: Path) -> None:
    audit = tmp_path / "logs" / "audit.jsonl"
    serve_calls(tmp_path, listed, audit, 0, "first")
    head_path(audit).unlink()
    said = serve_calls(tmp_path, listed, audit, 0, "restarted")
    assert "is missing" not in said
    assert audit_lines(audit) == []
    done = verify(audit)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    assert done.stdout.startswith("OK: 0 records")


# --- workers' sets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The logs folder of a stopped ``serve --workers 2`` whose every worker audited and
    logged hits: audit.w1/w2.jsonl, hits.w1/w2.jsonl. Each test works on a copy."""
    tmp_path = tmp_path_factory.mktemp("workers")
    listed = make_list(tmp_path)
    logs = tmp_path / "logs"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHIXIN_WORKERS", "2")
        server = started(tmp_path, listed, "workers", "--audit-log", str(logs / "audit.jsonl"),
                         "--hit-log", str(logs / "hits.jsonl"), workers=True)  # fmt: skip
    try:
        prefixes: set[str] = set()
        for _ in range(MAX_CONNECTIONS):  # SO_REUSEPORT spreads connections, not calls
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(server.target, options=options) as channel:
                stub = pb_grpc.ConsumptionCheckStub(channel)
                for number in (ZHANG, LI):
                    reply = stub.CheckConsumption(build_request("AIRLINE", id_number=number),
                                                  timeout=10)  # fmt: skip
                    prefixes.add(reply.check_id.split("-", 1)[0])
            if len(prefixes) == 2:
                break
        assert len(prefixes) == 2, "one worker answered every connection"
    finally:
        assert server.stop() == 0, server.output()
    for lock in logs.glob("*.lock"):
        lock.unlink()
    whole = verify(logs / "audit.jsonl")
    assert whole.returncode == 0 and "OK: 2 audit chains" in whole.stdout, whole.stdout
    yield logs


def copy_of(logs: Path, tmp_path: Path) -> Path:
    target = tmp_path / "logs"
    shutil.copytree(logs, target)
    return target


def rename_set(folder: Path, old: str, new: str) -> None:
    for f in sorted(folder.glob(f"{old}*")):
        f.rename(folder / f.name.replace(old, new, 1))


def test_workers_sets_swapped_are_seen_before_and_after_a_restart(
    two_workers_logs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swapped = copy_of(two_workers_logs, tmp_path)  # every file of each set, heads too
    rename_set(swapped, "audit.w1.jsonl", "audit.wX.jsonl")
    rename_set(swapped, "audit.w2.jsonl", "audit.w1.jsonl")
    rename_set(swapped, "audit.wX.jsonl", "audit.w2.jsonl")
    done = verify(swapped / "audit.jsonl")
    assert done.returncode == 1, done.stdout
    assert "audit.w1.jsonl: BROKEN: " in done.stdout and "audit.w2.jsonl: BROKEN: " in done.stdout
    assert "misplaced: the head names audit.w2.jsonl, not a file of audit.w1.jsonl" in done.stdout
    assert "misplaced: the head names audit.w1.jsonl, not a file of audit.w2.jsonl" in done.stdout

    monkeypatch.setenv("SHIXIN_WORKERS", "2")  # each worker goes on with its (swapped) set
    server = started(tmp_path, make_list(tmp_path), "restarted",
                     "--audit-log", str(swapped / "audit.jsonl"), workers=True)  # fmt: skip
    assert server.stop() == 0, server.output()
    assert "names audit.w2.jsonl, not a file of this log" in server.output()
    done = verify(swapped / "audit.jsonl")
    assert done.returncode == 1, done.stdout
    for mine, other in (("w1", "w2"), ("w2", "w1")):
        said = (
            rf"audit\.{mine}\.jsonl: BROKEN: \S+:\d+: seq \d+ misplaced: its writer started "
            rf"after seq \d+ with audit\.{mine}\.jsonl\.head noted by another set's writer "
            rf"\(audit\.{other}\.jsonl\): these files were swapped"
        )
        assert re.search(said, done.stdout), done.stdout


def test_a_workers_set_replaced_by_a_copy_of_another_is_seen(
    two_workers_logs: Path, tmp_path: Path
) -> None:
    """Worker 1's set replaced by worker 2's, the head's file mended to fit."""
    copied = copy_of(two_workers_logs, tmp_path)
    for f in list(copied.glob("audit.w1.jsonl*")):
        f.unlink()
    for f in list(copied.glob("audit.w2.jsonl*")):
        shutil.copy(f, copied / f.name.replace("audit.w2", "audit.w1", 1))
    head = orjson.loads(head_path(copied / "audit.w1.jsonl").read_bytes())
    head_path(copied / "audit.w1.jsonl").write_bytes(
        orjson.dumps({**head, "file": "audit.w1.jsonl"}) + b"\n"
    )
    done = verify(copied / "audit.jsonl")
    assert done.returncode == 1, done.stdout
    assert "seq 1 copied: its first record is also the first of audit.w2.jsonl" in done.stdout
    assert "seq 1 copied: its first record is also the first of audit.w1.jsonl" in done.stdout


def test_a_workers_set_removed_below_another_is_named(
    two_workers_logs: Path, tmp_path: Path
) -> None:
    """Worker 1's whole set removed, its head too, for the audit log and the hit log."""
    gone = copy_of(two_workers_logs, tmp_path)
    for f in list(gone.glob("audit.w1.*")) + list(gone.glob("hits.w1.*")):
        f.unlink()
    done = verify(gone / "audit.jsonl")
    assert done.returncode == UNPROVEN, done.stdout + done.stderr
    assert "audit verify: warning: no file of audit.w1.jsonl's set is here" in done.stderr
    assert done.stdout.splitlines()[-1].startswith("UNPROVEN: 1 audit chains, ")
    assert done.stdout.splitlines()[-1].endswith("; audit.w1.jsonl missing")

    quarter = _quarter_of(gone / "hits.w2.jsonl")
    report = tmp_path / "report.json"
    fed = run_cli("feedback", "--quarter", quarter, "--format", "json", "--out", str(report),
                  "--hit-log", str(gone / "hits.jsonl"))  # fmt: skip
    assert fed.returncode == 0, fed.stderr
    assert (
        f"WARNING: not read, though they may hold records of {quarter}: workers' sets "
        f"missing (moved or removed whole): {gone / 'hits.w1.jsonl'}"
    ) in fed.stderr
    missing = orjson.loads(report.read_bytes())["totals"]["missing_sets"]
    assert missing == [str(gone / "hits.w1.jsonl")]


def test_the_highest_numbered_workers_set_removed_is_named_too(
    two_workers_logs: Path, tmp_path: Path
) -> None:
    """Worker 2's whole audit set removed, its head too: no gap below another set shows
    it, but worker 1's set starts with a record saying its server ran two workers."""
    gone = copy_of(two_workers_logs, tmp_path)
    starts = [r for r in log_records(gone / "audit.w1.jsonl") if r["method"] == "SERVER_START"]
    assert starts and all((r["worker"], r["workers"]) == (1, 2) for r in starts), starts
    for f in gone.glob("audit.w2.*"):
        f.unlink()
    done = verify(gone / "audit.jsonl")
    assert done.returncode == UNPROVEN, done.stdout + done.stderr
    assert "audit verify: warning: no file of audit.w2.jsonl's set is here" in done.stderr
    assert done.stdout.splitlines()[-1].endswith("; audit.w2.jsonl missing")


def _quarter_of(hits: Path) -> str:
    """The quarter of the first hit record of the set ``hits`` (China time)."""
    stamp = orjson.loads(log_files(hits)[0].read_bytes().splitlines()[0])["time"]
    day = _dt.datetime.fromtimestamp(stamp, CHINA_TZ)
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"
