"""What the server checks of its TLS material and keys file at start, through real
servers and the real console script.

- a server certificate that has expired, or is not valid yet, stops ``serve`` in
  one line (grpcio would serve it, and every handshake would then fail); one that
  expires soon is named in a WARNING, and the start says the files are read once;
- a key or a common name given twice in the keys file is refused, naming both
  entries (the last one silently won);
- a client certificate without a common name is refused as such, not as "no
  credentials";
- only loopback addresses and the name ``localhost`` count as loopback, never a
  name that merely starts like one.

Certificates are made by openssl in the test's temporary folder (EC keys: fast).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import _parser
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.errors import CheckError
from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.auth import key_hash
from shixin_check.server.settings import serve_settings
from tests.accessdata import refusal
from tests.conftest import RunningServer, settings_for
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import CLI, free_port
from tests.test_keys import reloads, replace_text
from tests.waiting import eventually

Serve = Callable[..., RunningServer]

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
#: ``openssl ca``'s configuration: the only way openssl 3.0 signs with dates of our choosing
_CA_CONFIG = """[ca]
default_ca = c
[c]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
unique_subject = no
copy_extensions = copy
[p]
commonName = optional
"""


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _sign(folder: Path, name: str, subject: str, *dates: str, ext: str = "") -> None:
    """``name``.pem and ``name``.key, signed by the folder's CA: for ``days`` days from
    now (``dates`` = ("-days", "N")) or between two dates ("-startdate", ..., ...)."""
    _openssl(folder, "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             *(["-addext", ext] if ext else []))  # fmt: skip
    _openssl(folder, "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
             "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext", *dates)  # fmt: skip


def new_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a test CA (``ca.pem``, ``ca.key``) and what ``openssl ca`` needs."""
    d = tmp_path_factory.mktemp("pki")
    (d / "ca.cnf").write_text(_CA_CONFIG)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    _openssl(d, "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "500",
             "-subj", "/CN=shixin test CA")  # fmt: skip
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; server certificates for 127.0.0.1 expired (2020), not valid yet (2035),
    expiring in 3 days (``server``) and in 400 (``lasting``); client certificates
    for ``rail-gw`` and one with no common name (a URI name only, SPIFFE style)."""
    d = new_ca(tmp_path_factory)
    san = "subjectAltName=IP:127.0.0.1"
    _sign(d, "expired", "/CN=server", "-startdate", "20200101000000Z", "-enddate",
          "20200201000000Z", ext=san)  # fmt: skip
    _sign(d, "future", "/CN=server", "-startdate", "20350101000000Z", "-enddate",
          "20360201000000Z", ext=san)  # fmt: skip
    _sign(d, "server", "/CN=server", "-days", "3", ext=san)
    _sign(d, "lasting", "/CN=server", "-days", "400", ext=san)
    _sign(d, "rail-gw", "/CN=rail-gw", "-days", "3")
    _sign(d, "nocn", "/O=shixin test", "-days", "3",
          ext="subjectAltName=URI:spiffe://test/gw")  # fmt: skip
    return d


def _serve_refused(*args: str) -> str:
    """``shixin-check serve ARGS``'s one line on stderr, which must refuse to start
    (it is stopped, and the test fails, if it starts serving instead)."""
    try:
        done = subprocess.run([*CLI, "serve", *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve {' '.join(args)} started instead of refusing")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def _serving_at(listed: Path) -> list[str]:
    return ["--list", str(listed), "--listen", f"127.0.0.1:{free_port()}", "--index-dir", "off"]


# --- the server certificate's dates ---------------------------------------------------


def test_an_expired_or_not_yet_valid_server_certificate_stops_the_start(
    tmp_path: Path, pki: Path
) -> None:
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    for name, said in (
        ("expired", "the certificate expired at 2020-02-01 00:00:00 UTC "
                    "(valid 2020-01-01 00:00:00 UTC to 2020-02-01 00:00:00 UTC)"),
        ("future", "the certificate is not valid yet "
                   "(valid 2035-01-01 00:00:00 UTC to 2036-02-01 00:00:00 UTC"),
    ):  # fmt: skip
        cert = pki / f"{name}.pem"
        line = _serve_refused(*_serving_at(listed), "--tls-cert", str(cert),
                              "--tls-key", str(pki / f"{name}.key"))  # fmt: skip
        assert f"--tls-cert / SHIXIN_TLS_CERT / config tls_cert {cert}: " in line
        assert said in line and "every TLS handshake would fail" in line


def test_the_start_says_when_the_certificate_expires_and_that_it_is_read_once(
    serve: Serve, tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    caplog.set_level(logging.INFO, logger="shixin.server")
    for name, level, said in (
        ("server", logging.WARNING, "expires in 2 days, at "),  # 3 days less the test's seconds
        ("lasting", logging.INFO, "valid until "),
    ):
        caplog.clear()
        cert = pki / f"{name}.pem"
        serve(listed, tls_cert=cert, tls_key=pki / f"{name}.key")
        (note,) = [r for r in caplog.records if f"TLS certificate {cert}" in r.getMessage()]
        assert note.levelno == level
        assert said in note.getMessage()
        assert note.getMessage().endswith("read once: restart to serve a renewed certificate")


# --- the keys file: one entry per key and per common name ---------------------------


def _principal(name: str, channels: list[str], **entry: str) -> dict[str, object]:
    return {"principal": name, "channels": channels, "roles": ["check"], **entry}


def test_a_common_name_or_a_key_given_twice_is_refused_naming_both(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [], "tls_principals": [
        _principal("gw-rail", ["RAIL"], common_name="all-gw"),
        _principal("other-gw", ["SHIP"], common_name="ship-gw"),
        _principal("gw-hotel", ["HOTEL"], common_name="all-gw"),
    ]}))  # fmt: skip
    said = (f"{keys_file}: tls_principals[0] (principal 'gw-rail') and tls_principals[2] "
            "(principal 'gw-hotel') name the same common_name 'all-gw'")  # fmt: skip
    listed = subprocess.run([*CLI, "keys", "list", "--keys-file", str(keys_file)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 2 and "Traceback" not in listed.stderr
    (line,) = listed.stderr.strip().splitlines()
    assert said in line
    assert said in _serve_refused(*_serving_at(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
                                  "--keys-file", str(keys_file))  # fmt: skip

    digest = key_hash("sk_test-key-given-twice")
    keys_file.write_text(json.dumps({"keys": [  # the same key, once in capitals
        _principal("hotel-chain", ["HOTEL"], sha256=digest),
        _principal("airline", ["AIRLINE"], sha256=digest.upper()),
    ]}))  # fmt: skip
    listed = subprocess.run([*CLI, "keys", "list", "--keys-file", str(keys_file)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 2 and "Traceback" not in listed.stderr
    (line,) = listed.stderr.strip().splitlines()
    assert (f"{keys_file}: keys[0] (principal 'hotel-chain') and keys[1] (principal 'airline') "
            f"hold the same key (id {digest[:12]})") in line  # fmt: skip


def _mtls_client(server: RunningServer, pki: Path, name: str) -> CheckClient:
    return CheckClient(server.address, root_ca=(pki / "ca.pem").read_bytes(), timeout=5,
                       client_cert=(pki / f"{name}.pem").read_bytes(),
                       client_key=(pki / f"{name}.key").read_bytes())  # fmt: skip


_RAIL = build_request("RAIL", id_number=ZHANG, purchase={"train_number": "G1", "seat": "NO_SEAT"})


def test_a_reload_with_a_common_name_given_twice_keeps_the_keys_in_force(
    serve: Serve, tmp_path: Path, pki: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    good = {"keys": [], "tls_principals": [_principal("12306", ["RAIL"], common_name="rail-gw")]}
    keys_file.write_text(json.dumps(good))
    audit = tmp_path / "audit.log"
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file, audit_log=audit,
        tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
    )  # fmt: skip
    with _mtls_client(server, pki, "rail-gw") as gateway:
        assert gateway.check(_RAIL).decision == pb.DENY
        twice = [
            *good["tls_principals"],
            _principal("rail-hotel", ["HOTEL"], common_name="rail-gw"),
        ]
        replace_text(keys_file, json.dumps({"keys": [], "tls_principals": twice}))
        eventually(lambda: len(reloads(audit)) == 1, "the file with the name twice read")
        assert reloads(audit)[0].startswith("REFUSED: ")
        assert "tls_principals[0] (principal '12306') and tls_principals[1]" in reloads(audit)[0]
        assert gateway.check(_RAIL).decision == pb.DENY  # still 12306's RAIL


# --- a client certificate without a common name --------------------------------------


def test_a_client_certificate_without_a_common_name_is_named_as_such(
    serve: Serve, tmp_path: Path, pki: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [], "tls_principals": [
        _principal("12306", ["RAIL"], common_name="rail-gw"),
    ]}))  # fmt: skip
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
        tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
    )  # fmt: skip
    with _mtls_client(server, pki, "nocn") as nameless:
        error = refusal(lambda: nameless.check(_RAIL))
    assert isinstance(error, CheckError)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "CERTIFICATE_UNKNOWN"
    assert error.details().startswith("client certificate has no common name (CN)")


# --- what counts as loopback ----------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost.example.invalid", "localhost-gw.corp", "127.x.example", "127.0.0.1.nip.io",
     "::1.example", "0.0.0.0", "[::]", "10.0.0.1"],
)  # fmt: skip
def test_a_name_that_only_starts_like_loopback_is_on_the_network(tmp_path: Path, host: str) -> None:
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": []}')
    listen = f"{host}:50051"
    assert not settings_for(listed, listen=listen).loopback
    for flags, said in (
        (["--keys-file", str(keys_file)], "API keys would cross the network in plaintext"),
        ([], "authentication is off"),
    ):
        args = _parser().parse_args(["serve", "--list", str(listed), "--listen", listen, *flags])
        with pytest.raises(ConfigurationError, match=said):
            serve_settings(args)


def test_a_plaintext_keys_server_on_a_name_like_localhost_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": []}')
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    line = _serve_refused("--list", str(listed), "--keys-file", str(keys_file), "--index-dir",
                          "off", "--listen", f"localhost.example.invalid:{free_port()}")  # fmt: skip
    assert "API keys would cross the network in plaintext" in line


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "[::1]", "::1", "localhost", "[::ffff:127.0.0.1]"]
)
def test_loopback_addresses_and_localhost_stay_loopback(tmp_path: Path, host: str) -> None:
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": []}')
    for flags in (["--keys-file", str(keys_file)], []):
        args = _parser().parse_args(
            ["serve", "--list", str(listed), "--listen", f"{host}:50051", *flags]
        )
        assert serve_settings(args).loopback
