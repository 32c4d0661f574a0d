"""Publishing list files to Redis: snapshots as new versions, deltas on top.

The loader's side of ``loader.index_redis`` (which describes the layout).
A file is validated whole before anything is written: a snapshot with the
memory loader's own ``build_snapshot``, a delta against the current version
in Redis. A snapshot is written under its own version prefix, then made
current in one MULTI/EXEC; a delta's changes, its stream records and the new
last seq go in one MULTI/EXEC. One load runs at a time (a lock key).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loader.index_memory import entry_id_hash, matches_of
from loader.index_redis import (
    LOCK_MS,
    Client,
    RedisKeys,
    bucket_bits,
    bucket_of,
    check_fingerprint,
    collect_garbage,
    counts_json,
    encode_match,
    read_meta,
)
from loader.listfile import DeltaKind, DeltaOp, read_delta
from loader.versions import Progress, build_snapshot
from shixin_domain.errors import ConfigurationError, LoadRejected, RowError
from shixin_domain.keys import SubjectKeyer
from shixin_domain.model import EntryStatus


class _Lock:
    """One load at a time across machines: SET NX with a token, released only by its owner."""

    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, client: Client, keys: RedisKeys) -> None:
        self.client = client
        self.key = keys.lock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"

    def __enter__(self) -> _Lock:
        if not self.client.set(self.key, self.token, nx=True, px=LOCK_MS):
            holder = self.client.get(self.key)
            raise ConfigurationError(f"another load holds {self.key} ({holder!r}); try again later")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.eval(self._RELEASE, 1, self.key, self.token)


def publish_snapshot(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys | None = None,
    progress: Progress | None = None,
) -> str:  # fmt: skip
    """Validate ``path`` whole, write it as a new version, make it current; its name."""
    keys = keys or RedisKeys()
    view = build_snapshot(path, keyer, progress)  # LoadRejected before any write
    base, info = view.base, view.info
    version = info.version
    bits = bucket_bits(len(base.k_hi))
    ebits = bucket_bits(base.entries)
    with _Lock(client, keys):
        previous = client.get(keys.current)
        last_seq = 0
        if previous is not None:
            last_seq = int(read_meta(client, keys, previous.decode()).get("last_seq", b"0"))
        pipe = client.pipeline(transaction=False)
        entry_keys: dict[int, bytearray] = {}
        bucket, fields = -1, {}  # type: tuple[int, dict[bytes, list[Any]]]
        for i in range(len(base.k_hi)):
            hi = base.k_hi[i]
            b = bucket_of(hi, bits)
            if b != bucket:
                _flush(pipe, keys.subjects(version, bucket), fields)
                bucket, fields = b, {}
            key16 = ((hi << 64) | base.k_lo[i]).to_bytes(16, "big")
            match = view.match_at(i)
            assert match is not None
            fields.setdefault(key16, []).append(encode_match(match))
            entry_keys.setdefault(base.m_entry[i], bytearray()).extend(key16)
            if len(pipe) >= 500:
                pipe.execute()
        _flush(pipe, keys.subjects(version, bucket), fields)
        by_bucket: dict[int, dict[bytes, bytes]] = {}
        for row, key_bytes in entry_keys.items():
            entry_id = base.texts(row)[0]
            b = bucket_of(entry_id_hash(entry_id), ebits)
            by_bucket.setdefault(b, {})[entry_id.encode()] = bytes(key_bytes)
        for b, mapping in by_bucket.items():
            pipe.hset(keys.entries(version, b), mapping=mapping)
            if len(pipe) >= 500:
                pipe.execute()
        pipe.set(keys.bloom(version), base.bloom.save_bytes())
        pipe.hset(
            keys.meta(version),
            mapping={
                "version": version, "source": info.source, "loaded_at": info.loaded_at,
                "source_timestamp": info.source_timestamp, "last_seq": last_seq,
                "snapshot_seq": last_seq, "counts": counts_json(info.counts),
                "subject_keys": info.counts.subject_keys, "bucket_bits": bits,
                "entry_bits": ebits, "fingerprint": keyer.fingerprint,
            },
        )  # fmt: skip
        pipe.execute()
        flip = client.pipeline(transaction=True)
        flip.set(keys.current, version)
        flip.sadd(keys.versions, version)
        flip.publish(keys.announce, f"version {version}")
        flip.execute()
    collect_garbage(client, keys)
    return version


def _flush(pipe: Any, key: str, fields: dict[bytes, list[Any]]) -> None:
    if fields:
        pipe.hset(key, mapping={k: orjson.dumps(v) for k, v in fields.items()})


@dataclass
class DeltaResult:
    """What a delta load did: the version it applied to, ops applied, the last seq."""

    version: str
    applied: int
    last_seq: int


class _RedisDelta:
    """A delta file applied to local copies of what it touches, then written at once."""

    def __init__(self, client: Client, keys: RedisKeys, version: str,
                 meta: dict[str, bytes], keyer: SubjectKeyer) -> None:  # fmt: skip
        self.client, self.keys, self.version, self.keyer = client, keys, version, keyer
        self.bits = int(meta["bucket_bits"])
        self.ebits = int(meta["entry_bits"])
        self.values: dict[bytes, list[list[Any]]] = {}
        self.entries: dict[str, list[bytes] | None] = {}
        self.bloom_adds: list[int] = []
        self.counts: dict[tuple[int, int], int] = {
            (t, s): n for t, s, n in orjson.loads(meta.get("counts", b"[]"))
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
        for key16 in keys16:
            self.values[key16] = [m for m in self._value(key16) if m[0] != entry_id]
        self.entries[entry_id] = None
        return True

    def apply(self, op: DeltaOp) -> RowError | None:
        if op.op is DeltaKind.LIST:
            assert op.entry is not None
            self._drop(op.entry_id)
            pairs = matches_of(op.entry, self.keyer)
            for key, match in pairs:
                key16 = key.to_bytes(16, "big")
                self._value(key16).append(encode_match(match))
                self.bloom_adds.append(key >> 64)
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
        assert op.exemption is not None
        e = op.exemption
        wire = [int(e.channel), e.first_day, e.last_day]
        if op.op is DeltaKind.UNEXEMPT and wire not in matches[0][11]:
            return RowError(op.line, "exemption", f"entry {op.entry_id!r} has no such exemption")
        for m in matches:
            m[11] = m[11] + [wire] if op.op is DeltaKind.EXEMPT else [x for x in m[11] if x != wire]
        return None

    def commit(self, ops: list[DeltaOp], source_timestamp: float) -> None:
        pipe = self.client.pipeline(transaction=True)
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
        adds = iter(self.bloom_adds)
        for op in ops:
            fields: dict[str, Any] = {"seq": op.seq, "op": op.op.value, "entry_id": op.entry_id}
            if op.op is DeltaKind.LIST:
                assert op.entry is not None
                n = len(op.entry.subjects())
                fields["bloom"] = ",".join(f"{next(adds):x}" for _ in range(n))
            pipe.xadd(stream, fields)
        rows = [[t, s, n] for (t, s), n in sorted(self.counts.items()) if n]
        pipe.hset(
            self.keys.meta(self.version),
            mapping={"last_seq": ops[-1].seq, "counts": orjson.dumps(rows),
                     "subject_keys": self.subject_keys, "source_timestamp": source_timestamp},
        )  # fmt: skip
        pipe.publish(self.keys.announce, f"delta {self.version} {ops[-1].seq}")
        pipe.execute()


def publish_delta(
    client: Client, path: Path, keyer: SubjectKeyer, keys: RedisKeys | None = None
) -> DeltaResult:
    """Validate a delta file against the current version and apply it whole, or not at all."""
    keys = keys or RedisKeys()
    ops, errors = read_delta(path)
    if errors:
        raise LoadRejected(str(path), errors)
    with _Lock(client, keys):
        current = client.get(keys.current)
        if current is None:
            raise LoadRejected(str(path), [RowError(0, "", "no snapshot in Redis yet")])
        version = current.decode()
        meta = read_meta(client, keys, version)
        check_fingerprint(meta, keyer, version)
        last = int(meta.get("last_seq", b"0"))
        todo = [op for op in ops if op.seq > last]
        if not todo:
            return DeltaResult(version, 0, last)
        state = _RedisDelta(client, keys, version, meta, keyer)
        problems = [e for e in (state.apply(op) for op in todo) if e is not None]
        if problems:
            raise LoadRejected(str(path), problems)
        state.commit(todo, path.stat().st_mtime)
        return DeltaResult(version, len(todo), todo[-1].seq)
