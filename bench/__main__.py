"""``python -m bench`` (what bench/run executes)."""

import sys

from bench.cli import main

sys.exit(main())
