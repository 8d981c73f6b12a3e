"""The control channel between the master and one worker: AMP over a socketpair.

Worker -> master: Hello (ready; answered with the master's listening addresses, the
log files the worker writes its lines to, jdmail.workers.logfiles, and its share of the
SMTP connection limits), Borrow/GiveBack (SMTP credit beyond the share,
jdmail.workers.leases), OpenConnection/CloseConnection (the global limits of POP3 and
IMAP connections per client IP, IMAP sessions per user), Usage and JunkFolder (asked of
the master's store), Delivered and Changed (wake IMAP IDLE sessions in every process),
Queued (the queue runner scans at once). Master -> worker: Delivered and Changed, passed
on from another process; Lend and Grant (SMTP credit). When the master logs elsewhere
than to files, log events travel over the worker's stdout (jdmail.workers.logrelay)."""

from twisted.protocols import amp


class StoreFailed(Exception):
    """The master's store could not answer (the worker logs it like a local failure)."""


class Hello(amp.Command):
    arguments = [(b"pid", amp.Integer())]
    response = [(b"addresses", amp.ListOf(amp.Unicode())),
                (b"log_files", amp.ListOf(amp.Unicode())),     # empty: send the events to the master
                (b"workers", amp.Integer()),                   # the shares of the limits: 1/workers
                (b"deficit_keys", amp.ListOf(amp.Unicode())),  # credit lent by this worker's predecessor
                (b"deficits", amp.ListOf(amp.Integer()))]


class Borrow(amp.Command):
    """One SMTP credit of each limit ``keys`` (jdmail.workers.leases) for a connection from ``ip``."""
    arguments = [(b"ip", amp.Unicode()), (b"keys", amp.ListOf(amp.Unicode()))]
    response = [(b"refusal", amp.Unicode())]       # "" = granted


class GiveBack(amp.Command):
    arguments = [(b"key", amp.Unicode()), (b"n", amp.Integer())]
    requiresAnswer = False


class Lend(amp.Command):
    """Master -> worker: give up one unused SMTP credit of ``key`` if there is one."""
    arguments = [(b"key", amp.Unicode())]
    response = [(b"lent", amp.Boolean())]


class Grant(amp.Command):
    """Master -> worker: ``n`` SMTP credits of ``key`` it lent are its own again."""
    arguments = [(b"key", amp.Unicode()), (b"n", amp.Integer())]
    requiresAnswer = False


class OpenConnection(amp.Command):
    """Count a connection (``kind``: pop3, imap; imap-user counts a user's IMAP
    sessions, ``ip`` being the user name)."""
    arguments = [(b"ip", amp.Unicode()), (b"kind", amp.Unicode(optional=True))]
    response = [(b"refusal", amp.Unicode())]       # "" = admitted and counted


class CloseConnection(amp.Command):
    arguments = [(b"ip", amp.Unicode()), (b"kind", amp.Unicode(optional=True))]
    requiresAnswer = False


class Usage(amp.Command):
    arguments = [(b"mailbox", amp.Unicode())]
    response = [(b"used", amp.Integer()), (b"messages", amp.Integer())]
    errors = {StoreFailed: b"STORE_FAILED"}


class JunkFolder(amp.Command):
    arguments = [(b"mailbox", amp.Unicode())]
    response = [(b"folder", amp.Unicode())]
    errors = {StoreFailed: b"STORE_FAILED"}


class Delivered(amp.Command):
    """Messages were linked into these mailboxes' folders (parallel lists)."""
    arguments = [(b"mailboxes", amp.ListOf(amp.Unicode())), (b"folders", amp.ListOf(amp.Unicode()))]
    requiresAnswer = False


class Changed(amp.Command):
    """A process committed a change to this mailbox's index (IMAP, POP3)."""
    arguments = [(b"mailbox", amp.Unicode())]
    requiresAnswer = False


class Queued(amp.Command):
    requiresAnswer = False


class QuietAMP(amp.AMP):
    """AMP without its two log lines per connection (a worker's channel is not news)."""

    def makeConnection(self, transport):
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason):
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
