"""``shixin-check health`` as a container health check runs it: a real process
asking a real server on a free loopback port, judged by its exit status."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from shixin_check.server.app import LIST_CURRENT, SERVICE_NAME
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, person_entry, write_jsonl
from tests.processes import free_port, run_cli

Serve = Callable[..., RunningServer]

HEADER = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}


def test_serving_exits_0_for_the_server_and_the_check_service(tmp_path: Path, serve: Serve) -> None:
    server = serve(write_jsonl(tmp_path / "l.jsonl", [HEADER, *basic_rows()]))
    for service in ("", SERVICE_NAME, LIST_CURRENT):
        done = run_cli("health", "--target", server.address, "--service", service)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


def test_no_valid_list_is_not_serving_and_exits_1(tmp_path: Path, serve: Serve) -> None:
    """A directory whose only snapshot is refused: the server runs, but serves nothing."""
    bad = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")  # a wrong GB 11643 check digit
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [HEADER, person_entry("E1", bad, "张伟")])
    server = serve(tmp_path)
    done = run_cli("health", "--target", server.address)
    assert (done.returncode, done.stdout.strip()) == (1, "NOT_SERVING"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_service_the_server_does_not_know_exits_1(tmp_path: Path, serve: Serve) -> None:
    server = serve(write_jsonl(tmp_path / "l.jsonl", [HEADER, *basic_rows()]))
    done = run_cli("health", "--target", server.address, "--service", "no.such.Service")
    assert done.returncode == 1
    assert "no health status for 'no.such.Service'" in done.stderr


def _tls_files(folder: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl, EC keys: fast)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
         "-subj", "/CN=health test CA"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext"],
    ):  # fmt: skip
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True, timeout=60)
    return folder


def test_tls_and_api_key_flags_reach_a_tls_server(tmp_path: Path, serve: Serve) -> None:
    pki = _tls_files(tmp_path)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": []}')  # authentication on, nobody admitted: health needs none
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", [HEADER, *basic_rows()]), keys_file=keys_file,
        tls_cert=pki / "server.pem", tls_key=pki / "server.key",
    )  # fmt: skip
    target = ("--target", server.address, "--timeout", "3")
    done = run_cli("health", *target, "--ca", str(pki / "ca.pem"), "--api-key", "sk_unknown")
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    plaintext = run_cli("health", *target)  # no --ca: plaintext against TLS never gets an answer
    assert plaintext.returncode == 2
    assert "Traceback" not in plaintext.stderr


def test_no_server_exits_2_with_one_line_and_no_traceback() -> None:
    port = free_port()  # nothing listens there
    done = run_cli("health", "--target", f"127.0.0.1:{port}", "--timeout", "3")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"shixin-check health: cannot ask 127.0.0.1:{port}: UNAVAILABLE")


def test_a_bad_timeout_is_refused_with_the_flag_and_variable_named() -> None:
    done = run_cli("health", "--timeout", "soon")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--timeout / SHIXIN_TIMEOUT" in done.stderr
