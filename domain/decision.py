"""Decisions: may this subject make this purchase today, and why.

``decide`` is the whole policy at check time, with no transport or storage in
it: the Bloom prefilter clears unlisted subjects, then every entry matching
the subject is judged by its lifecycle (expired, suspended, exempted for the
channel) and the purchase against the rule table.

- ALLOW, NOT_LISTED: no entry names the subject.
- ALLOW with EXEMPTED / NOT_RESTRICTED_CLASS / LISTING_SUSPENDED / EXPIRED:
  listed, but nothing restricts this purchase today. The reasons come in that
  order, each once, and the matches likewise (``ALLOW_ORDER``), so the first
  match goes with the first reason: an entry in force first, and of those one
  whose restriction only a court's exemption lifted (a clerk reading only the
  first line is not told "not restricted" of a person under an order, nor "no
  longer listed" of a person still listed).
- DENY with the restriction's code: an active, non-exempt entry restricts it;
  the answer carries every such entry. What restricts depends on the entry's
  list type (``restrictions_for``: a XIANGAO order restricts all travel and any
  renovation, a SHIXIN listing less), so a subject on both lists is denied when
  either restricts, with the entries that do and each distinct restriction once.
- REVIEW: such an entry exists but the name given does not match the one
  listed (after normalisation), like an airline watchlist's selectee.

A query may carry more keys (``also_keys``): the number under each identity
it plainly is when the caller's id type says otherwise (a resident ID sent as
PASSPORT, a USCC sent as a person's document, a number that reads as both:
``identity.other_readings``). The entries found under any of its keys are
judged together, so a mistyped id type never hides a listing.

Each match carries its own outcome (``MatchOutcome.reason``): its restriction,
or what let the purchase past it. An answer's codes are per answer, and one
answer may mix entries (a SHIXIN listing that does not restrict a domestic tour
beside a XIANGAO order whose exemption lifted it); the hit log writes each
match's outcome so the quarterly feedback counts each case by its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.identity import mask_id, normalize_name
from shixin_check.domain.index import ListedMatch, ListView
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import Channel, Decision, EntryStatus, ListType, Role
from shixin_check.domain.rules import DEBTOR_ONLY, Policy, Purchase, Reason, restrictions_for

NOT_LISTED = Reason("NOT_LISTED", "未在失信被执行人及限制消费人员名单中")
NOT_RESTRICTED_CLASS = Reason("NOT_RESTRICTED_CLASS", "名单人员，但该消费不在限制范围内")
LISTING_SUSPENDED = Reason("LISTING_SUSPENDED", "名单信息核实期间，惩戒措施暂不执行")
EXEMPTED = Reason("EXEMPTED", "经人民法院准许以个人财产实施的该项消费")
EXPIRED = Reason("EXPIRED", "名单已过有效期，不再限制")
NAME_MISMATCH = Reason("NAME_MISMATCH", "证件号码在名单中但姓名不一致，请人工核验")
INDEX_UNAVAILABLE = Reason("INDEX_UNAVAILABLE", "名单索引暂时无法查询，不能确认是否为名单人员")

#: An ALLOW's reasons, and its matches by theirs, in this order: an entry in force
#: whose restriction a court's exemption lifted, one that does not restrict the
#: purchase, then entries that no longer apply (suspended, expired)
ALLOW_ORDER = (EXEMPTED, NOT_RESTRICTED_CLASS, LISTING_SUSPENDED, EXPIRED)
_ALLOW_RANK = {reason: rank for rank, reason in enumerate(ALLOW_ORDER)}


class Query(NamedTuple):
    """A validated check, in domain terms (a tuple: built on every check)."""

    subject_key: int
    name: str  # as given; normalised only when a listed entry needs comparing
    id_number: str  # normalised; masked before it goes anywhere (``masked_id``)
    channel: Channel
    purchase: Purchase
    amount_fen: int
    #: the number read as each other identity it plainly is (usually none); looked up too
    also_keys: tuple[int, ...] = ()

    @property
    def masked_id(self) -> str:
        return mask_id(self.id_number)

    def __repr__(self) -> str:  # never the plaintext number, even in a traceback
        return f"Query(subject={self.masked_id}, channel={self.channel.name}, {self.purchase!r})"


class MatchOutcome(NamedTuple):
    """A listed entry, how it stands today (ACTIVE, SUSPENDED or EXPIRED), and what it
    did to this purchase (``reason``): its restriction in a DENY or REVIEW; EXEMPTED,
    NOT_RESTRICTED_CLASS, LISTING_SUSPENDED or EXPIRED in an ALLOW. ``judge`` always
    sets it; None only where a caller built the outcome by hand (not known)."""

    match: ListedMatch
    status: EntryStatus
    reason: Reason | None = None


class Verdict(NamedTuple):
    """A decision with its reasons and the entries behind it."""

    decision: Decision
    reasons: tuple[Reason, ...]
    matches: tuple[MatchOutcome, ...]

    @property
    def hit(self) -> bool:
        """True when a listed subject matched: such checks go to the hit log."""
        return bool(self.matches)


VERDICT_NOT_LISTED = Verdict(Decision.ALLOW, (NOT_LISTED,), ())


def decide(
    view: ListView, query: Query, keyer: SubjectKeyer, policy: Policy, today: int
) -> Verdict:
    """The decision for ``query`` against ``view`` on ``today`` (a China-time day number)."""
    key = query.subject_key
    if query.also_keys:
        return _decide_all(view, query, keyer, policy, today)
    if not view.might_contain(key):
        return VERDICT_NOT_LISTED
    try:
        found = view.look_up(key)
    except IndexUnavailable:
        return unavailable(query, policy)
    if not found:
        return VERDICT_NOT_LISTED
    return judge(found, query, keyer, policy, today)


def _decide_all(
    view: ListView, query: Query, keyer: SubjectKeyer, policy: Policy, today: int
) -> Verdict:
    """``decide`` for a query with more keys: one round trip for all of them."""
    keys = [k for k in (query.subject_key,) + query.also_keys if view.might_contain(k)]
    if not keys:
        return VERDICT_NOT_LISTED
    try:
        found = [m for matches in view.look_up_many(keys) for m in matches]
    except IndexUnavailable:
        return unavailable(query, policy)
    if not found:
        return VERDICT_NOT_LISTED
    return judge(found, query, keyer, policy, today)


def decide_many(
    view: ListView, queries: Sequence[Query], keyer: SubjectKeyer, policy: Policy, today: int
) -> list[Verdict]:
    """``decide`` for many queries, with one index round trip for all Bloom positives."""
    verdicts = [VERDICT_NOT_LISTED] * len(queries)
    might_contain = view.might_contain
    positive = [i for i, q in enumerate(queries) if might_contain(q.subject_key)]
    # (position, key) for every further key the filter admits; ``if q.also_keys``
    # first, so the queries with none (nearly all) cost what a test of one int did
    also = [
        (i, k) for i, q in enumerate(queries) if q.also_keys for k in q.also_keys
        if might_contain(k)
    ]  # fmt: skip
    if not positive and not also:
        return verdicts
    owners = positive + [i for i, _ in also]
    keys = [queries[i].subject_key for i in positive] + [k for _, k in also]
    try:
        found = view.look_up_many(keys)
    except IndexUnavailable:
        for i in owners:
            verdicts[i] = unavailable(queries[i], policy)
        return verdicts
    listed: dict[int, list[ListedMatch]] = {}
    for i, matches in zip(owners, found, strict=True):
        if matches:
            listed.setdefault(i, []).extend(matches)
    for i, matches in listed.items():
        verdicts[i] = judge(matches, queries[i], keyer, policy, today)
    return verdicts


_UNAVAILABLE = {
    name: Verdict(Decision[name], (INDEX_UNAVAILABLE,), ()) for name in ("ALLOW", "DENY", "REVIEW")
}


def unavailable(query: Query, policy: Policy) -> Verdict:
    """The configured answer for a possible listing that cannot be confirmed."""
    return _UNAVAILABLE[policy.unavailable_decision(query.channel)]


#: titles an airline puts after a passenger's given names (``SMITH/JOHN MR``)
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mstr", "dr", "prof"})


def airline_name_readings(raw: str) -> tuple[str, ...]:
    """A name written as airlines write it, ``SURNAME/GIVEN NAMES [TITLE]``, read as a
    list would give it: given names first (``JOHN SMITH``) or surname first
    (``SMITH JOHN``), both normalised, the title left out. Only for an ID that
    matched already: a name that then matches is DENY instead of REVIEW."""
    surname, _, given = raw.partition("/")
    words = given.split()
    if len(words) > 1 and words[-1].casefold().rstrip(".") in _TITLES:
        words.pop()
    given = " ".join(words)
    return (normalize_name(f"{given} {surname}"), normalize_name(f"{surname} {given}"))


def judge(
    found: Sequence[ListedMatch],
    query: Query,
    keyer: SubjectKeyer,
    policy: Policy,
    today: int,
) -> Verdict:
    """The decision for a subject that the index says is listed."""
    shixin, xiangao = restrictions_for(query.purchase, query.amount_fen, policy)
    # what restricts a related person: a debtor-only restriction does not
    shixin_related = None if shixin in DEBTOR_ONLY else shixin
    xiangao_related = None if xiangao in DEBTOR_ONLY else xiangao
    channel = query.channel
    if len(found) > 1:  # one order whatever the order of arrival (a delta's LIST appends)
        found = sorted(found, key=_answer_order)
    restricting: list[MatchOutcome] = []
    why: list[Reason] = []  # the restriction of each of ``restricting``
    others: list[MatchOutcome] = []
    passed: list[Reason] = []  # the reason of each of ``others``: what let the purchase by
    for m in found:
        if m.valid_until < today:
            others.append(MatchOutcome(m, EntryStatus.EXPIRED, EXPIRED))
            passed.append(EXPIRED)
            continue
        if m.status is EntryStatus.SUSPENDED:
            others.append(MatchOutcome(m, EntryStatus.SUSPENDED, LISTING_SUSPENDED))
            passed.append(LISTING_SUSPENDED)
            continue
        if m.list_type is ListType.XIANGAO:
            restriction = xiangao if m.role is Role.DEBTOR else xiangao_related
        else:
            restriction = shixin if m.role is Role.DEBTOR else shixin_related
        if restriction is None:
            others.append(MatchOutcome(m, EntryStatus.ACTIVE, NOT_RESTRICTED_CLASS))
            passed.append(NOT_RESTRICTED_CLASS)
        elif m.exemptions and any(e.covers(channel, today) for e in m.exemptions):
            # only where it lifts a restriction: a hard seat needs no court's permission
            others.append(MatchOutcome(m, EntryStatus.ACTIVE, EXEMPTED))
            passed.append(EXEMPTED)
        else:
            restricting.append(MatchOutcome(m, EntryStatus.ACTIVE, restriction))
            why.append(restriction)

    if restricting:
        name = normalize_name(query.name) if query.name else ""
        if not name:  # no name given (or only spaces): the ID alone decides
            return Verdict(Decision.DENY, _distinct(why), tuple(restricting))
        name_key = keyer.name_key(name)
        keys: tuple[int, ...] | set[int] = (name_key, 0)
        named = [i for i, o in enumerate(restricting) if o.match.name_key in keys]
        if not named and "/" in query.name:  # an airline's SURNAME/GIVEN: either order
            keys = {keyer.name_key(n) for n in airline_name_readings(query.name)}
            named = [i for i, o in enumerate(restricting) if o.match.name_key in keys]
        if named:
            return Verdict(
                Decision.DENY,
                _distinct([why[i] for i in named]),
                tuple(restricting[i] for i in named),
            )
        return Verdict(Decision.REVIEW, _distinct(why) + (NAME_MISMATCH,), tuple(restricting))

    if len(others) == 1:  # nearly always
        return Verdict(Decision.ALLOW, (passed[0],), (others[0],))
    # by ALLOW_ORDER, each reason once; the matches likewise (as found within one reason)
    ranked = sorted(range(len(others)), key=lambda i: _ALLOW_RANK[passed[i]])
    reasons = tuple(dict.fromkeys(passed[i] for i in ranked))
    return Verdict(Decision.ALLOW, reasons, tuple(others[i] for i in ranked))


def _answer_order(m: ListedMatch) -> tuple[int, str, int]:
    """Matches in an answer: SHIXIN before XIANGAO, then by entry and role. The index
    returns them in the order they arrived (a delta's re-LIST of an entry puts it after
    the rest), which would make the same content answer in another order, reasons too."""
    return m.list_type, m.entry_id, m.role


def _distinct(restrictions: list[Reason]) -> tuple[Reason, ...]:
    """Each restriction once, in the order of the entries (nearly always just one)."""
    if len(restrictions) == 1:
        return (restrictions[0],)
    return tuple(dict.fromkeys(restrictions))
