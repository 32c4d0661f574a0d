"""The benchmark's traffic: realistic point-of-sale checks, ~99% unlisted.

Why it exists: the figures only mean something for the mix a seller really
sends. Almost every buyer is not listed (the Bloom filter clears them), a few
are (the full decision, matches and answer), and the purchases follow what a
booking system sells: mostly rail (G-train second class above all) and air,
then hotels, and a little of every other channel in the rule table.

Listed subjects are taken from ``loader.synthetic.iter_entries`` with the same
``(seed, as_of)`` as the list file the server loads (debtors, related persons
of listed organisations, and the organisations themselves), so they really
are in the index. Unlisted people are born 1925-1940 (the generator makes
ages 18 to 80), so they never are.
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass
from typing import Any

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import resident_id_check_char, uscc_check_char
from shixin_check.loader.synthetic import iter_entries

# Real county codes for unlisted people and organisations.
_REGIONS = (
    "110101",
    "110105",
    "110108",
    "120104",
    "130102",
    "140105",
    "210102",
    "220102",
    "310101",
    "310104",
    "310115",
    "320102",
    "320505",
    "330102",
    "330106",
    "340104",
    "350203",
    "360102",
    "370102",
    "370202",
    "410105",
    "420106",
    "430104",
    "440104",
    "440305",
    "450103",
    "500103",
    "510104",
    "520102",
    "530102",
    "610113",
    "620102",
)
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂英华玉萍红文辉建国志新春"

# (weight, channel, purchase fields, amount_fen): what a seller sells, roughly.
_PERSON_PURCHASES: tuple[tuple[int, str, dict[str, Any], int], ...] = (
    (26, "RAIL", {"train_number": "G1234", "seat": "SECOND_CLASS"}, 0),
    (3, "RAIL", {"train_number": "G7", "seat": "FIRST_CLASS"}, 0),
    (1, "RAIL", {"train_number": "G101", "seat": "BUSINESS"}, 0),
    (11, "RAIL", {"train_number": "D3125", "seat": "SECOND_CLASS"}, 0),
    (2, "RAIL", {"train_number": "d 312", "seat": "FIRST_CLASS"}, 0),
    (1, "RAIL", {"train_number": "C2001", "seat": "SECOND_CLASS"}, 0),
    (5, "RAIL", {"train_number": "K1158", "seat": "HARD_SLEEPER"}, 0),
    (2, "RAIL", {"train_number": "Z38", "seat": "SOFT_SLEEPER"}, 0),
    (4, "RAIL", {"train_number": "T110", "seat": "HARD_SEAT"}, 0),
    (20, "AIRLINE", {"flight_number": "CA1501", "cabin": "Y"}, 0),
    (2, "AIRLINE", {"flight_number": "MU5101", "cabin": "J"}, 0),
    (4, "HOTEL", {"star_rating": 0}, 0),
    (5, "HOTEL", {"star_rating": 3}, 0),
    (3, "HOTEL", {"star_rating": 5, "high_end": True}, 0),
    (2, "TRAVEL", {"service": "OUTBOUND_GROUP_TOUR"}, 0),
    (1, "TRAVEL", {"service": "DOMESTIC"}, 150_000),
    (1, "TRAVEL", {"service": "RATED_RESORT"}, 350_000),
    (1, "SHIP", {"cabin_class": 2}, 0),
    (1, "SHIP", {"cabin_class": 3}, 0),
    (1, "LEISURE", {"venue": "GOLF"}, 0),
    (1, "LEISURE", {"venue": "ORDINARY"}, 0),
    (1, "SCHOOL", {"private_school": True, "high_fee": True}, 0),
    (1, "INSURANCE", {"cash_value": True}, 2_000_000),
    (1, "REAL_ESTATE", {"kind": "PROPERTY_PURCHASE"}, 0),
    (1, "VEHICLE", {"business_necessary": False}, 0),
)
# Organisations buy rooms, offices, vehicles and property.
_ORG_PURCHASES: tuple[tuple[int, str, dict[str, Any], int], ...] = (
    (4, "HOTEL", {"star_rating": 4}, 0),
    (2, "OFFICE_RENTAL", {"high_end": True}, 0),
    (2, "VEHICLE", {"business_necessary": False}, 0),
    (1, "REAL_ESTATE", {"kind": "PROPERTY_PURCHASE"}, 0),
)
ORGANIZATION_SHARE = 0.03


@dataclass(frozen=True)
class Subject:
    """Who buys: a person (``id_type``, ``number``) or an organisation (``uscc``)."""

    name: str
    number: str = ""
    id_type: str = "RESIDENT_ID"
    uscc: str = ""


def unlisted_person(rng: random.Random) -> Subject:
    birth = _dt.date(1925, 1, 1) + _dt.timedelta(days=rng.randrange(16 * 365))
    first17 = rng.choice(_REGIONS) + birth.strftime("%Y%m%d") + f"{rng.randrange(1000):03d}"
    name = rng.choice(_SURNAMES) + "".join(rng.choices(_GIVEN, k=rng.choice((1, 2))))
    return Subject(name, number=first17 + resident_id_check_char(first17))


def unlisted_organization(rng: random.Random) -> Subject:
    first17 = "91" + rng.choice(_REGIONS) + "".join(rng.choices(_USCC_ALPHABET, k=9))
    return Subject(
        rng.choice(_SURNAMES) + "记贸易有限公司", uscc=first17 + uscc_check_char(first17)
    )


def listed_subjects(
    entries: int, seed: int, as_of: _dt.date, want: int = 500
) -> tuple[list[Subject], list[Subject]]:
    """(people, organisations) named by the first entries of the synthetic list."""
    people: list[Subject] = []
    orgs: list[Subject] = []
    for entry in iter_entries(min(entries, max(want * 4, 100)), seed, as_of):
        subject: dict[str, Any] = entry["subject"]  # type: ignore[assignment]
        if subject["type"] == "PERSON":
            people.append(Subject(subject["name"], subject["id_number"], subject["id_type"]))
        else:
            orgs.append(Subject(subject["name"], uscc=subject["uscc"]))
            for rel in entry["related_persons"]:  # type: ignore[attr-defined]
                people.append(Subject(rel["name"], rel["id_number"], rel["id_type"]))
        if len(people) + len(orgs) >= want:
            break
    return people, orgs


def _pick(
    rng: random.Random, table: tuple[tuple[int, str, dict[str, Any], int], ...]
) -> tuple[str, dict[str, Any], int]:
    _, channel, purchase, amount = rng.choices(table, weights=[t[0] for t in table])[0]
    return channel, purchase, amount


def check_request(subject: Subject, rng: random.Random, request_id: str) -> pb.CheckRequest:
    if subject.uscc:
        channel, purchase, amount = _pick(rng, _ORG_PURCHASES)
        who: dict[str, Any] = {"uscc": subject.uscc}
    else:
        channel, purchase, amount = _pick(rng, _PERSON_PURCHASES)
        who = {"id_number": subject.number, "id_type": subject.id_type}
    return build_request(
        channel,
        name=subject.name,
        purchase=purchase,
        amount_fen=amount,
        request_id=request_id,
        merchant_id="M0001",
        terminal_id="T01",
        **who,
    )
    channel, purchase, amount = _pick(rng, _PERSON_PURCHASES)
    return build_request(
        channel,
        id_number=subject.number,
        id_type=subject.id_type,
        name=subject.name,
        purchase=purchase,
        amount_fen=amount,
        request_id=request_id,
        merchant_id="M0001",
        terminal_id="T01",
    )


@dataclass
class Traffic:
    """Requests in a fixed shuffled order, and the same split by listed or not."""

    requests: list[pb.CheckRequest]
    listed: list[pb.CheckRequest]
    unlisted: list[pb.CheckRequest]


def build_traffic(
    size: int, entries: int, seed: int, as_of: _dt.date, listed_share: float = 0.01
) -> Traffic:
    """``size`` requests, ``listed_share`` of them for subjects on the list."""
    rng = random.Random(seed ^ 0x5EED)
    people, orgs = listed_subjects(entries, seed, as_of)
    n_listed = max(1, round(size * listed_share))
    listed = []
    for i in range(n_listed):
        pool = orgs if orgs and rng.random() < ORGANIZATION_SHARE * 3 else people
        listed.append(check_request(pool[i % len(pool)], rng, f"L{i:06d}"))
    unlisted = []
    for i in range(size - n_listed):
        if rng.random() < ORGANIZATION_SHARE:
            subject = unlisted_organization(rng)
        else:
            subject = unlisted_person(rng)
        unlisted.append(check_request(subject, rng, f"U{i:06d}"))
    requests = listed + unlisted
    rng.shuffle(requests)
    return Traffic(requests, listed, unlisted)
