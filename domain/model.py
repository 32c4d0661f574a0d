"""The list model: entries, the people they restrict, and their lifecycle.

A ``ListEntry`` is one court decision as the credit platform publishes it.
It restricts its subject (the debtor) and, when the debtor is an organisation,
the related persons named in it (legal representative, principal, actual
controller, directly responsible persons), each in their role.

Values of the enums match the wire enums of ``shixin.v1`` so converting is an
integer copy, but nothing here knows about protobuf.
"""

from __future__ import annotations

import datetime as _dt
from enum import IntEnum
from typing import NamedTuple

from shixin_check.domain.identity import IdType, mask_id


class Channel(IntEnum):
    """Where the purchase is made: one row group of the rule table."""

    RAIL = 1
    AIRLINE = 2
    HOTEL = 3
    SCHOOL = 4
    SHIP = 5
    TRAVEL = 6
    LEISURE = 7
    INSURANCE = 8
    REAL_ESTATE = 9
    VEHICLE = 10
    OFFICE_RENTAL = 11


class ListType(IntEnum):
    """The two lists; either one restricts high consumption."""

    SHIXIN = 1  # 失信被执行人
    XIANGAO = 2  # 限制消费人员


class EntryStatus(IntEnum):
    """How an entry stands: as loaded (ACTIVE, SUSPENDED) or as judged at check time (EXPIRED)."""

    ACTIVE = 1
    SUSPENDED = 2  # objection under verification: measures not applied
    EXPIRED = 3  # computed at check time from valid_until, never loaded


class Role(IntEnum):
    """In which capacity an entry restricts someone: the debtor, or a person related to a debtor organisation."""

    DEBTOR = 1
    LEGAL_REPRESENTATIVE = 2
    PRINCIPAL = 3
    ACTUAL_CONTROLLER = 4
    RESPONSIBLE_PERSON = 5


class Decision(IntEnum):
    """The answer of a check. Values match the wire enum."""

    ALLOW = 1
    DENY = 2
    REVIEW = 3


CHINA_TZ = _dt.timezone(_dt.timedelta(hours=8), "Asia/Shanghai")
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


def china_day(unix_seconds: float) -> int:
    """Days since 1970-01-01 in China time: how dates are compared at check time."""
    return int((unix_seconds + 8 * 3600) // 86400)


def day_number(date: _dt.date) -> int:
    return date.toordinal() - _EPOCH_ORDINAL


def day_iso(day: int) -> str:
    return _dt.date.fromordinal(day + _EPOCH_ORDINAL).isoformat() if day else ""


#: ``valid_until`` of an entry with no end date.
NO_END = 2**31 - 1


class Exemption(NamedTuple):
    """A court's permission for one listed person to make one kind of purchase from
    personal assets (因私消费以个人财产实施): one channel, dates inclusive (China time).

    It covers the person it names and no one else: not the organisation of the
    entry (it has no personal assets), nor the entry's other related persons.
    As a list file names it, ``id_type`` and ``id_number`` are that person's
    identity, normalised as a ``ListedSubject``'s (``id_number`` "" only in a
    delta's op, before the entry is known: there it means the debtor of a
    person's entry). An index keys the person and hands a match only the
    exemptions covering the matched subject (``ListEntry.exempts``), ``bare()``:
    so on a ``ListedMatch`` every exemption is the match's own and ``covers``
    need not ask whose it is.
    """

    channel: Channel
    first_day: int
    last_day: int
    id_type: IdType | None = None  # None: no one named yet, or a USCC (``as_resident``)
    id_number: str = ""

    def covers(self, channel: Channel, today: int) -> bool:
        return self.channel is channel and self.first_day <= today <= self.last_day

    def bare(self) -> Exemption:
        """The permission without the person: as a match of that person carries it."""
        return Exemption(self.channel, self.first_day, self.last_day)

    def __repr__(self) -> str:  # never the plaintext number, even in a traceback
        who = f", {self.id_type.name if self.id_type else 'USCC'} {mask_id(self.id_number)}"
        return (
            f"Exemption({self.channel.name}, {day_iso(self.first_day)}..{day_iso(self.last_day)}"
            f"{who if self.id_number else ''})"
        )


class ListedSubject(NamedTuple):
    """Someone an entry restricts: the debtor itself or a related person.

    ``id_number`` is already normalised; the loader turns it into a keyed
    subject key and a masked form and does not keep it.
    """

    role: Role
    name: str
    id_type: IdType | None  # None for an organisation (USCC)
    id_number: str


class ListEntry(NamedTuple):
    """One published court decision, validated and normalised.

    Named tuples, not frozen dataclasses: a load builds millions of these, and
    a frozen dataclass costs several times as much to construct.
    """

    entry_id: str
    list_type: ListType
    status: EntryStatus
    case_number: str
    court: str
    published_on: int  # day number, 0 when unknown
    valid_until: int  # day number, NO_END when open-ended
    debtor: ListedSubject
    organization_name: str  # the debtor's name when the debtor is an organisation
    related: tuple[ListedSubject, ...] = ()
    exemptions: tuple[Exemption, ...] = ()

    def subjects(self) -> tuple[ListedSubject, ...]:
        return (self.debtor, *self.related)

    def exempts(self, exemption: Exemption, subject: ListedSubject) -> bool:
        """True when ``exemption`` covers ``subject``, one of this entry's: it names
        that person, however keyed (a sole proprietor's debtor by its USCC, ``id_type``
        None), and ``subject`` is not the organisation of an organisation's entry (it
        has no personal assets). The one rule of every path that builds a match's
        exemptions from an entry's, and of ``listfile.exempted_in``."""
        return (
            exemption.id_number == subject.id_number
            and exemption.id_type is subject.id_type
            and not (self.organization_name and subject.role is Role.DEBTOR)
        )
