"""A sole proprietor's exemption, however it arrives, and the count of subject keys.

A PERSON entry whose document number is a valid USCC (a sole proprietor's
``92...`` code given as a passport number) is keyed as that organisation, so its
debtor has no document type (``listfile.as_resident``). A court's exemption on
that entry covers its debtor wherever it comes from: the snapshot row, a delta
LIST, an EXEMPT op on a snapshot row or on an entry a delta listed, in memory and
in Redis alike (one rule: ``ListEntry.exempts``). An organisation's entry's own
debtor, the organisation, is still never covered: it has no personal assets.

GetListStatus.subject_keys counts, as the snapshot does, one key a subject of
each entry in force: a DELIST or a LIST replacing an entry takes its keys off,
in memory and in Redis.
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
from shixin_check.loader.index_memory import matches_of
from shixin_check.loader.index_redis import Client
from shixin_check.loader.listfile import parse_entry
from shixin_check.loader.publish_redis import publish_delta, publish_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import ACME_USCC, ZHANG, delta, org_entry, person_entry, rid, uscc, write_jsonl
from tests.waiting import eventually

LISI = rid("11010519700303005")  # ACME's legal representative, allowed to fly
SOLE_SNAP = uscc("92310101MA0000013")  # a sole proprietor listed in the snapshot, exempted
SOLE_BASE = uscc("92310101MA0000021")  # listed in the snapshot, exempted by an EXEMPT op
SOLE_LIST = uscc("92310101MA000003X")  # listed by a delta with its exemption
SOLE_LATE = uscc("92310101MA0000048")  # listed by a delta, then exempted by an EXEMPT op
FLIGHTS: dict[str, Any] = {"channel": "AIRLINE", "from": "2020-01-01", "until": "2099-12-31"}


def sole(
    entry_id: str, code: str, exemptions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A PERSON entry under a passport number that is a USCC: keyed as that USCC."""
    row = person_entry(entry_id, code, "个体户" + entry_id, exemptions=exemptions)
    row["subject"]["id_type"] = "PASSPORT"
    return row


def acme(exemptions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return org_entry(
        "E3", ACME_USCC, "北京艾克米科技有限公司", [("LEGAL_REPRESENTATIVE", "李四", LISI)],
        exemptions=exemptions or [],
    )  # fmt: skip


def snapshot_rows() -> list[dict[str, Any]]:
    return [
        sole("S1", SOLE_SNAP, [FLIGHTS]),
        sole("S2", SOLE_BASE),
        acme([{**FLIGHTS, "id_number": LISI}]),
        person_entry("E1", ZHANG, "张伟"),
    ]


#: the ops of the deltas, in order (seq from 1)
OPS: list[dict[str, Any]] = [
    delta(0, "LIST", entry=sole("S3", SOLE_LIST, [FLIGHTS])),
    delta(0, "LIST", entry=sole("S4", SOLE_LATE)),
    delta(0, "EXEMPT", entry_id="S4", exemption=FLIGHTS),  # on an entry a delta listed
    delta(0, "EXEMPT", entry_id="S2", exemption=FLIGHTS),  # on a snapshot row
    delta(0, "LIST", entry=sole("S1", SOLE_SNAP, [FLIGHTS])),  # the snapshot's row again
    # an organisation's entry listed by a delta: its person exempted, never itself
    delta(0, "LIST", entry={**acme([{**FLIGHTS, "id_number": LISI}]), "entry_id": "E4"}),
]


def flight(
    stub: pb_grpc.ConsumptionCheckStub, id_number: str = "", id_type: str = "RESIDENT_ID",
    uscc: str = "",
) -> tuple[str, str]:  # fmt: skip
    request = build_request("AIRLINE", id_number=id_number, id_type=id_type, uscc=uscc)
    reply = stub.CheckConsumption(request, timeout=5)
    return pb.Decision.Name(reply.decision), reply.reasons[0].code


def assert_every_sole_proprietor_exempted(stub: pb_grpc.ConsumptionCheckStub) -> None:
    for code in (SOLE_SNAP, SOLE_BASE, SOLE_LIST, SOLE_LATE):
        assert flight(stub, uscc=code) == ("ALLOW", "EXEMPTED"), code
        # checked under the document type it was listed under: the same key
        assert flight(stub, id_number=code, id_type="PASSPORT") == ("ALLOW", "EXEMPTED"), code
    assert flight(stub, id_number=LISI) == ("ALLOW", "EXEMPTED")
    assert flight(stub, uscc=ACME_USCC) == ("DENY", "AIR_TRAVEL")  # never the organisation
    assert flight(stub, id_number=ZHANG) == ("DENY", "AIR_TRAVEL")


def status(server: RunningServer) -> pb.ListStatus:
    return server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5)


def numbered(ops: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    return [{**op, "seq": first + i} for i, op in enumerate(ops)]


# --- the rule itself ----------------------------------------------------------------


def test_the_organisation_of_its_own_entry_is_never_covered() -> None:
    """Even an exemption that reached an entry naming the organisation (the loaders
    refuse one) gives the organisation's match none; a sole proprietor's debtor,
    keyed by the same kind of code, gets its own."""
    keyer = SubjectKeyer(SECRET)
    org = parse_entry(acme([{**FLIGHTS, "id_number": LISI}]))
    naming_org = org.exemptions[0]._replace(id_type=None, id_number=org.debtor.id_number)
    forced = org._replace(exemptions=(*org.exemptions, naming_org))
    matches = {m.role.name: m.exemptions for _, m in matches_of(forced, keyer)}
    assert matches["DEBTOR"] == ()
    assert len(matches["LEGAL_REPRESENTATIVE"]) == 1
    person = parse_entry(sole("S3", SOLE_LIST, [FLIGHTS]))
    assert person.debtor.id_type is None  # keyed as the USCC
    [(_, match)] = matches_of(person, keyer)
    assert len(match.exemptions) == 1


# --- memory mode: a watched folder --------------------------------------------------


def test_memory_honours_a_sole_proprietors_exemption_however_it_came(
    serve: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", snapshot_rows())
    server = serve(folder)
    stub = server.stub()
    eventually(lambda: status(server).version != "", "the list loaded")
    assert flight(stub, uscc=SOLE_SNAP) == ("ALLOW", "EXEMPTED")
    assert flight(stub, uscc=SOLE_BASE) == ("DENY", "AIR_TRAVEL")
    write_jsonl(folder / "delta-0002.jsonl", numbered(OPS, 1))
    eventually(lambda: status(server).last_delta_seq == len(OPS), "the delta applied")
    assert not status(server).behind, status(server).rejected_problem
    assert_every_sole_proprietor_exempted(stub)
    assert flight(stub, uscc=ACME_USCC) == ("DENY", "AIR_TRAVEL")  # E4's debtor too
    # naming the organisation on its delta-listed entry is refused, as on a snapshot row
    write_jsonl(folder / "delta-0003.jsonl", [
        delta(len(OPS) + 1, "EXEMPT", entry_id="E4", exemption={**FLIGHTS, "id_number": ACME_USCC}),
    ])  # fmt: skip
    eventually(lambda: status(server).behind, "the delta refused")
    assert "exemption.id_number: names the organisation itself" in status(server).rejected_problem
    assert flight(stub, uscc=ACME_USCC) == ("DENY", "AIR_TRAVEL")


def test_memory_counts_the_subject_keys_of_the_entries_in_force(serve: Any, tmp_path: Path) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", snapshot_rows())  # 3 persons, ACME and Li Si
    server = serve(folder)
    eventually(lambda: status(server).version != "", "the list loaded")
    assert status(server).subject_keys == 5
    write_jsonl(folder / "delta-0002.jsonl", [
        delta(1, "DELIST", entry_id="E3"),  # a snapshot row: its 2 keys go
        delta(2, "LIST", entry=sole("S1", SOLE_SNAP)),  # replaces a snapshot row: 1 for 1
        delta(3, "LIST", entry=sole("S3", SOLE_LIST)),  # a new entry: 1 more
        delta(4, "LIST", entry=sole("S3", SOLE_LIST, [FLIGHTS])),  # replaces it: 1 for 1
    ])  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 4, "the delta applied")
    assert status(server).subject_keys == 4
    write_jsonl(folder / "delta-0003.jsonl", [delta(5, "DELIST", entry_id="S3")])
    eventually(lambda: status(server).last_delta_seq == 5, "the DELIST applied")
    assert (status(server).entries_total, status(server).subject_keys) == (3, 3)


# --- Redis: a loader publishing, a replica serving ----------------------------------


def replica(
    client: Client, keyer: SubjectKeyer, redis_server: RedisServer, serve: Any, tmp_path: Path
) -> RunningServer:
    """A replica of the test's Redis, serving the snapshot the loader publishes now."""
    publish_snapshot(client, write_jsonl(tmp_path / "s.jsonl", snapshot_rows()), keyer)
    server: RunningServer = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: status(server).version != "", "the version followed")
    return server


@pytest.mark.redis
def test_redis_honours_a_sole_proprietors_exemption_however_it_came(
    client: Client, keyer: SubjectKeyer, redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    server = replica(client, keyer, redis_server, serve, tmp_path)
    stub = server.stub()
    assert flight(stub, uscc=SOLE_SNAP) == ("ALLOW", "EXEMPTED")
    publish_delta(client, write_jsonl(tmp_path / "d1.jsonl", numbered(OPS, 1)), keyer)
    eventually(lambda: status(server).last_delta_seq == len(OPS), "the delta seen")
    assert_every_sole_proprietor_exempted(stub)
    bad = write_jsonl(tmp_path / "d2.jsonl", [
        delta(len(OPS) + 1, "EXEMPT", entry_id="E4", exemption={**FLIGHTS, "id_number": ACME_USCC}),
    ])  # fmt: skip
    with pytest.raises(LoadRejected) as refused:
        publish_delta(client, bad, keyer)
    assert "names the organisation itself" in refused.value.errors[0].problem
    assert flight(stub, uscc=ACME_USCC) == ("DENY", "AIR_TRAVEL")


@pytest.mark.redis
def test_redis_counts_the_subject_keys_of_the_entries_in_force(
    client: Client, keyer: SubjectKeyer, redis_server: RedisServer, serve: Any, tmp_path: Path
) -> None:
    server = replica(client, keyer, redis_server, serve, tmp_path)
    assert status(server).subject_keys == 5
    publish_delta(client, write_jsonl(tmp_path / "d1.jsonl", [
        delta(1, "DELIST", entry_id="E3"),
        delta(2, "LIST", entry=sole("S1", SOLE_SNAP)),
        delta(3, "LIST", entry=sole("S3", SOLE_LIST)),
        delta(4, "LIST", entry=sole("S3", SOLE_LIST, [FLIGHTS])),
    ]), keyer)  # fmt: skip
    eventually(lambda: status(server).last_delta_seq == 4, "the delta seen")
    assert status(server).subject_keys == 4
    publish_delta(
        client, write_jsonl(tmp_path / "d2.jsonl", [delta(5, "DELIST", entry_id="S3")]), keyer
    )
    eventually(lambda: status(server).last_delta_seq == 5, "the DELIST seen")
    assert (status(server).entries_total, status(server).subject_keys) == (3, 3)
