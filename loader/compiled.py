"""A snapshot compiled once into files that every server process maps read-only.

Parsing ten million rows takes minutes; mapping their sorted columns takes
milliseconds. So a loaded snapshot's ``Base`` is written once into a folder
of flat files (``compile_base``) and opened with ``mmap`` (``map_compiled``):

- each column is one raw little-endian file (``k_hi.u64``, ``text.bin``, ...),
  opened as a ``memoryview`` (typed columns) or the ``mmap`` itself (byte
  columns), so ``bisect`` and indexing work on it as on the ``array`` a parse
  builds, and N processes mapping it hold one copy in the page cache;
- ``bloom.bin`` is the Bloom filter (each process loads its own copy: deltas
  add keys to it, and it is ~1.8 bytes a key);
- ``meta.json`` holds the rest: the version, its feed time and the delta seq
  the snapshot includes, counts, courts, exemptions, the fingerprint of the
  key secret (a compiled index is useless with another secret: it is refused),
  and the *stamp* of the snapshot file it came from (name, size, mtime).

A compiled folder is written under a temporary name and renamed into place, so
a crash leaves no half-written version that looks whole. ``IndexStore`` keeps
them in one folder: ``find(stamp)`` is how a restart maps the last good
version instead of re-parsing it; deltas stay small overlays each process
applies on top, in order (``loader.versions``).

Several processes share a store (``serve --workers N``): ``IndexStore.lock``
is an inter-process lock (``flock`` on ``lock`` in the folder) under which a
loader finds a snapshot's compiled version or builds and compiles it, so a
snapshot is compiled once, by the first process to get there; the others wait,
then map what it wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
from array import array
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import orjson
from rbloom import Bloom

from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.index import Counts, VersionInfo
from shixin_check.domain.model import Channel, EntryStatus, Exemption, ListType
from shixin_check.loader.index_memory import Base

log = logging.getLogger("shixin.loader")

FORMAT = 1
Code = Literal["Q", "I", "i"]
#: typed columns and their element (the ``array`` / ``memoryview`` type code)
_TYPED: dict[str, Code] = {
    "k_hi": "Q", "k_lo": "Q", "m_entry": "I", "m_name": "Q", "id_sorted": "Q", "id_rows": "I",
    "e_listed": "i", "e_valid": "i", "e_court": "I", "e_text_at": "Q",
}  # fmt: skip
_BYTES = ("m_role", "m_mask", "e_type", "e_status", "text")
#: how many compiled versions a store keeps besides the newest
KEEP = 1
#: the lock file of a store (not ``v-*``: never taken for a version)
LOCK_NAME = "lock"


def snapshot_stamp(path: Path, fingerprint: str) -> str:
    """What identifies a snapshot file's content cheaply: name, size, mtime, key secret."""
    st = path.stat()
    raw = f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{fingerprint}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _counts_json(counts: Counts) -> dict[str, Any]:
    return {
        "by_type_status": [[int(t), int(s), n] for t, s, n in counts.by_type_status],
        "subject_keys": counts.subject_keys,
        "expiries": [[int(t), int(s), v, n] for t, s, v, n in counts.expiries],
    }


def _counts_from(raw: dict[str, Any]) -> Counts:
    return Counts(
        tuple((ListType(t), EntryStatus(s), n) for t, s, n in raw["by_type_status"]),
        int(raw["subject_keys"]),
        tuple((ListType(t), EntryStatus(s), v, n) for t, s, v, n in raw["expiries"]),
    )


def compile_base(base: Base, info: VersionInfo, target: Path, stamp: str, fingerprint: str) -> None:
    """Write ``base`` (a snapshot's, before any delta) as a compiled folder at ``target``."""
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, code in _TYPED.items():
            column = getattr(base, name)
            with open(partial / f"{name}.{code}", "wb") as out:
                out.write(column if isinstance(column, array | memoryview) else array(code, column))
        for name in _BYTES:
            (partial / f"{name}.bin").write_bytes(bytes(getattr(base, name)))
        (partial / "bloom.bin").write_bytes(base.bloom.save_bytes())
        meta = {
            "format": FORMAT,
            # every file's length: a file cut short later (a bad disk, a careless copy)
            # would otherwise map as a shorter column and quietly lose entries
            "sizes": {child.name: child.stat().st_size for child in partial.iterdir()},
            "stamp": stamp,
            "fingerprint": fingerprint,
            "version": info.version,
            "source": info.source,
            "source_timestamp": info.source_timestamp,
            "includes_seq": info.includes_seq,
            "counts": _counts_json(info.counts),
            "courts": list(base.courts),
            "exemptions": {
                str(row): [[int(e.channel), e.first_day, e.last_day] for e in found]
                for row, found in base.exemptions.items()
            },
            "base_counts": [[int(t), int(s), n] for (t, s), n in base.counts.items()],
            "base_expiries": [[int(t), int(s), v, n] for (t, s, v), n in base.expiries.items()],
        }
        (partial / "meta.json").write_bytes(orjson.dumps(meta))
        for child in partial.iterdir():  # durable before the name says it is whole
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():  # compiled meanwhile by another process: same content
            shutil.rmtree(partial)
            return
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _map(path: Path) -> mmap.mmap | bytes:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""  # mmap cannot map an empty file
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def map_compiled(folder: Path, fingerprint: str) -> tuple[Base, VersionInfo]:
    """The base and version info of a compiled folder, mapped read-only."""
    meta = orjson.loads((folder / "meta.json").read_bytes())
    if meta.get("format") != FORMAT:
        raise ConfigurationError(f"{folder}: compiled index format {meta.get('format')!r}")
    if meta.get("fingerprint") != fingerprint:
        raise ConfigurationError(f"{folder}: compiled with another key secret")
    for name, size in meta["sizes"].items():
        found = (folder / name).stat().st_size
        if found != size:
            raise ConfigurationError(f"{folder}: {name} is {found} bytes, compiled as {size}")
    columns: dict[str, Any] = {}
    for name, code in _TYPED.items():
        mapped = _map(folder / f"{name}.{code}")
        columns[name] = memoryview(mapped).cast(code) if mapped else array(code)
    for name in _BYTES:
        columns[name] = _map(folder / f"{name}.bin")
    exemptions = {
        int(row): tuple(Exemption(Channel(c), a, b) for c, a, b in found)
        for row, found in meta["exemptions"].items()
    }
    base = Base(
        **columns,
        courts=tuple(meta["courts"]),
        exemptions=exemptions,
        counts={(ListType(t), EntryStatus(s)): n for t, s, n in meta["base_counts"]},
        expiries={(ListType(t), EntryStatus(s), v): n for t, s, v, n in meta["base_expiries"]},
        bloom=Bloom.load_bytes((folder / "bloom.bin").read_bytes(), int),
    )
    info = VersionInfo(
        version=meta["version"],
        source=meta["source"],
        loaded_at=0.0,
        source_timestamp=float(meta["source_timestamp"]),
        last_delta_seq=int(meta["includes_seq"]),
        counts=_counts_from(meta["counts"]),
        includes_seq=int(meta["includes_seq"]),
        mapped_from=str(folder),
    )
    return base, info


assert {f.name for f in fields(Base)} == {
    *_TYPED,
    *_BYTES,
    "courts",
    "exemptions",
    "counts",
    "expiries",
    "bloom",
}, "a Base column is missing from the compiled format"


class IndexStore:
    """A folder of compiled versions, one per snapshot stamp; the newest few are kept."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    def path_for(self, stamp: str) -> Path:
        return self.folder / f"v-{stamp}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's inter-process lock: one process at a time finds or compiles.

        An exclusive ``flock`` on the file ``lock`` in the folder; it is released when
        the block ends, or by the kernel when its holder dies (even SIGKILL), so
        a killed compile never blocks the others. A folder where the lock file
        cannot be made (read-only) is used unlocked: compiling stays safe there
        (written aside, renamed into place), only no longer once per snapshot.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            log.warning("cannot lock the index folder %s (%s): going on unlocked",
                        self.folder, exc)  # fmt: skip
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("index folder %s: another process holds it (compiling?); waiting",
                         self.folder)  # fmt: skip
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def find(self, stamp: str) -> Path | None:
        path = self.path_for(stamp)
        return path if (path / "meta.json").is_file() else None

    def put(self, base: Base, info: VersionInfo, stamp: str) -> Path:
        """Compile ``base`` (if not there yet) and drop all but the newest ``KEEP`` others."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path_for(stamp)
        if self.find(stamp) is None:
            compile_base(base, info, target, stamp, self.fingerprint)
        os.utime(target)  # newest first when pruning
        self._prune(keep=target)
        return target

    def discard(self, compiled: Path) -> None:
        """Remove a compiled folder found unusable (a process mapping it keeps its pages)."""
        shutil.rmtree(compiled, ignore_errors=True)

    def _prune(self, keep: Path) -> None:
        for partial in self.folder.glob(".v-*.part-*"):  # a compile killed half way
            if not _alive(int(partial.name.rsplit("-", 1)[1])):
                shutil.rmtree(partial, ignore_errors=True)
        others = sorted(
            (p for p in self.folder.glob("v-*") if p != keep and p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in others[KEEP:]:
            with contextlib.suppress(OSError):  # mapped elsewhere: unlinking keeps the pages
                shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
