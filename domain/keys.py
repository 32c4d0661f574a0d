"""Keyed subject keys: the only form an ID number takes once it is loaded.

A subject key is BLAKE2b in its keyed mode (a MAC, like HMAC, at a third of
the cost of HMAC-SHA256 here: DESIGN §6) over the identity kind's tag and the
normalised number, 128 bits, with a secret from configuration. Without the
secret nobody can test a guessed ID number against the index, the Bloom
filter, Redis or a log. Names are keyed the same way (64 bits) so that REVIEW
on a name mismatch needs no plaintext name either.

Keys are Python ints: they go straight into the Bloom filter and the sorted
index arrays without conversion. ``key >> 64`` is the prefix both use.

Rotating the secret changes every key: rebuild the index from the list file.

Prefilter keys are a second, separate key space for the Bloom filter that
gateways download (``GetPrefilter``): the same construction over the same
tagged identity, but keyed with ``SubjectKeyer.prefilter_key()``, a key
derived from the secret one way (keyed BLAKE2b of a fixed context). A gateway
is handed that key so it can hash the identities it checks (``PrefilterKeyer``);
it learns neither the secret nor any subject key from it, so the filter and the
key together let it test identities it already knows against the filter and
nothing else: not the index, not Redis, not a log.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.identity import KEY_TAGS, IdType

MIN_SECRET_BYTES = 16
#: BLAKE2b takes a key of at most 64 bytes
MAX_SECRET_BYTES = 64
#: The scheme of ``PrefilterKeyer`` keys, as GetPrefilter's header names it.
PREFILTER_KEY_SCHEME = "blake2b-128/v1"
_PREFILTER_KDF_CONTEXT = b"shixin-check prefilter key v1"
#: BLAKE2b's personalisation of subject keys and of name keys (loader/_rowcheck.c makes
#: the same keys from these)
SUBJECT_PERSON = b"shixin-subject"
NAME_PERSON = b"shixin-name"


class IdentityKeyer(Protocol):
    """What turns a normalised identity into a key: ``SubjectKeyer`` (the index's
    key space) or ``PrefilterKeyer`` (the prefilter's)."""

    def subject_key(self, id_type: IdType | None, number: str) -> int: ...

    def resident_key(self, number: str) -> int | None:
        """``subject_key(RESIDENT_ID, number)`` when this keyer can tell at once that
        ``number`` is a canonical resident ID; None means: normalise it, then key it."""
        ...


class SubjectKeyer:
    """Turns normalised identities and names into keyed hashes."""

    secret: bytes
    _by_tag: dict[IdType | None, Any]

    __slots__ = ("_by_tag", "_name", "fingerprint", "secret")

    def __init__(self, secret: bytes) -> None:
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise ConfigurationError(
                f"the key secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes,"
                f" got {len(secret)}"
            )
        self.secret = secret  # kept for load workers in other processes; never logged
        subject = hashlib.blake2b(key=secret, digest_size=16, person=SUBJECT_PERSON)
        # one hasher per identity kind, its tag already fed in: one update per key
        self._by_tag = {}
        for kind, tag in KEY_TAGS.items():
            tagged = subject.copy()
            tagged.update(tag)
            self._by_tag[kind] = tagged
        self._name = hashlib.blake2b(key=secret, digest_size=8, person=NAME_PERSON)
        # Tells two processes whether they hold the same secret, without revealing it.
        self.fingerprint = hashlib.blake2b(
            secret, digest_size=8, person=b"shixin-fprint"
        ).hexdigest()

    def subject_key(self, id_type: IdType | None, number: str) -> int:
        """128-bit key of a normalised identity (``id_type`` None: an organisation's USCC)."""
        h = self._by_tag[id_type].copy()
        h.update(number.encode())
        return int.from_bytes(h.digest())

    def resident_key(self, number: str) -> int | None:
        """None: in Python, normalising is the check (``loader.columns.CompiledKeyer``
        answers canonical resident IDs at once, in C)."""
        return None

    def hashers(self) -> tuple[dict[IdType | None, Any], Any]:
        """The prepared hashers behind ``subject_key`` (by identity kind) and ``name_key``.

        For a bulk build that wants keys as bytes, not ints (``loader.columns``):
        ``h = hashers[kind].copy(); h.update(number.encode()); h.digest()`` is
        ``subject_key(kind, number)`` big-endian. Copy before updating: these are
        the keyer's own.
        """
        return dict(self._by_tag), self._name

    def prefilter_key(self) -> bytes:
        """The 32-byte key of the prefilter key space, derived one way from the secret.

        Handed to gateways (it is not the secret, and no subject key can be made
        from it); the same for every process holding the same secret.
        """
        kdf = hashlib.blake2b(key=self.secret, digest_size=32, person=b"shixin-pf-kdf")
        kdf.update(_PREFILTER_KDF_CONTEXT)
        return kdf.digest()

    def prefilter_keyer(self) -> PrefilterKeyer:
        """The keyer of this secret's prefilter key space."""
        return PrefilterKeyer(self.prefilter_key())

    def name_key(self, normalized_name: str) -> int:
        """64-bit key of a normalised name; 0 is kept for "no name given"."""
        if not normalized_name:
            return 0
        h = self._name.copy()
        h.update(normalized_name.encode())
        return int.from_bytes(h.digest()) or 1


class PrefilterKeyer:
    """Prefilter keys of normalised identities: what a gateway's Bloom filter holds.

    Made from the key ``SubjectKeyer.prefilter_key()`` gives (a server) or the one a
    GetPrefilter header carries (a gateway); 128-bit, like subject keys, and in
    a key space of their own (``PREFILTER_KEY_SCHEME``).
    """

    __slots__ = ("_by_tag", "key")

    def __init__(self, key: bytes) -> None:
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ConfigurationError(
                f"a prefilter key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes,"
                f" got {len(key)}"
            )
        self.key = key
        keyed = hashlib.blake2b(key=key, digest_size=16, person=b"shixin-prefilter")
        self._by_tag: dict[IdType | None, Any] = {}
        for kind, tag in KEY_TAGS.items():
            tagged = keyed.copy()
            tagged.update(tag)
            self._by_tag[kind] = tagged

    def subject_key(self, id_type: IdType | None, number: str) -> int:
        """128-bit prefilter key of a normalised identity (``id_type`` None: a USCC)."""
        h = self._by_tag[id_type].copy()
        h.update(number.encode())
        return int.from_bytes(h.digest())

    def resident_key(self, number: str) -> int | None:
        """None: normalise the number, then key it (``IdentityKeyer.resident_key``)."""
        return None
