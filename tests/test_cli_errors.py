"""The shell tools never print a traceback for a user's mistake (issue 10, point 7).

Every subcommand is run as an operator would: a real child process, with
Redis down (a free port nobody listens on), bad arguments, and its standard
output closed by the reader. Each answers with one line on standard error and
a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.names import UnknownName, enum_name
from tests.listdata import LI, ZHANG, basic_rows, delta, person_entry, write_jsonl
from tests.processes import CLI, free_port, run_cli

SECRET_ENV = {"SHIXIN_KEY_SECRET": "tests-only-secret-0123456789abcdef"}


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip(), "a refusal says why"


@pytest.fixture
def dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_redis_commands_with_redis_down(tmp_path: Path, dead_redis: str) -> None:
    env = {**os.environ, **SECRET_ENV}
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    path = write_jsonl(tmp_path / "s.jsonl", [header, *basic_rows()])
    for args in (
        ("load", str(path), "--redis", dead_redis),
        ("status", "--redis", dead_redis),
        (
            "feedback",
            "--quarter",
            "2026Q3",
            "--redis",
            dead_redis,
            "--format",
            "json",
            "--out",
            str(tmp_path / "r.json"),
        ),  # fmt: skip
    ):
        done = run_cli(*args, env=env)
        no_traceback(done)
        assert "Redis" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("gen-data", "--count", "many", "--out", "OUT"),
        ("gen-data", "--count", "5", "--out", "OUT", "--as-of", "2026-13-01"),
        ("gen-data", "--count", "5", "--out", "/dev/null/x.jsonl"),  # a folder that cannot be
        ("gen-data", "--count", "-3", "--out", "OUT"),
        ("gen-data", "--count", "5", "--out", "OUT", "--as-of", "0001-01-01"),
        ("gen-data", "--count", "5", "--out", "OUT", "--as-of", "9999-12-31"),
        ("gen-data", "--count", "5", "--out", "/"),  # not a file: never replaced
        ("feedback", "--quarter", "0000Q1", "--hit-log", "OUT"),
        ("feedback", "--quarter", "9999Q4", "--hit-log", "OUT"),
        ("check", "--channel", "RAILS", "--id", ZHANG),
        ("check", "--channel", "RAIL", "--id", ZHANG, "--seat", "SLEEPER"),
        ("check", "--channel", "HOTEL", "--id", ZHANG, "--seat", "SOFT_SLEEPER"),
        ("check", "--channel", "AIRLINE", "--id", ZHANG, "--id-type", "ID_CARD"),
        ("check", "--id", ZHANG),
        ("check", "--channel", "HOTEL", "--id", ZHANG, "--star-rating", "99999999999"),
        ("check", "--channel", "RAIL", "--id", ZHANG, "--amount-fen", "1" + "0" * 20),
        ("validate", "/nonexistent-file.jsonl"),
        ("audit", "verify", "/nonexistent-file.jsonl"),
        ("keys", "list", "--keys-file", "/nonexistent-file.json"),
        ("serve", "--list", "/nonexistent-dir"),
        ("serve", "--demo", "--listen", "nowhere"),
        ("serve", "--demo", "--index-dir", "OUT-FILE"),  # a file, not a directory
    ],
)
def test_bad_arguments_get_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = str(tmp_path / "out.jsonl")
    (tmp_path / "a-file").write_text("x")
    named = {"OUT": out, "OUT-FILE": str(tmp_path / "a-file")}
    done = run_cli(*(named.get(a, a) for a in args))
    no_traceback(done)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_check_with_the_server_down_says_so(tmp_path: Path) -> None:
    done = run_cli("check", "--channel", "AIRLINE", "--id", ZHANG,
                   "--target", f"127.0.0.1:{free_port()}")  # fmt: skip
    no_traceback(done)
    assert "UNAVAILABLE" in done.stderr


def test_output_closed_by_the_reader(tmp_path: Path) -> None:
    rows = [{"entry_id": f"E{i}", "list_type": "BAD"} for i in range(5000)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)  # thousands of lines of report
    proc = subprocess.Popen([*CLI, "validate", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as ``| head -1`` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) != 0
    assert "Traceback" not in stderr
    assert "output closed" in stderr


def test_enum_names_are_exact_with_or_without_prefix() -> None:
    seat = pb.RailSeat.DESCRIPTOR
    assert enum_name(seat, "SOFT_SLEEPER", "--seat") == "RAIL_SEAT_SOFT_SLEEPER"
    assert enum_name(seat, "soft_sleeper", "--seat") == "RAIL_SEAT_SOFT_SLEEPER"
    assert enum_name(seat, "RAIL_SEAT_DELUXE_SOFT_SLEEPER", "--seat") == (
        "RAIL_SEAT_DELUXE_SOFT_SLEEPER"
    )
    assert enum_name(pb.TravelService.DESCRIPTOR, "domestic", "--service") == "TRAVEL_DOMESTIC"
    assert enum_name(pb.Channel.DESCRIPTOR, "real_estate", "--channel") == "REAL_ESTATE"
    with pytest.raises(UnknownName, match="SOFT_SLEEPER, HARD_SLEEPER"):
        enum_name(seat, "SLEEPER", "--seat")


# --- validate -------------------------------------------------------------------------------


def test_validate_reports_duplicates_even_beside_other_bad_rows(tmp_path: Path) -> None:
    rows = basic_rows()
    rows.append({**rows[0], "list_type": "NOPE"})  # bad, and E1 again
    rows.append(person_entry("E2", LI, "李娜"))  # good, but E2 again
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    done = run_cli("validate", str(path))
    assert done.returncode == 1
    assert f"{path}:line 4: list_type" in done.stdout
    assert f"{path}:line 4: entry_id: 'E1' repeats line 1" in done.stdout
    assert f"{path}:line 5: entry_id: 'E2' repeats line 2" in done.stdout


def test_validate_a_delta_against_a_snapshot(tmp_path: Path) -> None:
    snapshot = write_jsonl(tmp_path / "s.jsonl", basic_rows())
    good = write_jsonl(tmp_path / "d1.jsonl", [delta(1, "DELIST", entry_id="E1")])
    bad = write_jsonl(tmp_path / "d2.jsonl", [delta(1, "SUSPEND", entry_id="E-none"),
                                              delta(2, "DELIST", entry_id="E2")])  # fmt: skip
    assert run_cli("validate", str(good), "--against", str(snapshot)).returncode == 0
    alone = run_cli("validate", str(bad))
    assert alone.returncode == 0  # well-formed on its own
    done = run_cli("validate", str(bad), "--against", str(snapshot))
    assert done.returncode == 1
    assert f"{bad}:line 1: entry_id: no listed entry 'E-none'" in done.stdout
    refused = run_cli("validate", str(snapshot), "--against", str(snapshot))
    no_traceback(refused)


def test_a_build_keying_otherwise_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A compiled row checker that no longer matches the Python beside it (keys.py
    changed, the extension not rebuilt) refuses to load, and says how to mend it."""
    path = write_jsonl(tmp_path / "s.jsonl", basic_rows())
    stale = (
        "import sys; from shixin_check.loader import columns; "
        "columns.SUBJECT_PERSON = b'shixin-other'; from shixin_check.cli import main; "
        f"sys.exit(main(['validate', {str(path)!r}]))"
    )
    done = subprocess.run(
        [CLI[0], "-c", stale], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    no_traceback(done)
    assert done.returncode == 2
    assert done.stderr.startswith("shixin-check validate: loader/_rowcheck.c keys")
    assert "run scripts/setup" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("length", [15, 65, 88])
def test_a_key_secret_of_the_wrong_length_is_one_line(tmp_path: Path, length: int) -> None:
    """BLAKE2b keys are 16 to 64 bytes: a 64-byte secret base64-encoded (88 characters)
    was a traceback from hashlib; now ``load`` and ``serve`` both refuse it in one line."""
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    path = write_jsonl(tmp_path / "s.jsonl", [header, *basic_rows()])
    secret = tmp_path / "key"
    secret.write_text("k" * length + "\n")
    for args in (
        ("load", str(path), "--redis", f"redis://127.0.0.1:{free_port()}/0"),
        ("serve", "--list", str(path), "--listen", f"127.0.0.1:{free_port()}"),
    ):
        done = run_cli(*args, "--key-secret-file", str(secret))
        no_traceback(done)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"is {length} bytes; 16 to 64 needed" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        # bytes that are not UTF-8 in a CSV list: a traceback from the text reader before
        ("bad.csv", b"entry_id,list_type\n\xff\xfe,SHIXIN\n",
         "line 2: is not UTF-8 text (byte 0xff at column 1)"),
        # a numbered column far out: the reader grew a list to it (20 GB before the kernel
        # killed it)
        ("far.csv", b"related_persons.99999999999,x\nA,B\n",
         "line 2: related_persons.99999999999: numbered from 0 to 99"),
        ("sup.csv", "related_persons.\u00b3,x\nA,B\n".encode(),
         "line 2: related_persons.\u00b3: numbered from 0 to 99"),
        # "3" in superscript is a digit to str.isdigit() and not to int()
        ("sup.jsonl", '{"seq":"\u00b3","op":"SUSPEND","entry_id":"E1"}\n'.encode(),
         "line 1: seq: must be a positive integer, at most 9223372036854775807"),
        # beyond int64: validated once, then every status call failed INTERNAL
        ("big.jsonl", b'{"seq":9223372036854775808,"op":"SUSPEND","entry_id":"E1"}\n',
         "line 1: seq: must be a positive integer, at most 9223372036854775807"),
        ("head.jsonl", b'{"snapshot":{"includes_seq":9223372036854775808}}\n',
         "line 1: snapshot.includes_seq: must be an integer from 0 to 9223372036854775807"),
    ],
)  # fmt: skip
def test_list_files_the_reader_could_not_take_are_bad_rows(
    tmp_path: Path, name: str, content: bytes, said: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    done = run_cli("validate", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done
    assert f"{path}:{said}" in done.stdout, done.stdout


def test_arguments_and_variables_that_are_not_utf8_get_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates, which failed wherever
    they were encoded (a health check's service name, a key's principal, the secret)."""
    bad = os.fsdecode(b"\xff")
    done = run_cli("health", "--service", bad)
    no_traceback(done)
    assert done.stderr.strip() == "shixin-check: argument 3 (b'\\xff') is not UTF-8 text"
    env = {**os.environ, "SHIXIN_KEY_SECRET": os.fsdecode(b"\xff\xfe0123456789abcdef")}
    done = run_cli("load", str(tmp_path / "s.jsonl"), "--redis", "redis://127.0.0.1:1", env=env)
    no_traceback(done)
    assert done.stderr.strip() == "shixin-check: SHIXIN_KEY_SECRET is not UTF-8 text"


def test_an_integer_beyond_its_field_names_the_flag() -> None:
    done = run_cli("check", "--channel", "HOTEL", "--id", ZHANG, "--star-rating", "99999999999")
    assert done.returncode == 2
    assert done.stderr.strip().endswith("--star-rating: 99999999999 is beyond a 32-bit integer")


def test_serve_refuses_a_list_that_is_neither_file_nor_directory(tmp_path: Path) -> None:
    """A FIFO given as --list blocked the start in open(), and SIGTERM did not end it."""
    fifo = tmp_path / "list.jsonl"
    os.mkfifo(fifo)
    done = run_cli("serve", "--list", str(fifo), "--listen", f"127.0.0.1:{free_port()}")
    no_traceback(done)
    assert done.stderr.strip().endswith(f"{fifo} is not a file or a directory"), done.stderr


def test_a_redis_url_whose_database_is_not_a_number_is_refused() -> None:
    """redis-py read redis://HOST:PORT/abc as database 0: a typo wrote to another list."""
    done = run_cli("status", "--redis", f"redis://127.0.0.1:{free_port()}/abc")
    no_traceback(done)
    assert "the database 'abc' is not a number" in done.stderr, done.stderr


def test_a_related_person_that_is_not_an_object_is_named_so(tmp_path: Path) -> None:
    """[null] was reported as "related_persons.0.role: is required"."""
    from tests.listdata import ACME_USCC, org_entry

    row = org_entry("E3", ACME_USCC, "北京艾克米科技有限公司", [])
    row["related_persons"] = [None]
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    done = run_cli("validate", str(path))
    assert f"{path}:line 1: related_persons.0: must be an object" in done.stdout, done.stdout


def test_logs_in_the_watched_list_folder_or_one_file_for_both_are_refused_at_start(
    tmp_path: Path,
) -> None:
    """A log written into the list folder was taken for a list file on every change
    (an ERROR each time); one file for both logs interleaves two kinds of record."""
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())
    inside = run_cli("serve", "--list", str(feed), "--listen", f"127.0.0.1:{free_port()}",
                     "--hit-log", str(feed / "hits.jsonl"))  # fmt: skip
    assert inside.returncode == 2
    [line] = inside.stderr.strip().splitlines()
    assert "--hit-log" in line and "is in the list folder" in line
    both = tmp_path / "logs" / "log.jsonl"
    same = run_cli("serve", "--list", str(feed), "--listen", f"127.0.0.1:{free_port()}",
                   "--hit-log", str(both), "--audit-log", str(both))  # fmt: skip
    assert same.returncode == 2
    [line] = same.stderr.strip().splitlines()
    assert "--hit-log" in line and "--audit-log" in line and "name the same file" in line
