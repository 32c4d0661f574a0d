"""Builders for small list files: the smallest data that shows each point.

IDs are computed from 17-digit prefixes with their real check characters,
so no test holds a hand-typed ID that a typo could make invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from shixin_check.domain.identity import resident_id_check_char, uscc_check_char


def rid(prefix17: str) -> str:
    """A valid 18-character resident ID from its first 17 digits."""
    return prefix17 + resident_id_check_char(prefix17)


def uscc(prefix17: str) -> str:
    """A valid USCC from its first 17 characters."""
    return prefix17 + uscc_check_char(prefix17)


# Named identities used across the tests.
ZHANG = rid("11010519800101001")  # a listed debtor
LI = rid("31010419750505002")  # listed in a second entry
WANG = rid("44030519900909003")  # legal representative of ACME
ZHAO = rid("11010519850202004")  # never listed
ACME_USCC = uscc("91110105MA0000001")


def person_entry(
    entry_id: str,
    id_number: str,
    name: str,
    *,
    list_type: str = "SHIXIN",
    status: str = "ACTIVE",
    valid_until: str = "2099-12-31",
    published_on: str = "2024-01-15",
    exemptions: list[dict[str, str]] | None = None,
    case_number: str = "(2024)京0105执1001号",
) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "list_type": list_type,
        "subject": {
            "type": "PERSON",
            "name": name,
            "id_type": "RESIDENT_ID",
            "id_number": id_number,
        },
        "related_persons": [],
        "case_number": case_number,
        "court": "北京市朝阳区人民法院",
        "published_on": published_on,
        "filed_on": "2023-12-01",
        "valid_until": valid_until,
        "status": status,
        "exemptions": exemptions or [],
    }


def org_entry(
    entry_id: str,
    uscc_code: str,
    name: str,
    related: list[tuple[str, str, str]],
    **kwargs: Any,
) -> dict[str, Any]:
    """``related``: (role, name, id_number) triples."""
    row = person_entry(entry_id, "", "", **kwargs)
    row["subject"] = {
        "type": "ORGANIZATION",
        "name": name,
        "uscc": uscc_code,
        "legal_representative": related[0][1] if related else "",
    }
    row["related_persons"] = [
        {"role": role, "name": pname, "id_type": "RESIDENT_ID", "id_number": pid}
        for role, pname, pid in related
    ]
    return row


def basic_rows() -> list[dict[str, Any]]:
    """Zhang (debtor), Li (debtor), ACME with Wang as legal representative."""
    return [
        person_entry("E1", ZHANG, "张伟"),
        person_entry("E2", LI, "李娜", list_type="XIANGAO", case_number="(2023)沪0104执88号"),
        org_entry(
            "E3", ACME_USCC, "北京艾克米科技有限公司", [("LEGAL_REPRESENTATIVE", "王芳", WANG)]
        ),
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def delta(seq: int, op: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "op": op, **fields}
