"""A compiled version folder that lost its ``meta.json`` is rebuilt; compiled files are
written without write permission.

Such a folder was never mapped (``IndexStore.find`` looks for ``meta.json``),
and the compile that followed took it for one "compiled meanwhile by another
process", threw its own work away and failed to map: every start, and every
worker, parsed the list and served it unshared. Real pieces: ``shixin-check
serve`` processes on a free port over a real list file and index folder.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from tests.listdata import basic_rows, write_jsonl
from tests.processes import ServeProcess
from tests.waiting import eventually

SECRET = "tests-only-secret-0123456789abcdef"
HEADER = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}


def start_and_stop(tmp_path: Path, snapshot: Path, name: str) -> str:
    """One ``serve`` run until its list is in; its output."""
    server = ServeProcess(
        "--list", str(snapshot), "--key-secret-file", str(tmp_path / "key"),
        log=tmp_path / f"{name}.log",
    )  # fmt: skip
    try:
        eventually(lambda: re.search(r"list .*: version \S+, \d+ entries", server.output())
                   is not None, "the list loaded")  # fmt: skip
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    return output


def test_a_version_folder_without_its_meta_json_is_compiled_again(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    snapshot = write_jsonl(tmp_path / "list.jsonl", [HEADER, *basic_rows()])
    first = start_and_stop(tmp_path, snapshot, "first")
    assert "compiled into" in first, first
    [version] = (tmp_path / ".shixin-index").glob("v-*")
    (version / "meta.json").unlink()  # lost: a bad disk, a careless clean-up

    second = start_and_stop(tmp_path, snapshot, "second")
    assert f"compiled index {version} has no meta.json (damaged): replaced" in second, second
    assert f"compiled into {version}" in second, second
    assert "unusable" not in second and "unshared" not in second, second
    assert (version / "meta.json").is_file()
    assert [p.name for p in (tmp_path / ".shixin-index").glob("v-*")] == [version.name]

    third = start_and_stop(tmp_path, snapshot, "third")
    assert f"mapping its compiled index {version}" in third, third
    assert "parsed in" not in third, third


def test_compiled_files_are_written_without_write_permission(tmp_path: Path) -> None:
    """A running server maps them: an ordinary write into them (``cp`` over the folder,
    ``rsync --inplace``) must fail, not change answers under it or cut a mapped file
    short (SIGBUS). The folder stays writable: versions are pruned and replaced."""
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    snapshot = write_jsonl(tmp_path / "list.jsonl", [HEADER, *basic_rows()])
    start_and_stop(tmp_path, snapshot, "run")
    [version] = (tmp_path / ".shixin-index").glob("v-*")
    compiled = [p for p in version.iterdir() if p.name != "verified.json"]
    assert {"meta.json", "k_hi.Q", "bloom.bin", "text.bin"} <= {p.name for p in compiled}
    for path in compiled:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o222 == 0, f"{path.name}: {oct(mode)}"
        assert mode & 0o400, f"{path.name}: {oct(mode)}"  # still readable by its owner
    assert stat.S_IMODE(version.stat().st_mode) & 0o200
    # the next start maps it as it was (its recorded identities taken after the chmod)
    assert "checksums of" not in start_and_stop(tmp_path, snapshot, "again")
