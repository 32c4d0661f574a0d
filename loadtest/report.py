"""The bench's figures as aligned text tables, with DESIGN §6 targets and verdicts.

``table`` puts our server and the bare servicer side by side (with the ratio
and, where DESIGN §6 sets one, the target and whether it was met);
``variant_table`` puts a variant of our server (logs on, authentication on)
beside our default server and the bare servicer, and ``compare_rows`` does the
same for any two servers driven in one run (``loadtest.redis_bench``);
``noise_rows`` shows, per phase, how busy each process and the rest of the
machine were, which says how far to trust the figures on a shared machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def table(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = [["figure", "ours", "bare", "ours/bare", "target", "verdict"]]
    ip = results.get("inprocess")
    if ip:
        rows.append(
            [
                "in-process harness floor p50/p99 µs",
                f"{_fmt(ip['floor']['p50_us'], 2)} / {_fmt(ip['floor']['p99_us'], 2)}",
                "-",
                "-",
                "(in every sample below)",
                "-",
            ]
        )
        rows.append(
            [
                "keyed subject key (blake2b) p50 µs",
                _fmt(ip["subject_key"]["p50_us"], 2),
                "-",
                "-",
                "~0.8 µs (DESIGN)",
                "-",
            ]
        )
        for key, label, target, ok in (
            (
                "decide_unlisted",
                "decide() unlisted p50/p99 µs",
                "p50 < 5 µs",
                ip["decide_unlisted"]["p50_us"] < 5,
            ),
            (
                "decide_listed",
                "decide() listed p50/p99 µs",
                "p99 < 20 µs",
                ip["decide_listed"]["p99_us"] < 20,
            ),
            ("check_unlisted", "engine.check() unlisted p50/p99 µs", "few µs/check", None),
            ("check_listed", "engine.check() listed p50/p99 µs", "p99 < 20 µs", None),
        ):
            s = ip[key]
            rows.append(
                [
                    label,
                    f"{_fmt(s['p50_us'], 2)} / {_fmt(s['p99_us'], 2)}",
                    "-",
                    "-",
                    target,
                    _verdict(ok),
                ]
            )
        rows.append(
            [
                "engine.check() 99/1 mix, checks/s, one core",
                _fmt(ip["check_mixed_per_s"]),
                "-",
                "-",
                "-",
                "-",
            ]
        )
        rows.append(
            [
                f"in-process build_snapshot {ip['entries']:,} entries, s",
                _fmt(ip["build_s"], 1),
                "-",
                "-",
                "(cross-check of the load below)",
                "-",
            ]
        )
    rpc = results.get("rpc", {})
    ours, bare = rpc.get("ours", {}), rpc.get("bare", {})

    def both(
        phase: str, pick: Callable[[dict[str, Any]], float]
    ) -> tuple[float | None, float | None]:
        o, b = ours.get(phase), bare.get(phase)
        return (pick(o) if o else None), (pick(b) if b else None)

    def cpu_row(phase: str, label: str) -> None:
        o, b = both(phase, lambda r: r["server_cpu_us_per_check"])
        if o is None or b is None:
            return
        rows.append(
            [label, _fmt(o, 1), _fmt(b, 1), _ratio(o, b), f"ours - bare: {o - b:,.1f} µs", "-"]
        )

    def lat_row(phase: str, label: str, target: str, limit_us: float | None) -> None:
        o, b = ours.get(phase), bare.get(phase)
        if not o or not b:
            return
        lo, lb = o["latency"], b["latency"]
        ok = None if limit_us is None else lo["p99_us"] < limit_us
        rows.append(
            [
                label,
                f"{_fmt(lo['p50_us'], 0)} / {_fmt(lo['p99_us'], 0)}",
                f"{_fmt(lb['p50_us'], 0)} / {_fmt(lb['p99_us'], 0)}",
                f"{_ratio(lo['p50_us'], lb['p50_us'])} / {_ratio(lo['p99_us'], lb['p99_us'])}",
                target,
                _verdict(ok),
            ]
        )

    def rate_row(phase: str, label: str, key: str, share: float | None) -> None:
        o, b = both(phase, lambda r: r[key])
        if o is None or b is None:
            return
        ok = None if share is None else o >= share * b
        target = f">= {share:.0%} of bare" if share else "-"
        rows.append([label, _fmt(o), _fmt(b), _ratio(o, b), target, _verdict(ok)])

    lat_row("unary_c1", "unary, 1 in flight: p50/p99 µs", "-", None)
    rate_row("unary_c1", "unary, 1 in flight: calls/s", "calls_per_s", None)
    lat_row("unary_c32", "unary, 32 in flight: p50/p99 µs", "-", None)
    rate_row("unary_c32", "unary, 32 in flight: calls/s", "calls_per_s", 0.8)
    cpu_row("unary_c32", "unary: server CPU µs per call")
    if "unary_paced" in ours:
        paced_rate = ours["unary_paced"]["rate"]
        lat_row(
            "unary_paced",
            f"unary at {paced_rate:,.0f}/s (open loop): p50/p99 µs",
            "p99 < 1000 µs",
            1000,
        )
    rate_row("batch100", "batch of 100: checks/s", "checks_per_s", 0.5)
    cpu_row("batch100", "batch: server CPU µs per check")
    rate_row("stream", "stream (4 streams): checks/s", "checks_per_s", 0.5)
    cpu_row("stream", "stream: server CPU µs per check")
    load = results.get("load")
    if load:
        n = load["entries_total"] or 1
        delta = load["rss_loaded"] - load["rss_baseline"]
        rows.append(
            [
                f"load {n:,} entries (announce to SERVING), s",
                _fmt(load["load_s"], 1),
                "-",
                "-",
                f"10M < 60 s (x{10_000_000 / n:g}: {load['load_s'] * 10_000_000 / n:,.0f} s)",
                _verdict(load["load_s"] * 10_000_000 / n < 60),
            ]
        )
        rows.append(
            [
                "resident memory after load - baseline, MiB",
                _fmt(delta / MIB, 1),
                _fmt(load["rss_bare"] / MIB, 1) + " (bare RSS)",
                "-",
                f"10M < 2 GiB (x{10_000_000 / n:g}: {delta * 10_000_000 / n / 1024**3:.2f} GiB)",
                _verdict(delta * 10_000_000 / n < 2 * 1024**3),
            ]
        )
        rows.append(
            [
                "resident bytes per entry",
                _fmt(delta / n, 0),
                "-",
                "-",
                "< 200 (2 GiB / 10M)",
                _verdict(delta / n < 200),
            ]
        )
        settled = load.get("rss_ours_after_load_test")
        if settled:
            rows.append(
                [
                    "the same after the RPC phases (loader garbage freed)",
                    f"{_fmt((settled - load['rss_baseline']) / MIB, 1)} MiB, "
                    f"{(settled - load['rss_baseline']) / n:,.0f} B/entry",
                    "-",
                    "-",
                    "< 200 B/entry",
                    _verdict((settled - load["rss_baseline"]) / n < 200),
                ]
            )
    return rows


def compare_rows(
    rpc: dict[str, dict[str, Any]],
    name: str,
    base: str,
    bare: str = "bare",
    labels: dict[str, str] | None = None,
) -> list[list[str]]:
    """Server ``name`` beside ``base`` (what it adds) and ``bare`` (the DESIGN §6 ratios)."""
    head = [
        "figure",
        name,
        base,
        f"{name}/{base}",
        bare,
        f"{name}/{bare}",
        "target (ratio to bare)",
        "verdict",
    ]
    rows: list[list[str]] = [head]
    v, o, b = rpc.get(name, {}), rpc.get(base, {}), rpc.get(bare, {})
    labels = labels or {}

    def lat(phase: str, label: str, limit_us: float | None = None) -> None:
        if phase not in v or phase not in o:
            return
        lv, lo = v[phase]["latency"], o[phase]["latency"]
        lb = b.get(phase, {}).get("latency")
        ok = None if limit_us is None else lv["p99_us"] < limit_us
        rows.append(
            [
                labels.get(phase, label),
                f"{_fmt(lv['p50_us'], 0)} / {_fmt(lv['p99_us'], 0)}",
                f"{_fmt(lo['p50_us'], 0)} / {_fmt(lo['p99_us'], 0)}",
                f"{_ratio(lv['p50_us'], lo['p50_us'])} / {_ratio(lv['p99_us'], lo['p99_us'])}",
                f"{_fmt(lb['p50_us'], 0)} / {_fmt(lb['p99_us'], 0)}" if lb else "-",
                f"{_ratio(lv['p50_us'], lb['p50_us'])} / {_ratio(lv['p99_us'], lb['p99_us'])}"
                if lb
                else "-",
                "-" if limit_us is None else f"p99 < {limit_us:,.0f} µs",
                _verdict(ok),
            ]
        )

    def rate(phase: str, label: str, key: str, share: float | None = None) -> None:
        if phase not in v or phase not in o:
            return
        rv, ro = v[phase][key], o[phase][key]
        rb = b.get(phase, {}).get(key)
        ok = None if share is None or rb is None else rv >= share * rb
        rows.append(
            [
                labels.get(phase + ":" + key, label),
                _fmt(rv),
                _fmt(ro),
                _ratio(rv, ro),
                _fmt(rb),
                _ratio(rv, rb),
                f">= {share:.2f}" if share else "-",
                _verdict(ok),
            ]
        )

    def cpu(phase: str, label: str) -> None:
        if phase not in v or phase not in o:
            return
        cv, co = v[phase]["server_cpu_us_per_check"], o[phase]["server_cpu_us_per_check"]
        cb = b.get(phase, {}).get("server_cpu_us_per_check")
        helper = v[phase].get("helper_cpu_us_per_check", 0.0)
        note = f"{name} - {base}: {cv - co:+,.1f} µs"
        if helper >= 0.5:
            note += f"; + Redis {helper:,.1f} µs"
        rows.append(
            [label, _fmt(cv), _fmt(co), _ratio(cv, co), _fmt(cb), _ratio(cv, cb), note, "-"]
        )

    lat("unary_c1", "unary, 1 in flight: p50/p99 µs")
    rate("unary_c1", "unary, 1 in flight: calls/s", "calls_per_s")
    lat("unary_c32", "unary, 32 in flight: p50/p99 µs")
    rate("unary_c32", "unary, 32 in flight: calls/s", "calls_per_s", 0.8)
    cpu("unary_c32", "unary: server CPU µs per call")
    if "unary_paced" in v:
        lat(
            "unary_paced", f"unary at {v['unary_paced']['rate']:,.0f}/s open loop: p50/p99 µs", 1000
        )
    rate("batch100", "batch of 100: checks/s", "checks_per_s", 0.5)
    cpu("batch100", "batch: server CPU µs per check")
    rate("stream", "stream (4 streams): checks/s", "checks_per_s", 0.5)
    cpu("stream", "stream: server CPU µs per check")
    return rows


def variant_table(results: dict[str, Any], name: str) -> list[list[str]]:
    """``ours+logs`` or ``ours+auth`` beside ``ours`` and ``bare``, and its load and memory."""
    rows = compare_rows(results.get("rpc", {}), name, "ours")
    var = results.get("variants", {}).get(name, {})
    load = results.get("load", {})
    if var and load:
        rows.append(
            [
                "load (announce to SERVING), s",
                _fmt(var["load_s"], 1),
                _fmt(load["load_s"], 1),
                _ratio(var["load_s"], load["load_s"]),
                "-",
                "-",
                "-",
                "-",
            ]
        )
        rows.append(
            [
                "RSS after the RPC phases, MiB",
                _fmt(var.get("rss_after_load_test", var["rss_loaded"]) / MIB, 1),
                _fmt(load.get("rss_ours_after_load_test", load["rss_loaded"]) / MIB, 1),
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    for fname, size in var.get("log_bytes", {}).items():
        rows.append([f"{fname} written, MiB", _fmt(size / MIB, 1), "-", "-", "-", "-", "-", "-"])
    return rows


def bloom_table(cases: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["Bloom filter", "adds", "add µs", "lookup hit µs", "lookup miss µs", "false pos."]]
    for c in cases:
        rows.append(
            [
                c["case"],
                f"{c['adds']:,}",
                _fmt(c["add_us"], 2),
                _fmt(c["lookup_hit_us"], 2),
                _fmt(c["lookup_miss_us"], 2),
                f"{c['false_positive_rate']:.4%}",
            ]
        )
    return rows


def render(rows: list[list[str]]) -> str:
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


def noise_rows(results: dict[str, Any], key: str = "rpc") -> list[list[str]]:
    rows = [
        [
            "phase",
            "server",
            "calls",
            "errors",
            "srv cores",
            "client cores/srv",
            "redis cores",
            "foreign cores",
            "decisions",
        ]
    ]
    for server, by_phase in results.get(key, {}).items():
        for phase, r in by_phase.items():
            el = r["elapsed_s"] or 1
            rows.append(
                [
                    phase,
                    server,
                    f"{r['calls']:,}",
                    str(r["errors"]),
                    f"{r['server_cores']:.2f}",
                    f"{r['client_cpu_s'] / el:.2f}",
                    f"{r.get('helper_cores', 0.0):.2f}",
                    f"{r['foreign_cores']:.2f}",
                    " ".join(f"{k}={v}" for k, v in sorted(r["decisions"].items())),
                ]
            )
    return rows
