"""``loadtest/locustfile.py`` against a real server (issue 12, point 5).

Real pieces: ``shixin-check gen-data`` and ``serve`` child processes on a free loopback
port, and ``locust`` headless in a child process, run as ``loadtest/README.md`` runs it.
Nothing asserts a rate or a latency (a loaded 2-core machine makes both anything): only
that every answer was right, calls were made, listed people were among them, and the µs
percentiles were printed; and that a host that is not ``HOST:PORT`` is refused at start.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shixin_check.domain.model import CHINA_TZ
from tests.processes import ServeProcess, run_cli

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = "loadtest/locustfile.py"
SEED = "7"
ENTRIES = "1000"
NAMES = ("rail order", "airline pnr", "hotel check-in", "school enrolment")


class Served:
    """A server on a synthetic list, and the flags that tell locust which list it is."""

    def __init__(self, server: ServeProcess, as_of: str) -> None:
        self.server = server
        self.list_flags = ["--list-seed", SEED, "--entries", ENTRIES, "--as-of", as_of]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``serve`` on a 1,000-entry list of seed 7, generated for today (China time)."""
    folder = tmp_path_factory.mktemp("locust")
    as_of = _dt.datetime.now(CHINA_TZ).date().isoformat()
    made = run_cli("gen-data", "--count", ENTRIES, "--seed", SEED, "--as-of", as_of,
                   "--out", str(folder / "list.jsonl"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    server = ServeProcess("--list", str(folder / "list.jsonl"), log=folder / "serve.log")
    try:
        try:
            server.wait_serving()
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it said:\n{server.output()}") from None
        yield Served(server, as_of)
    finally:
        server.stop()


def locust(
    *args: str, cwd: Path = ROOT, locustfile: str = LOCUSTFILE
) -> subprocess.CompletedProcess[str]:
    """``locust -f LOCUSTFILE ARGS`` in ``cwd``; none of the caller's LOCUST_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env.pop("SHIXIN_API_KEY", None)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")  # the table prints µs
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", locustfile, *args],
        cwd=cwd, env=env, capture_output=True, encoding="utf-8", timeout=180,
    )  # fmt: skip


@pytest.mark.timeout(300)
def test_ten_seconds_of_every_user_end_with_zero_failures(served: Served) -> None:
    done = locust(
        "--headless", "-u", "4", "-r", "4", "-t", "10s", "--only-summary", "--stop-timeout", "5",
        "-H", served.server.target, *served.list_flags, "--listed-share", "0.1",
        "--rail-weight", "1", "--airline-weight", "1", "--hotel-weight", "1", "--school-weight", "1",
    )  # fmt: skip
    said = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, said
    aggregated = re.search(r"^\s*Aggregated\s+(\d+)\s+(\d+)\(", done.stderr + done.stdout, re.M)
    assert aggregated is not None, said
    requests, failures = int(aggregated[1]), int(aggregated[2])
    assert requests > 0 and failures == 0, said
    # The µs table: a row per request kind, and one for them all with listed checks.
    assert re.search(r"latency per call in µs.*\n.*p50\s+p90\s+p99\s+p99\.9\s+max", done.stdout), (
        said
    )
    for name in NAMES:
        assert re.search(rf"^(unary|batch)\s+{name}\s+\d", done.stdout, re.M), (name, said)
    total = re.search(r"^\s+all\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s", done.stdout, re.M)
    assert total is not None, said
    calls, listed = int(total[1].replace(",", "")), int(total[3].replace(",", ""))
    assert calls == requests and listed > 0, said
    assert re.search(r"µs per call, [\d,]+ µs per check", done.stdout), said


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "host",
    ["http://{target}", "{host}", "{target}:", "{host}:99999"],
    ids=["url", "no-port", "empty-port", "port-out-of-range"],
)
def test_a_host_that_is_not_host_port_is_refused_at_start(
    served: Served, tmp_path: Path, host: str
) -> None:
    """Even pointing at a live server, and run from elsewhere than the checkout."""
    target = served.server.target
    given = host.format(target=target, host=target.rpartition(":")[0])
    done = locust(
        "--headless", "-u", "1", "-r", "1", "-t", "5s", "-H", given,
        cwd=tmp_path, locustfile=str(ROOT / LOCUSTFILE),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("locustfile:")]
    assert len(refusal) == 1 and repr(given) in refusal[0] and "HOST:PORT" in refusal[0], (
        done.stderr
    )
    assert "Traceback" not in done.stderr and "Aggregated" not in done.stderr, done.stderr
