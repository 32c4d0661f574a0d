"""Redis-held list versions, followed live by many server replicas.

Layout (``P`` is the key prefix, ``shixin`` by default; ``V`` a version):

- ``P:current``: the version replicas should serve (flipped in MULTI/EXEC).
- ``P:versions``: every version still in Redis (a set).
- ``P:v:V:meta``: hash: source, times, counts, last delta seq, bucket bits,
  the fingerprint of the key secret it was built with.
- ``P:v:V:bloom``: the serialised Bloom filter (rbloom, items = high 64 bits
  of the subject keys, stable ``int`` hash: the same in every process).
- ``P:v:V:s:<bucket>``: hashes of subject key (16 bytes) -> its matches.
- ``P:v:V:e:<bucket>``: hashes of entry_id -> its subject keys (for deltas).
- ``P:v:V:deltas``: the stream of applied delta ops, in seq order.
- ``P:replicas``: hash of replica id -> what it serves, refreshed every second.
- ``P:announce``: pub/sub channel announcing new versions and deltas.

No plaintext ID number is written: only keyed hashes and masked IDs.

This module is the replicas' side: the layout, ``RedisView`` (a version as
a ``ListView``) and ``RedisFollower`` (an ``IndexSource`` that follows the
current version and its deltas). Replicas answer Bloom negatives from their
local filter and ask Redis only for positives; when Redis cannot be
reached, look-ups raise ``IndexUnavailable`` and the decision falls back to
the configured answer (never a silent ALLOW). Old versions are deleted once
no live replica reports serving them. Loads are ``loader.publish_redis``.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from rbloom import Bloom

from loader.background import Background
from shixin_domain.errors import ConfigurationError, IndexUnavailable
from shixin_domain.index import Counts, ListedMatch, VersionInfo
from shixin_domain.keys import SubjectKeyer
from shixin_domain.model import Channel, EntryStatus, Exemption, ListType, Role

#: redis-py types every reply as ``bytes | str``; this project never sets
#: decode_responses, so replies are bytes: the client is typed loosely.
Client = Any

KEYS_PER_BUCKET = 48
#: A replica whose heartbeat is older than this no longer protects its version.
LIVE_SECONDS = 15.0
LOCK_MS = 600_000


class RedisKeys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = "shixin") -> None:
        self.prefix = prefix
        self.current = f"{prefix}:current"
        self.versions = f"{prefix}:versions"
        self.replicas = f"{prefix}:replicas"
        self.announce = f"{prefix}:announce"
        self.lock = f"{prefix}:lock"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:meta"

    def bloom(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:bloom"

    def deltas(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:deltas"

    def subjects(self, version: str, bucket: int) -> str:
        return f"{self.prefix}:v:{version}:s:{bucket:x}"

    def entries(self, version: str, bucket: int) -> str:
        return f"{self.prefix}:v:{version}:e:{bucket:x}"

    def version_pattern(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:*"


def connect(url: str, timeout: float = 0.5) -> Client:
    """A client that fails fast: a check must never hang on a dead Redis."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def bucket_bits(n_keys: int) -> int:
    return max(0, math.ceil(math.log2(max(n_keys, 1) / KEYS_PER_BUCKET)))


def bucket_of(value: int, bits: int) -> int:
    return value >> (64 - bits) if bits else 0


# --- matches as stored values -------------------------------------------------


def encode_match(m: ListedMatch) -> list[Any]:
    return [
        m.entry_id, int(m.list_type), int(m.status), int(m.role), m.name_key, m.case_number,
        m.court, m.organization_name, m.masked_id, m.listed_on, m.valid_until,
        [[int(e.channel), e.first_day, e.last_day] for e in m.exemptions],
    ]  # fmt: skip


def decode_match(a: list[Any]) -> ListedMatch:
    return ListedMatch(
        entry_id=a[0], list_type=ListType(a[1]), status=EntryStatus(a[2]), role=Role(a[3]),
        name_key=a[4], case_number=a[5], court=a[6], organization_name=a[7], masked_id=a[8],
        listed_on=a[9], valid_until=a[10],
        exemptions=tuple(Exemption(Channel(c), f, u) for c, f, u in a[11]),
    )  # fmt: skip


def decode_matches(raw: bytes | None) -> list[ListedMatch]:
    return [decode_match(a) for a in orjson.loads(raw)] if raw else []


def counts_json(counts: Counts) -> bytes:
    return orjson.dumps([[int(t), int(s), n] for t, s, n in counts.by_type_status])


def _counts_from(raw: bytes | None, subject_keys: int) -> Counts:
    rows = orjson.loads(raw) if raw else []
    return Counts(tuple((ListType(t), EntryStatus(s), n) for t, s, n in rows if n), subject_keys)


# --- versions in Redis ---------------------------------------------------------


def read_meta(client: Client, keys: RedisKeys, version: str) -> dict[str, bytes]:
    raw = client.hgetall(keys.meta(version))
    return {k.decode(): v for k, v in raw.items()}


def check_fingerprint(meta: dict[str, bytes], keyer: SubjectKeyer, version: str) -> None:
    theirs = meta.get("fingerprint", b"").decode()
    if theirs != keyer.fingerprint:
        raise ConfigurationError(
            f"version {version} was built with another key secret (fingerprint {theirs}, "
            f"ours {keyer.fingerprint}): every loader and replica needs the same secret"
        )


def collect_garbage(client: Client, keys: RedisKeys, now: float | None = None) -> list[str]:
    """Delete versions that are not current and that no live replica serves."""
    now = time.time() if now is None else now
    current = client.get(keys.current)
    in_use = {current.decode()} if current else set()
    for replica_id, raw in client.hgetall(keys.replicas).items():
        record = orjson.loads(raw)
        if now - record.get("at", 0) < LIVE_SECONDS:
            in_use.add(record.get("version", ""))
        elif now - record.get("at", 0) > 3600:
            client.hdel(keys.replicas, replica_id)
    deleted = []
    for raw_version in client.smembers(keys.versions):
        version = raw_version.decode()
        if version in in_use:
            continue
        batch = []
        for key in client.scan_iter(match=keys.version_pattern(version), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.srem(keys.versions, version)
        deleted.append(version)
    return deleted


# --- replicas -----------------------------------------------------------------


class RedisView:
    """One Redis-held version as a replica sees it. Implements ``ListView``."""

    __slots__ = ("info", "version", "_bloom", "_client", "_keys", "_bits", "_meta_key")

    def __init__(self, info: VersionInfo, version: str, bloom: Bloom, client: Client,
                 keys: RedisKeys, bits: int) -> None:  # fmt: skip
        self.info = info
        self.version = version
        self._bloom = bloom
        self._client = client
        self._keys = keys
        self._bits = bits
        self._meta_key = keys.meta(version)

    def might_contain(self, key: int) -> bool:
        return (key >> 64) in self._bloom

    def look_up(self, key: int) -> list[ListedMatch]:
        return self.look_up_many((key,))[0]  # type: ignore[return-value]

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            hi = key >> 64
            pipe.hget(
                self._keys.subjects(self.version, bucket_of(hi, self._bits)),
                key.to_bytes(16, "big"),
            )
        pipe.exists(self._meta_key)  # a version deleted under us must not read as "not listed"
        try:
            *values, exists = pipe.execute()
        except redis.RedisError as exc:
            raise IndexUnavailable(f"redis: {exc}") from exc
        if not exists:
            raise IndexUnavailable(f"version {self.version} is no longer in Redis")
        return [decode_matches(v) for v in values]


class RedisFollower(Background):
    """Keeps a replica on Redis's current version and its deltas. An ``IndexSource``.

    A background thread polls the current-version pointer and reads the delta
    stream (blocking up to ``poll`` seconds, so a delta arrives within that),
    adds listed keys to the local Bloom filter, and registers this replica
    every second. On a Redis error it keeps the version it has (negatives
    still answered locally), retries with backoff up to 2 s, and catches up on
    missed deltas from the stream when Redis is back.
    """

    def __init__(
        self, url: str, keyer: SubjectKeyer, keys: RedisKeys | None = None,
        replica_id: str = "", on_event: Callable[[str, str], None] | None = None,
        poll: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__("redis-follower")
        self.keys = keys or RedisKeys()
        self.client = connect(url)
        self.keyer = keyer
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.on_event = on_event or (lambda what, detail: None)
        self.poll = poll
        self.reachable = False
        self.upstream_version = ""
        self.upstream_seq = 0
        self._view: RedisView | None = None
        self._bloom: Bloom | None = None
        self._stream_id = b"0-0"
        self._last_beat = 0.0

    def current(self) -> RedisView | None:
        return self._view

    def stop(self) -> None:
        super().stop()
        try:
            self.client.hdel(self.keys.replicas, self.replica_id)
        except redis.RedisError:
            pass
        self.client.close()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.sync_once(block=True)
                backoff = 0.05
            except redis.RedisError as exc:
                if self.reachable:
                    self.on_event("redis-down", str(exc))
                self.reachable = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except ConfigurationError as exc:
                self.on_event("refused", str(exc))
                self._stop.wait(1.0)

    def sync_once(self, block: bool = False) -> None:
        """One round: switch version if needed, apply new deltas, heartbeat."""
        raw = self.client.get(self.keys.current)
        if not self.reachable:
            self.on_event("redis-up", "")
        self.reachable = True
        if raw is None:
            self._stop.wait(self.poll if block else 0)
            return
        version = raw.decode()
        if self._view is None or self._view.version != version:
            self._switch(version)
        assert self._view is not None
        stream = self.keys.deltas(version)
        timeout = int(self.poll * 1000) if block else None
        reply = self.client.xread({stream: self._stream_id}, count=1000, block=timeout)
        if reply:
            self._apply(version, reply[0][1])
        now = time.time()
        if now - self._last_beat >= 1.0:
            self._heartbeat(now)

    def _switch(self, version: str) -> None:
        meta = read_meta(self.client, self.keys, version)
        raw_bloom = self.client.get(self.keys.bloom(version))
        if not meta or raw_bloom is None:
            return  # being written or just deleted: the pointer will say
        check_fingerprint(meta, self.keyer, version)
        self._bloom = Bloom.load_bytes(raw_bloom, int)
        self._stream_id = b"0-0"
        entries = self.client.xrange(self.keys.deltas(version))
        self._install(version, meta, int(meta.get("last_seq", b"0")))
        if entries:
            self._apply(version, entries)
        self.on_event("version", version)
        self._heartbeat(time.time())
        collect_garbage(self.client, self.keys)

    def _apply(self, version: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self._bloom is not None
        for stream_id, fields in entries:
            for hi in filter(None, fields.get(b"bloom", b"").decode().split(",")):
                self._bloom.add(int(hi, 16))  # before this replica reads the version as changed
            self._stream_id = stream_id
        meta = read_meta(self.client, self.keys, version)
        seq = int(entries[-1][1][b"seq"])
        self._install(version, meta, max(seq, int(meta.get("last_seq", b"0"))))

    def _install(self, version: str, meta: dict[str, bytes], seq: int) -> None:
        assert self._bloom is not None
        snapshot_seq = int(meta.get("snapshot_seq", b"0"))
        info = VersionInfo(
            version=version if seq == snapshot_seq else f"{version}+{seq}",
            source=meta.get("source", b"").decode(),
            loaded_at=float(meta.get("loaded_at", b"0")),
            source_timestamp=float(meta.get("source_timestamp", b"0")),
            last_delta_seq=seq,
            counts=_counts_from(meta.get("counts"), int(meta.get("subject_keys", b"0"))),
        )
        self.upstream_version = version
        self.upstream_seq = int(meta.get("last_seq", b"0"))
        self._view = RedisView(
            info, version, self._bloom, self.client, self.keys, int(meta["bucket_bits"])
        )

    def _heartbeat(self, now: float) -> None:
        view = self._view
        record = {
            "version": view.version if view else "",
            "seq": view.info.last_delta_seq if view else 0,
            "at": now,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.replicas, self.replica_id, orjson.dumps(record))
        pipe.get(self.keys.current)
        _, current = pipe.execute()
        if current is not None:
            self.upstream_version = current.decode()
            self.upstream_seq = int(
                read_meta(self.client, self.keys, self.upstream_version).get("last_seq", b"0")
            )
        self._last_beat = now

    def replica_status(self) -> dict[str, object]:
        return {
            "index_backend": "redis",
            "replica_id": self.replica_id,
            "upstream_version": self.upstream_version,
            "upstream_last_delta_seq": self.upstream_seq,
            "lag_deltas": self.lag(),
            "index_reachable": self.reachable,
        }

    def lag(self) -> int:
        """Deltas this replica is behind Redis; -1 when Redis cannot be reached."""
        view = self._view
        if not self.reachable:
            return -1
        if view is None:
            return self.upstream_seq
        return max(0, self.upstream_seq - view.info.last_delta_seq)


def replicas(client: Client, keys: RedisKeys | None = None) -> list[dict[str, Any]]:
    """Every registered replica, what it serves, and how far behind it is."""
    keys = keys or RedisKeys()
    current = client.get(keys.current)
    version = current.decode() if current else ""
    last = int(read_meta(client, keys, version).get("last_seq", b"0")) if version else 0
    now = time.time()
    out = []
    for replica_id, raw in sorted(client.hgetall(keys.replicas).items()):
        record = orjson.loads(raw)
        behind = "version" if record.get("version") != version else last - record.get("seq", 0)
        out.append(
            {
                "replica": replica_id.decode(),
                "version": record.get("version", ""),
                "seq": record.get("seq", 0),
                "seen_seconds_ago": round(now - record.get("at", 0), 1),
                "behind": behind,
            }
        )
    return out


def redis_status(client: Client, keys: RedisKeys | None = None) -> dict[str, Any]:
    keys = keys or RedisKeys()
    current = client.get(keys.current)
    if current is None:
        return {"version": "", "last_seq": 0, "replicas": replicas(client, keys)}
    version = current.decode()
    meta = read_meta(client, keys, version)
    return {
        "version": version,
        "last_seq": int(meta.get("last_seq", b"0")),
        "counts": orjson.loads(meta.get("counts", b"[]")),
        "source": meta.get("source", b"").decode(),
        "versions": sorted(v.decode() for v in client.smembers(keys.versions)),
        "replicas": replicas(client, keys),
    }
