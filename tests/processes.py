"""Real ``shixin-check`` child processes for tests: one-shot commands and servers."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CLI = [sys.executable, "-m", "shixin_check.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env or os.environ.copy()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``shixin-check serve`` in a child process; stdout read line by line."""

    def __init__(
        self, *args: str, port: int = 0, log: Path | None = None, file_size_limit: int = 0
    ) -> None:
        """``log``: send its output to that file instead of a pipe (read it with ``output``).
        ``file_size_limit``: bytes, its ``ulimit -f`` from the start (0: none set)."""
        self.port = port or free_port()
        self.log = log
        out = log.open("w") if log is not None else subprocess.PIPE

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

        self.proc = subprocess.Popen(
            [*CLI, "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limited if file_size_limit else None,
        )
        self.lines: list[str] = []

    def output(self) -> str:
        """What a server started with ``log`` has printed so far."""
        assert self.log is not None
        return self.log.read_text()

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash or the OOM killer would."""
        self.proc.kill()
        self.proc.wait(timeout=15)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 60) -> None:
        channel = grpc.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "server exited early"
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
            raise AssertionError("server never became SERVING")
        finally:
            channel.close()

    def read_until(self, pattern: str, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"{pattern!r} not printed; got:\n{''.join(self.lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
