"""``shixin-check health``: ask a running server's standard health service.

For container health checks and scripts that have no ``grpc_health_probe``:
the answer is in the exit status, so ``HEALTHCHECK`` and shell ``if`` can use it.

    shixin-check health [--target HOST:PORT] [--service NAME] [--timeout S]
                        [--api-key KEY] [--ca PATH [--client-cert PATH --client-key PATH]]

Exit 0 only on SERVING; 1 on NOT_SERVING, UNKNOWN or a service name the
server does not know; 2 when the server cannot be asked (not listening, no
answer in time, TLS or credentials refused), with one line on standard error.
Health needs no credentials on this server; ``--api-key`` is sent all the same
so the command works behind a proxy that wants one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.settings import add_options, resolving

Handler = Callable[[argparse.Namespace], int]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``health`` to ``sub``; its handler, by name."""
    p = sub.add_parser("health", help="ask a running server's health service: exit 0 on SERVING")
    add_options(p, "health")  # --target, --service, --timeout, TLS and API key, --config
    return {"health": resolving(cmd_health)}


def _timeout(raw: object) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigurationError(
            f"--timeout / SHIXIN_TIMEOUT: {raw!r} is not a number of seconds in (0, 3600]"
        )
    return value


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shixin_check.clients.check_client import CheckClient

    timeout = _timeout(args.timeout)
    root_ca, cert, key = (
        Path(path).read_bytes() if path else None
        for path in (args.ca, args.client_cert, args.client_key)
    )
    service = args.service or ""
    shown = repr(service) if service else "the server ('')"
    with CheckClient(
        args.target, timeout=timeout, api_key=args.api_key, root_ca=root_ca,
        client_cert=cert, client_key=key,
    ) as client:  # fmt: skip
        stub = health_pb2_grpc.HealthStub(client.channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                metadata=client.metadata,
            )
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                print(f"UNKNOWN: {args.target} has no health status for {shown}", file=sys.stderr)
                return 1
            print(f"shixin-check health: cannot ask {args.target}: "
                  f"{exc.code().name}: {exc.details()}", file=sys.stderr)  # fmt: skip
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
