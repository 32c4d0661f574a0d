"""A snapshot compiled once into files that every server process maps read-only.

Parsing ten million rows takes minutes; mapping their sorted columns takes
milliseconds. So a loaded snapshot's ``Base`` is written once into a folder
of flat files (``compile_base``) and opened with ``mmap`` (``map_compiled``):

- each column is one raw little-endian file (``k_hi.Q``, ``text.bin``, ...),
  opened as a ``memoryview`` (typed columns) or the ``mmap`` itself (byte
  columns), so ``bisect`` and indexing work on it as on the ``array`` a parse
  builds, and N processes mapping it hold one copy in the page cache;
- ``bloom.bin`` is the Bloom filter (each process loads its own copy: deltas
  add keys to it, and it is ~1.8 bytes a key);
- ``meta.json`` holds the rest: the version, its feed time and the delta seq
  the snapshot includes, counts, courts, exemptions, the fingerprint of the
  key secret (a compiled index is useless with another secret: it is refused),
  the *stamp* of the snapshot file it came from (``snapshot_stamp``), and the
  size and CRC-32 of every other file; it ends with a CRC-32 of itself.

Damage to a compiled file that keeps its size (a bad disk, a stray write, a
careless copy) would otherwise be mapped as is and answer wrongly (a listed
subject ``ALLOW``, a match with another entry's case), so ``map_compiled``
refuses a folder whose files do not match their checksums, and the loader
compiles it again. Checking costs a read of every file (~0.5 s for the 1.4 GiB
of ten million entries), so it is paid once, not at every start nor by every
worker: ``verified.json`` records the inode, size, mtime and ctime each file
had when its checksum was last computed, and a file that still has them is not
read again. Any write through the file system changes the ctime, which nothing
can set back, so an edit since is always caught (a file whose ctime is not
older than the record is read again, as git does with its index: the clock
may not have ticked between a check and a write). Damage beneath the file
system (the disk's own) is not caught, until the folder is copied or rebuilt.

A compiled folder is written under a temporary name and renamed into place, so
a crash leaves no half-written version that looks whole; a version folder
without its ``meta.json`` is therefore damaged, never one being written, and
the next compile of its snapshot replaces it (under the store's lock). Its
files are written without write permission: servers map them, and damage made
while one runs (a copy over the folder, ``rsync --inplace``) is not checked
again until the next start, while a file cut short kills a process mapping it
(SIGBUS). So an ordinary write into them fails; the folder belongs to the
server, and nothing else should write in it while one runs. ``IndexStore`` keeps
them in one folder: ``find(stamp)`` is how a restart maps the last good
version instead of re-parsing it; deltas stay small overlays each process
applies on top, in order (``loader.versions``).

Several processes share a store (``serve --workers N``): ``IndexStore.lock``
is an inter-process lock (``flock`` on ``lock`` in the folder) under which a
loader finds a snapshot's compiled version or builds and compiles it, so a
snapshot is compiled once, by the first process to get there; the others wait,
then map what it wrote.

Beside each version, ``applied-<stamp>`` records the delta ops applied on top of
it, by any process of the store (``IndexStore.applied``; ``loader.versions`` says
what a line holds): a delta file rewritten in place under seqs already applied
is refused by every process, a restart and a worker started in a dead one's
place included, never served as rewritten by one of them. It is read and
appended under its own ``flock`` (not the store's ``lock``, held for as long as
a snapshot compiles), each append one line ending in a newline, fsynced before
the ops are served. A last line without its newline was cut by a writer that
died before serving it: it is ignored, and cut off before the next append.

A pool of workers also has a *spare* record folder, private to it (``spare``:
``serve --workers N`` makes it). Where the index folder's record cannot be made,
opened, locked or written (a read-only folder, a full disk), the record moves
there, with every complete line the index folder's held, and stays there for the
pool's life: its workers, and a worker started in a dead one's place, still
refuse a rewritten delta alike. Only a restart, which gets a new spare, reads
the delta files anew. A single server has no spare: what it applied is known to
it alone, as it always was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import stat
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import orjson
from rbloom import Bloom

from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.index import Counts, VersionInfo
from shixin_check.domain.model import Channel, EntryStatus, Exemption, ListType
from shixin_check.domain.system import FOLDER_MODE, make_folders, others_may_write
from shixin_check.loader.index_memory import Base

log = logging.getLogger("shixin.loader")

#: 2: every file's CRC-32 and meta.json's own (a format-1 folder is compiled again)
#: 3: each exemption with the subject key of the person it covers (an older folder held
#: whole-entry exemptions, which would cover every subject of the entry: parsed again)
#: 4: names keyed without invisible format characters and variation selectors
#: (``identity.normalize_name``), and valid_until 1970-01-01 as no end: an older folder's
#: name keys would no longer meet a request's (REVIEW where DENY is due)
#: 5: no date before 2000-01-01 but 1970-01-01 (an export's placeholder for an empty
#: date is a bad row): an older folder may hold an entry whose valid_until 1900-01-01
#: reads as expired, clearing a listed person, so its list is parsed (and refused) again
#: 6: a key that is no field of an entry is a bad row, and so is an exemption from
#: 1970-01-01: an older folder may hold an organisation whose misspelt ``relatedPersons``
#: was dropped (its legal representative not listed) or an exemption read as from 1970
#: 7: a Home Return Permit listed in the old booklet's form (``H1234567801``) is keyed
#: as the card (``H12345678``): an older folder keys it as given, not found by the card
#: 8: a date is ``YYYY-MM-DD`` or ``YYYYMMDD`` (``listfile._DAY_FORM``): an older folder
#: may hold a day read from an ISO week date (``2026-W01-1`` as 2025-12-29), an end moved
#: that may clear a listed person, so its list is parsed (and refused) again
#: 9: a Taiwan permit listed in the old booklet's form (``1234567801``) is keyed as the
#: card (``12345678``): an older folder keys it as given, not found by the card
#: 10: a number under a document type one keying slip from a resident ID or a foreign
#: card is a bad row (every check refuses it), and no mask shows a birth date: an older
#: folder may serve such a row, SERVING where a fresh one refuses the list, and show a
#: first-generation card's last birth digit, so its list is parsed (and refused) again
#: 11: a full stop beside a Han character is a name's middle dot, and a full-width one
#: elsewhere a full stop: a name holding either is keyed otherwise, so parsed again
FORMAT = 11
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
#: the record of the delta ops applied on top of a version: this, then its stamp
APPLIED_PREFIX = "applied-"


def file_identity(path: Path) -> str:
    """What changes whenever the content of the file at ``path`` may have: its name,
    size, mtime, inode and ctime (``snapshot_stamp`` without the key secret).

    Size and mtime alone miss a file changed in place whose mtime was put back
    (``touch -r``, ``cp -p``, ``rsync -t``); its ctime cannot be put back, and a
    file renamed into place (the feed's ``.part`` files) has an inode of its own.
    Anything else that moves the ctime (``chmod``, a new hard link) only costs a
    parse.
    """
    st = path.stat()
    return f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}"


def snapshot_stamp(path: Path, fingerprint: str, identity: str | None = None) -> str:
    """What identifies a snapshot file's content cheaply: its ``file_identity`` (taken
    now, or ``identity`` taken before) and the key secret."""
    raw = f"{identity if identity is not None else file_identity(path)}\0{fingerprint}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


#: bytes read at a time when checksumming (fits the CPU's cache: faster than larger)
_CHUNK = 1 << 20
#: a file's timestamps move in clock ticks (a jiffy, up to 10 ms, on kernels before
#: 6.13): a ctime newer than this before a read may still be shared by a later write
_TIMESTAMP_TICK_NS = 20_000_000
#: on a file system that keeps whole seconds (ext4 with 128-byte inodes, ext3, NFS from
#: them: a ctime with no nanoseconds), a write within the same second keeps the ctime
_COARSE_TICK_NS = 1_050_000_000


def _unsettled(st: os.stat_result, at: int) -> bool:
    """Whether a write made after ``at`` (ns) could leave ``st``'s ctime as it is: the
    ctime within a clock tick before it (``_TIMESTAMP_TICK_NS``, or ``_COARSE_TICK_NS``
    where the file system holds whole seconds). A ctime ahead of ``at`` (a clock stepped
    back since, an NFS server's ahead) is taken as it is: it would never settle."""
    tick = _COARSE_TICK_NS if st.st_ctime_ns % 1_000_000_000 == 0 else _TIMESTAMP_TICK_NS
    return 0 <= at - st.st_ctime_ns <= tick


#: what ends meta.json: its own CRC-32, over the JSON before it (closed with ``}``)
_SELF_CHECK = b',"meta_crc32":"'
_SELF_CHECK_LEN = len(_SELF_CHECK) + 8 + 2  # the key, eight hex digits, then ``"}``
#: the record of the files' identities when their checksums last matched
VERIFIED_NAME = "verified.json"


def _crc32(fd: int) -> int:
    """CRC-32 of an open file (zlib's: ~4x faster than blake2b here, and it only has
    to catch damage, not an attacker, who could rewrite meta.json as well)."""
    chunk = bytearray(_CHUNK)
    view = memoryview(chunk)
    crc = offset = 0
    while read := os.preadv(fd, [chunk], offset):
        crc = zlib.crc32(view[:read], crc)
        offset += read
    return crc


def _identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file is written, replaced or put back (the ctime)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sealed(meta: dict[str, Any]) -> tuple[bytes, str]:
    """``meta`` as JSON ending with a CRC-32 of the rest (see ``_unsealed``), and that CRC."""
    body = orjson.dumps(meta)
    assert body.endswith(b"}") and len(body) > 2
    crc = b"%08x" % zlib.crc32(body)
    return body[:-1] + _SELF_CHECK + crc + b'"}', crc.decode()


def _unsealed(folder: Path, raw: bytes) -> tuple[dict[str, Any], str]:
    """The meta of a compiled folder and its CRC, if that matches: a changed count,
    court or exemption that still reads as JSON would otherwise be believed."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"{folder}: meta.json is damaged ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigurationError(f"{folder}: compiled index format {found!r}")
    tail = raw[-_SELF_CHECK_LEN:]
    crc = b"%08x" % zlib.crc32(raw[:-_SELF_CHECK_LEN] + b"}")
    if not tail.startswith(_SELF_CHECK) or tail[-10:-2] != crc:
        raise ConfigurationError(
            f"{folder}: meta.json does not match its checksum (damaged since it was compiled)"
        )
    return meta, crc.decode()


def _record_verified(folder: Path, meta_crc: str, checked: dict[str, os.stat_result]) -> None:
    """Record that the files ``checked`` (as they were before being read) match the
    checksums of the meta.json whose own CRC is ``meta_crc``.

    Best effort: in a folder this process cannot write, each start checks again.
    """
    record = {"format": FORMAT, "meta_crc32": meta_crc,
              "files": {name: _identity(st) for name, st in checked.items()}}  # fmt: skip
    aside = folder / f".{VERIFIED_NAME}.{os.getpid()}"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(record))
        os.replace(aside, folder / VERIFIED_NAME)
    except OSError as exc:
        log.info("cannot record that %s was verified (%s): the next start checks it again",
                 folder, exc)  # fmt: skip
        with contextlib.suppress(OSError):
            aside.unlink(missing_ok=True)


def _unverified(folder: Path, meta_crc: str, now: dict[str, os.stat_result]) -> list[str]:
    """Which of the files ``now`` must be read to check them: all, unless ``verified.json``
    says they matched this very meta.json's checksums and have not changed since."""
    try:
        with open(folder / VERIFIED_NAME, "rb") as fh:
            written = os.fstat(fh.fileno()).st_mtime_ns
            record = orjson.loads(fh.read())
        files = record["files"]
        if (
            record["format"] != FORMAT
            or record["meta_crc32"] != meta_crc
            or files.keys() != now.keys()
        ):
            return list(now)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return list(now)  # none, or damaged itself
    # a ctime not older than the record may hide a write in the same clock tick
    return [name for name, st in now.items()
            if files[name] != _identity(st) or st.st_ctime_ns >= written]  # fmt: skip


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
    make_folders(partial.parent)  # each folder above too, not the last alone
    partial.mkdir(mode=FOLDER_MODE)
    try:
        for name, code in _TYPED.items():
            column = getattr(base, name)
            with open(partial / f"{name}.{code}", "wb") as out:
                out.write(column if isinstance(column, array | memoryview) else array(code, column))
        for name in _BYTES:
            (partial / f"{name}.bin").write_bytes(bytes(getattr(base, name)))
        (partial / "bloom.bin").write_bytes(base.bloom.save_bytes())
        sizes: dict[str, int] = {}
        crcs: dict[str, int] = {}
        checked: dict[str, os.stat_result] = {}
        for child in partial.iterdir():  # durable before the name says it is whole
            with open(child, "rb") as fh:
                _read_only(fh.fileno())  # before its identity is taken: chmod moves the ctime
                os.fsync(fh.fileno())
                checked[child.name] = os.fstat(fh.fileno())
                sizes[child.name] = checked[child.name].st_size
                crcs[child.name] = _crc32(fh.fileno())  # of what reads back
        meta = {
            "format": FORMAT,
            # every file's length: a file cut short later (a bad disk, a careless copy)
            # would otherwise map as a shorter column and quietly lose entries
            "sizes": sizes,
            # and its CRC-32: damage that keeps the length would map as wrong answers
            "crc32": crcs,
            "stamp": stamp,
            "fingerprint": fingerprint,
            "version": info.version,
            "source": info.source,
            "source_timestamp": info.source_timestamp,
            "includes_seq": info.includes_seq,
            "counts": _counts_json(info.counts),
            "courts": list(base.courts),
            # by entry row: [channel, from, until, subject key of the person it covers]
            "exemptions": {
                str(row): [
                    [int(e.channel), e.first_day, e.last_day, f"{key:032x}"] for key, e in found
                ]
                for row, found in base.exemptions.items()
            },  # fmt: skip
            "base_counts": [[int(t), int(s), n] for (t, s), n in base.counts.items()],
            "base_expiries": [[int(t), int(s), v, n] for (t, s, v), n in base.expiries.items()],
        }
        sealed, meta_crc = _sealed(meta)
        with open(partial / "meta.json", "wb") as out:
            out.write(sealed)
            out.flush()
            _read_only(out.fileno())
            os.fsync(out.fileno())
        # just read back: nobody need read them again until they change (renaming
        # the folder changes none of their identities)
        _record_verified(partial, meta_crc, checked)
        if (target / "meta.json").is_file():  # compiled meanwhile by another process
            shutil.rmtree(partial)
            return
        if target.exists() or target.is_symlink():
            # A folder without its meta.json is never mapped (``IndexStore.find``), nor
            # ever a compile under way (written aside, renamed into place whole): it
            # lost its meta.json. Kept, it would make every start parse unshared.
            log.warning("compiled index %s has no meta.json (damaged): replaced by this "
                        "compile", target)  # fmt: skip
            _remove(target)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _read_only(fd: int) -> None:
    """Take the write permission off a compiled file (its read bits stay as the umask
    made them): a version is mapped by running servers, so an ordinary write into it
    (``cp`` over the folder, ``rsync --inplace``) fails instead of changing answers
    under them, or cutting a mapped file short, which kills them with SIGBUS. The
    folder stays writable: versions are still pruned, replaced and discarded."""
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & ~0o222)


def _remove(path: Path) -> None:
    """Remove ``path``: a folder with all in it, or a file or link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class HeldFile(int):
    """A descriptor of a mapped compiled file, kept open as long as a version info
    names it (closed with the last one): the watch (``changed_under``) looks at the
    file mapped, through this descriptor, wherever its name has gone since (the index
    folder moved, the file removed while a backup's hard link to it remains)."""

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self)


def _map(fd: int, size: int) -> mmap.mmap | bytes:
    if size == 0:
        return b""  # mmap cannot map an empty file
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def map_compiled(folder: Path, fingerprint: str) -> tuple[Base, VersionInfo]:
    """The base and version info of a compiled folder, mapped read-only.

    Raises ``ConfigurationError`` for a folder of another format or key secret,
    or one whose files are not as compiled: cut short, or not matching their
    checksums (checked unless ``verified.json`` says they already did); or one that
    another user could have changed (``others_may_write``: of the index folder, the
    version's folder, or a file of it), which no checksum here would show.
    """
    with contextlib.ExitStack() as files:
        for where in (folder.parent, folder):
            if problem := others_may_write(os.stat(where)):
                raise ConfigurationError(f"{where} is {problem}: another user could have "
                                         "changed the index compiled there")  # fmt: skip
        meta, meta_crc = _unsealed(folder, (folder / "meta.json").read_bytes())
        if meta.get("fingerprint") != fingerprint:
            raise ConfigurationError(f"{folder}: compiled with another key secret")
        # every file is opened once: what is checked is what is mapped, even if a
        # name is replaced meanwhile
        opened: dict[str, int] = {}
        for name in meta["crc32"]:
            opened[name] = os.open(folder / name, os.O_RDONLY)
            files.callback(os.close, opened[name])
        mapped_at = time.time_ns()
        now = {name: os.fstat(fd) for name, fd in opened.items()}
        held = {name: HeldFile(os.dup(fd)) for name, fd in opened.items()}
        for name, st in now.items():
            if problem := others_may_write(st):
                raise ConfigurationError(f"{folder}: {name} is {problem}: another user could "
                                         "have changed it")  # fmt: skip
        for name, size in meta["sizes"].items():
            if now[name].st_size != size:
                raise ConfigurationError(
                    f"{folder}: {name} is {now[name].st_size} bytes, compiled as {size}"
                )
        if unverified := _unverified(folder, meta_crc, now):
            started = time.monotonic()
            for name in unverified:
                if _crc32(opened[name]) != meta["crc32"][name]:
                    raise ConfigurationError(f"{folder}: {name} does not match its checksum "
                                             "(damaged since it was compiled)")  # fmt: skip
            log.info("%s: checksums of %d files verified in %.2f s", folder, len(unverified),
                     time.monotonic() - started)  # fmt: skip
            _record_verified(folder, meta_crc, now)
        columns: dict[str, Any] = {}
        for name, code in _TYPED.items():
            file = f"{name}.{code}"
            mapped = _map(opened[file], now[file].st_size)
            columns[name] = memoryview(mapped).cast(code) if mapped else array(code)
        for name in _BYTES:
            file = f"{name}.bin"
            columns[name] = _map(opened[file], now[file].st_size)
        bloom = bytes(_map(opened["bloom.bin"], now["bloom.bin"].st_size))
    exemptions = {
        int(row): tuple((int(key, 16), Exemption(Channel(c), a, b)) for c, a, b, key in found)
        for row, found in meta["exemptions"].items()
    }
    base = Base(
        **columns,
        courts=tuple(meta["courts"]),
        exemptions=exemptions,
        counts={(ListType(t), EntryStatus(s)): n for t, s, n in meta["base_counts"]},
        expiries={(ListType(t), EntryStatus(s), v): n for t, s, v, n in meta["base_expiries"]},
        bloom=Bloom.load_bytes(bloom, int),
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
        mapped_files=tuple(
            (
                name,
                held[name],
                st.st_size,
                st.st_mtime_ns,
                # a ctime a write made after the mapping could still share: 0, so the
                # watch's first look reads the file once its ctime has settled
                0 if _unsettled(st, mapped_at) else st.st_ctime_ns,
                meta["crc32"][name],
            )
            for name, st in sorted(now.items())
        ),
    )
    return base, info


def changed_under(info: VersionInfo, checked: dict[str, int]) -> str:
    """Why the files ``info`` was mapped from can no longer be trusted ("" if they can):
    one of them cut short or grown (the process reads zeros past a new end, or dies of
    SIGBUS), or written in place (``cp`` or ``rsync --inplace`` over the folder, ``dd
    conv=notrunc``): another mtime or ctime, and bytes that no longer match their
    CRC-32. Each file is looked at through the descriptor held since it was mapped
    (``HeldFile``), so a write reaches the watch by any name: the index folder moved,
    the file removed while another link to it remains. A name given to a new file (a
    rename over it) leaves the pages mapped as they were: not this. A change of the
    ctime alone (``chmod``, a hard link made by a backup, ``touch``) whose bytes still
    match is remembered in ``checked`` (path: ctime_ns) and not read again, once that
    ctime is older than the read by more than a clock tick (a write in the same tick
    would leave it as it was; a second, where the file system keeps whole seconds); a
    file mapped within that of its ctime is read once at the first look for that. A
    few ``fstat`` calls, and a read only after a change or a mapping: for a watch once
    a second, never on the check path."""
    folder = Path(info.mapped_from)
    for name, fd, size, mtime, ctime, crc in info.mapped_files:
        path = folder / name
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (size, mtime, ctime):
                continue
            if st.st_size == size:
                if checked.get(str(path)) == st.st_ctime_ns:
                    continue
                read_at = time.time_ns()
                if _crc32(fd) == crc:
                    if not _unsettled(st, read_at):
                        checked[str(path)] = st.st_ctime_ns
                    continue
                how = "written in place: its bytes no longer match their checksum"
            else:
                how = f"{st.st_size} bytes, mapped as {size}"
        except OSError as exc:
            how = f"it cannot be read: {exc.strerror or exc}"
        return (f"compiled index file {path} changed under this server since it was "
                f"mapped ({how}): its answers can no longer be trusted (nothing may write "
                "in the index folder while a server runs)")  # fmt: skip
    return ""


assert {f.name for f in fields(Base)} == {
    *_TYPED,
    *_BYTES,
    "courts",
    "exemptions",
    "counts",
    "expiries",
    "bloom",
}, "a Base column is missing from the compiled format"


class AppliedRecord:
    """The record of the delta ops applied on top of one version, held locked.

    ``lines``: its complete lines (each without its newline) from where a reader
    got to before (``since``: the record's file, its device and inode as one
    number, and the byte it read to), or
    from its start when that was another file (replaced or removed since) or
    longer than this one; ``start`` says which; ``since`` is where this read got
    to. ``usable`` is False when it could not be opened, locked or read (said
    once by the store): it then holds nothing, and ``add`` writes nothing.
    """

    def __init__(
        self, path: Path, fd: int | None, since: tuple[int, int], say: Callable[[str], None],
        move: Callable[[list[bytes], str], bool] | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self._fd = fd
        self._say = say
        #: a pool's: puts every line (the record's and those it could not write) in its
        #: spare record folder, where the next delta is recorded (``IndexStore.applied``)
        self._move = move
        self.lines: list[bytes] = []
        self.start = self.end = self.inode = 0
        if fd is not None:
            self._read(since)

    @property
    def since(self) -> tuple[int, int]:
        return self.inode, self.end

    @property
    def usable(self) -> bool:
        return self._fd is not None

    def report(self, problem: str) -> None:
        """Say what is wrong with the record (once: the store says each problem once)."""
        self._say(problem)

    def _read(self, since: tuple[int, int]) -> None:
        assert self._fd is not None
        inode, start = since
        try:
            st = os.fstat(self._fd)
            if _file_of(st) != inode or start > st.st_size:  # another file: all of it
                start = 0
            raw = os.pread(self._fd, st.st_size - start, start) if st.st_size > start else b""
        except OSError as exc:
            self._say(f"cannot read {self.path.name} ({exc}): taken as holding nothing")
            self._fd = None
            return
        complete = raw.rfind(b"\n") + 1  # a last line without its newline is torn
        self.lines = raw[:complete].splitlines()
        self.start, self.end, self.inode = start, start + complete, _file_of(st)

    def every_line(self) -> list[bytes]:
        """All its complete lines, from its start (whatever ``lines`` holds)."""
        if self.start == 0 or self._fd is None:
            return self.lines
        try:
            raw = os.pread(self._fd, self.end, 0)
        except OSError as exc:
            self._say(f"cannot read {self.path.name} ({exc}): taken as holding nothing")
            return []
        return raw[: raw.rfind(b"\n") + 1].splitlines()

    def add(self, lines: list[bytes]) -> None:
        """Append ``lines`` (one record line each, no newline), durable on return. A
        torn last line is cut off first; a failed write is cut off again, and in a pool
        the record moves to its spare folder with them (``IndexStore.applied``)."""
        if self._fd is None or not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        try:
            os.ftruncate(self._fd, self.end)  # a torn line (its writer died unserved)
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.end)
            problem = f"cannot write {self.path.name} ({exc})"
            if self._move is not None:  # (says what it did)
                self._move([*self.every_line(), *lines], problem)
                return
            self._say(f"{problem}: a restart, or a worker started in a dead one's place, may "
                      "not know the delta ops applied since")  # fmt: skip
            return
        self.end += len(data)


class IndexStore:
    """A folder of compiled versions, one per snapshot stamp; the newest few are kept.

    ``spare``: a pool's private folder, where the record of the delta ops applied
    moves when the index folder cannot hold it (``applied``); None for a single
    server.
    """

    def __init__(self, folder: Path, fingerprint: str, spare: Path | None = None) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.spare = spare
        self._said: set[str] = set()  # what is wrong with a record, said once each
        self._spare_said = False  # that a record moved to the spare: said once

    def path_for(self, stamp: str) -> Path:
        return self.folder / f"v-{stamp}"

    def others_may_write(self) -> str:
        """``others_may_write`` of the folder, "" while it is not there yet (it is made
        writable by this server's user alone)."""
        try:
            return others_may_write(os.stat(self.folder))
        except OSError:  # not there yet, or no folder: said where it is used (``lock``)
            return ""

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
            make_folders(self.folder)
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

    def applied_path(self, stamp: str) -> Path:
        return self.folder / f"{APPLIED_PREFIX}{stamp}"

    @contextlib.contextmanager
    def applied(self, stamp: str, since: tuple[int, int] = (0, 0)) -> Iterator[AppliedRecord]:
        """Hold the record of the delta ops applied on top of ``stamp``'s version, locked
        (``flock`` on the record itself) from reading it to appending to it, so that of
        two processes the second reads what the first applied before it decides.

        With a ``spare``, the record is the spare's once it is there (it stays there);
        else the index folder's, which moves to the spare when it cannot be made,
        locked or written (``_to_spare``). A record that cannot be had at all (no
        spare, or the spare failing too) is said once and holds nothing: the ops are
        served all the same.
        """
        spared = self._spared(stamp)
        if spared is None:
            path = self.applied_path(stamp)
            fd, problem, consequence = _open_locked(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            if fd is not None and not self._in_spare(stamp):
                try:
                    yield AppliedRecord(path, fd, since, self._say, self._mover(stamp))
                finally:
                    os.close(fd)  # releases the lock
                return
            if fd is not None:  # moved to the spare while this waited for the lock
                os.close(fd)
                spared = self._spared(stamp)
            elif self.spare is None:
                self._say(f"{problem}: {consequence}")
            else:
                spared = self._moved(stamp, problem)
            if spared is None:  # (said)
                yield AppliedRecord(path, None, since, self._say)
                return
        path, fd = spared
        try:
            yield AppliedRecord(path, fd, since, self._say)
        finally:
            os.close(fd)  # releases the lock

    def _in_spare(self, stamp: str) -> bool:
        return self.spare is not None and (self.spare / f"{APPLIED_PREFIX}{stamp}").exists()

    def _spared(self, stamp: str) -> tuple[Path, int] | None:
        """The spare's record of ``stamp`` and its descriptor, locked; None if it has none
        (or it cannot be opened or locked: said)."""
        if self.spare is None:
            return None
        path = self.spare / f"{APPLIED_PREFIX}{stamp}"
        fd, problem, consequence = _open_locked(path, os.O_RDWR | os.O_APPEND)
        if fd is None:
            if problem:
                self._say(f"{problem} in {self.spare}: {consequence}")
            return None
        return path, fd

    def _moved(self, stamp: str, problem: str) -> tuple[Path, int] | None:
        """The record moved to the spare (its descriptor, locked), with the complete lines
        the index folder's holds if it can be read; None (said) if the spare cannot take
        it. The index folder's is read under its lock (unlocked where it cannot be locked,
        nor written then): no line appended there is lost."""
        path = self.applied_path(stamp)
        fd: int | None = None  # none, or not to be had: nothing known to carry over
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if fd is not None and self._in_spare(stamp):  # moved by another meanwhile
                return self._spared(stamp)
            lines: list[bytes] = []
            if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
                lines = AppliedRecord(path, fd, (0, 0), self._say).lines
            if not self._to_spare(stamp, lines, problem):
                return None
        finally:
            if fd is not None:
                os.close(fd)
        return self._spared(stamp)

    def _mover(self, stamp: str) -> Callable[[list[bytes], str], bool] | None:
        """What the index folder's record calls when a write fails, still locked: with a
        spare, its lines and those not written go there (``_to_spare``)."""
        if self.spare is None:
            return None
        return lambda lines, problem: self._to_spare(stamp, lines, problem)

    def _to_spare(self, stamp: str, lines: list[bytes], problem: str) -> bool:
        """Put ``stamp``'s record, holding ``lines``, in the spare, unless it is there
        already (another process moved it first: that one stays). Called under the
        index folder's record's lock where it could be opened, and every process checks
        the spare after taking that lock, so no line appended there is missed. False
        (said) when the spare cannot take it."""
        assert self.spare is not None
        target = self.spare / f"{APPLIED_PREFIX}{stamp}"
        aside = self.spare / f".{target.name}.{os.getpid()}"
        try:
            aside.write_bytes(b"".join(line + b"\n" for line in lines))
            with contextlib.suppress(FileExistsError):
                os.link(aside, target)  # whole or not at all, and never over another's
        except OSError as exc:
            self._say(f"{problem}, nor in {self.spare} ({exc}): a restart, or a worker started "
                      "in a dead one's place, may not know the delta ops applied")  # fmt: skip
            return False
        finally:
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)
        if not self._spare_said:
            self._spare_said = True
            log.warning("index folder %s cannot record the delta ops applied (%s): recorded in "
                        "the pool's private folder %s for this run (every worker, and one "
                        "started in a dead one's place, knows them; a restart reads the delta "
                        "files anew)", self.folder, problem, self.spare)  # fmt: skip
        return True

    def _say(self, problem: str) -> None:
        if problem not in self._said:
            self._said.add(problem)
            log.warning("index folder %s: %s", self.folder, problem)

    def find(self, stamp: str) -> Path | None:
        path = self.path_for(stamp)
        return path if (path / "meta.json").is_file() else None

    def put(self, base: Base, info: VersionInfo, stamp: str) -> Path:
        """Compile ``base`` (if not there yet) and drop all but the newest ``KEEP`` others."""
        make_folders(self.folder)
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
        for record in self.folder.glob(f"{APPLIED_PREFIX}*"):  # of a version gone
            stamp = record.name.removeprefix(APPLIED_PREFIX)
            if self.path_for(stamp) != keep and not self.path_for(stamp).is_dir():
                with contextlib.suppress(OSError):
                    record.unlink()


def _file_of(st: os.stat_result) -> int:
    """Which file ``st`` is, as one number: its device and inode (a record moved to a
    pool's spare folder may be on another file system, where inodes repeat)."""
    return st.st_dev << 64 | st.st_ino


def _open_locked(path: Path, flags: int) -> tuple[int | None, str, str]:
    """``path`` opened with ``flags`` and locked (``flock``, exclusive: waits for it), or
    None, what went wrong and what it means (nothing for a file not there, when not
    created)."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not flags & os.O_CREAT:
            return None, "", ""
        return None, f"cannot open {path.name} ({exc})", (
            "a restart, or a worker started in a dead one's place, may not know the delta "
            "ops applied"
        )  # fmt: skip
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        return None, f"cannot lock {path.name} ({exc})", "taken as holding nothing"
    return fd, "", ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
