"""A compiled index damaged since it was written is compiled again, never served.

And a snapshot changed in place is parsed again, even with its size and mtime
put back. Real files throughout: a synthetic list compiled into a temporary
folder, damaged there as a bad disk or a careless copy would, loaded again as a
restart does; one test through a real ``serve`` process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shixin_check.domain.index import ListedMatch
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader import compiled, versions
from shixin_check.loader.compiled import IndexStore, map_compiled
from shixin_check.loader.index_memory import MemoryIndex, MemoryView
from shixin_check.loader.versions import Loader, build_snapshot
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.test_compiled import listed_keys, synthetic_snapshot
from tests.waiting import eventually


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    """400 synthetic entries (with related persons), as the feed writes them."""
    return synthetic_snapshot(tmp_path)


def answers(view: MemoryView, keys: list[int]) -> list[list[ListedMatch]]:
    return [sorted(view.look_up(key)) for key in keys]


def rewrite_in_place(file: Path, change: Callable[[bytes], bytes]) -> None:
    """Change ``file``'s bytes keeping its size, inode and mtime (as ``cp -p`` would)."""
    before = file.stat()
    raw = file.read_bytes()
    changed = change(raw)
    assert len(changed) == len(raw)
    os.chmod(file, before.st_mode | 0o200)  # compiled files are written read-only
    with open(file, "r+b") as out:
        out.write(changed)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = file.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def flip(raw: bytes) -> bytes:
    return bytes(b ^ 0xFF if i % 7 == 0 else b for i, b in enumerate(raw))


def zero(raw: bytes) -> bytes:
    return bytes(len(raw))


def another_count(raw: bytes) -> bytes:
    """meta.json still JSON, one digit of a count changed."""
    found = re.search(rb'"subject_keys":(\d+)', raw)
    assert found is not None
    at = found.end(1) - 1
    return raw[:at] + str((int(raw[at : at + 1]) + 1) % 10).encode() + raw[at + 1 :]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("k_hi.Q", flip),  # every listed subject ALLOW NOT_LISTED before
        ("e_status.bin", flip),  # checks failing INTERNAL before
        ("m_entry.I", zero),  # another entry's case and court before
        ("bloom.bin", zero),
        ("text.bin", flip),
        ("meta.json", another_count),
    ],
)
def test_a_file_damaged_in_place_is_found_and_compiled_again(
    snapshot: Path,
    keyer: SubjectKeyer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    damage: Callable[[bytes], bytes],
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    folder = Path(first.info.mapped_from)
    rewrite_in_place(folder / name, damage)
    with pytest.raises(Exception, match=re.escape(f"{name} does not match its checksum")):
        map_compiled(folder, keyer.fingerprint)
    with caplog.at_level("WARNING", logger="shixin.loader"):
        again = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())  # a restart
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("unusable" in line and name in line for line in warned), warned
    parsed = build_snapshot(snapshot, keyer)
    keys = listed_keys(snapshot, keyer)
    assert again.info.counts == parsed.info.counts
    assert all(again.might_contain(key) for key in keys)
    assert answers(again, keys) == answers(parsed, keys)
    map_compiled(Path(again.info.mapped_from), keyer.fingerprint)  # whole again


def test_files_are_checked_once_and_again_only_after_a_change(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N workers, or N restarts, do not each read the whole index to check it."""
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    folder = Path(first.info.mapped_from)
    checked: list[str] = []
    crc32 = compiled._crc32

    def counted(fd: int) -> int:
        checked.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        return crc32(fd)

    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("re-parsed a snapshot whose compiled version is whole")

    monkeypatch.setattr(compiled, "_crc32", counted)
    monkeypatch.setattr(versions, "build_snapshot", no_parsing)
    # a file written in the clock tick (a few ms) of its last check is checked again
    time.sleep(0.05)
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    checked.clear()
    for _ in range(3):  # a restart, more workers
        Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert checked == []
    rewrite_in_place(folder / "k_lo.Q", lambda raw: raw)  # written, though to the same bytes
    view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert view.info.mapped_from == str(folder)  # still whole: kept, not compiled again
    assert checked == ["k_lo.Q"]  # that file alone
    time.sleep(0.05)
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    checked.clear()
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert checked == []  # recorded as checked


def feed_with_a_secret(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A list folder of ``basic_rows()`` and the ``serve`` arguments for it, with a
    key secret file (0600), so that what is compiled is kept across starts."""
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o600)
    return feed, ("--list", str(feed), "--key-secret-file", str(secret))


def test_a_restarted_server_rebuilds_a_damaged_index_and_denies_as_before(
    tmp_path: Path,
) -> None:
    feed, serve = feed_with_a_secret(tmp_path)
    first = ServeProcess(*serve, log=tmp_path / "first.log")
    try:
        first.wait_serving()
    finally:
        first.stop()
    (folder,) = (feed / ".shixin-index").glob("v-*")
    rewrite_in_place(folder / "k_hi.Q", flip)
    again = ServeProcess(*serve, log=tmp_path / "again.log")
    try:
        again.wait_serving()
        done = run_cli("check", "--channel", "AIRLINE", "--flight", "CA1", "--id", ZHANG,
                       "--target", again.target)  # fmt: skip
    finally:
        again.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "DENY", done.stdout
    assert "(2024)京0105执1001号" in done.stdout, done.stdout
    logged = again.output()
    assert re.search(r"WARNING compiled index .* unusable .*k_hi\.Q does not match", logged), logged
    assert "mapping its compiled index" not in logged


def same_size_edit(raw: bytes) -> bytes:
    """The feed's correction of one case number: one digit, the same length."""
    found = re.search(rb'"case_number":"[^"]*?(\d)\xe5\x8f\xb7"', raw)  # ...执15603号
    assert found is not None
    at = found.start(1)
    return raw[:at] + str((int(raw[at : at + 1]) + 1) % 10).encode() + raw[at + 1 :]


def case_numbers(view: MemoryView, keys: list[int]) -> set[str]:
    return {match.case_number for key in keys for match in view.look_up(key)}


def test_a_snapshot_edited_in_place_with_its_mtime_put_back_is_parsed_again(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path
) -> None:
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    keys = listed_keys(snapshot, keyer)
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    rewrite_in_place(snapshot, same_size_edit)  # touch -r / cp -p / rsync -t
    again = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert again.info.mapped_from != first.info.mapped_from
    corrected = case_numbers(again, keys) - case_numbers(first, keys)
    assert len(corrected) == 1
    assert answers(again, keys) == answers(build_snapshot(snapshot, keyer), keys)


def test_a_snapshot_renamed_into_place_is_reused_only_while_unchanged(
    snapshot: Path, keyer: SubjectKeyer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented way to drop a file (write ``.part``, rename) and restarts after it."""
    store = IndexStore(tmp_path / "index", keyer.fingerprint)
    keys = listed_keys(snapshot, keyer)
    original = snapshot.read_bytes()
    mtime = snapshot.stat().st_mtime_ns
    first = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    part = snapshot.with_name(snapshot.name + ".part")
    part.write_bytes(same_size_edit(original))
    os.utime(part, ns=(mtime, mtime))  # a copy that kept the feed's mtime
    part.replace(snapshot)
    replaced = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    assert replaced.info.mapped_from != first.info.mapped_from
    assert answers(replaced, keys) == answers(build_snapshot(snapshot, keyer), keys)
    assert answers(replaced, keys) != answers(first, keys)

    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("re-parsed a snapshot that was compiled and has not changed")

    monkeypatch.setattr(versions, "build_snapshot", no_parsing)
    restarted = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())  # nothing changed
    assert restarted.info.mapped_from == replaced.info.mapped_from
    assert answers(restarted, keys) == answers(replaced, keys)


def _deny_zhang(target: str) -> bool:
    done = run_cli("check", "--channel", "AIRLINE", "--flight", "CA1", "--id", ZHANG,
                   "--target", target)  # fmt: skip
    return done.returncode == 0 and done.stdout.split()[0] == "DENY"


def assert_stopped_for_k_hi(folder: Path, logged: str) -> None:
    """The watch's line: ``folder``'s k_hi.Q written in place."""
    assert re.search(
        rf"ERROR compiled index file {re.escape(str(folder))}/k_hi\.Q changed under "
        r"this server since it was mapped \(written in place: its bytes no longer match",
        logged,
    ), logged


def test_a_mapped_file_written_in_place_under_a_running_server_stops_it(tmp_path: Path) -> None:
    """``dd conv=notrunc`` (or ``cp``) over a mapped column while the server runs: it was
    served as changed (a listed person ALLOW NOT_LISTED, health SERVING) until the next
    start. Now the server sees it within seconds, says so, and exits 1 without a
    drain; started again, it compiles the version anew and denies as before. What
    changes no byte (a chmod, a backup's hard link, an access time) stops nothing."""
    feed, serve = feed_with_a_secret(tmp_path)
    first = ServeProcess(*serve, log=tmp_path / "first.log")
    try:
        first.wait_serving()
        assert _deny_zhang(first.target)
        (folder,) = (feed / ".shixin-index").glob("v-*")
        # what changes no byte: a chmod, a hard link (a backup's), an access time
        (folder / "k_hi.Q").chmod(0o400)
        (tmp_path / "backup").mkdir()
        os.link(folder / "bloom.bin", tmp_path / "backup" / "bloom.bin")
        os.utime(folder / "text.bin", ns=(1, (folder / "text.bin").stat().st_mtime_ns))
        time.sleep(2.5)  # two looks of the watch
        assert first.proc.poll() is None, first.output()
        assert _deny_zhang(first.target)
        rewrite_in_place(folder / "k_hi.Q", flip)
        assert first.proc.wait(timeout=15) == 1, first.output()
    finally:
        first.stop()
    logged = first.output()
    assert_stopped_for_k_hi(folder, logged)
    assert (
        "stopping now (no --drain; calls in flight get up to --grace), to be started again "
        "(exit status 1)" in logged
    )
    again = ServeProcess(*serve, log=tmp_path / "again.log")
    try:
        again.wait_serving()
        assert _deny_zhang(again.target)
    finally:
        assert again.stop() == 0
    assert "k_hi.Q does not match its checksum" in again.output()


@pytest.mark.parametrize("how", ["folder moved", "name removed, a link kept"])
def test_a_mapped_file_written_under_another_name_still_stops_the_server(
    tmp_path: Path, how: str
) -> None:
    """The watch looked at each file by its name: with the index folder moved away, or
    the file removed while a backup's hard link to it remained, a write through the
    new name went unseen (a listed person ALLOW NOT_LISTED, health SERVING, until the
    next start). It looks through the descriptor held since the mapping now."""
    feed, serve = feed_with_a_secret(tmp_path)
    server = ServeProcess(*serve, log=tmp_path / "server.log")
    try:
        server.wait_serving()
        assert _deny_zhang(server.target)
        (folder,) = (feed / ".shixin-index").glob("v-*")
        if how == "folder moved":
            (feed / ".shixin-index").rename(tmp_path / "moved")
            written = tmp_path / "moved" / folder.name / "k_hi.Q"
        else:
            written = tmp_path / "backup.Q"
            os.link(folder / "k_hi.Q", written)
            (folder / "k_hi.Q").unlink()
        time.sleep(1.5)  # a look of the watch: nothing changed yet
        assert server.proc.poll() is None, server.output()
        rewrite_in_place(written, flip)
        assert server.proc.wait(timeout=15) == 1, server.output()
    finally:
        server.stop()
    logged = server.output()
    assert_stopped_for_k_hi(folder, logged)


def test_a_worker_whose_mapped_file_is_cut_short_is_started_again(tmp_path: Path) -> None:
    """``serve --workers 2``: a column cut to a page under them (``truncate``); each
    worker that sees it first (or dies of SIGBUS reading past its end) is started
    again by the supervisor, maps the version, finds it cut short, compiles it anew:
    the pool denies as before, SERVING."""
    feed, serve = feed_with_a_secret(tmp_path)
    pool = ServeProcess(*serve, "--workers", "2", log=tmp_path / "pool.log")
    try:
        pool.wait_serving()
        eventually(lambda: "every worker is past its first load" in pool.output(), "both up")
        (folder,) = (feed / ".shixin-index").glob("v-*")
        column = folder / "text.bin"
        column.chmod(0o600)
        size = column.stat().st_size
        os.truncate(column, size // 2)
        eventually(lambda: pool.output().count("changed under this server") >= 2,
                   "both workers saw it")  # fmt: skip
        eventually(lambda: pool.output().count("compiled into") >= 2, "compiled anew")
        pool.wait_serving()
        assert _deny_zhang(pool.target)
    finally:
        assert pool.stop() == 0, pool.output()
    logged = pool.output()
    assert f"bytes, mapped as {size})" in logged, logged
    assert "starting it again" in logged


@pytest.fixture
def whole_seconds_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real ext4 file system with 128-byte inodes, whose timestamps keep
    whole seconds (as ext3, or NFS served from them): loop-mounted, so root only."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount a file system of whole seconds")
    image, mount = tmp_path / "ext4.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as out:
        out.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-I", "128", "-F", str(image)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode != 0:
        pytest.skip("no loop device here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # a failed test holds its maps


def test_a_write_in_the_second_of_a_chmod_is_seen_where_timestamps_keep_whole_seconds(
    snapshot: Path, keyer: SubjectKeyer, whole_seconds_folder: Path
) -> None:
    """A chmod, then a write in place within the same second: where the ctime keeps
    whole seconds, the write left it as the chmod had set it, and the watch, which had
    read the file after the chmod and found it whole, never read it again (a listed
    person ALLOW NOT_LISTED, health SERVING). It waits for the second to be over now."""
    store = IndexStore(whole_seconds_folder / "index", keyer.fingerprint)
    view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())
    folder = Path(view.info.mapped_from)
    checked: dict[str, int] = {}
    assert compiled.changed_under(view.info, checked) == ""  # as mapped
    column = folder / "k_hi.Q"
    assert column.stat().st_ctime_ns % 1_000_000_000 == 0  # whole seconds here
    mapped_in = int(time.time())
    while int(time.time()) == mapped_in or time.time() % 1 > 0.1:  # a later second's start
        time.sleep(0.005)
    second = int(time.time())
    column.chmod(0o600)
    time.sleep(0.5 - time.time() % 1)  # the watch's look comes later in that second
    assert compiled.changed_under(view.info, checked) == ""  # whole: nothing written yet
    rewrite_in_place(column, flip)
    assert int(time.time()) == second, "too slow to write within the second"
    assert "written in place" in compiled.changed_under(view.info, checked)


def test_a_write_in_the_second_of_the_mapping_is_seen_where_timestamps_keep_whole_seconds(
    snapshot: Path, keyer: SubjectKeyer, whole_seconds_folder: Path
) -> None:
    """A file written in place within the second it was mapped kept the ctime and
    mtime the mapping noted: the watch saw nothing to read. Such a file is read once
    at the watch's first look now."""
    store = IndexStore(whole_seconds_folder / "index", keyer.fingerprint)
    while time.time() % 1 > 0.1:  # room for the compile, the mapping and the write
        time.sleep(0.005)
    second = int(time.time())
    Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())  # compiled
    view = Loader(MemoryIndex(), keyer, store).load_snapshot(snapshot, ())  # mapped
    rewrite_in_place(Path(view.info.mapped_from) / "text.bin", flip)
    assert int(time.time()) == second, "too slow to write within the second"
    assert "written in place" in compiled.changed_under(view.info, {})
