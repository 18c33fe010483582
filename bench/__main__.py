"""``python -m bench``: see ``python -m bench --help`` and bench/__init__.py."""

import sys

from bench.cli import main

sys.exit(main())
