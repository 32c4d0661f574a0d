"""Unary calls/s of ``serve --workers 2`` against one worker, driven by h2load.

    python -m loadtest.workers_bench [--entries 100000] [--requests 40000] [--rounds 3]

A figure, not a test (issue 12): does a second worker process on the same
port add a core's worth of answers? The driver must not be the bottleneck,
so it is not Python: ``h2load`` (Debian's ``nghttp2-client``) posts one
pre-framed gRPC unary body (the 5-byte gRPC frame header and a serialized
``CheckRequest`` for an unlisted subject, the 99% case) to
``/shixin.v1.ConsumptionCheck/CheckConsumption`` over ``--clients``
connections with ``--streams`` calls in flight on each; SO_REUSEPORT spreads
connections, not calls, over the workers, hence many connections.

Two servers on the same list and key secret, each with its metrics on:
``one`` (``shixin-check serve``) and ``two`` (the same with
``SHIXIN_WORKERS=2``). They are measured in alternating segments of
``--requests`` calls each, every segment bounded in count and in time
(``--max-seconds``: h2load is killed past it). For each segment: calls/s as
h2load reports it, the answers the server counted (``shixin_checks_total``,
so every call was a real check, never an error that h2load counts as a
200), the CPU of the server (the supervisor and its workers), of h2load, and
of everything else on the machine (``foreign``). Figures go to standard
output as a table and, with ``--out``, as JSON; ``docs/benchmarks.md``
records them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.common import (
    CHILDREN,
    DATA_DIR,
    add_keep_logs,
    cli_argv,
    cpu_by_pid,
    ensure_list,
    frame,
    log,
    machine,
    machine_busy,
    own_folder,
    revision,
    run_folder,
    run_h2load,
    run_main,
    server_env,
    step,
    stop_process,
)
from shixin_check.clients.check_client import build_request
from shixin_check.loader.synthetic import never_listed_id

METHOD = "/shixin.v1.ConsumptionCheck/CheckConsumption"
SECRET = "bench-only-secret-0123456789abcdef"


def grpc_body() -> bytes:
    """One unary call's body as it goes on the wire: uncompressed flag, length, message."""
    request = build_request(
        "RAIL",
        id_number=never_listed_id(),
        name="张三",
        purchase={"train_number": "G1234", "seat": "SECOND_CLASS"},
        request_id="bench",
    )
    return frame(request.SerializeToString())


class Server:
    """``shixin-check serve`` on a free loopback port, its output in a file."""

    def __init__(self, name: str, args: list[str], workers: int, folder: Path) -> None:
        self.name = name
        self.workers = workers
        self.output = folder / f"{name}.log"
        env = server_env()
        if workers > 1:
            env["SHIXIN_WORKERS"] = str(workers)
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                cli_argv(["serve", *args, "--listen", "127.0.0.1:0"]),
                stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        CHILDREN.add(name, self.proc, log=self.output)
        self.port = 0
        self.metrics = ""

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Announced, and every worker past its first load (health SERVING for one)."""
        ready = "every worker is past its first load" if self.workers > 1 else "health: SERVING"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            serving = re.search(r"serving on \S+:(\d+)", text)
            metrics = re.search(r"metrics on (http://\S+)", text)
            if serving and metrics and (ready in text or self.workers == 1):
                self.port, self.metrics = int(serving.group(1)), metrics.group(1)
                if self.workers > 1 or self._answers_health():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready (see {self.output})")

    def _answers_health(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of the server's processes, by pid."""
        return cpu_by_pid([self.proc.pid])

    def answers(self) -> float:
        with urllib.request.urlopen(self.metrics, timeout=10) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("shixin_checks_total{")
        )

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=30)


def h2load(port: int, body: Path, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """One h2load run: its figures, and its own CPU seconds (from ``wait4``)."""
    bound = ["-D", str(args.duration)] if args.duration else ["-n", str(args.requests)]
    figures = run_h2load(
        f"http://127.0.0.1:{port}{METHOD}", body, bound=bound, clients=args.clients,
        streams=args.streams, max_seconds=args.max_seconds,
    )  # fmt: skip
    return figures, figures.pop("driver_cpu_s")


def segment(server: Server, body: Path, args: argparse.Namespace) -> dict[str, Any]:
    before_answers = server.answers()
    cpu_before, busy_before = server.cpu(), machine_busy()
    figures, driver_cpu = h2load(server.port, body, args)
    cpu_after, busy_after = server.cpu(), machine_busy()
    CHILDREN.check()  # a server gone during the segment: named, not a refused connection
    time.sleep(1.3)  # the workers' readings lag by up to a second
    answered = server.answers() - before_answers
    per_process = {
        pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after if pid in cpu_before
    }
    server_cpu = sum(per_process.values())
    wall = figures["seconds"]
    figures.update(
        answered=int(answered),
        server_cores=server_cpu / wall,
        per_process_cores=sorted((round(v / wall, 2) for v in per_process.values()), reverse=True),
        driver_cores=driver_cpu / wall,
        foreign_cores=max(0.0, (busy_after - busy_before - server_cpu - driver_cpu) / wall),
        server_cpu_us_per_call=server_cpu / max(answered, 1) * 1e6,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--entries", type=int, default=100_000, help="list size")
    p.add_argument("--requests", type=int, default=40_000, help="calls per segment (h2load -n)")
    p.add_argument("--clients", type=int, default=32, help="connections (h2load -c)")
    p.add_argument("--streams", type=int, default=8, help="calls in flight per connection (-m)")
    p.add_argument("--duration", type=int, default=0,
                   help="seconds per segment (h2load -D) instead of --requests: every "
                        "connection busy to the end, however they fall on the workers")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="segments per server, alternated")
    p.add_argument("--max-seconds", type=float, default=60, help="h2load killed past this")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    add_keep_logs(p)
    args = p.parse_args(argv)
    if shutil.which("h2load") is None:
        print("workers_bench: h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    own_folder(args.data_dir)
    today = _dt.date.today()
    step("writing the list")
    list_path, _ = ensure_list(args.data_dir, args.entries, 20261124, today)
    with run_folder(args.data_dir, "workers-bench-", args.keep_logs) as run:
        results = measure(args, list_path, run)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    summary = {}
    for name, rows in results["segments"].items():
        summary[name] = {
            key: statistics.median(row[key] for row in rows)
            for key in ("calls_per_s", "server_cores", "driver_cores", "foreign_cores",
                        "server_cpu_us_per_call")
        }  # fmt: skip
    summary["ratio"] = summary["two"]["calls_per_s"] / summary["one"]["calls_per_s"]
    results["summary"] = summary
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    print(_table(results))
    return 0


def measure(args: argparse.Namespace, list_path: Path, run: Path) -> dict[str, Any]:
    """Start ``one`` and ``two`` in ``run``, drive them in turn, stop them: the figures."""
    (run / "key").write_text(SECRET)
    body = run / "body.bin"
    body.write_bytes(grpc_body())
    common = ["--list", str(list_path), "--key-secret-file", str(run / "key"),
              "--index-dir", str(run / "index"), "--metrics-listen", "127.0.0.1:0"]  # fmt: skip
    results: dict[str, Any] = {
        "revision": revision(), "machine": machine(), "argv": sys.argv, "entries": args.entries,
        "h2load": {"requests": args.requests, "duration": args.duration, "clients": args.clients,
                   "streams": args.streams},
        "segments": {"one": [], "two": []},
    }  # fmt: skip
    servers: dict[str, Server] = {}
    try:
        for name, workers in (("one", 1), ("two", 2)):
            step(f"starting {name}")
            servers[name] = Server(name, common, workers, run)
            servers[name].wait_ready(300)
            log(f"{name}: pid {servers[name].proc.pid}, port {servers[name].port}, "
                f"metrics {servers[name].metrics}")  # fmt: skip
        for name, server in servers.items():  # warm-up, not recorded
            step(f"the warm-up of {name}")
            warm_up = {**vars(args), "requests": 2000, "duration": 0}
            h2load(server.port, body, argparse.Namespace(**warm_up))
            CHILDREN.check()
        for r in range(args.rounds):
            for name, server in servers.items():
                step(f"round {r + 1}: {name}")
                figures = segment(server, body, args)
                results["segments"][name].append(figures)
                log(f"round {r + 1} {name}: {figures['calls_per_s']:,.0f} calls/s, server "
                    f"{figures['server_cores']:.2f} cores {figures['per_process_cores']}, "
                    f"h2load {figures['driver_cores']:.2f}, foreign "
                    f"{figures['foreign_cores']:.2f}, answered {figures['answered']:,}, "
                    f"failed {figures['failed']}")  # fmt: skip
    finally:
        for server in servers.values():
            results.setdefault("exit", {})[server.name] = server.stop()
    return results


def _table(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        f"revision {results['revision']}, {results['machine']['nproc']} CPUs "
        f"({results['machine']['cpu_model']}), {results['entries']:,} entries, h2load "
        f"{_bound(results['h2load'])} -c {results['h2load']['clients']} "
        f"-m {results['h2load']['streams']}",
        "",
        "| workers | calls/s (median) | per segment | server cores | h2load cores "
        "| foreign cores | server CPU µs/call |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("one", "1"), ("two", "2")):
        rows = results["segments"][name]
        each = ", ".join(f"{row['calls_per_s']:,.0f}" for row in rows)
        m = s[name]
        lines.append(
            f"| {label} | {m['calls_per_s']:,.0f} | {each} | {m['server_cores']:.2f} | "
            f"{m['driver_cores']:.2f} | {m['foreign_cores']:.2f} | "
            f"{m['server_cpu_us_per_call']:.0f} |"
        )
    lines += ["", f"two / one: {s['ratio']:.2f} (target ≥ 1.6)"]
    return "\n".join(lines)


def _bound(h2: dict[str, Any]) -> str:
    return f"-D {h2['duration']}" if h2["duration"] else f"-n {h2['requests']}"


if __name__ == "__main__":
    sys.exit(run_main("workers_bench", main))
