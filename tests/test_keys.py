"""Rate limits that can be met, stable refusal reasons, and keys managed while serving.

Keys files are real files written by ``shixin-check keys ...`` (through
``shixin_check.cli.main``); servers are real, in a thread (``serve``) or a child
process (``ServeProcess``) where a signal has to reach them. Waits poll with a
generous deadline, only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.clients.check_client import CheckClient
from shixin_check.domain.errors import (
    ConfigurationError,
    LimitExceeded,
    PermissionDenied,
    RateLimited,
    ShixinError,
    Unauthenticated,
)
from shixin_check.domain.model import Channel
from shixin_check.server.auth import (
    DISTINCT_KEPT,
    REFUSAL_REASONS,
    EnumerationWatch,
    Gate,
    KeyRing,
    default_burst,
    key_hash,
    key_id,
)
from tests.accessdata import bearer, flight, hotel, refusal
from tests.conftest import RunningServer, log_records
from tests.listdata import WANG, basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.waiting import eventually

Serve = Callable[..., RunningServer]


def keys_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``shixin-check keys ARGS``: exit status, standard output, standard error."""
    capsys.readouterr()
    status = main(["keys", *args])
    out, err = capsys.readouterr()
    return status, out, err


def add(capsys: pytest.CaptureFixture[str], path: Path, principal: str, *flags: str) -> str:
    """A new key for ``principal`` (``keys add``), as printed once."""
    status, out, _ = keys_cli(capsys, "add", "--keys-file", str(path), "--principal", principal,
                              *flags)  # fmt: skip
    assert status == 0
    return out.strip()


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` in one step, so a watching server sees one change, not two."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def reloads(path: Path) -> list[str]:
    """The outcomes of the keys reloads in the audit log at ``path``."""
    return [str(r["outcome"]) for r in log_records(path) if r["method"] == "KEYS_RELOAD"]


# --- bursts that can be met ---------------------------------------------------


def test_a_key_with_only_a_rate_can_send_a_full_batch(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL", "--rate", "5")
    assert json.loads(keys_file.read_text())["keys"][0]["burst"] == 1000
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file)
    stub = server.stub()
    full = pb.CheckBatchRequest(checks=[hotel()] * 1000)
    assert len(stub.CheckConsumptionBatch(full, metadata=bearer(key)).results) == 1000
    # The bucket is spent and refills at 5/s: the rate still holds, and says when to retry.
    error = refusal(lambda: stub.CheckConsumptionBatch(full, metadata=bearer(key)))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(error.trailing_metadata())["retry-after-ms"]) > 0


def test_a_batch_over_the_burst_is_refused_with_the_limit_named(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    status, out, err = keys_cli(capsys, "add", "--keys-file", str(keys_file), "--principal",
                                "hotel-chain", "--channels", "HOTEL", "--rate", "100",
                                "--burst", "500")  # fmt: skip
    assert status == 0 and "batches of more than 500 checks will be refused" in err
    key = out.strip()
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
                   audit_log=tmp_path / "audit.log")  # fmt: skip
    stub = server.stub()
    error = refusal(
        lambda: stub.CheckConsumptionBatch(
            pb.CheckBatchRequest(checks=[hotel()] * 800), metadata=bearer(key)
        )
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "checks: a batch of 800 exceeds the burst of 500 for principal 'hotel-chain'; "
        "send at most 500 per batch"
    )
    assert "retry-after-ms" not in dict(error.trailing_metadata() or ())
    # The refused batch took no tokens: a batch of the burst goes through at once.
    at_most = pb.CheckBatchRequest(checks=[hotel()] * 500)
    assert len(stub.CheckConsumptionBatch(at_most, metadata=bearer(key)).results) == 500
    outcomes = [r["outcome"] for r in log_records(tmp_path / "audit.log")]
    assert outcomes == ["FAILED_PRECONDITION", "OK"]


def test_keys_files_with_burst_zero_or_none_get_the_default(tmp_path: Path) -> None:
    """Files written before the default (burst 0) work without re-adding their keys."""
    keys_file = tmp_path / "old-keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"principal": "zero", "sha256": "a" * 64, "rate_per_second": 200, "burst": 0},
        {"principal": "none", "sha256": "b" * 64, "rate_per_second": 800},
        {"principal": "set", "sha256": "c" * 64, "rate_per_second": 10, "burst": 30},
        {"principal": "free", "sha256": "d" * 64},
    ]}))  # fmt: skip
    ring = KeyRing.load(keys_file)
    bursts = {p.name: (p.rate_per_second, p.burst) for p in ring.by_hash.values()}
    assert bursts == {
        "zero": (200, 1000),
        "none": (800, 1600),
        "set": (10, 30),
        "free": (0, 0),
    }
    assert default_burst(0.5) == 1000 and default_burst(2000) == 4000
    gate = Gate(ring, clock=lambda: 0.0)
    gate.charge(ring.by_hash["a" * 64], 1000)  # a full batch, straight away


def test_a_gate_remembers_known_keys_only_until_its_ring_is_replaced(tmp_path: Path) -> None:
    """The gate keeps the principal of each key it has found, so a repeat skips the
    hash; a replaced ring (a reloaded keys file) must forget them all, and a key the
    ring does not know is never kept."""
    keys = {name: f"sk_{name}-key" for name in ("hotel", "rail")}

    def ring_of(*names: str) -> KeyRing:
        path = tmp_path / f"{'-'.join(names) or 'none'}.json"
        path.write_text(json.dumps({"keys": [
            {"principal": n, "sha256": key_hash(keys[n]), "channels": ["HOTEL"]} for n in names
        ] or [{"principal": "other", "sha256": "e" * 64}]}))  # fmt: skip
        return KeyRing.load(path)

    gate = Gate(ring_of("hotel", "rail"))
    for _ in range(2):
        assert gate.principal([("authorization", f"Bearer {keys['hotel']}")]).name == "hotel"
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="unknown API key"):
            gate.principal([("authorization", "Bearer sk_never-issued")])
    assert gate.principal([("authorization", f"Bearer {keys['rail']}")]).name == "rail"
    gate.replace_ring(ring_of("rail"))
    with pytest.raises(Unauthenticated, match="unknown API key"):
        gate.principal([("authorization", f"Bearer {keys['hotel']}")])
    assert gate.principal([("authorization", f"Bearer {keys['rail']}")]).name == "rail"
    gate.replace_ring(ring_of())
    with pytest.raises(Unauthenticated, match="unknown API key"):
        gate.principal([("authorization", f"Bearer {keys['rail']}")])


def test_a_removed_principal_leaves_no_window_of_identities_behind(tmp_path: Path) -> None:
    """The enumeration watch kept every principal it ever saw with its last window of
    identities (up to the threshold's worth each), removed ones too: a keys file that
    churns principals grew it without end."""
    keys = {name: f"sk_{name}-key" for name in ("hotel", "rail")}

    def ring_of(*names: str) -> KeyRing:
        path = tmp_path / f"{'-'.join(names)}.json"
        path.write_text(json.dumps({"keys": [
            {"principal": n, "sha256": key_hash(keys[n]), "channels": ["HOTEL"]} for n in names
        ]}))  # fmt: skip
        return KeyRing.load(path)

    watch = EnumerationWatch(threshold=1000, window=1e9)
    gate = Gate(ring_of("hotel", "rail"), watch, clock=lambda: 0.0)
    for name in ("hotel", "rail"):
        principal = gate.principal([("authorization", f"Bearer {keys[name]}")])
        for person in range(50):
            gate.observe(principal, person << 64)
    assert set(watch._seen) == {"hotel", "rail"}
    gate.replace_ring(ring_of("rail"))
    assert set(watch._seen) == {"rail"}  # the one still in the ring keeps its window


def test_a_window_holds_a_bounded_number_of_identities_whatever_the_threshold() -> None:
    """A threshold of millions must not let one principal's window grow by ~100 bytes an
    identity for good: past ``DISTINCT_KEPT`` the window keeps that many hashes and
    estimates the count, and still flags a principal past the threshold (within ~3%)."""
    rng = random.Random(20261201)
    quiet = EnumerationWatch(threshold=10**9, window=1e9)
    for _ in range(5 * DISTINCT_KEPT):
        assert not quiet.observe("rail", rng.getrandbits(128), 0.0)
    window = quiet._seen["rail"]
    assert len(window.keys) == DISTINCT_KEPT and len(window.heap or ()) == DISTINCT_KEPT
    assert abs(window.count() - 5 * DISTINCT_KEPT) < 0.03 * 5 * DISTINCT_KEPT

    threshold = 4 * DISTINCT_KEPT
    watch = EnumerationWatch(threshold=threshold, window=1e9, throttle=True)
    flagged_at = 0
    for n in range(1, 2 * threshold):
        key = rng.getrandbits(128)
        if watch.observe("rail", key, 0.0):
            flagged_at = n
            break
        assert not watch.observe("rail", key, 0.0)  # the same identity again counts once
    assert 0.97 * threshold < flagged_at < 1.03 * threshold, flagged_at
    assert watch.throttled("rail", 0.0) and watch.flagged == {"rail": 1}
    assert not watch.throttled("rail", 2e9)  # the next window starts afresh


def test_a_window_counts_exactly_up_to_its_bound() -> None:
    rng = random.Random(7)
    keys = [rng.getrandbits(128) for _ in range(DISTINCT_KEPT)]
    watch = EnumerationWatch(threshold=DISTINCT_KEPT - 1, window=1e9)
    assert not any(watch.observe("hotel", key, 0.0) for key in keys[:-1] * 2)
    assert watch.observe("hotel", keys[-1], 0.0)  # the threshold's next identity, exactly


# --- stable reasons -----------------------------------------------------------


def reason_of(call: Callable[[], object], kind: type[ShixinError]) -> str:
    with pytest.raises(kind) as caught:
        call()
    return caught.value.reason


def test_every_refusal_carries_a_stable_reason(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL", "--rate", "10",
              "--burst", "20")  # fmt: skip
    tls = json.loads(keys_file.read_text())
    tls["tls_principals"] = [{"common_name": "rail-gw", "principal": "12306"}]
    keys_file.write_text(json.dumps(tls))
    ring = KeyRing.load(keys_file)
    now = [0.0]
    watch = EnumerationWatch(threshold=2, window=1e9, throttle=True)  # one window throughout
    gate = Gate(ring, watch, clock=lambda: now[0])
    hotel_chain = gate.principal(bearer(key))
    seen = {
        reason_of(lambda: gate.principal(()), Unauthenticated),
        reason_of(lambda: gate.principal([("authorization", "Basic abc")]), Unauthenticated),
        reason_of(lambda: gate.principal(bearer("sk_never-issued")), Unauthenticated),
        reason_of(lambda: gate.principal((), common_name="stranger"), Unauthenticated),
        reason_of(lambda: hotel_chain.require_role("status"), PermissionDenied),
        reason_of(lambda: hotel_chain.require_channel(Channel.AIRLINE), PermissionDenied),
        reason_of(lambda: gate.charge(hotel_chain, 21), LimitExceeded),
    }
    gate.charge(hotel_chain, 20)
    seen.add(reason_of(lambda: gate.charge(hotel_chain, 1), RateLimited))
    for person in range(2):
        gate.observe(hotel_chain, person << 64)
    seen.add(reason_of(lambda: gate.observe(hotel_chain, 9 << 64), RateLimited))
    assert seen == set(REFUSAL_REASONS)
    assert gate.principal((), common_name="rail-gw").name == "12306"

    # A batch names the check at fault and keeps its reason.
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file)
    engine = server.service.engine
    out = pb.CheckBatchResponse()
    with pytest.raises(PermissionDenied) as caught:
        engine.check_many([hotel(), flight()], engine.view(), out.results, principal=hotel_chain)
    assert str(caught.value).startswith("checks[1]: channel AIRLINE")
    assert caught.value.reason == "CHANNEL_NOT_ALLOWED"


# --- keys list / remove --------------------------------------------------------


def test_keys_list_shows_principals_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    hotel_key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL", "--rate", "200")
    ops_key = add(capsys, keys_file, "operator", "--roles", "status")
    status, out, _ = keys_cli(capsys, "list", "--keys-file", str(keys_file))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PRINCIPAL", "KEY", "ID", "/", "CERTIFICATE", "CHANNELS",
                                "ROLES", "RATE/S", "BURST"]  # fmt: skip
    assert lines[1].split() == ["hotel-chain", key_id(key_hash(hotel_key)), "HOTEL", "check",
                                "200", "1000"]  # fmt: skip
    assert lines[2].split() == ["operator", key_id(key_hash(ops_key)), "*", "status", "-", "-"]
    status, as_json, _ = keys_cli(capsys, "list", "--keys-file", str(keys_file), "--json")
    assert [r["principal"] for r in json.loads(as_json)] == ["hotel-chain", "operator"]
    for key in (hotel_key, ops_key):
        assert key not in out + as_json
        assert key_hash(key) not in out + as_json  # only the id, the hash's start


def test_keys_remove_by_principal_or_key_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    first = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL")
    second = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL")
    add(capsys, keys_file, "operator", "--roles", "status")
    status, _, err = keys_cli(capsys, "remove", "--keys-file", str(keys_file), "--key-id", "ab")
    assert status == 2 and "at least 8 hex characters" in err
    status, out, _ = keys_cli(capsys, "remove", "--keys-file", str(keys_file),
                              "--key-id", key_id(key_hash(first)))  # fmt: skip
    assert status == 0 and out == f"removed key {key_id(key_hash(first))} of 'hotel-chain'\n"
    names = {h: p.name for h, p in KeyRing.load(keys_file).by_hash.items()}
    assert sorted(names.values()) == ["hotel-chain", "operator"]
    assert key_hash(second) in names and key_hash(first) not in names
    status, out, _ = keys_cli(capsys, "remove", "--keys-file", str(keys_file),
                              "--principal", "hotel-chain")  # fmt: skip
    assert status == 0
    assert [p.name for p in KeyRing.load(keys_file).by_hash.values()] == ["operator"]
    status, _, err = keys_cli(capsys, "remove", "--keys-file", str(keys_file),
                              "--principal", "hotel-chain")  # fmt: skip
    assert status == 2 and "nothing matches principal 'hotel-chain'" in err
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left


def test_edits_never_show_a_reader_half_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server reloading while ``keys add`` writes reads the old file or the new one."""
    keys_file = tmp_path / "keys.json"
    add(capsys, keys_file, "first")
    problems: list[str] = []
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            try:
                KeyRing.load(keys_file)
            except ConfigurationError as exc:
                problems.append(str(exc))

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for i in range(30):
            add(capsys, keys_file, f"caller-{i}")
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert len(KeyRing.load(keys_file).by_hash) == 31


def test_a_damaged_keys_file_is_neither_loaded_nor_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    for text in ("", '{"keys": [', "{}", "[]", '{"keys": {}}', '{"keys": [7]}'):
        keys_file.write_text(text)
        with pytest.raises(ConfigurationError):
            KeyRing.load(keys_file)
        status, _, err = keys_cli(capsys, "add", "--keys-file", str(keys_file),
                                  "--principal", "x")  # fmt: skip
        assert status == 2 and str(keys_file) in err
        assert keys_file.read_text() == text  # not overwritten
    with pytest.raises(ConfigurationError):
        KeyRing.load(tmp_path / "missing.json")
    keys_file.write_text('{"keys": []}')  # every key removed on purpose: nobody gets in
    assert KeyRing.load(keys_file).by_hash == {}


_HASH = "a" * 64


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"roles": [[1]]}, "roles must be among"),  # unhashable: a TypeError before
        ({"roles": [{}]}, "roles must be among"),
        ({"rate_per_second": 1, "burst": float("inf")}, "finite numbers, 0 or more"),
        ({"rate_per_second": float("inf")}, "finite numbers, 0 or more"),
        ({"rate_per_second": "1"}, "must be numbers"),
        ({"burst": 2.7}, "burst must be a whole number"),
        ({"channels": {"RAIL": 1}}, "channels must be '*' or channel names"),
        ({"channels": ["RAIL", "NOPE"]}, "channel names: 'NOPE' is none (RAIL, AIRLINE, "),
        ({"channels": ["RAIL", 7]}, "channel names: 7 is none (RAIL, "),
        ({"sha256": "z" * 64}, "sha256 must be 64 hex characters"),
    ],
)
def test_a_keys_file_entry_of_the_wrong_type_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: dict[str, object], said: str
) -> None:
    """Each was a traceback (TypeError, OverflowError) or silently taken (an object's
    keys read as channels, a key hash that no key can have, a burst cut to 2)."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"principal": "p", "sha256": _HASH, **entry}]}))
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        KeyRing.load(keys_file)
    status, _, err = keys_cli(capsys, "list", "--keys-file", str(keys_file))
    assert status == 2 and said in err and len(err.strip().splitlines()) == 1, err
    tls = {"tls_principals": [{"principal": "p", "common_name": "c", **entry}]}
    if "sha256" not in entry:
        keys_file.write_text(json.dumps(tls))
        with pytest.raises(ConfigurationError, match=re.escape(said)):
            KeyRing.load(keys_file)


# --- reloading while serving -------------------------------------------------------


def test_a_removed_key_is_refused_while_the_server_runs(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    hotel_key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL")
    ops_key = add(capsys, keys_file, "operator", "--channels", "*", "--roles", "check")
    audit = tmp_path / "audit.log"
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
                   audit_log=audit)  # fmt: skip
    stub = server.stub()
    assert stub.CheckConsumption(hotel(WANG), metadata=bearer(hotel_key)).decision == pb.DENY

    status, out, _ = keys_cli(capsys, "remove", "--keys-file", str(keys_file),
                              "--principal", "hotel-chain")  # fmt: skip
    assert status == 0 and "hotel-chain" in out

    def refused() -> bool:
        try:
            stub.CheckConsumption(hotel(), metadata=bearer(hotel_key))
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
            assert exc.details() == "unknown API key"
            return True
        return False

    eventually(refused, "the removed key refused")
    assert stub.CheckConsumption(hotel(), metadata=bearer(ops_key)).decision == pb.ALLOW
    assert reloads(audit) == ["removed 'hotel-chain' (the file changed)"]

    new_key = add(capsys, keys_file, "travel-agency", "--channels", "TRAVEL,HOTEL")
    eventually(lambda: len(reloads(audit)) == 2, "the added key reloaded")
    assert reloads(audit)[1] == "added 'travel-agency' (the file changed)"
    assert stub.CheckConsumption(hotel(), metadata=bearer(new_key)).decision == pb.ALLOW


def test_a_bad_keys_file_on_reload_keeps_the_old_keys(
    serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    keys_file = tmp_path / "keys.json"
    key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL")
    audit = tmp_path / "audit.log"
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
                   audit_log=audit)  # fmt: skip
    good = keys_file.read_text()
    replace_text(keys_file, good[: len(good) // 2])  # cut short, as a careless copy would be
    eventually(lambda: len(reloads(audit)) == 1, "the cut file read")
    assert reloads(audit)[0].startswith(f"REFUSED: --keys-file / SHIXIN_KEYS_FILE: {keys_file}")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"keys file {keys_file} refused, the keys in force stay" in e for e in errors)
    assert server.stub().CheckConsumption(hotel(), metadata=bearer(key)).decision == pb.ALLOW

    keys_file.unlink()  # gone altogether: still the old keys
    eventually(lambda: len(reloads(audit)) == 2, "the missing file noticed")
    assert reloads(audit)[1].startswith("REFUSED: ")
    assert server.stub().CheckConsumption(hotel(), metadata=bearer(key)).decision == pb.ALLOW

    replace_text(keys_file, good)  # mended: in force again, nothing changed
    eventually(lambda: len(reloads(audit)) == 3, "the mended file read")
    assert reloads(audit)[2] == "no principal changed (the file changed)"


def test_sighup_reloads_the_keys_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A change the poll cannot see (same size, time and inode) is taken on SIGHUP."""
    keys_file = tmp_path / "keys.json"
    old_key = add(capsys, keys_file, "hotel-chain", "--channels", "HOTEL")
    new_key = add(capsys, tmp_path / "other.json", "hotel-chain", "--channels", "HOTEL")
    audit = tmp_path / "audit.log"
    server = ServeProcess(
        "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
        "--keys-file", str(keys_file), "--audit-log", str(audit), log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        server.wait_serving()
        with CheckClient(server.target, api_key=old_key) as client:
            assert client.check(hotel()).decision == pb.ALLOW
        before = keys_file.stat()
        with keys_file.open("r+") as text:  # rewrite in place: same inode and size
            swapped = text.read().replace(key_hash(old_key), key_hash(new_key))
            text.seek(0)
            text.write(swapped)
        os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        server.proc.send_signal(signal.SIGHUP)
        eventually(lambda: any(r.endswith("(reload requested)") for r in reloads(audit)),
                 "the reload on SIGHUP")  # fmt: skip
        with CheckClient(server.target, api_key=new_key) as client:
            assert client.check(hotel()).decision == pb.ALLOW
        with CheckClient(server.target, api_key=old_key) as client:
            error = refusal(lambda: client.check(hotel()))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert server.proc.poll() is None  # SIGHUP reloads; it does not stop the server
    finally:
        assert server.stop() == 0
    assert f"keys file {keys_file} reloaded: " in server.output()
    assert "(reload requested)" in server.output()


@pytest.mark.parametrize("missing", ["folder", "file in its place"])
def test_keys_add_into_a_folder_that_is_not_there_names_the_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, missing: str
) -> None:
    """It named the temporary file it could not make (``.keys.json.tblcedgj``)."""
    folder = tmp_path / "etc-shixin"
    if missing == "file in its place":
        folder.write_text("")
    path = folder / "keys.json"
    status, out, err = keys_cli(capsys, "add", "--keys-file", str(path), "--principal", "x",
                                "--channels", "HOTEL")  # fmt: skip
    assert (status, out) == (2, "")
    assert err.strip() == (
        f"shixin-check keys: --keys-file {path}: the folder {folder} does not exist (or is "
        "not a folder): make it first, writable by the server's user alone"
    )
    assert not path.exists()
