"""Builds ``loader/_rowcheck.c``, the load's row checker and column builder in C
(``loader/columns.py``), with the BLAKE2b reference code of ``loader/blake2/``.

Everything else about the package is in pyproject.toml. The extension is
optional: where it cannot be compiled, the package installs without it and
checks every row in Python (the same rows, the same columns, slower).
``SOURCE_DIGEST`` lets ``loader/columns.py`` refuse a build older than the
source beside it (a checkout edited without ``scripts/setup`` run again).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "loader/_rowcheck.c"
digest = hashlib.blake2b((Path(__file__).parent / SOURCE).read_bytes(), digest_size=16)
setup(
    ext_modules=[
        Extension(
            "shixin_check.loader._rowcheck",
            [SOURCE],
            depends=[str(p) for p in sorted(Path("loader/blake2").glob("*.[ch]"))],
            define_macros=[("SOURCE_DIGEST", f'"{digest.hexdigest()}"')],
            # the included BLAKE2 functions stay inside the module: no other library's
            # blake2b_* can stand in for them, nor they for another's
            extra_compile_args=["-fvisibility=hidden"],
            optional=True,
        )
    ]
)
