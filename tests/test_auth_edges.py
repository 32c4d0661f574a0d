"""The edges of "Who may ask what": how a key may be written, what a refusal leaves in
the audit log, what a throttled check costs, and which principal names ``keys add``
takes. Through a real server wherever the behaviour is the server's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.server import audit as audit_mod
from shixin_check.server.auth import add_key
from tests.accessdata import Serve, bearer, hotel, refusal
from tests.conftest import RunningServer, log_records
from tests.listdata import ZHANG, basic_rows, rid, write_jsonl
from tests.processes import run_cli
from tests.test_errors import reason
from tests.test_metadata_abuse import first_call


@pytest.mark.parametrize("written", ["Bearer\t{key}", "Bearer \t {key}", "bearer\t\t{key}"])
def test_a_tab_between_bearer_and_the_key_is_ignored(
    guarded: RunningServer, keys: dict[str, str], written: str
) -> None:
    """As any white space is (README). grpc's Python client refuses to send a tab, so a
    raw HTTP/2 client sends it; its first call is what the server answers."""
    metadata = (("authorization", written.format(key=keys["hotel"])),)
    body = hotel(ZHANG).SerializeToString()
    assert first_call(guarded.service.port, "CheckConsumption", body, metadata) == (0, "")


def test_spaces_around_and_between_the_words_are_ignored(
    guarded: RunningServer, keys: dict[str, str]
) -> None:
    metadata = (("authorization", f"  BEARER   {keys['hotel']}  "),)
    assert guarded.stub().CheckConsumption(hotel(ZHANG), metadata=metadata).decision == pb.DENY


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer   ", "   "])
def test_an_authorization_header_without_a_key_is_malformed(
    guarded: RunningServer, value: str
) -> None:
    """Sent but not 'Bearer <key>': API_KEY_MALFORMED, as the README's table says, not
    API_KEY_MISSING (which is for no credentials at all)."""
    metadata = (("authorization", value),)
    error = refusal(lambda: guarded.stub().CheckConsumption(hotel(ZHANG), metadata=metadata))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == "API_KEY_MALFORMED"


def test_an_authentication_refusals_audit_record_says_why(
    guarded: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    """The caller of such a record is ``anonymous``, as every caller's is with
    authentication off: its ``reason`` tells them apart. The chain still verifies."""
    stub = guarded.stub()
    for metadata in (
        (),
        (("authorization", ""),),
        (("authorization", "Basic dXNlcjpwdw=="),),
        bearer("sk_not-a-key"),
    ):
        refusal(lambda: stub.CheckConsumption(hotel(ZHANG), metadata=metadata))  # noqa: B023
    stream = stub.CheckConsumptionStream(iter([hotel(ZHANG, request_id="r1")]))
    assert refusal(lambda: list(stream)).code() is grpc.StatusCode.UNAUTHENTICATED
    refusal(lambda: stub.GetListStatus(pb.ListStatusRequest(), metadata=bearer("sk_nope")))
    stub.CheckConsumption(hotel(ZHANG), metadata=bearer(keys["hotel"]))
    records = log_records(tmp_path / "audit.log")
    assert [(r["method"], r["caller"], r["outcome"], r.get("reason")) for r in records] == [
        ("CheckConsumption", "anonymous", "UNAUTHENTICATED", "API_KEY_MISSING"),
        ("CheckConsumption", "anonymous", "UNAUTHENTICATED", "API_KEY_MALFORMED"),
        ("CheckConsumption", "anonymous", "UNAUTHENTICATED", "API_KEY_MALFORMED"),
        ("CheckConsumption", "anonymous", "UNAUTHENTICATED", "API_KEY_UNKNOWN"),
        ("CheckConsumptionStream", "anonymous", "UNAUTHENTICATED", "API_KEY_MISSING"),
        ("GetListStatus", "anonymous", "UNAUTHENTICATED", "API_KEY_UNKNOWN"),
        ("CheckConsumption", "hotel-chain", "DENY", None),
    ]
    verified = audit_mod.verify(tmp_path / "audit.log")  # live: its head may lag, not differ
    assert verified.ok and verified.records == len(records)


def test_a_check_refused_by_the_enumeration_throttle_costs_no_token(
    serve: Serve, tmp_path: Path
) -> None:
    """A batch of five identities against a threshold of one is throttled whole; the
    five tokens of a burst of five that refills once in 1,000 s stay in the bucket, so
    a check in the next window is answered, not refused RATE_LIMITED."""
    keys_file = tmp_path / "keys.json"
    key = add_key(keys_file, "prober", "*", ["check"], rate_per_second=0.001, burst=5)
    window = 1.0
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        keys_file=keys_file,
        enumeration_threshold=1,
        enumeration_window=window,
        enumeration_throttle=True,
    )
    stub = server.stub()
    people = [hotel(rid(f"11010519700101{i:03d}")) for i in range(5)]
    time.sleep(window - time.time() % window)  # the start of a window: the batch in one
    error = refusal(
        lambda: stub.CheckConsumptionBatch(
            pb.CheckBatchRequest(checks=people), metadata=bearer(key)
        )
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "ENUMERATION_THROTTLED"
    error = refusal(lambda: stub.CheckConsumption(people[0], metadata=bearer(key)))
    assert reason(error) == "ENUMERATION_THROTTLED"  # the rest of the window: one check too
    time.sleep(window - time.time() % window + 0.05)  # the next window
    assert stub.CheckConsumption(people[0], metadata=bearer(key)).decision == pb.ALLOW


def _keys_add(capsys: pytest.CaptureFixture[str], path: Path, principal: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["keys", "add", "--keys-file", str(path), "--principal", principal])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("principal", "said"),
    [
        ("anonymous", "'anonymous' is reserved"),
        ("Anonymous", "'Anonymous' is reserved"),
        ("hotel\nchain", r"'hotel\nchain' holds an unprintable character (U+000A) at position 6"),
        ("hotel\tchain", "(U+0009) at position 6"),
        ("hotel\u200bchain", "(U+200B) at position 6"),
        ("   ", "is empty"),
    ],
)
def test_keys_add_refuses_a_reserved_or_unprintable_principal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, principal: str, said: str
) -> None:
    path = tmp_path / "keys.json"
    assert _keys_add(capsys, path, "hotel-chain")[0] == 0
    before = path.read_bytes()
    status, err = _keys_add(capsys, path, principal)
    assert status == 2
    assert err.startswith("keys add: --principal ") and said in err
    assert err.count("\n") == 1  # one line, however the name is written
    assert path.read_bytes() == before


def test_keys_add_takes_a_name_with_spaces_and_any_script(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    for principal in ("hotel chain", "锦江酒店"):
        assert _keys_add(capsys, path, principal)[0] == 0
    names = [entry["principal"] for entry in json.loads(path.read_text())["keys"]]
    assert names == ["hotel chain", "锦江酒店"]


@pytest.mark.parametrize("principal", ["Anonymous", "gw\nrail", "gw\u200b"])
def test_a_keys_file_edited_to_a_reserved_or_unprintable_principal_is_refused(
    tmp_path: Path, principal: str
) -> None:
    """A file edited by hand is held to what ``keys add`` holds a name to: a key named
    ``anonymous`` was audited as a call with authentication off."""
    path = tmp_path / "keys.json"
    add_key(path, "hotel-chain", "*", ["check"])
    document = json.loads(path.read_text())
    document["keys"][0]["principal"] = principal
    path.write_text(json.dumps(document))
    listed = run_cli("keys", "list", "--keys-file", str(path))
    assert listed.returncode != 0 and "principal" in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    served = run_cli("serve", "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
                     "--keys-file", str(path), "--listen", "127.0.0.1:0")  # fmt: skip
    assert served.returncode != 0 and "principal" in served.stderr, served.stderr
