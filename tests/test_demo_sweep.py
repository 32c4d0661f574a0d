"""A single ``serve --demo`` killed with SIGKILL leaves its list folder only until
the next demo starts; a live demo's folder is never removed.

Real ``shixin-check serve --demo`` child processes, real signals, in a temporary
directory of the test's own (``TMPDIR``), so no real user's folder is ever swept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import ServeProcess


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
