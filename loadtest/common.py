"""What every bench entry point shares: server processes, the list, the record of a run.

``loadtest.bench`` and ``loadtest.redis_bench`` (and the other drivers) both
import from here and never from each other's modules, so neither needs the
other to load.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import platform
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.domain.system import exit_words, others_may_write
from shixin_check.loader.synthetic import write_snapshot
from shixin_check.loader.synthetic.writer import OUTPUT_FORMAT

BATCH_SIZE = 100


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the processes a run starts, and how a run ends --------------------------------


class RunAborted(Exception):
    """A run that cannot go on; its message is the one line the bench ends with
    (``run_main``: exit status 1, no traceback)."""


class ServerDied(RunAborted):
    """A server the run needs (ours, a bare servicer, redis-server) ended on its own."""


class Stopped(BaseException):
    """SIGTERM, SIGHUP or SIGINT arrived (``run_main``'s handler): not an ``Exception``,
    so no ``except Exception`` keeps the run going, and every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(code: int) -> str:
    """How a process ended, in words: ``exited with status 3``, ``was killed by SIGKILL``."""
    return ("was " if code < 0 else "") + exit_words(code)


def last_line(path: Path | None) -> str:
    """The last non-empty line of a log file (at most 200 characters), or ``""``."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


@dataclass
class Child:
    """A process a bench started: a server the run needs, or a driver."""

    name: str
    proc: subprocess.Popen[Any]
    server: bool  # the run needs it: ending on its own aborts the run
    log: Path | None = None
    reap: bool = True  # False: its starter waits for it itself (h2load's wait4)
    stopping: bool = False  # the bench asked it to stop
    ended: str = ""  # once noticed: how a server ended on its own, and at what step


class Children:
    """Every process this bench started and has not yet forgotten, and the step the run is
    at (``CHILDREN``, one per process).

    Servers are added when started and marked when the bench stops them
    (``stop_process``); one that exits before that is a dead server, whatever error it
    then shows as (a refused connection, a failed warm-up, raw clients never ready):
    ``check`` raises ``ServerDied`` naming it, its pid, its exit status and the step,
    and ``run_main`` turns an error that follows a death into that one line.
    ``kill_all`` kills whatever is still running: the last word of every run."""

    def __init__(self) -> None:
        self._all: list[Child] = []
        self._lock = threading.Lock()
        self.step = "start-up"

    def add(self, name: str, proc: subprocess.Popen[Any], *, server: bool = True,
            log: Path | None = None, reap: bool = True) -> None:  # fmt: skip
        with self._lock:
            self._all.append(Child(name, proc, server, log, reap))

    def forget(self, proc: subprocess.Popen[Any]) -> None:
        """A driver done with (reaped by its starter): nothing left to watch or kill."""
        with self._lock:
            self._all = [c for c in self._all if c.proc is not proc]

    def _children(self) -> list[Child]:
        with self._lock:
            return list(self._all)

    def _notice(self, child: Child) -> bool:
        """Whether ``child`` is a server that ended on its own (its ``ended`` then set)."""
        if child.ended:
            return True
        if not child.server or child.stopping:
            return False
        code = child.proc.poll()
        if code is None:
            return False
        said = last_line(child.log) if code > 0 else ""
        child.ended = (f"server {child.name} (pid {child.proc.pid}) {exit_status(code)} "
                       f"during {self.step}" + (f" (its last line: {said})" if said else ""))  # fmt: skip
        return True

    def check(self, step: str | None = None) -> None:
        """``ServerDied`` if a server the run still needs has ended; ``step``, when given,
        becomes the run's step first."""
        if step is not None:
            self.step = step
        for child in self._children():
            if self._notice(child):
                raise ServerDied(child.ended)

    def died(self) -> Child | None:
        """The first server that ended on its own (noticed now or before), if any."""
        return next((c for c in self._children() if self._notice(c)), None)

    def stopping(self, proc: subprocess.Popen[Any]) -> None:
        """The bench is stopping ``proc``: from now on its exit is no death (one that came
        before is kept)."""
        for child in self._children():
            if child.proc is proc:
                self._notice(child)
                child.stopping = True

    def kill_all(self) -> None:
        """SIGKILL to every process still running (deaths noticed first), each reaped."""
        children = self._children()
        for child in children:
            self._notice(child)
            child.stopping = True
            if child.proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.kill(child.proc.pid, signal.SIGKILL)
        for child in children:
            if child.reap:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    child.proc.wait(10)


#: This process's children and the step its run is at.
CHILDREN = Children()


def step(text: str) -> None:
    """Name what the run does from now on (``ServerDied`` and ``Stopped`` lines say it)."""
    CHILDREN.step = text


def run_main(prog: str, main: Callable[[list[str] | None], int],
             argv: list[str] | None = None) -> int:  # fmt: skip
    """``main(argv)`` as a bench's entry point: its exit status.

    SIGTERM, SIGHUP and SIGINT raise ``Stopped`` in the main thread (later ones, during
    the clean-up, are ignored), so the ``finally`` blocks stop the servers and remove the
    run's folder as at a normal end; then one line, exit status 128 + the signal. A dead
    server (``ServerDied``, or any error while a server has ended on its own) and a
    ``RunAborted`` end with one line and exit status 1, no traceback. Any other error
    keeps its traceback. Every child process still running is killed at the end."""
    armed = [True]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if armed[0]:
            armed[0] = False
            raise Stopped(signum)

    watched = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    before = {s: signal.signal(s, on_signal) for s in watched}
    line = ""
    try:
        code = main(argv)
        armed[0] = False
    except Stopped as exc:
        armed[0] = False
        code = 128 + exc.signum
        line = f"stopped by {signal.Signals(exc.signum).name} during {CHILDREN.step}"
    except RunAborted as exc:
        armed[0] = False
        code, line = 1, str(exc)
    except Exception:
        armed[0] = False
        died = CHILDREN.died()
        if died is None:
            raise
        code, line = 1, died.ended
    finally:
        armed[0] = False
        CHILDREN.kill_all()
        for s, handler in before.items():
            signal.signal(s, handler)
    if line:
        print(f"{prog}: {line}; run aborted, every process it started is stopped",
              file=sys.stderr, flush=True)  # fmt: skip
    return code


@contextlib.contextmanager
def run_folder(data_dir: Path, prefix: str, keep: bool = False) -> Iterator[Path]:
    """A new folder under ``data_dir`` for one run's files (server logs, keys, bodies, a
    compiled index), removed when the run ends, however it ends, after every process
    still running is killed; ``keep`` (``--keep-logs``) leaves it and says where."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=data_dir))
    try:
        yield folder
    finally:
        CHILDREN.kill_all()
        if keep:
            log(f"run files kept in {folder} (--keep-logs)")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def add_keep_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-logs", action="store_true", help="keep the run's folder under "
                   "--data-dir (server logs, keys, bodies); by default it is removed at the end, "
                   "failed or not")  # fmt: skip


# --- servers -------------------------------------------------------------------


class ServerProcess:
    """A server child process on 127.0.0.1, its announced address and its logs."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.stderr = open(log_dir / f"{name}.stderr.log", "wb")  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        CHILDREN.add(name, self.proc, log=Path(self.stderr.name))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.address = ""
        self.announced_at = 0.0

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _line(self, prefix: str, timeout: float) -> str | None:
        """The first line of its output that starts with ``prefix``; None if it exits or
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            if line.startswith(prefix):
                return line
        return None

    def wait_announced(self, timeout: float) -> str:
        line = self._line("serving on ", timeout)
        if line is None:
            raise RuntimeError(f"{self.name} did not announce itself (see {self.stderr.name})")
        self.announced_at = time.perf_counter()
        self.address = line.split()[-1]
        return self.address

    def wait_serving(self, timeout: float) -> float:
        """Poll standard health until SERVING; seconds since the announce."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited (see {self.stderr.name})")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - self.announced_at
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not SERVING after {timeout:.0f}s")

    def wait_metrics(self, timeout: float) -> str:
        """The URL of its metrics endpoint (``--metrics-listen``), announced right after
        the ``serving on`` line."""
        line = self._line("metrics on ", timeout)
        if line is None:
            raise RuntimeError(f"{self.name} announced no metrics (see {self.stderr.name})")
        return line.split()[-1]

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        stop_process(self.proc)
        self.stderr.close()


def cpu_by_pid(pids: Sequence[int], children: bool = True) -> dict[int, float]:
    """CPU seconds so far (user + system) of ``pids``, with their children when
    ``children``, by pid; a process that is gone is left out."""
    out = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)] if children else [root]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[p.pid] = t.user + t.system
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy: what ``foreign`` CPU is taken from."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> int | None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; its exit status. A process of
    ``CHILDREN`` is marked as stopped by the bench (an exit before this was a death)."""
    CHILDREN.stopping(proc)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def server_env() -> dict[str, str]:
    """The default configuration: no SHIXIN_* from the caller's shell (logs off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ours_argv(list_path: Path, extra: list[str]) -> list[str]:
    return serve_argv(["--list", str(list_path), *extra])


def serve_argv(args: list[str]) -> list[str]:
    """``shixin-check serve ARGS --listen 127.0.0.1:0``."""
    return cli_argv(["serve", *args, "--listen", "127.0.0.1:0"])


def cli_argv(args: list[str]) -> list[str]:
    """``shixin-check ARGS`` from this virtual environment."""
    script = Path(sys.executable).with_name("shixin-check")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "shixin_check.cli"]
    return [*head, *args]


def add_key(keys_file: Path, principal: str) -> str:
    """A new API key for ``principal`` (roles check and status) in ``keys_file``, made by
    ``shixin-check keys add``: the key, as it prints it once."""
    made = subprocess.run(
        cli_argv(["keys", "add", "--keys-file", str(keys_file), "--principal", principal,
                  "--roles", "check,status"]),
        capture_output=True, text=True, env=server_env(), timeout=60, check=True,
    )  # fmt: skip
    return made.stdout.strip().splitlines()[-1]


def bare_argv() -> list[str]:
    return [sys.executable, "-m", "loadtest.bare_server", "--listen", "127.0.0.1:0"]


def checks_counted(metrics_url: str) -> float:
    """The checks a server has answered so far: the sum of ``shixin_checks_total`` on
    its metrics endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("shixin_checks_total{")
    )


def metric_total(metrics_url: str, name: str) -> float | None:
    """The sum of every series of metric ``name`` on a metrics endpoint; None if it has
    none."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    values = [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    return sum(values) if values else None


def list_status(address: str) -> pb.ListStatus:
    with grpc.insecure_channel(address) as channel:
        reply: pb.ListStatus = pb_grpc.ConsumptionCheckStub(channel).GetListStatus(
            pb.ListStatusRequest(), timeout=10
        )
        return reply


# --- steps ---------------------------------------------------------------------


def ensure_list(data_dir: Path, entries: int, seed: int, as_of: _dt.date) -> tuple[Path, float]:
    """The cached list file, and the seconds spent writing it (0 when cached)."""
    # the generator's output format in the name: a list cached by an older one may
    # no longer load (an organisation's exemption without its person is refused)
    path = data_dir / f"list-{entries}-seed{seed}-{as_of.isoformat()}-g{OUTPUT_FORMAT}.jsonl"
    if path.exists():
        return path, 0.0
    log(f"writing a {entries:,}-entry synthetic list to {path}")
    t0 = time.perf_counter()
    write_snapshot(path, entries, seed=seed, as_of=as_of)
    return path, time.perf_counter() - t0


def in_child(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """``fn(*args)`` in a fresh ``spawn`` process (its own interpreter, no shared GIL)."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        future = pool.submit(fn, *args)
        try:
            return future.result(timeout=timeout)
        except BaseException:  # its time is up, or the bench is stopped: leave no child
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            raise


def finish(results: dict[str, Any], started: float, out: Path | None) -> None:
    """Close a run's figures and write them, before any table is printed (a table's
    bug then loses no figures)."""
    results["total_s"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    if out:
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def revision() -> str:
    """The commit measured, with ``+dirty`` when the working tree differs from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import google.protobuf

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


#: Where the benches cache their lists and put their servers' logs: this user's own (a
#: fixed name shared by every user let another put a list, or a link, there first)
DATA_DIR = Path(tempfile.gettempdir()) / f"shixin-bench-{os.getuid()}"


def own_folder(path: Path) -> Path:
    """``path`` made if missing (for this user alone, mode 0700), or ``SystemExit`` in
    one line if another user could change what is in it: a bench that loads a cached
    list from it must load the one it wrote."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    problem = others_may_write(path.stat())
    if problem:
        raise SystemExit(f"{path} is {problem}: give --data-dir (or --out-dir) a folder "
                         "of your own")  # fmt: skip
    return path


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every bench entry point takes (list, traffic, segments, output)."""
    p.add_argument(
        "--entries",
        type=int,
        default=None,
        help="list size (default 1,000,000; 100,000 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="small list, short segments, 1 round")
    p.add_argument("--out", type=Path, help="also write every figure as JSON here")
    p.add_argument("--seed", type=int, default=20261124, help="list and traffic seed")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_DIR,
        help="where list files are cached and server logs go",
    )
    p.add_argument("--traffic", type=int, default=None, help="distinct requests (default 20,000)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per RPC segment")
    p.add_argument("--rounds", type=int, default=None, help="segments per figure and server")
    add_keep_logs(p)


# --- h2load: a C driver with pre-framed gRPC bodies -------------------------------------------


def frame(message: bytes) -> bytes:
    """A gRPC message as it goes on the wire: uncompressed flag, big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(body: bytes) -> list[bytes]:
    """The messages of a body made by ``frame``, in order (``ValueError`` if one is cut)."""
    messages = []
    at = 0
    while at < len(body):
        if at + 5 > len(body):
            raise ValueError(f"a frame header cut short at byte {at}")
        flag, size = struct.unpack_from(">BI", body, at)
        if flag != 0 or at + 5 + size > len(body):
            raise ValueError(f"a bad or cut frame at byte {at}")
        messages.append(body[at + 5 : at + 5 + size])
        at += 5 + size
    return messages


def run_h2load(
    url: str,
    body: Path,
    *,
    bound: list[str],
    clients: int,
    streams: int,
    headers: tuple[str, ...] = (),
    max_seconds: float = 60.0,
    log_file: Path | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One h2load run posting ``body`` as a gRPC call to ``url``, one thread.

    ``bound`` is ``["-n", N]`` or ``["-D", S]``; h2load is also told ``-T
    max_seconds`` and killed 10 s past it. Returns its figures (``seconds``,
    ``calls_per_s``, ``succeeded``: HTTP 200s, which a gRPC error also is;
    ``failed``) and ``driver_cpu_s``, its own CPU time from ``wait4``. With
    ``log_file``, h2load appends one line per call there (``--log-file``).
    ``extra``: more h2load options (``("--rps", "400")`` for an open loop)."""
    argv = [
        "h2load", *bound, "-c", str(clients), "-m", str(streams), "-t", "1",
        "-T", str(max(1, int(max_seconds))),
        "--header", "content-type: application/grpc", "--header", "te: trailers",
        *(arg for header in headers for arg in ("--header", header)),
        *(["--log-file", str(log_file)] if log_file else []),
        *extra, "-d", str(body), url,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        CHILDREN.add("h2load", proc, server=False, reap=False)
        deadline = time.monotonic() + max_seconds + 10
        reaped = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
            reaped = True
        finally:
            if not reaped:  # interrupted: leave no h2load behind
                proc.kill()
                with contextlib.suppress(ChildProcessError):  # reaped by kill's poll
                    os.wait4(proc.pid, 0)
            CHILDREN.forget(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    requests = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout", text)  # fmt: skip
    if not finished or not requests:
        raise RuntimeError(f"h2load said:\n{text}")
    return {
        "seconds": float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1),
        "calls_per_s": float(finished.group(3)),
        "succeeded": int(requests.group(4)),
        "failed": int(requests.group(5)) + int(requests.group(6)) + int(requests.group(7)),
        "exit": proc.returncode,
        "driver_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def h2load_latencies_us(log_file: Path) -> list[int]:
    """The per-call elapsed µs of an h2load ``--log-file``, calls answered 200 only."""
    out = []
    for line in log_file.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            out.append(int(fields[2]))
    return out
