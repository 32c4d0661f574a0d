"""A compiled index answers exactly as the parsed one, and a restart maps it (no re-parse).

Real files throughout: a synthetic list written by the generator, compiled
into a temporary folder, mapped back with ``mmap``.
"""

from __future__ import annotations

import datetime as _dt
import subprocess
import sys
from pathlib import Path

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import day_number
from shixin_check.loader import versions
from shixin_check.loader.compiled import IndexStore, map_compiled, snapshot_stamp
from shixin_check.loader.index_memory import MemoryIndex, matches_of
from shixin_check.loader.listfile import parse_entry
from shixin_check.loader.synthetic import write_snapshot
from shixin_check.loader.versions import Loader, build_snapshot
from tests.listdata import LI, ZHANG, basic_rows, delta, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.test_failure_paths import decision

AS_OF = _dt.date(2026, 11, 1)


def synthetic_snapshot(tmp_path: Path) -> Path:
    """400 synthetic entries (with related persons) in ``feed/``, as the feed writes them."""
    path = tmp_path / "feed" / "snapshot-0001.jsonl"
    path.parent.mkdir()
    write_snapshot(path, 400, seed=5, as_of=AS_OF)
    return path


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return synthetic_snapshot(tmp_path)


def listed_keys(path: Path, keyer: SubjectKeyer) -> list[int]:
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()[1:]]
    return [key for row in rows for key, _ in matches_of(parse_entry(row), keyer)]


def test_a_mapped_version_answers_as_the_parsed_one(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    parsed = build_snapshot(snapshot, keyer)
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    folder = store.put(parsed.base, parsed.info, snapshot_stamp(snapshot, keyer.fingerprint))
    base, info = map_compiled(folder, keyer.fingerprint)
    assert type(base.k_hi) is memoryview  # mapped, not read into memory
    mapped = versions.MemoryView(base, parsed.overlay, info)
    keys = listed_keys(snapshot, keyer)
    assert len(keys) > 400  # related persons too
    for key in keys:
        assert mapped.might_contain(key)
        assert sorted(mapped.look_up(key)) == sorted(parsed.look_up(key))
    assert info.counts == parsed.info.counts
    assert info.version == parsed.info.version
    assert info.source_timestamp == parsed.info.source_timestamp
    today = day_number(AS_OF)
    assert info.counts.on(today) == parsed.info.counts.on(today)


def test_a_restart_maps_the_compiled_version_instead_of_parsing(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert first.info.mapped_from  # even the first load serves the mapped copy

    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("re-parsed a snapshot that was compiled")

    monkeypatch.setattr(versions, "build_snapshot", no_parsing)
    again = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert again.info.version == first.info.version
    assert again.info.mapped_from == first.info.mapped_from
    for key in listed_keys(snapshot, keyer)[:50]:
        assert sorted(again.look_up(key)) == sorted(first.look_up(key))


def test_deltas_apply_on_top_of_a_mapped_version(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    first_row = orjson.loads(snapshot.read_bytes().splitlines()[1])
    key = matches_of(parse_entry(first_row), keyer)[0][0]
    change = write_jsonl(tmp_path / "d.jsonl", [delta(1, "DELIST", entry_id=first_row["entry_id"])])
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, [change])
    assert view.info.last_delta_seq == 1
    assert [m for m in view.look_up(key) if m.entry_id == first_row["entry_id"]] == []


def test_a_changed_snapshot_or_another_secret_is_parsed_again(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    before = snapshot_stamp(snapshot, keyer.fingerprint)
    write_snapshot(snapshot, 300, seed=6, as_of=AS_OF)  # the feed replaced it
    assert snapshot_stamp(snapshot, keyer.fingerprint) != before
    view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert view.info.counts.total == 300
    other = SubjectKeyer(b"another-secret-0123456789abcdef!")
    assert snapshot_stamp(snapshot, other.fingerprint) != snapshot_stamp(
        snapshot, keyer.fingerprint
    )
    with pytest.raises(Exception, match="another key secret"):
        map_compiled(store.path_for(snapshot_stamp(snapshot, keyer.fingerprint)), other.fingerprint)


def test_the_store_keeps_the_newest_versions_only(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    loader_ = Loader(MemoryIndex(), keyer, store)
    for seed in (1, 2, 3):
        write_snapshot(snapshot, 50, seed=seed, as_of=AS_OF)
        loader_.load_snapshot(snapshot, ())
    assert len(list((tmp_path / "index").glob("v-*"))) == 2  # the newest and one before
    assert not list((tmp_path / "index").glob(".*"))  # no half-written folder left


def test_a_restarted_server_maps_what_it_compiled(snapshot: Path, tmp_path: Path) -> None:
    feed = snapshot.parent
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o600)  # as the README asks: no warning
    first = ServeProcess("--list", str(feed), "--key-secret-file", str(secret),
                         log=tmp_path / "first.log")  # fmt: skip
    try:
        first.wait_serving()
    finally:
        first.stop()
    assert "mapping its compiled index" not in first.output()
    assert list((feed / ".shixin-index").glob("v-*/meta.json"))
    again = ServeProcess("--list", str(feed), "--key-secret-file", str(secret),
                         log=tmp_path / "again.log")  # fmt: skip
    try:
        again.wait_serving()
        status = run_cli("status", "--target", again.target)
        assert "version " in status.stdout
    finally:
        again.stop()
    assert "mapping its compiled index" in again.output()


def test_a_moved_list_folder_maps_its_compiled_snapshot_without_header_and_its_deltas(
    tmp_path: Path,
) -> None:
    """The list folder is renamed between two starts (``--index-dir`` outside it). The
    restart maps the compiled snapshot, which has no header, and reads that from where
    the snapshot is now, not the path it was compiled from: so the delta on it sets the
    numbering as before, never refused as a gap (``seq 5 follows seq 0``)."""
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())  # no header row
    write_jsonl(feed / "delta-0005.jsonl", [delta(5, "DELIST", entry_id="E1")])
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o600)  # as the README asks: no warning
    index = tmp_path / "index"
    for start in ("first", "moved"):
        if start == "moved":
            feed = feed.rename(tmp_path / "moved")
        server = ServeProcess("--list", str(feed), "--key-secret-file", str(secret),
                              "--index-dir", str(index), log=tmp_path / f"{start}.log")  # fmt: skip
        try:
            server.wait_serving()
            status = run_cli("status", "--target", server.target)
            assert "BEHIND" not in status.stdout, status.stdout
            assert f"from {feed / 'snapshot-0001.jsonl'}\n" in status.stdout, status.stdout
            channel = grpc.insecure_channel(server.target)
            try:
                stub = pb_grpc.ConsumptionCheckStub(channel)
                shown = stub.GetListStatus(pb.ListStatusRequest(), timeout=5)
                assert (shown.last_delta_seq, shown.behind) == (5, False)
                assert (decision(stub, ZHANG), decision(stub, LI)) == ("ALLOW", "DENY")
            finally:
                channel.close()
        finally:
            server.stop()
        output = server.output()
        assert ("mapping its compiled index" in output) is (start == "moved"), output
        assert "rejected" not in output, output


def test_no_index_is_compiled_with_a_generated_secret(snapshot: Path, tmp_path: Path) -> None:
    server = ServeProcess("--list", str(snapshot.parent), log=tmp_path / "serve.log")
    try:
        server.wait_serving()
    finally:
        server.stop()
    assert not (snapshot.parent / ".shixin-index").exists()  # its keys die with the process


def test_a_compiled_file_cut_short_is_compiled_again(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    folder = Path(first.info.mapped_from)
    column = folder / "k_lo.Q"
    cut = column.with_name("cut")
    cut.write_bytes(column.read_bytes()[: -8 * 10])  # ten keys lost, still whole words
    cut.replace(column)  # a new file: ``first`` keeps mapping the old one
    with pytest.raises(Exception, match="k_lo.Q is"):
        map_compiled(folder, keyer.fingerprint)
    again = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())  # a restart
    parsed = build_snapshot(snapshot, keyer)
    assert again.info.counts == parsed.info.counts
    for key in listed_keys(snapshot, keyer):
        assert sorted(again.look_up(key)) == sorted(parsed.look_up(key))
    map_compiled(Path(again.info.mapped_from), keyer.fingerprint)  # whole again


def test_an_unusable_index_folder_serves_from_memory(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store = IndexStore(blocker / "index", keyer.fingerprint)  # cannot be created
    with caplog.at_level("WARNING", logger="shixin.loader"):
        view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert not view.info.mapped_from and view.info.counts.total == 400
    assert any("serving it unshared" in r.getMessage() for r in caplog.records)


def test_a_compile_killed_half_way_leaves_nothing_for_long(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed compiler's
    leftover = tmp_path / "index" / f".v-0123.part-{dead.pid}"
    leftover.mkdir(parents=True)
    (leftover / "k_hi.Q").write_bytes(b"\0" * 64)
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert not leftover.exists()
