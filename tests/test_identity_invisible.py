"""What a clerk cannot see, or sees as the same: invisible characters, dashes, other digits.

A number pasted from a web form or a chat carries characters nobody sees
(direction marks, soft hyphens, variation selectors): they are read past as a
space is, in numbers and names alike, so "got 19 characters" never answers an
18-character number. Every dash is read past as "-" is. Digits of another
script (Arabic-Indic, Devanagari) are refused saying so. The lists of such
characters are held to the running Python's own Unicode database here.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.errors import InvalidInput
from shixin_check.domain.identity import (
    normalize_document,
    normalize_name,
    normalize_resident_id,
    normalize_uscc,
)
from tests.conftest import RunningServer
from tests.listdata import ACME_USCC, ZHANG, basic_rows, write_jsonl

FIELD = "subject.person.id_number"
Serve = Callable[..., RunningServer]


def code_points(*categories: str) -> list[str]:
    return [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in categories]


#: every format character, the combining grapheme joiner, and the variation selectors
INVISIBLE = [
    *code_points("Cf"),
    "\u034f",
    *map(chr, range(0xFE00, 0xFE10)),
    *map(chr, range(0xE0100, 0xE01F0)),
    "\u180b", "\u180c", "\u180d", "\u180f",
]  # fmt: skip
#: every dash, and the minus sign
DASHES = [*code_points("Pd"), "\u2212"]
#: what the reviewer sent: each made the number "19 characters"
SEEN = ["\u200e", "\u00ad", "\u034f", "\ufe0f", "\u2062"]


def name_of(c: str) -> str:
    return f"U+{ord(c):04X}"


def test_every_invisible_character_is_read_past_in_numbers_and_names() -> None:
    org = ACME_USCC
    for c in INVISIBLE:
        assert normalize_resident_id(ZHANG[:6] + c + ZHANG[6:] + c, FIELD) == ZHANG, name_of(c)
        assert normalize_uscc(c + org[:9] + c + org[9:], FIELD) == org, name_of(c)
        assert normalize_document("E820" + c + "67303", FIELD) == "E82067303", name_of(c)
        assert normalize_name("张" + c + "伟" + c) == "张伟", name_of(c)
        assert normalize_name("John" + c + " Smith") == "johnsmith", name_of(c)


def test_every_dash_is_read_past_in_numbers_as_a_hyphen_is() -> None:
    org = ACME_USCC
    for d in DASHES:
        spelt = ZHANG[:6] + d + ZHANG[6:14] + d + ZHANG[14:]
        assert normalize_resident_id(spelt, FIELD) == ZHANG, name_of(d)
        assert normalize_uscc(org[:9] + d + org[9:], FIELD) == org, name_of(d)
        assert normalize_document("E820" + d + "67303", FIELD) == "E82067303", name_of(d)
    assert normalize_name("JEAN-PIERRE") != normalize_name("JEANPIERRE")  # names keep theirs


#: Arabic-Indic, Extended Arabic-Indic (Persian), Devanagari, Bengali, Thai digits
DIGIT_ZEROS = [0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50]


@pytest.mark.parametrize("zero", DIGIT_ZEROS, ids=[f"U+{z:04X}" for z in DIGIT_ZEROS])
def test_digits_of_another_script_are_refused_saying_so(zero: int) -> None:
    def script(number: str) -> str:
        return "".join(chr(zero + int(c)) if c.isdigit() else c for c in number)

    for normalise, number in (
        (normalize_resident_id, ZHANG),
        (normalize_resident_id, ZHANG[:6] + ZHANG[8:17]),  # 15 digits
        (normalize_uscc, ACME_USCC),
        (normalize_document, "E82067303"),
    ):
        with pytest.raises(InvalidInput) as refused:
            normalise(script(number), FIELD)
        problem = refused.value.problem
        first = zero + int(next(c for c in number if c.isdigit()))
        assert problem.startswith(f"has a digit of another script (U+{first:04X} "), problem
        assert problem.endswith("digits must be 0-9 (full-width too)"), problem


IGNORABLE_TEXT = st.text(
    st.one_of(
        st.sampled_from(INVISIBLE),
        st.characters(min_codepoint=0x300, max_codepoint=0x36F),
        st.characters(min_codepoint=0x41, max_codepoint=0x7A),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x4E20),
        st.sampled_from([" ", "\u00b7", "\u30fb", "\u1100", "\u1161", "\u11a8"]),
    ),
    max_size=20,
)


@settings(deadline=None)  # correctness, not timing: no flaky deadline under load
@given(IGNORABLE_TEXT)
def test_normalize_name_with_invisible_characters_is_idempotent(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once
    assert not any(c in once for c in INVISIBLE)


# --- through a real server ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    return serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()))


def flight(number: str, name: str = "", id_type: str = "RESIDENT_ID") -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number, name=name, id_type=id_type)


@pytest.mark.parametrize("c", SEEN, ids=name_of)
def test_a_listed_number_and_name_with_invisible_characters_are_denied(
    server: RunningServer, c: str
) -> None:
    """The reviewer's characters were refused as "got 19 characters" while ZWSP and BOM
    were read past; in a name they made the listed name differ (REVIEW)."""
    stub = server.stub()
    for id_type in ("RESIDENT_ID", "PASSPORT"):
        answer = stub.CheckConsumption(flight(ZHANG[:6] + c + ZHANG[6:], "张" + c + "伟", id_type))
        assert (answer.decision, [m.entry_id for m in answer.matches]) == (pb.DENY, ["E1"])


@pytest.mark.parametrize("d", ["\u2010", "\u2011", "\u2012", "\u2013", "\u2212"], ids=name_of)
def test_a_listed_number_with_dashes_is_denied(server: RunningServer, d: str) -> None:
    spelt = ZHANG[:6] + d + ZHANG[6:14] + d + ZHANG[14:]
    for id_type in ("RESIDENT_ID", "PASSPORT"):
        answer = server.stub().CheckConsumption(flight(spelt, "张伟", id_type))
        assert (answer.decision, [m.entry_id for m in answer.matches]) == (pb.DENY, ["E1"])
    organisation = build_request("AIRLINE", uscc=ACME_USCC[:9] + d + ACME_USCC[9:])
    assert server.stub().CheckConsumption(organisation).decision == pb.DENY


def test_arabic_indic_digits_are_refused_saying_what_is_wrong(server: RunningServer) -> None:
    arabic = "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in ZHANG)
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().CheckConsumption(flight(arabic))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details()
    assert details.startswith(f"{FIELD}: has a digit of another script (U+0661 "), details
    assert "got 18 characters" not in details
