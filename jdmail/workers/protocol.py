"""The control channel between the master and one worker: AMP over a socketpair.

Worker -> master: Hello (ready; answered with the master's listening addresses),
OpenConnection/CloseConnection (the global limits: connections per protocol and client
IP, IMAP sessions per user), Usage and JunkFolder (asked of the master's store),
Delivered and Changed (wake IMAP IDLE sessions in every process), Queued (the queue
runner scans at once). Master -> worker: Delivered and Changed, passed on from another
process. Log events travel over the worker's stdout instead (jdmail.workers.logrelay)."""

from twisted.protocols import amp


class StoreFailed(Exception):
    """The master's store could not answer (the worker logs it like a local failure)."""


class Hello(amp.Command):
    arguments = [(b"pid", amp.Integer())]
    response = [(b"addresses", amp.ListOf(amp.Unicode()))]


class OpenConnection(amp.Command):
    """Count a connection (``kind``: smtp, pop3, imap; imap-user counts a user's IMAP
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
