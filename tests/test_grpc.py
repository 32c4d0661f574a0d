"""The service through a real server on a free port and a real channel."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.server.hitlog import log_files
from tests.conftest import RunningServer, log_records
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    org_entry,
    person_entry,
    rid,
    uscc,
    write_jsonl,
)

Serve = Callable[..., RunningServer]


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    rows = [
        *basic_rows(),
        person_entry("E4", LI, "李娜", status="SUSPENDED", case_number="(2025)沪0104执9号"),
    ]
    return serve(write_jsonl(tmp_path / "list.jsonl", rows), hit_log=tmp_path / "hits.jsonl")


def rail(number: str, name: str = "", train: str = "G1234", seat: str = "SECOND_CLASS",
         **kw: object) -> pb.CheckRequest:  # fmt: skip
    return build_request(
        "RAIL", id_number=number, name=name,
        purchase={"train_number": train, "seat": seat}, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_listed_debtor_is_denied_with_the_match(server: RunningServer) -> None:
    answer = server.stub().CheckConsumption(rail(ZHANG, "张伟", request_id="r-1"))
    assert answer.decision == pb.DENY
    assert [r.code for r in answer.reasons] == ["RAIL_G_TRAIN"]
    assert answer.reasons[0].message  # a sentence for the clerk
    [m] = answer.matches
    assert (m.list_type, m.case_number, m.role, m.status) == (
        pb.SHIXIN,
        "(2024)京0105执1001号",
        pb.ROLE_DEBTOR,
        pb.ACTIVE,
    )
    assert m.masked_id == ZHANG[:6] + "********" + ZHANG[-4:]
    assert (m.listed_on, m.valid_until, m.court) == (
        "2024-01-15",
        "2099-12-31",
        "北京市朝阳区人民法院",
    )
    assert answer.request_id == "r-1"
    assert answer.check_id
    assert answer.list_version


def test_unlisted_subject_is_allowed(server: RunningServer) -> None:
    answer = server.stub().CheckConsumption(rail(ZHAO, "赵六"))
    assert answer.decision == pb.ALLOW
    assert [r.code for r in answer.reasons] == ["NOT_LISTED"]
    assert not answer.matches


def test_same_id_written_differently_is_the_same_person(server: RunningServer) -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in ZHANG)
    spaced = f" {ZHANG[:6]} {ZHANG[6:14]}\u3000{ZHANG[14:].lower()} "
    for written in (fullwidth, spaced):
        assert server.stub().CheckConsumption(rail(written, "张 伟")).decision == pb.DENY


def test_related_person_is_denied_in_role_for_the_organisation(server: RunningServer) -> None:
    request = build_request("HOTEL", id_number=WANG, name="王芳", purchase={"star_rating": 3})
    answer = server.stub().CheckConsumption(request)
    assert answer.decision == pb.DENY
    assert [r.code for r in answer.reasons] == ["HOTEL_STAR_RATED"]
    [m] = answer.matches
    assert (m.role, m.organization_name) == (pb.ROLE_LEGAL_REPRESENTATIVE, "北京艾克米科技有限公司")


def test_the_resort_quota_restricts_the_debtor_and_not_its_related_persons(
    server: RunningServer,
) -> None:
    """Seeds 000/001 §(七)3: outbound group tours are barred to the debtor and its legal
    representative alike; the rated-resort quota is put on the debtor alone."""
    over_quota = 200_001  # the default --resort-quota-fen is 200,000

    def travel(service: str, **subject: str) -> pb.CheckResponse:
        request = build_request("TRAVEL", purchase={"service": service}, amount_fen=over_quota,
                                **subject)  # fmt: skip
        return server.stub().CheckConsumption(request)

    representative = travel("RATED_RESORT", id_number=WANG, name="王芳")
    assert representative.decision == pb.ALLOW
    assert [r.code for r in representative.reasons] == ["NOT_RESTRICTED_CLASS"]
    assert [m.role for m in representative.matches] == [pb.ROLE_LEGAL_REPRESENTATIVE]
    assert travel("OUTBOUND_GROUP_TOUR", id_number=WANG, name="王芳").decision == pb.DENY
    for debtor in ({"id_number": ZHANG, "name": "张伟"},
                   {"uscc": ACME_USCC, "name": "北京艾克米科技有限公司"}):  # fmt: skip
        answer = travel("RATED_RESORT", **debtor)
        assert answer.decision == pb.DENY, debtor
        assert [r.code for r in answer.reasons] == ["TRAVEL_RESORT_OVER_QUOTA"]


def test_organisation_itself_is_checked_by_uscc(server: RunningServer) -> None:
    request = build_request("AIRLINE", uscc=ACME_USCC.lower(), name="北京艾克米科技有限公司")
    assert server.stub().CheckConsumption(request).decision == pb.DENY


def test_name_mismatch_is_review(server: RunningServer) -> None:
    answer = server.stub().CheckConsumption(rail(ZHANG, "张三"))
    assert answer.decision == pb.REVIEW
    assert [r.code for r in answer.reasons] == ["RAIL_G_TRAIN", "NAME_MISMATCH"]


def test_unrestricted_class_is_allowed_and_says_why(server: RunningServer) -> None:
    answer = server.stub().CheckConsumption(rail(ZHANG, "张伟", train="d 301"))
    assert answer.decision == pb.ALLOW
    assert [r.code for r in answer.reasons] == ["NOT_RESTRICTED_CLASS"]
    assert len(answer.matches) == 1


def test_suspended_and_active_entries_of_one_person(server: RunningServer) -> None:
    answer = server.stub().CheckConsumption(build_request("AIRLINE", id_number=LI, name="李娜"))
    assert answer.decision == pb.DENY  # E2 active, E4 suspended
    assert [m.case_number for m in answer.matches] == ["(2023)沪0104执88号"]


BAD_REQUESTS = {
    "bad check digit": (
        lambda: rail(ZHANG[:17] + ("1" if ZHANG[17] == "0" else "0")),
        "subject.person.id_number: has a bad check digit",
    ),
    "short id": (lambda: rail("1101051980"), "subject.person.id_number"),
    "no subject": (
        lambda: pb.CheckRequest(channel=pb.AIRLINE, flight=pb.FlightPurchase()),
        "subject",
    ),
    "unknown channel": (
        lambda: pb.CheckRequest(person=pb.PersonSubject(id_number=ZHAO), channel=99),
        "channel: 99 is not a known channel",
    ),
    "no channel": (lambda: pb.CheckRequest(person=pb.PersonSubject(id_number=ZHAO)), "channel"),
    "purchase missing": (
        lambda: pb.CheckRequest(person=pb.PersonSubject(id_number=ZHAO), channel=pb.RAIL),
        "purchase: is required for channel RAIL",
    ),
    "purchase of another channel": (
        lambda: pb.CheckRequest(
            person=pb.PersonSubject(id_number=ZHAO), channel=pb.RAIL, flight=pb.FlightPurchase()
        ),
        "purchase.flight: does not match channel RAIL",
    ),
    "seat missing": (lambda: rail(ZHAO, seat="UNSPECIFIED"), "purchase.rail.seat"),
    "not a train": (lambda: rail(ZHAO, train="AB12"), "purchase.rail.train_number"),
    "bad uscc": (
        lambda: build_request("AIRLINE", uscc=ACME_USCC[:17] + "I"),
        "subject.organization.uscc",
    ),
    "unknown id type": (
        lambda: pb.CheckRequest(
            person=pb.PersonSubject(id_number=ZHAO, id_type=42),
            channel=pb.AIRLINE,
            flight=pb.FlightPurchase(),
        ),
        "subject.person.id_type",
    ),  # fmt: skip
    "ship cabin 0": (
        lambda: build_request("SHIP", id_number=ZHAO, purchase={"cabin_class": 0}),
        "purchase.ship.cabin_class",
    ),
    "negative amount": (
        lambda: build_request("AIRLINE", id_number=ZHAO, amount_fen=-1),
        "amount_fen",
    ),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(server: RunningServer, name: str) -> None:
    make, expected = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumption(make())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
    # and the server keeps serving
    assert server.stub().CheckConsumption(rail(ZHAO)).decision == pb.ALLOW


def test_metadata_up_to_16_kib_is_taken_every_time_and_over_it_refused(
    server: RunningServer,
) -> None:
    """grpc's soft limit (8 KiB by default) refused calls between 8 and 16 KiB of
    metadata at random (5 of 40 at 8.5 KB, 37 of 40 at 15.5 KB): the README says 16 KiB."""
    stub = server.stub()
    big = (("x-booking-context", "a" * 15_000),)
    for _ in range(20):
        assert stub.CheckConsumption(rail(ZHAO), metadata=big, timeout=10).decision == pb.ALLOW
    over = (("x-booking-context", "a" * 17_000),)
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CheckConsumption(rail(ZHAO), metadata=over, timeout=10)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_answers_in_request_order(server: RunningServer) -> None:
    people = [ZHAO, ZHANG, WANG, ZHAO, LI] * 20
    checks = [
        build_request("AIRLINE", id_number=p, request_id=str(i)) for i, p in enumerate(people)
    ]
    reply = server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=checks))
    assert [r.request_id for r in reply.results] == [str(i) for i in range(len(people))]
    expected = [pb.ALLOW if p == ZHAO else pb.DENY for p in people]
    assert [r.decision for r in reply.results] == expected
    assert len({r.check_id for r in reply.results}) == len(people)


def test_batch_limit_is_enforced(server: RunningServer) -> None:
    check = build_request("AIRLINE", id_number=ZHAO)
    reply = server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=[check] * 1000))
    assert len(reply.results) == 1000
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=[check] * 1001))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in caught.value.details()


def test_bad_check_in_a_batch_is_named_by_position(server: RunningServer) -> None:
    good = build_request("AIRLINE", id_number=ZHAO)
    bad = build_request("AIRLINE", id_number="123")
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumptionBatch(pb.CheckBatchRequest(checks=[good, good, bad]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("checks[2].subject.person.id_number")


def test_stream_answers_carry_request_ids(server: RunningServer) -> None:
    people = [ZHANG, ZHAO, WANG] * 10
    requests = [
        build_request("AIRLINE", id_number=p, request_id=f"s{i}") for i, p in enumerate(people)
    ]
    answers = list(server.stub().CheckConsumptionStream(iter(requests)))
    assert [a.request_id for a in answers] == [f"s{i}" for i in range(len(people))]
    assert [a.decision for a in answers] == [pb.ALLOW if p == ZHAO else pb.DENY for p in people]


def test_bad_request_in_a_stream_is_answered_with_its_request_id(server: RunningServer) -> None:
    requests = [
        build_request("AIRLINE", id_number=ZHAO, request_id="ok-1"),
        build_request("AIRLINE", id_number="bad", request_id="bad-2"),
        build_request("AIRLINE", id_number=ZHANG, request_id="ok-3"),
    ]
    ok, bad, after = server.stub().CheckConsumptionStream(iter(requests))  # the stream goes on
    assert (ok.request_id, ok.decision, ok.HasField("error")) == ("ok-1", pb.ALLOW, False)
    assert (bad.request_id, bad.decision) == ("bad-2", pb.DECISION_UNSPECIFIED)
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad.error.message.startswith("subject.person.id_number: ")
    assert (after.request_id, after.decision) == ("ok-3", pb.DENY)


def test_a_resident_id_sent_as_a_passport_is_never_a_silent_allow(server: RunningServer) -> None:
    stub = server.stub()
    zhang = stub.CheckConsumption(rail(ZHANG, "张伟", id_type="PASSPORT"))
    assert (zhang.decision, [r.code for r in zhang.reasons]) == (pb.DENY, ["RAIL_G_TRAIN"])
    assert [m.entry_id for m in zhang.matches] == ["E1"]
    wang = stub.CheckConsumption(rail(WANG, "赵六", id_type="HK_MACAO_PERMIT"))
    assert (wang.decision, [m.role for m in wang.matches]) == (
        pb.REVIEW, [pb.ROLE_LEGAL_REPRESENTATIVE],
    )  # fmt: skip
    zhao = stub.CheckConsumption(rail(ZHAO, "赵六", id_type="PASSPORT"))
    assert (zhao.decision, [r.code for r in zhao.reasons]) == (pb.ALLOW, ["NOT_LISTED"])


def test_a_document_number_sent_under_another_document_type_is_never_a_silent_allow(
    tmp_path: Path, serve: Serve
) -> None:
    """A listed passport's number sent as a permit (the clerk's choice of type, or a
    slip): the same letters and digits are looked up under every document type, and
    the person is judged as usual: DENY with the same name, REVIEW with another."""
    passport = person_entry("F1", "E82067303", "JOHN SMITH")
    passport["subject"]["id_type"] = "PASSPORT"
    stub = serve(write_jsonl(tmp_path / "list.jsonl", [passport])).stub()
    for id_type in DOCUMENT_TYPES:
        same = stub.CheckConsumption(rail("E82067303", "JOHN SMITH", id_type=id_type))
        assert (same.decision, [m.entry_id for m in same.matches]) == (pb.DENY, ["F1"]), id_type
        other = stub.CheckConsumption(rail("E82067303", "LI MING", id_type=id_type))
        assert (other.decision, [m.entry_id for m in other.matches]) == (pb.REVIEW, ["F1"])
    unlisted = stub.CheckConsumption(rail("E82067304", "JOHN SMITH", id_type="HK_MACAO_PERMIT"))
    assert (unlisted.decision, [r.code for r in unlisted.reasons]) == (pb.ALLOW, ["NOT_LISTED"])


def test_a_home_return_permit_in_its_old_form_finds_the_card_holder(
    tmp_path: Path, serve: Serve
) -> None:
    """The old booklet printed a Home Return Permit's number as the card's nine
    characters and two digits counting its renewals (H12345678 + 01): a holder listed
    by the card's number and checked by the old form, under any document type, is
    found, whatever the count; another lifetime number is not."""
    permit = person_entry("P1", "H12345678", "陈大文")
    permit["subject"]["id_type"] = "HK_MACAO_PERMIT"
    macao = person_entry("P2", "M87654321", "何美玲")
    macao["subject"]["id_type"] = "HK_MACAO_PERMIT"
    stub = serve(write_jsonl(tmp_path / "list.jsonl", [permit, macao])).stub()
    for number, name, entry in (("H1234567801", "陈大文", "P1"), ("h12345678 03", "陈大文", "P1"),
                                ("M8765432100", "何美玲", "P2")):  # fmt: skip
        for id_type in DOCUMENT_TYPES:
            answer = stub.CheckConsumption(rail(number, name, id_type=id_type))
            assert (answer.decision, [m.entry_id for m in answer.matches]) == (
                pb.DENY, [entry],
            ), (number, id_type)  # fmt: skip
    for number in ("H1234567901", "H123456780", "H123456780101", "X1234567801"):
        answer = stub.CheckConsumption(rail(number, "陈大文", id_type="HK_MACAO_PERMIT"))
        assert [r.code for r in answer.reasons] == ["NOT_LISTED"], number


def test_a_home_return_permit_listed_in_its_old_form_is_found_by_the_card(
    tmp_path: Path, serve: Serve
) -> None:
    """The other way round: a list row giving the old booklet's form (under any
    document type) names the card's holder, so a check by the card, by the old form
    with any renewal count, under any document type, finds the holder."""
    rows = []
    for entry_id, id_type in (("P1", "HK_MACAO_PERMIT"), ("P2", "PASSPORT")):
        row = person_entry(entry_id, "H1234567801" if entry_id == "P1" else "M8765432102", "陈大文")
        row["subject"]["id_type"] = id_type
        rows.append(row)
    stub = serve(write_jsonl(tmp_path / "list.jsonl", rows)).stub()
    for number, entry in (("H12345678", "P1"), ("H1234567805", "P1"), ("M87654321", "P2"),
                          ("M8765432100", "P2")):  # fmt: skip
        for id_type in DOCUMENT_TYPES:
            answer = stub.CheckConsumption(rail(number, "陈大文", id_type=id_type))
            assert (answer.decision, [m.entry_id for m in answer.matches]) == (
                pb.DENY, [entry],
            ), (number, id_type)  # fmt: skip
    answer = stub.CheckConsumption(rail("H12345679", "陈大文", id_type="HK_MACAO_PERMIT"))
    assert [r.code for r in answer.reasons] == ["NOT_LISTED"]


def test_a_taiwan_permit_in_its_old_form_and_its_card_find_each_other(
    tmp_path: Path, serve: Serve
) -> None:
    """The old booklet printed a Taiwan permit's number as the card's eight digits and
    two counting its issues (12345678 + 01), and booking forms take either: a holder
    listed by one form and checked by the other, under any document type, got ALLOW
    NOT_LISTED. Another lifetime number is still not found, and a passport of ten
    digits is listed as itself, not as a card another passport could share."""
    rows = []
    for entry_id, number, id_type in (("T1", "12345678", "TAIWAN_PERMIT"),
                                      ("T2", "8765432102", "TAIWAN_PERMIT"),
                                      ("T3", "5555666603", "PASSPORT")):  # fmt: skip
        row = person_entry(entry_id, number, "林志明")
        row["subject"]["id_type"] = id_type
        rows.append(row)
    stub = serve(write_jsonl(tmp_path / "list.jsonl", rows)).stub()
    for number, entry in (("1234567801", "T1"), ("12345678 05", "T1"), ("87654321", "T2"),
                          ("8765432100", "T2"), ("5555666603", "T3")):  # fmt: skip
        for id_type in DOCUMENT_TYPES:
            answer = stub.CheckConsumption(rail(number, "林志明", id_type=id_type))
            assert (answer.decision, [m.entry_id for m in answer.matches]) == (
                pb.DENY, [entry],
            ), (number, id_type)  # fmt: skip
    for number in ("1234567901", "123456780", "123456780101", "12345679", "5555666699"):
        answer = stub.CheckConsumption(rail(number, "林志明", id_type="TAIWAN_PERMIT"))
        assert [r.code for r in answer.reasons] == ["NOT_LISTED"], number


def test_an_airline_name_surname_slash_given_matches_the_listed_name(
    tmp_path: Path, serve: Serve
) -> None:
    """Airlines write SURNAME/GIVEN NAMES [TITLE]: a listed JOHN SMITH (or SMITH JOHN)
    booked as SMITH/JOHN MR is DENY, not REVIEW NAME_MISMATCH; another name stays
    REVIEW, and a name never turns a matched ID into an ALLOW."""
    given_first = person_entry("F1", "E82067303", "JOHN SMITH")
    surname_first = person_entry("F2", "E82067305", "Smith John Paul")
    for row in (given_first, surname_first):
        row["subject"]["id_type"] = "PASSPORT"
    stub = serve(write_jsonl(tmp_path / "list.jsonl", [given_first, surname_first])).stub()

    def flight(number: str, name: str) -> pb.CheckResponse:
        request = build_request("AIRLINE", id_number=number, name=name, id_type="PASSPORT")
        return stub.CheckConsumption(request)

    for name in ("SMITH/JOHN", "SMITH/JOHN MR", "smith / john mr.", "SMITH/JOHN"):
        assert flight("E82067303", name).decision == pb.DENY, name
    assert flight("E82067305", "SMITH/JOHN PAUL MR").decision == pb.DENY
    for name in ("SMITH/JANE MRS", "JONES/JOHN", "JOHN/SMITH/X"):
        answer = flight("E82067303", name)
        assert [r.code for r in answer.reasons] == ["AIR_TRAVEL", "NAME_MISMATCH"], name


def first_generation(number: str) -> str:
    """The 15-digit card an 18-character resident ID of someone born 19xx replaced."""
    assert number[6:8] == "19"
    return number[:6] + number[8:17]


@pytest.mark.parametrize(
    "id_type", ["PASSPORT", "HK_MACAO_PERMIT", "TAIWAN_PERMIT", "FOREIGN_PERMANENT_RESIDENT"]
)
def test_a_first_generation_card_sent_under_a_document_type_is_never_a_silent_allow(
    server: RunningServer, id_type: str
) -> None:
    """15 digits sent as a passport or permit read as the resident ID they convert to."""
    stub = server.stub()
    zhang = stub.CheckConsumption(rail(first_generation(ZHANG), "张伟", id_type=id_type))
    assert (zhang.decision, [m.entry_id for m in zhang.matches]) == (pb.DENY, ["E1"])
    zhao = stub.CheckConsumption(rail(first_generation(ZHAO), "赵六", id_type=id_type))
    assert (zhao.decision, [r.code for r in zhao.reasons]) == (pb.ALLOW, ["NOT_LISTED"])
    # 15 digits that cannot be a card (no region 99) are a document number like any other
    other = stub.CheckConsumption(rail("990105800101001", "赵六", id_type=id_type))
    assert (other.decision, [r.code for r in other.reasons]) == (pb.ALLOW, ["NOT_LISTED"])


def test_a_resident_id_the_list_gives_under_a_document_type_is_found_either_way(
    tmp_path: Path, serve: Serve
) -> None:
    """The feed's own slip: a resident ID (18 or 15 digits) typed PASSPORT in a list
    row is kept as that resident ID, so a check by resident ID finds it, and a check
    under the document type still does."""
    rows = [person_entry("P1", ZHANG, "张伟"), person_entry("P2", first_generation(LI), "李娜")]
    for row in rows:
        row["subject"]["id_type"] = "PASSPORT"
    stub = serve(write_jsonl(tmp_path / "list.jsonl", rows)).stub()
    for number, name, entry in ((ZHANG, "张伟", "P1"), (LI, "李娜", "P2")):
        for sent, id_type in ((number, "RESIDENT_ID"), (number, "PASSPORT"),
                              (first_generation(number), "PASSPORT")):  # fmt: skip
            answer = stub.CheckConsumption(rail(sent, name, id_type=id_type))
            assert (answer.decision, [m.entry_id for m in answer.matches]) == (
                pb.DENY, [entry]
            ), (sent, id_type)  # fmt: skip


def test_a_uscc_sent_as_a_persons_document_is_looked_up_as_the_organisation(
    server: RunningServer,
) -> None:
    answer = server.stub().CheckConsumption(rail(ACME_USCC, "王芳", id_type="PASSPORT"))
    assert answer.decision == pb.REVIEW  # the organisation is listed; the name is not its own
    assert [m.entry_id for m in answer.matches] == ["E3"]


#: A resident ID (region 911101, born 1980-01-01) that is a well-formed USCC too
#: (an enterprise, "91"): about one resident ID in 31 passes GB 32100 as well.
BOTH = rid("91110119800101024")
BOTH_ORG = "北京双读科技有限公司"
DOCUMENT_TYPES = ["PASSPORT", "HK_MACAO_PERMIT", "TAIWAN_PERMIT", "FOREIGN_PERMANENT_RESIDENT"]


def both_ways(*rows: dict[str, object]) -> list[dict[str, object]]:
    assert BOTH == uscc("91110119800101024")  # the same 18 characters either way
    return [*basic_rows(), *rows]


def test_a_uscc_that_also_reads_as_a_resident_id_is_looked_up_as_the_organisation(
    tmp_path: Path, serve: Serve
) -> None:
    """A number valid under both readings, sent as a person's document or as a
    resident ID: the resident ID reading must not hide the organisation listed under
    the USCC. The answer is the one a check of the organisation by its USCC gets."""
    rows = both_ways(org_entry("O1", BOTH, BOTH_ORG, [("LEGAL_REPRESENTATIVE", "王芳", WANG)]))
    stub = serve(write_jsonl(tmp_path / "list.jsonl", rows)).stub()
    seat = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    for id_type, name in itertools.product(("RESIDENT_ID", *DOCUMENT_TYPES), (BOTH_ORG, "")):
        by_uscc = stub.CheckConsumption(build_request("RAIL", uscc=BOTH, name=name, purchase=seat))
        sent = stub.CheckConsumption(rail(BOTH, name, id_type=id_type))
        assert (sent.decision, [r.code for r in sent.reasons], [m.entry_id for m in sent.matches]) == (
            pb.DENY, ["RAIL_G_TRAIN"], ["O1"]
        ), (id_type, name)  # fmt: skip
        assert (sent.decision, list(sent.reasons), list(sent.matches)) == (
            by_uscc.decision, list(by_uscc.reasons), list(by_uscc.matches)
        )  # fmt: skip
        # a person's name is not the organisation's: as for any USCC sent as a document
        assert stub.CheckConsumption(rail(BOTH, "王芳", id_type=id_type)).decision == pb.REVIEW


def test_a_resident_id_that_also_reads_as_a_uscc_is_found_every_way(
    tmp_path: Path, serve: Serve
) -> None:
    """The person listed under such a number is found by resident ID and under any
    document type; with the organisation listed under the same 18 characters, a
    check under a document type finds both, each judged as usual."""
    person = person_entry("P1", BOTH, "张伟")
    stub = serve(write_jsonl(tmp_path / "list.jsonl", both_ways(person))).stub()
    for id_type in ("RESIDENT_ID", *DOCUMENT_TYPES):
        answer = stub.CheckConsumption(rail(BOTH, "张伟", id_type=id_type))
        assert (answer.decision, [m.entry_id for m in answer.matches]) == (pb.DENY, ["P1"]), id_type

    organisation = org_entry("O1", BOTH, BOTH_ORG, [])
    stub = serve(write_jsonl(tmp_path / "both.jsonl", both_ways(person, organisation))).stub()
    for id_type in DOCUMENT_TYPES:
        unnamed = stub.CheckConsumption(rail(BOTH, id_type=id_type))  # the ID alone decides
        assert (unnamed.decision, sorted(m.entry_id for m in unnamed.matches)) == (
            pb.DENY, ["O1", "P1"]
        ), id_type  # fmt: skip
        named = stub.CheckConsumption(rail(BOTH, "张伟", id_type=id_type))
        assert (named.decision, [m.entry_id for m in named.matches]) == (pb.DENY, ["P1"])
        as_org = stub.CheckConsumption(rail(BOTH, BOTH_ORG, id_type=id_type))
        assert (as_org.decision, [m.entry_id for m in as_org.matches]) == (pb.DENY, ["O1"])


def resident_id_that_reads_as_a_uscc(region: str, born: str) -> str:
    """The first resident ID of ``region`` and ``born`` (YYYYMMDD) whose GB 11643
    check digit also passes GB 32100 (about one in 31 does)."""
    for seq in range(1000):
        number = rid(f"{region}{born}{seq:03d}")
        if number == uscc(number[:17]):
            return number
    raise AssertionError(f"no resident ID of {region} born {born} reads as a USCC")


def organisation_check(code: str, name: str = "") -> pb.CheckRequest:
    return build_request(
        "RAIL", uscc=code, name=name, purchase={"train_number": "G1234", "seat": "SECOND_CLASS"}
    )


def test_a_persons_resident_id_sent_as_a_uscc_is_looked_up_as_the_person(
    tmp_path: Path, serve: Serve
) -> None:
    """A listed person's resident ID in organization.uscc that passes GB 32100 too
    (one in 31) was ALLOW NOT_LISTED: it is looked up as that resident ID as well,
    as a USCC sent as a resident ID is looked up as the organisation."""
    listed = resident_id_that_reads_as_a_uscc("330203", "19540812")
    other = resident_id_that_reads_as_a_uscc("440305", "19900909")
    stub = serve(write_jsonl(tmp_path / "list.jsonl", [person_entry("P1", listed, "张伟")])).stub()
    for name, decision in (("", pb.DENY), ("张伟", pb.DENY), ("北京某某科技有限公司", pb.REVIEW)):
        answer = stub.CheckConsumption(organisation_check(listed, name))
        assert (answer.decision, [m.entry_id for m in answer.matches]) == (decision, ["P1"]), name
        assert [r.code for r in answer.reasons][0] == "RAIL_G_TRAIN"
    unlisted = stub.CheckConsumption(organisation_check(other))
    assert (unlisted.decision, [r.code for r in unlisted.reasons]) == (pb.ALLOW, ["NOT_LISTED"])


def test_a_persons_resident_id_sent_as_a_uscc_says_where_it_goes(server: RunningServer) -> None:
    """The other 30 in 31 fail GB 32100: the refusal says the number is a resident ID
    and what to send instead, as the reverse (a USCC sent as a resident ID) does."""
    assert uscc(ZHANG[:17]) != ZHANG  # fails GB 32100
    hint = ", a resident ID: a person's, send person.id_number with id_type RESIDENT_ID"
    for sent, problem in (
        (ZHANG, "has a bad check character (GB 32100)"),
        (ZHANG[:6] + " " + ZHANG[6:14] + "-" + ZHANG[14:], "has a bad check character (GB 32100)"),
        (first_generation(ZHANG), "must be 18 characters, got 15"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub().CheckConsumption(organisation_check(sent))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"subject.organization.uscc: {problem}{hint}"
    bad_code = next(ACME_USCC[:17] + c for c in "0123456789" if c != ACME_USCC[17])
    with pytest.raises(grpc.RpcError) as refused:  # no resident ID: no hint
        server.stub().CheckConsumption(organisation_check(bad_code))
    assert refused.value.details() == (
        "subject.organization.uscc: has a bad check character (GB 32100)"
    )


def near(number: str) -> str:
    """``number`` with its last character changed: the resident ID's shape, region code
    and birth date, a bad GB 11643 check character, and no valid USCC either."""
    for c in "0123456789X":
        changed = number[:17] + c
        if c != number[17] and changed != uscc(number[:17]):
            return changed
    raise AssertionError("unreachable")


def foreign_permanent_resident_card(province: str, country: str, born: str, seq: str) -> str:
    """China's foreign permanent resident ID card (2023): 9, the issuing province, the
    holder's country (ISO 3166 numeric), birth date, sequence, and the GB 11643 check."""
    return rid(f"9{province}{country}{born}{seq}")


#: Real documents, none of them a resident ID with a bad check character
DOCUMENTS = [
    ("FOREIGN_PERMANENT_RESIDENT", foreign_permanent_resident_card("11", "840", "19800101", "002")),
    ("FOREIGN_PERMANENT_RESIDENT", foreign_permanent_resident_card("31", "826", "19751231", "017")),
    ("FOREIGN_PERMANENT_RESIDENT", foreign_permanent_resident_card("44", "392", "20000229", "120")),
    ("PASSPORT", "E82067303"),
    ("HK_MACAO_PERMIT", "H12345678"),
    ("HK_MACAO_PERMIT", "M1234567801"),
    ("TAIWAN_PERMIT", "12345678"),
    # 18 digits that are no resident ID's or foreign card's, nor one slip from one: no
    # region code 88, no 13th month with no 32nd day
    ("PASSPORT", "880105198013320011"),
    ("PASSPORT", "110105198013320011"),
]  # fmt: skip


def slips(number: str) -> dict[str, str]:
    """A resident ID as a clerk may mistype it, each slip by its name."""
    return {
        "a letter O for a zero": number[:9] + "O" + number[10:],
        "a letter l for a one": number[:1] + "l" + number[2:],
        "an impossible birth date": number[:10] + "3" + number[11:],  # the 31st month
        "a region code that is none": "0" + number[1:],
        "its check character left out": number[:17],
        "one character too many": number[:17] + "1" + number[17:],
        "the century's digits swapped": number[:6] + number[7] + number[6] + number[8:],
    }


def test_a_resident_id_with_one_slip_is_refused_under_every_document_type(
    server: RunningServer,
) -> None:
    """Refused sent as RESIDENT_ID, a listed person's number with one slip was ALLOW
    NOT_LISTED under a document type, and for a letter O the refusal advised just that
    ('a passport or permit number? set id_type'). The resident ID's check character
    shows one slip whatever it is: refused under every type, saying what it reads as."""
    stub = server.stub()
    for slip, number in slips(ZHANG).items():
        for id_type in ("RESIDENT_ID", *DOCUMENT_TYPES):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CheckConsumption(rail(number, "张伟", id_type=id_type))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (slip, id_type)
            details = refused.value.details()
            assert details.startswith("subject.person.id_number: "), details
            assert "set id_type" not in details, (slip, details)  # no advice that lets it by
            if id_type != "RESIDENT_ID":
                assert "reads as a resident ID with " in details, (slip, details)
    # the foreign permanent resident card holds the same check character: slips of its
    # number are refused alike, under its own type too
    card = foreign_permanent_resident_card("11", "840", "19800101", "002")
    with pytest.raises(grpc.RpcError) as refused:
        stub.CheckConsumption(rail(near(card), "JOHN SMITH", id_type="FOREIGN_PERMANENT_RESIDENT"))
    assert "foreign permanent resident ID card" in refused.value.details()
    assert "bad check character" in refused.value.details()
    card = foreign_permanent_resident_card("31", "826", "19751231", "017")  # 93: no region
    for slip, number in slips(card).items():
        if slip in ("a region code that is none", "an impossible birth date"):
            continue  # a card's second and eleventh characters are no region or month
        for id_type in ("RESIDENT_ID", *DOCUMENT_TYPES):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CheckConsumption(rail(number, "JOHN SMITH", id_type=id_type))
            details = refused.value.details()
            assert "set id_type" not in details, (slip, id_type, details)
            if id_type != "RESIDENT_ID" and slip != "its check character left out":
                assert "reads as a foreign permanent resident ID card" in details, (
                    slip, id_type, details,
                )  # fmt: skip
    # an ID ending in X, one character typed after the X; a first-generation card's
    # last digit typed X: slips too
    ends_x = next(rid(f"110105198001010{n:02d}") for n in range(100)
                  if rid(f"110105198001010{n:02d}").endswith("X"))  # fmt: skip
    for number in (ends_x + "5", ends_x + "O", first_generation(ZHANG)[:14] + "X"):
        for id_type in ("RESIDENT_ID", *DOCUMENT_TYPES):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CheckConsumption(rail(number, "张伟", id_type=id_type))
            assert "set id_type" not in refused.value.details(), (number, id_type)
            if id_type != "RESIDENT_ID":
                assert "reads as a resident ID with one character" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:  # 15 digits are no foreign card
        stub.CheckConsumption(rail("92" + first_generation(ZHANG)[2:], "张伟"))
    assert "set id_type" not in refused.value.details(), refused.value.details()
    card = foreign_permanent_resident_card("31", "826", "19751231", "017")  # 93: no region
    with pytest.raises(grpc.RpcError) as refused:  # and sent as a resident ID, says so
        stub.CheckConsumption(rail(card, "JOHN SMITH", id_type="RESIDENT_ID"))
    assert "set id_type FOREIGN_PERMANENT_RESIDENT" in refused.value.details()


def test_a_resident_id_with_a_bad_check_character_is_refused_under_every_document_type(
    tmp_path: Path, serve: Serve
) -> None:
    """Sent as RESIDENT_ID it is refused (bad check digit); under a document type it was
    ALLOW NOT_LISTED, even one character away from a listed person's number. Real
    documents are not refused, and neither is a valid USCC of that form (it reads as
    the organisation, as any USCC sent as a document does)."""
    code = next(
        uscc(f"110105198001010{n:02d}") for n in range(100)
        if uscc(f"110105198001010{n:02d}") != rid(f"110105198001010{n:02d}")
    )  # fmt: skip
    rows = [*basic_rows(), org_entry("O2", code, "北京某某科技有限公司", [])]
    stub = serve(write_jsonl(tmp_path / "list.jsonl", rows)).stub()
    for number in (near(ZHANG), near(rid("33020319540812314"))):
        sent = number[:6] + "-" + number[6:]
        for id_type in ("RESIDENT_ID", *DOCUMENT_TYPES):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CheckConsumption(rail(sent, "张伟", id_type=id_type))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, id_type
            details = refused.value.details()
            assert details.startswith("subject.person.id_number: "), details
            if id_type != "RESIDENT_ID":
                assert "reads as a resident ID" in details and "bad check character" in details
    for id_type, number in DOCUMENTS:
        answer = stub.CheckConsumption(rail(number, "JOHN SMITH", id_type=id_type))
        assert (answer.decision, [r.code for r in answer.reasons]) == (
            pb.ALLOW, ["NOT_LISTED"]
        ), (id_type, number)  # fmt: skip
    for id_type in DOCUMENT_TYPES:
        answer = stub.CheckConsumption(rail(code, id_type=id_type))
        assert (answer.decision, [m.entry_id for m in answer.matches]) == (pb.DENY, ["O2"])


def test_list_status_reports_the_version(server: RunningServer) -> None:
    status = server.stub().GetListStatus(pb.ListStatusRequest())
    assert status.serving
    assert status.entries_total == 4
    counts = {(c.list_type, c.status): c.entries for c in status.counts}
    assert counts == {("SHIXIN", "ACTIVE"): 2, ("SHIXIN", "SUSPENDED"): 1, ("XIANGAO", "ACTIVE"): 1}
    assert status.version and status.loaded_at and status.source_timestamp
    assert {p.name for p in status.policy} >= {"hotel_min_star", "resort_quota_fen"}


def test_hit_log_records_hits_masked(server: RunningServer, tmp_path: Path) -> None:
    stub = server.stub()
    stub.CheckConsumption(rail(ZHAO, request_id="miss"))
    denied = stub.CheckConsumption(
        rail(ZHANG, "张伟", request_id="hit", merchant_id="m-12306", terminal_id="t-7")
    )
    hits = tmp_path / "hits.jsonl"
    records = log_records(hits)
    raw = b"".join(f.read_bytes() for f in log_files(hits))
    assert [r["request_id"] for r in records] == ["hit"]
    [hit] = records
    assert hit["check_id"] == denied.check_id
    assert hit["list_version"] == denied.list_version
    assert (hit["decision"], hit["codes"], hit["channel"]) == ("DENY", ["RAIL_G_TRAIN"], "RAIL")
    assert (hit["merchant_id"], hit["terminal_id"]) == ("m-12306", "t-7")
    assert hit["purchase"] == {"train_number": "G1234", "seat": "SECOND_CLASS"}
    assert hit["case_numbers"] == ["(2024)京0105执1001号"]
    assert hit["masked_id"] == ZHANG[:6] + "********" + ZHANG[-4:]
    assert ZHANG.encode() not in raw and ZHAO.encode() not in raw


def test_health_is_not_serving_until_a_list_arrives(tmp_path: Path, serve: Serve) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    server = serve(folder)
    health = health_pb2_grpc.HealthStub(server.channel)
    service = "shixin.v1.ConsumptionCheck"
    state = health.Check(health_pb2.HealthCheckRequest(service=service)).status
    assert state == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        server.stub().CheckConsumption(rail(ZHAO))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    write_jsonl(folder / "snap.jsonl", basic_rows())
    deadline = time.monotonic() + 5
    while state != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
        time.sleep(0.05)
        state = health.Check(health_pb2.HealthCheckRequest(service=service)).status
    assert state == health_pb2.HealthCheckResponse.SERVING
    assert server.stub().CheckConsumption(rail(ZHANG, "张伟")).decision == pb.DENY


def test_reflection_lists_the_services(server: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"shixin.v1.ConsumptionCheck", "grpc.health.v1.Health"} <= names


def test_reflection_answers_under_its_v1_name_too(server: RunningServer) -> None:
    """grpcio-reflection serves ``grpc.reflection.v1alpha`` only; newer tools ask for
    ``grpc.reflection.v1`` (a grpc-js reflection client got UNIMPLEMENTED). Same messages."""
    call = server.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    listed, described = call(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="shixin.v1.ConsumptionCheck"),
    ]), timeout=10)  # fmt: skip
    names = {s.name for s in listed.list_services_response.service}
    assert "shixin.v1.ConsumptionCheck" in names
    # not listed: a tool describing every service listed would find no descriptor for it
    assert "grpc.reflection.v1.ServerReflection" not in names
    [proto] = described.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(proto).package == "shixin.v1"


@pytest.mark.parametrize("name", ["张\x00伟", "张伟\n", "\x07张伟", "张\x85伟"])
def test_a_name_with_a_control_character_is_refused_naming_it(
    server: RunningServer, name: str
) -> None:
    """As the list refuses them: no name holds a NUL, a newline or a bell."""
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CheckConsumption(rail(ZHANG, name))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(
        "subject.person.name: must not contain control characters (U+"
    )
    with pytest.raises(grpc.RpcError) as org:
        stub.CheckConsumption(
            build_request(
                "RAIL",
                uscc=ACME_USCC,
                name=name,
                purchase={"train_number": "G1234", "seat": "SECOND_CLASS"},
            )  # fmt: skip
        )
    assert org.value.details().startswith("subject.organization.name: must not contain control")
    # white space that is not printable is no control character: read without it
    spaced = stub.CheckConsumption(rail(ZHANG, "张\u3000伟\u00a0"))
    assert spaced.decision == pb.DENY
