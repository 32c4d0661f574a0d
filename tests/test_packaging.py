"""The wheel installs exactly two import names: shixin_check and shixin.

Built for real with pip (no build isolation, so no network), then read as the
zip it is: its top-level names, that the mapped folders are inside it as
files (not the checkout's symlinks), and the console script's entry point.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_shixin_check_and_shixin_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("shixin_check-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top == {"shixin_check", "shixin"}
    for module in (
        "shixin_check/cli.py",
        "shixin_check/server/app.py",
        "shixin_check/loader/versions.py",
        "shixin_check/loader/synthetic/generator.py",
        "shixin_check/clients/check_client.py",
        "shixin_check/domain/decision.py",
        "shixin/v1/check_pb2.py",
        "shixin_check/py.typed",
    ):
        assert module in names, module
    # the load's row checker, compiled (setup.py): a wheel built here carries it
    assert any(n.startswith("shixin_check/loader/_rowcheck.") and n.endswith(".so") for n in names)
    assert "shixin_check/loader/_rowcheck.pyi" in names
    # ...but not the sources it was built from (the C and the vendored BLAKE2 code)
    assert [n for n in names if n.endswith((".c", ".h")) or "/blake2/" in n] == []
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "shixin-check = shixin_check.cli:main" in text


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """From the checkout the folders are importable bare too (``server``): every module
    must use ``shixin_check.*``, or one module would load twice under two names."""
    code = (
        "import sys, shixin_check.cli, shixin_check.server.app, shixin_check.server.workers, "
        "shixin_check.clients.aio, shixin_check.loader.publish_redis, shixin_check.server.prefilter;"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('server', 'loader', 'clients', 'domain', 'shixin_domain')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_the_client_library_loads_none_of_the_server_but_its_request_conversion() -> None:
    """A gateway imports ``shixin_check.clients``: a client certificate is dated by
    ``domain.certificates``, not by the server's settings (which pulled in the
    server's command line). Only the prefilter uses the server's ``convert``, to key
    a subject exactly as the server does."""
    code = (
        "import sys, pkgutil, importlib, shixin_check.clients as c;"
        "[importlib.import_module('shixin_check.clients.' + m.name) for m in pkgutil.iter_modules(c.__path__)];"
        "print(sorted(n for n in sys.modules if n.startswith(('shixin_check.server', 'shixin_check.loader'))))"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)  # fmt: skip
    assert done.stdout.strip() == "['shixin_check.server', 'shixin_check.server.convert']"
