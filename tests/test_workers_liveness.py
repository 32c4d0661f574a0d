"""``serve --workers N`` when a worker hangs or cannot write its metrics reading.

A worker that is stopped (SIGSTOP here; a deadlock or a read that never
returns in life) keeps its place on the port: the supervisor must notice that
its heartbeats stopped, SIGKILL it and start it again, and meanwhile the
metrics must not call it ready. A worker that cannot write its reading (a
full disk, made here with a file-size limit of 0 on that worker alone) must
turn ``shixin_ready`` 0 instead of leaving its last reading in the sum as if
it were current. Real pieces, as in ``tests/test_workers.py``: a
``shixin-check serve`` supervisor and its spawned workers (found with
psutil), real connections on 127.0.0.1, the real ``/metrics`` page.
"""

from __future__ import annotations

import pickle
import re
import resource
import time
from pathlib import Path

import psutil

from shixin_check.server.metrics import (
    READING_INTERVAL,
    READING_STALE_S,
    Reading,
    WorkerReadings,
    reading_path,
)
from shixin_check.server.workers import AWAY_S, HEARTBEAT_S, SILENT_S
from tests.processes import ServeProcess
from tests.test_workers import (
    ask_round,
    checks_total,
    feed,
    scrape,
    serve_workers,
    two_workers,
    workers_of,
)
from tests.waiting import eventually

__all__ = ["feed", "two_workers"]  # fixtures used here, defined beside the other worker tests

#: Polling the metrics page: often enough, without scraping it 50 times a second.
SCRAPE_STEP_S = 0.25


def metrics_url(server: ServeProcess) -> str:
    found = re.search(r"metrics on (http://\S+)", server.output())
    assert found, server.output()
    return found.group(1)


def workers_by_state(url: str) -> dict[str, float]:
    """``shixin_workers`` by its ``state`` label, and ``ready``: ``shixin_ready``."""
    samples = scrape(url)
    states = {
        key.split('"')[1]: value
        for key, value in samples.items()
        if key.startswith("shixin_workers{")
    }
    return {**states, "ready": samples["shixin_ready"]}


def test_a_stopped_worker_is_counted_stale_then_killed_and_replaced(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    server = serve_workers(tmp_path, feed, "hung", "--metrics-listen", "127.0.0.1:0")
    url = metrics_url(server)
    victim: psutil.Process | None = None
    try:
        all_up = {"up": 2, "stale": 0, "down": 0, "ready": 1}
        eventually(lambda: workers_by_state(url) == all_up, "both workers up and ready",
                   step=SCRAPE_STEP_S)  # fmt: skip
        assert scrape(url)["shixin_worker_restarts_total"] == 0
        asked = len(ask_round(server.target))
        eventually(lambda: checks_total(url) == asked, "the checks counted")
        victim = workers_of(server)[0]
        victim.suspend()  # SIGSTOP: alive, on the port, silent
        stopped_at = time.monotonic()

        # the metrics stop calling it ready once its reading is stale; counts stay
        one_stale = {"up": 1, "stale": 1, "down": 0, "ready": 0}
        eventually(lambda: workers_by_state(url) == one_stale, "the hung worker counted stale",
                   step=SCRAPE_STEP_S)  # fmt: skip
        assert checks_total(url) == asked  # its counters are still in the sum
        # its last reading was written up to one interval before it stopped
        assert time.monotonic() - stopped_at >= READING_STALE_S - READING_INTERVAL

        # the supervisor: one line naming it, SIGKILL, then the usual restart
        said = f"worker {_number(server, victim.pid)} (pid {victim.pid}) sent no heartbeat for"
        eventually(lambda: said in server.output(), "the supervisor noticing the silence",
                   step=SCRAPE_STEP_S)  # fmt: skip
        # its last heartbeat was sent up to one beat before it stopped
        assert time.monotonic() - stopped_at >= SILENT_S - HEARTBEAT_S
        eventually(lambda: not psutil.pid_exists(victim.pid) or
                   victim.status() == psutil.STATUS_ZOMBIE, "the hung worker killed")  # fmt: skip
        eventually(lambda: "serving again" in server.output(), "its replacement serving")
        later = ask_round(server.target)  # fresh connections: none goes to a hung process
        assert len({worker for worker, _, _ in later}) == 2, later
        eventually(lambda: workers_by_state(url) == all_up, "both workers up and ready again",
                   step=SCRAPE_STEP_S)  # fmt: skip
        eventually(lambda: checks_total(url) >= asked + len(later), "counts never go back")
        # stale for ~20 s only, too short for an alert on shixin_workers: the restart counts
        assert scrape(url)["shixin_worker_restarts_total"] == 1
    finally:
        if victim is not None and victim.is_running():
            victim.resume()  # so that it can see its supervisor go, if the test failed
        code = server.stop()
    output = server.output()
    assert code == 0, output
    line = next(x for x in output.splitlines() if "sent no heartbeat" in x)
    assert "SIGKILL, then it is started again" in line, line
    assert f"(pid {victim.pid}) died after" in output and "killed by SIGKILL" in output


def test_a_worker_that_cannot_write_its_reading_is_not_counted_ready(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    server = serve_workers(tmp_path, feed, "full", "--metrics-listen", "127.0.0.1:0")
    url = metrics_url(server)
    worker: psutil.Process | None = None
    limits: tuple[int, int] | None = None
    try:
        all_up = {"up": 2, "stale": 0, "down": 0, "ready": 1}
        eventually(lambda: workers_by_state(url) == all_up, "both workers up and ready",
                   step=SCRAPE_STEP_S)  # fmt: skip
        asked = len(ask_round(server.target))
        eventually(lambda: checks_total(url) == asked, "the checks counted")
        worker = workers_of(server)[0]
        # as a full disk would: every write of that worker's files fails (EFBIG)
        limits = resource.prlimit(worker.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (0, limits[1]))
        one_stale = {"up": 1, "stale": 1, "down": 0, "ready": 0}
        eventually(lambda: workers_by_state(url) == one_stale,
                   "the worker without a reading counted stale", step=SCRAPE_STEP_S)  # fmt: skip
        assert checks_total(url) == asked  # its last counts stay in the sum
        # (its own line saying why is not in the log here: the limit holds its stderr too)

        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, limits)  # the disk has room again
        limits = None
        eventually(lambda: workers_by_state(url) == all_up, "both workers up again",
                   step=SCRAPE_STEP_S)  # fmt: skip
        assert worker.is_running()  # its loop went on: never taken for a hung worker
    finally:
        if worker is not None and limits is not None and worker.is_running():
            resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, limits)
        code = server.stop()
    assert code == 0, server.output()
    assert "sent no heartbeat" not in server.output()


def test_a_stale_reading_keeps_its_counters_but_not_its_gauges(tmp_path: Path) -> None:
    """The sum over three workers: one fresh, one stale (written long ago), one with none."""

    def write(worker: int, checks: int, age: float) -> None:
        reading = Reading(versions=(f"v{worker}",), source_timestamp=1.0, ready=True)
        reading.tally.checks[0] = checks
        reading.hit_log_errors = worker
        reading.taken = time.monotonic() - age
        reading_path(tmp_path, worker).write_bytes(pickle.dumps(reading))

    readings = WorkerReadings(tmp_path, workers=3)
    write(1, checks=5, age=0.0)
    write(2, checks=7, age=READING_STALE_S + 1)
    total = readings.read()
    assert total.tally.checks[0] == 12 and total.hit_log_errors == 3  # counters: both
    assert total.versions == ("v1",)  # gauges: the fresh worker's alone
    assert not total.ready  # a worker not heard from is not ready
    assert total.workers == (1, 1, 1)  # up, stale, down (no reading: starting or dead)
    write(2, checks=9, age=0.0)  # heard from again
    total = readings.read()
    assert total.tally.checks[0] == 14 and total.ready and total.workers == (2, 0, 1)


def _number(server: ServeProcess, pid: int) -> int:
    """Which worker the process ``pid`` is, as the supervisor logged its start."""
    found = re.findall(rf"worker (\d+) started \(pid {pid}\)", server.output())
    assert found, server.output()
    return int(found[-1])


def test_workers_stopped_with_their_supervisor_are_not_taken_for_hung(
    tmp_path: Path, feed: Path, two_workers: None
) -> None:
    """Ctrl-Z, ``docker pause``, a frozen cgroup: the whole server stops for longer than
    SILENT_S. The supervisor, thawed a moment before its workers (a thaw is not atomic),
    found no beat since before the pause and killed healthy workers."""
    server = serve_workers(tmp_path, feed, "paused")
    try:
        supervisor = psutil.Process(server.proc.pid)
        workers = workers_of(server)
        assert len(workers) == 2
        supervisor.suspend()
        for worker in workers:
            worker.suspend()
        time.sleep(SILENT_S + 2)
        supervisor.resume()
        time.sleep(1.5)  # the supervisor's loop runs while its workers are still stopped
        for worker in workers:
            worker.resume()
        eventually(lambda: "the supervisor was stopped for" in server.output(),
                   "the supervisor noticing its own pause")  # fmt: skip
        time.sleep(2)
        assert "sent no heartbeat" not in server.output(), server.output()
        assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert {w.pid for w in workers_of(server)} == {w.pid for w in workers}
        assert len(ask_round(server.target)) > 0
    finally:
        for process in [psutil.Process(server.proc.pid), *workers_of(server)]:
            if process.is_running():
                process.resume()
        code = server.stop()
    assert code == 0, server.output()
    assert AWAY_S < SILENT_S
