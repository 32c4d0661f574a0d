"""Redis there, and refusing this server: a Redis user without a right a replica needs
(an ACL), or a password Redis no longer takes (rotated). Before, each was taken for
Redis unreachable: health SERVING while a load through another user went on unseen
(a person listed by it ALLOW NOT_LISTED), the cause logged every round, or never. A
user without INFO left the replica blind to evictions, with health SERVING. And a
password given as a URL query parameter was printed as it was.
Real redis-servers (the fixtures'), with ACL users made in them; followers in their
own threads, as a server runs them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import IndexUnavailable
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import (
    Client,
    HeldLock,
    RedisFollower,
    RedisKeys,
    connect,
    masked_url,
    url_has_password,
)
from shixin_check.loader.publish_redis import publish_snapshot
from shixin_check.server.hitlog import HitLog
from shixin_check.server.hitsink import HitForwarder, hits_stream, read_stream
from tests.accessdata import Serve
from tests.conftest import SECRET, RedisServer
from tests.listdata import ZHANG
from tests.processes import ServeProcess
from tests.test_hit_stream import _hit
from tests.test_redis_failures import decision, health, key_of
from tests.test_redis_loaded_again import snapshot
from tests.test_redis_replicas import load_cli
from tests.waiting import eventually

pytestmark = pytest.mark.redis

#: what a replica of these tests may do but the one right each test takes away
RIGHTS = ("~shixin:*", "&shixin:*", "+@all")


def user(client: Client, name: str, *rights: str) -> None:
    client.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw-1", *RIGHTS, *rights)


def started(url: str, keyer: SubjectKeyer, said: list[tuple[str, str]]) -> RedisFollower:
    replica = RedisFollower(url, keyer, replica_id="r1", on_event=lambda *e: said.append(e))
    replica.start()
    return replica


def url_of(redis_server: RedisServer, name: str, password: str = "pw-1") -> str:
    return f"redis://{name}:{password}@127.0.0.1:{redis_server.port}/0"


def test_a_replica_refused_a_command_it_needs_is_not_serving_and_says_so_once(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower", "-xread")
    said: list[tuple[str, str]] = []
    replica = started(url_of(redis_server, "follower"), keyer, said)
    try:
        eventually(lambda: "refuses this server a command it needs" in replica.health_problem(),
                   "health names the refusal")  # fmt: skip
        assert "xread" in replica.health_problem()

        def recorded() -> str:  # its record, which status --redis reads
            raw = client.hget(RedisKeys().replicas, "r1")
            return str(json.loads(raw).get("problem", "")) if raw else ""

        eventually(lambda: "refuses this server a command" in recorded(), "in its record")
        time.sleep(2.5)  # rounds go on: the cause is said once, never as "unreachable"
        assert [what for what, _ in said].count("denied") == 1, said
        assert "redis-down" not in [what for what, _ in said], said
        user(client, "follower")  # the right given back
        eventually(lambda: replica.health_problem() == "", "health clears by itself")
        assert ("denied-over", "") in said
    finally:
        replica.stop()


@pytest.mark.parametrize("refusal", ["command", "password", "-exec", "-multi"])
def test_a_server_refused_at_start_says_so_in_one_line_before_health(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, refusal: str,
) -> None:  # fmt: skip
    """One refusal at a server's start was three ERROR lines: the start's own round
    ("this user has no permissions ... (retrying in the background)"), the follower's
    full line, then health's."""
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower", refusal if refusal.startswith("-") else "-xread")
    monkeypatch.setenv("SHIXIN_KEY_SECRET", SECRET.decode())
    url = url_of(redis_server, "follower", "pw-0" if refusal == "password" else "pw-1")
    server = ServeProcess("--redis", url, log=tmp_path / "serve.log")
    try:
        eventually(lambda: "health: NOT_SERVING" in server.output(), "health's line")
        eventually(lambda: " ERROR redis: " in server.output(), "the refusal's line")
        time.sleep(1.5)  # the next rounds say nothing more
        errors = [line for line in server.output().splitlines() if " ERROR " in line]
        assert len(errors) == 2, errors
        said = "password or user" if refusal == "password" else "a command it needs"
        refused = f"Redis at redis://***@127.0.0.1:{redis_server.port}/0 refuses this server"
        (health_line,) = [line for line in errors if " ERROR health: NOT_SERVING: " in line]
        (redis_line,) = [line for line in errors if " ERROR redis: " in line]
        for line in (health_line, redis_line):  # each names what refuses, and what
            assert refused in line and said in line, line
    finally:
        server.stop()


def test_a_replica_whose_password_redis_no_longer_takes_is_not_serving(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower")
    said: list[tuple[str, str]] = []
    replica = started(url_of(redis_server, "follower"), keyer, said)
    try:
        eventually(lambda: replica.current() is not None, "serving")
        assert replica.health_problem() == ""
        client.execute_command("ACL", "SETUSER", "follower", "resetpass", ">pw-2")
        client.execute_command("CLIENT", "KILL", "USER", "follower")
        eventually(lambda: "refuses this server's password" in replica.health_problem(),
                   "health names the password")  # fmt: skip
        assert [what for what, _ in said].count("denied") == 1, said
        assert "pw-1" not in replica.health_problem()
        client.execute_command("ACL", "SETUSER", "follower", ">pw-1")  # both taken now
        eventually(lambda: replica.health_problem() == "", "health clears by itself")
    finally:
        replica.stop()


def test_a_replica_refused_info_trusts_no_look_up_to_redis(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """``+@all -@dangerous`` takes INFO away: Redis could evict the list's keys unseen."""
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower", "-@dangerous")
    replica = started(url_of(redis_server, "follower"), keyer, [])
    try:
        eventually(lambda: "refuses INFO" in replica.health_problem(), "health names INFO")
        view = replica.current()
        assert view is not None
        with pytest.raises(IndexUnavailable, match="refuses INFO"):
            view.look_up(key_of(keyer, ZHANG))
    finally:
        replica.stop()


def test_a_replica_refused_its_look_ups_is_not_serving_until_they_work(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    """A user without HGET: every listed person got the fail policy, health SERVING, no
    line logged."""
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower", "-hget")
    replica = started(url_of(redis_server, "follower"), keyer, [])
    try:
        eventually(lambda: replica.current() is not None, "serving")
        view = replica.current()
        assert view is not None
        with pytest.raises(IndexUnavailable, match="hget") as refused:
            view.look_up(key_of(keyer, ZHANG))
        assert "refuses this server's look-ups" in replica.health_problem()
        for said in (str(refused.value), replica.health_problem()):  # not the keys asked
            assert "Command #" not in said and "HGET shixin:" not in said, said
        user(client, "follower")
        eventually(lambda: replica.health_problem() == "", "health clears by itself")
        assert view.look_up(key_of(keyer, ZHANG))
    finally:
        replica.stop()


@pytest.mark.parametrize("refusal", ["password", "-hget"])
def test_a_serving_replica_refused_mid_run_is_not_serving_through_its_health_service(
    redis_server: RedisServer, client: Client, keyer: SubjectKeyer, serve: Serve,
    tmp_path: Path, refusal: str,
) -> None:  # fmt: skip
    """The tests above read the follower's ``health_problem``; this asks a real
    server's gRPC health, the probe a load balancer makes: SERVING while Redis takes
    the replica's password and look-ups, NOT_SERVING once it refuses either mid-run
    (a rotated password, HGET taken away), never an ALLOW for the listed person
    meanwhile, and SERVING again once the right is back."""
    publish_snapshot(client, snapshot(tmp_path, "s1.jsonl"), keyer)
    user(client, "follower")
    server = serve(None, redis=url_of(redis_server, "follower"), replica_id="r1")
    eventually(lambda: decision(server, ZHANG, "张伟").decision == pb.DENY, "list served")
    assert health(server) == "SERVING"
    if refusal == "password":
        client.execute_command("ACL", "SETUSER", "follower", "resetpass", ">pw-2")
        client.execute_command("CLIENT", "KILL", "USER", "follower")
    else:
        user(client, "follower", "-hget")
    # a look-up meets the refusal (or the follower's next round does)
    answer = decision(server, ZHANG, "张伟")
    assert answer.decision != pb.ALLOW, answer
    eventually(lambda: health(server) == "NOT_SERVING", "health NOT_SERVING")
    assert decision(server, ZHANG, "张伟").decision != pb.ALLOW
    if refusal == "password":
        client.execute_command("ACL", "SETUSER", "follower", ">pw-1")
    else:
        user(client, "follower")
    eventually(lambda: health(server) == "SERVING" and decision(server, ZHANG, "张伟").decision
               == pb.DENY, "SERVING again")  # fmt: skip


def test_a_password_given_as_a_query_parameter_is_masked() -> None:
    shown = masked_url("redis://127.0.0.1:6390/0?username=qp&password=s3cret&db=1")
    assert "s3cret" not in shown
    assert shown == "redis://127.0.0.1:6390/0?username=qp&password=***&db=1"
    assert masked_url("redis://u:p@h:1/0") == "redis://***@h:1/0"
    # redis-py reads a parameter's name %-decoded: pass%77ord is a password too
    encoded = "redis://h:1/0?pass%77ord=s3cret&sentinel%5Fpassword=s3cret2&db=1"
    assert redis.connection.parse_url(encoded)["password"] == "s3cret"
    assert masked_url(encoded) == "redis://h:1/0?pass%77ord=***&sentinel%5Fpassword=***&db=1"
    assert url_has_password(encoded)
    # and warned of on the command line, as a USER:PASSWORD@ one is
    assert url_has_password("redis://h:1/0?password=s3cret")
    assert url_has_password("redis://u:p@h:1/0")
    assert not url_has_password("redis://u@h:1/0")
    assert not url_has_password("redis://h:1/0?username=u")


def test_a_lock_needs_no_script(redis_server: RedisServer, client: Client) -> None:
    """The lock of ``load`` (and of a server's garbage collection) was renewed and
    released by redis-py's scripts: a user without EVALSHA lost it after 10 s (a long
    load failed, ``lost shixin:lock before the commit``) or left it held 10 s after
    each use (the next load refused: ``another load holds shixin:lock``). WATCH and
    MULTI now, which every user that may write has."""
    user(client, "loader", "-@scripting")
    loader = connect(url_of(redis_server, "loader"), timeout=5)
    lock = HeldLock(loader, RedisKeys(), "load", timeout=0.6)
    try:
        assert lock.acquire()
        time.sleep(1.5)  # renewed every 0.2 s, past its 0.6 s
        lock.commit(lambda pipe: pipe.set("shixin:x", b"1"))
    finally:
        lock.release()
        loader.close()
    assert client.get("shixin:x") == b"1"
    assert client.get(RedisKeys().lock) is None  # released, not left to lapse


def test_a_load_whose_lock_renewal_is_refused_says_why_it_lost_the_lock(
    redis_server: RedisServer, client: Client
) -> None:
    """A renewal Redis refuses (an ACL) was taken for a blip: the lost lock's line
    named neither."""
    user(client, "loader", "-pexpire")
    loader = connect(url_of(redis_server, "loader"), timeout=5)
    lock = HeldLock(loader, RedisKeys(), "load", timeout=0.6)
    try:
        assert lock.acquire()
        time.sleep(1.5)  # renewals at 0.2 s are refused; the lock lapses at 0.6 s
        with pytest.raises(IndexUnavailable) as lost:
            lock.commit(lambda pipe: pipe.set("shixin:x", b"1"))
    finally:
        lock.release()
        loader.close()
    assert "its renewal refused" in str(lost.value) and "pexpire" in str(lost.value), lost.value
    assert client.get("shixin:x") is None


def test_hits_a_user_may_not_add_wait_and_are_forwarded_once_it_may(
    redis_server: RedisServer, client: Client, tmp_path: Path
) -> None:
    """The forwarding script claimed a hit in the seen-set before adding it to the
    stream: a user without XADD had the claim taken and the XADD refused, so the retry
    found the hit claimed and skipped it for good (the quarter's report short of it)."""
    client.execute_command("ACL", "SETUSER", "forwarder", "reset", "on", ">pw-1", *RIGHTS,
                           "-xadd")  # fmt: skip
    path = tmp_path / "hits.log"
    log = HitLog(path)
    forwarding = connect(url_of(redis_server, "forwarder"), timeout=2)
    forwarder = HitForwarder(forwarding, path)
    try:
        for n in (1, 2):
            _hit(log, n)
        with pytest.raises(redis.RedisError, match="can.t run this command"):
            forwarder.forward_once()
        client.execute_command("ACL", "SETUSER", "forwarder", "+xadd")
        assert forwarder.forward_once() == 2
        assert [r["check_id"] for r in read_stream(client)] == ["check-1", "check-2"]
        forwarder.cursor_path.unlink()  # read again from the start: none added twice
        assert forwarder.forward_once() == 0
    finally:
        log.close()
        forwarding.close()


@pytest.mark.parametrize("taken", ["-exec", "-multi"])
def test_a_load_whose_transaction_is_refused_says_so_and_leaves_no_lock(
    redis_server: RedisServer, client: Client, tmp_path: Path, taken: str
) -> None:
    """A loading user without EXEC (or MULTI) was told only `cannot use Redis at ...:
    Transaction discarded ...` (or `EXEC without MULTI`, naming nothing refused), and the
    lock it left held 10 s refused the next load (`another load holds shixin:lock`)."""
    user(client, "loader", taken)
    done = load_cli(snapshot(tmp_path, "s1.jsonl"), url_of(redis_server, "loader"))
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]  # after the warning of a password in argv
    assert line.startswith(
        f"shixin-check load: Redis at redis://***@127.0.0.1:"
        f"{redis_server.port}/0 refuses this user a command it needs ("
    ), line
    assert ("'exec'" if taken == "-exec" else "MULTI refused") in line, line
    assert "(Redis users and rights)" in line and "pw-1" not in line, line
    assert client.get(RedisKeys().lock) is None
    user(client, "loader")  # given back: the next load goes in at once
    again = load_cli(snapshot(tmp_path, "s2.jsonl"), url_of(redis_server, "loader"))
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize("taken", ["-watch", "-exec", "-multi"])
def test_a_lock_taken_by_a_user_without_watch_is_released_by_its_script(
    redis_server: RedisServer, client: Client, taken: str
) -> None:
    """A server's user with scripting and no WATCH (or no EXEC, no MULTI: a load whose
    transaction was refused): its lock was left to lapse (10 s), and the next load
    refused (``another load holds ...``)."""
    user(client, "server", taken)
    server = connect(url_of(redis_server, "server"), timeout=5)
    lock = HeldLock(server, RedisKeys(), "gc", timeout=0.6)
    try:
        assert lock.acquire()
        time.sleep(1.0)  # renewed by the script, past its 0.6 s
        assert client.get(RedisKeys().lock) is not None
    finally:
        lock.release()
        server.close()
    assert client.get(RedisKeys().lock) is None


@pytest.mark.parametrize("taken", ["-sadd", "-expire"])
def test_hits_a_user_may_not_claim_are_neither_lost_nor_added_again_and_again(
    redis_server: RedisServer, client: Client, tmp_path: Path, taken: str
) -> None:
    """The claim after the XADD: a user without SADD had each waiting hit added to the
    stream again at every retry (Redis filling up); without EXPIRE, each batch was
    added, then said refused and 'works again', its seen-set kept for good. Each
    refusal now leaves nothing written."""
    user(client, "forwarder", taken)
    path = tmp_path / "hits.log"
    log = HitLog(path)
    forwarding = connect(url_of(redis_server, "forwarder"), timeout=2)
    forwarder = HitForwarder(forwarding, path)
    stream = hits_stream("shixin")
    try:
        for n in (1, 2):
            _hit(log, n)
        for _ in range(3):  # retries
            with pytest.raises(redis.RedisError):
                forwarder.forward_once()
        assert client.xlen(stream) == 0
        user(client, "forwarder")
        assert forwarder.forward_once() == 2
        assert [r["check_id"] for r in read_stream(client)] == ["check-1", "check-2"]
        assert client.ttl("shixin:hits:seen:" + next(iter(seen_sets(client)))) > 0
    finally:
        log.close()
        forwarding.close()


def seen_sets(client: Client) -> list[str]:
    return [k.decode().rpartition(":")[2] for k in client.scan_iter("shixin:hits:seen:*")]
