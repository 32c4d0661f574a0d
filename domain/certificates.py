"""Certificate dates, read from the PEM files themselves: shared by the server
(its own certificate and the client CA, checked at start and watched while it
serves) and the client library (a client certificate, checked before any call).
``ssl`` decodes no certificate file, and ``cryptography`` is not a dependency,
so the DER is read here (RFC 5280's validity only)."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from shixin_check.domain.errors import ConfigurationError

#: A server certificate that expires sooner than this is named in a WARNING at start.
CERTIFICATE_WARN_DAYS = 14
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----(.*?)-----END", re.S)


def certificate_dates(path: Path) -> list[tuple[_dt.datetime, _dt.datetime]]:
    """(notBefore, notAfter) in UTC of each certificate in the PEM file ``path``, in
    file order (the server's own, then its chain). Read from the DER itself: no public
    call of ``ssl`` decodes a certificate file (only a peer's, on a connection), and
    ``cryptography`` is not a dependency. ``ValueError`` for a block that is not one."""
    import base64

    dates = []
    for block in _PEM_CERTIFICATE.findall(path.read_bytes()):
        try:
            dates.append(_validity(base64.b64decode(block)))
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"certificate {len(dates) + 1} cannot be read ({exc!r})") from None
    return dates


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the content of the DER element at ``at``."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:  # long form: the length's own length, then the length
        size = length & 0x7F
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, at, at + length


def _validity(der: bytes) -> tuple[_dt.datetime, _dt.datetime]:
    """RFC 5280: Certificate = SEQUENCE { tbsCertificate = SEQUENCE { [0] version
    (optional), serialNumber, signature, issuer, validity = SEQUENCE { notBefore,
    notAfter }, ... }, ... }; each time a UTCTime or a GeneralizedTime, in UTC."""
    _, at, _ = _der(der, 0)  # into the Certificate
    _, at, _ = _der(der, at)  # into the TBSCertificate
    if _der(der, at)[0] == 0xA0:  # the version, absent from v1 certificates
        at = _der(der, at)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        at = _der(der, at)[2]
    _, at, _ = _der(der, at)  # into the validity
    times = []
    for _ in range(2):
        tag, start, at = _der(der, at)
        text = der[start:at].decode("ascii")
        if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ: years 50-99 are 19YY (RFC 5280 4.1.2.5.1)
            text = ("19" if text[:2] >= "50" else "20") + text
        elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
            raise ValueError(f"validity: tag {tag:#x} is not a time")
        moment = _dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
        times.append(moment.replace(tzinfo=_dt.UTC))
    return times[0], times[1]


def utc_text(moment: _dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def check_certificate_dates(what: str, path: Path, now: _dt.datetime | None = None) -> None:
    """``ConfigurationError`` naming ``what`` and the dates when a certificate in
    ``path`` has expired or is not valid yet: grpcio serves it all the same, and
    every handshake then fails (the clients say why, the server never does)."""
    now = now or _dt.datetime.now(_dt.UTC)
    try:
        dates = certificate_dates(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{what}: {exc}") from None
    for number, (not_before, not_after) in enumerate(dates, 1):
        which = "the certificate" if number == 1 else f"certificate {number} of the chain"
        valid = f"valid {utc_text(not_before)} to {utc_text(not_after)}"
        if not_after < now:
            problem = f"{which} expired at {utc_text(not_after)} ({valid})"
        elif not_before > now:
            problem = f"{which} is not valid yet ({valid}; the clock here says {utc_text(now)})"
        else:
            continue
        raise ConfigurationError(
            f"{what}: {problem}: every TLS handshake would fail; give a current certificate"
        )


def expires_in(left: _dt.timedelta) -> str:
    """How soon a certificate expires, ``left`` ahead: "in N days" from two days on,
    else "in N hours"."""
    if left.days >= 2:
        return f"in {left.days} days"
    return f"in {left.total_seconds() / 3600:.0f} hours"
