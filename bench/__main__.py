"""``python -m bench`` (what bench/run executes)."""

import logging
import signal
import sys

from bench.cli import main


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like ^C, so the servers the run started are stopped by
    their finally blocks instead of being left behind."""


def _terminated(_signum, _frame):
    raise Terminated()


signal.signal(signal.SIGTERM, _terminated)
try:
    sys.exit(main())
except (Terminated, KeyboardInterrupt):
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)   # the cancelled clients' noise
    print("bench: stopped; the servers it started are stopped and its temp dir removed", file=sys.stderr)
    sys.exit(143)
