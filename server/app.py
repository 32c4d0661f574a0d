"""Running the service: gRPC server, health, reflection, metrics, list loading, shutdown.

Health is NOT_SERVING until the first list is loaded and again while the
server drains on SIGTERM/SIGINT; in-flight calls get ``--grace`` seconds to
finish. Loading runs in a worker thread, so status and health answer while a
long list loads.

Readiness ("" and ``shixin.v1.ConsumptionCheck``) also needs a fresh list:
with ``--max-list-age``, a list whose feed time is older is served on, each
answer marked ``stale``, but readiness is NOT_SERVING (``_health_state``,
polled every 0.2 s). ``liveness`` is SERVING from start to shutdown: a stale
or list-less server is alive; only draining turns it NOT_SERVING.

Shutdown (SIGTERM/SIGINT): every health status NOT_SERVING; with ``--drain``
new calls are still answered that long (a second signal cuts it short), for
load balancers that route on health to move away; then grpcio stops taking
calls and in-flight calls get ``--grace`` seconds; those still in flight then
are cut (``_stop_server``: the service withdraws the hits of a cut call whose
answer had not left), and their grpcio tasks are let end; then the followers
stop, the hit and audit logs are flushed and closed, and the metrics listener
(``--metrics-listen``) stops. The last line says whether calls were cut.
grpcio answers CANCELLED, whatever the grace, to the calls it has taken in but
not yet handed to the service when it stops (grpc/grpc#41785): never decided,
and the Python client retries them.

Keepalive (``_build_server``): a client may ping every
``KEEPALIVE_MIN_INTERVAL_S`` seconds, with or without calls (the Python
client's default is every 10 s); faster pinging, three times while the server
sends nothing, earns a GOAWAY ``too_many_pings``. The server pings each
connection every ``KEEPALIVE_TIME_S`` and drops one whose client does not
answer within ``KEEPALIVE_TIMEOUT_S``, ending the streams of a gateway that died.

``run_service`` runs one such server, or with ``--workers N`` (N > 1) a
supervisor (``server.workers``) whose N worker processes each run a
``Service`` with a ``WorkerSeat``: the port shared with SO_REUSEPORT (a single
server refuses to share it), its own hit and audit logs, its metrics written
for the parent to sum; a replacement worker loads its list before it binds.

A caller's bytes never put a traceback in the log (a traceback there means a
bug here): health and reflection are registered, like the service, with
deserialisers that turn bytes that do not parse into INVALID_ARGUMENT
(``register_leniently``), and grpcio's ERROR with a traceback for a header
that is not UTF-8 becomes one WARNING line (``CallerBytesFilter``).
``--metrics-listen`` on the gRPC port itself is refused at start, naming
both flags (``separate_ports``).

Whatever can refuse a start is checked before anything is written: the TLS
files, the gRPC and metrics ports and the keys file come before the hit and
audit logs make their folders and files (``Service.__init__``), and the
client CA's dates before any worker starts (``check_client_ca``). The TLS
files are read once, when the server binds, and checked again then
(``check_tls_files``): a worker of ``--workers`` started in a dead one's
place may find a rotation half done, and is refused naming the files
(``TlsFilesUnusable``), never as a port in use. The certificate served is
not reloaded: its notAfter is a metric, and a line says once a day while it
expires within ``CERTIFICATE_WARN_DAYS`` days, and once it has expired
(``Service._watch_certificate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import gc
import inspect
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from redis import RedisError

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.certificates import (
    CERTIFICATE_WARN_DAYS,
    certificate_dates,
    check_certificate_dates,
    expires_in,
)
from shixin_check.domain.errors import ConfigurationError, LoadRejected, MalformedRequest
from shixin_check.domain.index import IndexSource
from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.columns import keyer_for
from shixin_check.loader.compiled import IndexStore, changed_under
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.index_redis import RedisFollower, RedisKeys, connect, is_denial
from shixin_check.loader.versions import DirectoryFollower, ListFileChanged, Loader
from shixin_check.server.auth import EnumerationWatch, Gate, KeyRing, KeysWatcher
from shixin_check.server.engine import CheckEngine
from shixin_check.server.hitlog import (
    AuditLog,
    ForeignFile,
    HitLog,
    LogInUse,
    write_error_advice,
)
from shixin_check.server.hitsink import HitForwarder, error_text
from shixin_check.server.metrics import MetricsEndpoint, Reading, ReadingWriter, take_reading
from shixin_check.server.service import (
    MAX_METADATA_BYTES,
    ConsumptionCheckService,
    abort_call,
    add_to_server,
    log_problem,
)
from shixin_check.server.settings import DEMO_METRICS_LISTEN, ServeSettings, check_pem
from shixin_check.server.status import refusal

if TYPE_CHECKING:
    from shixin_check.server.workers import WorkerSeat

log = logging.getLogger("shixin.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ConsumptionCheck"].full_name
#: Server reflection's current name: served beside v1alpha, the one grpcio-reflection ships
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
#: Health name that is SERVING only while the served list is the feed's newest:
#: NOT_SERVING while a refused snapshot or delta leaves it behind (alert on it;
#: keep routing on "" or ConsumptionCheck, which stay SERVING on the last good list).
LIST_CURRENT = "shixin.v1.ListCurrent"
#: Health name for liveness probes: SERVING while the process runs, a stale or
#: list-less server included; NOT_SERVING only while it drains at shutdown.
LIVENESS = "liveness"
HEALTH_POLL_S = 0.2
#: the record size a log is tried with at start (``AppendLog.check_room``): a hit
#: record of a batch's check, or an audit record, is a few hundred bytes
START_ROOM_BYTES = 1024
#: seconds between looks at the files of the compiled version mapped (``changed_under``)
MAPPED_WATCH_S = 1.0
#: Seconds between tries of a log that failed a write (``Service._probe_logs``).
LOG_PROBE_S = 1.0
#: ``health_problem`` of a server with no list yet (``MemoryIndex``), and of a Redis
#: replica before anything is loaded in Redis (``RedisFollower``)
NO_LIST = "no list loaded yet"
NOTHING_IN_REDIS = "redis holds no version yet"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: The fastest client pinging accepted (the Python client's default keepalive is 10 s:
#: ``clients/channel.py`` ``KEEPALIVE_MIN_INTERVAL_S`` says the same).
KEEPALIVE_MIN_INTERVAL_S = 5
#: Pings too soon (while the server sends nothing) tolerated before GOAWAY too_many_pings.
KEEPALIVE_PING_STRIKES = 2
#: The server's own pings: a client silent this long after one is gone.
KEEPALIVE_TIME_S = 60
KEEPALIVE_TIMEOUT_S = 20
#: How long grpcio's tasks of calls cut at the end of the grace period may take to end
#: (a few turns of the loop) before the logs they write to are closed
CUT_CALLS_END_S = 2.0
#: grpcio's own cut comes this long after ours (``Service._stop_server``), as a backstop
GRPC_CUT_SLACK_S = 5.0
#: While the served certificate expires within ``CERTIFICATE_WARN_DAYS``, or has expired,
#: a line says so this often (and at start); the clock is looked at least every hour
CERTIFICATE_NOTE_EVERY_S = 24 * 3600.0
CERTIFICATE_CLOCK_S = 3600.0


class TlsFilesUnusable(ConfigurationError):
    """The TLS files as they are on disk now cannot be served: changed since the start
    checked them (a rotation half done), or refused by grpcio. A worker of ``--workers``
    that meets this when it is started again is retried while the others serve on
    with the files they read (``server.workers``)."""


class KeysFileUnusable(ConfigurationError):
    """The keys file as it is on disk now does not load (edited badly since the start,
    its reload refused by the others). A worker of ``--workers`` that meets this when
    it is started again is retried while the others serve on with the keys in force
    (``server.workers``), as for ``TlsFilesUnusable``."""


class Service:
    """A configured server, not yet started. ``run()`` serves until stopped.

    ``seat``: this server is one worker of ``serve --workers N`` (its settings
    already name its own logs); None for a single server.
    """

    def __init__(
        self,
        settings: ServeSettings,
        announce: Callable[[str], None] = print,
        seat: WorkerSeat | None = None,
    ) -> None:
        self.settings = settings
        self.announce = announce
        self.seat = seat
        # Whatever can refuse the start is checked before anything is written (the logs
        # below make their folders and files): the TLS files, the ports, the keys file.
        check_tls_files(settings)
        if seat is None:  # the supervisor checked, and holds the port for its workers
            port_is_free(settings.listen)
            metrics_port_is_free(settings)
        ring = None
        self.keys_watcher: KeysWatcher | None = None
        #: the keys file as last read was refused (None: no keys file)
        self.keys_file_refused: bool | None = None if settings.keys_file is None else False
        if settings.keys_file is not None:
            self.keys_watcher = KeysWatcher(settings.keys_file, self._on_keys_file)
            try:
                ring = KeyRing.load(settings.keys_file)
            except ConfigurationError as exc:
                if seat is None:
                    raise
                raise KeysFileUnusable(str(exc)) from None
        elif settings.tls_client_ca is not None:
            ring = KeyRing()
        #: notAfter (Unix seconds) of the certificate served, the earliest of its chain
        #: (None: no TLS, or not bound yet)
        self.certificate_expires: float | None = None
        self.keyer = keyer_for(settings.secret)  # its keys made in C where built
        self.index = MemoryIndex()
        folder = settings.compiled_index
        spare = seat.applied_spare if seat is not None else None
        store = IndexStore(folder, self.keyer.fingerprint, spare) if folder is not None else None
        self.loader = Loader(self.index, self.keyer, store)
        self.follower: DirectoryFollower | None = None
        self.demo_folder: Path | None = None  # --demo: the synthetic list's own folder
        self.redis: RedisFollower | None = None
        source: IndexSource = self.index
        if settings.redis:
            self.redis = RedisFollower(
                settings.redis, self.keyer, RedisKeys(settings.redis_prefix),
                settings.replica_id, on_event=self._on_redis_event,
            )  # fmt: skip
            source = self.redis
        durability: dict[str, Any] = {
            "fsync": settings.log_fsync,
            "fsync_interval": settings.log_fsync_interval,
            "max_bytes": settings.log_max_bytes,
        }
        self.hit_log: HitLog | None = _open_log(HitLog, "--hit-log", settings.hit_log, durability)
        self.audit_log: AuditLog | None = _open_log(
            AuditLog, "--audit-log", settings.audit_log, durability
        )
        for sink in (self.hit_log, self.audit_log):  # a full disk: NOT_SERVING from the start
            if sink is not None:
                sink.check_room(START_ROOM_BYTES)
        if self.audit_log is not None and seat is not None:  # how many sets to expect
            self.audit_log.note_start(seat.number, settings.workers)
        self.forwarder: HitForwarder | None = None
        if settings.redis and settings.hit_log is not None:
            self.forwarder = HitForwarder(
                connect(settings.redis), settings.hit_log, settings.redis_prefix,
                on_event=self._on_redis_event, url=settings.redis,
            )  # fmt: skip
            if self.redis is not None:  # one shixin_redis_errors_total for both
                self.redis.other_errors.append(self.forwarder.errors)
        watch = EnumerationWatch(
            settings.enumeration_threshold,
            settings.enumeration_window,
            settings.enumeration_throttle,
        )
        self.gate = Gate(ring, watch, on_flag=self._on_enumeration)
        self.engine = CheckEngine(
            source, self.keyer, settings.policy, self.hit_log, self.gate,
            max_list_age=settings.max_list_age,
        )  # fmt: skip
        self.metrics: MetricsEndpoint | None = None
        self.reading_writer: ReadingWriter | None = None
        if seat is not None and seat.reading_file is not None:
            self.reading_writer = ReadingWriter(seat.reading_file, self.reading)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second stop signal: no drain
        #: why this server stopped itself (its process then exits 1), or ""
        self.fatal = ""
        #: mapped files whose ctime alone changed and whose bytes still matched: the
        #: ctime (by path) they were read at (``changed_under``)
        self._checked_files: dict[str, int] = {}
        #: until the --drain after a stop signal is over (a second signal ends it; one
        #: before the drain began skips it)
        self._draining = settings.drain_seconds > 0
        self.checks: ConsumptionCheckService | None = None  # the servicer, once built
        #: why the list file was not loaded, when that is not a bad row: it changed under
        #: the running pool of workers this one belongs to (``ListFileChanged``)
        self.list_refusal = ""

    def _build_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # metadata: refused over 16 KiB, every time (grpc's soft limit, 8 KiB
                # by default, refused calls between the two at random)
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
                # grpcio shares ports by default (SO_REUSEPORT): a second server, a
                # demo or a stale process, would silently take part of the traffic.
                # Only the workers of one supervisor share theirs (its check came first).
                ("grpc.so_reuseport", int(self.seat is not None)),
                # keepalive: accept a client's ping every 5 s, calls or not (grpc's
                # default, one per 5 minutes and none without calls, would GOAWAY the
                # Python client's); ping clients ourselves to find dead ones
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_INTERVAL_S * 1000),
                ("grpc.http2.max_ping_strikes", KEEPALIVE_PING_STRIKES),
                ("grpc.keepalive_time_ms", KEEPALIVE_TIME_S * 1000),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
                ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),  # else 1 minute
                ("grpc.http2.max_pings_without_data", 0),  # else 2, then none on a quiet stream
            ]
        )
        settings = self.settings
        self.checks = ConsumptionCheckService(
            self.engine, settings.policy, self.audit_log, settings.max_batch, self.gate,
            tls_principals=settings.tls_client_ca is not None,
        )  # fmt: skip
        add_to_server(self.checks, server)
        quiet_caller_bytes()
        lenient = LenientRegistration(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, lenient)
        reflecting = reflection.aio.ReflectionServicer(  # v1 answers, unlisted: it has no
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)  # descriptor here
        )
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflecting, lenient)
        # grpcio-reflection serves v1alpha only; v1 is the same protocol renamed, message
        # for message, and newer tools (a grpc-js reflection client set to v1) ask for it
        lenient.add_registered_method_handlers(REFLECTION_V1, {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                reflecting.ServerReflectionInfo,
                reflection_pb2.ServerReflectionRequest.FromString,
                reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        })  # fmt: skip
        lenient.done()
        if self.seat is None:  # the supervisor checked, and holds the port for its workers
            port_is_free(settings.listen)  # a clean one-line refusal before grpcio's own log line
        tls = settings.tls_cert is not None and settings.tls_key is not None
        try:
            if settings.tls_cert is not None and settings.tls_key is not None:
                # again: a replacement worker's load may have taken minutes, and the files
                # may be half way through a rotation (grpcio would say only "Invalid
                # private key" in its own log, and fail the bind)
                check_tls_files(settings)
                try:
                    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
                    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
                    expires = min(after for _, after in certificate_dates(settings.tls_cert))
                except (OSError, ValueError) as exc:  # gone or rewritten since the check
                    raise TlsFilesUnusable(
                        f"{_tls_files(settings)}: {getattr(exc, 'strerror', None) or exc} "
                        "(the files changed since start?)"
                    ) from None
                credentials = grpc.ssl_server_credentials(
                    [pair], root_certificates=ca, require_client_auth=ca is not None
                )
                # every caller shows a certificate: one without a CN is named as such
                self.gate.certificates_required = ca is not None
                self.port = server.add_secure_port(settings.listen, credentials)
                if self.port:
                    from shixin_check.server.settings import certificate_note

                    self.certificate_expires = expires.timestamp()
                    soon, note = certificate_note(settings.tls_cert)
                    (log.warning if soon else log.info)("%s", note)
            else:
                self.port = server.add_insecure_port(settings.listen)
        except RuntimeError:  # grpcio: "Failed to bind to address ..."
            self.port = 0
        if self.port == 0 and tls and port_binds(settings.listen, shared=self.seat is not None):
            # the port is free: grpcio refused the credentials (its own log line says why)
            raise TlsFilesUnusable(
                f"cannot listen on {settings.listen} with TLS: the port is free, but grpcio "
                f"refused {_tls_files(settings)} (its log line above says why: a key type or "
                "a certificate it cannot use, though OpenSSL reads them?)"
            )
        if self.port == 0:
            raise ConfigurationError(
                f"cannot listen on {settings.listen}: the port is in use (another server?) "
                "or the address is not this machine's"
            )
        return server

    async def _set_health(
        self, serving: bool, current: bool | None = None, alive: bool = True
    ) -> None:
        """Readiness ("" and ConsumptionCheck), the list's currency and liveness."""
        states = (
            health_pb2.HealthCheckResponse.NOT_SERVING,
            health_pb2.HealthCheckResponse.SERVING,
        )
        await self.health.set("", states[serving])
        await self.health.set(SERVICE_NAME, states[serving])
        await self.health.set(LIST_CURRENT, states[serving if current is None else current])
        await self.health.set(LIVENESS, states[alive])

    def health_problem(self) -> str:
        """Why this server must not be called SERVING ("" when it may)."""
        source = self.engine.source
        problem: str = getattr(source, "health_problem", lambda: "")()
        if problem:
            return problem
        return "" if source.current() is not None else NO_LIST

    def behind(self) -> bool:
        """True while a newer list than the one served was refused (Redis mode: a version
        this replica cannot read, loaded with another key secret)."""
        if self.redis is not None:
            return bool(self.redis.behind_problem())
        return self.index.refused is not None

    def stale_since(self) -> float | None:
        """When the served list went stale (None: fresh, none loaded, or no --max-list-age)."""
        view = self.engine.source.current()
        since = None if view is None else self.engine.stale_since(view.info)
        return since if since is not None and time.time() >= since else None

    def log_problem(self) -> str:
        """Why readiness is NOT_SERVING for the hit or audit log ("" when both take records)."""
        return log_problem(self.hit_log, self.audit_log)

    def _health_state(self) -> tuple[bool, bool, bool, str]:
        """(ready, list current, stale, a log's problem): ready needs a trusted list that
        is not stale, and logs that take records (else every check needing one fails)."""
        problem = self.health_problem()
        stale = self.stale_since() is not None
        logs = self.log_problem()
        ready = not problem and not stale and not logs
        return ready, not problem and not self.behind(), stale, logs

    def _why_not_serving(self) -> str:
        """``health_problem``, with what it means for an operator and what to do."""
        problem = error_text(self.health_problem())
        if self.redis is not None and problem == NOTHING_IN_REDIS:
            return (f"nothing loaded in Redis yet ({self.redis.url}): load a list with "
                    f"`shixin-check load --redis {self.redis.url} FILE`; this server serves "
                    "it as soon as it is there")  # fmt: skip
        if self.list_refusal and self.engine.source.current() is None:
            return self.list_refusal
        folder = self.settings.list_path
        if problem == NO_LIST and folder is not None and folder.is_dir():
            return (f"no list yet: waiting for a snapshot in {folder} (looked for every "
                    f"{self.settings.poll_interval:g}s)")  # fmt: skip
        return problem

    def readiness_problem(self) -> str:
        """Why readiness is NOT_SERVING now, as its log line says ("" when SERVING)."""
        ready, _, stale, logs = self._health_state()
        if ready:
            return ""
        return self._why_not_serving() or logs or (self._stale_text() if stale else "not ready")

    def _say_not_serving(self, state: tuple[bool, bool, bool, str]) -> None:
        """The one line of a readiness that is NOT_SERVING: why."""
        problem = self._why_not_serving()
        if problem:
            log.error("health: NOT_SERVING: %s", problem)
        elif state[3]:
            log.error("health: NOT_SERVING: %s; checks that need a record fail INTERNAL "
                      "until a write goes in (tried every %gs)", state[3], LOG_PROBE_S)  # fmt: skip
        else:
            log.warning("health: NOT_SERVING: %s", self._stale_text())

    def _probe_logs(self) -> None:
        """A log that failed a write is tried again (``AppendLog.probe``): no call may
        come to find it writable while health keeps traffic away."""
        for sink in (self.hit_log, self.audit_log):
            if sink is not None and sink.failure is not None:
                sink.probe()

    async def _watch_health(self, last: tuple[bool, bool, bool, str]) -> None:
        """Keep health in step with the index (loaded, lost in Redis, behind, stale) and
        with the logs (failing writes)."""
        probed = watched = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HEALTH_POLL_S)
            if self._stop.is_set():
                return
            if time.monotonic() - watched >= MAPPED_WATCH_S:
                watched = time.monotonic()
                if await self._mapped_files_changed():
                    return
            if not last[3]:  # a failure seen now is tried a whole interval later
                probed = time.monotonic()
            elif time.monotonic() - probed >= LOG_PROBE_S:
                probed = time.monotonic()
                self._probe_logs()
            state = self._health_state()
            self.engine.stale = state[2]
            if state != last:
                if not state[0]:
                    self._say_not_serving(state)
                elif not state[1]:
                    refused = self.index.refused if self.redis is None else None
                    what = (self.redis.behind_problem() if self.redis is not None else
                            f"{refused[0] if refused else 'a file'} refused")  # fmt: skip
                    log.warning("health: SERVING the last good list; %s NOT_SERVING: %s",
                                LIST_CURRENT, what)  # fmt: skip
                else:
                    log.info("health: SERVING")
                await self._set_health(state[0], state[1])
                last = state

    async def _mapped_files_changed(self) -> bool:
        """True (and this server stopping, no drain, its process to exit 1) once a file
        of the compiled version it maps was written in place or cut short: what it
        answers from is no longer what was checked when it was mapped. A start maps the
        version again, finds it damaged and compiles it anew; a worker so stopped is
        started again by its supervisor. A chmod or a hard link (a backup) changes no
        byte: read once, then left alone."""
        view = self.index.current() if self.redis is None else None
        if view is None or not view.info.mapped_files:
            return False
        problem = await asyncio.to_thread(changed_under, view.info, self._checked_files)
        if not problem:
            return False
        self.fatal = problem
        log.error("%s; stopping now (no --drain; calls in flight get up to --grace), to be "
                  "started again (exit status 1): a start checks the folder and compiles the "
                  "version anew", problem)  # fmt: skip
        await self._set_health(False, False)
        self._hurry.set()
        self._stop.set()
        return True

    async def _watch_certificate(self, expires: float) -> None:
        """Say, once a day, that the certificate served expires within
        ``CERTIFICATE_WARN_DAYS`` (a WARNING), and once it has expired (an ERROR, then
        daily): grpcio serves the certificate it read at start to the end, and every
        handshake fails from then on, while health and ``shixin_ready`` stay SERVING.
        The start's own line (``certificate_note``) was the first; a line is due at the
        expiry itself too. Off the check path: one timer on the loop."""
        path = self.settings.tls_cert
        due = time.time() + CERTIFICATE_NOTE_EVERY_S
        told_expired = False
        while True:
            now = time.time()
            if now >= due or (now >= expires and not told_expired):
                due = now + CERTIFICATE_NOTE_EVERY_S
                at = _utc_text(expires)
                if now >= expires:
                    told_expired = True
                    log.error("TLS certificate %s has expired, at %s: every TLS handshake "
                              "fails (clients see CERTIFICATE_VERIFY_FAILED, certificate "
                              "expired) while health stays SERVING; the server cannot reload "
                              "it: restart the server with a renewed certificate", path, at)  # fmt: skip
                elif expires - now < CERTIFICATE_WARN_DAYS * 86400:
                    log.warning("TLS certificate %s expires %s, at %s; the server cannot "
                                "reload it: restart the server with a renewed certificate "
                                "before then", path, expires_in(_dt.timedelta(seconds=expires - now)),
                                at)  # fmt: skip
            wake = due if now >= expires else min(due, expires)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), min(max(0.0, wake - now), CERTIFICATE_CLOCK_S)
                )
            if self._stop.is_set():
                return

    def _stale_text(self) -> str:
        view = self.engine.source.current()
        since = self.stale_since()
        if view is None or since is None or self.settings.max_list_age is None:
            return "the list is stale"
        return (
            f"the list is stale: its feed time {_utc(view.info.source_timestamp)} is older "
            f"than --max-list-age ({self.settings.max_list_age:g}s) since {_utc(since)}; "
            "answering from it, every answer marked stale"
        )

    def reading(self) -> Reading:
        """What the metrics endpoint reports now (called on its thread)."""
        ready, _, stale, _ = self._health_state()
        return take_reading(
            self.engine,
            not self.health_problem(),
            self.hit_log,
            self.audit_log,
            self.redis,
            behind=self.behind(),
            ready=ready and not self._stop.is_set(),
            stale=stale,
            tls_expiry=self.certificate_expires,
            keys_file_refused=self.keys_file_refused,
        )

    def _metrics_endpoint(self, listen: str) -> MetricsEndpoint:
        try:
            return MetricsEndpoint(listen, self.reading)
        except ConfigurationError as exc:
            if not (self.settings.demo and listen == DEMO_METRICS_LISTEN):
                raise
            # the demo's own default, taken (another demo?): a free port rather than no demo
            log.warning("%s; the demo serves its metrics on another port", exc)
            return MetricsEndpoint("127.0.0.1:0", self.reading)

    def _load(self) -> None:
        """Blocking: the first list, then (for a directory or Redis) start following it."""
        settings = self.settings
        if self.redis is not None:
            try:
                self.redis.sync_once()
            except (RedisError, ConfigurationError) as exc:
                if not is_denial(exc):  # a refusal is no blip: the follower's round says it
                    log.error("redis: %s (retrying in the background)", error_text(exc))
            self.redis.start()
            if self.forwarder is not None:
                self.forwarder.start()
            return
        if settings.demo:
            path = write_demo_list(settings.demo_count, self.announce)
            self.demo_folder = path.parent  # removed at exit (run_service)
        else:
            assert settings.list_path is not None
            path = settings.list_path
        if path.is_dir():
            follower = DirectoryFollower(
                path, self.loader, self._on_event, settings.poll_interval, settle=settings.settle
            )
            follower.initial_load()
            follower.start()
            self.follower = follower
        else:
            # a worker serves the file the pool started with, or nothing (``--workers``)
            pinned = self.seat.list_identity if self.seat is not None else None
            try:
                view = self.loader.load_path(path, progress=self._progress, pinned=pinned)
            except LoadRejected as exc:
                self.index.refuse(str(path), str(exc.errors[0]) if exc.errors else str(exc))
                raise
            except ListFileChanged as exc:  # said once, as health NOT_SERVING (_say_not_serving)
                self.list_refusal = str(exc)
                self.index.refuse(str(path), self.list_refusal)
                return
            self._on_event("loaded", path, view.info.version)

    def _on_enumeration(self, principal: str, windows: int) -> None:
        log.warning("principal %r checked unusually many distinct identities (window %d)",
                    principal, windows)  # fmt: skip
        if self.audit_log is not None:
            self.audit_log.record(
                "ENUMERATION_SUSPECTED", "", "", f"more than {self.settings.enumeration_threshold} "
                f"distinct identities in {self.settings.enumeration_window:g}s", time.perf_counter(),
                0, caller=principal,
            )  # fmt: skip

    def _on_keys_file(self, ring: KeyRing | None, detail: str) -> None:
        """A reload of the keys file, on the loop's thread: in force now, or refused."""
        path = self.settings.keys_file
        self.keys_file_refused = ring is None
        if ring is None:
            log.error("keys file %s refused, the keys in force stay: %s", path, detail)
            outcome = f"REFUSED: {detail}"
        else:
            outcome = f"{self.gate.replace_ring(ring)} ({detail})"
            log.info("keys file %s reloaded: %s", path, outcome)
        if self.audit_log is not None:
            self.audit_log.record("KEYS_RELOAD", "", "", outcome, time.perf_counter(), 0)

    def _on_redis_event(self, what: str, detail: str) -> None:
        if what == "version":
            log.info("redis: serving version %s", detail)
        elif what == "redis-up":
            log.info("redis: connected")
        elif what == "redis-down":  # once, when a connected follower loses Redis
            where = self.redis.url if self.redis is not None else "Redis"
            log.error("redis: %s unreachable: %s; checks whose Bloom filter says \"maybe\" "
                      "get the channel's --unavailable decision until it is back (the "
                      "others are answered from the list in hand): check that Redis (its "
                      "sentinels, the network, the password) is up and reachable from here; "
                      "counted in shixin_redis_errors_total, \"redis: connected\" when back",
                      where, error_text(detail))  # fmt: skip
        elif what == "redis-full":  # once, while Redis is over its maxmemory
            where = self.redis.url if self.redis is not None else "Redis"
            log.error("redis: %s is over its maxmemory (%s): it refuses every transaction, "
                      "so checks whose Bloom filter says \"maybe\" get the channel's "
                      "--unavailable decision until it is under it again (the others are "
                      "answered from the list in hand), and no load can run: raise maxmemory "
                      "or free memory in Redis; counted in shixin_redis_errors_total",
                      where, error_text(detail))  # fmt: skip
        elif what == "denied":  # once, and again when the cause changes
            log.error("redis: %s; health NOT_SERVING until a round works again", detail)
        elif what == "denied-over":
            log.info("redis: Redis takes this server's password and commands again")
        elif what == "redis-not-full":
            log.info("redis: under its maxmemory again: look-ups answered from Redis")
        elif what == "lost":  # the detail says "redis lost ...": no second prefix
            log.error("redis: %s; every check gets the channel's --unavailable decision until "
                      "a list is loaded again (shixin-check load --redis ...)", detail)  # fmt: skip
        elif what == "hits-reforwarded":  # once per failover (HitForwarder._rewind)
            log.warning("redis: %s", detail)
        elif what == "write-works":
            log.info("redis: writing to Redis works again")
        elif what == "write-refused":  # once, not each try (RedisFollower._write)
            log.error("redis: %s", detail)
        elif what == "hits-forwarding":
            log.info("redis: forwarding hits works again")
        elif what == "hits-spooling":  # once, not each try (HitForwarder._spooling)
            log.error("redis: %s", detail)
        else:  # refused (another key secret, a password), old-format, hits-unreadable
            log.error("redis: %s: %s", what, error_text(detail))

    def _progress(self, rows: int) -> None:
        log.info("loading: %d rows read", rows)

    def _on_event(self, what: str, path: Path, detail: str) -> None:
        if what == "loaded":
            view = self.index.current()
            total = view.info.counts.total if view else 0
            log.info("list %s: version %s, %d entries", path, detail, total)
        else:
            log.error("list %s %s: %s", path, what, detail)

    def request_stop(self, sig: int | None = None) -> None:
        """A stop signal (``sig``; None: asked in-process). A second one to a single
        server ends its ``--drain`` at once, and says so. A worker's come twice as a
        rule (the terminal's SIGINT or the service manager's SIGTERM to the whole group,
        then the supervisor's): only the supervisor's ``HURRY_SIGNAL`` ends its drain
        (``hurry``)."""
        if self._stop.is_set() and self.seat is None:
            if sig is not None:  # the person who sent it learns what it did
                grace = self.settings.grace_seconds
                if self._draining:
                    log.info("%s again: the drain (--drain) ends now; calls in flight get up "
                             "to %.1fs (--grace)", signal.Signals(sig).name, grace)  # fmt: skip
                else:
                    log.info("%s again: already stopping; calls in flight get up to %.1fs "
                             "(--grace), then are cut", signal.Signals(sig).name, grace)  # fmt: skip
            self._hurry.set()
        self._stop.set()

    def _on_hangup(self) -> None:
        """SIGHUP: reload the keys file, or say there is nothing to reload."""
        if self.keys_watcher is not None:
            self.keys_watcher.poke()
        elif self.seat is None:  # a worker's comes with the supervisor's, which said it
            log.info("SIGHUP: nothing to reload (no --keys-file)")

    def hurry(self) -> None:
        """The supervisor's second stop: no more drain."""
        self._hurry.set()
        self._stop.set()

    async def _load_list(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except LoadRejected as exc:
            log.error("%s", exc)
            path = self.settings.list_path
            if path is not None and path.is_file():  # a file is read at start only
                self.announce(f"list rejected: serving NOT_SERVING; {path} is read at start "
                              "only: fix it, then restart the server")  # fmt: skip
            else:
                self.announce("list rejected: serving NOT_SERVING until a good list arrives")

    def _catch_stop_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig)
        if self.seat is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(HURRY_SIGNAL, self.hurry)
        else:  # their default is death, silent: habit from other servers sends them
            for sig in UNUSED_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, unused_signal, sig)

    async def run(self, on_ready: Callable[[Service], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        # A replacement worker loads before it binds: the kernel hands new connections
        # to every socket on the shared port, and the other workers serve meanwhile.
        load_first = self.seat is not None and self.seat.replacement
        if load_first:
            self._catch_stop_signals(loop)
            await self._load_list()
        server = self._build_server()
        if self.settings.metrics_listen is not None:
            try:
                self.metrics = self._metrics_endpoint(self.settings.metrics_listen)
            except ConfigurationError:
                await server.stop(None)
                raise
        await self._set_health(False)
        self._catch_stop_signals(loop)  # before the announce: a stop is never lost
        await server.start()
        if self.reading_writer is not None:
            self.reading_writer.start()
        expiry_watch = None
        if self.certificate_expires is not None:
            expiry_watch = loop.create_task(self._watch_certificate(self.certificate_expires))
        self.announce(f"serving on {self.settings.listen.rsplit(':', 1)[0]}:{self.port}")
        if self.metrics is not None:
            self.announce(f"metrics on {self.metrics.url}")
        log.info("subject-key secret: %s", self.settings.secret_source)
        settings = self.settings
        if settings.keys_file is not None and settings.tls_cert is None and not settings.loopback:
            log.warning("API keys are accepted over plaintext on %s: anyone on the path can "
                        "read them (give --tls-cert/--tls-key)", self.settings.listen)  # fmt: skip
        if not self.settings.authenticated:
            log.warning("AUTHENTICATION IS OFF: every caller may check every channel "
                        "(give --keys-file or --tls-client-ca to turn it on)")  # fmt: skip
        if self.keys_watcher is not None:  # the keys file: reloaded when it changes, or on SIGHUP
            self.keys_watcher.start(loop)
        # SIGHUP's default ends the process: without a keys file it reloads nothing, and
        # says so, as the supervisor of --workers does
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        if not load_first:
            try:
                await self._load_list()
            except BaseException:  # stopped before it goes: no grpcio traceback at exit
                await server.stop(None)
                raise
        # What exists now lives as long as the process: keep it out of every later
        # collection, so the garbage of each check is collected young and cheaply.
        gc.collect()
        gc.freeze()
        state = self._health_state()
        self.engine.stale = state[2]
        if not state[0]:  # once: the watcher speaks only of changes
            self._say_not_serving(state)
        await self._set_health(state[0], state[1])
        watcher = asyncio.get_running_loop().create_task(self._watch_health(state))
        if on_ready is not None:
            on_ready(self)
        await self._stop.wait()
        drain = 0.0 if self._hurry.is_set() else self.settings.drain_seconds
        self._draining = drain > 0  # a second signal may have skipped it already
        if drain > 0:
            log.info("stopping: health NOT_SERVING; answering new calls for %.1fs (--drain), "
                     "then draining in-flight calls for up to %.1fs",
                     drain, self.settings.grace_seconds)  # fmt: skip
        else:
            log.info("stopping: health NOT_SERVING; draining in-flight calls for up to %.1fs",
                     self.settings.grace_seconds)  # fmt: skip
        await watcher
        if expiry_watch is not None:
            await expiry_watch
        await self._set_health(False, False, alive=False)
        await self.health.enter_graceful_shutdown()  # no later change turns anything SERVING
        if drain > 0:  # load balancers that route on health move away; a second signal: now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain)
            self._draining = False
        cut = await self._stop_server(server)
        if self.checks is not None:  # refusals held back from the audit log, before it closes
            self.checks.summarize_refusals()
        if self.keys_watcher is not None:
            self.keys_watcher.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        for sink in (self.hit_log, self.audit_log):
            if sink is not None:
                sink.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.reading_writer is not None:
            self.reading_writer.stop()
        if cut:
            log.info("stopped: %d in-flight call%s cut at the end of the grace period (--grace "
                     "%gs), logs closed", cut, "" if cut == 1 else "s",
                     self.settings.grace_seconds)  # fmt: skip
        else:
            log.info("stopped: in-flight calls done, logs closed")

    async def _stop_server(self, server: grpc.aio.Server) -> int:
        """Stop ``server``: no new calls; those in flight get ``--grace`` seconds, then
        are cut. Returns how many were cut (0: all ended in time).

        The cut is made here, not by grpcio's own timer (``GRPC_CUT_SLACK_S`` later, a
        backstop): the service is told first (``ConsumptionCheckService.cutting``), so
        the hits it withdraws for a cut call say why. grpcio reports the server stopped
        a few turns of the loop before the tasks of the calls it cut have ended:
        they are waited for (at most ``CUT_CALLS_END_S``), so that what they write
        reaches the logs before these close, and none is left for ``asyncio.run`` to
        cancel (grpcio logs each such with a traceback)."""
        grace = self.settings.grace_seconds
        stopping = asyncio.ensure_future(server.stop(grace + GRPC_CUT_SLACK_S))
        cut = 0
        try:
            ran_out = grace <= 0 or await server.wait_for_termination(grace)  # True: timed out
        except Exception:  # noqa: BLE001 - grpcio's server had crashed (it logged why): it is down
            ran_out = False
        if ran_out:
            cut = len(_call_tasks())
            if self.checks is not None:
                self.checks.cutting = True
            await server.stop(None)  # every call still in flight cancelled now
        await stopping
        ending = _call_tasks()
        if ending:
            await asyncio.wait(ending, timeout=CUT_CALLS_END_S)
        return cut


def _call_tasks() -> list[asyncio.Task[Any]]:
    """grpcio's tasks of the calls in flight (one a call, ``_schedule_rpc_coro`` of
    grpc.aio's server; none found if a later grpcio names it otherwise)."""
    return [t for t in asyncio.all_tasks() if not t.done()
            and getattr(t.get_coro(), "__name__", "") == "_schedule_rpc_coro"]  # fmt: skip


#: Signals this server does not use, whose default action ends a process without a word
#: (an operator used to a server that rotates its logs on SIGUSR1 killed it): each is
#: said in one line and changes nothing (a worker's SIGUSR1 is its supervisor's hurry)
UNUSED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def unused_signal(sig: int) -> None:
    log.warning("%s ignored: this server does not use it (its logs rotate by themselves; "
                "SIGHUP reloads the keys file; SIGTERM stops it)", signal.Signals(sig).name)  # fmt: skip


#: What the supervisor of ``--workers`` sends its workers on a second stop signal: end
#: the drain now (a worker cannot tell the supervisor's SIGTERM from a terminal's SIGINT
#: or a service manager's SIGTERM to the whole group, which come as well)
HURRY_SIGNAL = signal.SIGUSR1


# --- a caller's bytes: never a traceback ------------------------------------------------

#: The logger of grpcio's Cython core (``grpc._cython.cygrpc``).
GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


class CallerBytesFilter(logging.Filter):
    """grpcio's ERROR with a traceback for a header that is not UTF-8, made one WARNING line.

    grpcio logs ``Invalid encoding on b'...'`` with the decode error's traceback
    (then reads the value as Latin-1 and goes on): a caller's bytes, not a bug
    here. The bytes are left out: the header may be a credential.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"):
            record.msg = "a caller sent a header value that is not UTF-8 (read as Latin-1)"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_caller_bytes() -> None:
    """Put ``CallerBytesFilter`` on grpcio's logger, once per process."""
    core = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(f, CallerBytesFilter) for f in core.filters):
        core.addFilter(CallerBytesFilter())


class _Unparsed:
    """What a lenient deserialiser hands over for bytes that are not the message."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class LenientRegistration:
    """Stands in for the server while a generated ``add_*_to_server`` registers a service.

    Each method gets a deserialiser that never raises and a behaviour that
    answers bytes that do not parse with INVALID_ARGUMENT (``MALFORMED_REQUEST``,
    as the service's own methods do) and one WARNING line, where grpcio would
    answer UNKNOWN and log an ERROR with a traceback.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Held: generated code names the same methods to ``add_registered_method_handlers``
        next, and only code that does not is registered as it is (``done``)."""
        self.generic.append(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.generic.clear()
        lenient = {name: _lenient(f"{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, lenient),)
        )
        self.server.add_registered_method_handlers(service, lenient)

    def done(self) -> None:
        """Register, unchanged, what came only as generic handlers."""
        for handlers in self.generic:
            self.server.add_generic_rpc_handlers(handlers)
        self.generic.clear()


def _lenient(method: str, handler: Any) -> grpc.RpcMethodHandler:
    """``handler`` (grpcio's method handler tuple) with a deserialiser that never raises."""
    parse = handler.request_deserializer
    message = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    what = getattr(message, "full_name", "request message")  # FromString is the class's

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except (DecodeError, ValueError, RuntimeError):
            return _Unparsed(f"request is not a valid {what}")

    async def refuse(unparsed: _Unparsed, context: grpc.aio.ServicerContext) -> None:
        log.warning("%s from %s: %s (INVALID_ARGUMENT)", method, context.peer(), unparsed.problem)
        told = refusal(MalformedRequest(unparsed.problem))
        await abort_call(context, told.code, told.message, told.trailing_metadata())

    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    kind = next((k for k in kinds if getattr(handler, k) is not None), "")
    behaviour = getattr(handler, kind, None)
    streamed = kind.startswith("stream_")

    async def checked(argument: Any, context: grpc.aio.ServicerContext) -> Any:
        """The request, or the stream of them, refused where one does not parse."""
        if not streamed:
            if isinstance(argument, _Unparsed):
                await refuse(argument, context)
            return argument

        async def parsed() -> AsyncIterator[Any]:
            async for request in argument:
                if isinstance(request, _Unparsed):
                    await refuse(request, context)
                yield request

        return parsed()

    if inspect.isasyncgenfunction(behaviour):
        assert behaviour is not None

        async def replies(argument: Any, context: grpc.aio.ServicerContext) -> Any:
            async for reply in behaviour(await checked(argument, context), context):
                yield reply

        return handler._replace(request_deserializer=deserialize, **{kind: replies})
    if inspect.iscoroutinefunction(behaviour):
        assert behaviour is not None

        async def reply(argument: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behaviour(await checked(argument, context), context)

        return handler._replace(request_deserializer=deserialize, **{kind: reply})
    return handler  # not an asyncio behaviour: left as grpcio registers it


def separate_ports(settings: ServeSettings) -> None:
    """``ConfigurationError`` naming both flags when ``--metrics-listen`` is the gRPC port.

    Caught before either binds: otherwise whichever binds second reports the
    port taken "by another process". The demo's own default is left alone (it
    moves its metrics to a free port when 9464 is taken). Addresses overlap
    when their hosts are the same or either is a wildcard.
    """
    metrics = settings.metrics_listen
    if metrics is None or (settings.demo and metrics == DEMO_METRICS_LISTEN):
        return
    grpc_host, _, grpc_port = settings.listen.rpartition(":")
    metrics_host, _, metrics_port = metrics.rpartition(":")
    try:
        port = int(grpc_port)
        if port == 0 or port != int(metrics_port):
            return  # port 0 is a free port of its own for each
    except ValueError:
        return  # not an address: its bind says so
    hosts = {
        _LOCAL.get(h, h) for h in (grpc_host.strip("[]").lower(), metrics_host.strip("[]").lower())
    }
    if len(hosts) == 1 or hosts & _WILDCARDS:
        raise ConfigurationError(
            f"--metrics-listen {metrics} and --listen {settings.listen} name the same port "
            f"{port}: the metrics need a port of their own"
        )


_LOCAL = {"localhost": "127.0.0.1"}
_WILDCARDS = {"", "0.0.0.0", "::"}


def _utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _utc_text(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def _tls_files(settings: ServeSettings) -> str:
    return f"--tls-cert {settings.tls_cert} and --tls-key {settings.tls_key}"


def check_tls_files(settings: ServeSettings) -> None:
    """``TlsFilesUnusable`` naming the options unless the TLS files, as they are on disk
    now, are a certificate and its key (``check_pem``), a current certificate, and PEM
    CA certificates. ``serve_settings`` checked them at start; a server reads them again
    when it binds, and a worker of ``--workers`` started again in a dead one's place
    may find them half way through a rotation (the new certificate, the old key)."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    try:
        if cert is not None and key is not None:
            check_pem(_tls_files(settings), cert, key)
            check_certificate_dates(_tls_files(settings), cert)
        if ca is not None:
            check_pem(f"--tls-client-ca {ca}", ca=ca)
    except ConfigurationError as exc:
        raise TlsFilesUnusable(f"{exc} (the files changed since start?)") from None


def check_client_ca(settings: ServeSettings, now: _dt.datetime | None = None) -> list[str]:
    """The start's check of ``--tls-client-ca``'s dates: ``ConfigurationError`` naming it
    when no CA certificate in it is valid now (every client certificate would then be
    refused, CERTIFICATE_VERIFY_FAILED, while the server looks healthy); else a warning
    for each CA certificate in it that has expired, is not valid yet, or expires within
    ``CERTIFICATE_WARN_DAYS`` (clients whose certificates it issued are, or soon will
    be, refused)."""
    path = settings.tls_client_ca
    if path is None:
        return []
    now = now or _dt.datetime.now(_dt.UTC)
    try:
        dates = certificate_dates(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--tls-client-ca {path}: {exc}") from None
    unusable, soon = [], []
    for number, (not_before, not_after) in enumerate(dates, 1):
        which = "the CA certificate" if len(dates) == 1 else f"certificate {number} of {len(dates)}"
        valid = f"valid {_utc_text(not_before.timestamp())} to {_utc_text(not_after.timestamp())}"
        if not_after < now:
            unusable.append(f"{which} expired at {_utc_text(not_after.timestamp())} ({valid})")
        elif not_before > now:
            unusable.append(f"{which} is not valid yet ({valid}; the clock here says "
                            f"{_utc_text(now.timestamp())})")  # fmt: skip
        elif not_after - now < _dt.timedelta(days=CERTIFICATE_WARN_DAYS):
            soon.append(f"{which} expires at {_utc_text(not_after.timestamp())}")
    if dates and len(unusable) == len(dates):
        raise ConfigurationError(
            f"--tls-client-ca {path}: {'; '.join(unusable)}: every client certificate would "
            "be refused (CERTIFICATE_VERIFY_FAILED); give a current CA"
        )
    return [
        *(f"--tls-client-ca {path}: {problem}: client certificates it issued are refused "
          "(the file's other CA certificates are used)" for problem in unusable),
        *(f"--tls-client-ca {path}: {problem}: client certificates it issued are refused "
          "from then on; read once: restart with a renewed CA" for problem in soon),
    ]  # fmt: skip


def metrics_port_is_free(settings: ServeSettings) -> None:
    """``--metrics-listen``'s port refused at start, before anything is written, as
    ``MetricsEndpoint`` refuses it (the demo's own default moves instead)."""
    listen = settings.metrics_listen
    if listen is None or (settings.demo and listen == DEMO_METRICS_LISTEN):
        return
    try:
        port_is_free(listen)
    except ConfigurationError:
        raise ConfigurationError(
            f"cannot serve metrics on {listen} (--metrics-listen): port "
            f"{listen.rpartition(':')[2]} is in use by another process (another shixin-check "
            "serve?)"
        ) from None


def _bind_errors(listen: str, shared: bool = False) -> list[OSError] | None:
    """Bind a probe socket to each address of ``listen`` as grpcio binds it
    (SO_REUSEADDR, and SO_REUSEPORT for a worker, ``shared``): the error of each
    address that would not bind (none: every one binds), or None when ``listen``
    names no address to try (grpcio reports that itself)."""
    host, _, port_text = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or "0.0.0.0", int(port_text),
                                   type=socket.SOCK_STREAM)  # fmt: skip
    except (ValueError, OSError):
        return None
    errors = []
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if shared:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
        except OSError as exc:
            errors.append(exc)
    return errors


def port_binds(listen: str, shared: bool) -> bool:
    """Whether ``listen`` binds now as grpcio binds it: after a failed
    ``add_secure_port``, tells a port that is taken from credentials grpcio refused."""
    return _bind_errors(listen, shared) == []


def port_is_free(listen: str) -> None:
    """``ConfigurationError`` naming the address if another process listens on it.

    grpcio refuses too, since port sharing is off, but only after a C-core log
    line; this says it in one line. Port 0 (any free port) always passes.
    """
    errors = _bind_errors(listen) or ()
    if any(exc.errno == errno.EADDRINUSE for exc in errors):
        raise ConfigurationError(
            f"cannot listen on {listen}: port {int(listen.rpartition(':')[2])} is in use by another "
            "process (another shixin-check serve?)"
        )


def write_demo_list(count: int, announce: Callable[[str], None]) -> Path:
    """A synthetic list in a temporary folder, and a few identities from it to try."""
    from shixin_check.loader.synthetic import iter_entries, write_snapshot
    from shixin_check.server.workers import mark_owned

    today = _dt.datetime.now(CHINA_TZ).date()
    folder = Path(tempfile.mkdtemp(prefix="shixin-demo-"))
    path = folder / "demo-snapshot.jsonl"
    try:
        mark_owned(folder)  # this process's: once it is gone (SIGKILL), the next demo removes it
        write_snapshot(path, count, seed=20261124, as_of=today)
    except BaseException as exc:  # a full disk: no folder left behind, marked or not
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ConfigurationError(f"cannot write the demo list in {folder}: {exc}") from exc
        raise
    announce(f"demo list: {count} synthetic entries in {path}")
    for line in demo_examples(iter_entries(count, 20261124, today), today):
        announce(line)
    return path


def demo_examples(entries: object, today: _dt.date) -> list[str]:
    """Commands to try against the demo list: a debtor, a related person, a suspended one."""
    from shixin_check.loader.synthetic import never_listed_id

    wanted: dict[str, str] = {}
    iso = today.isoformat()
    for e in entries:  # type: ignore[attr-defined]
        subject = e["subject"]
        live = e.get("valid_until", "9999") >= iso and not e.get("exemptions")
        if not live:
            continue
        if e["status"] == "SUSPENDED" and subject["type"] == "PERSON":
            wanted.setdefault("suspended", _cmd(subject["id_number"], subject["name"], "AIRLINE"))
        elif subject["type"] == "PERSON" and subject.get("id_type", "RESIDENT_ID") == "RESIDENT_ID":
            wanted.setdefault("debtor", _cmd(subject["id_number"], subject["name"], "RAIL"))
        elif subject["type"] == "ORGANIZATION" and e.get("related_persons"):
            rep = e["related_persons"][0]
            wanted.setdefault(
                "related", _cmd(rep["id_number"], rep["name"], "HOTEL") + f"   # {subject['name']}"
            )
        if len(wanted) == 3:
            break
    lines = ["try (in another shell):"]
    lines += [f"  {wanted[k]}" for k in ("debtor", "suspended", "related") if k in wanted]
    unlisted = never_listed_id()
    lines.append(
        f"  shixin-check check --id {unlisted} --name 张三 --channel AIRLINE  # not listed"
    )
    return lines


def _cmd(number: str, name: str, channel: str) -> str:
    extra = {"RAIL": " --train G1234 --seat SECOND_CLASS", "HOTEL": " --star-rating 4"}.get(
        channel, ""
    )
    return f"shixin-check check --id {number} --name {name} --channel {channel}{extra}"


def run_service(settings: ServeSettings) -> int:
    """``serve``: one server in this process, or with ``--workers N`` a supervisor of N."""
    separate_ports(settings)
    notes = check_client_ca(settings)  # said once logging is set up
    if settings.secret_note:
        notes.append(settings.secret_note)
    if settings.tls_key_note:
        notes.append(settings.tls_key_note)
    workers = _workers(settings)
    if workers > 1:
        from shixin_check.server.workers import run_supervisor

        return run_supervisor(settings, workers, notes)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    for note in notes:
        log.warning("%s", note)
    if settings.demo:  # what a demo (or supervisor) killed with SIGKILL left behind
        from shixin_check.server.workers import sweep_stale_folders

        for folder in sweep_stale_folders():
            log.info("removed %s: the server that made it is gone (killed?)", folder)
    ignore_file_size_signal()
    service = Service(settings, announce=lambda s: print(s, flush=True))
    if settings.effective:  # what it runs with, once the start's checks let it start
        log.info("%s", settings.effective)
    try:
        asyncio.run(service.run())
    finally:  # the demo's list (and the index compiled beside it), however the run ended
        if service.demo_folder is not None:
            shutil.rmtree(service.demo_folder, ignore_errors=True)
    return 1 if service.fatal else 0


#: a start that must write (an audit log's record of a head found missing) on a full disk
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _open_log(kind: Any, flag: str, path: Path | None, durability: dict[str, Any]) -> Any:
    """The log at ``path`` (None: none), or a ``ConfigurationError`` naming the flag and
    the path: its folder cannot be made, or the file cannot be opened. Another writer
    (``LogInUse``) says so itself."""
    if path is None:
        return None
    try:
        return kind(path, **durability)
    except LogInUse:
        raise
    except OSError as exc:
        what = exc.strerror or str(exc)
        if isinstance(exc, ForeignFile) or exc.errno in _DISK_FULL:  # never written: why
            what += f"; {write_error_advice(exc, path)}"
        if not path.parent.is_dir():
            # the folder, not the file: a worker's file (hits.w1.jsonl) is not the flag's
            raise ConfigurationError(
                f"{flag}: cannot make the folder {path.parent}: {what}"
            ) from exc
        raise ConfigurationError(f"{flag} {path}: cannot open it: {what}") from exc


def ignore_file_size_signal() -> None:
    """A write past the file-size limit (``ulimit -f``) fails with EFBIG, as a full disk
    fails with ENOSPC, instead of SIGXFSZ killing the server (its default): the log
    that cannot be written turns health NOT_SERVING and says so (``log_problem``)."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _workers(settings: ServeSettings) -> int:
    """``--workers N`` / ``SHIXIN_WORKERS`` (1 from settings that predate the flag)."""
    return int(getattr(settings, "workers", 1))
