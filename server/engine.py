"""One check from wire request to wire answer: convert, decide, log the hit.

The servicer calls this and nothing else; it holds no policy of its own
(that is ``shixin_domain.decision``). This is the hot path: no logging
calls, no locks, one index view per check.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Sequence
from typing import Any

from server.auth import ANONYMOUS, Gate, Principal
from server.convert import fill_response, to_query
from server.hitlog import HitLog
from shixin.v1 import check_pb2 as pb
from shixin_domain.decision import Query, Verdict, decide, decide_many
from shixin_domain.errors import InvalidInput, NotReady, PermissionDenied
from shixin_domain.index import IndexSource, ListView
from shixin_domain.keys import SubjectKeyer
from shixin_domain.model import china_day
from shixin_domain.rules import Policy


class CheckEngine:
    """Checks against whatever view the index source holds now, with the hit log and the caller gate."""

    def __init__(
        self,
        source: IndexSource,
        keyer: SubjectKeyer,
        policy: Policy,
        hit_log: HitLog | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.source = source
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
        view = self.source.current()
        if view is None:
            raise NotReady("no list loaded yet")
        return view

    def query(self, request: pb.CheckRequest, principal: Principal = ANONYMOUS) -> Query:
        """The validated query, if ``principal`` may check its channel."""
        query = to_query(request, self.keyer)
        if principal is not ANONYMOUS:
            principal.require_channel(query.channel)
        return query

    def _answer(
        self, out: pb.CheckResponse, request: pb.CheckRequest, query: Query, verdict: Verdict,
        version: str, peer: str, principal: Principal,
    ) -> None:  # fmt: skip
        """Number the check, log it if it hit, and write the answer into ``out``."""
        check_id = f"{self._prefix}{next(self._counter):x}"
        if verdict.matches and self.hit_log is not None:
            self._log_hit(check_id, request, query, verdict, version, peer, principal.name)
        fill_response(out, request.request_id, check_id, verdict, version)

    def check(
        self, request: pb.CheckRequest, view: ListView, peer: str = "",
        principal: Principal = ANONYMOUS,
    ) -> pb.CheckResponse:  # fmt: skip
        """Answer one validated-on-the-way request against ``view`` for ``principal``."""
        query = self.query(request, principal)
        if self._watching:
            self.gate.observe(principal, query.subject_key)
        verdict = decide(view, query, self.keyer, self.policy, china_day(time.time()))
        out = pb.CheckResponse()
        self._answer(out, request, query, verdict, view.info.version, peer, principal)
        return out

    def check_many(
        self, requests: Sequence[pb.CheckRequest], view: ListView, out: Any, peer: str = "",
        principal: Principal = ANONYMOUS,
    ) -> None:  # fmt: skip
        """A batch against one view, answers added to ``out`` (a repeated CheckResponse
        field); a bad request is ``InvalidInput`` under ``checks[i]`` and adds nothing."""
        queries = []
        for i, request in enumerate(requests):
            try:
                queries.append(self.query(request, principal))
            except InvalidInput as exc:
                raise exc.under(f"checks[{i}]") from None
            except PermissionDenied as exc:
                raise PermissionDenied(f"checks[{i}]: {exc}").with_reason(exc.reason) from None
        if self._watching:
            for query in queries:
                self.gate.observe(principal, query.subject_key)
        verdicts = decide_many(view, queries, self.keyer, self.policy, china_day(time.time()))
        version = view.info.version
        add = out.add
        for request, query, verdict in zip(requests, queries, verdicts, strict=True):
            self._answer(add(), request, query, verdict, version, peer, principal)

    def _log_hit(
        self,
        check_id: str,
        request: pb.CheckRequest,
        query: Query,
        verdict: Verdict,
        version: str,
        peer: str,
        caller: str,
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
        )
