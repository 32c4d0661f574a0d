"""Locust users for shixin-check: one gRPC user per booking channel (issue 12, point 5).

Run from the repository root (``loadtest/README.md``, "Locust")::

    locust -f loadtest/locustfile.py --headless -H 127.0.0.1:50051 -u 8 -r 8 -t 60s \\
        --list-seed 1 --entries 1000 --as-of 2026-11-30

Users: ``RailUser`` (an order of 1-6 passengers as one ``CheckConsumptionBatch``),
``AirlineUser`` (a PNR of 1-4 passengers: one passenger unary, more as one batch),
``HotelUser`` (a guest registering at check-in, unary) and ``SchoolUser`` (the parent
paying an enrolment, unary). About 99% of the people checked are unlisted; the rest are
debtors and related persons of listed organisations taken from the synthetic list of
``--list-seed``, ``--entries`` and ``--as-of``, so they really are in the served list.

Why it is built this way:

- ``-H`` must be ``HOST:PORT``. Locust's own ``http://host:port`` form is no gRPC target
  (every call would fail UNAVAILABLE while locust still reports a rate), so it is refused
  at start with one line and a nonzero exit, as is a missing or bad port.
- Every answer is checked: an unlisted person must get ALLOW with NOT_LISTED and no match,
  a listed one a match (DENY or REVIEW where the purchase is restricted). A wrong answer,
  like any gRPC error, is a locust failure.
- Locust's percentiles are whole milliseconds, which hides this service's latency, so
  every call's latency is also kept in µs and the percentiles are printed at the end
  (summed over workers with ``--processes`` or master and workers).
- A locust process's CPU per call limits what it can drive: one channel (one connection)
  per user, requests built and serialised once per process, the answer parsed once.
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import gevent  # type: ignore[import-untyped]
import grpc
from locust import User, constant, constant_throughput, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.event import EventHook
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.flows import airline_pnr, hotel_checkin, rail_order, school_enrolment
from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.synthetic import iter_entries

# ``loadtest`` is a folder of the checkout, not an installed package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.traffic import Subject, unlisted_person  # noqa: E402

log = logging.getLogger("shixin.locust")

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

DEFAULT_WEIGHTS = {"rail": 55, "airline": 25, "hotel": 15, "school": 5}
PERCENTILES = (0.5, 0.9, 0.99, 0.999)
_NO_CONTEXT: dict[str, Any] = {}


class BadHost(ValueError):
    """``-H`` is not a gRPC target ``HOST:PORT``."""


class WrongAnswer(Exception):
    """The server answered, but not what the list and the purchase call for."""


class GrpcFailure(Exception):
    """A call that ended with a gRPC status other than OK (code and details only)."""


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


@dataclass
class Latencies:
    """Per-call latencies of one kind of call in this process, in µs buckets.

    A bucket keeps the 10 leading bits of the µs figure (exact below 1,024 µs, within
    0.1% above), so the counts stay small however long the run, and add up across
    processes.
    """

    rpc: str  # "unary" or "batch": locust's request type
    name: str  # "rail order", ...: locust's name
    counts: dict[int, int] = field(default_factory=dict)
    checks: int = 0
    listed: int = 0  # checks of listed people among them

    def add(self, counts: dict[int, int], checks: int, listed: int) -> None:
        for us, n in counts.items():
            self.counts[us] = self.counts.get(us, 0) + n
        self.checks += checks
        self.listed += listed

    def clear(self) -> None:
        self.counts, self.checks, self.listed = {}, 0, 0


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
        self.users = 0  # users started in this process, ever
        self.gevent = False  # grpc's gevent mode is on

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


POOLS = Pools()


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


# --- users ---------------------------------------------------------------------------


class CheckUser(User):
    """A booking system's connection: one channel, calls from its flow's pool in turn."""

    abstract = True
    wait_time = constant(0)
    flow = "rail"
    _channel: Any = None

    def on_start(self) -> None:
        try:
            target = grpc_target(self.environment.host or self.host)
        except BadHost as exc:  # the web UI's host field (-H is checked at init)
            self.environment.events.request.fire(
                request_type="connect", name=str(self.environment.host), response_time=0.0,
                response_length=0, exception=exc, context=_NO_CONTEXT,
            )  # fmt: skip
            return  # the first task stops this user
        opts = POOLS.options
        assert opts is not None, "the init event has not run"
        # A channel of its own (a local subchannel pool): one connection per user, as
        # separate booking systems have, and as SO_REUSEPORT workers need to share load.
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._unary = self._channel.unary_unary(
            UNARY, request_serializer=None, response_deserializer=None
        )
        self._batch = self._channel.unary_unary(
            BATCH, request_serializer=None, response_deserializer=None
        )
        self._calls = POOLS.for_flow(self.flow)
        self._next = random.randrange(len(self._calls))
        self._deadline = opts.deadline
        self._metadata = opts.metadata
        self._fire = self.environment.events.request.fire
        # grpc waits for each call's answer in a thread of gevent's pool (10 by default,
        # one taken for good by grpc): one per user, or answers queue behind each other.
        POOLS.users += 1
        threads = gevent.get_hub().threadpool
        threads.maxsize = max(threads.maxsize, POOLS.users + 2)
        # Connected before the first call, which then measures a check, not a handshake.
        try:
            grpc.channel_ready_future(self._channel).result(timeout=opts.deadline)
        except grpc.FutureTimeoutError:
            self._fire(
                request_type="connect",
                name=target,
                response_time=opts.deadline * 1000,
                response_length=0,
                exception=GrpcFailure(f"no connection to {target} in {opts.deadline:g} s"),
                context=_NO_CONTEXT,
            )

    def on_stop(self) -> None:
        if self._channel is not None:
            self._channel.close()

    @task
    def check(self) -> None:
        if self._channel is None:
            raise StopUser()
        call = self._calls[self._next]
        self._next = (self._next + 1) % len(self._calls)
        rpc = self._batch if call.batch else self._unary
        lat = call.latencies
        problem: Exception | None = None
        raw = b""
        started = time.perf_counter_ns()
        try:
            raw = rpc(call.payload, timeout=self._deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            elapsed = time.perf_counter_ns() - started
            problem = GrpcFailure(f"{exc.code().name}: {exc.details()}")
        else:
            elapsed = time.perf_counter_ns() - started
            if call.batch:
                answers: Sequence[pb.CheckResponse] = pb.CheckBatchResponse.FromString(raw).results
            else:
                answers = (pb.CheckResponse.FromString(raw),)
            said = wrong_answer(answers, call)
            if said is not None:
                problem = WrongAnswer(said)
        us = elapsed // 1000
        if us >= 1024:  # keep the 10 leading bits (Latencies)
            shift = us.bit_length() - 10
            us = us >> shift << shift
        counts = lat.counts
        counts[us] = counts.get(us, 0) + 1
        lat.checks += len(call.expect)
        lat.listed += call.listed
        self._fire(
            request_type=lat.rpc,
            name=lat.name,
            response_time=elapsed / 1e6,  # ms, a float: locust keeps its fraction in avg/min/max
            response_length=len(raw),
            exception=problem,
            context=_NO_CONTEXT,
        )


class RailUser(CheckUser):
    """A rail ticketing system: an order of 1-6 passengers, one batch per order."""

    flow = "rail"
    weight = DEFAULT_WEIGHTS["rail"]


class AirlineUser(CheckUser):
    """An airline reservation system: a PNR of 1-4 passengers; one unary, more a batch."""

    flow = "airline"
    weight = DEFAULT_WEIGHTS["airline"]


class HotelUser(CheckUser):
    """A hotel front desk: one guest registering at check-in, unary."""

    flow = "hotel"
    weight = DEFAULT_WEIGHTS["hotel"]


class SchoolUser(CheckUser):
    """A private or public school's enrolment office: the paying parent, unary."""

    flow = "school"
    weight = DEFAULT_WEIGHTS["school"]


USERS: dict[str, type[CheckUser]] = {
    "rail": RailUser,
    "airline": AirlineUser,
    "hotel": HotelUser,
    "school": SchoolUser,
}


# --- command line, start and the µs report ------------------------------------------


Handler = TypeVar("Handler", bound=Callable[..., None])


def _on(hook: EventHook) -> Callable[[Handler], Handler]:
    """``hook.add_listener`` as a typed decorator (locust's own is untyped)."""

    def register(handler: Handler) -> Handler:
        add: Callable[[Handler], object] = hook.add_listener
        add(handler)
        return handler

    return register


@_on(events.init_command_line_parser)
def _add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("shixin-check", "the list the server serves, and the mix")
    group.add_argument("--list-seed", type=int, default=1, help="seed of the served synthetic list (gen-data --seed; default 1)")  # fmt: skip
    group.add_argument("--entries", type=int, default=1000, help="entries of the served list (gen-data --count; default 1000); listed people come from its first entries")  # fmt: skip
    group.add_argument("--as-of", default="", help="YYYY-MM-DD the list was generated for (gen-data --as-of; default today, China time)")  # fmt: skip
    group.add_argument("--api-key", default="", env_var="SHIXIN_API_KEY", help="sent as 'authorization: Bearer KEY' on every call (default none)")  # fmt: skip
    group.add_argument("--listed-share", type=float, default=0.01, help="share of checked people who are listed (default 0.01)")  # fmt: skip
    group.add_argument("--pool-size", type=int, default=2048, help="pre-built bookings per user class and process (default 2048)")  # fmt: skip
    group.add_argument("--deadline", type=float, default=5.0, help="seconds before a call fails DEADLINE_EXCEEDED (default 5)")  # fmt: skip
    group.add_argument("--user-rate", type=float, default=0.0, help="calls per second per user (default 0: as fast as answers come)")  # fmt: skip
    for key, weight in DEFAULT_WEIGHTS.items():
        group.add_argument(f"--{key}-weight", type=int, default=weight, help=f"weight of {USERS[key].__name__} (default {weight}; 0 for none)")  # fmt: skip


def _refuse(message: str) -> NoReturn:
    """One line on stderr, and exit 2 (no traceback)."""
    sys.stderr.write(f"locustfile: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _options(environment: Environment) -> Options:
    """The command line's options, checked; weights set on the user classes."""
    opts = environment.parsed_options
    if opts is None:  # locust used as a library: the defaults
        return Options(1, 1000, _dt.datetime.now(CHINA_TZ).date(), 0.01, 2048, 5.0, None)
    is_worker = isinstance(environment.runner, WorkerRunner)
    if environment.host or (opts.headless and not is_worker):  # a worker gets the master's
        try:
            grpc_target(environment.host)
        except BadHost as exc:
            _refuse(str(exc))
    try:
        options = Options.parse(opts)
    except ValueError as exc:
        _refuse(f"--as-of {opts.as_of!r}: {exc}")
    if options.entries < 1 or options.pool_size < 1 or options.deadline <= 0:
        _refuse("--entries, --pool-size and --deadline must be above 0")
    if not 0 <= options.listed_share <= 1:
        _refuse(f"--listed-share {options.listed_share}: must be from 0 to 1")
    for key, user in USERS.items():
        weight = getattr(opts, f"{key}_weight")
        if weight < 0:
            _refuse(f"--{key}-weight {weight}: must be 0 or more")
        user.weight = weight
    if not any(user.weight for user in USERS.values()):
        _refuse("every --*-weight is 0: no user would run")
    if opts.user_rate > 0:
        CheckUser.wait_time = constant_throughput(opts.user_rate)
    return options


@_on(events.init)
def _on_init(environment: Environment, **_kw: Any) -> None:
    POOLS.options = _options(environment)
    if not isinstance(environment.runner, MasterRunner) and not POOLS.gevent:
        import grpc.experimental.gevent as grpc_gevent

        # gRPC's I/O on gevent, so a call blocks only its own user; before any channel.
        grpc_gevent.init_gevent()
        POOLS.gevent = True
        # Built now, not when the first user starts: building blocks every greenlet.
        for key, user in USERS.items():
            if user.weight:
                POOLS.for_flow(key)
        # The pools live as long as the process: out of the collector's sight, so no
        # full collection walks them during a run.
        gc.collect()
        gc.freeze()
    # libev's clock stands still until the loop first runs: without this, -t counts
    # from before the imports and the pools, and a 10 s run lasts about 8.5 s.
    gevent.get_hub().loop.update_now()


class Report:
    """Wall time and CPU of the run, and the µs latencies added up from every process."""

    def __init__(self) -> None:
        self.started = 0.0
        self.stopped = 0.0
        self.cpu_mark = 0.0  # process CPU when last counted (users' processes)
        self.cpu = 0.0  # CPU seconds of the processes that ran users
        self.processes: set[str] = set()

    def take_cpu(self) -> float:
        now = time.process_time()
        spent, self.cpu_mark = now - self.cpu_mark, now
        return spent


REPORT = Report()


@_on(events.test_start)
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    REPORT.started, REPORT.stopped = time.monotonic(), 0.0
    REPORT.cpu_mark, REPORT.cpu = time.process_time(), 0.0
    REPORT.processes.clear()
    for lat in POOLS.latencies.values():  # a new test in the web UI starts from nothing
        lat.clear()
    if not isinstance(environment.runner, WorkerRunner):
        try:
            grpc_target(environment.host)  # the web UI's host field (-H is checked at init)
        except BadHost as exc:
            log.error("%s", exc)


@_on(events.test_stop)
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    REPORT.stopped = time.monotonic()
    if not isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        REPORT.cpu += REPORT.take_cpu()
        REPORT.processes.add("local")


@_on(events.report_to_master)
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    records = {}
    for lat in POOLS.latencies.values():
        if lat.counts:
            records[f"{lat.rpc}\t{lat.name}"] = (list(lat.counts.items()), lat.checks, lat.listed)
            lat.clear()
    data["shixin"] = {"latencies": records, "cpu": REPORT.take_cpu() if REPORT.started else 0.0}


@_on(events.worker_report)
def _on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    mine = data.get("shixin")
    if not mine:
        return
    for key, (counts, checks, listed) in mine["latencies"].items():
        rpc, name = key.split("\t")
        POOLS.latency(rpc, name).add(dict(counts), checks, listed)
    REPORT.cpu += mine["cpu"]
    REPORT.processes.add(client_id)


def percentile(counts: dict[int, int], total: int, q: float) -> int:
    """The µs bucket holding the ``q`` quantile of ``total`` calls."""
    rank = max(1, -(-int(q * total * 1000) // 1000))  # ceil(q * total), without float drift
    seen = 0
    for us in sorted(counts):
        seen += counts[us]
        if seen >= rank:
            return us
    return max(counts)


def report_lines(seconds: float, cpu: float, processes: int) -> list[str]:
    """The µs table, calls/s and CPU per call (what ``quitting`` prints)."""
    rows = sorted(
        (lat for lat in POOLS.latencies.values() if lat.counts),
        key=lambda lat: (lat.name, lat.rpc),
    )
    total = Latencies("", "all")
    for lat in rows:
        total.add(lat.counts, lat.checks, lat.listed)
    calls = sum(total.counts.values())
    if not calls:
        return ["shixin-check: no calls were made"]
    per_s = max(seconds, 1e-9)
    head = f"{'type':<6} {'name':<17} {'calls':>9} {'checks':>9} {'listed':>7} "
    head += f"{'calls/s':>8} {'checks/s':>8}"
    head += "".join(f" {f'p{q * 100:g}':>7}" for q in PERCENTILES) + f" {'max':>7}"
    lines = [
        f"shixin-check latency per call in µs, client side, over {seconds:.1f} s "
        "(exact below 1,024 µs, within 0.1% above):",
        head,
    ]
    for lat in [*rows, total]:
        n = sum(lat.counts.values())
        line = f"{lat.rpc:<6} {lat.name:<17} {n:>9,} {lat.checks:>9,} {lat.listed:>7,} "
        line += f"{n / per_s:>8,.0f} {lat.checks / per_s:>8,.0f}"
        line += "".join(f" {percentile(lat.counts, n, q):>7,}" for q in PERCENTILES)
        lines.append(line + f" {max(lat.counts):>7,}")
    lines.append(
        f"shixin-check locust: {calls / per_s:,.0f} calls/s, {total.checks / per_s:,.0f} "
        f"checks/s; CPU {cpu:.2f} s in {processes} process(es) running users "
        f"({cpu / per_s:.2f} cores): {cpu / calls * 1e6:,.0f} µs per call, "
        f"{cpu / total.checks * 1e6:,.0f} µs per check"
    )
    return lines


@_on(events.quitting)
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or not REPORT.started:
        return
    seconds = (REPORT.stopped or time.monotonic()) - REPORT.started
    print("\n".join(report_lines(seconds, REPORT.cpu, len(REPORT.processes))), flush=True)
