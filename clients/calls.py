"""What both clients do around their calls: batches of the server's size, request
ids on a stream, the size check before sending, and batch errors named from the
caller's first request."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.channel import MAX_MESSAGE_BYTES
from shixin_check.clients.errors import CheckError, ErrorDetails, from_info


def batches(requests: Iterable[pb.CheckRequest], size: int) -> Iterator[list[pb.CheckRequest]]:
    """``requests`` in order, ``size`` at a time (the last batch may be shorter)."""
    batch: list[pb.CheckRequest] = []
    for request in requests:
        batch.append(request)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class RequestIds:
    """Gives each request without a request_id one unique on its stream.

    Given ids are kept; the ones made here (``<8 hex>-<position>``, from 1)
    cannot collide with them. The caller's messages are never changed: a
    request without an id is copied.
    """

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:8]
        self.position = 0

    def __call__(self, request: pb.CheckRequest) -> pb.CheckRequest:
        self.position += 1
        if request.request_id:
            return request
        copy = pb.CheckRequest()
        copy.CopyFrom(request)
        copy.request_id = f"{self.prefix}-{self.position}"
        return copy


def with_request_ids(requests: Iterable[pb.CheckRequest]) -> Iterator[pb.CheckRequest]:
    """Each request, with a request_id where it had none (``RequestIds``)."""
    return map(RequestIds(), requests)


def refuse_oversize(message: Any) -> None:
    """Raise ``LimitExceeded`` for a message the server would refuse for its size.

    grpc refuses it with a RESOURCE_EXHAUSTED that a retry policy would send
    again; here it costs nothing and is never retried.
    """
    size = message.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        raise from_info(
            ErrorDetails(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is {size} bytes; the server takes at most {MAX_MESSAGE_BYTES}",
                reason="MESSAGE_TOO_LARGE",
            )
        )


_BATCH_INDEX = re.compile(r"^checks\[(\d+)\]")


def shifted(error: CheckError, offset: int) -> CheckError:
    """``error`` of a batch call that began at check ``offset`` of the caller's list,
    with ``checks[i]`` in its message and fields renamed ``checks[offset + i]``."""
    if offset == 0:
        return error

    def move(text: str) -> str:
        return _BATCH_INDEX.sub(lambda m: f"checks[{int(m.group(1)) + offset}]", text)

    info = dataclasses.replace(
        error.info,
        message=move(error.info.message),
        field_violations=[(move(f), problem) for f, problem in error.info.field_violations],
    )
    return error.with_info(info)
