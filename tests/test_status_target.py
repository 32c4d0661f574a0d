"""``shixin-check status`` where ``SHIXIN_REDIS`` is set, as in every shipped deployment.

The image under compose.yaml and deploy/k8s gets ``SHIXIN_REDIS`` from its
environment: ``status --target HOST:PORT`` there read Redis instead of asking
the server, printed Redis's view and exited 0 while the server was NOT_SERVING,
and Redis's view itself exited 0 with no list in Redis at all. A replica whose
Redis was emptied printed ``behind by -1 delta(s); reachable False``.

Everything is real: redis-server on a free loopback port, ``shixin-check load``
and ``status`` as child processes, a replica in Redis mode.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shixin_check.loader.index_redis import PASSWORD_ENV, connect
from tests import test_redis_seq
from tests.conftest import RedisServer, RunningServer
from tests.listdata import ZHAO, basic_rows, person_entry
from tests.processes import free_port
from tests.test_redis_failures import flush, status
from tests.test_redis_guards import OTHER_SECRET, load_with
from tests.waiting import eventually

pytestmark = pytest.mark.redis

#: basic_rows() loaded, one replica "r1" serving them (tests/test_redis_seq.py)
replica = test_redis_seq.replica


def status_cli(*args: str, redis: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``shixin-check status ARGS`` in a child process, with ``SHIXIN_REDIS`` set to
    ``redis`` when given (as the image's environment sets it) and ``env`` added."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    full.pop(PASSWORD_ENV, None)
    if redis:
        full["SHIXIN_REDIS"] = redis
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "status", *args],
        capture_output=True, text=True, timeout=120, env=full,
    )  # fmt: skip


def lost(replica: RunningServer) -> bool:
    return "lost" in status(replica).not_serving_reason


def test_a_target_on_the_command_line_asks_the_server_whatever_shixin_redis_says(
    replica: RunningServer, redis_server: RedisServer
) -> None:
    flush(redis_server)
    eventually(lambda: lost(replica), "the flush noticed", step=0.05)
    asked = status_cli("--target", replica.address, redis=redis_server.url)
    assert asked.returncode == 1, asked.stdout + asked.stderr
    first = asked.stdout.splitlines()[0]
    assert first.startswith("NOT_SERVING: redis lost version"), asked.stdout
    assert "redis current version" not in asked.stdout  # not Redis's view
    as_json = status_cli("--target", replica.address, "--json", redis=redis_server.url)
    assert as_json.returncode == 1
    assert "redis lost version" in orjson.loads(as_json.stdout)["notServingReason"]


def test_redis_and_target_both_on_the_command_line_are_refused_in_one_line() -> None:
    redis_url, target = f"redis://127.0.0.1:{free_port()}/0", f"127.0.0.1:{free_port()}"
    for args in (("--redis", redis_url, "--target", target),
                 ("--target", target, "--redis", redis_url, "--json")):  # fmt: skip
        done = status_cli(*args)
        assert done.returncode == 2
        assert done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("shixin-check status: --redis and --target are both given"), line


def test_redis_from_its_variable_alone_still_reads_redis_and_exits_1_once_it_lost_the_list(
    replica: RunningServer, redis_server: RedisServer
) -> None:
    url = redis_server.url
    # neither on the command line: Redis's view, as before (a target from its variable too)
    eventually(lambda: " behind 0 (seen " in status_cli(redis=url).stdout, "r1 registered")
    for env in ({}, {"SHIXIN_TARGET": f"127.0.0.1:{free_port()}"}):
        healthy = status_cli(redis=url, **env)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.startswith("redis current version 20"), healthy.stdout

    flush(redis_server)
    eventually(lambda: "redis lost version" in status_cli(redis=url).stdout, "r1 says so")
    emptied = status_cli(redis=url)
    assert emptied.returncode == 1, emptied.stdout + emptied.stderr
    assert emptied.stdout.startswith("redis current version (none): nothing loaded yet, or "
                                     "Redis was emptied"), emptied.stdout  # fmt: skip
    (line,) = [x for x in emptied.stdout.splitlines() if "replica r1:" in x]
    assert ", a version Redis no longer holds (seen " in line, line
    assert "behind version" not in line, line
    as_json = status_cli("--json", redis=url)
    assert as_json.returncode == 1
    assert orjson.loads(as_json.stdout)["version"] == ""


def test_redis_view_exits_1_while_a_replica_refuses_the_current_version(
    replica: RunningServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    rows = [*basic_rows(), person_entry("E8", ZHAO, "赵六")]
    newer = test_redis_seq.snapshot_with_header(tmp_path / "s2.jsonl", 0, rows)  # dated
    done = load_with(OTHER_SECRET, newer, url, "--new-key-secret")
    assert done.returncode == 0, done.stderr
    eventually(lambda: "was refused" in status_cli(redis=url).stdout, "r1 reports BEHIND")
    behind = status_cli(redis=url)
    assert behind.returncode == 1, behind.stdout
    (line,) = [x for x in behind.stdout.splitlines() if "replica r1:" in x]
    assert ", not Redis's current version (seen " in line, line


def test_a_replica_whose_redis_was_emptied_says_so_never_a_negative_lag(
    replica: RunningServer, redis_server: RedisServer
) -> None:
    served = status(replica).version
    flush(redis_server)
    eventually(lambda: lost(replica), "the flush noticed", step=0.05)
    shown = status_cli("--target", replica.address)
    assert shown.returncode == 1
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("replica r1:")]
    assert line == (f"replica r1: Redis holds no current version (flushed, restarted empty or "
                    f"failed over?): it no longer holds {served}, which this replica serves")  # fmt: skip


def test_a_replica_that_cannot_reach_redis_says_so_never_a_negative_lag(
    replica: RunningServer, redis_server: RedisServer
) -> None:
    served = status(replica).version
    redis_server.stop()
    eventually(lambda: not status(replica).index_reachable, "Redis unreachable", step=0.05)
    shown = status_cli("--target", replica.address)
    assert shown.returncode == 0, shown.stdout  # the version in hand still answers
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("replica r1:")]
    assert line == (f"replica r1: Redis cannot be reached now (it held {served} seq 0); how "
                    "many deltas behind is unknown")  # fmt: skip


def test_a_replica_whose_redis_is_over_its_maxmemory_is_not_said_unreachable(
    replica: RunningServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis over its maxmemory answers and refuses every transaction: ``status``
    printed "Redis cannot be reached now" beside its WRITE REFUSED line, sending the
    person on call to the network. And once such a Redis is gone, that is said: the
    refusal was kept (status: "answers but refuses"), and no line said it went down."""
    served = status(replica).version
    client = connect(redis_server.url, timeout=5)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used // 2))
    try:
        eventually(lambda: status(replica).redis_write_refused != "", "the refusal", step=0.05)
        shown = status_cli("--target", replica.address)
        (line,) = [x for x in shown.stdout.splitlines() if x.startswith("replica r1:")]
        assert "cannot be reached" not in line, shown.stdout
        assert line == (f"replica r1: Redis answers but refuses this replica now (WRITE "
                        f"REFUSED below; it held {served} seq 0); how many deltas behind is "
                        "unknown"), shown.stdout  # fmt: skip
        assert "WRITE REFUSED: " in shown.stdout and "maxmemory" in shown.stdout, shown.stdout

        def said(words: str) -> Callable[[], bool]:
            return lambda: words in status_cli("--target", replica.address).stdout

        unreachable = said("replica r1: Redis cannot be reached now")
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # gone a while, then back still full
        try:
            eventually(unreachable, "status saying Redis cannot be reached")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        eventually(said("Redis answers but refuses this replica now"), "said full again")
        with caplog.at_level(logging.ERROR, logger="shixin.server"):
            redis_server.stop()  # and now gone
            eventually(unreachable, "status saying Redis cannot be reached")
            assert "WRITE REFUSED" not in status_cli("--target", replica.address).stdout
            eventually(lambda: "unreachable" in caplog.text, "the line saying Redis went")
    finally:
        if redis_server.proc is not None:
            client.config_set("maxmemory", "0")
        client.close()


def test_a_server_status_cannot_ask_is_named_with_the_command() -> None:
    """Nothing answering on the target printed grpc's bare words (``UNAVAILABLE: failed
    to connect to all addresses ...``); ``health`` names the command and the target."""
    target = f"127.0.0.1:{free_port()}"
    done = status_cli("--target", target)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"shixin-check status: cannot ask {target}: UNAVAILABLE: "), line
