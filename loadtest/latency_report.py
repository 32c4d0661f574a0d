"""The locust run's µs latencies: per-call buckets, their percentiles and the end report.

Locust's own percentiles are whole milliseconds, which hides this service's latency, so
``locustfile.py`` also keeps every call's latency here in µs buckets and prints
``report_lines`` at the end. Kept apart from locust (no import of it) so the arithmetic
can be tested on its own and the counts summed across worker processes as plain data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

PERCENTILES = (0.5, 0.9, 0.99, 0.999)


def bucket_us(elapsed_ns: int) -> int:
    """The µs bucket of a call of ``elapsed_ns``: its 10 leading bits (see ``Latencies``)."""
    us = elapsed_ns // 1000
    if us >= 1024:
        shift = us.bit_length() - 10
        us = us >> shift << shift
    return us


@dataclass
class Latencies:
    """Per-call latencies of one kind of call in this process, in µs buckets.

    A bucket keeps the 10 leading bits of the µs figure (exact below 1,024 µs,
    at most 0.2% low above: 9,997 µs counts as 9,984), so the counts stay small
    however long the run, and add up across processes.
    """

    rpc: str  # "unary" or "batch": locust's request type
    name: str  # "rail order", ...: locust's name
    counts: dict[int, int] = field(default_factory=dict)
    checks: int = 0
    listed: int = 0  # checks of listed people among them

    def record(self, elapsed_ns: int, checks: int, listed: int) -> None:
        """One call of ``elapsed_ns`` that carried ``checks`` checks, ``listed`` of them listed."""
        us = bucket_us(elapsed_ns)
        counts = self.counts
        counts[us] = counts.get(us, 0) + 1
        self.checks += checks
        self.listed += listed

    def add(self, counts: dict[int, int], checks: int, listed: int) -> None:
        for us, n in counts.items():
            self.counts[us] = self.counts.get(us, 0) + n
        self.checks += checks
        self.listed += listed

    def clear(self) -> None:
        self.counts, self.checks, self.listed = {}, 0, 0


def percentile(counts: dict[int, int], total: int, q: float) -> int:
    """The µs bucket holding the ``q`` quantile of ``total`` calls."""
    rank = max(1, -(-int(q * total * 1000) // 1000))  # ceil(q * total), without float drift
    seen = 0
    for us in sorted(counts):
        seen += counts[us]
        if seen >= rank:
            return us
    return max(counts)


def report_lines(
    latencies: Iterable[Latencies], seconds: float, cpu: float, processes: int
) -> list[str]:
    """The µs table, calls/s and CPU per call (what ``quitting`` prints)."""
    rows = sorted(
        (lat for lat in latencies if lat.counts),
        key=lambda lat: (lat.name, lat.rpc),
    )
    total = Latencies("", "all")
    for lat in rows:
        total.add(lat.counts, lat.checks, lat.listed)
    calls = sum(total.counts.values())
    if not calls:
        return ["shixin-check: no calls were made"]
    per_s = max(seconds, 1e-9)
    head = f"{'type':<6} {'name':<17} {'calls':>9} {'checks':>9} {'listed':>7} "
    head += f"{'calls/s':>8} {'checks/s':>8}"
    head += "".join(f" {f'p{q * 100:g}':>7}" for q in PERCENTILES) + f" {'max':>7}"
    lines = [
        f"shixin-check latency per call in µs, client side, over {seconds:.1f} s "
        "(exact below 1,024 µs, at most 0.2% low above):",
        head,
    ]
    for lat in [*rows, total]:
        n = sum(lat.counts.values())
        line = f"{lat.rpc:<6} {lat.name:<17} {n:>9,} {lat.checks:>9,} {lat.listed:>7,} "
        line += f"{n / per_s:>8,.0f} {lat.checks / per_s:>8,.0f}"
        line += "".join(f" {percentile(lat.counts, n, q):>7,}" for q in PERCENTILES)
        lines.append(line + f" {max(lat.counts):>7,}")
    lines.append(
        f"shixin-check locust: {calls / per_s:,.0f} calls/s, {total.checks / per_s:,.0f} "
        f"checks/s; CPU {cpu:.2f} s in {processes} process(es) running users "
        f"({cpu / per_s:.2f} cores): {cpu / calls * 1e6:,.0f} µs per call, "
        f"{cpu / total.checks * 1e6:,.0f} µs per check"
    )
    return lines
