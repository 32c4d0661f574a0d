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

Only what needs locust is here (users, options, event hooks). The bookings, their pools
and the answer checks are in ``bookings.py``, the µs buckets and the end table in
``latency_report.py``; neither imports locust.
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
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
from shixin_check.domain.model import CHINA_TZ

# ``loadtest`` is a folder of the checkout, not an installed package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.bookings import (  # noqa: E402
    BATCH,
    UNARY,
    BadHost,
    Options,
    Pools,
    grpc_target,
    wrong_answer,
)
from loadtest.latency_report import report_lines  # noqa: E402

log = logging.getLogger("shixin.locust")

DEFAULT_WEIGHTS = {"rail": 55, "airline": 25, "hotel": 15, "school": 5}
_NO_CONTEXT: dict[str, Any] = {}


class WrongAnswer(Exception):
    """The server answered, but not what the list and the purchase call for."""


class GrpcFailure(Exception):
    """A call that ended with a gRPC status other than OK (code and details only)."""


class UserPools(Pools):
    """``Pools`` and what this process's locust runtime adds: users started, gevent mode."""

    def __init__(self) -> None:
        super().__init__()
        self.users = 0  # users started in this process, ever
        self.gevent = False  # grpc's gevent mode is on


POOLS = UserPools()


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
        lat.record(elapsed, len(call.expect), call.listed)
        self._fire(
            request_type=lat.rpc,
            name=lat.name,
            response_time=elapsed / 1e6,  # ms, a float: --csv's avg/min/max keep its fraction
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


@_on(events.quitting)
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or not REPORT.started:
        return
    seconds = (REPORT.stopped or time.monotonic()) - REPORT.started
    lines = report_lines(POOLS.latencies.values(), seconds, REPORT.cpu, len(REPORT.processes))
    print("\n".join(lines), flush=True)
    if not any(lat.counts for lat in POOLS.latencies.values()):
        # Nothing measured is no pass: with -t shorter than --deadline, users still
        # waiting to connect to a server that is not there record no failure either.
        environment.process_exit_code = 1
