"""Redis mode: a replica's own timings do not follow the machine's wall clock.

An NTP correction steps the wall clock back (or forward) while the replica
serves. Its heartbeat was timed by the wall clock: stepped back an hour, it beat
no more for that hour, `status --redis` called the replica GONE, and the next
load's garbage collection deleted the version it was serving (every listed
person `REVIEW INDEX_UNAVAILABLE`, health SERVING); its lag was measured the
same way, so a step back made a replica that was behind report 0. Both now run
on ``time.monotonic``; the record's ``at`` was and is Redis's own time.

A real redis-server and a real ``RedisFollower``, its rounds run by hand; only
the wall clock is moved (``time.time``), as libfaketime moves it for a process.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis

from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import Client, LostView, RedisFollower, RedisKeys
from shixin_check.loader.publish_redis import publish_snapshot
from tests.conftest import RedisServer
from tests.listdata import basic_rows, write_jsonl

pytestmark = pytest.mark.redis

STEP = 3600.0  # an hour, as a badly set clock is corrected


def beat_at(client: Client) -> float:
    raw = client.hget(RedisKeys().replicas, "by-hand")
    assert raw is not None, "the replica never beat"
    return float(orjson.loads(raw)["at"])


def rounds(follower: RedisFollower, seconds: float) -> None:
    """The follower's rounds for ``seconds`` (real time), as its thread runs them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        follower.sync_once()
        time.sleep(0.05)


@pytest.mark.parametrize("step", [-STEP, STEP])
def test_the_heartbeat_goes_on_when_the_wall_clock_steps(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, step: float,
) -> None:  # fmt: skip
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    first = beat_at(client)
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + step)
    rounds(follower, 2.5)
    assert beat_at(client) - first >= 1.0  # Redis's seconds: it beat on, once a second


def test_a_replica_behind_stays_behind_when_the_wall_clock_steps_back(
    follower: RedisFollower, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    redis_server.stop()  # nothing to confirm against: behind from its first round
    with pytest.raises(redis.ConnectionError):
        follower.sync_once()
    time.sleep(0.3)
    before = follower.lag_seconds()
    assert before >= 0.3
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - STEP)
    with pytest.raises(redis.ConnectionError):
        follower.sync_once()
    assert follower.lag_seconds() >= before  # not 0: the step changes nothing it measured
    monkeypatch.setattr(time, "time", lambda: wall() + STEP)
    assert follower.lag_seconds() < before + 60  # nor an hour more


def test_a_replica_keeping_its_version_notices_when_that_version_is_gone(
    follower: RedisFollower, client: Client, keyer: SubjectKeyer, tmp_path: Path,
) -> None:  # fmt: skip
    """The rest of the story above: the current version refused (another key secret),
    the replica keeps serving the one before; when that one's keys are gone, it no
    longer answers from it as SERVING (every listed person ``INDEX_UNAVAILABLE``)."""
    kept = publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    other = SubjectKeyer(b"another key secret, of 32 bytes!")
    refused = publish_snapshot(client, write_jsonl(tmp_path / "s2.jsonl", basic_rows()), other,
                               new_key_secret=True)  # fmt: skip
    follower.sync_once()
    assert follower.current().version == kept and refused in follower.behind_problem()  # type: ignore[union-attr]
    assert follower.health_problem() == ""  # serving the last good list, as documented
    client.delete(*client.scan_iter(f"{RedisKeys().prefix}:v:{kept}:*"))
    follower.sync_once()
    assert f"redis lost version {kept}" in follower.health_problem()
    assert isinstance(follower.current(), LostView)
