"""Prometheus metrics on their own HTTP listener (``serve --metrics-listen HOST:PORT``).

Counting stays off the check path's cost. The hot path bumps plain integers
in ``server.engine.Tally`` (``+= 1`` into lists indexed by enum values; the
latency histogram is a fixed bucket array found with ``bisect``), with no
lock: the checks run on the server's one asyncio thread. Nothing here runs
per check. At scrape time ``MetricsCollector`` takes a ``Reading`` (those
counts, the logs' and Redis's error counts, the list served) and turns it
into prometheus-client metric families; a labelled prometheus-client
counter's ``labels(...).inc()`` would take a lock and cost about 1 µs per
check, a fifth of DESIGN §6's per-check budget.

Worker processes (``serve --workers N``) report the sum over workers. The
parent, which has no gRPC server, serves ``/metrics``; a ``Reading`` is one
plain, picklable object, so each worker's ``ReadingWriter`` replaces a small
file in a private run folder with its ``Service.reading()`` every second
(written aside, then renamed), and the parent's ``WorkerReadings`` reads them
at each scrape and reports ``Reading.merged(readings)``: counters and
histograms add up, the replica lag is the largest, and the list gauges are
those of the oldest list any worker serves (``shixin_list_info`` has a series
for every version served), the TLS certificate's expiry the earliest any
worker serves (a replacement may have read a renewed one). So the figures
lag the workers by about a second.
A reading older than ``READING_STALE_S`` is a worker that cannot say how it is
(its process hung or stopped, or a full disk refuses the file): the sum keeps
its counters, which never go back, but not its gauges, and ``shixin_ready`` is 0
until a fresh reading comes; ``shixin_workers`` counts the workers by state.
When a worker dies, the counters of its last reading are kept (``retire``), so
the sums never go back when its replacement starts counting from 0 (what it
counted in its last second is lost). ``process_*`` are the parent's own.

``METRIC_NAMES`` is every name this endpoint exports beside prometheus-client's
standard ``process_*`` metrics; the Grafana dashboard and the alert rules in
``deploy/`` are held to it.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.model import china_day
from shixin_check.domain.system import open_files_ratio
from shixin_check.server.engine import DECISIONS, LATENCY_BOUNDS, METHODS, CheckEngine, Tally

if TYPE_CHECKING:
    from shixin_check.loader.index_redis import RedisFollower
    from shixin_check.server.hitlog import AppendLog

log = logging.getLogger("shixin.server")

#: Every metric this module exports, as dashboards and alerts name them.
METRIC_NAMES = (
    "shixin_checks_total",
    "shixin_check_duration_seconds",
    "shixin_refusals_total",
    "shixin_hits_total",
    "shixin_hit_log_errors_total",
    "shixin_audit_log_errors_total",
    "shixin_audit_refusals_unrecorded_total",
    "shixin_list_info",
    "shixin_list_age_seconds",
    "shixin_list_entries",
    "shixin_bloom_positives_total",
    "shixin_bloom_false_positives_total",
    "shixin_index_lookups_total",
    "shixin_rate_limited_total",
    "shixin_replica_lag_seconds",
    "shixin_redis_errors_total",
    "shixin_list_behind",
    "shixin_ready",
    "shixin_list_stale",
    "shixin_workers",
    "shixin_worker_restarts_total",
    "shixin_tls_certificate_expiry_timestamp_seconds",
    "shixin_open_files_ratio",
    "shixin_keys_file_refused",
)
(
    CHECKS, DURATION, REFUSALS, HITS, HIT_LOG_ERRORS, AUDIT_LOG_ERRORS, REFUSALS_UNRECORDED,
    LIST_INFO, LIST_AGE,
    LIST_ENTRIES, BLOOM_POSITIVES, BLOOM_FALSE_POSITIVES, INDEX_LOOKUPS, RATE_LIMITED,
    REPLICA_LAG, REDIS_ERRORS, LIST_BEHIND, READY, LIST_STALE, WORKERS, WORKER_RESTARTS,
    TLS_EXPIRY, OPEN_FILES, KEYS_REFUSED,
) = METRIC_NAMES  # fmt: skip
#: The ``state`` label of ``shixin_workers``, in the order of ``Reading.workers``.
WORKER_STATES = ("up", "stale", "down")

#: The answers a check can have (the wire's names), and the channels.
_DECISIONS = tuple((pb.Decision.Name(d), d) for d in (pb.ALLOW, pb.DENY, pb.REVIEW))
_CHANNELS = tuple((name, value) for name, value in pb.Channel.items() if value)
#: Every status code but OK, by number: a series for each from the start, so
#: that ``rate()`` sees the first refusal of a kind.
_CODES = tuple((c.value[0], c.name) for c in grpc.StatusCode if c is not grpc.StatusCode.OK)
_LE = (*(repr(b) for b in LATENCY_BOUNDS), "+Inf")  # as prometheus-client writes ``le``


@dataclass
class Reading:
    """What a scrape reports, read from one server process at one moment.

    Plain data (no locks, no live objects), so readings of several worker
    processes can be pickled and ``merged``.
    """

    tally: Tally = field(default_factory=Tally)
    hit_log_errors: int = 0
    audit_log_errors: int = 0
    #: Redis mode only (None otherwise): failed Redis commands, and ``lag_seconds``
    redis_errors: int | None = None
    replica_lag_seconds: float | None = None
    #: versions served with a trusted index (empty: none loaded, or Redis lost it)
    versions: tuple[str, ...] = ()
    #: the served list's feed time, None when none is loaded
    source_timestamp: float | None = None
    #: (list type, status, entries) of the served list, EXPIRED as its own bucket
    entries: tuple[tuple[str, str, int], ...] = ()
    #: a newer list file than the one served was refused (directory mode; None in Redis
    #: mode, where a refused load changes nothing a replica serves)
    behind: bool | None = None
    #: readiness as health reports it (a trusted list, not stale, logs that take
    #: records, not stopping), and the list served older than --max-list-age
    ready: bool = False
    stale: bool = False
    #: ``time.monotonic()`` when a worker's ``ReadingWriter`` wrote it (0.0: not written)
    taken: float = 0.0
    #: worker processes by ``WORKER_STATES`` (a single server: itself, up)
    workers: tuple[int, int, int] = (1, 0, 0)
    #: workers that died or were killed hung and are started again (None: a single server)
    worker_restarts: int | None = None
    #: notAfter (Unix seconds) of the TLS certificate served, the earliest of its chain
    #: (None: no TLS)
    tls_certificate_expiry: float | None = None
    #: open file descriptors over the soft limit on them (None: unknown, or no limit)
    open_files_ratio: float | None = None
    #: the keys file as last read was refused, older keys in force (None: no keys file)
    keys_file_refused: bool | None = None

    @classmethod
    def merged(cls, readings: Iterable[Reading]) -> Reading:
        """The sum over worker processes (see the module docstring)."""
        out = cls()
        oldest: Reading | None = None
        versions: dict[str, None] = {}
        seen = False
        out.ready = True  # ready only if every worker is
        for r in readings:
            seen = True
            out.ready = out.ready and r.ready
            out.stale = out.stale or r.stale
            out.tally.add(r.tally)
            out.hit_log_errors += r.hit_log_errors
            out.audit_log_errors += r.audit_log_errors
            if r.redis_errors is not None:
                out.redis_errors = (out.redis_errors or 0) + r.redis_errors
            if r.replica_lag_seconds is not None:
                out.replica_lag_seconds = max(out.replica_lag_seconds or 0.0,
                                              r.replica_lag_seconds)  # fmt: skip
            versions.update(dict.fromkeys(r.versions))
            # each worker serves the certificate it read when it bound (a replacement
            # may have read a renewed one): the earliest to expire is the one to watch
            if r.tls_certificate_expiry is not None:
                out.tls_certificate_expiry = min(
                    out.tls_certificate_expiry or r.tls_certificate_expiry,
                    r.tls_certificate_expiry,
                )
            if r.open_files_ratio is not None:  # the worker nearest its limit
                out.open_files_ratio = max(out.open_files_ratio or 0.0, r.open_files_ratio)
            if r.behind is not None:
                out.behind = bool(out.behind) or r.behind
            if r.keys_file_refused is not None:
                out.keys_file_refused = bool(out.keys_file_refused) or r.keys_file_refused
            if r.source_timestamp is not None and (
                oldest is None or r.source_timestamp < (oldest.source_timestamp or 0.0)
            ):
                oldest = r
        out.versions = tuple(versions)
        out.ready = out.ready and seen
        if oldest is not None:
            out.source_timestamp, out.entries = oldest.source_timestamp, oldest.entries
        return out


def take_reading(
    engine: CheckEngine,
    trusted: bool,
    hit_log: AppendLog | None = None,
    audit_log: AppendLog | None = None,
    redis: RedisFollower | None = None,
    behind: bool | None = None,
    ready: bool = False,
    stale: bool = False,
    tls_expiry: float | None = None,
    keys_file_refused: bool | None = None,
) -> Reading:
    """A ``Reading`` of one server: ``trusted`` when health has no problem with its index;
    ``ready`` and ``stale`` as its readiness health says; ``tls_expiry`` the notAfter of
    the certificate it serves."""
    reading = Reading(
        tally=engine.tally.copy(),
        hit_log_errors=hit_log.write_errors if hit_log is not None else 0,
        audit_log_errors=audit_log.write_errors if audit_log is not None else 0,
        behind=behind,
        ready=ready,
        stale=stale,
        tls_certificate_expiry=tls_expiry,
        open_files_ratio=open_files_ratio(),
        keys_file_refused=keys_file_refused,
    )
    if redis is not None:
        reading.redis_errors = redis.redis_errors()
        reading.replica_lag_seconds = redis.lag_seconds()
    view = engine.source.current()
    if view is not None:
        info = view.info
        if trusted:
            reading.versions = (info.version,)
        reading.source_timestamp = info.source_timestamp
        reading.entries = tuple(info.counts.on(china_day(time.time())))
    return reading


#: Seconds between a worker's readings: about how far the summed figures lag.
READING_INTERVAL = 1.0
#: A worker's reading older than this is stale: not ready, its gauges left out of the sum.
READING_STALE_S = 5 * READING_INTERVAL
_READING_SUFFIX = ".reading"


def reading_path(folder: Path, worker: int) -> Path:
    """The file worker ``worker`` replaces with its ``Reading`` in the run ``folder``."""
    return folder / f"w{worker}{_READING_SUFFIX}"


class ReadingWriter:
    """A worker's side: ``read()`` pickled to ``path`` every ``interval`` s, and at ``stop``.

    Each write goes to a temporary name that is then renamed over ``path``, so
    the parent reads a whole reading or the one before, never half of one.
    """

    def __init__(
        self, path: Path, read: Callable[[], Reading], interval: float = READING_INTERVAL
    ) -> None:
        self.path = path
        self.read = read
        self.interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="metrics-reading", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def write(self) -> None:
        part = self.path.with_name(f".{self.path.name}.part")
        try:
            reading = self.read()
            reading.taken = time.monotonic()  # one clock for every process of the machine
            part.write_bytes(pickle.dumps(reading, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(part, self.path)
        except OSError as exc:
            if not self._failing:
                log.error("cannot write the metrics reading %s: %s", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def stop(self) -> None:
        """Stop, writing the final reading (the counts of a drained worker, whole)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.write()


def counters_of(reading: Reading) -> Reading:
    """The counters of ``reading`` alone: what a sum keeps of a worker it no longer hears."""
    return Reading(
        tally=reading.tally,
        hit_log_errors=reading.hit_log_errors,
        audit_log_errors=reading.audit_log_errors,
        redis_errors=reading.redis_errors,
    )


class WorkerReadings:
    """The parent's side: the sum of every worker's last reading in a run folder.

    ``read`` is what the parent's ``MetricsEndpoint`` reports; ``retire`` keeps
    a dead worker's counters in the sum (see the module docstring). ``workers``:
    how many there should be (those without a reading are ``down``).
    """

    def __init__(self, folder: Path, workers: int = 0) -> None:
        self.folder = folder
        self.workers = workers
        self._retired = Reading()
        self._lock = threading.Lock()
        #: workers that died and are started again (``shixin_worker_restarts_total``)
        self.restarts = 0

    def _load(self, path: Path) -> Reading | None:
        try:
            # the folder is the parent's own (mode 0700): only its workers write there
            value = pickle.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            log.error("metrics reading %s unreadable: %s", path, exc)
            return None
        return value if isinstance(value, Reading) else None

    def read(self) -> Reading:
        with self._lock:
            now = time.monotonic()
            fresh: list[Reading] = []
            stale: list[Reading] = []
            for path in sorted(self.folder.glob(f"w*{_READING_SUFFIX}")):
                reading = self._load(path)
                if reading is not None:
                    (fresh if now - reading.taken <= READING_STALE_S else stale).append(reading)
            # a stale reading's counters stay (they never go back), its gauges go
            merged = Reading.merged([self._retired, *map(counters_of, stale), *fresh])
            # readiness is the workers' heard from alone (the retired counters are no worker)
            merged.ready = bool(fresh) and not stale and all(r.ready for r in fresh)
            merged.stale = any(r.stale for r in fresh)
            down = max(0, self.workers - len(fresh) - len(stale))
            merged.workers = (len(fresh), len(stale), down)
            merged.worker_restarts = self.restarts
            return merged

    def retire(self, worker: int) -> None:
        """Worker ``worker`` has exited: its counters stay in the sum, its gauges go."""
        path = reading_path(self.folder, worker)
        with self._lock:
            last = self._load(path)
            if last is not None:
                self._retired = Reading.merged([self._retired, counters_of(last)])
            path.unlink(missing_ok=True)


class MetricsCollector:
    """A prometheus-client collector: the metric families of ``read()`` at each scrape."""

    def __init__(self, read: Callable[[], Reading]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        r = self.read()
        t = r.tally
        checks = CounterMetricFamily(
            CHECKS, "Checks answered with a decision, by channel and decision (a batch "
            "or stream counts each check; refused calls are not checks).",
            labels=("channel", "decision"),
        )  # fmt: skip
        hits = CounterMetricFamily(
            HITS, "Answered checks that matched a listed subject (hit-log records), by channel.",
            labels=("channel",),
        )  # fmt: skip
        for channel, c in _CHANNELS:
            for decision, d in _DECISIONS:
                checks.add_metric((channel, decision), t.checks[c * DECISIONS + d])
            hits.add_metric((channel,), t.hits[c])
        yield checks
        yield hits

        duration = HistogramMetricFamily(
            DURATION, "Server-side time per call (per request on CheckConsumptionStream), "
            "refused calls included.",
            labels=("method",),
        )  # fmt: skip
        for i, method in enumerate(METHODS):
            cumulative, buckets = 0, []
            for le, n in zip(_LE, list(t.latency[i]), strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            duration.add_metric((method,), buckets, t.latency_sum[i])
        yield duration

        refusals = CounterMetricFamily(
            REFUSALS, "Calls answered with a non-OK status, and stream requests answered "
            "with CheckResponse.error, by gRPC status code.",
            labels=("code",),
        )  # fmt: skip
        for number, name in _CODES:
            refusals.add_metric((name,), t.refusals[number])
        yield refusals

        limited = CounterMetricFamily(
            RATE_LIMITED, "Checks refused for the caller's rate or enumeration throttle, "
            "by principal.",
            labels=("caller",),
        )  # fmt: skip
        for caller, n in sorted(t.rate_limited.copy().items()):
            limited.add_metric((caller,), n)
        yield limited

        yield CounterMetricFamily(
            HIT_LOG_ERRORS, "Hit-log records that could not be written (the call failed).",
            value=r.hit_log_errors,
        )  # fmt: skip
        yield CounterMetricFamily(
            AUDIT_LOG_ERRORS, "Audit-log records that could not be written.",
            value=r.audit_log_errors,
        )  # fmt: skip
        yield CounterMetricFamily(
            REFUSALS_UNRECORDED, "Refusals for credentials (UNAUTHENTICATED) past the audit "
            "log's per-host rate: counted in a later record, not written one by one.",
            value=t.refusals_unrecorded,
        )  # fmt: skip
        yield CounterMetricFamily(
            BLOOM_POSITIVES, "Subject keys the Bloom filter let through to an index look-up.",
            value=t.bloom_positives,
        )  # fmt: skip
        yield CounterMetricFamily(
            BLOOM_FALSE_POSITIVES, "Bloom positives whose look-up found no entry.",
            value=t.bloom_false_positives,
        )  # fmt: skip
        yield CounterMetricFamily(
            INDEX_LOOKUPS, "Look-ups asked of the index: one per check with a Bloom "
            "positive, one per batch (in Redis mode: round trips).",
            value=t.index_lookups,
        )  # fmt: skip

        yield from self._list(r)
        if r.redis_errors is not None:
            yield CounterMetricFamily(
                REDIS_ERRORS, "Redis commands that failed (the replica's follower, "
                "the checks' look-ups and the hit forwarder).",
                value=r.redis_errors,
            )  # fmt: skip
        if r.replica_lag_seconds is not None:
            yield GaugeMetricFamily(
                REPLICA_LAG, "Seconds this replica has been unable to confirm that it "
                "holds all Redis holds (0 when its last round, every 0.1 s, caught up).",
                value=r.replica_lag_seconds,
            )  # fmt: skip

    def _list(self, r: Reading) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            READY, "1 while readiness (health \"\" and shixin.v1.ConsumptionCheck) is "
            "SERVING: a trusted list that is not stale, logs that take records, not "
            "stopping; 0 otherwise. With --workers, 1 only if every worker is ready "
            "and none is stale (see shixin_workers).",
            value=int(r.ready),
        )  # fmt: skip
        workers = GaugeMetricFamily(
            WORKERS, "Server processes by state: up (a single server, or a worker whose "
            f"metrics reading is at most {READING_STALE_S:g}s old), stale (a worker "
            "whose reading is older: hung, stopped, or unable to write it, as on a full "
            "disk), down (a worker with no reading: starting, or dead and waiting for "
            "its restart).",
            labels=("state",),
        )  # fmt: skip
        for state, n in zip(WORKER_STATES, r.workers, strict=True):
            workers.add_metric((state,), n)
        yield workers
        if r.worker_restarts is not None:
            yield CounterMetricFamily(
                WORKER_RESTARTS, "With --workers: workers that died (a crash, SIGKILL, the "
                "OOM killer) or were killed for sending no heartbeat (hung), each started "
                "again. A hung worker is stale for at most ~20 s, too short for an alert "
                "on shixin_workers: alert on this.",
                value=r.worker_restarts,
            )  # fmt: skip
        yield GaugeMetricFamily(
            LIST_STALE, "1 while the list served is older than --max-list-age (answers "
            "are marked stale and readiness is NOT_SERVING); 0 otherwise. With "
            "--workers, 1 if any worker's is.",
            value=int(r.stale),
        )  # fmt: skip
        info = GaugeMetricFamily(
            LIST_INFO, "1 for the list version served (none while no list is loaded or "
            "its Redis index lost the data).",
            labels=("version",),
        )  # fmt: skip
        for version in r.versions:
            info.add_metric((version,), 1)
        yield info
        if r.behind is not None:
            yield GaugeMetricFamily(
                LIST_BEHIND, "1 while a newer snapshot or delta file than the list served "
                "was refused (shixin-check status prints BEHIND: with the file and its "
                "first bad row), or in Redis mode a version this replica cannot read "
                "(another key secret, or loaded by older code); 0 otherwise.",
                value=int(r.behind),
            )  # fmt: skip
        if r.tls_certificate_expiry is not None:
            yield GaugeMetricFamily(
                TLS_EXPIRY, "notAfter of the TLS certificate served (the earliest of its "
                "chain), Unix seconds; read once at start, so it stays when the file is "
                "renewed until a restart. With --workers, the earliest any worker serves. "
                "No series without TLS.",
                value=r.tls_certificate_expiry,
            )  # fmt: skip
        if r.open_files_ratio is not None:
            yield GaugeMetricFamily(
                OPEN_FILES, "Open file descriptors over the soft limit on them (ulimit -n): "
                "at 1, new client connections and log files fail (EMFILE). Every client "
                "connection holds one. With --workers, the worker nearest its limit.",
                value=r.open_files_ratio,
            )  # fmt: skip
        if r.keys_file_refused is not None:
            yield GaugeMetricFamily(
                KEYS_REFUSED, "1 while the keys file as last read (on a change or SIGHUP) "
                "was refused: the keys in force before it stay, so a key removed from the "
                "file still works; 0 once it loads. With --workers, 1 if any worker refused "
                "it. No series without --keys-file.",
                value=int(r.keys_file_refused),
            )  # fmt: skip
        if r.source_timestamp is None:
            return
        yield GaugeMetricFamily(
            LIST_AGE, "Seconds since the feed's source time of the list served "
            "(ListStatus.source_timestamp).",
            value=max(0.0, time.time() - r.source_timestamp),
        )  # fmt: skip
        entries = GaugeMetricFamily(
            LIST_ENTRIES, "Entries of the list served, by list type and status (EXPIRED: "
            "past valid_until today).",
            labels=("list_type", "status"),
        )  # fmt: skip
        for list_type, status, n in r.entries:
            entries.add_metric((list_type, status), n)
        yield entries


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


#: A scrape's connection is closed when it sends nothing for this long: one that
#: connects and goes quiet would otherwise hold a thread and a file descriptor for
#: good, and enough of them leave grpc no descriptor for a new connection
METRICS_READ_TIMEOUT_S = 10.0
#: Connections served at once; one more is closed at once (Prometheus scrapes with one)
METRICS_CONNECTIONS = 32


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler, silent (no line per scrape), its reads bounded in time."""

    timeout = METRICS_READ_TIMEOUT_S

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Nothing: a scrape is no event."""


class _BoundedServer(ThreadingWSGIServer):
    """prometheus-client's threading WSGI server, with at most ``METRICS_CONNECTIONS``
    connections served at once."""

    request_queue_size = 64  # the listen backlog (socketserver's default is 5)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request: object, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[arg-type]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[arg-type]
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went quiet (timed out) or away is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def process_request_thread(self, request: object, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[arg-type]
        finally:
            self._slots.release()


def _serve(
    host: str, port: int, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """``prometheus_client.start_http_server``, its connections bounded in number and
    in time (``_BoundedServer``, ``_QuietHandler``)."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]  # fmt: skip

    class Server(_BoundedServer):
        address_family = family

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


class MetricsEndpoint:
    """``/metrics`` served by prometheus-client's HTTP server in a daemon thread.

    Binding happens in the constructor: a port in use is a one-line
    ``ConfigurationError`` naming the address, at start.
    """

    def __init__(self, listen: str, read: Callable[[], Reading]) -> None:
        host, port = split_listen(listen)
        self.registry = CollectorRegistry()
        self.registry.register(MetricsCollector(read))
        ProcessCollector(registry=self.registry)  # process_* (CPU, resident memory, fds)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        try:
            self._server, self._thread = _serve(host, port, self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"cannot serve metrics on {listen} (--metrics-listen): port {port} is in "
                    "use by another process (another shixin-check serve?)"
                ) from None
            raise ConfigurationError(
                f"cannot serve metrics on {listen} (--metrics-listen): {exc.strerror or exc}"
            ) from None
        self.host = host
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop answering and close the listening socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
