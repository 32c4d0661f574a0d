"""``serve --workers N``: N server processes on one port, one compiled index (issue 12).

Real pieces throughout: ``shixin-check serve`` child processes (a supervisor
and its spawned workers, found with psutil), real gRPC channels on loopback,
``/proc/<pid>/maps`` for what each worker maps, the real ``audit verify`` and
``feedback`` commands over the files the workers wrote. The number of workers
is given as ``SHIXIN_WORKERS`` (the ``--workers`` flag's variable).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import orjson
import psutil
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.compiled import IndexStore
from shixin_check.server.hitlog import AuditLog, log_sets, worker_log_path
from shixin_check.server.metrics import Reading, ReadingWriter, WorkerReadings, reading_path
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.waiting import eventually

SECRET = "tests-only-secret-0123456789abcdef"
#: fresh connections per round: SO_REUSEPORT spreads connections, not calls
CONNECTIONS = 24
Answer = tuple[str, str, tuple[str, ...]]  # worker (check_id prefix), decision, reason codes


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``serve`` this test starts (and every CLI it runs) gets two workers."""
    monkeypatch.setenv("SHIXIN_WORKERS", "2")


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return make_feed(tmp_path)


def make_feed(tmp_path: Path) -> Path:
    """A list directory with one snapshot, and the key secret beside it."""
    folder = tmp_path / "feed"
    folder.mkdir()
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    write_jsonl(folder / "snapshot-0001.jsonl", [header, *basic_rows()])
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    return folder


def serve_workers(tmp_path: Path, feed: Path, name: str, *extra: str) -> ServeProcess:
    server = ServeProcess(
        "--list", str(feed), "--key-secret-file", str(tmp_path / "key"), *extra,
        log=tmp_path / f"{name}.log",
    )  # fmt: skip
    try:
        eventually(lambda: "every worker is past its first load" in server.output(),
                   "every worker serving its list")  # fmt: skip
    except AssertionError:
        server.kill()
        raise AssertionError(server.output()) from None
    return server


def workers_of(server: ServeProcess) -> list[psutil.Process]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = psutil.Process(server.proc.pid).children()
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def kill_one_and_await_its_replacement(server: ServeProcess) -> psutil.Process:
    """SIGKILL the first worker and wait until another serves in its place: the victim."""
    victim = workers_of(server)[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=15)
    eventually(
        lambda: len(workers_of(server)) == 2
        and victim.pid not in {w.pid for w in workers_of(server)}
        and "serving again" in server.output(),
        "a replacement serving in the killed worker's place",
    )  # fmt: skip
    return victim


def mapped_under(pid: int, folder: Path) -> set[str]:
    """The files under ``folder`` that process ``pid`` has mapped."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(str(folder)):
            found.add(parts[5])
    return found


def fresh_channel(target: str) -> grpc.Channel:
    """A channel with its own connection: by default grpc shares one between channels
    to the same target, so "fresh" channels would all reach the same worker."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def ask_round(target: str) -> list[Answer]:
    """A listed and an unlisted subject, each on a fresh connection, ``CONNECTIONS`` times."""
    answers = []
    for i in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            number = ZHANG if i % 2 else ZHAO
            reply = stub.CheckConsumption(build_request("AIRLINE", id_number=number), timeout=10)
            worker = reply.check_id.split("-", 1)[0]
            codes = tuple(r.code for r in reply.reasons)
            answers.append((worker, f"{number}:{pb.Decision.Name(reply.decision)}", codes))
    return answers


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, by its name and labels as written."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def checks_total(url: str) -> float:
    return sum(v for k, v in scrape(url).items() if k.startswith("shixin_checks_total{"))


def quarter_now() -> str:
    today = _dt.datetime.now(CHINA_TZ).date()
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


# --- the whole life of a two-worker server -----------------------------------------------


def test_two_workers_share_one_index_answer_alike_and_survive_a_kill(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    logs = tmp_path / "logs"
    server = serve_workers(
        tmp_path, feed, "run", "--hit-log", str(logs / "hits.jsonl"),
        "--audit-log", str(logs / "audit.jsonl"), "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    try:
        found = re.search(r"metrics on (http://\S+)", server.output())
        assert found, server.output()
        url = found.group(1)
        workers = workers_of(server)
        assert len(workers) == 2

        # (a) both map the same compiled files of the one index folder
        index = feed / ".shixin-index"
        maps = [mapped_under(w.pid, index) for w in workers]
        assert maps[0] and maps[0] == maps[1], maps
        assert all(Path(p).parent.parent == index for p in maps[0])
        assert server.output().count("compiled into") == 1  # compiled once, by one worker

        # (b) every worker answers, and all alike
        answers = ask_round(server.target)
        assert len(_prefixes(answers)) == 2, answers
        by_request: dict[str, set[tuple[str, ...]]] = {}
        for _, request, codes in answers:
            by_request.setdefault(request, set()).add(codes)
        assert sorted(by_request) == [f"{ZHANG}:DENY", f"{ZHAO}:ALLOW"]
        assert all(len(codes) == 1 for codes in by_request.values()), by_request

        # (g) the metrics endpoint reports the sum over both workers
        eventually(lambda: checks_total(url) == len(answers), "checks of both workers summed")
        # and the open files of the worker nearest its limit
        assert 0 < scrape(url)["shixin_open_files_ratio"] < 1

        # a taken port is refused in one line, by a supervisor and by a single server
        for env in ({"SHIXIN_WORKERS": "2"}, {"SHIXIN_WORKERS": "1"}):
            second = run_cli("serve", "--list", str(feed), "--listen", server.target,
                             env={**os.environ, **env})  # fmt: skip
            assert second.returncode == 2, second.stderr
            assert len(second.stderr.strip().splitlines()) == 1, second.stderr
            assert f"port {server.port} is in use" in second.stderr

        # (c) a killed worker is replaced; once it is gone every new connection reaches a
        # worker that answers (the other; its replacement binds only with its list in)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=15)
        answering = _Asker(server.target)
        eventually(
            lambda: len(workers_of(server)) == 2 and victim.pid not in _pids(server),
            "a new worker in the killed one's place",
        )
        eventually(lambda: "serving again" in server.output(), "the replacement serving")
        later = ask_round(server.target)
        failures = answering.finish()
        assert failures == [], failures
        assert len(_prefixes(later)) == 2 and set(_prefixes(later)) != set(_prefixes(answers))
        assert "died after" in server.output() and "SIGKILL" in server.output()
        eventually(lambda: checks_total(url) >= len(answers) + len(later), "sums never go back")
        survivors = _pids(server)
    finally:
        code = server.stop()  # (d) SIGTERM: every worker drains, the supervisor exits 0
    assert code == 0, server.output()
    assert not any(psutil.pid_exists(pid) for pid in survivors)
    assert server.output().count("stopped: in-flight calls done, logs closed") >= 2

    # (f) one hit log and one audit chain per worker; the tools read the set
    assert log_sets(logs / "hits.jsonl") == [
        worker_log_path(logs / "hits.jsonl", n) for n in (1, 2)
    ]
    for n in (1, 2):
        assert worker_log_path(logs / "hits.jsonl", n).stat().st_size > 0
    verified = run_cli("audit", "verify", str(logs / "audit.jsonl"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit.w1.jsonl: OK" in verified.stdout and "audit.w2.jsonl: OK" in verified.stdout
    assert "OK: 2 audit chains" in verified.stdout
    report = run_cli("feedback", "--quarter", quarter_now(), "--hit-log", str(logs / "hits.jsonl"))
    assert report.returncode == 0, report.stderr
    hits = sum(1 for _, request, _ in answers + later if request.startswith(ZHANG))
    assert f" {hits} checks ({hits} denied" in report.stderr, report.stderr
    writers = {
        orjson.loads(line)["check_id"].split("-", 1)[0]
        for n in (1, 2)
        for line in worker_log_path(logs / "hits.jsonl", n).read_bytes().splitlines()
    }
    assert writers >= set(_prefixes(answers))  # hits from every worker, counted once each


def test_a_restarted_server_maps_what_its_workers_compiled(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    first = serve_workers(tmp_path, feed, "first")
    assert first.stop() == 0
    assert first.output().count("compiled into") == 1
    again = serve_workers(tmp_path, feed, "again")
    try:
        assert len(_prefixes(ask_round(again.target))) == 2
    finally:
        assert again.stop() == 0
    output = again.output()
    assert "compiled into" not in output  # (e) nothing parsed again
    assert len(re.findall(r"\[w\d\] .*mapping its compiled index", output)) == 2


# --- the pieces ------------------------------------------------------------------------------


def test_the_index_lock_lets_one_process_at_a_time_in(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index", "fingerprint")
    entered = threading.Event()
    with store.lock():
        other = threading.Thread(target=lambda: _enter(store, entered))
        other.start()
        assert not entered.wait(0.3)  # flock: a second open of the file waits
    other.join(timeout=10)
    assert entered.is_set()


def _enter(store: IndexStore, entered: threading.Event) -> None:
    with store.lock():
        entered.set()


def test_per_worker_log_names_and_sets(tmp_path: Path) -> None:
    base = tmp_path / "hits.jsonl"
    assert worker_log_path(base, 2) == tmp_path / "hits.w2.jsonl"
    assert worker_log_path(tmp_path / "audit", 1) == tmp_path / "audit.w1"
    assert log_sets(base) == []
    (tmp_path / "hits.w2.jsonl.20261128.1").write_text("")
    (tmp_path / "hits.w10.jsonl").write_text("")
    (tmp_path / "hits.wx.jsonl").write_text("")  # not a worker's
    assert log_sets(base) == [tmp_path / "hits.w2.jsonl", tmp_path / "hits.w10.jsonl"]
    base.write_text("")
    assert log_sets(base)[0] == base  # a single server's set comes first


def test_audit_verify_names_the_broken_worker_chain(tmp_path: Path) -> None:
    base = tmp_path / "audit.jsonl"
    for n in (1, 2):
        audit = AuditLog(worker_log_path(base, n))
        for _ in range(3):
            audit.record("CheckConsumption", "peer", "110***", "ALLOW", time.perf_counter())
        audit.close()
    second = worker_log_path(base, 2)
    second.write_text(second.read_text().replace('"ALLOW"', '"DENY"', 1))
    verified = run_cli("audit", "verify", str(base))
    assert verified.returncode == 1, verified.stdout
    assert "audit.w1.jsonl: OK: 3 records" in verified.stdout
    assert "audit.w2.jsonl: BROKEN:" in verified.stdout and "edited" in verified.stdout
    assert "BROKEN: 1 of 2 audit chains" in verified.stdout


def test_worker_readings_sum_and_never_go_back(tmp_path: Path) -> None:
    def reading(checks: int, version: str, ready: bool = True) -> Reading:
        out = Reading(versions=(version,), source_timestamp=1.0, ready=ready)
        out.tally.checks[0] = checks
        out.hit_log_errors = 1
        return out

    readings = WorkerReadings(tmp_path)
    ReadingWriter(reading_path(tmp_path, 1), lambda: reading(5, "v1")).write()
    ReadingWriter(reading_path(tmp_path, 2), lambda: reading(7, "v1")).write()
    total = readings.read()
    assert total.tally.checks[0] == 12 and total.hit_log_errors == 2
    assert total.versions == ("v1",)
    assert total.ready  # every worker ready: shixin_ready 1 (it read 0 with --workers)
    readings.retire(2)  # died: its counts stay, its list gauges go
    ReadingWriter(reading_path(tmp_path, 2), lambda: reading(1, "v2", ready=False)).write()
    total = readings.read()
    assert total.tally.checks[0] == 13 and total.hit_log_errors == 3
    assert total.versions == ("v1", "v2")
    assert not total.ready  # one worker not ready


# --- helpers ---------------------------------------------------------------------------------


def _prefixes(answers: list[Answer]) -> list[str]:
    return sorted({worker for worker, _, _ in answers})


def _pids(server: ServeProcess) -> set[int]:
    return {p.pid for p in workers_of(server)}


class _Asker:
    """Checks on fresh connections in a thread, until ``finish``: the errors it met."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.errors: list[str] = []
        self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with fresh_channel(self.target) as channel:
                stub = pb_grpc.ConsumptionCheckStub(channel)
                try:
                    stub.CheckConsumption(build_request("AIRLINE", id_number=ZHAO), timeout=10)
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code()}: {exc.details()}")
                self.asked += 1

    def finish(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.asked > 0
        return self.errors


@pytest.mark.usefixtures("two_workers")
def test_a_second_stop_signal_cuts_the_workers_drain_short(tmp_path: Path, feed: Path) -> None:
    """``--drain`` on a supervisor: the first SIGTERM starts every worker's drain (new
    calls still answered), a second one reaches them too and ends it at once; the
    server stops cleanly, long before the drain would have."""
    server = serve_workers(tmp_path, feed, "drain", "--drain", "120", "--grace", "1")
    try:
        server.proc.send_signal(signal.SIGTERM)
        eventually(lambda: "answers new calls for 120.0s (--drain)" in server.output(),
                   "the supervisor stopping")  # fmt: skip
        assert ask_round(server.target)  # still answered while draining
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0, server.output()
        assert time.monotonic() - started < 20
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert "SIGKILL" not in server.output(), server.output()


@pytest.mark.usefixtures("two_workers")
def test_a_stop_signal_to_the_whole_group_keeps_the_drain(tmp_path: Path, feed: Path) -> None:
    """Ctrl-C in a terminal signals every process of the group (SIGINT), and the
    supervisor sends its own SIGTERM on: each worker gets two signals. That is one
    stop, not two: every worker answers new calls for its ``--drain``, then stops."""
    server = serve_workers(tmp_path, feed, "group-stop", "--drain", "3", "--grace", "1")
    try:
        workers = workers_of(server)
        assert len(workers) == 2
        started = time.monotonic()
        for process in (psutil.Process(server.proc.pid), *workers):  # as the terminal does
            process.send_signal(signal.SIGINT)
        eventually(lambda: "answers new calls for 3.0s (--drain)" in server.output(),
                   "the supervisor stopping")  # fmt: skip
        time.sleep(1)  # both signals are in by now: the drain goes on
        answered = {decision for _, decision, _ in ask_round(server.target)}
        assert answered == {f"{ZHANG}:DENY", f"{ZHAO}:ALLOW"}, answered  # and answered right
        assert server.proc.wait(timeout=30) == 0, server.output()
        assert time.monotonic() - started >= 3  # no worker cut its drain short
    finally:
        if server.proc.poll() is None:
            server.kill()
    output = server.output()
    for n in (1, 2):
        assert f"[w{n}] stopping: health NOT_SERVING; answering new calls for 3.0s" in output
    assert "SIGKILL" not in output, output
