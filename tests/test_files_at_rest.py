"""What another local user can change on disk, and what the server makes of it.

A compiled index is checksummed against damage, not against a forger, who can
write its meta.json again too: under ``umask 000`` its folders were created
world-writable, and a user rewriting bloom.bin and meta.json had every listed
person answered ALLOW NOT_LISTED after a restart, health SERVING. Its folders
are now made for this server's user alone, and one another user could have
changed is not mapped. Real servers, real folders; the other user's write is
a chmod (the tests run as root, whom no mode stops).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.server.auth import add_key
from shixin_check.server.hitlog import AuditLog, HitLog, write_error_advice
from tests.accessdata import flight
from tests.conftest import RunningServer, settings_for, start_server
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess, free_port, run_cli
from tests.test_exemption_person import status
from tests.test_failure_paths import header
from tests.test_log_failures import Clock, records
from tests.waiting import eventually


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def serving(folder: Path, index: Path) -> RunningServer:
    server = start_server(settings_for(folder, index_dir=index))
    eventually(lambda: status(server).version != "", "the list loaded")
    return server


def refused_at_start(feed: Path, *flags: str) -> str:
    """``serve --list FEED FLAGS``, which must stop at start (exit 2, no traceback):
    the last line it printed."""
    done = run_cli("serve", "--list", str(feed), *flags, "--listen", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return str(done.stderr.strip().splitlines()[-1])


def mapped(server: RunningServer) -> bool:
    view = server.service.index.current()
    assert view is not None
    return bool(view.info.mapped_from)


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    return folder


def test_a_compiled_index_is_writable_by_this_servers_user_alone_whatever_the_umask(
    tmp_path: Path, feed: Path, no_umask: None
) -> None:
    index = tmp_path / "var" / "index"  # "var" made too: 0777 under mkdir -p
    server = serving(feed, index)
    try:
        assert mapped(server)
    finally:
        server.stop()
    [version] = [p for p in index.iterdir() if p.name.startswith("v-")]
    made = {p.name: oct(mode(p)) for p in (index.parent, index, version) if mode(p) & 0o022}
    assert not made, made
    writable = [f.name for f in version.iterdir() if mode(f) & 0o022]
    assert not writable, writable


@pytest.mark.parametrize("opened", ["index folder", "version folder", "file"])
def test_a_compiled_index_another_user_could_have_changed_is_not_served(
    tmp_path: Path, feed: Path, opened: str, caplog: pytest.LogCaptureFixture
) -> None:
    index = tmp_path / "index"
    first = serving(feed, index)
    first.stop()
    [version] = [p for p in index.iterdir() if p.name.startswith("v-")]
    target = {"index folder": index, "version folder": version,
              "file": version / "bloom.bin"}[opened]  # fmt: skip
    target.chmod(mode(target) | 0o002)  # as one who could then rewrite it and meta.json
    again = serving(feed, index)
    try:
        # the folder not used at all (parsed, served from memory), or the version parsed
        # and compiled anew: never what another user could have written
        assert mapped(again) is (opened != "index folder")
        answer = again.stub().CheckConsumption(flight(ZHANG), timeout=10)
        assert answer.decision == pb.DENY
    finally:
        again.stop()
    said = caplog.text
    assert "writable by everyone (mode" in said, said
    if opened == "index folder":
        assert "another user could change the index compiled there" in said
        assert "unshared, from memory" in said
    else:
        assert "another user could have changed" in said and "compiling" in said


def test_a_redis_password_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    """Masked in every message, it was still in the process list for every local user."""
    port = free_port()  # nothing listens: the command fails, after the warning
    url = f"redis://:S3cret-pw@127.0.0.1:{port}/0"
    said = run_cli("status", "--redis", url)
    assert "warning: the password in --redis is shown to every user" in said.stderr
    assert "S3cret-pw" not in said.stderr + said.stdout
    quiet = run_cli("status", env={**os.environ, "SHIXIN_REDIS": url})
    assert "warning: the password" not in quiet.stderr, quiet.stderr
    plain = run_cli("status", "--redis", f"redis://127.0.0.1:{port}/0")
    assert "warning: the password" not in plain.stderr, plain.stderr


def test_an_api_key_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    """``check --api-key`` put the key in the process list without a word (``load``
    warned of a Redis password there); from the environment nothing is said."""
    target = f"127.0.0.1:{free_port()}"  # nothing listens: each command fails, after it
    for command in ("check", "status", "health"):
        asked = ["--target", target]
        if command == "check":
            asked += ["--channel", "HOTEL", "--id", ZHANG]
        said = run_cli(command, "--api-key", "sk_on_argv", *asked)
        assert (
            f"shixin-check {command}: warning: the key in --api-key is shown to every user of "
            "this machine in the process list"
        ) in said.stderr, said.stderr
        assert "sk_on_argv" not in said.stderr + said.stdout
        quiet = run_cli(command, *asked, env={**os.environ, "SHIXIN_API_KEY": "sk_in_env"})
        assert "warning: the key" not in quiet.stderr, quiet.stderr


def test_a_tls_key_another_user_may_write_is_refused_and_one_all_may_read_warned_of(
    tmp_path: Path, feed: Path
) -> None:
    """The key secret file and the keys file were held as ssh holds a private key; the
    server's TLS private key was used whatever its mode (0666: anyone could put their
    own key and certificate in its place at the next start, or read it and pose as
    this server)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "tls.key", "-out", "tls.pem", "-days", "1", "-subj", "/CN=localhost"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)  # fmt: skip
    key, cert = tmp_path / "tls.key", tmp_path / "tls.pem"
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    for unsafe in (0o666, 0o620):
        key.chmod(unsafe)
        refused = refused_at_start(feed, *tls)
        assert refused.startswith("shixin-check serve: --tls-key / SHIXIN_TLS_KEY"), refused
        assert refused.endswith(
            f": {key} is writable by {'everyone' if unsafe & 2 else 'its group'} "
            f"(mode {unsafe:04o}): another user could change it; chmod 600 {key}"
        ), refused
    key.chmod(0o600)  # another user's: chmod alone cannot fix that (the re-review)
    os.chown(key, OTHER_UID, OTHER_UID)
    refused = refused_at_start(feed, *tls)
    assert refused.endswith(
        f": {key} is owned by another user (uid {OTHER_UID}, this server runs as "
        f"{os.geteuid()}): another user could change it; chown {os.geteuid()} {key} (this "
        f"server's user, or root) and chmod 600 {key}"
    ), refused
    secret = tmp_path / "secret"  # the key secret file's refusal says so too
    secret.write_text("tests-only-secret-0123456789abcdef")
    os.chown(secret, OTHER_UID, OTHER_UID)
    refused = refused_at_start(feed, "--key-secret-file", str(secret))
    assert refused.endswith(f"could change it; chown {os.geteuid()} {secret} (this server's "
                            f"user, or root) and chmod 600 {secret}"), refused  # fmt: skip
    keys = tmp_path / "keys.json"  # and the keys file's
    add_key(keys, "hotel-chain", ["HOTEL"], ["check"])
    os.chown(keys, OTHER_UID, OTHER_UID)
    refused = refused_at_start(feed, "--keys-file", str(keys))
    assert f"could grant any key any channel; chown {os.geteuid()} {keys} (this server's user, " \
        f"or root) and chmod go-w {keys}" in refused, refused  # fmt: skip
    os.chown(key, os.geteuid(), os.getegid())
    key.chmod(0o644)
    server = ServeProcess("--list", str(feed), *tls, log=tmp_path / "out.log")
    try:
        eventually(lambda: "serving on" in server.output(), "the server serving")
        [line] = [x for x in server.output().splitlines() if "readable by every user" in x]
        assert " WARNING " in line and f"{key} is readable by every user (mode 0644)" in line
    finally:
        assert server.stop() == 0, server.output()
    key.chmod(0o640)
    server = ServeProcess("--list", str(feed), *tls, log=tmp_path / "out2.log")
    try:
        eventually(lambda: "serving on" in server.output(), "the server serving")
        assert "readable by every user" not in server.output(), server.output()
    finally:
        assert server.stop() == 0, server.output()


def test_a_key_secret_file_or_keys_file_another_user_may_write_is_refused(
    tmp_path: Path, feed: Path
) -> None:
    """As ssh refuses such a key: a keys file others may write let a local user add a
    key of every channel, hot-reloaded a second later."""
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o666)
    assert refused_at_start(feed, "--key-secret-file", str(secret)) == (
        f"shixin-check serve: the key secret file {secret} is writable by everyone (mode "
        f"0666): another user could change it; chmod 600 {secret}"
    )
    secret.chmod(0o600)
    keys = tmp_path / "keys.json"
    add_key(keys, "hotel-chain", ["HOTEL"], ["check"])
    keys.chmod(0o662)
    last = refused_at_start(feed, "--key-secret-file", str(secret), "--keys-file", str(keys))
    assert "is writable by everyone (mode 0662): another user could grant any key" in last, last


@pytest.mark.parametrize("workers", [1, 2])
def test_a_key_secret_file_every_user_may_read_is_warned_of_and_used(
    tmp_path: Path, feed: Path, workers: int
) -> None:
    """With the secret, a local user who reads the compiled index or a log undoes its
    masked ID numbers: a 0644 file (or one a container mounts so) is said at start, by
    a single server and by the supervisor of workers, and still served from; 0640 is
    not (Kubernetes mounts secrets for the pod's group)."""
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o644)
    server = ServeProcess("--list", str(feed), "--key-secret-file", str(secret),
                          "--workers", str(workers), log=tmp_path / "out.log")  # fmt: skip
    try:
        eventually(lambda: "key secret file" in server.output(), "the warning")
        [line] = [x for x in server.output().splitlines() if "key secret file" in x]
        assert " WARNING " in line, line
        assert (
            f"the key secret file {secret} is readable by every user (mode 0644): with it "
            "anyone who can read the compiled index or a log"
        ) in line, line
        assert f"chmod 600 {secret}" in line, line
        server.wait_serving()
    finally:
        assert server.stop() == 0, server.output()
    secret.chmod(0o640)
    said = run_cli("serve", "--list", str(feed), "--key-secret-file", str(secret), "--workers",
                   "1", "--listen", "127.0.0.1:99999")  # fmt: skip
    assert said.returncode == 2 and "readable by every user" not in said.stderr, said.stderr


def test_load_warns_of_a_key_secret_file_every_user_may_read(tmp_path: Path, feed: Path) -> None:
    """``load --redis`` says it too, before it fails on a Redis that is not there."""
    secret = tmp_path / "key"
    secret.write_text("tests-only-secret-0123456789abcdef")
    secret.chmod(0o604)
    said = run_cli("load", str(feed / "snapshot-0001.jsonl"), "--key-secret-file", str(secret),
                   "--redis", f"redis://127.0.0.1:{free_port()}/0")  # fmt: skip
    assert said.returncode != 0
    assert (
        f"load: warning: the key secret file {secret} is readable by every user (mode 0604)"
    ) in said.stderr, said.stderr


#: Another user (nobody): the tests run as root, who may hand a file or a link to anyone
OTHER_UID = 65534


def test_a_log_folder_the_server_makes_is_for_its_user_alone_whatever_the_umask(
    tmp_path: Path, no_umask: None
) -> None:
    """Its records name people on the list; under ``umask 000`` its folder (and each
    one above it that it made) was world-writable, where anyone could put a file of
    their own in place of the log's."""
    path = tmp_path / "logs" / "audit" / "audit.jsonl"
    log = AuditLog(path)
    log.record("CheckConsumption", "ipv4:127.0.0.1:1", "masked", "OK", time.time())
    log.close()
    made = {p.name: oct(mode(p)) for p in (path.parent, path.parent.parent)}
    assert made == {"audit": "0o750", "logs": "0o750"}, made
    loose = {f.name: oct(mode(f)) for f in path.parent.iterdir() if mode(f) & 0o027}
    assert not loose, loose


@pytest.mark.parametrize(("name", "kind"), [("audit.jsonl", "link"), ("audit.jsonl.lock", "link"),
                                            ("audit.jsonl", "file")])  # fmt: skip
def test_a_file_of_a_log_another_user_made_is_refused_at_start(
    tmp_path: Path, feed: Path, name: str, kind: str
) -> None:
    """Whoever could write the log's folder had the server append records (or take its
    lock) in a file of their choosing, through a link, or in a file of their own that
    they could edit: the server opens neither. Its own user's link is followed."""
    folder = tmp_path / "logs"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("not the server's\n")
    planted = folder / name
    if kind == "link":
        planted.symlink_to(victim)
        os.lchown(planted, OTHER_UID, OTHER_UID)
        said = f"is a symbolic link another user made (uid {OTHER_UID}), which this server never follows"
    else:
        planted.write_text("")
        os.chown(planted, OTHER_UID, OTHER_UID)
        said = f"is owned by another user (uid {OTHER_UID}), who could edit what this server writes in it"
    path = folder / "audit.jsonl"
    assert refused_at_start(feed, "--audit-log", str(path)) == (
        f"shixin-check serve: --audit-log {path}: cannot open it: {planted} {said}; remove "
        f"it, and keep {folder} and the folders above it writable by this server's user alone"
    )
    assert victim.read_text() == "not the server's\n"
    assert planted.is_symlink() or planted.read_text() == ""


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_live_file_replaced_by_another_users_while_serving_is_never_written(
    tmp_path: Path, kind: str
) -> None:
    """The writer finds its live file gone within a second and starts a new one at the
    same path: where another user's link or file stands there now, the record fails
    (the call with it, and health with the log) and nothing is written into it."""
    path = tmp_path / "logs" / "hits.jsonl"
    clock = Clock(time.time())
    log = HitLog(path, clock=clock)
    log.append({"n": 1})
    victim = tmp_path / "victim"
    victim.write_text("")
    path.unlink()
    if kind == "link":
        path.symlink_to(victim)
        os.lchown(path, OTHER_UID, OTHER_UID)
    else:
        path.write_text("")
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o666)
    clock.now += 1.5
    with pytest.raises(OSError) as failed:
        log.append({"n": 2, "who": "a person on the list"})
    assert failed.value.errno == (errno.ELOOP if kind == "link" else errno.EPERM)
    assert write_error_advice(failed.value, path).startswith("remove it, and keep")
    assert victim.read_text() == "" and log.failure is not None
    assert path.is_symlink() or path.read_text() == ""
    path.unlink()
    clock.now += 1.5
    log.append({"n": 3})  # what was planted removed: the log goes on
    log.close()
    assert [r["n"] for r in records(path)] == [3] and victim.read_text() == ""
