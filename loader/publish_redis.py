"""Publishing list files to Redis: snapshots as new versions, deltas on top.

The loader's side of ``loader.index_redis`` (which describes the layout).
A file is validated whole before anything is written: a snapshot with the
memory loader's own ``build_snapshot``, a delta against the current version
in Redis. Which delta ops apply is ``loader.feed.pending``, the rule every
path shares, and a version's feed time comes from the data
(``delta_source_time``), never from a file's mtime.

Everything that writes or deletes versions holds ``P:lock``
(``index_redis.HeldLock``: redis-py's ``Lock``, 10 s timeout, renewed by a
thread while the process lives), so one load runs at a time and a load
killed by SIGKILL blocks the next one for at most those 10 s. A refused load
says who holds the lock. What a snapshot load does, in order:

1. collect garbage: versions past their grace go before a new one takes room;
2. register the version in ``P:versions`` with meta ``state=writing`` and a
   fresh random ``load_token``, before its first key;
3. write its keys, checking between batches that the lock is still ours;
4. write the Bloom filter and the full meta (``state=ready``);
5. make it current in one MULTI/EXEC that runs only if the lock is still
   ours (WATCH on the lock key): a loader that lost its lock makes nothing
   current;
6. collect garbage again, still holding the lock: the version just replaced
   is stamped retired and kept ``index_redis.RETIRED_GRACE_SECONDS``.

Garbage collection is safe because it only runs under the lock: while a
load holds it no one else writes a version, so any version that is neither
current nor served by a live replica is old or was left by a killed load
(step 2 made sure it is listed), whatever its ``state`` says; replicas
collect only when they get the lock at once. Whether a replica is live, and
how long ago a version stopped being current, are judged by Redis's clock
(``TIME``), never the loader's. A load that fails while still
holding the lock deletes its half-written version itself. A delta's
changes, its stream records and the new last seq go in one MULTI/EXEC, so a
killed delta load leaves nothing at all.

Seqs carry on from the last one Redis holds (``OutOfSequence`` otherwise, one
line, nothing written): a delta's new seqs must follow it with none missing,
since a later seq applied first would make the missing one a replay, skipped
for good; and a snapshot whose ``includes_seq`` is below it would undo applied
deltas, so it is refused unless the operator asks for that (``allow_rollback``).
On a snapshot without a header the first delta may start at any seq; that seq
is kept (meta ``first_seq``) and a delta below it, loaded later, is refused the
same way: it would read as a replay. Such a snapshot may hold deltas loaded
again on it, so there an op whose change Redis already holds is a no-op, and a
delta below ``first_seq`` all of whose changes it holds is skipped, not refused
(the rule of directory mode).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import multiprocessing
import os
import re
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis
from redis.sentinel import SentinelConnectionPool

from shixin_check.domain.errors import ConfigurationError, IndexUnavailable, LoadRejected, RowError
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import NO_END, EntryStatus, ListEntry, Role
from shixin_check.loader.columns import compiled
from shixin_check.loader.feed import (
    SnapshotHeader,
    before_first_problem,
    gap_problem,
    missing_deltas,
    pending,
    read_header,
)
from shixin_check.loader.index_memory import (
    _COLUMNS,
    _MASK_WIDTH,
    MemoryView,
    entry_id_hash,
    matches_of,
    own_exemptions,
)
from shixin_check.loader.index_redis import (
    CURRENT_AT_FIELD,
    EVICTED_FIELD,
    EXEMPTIONS_FORMAT,
    FORMAT,
    LOCK_SECONDS,
    ROLLBACK_FIELD,
    Client,
    EvictionWatch,
    HeldLock,
    RedisKeys,
    bucket_bits,
    bucket_of,
    check_fingerprint,
    collect_garbage,
    counts_json,
    delete_version,
    encode_match,
    evicted_problem,
    eviction_problem,
    expiries_json,
    flag_evicted,
    format_of,
    info_of,
    old_format_problem,
    read_meta,
    redis_time,
    stream_problem,
)
from shixin_check.loader.index_redis import published_at as _published_at
from shixin_check.loader.index_redis import utc as _utc
from shixin_check.loader.listfile import (
    EXEMPTION_NAMES_NO_ONE,
    EXEMPTION_NAMES_ORGANISATION,
    EXEMPTION_NEEDS_PERSON,
    DeltaKind,
    DeltaOp,
    read_delta,
)
from shixin_check.loader.versions import Progress, build_snapshot, delta_source_time

#: How long a load waits for the lock before it is refused: long enough to ride
#: out a replica's garbage collection, short enough to answer an operator.
LOCK_WAIT_SECONDS = 3.0
_DEBTOR = int(Role.DEBTOR)


def _take_lock(client: Client, keys: RedisKeys) -> HeldLock:
    """The load lock, or ``ConfigurationError`` saying who holds it."""
    lock = HeldLock(client, keys, "load")
    if not lock.acquire(wait=LOCK_WAIT_SECONDS):
        holder = lock.holder() or "a holder that just let go"
        left = client.pttl(keys.lock)  # ms; a live holder renews it to LOCK_SECONDS
        within = math.ceil(left / 1000) if left > 0 else math.ceil(LOCK_SECONDS)
        raise ConfigurationError(
            f"another load holds {keys.lock} ({holder}); if that load is dead, its lock "
            f"lapses within {within} s; try again later"
        )
    return lock


class OutOfSequence(LoadRejected):
    """A file that does not carry on from what Redis holds: a delta after a gap in
    the seqs, or a snapshot that would undo applied deltas. One line, nothing written."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, [RowError(0, "", problem)])
        self.args = (f"{source}: {problem}",)


def _refuse_eviction(client: Client, keys: RedisKeys) -> None:
    """``ConfigurationError`` for a Redis that may evict the list's keys: replicas would
    read an evicted subject as not listed (``index_redis.eviction_problem``). One that
    has evicted keys already (``index_redis.EvictionWatch``) may have evicted the
    current version's: that version is flagged (meta ``evicted``), never served again."""
    info = info_of(client)
    problem = eviction_problem(info)
    if not problem:
        return
    evidence = EvictionWatch().seen(info)
    current = client.get(keys.current)
    if evidence and current is not None:
        version = current.decode()
        try:
            flag_evicted(client, keys, version, evicted_problem(version, evidence))
            problem += f"; {evidence}: version {version} is not served again"
        except redis.ResponseError:
            pass  # refused (an ACL, a read-only replica): the load is refused all the same
    raise ConfigurationError(f"nothing was loaded: {problem}")


def _refuse_broken(meta: dict[str, bytes], client: Client, keys: RedisKeys, version: str) -> None:
    """``ConfigurationError`` for a delta on a version no replica should serve: one whose
    keys may have been evicted (meta ``evicted``), or whose delta stream lost records
    (``index_redis.stream_problem``: trimmed). Replicas that had not read them cannot
    tell whom they listed, and an applied seq can no longer be compared with a file's
    (``_refuse_rewritten``): a delta rewritten under it would load as a replay."""
    if EVICTED_FIELD in meta:
        raise ConfigurationError(
            f"nothing was loaded: {meta[EVICTED_FIELD].decode(errors='replace')}"
        )
    lost = stream_problem(client, keys, version, meta)
    if lost:
        raise ConfigurationError(
            f"nothing was loaded: {lost}: a replica started now cannot tell whom those "
            "deltas listed, so none serves this version, and an applied seq cannot be "
            "told from a delta rewritten under it; load a snapshot that includes seq "
            f"{int(meta.get('last_seq', b'0'))} (or the last snapshot again with "
            "--allow-rollback, then every delta after it in seq order), and never trim a "
            "version's delta stream"
        )


@contextmanager
def _out_of_memory_said(client: Client) -> Iterator[None]:
    """A write Redis refused for want of memory, said in one line (``_out_of_memory``)."""
    try:
        yield
    except redis.ResponseError as exc:
        said = _out_of_memory(client, exc)
        if said is None:
            raise
        raise said from None


def _out_of_memory(client: Client, exc: redis.ResponseError) -> IndexUnavailable | None:
    """What to say of a write Redis refused for its ``maxmemory`` (None for another
    refusal): redis-py's own message names the command, with a binary hash key."""
    if not isinstance(exc, redis.exceptions.OutOfMemoryError) and "OOM" not in str(exc):
        return None
    try:
        memory = client.info("memory")
        limit = f"maxmemory {memory.get('maxmemory_human', memory.get('maxmemory'))}"
    except redis.RedisError:
        limit = "its maxmemory"
    return IndexUnavailable(
        f"Redis is out of memory ({limit}): it refused the load's writes, and nothing new "
        "was made current (what the load wrote is deleted); raise maxmemory or free memory "
        "in Redis (the version a load replaced is kept 5 minutes after that load, and one "
        "a stopped replica still reports until 15 s after its last heartbeat: each is freed "
        "by the next load after that), then load again"
    )


def _refuse_other_secret(
    client: Client, keys: RedisKeys, keyer: SubjectKeyer, new_key_secret: bool
) -> None:
    """``ConfigurationError`` for a snapshot built with another key secret than the
    current version's, unless ``new_key_secret`` says it is changed on purpose: no
    replica could read it, and every one would keep serving the old version."""
    current = client.get(keys.current)
    if current is None or new_key_secret:
        return
    theirs = (client.hget(keys.meta(current.decode()), "fingerprint") or b"").decode()
    if theirs and theirs != keyer.fingerprint:
        raise ConfigurationError(
            f"nothing was loaded: the current version {current.decode()} was built with "
            f"another key secret (fingerprint {theirs}, this load's {keyer.fingerprint}), and "
            "replicas refuse a version built with a secret not theirs: load with the secret "
            "the replicas use, or give --new-key-secret to change it on purpose (then "
            "restart every replica with the new secret)"
        )


def older_of(client: Client, path: Path, keys: RedisKeys) -> str:
    """What loading the snapshot at ``path`` would replace with an older list, or "":
    ``version V (published T)``, when its header's ``published_at`` is before that of
    the current version's snapshot, or it has none while the current one has (an old
    export copied in under a new name may be older: directory mode refuses it alike)."""
    current = client.get(keys.current)
    if current is None:
        return ""
    held = _published_at(read_meta(client, keys, current.decode()))
    try:
        published = read_header(path).published_at
    except LoadRejected:  # a header that does not read: validation reports it, line and field
        return ""
    if held is None or published is not None and published >= held:
        return ""
    return f"version {current.decode()} (published {_utc(held)})"


def _refuse_older(client: Client, path: Path, keys: RedisKeys) -> None:
    """``OutOfSequence`` for a snapshot ``older_of`` names a newer current version for:
    with the same ``includes_seq`` it still lacks what the newer one listed."""
    newer = older_of(client, path, keys)
    if not newer:
        return
    published = _header(path).published_at
    if published is None:
        header = (f"a sidecar {path.name}.meta.json holding the feed's header"
                  if path.suffix.lower() == ".csv" else "the feed's header row")  # fmt: skip
        raise OutOfSequence(
            str(path),
            f"the snapshot does not say when it was published (no header row, or one "
            f"without published_at), while the current {newer} does: it may be an older "
            f"list; give it {header}, or give --allow-rollback to load it on purpose",
        )
    raise OutOfSequence(
        str(path),
        f"the snapshot was published at {_utc(published)}, before the current "
        f"{newer}: loading it would replace a newer list with an older one; load a "
        "newer snapshot, or give --allow-rollback to go back on purpose",
    )


def _applied_seq(client: Client, keys: RedisKeys) -> int:
    """The last delta seq of Redis's current version (0 when it holds none)."""
    current = client.get(keys.current)
    if current is None:
        return 0
    return int(client.hget(keys.meta(current.decode()), "last_seq") or 0)


def _header(path: Path) -> SnapshotHeader:
    """The header of the snapshot at ``path`` (none, for one that does not read:
    ``build_snapshot`` reports it, beside every other bad row)."""
    try:
        return read_header(path)
    except LoadRejected:
        return SnapshotHeader()


def snapshot_published_at(path: Path) -> float | None:
    """The ``published_at`` of the snapshot at ``path`` (None: undated, or unreadable)."""
    return _header(path).published_at


def _undone(includes_seq: int, applied: int) -> str:
    """The deltas a snapshot holding those up to ``includes_seq`` would undo where Redis
    has applied up to ``applied`` (``deltas 3 to 9``), or "" for none."""
    return missing_deltas(includes_seq + 1, applied) if includes_seq < applied else ""


def _refuse_rollback(path: Path, includes_seq: int, applied: int) -> None:
    """``OutOfSequence`` if a snapshot holding deltas up to ``includes_seq`` would undo
    deltas Redis has applied (up to ``applied``): replicas would switch to it and what
    those deltas listed, delisted or suspended would be undone, with nothing said."""
    undone = _undone(includes_seq, applied)
    if undone:
        raise OutOfSequence(
            str(path),
            f"the snapshot includes deltas up to seq {includes_seq} but seq {applied} is "
            f"applied: loading it would undo {undone}; load a newer snapshot, or give "
            "--allow-rollback to go back on purpose",
        )


def rollback_of(client: Client, path: Path, keys: RedisKeys) -> str:
    """The deltas loading the snapshot at ``path`` would undo (``deltas 3 to 9``), or
    "" when it undoes none: what ``load --allow-rollback`` says it did."""
    return _undone(_header(path).includes_seq, _applied_seq(client, keys))


def _refuse_gap(path: Path, ops: list[DeltaOp], applied: int) -> None:
    """``OutOfSequence`` unless the ops above ``applied`` are ``applied + 1``, ``+ 2``...
    with none missing: applying a delta after a missing one would leave that one's
    change out for good (a replay skips every seq at or below the last applied)."""
    previous = applied
    for seq in sorted(op.seq for op in ops if op.seq > applied):  # read_delta: no repeats
        if seq != previous + 1:
            where = " (the last Redis holds)" if previous == applied else " in this file"
            raise OutOfSequence(
                str(path),
                f"{gap_problem(previous, seq, where)}; nothing was applied "
                "(load the missing delta first)",
            )
        previous = seq


#: What to do, in Redis mode, about a delta older than the first one applied on top of a
#: snapshot without a header (``feed.before_first_problem``)
_REDIS_BEFORE_FIRST_REMEDY = (
    "nothing was applied (load a snapshot with a header that includes it, or the same "
    "snapshot again with --allow-rollback and then every delta in seq order)"
)


def _refuse_before_first(
    path: Path, ops: list[DeltaOp], first: int, base: str, reflected: Callable[[DeltaOp], bool]
) -> None:
    """``OutOfSequence`` if an op's seq is below ``first``, the first delta applied on top
    of ``base``, a snapshot without a header, and Redis does not hold its change
    already (``reflected``): that delta set where the numbering stands, so a lower
    seq is no replay but a delta the version may not hold (skipping it would leave
    its change out for good, with exit 0). One whose change Redis holds (the
    snapshot held it) is skipped like a replay."""
    below = [op.seq for op in ops if op.seq < first and not reflected(op)]  # in seq order
    if below:
        problem = before_first_problem(below[0], first, base, _REDIS_BEFORE_FIRST_REMEDY)
        raise OutOfSequence(str(path), problem)


def _refuse_old_format(
    path: Path, ops: list[DeltaOp], meta: dict[str, bytes], version: str
) -> None:
    """``LoadRejected`` for the EXEMPT and UNEXEMPT ops of a delta on a version older than
    ``index_redis.EXEMPTIONS_FORMAT``: its exemptions cover whole entries, and replicas
    apply none of them (``RedisView``), so an exemption op there would do nothing, or undo
    one the court gave someone else. Other ops apply: a listing or delisting must not
    wait. A version of a later format, older than ``FORMAT`` (placeholder dates not
    refused), names each exemption's person: they apply there."""
    if format_of(meta) >= EXEMPTIONS_FORMAT:
        return
    kinds = (DeltaKind.EXEMPT, DeltaKind.UNEXEMPT)
    errors = [RowError(op.line, "exemption", old_format_problem(version))
              for op in ops if op.op in kinds]  # fmt: skip
    if errors:
        raise LoadRejected(str(path), errors)


def _unused_name(client: Client, keys: RedisKeys, version: str) -> str:
    """``version``, or it with a suffix if that name was ever used (``P:names``: a name
    garbage collected is not free again, since replicas remember versions they left)."""
    name = version
    while (client.sismember(keys.names, name) or client.sismember(keys.versions, name)
           or client.exists(keys.meta(name))):  # fmt: skip
        name = f"{version}-{secrets.token_hex(2)}"
    return name


def publish_snapshot(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys | None = None,
    progress: Progress | None = None, writers: int = 0, allow_rollback: bool = False,
    new_key_secret: bool = False,
) -> str:  # fmt: skip
    """Validate ``path`` whole, write it as a new version, make it current; its name.

    ``writers``: processes writing the version (``_write_version``); 0 for
    ``default_writers``: one per core from ``PARALLEL_WRITE_FROM`` subject keys.
    A snapshot whose ``includes_seq`` is below the last seq Redis has applied, or
    whose ``published_at`` is before the current version's, is refused
    (``OutOfSequence``) unless ``allow_rollback``: it would undo deltas, or list
    less than the newer snapshot. One built with another key secret than the
    current version's is refused (``ConfigurationError``) unless ``new_key_secret``.
    A Redis that may evict the list's keys is refused before anything.
    """
    keys = keys or RedisKeys()
    _refuse_eviction(client, keys)
    _refuse_other_secret(client, keys, keyer, new_key_secret)
    header = _header(path)
    if not allow_rollback:  # before minutes of validating (no header: it includes no delta)
        _refuse_rollback(path, header.includes_seq, _applied_seq(client, keys))
        _refuse_older(client, path, keys)
    view = build_snapshot(path, keyer, progress)  # LoadRejected before any write
    with _out_of_memory_said(client):
        return _publish_snapshot(client, path, keyer, keys, writers, allow_rollback, header, view)


def _publish_snapshot(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys, writers: int,
    allow_rollback: bool, header: SnapshotHeader, view: MemoryView,
) -> str:  # fmt: skip
    base, info = view.base, view.info
    bits = bucket_bits(len(base.k_hi))
    ebits = bucket_bits(base.entries)
    lock = _take_lock(client, keys)
    started_on = sentinel_master(client)  # a failover during the load: refused at its end
    try:
        if not allow_rollback:
            _refuse_rollback(path, info.last_delta_seq, _applied_seq(client, keys))
            _refuse_older(client, path, keys)
        # the versions past their grace go first: while this one is written Redis holds
        # it and the current one, and more only when loads come within the grace
        collect_garbage(client, keys, lock)
        version = _unused_name(client, keys, info.version)
        token = secrets.token_hex(8)
        register = client.pipeline(transaction=True)
        register.sadd(keys.versions, version)  # before any key: a killed load is collectable
        register.sadd(keys.names, version)
        register.hset(keys.meta(version), mapping={"state": "writing", "load_token": token,
                                                    "holder": lock.token})  # fmt: skip
        register.execute()
        try:
            writers = writers or default_writers(len(base.k_hi))
            _write_version(client, keys, version, view, bits, ebits, lock, writers)
            pipe = client.pipeline(transaction=False)
            pipe.set(keys.bloom(version), base.bloom.save_bytes())
            # the snapshot's own watermark: a snapshot without a header includes no delta
            seq = info.last_delta_seq
            pipe.hset(
                keys.meta(version),
                mapping={
                    "version": version, "source": info.source, "loaded_at": info.loaded_at,
                    "source_timestamp": info.source_timestamp, "last_seq": seq,
                    "snapshot_seq": seq, "header": int(header.declared),
                    "counts": counts_json(info.counts),
                    "expiries": expiries_json(info.counts),
                    "subject_keys": info.counts.subject_keys, "bucket_bits": bits,
                    "entry_bits": ebits, "fingerprint": keyer.fingerprint, "state": "ready",
                    "format": FORMAT, "published_at": header.published_at or 0,
                    # made current on purpose, older or not: replicas follow it even from
                    # a newer version (``RedisFollower._going_back``)
                    **({ROLLBACK_FIELD: 1} if allow_rollback else {}),
                },
            )  # fmt: skip
            lock.check()
            pipe.execute()

            # by Redis's clock: replicas' records after it may tell of a newer version
            # that Redis lost (``RedisFollower._newer_served``)
            made_current = repr(redis_time(client))

            def flip(tx: Any) -> None:
                tx.set(keys.current, version)
                tx.hset(keys.meta(version), CURRENT_AT_FIELD, made_current)
                tx.sadd(keys.versions, version)
                tx.publish(keys.announce, f"version {version}")

            lock.commit(flip)
        except BaseException:
            _abandon(client, keys, version, lock)
            raise
        await_replica(client, keys, f"version {version}", started_on)
        try:
            collect_garbage(client, keys, lock)
        except IndexUnavailable:
            pass  # the version is current; what is left is the next collection's
    finally:
        lock.release()
    return version


#: How long a load waits for a Redis replica to acknowledge what it wrote.
REPLICA_ACK_MS = 2000


def await_replica(
    client: Client, keys: RedisKeys, what: str, started_on: tuple[str, int] | None = None
) -> None:
    """Return once a Redis replica holds every write so far (at once without replicas).

    A master demoted in a planned Sentinel failover throws away writes its
    replicas never received: a load that returned before one had them could
    vanish without a trace, and a delisting or a listing with it. So a load
    only reports success once a replica has acknowledged it (``WAIT``), and
    says so when none did: loading the file again is harmless, and waits again.

    ``WAIT`` covers the writes of the connection it is sent on, up to its last
    one; the load's own commit may have gone on another pooled connection, and a
    load again of a delta writes nothing. So a PUBLISH (replicated, stored
    nowhere) goes first on the same connection: the WAIT then covers every write
    the master took before it, whoever made it.

    Through Sentinel (``_await_through_sentinels``) the master's own count of
    connected replicas is no guide: a failover detaches the replica it promotes
    first, and the master being demoted then has none. ``started_on``: the master
    the sentinels named when the load began (``sentinel_master``).
    """
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        _await_through_sentinels(pool, keys, what, started_on)
        return
    replicas = int(client.info("replication").get("connected_slaves", 0))
    if not replicas:
        return
    with client.pipeline(transaction=False) as pipe:
        pipe.publish(keys.announce, "sync")
        pipe.wait(1, REPLICA_ACK_MS)
        acked = int(pipe.execute()[-1])
    if acked < 1:
        raise IndexUnavailable(
            f"{what} is written but no Redis replica acknowledged it within "
            f"{REPLICA_ACK_MS} ms (a failover now would lose it): load the file again"
        )


def sentinel_master(client: Client) -> tuple[str, int] | None:
    """The master the sentinels name now (None: a plain client, or none answered)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    try:
        host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
    except redis.ConnectionError:
        return None
    return str(host), int(port)


def _sentinel_states(pool: SentinelConnectionPool) -> list[tuple[dict[str, Any], int]]:
    """What each sentinel that answers says of the service: (its ``SENTINEL MASTER``
    state, how many of the master's replicas it finds up and linked to it: those a
    write must reach before a failover may promote one). A replica the sentinels just
    set to follow a new master is not linked yet: it holds nothing of the new one's."""
    said = []
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            state = sentinel.sentinel_master(pool.service_name)
            replicas = sentinel.sentinel_slaves(pool.service_name)
        except redis.RedisError:
            continue
        up = sum(1 for r in replicas if _linked(r))
        said.append((state, up))
    return said


def _linked(replica: dict[str, Any]) -> bool:
    down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    return not down and str(replica.get("master-link-status", "ok")) == "ok"


def _failing_over(state: dict[str, Any]) -> bool:
    flags = state.get("flags", "")
    found = flags if isinstance(flags, set) else set(str(flags).split(","))
    return "failover_in_progress" in found


def _await_through_sentinels(
    pool: SentinelConnectionPool, keys: RedisKeys, what: str, started_on: tuple[str, int] | None
) -> None:
    """``await_replica`` through Sentinel: a replica of the master written to must
    acknowledge the writes (``WAIT``) whenever the sentinels know of one that is up,
    whatever the master's own count says; then the sentinels must still name that
    server as the master, the one they named when the load began (``started_on``),
    with no failover under way. Else ``IndexUnavailable``: the write may be lost."""

    def lost(problem: str) -> IndexUnavailable:
        return IndexUnavailable(
            f"{what} is written, but {problem}: a Sentinel failover may lose it (or has); "
            "load the file again (loading it again is harmless: it waits again)"
        )

    before = _sentinel_states(pool)
    if not before:
        raise lost(f"no sentinel of {pool.service_name!r} answered to say where it is held")
    known = max(up for _, up in before)
    connection = pool.get_connection()
    try:
        address = (str(connection.host), int(connection.port))
        where = f"{address[0]}:{address[1]}"
        connection.send_command("INFO", "replication")  # type: ignore[no-untyped-call]
        info = bytes(connection.read_response())
        connected = re.search(rb"^connected_slaves:(\d+)", info, re.MULTILINE)
        if known or (connected and int(connected[1])):
            try:
                connection.send_command("PUBLISH", keys.announce, "sync")  # type: ignore[no-untyped-call]
                connection.read_response()
                connection.send_command("WAIT", 1, REPLICA_ACK_MS)  # type: ignore[no-untyped-call]
                acked = int(connection.read_response())
            except redis.ResponseError as exc:  # WAIT on a replica: demoted meanwhile
                raise lost(f"{where}, where it was written, refused WAIT ({exc})") from None
            if acked < 1:
                raise lost(
                    f"no Redis replica acknowledged it within {REPLICA_ACK_MS} ms (written "
                    f"to {where}; the sentinels know of {known} replica(s) up: one being "
                    "promoted has left that master)"
                )
    finally:
        pool.release(connection)
    after = _sentinel_states(pool)
    if not after:
        raise lost(f"no sentinel of {pool.service_name!r} answered to confirm {where} is master")
    for state, _ in after:
        named = (str(state.get("ip", "")), int(state.get("port", 0)))
        if named != address:
            raise lost(f"the sentinels now name {named[0]}:{named[1]} as master, not {where}")
        if _failing_over(state):
            raise lost(f"the sentinels are failing over the master {where}")
    if started_on is not None and started_on != address:
        raise lost(
            f"the sentinels named {started_on[0]}:{started_on[1]} as master when the load "
            f"began, {where} when it ended"
        )


def _abandon(client: Client, keys: RedisKeys, version: str, lock: HeldLock) -> None:
    """After a failed write: delete the half-written version if the lock is still
    ours; else make sure it stays listed, for the next collection to delete."""
    try:
        if client.get(keys.current) == version.encode():
            return  # the flip went through after all
        try:
            lock.check()
        except Exception:
            client.sadd(keys.versions, version)
            return
        delete_version(client, keys, version)
    except Exception:
        pass  # Redis itself is failing: the version stays listed, the next collection has it


#: subject keys from which ``load`` writes a snapshot with one process per core: below
#: it a process's start costs more than its share of the write saves
PARALLEL_WRITE_FROM = 500_000
MAX_WRITERS = 8


def default_writers(subject_keys: int) -> int:
    """Writer processes for a snapshot of ``subject_keys`` keys: one per core for big ones."""
    if subject_keys < PARALLEL_WRITE_FROM:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WRITERS))


@dataclass(frozen=True)
class _Columns:
    """What every writer reads, computed a column at a time before they fork."""

    k_hi: np.ndarray[Any, Any]  # subject keys' high halves, sorted
    raw_keys: bytes  # each subject key as 16 bytes, big-endian
    exemptions: dict[int, list[list[int]]]  # by key row: those naming that key's person
    entry_order: np.ndarray[Any, Any]  # entry rows in order of their first key
    ebuckets: np.ndarray[Any, Any]  # each entry row's bucket
    grouped: bytes  # each entry's keys, 16 bytes each, entries one after the other
    starts: np.ndarray[Any, Any]  # where each entry row's keys begin in ``grouped`` (bytes)
    ends: np.ndarray[Any, Any]
    id_at: np.ndarray[Any, Any]  # where each entry row's entry_id begins and ends in the text
    id_end: np.ndarray[Any, Any]


def _columns(base: Any, ebits: int) -> _Columns:
    n = len(base.k_hi)
    k_hi = np.frombuffer(cast(Any, base.k_hi), "<u8")
    key_bytes = np.empty((n, 2), ">u8")
    key_bytes[:, 0] = k_hi
    key_bytes[:, 1] = np.frombuffer(cast(Any, base.k_lo), "<u8")
    m_entry = np.frombuffer(cast(Any, base.m_entry), "<u4")
    # each entry's keys, in key order; entries in order of their first key (as before)
    counts = np.bincount(m_entry, minlength=base.entries)
    ends = np.cumsum(counts)
    id_hash = np.empty(base.entries, "<u8")
    id_hash[np.frombuffer(cast(Any, base.id_rows), "<u4")] = np.frombuffer(
        cast(Any, base.id_sorted), "<u8"
    )  # entry_id_hash of every row
    rows, first = np.unique(m_entry, return_index=True)
    text_at = np.frombuffer(cast(Any, base.e_text_at), "<u8")[:-1]
    return _Columns(
        k_hi=k_hi,
        raw_keys=key_bytes.tobytes(),
        exemptions=_exemptions_by_key_row(base, m_entry),
        entry_order=rows[np.argsort(first, kind="stable")],
        ebuckets=(id_hash >> np.uint64(64 - ebits)) if ebits else np.zeros(base.entries, "<u8"),
        grouped=key_bytes[np.argsort(m_entry, kind="stable")].tobytes(),
        starts=(ends - counts) * 16,
        ends=ends * 16,
        id_at=text_at,
        id_end=_first_separators(base.text, text_at),
    )


def _exemptions_by_key_row(base: Any, m_entry: np.ndarray[Any, Any]) -> dict[int, list[list[int]]]:
    """Each key row's exemptions as stored: those of its entry naming its own person
    (``index_memory.own_exemptions``), so each subject's match carries its own only.
    Rows of entries without exemptions (nearly all) are not looked at one by one."""
    if not base.exemptions:
        return {}
    rows = np.fromiter(base.exemptions, "<u4", len(base.exemptions))
    out: dict[int, list[list[int]]] = {}
    for i in np.flatnonzero(np.isin(m_entry, rows)).tolist():
        key = (base.k_hi[i] << 64) | base.k_lo[i]
        own = own_exemptions(base.exemptions[int(m_entry[i])], key)
        if own:
            out[i] = [[int(e.channel), e.first_day, e.last_day] for e in own]
    return out


#: Bytes of the text column searched at a time for separators (a bool a byte)
_SEARCH_BLOCK = 1 << 26


def _first_separators(text: Any, text_at: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Where each text's first \x1f is (its entry_id ends there), for all at once."""
    data = np.frombuffer(cast(Any, text), "u1")
    found = [
        np.flatnonzero(data[at : at + _SEARCH_BLOCK] == 0x1F) + at
        for at in range(0, len(data), _SEARCH_BLOCK)
    ]
    separators = np.concatenate(found) if found else np.zeros(0, "<i8")
    return separators[np.searchsorted(separators, text_at)].astype("<u8")


@dataclass(frozen=True)
class _Share:
    """One writer's part: subject keys ``[lo, hi)`` (whole buckets), entry buckets
    ``[elo, ehi)``."""

    lo: int
    hi: int
    elo: int
    ehi: int


def _shares(columns: _Columns, bits: int, ebits: int, writers: int) -> list[_Share]:
    """``writers`` parts of equal bucket ranges (one when there are no buckets)."""
    if writers <= 1 or not bits or not ebits:
        return [_Share(0, len(columns.k_hi), 0, 1 << ebits)]
    cuts = [(j << bits) // writers for j in range(writers + 1)]
    at = np.searchsorted(columns.k_hi, np.array([c << (64 - bits) for c in cuts[:-1]], "<u8"))
    positions = [*at.tolist(), len(columns.k_hi)]
    ecuts = [(j << ebits) // writers for j in range(writers + 1)]
    return [_Share(positions[j], positions[j + 1], ecuts[j], ecuts[j + 1])
            for j in range(writers)]  # fmt: skip


def _write_version(
    client: Client, keys: RedisKeys, version: str, view: MemoryView, bits: int, ebits: int,
    lock: HeldLock, writers: int = 1,
) -> None:  # fmt: skip
    """The subject and entry hashes of ``version``, in pipelined batches, by ``writers``
    processes each taking a range of buckets.

    ``view`` is a fresh snapshot's (no overlay), so each stored match is
    ``encode_match(view.match_at(i))`` built straight from the base's columns,
    and what can be computed a column at a time (buckets, key bytes, which
    keys each entry has, where each entry_id ends, each key's entry fields) is,
    with numpy: a million entries are 1.4 million matches, and a
    ``ListedMatch`` each cost more than the rest of the write. The subject
    fields are made in C where loader/_rowcheck.c is built (``_compiled_fields``:
    ~1 µs a key, bound by reading the entry columns at random rows), in
    Python otherwise (``_python_fields``), byte for byte the same. A writer
    takes its keys and entries ``_RUN`` at a time, so its memory does not grow
    with the list.

    The write is bound by the loader's CPU (Redis spends a tenth of it), so
    with ``writers`` > 1 this process forks the others (they share the
    columns; ``load`` runs no gRPC) and writes the first range itself. A
    writer checks between batches that the load lock is still this load's; a
    writer that fails makes the whole write fail (``IndexUnavailable``), so
    nothing is made current and ``publish_snapshot`` deletes the version.
    """
    base = view.base
    assert view.overlay.empty, "a snapshot's own version"
    columns = _columns(base, ebits)
    shares = _shares(columns, bits, ebits, writers)
    if len(shares) == 1:
        _write_share(client, keys, version, base, columns, bits, shares[0], lock.check)
        return
    forked = multiprocessing.get_context("fork")
    children = [
        forked.Process(
            target=_writer,
            name=f"shixin-writer-{i}",
            daemon=True,
            args=(client, keys, version, base, columns, bits, share, lock),
        )  # fmt: skip
        for i, share in enumerate(shares[1:], 2)
    ]
    for child in children:
        child.start()
    try:
        _write_share(client, keys, version, base, columns, bits, shares[0], lock.check)
    except BaseException:
        for child in children:
            child.terminate()
        raise
    finally:
        for child in children:
            child.join()
    failed = [str(child.exitcode) for child in children if child.exitcode != 0]
    if failed:
        raise IndexUnavailable(
            f"{len(failed)} of {len(shares)} writer processes failed (exit {', '.join(failed)}): "
            "the version is not made current"
        )


def _writer(
    client: Client, keys: RedisKeys, version: str, base: Any, columns: _Columns, bits: int,
    share: _Share, lock: HeldLock,
) -> None:  # fmt: skip
    """A forked writer: its share, or one line on stderr and exit status 1.

    The lock's keeper thread stays in the parent, so between batches this asks
    Redis whether the lock is still this load's (redis-py opens its own
    connections after a fork), and stops if the parent is gone."""
    token, parent = lock.token.encode(), os.getppid()

    def check() -> None:
        if os.getppid() != parent:  # the load died (SIGKILL): its version is garbage
            raise IndexUnavailable("the load that started this writer is gone")
        if client.get(lock.key) != token:
            raise IndexUnavailable(f"lost {lock.key} while writing: nothing was made current")

    try:
        _write_share(client, keys, version, base, columns, bits, share, check)
    except Exception as exc:  # noqa: BLE001 - the parent reports it; one line here says why
        print(f"shixin-check load: writer {share}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


#: keys (or entries) a writer takes into lists at a time
_RUN = 100_000


def _per_key(base: Any, rows: np.ndarray[Any, Any], name: str) -> list[Any]:
    """Entry column ``name`` at each of ``rows``, as plain values."""
    values: list[Any] = np.frombuffer(cast(Any, getattr(base, name)), _COLUMNS[name])[rows].tolist()
    return values


def _write_share(
    client: Client, keys: RedisKeys, version: str, base: Any, columns: _Columns, bits: int,
    share: _Share, check: Callable[[], None],
) -> None:  # fmt: skip
    pipe = client.pipeline(transaction=False)

    def send_if_full() -> None:
        if len(pipe) >= 500:
            check()
            pipe.execute()

    fields_of = _compiled_fields if compiled() is not None else _python_fields
    for bucket, fields in fields_of(base, columns, bits, share):
        pipe.hset(keys.subjects(version, bucket), mapping=fields)
        send_if_full()
    text = base.text
    # each entry bucket's hash, entry_id to its keys: the rows sorted by bucket (stably, so
    # a bucket's fields keep the order of their first keys), taken a run of buckets at a time
    order, ebuckets = columns.entry_order, columns.ebuckets
    mine = order[(ebuckets[order] >= share.elo) & (ebuckets[order] < share.ehi)]
    mine = mine[np.argsort(ebuckets[mine], kind="stable")]
    mine_buckets = ebuckets[mine]
    per_run = max(1, _RUN * (share.ehi - share.elo) // max(len(mine), 1))
    for first in range(share.elo, share.ehi, per_run):
        a, b = np.searchsorted(mine_buckets, [first, first + per_run]).tolist()
        run, run_buckets = mine[a:b], mine_buckets[a:b]
        ids = list(map(text.__getitem__, map(slice, columns.id_at[run].tolist(),
                                             columns.id_end[run].tolist())))  # fmt: skip
        values = list(map(columns.grouped.__getitem__, map(slice, columns.starts[run].tolist(),
                                                           columns.ends[run].tolist())))  # fmt: skip
        cuts = [0, *(np.flatnonzero(np.diff(run_buckets)) + 1).tolist(), b - a]
        for x, y in itertools.pairwise(cuts if a < b else []):
            mapping = dict(zip(ids[x:y], values[x:y], strict=True))
            pipe.hset(keys.entries(version, int(run_buckets[x])), mapping=mapping)
            send_if_full()
    check()
    pipe.execute()


def _python_fields(
    base: Any, columns: _Columns, bits: int, share: _Share
) -> Iterator[tuple[int, dict[bytes, bytes]]]:
    """Each subject bucket of ``share`` with its fields (key to the JSON of its matches),
    built in Python: where loader/_rowcheck.c is not built."""
    raw_keys, exemptions = columns.raw_keys, columns.exemptions
    text, text_at = base.text, base.e_text_at
    court_names = np.array(list(base.courts), dtype=object)
    m_mask, w = base.m_mask, _MASK_WIDTH
    bucket, fields = -1, {}  # type: tuple[int, dict[bytes, list[Any]]]
    # each key's entry fields gathered a column at a time by numpy, not indexed key by
    # key, in runs of _RUN keys (the lists of a whole share would cost gigabytes at 10M)
    for lo in range(share.lo, share.hi, _RUN):
        hi = min(lo + _RUN, share.hi)
        rows = np.frombuffer(cast(Any, base.m_entry), "<u4")[lo:hi]
        per_key = partial(_per_key, base, rows)
        for i, b, row, role, name, court, kind, status, listed, valid in zip(
            range(lo, hi),
            (columns.k_hi[lo:hi] >> np.uint64(64 - bits)).tolist() if bits else [0] * (hi - lo),
            rows.tolist(),
            np.frombuffer(cast(Any, base.m_role), "u1")[lo:hi].tolist(),
            np.frombuffer(cast(Any, base.m_name), "<u8")[lo:hi].tolist(),
            court_names[per_key("e_court")].tolist(),
            per_key("e_type"), per_key("e_status"), per_key("e_listed"), per_key("e_valid"),
            strict=True,
        ):  # fmt: skip
            if b != bucket:
                if fields:
                    yield bucket, {k: orjson.dumps(v) for k, v in fields.items()}
                bucket, fields = b, {}
            # base.texts(row), decoded again for each of an entry's keys rather than kept: a
            # dict of every entry's texts was ~40% of the loader's peak memory, and slower
            found = text[text_at[row] : text_at[row + 1]].decode().split("\x1f")
            match = [
                found[0],
                kind,
                status,
                role,
                name,
                found[1],
                court,
                found[2],  # the organisation: on its debtor's match too (encode_match)
                m_mask[i * w : (i + 1) * w].rstrip().decode(),
                listed,
                valid,
                exemptions.get(i, []),
            ]  # fmt: skip  (encode_match's order)
            fields.setdefault(raw_keys[16 * i : 16 * i + 16], []).append(match)
    if fields:
        yield bucket, {k: orjson.dumps(v) for k, v in fields.items()}


def _compiled_fields(
    base: Any, columns: _Columns, bits: int, share: _Share
) -> Iterator[tuple[int, dict[bytes, bytes]]]:
    """``_python_fields``, made by ``_rowcheck.subject_fields`` in C: the same
    buckets, fields and bytes (tests/test_redis_failures.py), without a Python
    frame per key. It takes runs of about ``_RUN`` keys that end where a bucket
    does, so no key's matches and no bucket's fields are split between two."""
    extension = compiled()
    assert extension is not None
    k_hi = columns.k_hi
    courts = [orjson.dumps(court) for court in base.courts]
    exemptions = {row: orjson.dumps(found) for row, found in columns.exemptions.items()}
    lo = share.lo
    while lo < share.hi:
        hi = min(lo + _RUN, share.hi)
        if bits and hi < share.hi:  # on to the end of the bucket of key hi - 1
            after = (int(k_hi[hi - 1]) >> (64 - bits)) + 1
            if after < 1 << bits:
                hi = min(int(np.searchsorted(k_hi, np.uint64(after << (64 - bits)))), share.hi)
            else:
                hi = share.hi
        elif not bits:
            hi = share.hi  # one bucket
        yield from extension.subject_fields(
            lo, hi, bits, k_hi, columns.raw_keys, base.m_entry, base.m_role, base.m_name,
            base.m_mask, _MASK_WIDTH, base.text, base.e_text_at, base.e_type, base.e_status,
            base.e_listed, base.e_valid, base.e_court, courts, exemptions, _DEBTOR,
        )  # fmt: skip
        lo = hi


@dataclass
class DeltaResult:
    """What a delta load did: the version it applied to, ops applied, the last seq."""

    version: str
    applied: int
    last_seq: int


class _RedisDelta:
    """A delta file applied to local copies of what it touches, then written at once.

    ``headerless``: the version's snapshot has no header (meta ``header`` 0). As in
    directory mode (``versions._DeltaState``, the same rule), an op whose change
    Redis already holds (``reflected``) is then a no-op, not an error, each op
    judged on what the file's earlier ops leave; on a snapshot with a header
    every op must change something it names.
    """

    def __init__(self, client: Client, keys: RedisKeys, version: str,
                 meta: dict[str, bytes], keyer: SubjectKeyer,
                 headerless: bool = False) -> None:  # fmt: skip
        self.client, self.keys, self.version, self.keyer = client, keys, version, keyer
        self.headerless = headerless
        self.bits = int(meta["bucket_bits"])
        self.ebits = int(meta["entry_bits"])
        self.values: dict[bytes, list[list[Any]]] = {}
        self.entries: dict[str, list[bytes] | None] = {}
        self.bloom_adds: dict[int, list[int]] = {}  # a LIST's seq: its keys' high halves
        self.counts: dict[tuple[int, int], int] = {
            (t, s): n for t, s, n in orjson.loads(meta.get("counts", b"[]"))
        }
        self.expiries: dict[tuple[int, int, int], int] = {
            (t, s, v): n for t, s, v, n in orjson.loads(meta.get("expiries", b"[]"))
        }
        self.subject_keys = int(meta.get("subject_keys", b"0"))

    def _subject_key(self, key16: bytes) -> str:
        return self.keys.subjects(self.version, bucket_of(int.from_bytes(key16[:8]), self.bits))

    def _entry_key(self, entry_id: str) -> str:
        return self.keys.entries(self.version, bucket_of(entry_id_hash(entry_id), self.ebits))

    def _value(self, key16: bytes) -> list[list[Any]]:
        if key16 not in self.values:
            raw = self.client.hget(self._subject_key(key16), key16)
            self.values[key16] = orjson.loads(raw) if raw else []
        return self.values[key16]

    def _entry(self, entry_id: str) -> list[bytes] | None:
        if entry_id not in self.entries:
            raw = self.client.hget(self._entry_key(entry_id), entry_id.encode())
            self.entries[entry_id] = (
                [raw[i : i + 16] for i in range(0, len(raw), 16)] if raw else None
            )
        return self.entries[entry_id]

    def _count(self, match: list[Any], delta: int) -> None:
        k = (match[1], match[2])
        self.counts[k] = self.counts.get(k, 0) + delta
        if match[10] != NO_END:  # valid_until: counted EXPIRED once past
            e = (match[1], match[2], match[10])
            self.expiries[e] = self.expiries.get(e, 0) + delta

    def _matches_of(self, entry_id: str) -> list[list[Any]]:
        found = []
        for key16 in self._entry(entry_id) or []:
            found += [m for m in self._value(key16) if m[0] == entry_id]
        return found

    def _drop(self, entry_id: str) -> bool:
        keys16 = self._entry(entry_id)
        if keys16 is None:
            return False
        self._count(self._matches_of(entry_id)[0], -1)
        self.subject_keys -= len(keys16)  # one a subject, as the snapshot's and a LIST's count
        for key16 in keys16:
            self.values[key16] = [m for m in self._value(key16) if m[0] != entry_id]
        self.entries[entry_id] = None
        return True

    def reflected(self, op: DeltaOp) -> bool:
        """True when applying ``op`` now would change nothing: Redis holds it already.

        ``versions._DeltaState.reflected``, read from Redis: a LIST whose entry is
        held exactly so (each subject key's stored match the same), a DELIST of
        an entry that is not held, a SUSPEND or RESUME of a held entry to the
        status it has, an EXEMPT of an exemption it has or an UNEXEMPT of one it
        has not (on an entry not held these stay ``no listed entry``). Writes
        nothing.
        """
        if op.op is DeltaKind.LIST:
            assert op.entry is not None
            return self._listed_as(op.entry)
        if self._entry(op.entry_id) is None:
            return op.op is DeltaKind.DELIST
        if op.op is DeltaKind.DELIST:
            return False
        held = self._matches_of(op.entry_id)[0]
        if op.op in (DeltaKind.SUSPEND, DeltaKind.RESUME):
            wanted = EntryStatus.SUSPENDED if op.op is DeltaKind.SUSPEND else EntryStatus.ACTIVE
            return bool(held[2] == wanted)
        named = self._exempted(op)
        if isinstance(named, RowError):
            return False
        key16, wire = named
        own = [m for m in self._value(key16) if m[0] == op.entry_id]
        return (wire in own[0][11]) is (op.op is DeltaKind.EXEMPT)

    def _exempted(self, op: DeltaOp) -> tuple[bytes, list[int]] | RowError:
        """(the subject key of the person an EXEMPT or UNEXEMPT covers, the exemption as
        stored), or why it may not name whom it names: as ``listfile.exempted_in``
        refuses a snapshot row's, read from the matches Redis holds (an organisation's
        entry names the organisation in each: index_redis ``EXEMPTIONS_FORMAT``)."""
        assert op.exemption is not None
        e, field = op.exemption, "exemption.id_number"
        held = [(k, m) for k in dict.fromkeys(self._entry(op.entry_id) or [])
                for m in self._value(k) if m[0] == op.entry_id]  # fmt: skip
        organisation = any(m[7] for _, m in held)
        wire = [int(e.channel), e.first_day, e.last_day]
        if not e.id_number:
            if organisation:
                return RowError(op.line, field, EXEMPTION_NEEDS_PERSON)
            return held[0][0], wire  # a person's entry: its debtor, its one subject
        key16 = self.keyer.subject_key(e.id_type, e.id_number).to_bytes(16, "big")
        if organisation and (key16, _DEBTOR) in {(k, m[3]) for k, m in held}:
            return RowError(op.line, field, EXEMPTION_NAMES_ORGANISATION)
        if any(k == key16 for k, _ in held):
            return key16, wire
        return RowError(op.line, field, EXEMPTION_NAMES_NO_ONE)

    def _listed_as(self, entry: ListEntry) -> bool:
        """True when Redis holds ``entry`` exactly so: every subject key of it, and no
        other, with the match a LIST of it would store, but for its masked number: the
        subject key stands for the number, and a version an earlier release loaded masks
        some numbers otherwise (a first-generation card's 15 digits)."""
        keys16 = self._entry(entry.entry_id)
        if keys16 is None:
            return False
        held = Counter(
            (key16, orjson.dumps(_unmasked(m)))
            for key16 in set(keys16) for m in self._value(key16) if m[0] == entry.entry_id
        )  # fmt: skip
        wanted = Counter(
            (key.to_bytes(16, "big"),
             orjson.dumps(_unmasked(encode_match(match, entry.organization_name))))
            for key, match in matches_of(entry, self.keyer)
        )  # fmt: skip
        return held == wanted

    def apply(self, op: DeltaOp) -> RowError | None:
        if self.headerless and self.reflected(op):
            return None  # its change is in Redis already: the snapshot may hold it
        if op.op is DeltaKind.LIST:
            assert op.entry is not None
            self._drop(op.entry_id)
            pairs = matches_of(op.entry, self.keyer)
            for key, match in pairs:
                key16 = key.to_bytes(16, "big")
                self._value(key16).append(encode_match(match, op.entry.organization_name))
                self.bloom_adds.setdefault(op.seq, []).append(key >> 64)
            self.entries[op.entry_id] = [k.to_bytes(16, "big") for k, _ in pairs]
            self._count(encode_match(pairs[0][1]), 1)
            self.subject_keys += len(pairs)
            return None
        if self._entry(op.entry_id) is None:
            return RowError(op.line, "entry_id", f"no listed entry {op.entry_id!r}")
        if op.op is DeltaKind.DELIST:
            self._drop(op.entry_id)
            return None
        matches = self._matches_of(op.entry_id)
        if op.op in (DeltaKind.SUSPEND, DeltaKind.RESUME):
            status = EntryStatus.SUSPENDED if op.op is DeltaKind.SUSPEND else EntryStatus.ACTIVE
            if matches[0][2] != status:
                self._count(matches[0], -1)
                for m in matches:
                    m[2] = int(status)
                self._count(matches[0], 1)
            return None
        named = self._exempted(op)
        if isinstance(named, RowError):
            return named
        key16, wire = named
        own = [m for m in self._value(key16) if m[0] == op.entry_id]  # the person's, only
        if op.op is DeltaKind.UNEXEMPT and wire not in own[0][11]:
            return RowError(op.line, "exemption", f"entry {op.entry_id!r} has no such exemption")
        for m in own:
            m[11] = m[11] + [wire] if op.op is DeltaKind.EXEMPT else [x for x in m[11] if x != wire]
        return None

    def commit(
        self, ops: list[DeltaOp], source_timestamp: float, lock: HeldLock, first_seq: int = 0
    ) -> None:
        """Every change, the stream records and the new last seq in one MULTI/EXEC,
        only if ``lock`` is still ours. ``first_seq``: these are the first ops on top of
        a snapshot without a header, and this their first seq (meta ``first_seq``)."""
        lock.commit(lambda pipe: self._queue(pipe, ops, source_timestamp, first_seq))

    def _queue(
        self, pipe: Any, ops: list[DeltaOp], source_timestamp: float, first_seq: int
    ) -> None:
        for key16, value in self.values.items():
            if value:
                pipe.hset(self._subject_key(key16), key16, orjson.dumps(value))
            else:
                pipe.hdel(self._subject_key(key16), key16)
        for entry_id, keys16 in self.entries.items():
            if keys16:
                pipe.hset(self._entry_key(entry_id), entry_id.encode(), b"".join(keys16))
            else:
                pipe.hdel(self._entry_key(entry_id), entry_id.encode())
        stream = self.keys.deltas(self.version)
        for op in ops:
            fields: dict[str, Any] = {"seq": op.seq, "op": op.op.value, "entry_id": op.entry_id,
                                      "digest": op_digest(op)}  # fmt: skip
            if op.seq in self.bloom_adds:  # a LIST applied (one already held adds no key)
                fields["bloom"] = ",".join(f"{hi:x}" for hi in self.bloom_adds[op.seq])
            pipe.xadd(stream, fields)
        rows = [[t, s, n] for (t, s), n in sorted(self.counts.items()) if n]
        ends = [[t, s, v, n] for (t, s, v), n in sorted(self.expiries.items()) if n]
        mapping: dict[str, Any] = {
            "last_seq": ops[-1].seq, "counts": orjson.dumps(rows), "expiries": orjson.dumps(ends),
            "subject_keys": self.subject_keys, "source_timestamp": source_timestamp,
        }  # fmt: skip
        if first_seq:
            mapping["first_seq"] = first_seq
        pipe.hset(self.keys.meta(self.version), mapping=mapping)
        pipe.publish(self.keys.announce, f"delta {self.version} {ops[-1].seq}")


def _as_list(value: object) -> list[Any]:
    """A named tuple (``ListEntry``, its subjects, an exemption) as orjson writes a list."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def op_digest(op: DeltaOp) -> str:
    """What an op changes, as a short hash kept in the delta stream: a delta rewritten
    under a seq already applied differs in it (the op's line and feed time do not count)."""
    what = orjson.dumps([op.seq, op.op.value, op.entry_id, op.entry, op.exemption],
                        default=_as_list)  # fmt: skip
    return hashlib.sha256(what).hexdigest()[:16]


def _refuse_rewritten(
    client: Client, keys: RedisKeys, version: str, path: Path, ops: list[DeltaOp], last: int
) -> None:
    """``OutOfSequence`` if an op replayed (its seq applied already) is not the op the
    version's stream recorded for that seq: skipping it would drop its change with exit 0.
    A seq the stream does not hold (a snapshot's) cannot be compared; a stream record
    without a digest (an older load) is compared by op and entry."""
    replayed = {op.seq: op for op in ops if op.seq <= last}
    if not replayed:
        return
    for _, fields in client.xrange(keys.deltas(version)):
        seq = int(fields.get(b"seq", b"0"))
        op = replayed.get(seq)
        if op is None:
            continue
        was = f"{fields.get(b'op', b'').decode()} {fields.get(b'entry_id', b'').decode()}"
        digest = fields.get(b"digest")
        same = (was == f"{op.op.value} {op.entry_id}"
                and (digest is None or digest.decode() == op_digest(op)))  # fmt: skip
        if not same:
            now = f"{op.op.value} {op.entry_id}"
            differs = f"this file's {now}" if now != was else f"this file's {now} with other fields"
            raise OutOfSequence(
                str(path),
                f"seq {seq} is applied already as {was}, not as {differs}: a seq "
                "already applied must not be given to other changes; nothing was applied "
                f"(give the new changes seqs after {last}, the last Redis holds)",
            )


def publish_delta(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys | None = None
) -> DeltaResult:
    """Validate a delta file against the current version and apply it whole, or not at all."""
    keys = keys or RedisKeys()
    ops, errors = read_delta(path)
    if errors:
        raise LoadRejected(str(path), errors)
    _refuse_eviction(client, keys)
    with _out_of_memory_said(client):
        return _publish_delta(client, path, keyer, keys, ops)


def _publish_delta(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys, ops: list[DeltaOp]
) -> DeltaResult:
    lock = _take_lock(client, keys)
    started_on = sentinel_master(client)  # a failover during the load: refused at its end
    try:
        current = client.get(keys.current)
        if current is None:
            raise LoadRejected(str(path), [RowError(0, "", "no snapshot in Redis yet")])
        version = current.decode()
        meta = read_meta(client, keys, version)
        check_fingerprint(meta, keyer, version)
        _refuse_old_format(path, ops, meta, version)
        _refuse_broken(meta, client, keys, version)
        last = int(meta.get("last_seq", b"0"))
        # a snapshot without a header says nothing of where the numbering stands: the
        # first delta on it may start at any seq (feed.pending's unknown_base), and its
        # seq is kept (meta first_seq): one below it, loaded later, is refused. Nor does
        # it say which deltas it holds: there an op whose change Redis holds already is
        # a no-op (_RedisDelta.reflected), and one below first_seq skipped, not refused
        headerless = meta.get("header") == b"0"
        unknown = last == 0 and headerless
        first = int(meta.get("first_seq", b"0")) if headerless else 0
        base = Path(meta.get("source", b"").decode()).name
        state = _RedisDelta(client, keys, version, meta, keyer, headerless)
        _refuse_before_first(path, ops, first, base, state.reflected)
        _refuse_rewritten(client, keys, version, path, ops, last)
        _refuse_gap(path, ops, min(op.seq for op in ops) - 1 if unknown and ops else last)
        todo = pending(ops, last, unknown_base=unknown, first_seq=first, base=base,
                       remedy=_REDIS_BEFORE_FIRST_REMEDY, reflected=state.reflected)  # fmt: skip
        if not todo:  # applied before: but perhaps not yet by any Redis replica
            await_replica(client, keys, f"delta {path.name} (applied before: seq {last})",
                          started_on)  # fmt: skip
            return DeltaResult(version, 0, last)
        problems = [e for e in (state.apply(op) for op in todo) if e is not None]
        if problems:
            raise LoadRejected(str(path), problems)
        previous = float(meta.get("source_timestamp", b"0"))
        state.commit(todo, delta_source_time(todo, previous), lock, todo[0].seq if unknown else 0)
        await_replica(client, keys, f"delta seq {todo[0].seq}..{todo[-1].seq}", started_on)
        return DeltaResult(version, len(todo), todo[-1].seq)
    finally:
        lock.release()


def _unmasked(match: list[Any]) -> list[Any]:
    """A stored match (``encode_match``) without its masked number."""
    return [*match[:8], "", *match[9:]]
