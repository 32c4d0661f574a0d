"""The process meets a limit of the system's: the line says which one to raise.

Out of open files, processes, memory, file size or disk, the server and the
commands said `[Errno 24] Too many open files` (or printed a traceback, or
called running out of memory "a bug in shixin-check"), and one kind of line
came once per refused call. Each now names the limit and how to raise it, once
(or a few times a while, as every disk-failure line).

The follower and the server are the real ones; the limit is met by what the
kernel refuses (/dev/full) or, where a test cannot make the kernel refuse (no
memory limit fits every machine), by the call that meets it raising what the
kernel's refusal raises.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.system import limit_advice
from shixin_check.loader import versions
from shixin_check.server.hitlog import FAILURE_LINES, write_error_advice
from tests.accessdata import flight
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import CLI, free_port
from tests.test_audit_failure import full_audit
from tests.test_failure_paths import header
from tests.test_feed_order import Feed
from tests.waiting import eventually

__all__ = ["full_audit"]  # the fixture, defined beside the audit failure tests


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "ulimit -n, LimitNOFILE="),
        (OSError(errno.ENFILE, os.strerror(errno.ENFILE)), "fs.file-max"),
        (OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)), "ulimit -u, TasksMax="),
        (OSError(errno.EFBIG, os.strerror(errno.EFBIG)), "ulimit -f"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "free space"),
        (MemoryError(), "ulimit -v, MemoryMax="),
        (RuntimeError("can't start new thread"), "ulimit -u, TasksMax="),
    ],
)
def test_each_limit_is_named_with_how_to_raise_it(exc: BaseException, says: str) -> None:
    assert says in limit_advice(exc)


def test_what_is_no_limit_gets_no_such_advice() -> None:
    assert limit_advice(RuntimeError("something else")) == ""
    assert limit_advice(OSError(errno.EACCES, "Permission denied")) == ""


def test_a_log_that_cannot_open_its_next_file_blames_the_limit_not_the_disk(
    tmp_path: Path,
) -> None:
    """A rotation under EMFILE said "check the disk under ... (dmesg)"."""
    said = write_error_advice(OSError(errno.EMFILE, "Too many open files"), tmp_path / "h.jsonl")
    assert "ulimit -n" in said and "disk" not in said


def test_a_snapshot_read_short_of_memory_is_refused_in_one_line_not_as_a_bug(
    tmp_path: Path, keyer: SubjectKeyer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    folder = tmp_path / "feed"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(folder, keyer).start()
    before = feed.view().info.version
    read = versions.read_header

    def short_of_memory(path: Path) -> object:
        if path.name == "snapshot-0002.jsonl":
            raise MemoryError
        return read(path)

    monkeypatch.setattr(versions, "read_header", short_of_memory)
    caplog.set_level(logging.ERROR)
    feed.write("snapshot-0002.jsonl", [header(0), *basic_rows()])
    assert feed.view().info.version == before  # the last good list serves on
    [line] = [r for r in caplog.records if "snapshot-0002" in r.getMessage()]
    assert line.exc_info is None  # no traceback: nothing here is a bug
    said = line.getMessage()
    assert "short of what it takes: MemoryError: the process ran out of memory" in said
    assert "bug" not in said and "last good list keeps serving" in said
    [(what, name, detail)] = [e for e in feed.events if e[1] == "snapshot-0002.jsonl"]
    assert what == "rejected" and "ulimit -v" in detail


def test_refusals_on_a_full_audit_disk_are_said_a_few_times_not_once_each(
    serve: object, tmp_path: Path, full_audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client sending bad requests while the audit disk was full logged one ERROR
    line a refusal (68 in 3 s); the audit log's own lines are limited to a few a while."""
    caplog.set_level(logging.WARNING)
    server: RunningServer = serve(  # type: ignore[operator]
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), audit_log=full_audit
    )
    stub = server.stub()
    for _ in range(40):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CheckConsumption(flight(ZHANG[:-1]))  # a bad number: INVALID_ARGUMENT
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    lines = [r.getMessage() for r in caplog.records if "not audited" in r.getMessage()]
    assert 1 <= len(lines) <= FAILURE_LINES, lines
    assert "ENOSPC" in lines[0] and "free space" in lines[0]


def test_serve_raises_its_soft_limit_on_open_files_to_the_hard_one(tmp_path: Path) -> None:
    """Each client connection holds a file: started with the usual soft limit (here
    64, the hard one 4096), the server met it at 60 connections."""
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    port = free_port()
    command = ["prlimit", "--nofile=64:4096", *CLI, "serve", "--list", str(listed),
               "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            eventually(lambda: port_answers(port), "the server listening")
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            [line] = [row for row in limits.splitlines() if row.startswith("Max open files")]
            assert line.split()[3:5] == ["4096", "4096"], line
        finally:
            proc.terminate()
            proc.wait(30)


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_list_folder_unreadable_for_want_of_open_files_says_so(
    tmp_path: Path, keyer: SubjectKeyer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of open files, listing the folder fails: it said only `[Errno 24] ...`, as if
    the folder were at fault."""
    folder = tmp_path / "feed"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(folder, keyer).start()

    def no_file_left(_folder: Path) -> object:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(versions, "_candidates", no_file_left)
    feed.poll()
    [(what, _, detail)] = [e for e in feed.events if e[0] == "error"]
    assert "cannot be read (" in detail and "raise it (ulimit -n, LimitNOFILE=" in detail
    assert "the last good list keeps serving" in detail and feed.view() is not None
