"""The console subcommands that manage API keys: ``keys add``, ``list`` and ``remove``.

Kept apart from ``shixin_check/cli.py`` (which adds them with ``add_parsers``)
because they only edit the keys file; a running server reloads that file by
itself within a second (or on SIGHUP), so none of them talks to a server.

    shixin-check keys add --keys-file PATH --principal P [--common-name CN]
                          [--channels C,..] [--roles R,..] [--rate N [--burst N]]
    shixin-check keys list --keys-file PATH [--json]
    shixin-check keys remove --keys-file PATH (--principal P | --key-id ID
                                               | --common-name CN)

No key is ever written to the file or shown again after ``add`` prints it:
the file keeps each key's SHA-256, and listings name a key by the start of
that hash (its id). ``add --common-name CN`` makes no key: it adds a
``tls_principals`` entry, so that a gateway whose client certificate's common
name is CN (mutual TLS, ``--tls-client-ca``) is the principal P.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shixin_check.server.settings import MAX_BATCH, add_options, resolving

if TYPE_CHECKING:  # the access module loads only when a keys command runs
    from shixin_check.server.auth import KeyRing

Handler = Callable[[argparse.Namespace], int]

BURST_RULE = (
    f"bucket size: the most checks at once, a batch costing its size; a larger batch is "
    f"refused (default: max(2 x rate, {MAX_BATCH}), two seconds' worth and at least one "
    f"full batch)"
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``keys`` and its subcommands to ``sub``; the handler, by name."""
    p = sub.add_parser("keys", help="manage API keys (the file keeps only their hashes)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)

    k = keys_sub.add_parser("add", help="make a key for a principal; prints it once")
    add_options(k, "keys")  # --keys-file (the file; add creates it), --config
    k.add_argument("--principal", required=True, help="who the key is for, e.g. 12306-gateway")
    # a flag only, as --principal: what names a principal is never a default
    k.add_argument("--common-name", metavar="CN", default=None,
                   help="make no key: a client certificate whose CN (subject common name) "
                        "is CN is the principal (mutual TLS; a tls_principals entry)")  # fmt: skip
    k.add_argument("--channels", default="*", help="comma-separated channels, or * for all")
    k.add_argument(
        "--roles",
        default="check",
        help="comma-separated: check (the checks), status (GetListStatus), prefilter "
        "(GetPrefilter: a gateway's offline filter; give check too), admin (reserved)",
    )
    k.add_argument("--rate", type=float, default=0.0, help="checks per second (0: no limit)")
    k.add_argument("--burst", type=int, default=0, help=BURST_RULE)

    k = keys_sub.add_parser("list", help="principals, scopes, limits and key ids (never keys)")
    add_options(k, "keys")
    k.add_argument("--json", action="store_true", help="print as JSON")

    k = keys_sub.add_parser("remove", help="revoke a principal's keys, or one key by its id")
    add_options(k, "keys")
    k.add_argument("--principal", default="", help="remove every key and certificate of P")
    k.add_argument("--key-id", default="", help="remove the key whose id starts so (keys list)")
    k.add_argument("--common-name", metavar="CN", default="",
                   help="remove the certificate name CN (keys list shows it as CN=...)")  # fmt: skip
    return {"keys": resolving(cmd_keys)}


def cmd_keys(args: argparse.Namespace) -> int:
    commands: dict[str, Handler] = {"add": _add, "list": _list, "remove": _remove}
    return commands[args.keys_command](args)


def _add(args: argparse.Namespace) -> int:
    from shixin_check.server.auth import (
        add_key,
        add_tls_principal,
        common_name_problem,
        principal_name_problem,
    )

    problem = principal_name_problem(args.principal)
    if problem:
        print(f"keys add: --principal {problem}", file=sys.stderr)
        return 2
    if args.rate < 0 or args.burst < 0:
        print("keys add: --rate and --burst must be 0 or more", file=sys.stderr)
        return 2
    if args.burst and not args.rate:
        print("keys add: --burst needs --rate (without a rate there is no limit)", file=sys.stderr)
        return 2
    channels = (
        "*"
        if args.channels.strip() == "*"
        else [c.strip().upper() for c in args.channels.split(",") if c.strip()]
    )
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    path = Path(args.keys_file)
    if args.common_name is not None:
        problem = common_name_problem(args.common_name)
        if problem:
            print(f"keys add: --common-name {problem}", file=sys.stderr)
            return 2
        add_tls_principal(path, args.principal, args.common_name, channels, roles,
                          args.rate, args.burst)  # fmt: skip
        print(f"added CN={args.common_name} for {args.principal} to {path}: a client "
              "certificate with this common name, signed by the server's --tls-client-ca, "
              "is this principal (no key made)")  # fmt: skip
    else:
        key = add_key(path, args.principal, channels, roles, args.rate, args.burst)
        print(key)
        print(f"(added for {args.principal}; only its hash is in {path}: keep the key now)",
              file=sys.stderr)  # fmt: skip
    if args.burst and args.burst < MAX_BATCH:
        print(f"(batches of more than {args.burst} checks will be refused for {args.principal})",
              file=sys.stderr)  # fmt: skip
    return 0


def _rows(ring: KeyRing) -> list[dict[str, Any]]:
    from shixin_check.server.auth import ALL_CHANNELS, Principal, key_id

    """One row per key and per certificate name, by principal."""

    def row(kind: str, credential: str, principal: Principal) -> dict[str, Any]:
        limited = principal.rate_per_second > 0
        return {
            "principal": principal.name,
            "credential": kind,
            "id": credential,
            "channels": (
                "*"
                if principal.channels == ALL_CHANNELS
                else sorted(c.name for c in principal.channels)
            ),
            "roles": sorted(principal.roles),
            "rate_per_second": principal.rate_per_second if limited else None,
            "burst": principal.burst if limited else None,
        }

    rows = [row("key", key_id(digest), p) for digest, p in ring.by_hash.items()]
    rows += [row("certificate", name, p) for name, p in ring.by_common_name.items()]
    return sorted(rows, key=lambda r: (r["principal"], r["credential"], r["id"]))


def _list(args: argparse.Namespace) -> int:
    from shixin_check.server.auth import KeyRing

    rows = _rows(KeyRing.load(Path(args.keys_file)))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    table = [("PRINCIPAL", "KEY ID / CERTIFICATE", "CHANNELS", "ROLES", "RATE/S", "BURST")]
    for r in rows:
        channels = r["channels"] if r["channels"] == "*" else ",".join(r["channels"])
        credential = r["id"] if r["credential"] == "key" else f"CN={r['id']}"
        rate = "-" if r["rate_per_second"] is None else f"{r['rate_per_second']:g}"
        burst = "-" if r["burst"] is None else str(r["burst"])
        table.append((r["principal"], credential, channels, ",".join(r["roles"]), rate, burst))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _remove(args: argparse.Namespace) -> int:
    from shixin_check.server.auth import remove_keys

    if not args.principal and not args.key_id and not args.common_name:
        print("keys remove: give --principal P, --key-id ID or --common-name CN", file=sys.stderr)
        return 2
    if args.key_id and args.common_name:
        print("keys remove: --key-id and --common-name are both given: a key or a certificate "
              "name; remove each on its own", file=sys.stderr)  # fmt: skip
        return 2
    path = Path(args.keys_file)
    for what in remove_keys(path, args.principal, args.key_id, args.common_name):
        print(f"removed {what}")
    print(f"(a running server with --keys-file {path} stops accepting it within about a second)",
          file=sys.stderr)  # fmt: skip
    return 0
