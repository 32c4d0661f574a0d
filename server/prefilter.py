"""The Bloom prefilter gateways download (GetPrefilter): built per list version, cached.

A gateway that holds the filter answers definite negatives (ALLOW,
NOT_LISTED) without a round trip; everything else it sends here. So the
filter must never miss a listed subject of the version it names, and must
not hand the gateway anything that tests identities against the index.

- **Its own key space.** Items are prefilter keys (``shixin_check.domain.keys.
  PrefilterKeyer``, keyed with ``SubjectKeyer.prefilter_key()``), never the
  index's subject keys, so the key the header hands out opens nothing but this
  filter. The server's own Bloom filter (over subject keys) is not it.
- **Built from the list file.** The index keeps only keyed hashes of the
  snapshot's identities, and a subject key cannot become a prefilter key
  without the plaintext number, so a version's base filter is built by
  reading its snapshot file again (``VersionInfo.source``), and checked
  against the served base: the multiset of subject keys read must equal the
  base's, or the file changed since it was loaded and nothing is served
  (``PREFILTER_UNAVAILABLE``, FAILED_PRECONDITION, until the next load).
  Entries added by deltas carry their identities in the overlay
  (``Overlay.added``): each version's filter is the base filter plus theirs.
  Memory mode only: a Redis-mode replica holds neither the file nor the
  numbers, only subject keys, and refuses the same way.
- **Only ever clears.** A version's filter holds every identity of its base
  snapshot, including entries delisted since (a Bloom filter cannot remove),
  and every identity of the entries deltas added that the version still
  holds: a delisted subject costs the gateway a round trip until the next
  snapshot, never a wrong ALLOW. For a caller behind by deltas only, the
  additions are enough (``Prefilters.download``), unless a delta since
  delisted an entry an earlier one added (its keys would stay in the caller's
  filter and not in this one): then the whole filter.
- **A label does not pin its content.** A server restarted with a delta
  rewritten in place (its ``applied-*`` record deleted, or no index folder)
  serves other content under the same ``BASE+N``, and additions are computed
  from this process's filter of ``known_version``, not from what the caller
  holds. So every header carries the whole filter's SHA-256
  (``filter_sha256``: ``VersionFilter.sha256``, computed once per version),
  and the client compares its filter with it after adding, asking for the
  whole filter when they differ (``clients/prefilter.py``): it never keeps a
  filter that is not the server's under the server's label.
- **Served only to callers that look up what a check here does.** A gateway
  whose lookup rules are below ``server.convert.LOOKUP_RULES`` would test
  fewer readings of an identity than a check here looks up and clear a listed
  person (a passport number sent as another document type), so the request
  says its rules (``PrefilterRequest.lookup_rules``) and one below the
  server's is refused before the list is looked at (``client_rules``:
  ``PREFILTER_CLIENT_OUTDATED``, FAILED_PRECONDITION). Every client library
  older than that field sends 0 and is refused: the Python clients then drop
  the filter and send every check to the server. The header's
  ``lookup_rules`` says the same number, for the client's own check
  (``clients/prefilter.py``).
- **Deterministic.** The same version gives the same bytes in every process
  (rbloom with ``int`` as its hash over the keys' high 64 bits, sized from
  the snapshot's key count), so a gateway moving between workers or replicas
  of one snapshot gets the same filter.

Builds run off the event loop (``Prefilters.get``), a big snapshot file read
by worker processes as the loader reads it; a caller whose deadline comes
first is told PREFILTER_BUILDING (UNAVAILABLE) and retries. A version's
filter is built once and the newest few are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import multiprocessing
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from rbloom import Bloom

from shixin.v1 import check_pb2 as pb
from shixin_check.domain.errors import ConfigurationError, NotReady, RowError, ShixinError
from shixin_check.domain.index import ListView
from shixin_check.domain.keys import PREFILTER_KEY_SCHEME, SubjectKeyer
from shixin_check.domain.model import Channel
from shixin_check.loader.index_memory import MemoryView
from shixin_check.loader.listfile import line_starts, read_entries
from shixin_check.loader.versions import default_workers
from shixin_check.server.convert import LOOKUP_RULES

#: The most bytes a ``data`` chunk carries.
CHUNK_BYTES = 1 << 20
#: The false-positive rate the filter keeps up to its expected items.
FALSE_POSITIVE_RATE = 0.001
#: How the filter is laid out and hashed (PrefilterHeader.hash_scheme).
HASH_SCHEME = "rbloom-1/int-hi64"
#: Room for the keys deltas add to a snapshot before the next one.
HEADROOM = 1.25
#: Versions whose filters are kept (each holds its bytes).
KEEP_VERSIONS = 3
#: The ErrorInfo reasons of GetPrefilter's own refusals.
PREFILTER_UNAVAILABLE = "PREFILTER_UNAVAILABLE"
PREFILTER_BUILDING = "PREFILTER_BUILDING"
PREFILTER_CLIENT_OUTDATED = "PREFILTER_CLIENT_OUTDATED"


def unavailable(message: str) -> ShixinError:
    """FAILED_PRECONDITION: this server cannot build the filter (until the next load)."""
    return ConfigurationError(message).with_reason(PREFILTER_UNAVAILABLE)


def client_rules(rules: int) -> None:
    """Refuse a caller whose lookup rules (``PrefilterRequest.lookup_rules``) are below
    this server's: FAILED_PRECONDITION, ``PREFILTER_CLIENT_OUTDATED``, until it upgrades."""
    if rules >= LOOKUP_RULES:
        return
    sent = (
        "0 (not sent: a client library older than PrefilterRequest.lookup_rules)"
        if rules == 0
        else str(rules)
    )
    raise ConfigurationError(
        f"lookup_rules: the client's lookup rules are {sent}, below this server's "
        f"{LOOKUP_RULES}: it would test fewer readings of an identity than a check here "
        "looks up and clear listed people locally, so no prefilter is served to it; upgrade "
        "the gateway's shixin-check client library (until then, send every check to the server)"
    ).with_reason(PREFILTER_CLIENT_OUTDATED)


def split_version(version: str) -> tuple[str, int]:
    """(snapshot version, delta seq) of a version label ``BASE`` or ``BASE+SEQ``."""
    base, plus, seq = version.rpartition("+")
    if plus and seq.isdigit():
        return base, int(seq)
    return version, 0


@dataclass(frozen=True, eq=False)
class BaseFilter:
    """The filter of one snapshot's identities, before any delta."""

    base_version: str
    bloom: Bloom
    expected_items: int
    items: int


@dataclass(frozen=True, eq=False)
class VersionFilter:
    """One version's filter as it is sent: its bytes, their SHA-256 and what deltas added."""

    version: str
    base_version: str
    seq: int
    built_at: float
    expected_items: int
    items: int
    data: bytes
    sha256: bytes
    #: high 64 bits of the prefilter keys of every identity the overlay added
    added: frozenset[int]


class BadRow(ValueError):
    """A row of the snapshot file no longer reads as an entry."""


def read_keys(
    path: str, secret: bytes, expected: int, start: int = 0, end: int | None = None
) -> tuple[bytes, bytes]:
    """The rows of ``path`` beginning in [start, end) as (a filter of their prefilter keys,
    the high halves of their subject keys): in the server, or in a worker process."""
    keyer = SubjectKeyer(secret)
    prefilter = keyer.prefilter_keyer()
    bloom = Bloom(expected, FALSE_POSITIVE_RATE, hash_func=int)
    subject_hi = array("Q")
    for line, item in read_entries(Path(path), start, end):
        if isinstance(item, RowError):
            raise BadRow(f"line {line}: {item.problem}")
        for subject in item.subjects():
            subject_hi.append(keyer.subject_key(subject.id_type, subject.id_number) >> 64)
            bloom.add(prefilter.subject_key(subject.id_type, subject.id_number) >> 64)
    return bloom.save_bytes(), subject_hi.tobytes()


def _rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _chunks(data: bytes) -> Iterator[pb.PrefilterChunk]:
    for at in range(0, len(data), CHUNK_BYTES):
        yield pb.PrefilterChunk(data=data[at : at + CHUNK_BYTES])


class Prefilters:
    """The filters of the versions this process serves, built on first demand."""

    def __init__(self, keyer: SubjectKeyer) -> None:
        self._keyer = keyer
        self._key = keyer.prefilter_key()
        self._lock = threading.Lock()  # one build at a time
        self._bases: OrderedDict[str, BaseFilter] = OrderedDict()
        self._versions: OrderedDict[str, VersionFilter] = OrderedDict()
        #: why a version cannot have a filter (its file changed or is gone): not retried
        self._refused: dict[str, ShixinError] = {}
        self._building: dict[str, asyncio.Future[VersionFilter]] = {}

    # --- building ------------------------------------------------------------

    def cached(self, version: str) -> VersionFilter | None:
        return self._versions.get(version)

    def build(self, view: ListView) -> VersionFilter:
        """The filter of ``view``'s version (blocking: may read the snapshot file)."""
        if not isinstance(view, MemoryView):
            raise unavailable(
                "GetPrefilter is served in memory mode only: a Redis-mode replica holds "
                "keyed subject keys, which cannot be turned into prefilter keys; point "
                "gateways at a memory-mode server (serve --list) of the same list"
            )
        version = view.info.version
        with self._lock:
            found = self._versions.get(version)
            if found is not None:
                return found
            refused = self._refused.get(version)
            if refused is not None:
                raise refused
            try:
                built = self._version_filter(view)
            except ShixinError as exc:
                self._refused = {version: exc}  # only the served version's refusal is kept
                raise
            except OSError as exc:  # perhaps passing (a full disk, a moved mount): not kept
                raise unavailable(f"cannot read the snapshot file: {exc}") from exc
            self._versions[version] = built
            while len(self._versions) > KEEP_VERSIONS:
                self._versions.popitem(last=False)
            return built

    def _base_filter(self, view: MemoryView) -> BaseFilter:
        base_version, _ = split_version(view.info.version)
        found = self._bases.get(base_version)
        if found is not None:
            return found
        path = Path(view.info.source)
        if not path.is_file():
            raise unavailable(
                f"the snapshot file {path} of version {base_version} is gone: the prefilter "
                "needs the identities it holds; it returns with the next snapshot loaded"
            )
        expected = max(1024, math.ceil(len(view.base.k_hi) * HEADROOM))
        secret = self._keyer.secret
        workers = default_workers(path)
        try:
            if workers <= 1:
                parts = [read_keys(str(path), secret, expected)]
            else:  # a big file: read by processes, as the loader does (no GIL shared)
                offsets = line_starts(path, workers)
                spawn = multiprocessing.get_context("spawn")  # never fork a gRPC process
                with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
                    futures = [
                        pool.submit(read_keys, str(path), secret, expected, a, b)
                        for a, b in zip(offsets, offsets[1:], strict=False)
                    ]
                    parts = [future.result() for future in futures]
        except BadRow:
            raise self._changed(path, base_version) from None
        bloom = Bloom.load_bytes(parts[0][0], int)
        for part, _ in parts[1:]:
            bloom.update(Bloom.load_bytes(part, int))  # same size and hash: a bitwise OR
        served = np.frombuffer(cast(Any, view.base.k_hi), dtype="<u8")  # sorted
        read = np.sort(np.concatenate([np.frombuffer(keys, dtype="<u8") for _, keys in parts]))
        if len(read) != len(served) or not np.array_equal(read, served):
            raise self._changed(path, base_version)
        built = BaseFilter(base_version, bloom, expected, len(read))
        self._bases[base_version] = built
        while len(self._bases) > 2:
            self._bases.popitem(last=False)
        return built

    @staticmethod
    def _changed(path: Path, base_version: str) -> ShixinError:
        return unavailable(
            f"the snapshot file {path} changed since version {base_version} was loaded from "
            "it: the prefilter returns with the next snapshot loaded"
        )

    def _version_filter(self, view: MemoryView) -> VersionFilter:
        base = self._base_filter(view)
        prefilter = self._keyer.prefilter_keyer()
        added = frozenset(
            prefilter.subject_key(subject.id_type, subject.id_number) >> 64
            for entry, _ in view.overlay.added.values()
            for subject in entry.subjects()
        )
        bloom = base.bloom.copy()
        bloom.update(sorted(added))
        data = bloom.save_bytes()
        info = view.info
        return VersionFilter(
            version=info.version,
            base_version=base.base_version,
            seq=split_version(info.version)[1],
            built_at=time.time(),
            expected_items=base.expected_items,
            items=base.items + len(added),
            data=data,
            sha256=hashlib.sha256(data).digest(),
            added=added,
        )

    async def get(self, view: ListView, wait: float) -> VersionFilter:
        """``build`` off the event loop, shared by concurrent callers; PREFILTER_BUILDING
        (UNAVAILABLE) when it takes longer than ``wait`` seconds (it goes on)."""
        version = view.info.version
        found = self._versions.get(version)
        if found is not None:
            return found
        future = self._building.get(version)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(None, self.build, view)
            self._building[version] = future

            def done(f: asyncio.Future[VersionFilter]) -> None:
                self._building.pop(version, None)
                if not f.cancelled():
                    f.exception()  # retrieved: each waiter gets it through its shield

            future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(wait, 0.0))
        except TimeoutError:
            raise NotReady(
                f"the prefilter of version {version} is being built: retry in a few seconds"
            ).with_reason(PREFILTER_BUILDING) from None

    # --- sending -------------------------------------------------------------

    def download(
        self, built: VersionFilter, known_version: str, channels: frozenset[Channel]
    ) -> tuple[pb.PrefilterHeader, Iterator[pb.PrefilterChunk]]:
        """The header and data chunks for a caller holding ``known_version``.

        Additions are computed from this process's filter of ``known_version``,
        which is what the caller holds only if that label's content never
        changed (a restart serving a delta rewritten in place keeps the label):
        the header's ``filter_sha256`` is the whole filter's digest, so the
        caller can tell that its result is not this filter and ask for it whole."""
        known_base, known_seq = split_version(known_version)
        held = self._versions.get(known_version) if known_version else None
        if (
            known_version
            and known_base == built.base_version
            and known_seq <= built.seq
            and (held is None or held.added <= built.added)
        ):
            # what the caller should hold is base + held.added: send what it lacks
            missing = built.added - held.added if held is not None else built.added
            data = b"".join(item.to_bytes(8, "big") for item in sorted(missing))
            content = pb.PREFILTER_ADDITIONS
            digest = hashlib.sha256(data).digest()
        else:  # nothing to add to, or keys since delisted that additions would leave in it
            data, content, digest = built.data, pb.PREFILTER_FULL, built.sha256
        header = pb.PrefilterHeader(
            version=built.version,
            base_version=built.base_version,
            built_at=_rfc3339(built.built_at),
            key_scheme=PREFILTER_KEY_SCHEME,
            prefilter_key=self._key,
            hash_scheme=HASH_SCHEME,
            expected_items=built.expected_items,
            false_positive_rate=FALSE_POSITIVE_RATE,
            size_bytes=len(built.data),
            items=built.items,
            content=content,
            data_bytes=len(data),
            sha256=digest,
            channels=sorted(int(c) for c in channels),  # type: ignore[misc]
            lookup_rules=LOOKUP_RULES,
            filter_sha256=built.sha256,
        )
        return header, _chunks(data)
