"""A followed list folder never serves a list the feed did not mean (issue: feed integrity).

Real pieces throughout: list files in a real folder, real servers on 127.0.0.1
(the ``serve`` fixture), the ``validate``, ``gen-data``, ``check`` and ``status``
commands as child processes, and the real ``DirectoryFollower`` polled by hand
(``Feed``) where the order of events within a poll matters.

- A row published after today (China time) is a bad row, snapshot and delta
  alike: it would read the list as fresh and restrict before the court did. A
  ``valid_until`` of 1970-01-01 is a date (before ``published_on``: a bad row),
  never "no end".
- A snapshot whose header counts its entries and holds another number of
  rows (a copy cut off at a line's end) is refused naming both counts.
- A snapshot newer by name but published before the served one is refused.
- A delta file rewritten in place with another op under an applied seq is
  refused, naming the seq and the file; an identical re-read stays harmless.
- A refused delta is said only once the poll's other deltas are in.
- A dangling link, an emptied folder and a removed folder are each said once,
  and leave the list behind (the last good list serving) until they clear.
- An organisation's USCC listed under a person's document type is found by a
  check by USCC.
- A byte that is not UTF-8 is reported as such, with its line.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from shixin_check.domain.identity import IdType
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.domain.model import CHINA_TZ, NO_END
from shixin_check.loader.versions import build_snapshot
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, delta, person_entry, rid, uscc, write_jsonl
from tests.processes import run_cli
from tests.test_failure_paths import ONE_ROW_CSV, decision, header, health
from tests.test_feed_order import LIST_CURRENT, Feed, status
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
X = rid("23010219700303005")  # listed by a delta, or only in the newer list
Y = rid("23010219700404006")
FUTURE = "2099-01-01"


def china_today() -> _dt.date:
    return _dt.datetime.now(CHINA_TZ).date()


# --- 1. published_on after today; valid_until 1970-01-01 ------------------------------------


def test_a_row_published_after_today_is_refused_in_a_snapshot_and_a_delta(
    tmp_path: Path, serve: Serve
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder)
    before = status(server)

    # a delta listing X with a published_on years ahead: refused, X not restricted early,
    # the list's source time not moved to then (its age would read 0: never stale)
    ahead = (china_today() + _dt.timedelta(days=3)).isoformat()
    write_jsonl(folder / "delta-0001.jsonl", [
        delta(1, "LIST", entry=person_entry("E-X", X, "牛犇", published_on=FUTURE)),
    ])  # fmt: skip
    eventually(lambda: status(server).behind, "the delta refused")
    shown = status(server)
    assert shown.rejected_source.endswith("delta-0001.jsonl")
    assert shown.rejected_problem.startswith(
        f"line 1: entry.published_on: '{FUTURE}' is after today"
    )
    assert (shown.last_delta_seq, shown.source_timestamp) == (0, before.source_timestamp)
    assert decision(server.stub(), X) == "ALLOW"  # not listed: nothing applied
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "behind")

    # a snapshot row published days ahead (the C row checker's path too): validate says so
    snapshot = tmp_path / "snapshot-0002.jsonl"
    rows = [*basic_rows(), person_entry("E-Y", Y, "羊羊", published_on=ahead)]
    write_jsonl(snapshot, [header(0), *rows])
    done = run_cli("validate", str(snapshot))
    assert done.returncode == 1, done.stdout
    assert f"line 5: published_on: '{ahead}' is after today" in done.stdout
    assert "China time" in done.stdout
    shutil.copy(snapshot, folder / "snapshot-0002.jsonl")
    eventually(
        lambda: status(server).rejected_source.endswith("snapshot-0002.jsonl"), "snapshot refused"
    )
    assert decision(server.stub(), Y) == "ALLOW" and decision(server.stub(), ZHANG) == "DENY"


def test_a_row_published_tomorrow_loads_but_never_makes_the_list_newer_than_now(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """A feed stamped just after midnight, read on a host whose clock is behind, is no
    error (a refused file is not tried again when the date catches up); the list's
    time is never taken past now, so it cannot read as fresh later than it is."""
    tomorrow = (china_today() + _dt.timedelta(days=1)).isoformat()
    rows = [*basic_rows(), person_entry("E-Y", Y, "羊羊", published_on=tomorrow)]
    path = write_jsonl(tmp_path / "snapshot.jsonl", rows)  # no header: the rows' time
    assert run_cli("validate", str(path)).returncode == 0
    before = time.time()
    view = build_snapshot(path, keyer)
    assert before <= view.info.source_timestamp <= time.time()
    assert view.look_up(keyer.subject_key(IdType.RESIDENT_ID, Y))  # listed: restricted


def test_valid_until_1970_01_01_is_no_end_never_expired(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    """Exports write 1970-01-01 for an empty date: read as expired, it would clear a
    listed person (ALLOW EXPIRED); it is no end, as a date left out is, in C and Python."""
    epoch = person_entry("E1", ZHANG, "张伟", valid_until="1970-01-01")
    undated = {**epoch, "published_on": None}
    for row in (epoch, undated):
        path = write_jsonl(tmp_path / "s.jsonl", [header(0), row])
        assert run_cli("validate", str(path)).returncode == 0
        (match,) = build_snapshot(path, keyer).look_up(keyer.subject_key(IdType.RESIDENT_ID, ZHANG))
        assert match.valid_until == NO_END


# --- 2. a snapshot cut off at a line's end ---------------------------------------------------


def test_a_snapshot_cut_off_at_a_line_boundary_is_refused_naming_both_counts(
    tmp_path: Path, serve: Serve
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    whole = folder / "snapshot-0001.jsonl"
    made = run_cli("gen-data", "--count", "20", "--seed", "3", "--out", str(whole),
                   "--as-of", "2026-11-01")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert b'"entries":20' in whole.read_bytes().split(b"\n", 1)[0]
    server = serve(folder)
    assert status(server).entries_total == 20

    cut = tmp_path / "snapshot-0002.jsonl"  # head -n 11: the header and 10 rows
    cut.write_bytes(b"".join(whole.read_bytes().splitlines(keepends=True)[:11]))
    done = run_cli("validate", str(cut))
    assert done.returncode == 1, done.stdout
    assert "line 1: snapshot.entries: the header says 20 entries but the file holds 10" in (
        done.stdout
    )
    shutil.copy(cut, folder / "snapshot-0002.jsonl")
    eventually(lambda: status(server).behind, "the cut copy refused")
    shown = status(server)
    assert shown.rejected_source.endswith("snapshot-0002.jsonl")
    assert "says 20 entries but the file holds 10" in shown.rejected_problem
    assert shown.entries_total == 20 and shown.source.endswith("snapshot-0001.jsonl")


# --- 3. a snapshot newer by name but published earlier ---------------------------------------


def serving_x_published(tmp_path: Path, serve: Serve) -> tuple[Path, RunningServer]:
    """A server on a folder whose snapshot-0001 (published 2026-11-28) lists X."""
    folder = tmp_path / "list"
    folder.mkdir()
    newer = [*basic_rows(), person_entry("E-X", X, "牛犇")]
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0, "2026-11-28T09:00:00+08:00"), *newer])
    server = serve(folder)
    assert decision(server.stub(), X) == "DENY"
    return folder, server


def test_a_snapshot_published_before_the_served_one_is_refused(
    tmp_path: Path, serve: Serve
) -> None:
    folder, server = serving_x_published(tmp_path, serve)

    # an old export copied in under a newer name: it lacks X
    write_jsonl(
        folder / "snapshot-0002.jsonl", [header(0, "2026-11-20T09:00:00+08:00"), *basic_rows()]
    )
    eventually(lambda: status(server).behind, "the older list refused")
    shown = status(server)
    assert shown.rejected_source.endswith("snapshot-0002.jsonl")
    assert "2026-11-20T09:00:00+08:00 is older than 2026-11-28T09:00:00+08:00" in (
        shown.rejected_problem
    )
    assert "snapshot-0001.jsonl" in shown.rejected_problem
    assert decision(server.stub(), X) == "DENY"  # never the older list's ALLOW
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "behind")

    again = serve(folder)  # a restart serves the same, and says the same
    shown = status(again)
    assert shown.source.endswith("snapshot-0001.jsonl") and shown.behind
    assert decision(again.stub(), X) == "DENY"


def test_a_snapshot_that_does_not_say_when_it_was_published_does_not_replace_one_that_does(
    tmp_path: Path, serve: Serve
) -> None:
    """An old export without a header row, copied in under a newer name, took the
    served list's place (X, listed only in the newer list, ALLOW NOT_LISTED, health
    SERVING): its age cannot be told, so it is refused, live and at a restart."""
    folder, server = serving_x_published(tmp_path, serve)

    write_jsonl(folder / "snapshot-0002.jsonl", basic_rows())  # no header: it lacks X
    eventually(lambda: status(server).behind, "the snapshot without a time refused")
    shown = status(server)
    assert shown.rejected_source.endswith("snapshot-0002.jsonl")
    assert shown.rejected_problem.startswith(
        "line 1: snapshot.published_at: missing (no header row, or one without it), while "
        "snapshot-0001.jsonl says it was published 2026-11-28T09:00:00+08:00"
    ), shown.rejected_problem
    assert "give it the feed's header row, or remove it" in shown.rejected_problem
    assert decision(server.stub(), X) == "DENY"
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "behind")

    again = serve(folder)  # a restart serves the same, and says the same
    shown = status(again)
    assert shown.source.endswith("snapshot-0001.jsonl") and shown.behind
    assert "snapshot.published_at: missing" in shown.rejected_problem

    # a CSV's header is its sidecar: the refusal says so
    (folder / "snapshot-0002.jsonl").unlink()
    (folder / "snapshot-0003.csv").write_text(ONE_ROW_CSV, encoding="utf-8")
    eventually(lambda: status(again).rejected_source.endswith("snapshot-0003.csv"), "CSV")
    assert "give it its sidecar snapshot-0003.csv.meta.json with the feed's header" in (
        status(again).rejected_problem
    )
    (folder / "snapshot-0003.csv").unlink()
    assert decision(again.stub(), X) == "DENY"

    # given its header (a newer time), it is served
    later = [header(0, "2026-11-29T09:00:00+08:00"), *basic_rows()]
    write_jsonl(folder / "snapshot-0002.jsonl", later)
    eventually(lambda: decision(again.stub(), X) == "ALLOW", "the newer list served")
    assert not status(again).behind


def test_at_a_start_a_snapshot_without_a_time_is_weighed_against_what_loads(
    tmp_path: Path, serve: Serve
) -> None:
    """Headerless 0001 and 0003 around a headered 0002 that is refused (cut short):
    live, 0003 replaced 0001 (no served time to weigh it against); a restart served
    0001, weighing 0003 against 0002's time though 0002 never loads. As live now."""
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", basic_rows())
    cut = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00",
                        "entries": 99}}  # fmt: skip
    write_jsonl(folder / "snapshot-0002.jsonl", [cut, *basic_rows()])
    write_jsonl(folder / "snapshot-0003.jsonl", [*basic_rows(), person_entry("E-X", X, "牛犇")])
    server = serve(folder)
    shown = status(server)
    assert shown.source.endswith("snapshot-0003.jsonl"), shown
    assert decision(server.stub(), X) == "DENY" and not shown.behind  # newer than 0002


# --- 4. a delta rewritten in place under an applied seq --------------------------------------


def test_a_delta_rewritten_in_place_under_an_applied_seq_is_refused(
    tmp_path: Path, serve: Serve
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    first = [delta(1, "LIST", entry=person_entry("E-X", X, "牛犇"))]
    write_jsonl(tmp_path / "delta-0001.jsonl", first)
    server = serve(tmp_path)
    eventually(lambda: status(server).last_delta_seq == 1, "delta 1 applied")
    version = status(server).version

    # the same seq now says something else: not skipped as a replay
    write_jsonl(tmp_path / "delta-0001.jsonl", [
        delta(1, "LIST", entry=person_entry("E-Y", Y, "羊羊")),
    ])  # fmt: skip
    eventually(lambda: status(server).behind, "the rewritten delta refused")
    shown = status(server)
    assert shown.rejected_source.endswith("delta-0001.jsonl")
    assert shown.rejected_problem.startswith(
        "line 1: seq 1 was applied with another op than delta-0001.jsonl now holds"
    )
    assert (shown.version, shown.last_delta_seq) == (version, 1)  # unchanged
    assert (decision(server.stub(), X), decision(server.stub(), Y)) == ("DENY", "ALLOW")

    # put back as it was (or copied in again): harmless, no longer behind
    write_jsonl(tmp_path / "delta-0001.jsonl", first)
    eventually(lambda: not status(server).behind, "no longer behind")
    assert status(server).version == version

    # exported again with a new feed time only: the same change, no alarm (as in Redis)
    stamped = [{**first[0], "published_at": "2026-11-30T09:00:00+08:00"}]
    write_jsonl(tmp_path / "delta-0001.jsonl", stamped)
    time.sleep(2.5)  # settled and polled
    assert not status(server).behind and status(server).version == version


# --- 5. a refused delta is said once the poll's files are all in -----------------------------


def test_deltas_landing_in_one_poll_fill_a_gap_without_a_false_alarm(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    feed.write("delta-0003.jsonl", [delta(3, "DELIST", entry_id="E1")])
    assert feed.behind == (
        "delta-0003.jsonl", "line 1: seq 3 follows seq 0: deltas 1 to 2 are missing"
    )  # fmt: skip
    write_jsonl(
        tmp_path / "delta-0001.jsonl", [delta(1, "LIST", entry=person_entry("E-X", X, "x"))]
    )
    write_jsonl(tmp_path / "delta-0002.jsonl", [delta(2, "DELIST", entry_id="E2")])
    feed.poll()  # both settle in one poll
    assert feed.behind is None and feed.view().info.last_delta_seq == 3
    rejected = [(name, detail) for what, name, detail in feed.events if what == "rejected"]
    assert len(rejected) == 1, rejected  # delta 3's first refusal only
    assert not any("delta 2 is missing" in detail for _, detail in rejected)

    # two files in one poll, the later seq's by name first: no alarm either
    write_jsonl(tmp_path / "delta-0004a.jsonl", [delta(5, "DELIST", entry_id="E3")])
    write_jsonl(tmp_path / "delta-0004b.jsonl", [delta(4, "DELIST", entry_id="E-X")])
    feed.poll()
    assert feed.behind is None and feed.view().info.last_delta_seq == 5
    assert len([e for e in feed.events if e[0] == "rejected"]) == 1


# --- 6. a dangling link, an emptied folder, a removed folder ---------------------------------


def test_a_dangling_link_as_the_newest_snapshot_is_refused_once(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(tmp_path, keyer).start()
    os.symlink(tmp_path / "elsewhere" / "snapshot-0002.jsonl", tmp_path / "snapshot-0002.jsonl")
    for _ in range(5):
        feed.poll()
    assert feed.behind is not None and feed.behind[0] == "snapshot-0002.jsonl"
    assert "symbolic link to" in feed.behind[1] and "does not exist" in feed.behind[1]
    said = [e for e in feed.events if e[0] == "rejected"]
    assert [name for _, name, _ in said] == ["snapshot-0002.jsonl"]  # once
    os.remove(tmp_path / "snapshot-0002.jsonl")
    feed.poll()
    assert feed.behind is None

    # at start too
    os.symlink(tmp_path / "elsewhere" / "snapshot-0003.jsonl", tmp_path / "snapshot-0003.jsonl")
    restarted = Feed(tmp_path, keyer).start()
    assert restarted.behind is not None and restarted.behind[0] == "snapshot-0003.jsonl"
    assert restarted.view().info.source.endswith("snapshot-0001.jsonl")
    os.remove(tmp_path / "snapshot-0003.jsonl")

    # a link to nothing named before the snapshot served (an old archive rotated away)
    # would change nothing served: not behind
    os.symlink(tmp_path / "elsewhere" / "snapshot-0000.jsonl", tmp_path / "snapshot-0000.jsonl")
    old = Feed(tmp_path, keyer).start()
    for _ in range(3):
        old.poll()
    assert old.behind is None and old.view().info.source.endswith("snapshot-0001.jsonl")


def test_an_emptied_folder_is_said_once_and_leaves_the_list_behind(
    tmp_path: Path, serve: Serve
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    server = serve(folder, settle=0.1)
    assert health(server.channel, LIST_CURRENT) == "SERVING"
    aside = tmp_path / "aside"
    aside.mkdir()
    (folder / "snapshot-0001.jsonl").rename(aside / "snapshot-0001.jsonl")  # unmounted
    eventually(lambda: health(server.channel, LIST_CURRENT) == "NOT_SERVING", "behind")
    shown = status(server)
    assert shown.behind and "holds no snapshot" in shown.rejected_problem
    assert health(server.channel) == "SERVING"  # the last good list answers
    assert decision(server.stub(), ZHANG) == "DENY"
    (aside / "snapshot-0001.jsonl").rename(folder / "snapshot-0001.jsonl")
    eventually(lambda: health(server.channel, LIST_CURRENT) == "SERVING", "current again")
    assert decision(server.stub(), ZHANG) == "DENY"


def test_an_emptied_or_removed_folder_is_said_once_until_it_changes_or_clears(
    tmp_path: Path, keyer: SubjectKeyer
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    write_jsonl(folder / "snapshot-0001.jsonl", [header(0), *basic_rows()])
    feed = Feed(folder, keyer).start()
    aside = tmp_path / "aside"
    folder.rename(aside)  # removed
    for _ in range(10):
        feed.poll()
    errors = [detail for what, _, detail in feed.events if what == "error"]
    assert len(errors) == 1 and "cannot be read" in errors[0], errors
    assert feed.behind is not None and "cannot be read" in feed.behind[1]
    folder.mkdir()  # back, empty
    for _ in range(3):
        feed.poll()
    errors = [detail for what, _, detail in feed.events if what == "error"]
    assert len(errors) == 2 and "holds no snapshot" in errors[1], errors
    shutil.rmtree(folder)
    aside.rename(folder)  # back with its snapshot
    feed.poll()
    feed.poll()
    assert feed.behind is None
    assert len([e for e in feed.events if e[0] == "error"]) == 2
    assert feed.decision(ZHANG).name == "DENY"


# --- 7. an organisation's USCC listed under a person's document type -------------------------


def test_a_uscc_listed_under_a_document_type_is_found_by_uscc(tmp_path: Path, serve: Serve) -> None:
    code = uscc("92110105MA0000007")  # a sole proprietor's
    row = person_entry("E-P", code, "张三烧烤店")
    row["subject"]["id_type"] = "PASSPORT"
    write_jsonl(tmp_path / "snapshot-0001.jsonl", [header(0), *basic_rows(), row])
    server = serve(tmp_path)
    for flags in (("--uscc", code), ("--id", code, "--id-type", "PASSPORT")):
        done = run_cli("check", "--channel", "HOTEL", "--star-rating", "5", *flags,
                       "--target", server.address)  # fmt: skip
        assert "DENY" in done.stdout, (flags, done.stdout, done.stderr)


# --- 8. a byte that is not UTF-8 ------------------------------------------------------------


def test_a_byte_that_is_not_utf8_is_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "snapshot-0001.jsonl"
    write_jsonl(path, [header(0), *basic_rows()])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace("李娜".encode(), b"\xff\xfe")
    path.write_bytes(b"".join(lines))
    done = run_cli("validate", str(path))
    assert done.returncode == 1
    assert "line 3: not valid UTF-8 (byte 0xff at column" in done.stdout, done.stdout
    assert "surrogates" not in done.stdout
