"""A single ``serve --demo`` killed with SIGKILL leaves its list folder only until
the next demo starts; a live demo's folder is never removed.

Real ``shixin-check serve --demo`` child processes, real signals, in a temporary
directory of the test's own (``TMPDIR``), so no real user's folder is ever swept.
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from tests.processes import CLI, ServeProcess, free_port


def demo_folder(server: ServeProcess) -> Path:
    """The folder the demo printed its list in, once it serves."""
    line = server.read_until(r"^demo list: ")
    server.wait_serving()
    return Path(line.rsplit(" in ", 1)[1].strip()).parent


def start_demo() -> ServeProcess:
    return ServeProcess("--demo", "--demo-count", "100", "--metrics-listen", "off")


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The children's temporary directory."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def test_a_killed_demo_folder_goes_when_the_next_demo_starts_a_live_one_stays(
    temp: Path,
) -> None:
    first = start_demo()
    try:
        killed = demo_folder(first)
        assert killed.parent == temp
    finally:
        first.kill()
    assert killed.is_dir()  # SIGKILL: nothing ran to remove it

    second = start_demo()
    third: ServeProcess | None = None
    try:
        live = demo_folder(second)  # printed after the sweep
        assert not killed.exists()
        assert live.is_dir() and live != killed
        printed = "".join(second.lines)
        assert f"removed {killed}: the server that made it is gone" in printed, printed

        third = start_demo()  # while the second is alive: its folder stays
        other = demo_folder(third)
        assert live.is_dir() and other.is_dir() and other != live
        assert "removed" not in "".join(third.lines), third.lines
    finally:
        assert second.stop() == 0
        if third is not None:
            assert third.stop() == 0
    assert not live.exists() and not other.exists()  # SIGTERM: removed at exit, as before
    assert not [p for p in temp.iterdir() if p.name.startswith("shixin-")]


def test_a_demo_whose_list_cannot_be_written_stops_in_one_line_and_leaves_no_folder(
    temp: Path,
) -> None:
    """The disk refuses the demo list (a real file-size limit on the child, as a full
    disk would): one line naming the folder, exit 2, no traceback (grpcio's own at exit
    included), and no ``shixin-demo-*`` folder left behind, marked or not."""
    limit = 64 * 1024  # the interpreter starts; 5,000 entries do not fit

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [*CLI, "serve", "--demo", "--demo-count", "5000", "--metrics-listen", "off",
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, preexec_fn=small_files,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("shixin-check serve:")]
    assert line.startswith(f"shixin-check serve: cannot write the demo list in {temp}/shixin-demo-")
    assert "File too large" in line, line
    assert list(temp.iterdir()) == []
