"""A check is of one subject: a person or an organisation, never both at once.

``build_request`` with both an ID number and a USCC built an organisation's
check and dropped the person, so a listed person came back ALLOW; the CLI's
``check --id X --uscc Y`` and a ``check --batch`` line with both did the
same. Both are refused now, naming both fields; a real server shows what the
dropped person would have been.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import CheckClient, build_request
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, uscc, write_jsonl
from tests.processes import run_cli

Serve = Callable[..., RunningServer]
#: an organisation on no list
UNLISTED_ORG = uscc("91320102MA0000002")


@pytest.fixture
def server(tmp_path: Path, serve: Serve) -> RunningServer:
    return serve(write_jsonl(tmp_path / "list.jsonl", basic_rows()))


def test_build_request_refuses_a_person_and_an_organisation_together(
    server: RunningServer,
) -> None:
    with CheckClient(server.address) as client:
        assert client.check(build_request("AIRLINE", id_number=ZHANG)).decision == pb.DENY
        assert client.check(build_request("AIRLINE", uscc=UNLISTED_ORG)).decision == pb.ALLOW
        with pytest.raises(ValueError, match=r"^id_number and uscc are both given") as refused:
            client.check(build_request("AIRLINE", id_number=ZHANG, uscc=UNLISTED_ORG))
    assert "one check for each" in str(refused.value)


def test_check_with_both_id_and_uscc_is_one_line_and_exit_2(server: RunningServer) -> None:
    done = run_cli("check", "--target", server.address, "--channel", "AIRLINE",
                   "--id", ZHANG, "--uscc", UNLISTED_ORG)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stdout
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("shixin-check check: --id and --uscc are both given: "), line


def test_check_batch_with_a_line_of_both_is_refused_naming_the_line(
    server: RunningServer, tmp_path: Path
) -> None:
    lines = [{"id": ZHAO}, {"id": ZHANG, "uscc": UNLISTED_ORG}, {"uscc": UNLISTED_ORG}]
    path = tmp_path / "checks.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    done = run_cli("check", "--target", server.address, "--channel", "AIRLINE",
                   "--batch", str(path))  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stdout  # nothing is checked
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"shixin-check check: {path}:line 2: --id and --uscc are both"), line
    # a default --uscc beside lines of people is the same mistake
    people = tmp_path / "people.jsonl"
    people.write_bytes(orjson.dumps({"id": ZHANG}) + b"\n")
    done = run_cli("check", "--target", server.address, "--channel", "AIRLINE",
                   "--uscc", UNLISTED_ORG, "--batch", str(people))  # fmt: skip
    assert done.returncode == 2 and "--id and --uscc are both given" in done.stderr
