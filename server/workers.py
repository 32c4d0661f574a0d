"""Using every core: ``serve --workers N``, N server processes on one port.

The checks run in Python under one interpreter lock, so one server process
uses one core. With ``--workers N`` this process becomes a *supervisor*: it
creates no gRPC object at all and starts N workers, each a fresh interpreter
(multiprocessing's "spawn": a process that may hold gRPC state is never
forked) running a whole ``server.app.Service`` on the same port, shared with
SO_REUSEPORT; the kernel hands each new connection to one of them (grpc's
``examples/python/multiprocessing`` does the same). That is the one case
where port sharing is right: a single server turns it off, and the supervisor
first refuses a taken port exactly as a single server does (``port_is_free``),
then holds the port (bound with SO_REUSEPORT, never listening) for as long as
it runs, so port 0 becomes one port for all and no other server can take it
while a worker restarts: the held socket has no SO_REUSEADDR, so only a
socket with SO_REUSEPORT of the same user (its workers) may bind beside it,
even while no worker listens (``hold_port``).

What the workers share, and what not:

- the settings, frozen and pickled to each worker; a key secret generated at
  start is generated here, once, so every worker computes the same keys;
- the list: each worker loads it itself, but maps the one compiled version in
  the index folder (``--index-dir``), compiled by whichever worker got the
  folder's lock first (``loader.compiled.IndexStore.lock``), so N workers hold
  one copy in the page cache. With a generated secret nothing compiled can
  outlive the run, so the supervisor compiles into a private temporary folder
  it removes at exit. Deltas are applied by each worker's own follower, as a
  single server does; ``--redis`` workers each follow Redis (no compile).
  A list *file* (not a folder) is loaded once, as by a single server: the
  supervisor takes its identity (``file_identity``) before any worker reads it,
  and every worker, a replacement included, serves the file as it was then
  (``WorkerSeat.list_identity``). One that finds the file replaced or
  rewritten since maps the compiled version of it as it was, the pool's, or
  else serves nothing (NOT_SERVING, saying so: ``ListFileChanged``); never the
  new file beside the others' list;
- not the logs: worker ``i`` writes its own hit log and audit chain
  (``server.hitlog.worker_log_path``: ``hits.w1.jsonl``, ...), durable before
  the answer as ever; ``audit verify`` and ``feedback`` read the whole set;
- health: every worker runs the same health service, SERVING only once its own
  list is in; a probe, like any connection, reaches one of them;
- metrics (``--metrics-listen``): served here, the sum of the readings each
  worker writes every second (``server.metrics.WorkerReadings``): about a
  second behind. A reading older than ``READING_STALE_S`` (5 s) makes
  ``shixin_ready`` 0 and counts its worker ``stale`` in ``shixin_workers``.

A worker that dies (a crash, SIGKILL, the OOM killer) is logged with why and
started again as the same worker (same logs, its chain going on) after a
backoff: 0.5 s, doubling for each death in a row up to 10 s, back to 0.5 s
once a worker has lived 30 s. A worker that hangs (stopped, deadlocked,
blocked on a read that never returns) is found by its heartbeat: its event
loop counts a beat every ``HEARTBEAT_S`` and a thread of its own sends each
new one over the worker's pipe (``_Heartbeat``). Once a worker is past its
first load, the supervisor SIGKILLs one it has not heard from for
``SILENT_S`` and restarts it as above. Not before: until then it has no list
to answer from (a replacement is not even bound), its loop runs the load's
``gc.collect`` at the end, and a restart would only begin the load again.
Later loads (a new snapshot, a delta) run in the list follower's thread, big
snapshots parsed by processes of their own, so the loop goes on beating
through them (the longest stall measured in a 500,000-entry reload: 0.2 s);
a loop silent for ``SILENT_S`` answers nobody either.
A replacement loads its list before it binds,
so no connection reaches it before it can answer; the supervisor says
"worker N serving again" only when its readiness is SERVING, else that it is
up but NOT_SERVING, and why (its health, which also keeps ``shixin_ready`` 0). A worker that fails its
start-up (a configuration error, or an OSError such as a hit log it cannot
open) before every worker has served stops the whole start: exit 2 with the
line a single server prints. A replacement that fails its start-up
``FAILED_STARTS`` times in a row (a port it can never bind, a log folder
gone) ends the server the same way, naming the worker, instead of
restarting it for ever. Not one that finds the TLS files unusable
(``TlsFilesUnusable``: a rotation half done, the new certificate beside the
old key) while another worker serves: those serve on with the pair they read
at start, and it is started again, after the same backoff, until the files
are a pair again (each try one ERROR line naming them); ending the server
would turn one worker down into every caller refused, over a rotation that
is usually done a few seconds later. With no other worker serving it counts
as any failed start.

Private folders (the workers' metrics readings ``shixin-run-*``, the compiled
index of a generated secret ``shixin-index-*``, the record of the delta ops
applied where the index folder cannot hold it (``IndexStore.spare``), a
``shixin-index-*`` too, the demo list ``shixin-demo-*``, all in the temporary
directory) are removed at exit. Each holds ``supervisor.json`` naming its
supervisor (pid, its start time, its pid namespace), so a supervisor killed
with SIGKILL leaves them only until the next supervisor starts: it removes
those whose supervisor is gone (``sweep_stale_folders``), never one of another
user, another pid namespace or a live process.

SIGTERM or SIGINT: sent on to every worker, each of which drains as a single
server does (NOT_SERVING, ``--grace`` for calls in flight, logs closed); the
supervisor exits 0 once all have exited cleanly (1 if one had to be killed).
SIGHUP is sent on too (each worker reloads its keys file). A worker whose
supervisor is gone stops by itself.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.system import exit_words, limit_advice
from shixin_check.loader.compiled import file_identity
from shixin_check.server.app import (
    HURRY_SIGNAL,
    UNUSED_SIGNALS,
    KeysFileUnusable,
    Service,
    TlsFilesUnusable,
    ignore_file_size_signal,
    port_is_free,
    unused_signal,
    write_demo_list,
)
from shixin_check.server.hitlog import worker_log_path
from shixin_check.server.metrics import MetricsEndpoint, WorkerReadings, reading_path
from shixin_check.server.settings import DEMO_METRICS_LISTEN, EPHEMERAL_SECRET, ServeSettings

log = logging.getLogger("shixin.server")

#: Where the key secret came from when the supervisor generated it for its workers.
SHARED_EPHEMERAL_SECRET = "generated at start for this run's workers (keys live only in memory)"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
#: A worker that lived this long before dying starts the backoff afresh.
STEADY_S = 30.0
#: Beyond ``--drain`` and ``--grace``: how long a stopping worker may take (finishing a
#: load) before SIGKILL.
STOP_SLACK_S = 30.0
PARENT_POLL_S = 0.5
#: A replacement that fails its start-up this many times in a row ends the server.
FAILED_STARTS = 3
#: Seconds between a worker's heartbeats (``_Heartbeat``).
HEARTBEAT_S = 1.0
#: A worker past its first load that sends no heartbeat for this long is hung: SIGKILL,
#: then restarted. Twenty beats: far beyond a loop busy with calls or a GC pause.
SILENT_S = 20.0
#: The supervisor's own loop wakes at least once a second: back after longer than this, it
#: was stopped itself (Ctrl-Z, ``docker pause``, a cgroup freeze, a VM stall), and so, as a
#: rule, were its workers, whose first beats after it may not have arrived yet.
AWAY_S = 5.0
#: The private folders a supervisor makes in the temporary directory, and removes at exit.
PRIVATE_PREFIXES = ("shixin-run-", "shixin-index-", "shixin-demo-")
#: In each of them: which supervisor made it (what lets a later one remove it once it is gone).
OWNER_FILE = "supervisor.json"


@dataclass(frozen=True)
class WorkerSeat:
    """Which worker of ``serve --workers N`` a server process is."""

    number: int  # 1..N: names its logs and its metrics reading
    replacement: bool  # started after its predecessor died: binds once its list is in
    reading_file: Path | None  # where it writes its metrics reading (None: metrics off)
    #: ``--list FILE``: the file's identity when the supervisor started (``file_identity``):
    #: a worker serves that file's version or none (None: a folder, Redis)
    list_identity: str | None = None
    #: the pool's private folder for the records of delta ops applied that the index
    #: folder cannot hold (``IndexStore.spare``; None: no index folder)
    applied_spare: Path | None = None
    #: the supervisor's pid, as it started the worker: one killed before the worker got
    #: as far as looking (its imports take a second) is gone for it all the same
    supervisor: int = 0


def worker_settings(settings: ServeSettings, number: int) -> ServeSettings:
    """Worker ``number``'s settings: its own logs and replica id; no metrics listener."""
    return replace(
        settings,
        hit_log=worker_log_path(settings.hit_log, number) if settings.hit_log else None,
        audit_log=worker_log_path(settings.audit_log, number) if settings.audit_log else None,
        metrics_listen=None,
        replica_id=f"{settings.replica_id}/w{number}" if settings.redis else settings.replica_id,
    )


def hold_port(listen: str) -> tuple[str, list[socket.socket]]:
    """Bind (not listen) ``listen`` with SO_REUSEPORT: the address the workers share
    (port 0 made one concrete port) and the sockets holding it for them.

    Without SO_REUSEADDR: a bound, not listening socket with it lets any other
    SO_REUSEADDR socket (a plain ``serve``, a metrics listener) bind and listen
    beside it while no worker listens. Connections of an earlier server on the
    port, still in TIME_WAIT, refuse such a bind; a socket with both options is
    bound first then, the strict one beside it, and the first one closed.
    """
    host, _, port_text = listen.rpartition(":")
    bare = host.strip("[]") or "0.0.0.0"
    port = int(port_text)
    held: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
        for family, kind, proto, _, address in infos:
            sock = _bound(family, kind, proto, (address[0], port, *address[2:]))
            held.append(sock)
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in held:
            sock.close()
        raise ConfigurationError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return f"{host}:{port}", held


def _bound(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> socket.socket:
    """A socket bound to ``address`` with SO_REUSEPORT and without SO_REUSEADDR."""

    def bind(reuse_address: bool) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        try:
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock

    try:
        return bind(reuse_address=False)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    # TIME_WAIT of an earlier server (port_is_free found no listener): with one socket
    # of both options bound, the kernel lets a SO_REUSEPORT one of the same user beside it.
    bridge = bind(reuse_address=True)
    try:
        return bind(reuse_address=False)
    finally:
        bridge.close()


# --- a worker ---------------------------------------------------------------------


def _worker_main(settings: ServeSettings, seat: WorkerSeat, messages: Connection) -> None:
    """A worker process (spawned): one ``Service`` on the shared port until told to stop."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [w{seat.number}] %(message)s",
    )  # fmt: skip
    services: list[Service] = []

    def stop_early(_signum: int, _frame: FrameType | None) -> None:
        for service in services:  # before the loop's own handlers are in place
            service.request_stop()
        if not services:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_early)
    signal.signal(signal.SIGINT, stop_early)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a keys file's reload, or nothing to do
    ignore_file_size_signal()  # EFBIG, not death, past ``ulimit -f``
    sending = threading.Lock()

    def send(*message: str) -> None:
        with sending:
            try:
                messages.send(message)
            except OSError:
                pass  # the supervisor is gone: the parent watch stops this worker

    threading.Thread(
        target=_watch_parent,
        args=(seat.supervisor or os.getppid(),),
        name="parent-watch",
        daemon=True,
    ).start()
    heartbeat = _Heartbeat(send)
    heartbeat.start()
    served = threading.Event()

    def announce(line: str) -> None:
        if line.startswith("serving on "):
            served.set()
        send("announce", line)

    try:
        service = Service(settings, announce=announce, seat=seat)
        services.append(service)
        asyncio.run(heartbeat.beside(service.run(on_ready=lambda ready: send(
            "loaded", ready.readiness_problem()))))  # fmt: skip
        if service.fatal:  # it stopped itself (said why): started again by the supervisor
            sys.exit(1)
    except (ConfigurationError, OSError) as exc:
        if served.is_set():
            raise  # a failure of a running server, not of its start: a crash, restarted
        # What a single server would print (shixin_check.cli), said once by the supervisor.
        kind = "fatal"
        if isinstance(exc, TlsFilesUnusable):
            kind = "tls-files"
        elif isinstance(exc, KeysFileUnusable):
            kind = "keys-file"
        send(kind, str(exc))
        sys.exit(2)


class _Heartbeat:
    """A worker's sign of life: its event loop counts a beat every ``HEARTBEAT_S``, so a
    loop that is stuck stops counting, and a thread sends each new count to the
    supervisor, so that a pipe the supervisor is slow to read never blocks the loop."""

    def __init__(self, send: Callable[..., None]) -> None:
        self.send = send
        self.beats = 0

    def start(self) -> None:
        threading.Thread(target=self._send_beats, name="heartbeat", daemon=True).start()

    async def beside(self, serving: Coroutine[Any, Any, None]) -> None:
        """Run ``serving``, counting beats on this loop meanwhile."""
        counting = asyncio.get_running_loop().create_task(self._count())
        try:
            await serving
        finally:
            counting.cancel()

    async def _count(self) -> None:
        while True:
            self.beats += 1
            await asyncio.sleep(HEARTBEAT_S)

    def _send_beats(self) -> None:
        sent = 0
        while True:
            time.sleep(HEARTBEAT_S)
            if self.beats != sent:
                sent = self.beats
                self.send("beat", "")


def _backoff(worker: _Worker) -> float:
    """Seconds before ``worker`` is started again: doubled with each failure in a row."""
    return float(min(FIRST_BACKOFF_S * 2 ** (worker.deaths_in_a_row - 1), MAX_BACKOFF_S))


def _watch_parent(parent: int) -> None:
    """Stop this worker (as SIGTERM would) once its supervisor is gone: at once when it
    went before this began (this worker's parent is then another process already)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.error("the supervisor (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


# --- the supervisor -----------------------------------------------------------------


@dataclass
class _Worker:
    """One seat and the process in it now."""

    number: int
    process: BaseProcess | None = None
    messages: Connection | None = None
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    restart_at: float | None = None  # a replacement is due then
    serving: bool = False  # its current process announced it is serving
    loaded: bool = False  # its current process is past its first load
    failed_starts: int = 0  # replacements in a row that failed their start-up
    heard_at: float = 0.0  # its last message (a heartbeat as a rule), monotonic
    killed: bool = False  # silent too long: SIGKILL sent
    replacement: bool = False  # its current process was started in a dead one's place


class Supervisor:
    """N workers on one port: started, restarted when they die, stopped together."""

    def __init__(self, settings: ServeSettings, workers: int) -> None:
        self.settings = settings
        self.demo = settings.demo
        self.workers = [_Worker(n) for n in range(1, workers + 1)]
        self.context = multiprocessing.get_context("spawn")
        self.readings: WorkerReadings | None = None
        self.metrics: MetricsEndpoint | None = None
        self.stopping = False
        self.stop_deadline = 0.0
        self.fatal = ""
        self.unclean: list[str] = []
        self.started = False  # every worker has been serving at once, at least once
        self.loaded = False  # ... and past its first load
        self.announced: set[str] = set()
        self.signals: list[int] = []
        self.cleanup: list[Path] = []
        self.cwd = os.getcwd()  # where workers start: a spawn needs it to still be there
        #: ``--list FILE``: its identity as the first workers load it (``_pin_list``)
        self.list_identity: str | None = None
        #: with an index folder: where its workers record the delta ops applied when it
        #: cannot (``_shared_settings``)
        self.applied_spare: Path | None = None

    # --- start and stop -------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        port_is_free(settings.listen)  # a single server's one-line refusal, before any worker
        listen, held = hold_port(settings.listen)
        for folder in sweep_stale_folders():
            log.info("removed %s: its supervisor is gone (killed?)", folder)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {
            sig: signal.getsignal(sig)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *UNUSED_SIGNALS)
        }
        try:
            for sig in previous:
                signal.signal(sig, self._on_signal)
            old_wakeup = signal.set_wakeup_fd(wake_w)
            try:
                self.settings = self._shared_settings(replace(settings, listen=listen))
                self.list_identity = self._pin_list(self.settings)
                self._start_metrics()
                if settings.effective:  # what it runs with (past the start's refusals)
                    log.info("%s", settings.effective)
                log.info("starting %d workers on %s (supervisor pid %d)",
                         len(self.workers), listen, os.getpid())  # fmt: skip
                for worker in self.workers:
                    self._start(worker, replacement=False)
                self._loop(wake_r)
            finally:
                signal.set_wakeup_fd(old_wakeup)
        finally:
            self._signal_all(signal.SIGTERM)  # none is left unless this supervisor failed
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            for sock in held:
                sock.close()
            if self.metrics is not None:
                self.metrics.stop()
            for folder in self.cleanup:
                shutil.rmtree(folder, ignore_errors=True)
        if self.fatal:
            raise ConfigurationError(self.fatal)
        if self.unclean:
            log.error("stopped, but not cleanly: %s", "; ".join(self.unclean))
            return 1
        log.info("stopped: every worker drained and exited")
        return 0

    def _shared_settings(self, settings: ServeSettings) -> ServeSettings:
        """What every worker gets alike: the demo list written once, a private index
        folder when the secret was generated (see the module docstring), and else,
        with an index folder, the spare record folder (``applied_spare``)."""
        demo = settings.demo
        if demo:  # one demo list for all, not one each
            path = write_demo_list(settings.demo_count, self._print)
            settings = replace(settings, demo=False, list_path=path)
            self._own(path.parent)
        if settings.secret_source == EPHEMERAL_SECRET and settings.redis is None:
            if settings.index_dir is not None or demo:  # None otherwise: --index-dir off
                private = self._own(Path(tempfile.mkdtemp(prefix="shixin-index-")))
                log.info("key secret generated for this run: its workers share a compiled "
                         "index in %s (removed at exit)", private)  # fmt: skip
                settings = replace(settings, index_dir=private)
            settings = replace(settings, secret_source=SHARED_EPHEMERAL_SECRET)
        if settings.redis:
            replica = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
            settings = replace(settings, replica_id=replica)
        elif settings.compiled_index is not None and settings.compiled_index not in self.cleanup:
            # an index folder that cannot record the delta ops applied (read-only, full)
            # would leave a worker started in a dead one's place not knowing them: the
            # record moves here, the pool's own (``IndexStore.applied``; not needed
            # beside a private index folder, in the same temporary directory)
            self.applied_spare = self._own(Path(tempfile.mkdtemp(prefix="shixin-index-")))
        return settings

    @staticmethod
    def _pin_list(settings: ServeSettings) -> str | None:
        """``--list FILE``: the file's identity now, before any worker reads it.

        A single server loads a file once, at start (it is not watched); a pool
        must serve one list as well, so every worker, a replacement included,
        serves the file as it was now (``Loader._snapshot_view``): a file
        replaced or rewritten since is served from its compiled version, the
        pool's, or not at all, never as it is now beside the others' list.
        """
        path = settings.list_path
        if path is None or settings.redis or path.is_dir():
            return None
        try:
            return file_identity(path)
        except OSError as exc:
            raise ConfigurationError(
                f"--list {path}: cannot read it: {exc.strerror or exc}"
            ) from None

    def _start_metrics(self) -> None:
        listen = self.settings.metrics_listen
        if listen is None:
            return
        folder = self._own(Path(tempfile.mkdtemp(prefix="shixin-run-")))  # 0700: the readings
        self.readings = WorkerReadings(folder, len(self.workers))
        try:
            self.metrics = MetricsEndpoint(listen, self.readings.read)
        except ConfigurationError as exc:
            if not (self.demo and listen == DEMO_METRICS_LISTEN):
                raise
            log.warning("%s; the demo serves its metrics on another port", exc)
            self.metrics = MetricsEndpoint("127.0.0.1:0", self.readings.read)
        self._print(f"metrics on {self.metrics.url} (the sum over {len(self.workers)} workers)")

    def _own(self, folder: Path) -> Path:
        """``folder``, removed at exit, and marked as this supervisor's until then."""
        self.cleanup.append(folder)
        mark_owned(folder)
        return folder

    def _start(self, worker: _Worker, replacement: bool) -> None:
        reading = None
        if self.readings is not None:
            reading = reading_path(self.readings.folder, worker.number)
        seat = WorkerSeat(
            worker.number,
            replacement,
            reading,
            self.list_identity,
            self.applied_spare,
            os.getpid(),
        )
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(worker_settings(self.settings, worker.number), seat, send),
            name=f"shixin-worker-{worker.number}",
        )
        self._where_to_start()
        try:
            process.start()
        except OSError as exc:  # no process to be had (the limit on processes, memory)
            receive.close()
            send.close()
            self._no_process(worker, exc)
            return
        send.close()  # the worker holds it now: its end closing is what EOF means
        worker.process, worker.messages = process, receive
        worker.started_at, worker.restart_at = time.monotonic(), None
        worker.serving = worker.loaded = worker.killed = False
        worker.replacement = replacement
        log.info("worker %d started (pid %s)%s", worker.number, process.pid,
                 ": it binds once its list is in" if replacement else "")  # fmt: skip

    def _where_to_start(self) -> None:
        """A spawned worker starts in the supervisor's working directory: removed under it
        (a redeploy swapping the release folder), every start failed ``[Errno 2]`` and the
        whole server ended. Workers are then started from /, once said."""
        try:
            os.getcwd()
        except FileNotFoundError:
            log.warning("the working directory %s was removed under the server: workers "
                        "start from / from now on (a relative path in the settings no "
                        "longer leads anywhere; give absolute ones)", self.cwd)  # fmt: skip
            os.chdir("/")

    def _no_process(self, worker: _Worker, exc: OSError) -> None:
        """``worker``'s process could not be started: a start that fails, as when the
        worker itself says so (at the first start the server stops, exit 2; a
        replacement is tried again with the back-off of a death, then given up on)."""
        worker.restart_at = None
        advice = limit_advice(exc) or "see the system log"
        self._message(worker, "fatal",
                      f"no process could be started for worker {worker.number} ({exc}): {advice}")  # fmt: skip
        if not self.stopping:
            worker.deaths_in_a_row += 1
            worker.restart_at = time.monotonic() + _backoff(worker)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)  # handled in the loop; the wakeup fd ends its wait

    def _begin_stop(self, why: str) -> None:
        if self.stopping:  # a second signal: each worker cuts its --drain short
            if self.settings.drain_seconds > 0:
                log.info("%s again: the workers stop answering new calls now", why)
                self._signal_all(HURRY_SIGNAL)
            return
        self.stopping = True
        settings = self.settings
        self.stop_deadline = (
            time.monotonic() + settings.drain_seconds + settings.grace_seconds + STOP_SLACK_S
        )
        live = [w for w in self.workers if w.process is not None and w.process.is_alive()]
        log.info("stopping (%s): each of %d workers answers new calls for %.1fs (--drain), "
                 "then drains for up to %.1fs", why, len(live), settings.drain_seconds,
                 settings.grace_seconds)  # fmt: skip
        for worker in self.workers:
            worker.restart_at = None
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, sig)
                except ProcessLookupError:
                    pass

    # --- the loop -------------------------------------------------------------

    def _loop(self, wake: int) -> None:
        # when the last round read the clock for its decisions: a pause (SIGSTOP, a frozen
        # cgroup) anywhere in a round, in ``wait`` or out of it, shows as the time since
        turned = time.monotonic()
        while True:
            now = time.monotonic()
            live = [w for w in self.workers if w.process is not None]
            if self.stopping and not live:
                return
            waits: list[Connection | int] = [wake]
            for worker in live:
                assert worker.process is not None
                waits.append(worker.process.sentinel)
                if worker.messages is not None:
                    waits.append(worker.messages)
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else 1.0
            if self.stopping:
                timeout = max(0.0, min(timeout, self.stop_deadline - now))
            wait(waits, timeout)
            self._take_signals(wake)
            for worker in live:
                self._take_messages(worker)
                assert worker.process is not None
                if worker.process.exitcode is not None:
                    self._ended(worker)
            now = time.monotonic()
            if now - turned > timeout + AWAY_S:  # the clock the silence is judged by jumped
                self._back_from_a_pause(now - turned)
            turned = now
            if not self.stopping:  # a stopping worker has --drain + --grace (_kill_stragglers)
                self._kill_silent(now)
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._start(worker, replacement=True)
            if self.stopping and time.monotonic() >= self.stop_deadline:
                self._kill_stragglers()

    def _take_signals(self, wake: int) -> None:
        try:
            os.read(wake, 512)
        except BlockingIOError:
            pass
        while self.signals:
            signum = self.signals.pop(0)
            if signum in UNUSED_SIGNALS:
                unused_signal(signum)
                continue
            if signum == signal.SIGHUP:
                if self.settings.keys_file is None:
                    log.info("SIGHUP: nothing to reload (no --keys-file)")
                    continue
                log.info("SIGHUP: sent on to every worker (each reloads the keys file)")
                self._signal_all(signal.SIGHUP)
            else:
                self._begin_stop(signal.Signals(signum).name)

    def _take_messages(self, worker: _Worker) -> None:
        conn = worker.messages
        if conn is None:
            return
        try:
            while conn.poll():
                kind, text = conn.recv()
                worker.heard_at = time.monotonic()
                self._message(worker, kind, text)
        except (EOFError, OSError):
            conn.close()
            worker.messages = None

    def _message(self, worker: _Worker, kind: str, text: str) -> None:
        if kind == "beat":
            return
        if kind in ("tls-files", "keys-file"):
            serving = [w.number for w in self.workers if w is not worker and w.serving]
            if self.started and serving:
                held, until = (
                    ("the certificate and key read at start", "the files can be served")
                    if kind == "tls-files"
                    else ("the keys in force", "the keys file loads")
                )
                log.error("worker %d cannot start: %s; worker%s %s serve%s on with %s, and "
                          "worker %d is started again until %s", worker.number, text,
                          "s" if len(serving) > 1 else "", ", ".join(map(str, serving)),
                          "" if len(serving) > 1 else "s", held, worker.number, until)  # fmt: skip
                return
            kind = "fatal"  # no other worker serves: as any start that fails
        if kind == "fatal":
            if not self.started:  # the start itself is wrong: nothing would ever serve
                self.fatal = self.fatal or text
                self._begin_stop(f"worker {worker.number} cannot start")
                return
            worker.failed_starts += 1
            if worker.failed_starts < FAILED_STARTS:
                log.error("worker %d cannot start: %s", worker.number, text)
                return
            self.fatal = self.fatal or (
                f"worker {worker.number} failed to start {FAILED_STARTS} times in a row: {text}"
            )
            self._begin_stop(f"worker {worker.number} cannot start again")
            return
        if kind == "loaded":  # the text: why its readiness is NOT_SERVING ("": SERVING)
            worker.loaded = True
            if worker.replacement:
                self._replaced(worker, text)
            if all(w.loaded for w in self.workers) and not self.loaded:
                self.loaded = True
                log.info("every worker is past its first load (health: each its own)")
            return
        if text.startswith("serving on "):
            worker.serving = True
            worker.failed_starts = 0
            # (a replacement, loaded before it binds, is said to serve or not once
            # "loaded" comes: ``_replaced``)
            if not self.started and all(w.serving for w in self.workers):
                self.started = True
                self._print(f"{text} ({len(self.workers)} workers)")
        elif not text.startswith("metrics on "):
            self._print(text)

    def _replaced(self, worker: _Worker, problem: str) -> None:
        """Say how a replacement came up: serving, or up but NOT_SERVING, and why
        (its own health, which a probe reaching it gets, and which keeps
        ``shixin_ready`` 0)."""
        process = worker.process
        pid = process.pid if process is not None else None
        if not problem:
            log.info("worker %d serving again", worker.number)
            return
        log.error("worker %d (pid %s) is up but NOT_SERVING (its connections are refused "
                  "UNAVAILABLE; health and shixin_ready say so): %s", worker.number, pid,
                  problem)  # fmt: skip

    def _print(self, text: str) -> None:
        """A line a single server would print, printed once however many workers say it."""
        if text not in self.announced:
            self.announced.add(text)
            print(text, flush=True)

    def _ended(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None
        process.join()
        self._take_messages(worker)  # its last words (a fatal error) first
        if worker.messages is not None:
            worker.messages.close()
        served = worker.serving
        worker.process, worker.messages, worker.serving = None, None, False
        code = process.exitcode
        if self.readings is not None:
            self.readings.retire(worker.number)
        if self.stopping:  # SIGTERM's own death is clean only before there was anything to drain
            clean = code == 0 or (code == -signal.SIGTERM and not served)
            (log.info if clean else log.error)(
                "worker %d (pid %s) %s", worker.number, process.pid, exit_words(code)
            )
            if not clean and not self.fatal:
                self.unclean.append(f"worker {worker.number} {exit_words(code)}")
            return
        if self.readings is not None:
            self.readings.restarts += 1
        lived = time.monotonic() - worker.started_at
        worker.deaths_in_a_row = 1 if lived >= STEADY_S else worker.deaths_in_a_row + 1
        delay = _backoff(worker)
        worker.restart_at = time.monotonic() + delay
        log.error("worker %d (pid %s) died after %.1fs: %s; starting it again in %.1fs",
                  worker.number, process.pid, lived, exit_words(code), delay)  # fmt: skip

    def _back_from_a_pause(self, away: float) -> None:
        """The supervisor itself was stopped for ``away`` seconds: a worker's silence
        over that time is not its own, so each gets ``SILENT_S`` from now (one stopped
        alone is still killed then)."""
        log.warning("the supervisor was stopped for %.1fs (Ctrl-Z, docker pause, a frozen "
                    "cgroup or VM?): every worker gets %.0fs from now to send a heartbeat",
                    away, SILENT_S)  # fmt: skip
        now = time.monotonic()
        for worker in self.workers:
            worker.heard_at = max(worker.heard_at, now)

    def _kill_silent(self, now: float) -> None:
        """SIGKILL each worker past its first load not heard from for ``SILENT_S``: its
        death restarts it (``_ended``)."""
        for worker in self.workers:
            process = worker.process
            if not worker.loaded or worker.killed or process is None or process.pid is None:
                continue
            silent = now - worker.heard_at
            if silent <= SILENT_S:
                continue
            log.error("worker %d (pid %s) sent no heartbeat for %.1fs (more than %.0fs): hung "
                      "(stopped, deadlocked or blocked on I/O); its connections get no answer: "
                      "SIGKILL, then it is started again", worker.number, process.pid, silent,
                      SILENT_S)  # fmt: skip
            worker.killed = True
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it died meanwhile: its sentinel says so

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.is_alive() and process.pid is not None:
                log.error("worker %d (pid %s) did not stop within --drain + --grace + %.0fs: "
                          "SIGKILL", worker.number, process.pid, STOP_SLACK_S)  # fmt: skip
                self.unclean.append(f"worker {worker.number} killed after the grace")
                os.kill(process.pid, signal.SIGKILL)
        self.stop_deadline = float("inf")


# --- private folders left by a killed supervisor -------------------------------------


def _started_at(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot); None when there is none,
    "" when that cannot be read (taken as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""  # field 22 of proc(5)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def mark_owned(folder: Path) -> None:
    """Name this process in ``folder`` (``OWNER_FILE``): pid, start time, pid namespace."""
    owner = {"pid": os.getpid(), "started": _started_at(os.getpid()) or "",
             "pid_namespace": _pid_namespace()}  # fmt: skip
    (folder / OWNER_FILE).write_text(json.dumps(owner))


def sweep_stale_folders(temp: Path | None = None) -> list[Path]:
    """Remove the private folders of supervisors that are gone; the folders removed.

    Only a directory (not a link) of this user, named with one of
    ``PRIVATE_PREFIXES``, whose ``OWNER_FILE`` names a process of this pid
    namespace that no longer runs, or whose pid a later process now has. A
    folder without that file, or one this cannot read, is left alone.
    """
    namespace = _pid_namespace()
    if not namespace:  # no /proc: whether a pid is alive cannot be told safely
        return []
    try:
        entries = list(os.scandir(temp or tempfile.gettempdir()))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not entry.name.startswith(PRIVATE_PREFIXES):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            owner = json.loads((Path(entry.path) / OWNER_FILE).read_text())
            pid, started = int(owner["pid"]), str(owner["started"])
            same_namespace = owner["pid_namespace"] == namespace
        except (OSError, ValueError, KeyError, TypeError):
            continue
        running = _started_at(pid)
        if not same_namespace or pid == os.getpid() or running == "":
            continue
        if running is None or running != started:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def run_supervisor(settings: ServeSettings, workers: int, notes: list[str] | None = None) -> int:
    """``serve --workers N`` (N > 1): supervise N workers until SIGTERM/SIGINT. ``notes``:
    warnings of the start's checks (``check_client_ca``), said once, here."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s [supervisor] %(message)s",
    )  # fmt: skip
    for note in notes or ():
        log.warning("%s", note)
    return Supervisor(settings, workers).run()
