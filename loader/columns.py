"""Snapshot rows straight into index columns: the load's fast path.

A first load is one row at a time in Python, so what a row costs is what the
load costs. ``parse_entry`` then ``BaseBuilder.add`` made a ``ListEntry``, its
``ListedSubject`` tuples and an ``Exemption`` per exemption, called a helper
per field and hashed, masked and appended one value at a time. Here:

- ``_rowcheck.Columns``, in C (``loader/_rowcheck.c``, built by setup.py),
  holds the columns: its ``feed`` parses a block's lines and takes each row
  whose values need no normalising (the feed's rows nearly all) straight
  into them, checked exactly as ``_plain`` checks and keyed by
  ``_rowcheck.Keyer`` (``CompiledKeyer``), without a Python frame; the rows it
  declines are checked here and stored by its ``put``;
- ``ColumnBuilder._plain`` checks a row in one function, with the checks of
  the common fields written out and the same domain functions
  (``normalize_person_id``, ``normalize_name``, ``mask_id``) doing every
  normalisation; a canonical USCC is checked in one C call (``plain_uscc``);
- where the extension is not built, a good row is staged as a tuple, and
  every ``FLUSH_ROWS`` rows the staged ones become the same columns at once,
  hashing and encoding through ``map`` over C functions (``_flush``);
- ``parts()`` sorts the chunk's rows in the worker, so the one process that
  merges the chunks only merges sorted runs (``index_memory.merge_parts``).

It changes nothing of what a load accepts, stores or reports. ``_plain``
accepts only rows ``parse_entry`` accepts, with the same values; anything it
is not sure of (a missing field, a value of another type, a bad row) raises
``_NotFast`` and goes through ``parse_entry`` itself, so every error keeps its
line, field and wording. ``tests/test_loader.py`` holds both paths to
``parse_entry`` and ``BaseBuilder``, with and without the C checker, on every
field of a row made bad in a dozen ways (``tests/test_rowcheck.py`` holds the
C checker to ``_plain`` and the C columns to the Python ones directly); the
compiled files of a million-row list are byte for byte those the old path
wrote.
"""

from __future__ import annotations

import hashlib
import logging
import re
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson

from shixin_check.domain import identity
from shixin_check.domain.errors import ConfigurationError, InvalidInput, RowError
from shixin_check.domain.identity import (
    CONTROL_CHARACTERS,
    KEY_TAGS,
    IdType,
    mask_id,
    normalize_name,
    normalize_person_id,
    normalize_uscc,
)
from shixin_check.domain.keys import NAME_PERSON, SUBJECT_PERSON, SubjectKeyer
from shixin_check.domain.model import NO_END, EntryStatus, Role
from shixin_check.loader.index_memory import (
    _COLUMNS,
    _MASK_WIDTH,
    BaseParts,
    KeyedExemptions,
    keyed_exemptions,
    new_bloom,
)
from shixin_check.loader.listfile import (
    _DAYS,
    _ID_TYPES,
    _LIST_TYPES,
    _RELATED_ROLES,
    _STATUSES,
    ENTRY_FIELDS,
    PUBLISHED_AHEAD_DAYS,
    RELATED_FIELDS,
    SUBJECT_FIELDS,
    _date,
    as_resident,
    parse_entry,
    today,
)

if TYPE_CHECKING:
    from shixin_check.loader._rowcheck import Columns, Keyer

log = logging.getLogger(__name__)

_RESIDENT_ID = IdType.RESIDENT_ID
# listfile's tables, asked of any JSON value: one that is not a key gives None, and
# one that cannot be (a list, an object) raises TypeError: the row is not plain
_day_of = cast("Callable[[Any], int | None]", _DAYS.get)
_role_of = cast("Callable[[Any], Role | None]", _RELATED_ROLES.get)
_ACTIVE = _STATUSES["ACTIVE"]
_DEBTOR = Role.DEBTOR
#: distinct names whose key a builder remembers (names repeat), before it starts afresh:
#: a bigger table's look-ups miss the CPU's caches and cost what they save
_NAME_CACHE = 50_000

#: (role, name, id type, normalised number): a ``ListedSubject``'s fields
Subject = tuple[Role, str, IdType | None, str]
#: an entry as ``ColumnBuilder`` stages it: (entry_id, line, list type, status,
#: published_on, valid_until, court, text: entry_id \x1f case_number \x1f organisation)
_Staged = tuple[str, int, int, int, int, int, str, str]


def _staged(
    entry_id: str, line: int, list_type: int, status: int, case_number: str, court: str,
    published: int, valid_until: int, organization: str,
) -> _Staged:  # fmt: skip
    text = f"{entry_id}\x1f{case_number}\x1f{organization}"
    return (entry_id, line, list_type, status, published, valid_until, court, text)


class _NotFast(Exception):
    """The row is not in the plain form: ``parse_entry`` decides."""


_controlled = CONTROL_CHARACTERS.search


def _text(value: Any) -> str:
    """A required text field as ``listfile._text`` takes it; anything else is not fast."""
    if type(value) is not str or not value:
        raise _NotFast
    text = value.strip()
    if not text or _controlled(text) is not None:
        raise _NotFast
    return text


def _day(obj: dict[str, Any], name: str, required: bool = False) -> int:
    """``listfile._date``, the common case (a date already seen) without a call."""
    day = _day_of(obj.get(name))  # an unhashable value: TypeError, not fast
    if day is not None:
        return day
    return _date(obj, name, required=required)  # InvalidInput: not fast either


def _person(obj: Any, role: Role, fields: frozenset[str] = RELATED_FIELDS) -> Subject:
    # a key that is none of the fields: parse_entry names it (listfile._known)
    if type(obj) is not dict or not obj.keys() <= fields:
        raise _NotFast
    kind = obj.get("id_type")
    # missing, null or "": the default; any other value must name a type (listfile._choice)
    if kind is None or kind == "":
        id_type: IdType | None = _RESIDENT_ID
    else:
        id_type = _ID_TYPES.get(kind) if type(kind) is str else None
    if id_type is None:
        raise _NotFast
    number = normalize_person_id(id_type, _text(obj.get("id_number")))
    if id_type is not _RESIDENT_ID:
        id_type, number = as_resident(id_type, number)
    return role, _text(obj.get("name")), id_type, number


# GB 32100, as ``domain.identity.normalize_uscc`` checks it, for a code already in
# canonical form: that function spends 5 µs a code (a regex substitution and a
# weighted sum in Python), a quarter of a row's validation. The weights are
# 3**i mod 31 and 34 = 3 (mod 31), so the weighted sum is the code, its values
# written as base-34 digits, read backwards by ``int``, mod 31: one C call.
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_AS_DIGITS = str.maketrans(_USCC_ALPHABET, "0123456789ABCDEFGHIJKLMNOPQRSTU")
_USCC_SHAPE = re.compile(r"[0-9A-HJ-NPQRTUW-Y]{2}[0-9]{6}[0-9A-HJ-NPQRTUW-Y]{10}\Z")


def plain_uscc(code: str) -> bool:
    """True when ``normalize_uscc(code)`` is ``code`` itself: canonical and valid."""
    if len(code) != 18 or _USCC_SHAPE.match(code) is None:
        return False
    total = int(code[16::-1].translate(_USCC_AS_DIGITS), 34) % 31
    return code[17] == _USCC_ALPHABET[(31 - total) % 31]


def compiled_module() -> ModuleType | None:
    """``_rowcheck``, the row checker in C, configured with the tables above; None
    where it was not built (no compiler at install) or was built from an older
    ``_rowcheck.c`` than the one beside it (then run ``scripts/setup`` again).

    Its ``plain`` returns what ``_plain`` returns for a row in the plain form,
    and None for anything it is not sure of, which ``_plain`` then decides: it
    takes the common rows whole (the feed's rows, gen-data's) at a fraction of
    the cost. Its ``masks`` packs ``mask_id`` of many numbers at once.
    """
    try:
        from shixin_check.loader import _rowcheck
    except ImportError:
        return None
    source = Path(__file__).with_name("_rowcheck.c")  # in a checkout; a wheel installs no source
    if source.exists():
        digest = hashlib.blake2b(source.read_bytes(), digest_size=16).hexdigest()
        if digest != _rowcheck.SOURCE_DIGEST:
            log.warning("%s changed since it was compiled: rows are checked in Python "
                        "until scripts/setup builds it again", source)  # fmt: skip
            return None
    _rowcheck.configure(
        list_types=_LIST_TYPES, statuses=_STATUSES, active=_ACTIVE, roles=_RELATED_ROLES,
        id_types=_ID_TYPES, resident=_RESIDENT_ID, days=_DAYS,
        debtor=_DEBTOR, no_end=NO_END,
        provinces=identity._PROVINCES, birth_dates=identity._BIRTH_DATES,
        loads=orjson.loads, decode_error=orjson.JSONDecodeError, entry_fields=ENTRY_FIELDS,
        subject_fields=SUBJECT_FIELDS, related_fields=RELATED_FIELDS,
    )  # fmt: skip
    return _rowcheck


_rowcheck = compiled_module()


def compiled() -> ModuleType | None:
    """``_rowcheck``, configured, as ``compiled_module`` found it at import; or None."""
    return _rowcheck


#: what checked a load's rows, for its log line (versions.build_snapshot)
ROW_CHECKS = "row checker in C" if _rowcheck else "rows checked in Python: _rowcheck not built"


def _never_takes(obj: Any, line: Any) -> bool:  # Columns.take where C is not built
    return False


def _never_feeds(lines: list[bytes], start: int, first_line: int) -> int:  # Columns.feed
    return start


def _key_of_name(hasher: Any, name: str) -> bytes:
    """``SubjectKeyer.name_key(normalize_name(name))``, as 8 bytes big-endian."""
    normal = normalize_name(name)
    if not normal:
        return _NO_NAME
    hasher = hasher.copy()
    hasher.update(normal.encode())
    digest: bytes = hasher.digest()
    return digest if digest != _NO_NAME else _ONE


class CompiledKeysDiffer(ConfigurationError):
    """The C keyer's keys are not ``SubjectKeyer``'s: nothing may be keyed with it
    (a build of ``loader/_rowcheck.c`` that does not match the Python beside it)."""


#: what the C keyer and the Python keyer must key alike before either is used: any text
#: does (no real identity is needed, nor wanted, in the code)
_PROBE_NUMBER = "keys-probe-0123456789"
_PROBE_NAMES = ("张伟", "阿依古丽·买买提", "JOHNSMITH", "")
_REBUILD = "the extension does not match this code: run scripts/setup (or reinstall) to rebuild it"


class CompiledKeyer(SubjectKeyer):
    """``SubjectKeyer`` with its subject and name keys made in C (``_rowcheck.Keyer``,
    BLAKE2b with the secret's key block compressed once): a third of the time a key.

    The same keys: before it is used, one key of each identity kind and four names
    are made both ways, and a difference raises ``CompiledKeysDiffer`` (keys that the
    Python code would not make could not be found: a listed subject answered as
    unlisted). ``keyer_for`` gives one where the extension is built.
    """

    __slots__ = ("compiled",)

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        assert _rowcheck is not None
        self.compiled: Keyer = _rowcheck.Keyer(
            secret=secret, tags=KEY_TAGS, subject_person=SUBJECT_PERSON, name_person=NAME_PERSON
        )
        for kind in KEY_TAGS:
            if self.compiled.subject_key(kind, _PROBE_NUMBER) != super().subject_key(
                kind, _PROBE_NUMBER
            ):
                raise CompiledKeysDiffer(
                    f"loader/_rowcheck.c keys {kind} numbers otherwise: {_REBUILD}"
                )
        for name in _PROBE_NAMES:
            if self.compiled.name_key(name) != super().name_key(name):
                raise CompiledKeysDiffer(f"loader/_rowcheck.c keys names otherwise: {_REBUILD}")

    def subject_key(self, id_type: IdType | None, number: str) -> int:
        return self.compiled.subject_key(id_type, number)

    def name_key(self, normalized_name: str) -> int:
        return self.compiled.name_key(normalized_name)

    def resident_key(self, number: str) -> int | None:
        # normalize_resident_id's fast path and the key in one C call, for the checks'
        # common case (server.convert.to_query); None for anything else
        return self.compiled.resident_key(number)


def keyer_for(secret: bytes) -> SubjectKeyer:
    """The keyer of ``secret``: its keys made in C where the extension is built."""
    return CompiledKeyer(secret) if _rowcheck else SubjectKeyer(secret)


def _compiled_columns(keyer: SubjectKeyer, name_hasher: Any) -> Columns:
    """A ``_rowcheck.Columns`` keying rows as ``keyer`` does (a ``CompiledKeyer``'s
    C keyer, checked when it was made)."""
    assert _rowcheck is not None
    compiled = keyer if isinstance(keyer, CompiledKeyer) else CompiledKeyer(keyer.secret)
    columns: Columns = _rowcheck.Columns(
        keyer=compiled.compiled, name_key=partial(_key_of_name, name_hasher), mask=mask_id,
        width=_MASK_WIDTH,
    )  # fmt: skip
    return columns


_blake2b = type(hashlib.blake2b())
_copy, _update, _digest = _blake2b.copy, _blake2b.update, _blake2b.digest
_ENTRY_HASHER = hashlib.blake2b(digest_size=8)  # entry_id_hash, as bytes: copied, never updated


def _transposed(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Columns of equal-length tuples (``zip(*rows)`` is several times slower on many rows)."""
    return [list(map(itemgetter(i), rows)) for i in range(width)]


_plain_name = identity._PLAIN_NAME.match  # normalize_name's test for a name already normal
_NO_NAME = bytes(8)  # name_key 0: no name given
_ONE = (1).to_bytes(8)  # a digest of zeros: name_key keeps 0 for no name, so it is 1


class ColumnBuilder:
    """Validated snapshot rows as the flat columns of ``BaseParts``.

    ``add`` takes a parsed row (a JSON object) and returns its ``RowError``,
    or None once the row is in the columns. After the first bad row, set
    ``keeping`` to False: rows are still validated, no longer stored.

    A good row is first staged as it is (a tuple for the entry, one for each
    subject); every ``FLUSH_ROWS`` rows the staged ones become columns in bulk
    (``_flush``): hashing, masking and encoding through ``map`` over C
    functions, with no Python frame per value.
    """

    FLUSH_ROWS = 1000  # more and the staged values no longer stay in the CPU's caches

    def __init__(self, keyer: SubjectKeyer, expected: int = 0) -> None:
        self._by_tag, self._name = keyer.hashers()  # keys as digests, not ints
        self._keyer = keyer  # for a row's exemptions (rare: parse_entry's rows only)
        self._expected = expected
        self._keeping = True
        self._fast = 0  # rows _plain took
        # the columns in C, when built (tests take _rowcheck away): take() checks and
        # stores a plain row, put() stores one checked here
        self._columns = _compiled_columns(keyer, self._name) if _rowcheck else None
        if self._columns is not None:
            self.take: Callable[[Any, int], bool] = self._columns.take
            self.feed: Callable[[list[bytes], int, int], int] = self._columns.feed
            self._store = self._columns.put
        else:
            self.take, self.feed, self._store = _never_takes, _never_feeds, self._stage
        self._entries: list[_Staged] = []
        self._subjects: list[Subject] = []
        self._rows: list[int] = []  # the entry row of each staged subject
        self.entries = 0  # rows already flushed into the columns
        self.keys = bytearray()  # subject keys, 16 bytes big-endian: k_hi, k_lo
        self.m_entry = array("I")
        self.m_role = bytearray()
        self.m_name = bytearray()  # 8 bytes big-endian
        self.m_mask = bytearray()  # _MASK_WIDTH bytes a key
        self.e_idh = bytearray()  # 8 bytes big-endian
        self.e_line = array("I")
        self.e_type = bytearray()
        self.e_status = bytearray()
        self.e_listed = array("i")
        self.e_valid = array("i")
        self.e_court = array("I")
        self.text_ends = array("Q")
        self.texts: list[bytes] = []
        self._text_length = 0
        self.courts: dict[str, int] = {}
        self.exemptions: dict[int, KeyedExemptions] = {}
        self._names: dict[str, bytes] = {}

    @property
    def keeping(self) -> bool:
        """False after a bad row: rows are still validated, no longer stored."""
        return self._keeping

    @keeping.setter
    def keeping(self, keep: bool) -> None:
        self._keeping = keep
        if self._columns is not None:
            self._columns.keeping = keep

    @property
    def fast_rows(self) -> int:
        """Rows taken without parse_entry (tests look)."""
        return self._fast + (self._columns.taken if self._columns is not None else 0)

    def read(self, item: dict[str, Any] | RowError, line: int) -> RowError | None:
        """A row as ``listfile.iter_rows`` gives it (an object or its error): ``add``
        an object; the error of a bad row, after which the builder stops keeping."""
        error = item if isinstance(item, RowError) else self.add(item, line)
        if error is not None:
            self.keeping = False  # once a row is bad the build is moot: just keep validating
        return error

    def add(self, obj: dict[str, Any], line: int) -> RowError | None:
        """Validate one row and, while ``keeping``, store it; its error, if bad.

        A load calls ``take`` first, which takes the plain rows in C (where built)
        without this frame, and then this for the rows it declines."""
        subjects: Sequence[Subject]
        try:
            if self.take(obj, line):
                return None
            entry, subjects, exemptions = self._plain(obj, line)
        except (_NotFast, InvalidInput, TypeError):
            try:
                parsed = parse_entry(obj)
            except InvalidInput as exc:
                return RowError(line, exc.field, exc.problem)
            subjects = parsed.subjects()
            exemptions = keyed_exemptions(parsed, self._keyer) if parsed.exemptions else ()
            entry = _staged(
                parsed.entry_id, line, parsed.list_type, parsed.status, parsed.case_number,
                parsed.court, parsed.published_on, parsed.valid_until,
                parsed.organization_name,
            )  # fmt: skip
        else:
            self._fast += 1
        if self._keeping:
            self._store(entry, subjects, exemptions)
        return None

    def _stage(
        self, entry: _Staged, subjects: Sequence[Subject], exemptions: KeyedExemptions
    ) -> None:
        """A checked row into the columns, in Python: staged, flushed every ``FLUSH_ROWS``."""
        row = len(self._entries) + self.entries
        self._entries.append(entry)
        if exemptions:
            self.exemptions[row] = exemptions
        self._subjects += subjects
        self._rows += [row] * len(subjects)
        if len(self._entries) >= self.FLUSH_ROWS:
            self._flush()

    def _plain(
        self, obj: dict[str, Any], line: int
    ) -> tuple[_Staged, list[Subject], KeyedExemptions]:
        """What ``parse_entry`` makes of a row in the plain form, as ``add`` stages it,
        or ``_NotFast``: then ``parse_entry`` itself decides. A row with exemptions is
        never plain: each names a person to find among the entry's subjects and key
        (``listfile.exempted_in``), and one row in a hundred has any.

        The checks of ``_text`` and ``_day`` are written out for the entry's own
        fields: a call a field is a tenth of a row's time.
        """
        get = obj.get
        if not obj.keys() <= ENTRY_FIELDS:  # a key that is no field: parse_entry names it
            raise _NotFast
        value = get("entry_id")
        if type(value) is not str or not value:
            raise _NotFast
        entry_id = value.strip()
        if not entry_id:
            raise _NotFast
        value = get("list_type")
        list_type = _LIST_TYPES.get(value) if type(value) is str else None
        value = get("status")
        status: EntryStatus | None
        if value is None or value == "":  # listfile._choice's default
            status = _ACTIVE
        else:
            status = _STATUSES.get(value) if type(value) is str else None
        subject = get("subject")
        if list_type is None or status is None or type(subject) is not dict:
            raise _NotFast
        people = get("related_persons")
        if people is None or people == "" or people == []:  # none (listfile._listed)
            people = ()
        elif type(people) is not list:
            raise _NotFast
        kind = subject.get("type")
        organization = ""
        if kind == "PERSON":
            if people:
                raise _NotFast
            subjects: list[Subject] = [_person(subject, _DEBTOR, SUBJECT_FIELDS)]
        elif kind == "ORGANIZATION":
            if not subject.keys() <= SUBJECT_FIELDS:
                raise _NotFast
            organization = _text(subject.get("name"))
            uscc = _text(subject.get("uscc"))
            if not plain_uscc(uscc):
                uscc = normalize_uscc(uscc)
            subjects = [(_DEBTOR, organization, None, uscc)]
            if people:
                for person in people:
                    if type(person) is not dict:
                        raise _NotFast
                    role = person.get("role")
                    found = _role_of(role) if type(role) is str else None
                    if found is None:
                        raise _NotFast
                    subjects.append(_person(person, found))
        else:
            raise _NotFast
        value = get("exemptions")
        if value is not None and value != "" and value != []:  # any (listfile._listed)
            raise _NotFast
        # dates: an unhashable value raises TypeError here, a bad one InvalidInput in _date
        published = _day_of(get("published_on"))
        if published is None:
            published = _date(obj, "published_on")
        if published > today() + PUBLISHED_AHEAD_DAYS:  # parse_entry words it
            raise _NotFast
        valid_until = _day_of(get("valid_until"))
        if not valid_until:  # 0 too: 1970-01-01, like no date, is no end (parse_entry)
            valid_until = _date(obj, "valid_until") or NO_END
        if published and valid_until < published:
            raise _NotFast
        if _day_of(get("filed_on")) is None:
            _date(obj, "filed_on", early_ok=True)  # as parse_entry: a placeholder read by nothing
        value = get("case_number")
        if type(value) is not str or not value:
            raise _NotFast
        case_number = value.strip()
        value = get("court")
        if type(value) is not str or not value:
            raise _NotFast
        court = value.strip()
        if not case_number or not court:
            raise _NotFast
        if _controlled(entry_id) or _controlled(case_number) or _controlled(court):
            raise _NotFast
        text = f"{entry_id}\x1f{case_number}\x1f{organization}"
        entry = (entry_id, line, list_type, status, published, valid_until, court, text)
        return entry, subjects, ()

    def _flush(self) -> None:
        """The staged rows into the columns, each column in one pass."""
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        self.entries += len(entries)
        ids, lines, types, statuses, published, valid, courts, texts = _transposed(entries, 8)
        hashers = list(map(_copy, repeat(_ENTRY_HASHER, len(ids))))  # copies: cheaper than new
        deque(map(_update, hashers, map(str.encode, ids)), maxlen=0)
        self.e_idh += b"".join(map(_digest, hashers))
        self.e_line.extend(lines)
        self.e_type.extend(types)
        self.e_status.extend(statuses)
        self.e_listed.extend(published)
        self.e_valid.extend(valid)
        known = self.courts
        for court in dict.fromkeys(courts):  # numbered in order of first appearance
            known.setdefault(court, len(known))
        self.e_court.extend(map(known.__getitem__, courts))
        encoded = list(map(str.encode, texts))
        ends = np.cumsum(np.fromiter(map(len, encoded), "<u8", len(encoded))) + self._text_length
        self._text_length = int(ends[-1])
        self.text_ends.frombytes(ends.tobytes())
        self.texts.append(b"".join(encoded))
        if not self._subjects:
            return
        roles, names, tags, numbers = _transposed(self._subjects, 4)
        self.m_entry.extend(self._rows)
        self._subjects, self._rows = [], []
        hashers = list(map(_copy, map(self._by_tag.__getitem__, tags)))
        deque(map(_update, hashers, map(str.encode, numbers)), maxlen=0)
        self.keys += b"".join(map(_digest, hashers))
        self.m_role.extend(roles)
        self.m_name += self._name_keys(names)
        # every normalised number is ASCII (a resident ID, a USCC, 5-20 letters and
        # digits) and at most _MASK_WIDTH long, and so is its mask: one byte a character
        masks = list(map(mask_id, numbers))
        packed = "".join([m.ljust(_MASK_WIDTH) for m in masks]).encode()
        if len(packed) != len(masks) * _MASK_WIDTH:  # never: as BaseBuilder.add, then
            packed = b"".join(m.encode().ljust(_MASK_WIDTH)[:_MASK_WIDTH] for m in masks)
        self.m_mask += packed

    def _name_keys(self, names: list[str]) -> bytes:
        """``_name_key`` of each name, 8 bytes each, remembering the distinct ones.

        A name already normal (CJK ideographs and U+00B7 only: most of them) is
        hashed as it is, all of them in one pass of ``map`` over C functions."""
        cache = self._names
        if len(cache) > _NAME_CACHE:
            cache.clear()
        new = [name for name in dict.fromkeys(names) if name not in cache]
        plain = list(filter(_plain_name, new))
        hashers = list(map(_copy, repeat(self._name, len(plain))))
        deque(map(_update, hashers, map(str.encode, plain)), maxlen=0)
        digests = list(map(_digest, hashers))
        if _NO_NAME in digests:  # name_key keeps 0 for no name (_name_key)
            digests = [_ONE if d == _NO_NAME else d for d in digests]
        cache.update(zip(plain, digests, strict=True))
        if len(plain) < len(new):
            for name in new:
                if name not in cache:
                    cache[name] = self._name_key(name)
        return b"".join(map(cache.__getitem__, names))

    def _name_key(self, name: str) -> bytes:
        """``SubjectKeyer.name_key(normalize_name(name))``, as 8 bytes big-endian."""
        return _key_of_name(self._name, name)

    def _raw(self) -> tuple[dict[str, Any], dict[str, int], dict[int, tuple[Any, ...]]]:
        """The columns as they were built (keys and name keys big-endian), the courts
        and the exemptions: from C, or flushed here."""
        if self._columns is not None:
            return self._columns.columns()
        self._flush()
        names = ("keys", "m_entry", "m_role", "m_name", "m_mask", "e_idh", "e_line",
                 "e_type", "e_status", "e_listed", "e_valid", "e_court", "text_ends")  # fmt: skip
        raw = {name: getattr(self, name) for name in names}
        raw["text"] = b"".join(self.texts)
        return raw, self.courts, self.exemptions

    def parts(self) -> BaseParts:
        """The columns so far, as a load worker sends them back.

        Sorted here, in the worker, as far as a chunk can be: its key rows by
        the keys' high halves and ``id_order``, its entry rows by entry_id
        hash (both stable sorts). ``merge_parts`` then only merges sorted runs,
        which its stable sort does several times faster than sorting them whole
        in the one process that cannot share the work.
        """
        raw, courts, exemptions = self._raw()
        keys = np.frombuffer(raw["keys"], ">u8").reshape(-1, 2).astype("<u8")
        order = np.argsort(keys[:, 0], kind="stable")
        keys = keys[order]
        ends = np.frombuffer(raw["text_ends"], "<u8")
        text_at = np.zeros(len(ends) + 1, dtype="<u8")
        text_at[1:] = ends
        e_idh = np.frombuffer(raw["e_idh"], ">u8").astype("<u8")

        def by_key(column: Any, dtype: str, width: int = 1) -> bytes:
            return np.frombuffer(column, dtype).reshape(len(order), width)[order].tobytes()

        columns: dict[str, bytes] = {
            "k_hi": keys[:, 0].tobytes(),
            "k_lo": keys[:, 1].tobytes(),
            "m_entry": by_key(raw["m_entry"], "<u4"),
            "m_role": by_key(raw["m_role"], "u1"),
            "m_name": np.frombuffer(raw["m_name"], ">u8")[order].astype("<u8").tobytes(),
            "m_mask": by_key(raw["m_mask"], "u1", _MASK_WIDTH),
            "e_idh": e_idh.tobytes(),
            "id_order": np.argsort(e_idh, kind="stable").astype("<u4").tobytes(),
            "e_text_at": text_at.tobytes(),
            "text": bytes(raw["text"]),
        }
        for name in _COLUMNS:
            if name not in columns:
                columns[name] = bytes(raw[name])
        bloom = new_bloom(self._expected)
        bloom.update(keys[:, 0].tolist())  # the high halves, as BaseBuilder adds them
        return BaseParts(
            columns=columns,
            courts=list(courts),
            exemptions=exemptions,
            bloom=bloom.save_bytes(),
        )
