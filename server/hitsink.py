"""Forwarding each replica's hit log to one Redis Stream, exactly once.

In Redis mode the feedback report must cover every replica. Each replica
keeps writing its own durable hit log (``--hit-log``: the record is on its
disk before the answer leaves); this forwarder follows that log, rotated
files included, and adds every record to ``<prefix>:hits``. The local log is
the spool: while Redis is unreachable records simply wait in it, and are
forwarded when Redis returns.

Exactly once: each record is added by a Lua script that first claims its
``check_id`` in a per-quarter set (``<prefix>:hits:seen:<quarter>``, kept 400
days), so a record forwarded again after a crash (before the cursor was
saved) is not added twice. The cursor, the file and byte offset forwarded
so far, is saved beside the log (``<hitlog>.forwarded``).

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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.background import Background
from shixin_check.loader.index_redis import Client, ErrorCount, masked_url, refused_write
from shixin_check.server.hitlog import log_files, withdrawn_ids

_ADD_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[2], 34560000)
  redis.call('XADD', KEYS[1], '*', 'record', ARGV[2])
  return 1
end
return 0
"""
BATCH = 500
#: what redis-py puts before an error of a pipeline's command: the command with its
#: arguments (a record's check id, its fields), which no log line should carry
_PIPELINE_PREFIX = re.compile(r"Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def hits_stream(prefix: str) -> str:
    return f"{prefix}:hits"


def _claim(record: Any) -> str:
    """What a forwarded record claims in the seen-set: a hit's ``check_id``; for a
    withdrawal, ``withdrawn:`` and a digest of the check ids it names, sorted (the
    same withdrawal forwarded twice is one; a mended line naming more ids is
    another). ``KeyError`` or ``TypeError`` for a line that is neither."""
    withdrawn = withdrawn_ids(record)
    if withdrawn is not None:
        names = "\n".join(sorted(withdrawn)).encode()
        return f"withdrawn:{hashlib.sha256(names).hexdigest()[:32]}"
    return record["check_id"]  # type: ignore[no-any-return]


def error_text(exc: BaseException) -> str:
    """What Redis said, without the command redis-py quotes before a pipeline's error
    (``Command # 1 (EVALSHA … <check id> {…}) of pipeline caused error: …``)."""
    text = str(exc)
    found = _PIPELINE_PREFIX.match(text)
    if found is None:
        return text
    # the last "caused error": the quoted command is the client's text, the error Redis's
    return text.rpartition(" of pipeline caused error: ")[2]


def _quarter_of(unix: float) -> str:
    day = _dt.datetime.fromtimestamp(unix, CHINA_TZ)
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


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

    def stop(self) -> None:
        super().stop()
        try:
            self.forward_once()  # what was answered just before the stop
        except redis.RedisError:
            pass  # spooled: forwarded by the next start

    def _run(self) -> None:
        backoff = self.interval
        while not self._stop.wait(backoff):
            try:
                self.forward_once()
            except redis.RedisError as exc:
                self.errors.count += 1
                self._spooling(exc)
                backoff = min(backoff * 2, 2.0)
            except OSError as exc:  # this machine's side: a file gone mid-round, a full disk
                self._spooling(exc)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = self.interval
                if self._problem:  # the records held back went (the cursor had not moved)
                    self._problem = ""
                    self.on_event("hits-forwarding", "")

    def _spooling(self, exc: redis.RedisError | OSError) -> None:
        """A round that could not forward: said once (``hits-spooling``), then again
        only when the reason changes; each Redis error is counted by the caller. Redis
        unreachable is one reason, whatever each try's connection error says. An
        ``OSError`` is this machine's (the log read, the cursor saved): the thread
        carries on, and forwards from the cursor once it clears."""
        if isinstance(exc, OSError):
            reason = problem = (f"cannot forward hits from {self.hit_log}: {exc}; they are "
                                "forwarded from where it stopped once this clears; logged "
                                "again when it changes or clears")  # fmt: skip
        elif isinstance(exc, redis.ResponseError):
            reason = problem = self._refusal(exc)
        else:  # a connection refused, reset, timed out: Redis unreachable
            reason = "unreachable"
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

    def _cursor(self) -> tuple[int, int]:
        """(inode, offset): rotation renames files, so the inode names one for good."""
        try:
            inode, _, offset = self.cursor_path.read_text().partition(" ")
            return int(inode), int(offset)
        except (OSError, ValueError):
            return -1, 0

    def _save(self, inode: int, offset: int) -> None:
        part = self.cursor_path.with_name(self.cursor_path.name + ".part")
        part.write_text(f"{inode} {offset}")
        os.replace(part, self.cursor_path)

    def _pending(self) -> Iterator[tuple[int, int, list[bytes]]]:
        """(inode, offset after, complete lines) from the cursor on, oldest file first."""
        inode, offset = self._cursor()
        files = log_files(self.hit_log)
        inodes = [p.stat().st_ino for p in files]
        if inode in inodes:
            start = inodes.index(inode)
        else:  # first run, or the file was archived away: the seen-sets stop doubles
            start, offset = 0, 0
        for i in range(start, len(files)):
            first = offset if i == start else 0
            with files[i].open("rb") as fh:
                fh.seek(first)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits
            yield inodes[i], first + end, data[:end].splitlines()

    def forward_once(self) -> int:
        """Forward what is new; the number of records added to the stream."""
        added = 0
        stream = hits_stream(self.prefix)
        for inode, offset, lines in self._pending():
            for i in range(0, len(lines), BATCH):
                pipe = self.client.pipeline(transaction=False)
                for line in lines[i : i + BATCH]:
                    try:
                        record: dict[str, Any] = orjson.loads(line)
                        claim = _claim(record)
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.on_event("hits-unreadable", line[:80].decode(errors="replace"))
                        continue
                    seen = f"{self.prefix}:hits:seen:{_quarter_of(record.get('time', 0))}"
                    self._script(keys=[stream, seen], args=[claim, line], client=pipe)
                added += sum(pipe.execute())
            self._save(inode, offset)
        self.forwarded += added
        return added


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
