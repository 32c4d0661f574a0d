"""The console script as an operator uses it: real processes, real signals."""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.clients.check_client import build_request
from tests.conftest import SECRET, RedisServer
from tests.listdata import ZHANG, ZHAO, basic_rows, delta, person_entry, write_jsonl
from tests.processes import ServeProcess, run_cli


@pytest.fixture
def demo() -> Iterator[ServeProcess]:
    server = ServeProcess("--demo", "--demo-count", "500")
    try:
        yield server
    finally:
        server.stop()


def test_demo_prints_identities_that_check_as_listed(demo: ServeProcess) -> None:
    demo.read_until(r"^serving on")
    demo.read_until(r"try \(in another shell\)")
    commands = [demo.read_until(r"shixin-check check") for _ in range(4)]
    demo.wait_serving()
    outputs = []
    for line in commands:
        argv = shlex.split(line.split("#")[0])[1:]  # drop "shixin-check"
        done = run_cli(*argv, "--target", demo.target)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split()[0])
    # debtor on a G train, suspended flyer, legal representative at a hotel, nobody
    assert outputs == ["DENY", "ALLOW", "DENY", "ALLOW"]
    status = run_cli("status", "--target", demo.target)
    assert "500 entries" in status.stdout


def test_sigterm_drains_in_flight_calls_then_exits(tmp_path: Path) -> None:
    server = ServeProcess("--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
                          "--grace", "5")  # fmt: skip
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.ConsumptionCheckStub(channel)
        sent: list[pb.CheckRequest] = []
        gate = __import__("queue").Queue()

        def requests() -> Iterator[pb.CheckRequest]:
            while True:
                item = gate.get()
                if item is None:
                    return
                sent.append(item)
                yield item

        answers = stub.CheckConsumptionStream(requests())
        gate.put(build_request("AIRLINE", id_number=ZHANG, request_id="before"))
        assert next(answers).request_id == "before"
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # draining now: the open stream must still be answered
        gate.put(build_request("AIRLINE", id_number=ZHANG, request_id="during"))
        during = next(answers)
        assert (during.request_id, during.decision) == ("during", pb.DENY)
        gate.put(None)
        assert list(answers) == []
        assert server.proc.wait(timeout=15) == 0
        channel.close()
    finally:
        server.stop()


def test_validate_reports_rows_and_exits_nonzero(tmp_path: Path) -> None:
    rows = [*basic_rows(), person_entry("E9", "110105", "短号")]
    done = run_cli("validate", str(write_jsonl(tmp_path / "l.jsonl", rows)))
    assert done.returncode == 1
    assert re.search(r"l\.jsonl:line 4: subject\.id_number: .*", done.stdout)
    assert "refused whole" in done.stdout
    good = run_cli("validate", str(write_jsonl(tmp_path / "g.jsonl", basic_rows())))
    assert good.returncode == 0 and "3 rows, OK" in good.stdout


def test_gen_data_is_deterministic_and_valid(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        done = run_cli("gen-data", "--count", "300", "--out", str(out), "--seed", "7",
                       "--as-of", "2026-11-24")  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_bytes().splitlines()) == 1 + 300  # the header, then the rows
    assert run_cli("validate", str(a)).returncode == 0


def test_gen_data_makes_the_folder_of_its_out_file(tmp_path: Path) -> None:
    """As feedback's --out: a missing folder is made (it failed naming its .part file)."""
    out = tmp_path / "new" / "folder" / "list.jsonl"
    done = run_cli("gen-data", "--count", "5", "--out", str(out), "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert len(out.read_bytes().splitlines()) == 1 + 5


def test_flags_read_their_environment_variables(tmp_path: Path) -> None:
    out = tmp_path / "env.jsonl"
    env = {**os.environ, "SHIXIN_COUNT": "25", "SHIXIN_OUT": str(out), "SHIXIN_SEED": "3"}
    assert run_cli("gen-data", env=env).returncode == 0
    assert len(out.read_bytes().splitlines()) == 1 + 25


@pytest.mark.redis
def test_allow_rollback_is_a_flag_only_never_from_the_environment_or_a_config_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A rollback undoes applied deltas (a listed person becomes ALLOW again), so only
    ``--allow-rollback`` on the command line allows one: ``SHIXIN_ALLOW_ROLLBACK`` left
    in an environment, or ``allow_rollback`` in a shared config file, never does."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    env = {**base, "SHIXIN_KEY_SECRET": SECRET.decode(), "SHIXIN_REDIS": redis_server.url}
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    older = write_jsonl(tmp_path / "s0.jsonl", [header, *basic_rows()])
    listing = delta(1, "LIST", entry=person_entry("E8", ZHAO, "赵六"))
    for path in (older, write_jsonl(tmp_path / "d1.jsonl", [listing])):
        done = run_cli("load", str(path), env=env)
        assert done.returncode == 0, done.stderr

    from_env = run_cli("load", str(older), env={**env, "SHIXIN_ALLOW_ROLLBACK": "1"})
    assert from_env.returncode == 1 and "--allow-rollback" in from_env.stderr, from_env.stderr
    config = tmp_path / "shixin.toml"
    config.write_text("allow_rollback = true\n")
    from_file = run_cli("load", str(older), "--config", str(config), env=env)
    assert from_file.returncode != 0 and "Traceback" not in from_file.stderr, from_file.stderr
    flagged = run_cli("load", str(older), "--allow-rollback", env=env)
    assert flagged.returncode == 0, flagged.stderr  # rolled back on purpose, and said so
    assert "load: rolled back (--allow-rollback): delta 1 is undone" in flagged.stderr


def test_bad_setting_is_refused_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "SHIXIN_HOTEL_MIN_STAR": "seven"}
    done = run_cli("serve", "--list", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())), env=env)
    assert done.returncode == 2
    assert "SHIXIN_HOTEL_MIN_STAR" in done.stderr


def test_the_demo_removes_its_list_folder_when_it_stops(tmp_path: Path) -> None:
    """A demo writes its synthetic list (and the index compiled beside it) into a
    temporary folder of its own: gone once the server stops, run after run."""
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(env_tmp)
    try:
        server = ServeProcess("--demo", "--demo-count", "200")
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    try:
        line = server.read_until(r"^demo list: ")
        folder = Path(line.rsplit(" in ", 1)[1].strip()).parent
        assert folder.parent == env_tmp and folder.is_dir()
        server.wait_serving()
    finally:
        assert server.stop() == 0
    assert not folder.exists()


def test_a_list_file_refused_at_start_says_a_restart_is_needed(tmp_path: Path) -> None:
    """A single file is read at start only: the line said "until a good list arrives",
    and an operator who fixed the file waited for good."""
    bad = person_entry("E1", ZHANG, "张伟")
    bad["relatedPersons"] = []
    listed = write_jsonl(tmp_path / "l.jsonl", [bad])
    server = ServeProcess("--list", str(listed))
    try:
        line = server.read_until(r"list rejected")
        assert f"{listed} is read at start only: fix it, then restart the server" in line
    finally:
        server.stop()
