"""Who may ask what, through real servers: keys, mutual TLS, scopes, limits.

Certificates are made by openssl in the test's temporary folder (none is
checked in); keys files are written by ``shixin-check keys add``'s function.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import CheckClient, build_request
from tests.accessdata import flight, hotel, refusal
from tests.conftest import RunningServer, log_records
from tests.listdata import WANG, ZHANG, ZHAO, basic_rows, rid, write_jsonl
from tests.waiting import WAIT_S

Serve = Callable[..., RunningServer]


def test_keys_file_holds_only_hashes(keys: dict[str, str]) -> None:
    text = Path(keys["path"]).read_text()
    for name in ("hotel", "ops", "slow"):
        assert keys[name] not in text
    assert oct(Path(keys["path"]).stat().st_mode & 0o777) == "0o600"


def test_credentials_and_scopes(guarded: RunningServer, keys: dict[str, str]) -> None:
    target = guarded.address
    with CheckClient(target) as anonymous:
        error = refusal(lambda: anonymous.check(hotel()))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "credentials required" in error.details()
    with CheckClient(target, api_key="sk_not-a-key") as wrong:
        assert refusal(lambda: wrong.check(hotel())).code() is grpc.StatusCode.UNAUTHENTICATED
    with CheckClient(target, api_key=keys["hotel"]) as hotel_client:
        assert hotel_client.check(hotel(WANG)).decision == pb.DENY
        error = refusal(lambda: hotel_client.check(flight()))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "channel AIRLINE is outside the scope of principal 'hotel-chain'" in error.details()
        batch = refusal(lambda: hotel_client.check_batch([hotel(), flight()]))
        assert batch.code() is grpc.StatusCode.PERMISSION_DENIED
        assert batch.details().startswith("checks[1]")
        assert refusal(hotel_client.status).code() is grpc.StatusCode.PERMISSION_DENIED
    with CheckClient(target, api_key=keys["ops"]) as ops:
        assert ops.status().serving
        assert refusal(lambda: ops.check(hotel())).code() is grpc.StatusCode.PERMISSION_DENIED


def test_refused_calls_are_audited(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    with CheckClient(guarded.address) as anonymous:
        refusal(lambda: anonymous.check(hotel(ZHANG)))
    with CheckClient(guarded.address, api_key=keys["hotel"]) as client:
        refusal(lambda: client.check(flight(ZHANG)))
        client.check(hotel(ZHANG))
    records = log_records(tmp_path / "audit.log")
    outcomes = [(r["caller"], r["outcome"]) for r in records]
    assert outcomes == [
        ("anonymous", "UNAUTHENTICATED"),
        ("hotel-chain", "PERMISSION_DENIED"),
        ("hotel-chain", "DENY"),
    ]
    raw = (tmp_path / "audit.log").read_bytes() + (tmp_path / "hits.log").read_bytes()
    assert ZHANG.encode() not in raw
    assert keys["hotel"].encode() not in raw


def test_rate_limit_says_when_to_retry(guarded: RunningServer, keys: dict[str, str]) -> None:
    stub = guarded.stub()
    metadata = (("authorization", f"Bearer {keys['slow']}"),)
    for _ in range(3):  # the burst
        stub.CheckConsumption(flight(), metadata=metadata)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CheckConsumption(flight(), metadata=metadata)
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = dict(error.trailing_metadata())["retry-after-ms"]
    assert 0 < int(retry) <= 500
    time.sleep(int(retry) / 1000 + 0.05)
    assert stub.CheckConsumption(flight(), metadata=metadata).decision == pb.ALLOW
    too_big = pb.CheckBatchRequest(checks=[flight()] * 10)  # more than the burst: never
    error = refusal(lambda: stub.CheckConsumptionBatch(too_big, metadata=metadata))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "exceeds the burst of 3 for principal 'slow-caller'" in error.details()
    assert "retry-after-ms" not in dict(error.trailing_metadata() or ())


def test_enumeration_is_flagged_and_throttled(serve: Serve, tmp_path: Path) -> None:
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        audit_log=tmp_path / "audit.log",
        enumeration_threshold=5,
        enumeration_window=3600.0,
        enumeration_throttle=True,
    )
    stub = server.stub()
    people = [rid(f"11010519700101{i:03d}") for i in range(6)]
    for number in people[:5]:
        stub.CheckConsumption(flight(number))
    stub.CheckConsumption(flight(people[0]))  # the same identity again: not more distinct
    error = refusal(lambda: stub.CheckConsumption(flight(people[5])))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "distinct identities" in error.details()
    flags = stub.GetListStatus(pb.ListStatusRequest()).enumeration_flags
    assert dict(flags) == {"anonymous": 1}
    records = log_records(tmp_path / "audit.log")
    assert [r["caller"] for r in records if r["method"] == "ENUMERATION_SUSPECTED"] == ["anonymous"]


def test_a_wall_clock_stepped_back_opens_no_fresh_enumeration_window(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window was counted by the wall clock: an NTP step back of an hour (or a
    forward one) began a new window, the count at 0 and the throttle lifted."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), enumeration_threshold=3,
                   enumeration_window=3600.0, enumeration_throttle=True)  # fmt: skip
    stub = server.stub()
    people = [rid(f"11010519700101{i:03d}") for i in range(5)]
    for number in people[:3]:
        stub.CheckConsumption(flight(number))
    assert refusal(lambda: stub.CheckConsumption(flight(people[3]))).code() is (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - 3600)
    assert refusal(lambda: stub.CheckConsumption(flight(people[4]))).code() is (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_unauthenticated_server_binds_only_loopback(tmp_path: Path) -> None:
    listing = str(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    done = subprocess.run(
        [sys.executable, "-m", "shixin_check.cli", "serve", "--list", listing, "--listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "authentication is off" in done.stderr and "--insecure" in done.stderr


# --- mutual TLS -----------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, and client certificates for two gateways."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=shixin test CA", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", "server.ext"), ("rail-gw", None), ("stranger", None)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        sign = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1"]  # fmt: skip
        _openssl(*sign, *(["-extfile", ext] if ext else []), cwd=d)
    return d


def test_mutual_tls_names_the_principal(serve: Serve, tmp_path: Path, pki: Path) -> None:
    keys_file = tmp_path / "tls-keys.json"
    keys_file.write_text(orjson.dumps({"keys": [], "tls_principals": [
        {"common_name": "rail-gw", "principal": "12306", "channels": ["RAIL"], "roles": ["check"]},
    ]}).decode())  # fmt: skip
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
        tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem",
    )  # fmt: skip
    ca = (pki / "ca.pem").read_bytes()

    def client(name: str) -> CheckClient:
        return CheckClient(server.address, root_ca=ca, client_cert=(pki / f"{name}.pem").read_bytes(),
                           client_key=(pki / f"{name}.key").read_bytes())  # fmt: skip

    rail = build_request(
        "RAIL", id_number=ZHANG, purchase={"train_number": "G1", "seat": "NO_SEAT"}
    )
    with client("rail-gw") as gateway:
        assert gateway.check(rail).decision == pb.DENY
        assert refusal(lambda: gateway.check(flight())).code() is grpc.StatusCode.PERMISSION_DENIED
    with client("stranger") as stranger:
        error = refusal(lambda: stranger.check(rail))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "'stranger' names no principal" in error.details()
    with CheckClient(server.address, root_ca=ca, timeout=3) as no_certificate:
        assert refusal(lambda: no_certificate.check(rail)).code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.redis
def test_no_plaintext_id_anywhere_the_service_writes(
    serve: Serve, tmp_path: Path, redis_server: object
) -> None:
    """Load, check listed and unlisted people, then search every file written
    (logs, Redis's append-only files) and the whole Redis keyspace."""
    from shixin_check.domain.keys import SubjectKeyer
    from shixin_check.loader.index_redis import connect
    from shixin_check.loader.publish_redis import publish_snapshot
    from tests.conftest import SECRET, RedisServer

    assert isinstance(redis_server, RedisServer)
    feed = tmp_path / "feed"
    feed.mkdir()
    client = connect(redis_server.url, timeout=5)
    publish_snapshot(client, write_jsonl(feed / "s.jsonl", basic_rows()), SubjectKeyer(SECRET))
    out = tmp_path / "out"
    server = serve(
        None, redis=redis_server.url, hit_log=out / "hits.log", audit_log=out / "audit.log"
    )
    deadline = time.monotonic() + WAIT_S
    while server.service.engine.source.current() is None:
        assert time.monotonic() < deadline, "the server never loaded the list from Redis"
        time.sleep(0.02)
    used = [ZHANG, WANG, ZHAO]
    stub = server.stub()
    for number in used:
        stub.CheckConsumption(flight(number))
        stub.CheckConsumption(flight(number.lower()[:17] + number[17].lower()))
    stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=[flight(n) for n in used]))
    written = [p for p in tmp_path.rglob("*") if p.is_file() and feed not in p.parents]
    assert {p.name for p in written} >= {"hits.log", "audit.log"}
    everything = b"".join(p.read_bytes() for p in written)
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        if kind == b"hash":
            everything += b"".join(k + v for k, v in client.hgetall(name).items())
        elif kind == b"string":
            everything += client.get(name)
        elif kind == b"stream":
            everything += repr(client.xrange(name)).encode()
    client.close()
    assert b"DENY" in everything  # the hit log is really there
    for number in used:
        assert number.encode() not in everything
        assert number.lower().encode() not in everything


def test_tls_files_that_cannot_be_used_are_named_before_anything_starts(
    tmp_path: Path, pki: Path
) -> None:
    """grpcio reads them only when it binds: a server given a file that is not a
    certificate said "the port is in use", after several lines of grpc's own log."""
    from tests.processes import free_port, run_cli

    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    port = str(free_port())
    for cert, key, said in (
        (listed, listed, f"{listed} holds no PEM block"),
        (pki / "server.pem", pki / "rail-gw.key", "not usable"),  # another certificate's key
    ):
        done = run_cli("serve", "--list", str(listed), "--listen", f"127.0.0.1:{port}",
                       "--tls-cert", str(cert), "--tls-key", str(key))  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "port is in use" not in done.stderr
    for flags, said in (
        (("--ca", str(listed)), f"--ca {listed}: {listed} holds no PEM block"),
        (("--client-cert", str(pki / "rail-gw.pem")), "--client-cert and --client-key go together"),
        (("--api-key", "k\u4e2d"), "--api-key: must be printable ASCII without spaces"),
        (("--api-key", "k" * 2000), "--api-key: is 2000 characters long; at most 1024"),
        (("--target", " "), "--target: is empty"),
    ):
        done = run_cli("check", "--channel", "HOTEL", "--id", ZHANG, "--target",
                       f"127.0.0.1:{port}", *flags)  # fmt: skip
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
