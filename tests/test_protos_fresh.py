"""The checked-in generated code is what scripts/gen-protos makes now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("check_pb2.py", "check_pb2.pyi", "check_pb2_grpc.py")


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}  # the test's own venv, whatever PATH says
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True, timeout=120, env=env
    )
    for name in GENERATED:
        fresh = (tmp_path / "shixin" / "v1" / name).read_text()
        checked_in = (ROOT / "protos" / "shixin" / "v1" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run scripts/gen-protos"
