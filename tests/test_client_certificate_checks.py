"""A client's own certificate and key, checked before any call, and ``keys add
--common-name``, through a real ``shixin-check serve`` with mutual TLS on a free
loopback port, the real console script and the real client library.

- an expired client certificate was UNAVAILABLE ("failed to connect to all
  addresses; ... Socket closed") after the client's retries, which a gateway
  takes for a passing outage: now the console script refuses it in one line
  naming ``--client-cert``, and the library raises ``ValueError`` naming
  ``client_cert``, before any call; one that expires within 14 days is a
  warning (one line; ``ClientCertificateExpiring``) and works;
- an encrypted key said only "PEM lib (_ssl.c:...)": now it says it is encrypted
  and how to decrypt it; a certificate and key swapped say so;
- ``keys add --common-name CN`` adds the ``tls_principals`` entry that maps a
  certificate's CN to a principal (a CN empty, unprintable or mapped already is
  refused), ``keys list`` shows it and ``keys remove --common-name`` removes it,
  all while the server reloads the file.

Certificates are made by openssl with ``tests.test_tls_server_checks``'s helpers
(a CA of our own, EC keys: fast).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import CheckClient, build_request
from shixin_check.clients.tls import ClientCertificateExpiring
from tests.accessdata import refusal
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.test_tls_server_checks import _CA_CONFIG, _openssl, _sign
from tests.waiting import eventually

#: the CN of the gateway's certificates, and the principal it names in the keys file
GATEWAY_CN = "gw-rail"
RAIL = build_request("RAIL", id_number=ZHANG, purchase={"train_number": "G1", "seat": "NO_SEAT"})
RAIL_FLAGS = ("--channel", "RAIL", "--id", ZHANG, "--train", "G1", "--seat", "NO_SEAT")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; ``server`` for 127.0.0.1; client certificates of CN ``gw-rail`` that
    last (``gw``, 400 days), expire in 3 days (``soon``) or expired in 2020
    (``expired``); ``gw``'s key encrypted as PKCS#8 (``gw_pkcs8.key``) and in
    OpenSSL's traditional form (``gw_trad.key``, a ``Proc-Type`` header); a second
    gateway ``gw-hotel``."""
    d = tmp_path_factory.mktemp("client-pki")
    (d / "ca.cnf").write_text(_CA_CONFIG)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("2000\n")
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "500",
             "-subj", "/CN=shixin client test CA")  # fmt: skip
    _sign(d, "server", "/CN=server", "-days", "400", ext="subjectAltName=IP:127.0.0.1")
    _sign(d, "gw", f"/CN={GATEWAY_CN}", "-days", "400")
    _sign(d, "soon", f"/CN={GATEWAY_CN}", "-days", "3")
    _sign(d, "expired", f"/CN={GATEWAY_CN}", "-startdate", "20200101000000Z",
          "-enddate", "20200201000000Z")  # fmt: skip
    _sign(d, "hotel", "/CN=gw-hotel", "-days", "400")
    _openssl(d, "pkey", "-in", "gw.key", "-out", "gw_pkcs8.key", "-aes256", "-passout", "pass:x")
    _openssl(d, "ec", "-in", "gw.key", "-out", "gw_trad.key", "-aes256", "-passout", "pass:x")
    assert b"Proc-Type: 4,ENCRYPTED" in (d / "gw_trad.key").read_bytes()
    return d


class MutualTls(NamedTuple):
    """A ``shixin-check serve`` child wanting client certificates, its keys file and PKI."""

    server: ServeProcess
    keys_file: Path
    pki: Path

    def file(self, name: str) -> str:
        return str(self.pki / name)

    def client(self, cert: str, key: str, **options: object) -> CheckClient:
        return CheckClient(self.server.target, root_ca=(self.pki / "ca.pem").read_bytes(),
                           client_cert=(self.pki / cert).read_bytes(),
                           client_key=(self.pki / key).read_bytes(), **options)  # type: ignore[arg-type]  # fmt: skip

    def cli(
        self, command: str, cert: str, key: str, *flags: str
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(command, "--target", self.server.target, "--ca", self.file("ca.pem"),
                       "--client-cert", self.file(cert), "--client-key", self.file(key), *flags)  # fmt: skip


@pytest.fixture(scope="module")
def mtls(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTls]:
    """The server, whose keys file names CN ``gw-rail`` principal ``rail`` (RAIL),
    written by ``keys add --common-name`` itself."""
    d = tmp_path_factory.mktemp("client-mtls")
    keys_file = d / "keys.json"
    done = run_cli("keys", "add", "--keys-file", str(keys_file), "--principal", "rail",
                   "--common-name", GATEWAY_CN, "--channels", "RAIL", "--roles", "check,status")  # fmt: skip
    assert done.returncode == 0, done.stderr
    server = ServeProcess(
        "--list", str(write_jsonl(d / "l.jsonl", basic_rows())), "--index-dir", "off",
        "--keys-file", str(keys_file), "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.pem"),
        log=d / "serve.log",
    )  # fmt: skip
    running = MutualTls(server, keys_file, pki)
    try:
        eventually(lambda: _answers(running), "the TLS server answers gw-rail")
        yield running
    finally:
        server.stop()


def _answers(mtls: MutualTls) -> bool:
    assert mtls.server.proc.poll() is None, mtls.server.output()
    try:
        with mtls.client("gw.pem", "gw.key", timeout=1) as client:
            return client.check(RAIL).decision == pb.DENY
    except grpc.RpcError:
        return False


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


# --- the client certificate's dates -------------------------------------------------


def test_the_console_script_refuses_an_expired_client_certificate_in_one_line(
    mtls: MutualTls,
) -> None:
    """It was ``UNAVAILABLE: failed to connect to all addresses; ... Socket closed``."""
    cert = mtls.file("expired.pem")
    for command, flags in (("check", RAIL_FLAGS), ("status", ()), ("health", ())):
        line = _one_line(mtls.cli(command, "expired.pem", "expired.key", *flags))
        assert line.startswith(f"shixin-check {command}: --client-cert {cert}: the certificate "
                               "expired at 2020-02-01 00:00:00 UTC"), line  # fmt: skip
        assert "UNAVAILABLE" not in line
    done = mtls.cli("check", "gw.pem", "gw.key", *RAIL_FLAGS)  # the same server, a current one
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("DENY"), done.stdout


def test_the_console_script_warns_in_one_line_of_a_certificate_expiring_soon(
    mtls: MutualTls,
) -> None:
    done = mtls.cli("check", "soon.pem", "soon.key", *RAIL_FLAGS)
    assert done.returncode == 0 and done.stdout.startswith("DENY"), done.stderr
    (line,) = done.stderr.strip().splitlines()  # the library's own warning is not repeated
    assert line.startswith(f"shixin-check check: warning: --client-cert {mtls.file('soon.pem')}: "
                           "the certificate expires in 2 days, at "), line  # fmt: skip


def test_the_library_raises_value_error_for_an_expired_certificate_before_any_call(
    mtls: MutualTls,
) -> None:
    """It was ``ServiceUnavailable`` after 0.7 s of retries, a transient outage to a
    gateway; now the constructor refuses, naming ``client_cert``."""
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^client_cert: the certificate expired at 2020-02-01"):
        mtls.client("expired.pem", "expired.key")
    with pytest.raises(ValueError, match=r"^client_cert: the certificate expired at 2020-02-01"):
        AsyncCheckClient(mtls.server.target, root_ca=(mtls.pki / "ca.pem").read_bytes(),
                         client_cert=(mtls.pki / "expired.pem").read_bytes(),
                         client_key=(mtls.pki / "expired.key").read_bytes())  # fmt: skip
    assert time.monotonic() - started < 0.5  # no retries: nothing was sent


def test_the_library_warns_of_a_certificate_expiring_soon_and_works(mtls: MutualTls) -> None:
    with pytest.warns(ClientCertificateExpiring, match=r"^client_cert: the certificate expires in 2 days"):  # fmt: skip
        client = mtls.client("soon.pem", "soon.key", timeout=5)
    with client:
        assert client.check(RAIL).decision == pb.DENY
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a certificate of 400 days: no warning at all
        with mtls.client("gw.pem", "gw.key", timeout=5) as lasting:
            assert lasting.check(RAIL).decision == pb.DENY

    async def asynchronous() -> int:
        async with AsyncCheckClient(mtls.server.target, timeout=5,
                                    root_ca=(mtls.pki / "ca.pem").read_bytes(),
                                    client_cert=(mtls.pki / "soon.pem").read_bytes(),
                                    client_key=(mtls.pki / "soon.key").read_bytes()) as client:  # fmt: skip
            return (await client.check(RAIL)).decision

    with pytest.warns(ClientCertificateExpiring):
        assert asyncio.run(asynchronous()) == pb.DENY


# --- an encrypted key, a certificate and key swapped ---------------------------------


@pytest.mark.parametrize("key", ["gw_pkcs8.key", "gw_trad.key"])
def test_an_encrypted_key_is_named_with_how_to_decrypt_it(mtls: MutualTls, key: str) -> None:
    """It was ``not usable (...): [SSL] PEM lib (_ssl.c:3926)``."""
    path = mtls.file(key)
    line = _one_line(mtls.cli("check", "gw.pem", key, *RAIL_FLAGS))
    assert line.startswith(f"shixin-check check: --client-cert {mtls.file('gw.pem')} and "
                           f"--client-key {path}: the private key is encrypted"), line  # fmt: skip
    assert f"`openssl pkey -in {path} -out {path}.plain`" in line
    assert "PEM lib" not in line
    with pytest.raises(ValueError, match=r"^client_cert and client_key: the private key is encrypted"):  # fmt: skip
        mtls.client("gw.pem", key)
    # decrypted as the message says, the key works
    plain = Path(path + ".plain")
    _openssl(mtls.pki, "pkey", "-in", path, "-out", str(plain), "-passin", "pass:x")
    done = mtls.cli("check", "gw.pem", plain.name, *RAIL_FLAGS)
    assert done.returncode == 0 and done.stdout.startswith("DENY"), done.stderr


def test_a_certificate_and_key_given_the_wrong_way_round_are_named_so(mtls: MutualTls) -> None:
    line = _one_line(mtls.cli("check", "gw.key", "gw.pem", *RAIL_FLAGS))
    assert line.startswith(f"shixin-check check: --client-cert {mtls.file('gw.key')} and "
                           f"--client-key {mtls.file('gw.pem')}: given the wrong way round "
                           "(a private key as the certificate, a certificate as the key): "
                           "swap them"), line  # fmt: skip
    with pytest.raises(ValueError, match=r"^client_cert and client_key: given the wrong way round"):  # fmt: skip
        mtls.client("gw.key", "gw.pem")
    with pytest.raises(ValueError, match="the key is not the certificate's"):  # another's key
        mtls.client("gw.pem", "hotel.key")


# --- keys add --common-name ----------------------------------------------------------


def _keys(mtls: MutualTls, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", *args, "--keys-file", str(mtls.keys_file))


def _rail_answer(mtls: MutualTls, cert: str, key: str) -> grpc.StatusCode:
    try:
        with mtls.client(cert, key, timeout=3) as client:
            client.check(RAIL)
            return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


def test_keys_add_common_name_maps_a_certificate_to_a_principal(mtls: MutualTls) -> None:
    """The fixture's ``keys add --common-name gw-rail`` let gw-rail in (RAIL only); a
    second gateway is let in by the same command and out by ``keys remove``."""
    with mtls.client("gw.pem", "gw.key", timeout=5) as gateway:
        assert gateway.check(RAIL).decision == pb.DENY
        hotel = build_request("HOTEL", id_number=ZHANG, purchase={"star_rating": 5})
        assert refusal(lambda: gateway.check(hotel)).code() is grpc.StatusCode.PERMISSION_DENIED
    assert _rail_answer(mtls, "hotel.pem", "hotel.key") is grpc.StatusCode.UNAUTHENTICATED

    added = _keys(mtls, "add", "--principal", "hotel-rail", "--common-name", "gw-hotel",
                  "--channels", "RAIL", "--rate", "50")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "sk_" not in added.stdout  # no key is made for a certificate
    eventually(lambda: _rail_answer(mtls, "hotel.pem", "hotel.key") is grpc.StatusCode.OK,
               "the server reloads the keys file and lets gw-hotel in")  # fmt: skip
    rows = json.loads(_keys(mtls, "list", "--json").stdout)
    assert {"principal": "hotel-rail", "credential": "certificate", "id": "gw-hotel",
            "channels": ["RAIL"], "roles": ["check"], "rate_per_second": 50.0,
            "burst": 1000} in rows  # fmt: skip
    assert "CN=gw-hotel" in _keys(mtls, "list").stdout

    removed = _keys(mtls, "remove", "--common-name", "gw-hotel")
    assert removed.returncode == 0 and "certificate 'gw-hotel' of 'hotel-rail'" in removed.stdout
    eventually(
        lambda: _rail_answer(mtls, "hotel.pem", "hotel.key") is grpc.StatusCode.UNAUTHENTICATED,
        "gw-hotel is refused again",
    )
    assert _rail_answer(mtls, "gw.pem", "gw.key") is grpc.StatusCode.OK  # the other one stays


def test_keys_add_refuses_a_common_name_that_cannot_work_in_one_line(mtls: MutualTls) -> None:
    before = mtls.keys_file.read_bytes()
    for common_name, said in (
        ("", "--common-name is empty"),
        ("gw\nrail", "--common-name 'gw\\nrail' holds an unprintable character (U+000A)"),
        (" gw-rail", "--common-name ' gw-rail' starts or ends with a space"),
        ("g" * 65, "--common-name is 65 characters long"),
        (GATEWAY_CN, f"common name '{GATEWAY_CN}' already names principal 'rail'"),
    ):
        line = _one_line(_keys(mtls, "add", "--principal", "other", "--common-name", common_name))
        assert said in line, line
    line = _one_line(_keys(mtls, "add", "--principal", "rail", "--common-name", GATEWAY_CN))
    assert f"common name '{GATEWAY_CN}' already names this principal" in line
    assert mtls.keys_file.read_bytes() == before  # nothing written
