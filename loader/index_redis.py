"""Redis-held list versions, followed live by many server replicas.

Layout (``P`` is the key prefix, ``shixin`` by default; ``V`` a version):

- ``P:current``: the version replicas should serve (flipped in MULTI/EXEC).
- ``P:versions``: every version in Redis, finished or not (a set). A load
  adds its version here *before* writing its first key, so whatever a killed
  load leaves behind is found and deleted by the next garbage collection.
- ``P:lock``: held by whoever writes or deletes versions (a load, or a
  replica collecting garbage): redis-py's ``Lock`` with a 10 s timeout that a
  live holder renews (``HeldLock``), so a killed holder blocks nobody for
  longer than that.
- ``P:v:V:meta``: hash: ``state`` (``writing`` until the version is whole,
  then ``ready``), ``load_token`` (random, new for every load: a replica
  compares it to tell that the data under a name is no longer what it
  read), source, times, counts, last delta seq, bucket bits, the
  fingerprint of the key secret it was built with; ``header`` (0 for a
  snapshot without one) and then ``first_seq``, the seq of the first delta
  applied on such a snapshot (loads refuse a delta below it; replicas read
  neither); ``format`` (``FORMAT``; absent in a version loaded before it; a
  replica serves an older one fail-closed and BEHIND, ``format_problem``);
  ``retired_at``, the Redis time a garbage collection first found the version
  no longer current (``RETIRED_GRACE_SECONDS``); ``evicted`` (``EVICTED_FIELD``),
  why keys of the version may have been evicted, written by whoever saw Redis
  evict keys under an unsafe maxmemory-policy (``EvictionWatch``): the version is
  never served again, nor loaded on, and a snapshot loaded again is a new one.
- ``P:v:V:bloom``: the serialised Bloom filter (rbloom, items = high 64 bits
  of the subject keys, stable ``int`` hash: the same in every process).
- ``P:v:V:s:<bucket>``: hashes of subject key (16 bytes) -> its matches
  (``encode_match``), each with the exemptions of that subject only.
- ``P:v:V:e:<bucket>``: hashes of entry_id -> its subject keys (for deltas).
- ``P:v:V:deltas``: the stream of applied delta ops, in seq order, every one from
  the first delta on the snapshot (``stream_start``) to the meta's last seq: a
  replica learns from it whom the deltas listed. Trimmed (``XTRIM``), the
  version cannot be served by a replica that did not read them before
  (``stream_problem``, ``missing_ops``), and no delta is loaded on it.
- ``P:replicas``: hash of replica id -> what it serves, refreshed every second;
  its ``at`` is Redis's clock (``TIME``), marked ``"clock": "redis"``.
- ``P:heard``: only for records written by older code (``at`` from the
  replica's own clock): replica id -> [that ``at``, the Redis time a garbage
  collection first saw it], so such a record is silent once its ``at`` has not
  changed for ``LIVE_SECONDS`` by Redis's clock, whatever the replica's clock.
- ``P:announce``: pub/sub channel announcing new versions and deltas (and
  ``sync``, which a load sends just before it waits for a Redis replica).

No plaintext ID number is written: only keyed hashes and masked IDs.

This module is the replicas' side: the layout, ``RedisView`` (a version as
a ``ListView``) and ``RedisFollower`` (an ``IndexSource`` that follows the
current version and its deltas), and the lock and garbage collection that
loads and replicas share. Replicas answer Bloom negatives from their local
filter and ask Redis only for positives; when Redis cannot be reached,
look-ups raise ``IndexUnavailable`` and the decision falls back to the
configured answer (never a silent ALLOW). When Redis answers but has lost
the data (flushed, restarted empty, failed over to a replica without it),
every check gets that configured answer, Bloom negatives included, until a
load restores a version (``RedisFollower.health_problem``). Old versions
are deleted once no live replica reports serving them and
``RETIRED_GRACE_SECONDS`` after they stopped being current, always under the
lock (``collect_garbage``), meta first (``delete_version``). Every time these
decisions compare is Redis's own (``TIME``), never a loader's or a replica's
clock: one machine's clock off by seconds must not delete a version another
still serves. Loads are ``loader.publish_redis``.

Every client is made by ``connect``: a ``redis://`` or ``rediss://`` URL,
or, for high availability, Redis Sentinel (``SENTINEL_FORM``), the servers'
password in ``SHIXIN_REDIS_PASSWORD``. A Sentinel failover reads as Redis
unreachable until a replica is promoted, then as Redis again: the new
master holds the same keys and stream ids, so replicas carry on from where
they were (or see lost data, if the promoted replica missed a write).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from rbloom import Bloom
from redis.backoff import NoBackoff
from redis.exceptions import LockNotOwnedError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from shixin_check.domain.errors import ConfigurationError, IndexUnavailable
from shixin_check.domain.index import Counts, ListedMatch, VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import NO_END, Channel, EntryStatus, Exemption, ListType, Role
from shixin_check.loader.background import Background
from shixin_check.loader.feed import missing_deltas
from shixin_check.loader.listfile import EARLIEST_DAY

#: redis-py types every reply as ``bytes | str``; this project never sets
#: decode_responses, so replies are bytes: the client is typed loosely.
Client = Any

KEYS_PER_BUCKET = 48
#: A replica whose heartbeat is older than this, by Redis's clock, no longer protects
#: its version.
LIVE_SECONDS = 15.0
#: How long a version is kept after a garbage collection first finds it no longer
#: current, whatever the heartbeats say (by Redis's clock, meta ``retired_at``): a
#: replica that cannot register (``--redis`` naming a read-only Redis replica) or was
#: unreachable for a while still holds the whole version it served, until it switches.
RETIRED_GRACE_SECONDS = 300.0
#: Keys ``delete_version`` unlinks per command, after the version's meta.
DELETE_BATCH = 1000
#: How long ``P:lock`` outlives its holder: a killed load blocks the next one this long.
LOCK_SECONDS = 10.0
#: The longest a replica waits between tries to reach Redis again: once Redis is
#: back (restarted, or a replica promoted by Sentinel) a load's deltas reach it
#: within this, plus the poll, and well inside the second a delta may take.
RECONNECT_MAX_SECONDS = 0.5
#: How often a replica asks Sentinel where the master is even when all is well.
MASTER_CHECK_SECONDS = 0.5
#: How often a replica reads Redis's ``INFO`` (``read_info``: its ``maxmemory-policy``,
#: ``evicted_keys`` and, for a read-only Redis replica, its link to its master), and
#: that master's, half a round apart: one INFO a round at most.
POLICY_CHECK_SECONDS = 1.0
#: How long a read-only Redis replica's link to its master may be down before a server
#: reading it is behind (``RedisFollower.behind_problem``): the bound of the
#: ShixinReplicaLag alert. A link that drops for a moment is no news.
LINK_DOWN_SECONDS = 5.0
#: How long a replica reading a read-only Redis replica waits before it tries that
#: replica's master again, after it could not read its INFO there: a connection that
#: times out holds the follower's round up to the socket timeout.
MASTER_RETRY_SECONDS = 30.0
#: The INFO sections a replica reads each second; a Redis before 7.0 takes only one
#: section, and gets a plain ``INFO`` (every default section, these among them).
INFO_SECTIONS = ("memory", "stats", "replication")
#: How long a replica's record in ``P:replicas``, and a claim copied from one, counts
#: as evidence of what Redis held (``RedisFollower._claims``): as long as garbage
#: collection keeps the record, counted from the time the record was written.
RECORD_SECONDS = 3600.0
#: Delta ops (stream entries) a replica reads per command. A delta of more ops is read
#: page by page, and labelled only once the view holds all of it (``RedisFollower._apply``).
DELTA_PAGE = 1000

#: One record of a version's delta stream: its stream id, and its fields (one op).
StreamEntry = tuple[bytes, dict[bytes, bytes]]


class RedisKeys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = "shixin") -> None:
        self.prefix = prefix
        self.current = f"{prefix}:current"
        self.versions = f"{prefix}:versions"
        self.replicas = f"{prefix}:replicas"
        #: older code's records in ``replicas``: when their ``at`` was first seen, by Redis
        self.heard = f"{prefix}:heard"
        self.announce = f"{prefix}:announce"
        self.lock = f"{prefix}:lock"
        #: every version name a load ever used: never used again (replicas remember
        #: the versions they left, and records in ``P:replicas`` name versions)
        self.names = f"{prefix}:names"

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


#: The password of the Redis servers (never of the sentinels), kept out of URLs
#: so it stays out of process lists and logs. A plain URL's own password wins.
PASSWORD_ENV = "SHIXIN_REDIS_PASSWORD"
SENTINEL_FORM = "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]"
_SENTINEL_NODE = re.compile(
    r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})"
)
_SENTINEL_PATH = re.compile(r"/(?P<service>[A-Za-z0-9._-]+)(?:/(?P<db>\d{1,5}))?")


@dataclass(frozen=True)
class SentinelURL:
    """Where Redis Sentinel says the master of one service is: its parsed URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """``SENTINEL_FORM``, strictly: anything else is a ``ConfigurationError``."""
        scheme, sep, rest = url.partition("://")
        nodes, slash, path = rest.partition("/")
        where = _SENTINEL_PATH.fullmatch(slash + path)
        sentinels = [_sentinel_node(node) for node in nodes.split(",")]
        if sep and scheme.lower() == "redis+sentinel" and where and None not in sentinels:
            found = tuple(node for node in sentinels if node is not None)
            return cls(found, where["service"], int(where["db"] or 0))
        hint = f" (the password comes from {PASSWORD_ENV})" if "@" in url else ""
        raise ConfigurationError(
            f"Redis URL {_shown(url)}: a Sentinel URL is {SENTINEL_FORM}{hint}"
        )


#: a query parameter of a URL: its separator and name, then its value
_QUERY_PARAMETER = re.compile(r"([?&][^=&#]*=)([^&#]*)")
#: the query parameters of a Redis URL that hold a password (redis-py reads the name
#: %-decoded, as ``urllib.parse.parse_qs`` does: ``pass%77ord`` is ``password``)
_PASSWORD_PARAMETERS = frozenset({"password", "sentinel_password"})


def _password_parameter(named: str) -> bool:
    """Whether ``named`` (``?name=`` or ``&name=``) names a password parameter."""
    return urllib.parse.unquote_plus(named[1:-1]).lower() in _PASSWORD_PARAMETERS


def masked_url(url: str) -> str:
    """``url`` fit for a message or a log: whatever precedes an ``@`` may be a password,
    and so is a ``password=`` query parameter, however its name is %-encoded."""
    url = re.sub(r"//[^/]*@", "//***@", url)
    return _QUERY_PARAMETER.sub(lambda m: m[1] + "***" if _password_parameter(m[1]) else m[0], url)


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a password: in its user part, or as a query parameter."""
    userinfo = url.split("//", 1)[-1].split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo and not userinfo.endswith(":"):
        return True
    return any(_password_parameter(m[1]) for m in _QUERY_PARAMETER.finditer(url))


#: what redis-py puts before an error of a pipeline's command: the command with its
#: arguments (a subject's key, a record's check id), which no message should carry
_PIPELINE_PREFIX = re.compile(r"Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def redis_words(exc: BaseException | str) -> str:
    """What Redis said, without the command redis-py quotes before a pipeline's error
    (``Command # 1 (HGET shixin:v:… <key bytes>) of pipeline caused error: …``)."""
    text = str(exc)
    if _PIPELINE_PREFIX.match(text) is not None:
        # the last "caused error": the quoted command is the client's text, the error Redis's
        text = text.rpartition(" of pipeline caused error: ")[2]
    return text


#: Redis refusing this server (an ACL, a password it no longer takes): not a blip
_DENIALS = (redis.exceptions.NoPermissionError, redis.AuthenticationError)


def is_denial(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing this server (``_DENIALS``), a refusal of EXEC
    included (redis-py raises it as the transaction discarded, ``NOPERM`` in its text)
    and of MULTI (its commands then go through one by one, and EXEC is refused
    ``EXEC without MULTI``)."""
    if isinstance(exc, _DENIALS):
        return True
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        return "NOPERM" in text or text.startswith("EXEC without MULTI")
    return False


def denied_problem(url: str, exc: redis.RedisError) -> str:
    """Why Redis at ``url`` (masked) refuses this server: its password (rotated?), or a
    right its user lacks (an ACL)."""
    why = redis_words(exc)
    if isinstance(exc, redis.AuthenticationError):
        return (f"Redis at {url} refuses this server's password or user ({why}): what is "
                f"loaded into it is not followed here; give this server the password Redis "
                f"now takes ({PASSWORD_ENV}, or the URL) and restart it (rotate with two "
                "passwords on the Redis user while servers move to the new one)")  # fmt: skip
    return (f"Redis at {url} refuses this server a command it needs ({why}): what is loaded "
            "into it is not followed here; give its Redis user the rights the README lists "
            "(Redis users and rights)")  # fmt: skip


def _shown(url: str) -> str:
    return repr(masked_url(url))


def _sentinel_node(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); None if it is neither."""
    m = _SENTINEL_NODE.fullmatch(text)
    if m is None or not 0 < int(m["port"]) < 65536:
        return None
    return m["ip6"] or m["host"], int(m["port"])


class _Sentinels(Sentinel):
    """redis-py's ``Sentinel``, whose "no master" error is one short line: the service
    and the sentinels asked, not the repr of every sentinel's connection error."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            found: tuple[str, int] = super().discover_master(service_name)  # type: ignore[no-untyped-call]
        except MasterNotFoundError as exc:
            asked = ", ".join(
                f"{c.connection_pool.connection_kwargs.get('host')}:"
                f"{c.connection_pool.connection_kwargs.get('port')}"
                for c in self.sentinels
            )
            why = "none answered, or none names an up master"
            if " : " not in str(exc):  # each answered: none names an up master
                why = "none names an up master"
            raise MasterNotFoundError(
                f"no master found for service {service_name!r} by the sentinels {asked} ({why})"
            ) from None
        return found


class _SentinelMaster(redis.Redis):
    """The client of a Sentinel-watched master: closing it closes the sentinels' clients too."""

    def close(self) -> None:
        super().close()
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()


def recheck_master(client: Client) -> None:
    """Ask the sentinels where the master is now, and drop idle connections to any
    other (a no-op for a plain client). redis-py asks them only after a connection
    error; a planned failover (``SENTINEL FAILOVER``) leaves the old master up and
    calling itself master until a sentinel demotes it, seconds later, so a client
    that only reads would read the old master meanwhile, missing new deltas.
    Sentinels that cannot answer change nothing: the connections in hand then
    work, or fail, on their own."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        try:
            pool.get_master_address()  # type: ignore[no-untyped-call]
        except redis.ConnectionError:  # MasterNotFoundError: none answered, or all call it down
            pass


def refused_write(exc: redis.ResponseError, said: str) -> tuple[str, str]:
    """(what is wrong, what to do) of a write Redis refused (``said``: its words)."""
    if isinstance(exc, redis.ReadOnlyError):  # through Sentinel: a ConnectionError
        return (f"it is a read-only replica ({said})",
                f"point --redis at the master, or use Sentinel ({SENTINEL_FORM})")  # fmt: skip
    return f"Redis refused it ({said})", "fix what Redis says (an ACL? maxmemory?)"


def connect(url: str, timeout: float = 0.5) -> Client:
    """A client that fails fast: a check must never hang on a dead Redis.

    ``redis://`` and ``rediss://`` (and ``unix://``) URLs as redis-py reads
    them, or ``SENTINEL_FORM`` for Redis Sentinel: the client asks the
    sentinels where the master is, and again after any connection error, so a
    failover reads as Redis unreachable (``IndexUnavailable``, the fail
    policy) until the sentinels have promoted a replica, then commands go to
    the new master. The password is ``SHIXIN_REDIS_PASSWORD``'s, if set.
    """
    password = os.environ.get(PASSWORD_ENV) or None
    # no retries, no backoff: redis-py retries a failed command (and a sentinel's
    # discovery) with backoff of up to seconds, inside the check that ran it; one try
    # each, and the check gets the channel's --unavailable decision at once. The
    # follower's own loop is what tries again (RECONNECT_MAX_SECONDS).
    timeouts: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }  # fmt: skip
    if url.lower().startswith("redis+sentinel:"):
        where = SentinelURL.parse(url)
        # redis-py's Sentinel is untyped; the sentinels get the timeouts, not the password
        sentinel_kwargs = {**timeouts, "retry": Retry(NoBackoff(), 0)}
        sentinels = _Sentinels(  # type: ignore[no-untyped-call]
            list(where.sentinels), sentinel_kwargs=sentinel_kwargs
        )
        return sentinels.master_for(  # type: ignore[no-untyped-call]
            where.service, redis_class=_SentinelMaster, db=where.db, password=password, **timeouts
        )
    try:
        path = urllib.parse.urlsplit(url).path if url.lower().startswith("redis") else ""
        if path.strip("/") and not path.strip("/").isdigit():  # redis-py took it as DB 0
            raise ValueError(f"the database {path.strip('/')!r} is not a number")
        return redis.Redis.from_url(url, password=password, **timeouts)
    except ValueError as exc:
        raise ConfigurationError(
            f"Redis URL {_shown(url)} is not redis://[[USER]:PASSWORD@]HOST:PORT/DB, "
            f"rediss://... (TLS), unix://PATH or {SENTINEL_FORM}: {exc}"
        ) from exc


def bucket_bits(n_keys: int) -> int:
    return max(0, math.ceil(math.log2(max(n_keys, 1) / KEYS_PER_BUCKET)))


def bucket_of(value: int, bits: int) -> int:
    return value >> (64 - bits) if bits else 0


# --- matches as stored values -------------------------------------------------

#: What a version's keys hold (meta ``format``): ``FORMAT``, written by every load, and
#: since which format each promise holds. 2: a match carries the exemptions naming its
#: own subject only, and an organisation's entry names the organisation in its debtor's
#: match too, so a delta can tell it from a person's entry and refuse an exemption for
#: it. A version loaded before (no ``format``) copied each exemption onto every subject
#: of its entry: a replica serving one applies none of them (``RedisView``), and a load
#: refuses exemption ops on it, until the snapshot is loaded again.
EXEMPTIONS_FORMAT = 2
#: 3: its dates were checked as this code loads them: no ``valid_until`` before
#: ``listfile.EARLIEST_DAY`` (no end is ``NO_END``). A version loaded before may hold an
#: export's placeholder for an empty date (1900-01-01) as an entry's end, read as
#: expired: a replica serving one reads every such end as no end (``decode_old_matches``),
#: never clearing a listed person by it, until the snapshot is loaded again.
DATES_FORMAT = 3
#: 4: a Home Return Permit listed in the old booklet's form (``H1234567801``) is keyed as
#: the card (``identity.permit_card``). A version loaded before keys it as given: a check
#: by the card does not find it, until the snapshot is loaded again (BEHIND meanwhile).
PERMIT_FORMAT = 4
#: 5: a date is ``YYYY-MM-DD`` or ``YYYYMMDD``. A version loaded before may hold a day read
#: from an ISO week date (``2026-W01-1`` as 2025-12-29): served, BEHIND until loaded again
#: (``load`` refuses such a date now, a bad row).
DAYS_FORMAT = 5
#: 6: a Taiwan permit listed in the old booklet's form (``1234567801``) is keyed as the
#: card (``12345678``). A version loaded before keys it as given: a check by the card does
#: not find it, until the snapshot is loaded again (BEHIND meanwhile).
TAIWAN_PERMIT_FORMAT = 6
FORMAT = TAIWAN_PERMIT_FORMAT


def encode_match(m: ListedMatch, organization_name: str = "") -> list[Any]:
    """A match as stored. ``organization_name``: its entry's organisation, stored on the
    debtor's match too (a ``ListedMatch`` names it for a related person only)."""
    organization = organization_name if m.role is Role.DEBTOR else m.organization_name
    return [
        m.entry_id, int(m.list_type), int(m.status), int(m.role), m.name_key, m.case_number,
        m.court, organization, m.masked_id, m.listed_on, m.valid_until,
        [[int(e.channel), e.first_day, e.last_day] for e in m.exemptions],
    ]  # fmt: skip


def decode_match(a: list[Any], exemptions: bool = True) -> ListedMatch:
    """A stored match; ``exemptions`` False drops its exemptions (an older version's)."""
    role = Role(a[3])
    return ListedMatch(
        entry_id=a[0], list_type=ListType(a[1]), status=EntryStatus(a[2]), role=role,
        name_key=a[4], case_number=a[5], court=a[6],
        organization_name=a[7] if role is not Role.DEBTOR else "", masked_id=a[8],
        listed_on=a[9], valid_until=a[10],
        exemptions=tuple(Exemption(Channel(c), f, u) for c, f, u in a[11]) if exemptions else (),
    )  # fmt: skip


def decode_matches(raw: bytes | None, exemptions: bool = True) -> list[ListedMatch]:
    return [decode_match(a, exemptions) for a in orjson.loads(raw)] if raw else []


def decode_old_matches(raw: bytes | None, exemptions: bool) -> list[ListedMatch]:
    """The stored matches of a version older than ``DATES_FORMAT``, read fail-closed: a
    ``valid_until`` before ``EARLIEST_DAY`` (an export's placeholder for an empty date,
    which older loads took as a date) is no end, never expired. ``exemptions`` False:
    none is applied (older than ``EXEMPTIONS_FORMAT``)."""
    found = orjson.loads(raw) if raw else []
    for a in found:
        if a[10] < EARLIEST_DAY:
            a[10] = NO_END
    return [decode_match(a, exemptions) for a in found]


def format_of(meta: dict[str, bytes]) -> int:
    """The ``FORMAT`` a version was written in (1: before the field)."""
    return int(meta.get("format", b"1"))


def old_format_problem(version: str) -> str:
    """Why exemptions of a version older than ``EXEMPTIONS_FORMAT`` are not applied, and
    why a load refuses exemption ops on it."""
    return (
        f"version {version} was loaded by an older shixin-check, whose exemptions cover every "
        "person of their entry (the organisation and all its related persons): its "
        "exemptions are not applied (those restricted stay restricted) until its snapshot "
        "is loaded again with this version (load PATH --redis URL)"
    )


def format_problem(version: str, fmt: int) -> str:
    """Why a replica serving a version of format ``fmt`` is behind ("" for ``FORMAT``)."""
    dates = (
        "did not refuse placeholder dates (a valid_until before 2000-01-01 other than "
        "1970-01-01, such as 1900-01-01, what an export writes for an empty date, which it "
        "took for an end long past): its entries with such a date are read as having no end "
        "date meanwhile (never expired: those listed stay restricted)"
    )
    if fmt < EXEMPTIONS_FORMAT:
        return f"{old_format_problem(version)}; that shixin-check also {dates}"
    if fmt < DATES_FORMAT:
        return (f"version {version} was loaded by an older shixin-check that {dates}; load "
                "its snapshot again with this version (load PATH --redis URL)")  # fmt: skip
    if fmt < PERMIT_FORMAT:
        return (f"version {version} was loaded by an older shixin-check that kept a Home "
                "Return Permit listed in the old booklet's form (H1234567801) as given, so a "
                "check by the card's number (H12345678) does not find it; load its snapshot "
                "again with this version (load PATH --redis URL)")  # fmt: skip
    if fmt < DAYS_FORMAT:
        return (f"version {version} was loaded by an older shixin-check that read a date in "
                "the ISO week form (2026-W01-1, read as 2025-12-29) as a day, which may have "
                "moved an end date; run this version's validate on its snapshot (such a date "
                "is a bad row now), then load it again (load PATH --redis URL)")  # fmt: skip
    if fmt < TAIWAN_PERMIT_FORMAT:
        return (f"version {version} was loaded by an older shixin-check that kept a Taiwan "
                "permit listed in the old booklet's form (1234567801) as given, so a check by "
                "the card's number (12345678) does not find it; load its snapshot again with "
                "this version (load PATH --redis URL)")  # fmt: skip
    return ""


def counts_json(counts: Counts) -> bytes:
    return orjson.dumps([[int(t), int(s), n] for t, s, n in counts.by_type_status])


def expiries_json(counts: Counts) -> bytes:
    """Entries by (list type, status, valid_until day): what turns EXPIRED, and when."""
    return orjson.dumps([[int(t), int(s), v, n] for t, s, v, n in counts.expiries])


def _counts_from(
    raw: bytes | None, subject_keys: int, raw_expiries: bytes | None, dated: bool = True
) -> Counts:
    """``dated`` False: a version older than ``DATES_FORMAT``, whose ends before
    ``EARLIEST_DAY`` are read as no end (``decode_old_matches``): never counted EXPIRED."""
    rows = orjson.loads(raw) if raw else []
    ends = orjson.loads(raw_expiries) if raw_expiries else []
    if not dated:
        ends = [row for row in ends if row[2] >= EARLIEST_DAY]
    return Counts(
        tuple((ListType(t), EntryStatus(s), n) for t, s, n in rows if n),
        subject_keys,
        tuple((ListType(t), EntryStatus(s), v, n) for t, s, v, n in ends if n),
    )


# --- versions in Redis ---------------------------------------------------------


def read_meta(client: Client, keys: RedisKeys, version: str) -> dict[str, bytes]:
    raw = client.hgetall(keys.meta(version))
    return {k.decode(): v for k, v in raw.items()}


def published_at(meta: dict[str, bytes]) -> float | None:
    """When the snapshot of a version was published (None: it does not say): its
    header's ``published_at``, or for a version loaded before that was kept, its feed
    time while no delta has moved it on."""
    if "published_at" in meta:
        value = float(meta["published_at"])
        return value or None
    if meta.get("header") == b"1" and meta.get("last_seq") == meta.get("snapshot_seq"):
        return float(meta.get("source_timestamp", b"0")) or None
    return None


#: The meta fields ``published_at`` reads (for an ``HMGET``), and the mark of a version
#: loaded with ``--allow-rollback`` (``rollback``): made current on purpose, whatever it
#: replaced.
PUBLISHED_FIELDS = ("published_at", "header", "last_seq", "snapshot_seq", "source_timestamp")
ROLLBACK_FIELD = "rollback"
#: Meta field: Redis's time (``redis_time``) when a load made the version current.
CURRENT_AT_FIELD = "current_at"
#: Meta field: why keys of the version may have been evicted (``evicted_problem``).
EVICTED_FIELD = "evicted"


def utc(unix: float) -> str:
    """``unix`` as an instant in UTC, to the second (``2026-11-20T01:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def check_fingerprint(meta: dict[str, bytes], keyer: SubjectKeyer, version: str) -> None:
    theirs = meta.get("fingerprint", b"").decode()
    if theirs != keyer.fingerprint:
        raise ConfigurationError(
            f"version {version} was built with another key secret (fingerprint {theirs}, "
            f"ours {keyer.fingerprint}): every loader and replica needs the same secret"
        )


def read_info(client: Client, sections: tuple[str, ...] = INFO_SECTIONS) -> dict[str, Any]:
    """Redis's ``INFO`` of ``sections`` in one reply (``()``: every default section).
    ``INFO`` works where CONFIG is disabled; its reply does not grow with the list."""
    return dict(client.info(*sections) if sections else client.info())


def info_of(client: Client) -> dict[str, Any]:
    """``read_info`` of ``INFO_SECTIONS``, or of every default section from a Redis
    before 7.0, which takes one section only (a second command: for one-off reads)."""
    try:
        return read_info(client)
    except redis.ResponseError:
        return read_info(client, ())


def eviction_problem(info: dict[str, Any]) -> str:
    """Why Redis may evict the list's keys ("" when it may not), read from its ``info``
    (``read_info``). The list's keys have no TTL, so only an ``allkeys-*`` policy
    evicts them, and only under a ``maxmemory`` limit: ``maxmemory`` 0 is no limit,
    nothing is evicted (a 32-bit Redis started without one sets 3 GB itself, and INFO
    says so). An evicted subject bucket reads as "not listed", and no replica can tell
    which were evicted."""
    policy = _policy(info)
    if not policy.startswith("allkeys-"):
        return ""
    try:
        limit = int(info.get("maxmemory", 0))
    except (TypeError, ValueError):
        limit = -1  # unreadable: a limit may be set
    if limit == 0:
        return ""
    return (
        f"Redis's maxmemory-policy is {policy} (maxmemory {info.get('maxmemory', 0)} "
        "bytes): it may evict the list's keys, which have no TTL, and a listed subject "
        "whose key was evicted would read as not listed; set maxmemory-policy noeviction "
        "(CONFIG SET maxmemory-policy noeviction, and in redis.conf)"
    )


def _policy(info: dict[str, Any]) -> str:
    policy = info.get("maxmemory_policy", "noeviction")
    return policy.decode() if isinstance(policy, bytes) else str(policy)


class EvictionWatch:
    """Whether one Redis server may have evicted the list's keys, from its INFO read
    again and again (``seen``).

    The sign: ``evicted_keys`` (INFO stats, every key Redis evicted since it started
    or its stats were reset) rose between two reads, and the policy could evict the
    list's keys (``eviction_problem``) at either read; at the first read (or after the
    count went down: a restart, ``CONFIG RESETSTAT``), any eviction counted while the
    policy can evict them now. Not the policy alone: keys are evicted only once Redis
    reaches its ``maxmemory``, and an unsafe policy set back in time evicted nothing.
    Not ``evicted_keys`` alone: a ``volatile-*`` policy evicts keys with a TTL (another
    application's), never the list's. Which keys went, INFO does not say: any eviction
    under an unsafe policy counts, whatever it evicted (fail-closed)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        #: the last read: (its unsafe policy, or "" when safe; its evicted_keys)
        self._last: tuple[str, int] | None = None

    def seen(self, info: dict[str, Any]) -> str:
        """What ``info``, read now, says was evicted under an unsafe policy ("" nothing)."""
        unsafe = _policy(info) if eviction_problem(info) else ""
        try:
            count = int(info.get("evicted_keys", 0))
        except (TypeError, ValueError):
            return ""  # unreadable: this read tells nothing
        last, self._last = self._last, (unsafe, count)
        if last is None or count < last[1]:  # the first read, or counted anew since
            since, policy, counted = 0, unsafe, f"is {count}"
        else:
            since, policy, counted = last[1], unsafe or last[0], f"{last[1]} -> {count}"
        if count <= since or not policy:
            return ""
        return (f"Redis evicted {count - since} key(s) while its maxmemory-policy was {policy} "
                f"(INFO stats evicted_keys {counted})")  # fmt: skip


def evicted_problem(version: str, evidence: str) -> str:
    """Why ``version`` is not served: ``evidence`` (``EvictionWatch.seen``) says Redis may
    have evicted its keys. Kept in its meta (``EVICTED_FIELD``) for good."""
    return (
        f"keys of version {version} may have been evicted: {evidence}; a listed subject "
        "whose bucket was evicted reads as not listed, and Redis does not say which keys "
        "went, so this version is not served (Bloom positives get --unavailable) nor "
        "loaded on until a snapshot is loaded again: set maxmemory-policy noeviction, "
        "then load the snapshot again (a newer one, or the last one with --allow-rollback "
        "and then its deltas in seq order)"
    )


def flag_evicted(client: Client, keys: RedisKeys, version: str, problem: str) -> None:
    """``problem`` (``evicted_problem``) in the meta of ``version``, if that is still
    there and says nothing of it yet: never a meta made anew, which a replica would
    take for a version."""
    meta = keys.meta(version)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(meta)
            if pipe.exists(meta):
                pipe.multi()
                pipe.hsetnx(meta, EVICTED_FIELD, problem)
                pipe.execute()
        except redis.WatchError:
            pass  # changed meanwhile: whoever saw it flags it again on its next read


def master_client(client: Client, host: str, port: int) -> Client:
    """A client of the Redis at ``host``:``port`` made as ``client`` is (its password,
    user, TLS and timeouts; TCP even where ``client`` reads a unix socket)."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "path"}
    kind = pool.connection_class
    if issubclass(kind, redis.UnixDomainSocketConnection):
        kind = redis.Connection
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=kind, **{**kwargs, "host": host, "port": port}))  # fmt: skip


def stream_start(meta: dict[str, bytes], first: int | None) -> int:
    """The seq of the first op a version's delta stream must hold, by its ``meta``; where
    that does not say (a snapshot without a header loaded by code before ``first_seq``),
    the seq of its ``first`` record, or, with none, the one after the snapshot's."""
    if "first_seq" in meta:
        return int(meta["first_seq"])
    if meta.get("header") == b"1" or first is None:
        return int(meta.get("snapshot_seq", b"0")) + 1
    return first


def trimmed(stream: str, version: str, missing: str) -> str:
    """What a delta ``stream`` of ``version`` that lost the ops ``missing`` says."""
    return (f"the delta stream {stream} of version {version} no longer holds {missing} "
            "(trimmed: XTRIM, or an XADD with MAXLEN?)")  # fmt: skip


def missing_ops(entries: list[StreamEntry], after: int, last: int) -> str:
    """The seqs missing from ``entries``, a version's stream records after seq ``after``
    up to ``last``, which must hold each seq once, in order (``deltas 1 to 2``; "" when
    none is). Every op a load applied is in the stream; a record gone was trimmed."""
    expected = after + 1
    for entry in entries:
        seq = _seq(entry)
        if seq != expected:
            return missing_deltas(expected, seq - 1) if seq > expected else f"seq {expected}"
        expected += 1
    return missing_deltas(expected, last) if expected <= last else ""


def stream_problem(client: Client, keys: RedisKeys, version: str, meta: dict[str, bytes]) -> str:
    """Why the delta stream of ``version`` (its ``meta``) does not hold every op from
    its first delta (``stream_start``) to the meta's last seq ("" when it does, as far
    as its first and last records and its length tell: three reads, whatever its
    size, in one transaction). An operator's ``XTRIM``, or an ``XADD`` with ``MAXLEN``
    by another program, drops the first records."""
    last = int(meta.get("last_seq", b"0"))
    stream = keys.deltas(version)
    with client.pipeline(transaction=True) as pipe:
        pipe.xrange(stream, count=1)
        pipe.xrevrange(stream, count=1)
        pipe.xlen(stream)
        head, tail, length = pipe.execute()
    first, final = (_seq(head[0]), _seq(tail[0])) if head and tail else (None, None)
    start = stream_start(meta, first)
    if start > last:
        return ""  # no delta applied: nothing to hold
    if first is None or final is None or first > start:
        missing = missing_deltas(start, last if first is None else min(last, first - 1))
    elif final < last:
        missing = missing_deltas(final + 1, last)
    elif first == start and final == last and length != last - start + 1:
        missing = f"{last - start + 1 - length} of {missing_deltas(start, last)}"
    else:
        return ""
    return trimmed(stream, version, missing)


def lost_ops_problem(version: str, lost: str) -> str:
    """Why a replica cannot serve ``version``: its stream ``lost`` ops (``stream_problem``)."""
    return (
        f"redis lost deltas of version {version}: {lost}: a replica that did not read them "
        "cannot tell whom they listed (its Bloom filter would clear them), so this one "
        "serves no label past them; load a snapshot that includes them (or the last "
        "snapshot again with --allow-rollback, then every delta after it in seq order), "
        "and never trim a version's delta stream"
    )


class HeldLock:
    """``P:lock``, held by whoever writes or deletes versions, kept only while it lives.

    redis-py's ``Lock`` with a short timeout (``LOCK_SECONDS``), renewed by a
    daemon thread every third of it for as long as the holder runs. A thread,
    not renewals from inside the write loop: single steps of a load (one big
    Bloom filter, a garbage-collection scan, a delta's read-back) can outlast
    any fixed renewal interval, and a thread renews through all of them. A
    process killed by SIGKILL stops renewing with everything else, so its lock
    lapses within ``LOCK_SECONDS``; a process merely paused longer than that
    finds it lost: ``check`` and ``commit`` then raise ``IndexUnavailable``
    and it makes nothing current.
    """

    def __init__(self, client: Client, keys: RedisKeys, holder: str,
                 timeout: float = LOCK_SECONDS) -> None:  # fmt: skip
        self.client = client
        self.key = keys.lock
        self.timeout = timeout
        #: who holds it, as a refused load reports: "load host:pid" or "gc replica-id"
        self.token = f"{holder} {socket.gethostname()}:{os.getpid()} {secrets.token_hex(4)}"
        self._lock = client.lock(self.key, timeout=timeout, thread_local=False)
        self._mutex = threading.Lock()  # a renewal must not break commit()'s WATCH
        self._done = threading.Event()
        self._lost = ""
        self._renewal = ""  # why renewals are refused, for the line that says it was lost
        self._keeper: threading.Thread | None = None

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait`` seconds; False if another holds it."""
        blocking = wait > 0
        taken = self._lock.acquire(blocking=blocking, blocking_timeout=wait if blocking else None,
                                   token=self.token)  # fmt: skip
        if taken:
            self._keeper = threading.Thread(target=self._keep, name="shixin-lock", daemon=True)
            self._keeper.start()
        return bool(taken)

    def holder(self) -> str:
        """Who holds the lock now ("" if nobody)."""
        raw = self.client.get(self.key)
        return raw.decode(errors="replace") if raw else ""

    def _owned(self, then: Callable[[Any], object]) -> bool:
        """``then(pipe)`` queued in a MULTI/EXEC that runs only while the lock is still
        ours (WATCH, GET): renewing or releasing it without a script, which an ACL may
        refuse (redis-py's ``Lock`` renews and releases by EVALSHA, the way taken when
        WATCH is refused instead). False if it is not ours (lapsed, or taken since)."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token.encode():
                    return False
                pipe.multi()
                then(pipe)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def _renew(self) -> None:
        try:
            if not self._owned(lambda pipe: pipe.pexpire(self.key, int(self.timeout * 1000))):
                raise LockNotOwnedError(f"{self.key} is no longer held")
        except redis.RedisError as refused:
            if not is_denial(refused):
                raise
            try:  # no WATCH, MULTI or EXEC: perhaps a script
                self._lock.reacquire()
            except redis.ResponseError:  # refused that way too: the first refusal says why
                raise refused from None

    def _keep(self) -> None:
        while not self._done.wait(self.timeout / 3):
            try:
                with self._mutex:
                    self._renew()
            except LockNotOwnedError:
                self._lost = (f"lost {self.key} (paused for over {self.timeout:g}s, or Redis lost "
                              f"it){self._renewal}: stopped before committing")  # fmt: skip
                return
            except redis.RedisError as exc:
                if is_denial(exc):  # never a blip: an ACL
                    self._renewal = f" (its renewal refused: {exc})"
                # else a blip: the next renewal tells whether the lock outlived it

    def check(self) -> None:
        """Raise ``IndexUnavailable`` if the lock was lost: stop writing."""
        if self._lost:
            raise IndexUnavailable(self._lost)

    def commit(self, write: Callable[[Any], None]) -> None:
        """The commands ``write`` queues, in one MULTI/EXEC that runs only if the
        lock is still ours (WATCH on it): the fence that makes a version current."""
        self.check()
        with self._mutex, self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token.encode():
                    self._lost = (f"lost {self.key} before the commit{self._renewal}: nothing "
                                  "was committed")  # fmt: skip
                    raise IndexUnavailable(self._lost)
                pipe.multi()
                write(pipe)
                pipe.execute()
            except redis.WatchError as exc:
                self._lost = f"lost {self.key} during the commit: nothing was committed"
                raise IndexUnavailable(self._lost) from exc

    def release(self) -> None:
        self._done.set()
        if self._keeper is not None:
            self._keeper.join()
        try:
            try:
                self._owned(lambda pipe: pipe.delete(self.key))
            except redis.RedisError as exc:
                if not is_denial(exc):
                    raise
                self._lock.release()  # no WATCH, MULTI or EXEC: perhaps a script
        except redis.RedisError:
            pass  # Redis gone, or both refused: nothing of ours left, or it lapses itself


def redis_time(client: Client) -> float:
    """Redis's own clock (``TIME``) in Unix seconds: the one clock every loader and
    replica of a list shares, whatever their machines' clocks say."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def delete_version(client: Client, keys: RedisKeys, version: str) -> None:
    """Every key of ``version``: its meta first, alone, then the rest in batches
    (``DELETE_BATCH``), then its entry in ``P:versions`` (last, so a deletion cut
    short is still listed and the next collection finishes it).

    Meta first, in a command of its own: a replica still reading the version
    finds it gone at its next look-up (``RedisView.look_up_many`` asks for the
    meta with the buckets) and answers by the fail policy. With the meta still
    there, a subject bucket already deleted would read as "not listed"."""
    client.delete(keys.meta(version))
    batch = []
    for key in client.scan_iter(match=keys.version_pattern(version), count=DELETE_BATCH):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.srem(keys.versions, version)


def collect_garbage(
    client: Client, keys: RedisKeys, lock: HeldLock, now: float | None = None
) -> list[str]:
    """Delete versions that are not current, that no live replica serves, and that
    stopped being current over ``RETIRED_GRACE_SECONDS`` ago; the names deleted.

    Only under ``lock`` (held): only its holder writes versions, so no load
    is writing one now, and a version that is neither current nor served is
    old or was left by a killed load (listed in ``P:versions`` before its
    first key, whatever ``state`` its meta says). Nothing becomes current
    meanwhile either: flipping the pointer takes the lock too.

    ``now`` and every time compared with it are Redis's (``redis_time``): a
    heartbeat's ``at`` (``_served``) and a version's ``retired_at``, stamped the
    first time a collection finds it whole but neither current nor served. A
    version never made whole (a killed load) or half deleted (no meta) is
    deleted at once: no replica reads it.
    """
    now = redis_time(client) if now is None else now
    current = client.get(keys.current)
    in_use = _served(client, keys, now)
    if current:
        in_use.add(current.decode())
    deleted = []
    for raw_version in client.smembers(keys.versions):
        version = raw_version.decode()
        if version in in_use:
            continue
        meta = keys.meta(version)
        last, state, retired = client.hmget(meta, "last_seq", "state", "retired_at")
        if last is not None and state in (None, b"ready"):  # whole: a replica may serve it
            if retired is None:
                _stamp_retired(client, meta, now)
            if now - float(retired or now) < RETIRED_GRACE_SECONDS:
                continue
        lock.check()
        delete_version(client, keys, version)
        deleted.append(version)
    return deleted


def _stamp_retired(client: Client, meta: str, now: float) -> None:
    """``retired_at`` = ``now`` in a version's ``meta``, if that is still there: never
    a meta made anew, which a replica's look-up would take for the version whole."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(meta)
            if pipe.exists(meta):
                pipe.multi()
                pipe.hsetnx(meta, "retired_at", repr(now))
                pipe.execute()
        except redis.WatchError:
            pass  # changed meanwhile: the next collection stamps it


def _served(client: Client, keys: RedisKeys, now: float) -> set[str]:
    """The versions that live replicas report serving, judged by Redis's clock only.

    A record of this code carries ``"clock": "redis"``: its ``at`` is Redis's
    time when it was written, so its age is ``now - at``. One written by older
    code carries its replica's own clock, which says nothing next to Redis's:
    it counts as live until its ``at`` has stayed the same for ``LIVE_SECONDS``
    of Redis time (``P:heard`` notes when each was first seen), never because
    of a clock difference. Records silent for over ``RECORD_SECONDS`` are
    forgotten."""
    served: set[str] = set()
    heard = client.hgetall(keys.heard)
    older: set[bytes] = set()
    for replica_id, raw in client.hgetall(keys.replicas).items():
        record = orjson.loads(raw)
        if not isinstance(record, dict):
            continue
        at = record.get("at", 0)
        if record.get("clock") == "redis" and isinstance(at, (int, float)):
            age = now - at
        else:
            older.add(replica_id)
            seen = orjson.loads(heard[replica_id]) if replica_id in heard else None
            if not isinstance(seen, list) or len(seen) != 2 or seen[0] != at:
                client.hset(keys.heard, replica_id, orjson.dumps([at, now]))
                seen = [at, now]
            age = now - seen[1]
        if age < LIVE_SECONDS:
            served.add(record.get("version", ""))
        elif age > RECORD_SECONDS:
            client.hdel(keys.replicas, replica_id)
            older.discard(replica_id)
    gone = [replica_id for replica_id in heard if replica_id not in older]
    if gone:
        client.hdel(keys.heard, *gone)
    return served


def try_collect_garbage(client: Client, keys: RedisKeys, holder: str) -> bool:
    """``collect_garbage`` if the lock is free (a replica's way); False if it was not."""
    lock = HeldLock(client, keys, holder)
    if not lock.acquire():
        return False
    try:
        collect_garbage(client, keys, lock)
    except IndexUnavailable:
        pass  # lost the lock midway: what is left is the next collection's
    finally:
        lock.release()
    return True


# --- replicas -----------------------------------------------------------------


class ErrorCount:
    """Redis commands that failed (connection lost, timed out, refused): one count per
    thread that bumps it, since ``+= 1`` from two threads can lose a count."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class ReadGuard:
    """Why a replica's look-ups must not ask Redis now ("" each when they may), set by
    its follower: ``unreachable``, its last round could not reach Redis (a look-up
    would only wait on the same dead connection or sentinel, in the checks' thread);
    ``unsafe``, Redis may have evicted keys (``eviction_problem``). Either way a Bloom
    positive gets the channel's --unavailable decision at once."""

    __slots__ = ("unreachable", "unsafe", "refused")

    def __init__(self) -> None:
        self.unreachable = ""
        self.unsafe = ""
        #: set by a look-up that Redis refused for want of a right (``NOPERM``: an ACL),
        #: cleared by the follower once the same read works (``_read_refused``)
        self.refused = ""


class RedisView:
    """One Redis-held version as a replica sees it. Implements ``ListView``.

    ``info`` (the ``+N`` an answer carries) is what this replica's follower has
    applied; a look-up reads Redis as it is now, which may already hold a delta
    loaded since and not yet applied here (within the follower's poll): a DELIST,
    SUSPEND, RESUME, EXEMPT or UNEXEMPT can be answered before its label, and so can a
    LIST of a subject the local Bloom filter holds already (listed in this version
    before, or a false positive; the filter never forgets a key). Any other LIST is
    answered from when the follower applies it: the filter clears that subject until
    then. One call's keys all read one state of Redis (``look_up_many``)."""

    __slots__ = ("info", "version", "_bloom", "_client", "_keys", "_bits", "_meta_key", "_errors",
                 "_current", "_exemptions", "_guard")  # fmt: skip

    def __init__(self, info: VersionInfo, version: str, bloom: Bloom, client: Client,
                 keys: RedisKeys, bits: int, errors: ErrorCount | None = None,
                 fmt: int = FORMAT, guard: ReadGuard | None = None) -> None:  # fmt: skip
        """``errors``: where failed look-ups are counted (the checks' thread).
        ``fmt``: the version's ``FORMAT``. Older than ``DATES_FORMAT``, its matches are
        read fail-closed (``decode_old_matches``); older than ``EXEMPTIONS_FORMAT``, its
        exemptions cannot be told apart by person: none is applied (never one for
        everyone). ``guard``: the follower's word that Redis must not be asked now."""
        self._guard = guard or ReadGuard()
        self._current = fmt >= DATES_FORMAT
        self._exemptions = fmt >= EXEMPTIONS_FORMAT
        self._errors = errors or ErrorCount()
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
        """The matches of each of ``keys``, read in one Redis transaction (MULTI/EXEC,
        sent and answered in one round trip): a delta load rewrites the buckets in a
        MULTI/EXEC of its own, so one call (a unary check's keys, a batch's) reads the
        list as it was before that delta or after it, never some keys before and some
        after. Plain pipelined reads are run as they arrive, and a delta's EXEC could
        fall between them: one batch answered one person both DENY and ALLOW."""
        guard = self._guard
        if guard.unsafe:
            raise IndexUnavailable(guard.unsafe)
        if guard.unreachable:
            raise IndexUnavailable(f"redis: {guard.unreachable}")
        pipe = self._client.pipeline(transaction=True)
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
            self._errors.count += 1
            said = redis_words(exc)  # not the keys asked
            if isinstance(exc, redis.exceptions.NoPermissionError):  # not passing: health says so
                guard.refused = said
            raise IndexUnavailable(f"redis: {said}") from exc
        if not exists:
            raise IndexUnavailable(f"version {self.version} is no longer in Redis")
        if self._current:
            return [decode_matches(v) for v in values]
        exemptions = self._exemptions
        return [decode_old_matches(v, exemptions) for v in values]


class LostView:
    """The last version a replica served, after Redis lost it: every check gets the
    fail policy. A ``ListView`` whose filter clears nobody and whose look-ups raise
    ``IndexUnavailable``, so ``decide`` answers each subject with the channel's
    configured answer (never ALLOW NOT_LISTED from a list nobody holds any more);
    ``info`` still says what was served."""

    __slots__ = ("info", "reason")

    def __init__(self, info: VersionInfo, reason: str) -> None:
        self.info = info
        self.reason = reason

    def might_contain(self, key: int) -> bool:
        return True

    def look_up(self, key: int) -> list[ListedMatch]:
        raise IndexUnavailable(self.reason)

    def look_up_many(self, keys: Sequence[int]) -> list[Sequence[ListedMatch]]:
        raise IndexUnavailable(self.reason)


#: versions a replica remembers moving off (``RedisFollower._left``): going back further
#: than the last thousand loads is still seen by the publication times (``_going_back``)
LEFT_KEPT = 1024


class RedisFollower(Background):
    """Keeps a replica on Redis's current version and its deltas. An ``IndexSource``.

    A background thread polls the current-version pointer with the served
    version's load token and last seq, reads the delta stream (blocking up to
    ``poll`` seconds, so a delta arrives within that), adds listed keys to the
    local Bloom filter, and registers this replica every second. A view's label
    (``+N``) is the last whole delta whose ops its filter holds, never more: a
    delta longer than a stream page (``DELTA_PAGE``) is read whole first, and the
    seq a label names is read from the meta before the ops up to it. On a Redis
    error it keeps the version it has (negatives still answered locally),
    retries with backoff up to ``RECONNECT_MAX_SECONDS``, and catches up on
    missed deltas from the stream when Redis is back. A Sentinel failover is
    such an error: the client finds the new master on its next try, and the
    stream cursor carries over (stream ids replicate as they are). Every
    round reads all it needs from Redis before it changes any state, so a
    connection lost midway leaves the round to be redone whole.

    Redis that answers but lost the data is another matter: the pointer gone,
    the served version's meta gone, the pointer back on a version this replica
    already left, or the version's last seq below what was applied here. Then
    ``current()`` is a ``LostView`` (every check by the fail policy),
    ``health_problem()`` says why, and ``lag()`` is -1, until a load makes a
    whole version current again: the replica switches to it by itself. A
    different load token under the same name is another load of that name:
    followed from scratch.

    Redis that answers reads but refuses writes (``--redis`` naming a read-only
    Redis replica) is followed too; only the heartbeat and garbage collection
    fail, logged once and counted (``_write``), never every round. Such a replica
    is current while its link to its master is up, and behind once that has been
    down ``LINK_DOWN_SECONDS``; its master's policy and evictions are read from the
    master's INFO where this server can reach it (``_read_info``).

    A label is never past an op the filter lacks: the ops read must run from the
    snapshot's (or the last applied) seq to the label without a gap (``missing_ops``);
    a stream that lost records (trimmed) is lost data. Nor is a version served whose
    keys Redis may have evicted (``EvictionWatch``), ever again: Bloom positives get
    the fail policy until another version is loaded.
    """

    def __init__(
        self, url: str, keyer: SubjectKeyer, keys: RedisKeys | None = None,
        replica_id: str = "", on_event: Callable[[str, str], None] | None = None,
        poll: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__("redis-follower")
        self.keys = keys or RedisKeys()
        self.client = connect(url)
        self.url = masked_url(url)
        self.keyer = keyer
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.on_event = on_event or (lambda what, detail: None)
        self.poll = poll
        self.reachable = False
        self.upstream_version = ""
        self.upstream_seq = 0
        self._view: RedisView | None = None
        self._token = b""  # the served version's load token
        self._lost: LostView | None = None
        self._problem = ""
        #: versions this replica moved off, with their load tokens: Redis never goes back
        #: to one (a load of a name again, with another token, is no going back). The
        #: last ``LEFT_KEPT``, oldest first: a feed that loads often must not grow it for good
        self._left: dict[tuple[str, bytes], None] = {}
        self.guard = ReadGuard()
        self._policy_checked = 0.0
        #: why Redis may evict the list's keys now ("" when it may not): its own policy
        #: and, read from a read-only Redis replica, its master's (``eviction_problem``)
        self._policy = ""
        self._master_policy = ""
        self._info_sections: tuple[str, ...] = INFO_SECTIONS  # () once Redis refused more
        #: False while Redis refuses INFO (an ACL, a renamed command): its link unknown
        self._info_read = False
        self._evictions = EvictionWatch()
        #: version -> why its keys may have been evicted (``evicted_problem``): seen here
        #: or read from its meta; only the version served counts, until another is taken
        self._evicted: dict[str, str] = {}
        #: read from a read-only Redis replica: its master (``master_client``), where it
        #: is, that master's own ``EvictionWatch``, when to read its INFO next, and why
        #: it could not be read ("" when it could, logged once)
        self._master: Client | None = None
        self._master_at: tuple[str, int] | None = None
        self._master_evictions = EvictionWatch()
        self._master_due = 0.0
        self._master_problem = ""
        #: since when (this machine's clock) the read-only Redis replica read has had no
        #: link to its master (None: it is the master, or its link is up); past
        #: ``LINK_DOWN_SECONDS`` this server is behind (``_stale``)
        self._link_down_since: float | None = None
        self._stale = ""
        #: what another replica's record says was applied beyond what Redis holds (the
        #: evidence this replica re-asserts in its own record while it stands, with the
        #: time of the record it came from: it lapses with it, ``RECORD_SECONDS``)
        self._claim: dict[str, Any] | None = None
        #: what another replica's record says was served that is newer than the pointer's
        #: version and gone from Redis (``_claims``), re-asserted in this replica's record
        self._newer: dict[str, Any] | None = None
        #: when the snapshot of the version served was published (None: it does not say)
        self._published: float | None = None
        #: lost because Redis went back to an older snapshot (``_going_back``): this
        #: replica's record is kept when it stops, as evidence for the replicas after it
        self._went_back = False
        #: a newer version this replica cannot serve (another key secret): (source, why)
        self._behind: tuple[str, str] | None = None
        #: the version served was loaded by older code: read fail-closed (its exemptions,
        #: or its placeholder dates) until it is loaded again (``format_problem``); behind
        #: meanwhile
        self._old_format: tuple[str, str] | None = None
        self._refused_said = ""  # the last ConfigurationError logged: once, not every try
        #: why Redis refuses this server's rounds (a password it no longer takes, a right
        #: its user lacks: ``denied_problem``); "" once a round works again
        self._denied = ""
        self._token_of_view = b""  # the load token of the version in ``_view``
        self._last_claims_check = 0.0
        self._bloom: Bloom | None = None
        self._stream_id = b"0-0"
        self._last_beat = -math.inf  # time.monotonic: due at once
        self._master_checked = 0.0
        self._gc_due = False
        #: when (monotonic) to collect again after a switch: the version left is kept
        #: RETIRED_GRACE_SECONDS, then this replica's collection deletes it (0: none due)
        self._gc_later = 0.0
        #: why Redis refuses this replica's writes ("" while it takes them): logged once
        self._write_problem = ""
        #: Redis's refusal while it is over its maxmemory ("" when it is not): it then
        #: refuses every command queued in a transaction (MULTI), which the follower's
        #: rounds and the look-ups use, so it counts as unreachable, said once as itself
        self._full = ""
        #: failed Redis commands: the follower's rounds, and the checks' look-ups
        self.sync_errors = ErrorCount()
        self.lookup_errors = ErrorCount()
        #: Other users of this Redis in the process (the hit forwarder) count here too.
        self.other_errors: list[ErrorCount] = []
        self._round_started = time.monotonic()
        #: since when this replica cannot confirm it holds all Redis holds (None: it does)
        self._behind_since: float | None = self._round_started

    def current(self) -> RedisView | LostView | None:
        lost = self._lost
        return lost if lost is not None else self._view

    def health_problem(self) -> str:
        """Why this replica must not be trusted now ("" when it may): Redis lost the
        data it follows, or holds no version yet, or no version could be read at all
        (Redis unreachable, refused our password, another key secret), or Redis may
        evict the list's keys (``eviction_problem``), or may have evicted keys of the
        version served (``EvictionWatch``). Redis unreachable once a version is in hand
        is not one: that version still answers Bloom negatives, positives get the fail
        policy. Or Redis is there and refuses this server (its password, or a right its
        user lacks: ``_denied``, ``ReadGuard.refused``): what it loads from now is not
        followed."""
        return self._problem or self.guard.unsafe or self._denied or self._refused_reads()

    def _refused_reads(self) -> str:
        refused = self.guard.refused
        if not refused:
            return ""
        return (f"redis refuses this server's look-ups: {refused}; every check whose Bloom "
                "filter says \"maybe\" gets the channel's --unavailable decision: give its "
                "Redis user the rights the README lists (Redis users and rights)")  # fmt: skip

    def behind_problem(self) -> str:
        """Why the version served may not be Redis's current one ("" when it is): a newer
        version this replica cannot read (built with another key secret), or a
        read-only Redis replica read whose link to its master has been down for
        ``LINK_DOWN_SECONDS`` (what was loaded since is not there). The one in hand
        still answers (health SERVING); ``shixin.v1.ListCurrent`` should not."""
        if self._behind:
            return f"{self._behind[0]} was refused ({self._behind[1]})"
        if self._old_format:
            return f"{self._old_format[0]}: {self._old_format[1]}"
        return self._stale

    def _rejected(self) -> tuple[str, str] | None:
        """(source, problem) of what keeps this replica behind, for ``replica_status``."""
        if self._stale and not (self._behind or self._old_format):
            return f"the read-only Redis replica {self.url}", self._stale
        return self._behind or self._old_format

    def stop(self) -> None:
        super().stop()
        try:
            # the record of a replica that saw Redis go back is kept (``RECORD_SECONDS``):
            # the evidence for a replica started after it (``_newer_served``). Written once
            # more now: the heartbeat is once a second, and one that went to Redis before
            # it came back from its save is gone with the rest
            if self._went_back and self._lost is not None or self._newer is not None:
                self._write(self._heartbeat, time.monotonic())
            else:
                self.client.hdel(self.keys.replicas, self.replica_id)
        except redis.RedisError:
            pass
        self.client.close()
        if self._master is not None:
            self._master.close()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.sync_once(block=True)
                backoff = 0.05
                if self._denied:
                    self._denied = ""
                    self.on_event("denied-over", "")
                if self._full:
                    self._full = ""
                    self.on_event("redis-not-full", "")
            except redis.OutOfMemoryError as exc:
                # not gone: full. Each round reads, then a transaction is refused; said
                # once (not "unreachable", then "connected", every second)
                problem = str(exc) or type(exc).__name__
                if problem != self._full:
                    self.on_event("redis-full", problem)
                self._full = problem
                self.reachable = False
                self.guard.unreachable = problem
                self._stop.wait(1.0)
            except redis.RedisError as exc:
                if is_denial(exc):
                    self._refused_by_redis(exc)
                    continue
                if self.reachable or self._full:  # full was said, not yet gone
                    self.on_event("redis-down", str(exc))
                # gone: neither full nor refusing writes is known any more (status says so)
                self._full = self._write_problem = ""
                self.reachable = False
                self.guard.unreachable = str(exc) or type(exc).__name__
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
            except ConfigurationError as exc:
                self._say_refused(str(exc))
                self._stop.wait(1.0)

    def _refused_by_redis(self, exc: redis.RedisError) -> None:
        """Redis is there and refuses this server: not an outage that passes (a load
        through another user or password goes on, unseen here), so health says so, and
        it is logged once, not at each round."""
        problem = denied_problem(self.url, exc)
        if problem != self._denied:
            self.on_event("denied", problem)
        self._denied = problem
        try:  # its record says so, where the user may still write it: status --redis
            self._write(self._heartbeat, time.monotonic())
        except redis.RedisError:
            pass  # not even that: the record ages into GONE
        self._stop.wait(1.0)

    def _say_refused(self, problem: str) -> None:
        """Log a refusal (another key secret, a password) once, and again when it changes."""
        if problem != self._refused_said:
            self.on_event("refused", problem)
        self._refused_said = problem

    def sync_once(self, block: bool = False) -> None:
        """One round: check the data is still there, switch version if needed,
        apply new deltas, heartbeat. Notes whether it ended caught up (``lag_seconds``)."""
        self._round_started = started = time.monotonic()
        try:
            self._sync_round(block)
        except Exception as exc:  # Redis down, or a version it cannot serve (another secret)
            if isinstance(exc, redis.RedisError):
                self.sync_errors.count += 1
            if self._view is None and isinstance(exc, (redis.RedisError, ConfigurationError)):
                # nothing in hand to answer from: health is NOT_SERVING, and status says why
                # (Redis unreachable, a wrong or missing password, another key secret)
                why: object = exc
                if isinstance(exc, redis.RedisError) and is_denial(exc):
                    why = denied_problem(self.url, exc)
                self._problem = f"no version loaded from Redis yet: {why}"
            self._behind_since = self._behind_since or started
            raise
        view = self._view
        # a read-only Redis replica is as current as its link to its master: up, it holds
        # what the master does within milliseconds; unknown (INFO refused), it may lag
        unknown = bool(self._write_problem) and not self._info_read
        if self._lost is None and self._link_down_since is None and not unknown and (
            view is None and not self.upstream_version  # Redis holds nothing to follow yet
            or view is not None and self.upstream_version == view.version
            and self.upstream_seq <= view.info.last_delta_seq
        ):  # fmt: skip
            self._behind_since = None
        else:
            since = [t for t in (self._behind_since, self._link_down_since) if t is not None]
            self._behind_since = min(since or [started])

    def lag_seconds(self) -> float:
        """How long this replica has been unable to confirm that it holds everything
        Redis holds: 0 while its last round (every 0.1 s) applied all of Redis's current
        version; otherwise the time since the first round that did not (a version it
        cannot load, deltas it could not read, Redis unreachable, the data lost, a
        read-only Redis replica whose link to its master is down: since it went down,
        by that replica's INFO, or one that refuses INFO and writes). Each
        round applies every delta it finds, so a replica that reaches Redis is never
        behind for longer than a round; this bounds the age of any unapplied delta."""
        since = self._behind_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def redis_errors(self) -> int:
        """Redis commands that failed: the follower's, look-ups', and ``other_errors``."""
        others = sum(e.count for e in self.other_errors)
        return self.sync_errors.count + self.lookup_errors.count + others

    def _sync_round(self, block: bool) -> None:
        if time.monotonic() - self._master_checked >= MASTER_CHECK_SECONDS:
            recheck_master(self.client)
            self._master_checked = time.monotonic()
        view = self._view
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.current)
        if view is not None:
            pipe.hmget(self.keys.meta(view.version), "load_token", "last_seq", EVICTED_FIELD)
        raw, *served = pipe.execute()
        if not self.reachable and not self._full:  # a full Redis says when it is not
            self.on_event("redis-up", "")
        self.reachable = True
        self.guard.unreachable = ""
        self._read_info(raw.decode() if raw else "")
        if raw is None:
            self.upstream_version, self.upstream_seq = "", 0
            if view is None:
                self._problem = "redis holds no version yet"
            else:
                self._lose(f"redis lost version {view.version}: no current version "
                           "(flushed, restarted empty or failed over?)")  # fmt: skip
        elif view is None or self._lost is not None or raw.decode() != view.version:
            self._follow(raw.decode())
            if (
                view is not None
                and self._view is view
                and self._lost is None
                and served[0][1] is None
            ):
                # still served (the current one refused), so held: its keys must be there
                self._lose(f"redis lost version {view.version}, served here while version "
                           f"{raw.decode()} is refused: its keys are gone (deleted, or "
                           "collected while this replica's heartbeat did not reach Redis)")  # fmt: skip
        else:
            token, last, evicted = served[0]
            if last is None:
                self._lose(f"redis lost version {view.version}: its keys are gone "
                           "(flushed, restarted empty or failed over?)")  # fmt: skip
            elif (token or b"") != self._token:
                self._follow(view.version)  # another load under the same name
            elif int(last) < view.info.last_delta_seq:
                self.upstream_seq = int(last)
                self._lose(f"redis lost deltas of version {view.version}: its last seq is "
                           f"{int(last)}, {view.info.last_delta_seq} were applied here "
                           "(failed over to a replica without them?)")  # fmt: skip
            else:
                self._behind = None  # the pointer is back on the version served
                if evicted is not None:  # another replica, or a load, saw it
                    self._evicted.setdefault(view.version, evicted.decode(errors="replace"))
                self._check_held(view.version)
        view = self._view
        evicted = self._evicted.get(view.version, "") if view is not None else ""
        self.guard.unsafe = evicted or self._policy or self._master_policy
        if view is not None and self._lost is None:
            stream = self.keys.deltas(view.version)
            timeout = int(self.poll * 1000) if block else None
            reply = self.client.xread({stream: self._stream_id}, count=DELTA_PAGE, block=timeout)
            if reply:
                self._apply(view.version, reply[0][1])
        elif block:
            self._stop.wait(self.poll)
        now = time.monotonic()
        if now - self._last_beat >= 1.0:
            self._last_beat = now  # one try a second, even while Redis refuses it
            self._write(self._heartbeat, now)
        if self._gc_later and time.monotonic() >= self._gc_later:
            self._gc_later, self._gc_due = 0.0, True
        if self._gc_due and self._lost is None and not self._write_problem:
            holder = f"gc {self.replica_id}"
            collected = self._write(try_collect_garbage, self.client, self.keys, holder)
            # the lock busy: again next round; refused: left to the next load's collection
            self._gc_due = not collected and not self._write_problem

    def _read_info(self, current: str) -> None:
        """Each second, one ``INFO`` (``read_info``) of Redis: may it evict the list's
        keys (``eviction_problem``), has it evicted keys under a policy that may
        (``EvictionWatch``: the version served and ``current``, the pointer's, are
        flagged for good), and is it a read-only replica, with its link to its master up
        (``_read_link``)? Of such a replica, half a second later, one ``INFO`` of its
        master (``_read_master``): a replica reports its own policy, never its master's,
        and the master's evictions reach it as plain deletions. One INFO a round at most."""
        now = time.monotonic()
        if now - self._policy_checked >= POLICY_CHECK_SECONDS:
            self._policy_checked = now
            self._master_due = max(self._master_due, now + POLICY_CHECK_SECONDS / 2)
            if self.guard.refused:
                self._read_refused(current)
            try:
                info = read_info(self.client, self._info_sections)
            except redis.ResponseError as exc:
                # A Redis before 7.0 refuses more than one section: every default one next
                # time. INFO refused (an ACL, a renamed command): evictions cannot be seen,
                # so no look-up is trusted to Redis (the channel's --unavailable decision)
                self._info_read = False
                if self._info_sections and not isinstance(exc, redis.exceptions.NoPermissionError):
                    self._info_sections = ()
                    return
                self._info_sections = ()
                self._policy = (f"redis refuses INFO ({exc}): this server cannot see whether "
                                "Redis may evict, or has evicted, the list's keys; give its "
                                "Redis user INFO (ACL: +info), and do not rename or disable "
                                "INFO (rename-command)")  # fmt: skip
                return
            self._info_read = True
            self._policy = eviction_problem(info)
            self._note_evictions(self._evictions.seen(info), current, self.client)
            self._read_link(info)
        elif self._master_at is not None and now >= self._master_due:
            self._master_due = now + POLICY_CHECK_SECONDS
            self._read_master(current, now)

    def _read_refused(self, current: str) -> None:
        """A look-up refused for a right (``ReadGuard.refused``): the same read once more,
        by the follower; the mark goes once Redis takes it."""
        version = self._view.version if self._view is not None else current
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.subjects(version, 0), bytes(16))
            pipe.exists(self.keys.meta(version))
            try:
                pipe.execute()
            except redis.RedisError:
                return  # still refused (or another trouble, which the round says)
        self.guard.refused = ""

    def _read_link(self, info: dict[str, Any]) -> None:
        """Whether Redis is a read-only replica (``role:slave``), where its master is, and
        since when its link to that master has been down (``master_link_status``,
        ``master_link_down_since_seconds``: -1, or absent, when it never came up)."""
        if info.get("role") != "slave":
            self._link_down_since, self._stale = None, ""
            self._forget_master()
            return
        try:
            where: tuple[str, int] | None = (str(info["master_host"]), int(info["master_port"]))
        except (KeyError, TypeError, ValueError):
            where = None
        if isinstance(self.client.connection_pool, SentinelConnectionPool):
            where = None  # a master being demoted: the sentinels name the new one
        if where != self._master_at:
            self._forget_master()
            self._master_at = where
        if info.get("master_link_status") == "up":
            self._link_down_since, self._stale = None, ""
            return
        wall = time.monotonic()  # the clock of every time kept here (``lag_seconds``)
        try:
            down_for = float(info.get("master_link_down_since_seconds", -1))
        except (TypeError, ValueError):
            down_for = -1.0
        since = wall - down_for if down_for >= 0 else wall
        if self._link_down_since is not None:
            since = min(since, self._link_down_since)
        self._link_down_since = since
        if self._behind_since is None or since < self._behind_since:
            # now, not at the round's end: the lag read while this round runs (status,
            # metrics) counts from when the link went down as the BEHIND it may report does
            self._behind_since = since
        if wall - since < LINK_DOWN_SECONDS:
            return  # down for a moment: no news yet
        master = "{}:{}".format(*where) if where else "(unknown)"
        self._stale = (
            f"{self.url} is a read-only Redis replica whose link to its master {master} has "
            f"been down since {utc(time.time() - (wall - since))} (INFO replication master_link_status "
            f"{info.get('master_link_status', '?')}): versions and deltas loaded since are "
            "not there, so this server answers from what it held then; bring the link back "
            "(the master's password, the network), or point --redis at the master, or use "
            f"Sentinel ({SENTINEL_FORM})"
        )

    def _read_master(self, current: str, now: float) -> None:
        """One ``INFO`` of the master of the read-only Redis replica read (``_read_info``),
        over a client made as this one is (``master_client``): its policy, and its
        evictions, flagged in the meta there where it takes the write. Not reachable (an
        address only the replica can reach, another password): said once, tried again
        each ``MASTER_RETRY_SECONDS``, and its policy last read still counts."""
        assert self._master_at is not None
        host, port = self._master_at
        if self._master is None:
            self._master = master_client(self.client, host, port)
        try:
            info = read_info(self._master, self._info_sections)
        except redis.RedisError as exc:
            problem = (
                f"cannot read INFO of {host}:{port}, the master of the read-only Redis "
                f"replica {self.url} ({exc}): whether the master may evict the list's keys "
                "is seen here only once a server or a load connected to it flags the "
                f"version it evicted from (meta {EVICTED_FIELD}); tried again every "
                f"{MASTER_RETRY_SECONDS:g}s"
            )
            if problem != self._master_problem:
                self.on_event("master-unread", problem)
            self._master_problem = problem
            self._master_due = now + MASTER_RETRY_SECONDS
            return
        self._master_problem = ""
        policy = eviction_problem(info)
        where = f"the master {host}:{port} of the read-only Redis replica {self.url}"
        self._master_policy = f"{where}: {policy}" if policy else ""
        evidence = self._master_evictions.seen(info)
        self._note_evictions(evidence and f"{where}: {evidence}", current, self._master)

    def _forget_master(self) -> None:
        if self._master is not None:
            self._master.close()
        self._master = self._master_at = None
        self._master_policy = self._master_problem = ""
        self._master_evictions = EvictionWatch()

    def _note_evictions(self, evidence: str, current: str, writer: Client) -> None:
        """``evidence`` (``EvictionWatch.seen``; "" for none) that Redis evicted keys
        under a policy that may evict the list's: the version served, and ``current``
        (the pointer's, which may be taken next), are not served until another version
        is taken; each flagged in its meta through ``writer`` (``flag_evicted``), so the
        other replicas and a restarted one know it too, where ``writer`` takes it."""
        if not evidence:
            return
        view = self._view
        for version in {view.version if view is not None else "", current} - {""}:
            if version in self._evicted:
                continue
            problem = evicted_problem(version, evidence)
            self._evicted[version] = problem
            if writer is self.client:
                self._write(flag_evicted, writer, self.keys, version, problem)
            else:  # the master of a read-only replica: best effort, nothing counts on it
                try:
                    flag_evicted(writer, self.keys, version, problem)
                except redis.RedisError:
                    pass

    def _cannot_follow(self, reason: str) -> None:
        """``version`` cannot be served: with nothing in hand, say so; else lose it."""
        if self._view is None:
            self._problem = reason
        else:
            self._lose(reason)

    def _lose(self, reason: str) -> None:
        """Redis no longer holds what this replica serves: fail every check until it does."""
        if reason != self._problem:
            self.on_event("lost", reason)
        self._problem = reason
        view = self._view
        if view is not None and (self._lost is None or self._lost.reason != reason):
            self._lost = LostView(view.info, reason)

    def _tell_went_back(self) -> None:
        """Redis went back from the version served here: this replica's record in
        ``P:replicas`` is the evidence for a replica started after it (``_newer_served``),
        kept when it stops. Written at once, not at the next heartbeat: the last one
        went to Redis before it came back from its save and is gone with the rest, and
        a replica stopped or killed within the second would leave nothing, so a replica
        started next would serve the older list. Redis refusing the write, or gone
        again, leaves it to the heartbeat (due at once) and to ``stop``."""
        if self._went_back:
            return  # told already; the heartbeat keeps it
        self._went_back = True
        self._last_beat = -math.inf  # due now, should this write not go in
        self._write(self._heartbeat, time.monotonic())

    def _check_held(self, version: str) -> None:
        """On the version served, each second: do records of other replicas say they
        applied more of it than Redis holds (``_claims``)? Nothing here grows with the
        list: evicted subject buckets are the INFO check's (``_read_info``: the policy,
        and keys evicted under it), never counted."""
        now = time.monotonic()
        if now - self._last_claims_check >= 1.0:
            self._last_claims_check = now
            reason = self._claims(version, self._token)
            if reason:
                self._lose(reason)

    def _claims(self, version: str, token: bytes) -> str:
        """Why Redis lost deltas of ``version`` by what registered replicas report ("" if
        it did not): a record, or a claim copied into one, of this version and load (its
        load token) at a seq above the last Redis holds, from a record written within
        ``RECORD_SECONDS``. A replica started after Redis came back from an older save
        has applied nothing more itself; the records of those that did say it.

        Counts only while ``version`` is Redis's current version under ``token``: a load
        again (another version or token) is not this version, no record matches. A
        record or claim without a load token (older code, or a version name used before
        ``P:names``) proves nothing. A claim keeps the time of the record it came from,
        so claims copied from replica to replica lapse with it, never kept alive."""
        fields = ("last_seq", "load_token", ROLLBACK_FIELD, CURRENT_AT_FIELD, *PUBLISHED_FIELDS)
        with self.client.pipeline(transaction=True) as pipe:  # one instant: no delta between
            pipe.get(self.keys.current)
            pipe.hmget(self.keys.meta(version), *fields)
            pipe.hgetall(self.keys.replicas)
            pipe.time()  # records' ``at`` are Redis's time: compared with Redis's
            current, values, records, (seconds, micros) = pipe.execute()
        meta = {k: v for k, v in zip(fields, values, strict=True) if v is not None}
        last, held_token = meta.get("last_seq"), meta.get("load_token")
        self._claim = self._newer = None
        if last is None or not token or current != version.encode() or held_token != token:
            return ""  # gone, or not the version and load served: the other checks say so
        held, ours, now = int(last), token.decode(errors="replace"), seconds + micros / 1e6
        went_back = self._newer_served(version, meta, records, now)
        if went_back:
            return went_back
        # another load's records of this version count from the time this load was made
        # current (a replica still serving what it applied), never for one loaded to go
        # back
        since = (
            None if meta.get(ROLLBACK_FIELD) == b"1" else float(meta.get(CURRENT_AT_FIELD, b"0"))
        )
        best: dict[str, Any] | None = None
        for replica_id, raw in records.items():
            try:
                record = orjson.loads(raw)
                if not isinstance(record, dict):
                    continue
                for claim in (record, record.get("claim")):
                    found = _evidence(claim, version, ours, held, now, replica_id.decode(),
                                      since, published_at(meta))  # fmt: skip
                    if found is not None and (best is None or found["seq"] > best["seq"]):
                        best = found
            except (TypeError, ValueError, AttributeError):
                continue  # a record this code cannot read proves nothing
        self._claim = best
        if best is None:
            return ""
        missing = missing_deltas(held + 1, best["seq"])
        if (best["version"], best["token"]) == (version, ours):
            of, cause = (
                "of that load",
                "Redis restarted from an older save, or failed over to a replica without them?",
            )
        else:
            of = "of an earlier load of it"
            cause = "Redis flushed, or restarted empty, and the snapshot loaded again without them?"
        return (f"redis lost deltas of version {version}: it holds seq {held}, but replica "
                f"{best['replica']} applied up to seq {best['seq']} (its record in "
                f"{self.keys.replicas}) {of}: {missing} "
                f"{'is' if missing.startswith('delta ') else 'are'} missing ({cause}); load "
                f"{missing} again, in seq order (or the snapshot and its deltas)")  # fmt: skip

    def _newer_served(
        self, version: str, meta: dict[str, bytes], records: dict[bytes, bytes], now: float
    ) -> str:
        """Why Redis went back from a newer snapshot to ``version`` by what registered
        replicas report ("" if it did not): a record (or a ``newer`` claim copied into one)
        written within ``RECORD_SECONDS``, after ``version`` was made current (meta
        ``current_at``, where the load wrote it), of a version whose snapshot was
        published after ``version``'s and that Redis no longer holds. A replica started
        after Redis came back from an older save has never served the newer version;
        the records of those that did say it. Nothing when ``version`` was loaded with
        ``--allow-rollback`` (older on purpose) or does not say when it was published."""
        ours = published_at(meta)
        if ours is None or meta.get(ROLLBACK_FIELD) == b"1":
            return ""
        since = float(meta.get(CURRENT_AT_FIELD, b"0"))
        found: list[dict[str, Any]] = []
        for replica_id, raw in records.items():
            try:
                record = orjson.loads(raw)
                if not isinstance(record, dict):
                    continue
                for claim in (record, record.get("newer")):
                    seen = _newer_evidence(claim, version, ours, since, now, replica_id.decode())
                    if seen is not None:
                        found.append(seen)
            except (TypeError, ValueError, AttributeError):
                continue  # a record this code cannot read proves nothing
        if not found:
            return ""
        names = sorted({seen["version"] for seen in found})
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.meta(name))
            held = {name for name, there in zip(names, pipe.execute(), strict=True) if there}
        gone = [seen for seen in found if seen["version"] not in held]  # held: rolled back
        if not gone:
            return ""
        best = max(gone, key=lambda seen: seen["published"])
        self._newer = best
        return going_back_problem(
            best["version"], best["published"], version, ours,
            f"replica {best['replica']} served (its record in {self.keys.replicas})",
        )  # fmt: skip

    def _going_back(self, version: str, meta: dict[str, bytes]) -> str:
        """Why the pointer's move to ``version`` (its ``meta``) is Redis going back ("" if
        it is not): its snapshot was published before that of the version served here,
        which Redis no longer holds. A load never does that (it refuses an older
        snapshot) unless given ``--allow-rollback`` (meta ``rollback``); a save or a
        Redis replica from before the newer load does. A version served that is still
        whole in Redis was replaced on purpose (by an older shixin-check's rollback)."""
        view, then, now = self._view, self._published, published_at(meta)
        if view is None or then is None or now is None or now >= then:
            return ""
        if meta.get(ROLLBACK_FIELD) == b"1":
            return ""
        if self._token and self.client.hget(self.keys.meta(view.version), "load_token") == (
            self._token
        ):
            return ""
        return going_back_problem(view.version, then, version, now, "this server served")

    def _undoes_deltas(self, version: str, token: bytes, meta: dict[str, bytes]) -> str:
        """Why taking ``version`` (load ``token``, its ``meta``) would undo deltas applied
        here ("" if it would not): the snapshot served loaded again (another load token;
        the same version, or one published at the same time: a copy of the file, or
        the file touched, loads under another name), its last seq below the last seq
        applied here, not loaded with ``--allow-rollback``. ``load`` refuses such a
        snapshot while Redis holds the deltas it would undo; after a FLUSHALL (or a
        restart empty, or from an older save) Redis no longer knows them, this replica
        does. Another snapshot is not weighed so: this replica may have missed a
        rollback on purpose and the loads since (stopped meanwhile), and one published
        before is ``_going_back``."""
        view = self._view
        if (
            view is None
            or token == self._token
            or not (version == view.version or _same_time(published_at(meta), self._published))
        ):
            return ""
        applied, held = view.info.last_delta_seq, int(meta.get("last_seq", b"0"))
        if held >= applied or meta.get(ROLLBACK_FIELD) == b"1":
            return ""
        missing = missing_deltas(held + 1, applied)
        return (f"redis lost deltas: it now holds version {version} (loaded again) up to seq {held}, "
                f"but this server applied up to seq {applied}: taking it would undo {missing} "
                "(Redis flushed, or restarted empty, and the snapshot loaded again without "
                f"them?); load {missing} again, in seq order (or a snapshot that includes "
                "them), or load the snapshot with --allow-rollback to go back on purpose")  # fmt: skip

    def _follow(self, version: str) -> None:
        """Serve ``version``, the pointer's, if Redis holds it whole; else say what is lost.

        Called every round while a version cannot be served (lost, behind, refused):
        only small reads (meta, ``P:replicas``) come before the version is taken; its
        Bloom filter and deltas are read only to take it."""
        view = self._view
        meta = read_meta(self.client, self.keys, version)
        token = meta.get("load_token", b"")
        if view is not None and (version, token) in self._left:
            self.upstream_version, self.upstream_seq = version, 0
            then, now = self._published, published_at(meta)
            if then is not None and now is not None and now < then:
                self._lose(going_back_problem(view.version, then, version, now,
                                              "this server served"))  # fmt: skip
            else:
                self._lose(f"redis went back to version {version}, older than {view.version} "
                           "(failed over to a replica without the newest load?)")  # fmt: skip
            self._tell_went_back()
            return
        self.upstream_version = version
        self.upstream_seq = int(meta.get("last_seq", b"0"))
        if (
            view is not None and self._lost is not None and version == view.version
            and token == self._token and self.upstream_seq < view.info.last_delta_seq
        ):  # fmt: skip
            return  # still short of the deltas applied here: lost until they are back
        absent = (f"redis names version {version} as current but does not hold it "
                  "(flushed, restarted empty or failed over?)")  # fmt: skip
        if "last_seq" not in meta or meta.get("state", b"ready") != b"ready":
            self._cannot_follow(absent)  # a load writes a version whole before the pointer
            return
        try:
            check_fingerprint(meta, self.keyer, version)
        except ConfigurationError as exc:
            if view is None:
                raise  # nothing in hand: NOT_SERVING (sync_once says why)
            # the version in hand still answers; the newer one is not served: behind
            self._behind = (f"redis version {version}", str(exc))
            self._say_refused(str(exc))
            return
        reason = self._going_back(version, meta)
        if reason:
            self._lose(reason)
            self._tell_went_back()
            return
        reason = self._undoes_deltas(version, token, meta)
        if reason:
            self._lose(reason)
            return
        reason = self._claims(version, token)
        if reason:
            self._cannot_follow(reason)
            return
        lost = stream_problem(self.client, self.keys, version, meta)
        if lost:  # before the Bloom filter: tried again each round while it stands
            self._cannot_follow(lost_ops_problem(version, lost))
            return
        raw_bloom = self.client.get(self.keys.bloom(version))
        if raw_bloom is None:
            self._cannot_follow(absent)
            return
        old_format = None
        if format_of(meta) < FORMAT:
            old_format = (f"redis version {version}", format_problem(version, format_of(meta)))
            self.on_event("old-format", old_format[1])
        # the meta (read above) first, then the stream: it holds every op up to the
        # meta's last seq by now (a load writes both in one MULTI/EXEC). Ops loaded
        # since are left to the next round, so the label and counts are the meta's
        last = int(meta["last_seq"])
        entries = _through(self.client.xrange(self.keys.deltas(version)), last)
        if not self.client.hexists(self.keys.meta(version), "last_seq"):
            self._lose(f"redis lost version {version} while its deltas were read "
                       "(flushed, restarted empty or failed over?)")  # fmt: skip
            return
        # every op from the snapshot's to the label, each once: a record trimmed since
        # the check above would leave a listing out of the filter under a label past it
        start = stream_start(meta, _seq(entries[0]) if entries else None)
        missing = missing_ops(entries, start - 1, last)
        if missing:
            stream = self.keys.deltas(version)
            self._cannot_follow(lost_ops_problem(version, trimmed(stream, version, missing)))
            return
        # every read is done: a connection lost above left this replica as it was
        bloom = Bloom.load_bytes(raw_bloom, int)
        self._bloom, self._token = bloom, meta.get("load_token", b"")
        self._stream_id = entries[-1][0] if entries else b"0-0"
        _add_listed(bloom, entries)
        # no op in the stream: the version is its snapshot, whose seq the meta says
        self._install(version, meta, _seq(entries[-1]) if entries else last)
        self._lost = None
        self._problem = ""
        self._claim = self._behind = self._newer = None
        self._went_back = False
        self._published = published_at(meta)
        self._old_format = old_format
        self._refused_said = ""
        # evictions seen before only count for a version taken now if they were its own
        self._evicted = {v: why for v, why in self._evicted.items() if v == version}
        if EVICTED_FIELD in meta:
            self._evicted.setdefault(version, meta[EVICTED_FIELD].decode(errors="replace"))
        if view is not None and (view.version, self._token_of_view) != (version, self._token):
            self._left[(view.version, self._token_of_view)] = None
            if len(self._left) > LEFT_KEPT:
                del self._left[next(iter(self._left))]
        self._token_of_view = self._token
        self.on_event("version", version)
        self._write(self._heartbeat, time.monotonic())
        self._gc_due = True
        self._gc_later = time.monotonic() + RETIRED_GRACE_SECONDS + LIVE_SECONDS

    def _apply(self, version: str, entries: list[StreamEntry]) -> bool:
        """Add the delta ops from stream ``entries`` on (the page this round read) to
        the view; False if the version is gone meanwhile.

        The view is labelled only with ops its filter holds, and only with whole
        deltas: a load writes a delta's ops to the stream and its last seq to the meta
        in one MULTI/EXEC, so the meta, read after ``entries``, names a seq whose every
        op the stream holds by then. The stream is read on from ``entries``, a page at
        a time, up to that seq (the rest of a delta longer than a page, or a delta
        loaded since ``entries`` were read) and no further; the view takes that seq as
        its label, with that meta's counts. Ops loaded after the meta was read are
        left to the next round, which reads a meta that counts them.

        Every read comes first; the cursor moves past the ops only once the view
        holds them: a connection lost in between (a failover) reads them again on
        the next round, and adding keys to the Bloom filter twice is harmless."""
        assert self._bloom is not None
        meta = read_meta(self.client, self.keys, version)
        if "last_seq" not in meta:
            self._lose(f"redis lost version {version} while its deltas were read "
                       "(flushed, restarted empty or failed over?)")  # fmt: skip
            return False
        last, stream = int(meta["last_seq"]), self.keys.deltas(version)
        entries = list(entries)
        while _seq(entries[-1]) < last:  # each page ends further on: bounded by the stream
            reply = self.client.xread({stream: entries[-1][0]}, count=DELTA_PAGE)
            if not reply:
                break  # the stream holds no more: labelled with the last op it holds
            entries += reply[0][1]
        held = _through(entries, last)
        if not held:
            return True  # nothing up to the meta's seq: all of it waits for the next round
        assert self._view is not None
        missing = missing_ops(held, self._view.info.last_delta_seq, _seq(held[-1]))
        if missing:  # trimmed before this replica read them: no label past the gap
            unapplied = f"{missing}, which this server has not applied"
            self._lose(lost_ops_problem(version, trimmed(stream, version, unapplied)))
            return False
        _add_listed(self._bloom, held)
        self._stream_id = held[-1][0]
        self._install(version, meta, _seq(held[-1]))
        return True

    def _install(self, version: str, meta: dict[str, bytes], seq: int) -> None:
        assert self._bloom is not None
        snapshot_seq = int(meta.get("snapshot_seq", b"0"))
        fmt = format_of(meta)
        info = VersionInfo(
            version=version if seq == snapshot_seq else f"{version}+{seq}",
            source=meta.get("source", b"").decode(),
            loaded_at=float(meta.get("loaded_at", b"0")),
            source_timestamp=float(meta.get("source_timestamp", b"0")),
            last_delta_seq=seq,
            counts=_counts_from(
                meta.get("counts"),
                int(meta.get("subject_keys", b"0")),
                meta.get("expiries"),
                fmt >= DATES_FORMAT,
            ),
            includes_seq=snapshot_seq,
        )
        self.upstream_version = version
        self.upstream_seq = int(meta.get("last_seq", b"0"))
        self._view = RedisView(
            info, version, self._bloom, self.client, self.keys, int(meta["bucket_bits"]),
            self.lookup_errors, fmt, self.guard,
        )  # fmt: skip

    def _write(self, write: Callable[..., object], *args: object) -> object:
        """``write(*args)`` (a heartbeat, a garbage collection): its result, or False
        when Redis answers it with an error (a read-only replica, an ACL, out of memory).

        Such a refusal is no reason to stop following: reads still work, so checks
        are answered and the version is followed as before; only this replica is
        not registered. It is logged once when it starts (``write-refused``), counted
        (``sync_errors``) and tried again each second, logged again only when its
        reason changes, and when it clears (``write-works``). Redis unreachable is
        not this: ``ConnectionError`` goes up, as for any command."""
        try:
            done = write(*args)
        except redis.ResponseError as exc:
            self.sync_errors.count += 1
            problem = self._refusal(exc)
            if problem != self._write_problem:
                self.on_event("write-refused", problem)
            self._write_problem = problem
            return False
        if self._write_problem:
            self._write_problem = ""
            self.on_event("write-works", "")
        return done

    def _refusal(self, exc: redis.ResponseError) -> str:
        """A refused write in one line: what it costs, and what to do about it."""
        what, todo = refused_write(exc, str(exc))
        return (f"cannot write to {self.url}: {what}; this server follows the list from it but "
                f"cannot register in {self.keys.replicas} (status --redis does not list it, and "
                f"a load does not spare the version it serves): {todo}; counted in "
                "shixin_redis_errors_total, logged again when it changes or clears")  # fmt: skip

    def _heartbeat(self, now: float) -> None:
        """Register what this replica serves in ``P:replicas`` (``now``: ``time.monotonic``,
        only to beat once a second: a wall clock stepped back an hour stopped the beats, and
        the version served was collected as no replica's; the record's ``at`` is Redis's)."""
        view = self._view
        record: dict[str, Any] = {
            "version": view.version if view else "",
            "seq": view.info.last_delta_seq if view else 0,
            "token": self._token_of_view.decode(errors="replace") if view else "",
            "at": redis_time(self.client),  # never this machine's clock: collect_garbage
            "clock": "redis",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "problem": self.health_problem() or self.behind_problem(),
        }
        if view is not None and self._published is not None:
            record["published"] = self._published
        if self._claim is not None:  # kept alive while it stands, whoever made it
            record["claim"] = self._claim
        if self._newer is not None:  # likewise
            record["newer"] = self._newer
        self.client.hset(self.keys.replicas, self.replica_id, orjson.dumps(record))
        self._last_beat = now

    def replica_status(self) -> dict[str, object]:
        rejected = self._rejected()
        return {
            "index_backend": "redis",
            "replica_id": self.replica_id,
            "upstream_version": self.upstream_version,
            "upstream_last_delta_seq": self.upstream_seq,
            "lag_deltas": self.lag(),
            "index_reachable": self.reachable and self._lost is None,
            "not_serving_reason": self.health_problem(),
            # over its maxmemory it refuses every transaction, the heartbeat's too, which
            # a round may not reach (its reads refused first): said here all the same
            "redis_write_refused": self._write_problem
            or (
                f"cannot write to {self.url}: it is over its maxmemory ({self._full}): raise "
                "maxmemory or free memory in Redis"
                if self._full
                else ""
            ),
            "behind": rejected is not None,
            "rejected_source": rejected[0] if rejected else "",
            "rejected_problem": rejected[1] if rejected else "",
        }

    def lag(self) -> int:
        """Deltas this replica is behind Redis; -1 when that cannot be told: Redis
        cannot be reached, or has lost the version served here (``health_problem``)."""
        view = self._view
        if not self.reachable or self._lost is not None:
            return -1
        if view is None:
            return self.upstream_seq
        return max(0, self.upstream_seq - view.info.last_delta_seq)


def _evidence(
    claim: object,
    version: str,
    token: str,
    held: int,
    now: float,
    replica_id: str,
    since: float | None = None,
    published: float | None = None,
) -> dict[str, Any] | None:
    """A replica's record (or a claim copied into one) as evidence that Redis lost
    deltas of ``version`` under load ``token``, Redis holding up to seq ``held``: the
    claim to copy (its version, token, seq, replica, and ``at``, the time of the
    record it came from), or None when it is not: another version, no load token, a
    seq Redis holds, or a record older than ``RECORD_SECONDS``. Another load's record
    of the same snapshot (``version``, or one ``published`` at the same time: a copy
    of the file loads under another name) counts only when ``since`` is given (the
    time the load served now was made current; None for one loaded with
    ``--allow-rollback``) and it was written since: a replica still serving what it
    applied when the snapshot was loaded again without the deltas."""
    if not isinstance(claim, dict) or not token:
        return None
    claimed, claimed_token = claim.get("version"), claim.get("token")
    if not isinstance(claimed, str) or not isinstance(claimed_token, str) or not claimed_token:
        return None
    if claimed != version and not _same_time(claim.get("published"), published):
        return None
    try:
        seq, at = int(claim.get("seq", 0)), float(claim.get("at", 0))
    except (TypeError, ValueError, OverflowError):
        return None  # unreadable: proves nothing
    if seq <= held or now - at >= RECORD_SECONDS:
        return None
    if (claimed, claimed_token) != (version, token) and (since is None or at < since):
        return None
    replica = claim.get("replica", replica_id)
    return {"version": claimed, "token": claimed_token, "seq": seq,
            "replica": replica if isinstance(replica, str) else replica_id,
            "at": min(at, now), "published": claim.get("published")}  # fmt: skip


def _same_time(one: object, other: float | None) -> bool:
    """Two snapshots' ``published_at`` name the same instant (neither missing)."""
    return isinstance(one, int | float) and other is not None and float(one) == other


def going_back_problem(newer: str, newer_at: float, older: str, older_at: float, who: str) -> str:
    """Why a replica is not serving: Redis went back from version ``newer`` (published
    ``newer_at``), which ``who``, to the older ``older`` (published ``older_at``)."""
    return (
        f"redis went back to version {older} (published {utc(older_at)}) from version "
        f"{newer} (published {utc(newer_at)}), which {who}, and no longer holds {newer} "
        "(restarted from an older save, or failed over to a replica without the newest "
        f"load?): load the snapshot of {newer} (or a newer one) again, then its deltas in "
        f"seq order, or load {older}'s snapshot again with --allow-rollback to go back on "
        "purpose"
    )


def _newer_evidence(
    claim: object, version: str, published: float, since: float, now: float, replica_id: str
) -> dict[str, Any] | None:
    """A replica's record (or a ``newer`` claim copied into one) as evidence that it
    served a version newer than ``version`` (published ``published``, made current at
    ``since``): the claim to copy (version, published, replica, and ``at``, the time of
    the record it came from), or None when it is not: ``version`` itself, no publish
    time or an older one, a record from before ``since`` or older than ``RECORD_SECONDS``."""
    if not isinstance(claim, dict):
        return None
    served = claim.get("version")
    if not isinstance(served, str) or not served or served == version:
        return None
    try:
        theirs, at = float(claim.get("published", 0)), float(claim.get("at", 0))
    except (TypeError, ValueError, OverflowError):
        return None  # unreadable: proves nothing
    if theirs <= published or at <= since or now - at >= RECORD_SECONDS:
        return None
    replica = claim.get("replica", replica_id)
    return {"version": served, "published": theirs,
            "replica": replica if isinstance(replica, str) else replica_id,
            "at": min(at, now)}  # fmt: skip


def _add_listed(bloom: Bloom, entries: list[StreamEntry]) -> None:
    """The Bloom keys that delta stream ``entries`` list, added to ``bloom``."""
    for _, fields in entries:
        for hi in filter(None, fields.get(b"bloom", b"").decode().split(",")):
            bloom.add(int(hi, 16))


def _seq(entry: StreamEntry) -> int:
    """The delta seq of the op a stream ``entry`` records."""
    return int(entry[1][b"seq"])


def _through(entries: list[StreamEntry], last: int) -> list[StreamEntry]:
    """``entries`` up to seq ``last``: a version's stream holds its ops in seq order."""
    end = len(entries)
    while end and _seq(entries[end - 1]) > last:
        end -= 1
    return entries[:end]


def replicas(client: Client, keys: RedisKeys | None = None) -> list[dict[str, Any]]:
    """Every registered replica, what it serves, and how far behind it is."""
    keys = keys or RedisKeys()
    current = client.get(keys.current)
    version = current.decode() if current else ""
    last = int(read_meta(client, keys, version).get("last_seq", b"0")) if version else 0
    now = redis_time(client)  # what heartbeats are stamped with
    out = []
    for replica_id, raw in sorted(client.hgetall(keys.replicas).items()):
        record = orjson.loads(raw)
        behind = "version" if record.get("version") != version else last - record.get("seq", 0)
        problem = record.get("problem", "")
        if isinstance(behind, int) and behind < 0 and not problem:  # Redis lost what it applied
            problem = (f"it applied seq {record.get('seq', 0)} but Redis holds seq {last}: "
                       f"Redis lost {missing_deltas(last + 1, record.get('seq', 0))}; load "
                       "them again, in seq order")  # fmt: skip
        out.append(
            {
                "replica": replica_id.decode(),
                "version": record.get("version", ""),
                "seq": record.get("seq", 0),
                "seen_seconds_ago": round(now - record.get("at", 0), 1),
                "behind": behind,
                "problem": problem,
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
