"""What the locust users send: the bookings per channel, built and serialised once.

``locustfile.py`` drives these; everything here is plain Python and protobuf (no import
of locust or gevent), so it can be built, inspected and tested without a locust run:

- ``grpc_target``: the ``-H`` value the calls go to, which must be ``HOST:PORT``.
- ``listed_people``: debtors and related persons really restricted in the served list.
- ``FLOWS``: one ``Flow`` per booking channel (rail, airline, hotel, school): how many
  people a booking checks, which purchase, unary or batch, and what a listed person must
  get for it.
- ``Pools``: a process's pre-built ``Call`` list per flow, the same in every process.
- ``wrong_answer``: what is wrong with the server's answers to a ``Call``, if anything.
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.latency_report import Latencies
from loadtest.traffic import Subject, unlisted_person
from shixin.v1 import check_pb2 as pb
from shixin_check.clients.flows import airline_pnr, hotel_checkin, rail_order, school_enrolment
from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.synthetic import iter_entries

UNARY = "/shixin.v1.ConsumptionCheck/CheckConsumption"
BATCH = "/shixin.v1.ConsumptionCheck/CheckConsumptionBatch"

# What an answer must be: per check, by who is checked and what is bought.
UNLISTED = 0  # ALLOW, NOT_LISTED, no match
RESTRICTED = 1  # listed, restricted purchase: DENY or REVIEW, with matches
NOT_RESTRICTED = 2  # listed, purchase outside the restrictions: ALLOW NOT_RESTRICTED_CLASS
MATCHED = 3  # listed, restricted or not by the server's policy (hotel stars): a match

# Purchases, each (weight, fields, what a listed buyer gets).
RAIL_TRIPS: tuple[tuple[int, str, str, int], ...] = (  # (weight, train, seat, listed)
    (26, "G1234", "SECOND_CLASS", RESTRICTED),
    (3, "G7", "FIRST_CLASS", RESTRICTED),
    (1, "G101", "BUSINESS", RESTRICTED),
    (11, "D3125", "SECOND_CLASS", NOT_RESTRICTED),
    (2, "d 312", "FIRST_CLASS", RESTRICTED),
    (1, "C2001", "SECOND_CLASS", NOT_RESTRICTED),
    (5, "K1158", "HARD_SLEEPER", NOT_RESTRICTED),
    (2, "Z38", "SOFT_SLEEPER", RESTRICTED),
    (4, "T110", "HARD_SEAT", NOT_RESTRICTED),
)
FLIGHTS: tuple[tuple[int, str, str], ...] = (  # (weight, flight, cabin); every one restricted
    (40, "CA1501", "Y"),
    (25, "MU5101", "Y"),
    (20, "CZ3101", "Y"),
    (5, "HU7181", "W"),
    (7, "CA1501", "J"),
    (3, "MU5101", "F"),
)
STAYS: tuple[tuple[int, int, bool, int], ...] = (  # (weight, stars, high_end, listed)
    (30, 0, False, NOT_RESTRICTED),
    (35, 3, False, MATCHED),  # restricted unless --hotel-min-star is above 3
    (20, 4, False, MATCHED),
    (15, 5, True, RESTRICTED),
)
ENROLMENTS: tuple[tuple[int, bool, bool, int], ...] = (  # (weight, private, high_fee, listed)
    (70, False, False, NOT_RESTRICTED),
    (20, True, False, NOT_RESTRICTED),
    (10, True, True, RESTRICTED),
)
RAIL_PARTY = ((55, 1), (25, 2), (10, 3), (6, 4), (2, 5), (2, 6))  # (weight, passengers)
AIRLINE_PARTY = ((60, 1), (25, 2), (10, 3), (5, 4))


# --- where the calls go -------------------------------------------------------------


class BadHost(ValueError):
    """``-H`` is not a gRPC target ``HOST:PORT``."""


_TARGET = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]+)")


def grpc_target(host: str | None) -> str:
    """``host`` if it is ``HOST:PORT`` (a port from 1 to 65535); else ``BadHost``."""
    example = "e.g. -H 127.0.0.1:50051"
    if not host:
        raise BadHost(f"no host: give the gRPC server as -H HOST:PORT ({example})")
    if "://" in host:
        raise BadHost(
            f"-H {host!r} is a URL, not HOST:PORT: locust's http:// form would make every "
            f"gRPC call fail UNAVAILABLE ({example})"
        )
    match = _TARGET.fullmatch(host)
    if match is None:
        raise BadHost(f"-H {host!r} is not HOST:PORT ({example})")
    if not 1 <= int(match[2]) <= 65535:
        raise BadHost(f"-H {host!r}: port {match[2]} is not 1 to 65535 in HOST:PORT ({example})")
    return host


# --- pre-built calls ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call ready to send: the serialised request and what each answer must be."""

    batch: bool
    payload: bytes
    request_ids: tuple[str, ...]
    expect: tuple[int, ...]
    listed: int  # how many of the checks are of listed people
    latencies: Latencies


@dataclass(frozen=True)
class Options:
    """The locustfile's own command-line options (``--list-seed`` and the rest)."""

    seed: int
    entries: int
    as_of: _dt.date
    listed_share: float
    pool_size: int
    deadline: float
    metadata: tuple[tuple[str, str], ...] | None

    @classmethod
    def parse(cls, parsed: Any) -> Options:
        as_of = (
            _dt.date.fromisoformat(parsed.as_of)
            if parsed.as_of
            else _dt.datetime.now(CHINA_TZ).date()
        )
        key = parsed.api_key
        return cls(
            seed=parsed.list_seed,
            entries=parsed.entries,
            as_of=as_of,
            listed_share=parsed.listed_share,
            pool_size=parsed.pool_size,
            deadline=parsed.deadline,
            metadata=(("authorization", f"Bearer {key}"),) if key else None,
        )


def listed_people(entries: int, seed: int, as_of: _dt.date, want: int = 500) -> list[Subject]:
    """Debtors and related persons whose entry restricts today and for 30 more days.

    Only ACTIVE entries with no exemption (``traffic.listed_subjects`` keeps suspended,
    expired and exempted ones, whose answers are ALLOW), so the answer to each can be
    checked; 30 days of margin for a list generated a little before the run.
    """
    horizon = (as_of + _dt.timedelta(days=30)).isoformat()
    people: list[Subject] = []
    for entry in iter_entries(entries, seed, as_of):
        row: dict[str, Any] = entry
        if row["status"] != "ACTIVE" or row["exemptions"] or row["valid_until"] < horizon:
            continue
        subject = row["subject"]
        if subject["type"] == "PERSON":
            people.append(Subject(subject["name"], subject["id_number"], subject["id_type"]))
        for rel in row["related_persons"]:
            people.append(Subject(rel["name"], rel["id_number"], rel["id_type"]))
        if len(people) >= want:
            break
    return people


def _pick(rng: random.Random, table: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(table, weights=[row[0] for row in table])[0]


# A booking's requests, one per person, and what a listed person among them must get.
Bookings = tuple[list[pb.CheckRequest], int]


def _rail(rng: random.Random, people: list[Subject], booking: str) -> Bookings:
    _, train, seat, listed = _pick(rng, RAIL_TRIPS)
    passengers = [(p.number, p.name, seat, p.id_type) for p in people]
    return rail_order(passengers, train, booking_id=booking, merchant_id="12306"), listed


def _airline(rng: random.Random, people: list[Subject], booking: str) -> Bookings:
    _, flight, cabin = _pick(rng, FLIGHTS)
    passengers = [(p.number, p.name, p.id_type) for p in people]
    requests = airline_pnr(passengers, flight, cabin=cabin, booking_id=booking, merchant_id="CA")
    return requests, RESTRICTED


def _hotel(rng: random.Random, people: list[Subject], booking: str) -> Bookings:
    _, stars, high_end, listed = _pick(rng, STAYS)
    guests = [(p.number, p.name, p.id_type) for p in people]
    requests = hotel_checkin(
        guests, stars, high_end=high_end, booking_id=booking, merchant_id="H0001"
    )
    return requests, listed


def _school(rng: random.Random, people: list[Subject], booking: str) -> Bookings:
    _, private, high_fee, listed = _pick(rng, ENROLMENTS)
    payers = [(p.number, p.name, p.id_type) for p in people]
    requests = school_enrolment(
        payers, private_school=private, high_fee=high_fee, booking_id=booking, merchant_id="S0001"
    )
    return requests, listed


@dataclass(frozen=True)
class Flow:
    """A booking channel: how many people a booking checks, and how it is sent."""

    name: str
    book: Callable[[random.Random, list[Subject], str], Bookings]
    party: tuple[tuple[int, int], ...]  # (weight, people)
    batch_from: int  # bookings of at least this many people go as one batch


FLOWS = {
    "rail": Flow("rail order", _rail, RAIL_PARTY, batch_from=1),
    "airline": Flow("airline pnr", _airline, AIRLINE_PARTY, batch_from=2),
    "hotel": Flow("hotel check-in", _hotel, ((1, 1),), batch_from=2),
    "school": Flow("school enrolment", _school, ((1, 1),), batch_from=2),
}


class Pools:
    """This process's pre-built calls per flow, and the latencies recorded per kind."""

    def __init__(self) -> None:
        self.options: Options | None = None
        self.listed: list[Subject] | None = None
        self.calls: dict[str, list[Call]] = {}
        self.latencies: dict[tuple[str, str], Latencies] = {}

    def latency(self, rpc: str, name: str) -> Latencies:
        key = (rpc, name)
        if key not in self.latencies:
            self.latencies[key] = Latencies(rpc, name)
        return self.latencies[key]

    def for_flow(self, flow_key: str) -> list[Call]:
        """The calls of ``flow_key``, built on first use: same for every process."""
        if flow_key not in self.calls:
            assert self.options is not None, "the init event has not run"
            self.calls[flow_key] = self._build(FLOWS[flow_key], self.options)
        return self.calls[flow_key]

    def _build(self, flow: Flow, opts: Options) -> list[Call]:
        if self.listed is None:
            self.listed = listed_people(opts.entries, opts.seed, opts.as_of)
            if not self.listed:
                raise RuntimeError(f"no listed person in the first {opts.entries} entries")
        rng = random.Random(f"{opts.seed}:{flow.name}")
        sizes = [_pick(rng, flow.party)[1] for _ in range(opts.pool_size)]
        slots = sum(sizes)
        n_listed = round(slots * opts.listed_share)
        if opts.listed_share > 0:
            n_listed = max(1, n_listed)
        listed_slots = set(rng.sample(range(slots), min(n_listed, slots)))
        calls: list[Call] = []
        slot = 0
        for i, size in enumerate(sizes):
            people: list[Subject] = []
            is_listed: list[bool] = []
            for _ in range(size):
                hit = slot in listed_slots
                people.append(rng.choice(self.listed) if hit else unlisted_person(rng))
                is_listed.append(hit)
                slot += 1
            requests, when_listed = flow.book(rng, people, f"{flow.name[0].upper()}{i:05d}")
            batch = size >= flow.batch_from
            if batch:
                payload = pb.CheckBatchRequest(checks=requests).SerializeToString()
            else:
                payload = requests[0].SerializeToString()
            calls.append(
                Call(
                    batch=batch,
                    payload=payload,
                    request_ids=tuple(r.request_id for r in requests),
                    expect=tuple(when_listed if hit else UNLISTED for hit in is_listed),
                    listed=sum(is_listed),
                    latencies=self.latency("batch" if batch else "unary", flow.name),
                )
            )
        return calls


# --- checking answers --------------------------------------------------------------

_ALLOW, _DENY, _REVIEW = (
    pb.Decision.Value("ALLOW"),
    pb.Decision.Value("DENY"),
    pb.Decision.Value("REVIEW"),
)


def _said(answer: pb.CheckResponse) -> str:
    codes = "+".join(r.code for r in answer.reasons) or "no reason"
    return f"{pb.Decision.Name(answer.decision)} {codes}, {len(answer.matches)} matches"


def wrong_answer(answers: Sequence[pb.CheckResponse], call: Call) -> str | None:
    """What is wrong with the answers to ``call``, or None. Grouped by locust, so no ids."""
    if len(answers) != len(call.expect):
        return f"{len(answers)} answers to {len(call.expect)} checks"
    for answer, want, request_id in zip(answers, call.expect, call.request_ids, strict=True):
        if answer.request_id != request_id:
            return "answer out of order: request_id differs"
        if want == UNLISTED:
            if (
                answer.decision != _ALLOW
                or answer.matches
                or len(answer.reasons) != 1
                or answer.reasons[0].code != "NOT_LISTED"
            ):
                return f"unlisted person got {_said(answer)}"
            continue
        if not answer.matches:
            return (
                f"listed person got {_said(answer)} (--list-seed, --entries, --as-of of the list?)"
            )
        if want == RESTRICTED and answer.decision not in (_DENY, _REVIEW):
            return f"listed person, restricted purchase, got {_said(answer)}"
        if want == NOT_RESTRICTED and (
            answer.decision != _ALLOW
            or all(r.code != "NOT_RESTRICTED_CLASS" for r in answer.reasons)
        ):
            return f"listed person, unrestricted purchase, got {_said(answer)}"
    return None
