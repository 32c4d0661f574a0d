"""A consumption-restriction order (XIANGAO) restricts by its own text, and an ALLOW's
first reason is never "no longer listed" while an entry is in force.

The order's text is the SPC rules on restricting high consumption, art. 3: "(六)旅游、
度假" outright and, by its second paragraph, every item on the organisation's legal
representative, principal, directly responsible persons and actual controller. The
memoranda's narrower travel rows (outbound group tours; spending in a rated resort or
on a domestic tour over a quota, the debtor alone) stay the rule for a SHIXIN listing.
Both restrict luxury renovation only (art. 3(三) as adopted: "新建、扩建、高档装修房屋").

Decisions through ``decide`` and ``judge`` (over ``FakeView``, as tests/test_decision.py),
then through a real server on a free port and a real channel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.decision import (
    ALLOW_ORDER,
    EXEMPTED,
    EXPIRED,
    LISTING_SUSPENDED,
    NAME_MISMATCH,
    NOT_RESTRICTED_CLASS,
    MatchOutcome,
    Query,
    Verdict,
    decide,
    decide_many,
    judge,
)
from shixin_check.domain.identity import normalize_name
from shixin_check.domain.index import ListedMatch
from shixin_check.domain.model import (
    NO_END,
    Channel,
    Decision,
    EntryStatus,
    Exemption,
    ListType,
    Role,
)
from shixin_check.domain.rules import (
    PURCHASE_OF_CHANNEL,
    REAL_ESTATE,
    TRAVEL_HOLIDAY,
    TRAVEL_OUTBOUND_GROUP,
    TRAVEL_RESORT_OVER_QUOTA,
    Purchase,
    RailSeat,
    RailTicket,
    RealEstateDeal,
    RealEstateKind,
    Reason,
    TravelBooking,
    TravelService,
)
from tests.conftest import RunningServer
from tests.listdata import ZHANG, org_entry, person_entry, rid, uscc, write_jsonl
from tests.test_decision import (
    ID_NUMBER,
    KEYER,
    LISTED_NAME,
    POLICY,
    SUBJECT_KEY,
    TODAY,
    FakeView,
    listed,
)

QUOTA = POLICY.resort_quota_fen
DOMESTIC = TravelBooking(TravelService.DOMESTIC)
RESORT = TravelBooking(TravelService.RATED_RESORT)
OUTBOUND = TravelBooking(TravelService.OUTBOUND_GROUP_TOUR)
RENOVATION = RealEstateDeal(RealEstateKind.ORDINARY_RENOVATION)
PROPERTY = RealEstateDeal(RealEstateKind.PROPERTY_PURCHASE)
G_TRAIN = RailTicket("G1234", RailSeat.SECOND_CLASS)
RELATED_ROLES = (
    Role.LEGAL_REPRESENTATIVE,
    Role.PRINCIPAL,
    Role.RESPONSIBLE_PERSON,
    Role.ACTUAL_CONTROLLER,
)
OTHER_NAME = KEYER.name_key(normalize_name("李四"))


def ask(purchase: Purchase, amount_fen: int = 0, name: str = LISTED_NAME) -> Query:
    """A check by our subject; the channel is the purchase's."""
    channel = next(c for c, t in PURCHASE_OF_CHANNEL.items() if type(purchase) is t)
    return Query(SUBJECT_KEY, name, ID_NUMBER, channel, purchase, amount_fen)


def order(entry_id: str = "X1", **changes: object) -> ListedMatch:
    """An active consumption-restriction order on our subject."""
    return listed(entry_id, list_type=ListType.XIANGAO, **changes)


def verdict_of(q: Query, *matches: ListedMatch) -> Verdict:
    return decide(FakeView({SUBJECT_KEY: list(matches)}), q, KEYER, POLICY, TODAY)


def active(*outcomes: tuple[ListedMatch, Reason]) -> tuple[MatchOutcome, ...]:
    """Entries in force, each with its own outcome (its restriction, or what let it by)."""
    return tuple(MatchOutcome(m, EntryStatus.ACTIVE, reason) for m, reason in outcomes)


# --- one list at a time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("purchase", "amount_fen"),
    [
        pytest.param(DOMESTIC, 0, id="domestic"),
        pytest.param(RESORT, 1, id="resort-under-quota"),
        pytest.param(RESORT, QUOTA, id="resort-at-quota"),
        pytest.param(RESORT, QUOTA + 1, id="resort-over-quota"),
    ],
)
@pytest.mark.parametrize("role", [Role.DEBTOR, *RELATED_ROLES], ids=lambda r: r.name)
def test_an_order_bars_travel_and_holidays_to_the_debtor_and_every_related_person(
    purchase: Purchase, amount_fen: int, role: Role
) -> None:
    match = order(role=role, organization_name="" if role is Role.DEBTOR else "某某贸易有限公司")
    verdict = verdict_of(ask(purchase, amount_fen), match)
    assert (verdict.decision, verdict.reasons) == (Decision.DENY, (TRAVEL_HOLIDAY,))
    assert verdict.matches == active((match, TRAVEL_HOLIDAY))


@pytest.mark.parametrize("role", [Role.DEBTOR, *RELATED_ROLES], ids=lambda r: r.name)
def test_an_order_bars_outbound_tours_under_their_own_code(role: Role) -> None:
    verdict = verdict_of(ask(OUTBOUND), order(role=role))
    assert (verdict.decision, verdict.reasons) == (Decision.DENY, (TRAVEL_OUTBOUND_GROUP,))


@pytest.mark.parametrize("role", [Role.DEBTOR, *RELATED_ROLES], ids=lambda r: r.name)
def test_an_order_bars_luxury_renovation_only_as_the_memoranda_do(role: Role) -> None:
    """Art. 3(三) as adopted reads 高档装修 (its 2009 draft's 装修房屋 was not kept)."""
    match = order(role=role)
    verdict = verdict_of(ask(RENOVATION), match)
    assert (verdict.decision, verdict.reasons) == (Decision.ALLOW, (NOT_RESTRICTED_CLASS,))
    luxury = verdict_of(ask(RealEstateDeal(RealEstateKind.LUXURY_RENOVATION)), match)
    assert (luxury.decision, luxury.reasons) == (Decision.DENY, (REAL_ESTATE,))
    assert verdict_of(ask(PROPERTY), match).reasons == (REAL_ESTATE,)


@pytest.mark.parametrize(
    ("purchase", "amount_fen"),
    [
        pytest.param(DOMESTIC, QUOTA, id="domestic-at-quota"),
        pytest.param(RESORT, QUOTA, id="resort-at-quota"),
        pytest.param(RENOVATION, 0, id="ordinary-renovation"),
    ],
)
@pytest.mark.parametrize("role", [Role.DEBTOR, *RELATED_ROLES], ids=lambda r: r.name)
def test_a_shixin_listing_still_leaves_them_open(
    purchase: Purchase, amount_fen: int, role: Role
) -> None:
    match = listed(role=role)
    verdict = verdict_of(ask(purchase, amount_fen), match)
    assert (verdict.decision, verdict.reasons) == (Decision.ALLOW, (NOT_RESTRICTED_CLASS,))
    assert verdict.matches == active((match, NOT_RESTRICTED_CLASS))


def test_a_shixin_quota_is_still_the_debtors_alone() -> None:
    q = ask(RESORT, QUOTA + 1)
    assert verdict_of(q, listed()).reasons == (TRAVEL_RESORT_OVER_QUOTA,)
    related = verdict_of(q, listed(role=Role.PRINCIPAL))
    assert (related.decision, related.reasons) == (Decision.ALLOW, (NOT_RESTRICTED_CLASS,))


# --- on both lists --------------------------------------------------------------------


def test_on_both_lists_the_order_denies_what_the_listing_leaves_open() -> None:
    shixin, xiangao = listed("S1"), order("X1")
    verdict = verdict_of(ask(DOMESTIC), shixin, xiangao)
    assert (verdict.decision, verdict.reasons) == (Decision.DENY, (TRAVEL_HOLIDAY,))
    assert verdict.matches == active((xiangao, TRAVEL_HOLIDAY))  # the entries that restrict, only


def test_on_both_lists_each_distinct_restriction_once_in_the_entries_order() -> None:
    shixin, xiangao = listed("S1"), order("X1")
    q = ask(RESORT, QUOTA + 1)
    both = verdict_of(q, shixin, xiangao)
    assert both.decision is Decision.DENY
    assert both.reasons == (TRAVEL_RESORT_OVER_QUOTA, TRAVEL_HOLIDAY)
    assert both.matches == active((shixin, TRAVEL_RESORT_OVER_QUOTA), (xiangao, TRAVEL_HOLIDAY))
    # SHIXIN first, however the index found them
    assert verdict_of(q, xiangao, shixin) == both
    same = verdict_of(ask(OUTBOUND), shixin, xiangao, order("X2"))
    assert same.reasons == (TRAVEL_OUTBOUND_GROUP,)
    assert len(same.matches) == 3
    # a related person of a SHIXIN organisation and the debtor of an order
    related = listed("S2", role=Role.ACTUAL_CONTROLLER)
    verdict = verdict_of(q, related, xiangao)
    assert verdict.reasons == (TRAVEL_HOLIDAY,)
    assert verdict.matches == active((xiangao, TRAVEL_HOLIDAY))


def test_an_exemption_lifts_the_order_of_the_entry_that_has_it() -> None:
    exempt = (Exemption(Channel.TRAVEL, TODAY - 1, TODAY + 1),)
    shixin, xiangao = listed("S1"), order("X1", exemptions=exempt)
    allowed = verdict_of(ask(DOMESTIC), shixin, xiangao)
    assert allowed.decision is Decision.ALLOW
    # the order's exemption first: a restriction applies, and only the court lifted it
    assert allowed.reasons == (EXEMPTED, NOT_RESTRICTED_CLASS)
    assert allowed.matches == active((xiangao, EXEMPTED), (shixin, NOT_RESTRICTED_CLASS))
    # an exemption on the SHIXIN entry lifts nothing the order bars
    denied = verdict_of(ask(DOMESTIC), listed("S1", exemptions=exempt), order("X1"))
    assert (denied.decision, denied.reasons) == (Decision.DENY, (TRAVEL_HOLIDAY,))
    # nor one for another channel
    other = (Exemption(Channel.RAIL, TODAY - 1, TODAY + 1),)
    assert verdict_of(ask(DOMESTIC), order(exemptions=other)).decision is Decision.DENY


def test_a_name_is_compared_with_each_restricting_entry() -> None:
    shixin, xiangao = listed("S1"), order("X1", name_key=OTHER_NAME)
    # only the order restricts, and its name differs: review, with that entry
    review = verdict_of(ask(DOMESTIC), shixin, xiangao)
    assert review.decision is Decision.REVIEW
    assert review.reasons == (TRAVEL_HOLIDAY, NAME_MISMATCH)
    assert review.matches == active((xiangao, TRAVEL_HOLIDAY))
    # both restrict, the listing's name matches: deny on it, with its reason alone
    q = ask(RESORT, QUOTA + 1)
    denied = verdict_of(q, shixin, xiangao)
    assert (denied.decision, denied.reasons) == (Decision.DENY, (TRAVEL_RESORT_OVER_QUOTA,))
    assert denied.matches == active((shixin, TRAVEL_RESORT_OVER_QUOTA))
    # neither name matches: review, every restriction named
    neither = verdict_of(q, listed("S1", name_key=OTHER_NAME), xiangao)
    assert neither.decision is Decision.REVIEW
    assert neither.reasons == (TRAVEL_RESORT_OVER_QUOTA, TRAVEL_HOLIDAY, NAME_MISMATCH)
    # no name given: the ID alone decides
    assert verdict_of(ask(DOMESTIC, name=""), shixin, xiangao).decision is Decision.DENY


# --- an ALLOW's reasons: an entry in force first -----------------------------------------


@pytest.mark.parametrize(
    ("gone", "lifted"),
    [
        pytest.param({"valid_until": TODAY - 1}, EXPIRED, id="expired"),
        pytest.param({"status": EntryStatus.SUSPENDED}, LISTING_SUSPENDED, id="suspended"),
    ],
)
def test_an_entry_in_force_comes_before_one_that_no_longer_applies(
    gone: dict[str, Any], lifted: object
) -> None:
    """A clerk reading the first reason must not read 名单已过有效期，不再限制 about a
    person still listed."""
    old, live = listed("E1", **gone), listed("E2")
    assert verdict_of(ask(DOMESTIC), old, live).reasons == (NOT_RESTRICTED_CLASS, lifted)
    exempt = listed("E3", exemptions=(Exemption(Channel.RAIL, TODAY, TODAY),))
    assert verdict_of(ask(G_TRAIN), old, exempt).reasons == (EXEMPTED, lifted)
    both = verdict_of(ask(G_TRAIN), old, listed("E2"), exempt)
    assert both.decision is Decision.DENY  # the live entry restricts: nothing lifted
    mixed = verdict_of(ask(DOMESTIC), old, exempt, live)
    assert mixed.reasons == (NOT_RESTRICTED_CLASS, lifted)
    # entries in force first, by entry among them; the first match goes with the first reason
    assert [o.match.entry_id for o in mixed.matches] == ["E2", "E3", "E1"]
    assert [o.reason for o in mixed.matches] == [NOT_RESTRICTED_CLASS] * 2 + [lifted]


def test_with_no_entry_in_force_a_suspended_listing_comes_before_an_expired_one() -> None:
    suspended, expired = (
        listed("E1", status=EntryStatus.SUSPENDED),
        listed("E2", valid_until=TODAY - 1),
    )
    for found in ((suspended, expired), (expired, suspended)):
        verdict = verdict_of(ask(G_TRAIN), *found)
        assert verdict.reasons == (LISTING_SUSPENDED, EXPIRED)
        assert verdict.matches == (
            MatchOutcome(suspended, EntryStatus.SUSPENDED, LISTING_SUSPENDED),
            MatchOutcome(expired, EntryStatus.EXPIRED, EXPIRED),
        )


def test_an_allow_reads_exempted_not_restricted_suspended_expired_each_once() -> None:
    """Whatever order the index gives the entries in: the reasons in ALLOW_ORDER, each
    once, and the matches likewise (as found among one reason), so the first match shown
    goes with the first reason. Person A of the review: a SHIXIN listing that leaves a
    domestic tour open and a XIANGAO order whose TRAVEL exemption lifted it read EXEMPTED
    first, never "not restricted" first."""
    exempt = (Exemption(Channel.TRAVEL, TODAY - 1, TODAY + 1),)
    found = [
        listed("S9", valid_until=TODAY - 1),  # expired
        listed("S1"),  # not restricted: a SHIXIN listing leaves domestic tours open
        order("X8", status=EntryStatus.SUSPENDED),
        order("X1", exemptions=exempt),  # the order restricts; its exemption lifts it
        listed("S2"),
        order("X7", valid_until=TODAY - 30),  # expired
        order("X2", exemptions=exempt),
    ]
    verdict = verdict_of(ask(DOMESTIC), *found)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (EXEMPTED, NOT_RESTRICTED_CLASS, LISTING_SUSPENDED, EXPIRED)
    assert [(o.match.entry_id, o.reason) for o in verdict.matches] == [
        ("X1", EXEMPTED), ("X2", EXEMPTED), ("S1", NOT_RESTRICTED_CLASS),
        ("S2", NOT_RESTRICTED_CLASS), ("X8", LISTING_SUSPENDED), ("S9", EXPIRED),
        ("X7", EXPIRED),
    ]  # fmt: skip
    for shuffled in (found[::-1], found[3:] + found[:3]):
        again = verdict_of(ask(DOMESTIC), *shuffled)
        assert again.reasons == verdict.reasons
        assert [o.reason for o in again.matches] == [o.reason for o in verdict.matches]
    # person A alone: the order's exemption, then the listing
    a = verdict_of(ask(DOMESTIC), found[1], found[3])
    assert a.reasons == (EXEMPTED, NOT_RESTRICTED_CLASS)
    assert [o.match.entry_id for o in a.matches] == ["X1", "S1"]


# --- property: what restricts is the match's list type --------------------------------------

PURCHASES = [
    (DOMESTIC, 1),
    (DOMESTIC, QUOTA + 1),
    (RESORT, 1),
    (RESORT, QUOTA + 1),
    (OUTBOUND, 0),
    (RENOVATION, 0),
    (PROPERTY, 0),
    (G_TRAIN, 0),
]


def restricted(m: ListedMatch, purchase: Purchase, amount_fen: int) -> bool:
    """The rule, written out: an order bars all travel, to everyone; a SHIXIN listing
    outbound tours, and resorts and domestic tours over the quota to the debtor alone;
    both luxury renovation, never an ordinary one."""
    xiangao = m.list_type is ListType.XIANGAO
    if isinstance(purchase, TravelBooking):
        if xiangao:
            return True
        if purchase.service in (TravelService.DOMESTIC, TravelService.RATED_RESORT):
            return amount_fen > QUOTA and m.role is Role.DEBTOR
        return True
    if isinstance(purchase, RealEstateDeal):
        return purchase.kind is not RealEstateKind.ORDINARY_RENOVATION
    return True


def allowed_by(m: ListedMatch, purchase: Purchase, amount_fen: int) -> Reason:
    """What lets ``purchase`` past ``m`` in an ALLOW (an exemption covers TRAVEL only)."""
    if m.valid_until < TODAY:
        return EXPIRED
    if m.status is EntryStatus.SUSPENDED:
        return LISTING_SUSPENDED
    return EXEMPTED if restricted(m, purchase, amount_fen) else NOT_RESTRICTED_CLASS


@st.composite
def matches(draw: st.DrawFn) -> ListedMatch:
    return listed(
        f"E{draw(st.integers(0, 10**6))}",
        list_type=draw(st.sampled_from(ListType)),
        status=draw(st.sampled_from([EntryStatus.ACTIVE, EntryStatus.SUSPENDED])),
        role=draw(st.sampled_from(Role)),
        valid_until=TODAY + draw(st.sampled_from([-1, 0, NO_END - TODAY])),
        exemptions=draw(st.sampled_from([(), (Exemption(Channel.TRAVEL, TODAY, TODAY),)])),
    )


@settings(deadline=None)  # correctness, not timing
@given(st.lists(matches(), min_size=1, max_size=5), st.sampled_from(PURCHASES))
def test_deny_iff_an_entry_in_force_restricts_by_its_own_list_type(
    found: list[ListedMatch], purchase: tuple[Purchase, int]
) -> None:
    bought, amount_fen = purchase
    q = ask(bought, amount_fen)
    in_force = [m for m in found if m.status is EntryStatus.ACTIVE and m.valid_until >= TODAY]
    barring = [
        m
        for m in in_force
        if restricted(m, bought, amount_fen)
        and not any(e.covers(q.channel, TODAY) for e in m.exemptions)
    ]
    verdict = verdict_of(q, *found)
    assert (verdict.decision is Decision.DENY) == bool(barring)
    in_order = sorted(found, key=lambda m: (m.list_type, m.entry_id, m.role))
    if barring:
        assert [o.match for o in verdict.matches] == [m for m in in_order if m in barring]
        assert len(set(verdict.reasons)) == len(verdict.reasons)
    else:
        # each entry with its own outcome, in ALLOW_ORDER (by entry within one), and
        # each reason once in the same order: the first match goes with the first reason
        expected = sorted(
            ((m, allowed_by(m, bought, amount_fen)) for m in in_order),
            key=lambda pair: ALLOW_ORDER.index(pair[1]),
        )
        assert [(o.match, o.reason) for o in verdict.matches] == expected
        assert verdict.reasons == tuple(dict.fromkeys(reason for _, reason in expected))
        first = verdict.reasons[0]
        assert first == verdict.matches[0].reason
        assert (first in (NOT_RESTRICTED_CLASS, EXEMPTED)) == bool(in_force)
    view = FakeView({SUBJECT_KEY: found})
    assert decide_many(view, [q, q], KEYER, POLICY, TODAY) == [verdict, verdict]
    assert judge(found, q, KEYER, POLICY, TODAY) == verdict


# --- through a real server and channel ------------------------------------------------------

SUN = rid("32010219780303005")  # under a consumption-restriction order
ORDER_ORG = uscc("91320102MA0000002")
RELATED = {  # the order's organisation's four related persons
    "LEGAL_REPRESENTATIVE": ("周强", rid("32010219800404006")),
    "PRINCIPAL": ("吴敏", rid("32010219810505007")),
    "RESPONSIBLE_PERSON": ("郑洁", rid("32010219820606008")),
    "ACTUAL_CONTROLLER": ("冯军", rid("32010219830707009")),
}
CHEN = rid("32010219840808000")  # SHIXIN in force; a past order expired


@pytest.fixture
def server(tmp_path: Path, serve: Callable[..., RunningServer]) -> RunningServer:
    rows = [
        person_entry("S1", ZHANG, "张伟"),
        person_entry("X1", SUN, "孙丽", list_type="XIANGAO", case_number="(2024)苏0102执7号"),
        org_entry(
            "X2",
            ORDER_ORG,
            "南京某某贸易有限公司",
            [(role, name, number) for role, (name, number) in RELATED.items()],
            list_type="XIANGAO",
            case_number="(2024)苏0102执8号",
        ),
        person_entry(
            "X3",
            CHEN,
            "陈刚",
            list_type="XIANGAO",
            valid_until="2024-12-31",
            case_number="(2023)苏0102执9号",
        ),  # fmt: skip
        person_entry("S3", CHEN, "陈刚", case_number="(2024)苏0102执10号"),
    ]
    return serve(write_jsonl(tmp_path / "list.jsonl", rows))


def travel(stub: Any, number: str, name: str, service: str = "DOMESTIC",
           amount_fen: int = 1) -> pb.CheckResponse:  # fmt: skip
    request = build_request("TRAVEL", id_number=number, name=name,
                            purchase={"service": service}, amount_fen=amount_fen)  # fmt: skip
    response: pb.CheckResponse = stub.CheckConsumption(request, timeout=10)
    return response


def codes(answer: pb.CheckResponse) -> tuple[str, list[str]]:
    return pb.Decision.Name(answer.decision), [r.code for r in answer.reasons]


def test_a_domestic_tour_through_the_server(server: RunningServer) -> None:
    stub = server.stub()
    person = travel(stub, SUN, "孙丽")
    assert codes(person) == ("DENY", ["TRAVEL_HOLIDAY"])
    assert "旅游、度假" in person.reasons[0].message
    assert [(m.list_type, m.role) for m in person.matches] == [(pb.XIANGAO, pb.ROLE_DEBTOR)]
    for role, (name, number) in RELATED.items():
        for service, amount in (("DOMESTIC", 1), ("RATED_RESORT", 1), ("RATED_RESORT", 10**7)):
            answer = travel(stub, number, name, service, amount)
            assert codes(answer) == ("DENY", ["TRAVEL_HOLIDAY"]), (role, service, amount)
            [m] = answer.matches
            assert (pb.Role.Name(m.role), m.organization_name, m.list_type) == (
                f"ROLE_{role}", "南京某某贸易有限公司", pb.XIANGAO,
            )  # fmt: skip
    shixin = travel(stub, ZHANG, "张伟", amount_fen=QUOTA)
    assert codes(shixin) == ("ALLOW", ["NOT_RESTRICTED_CLASS"])
    assert [m.list_type for m in shixin.matches] == [pb.SHIXIN]
    # a domestic tour is spending in a tourism enterprise: over the quota, the debtor
    # of a SHIXIN listing is barred too (seeds 000 and 001 §(七)3)
    over = travel(stub, ZHANG, "张伟", amount_fen=QUOTA + 1)
    assert codes(over) == ("DENY", ["TRAVEL_RESORT_OVER_QUOTA"])
    missing = build_request(
        "TRAVEL", id_number=ZHANG, name="张伟", purchase={"service": "DOMESTIC"}
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.CheckConsumption(missing, timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "amount_fen: is required for a domestic tour" in (refused.value.details() or "")


def test_an_ordinary_renovation_through_the_server(server: RunningServer) -> None:
    def renovate(number: str, name: str) -> pb.CheckResponse:
        request = build_request("REAL_ESTATE", id_number=number, name=name,
                                purchase={"kind": "ORDINARY_RENOVATION"})  # fmt: skip
        response: pb.CheckResponse = server.stub().CheckConsumption(request, timeout=10)
        return response

    assert codes(renovate(SUN, "孙丽")) == ("ALLOW", ["NOT_RESTRICTED_CLASS"])
    assert codes(renovate(ZHANG, "张伟")) == ("ALLOW", ["NOT_RESTRICTED_CLASS"])


def test_a_listed_person_is_not_told_first_that_the_listing_expired(
    server: RunningServer,
) -> None:
    answer = travel(server.stub(), CHEN, "陈刚")
    assert codes(answer) == ("ALLOW", ["NOT_RESTRICTED_CLASS", "EXPIRED"])
    assert sorted((m.list_type, m.status) for m in answer.matches) == [
        (pb.SHIXIN, pb.ACTIVE), (pb.XIANGAO, pb.EXPIRED),
    ]  # fmt: skip


def test_the_same_content_answers_in_one_order_however_it_arrived(
    tmp_path: Path, serve: Callable[..., RunningServer]
) -> None:
    """A delta's re-LIST of an entry put it after the person's other entries, so the
    snapshot and delta answered TRAVEL_HOLIDAY first where the same list written whole
    answered TRAVEL_RESORT_OVER_QUOTA first: matches and reasons now come SHIXIN first,
    then by entry, from either."""
    shixin = person_entry("E1", ZHANG, "张伟")
    order = person_entry("E2", ZHANG, "张伟", list_type="XIANGAO", case_number="(2024)苏0102执7号")
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", [header_row(0), shixin, order])
    write_jsonl(feed / "delta-0001.jsonl", [{"seq": 1, "op": "LIST", "entry": shixin}])
    whole = tmp_path / "whole.jsonl"
    write_jsonl(whole, [header_row(1), order, shixin])  # the file's order reversed too
    answers = []
    for source in (feed, whole):
        answer = travel(serve(source).stub(), ZHANG, "张伟", "RATED_RESORT", QUOTA + 1)
        answers.append((codes(answer), [m.entry_id for m in answer.matches]))
    expected = (("DENY", ["TRAVEL_RESORT_OVER_QUOTA", "TRAVEL_HOLIDAY"]), ["E1", "E2"])
    assert answers == [expected, expected]


def header_row(includes_seq: int) -> dict[str, Any]:
    return {"snapshot": {"includes_seq": includes_seq, "published_at": "2026-11-28T09:00:00+08:00"}}


@settings(deadline=None)
@given(st.permutations(range(4)))
def test_judge_answers_alike_whatever_order_the_index_found_them(order: list[int]) -> None:
    found = [
        listed("E2", list_type=ListType.XIANGAO),
        listed("E1"),
        listed("E3", role=Role.LEGAL_REPRESENTATIVE),
        listed("E0", list_type=ListType.XIANGAO, role=Role.PRINCIPAL),
    ]
    q = ask(RESORT, QUOTA + 1)
    expected = judge(found, q, KEYER, POLICY, TODAY)
    assert judge([found[i] for i in order], q, KEYER, POLICY, TODAY) == expected
    assert [o.match.entry_id for o in expected.matches] == ["E1", "E0", "E2"]
