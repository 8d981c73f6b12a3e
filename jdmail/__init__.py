"""jdmail: a mail server for organisations, built on Twisted."""

__version__ = "0.1.0"
