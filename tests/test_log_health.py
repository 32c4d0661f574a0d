"""Health and the server's log when the hit or audit log cannot be written.

Real pieces: a ``shixin-check serve`` child process, its file-size limit
lowered from outside (``prlimit``, as ``ulimit -f`` or ``LimitFSIZE=`` would;
the kernel then refuses every write past it with EFBIG, as a full disk refuses
with ENOSPC) and lifted again, real gRPC calls and health probes on loopback.
"""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
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


def test_status_says_why_while_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    """``status``, the operator's diagnosis, wrote an audit record like any call and
    failed with it: ``cannot ask ...: INTERNAL: internal error (check_id ...)``, exit 2,
    while health said NOT_SERVING with no reason. It answers without its record now,
    saying that the audit log cannot be written, exit 1, as the README says."""
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    target = tmp_path / "logs" / "audit.jsonl"
    server = ServeProcess("--list", str(listing), "--audit-log", str(target))
    output = Said(server)
    try:
        server.wait_serving()
        done = run_cli("status", "--target", server.target)
        assert done.returncode == 0, done.stdout + done.stderr
        size = target.stat().st_size
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        done = run_cli("status", "--target", server.target)  # the first record refused
        assert done.returncode == 1, done.stdout + done.stderr
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("NOT_SERVING: ")]
        assert "(--audit-log) cannot be written" in line and str(target) in line, line
        assert "EFBIG" in line, line
        eventually(lambda: "GetListStatus answered, caller anonymous; not audited: " in output.text(),
                   "the gap in the audit trail said")  # fmt: skip
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        eventually(lambda: run_cli("status", "--target", server.target).returncode == 0,
                   "status SERVING again")  # fmt: skip
    finally:
        code = server.stop()
    assert code == 0, output.text()


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


def test_an_audit_log_that_cannot_note_its_head_is_not_serving_and_stops_in_one_line(
    tmp_path: Path,
) -> None:
    """Records still went in (a full disk's last page) while the chain head could not
    be noted: health stayed SERVING, and a cut of every record since would verify OK;
    a stop that could not note it ended with a bare errno. Now health is NOT_SERVING
    while the head cannot be noted, SERVING again once it is, and the stop says so in
    one line (exit 0). The head's file made impossible for real: a folder where its
    temporary file goes."""
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    target = tmp_path / "logs" / "audit.jsonl"
    blocker = target.with_name("audit.jsonl.head.part")
    server = ServeProcess("--list", str(listing), "--audit-log", str(target))
    output = Said(server)
    channel = grpc.insecure_channel(server.target)
    try:
        server.wait_serving()
        blocker.mkdir()
        assert check_listed(channel) is grpc.StatusCode.OK  # a record goes in; its head not
        eventually(lambda: health(channel, "") == NOT_SERVING, "NOT_SERVING: head unnoted")
        eventually(lambda: "cannot note its chain head: EISDIR" in output.text(), "said why")
        blocker.rmdir()
        eventually(lambda: health(channel, "") == SERVING, "SERVING once it is noted")
        assert check_listed(channel) is grpc.StatusCode.OK
        blocker.mkdir()
    finally:
        channel.close()
        code = server.stop()
    said = output.text()
    assert code == 0, said
    assert "its chain head is not noted at this stop: EISDIR" in said, said
    assert "[Errno" not in said, said
    blocker.rmdir()
    verified = run_cli("audit", "verify", str(target))  # the head behind: no loss
    assert verified.returncode == 0, verified.stdout + verified.stderr


_SHORT_HEAD = """
import resource, sys
from pathlib import Path
from shixin_check.server.hitlog import replace_file
target = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (50, resource.RLIM_INFINITY))
try:
    replace_file(target, b"x" * 120)
except OSError as exc:
    print(exc.errno)
"""


def test_a_head_the_disk_takes_only_in_part_is_never_put_in_place(tmp_path: Path) -> None:
    """The first 50 bytes of a head went in, the rest was refused: the short file was
    renamed over the head (unreadable at the next start). A real file-size limit."""
    target = tmp_path / "audit.jsonl.head"
    target.write_bytes(b"the old head\n")
    done = subprocess.run([sys.executable, "-c", _SHORT_HEAD, str(target)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == str(errno.EFBIG), done.stdout + done.stderr
    assert target.read_bytes() == b"the old head\n"
    assert sorted(tmp_path.iterdir()) == [target]


_START_REFUSED = """
import resource, sys
from pathlib import Path
from shixin_check.server.hitlog import AuditLog
path = Path(sys.argv[1])
log = AuditLog(path)
log.record("CheckConsumption", "peer", "110105********0001", "ALLOW", 0.0)
log.close()
log = AuditLog(path)  # its head where the chain goes on: nothing written at start
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, resource.RLIM_INFINITY))
log.note_start(1, 1)  # refused: a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
log.record("CheckConsumption", "peer", "110105********0002", "DENY", 0.0)
log.close()
"""


def test_a_start_record_the_disk_refused_goes_in_before_the_next_record(tmp_path: Path) -> None:
    """A worker started on a full disk dropped its ``SERVER_START`` record for good, so
    ``audit verify`` no longer saw a higher-numbered worker's set removed whole. It is
    written before the next record that goes in now. A real file-size limit."""
    path = tmp_path / "audit.jsonl"
    done = subprocess.run([sys.executable, "-c", _START_REFUSED, str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    methods = [json.loads(line)["method"] for line in path.read_bytes().splitlines()]
    assert methods == ["CheckConsumption", "SERVER_START", "CheckConsumption"], methods
