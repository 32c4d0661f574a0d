"""The hit and audit logs when the file system fails under them: a write cut
short, a rotation that cannot start the new file, a live file deleted or
moved away, two writers on one set, a quiet period under ``--log-fsync
interval``. Real files and real kernel limits (RLIMIT_FSIZE, RLIMIT_NOFILE
in a child process), no mocks of the file system."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shixin_check.server import audit as audit_mod
from shixin_check.server import hitlog
from shixin_check.server.hitlog import AuditLog, HitLog, LogInUse, log_files
from tests.processes import ServeProcess, run_cli

TODAY = time.time()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(raw) for f in log_files(path) for raw in f.read_bytes().splitlines()]


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python child (its kernel limits are its own), with ``args`` in argv."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_record_the_disk_takes_only_in_part_is_cut_off_again(tmp_path: Path) -> None:
    """The kernel writes part of a record and refuses the rest (here: the file size
    limit, as a full disk would): the call fails, the part is cut off, and the next
    record written once there is room again is a whole line of its own."""
    path = tmp_path / "audit.jsonl"
    done = run_child(
        """
        import resource, signal, sys
        from pathlib import Path
        from shixin_check.server.hitlog import AuditLog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        log = AuditLog(Path(sys.argv[1]))
        log.record("CheckConsumption", "peer", "110105********0001", "ALLOW", 0.0)
        size = Path(sys.argv[1]).stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))
        try:
            log.record("CheckConsumption", "peer", "110105********0002", "DENY", 0.0)
        except OSError as exc:
            print("refused", exc.errno, log.write_errors)
        print("size", Path(sys.argv[1]).stat().st_size == size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        log.record("CheckConsumption", "peer", "110105********0003", "ALLOW", 0.0)
        log.close()
        """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "27", "1", "size", "True"]  # 27: EFBIG
    assert [r["subject"] for r in records(path)] == ["110105********0001", "110105********0003"]
    result = audit_mod.verify(path)
    assert result.ok and result.records == 2, result.problem


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 4 inodes (root only: it is mounted for the test, then unmounted)."""
    folder = tmp_path / "few-inodes"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=4", "tmpfs",
                              str(folder)], capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_rotation_that_cannot_start_the_new_file_is_retried_by_the_next_record(
    few_inodes: Path,
) -> None:
    """The live file is renamed, then the new one cannot be created (no inode left):
    that record fails, and once there is room the next record starts the new live
    file; it failed for good before (every later record renamed a file no longer there)."""
    path = few_inodes / "hits.jsonl"
    log = HitLog(path, max_bytes=200)  # the folder, the live file and its lock: 3 inodes
    log.append({"n": 1, "pad": "x" * 120})
    filler = few_inodes / "filler"
    filler.touch()  # the last inode
    with pytest.raises(OSError) as full:
        log.append({"n": 2, "pad": "x" * 120})  # due to rotate: renamed, then no inode
    assert full.value.errno == errno.ENOSPC
    filler.unlink()
    log.append({"n": 3})
    log.append({"n": 4})
    log.close()
    assert [r["n"] for r in records(path)] == [1, 3, 4]
    assert len(log_files(path)) == 2 and log.write_errors == 1


def test_a_live_file_deleted_under_the_writer_is_counted_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hits.jsonl"
    clock = Clock(TODAY)
    log = HitLog(path, clock=clock)
    log.append({"n": 1})
    path.unlink()
    log.append({"n": 2})  # within the second: into the deleted file, not yet seen
    clock.now += 1.5
    log.append({"n": 3})
    log.close()
    assert [r["n"] for r in records(path)] == [3]
    assert log.write_errors == 1  # shixin_hit_log_errors_total: the alert's signal
    assert "deleted or moved away" in caplog.text


def test_an_audit_log_moved_away_shows_the_records_it_took_as_removed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(TODAY)
    log = AuditLog(path, clock=clock)
    for i in range(3):
        log.record("CheckConsumption", "peer", f"110105********000{i}", "ALLOW", 0.0)
    path.rename(tmp_path / "elsewhere.jsonl")
    clock.now += 1.5
    log.record("CheckConsumption", "peer", "110105********0009", "ALLOW", 0.0)
    log.close()
    assert [r["seq"] for r in records(path)] == [4]  # the chain goes on in a new live file
    problem = audit_mod.verify(path).problem
    assert problem is not None and (problem.kind, problem.seq) == ("removed", 1)


def test_two_writers_on_one_set_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    with pytest.raises(LogInUse, match="another process writes this log"):
        AuditLog(path)
    with pytest.raises(LogInUse):
        HitLog(path)  # one path given for both logs
    first.close()
    AuditLog(path).close()  # free once its writer closed it


def test_a_second_server_on_a_running_servers_audit_log_stops_in_one_line(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    first = ServeProcess("--demo", "--demo-count", "100", "--audit-log", str(audit),
                         log=tmp_path / "first.log")  # fmt: skip
    try:
        first.wait_serving()
        second = run_cli("serve", "--demo", "--listen", "127.0.0.1:0", "--audit-log", str(audit))
        assert second.returncode == 2
        [line] = second.stderr.strip().splitlines()
        assert f"{audit}: another process writes this log" in line
        assert first.proc.poll() is None  # the first goes on
    finally:
        first.stop()  # SIGTERM: it removes its demo folder (SIGKILL would leave it)
    assert audit_mod.verify(audit).ok


def test_records_written_before_a_quiet_period_are_synced_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--log-fsync interval``: the bound holds when no later record comes to sync."""
    synced: list[int] = []
    real = hitlog._sync
    monkeypatch.setattr(hitlog, "_sync", lambda fd: (synced.append(fd), real(fd))[1])
    log = HitLog(tmp_path / "hits.jsonl", fsync="interval", fsync_interval=0.2)
    log.append({"n": 1})  # the first write: synced at once (the interval had passed)
    log.append({"n": 2})  # within the interval: left to the syncer
    count = len(synced)
    deadline = time.monotonic() + 5
    while len(synced) == count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(synced) > count, "nothing synced the second record within the interval"
    log.close()
    assert not any(t.name.startswith("log-sync") and t.is_alive() for t in threading.enumerate())


def test_a_log_that_fails_to_start_holds_nothing(tmp_path: Path) -> None:
    """An audit log whose head cannot be noted fails its start; it must not keep the
    set (a second try in the same process was refused as 'another process'), nor a
    writer lock after it closes: the head is noted before the set is let go."""
    path = tmp_path / "audit.jsonl"
    blocker = tmp_path / "audit.jsonl.head.part"
    blocker.mkdir()  # the head's temporary file cannot be written
    with pytest.raises(IsADirectoryError):
        AuditLog(path)
    blocker.rmdir()
    log = AuditLog(path)  # the set is free again
    log.record("CheckConsumption", "peer", "110105********0001", "ALLOW", 0.0)
    log.close()
    assert hitlog.read_head(path) is not None and hitlog.read_head(path).seq == 1  # type: ignore[union-attr]
    AuditLog(path).close()


class _SyncFails(HitLog):
    """A hit log on a disk whose sync fails (EIO) after the write went in: the one
    system call a test cannot make fail for real; the file and its writes are real."""

    def _after_write(self, now: float) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_a_hit_record_written_but_not_synced_is_withdrawn_at_once(tmp_path: Path) -> None:
    """Under fsync ``always`` a record whose sync fails fails its call (``Unsynced``), yet
    it is in the file, where the feedback report would count a check no client got:
    a withdrawal follows it at once, and the report leaves it out."""
    from shixin_check.server.feedback import build_report
    from shixin_check.server.hitlog import WITHDRAWN_UNSYNCED, Unsynced
    from tests.test_hit_stream import _hit, quarter_now

    path = tmp_path / "hits.log"
    log = _SyncFails(path, fsync="always")
    with pytest.raises(Unsynced):
        _hit(log, 1)
    log.close()
    hit, withdrawal = records(path)
    assert hit["check_id"] == "check-1"
    assert withdrawal["withdrawn"] == ["check-1"]
    assert withdrawal["reason"] == WITHDRAWN_UNSYNCED
    assert log.write_errors == 2  # the hit's sync, then the withdrawal's
    totals = build_report(log_files(path), quarter_now()).totals
    assert (totals.checks, totals.withdrawn) == (0, 1)


@pytest.mark.parametrize("flag", ["--hit-log", "--audit-log"])
def test_a_log_folder_that_cannot_be_made_is_refused_naming_the_flag_and_the_path(
    flag: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "logs" / "records.jsonl"  # a folder under a file: ENOTDIR
    done = run_cli("serve", "--demo", "--demo-count", "10", "--listen", "127.0.0.1:0",
                   flag, str(path))  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert f"{flag}: cannot make the folder {path.parent}: Not a directory" in line, line


def _immutable(folder: Path, on: bool) -> bool:
    """``chattr +i``/``-i`` on ``folder`` (no entry made, renamed or removed in it)."""
    done = subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True)
    return done.returncode == 0


def test_the_probe_of_a_log_whose_rotation_failed_tries_the_rotation(tmp_path: Path) -> None:
    """A rotation that cannot rename the live file fails the record; the probe that
    decides when readiness returns must try that step too, not only a write to the live
    file (which still works): it turned health SERVING while every hit failed."""
    folder = tmp_path / "logs"
    log = HitLog(folder / "hits.jsonl", max_bytes=200)
    log.append({"n": 1, "pad": "x" * 120})
    if not _immutable(folder, True):
        pytest.skip("needs chattr +i (root, on a file system that has it)")
    try:
        with pytest.raises(OSError):
            log.append({"n": 2, "pad": "x" * 120})  # due to rotate: the rename refused
        assert log.failure is not None
        assert not log.probe() and log.failure is not None  # the rotation still fails
    finally:
        _immutable(folder, False)
    assert log.probe() and log.failure is None  # rotated now: a record would go in
    log.append({"n": 3})
    log.close()
    assert [r["n"] for r in records(folder / "hits.jsonl")] == [1, 3]
    assert len(log_files(folder / "hits.jsonl")) == 2


def test_a_live_file_truncated_under_the_writer_is_counted_said_and_sized_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """logrotate's ``copytruncate`` copies the live file away and cuts it to nothing:
    the inode stays, so the writer saw no change, its records (the court's feedback)
    left the set unsaid, and it rotated by the size it had counted, not the file's."""
    path = tmp_path / "hits.jsonl"
    clock = Clock(TODAY)
    line = len(orjson.dumps({"n": 0, "time": TODAY})) + 1
    log = HitLog(path, clock=clock, max_bytes=10 * line + 5)
    for n in range(1, 8):
        log.append({"n": n})
    copy = tmp_path / "hits.jsonl.1"
    copy.write_bytes(path.read_bytes())  # as copytruncate does
    os.truncate(path, 0)
    clock.now += 1.5
    for n in range(8, 16):  # eight records: they fit the file as it is now
        log.append({"n": n})
    assert "hits.jsonl was truncated while this server wrote it" in caplog.text
    assert log.write_errors == 1  # shixin_hit_log_errors_total: the alert's signal
    assert len(log_files(path)) == 1, log_files(path)  # not rotated by the old count
    log.close()
    assert [r["n"] for r in records(path)] == list(range(8, 16))
