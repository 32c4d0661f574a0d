"""The ``SHIXIN_*`` variables as a source: an empty one is not given, a misspelt one
stops the start, the key secret is trimmed, and a missing relative path is named in
full. Through the real console script where it exits before binding, else through
``serve_settings``, the resolution ``shixin-check serve`` runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shixin_check.cli import _parser
from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.settings import (
    OPTIONS,
    OTHER_ENV,
    SERVICE_LINK,
    ServeSettings,
    serve_settings,
)
from tests.listdata import basic_rows, write_jsonl
from tests.processes import CLI, run_cli

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tests-only-secret-0123456789abcdef"


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any ``SHIXIN_*``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIXIN_")}
    return {**env, **variables}


def settings(argv: list[str], env: dict[str, str]) -> ServeSettings:
    return serve_settings(_parser().parse_args(["serve", *argv]), env)


def test_an_empty_or_blank_variable_gives_way_to_the_config_file(tmp_path: Path) -> None:
    """``SHIXIN_HIT_LOG=`` (compose's ``${VAR}`` with VAR unset) is not given: the file's
    hit log, audit log, metrics, list age and key secret file are used, not turned off."""
    (tmp_path / "key").write_text(SECRET)
    (tmp_path / "key").chmod(0o600)  # as the README asks: no warning
    config = tmp_path / "c.toml"
    config.write_text(
        f'hit_log = "{tmp_path / "hits.jsonl"}"\naudit_log = "{tmp_path / "audit.jsonl"}"\n'
        f'metrics_listen = "127.0.0.1:9999"\nmax_list_age = "36h"\n'
        f'key_secret_file = "{tmp_path / "key"}"\n'
    )
    blank = {
        "SHIXIN_HIT_LOG": "",
        "SHIXIN_AUDIT_LOG": "  ",
        "SHIXIN_METRICS_LISTEN": "",
        "SHIXIN_MAX_LIST_AGE": "\n",
        "SHIXIN_KEY_SECRET_FILE": "",
        "SHIXIN_KEY_SECRET": "",
    }
    got = settings(["--demo", "--config", str(config)], clean_env(**blank))
    assert got.hit_log == tmp_path / "hits.jsonl"
    assert got.audit_log == tmp_path / "audit.jsonl"
    assert got.metrics_listen == "127.0.0.1:9999"
    assert got.max_list_age == 36 * 3600
    assert (got.secret, got.secret_source) == (SECRET.encode(), f"file {tmp_path / 'key'}")
    # and with no file to fall to, the default
    bare = settings(["--demo"], clean_env(SHIXIN_WORKERS="", SHIXIN_GRACE=" "))
    assert (bare.workers, bare.grace_seconds) == (1, 5.0)


def test_an_empty_keys_file_variable_does_not_turn_authentication_off(tmp_path: Path) -> None:
    """The file's ``keys_file`` stands under ``SHIXIN_KEYS_FILE=``: binding a network
    address is then refused for the plaintext keys (as without the variable), not for
    authentication being off."""
    listed = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    keys = tmp_path / "keys.json"
    keys.write_text("{}")
    config = tmp_path / "c.toml"
    config.write_text(f'list = "{listed}"\nlisten = "0.0.0.0:1"\nkeys_file = "{keys}"\n')
    done = run_cli("serve", "--config", str(config), env=clean_env(SHIXIN_KEYS_FILE=""))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "API keys would cross the network in plaintext" in line, line


def test_a_misspelt_variable_stops_the_start_naming_the_one_meant() -> None:
    """``SHIXIN_HITLOG`` is refused in one line with did-you-mean, as the key ``hitlog``
    of the file is, before anything else is looked at."""
    done = run_cli("serve", env=clean_env(SHIXIN_HITLOG="/tmp/hits.jsonl"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("shixin-check serve: SHIXIN_HITLOG: unknown variable"), line
    assert "(did you mean SHIXIN_HIT_LOG?)" in line, line
    # an empty misspelt one too, and each is counted
    try:
        settings(["--demo"], clean_env(SHIXIN_MAX_AGE="", SHIXIN_AUDITLOG="x"))
    except ConfigurationError as exc:
        assert "SHIXIN_AUDITLOG" in str(exc) and str(exc).endswith("(and 1 more)"), exc
    else:
        raise AssertionError("SHIXIN_MAX_AGE and SHIXIN_AUDITLOG were not refused")
    # the names read on purpose, and another subcommand's variable, are not refused
    read = {name: "" for name in OTHER_ENV} | {"SHIXIN_TARGET": "127.0.0.1:1"}
    assert settings(["--demo"], clean_env(**read)).demo


def test_every_shixin_name_the_project_uses_is_known() -> None:
    """Every ``SHIXIN_*`` name outside the tests (code, image, compose, manifests, CI,
    scripts, README) is an option's variable or in ``OTHER_ENV``: none is refused."""
    known = {o.env for o in OPTIONS} | OTHER_ENV
    skip = {".git", ".venv", "tests", "node_modules", "__pycache__"}
    seen: dict[str, Path] = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for used in re.findall(r"\bSHIXIN_[A-Z0-9_]*[A-Z0-9]\b", text):
                seen.setdefault(used, path)
    seen.pop("SHIXIN_X", None)  # a placeholder in a comment
    seen.pop("SHIXIN_HITLOG", None)  # README's example of a typo that stops the start
    seen.pop("SHIXIN_FORMAT", None)  # README's example of a flag no variable gives
    for name in [n for n in seen if SERVICE_LINK.fullmatch(n) or n.endswith("_CHECK_PORT")]:
        seen.pop(name)  # Kubernetes' service links, named in deploy/k8s comments
    assert {"SHIXIN_CONFIG", "SHIXIN_REDIS_PASSWORD", "SHIXIN_WORKERS"} <= set(seen)
    unknown = {
        name: str(path.relative_to(ROOT)) for name, path in seen.items() if name not in known
    }
    assert not unknown, unknown


def test_the_key_secret_variable_is_trimmed_as_the_file_is(tmp_path: Path) -> None:
    """``token_hex(32)`` and a newline (k8s secret.yaml's recipe), through
    ``secretKeyRef``: the same 64 bytes as the file form, not refused as 65."""
    value = "ab" * 32 + "\n"
    (tmp_path / "key").write_text(value)
    from_file = settings(["--demo", "--key-secret-file", str(tmp_path / "key")], clean_env())
    from_env = settings(["--demo"], clean_env(SHIXIN_KEY_SECRET=value))
    assert from_env.secret == from_file.secret == b"ab" * 32
    done = run_cli("load", str(write_jsonl(tmp_path / "l.jsonl", basic_rows())),
                   "--redis", "redis://127.0.0.1:1/0",
                   env=clean_env(SHIXIN_KEY_SECRET=f"  {value}"))  # fmt: skip
    assert "key secret" not in done.stderr, done.stderr  # past the secret, to Redis
    assert "cannot use Redis" in done.stderr, done.stderr


def test_a_missing_relative_path_is_named_where_it_was_looked_for(tmp_path: Path) -> None:
    """``list = "feed"`` in a config file elsewhere: read from the working directory,
    and the message says so with the absolute path."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "cwd").mkdir()
    config = tmp_path / "etc" / "shixin.toml"
    config.write_text('list = "feed"\n')
    done = subprocess.run(
        [*CLI, "serve", "--config", str(config)], capture_output=True, text=True,
        timeout=120, env=clean_env(), cwd=tmp_path / "cwd",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(
        f"config list: feed does not exist (looked for {tmp_path / 'cwd' / 'feed'}: relative "
        "paths are read from the working directory)"
    ), line


#: What Kubernetes puts in every pod's environment for deploy/k8s/service.yaml's Service
#: ``shixin-check`` (ports grpc 50051 and metrics 9464), unless ``enableServiceLinks: false``.
SERVICE_LINKS = {
    "SHIXIN_CHECK_SERVICE_HOST": "10.96.0.12",
    "SHIXIN_CHECK_SERVICE_PORT": "50051",
    "SHIXIN_CHECK_SERVICE_PORT_GRPC": "50051",
    "SHIXIN_CHECK_SERVICE_PORT_METRICS": "9464",
    "SHIXIN_CHECK_PORT": "tcp://10.96.0.12:50051",
    "SHIXIN_CHECK_PORT_50051_TCP": "tcp://10.96.0.12:50051",
    "SHIXIN_CHECK_PORT_50051_TCP_PROTO": "tcp",
    "SHIXIN_CHECK_PORT_50051_TCP_PORT": "50051",
    "SHIXIN_CHECK_PORT_50051_TCP_ADDR": "10.96.0.12",
    "SHIXIN_CHECK_PORT_9464_TCP": "tcp://10.96.0.12:9464",
}


def test_the_variables_kubernetes_makes_for_the_service_do_not_stop_a_start() -> None:
    """Every pod in the Service's namespace gets SHIXIN_CHECK_*: refusing unknown SHIXIN_
    names made serve, the loader Job's load and health exit 2 there (a crash loop)."""
    done = run_cli("validate", "--help", env=clean_env(**SERVICE_LINKS))
    assert done.returncode == 0, done.stderr
    got = settings(["--demo"], clean_env(**SERVICE_LINKS))
    assert got.listen == "127.0.0.1:50051"  # none of them read as a setting
    done = run_cli("health", "--target", "127.0.0.1:1", "--timeout", "0.5",
                   env=clean_env(**SERVICE_LINKS))  # fmt: skip
    assert done.returncode == 2 and "unknown variable" not in done.stderr, done.stderr
    done = run_cli("health", env=clean_env(**SERVICE_LINKS, SHIXIN_CHECK_TYPO="1"))
    assert "SHIXIN_CHECK_TYPO: unknown variable" in done.stderr  # a typo is still one
    shixin = {
        "SHIXIN_SERVICE_HOST": "10.96.0.13",
        "SHIXIN_SERVICE_PORT": "50051",
        "SHIXIN_PORT": "tcp://10.96.0.13:50051",
        "SHIXIN_PORT_50051_TCP_PORT": "50051",
    }
    assert (
        settings(["--demo"], clean_env(**shixin)).listen == "127.0.0.1:50051"
    )  # a Service `shixin`
    done = run_cli("health", env=clean_env(SHIXIN_METRICS_PORT="9464"))  # not a link's value
    assert "SHIXIN_METRICS_PORT: unknown variable" in done.stderr, done.stderr
