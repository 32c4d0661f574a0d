"""One check from wire request to wire answer: convert, decide, log the hit.

The servicer calls this and nothing else; it holds no policy of its own
(that is ``shixin_check.domain.decision``). This is the hot path: no logging
calls, no locks, one index view per check.

It also keeps the counts the metrics endpoint reports (``Tally``): plain
integers bumped with ``+= 1`` and read at scrape time by
``server.metrics``. No lock: every check runs on the server's one asyncio
thread, and a scrape from the metrics thread reads whole ints under the GIL
(a read may be a few checks older than another; never torn). A
prometheus-client ``labels(...).inc()`` takes a lock and costs about 1 µs,
a fifth of the per-check budget (DESIGN §6).
"""

from __future__ import annotations

import itertools
import secrets
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.decision import VERDICT_NOT_LISTED, Query, Verdict, decide, decide_many
from shixin_check.domain.errors import InvalidInput, NotReady, PermissionDenied, RateLimited
from shixin_check.domain.index import IndexSource, ListedMatch, ListView, VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, china_day
from shixin_check.domain.rules import Policy
from shixin_check.server.auth import ANONYMOUS, Gate, Principal
from shixin_check.server.convert import fill_response, not_listed, to_query
from shixin_check.server.hitlog import HitLog

#: The RPCs whose server-side time is kept (``Tally.latency``), by index.
METHODS = ("CheckConsumption", "CheckConsumptionBatch", "CheckConsumptionStream", "GetListStatus")
UNARY, BATCH, STREAM, STATUS = range(len(METHODS))
#: Upper bounds (seconds) of the latency buckets, 50 µs to 1 s; one more bucket
#: past the last holds everything slower (Prometheus's ``+Inf``).
LATENCY_BOUNDS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
#: ``Tally.checks`` holds ``channel * DECISIONS + decision`` (wire enum values).
DECISIONS = max(Decision) + 1
ALLOW = int(Decision.ALLOW)
CHANNELS = max(Channel) + 1
#: gRPC status codes by number (``grpc.StatusCode.X.value[0]``): 0 OK to 16 UNAUTHENTICATED.
STATUS_CODES = 17


class Tally:
    """What one server process has counted since it started: the metrics' raw data.

    One plain object (lists of ints, a dict, ints), so the counts of several
    processes can be summed with ``add`` (``server.metrics``). The hot path
    bumps these in place; nothing here takes a lock.
    """

    __slots__ = (
        "checks", "hits", "refusals", "latency", "latency_sum", "rate_limited",
        "bloom_positives", "bloom_false_positives", "index_lookups", "refusals_unrecorded",
    )  # fmt: skip

    def __init__(self) -> None:
        #: answered checks, at ``channel * DECISIONS + decision``
        self.checks = [0] * (CHANNELS * DECISIONS)
        #: answered checks that matched a listed subject, at ``channel``
        self.hits = [0] * CHANNELS
        #: calls answered with a non-OK status, and stream requests answered with
        #: ``error``, at the status code's number
        self.refusals = [0] * STATUS_CODES
        #: per method: call counts per latency bucket (the last is past every bound)
        self.latency = [[0] * (len(LATENCY_BOUNDS) + 1) for _ in METHODS]
        self.latency_sum = [0.0] * len(METHODS)
        #: refusals for a principal's rate or enumeration throttle, by principal
        self.rate_limited: dict[str, int] = {}
        #: keys the Bloom filter let through to a look-up; those the look-up found
        #: nothing for; look-ups asked of the index (one per check or batch round trip)
        self.bloom_positives = 0
        self.bloom_false_positives = 0
        self.index_lookups = 0
        #: refusals for credentials not written to the audit log one by one, only
        #: counted in a later record (``service.RefusalRecords``)
        self.refusals_unrecorded = 0

    def observe(self, method: int, seconds: float) -> None:
        """One call of ``METHODS[method]`` that took ``seconds`` on the server."""
        self.latency[method][bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum[method] += seconds

    def copy(self) -> Tally:
        """A consistent-enough snapshot (each list copied whole under the GIL)."""
        out = Tally()
        out.add(self)
        return out

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts to these (the sum over worker processes)."""
        for name in ("checks", "hits", "refusals", "latency_sum"):
            mine, theirs = getattr(self, name), list(getattr(other, name))
            for i, n in enumerate(theirs):
                mine[i] += n
        for mine_row, their_row in zip(self.latency, other.latency, strict=True):
            for i, n in enumerate(list(their_row)):
                mine_row[i] += n
        for caller, n in other.rate_limited.copy().items():
            self.rate_limited[caller] = self.rate_limited.get(caller, 0) + n
        self.bloom_positives += other.bloom_positives
        self.bloom_false_positives += other.bloom_false_positives
        self.index_lookups += other.index_lookups
        self.refusals_unrecorded += getattr(other, "refusals_unrecorded", 0)  # older readings


class CountedView:
    """A list view whose look-ups are counted in a ``Tally``; a ``ListView``.

    Every Bloom positive is looked up (``shixin_check.domain.decision``), so the keys
    handed to ``look_up``/``look_up_many`` are the positives, and those found
    in no entry the false positives. ``might_contain`` is the wrapped view's own
    bound method, so the 99% of checks that the filter clears pay nothing.
    """

    __slots__ = ("view", "might_contain", "_tally")

    def __init__(self, view: ListView, tally: Tally) -> None:
        self.view = view
        self.might_contain: Callable[[int], bool] = view.might_contain
        self._tally = tally

    @property
    def info(self) -> VersionInfo:
        return self.view.info

    def look_up(self, key: int) -> Sequence[ListedMatch]:
        tally = self._tally
        tally.bloom_positives += 1
        tally.index_lookups += 1
        found = self.view.look_up(key)
        if not found:
            tally.bloom_false_positives += 1
        return found

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        tally = self._tally
        tally.bloom_positives += len(keys)
        tally.index_lookups += 1
        found = self.view.look_up_many(keys)
        for matches in found:
            if not matches:
                tally.bloom_false_positives += 1
        return found


class CheckEngine:
    """Checks against whatever view the index source holds now, with the hit log and the caller gate.

    ``stale`` is flipped by the server's health watcher once the list is older
    than ``max_list_age`` seconds (``stale_since``); while it is set every
    answer carries ``stale``. Counts go to ``tally``.
    """

    def __init__(
        self,
        source: IndexSource,
        keyer: SubjectKeyer,
        policy: Policy,
        hit_log: HitLog | None = None,
        gate: Gate | None = None,
        tally: Tally | None = None,
        max_list_age: float | None = None,
    ) -> None:
        self.source = source
        self.tally = tally or Tally()
        self._checks = self.tally.checks  # the same list, one attribute look-up less per check
        self._hits = self.tally.hits
        self.max_list_age = max_list_age
        #: set by the server's health watcher while the list is older than
        #: ``max_list_age``: every answer is then marked ``stale``
        self.stale = False
        self.gate = gate or Gate(None)
        self._watching = bool(self.gate.watch.threshold)
        self.keyer = keyer
        self.policy = policy
        self.hit_log = hit_log
        # check ids: unique across processes and restarts without coordination
        self._prefix = secrets.token_hex(4) + "-"
        self._counter = itertools.count(1)

    def new_check_id(self) -> str:
        """A check id in this engine's series, for a call that fails before it is answered.

        ``_answer`` numbers checks the same way, inlined (it is the hot path).
        """
        return f"{self._prefix}{next(self._counter):x}"

    def view(self) -> ListView:
        """The source's current view, its look-ups counted. A wrapper per call (~0.2 µs),
        not one kept per view: kept, it would hold a replaced version in memory."""
        view = self.source.current()
        if view is None:
            raise NotReady("no list loaded yet")
        return CountedView(view, self.tally)

    def stale_since(self, info: VersionInfo) -> float | None:
        """When the list ``info`` describes is (or will be) stale: its feed time plus
        ``max_list_age``; None when no maximum age is set."""
        if self.max_list_age is None:
            return None
        return info.source_timestamp + self.max_list_age

    def query(self, request: pb.CheckRequest, principal: Principal = ANONYMOUS) -> Query:
        """The validated query, if ``principal`` may check its channel."""
        query = to_query(request, self.keyer)
        if principal is not ANONYMOUS:
            principal.require_channel(query.channel)
        return query

    def _answer(
        self, out: pb.CheckResponse, request: pb.CheckRequest, query: Query, verdict: Verdict,
        version: str, peer: str, principal: Principal, decided_at: float,
    ) -> None:  # fmt: skip
        """Number the check, log it if it hit (its record dated ``decided_at``, the time
        its verdict's day was read from), write the answer into ``out``, count it."""
        check_id = f"{self._prefix}{next(self._counter):x}"
        if verdict.matches:
            if self.hit_log is not None:
                self._log_hit(check_id, request, query, verdict, version, peer, principal.name,
                              decided_at)  # fmt: skip
            self._hits[query.channel] += 1
        fill_response(out, request.request_id, check_id, verdict, version)
        if self.stale:  # rare: a fresh answer pays one test
            out.stale = True
        self._checks[query.channel * DECISIONS + verdict.decision] += 1

    def check(
        self, request: pb.CheckRequest, view: ListView | None, peer: str = "",
        principal: Principal = ANONYMOUS,
    ) -> pb.CheckResponse:  # fmt: skip
        """Answer one validated-on-the-way request against ``view`` for ``principal``.

        In this order, so that a refusal costs the caller nothing it need not:
        the request is validated and its channel held to the caller's scope
        (``InvalidInput``, ``PermissionDenied``); then, with ``view`` None, the
        source's current view is taken (``NotReady`` when there is none); then
        the caller's rate is charged one token (``RateLimited``), given back if the
        enumeration watch then throttles the caller (``ENUMERATION_THROTTLED``).
        """
        query = self.query(request, principal)
        if view is None:
            view = self.view()
        if principal.rate_per_second:
            self.gate.charge(principal, 1)
        if self._watching:
            try:
                self.gate.observe(principal, query.subject_key)
            except RateLimited:  # throttled: only checks that pass are charged
                self.gate.refund(principal, 1)
                raise
        now = time.time()
        verdict = decide(view, query, self.keyer, self.policy, china_day(now))
        out = pb.CheckResponse()
        self._answer(out, request, query, verdict, view.info.version, peer, principal, now)
        return out

    def check_many(
        self, requests: Sequence[pb.CheckRequest], view: ListView | None, out: Any,
        peer: str = "", principal: Principal = ANONYMOUS,
    ) -> tuple[list[Query], list[Verdict]]:  # fmt: skip
        """A batch against one view, answers added to ``out`` (a repeated CheckResponse
        field); a bad request is ``InvalidInput`` under ``checks[i]`` and adds nothing.

        The order of ``check``: every request validated and in scope, then the
        view (the current one when ``view`` is None), then the rate charged one
        token per check (an empty batch one), given back if the enumeration watch
        throttles the caller. The queries and their verdicts are returned (the
        audit record's masked subjects and outcomes).
        """
        keyer = self.keyer
        try:
            queries = [to_query(request, keyer) for request in requests]
            if principal is not ANONYMOUS:
                for query in queries:
                    principal.require_channel(query.channel)
        except (InvalidInput, PermissionDenied):
            self._refuse_first(requests, principal)
        if view is None:
            view = self.view()
        if principal.rate_per_second:
            self.gate.charge(principal, len(requests) or 1)
        if self._watching:
            try:
                for query in queries:
                    self.gate.observe(principal, query.subject_key)
            except RateLimited:  # throttled: only checks that pass are charged
                self.gate.refund(principal, len(requests) or 1)
                raise
        now = time.time()
        verdicts = decide_many(view, queries, keyer, self.policy, china_day(now))
        version = view.info.version
        add = out.add
        if self.stale:
            for request, query, verdict in zip(requests, queries, verdicts, strict=True):
                self._answer(add(), request, query, verdict, version, peer, principal, now)
            return queries, verdicts
        # The answer nearly every check gets, inlined: the template copied, two strings set.
        template = not_listed(version)
        prefix, counter, checks = self._prefix, self._counter, self._checks
        for request, query, verdict in zip(requests, queries, verdicts, strict=True):
            if verdict is VERDICT_NOT_LISTED:
                answer = add()
                answer.CopyFrom(template)
                answer.request_id = request.request_id
                answer.check_id = f"{prefix}{next(counter):x}"
                checks[query.channel * DECISIONS + ALLOW] += 1
            else:
                self._answer(add(), request, query, verdict, version, peer, principal, now)
        return queries, verdicts

    def withdraw(self, request: pb.CheckRequest, answer: pb.CheckResponse) -> None:
        """Uncount an answer that never left the server (its audit record, or a later
        hit record of its batch, could not be written): the counts are of checks
        answered."""
        channel = request.channel
        self._checks[channel * DECISIONS + answer.decision] -= 1
        if answer.matches:
            self._hits[channel] -= 1

    def _refuse_first(self, requests: Sequence[pb.CheckRequest], principal: Principal) -> NoReturn:
        """The refusal of a batch's first bad check, its field under ``checks[i]``."""
        for i, request in enumerate(requests):
            try:
                self.query(request, principal)
            except InvalidInput as exc:
                raise exc.under(f"checks[{i}]") from None
            except PermissionDenied as exc:
                raise PermissionDenied(f"checks[{i}]: {exc}").with_reason(exc.reason) from None
        raise AssertionError("a batch refused with no bad check")

    def _log_hit(
        self,
        check_id: str,
        request: pb.CheckRequest,
        query: Query,
        verdict: Verdict,
        version: str,
        peer: str,
        caller: str,
        decided_at: float,
    ) -> None:
        assert self.hit_log is not None
        self.hit_log.record(
            check_id,
            request.request_id,
            query,
            verdict,
            version,
            request.merchant_id,
            request.terminal_id,
            peer,
            caller=caller,
            at=decided_at,
        )
