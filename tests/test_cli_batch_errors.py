"""``check --batch`` when the server refuses a call, through a real server.

The CLI printed only the status and exited 2: a file of more than one call
(1,000 checks a call) whose later call was refused lost the answers of the
calls before it, decided and hit-logged already, so a rerun logged their hits
twice; a line the server refused was named ``checks[i]`` (0-based, blank
lines skipped, no file) where the CLI's own refusals say ``FILE:line N``;
and a key whose burst is under 1,000 could not check a file of more lines
than that. Now the answers received are printed, the refusal names the file
line and says which lines were answered and which were not, and
``--batch-size`` sets the checks per call.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shixin_check.server.auth import add_key
from tests.conftest import RunningServer, log_records
from tests.listdata import ZHANG, basic_rows, rid, write_jsonl
from tests.processes import CLI, run_cli

Serve = Callable[..., RunningServer]


def unlisted(n: int) -> str:
    """The ``n``-th of 2,000 resident IDs on no list of ``basic_rows``."""
    return rid(f"1101051991{n // 1000 + 1:02d}01{n % 1000:03d}")


def bad_digit(number: str) -> str:
    """``number`` with a wrong check character."""
    return number[:17] + ("0" if number[17] != "0" else "1")


def rail(number: str, name: str = "") -> str:
    line = {"channel": "RAIL", "id": number, "name": name, "train": "G1", "seat": "SECOND_CLASS"}
    return orjson.dumps(line).decode()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """Any channel with no limit; hotels only; two checks per 100 s; and a burst of 2."""
    path = tmp_path / "keys.json"
    return {
        "path": str(path),
        "all": add_key(path, "all", "*", ["check"]),
        "hotel": add_key(path, "hotel-chain", ["HOTEL"], ["check"]),
        "slow": add_key(path, "slow", "*", ["check"], rate_per_second=0.01, burst=2),
        "small": add_key(path, "small-burst", "*", ["check"], rate_per_second=1000, burst=2),
    }


@pytest.fixture
def server(serve: Serve, tmp_path: Path, keys: dict[str, str]) -> RunningServer:
    return serve(
        write_jsonl(tmp_path / "list.jsonl", basic_rows()),
        keys_file=Path(keys["path"]),
        hit_log=tmp_path / "hits.jsonl",
    )


def check_batch(server: RunningServer, key: str, path: Path, *flags: str) -> tuple[int, str, str]:
    # the key from the environment, as the README has it (on the command line it is
    # warned of: in the process list for every local user)
    done = run_cli("check", "--target", server.address, "--batch", str(path), *flags,
                   env={**os.environ, "SHIXIN_API_KEY": key})  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def hits(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "hits.jsonl"
    return [r for r in log_records(path) if "check_id" in r] if path.exists() else []


# --- (3) a later call refused: the answers already decided are printed ----------------------


def test_a_later_call_refused_prints_the_answers_already_decided_and_says_what_was_not(
    server: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    lines = [rail(unlisted(n)) for n in range(1200)]
    lines[2] = rail(ZHANG, "张伟")  # line 3: a listed person, DENY, hit-logged
    lines[1099] = rail(bad_digit(unlisted(1099)))  # line 1100: refused by the server
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")

    code, out, err = check_batch(server, keys["all"], path)

    assert code == 2
    answers = out.splitlines()
    assert len(answers) == 1000  # the first call's answers, one line each, as usual
    assert answers[2].startswith("DENY  RAIL_G_TRAIN  (check ")
    assert all(a.startswith("ALLOW  NOT_LISTED  (check ") for a in answers[:2] + answers[3:])
    [hit] = hits(tmp_path)
    assert answers[2].endswith(f"(check {hit['check_id']})")  # the answer the hit log holds
    assert err.splitlines() == [
        f"INVALID_ARGUMENT: {path}:line 1100: subject.person.id_number: has a bad check digit "
        f"(GB 11643); answered above: lines 1-1000 of {path}; not checked: lines 1001-1200, "
        f"check only those again (tail -n +1001 {path})"
    ]
    # doing what it says checks the rest once, and line 3 is not hit-logged twice
    first = int(re.search(r"tail -n \+(\d+)", err)[1])  # type: ignore[index]
    rest = lines[first - 1 :]
    rest[1099 - (first - 1)] = rail(unlisted(1099))
    again = tmp_path / "rest.jsonl"
    again.write_text("\n".join(rest) + "\n")
    code, out, err = check_batch(server, keys["all"], again)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 200
    assert len(hits(tmp_path)) == 1


def test_a_refused_later_call_counts_the_file_lines_blank_ones_too(
    server: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    """Two checks per 100 s, two a call: the second call (lines 4 and 6) is rate-limited."""
    path = tmp_path / "checks.jsonl"
    path.write_text("\n".join(
        [rail(ZHANG, "张伟"), "", rail(unlisted(1)), rail(unlisted(2)), "", rail(unlisted(3))]
    ) + "\n")  # fmt: skip

    code, out, err = check_batch(server, keys["slow"], path, "--batch-size", "2", "--json")

    assert code == 2
    decided = [orjson.loads(line) for line in out.splitlines()]
    assert [(a["decision"], a["reasons"][0]["code"]) for a in decided] == [
        ("DENY", "RAIL_G_TRAIN"),
        ("ALLOW", "NOT_LISTED"),
    ]
    [line] = err.splitlines()
    assert line.startswith("RESOURCE_EXHAUSTED: "), line
    assert line.endswith(
        f"; answered above: lines 1-3 of {path}; not checked: lines 4-6, check only those again "
        f"(tail -n +4 {path})"
    ), line


# --- (4) a line the server refuses is named FILE:line N --------------------------------------


def test_a_line_the_server_refuses_is_named_by_its_file_line(
    server: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "small.jsonl"
    bad = bad_digit(unlisted(7))
    path.write_text("\n".join([rail(unlisted(0)), "", rail(ZHANG, "张伟"), "", rail(bad)]) + "\n")

    code, out, err = check_batch(server, keys["all"], path)

    assert (code, out) == (2, "")  # one call, refused whole: nothing was checked
    assert err.splitlines() == [
        f"INVALID_ARGUMENT: {path}:line 5: subject.person.id_number: has a bad check digit "
        "(GB 11643)"
    ]
    assert hits(tmp_path) == []


def test_a_line_out_of_the_keys_scope_is_named_by_its_file_line(
    server: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    hotel = orjson.dumps({"channel": "HOTEL", "id": unlisted(0), "star_rating": 4}).decode()
    path = tmp_path / "scope.jsonl"
    path.write_text("\n".join([hotel, "", "", rail(unlisted(1)), hotel]) + "\n")

    code, out, err = check_batch(server, keys["hotel"], path)

    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith(f"PERMISSION_DENIED: {path}:line 4: channel RAIL "), line
    assert "checks[" not in line


# --- (6) --batch-size ------------------------------------------------------------------------


def test_batch_size_lets_a_key_with_a_small_burst_check_a_longer_file(
    server: RunningServer, keys: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "five.jsonl"
    path.write_text("\n".join(rail(unlisted(n)) for n in range(5)) + "\n")

    code, out, err = check_batch(server, keys["small"], path)
    assert (code, out) == (2, "")
    assert err.startswith("FAILED_PRECONDITION: checks: a batch of 5 exceeds the burst of 2"), err

    code, out, err = check_batch(server, keys["small"], path, "--batch-size", "2")
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == ["ALLOW"] * 5

    done = run_cli("check", "--target", server.address, "--batch", str(path),
                   env={**os.environ, "SHIXIN_BATCH_SIZE": "2", "SHIXIN_API_KEY": keys["small"]})  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")  # the variable, as every option has one


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "'0' (from the command line) is not in 1..1000"),
        ("1001", "'1001' (from the command line) is not in 1..1000"),
        ("ten", "'ten' (from the command line) is not an integer"),
        ("", "'' (from the command line) is not an integer"),
    ],
)
def test_a_wrong_batch_size_is_one_line(
    server: RunningServer, keys: dict[str, str], tmp_path: Path, value: str, says: str
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(rail(unlisted(0)) + "\n")
    for given in (["--batch", str(path)], ["--channel", "AIRLINE", "--id", unlisted(0)]):
        done = run_cli("check", "--target", server.address, "--api-key", keys["all"],
                       "--batch-size", value, *given)  # fmt: skip
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.splitlines() == [
            "shixin-check check: --batch-size / SHIXIN_BATCH_SIZE / config batch_size: "
            f"{says}; accepted: an integer in 1..1000"
        ]


def test_standard_input_is_named_as_the_cli_names_it(
    server: RunningServer, keys: dict[str, str]
) -> None:
    lines = [rail(ZHANG, "张伟"), rail(unlisted(1)), "", rail(bad_digit(unlisted(2)))]
    done = subprocess.run(
        [*CLI, "check", "--target", server.address, "--batch", "-", "--batch-size", "2"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
        env={**os.environ, "SHIXIN_API_KEY": keys["all"]},
    )  # fmt: skip
    assert done.returncode == 2
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["DENY", "ALLOW"]
    assert done.stderr.splitlines() == [
        "INVALID_ARGUMENT: -:line 4: subject.person.id_number: has a bad check digit (GB 11643); "
        "answered above: lines 1-2 of standard input; not checked: line 4, check only those "
        "again (tail -n +4)"
    ]
