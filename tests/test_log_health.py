"""Health and the server's log when the hit or audit log cannot be written.

Real pieces: a ``shixin-check serve`` child process, its file-size limit
lowered from outside (``prlimit``, as ``ulimit -f`` or ``LimitFSIZE=`` would;
the kernel then refuses every write past it with EFBIG, as a full disk refuses
with ENOSPC) and lifted again, real gRPC calls and health probes on loopback.
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.server.hitlog import FAILURE_LINES
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


def check_listed(channel: grpc.Channel) -> grpc.StatusCode:
    """A check of a listed subject: it needs a hit record (and an audit record)."""
    return check_listed_said(channel)[0]


def check_listed_said(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    """``check_listed``'s status, and its details."""
    stub = pb_grpc.ConsumptionCheckStub(channel)
    try:
        stub.CheckConsumption(build_request("AIRLINE", id_number=ZHANG, name="张伟"), timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


class Said:
    """What a server started without ``log`` prints, read on a thread as it comes: its
    output goes through a pipe, as to journald (a file would meet the same limit)."""

    def __init__(self, server: ServeProcess) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(server,), daemon=True)
        self._thread.start()

    def _read(self, server: ServeProcess) -> None:
        assert server.proc.stdout is not None
        for line in server.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.parametrize("flag", ["--hit-log", "--audit-log"])
def test_a_log_that_cannot_be_written_is_not_serving_until_it_takes_records_again(
    flag: str, tmp_path: Path
) -> None:
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    target = tmp_path / "logs" / "records.jsonl"
    server = ServeProcess("--list", str(listing), flag, str(target))
    output = Said(server)
    channel = grpc.insecure_channel(server.target)
    try:
        server.wait_serving()
        assert check_listed(channel) is grpc.StatusCode.OK
        size = target.stat().st_size
        assert size > 0
        # the next record would pass the limit: EFBIG (SIGXFSZ ignored, not death)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        failed = [check_listed(channel) for _ in range(FAILURE_LINES + 3)]
        assert failed == [grpc.StatusCode.INTERNAL] * (FAILURE_LINES + 3)
        # decided, and not answered for want of its record: not "not decided"
        code, details = check_listed_said(channel)
        assert code is grpc.StatusCode.INTERNAL
        told = {
            "--hit-log": "; the check was decided, but a record of it could not be written "
            "(the server's log), so it is not answered",
            "--audit-log": "; the check was decided but not answered (withdrawn)",
        }
        assert details.endswith(told[flag]), details
        assert server.proc.poll() is None
        for name in ("", "shixin.v1.ConsumptionCheck"):
            eventually(lambda name=name: health(channel, name) == NOT_SERVING,  # type: ignore[misc]
                       f"health {name!r} NOT_SERVING while {flag} cannot be written")  # fmt: skip
        assert health(channel, "liveness") == SERVING  # alive: restarting it frees no disk
        said = output.text()
        assert "Traceback" not in said, said
        lines = [line for line in said.splitlines() if f"({flag}) cannot be written" in line]
        # a few lines for the failed calls (the rest counted later), one for health
        assert len(lines) == FAILURE_LINES + 1, said
        assert all(str(target) in line and "EFBIG (File too large)" in line for line in lines)
        assert any("health: NOT_SERVING" in line for line in lines), said

        # the limit lifted: health finds out by itself, with no call reaching the server
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        eventually(lambda: health(channel, "") == SERVING, "health SERVING again")
        assert "health: SERVING" in output.text().partition("cannot be written")[2]
        assert check_listed(channel) is grpc.StatusCode.OK
    finally:
        channel.close()
        code = server.stop()
    assert code == 0, output.text()
    # the probe's bytes were cut off again: every line of the log is a whole record
    assert all(line.startswith(b"{") for line in target.read_bytes().splitlines())


@pytest.mark.parametrize("flag", ["--hit-log", "--audit-log"])
def test_a_log_the_disk_refuses_at_start_is_not_serving_from_the_start(
    flag: str, tmp_path: Path
) -> None:
    """A start on a full disk: the hit log's server was SERVING until the first listed
    check failed INTERNAL; the audit log's ended the start (exit 2, "cannot open it")
    though its log and head were whole, as it wrote its head again first. Now each is
    tried at start, and the server is NOT_SERVING from its first answer until a record
    would go in. A real file-size limit (``ulimit -f``) just above the logs' size."""
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    target = tmp_path / "logs" / "records.jsonl"
    first = ServeProcess("--list", str(listing), flag, str(target))
    channel = grpc.insecure_channel(first.target)
    try:
        first.wait_serving()
        assert check_listed(channel) is grpc.StatusCode.OK
    finally:
        channel.close()
        assert first.stop() == 0
    room = max(p.stat().st_size for p in target.parent.iterdir()) + 100  # < a record's room
    server = ServeProcess("--list", str(listing), flag, str(target), file_size_limit=room)
    output = Said(server)
    channel = grpc.insecure_channel(server.target)
    try:

        def answered() -> bool:
            try:
                health(channel, "")
            except grpc.RpcError:
                return False  # not listening yet
            return True

        eventually(answered, "health answers")
        assert health(channel, "") == NOT_SERVING
        assert server.proc.poll() is None
        eventually(lambda: "health: NOT_SERVING" in output.text(), "said why")
        said = output.text()
        assert f"({flag}) cannot be written: EFBIG (File too large)" in said, said
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        eventually(lambda: health(channel, "") == SERVING, "SERVING once a record goes in")
        assert check_listed(channel) is grpc.StatusCode.OK
    finally:
        channel.close()
        code = server.stop()
    assert code == 0, output.text()


def test_an_audit_log_whose_head_is_behind_starts_and_stops_on_a_full_disk(
    tmp_path: Path,
) -> None:
    """A head behind the log's end (a crash between a record and its head) was noted
    again before anything else at start, so a start on a full disk ended (exit 2,
    "cannot open it") where one with an exact head went on NOT_SERVING; and a stop that
    could not note the head ended with a bare ``[Errno 27]``. Both go on now: the head
    is noted again once the disk takes it. A real file-size limit below any write."""
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    target = tmp_path / "logs" / "audit.jsonl"
    head = target.with_name("audit.jsonl.head")
    first = ServeProcess("--list", str(listing), "--audit-log", str(target))
    channel = grpc.insecure_channel(first.target)
    try:
        first.wait_serving()
        assert check_listed(channel) is grpc.StatusCode.OK
        eventually(lambda: head.exists() and b'"seq":1,' in head.read_bytes(), "head noted")
        behind = head.read_bytes()
        assert check_listed(channel) is grpc.StatusCode.OK
    finally:
        channel.close()
        assert first.stop() == 0
    head.write_bytes(behind)  # as a crash before the head thread's next turn leaves it
    server = ServeProcess("--list", str(listing), "--audit-log", str(target),
                          file_size_limit=50)  # fmt: skip
    output = Said(server)
    channel = grpc.insecure_channel(server.target)
    try:
        eventually(lambda: "health: NOT_SERVING" in output.text() or server.proc.poll() is not None,
                   "started")  # fmt: skip
        assert server.proc.poll() is None, output.text()
        assert "cannot note its head at start: EFBIG (File too large)" in output.text()
        assert health(channel, "") == NOT_SERVING
    finally:
        channel.close()
        code = server.stop()
    said = output.text()
    assert code == 0, said
    assert "its chain head is not noted at this stop: EFBIG" in said, said
    assert "[Errno" not in said, said
    assert not target.with_name("audit.jsonl.head.part").exists()
    assert head.read_bytes() == behind  # never replaced by the part the limit let in
    verified = run_cli("audit", "verify", str(target))
    assert verified.returncode == 0, verified.stdout + verified.stderr
