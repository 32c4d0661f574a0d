"""The conversion's reuse of validated purchases (``server/convert.py``): same answers, bounded."""

from __future__ import annotations

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.decision import decide
from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision
from shixin_check.domain.rules import PURCHASE_OF_CHANNEL, Flight, RailSeat, RailTicket
from shixin_check.domain.wire import PURCHASE_FIELD
from shixin_check.loader.synthetic import never_listed_id
from shixin_check.server import convert
from tests.listdata import rid, uscc
from tests.test_decision import POLICY, TODAY, FakeView, listed

KEYER = SubjectKeyer(b"test-secret-for-convert-0123456789")


def rail(train: str, seat: str = "SECOND_CLASS") -> pb.CheckRequest:
    return build_request(
        "RAIL", id_number=never_listed_id(), purchase={"train_number": train, "seat": seat}
    )


def flight(number: str, cabin: str = "Y") -> pb.CheckRequest:
    return build_request(
        "AIRLINE", id_number=never_listed_id(), purchase={"flight_number": number, "cabin": cabin}
    )


@pytest.fixture(autouse=True)
def empty_caches() -> None:
    convert._TICKETS.clear()
    convert._FLIGHTS.clear()


def test_a_reused_ticket_is_the_one_first_built() -> None:
    first = convert.to_query(rail("g 1234"), KEYER)
    again = convert.to_query(rail("g 1234"), KEYER)
    assert first.purchase == again.purchase == RailTicket("G1234", RailSeat.SECOND_CLASS)
    assert first == again


def test_the_seat_is_part_of_what_is_reused() -> None:
    second = convert.to_query(rail("D301", "SECOND_CLASS"), KEYER)
    first = convert.to_query(rail("D301", "FIRST_CLASS"), KEYER)
    assert second.purchase.seat is RailSeat.SECOND_CLASS  # type: ignore[union-attr]
    assert first.purchase.seat is RailSeat.FIRST_CLASS  # type: ignore[union-attr]


@pytest.mark.parametrize("train", ["X99", "G12345", "", "G1" * 20])
def test_a_bad_train_number_is_refused_every_time(train: str) -> None:
    convert.to_query(rail("G1234"), KEYER)
    for _ in range(2):
        with pytest.raises(InvalidInput) as caught:
            convert.to_query(rail(train), KEYER)
        assert caught.value.field == "purchase.rail.train_number"
    assert all(key[1] != train for key in convert._TICKETS)


def test_a_missing_seat_is_refused_after_the_same_train_was_sold() -> None:
    convert.to_query(rail("G1234"), KEYER)
    no_seat = rail("G1234")
    no_seat.rail.ClearField("seat")
    with pytest.raises(InvalidInput) as caught:
        convert.to_query(no_seat, KEYER)
    assert caught.value.field == "purchase.rail.seat"


def test_flights_are_normalised_once_and_bad_ones_refused() -> None:
    for _ in range(2):
        query = convert.to_query(flight(" mu5101 ", "y"), KEYER)
        assert query.purchase == Flight("MU5101", "Y")
        with pytest.raises(InvalidInput) as caught:
            convert.to_query(flight("MU" * 20), KEYER)
        assert caught.value.field == "purchase.flight.flight_number"


def test_what_is_kept_stays_bounded_whatever_is_sent() -> None:
    numbers = [f"{letter}{n}" for letter in "GDK" for n in range(1, 4000)]
    for train in numbers:
        convert.to_query(rail(train), KEYER)
        assert len(convert._TICKETS) <= convert._TICKETS_MAX
    # still right after the clear: the last trains and an early one again
    assert convert.to_query(rail(numbers[-1]), KEYER).purchase.train_number == numbers[-1]  # type: ignore[union-attr]
    assert convert.to_query(rail(numbers[0]), KEYER).purchase.train_number == numbers[0]  # type: ignore[union-attr]


def a_purchase_of(channel: Channel) -> pb.CheckRequest:
    """A request of ``channel`` whose purchase has every enum set and plausible values."""
    request = build_request(channel.name, id_number=never_listed_id())
    request.amount_fen = 100_000
    message = getattr(request, PURCHASE_FIELD[channel])
    message.SetInParent()
    for field in message.DESCRIPTOR.fields:
        if field.enum_type is not None:
            setattr(message, field.name, field.enum_type.values[-1].number)
        elif field.type == field.TYPE_INT32:
            setattr(message, field.name, 3)
    if channel is Channel.RAIL:
        message.train_number = "G1234"
    elif channel is Channel.AIRLINE:
        message.flight_number, message.cabin = "CA1234", "Y"
    return request


@pytest.mark.parametrize("channel", list(Channel), ids=lambda c: c.name)
def test_each_purchase_field_makes_its_channels_purchase(channel: Channel) -> None:
    # to_query checks the purchase field against the channel and leaves the purchase's
    # type to its converter (no second check on the hot path): each must make its own
    query = convert.to_query(a_purchase_of(channel), KEYER)
    assert type(query.purchase) is PURCHASE_OF_CHANNEL[channel]
    assert query.channel is channel


# --- the keys of a number under a document type ----------------------------------

#: A resident ID (region 911101, born 1980-01-01) that is a well-formed USCC too.
BOTH = rid("91110119800101024")


def air(number: str, id_type: str) -> pb.CheckRequest:
    return build_request(
        "AIRLINE", id_number=number, id_type=id_type,
        purchase={"flight_number": "CA1234", "cabin": "Y"},
    )  # fmt: skip


@pytest.mark.parametrize("id_type", ["PASSPORT", "HK_MACAO_PERMIT"])
def test_a_listing_under_any_reading_of_the_number_is_found(id_type: str) -> None:
    """A number that is a resident ID and a USCC at once, sent under a document
    type, is looked up as given, as the resident ID and as the organisation: a
    listing under any one of the three is found."""
    assert BOTH == uscc("91110119800101024")
    query = convert.to_query(air(BOTH, id_type), KEYER)
    for kind in (IdType[id_type], IdType.RESIDENT_ID, None):
        view = FakeView({KEYER.subject_key(kind, BOTH): [listed()]})
        verdict = decide(view, query, KEYER, POLICY, TODAY)
        assert verdict.decision is Decision.DENY, kind


def test_a_number_with_one_reading_or_none_carries_that_many_more_keys() -> None:
    """The extra keys cost nothing where there are none; a resident ID sent as one
    carries the USCC key only when it is a well-formed USCC too."""
    assert convert.to_query(air(BOTH, "RESIDENT_ID"), KEYER).also_keys == (
        KEYER.subject_key(None, BOTH),
    )
    assert convert.to_query(air(never_listed_id(), "RESIDENT_ID"), KEYER).also_keys in (
        (), (KEYER.subject_key(None, never_listed_id()),),
    )  # fmt: skip
    permits = (IdType.HK_MACAO_PERMIT, IdType.TAIWAN_PERMIT, IdType.FOREIGN_PERMANENT_RESIDENT)
    # a document number: under every other document type too (a mistyped type)
    assert convert.to_query(air("E12345678", "PASSPORT"), KEYER).also_keys == tuple(
        KEYER.subject_key(kind, "E12345678") for kind in permits
    )
    resident = never_listed_id()
    also = convert.to_query(air(resident, "PASSPORT"), KEYER).also_keys
    assert also[:-3] in (
        (KEYER.subject_key(IdType.RESIDENT_ID, resident),),
        (KEYER.subject_key(IdType.RESIDENT_ID, resident), KEYER.subject_key(None, resident)),
    )  # one resident ID in 31 is a well-formed USCC too
    assert also[-3:] == tuple(KEYER.subject_key(kind, resident) for kind in permits)
