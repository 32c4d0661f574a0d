"""Offline-capable checks: the Bloom prefilter a gateway keeps (``prefilter=True``).

Nearly every buyer is not listed. A client made with ``prefilter=True``
downloads the server's prefilter (GetPrefilter), keeps it current, and
answers a check itself when the filter says *certainly not listed*: ALLOW,
NOT_LISTED, ``decided_locally`` set, a ``check_id`` beginning ``local-``,
recorded in a local audit file (JSON Lines, masked IDs) for the gateway to
ship. Everything else goes to the server, as without the filter.

What makes a local answer safe:

- **Only definite negatives.** A Bloom filter has no false negatives: the
  server builds it from every identity of the version (a delisted one stays
  until the next snapshot). Every identity the server would look up for the
  request (the number as given and every other identity it plainly is: under
  a document type, a resident ID or USCC, a number can be both; as a resident
  ID, a USCC; as a USCC, a resident ID) must be absent.
- **Only valid requests, in scope.** The request is validated here as the
  server validates it, by the server's own ``to_query`` (lengths, id type,
  normalised number, channel, purchase, amount), keyed with the prefilter
  key; anything it refuses goes to the server, which refuses it too. Only the channels the server says the caller
  may check are answered.
- **Only the server's look-ups.** Which readings of a number the server looks
  up (``to_query``) has changed, and may again (``LOOKUP_RULES`` numbers
  them). A client that tests fewer keys than the server looks up would clear
  a listed person, so both sides check. Each request says the rules of the
  ``to_query`` this client validates with (``PrefilterRequest.lookup_rules``);
  a server whose own are higher refuses it, FAILED_PRECONDITION
  ``PREFILTER_CLIENT_OUTDATED`` (as it refuses every client library older than
  that field, which sends none): like any refusal, the filter goes and every
  check goes to the server, the refresh raises it, each retry asks again, and
  the message says to upgrade the client library. The header says the
  server's rules too (``lookup_rules``): above this client's own
  (``LOOKUP_RULES``), from a server that served it all the same, the client
  drops the filter and answers nothing locally, logging one WARNING to
  upgrade the client library; each refresh asks again.
- **Only a fresh filter.** A filter is trusted for ``max_age`` seconds (60 by
  default) from the start of the last refresh that succeeded; clients refresh
  at half that, so a listing the server has is in the filter within
  ``max_age``. A refresh that cannot reach the server leaves the filter to age
  out (offline, definite negatives are answered until then; the rest raise
  ``ServiceUnavailable``); one the server refuses (the key lost the role, no
  filter in Redis mode, this client's lookup rules outdated) or a download
  that does not check out drops the filter at once.
- **Only the server's filter.** A version label does not pin its content: a
  server restarted serving a delta rewritten in place serves other content
  under the same ``BASE+N``, and computes the additions it sends from its own
  filter of the version the client names, not from the client's. So after
  adding them the client compares its filter's SHA-256 with the header's
  ``filter_sha256`` (the server's whole filter): on a difference it drops its
  filter at once, says so once (a WARNING) and downloads the whole filter. A
  server older than that field sends none, and nothing is compared.
- **Stale when the server's are.** A server run with ``--max-list-age``
  says in the header when the list goes stale (``stale_since``: its feed time
  plus that age); once this machine's wall clock (``time.time()``, not the
  filter's ``clock``) reaches it, every local answer carries ``stale``, as the
  server's answers do, and so does its audit record. A refresh brings the time
  of the list served then. No ``stale_since`` (no maximum age, or an older
  server): no staleness known, local answers are never stale.

What a gateway holds: the filter and the prefilter key of its header. With
them it can test an identity it already knows (probably listed, at the
false-positive rate, or certainly not); it cannot read identities out of the
filter, and the key is not the index's: it makes no subject key, so it tests
nothing against the server's index, Redis or logs.

Both clients share this module; ``CheckClient`` and ``AsyncCheckClient`` do
the calls, the refreshes (a thread, a task) and the splitting of batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import itertools
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson
from rbloom import Bloom

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.errors import CheckError, ErrorDetails, from_info
from shixin_check.domain.decision import NOT_LISTED, Query
from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.keys import PREFILTER_KEY_SCHEME, PrefilterKeyer
from shixin_check.domain.model import Channel
from shixin_check.server import convert
from shixin_check.server.convert import LOOKUP_RULES, to_query

#: How long a filter is trusted after its last successful refresh, by default.
DEFAULT_MAX_AGE = 60.0
#: The deadline of one filter download, in seconds (a big list's filter is tens of MiB).
DOWNLOAD_TIMEOUT = 30.0
#: The check_id of every local answer begins with this.
LOCAL_PREFIX = "local-"
#: The filter layout and key scheme this client reads (PrefilterHeader).
HASH_SCHEME = "rbloom-1/int-hi64"
KEY_SCHEME = PREFILTER_KEY_SCHEME
#: Failures that mean "the server could not be reached": the filter is kept to age out.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: A download larger than this is refused (a filter of 100 million keys is ~180 MiB).
MAX_DOWNLOAD_BYTES = 1 << 30

log = logging.getLogger("shixin.client")

# --- the filter ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LocalFilter:
    """One downloaded filter version: never changed, replaced whole by a refresh."""

    version: str
    base_version: str
    bloom: Bloom
    keyer: PrefilterKeyer
    channels: frozenset[int]
    items: int
    #: the answer of every local check of this version, less its ids
    answer: pb.CheckResponse
    #: ``time.time()`` from which local answers are stale (header.stale_since); inf: never
    stale_at: float
    #: SHA-256 of ``bloom.save_bytes()``: compared with the next header's filter_sha256
    sha256: bytes

    def clears(self, query: Query) -> bool:
        """True when none of the keys the server would look up can be in the filter."""
        bloom = self.bloom
        if (query.subject_key >> 64) in bloom:
            return False
        for key in query.also_keys:  # every other reading of the number (usually none)
            if (key >> 64) in bloom:
                return False
        return True


class Download:
    """The chunks of one GetPrefilter call, checked as they come."""

    def __init__(self) -> None:
        self.header: pb.PrefilterHeader | None = None
        self.data = bytearray()
        #: header.stale_since in unix seconds (inf: none given)
        self.stale_at = math.inf

    def add(self, chunk: pb.PrefilterChunk) -> None:
        if chunk.HasField("header"):
            if self.header is not None:
                raise _corrupt("a second header")
            header = chunk.header
            if header.hash_scheme != HASH_SCHEME or header.key_scheme != KEY_SCHEME:
                raise from_info(ErrorDetails(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"prefilter schemes {header.hash_scheme!r}/{header.key_scheme!r} are not "
                    f"{HASH_SCHEME!r}/{KEY_SCHEME!r}: this client cannot read the filter",
                    reason="PREFILTER_SCHEME_UNKNOWN",
                ))  # fmt: skip
            if header.lookup_rules > LOOKUP_RULES:  # before any data is read
                raise RulesNewer(header.lookup_rules)
            if not 0 <= header.data_bytes <= MAX_DOWNLOAD_BYTES:
                raise _corrupt(f"{header.data_bytes} bytes announced")
            if header.stale_since:
                self.stale_at = _instant(header.stale_since)
            self.header = header
            return
        if self.header is None:
            raise _corrupt("data before the header")
        self.data += chunk.data
        if len(self.data) > self.header.data_bytes:
            raise _corrupt(f"more than the {self.header.data_bytes} bytes announced")

    def finish(self) -> tuple[pb.PrefilterHeader, bytes]:
        header = self.header
        if header is None:
            raise _corrupt("no header")
        data = bytes(self.data)
        if len(data) != header.data_bytes or hashlib.sha256(data).digest() != header.sha256:
            raise _corrupt(f"{len(data)} bytes that do not hash to the header's sha256")
        return header, data


def _instant(text: str) -> float:
    """``stale_since`` (RFC 3339 with an offset) in unix seconds."""
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _corrupt(f"header.stale_since: {text!r} is not an RFC 3339 time with an offset")
    return moment.timestamp()


def _corrupt(problem: str) -> CheckError:
    return from_info(
        ErrorDetails(
            grpc.StatusCode.DATA_LOSS, f"prefilter download: {problem}", reason="PREFILTER_CORRUPT"
        )
    )


class NeedsFull(Exception):
    """Additions that do not fit the filter held, or that do not make the server's
    filter (``PrefilterHeader.filter_sha256``): fetch the whole filter instead."""


class RulesNewer(Exception):
    """The server looks up readings this client does not know (its header's
    ``lookup_rules`` is above ``LOOKUP_RULES``): no filter can be trusted here."""

    def __init__(self, rules: int) -> None:
        super().__init__(rules)
        self.rules = rules


class LocalAnswer(NamedTuple):
    """A check answered here, and its audit record (written once it is handed out)."""

    response: pb.CheckResponse
    record: dict[str, Any]


def client_closed() -> CheckError:
    """What a call of a closed client raises: CANCELLED, reason ``CLIENT_CLOSED``, the
    caller's own doing (never retried, never a ``ServiceUnavailable``)."""
    return from_info(ErrorDetails(
        grpc.StatusCode.CANCELLED, "the client is closed (its close() was called)",
        reason="CLIENT_CLOSED",
    ))  # fmt: skip


#: seconds a local answer waits for another holder of the local audit's lock (another
#: client or process writing the same file) before it goes to the server instead
LOCAL_AUDIT_LOCK_WAIT = 0.2


def _lock_file(fd: int) -> None:
    """``flock`` the local audit, waiting ``LOCAL_AUDIT_LOCK_WAIT`` at most: a holder
    paused (a rotation script's ``flock``, a stopped process) must not hold every local
    answer, nor the asynchronous client's event loop. EWOULDBLOCK past it."""
    deadline = time.monotonic() + LOCAL_AUDIT_LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.002)


#: the reason of ``local_audit_failed``: a check client falls back to the server on it
LOCAL_AUDIT_UNWRITABLE = "LOCAL_AUDIT_UNWRITABLE"


def local_audit_failed(path: Path, exc: OSError) -> CheckError:
    """What recording a local answer raises when ``path`` cannot be written (a full
    disk): INTERNAL, reason ``LOCAL_AUDIT_UNWRITABLE``; the answer is not handed out."""
    what = errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
    todo = "free space there"
    if isinstance(exc, BlockingIOError):
        what, todo = "locked", (f"another client or process held its lock over "
                                f"{LOCAL_AUDIT_LOCK_WAIT:g} s: give each its own file")  # fmt: skip
    return from_info(ErrorDetails(
        grpc.StatusCode.INTERNAL,
        f"the local audit {path} (local_audit_path) cannot be written: {what} "
        f"({exc.strerror or exc}); no local answer is handed out without its record: "
        f"{todo} (checks go to the server meanwhile)",
        reason=LOCAL_AUDIT_UNWRITABLE,
    ))  # fmt: skip


def _not_a_file(path: Path) -> ValueError:
    try:
        what = "a socket" if stat.S_ISSOCK(os.stat(path).st_mode) else "a FIFO"
    except OSError:
        what = "a FIFO or a socket"
    return ValueError(
        f"local_audit_path {path} is {what}: the local audit is a file the gateway appends "
        "each local answer to before handing it out (a pipe would hold up every check "
        "while nothing reads it), to ship to the operator"
    )


class LocalAudit:
    """The local answers, one JSON object a line, for the gateway to ship to the operator.

    Each record: time (RFC 3339, UTC), check_id, request_id, list_version,
    masked_id (never the number), channel, decision, codes, merchant_id,
    terminal_id, filter_age_s, stale (as the answer's), decided_locally.
    Appended as each answer is handed out, from any thread, with no buffer: a
    write that fails (a full disk) is cut back off the file, whole lines only, and
    raises ``local_audit_failed`` (the answers are not handed out; nothing of them
    is written later). Once closed (with its client), ``write`` raises
    ``client_closed()``: an answer that cannot be recorded is never handed out.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # made for the gateway's user and group alone, whatever the umask: the records
        # say who was checked where (as the server's logs are made); opened without
        # waiting, so that a FIFO with no reader is refused, not waited on for good
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o640)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO nothing reads (the open would wait for
                raise _not_a_file(self.path) from None  # one), or a socket
            raise
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # a reader's pipe: its writes would wait on it
            os.close(fd)
            raise _not_a_file(self.path)
        os.set_blocking(fd, True)  # writes to the file wait for the disk, as any write
        self._fd: int | None = fd
        self._failing = False  # said once when writes start failing, once when they work

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines = b"".join(orjson.dumps({"time": now, **r}) + b"\n" for r in records)
        with self._lock:
            fd = self._fd
            if fd is None:
                raise client_closed()
            end = -1
            try:
                # another client (or process) may append to the same file: the lock keeps
                # its records from landing between this one's end and its cut
                _lock_file(fd)
                try:
                    end = os.lseek(fd, 0, os.SEEK_END)
                    left = memoryview(lines)
                    while left:
                        left = left[os.write(fd, left) :]
                except OSError:
                    if end >= 0:  # what was written of these lines comes off again
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, end)
                    raise
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError as exc:
                failed = local_audit_failed(self.path, exc)
                if not self._failing:
                    self._failing = True
                    log.warning("%s", failed.details())
                raise failed from exc
            if self._failing:
                self._failing = False
                log.warning("the local audit %s is written again: local answers resume", self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


_NOT_LISTED = pb.Reason(code=NOT_LISTED.code, message=NOT_LISTED.message)
_NOT_LISTED_CODES = [NOT_LISTED.code]
_CHANNEL_NAMES = {c.value: c.name for c in Channel}


class Prefilter:
    """What a client knows of its filter, and the local decisions made from it.

    ``clock`` (seconds, monotonic; ``time.monotonic`` unless given) measures
    the filter's age: tests pass their own to age it without waiting.
    """

    def __init__(self, max_age: float, clock: Callable[[], float], audit: LocalAudit) -> None:
        if max_age <= 0:
            raise ValueError(f"prefilter_max_age: {max_age} is not a positive number of seconds")
        self.max_age = max_age
        self.clock = clock
        self.audit = audit
        self.filter: LocalFilter | None = None
        # check ids unique across gateways and restarts without coordination
        self._id_prefix = f"{LOCAL_PREFIX}{secrets.token_hex(6)}-"
        self._counter = itertools.count(1)
        #: ``clock()`` when the last refresh that succeeded began; None: never
        self.confirmed_at: float | None = None
        #: the last refresh's failure (None after a success)
        self.last_error: CheckError | None = None
        #: the server's lookup_rules when they are newer than this client's, else 0
        self.rules_newer = 0
        #: the last version whose additions did not make the server's filter (said once)
        self._mismatch_said = ""

    @property
    def refresh_interval(self) -> float:
        """Refreshes come at half the maximum age: one may fail before the filter ages out."""
        return self.max_age / 2

    @property
    def retry_interval(self) -> float:
        """After a failed refresh, the next comes sooner."""
        return self.max_age / 8

    def request(self, full: bool = False) -> pb.PrefilterRequest:
        """What a refresh asks for: the version held (unless ``full``), and the lookup
        rules of the ``to_query`` this client tests with, which the server checks."""
        held = self.filter
        return pb.PrefilterRequest(
            known_version="" if full or held is None else held.version,
            # the rules of the to_query called here (the header is judged by LOOKUP_RULES)
            lookup_rules=convert.LOOKUP_RULES,
        )

    def age(self) -> float | None:
        """Seconds since the filter was last confirmed (None: no filter)."""
        if self.filter is None or self.confirmed_at is None:
            return None
        return self.clock() - self.confirmed_at

    def trusted(self) -> LocalFilter | None:
        """The filter, while it is younger than ``max_age``."""
        held, confirmed = self.filter, self.confirmed_at
        if held is None or confirmed is None or self.clock() - confirmed >= self.max_age:
            return None
        return held

    def install(self, download: Download, started: float) -> None:
        """Take a finished download that began at ``started`` (``NeedsFull`` if it cannot)."""
        header, data = download.finish()
        held = self.filter
        if header.content == pb.PREFILTER_FULL:
            if len(data) != header.size_bytes:
                raise _corrupt(f"{len(data)} bytes for a filter of {header.size_bytes}")
            if header.filter_sha256 and header.filter_sha256 != header.sha256:
                raise _corrupt("a whole filter whose filter_sha256 is not its sha256")
            try:
                bloom = Bloom.load_bytes(data, int)
            except ValueError as exc:
                raise _corrupt(f"not a filter ({exc})") from exc
            digest = header.sha256  # finish() checked the data against it
        elif header.content == pb.PREFILTER_ADDITIONS:
            if (
                held is None
                or held.base_version != header.base_version
                or held.keyer.key != header.prefilter_key
                or len(data) % 8
            ):
                raise NeedsFull()
            if data:
                bloom = held.bloom.copy()  # readers keep the old one whole meanwhile
                bloom.update(
                    int.from_bytes(data[at : at + 8], "big") for at in range(0, len(data), 8)
                )
                digest = hashlib.sha256(bloom.save_bytes()).digest()
            else:
                bloom, digest = held.bloom, held.sha256  # never changed in place
            if header.filter_sha256 and digest != header.filter_sha256:
                self._mismatch(held, header)
                raise NeedsFull()
        else:
            raise _corrupt(f"unknown content {header.content}")
        keyer = (
            held.keyer
            if held is not None and held.keyer.key == header.prefilter_key
            else PrefilterKeyer(header.prefilter_key)
        )
        answer = pb.CheckResponse(
            decision=pb.ALLOW, reasons=[_NOT_LISTED], list_version=header.version,
            decided_locally=True,
        )  # fmt: skip
        self.filter = LocalFilter(
            header.version, header.base_version, bloom, keyer,
            frozenset(header.channels), header.items, answer, download.stale_at, digest,
        )  # fmt: skip
        self.confirmed_at = started
        self.last_error = None
        self.rules_newer = 0

    def _mismatch(self, held: LocalFilter, header: pb.PrefilterHeader) -> None:
        """The filter held plus the server's additions is not the server's filter: what
        the client holds under its label is not what the server holds under it (the
        label's content changed: a server restarted serving a delta rewritten in place,
        or another one serving other content), or it holds keys the server's filter no
        longer has (an entry a delta added, delisted since, from a server that never
        built the version held). Drop it now, so that nothing is cleared by it while the
        whole filter downloads; say so once a version."""
        self.filter = None
        self.confirmed_at = None
        if self._mismatch_said != header.version:
            self._mismatch_said = header.version
            log.warning(
                "prefilter: the filter held as version %s, with the server's additions, is "
                "not the server's filter of version %s (another SHA-256): the content under "
                "that label changed (a server restarted serving a delta rewritten in place, "
                "or one serving other content under it), or an entry a delta added was "
                "delisted since; discarded, downloading the whole filter",
                held.version, header.version,
            )  # fmt: skip

    def outdated(self, refused: RulesNewer) -> None:
        """The server looks up readings this client does not: drop the filter, so every
        check goes to the server; say so once (until a refresh installs a filter)."""
        self.filter = None
        self.confirmed_at = None
        self.last_error = None
        if not self.rules_newer:
            log.warning(
                "prefilter: the server's lookup rules (%d) are newer than this client's (%d): "
                "it looks up readings of an identity this client does not test, so no check "
                "is answered locally; upgrade the shixin-check client library",
                refused.rules, LOOKUP_RULES,
            )  # fmt: skip
        self.rules_newer = refused.rules

    def failed(self, error: CheckError) -> None:
        """A refresh failed: unreachable, the filter ages out; refused or bad, it goes now."""
        self.last_error = error
        if error.code() not in UNREACHABLE:
            self.filter = None
            self.confirmed_at = None

    def decide(self, request: pb.CheckRequest) -> LocalAnswer | None:
        """The local answer to ``request``, or None: ask the server."""
        held = self.trusted()
        if held is None:
            return None
        return self._decide(held, request, self.age() or 0.0, time.time() >= held.stale_at)

    def _decide(
        self, held: LocalFilter, request: pb.CheckRequest, age: float, stale: bool
    ) -> LocalAnswer | None:
        channel = _CHANNEL_NAMES.get(request.channel)
        if channel is None or request.channel not in held.channels:
            return None
        try:  # validated as the server validates it, keyed in the filter's key space
            query = to_query(request, held.keyer)
        except InvalidInput:
            return None  # the server answers or refuses it
        if not held.clears(query):
            return None
        check_id = f"{self._id_prefix}{next(self._counter):x}"
        response = pb.CheckResponse()
        response.CopyFrom(held.answer)  # a template: copying is cheaper than building
        response.request_id = request.request_id
        response.check_id = check_id
        if stale:  # rare: a fresh answer pays one test
            response.stale = True
        record = {
            "check_id": check_id,
            "request_id": request.request_id,
            "list_version": held.version,
            "masked_id": query.masked_id,
            "channel": channel,
            "decision": "ALLOW",
            "codes": _NOT_LISTED_CODES,
            "merchant_id": request.merchant_id,
            "terminal_id": request.terminal_id,
            "filter_age_s": round(age, 3),
            "stale": stale,
            "decided_locally": True,
        }
        return LocalAnswer(response, record)

    def split(self, requests: Sequence[pb.CheckRequest]) -> Split:
        """``requests`` as local answers and the rest, to send, with their positions
        (one filter, one age and one staleness for the whole batch)."""
        answers: list[pb.CheckResponse | None] = []
        local: list[LocalAnswer] = []
        send: list[pb.CheckRequest] = []
        positions: list[int] = []
        held = self.trusted()
        age = self.age() or 0.0
        stale = held is not None and time.time() >= held.stale_at
        for i, request in enumerate(requests):
            found = None if held is None else self._decide(held, request, age, stale)
            if found is None:
                answers.append(None)
                send.append(request)
                positions.append(i)
            else:
                answers.append(found.response)
                local.append(found)
        return Split(answers, local, send, positions)

    def local_answer(self, request: pb.CheckRequest) -> pb.CheckResponse | None:
        """The answer to one check decided here and recorded, or None: the server's to
        give (not a definite negative, or its record could not be written)."""
        local = self.decide(request)
        if local is None:
            return None
        try:
            self.record([local])
        except CheckError as exc:  # not recorded, so not handed out: the server's
            if exc.reason != LOCAL_AUDIT_UNWRITABLE:
                raise
            return None
        return local.response

    def record(self, answers: Sequence[LocalAnswer]) -> None:
        """Write the audit records of local answers handed out."""
        self.audit.write([a.record for a in answers])


class Split(NamedTuple):
    """A batch split: an answer slot per request (None: the server's), what to send, where."""

    answers: list[pb.CheckResponse | None]
    local: list[LocalAnswer]
    send: list[pb.CheckRequest]
    positions: list[int]

    def merge(self, sent: Sequence[pb.CheckResponse]) -> list[pb.CheckResponse]:
        answers = self.answers
        for position, answer in zip(self.positions, sent, strict=True):
            answers[position] = answer
        return [a for a in answers if a is not None]


_BATCH_INDEX = re.compile(r"^checks\[(\d+)\]")


def renumbered(error: CheckError, positions: Sequence[int]) -> CheckError:
    """``error`` of a batch call whose ``checks[j]`` was the caller's ``positions[j]``."""

    def move(text: str) -> str:
        def at(m: re.Match[str]) -> str:
            j = int(m.group(1))
            return f"checks[{positions[j] if j < len(positions) else j}]"

        return _BATCH_INDEX.sub(at, text)

    info = dataclasses.replace(
        error.info,
        message=move(error.info.message),
        field_violations=[(move(f), problem) for f, problem in error.info.field_violations],
    )
    return error.with_info(info)
