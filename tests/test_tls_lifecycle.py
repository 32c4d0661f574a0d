"""The TLS files over a server's life, and what a refused start leaves behind, through
real ``shixin-check serve`` processes, real certificates made by openssl and real
TLS channels on loopback.

- a worker of ``--workers 2`` restarted while the key on disk no longer matches the
  certificate (a rotation done one file at a time) is refused naming both files,
  never as a port in use; the other worker serves on, and the replacement serves
  once the files match again;
- a certificate grpcio cannot use (an Ed448 key, which OpenSSL reads) on a free
  port is not called a port clash;
- the served certificate's notAfter is a metric (the same with two workers, not
  summed); one that expires while the server runs is an ERROR line then;
- an expired ``--tls-client-ca`` is refused at start, one expired CA beside a
  current one is a WARNING;
- a start refused for its keys file, or for a taken port, has written no log.

Certificates are made with ``tests.test_tls_server_checks``'s helpers (EC keys, a
CA whose ``openssl ca`` signs with the dates a test needs).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.domain.certificates import certificate_dates
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import CLI, ServeProcess, free_port
from tests.test_tls_server_checks import _EC, _openssl, _sign, new_ca
from tests.test_workers import scrape, workers_of
from tests.test_workers_failures import serve_to_the_end, the_refusal
from tests.waiting import eventually

EXPIRY = "shixin_tls_certificate_expiry_timestamp_seconds"
SAN = "subjectAltName=IP:127.0.0.1"
#: How long the short-lived certificate lasts after it is made: long enough for a
#: server to start (about 2 s), short enough for a test to see it expire.
SHORT_LIFE_S = 12


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; two server certificates for 127.0.0.1 with keys of their own (``old``,
    ``new``, 30 and 60 days), one with an Ed448 key (``ed448``); an expired CA
    (``expired-ca``, 2020) and a file holding it beside the current CA."""
    d = new_ca(tmp_path_factory)
    _sign(d, "old", "/CN=server", "-days", "30", ext=SAN)
    _sign(d, "new", "/CN=server", "-days", "60", ext=SAN)
    _openssl(d, "req", "-newkey", "ed448", "-nodes", "-keyout", "ed448.key", "-out", "ed448.csr",
             "-subj", "/CN=server", "-addext", SAN)  # fmt: skip
    _openssl(d, "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
             "-in", "ed448.csr", "-out", "ed448.pem", "-notext", "-days", "30")  # fmt: skip
    _openssl(d, "req", *_EC, "-keyout", "expired-ca.key", "-out", "expired-ca.csr",
             "-subj", "/CN=old shixin test CA", "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    _openssl(d, "ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "expired-ca.key",
             "-in", "expired-ca.csr", "-out", "expired-ca.pem", "-notext",
             "-startdate", "20200101000000Z", "-enddate", "20210101000000Z")  # fmt: skip
    (d / "both-cas.pem").write_bytes(
        (d / "expired-ca.pem").read_bytes() + (d / "ca.pem").read_bytes()
    )
    return d


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    (tmp_path / "key").write_text("tests-only-secret-0123456789abcdef")
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    return write_jsonl(tmp_path / "l.jsonl", basic_rows())


def _base(tmp_path: Path, listed: Path) -> list[str]:
    return ["--list", str(listed), "--key-secret-file", str(tmp_path / "key")]


def _tls_check(port: int, pki: Path) -> int:
    """A check of a listed subject over a fresh TLS connection: its decision."""
    with CheckClient(f"127.0.0.1:{port}", root_ca=(pki / "ca.pem").read_bytes(), timeout=5) as c:
        return int(c.check(build_request("AIRLINE", id_number=ZHANG)).decision)


def _not_after(cert: Path) -> float:
    return min(after for _, after in certificate_dates(cert)).timestamp()


def _metrics_url(server: ServeProcess) -> str:
    found = re.search(r"metrics on (http://\S+)", server.output())
    assert found, server.output()
    return found.group(1)


def _start(tmp_path: Path, name: str, *args: str, workers: int = 1) -> ServeProcess:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHIXIN_WORKERS", str(workers))
        server = ServeProcess(*args, log=tmp_path / f"{name}.log")
    said = "every worker is past its first load" if workers > 1 else " INFO list "
    try:
        eventually(lambda: said in server.output(), "serving")
    except AssertionError:
        server.kill()
        raise AssertionError(server.output()) from None
    return server


# --- 1. a rotation done one file at a time, and a worker restarted meanwhile ------------


def test_a_worker_restarted_mid_rotation_names_the_files_and_the_other_serves_on(
    tmp_path: Path, listed: Path, pki: Path
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki / "old.pem", cert)
    shutil.copy(pki / "old.key", key)
    server = _start(tmp_path, "rotation", *_base(tmp_path, listed), "--tls-cert", str(cert),
                    "--tls-key", str(key), "--metrics-listen", "127.0.0.1:0", workers=2)  # fmt: skip
    try:
        url = _metrics_url(server)
        # the notAfter of the certificate served, once (not summed over the two workers)
        eventually(lambda: scrape(url).get(EXPIRY) == _not_after(pki / "old.pem"), "expiry")
        shutil.copy(pki / "new.pem", cert)  # the new certificate is in, its key not yet
        victim = workers_of(server)[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=15)
        said = f"--tls-cert {cert} and --tls-key {key}: "
        eventually(lambda: server.output().count(said) >= 4, "four replacements refused")
        out = server.output()
        assert "port is in use" not in out and "Invalid private key" not in out, out
        assert "(the files changed since start?)" in out
        assert "failed to start" not in out and server.proc.poll() is None, out
        for _ in range(4):  # the worker that read the old pair at start answers every call
            assert _tls_check(server.port, pki) == pb.DENY
        shutil.copy(pki / "new.key", key)  # the rotation completed
        eventually(lambda: "serving again" in server.output(), "the replacement serving")
        assert _tls_check(server.port, pki) == pb.DENY
        # each worker serves its own certificate: the earlier notAfter is the one to watch
        eventually(lambda: scrape(url).get(EXPIRY) == _not_after(pki / "old.pem"), "the earlier")
    finally:
        code = server.stop()
    assert code == 0, server.output()


def test_a_certificate_grpcio_refuses_on_a_free_port_is_not_called_a_port_clash(
    tmp_path: Path, listed: Path, pki: Path
) -> None:
    port = free_port()
    done = subprocess.run(
        [*CLI, "serve", *_base(tmp_path, listed), "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(pki / "ed448.pem"), "--tls-key", str(pki / "ed448.key")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SHIXIN_WORKERS": "1"},
    )  # fmt: skip
    line = the_refusal(done)
    assert "in use" not in line, line
    assert f"cannot listen on 127.0.0.1:{port} with TLS" in line
    assert f"--tls-cert {pki / 'ed448.pem'} and --tls-key {pki / 'ed448.key'}" in line


# --- 2. a certificate that expires while the server runs --------------------------------


def test_a_certificate_expiring_while_serving_is_a_metric_then_an_error_line(
    tmp_path: Path, listed: Path, pki: Path
) -> None:
    ends = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=SHORT_LIFE_S)
    work = tmp_path / "pki"
    shutil.copytree(pki, work)
    _sign(work, "short", "/CN=server", "-enddate", f"{ends:%Y%m%d%H%M%SZ}", ext=SAN)
    server = _start(tmp_path, "short", *_base(tmp_path, listed), "--tls-cert",
                    str(work / "short.pem"), "--tls-key", str(work / "short.key"),
                    "--metrics-listen", "127.0.0.1:0")  # fmt: skip
    try:
        assert "WARNING TLS certificate" in server.output()  # at start, as before
        assert scrape(_metrics_url(server))[EXPIRY] == _not_after(work / "short.pem")
        eventually(lambda: "ERROR TLS certificate" in server.output(), "the expiry said")
        (line,) = [s for s in server.output().splitlines() if "ERROR TLS certificate" in s]
        assert "has expired" in line and "restart the server with a renewed" in line, line
        assert server.proc.poll() is None
    finally:
        server.stop()
    plain = _start(tmp_path, "plain", *_base(tmp_path, listed), "--metrics-listen", "127.0.0.1:0")
    try:
        assert EXPIRY not in scrape(_metrics_url(plain))  # no TLS: no series
    finally:
        plain.stop()


# --- 3. the client CA's dates -----------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_an_expired_client_ca_is_refused_and_one_beside_a_current_ca_is_named(
    tmp_path: Path, listed: Path, pki: Path, workers: int
) -> None:
    tls = ["--tls-cert", str(pki / "old.pem"), "--tls-key", str(pki / "old.key")]
    args = (*_base(tmp_path, listed), "--listen", "127.0.0.1:0", *tls)
    done = serve_to_the_end(*args, "--tls-client-ca", str(pki / "expired-ca.pem"),
                            workers=workers)  # fmt: skip
    line = the_refusal(done)
    assert done.stderr.strip() == line  # one line, and nothing else
    assert f"--tls-client-ca {pki / 'expired-ca.pem'}: " in line
    assert "expired at 2021-01-01 00:00:00 UTC" in line
    server = _start(tmp_path, f"both{workers}", *_base(tmp_path, listed), *tls,
                    "--tls-client-ca", str(pki / "both-cas.pem"), workers=workers)  # fmt: skip
    try:
        warned = [s for s in server.output().splitlines() if "WARNING" in s and "client-ca" in s]
        assert len(warned) == 1 and "WARNING" in warned[0], warned
        assert "certificate 1 of 2 expired at 2021-01-01 00:00:00 UTC" in warned[0]
    finally:
        server.stop()


# --- 4. a refused start writes nothing ----------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_start_refused_for_its_keys_file_or_its_port_has_written_no_log(
    tmp_path: Path, listed: Path, workers: int
) -> None:
    bad = tmp_path / "badkeys.json"
    bad.write_text('{"keys": [}')
    logs = ["--hit-log", str(tmp_path / "hd1" / "h.jsonl"),
            "--audit-log", str(tmp_path / "hd2" / "a.jsonl")]  # fmt: skip
    done = serve_to_the_end(*_base(tmp_path, listed), "--listen", "127.0.0.1:0", *logs,
                            "--keys-file", str(bad), workers=workers)  # fmt: skip
    assert str(bad) in the_refusal(done)
    assert not (tmp_path / "hd1").exists() and not (tmp_path / "hd2").exists()
    if workers > 1:
        return  # a taken port: the supervisor refuses it before any worker starts
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_to_the_end(*_base(tmp_path, listed), "--listen", f"127.0.0.1:{port}",
                                *logs, workers=1)  # fmt: skip
    assert f"port {port} is in use" in the_refusal(done)
    assert not (tmp_path / "hd1").exists() and not (tmp_path / "hd2").exists()
