"""The rule table of DESIGN §2, row by row, restricted and allowed side.

Every case goes through ``validate_purchase`` first (a valid purchase must
pass it) and then ``restriction_for``; ``expected`` is the reason code, or
None where a listed subject may buy. ``ALL_CASES`` is the table for a SHIXIN
listing (the memoranda); ``XIANGAO_CASES`` the rows where a consumption-restriction
order (SPC rules art. 3) restricts more.
"""

from __future__ import annotations

import pytest

from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.model import Channel, ListType
from shixin_check.domain.rules import (
    PURCHASE_OF_CHANNEL,
    REAL_ESTATE,
    RESTRICTIONS,
    TRAVEL_HOLIDAY,
    TRAVEL_RESORT_OVER_QUOTA,
    Flight,
    HotelStay,
    InsurancePolicy,
    LeisureVenue,
    LeisureVisit,
    OfficeRental,
    Policy,
    Purchase,
    RailSeat,
    RailTicket,
    RealEstateDeal,
    RealEstateKind,
    SchoolEnrolment,
    ShipPassage,
    TravelBooking,
    TravelService,
    VehicleSale,
    normalize_train_number,
    restriction_for,
    restrictions_for,
)
from shixin_check.domain.rules import validate_purchase as validate

DEFAULT = Policy()
#: Seed 002 (Huzhou) draws the hotel line at four stars.
FOUR_STAR = Policy(hotel_min_star=4)
QUOTA = DEFAULT.resort_quota_fen
PREMIUM = DEFAULT.insurance_premium_threshold_fen

#: The purchase's field path, as the server names it.
PREFIX = {
    Channel.RAIL: "purchase.rail",
    Channel.AIRLINE: "purchase.flight",
    Channel.HOTEL: "purchase.hotel",
    Channel.SCHOOL: "purchase.school",
    Channel.SHIP: "purchase.ship",
    Channel.TRAVEL: "purchase.travel",
    Channel.LEISURE: "purchase.leisure",
    Channel.INSURANCE: "purchase.insurance",
    Channel.REAL_ESTATE: "purchase.real_estate",
    Channel.VEHICLE: "purchase.vehicle",
    Channel.OFFICE_RENTAL: "purchase.office_rental",
}

#: One valid purchase per channel, for the channel-mismatch tests.
SAMPLE: dict[Channel, Purchase] = {
    Channel.RAIL: RailTicket("G1234", RailSeat.SECOND_CLASS),
    Channel.AIRLINE: Flight("CA1234", "Y"),
    Channel.HOTEL: HotelStay(3, False),
    Channel.SCHOOL: SchoolEnrolment(True, True),
    Channel.SHIP: ShipPassage(1),
    Channel.TRAVEL: TravelBooking(TravelService.OUTBOUND_GROUP_TOUR),
    Channel.LEISURE: LeisureVisit(LeisureVenue.GOLF),
    Channel.INSURANCE: InsurancePolicy(False),
    Channel.REAL_ESTATE: RealEstateDeal(RealEstateKind.PROPERTY_PURCHASE),
    Channel.VEHICLE: VehicleSale(False),
    Channel.OFFICE_RENTAL: OfficeRental(True),
}


def case(
    case_id: str,
    purchase: Purchase,
    expected: str | None,
    amount_fen: int = 0,
    policy: Policy = DEFAULT,
) -> object:
    channel = next(c for c, t in PURCHASE_OF_CHANNEL.items() if type(purchase) is t)
    return pytest.param(channel, purchase, amount_fen, policy, expected, id=case_id)


def rail(train: str, seat: RailSeat, expected: str | None) -> object:
    return case(f"{train}-{seat.name}", RailTicket(train, seat), expected)


EMU_FIRST_AND_ABOVE = (
    RailSeat.BUSINESS,
    RailSeat.PREMIER,
    RailSeat.FIRST_CLASS,
    RailSeat.FIRST_CLASS_SLEEPER,
)
SOFT_SLEEPERS = (RailSeat.SOFT_SLEEPER, RailSeat.DELUXE_SOFT_SLEEPER)

RAIL_CASES = [
    # Any seat on a G train, the cheapest included.
    *(rail("G1234", seat, "RAIL_G_TRAIN") for seat in RailSeat),
    # First class and above on D and C trains; second class is not restricted.
    *(
        rail(t, seat, "RAIL_EMU_FIRST_CLASS")
        for t in ("D301", "C2001")
        for seat in EMU_FIRST_AND_ABOVE
    ),
    *(
        rail(t, seat, None)
        for t in ("D301", "C2001")
        for seat in (RailSeat.SECOND_CLASS, RailSeat.SECOND_CLASS_SLEEPER, RailSeat.NO_SEAT)
    ),
    # Soft sleepers on any train.
    *(
        rail(t, seat, "RAIL_SOFT_SLEEPER")
        for t in ("K1", "T110", "Z19", "D301", "1461")
        for seat in SOFT_SLEEPERS
    ),
    # Business, premier and first class are sold only on EMUs ("其他动车组列车一等以上
    # 座位"): restricted whatever the train's letter (an S suburban EMU, a slip).
    *(
        rail(t, seat, "RAIL_EMU_FIRST_CLASS")
        for t in ("K123", "T12", "S1", "1461")
        for seat in (RailSeat.BUSINESS, RailSeat.PREMIER, RailSeat.FIRST_CLASS)
    ),
    # A conventional train's first-class sleeper is its soft sleeper.
    rail("Z19", RailSeat.FIRST_CLASS_SLEEPER, "RAIL_SOFT_SLEEPER"),
    # Hard sleeper, hard and soft seat, standing on conventional trains.
    *(
        rail(t, seat, None)
        for t in ("K1", "T110", "Z19", "1461")
        for seat in (RailSeat.HARD_SLEEPER, RailSeat.HARD_SEAT, RailSeat.SOFT_SEAT)
    ),
    *(rail(t, RailSeat.NO_SEAT, None) for t in ("K1", "T110", "Z19", "1461")),
]

OTHER_CASES = [
    # AIRLINE: any flight, any cabin.
    case("flight-economy", Flight("CA1234", "Y"), "AIR_TRAVEL"),
    case("flight-first", Flight("MU5101", "F"), "AIR_TRAVEL"),
    case("flight-no-cabin", Flight("CZ3101", ""), "AIR_TRAVEL"),
    # SHIP: second-class cabin and above.
    case("ship-first", ShipPassage(1), "SHIP_SECOND_CLASS_OR_ABOVE"),
    case("ship-second", ShipPassage(2), "SHIP_SECOND_CLASS_OR_ABOVE"),
    case("ship-third", ShipPassage(3), None),
    case("ship-fourth", ShipPassage(4), None),
    # HOTEL: star-rated (default: any star) and other high-end lodging.
    case("hotel-unrated", HotelStay(0, False), None),
    *(case(f"hotel-{n}-star", HotelStay(n, False), "HOTEL_STAR_RATED") for n in range(1, 6)),
    case("hotel-unrated-high-end", HotelStay(0, True), "HOTEL_STAR_RATED"),
    case("hotel-min4-3-star", HotelStay(3, False), None, policy=FOUR_STAR),
    case("hotel-min4-4-star", HotelStay(4, False), "HOTEL_STAR_RATED", policy=FOUR_STAR),
    case("hotel-min4-5-star", HotelStay(5, False), "HOTEL_STAR_RATED", policy=FOUR_STAR),
    case("hotel-min4-3-star-high-end", HotelStay(3, True), "HOTEL_STAR_RATED", policy=FOUR_STAR),
    # LEISURE: nightclubs, golf and other high-consumption venues.
    case("nightclub", LeisureVisit(LeisureVenue.NIGHTCLUB), "LEISURE_HIGH_CONSUMPTION"),
    case("golf", LeisureVisit(LeisureVenue.GOLF), "LEISURE_HIGH_CONSUMPTION"),
    case(
        "other-high-venue",
        LeisureVisit(LeisureVenue.OTHER_HIGH_CONSUMPTION),
        "LEISURE_HIGH_CONSUMPTION",
    ),
    case("ordinary-venue", LeisureVisit(LeisureVenue.ORDINARY), None),
    # TRAVEL: outbound group tours and related services; rated resorts over quota.
    case(
        "outbound-group",
        TravelBooking(TravelService.OUTBOUND_GROUP_TOUR),
        "TRAVEL_OUTBOUND_GROUP",
    ),
    case(
        "outbound-related", TravelBooking(TravelService.OUTBOUND_RELATED), "TRAVEL_OUTBOUND_GROUP"
    ),
    case(
        "resort-over-quota",
        TravelBooking(TravelService.RATED_RESORT),
        "TRAVEL_RESORT_OVER_QUOTA",
        amount_fen=QUOTA + 1,
    ),
    case("resort-at-quota", TravelBooking(TravelService.RATED_RESORT), None, amount_fen=QUOTA),
    case("resort-under-quota", TravelBooking(TravelService.RATED_RESORT), None, amount_fen=1),
    case(
        "resort-lower-quota",
        TravelBooking(TravelService.RATED_RESORT),
        "TRAVEL_RESORT_OVER_QUOTA",
        amount_fen=50_001,
        policy=Policy(resort_quota_fen=50_000),
    ),
    # a domestic tour is spending in a tourism enterprise (seeds 000 and 001 §(七)3):
    # under the same quota as a resort's
    case("domestic-at-quota", TravelBooking(TravelService.DOMESTIC), None, amount_fen=QUOTA),
    case(
        "domestic-over-quota",
        TravelBooking(TravelService.DOMESTIC),
        "TRAVEL_RESORT_OVER_QUOTA",
        amount_fen=QUOTA + 1,
    ),
    # SCHOOL: a high-fee private school only.
    case("private-high-fee", SchoolEnrolment(True, True), "SCHOOL_HIGH_FEE_PRIVATE"),
    case("private-ordinary-fee", SchoolEnrolment(True, False), None),
    case("public-high-fee", SchoolEnrolment(False, True), None),
    case("public", SchoolEnrolment(False, False), None),
    # INSURANCE: cash-value policies from the premium threshold.
    case(
        "cash-value-at-threshold",
        InsurancePolicy(True),
        "INSURANCE_HIGH_PREMIUM",
        amount_fen=PREMIUM,
    ),
    case(
        "cash-value-above",
        InsurancePolicy(True),
        "INSURANCE_HIGH_PREMIUM",
        amount_fen=PREMIUM + 1,
    ),
    case("cash-value-below", InsurancePolicy(True), None, amount_fen=PREMIUM - 1),
    case("no-cash-value-high-premium", InsurancePolicy(False), None, amount_fen=PREMIUM * 10),
    case("no-cash-value-no-amount", InsurancePolicy(False), None),
    # REAL_ESTATE: every kind but an ordinary renovation.
    *(
        case(f"real-estate-{kind.name}", RealEstateDeal(kind), "REAL_ESTATE")
        for kind in RealEstateKind
        if kind is not RealEstateKind.ORDINARY_RENOVATION
    ),
    case("ordinary-renovation", RealEstateDeal(RealEstateKind.ORDINARY_RENOVATION), None),
    # VEHICLE: vehicles not necessary for the business.
    case("vehicle-not-necessary", VehicleSale(False), "VEHICLE_NON_BUSINESS"),
    case("vehicle-business-necessary", VehicleSale(True), None),
    # OFFICE_RENTAL: high-end offices.
    case("office-high-end", OfficeRental(True), "OFFICE_HIGH_END_RENTAL"),
    case("office-ordinary", OfficeRental(False), None),
]

ALL_CASES = RAIL_CASES + OTHER_CASES

#: A consumption-restriction order (XIANGAO): SPC rules art. 3(六) "旅游、度假" bars all
#: travel, resorts at any amount; art. 3(三) "新建、扩建、高档装修房屋" luxury renovation,
#: as the memoranda do.
XIANGAO_CASES = [
    case("x-domestic", TravelBooking(TravelService.DOMESTIC), "TRAVEL_HOLIDAY", amount_fen=1),
    case(
        "x-resort-under-quota",
        TravelBooking(TravelService.RATED_RESORT),
        "TRAVEL_HOLIDAY",
        amount_fen=1,
    ),
    case(
        "x-resort-at-quota",
        TravelBooking(TravelService.RATED_RESORT),
        "TRAVEL_HOLIDAY",
        amount_fen=QUOTA,
    ),
    case(
        "x-resort-over-quota",
        TravelBooking(TravelService.RATED_RESORT),
        "TRAVEL_HOLIDAY",
        amount_fen=QUOTA + 1,
    ),
    case(
        "x-outbound-group",
        TravelBooking(TravelService.OUTBOUND_GROUP_TOUR),
        "TRAVEL_OUTBOUND_GROUP",
    ),
    case(
        "x-outbound-related", TravelBooking(TravelService.OUTBOUND_RELATED), "TRAVEL_OUTBOUND_GROUP"
    ),
    *(
        case(
            f"x-real-estate-{kind.name}",
            RealEstateDeal(kind),
            None if kind is RealEstateKind.ORDINARY_RENOVATION else "REAL_ESTATE",
        )
        for kind in RealEstateKind
    ),
]
#: the channel whose rows differ between the lists
XIANGAO_CHANNELS = frozenset({Channel.TRAVEL})


@pytest.mark.parametrize(("channel", "purchase", "amount_fen", "policy", "expected"), ALL_CASES)
def test_rule_table(
    channel: Channel, purchase: Purchase, amount_fen: int, policy: Policy, expected: str | None
) -> None:
    validate(channel, purchase, amount_fen, PREFIX[channel])
    reason = restriction_for(purchase, amount_fen, policy)
    assert (reason.code if reason is not None else None) == expected
    assert restriction_for(purchase, amount_fen, policy, ListType.SHIXIN) == reason


@pytest.mark.parametrize(("channel", "purchase", "amount_fen", "policy", "expected"), XIANGAO_CASES)
def test_rule_table_of_a_consumption_restriction_order(
    channel: Channel, purchase: Purchase, amount_fen: int, policy: Policy, expected: str | None
) -> None:
    validate(channel, purchase, amount_fen, PREFIX[channel])
    reason = restriction_for(purchase, amount_fen, policy, ListType.XIANGAO)
    assert (reason.code if reason is not None else None) == expected
    assert restrictions_for(purchase, amount_fen, policy)[1] == reason


@pytest.mark.parametrize(("channel", "purchase", "amount_fen", "policy", "expected"), ALL_CASES)
def test_a_consumption_restriction_order_restricts_the_rest_as_the_memoranda_do(
    channel: Channel, purchase: Purchase, amount_fen: int, policy: Policy, expected: str | None
) -> None:
    """Outside travel the two lists' rows are one, reason and message."""
    shixin, xiangao = restrictions_for(purchase, amount_fen, policy)
    assert shixin == restriction_for(purchase, amount_fen, policy)
    if channel not in XIANGAO_CHANNELS:
        assert xiangao == shixin


def test_a_domestic_tour_within_the_quota_is_restricted_only_by_an_order() -> None:
    """And an ordinary renovation by neither: SPC rules art. 3(三) as adopted names
    高档装修 (luxury renovation), as the memoranda do; its 2009 draft's "装修房屋" was
    not kept."""
    domestic = TravelBooking(TravelService.DOMESTIC)
    renovation = RealEstateDeal(RealEstateKind.ORDINARY_RENOVATION)
    assert restrictions_for(domestic, QUOTA, DEFAULT) == (None, TRAVEL_HOLIDAY)
    assert restrictions_for(domestic, QUOTA + 1, DEFAULT) == (
        TRAVEL_RESORT_OVER_QUOTA, TRAVEL_HOLIDAY,
    )  # fmt: skip
    assert restrictions_for(renovation, 0, DEFAULT) == (None, None)
    assert "高档装修" in REAL_ESTATE.message
    assert "旅游、度假" in TRAVEL_HOLIDAY.message
    # what both lists restrict keeps the one reason: one code, one message
    purchase = RealEstateDeal(RealEstateKind.PROPERTY_PURCHASE)
    assert restrictions_for(purchase, 0, DEFAULT) == (REAL_ESTATE, REAL_ESTATE)


def test_every_restriction_and_every_channel_is_covered_on_both_sides() -> None:
    """A new row in the rule table fails here until it has cases of its own."""
    codes = {p.values[4] for p in ALL_CASES + XIANGAO_CASES}  # type: ignore[attr-defined]
    assert codes - {None} == {r.code for r in RESTRICTIONS}
    channels_allowed = {p.values[0] for p in ALL_CASES if p.values[4] is None}  # type: ignore[attr-defined]
    # Flights have no allowed side: any flight is restricted.
    assert channels_allowed == set(Channel) - {Channel.AIRLINE}


def test_restriction_messages_are_chinese_for_the_clerk() -> None:
    for reason in RESTRICTIONS:
        assert reason.message
        assert any("\u4e00" <= c <= "\u9fff" for c in reason.message), reason.code


# --- train numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("G1234", "G1234", id="canonical"),
        pytest.param("g 1234", "G1234", id="lower-spaced"),
        pytest.param("Ｇ１２３４", "G1234", id="full-width"),
        pytest.param("\u3000d 3 0 1\u3000", "D301", id="ideographic-spaces"),
        pytest.param("\tc2001\n", "C2001", id="tab-newline"),
        pytest.param("k1", "K1", id="one-digit"),
        pytest.param("1461", "1461", id="no-letter"),
        pytest.param("Ｚ１９", "Z19", id="full-width-z"),
    ],
)
def test_train_numbers_normalise(raw: str, expected: str) -> None:
    assert normalize_train_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("X12", "not a train number", id="unknown-letter"),
        pytest.param("", "is empty", id="empty"),
        pytest.param(" \u3000 ", "is empty", id="only-spaces"),
        pytest.param("G12345", "not a train number", id="five-digits"),
        pytest.param("G", "not a train number", id="letter-only"),
        pytest.param("GD12", "not a train number", id="two-letters"),
        pytest.param("G12a", "not a train number", id="letter-after"),
        pytest.param("G-1234", "not a train number", id="hyphen"),
    ],
)
def test_bad_train_numbers_are_rejected(raw: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        normalize_train_number(raw)
    assert err.value.field == "purchase.rail.train_number"
    assert problem in err.value.problem


def test_normalised_lowercase_train_is_a_g_train() -> None:
    """``g 1234`` in a request is restricted exactly like G1234 once normalised."""
    ticket = RailTicket(normalize_train_number("g 1234"), RailSeat.SECOND_CLASS)
    reason = restriction_for(ticket, 0, DEFAULT)
    assert reason is not None and reason.code == "RAIL_G_TRAIN"


# --- invalid purchases ----------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "purchase", "amount_fen", "field", "problem"),
    [
        pytest.param(
            Channel.SHIP, ShipPassage(0), 0, "purchase.ship.cabin_class", "1 (first", id="cabin-0"
        ),
        pytest.param(
            Channel.SHIP, ShipPassage(-1), 0, "purchase.ship.cabin_class", "1 (first", id="cabin-m1"
        ),
        pytest.param(
            Channel.HOTEL, HotelStay(6, False), 0, "purchase.hotel.star_rating", "0 (unrated) to 5",
            id="star-6",
        ),
        pytest.param(
            Channel.HOTEL, HotelStay(-1, False), 0, "purchase.hotel.star_rating", "to 5",
            id="star-neg",
        ),
        pytest.param(
            Channel.TRAVEL, TravelBooking(TravelService.RATED_RESORT), 0, "amount_fen",
            "rated resort", id="resort-without-amount",
        ),
        pytest.param(
            Channel.TRAVEL, TravelBooking(TravelService.DOMESTIC), 0, "amount_fen",
            "domestic tour", id="domestic-tour-without-amount",
        ),
        pytest.param(
            Channel.INSURANCE, InsurancePolicy(True), 0, "amount_fen", "cash-value",
            id="cash-value-without-amount",
        ),
        pytest.param(
            Channel.AIRLINE, Flight("CA1234", "Y"), -1, "amount_fen", "negative",
            id="negative-amount",
        ),
    ],
)  # fmt: skip
def test_invalid_purchases_name_the_field(
    channel: Channel, purchase: Purchase, amount_fen: int, field: str, problem: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        validate(channel, purchase, amount_fen, PREFIX[channel])
    assert err.value.field == field
    assert problem in err.value.problem


@pytest.mark.parametrize("channel", list(Channel), ids=lambda c: c.name)
def test_purchase_of_another_channel_is_invalid(channel: Channel) -> None:
    for other, purchase in SAMPLE.items():
        if other is channel:
            validate(channel, purchase, 1, PREFIX[channel])
            continue
        with pytest.raises(InvalidInput) as err:
            validate(channel, purchase, 1, PREFIX[other])
        assert err.value.field == PREFIX[other]
        assert f"does not match channel {channel.name}" in err.value.problem


def test_every_channel_sells_one_purchase_type() -> None:
    assert set(PURCHASE_OF_CHANNEL) == set(Channel)
    assert len(set(PURCHASE_OF_CHANNEL.values())) == len(Channel)


def test_policy_describes_its_thresholds() -> None:
    """GetListStatus reports each threshold of the rule table with its value."""
    described = {name: value for name, value, _ in Policy(hotel_min_star=4).describe()}
    assert described["hotel_min_star"] == "4"
    assert described["resort_quota_fen"] == str(QUOTA)
    assert described["insurance_premium_threshold_fen"] == str(PREMIUM)
