"""What ``twistd jdmail`` runs: command-line options and makeService."""

import os
import sys

from twisted.python import usage

from jdmail.errors import ConfigErrors


class Options(usage.Options):
    """twistd jdmail [--config FILE] [--datadir DIR]"""

    synopsis = "[--config FILE] [--datadir DIR]"
    longdesc = ("Run the jdmail mail server. With no --config (and no $JDMAIL_CONFIG, which "
                "jdmailctl reads too), runs on the embedded default: SQLite directory, Maildir "
                "store and a self-signed certificate under the data directory (/var/lib/jdmail "
                "for root, ~/.local/share/jdmail otherwise).")
    optParameters = [
        ["config", "c", None, "INI file (default: $JDMAIL_CONFIG, else the embedded default)", None],
        ["datadir", "d", None, "data directory (overrides [jdmail] datadir)", None],
    ]

    def postOptions(self):
        # Problems are reported here, before twistd starts anything, one line each;
        # a UsageError would make twistd print its whole help text first.
        from jdmail import config
        if self["config"] is None:
            # the same default as jdmailctl, so both always use one directory
            self["config"] = os.environ.get("JDMAIL_CONFIG") or None
        try:
            self.settings = config.load(self["config"], datadir=self["datadir"])
        except ConfigErrors as e:
            fail(e)


def fail(errors):
    """Print each problem on one line to stderr and exit 1."""
    for line in str(errors).splitlines():
        print(f"jdmail: {line}", file=sys.stderr)
    raise SystemExit(1)


def makeService(options):
    from twisted.internet import reactor

    from jdmail.service import make_service
    try:
        return make_service(options.settings, reactor)
    except ConfigErrors as e:
        fail(e)
