"""Who may ask what: callers, their channel scopes and roles, and their limits.

The list is public but the service is not: a hotel must not probe as an
airline, and nobody may scrape the list through it in bulk.

- API keys come as gRPC metadata ``authorization: Bearer <key>``. The keys
  file stores only each key's SHA-256 (keys are 256-bit random tokens made by
  ``shixin-check keys add``, so a plain hash is enough), with the principal it
  names, its channels and its roles (``check``, ``status``, ``prefilter``,
  ``admin``).
- Mutual TLS: a gateway presenting a client certificate signed by the
  configured CA is the principal its certificate's common name names in the
  keys file (``tls_principals``).
- Limits: a token bucket per principal (a batch costs one token per check,
  charged only once every check is valid and within the caller's channels;
  the bucket holds ``burst`` tokens, by default ``default_burst(rate)``, so a
  batch larger than the burst is refused outright, never "retry later"); and
  a watch on how many distinct identities each principal checks per window,
  flagged in the audit log and counted, and throttled if configured.
- The keys file is edited while the server runs (``keys add``/``remove``
  replace it atomically); ``KeysWatcher`` reloads it when it changes or on
  SIGHUP, and a file that does not load leaves the keys in force. A reload
  reaches open streams too: each finds its caller afresh at its next message
  (``Gate.generation``).

Every refusal raised here carries a stable ``reason`` (``REFUSAL_REASONS``).

With no keys file and no client CA, authentication is off: every caller is
the ``anonymous`` principal with every channel and role (and the server binds
only to loopback unless told ``--insecure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shixin_check.domain.errors import (
    ConfigurationError,
    LimitExceeded,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from shixin_check.domain.model import Channel
from shixin_check.domain.system import cannot_write, make_it_ours, others_may_write
from shixin_check.loader.background import Background
from shixin_check.server.settings import MAX_BATCH

#: check: the check RPCs; status: GetListStatus; prefilter: GetPrefilter (a gateway's
#: Bloom filter, answered locally only for channels it may also check); admin: reserved.
ROLES = frozenset({"check", "status", "prefilter", "admin"})
ALL_CHANNELS = frozenset(Channel)

#: The ``reason`` of every refusal raised here, stable for callers to branch on.
REFUSAL_REASONS = (
    "API_KEY_MISSING",  # no authorization metadata and no client certificate
    "API_KEY_MALFORMED",  # authorization metadata that is not 'Bearer <key>'
    "API_KEY_UNKNOWN",  # a key the keys file does not hold (never issued, or removed)
    "CERTIFICATE_UNKNOWN",  # a client certificate whose common name names no principal, or with none
    "ROLE_NOT_ALLOWED",  # the principal lacks the method's role
    "CHANNEL_NOT_ALLOWED",  # a channel outside the principal's scope
    "RATE_LIMITED",  # over the principal's rate: retry after the delay given
    "BATCH_OVER_BURST",  # a batch larger than the principal's burst: send smaller ones
    "ENUMERATION_THROTTLED",  # too many distinct identities this window
)


def default_burst(rate_per_second: float) -> int:
    """The bucket of a key given a rate but no burst: two seconds' worth of
    checks, and never less than one full batch (``MAX_BATCH``), so a batch
    the server accepts is never refused for its size alone."""
    return max(math.ceil(2 * rate_per_second), MAX_BATCH)


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
    burst: int = 0  # 0: default_burst(rate_per_second)

    @property
    def bucket_size(self) -> int:
        """The most checks this principal may send at once (with a rate)."""
        return self.burst or default_burst(self.rate_per_second)

    def require_role(self, role: str) -> None:
        if role not in self.roles:
            message = f"principal {self.name!r} lacks the role {role!r}"
            raise PermissionDenied(message).with_reason("ROLE_NOT_ALLOWED")

    def require_channel(self, channel: Channel) -> None:
        if channel not in self.channels:
            message = f"channel {channel.name} is outside the scope of principal {self.name!r}"
            raise PermissionDenied(message).with_reason("CHANNEL_NOT_ALLOWED")


ANONYMOUS = Principal("anonymous")

#: Unicode categories a principal name may not hold: control and format characters
#: (a newline would split ``keys list``'s row; a zero-width one hides), surrogates, and
#: line and paragraph separators
_UNSEEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def principal_name_problem(name: str) -> str:
    """What is wrong with ``name`` as a new key's principal; "" when nothing.

    ``anonymous`` (in any case) is reserved: it is every caller with authentication
    off, and the caller of every audit record of a refusal for missing or bad
    credentials, so a key naming it would be mistaken for either.
    """
    if not name.strip():
        return "is empty: name who the key is for"
    if name.strip().lower() == ANONYMOUS.name:
        return (
            f"{name!r} is reserved (the caller with authentication off, and of refusals "
            "for missing or bad credentials): choose another name"
        )
    return _unseen_in(name, "a principal")


def _unseen_in(name: str, what: str) -> str:
    """Where ``name`` holds a character that does not show (a control, a format
    character such as U+200B), said for ``what``; "" when it holds none."""
    for at, char in enumerate(name):
        if unicodedata.category(char) in _UNSEEN:
            return (
                f"{name!r} holds an unprintable character (U+{ord(char):04X}) at position "
                f"{at + 1}: {what} is one line of visible characters"
            )
    return ""


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
#: X.509's upper bound on a common name (RFC 5280, ub-common-name): no certificate holds a longer one
COMMON_NAME_MAX = 64


def common_name_problem(name: str) -> str:
    """What is wrong with ``name`` as a new ``tls_principals`` common name; "" when
    nothing. The server compares a client certificate's CN with it exactly, so a
    name no certificate can hold would only ever refuse its gateway."""
    if not name:
        return "is empty: give the CN of the gateway's client certificate"
    if name != name.strip():
        return (
            f"{name!r} starts or ends with a space: the CN is compared exactly; give it as "
            "`openssl x509 -noout -subject -in CERT` shows it"
        )
    unseen = _unseen_in(name, "a common name")
    if unseen:
        return unseen
    if len(name) > COMMON_NAME_MAX:
        return (
            f"is {len(name)} characters long; a certificate's CN holds at most "
            f"{COMMON_NAME_MAX} (RFC 5280), so none could match it"
        )
    return ""


def _principal(entry: object, where: str) -> Principal:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: must be an object")
    name = entry.get("principal")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: principal is required")
    problem = principal_name_problem(name)  # as ``keys add`` holds it: a file edited by hand
    if problem:
        raise ConfigurationError(f"{where}: principal {problem}")
    raw_channels = entry.get("channels", [])
    if raw_channels == "*":
        channels = ALL_CHANNELS
    elif not isinstance(raw_channels, list):  # an object's keys would read as channels
        raise ConfigurationError(f"{where}: channels must be '*' or channel names")
    else:
        try:
            channels = frozenset(Channel[c] for c in raw_channels)
        except (KeyError, TypeError):
            bad = next(
                c for c in raw_channels if not isinstance(c, str) or c not in Channel.__members__
            )
            raise ConfigurationError(
                f"{where}: channels must be '*' or channel names: {bad!r} is none "
                f"({', '.join(Channel.__members__)})"
            ) from None
    raw_roles = entry.get("roles", ["check"])
    if (
        not isinstance(raw_roles, list)
        or not all(isinstance(r, str) for r in raw_roles)  # [[1]] is not hashable
        or not set(raw_roles) <= ROLES
    ):
        raise ConfigurationError(f"{where}: roles must be among {sorted(ROLES)}")
    raw_rate, raw_burst = entry.get("rate_per_second") or 0, entry.get("burst") or 0
    if not all(type(v) in (int, float) for v in (raw_rate, raw_burst)):
        raise ConfigurationError(f"{where}: rate_per_second and burst must be numbers")
    if not all(math.isfinite(v) and v >= 0 for v in (raw_rate, raw_burst)):
        raise ConfigurationError(
            f"{where}: rate_per_second and burst must be finite numbers, 0 or more"
        )
    if raw_burst != int(raw_burst):
        raise ConfigurationError(f"{where}: burst must be a whole number of calls")
    rate, burst = float(raw_rate), int(raw_burst)  # burst 0 (or missing): the default below
    if rate > 0 and burst == 0:
        burst = default_burst(rate)  # files written before the default had burst 0
    return Principal(name, channels, frozenset(raw_roles), rate, burst)


@dataclass(frozen=True)
class KeyChanges:
    """What a reload of the keys file changed, by principal name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # other keys, certificates, channels, roles or limits

    def __str__(self) -> str:
        parts = [
            f"{label} {', '.join(repr(n) for n in names)}"
            for label, names in (
                ("added", self.added), ("removed", self.removed), ("changed", self.changed)
            )
            if names
        ]  # fmt: skip
        return "; ".join(parts) or "no principal changed"


@dataclass
class KeyRing:
    """The keys file, loaded: key hashes and certificate names to principals."""

    by_hash: dict[str, Principal] = field(default_factory=dict)
    by_common_name: dict[str, Principal] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """The ring ``path`` describes, or ``ConfigurationError``: a missing or empty
        file, one that is not a JSON object naming ``keys`` or ``tls_principals``, a bad
        entry (so a half-written or emptied file never reads as "no keys"), or two
        entries for one key or one common name."""
        where = f"--keys-file / SHIXIN_KEYS_FILE: {path}"
        try:
            with path.open("rb") as file:
                unsafe = others_may_write(os.fstat(file.fileno()))
                if unsafe:  # as ssh refuses an authorized_keys file others may write
                    raise ConfigurationError(
                        f"{where}: the file is {unsafe}: another user could grant any key "
                        f"any channel; {make_it_ours(unsafe, path, 'go-w')} (keys add writes "
                        "it 0600)"
                    )
                data = json.loads(file.read().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
        return cls.from_document(data, path)

    @classmethod
    def from_document(cls, data: object, path: Path) -> KeyRing:
        """The ring the keys file's JSON ``data`` describes (``load``'s checks), so
        an edit can be checked before it is written; ``path`` is named in refusals."""
        where = f"--keys-file / SHIXIN_KEYS_FILE: {path}"
        if not isinstance(data, dict) or not ("keys" in data or "tls_principals" in data):
            raise ConfigurationError(f"{where}: must be a JSON object with 'keys' (a list)")
        ring = cls()
        # a second entry for a key or a name would silently replace the first, and
        # whoever that named would be refused what the file grants it
        hash_at: dict[str, int] = {}
        for i, entry in enumerate(_entries(data, "keys", where)):
            at = f"{path}: keys[{i}]"
            digest = entry.get("sha256", "") if isinstance(entry, dict) else ""
            if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
                raise ConfigurationError(f"{at}: sha256 must be 64 hex characters")
            digest = digest.lower()
            principal = _principal(entry, at)
            if digest in hash_at:
                j = hash_at[digest]
                raise ConfigurationError(
                    f"{path}: keys[{j}] (principal {ring.by_hash[digest].name!r}) and keys[{i}] "
                    f"(principal {principal.name!r}) hold the same key (id {key_id(digest)}): "
                    "a key names one principal; remove one of them"
                )
            hash_at[digest] = i
            ring.by_hash[digest] = principal
        name_at: dict[str, int] = {}
        for i, entry in enumerate(_entries(data, "tls_principals", where)):
            at = f"{path}: tls_principals[{i}]"
            common_name = entry.get("common_name") if isinstance(entry, dict) else None
            if not isinstance(common_name, str) or not common_name:
                raise ConfigurationError(f"{at}: common_name is required")
            principal = _principal(entry, at)
            if common_name in name_at:
                j, before = name_at[common_name], ring.by_common_name[common_name]
                raise ConfigurationError(
                    f"{path}: tls_principals[{j}] (principal {before.name!r}) and "
                    f"tls_principals[{i}] (principal {principal.name!r}) name the same "
                    f"common_name {common_name!r}: a certificate names one principal; merge "
                    "the two entries into one or remove one"
                )
            name_at[common_name] = i
            ring.by_common_name[common_name] = principal
        return ring

    def _grants(self) -> dict[str, set[tuple[str, str, Principal]]]:
        """Per principal name: each key hash or certificate name, with what it grants."""
        grants: dict[str, set[tuple[str, str, Principal]]] = {}
        for kind, table in (("key", self.by_hash), ("cn", self.by_common_name)):
            for credential, principal in table.items():
                grants.setdefault(principal.name, set()).add((kind, credential, principal))
        return grants

    def changes_to(self, newer: KeyRing) -> KeyChanges:
        before, after = self._grants(), newer._grants()
        return KeyChanges(
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            changed=tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])),
        )


def _entries(data: dict[str, Any], name: str, where: str) -> list[Any]:
    entries = data.get(name, [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"{where}: {name!r} must be a list")
    return entries


# --- editing the keys file (shixin-check keys ...) ---------------------------


def read_keys_document(path: Path) -> dict[str, Any]:
    """The keys file as JSON, for editing: an empty one if it does not exist yet.

    Refuses (``ConfigurationError``) a file that would not load, so an edit
    never builds on, and overwrites, a damaged file.
    """
    if not path.exists():
        return {"keys": [], "tls_principals": []}
    KeyRing.load(path)
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("keys", [])
    return data


def write_keys_document(path: Path, data: dict[str, Any]) -> None:
    """Replace the keys file atomically (a temporary file, fsync, ``os.replace``),
    mode 0600: a server reloading it reads the old file or the new, never half."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if not path.parent.is_dir():  # else mkstemp's error names its temporary file
        raise ConfigurationError(
            f"--keys-file {path}: the folder {path.parent} does not exist "
            "(or is not a folder): make it first, writable by the server's user alone"
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigurationError(
            f"--keys-file {path}: cannot write in {path.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:  # mkstemp made it 0600
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):  # a full disk: the old file is still whole
            raise cannot_write("--keys-file", path, exc) from exc
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself, on disk
    finally:
        os.close(folder)


def key_id(digest: str) -> str:
    """How a key is named in listings and ``keys remove --key-id``: its hash's start."""
    return digest[:12]


def add_key(path: Path, principal: str, channels: Iterable[str] | str, roles: Iterable[str],
            rate_per_second: float = 0.0, burst: int = 0) -> str:  # fmt: skip
    """Add a new key to the keys file (created if missing); the key, shown once.

    With a rate and no ``burst`` (0), the burst stored is ``default_burst(rate)``.
    A principal name ``principal_name_problem`` refuses is ``ConfigurationError``.
    """
    problem = principal_name_problem(principal)
    if problem:
        raise ConfigurationError(f"principal {problem}")
    data = read_keys_document(path)
    key = new_key()
    if rate_per_second > 0 and burst == 0:
        burst = default_burst(rate_per_second)
    entry = {
        "principal": principal,
        "sha256": key_hash(key),
        "channels": channels if channels == "*" else sorted(channels),
        "roles": sorted(roles),
        "rate_per_second": rate_per_second,
        "burst": burst,
    }
    _principal(entry, str(path))  # refuse what could not be loaded
    data["keys"].append(entry)
    write_keys_document(path, data)
    return key


def add_tls_principal(path: Path, principal: str, common_name: str,
                      channels: Iterable[str] | str, roles: Iterable[str],
                      rate_per_second: float = 0.0, burst: int = 0) -> dict[str, Any]:  # fmt: skip
    """Add a ``tls_principals`` entry to the keys file (created if missing): a client
    certificate whose common name is ``common_name`` is ``principal``, with these
    channels, roles and limits (``add_key``'s). No key is made. The entry written,
    or ``ConfigurationError``: a bad principal or common name, or a common name the
    file already maps (to this principal or another: a certificate names one)."""
    problem = principal_name_problem(principal)
    if problem:
        raise ConfigurationError(f"principal {problem}")
    problem = common_name_problem(common_name)
    if problem:
        raise ConfigurationError(f"common name {problem}")
    data = read_keys_document(path)
    entries = data.setdefault("tls_principals", [])
    for i, entry in enumerate(entries):
        if entry.get("common_name") == common_name:
            owner = entry.get("principal")
            whose = "this principal" if owner == principal else f"principal {owner!r}"
            raise ConfigurationError(
                f"{path}: common name {common_name!r} already names {whose} "
                f"(tls_principals[{i}]): a certificate names one principal; `keys remove "
                f"--common-name {common_name}` first to change it"
            )
    if rate_per_second > 0 and burst == 0:
        burst = default_burst(rate_per_second)
    entry = {
        "principal": principal,
        "common_name": common_name,
        "channels": channels if channels == "*" else sorted(channels),
        "roles": sorted(roles),
        "rate_per_second": rate_per_second,
        "burst": burst,
    }
    entries.append(entry)
    KeyRing.from_document(data, path)  # refuse what the server could not load
    write_keys_document(path, data)
    return entry


def remove_keys(
    path: Path, principal: str = "", key_prefix: str = "", common_name: str = ""
) -> list[str]:
    """Remove the keys (and certificate names) of ``principal``, or the one key whose
    hash starts with ``key_prefix``, or that principal's key with it, or the
    ``tls_principals`` entry of ``common_name`` (of that principal, if also given);
    what was removed, one line each. ``ConfigurationError`` if nothing, or more than
    one key, matches."""
    if not path.exists():
        raise ConfigurationError(f"{path}: no such keys file")
    prefix = key_prefix.lower().removeprefix("sha256:")
    if key_prefix and len(prefix) < 8:
        raise ConfigurationError("--key-id: give at least 8 hex characters of the key's id")
    data = read_keys_document(path)

    def matches(entry: dict[str, Any], kind: str) -> bool:
        if principal and entry.get("principal") != principal:
            return False
        if prefix:
            return kind == "key" and str(entry.get("sha256", "")).lower().startswith(prefix)
        if common_name:
            return kind == "cn" and entry.get("common_name") == common_name
        return True

    removed: list[str] = []
    for kind, section in (("key", "keys"), ("cn", "tls_principals")):
        kept = []
        for entry in data.get(section, []):
            if not matches(entry, kind):
                kept.append(entry)
            elif kind == "key":
                removed.append(f"key {key_id(entry['sha256'].lower())} of {entry['principal']!r}")
            else:
                removed.append(f"certificate {entry['common_name']!r} of {entry['principal']!r}")
        if section in data:
            data[section] = kept
    wanted = f"principal {principal!r}" if principal else ""
    for label, given in (("key id", key_prefix), ("common name", common_name)):
        if given:
            wanted += f"{' with ' if wanted else ''}{label} {given!r}"
    if not removed:
        raise ConfigurationError(f"{path}: nothing matches {wanted}")
    if prefix and len(removed) > 1:
        raise ConfigurationError(
            f"{path}: {wanted} matches {len(removed)} keys: give more of the id"
        )
    write_keys_document(path, data)
    return removed


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


#: Identities a principal's window counts exactly; past it (a threshold above it), the
#: count is estimated from the ``DISTINCT_KEPT`` smallest of their keyed hashes (k minimum
#: values: within ~1% at this k), so that a window holds at most this many, ~100 bytes
#: each, whatever the threshold (up to 10^9) and however many a principal checks
DISTINCT_KEPT = 1 << 14
_HASH_SPACE = float(1 << 64)


class _Distinct:
    """The distinct identities of one principal's window: exact up to ``DISTINCT_KEPT``,
    then the smallest ``DISTINCT_KEPT`` hashes (``heap``: negated, the largest of them on
    top) and an estimate from the largest (k minimum values)."""

    __slots__ = ("slot", "keys", "heap", "over")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.keys: set[int] = set()
        self.heap: list[int] | None = None  # None: counted exactly
        self.over = False  # past the threshold in this window: flagged

    def add(self, value: int) -> None:
        keys, heap = self.keys, self.heap
        if heap is None:
            keys.add(value)
            if len(keys) > DISTINCT_KEPT:  # from now on the smallest only
                smallest = heapq.nsmallest(DISTINCT_KEPT, keys)
                self.keys = set(smallest)
                self.heap = [-v for v in smallest]
                heapq.heapify(self.heap)
        elif value < -heap[0] and value not in keys:
            keys.discard(-heapq.heapreplace(heap, -value))
            keys.add(value)

    def count(self) -> float:
        if self.heap is None:
            return float(len(self.keys))
        return (DISTINCT_KEPT - 1) * _HASH_SPACE / (-self.heap[0] + 1)


@dataclass
class EnumerationWatch:
    """Distinct identities per principal per window; flags once per window. Each
    principal's window holds at most ``DISTINCT_KEPT`` hashes (``_Distinct``)."""

    threshold: int = 0  # 0: off
    window: float = 60.0
    throttle: bool = False
    flagged: dict[str, int] = field(default_factory=dict)  # principal -> windows flagged
    _seen: dict[str, _Distinct] = field(default_factory=dict)

    def forget(self, principal: str) -> None:
        """Drop a removed principal's window (its flag count stays, for status)."""
        self._seen.pop(principal, None)

    def observe(self, principal: str, key: int, now: float) -> bool:
        """Record one checked identity; True when this crosses the threshold now."""
        slot = int(now // self.window)
        current = self._seen.get(principal)
        if current is None or current.slot != slot:
            current = self._seen[principal] = _Distinct(slot)
        if current.over:
            return False  # already flagged in this window: stop growing
        value, keys = key >> 64 & 0xFFFFFFFFFFFFFFFF, current.keys
        if current.heap is None and len(keys) < DISTINCT_KEPT:  # nearly always: exact
            keys.add(value)
            count = float(len(keys))
        else:
            current.add(value)
            count = current.count()
        if count > self.threshold:
            current.over = True
            self.flagged[principal] = self.flagged.get(principal, 0) + 1
            return True
        return False

    def throttled(self, principal: str, now: float) -> bool:
        current = self._seen.get(principal)
        return (
            self.throttle
            and current is not None
            and current.slot == int(now // self.window)
            and current.over
        )


#: distinct ``authorization`` values whose principal a gate remembers, before it starts afresh
_TOKENS_KEPT = 1024


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
        #: the principal of each ``authorization`` value already found in the ring: a
        #: caller sends the same one on every call, and hashing it costs a call ~10 µs
        #: under load. Only keys the ring knows are kept, so unknown ones cannot fill it.
        self._by_token: dict[str, Principal] = {}
        #: bumped by every ``replace_ring``: a stream compares it per message and, when
        #: it moved, finds its caller afresh (a key removed or narrowed mid-stream)
        self.generation = 0
        #: the server requires a client certificate (mutual TLS): a caller with neither a
        #: key nor a common name showed a certificate that has no CN
        self.certificates_required = False

    def principal(self, metadata: Iterable[tuple[str, Any]], common_name: str = "") -> Principal:
        if self.ring is None:
            return ANONYMOUS
        token = ""
        given = 0
        for name, value in metadata:
            if name == "authorization":
                given += 1
                if given == 1:
                    token = value if isinstance(value, str) else ""
                elif value != token:  # two credentials: serving either one would be a guess
                    message = "authorization metadata given twice, with different values"
                    raise Unauthenticated(message).with_reason("API_KEY_MALFORMED")
        if given:  # even empty: a header that is not 'Bearer <key>'
            known = self._by_token.get(token)
            if known is not None:
                return known
            # white space around the value and between its words is ignored, tabs too
            words = token.split(None, 1)
            if len(words) != 2 or words[0].lower() != "bearer":
                message = "authorization metadata must be 'Bearer <key>'"
                raise Unauthenticated(message).with_reason("API_KEY_MALFORMED")
            found = self.ring.by_hash.get(key_hash(words[1].rstrip()))
            if found is None:
                raise Unauthenticated("unknown API key").with_reason("API_KEY_UNKNOWN")
            if len(self._by_token) >= _TOKENS_KEPT:
                self._by_token.clear()
            self._by_token[token] = found
            return found
        if common_name:
            found = self.ring.by_common_name.get(common_name)
            if found is None:
                message = f"client certificate {common_name!r} names no principal"
                raise Unauthenticated(message).with_reason("CERTIFICATE_UNKNOWN")
            return found
        if self.certificates_required:
            raise Unauthenticated(
                "client certificate has no common name (CN), so it names no principal: "
                "give it a CN that tls_principals names, or send 'authorization: Bearer <key>'"
            ).with_reason("CERTIFICATE_UNKNOWN")
        raise Unauthenticated(
            "credentials required: 'authorization: Bearer <key>' or a client certificate"
        ).with_reason("API_KEY_MISSING")

    def replace_ring(self, ring: KeyRing) -> KeyChanges:
        """Serve with ``ring`` from now on (a reloaded keys file); what changed.

        Buckets of principals that remain are kept, so a reload refills no one.
        """
        changes = (self.ring or KeyRing()).changes_to(ring)
        self.ring = ring
        self._by_token = {}  # a removed or changed key must not be found here
        self.enabled = True
        self.generation += 1
        for name in changes.removed:
            self._buckets.pop(name, None)
            self.watch.forget(name)  # its window of identities: no one checks as it now
        return changes

    def charge(self, principal: Principal, checks: int) -> None:
        """Take ``checks`` tokens from the principal's bucket, or ``RateLimited``;
        ``LimitExceeded`` for more checks than the bucket can ever hold."""
        if principal.rate_per_second <= 0:
            return
        size = principal.bucket_size
        if checks > size:  # no wait would let it through: say so, with no retry delay
            raise LimitExceeded(
                f"checks: a batch of {checks} exceeds the burst of {size} for principal "
                f"{principal.name!r}; send at most {size} per batch"
            ).with_reason("BATCH_OVER_BURST")
        now = self.clock()
        bucket = self._buckets.get(principal.name)
        capacity = float(size)
        if bucket is None:
            bucket = self._buckets[principal.name] = _Bucket(capacity, now)
        bucket.tokens = min(
            capacity, bucket.tokens + (now - bucket.stamp) * principal.rate_per_second
        )
        bucket.stamp = now
        if bucket.tokens < checks:
            wait = (checks - bucket.tokens) / principal.rate_per_second
            # rounded up as RetryInfo and the push-back trailer round it (status.Refusal
            # .retry_after_ms, from the same ``wait``): the message names the same delay
            wait_ms = max(1, math.ceil(wait * 1000))
            raise RateLimited(
                f"principal {principal.name!r} is over {principal.rate_per_second:g} checks/s; "
                f"retry in {wait_ms} ms",
                wait,
            ).with_reason("RATE_LIMITED")
        bucket.tokens -= checks

    def refund(self, principal: Principal, checks: int) -> None:
        """Give back the ``checks`` tokens ``charge`` just took, for checks refused after
        it (an enumeration throttle): only checks that pass are charged."""
        bucket = self._buckets.get(principal.name)
        if bucket is not None:
            bucket.tokens = min(float(principal.bucket_size), bucket.tokens + checks)

    def observe(self, principal: Principal, key: int) -> None:
        """Count one checked identity toward the enumeration watch."""
        watch = self.watch
        if not watch.threshold:
            return
        now = time.monotonic()  # an NTP step of the wall clock opens no fresh window
        if watch.observe(principal.name, key, now):
            self.on_flag(principal.name, watch.flagged[principal.name])
        if watch.throttled(principal.name, now):
            raise RateLimited(
                f"principal {principal.name!r} checked more than {watch.threshold} distinct "
                f"identities in {watch.window:g}s: throttled until the window ends",
                watch.window - now % watch.window,
            ).with_reason("ENUMERATION_THROTTLED")


class KeysWatcher(Background):
    """Reloads the keys file when it changes, or at once when poked (SIGHUP).

    Polls the file's size, modification time and inode every ``interval``
    seconds. Each reload is handed to ``on_change(ring, trigger)``; a file that
    does not load, to ``on_change(None, problem)``, and the caller keeps the
    keys in force. With a loop given to ``start``, ``on_change`` runs on that
    loop's thread, where the ``Gate`` lives.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[KeyRing | None, str], None],
        interval: float = 1.0,
    ) -> None:
        super().__init__(f"keys-watch {path.name}")
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self._poked = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Taken when made, before the server's first load: a change in between is reloaded.
        self._seen = _file_state(path)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        super().start()

    def poke(self) -> None:
        """Reload now, changed or not. Safe from any thread and from a signal handler."""
        self._poked.set()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        super().stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            poked = self._poked.wait(self.interval)
            self._poked.clear()
            if self._stop.is_set():
                return
            state = _file_state(self.path)
            if state == self._seen and not poked:
                continue
            self._seen = state  # before reading: a write during the read is seen next round
            try:
                ring: KeyRing | None = KeyRing.load(self.path)
                detail = "reload requested" if poked else "the file changed"
            except Exception as exc:  # noqa: BLE001 - whatever it is, the old keys stay
                ring, detail = None, str(exc)
            self._deliver(ring, detail)

    def _deliver(self, ring: KeyRing | None, detail: str) -> None:
        if self._loop is None:
            self.on_change(ring, detail)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self._loop.call_soon_threadsafe(self.on_change, ring, detail)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
