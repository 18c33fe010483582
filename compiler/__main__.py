import sys

from aglmc.compiler.cli import main

sys.exit(main())
