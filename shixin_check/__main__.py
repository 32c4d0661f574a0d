"""``python -m shixin_check``: the console script."""

import sys

from shixin_check.cli import main

sys.exit(main())
