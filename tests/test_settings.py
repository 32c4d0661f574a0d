"""Settings are read strictly: a wrong value stops the start and names the option.

Through the real console script (``shixin-check serve`` in a child process),
which exits before it binds anything when a setting is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shixin_check.cli import _parser
from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.settings import serve_settings
from tests.listdata import basic_rows, write_jsonl
from tests.processes import run_cli


def serve_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    return {**env, **variables}


def test_a_misspelt_switch_in_the_environment_stops_the_start(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    done = run_cli("serve", "--list", str(path), "--listen", "127.0.0.1:0",
                   env=serve_env(SHIXIN_INSECURE="ture"))  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "SHIXIN_INSECURE" in line and "'ture'" in line
    assert "true" in line and "false" in line  # the accepted values


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SHIXIN_GRACE", "soon"),
        ("SHIXIN_LOG_FSYNC", "sometimes"),
        ("SHIXIN_HOTEL_MIN_STAR", "9"),
        ("SHIXIN_ENUMERATION_THROTTLE", "maybe"),
        ("SHIXIN_DEMO", "yes please"),
    ],
)
def test_every_bad_value_names_its_option(tmp_path: Path, variable: str, value: str) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    done = run_cli("serve", "--list", str(path), "--listen", "127.0.0.1:0",
                   env=serve_env(**{variable: value}))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False), ("", False)],
)
def test_switch_values_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("SHIXIN_ENUMERATION_THROTTLE", value)
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    args = _parser().parse_args(["serve", "--list", str(path)])
    assert serve_settings(args).enumeration_throttle is expected


def test_a_flag_wins_over_a_false_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIXIN_ENUMERATION_THROTTLE", "off")
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    args = _parser().parse_args(["serve", "--list", str(path), "--enumeration-throttle"])
    assert serve_settings(args).enumeration_throttle is True


def test_api_keys_over_plaintext_on_the_network_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    args = _parser().parse_args(
        ["serve", "--list", str(path), "--keys-file", str(keys), "--listen", "0.0.0.0:50051"]
    )
    with pytest.raises(ConfigurationError, match="plaintext"):
        serve_settings(args)
    insecure = _parser().parse_args(
        [
            "serve",
            "--list",
            str(path),
            "--keys-file",
            str(keys),
            "--listen",
            "0.0.0.0:50051",
            "--insecure",
        ]  # fmt: skip
    )
    settings = serve_settings(insecure)  # allowed when asked for (e.g. behind a TLS proxy)
    assert settings.insecure and not settings.loopback
