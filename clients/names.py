"""Enum values by their exact names, as clerks, shells and JSON files give them.

A name is taken whole, with or without the enum's prefix and in any case:
``SOFT_SLEEPER`` and ``rail_seat_soft_sleeper`` are ``RAIL_SEAT_SOFT_SLEEPER``.
Nothing is matched by a part of a name, so ``SOFT_SLEEPER`` can never become
``DELUXE_SOFT_SLEEPER`` and ``SLEEPER`` is refused with every valid name.
"""

from __future__ import annotations

import os
from typing import Any


class UnknownName(ValueError):
    """A name that is no value of the enum; the message lists every valid one."""


def enum_name(enum: Any, text: str, what: str, *, unspecified: bool = False) -> str:
    """The exact value name of the proto enum ``enum`` (a descriptor) for ``text``.

    ``text`` is the full name or the name without the enum's common prefix
    (``SOFT_SLEEPER`` for ``RAIL_SEAT_SOFT_SLEEPER``), in any case, ``-`` or a
    space read as ``_``. ``what`` names the field or flag in the error:
    ``UnknownName("--seat: 'SLEEPER' is not one of BUSINESS, PREMIER, ...")``.
    The zero value (``RAIL_SEAT_UNSPECIFIED``) is taken, by its exact name,
    only with ``unspecified=True``: a program may send what the wire allows
    (and the server then refuses or defaults it), a clerk may not pick it.
    """
    names = [v.name for v in enum.values if v.number]
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind("_") + 1] if len(names) > 1 else ""
    wanted = text.strip().upper().replace("-", "_").replace(" ", "_")
    zero = [v.name for v in enum.values if not v.number] if unspecified else []
    for name in [*names, *zero]:
        if wanted in (name, name.removeprefix(prefix)):
            return str(name)
    valid = ", ".join(n.removeprefix(prefix) for n in names)
    raise UnknownName(f"{what}: {text!r} is not one of {valid}")


def enum_number(enum: Any, value: str | int, what: str, *, unspecified: bool = False) -> int:
    """The number of ``value``: a name as ``enum_name`` reads it, or a number as is."""
    if isinstance(value, int):
        return value
    name = enum_name(enum, value, what, unspecified=unspecified)
    return int(enum.values_by_name[name].number)
