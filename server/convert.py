"""Wire types to domain types and back: the only module that knows both.

Requests are validated here as they are converted: every problem is an
``InvalidInput`` naming the request field (``subject.person.id_number``,
``purchase.rail.seat``) so the caller can fix exactly that. Every string
field has a maximum length (``MAX_CHARS``, checked before anything reads the
value; reason ``FIELD_TOO_LONG``), request_id, merchant_id and terminal_id hold
no control or format character (``unseen_kind``), and a stream's request_ids are
checked by ``StreamIds``.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.decision import (
    NOT_LISTED,
    VERDICT_NOT_LISTED,
    MatchOutcome,
    Query,
    Verdict,
)
from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.identity import (
    IdType,
    normalize_person_id,
    normalize_resident_id,
    normalize_uscc,
    other_readings,
    permit_card,
    reads_as_resident_id,
    refuse_controls,
    refuse_misread,
    resident_id_is_uscc,
)
from shixin_check.domain.keys import IdentityKeyer
from shixin_check.domain.model import NO_END, day_iso
from shixin_check.domain.rules import (
    Flight,
    HotelStay,
    InsurancePolicy,
    LeisureVenue,
    LeisureVisit,
    OfficeRental,
    Purchase,
    RailSeat,
    RailTicket,
    RealEstateDeal,
    RealEstateKind,
    Reason,
    SchoolEnrolment,
    ShipPassage,
    TravelBooking,
    TravelService,
    VehicleSale,
    normalize_train_number,
    validate_purchase,
)
from shixin_check.domain.wire import (
    CHANNELS,
    ID_TYPES,
    MAX_CABIN,
    MAX_CHARS,
    MAX_FLIGHT,
    MAX_ID,
    MAX_NAME,
    MAX_ORG_NAME,
    MAX_REQUEST_ID,
    MAX_TERMINAL,
    MAX_TRAIN,
    PURCHASE_FIELD,
)

FIELD_TOO_LONG = "FIELD_TOO_LONG"
REQUEST_ID_MISSING = "REQUEST_ID_MISSING"
REQUEST_ID_DUPLICATE = "REQUEST_ID_DUPLICATE"
#: How many earlier request_ids of a stream a new one must differ from.
STREAM_ID_WINDOW = 1024
#: Which readings of a request's identity ``to_query`` looks up: bump it whenever they
#: change. GetPrefilter's header carries it (``lookup_rules``), and an offline client
#: whose own is lower answers nothing locally, since it would test fewer keys than the
#: server looks up. 0: what clients before the header field know (the number as given,
#: a resident ID or USCC it plainly is under a document type, every document type, a
#: resident ID that is a USCC too also as the organisation). 1: a USCC that is a valid
#: resident ID too is also looked up as that resident ID. 2: a Home Return Permit number
#: in its old form (``H``/``M`` and ten digits) is also looked up as the card number it
#: begins with (``identity.permit_card``). 3: a Taiwan permit number in its old form
#: (ten digits) is also looked up as the card number it begins with (eight digits).
LOOKUP_RULES = 3


def _too_long(field: str, value: str) -> NoReturn:
    raise InvalidInput(
        field, f"is {len(value)} characters long; at most {MAX_CHARS[field]} are accepted"
    ).with_reason(FIELD_TOO_LONG)


def _bounded(value: str, limit: int, field: str) -> str:
    if len(value) > limit:
        _too_long(field, value)
    return value


class StreamIds:
    """The request_ids of one stream's last ``window`` requests: each new one must differ.

    A gateway matches answers to requests by request_id, so on a stream it is
    required and may not repeat while an earlier use could still be waiting to
    be matched; a request refused with ``error`` has been answered, so its id may
    be sent again (``release``). The stream answers in order, one request at a time, so "still
    waiting" is bounded by what the gateway keeps in flight: the last 1,024
    ids cover any sane window, and memory stays bounded on a long-lived stream.
    """

    __slots__ = ("_order", "_seen")

    def __init__(self, window: int = STREAM_ID_WINDOW) -> None:
        self._order: deque[str] = deque(maxlen=window)
        self._seen: set[str] = set()

    def admit(self, request_id: str) -> None:
        """Record ``request_id``, or ``InvalidInput`` if it is missing, too long or in use."""
        if not request_id:
            raise InvalidInput(
                "request_id", "is required on a stream: every answer carries its request's id"
            ).with_reason(REQUEST_ID_MISSING)
        if len(request_id) > MAX_REQUEST_ID:
            _too_long("request_id", request_id)
        if request_id in self._seen:
            raise InvalidInput(
                "request_id",
                f"{request_id!r} is already in use on this stream (it must differ from the "
                f"request_ids of the last {self._order.maxlen} requests)",
            ).with_reason(REQUEST_ID_DUPLICATE)
        order = self._order
        if len(order) == order.maxlen:
            self._seen.discard(order[0])
        order.append(request_id)
        self._seen.add(request_id)

    def release(self, request_id: str) -> None:
        """Forget ``request_id``, the last one admitted: its request was refused (a bad
        field, the rate, the scope) and answered so, so the gateway may send it again,
        corrected or after the wait, under the id its booking knows it by."""
        order = self._order
        if order and order[-1] == request_id:
            order.pop()
            self._seen.discard(request_id)


_RESIDENT_ID = IdType.RESIDENT_ID  # a global, not an enum attribute look-up, on every check
#: each document type (every id type but the resident ID): the others
_OTHER_DOCUMENTS: dict[IdType, tuple[IdType, ...]] = {
    kind: tuple(other for other in IdType if other not in (kind, IdType.RESIDENT_ID))
    for kind in IdType
    if kind is not IdType.RESIDENT_ID
}


def _enum(table: dict[int, Any], value: int, field: str, what: str) -> Any:
    found = table.get(value)
    if found is None:
        if value == 0:
            raise InvalidInput(field, f"is required ({what})")
        raise InvalidInput(field, f"{value} is not a known {what}")
    return found


_SEATS = {s.value: s for s in RailSeat}
_TRAVEL = {s.value: s for s in TravelService}
_VENUES = {s.value: s for s in LeisureVenue}
_ESTATE = {s.value: s for s in RealEstateKind}


#: Validated tickets by (seat, train number as sent), and flights by (number,
#: cabin): a few thousand trains and flights cover a day's orders, so nearly
#: every rail or air check reuses one instead of normalising the number and
#: building the tuple again (~0.7 µs). Each holds at most ``_TICKETS_MAX``.
_TICKETS: dict[tuple[int, str], RailTicket] = {}
_TICKETS_MAX = 8192


def _rail(m: pb.RailPurchase) -> RailTicket:
    seat_value = m.seat
    train = m.train_number
    ticket = _TICKETS.get((seat_value, train))
    if ticket is not None:
        return ticket
    seat = _SEATS.get(seat_value) or _enum(_SEATS, seat_value, "purchase.rail.seat", "rail seat")
    if len(train) > MAX_TRAIN:
        _too_long("purchase.rail.train_number", train)
    ticket = RailTicket(normalize_train_number(train), seat)
    if len(_TICKETS) >= _TICKETS_MAX:  # bounded whatever is sent: start again
        _TICKETS.clear()
    _TICKETS[seat_value, train] = ticket
    return ticket


_FLIGHTS: dict[tuple[str, str], Flight] = {}


def _flight(m: pb.FlightPurchase) -> Flight:
    number = m.flight_number
    cabin = m.cabin
    flight = _FLIGHTS.get((number, cabin))
    if flight is not None:
        return flight
    _bounded(number, MAX_FLIGHT, "purchase.flight.flight_number")
    _bounded(cabin, MAX_CABIN, "purchase.flight.cabin")
    flight = Flight(number.strip().upper(), cabin.strip().upper())
    if len(_FLIGHTS) >= _TICKETS_MAX:
        _FLIGHTS.clear()
    _FLIGHTS[number, cabin] = flight
    return flight


_PURCHASES: dict[str, Callable[[Any], Purchase]] = {
    "rail": _rail,
    "flight": _flight,
    "hotel": lambda m: HotelStay(m.star_rating, m.high_end),
    "school": lambda m: SchoolEnrolment(m.private_school, m.high_fee),
    "ship": lambda m: ShipPassage(m.cabin_class),
    "travel": lambda m: TravelBooking(
        _enum(_TRAVEL, m.service, "purchase.travel.service", "travel service")
    ),
    "leisure": lambda m: LeisureVisit(
        _enum(_VENUES, m.venue, "purchase.leisure.venue", "leisure venue")
    ),
    "insurance": lambda m: InsurancePolicy(m.cash_value),
    "real_estate": lambda m: RealEstateDeal(
        _enum(_ESTATE, m.kind, "purchase.real_estate.kind", "real-estate kind")
    ),
    "vehicle": lambda m: VehicleSale(m.business_necessary),
    "office_rental": lambda m: OfficeRental(m.high_end),
}


_PREFIX = {name: f"purchase.{name}" for name in PURCHASE_FIELD.values()}


def _long_field(request: pb.CheckRequest) -> NoReturn:
    """The first of request_id, merchant_id, terminal_id that is over its limit, refused."""
    for field in ("request_id", "merchant_id", "terminal_id"):
        value = getattr(request, field)
        if len(value) > MAX_CHARS[field]:
            _too_long(field, value)
    raise AssertionError("no field is too long")


#: What an identifier that logs and reports show must not hold, by Unicode category:
#: control characters (C0, C1, DEL), format characters (U+200B, U+202E, U+FEFF, ...),
#: surrogates, line and paragraph separators; and noncharacters (``unseen_kind``).
#: Spaces (U+3000), private-use and unassigned characters are not printable either,
#: and are fine.
_UNSEEN = {"Cc": "control character", "Cf": "format character", "Cs": "surrogate",
           "Zl": "line separator", "Zp": "paragraph separator"}  # fmt: skip


#: Format characters that are part of the text they stand in, not hidden in it: the
#: zero-width non-joiner and joiner (Persian script, emoji sequences such as 👩‍💻) and
#: Mongolian's free variation selectors and vowel separator (Inner Mongolian names)
_TEXT_FORMAT = frozenset("\u200c\u200d\u180b\u180c\u180d\u180e\u180f")


def unseen_kind(char: str) -> str | None:
    """What kind of character no one sees as written ``char`` is (``_UNSEEN``, or
    ``"noncharacter"``: U+FFFE, U+FFFF, U+FDD0-U+FDEF and their like in every plane),
    or None (``_TEXT_FORMAT`` too). Worth asking only of a character that is not
    ``isprintable()``."""
    if char in _TEXT_FORMAT:
        return None
    kind = _UNSEEN.get(unicodedata.category(char))
    if kind is None:
        code = ord(char)
        if code & 0xFFFE == 0xFFFE or 0xFDD0 <= code <= 0xFDEF:
            return "noncharacter"
    return kind


def _unseen_field(request: pb.CheckRequest) -> None:
    """The first of request_id, merchant_id, terminal_id holding a character no one sees
    (``unseen_kind``), refused as a name holding a control character is: each goes to the
    hit log and from there into the courts' report, where a newline or U+202E garbles it.
    Returns when what ``isprintable`` failed on is only spaces and the like."""
    for field in ("request_id", "merchant_id", "terminal_id"):
        value = getattr(request, field)
        for index, char in enumerate(value):
            kind = None if char.isprintable() else unseen_kind(char)
            if kind is not None:
                raise InvalidInput(
                    field,
                    f"must not contain control or format characters (U+{ord(char):04X},"
                    f" a {kind}, at character {index + 1})",
                )


def _person_as_organisation(refused: InvalidInput, raw: str) -> InvalidInput:
    """``refused`` (a bad USCC), saying so when ``raw`` is a valid resident ID: a
    person's number in the organisation's field, and where it goes instead."""
    try:
        normalize_resident_id(raw)
    except InvalidInput:
        return refused
    return InvalidInput(
        refused.field,
        f"{refused.problem}, a resident ID: a person's, send person.id_number with "
        "id_type RESIDENT_ID",
    )


def to_query(request: pb.CheckRequest, keyer: IdentityKeyer) -> Query:
    """A validated domain query, or ``InvalidInput`` naming the field.

    Its keys are ``keyer``'s: the server's ``SubjectKeyer``, or the prefilter
    keyer of an offline client (``clients/prefilter.py``), which validates with
    this same function so it answers locally only what the server would accept.
    """
    request_id = request.request_id
    merchant_id = request.merchant_id
    terminal_id = request.terminal_id
    if (
        len(request_id) > MAX_REQUEST_ID
        or len(merchant_id) > MAX_TERMINAL
        or len(terminal_id) > MAX_TERMINAL
    ):
        _long_field(request)
    if not (request_id.isprintable() and merchant_id.isprintable() and terminal_id.isprintable()):
        _unseen_field(request)
    also: tuple[int, ...] = ()
    which = request.WhichOneof("subject")
    if which == "person":
        person = request.person
        raw = person.id_number
        name = person.name
        if len(raw) > MAX_ID:
            _too_long("subject.person.id_number", raw)
        if len(name) > MAX_NAME:
            _too_long("subject.person.name", name)
        if not name.isprintable():  # white space such as U+3000 is not, and is fine
            refuse_controls(name, "subject.person.name")
        id_type = ID_TYPES.get(person.id_type)
        if id_type is None:
            raise InvalidInput("subject.person.id_type", f"{person.id_type} is not a known id type")
        key = keyer.resident_key(raw) if id_type is _RESIDENT_ID else None
        if key is not None:  # canonical and valid (and no USCC): what normalising returns
            number = raw
        else:
            number = normalize_person_id(id_type, raw, "subject.person.id_number")
            key = keyer.subject_key(id_type, number)
            if id_type is _RESIDENT_ID and resident_id_is_uscc(number):
                # a well-formed USCC too (one resident ID in 31; the C keyer leaves it to
                # this path): an organisation's code sent as a resident ID may be one
                also = (keyer.subject_key(None, number),)
        if id_type is not _RESIDENT_ID:  # a number under another type may read as one,
            # or as two (a resident ID that is a USCC too): every reading is looked up.
            # A loop adding to the tuple: as cheap as one key was (a comprehension is not)
            readings = other_readings(id_type, number)
            for kind, reading in readings:
                also += (keyer.subject_key(kind, reading),)
            if not readings and 15 <= len(number) <= 19:
                refuse_misread(id_type, number, "subject.person.id_number")
            # and under every other document type: the same letters and digits, normalised
            # alike, are that document mistyped (a passport sent as a permit), never a
            # reason for ALLOW: a clerk's choice of type must not let a listed person by
            for kind in _OTHER_DOCUMENTS[id_type]:
                also += (keyer.subject_key(kind, number),)
            if 10 <= len(number) <= 11 and (card := permit_card(number)) is not None:
                # a permit's old form names the holder its card's number names (a Home
                # Return Permit's nine characters, a Taiwan permit's eight digits): a
                # listed holder checked by the old form is no ALLOW
                also += (keyer.subject_key(*card),)
    elif which == "organization":
        org = request.organization
        uscc = _bounded(org.uscc, MAX_ID, "subject.organization.uscc")
        name = _bounded(org.name, MAX_ORG_NAME, "subject.organization.name")
        if not name.isprintable():
            refuse_controls(name, "subject.organization.name")
        try:
            number = normalize_uscc(uscc, "subject.organization.uscc")
        except InvalidInput as exc:
            raise _person_as_organisation(exc, uscc) from None
        key = keyer.subject_key(None, number)
        if reads_as_resident_id(number):
            # a person's resident ID in the organisation's field (one in 31 passes
            # GB 32100 too): looked up as that person as well, as the reverse is
            also = (keyer.subject_key(_RESIDENT_ID, number),)
    else:
        raise InvalidInput("subject", "is required: set person or organization")

    channel = CHANNELS.get(request.channel)
    if channel is None:
        if request.channel == 0:
            raise InvalidInput("channel", "is required")
        raise InvalidInput("channel", f"{request.channel} is not a known channel")
    expected = PURCHASE_FIELD[channel]
    given = request.WhichOneof("purchase")
    if given != expected:
        if given is None:
            raise InvalidInput(
                "purchase", f"is required for channel {channel.name}: set purchase.{expected}"
            )
        raise InvalidInput(
            f"purchase.{given}",
            f"does not match channel {channel.name} (expected purchase.{expected})",
        )
    purchase = _PURCHASES[given](getattr(request, given))
    amount = request.amount_fen
    validate_purchase(channel, purchase, amount, _PREFIX[given])
    # tuple.__new__ straight: the namedtuple's own __new__ is a Python function (~0.15 µs)
    return _new_tuple(Query, (key, name, number, channel, purchase, amount, also))


_new_tuple = tuple.__new__


# --- answers ------------------------------------------------------------------

_REASON_PB: dict[Reason, pb.Reason] = {}


def reason_pb(reason: Reason) -> pb.Reason:
    found = _REASON_PB.get(reason)
    if found is None:
        found = _REASON_PB[reason] = pb.Reason(code=reason.code, message=reason.message)
    return found


@functools.lru_cache(maxsize=65536)
def _iso(day: int) -> str:
    return "" if day == NO_END else day_iso(day)


def match_pb(outcome: MatchOutcome) -> pb.Match:
    m = outcome.match
    return pb.Match(
        list_type=int(m.list_type),  # type: ignore[arg-type]
        case_number=m.case_number,
        court=m.court,
        role=int(m.role),  # type: ignore[arg-type]
        organization_name=m.organization_name,
        masked_id=m.masked_id,
        listed_on=_iso(m.listed_on),
        valid_until=_iso(m.valid_until),
        status=int(outcome.status),  # type: ignore[arg-type]
        entry_id=m.entry_id,
    )


_NOT_LISTED_REASONS = [pb.Reason(code=NOT_LISTED.code, message=NOT_LISTED.message)]
_TEMPLATES: dict[str, pb.CheckResponse] = {}


def not_listed(version: str) -> pb.CheckResponse:
    """The NOT_LISTED answer of a version, built once: copying it is 3x cheaper than building."""
    template = _TEMPLATES.get(version)
    if template is None:
        if len(_TEMPLATES) > 16:
            _TEMPLATES.clear()
        template = _TEMPLATES[version] = pb.CheckResponse(
            decision=pb.ALLOW, reasons=_NOT_LISTED_REASONS, list_version=version
        )
    return template


def fill_response(
    out: pb.CheckResponse, request_id: str, check_id: str, verdict: Verdict, version: str
) -> None:
    """Write the answer into ``out`` (a fresh message, or a batch's ``results.add()``)."""
    if verdict is VERDICT_NOT_LISTED:  # nearly every answer
        out.CopyFrom(not_listed(version))
        out.request_id = request_id
        out.check_id = check_id
        return
    out.request_id = request_id
    out.check_id = check_id
    out.decision = int(verdict.decision)  # type: ignore[assignment]
    out.reasons.extend(reason_pb(r) for r in verdict.reasons)
    out.matches.extend(match_pb(o) for o in verdict.matches)
    out.list_version = version
