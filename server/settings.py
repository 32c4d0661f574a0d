"""All configuration, in one place.

Every command-line flag also reads an environment variable ``SHIXIN_<FLAG>``
(``--hit-log`` from ``SHIXIN_HIT_LOG``); a flag given on the command line
wins. Bad values are refused at start-up with a message naming both. The
result is a frozen ``Settings`` passed to whatever needs it; nothing reads
the environment later.
"""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from shixin_domain.errors import ConfigurationError
from shixin_domain.keys import MIN_SECRET_BYTES
from shixin_domain.model import Channel
from shixin_domain.rules import Policy

ENV_PREFIX = "SHIXIN_"
#: Where the key secret came from when none was given: keys live only in this process.
EPHEMERAL_SECRET = "generated for this process (keys live only in memory)"
MAX_BATCH = 1000


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_flag(parser: argparse.ArgumentParser, flag: str, **kwargs: object) -> None:
    """``parser.add_argument`` whose default comes from ``SHIXIN_<FLAG>`` when set."""
    env = os.environ.get(env_name(flag))
    if env is not None:
        # a switch keeps the raw text until ``switch()`` reads it strictly at start-up
        kwargs["default"] = env
    help_text = str(kwargs.get("help", ""))
    kwargs["help"] = f"{help_text} [env {env_name(flag)}]".strip()
    parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def add_secret_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--key-secret-file", metavar="PATH",
             help="file holding the subject-key secret (at least 16 bytes)")  # fmt: skip


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    d = Policy()
    add_flag(parser, "--hotel-min-star", default=str(d.hotel_min_star), metavar="N",
             help="lowest restricted hotel star rating (星级以上: 1)")  # fmt: skip
    add_flag(parser, "--resort-quota-fen", default=str(d.resort_quota_fen), metavar="FEN",
             help="rated-resort spending quota per transaction, in fen")  # fmt: skip
    add_flag(parser, "--insurance-premium-threshold-fen", metavar="FEN",
             default=str(d.insurance_premium_threshold_fen),
             help="premium from which cash-value insurance is restricted, in fen")  # fmt: skip


def _int(args: argparse.Namespace, flag: str, low: int, high: int) -> int:
    raw = getattr(args, flag.lstrip("-").replace("-", "_"))
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigurationError(
            f"{flag} / {env_name(flag)}: {raw!r} is not an integer (accepted: {low}..{high})"
        ) from None
    if not low <= value <= high:
        raise ConfigurationError(f"{flag} / {env_name(flag)}: {value} is not in {low}..{high}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def switch(args: argparse.Namespace, flag: str) -> bool:
    """An on/off flag: True when given, else its variable read strictly (``ture`` is refused)."""
    raw = getattr(args, flag.lstrip("-").replace("-", "_"))
    if isinstance(raw, bool) or raw is None:
        return bool(raw)
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(
        f"{flag} / {env_name(flag)}: {raw!r} is not a switch value; use one of "
        f"{', '.join(_TRUE)} (on) or {', '.join(v for v in _FALSE if v)} (off)"
    )


def _choice(args: argparse.Namespace, flag: str, allowed: tuple[str, ...]) -> str:
    raw = str(getattr(args, flag.lstrip("-").replace("-", "_"))).strip().lower()
    if raw not in allowed:
        raise ConfigurationError(
            f"{flag} / {env_name(flag)}: {raw!r} is not one of {', '.join(allowed)}"
        )
    return raw


def policy_from(args: argparse.Namespace) -> Policy:
    return Policy(
        hotel_min_star=_int(args, "--hotel-min-star", 1, 5),
        resort_quota_fen=_int(args, "--resort-quota-fen", 0, 10**12),
        insurance_premium_threshold_fen=_int(args, "--insurance-premium-threshold-fen", 0, 10**12),
    )


def secret_from(args: argparse.Namespace, allow_ephemeral: bool) -> tuple[bytes, str]:
    """(secret, where it came from). ``SHIXIN_KEY_SECRET`` holds it directly."""
    path = getattr(args, "key_secret_file", None)
    if path:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(f"--key-secret-file / SHIXIN_KEY_SECRET_FILE: {exc}") from exc
        source = f"file {path}"
    elif os.environ.get("SHIXIN_KEY_SECRET"):
        secret = os.environ["SHIXIN_KEY_SECRET"].encode()
        source = "SHIXIN_KEY_SECRET"
    elif allow_ephemeral:
        return secrets.token_bytes(32), EPHEMERAL_SECRET
    else:
        raise ConfigurationError(
            "no key secret: set SHIXIN_KEY_SECRET or --key-secret-file / SHIXIN_KEY_SECRET_FILE"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"key secret from {source} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return secret, source


def parse_listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--listen / SHIXIN_LISTEN: {raw!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


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
    demo_count: int = 2000
    poll_interval: float = 0.2
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
        return self.listen.startswith(_LOOPBACK)


def add_redis_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    add_flag(parser, "--redis", metavar="URL", required=required and not os.environ.get("SHIXIN_REDIS"),
             help="Redis holding the list, e.g. redis://127.0.0.1:6379/0, or through Sentinel: "
                  "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]; the password "
                  "from SHIXIN_REDIS_PASSWORD")  # fmt: skip
    add_flag(parser, "--redis-prefix", default="shixin", metavar="PREFIX",
             help="prefix of every key this service writes in Redis")  # fmt: skip


_DECISIONS = ("REVIEW", "DENY", "ALLOW")


def add_unavailable_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--unavailable", default="REVIEW", metavar="DECISION",
             help="answer when a Bloom positive cannot be confirmed (Redis down): "
                  "REVIEW, DENY (fail closed) or ALLOW (fail open); always with reason "
                  "INDEX_UNAVAILABLE")  # fmt: skip
    add_flag(parser, "--unavailable-channel", default="", metavar="CH=DECISION,...",
             help="per-channel overrides, e.g. AIRLINE=DENY,HOTEL=ALLOW")  # fmt: skip


def _unavailable(args: argparse.Namespace) -> tuple[str, tuple[tuple[Channel, str], ...]]:
    default = str(args.unavailable).strip().upper()
    if default not in _DECISIONS:
        raise ConfigurationError(
            f"--unavailable / SHIXIN_UNAVAILABLE: {args.unavailable!r} is not one of REVIEW, DENY, ALLOW"
        )
    overrides = []
    for item in filter(None, (x.strip() for x in str(args.unavailable_channel).split(","))):
        name, _, decision = item.partition("=")
        channel = Channel.__members__.get(name.strip().upper())
        if channel is None or decision.strip().upper() not in _DECISIONS:
            raise ConfigurationError(
                f"--unavailable-channel / SHIXIN_UNAVAILABLE_CHANNEL: {item!r} is not CHANNEL=DECISION"
            )
        overrides.append((channel, decision.strip().upper()))
    return default, tuple(overrides)


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--log-fsync", default="never", metavar="MODE",
             help="hit and audit logs: never (kernel writes back), interval, always "
                  "(fdatasync before answering)")  # fmt: skip
    add_flag(parser, "--log-fsync-interval", default="1", metavar="SECONDS",
             help="with --log-fsync interval: longest time between syncs")  # fmt: skip
    add_flag(parser, "--log-max-mib", default="256", metavar="MIB",
             help="rotate hit and audit logs at this size (and at China-time midnight)")  # fmt: skip


def add_access_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--keys-file", metavar="PATH",
             help="API keys (hashes only), principals, channels, roles, rates; turns authentication on")  # fmt: skip
    add_flag(parser, "--tls-cert", metavar="PATH", help="server certificate (PEM)")
    add_flag(parser, "--tls-key", metavar="PATH", help="server private key (PEM)")
    add_flag(parser, "--tls-client-ca", metavar="PATH",
             help="CA for client certificates: requires mutual TLS; principals by common name")  # fmt: skip
    add_flag(parser, "--insecure", action="store_true",
             help="allow binding a non-loopback address without authentication")  # fmt: skip
    add_flag(parser, "--enumeration-threshold", default="0", metavar="N",
             help="flag a principal checking more than N distinct identities per window (0: off)")  # fmt: skip
    add_flag(parser, "--enumeration-window", default="60", metavar="SECONDS",
             help="the window of --enumeration-threshold")  # fmt: skip
    add_flag(parser, "--enumeration-throttle", action="store_true",
             help="refuse a flagged principal's checks (RESOURCE_EXHAUSTED) until the window ends")  # fmt: skip


_LOOPBACK = ("127.", "::1", "localhost", "[::1]")


def _path(args: argparse.Namespace, flag: str) -> Path | None:
    raw = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigurationError(f"{flag} / {env_name(flag)}: {path} is not a file")
    return path


def add_index_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--index-dir", default="", metavar="PATH",
             help="where loaded snapshots are compiled for mapping (a restart maps, not "
                  "re-parses): default .shixin-index beside the list; 'off' for none")  # fmt: skip


def _index_dir(args: argparse.Namespace, list_path: Path | None) -> Path | None:
    raw = str(getattr(args, "index_dir", "") or "").strip()
    if raw.lower() == "off" or (not raw and list_path is None):
        return None
    if raw:
        return Path(raw)
    assert list_path is not None
    return (list_path if list_path.is_dir() else list_path.parent) / ".shixin-index"


#: Where ``serve --demo`` serves metrics unless told otherwise.
DEMO_METRICS_LISTEN = "127.0.0.1:9464"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_observability_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--metrics-listen", default="", metavar="HOST:PORT",
             help="serve Prometheus metrics at http://HOST:PORT/metrics (off unless given; "
                  f"--demo: {DEMO_METRICS_LISTEN}; 'off' for none)")  # fmt: skip
    add_flag(parser, "--max-list-age", default="", metavar="DURATION",
             help="a list whose feed time is older than this (36h, 90m, 3600s, 2d) makes "
                  "readiness health NOT_SERVING and marks every answer stale (off unless given)")  # fmt: skip


def _metrics_listen(args: argparse.Namespace, demo: bool) -> str | None:
    raw = str(getattr(args, "metrics_listen", "") or "").strip()
    if raw.lower() == "off":
        return None
    if not raw:
        return DEMO_METRICS_LISTEN if demo else None
    host, sep, port = raw.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(
            f"--metrics-listen / SHIXIN_METRICS_LISTEN: {raw!r} is not HOST:PORT (e.g. 0.0.0.0:9464)"
        )
    return raw


def parse_duration(raw: str, flag: str) -> float | None:
    """``36h``, ``90m``, ``3600s``, ``2d`` in seconds; None for "" or ``off``."""
    text = raw.strip()
    if not text or text.lower() == "off":
        return None
    number, unit = text[:-1], text[-1:]
    if unit in _DURATION_UNITS and number.isascii() and number.isdigit() and int(number) > 0:
        return float(int(number) * _DURATION_UNITS[unit])
    raise ConfigurationError(
        f"{flag} / {env_name(flag)}: {raw!r} is not a duration; give a whole number above 0 "
        "and a unit: s, m, h or d (36h, 90m, 3600s, 2d)"
    )


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    list_path = Path(args.list) if args.list else None
    demo, insecure = switch(args, "--demo"), switch(args, "--insecure")
    if not demo and list_path is None and not args.redis:
        raise ConfigurationError(
            "serve needs --list PATH (SHIXIN_LIST), --redis URL (SHIXIN_REDIS) or --demo"
        )
    if list_path is not None and not list_path.exists():
        raise ConfigurationError(f"--list / SHIXIN_LIST: {list_path} does not exist")
    host, _ = parse_listen(args.listen)
    unavailable, overrides = _unavailable(args)
    keys_file, client_ca = _path(args, "--keys-file"), _path(args, "--tls-client-ca")
    tls_cert, tls_key = _path(args, "--tls-cert"), _path(args, "--tls-key")
    if (tls_cert is None) != (tls_key is None) or (client_ca and not tls_cert):
        raise ConfigurationError(
            "--tls-cert and --tls-key go together (and --tls-client-ca needs them)"
        )
    if keys_file is None and client_ca is None and not insecure:
        if not host.startswith(_LOOPBACK):
            raise ConfigurationError(
                f"--listen {args.listen}: authentication is off (no --keys-file or --tls-client-ca), "
                "so only a loopback address may be bound; give --insecure / SHIXIN_INSECURE=1 "
                "to bind it anyway"
            )
    if keys_file is not None and tls_cert is None and not insecure:
        if not host.startswith(_LOOPBACK):
            raise ConfigurationError(
                f"--listen {args.listen}: API keys would cross the network in plaintext; give "
                "--tls-cert and --tls-key, or --insecure / SHIXIN_INSECURE=1 (e.g. behind a "
                "TLS-terminating proxy)"
            )
    secret, source = secret_from(args, allow_ephemeral=not args.redis)
    try:
        grace = float(args.grace)
    except ValueError:
        grace = -1.0
    if not 0 <= grace <= 3600:
        raise ConfigurationError(
            f"--grace / SHIXIN_GRACE: {args.grace!r} is not a number of seconds in 0..3600"
        )
    return ServeSettings(
        listen=args.listen,
        list_path=list_path,
        demo=demo,
        secret=secret,
        secret_source=source,
        policy=replace(
            policy_from(args), unavailable=unavailable, unavailable_by_channel=overrides
        ),
        hit_log=Path(args.hit_log) if args.hit_log else None,
        audit_log=Path(args.audit_log) if args.audit_log else None,
        grace_seconds=grace,
        demo_count=_int(args, "--demo-count", 10, 10_000_000),
        redis=args.redis or None,
        redis_prefix=args.redis_prefix,
        keys_file=keys_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=client_ca,
        insecure=insecure,
        enumeration_threshold=_int(args, "--enumeration-threshold", 0, 10**9),
        enumeration_window=float(_int(args, "--enumeration-window", 1, 86400)),
        enumeration_throttle=switch(args, "--enumeration-throttle"),
        log_fsync=_choice(args, "--log-fsync", ("never", "interval", "always")),
        log_fsync_interval=float(_int(args, "--log-fsync-interval", 0, 3600)),
        log_max_bytes=_int(args, "--log-max-mib", 1, 1 << 20) * 1024 * 1024,
        metrics_listen=_metrics_listen(args, demo),
        max_list_age=parse_duration(str(getattr(args, "max_list_age", "") or ""), "--max-list-age"),
        index_dir=_index_dir(args, list_path),
    )
