"""The benchmark's pre-framed bodies say what they mean, and ``bare_server --sync`` answers.

``loadtest/segments.py`` drives servers with bytes built once (h2load posts
them as they are; the raw clients send them without a serializer), so a wrong
byte would make every figure measure refusals. These tests parse the bytes
back into the requests they stand for, and make one real call of each kind to
the thread-pool bare servicer. No timing is asserted.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from loadtest.common import frame, unframe
from loadtest.rawclient import METHODS
from loadtest.segments import SEED, STREAM_RING, batch_message, check_requests
from loadtest.traffic import listed_subjects
from loadtest.workers_bench import grpc_body
from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = 100_000  # the benchmark's default list; only its first entries are read


def listed_numbers() -> set[str]:
    people, _ = listed_subjects(ENTRIES, SEED, _dt.date.today(), want=50)
    return {p.number for p in people}


def test_frame_and_unframe_are_inverse_and_refuse_a_cut_body() -> None:
    messages = [b"", b"a", b"\x00" * 300]
    body = b"".join(frame(m) for m in messages)
    assert unframe(body) == messages
    with pytest.raises(ValueError):
        unframe(body[:-1])


def test_unary_body_is_one_unlisted_rail_check() -> None:
    (message,) = unframe(grpc_body())
    request = pb.CheckRequest.FromString(message)
    assert request.channel == pb.RAIL
    assert request.person.id_number
    assert request.person.id_number not in listed_numbers()


def test_batch_body_holds_100_distinct_checks_one_of_them_listed() -> None:
    checks = check_requests(100, "b", 0.01, ENTRIES)
    (message,) = unframe(frame(batch_message(checks)))
    batch = pb.CheckBatchRequest.FromString(message)
    assert len(batch.checks) == 100
    assert len({c.request_id for c in batch.checks}) == 100
    assert [c.SerializeToString() for c in batch.checks] == checks
    on_list = listed_numbers()
    listed = [c for c in batch.checks if c.person.id_number in on_list]
    assert len(listed) == 1


def test_stream_ring_ids_are_distinct_beyond_the_servers_window() -> None:
    ring = check_requests(STREAM_RING, "s", 0.01, ENTRIES)
    ids = [pb.CheckRequest.FromString(m).request_id for m in ring]
    assert len(set(ids)) == len(ids) > 1024  # the server's StreamIds window
    assert unframe(b"".join(frame(m) for m in ring)) == ring


@pytest.fixture
def bare_sync() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.bare_server", "--sync", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first line, or "" if it died
        found = re.match(r"serving on (\S+)", line)
        assert found, line
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_bare_sync_answers_unary_batch_stream_and_raw_bytes(bare_sync: str) -> None:
    checks = [pb.CheckRequest.FromString(m) for m in check_requests(3, "t", 0.0, ENTRIES)]
    with grpc.insecure_channel(bare_sync) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ConsumptionCheckStub(channel)  # type: ignore[no-untyped-call]
        one = stub.CheckConsumption(checks[0], timeout=10)
        assert (one.request_id, one.decision) == ("t00000", pb.ALLOW)
        batch = stub.CheckConsumptionBatch(pb.CheckBatchRequest(checks=checks), timeout=10)
        assert [r.request_id for r in batch.results] == ["t00000", "t00001", "t00002"]
        streamed = stub.CheckConsumptionStream(iter(checks), timeout=10)
        assert [r.request_id for r in streamed] == ["t00000", "t00001", "t00002"]
        raw = channel.unary_unary(
            METHODS["batch"], request_serializer=None, response_deserializer=None
        )
        (body,) = unframe(frame(batch_message([c.SerializeToString() for c in checks])))
        answer = pb.CheckBatchResponse.FromString(raw(body, timeout=10))
        assert [r.decision for r in answer.results] == [pb.ALLOW] * 3


def test_features_bench_turns_on_one_feature_per_configuration(tmp_path: Path) -> None:
    """Each configuration of ``features_bench`` adds the flags of its features and no
    other; ``all`` is ``ratio_bench``'s "ours"."""
    from loadtest.features_bench import FEATURES, _serve_args

    flags = {"hits": "--hit-log", "audit": "--audit-log", "keys": "--keys-file"}
    for name, on in FEATURES.items():
        args = _serve_args(tmp_path, tmp_path / "list.jsonl", name, tmp_path / "keys.json")
        assert {f for f in flags.values() if f in args} == {flags[f] for f in on}, name
        assert "--metrics-listen" in args and "--key-secret-file" in args
    assert set(FEATURES["all"]) == set(flags) and FEATURES["none"] == ()


def test_features_bench_table_shows_medians_and_the_difference_to_none() -> None:
    from loadtest.features_bench import CONFIGS, render

    def fig(config: str, us: float) -> dict[str, object]:
        return {"config": config, "checks_per_s": 1e6 / us, "server_cores": 1.0,
                "server_us_per_check": us, "threads_us_per_check": [us * 0.7, us * 0.1],
                "driver_cores": 0.1}  # fmt: skip

    segments = [fig(c, us) for c in CONFIGS for us in ((200.0, 210.0, 260.0) if c == "none"
                                                        else (240.0, 250.0, 900.0))]  # fmt: skip
    rows = {
        line.split(" | ")[0].lstrip("| "): line for line in render(segments, "unary").splitlines()
    }
    assert " | 210.0 | +0.0 | 147.0, 21.0 | " in rows["none"]
    assert " | 250.0 | +40.0 | 175.0, 25.0 | " in rows["audit"]
    assert "| 4,000 |" in rows["audit"]  # the median rate, not the mean


def test_a_bench_data_folder_is_its_users_own_and_one_others_may_write_is_refused(
    tmp_path: Path,
) -> None:
    """Every user's benches shared /tmp/shixin-bench, from which a cached list is loaded
    by name: whoever made it first chose the lists the others measured."""
    from loadtest.common import DATA_DIR, own_folder

    assert DATA_DIR.name == f"shixin-bench-{os.getuid()}"
    made = own_folder(tmp_path / "bench")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    made.chmod(0o777)
    with pytest.raises(SystemExit) as refused:
        own_folder(made)
    assert str(refused.value) == (
        f"{made} is writable by everyone (mode 0777): give --data-dir (or --out-dir) a "
        "folder of your own"
    )
