"""An export's placeholder for an empty date is a bad row, never an expired entry.

Exports write 1900-01-01 (SQL Server), 0001-01-01 (.NET), 1899-12-30 (Excel)
or 1753-01-01 (SQL datetime) where a date is empty. Read as dates, a
``valid_until`` among them loaded the entry as expired and cleared the listed
person (``ALLOW EXPIRED``) on every channel, and ``validate`` said OK. A
``published_on``, ``valid_until`` or exemption date before 2000-01-01 is now
refused naming the field, but for 1970-01-01, which stays "no date"; a
``filed_on``, which nothing reads, is still taken. Each is seen through
``shixin-check validate`` (a child process), a real server following a list
folder, and ``load --redis`` with a real replica: with the C row checker and
without it (``columns._rowcheck = None``, as where no compiler built it),
with the same words.

Also: a ``published_at`` past the hour it may be ahead says by how much in
hours and minutes, never "1.0 h" for 61 minutes.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import CHINA_TZ, day_number
from shixin_check.loader import columns, listfile
from shixin_check.loader.versions import build_snapshot
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, ZHANG, ZHAO, basic_rows, delta, person_entry, rid, write_jsonl
from tests.test_failure_paths import header
from tests.test_feed_order import status
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
#: 2000-01-01, the first day a published_on, valid_until or exemption date may be
FIRST_DAY = day_number(_dt.date(2000, 1, 1))

#: the shixin-check command line, with the C row checker or with rows checked in Python
#: (the child takes the checker away before it runs, as tests/test_loader.py does)
COMMAND = {
    "compiled": [sys.executable, "-m", "shixin_check.cli"],
    "python": [sys.executable, "-c", (
        "import sys; from shixin_check.loader import columns; columns._rowcheck = None; "
        "from shixin_check.cli import main; sys.exit(main(sys.argv[1:]))"
    )],
}  # fmt: skip


def refused(field: str, text: str) -> str:
    """What a row with ``text`` in ``field`` is refused with (README "Snapshot files"):
    an exemption's ``from`` and ``until`` are required, so not left empty either."""
    advice = (
        "the field is required: give the date the court set"
        if field.endswith((".from", ".until"))
        else "leave the field empty or null"
    )
    return (
        f"{field}: {text!r} is before 2000-01-01, before any list existed (an export's "
        f"placeholder for an empty date? {advice})"
    )


@pytest.fixture(params=["compiled", "python"])
def checker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C row checker (loader/_rowcheck.c), or none: rows checked in Python."""
    if request.param == "python":
        monkeypatch.setattr(columns, "_rowcheck", None)
    else:
        assert columns._rowcheck is not None, "loader/_rowcheck.c is not built: scripts/setup"
    return str(request.param)


def cli(
    checker: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND[checker], *args], capture_output=True, text=True, timeout=120,
        env=env or os.environ.copy(),
    )  # fmt: skip


def undated(entry_id: str, number: str, name: str, **dates: str) -> dict[str, Any]:
    """A person's entry with ``dates`` (published_on, valid_until, filed_on) as given."""
    row = person_entry(entry_id, number, name)
    row.update(dates)
    return row


def airline(server: RunningServer, number: str) -> str:
    """The decision and first reason of an AIRLINE check, as ``DENY AIR_TRAVEL``."""
    reply = server.stub().CheckConsumption(build_request("AIRLINE", id_number=number), timeout=5)
    return " ".join([pb.Decision.Name(reply.decision), *[r.code for r in reply.reasons][:1]])


# --- validate: snapshot (JSON Lines, CSV) and delta -----------------------------------------


def test_validate_refuses_each_placeholder_date_naming_its_field(
    tmp_path: Path, checker: str
) -> None:
    """The reviewer's rows: each placeholder in each date field is a bad row, in C and
    Python alike. 1970-01-01 stays no date, and a filed_on placeholder is taken: the
    row after it, with the same text in valid_until, is still refused (a date the
    Python side parsed for filed_on is never one the C checker then takes)."""
    ids = [rid(f"1101051980010130{i}") for i in range(10)]
    rows = [
        undated("S1", ids[0], "丁一", published_on="1900-01-01", valid_until="1900-01-01"),
        undated("S2", ids[1], "丁二", published_on="0001-01-01", valid_until="0001-01-01"),
        undated("S3", ids[2], "丁三", published_on="", valid_until="1900-01-01"),
        undated("S4", ids[3], "丁四", published_on="1970-01-01", valid_until="1899-12-30"),
        undated("S5", ids[4], "丁五", published_on="2024-01-15", valid_until="1753-01-01"),
        undated("S6", ids[5], "丁六", published_on="1999-12-31"),
        undated("S7", ids[6], "丁七", published_on="1970-01-01", valid_until="1970-01-01"),
        undated("S8", ids[7], "丁八", filed_on="1900-01-01"),
        undated("S9", ids[8], "丁九", published_on="", valid_until="1900-01-01"),
        undated("S10", ids[9], "丁十", published_on="2000-01-01", valid_until="2000-01-01"),
    ]
    rows[9]["exemptions"] = [{"channel": "RAIL", "from": "2000-01-01", "until": "2000-01-01"}]
    exempt = person_entry("S11", ZHANG, "张伟")
    exempt["exemptions"] = [{"channel": "RAIL", "from": "1900-01-01", "until": "2099-12-31"}]
    ended = person_entry("S12", LI, "李娜")
    ended["exemptions"] = [{"channel": "RAIL", "from": "2026-01-01", "until": "0001-01-01"}]
    path = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *rows, exempt, ended])

    done = cli(checker, "validate", str(path))

    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    said = [line.split(":", 1)[1] for line in done.stdout.splitlines()[:-1]]
    assert said == [
        f"line 2: {refused('published_on', '1900-01-01')}",
        f"line 3: {refused('published_on', '0001-01-01')}",
        f"line 4: {refused('valid_until', '1900-01-01')}",
        f"line 5: {refused('valid_until', '1899-12-30')}",
        f"line 6: {refused('valid_until', '1753-01-01')}",
        f"line 7: {refused('published_on', '1999-12-31')}",
        f"line 10: {refused('valid_until', '1900-01-01')}",
        f"line 12: {refused('exemptions.0.from', '1900-01-01')}",
        f"line 13: {refused('exemptions.0.until', '0001-01-01')}",
    ]  # lines 8, 9 and 11: 1970-01-01, a filed_on placeholder, 2000-01-01 itself: taken
    summary = done.stdout.splitlines()[-1]
    assert summary.endswith("12 rows, 9 bad row(s): the file would be refused whole")


def test_validate_refuses_a_placeholder_date_in_a_csv_snapshot(
    tmp_path: Path, checker: str
) -> None:
    path = tmp_path / "snapshot-0001.csv"
    names = ["entry_id", "list_type", "subject.type", "subject.name", "subject.id_number",
             "case_number", "court", "published_on", "filed_on", "valid_until"]  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(names)
        out.writerow(["E1", "SHIXIN", "PERSON", "张伟", ZHANG, "(2024)京0105执1号",
                      "北京市朝阳区人民法院", "", "1900-01-01", "1900-01-01"])  # fmt: skip
        out.writerow(["E2", "SHIXIN", "PERSON", "李娜", LI, "(2024)京0105执2号",
                      "北京市朝阳区人民法院", "1970-01-01", "", "1970-01-01"])  # fmt: skip

    done = cli(checker, "validate", str(path))

    assert done.returncode == 1, done.stdout
    assert f"line 2: {refused('valid_until', '1900-01-01')}" in done.stdout
    assert "line 3" not in done.stdout  # 1970-01-01: no date, as before


def test_validate_refuses_a_placeholder_date_in_a_delta_list_and_exempt(tmp_path: Path) -> None:
    """A delta's rows are read by the Python code on every path."""
    path = write_jsonl(tmp_path / "delta-0001.jsonl", [
        delta(1, "LIST", entry=undated("E7", ZHAO, "赵六", published_on="", valid_until="0001-01-01")),
        delta(2, "EXEMPT", entry_id="E1",
              exemption={"channel": "AIRLINE", "from": "1900-01-01", "until": "2099-12-31"}),
        delta(3, "EXEMPT", entry_id="E1",
              exemption={"channel": "AIRLINE", "from": "2026-01-01", "until": "1899-12-30"}),
    ])  # fmt: skip

    done = cli("compiled", "validate", str(path))

    assert done.returncode == 1, done.stdout
    assert [line.split(":", 1)[1] for line in done.stdout.splitlines()[:-1]] == [
        f"line 1: {refused('entry.valid_until', '0001-01-01')}",
        f"line 2: {refused('exemption.from', '1900-01-01')}",
        f"line 3: {refused('exemption.until', '1899-12-30')}",
    ]


def test_a_placeholder_day_is_never_kept_among_the_known_days(
    tmp_path: Path, keyer: SubjectKeyer, checker: str
) -> None:
    """listfile._DAYS holds the days both checkers take without a word: a filed_on
    placeholder, taken, must not land there, or the C checker would then take the
    same text as a valid_until (in a load that read filed_on first)."""
    row = undated("E1", ZHANG, "张伟", filed_on="1753-01-01")
    view = build_snapshot(write_jsonl(tmp_path / "s.jsonl", [row]), keyer)
    assert view.base.entries == 1
    assert "1753-01-01" not in listfile._DAYS


def test_the_c_checker_declines_a_day_before_2000_even_were_it_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """loader/_rowcheck.c holds listfile.EARLIEST_DAY itself: a placeholder that got
    into the known days is still left to parse_entry (which refuses it), and the
    first day taken is the same on both sides."""
    rowcheck = columns.compiled()
    assert rowcheck is not None, "loader/_rowcheck.c is not built: scripts/setup"
    monkeypatch.setitem(listfile._DAYS, "1999-12-31", FIRST_DAY - 1)
    monkeypatch.setitem(listfile._DAYS, "2000-01-01", FIRST_DAY)
    row = person_entry("E1", ZHANG, "张伟", published_on="", valid_until="")
    listfile._date(row, "filed_on")  # among the known days, as a load puts it
    assert rowcheck.plain(row, 1) is not None
    for field in ("published_on", "valid_until"):
        assert rowcheck.plain({**row, field: "1999-12-31"}, 1) is None, field
        assert rowcheck.plain({**row, field: "2000-01-01"}, 1) is not None, field


# --- a real server: the file refused whole, the last good list kept -------------------------


def test_a_server_refuses_a_snapshot_with_a_placeholder_valid_until_and_keeps_its_list(
    tmp_path: Path, serve: Serve, checker: str
) -> None:
    """Loaded, Zhang's row with valid_until 1900-01-01 made him ALLOW EXPIRED."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder)
    assert airline(server, ZHANG) == "DENY AIR_TRAVEL"

    rows = basic_rows()
    rows[0].update(published_on="", valid_until="1900-01-01")
    write_jsonl(folder / "snapshot-0002.jsonl", [header(0, "2026-11-29T09:00:00+08:00"), *rows])
    eventually(lambda: status(server).rejected_source.endswith("snapshot-0002.jsonl"), "refused")

    assert status(server).rejected_problem == f"line 2: {refused('valid_until', '1900-01-01')}"
    assert airline(server, ZHANG) == "DENY AIR_TRAVEL"


@pytest.mark.parametrize("op", ["LIST", "EXEMPT"])
def test_a_server_refuses_a_delta_with_a_placeholder_date(
    tmp_path: Path, serve: Serve, op: str
) -> None:
    """Applied, the LIST made Zhang ALLOW EXPIRED, the EXEMPT ALLOW EXEMPTED."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder)
    if op == "LIST":
        entry = undated("E1", ZHANG, "张伟", published_on="1970-01-01", valid_until="0001-01-01")
        row, problem = delta(1, op, entry=entry), refused("entry.valid_until", "0001-01-01")
    else:
        window = {"channel": "AIRLINE", "from": "1900-01-01", "until": "2099-12-31"}
        row, problem = delta(1, op, entry_id="E1", exemption=window), refused("exemption.from", "1900-01-01")  # fmt: skip
    write_jsonl(folder / "delta-0001.jsonl", [row])
    eventually(lambda: status(server).rejected_source.endswith("delta-0001.jsonl"), "refused")

    assert status(server).rejected_problem == f"line 1: {problem}"
    assert status(server).last_delta_seq == 0
    assert airline(server, ZHANG) == "DENY AIR_TRAVEL"


@pytest.mark.redis
def test_load_redis_refuses_a_placeholder_valid_until_and_the_replica_keeps_its_list(
    redis_server: RedisServer, serve: Serve, tmp_path: Path, checker: str
) -> None:
    env = {**os.environ, "SHIXIN_KEY_SECRET": SECRET.decode()}
    good = write_jsonl(tmp_path / "s1.jsonl", [header(0), *basic_rows()])
    loaded = cli(checker, "load", str(good), "--redis", redis_server.url, env=env)
    assert loaded.returncode == 0, loaded.stderr
    replica = serve(None, redis=redis_server.url, replica_id="r1")
    assert airline(replica, ZHANG) == "DENY AIR_TRAVEL"

    rows = basic_rows()
    rows[0].update(published_on="", valid_until="0001-01-01")
    bad = write_jsonl(tmp_path / "s2.jsonl", [header(0, "2026-11-29T09:00:00+08:00"), *rows])
    done = cli(checker, "load", str(bad), "--redis", redis_server.url, env=env)

    assert done.returncode == 1, done.stderr
    assert f"line 2: {refused('valid_until', '0001-01-01')}" in done.stderr
    assert "Traceback" not in done.stderr
    assert airline(replica, ZHANG) == "DENY AIR_TRAVEL"


# --- published_at ahead: by how much ---------------------------------------------------------


def validated_with(
    tmp_path: Path, at: str
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``validate`` of a snapshot whose header has ``published_at`` ``at``, and of a
    delta whose two rows have it."""
    snapshot = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0, at), *basic_rows()])
    row = {**delta(1, "DELIST", entry_id="E1"), "published_at": at}
    deltas = write_jsonl(tmp_path / "delta-0001.jsonl", [row, {**row, "seq": 2}])
    return cli("compiled", "validate", str(snapshot)), cli("compiled", "validate", str(deltas))


def test_published_at_past_the_hour_ahead_is_loaded_and_said_in_hours_and_minutes(
    tmp_path: Path,
) -> None:
    """A feed time further ahead of this machine's clock than an hour was a bad row: a
    clock behind the feed's refused every new list. Taken now, said once ("1 h 1 min",
    never "1.0 h" for 61 minutes), with its time capped at the hour."""
    at = (_dt.datetime.now(CHINA_TZ) + _dt.timedelta(minutes=61)).isoformat(timespec="seconds")
    said = (f"{at!r} is 1 h 1 min ahead of this machine's clock: this clock is behind (check "
            "NTP) or the feed's time is wrong; the file is loaded, the list's age measured from "
            "1 h ahead")  # fmt: skip
    snapshot, deltas = validated_with(tmp_path, at)
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    assert f"snapshot.published_at: {said}" in snapshot.stderr, snapshot.stderr
    assert deltas.returncode == 0, deltas.stdout + deltas.stderr
    assert deltas.stderr.count(said) == 1, deltas.stderr  # once a minute, not once a row


def test_a_feed_time_ahead_is_capped_from_its_files_time_at_every_reading(
    tmp_path: Path, keyer: SubjectKeyer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A published_at days ahead was capped at an hour past *now* at each reading: a
    restart, or a worker started later, read the same files as fresh again (the list
    never went stale on servers restarted within --max-list-age), and two workers
    disagreed. Capped an hour past the file's own time, every reading agrees."""
    at = (_dt.datetime.now(CHINA_TZ) + _dt.timedelta(days=9)).isoformat(timespec="seconds")
    snapshot = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0, at), *basic_rows()])
    row = {**delta(1, "DELIST", entry_id="E1"), "published_at": at}
    deltas = write_jsonl(tmp_path / "delta-0001.jsonl", [row])
    written = snapshot.stat().st_mtime
    first = build_snapshot(snapshot, keyer).info.source_timestamp
    (op,), _ = listfile.read_delta(deltas)
    assert first == pytest.approx(written + 3600, abs=1)
    assert op.published_at == pytest.approx(deltas.stat().st_mtime + 3600, abs=1)
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3 * 3600)  # read three hours later
    assert build_snapshot(snapshot, keyer).info.source_timestamp == first
    assert listfile.read_delta(deltas)[0][0].published_at == op.published_at
    # a time not ahead is taken as written, whatever the file's mtime (copied with cp -p,
    # unpacked, baked into an image): not read as days stale
    monkeypatch.setattr(time, "time", wall)
    past = _dt.datetime.now(CHINA_TZ) - _dt.timedelta(minutes=10)
    write_jsonl(snapshot, [header(0, past.isoformat()), *basic_rows()])
    write_jsonl(deltas, [{**row, "published_at": past.isoformat()}])
    for path in (snapshot, deltas):
        os.utime(path, (wall() - 3 * 86400, wall() - 3 * 86400))
    assert build_snapshot(snapshot, keyer).info.source_timestamp == past.timestamp()
    assert listfile.read_delta(deltas)[0][0].published_at == past.timestamp()


@pytest.mark.parametrize("first_ahead", [False, True])
def test_a_server_whose_clock_is_behind_the_feed_serves_the_newest_list(
    tmp_path: Path, serve: Serve, first_ahead: bool
) -> None:
    """Its clock hours behind the feed's (a VM resumed, NTP not yet synced), a server
    refused the newest snapshot and served the one before: the people that one lacks
    were ALLOW NOT_LISTED, BEHIND but SERVING, until the file changed again. Both
    snapshots ahead: their order is the feed's times as written, not as capped (capped
    at each reading, the one read later looked newer, and the oldest was served)."""
    folder = tmp_path / "feed"
    folder.mkdir()
    rows = basic_rows()
    now = _dt.datetime.now(CHINA_TZ)
    first = (
        (now + _dt.timedelta(hours=2)).isoformat() if first_ahead else "2026-11-28T09:00:00+08:00"
    )
    write_jsonl(folder / "snapshot-0001.jsonl",
                [header(0, first), *[r for r in rows if r["entry_id"] != "E2"]])  # fmt: skip
    ahead = (now + _dt.timedelta(hours=3)).isoformat()
    write_jsonl(folder / "snapshot-0002.jsonl", [header(0, ahead), *rows])
    server = serve(folder)
    eventually(lambda: status(server).version != "", "a list loaded")
    assert airline(server, LI) == "DENY AIR_TRAVEL"  # E2: in snapshot-0002 only
    shown = status(server)
    assert not shown.behind, shown.rejected_problem
    # the list's age is measured from an hour ahead of this clock, no further
    fed = _dt.datetime.fromisoformat(shown.source_timestamp.replace("Z", "+00:00"))
    assert abs(fed.timestamp() - (time.time() + 3600)) < 60, shown.source_timestamp

    # an older snapshot copied in under a newer name, both times ahead: still refused
    older = (now + _dt.timedelta(hours=2, minutes=30)).isoformat()
    write_jsonl(folder / "snapshot-0003.jsonl",
                [header(0, older), *[r for r in rows if r["entry_id"] != "E2"]])  # fmt: skip
    eventually(lambda: status(server).behind, "the older copy refused")
    assert "snapshot-0003.jsonl" in status(server).rejected_source
    assert airline(server, LI) == "DENY AIR_TRAVEL"


@pytest.mark.parametrize(
    "at",
    [
        "2026-W48-1T08:00:00+08:00",  # a week date: Python reads it as 23 November
        "20261128T090000+0800",  # the basic form
        "2026-11-28T09:00:00,5+08:00",  # a comma fraction
        "2026-11-28T09+08:00",  # no minutes
        "2026-11-28T25:00:00+08:00",  # no such hour
    ],
)
def test_published_at_is_one_form_of_time_as_a_list_date_is(tmp_path: Path, at: str) -> None:
    """Only RFC 3339's calendar date and time with an offset (seconds optional), as
    list dates are only YYYY-MM-DD or YYYYMMDD."""
    said = f"{at!r} is not a valid time of the form 2026-11-28T09:00:00+08:00 (RFC 3339)"
    snapshot, deltas = validated_with(tmp_path, at)
    assert snapshot.returncode == 1, snapshot.stdout
    assert f"line 1: snapshot.published_at: {said}" in snapshot.stdout, snapshot.stdout
    assert deltas.returncode == 1, deltas.stdout
    assert f"line 1: published_at: {said}" in deltas.stdout, deltas.stdout


def test_published_at_in_every_form_a_feed_writes_is_read(tmp_path: Path) -> None:
    for at in ["2026-11-28T09:00:00+08:00", "2026-11-28 01:00:00Z", "2026-11-28T01:00Z",
               "2026-11-28T09:00:00.250+08:00", "2026-11-28t01:00:00z"]:  # fmt: skip
        snapshot = write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0, at), *basic_rows()])
        done = cli("compiled", "validate", str(snapshot))
        assert done.returncode == 0, (at, done.stdout)
