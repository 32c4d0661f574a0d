"""Seqs in Redis, and an operator's side of ``load --redis`` and ``status``.

A delta after a missing seq is refused whole (and so is the routine next delta
after Redis came back from an older save, until the lost one is loaded
again); a snapshot that would undo applied deltas is refused unless asked
for; a load again waits for a Redis replica's acknowledgement again; ``status``
says why a replica that never loaded is not serving; a Redis password never
shows in a message; a load refused for the lock says when it lapses.

Everything is real: redis-server on free ports, ``shixin-check load`` and
``status`` as child processes, replicas in Redis mode (``serve`` fixture).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.loader.index_redis import PASSWORD_ENV, Client, RedisKeys, connect, read_meta
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.test_redis_failures import codes, health, status
from tests.test_redis_replicas import decision
from tests.waiting import eventually

pytestmark = pytest.mark.redis

Serve = Callable[..., RunningServer]
#: a check answered by the fail policy (REVIEW by default), never from a list
UNAVAILABLE = (pb.REVIEW, ["INDEX_UNAVAILABLE"])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``shixin-check ARGS`` in a child process, with the tests' key secret and no
    Redis password but what a URL carries."""
    env = {**os.environ, "SHIXIN_KEY_SECRET": SECRET.decode()}
    env.pop(PASSWORD_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def load(path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("load", str(path), "--redis", url, *extra)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command writes on stderr (no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def last_seq(client: Client) -> int:
    keys = RedisKeys()
    current = client.get(keys.current)
    assert current is not None
    return int(read_meta(client, keys, current.decode())["last_seq"])


def listing_zhao(seq: int) -> dict[str, Any]:
    """A delta row listing Zhao (never listed in ``basic_rows``) as entry E8."""
    return delta(seq, "LIST", entry=person_entry("E8", ZHAO, "赵六"))


def snapshot_with_header(path: Path, includes_seq: int, rows: list[dict[str, Any]]) -> Path:
    header = {"snapshot": {"includes_seq": includes_seq,
                           "published_at": "2026-11-28T09:00:00+08:00"}}  # fmt: skip
    return write_jsonl(path, [header, *rows])


@pytest.fixture
def replica(redis_server: RedisServer, serve: Serve, tmp_path: Path) -> RunningServer:
    """basic_rows() loaded by ``shixin-check load``; one replica serving it."""
    done = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    return server


# --- deltas carry on from the last seq Redis holds --------------------------------


def test_after_a_snapshot_without_a_header_the_first_delta_sets_the_seq(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """As in directory mode: a headerless snapshot says nothing of where the feed's
    numbering stands, so its first delta may start at any seq; the next must follow."""
    url = redis_server.url
    assert load(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), url).returncode == 0
    fifth = write_jsonl(tmp_path / "d5.jsonl", [listing_zhao(5), delta(6, "DELIST", entry_id="E1")])
    done = load(fifth, url)
    assert done.returncode == 0, done.stderr
    assert last_seq(client) == 6
    far = write_jsonl(tmp_path / "d8.jsonl", [delta(8, "DELIST", entry_id="E2")])
    assert "seq 8 follows seq 6 (the last Redis holds): delta 7 is missing" in one_line(
        load(far, url)
    )
    assert last_seq(client) == 6


def test_a_delta_below_the_first_on_a_snapshot_without_a_header_is_refused(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """Delta 5 loaded first on a snapshot without a header set the numbering; delta 4,
    loaded after it, is no replay: skipped (exit 0), Zhao, whom it lists, would be
    ALLOW on every replica. It is refused whole, naming both seqs, for good."""
    url = redis_server.url
    assert load(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), url).returncode == 0
    fifth = write_jsonl(tmp_path / "d5.jsonl", [delta(5, "DELIST", entry_id="E1")])
    assert load(fifth, url).returncode == 0
    fourth = write_jsonl(tmp_path / "d4.jsonl", [listing_zhao(4)])
    refused = load(fourth, url)
    assert refused.returncode == 1
    assert one_line(refused) == (
        f"{fourth}: seq 4 comes before seq 5, the first delta applied on top of a snapshot "
        "without a header (s1.jsonl): its changes are not in the served list; nothing was "
        "applied (load a snapshot with a header that includes it, or the same snapshot again "
        "with --allow-rollback and then every delta in seq order)"
    )
    assert last_seq(client) == 5
    # a replay of seqs from the first on is still harmless, and the next delta follows
    again = load(fifth, url)
    assert again.returncode == 0 and "0 op(s) applied" in again.stdout, again.stderr
    sixth = write_jsonl(tmp_path / "d6.jsonl", [delta(5, "DELIST", entry_id="E1"),
                                                 delta(6, "DELIST", entry_id="E2")])  # fmt: skip
    done = load(sixth, url)
    assert done.returncode == 0 and "1 op(s) applied" in done.stdout, done.stderr
    assert "seq 4 comes before seq 5" in one_line(load(fourth, url))  # the first seq is kept
    assert last_seq(client) == 6

    # the feed's snapshot with a header holds it: delta 4 is then a replay
    rows = [r for r in basic_rows() if r["entry_id"] not in ("E1", "E2")]
    holding = snapshot_with_header(
        tmp_path / "s2.jsonl", 6, [*rows, person_entry("E8", ZHAO, "赵六")]
    )
    assert load(holding, url).returncode == 0
    done = load(fourth, url)
    assert done.returncode == 0 and "0 op(s) applied" in done.stdout, done.stderr


def test_a_delta_the_snapshot_without_a_header_holds_loads_as_a_no_op(
    redis_server: RedisServer, client: Client, serve: Serve, tmp_path: Path
) -> None:
    """The snapshot (no header) already holds delta 1: E1 is gone. Delta 1 (DELIST E1)
    changes nothing on it: it loads as a no-op (exit 0, it sets the numbering), never
    refused as ``no listed entry`` nor, once delta 2 is in, as below the first; loading
    either again (a job that loads the whole folder) stays harmless. Replicas serve it."""
    url = redis_server.url
    rows = [row for row in basic_rows() if row["entry_id"] != "E1"]
    assert load(write_jsonl(tmp_path / "s1.jsonl", rows), url).returncode == 0
    first = write_jsonl(tmp_path / "d1.jsonl", [delta(1, "DELIST", entry_id="E1")])
    done = load(first, url)
    assert done.returncode == 0 and "1 op(s) applied" in done.stdout, done.stderr
    second = write_jsonl(tmp_path / "d2.jsonl", [listing_zhao(2)])
    done = load(second, url)
    assert done.returncode == 0 and "1 op(s) applied" in done.stdout, done.stderr
    for again in (first, second, first):
        done = load(again, url)
        assert done.returncode == 0 and "0 op(s) applied" in done.stdout, done.stderr
    assert last_seq(client) == 2
    server = serve(None, redis=url, replica_id="r1")
    eventually(lambda: status(server).last_delta_seq == 2, "the replica serves seq 2")
    assert decision(server, ZHAO, "赵六").decision == pb.DENY
    assert decision(server, ZHANG, "张伟").decision == pb.ALLOW


def test_a_late_listing_redis_holds_is_skipped_whatever_release_masked_its_number(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """A version loaded by an earlier release holds masks this one makes otherwise (a
    15-character number: ``USA110*****0101``, now ``USA110******101``). A late LIST of
    that entry as the snapshot holds it, below the first delta on a snapshot without
    a header, was refused (the masks differed) where it had been skipped: the subject
    key stands for the number, so the mask is not compared."""
    card = person_entry("E9", "USA110079060101", "JOHN SMITH")
    card["subject"]["id_type"] = "FOREIGN_PERMANENT_RESIDENT"
    url = redis_server.url
    assert load(write_jsonl(tmp_path / "s1.jsonl", [*basic_rows(), card]), url).returncode == 0
    rewritten = 0  # as the earlier release masked it
    for name in client.scan_iter(match="shixin:*", count=1000):
        if client.type(name) != b"hash":
            continue
        for field, value in client.hgetall(name).items():
            if b'"USA110******101"' in value:
                client.hset(name, field, value.replace(b'"USA110******101"', b'"USA110*****0101"'))
                rewritten += 1
    assert rewritten == 1
    fifth = write_jsonl(tmp_path / "d5.jsonl", [delta(5, "SUSPEND", entry_id="E2")])
    assert load(fifth, url).returncode == 0
    fourth = write_jsonl(tmp_path / "d4.jsonl", [delta(4, "LIST", entry=card)])
    done = load(fourth, url)
    assert done.returncode == 0 and "0 op(s) applied" in done.stdout, done.stderr


def test_a_delta_below_the_first_whose_every_change_redis_holds_is_skipped_not_refused(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """Delta 9 loaded first on a snapshot without a header set the numbering. A delta
    below it whose every op Redis already shows (the snapshot held it) is skipped, exit
    0, each kind of op judged as in directory mode; one op it does not show refuses
    the file, exit 1, naming that op's seq."""
    exemption = {"channel": "AIRLINE", "from": "2026-01-01", "until": "2026-12-31"}
    other = {"channel": "RAIL", "from": "2026-01-01", "until": "2026-12-31"}
    li, acme = [row for row in basic_rows() if row["entry_id"] != "E1"]
    li = {**li, "status": "SUSPENDED", "exemptions": [exemption]}
    url = redis_server.url
    assert load(write_jsonl(tmp_path / "s1.jsonl", [li, acme]), url).returncode == 0
    assert load(write_jsonl(tmp_path / "d9.jsonl", [listing_zhao(9)]), url).returncode == 0
    held = write_jsonl(tmp_path / "d1.jsonl", [
        delta(1, "DELIST", entry_id="E1"),  # not held
        delta(2, "LIST", entry=acme),  # held just so, Wang (a related person) too
        delta(3, "SUSPEND", entry_id="E2"),
        delta(4, "EXEMPT", entry_id="E2", exemption=exemption),
        delta(5, "UNEXEMPT", entry_id="E2", exemption=other),
        delta(6, "LIST", entry=li),
        listing_zhao(7),  # as delta 9 listed it
    ])  # fmt: skip
    done = load(held, url)
    assert done.returncode == 0 and "0 op(s) applied" in done.stdout, done.stderr
    assert last_seq(client) == 9

    resumed = write_jsonl(tmp_path / "d7.jsonl", [delta(7, "DELIST", entry_id="E1"),
                                                  delta(8, "RESUME", entry_id="E2")])  # fmt: skip
    refused = load(resumed, url)
    assert refused.returncode == 1
    assert one_line(refused).startswith(
        f"{resumed}: seq 8 comes before seq 9, the first delta applied on top of a snapshot "
        "without a header (s1.jsonl): its changes are not in the served list; nothing was "
        "applied"
    )
    without_wang = write_jsonl(
        tmp_path / "d8.jsonl", [delta(8, "LIST", entry={**acme, "related_persons": []})]
    )
    assert "seq 8 comes before seq 9" in one_line(load(without_wang, url))
    assert last_seq(client) == 9


def test_a_delta_after_a_gap_is_refused_whole_naming_the_missing_seqs(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    url = redis_server.url
    assert load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), url).returncode == 0
    second = write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E1")])
    refused = load(second, url)
    assert refused.returncode == 1
    line = one_line(refused)
    assert line.startswith(f"{second}: seq 2 follows seq 0"), line
    assert "delta 1 is missing" in line and "nothing was applied" in line
    assert last_seq(client) == 0
    # the reviewer's order: the missing delta comes after; it applies, and the list is whole
    first = write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)])
    done = load(first, url)
    assert done.returncode == 0, done.stderr
    assert "1 op(s) applied" in done.stdout and "last seq 1" in done.stdout

    # a gap inside the file is refused whole too: seq 2 is not applied either
    holed = write_jsonl(tmp_path / "d24.jsonl", [delta(2, "DELIST", entry_id="E1"),
                                                  delta(4, "DELIST", entry_id="E2")])  # fmt: skip
    line = one_line(load(holed, url))
    assert "seq 4 follows seq 2 in this file: delta 3 is missing" in line, line
    assert last_seq(client) == 1
    far = write_jsonl(tmp_path / "d6.jsonl", [delta(6, "DELIST", entry_id="E2")])
    assert "seq 6 follows seq 1 (the last Redis holds): deltas 2 to 5 are missing" in one_line(
        load(far, url)
    )

    assert load(second, url).returncode == 0
    again = load(second, url)  # a replay: ops at or below the last seq are skipped
    assert again.returncode == 0, again.stderr
    assert "0 op(s) applied" in again.stdout and "last seq 2" in again.stdout
    replay_and_next = write_jsonl(tmp_path / "d23.jsonl", [delta(2, "DELIST", entry_id="E1"),
                                                           delta(3, "DELIST", entry_id="E2")])  # fmt: skip
    done = load(replay_and_next, url)
    assert done.returncode == 0, done.stderr
    assert "1 op(s) applied" in done.stdout and last_seq(client) == 3


def test_after_redis_lost_a_delta_the_next_is_refused_until_it_is_loaded_again(
    replica: RunningServer, redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """Redis restored from a save older than delta 1: the replica is NOT_SERVING, the
    feed's routine next delta must not bring it back without delta 1."""
    url = redis_server.url
    saved = [
        (key, max(client.pttl(key), 0), client.dump(key)) for key in client.scan_iter(count=1000)
    ]  # fmt: skip  (the older save)
    first = write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)])
    assert load(first, url).returncode == 0
    eventually(lambda: decision(replica, ZHAO).decision == pb.DENY, "delta 1 served")

    with client.pipeline(transaction=True) as restore:  # Redis back from the older save
        restore.flushall()
        for key, ttl, raw in saved:
            restore.restore(key, ttl, raw)
        restore.execute()
    eventually(lambda: "lost deltas" in status(replica).not_serving_reason, "loss noticed")
    eventually(lambda: health(replica) == "NOT_SERVING", "health NOT_SERVING")

    second = write_jsonl(tmp_path / "d2.jsonl", [delta(2, "DELIST", entry_id="E1")])
    refused = load(second, url)
    assert refused.returncode == 1
    assert "seq 2 follows seq 0 (the last Redis holds): delta 1 is missing" in one_line(refused)
    assert last_seq(client) == 0
    assert health(replica) == "NOT_SERVING"
    assert "lost deltas" in status(replica).not_serving_reason
    assert codes(decision(replica, ZHAO)) == UNAVAILABLE  # never ALLOW: delta 1 listed Zhao
    assert codes(decision(replica, ZHANG, "张伟")) == UNAVAILABLE

    done = load(first, url)  # the lost delta, loaded again: it applies, the replica is back
    assert done.returncode == 0, done.stderr
    assert "1 op(s) applied" in done.stdout
    eventually(lambda: health(replica) == "SERVING", "health SERVING again")
    assert status(replica).not_serving_reason == ""
    assert decision(replica, ZHAO).decision == pb.DENY
    assert load(second, url).returncode == 0  # and the next delta follows
    eventually(lambda: decision(replica, ZHANG, "张伟").decision == pb.ALLOW, "delta 2 served")
    after = status(replica)
    assert (after.last_delta_seq, after.lag_deltas) == (2, 0)


# --- a snapshot must not undo applied deltas unless asked -------------------------


def test_a_snapshot_that_would_undo_applied_deltas_is_refused_unless_asked(
    replica: RunningServer, redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    url, keys = redis_server.url, RedisKeys()
    assert load(write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)]), url).returncode == 0
    eventually(lambda: decision(replica, ZHAO).decision == pb.DENY, "delta 1 served")
    served = client.get(keys.current)

    older = snapshot_with_header(tmp_path / "s0.jsonl", 0, basic_rows())
    refused = load(older, url)
    assert refused.returncode == 1
    line = one_line(refused)
    assert line.startswith(f"{older}: the snapshot includes deltas up to seq 0 but seq 1 is "
                           "applied"), line  # fmt: skip
    assert "--allow-rollback" in line
    assert client.get(keys.current) == served and client.smembers(keys.versions) == {served}
    assert decision(replica, ZHAO).decision == pb.DENY

    # a snapshot holding delta 1 is no rollback
    zhao = person_entry("E8", ZHAO, "赵六")
    holding = snapshot_with_header(tmp_path / "s1.jsonl", 1, [*basic_rows(), zhao])
    done = load(holding, url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: client.get(keys.current) != served, "the new version current")
    assert decision(replica, ZHAO).decision == pb.DENY

    done = load(older, url, "--allow-rollback")  # on purpose
    assert done.returncode == 0, done.stderr
    eventually(lambda: decision(replica, ZHAO).decision == pb.ALLOW, "rolled back")
    assert last_seq(client) == 0


# --- a load again waits for a Redis replica again --------------------------------


def test_a_load_again_waits_for_a_redis_replica_again(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    copy = RedisServer(tmp_path / "replica")
    copy.folder.mkdir()
    copy.start()
    try:
        with connect(copy.url, timeout=5) as replica_client:
            replica_client.replicaof("127.0.0.1", redis_server.port)
            eventually(lambda: replica_client.info("replication")["master_link_status"] == "up",
                       "the Redis replica in sync")  # fmt: skip
        url = redis_server.url
        first = snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows())
        assert load(first, url).returncode == 0
        change = write_jsonl(tmp_path / "d1.jsonl", [delta(1, "DELIST", entry_id="E1")])
        assert copy.proc is not None
        copy.proc.send_signal(signal.SIGSTOP)  # connected, but acknowledging nothing
        try:
            stalled = load(change, url)
            assert stalled.returncode == 2
            assert "no Redis replica acknowledged it" in one_line(stalled)
            again = load(change, url)  # applies nothing, but the replica still has not got it
            assert again.returncode == 2, again.stdout
            assert "no Redis replica acknowledged it" in one_line(again)
        finally:
            copy.proc.send_signal(signal.SIGCONT)
        done = load(change, url)
        assert done.returncode == 0, done.stderr
        assert "0 op(s) applied" in done.stdout and "last seq 1" in done.stdout
    finally:
        copy.stop()


# --- status of a replica that never loaded -----------------------------------------

PASSWORD = "tests-only-redis-password"


@pytest.mark.parametrize("how", ["unreachable", "no password", "wrong password"])
def test_status_says_why_a_replica_that_never_loaded_is_not_serving(
    how: str, redis_server: RedisServer, client: Client, serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url = redis_server.url
    if how == "unreachable":
        redis_server.stop()
    else:
        client.config_set("requirepass", PASSWORD)
        if how == "wrong password":
            url = url.replace("redis://", "redis://:wrong-one@")
    server = serve(None, redis=url, replica_id="r1")
    eventually(lambda: status(server).not_serving_reason != "", "the reason given")
    eventually(lambda: health(server) == "NOT_SERVING", "health NOT_SERVING")
    assert not status(server).serving
    shown = cli("status", "--target", server.address)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first.startswith("NOT_SERVING: no version loaded from Redis yet: "), shown.stdout
    assert "wrong-one" not in shown.stdout + shown.stderr
    as_json = cli("status", "--target", server.address, "--json")
    assert as_json.returncode == 1 and "no version loaded from Redis yet" in as_json.stdout


def test_status_of_a_serving_replica_exits_0(replica: RunningServer) -> None:
    shown = cli("status", "--target", replica.address)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "NOT_SERVING" not in shown.stdout


# --- what a refused load prints -----------------------------------------------------


def test_a_password_in_the_redis_url_is_never_printed(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    client.config_set("requirepass", PASSWORD)  # so the URL's password is refused
    url = redis_server.url.replace("redis://", "redis://:nope-not-shown@")
    path = snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows())
    for done in (load(path, url), cli("status", "--redis", url)):
        warned, line = done.stderr.strip().splitlines()  # given on the command line: warned
        assert "warning: the password in --redis is shown to every user" in warned, warned
        assert done.returncode == 2
        assert "nope-not-shown" not in done.stdout + done.stderr
        assert f"cannot use Redis at redis://***@127.0.0.1:{redis_server.port}/0" in line, line


def test_a_load_refused_for_the_lock_says_when_it_lapses(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """As after a load killed with SIGKILL: its lock is left, with its 10 s timeout."""
    client.set(RedisKeys().lock, "load dead-host:1 0123abcd", px=10_000)
    refused = load(snapshot_with_header(tmp_path / "s1.jsonl", 0, basic_rows()), redis_server.url)
    assert refused.returncode == 2
    line = one_line(refused)
    assert "another load holds shixin:lock (load dead-host:1 0123abcd)" in line, line
    lapses = re.search(
        r"; if that load is dead, its lock lapses within (\d+) s; try again later$", line
    )
    assert lapses is not None, line
    assert 1 <= int(lapses[1]) <= 10


# --- Redis flushed and its snapshot loaded again without the deltas ---------------


def test_a_snapshot_loaded_again_after_a_flush_does_not_undo_the_deltas_replicas_applied(
    replica: RunningServer, redis_server: RedisServer, client: Client, serve: Serve,
    tmp_path: Path,
) -> None:  # fmt: skip
    """FLUSHALL, then ``load`` of the same snapshot alone (the README's recovery, its
    deltas not yet loaded again): Redis no longer knows delta 1, so the load cannot
    refuse it; the replica that applied it, and one started after, say Redis lost it
    and answer by the fail policy (Zhao, listed by delta 1, was ALLOW NOT_LISTED with
    health SERVING), until delta 1 is loaded again. ``--allow-rollback`` goes back."""
    url = redis_server.url
    first = write_jsonl(tmp_path / "d1.jsonl", [listing_zhao(1)])
    assert load(first, url).returncode == 0
    eventually(lambda: decision(replica, ZHAO).decision == pb.DENY, "delta 1 served")

    client.flushall()
    # the replica fixture's snapshot, copied (as downloaded again): another version name
    (tmp_path / "again").mkdir()
    snapshot = Path(shutil.copy(tmp_path / "s1.jsonl", tmp_path / "again" / "s1.jsonl"))
    done = load(snapshot, url)
    assert done.returncode == 0, done.stderr
    eventually(lambda: "lost deltas" in status(replica).not_serving_reason, "loss noticed")
    reason = status(replica).not_serving_reason
    assert "up to seq 0, but this server applied up to seq 1: taking it would undo delta 1" in (
        reason
    ), reason
    assert health(replica) == "NOT_SERVING"
    assert codes(decision(replica, ZHAO)) == UNAVAILABLE  # never ALLOW: delta 1 listed Zhao

    later = serve(None, redis=url, replica_id="r2")  # knows nothing of delta 1 itself
    eventually(lambda: "lost deltas" in status(later).not_serving_reason, "told by r1's record")
    told = status(later).not_serving_reason
    assert "but replica r1 applied up to seq 1" in told and "of an earlier load of it" in told, told
    try:  # by the fail policy once it took the version; refused if it never had one
        assert codes(decision(later, ZHAO)) == UNAVAILABLE
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc

    assert load(first, url).returncode == 0  # the delta, loaded again: both serve it
    for server in (replica, later):
        eventually(lambda s=server: health(s) == "SERVING", "SERVING again")
        assert decision(server, ZHAO).decision == pb.DENY

    client.flushall()  # and going back on purpose is still possible
    done = load(snapshot, url, "--allow-rollback")
    assert done.returncode == 0, done.stderr
    for server in (replica, later):
        eventually(lambda s=server: decision(s, ZHAO).decision == pb.ALLOW, "rolled back")
        eventually(lambda s=server: health(s) == "SERVING", "SERVING after the rollback")
