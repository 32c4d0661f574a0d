"""Limits on every field and on the whole message, through a real server.

Every string field has a maximum length (``server.convert.MAX_CHARS``; the
proto and the README list them), refused as INVALID_ARGUMENT naming the
field, reason FIELD_TOO_LONG. A message over 4 MiB (``server.app.MAX_MESSAGE_BYTES``)
is refused by grpc itself, before the service sees it: RESOURCE_EXHAUSTED with
grpc's own message and no details, and the server goes on serving.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.wire import MAX_CHARS
from shixin_check.server.app import MAX_MESSAGE_BYTES
from tests.conftest import RunningServer
from tests.listdata import ACME_USCC, ZHAO, basic_rows, write_jsonl

Serve = Callable[..., RunningServer]
#: What grpc core answers for a request over the server's receive limit.
OVERSIZE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.conftest import settings_for, start_server

    folder: Path = tmp_path_factory.mktemp("limits")
    handle = start_server(settings_for(write_jsonl(folder / "l.jsonl", basic_rows())))
    yield handle
    handle.stop()


def person(**fields: object) -> pb.CheckRequest:
    """A valid flight check for Zhao (unlisted), with ``fields`` set by their path."""
    request = build_request("AIRLINE", id_number=ZHAO, name="赵六")
    for path, value in fields.items():
        *parents, last = path.split(".")
        target = request
        for part in parents:
            target = getattr(target, part)
        setattr(target, last, value)
    return request


def organization(**fields: object) -> pb.CheckRequest:
    request = build_request("AIRLINE", uscc=ACME_USCC, name="北京艾克米科技有限公司")
    for name, value in fields.items():
        setattr(request.organization, name, value)
    return request


def over(field: str) -> pb.CheckRequest:
    """A request whose ``field`` is one character over its limit."""
    value = "1" * (MAX_CHARS[field] + 1)
    if field.startswith("subject.organization."):
        return organization(**{field.rsplit(".", 1)[1]: value})
    if field == "purchase.rail.train_number":
        return build_request(
            "RAIL", id_number=ZHAO, purchase={"train_number": value, "seat": "HARD_SEAT"}
        )
    path = field.removeprefix("subject.").replace("purchase.flight.", "flight.")
    return person(**{path: value})


def test_a_200000_character_name_is_refused_naming_the_field(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumption(person(**{"person.name": "张" * 200_000}))
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "subject.person.name: is 200000 characters long; at most 128 are accepted"
    )
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "FIELD_TOO_LONG"


@pytest.mark.parametrize("field", sorted(MAX_CHARS))
def test_every_string_field_has_a_limit(server: RunningServer, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumption(over(field))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: is {MAX_CHARS[field] + 1} characters long")


def test_values_at_their_limit_are_accepted(server: RunningServer) -> None:
    at_limit = person(**{
        "request_id": "r" * MAX_CHARS["request_id"],
        "merchant_id": "m" * MAX_CHARS["merchant_id"],
        "terminal_id": "t" * MAX_CHARS["terminal_id"],
        "person.name": "赵" * MAX_CHARS["subject.person.name"],
        "person.id_number": ZHAO.center(MAX_CHARS["subject.person.id_number"]),  # spaces ignored
        "flight.flight_number": "C" * MAX_CHARS["purchase.flight.flight_number"],
        "flight.cabin": "Y" * MAX_CHARS["purchase.flight.cabin"],
    })  # fmt: skip
    answer = server.stub().CheckConsumption(at_limit)
    assert (answer.decision, answer.request_id) == (pb.ALLOW, "r" * 128)
    org = organization(name="公" * MAX_CHARS["subject.organization.name"],
                       uscc=ACME_USCC.center(MAX_CHARS["subject.organization.uscc"]))  # fmt: skip
    assert server.stub().CheckConsumption(org).decision == pb.REVIEW  # ACME, another name


def test_a_thousand_checks_at_every_limit_fit_in_one_message(server: RunningServer) -> None:
    biggest = person(**{
        "request_id": "r" * 128, "merchant_id": "m" * 64, "terminal_id": "t" * 64,
        "person.name": "赵" * 128, "person.id_number": ZHAO.center(64),
        "flight.flight_number": "C" * 16, "flight.cabin": "Y" * 32,
    })  # fmt: skip
    batch = pb.CheckBatchRequest(checks=[biggest] * 1000)
    assert batch.ByteSize() < MAX_MESSAGE_BYTES
    assert len(server.stub().CheckConsumptionBatch(batch).results) == 1000


def oversize() -> pb.CheckRequest:
    return person(**{"person.name": "x" * (MAX_MESSAGE_BYTES + 1)})


def assert_too_large(error: grpc.RpcError) -> None:
    """grpc's own refusal: RESOURCE_EXHAUSTED, the sizes in the message, no details."""
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = OVERSIZE.search(error.details())
    assert found is not None, error.details()
    assert int(found.group(1)) > MAX_MESSAGE_BYTES and int(found.group(2)) == MAX_MESSAGE_BYTES
    assert rpc_status.from_call(error) is None  # answered before the service saw it


def test_a_message_over_4_mib_is_refused_clearly(server: RunningServer) -> None:
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.CheckConsumption(oversize())
    assert_too_large(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=[oversize()]))
    assert_too_large(caught.value)
    assert stub.CheckConsumption(person()).decision == pb.ALLOW  # still serving


def test_a_message_over_4_mib_ends_a_stream(server: RunningServer) -> None:
    answers = server.stub().CheckConsumptionStream(
        iter([person(request_id="r-1"), oversize(), person(request_id="r-3")]), timeout=10
    )
    assert next(answers).request_id == "r-1"
    with pytest.raises(grpc.RpcError) as caught:
        next(answers)
    assert_too_large(caught.value)
    [fresh] = server.stub().CheckConsumptionStream(iter([person(request_id="r-4")]))
    assert (fresh.request_id, fresh.decision) == ("r-4", pb.ALLOW)
