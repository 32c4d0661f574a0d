"""The folder of a hit or audit log removed (``rm -rf``) while its writer runs.

It was never made again: the next live file could not be opened (ENOENT), every
call that needs a record failed INTERNAL and readiness stayed NOT_SERVING until
someone ran mkdir, while the log said to check the disk. Now the writer makes the
folder again (as at start), holds the set again there (``<path>.lock``, so a
second writer is still refused) and, for the audit log, notes its head there
again, so ``audit verify`` shows the records lost with the folder instead of
calling the chain that goes on intact. Real files, a real ``serve`` process and
the real ``audit verify`` command; clocks injected where the one-second look at
the live file matters.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path

import grpc
import pytest

from shixin_check.server import audit as audit_mod
from shixin_check.server.hitlog import (
    AuditLog,
    HitLog,
    LogInUse,
    SetTaken,
    read_head,
    write_error_advice,
)
from tests.listdata import basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.test_log_failures import TODAY, Clock, records
from tests.test_log_health import SERVING, Said, check_listed, health
from tests.waiting import eventually


def audit(log: AuditLog, i: int) -> None:
    log.record("CheckConsumption", "peer", f"110105********{i:04d}", "DENY", 0.0)


def mode(folder: Path) -> int:
    return stat.S_IMODE(folder.stat().st_mode)


def test_a_hit_log_whose_folder_is_removed_makes_it_again_and_holds_the_set_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "logs"
    path = folder / "hits.jsonl"
    clock = Clock(TODAY)
    log = HitLog(path, clock=clock)
    made_at_start = mode(folder)
    log.append({"n": 1})
    shutil.rmtree(folder)
    log.append({"n": 2})  # within the second: into the removed file, not yet seen
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        log.append({"n": 3})  # the live file is gone, and its folder: both made again
    assert log.failure is None
    assert folder.is_dir() and mode(folder) == made_at_start
    assert [r["n"] for r in records(path)] == [3]
    assert log.write_errors == 1  # the records that went with the folder, counted once
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "its folder was removed" in said[0], said
    assert "made the folder again" in said[0]
    with pytest.raises(LogInUse):  # the set is held in the folder made again
        HitLog(path)
    log.append({"n": 4})
    log.close()
    HitLog(path).close()  # and let go at close (the old lock went with the old folder)
    assert [r["n"] for r in records(path)] == [3, 4]


def test_an_audit_log_whose_folder_is_removed_goes_on_and_verify_shows_the_loss(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "logs"
    path = folder / "audit.jsonl"
    clock = Clock(TODAY)
    log = AuditLog(path, clock=clock, head_interval=0.02)
    for i in range(3):
        audit(log, i)
    eventually(lambda: read_head(path) is not None and read_head(path).seq == 3,  # type: ignore[union-attr]
               "the head noted")  # fmt: skip
    shutil.rmtree(folder)
    audit(log, 3)  # seq 4, into the removed file
    clock.now += 1.5
    audit(log, 4)  # seq 5: the first record in the folder made again
    assert [r["seq"] for r in records(path)] == [5]
    # the head is noted in the new folder, as its writer runs
    eventually(lambda: path.with_name("audit.jsonl.head").is_file()
               and read_head(path).seq == 5, "the head noted in the folder made again")  # type: ignore[union-attr]  # fmt: skip
    with pytest.raises(LogInUse):
        AuditLog(path)
    log.close()
    result = audit_mod.verify(path)
    assert not result.ok
    assert result.problem is not None
    assert (result.problem.kind, result.problem.seq) == ("removed", 1), result.problem
    assert "seq 1..4 missing" in result.problem.detail
    done = run_cli("audit", "verify", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "removed" in done.stdout, done.stdout


def test_the_second_log_of_a_removed_folder_says_its_folder_was_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both logs in one folder, ``rm -rf`` of it: the hit log made the folder again
    first, and the audit log, finding a folder there, said its live file "was deleted
    or moved away", logrotate's wording, sending the person on call to the wrong
    cause. Each says its folder was removed, once."""
    folder = tmp_path / "logs"
    clock = Clock(TODAY)
    hits = HitLog(folder / "hits.jsonl", clock=clock)
    audits = AuditLog(folder / "audit.jsonl", clock=clock)
    hits.append({"n": 1})
    audit(audits, 1)
    shutil.rmtree(folder)
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        hits.append({"n": 2})  # the folder made again
        audit(audits, 2)  # the audit log's set is gone from it too
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert all("its folder was removed while this server wrote it" in line for line in said)
    assert not any("deleted or moved away" in line for line in said), said
    assert "made the folder again" in said[0] and "held the log again" in said[1], said
    with pytest.raises(LogInUse):  # each set held in the folder made again
        AuditLog(folder / "audit.jsonl")
    hits.close()
    audits.close()


def test_a_lock_file_deleted_by_hand_is_no_removed_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its set's lock file deleted (``rm *.lock``) but the folder kept: a rotation by
    size said nothing before and must not say the folder was removed with every record
    (a re-review saw that, the rotated file intact beside it), and the live file then
    moved away is said as such, not as a removed folder."""
    folder = tmp_path / "logs"
    clock = Clock(TODAY)
    log = AuditLog(folder / "audit.jsonl", clock=clock, max_bytes=600)
    audit(log, 1)
    (folder / "audit.jsonl.lock").unlink()
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        for i in range(2, 8):  # past 600 bytes: rotated by size
            audit(log, i)
        assert len(list(folder.glob("audit.jsonl.*.*"))) >= 1  # a rotated file
        assert [r.getMessage() for r in caplog.records] == []
        (folder / "audit.jsonl").rename(folder / "audit.moved")
        clock.now += 1.5
        audit(log, 8)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "was deleted or moved away" in said[0], said
    log.close()


def test_a_folder_moved_away_is_no_loss_of_its_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``mv logs logs.old`` under a running writer: the records are all in logs.old, but
    the line said the folder was removed and its records lost (a re-review); and a live
    file moved away is told from one deleted."""
    folder = tmp_path / "logs"
    clock = Clock(TODAY)
    log = HitLog(folder / "hits.jsonl", clock=clock)
    log.append({"n": 1})
    folder.rename(tmp_path / "logs.old")
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        log.append({"n": 2})  # the folder made again
        (folder / "hits.jsonl").rename(folder / "hits.moved")
        clock.now += 1.5
        log.append({"n": 3})
        (folder / "hits.jsonl").unlink()
        clock.now += 1.5
        log.append({"n": 4})
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert "its folder was moved or replaced" in said[0] and "lost" not in said[0], said
    assert [r["n"] for r in records(tmp_path / "logs.old" / "hits.jsonl")] == [1]
    assert "(moved: they are in it, wherever it went)" in said[1], said
    assert "(deleted: they are lost)" in said[2], said
    log.close()


@pytest.mark.parametrize("written", [0, 1])
def test_an_audit_log_closed_before_it_saw_its_folder_removed_leaves_its_head_there(
    written: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server stopped within the second after the removal (``written``: records that
    went into the removed file meanwhile), or quiet since: no record saw it, so close
    makes the folder again to note the head; else a next server began a fresh chain
    at seq 1 and ``audit verify`` called it intact, the records lost without a trace."""
    folder = tmp_path / "logs"
    path = folder / "audit.jsonl"
    log = AuditLog(path, head_interval=0.02)
    for i in range(3):
        audit(log, i)
    eventually(lambda: read_head(path) is not None and read_head(path).seq == 3,  # type: ignore[union-attr]
               "the head noted")  # fmt: skip
    shutil.rmtree(folder)
    for i in range(written):
        audit(log, 10 + i)
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        log.close()
    assert "made it again to note the chain head" in caplog.text
    assert "its folder was removed" in caplog.text and "records lost" in caplog.text
    head = read_head(path)
    assert head is not None and head.seq == 3 + written
    [(_, gone)] = audit_mod.verify_sets(path)
    assert gone.problem is not None and gone.problem.kind == "truncated", gone
    again = AuditLog(path)  # a restarted server goes on from the head
    audit(again, 20)
    again.close()
    assert [r["seq"] for r in records(path)] == [4 + written]
    result = audit_mod.verify(path)
    assert result.problem is not None and result.problem.kind == "removed", result


def test_an_audit_folder_moved_before_a_stop_is_said_moved_at_the_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``mv logs logs.moved``, no record after it, then the stop: it said the folder was
    removed and its records lost, all of them on disk in logs.moved (a re-review)."""
    folder = tmp_path / "logs"
    log = AuditLog(folder / "audit.jsonl")
    audit(log, 1)
    folder.rename(tmp_path / "logs.moved")
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        log.close()
    assert "its folder was moved or replaced" in caplog.text, caplog.text
    assert "(they are wherever it went)" in caplog.text and "lost" not in caplog.text
    assert [r["seq"] for r in records(tmp_path / "logs.moved" / "audit.jsonl")] == [1]


@pytest.mark.parametrize("kind", [HitLog, AuditLog])
def test_the_probe_makes_a_removed_folder_again_with_no_record_coming(
    kind: type[HitLog] | type[AuditLog], tmp_path: Path
) -> None:
    """While the folder cannot be made (a file has its name) records fail; once it
    can, the probe (what brings readiness back with no traffic) makes it again."""
    folder = tmp_path / "logs"
    path = folder / "records.jsonl"
    clock = Clock(TODAY)
    log = kind(path, clock=clock)
    for i in range(2):
        log.append({"n": i})
    if kind is AuditLog:  # noted in the folder about to go: it must be noted again
        eventually(lambda: read_head(path) is not None and read_head(path).seq == 2,  # type: ignore[union-attr]
                   "the head noted")  # fmt: skip
    shutil.rmtree(folder)
    folder.write_text("")  # its name taken: the folder cannot be made yet
    clock.now += 1.5
    with pytest.raises(OSError) as refused:
        log.append({"n": 9})
    assert log.failure is not None
    assert "is not a folder" in write_error_advice(refused.value, path)
    clock.now += 1.0
    assert not log.probe()
    folder.unlink()
    clock.now += 1.0
    assert log.probe() and log.failure is None
    assert path.is_file() and path.read_bytes() == b""
    with pytest.raises(LogInUse):
        kind(path)
    if kind is AuditLog:
        # noted again in the new folder with no record written there: verify must not
        # read the empty log as an intact chain
        eventually(lambda: path.with_name(path.name + ".head").is_file(),
                   "the head noted in the folder made again")  # fmt: skip
        log.close()
        result = audit_mod.verify(path)
        assert result.problem is not None and result.problem.kind == "truncated", result
        assert "the head records seq 2" in result.problem.detail
    else:
        log.close()


def test_the_probe_of_a_rotation_that_failed_with_the_folder_gone_makes_it_again(
    tmp_path: Path,
) -> None:
    """The folder removed within the second, and the next record due to rotate: the
    rename fails (ENOENT); the probe must look for the live file as a record would,
    or it tried that rename for ever."""
    folder = tmp_path / "logs"
    path = folder / "hits.jsonl"
    clock = Clock(TODAY)
    log = HitLog(path, clock=clock, max_bytes=200)
    log.append({"n": 1, "pad": "x" * 120})
    shutil.rmtree(folder)
    clock.now += 0.5
    with pytest.raises(FileNotFoundError):
        log.append({"n": 2, "pad": "x" * 120})  # due to rotate: the file to rename is gone
    clock.now += 1.0
    assert log.probe() and log.failure is None
    log.append({"n": 3})
    log.close()
    assert [r["n"] for r in records(path)] == [3]


def test_enoent_is_advised_as_a_removed_folder_not_a_disk_fault(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "hits.jsonl"
    advice = write_error_advice(OSError(errno.ENOENT, os.strerror(errno.ENOENT)), path)
    assert "dmesg" not in advice and "check the disk" not in advice
    assert f"{path.parent} (or a file of the log in it) was removed" in advice
    assert f"make {path.parent} again" in advice


def test_a_running_server_whose_log_folder_is_removed_makes_it_again(tmp_path: Path) -> None:
    """``rm -rf`` of the folder holding both logs under a running server: checks of a
    listed subject go on, health stays SERVING, a second server is still refused the
    set, and ``audit verify`` shows the audit records lost with the folder."""
    listing = write_jsonl(tmp_path / "list.jsonl", basic_rows())
    folder = tmp_path / "logs"
    hits, audits = folder / "hits.jsonl", folder / "audit.jsonl"
    server = ServeProcess("--list", str(listing), "--hit-log", str(hits),
                          "--audit-log", str(audits))  # fmt: skip
    output = Said(server)
    channel = grpc.insecure_channel(server.target)
    try:
        server.wait_serving()
        assert check_listed(channel) is grpc.StatusCode.OK
        shutil.rmtree(folder)

        def goes_on() -> bool:
            assert check_listed(channel) is grpc.StatusCode.OK, output.text()
            return hits.is_file() and audits.is_file() and bool(records(hits))

        eventually(goes_on, "the log folder made again by the server", step=0.2)
        # SERVING once the chain head is noted in the folder made again (tried each 0.1 s)
        eventually(lambda: health(channel, "") == SERVING, "SERVING")
        assert check_listed(channel) is grpc.StatusCode.OK
        second = run_cli("serve", "--list", str(listing), "--listen", "127.0.0.1:0",
                         "--audit-log", str(audits))  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "another process writes this log" in second.stderr
        assert server.proc.poll() is None
    finally:
        channel.close()
        code = server.stop()
    said = output.text()
    assert code == 0, said
    assert "its folder was removed" in said and "check the disk" not in said, said
    assert "deleted or moved away" not in said, said  # logrotate's wording: not this
    assert "Traceback" not in said, said
    done = run_cli("audit", "verify", str(audits))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "removed" in done.stdout and "seq 1" in done.stdout, done.stdout


def test_a_writer_never_carries_its_chain_into_a_set_another_started_in_the_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The folder removed, and a second server started on the same path before the
    first noticed (a quiet server notices at its next record): the second makes the
    folder and writes its own chain. Once it stops, the first must not take the set
    and append its chain to the second's file (the file read seq 1,2,3,4,3,4,...,
    which `audit verify` called reordered): it refuses, saying why, and stops
    cleanly."""
    folder = tmp_path / "logs"
    path = folder / "audit.jsonl"
    clock = Clock(TODAY)
    first = AuditLog(path, clock=clock)
    audit(first, 1)
    audit(first, 2)
    shutil.rmtree(folder)
    second = AuditLog(path, clock=clock)  # the folder is gone: nothing holds the set there
    for i in range(4):
        audit(second, 10 + i)
    second.close()
    clock.now += 1.5
    with pytest.raises(SetTaken) as refused:
        audit(first, 3)
    assert "another server wrote this log while its folder was gone" in str(refused.value)
    assert "restart this one" in write_error_advice(refused.value, path)
    assert [r["seq"] for r in records(path)] == [1, 2, 3, 4]  # the second's chain alone
    with caplog.at_level(logging.ERROR, logger="shixin.server"):
        first.close()  # no exception: a server's stop goes on
    assert "its chain head is not noted at this stop" in caplog.text
    assert audit_mod.verify(path).ok
