"""Waiting in tests for something to happen: they assert behaviour, never a duration.

``WAIT_S`` is only there so a broken build fails instead of hanging; a
documented latency (a delta on every replica within a second) is a figure
for the benchmarks in loadtest/, never a test's pass mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT_S = 30.0


def eventually(happened: Callable[[], bool], what: str, step: float = 0.02) -> None:
    """Poll until ``happened()``; fails with ``what`` (never hangs) if it never does."""
    deadline = time.monotonic() + WAIT_S
    while not happened():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(step)
