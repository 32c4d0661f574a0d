"""A snapshot's parse processes die with the server that started them.

``build_snapshot`` parses a big JSON Lines file in a pool of spawned processes.
A server killed mid-parse (SIGKILL, the OOM killer, which strikes when a parse
peaks) left them blocked for good on the result pipe, some 90 MB each, one set
more at every such restart. The pool's initialiser (``versions._die_with``)
has each watch the process that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shixin_check.loader import versions

REPO = Path(__file__).resolve().parent.parent

#: the pool of ``build_snapshot``, as it starts it, given a task that outlives the parent
_PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from shixin_check.loader import versions

if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn,
                               initializer=versions._die_with, initargs=(os.getpid(),))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is gone but unreaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_parse_process_exits_once_the_server_that_started_it_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10 * versions.PARENT_POLL_S + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"parse process {child} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


#: ``build_snapshot`` itself, its chunks made to outlast the parent: the children
#: import this file as ``__mp_main__`` (spawn), so ``slow_chunk`` reaches them by name
_BUILD = """
import datetime, os, sys, time
from pathlib import Path
from shixin_check.loader import versions
from shixin_check.loader.columns import keyer_for
from shixin_check.loader.synthetic import write_snapshot


def slow_chunk(*args):
    time.sleep(120)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    write_snapshot(path, 200, seed=5, as_of=datetime.date(2026, 11, 1))
    versions._parse_chunk = slow_chunk
    print("parsing", flush=True)
    versions.build_snapshot(path, keyer_for(b"k" * 32), workers=2)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_build_snapshots_parse_processes_exit_once_the_server_is_killed_mid_parse(
    tmp_path: Path,
) -> None:
    script = tmp_path / "build.py"
    script.write_text(_BUILD)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "snapshot-0001.jsonl")],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    children: list[int] = []
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "parsing"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the pool's two, and the resource tracker
            children = [c for c in _children(parent.pid) if _alive(c)]
            if len(children) >= 3:
                break
            time.sleep(0.2)
        time.sleep(1)  # spawned and initialised: blocked in their chunk now
        children = [c for c in _children(parent.pid) if _alive(c)]
        assert len(children) >= 2, children
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10 * versions.PARENT_POLL_S + 5
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [c for c in children if _alive(c)]
        assert not left, f"processes {left} outlived the parse's parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
