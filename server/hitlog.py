"""The hit log and the audit log: evidence, not application logging.

The policy makes every seller keep complete logs of who was checked, from
where, and what was enforced, and report it every quarter. Losing a record,
or letting one be edited unseen, is a failure; so these logs have their own
writer with its own durability contract, and never pass through ``logging``.

Durability. Each record is one ``os.write`` of one JSON line to an
``O_APPEND`` file, made before the answer is returned. Once ``write``
returns, the record is in the kernel: a process crash, even SIGKILL, loses
nothing a client was answered about. Power loss or a kernel crash can still
lose what the kernel had not yet put on disk, and ``fsync`` says how much:
``"never"`` (the kernel writes back on its own, typically within 30 s),
``"interval"`` (``fdatasync`` on the first write at least ``fsync_interval``
seconds after the last one, and by a background thread for what a quiet
period left) or ``"always"`` (``fdatasync`` after every record, before the
answer: nothing answered is lost).

Failures. A record the disk refuses fails its call and is counted
(``write_errors``); a part of it the kernel did take is cut off again, so no
torn line is left for the next record to join. A rotation that could not
create the new live file leaves the next record to create it. A live file
deleted or moved away under the writer is noticed at the next record written
at least a second after the last such look (counted, logged, a new live file
started). When its folder went with it (``rm -rf`` of the log's folder), the
folder is made again as at start, the set held again there (``<path>.lock``)
and, for the audit log, its head noted there again: the chain goes on from
its last ``seq``, so ``audit verify`` shows the records lost with the folder
as ``removed`` (or, before the next record, the head as ahead of the log:
``truncated``), never as an intact chain. An audit log closed before any
record saw its folder gone makes it again to leave its head there.

While writes fail, ``failure`` holds the last error (the server's readiness
is NOT_SERVING meanwhile: every check that needs a record would fail). It is
cleared by the next record written, or by ``probe``, which the server calls
about once a second while it is set, so that a log that recovers with no
traffic reaching the server (health keeps it away) is found writable: it
writes as many bytes as the record that failed to the live file and cuts
them off again at once (under the writer's lock, no newline: a reader never
takes them for a record; a crash between the two leaves them at the end,
where the next start moves them to ``<path>.torn`` as it does a torn record).
``failure_line`` words a failure for the server's log: ``FAILURE_LINES`` lines
at most in ``FAILURE_LINE_EVERY_S`` seconds per log, counting the rest.

At start, the bytes of a record cut short at the live file's end (power
loss) are moved to ``<path>.torn``. Each set
is held by its writer's ``flock`` on ``<path>.lock``: a second writer is
refused (``LogInUse``).

Rotation. The live file keeps its name. When a record would take it past
``max_bytes``, or the first record of a new China-time day arrives, it is
renamed ``<path>.<YYYYMMDD>.<n>`` (the day of its records; ``n`` grows across
the whole set, so ``n`` alone orders it) and a new live file is started.
``log_files`` lists a set oldest first; ``open_log_files`` also opens each file
for a reader of a running server's set (``feedback``, ``audit verify``), which
then reads the files it listed even if a rotation renames one meanwhile.

Audit chain. Every audit record carries ``seq`` (1, 2, ... across rotations
and restarts) and ``prev``, the SHA-256 of the previous record's line without
its newline (64 zeros for the first). Editing, removing or reordering a
record without writing every later one again breaks the chain at the record
after it; ``server.audit.verify`` finds where. The chain is not keyed: whoever
can write the files can write an edited chain and head that verify whole, so
it shows damage and clumsy edits, not a forger's; only a head copied off the
machine (``audit verify`` prints it) anchors what came before it. A chain's
first record is its writer's own (its time, to a fraction of a microsecond,
and the peer of a connection only that writer accepted), so two sets that
begin with the same record are one set and its copy.

Chain head. A chain cannot show records cut off its end, so ``AuditLog``
also keeps ``<path>.head``: the last record's ``seq``, its hash and the file
it was in, replaced atomically (temp file, then ``os.replace``). Replacing a
file costs about 30 times the record write, too much before every answer, so
a background thread notes the head at most every ``head_interval`` seconds
(0.1 by default) when it moved, and ``close`` notes it at once; it is synced
unless ``fsync`` is ``"never"``, off the answer path. Records cut within that
window before a kill show as "the head is behind the end", not as a cut. It
is noted after the records it names are written, so it is never ahead of the
log unless records were lost: cut, or lost to power loss under ``fsync``
``"never"`` or ``"interval"``. A writer that starts on a log that ends before
its head goes on from the head, so the gap stays in the chain. One that starts
on a log holding records without a head, or with a file there that is not one,
cannot tell whether records were cut; one whose head names a file of another
set (``audit.w2.jsonl`` beside ``audit.w1.jsonl``) starts on swapped or copied
files. Either writes a record saying so first (``"head_at_start"``:
``"missing"``, ``"unreadable"`` or ``"misplaced"``, with ``after_seq``), which
``verify`` reports, so that the head it notes next does not vouch for a log it
could not check.

Withdrawals. A hit record is written before the answer leaves, and a call
can still fail after it: when its audit record cannot be written, or a later
hit record of its batch, no answer leaves and no client ever holds the hit's
check id (a retry gets a new one). Such hits are withdrawn by one record of
their own, written after them to the same set (it may land in the next file
of the set, past a rotation)::

    {"time": 1767139200.25, "withdrawn": ["5f0c9a1b-2a", ...],
     "reason": "the call failed before its answer left: its audit record could not be written"}

It has no ``check_id`` and no ``decision``, so nothing that reads hit records
takes it for one; ``withdrawn_ids`` reads it (a single check id as a string is
read too: a withdrawal written by hand). The feedback report does not count a
withdrawn check, and the Redis forwarder forwards withdrawals with the hits.

One writer process per path: a set's size, day and chain head live in its
writer. Replicas write their own paths; the feedback report counts a record
with the ``check_id``, time and subject of one counted as that check again,
across them (two processes may draw the same random check-id prefix, so the
check id alone is not enough). Neither log ever holds a plaintext ID number.

Workers. ``serve --workers N`` runs N server processes, so N writers: worker
``i`` writes the set at ``worker_log_path(path, i)`` (``hits.jsonl`` becomes
``hits.w1.jsonl``, ``hits.w2.jsonl``, ...; a single server keeps ``path``),
each rotated and, for the audit log, chained and headed on its own. A
restarted worker ``i`` goes on with its own set, as a restarted server does.
``log_sets`` finds every set written under a path (the single server's and
each worker's), which is what ``audit verify`` and ``feedback`` read.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from shixin_check.domain.decision import MatchOutcome, Query, Verdict
from shixin_check.domain.model import china_day
from shixin_check.domain.rules import describe_purchase
from shixin_check.domain.system import errno_words, limit_advice, make_folders, owned_here

FsyncMode = Literal["never", "always", "interval"]
FSYNC_MODES: tuple[str, ...] = get_args(FsyncMode)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
GENESIS = "0" * 64  # ``prev`` of the first audit record of a set

# fdatasync is enough for appends (the new size is flushed with the data); macOS lacks it.
_sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_TAIL_CHUNK = 8192
_READ_CHUNK = 1 << 20  # what ``HeldFile.lines`` reads at a time
_METADATA_SECRETS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_METADATA_VALUE_MAX = 256
HEAD_INTERVAL = 0.1  # seconds between notes of the audit chain head, at most
#: What a writer found instead of its head at its start (``AuditLog._mark_head_lost``'s
#: ``head_at_start``), in words
HEAD_AT_START = {
    "missing": "missing",
    "unreadable": "not an audit head",
    "misplaced": "noted by another log's writer",
}
#: Lines in the server's log about one log's failing writes, at most, in each window of
#: ``FAILURE_LINE_EVERY_S`` seconds: a full disk fails every check, and a line each would
#: bury everything else (the rest are counted, in the next line)
FAILURE_LINES = 3
FAILURE_LINE_EVERY_S = 10.0

log = logging.getLogger("shixin.server")


def rotated_pattern(path: Path) -> re.Pattern[str]:
    """Names of the rotated files of the set at ``path``: groups day and n."""
    return re.compile(re.escape(path.name) + r"\.(\d{8})\.(\d+)")


def _beside(path: Path, pattern: re.Pattern[str]) -> list[tuple[int, str, Path]]:
    """(n, day, file) for each file beside ``path`` whose name ``pattern`` (groups day
    and n) matches whole, by n (then name)."""
    found: list[tuple[int, str, Path]] = []
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            match = pattern.fullmatch(child.name)
            if match:
                found.append((int(match.group(2)), match.group(1), child))
    return sorted(found, key=lambda t: (t[0], t[2].name))


def log_files(path: Path) -> list[Path]:
    """The files of the set at ``path``, oldest first: rotated ones by n, then the live one."""
    files = [child for _, _, child in _beside(path, rotated_pattern(path))]
    if path.is_file():
        files.append(path)
    return files


@dataclass(frozen=True)
class HeldFile:
    """One file of a log set, opened when the set was listed (``open_log_files``).

    A reader of a running server's set reads through the descriptor, never by the
    name again: the writer renames its live file at rotation, and an archiving step
    may compress or remove a rotated one, yet the file listed is read whole.
    """

    path: Path  # its name when the set was listed
    n: int | None  # its rotation number; None for the live file
    day: str  # YYYYMMDD of a rotated file's records; "" for the live file
    fd: int
    size: int  # its size when opened: what was written before the listing
    identity: tuple[int, int]  # (device, inode): the file, whatever its name

    def lines(self, *, grown: bool = False) -> Iterator[tuple[bytes, bool]]:
        """(line without its newline, whether it had one) for each line that begins
        within ``size`` (the last of them read to its end), or, ``grown``, as far as
        the file goes now. Read with ``pread``, so two readers never move each other."""
        limit = None if grown else self.size
        offset = start = 0  # bytes read; where the next line begins
        carry = b""
        while limit is None or start < limit:
            chunk = os.pread(self.fd, _READ_CHUNK, offset)
            if not chunk:
                if carry:
                    yield carry, False
                return
            offset += len(chunk)
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for part in parts:
                if limit is not None and start >= limit:
                    return
                start += len(part) + 1
                yield part, True

    def close(self) -> None:
        os.close(self.fd)


def open_log_files(path: Path) -> list[HeldFile]:
    """The files of the set at ``path``, oldest first as ``log_files`` lists them, each
    opened now; the caller closes them (``HeldFile.close``).

    The live file is opened before the rotated ones are listed: a rotation in
    between renames the file held, which is then listed under its rotated name
    and read once, in that place (files are told apart by device and inode).
    Whatever happens after, every file read is one that was listed, so a reader
    sees at least every record written before it began. A rotated file gone
    between the listing and its opening is left out, as if gone before.
    """
    held: list[HeldFile] = []
    live = _hold_file(path, None, "")
    try:
        seen = {live.identity} if live is not None else set()
        for n, day, child in _beside(path, rotated_pattern(path)):
            one = _hold_file(child, n, day)
            if one is None:
                continue
            if one.identity in seen:  # the live file renamed since, or a second name (hard link)
                one.close()
                if live is None or one.identity != live.identity:
                    continue
                one, live = HeldFile(child, n, day, live.fd, live.size, live.identity), None
            seen.add(one.identity)
            held.append(one)
    except BaseException:
        for one in held:
            one.close()
        if live is not None:
            live.close()
        raise
    return held if live is None else [*held, live]


def _hold_file(path: Path, n: int | None, day: str) -> HeldFile | None:
    """``path`` opened for ``open_log_files``; None when no file has that name now.
    A name that is not a regular file (a directory, a dangling link) is an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the reader
    except FileNotFoundError:
        if path.is_symlink():  # the link stays, what it named is gone: not "no file"
            raise OSError(f"{path} is a link to a file that is not there") from None
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = IsADirectoryError if stat.S_ISDIR(st.st_mode) else OSError
            raise kind(f"{path} is named like a file of the log but is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return HeldFile(path, n, day, fd, st.st_size, (st.st_dev, st.st_ino))


def unread_siblings(path: Path) -> list[tuple[int, str, Path]]:
    """(n, day, file) for each file beside the set at ``path`` named like one of its
    rotated files with more after it (``hits.jsonl.20260930.1.gz``: compressed or
    renamed by an archiving step): no reader of the set reads it. By n."""
    return _beside(path, re.compile(rotated_pattern(path).pattern + r"\..+", re.DOTALL))


def worker_log_path(path: Path, worker: int) -> Path:
    """Where worker ``worker`` (1, 2, ...) of ``serve --workers`` writes the set at ``path``:
    ``hits.jsonl`` -> ``hits.w1.jsonl``, ``audit`` -> ``audit.w1``."""
    if worker < 1:
        raise ValueError(f"worker numbers start at 1, not {worker}")
    return path.with_name(f"{path.stem}.w{worker}{path.suffix}")


def _worker_pattern(path: Path) -> re.Pattern[str]:
    """Names of every file of the per-worker sets of ``path``: group 1 the worker."""
    return re.compile(
        re.escape(path.stem)
        + r"\.w([1-9]\d*)"
        + re.escape(path.suffix)
        + r"(?:\.\d{8}\.\d+|\.head)?"
    )


def log_sets(path: Path) -> list[Path]:
    """Every set written under ``path``: ``path`` itself (a single server's) when any of
    its files is there, then each worker's (``worker_log_path``), by worker number."""
    sets = [path] if log_files(path) or head_path(path).is_file() else []
    return sets + [worker_log_path(path, n) for n in sorted(_workers_found(path))]


def _workers_found(path: Path) -> set[int]:
    """The numbers of the workers that left a file of their set of ``path``."""
    pattern = _worker_pattern(path)
    workers: set[int] = set()
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            found = pattern.fullmatch(child.name)
            if found:
                workers.add(int(found.group(1)))
    return workers


def worker_gaps(path: Path, workers: int = 0) -> list[Path]:
    """The per-worker sets of ``path`` missing below the highest-numbered one found, or
    below ``workers`` + 1 (what the audit sets' start records say the server ran).

    ``serve --workers N`` always starts workers 1 to N, so a number skipped is a
    set moved or removed whole (its head too), which neither the other chains nor
    the other hit logs show. A highest-numbered set removed whole leaves no gap: only
    ``workers`` shows it.
    """
    found = _workers_found(path)
    top = max(max(found, default=0), workers)
    return [worker_log_path(path, n) for n in range(1, top + 1) if n not in found]


def names_a_file_of(path: Path, name: str) -> bool:
    """Whether ``name`` is one the writer of the set at ``path`` gives its files: the
    live file's, or a rotated one's (``<path>.<YYYYMMDD>.<n>``)."""
    return name == path.name or rotated_pattern(path).fullmatch(name) is not None


#: Why the hit records of a call are withdrawn when its audit record could not be written.
WITHDRAWN_UNAUDITED = (
    "the call failed before its answer left: its audit record could not be written"
)
#: Why the hit records of a batch are withdrawn when a later hit of it could not be written.
WITHDRAWN_HIT_UNWRITTEN = (
    "the call failed before its answer left: a hit record could not be written"
)
#: Why a hit record is withdrawn when it is in the file but could not be synced to disk.
WITHDRAWN_UNSYNCED = "the call failed before its answer left: its hit record could not be synced"
#: Why the answers of a call never left, as the log line of a withdrawal that failed
#: says it, by the withdrawal's reason
_NOT_LEFT = {
    WITHDRAWN_UNAUDITED: "the audit record could not be written",
    WITHDRAWN_HIT_UNWRITTEN: "a later hit record of the batch could not be written",
    WITHDRAWN_UNSYNCED: "the hit record could not be synced to disk",
}


def withdrawn_ids(record: object) -> list[str] | None:
    """The check ids a withdrawal record (``HitLog.withdraw``) withdraws; None when
    ``record`` is not one: ``withdrawn`` a check id, or a list of them, and no
    ``check_id`` (the field of a hit)."""
    if not isinstance(record, Mapping) or "check_id" in record:
        return None
    ids = record.get("withdrawn")
    if isinstance(ids, str):
        return [ids] if ids else None
    if isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids):
        return ids
    return None


def line_hash(line: bytes) -> str:
    """What the next audit record's ``prev`` holds: SHA-256 of a line without its newline."""
    return hashlib.sha256(line).hexdigest()


def last_line(path: Path) -> bytes:
    """The last newline-terminated line of ``path``, without its newline (b"" if none)."""
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        data = b""
        chunk = _TAIL_CHUNK
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            end = data.rfind(b"\n")
            if end >= 0:
                start = data.rfind(b"\n", 0, end)
                if start >= 0 or pos == 0:
                    return data[start + 1 : end]
            chunk *= 2
    return b""


def last_record(path: Path) -> dict[str, Any] | None:
    """The last line of ``path`` that is a JSON object.

    The whole file is read only when its last line is not one (torn by power loss).
    """
    record = _parse(last_line(path))
    if record is None:
        with path.open("rb") as f:
            for raw in f:
                record = _parse(raw.rstrip(b"\n")) or record
    return record


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _day_window(day: int) -> tuple[float, float]:
    """[start, end) in unix seconds of a China-time day number."""
    start = float(day * 86400 - 8 * 3600)
    return start, start + 86400


def _day_text(day: int) -> str:
    return _dt.date.fromordinal(_EPOCH_ORDINAL + day).strftime("%Y%m%d")


def _sync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Unsynced(OSError):
    """A record that is in the file (the kernel holds it: every reader sees it) but
    could not be synced to disk (``fsync`` ``always``, or ``interval`` when due): its
    call fails all the same, the record stays."""


class LogInUse(OSError):
    """Another process writes the set at this path (``<path>.lock`` is held)."""


class SetTaken(LogInUse):
    """While this writer's folder was gone, another server made it again and wrote the
    set there: this writer's chain must not go on in a set another one started."""


def _hold(path: Path) -> int:
    """Hold ``<path>.lock`` for this writer's life (released by the kernel when the
    process ends, however it ends), or ``LogInUse``: two writers on one set would
    interleave records and break the audit chain's order."""
    lock = path.with_name(path.name + ".lock")
    fd = open_for_writing(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogInUse(
            f"{path}: another process writes this log (it holds {lock.name}); "
            "give each server its own --hit-log and --audit-log, and never one path for both"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class ForeignFile(OSError):
    """A file of a log that another user made (a symbolic link, or the file itself):
    whoever can write the log's folder would have the server append records to a file
    of their choosing, or to one they can edit. Never written."""


def open_for_writing(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` (mode 0640 when made, closed on exec) for a file of a log:
    never through a symbolic link another user made, never a file another user owns
    (``ForeignFile``). A link this server's user or root made is followed."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        link = os.lstat(path)
        if not owned_here(link.st_uid):
            raise ForeignFile(
                errno.ELOOP, f"{path} is a symbolic link another user made (uid "
                f"{link.st_uid}), which this server never follows", str(path),
            ) from None  # fmt: skip
        fd = os.open(path, flags | os.O_CLOEXEC, 0o640)
    owner = os.fstat(fd).st_uid
    if not owned_here(owner):
        os.close(fd)
        raise ForeignFile(
            errno.EPERM, f"{path} is owned by another user (uid {owner}), who could edit "
            "what this server writes in it", str(path),
        )  # fmt: skip
    return fd


def describe_write_error(exc: OSError) -> str:
    """``EFBIG (File too large)``: the errno's name and its text, without a traceback."""
    if isinstance(exc, ForeignFile) and exc.errno is not None:  # its own words: ELOOP's mislead
        return str(exc.strerror)
    return errno_words(exc)


def write_error_advice(exc: OSError, path: Path) -> str:
    """What to do about a write error of the log at ``path``."""
    folder = path.parent
    if isinstance(exc, SetTaken):  # another server wrote the set while the folder was gone
        return ("give each server its own --hit-log and --audit-log, and restart this one: "
                "it writes no record into a log another server started")  # fmt: skip
    if isinstance(exc, LogInUse):  # its folder was made again, and another writer took it
        return "stop the other writer: this server writes the log again once it holds it"
    if exc.errno == errno.ENOENT:  # the log's folder (or its live file) removed under it
        return (f"{folder} (or a file of the log in it) was removed under this server: it "
                f"makes the folder again and starts a new live file at the next write; if "
                f"this goes on, make {folder} again (mkdir) where this server can write")  # fmt: skip
    if isinstance(exc, ForeignFile):  # another user's link or file where a file goes
        return (f"remove it, and keep {folder} and the folders above it writable by this "
                "server's user alone")  # fmt: skip
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # the folder's name taken by a file
        return f"{folder} is not a folder: move what has its name away (it is made again then)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space (or inodes, or quota) on the file system of {folder}"
    if exc.errno == errno.EFBIG:
        return f"{limit_advice(exc)}, or give --log-max-mib below it so the log rotates first"
    if exc.errno in (errno.EMFILE, errno.ENFILE):  # a rotation's new file: not the disk
        return limit_advice(exc)
    if exc.errno == errno.EROFS:
        return f"the file system of {folder} is read-only: remount it read-write"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"give this server write access to {folder}"
    return f"check the disk under {folder} (dmesg)"


def _keep_doing(
    ref: weakref.ref[Any], stop: threading.Event, interval: float, work: Callable[[Any], None],
    failed: str, recovered: str = "",
) -> None:  # fmt: skip
    """``work(log)`` every ``interval`` seconds until ``stop``, off the answer path: the
    log's sync under ``fsync interval``, the audit chain's head. Weakly held, so a log
    dropped without ``close`` is still freed. A failure is logged once (``failed`` %
    (path, error)), and its end when ``recovered`` says how (% path)."""
    failing = False
    while not stop.wait(interval):
        found = ref()
        if found is None:
            return
        try:
            work(found)
        except OSError as exc:
            if not failing:
                log.error(failed, found.path, describe_write_error(exc))
            failing = True
        else:
            if failing and recovered:
                log.info(recovered, found.path)
            failing = False
        del found


class AppendLog:
    """JSON Lines appended with one write per record, rotated by size and China-time day."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: FsyncMode = "never",
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        if max_bytes <= 0 or fsync_interval < 0:
            raise ValueError("max_bytes must be positive and fsync_interval not negative")
        make_folders(path.parent)  # its records name people on the list
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._clock = clock
        #: records that could not be written (disk full, I/O error): the metrics'
        #: shixin_hit_log_errors_total / shixin_audit_log_errors_total
        self.write_errors = 0
        #: the last write error while writes fail; None once a record or ``probe`` went in
        self.failure: OSError | None = None
        self._probe_bytes = 1  # the size of the record that failed: what the probe writes
        self._window_at = -FAILURE_LINE_EVERY_S  # when ``failure_line``'s window began
        self._said = 0  # lines given in it
        self._unsaid = 0  # failures not worded since the last line
        #: the last write errors raised (a failing call may fail a withdrawal after its own)
        self._raised: collections.deque[OSError] = collections.deque(maxlen=8)
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        #: (st_dev, st_ino) of the folder the live file was opened in (None: not yet)
        self._folder_identity: tuple[int, int] | None = None
        #: the live file found gone was still linked somewhere (moved, not deleted)
        self._gone_linked = False
        self._owner = _hold(path)  # before anything is written: one writer per set
        try:
            self._open_live()
            self._cut_torn_line()
            self._day_window = _day_window(self._day_of_live_file())
            self._next_n = self._first_free_n()
        except BaseException:  # nothing held once the constructor failed
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._owner)
            raise
        self._synced_at = clock()
        self._unsynced = False
        self._checked_at = clock()  # when the live file was last found where it should be
        if fsync == "interval":
            self._stop_syncing = threading.Event()
            threading.Thread(
                target=_keep_doing, args=(weakref.ref(self), self._stop_syncing, fsync_interval,
                                          AppendLog._sync_if_behind, "%s: cannot sync: %s"),
                name=f"log-sync {path.name}", daemon=True,
            ).start()  # fmt: skip

    # --- the file ---------------------------------------------------------

    def _open_live(self) -> None:
        """Open (create) the live file: at start, at rotation, and once the live file
        was lost or could not be made (never for a record that needs no new one).

        Its folder removed under the writer (with every file of the set) is made
        again, as at start; the set is held again first wherever ``<path>.lock`` is
        not the file this writer holds (the folder removed, or made again by hand),
        or a second server started on the new folder could write the set too.
        """
        replaced = self._folder_replaced()  # made again by another log kept in it too
        made = self._regain()
        fd = open_for_writing(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if made or replaced:
            log.error(
                "%s %s: its folder was %s while this server wrote it, with every file of "
                "the log: %s; %s and started a new live file in it", self.kind, self.path,
                "moved or replaced" if self._gone_linked else "removed",
                "they are wherever it went, out of the log's set, with the records written "
                "since until now" if self._gone_linked else "their records are lost, and "
                "those written since until now",
                "made the folder again (as at start)" if made else "held the log again in "
                "the folder made again (by another log of this server in it)",
            )  # fmt: skip
        self._gone_linked = False
        st = os.fstat(fd)
        self._fd, self._size, self._identity = fd, st.st_size, (st.st_dev, st.st_ino)
        folder = os.stat(self.path.parent)
        self._folder_identity = (folder.st_dev, folder.st_ino)
        if self.fsync != "never":
            _sync_dir(self.path.parent)

    def _folder_replaced(self) -> bool:
        """Whether the log's folder is there but is not the one its live file was opened
        in: removed, and made again (by another log of this server kept in it)."""
        if self._folder_identity is None:
            return False
        try:
            st = os.stat(self.path.parent)
        except OSError:  # not there (or no folder): ``_regain`` makes it, and says so
            return False
        return (st.st_dev, st.st_ino) != self._folder_identity

    def _regain(self) -> bool:
        """With the lock held: the folder made again if it was removed (as at start, the
        same mode), and the set held again if ``<path>.lock`` is not the file held
        (``LogInUse``: another writer took the folder made again). True when made."""
        folder = self.path.parent
        made = not folder.is_dir()
        if made:
            make_folders(folder)
        if self._owner >= 0 and not self._holds_set():
            if not made and self._written_by_another():
                raise SetTaken(
                    f"{self.path}: another server wrote this log while its folder was gone "
                    "(it made the folder again before this server noticed): this server "
                    "writes no record into it",
                )
            self._hold_again()
        return made

    def _written_by_another(self) -> bool:
        """Whether the live file at ``path`` holds records this writer did not write:
        in a folder made again by someone else, another server's."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return st.st_size > 0 and (st.st_dev, st.st_ino) != self._identity

    def _holds_set(self) -> bool:
        """Whether ``<path>.lock`` is the file this writer holds locked."""
        try:
            st = os.stat(self.path.with_name(self.path.name + ".lock"))
        except FileNotFoundError:
            return False
        held = os.fstat(self._owner)
        return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)

    def _hold_again(self) -> None:
        """Hold the set in its folder as it is now, then let the lock held before go
        (a file in a removed folder, which no other writer can reach)."""
        owner = _hold(self.path)
        os.close(self._owner)
        self._owner = owner
        self._held_again()

    def _held_again(self) -> None:
        """Called with the lock held once the set is held in a new ``<path>.lock``."""

    def _cut_torn_line(self) -> None:
        """After power loss the file may end mid-record: those bytes are no record. They
        are cut from the live file (so the next record starts a line of its own, and an
        audit chain reads as cut there, not as edited) and kept in ``<path>.torn``."""
        start = self._torn_start()
        if start is None:
            return
        with self.path.open("rb") as f:
            f.seek(start)
            torn = f.read()
        aside = self.path.with_name(self.path.name + ".torn")
        with os.fdopen(
            open_for_writing(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab"
        ) as out:
            out.write(torn + b"\n")
        os.ftruncate(self._fd, start)
        self._size = start
        log.warning(
            "%s ended in %d bytes of a record cut short (power loss?); they were moved to %s",
            self.path, len(torn), aside.name,
        )  # fmt: skip

    def _torn_start(self) -> int | None:
        """Where the live file's unfinished last line starts; None when it ends a line."""
        if self._size == 0:
            return None
        with self.path.open("rb") as f:
            pos = f.seek(0, os.SEEK_END)
            f.seek(pos - 1)
            if f.read(1) == b"\n":
                return None
            while pos > 0:
                step = min(_TAIL_CHUNK, pos)
                pos -= step
                f.seek(pos)
                end = f.read(step).rfind(b"\n")
                if end >= 0:
                    return pos + end + 1
        return 0

    def _day_of_live_file(self) -> int:
        if self._size == 0:  # takes the day of its first record
            return china_day(self._clock())
        record = last_record(self.path)
        stamp = record.get("time") if record else None
        if not isinstance(stamp, int | float):
            stamp = self.path.stat().st_mtime
        return china_day(float(stamp))

    def _first_free_n(self) -> int:
        pattern = rotated_pattern(self.path)
        taken = [int(m.group(2)) for p in log_files(self.path) if (m := pattern.fullmatch(p.name))]
        return max(taken, default=0) + 1

    def _write_rest(self, line: bytes, written: int) -> None:
        """The rest of a short write; if it fails, the part written is cut off again,
        so that no torn record is left for the next one to be appended to."""
        try:
            while written < len(line):
                written += os.write(self._fd, line[written:])
        except OSError:
            os.ftruncate(self._fd, self._size)  # shrinking needs no space
            raise

    def _after_write(self, now: float) -> None:
        if self.fsync == "always":
            _sync(self._fd)
        elif self.fsync == "interval":
            if abs(now - self._synced_at) >= self.fsync_interval:
                _sync(self._fd)
                self._synced_at, self._unsynced = now, False
            else:
                self._unsynced = True  # the syncer thread syncs it within the interval

    def _sync_if_behind(self) -> None:
        """The syncer's turn: what was written since the last sync, on disk."""
        if not self._unsynced:
            return
        with self._lock:
            if self._unsynced and self._fd >= 0:
                _sync(self._fd)
                self._synced_at, self._unsynced = self._clock(), False

    # --- rotation ---------------------------------------------------------

    def _rotate_if_due(self, now: float, incoming: int) -> None:
        start, end = self._day_window
        if self._size > 0 and (not start <= now < end or self._size + incoming > self.max_bytes):
            self._rotate()
        if self._size == 0:
            self._day_window = _day_window(china_day(now))

    def _rotate(self) -> None:
        if self.fsync != "never":
            _sync(self._fd)
        target = self._rotated_path()
        os.rename(self.path, target)
        self._renamed(target)
        self._start_live_file()

    def _reopen_if_gone(self, now: float) -> None:
        """At most once a second: the live file must still be the one written to. A
        file deleted or moved away under the writer would take the records with it
        unseen; they are counted as lost, and a new live file is started."""
        self._checked_at = now
        try:
            st = os.stat(self.path)
            here = (st.st_dev, st.st_ino) == self._identity
        except (FileNotFoundError, NotADirectoryError):  # its folder gone, or a file now
            here = False
        if here:
            if st.st_size < self._size:  # cut under the writer: not by this process
                self._truncated(st.st_size)
            return
        self.write_errors += 1
        self._gone_linked = self._live_file_linked()  # kept until a live file is opened
        # else its folder went too (or was made again by another log kept in it):
        # ``_open_live`` says so
        if self.path.parent.is_dir() and not self._folder_replaced():
            log.error(
                "%s was deleted or moved away while this server wrote it (%s): records "
                "written since then are not in the log's set; starting a new live file",
                self.path, "moved: they are in it, wherever it went" if self._gone_linked
                else "deleted: they are lost",
            )  # fmt: skip
            self._gone_linked = False
        self._start_live_file()

    def _truncated(self, size: int) -> None:
        """The live file is shorter than what this writer put in it: someone cut it
        (logrotate's ``copytruncate``, a ``> file``). The records cut are no longer in
        the log's set, wherever a copy went; counted as lost, and said. Appends go on at
        its end (``O_APPEND``), from the size it has now."""
        self.write_errors += 1
        log.error(
            "%s was truncated while this server wrote it (%d of its bytes are gone: "
            "logrotate's copytruncate?): the records cut are not in the log's set, "
            "wherever a copy of them went; let nothing but this server rotate it (it "
            "rotates by size and by day itself)", self.path, self._size - size,
        )  # fmt: skip
        self._size = size

    def _live_file_linked(self) -> bool:
        """Whether the file written to is still linked somewhere: moved away (with its
        folder?), what it holds kept, not deleted."""
        try:
            return self._fd >= 0 and os.fstat(self._fd).st_nlink > 0
        except OSError:
            return False

    def _start_live_file(self) -> None:
        """The old descriptor closed, a new live file opened; if that fails (no inode
        left), ``_fd`` stays -1 and the next record tries again (``_put``)."""
        old, self._fd, self._size = self._fd, -1, 0
        os.close(old)
        self._open_live()

    def _renamed(self, target: Path) -> None:
        """Called with the lock held once the live file has been rotated to ``target``."""

    def _rotated_path(self) -> Path:
        day = _day_text(china_day(self._day_window[0]))
        while True:
            target = self.path.with_name(f"{self.path.name}.{day}.{self._next_n}")
            self._next_n += 1
            if not target.exists():
                return target

    # --- records ----------------------------------------------------------

    def append(self, record: Mapping[str, Any], at: float | None = None) -> None:
        """Write ``record`` as one line, its ``time`` ``at`` or, when None, the clock's
        now (which rotation goes by either way)."""
        with self._lock:
            now = self._clock()
            self._put(now, self._encode(now if at is None else at, record))

    def _put(self, now: float, line: bytes) -> None:
        """With the lock held: ``line`` into the live file (rotated first when due)."""
        try:
            if self._fd < 0:  # a rotation could not start the new live file
                self._open_live()
            elif now - self._checked_at >= 1.0:
                self._reopen_if_gone(now)
            n = len(line)
            start, end = self._day_window
            if not start <= now < end or self._size + n > self.max_bytes:  # else none is due
                self._rotate_if_due(now, n)
            written = os.write(self._fd, line)  # ``_write``, inlined: once per call
            if written < n:  # one write, unless the disk is nearly full
                self._write_rest(line, written)
            self._size += n
            self._committed(line)
            if self.fsync != "never":
                try:
                    self._after_write(now)
                except OSError as exc:
                    raise Unsynced(exc.errno, f"written but not synced: {exc.strerror}") from exc
        except OSError as exc:  # disk full, I/O error: the call fails, and it is counted
            self.write_errors += 1
            self.failure, self._probe_bytes = exc, len(line)
            self._raised.append(exc)
            raise
        if self.failure is not None:  # writes work again (health follows)
            self.failure = None

    def check_room(self, nbytes: int) -> None:
        """At start: would a record of ``nbytes`` go in? ``probe``'s test, made once; if
        not, ``failure`` is set as by a failed record (health NOT_SERVING from the start,
        tried again every second), not found by the first call that needs a record."""
        with self._lock:
            self.failure, self._probe_bytes = OSError("not tried yet"), nbytes
        self.probe()

    def probe(self) -> bool:
        """While ``failure`` is set: would a record of the size that failed go in now?
        Rotates the live file first if that is due (as the record would), then writes
        that many bytes (no newline) to the live file and cuts them off again,
        synced as records are; clears ``failure`` if they went in. True when the log
        is not failing (any more)."""
        with self._lock:
            if self.failure is None:
                return True
            try:
                now = self._clock()
                if self._fd < 0:
                    self._open_live()
                elif now - self._checked_at >= 1.0:  # as the record would: a live file
                    self._reopen_if_gone(now)  # gone (with its folder) fails every rotation
                # what the record would meet first: a rotation that is due (the step
                # that failed, when a rename or the next live file did)
                self._rotate_if_due(now, self._probe_bytes)
                if self._fd < 0:  # the rotation could not start the next live file
                    self._open_live()
                pad = b" " * self._probe_bytes
                try:
                    written = 0
                    while written < len(pad):
                        written += os.write(self._fd, pad[written:])
                    if self.fsync != "never":
                        _sync(self._fd)
                finally:
                    os.ftruncate(self._fd, self._size)  # shrinking needs no space
            except OSError as exc:
                self.failure = exc
                return False
            self.failure = None
            return True

    #: what the server's log calls this log (``failure_line``)
    kind = "log"
    flag = ""

    def raised(self, exc: BaseException) -> bool:
        """``exc`` is this log's last write error (a call that failed on it)."""
        return any(exc is raised for raised in self._raised)

    def failure_line(self, exc: OSError) -> str:
        """A write error of this log in one line for the server's log: the file, the
        error, what it costs and what to do; "" once ``FAILURE_LINES`` were given in
        the last ``FAILURE_LINE_EVERY_S`` seconds (the next line counts this one)."""
        now = time.monotonic()
        if now - self._window_at >= FAILURE_LINE_EVERY_S:
            self._window_at, self._said = now, 0
        if self._said >= FAILURE_LINES:
            self._unsaid += 1
            return ""
        self._said += 1
        unsaid, self._unsaid = self._unsaid, 0
        more = f"; {unsaid} more failed since the last such line" if unsaid else ""
        return (f"{self.kind} {self.path} ({self.flag}) cannot be written: "
                f"{describe_write_error(exc)}; calls that need a record fail INTERNAL, health "
                f"is NOT_SERVING until a write goes in (tried every second): "
                f"{write_error_advice(exc, self.path)}{more}")  # fmt: skip

    def _encode(self, now: float, record: Mapping[str, Any]) -> bytes:
        return orjson.dumps({"time": now, **record}) + b"\n"

    def _committed(self, line: bytes) -> None:
        """Called with the lock held once ``line`` is in the kernel."""

    def close(self) -> None:
        self._close_file()
        self._release()

    def _close_file(self) -> None:
        """The live file synced and closed; the set still held."""
        if self.fsync == "interval":
            self._stop_syncing.set()
        with self._lock:
            if self._fd >= 0:
                if self.fsync != "never":
                    _sync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def _release(self) -> None:
        """Let another writer take the set: last, once nothing of this one is written."""
        with self._lock:
            if self._owner >= 0:
                os.close(self._owner)
                self._owner = -1


class HitLog(AppendLog):
    """One record per check that matched a listed subject, whatever the decision."""

    kind = "hit log"
    flag = "--hit-log"

    def record(
        self,
        check_id: str,
        request_id: str,
        query: Query,
        verdict: Verdict,
        version: str,
        merchant_id: str,
        terminal_id: str,
        peer: str,
        *,
        caller: str = "",
        at: float | None = None,
    ) -> None:
        """One hit, its ``time`` ``at`` (when the check was decided; the clock's now when
        None): a check decided in a quarter's last milliseconds is that quarter's, in its
        feedback report, wherever rotation put its record. A record written but not
        synced (``Unsynced``) is withdrawn at once (``settle``): its call fails, so no
        client gets this check id."""
        try:
            self._append_hit(check_id, request_id, query, verdict, version, merchant_id,
                             terminal_id, peer, caller, at)  # fmt: skip
        except Unsynced:
            self.settle([check_id], WITHDRAWN_UNSYNCED)
            raise

    def _append_hit(
        self, check_id: str, request_id: str, query: Query, verdict: Verdict, version: str,
        merchant_id: str, terminal_id: str, peer: str, caller: str, at: float | None,
    ) -> None:  # fmt: skip
        self.append(
            {
                "check_id": check_id,
                "request_id": request_id,
                "list_version": version,
                "masked_id": query.masked_id,
                "channel": query.channel.name,
                "purchase": describe_purchase(query.purchase),
                "amount_fen": query.amount_fen,
                "decision": verdict.decision.name,
                "codes": [r.code for r in verdict.reasons],
                "case_numbers": [o.match.case_number for o in verdict.matches],
                "matches": [_match_fields(o) for o in verdict.matches],
                "merchant_id": merchant_id,
                "terminal_id": terminal_id,
                "caller": caller,
                "peer": peer,
            },
            at,
        )

    def withdraw(self, check_ids: Sequence[str], reason: str) -> None:
        """Withdraw the hit records of ``check_ids``, written by this log: their answers
        never left (``reason`` says why), so no client holds those check ids and the
        feedback report must not count them. One record for them all, one write: they
        are withdrawn together or not at all. Only on a failure path."""
        self.append({"withdrawn": list(check_ids), "reason": reason})

    def settle(self, check_ids: Sequence[str], reason: str, where: str = "") -> None:
        """``withdraw``, never raising: a withdrawal the disk refuses too (the disk that
        failed the call may) is logged, once, with the check ids and the line that
        withdraws them, for the feedback to be mended by hand (``where``: the method,
        for that line). One written but not synced is in the file: it stands."""
        try:
            self.withdraw(check_ids, reason)
        except Unsynced:
            pass
        except Exception as failure:  # noqa: BLE001 - the call fails all the same
            line = orjson.dumps({"withdrawn": list(check_ids), "reason": reason}).decode()
            log.error(
                "%sthe hit records of check_id %s were written but their answers never left "
                "(%s), and withdrawing them failed too: %s; the quarterly feedback counts "
                "them until this line is appended to %s: %s",
                f"{where}: " if where else "", ", ".join(check_ids),
                _NOT_LEFT.get(reason, reason), failure, self.path, line,
            )  # fmt: skip


def _match_fields(o: MatchOutcome) -> dict[str, str]:
    """A match of a hit record, with its own ``outcome`` (``MatchOutcome.reason``: its
    restriction, or EXEMPTED, NOT_RESTRICTED_CLASS, LISTING_SUSPENDED, EXPIRED), which
    the quarterly feedback counts each case by; left out where it is not known."""
    m = o.match
    fields = {
        "case_number": m.case_number,
        "court": m.court,
        "entry_id": m.entry_id,
        "role": m.role.name,
        "status": o.status.name,
        "list_type": m.list_type.name,
    }
    if o.reason is not None:
        fields["outcome"] = o.reason.code
    return fields


_dumps = orjson.dumps
_sha256 = hashlib.sha256
#: an audit record's line: seq, prev, time, the call's fields, subject, checks, outcome,
#: latency, then the optional fields (each with its leading comma); ``%a`` writes a float
#: as ``repr`` does, the shortest form that reads back the same
_LINE = (b'{"seq":%d,"prev":"%b","time":%a,%b,"subject":%b,"checks":%d,"outcome":%b,'
         b'"latency_us":%d%b}\n')  # fmt: skip
#: the outcomes nearly every record has, encoded once
_OUTCOMES = {name: orjson.dumps(name) for name in ("ALLOW", "DENY", "REVIEW", "OK")}


def call_fields(method: str, caller: str, peer: str, metadata: Mapping[str, str] | None) -> bytes:
    """The fields of an audit record that one call (or stream) shares, encoded
    for ``AuditLog.record_call``: method, caller, peer and the kept metadata."""
    fields = {"method": method, "caller": caller, "peer": peer,
              "metadata": audit_metadata(metadata)}  # fmt: skip
    return orjson.dumps(fields)[1:-1]


def audit_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Client metadata as the audit log keeps it: credentials and binary values withheld."""
    kept: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        name = key.lower()
        if name in _METADATA_SECRETS:
            kept[name] = "[withheld]"
        elif name.endswith("-bin"):
            kept[name] = "[binary]"
        else:
            kept[name] = str(value)[:_METADATA_VALUE_MAX]
    return kept


class AuditLog(AppendLog):
    """One record per call, refused and invalid ones included, hash-chained across rotation.

    Keeps the chain head in ``<path>.head`` (see the module docstring).
    """

    kind = "audit log"
    flag = "--audit-log"

    def __init__(self, path: Path, *, head_interval: float = HEAD_INTERVAL, **options: Any) -> None:
        """``options`` as for ``AppendLog``; the head is noted at most every ``head_interval`` s."""
        if head_interval <= 0:
            raise ValueError("head_interval must be positive")
        super().__init__(path, **options)
        try:
            start, head_lost = _chain_start(path)  # before any head of this writer
            #: the last record's seq, its hash (``line_hash``, as the next line writes it),
            #: and its file
            self._seq, self._prev, self._file = start.seq, start.sha256.encode(), start.file
            self._live_name = path.name
            self._head_lock = threading.Lock()  # taken before the record lock, never after
            #: the head noted last: the one found, when it is where the chain goes on (a
            #: start on a full disk then writes nothing before its first record)
            self._noted: ChainHead | None = None
            #: ``note_start``'s record while the disk has refused it (``_put_pending_start``)
            self._pending_start: dict[str, Any] | None = None
            #: the last failure to note the head, while it fails (health: NOT_SERVING)
            self.head_failure: OSError | None = None
            if not head_lost:
                with contextlib.suppress(ValueError, OSError):
                    self._noted = start if read_head(path) == start else None
            if head_lost:
                self._mark_head_lost(head_lost)
            # noted before any record of this start (a start on a full disk that cannot
            # note it fails; one whose head is where the chain goes on writes nothing)
            self._note_head()
        except BaseException:  # nothing held once the constructor failed
            AppendLog.close(self)
            raise
        self._closing = threading.Event()
        threading.Thread(
            target=_keep_doing, args=(weakref.ref(self), self._closing, head_interval,
                                      AuditLog._note_head, "audit log %s: cannot note its head: %s",
                                      "audit log %s: noting its head again"),
            name=f"audit-head {path.name}", daemon=True,
        ).start()  # fmt: skip

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record written: note it down to anchor the chain's end."""
        return self._seq, self._prev.decode()

    def record(
        self,
        method: str,
        peer: str,
        subject: str,
        outcome: str,
        started: float,
        count: int = 1,
        *,
        caller: str = "",
        metadata: Mapping[str, str] | None = None,
        check_id: str = "",
    ) -> None:
        """One call; ``check_id`` (kept only when given) joins a failure to the server's log."""
        call = call_fields(method, caller, peer, metadata)
        self.record_call(call, subject, outcome, started, count, check_id)

    def record_call(
        self,
        call: bytes,
        subject: str,
        outcome: str,
        started: float,
        count: int = 1,
        check_id: str = "",
        extra: bytes = b"",
    ) -> None:
        """``record``, with the fields the call's records share already encoded
        (``call_fields``): a stream encodes them once, not once a message.
        ``extra``: more fields, encoded, each with its leading comma (a batch's
        subjects and outcomes).

        The line is formatted straight into bytes: what ``orjson`` would write for
        the record, field for field, without building three dicts and merging them.
        """
        latency = int((time.perf_counter() - started) * 1e6)
        if check_id:
            extra = b',"check_id":' + _dumps(check_id) + extra
        told = _OUTCOMES.get(outcome) or _dumps(outcome)
        subject_json = _dumps(subject)
        with self._lock:
            now = self._clock()
            if self._pending_start is not None:
                self._put_pending_start(now)
            line = _LINE % (self._seq + 1, self._prev, now, call, subject_json, count, told,
                            latency, extra)  # fmt: skip
            self._put(now, line)

    def append(self, record: Mapping[str, Any], at: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            if self._pending_start is not None:
                self._put_pending_start(now)
            self._put(now, self._encode(now if at is None else at, record))

    def _encode(self, now: float, record: Mapping[str, Any]) -> bytes:
        chained = {"seq": self._seq + 1, "prev": self._prev.decode(), "time": now, **record}
        return orjson.dumps(chained) + b"\n"

    def note_start(self, worker: int, workers: int) -> None:
        """Worker ``worker``'s first record at each of its starts: how many workers its
        server runs, so that ``audit verify`` sees a highest-numbered set removed whole
        (``worker_gaps``). A record the disk refuses does not stop the start (the log's
        failure is said as every write failure is): it goes in before the next record."""
        with self._lock:
            self._pending_start = {"method": "SERVER_START", "worker": worker,
                                   "workers": workers, "pid": os.getpid()}  # fmt: skip
            with contextlib.suppress(OSError):  # said as every write failure is
                self._put_pending_start(self._clock())

    def _put_pending_start(self, now: float) -> None:
        """With the lock held: the start's record, before any other of this start (a
        disk that refused it at start: the first record that goes in writes it first)."""
        pending = self._pending_start
        if pending is not None:
            self._put(now, self._encode(now, pending))
            self._pending_start = None

    def _mark_head_lost(self, how: str) -> None:
        """First of this start: the record that says its head was ``how`` ("missing",
        "unreadable", "misplaced": noted by another set's writer) on a log holding
        records, so a cut before it could not be ruled out. Without it the head noted
        next would vouch for the log as found. A record the disk refuses fails the
        start: going on would hide what the record says."""
        head = head_path(self.path).name
        fields: dict[str, Any] = {"head_at_start": how, "after_seq": self._seq}
        if how == "misplaced":  # read by ``_chain_start`` just before: it names a file
            try:
                noted = read_head(self.path)
            except ValueError:  # replaced since: it still was not this set's head
                noted = None
            fields["head_file"] = noted.file if noted is not None else ""
            fields["note"] = (f"{head} was {HEAD_AT_START[how]} ({fields['head_file']}) when "
                              "this writer started: these files were swapped, or copied "
                              "over one another")  # fmt: skip
        else:
            fields["note"] = (f"{head} was {HEAD_AT_START.get(how, how)} when this writer "
                              "started: records cut off the log's end before this one would "
                              "not show")  # fmt: skip
        try:
            self.append(fields)
        except Unsynced:
            pass  # in the file all the same

    def _committed(self, line: bytes) -> None:
        self._seq += 1
        self._prev = _sha256(line[:-1]).hexdigest().encode()
        self._file = self._live_name

    def _renamed(self, target: Path) -> None:
        self._file = target.name  # the last record went with the live file

    def _held_again(self) -> None:
        self._noted = None  # the head went with the old folder: the thread notes it anew

    def _note_head(self) -> None:
        """Replace ``<path>.head`` with the chain head, if it moved since last noted."""
        with self._head_lock:
            with self._lock:
                head = ChainHead(self._seq, self._prev.decode(), self._file)
            if head != self._noted:
                try:
                    write_head(self.path, head, sync=self.fsync != "never")
                except OSError as exc:  # health says so: records unanchored meanwhile
                    self.head_failure = exc
                    raise
                self._noted = head
            self.head_failure = None

    def close(self) -> None:
        linked = self._live_file_linked()
        self._close_file()
        self._closing.set()
        try:
            try:
                with self._lock:  # a folder removed since the last look: no record will
                    made = self._owner >= 0 and self._regain()  # see it; the head goes in it
            except OSError as exc:  # the folder taken, or its name: the stop goes on
                log.error("audit log %s: its chain head is not noted at this stop: %s (%s)",
                          self.path, describe_write_error(exc), write_error_advice(exc, self.path))  # fmt: skip
                return
            if made:
                log.error(
                    "audit log %s: its folder was %s while this server wrote it, with every "
                    "file of the log%s; made it again to note the chain head there (seq %d): "
                    "`audit verify` shows the records %s, a next writer goes on from it",
                    self.path, "moved or replaced" if linked else "removed",
                    " (they are wherever it went)" if linked else "", self._seq,
                    "missing here" if linked else "lost",
                )  # fmt: skip
            try:
                self._note_head()  # before the set is released: a next writer notes its own
            except OSError as exc:  # a full disk: the stop goes on; a head behind is no loss
                log.error("audit log %s: its chain head is not noted at this stop: %s (%s)",
                          self.path, describe_write_error(exc), write_error_advice(exc, self.path))  # fmt: skip
        finally:
            self._release()


@dataclass(frozen=True)
class ChainHead:
    """Where an audit chain ended when its writer last noted it: ``<path>.head``."""

    seq: int  # 0 for a set without records
    sha256: str  # ``line_hash`` of that record (``GENESIS`` for seq 0)
    file: str  # the name of the file that held it then; a later rotation renames that file

    def __str__(self) -> str:
        where = f", in {self.file}" if self.file else ""
        return f"seq {self.seq} (sha256 {self.sha256[:12]}…{where})"


def head_path(path: Path) -> Path:
    """The sidecar holding the noted chain head of the audit set at ``path``."""
    return path.with_name(path.name + ".head")


def write_head(path: Path, head: ChainHead, *, sync: bool = False) -> None:
    """Note ``head`` for the set at ``path``: a reader sees the old head or the new, never half.

    ``sync``: on disk before it replaces the old one, and the replacing too.
    """
    text = orjson.dumps({"seq": head.seq, "sha256": head.sha256, "file": head.file})
    replace_file(head_path(path), text + b"\n", sync=sync)


def replace_file(target: Path, data: bytes, *, sync: bool = False) -> None:
    """``target`` replaced by ``data``, written beside it (``<target>.part``, through
    ``open_for_writing``) and renamed: a reader sees the old content or the new.
    ``sync``: on disk before it replaces the old one, and the replacing too."""
    part = target.with_name(target.name + ".part")
    fd = open_for_writing(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        left = memoryview(data)
        while left:  # a nearly full disk may take part of it, then refuse the rest
            left = left[os.write(fd, left) :]
        if sync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(part)  # never renamed into place half written, nor left behind
        raise
    finally:
        os.close(fd)
    os.replace(part, target)
    if sync:
        _sync_dir(target.parent)


def read_head(path: Path) -> ChainHead | None:
    """The head noted for the set at ``path``: None without one, ``ValueError`` if it is not one."""
    target = head_path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return None
    value = _parse(raw.strip())
    if value is not None:
        seq, sha256, file = value.get("seq"), value.get("sha256"), value.get("file")
        if (
            isinstance(seq, int) and seq >= 0 and isinstance(file, str)
            and isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)
        ):  # fmt: skip
            return ChainHead(seq, sha256, file)
    raise ValueError(f"{target} is not an audit head")


def chain_head(path: Path) -> ChainHead:
    """The newest record of the audit set at ``path``, as it is now: where the chain goes on.

    A last line that is not a record (torn by power loss) is chained over, so
    ``verify`` reports it; ``seq`` goes on from the last record that parses.
    """
    files = log_files(path)
    tails = [(file, tail) for file in reversed(files) if (tail := last_line(file))]
    if not tails:
        return ChainHead(0, GENESIS, "")
    last_file, tail = tails[0]
    for file in reversed(files):
        record = last_record(file)
        seq = record.get("seq") if record else None
        if isinstance(seq, int):
            return ChainHead(seq, line_hash(tail), last_file.name)
    return ChainHead(0, line_hash(tail), last_file.name)


def _chain_start(path: Path) -> tuple[ChainHead, str]:
    """Where a writer starting on ``path`` goes on: the log's end, or its noted head if
    later; and, for a log holding records, whether its head was "missing" or
    "unreadable", or named a file of another set ("misplaced"); "" when it was
    this set's head, or the log is empty.

    A log that ends before its head lost records (cut, or lost to power loss);
    going on from the head keeps that gap in the chain for ``verify`` to show,
    where going on from the log's end would hide it for good. A log with records
    and no head (or a file there that is no head) may have lost records off its
    end unseen, and a head noted by another set's writer shows these files were
    swapped or copied: the writer says so in the chain (``AuditLog._mark_head_lost``)
    before it notes a head of its own, which would hide both for good.
    """
    found = chain_head(path)
    holds_records = found.seq > 0 or found.sha256 != GENESIS
    try:
        noted = read_head(path)
    except ValueError as exc:
        if not holds_records:
            log.error("audit log %s: %s; noting the head afresh", path, exc)
            return found, ""
        log.error(
            "audit log %s: %s, and the log holds records to seq %d: whether records were "
            "cut off its end cannot be told; the chain goes on from the log's end with a "
            "record saying so, which `audit verify` reports", path, exc, found.seq,
        )  # fmt: skip
        return found, "unreadable"
    if noted is None:
        if not holds_records:
            return found, ""
        log.error(
            "audit log %s holds records to seq %d but its head %s is missing: whether "
            "records were cut off its end cannot be told; the chain goes on from the log's "
            "end with a record saying so, which `audit verify` reports",
            path, found.seq, head_path(path).name,
        )  # fmt: skip
        return found, "missing"
    misplaced = "" if not noted.file or names_a_file_of(path, noted.file) else "misplaced"
    if misplaced:
        log.error(
            "audit log %s: its head %s names %s, not a file of this log: it was noted by "
            "another log's writer (logs swapped, or copied over one another?); the chain "
            "goes on with a record saying so, which `audit verify` reports",
            path, head_path(path).name, noted.file,
        )  # fmt: skip
    if noted.seq < found.seq or noted.sha256 == found.sha256:
        return found, misplaced
    log.error(
        "audit log %s does not end where its head says (%s; the log ends at %s): records "
        "were cut or lost; the chain goes on from the head, so `audit verify` shows the gap",
        path, noted, found,
    )  # fmt: skip
    return noted, misplaced
