"""The hit log and the audit log: evidence, not application logging.

Hit log: one JSON line for every check that matched a listed subject,
whatever the decision, written with a single ``os.write`` to an ``O_APPEND``
file before the answer is returned. Once ``write`` returns the record is in
the kernel: a process killed after that (even by SIGKILL) loses nothing a
client was answered about. Power loss can still lose the page cache; fsync
per record is the later audit issue's setting.

Audit log (first form): one JSON line per call, refused ones included.

Neither ever holds a plaintext ID number: subjects appear masked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from shixin_domain.decision import Query, Verdict
from shixin_domain.rules import describe_purchase


class AppendLog:
    """JSON Lines appended with one write per record."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class HitLog(AppendLog):
    def record(
        self,
        check_id: str,
        request_id: str,
        query: Query,
        verdict: Verdict,
        version: str,
        merchant_id: str,
        terminal_id: str,
        peer: str,
    ) -> None:
        self.append(
            {
                "time": time.time(),
                "check_id": check_id,
                "request_id": request_id,
                "list_version": version,
                "masked_id": query.masked_id,
                "channel": query.channel.name,
                "purchase": describe_purchase(query.purchase),
                "amount_fen": query.amount_fen,
                "decision": verdict.decision.name,
                "codes": [r.code for r in verdict.reasons],
                "case_numbers": [o.match.case_number for o in verdict.matches],
                "matches": [
                    {
                        "case_number": o.match.case_number,
                        "court": o.match.court,
                        "entry_id": o.match.entry_id,
                        "role": o.match.role.name,
                        "status": o.status.name,
                        "list_type": o.match.list_type.name,
                    }
                    for o in verdict.matches
                ],
                "merchant_id": merchant_id,
                "terminal_id": terminal_id,
                "peer": peer,
            }
        )


class AuditLog(AppendLog):
    def record(
        self, method: str, peer: str, subject: str, outcome: str, started: float, count: int = 1
    ) -> None:
        self.append(
            {
                "time": time.time(),
                "method": method,
                "peer": peer,
                "subject": subject,
                "checks": count,
                "outcome": outcome,
                "latency_us": int((time.perf_counter() - started) * 1e6),
            }
        )
