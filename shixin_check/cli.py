"""``shixin-check``: one console script, one subcommand per job.

serve, validate, check, gen-data, status, health, load, keys, feedback, audit. Every
option is a row of the table in ``server/settings.py``: a flag, a ``SHIXIN_<OPTION>``
variable and a key of the ``--config`` file, in that order of precedence, each
read strictly before the command runs. Each command imports what it needs when
it runs (gRPC, numpy, Redis, pydantic are slow to import), so ``--help`` and
``validate`` start quickly. A user's mistake is one line on standard error and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shixin_check.cli_health import add_parsers as add_health_parsers
from shixin_check.cli_keys import add_parsers as add_keys_parsers
from shixin_check.cli_logs import add_parsers, replaceable
from shixin_check.clients.names import enum_name
from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.settings import (
    BY_KEY,
    DEFAULT_LISTEN,
    HELP_EPILOG,
    MAX_BATCH,
    add_options,
    resolve_args,
    secret_from,
    serve_settings,
)

if TYPE_CHECKING:
    from shixin_check.clients.check_client import CheckClient

DEFAULT_TARGET = DEFAULT_LISTEN


log_handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
keys_handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
health_handlers: dict[str, Callable[[argparse.Namespace], int]] = {}


class _Version(argparse.Action):
    """``--version``: the package, the proto package it speaks, Python and grpcio."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        from shixin.v1 import check_pb2

        def of(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "(not installed)"

        print(f"shixin-check {of('shixin-check')}")
        print(f"proto package {check_pb2.DESCRIPTOR.package}")
        print(f"Python {platform.python_version()} ({platform.python_implementation()})")
        print(f"grpcio {of('grpcio')}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="shixin-check",
        description="Point-of-sale checks against the court list of dishonest judgment debtors.",
        epilog=HELP_EPILOG,
    )
    top.add_argument("--version", action=_Version, nargs=0,
                     help="print the version, the proto package, and the Python and grpcio versions")  # fmt: skip
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC check service")
    add_options(p, "serve")

    keys_handlers.update(add_keys_parsers(sub))

    p = sub.add_parser("load", help="validate a snapshot or delta file and publish it to Redis")
    p.add_argument("path", type=Path)
    add_options(p, "load")
    # a flag only, on purpose: no SHIXIN_ variable or config key could leave it on for
    # every load (a rollback undoes deltas: listed people become ALLOW again)
    p.add_argument("--allow-rollback", action="store_true",
                   help="load a snapshot even though its includes_seq is below the last delta "
                        "seq Redis has applied (undoing those deltas), or it was published "
                        "before the current version's; refused otherwise")  # fmt: skip
    # a flag only too: a snapshot built with another key secret is served by no replica
    # until each is restarted with that secret
    p.add_argument("--new-key-secret", action="store_true",
                   help="load a snapshot built with another key secret than the current "
                        "version's (changing the secret on purpose: restart every replica "
                        "with the new one); refused otherwise")  # fmt: skip

    p = sub.add_parser("validate", help="report every bad row of a list file; change nothing")
    p.add_argument("path", type=Path)
    p.add_argument("--against", type=Path, metavar="SNAPSHOT",
                   help="for a delta: also check each op against this snapshot (and its header)")  # fmt: skip

    p = sub.add_parser("check", help="one check against a running server")
    add_options(p, "check")
    p.add_argument("--id", dest="id_number", default="", help="ID number of a person")
    p.add_argument("--id-type", default="RESIDENT_ID",
                   help="RESIDENT_ID PASSPORT HK_MACAO_PERMIT TAIWAN_PERMIT "
                        "FOREIGN_PERMANENT_RESIDENT")  # fmt: skip
    p.add_argument("--uscc", default="", help="unified social credit code of an organisation")
    p.add_argument("--name", default="", help="name of the person or organisation")
    p.add_argument("--train", help="RAIL: train number, e.g. G1234")
    p.add_argument("--seat", help="RAIL: SECOND_CLASS, FIRST_CLASS, SOFT_SLEEPER, ...")
    p.add_argument("--flight", help="AIRLINE: flight number")
    p.add_argument("--cabin", help="AIRLINE: cabin")
    p.add_argument("--star-rating", type=int, help="HOTEL: 0 (unrated) to 5")
    p.add_argument("--high-end", action="store_true", help="HOTEL/OFFICE_RENTAL: high-end")
    p.add_argument("--private-school", action="store_true", help="SCHOOL")
    p.add_argument("--high-fee", action="store_true", help="SCHOOL")
    p.add_argument("--cabin-class", type=int, help="SHIP: 1 = first class")
    p.add_argument("--service", help="TRAVEL: OUTBOUND_GROUP_TOUR OUTBOUND_RELATED RATED_RESORT "
                   "DOMESTIC")  # fmt: skip
    p.add_argument("--venue", help="LEISURE: NIGHTCLUB GOLF OTHER_HIGH_CONSUMPTION ORDINARY")
    p.add_argument("--cash-value", action="store_true", help="INSURANCE")
    p.add_argument("--kind", help="REAL_ESTATE: PROPERTY_PURCHASE LAND_USE_RIGHT NEW_BUILD "
                   "EXTENSION LUXURY_RENOVATION ORDINARY_RENOVATION")  # fmt: skip
    p.add_argument("--business-necessary", action="store_true", help="VEHICLE")
    p.add_argument("--amount-fen", type=int, default=0, help="amount where a quota applies")
    p.add_argument("--merchant", default="", help="merchant id")
    p.add_argument("--terminal", default="", help="terminal id")
    p.add_argument("--request-id", default="", help="your request id")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("--batch", metavar="FILE",
                   help="check every line of FILE (JSON Lines, '-' for standard input): the "
                        "flags' names as keys, e.g. {\"channel\": \"RAIL\", \"id\": \"...\", "
                        "\"train\": \"G1234\", \"seat\": \"SECOND_CLASS\"}; flags given here are "
                        "defaults for every line; one answer per line")  # fmt: skip

    p = sub.add_parser("gen-data", help="write a realistic synthetic list (JSON Lines)")
    add_options(p, "gen-data")

    p = sub.add_parser(
        "status", help="what list a running server (or Redis) holds",
        description="Ask the server at --target what it serves. With a Redis URL (--redis, "
        "or SHIXIN_REDIS or the config file while --target is not on the command line): "
        "Redis's current version and every replica registered there instead. Exit 1 while "
        "the server is NOT_SERVING (Redis: no current version, or a replica reporting a "
        "problem), 2 when it cannot be asked.",
    )  # fmt: skip
    add_options(p, "status")
    p.add_argument("--json", action="store_true", help="print as JSON")
    log_handlers.update(add_parsers(sub))
    health_handlers.update(add_health_parsers(sub))
    return top


def _client(args: argparse.Namespace, batch_size: int = MAX_BATCH) -> CheckClient:
    from shixin_check.cli_health import client_credentials
    from shixin_check.clients.check_client import CheckClient

    given = client_credentials(args)  # every flag checked, as `health` checks them
    return CheckClient(
        args.target, api_key=given.api_key, root_ca=given.root_ca,
        client_cert=given.client_cert, client_key=given.client_key, batch_size=batch_size,
    )  # fmt: skip


#: Each purchase flag of ``check``: (its dest, the proto field, the channels it belongs to).
_PURCHASE_FLAGS = (
    ("train", "train_number", ("RAIL",)),
    ("seat", "seat", ("RAIL",)),
    ("flight", "flight_number", ("AIRLINE",)),
    ("cabin", "cabin", ("AIRLINE",)),
    ("star_rating", "star_rating", ("HOTEL",)),
    ("high_end", "high_end", ("HOTEL", "OFFICE_RENTAL")),
    ("private_school", "private_school", ("SCHOOL",)),
    ("high_fee", "high_fee", ("SCHOOL",)),
    ("cabin_class", "cabin_class", ("SHIP",)),
    ("service", "service", ("TRAVEL",)),
    ("venue", "venue", ("LEISURE",)),
    ("cash_value", "cash_value", ("INSURANCE",)),
    ("kind", "kind", ("REAL_ESTATE",)),
    ("business_necessary", "business_necessary", ("VEHICLE",)),
)


def _purchase(args: argparse.Namespace, channel: str) -> dict[str, object]:
    """The purchase fields given for ``channel``; a flag of another channel is refused."""
    from shixin.v1 import check_pb2 as pb
    from shixin_check.clients.check_client import PURCHASE_FIELD

    fields: dict[str, object] = {}
    for dest, field, channels in _PURCHASE_FLAGS:
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if channel not in channels:
            raise ConfigurationError(
                f"{flag} is for {' and '.join(channels)}, not {channel}; leave it out"
            )
        purchase: Any = pb.CheckRequest.DESCRIPTOR.fields_by_name[PURCHASE_FIELD[channel]]
        enum = purchase.message_type.fields_by_name[field].enum_type
        if enum is not None:
            value = enum.values_by_name[enum_name(enum, value, flag)].number
        fields[field] = value
    return fields


#: ``check --batch``: each key a line may have (a flag's name, ``_`` or ``-``), its
#: dest, and the JSON type it takes.
_LINE_KEYS: dict[str, tuple[str, type]] = {
    "channel": ("channel", str), "id": ("id_number", str), "id_type": ("id_type", str),
    "uscc": ("uscc", str), "name": ("name", str), "train": ("train", str),
    "seat": ("seat", str), "flight": ("flight", str), "cabin": ("cabin", str),
    "star_rating": ("star_rating", int), "high_end": ("high_end", bool),
    "private_school": ("private_school", bool), "high_fee": ("high_fee", bool),
    "cabin_class": ("cabin_class", int), "service": ("service", str),
    "venue": ("venue", str), "cash_value": ("cash_value", bool), "kind": ("kind", str),
    "business_necessary": ("business_necessary", bool), "amount_fen": ("amount_fen", int),
    "merchant": ("merchant", str), "terminal": ("terminal", str),
    "request_id": ("request_id", str),
}  # fmt: skip
_JSON_TYPE = {str: "a string", int: "an integer", bool: "true or false"}


#: check's integer flags and the width of their wire fields
_INT_FLAGS = (("star_rating", 32), ("cabin_class", 32), ("amount_fen", 64))


def _check_request(args: argparse.Namespace) -> Any:
    """The ``CheckRequest`` the check flags (or a batch line over them) describe."""
    from shixin.v1 import check_pb2 as pb
    from shixin_check.clients.check_client import build_request

    if not args.channel:
        raise ConfigurationError(
            f"--channel ({BY_KEY['channel'].env}) is required: a flag, the variable, the config "
            'key channel or each --batch line\'s "channel"'
        )
    if args.id_number and args.uscc:  # build_request refuses it too, naming its arguments
        raise ConfigurationError(
            "--id and --uscc are both given: a check is of one subject, a person (--id) or "
            "an organisation (--uscc); check each on its own"
        )
    for dest, bits in _INT_FLAGS:  # protobuf's own refusal names no field
        value = getattr(args, dest, None)
        if isinstance(value, int) and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            flag = "--" + dest.replace("_", "-")
            raise ConfigurationError(f"{flag}: {value} is beyond a {bits}-bit integer")
    try:
        channel = enum_name(pb.Channel.DESCRIPTOR, args.channel, "--channel")
        id_type = enum_name(pb.IdType.DESCRIPTOR, args.id_type, "--id-type")
        return build_request(
            channel, id_number=args.id_number, name=args.name, id_type=id_type,
            uscc=args.uscc, purchase=_purchase(args, channel), amount_fen=args.amount_fen,
            request_id=args.request_id, merchant_id=args.merchant, terminal_id=args.terminal,
        )  # fmt: skip
    except ValueError as exc:  # a name that is no value of its enum, listing the valid ones
        raise ConfigurationError(str(exc)) from None


def _line_args(args: argparse.Namespace, raw: bytes) -> argparse.Namespace:
    """The check flags with one ``--batch`` line's fields over them."""
    import orjson

    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ConfigurationError("a line must be one JSON object")
    line = argparse.Namespace(**vars(args))
    for key, value in fields.items():
        dest, kind = _LINE_KEYS.get(key.replace("-", "_"), ("", str))
        if not dest:
            raise ConfigurationError(
                f"{key!r} is not a field; the fields are {', '.join(_LINE_KEYS)}"
            )
        if value is None:
            continue
        if type(value) is not kind:
            raise ConfigurationError(f"{key}: {value!r} is not {_JSON_TYPE[kind]}")
        setattr(line, dest, value)
    return line


def _batch_requests(args: argparse.Namespace) -> tuple[list[Any], list[int]]:
    """Every request of the ``--batch`` file, in order, and the line each is on; a bad
    line stops it all, named."""
    import contextlib

    source = args.batch
    opened = (contextlib.nullcontext(sys.stdin.buffer) if source == "-"
              else Path(source).open("rb"))  # fmt: skip
    requests, numbers = [], []
    with opened as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                requests.append(_check_request(_line_args(args, raw)))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{source}:line {number}: {exc}") from None
            numbers.append(number)
    return requests, numbers


#: a check of a batch as the server (and the client library) names it: ``checks[i].field``
#: or ``checks[i]: problem``
_CHECK_INDEX = re.compile(r"^checks\[(\d+)\](?:\.|: )")

#: statuses of a call the server refused before deciding any of its checks; after any
#: other (a deadline, a dropped connection) some may have been decided all the same
_REFUSED = frozenset(
    ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED",
     "RESOURCE_EXHAUSTED")
)  # fmt: skip


def _batch_refusal(exc: Any, source: str, numbers: list[int]) -> str:
    """The one line for a refused ``--batch`` call: the status, its problem with
    ``checks[i]`` named ``FILE:line N``, and, when earlier calls were answered
    (``exc.answers``, printed already), which lines those were and which were not."""
    from shixin_check.clients.errors import CheckError

    def at_line(text: str) -> str:
        found = _CHECK_INDEX.match(text)
        if found is None or int(found[1]) >= len(numbers):
            return text
        return f"{source}:line {numbers[int(found[1])]}: {text[found.end() :]}"

    code = exc.code().name
    said = at_line(exc.details() or "")
    if isinstance(exc, CheckError):
        for field, problem in exc.field_violations:  # any the message does not say
            violation = at_line(f"{field}: {problem}" if field else problem)
            if violation not in said:
                said += f"; {violation}"
    first = exc.first_unanswered if isinstance(exc, CheckError) else 0
    if not first:
        return f"{code}: {said}"

    def lines(start: int, end: int) -> str:
        return f"line {start}" if start == end else f"lines {start}-{end}"

    left = "not checked" if code in _REFUSED else "not answered (some may have been checked)"
    named, tail = ("standard input", "") if source == "-" else (source, f" {source}")
    return (
        f"{code}: {said}; answered above: {lines(numbers[0], numbers[first - 1])} of {named}; "
        f"{left}: {lines(numbers[first], numbers[-1])}, check only those again "
        f"(tail -n +{numbers[first]}{tail})"
    )


def _print_decision(answer: Any) -> None:
    from shixin.v1 import check_pb2 as pb

    stale = "  STALE" if answer.stale else ""
    print(
        f"{pb.Decision.Name(answer.decision)}  (check {answer.check_id}, "
        f"list {answer.list_version}){stale}"
    )
    if answer.stale:
        print("  stale: the server's list is older than its --max-list-age; apply your policy")
    for reason in answer.reasons:
        print(f"  {reason.code}: {reason.message}")
    for m in answer.matches:
        org = f" of {m.organization_name}" if m.organization_name else ""
        print(
            f"  match: {pb.ListType.Name(m.list_type)} {m.case_number} {m.court} "
            f"{pb.Role.Name(m.role).removeprefix('ROLE_')}{org} {m.masked_id} "
            f"listed {m.listed_on} until {m.valid_until or '-'} {pb.EntryStatus.Name(m.status)}"
        )


def cmd_check(args: argparse.Namespace) -> int:
    import grpc

    size = int(args.batch_size)  # resolved: flag > SHIXIN_BATCH_SIZE > config > 1000
    if not args.batch:
        request = _check_request(args)
        try:
            with _client(args) as client:
                answer = client.check(request)
        except grpc.RpcError as exc:  # clients.errors.CheckError: the status and its message
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
        _print_answers(args, [answer])
        return 0
    requests, numbers = _batch_requests(args)
    try:
        with _client(args, size) as client:
            answers = client.check_batch(requests)
    except grpc.RpcError as exc:
        # the calls before the refused one were decided and logged: show their answers,
        # so that only the rest is checked again
        _print_answers(args, getattr(exc, "answers", []))
        sys.stdout.flush()
        print(_batch_refusal(exc, args.batch, numbers), file=sys.stderr)
        return 2
    _print_answers(args, answers)
    return 0


def _print_answers(args: argparse.Namespace, answers: list[Any]) -> None:
    from google.protobuf import json_format

    from shixin.v1 import check_pb2 as pb

    for answer in answers:
        if args.json:
            print(json_format.MessageToJson(answer, ensure_ascii=False,
                                            indent=None if args.batch else 2))  # fmt: skip
        elif args.batch:  # one line per answer, in the order of the file's lines
            codes = ",".join(r.code for r in answer.reasons)
            mine = f"request {answer.request_id}, " if answer.request_id else ""
            stale = "  STALE" if answer.stale else ""
            print(f"{pb.Decision.Name(answer.decision)}  {codes}  ({mine}check {answer.check_id})"
                  f"{stale}")  # fmt: skip
        else:
            _print_decision(answer)


def cmd_load(args: argparse.Namespace) -> int:
    from shixin_check.domain.errors import IndexUnavailable, LoadRejected
    from shixin_check.domain.keys import SubjectKeyer
    from shixin_check.loader.index_redis import RedisKeys, connect
    from shixin_check.loader.listfile import FileKind, detect_kind
    from shixin_check.loader.publish_redis import (
        older_of,
        publish_delta,
        publish_snapshot,
        rollback_of,
        snapshot_published_at,
    )

    path: Path = args.path
    if not path.is_file():
        print(f"load: {path} is not a file", file=sys.stderr)
        return 2
    secret, _, note = secret_from(args, allow_ephemeral=False)
    if note:
        print(f"load: warning: {note}", file=sys.stderr)
    keyer = SubjectKeyer(secret)
    client = connect(args.redis, timeout=30)
    client.ping()  # before minutes of validating a big file: is Redis there at all?
    keys = RedisKeys(args.redis_prefix)
    started = time.perf_counter()
    try:
        if detect_kind(path) is FileKind.DELTA:
            result = publish_delta(client, path, keyer, keys)
            print(f"delta {path}: {result.applied} op(s) applied to version {result.version}, "
                  f"last seq {result.last_seq}")  # fmt: skip
        else:
            undone = rollback_of(client, path, keys) if args.allow_rollback else ""
            newer = older_of(client, path, keys) if args.allow_rollback else ""
            version = publish_snapshot(
                client, path, keyer, keys,
                progress=lambda n: print(f"  {n:,} rows read", file=sys.stderr, flush=True),
                writers=args.writers, allow_rollback=args.allow_rollback,
                new_key_secret=args.new_key_secret,
            )  # fmt: skip
            print(f"snapshot {path}: version {version} is current "
                  f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
            if undone:  # on purpose, but never without a word
                verb = "is" if undone.startswith("delta ") else "are"
                print(f"load: rolled back (--allow-rollback): {undone} {verb} undone on every "
                      "replica; load again, in seq order, what should stay", file=sys.stderr)  # fmt: skip
            if newer:
                dated = snapshot_published_at(path) is not None
                older = "an older snapshot" if dated else "an undated snapshot"
                print(f"load: rolled back (--allow-rollback): {newer} is replaced by {older} on "
                      "every replica; what only the newer one listed is no longer listed",
                      file=sys.stderr)  # fmt: skip
    except LoadRejected as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except IndexUnavailable as exc:  # lost the load lock midway: nothing was committed
        print(f"shixin-check load: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0


def _redis_status(args: argparse.Namespace) -> int:
    """Redis's view: its current version and every replica registered there. Exit 1,
    as for a server NOT_SERVING, while Redis holds no current version (every replica's
    checks get --unavailable) or a live replica reports a problem (NOT_SERVING or
    BEHIND); one that stopped beating (GONE) may have been scaled away and counts not."""
    import orjson

    from shixin_check.loader.index_redis import LIVE_SECONDS, RedisKeys, connect, redis_status

    client = connect(args.redis, timeout=5)
    try:
        report = redis_status(client, RedisKeys(args.redis_prefix))
    finally:
        client.close()
    for r in report["replicas"]:  # a replica beats every second; one silent longer is gone
        r["live"] = r["seen_seconds_ago"] < LIVE_SECONDS  # (or cannot write: WRITE REFUSED)
    version = report["version"]
    trouble = not version or any(r["live"] and r["problem"] for r in report["replicas"])
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 1 if trouble else 0
    if version:
        print(f"redis current version {version}, last delta seq {report['last_seq']}")
    else:
        print("redis current version (none): nothing loaded yet, or Redis was emptied "
              "(flushed, restarted empty or failed over?)")  # fmt: skip
    for r in report["replicas"]:
        at = f"version {r['version']} seq {r['seq']}" if r["version"] else "no version"
        behind = r["behind"]
        if not r["version"]:
            where = at
        elif behind != "version":  # the seq Redis holds minus the one applied there
            where = (f"{at} behind {behind}" if behind >= 0
                     else f"{at}, deltas Redis no longer holds")  # fmt: skip
        elif version:
            where = f"{at}, not Redis's current version"
        else:
            where = f"{at}, a version Redis no longer holds"
        if r["live"]:
            line = f"{where} (seen {r['seen_seconds_ago']}s ago)"
        else:
            line = (f"GONE: not seen for {r['seen_seconds_ago']}s (stopped, or it cannot "
                    f"write to Redis); it was at {at}")  # fmt: skip
        problem = f": {r['problem']}" if r.get("problem") else ""
        print(f"  replica {r['replica']}: {line}{problem}")
    return 1 if trouble else 0


def _given(args: argparse.Namespace, key: str) -> bool:
    """Whether option ``key`` was on the command line, not from its variable, the config
    file or its default (``resolve`` records where each value came from)."""
    resolved = getattr(args, "resolved", None)
    return resolved is not None and resolved.origins.get(key) == "the command line"


def _redis_line(status: Any) -> str:
    """A Redis-mode replica against what Redis holds, in words. ``lag_deltas`` is -1
    both while Redis cannot be reached and once it lost what is served here (then
    ``index_reachable`` is False too): never printed as a count, nor as the network."""
    upstream = f"Redis holds {status.upstream_version} seq {status.upstream_last_delta_seq}"
    if status.lag_deltas < 0 and not status.upstream_version:  # read: no current version
        return (f"Redis holds no current version (flushed, restarted empty or failed over?): "
                f"it no longer holds {status.version}, which this replica serves")  # fmt: skip
    if status.behind:  # behind a refused version, deltas are not what it lacks
        return f"{upstream}; behind by a version it refused (BEHIND above)"
    if status.lag_deltas >= 0:
        return (f"{upstream}; behind by {status.lag_deltas} delta(s); "
                f"reachable {status.index_reachable}")  # fmt: skip
    if status.not_serving_reason:  # lost, unless a log's problem and the network coincide
        return (f"{upstream} as last read; it no longer holds what this replica serves, or "
                "cannot be read now (NOT_SERVING above says which)")  # fmt: skip
    if status.redis_write_refused:  # it answers, and refuses: not the network
        return (f"Redis answers but refuses this replica now (WRITE REFUSED below; it held "
                f"{status.upstream_version} seq {status.upstream_last_delta_seq}); how many "
                "deltas behind is unknown")  # fmt: skip
    return (f"Redis cannot be reached now (it held {status.upstream_version} seq "
            f"{status.upstream_last_delta_seq}); how many deltas behind is unknown")  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    args = resolve_args(args)
    # --target on the command line asks that server whatever SHIXIN_REDIS says (every
    # shipped deployment sets it); Redis's view only when no target was given
    if _given(args, "redis") and _given(args, "target"):
        raise ConfigurationError(
            "--redis and --target are both given: --target asks one server, --redis reads "
            "Redis's view of every replica; give one"
        )
    if args.redis and not _given(args, "target"):
        return _redis_status(args)
    try:
        with _client(args) as client:
            status = client.status()
    except grpc.RpcError as exc:  # named as health names it: the command, the server asked
        print(f"shixin-check status: cannot ask {args.target}: {exc.code().name}: "
              f"{exc.details()}", file=sys.stderr)  # fmt: skip
        return 2
    # exit 1 while the server is NOT_SERVING (as ``health``): no list, or one it cannot trust
    serving = status.serving and not status.not_serving_reason
    if args.json:
        print(json_format.MessageToJson(status, ensure_ascii=False))
        return 0 if serving else 1
    if status.not_serving_reason or not status.serving:
        print(f"NOT_SERVING: {status.not_serving_reason or 'no list loaded yet'}")
    if status.behind:
        # with no list loaded there is no last good one to serve: NOT_SERVING said so
        serves = "serving the last good list" if status.serving else "nothing is served"
        print(f"BEHIND: {status.rejected_source} was refused ({status.rejected_problem}); "
              f"{serves}")  # fmt: skip
    if status.stale:
        print(f"STALE since {status.stale_since}: the feed's time {status.source_timestamp} is "
              f"older than --max-list-age ({status.max_list_age_seconds}s); readiness "
              "NOT_SERVING, answers marked stale")  # fmt: skip
    if status.serving:
        print(f"version {status.version}  from {status.source}")
        print(f"loaded {status.loaded_at}; source {status.source_timestamp} "
              f"({status.staleness_seconds}s old); last delta seq {status.last_delta_seq} "
              f"(snapshot includes {status.snapshot_includes_seq})")  # fmt: skip
        print(f"{status.entries_total} entries, {status.subject_keys} subject keys")
        if status.index_backend == "redis":
            print(f"replica {status.replica_id}: {_redis_line(status)}")
        if status.redis_write_refused:
            print(f"WRITE REFUSED: {status.redis_write_refused}")
        for c in status.counts:
            print(f"  {c.list_type:8} {c.status:10} {c.entries}")
    for p in status.policy:
        print(f"policy {p.name} = {p.value}  ({p.description})")
    return 0 if serving else 1


def cmd_validate(args: argparse.Namespace) -> int:
    import secrets

    from shixin_check.domain.errors import LoadRejected
    from shixin_check.domain.keys import SubjectKeyer
    from shixin_check.loader.listfile import FileKind
    from shixin_check.loader.versions import validate_delta_against, validate_file

    path: Path = args.path
    for given in (path, args.against):
        if given is not None and not given.is_file():
            print(f"validate: {given} is not a file", file=sys.stderr)
            return 2
    keyer = SubjectKeyer(secrets.token_bytes(32))
    kind, rows, errors = validate_file(path, keyer)
    if args.against is not None:
        if kind is not FileKind.DELTA:
            print(f"validate: --against is for a delta; {path} is a snapshot", file=sys.stderr)
            return 2
        try:
            rows, errors = validate_delta_against(path, args.against, keyer)
        except LoadRejected as exc:
            print(f"validate: the snapshot given to --against is refused: {exc}", file=sys.stderr)
            return 2
    for error in errors:
        print(f"{path}:{error}" if error.line else f"{path}: {error}")
    verdict = "OK" if not errors else f"{len(errors)} bad row(s): the file would be refused whole"
    against = f" against {args.against}" if args.against is not None else ""
    print(f"{path}: {kind.value}, {rows} rows{against}, {verdict}")
    return 1 if errors else 0


#: the days gen-data can make a list as of: it draws people aged 18 to 82 born 1900-2099
AS_OF_FIRST, AS_OF_LAST = _dt.date(1983, 1, 1), _dt.date(2099, 12, 31)


def cmd_gen_data(args: argparse.Namespace) -> int:
    from shixin_check.domain.model import CHINA_TZ
    from shixin_check.loader.synthetic import write_snapshot

    # --out (required), --count, --seed and --as-of were read and checked by settings.resolve
    as_of: _dt.date = args.as_of or _dt.datetime.now(CHINA_TZ).date()
    if not AS_OF_FIRST <= as_of <= AS_OF_LAST:  # its people are born 1900-2099
        raise ConfigurationError(f"--as-of: {as_of} is not from {AS_OF_FIRST} to {AS_OF_LAST}")
    out = Path(args.out)
    replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # as feedback's --out: made when missing
    count, seed = int(args.count), int(args.seed)
    started = time.perf_counter()

    def progress(n: int) -> None:
        print(f"  {n:,} / {count:,} entries", file=sys.stderr, flush=True)

    try:
        write_snapshot(out, count, seed, as_of, progress)
    except OSError as exc:  # its words name a temporary file, or no file
        from shixin_check.domain.system import cannot_write

        raise cannot_write("--out", out, exc) from exc
    took = time.perf_counter() - started
    print(f"wrote {count:,} entries to {args.out} in {took:.1f}s (seed {seed}, as of {as_of})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from shixin_check.cli_logs import raise_open_files_limit
    from shixin_check.server.app import run_service

    raise_open_files_limit()  # each client connection holds a file: a soft 1024 is few
    return run_service(serve_settings(args))


def _not_utf8(argv: list[str]) -> str:
    """Which argument or SHIXIN_* variable holds bytes that are not UTF-8 (Python keeps
    them as lone surrogates, which fail wherever they are encoded), or ""."""
    named = [(f"argument {i} ({os.fsencode(arg)!r})", arg) for i, arg in enumerate(argv, 1)]
    named += [(name, value) for name, value in os.environ.items() if name.startswith("SHIXIN_")]
    for name, text in named:
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                return name
    return ""


def _password_in_argv(args: argparse.Namespace) -> bool:
    """A ``--redis`` URL with a password, given on the command line."""
    resolved = getattr(args, "resolved", None)
    url = getattr(args, "redis", None)
    if resolved is None or not isinstance(url, str):
        return False
    if resolved.origins.get("redis", "") != "the command line":
        return False
    from shixin_check.loader.index_redis import url_has_password

    return url_has_password(url)


def _api_key_in_argv(args: argparse.Namespace) -> bool:
    """An ``--api-key`` given on the command line, one the command will send (one it
    refuses is said in that refusal's one line)."""
    resolved = getattr(args, "resolved", None)
    key = getattr(args, "api_key", None)
    if resolved is None or not key or resolved.origins.get("api_key") != "the command line":
        return False
    from shixin_check.clients.channel import API_KEY, API_KEY_MAX

    return isinstance(key, str) and len(key) <= API_KEY_MAX and bool(API_KEY.fullmatch(key))


def main(argv: list[str] | None = None) -> int:
    undecodable = _not_utf8(sys.argv[1:] if argv is None else argv)
    if undecodable:
        print(f"shixin-check: {undecodable} is not UTF-8 text", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "load": cmd_load,
        "validate": cmd_validate,
        "check": cmd_check,
        "gen-data": cmd_gen_data,
        "status": cmd_status,
        **keys_handlers,
        **log_handlers,
        **health_handlers,
    }
    command = f"shixin-check {args.command}"
    try:
        args = resolve_args(args)  # every option: flag > SHIXIN_* > --config file > default
        if _password_in_argv(args):
            print(f"{command}: warning: the password in --redis is shown to every user of this "
                  "machine in the process list (ps, /proc/PID/cmdline): give it in "
                  "SHIXIN_REDIS_PASSWORD, or the URL in SHIXIN_REDIS", file=sys.stderr)  # fmt: skip
        if _api_key_in_argv(args):
            print(f"{command}: warning: the key in --api-key is shown to every user of this "
                  "machine in the process list (ps, /proc/PID/cmdline): give it in "
                  "SHIXIN_API_KEY", file=sys.stderr)  # fmt: skip
        return handlers[args.command](args)
    except ConfigurationError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. ``| head``: whoever read our output has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{command}: output closed before it was all written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        redis = sys.modules.get("redis")  # only loaded by the commands that use it
        if redis is not None and isinstance(exc, redis.RedisError):
            from shixin_check.loader.index_redis import is_denial, masked_url, redis_words

            url = masked_url(getattr(args, "redis", "") or "Redis")  # never its password
            if is_denial(exc) and not isinstance(exc, redis.AuthenticationError):
                words = redis_words(exc)  # an ACL: no blip, and not Redis gone
                if words.startswith("EXEC without MULTI"):
                    words += ": MULTI refused"
                print(f"{command}: Redis at {url} refuses this user a command it needs "
                      f"({words}): give its Redis user the rights the README lists (Redis "
                      "users and rights)", file=sys.stderr)  # fmt: skip
                return 2
            print(f"{command}: cannot use Redis at {url}: {exc}", file=sys.stderr)
            return 2
        from shixin_check.domain.system import limit_advice

        advice = limit_advice(exc)
        if isinstance(exc, OSError) or advice:
            print(f"{command}: {str(exc) or type(exc).__name__}{f': {advice}' if advice else ''}",
                  file=sys.stderr)  # fmt: skip
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
