"""The load's row checker and column builder in C (``loader/_rowcheck.c``): see
``loader/columns.py``."""

from collections.abc import Callable, Sequence
from typing import Any

SOURCE_DIGEST: str

def configure(
    *, list_types: dict[str, Any], statuses: dict[str, Any], active: Any, roles: dict[str, Any],
    id_types: dict[str, Any], resident: Any, days: dict[str, int], debtor: Any, no_end: int,
    provinces: frozenset[str],
    birth_dates: frozenset[str], loads: Callable[[bytes], Any], decode_error: type[Exception],
    entry_fields: frozenset[str], subject_fields: frozenset[str], related_fields: frozenset[str],
) -> None: ...  # fmt: skip
def plain(row: dict[str, Any], line: int, /) -> tuple[Any, Any, Any] | None: ...
def masked_json(numbers: list[str], /) -> bytes | None: ...
def subject_fields(
    lo: int, hi: int, bits: int, k_hi: Any, raw_keys: Any, m_entry: Any, m_role: Any,
    m_name: Any, m_mask: Any, width: int, text: Any, e_text_at: Any, e_type: Any,
    e_status: Any, e_listed: Any, e_valid: Any, e_court: Any, courts: list[bytes],
    exemptions: dict[int, bytes], debtor: int, /,  # exemptions: JSON by key row
) -> list[tuple[int, dict[bytes, bytes]]]: ...  # fmt: skip

class Keyer:
    def __init__(
        self, *, secret: bytes, tags: dict[Any, bytes], subject_person: bytes, name_person: bytes
    ) -> None: ...
    def subject_key(self, id_type: Any, number: str, /) -> int: ...
    def name_key(self, normalized_name: str, /) -> int: ...
    def resident_key(self, number: str, /) -> int | None: ...

class Columns:
    keeping: bool
    @property
    def entries(self) -> int: ...
    @property
    def taken(self) -> int: ...
    def __init__(
        self,
        *,
        keyer: Keyer,
        name_key: Callable[[str], bytes],
        mask: Callable[[str], str],
        width: int,
    ) -> None: ...
    def take(self, row: Any, line: int, /) -> bool: ...
    def feed(self, lines: list[bytes], start: int, first_line: int, /) -> int: ...
    def put(self, entry: tuple[Any, ...], subjects: Sequence[Any], exemptions: Any, /) -> None: ...
    def columns(self) -> tuple[dict[str, bytes], dict[str, int], dict[int, tuple[Any, ...]]]: ...
