"""Forwarding each replica's hit log to one Redis Stream, exactly once.

In Redis mode the feedback report must cover every replica. Each replica
keeps writing its own durable hit log (``--hit-log``: the record is on its
disk before the answer leaves); this forwarder follows that log, rotated
files included, and adds every record to ``<prefix>:hits``. The local log is
the spool: while Redis is unreachable records simply wait in it, and are
forwarded when Redis returns.

Exactly once: each record is added by a Lua script that first claims it in
a per-quarter set (``<prefix>:hits:seen:<quarter>``, kept 400 days), so a
record forwarded again after a crash (before the cursor was saved) is not
added twice. A hit's claim is its ``check_id`` and a digest of its line
(``_claim``), not the check id alone: two processes may draw the same random
check-id prefix, and a second check under a check id already claimed is
another record, to be forwarded too. The cursor, the file and byte offset
forwarded so far, is saved beside the log (``<hitlog>.forwarded``).

A failover loses nothing. Redis replicates asynchronously, so a master that
fails over may have acknowledged records its replica never got, and a
Sentinel master demoted by a planned failover (``SENTINEL FAILOVER``) takes
writes until it learns of it, then drops them. So each round asks the
sentinels where the master is (``_check_master``), and when it changed, or
when a connection error follows records forwarded, the cursor goes back to
where it stood ``REWIND_S`` seconds of forwarding before the last records sent
(``_rewind``) and those records are forwarded again: the claims in the
seen-sets skip every one the new master holds and add the ones it lost. That
is said in one line (``hits-reforwarded``: why, how many re-read, how many
were missing). Nothing in Redis survives a ``FLUSHALL`` or a Redis restarted
empty: the records forwarded before it are gone from the stream, and the
report must be built from the files (``feedback --hit-log``).

Withdrawals (``server.hitlog.HitLog.withdraw``: hits of a call whose answer
never left) are forwarded too, once each the same way (claimed as
``withdrawn:<digest of its check ids>``), so that the feedback report built from the
stream (``read_stream``; ``feedback --redis``) leaves out the same checks as
the one built from the files. Nothing else reads the stream.

A Redis that will not take the records (unreachable, a read-only Redis replica
named by ``--redis``, an ACL, out of memory) is no reason to stop: records wait
in the local log. It is said once when it starts (``hits-spooling``, what is
wrong and what to do), counted each try (``errors``: the metrics'
``shixin_redis_errors_total``), said again only when its reason changes, and
once when forwarding works again (``hits-forwarding``), as the follower's
refused heartbeat is (``RedisFollower._write``); never once a try.

A line no record can be made of (not JSON, neither a hit nor a withdrawal, a
``check_id`` that is not a string) is skipped and said (``hits-unreadable``);
the lines around it are forwarded. A ``time`` that names no quarter (a
withdrawal appended by hand with an ISO time) claims in the seen-set of a
record without one: the line is forwarded like the others, since the report
from the files honours a withdrawal whatever its time. Anything else that
stops a round is a bug: said once with its traceback (``hits-spooling``),
counted each round in ``errors`` like a Redis error, and the round tried again
with the same back-off, so a forwarder that cannot get past it shows in
``shixin_redis_errors_total`` and never dies quietly.
"""

from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.sentinel import SentinelConnectionPool

from shixin_check.domain.model import china_day
from shixin_check.loader.background import Background
from shixin_check.loader.index_redis import (
    Client,
    ErrorCount,
    masked_url,
    redis_words,
    refused_write,
)
from shixin_check.server.hitlog import log_files, replace_file, withdrawn_ids

#: A record once: claimed in the seen-set (SADD) and added to the stream (XADD), or
#: neither. Each command Redis may refuse (an ACL) is refused before anything stays
#: written: EXPIRE first (on the set as it is), and a refused XADD takes its claim back,
#: so a retry neither skips the record for good nor adds it again and again
_ADD_ONCE = """
redis.call('EXPIRE', KEYS[2], 34560000)
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
local added = redis.pcall('XADD', KEYS[1], '*', 'record', ARGV[2])
if type(added) == 'table' and added.err then
  redis.call('SREM', KEYS[2], ARGV[1])
  return redis.error_reply(added.err)
end
redis.call('EXPIRE', KEYS[2], 34560000)
return 1
"""
BATCH = 500
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
#: Seconds of forwarding re-sent after a failover or a connection error: what a master
#: may have acknowledged and not passed on. It covers a replica's permitted lag (Redis's
#: ``min-replicas-max-lag``, 10 s by default), the sentinels' news of a new master
#: reaching the one this forwarder asks (hello messages, every 2 s) and this forwarder's
#: own backoff (2 s), with room to spare; re-sending is cheap (a claim each, refused).
REWIND_S = 30.0
MASTER_CHANGED = "the Redis master changed"


def hits_stream(prefix: str) -> str:
    return f"{prefix}:hits"


def _claim(record: Any, line: bytes) -> str:
    """What a forwarded record (``line``, as the log holds it) claims in the seen-set: a
    hit's ``check_id`` and a digest of its line (forwarded again, the line is the same
    bytes; another check that drew the same check id is another line); for a
    withdrawal, ``withdrawn:`` and a digest of the check ids it names, sorted (the
    same withdrawal forwarded twice is one; a mended line naming more ids is
    another). ``KeyError`` or ``TypeError`` for a line that is neither.

    Claims made before hits were claimed by their line (the check id alone) do not
    stop such a line forwarded again: the stream then holds it twice, and the
    feedback report counts it once (a duplicate: same check id, time and subject)."""
    withdrawn = withdrawn_ids(record)
    if withdrawn is not None:
        names = "\n".join(sorted(withdrawn)).encode()
        return f"withdrawn:{hashlib.sha256(names).hexdigest()[:32]}"
    check_id = record["check_id"]
    if not isinstance(check_id, str):  # null, true, an object: Redis takes none of them
        raise TypeError(f"check_id {check_id!r} is not a string")
    return f"{check_id}:{hashlib.sha256(line).hexdigest()[:32]}"


def error_text(exc: BaseException | str) -> str:
    """What Redis said (``redis_words``: without the command redis-py quotes before a
    pipeline's error, ``EVALSHA … <check id> {…}``), and without the reprs of its client
    objects in a ``No master found`` (``master_words``)."""
    return master_words(redis_words(exc))


_NO_MASTER = re.compile(r"No master found for '(?P<service>[^']*)'")
_SENTINEL_NODE = re.compile(r"\bhost=(?P<host>[^,()<>]+),port=(?P<port>\d+)")
_SENTINEL_ERROR = re.compile(r"\)>\)>\)> - (?:[a-z]+:)?(?P<error>[A-Za-z]+)")


_CAUSES = (
    ("no master found", "no master found"),
    ("connection refused", "connection refused"),
    ("timeout", "timed out"),
    ("timed out", "timed out"),
    ("closed by server", "connection closed by Redis"),
    ("connection reset", "connection reset"),
    ("now a slave", "the master was demoted"),
    ("now a replica", "the master was demoted"),
)


def redis_cause(text: str) -> str:
    """The kind of a connection error, so that a log line is repeated only when it changes
    (not with each try's words): refused, timed out, no master found, ..."""
    low = text.lower()
    return next((cause for needle, cause in _CAUSES if needle in low), "other")


def master_words(text: str) -> str:
    """redis-py's ``No master found for 'svc' : <repr of each sentinel's client> - error,
    ...`` (a thousand characters and more) in a few words: the service and the
    sentinels that could not be asked, or that those asked name no master up."""
    found = _NO_MASTER.search(text)
    if found is None:
        return text
    service = found["service"]
    nodes = [f"{m['host']}:{m['port']}" for m in _SENTINEL_NODE.finditer(text)]
    if not nodes:
        return (f"no master found for {service!r}: the sentinels answer, but none names a "
                "master that is up (failing over? the service name right?)")  # fmt: skip
    errors = sorted({m["error"] for m in _SENTINEL_ERROR.finditer(text)})
    why = f" ({', '.join(errors)})" if errors else ""
    return f"no master found for {service!r}: sentinels {', '.join(nodes)} unreachable{why}"


def _short(exc: BaseException) -> str:
    """A Redis error in a few words (``error_text``, cut where redis-py adds its objects)."""
    text = error_text(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _quarter_of(unix: float) -> str:
    """The China-time quarter of ``unix``, its day floored as ``china_day`` floors it
    (as the hit log rotates and the feedback report counts; ``datetime.fromtimestamp``
    rounds to the microsecond, which puts 23:59:59.9999998 in the next quarter)."""
    day = _dt.date.fromordinal(_EPOCH_ORDINAL + china_day(unix))
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def _seen_quarter(record: dict[str, Any]) -> str:
    """The quarter whose seen-set a record claims in: that of its ``time``; one whose
    ``time`` is no number of seconds a date can be made of (an ISO string, a list, out
    of range) in that of 0, as one without a time, so that forwarding it again still
    finds its claim."""
    stamp = record.get("time", 0)
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        try:
            return _quarter_of(stamp)
        except (OverflowError, OSError, ValueError):
            pass
    return _quarter_of(0)


class HitForwarder(Background):
    """Follows one hit log set and forwards new records to Redis."""

    def __init__(
        self, client: Client, hit_log: Path, prefix: str = "shixin", interval: float = 0.2,
        on_event: Callable[[str, str], None] | None = None, url: str = "",
    ) -> None:  # fmt: skip
        """``url``: the Redis ``client`` talks to, named in the log lines (masked)."""
        super().__init__("hit-forwarder")
        self.client = client
        self.hit_log = hit_log
        self.prefix = prefix
        self.interval = interval
        self.on_event = on_event or (lambda what, detail: None)
        self.url = masked_url(url) if url else "Redis"
        self.cursor_path = hit_log.with_name(hit_log.name + ".forwarded")
        self.forwarded = 0
        self.errors = ErrorCount()  # bumped by this thread only
        #: what keeps the records from Redis ("" while they are forwarded): said once
        self._problem = ""
        self._script = client.register_script(_ADD_ONCE)
        #: where the cursor stood, and when (monotonic), over the last ``REWIND_S`` s of
        #: forwarding, oldest first: where a rewind goes back to
        self._history: collections.deque[tuple[float, int, int]] = collections.deque()
        self._master: tuple[str, int] | None = None  # the Sentinel master last found
        #: why records already sent may be lost ("" when none): rewind on the next round
        self._suspect = ""
        #: a rewind under way: (the cursor it came back from, why, records re-read,
        #: records added), said once it has caught up
        self._resend: tuple[tuple[int, int], str, int, int] | None = None

    def stop(self) -> None:
        super().stop()
        try:
            self.forward_once()  # what was answered just before the stop
        except (redis.RedisError, OSError):
            pass  # spooled: forwarded by the next start
        except Exception as exc:  # noqa: BLE001 - a bug: said, and the logs still get closed
            self._spooling(exc)

    def _run(self) -> None:
        backoff = self.interval
        while not self._stop.wait(backoff):
            try:
                self.forward_once()
            except redis.RedisError as exc:
                self.errors.count += 1
                if isinstance(exc, redis.ConnectionError | redis.TimeoutError) and self._sent():
                    # the connection went after records were sent: a master that died (or
                    # was demoted) may have taken some it never passed on
                    self._suspect = self._suspect or f"a connection error ({_short(exc)})"
                self._spooling(exc)
                backoff = min(backoff * 2, 2.0)
            except OSError as exc:  # this machine's side: a file gone mid-round, a full disk
                self._spooling(exc)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # noqa: BLE001 - a bug: the thread must not die of it
                self.errors.count += 1  # a forwarder stuck on it shows in the metrics
                self._spooling(exc)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = self.interval
                if self._problem:  # the records held back went (the cursor had not moved)
                    self._problem = ""
                    self.on_event("hits-forwarding", "")

    def _spooling(self, exc: Exception) -> None:
        """A round that could not forward: said once (``hits-spooling``), then again
        only when the reason changes; each Redis error is counted by the caller. Redis
        unreachable is one reason, whatever each try's connection error says. An
        ``OSError`` is this machine's (the log read, the cursor saved): the thread
        carries on, and forwards from the cursor once it clears. Anything else is a
        bug: said with its traceback, and tried again all the same."""
        if not isinstance(exc, OSError | redis.RedisError):
            # the same bug each round is said once, whatever its words (an offset, a line)
            raised = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
            reason = f"bug: {type(exc).__name__} at {raised[-1:]}"
            trace = "".join(traceback.format_exception(exc)).rstrip()
            problem = (f"cannot forward hits from {self.hit_log}: an unexpected error (a bug, "
                       f"please report it): {type(exc).__name__}: {exc}; they wait in the "
                       "log and the forwarder tries again every 2 s, so the feedback report "
                       "from Redis (feedback --redis) lacks them until it gets past it "
                       "(feedback --hit-log has them); counted in shixin_redis_errors_total, "
                       f"logged again when it changes or clears\n{trace}")  # fmt: skip
        elif isinstance(exc, OSError):
            reason = problem = (f"cannot forward hits from {self.hit_log}: {exc}; they are "
                                "forwarded from where it stopped once this clears; logged "
                                "again when it changes or clears")  # fmt: skip
        elif isinstance(exc, redis.ResponseError):
            reason = problem = self._refusal(exc)
        else:  # a connection refused, reset, timed out: Redis unreachable (said again
            # only when the kind of cause changes, not each try's words)
            reason = f"unreachable: {redis_cause(str(exc))}"
            problem = (f"cannot forward hits to {self.url}: {error_text(exc)}; they wait in "
                       f"{self.hit_log} and are forwarded when it is back; counted in "
                       "shixin_redis_errors_total, logged again when it changes or clears")  # fmt: skip
        if reason != self._problem:
            self.on_event("hits-spooling", problem)
        self._problem = reason

    def _refusal(self, exc: redis.ResponseError) -> str:
        """A refused forward in one line: what it costs, and what to do about it
        (``RedisFollower._refusal`` says the same of the heartbeat)."""
        what, todo = refused_write(exc, error_text(exc))
        return (f"cannot forward hits to {self.url}: {what}; they wait in {self.hit_log} "
                "and are forwarded once it takes them, so the feedback report from Redis "
                f"(feedback --redis) lacks them until then: {todo}; counted in "
                "shixin_redis_errors_total, logged again when it changes or clears")  # fmt: skip

    def _sent(self) -> bool:
        """Records were forwarded within the last ``REWIND_S`` s of forwarding."""
        return len(self._history) > 1

    def _check_master(self) -> None:
        """Ask the sentinels where the master is (a plain Redis: nothing to ask); a
        new one since the last round: the last ``REWIND_S`` s are forwarded again.
        redis-py drops the idle connections to the old one (``get_master_address``)."""
        pool = self.client.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return
        found = pool.get_master_address()  # type: ignore[no-untyped-call]
        master = (str(found[0]), int(found[1]))
        if self._master is not None and master != self._master:
            self._suspect = (f"{MASTER_CHANGED} from {self._master[0]}:{self._master[1]} "
                             f"to {master[0]}:{master[1]}")  # fmt: skip
        self._master = master

    def _rewind(self) -> None:
        """Back to where the cursor stood ``REWIND_S`` s of forwarding ago (``_suspect``
        says why); ``forward_once`` sends those records again, up to where it was."""
        why, self._suspect = self._suspect, ""
        if not self._history:
            return
        _, inode, offset = self._history[0]
        here = self._cursor()
        if (inode, offset) == here:
            return
        if self._resend is None:
            self._resend = (here, why, 0, 0)
        self._save(inode, offset, remember=False)
        self._history.clear()
        self._history.append((time.monotonic(), inode, offset))

    def _remember(self, inode: int, offset: int) -> None:
        """The cursor moved: kept ``REWIND_S`` s (and the last place before them)."""
        now = time.monotonic()
        history = self._history
        if history and history[-1][1:] == (inode, offset):
            return
        history.append((now, inode, offset))
        while len(history) > 1 and history[1][0] <= now - REWIND_S:
            history.popleft()

    def _cursor(self) -> tuple[int, int]:
        """(inode, offset): rotation renames files, so the inode names one for good."""
        try:
            inode, _, offset = self.cursor_path.read_text().partition(" ")
            return int(inode), int(offset)
        except (OSError, ValueError):
            return -1, 0

    def _save(self, inode: int, offset: int, remember: bool = True) -> None:
        replace_file(self.cursor_path, f"{inode} {offset}".encode())
        if remember:
            self._remember(inode, offset)

    def _pending(
        self, until: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, int, list[bytes]]]:
        """(inode, offset after, complete lines) from the cursor on, oldest file first;
        ``until``: no further than that (inode, offset)."""
        inode, offset = self._cursor()
        files = log_files(self.hit_log)
        stats = [p.stat() for p in files]
        inodes = [st.st_ino for st in stats]
        if inode in inodes:
            start = inodes.index(inode)
            if not _line_starts(files[start], offset, stats[start].st_size):
                offset = 0  # cut under the writer (copytruncate), maybe written past the
                # cursor again since: what is there now is new, read from its start (the
                # seen-sets stop doubles), never from the middle of a record
        else:  # first run, or the file was archived away: the seen-sets stop doubles
            start, offset = 0, 0
        for i in range(start, len(files)):
            first = offset if i == start else 0
            with files[i].open("rb") as fh:
                fh.seek(first)
                data = fh.read()
            last = until is not None and inodes[i] == until[0]
            if last and until is not None:
                data = data[: max(0, until[1] - first)]
            end = data.rfind(b"\n") + 1  # a line still being written waits
            yield inodes[i], first + end, data[:end].splitlines()
            if last:
                return

    def forward_once(self) -> int:
        """Forward what is new (first, after a failover, what the new master may lack);
        the number of records added to the stream."""
        if not self._history:  # where this run started: a rewind goes no further back
            self._remember(*self._cursor())
        self._check_master()
        if self._suspect:
            self._rewind()
        added = 0
        if self._resend is not None:
            back_to, why, read, missing = self._resend
            try:
                for lines, count in self._forward(back_to):
                    read, missing = read + lines, missing + count
            finally:
                self._resend = (back_to, why, read, missing)
            self._resend = None
            added += missing
            # said for a new master; after a connection error only when it lost some
            if missing or why.startswith(MASTER_CHANGED):
                self.on_event("hits-reforwarded",
                              f"{why}: the hits forwarded in the {REWIND_S:g}s before were "
                              f"sent again from {self.hit_log} so that none is lost: {read} "
                              f"re-read, {missing} were missing from Redis and added again")  # fmt: skip
        for _, count in self._forward(None):
            added += count
        self.forwarded += added
        return added

    def _forward(self, until: tuple[int, int] | None) -> Iterator[tuple[int, int]]:
        """Forward from the cursor (to ``until``), saving it after each file: (records
        read, records added) for each file."""
        stream = hits_stream(self.prefix)
        for inode, offset, lines in self._pending(until):
            added = 0
            for i in range(0, len(lines), BATCH):
                pipe = self.client.pipeline(transaction=False)
                for line in lines[i : i + BATCH]:
                    try:
                        record: dict[str, Any] = orjson.loads(line)
                        claim = _claim(record, line)
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.on_event("hits-unreadable", line[:80].decode(errors="replace"))
                        continue
                    seen = f"{self.prefix}:hits:seen:{_seen_quarter(record)}"
                    self._script(keys=[stream, seen], args=[claim, line], client=pipe)
                added += sum(pipe.execute())
            self._save(inode, offset)
            yield len(lines), added


def _line_starts(path: Path, offset: int, size: int) -> bool:
    """Whether ``offset`` (a cursor saved at the end of a whole line) is still where a
    line of ``path`` starts: within the file, after a newline."""
    if offset == 0:
        return True
    if offset > size:
        return False
    with path.open("rb") as fh:
        fh.seek(offset - 1)
        return fh.read(1) == b"\n"


def read_stream(client: Client, prefix: str = "shixin") -> Iterator[dict[str, Any]]:
    """Every hit record in the shared stream, and every withdrawal, oldest first (for the
    feedback report, which leaves out the checks withdrawn)."""
    stream = hits_stream(prefix)
    last = "-"
    while True:
        batch = client.xrange(stream, min=last, count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return
        for _, fields in batch:
            yield orjson.loads(fields[b"record"])
        last = batch[-1][0].decode()
