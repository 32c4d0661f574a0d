"""Writing a snapshot file: the header, rows in chunks, progress, and an atomic rename."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from shixin_check.domain.model import CHINA_TZ
from shixin_check.loader.feed import header_row
from shixin_check.loader.synthetic.corpus import Entry
from shixin_check.loader.synthetic.generator import iter_entries

# Rows are joined and written 100 at a time (~75 kB). Measured: chunks of 1,000
# or 10,000 rows cost about 10 us more per row, as they no longer fit the CPU cache.
#: What the rows written look like, bumped whenever the same seed writes other rows
#: (2: an organisation's exemption names its legal representative, the header counts
#: the entries): a cached list of an older output is never reused (``loadtest.common``)
OUTPUT_FORMAT = 2
_CHUNK_ROWS = 100
_PROGRESS_ROWS = 100_000  # a multiple of _CHUNK_ROWS, so progress reports round numbers


def _write_rows(
    out: BinaryIO,
    rows: Iterator[Entry],
    progress: Callable[[int], None] | None,
) -> int:
    """Serialise ``rows`` onto ``out`` in chunks; report progress; return the count."""
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    chunk: list[bytes] = []
    written = reported = 0
    for entry in rows:
        chunk.append(dumps(entry, option=newline))
        if len(chunk) >= _CHUNK_ROWS:
            out.write(b"".join(chunk))
            written += len(chunk)
            chunk.clear()
            if progress is not None and written - reported >= _PROGRESS_ROWS:
                progress(written)
                reported = written
    if chunk:
        out.write(b"".join(chunk))
        written += len(chunk)
    if progress is not None and written != reported:
        progress(written)
    return written


def write_snapshot(
    path: str | os.PathLike[str],
    count: int,
    seed: int,
    as_of: datetime.date,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a JSON Lines snapshot of ``count`` entries and return ``count``.

    The first line is the snapshot header (includes no delta; published at the
    start of ``as_of``, China time; ``count`` entries).

    UTF-8, one entry per line, byte-identical for the same arguments. The rows
    go to ``path + '.part'``, which is synced and renamed onto ``path`` only
    when complete, so a directory watcher never sees half a file (and a failed
    write leaves none). ``progress`` is called with the number of rows written
    every 100,000 rows, and once more at the end unless that was just reported.
    """
    final = os.fspath(path)
    partial = final + ".part"
    try:
        with open(partial, "wb") as out:
            # The header (loader.feed): a generated list holds no delta, and its
            # feed time is the start of its as-of day, China time.
            # It counts the rows, so that a copy cut off at a line's end is refused.
            published = datetime.datetime.combine(as_of, datetime.time(), CHINA_TZ)
            out.write(header_row(0, published, entries=count))
            written = _write_rows(out, iter_entries(count, seed, as_of), progress)
            if written != count:  # never: iter_entries yields count entries
                raise RuntimeError(f"wrote {written} entries, the header says {count}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return written
