"""Decisions at check time: ``decide`` and ``judge`` over a fake index view.

The index itself has its own contract suite against the real backends; here a
``FakeView`` stands in for it, since the decision layer only needs
``might_contain`` and ``look_up``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin_check.domain.decision import (
    ALLOW_ORDER,
    EXEMPTED,
    EXPIRED,
    INDEX_UNAVAILABLE,
    LISTING_SUSPENDED,
    NAME_MISMATCH,
    NOT_LISTED,
    NOT_RESTRICTED_CLASS,
    VERDICT_NOT_LISTED,
    MatchOutcome,
    Query,
    Verdict,
    decide,
    decide_many,
    judge,
)
from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.identity import IdType, mask_id, normalize_name, resident_id_check_char
from shixin_check.domain.index import Counts, ListedMatch, VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import (
    NO_END,
    Channel,
    Decision,
    EntryStatus,
    Exemption,
    ListType,
    Role,
    day_number,
)
from shixin_check.domain.rules import (
    AIR_TRAVEL,
    RAIL_G_TRAIN,
    Flight,
    Policy,
    Purchase,
    RailSeat,
    RailTicket,
)

TODAY = day_number(dt.date(2025, 6, 15))
POLICY = Policy()
KEYER = SubjectKeyer(b"test-secret-for-decisions")

FIRST17 = "110105" + "19900101" + "123"
ID_NUMBER = FIRST17 + resident_id_check_char(FIRST17)
SUBJECT_KEY = KEYER.subject_key(IdType.RESIDENT_ID, ID_NUMBER)
LISTED_NAME = "张三"

G_TRAIN = RailTicket("G1234", RailSeat.SECOND_CLASS)  # restricted: RAIL_G_TRAIN
D_SECOND = RailTicket("D301", RailSeat.SECOND_CLASS)  # not restricted
FLIGHT = Flight("CA1234", "Y")  # restricted: AIR_TRAVEL


class FakeView:
    """A ``ListView`` over plain Python data, for testing the layer above the index.

    ``entries`` maps a subject key to the matches ``look_up`` returns;
    ``bloom`` is the set of keys ``might_contain`` admits, by default exactly
    the keys of ``entries``. A key in ``bloom`` but not in ``entries`` is a
    Bloom false positive. ``look_ups`` counts calls to ``look_up``, so a test
    can show that a cleared subject never reaches the index (``look_up_many``
    counts one per key).
    """

    def __init__(
        self,
        entries: dict[int, list[ListedMatch]] | None = None,
        bloom: set[int] | None = None,
    ) -> None:
        self.entries = entries or {}
        self.bloom = set(self.entries) if bloom is None else bloom
        self.look_ups = 0

    @property
    def info(self) -> VersionInfo:
        return VersionInfo("fake-1", "test", 0.0, 0.0, 0, Counts((), len(self.entries)))

    def might_contain(self, key: int) -> bool:
        return key in self.bloom

    def look_up(self, key: int) -> Sequence[ListedMatch]:
        self.look_ups += 1
        return tuple(self.entries.get(key, ()))

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        return [self.look_up(key) for key in keys]


def listed(entry_id: str = "E1", **changes: object) -> ListedMatch:
    """An active SHIXIN entry on our subject, named 张三, open-ended; ``changes`` override."""
    match = ListedMatch(
        entry_id=entry_id,
        list_type=ListType.SHIXIN,
        status=EntryStatus.ACTIVE,
        role=Role.DEBTOR,
        name_key=KEYER.name_key(normalize_name(LISTED_NAME)),
        case_number=f"(2024)京0105执{entry_id}号",
        court="北京市朝阳区人民法院",
        organization_name="",
        masked_id=mask_id(ID_NUMBER),
        listed_on=TODAY - 100,
        valid_until=NO_END,
        exemptions=(),
    )
    return match._replace(**changes)


def query(
    purchase: Purchase = G_TRAIN, name: str = LISTED_NAME, channel: Channel | None = None
) -> Query:
    """A check by our subject; the channel follows from the purchase unless given."""
    if channel is None:
        channel = Channel.AIRLINE if isinstance(purchase, Flight) else Channel.RAIL
    return Query(
        subject_key=SUBJECT_KEY,
        name=name,
        id_number=ID_NUMBER,
        channel=channel,
        purchase=purchase,
        amount_fen=0,
    )


def check(*matches: ListedMatch, q: Query | None = None, today: int = TODAY) -> Verdict:
    """``decide`` against a view listing our subject with ``matches``."""
    view = FakeView({SUBJECT_KEY: list(matches)})
    return decide(view, q or query(), KEYER, POLICY, today)


# --- not listed ---------------------------------------------------------------


def test_unlisted_subject_is_cleared_without_an_index_look_up() -> None:
    view = FakeView({SUBJECT_KEY + 1: [listed()]})
    verdict = decide(view, query(), KEYER, POLICY, TODAY)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_LISTED,)
    assert verdict.matches == ()
    assert not verdict.hit
    assert view.look_ups == 0


def test_bloom_false_positive_is_not_listed() -> None:
    view = FakeView({}, bloom={SUBJECT_KEY})
    verdict = decide(view, query(), KEYER, POLICY, TODAY)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_LISTED,)
    assert verdict.matches == ()
    assert view.look_ups == 1


# --- deny and its reasons -----------------------------------------------------


def test_active_entry_denies_a_restricted_purchase() -> None:
    match = listed()
    verdict = check(match)
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.ACTIVE, RAIL_G_TRAIN),)
    assert verdict.hit


def test_xiangao_list_restricts_like_shixin() -> None:
    match = listed(list_type=ListType.XIANGAO)
    verdict = check(match, q=query(FLIGHT))
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (AIR_TRAVEL,)
    assert verdict.matches[0].match.list_type is ListType.XIANGAO


def test_listed_subject_may_buy_an_unrestricted_class() -> None:
    match = listed()
    verdict = check(match, q=query(D_SECOND))
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_RESTRICTED_CLASS,)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.ACTIVE, NOT_RESTRICTED_CLASS),)
    assert verdict.hit  # still logged: a listed subject was checked


def test_related_person_is_denied_in_role_for_the_organisation() -> None:
    match = listed(role=Role.LEGAL_REPRESENTATIVE, organization_name="某某科技有限公司")
    verdict = check(match)
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)
    (outcome,) = verdict.matches
    assert outcome.match.role is Role.LEGAL_REPRESENTATIVE
    assert outcome.match.organization_name == "某某科技有限公司"


# --- lifecycle ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("valid_until", "decision"),
    [
        pytest.param(TODAY - 1, Decision.ALLOW, id="yesterday"),
        pytest.param(TODAY - 400, Decision.ALLOW, id="last-year"),
        pytest.param(TODAY, Decision.DENY, id="today-still-restricts"),
        pytest.param(TODAY + 1, Decision.DENY, id="tomorrow"),
        pytest.param(NO_END, Decision.DENY, id="no-end"),
    ],
)
def test_expiry(valid_until: int, decision: Decision) -> None:
    match = listed(valid_until=valid_until)
    verdict = check(match)
    assert verdict.decision is decision
    if decision is Decision.ALLOW:
        assert verdict.reasons == (EXPIRED,)
        assert verdict.matches == (MatchOutcome(match, EntryStatus.EXPIRED, EXPIRED),)


def test_suspended_listing_is_not_applied() -> None:
    match = listed(status=EntryStatus.SUSPENDED)
    verdict = check(match)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (LISTING_SUSPENDED,)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.SUSPENDED, LISTING_SUSPENDED),)


@pytest.mark.parametrize(
    ("first", "last"),
    [
        pytest.param(TODAY, TODAY, id="today-only"),
        pytest.param(TODAY - 5, TODAY, id="ends-today"),
        pytest.param(TODAY, TODAY + 5, id="starts-today"),
        pytest.param(TODAY - 5, TODAY + 5, id="around-today"),
    ],
)
def test_exemption_for_the_channel_covering_today_allows(first: int, last: int) -> None:
    match = listed(exemptions=(Exemption(Channel.RAIL, first, last),))
    verdict = check(match)
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (EXEMPTED,)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.ACTIVE, EXEMPTED),)


@pytest.mark.parametrize(
    ("train", "seat"),
    [("K1", RailSeat.HARD_SEAT), ("K1", RailSeat.HARD_SLEEPER), ("D301", RailSeat.SECOND_CLASS)],
)
def test_an_exemption_is_not_named_for_a_purchase_nothing_restricts(
    train: str, seat: RailSeat
) -> None:
    """A hard seat needs no court's permission: the clerk was told 经人民法院准许... and
    the quarterly report counted it as an exemption relied on."""
    match = listed(exemptions=(Exemption(Channel.RAIL, TODAY - 5, TODAY + 5),))
    verdict = check(match, q=query(RailTicket(train, seat)))
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_RESTRICTED_CLASS,)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.ACTIVE, NOT_RESTRICTED_CLASS),)


@pytest.mark.parametrize(
    "exemption",
    [
        pytest.param(Exemption(Channel.AIRLINE, TODAY - 5, TODAY + 5), id="other-channel"),
        pytest.param(Exemption(Channel.RAIL, TODAY - 10, TODAY - 1), id="ended-yesterday"),
        pytest.param(Exemption(Channel.RAIL, TODAY + 1, TODAY + 10), id="starts-tomorrow"),
    ],
)
def test_exemption_that_does_not_cover_the_purchase_does_not_help(exemption: Exemption) -> None:
    match = listed(exemptions=(exemption,))
    verdict = check(match)
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)


def test_suspended_and_active_entries_deny_on_the_active_one_only() -> None:
    suspended = listed("E1", status=EntryStatus.SUSPENDED)
    active = listed("E2")
    verdict = check(suspended, active)
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)
    assert verdict.matches == (MatchOutcome(active, EntryStatus.ACTIVE, RAIL_G_TRAIN),)


def test_every_active_entry_is_in_the_denial() -> None:
    first, second = listed("E1"), listed("E2", list_type=ListType.XIANGAO)
    verdict = check(first, second)
    assert verdict.decision is Decision.DENY
    assert [o.match.entry_id for o in verdict.matches] == ["E1", "E2"]


def test_all_matches_lifted_allow_with_each_lifting_reason_once() -> None:
    matches = (
        listed("E1", valid_until=TODAY - 1),
        listed("E2", status=EntryStatus.SUSPENDED),
        listed("E3", valid_until=TODAY - 30),
        listed("E4", exemptions=(Exemption(Channel.RAIL, TODAY, TODAY),)),
        listed("E5", status=EntryStatus.SUSPENDED),
    )
    verdict = check(*matches)
    assert verdict.decision is Decision.ALLOW
    # the entry in force (E4, exempted) first, then suspended, then expired; the
    # matches likewise (as found within one reason): the first goes with the first reason
    assert verdict.reasons == (EXEMPTED, LISTING_SUSPENDED, EXPIRED)
    assert [o.match.entry_id for o in verdict.matches] == ["E4", "E2", "E5", "E1", "E3"]
    assert [(o.status, o.reason) for o in verdict.matches] == [
        (EntryStatus.ACTIVE, EXEMPTED),
        (EntryStatus.SUSPENDED, LISTING_SUSPENDED),
        (EntryStatus.SUSPENDED, LISTING_SUSPENDED),
        (EntryStatus.EXPIRED, EXPIRED),
        (EntryStatus.EXPIRED, EXPIRED),
    ]


def test_unrestricted_purchase_lists_not_restricted_class_beside_other_reasons() -> None:
    verdict = check(
        listed("E1"), listed("E2", status=EntryStatus.SUSPENDED), listed("E3"), q=query(D_SECOND)
    )
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_RESTRICTED_CLASS, LISTING_SUSPENDED)
    assert len(verdict.matches) == 3


# --- names --------------------------------------------------------------------


def test_other_name_on_a_listed_id_is_for_review() -> None:
    match = listed()
    verdict = check(match, q=query(name="李四"))
    assert verdict.decision is Decision.REVIEW
    assert verdict.reasons == (RAIL_G_TRAIN, NAME_MISMATCH)
    assert verdict.matches == (MatchOutcome(match, EntryStatus.ACTIVE, RAIL_G_TRAIN),)


def test_name_mismatch_on_an_unrestricted_purchase_is_allowed() -> None:
    verdict = check(listed(), q=query(D_SECOND, name="李四"))
    assert verdict.decision is Decision.ALLOW
    assert verdict.reasons == (NOT_RESTRICTED_CLASS,)


@pytest.mark.parametrize(
    ("listed_name", "given"),
    [
        pytest.param("张三", "张 三", id="space"),
        pytest.param("张三", "\u3000张三\u3000", id="ideographic-space"),
        pytest.param("阿依古丽·买买提", "阿依古丽•买买提", id="bullet-dot"),
        pytest.param("阿依古丽·买买提", "阿依古丽・买买提", id="katakana-dot"),
        pytest.param("阿依古丽·买买提", "阿依古丽･买买提", id="half-width-katakana-dot"),
        pytest.param("阿依古丽·买买提", "阿依古丽 ∙ 买买提", id="bullet-operator-spaced"),
        pytest.param("阿依古丽·买买提", "阿依古丽.买买提", id="ascii-full-stop"),
        pytest.param("阿依古丽.买买提", "阿依古丽·买买提", id="ascii-full-stop-listed"),
        pytest.param("Zhang San", "ＺＨＡＮＧ　ＳＡＮ", id="full-width-latin"),
        pytest.param("Zhang San", "zhangsan", id="latin-case"),
    ],
)
def test_name_written_differently_is_the_same_name(listed_name: str, given: str) -> None:
    match = listed(name_key=KEYER.name_key(normalize_name(listed_name)))
    verdict = check(match, q=query(name=given))
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)


def test_name_not_given_denies() -> None:
    verdict = check(listed(), q=query(name=""))
    assert verdict.decision is Decision.DENY
    assert verdict.reasons == (RAIL_G_TRAIN,)


@pytest.mark.parametrize("blank", [" ", "\u3000", " \t "], ids=["space", "ideographic", "mixed"])
def test_name_of_only_spaces_is_no_name_and_denies(blank: str) -> None:
    verdict = check(listed(), q=query(name=blank))
    assert verdict.decision is Decision.DENY


def test_entry_without_a_recorded_name_denies_any_name() -> None:
    verdict = check(listed(name_key=0), q=query(name="李四"))
    assert verdict.decision is Decision.DENY


def test_deny_carries_only_the_entries_whose_name_matches() -> None:
    ours, others = listed("E1"), listed("E2", name_key=KEYER.name_key(normalize_name("李四")))
    verdict = check(ours, others)
    assert verdict.decision is Decision.DENY
    assert verdict.matches == (MatchOutcome(ours, EntryStatus.ACTIVE, RAIL_G_TRAIN),)


# --- judge directly -----------------------------------------------------------


def test_judge_accepts_a_list_of_matches() -> None:
    verdict = judge([listed()], query(), KEYER, POLICY, TODAY)
    assert verdict.decision is Decision.DENY


def test_decide_many_answers_each_query_as_decide_does() -> None:
    """Batches: unlisted, false positive, denied, allowed and review, in request order."""
    other_key = SUBJECT_KEY + 1
    view = FakeView(
        {SUBJECT_KEY: [listed()], other_key: [listed("E9", status=EntryStatus.SUSPENDED)]},
        bloom={SUBJECT_KEY, other_key, SUBJECT_KEY + 2},
    )
    queries = [
        query(),
        query(D_SECOND),
        query(name="李四"),
        query()._replace(subject_key=other_key),
        query()._replace(subject_key=SUBJECT_KEY + 2),  # Bloom false positive
        query()._replace(subject_key=SUBJECT_KEY + 3),  # cleared by the Bloom filter
    ]
    verdicts = decide_many(view, queries, KEYER, POLICY, TODAY)
    assert [v.decision for v in verdicts] == [
        Decision.DENY,
        Decision.ALLOW,
        Decision.REVIEW,
        Decision.ALLOW,
        Decision.ALLOW,
        Decision.ALLOW,
    ]
    assert verdicts == [decide(view, q, KEYER, POLICY, TODAY) for q in queries]
    assert view.look_ups == 5 + 5  # the batch, then decide one by one: never the cleared key


# --- a second key: the number under the identity it plainly is --------------------

ALSO_KEY = KEYER.subject_key(IdType.PASSPORT, ID_NUMBER)  # the key the request's type gives


def mistyped(name: str = LISTED_NAME) -> Query:
    """Our subject's resident ID sent as PASSPORT: looked up as given, and as a resident ID."""
    return query(name=name)._replace(subject_key=ALSO_KEY, also_keys=(SUBJECT_KEY,))


def test_a_listed_resident_id_sent_as_a_passport_is_not_let_through() -> None:
    view = FakeView({SUBJECT_KEY: [listed()]})
    denied = decide(view, mistyped(), KEYER, POLICY, TODAY)
    assert (denied.decision, denied.reasons) == (Decision.DENY, (RAIL_G_TRAIN,))
    assert [o.match.entry_id for o in denied.matches] == ["E1"]
    review = decide(view, mistyped("李四"), KEYER, POLICY, TODAY)
    assert review.decision is Decision.REVIEW
    assert view.look_ups == 2  # only the key the Bloom filter admits is looked up


def test_an_unlisted_number_under_either_key_stays_not_listed() -> None:
    view = FakeView({SUBJECT_KEY + 7: [listed()]})
    verdict = decide(view, mistyped(), KEYER, POLICY, TODAY)
    assert verdict.reasons == (NOT_LISTED,) and view.look_ups == 0


def test_entries_under_both_keys_are_judged_together() -> None:
    view = FakeView({SUBJECT_KEY: [listed("E1")], ALSO_KEY: [listed("E2")]})
    verdict = decide(view, mistyped(), KEYER, POLICY, TODAY)
    assert verdict.decision is Decision.DENY
    assert sorted(o.match.entry_id for o in verdict.matches) == ["E1", "E2"]


class UnreachableView(FakeView):
    """An index whose look-ups fail, as Redis down would."""

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        raise IndexUnavailable("redis down")


def test_a_second_key_that_cannot_be_confirmed_is_never_a_silent_allow() -> None:
    view = UnreachableView({}, bloom={SUBJECT_KEY})
    verdict = decide(view, mistyped(), KEYER, POLICY, TODAY)
    assert verdict.reasons == (INDEX_UNAVAILABLE,)
    assert decide_many(view, [query(), mistyped()], KEYER, POLICY, TODAY)[1] == verdict


def test_decide_many_looks_up_second_keys_as_decide_does() -> None:
    view = FakeView({SUBJECT_KEY: [listed()], SUBJECT_KEY + 1: [listed("E2")]})
    queries = [
        mistyped(),
        query()._replace(subject_key=SUBJECT_KEY + 5),  # unlisted
        mistyped("李四"),
        query()._replace(subject_key=SUBJECT_KEY + 1, also_keys=(SUBJECT_KEY,)),  # both listed
    ]
    verdicts = decide_many(view, queries, KEYER, POLICY, TODAY)
    assert [v.decision for v in verdicts] == [
        Decision.DENY, Decision.ALLOW, Decision.REVIEW, Decision.DENY,
    ]  # fmt: skip
    assert verdicts == [decide(view, q, KEYER, POLICY, TODAY) for q in queries]


# --- two more keys: a number that reads as a resident ID and as a USCC ---------------

ORG_KEY = KEYER.subject_key(None, ID_NUMBER)  # the same number in the USCC key space


def read_both_ways(name: str = LISTED_NAME) -> Query:
    """A number sent as PASSPORT that is a resident ID and a USCC at once: looked up
    as given, as the resident ID and as the organisation."""
    return query(name=name)._replace(subject_key=ALSO_KEY, also_keys=(SUBJECT_KEY, ORG_KEY))


def test_the_second_reading_is_looked_up_when_the_first_is_not_listed() -> None:
    view = FakeView({ORG_KEY: [listed("O1")]})
    verdict = decide(view, read_both_ways(), KEYER, POLICY, TODAY)
    assert (verdict.decision, verdict.reasons) == (Decision.DENY, (RAIL_G_TRAIN,))
    assert [o.match.entry_id for o in verdict.matches] == ["O1"]
    assert view.look_ups == 1  # only the key the filter admits
    assert decide_many(view, [query(), read_both_ways()], KEYER, POLICY, TODAY)[1] == verdict


def test_entries_under_every_reading_are_judged_together() -> None:
    view = FakeView(
        {ALSO_KEY: [listed("E0")], SUBJECT_KEY: [listed("E1")], ORG_KEY: [listed("O1")]}
    )
    verdict = decide(view, read_both_ways(), KEYER, POLICY, TODAY)
    assert verdict.decision is Decision.DENY
    assert [o.match.entry_id for o in verdict.matches] == ["E0", "E1", "O1"]  # keys in order
    queries = [read_both_ways(), query()._replace(subject_key=SUBJECT_KEY + 9), read_both_ways()]
    assert decide_many(view, queries, KEYER, POLICY, TODAY) == [
        decide(view, q, KEYER, POLICY, TODAY) for q in queries
    ]


def test_a_further_reading_that_cannot_be_confirmed_is_never_a_silent_allow() -> None:
    view = UnreachableView({}, bloom={ORG_KEY})
    verdict = decide(view, read_both_ways(), KEYER, POLICY, TODAY)
    assert verdict.reasons == (INDEX_UNAVAILABLE,)
    assert decide_many(view, [query(), read_both_ways()], KEYER, POLICY, TODAY) == [
        VERDICT_NOT_LISTED, verdict,
    ]  # fmt: skip


# --- property -----------------------------------------------------------------

PURCHASES = [
    (G_TRAIN, Channel.RAIL, True),
    (D_SECOND, Channel.RAIL, False),
    (FLIGHT, Channel.AIRLINE, True),
]

EXEMPTIONS = st.sampled_from(
    [
        (),
        (Exemption(Channel.RAIL, TODAY - 3, TODAY + 3),),
        (Exemption(Channel.AIRLINE, TODAY, TODAY),),
        (Exemption(Channel.RAIL, TODAY - 9, TODAY - 1),),
        (Exemption(Channel.AIRLINE, TODAY + 1, TODAY + 9),),
        (Exemption(Channel.RAIL, TODAY - 9, TODAY - 1), Exemption(Channel.AIRLINE, TODAY, TODAY)),
    ]
)


@st.composite
def matches(draw: st.DrawFn) -> ListedMatch:
    """A match in a random lifecycle state: status, expiry, exemptions, name."""
    return listed(
        f"E{draw(st.integers(0, 10**6))}",
        list_type=draw(st.sampled_from(ListType)),
        status=draw(st.sampled_from([EntryStatus.ACTIVE, EntryStatus.SUSPENDED])),
        role=draw(st.sampled_from(Role)),
        valid_until=TODAY + draw(st.sampled_from([-30, -1, 0, 1, NO_END - TODAY])),
        exemptions=draw(EXEMPTIONS),
        name_key=draw(st.sampled_from([0, KEYER.name_key(normalize_name(LISTED_NAME))])),
    )


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(
    st.lists(matches(), min_size=1, max_size=6),
    st.sampled_from(PURCHASES),
    st.sampled_from(["", LISTED_NAME, "张 三"]),
)
def test_deny_iff_some_match_is_active_unexpired_not_exempt_and_purchase_restricted(
    found: list[ListedMatch], purchase: tuple[Purchase, Channel, bool], name: str
) -> None:
    bought, channel, restricted = purchase
    # an answer's matches: SHIXIN first, then by entry and role, however they were found
    found_in_order = sorted(found, key=lambda m: (m.list_type, m.entry_id, m.role))
    live = [
        m
        for m in found_in_order
        if m.status is EntryStatus.ACTIVE
        and m.valid_until >= TODAY
        and not any(
            e.channel is channel and e.first_day <= TODAY <= e.last_day for e in m.exemptions
        )
    ]
    verdict = decide(
        FakeView({SUBJECT_KEY: found}), query(bought, name, channel), KEYER, POLICY, TODAY
    )
    assert (verdict.decision is Decision.DENY) == (restricted and bool(live))
    assert verdict.decision is not Decision.REVIEW  # the name given always matches
    if verdict.decision is Decision.DENY:
        assert [o.match for o in verdict.matches] == live
        assert all(o.status is EntryStatus.ACTIVE for o in verdict.matches)
    else:
        passed = [
            EXPIRED if m.valid_until < TODAY
            else LISTING_SUSPENDED if m.status is EntryStatus.SUSPENDED
            else EXEMPTED if restricted and m not in live  # an exemption lifts a restriction
            else NOT_RESTRICTED_CLASS  # nothing to lift: a hard seat needs no permission
            for m in found_in_order
        ]  # fmt: skip
        # each match with its own reason, in ALLOW_ORDER (by entry within one reason)
        expected = sorted(
            zip(found_in_order, passed, strict=True), key=lambda p: ALLOW_ORDER.index(p[1])
        )
        assert [(o.match, o.reason) for o in verdict.matches] == expected
        assert verdict.reasons == tuple(dict.fromkeys(reason for _, reason in expected))
        assert NOT_LISTED not in verdict.reasons
