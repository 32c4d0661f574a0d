"""``serve --workers N --list FILE``: the pool serves one list, whatever becomes of the file.

A single server given a file loads it once, at start (a file is not watched).
A pool's workers each load it themselves, a replacement of a dead worker
too: one that read the file as it is now, after the feed replaced it,
answered the same person DENY from one worker and ALLOW from the other. A
replacement must serve the pool's version (mapped from the index folder) or
refuse, NOT_SERVING, saying why; never a second list.

Real pieces, as in ``tests/test_workers.py``: a ``shixin-check serve``
supervisor and its spawned workers, fresh connections on 127.0.0.1 (each
reaches one worker), real files replaced as a feed or an operator would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from shixin_check.domain.identity import IdType
from shixin_check.domain.index import VersionInfo
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.columns import keyer_for
from shixin_check.loader.compiled import IndexStore, file_identity
from shixin_check.loader.index_memory import MemoryIndex
from shixin_check.loader.versions import ListFileChanged, Loader
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.test_workers import (
    CONNECTIONS,
    SECRET,
    fresh_channel,
    kill_one_and_await_its_replacement,
    scrape,
    serve_workers,
    two_workers,
    workers_of,
)
from tests.waiting import eventually

__all__ = ["two_workers"]  # a fixture, defined beside the other worker tests

HEADER = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
#: what a refusing worker logs (with the file and why between the two)
CHANGED = "changed under a running pool ("
CANNOT = "this worker cannot serve what the others do; restart the server to serve the new file"

Answer = tuple[str, str, str]  # worker (check_id prefix), decision or status code, list version


@pytest.fixture
def list_file(tmp_path: Path) -> Path:
    """One snapshot file (Zhang listed), the key secret beside it."""
    folder = tmp_path / "feed"
    folder.mkdir()
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    return write_jsonl(folder / "list.jsonl", [HEADER, *basic_rows()])


def without_zhang() -> list[bytes]:
    rows = [HEADER, *(r for r in basic_rows() if r["entry_id"] != "E1")]
    return [orjson.dumps(r) + b"\n" for r in rows]


def replace_by_rename(path: Path) -> None:
    """The feed's way: written aside, renamed into place (a new inode)."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(b"".join(without_zhang()))
    part.replace(path)


def rewrite_in_place(path: Path) -> None:
    """An operator's way: the same file truncated and written again."""
    with path.open("wb") as out:
        out.write(b"".join(without_zhang()))


def ask_zhang(target: str) -> list[Answer]:
    """Zhang (listed in the file the pool started with), once per fresh connection."""
    answers = []
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            stub = pb_grpc.ConsumptionCheckStub(channel)
            try:
                reply = stub.CheckConsumption(build_request("AIRLINE", id_number=ZHANG), timeout=10)
            except grpc.RpcError as exc:
                answers.append(("", exc.code().name, ""))
                continue
            decision = pb.Decision.Name(reply.decision)
            answers.append((reply.check_id.split("-", 1)[0], decision, reply.list_version))
    return answers


def health_round(target: str) -> set[str]:
    """Readiness as each of ``CONNECTIONS`` fresh connections is told it."""
    seen = set()
    for _ in range(CONNECTIONS):
        with fresh_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            seen.add(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return seen


def pool_version(answers: list[Answer]) -> str:
    """The one version the pool answers Zhang DENY from (both workers answering)."""
    assert {decision for _, decision, _ in answers} == {"DENY"}, answers
    assert len({worker for worker, _, _ in answers}) == 2, answers
    versions = {version for _, _, version in answers}
    assert len(versions) == 1, answers
    return versions.pop()


@pytest.mark.parametrize("change", [replace_by_rename, rewrite_in_place])
def test_a_replacement_serves_the_pools_version_of_a_file_changed_since(
    tmp_path: Path, list_file: Path, two_workers: None, change: Callable[[Path], None]
) -> None:
    server = serve_workers(tmp_path, list_file, change.__name__)
    try:
        before = ask_zhang(server.target)
        version = pool_version(before)
        change(list_file)
        kill_one_and_await_its_replacement(server)
        after = ask_zhang(server.target)
        # every answer, the replacement's included, is the pool's: never a second list
        assert {(d, v) for _, d, v in after} == {("DENY", version)}, after
        assert len({w for w, _, _ in after}) == 2, after  # both workers answered
        assert {w for w, _, _ in after} != {w for w, _, _ in before}  # one is the new one
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    # the replacement mapped what the pool compiled from the file as it was
    assert re.search(r"\[w\d\] .*replaced or rewritten since it started; mapping the compiled "
                     r"index .*\.shixin-index/v-", output), output  # fmt: skip
    assert output.count("compiled into") == 1, output  # the new file was never parsed


def test_without_an_index_folder_a_replacement_refuses_a_changed_file(
    tmp_path: Path, list_file: Path, two_workers: None
) -> None:
    server = serve_workers(
        tmp_path, list_file, "off", "--index-dir", "off", "--metrics-listen", "127.0.0.1:0"
    )  # fmt: skip
    found = re.search(r"metrics on (http://\S+)", server.output())
    assert found, server.output()
    url = found.group(1)
    try:
        version = pool_version(ask_zhang(server.target))
        eventually(lambda: scrape(url)["shixin_ready"] == 1, "the pool ready")
        replace_by_rename(list_file)
        victim = workers_of(server)[0]
        victim.kill()
        victim.wait(timeout=15)
        eventually(
            lambda: len(workers_of(server)) == 2
            and victim.pid not in {w.pid for w in workers_of(server)}
            and re.search(r"worker \d+ (serving again|\(pid \d+\) is up but NOT_SERVING)",
                          server.output()) is not None,
            "a replacement up in the killed worker's place",
        )  # fmt: skip
        answers = ask_zhang(server.target)
        # answered: the pool's list only; the replacement refuses every call
        assert {(d, v) for _, d, v in answers if v} == {("DENY", version)}, answers
        assert {d for _, d, v in answers if not v} == {"UNAVAILABLE"}, answers
        assert health_round(server.target) == {"SERVING", "NOT_SERVING"}
        eventually(lambda: scrape(url)["shixin_ready"] == 0, "shixin_ready 0: one worker is not")
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    refused = [line for line in output.splitlines() if CHANGED in line]
    assert refused, output
    assert all(f"the list file {list_file} {CHANGED}" in line for line in refused), refused
    assert all(CANNOT in line for line in refused), refused
    assert any(" ERROR [w" in line and "health: NOT_SERVING" in line for line in refused)
    said = [line for line in refused if "[supervisor]" in line]
    assert len(said) == 1 and "is up but NOT_SERVING" in said[0], said
    assert "serving again" not in output, output


# --- the loader: a pinned file ---------------------------------------------------------------


def test_a_pinned_file_is_loaded_as_it_was_or_not_at_all(tmp_path: Path, list_file: Path) -> None:
    """What each worker does, a first one included, when the file is no longer the one
    the supervisor saw: the compiled version of it as it was, else nothing installed."""
    keyer = keyer_for(SECRET.encode())
    pinned = file_identity(list_file)
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    pool = Loader(MemoryIndex(), keyer, store).load_path(list_file, pinned=pinned)
    assert pool.look_up(listed_key(keyer)), "Zhang listed in the pool's version"
    replace_by_rename(list_file)

    later = Loader(MemoryIndex(), keyer, store).load_path(list_file, pinned=pinned)
    assert later.info.version == pool.info.version
    assert later.info.mapped_from == pool.info.mapped_from
    assert later.look_up(listed_key(keyer))

    index = MemoryIndex()
    with pytest.raises(ListFileChanged, match=re.escape(f"the list file {list_file} {CHANGED}")):
        Loader(index, keyer).load_path(list_file, pinned=pinned)  # no index folder
    assert index.current() is None
    empty = IndexStore(tmp_path / "other", keyer.fingerprint)
    with pytest.raises(ListFileChanged, match="holds no compiled version of it as it was"):
        Loader(index, keyer, empty).load_path(list_file, pinned=pinned)
    assert index.current() is None and not list(empty.folder.glob("v-*"))

    # unpinned (a single server), the file is read as it is now
    fresh = Loader(MemoryIndex(), keyer).load_path(list_file)
    assert not fresh.look_up(listed_key(keyer))
    assert _differs(fresh.info, pool.info)


def listed_key(keyer: SubjectKeyer) -> int:
    return keyer.subject_key(IdType.RESIDENT_ID, ZHANG)


def _differs(a: VersionInfo, b: VersionInfo) -> bool:
    return a.version != b.version and os.path.basename(a.source) == os.path.basename(b.source)
