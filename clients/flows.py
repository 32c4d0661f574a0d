"""Booking flows as checks: who is checked, for what, one request per person.

Each helper returns the requests of one booking in the order of the people
given, ready for ``client.check_batch`` (one answer per person, in order).
``booking_id`` becomes each request's ``request_id`` as ``<booking_id>/<n>``
(n from 1) so answers and the hit log can be joined back to the booking.

- ``rail_order``: every passenger of a train order, each with a seat;
- ``airline_pnr``: every passenger on a booking (PNR) for a flight;
- ``hotel_checkin``: every guest registering at a hotel of a star rating;
- ``school_enrolment``: the parents or whoever pays the fees; never the child,
  who is not the one restricted (a listed parent may not pay for a high-fee
  private school).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request


class Person(NamedTuple):
    """Whoever a check is about. A plain ``(id_number, name)`` pair works too."""

    id_number: str
    name: str
    id_type: str = "RESIDENT_ID"


class RailPassenger(NamedTuple):
    """A rail passenger and the seat sold; a plain ``(id_number, name, seat)`` works too."""

    id_number: str
    name: str
    seat: str
    id_type: str = "RESIDENT_ID"


PersonLike = Person | tuple[str, str] | tuple[str, str, str]
PassengerLike = RailPassenger | tuple[str, str, str] | tuple[str, str, str, str]


def _requests(
    channel: str,
    people: Iterable[tuple[Person, dict[str, Any]]],
    booking_id: str,
    merchant_id: str,
    terminal_id: str,
) -> list[pb.CheckRequest]:
    return [
        build_request(
            channel,
            id_number=person.id_number,
            name=person.name,
            id_type=person.id_type,
            purchase=purchase,
            request_id=f"{booking_id}/{n}" if booking_id else "",
            merchant_id=merchant_id,
            terminal_id=terminal_id,
        )
        for n, (person, purchase) in enumerate(people, 1)
    ]


def rail_order(
    passengers: Iterable[PassengerLike],
    train: str,
    *,
    booking_id: str = "",
    merchant_id: str = "",
    terminal_id: str = "",
) -> list[pb.CheckRequest]:
    """One RAIL check per passenger of an order on ``train`` (``"G1234"``), each with
    its seat by name (``"SECOND_CLASS"``, ``"SOFT_SLEEPER"``, ...)."""
    people = []
    for passenger in passengers:
        p = RailPassenger(*passenger)
        people.append(
            (Person(p.id_number, p.name, p.id_type), {"train_number": train, "seat": p.seat})
        )
    return _requests("RAIL", people, booking_id, merchant_id, terminal_id)


def airline_pnr(
    passengers: Iterable[PersonLike],
    flight: str,
    *,
    cabin: str = "",
    booking_id: str = "",
    merchant_id: str = "",
    terminal_id: str = "",
) -> list[pb.CheckRequest]:
    """One AIRLINE check per passenger of a booking (PNR) on ``flight``; use the PNR
    as ``booking_id``. Any cabin of any flight is restricted for a listed person."""
    purchase = {"flight_number": flight, "cabin": cabin}
    people = [(Person(*p), purchase) for p in passengers]
    return _requests("AIRLINE", people, booking_id, merchant_id, terminal_id)


def hotel_checkin(
    guests: Iterable[PersonLike],
    star_rating: int,
    *,
    high_end: bool = False,
    booking_id: str = "",
    merchant_id: str = "",
    terminal_id: str = "",
) -> list[pb.CheckRequest]:
    """One HOTEL check per guest registering at a hotel of ``star_rating`` (0 for
    unrated, 1 to 5); ``high_end`` for high-end lodging whatever its stars."""
    purchase = {"star_rating": star_rating, "high_end": high_end}
    people = [(Person(*g), purchase) for g in guests]
    return _requests("HOTEL", people, booking_id, merchant_id, terminal_id)


def school_enrolment(
    payers: Iterable[PersonLike],
    *,
    private_school: bool,
    high_fee: bool,
    booking_id: str = "",
    merchant_id: str = "",
    terminal_id: str = "",
) -> list[pb.CheckRequest]:
    """One SCHOOL check per parent or payer of an enrolment: the people who pay the
    fees are the subjects, not the child being enrolled."""
    purchase = {"private_school": private_school, "high_fee": high_fee}
    people = [(Person(*p), purchase) for p in payers]
    return _requests("SCHOOL", people, booking_id, merchant_id, terminal_id)
