"""How both clients talk to the service: one channel, its retry policy, keepalive, credentials.

Retries are gRPC's own (the service config's ``retryPolicy``, run by grpcio's
C core), never a loop here, and only where they are safe. A check is an
idempotent read, so a call refused before it was decided may be sent again:

- ``UNAVAILABLE``: unreachable, shutting down, or no list loaded yet
  (another replica, or the same one a moment later, may answer);
- ``CANCELLED`` from the server: a server that begins to shut down cancels
  the calls it has taken in but not yet handed to the service (grpcio's core
  does, whatever the grace: grpc/grpc#41785), so they were never decided (a
  proxy between may also send it for a call that was: README, "What a retry
  can cost"). The caller's own cancellation (closing the channel, ``call.cancel()``, a task
  cancelled) is never retried by gRPC;
- ``RESOURCE_EXHAUSTED``: over the caller's rate. gRPC does not read
  ``google.rpc.RetryInfo``; it waits for the server's *push-back*, the
  ``grpc-retry-pushback-ms`` trailer, when there is one (a negative value
  means "do not retry"), and otherwise for its own exponential backoff.

Every other status is final: a bad request stays bad, a refusal stays a
refusal. The deadline covers all attempts together. ``retryThrottling``
stops retrying once failed calls to a server outnumber its answers by five,
so a fleet of tills cannot turn an outage into a storm. A message over 4 MiB is refused
by the clients before sending (``MAX_MESSAGE_BYTES``), so grpc's own
RESOURCE_EXHAUSTED for it is never retried.

Keepalive: the channel pings the server (HTTP/2 PING) every ``Keepalive.time``
seconds, with or without calls, and drops the connection when a ping is not
answered within ``Keepalive.timeout``: a server that hangs or a network that
drops packets silently ends a stream with UNAVAILABLE within about
``time + timeout`` seconds, where it would otherwise wait forever. The
server's policy (``server/app.py``) accepts a ping every
``KEEPALIVE_MIN_INTERVAL_S``, so the default never earns a GOAWAY
``too_many_pings``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import grpc

#: The service's full name, as the service config names it.
SERVICE = "shixin.v1.ConsumptionCheck"
#: The largest message the server accepts (grpc's default receive limit there).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Answers to 1,000 checks with many matches each can pass 4 MiB: take up to this much.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy for every method of the service.

    The n-th retry waits ``min(initial_backoff * multiplier**(n-1),
    max_backoff)`` seconds (grpcio's C core jitters it by 20%), or the
    server's push-back when it sends one. ``max_attempts`` counts the first
    call (gRPC allows at most 5). The default waits about 0.1, 0.2 and 0.4 s:
    three retries well inside the default 2 s deadline.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0
    #: also retry RESOURCE_EXHAUSTED (a rate or throttle; after the server's push-back)
    on_rate_limit: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts: {self.max_attempts} is not in 1..5")
        if not (0.001 <= self.initial_backoff <= self.max_backoff and self.multiplier > 0):
            raise ValueError(
                "backoffs: want 0.001 <= initial_backoff <= max_backoff and multiplier > 0"
            )

    def status_codes(self) -> list[str]:
        codes = ["UNAVAILABLE", "CANCELLED"]
        return [*codes, *(["RESOURCE_EXHAUSTED"] if self.on_rate_limit else [])]


#: The policy of both clients unless they are given another.
DEFAULT_RETRY = RetryPolicy()
#: No retries at all: every failure is raised at once.
NO_RETRY = RetryPolicy(max_attempts=1)


def service_config(retry: RetryPolicy) -> str:
    """The service config JSON for ``grpc.service_config``: the retry policy for every
    method but ``CheckConsumptionStream``, which is never sent again (a stream opened to
    a server that hangs before its first answer was retried on and on once keepalive
    ended each attempt, no error for minutes; a broken stream raises, README)."""
    method: dict[str, Any] = {"name": [{"service": SERVICE}]}
    if retry.max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": f"{retry.initial_backoff:.9f}s",
            "maxBackoff": f"{retry.max_backoff:.9f}s",
            "backoffMultiplier": retry.multiplier,
            "retryableStatusCodes": retry.status_codes(),
        }
    stream = {"name": [{"service": SERVICE, "method": "CheckConsumptionStream"}]}
    config: dict[str, Any] = {"methodConfig": [stream, method]}
    if retry.max_attempts > 1:
        # per server: 10 tokens, a failure takes one, an answer gives one back; no retries
        # while 5 or fewer are left (failures outnumbering answers by five, lately)
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 1}
    return json.dumps(config)


#: The fastest pinging the server accepts (its ``grpc.http2.min_ping_interval_without_data_ms``,
#: ``server/app.py``): a client that pings more often is sent GOAWAY ``too_many_pings``.
KEEPALIVE_MIN_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive pings: how soon a dead connection is noticed.

    A ping every ``time`` seconds; no answer within ``timeout`` seconds
    closes the connection, and its calls (an open stream too) fail with
    UNAVAILABLE. ``without_calls``: ping an idle connection too, so that one a
    NAT or load balancer dropped silently is found before the next call waits
    out its deadline on it. A ``time`` below ``KEEPALIVE_MIN_INTERVAL_S`` is
    for tests: a server of this project answers it with GOAWAY
    ``too_many_pings`` (after a few pings too soon while it sends nothing), and
    a server older than this policy (grpc's default: one ping per 5 minutes,
    none without calls) does so for the default as well: give it
    ``Keepalive(time=360, without_calls=False)``.
    """

    time: float = 10.0
    timeout: float = 5.0
    without_calls: bool = True

    def __post_init__(self) -> None:
        if not (self.time >= 0.001 and self.timeout >= 0.001):
            raise ValueError("keepalive: want time >= 0.001 and timeout >= 0.001 (seconds)")

    def options(self) -> list[tuple[str, int]]:
        timeout_ms = round(self.timeout * 1000)
        return [
            ("grpc.keepalive_time_ms", round(self.time * 1000)),
            ("grpc.keepalive_timeout_ms", timeout_ms),
            # grpcio's core waits this long for a ping's answer (1 minute unless set;
            # keepalive_timeout alone no longer bounds it): the same
            ("grpc.http2.ping_timeout_ms", timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.without_calls)),
            # gRPC's default stops pinging after 2 pings without data: keep finding dead peers
            ("grpc.http2.max_pings_without_data", 0),
        ]


#: The keepalive of both clients unless they are given another: a dead server is
#: noticed within about 15 s.
DEFAULT_KEEPALIVE = Keepalive()


def channel_options(
    retry: RetryPolicy, keepalive: Keepalive = DEFAULT_KEEPALIVE
) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1 if retry.max_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry)),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        *keepalive.options(),
    ]


#: what an API key may hold: a header value grpcio sends (printable ASCII, no space)
API_KEY = re.compile(r"[!-~]+")
#: The longest api_key sent: this service's keys are 46 characters, and grpc refuses
#: metadata over 16 KiB with a bare RESOURCE_EXHAUSTED that retries cannot help.
API_KEY_MAX = 1024


@dataclass(frozen=True)
class Credentials:
    """An API key (``authorization: Bearer KEY``) and TLS material, all optional.

    ``root_ca`` (PEM bytes) turns TLS on; ``client_cert`` and ``client_key``
    add a client certificate for mutual TLS: both or neither, and only with
    ``root_ca`` (``ValueError`` otherwise: grpc's core aborts the whole process
    on a certificate without its key, and would send none over plaintext). The
    certificate must be current and ``client_key`` its own unencrypted key
    (``clients/tls.py``: ``ValueError`` here, where grpc would fail every call
    with UNAVAILABLE); one that expires soon is a ``ClientCertificateExpiring``
    warning.
    """

    # the secrets never in a repr (a log line, an error reporter's locals)
    api_key: str = field(default="", repr=False)
    root_ca: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # grpcio refuses such a header only when a call is made, with INTERNAL
        if self.api_key and not API_KEY.fullmatch(self.api_key):
            raise ValueError("api_key: must be printable ASCII without spaces")
        if len(self.api_key) > API_KEY_MAX:
            raise ValueError(
                f"api_key: is {len(self.api_key)} characters long; at most {API_KEY_MAX}"
                " are sent (keys from `shixin-check keys add` are 46)"
            )
        # b"" is none to grpc's core as well (and aborts it the same way)
        if bool(self.client_cert) != bool(self.client_key):
            given, missing = (
                ("client_cert", "client_key") if self.client_cert else ("client_key", "client_cert")
            )
            raise ValueError(
                f"{missing}: missing while {given} is given; a client certificate goes with "
                "its private key (PEM): give client_cert and client_key, or neither"
            )
        if self.client_cert and self.root_ca is None:
            raise ValueError(
                "client_cert and client_key: given without root_ca; a client certificate is "
                "sent only over TLS, which root_ca (the CA's PEM) turns on"
            )
        if self.client_cert and self.client_key:  # its module reads dates as the server does
            from shixin_check.clients.tls import check_client_certificate

            check_client_certificate(self.client_cert, self.client_key)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def tls(self) -> Any:
        """grpc channel credentials, or None for a plaintext channel."""
        if self.root_ca is None:
            return None
        return grpc.ssl_channel_credentials(self.root_ca, self.client_key, self.client_cert)


def open_channel(
    target: str, credentials: Credentials, retry: RetryPolicy,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> Any:  # fmt: skip
    """A blocking ``grpc.Channel`` to ``target``."""
    options, tls = channel_options(retry, keepalive), credentials.tls()
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls, options=options)


def open_aio_channel(
    target: str, credentials: Credentials, retry: RetryPolicy,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> Any:  # fmt: skip
    """A ``grpc.aio.Channel`` to ``target`` (make it inside the event loop that uses it)."""
    options, tls = channel_options(retry, keepalive), credentials.tls()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls, options=options)
