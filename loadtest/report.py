"""The benches' figures as text tables, with the issue's and DESIGN §6's targets and verdicts.

Two kinds of table. ``table``, ``variant_rows`` and ``bloom_table`` give the
figures that need no load driver (in-process timings, load time, resident
memory, log sizes, Bloom filters). ``summarise``, ``segment_rows`` and
``ratio_rows`` give the RPC figures measured by ``loadtest.segments``'
drivers (h2load and raw-bytes client processes): per driver and server the
rate, the CPU of the server, of the driver and of everything else on the
machine, and the ratios between servers, each judged only when the driver
was not what limited the rate.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from loadtest.segments import Driver

MIB = 1024 * 1024


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def render(rows: list[list[str]]) -> str:
    """Aligned columns, the first left-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[list[str]]) -> str:
    """The same rows as a Markdown table (``docs/benchmarks.md`` pastes these)."""
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "| --- " + "| ---: " * (len(head) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# --- figures without a load driver --------------------------------------------------------


def table(results: dict[str, Any]) -> list[list[str]]:
    """The in-process decision, and our server's load time and resident memory."""
    rows: list[list[str]] = [["figure", "ours", "reference", "target", "verdict"]]
    ip = results.get("inprocess")
    if ip:
        floor = f"{_fmt(ip['floor']['p50_us'], 2)} / {_fmt(ip['floor']['p99_us'], 2)}"
        rows.append(["in-process harness floor p50/p99 µs", floor, "-",
                     "(in every sample below)", "-"])  # fmt: skip
        rows.append(["keyed subject key (blake2b) p50 µs", _fmt(ip["subject_key"]["p50_us"], 2),
                     "-", "~0.8 µs (DESIGN)", "-"])  # fmt: skip
        for key, label, target, ok in (
            ("decide_unlisted", "decide() unlisted p50/p99 µs", "p50 < 5 µs",
             ip["decide_unlisted"]["p50_us"] < 5),
            ("decide_listed", "decide() listed p50/p99 µs", "p99 < 20 µs",
             ip["decide_listed"]["p99_us"] < 20),
            ("check_unlisted", "engine.check() unlisted p50/p99 µs", "few µs/check", None),
            ("check_listed", "engine.check() listed p50/p99 µs", "p99 < 20 µs", None),
        ):  # fmt: skip
            s = ip[key]
            rows.append([label, f"{_fmt(s['p50_us'], 2)} / {_fmt(s['p99_us'], 2)}", "-", target,
                         _verdict(ok)])  # fmt: skip
        rows.append(["engine.check() 99/1 mix, checks/s, one core",
                     _fmt(ip["check_mixed_per_s"]), "-", "-", "-"])  # fmt: skip
        rows.append([f"in-process build_snapshot {ip['entries']:,} entries, s",
                     _fmt(ip["build_s"], 1), "-", "(cross-check of the load below)", "-"])  # fmt: skip
    load = results.get("load")
    if load:
        n = load["entries_total"] or 1
        scale = 10_000_000 / n
        delta = load["rss_loaded"] - load["rss_baseline"]
        rows.append([f"load {n:,} entries (announce to SERVING), s", _fmt(load["load_s"], 1), "-",
                     f"10M < 60 s (x{scale:g}: {load['load_s'] * scale:,.0f} s)",
                     _verdict(load["load_s"] * scale < 60)])  # fmt: skip
        rows.append(["resident memory after load - baseline, MiB", _fmt(delta / MIB, 1),
                     _fmt(load["rss_bare"] / MIB, 1) + " (bare RSS)",
                     f"10M < 2 GiB (x{scale:g}: {delta * scale / 1024**3:.2f} GiB)",
                     _verdict(delta * scale < 2 * 1024**3)])  # fmt: skip
        rows.append(["resident bytes per entry", _fmt(delta / n, 0), "-", "< 200 (2 GiB / 10M)",
                     _verdict(delta / n < 200)])  # fmt: skip
        settled = load.get("rss_ours_after_load_test")
        if settled:
            grown = settled - load["rss_baseline"]
            rows.append(["the same after the RPC segments (loader garbage freed)",
                         f"{_fmt(grown / MIB, 1)} MiB, {grown / n:,.0f} B/entry", "-",
                         "< 200 B/entry", _verdict(grown / n < 200)])  # fmt: skip
    return rows


def variant_rows(results: dict[str, Any]) -> list[list[str]]:
    """Each variant of our server: its flags, load time, resident memory and logs written."""
    rows = [["server", "flags", "load s", "RSS after the RPC segments, MiB", "logs written, MiB"]]
    load = results.get("load", {})
    if load:
        rss = load.get("rss_ours_after_load_test", load["rss_loaded"])
        rows.append(["ours", "-", _fmt(load["load_s"], 1), _fmt(rss / MIB, 1), "-"])
    for name, var in results.get("variants", {}).items():
        logs = ", ".join(f"{f} {size / MIB:,.1f}" for f, size in var.get("log_bytes", {}).items())
        rss = var.get("rss_after_load_test", var["rss_loaded"])
        rows.append([name, " ".join(var["flags"][::2]) or "-", _fmt(var["load_s"], 1),
                     _fmt(rss / MIB, 1), logs or "-"])  # fmt: skip
    return rows


def bloom_table(cases: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["Bloom filter", "adds", "add µs", "lookup hit µs", "lookup miss µs", "false pos."]]
    for c in cases:
        rows.append([c["case"], f"{c['adds']:,}", _fmt(c["add_us"], 2),
                     _fmt(c["lookup_hit_us"], 2), _fmt(c["lookup_miss_us"], 2),
                     f"{c['false_positive_rate']:.4%}"])  # fmt: skip
    return rows


# --- figures from the drivers -------------------------------------------------------------


class Pair(NamedTuple):
    """``subject``/``base`` ratios to print; ``judged``: the issue's targets apply (``base``
    is a bare servicer), else the ratio is shown without a verdict (a variant beside ours)."""

    subject: str
    base: str
    judged: bool = True


MEDIANS = ("rate", "server_cores", "driver_cores", "foreign_cores", "harness_cores",
           "helper_cores", "server_us_per_check", "driver_us_per_check")  # fmt: skip


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p99); nan for no value."""
    if len(values) < 2:
        return (float(values[0]) if values else float("nan"),) * 2
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def driver_check(m: dict[str, Any], cores: int) -> str:
    """Is the server, not the driver, what limits the rate? ``DRIVER-BOUND`` when the
    driver's CPU is not well below the server's (over half of it)."""
    share = m["driver_cores"] / max(m["server_cores"], 1e-9)
    used = m["server_cores"] + m["driver_cores"] + m["foreign_cores"] + m["harness_cores"]
    if share > 0.5:
        return f"DRIVER-BOUND: driver at {share:.0%} of the server's CPU"
    if m["server_cores"] < 0.85 and used > 0.9 * cores:
        return (f"machine full ({m['foreign_cores']:.2f} foreign cores): server got "
                f"{m['server_cores']:.2f}; driver {share:.0%}")  # fmt: skip
    if m["server_cores"] < 0.85:
        return f"server not saturated ({m['server_cores']:.2f} cores); driver {share:.0%}"
    return f"ok: driver {share:.0%} of the server's CPU"


def summarise(
    segments: list[dict[str, Any]], chosen: Sequence[Driver], names: Sequence[str],
    pairs: Sequence[Pair],
) -> dict[str, Any]:  # fmt: skip
    """Medians per driver and server over the rounds; the ratios of ``pairs``; verdicts."""
    out: dict[str, Any] = {}
    for driver in chosen:
        per: dict[str, Any] = {}
        for name in names:
            rows = [s for s in segments if s["driver"] == driver.name and s["target"] == name]
            if not rows:
                continue
            m: dict[str, Any] = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in MEDIANS}
            m["segments"] = len(rows)
            m["errors"] = sum(r["errors"] for r in rows)
            m["counted_by"] = ("server" if all(r["checks_counted_by_server"] is not None
                                               for r in rows) else "driver only")  # fmt: skip
            m["short_counts"] = sum(
                1 for r in rows
                if r["checks_counted_by_server"] is not None
                and r["checks_counted_by_server"] < r["checks_by_driver"]
            )  # fmt: skip
            if driver.latency:
                pooled = [v for r in rows for v in r.get("latencies_us", [])]
                m["p50_us"], m["p99_us"] = percentiles(pooled)
                m["latency_samples"] = len(pooled)
                m["driver_check"] = "-"
            else:
                m["driver_check"] = driver_check(m, os.cpu_count() or 1)
            per[name] = m
        entry: dict[str, Any] = {"label": driver.label, "targets": per, "pairs": {}}
        for pair in pairs:
            subject, base = per.get(pair.subject), per.get(pair.base)
            if subject is None or base is None:
                continue
            bound = any(m["driver_check"].startswith("DRIVER-BOUND") for m in (subject, base))
            full = any(m["driver_check"].startswith("machine full") for m in (subject, base))
            cpu_ratio = None
            if driver.latency:
                ratio = subject["p99_us"] / base["p99_us"]
                ok = subject["p99_us"] < 1000 or (not driver.paced and ratio <= 1.25)
            else:
                ratio = subject["rate"] / max(base["rate"], 1e-9)
                ok = ratio >= (driver.share or 0)
                # the rate each would reach on a core of its own: what foreign load and an
                # unequal share of the machine disturb least
                cpu_ratio = base["server_us_per_check"] / max(subject["server_us_per_check"], 1e-9)
            entry["pairs"][f"{pair.subject}/{pair.base}"] = {
                "ratio": ratio, "cpu_ratio": cpu_ratio, "driver_bound": bound,
                "machine_full": full,
                "judged": pair.judged and not bound,
                "meets_target": ok if pair.judged and not bound else None,
                "cpu_meets_target": (cpu_ratio >= (driver.share or 0)
                                     if pair.judged and cpu_ratio is not None else None),
                "per_round": _paired(segments, driver, pair),
            }  # fmt: skip
        out[driver.name] = entry
    return out


def _paired(segments: list[dict[str, Any]], driver: Driver, pair: Pair) -> list[float]:
    """subject/base in each round, the two segments nearest in time: the rate, or for a
    latency driver the p99."""
    key = "p99_us" if driver.latency else "rate"
    out = []
    for r in sorted({s["round"] for s in segments}):
        got = {s["target"]: s for s in segments if s["driver"] == driver.name and s["round"] == r}
        if pair.subject in got and pair.base in got and got[pair.base][key]:
            out.append(round(got[pair.subject][key] / got[pair.base][key], 3))
    return out


def segment_rows(
    summary: dict[str, Any], chosen: Sequence[Driver], pairs: Sequence[Pair],
    helpers: bool = False,
) -> list[list[str]]:  # fmt: skip
    """One row per driver and server: rate, cores of each party, CPU per check, the ratio
    to each base of ``pairs`` it is paired with (of the rates; of the p99s for a latency
    driver), who counted the answers, and the driver check.

    ``helpers``: a column for helper processes (the replica's redis-server)."""
    bases = list(dict.fromkeys(pair.base for pair in pairs))
    paired = {(pair.subject, pair.base) for pair in pairs}
    head = ["driver", "server", "rate /s", "server cores", "driver cores", "foreign cores"]
    head += ["helper cores"] if helpers else []
    head += ["server µs/check", "driver µs/check", "p50 / p99 µs"]
    head += [f"x {b}" for b in bases]
    head += ["counted by", "driver check"]
    rows = [head]
    for driver in chosen:
        per = summary.get(driver.name, {}).get("targets", {})
        for name, m in per.items():
            row = [driver.name, name, _fmt(m["rate"], 0), f"{m['server_cores']:.2f}",
                   f"{m['driver_cores']:.2f}", f"{m['foreign_cores']:.2f}"]  # fmt: skip
            row += [f"{m['helper_cores']:.2f}"] if helpers else []
            lat = f"{m['p50_us']:,.0f} / {m['p99_us']:,.0f}" if driver.latency else "-"
            row += [_fmt(m["server_us_per_check"]), _fmt(m["driver_us_per_check"]), lat]
            for base in bases:
                b = per.get(base)
                if b is None or (name, base) not in paired:
                    row.append("-")
                elif driver.latency:
                    row.append(f"{m['p99_us'] / b['p99_us']:.2f}")
                else:
                    row.append(f"{m['rate'] / max(b['rate'], 1e-9):.2f}")
            note = m["driver_check"]
            if m["errors"] or m["short_counts"]:
                note += f"; {m['errors']} errors, {m['short_counts']} short server counts"
            rows.append([*row, m["counted_by"], note])
    return rows


def ratio_rows(
    summary: dict[str, Any], chosen: Sequence[Driver], pairs: Sequence[Pair]
) -> list[list[str]]:
    """The ratios of ``pairs``: of the rates (``rate``; for a latency driver, of the p99s)
    and of the server CPU per check (``cpu``: base/subject), judged against the issue's
    targets only when the base is a bare servicer and no driver was the bottleneck."""
    rows = [["figure", "ratio", "target", "rate", "cpu", "verdict", "per round"]]
    for driver in chosen:
        entry = summary.get(driver.name, {})
        if driver.paced:
            target = "p99 < 1000 µs"
        elif driver.latency:
            target = "p99 < 1000 µs or <= 1.25x base"
        else:
            target = f">= {driver.share:.2f}" if driver.share else "-"
        for pair in pairs:
            e = entry.get("pairs", {}).get(f"{pair.subject}/{pair.base}")
            if e is None:
                continue
            cpu = "-" if e["cpu_ratio"] is None else f"{e['cpu_ratio']:.2f}"
            if e["driver_bound"]:
                verdict = "DRIVER-BOUND: not judged"
            elif not e["judged"]:
                verdict = "-"
            else:
                verdict = "MEETS" if e["meets_target"] else "MISSES"
                if e["cpu_meets_target"] is not None:
                    verdict += f" (cpu: {'meets' if e['cpu_meets_target'] else 'misses'})"
                if e["machine_full"]:
                    verdict += "; machine full: trust cpu"
            rows.append([entry["label"], f"{pair.subject}/{pair.base}",
                         target if pair.judged else "-", f"{e['ratio']:.2f}", cpu, verdict,
                         ", ".join(f"{v:.2f}" for v in e["per_round"]) or "-"])  # fmt: skip
    return rows


def segment_notes(segments: list[dict[str, Any]]) -> list[str]:
    """The load average before the segments, and a warning when other processes were busy."""
    if not segments:
        return ["no segment ran"]
    loads = [seg["load_average_before"][0] for seg in segments]
    lines = [f"load average (1 min) before the segments: {min(loads):.2f} to {max(loads):.2f}"]
    foreign = statistics.median(seg["foreign_cores"] for seg in segments)
    if foreign > 0.3:
        lines.append(f"other processes used {foreign:.2f} cores (median over segments): the "
                     "absolute rates are low, and only the ratios of alternating segments and "
                     "the CPU µs per check are meaningful")  # fmt: skip
    return lines
