"""``shixin-check health``: ask a running server's standard health service.

For container health checks and scripts that have no ``grpc_health_probe``:
the answer is in the exit status, so ``HEALTHCHECK`` and shell ``if`` can use it.

    shixin-check health [--target HOST:PORT] [--service NAME] [--timeout S]
                        [--api-key KEY] [--ca PATH [--client-cert PATH --client-key PATH]]

Exit 0 only on SERVING; 1 on NOT_SERVING, UNKNOWN or a service name the
server does not know; 2 when the server cannot be asked (not listening, no
answer in time, TLS or credentials refused), with one line on standard error;
so are flags that cannot work (``client_credentials``, shared with ``check`` and
``status``: a certificate without its key, a ``--ca`` that is no PEM file).
Health needs no credentials on this server; ``--api-key`` is sent all the same
so the command works behind a proxy that wants one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.settings import add_options, resolving

if TYPE_CHECKING:
    from shixin_check.clients.channel import Credentials

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


def client_credentials(args: argparse.Namespace) -> Credentials:
    """The credentials that the client flags of ``check``, ``status`` and ``health``
    give (``--target``, ``--api-key``, ``--ca``, ``--client-cert``, ``--client-key``),
    each flag checked first: a ``ConfigurationError`` naming it, where the client
    library would raise a ``ValueError`` naming its argument, grpc would refuse the
    call, or grpc's core would abort the process (a certificate without its key)."""
    from shixin_check.clients.channel import API_KEY, API_KEY_MAX, Credentials
    from shixin_check.server.settings import check_pem

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    if not args.target.strip():
        raise ConfigurationError("--target: is empty; give HOST:PORT")
    if args.api_key and not API_KEY.fullmatch(args.api_key):  # named as a flag here
        raise ConfigurationError("--api-key: must be printable ASCII without spaces")
    if len(args.api_key or "") > API_KEY_MAX:
        raise ConfigurationError(
            f"--api-key: is {len(args.api_key)} characters long; at most {API_KEY_MAX} are sent"
            " (keys from `shixin-check keys add` are 46)"
        )
    if args.ca:
        check_pem(f"--ca {args.ca}", ca=Path(args.ca))
    if bool(args.client_cert) != bool(args.client_key):
        raise ConfigurationError("--client-cert and --client-key go together")
    if args.client_cert:
        if not args.ca:
            raise ConfigurationError(
                "--client-cert and --client-key: need --ca; a client certificate is sent "
                "only over TLS, which --ca turns on"
            )
        command = f"shixin-check {args.command}"
        _check_client_certificate(Path(args.client_cert), Path(args.client_key), command)
    return Credentials(
        args.api_key or "", read(args.ca), read(args.client_cert), read(args.client_key)
    )


def _check_client_certificate(cert: Path, key: Path, command: str) -> None:
    """The library's checks of a client certificate (``clients/tls.py``), each named
    by its flags, and its expiry within two weeks as one line on standard error (the
    library's own warning is then not repeated)."""
    import warnings

    from shixin_check.clients.tls import ClientCertificateExpiring, expiry_note, pem_problem
    from shixin_check.domain.certificates import check_certificate_dates
    from shixin_check.server.settings import check_pem

    pair = f"--client-cert {cert} and --client-key {key}"
    try:
        problem = pem_problem(cert.read_bytes(), key.read_bytes(), pair, str(key))
    except OSError as exc:
        raise ConfigurationError(f"{pair}: {exc}") from None
    if problem:  # before check_pem, which can say only "PEM lib" of these
        raise ConfigurationError(problem)
    check_pem(pair, cert, key)
    check_certificate_dates(f"--client-cert {cert}", cert)
    note = expiry_note(cert, f"--client-cert {cert}")
    if note:
        print(f"{command}: warning: {note}", file=sys.stderr)
    warnings.simplefilter("ignore", ClientCertificateExpiring)


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shixin_check.clients.check_client import CheckClient

    timeout = _timeout(args.timeout)
    given = client_credentials(args)
    service = args.service or ""
    shown = repr(service) if service else "the server ('')"
    with CheckClient(
        args.target, timeout=timeout, api_key=given.api_key, root_ca=given.root_ca,
        client_cert=given.client_cert, client_key=given.client_key,
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
