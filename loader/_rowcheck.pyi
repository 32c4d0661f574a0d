"""The load's row checker in C (``loader/_rowcheck.c``): see ``loader/columns.py``."""

from typing import Any

SOURCE_DIGEST: str

def configure(
    *, list_types: dict[str, Any], statuses: dict[str, Any], active: Any, roles: dict[str, Any],
    id_types: dict[str, Any], resident: Any, channels: dict[str, Any], days: dict[str, int],
    debtor: Any, exemption: type, no_end: int, provinces: frozenset[str],
    birth_dates: frozenset[str],
) -> None: ...  # fmt: skip
def plain(row: dict[str, Any], line: int, /) -> tuple[Any, Any, Any] | None: ...
def masks(numbers: list[str], width: int, /) -> bytes | None: ...
