"""The ``shixin.v1.ConsumptionCheck`` servicer: authorises, converts, delegates, maps errors.

Every failure leaves as a gRPC status with a message naming the field or the
reason, and the ``google.rpc`` details of ``server/status.py`` (ErrorInfo,
BadRequest, RetryInfo) in the ``grpc-status-details-bin`` trailer; an
unexpected exception is INTERNAL and the server keeps serving. Such a call
gets a check id of its own, named in the INTERNAL message, its ErrorInfo and
the audit record and logged once with its traceback on ``shixin.server``
(the handler aborts, so grpc does not log it again): a caller can quote it to
the operator. Request bytes that do not parse are INVALID_ARGUMENT, not the
INTERNAL grpcio would give: the methods are registered with lenient
deserialisers (``add_to_server``). A batch uses one list version for all its
checks; a stream one per check.

Every call is judged in one order: its metadata's size (over
``MAX_METADATA_BYTES``: RESOURCE_EXHAUSTED as grpc refuses it, unaudited; grpc
lets a connection's first call through whatever its size); the caller (its
metadata is there whatever the body holds: no credentials is UNAUTHENTICATED
whatever was sent) and the method's role; then the body (bytes that do not
parse, a batch over ``max_batch``); then each check's fields and channel
(``CheckEngine``); then the list (none loaded: UNAVAILABLE); then the
caller's rate, so a refused check costs no token. A refused call is audited under its caller with the
checks it asked for (a batch's size when it parsed; 0 for GetListStatus and
GetPrefilter). No answer leaves without its audit record: a record that
cannot be written (a full disk) makes the call INTERNAL, as a hit-log write
does; a refusal whose record cannot be written is still that refusal, and
says so in the log. The hit records already written for such a call (a
batch's every hit; a stream's failing message's) are withdrawn in the hit
log (``HitLog.withdraw``), so that the quarterly feedback does not count
checks whose answers never left; so are a batch's hits written before one
that could not be (the call is INTERNAL as well). A withdrawal that cannot
be written either is logged with their check ids, for the feedback to be
mended by hand.

Refusals for credentials (``UNAUTHENTICATED``) are recorded one by one up to a
rate per peer host and over all hosts (``RefusalRecords``,
``REFUSALS_AUDITED_*``): a client retrying a revoked key in a hot loop would
otherwise fill the disk with them, and then every check fails. The call is
refused all the same; a refusal held back is counted against its host and
written later, as ``unrecorded_refusals`` in the host's next record or in a
summary record (``summarize_refusals``: within ``REFUSAL_SUMMARY_S``, and at
shutdown). Only refusals are counted against a host: callers with good keys
behind the same proxy are never held back, and nothing is added before a
call is known to be refused.

A call that ends before its answer leaves is withdrawn the same way, with a
record of its own in the audit log (outcome ``DEADLINE_EXCEEDED`` or
``CANCELLED``, ``withdrawn_hits`` naming the check ids; the audit log is
append-only, so a record already written for the call stays): a batch, or a
unary call that logged hits, whose caller's deadline passed while it was
decided (``time_remaining`` is 0: the caller stopped waiting, so the answer
cannot reach it; a unary call that matched nobody is not looked at, to spare
every call the cost), or a batch that logged hits and was cancelled (by its
caller, with its connection, or at the end of the server's grace period) before
grpc sent its status. grpc.aio tells a servicer of that only as a
``CancelledError`` at an ``await`` while its handler runs
(``context.cancelled()`` stays False, ``done()`` is True once the status was
handed to grpc, sent or not): a batch that logged hits gives the loop a few
turns (``_left``) for a cancellation grpc already holds to reach it. A unary
call is decided in microseconds, between two turns of the loop: a cancellation
in that time is rare, and the turns would delay every answer that matched
someone, so only its deadline is looked at. A
stream's answers count once handed to grpc: one the caller cancelled or let
its deadline pass with may or may not have been read (grpc reports the write
of one the caller had read as cancelled too), so only the server's own cut at
the end of its grace period withdraws the answer whose write it interrupted
(``_stream_ended``).

On a stream, a bad request (a field, its request_id, a channel outside the
caller's scope, the caller's rate) is answered with ``error`` set and the
stream goes on; only bytes that do not parse, a refusal at stream start, no
list or a failure of the server end it. A reload of the keys file reaches an
open stream at its next message (``Gate.generation``): the caller is found
afresh, a removed key ends the stream (UNAUTHENTICATED), a narrowed one
applies from that message.

Each call's server-side time goes to the engine's ``Tally`` (per stream
request on a stream), and so does every refusal, by status code: what
``server.metrics`` reports.

GetPrefilter streams the Bloom prefilter of the served version
(``server/prefilter.py`` builds and caches it) to callers holding the role
``prefilter``. A RESOURCE_EXHAUSTED with a retry delay also carries
``grpc-retry-pushback-ms``, the trailer grpcio's retry policy obeys: the delay
when the caller's deadline leaves room for it, else -1 (do not retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, NoReturn
from urllib.parse import unquote

import grpc
import orjson
from google.protobuf.message import DecodeError

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.decision import VERDICT_NOT_LISTED, Query, Verdict
from shixin_check.domain.errors import (
    DeadlineExceeded,
    InvalidInput,
    MalformedRequest,
    NotReady,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from shixin_check.domain.identity import mask_id
from shixin_check.domain.model import Channel, Decision, china_day
from shixin_check.domain.rules import Policy
from shixin_check.domain.wire import MAX_CHARS
from shixin_check.server.auth import ANONYMOUS, Gate, Principal
from shixin_check.server.convert import StreamIds
from shixin_check.server.engine import BATCH, STATUS, STREAM, UNARY, CheckEngine, Tally
from shixin_check.server.hitlog import _METADATA_VALUE_MAX as _AUDITED_VALUE_MAX
from shixin_check.server.hitlog import (
    WITHDRAWN_HIT_UNWRITTEN,
    WITHDRAWN_UNAUDITED,
    AppendLog,
    AuditLog,
    call_fields,
    describe_write_error,
    write_error_advice,
)
from shixin_check.server.prefilter import Prefilters, client_rules
from shixin_check.server.status import refusal, status_of
from shixin_check.server.wire_text import NOT_UTF8, bad_text

try:  # the masks of a batch's audit record in one call; Python's where it was not built
    from shixin_check.loader._rowcheck import masked_json as _masked_json
except ImportError:  # pragma: no cover - a build without a C compiler
    _masked_json = None  # type: ignore[assignment]

SERVICE = "shixin.v1.ConsumptionCheck"

log = logging.getLogger("shixin.server")


class Malformed:
    """What a lenient deserialiser hands over for bytes that are not the message.

    When all that is wrong is a string field that is not UTF-8 (``wire_text``),
    ``field`` names it and ``request`` is the message with such text read leniently
    (U+FFFD): refused as a bad field, its subject audited, answered on a stream with
    ``error`` as any bad field is. Else ``field`` is "" and ``request`` None.
    """

    __slots__ = ("field", "problem", "request")

    def __init__(self, problem: str, field: str = "", request: Any = None) -> None:
        self.problem, self.field, self.request = problem, field, request

    def error(self) -> InvalidInput | MalformedRequest:
        if self.field:
            return InvalidInput(self.field, NOT_UTF8)
        return MalformedRequest(self.problem)


class Late(DeadlineExceeded):
    """The caller's deadline passed while its call was decided: the answer cannot reach
    it. ``withdrawn``: the check ids of the hits withdrawn for it."""

    def __init__(self, withdrawn: list[str]) -> None:
        super().__init__("the deadline passed before the answer could leave")
        self.withdrawn = withdrawn


class MetadataTooLarge(Exception):
    """A call's metadata over ``MAX_METADATA_BYTES``: refused as grpc refuses it (``_fail``)."""


class CallEnded(asyncio.CancelledError):
    """grpc had ended the call (its deadline passed, its caller went away) before its
    refusal could be sent: nobody can receive it. A ``CancelledError``, which grpc.aio
    takes from a handler as the end of a cancelled call, logged at DEBUG, where any other
    exception is an ERROR with a traceback (``ExecuteBatchError raised in core``)."""


async def abort_call(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
    trailers: Metadata = (),
) -> NoReturn:  # fmt: skip
    """``context.abort``; ``CallEnded`` when grpc cannot send the status any more (a
    batch whose deadline passes as it arrives: refused ``DEADLINE_EXCEEDED``, which grpc's
    own deadline has already told the caller)."""
    try:
        await context.abort(code, message, trailers)
    except grpc.aio.AbortError:
        raise
    except grpc.aio.InternalError as exc:  # ExecuteBatchError: the call is over in grpc's core
        raise CallEnded(f"the call had ended before its {code.name} could be sent") from exc
    raise AssertionError("abort returned")  # it raises; this tells the type checker


async def _write(context: grpc.aio.ServicerContext, response: pb.CheckResponse) -> None:
    """A stream's answer; ``CallEnded`` when grpc cannot send it any more (the caller
    went away, or its call ended, while the answer waited for room to be sent)."""
    try:
        await context.write(response)
    except grpc.aio.InternalError as exc:  # ExecuteBatchError: the call is over in grpc's core
        raise CallEnded("the call had ended before its answer could be sent") from exc


def _briefly(failure: Exception) -> str:
    """An audit record's failure, in a few words: ``ENOSPC (No space left on device)``."""
    return describe_write_error(failure) if isinstance(failure, OSError) else str(failure)


def _withdrawn_field(check_ids: list[str]) -> bytes:
    """The audit record's field naming the hits withdrawn for its call (b"" for none).
    Not ``withdrawn``: that is the hit log's withdrawal record."""
    return b',"withdrawn_hits":' + orjson.dumps(check_ids) if check_ids else b""


def _lenient(message: Any) -> Callable[[bytes], Any]:
    """``message.FromString``, handing over a ``Malformed`` for bytes it refuses."""
    parse, descriptor = message.FromString, message.DESCRIPTOR

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:
            problem = f"request is not a valid {descriptor.full_name}: {exc}"
            # only for protobuf's word on bad text (walking costs ~1 µs a field, in Python)
            found = bad_text(raw, descriptor) if "UTF-8" in str(exc) else None
            if found is not None:
                try:
                    return Malformed(problem, found[0], parse(found[1]))
                except (DecodeError, ValueError, RuntimeError):
                    pass  # more is wrong than its text
            return Malformed(problem)

    return deserialize


def _readable(request: Any) -> Any:
    """The request, or what could be read of a ``Malformed`` one (None)."""
    return request.request if type(request) is Malformed else request


_MAX_ID = MAX_CHARS["subject.person.id_number"]


def _subject_of(request: pb.CheckRequest) -> str:
    """Masked subject for the audit log (of a refused over-long number: its first 64 characters)."""
    which = request.WhichOneof("subject")
    if which == "person":
        return mask_id(request.person.id_number[:_MAX_ID].strip())
    if which == "organization":
        return mask_id(request.organization.uscc[:_MAX_ID].strip())
    return ""


def _batch_fields(queries: list[Query], verdicts: list[Verdict], answers: Any) -> bytes:
    """What a batch's audit record adds: each check's masked subject, in order, how
    many checks got each decision (``"outcomes": {"ALLOW": 99, "DENY": 1}``), and the
    check ids of the answers that matched someone (``"hits"``: the hit log's records).

    Cheap for the batch's common case: the masks in one C call, and the checks
    nobody is listed for counted by identity (``VERDICT_NOT_LISTED``)."""
    numbers = [query.id_number for query in queries]
    subjects = _masked_json(numbers) if _masked_json is not None else None
    if subjects is None:  # no C extension, or a number it leaves to Python
        subjects = orjson.dumps([mask_id(number) for number in numbers])
    unlisted = verdicts.count(VERDICT_NOT_LISTED)
    outcomes = Counter(v.decision for v in verdicts if v is not VERDICT_NOT_LISTED)
    outcomes[Decision.ALLOW] += unlisted
    named = {d.name: outcomes[d] for d in Decision if outcomes[d]}
    told = b',"subjects":' + subjects + b',"outcomes":' + orjson.dumps(named)
    if unlisted == len(verdicts):
        return told
    hits = [answers[i].check_id for i, v in enumerate(verdicts)
            if v is not VERDICT_NOT_LISTED and answers[i].matches]  # fmt: skip
    return told + b',"hits":' + orjson.dumps(hits) if hits else told


def _error_metadata(
    code: grpc.StatusCode, principal: Principal, role: str, channels: Iterable[int]
) -> dict[str, str]:
    """ErrorInfo metadata: who was refused, and the role or channel outside its scope."""
    if code is grpc.StatusCode.PERMISSION_DENIED:
        if role not in principal.roles:
            return {"principal": principal.name, "role": role}
        for value in channels:
            if value in _CHANNEL_NAMES and value not in principal.channels:
                return {"principal": principal.name, "channel": _CHANNEL_NAMES[value]}
        return {"principal": principal.name}
    if code in _CALLER_CODES:
        return {"principal": principal.name}
    return {}


_CHANNEL_NAMES = {c.value: c.name for c in Channel}
_METHOD_INDEX = {
    "CheckConsumption": UNARY, "CheckConsumptionBatch": BATCH,
    "CheckConsumptionStream": STREAM, "GetListStatus": STATUS,
}  # fmt: skip
#: The role each method needs (the check methods: "check").
_METHOD_ROLE = {"GetListStatus": "status", "GetPrefilter": "prefilter"}
#: The trailer grpcio's retry policy reads: milliseconds to wait, or -1 for "do not retry".
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: How long GetPrefilter waits for a filter being built when the caller sets no deadline.
PREFILTER_WAIT_S = 10.0
_CALLER_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION})
#: Refusals of one request on a stream: answered in the stream, which goes on.
_REQUEST_REFUSALS = (InvalidInput, PermissionDenied, RateLimited)
#: Why the hit records of a call are withdrawn when the call ended before its answer left
WITHDRAWN_LATE = "the call ended before its answer left: deadline exceeded"
WITHDRAWN_CANCELLED = "the call ended before its answer left: cancelled by the client"
WITHDRAWN_CUT = "the call ended before its answer left: cut at the end of the grace period"
#: Turns of the event loop a call that logged hits gives a cancellation grpc already
#: holds to reach it before its answer goes (grpc.aio 1.85 needs 3: its completion
#: queue's reader, the call's cancellation watcher, then the handler's task)
_CANCEL_TURNS = 3


_REQUEST_ID = "x-request-id"
_AUDITED_METADATA = frozenset({"user-agent", _REQUEST_ID, "x-merchant-id", "x-terminal-id"})
#: A call's metadata as grpcio hands it over: (key, value) pairs.
Metadata = tuple[tuple[str, str | bytes], ...]
#: A call's metadata, all headers together, as grpc counts it (each header's key and
#: value and 32 bytes, RFC 7541's entry size): the server's ``grpc.max_metadata_size``.
#: grpc does not hold the first call of a connection to it (a client that sends before
#: reading the server's settings gets any size through), so the service does.
MAX_METADATA_BYTES = 16 * 1024
_HEADER_OVERHEAD = 32
_MOST_HEADERS = MAX_METADATA_BYTES // _HEADER_OVERHEAD
#: Decision names by wire value: ``pb.Decision.Name`` is a descriptor look-up (~0.8 µs).
_DECISION_NAMES = {value: name for name, value in pb.Decision.items()}


#: distinct (method, caller, peer, audited metadata) whose audit fields a service keeps
#: encoded (peers and callers repeat across calls); past it, it starts afresh
_CALLS_KEPT = 4096
#: What the audit log keeps of a call's metadata: ``_AUDITED_METADATA``, each value cut
#: where the log cuts it. The key of the call fields kept (``_call_fields``), so bounded.
Audited = tuple[tuple[str, str | bytes], ...]


def _audited(metadata: Metadata) -> Audited:
    """The metadata the audit log keeps (``AuditLog`` withholds secrets and binary values):
    at most one value of each name, none longer than the log keeps."""
    kept = tuple([entry for entry in metadata if entry[0] in _AUDITED_METADATA])
    if len(kept) <= len(_AUDITED_METADATA):  # nearly every call: grpcio's pairs, as they are
        for _name, value in kept:
            if len(value) > _AUDITED_VALUE_MAX:
                break
        else:
            return kept
    # a name repeated, or a value longer than the log keeps: what the log keeps of them
    return tuple({k: v[:_AUDITED_VALUE_MAX] for k, v in kept}.items())


#: Refusals for credentials (``Unauthenticated``) the audit log records one by one, per
#: peer host: a token bucket. A burst of 50 keeps every refusal of a person trying a key
#: by hand, of a client's few retries, of a fleet's reconnections after a restart; past
#: it one a second still shows what the host sends and that it goes on. The rest are
#: counted (``unrecorded_refusals``), not written: a client retrying a revoked key in a
#: hot loop makes thousands a second, ~300 bytes each, gigabytes a day in a log that is
#: never deleted, until the disk is full and every check fails. One host so writes at
#: most 86,400 records a day (~26 MB).
REFUSALS_AUDITED_PER_HOST_S = 1.0
REFUSALS_AUDITED_PER_HOST_BURST = 50
#: The same over all hosts together, so that many (a fleet of terminals holding one
#: revoked key) cannot add up to a full disk: at most ~300 MB a day of such records.
#: The burst holds four hosts' bursts whole.
REFUSALS_AUDITED_PER_S = 10.0
REFUSALS_AUDITED_BURST = 200
#: Hosts whose refusals are counted. When the table is full the host refused least
#: recently is dropped (its counts held back go to the next summary, under no host):
#: not started afresh, which would give a host refusing now a fresh burst each time a
#: spray of other addresses filled the table.
REFUSAL_HOSTS_KEPT = 1024
#: How long, at most, a refusal held back waits for its summary record
REFUSAL_SUMMARY_S = 10.0
#: Hosts summarized one record each in one summary, those with the most refusals held
#: back first; the rest share one record (``"hosts"``), so that a fleet of many hosts
#: writes at most 33 summary records every ``REFUSAL_SUMMARY_S``
REFUSAL_SUMMARY_HOSTS = 32
_OUTCOME_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.name


def refusal_host(peer: str) -> str:
    """The host a refusal for credentials is counted against: ``context.peer()`` without
    its port (``ipv4:10.0.0.1:5555``: ``ipv4:10.0.0.1``). An IPv6 address counts by its
    /64, the least a site is given, so that one machine's many addresses count as one
    (``ipv6:[2001:db8:1:2::]/64``); one that maps an IPv4 address, as that address;
    anything else (``unix:``) as it is. grpc 1.85 writes ``ipv6:%5B::1%5D:5555``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return peer.rpartition(":")[0]
    if kind != "ipv6":
        return peer
    try:
        address = ipaddress.IPv6Address(unquote(rest).rpartition(":")[0].strip("[]"))
    except ValueError:  # not an address grpc writes: counted as it is
        return peer
    if address.ipv4_mapped is not None:
        return f"ipv4:{address.ipv4_mapped}"
    return f"ipv6:[{ipaddress.IPv6Address(int(address) >> 64 << 64)}]/64"


class _Held:
    """One host's bucket of refusals recorded one by one, and those held back since its
    last record: how many, by reason, since when (wall clock)."""

    __slots__ = ("tokens", "at", "count", "reasons", "since")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at  # ``time.monotonic()`` of the last refill
        self.count = 0
        self.reasons: dict[str, int] = {}
        self.since = 0.0

    def take(self, now: float, rate: float, burst: int) -> bool:
        """One token, if the bucket (refilled to ``now``) holds one."""
        self.tokens = min(float(burst), self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def hold(self, reason: str, count: int = 1, since: float = 0.0) -> None:
        if not self.count or (since and since < self.since):
            self.since = since or time.time()
        self.count += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def fields(self) -> bytes:
        """What a record adds for the refusals held back ("" for none)."""
        if not self.count:
            return b""
        return (b',"unrecorded_refusals":%d,"unrecorded_reasons":%b,"unrecorded_since":%a'
                % (self.count, orjson.dumps(self.reasons), self.since))  # fmt: skip

    def clear(self) -> None:
        self.count = 0
        self.reasons = {}


class RefusalRecords:
    """Which refusals for credentials the audit log records one by one (the
    ``REFUSALS_AUDITED_*`` buckets, per host and over all), and those held back, counted
    per host (``refusal_host``) until a record carries them: the host's next one, or a
    summary (``ConsumptionCheckService.summarize_refusals``). Used on the event loop's
    thread only, after a refusal is known: authenticated calls never reach it."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Held] = {}  # the host refused least recently first
        self.all = _Held(float(REFUSALS_AUDITED_BURST), time.monotonic())
        #: held back for hosts dropped from the table, or past a summary's hosts
        self.others = _Held(0.0, 0.0)
        self.other_hosts = 0
        #: ``refusal_host`` of the peers seen (an IPv6 one costs ~10 µs); cleared when full
        self._host_of: dict[str, str] = {}

    def take(self, peer: str, reason: str) -> _Held | None:
        """The host's counts when this refusal may be recorded (its record carries
        ``fields()``, then ``clear()``), or None when it is held back, and counted."""
        now = time.monotonic()
        host = self._host_of.get(peer)
        if host is None:
            if len(self._host_of) >= _CALLS_KEPT:
                self._host_of.clear()
            host = self._host_of[peer] = refusal_host(peer)
        hosts = self.hosts
        held = hosts.pop(host, None)
        if held is None:
            if len(hosts) >= REFUSAL_HOSTS_KEPT:
                self._drop(next(iter(hosts)))
            held = _Held(float(REFUSALS_AUDITED_PER_HOST_BURST), now)
        hosts[host] = held  # refused last: dropped last
        if held.take(now, REFUSALS_AUDITED_PER_HOST_S, REFUSALS_AUDITED_PER_HOST_BURST):
            if self.all.take(now, REFUSALS_AUDITED_PER_S, REFUSALS_AUDITED_BURST):
                return held
            held.tokens += 1.0  # not recorded: the host's token back
        held.hold(reason)
        return None

    def _drop(self, host: str) -> None:
        held = self.hosts.pop(host)
        if held.count:
            self.fold(held)

    def fold(self, held: _Held) -> None:
        """A host's counts into those of no host (``others``)."""
        for reason, n in held.reasons.items():
            self.others.hold(reason, n, held.since)
        self.other_hosts += 1
        held.clear()

    def pending(self) -> list[tuple[str, _Held]]:
        """What a summary writes now: the ``REFUSAL_SUMMARY_HOSTS`` hosts with the most
        held back, each alone, then the rest together under the host "" (``others``).
        Hosts with nothing held back and a full bucket are forgotten."""
        now = time.monotonic()
        busy = []
        for host, held in list(self.hosts.items()):
            if held.count:
                busy.append((host, held))
            elif held.tokens + (now - held.at) * REFUSALS_AUDITED_PER_HOST_S >= (
                REFUSALS_AUDITED_PER_HOST_BURST
            ):
                del self.hosts[host]  # as a host never seen
        busy.sort(key=lambda pair: -pair[1].count)
        for _host, held in busy[REFUSAL_SUMMARY_HOSTS:]:
            self.fold(held)
        out = busy[:REFUSAL_SUMMARY_HOSTS]
        if self.others.count:
            out.append(("", self.others))
        return out


class ConsumptionCheckService:
    """The RPCs of ``shixin.v1.ConsumptionCheck``."""

    def __init__(
        self,
        engine: CheckEngine,
        policy: Policy,
        audit: AuditLog | None = None,
        max_batch: int = 1000,
        gate: Gate | None = None,
        tls_principals: bool = False,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.audit = audit
        self.max_batch = max_batch
        self.gate = gate or Gate(None)
        self.tls_principals = tls_principals
        self._peers = engine.hit_log is not None or audit is not None
        #: set by the server when its grace period ends and it cuts the calls still in flight
        self.cutting = False
        self.tally: Tally = engine.tally
        self.prefilters = Prefilters(engine.keyer)
        self._calls: dict[tuple[str, str, str, Audited], bytes] = {}
        #: refusals for credentials: which are recorded one by one, and those held back
        self.refusals = RefusalRecords()
        #: how long, at most, a refusal held back waits for its summary record
        self.refusal_summary_s = REFUSAL_SUMMARY_S
        self._summary: asyncio.TimerHandle | None = None

    # --- the gate and the audit trail ----------------------------------------

    def _metadata(self, context: grpc.aio.ServicerContext) -> Metadata:
        """The call's metadata when the gate or the audit log will read it, else nothing;
        ``MetadataTooLarge`` over ``MAX_METADATA_BYTES``, before anything reads it.

        Read once per call (or stream) and handed to both: grpcio builds the
        tuple afresh on every ``invocation_metadata()`` (~4 µs). What it hands over
        lacks the pseudo-headers grpc counts too, so a call grpc lets through is never
        refused here. Metadata nothing reads is not looked at: it costs nothing more.
        """
        if self.gate.enabled or self.audit is not None:
            metadata = context.invocation_metadata() or ()
            headers = len(metadata)
            size = _HEADER_OVERHEAD * headers
            if headers <= _MOST_HEADERS:  # more are over the limit, whatever they hold
                for key, value in metadata:
                    size += len(key) + len(value)
            if size > MAX_METADATA_BYTES:
                raise MetadataTooLarge(
                    f"received metadata size exceeds hard limit ({size} vs. {MAX_METADATA_BYTES})"
                )
            return metadata
        return ()

    def _identify(self, context: grpc.aio.ServicerContext, metadata: Metadata) -> Principal:
        """The caller, or ``Unauthenticated``."""
        gate = self.gate
        if not gate.enabled:
            return ANONYMOUS
        common_name = ""
        if self.tls_principals:
            names = context.auth_context().get("x509_common_name") or [b""]
            common_name = names[0].decode()
        return gate.principal(metadata, common_name)

    def _admit(self, principal: Principal, role: str) -> None:
        """``principal`` may call a method of ``role``, or ``PermissionDenied``.

        Apart from ``_identify`` so that a refusal can name who was refused. Checks
        are charged to the caller's rate by the engine, once they are valid and in
        scope: a refused check costs no token.
        """
        if self.gate.enabled:
            principal.require_role(role)

    def _audit(self, context: grpc.aio.ServicerContext, method: str, principal: Principal,
               subject: str, outcome: str, started: float, metadata: Metadata,
               count: int = 1, check_id: str = "", peer: str = "",
               extra: bytes = b"") -> None:  # fmt: skip
        """``metadata``: the call's, as ``_metadata`` read it (grpcio builds it afresh each time)."""
        assert self.audit is not None
        call = self._call_fields(method, principal, peer or context.peer(), metadata)
        self.audit.record_call(call, subject, outcome, started, count, check_id, extra)

    def _call_fields(
        self, method: str, principal: Principal, peer: str, metadata: Metadata
    ) -> bytes:
        """``hitlog.call_fields`` of a call, encoded once for every call that shares them:
        kept by what the record holds (the audited metadata, not all of it), so that
        what is kept is bounded whatever a caller sends. A gateway sends a new
        ``x-request-id`` on every call: it is left out of the key and added to the
        encoded fields afterwards, so that its calls share one entry (with it in the
        key every call missed, and the cache started afresh every 4,096 calls)."""
        audited = _audited(metadata)
        request_id = None
        for name, value in audited:
            if name == _REQUEST_ID:
                request_id = value  # the last, as the record's dict keeps it
        if request_id is not None:
            audited = tuple([entry for entry in audited if entry[0] != _REQUEST_ID])
        key = (method, principal.name, peer, audited)
        calls = self._calls
        call = calls.get(key)
        if call is None:
            if len(calls) >= _CALLS_KEPT:
                calls.clear()
            kept = {k: str(v) for k, v in audited}
            call = calls[key] = call_fields(method, principal.name, peer, kept)
        if request_id is None:
            return call
        # the metadata object ends the fields: the request id goes in as its last member
        told = b'"x-request-id":' + orjson.dumps(str(request_id)[:_AUDITED_VALUE_MAX]) + b"}"
        return call[:-1] + told if call.endswith(b"{}") else call[:-1] + b"," + told

    def _count_refusal(
        self, code: grpc.StatusCode, exc: BaseException, principal: Principal
    ) -> None:
        tally = self.tally
        tally.refusals[code.value[0]] += 1
        if isinstance(exc, RateLimited):
            name = principal.name
            tally.rate_limited[name] = tally.rate_limited.get(name, 0) + 1

    def _unanswered(
        self, method: str, answered: Iterable[tuple[pb.CheckRequest, pb.CheckResponse]],
        reason: str = WITHDRAWN_UNAUDITED,
    ) -> list[str]:  # fmt: skip
        """The answers of a call that will not leave (``reason``: its audit record
        unwritten, a later hit record of its batch, the call ended first): uncounted
        (``CheckEngine.withdraw``), and the hit records written for them withdrawn
        (``HitLog.withdraw``), so the quarterly feedback does not count checks
        nobody was told of (a retry is a new check, with a new check id).

        Only on those paths; returns the check ids of the hits withdrawn. A
        withdrawal that cannot be written either (the disk that refused the record
        may refuse it too) is counted in the hit log's write errors and logged,
        once, with the check ids and the line that withdraws them, for the feedback
        to be mended by hand (``HitLog.settle``); the call fails as it would have.
        """
        engine = self.engine
        hits: list[str] = []
        for request, answer in answered:
            engine.withdraw(request, answer)
            if answer.matches:  # a hit: ``CheckEngine._answer`` logged it
                hits.append(answer.check_id)
        hit_log = engine.hit_log
        if hits and hit_log is not None:
            hit_log.settle(hits, reason, method)
        return hits

    def _unanswered_part(self, checks: Sequence[pb.CheckRequest], results: Any) -> None:
        """A batch that failed part-way through its answers (``check_many``: a hit
        record the disk refused): the answers made before that check's never leave,
        so they are uncounted and their hits withdrawn (``_unanswered``). ``results``
        ends in the failing check's answer, added before it failed, neither counted
        nor filled in: every answer before it was made whole."""
        made = zip(checks, results[:-1], strict=False)
        self._unanswered("CheckConsumptionBatch", made, WITHDRAWN_HIT_UNWRITTEN)

    async def _fail(
        self, context: grpc.aio.ServicerContext, exc: BaseException, method: str,
        principal: Principal, subject: str, started: float, metadata: Metadata,
        prefix: str = "", channels: Iterable[int] = (), count: int = 1, answered: str = "",
    ) -> NoReturn:  # fmt: skip
        """End the call with the status of ``exc`` and its details, audited.

        ``answered``: the check id of an answer made but not sent (its hits withdrawn,
        ``_unanswered``), which an INTERNAL then names, so that the caller's message, the
        server's log line and the hit log's withdrawal share one id.

        ``metadata``: the call's (``_metadata``); ``channels``: the request's, to
        name the one outside the caller's scope; ``count``: the checks the call
        asked for, as its audit record gives them. An authentication refusal's
        record says why (``"reason"``: ``API_KEY_MISSING``, ...): its caller is
        ``anonymous``, as every caller's is with authentication off. An INTERNAL
        is logged once, with its traceback and check id. An audit record that
        cannot be written (the disk is full) does not stop the refusal: the log
        line says so, and the audit log counts its failures. Metadata over the
        limit (``MetadataTooLarge``) is refused as grpc refuses it, with no
        details and no audit record (README: Bad input), and only counted.
        """
        if isinstance(exc, MetadataTooLarge):
            self._count_refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, exc, principal)
            await abort_call(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        code = status_of(exc)
        check_id = ""
        if code is grpc.StatusCode.INTERNAL:
            check_id = answered or self.engine.new_check_id()
            undecided = "" if method in _METHOD_ROLE else "; the check was not decided"
            if undecided and isinstance(exc, OSError):  # a log's write (a full disk)
                undecided = ("; the check was decided, but a record of it could not be "
                             "written (the server's log), so it is not answered")  # fmt: skip
            if answered:
                undecided = "; the check was decided but not answered (withdrawn)"
            message = f"{prefix}internal error (check_id {check_id}){undecided}"
            info = {"check_id": check_id}
        else:
            message = prefix + str(exc)
            role = _METHOD_ROLE.get(method, "check")
            info = _error_metadata(code, principal, role, channels)
        told = refusal(exc, message, info)
        trailers = told.trailing_metadata()
        if told.retry_after is not None:
            trailers += ((PUSHBACK_KEY, _pushback(told.retry_after_ms, context)),)
        unaudited = ""
        unrecorded: Exception | None = None
        if self.audit is not None:
            recorded, peer, extra = True, "", b""
            held: _Held | None = None
            if isinstance(exc, Late):
                extra = _withdrawn_field(exc.withdrawn)
            elif isinstance(exc, Unauthenticated):
                extra = b',"reason":' + orjson.dumps(exc.reason)
                if principal is ANONYMOUS:  # credentials never taken: a loop may send these
                    peer = context.peer()
                    held = self.refusals.take(peer, exc.reason)
                    recorded = held is not None
                    if held is None:  # held back from the log: counted, then summarized
                        self.tally.refusals_unrecorded += 1
                        self._summarize_later()
                    else:  # with the refusals of its host held back since its last record
                        extra += held.fields()
                # else a stream cut once its key was removed: once a stream, always recorded
            if recorded:
                try:
                    self._audit(context, method, principal, subject, code.name, started,
                                metadata, count, check_id=check_id, peer=peer, extra=extra)  # fmt: skip
                except Exception as failure:  # noqa: BLE001 - the refusal goes out all the same
                    unaudited = f"; not audited: {_briefly(failure)}"
                    unrecorded = failure
                else:
                    if held is not None:
                        held.clear()  # its record carried them
        if check_id:
            said = self._log_failure(exc)
            if said is None:  # a bug here: its traceback
                log.error(
                    "%s failed: internal error, check_id %s, subject %s, caller %s%s",
                    method, check_id, subject or "-", principal.name or "-", unaudited,
                    exc_info=exc,
                )  # fmt: skip
            elif said:  # a log the disk refuses: no bug, one line (at most one per log a while)
                log.error("%s failed: internal error, check_id %s, caller %s: %s%s", method,
                          check_id, principal.name or "-", said, unaudited)  # fmt: skip
        elif unrecorded is not None:
            self._refused_unaudited(method, code, principal, unrecorded)
        self._count_refusal(code, exc, principal)
        index = _METHOD_INDEX.get(method)
        if index is not None:
            self.tally.observe(index, time.perf_counter() - started)
        await abort_call(context, code, message, trailers)

    def _refused_unaudited(
        self, method: str, code: grpc.StatusCode, principal: Principal, failure: Exception
    ) -> None:
        """The line of a refusal whose audit record could not be written: the audit
        log's own line (``failure_line``: the file, the error, what to do), and none
        while those are rate-limited (a client retrying a bad request on a full disk
        logged one line a refusal, 20 a second); any other failure as it is."""
        said = self._log_failure(failure)
        if said is None:
            log.error("%s refused with %s, caller %s; not audited: %s", method, code.name,
                      principal.name or "-", failure)  # fmt: skip
        elif said:
            log.error("%s refused with %s, caller %s; not audited: %s", method, code.name,
                      principal.name or "-", said)  # fmt: skip

    def _log_failure(self, exc: BaseException) -> str | None:
        """A call failed because the hit or audit log could not be written: that log's
        line (``AppendLog.failure_line``, "" while it is rate-limited); None for any
        other failure (a bug: logged with its traceback)."""
        if isinstance(exc, OSError):
            for sink in (self.engine.hit_log, self.audit):
                if sink is not None and sink.raised(exc):
                    return sink.failure_line(exc)
        return None

    def _summarize_later(self) -> None:
        """A refusal was held back: its summary within ``refusal_summary_s``, on the loop."""
        if self._summary is None:
            loop = asyncio.get_running_loop()
            self._summary = loop.call_later(self.refusal_summary_s, self.summarize_refusals)

    def summarize_refusals(self) -> None:
        """Write a summary record of the refusals for credentials held back from the audit
        log (``RefusalRecords``): one per host, at most ``REFUSAL_SUMMARY_HOSTS`` of them,
        the rest in one record of their own, and one WARNING line that says how many.
        Called on the loop ``refusal_summary_s`` after the first held back, and by the
        server at shutdown before the audit log closes. Never raises: a record the disk
        refuses leaves its counts for the next summary, soon again.

        A summary record is an audit record of method "" (it covers every method),
        caller ``anonymous``, peer the host (``refusal_host``), outcome
        ``UNAUTHENTICATED``, 0 checks and no ``reason``; ``unrecorded_refusals`` says
        how many, ``unrecorded_reasons`` how many of each reason, ``unrecorded_since``
        when the first was refused. The rest's record has the peer "" and ``hosts``:
        how many hosts' counts it holds (a host set aside twice counts twice)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self.audit is None:
            return
        refusals = self.refusals
        written, hosts, most = 0, 0, ""
        pending = refusals.pending()
        waiting = sum(held.count for _, held in pending)
        for host, held in pending:
            extra = held.fields()
            if not host:
                extra += b',"hosts":%d' % refusals.other_hosts
            try:
                self.audit.record_call(self._call_fields("", ANONYMOUS, host, ()), "",
                                       _OUTCOME_UNAUTHENTICATED, time.perf_counter(), 0,
                                       extra=extra)  # fmt: skip
            except Exception as failure:  # noqa: BLE001 - on the loop: nobody else to tell
                log.error("audit log: %d refusals for credentials held back from it are not "
                          "summarized yet: %s", waiting - written, failure)  # fmt: skip
                with contextlib.suppress(RuntimeError):  # no loop: the server has stopped
                    self._summarize_later()
                break
            if not most:
                most = f"{host or 'other hosts'}: {held.count}, {', '.join(held.reasons)}"
            written += held.count
            hosts += 1 if host else refusals.other_hosts
            held.clear()
            if not host:
                refusals.other_hosts = 0
        if written:
            log.warning("audit log: %d refusals for credentials (UNAUTHENTICATED) from %d "
                        "host%s not recorded one by one, only counted in summary records "
                        "(the most from %s): a client with a bad or revoked key, retrying?",
                        written, hosts, "" if hosts == 1 else "s", most)  # fmt: skip

    def _too_late(
        self, method: str, answered: Iterable[tuple[pb.CheckRequest, pb.CheckResponse]]
    ) -> Late:
        """A call decided past its caller's deadline: its answers withdrawn (``_unanswered``),
        and the refusal that says so (``_fail`` audits it with the hits withdrawn)."""
        return Late(self._unanswered(method, answered, WITHDRAWN_LATE))

    def _why_cut(self, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
        """Why a call was cancelled before its answer left: the status its caller saw, and
        the reason its hits are withdrawn with."""
        if _late(context):
            return grpc.StatusCode.DEADLINE_EXCEEDED, WITHDRAWN_LATE
        if self.cutting:
            return grpc.StatusCode.CANCELLED, WITHDRAWN_CUT
        return grpc.StatusCode.CANCELLED, WITHDRAWN_CANCELLED

    def _cut(
        self, context: grpc.aio.ServicerContext, method: str, call: bytes, subject: str,
        answered: Iterable[tuple[pb.CheckRequest, pb.CheckResponse]], started: float,
        count: int = 1,
    ) -> None:  # fmt: skip
        """A call cancelled before its answer left: its answers withdrawn (``_unanswered``),
        a record of its own in the audit log (``call``: its fields, ``_call_fields``), and
        its status counted. Never raises: the call has ended."""
        code, reason = self._why_cut(context)
        withdrawn = self._unanswered(method, answered, reason)
        if self.audit is not None:
            try:
                self.audit.record_call(call, subject, code.name, started, count,
                                       extra=_withdrawn_field(withdrawn))  # fmt: skip
            except Exception as failure:  # noqa: BLE001 - nobody is left to tell
                log.error("%s ended with %s before its answer left; not audited: %s", method,
                          code.name, failure)  # fmt: skip
        self.tally.refusals[code.value[0]] += 1

    async def _left(
        self, context: grpc.aio.ServicerContext, principal: Principal,
        answered: Sequence[tuple[pb.CheckRequest, pb.CheckResponse]], started: float,
        count: int, metadata: Metadata, peer: str,
    ) -> None:  # fmt: skip
        """A batch that logged hits, answered and audited, before its answer goes (a
        unary call is not held so: see the module's docstring). A cancellation grpc
        already holds (the caller cancelled, its connection broke, its deadline passed,
        the server's grace ended) reaches the handler only as a ``CancelledError`` at an
        ``await``, so the loop turns a few times (``_CANCEL_TURNS``); then the deadline
        is looked at once more. A batch so ended is withdrawn (``_cut``, or
        ``_too_late`` and its refusal): its record in the audit log, already written,
        stays; a second one says how it ended."""
        method = "CheckConsumptionBatch"
        try:
            for _ in range(_CANCEL_TURNS):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            call = b""
            if self.audit is not None:
                call = self._call_fields(method, principal, peer or context.peer(), metadata)
            self._cut(context, method, call, "", answered, started, count)
            self.tally.observe(BATCH, time.perf_counter() - started)
            raise
        if _late(context):
            await self._fail(context, self._too_late(method, answered), method, principal,
                             "", started, metadata, count=count)  # fmt: skip

    def _stream_ended(
        self, unsent: list[tuple[pb.CheckRequest, pb.CheckResponse, bytes, float]],
        context: grpc.aio.ServicerContext,
    ) -> None:  # fmt: skip
        """A stream's done callback: an answer that matched someone, handed to grpc and its
        write not yet done (``_write`` returns once it is written) when
        the server cut the stream at the end of its grace period, is withdrawn
        (``_cut``): the cut came first. Not when the caller cancelled or its deadline
        passed: grpc then reports the write cancelled even when the caller had read the
        answer (seen with grpcio 1.85: a caller that reads an answer and cancels at
        once), so it counts, as do the answers written before it, whatever the caller
        did with them."""
        if unsent and self.cutting:
            request, response, call, started = unsent.pop()
            self._cut(context, "CheckConsumptionStream", call, _subject_of(request),
                      ((request, response),), started)  # fmt: skip

    def _refuse_in_stream(
        self, exc: BaseException, request: pb.CheckRequest, principal: Principal,
        started: float, call: bytes,
    ) -> pb.CheckResponse:  # fmt: skip
        """The answer to a bad request on a stream: its request_id and the error, audited
        (``call``: the stream's audit fields, ``_call_fields``)."""
        code = status_of(exc)
        told = refusal(exc, metadata=_error_metadata(code, principal, "check", (request.channel,)))
        if self.audit is not None:
            try:
                self.audit.record_call(call, _subject_of(request), code.name, started)
            except Exception as failure:  # noqa: BLE001 - the refusal goes out all the same (_fail)
                self._refused_unaudited("CheckConsumptionStream", code, principal, failure)
        self._count_refusal(code, exc, principal)
        return pb.CheckResponse(request_id=request.request_id, error=told.check_error())

    # --- the RPCs --------------------------------------------------------------

    async def CheckConsumption(
        self, request: pb.CheckRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        started = time.perf_counter()
        principal = ANONYMOUS
        metadata: Metadata = ()
        answered = ""
        try:
            # the caller first: its metadata is there whatever the body holds
            metadata = self._metadata(context)
            principal = self._identify(context, metadata)
            self._admit(principal, "check")
            if type(request) is Malformed:
                raise request.error()
            engine = self.engine
            peer = context.peer() if self._peers else ""
            # validated, then the view (none: UNAVAILABLE), then the rate
            response = engine.check(request, None, peer, principal)  # type: ignore[arg-type]
            hit = bool(response.matches)  # a hit, logged: its answer must still be awaited
            if hit and _late(context):
                raise self._too_late("CheckConsumption", ((request, response),))  # type: ignore[arg-type]
            if self.audit is not None:
                try:
                    self._audit(context, "CheckConsumption", principal, _subject_of(request),  # type: ignore[arg-type]
                                _DECISION_NAMES[response.decision], started, metadata,
                                check_id=response.check_id if hit else "", peer=peer)  # fmt: skip
                except Exception:
                    self._unanswered("CheckConsumption", ((request, response),))  # type: ignore[arg-type]
                    answered = response.check_id
                    raise  # not audited, not answered: INTERNAL
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            readable = _readable(request)
            subject = "" if readable is None else _subject_of(readable)
            channels = () if readable is None else (readable.channel,)
            await self._fail(context, exc, "CheckConsumption", principal, subject, started,
                             metadata, channels=channels, answered=answered)  # fmt: skip
        self.tally.observe(UNARY, time.perf_counter() - started)
        return response

    async def CheckConsumptionBatch(
        self, request: pb.CheckBatchRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        started = time.perf_counter()
        principal = ANONYMOUS
        count = 0
        metadata: Metadata = ()
        try:
            metadata = self._metadata(context)
            principal = self._identify(context, metadata)
            self._admit(principal, "check")
            if type(request) is Malformed:
                if request.request is not None:  # only its text is bad: read, as a batch
                    count = len(request.request.checks)
                    self._no_more_than_allowed(count)  # the size first, as for any batch
                raise request.error()
            checks = request.checks  # type: ignore[union-attr]
            count = len(checks)
            self._no_more_than_allowed(count)
            _in_time(context)
            engine = self.engine
            peer = context.peer() if self._peers else ""
            reply = pb.CheckBatchResponse()
            hits = self.tally.hits
            before = sum(hits)
            try:
                queries, verdicts = engine.check_many(checks, None, reply.results, peer, principal)
            except Exception:
                if len(reply.results) > 1:  # a hit record not written, after other answers
                    self._unanswered_part(checks, reply.results)
                raise  # not answered: INTERNAL
            hit = sum(hits) != before  # hits logged: the answers must still be awaited
            if _late(context):  # decided past the caller's deadline: nobody waits for it
                raise self._too_late(
                    "CheckConsumptionBatch", zip(checks, reply.results, strict=True)
                )
            if self.audit is not None:
                try:
                    self._audit(context, "CheckConsumptionBatch", principal, "", "OK", started,
                                metadata, count, peer=peer,
                                extra=_batch_fields(queries, verdicts, reply.results))  # fmt: skip
                except Exception:
                    self._unanswered("CheckConsumptionBatch",
                                     zip(checks, reply.results, strict=True))  # fmt: skip
                    raise
        except Exception as exc:  # noqa: BLE001
            channels = (
                [c.channel for c in request.checks]  # type: ignore[union-attr]
                if isinstance(exc, PermissionDenied) and type(request) is not Malformed
                else ()
            )
            await self._fail(context, exc, "CheckConsumptionBatch", principal, "", started,
                             metadata, channels=channels, count=count)  # fmt: skip
        if hit:
            await self._left(context, principal, list(zip(checks, reply.results, strict=True)),
                             started, count, metadata, peer)  # fmt: skip
        self.tally.observe(BATCH, time.perf_counter() - started)
        return reply

    def _no_more_than_allowed(self, count: int) -> None:
        """``BATCH_TOO_LARGE`` for a batch of over ``max_batch`` checks."""
        if count > self.max_batch:
            raise InvalidInput(
                "checks", f"at most {self.max_batch} checks per batch, got {count}"
            ).with_reason("BATCH_TOO_LARGE")

    async def CheckConsumptionStream(
        self, request_iterator: AsyncIterator[pb.CheckRequest | Malformed],
        context: grpc.aio.ServicerContext,
    ) -> None:  # fmt: skip
        """Answers written with ``context.write``, not yielded: a write grpc can no
        longer make (the caller gone while its answer waited for room in its window)
        then fails here, where it ends the call quietly (``CallEnded``); yielded, it
        failed in grpcio's own loop, which logged an ERROR with a traceback."""
        engine = self.engine
        gate = self.gate
        peer = context.peer() if self._peers else ""
        principal = ANONYMOUS
        started = time.perf_counter()
        metadata: Metadata = ()
        generation = gate.generation
        try:
            metadata = self._metadata(context)
            principal = self._identify(context, metadata)
            self._admit(principal, "check")
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc, "CheckConsumptionStream", principal, "", started,
                             metadata, count=0)  # fmt: skip
        ids = StreamIds()
        audit = self.audit
        call = b""
        if audit is not None:  # the stream's records share these: encoded once
            call = self._call_fields("CheckConsumptionStream", principal, peer or context.peer(),
                                     metadata)  # fmt: skip
        # an answer that matched someone, from its write until the write is done:
        # withdrawn if the server cuts the stream before (``_stream_ended``)
        unsent: list[tuple[pb.CheckRequest, pb.CheckResponse, bytes, float]] = []
        context.add_done_callback(functools.partial(self._stream_ended, unsent))
        answered = ""
        async for request in request_iterator:
            started = time.perf_counter()
            if gate.generation != generation:  # the keys were reloaded: the caller afresh
                generation = gate.generation
                try:
                    principal = self._identify(context, metadata)  # removed: UNAUTHENTICATED
                    self._admit(principal, "check")
                except Exception as exc:  # noqa: BLE001 - the stream ends, as at its start
                    readable = _readable(request)
                    subject = "" if readable is None else _subject_of(readable)
                    await self._fail(context, exc, "CheckConsumptionStream", principal, subject,
                                     started, metadata)  # fmt: skip
                if audit is not None:
                    call = self._call_fields("CheckConsumptionStream", principal,
                                             peer or context.peer(), metadata)  # fmt: skip
            try:
                if isinstance(request, Malformed):
                    if request.request is None:  # the stream is broken: its bytes end it
                        raise MalformedRequest(request.problem)
                    # only its text is not UTF-8: a bad field, answered; the stream goes on
                    refused, request = request.error(), request.request
                    response = self._refuse_in_stream(refused, request, principal, started, call)
                else:
                    try:
                        ids.admit(request.request_id)
                        try:
                            response = engine.check(request, None, peer, principal)
                        except _REQUEST_REFUSALS:
                            ids.release(request.request_id)  # answered: it may come again
                            raise
                    except _REQUEST_REFUSALS as exc:  # this request only: answered, it goes on
                        response = self._refuse_in_stream(exc, request, principal, started, call)
                    else:
                        if audit is not None:
                            try:
                                audit.record_call(call, _subject_of(request),
                                                  _DECISION_NAMES[response.decision], started,
                                                  1, response.check_id if response.matches else "")  # fmt: skip
                            except Exception:
                                self._unanswered("CheckConsumptionStream", ((request, response),))
                                answered = response.check_id
                                raise  # not audited, not answered: INTERNAL
            except Exception as exc:  # noqa: BLE001 - the stream ends
                readable = _readable(request)
                rid = "" if readable is None else readable.request_id
                prefix = f"request_id {rid!r}: " if rid else ""
                subject = "" if readable is None else _subject_of(readable)
                await self._fail(context, exc, "CheckConsumptionStream", principal, subject,
                                 started, metadata, prefix, answered=answered)  # fmt: skip
            self.tally.observe(STREAM, time.perf_counter() - started)
            if response.matches:  # a hit: withdrawn if the server cuts the stream meanwhile
                unsent.append((request, response, call, started))
                await _write(context, response)
                unsent.clear()
            else:
                await _write(context, response)

    async def GetListStatus(
        self, request: pb.ListStatusRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.ListStatus:
        started = time.perf_counter()
        principal = ANONYMOUS
        metadata: Metadata = ()
        try:
            metadata = self._metadata(context)
            principal = self._identify(context, metadata)
            self._admit(principal, "status")
            if type(request) is Malformed:
                raise request.error()
            status = list_status(self.engine, self.policy, self.gate)
            if self.audit is not None:
                try:
                    self._audit(context, "GetListStatus", principal, "", "OK", started,
                                metadata, 0)  # fmt: skip
                except OSError as exc:
                    # the diagnosis is answered without its record: the audit log that
                    # cannot take it is what it reports (not_serving_reason, below); the
                    # gap in the trail is said each time (an operator's call, not a flood)
                    log.error("GetListStatus answered, caller %s; not audited: %s",
                              principal.name or "-", self._log_failure(exc) or exc)  # fmt: skip
            if not status.not_serving_reason:
                status.not_serving_reason = log_problem(self.engine.hit_log, self.audit)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc, "GetListStatus", principal, "", started, metadata,
                             count=0)  # fmt: skip
        self.tally.observe(STATUS, time.perf_counter() - started)
        return status

    async def GetPrefilter(
        self, request: pb.PrefilterRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PrefilterChunk]:
        started = time.perf_counter()
        principal = ANONYMOUS
        metadata: Metadata = ()
        try:
            metadata = self._metadata(context)
            principal = self._identify(context, metadata)
            self._admit(principal, "prefilter")
            if type(request) is Malformed:
                raise request.error()
            # a caller testing fewer readings than a check looks up would clear listed people
            client_rules(request.lookup_rules)  # type: ignore[union-attr]
            view = self.engine.source.current()
            if view is None:
                raise NotReady("no list loaded yet")
            remaining = context.time_remaining()
            wait = (
                PREFILTER_WAIT_S if remaining is None else min(PREFILTER_WAIT_S, remaining - 0.05)
            )
            built = await self.prefilters.get(view, wait)
            # a gateway answers locally only what the server would answer this caller
            channels = principal.channels if "check" in principal.roles else frozenset()
            header, chunks = self.prefilters.download(
                built,
                request.known_version,  # type: ignore[union-attr]
                channels,
            )
            # when the gateway's local answers turn stale, as the server's do
            stale_since = self.engine.stale_since(view.info)
            if stale_since is not None:
                header.stale_since = _rfc3339(stale_since)
            if self.audit is not None:
                self._audit(context, "GetPrefilter", principal, "", "OK", started, metadata, 0)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc, "GetPrefilter", principal, "", started, metadata,
                             count=0)  # fmt: skip
        yield pb.PrefilterChunk(header=header)
        for chunk in chunks:
            yield chunk


#: What a retry needs besides its delay to be answered before the caller's deadline: the
#: trip and the decision (a batch of 1,000: tens of ms), with room to spare
PUSHBACK_MARGIN_MS = 100


def _pushback(delay_ms: int, context: grpc.aio.ServicerContext) -> str:
    """``grpc-retry-pushback-ms``: the delay, or -1 when a retry after it could not be
    answered before the caller's deadline (it would be cut DEADLINE_EXCEEDED, and the
    caller learn nothing of its rate: -1 hands it the refusal and its delay at once)."""
    remaining = context.time_remaining()
    if remaining is None or delay_ms + PUSHBACK_MARGIN_MS < remaining * 1000:
        return str(delay_ms)
    return "-1"


def _late(context: grpc.aio.ServicerContext) -> bool:
    """The caller's deadline has passed: it no longer waits for the answer (grpc.aio's
    ``time_remaining`` is 0 from then on; None without a deadline)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _in_time(context: grpc.aio.ServicerContext) -> None:
    """Refuse work whose answer nobody waits for any more (batches queue behind each other)."""
    if _late(context):
        raise DeadlineExceeded("the deadline passed before the batch was started")


def add_to_server(service: ConsumptionCheckService, server: grpc.aio.Server) -> None:
    """Register the service with deserialisers that never turn bad bytes into INTERNAL."""
    check = _lenient(pb.CheckRequest)
    handlers = {
        "CheckConsumption": grpc.unary_unary_rpc_method_handler(
            service.CheckConsumption, check, pb.CheckResponse.SerializeToString
        ),
        "CheckConsumptionBatch": grpc.unary_unary_rpc_method_handler(
            service.CheckConsumptionBatch,
            _lenient(pb.CheckBatchRequest),
            pb.CheckBatchResponse.SerializeToString,
        ),
        "CheckConsumptionStream": grpc.stream_stream_rpc_method_handler(
            service.CheckConsumptionStream, check, pb.CheckResponse.SerializeToString
        ),
        "GetListStatus": grpc.unary_unary_rpc_method_handler(
            service.GetListStatus,
            _lenient(pb.ListStatusRequest),
            pb.ListStatus.SerializeToString,
        ),
        "GetPrefilter": grpc.unary_stream_rpc_method_handler(
            service.GetPrefilter,
            _lenient(pb.PrefilterRequest),
            pb.PrefilterChunk.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def log_problem(*sinks: AppendLog | None) -> str:
    """Why readiness is NOT_SERVING for a log that cannot be written ("" when none)."""
    for sink in sinks:
        failure = None if sink is None else sink.failure
        if sink is not None and failure is not None:
            return (f"the {sink.kind} {sink.path} ({sink.flag}) cannot be written: "
                    f"{describe_write_error(failure)}: {write_error_advice(failure, sink.path)}")  # fmt: skip
        head = getattr(sink, "head_failure", None)
        if sink is not None and head is not None:  # records go in, unanchored: a cut unseen
            return (f"the {sink.kind} {sink.path} ({sink.flag}) cannot note its chain head: "
                    f"{describe_write_error(head)}: {write_error_advice(head, sink.path)}")  # fmt: skip
    return ""


def _rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix)) if unix else ""


def list_status(engine: CheckEngine, policy: Policy, gate: Gate | None = None) -> pb.ListStatus:
    """What GetListStatus and ``shixin-check status`` report."""
    status = pb.ListStatus(
        policy=[pb.PolicyParameter(name=n, value=v, description=d) for n, v, d in policy.describe()]
    )
    if gate is not None:
        for principal, windows in sorted(gate.watch.flagged.items()):
            status.enumeration_flags[principal] = windows
    replica_status = getattr(engine.source, "replica_status", None)
    if replica_status is not None:
        for name, value in replica_status().items():
            setattr(status, name, value)
    view = engine.source.current()
    if view is None:
        return status
    info = view.info
    status.version = info.version
    status.serving = True
    status.source = info.source
    status.loaded_at = _rfc3339(info.loaded_at)
    status.source_timestamp = _rfc3339(info.source_timestamp)
    now = time.time()
    status.staleness_seconds = max(0, int(now - info.source_timestamp))
    stale_since = engine.stale_since(info)
    if stale_since is not None:
        assert engine.max_list_age is not None
        status.max_list_age_seconds = int(engine.max_list_age)
        if now >= stale_since:
            status.stale = True
            status.stale_since = _rfc3339(stale_since)
    status.last_delta_seq = info.last_delta_seq
    status.snapshot_includes_seq = info.includes_seq
    status.entries_total = info.counts.total
    status.subject_keys = info.counts.subject_keys
    for list_type, entry_status, n in info.counts.on(china_day(time.time())):
        status.counts.add(list_type=list_type, status=entry_status, entries=n)
    return status
