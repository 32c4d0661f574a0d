"""A version's delta stream that lost records (an operator's ``XTRIM``, an ``XDEL``).

A replica learns whom the deltas listed from the stream only: its Bloom filter
holds the snapshot's subjects plus those the stream's ``LIST`` records name. A
replica that did not read the records before they went must never answer under a
label past them (the people they listed would get ``ALLOW NOT_LISTED``), and a load
must not go on from such a stream, where an applied seq can no longer be compared
with a file's.

Everything is real: redis-server on a free port, ``shixin-check load`` as a child
process, replicas in Redis mode (or a ``RedisFollower`` driven by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    Client,
    LostView,
    RedisFollower,
    RedisKeys,
    read_meta,
)
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests import test_redis_seq
from tests.conftest import RedisServer, RunningServer
from tests.listdata import ZHANG, basic_rows, delta, person_entry, rid, write_jsonl
from tests.test_redis_failures import health, key_of, status
from tests.test_redis_replicas import decision
from tests.test_redis_seq import load, one_line, snapshot_with_header
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
#: fixture shared with tests/test_redis_seq.py: basic_rows() loaded, replica r1 serving
replica = test_redis_seq.replica

#: People never listed in ``basic_rows``: the deltas here list them, one a seq.
NEWLY_LISTED = [rid(f"11010519910101{n:03d}") for n in range(1, 4)]


def listing(seq: int) -> dict[str, Any]:
    """Delta row ``seq``: lists ``NEWLY_LISTED[seq - 1]`` as entry ``N<seq>``."""
    return delta(seq, "LIST", entry=person_entry(f"N{seq}", NEWLY_LISTED[seq - 1], "钱七"))


def stream_of(client: Client) -> str:
    current = client.get(RedisKeys().current)
    assert current is not None
    return RedisKeys().deltas(current.decode())


def drop_records(client: Client, how: str) -> str:
    """The stream of the current version, holding seqs 1 to 3, loses records: ``xtrim``
    keeps only seq 3 (``XTRIM ... MAXLEN 1``), ``xdel`` removes seq 2. What is missing,
    as a replica says it."""
    stream = stream_of(client)
    if how == "xtrim":
        assert client.xtrim(stream, maxlen=1, approximate=False) == 2
        return "no longer holds deltas 1 to 2"
    (record,) = [i for i, fields in client.xrange(stream) if fields[b"seq"] == b"2"]
    assert client.xdel(stream, record) == 1
    return "no longer holds 1 of deltas 1 to 3"


@pytest.mark.parametrize("how", ["xtrim", "xdel"])
def test_a_replica_started_after_the_stream_lost_records_serves_nothing_past_them(
    how: str, replica: RunningServer, redis_server: RedisServer, client: Client,
    serve: Serve, tmp_path: Path,
) -> None:  # fmt: skip
    """The old code served the meta's last seq as the label (``V+3``) with a filter that
    lacked everyone deltas 1 and 2 listed: SERVING, and they got ALLOW NOT_LISTED."""
    url = redis_server.url
    deltas = write_jsonl(tmp_path / "d1.jsonl", [listing(seq) for seq in (1, 2, 3)])
    assert load(deltas, url).returncode == 0
    eventually(lambda: decision(replica, NEWLY_LISTED[0]).decision == pb.DENY, "deltas served")
    missing = drop_records(client, how)

    late = serve(None, redis=url, replica_id="r2")
    eventually(lambda: missing in status(late).not_serving_reason, "the lost records said")
    reason = status(late).not_serving_reason
    assert reason.startswith("redis lost deltas of version"), reason
    assert "trimmed" in reason and "load a snapshot that includes them" in reason, reason
    assert health(late) == "NOT_SERVING"
    for number in NEWLY_LISTED:  # never ALLOW: nothing is served
        with pytest.raises(grpc.RpcError) as refused:
            decision(late, number)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # the replica that read every record before they went holds them all: it serves
    assert health(replica) == "SERVING"
    assert decision(replica, NEWLY_LISTED[0]).decision == pb.DENY

    # the remedy it names: a snapshot that includes seq 3
    rows = [*basic_rows(), *(listing(seq)["entry"] for seq in (1, 2, 3))]
    done = load(snapshot_with_header(tmp_path / "s2.jsonl", 3, rows), url)
    assert done.returncode == 0, done.stderr
    for server in (replica, late):
        eventually(lambda s=server: health(s) == "SERVING", "SERVING the new snapshot")
        for number in NEWLY_LISTED:
            assert decision(server, number).decision == pb.DENY


def test_a_running_replica_labels_nothing_past_records_trimmed_before_it_read_them(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """Two followers on the snapshot; ``caught_up`` reads delta 1 before the trim, the
    other does not. Delta 2 loaded, then the stream trimmed to it: the old code labelled
    the second ``+2`` with a filter that lacked delta 1's listing (ALLOW NOT_LISTED)."""
    snapshot = snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows())
    publish_snapshot(client, snapshot, keyer)
    behind = RedisFollower(redis_server.url, keyer, replica_id="behind")
    caught_up = RedisFollower(redis_server.url, keyer, replica_id="caught-up")
    try:
        behind.sync_once()
        caught_up.sync_once()
        publish_delta(client, write_jsonl(tmp_path / "d1.jsonl", [listing(1)]), keyer)
        caught_up.sync_once()
        assert caught_up.current().info.last_delta_seq == 1  # type: ignore[union-attr]
        publish_delta(client, write_jsonl(tmp_path / "d2.jsonl", [listing(2)]), keyer)
        client.xtrim(stream_of(client), maxlen=1, approximate=False)  # only seq 2 is left
        for _ in range(3):
            behind.sync_once()
            caught_up.sync_once()

        view = behind.current()
        assert isinstance(view, LostView), view
        assert view.info.last_delta_seq == 0  # never a label past the lost delta 1
        assert "no longer holds delta 1" in behind.health_problem(), behind.health_problem()
        key = key_of(keyer, NEWLY_LISTED[0])
        assert view.might_contain(key)  # never cleared by a filter that lacks it
        with pytest.raises(IndexUnavailable):
            view.look_up(key)
        assert behind.lag() == -1

        served = caught_up.current()  # read delta 1 before the trim: whole
        assert served is not None and not isinstance(served, LostView)
        assert served.info.last_delta_seq == 2 and caught_up.health_problem() == ""
        assert served.might_contain(key) and served.look_up(key)
    finally:
        behind.stop()
        caught_up.stop()


def test_no_delta_is_loaded_on_a_trimmed_stream(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """A delta rewritten under an applied seq is refused by the digest its stream record
    keeps; trimmed, the old code found no record, took the file for a replay and loaded
    it with exit 0, ``0 op(s) applied``. Any delta is refused now, naming the stream."""
    url = redis_server.url
    assert load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url).returncode == 0
    deltas = write_jsonl(tmp_path / "d1.jsonl", [listing(seq) for seq in (1, 2, 3)])
    assert load(deltas, url).returncode == 0
    rewritten = write_jsonl(
        tmp_path / "d2-rewritten.jsonl",
        [delta(2, "LIST", entry=person_entry("N99", ZHANG, "张伟"))],
    )
    assert load(rewritten, url).returncode == 1  # the stream's digest tells it apart
    stream = stream_of(client)
    client.xtrim(stream, maxlen=1, approximate=False)

    for path in (
        rewritten,
        write_jsonl(tmp_path / "d4.jsonl", [delta(4, "DELIST", entry_id="N1")]),
    ):
        done = load(path, url)
        assert done.returncode == 2, (done.stdout, done.stderr)
        line = one_line(done)
        assert f"nothing was loaded: the delta stream {stream}" in line, line
        assert "no longer holds deltas 1 to 2 (trimmed" in line, line
        assert "load a snapshot that includes seq 3" in line, line
    current = client.get(RedisKeys().current)
    assert current is not None
    assert read_meta(client, RedisKeys(), current.decode())["last_seq"] == b"3"
