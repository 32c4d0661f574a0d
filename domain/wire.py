"""The wire contract's names and limits, in domain terms (no protobuf here).

The server's request conversion (``server/convert.py``) and the clients'
local validation (``clients/prefilter.py``, ``build_request``) read them from
this one place, so a client can never accept locally what the server refuses.
"""

from __future__ import annotations

from shixin_check.domain.identity import IdType
from shixin_check.domain.model import Channel

MAX_REQUEST_ID = 128
MAX_TERMINAL = 64  # merchant_id, terminal_id
MAX_ID = 64  # an ID number or USCC as typed, spaces and all (18 characters normalised)
MAX_NAME = 128
MAX_ORG_NAME = 256
MAX_TRAIN = 16
MAX_FLIGHT = 16
MAX_CABIN = 32

#: The longest value each string field of a CheckRequest may hold, in characters
#: (code points). Generous for any real value, small enough that a hostile one
#: costs nothing: a 200,000-character name is refused before it is read.
MAX_CHARS: dict[str, int] = {
    "request_id": MAX_REQUEST_ID,
    "subject.person.id_number": MAX_ID,
    "subject.person.name": MAX_NAME,
    "subject.organization.uscc": MAX_ID,
    "subject.organization.name": MAX_ORG_NAME,
    "merchant_id": MAX_TERMINAL,
    "terminal_id": MAX_TERMINAL,
    "purchase.rail.train_number": MAX_TRAIN,
    "purchase.flight.flight_number": MAX_FLIGHT,
    "purchase.flight.cabin": MAX_CABIN,
}

#: Wire enum values to domain ones (an unset id_type is a resident ID).
ID_TYPES: dict[int, IdType] = {0: IdType.RESIDENT_ID} | {t.value: t for t in IdType}
CHANNELS: dict[int, Channel] = {c.value: c for c in Channel}

#: The purchase field each channel expects.
PURCHASE_FIELD: dict[Channel, str] = {
    Channel.RAIL: "rail",
    Channel.AIRLINE: "flight",
    Channel.HOTEL: "hotel",
    Channel.SCHOOL: "school",
    Channel.SHIP: "ship",
    Channel.TRAVEL: "travel",
    Channel.LEISURE: "leisure",
    Channel.INSURANCE: "insurance",
    Channel.REAL_ESTATE: "real_estate",
    Channel.VEHICLE: "vehicle",
    Channel.OFFICE_RENTAL: "office_rental",
}
