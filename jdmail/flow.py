"""Back-pressure for long responses (POP3 RETR, IMAP FETCH) written by a coroutine."""

from twisted.internet import defer, interfaces
from zope.interface import implementer


@implementer(interfaces.IPushProducer)
class Throttle:
    """Registered with the transport while a long response streams: lets the
    writer wait while the transport's buffer is full."""

    def __init__(self):
        self.paused = self.stopped = False
        self._waiter = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def stopProducing(self):
        self.stopped = True
        self.resumeProducing()

    def wait(self):
        """A Deferred that fires when the transport wants more data."""
        if not self.paused:
            return defer.succeed(None)
        self._waiter = defer.Deferred()
        return self._waiter
