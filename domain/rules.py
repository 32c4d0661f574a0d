"""The rule table: which purchases a restricted subject may not make.

Sources (``shared/seeds``): 000 §一(七), 001 §二(七), 003 §三(十四), 002 §二 11,
and the SPC rules on restricting high consumption, art. 3. Each purchase type
below is what a booking system sells on one channel; ``restriction_for`` says
whether buying it is restricted, and under which reason code.

The two lists differ on travel. A SHIXIN listing restricts what the
joint-punishment memoranda name (seeds 000 §一(七), 001 §二(七)): outbound group
tours, and spending over a quota "在获得旅游等级评定的度假区内或旅游企业内" (in a
rated resort or a tourism enterprise, a travel agency's domestic tour included; the
debtor alone). A XIANGAO listing is a consumption-restriction order, whose text is
the SPC rules' art. 3: it forbids "(六)旅游、度假" outright (``TRAVEL_HOLIDAY``), and
its second paragraph puts every item on the organisation's legal representative,
principal, directly responsible persons and actual controller alike. Both restrict
luxury renovation only: art. 3(三) as adopted (2010, revised 2015) reads
"购买不动产或者新建、扩建、高档装修房屋" (the 2009 draft's "装修房屋" was not kept).
``restrictions_for`` gives both answers.

Thresholds are policy parameters (``Policy``), reported by GetListStatus.
Bad purchases (a train number that is not one, a seat left out, a cabin class
of 0) raise ``InvalidInput`` naming the field under ``purchase.<channel>``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.model import Channel, ListType


@dataclass(frozen=True, slots=True)
class Reason:
    """A reason code from DESIGN §2 and the clerk's message in Chinese."""

    code: str
    message: str


# Restrictions, one per row of the rule table.
RAIL_G_TRAIN = Reason("RAIL_G_TRAIN", "限制乘坐G字头动车组列车全部座位")
RAIL_EMU_FIRST_CLASS = Reason("RAIL_EMU_FIRST_CLASS", "限制乘坐其他动车组列车一等以上座位")
RAIL_SOFT_SLEEPER = Reason("RAIL_SOFT_SLEEPER", "限制乘坐列车软卧")
AIR_TRAVEL = Reason("AIR_TRAVEL", "限制乘坐民航飞机")
SHIP_SECOND_CLASS_OR_ABOVE = Reason("SHIP_SECOND_CLASS_OR_ABOVE", "限制乘坐轮船二等以上舱位")
HOTEL_STAR_RATED = Reason(
    "HOTEL_STAR_RATED", "限制住宿星级以上宾馆饭店、国家一级以上酒店及其他高消费住宿场所"
)
LEISURE_HIGH_CONSUMPTION = Reason(
    "LEISURE_HIGH_CONSUMPTION", "限制在夜总会、高尔夫球场等高消费场所消费"
)
TRAVEL_OUTBOUND_GROUP = Reason(
    "TRAVEL_OUTBOUND_GROUP", "限制参加旅行社组织的团队出境旅游及相关服务"
)
TRAVEL_RESORT_OVER_QUOTA = Reason(
    "TRAVEL_RESORT_OVER_QUOTA", "在获得旅游等级评定的度假区或旅游企业内消费超过限额"
)
#: Restrictions the policy puts on the debtor alone, not on its related persons: the
#: resort quota ("对失信被执行人在获得旅游等级评定的度假区内或旅游企业内消费实行限额控制",
#: seeds 000 and 001 §(七)3, whose sentence before it names the legal representative
#: and the others for outbound tours, and this one does not), a travel agency's domestic
#: tour as much as a resort's (``TravelService.DOMESTIC``). A SHIXIN listing's only:
#: a consumption-restriction order puts every item on the related persons too (SPC
#: rules art. 3, second paragraph), and restricts resorts at any amount (TRAVEL_HOLIDAY).
DEBTOR_ONLY = frozenset({TRAVEL_RESORT_OVER_QUOTA})
SCHOOL_HIGH_FEE_PRIVATE = Reason(
    "SCHOOL_HIGH_FEE_PRIVATE", "限制以其财产支付子女入学就读高收费私立学校"
)
INSURANCE_HIGH_PREMIUM = Reason(
    "INSURANCE_HIGH_PREMIUM", "限制支付高额保费购买具有现金价值的保险产品"
)
REAL_ESTATE = Reason("REAL_ESTATE", "限制购买不动产、土地使用权及新建、扩建、高档装修房屋")
#: A consumption-restriction order's travel item, SPC rules art. 3(六) "旅游、度假": every
#: travel purchase the memoranda leave open (domestic tours, rated resorts at any amount).
TRAVEL_HOLIDAY = Reason("TRAVEL_HOLIDAY", "限制旅游、度假")
VEHICLE_NON_BUSINESS = Reason("VEHICLE_NON_BUSINESS", "限制购买非经营必需车辆")
OFFICE_HIGH_END_RENTAL = Reason(
    "OFFICE_HIGH_END_RENTAL", "限制租赁高档写字楼、宾馆、公寓等场所办公"
)

#: Every restriction code, for documentation and tests.
RESTRICTIONS = (
    RAIL_G_TRAIN, RAIL_EMU_FIRST_CLASS, RAIL_SOFT_SLEEPER, AIR_TRAVEL,
    SHIP_SECOND_CLASS_OR_ABOVE, HOTEL_STAR_RATED, LEISURE_HIGH_CONSUMPTION,
    TRAVEL_OUTBOUND_GROUP, TRAVEL_RESORT_OVER_QUOTA, SCHOOL_HIGH_FEE_PRIVATE,
    INSURANCE_HIGH_PREMIUM, REAL_ESTATE, VEHICLE_NON_BUSINESS, OFFICE_HIGH_END_RENTAL,
    TRAVEL_HOLIDAY,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds the policy texts leave to the implementer, with our defaults."""

    #: Lowest hotel star rating that counts as 星级以上 (seeds 000, 001: any
    #: star-rated hotel, so 1; seed 002, Huzhou, draws the line at 4).
    hotel_min_star: int = 1
    #: Most a listed person may spend in one transaction inside a rated resort
    #: (seed 000 §一(七)3 最高额限制; no national figure: ¥2,000).
    resort_quota_fen: int = 200_000
    #: Premium from which cash-value insurance counts as 高额 (seed 001 §二(七)5;
    #: no national figure: ¥10,000 a policy).
    insurance_premium_threshold_fen: int = 1_000_000
    #: What to answer when the Bloom filter says "maybe listed" but the index
    #: cannot be asked (Redis down): "REVIEW" by default, "DENY" to fail closed,
    #: "ALLOW" to fail open. Never a silent ALLOW: the reason INDEX_UNAVAILABLE
    #: is always given. Per-channel overrides in ``unavailable_by_channel``.
    unavailable: str = "REVIEW"
    unavailable_by_channel: tuple[tuple[Channel, str], ...] = ()

    def unavailable_decision(self, channel: Channel) -> str:
        for overridden, decision in self.unavailable_by_channel:
            if overridden is channel:
                return decision
        return self.unavailable

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, description) for GetListStatus and ``status``."""
        return [
            ("hotel_min_star", str(self.hotel_min_star), "星级以上: lowest restricted star rating"),
            ("resort_quota_fen", str(self.resort_quota_fen), "rated-resort spending quota, fen"),
            (
                "insurance_premium_threshold_fen",
                str(self.insurance_premium_threshold_fen),
                "premium from which cash-value insurance is restricted, fen",
            ),
            (
                "unavailable",
                ",".join(
                    [self.unavailable] + [f"{c.name}={d}" for c, d in self.unavailable_by_channel]
                ),
                "answer when a Bloom positive cannot be confirmed (index unreachable)",
            ),
        ]


class RailSeat(IntEnum):
    """Seat classes as ticketing systems sell them. Values match the wire enum without its prefix."""

    BUSINESS = 1
    PREMIER = 2
    FIRST_CLASS = 3
    SECOND_CLASS = 4
    FIRST_CLASS_SLEEPER = 5
    SECOND_CLASS_SLEEPER = 6
    DELUXE_SOFT_SLEEPER = 7
    SOFT_SLEEPER = 8
    HARD_SLEEPER = 9
    SOFT_SEAT = 10
    HARD_SEAT = 11
    NO_SEAT = 12


class TravelService(IntEnum):
    """What a travel agency or rated resort sells. Resort spending and domestic tours
    are spending in a tourism enterprise, under the debtor's quota: both need
    ``amount_fen``."""

    OUTBOUND_GROUP_TOUR = 1
    OUTBOUND_RELATED = 2
    RATED_RESORT = 3
    DOMESTIC = 4


class LeisureVenue(IntEnum):
    """Where leisure spending happens."""

    NIGHTCLUB = 1
    GOLF = 2
    OTHER_HIGH_CONSUMPTION = 3
    ORDINARY = 4


class RealEstateKind(IntEnum):
    """What is bought or built."""

    PROPERTY_PURCHASE = 1
    LAND_USE_RIGHT = 2
    NEW_BUILD = 3
    EXTENSION = 4
    LUXURY_RENOVATION = 5
    ORDINARY_RENOVATION = 6


_EMU_FIRST_AND_ABOVE = frozenset(
    {RailSeat.BUSINESS, RailSeat.PREMIER, RailSeat.FIRST_CLASS, RailSeat.FIRST_CLASS_SLEEPER}
)
#: seats sold only on EMU trains: first class or above on an EMU, whatever the
#: train number's letter (an S suburban EMU, a renumbered service, a slip)
_EMU_ONLY_FIRST_AND_ABOVE = frozenset({RailSeat.BUSINESS, RailSeat.PREMIER, RailSeat.FIRST_CLASS})
_SOFT_SLEEPERS = frozenset({RailSeat.SOFT_SLEEPER, RailSeat.DELUXE_SOFT_SLEEPER})
_TRAIN_NUMBER = re.compile(r"[GDCZTKSYL]?[0-9]{1,4}\Z")
_TRAIN_NUMBER_CLEAN = re.compile(r"[\s\u3000]+")


def normalize_train_number(raw: str, field: str = "purchase.rail.train_number") -> str:
    """``g 1234`` and ``Ｇ１２３４`` are G1234; anything else that is not a train is refused."""
    if _TRAIN_NUMBER.match(raw) is not None:
        return raw  # already canonical: the common case
    text = raw if raw.isascii() else unicodedata.normalize("NFKC", raw)
    number = _TRAIN_NUMBER_CLEAN.sub("", text).upper()
    if not number:
        raise InvalidInput(field, "is empty")
    if _TRAIN_NUMBER.match(number) is None:
        raise InvalidInput(
            field,
            f"{raw!r} is not a train number (an optional letter G D C Z T K S Y L and 1-4 digits)",
        )
    return number


class RailTicket(NamedTuple):
    """A seat on a train; the train number is normalised (G1234)."""

    train_number: str  # normalised
    seat: RailSeat


class Flight(NamedTuple):
    """Any civil flight; every cabin is restricted."""

    flight_number: str
    cabin: str


class HotelStay(NamedTuple):
    """A room: its star rating, and whether it is high-end whatever its stars."""

    star_rating: int
    high_end: bool


class SchoolEnrolment(NamedTuple):
    """A child's enrolment, paid from the listed person's assets."""

    private_school: bool
    high_fee: bool


class ShipPassage(NamedTuple):
    """A cabin on a ship; class 1 is first."""

    cabin_class: int  # 1 = first


class TravelBooking(NamedTuple):
    """A travel service; ``amount_fen`` is the spending in a rated resort."""

    service: TravelService


class LeisureVisit(NamedTuple):
    """Spending at a venue."""

    venue: LeisureVenue


class InsurancePolicy(NamedTuple):
    """An insurance product; ``amount_fen`` is its premium."""

    cash_value: bool


class RealEstateDeal(NamedTuple):
    """Buying property or land use rights, or building."""

    kind: RealEstateKind


class VehicleSale(NamedTuple):
    """A vehicle; one necessary for the business is not restricted."""

    business_necessary: bool


class OfficeRental(NamedTuple):
    """Renting offices, or hotels and apartments used as offices."""

    high_end: bool


Purchase = (
    RailTicket | Flight | HotelStay | SchoolEnrolment | ShipPassage | TravelBooking
    | LeisureVisit | InsurancePolicy | RealEstateDeal | VehicleSale | OfficeRental
)  # fmt: skip

#: The purchase type each channel sells.
PURCHASE_OF_CHANNEL: dict[Channel, type[Purchase]] = {
    Channel.RAIL: RailTicket,
    Channel.AIRLINE: Flight,
    Channel.HOTEL: HotelStay,
    Channel.SCHOOL: SchoolEnrolment,
    Channel.SHIP: ShipPassage,
    Channel.TRAVEL: TravelBooking,
    Channel.LEISURE: LeisureVisit,
    Channel.INSURANCE: InsurancePolicy,
    Channel.REAL_ESTATE: RealEstateDeal,
    Channel.VEHICLE: VehicleSale,
    Channel.OFFICE_RENTAL: OfficeRental,
}


def _hotel(p: HotelStay, amount_fen: int, prefix: str) -> None:
    if not 0 <= p.star_rating <= 5:
        raise InvalidInput(f"{prefix}.star_rating", "must be 0 (unrated) to 5")


def _ship(p: ShipPassage, amount_fen: int, prefix: str) -> None:
    if p.cabin_class < 1:
        raise InvalidInput(f"{prefix}.cabin_class", "must be 1 (first class) or more")


def _travel(p: TravelBooking, amount_fen: int, prefix: str) -> None:
    if amount_fen <= 0 and p.service in _UNDER_QUOTA:
        raise InvalidInput("amount_fen", _AMOUNT_FOR[p.service])


#: Travel bought in a rated resort or from a tourism enterprise: under the quota
_UNDER_QUOTA = (TravelService.RATED_RESORT, TravelService.DOMESTIC)
_AMOUNT_FOR = {
    TravelService.RATED_RESORT: "is required for spending in a rated resort",
    TravelService.DOMESTIC: (
        "is required for a domestic tour (spending in a tourism enterprise is under "
        "the debtor's quota)"
    ),
}


def _insurance(p: InsurancePolicy, amount_fen: int, prefix: str) -> None:
    if p.cash_value and amount_fen <= 0:
        raise InvalidInput("amount_fen", "is required (the premium) for cash-value insurance")


#: Field checks of the purchases that have any (a rail ticket's are in building it).
_CHECKS: dict[type, Any] = {
    HotelStay: _hotel,
    ShipPassage: _ship,
    TravelBooking: _travel,
    InsurancePolicy: _insurance,
}


def validate_purchase(channel: Channel, purchase: Purchase, amount_fen: int, prefix: str) -> None:
    """Field checks that do not depend on the list; ``prefix`` is the purchase's field path."""
    if type(purchase) is not PURCHASE_OF_CHANNEL[channel]:
        raise InvalidInput(prefix, f"does not match channel {channel.name}")
    if amount_fen < 0:
        raise InvalidInput("amount_fen", "must not be negative")
    check = _CHECKS.get(type(purchase))
    if check is not None:
        check(purchase, amount_fen, prefix)


def restriction_for(
    purchase: Purchase,
    amount_fen: int,
    policy: Policy,
    list_type: ListType = ListType.SHIXIN,
) -> Reason | None:
    """The restriction this purchase falls under for a debtor on ``list_type``, or None
    when such a subject may buy it. (A related person: ``DEBTOR_ONLY`` aside, the same.)"""
    shixin = _shixin_restriction(purchase, amount_fen, policy)
    return shixin if list_type is ListType.SHIXIN else _xiangao_restriction(purchase, shixin)


def restrictions_for(
    purchase: Purchase, amount_fen: int, policy: Policy
) -> tuple[Reason | None, Reason | None]:
    """(SHIXIN, XIANGAO): the restriction this purchase falls under on each list."""
    shixin = _shixin_restriction(purchase, amount_fen, policy)
    return shixin, _xiangao_restriction(purchase, shixin)


def _xiangao_restriction(purchase: Purchase, shixin: Reason | None) -> Reason | None:
    """A consumption-restriction order's answer, from the memoranda's (``shixin``): the
    same, but for travel (art. 3(六): all of it)."""
    if type(purchase) is TravelBooking:
        # outbound tours keep their code; resorts (under the quota too) and domestic tours
        return shixin if shixin is TRAVEL_OUTBOUND_GROUP else TRAVEL_HOLIDAY
    return shixin


def _shixin_restriction(purchase: Purchase, amount_fen: int, policy: Policy) -> Reason | None:
    """The memoranda's rule table: what a SHIXIN listing restricts."""
    kind = type(purchase)
    if kind is RailTicket:
        assert isinstance(purchase, RailTicket)
        letter = purchase.train_number[0]
        if letter == "G":
            return RAIL_G_TRAIN
        if purchase.seat in _SOFT_SLEEPERS:
            return RAIL_SOFT_SLEEPER
        if letter in "DC" or purchase.seat in _EMU_ONLY_FIRST_AND_ABOVE:
            return RAIL_EMU_FIRST_CLASS if purchase.seat in _EMU_FIRST_AND_ABOVE else None
        # On a conventional train the first-class sleeper is the soft sleeper.
        return RAIL_SOFT_SLEEPER if purchase.seat is RailSeat.FIRST_CLASS_SLEEPER else None
    if kind is Flight:
        return AIR_TRAVEL
    if kind is HotelStay:
        assert isinstance(purchase, HotelStay)
        if purchase.high_end or purchase.star_rating >= policy.hotel_min_star > 0:
            return HOTEL_STAR_RATED
        return None
    if kind is ShipPassage:
        assert isinstance(purchase, ShipPassage)
        return SHIP_SECOND_CLASS_OR_ABOVE if purchase.cabin_class <= 2 else None
    if kind is SchoolEnrolment:
        assert isinstance(purchase, SchoolEnrolment)
        return SCHOOL_HIGH_FEE_PRIVATE if purchase.private_school and purchase.high_fee else None
    if kind is TravelBooking:
        assert isinstance(purchase, TravelBooking)
        service = purchase.service
        if service in (TravelService.OUTBOUND_GROUP_TOUR, TravelService.OUTBOUND_RELATED):
            return TRAVEL_OUTBOUND_GROUP
        if service in _UNDER_QUOTA and amount_fen > policy.resort_quota_fen:
            return TRAVEL_RESORT_OVER_QUOTA
        return None
    if kind is LeisureVisit:
        assert isinstance(purchase, LeisureVisit)
        return None if purchase.venue is LeisureVenue.ORDINARY else LEISURE_HIGH_CONSUMPTION
    if kind is InsurancePolicy:
        assert isinstance(purchase, InsurancePolicy)
        high = purchase.cash_value and amount_fen >= policy.insurance_premium_threshold_fen
        return INSURANCE_HIGH_PREMIUM if high else None
    if kind is RealEstateDeal:
        assert isinstance(purchase, RealEstateDeal)
        return None if purchase.kind is RealEstateKind.ORDINARY_RENOVATION else REAL_ESTATE
    if kind is VehicleSale:
        assert isinstance(purchase, VehicleSale)
        return None if purchase.business_necessary else VEHICLE_NON_BUSINESS
    assert isinstance(purchase, OfficeRental)
    return OFFICE_HIGH_END_RENTAL if purchase.high_end else None


def describe_purchase(purchase: Purchase) -> dict[str, object]:
    """The purchase as plain values, for the hit log."""
    return {
        name: value.name if isinstance(value, IntEnum) else value
        for name, value in purchase._asdict().items()
    }
