"""A replica's ``+N`` label never runs ahead of what its Bloom filter holds.

The README promises (Many replicas: the list in Redis): within a version, a label
is never ahead of the data, everything up to ``+N`` is in what the check read.
A person a delta newly lists is cleared by the replica's local filter until the
follower adds the key, so a label that counts the listing before the key is
in would answer ``ALLOW NOT_LISTED`` under a label that includes the LIST.

Two ways that happened: a delta of more than one stream page of ops (1,000)
labelled with its last seq after its first page, and a delta committed between
the follower's read of the stream and its read of the version's meta.

Everything is real: redis-server on a free port, the loader's own
``publish_snapshot`` / ``publish_delta`` (what ``load --redis`` runs), the
server's ``RedisFollower``, and a server in Redis mode answering over gRPC.
The follower's rounds are driven by hand (``sync_once``, what its thread runs
each poll), so each test sees every label the follower ever installs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.background import Background
from shixin_check.loader.index_redis import Client, RedisFollower, RedisView
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import RedisServer, RunningServer
from tests.listdata import basic_rows, delta, person_entry, rid, write_jsonl

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]

#: more LIST ops in one delta than the follower reads in one stream page (1,000)
BIG_DELTA = 1500
#: rounds a test drives by hand: a follower is done with any delta well within them
ROUNDS = 6


def new_person(n: int) -> str:
    """The resident ID of the ``n``-th person of these tests (from 1), none of them in
    ``basic_rows``: born 1990 onwards, 999 to a day."""
    born = dt.date(1990, 1, 1) + dt.timedelta(days=(n - 1) // 999)
    return rid(f"110105{born:%Y%m%d}{(n - 1) % 999 + 1:03d}")


def listings(path: Path, first_seq: int, count: int) -> Path:
    """A delta file of ``count`` LIST ops, seq ``first_seq`` on: the op of seq ``s``
    lists ``new_person(s)`` alone."""
    rows = [
        delta(s, "LIST", entry=person_entry(f"B{s:05d}", new_person(s), "钱七"))
        for s in range(first_seq, first_seq + count)
    ]
    return write_jsonl(path, rows)


def missed(view: RedisView, keyer: SubjectKeyer, seqs: range) -> list[int]:
    """The seqs in ``seqs`` whose person ``view`` does not find: cleared by its filter,
    or no match in Redis (the person listed at seq ``s`` is ``new_person(s)``)."""
    keys = [keyer.subject_key(IdType.RESIDENT_ID, new_person(s)) for s in seqs]
    cleared = {s for s, key in zip(seqs, keys, strict=True) if not view.might_contain(key)}
    found = view.look_up_many(keys)
    return [s for s, matches in zip(seqs, found, strict=True) if s in cleared or not matches]


def assert_label_held(follower: RedisFollower, keyer: SubjectKeyer, last_listed: int) -> int:
    """Everyone listed up to the view's label is found, and the status figures claim no
    more than the label; the label's seq."""
    view = follower.current()
    assert isinstance(view, RedisView)
    label = view.info.last_delta_seq
    suffix = f"+{label}" if label else ""
    assert view.info.version == f"{view.version}{suffix}"
    assert missed(view, keyer, range(1, min(label, last_listed) + 1)) == [], view.info.version
    status = follower.replica_status()  # GetListStatus's lag_deltas and upstream seq
    lag, upstream = status["lag_deltas"], status["upstream_last_delta_seq"]
    assert isinstance(lag, int) and isinstance(upstream, int)
    assert lag == upstream - label and lag >= 0
    return label


def test_a_delta_longer_than_a_stream_page_is_labelled_only_once_whole(
    follower: RedisFollower, redis_server: RedisServer, client: Client, keyer: SubjectKeyer,
    tmp_path: Path,
) -> None:  # fmt: skip
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    follower.sync_once()
    assert assert_label_held(follower, keyer, 0) == 0
    publish_delta(client, listings(tmp_path / "d1.jsonl", 1, BIG_DELTA), keyer)
    labels = []
    for _ in range(ROUNDS):
        follower.sync_once()
        labels.append(assert_label_held(follower, keyer, BIG_DELTA))
    # only whole deltas are labels: the snapshot's, then all 1,500 ops
    assert set(labels) <= {0, BIG_DELTA} and labels[-1] == BIG_DELTA
    assert follower.lag() == 0
    # the next one too, on top of a long stream
    publish_delta(client, listings(tmp_path / "d2.jsonl", BIG_DELTA + 1, BIG_DELTA), keyer)
    for _ in range(ROUNDS):
        follower.sync_once()
        labels.append(assert_label_held(follower, keyer, 2 * BIG_DELTA))
    assert set(labels) <= {0, BIG_DELTA, 2 * BIG_DELTA} and labels[-1] == 2 * BIG_DELTA
    # a replica that takes the version now reads the whole stream (3,000 ops) at once
    late = RedisFollower(redis_server.url, keyer, replica_id="late")
    try:
        late.sync_once()
        assert assert_label_held(late, keyer, 2 * BIG_DELTA) == 2 * BIG_DELTA
    finally:
        late.stop()


class LoadBetween:
    """The follower's Redis client, through which a real delta load (``load``) lands
    right after the follower's first ``command`` that returns something: between that
    read and the follower's next one, as a load on another machine may. Every command
    still goes to the real Redis.

    Before each command the follower (or a look-up) sends, the view it serves is
    checked as a check arriving at that moment would read it: ``unheld`` collects
    each label under which a person listed up to it is cleared by the filter."""

    def __init__(self, follower: RedisFollower, keyer: SubjectKeyer, command: str,
                 load: Callable[[], object], last_listed: int) -> None:  # fmt: skip
        self._client = follower.client
        self._follower = follower
        self._command = command
        self._load: Callable[[], object] | None = load
        self._keys = {s: keyer.subject_key(IdType.RESIDENT_ID, new_person(s))
                      for s in range(1, last_listed + 1)}  # fmt: skip
        self.unheld: list[tuple[str, list[int]]] = []

    def _check(self) -> None:
        view = self._follower.current()
        if isinstance(view, RedisView):
            label = view.info.last_delta_seq
            cleared = [s for s, key in self._keys.items()
                       if s <= label and not view.might_contain(key)]  # fmt: skip
            if cleared:
                self.unheld.append((view.info.version, cleared))

    def __getattr__(self, name: str) -> Any:
        self._check()
        method = getattr(self._client, name)
        if name != self._command:
            return method

        def then_load(*args: Any, **kwargs: Any) -> Any:
            reply = method(*args, **kwargs)
            if reply and self._load is not None:
                load, self._load = self._load, None
                load()
            return reply

        return then_load


@pytest.mark.parametrize("command", ["xread", "xrange"])
def test_a_delta_loaded_while_a_round_reads_is_labelled_only_with_its_keys(
    command: str, redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """``xread``: a round reads delta 1 from the stream, delta 2 is committed, then the
    round reads the meta. ``xrange``: a replica taking the version reads its stream
    (delta 1), then delta 2 is committed before its next read."""
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    second = listings(tmp_path / "d2.jsonl", 2, 1)
    follower = RedisFollower(redis_server.url, keyer, replica_id="by-hand")
    real = follower.client
    try:
        if command == "xread":
            follower.sync_once()
        publish_delta(client, listings(tmp_path / "d1.jsonl", 1, 1), keyer)
        watched = LoadBetween(follower, keyer, command,
                              lambda: publish_delta(client, second, keyer), 2)  # fmt: skip
        follower.client = watched
        labels = []
        for _ in range(ROUNDS):
            follower.sync_once()
            labels.append(assert_label_held(follower, keyer, 2))
        assert watched.unheld == []
        assert labels[-1] == 2 and follower.lag() == 0
    finally:
        follower.client = real
        follower.stop()


def label_seq(label: str) -> int:
    return int(label.rpartition("+")[2]) if "+" in label else 0


def test_answers_never_carry_a_label_ahead_of_the_listing(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, serve: Serve, tmp_path: Path
) -> None:
    """End to end: after each round of the server's own follower, every person listed up
    to the label its answers carry is DENY, and GetListStatus claims no more."""
    publish_snapshot(client, write_jsonl(tmp_path / "s1.jsonl", basic_rows()), keyer)
    server = serve(None, redis=redis_server.url, replica_id="r1")
    follower = server.service.engine.source
    assert isinstance(follower, RedisFollower)
    # its thread paused (not its client): the test runs the same rounds, one at a time
    Background.stop(follower)
    follower.sync_once()
    publish_delta(client, listings(tmp_path / "d1.jsonl", 1, BIG_DELTA), keyer)
    stub = server.stub()
    requests = [build_request("AIRLINE", id_number=new_person(s), request_id=str(s))
                for s in range(1, BIG_DELTA + 1)]  # fmt: skip
    seen = set()
    for _ in range(ROUNDS):
        follower.sync_once()
        status = stub.GetListStatus(pb.ListStatusRequest(), timeout=5)
        for start in range(0, BIG_DELTA, 750):
            checks = pb.CheckBatchRequest(checks=requests[start : start + 750])
            answers = stub.CheckConsumptionBatch(checks, timeout=10).results
            for answer in answers:
                label = label_seq(answer.list_version)
                seen.add(answer.list_version)
                if int(answer.request_id) <= label:
                    assert answer.decision == pb.DENY, (answer.list_version, answer.request_id)
        assert status.last_delta_seq == label_seq(status.version)
        assert status.last_delta_seq + status.lag_deltas == status.upstream_last_delta_seq
        assert status.lag_deltas >= 0
    assert status.last_delta_seq == BIG_DELTA and status.lag_deltas == 0
    assert any(label.endswith(f"+{BIG_DELTA}") for label in seen)
