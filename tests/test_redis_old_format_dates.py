"""A Redis version loaded by older code, which did not refuse placeholder dates.

Before this release a ``valid_until`` of ``1900-01-01`` (an export's placeholder for an
empty date) loaded as a date long past: the entry read as EXPIRED and the listed person
got ``ALLOW EXPIRED``. Versions this code loads carry ``format`` 3 (dates checked); one
of an older format is served fail-closed (such an end is no end) and BEHIND until its
snapshot is loaded again. Each test loads with this code through a real redis-server,
then makes the version what older code wrote (meta ``format``, a stored ``valid_until``),
and follows it with a real server on a free port.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import day_number
from shixin_check.loader.index_redis import (
    FORMAT,
    Client,
    RedisKeys,
    bucket_of,
    connect,
    read_meta,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, ZHANG, delta, person_entry, write_jsonl
from tests.processes import run_cli
from tests.test_failure_paths import header, health
from tests.waiting import eventually

LIST_CURRENT = "shixin.v1.ListCurrent"
FLIGHTS: dict[str, Any] = {"channel": "AIRLINE", "from": "2020-01-01", "until": "2099-12-31"}
PLACEHOLDERS = "did not refuse placeholder dates"


def rows() -> list[dict[str, Any]]:
    """ZHANG listed until 2099; LI listed and allowed to fly by the court."""
    return [
        person_entry("E1", ZHANG, "张伟"),
        person_entry("E2", LI, "李娜", exemptions=[dict(FLIGHTS)], case_number="(2024)京0105执2号"),
    ]


def as_older_code_wrote_it(
    client: Client, keyer: SubjectKeyer, version: str, number: str, day: str, fmt: int
) -> None:
    """Make ``version`` what an older load wrote: meta ``format`` ``fmt`` (1: none) and
    ``number``'s stored match ending on ``day``, counted to expire then, as older code
    counted it."""
    keys = RedisKeys()
    meta = read_meta(client, keys, version)
    key = keyer.subject_key(IdType.RESIDENT_ID, number)
    bucket = keys.subjects(version, bucket_of(key >> 64, int(meta["bucket_bits"])))
    field = key.to_bytes(16, "big")
    matches = orjson.loads(client.hget(bucket, field))
    end = day_number(_dt.date.fromisoformat(day))
    assert len(matches) == 1 and matches[0][10] != end
    matches[0][10] = end
    client.hset(bucket, field, orjson.dumps(matches))
    expiries = [[int(matches[0][1]), int(matches[0][2]), end, 1]]
    client.hset(keys.meta(version), "expiries", orjson.dumps(expiries))
    if fmt == 1:
        client.hdel(keys.meta(version), "format")
    else:
        client.hset(keys.meta(version), "format", fmt)


def flight(server: RunningServer, number: str) -> tuple[str, str]:
    """(decision, first reason code) of a flight for ``number``."""
    reply = server.stub().CheckConsumption(build_request("AIRLINE", id_number=number), timeout=5)
    return pb.Decision.Name(reply.decision), reply.reasons[0].code


def status(server: RunningServer) -> pb.ListStatus:
    return server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)


def expired_counted(server: RunningServer) -> int:
    return sum(c.entries for c in status(server).counts if c.status == "EXPIRED")


@pytest.mark.redis
def test_a_format_2_version_with_a_placeholder_end_denies_and_is_behind(
    redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    client = connect(redis_server.url, timeout=5)
    keyer = SubjectKeyer(SECRET)
    version = publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", rows()), keyer)
    assert read_meta(client, RedisKeys(), version)["format"] == b"%d" % FORMAT  # dates checked
    as_older_code_wrote_it(client, keyer, version, ZHANG, "1900-01-01", fmt=2)

    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: status(server).version != "", "the version followed")
    # the placeholder end is no end: the listed person stays restricted, never EXPIRED
    assert flight(server, ZHANG) == ("DENY", "AIR_TRAVEL")
    assert expired_counted(server) == 0
    # a format-2 version names each exemption's person: the court's exemption applies
    assert flight(server, LI) == ("ALLOW", "EXEMPTED")
    # answers from the version in hand (health SERVING), but it is not to be trusted as
    # the list: BEHIND, saying why and what to do, not the format-1 words on exemptions
    shown = status(server)
    assert shown.behind and shown.rejected_source == f"redis version {version}", shown
    assert PLACEHOLDERS in shown.rejected_problem
    assert "read as having no end date meanwhile" in shown.rejected_problem
    assert "load its snapshot again with this version" in shown.rejected_problem
    assert "exemptions are not applied" not in shown.rejected_problem
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "ListCurrent")
    assert health(server.channel) == "SERVING"
    done = run_cli("status", "--target", server.address)
    assert f"BEHIND: redis version {version}" in done.stdout and PLACEHOLDERS in done.stdout

    # exemption deltas on a format-2 version are accepted, and applied
    exempt = [delta(1, "EXEMPT", entry_id="E1", exemption=FLIGHTS)]
    publish_delta(client, write_jsonl(tmp_path / "d1.jsonl", exempt), keyer)
    unexempt = [delta(2, "UNEXEMPT", entry_id="E2", exemption=FLIGHTS)]
    publish_delta(client, write_jsonl(tmp_path / "d2.jsonl", unexempt), keyer)
    eventually(lambda: status(server).last_delta_seq == 2, "the deltas followed")
    assert flight(server, ZHANG) == ("ALLOW", "EXEMPTED")
    assert flight(server, LI) == ("DENY", "AIR_TRAVEL")
    assert status(server).behind  # still the older load's version

    # the snapshot (with those deltas) loaded again with this code: BEHIND clears
    zhang, li = rows()
    now = [header(2), {**zhang, "exemptions": [dict(FLIGHTS)]}, {**li, "exemptions": []}]
    again = publish_snapshot(client, write_jsonl(tmp_path / "s2.jsonl", now), keyer)
    assert read_meta(client, RedisKeys(), again)["format"] == b"%d" % FORMAT
    eventually(lambda: status(server).version == again, "the new load followed")
    assert not status(server).behind
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "ListCurrent again")
    assert flight(server, ZHANG) == ("ALLOW", "EXEMPTED")
    assert flight(server, LI) == ("DENY", "AIR_TRAVEL")
    client.close()


@pytest.mark.redis
def test_a_format_1_version_keeps_its_exemptions_unapplied_and_its_ends_fail_closed(
    redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    client = connect(redis_server.url, timeout=5)
    keyer = SubjectKeyer(SECRET)
    version = publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", rows()), keyer)
    as_older_code_wrote_it(client, keyer, version, ZHANG, "1899-12-30", fmt=1)

    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: status(server).version != "", "the version followed")
    assert flight(server, ZHANG) == ("DENY", "AIR_TRAVEL")  # not ALLOW EXPIRED
    assert flight(server, LI) == ("DENY", "AIR_TRAVEL")  # format 1: no exemption applied
    shown = status(server)
    assert shown.behind and shown.rejected_source == f"redis version {version}", shown
    assert "exemptions are not applied" in shown.rejected_problem  # the format-1 words stay
    assert PLACEHOLDERS in shown.rejected_problem
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "ListCurrent")
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        # kept a Home Return Permit listed in the old booklet's form as given: a check by
        # the card did not find it
        (3, ["old booklet's form (H1234567801)", "load its snapshot again with this version"]),
        # read an ISO week date (2026-W01-1) as a day, which may have moved an end date;
        # ``load`` refuses it now
        (4, ["ISO week form (2026-W01-1, read as 2025-12-29)", "then load it again"]),
        # kept a Taiwan permit listed in the old booklet's form as given
        (
            5,
            [
                "Taiwan permit listed in the old booklet's form (1234567801)",
                "load its snapshot again with this version",
            ],
        ),
    ],
)
def test_a_version_of_an_older_format_is_served_but_behind_until_loaded_again(
    redis_server: RedisServer, serve: Any, tmp_path: Path, fmt: int, says: list[str]
) -> None:
    client = connect(redis_server.url, timeout=5)
    version = publish_snapshot(
        client, write_jsonl(tmp_path / "s.jsonl", rows()), SubjectKeyer(SECRET)
    )
    client.hset(RedisKeys().meta(version), "format", fmt)
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: status(server).version != "", "the version followed")
    shown = status(server)
    assert shown.behind and shown.rejected_source == f"redis version {version}", shown
    assert all(words in shown.rejected_problem for words in says), shown.rejected_problem
    client.close()
