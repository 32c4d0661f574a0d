"""GetPrefilter: the gateway's Bloom filter, its key space, its roles and its deltas.

Real servers on free ports (``serve``), real channels, real keys files. Also
here, beside the other addition to ``server/service.py``: the
``grpc-retry-pushback-ms`` trailer of a rate refusal, read by grpcio's retry
policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rbloom import Bloom

from shixin.v1 import check_pb2 as pb
from shixin_check.cli import main
from shixin_check.clients.check_client import CheckClient
from shixin_check.clients.errors import RateLimited
from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import PrefilterKeyer, SubjectKeyer
from shixin_check.server.auth import add_key
from shixin_check.server.convert import LOOKUP_RULES
from tests.accessdata import bearer, flight, refusal
from tests.conftest import SECRET, RunningServer
from tests.listdata import (
    ACME_USCC,
    LI,
    WANG,
    ZHANG,
    ZHAO,
    basic_rows,
    delta,
    person_entry,
    write_jsonl,
)
from tests.test_redis_replicas import has_a_list, load_cli
from tests.waiting import eventually

Serve = Callable[..., RunningServer]

#: Every identity of basic_rows(), as the filter must hold it.
LISTED: list[tuple[IdType | None, str]] = [
    (IdType.RESIDENT_ID, ZHANG),
    (IdType.RESIDENT_ID, LI),
    (IdType.RESIDENT_ID, WANG),
    (None, ACME_USCC),
]


def download(
    server: RunningServer, known_version: str = "", metadata: Any = ()
) -> tuple[pb.PrefilterHeader, list[bytes]]:
    """(header, data chunks) of one GetPrefilter call."""
    chunks = list(
        server.stub().GetPrefilter(
            pb.PrefilterRequest(known_version=known_version, lookup_rules=LOOKUP_RULES),
            timeout=10,
            metadata=metadata,
        )
    )
    assert chunks and chunks[0].HasField("header")
    assert all(c.WhichOneof("part") == "data" for c in chunks[1:])
    return chunks[0].header, [c.data for c in chunks[1:]]


def whole_filter(server: RunningServer, metadata: Any = ()) -> tuple[pb.PrefilterHeader, Bloom]:
    header, data = download(server, metadata=metadata)
    assert header.content == pb.PREFILTER_FULL
    return header, Bloom.load_bytes(b"".join(data), int)


def hi(key: int) -> int:
    return key >> 64


def served_version(server: RunningServer) -> str:
    return server.stub().GetListStatus(pb.ListStatusRequest(), timeout=5).version


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    """A list directory holding basic_rows() as its snapshot (deltas are added by tests)."""
    folder = tmp_path / "feed"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())
    return folder


# --- the download -----------------------------------------------------------------


def test_the_download_is_a_header_then_chunks_that_hash_to_its_sha256(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    header, data = download(server)
    whole = b"".join(data)
    assert header.version == served_version(server) == header.base_version
    assert header.content == pb.PREFILTER_FULL
    assert hashlib.sha256(whole).digest() == header.sha256
    assert len(whole) == header.data_bytes == header.size_bytes
    assert all(0 < len(chunk) <= 1 << 20 for chunk in data)
    assert header.key_scheme == "blake2b-128/v1" and header.hash_scheme == "rbloom-1/int-hi64"
    assert header.false_positive_rate == 0.001 and header.expected_items >= header.items == 4
    assert header.built_at.endswith("Z")
    # The chunking itself, seen with small chunks: each at most the limit, in order.
    monkeypatch.setattr("shixin_check.server.prefilter.CHUNK_BYTES", 256)
    _, small = download(server)
    assert [len(c) for c in small[:-1]] == [256] * (len(small) - 1) and 0 < len(small[-1]) <= 256
    assert b"".join(small) == whole


def test_the_filter_holds_every_listed_identity_under_its_prefilter_key(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    header, bloom = whole_filter(server)
    keyer = PrefilterKeyer(header.prefilter_key)
    assert all(hi(keyer.subject_key(t, n)) in bloom for t, n in LISTED)  # related persons too
    assert hi(keyer.subject_key(IdType.RESIDENT_ID, ZHAO)) not in bloom


#: what PrefilterHeader.hash_scheme says of the probes, for a gateway without rbloom
_STEP = 47026247687942121848144207491837418733
_MASK = (1 << 128) - 1


def probably_in(data: bytes, item: int) -> bool:
    """The filter test as the proto writes it out (``hash_scheme``), not rbloom's."""
    probes, bits = int.from_bytes(data[:8], "little"), data[8:]
    n = 8 * len(bits)
    state = item
    for _ in range(probes):
        state = (state * _STEP + 1) & _MASK
        bit = ((state >> 32) & ((1 << 64) - 1)) % n
        if not bits[bit >> 3] >> (bit & 7) & 1:
            return False
    return True


def test_the_proto_describes_the_filter_bytes_a_gateway_without_rbloom_reads(
    serve: Serve, tmp_path: Path
) -> None:
    """A gateway in another language reads the filter from the proto's words alone
    (key_scheme, hash_scheme): every listed identity is in it, and the test agrees
    with rbloom's for 20,000 other items."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    header, data = download(server)
    whole = b"".join(data)
    bloom = Bloom.load_bytes(whole, int)
    key = hashlib.blake2b(key=header.prefilter_key, digest_size=16, person=b"shixin-prefilter")
    tags = {IdType.RESIDENT_ID: b"R", IdType.PASSPORT: b"P", IdType.HK_MACAO_PERMIT: b"H",
            IdType.TAIWAN_PERMIT: b"T", None: b"U"}  # fmt: skip
    for kind, number in LISTED:
        keyed = key.copy()
        keyed.update(tags[kind] + number.encode())
        assert probably_in(whole, int.from_bytes(keyed.digest()) >> 64), (kind, number)
    others = [int.from_bytes(hashlib.sha256(b"%d" % i).digest()[:8]) for i in range(20_000)]
    assert [probably_in(whole, x) for x in others] == [x in bloom for x in others]


def test_the_prefilter_key_is_not_the_index_key(serve: Serve, tmp_path: Path) -> None:
    """The filter answers for prefilter keys only: a filter of index keys does not, and the
    downloaded one holds none of the index's keys; the key handed out is not the secret."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    header, bloom = whole_filter(server)
    index = SubjectKeyer(SECRET)
    prefilter = PrefilterKeyer(header.prefilter_key)
    assert header.prefilter_key not in (SECRET, index.secret)
    assert header.prefilter_key == index.prefilter_key()  # derived, the same in every process
    index_keys = [hi(index.subject_key(t, n)) for t, n in LISTED]
    prefilter_keys = [hi(prefilter.subject_key(t, n)) for t, n in LISTED]
    assert not set(index_keys) & set(prefilter_keys)
    of_index_keys = Bloom(1024, 0.001, hash_func=int)
    of_index_keys.update(index_keys)
    assert not any(k in of_index_keys for k in prefilter_keys)
    assert not any(k in bloom for k in index_keys)
    # the server's own filter (subject keys) is another filter altogether
    view = server.service.engine.source.current()
    assert view is not None
    assert all(view.might_contain(index.subject_key(t, n)) for t, n in LISTED)


# --- who may fetch it -------------------------------------------------------------


@pytest.fixture
def prefilter_keys(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "keys.json"
    return {
        "path": str(path),
        "checker": add_key(path, "till", "*", ["check"]),
        "gateway": add_key(path, "hotel-gateway", ["HOTEL"], ["check", "prefilter"]),
        "mirror": add_key(path, "filter-mirror", "*", ["prefilter"]),
    }


def test_only_a_caller_with_the_prefilter_role_may_fetch_it(
    serve: Serve, tmp_path: Path, prefilter_keys: dict[str, str]
) -> None:
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        keys_file=Path(prefilter_keys["path"]),
        audit_log=tmp_path / "audit.log",
    )
    refused = refusal(lambda: download(server, metadata=bearer(prefilter_keys["checker"])))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks the role 'prefilter'" in (refused.details() or "")
    status = rpc_status.from_call(refused)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "ROLE_NOT_ALLOWED"
    assert dict(info.metadata) == {"principal": "till", "role": "prefilter"}
    assert refusal(lambda: download(server)).code() == grpc.StatusCode.UNAUTHENTICATED

    # Granted: the header names the channels the caller may check, and only those.
    header, _ = download(server, metadata=bearer(prefilter_keys["gateway"]))
    assert list(header.channels) == [pb.HOTEL]
    header, _ = download(server, metadata=bearer(prefilter_keys["mirror"]))
    assert list(header.channels) == []  # no role "check": nothing to answer locally

    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    outcomes = [(r["caller"], r["outcome"]) for r in records if r["method"] == "GetPrefilter"]
    assert ("till", "PERMISSION_DENIED") in outcomes and ("hotel-gateway", "OK") in outcomes


def test_keys_add_takes_the_prefilter_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    status = main(["keys", "add", "--keys-file", str(path), "--principal", "gw",
                   "--roles", "check,prefilter"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    entry = json.loads(path.read_text())["keys"][0]
    assert entry["roles"] == ["check", "prefilter"]


# --- versions and deltas ----------------------------------------------------------


def test_a_caller_behind_by_deltas_gets_the_additions_and_ends_with_the_same_filter(
    serve: Serve, feed: Path
) -> None:
    server = serve(feed)
    first, data = download(server)
    held = Bloom.load_bytes(b"".join(data), int)
    keyer = PrefilterKeyer(first.prefilter_key)
    zhao = hi(keyer.subject_key(IdType.RESIDENT_ID, ZHAO))
    assert zhao not in held

    # Up to date: additions, none of them.
    same, nothing = download(server, first.version)
    assert same.content == pb.PREFILTER_ADDITIONS and nothing == [] and same.data_bytes == 0
    assert same.sha256 == hashlib.sha256(b"").digest()

    write_jsonl(feed / "delta-0001.jsonl", [delta(1, "LIST", entry=person_entry("E9", ZHAO, "赵六"))])  # fmt: skip
    eventually(lambda: served_version(server) != first.version, "delta 1 applied")
    header, data = download(server, first.version)
    added = b"".join(data)
    assert header.content == pb.PREFILTER_ADDITIONS
    assert header.version == served_version(server) and header.base_version == first.version
    assert hashlib.sha256(added).digest() == header.sha256 and len(added) == header.data_bytes
    items = [int.from_bytes(added[i : i + 8], "big") for i in range(0, len(added), 8)]
    assert items == [zhao]
    held.update(items)
    fresh, fresh_data = download(server)  # a caller holding nothing gets the whole filter
    assert fresh.content == pb.PREFILTER_FULL and fresh.version == header.version
    assert held.save_bytes() == b"".join(fresh_data)  # the same filter either way

    # A delisting never removes: Zhang lingers (a round trip for the gateway, never an ALLOW).
    write_jsonl(feed / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E1")])
    eventually(lambda: served_version(server).endswith("+2"), "delta 2 applied")
    later, later_data = download(server, header.version)
    assert later.content == pb.PREFILTER_ADDITIONS and later_data == []  # nothing new
    _, bloom = whole_filter(server)
    assert hi(keyer.subject_key(IdType.RESIDENT_ID, ZHANG)) in bloom
    assert zhao in bloom

    # Another snapshot, or a version this server never had: the whole filter.
    other, _ = download(server, "20200101T000000Z-00000000+1")
    assert other.content == pb.PREFILTER_FULL
    ahead, _ = download(server, f"{first.version}+99")
    assert ahead.content == pb.PREFILTER_FULL


# --- where it cannot be served ----------------------------------------------------


def test_a_snapshot_file_changed_or_gone_since_its_load_is_refused_clearly(
    serve: Serve, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    server = serve(path)
    write_jsonl(path, basic_rows()[:2])  # the file no longer holds what is served
    refused = refusal(lambda: download(server))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "changed since version" in (refused.details() or "")

    gone = serve(write_jsonl(tmp_path / "g.jsonl", basic_rows()))
    (tmp_path / "g.jsonl").unlink()
    refused = refusal(lambda: download(gone))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is gone" in (refused.details() or "")
    assert gone.stub().CheckConsumption(flight(ZHANG), timeout=5).decision == pb.DENY


def test_no_list_loaded_is_unavailable(serve: Serve, tmp_path: Path) -> None:
    empty = tmp_path / "empty-feed"
    empty.mkdir()
    server = serve(empty)
    assert refusal(lambda: download(server)).code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.redis
def test_redis_mode_answers_failed_precondition(
    serve: Serve, tmp_path: Path, redis_server: Any
) -> None:
    done = load_cli(write_jsonl(tmp_path / "s1.jsonl", basic_rows()), redis_server.url)
    assert done.returncode == 0, done.stderr
    server = serve(None, redis=redis_server.url, replica_id="r1")
    eventually(lambda: has_a_list(server), "loading the list")
    refused = refusal(lambda: download(server))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "memory mode only" in (refused.details() or "")


# --- the push-back trailer of a rate refusal --------------------------------------


@pytest.fixture
def slow_keys(tmp_path: Path) -> dict[str, str]:
    """Two callers of 2 checks a second, burst 3: one for raw calls, one for the client."""
    path = tmp_path / "keys.json"
    return {
        "path": str(path),
        "raw": add_key(path, "raw", "*", ["check"], 2, 3),
        "client": add_key(path, "client", "*", ["check"], 2, 3),
    }


def test_a_rate_refusal_carries_the_push_back_that_grpc_retries_obey(
    serve: Serve, tmp_path: Path, slow_keys: dict[str, str]
) -> None:
    audit = tmp_path / "audit.log"
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()),
        keys_file=Path(slow_keys["path"]),
        audit_log=audit,
    )
    stub = server.stub()

    def drain(key: str) -> None:
        for _ in range(3):
            stub.CheckConsumption(flight(ZHAO), timeout=5, metadata=bearer(key))

    def refusals(caller: str) -> int:
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        return sum(r["caller"] == caller and r["outcome"] == "RESOURCE_EXHAUSTED" for r in records)

    # On the wire: the delay itself (what RetryInfo says) when the deadline leaves room ...
    drain(slow_keys["raw"])
    refused = refusal(
        lambda: stub.CheckConsumption(flight(ZHAO), metadata=bearer(slow_keys["raw"]))
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.trailing_metadata())  # type: ignore[attr-defined]
    assert int(trailers["grpc-retry-pushback-ms"]) == int(trailers["retry-after-ms"]) > 0

    # ... and through the client's retry policy: it waits as told, so the one retry is
    # answered (backoff alone retries sooner, into more refusals) ...
    with CheckClient(server.address, api_key=slow_keys["client"], timeout=5) as client:
        drain(slow_keys["client"])
        assert client.check(flight(ZHAO)).decision == pb.ALLOW
        assert refusals("client") == 1
        # ... and a deadline shorter than the delay gets -1: no retry, the refusal at once.
        with pytest.raises(RateLimited):
            client.check(flight(ZHAO), timeout=0.3)
        assert refusals("client") == 2
        # So does one the retry would reach only just before its deadline: it would be cut
        # DEADLINE_EXCEEDED there (a key's burst refills in 2 s, the default deadline).
        # The bucket is still empty from the refusal above.
        refused = refusal(
            lambda: stub.CheckConsumption(flight(ZHAO), metadata=bearer(slow_keys["client"]))
        )
        delay_s = int(dict(refused.trailing_metadata())["retry-after-ms"]) / 1000  # type: ignore[attr-defined]
        with pytest.raises(RateLimited):  # a retry would be answered, or cut DEADLINE_EXCEEDED
            client.check(flight(ZHAO), timeout=delay_s + 0.05)
        assert refusals("client") == 4  # told at once: one refusal, no retry


def test_a_file_read_by_worker_processes_gives_the_same_filter(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big snapshot files are read by spawned processes (as the loader reads them): the
    filter is the same, byte for byte, as one read in the server."""
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    alone = serve(path)
    _, one = download(alone)
    monkeypatch.setattr("shixin_check.server.prefilter.default_workers", lambda _path: 2)
    split = serve(path)
    _, two = download(split)
    assert b"".join(one) == b"".join(two)
