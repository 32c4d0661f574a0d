"""A command whose output the disk refuses says which file, in one line, and leaves
nothing half-written. Before, ``feedback --out``, ``gen-data --out`` and ``keys add``
said only ``[Errno 28] No space left on device`` (or named their ``.part`` file).
The real commands in child processes under a real file-size limit (``ulimit -f``:
EFBIG, as a full disk gives ENOSPC; the same branch words both).
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

from tests.processes import CLI

LIMIT = 64  # bytes: below every output here, above nothing


def run_limited(*args: str) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))

    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)  # fmt: skip


def refused_naming(done: subprocess.CompletedProcess[str], option: str, path: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f": {option} {path}: cannot be written: EFBIG (File too large): the process's " in (
        line
    ), line
    assert ".part" not in line, line


def test_gen_data_names_its_out_file(tmp_path: Path) -> None:
    out = tmp_path / "list.jsonl"
    refused_naming(run_limited("gen-data", "--count", "100", "--out", str(out)), "--out", out)
    assert sorted(tmp_path.iterdir()) == []  # no .part left


def test_feedback_names_its_out_file(tmp_path: Path) -> None:
    hits = tmp_path / "hits.jsonl"
    hits.touch()
    out = tmp_path / "report.csv"
    done = run_limited("feedback", "--quarter", "2026Q3", "--hit-log", str(hits),
                       "--out", str(out))  # fmt: skip
    refused_naming(done, "--out", out)
    assert sorted(tmp_path.iterdir()) == [hits]


def test_keys_add_names_the_keys_file_and_keeps_it_whole(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    first = subprocess.run([*CLI, "keys", "add", "--keys-file", str(keys), "--principal", "a",
                            "--channels", "RAIL", "--roles", "check"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = keys.read_bytes()
    done = run_limited("keys", "add", "--keys-file", str(keys), "--principal", "b",
                       "--channels", "RAIL", "--roles", "check")  # fmt: skip
    refused_naming(done, "--keys-file", keys)
    assert keys.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [keys]  # no temporary file left
