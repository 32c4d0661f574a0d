"""How both clients talk to the service: one channel, its retry policy, credentials.

Retries are gRPC's own (the service config's ``retryPolicy``, run by grpcio's
C core), never a loop here, and only where they are safe. A check is an
idempotent read, so a call refused before it was decided may be sent again:

- ``UNAVAILABLE``: unreachable, shutting down, or no list loaded yet
  (another replica, or the same one a moment later, may answer);
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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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
        return ["UNAVAILABLE", *(["RESOURCE_EXHAUSTED"] if self.on_rate_limit else [])]


#: The policy of both clients unless they are given another.
DEFAULT_RETRY = RetryPolicy()
#: No retries at all: every failure is raised at once.
NO_RETRY = RetryPolicy(max_attempts=1)


def service_config(retry: RetryPolicy) -> str:
    """The service config JSON for ``grpc.service_config``."""
    method: dict[str, Any] = {"name": [{"service": SERVICE}]}
    if retry.max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": f"{retry.initial_backoff:.9f}s",
            "maxBackoff": f"{retry.max_backoff:.9f}s",
            "backoffMultiplier": retry.multiplier,
            "retryableStatusCodes": retry.status_codes(),
        }
    config: dict[str, Any] = {"methodConfig": [method]}
    if retry.max_attempts > 1:
        # per server: 10 tokens, a failure takes one, an answer gives one back; no retries
        # while 5 or fewer are left (failures outnumbering answers by five, lately)
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 1}
    return json.dumps(config)


def channel_options(retry: RetryPolicy) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1 if retry.max_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry)),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ]


#: what an API key may hold: a header value grpcio sends (printable ASCII, no space)
API_KEY = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class Credentials:
    """An API key (``authorization: Bearer KEY``) and TLS material, all optional.

    ``root_ca`` (PEM bytes) turns TLS on; ``client_cert`` and ``client_key``
    add a client certificate for mutual TLS.
    """

    api_key: str = ""
    root_ca: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None

    def __post_init__(self) -> None:
        # grpcio refuses such a header only when a call is made, with INTERNAL
        if self.api_key and not API_KEY.fullmatch(self.api_key):
            raise ValueError("api_key: must be printable ASCII without spaces")

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def tls(self) -> Any:
        """grpc channel credentials, or None for a plaintext channel."""
        if self.root_ca is None:
            return None
        return grpc.ssl_channel_credentials(self.root_ca, self.client_key, self.client_cert)


def open_channel(target: str, credentials: Credentials, retry: RetryPolicy) -> Any:
    """A blocking ``grpc.Channel`` to ``target``."""
    options, tls = channel_options(retry), credentials.tls()
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls, options=options)


def open_aio_channel(target: str, credentials: Credentials, retry: RetryPolicy) -> Any:
    """A ``grpc.aio.Channel`` to ``target`` (make it inside the event loop that uses it)."""
    options, tls = channel_options(retry), credentials.tls()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls, options=options)
