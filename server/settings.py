"""All configuration, in one place: one table of options, read from four sources.

Every option that a variable and the config file may give is a row of ``OPTIONS``
(name, how its value is read, default, help, the subcommands that take it); the
other flags (``--json``, ``feedback --format``, ``--allow-rollback``) are read from
the command line alone, and their variables are refused by name. From that table come
the command-line flags (``add_options``), the reference table in the README
(``python -m shixin_check.server.settings --markdown``) and, at start-up, a pydantic-settings
model (``resolve``) that merges the sources, highest first:

1. the flag given on the command line (``--hit-log PATH``);
2. the environment variable ``SHIXIN_<OPTION>`` (``SHIXIN_HIT_LOG``);
3. the key ``<option>`` of the TOML file named by ``--config`` or
   ``SHIXIN_CONFIG`` (``hit_log = "..."``, at top level);
4. the default.

Every value from every source is read by the same rule (``Kind``), strictly:
a wrong value, or a key of the file that no subcommand takes, stops the start
with one line naming the flag, the variable and the key, where the value came
from and what is accepted. A key that another subcommand takes is ignored, so
one file serves ``serve``, ``load``, ``status`` and the rest. The result is a
frozen ``ServeSettings`` (or, for the other subcommands, the resolved values on
their ``argparse.Namespace``); nothing reads the environment later.

pydantic is imported only by ``merged``, when a variable or a file is there to
merge: ``--help``, ``validate`` and a ``check`` given flags alone never load it
(~0.1 s), and the table itself is plain data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from shixin_check.domain.certificates import (
    CERTIFICATE_WARN_DAYS,
    certificate_dates,
    check_certificate_dates,
    expires_in,
    utc_text,
)
from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.system import make_it_ours, others_may_write

if TYPE_CHECKING:
    from shixin_check.domain.model import Channel
    from shixin_check.domain.rules import Policy

ENV_PREFIX = "SHIXIN_"
#: The variable naming the config file (``--config`` on the command line).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: The key secret itself (not a path): read from the environment only, never a file.
SECRET_ENV = ENV_PREFIX + "KEY_SECRET"
#: The ``SHIXIN_*`` names read on purpose besides the options' own (``Option.env``, of
#: every subcommand). Any other name with the prefix is a typo and stops the start
#: (``_check_variables``), as an unknown key of the config file does.
OTHER_ENV = frozenset({
    CONFIG_ENV,  # the config file, --config
    SECRET_ENV,  # the key secret itself (secret_from)
    "SHIXIN_REDIS_PASSWORD",  # the Redis password (loader/index_redis.py)
    "SHIXIN_REQUIRE_REDIS",  # tests/conftest.py, .ci/run: a skipped Redis test fails
    # never read: --allow-rollback is a flag only; load refuses a rollback naming the
    # flag, and a test sets this name to show that it does (tests/test_cli.py)
    "SHIXIN_ALLOW_ROLLBACK",
})  # fmt: skip
#: Where the key secret came from when none was given: keys live only in this process.
EPHEMERAL_SECRET = "generated for this process (keys live only in memory)"
MAX_BATCH = 1000
DEFAULT_LISTEN = "127.0.0.1:50051"
#: Where ``serve --demo`` serves metrics unless told otherwise.
DEMO_METRICS_LISTEN = "127.0.0.1:9464"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


# --- how values are read: the same rule for a flag, a variable and a config key ------------


@dataclass(frozen=True)
class Kind:
    """How one option's value is read, from text (flag, variable) or a TOML value.

    ``parse`` raises ``ValueError`` with a short reason that follows "is" ("not an
    integer"); ``accepted`` says what would do, for the message and the README.
    """

    metavar: str
    accepted: str
    parse: Callable[[object], object]

    def read(self, raw: object) -> object:
        """The value, or None for an unset default (no source can give None)."""
        return None if raw is None else self.parse(raw)


def _text_of(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("not a string")
    return raw


def _optional_text(raw: object) -> str | None:
    """Text where empty means "not given" (``SHIXIN_REDIS=``)."""
    return _text_of(raw).strip() or None


_TRUE = ("1", "true", "yes", "on")
#: No empty text here: an empty variable is not given (``_check_variables``), as every
#: other empty variable is, so ``SHIXIN_INSECURE=`` leaves the file's ``insecure`` on;
#: ``insecure = ""`` in the file is refused rather than read as off.
_FALSE = ("0", "false", "no", "off")


def _switch(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _text_of(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("not a switch value")


def integer(low: int, high: int) -> Kind:
    def parse(raw: object) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]+", raw.strip()):
            value = int(raw.strip())
        else:
            raise ValueError("not an integer")
        if not low <= value <= high:
            raise ValueError(f"not in {low}..{high}")
        return value

    return Kind("N", f"an integer in {low}..{high}", parse)


def seconds(low: float, high: float, *, above: bool = False) -> Kind:
    """Seconds, a whole or decimal number; ``above``: ``low`` itself is refused."""
    span = f"above {low:g} and at most {high:g}" if above else f"{low:g}..{high:g}"

    def parse(raw: object) -> float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", raw.strip()):
            value = float(raw.strip())
        else:
            raise ValueError("not a number of seconds")
        if not (low < value if above else low <= value) or not value <= high:
            raise ValueError(f"not {span}")
        return value

    return Kind("SECONDS", f"a number of seconds, {span}", parse)


def choice(*values: str) -> Kind:
    """One of ``values``, in any case (read as they are spelt here)."""

    def parse(raw: object) -> str:
        text = _text_of(raw).strip()
        for value in values:
            if text.lower() == value.lower():
                return value
        raise ValueError("not one of the choices")

    return Kind("MODE", ", ".join(values), parse)


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host.strip("[]") and port.isascii() and port.isdigit()) and (
        int(port) <= 65535
    )


def _listen(raw: object) -> str:
    text = _text_of(raw).strip()
    if not _host_port(text):
        raise ValueError("not HOST:PORT")
    return text


def _target(raw: object) -> str:
    """A server to ask: HOST:PORT with a port in 1..65535, or a Unix socket
    (``unix:PATH``). gRPC takes any digits and wraps them (port 111187 dials 45651),
    and a port left out means 443: both reach a server nobody meant. Empty stays
    empty, for the client's own "is empty" line."""
    text = _text_of(raw).strip()
    if not text or text.lower().startswith(("unix:", "unix-abstract:")):
        return text  # a Unix socket (a local proxy's): no port to check
    host, sep, port = text.rpartition(":")
    if not sep or not port:
        raise ValueError("not HOST:PORT (no port)")
    if not host.strip("[]"):
        raise ValueError("not HOST:PORT (no host)")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"not HOST:PORT (port {port!r} is not a number)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT (port {int(port)} is not in 1..65535)")
    return text


def _metrics_listen(raw: object) -> str | None:
    """HOST:PORT, ``off`` (kept, to tell it from "not given"), or None when empty."""
    text = _text_of(raw).strip()
    if not text:
        return None
    if text.lower() == "off":
        return "off"
    if not _host_port(text):
        raise ValueError("not HOST:PORT")
    return text


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_FORMS = "36h, 90m, 3600s, 2d"


def _duration(raw: object) -> float | None:
    """``36h``, ``90m``, ``3600s``, ``2d`` in seconds; None for "" or ``off``."""
    text = _text_of(raw).strip()
    if not text or text.lower() == "off":
        return None
    number, unit = text[:-1], text[-1:]
    if unit in _DURATION_UNITS and number.isascii() and number.isdigit() and int(number) > 0:
        return float(int(number) * _DURATION_UNITS[unit])
    raise ValueError("not a duration")


def _index_dir(raw: object) -> str:
    text = _text_of(raw).strip()
    return text.lower() if text.lower() in ("", "auto", "off") else text


_DECISIONS = ("REVIEW", "DENY", "ALLOW")


def _unavailable_channel(raw: object) -> str:
    """``CH=DECISION,...`` checked and normalised (upper case, no spaces)."""
    from shixin_check.domain.model import Channel

    items = []
    for item in filter(None, (x.strip() for x in _text_of(raw).split(","))):
        name, _, decision = item.partition("=")
        name, decision = name.strip().upper(), decision.strip().upper()
        if name not in Channel.__members__ or decision not in _DECISIONS:
            raise ValueError(f"not CHANNEL=DECISION at {item!r}")
        items.append(f"{name}={decision}")
    return ",".join(items)


def _date(raw: object) -> _dt.date | None:
    if isinstance(raw, _dt.date) and not isinstance(raw, _dt.datetime):
        return raw  # a TOML date: as_of = 2026-11-28
    text = _text_of(raw).strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise ValueError("not YYYY-MM-DD")
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError("not a day of the calendar") from None


TEXT = Kind("TEXT", "text", _text_of)
OPTIONAL_TEXT = Kind("TEXT", "text (empty: not given)", _optional_text)
PATH = Kind("PATH", "a path", _optional_text)
SWITCH = Kind(
    "",
    "1, true, yes or on (on); 0, false, no or off (off); true or false in the file; "
    "an empty variable is not given",
    _switch,
)
LISTEN = Kind("HOST:PORT", "HOST:PORT, e.g. 0.0.0.0:50051 (port 0: any free port)", _listen)
TARGET = Kind("HOST:PORT", "HOST:PORT, the port in 1..65535, or unix:PATH", _target)
METRICS_LISTEN = Kind("HOST:PORT", "HOST:PORT (e.g. 0.0.0.0:9464) or off", _metrics_listen)
DURATION = Kind(
    "DURATION",
    f"a whole number above 0 and a unit: s, m, h or d ({_DURATION_FORMS}), or off",
    _duration,
)
INDEX_DIR = Kind("PATH", "auto, off or a directory", _index_dir)
UNAVAILABLE_CHANNEL = Kind(
    "CH=DECISION,...",
    "comma-separated CHANNEL=DECISION, a channel name and REVIEW, DENY or ALLOW",
    _unavailable_channel,
)
DATE = Kind("YYYY-MM-DD", "a day, YYYY-MM-DD", _date)


# --- the options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: its flag, variable and config key, and who takes it."""

    name: str  # the long flag without ``--``
    kind: Kind
    default: object  # read by ``kind`` like any given value; None: not set
    help: str
    commands: tuple[str, ...]  # the subcommands that take it (``keys``: all of its own)
    metavar: str = ""  # instead of the kind's
    shown: str = ""  # the default in words, where its value does not say it
    accepted: str = ""  # instead of the kind's
    required_by: tuple[str, ...] = ()  # subcommands that cannot run without it
    #: (subcommand, what its --help says in place of "default ..."), where subcommands
    #: differ: serve generates a key secret, load cannot run without one
    shown_for: tuple[tuple[str, str], ...] = ()
    #: its value may be a secret (or one pasted where its path goes): never printed
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def key(self) -> str:
        """The config key, which is also the ``argparse`` dest and the model field."""
        return self.name.replace("-", "_")

    @property
    def names(self) -> str:
        return f"{self.flag} / {self.env} / config {self.key}"

    @property
    def flags(self) -> tuple[str, ...]:
        """Its flags: a switch can be turned off too (``--no-insecure``), so a flag beats
        its variable and the file either way."""
        return (self.flag, f"--no-{self.name}") if self.kind is SWITCH else (self.flag,)

    @property
    def takes(self) -> str:
        return self.accepted or self.kind.accepted

    @property
    def default_text(self) -> str:
        if self.shown:
            return self.shown
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)

    def default_for(self, command: str) -> str:
        """What ``command``'s --help says of the default ("" for nothing)."""
        for name, said in self.shown_for:
            if name == command:
                return said
        shown = self.default_text if self.kind is not SWITCH else ""
        return f"default {shown}" if shown else ""


_CLIENT = ("check", "status", "health")
_REDIS_USERS = ("serve", "load", "status", "feedback")

# fmt: off
OPTIONS: tuple[Option, ...] = (
    # serve: the list and the listener
    Option("list", PATH, None, "a snapshot file, or a directory to follow", ("serve",)),
    Option("demo", SWITCH, False, "generate and serve a demo list", ("serve",)),
    Option("demo-count", integer(10, 10_000_000), 2000, "entries in the demo list", ("serve",)),
    Option("listen", LISTEN, DEFAULT_LISTEN, "address to bind", ("serve",)),
    Option("workers", integer(1, 64), 1,
           "worker processes sharing the port (SO_REUSEPORT) and one mapped index", ("serve",)),
    Option("hit-log", PATH, None,
           "serve: append a JSON line per listed-subject check; feedback: the hit log to read "
           "(its rotated files too)", ("serve", "feedback")),
    Option("audit-log", PATH, None, "append a JSON line per call", ("serve",)),
    Option("settle", seconds(0, 3600), 1,
           "--list DIR: a new or changed file is read once unchanged this long (a copy "
           "that stalls is not read half-written); 0 reads it at the next poll",
           ("serve",)),
    Option("grace", seconds(0, 3600), 5,
           "on SIGTERM/SIGINT: health goes NOT_SERVING, in-flight calls get this long",
           ("serve",)),
    Option("drain", seconds(0, 300), 0,
           "on SIGTERM/SIGINT: health goes NOT_SERVING and new calls are still answered this "
           "long (for load balancers to move away) before --grace begins; a second signal "
           "cuts it short", ("serve",)),
    Option("key-secret-file", PATH, None,
           "file holding the subject-key secret (16 to 64 bytes); or the secret itself in "
           "SHIXIN_KEY_SECRET, which a file named only in the config file gives way to",
           ("serve", "load"), shown="serve: generated (keys live in memory only); load: none, "
           "it needs this file or SHIXIN_KEY_SECRET",
           shown_for=(("serve", "default generated (keys live in memory only)"),
                      ("load", "no default: this file or SHIXIN_KEY_SECRET is required")),
           secret=True),
    # the policy's thresholds (defaults: shixin_check.domain.rules.Policy; a test keeps them equal)
    Option("hotel-min-star", integer(1, 5), 1,
           "lowest restricted hotel star rating (星级以上; Huzhou, seed 002, uses 4)",
           ("serve",)),
    Option("resort-quota-fen", integer(0, 10**12), 200_000,
           "quota per transaction on spending in a rated resort or on a domestic tour, in fen (¥2,000; the seeds set no figure; 0 restricts every one, as Huzhou, seed 002, does)",
           ("serve",), metavar="FEN"),
    Option("insurance-premium-threshold-fen", integer(0, 10**12), 1_000_000,
           "premium from which cash-value insurance is restricted, in fen (¥10,000; the seeds "
           "set no figure)", ("serve",), metavar="FEN"),
    # Redis
    Option("redis", OPTIONAL_TEXT, None,
           "Redis holding the list: serve follows it, load publishes to it, status reports on it, "
           "feedback also reads every replica's hits from it; the password from "
           "SHIXIN_REDIS_PASSWORD", _REDIS_USERS, metavar="URL",
           accepted="redis://HOST:PORT/DB, or through Sentinel "
                    "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]",
           required_by=("load",)),
    Option("redis-prefix", TEXT, "shixin", "prefix of every key this service writes in Redis",
           _REDIS_USERS, metavar="PREFIX"),
    Option("writers", integer(0, 64), 0,
           "processes writing a snapshot to Redis, each a range of buckets; 0: one per core "
           "from 500,000 subject keys, else one", ("load",), metavar="N"),
    Option("unavailable", choice(*_DECISIONS), "REVIEW",
           "answer when a Bloom positive cannot be confirmed (Redis down): REVIEW, DENY (fail "
           "closed) or ALLOW (fail open); always with reason INDEX_UNAVAILABLE", ("serve",),
           metavar="DECISION"),
    Option("unavailable-channel", UNAVAILABLE_CHANNEL, "",
           "per-channel overrides of --unavailable, e.g. AIRLINE=DENY,HOTEL=ALLOW", ("serve",)),
    # who may ask
    Option("keys-file", PATH, None,
           "API keys (hashes only), principals, channels, roles, rates: serve turns "
           "authentication on with it; keys edits it (add creates it)", ("serve", "keys"),
           required_by=("keys",)),
    Option("tls-cert", PATH, None, "server certificate (PEM): serve TLS, with --tls-key",
           ("serve",)),
    Option("tls-key", PATH, None, "server private key (PEM)", ("serve",)),
    Option("tls-client-ca", PATH, None,
           "CA for client certificates: requires mutual TLS; principals by common name",
           ("serve",)),
    Option("insecure", SWITCH, False,
           "allow binding a non-loopback address without authentication, or with API keys over "
           "plaintext (e.g. behind a TLS-terminating proxy)", ("serve",)),
    Option("enumeration-threshold", integer(0, 10**9), 0,
           "flag a principal checking more than N distinct identities per window (0: off)",
           ("serve",)),
    Option("enumeration-window", integer(1, 86400), 60,
           "the window of --enumeration-threshold, in seconds", ("serve",), metavar="SECONDS"),
    Option("enumeration-throttle", SWITCH, False,
           "refuse a flagged principal's checks (RESOURCE_EXHAUSTED) until the window ends",
           ("serve",)),
    # the hit and audit logs
    Option("log-fsync", choice("never", "interval", "always"), "never",
           "hit and audit logs: never (the kernel writes back), interval, always (fdatasync "
           "before answering)", ("serve",)),
    Option("log-fsync-interval", integer(0, 3600), 1,
           "with --log-fsync interval: longest time between syncs, in seconds", ("serve",),
           metavar="SECONDS"),
    Option("log-max-mib", integer(1, 1 << 20), 256,
           "rotate hit and audit logs at this size (and at China-time midnight)", ("serve",),
           metavar="MIB"),
    # operations
    Option("metrics-listen", METRICS_LISTEN, None,
           "serve Prometheus metrics at http://HOST:PORT/metrics", ("serve",),
           shown=f"off (--demo: {DEMO_METRICS_LISTEN})"),
    Option("max-list-age", DURATION, "off",
           "a list whose feed time is older than this makes readiness health NOT_SERVING and "
           "marks every answer stale", ("serve",)),
    Option("index-dir", INDEX_DIR, "auto",
           "where loaded snapshots are compiled for mapping (a restart maps, not re-parses): "
           "auto is .shixin-index beside the list (none for --demo or --redis alone); off for "
           "none", ("serve",)),
    # the shell clients: check, status, health
    Option("target", TARGET, DEFAULT_LISTEN, "server to ask", _CLIENT),
    Option("api-key", TEXT, "", "sent as authorization: Bearer KEY", _CLIENT, metavar="KEY",
           secret=True),
    Option("ca", PATH, None, "CA of the server's certificate: use TLS", _CLIENT),
    Option("client-cert", PATH, None, "client certificate for mutual TLS", _CLIENT),
    Option("client-key", PATH, None, "client key for mutual TLS", _CLIENT),
    Option("batch-size", integer(1, MAX_BATCH), MAX_BATCH,
           "check --batch: checks per call (at most the burst of your key)", ("check",),
           metavar="N"),
    Option("channel", OPTIONAL_TEXT, None,
           "channel of the check: RAIL AIRLINE HOTEL SCHOOL SHIP TRAVEL LEISURE INSURANCE "
           "REAL_ESTATE VEHICLE OFFICE_RENTAL", ("check",), metavar="CHANNEL",
           accepted="a channel name"),
    Option("service", TEXT, "",
           "health service name: '' (the server), shixin.v1.ConsumptionCheck, "
           "shixin.v1.ListCurrent, liveness", ("health",), metavar="NAME"),
    Option("timeout", seconds(0, 3600, above=True), 5, "give up after this long", ("health",)),
    # gen-data
    Option("count", integer(0, 100_000_000), 1000, "entries of the synthetic list",
           ("gen-data",)),
    Option("out", PATH, None, "where to write the synthetic list", ("gen-data",),
           required_by=("gen-data",)),
    Option("seed", integer(0, 2**63 - 1), 1, "random seed", ("gen-data",), metavar="S"),
    Option("as-of", DATE, None, "the day the synthetic list describes", ("gen-data",),
           shown="today (China time)"),
)
# fmt: on

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
_KNOWN_ENV = frozenset(o.env for o in OPTIONS) | OTHER_ENV
#: Every subcommand that takes options, in the order the README lists them.
COMMANDS: tuple[str, ...] = tuple(dict.fromkeys(c for o in OPTIONS for c in o.commands))
#: What the unknown-variable line says the variables are.
VARIABLES_ARE = (
    f"those marked [env {ENV_PREFIX}...] in each subcommand's --help, {CONFIG_ENV}, "
    f"{SECRET_ENV} and {ENV_PREFIX}REDIS_PASSWORD"
)
#: The footer of ``shixin-check --help``: which options a variable and the file give.
HELP_EPILOG = (
    f"An option marked [env {ENV_PREFIX}<OPTION>] in a subcommand's --help is also read from "
    "that variable and from the key <option> (_ for -) of the TOML file named by --config or "
    f"{CONFIG_ENV}: a flag beats its variable, a variable the file, the file the default. "
    "The other flags are read from the command line only."
)
_CONFIG_HELP = (
    "a TOML file of options: each key is an option's long name with _ for - (hit_log = "
    '"..."), at top level; a flag beats its variable, a variable the file'
)


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if command in o.commands)


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command``, and ``--config``. A flag not given stays None: whether
    it was given is what ``resolve`` needs; its variable, the file and the default
    are read there."""
    for option in options_for(command):
        said = option.default_for(command)
        default = f" ({said})" if said else ""
        help_text = f"{option.help}{default} [env {option.env}]".replace("%", "%%")
        if option.kind is SWITCH:  # --insecure and --no-insecure; default None: not given
            parser.add_argument(
                option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            metavar = option.metavar or option.kind.metavar
            parser.add_argument(option.flag, metavar=metavar, default=None, help=help_text)
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"{_CONFIG_HELP} [env {CONFIG_ENV}]")  # fmt: skip


# --- resolving: flag > variable > config file > default -------------------------------------


@dataclass(frozen=True)
class Resolved:
    """The options of one subcommand, each read from the highest source that gives it."""

    command: str
    values: Mapping[str, object]
    origins: Mapping[str, str]  # "the command line", "SHIXIN_X", "config file P", "default"
    env: Mapping[str, str] = field(repr=False)
    config: Path | None = None

    def text(self, key: str) -> str | None:
        value = self.values[key]
        assert value is None or isinstance(value, str), key
        return value

    def integer(self, key: str) -> int:
        value = self.values[key]
        assert isinstance(value, int) and not isinstance(value, bool), key
        return value

    def number(self, key: str) -> float:
        value = self.values[key]
        assert isinstance(value, float), key
        return value

    def seconds_or_none(self, key: str) -> float | None:
        value = self.values[key]
        assert value is None or isinstance(value, float), key
        return value

    def switch(self, key: str) -> bool:
        value = self.values[key]
        assert isinstance(value, bool), key
        return value


def resolve(
    command: str,
    given: Mapping[str, object],
    env: Mapping[str, str],
    config: str | None = None,
) -> Resolved:
    """Every option ``command`` takes: the value ``given`` on the command line (by
    config key), else ``SHIXIN_<KEY>`` in ``env``, else its key in the config file
    (``config``, else ``env[SHIXIN_CONFIG]``), else its default; each read by its
    ``Kind``. ``ConfigurationError`` (one line) for the first wrong value.

    With no config file and none of the command's variables set there is nothing
    to merge: the flags given and the defaults are read by the same ``Kind``s
    without the model, whose import (~0.1 s of pydantic) would put ``check`` over
    its 0.3 s start budget. ``merged`` gives the model's answer in every case (a
    test holds the two equal).

    A ``SHIXIN_*`` variable that is empty or blank is not given (compose's ``${VAR}``
    with ``VAR`` unset): the file and then the default decide. One that no subcommand
    reads is refused, like an unknown key of the file."""
    env = _check_variables(env)
    options = options_for(command)
    path = _config_path(config, env)
    if path is None and not any(o.env in env for o in options):
        values = _flags_and_defaults(options, given)
    else:
        values = merged(command, given, env, path)
    file_keys = _file_keys(path)
    origins = {o.key: _origin(o, given, env, path, file_keys) for o in options}
    for option in options:
        if command in option.required_by and values[option.key] is None:
            raise ConfigurationError(f"{option.names} is required ({option.takes})")
    return Resolved(command, values, origins, env, path)


#: What Kubernetes puts in every pod of a namespace for each Service there (service links):
#: for a Service named ``shixin-check``, ``SHIXIN_CHECK_SERVICE_HOST``,
#: ``SHIXIN_CHECK_SERVICE_PORT_GRPC``, ``SHIXIN_CHECK_PORT_50051_TCP_ADDR``, ... Not ours,
#: not typos: passed over (deploy/k8s turns them off too, ``enableServiceLinks: false``).
SERVICE_LINK = re.compile(
    r"SHIXIN(?:_\w+?)?_(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_\w+)?)"
)
#: ``<SERVICE>_PORT`` alone holds ``tcp://10.96.0.12:50051``: a name that could be a typo
#: (a metrics port meant as ``..._METRICS_LISTEN``) is a service link only with such a value.
_SERVICE_LINK_PORT = re.compile(r"SHIXIN(?:_\w+)?_PORT")
_SERVICE_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://\S+:\d+")


def _service_link(name: str, value: str) -> bool:
    if SERVICE_LINK.fullmatch(name) is not None:
        return True
    return (
        _SERVICE_LINK_PORT.fullmatch(name) is not None
        and _SERVICE_LINK_URL.fullmatch(value) is not None
    )


def _check_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The ``SHIXIN_*`` variables of ``env`` that hold something; ``ConfigurationError``
    for a name that is neither an option's variable nor in ``OTHER_ENV`` (nor one that
    Kubernetes makes for a Service: ``SERVICE_LINK``)."""
    ours = {
        name: value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX) and (name in _KNOWN_ENV or not _service_link(name, value))
    }
    unknown = sorted(name for name in ours if name not in _KNOWN_ENV)
    if unknown:
        raise ConfigurationError(_one_line([_unknown_variable(name) for name in unknown]))
    return {name: value for name, value in ours.items() if value.strip()}


def merged(
    command: str, given: Mapping[str, object], env: Mapping[str, str], path: Path | None
) -> dict[str, object]:
    """The values of ``command``'s options from the pydantic-settings model of its
    sources (flags given > ``env`` > the TOML file at ``path`` > defaults)."""
    options = options_for(command)
    model = _settings_model(command, options, env, path)
    from pydantic import ValidationError

    try:
        settings = model(**given)
    except ValidationError as exc:
        raise ConfigurationError(_first_problem(exc, given, env, path)) from None
    except (OSError, ValueError) as exc:  # the file: unreadable, not TOML (TOMLDecodeError)
        raise ConfigurationError(f"--config / {CONFIG_ENV}: {path}: {exc}") from None
    _check_shadowed(options, given, env, path)
    return {o.key: getattr(settings, o.key) for o in options}


def _check_shadowed(
    options: Sequence[Option], given: Mapping[str, object], env: Mapping[str, str],
    path: Path | None,
) -> None:  # fmt: skip
    """Values a higher source overrides are checked too (pydantic-settings never reads
    them): a wrong ``SHIXIN_WORKERS`` under ``--workers 1``, or ``list = 5`` in the file
    under ``--list``, would break the first start without the flag."""
    file_keys = _file_keys(path)
    problems = []
    for option in options:
        shadowed: list[tuple[object, str]] = []
        if option.key in given and option.env in env:
            shadowed.append((env[option.env], option.env))
        if option.key in file_keys and (option.key in given or option.env in env):
            shadowed.append((file_keys[option.key], f"config file {path}"))
        for raw, origin in shadowed:
            try:
                option.kind.read(raw)
            except ValueError as exc:
                problems.append(_wrong_value(option, raw, origin, str(exc)))
    if problems:
        raise ConfigurationError(_one_line(problems))


def _flags_and_defaults(
    options: Sequence[Option], given: Mapping[str, object]
) -> dict[str, object]:
    """What ``merged`` answers when the flags and the defaults are the only sources."""
    values: dict[str, object] = {}
    problems = []
    for option in options:
        raw = given.get(option.key, option.default)
        try:
            values[option.key] = option.kind.read(raw)
        except ValueError as exc:
            origin = "the command line" if option.key in given else "default"
            problems.append(_wrong_value(option, raw, origin, str(exc)))
    if problems:
        raise ConfigurationError(_one_line(problems))
    return values


def resolve_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """``args`` as parsed, with every option of its command resolved (``resolve``) and
    ``args.resolved`` holding where each came from. Done once; a command that takes
    no options (``validate``, ``audit``) is left as it is, once its environment has
    passed the same checks (``_check_alone``)."""
    if isinstance(getattr(args, "resolved", None), Resolved):
        return args
    options = options_for(args.command)
    if not options:
        _check_alone(os.environ if env is None else env)
        return args
    given = {o.key: getattr(args, o.key) for o in options if getattr(args, o.key, None) is not None}
    resolved = resolve(args.command, given, os.environ if env is None else env, args.config)
    done = argparse.Namespace(**{**vars(args), **resolved.values})
    done.resolved = resolved
    return done


def _check_alone(env: Mapping[str, str]) -> None:
    """For a command that takes no options: a misspelt ``SHIXIN_*`` name, and a
    ``SHIXIN_CONFIG`` that is no file, not TOML or has a key no subcommand takes, are
    refused as every other command refuses them. A deployment's environment is shared
    by every command run in it: one that passed ``validate`` must not then stop
    ``serve``."""
    path = _config_path(None, _check_variables(env))
    try:
        keys = _file_keys(path)
    except (OSError, ValueError) as exc:  # unreadable, not TOML (TOMLDecodeError)
        raise ConfigurationError(f"--config / {CONFIG_ENV}: {path}: {exc}") from None
    unknown = [_unknown_key(key, value, path) for key, value in keys.items()
               if key not in BY_KEY]  # fmt: skip
    if unknown:
        raise ConfigurationError(_one_line(unknown))


def effective_settings_line(resolved: Resolved) -> str:
    """One line naming every option whose value is not its default, each with where it
    came from (its flag, its variable, or the config file), for ``serve`` to log at
    start: what a server runs with, without reading its unit file, environment and
    config file. A value that may be a secret is not shown (only that it was given);
    a Redis URL's password is masked as every message masks it."""
    parts = []
    for option in options_for(resolved.command):
        value, origin = resolved.values[option.key], resolved.origins[option.key]
        if origin == "default" or value == option.kind.read(option.default):
            continue
        if option.secret:
            shown = "(given, not shown)"
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif isinstance(value, float):  # every float option is seconds
            shown = f"{value:g}s"
        elif option.key == "redis" and isinstance(value, str):
            from shixin_check.loader.index_redis import masked_url  # serve imports it anyway

            shown = masked_url(value)
        else:
            shown = str(value)
        if origin == "the command line":
            origin = option.flag if value is not False else f"--no-{option.name}"
        elif origin.startswith("config file"):
            origin = "config file"  # named once, at the end
        parts.append(f"{option.key}={shown} ({origin})")
    config = f"; config file {resolved.config}" if resolved.config is not None else ""
    return f"settings: {', '.join(parts) or 'all defaults'}{config}"


def resolving(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` run with its options resolved, however it is called: ``main``
    resolves first (then this does nothing), a caller of the handler alone gets the
    same values."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        return handler(resolve_args(args))

    return run


def _config_path(config: str | None, env: Mapping[str, str]) -> Path | None:
    raw = config if config is not None else env.get(CONFIG_ENV, "")
    if not raw.strip():
        return None
    path = Path(raw.strip())
    if not path.is_file():
        raise ConfigurationError(f"--config / {CONFIG_ENV}: {path} is not a file")
    return path


def _settings_model(
    command: str, options: Sequence[Option], env: Mapping[str, str], path: Path | None
) -> Any:
    """A pydantic-settings model of ``options``: init kwargs (the flags given) > our
    environment > the TOML file > the defaults, every value through its ``Kind``."""
    from typing import Annotated

    from pydantic import Field, PlainValidator, create_model
    from pydantic_settings import (
        BaseSettings,
        EnvSettingsSource,
        PydanticBaseSettingsSource,
        SettingsConfigDict,
        TomlConfigSettingsSource,
    )

    foreign = {o.key for o in OPTIONS} - {o.key for o in options}

    class Environment(EnvSettingsSource):
        """``env`` instead of ``os.environ``, exact upper-case names only: the source is
        case-sensitive (so is the file), and looks up ``SHIXIN_`` + the field name."""

        def _load_env_vars(self) -> Mapping[str, str | None]:
            return {
                ENV_PREFIX + name.removeprefix(ENV_PREFIX).lower(): value
                for name, value in env.items()
                if name.startswith(ENV_PREFIX) and name.isupper()
            }

    class ConfigFile(TomlConfigSettingsSource):
        """The file's keys for this command's options; keys of another subcommand's
        options are dropped, so only keys no subcommand takes are left as extras."""

        def __call__(self) -> dict[str, Any]:
            return {k: v for k, v in super().__call__().items() if k not in foreign}

    class Base(BaseSettings):
        model_config = SettingsConfigDict(
            extra="forbid", case_sensitive=True, env_prefix=ENV_PREFIX, validate_default=True
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, Environment(settings_cls)]
            if path is not None:
                sources.append(ConfigFile(settings_cls, toml_file=path))
            return tuple(sources)

    fields: dict[str, Any] = {
        o.key: (Annotated[Any, PlainValidator(o.kind.read)], Field(default=o.default))
        for o in options
    }
    return create_model(f"Settings_{command.replace('-', '_')}", __base__=Base, **fields)


def _file_keys(path: Path | None) -> dict[str, object]:
    if path is None:
        return {}
    import tomllib

    with path.open("rb") as file:
        return tomllib.load(file)


def _origin(
    option: Option,
    given: Mapping[str, object],
    env: Mapping[str, str],
    path: Path | None,
    file_keys: Mapping[str, object],
) -> str:
    if option.key in given:
        return "the command line"
    if option.env in env:
        return option.env
    if option.key in file_keys:
        return f"config file {path}"
    return "default"


def _first_problem(
    exc: Any, given: Mapping[str, object], env: Mapping[str, str], path: Path | None
) -> str:
    """The one line for a refused start: an unknown key of the file first (a typo
    hides the setting meant), else the first wrong value; then how many more."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    file_keys = _file_keys(path)
    lines = []
    for error in errors:
        key = str(error["loc"][0])
        if error["type"] == "extra_forbidden":
            lines.append(_unknown_key(key, error["input"], path))
            continue
        option = BY_KEY[key]
        cause = error.get("ctx", {}).get("error")
        reason = str(cause) if cause is not None else str(error["msg"])
        origin = _origin(option, given, env, path, file_keys)
        lines.append(_wrong_value(option, error["input"], origin, reason))
    return _one_line(lines)


def _wrong_value(option: Option, raw: object, origin: str, reason: str) -> str:
    shown = _shown(option, raw)
    return f"{option.names}: {shown} (from {origin}) is {reason}; accepted: {option.takes}"


def _shown(option: Option, raw: object) -> str:
    """``raw`` as a message may show it: a value that may be a secret (an API key, a key
    secret pasted where its file's path goes) only by its length, as an error line
    ends up in terminals, CI logs and tickets."""
    if not option.secret:
        return repr(raw)
    return f"a value of {len(str(raw))} characters (not shown: it may be a secret)"


def _one_line(problems: Sequence[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def _unknown_variable(name: str) -> str:
    import difflib

    stem = name.removeprefix(ENV_PREFIX).upper().replace("-", "_")
    flag = "--" + stem.lower().replace("_", "-")
    if flag in _command_line_flags():  # --format, --json, --principal: no variable reads them
        return (
            f"{name}: unknown variable: {flag} is not read from a variable: give it on the "
            "command line"
        )
    stems = [known.removeprefix(ENV_PREFIX) for known in sorted(_KNOWN_ENV)]
    near = difflib.get_close_matches(stem, stems, n=1)
    hint = f" (did you mean {ENV_PREFIX}{near[0]}?)" if near else ""
    return f"{name}: unknown variable{hint}; the variables are {VARIABLES_ARE} (README, Running it)"


def _command_line_flags() -> frozenset[str]:
    """The long flags of every subcommand that no row of ``OPTIONS`` is, read from the
    parser itself (so none is forgotten here). Only a refused start gets here, after
    ``shixin_check.cli`` (which imports this module) is loaded."""
    from shixin_check.cli import _parser

    flags: set[str] = set()
    parsers = [_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            flags.update(flag for flag in action.option_strings if flag.startswith("--"))
    return frozenset(flags - {flag for o in OPTIONS for flag in o.flags} - {"--config"})


#: Keys someone may write for a secret that no config file holds: where it is read.
_SECRET_KEYS = {
    "key_secret": f"the key secret itself is read only from {SECRET_ENV} or from the file "
    "that key_secret_file (--key-secret-file, SHIXIN_KEY_SECRET_FILE) names",
    "redis_password": "the Redis password is read only from SHIXIN_REDIS_PASSWORD or the "
    "--redis URL",
}


def _unknown_key(key: str, value: object, path: Path | None) -> str:
    import difflib

    hint = ""
    if key in _SECRET_KEYS:  # not "did you mean key_secret_file?": that takes a path
        return (
            f"--config / {CONFIG_ENV}: {path}: unknown key {key!r}: {_SECRET_KEYS[key]}, "
            "never from the config file; take it out (its value is not shown)"
        )
    if isinstance(value, dict):
        hint = " (options go at the top level, not in a [table])"
    elif near := difflib.get_close_matches(key.lower().replace("-", "_"), BY_KEY, n=1):
        hint = f" (did you mean {near[0]}?)"
    return (
        f"--config / {CONFIG_ENV}: {path}: unknown key {key!r}{hint}; the keys are the long "
        "option names with _ for - (README, Running it)"
    )


# --- serve -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """What ``shixin-check serve`` runs with."""

    listen: str
    list_path: Path | None
    demo: bool
    secret: bytes = field(repr=False)
    secret_source: str
    policy: Policy
    hit_log: Path | None
    audit_log: Path | None
    grace_seconds: float
    max_batch: int = MAX_BATCH
    drain_seconds: float = 0.0  # on SIGTERM: NOT_SERVING but still answering, before the grace
    demo_count: int = 2000
    poll_interval: float = 0.2
    settle: float | None = None  # --list DIR: seconds a file must stay unchanged (None: 10 polls)
    redis: str | None = None
    redis_prefix: str = "shixin"
    replica_id: str = ""
    keys_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    enumeration_threshold: int = 0
    enumeration_window: float = 60.0
    enumeration_throttle: bool = False
    log_fsync: str = "never"
    log_fsync_interval: float = 1.0
    log_max_bytes: int = 256 * 1024 * 1024
    metrics_listen: str | None = None  # Prometheus /metrics HOST:PORT (None: off)
    max_list_age: float | None = None  # seconds: older lists make readiness NOT_SERVING
    index_dir: Path | None = None  # compiled versions, mapped by every process (None: off)
    workers: int = 1  # processes sharing the port (SO_REUSEPORT) and one mapped index
    effective: str = ""  # effective_settings_line: what differs from the defaults, and why
    secret_note: str = ""  # a warning on the key secret file (readable by every user), or ""
    tls_key_note: str = ""  # a warning on the --tls-key file (readable by every user), or ""

    @property
    def authenticated(self) -> bool:
        return self.keys_file is not None or self.tls_client_ca is not None

    @property
    def compiled_index(self) -> Path | None:
        """Where to compile versions, if a restart can use them: with a generated
        secret every key changes at the next start, so there is nothing to map."""
        return self.index_dir if self.secret_source != EPHEMERAL_SECRET else None

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the listener."""
        return is_loopback(self.listen.rpartition(":")[0])


def is_loopback(host: str) -> bool:
    """True when ``host`` (bracketed or not) is a loopback address, or the name
    ``localhost`` itself: a name that merely starts like one (``localhost.corp``,
    ``127.x.example``) may resolve anywhere."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # another name
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def parse_listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"{BY_KEY['listen'].names}: {raw!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_duration(raw: str, flag: str) -> float | None:
    """``36h``, ``90m``, ``3600s``, ``2d`` in seconds; None for "" or ``off``."""
    option = BY_KEY[flag.lstrip("-").replace("-", "_")]
    try:
        return _duration(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{option.names}: {raw!r} is {exc}; accepted: {DURATION.accepted}"
        ) from None


class Secret(NamedTuple):
    """The key secret, where it came from, and a warning to give at start ("": none)."""

    value: bytes
    source: str
    note: str = ""


def secret_from(args: argparse.Namespace, allow_ephemeral: bool) -> Secret:
    """The secret and where it came from. ``SHIXIN_KEY_SECRET`` holds the secret itself;
    a file from a flag or ``SHIXIN_KEY_SECRET_FILE`` wins over it, it over a file named
    only in the config file."""
    import secrets

    from shixin_check.domain.keys import MAX_SECRET_BYTES, MIN_SECRET_BYTES

    resolved: Resolved = resolve_args(args).resolved
    path = resolved.text("key_secret_file")
    from_file = resolved.origins["key_secret_file"].startswith("config file")
    direct = resolved.env.get(SECRET_ENV, "").strip()  # as the file's: whitespace ignored
    names = BY_KEY["key_secret_file"].names
    note = ""
    if path and not (from_file and direct):
        try:
            with open(path, "rb") as file:
                note = _held_to_its_owner(path, os.fstat(file.fileno()))
                secret = file.read().strip()
        except OSError as exc:
            raise ConfigurationError(_unreadable_secret_file(resolved, path, exc)) from None
        source = f"file {path}"  # a file there: a path, not a secret pasted in its place
    elif direct:
        secret, source = direct.encode(), SECRET_ENV
    elif allow_ephemeral:
        return Secret(secrets.token_bytes(32), EPHEMERAL_SECRET)
    else:
        raise ConfigurationError(f"no key secret: set {SECRET_ENV} or {names}")
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise ConfigurationError(
            f"key secret from {source} is {len(secret)} bytes; {MIN_SECRET_BYTES} to"
            f" {MAX_SECRET_BYTES} needed (openssl rand -hex 32 makes one of 64)"
        )
    return Secret(secret, source, note)


def _held_to_its_owner(path: str, st: os.stat_result) -> str:
    """The key secret file refused, as ssh refuses a private key, when someone else may
    write it or owns it (root aside); a warning ("": none) when every user may read it:
    with it, the masked ID numbers of the index and the logs can be undone by trying
    each birth date (README: The key secret). Only a warning: its group may read it
    (Kubernetes mounts a secret 0440 for the pod's group), and a file 0644 works."""
    return _held_as_a_private_key(
        f"the key secret file {path}", path, st, "with it anyone who can read the compiled "
        "index or a log can undo its masked ID numbers by trying each birth date",
    )  # fmt: skip


def _held_as_a_private_key(what: str, path: str | Path, st: os.stat_result, risk: str) -> str:
    """``ConfigurationError`` when someone other than this server's user may write the
    file ``what`` names, or owns it (root aside); the warning ("": none) when every user
    may read it, saying ``risk``; its group may read it unwarned."""
    unsafe = others_may_write(st)
    if unsafe:
        raise ConfigurationError(f"{what} is {unsafe}: another user could change it; "
                                 f"{make_it_ours(unsafe, path)}")  # fmt: skip
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o004:
        return ""
    return (f"{what} is readable by every user (mode {mode:04o}): {risk}; chmod 600 {path} "
            "(or 640 for the server's group)")  # fmt: skip


def _tls_key_held(flag: str, path: Path) -> str:
    """The server's TLS private key refused, as ssh refuses a private key, when someone
    else may write it or owns it (root aside): they could put their own key and
    certificate in its place. A warning ("": none) when every user may read it: whoever
    reads it can pose as this server to its gateways. Its group may read it unwarned
    (Kubernetes mounts a secret 0440 for the pod's group)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigurationError(f"{flag}: {path}: {exc.strerror or exc}") from None
    return _held_as_a_private_key(f"{flag}: {path}", path, st,
                                  "whoever reads it can pose as this server")  # fmt: skip


def _unreadable_secret_file(resolved: Resolved, path: str, exc: OSError) -> str:
    """The line for a key secret file that cannot be read, without its name: the value
    may be the secret itself, put where its path goes."""
    option = BY_KEY["key_secret_file"]
    origin = resolved.origins["key_secret_file"]
    relative = (
        "" if Path(path).is_absolute()
        else f"; a relative path is read from the working directory, {Path.cwd()}"
    )  # fmt: skip
    return (
        f"{option.names}: {_shown(option, path)} (from {origin}) cannot be read: "
        f"{exc.strerror or exc}{relative}; it names the file holding the key secret; the "
        f"secret itself goes in {SECRET_ENV}"
    )


def check_pem(
    what: str, cert: Path | None = None, key: Path | None = None, ca: Path | None = None
) -> None:
    """``ConfigurationError`` naming ``what`` unless ``cert`` and ``key`` are a PEM
    certificate chain and its unencrypted private key, and ``ca`` PEM certificates:
    grpcio reads them only when it binds or connects, and says so only in its own log
    (a server's refusal then read as "the port is in use")."""
    import ssl

    for path in (cert, key, ca):
        try:
            if path is not None and b"-----BEGIN " not in path.read_bytes():
                raise ConfigurationError(f"{what}: {path} holds no PEM block (-----BEGIN ...)")
        except OSError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key, password=b"")  # never a prompt on a tty
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{what}: not usable (a PEM certificate chain and its unencrypted key, or PEM CA "
            f"certificates): {getattr(exc, 'strerror', None) or exc}"
        ) from None


def certificate_note(path: Path, now: _dt.datetime | None = None) -> tuple[bool, str]:
    """(whether to warn, what to log) about the server certificate ``path`` at start:
    when it expires, and that it is read once (a renewed file is not seen)."""
    now = now or _dt.datetime.now(_dt.UTC)
    try:
        expires = min((after for _, after in certificate_dates(path)), default=None)
    except (OSError, ValueError):  # checked at start (check_certificate_dates): changed since
        expires = None
    if expires is None:
        return False, f"TLS certificate {path}: read once: restart to serve a renewed certificate"
    left = expires - now
    soon = left < _dt.timedelta(days=CERTIFICATE_WARN_DAYS)
    if not soon:
        said = "valid until"
    elif left.days >= 0:
        said = f"expires {expires_in(left)}, at"
    else:  # served by a test or an embedder that skipped serve_settings's check
        said = "expired at"
    return soon, (
        f"TLS certificate {path} {said} {utc_text(expires)}; read once: restart to serve a "
        "renewed certificate"
    )


def _looked_for(path: Path) -> str:
    """Where a relative path was looked for, for a message saying it is not there: a
    path from any source, the config file's too, is read from the working directory."""
    if path.is_absolute():
        return ""
    return f" (looked for {path.absolute()}: relative paths are read from the working directory)"


def _file(resolved: Resolved, key: str) -> Path | None:
    raw = resolved.text(key)
    if raw is None:
        return None
    if not Path(raw).is_file():
        raise ConfigurationError(
            f"{BY_KEY[key].names}: {raw} is not a file{_looked_for(Path(raw))}"
        )
    return Path(raw)


def _logs_apart(
    n: dict[str, str], list_path: Path | None, hit_log: str | None, audit_log: str | None
) -> None:
    """The logs in files of their own, outside the list folder the server watches."""
    logs = {key: Path(raw).absolute() for key, raw in (("hit_log", hit_log),
            ("audit_log", audit_log)) if raw}  # fmt: skip
    if len(logs) == 2 and len(set(logs.values())) == 1:
        raise ConfigurationError(
            f"{n['hit_log']} and {n['audit_log']} name the same file ({logs['hit_log']}): "
            "each log needs its own"
        )
    if list_path is None or not list_path.is_dir():
        return
    folder = list_path.resolve()
    for key, path in logs.items():
        if path.parent.resolve() == folder:
            raise ConfigurationError(
                f"{n[key]}: {path} is in the list folder {list_path}, which the server "
                "watches for snapshot and delta files; write the log elsewhere"
            )


def _index_dir_for(raw: str, list_path: Path | None) -> Path | None:
    if raw == "off" or (raw in ("", "auto") and list_path is None):
        return None
    if raw not in ("", "auto"):
        if Path(raw).exists() and not Path(raw).is_dir():  # made when missing, never replaced
            raise ConfigurationError(
                f"{BY_KEY['index_dir'].names}: {raw} exists and is not a directory"
            )
        return Path(raw)
    assert list_path is not None
    return (list_path if list_path.is_dir() else list_path.parent) / ".shixin-index"


def _unavailable_overrides(text: str) -> tuple[tuple[Channel, str], ...]:
    from shixin_check.domain.model import Channel

    pairs = (item.split("=") for item in text.split(",") if item)
    return tuple((Channel[name], decision) for name, decision in pairs)


def serve_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeSettings:
    """The settings of ``serve``: its options resolved, then the rules between them."""
    from shixin_check.domain.rules import Policy

    args = resolve_args(args, env)
    r: Resolved = args.resolved
    n = {key: option.names for key, option in BY_KEY.items()}
    list_path = Path(raw) if (raw := r.text("list")) else None
    demo, insecure, redis = r.switch("demo"), r.switch("insecure"), r.text("redis")
    if not demo and list_path is None and not redis:
        raise ConfigurationError(f"serve needs {n['list']}, {n['redis']} or {n['demo']}")
    if list_path is not None and not list_path.exists():
        raise ConfigurationError(f"{n['list']}: {list_path} does not exist{_looked_for(list_path)}")
    if list_path is not None and not (list_path.is_file() or list_path.is_dir()):
        # a FIFO or a device: reading it blocks a start that then ignores SIGTERM
        raise ConfigurationError(f"{n['list']}: {list_path} is not a file or a directory")
    listen = r.text("listen") or DEFAULT_LISTEN
    host, _ = parse_listen(listen)
    keys_file, client_ca = _file(r, "keys_file"), _file(r, "tls_client_ca")
    tls_cert, tls_key = _file(r, "tls_cert"), _file(r, "tls_key")
    if (tls_cert is None) != (tls_key is None) or (client_ca and not tls_cert):
        raise ConfigurationError(
            f"{n['tls_cert']} and {n['tls_key']} go together (and {n['tls_client_ca']} needs them)"
        )
    tls_key_note = ""
    if tls_cert is not None and tls_key is not None:
        tls_key_note = _tls_key_held(n["tls_key"], tls_key)
        check_pem(f"{n['tls_cert']} {tls_cert} and {n['tls_key']} {tls_key}", tls_cert, tls_key)
        check_certificate_dates(f"{n['tls_cert']} {tls_cert}", tls_cert)
    if client_ca is not None:
        check_pem(f"{n['tls_client_ca']} {client_ca}", ca=client_ca)
    on_network = not is_loopback(host)
    if keys_file is None and client_ca is None and not insecure and on_network:
        raise ConfigurationError(
            f"--listen {listen}: authentication is off (no --keys-file or --tls-client-ca), "
            f"so only a loopback address may be bound; give {n['insecure']} (on) to bind it anyway"
        )
    if keys_file is not None and tls_cert is None and not insecure and on_network:
        raise ConfigurationError(
            f"--listen {listen}: API keys would cross the network in plaintext; give "
            f"--tls-cert and --tls-key, or {n['insecure']} (on), e.g. behind a "
            "TLS-terminating proxy"
        )
    secret, source, secret_note = secret_from(args, allow_ephemeral=not redis)
    metrics = r.text("metrics_listen")
    hit_log, audit_log = r.text("hit_log"), r.text("audit_log")
    _logs_apart(n, list_path, hit_log, audit_log)
    return ServeSettings(
        listen=listen,
        list_path=list_path,
        demo=demo,
        secret=secret,
        secret_source=source,
        secret_note=secret_note,
        tls_key_note=tls_key_note,
        policy=Policy(
            hotel_min_star=r.integer("hotel_min_star"),
            resort_quota_fen=r.integer("resort_quota_fen"),
            insurance_premium_threshold_fen=r.integer("insurance_premium_threshold_fen"),
            unavailable=r.text("unavailable") or "REVIEW",
            unavailable_by_channel=_unavailable_overrides(r.text("unavailable_channel") or ""),
        ),
        hit_log=Path(hit_log) if hit_log else None,
        audit_log=Path(audit_log) if audit_log else None,
        grace_seconds=r.number("grace"),
        drain_seconds=r.number("drain"),
        settle=r.number("settle"),
        demo_count=r.integer("demo_count"),
        redis=redis,
        redis_prefix=r.text("redis_prefix") or "",
        keys_file=keys_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=client_ca,
        insecure=insecure,
        enumeration_threshold=r.integer("enumeration_threshold"),
        enumeration_window=float(r.integer("enumeration_window")),
        enumeration_throttle=r.switch("enumeration_throttle"),
        log_fsync=r.text("log_fsync") or "never",
        log_fsync_interval=float(r.integer("log_fsync_interval")),
        log_max_bytes=r.integer("log_max_mib") * 1024 * 1024,
        metrics_listen=(
            None if metrics == "off" else metrics or (DEMO_METRICS_LISTEN if demo else None)
        ),
        max_list_age=r.seconds_or_none("max_list_age"),
        index_dir=_index_dir_for(r.text("index_dir") or "", list_path),
        workers=r.integer("workers"),
        effective=effective_settings_line(r),
    )


# --- the README's reference table ------------------------------------------------------------


def markdown_table() -> str:
    """The reference table of every option, for the README (a test keeps it fresh)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def code(text: str) -> str:
        return f"`{text}`" if text else ""

    rows = [
        "| flag | variable | config key | commands | default | accepted | meaning |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| `--config PATH` | `{CONFIG_ENV}` | | all (validate, audit: no --config; the file "
        f"{CONFIG_ENV} names is checked, not read) | | a TOML file "
        f"| {cell(_CONFIG_HELP)} |",
    ]
    for o in OPTIONS:
        metavar = "" if o.kind is SWITCH else " " + (o.metavar or o.kind.metavar)
        flags = ", ".join(f"`{flag}{metavar}`" for flag in o.flags)
        default = cell(o.shown) if o.shown else code(o.default_text)
        rows.append(
            f"| {flags} | `{o.env}` | `{o.key}` | {', '.join(o.commands)} | "
            f"{default} | {cell(o.takes)} | {cell(o.help)} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shixin_check.server.settings")
    parser.add_argument("--markdown", action="store_true", help="print the README's option table")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
