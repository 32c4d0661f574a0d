"""What is checked of a client certificate and its key before a channel is made.

grpc reads them only when it connects. An expired certificate, an encrypted key,
or a certificate and key given the wrong way round then fail every call with
UNAVAILABLE ("failed to connect to all addresses; ... Socket closed", the real
cause only in grpc's own log), which a caller or a gateway retries as a
transient outage: the cause is local and permanent. ``Credentials`` refuses
them with a ``ValueError`` before any call (the console script with one line
naming its flag); a certificate that expires within ``CERTIFICATE_WARN_DAYS``
is a ``ClientCertificateExpiring`` warning, which a caller can filter or turn
into an error like any other.

The dates are read with the server's own reader (``server/settings.py``), so
the client and ``serve --tls-cert`` say the same about the same certificate.
"""

from __future__ import annotations

import datetime as _dt
import re
import ssl
import tempfile
import warnings
from pathlib import Path

from shixin_check.domain.certificates import (
    CERTIFICATE_WARN_DAYS,
    certificate_dates,
    check_certificate_dates,
    expires_in,
)
from shixin_check.domain.errors import ConfigurationError

_CERTIFICATE = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
#: PKCS#8 (``ENCRYPTED PRIVATE KEY``) and the traditional OpenSSL form (a header)
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:[ \t]*4,[ \t]*ENCRYPTED")


class ClientCertificateExpiring(UserWarning):
    """The client certificate expires within ``CERTIFICATE_WARN_DAYS``: every call
    fails from then on, so renew it before."""


def pem_problem(cert: bytes, key: bytes, what: str, key_file: str = "KEY") -> str:
    """What is wrong with ``cert`` and ``key`` as PEM text, "" when nothing seen:
    given the wrong way round, one holding the other's kind, or an encrypted key.
    ``what`` names the pair in the message; ``key_file`` is the key's file name in
    the command that decrypts it. grpc says only "PEM lib" of each of these."""
    cert_is_cert, key_is_key = bool(_CERTIFICATE.search(cert)), bool(_PRIVATE_KEY.search(key))
    cert_is_key, key_is_cert = bool(_PRIVATE_KEY.search(cert)), bool(_CERTIFICATE.search(key))
    if not cert_is_cert and not key_is_key and cert_is_key and key_is_cert:
        return (
            f"{what}: given the wrong way round (a private key as the certificate, a "
            "certificate as the key): swap them"
        )
    if not cert_is_cert:
        given = "a private key is given" if cert_is_key else "no PEM certificate is given"
        return f"{what}: {given} as the certificate (want -----BEGIN CERTIFICATE-----)"
    if not key_is_key:
        given = "a certificate is given" if key_is_cert else "no PEM private key is given"
        return (
            f"{what}: {given} as the key (want -----BEGIN PRIVATE KEY-----, or RSA or EC "
            "PRIVATE KEY)"
        )
    if _ENCRYPTED.search(key):
        return (
            f"{what}: the private key is encrypted (a passphrase protects it), and gRPC "
            f"cannot be given a passphrase: decrypt it once, `openssl pkey -in {key_file} "
            f"-out {key_file}.plain` (it asks for the passphrase), keep the new file "
            "private (chmod 600) and give it instead"
        )
    return ""


def expiry_note(cert_file: Path, what: str, now: _dt.datetime | None = None) -> str:
    """A warning when a certificate in ``cert_file`` expires within
    ``CERTIFICATE_WARN_DAYS``, else "" (its dates are checked already)."""
    now = now or _dt.datetime.now(_dt.UTC)
    expires = min((after for _, after in certificate_dates(cert_file)), default=None)
    if expires is None or expires - now >= _dt.timedelta(days=CERTIFICATE_WARN_DAYS):
        return ""
    return (
        f"{what}: the certificate expires {expires_in(expires - now)}, at {expires:%Y-%m-%d %H:%M:%S} UTC; every "
        "call fails from then on: renew it"
    )


def check_client_certificate(cert: bytes, key: bytes) -> None:
    """``ValueError`` naming ``client_cert`` (or both) unless ``cert`` and ``key``
    are a current certificate chain and its own unencrypted key, and a
    ``ClientCertificateExpiring`` warning when it expires soon.

    ``ssl`` and the date reader take files only: both are written to a private
    temporary folder (mode 0700) for the moment they are read, then removed.
    """
    problem = pem_problem(cert, key, "client_cert and client_key", "client.key")
    if problem:
        raise ValueError(problem)
    with tempfile.TemporaryDirectory(prefix="shixin-client-tls-") as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        try:
            check_certificate_dates("client_cert", cert_file)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_cert_chain(cert_file, key_file, password=b"")  # never a prompt
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise ValueError(
                    "client_cert and client_key: the key is not the certificate's "
                    "(KEY_VALUES_MISMATCH): give the key made with this certificate"
                ) from None
            raise ValueError(
                f"client_cert and client_key: not usable (a PEM certificate chain and its "
                f"unencrypted key): {exc}"
            ) from None
        note = expiry_note(cert_file, "client_cert")
    if note:
        # named at the line that made the CheckClient or AsyncCheckClient
        warnings.warn(note, ClientCertificateExpiring, stacklevel=5)
