"""What a review of the configuration found through the real console script, each
shown on ``shixin-check`` child processes: a ``--target`` port gRPC would wrap, the
switch's "empty (off)" that an empty variable never meant, help and messages that
promised variables for flags no variable reads, secrets echoed in refusals,
``validate`` and ``audit`` passing an environment every other command refuses, the
key secret's default told to ``load``, and switches that could not be turned off.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from shixin_check.cli import _parser
from shixin_check.server.settings import (
    HELP_EPILOG,
    OPTIONS,
    effective_settings_line,
    markdown_table,
    resolve_args,
)
from tests.listdata import basic_rows, write_jsonl
from tests.processes import CLI, ServeProcess, free_port, run_cli
from tests.test_config import clean_env, one_line

SECRET = "ab" * 32  # what `openssl rand -hex 32` prints: a key secret


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "l.jsonl", basic_rows())


# --- 1. --target is HOST:PORT, the port in 1..65535 ------------------------------------------


def test_a_target_port_past_65535_is_refused_not_wrapped_onto_another_server(
    tmp_path: Path, listed: Path
) -> None:
    """gRPC takes the port modulo 65536: ``--target 127.0.0.1:(P + 65536)`` asked the
    server on P and exited 0. Refused in one line naming the option and the source."""
    server = ServeProcess("--list", str(listed), "--index-dir", "off", "--metrics-listen", "off")
    try:
        server.wait_serving()
        assert run_cli("status", "--target", server.target, env=clean_env()).returncode == 0
        wrapped = f"127.0.0.1:{server.port + 65536}"
        line = one_line(run_cli("status", "--target", wrapped, env=clean_env()))
        assert line == (
            f"shixin-check status: --target / SHIXIN_TARGET / config target: '{wrapped}' "
            f"(from the command line) is not HOST:PORT (port {server.port + 65536} is not in "
            "1..65535); accepted: HOST:PORT, the port in 1..65535, or unix:PATH"
        )
    finally:
        assert server.stop() == 0
    config = tmp_path / "c.toml"
    for command, target, source, problem in (
        ("check", ":50051", "the command line", "no host"),
        ("health", "127.0.0.1", "SHIXIN_TARGET", "no port"),
        ("status", "127.0.0.1:0", f"config file {config}", "port 0 is not in 1..65535"),
    ):
        config.write_text(f'target = "{target}"\n' if source.startswith("config") else "")
        flags = ["--target", target] if source == "the command line" else []
        env = clean_env(**({"SHIXIN_TARGET": target} if source == "SHIXIN_TARGET" else {}))
        line = one_line(run_cli(command, "--config", str(config), *flags, env=env))
        assert f"config target: '{target}' (from {source}) is not HOST:PORT ({problem})" in line


# --- 2. an empty variable is not given, for a switch too ---------------------------------------


def test_no_text_says_an_empty_switch_variable_turns_it_off(tmp_path: Path, listed: Path) -> None:
    """``SHIXIN_INSECURE=`` leaves the file's ``insecure = true`` on (as every empty
    variable is not given); the accepted text said "empty (off)"."""
    config = tmp_path / "c.toml"
    config.write_text('insecure = true\nlisten = "0.0.0.0:1"\nredis = "redis://127.0.0.1:1/0"\n')
    # past the insecure rule (on from the file), to the next refusal: no key secret
    done = run_cli("serve", "--config", str(config), env=clean_env(SHIXIN_INSECURE=""))
    assert one_line(done).startswith("shixin-check serve: no key secret"), done.stderr
    done = run_cli("serve", "--config", str(config), env=clean_env(SHIXIN_INSECURE="0"))
    assert "authentication is off" in one_line(done)
    line = one_line(run_cli("serve", "--demo", env=clean_env(SHIXIN_INSECURE="ture")))
    assert "empty (off)" not in line and "an empty variable is not given" in line, line
    assert "or empty (off)" not in markdown_table()
    config.write_text('insecure = ""\n')  # read as off before: now refused, as it says nothing
    line = one_line(run_cli("serve", "--demo", "--config", str(config), env=clean_env()))
    assert "config insecure: '' (from config file" in line and "not a switch value" in line


# --- 3. only the options marked [env ...] are read from variables -------------------------------


@pytest.mark.parametrize(
    ("argv", "variable", "flag"),
    [
        (["feedback", "--quarter", "2026Q3"], "SHIXIN_FORMAT", "--format"),
        (["feedback", "--quarter", "2026Q3"], "SHIXIN_QUARTER", "--quarter"),
        (["status"], "SHIXIN_JSON", "--json"),
        (["keys", "list", "--keys-file", "k.json"], "SHIXIN_PRINCIPAL", "--principal"),
        (["validate", "x.jsonl"], "SHIXIN_AGAINST", "--against"),
    ],
)
def test_a_variable_for_a_flag_no_variable_reads_says_so(
    argv: list[str], variable: str, flag: str
) -> None:
    line = one_line(run_cli(*argv, env=clean_env(**{variable: "1"})))
    assert line.endswith(
        f"{variable}: unknown variable: {flag} is not read from a variable: give it on the "
        "command line"
    ), line


def test_the_unknown_variable_line_names_the_variables_truly() -> None:
    line = one_line(run_cli("health", env=clean_env(SHIXIN_HITLOG="x")))
    assert "(did you mean SHIXIN_HIT_LOG?)" in line
    assert "the long option names" not in line
    assert "the variables are those marked [env SHIXIN_...] in each subcommand's --help" in line


def test_every_option_marked_env_in_help_is_the_one_its_variable_gives() -> None:
    """What ``HELP_EPILOG`` promises: every flag marked [env SHIXIN_X] is read from
    SHIXIN_X (a row of the table), and the other long flags from no variable."""
    helps = {
        command: re.sub(r"\s+", " ", run_cli(command, "--help", env=clean_env()).stdout)
        for command in {c for o in OPTIONS for c in o.commands} - {"keys"}  # keys: below
    }
    for option in OPTIONS:
        for command in set(option.commands) & set(helps):
            assert f"[env {option.env}]" in helps[command], (command, option.name)
    keys_add = re.sub(r"\s+", " ", run_cli("keys", "add", "--help", env=clean_env()).stdout)
    assert "[env SHIXIN_KEYS_FILE]" in keys_add and "[env SHIXIN_PRINCIPAL]" not in keys_add


def test_the_top_help_footer_says_which_options_variables_give() -> None:
    """The footer said every option is read from SHIXIN_<OPTION>, false for --format,
    --json, --allow-rollback, --principal. Needs cli.py's ``epilog=HELP_EPILOG``."""
    shown = re.sub(r"\s+", " ", run_cli("--help", env=clean_env()).stdout)
    assert "Every option of a subcommand is also read from" not in shown
    assert HELP_EPILOG in shown


# --- 4. secrets are never echoed ---------------------------------------------------------------


def test_a_secret_where_its_file_goes_is_not_printed(tmp_path: Path, listed: Path) -> None:
    line = one_line(run_cli("load", str(listed), "--redis", "redis://127.0.0.1:1/0",
                            env=clean_env(SHIXIN_KEY_SECRET_FILE=SECRET)))  # fmt: skip
    assert SECRET not in line and "ab" * 8 not in line, line
    assert "a value of 64 characters" in line and "(from SHIXIN_KEY_SECRET_FILE)" in line
    assert "the secret itself goes in SHIXIN_KEY_SECRET" in line
    done = run_cli("serve", "--list", str(listed), "--key-secret-file", SECRET, env=clean_env())
    assert SECRET not in one_line(done)


def test_an_api_key_in_the_file_is_not_printed(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("api_key = 987654321\n")
    line = one_line(run_cli("status", "--config", str(config), env=clean_env()))
    assert "987654321" not in line and "a value of 9 characters" in line, line
    assert "config api_key:" in line and "is not a string" in line


def test_a_key_secret_in_the_file_is_sent_to_the_environment_not_to_key_secret_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'key_secret = "{SECRET}"\n')
    for argv in (["serve", "--demo"], ["load", "x.jsonl"], ["validate", "x.jsonl"]):
        flags = [] if argv[0] == "validate" else ["--config", str(config)]
        env = clean_env(SHIXIN_CONFIG=str(config)) if argv[0] == "validate" else clean_env()
        line = one_line(run_cli(*argv, *flags, env=env))
        assert SECRET not in line and "did you mean" not in line, line
        assert "unknown key 'key_secret': the key secret itself is read only from " in line
        assert "SHIXIN_KEY_SECRET or from the file" in line


# --- 5. every command refuses a misspelt variable and a missing config file --------------------


def test_validate_and_audit_check_the_environment_as_every_command_does(
    tmp_path: Path, listed: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    for argv in (["validate", str(listed)], ["audit", "verify", str(log)]):
        command = f"shixin-check {argv[0]}"
        assert run_cli(*argv, env=clean_env()).returncode == 0, argv
        line = one_line(run_cli(*argv, env=clean_env(SHIXIN_HITLOG="x")))
        assert line.startswith(f"{command}: SHIXIN_HITLOG: unknown variable (did you mean "
                               "SHIXIN_HIT_LOG?)"), line  # fmt: skip
        missing = tmp_path / "nope.toml"
        line = one_line(run_cli(*argv, env=clean_env(SHIXIN_CONFIG=str(missing))))
        assert line == f"{command}: --config / SHIXIN_CONFIG: {missing} is not a file"
        bad = tmp_path / "bad.toml"
        bad.write_text("hit_logs = 'x'\n")
        line = one_line(run_cli(*argv, env=clean_env(SHIXIN_CONFIG=str(bad))))
        assert "unknown key 'hit_logs' (did you mean hit_log?)" in line
        # another command's variables and keys are passed over, as elsewhere
        good = tmp_path / "good.toml"
        good.write_text("workers = 4\ntarget = '127.0.0.1:1'\n")
        env = clean_env(SHIXIN_CONFIG=str(good), SHIXIN_WORKERS="abc",
                        SHIXIN_CHECK_SERVICE_HOST="10.96.0.12")  # fmt: skip
        assert run_cli(*argv, env=env).returncode == 0, argv


# --- 6. each command's own default -------------------------------------------------------------


def test_load_help_shows_no_generated_key_secret() -> None:
    load = re.sub(r"\s+", " ", run_cli("load", "--help", env=clean_env()).stdout)
    serve = re.sub(r"\s+", " ", run_cli("serve", "--help", env=clean_env()).stdout)
    assert "generated" not in load and "serve:" not in load, load
    assert "no default: this file or SHIXIN_KEY_SECRET is required" in load
    assert "(default generated (keys live in memory only))" in serve


# --- 7. a switch is turned off on the command line too -----------------------------------------


def test_no_flag_beats_the_variable_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('insecure = true\nlisten = "0.0.0.0:1"\nredis = "redis://127.0.0.1:1/0"\n')
    env = clean_env(SHIXIN_INSECURE="1")
    line = one_line(run_cli("serve", "--config", str(config), "--no-insecure", env=env))
    assert "authentication is off" in line, line  # off, from the flag alone
    line = one_line(run_cli("serve", "--no-demo", env=clean_env(SHIXIN_DEMO="1")))
    assert line.startswith("shixin-check serve: serve needs --list"), line
    table = markdown_table()
    for name in ("demo", "insecure", "enumeration-throttle"):
        assert f"| `--{name}`, `--no-{name}` |" in table


# --- 8. the settings a server runs with, in one line -------------------------------------------


def test_the_effective_settings_line_names_sources_and_hides_secrets(
    tmp_path: Path, listed: Path
) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET)
    secret.chmod(0o600)  # as the README asks: no warning
    config = tmp_path / "c.toml"
    config.write_text('workers = 3\nmax_list_age = "36h"\nhotel_min_star = 1\n')
    args = _parser().parse_args(["serve", "--list", str(listed), "--config", str(config),
                                 "--key-secret-file", str(secret), "--no-insecure",
                                 "--redis", "redis://:hunter2@127.0.0.1:1/0"])  # fmt: skip
    env = {"SHIXIN_WORKERS": "4", "SHIXIN_GRACE": "2.5", "SHIXIN_DEMO_COUNT": "2000"}
    line = effective_settings_line(resolve_args(args, env).resolved)
    assert line == (
        f"settings: list={listed} (--list), workers=4 (SHIXIN_WORKERS), grace=2.5s "
        "(SHIXIN_GRACE), key_secret_file=(given, not shown) (--key-secret-file), "
        "redis=redis://***@127.0.0.1:1/0 (--redis), max_list_age=129600s (config file); "
        f"config file {config}"
    )  # the defaults (demo_count 2000, hotel_min_star 1, insecure off) left out
    bare = _parser().parse_args(["serve", "--demo", "--listen", f"127.0.0.1:{free_port()}"])
    assert effective_settings_line(resolve_args(bare, {}).resolved).startswith(
        "settings: demo=on (--demo), listen=127.0.0.1:"
    )


def test_serve_logs_what_it_runs_with_and_where_each_value_came_from(tmp_path: Path) -> None:
    """The line ``effective_settings_line`` makes, logged by a real ``serve`` at start:
    a variable's value named by its variable, a flag's by its flag, no secret shown."""
    secret = tmp_path / "key"
    secret.write_text("ab" * 32)
    proc = subprocess.Popen(
        [*CLI, "serve", "--demo", "--listen", "127.0.0.1:0", "--metrics-listen", "off",
         "--key-secret-file", str(secret)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=clean_env(SHIXIN_GRACE="2.5", PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = ""
        for _ in range(40):  # the settings line comes before "serving on"
            line = proc.stdout.readline()
            if "settings:" in line or not line:
                break
        assert "settings:" in line, line
        assert "grace=2.5s (SHIXIN_GRACE)" in line and "demo=on (--demo)" in line, line
        assert "key_secret_file=(given, not shown) (--key-secret-file)" in line, line
        assert "ab" * 32 not in line and str(secret) not in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_unix_socket_target_is_taken_as_it_is(tmp_path: Path) -> None:
    """A local proxy's Unix socket has no port to check: the client dials it (and here
    finds nothing there) instead of refusing it as a HOST:PORT with a bad port."""
    done = run_cli("health", "--target", f"unix:{tmp_path / 'none.sock'}", "--timeout", "1",
                   env=clean_env())  # fmt: skip
    assert "is not HOST:PORT" not in done.stderr, done.stderr
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
