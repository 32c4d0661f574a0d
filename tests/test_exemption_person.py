"""An exemption covers the person the court allowed, and no one else.

The SPC rules on restricting high consumption (art. 3) let a court allow a
*listed person* one kind of consumption paid from personal assets. On an
organisation's entry that is one related person: the organisation itself has
no personal assets, and one person's permission is not the other related
persons'. Every path that stores or applies exemptions is driven here through
the real pieces: a server on a free port over a watched list folder (memory
mode, deltas included), a restart that maps the compiled index, and Redis (a
loader publishing, a replica serving), plus the refusals, with their fields
and line numbers, of a snapshot, a delta and ``validate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.errors import LoadRejected
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import RedisKeys, connect
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer, settings_for, start_server
from tests.listdata import (
    ACME_USCC,
    ZHANG,
    ZHAO,
    delta,
    org_entry,
    person_entry,
    rid,
    uscc,
    write_jsonl,
)
from tests.processes import run_cli
from tests.waiting import eventually

LISI = rid("11010519700303005")  # ACME's legal representative, allowed to fly
WANGWU = rid("44030519710404006")  # ACME's actual controller: not allowed
OTHER_USCC = uscc("91310104MA0000002")
FLIGHTS: dict[str, Any] = {"channel": "AIRLINE", "from": "2020-01-01", "until": "2099-12-31"}


def acme(exemptions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An organisation's entry with two related persons."""
    return org_entry(
        "E3", ACME_USCC, "北京艾克米科技有限公司",
        [("LEGAL_REPRESENTATIVE", "李四", LISI), ("ACTUAL_CONTROLLER", "王五", WANGWU)],
        exemptions=[dict(e) for e in exemptions or []],
    )  # fmt: skip


def rows_with_lisi_exempted() -> list[dict[str, Any]]:
    return [acme([{**FLIGHTS, "id_number": LISI}]), person_entry("E1", ZHANG, "张伟")]


def flight(stub: pb_grpc.ConsumptionCheckStub, number: str = "", org: str = "") -> tuple[str, str]:
    """(decision, first reason code) of a flight for a person or an organisation."""
    request = build_request("AIRLINE", id_number=number, uscc=org)
    reply = stub.CheckConsumption(request, timeout=5)
    return pb.Decision.Name(reply.decision), reply.reasons[0].code


def assert_only_lisi_exempted(stub: pb_grpc.ConsumptionCheckStub) -> None:
    assert flight(stub, LISI) == ("ALLOW", "EXEMPTED")
    assert flight(stub, WANGWU) == ("DENY", "AIR_TRAVEL")
    assert flight(stub, org=ACME_USCC) == ("DENY", "AIR_TRAVEL")


def status(server: RunningServer) -> pb.ListStatus:
    return server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)


# --- memory mode: a watched folder, deltas, a compiled restart ---------------------


def test_an_organisations_exemption_covers_the_named_person_only(
    serve: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", rows_with_lisi_exempted())
    server = serve(folder)
    eventually(lambda: status(server).version != "", "the list loaded")
    assert_only_lisi_exempted(server.stub())


def test_a_compiled_index_keeps_the_person_across_a_restart(serve: Any, tmp_path: Path) -> None:
    folder, index = tmp_path / "list", tmp_path / "index"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", rows_with_lisi_exempted())
    first = start_server(settings_for(folder, index_dir=index))
    try:
        eventually(lambda: status(first).version != "", "the list loaded")
        assert_only_lisi_exempted(first.stub())
    finally:
        first.stop()
    again = serve(folder, index_dir=index)
    eventually(lambda: status(again).version != "", "the list mapped")
    view = again.service.index.current()
    assert view is not None and view.info.mapped_from  # mapped, not parsed again
    assert_only_lisi_exempted(again.stub())


def test_an_exempt_delta_names_one_person_and_unexempt_takes_it_back(
    serve: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [acme(), person_entry("E1", ZHANG, "张伟")])
    server = serve(folder)
    stub = server.stub()
    eventually(lambda: status(server).version != "", "the list loaded")
    assert flight(stub, LISI) == ("DENY", "AIR_TRAVEL")
    write_jsonl(folder / "delta-0002.jsonl", [
        delta(1, "EXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": LISI}),
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 1, "the EXEMPT applied")
    assert_only_lisi_exempted(stub)
    # the same dates and channel for another person is not that exemption: on this
    # snapshot without a header an UNEXEMPT of one the entry has not is a no-op
    write_jsonl(folder / "delta-0003.jsonl", [
        delta(2, "UNEXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": WANGWU}),
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 2, "the UNEXEMPT of another person")
    assert not status(server).behind
    assert_only_lisi_exempted(stub)
    write_jsonl(folder / "delta-0004.jsonl", [
        delta(3, "UNEXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": LISI}),
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 3, "the UNEXEMPT applied")
    assert flight(stub, LISI) == ("DENY", "AIR_TRAVEL")


def test_a_persons_exemption_without_id_number_still_covers_the_debtor(
    serve: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    rows = [person_entry("E1", ZHANG, "张伟", exemptions=[FLIGHTS]), acme()]
    write_jsonl(folder / "snapshot-0001.jsonl", rows)
    server = serve(folder)
    stub = server.stub()
    eventually(lambda: status(server).version != "", "the list loaded")
    assert flight(stub, ZHANG) == ("ALLOW", "EXEMPTED")
    write_jsonl(folder / "delta-0002.jsonl", [
        delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六")),
        delta(2, "EXEMPT", entry_id="E8", exemption={**FLIGHTS, "channel": "AIRLINE"}),
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 2, "the delta applied")
    assert flight(stub, ZHAO) == ("ALLOW", "EXEMPTED")
    # a named person's number is read as a related person's is: hyphens, lower case,
    # the 15-digit card of the same person
    fifteen = WANGWU[:6] + WANGWU[8:17]
    write_jsonl(folder / "delta-0003.jsonl", [
        delta(3, "LIST", entry=org_entry(
            "E4", OTHER_USCC, "上海另一公司", [("LEGAL_REPRESENTATIVE", "王五", WANGWU)],
            exemptions=[{**FLIGHTS, "id_number": fifteen}])),
        delta(4, "EXEMPT", entry_id="E1",
              exemption={**FLIGHTS, "id_number": f"{ZHANG[:6]}-{ZHANG[6:14]}-{ZHANG[14:]}".lower()}),
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 4, "the delta applied")
    assert flight(stub, ZHANG) == ("ALLOW", "EXEMPTED")
    assert flight(stub, org=OTHER_USCC) == ("DENY", "AIR_TRAVEL")  # never the organisation
    reply = stub.CheckConsumption(build_request("AIRLINE", id_number=WANGWU), timeout=5)
    assert [m.case_number for m in reply.matches] == ["(2024)京0105执1001号"]  # E3's only
    assert [m.organization_name for m in reply.matches] == ["北京艾克米科技有限公司"]


# --- refusals -----------------------------------------------------------------------

#: (an exemption on ACME's entry, the words its refusal says why in)
REFUSED = [
    (FLIGHTS, "is required on an organisation's entry"),
    ({**FLIGHTS, "id_number": ACME_USCC}, "names the organisation itself"),
    ({**FLIGHTS, "id_number": OTHER_USCC}, "names no one in this entry"),
    ({**FLIGHTS, "id_number": ZHAO}, "names no one in this entry"),
]


@pytest.mark.parametrize(("exemption", "why"), REFUSED)
def test_validate_refuses_an_exemption_that_covers_no_person_of_the_entry(
    tmp_path: Path, exemption: dict[str, Any], why: str
) -> None:
    # the first names a related person: good; the second is refused
    rows = [person_entry("E1", ZHANG, "张伟"), acme([{**FLIGHTS, "id_number": WANGWU}, exemption])]
    done = run_cli("validate", str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert done.returncode != 0
    assert f"line 2: exemptions.1.id_number: {why}" in done.stdout + done.stderr


@pytest.mark.parametrize(("exemption", "why"), REFUSED)
def test_a_snapshot_with_such_an_exemption_is_refused_whole(
    serve: Any, tmp_path: Path, exemption: dict[str, Any], why: str
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [person_entry("E1", ZHANG, "张伟"), acme()])
    server = serve(folder)
    eventually(lambda: status(server).version != "", "the list loaded")
    write_jsonl(
        folder / "snapshot-0002.jsonl", [person_entry("E1", ZHANG, "张伟"), acme([exemption])]
    )
    eventually(lambda: status(server).behind, "the snapshot refused")
    assert f"line 2: exemptions.0.id_number: {why}" in status(server).rejected_problem
    assert flight(server.stub(), WANGWU) == ("DENY", "AIR_TRAVEL")
    assert flight(server.stub(), org=ACME_USCC) == ("DENY", "AIR_TRAVEL")


@pytest.mark.parametrize(("exemption", "why"), REFUSED)
def test_an_exempt_delta_naming_no_person_of_the_entry_is_refused(
    serve: Any, tmp_path: Path, exemption: dict[str, Any], why: str
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [person_entry("E1", ZHANG, "张伟"), acme()])
    server = serve(folder)
    eventually(lambda: status(server).version != "", "the list loaded")
    write_jsonl(folder / "delta-0002.jsonl", [
        delta(1, "SUSPEND", entry_id="E1"),
        delta(2, "EXEMPT", entry_id="E3", exemption=exemption),
    ])  # fmt: skip
    eventually(lambda: status(server).behind, "the delta refused")
    assert f"line 2: exemption.id_number: {why}" in status(server).rejected_problem
    assert status(server).last_delta_seq == 0  # nothing of it applied
    assert flight(server.stub(), WANGWU) == ("DENY", "AIR_TRAVEL")
    assert flight(server.stub(), org=ACME_USCC) == ("DENY", "AIR_TRAVEL")


def test_validate_against_a_snapshot_refuses_such_delta_ops(tmp_path: Path) -> None:
    snapshot = write_jsonl(tmp_path / "s.jsonl", [person_entry("E1", ZHANG, "张伟"), acme()])
    ops = write_jsonl(tmp_path / "d.jsonl", [
        delta(1, "LIST", entry={**acme([FLIGHTS]), "entry_id": "E4"}),
        delta(2, "EXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": ZHAO}),
    ])  # fmt: skip
    done = run_cli("validate", str(ops), "--against", str(snapshot))
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "line 1: entry.exemptions.0.id_number: is required on an organisation's entry" in shown
    fixed = write_jsonl(tmp_path / "d2.jsonl", [
        delta(1, "EXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": ZHAO}),
    ])  # fmt: skip
    done = run_cli("validate", str(fixed), "--against", str(snapshot))
    assert done.returncode != 0
    assert "line 1: exemption.id_number: names no one in this entry" in done.stdout + done.stderr


# --- Redis: a loader publishing, a replica serving ----------------------------------


def _serving(server: RunningServer) -> bool:
    return status(server).version != ""


@pytest.mark.redis
def test_redis_holds_the_exemption_on_the_named_persons_match_only(
    redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    client = connect(redis_server.url, timeout=5)
    keyer = SubjectKeyer(SECRET)
    publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", rows_with_lisi_exempted()), keyer)
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: _serving(server), "the version followed")
    stub = server.stub()
    assert_only_lisi_exempted(stub)
    seq = [0]

    def load(*ops: dict[str, Any]) -> None:
        rows = [{**op, "seq": (seq.__setitem__(0, seq[0] + 1) or seq[0])} for op in ops]
        publish_delta(client, write_jsonl(tmp_path / f"d{seq[0]}.jsonl", rows), keyer)
        eventually(lambda: status(server).last_delta_seq == seq[0], f"delta {seq[0]} seen")

    load(delta(0, "EXEMPT", entry_id="E3",
               exemption={**FLIGHTS, "channel": "HOTEL", "id_number": WANGWU}))  # fmt: skip
    hotel = build_request("HOTEL", id_number=WANGWU, purchase={"star_rating": 5})
    assert pb.Decision.Name(stub.CheckConsumption(hotel, timeout=5).decision) == "ALLOW"
    assert flight(stub, WANGWU) == ("DENY", "AIR_TRAVEL")  # a hotel, not a flight
    load(delta(0, "UNEXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": LISI}))
    assert flight(stub, LISI) == ("DENY", "AIR_TRAVEL")
    load(delta(0, "EXEMPT", entry_id="E1", exemption=FLIGHTS))  # a person's: the debtor
    assert flight(stub, ZHANG) == ("ALLOW", "EXEMPTED")
    for exemption, why in REFUSED:
        bad = write_jsonl(tmp_path / "bad.jsonl", [
            delta(seq[0] + 1, "EXEMPT", entry_id="E3", exemption=exemption)])  # fmt: skip
        with pytest.raises(LoadRejected) as refused:
            publish_delta(client, bad, keyer)
        assert [(e.line, e.field) for e in refused.value.errors] == [(1, "exemption.id_number")]
        assert why in refused.value.errors[0].problem
    assert flight(stub, org=ACME_USCC) == ("DENY", "AIR_TRAVEL")
    client.close()


@pytest.mark.redis
def test_a_redis_version_loaded_by_older_code_applies_no_exemption(
    redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    """A version written before exemptions named their person held each on every
    subject of its entry. One without the format mark (as older code wrote it) is
    served with no exemption applied, and exemption deltas on it are refused."""
    client = connect(redis_server.url, timeout=5)
    keyer = SubjectKeyer(SECRET)
    rows = [person_entry("E1", ZHANG, "张伟", exemptions=[FLIGHTS]), acme()]
    version = publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", rows), keyer)
    client.hdel(RedisKeys().meta(version), "format")  # as a version older code loaded
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: _serving(server), "the version followed")
    assert flight(server.stub(), ZHANG) == ("DENY", "AIR_TRAVEL")  # fail closed
    shown = status(server)  # and status says so, not only the log: behind, and why
    assert shown.behind and shown.rejected_source == f"redis version {version}", shown
    assert "loaded by an older shixin-check" in shown.rejected_problem
    exempt = write_jsonl(tmp_path / "d.jsonl", [
        delta(1, "EXEMPT", entry_id="E3", exemption={**FLIGHTS, "id_number": LISI})])  # fmt: skip
    with pytest.raises(LoadRejected) as refused:
        publish_delta(client, exempt, keyer)
    assert "loaded by an older shixin-check" in refused.value.errors[0].problem
    assert "loaded again" in refused.value.errors[0].problem
    publish_snapshot(client, write_jsonl(tmp_path / "s2.jsonl", rows), keyer)
    eventually(lambda: flight(server.stub(), ZHANG) == ("ALLOW", "EXEMPTED"), "reloaded")
    assert not status(server).behind
    client.close()


def test_an_exemption_of_one_ten_digit_passport_frees_no_other(tmp_path: Path, serve: Any) -> None:
    """Ten digits read as a Taiwan permit's old form under any type made two people's
    passports sharing their first eight digits one person: the exemption of one freed
    the other (found by a review before it shipped). Only a Taiwan permit's is read so."""
    entry = org_entry("E3", ACME_USCC, "北京艾克米科技有限公司",
                      [("LEGAL_REPRESENTATIVE", "PAUL", "1234567801"),
                       ("ACTUAL_CONTROLLER", "QUINN", "1234567899")],
                      exemptions=[{**FLIGHTS, "id_type": "PASSPORT", "id_number": "1234567899"}])  # fmt: skip
    for person in entry["related_persons"]:
        person["id_type"] = "PASSPORT"
    stub = serve(write_jsonl(tmp_path / "list.jsonl", [entry])).stub()
    request = build_request("AIRLINE", id_number="1234567801", id_type="PASSPORT")
    paul = stub.CheckConsumption(request, timeout=5)
    assert (pb.Decision.Name(paul.decision), paul.reasons[0].code) == ("DENY", "AIR_TRAVEL")
    request = build_request("AIRLINE", id_number="1234567899", id_type="PASSPORT")
    quinn = stub.CheckConsumption(request, timeout=5)
    assert (pb.Decision.Name(quinn.decision), quinn.reasons[0].code) == ("ALLOW", "EXEMPTED")
