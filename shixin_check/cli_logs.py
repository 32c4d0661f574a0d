"""The console subcommands that read the logs: ``feedback`` and ``audit verify``.

Kept apart from ``shixin_check/cli.py`` (which adds them with ``add_parsers``)
because they are offline tools over files: they never talk to a server and
import nothing of grpc.

    shixin-check feedback --quarter 2026Q3 --format csv|json [--out PATH]
                          --hit-log PATH [PATH ...]
    shixin-check audit verify PATH
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.system import cannot_write
from shixin_check.server.settings import add_options, resolving

if TYPE_CHECKING:
    from shixin_check.server.audit import VerifyResult
    from shixin_check.server.feedback import Quarter
    from shixin_check.server.hitlog import HeldFile

Handler = Callable[[argparse.Namespace], int]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``feedback`` and ``audit`` to ``sub``; the handler for each, by name."""
    p = sub.add_parser("feedback", help="the quarterly enforcement report, from hit logs")
    p.add_argument("--quarter", required=True, metavar="YYYYQn", help="e.g. 2026Q3 (China time)")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json")
    p.add_argument("--out", metavar="PATH", help="write here instead of standard output")
    add_options(p, "feedback")  # --hit-log, --redis, --redis-prefix, --config
    p.add_argument("more_hit_logs", nargs="*", metavar="PATH",
                   help="more hit logs (other replicas); checks are counted once")  # fmt: skip

    p = sub.add_parser("audit", help="audit log tools")
    tools = p.add_subparsers(dest="audit_command", required=True)
    v = tools.add_parser("verify", help="check the hash chain of an audit log and its rotations")
    v.add_argument("path", help="the live audit log (rotated files found beside it)")
    return {"feedback": resolving(cmd_feedback), "audit": cmd_audit}


def _hit_sets(args: argparse.Namespace) -> list[tuple[Path, list[HeldFile]]]:
    """Every hit-log set named and its files, each file opened now and once (the
    caller closes them, ``_close``); ``FileNotFoundError`` for a path without a set.

    A path names its per-worker sets too (``serve --workers``: ``hits.w1.jsonl``,
    ...). Files are opened before the report reads any (``open_log_files``), so a
    rotation while it runs takes no file out of it.
    """
    from shixin_check.server.hitlog import log_sets, open_log_files

    named = [("--hit-log", args.hit_log)] if args.hit_log else []
    named += [(f"hit log argument {n}", raw) for n, raw in enumerate(args.more_hit_logs, 1)]
    paths = [(raw, log_path(str(raw), argument)) for argument, raw in named]
    raise_open_files_limit()
    sets: list[tuple[Path, list[HeldFile]]] = []
    seen: set[tuple[int, int]] = set()  # a file named twice (a set, or a hard link) is read once
    try:
        for raw, path in paths:
            found = False
            for one in log_sets(path):
                found = True
                if any(one == listed for listed, _ in sets):
                    continue
                try:
                    files = open_log_files(one)
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        raise _too_many(exc, one) from exc
                    raise
                sets.append((one, []))
                for file in files:
                    if file.identity in seen:
                        file.close()
                    else:
                        seen.add(file.identity)
                        sets[-1][1].append(file)
            if not found:
                raise FileNotFoundError(f"no hit log at {raw}")
    except BaseException:
        _close(sets)
        raise
    return sets


def _close(sets: list[tuple[Path, list[HeldFile]]]) -> None:
    for _, files in sets:
        for file in files:
            file.close()


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard one: ``feedback`` and
    ``audit verify`` hold every file of a set open while they read (``open_log_files``),
    and a year of daily files per worker passes the usual soft limit of 1024; ``serve``
    holds one for each client connection (as Go's runtime does for every Go server)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # the soft limit stays; too many files then fails in one line


def _too_many(exc: OSError, path: Path) -> OSError:
    """Too many files open at once (``exc``), in words that say what to do."""
    return OSError(
        f"{path}: too many files to hold open at once ({exc.strerror}): every file of the "
        "log is held open while it is read; raise the limit on open files (ulimit -n)"
    )


def log_path(text: str, argument: str) -> Path:
    """``text`` as the path of a live log; ``ValueError`` naming ``argument`` when it
    cannot be one (empty, or a directory: the files of a set are found beside it)."""
    if not text.strip():
        raise ValueError(f"{argument}: is empty; give a log file's path")
    path = Path(text)
    if path.name in ("", "..") or path.is_dir():
        raise ValueError(
            f"{argument}: {text} is a directory; give the live log file's path "
            "(its rotated files are found beside it)"
        )
    return path


def replaceable(path: Path) -> None:
    """``ConfigurationError`` unless ``path`` (an ``--out``, written beside it and renamed
    onto it) is missing or a regular file: a device or a directory is never replaced."""
    if path.exists() and not path.is_file():
        raise ConfigurationError(f"--out: {path} exists and is not a regular file")


def _write_whole(path: Path, text: str) -> None:
    """Write beside ``path`` and rename, so a reader never sees half a report."""
    replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # its words name the .part file, or no file
            raise cannot_write("--out", path, exc) from exc
        raise


def cmd_feedback(args: argparse.Namespace) -> int:
    from shixin_check.server.feedback import Quarter

    try:
        quarter = Quarter.parse(args.quarter)
        sets = _hit_sets(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"feedback: {exc}", file=sys.stderr)
        return 2
    try:
        return _feedback(args, quarter, sets)
    finally:
        _close(sets)


def _feedback(
    args: argparse.Namespace, quarter: Quarter, sets: list[tuple[Path, list[HeldFile]]]
) -> int:
    from shixin_check.server.feedback import (
        NotAHitLog,
        build_report,
        files_not_read,
        report_csv,
        report_json,
        sets_not_read,
    )

    files = [file for _, set_files in sets for file in set_files]
    sources: list[Any] = list(files)
    if args.redis:
        from shixin_check.loader.index_redis import connect
        from shixin_check.server.hitsink import read_stream

        client = connect(args.redis, timeout=30)
        try:
            sources += list(read_stream(client, args.redis_prefix))
        finally:
            client.close()
    if not sources and not args.redis:
        print(
            "feedback: --hit-log PATH (or SHIXIN_HIT_LOG) or --redis URL is required",
            file=sys.stderr,
        )
        return 2
    try:
        report = build_report(sources, quarter)
    except NotAHitLog as exc:
        print(f"feedback: {exc}", file=sys.stderr)
        return 2
    report.totals.missing_files, report.totals.unread_files = files_not_read(sets, quarter)
    named = [args.hit_log] if args.hit_log else []
    report.totals.missing_sets = sets_not_read(Path(raw) for raw in [*named, *args.more_hit_logs])
    text = report_csv(report) if args.format == "csv" else report_json(report)
    if args.out:
        _write_whole(Path(args.out), text)
    else:
        sys.stdout.write(text)
    t = report.totals
    print(
        f"feedback {quarter}: {len(report.cases)} cases, {t.checks} checks ({t.denied} denied, "
        f"{t.reviews} review, {t.allowed} allowed) from {len(files)} files; "
        f"{t.duplicates} duplicates, {t.withdrawn} withdrawn, {t.skipped_lines} unreadable lines"
        f"{f' (the first at {t.first_skipped})' if t.first_skipped else ''}"
        f"{_shared(t.collisions)}"
        f"{_outside(t.outside_quarter, t.checks + t.withdrawn, quarter)}; due {quarter.due}"
        f"{_not_over(quarter, report.generated_at, t.checks + t.withdrawn + t.duplicates)}"
        f"{_not_read(t.missing_files, t.unread_files, quarter, t.missing_sets)}",
        file=sys.stderr,
    )
    return 0


def _not_over(quarter: Quarter, generated_at: str, dated_in_it: int) -> str:
    """The summary's word on a quarter not over when the report was made (China time):
    it counts the hits so far, and a report for the courts is made after its end. A
    quarter not begun by this clock with records dated in it (``dated_in_it``): they
    were written under a clock ahead of this one."""
    today = generated_at[:10]  # the report's own stamp, an ISO timestamp in China time
    if today > quarter.end.isoformat():
        return ""
    if today < quarter.start.isoformat():
        if dated_in_it:
            return (f"; {quarter} has not begun by this machine's clock (it starts "
                    f"{quarter.start}, China time), yet {dated_in_it} "
                    f"{'record is' if dated_in_it == 1 else 'records are'} dated in it: "
                    "the server's clock or this one is wrong; set both right (NTP) and make "
                    "the report again after the quarter ends")  # fmt: skip
        return f"; {quarter} has not begun (it starts {quarter.start}, China time): nothing to count yet"
    return (
        f"; {quarter} is not over (it ends {quarter.end}, China time): this report counts "
        f"its hits up to {generated_at} only"
    )


def _shared(collisions: int) -> str:
    """The summary's word on checks that share a check_id with another (two processes
    drew the same random prefix): each is counted, none taken for a duplicate."""
    if not collisions:
        return ""
    return (f", {collisions} {'check' if collisions == 1 else 'checks'} sharing a check_id "
            "with an earlier, different check (another time or subject: each counted)")  # fmt: skip


def _not_read(
    missing: list[str], unread: list[str], quarter: object, sets: list[str] | None = None
) -> str:
    """The summary's word on files of the sets that may hold records of the quarter
    but were not read (``feedback.files_not_read``), and on workers' sets missing
    (``feedback.sets_not_read``): the report may count too few."""
    if not missing and not unread and not sets:
        return ""
    parts = []
    if sets:
        parts.append(f"workers' sets missing (moved or removed whole): {_some(sets)}")
    if missing:
        parts.append(f"rotated files missing (moved or removed): {_some(missing)}")
    if unread:
        parts.append(f"{_some(unread)} (compressed or renamed: gunzip them where they lie "
                     "to have them read)")  # fmt: skip
    return f"; WARNING: not read, though they may hold records of {quarter}: {'; '.join(parts)}"


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _outside(records: int, checks: int, quarter: object) -> str:
    """The summary's word on records of other quarters: never silent, since a quarter
    with no check in it is most often a --quarter or a log of the wrong time.
    ``checks``: those of the quarter, withdrawn ones included (they were read there)."""
    if not records:
        return ""
    if checks:
        return f", {records} records outside {quarter}"
    return f"; none of the {records} records read falls in {quarter} (is --quarter right?)"


#: ``audit verify``'s exit status when every chain is whole as far as it goes but the
#: log cannot be shown complete: a writer started on it without its head, or a
#: worker's set is missing. Not 0: nothing vouches for what may be gone; not 1:
#: no record read is broken (and a log restarted without its head stays so for good)
UNPROVEN = 3


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit verify``: 0 when whole up to its noted head, 1 when broken, 3 (``UNPROVEN``)
    when whole as far as it goes but not shown complete, 2 without a log.

    A log without a head file (written before heads were kept) verifies with
    a warning on standard error: a cut off its end cannot be seen. The path
    names its per-worker sets too (``serve --workers``: ``audit.w1.jsonl``,
    ...): each is its own chain, verified on its own, one line each; a worker's
    set missing below the highest one found is named in a warning.
    """
    from shixin_check.server.audit import verify_sets
    from shixin_check.server.hitlog import worker_gaps

    try:
        path = log_path(args.path, "PATH")
        raise_open_files_limit()
        results = verify_sets(path)
    except (ValueError, FileNotFoundError) as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        print(f"audit verify: {_too_many(exc, path)}", file=sys.stderr)
        return 2
    gaps = worker_gaps(path, max(result.workers for _, result in results))
    if len(results) == 1 and results[0][0] == path and not gaps:
        return _report_chain(results[0][1], "")
    codes = [_report_chain(result, f"{one.name}: ") for one, result in results]
    for gap in gaps:
        print(f"audit verify: warning: no file of {gap.name}'s set is here (its head neither), "
              "though a higher-numbered worker's is, or another set's start records say its "
              "server ran that worker: serve --workers starts every worker from 1, so that "
              "set was moved or removed whole, and its records cannot be verified",
              file=sys.stderr)  # fmt: skip
    records = sum(result.records for _, result in results)
    broken = codes.count(1)
    if broken:
        print(f"BROKEN: {broken} of {len(results)} audit chains ({records} records read)")
        return 1
    unproven = codes.count(UNPROVEN)
    if unproven or gaps:
        why = [f"{_some([gap.name for gap in gaps])} missing"] if gaps else []
        if unproven:
            why.append(f"{unproven} restarted without a head")
        print(f"UNPROVEN: {len(results)} audit chains, {records} records, whole as far as "
              f"they go; {'; '.join(why)}")  # fmt: skip
        return UNPROVEN
    print(f"OK: {len(results)} audit chains, {records} records")
    return 0


def _report_chain(result: VerifyResult, prefix: str) -> int:
    """Print what ``verify`` found of one chain; 0 when whole, 1 when broken,
    ``UNPROVEN`` when whole as far as it goes since a writer started without its head."""
    files = len(result.files)
    if result.problem is None:
        head = f"head seq {result.head_seq} sha256 {result.head_hash}"
        if result.unanchored is not None:
            print(f"{prefix}UNPROVEN: {result.unanchored}")
            print(f"{prefix}({result.records} records whole as far as they go, in {files} "
                  f"files; {head})")  # fmt: skip
        else:
            print(f"{prefix}OK: {result.records} records in {files} files; {head}")
        noted = result.noted
        if noted is not None and noted.seq < result.head_seq:
            print(f"{prefix}(the noted head is seq {noted.seq}, {result.head_seq - noted.seq} "
                  "records behind: the writer is running or was killed since it noted it)")  # fmt: skip
        if result.warning:
            print(f"audit verify: {prefix}warning: {result.warning}", file=sys.stderr)
        return 0 if result.unanchored is None else UNPROVEN
    print(f"{prefix}BROKEN: {result.problem}")
    print(f"{prefix}({result.records} records intact before it, in {files} files)")
    return 1
