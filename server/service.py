"""The ``shixin.v1.ConsumptionCheck`` servicer: converts, delegates, maps errors.

Every failure leaves as a gRPC status with a message naming the field
(``server/status.py``); an unexpected exception is INTERNAL and the server
keeps serving. A batch or stream uses one list version for each check it
answers; a batch takes one view for all its checks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

from server.engine import CheckEngine
from server.hitlog import AuditLog
from server.status import status_of
from shixin_domain.errors import InvalidInput, ShixinError
from shixin_domain.identity import mask_id
from shixin_domain.rules import Policy

_INTERNAL = "internal error; the check was not decided"


def _subject_of(request: pb.CheckRequest) -> str:
    """Masked subject for the audit log."""
    which = request.WhichOneof("subject")
    if which == "person":
        return mask_id(request.person.id_number.strip())
    if which == "organization":
        return mask_id(request.organization.uscc.strip())
    return ""


class ConsumptionCheckService(pb_grpc.ConsumptionCheckServicer):
    def __init__(
        self,
        engine: CheckEngine,
        policy: Policy,
        audit: AuditLog | None = None,
        max_batch: int = 1000,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.audit = audit
        self.max_batch = max_batch
        self._peers = engine.hit_log is not None or audit is not None

    async def _fail(
        self, context: grpc.aio.ServicerContext, exc: BaseException, method: str,
        subject: str, started: float, prefix: str = "",
    ) -> NoReturn:  # fmt: skip
        if isinstance(exc, ShixinError):
            code, message = status_of(exc), prefix + str(exc)
        else:
            code, message = grpc.StatusCode.INTERNAL, _INTERNAL
        if self.audit is not None:
            self.audit.record(method, context.peer(), subject, code.name, started)
        await context.abort(code, message)

    async def CheckConsumption(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        started = time.perf_counter()
        try:
            engine = self.engine
            response = engine.check(request, engine.view(), context.peer() if self._peers else "")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            await self._fail(context, exc, "CheckConsumption", _subject_of(request), started)
        if self.audit is not None:
            self.audit.record(
                "CheckConsumption", context.peer(), _subject_of(request),
                pb.Decision.Name(response.decision), started,
            )  # fmt: skip
        return response

    async def CheckConsumptionBatch(
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        started = time.perf_counter()
        checks = request.checks
        try:
            if len(checks) > self.max_batch:
                raise InvalidInput(
                    "checks", f"at most {self.max_batch} checks per batch, got {len(checks)}"
                )
            engine = self.engine
            peer = context.peer() if self._peers else ""
            results = engine.check_many(checks, engine.view(), peer)
        except Exception as exc:  # noqa: BLE001
            await self._fail(context, exc, "CheckConsumptionBatch", "", started)
        if self.audit is not None:
            self.audit.record(
                "CheckConsumptionBatch", context.peer(), "", "OK", started, len(checks)
            )
        return pb.CheckBatchResponse(results=results)

    async def CheckConsumptionStream(
        self, request_iterator: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CheckResponse]:
        engine = self.engine
        peer = context.peer() if self._peers else ""
        async for request in request_iterator:
            started = time.perf_counter()
            try:
                response = engine.check(request, engine.view(), peer)
            except Exception as exc:  # noqa: BLE001
                prefix = f"request_id {request.request_id!r}: " if request.request_id else ""
                await self._fail(
                    context, exc, "CheckConsumptionStream", _subject_of(request), started, prefix
                )
            if self.audit is not None:
                self.audit.record(
                    "CheckConsumptionStream", peer, _subject_of(request),
                    pb.Decision.Name(response.decision), started,
                )  # fmt: skip
            yield response

    async def GetListStatus(
        self, request: pb.ListStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStatus:
        return list_status(self.engine, self.policy)


def _rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix)) if unix else ""


def list_status(engine: CheckEngine, policy: Policy) -> pb.ListStatus:
    """What GetListStatus and ``shixin-check status`` report."""
    status = pb.ListStatus(
        policy=[pb.PolicyParameter(name=n, value=v, description=d) for n, v, d in policy.describe()]
    )
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
    status.staleness_seconds = max(0, int(time.time() - info.source_timestamp))
    status.last_delta_seq = info.last_delta_seq
    status.entries_total = info.counts.total
    status.subject_keys = info.counts.subject_keys
    for list_type, entry_status, n in info.counts.by_type_status:
        status.counts.add(list_type=list_type.name, status=entry_status.name, entries=n)
    return status
