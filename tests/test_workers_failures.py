"""``serve --workers N`` when things go wrong: start-up errors, the held port, a kill -9.

Real pieces, as in ``tests/test_workers.py``: ``shixin-check serve`` child
processes (a supervisor and its spawned workers, found with psutil), real
ports on 127.0.0.1, real files. A start-up mistake ends the start in the
line a single server prints; the port stays the supervisor's while its
workers restart; a killed supervisor's private folders go at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import psutil
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.server import workers as supervisors
from shixin_check.server.auth import add_key
from tests.accessdata import bearer
from tests.listdata import ZHANG
from tests.processes import CLI, ServeProcess, free_port, run_cli
from tests.test_workers import ask_round, feed, serve_workers, two_workers, workers_of
from tests.waiting import WAIT_S, eventually

__all__ = ["feed", "two_workers"]  # fixtures used here, defined beside the other worker tests

#: A supervisor that restarts for ever instead of ending is killed after this, failing the test.
ENDS_WITHIN_S = 45


def serve_to_the_end(*args: str, workers: int) -> subprocess.CompletedProcess[str]:
    """``shixin-check serve ARGS`` with ``workers`` workers, expected to end by itself."""
    env = {**os.environ, "SHIXIN_WORKERS": str(workers)}
    try:
        return subprocess.run([*CLI, "serve", *args], capture_output=True, text=True,
                              timeout=ENDS_WITHIN_S, env=env)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running after {ENDS_WITHIN_S}s:\n{exc.stderr!r}") from None


def the_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The last line of a start that ended with exit 2 and no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


# --- 1. a start-up mistake ------------------------------------------------------------------


def test_a_hit_log_that_cannot_open_ends_the_start_as_for_one_server(
    tmp_path: Path, feed: Path
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    args = ("--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
            "--listen", "127.0.0.1:0", "--hit-log", str(tmp_path / "a-file" / "hits.jsonl"))  # fmt: skip
    single = serve_to_the_end(*args, workers=1)
    line = the_refusal(single)
    assert single.stderr.strip() == line  # one line, and nothing else
    supervised = serve_to_the_end(*args, workers=2)
    assert the_refusal(supervised) == line
    said = [s for s in supervised.stderr.splitlines() if " settings: " not in s]  # the start's
    assert "\n".join(said).count(str(tmp_path / "a-file")) == 1, supervised.stderr
    assert "starting it again" not in supervised.stderr


# --- 2. the port, the supervisor's while its workers restart --------------------------------


def test_no_other_server_takes_the_port_while_every_worker_restarts(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    server = serve_workers(tmp_path, feed, "held")
    try:
        workers = workers_of(server)
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        for worker in workers:
            worker.wait(timeout=WAIT_S)
        # no worker listens now (the first replacement is 0.5 s away): a socket bound as
        # grpcio binds a plain server's (SO_REUSEADDR) must still find the port taken
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as refused:
                intruder.bind(("127.0.0.1", server.port))
        assert refused.value.errno == errno.EADDRINUSE
        plain = run_cli("serve", "--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
                        "--listen", server.target, env={**os.environ, "SHIXIN_WORKERS": "1"})  # fmt: skip
        assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
        assert f"port {server.port} is in use" in plain.stderr
        eventually(lambda: server.output().count("serving again") == 2, "both replacements serve")
        assert len({worker for worker, _, _ in ask_round(server.target)}) == 2
    finally:
        code = server.stop()
    assert code == 0, server.output()


def test_the_port_is_held_alike_after_an_earlier_servers_connections(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    """A restart on the port of a single server that just stopped: its connections wait in
    TIME_WAIT on the server's side, which refuses a bind without SO_REUSEADDR."""
    with socket.socket() as earlier:  # bound as grpcio binds a single server
        earlier.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        earlier.bind(("127.0.0.1", 0))
        earlier.listen()
        port = earlier.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = earlier.accept()
            accepted.close()  # the server closes first: its side goes to TIME_WAIT
            client.recv(1)
    server = ServeProcess("--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
                          port=port, log=tmp_path / "again.log")  # fmt: skip
    try:
        eventually(lambda: "every worker is past its first load" in server.output(),
                   "serving on the port just used")  # fmt: skip
        for worker in workers_of(server):
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=WAIT_S)
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as refused:
                intruder.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
        eventually(lambda: server.output().count("serving again") == 2, "both replacements serve")
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_on_the_grpc_port_is_refused_naming_both_flags(
    tmp_path: Path, feed: Path, workers: int
) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = serve_to_the_end("--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
                            "--listen", address, "--metrics-listen", address, workers=workers)  # fmt: skip
    line = the_refusal(done)
    assert done.stderr.strip() == line  # refused before anything starts
    assert f"--metrics-listen {address} and --listen {address} name the same port" in line, line
    assert "another" not in line


def killed_then_ended(server: ServeProcess, worker: int) -> tuple[int, str]:
    """SIGKILL the worker process ``worker``; the supervisor's exit status and output
    once it has ended by itself (it fails the test if it restarts for ever)."""
    try:
        os.kill(worker, signal.SIGKILL)
        code = server.proc.wait(timeout=ENDS_WITHIN_S)
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError(f"restarting for ever:\n{server.output()}") from None
    finally:
        if server.proc.poll() is None:
            server.kill()
    return code, server.output()


def test_a_replacement_that_cannot_start_ends_the_server_in_one_line(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    logs = tmp_path / "logs"
    server = serve_workers(tmp_path, feed, "ends", "--hit-log", str(logs / "hits.jsonl"))
    logs.rename(tmp_path / "logs.old")  # the running workers keep their open files
    logs.write_text("no longer a folder")
    code, output = killed_then_ended(server, workers_of(server)[0].pid)
    assert code == 2, output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert re.fullmatch(r"shixin-check serve: worker \d failed to start 3 times in a row: .*", last)
    assert str(logs) in last, last


def test_a_keys_file_edited_badly_never_ends_the_pool_when_a_worker_dies(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    """A keys file edited badly is refused at its reload, the keys in force stay: then
    one worker crashed, its replacement met the file three times, and the whole pool
    ended, every caller refused. The others serve on with the keys in force, and the
    replacement is started again until the file loads, as for TLS files mid-rotation."""
    keys = tmp_path / "keys.json"
    key = add_key(keys, "ops", "*", ["check"])
    server = serve_workers(tmp_path, feed, "keys", "--keys-file", str(keys))
    try:
        keys.write_text(keys.read_text().rstrip().rstrip("}") + ",}")  # a trailing comma
        server.proc.send_signal(signal.SIGHUP)
        eventually(lambda: server.output().count("refused, the keys in force stay") >= 2,
                   "each worker refusing the reload")  # fmt: skip
        victim = workers_of(server)[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=15)
        said = "is started again until the keys file loads"
        eventually(lambda: server.output().count(said) >= 4, "four replacements refused")
        out = server.output()
        assert "failed to start" not in out and server.proc.poll() is None, out
        for _ in range(4):  # the worker left answers every caller, with the keys in force
            with grpc.insecure_channel(server.target) as channel:
                reply = pb_grpc.ConsumptionCheckStub(channel).CheckConsumption(
                    build_request("AIRLINE", id_number=ZHANG), metadata=bearer(key), timeout=10
                )
            assert reply.decision == pb.DENY
        keys.write_text(json.dumps(json.loads(keys.read_text().replace(",}", "}"))))  # mended
        eventually(lambda: "serving again" in server.output(), "the replacement serving")
    finally:
        code = server.stop()
    assert code == 0, server.output()


# --- 3. private folders of a supervisor killed with SIGKILL ---------------------------------


def test_a_killed_supervisors_folders_are_removed_at_the_next_start(
    tmp_path: Path, feed: Path, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the children's temporary directory

    def private() -> set[str]:
        return {p.name for p in temp.iterdir() if p.name.startswith("shixin-")}

    def start(name: str) -> ServeProcess:  # a generated secret: a private index folder
        server = ServeProcess("--list", str(feed), "--metrics-listen", "127.0.0.1:0",
                              log=tmp_path / f"{name}.log")  # fmt: skip
        eventually(lambda: "every worker is past its first load" in server.output(),
                   f"{name}: every worker serving")  # fmt: skip
        return server

    first = start("first")
    left = private()
    assert {name.rsplit("-", 1)[0] for name in left} == {"shixin-run", "shixin-index"}, left
    workers = workers_of(first)
    first.kill()
    for worker in workers:  # they stop by themselves once their supervisor is gone
        worker.wait(timeout=WAIT_S)
    assert private() == left  # SIGKILL: nothing ran to remove them
    second = start("second")
    try:
        now = private()
        assert len(now) == 2 and not now & left, (left, now)
        assert "its supervisor is gone" in second.output()
    finally:
        assert second.stop() == 0, second.output()
    assert private() == set()


def owned_by(folder: Path, pid: int, started: str) -> Path:
    """``folder``, marked as a supervisor's, then made to name ``pid`` started at ``started``."""
    folder.mkdir()
    supervisors.mark_owned(folder)
    owner_file = folder / supervisors.OWNER_FILE
    owner = json.loads(owner_file.read_text())
    owner_file.write_text(json.dumps({**owner, "pid": pid, "started": started}))
    return folder


def start_ticks(pid: int) -> str:
    """Field 22 of /proc/PID/stat: when ``pid`` started, in clock ticks after boot."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]


def test_only_folders_of_a_supervisor_that_is_gone_are_swept(tmp_path: Path) -> None:
    """Swept: a dead owner's, a reused pid's. Left: a live owner's, an unmarked one, a link,
    a folder not named as ours."""
    gone = psutil.Popen(["true"])
    gone.wait()
    alive = os.getppid()
    dead = owned_by(tmp_path / "shixin-run-dead", gone.pid, "1")
    reused = owned_by(tmp_path / "shixin-index-reused", alive, "1")
    owned_by(tmp_path / "shixin-index-live", alive, start_ticks(alive))
    owned_by(tmp_path / "other-dead", gone.pid, "1")
    (tmp_path / "shixin-run-unmarked").mkdir()
    (tmp_path / "shixin-demo-link").symlink_to(dead)
    assert sorted(supervisors.sweep_stale_folders(tmp_path)) == sorted([dead, reused])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other-dead", "shixin-demo-link", "shixin-index-live", "shixin-run-unmarked",
    ]  # fmt: skip


# --- 4. no process to be had (the limit on processes) ----------------------------------------

#: Installed in every process of the server by PYTHONPATH: starting the process named by
#: FAULT_NO_PROCESS_FOR fails as fork does at the limit on processes (EAGAIN), after
#: FAULT_NO_PROCESS_AFTER starts of it that succeed. (RLIMIT_NPROC does not hold for root,
#: who runs these tests, so the kernel's refusal is played here, at the call that meets it.)
NO_PROCESS_HOOK = """
import errno, os
import multiprocessing.process as _process

_name = os.environ.get("FAULT_NO_PROCESS_FOR", "")
_after = int(os.environ.get("FAULT_NO_PROCESS_AFTER", "0"))
_start = _process.BaseProcess.start
_tries = []

def start(self):
    if self.name == _name:
        _tries.append(1)
        if len(_tries) > _after:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _start(self)

_process.BaseProcess.start = start
"""


def no_process_for(tmp_path: Path, name: str, after: int) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_PROCESS_HOOK)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "FAULT_NO_PROCESS_FOR": name, "FAULT_NO_PROCESS_AFTER": str(after)}


def test_a_worker_no_process_can_be_had_for_ends_the_start_in_one_line(
    tmp_path: Path, feed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the limit on processes the supervisor said ``[Errno 11] Resource temporarily
    unavailable`` and then hung, its first worker left serving the port."""
    for name, value in no_process_for(tmp_path, "shixin-worker-2", 0).items():
        monkeypatch.setenv(name, value)
    port = free_port()
    done = serve_to_the_end("--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
                            "--listen", f"127.0.0.1:{port}", workers=2)  # fmt: skip
    assert the_refusal(done) == (
        "shixin-check serve: no process could be started for worker 2 ([Errno 11] Resource "
        "temporarily unavailable): no process or thread could be started: raise the limit on "
        "processes (ulimit -u, TasksMax= under systemd, the container's pids limit)"
    )
    with socket.socket() as probe:  # worker 1 is gone with its supervisor: the port is free
        probe.bind(("127.0.0.1", port))


def test_a_replacement_no_process_can_be_had_for_is_tried_again_then_given_up(
    tmp_path: Path, feed: Path, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in no_process_for(tmp_path, "shixin-worker-1", 1).items():
        monkeypatch.setenv(name, value)
    server = serve_workers(tmp_path, feed, "no-process")
    found = re.search(r"worker 1 started \(pid (\d+)\)", server.output())
    assert found, server.output()
    code, output = killed_then_ended(server, int(found.group(1)))
    assert code == 2 and "Traceback" not in output, output
    tries = [line for line in output.splitlines()
             if "worker 1 cannot start: no process could be started for worker 1" in line]  # fmt: skip
    assert len(tries) == 2, output
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith(
            "shixin-check serve: worker 1 failed to start 3 times in a row: no process could be "
            "started for worker 1 ([Errno 11] Resource temporarily unavailable): "
        )
    ), output


# --- 5. the supervisor gone early, its working directory gone, signals it does not use ---

#: Installed by PYTHONPATH: each spawned worker sleeps FAULT_SPAWN_DELAY seconds before
#: it imports anything of the server (as a slow disk or a loaded machine makes it).
SPAWN_DELAY_HOOK = """
import os, sys, time
if "--multiprocessing-fork" in sys.argv:
    time.sleep(float(os.environ.get("FAULT_SPAWN_DELAY", "0")))
"""


def test_workers_whose_supervisor_died_before_they_looked_stop_too(
    tmp_path: Path, feed: Path, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker watched for its supervisor's death only once its imports were done
    (about a second): a supervisor killed before then left both workers serving the
    port unsupervised. The supervisor's pid now comes with the seat."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SPAWN_DELAY_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook),
                                                                   os.environ.get("PYTHONPATH")])))  # fmt: skip
    monkeypatch.setenv("FAULT_SPAWN_DELAY", "2")
    server = ServeProcess("--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
                          log=tmp_path / "early.log")  # fmt: skip
    workers: list[psutil.Process] = []
    try:
        eventually(lambda: len(workers_of(server)) == 2, "both workers spawned")
        workers = workers_of(server)
        server.kill()  # SIGKILL: while the workers still sleep before their imports
        gone, alive = psutil.wait_procs(workers, timeout=ENDS_WITHIN_S)
        assert not alive, f"left serving unsupervised: {alive}\n{server.output()}"
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
    assert server.output().count("is gone: stopping") == 2, server.output()


def test_a_working_directory_removed_under_the_server_does_not_end_it(
    tmp_path: Path, feed: Path
) -> None:
    """A redeploy that swaps the release folder removes the supervisor's working
    directory: a replacement worker's spawn failed '[Errno 2]' and the whole server
    ended. Workers now start from /, said once."""
    cwd = tmp_path / "release"
    cwd.mkdir()
    log = tmp_path / "cwd.log"
    env = {**os.environ, "SHIXIN_WORKERS": "2", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--list", str(feed), "--key-secret-file", str(tmp_path / "key"),
             "--listen", f"127.0.0.1:{free_port()}"],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    try:
        eventually(lambda: "every worker is past its first load" in log.read_text(), "serving")
        cwd.rmdir()
        found = re.search(r"worker 1 started \(pid (\d+)\)", log.read_text())
        assert found, log.read_text()
        os.kill(int(found.group(1)), signal.SIGKILL)
        eventually(lambda: "worker 1 serving again" in log.read_text(), "worker 1 replaced")
        assert proc.poll() is None, log.read_text()
        assert f"the working directory {cwd} was removed under the server" in log.read_text()
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_signals_the_server_does_not_use_are_said_and_change_nothing(
    tmp_path: Path, feed: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 and SIGUSR2 (log rotation, to other servers) killed it without a word."""
    monkeypatch.setenv("SHIXIN_WORKERS", str(workers))
    server = serve_workers(tmp_path, feed, "signals") if workers > 1 else ServeProcess(
        "--list", str(feed), "--key-secret-file", str(tmp_path / "key"), log=tmp_path / "one.log"
    )  # fmt: skip
    try:
        server.wait_serving()
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            server.proc.send_signal(sig)
            eventually(lambda sig=sig: f"{sig.name} ignored" in server.output(), f"{sig.name} said")
        assert server.proc.poll() is None, server.output()
        server.wait_serving()
    finally:
        code = server.stop()
    assert code == 0, server.output()
