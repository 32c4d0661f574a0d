"""Configuration: flag over variable over config file over default, every value
checked at start, one table behind the flags and the README (issue 11, point 3).

The precedence and the rules are shown on the pure functions (``resolve``,
``serve_settings`` with an explicit environment); what an operator sees, the
exit status and the one line on standard error, on real ``shixin-check`` child
processes, and one real server started from a config file is asked what it
runs with.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.cli import _parser
from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.rules import Policy
from shixin_check.server.settings import (
    BY_KEY,
    COMMANDS,
    EPHEMERAL_SECRET,
    OPTIONS,
    ServeSettings,
    markdown_table,
    merged,
    options_for,
    resolve,
    serve_settings,
)
from tests.conftest import RunningServer
from tests.listdata import ZHANG, basic_rows, write_jsonl
from tests.processes import ServeProcess, run_cli
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
ROOT = Path(__file__).resolve().parent.parent
SECRET = "tests-only-secret-0123456789abcdef"


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any ``SHIXIN_*``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    return {**env, **variables}


def toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def settings(argv: list[str], env: dict[str, str]) -> ServeSettings:
    return serve_settings(_parser().parse_args(["serve", *argv]), env)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 2, no traceback, exactly one line on standard error."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "l.jsonl", basic_rows())


# --- precedence -------------------------------------------------------------------------------


def test_flag_beats_variable_beats_file_beats_default(tmp_path: Path, listed: Path) -> None:
    config = toml(tmp_path / "c.toml", 'hotel_min_star = 4\nresort_quota_fen = 111\n'
                  'insurance_premium_threshold_fen = 222\ngrace = 2.5\n')  # fmt: skip
    env = {"SHIXIN_RESORT_QUOTA_FEN": "333", "SHIXIN_INSURANCE_PREMIUM_THRESHOLD_FEN": "444"}
    got = settings(["--list", str(listed), "--config", str(config),
                    "--insurance-premium-threshold-fen", "555"], env)  # fmt: skip
    assert got.policy.hotel_min_star == 4  # the file alone
    assert got.policy.resort_quota_fen == 333  # the variable over the file
    assert got.policy.insurance_premium_threshold_fen == 555  # the flag over both
    assert got.grace_seconds == 2.5  # a TOML float
    assert got.log_fsync == "never" and got.workers == 1  # the defaults


def test_a_wrong_value_is_refused_even_where_a_higher_source_overrides_it(
    tmp_path: Path, listed: Path
) -> None:
    """pydantic-settings reads only the source that wins: ``SHIXIN_WORKERS=abc`` under
    ``--workers 1`` and ``list = 5`` in the file under ``--list`` started, and would
    break the first start without the flag. Every source's value is checked."""
    with pytest.raises(ConfigurationError, match=r"'abc' \(from SHIXIN_WORKERS\)"):
        settings(["--list", str(listed), "--workers", "1"], {"SHIXIN_WORKERS": "abc"})
    config = toml(tmp_path / "c.toml", "list = 5\nhotel_min_star = 3\n")
    with pytest.raises(ConfigurationError, match=r"5 \(from config file .*c\.toml\) is not a"):
        settings(["--list", str(listed), "--config", str(config)], {})
    with pytest.raises(ConfigurationError, match="config file"):  # under a variable too
        settings(["--config", str(config)], {"SHIXIN_LIST": str(listed)})
    assert settings(["--list", str(listed), "--workers", "2"], {"SHIXIN_WORKERS": "3"}).workers == 2


def test_the_file_comes_from_the_flag_or_the_variable(tmp_path: Path, listed: Path) -> None:
    by_variable = toml(tmp_path / "a.toml", "hotel_min_star = 3\n")
    by_flag = toml(tmp_path / "b.toml", "hotel_min_star = 5\n")
    env = {"SHIXIN_CONFIG": str(by_variable)}
    assert settings(["--list", str(listed)], env).policy.hotel_min_star == 3
    chosen = settings(["--list", str(listed), "--config", str(by_flag)], env)
    assert chosen.policy.hotel_min_star == 5


def test_every_option_of_serve_reaches_the_settings_from_the_file(
    tmp_path: Path, listed: Path
) -> None:
    keys = toml(tmp_path / "keys.json", '{"keys": []}')
    config = toml(tmp_path / "c.toml", f"""
list = "{listed}"
listen = "0.0.0.0:50051"
workers = 4
hit_log = "{tmp_path / 'hits.jsonl'}"
keys_file = "{keys}"
insecure = true
enumeration_throttle = "on"
log_fsync = "INTERVAL"
log_max_mib = 8
metrics_listen = "0.0.0.0:9464"
max_list_age = "36h"
index_dir = "off"
unavailable = "deny"
unavailable_channel = "airline=allow"
""")  # fmt: skip
    got = settings(["--config", str(config)], {})
    assert (got.list_path, got.listen, got.workers) == (listed, "0.0.0.0:50051", 4)
    assert got.hit_log == tmp_path / "hits.jsonl" and got.keys_file == keys
    assert got.insecure and got.enumeration_throttle and got.log_fsync == "interval"
    assert got.log_max_bytes == 8 * 1024 * 1024
    assert (got.metrics_listen, got.max_list_age, got.index_dir) == ("0.0.0.0:9464", 129600.0, None)
    assert got.policy.unavailable == "DENY"
    assert [(c.name, d) for c, d in got.policy.unavailable_by_channel] == [("AIRLINE", "ALLOW")]


def test_other_subcommands_read_the_same_file(tmp_path: Path) -> None:
    config = toml(tmp_path / "c.toml", 'target = "10.0.0.7:50051"\napi_key = "from-file"\n'
                  'hit_log = "/var/log/hits.jsonl"\nlisten = "0.0.0.0:1"\nkeys_file = "k.json"\n')  # fmt: skip
    check = resolve("check", {}, {"SHIXIN_API_KEY": "from-env"}, str(config))
    assert check.values["target"] == "10.0.0.7:50051"  # the file
    assert check.values["api_key"] == "from-env"  # the variable over it
    assert "listen" not in check.values  # serve's key: ignored here
    assert check.origins["api_key"] == "SHIXIN_API_KEY"
    assert resolve("feedback", {}, {}, str(config)).values["hit_log"] == "/var/log/hits.jsonl"
    assert resolve("keys", {}, {}, str(config)).values["keys_file"] == "k.json"


def test_a_secret_in_the_environment_beats_a_secret_file_named_in_the_file(
    tmp_path: Path, listed: Path
) -> None:
    secret_file = toml(tmp_path / "secret", "file-secret-0123456789abcdef")
    config = toml(tmp_path / "c.toml", f'key_secret_file = "{secret_file}"\n')
    argv = ["--list", str(listed), "--config", str(config)]
    assert settings(argv, {}).secret == b"file-secret-0123456789abcdef"
    assert settings(argv, {"SHIXIN_KEY_SECRET": SECRET}).secret_source == "SHIXIN_KEY_SECRET"
    named = {"SHIXIN_KEY_SECRET": SECRET, "SHIXIN_KEY_SECRET_FILE": str(secret_file)}
    assert settings(argv, named).secret_source == f"file {secret_file}"
    assert settings(["--list", str(listed)], {}).secret_source == EPHEMERAL_SECRET


def test_workers(listed: Path) -> None:
    assert settings(["--list", str(listed), "--workers", "8"], {}).workers == 8
    assert settings(["--list", str(listed)], {"SHIXIN_WORKERS": "64"}).workers == 64
    with pytest.raises(ConfigurationError, match=r"SHIXIN_WORKERS.*'65'.*1\.\.64"):
        settings(["--list", str(listed)], {"SHIXIN_WORKERS": "65"})


def test_settle(listed: Path) -> None:
    assert settings(["--list", str(listed)], {}).settle == 1.0
    assert settings(["--list", str(listed), "--settle", "2.5"], {}).settle == 2.5
    assert settings(["--list", str(listed)], {"SHIXIN_SETTLE": "0"}).settle == 0.0
    with pytest.raises(ConfigurationError, match=r"--settle.*'-1'"):
        settings(["--list", str(listed), "--settle", "-1"], {})


def outcome(read: Callable[..., object], *args: object) -> object:
    """What ``read(*args)`` gives: its value, or the refusal's line."""
    try:
        return read(*args)
    except ConfigurationError as exc:
        return f"refused: {exc}"


def flags_and_defaults(command: str, given: dict[str, object]) -> dict[str, object]:
    return dict(resolve(command, given, {}).values)  # no file, no variable: no model


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_alone_are_read_as_the_model_reads_them(command: str) -> None:
    """With no file and no variable, ``resolve`` skips the model (its import is slow):
    every value and every refusal must be what the model gives."""
    samples: list[object] = ["", "1", "ture", "127.0.0.1:1", "off", "36h", "2026-11-28",
                             "AIRLINE=deny", "x=y", "-5", "2.5", True]  # fmt: skip
    cases: list[dict[str, object]] = [{}] + [
        {o.key: raw} for o in options_for(command) for raw in samples
    ]
    for given in cases:
        fast = outcome(flags_and_defaults, command, given)
        model = outcome(merged, command, given, {}, None)
        required = isinstance(fast, str) and "is required" in fast
        assert fast == model or (required and isinstance(model, dict)), (given, fast, model)


# --- strict values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hotel_min_star = true", "is not an integer"),  # a TOML bool is no number
        ("hotel_min_star = 4.0", "is not an integer"),
        ('insecure = "ture"', "is not a switch value"),
        ("insecure = 1", "is not a string"),
        ('listen = "50051"', "is not HOST:PORT"),
        ("grace = -1", "is not 0..3600"),
        ('unavailable_channel = "TRAIN=DENY"', "is not CHANNEL=DECISION at 'TRAIN=DENY'"),
        ("hit_log = [1, 2]", "is not a string"),
    ],
)
def test_a_wrong_type_or_value_in_the_file_is_refused(
    tmp_path: Path, listed: Path, text: str, problem: str
) -> None:
    config = toml(tmp_path / "c.toml", text + "\n")
    with pytest.raises(ConfigurationError) as refused:
        settings(["--list", str(listed), "--config", str(config)], {})
    message = str(refused.value)
    option = BY_KEY[text.split(" ")[0]]
    assert message.startswith(f"{option.flag} / {option.env} / config {option.key}: ")
    assert f"(from config file {config}) {problem}; accepted: {option.takes}" in message


@pytest.mark.parametrize("source", ["flag", "variable", "file"])
def test_a_wrong_value_from_each_source_stops_the_start_in_one_line(
    tmp_path: Path, listed: Path, source: str
) -> None:
    config = toml(tmp_path / "c.toml", 'log_fsync = "sometimes"\n' if source == "file" else "")
    flags = ["--log-fsync", "sometimes"] if source == "flag" else []
    env = clean_env(**({"SHIXIN_LOG_FSYNC": "sometimes"} if source == "variable" else {}))
    done = run_cli("serve", "--list", str(listed), "--config", str(config), *flags, env=env)
    line = one_line(done)
    origin = {"flag": "the command line", "variable": "SHIXIN_LOG_FSYNC",
              "file": f"config file {config}"}[source]  # fmt: skip
    assert line == (
        "shixin-check serve: --log-fsync / SHIXIN_LOG_FSYNC / config log_fsync: 'sometimes' "
        f"(from {origin}) is not one of the choices; accepted: never, interval, always"
    )


def test_an_unknown_key_stops_the_start_naming_it(tmp_path: Path, listed: Path) -> None:
    config = toml(tmp_path / "c.toml", 'listen = "127.0.0.1:0"\nhit_logs = "/tmp/h.jsonl"\n')
    line = one_line(run_cli("serve", "--list", str(listed), "--config", str(config),
                            env=clean_env()))  # fmt: skip
    assert f"--config / SHIXIN_CONFIG: {config}: unknown key 'hit_logs'" in line
    assert "did you mean hit_log?" in line
    # the same for a subcommand that takes none of the file's known keys
    assert "unknown key 'hit_logs'" in one_line(
        run_cli("status", "--config", str(config), env=clean_env())
    )


def test_a_table_and_a_misspelt_case_are_unknown_keys(tmp_path: Path, listed: Path) -> None:
    for text, key in (("[serve]\nlisten = '127.0.0.1:0'\n", "serve"), ("LISTEN = 'x'\n", "LISTEN")):
        config = toml(tmp_path / "c.toml", text)
        with pytest.raises(ConfigurationError, match=f"unknown key '{key}'"):
            settings(["--list", str(listed), "--config", str(config)], {})


def test_a_missing_or_broken_file_stops_the_start(tmp_path: Path, listed: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    line = one_line(run_cli("serve", "--list", str(listed), env=clean_env(SHIXIN_CONFIG=str(missing))))  # fmt: skip
    assert line == f"shixin-check serve: --config / SHIXIN_CONFIG: {missing} is not a file"
    broken = toml(tmp_path / "broken.toml", "listen = \n")
    with pytest.raises(ConfigurationError, match=f"--config / SHIXIN_CONFIG: {broken}: "):
        settings(["--list", str(listed), "--config", str(broken)], {})


def test_a_required_option_may_come_from_any_source(tmp_path: Path) -> None:
    line = one_line(run_cli("load", str(tmp_path / "s.jsonl"), env=clean_env()))
    assert line.startswith("shixin-check load: --redis / SHIXIN_REDIS / config redis is required")
    config = toml(tmp_path / "c.toml", 'redis = "redis://127.0.0.1:1/0"\n')
    assert resolve("load", {}, {}, str(config)).values["redis"] == "redis://127.0.0.1:1/0"


def test_gen_data_from_a_file_shared_with_serve(tmp_path: Path) -> None:
    out = tmp_path / "list.jsonl"
    config = toml(tmp_path / "c.toml", f'count = 3\nout = "{out}"\nas_of = 2026-11-28\n'
                  'listen = "0.0.0.0:50051"\ntarget = "10.0.0.7:50051"\n')  # fmt: skip
    done = run_cli("gen-data", "--config", str(config), "--seed", "7", env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "(seed 7, as of 2026-11-28)" in done.stdout
    assert len(out.read_text(encoding="utf-8").splitlines()) >= 3


# --- a real server started from a file --------------------------------------------------------


def test_a_server_started_with_a_config_file_runs_with_the_merged_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = _dt.datetime.now(_dt.UTC).isoformat()  # a fresh list: ready under max_list_age
    listed = write_jsonl(tmp_path / "l.jsonl",
                         [{"snapshot": {"includes_seq": 0, "published_at": now}}, *basic_rows()])  # fmt: skip
    for name in [n for n in os.environ if n.startswith("SHIXIN_")]:
        monkeypatch.delenv(name)
    config = toml(tmp_path / "c.toml", 'listen = "127.0.0.1:1"\nhotel_min_star = 4\n'
                  'resort_quota_fen = 111\ninsurance_premium_threshold_fen = 222\n'
                  'max_list_age = "36h"\nindex_dir = "off"\n')  # fmt: skip
    monkeypatch.setenv("SHIXIN_RESORT_QUOTA_FEN", "333")
    monkeypatch.setenv("SHIXIN_INSURANCE_PREMIUM_THRESHOLD_FEN", "444")
    server = ServeProcess("--list", str(listed), "--config", str(config),
                          "--insurance-premium-threshold-fen", "555")  # fmt: skip
    try:
        server.wait_serving()  # on the --listen of the flag, not the file's
        with grpc.insecure_channel(server.target) as channel:
            status = pb_grpc.ConsumptionCheckStub(channel).GetListStatus(
                pb.ListStatusRequest(), timeout=10
            )
        policy = {p.name: p.value for p in status.policy}
        assert policy["hotel_min_star"] == "4"  # the file
        assert policy["resort_quota_fen"] == "333"  # the variable over the file
        assert policy["insurance_premium_threshold_fen"] == "555"  # the flag over both
        assert status.max_list_age_seconds == 36 * 3600  # the file
    finally:
        assert server.stop() == 0


# --- one table: flags, README, defaults -------------------------------------------------------


def test_the_readme_table_is_generated_from_the_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", readme, re.S)
    assert found, "README.md has no <!-- settings:begin --> ... <!-- settings:end --> block"
    assert found.group(1) == markdown_table(), (
        "the README's option table is stale: replace it with the output of "
        "`python -m shixin_check.server.settings --markdown`"
    )


def test_the_readme_example_config_is_one_serve_reads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    config = toml(tmp_path / "example.toml", example)
    values = resolve("serve", {}, {}, str(config)).values
    assert (values["listen"], values["workers"], values["insecure"]) == ("0.0.0.0:50051", 4, True)


def test_the_table_lists_every_serve_setting_and_the_policy_defaults() -> None:
    table = markdown_table()
    for flag in ("--metrics-listen", "--max-list-age", "--index-dir", "--workers", "--config"):
        assert f"`{flag} " in table
    policy = Policy()
    for option in OPTIONS:
        if hasattr(policy, option.key):
            assert option.default == getattr(policy, option.key), option.name
    fields = {f.name for f in dataclasses.fields(ServeSettings)}
    assert "workers" in fields and ServeSettings.__dataclass_fields__["workers"].default == 1


def test_help_and_the_parser_never_load_pydantic() -> None:
    code = ("import sys, shixin_check.cli; shixin_check.cli._parser().format_help(); "
            "assert not [m for m in sys.modules if m.startswith('pydantic')], 'pydantic loaded'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"shixin-check {version('shixin-check')}",
        "proto package shixin.v1",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"grpcio {version('grpcio')}",
    ]


# --- check marks a stale answer -----------------------------------------------------------------


def test_check_prints_stale_on_a_stale_answer(serve: Serve, tmp_path: Path) -> None:
    published = _dt.datetime.fromtimestamp(time.time() - 7200, _dt.UTC).isoformat()
    write_jsonl(tmp_path / "snapshot-0001.jsonl",
                [{"snapshot": {"includes_seq": 0, "published_at": published}}, *basic_rows()])  # fmt: skip
    server = serve(tmp_path, max_list_age=3600.0)
    stub = server.stub()
    eventually(lambda: stub.GetListStatus(pb.ListStatusRequest(), timeout=5).stale, "stale")
    done = run_cli("check", "--target", server.address, "--channel", "AIRLINE", "--id", ZHANG,
                   env=clean_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("DENY") and first.endswith("STALE"), done.stdout
    batch = tmp_path / "batch.jsonl"
    batch.write_text(f'{{"id": "{ZHANG}"}}\n', encoding="utf-8")
    batched = run_cli("check", "--target", server.address, "--channel", "AIRLINE",
                      "--batch", str(batch), env=clean_env())  # fmt: skip
    assert batched.returncode == 0, batched.stderr
    assert batched.stdout.strip().endswith("STALE"), batched.stdout
