"""Who may ask what: callers, their channel scopes and roles, and their limits.

The list is public but the service is not: a hotel must not probe as an
airline, and nobody may scrape the list through it in bulk.

- API keys come as gRPC metadata ``authorization: Bearer <key>``. The keys
  file stores only each key's SHA-256 (keys are 256-bit random tokens made by
  ``shixin-check keys add``, so a plain hash is enough), with the principal it
  names, its channels and its roles (``check``, ``status``, ``admin``).
- Mutual TLS: a gateway presenting a client certificate signed by the
  configured CA is the principal its certificate's common name names in the
  keys file (``tls_principals``).
- Limits: a token bucket per principal (a batch costs one token per check);
  and a watch on how many distinct identities each principal checks per
  window, flagged in the audit log and counted, and throttled if configured.

With no keys file and no client CA, authentication is off: every caller is
the ``anonymous`` principal with every channel and role (and the server binds
only to loopback unless told ``--insecure``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shixin_domain.errors import (
    ConfigurationError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from shixin_domain.model import Channel

ROLES = frozenset({"check", "status", "admin"})
ALL_CHANNELS = frozenset(Channel)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return "sk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """A caller as the keys file describes it."""

    name: str
    channels: frozenset[Channel] = ALL_CHANNELS
    roles: frozenset[str] = ROLES
    rate_per_second: float = 0.0  # 0: no rate limit
    burst: int = 0

    def require_role(self, role: str) -> None:
        if role not in self.roles:
            raise PermissionDenied(f"principal {self.name!r} lacks the role {role!r}")

    def require_channel(self, channel: Channel) -> None:
        if channel not in self.channels:
            raise PermissionDenied(
                f"channel {channel.name} is outside the scope of principal {self.name!r}"
            )


ANONYMOUS = Principal("anonymous")


def _principal(entry: dict[str, Any], where: str) -> Principal:
    name = entry.get("principal")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: principal is required")
    raw_channels = entry.get("channels", [])
    if raw_channels == "*":
        channels = ALL_CHANNELS
    else:
        try:
            channels = frozenset(Channel[c] for c in raw_channels)
        except (KeyError, TypeError):
            raise ConfigurationError(f"{where}: channels must be '*' or channel names") from None
    roles = frozenset(entry.get("roles", ["check"]))
    if not roles <= ROLES:
        raise ConfigurationError(f"{where}: roles must be among {sorted(ROLES)}")
    rate = float(entry.get("rate_per_second", 0))
    burst = int(entry.get("burst", max(1, int(rate))))
    if rate < 0 or burst < 0:
        raise ConfigurationError(f"{where}: rate_per_second and burst must not be negative")
    return Principal(name, channels, roles, rate, burst)


@dataclass
class KeyRing:
    """The keys file, loaded: key hashes and certificate names to principals."""

    by_hash: dict[str, Principal] = field(default_factory=dict)
    by_common_name: dict[str, Principal] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"--keys-file / SHIXIN_KEYS_FILE: {path}: {exc}") from exc
        ring = cls()
        for i, entry in enumerate(data.get("keys", [])):
            where = f"{path}: keys[{i}]"
            digest = entry.get("sha256", "")
            if not (isinstance(digest, str) and len(digest) == 64):
                raise ConfigurationError(f"{where}: sha256 must be 64 hex characters")
            ring.by_hash[digest.lower()] = _principal(entry, where)
        for i, entry in enumerate(data.get("tls_principals", [])):
            where = f"{path}: tls_principals[{i}]"
            common_name = entry.get("common_name")
            if not isinstance(common_name, str) or not common_name:
                raise ConfigurationError(f"{where}: common_name is required")
            ring.by_common_name[common_name] = _principal(entry, where)
        return ring


def add_key(path: Path, principal: str, channels: Iterable[str] | str, roles: Iterable[str],
            rate_per_second: float = 0.0, burst: int = 0) -> str:  # fmt: skip
    """Append a new key to the keys file (created if missing); the key, shown once."""
    data: dict[str, Any] = {"keys": [], "tls_principals": []}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
    key = new_key()
    entry = {
        "principal": principal,
        "sha256": key_hash(key),
        "channels": channels if channels == "*" else sorted(channels),
        "roles": sorted(roles),
        "rate_per_second": rate_per_second,
        "burst": burst,
    }
    _principal(entry, str(path))  # refuse what could not be loaded
    data.setdefault("keys", []).append(entry)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


@dataclass
class EnumerationWatch:
    """Distinct identities per principal per window; flags once per window."""

    threshold: int = 0  # 0: off
    window: float = 60.0
    throttle: bool = False
    flagged: dict[str, int] = field(default_factory=dict)  # principal -> windows flagged
    _seen: dict[str, tuple[int, set[int]]] = field(default_factory=dict)

    def observe(self, principal: str, key: int, now: float) -> bool:
        """Record one checked identity; True when this crosses the threshold now."""
        slot = int(now // self.window)
        current = self._seen.get(principal)
        if current is None or current[0] != slot:
            current = (slot, set())
            self._seen[principal] = current
        keys = current[1]
        if len(keys) > self.threshold:
            return False  # already flagged in this window: stop growing
        keys.add(key >> 64)
        if len(keys) > self.threshold:
            self.flagged[principal] = self.flagged.get(principal, 0) + 1
            return True
        return False

    def throttled(self, principal: str, now: float) -> bool:
        current = self._seen.get(principal)
        return (
            self.throttle
            and current is not None
            and current[0] == int(now // self.window)
            and len(current[1]) > self.threshold
        )


class Gate:
    """Authentication, scope and limits for each call, in one place.

    Runs on the server's event-loop thread only, so it holds no lock.
    """

    def __init__(
        self,
        ring: KeyRing | None,
        watch: EnumerationWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_flag: Callable[[str, int], None] | None = None,
    ) -> None:
        self.ring = ring
        self.enabled = ring is not None
        self.watch = watch or EnumerationWatch()
        self.clock = clock
        self.on_flag = on_flag or (lambda principal, count: None)
        self._buckets: dict[str, _Bucket] = {}

    def principal(self, metadata: Iterable[tuple[str, Any]], common_name: str = "") -> Principal:
        if self.ring is None:
            return ANONYMOUS
        token = ""
        for name, value in metadata:
            if name == "authorization":
                token = value if isinstance(value, str) else ""
                break
        if token:
            scheme, _, key = token.partition(" ")
            if scheme.lower() != "bearer" or not key:
                raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
            found = self.ring.by_hash.get(key_hash(key.strip()))
            if found is None:
                raise Unauthenticated("unknown API key")
            return found
        if common_name:
            found = self.ring.by_common_name.get(common_name)
            if found is None:
                raise Unauthenticated(f"client certificate {common_name!r} names no principal")
            return found
        raise Unauthenticated(
            "credentials required: 'authorization: Bearer <key>' or a client certificate"
        )

    def charge(self, principal: Principal, checks: int) -> None:
        """Take ``checks`` tokens from the principal's bucket, or ``RateLimited``."""
        if principal.rate_per_second <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(principal.name)
        capacity = float(max(principal.burst, 1))
        if bucket is None:
            bucket = self._buckets[principal.name] = _Bucket(capacity, now)
        bucket.tokens = min(
            capacity, bucket.tokens + (now - bucket.stamp) * principal.rate_per_second
        )
        bucket.stamp = now
        if bucket.tokens < checks:
            wait = (checks - bucket.tokens) / principal.rate_per_second
            raise RateLimited(
                f"principal {principal.name!r} is over {principal.rate_per_second:g} checks/s; "
                f"retry in {wait * 1000:.0f} ms",
                wait,
            )
        bucket.tokens -= checks

    def observe(self, principal: Principal, key: int) -> None:
        """Count one checked identity toward the enumeration watch."""
        watch = self.watch
        if not watch.threshold:
            return
        now = time.time()
        if watch.observe(principal.name, key, now):
            self.on_flag(principal.name, watch.flagged[principal.name])
        if watch.throttled(principal.name, now):
            raise RateLimited(
                f"principal {principal.name!r} checked more than {watch.threshold} distinct "
                f"identities in {watch.window:g}s: throttled until the window ends",
                watch.window - now % watch.window,
            )
