"""Connection reuse for the queue runner: open SMTP sessions waiting, per destination,
for the next due transaction (as Postfix's connection cache does).

After a transaction the runner ``give``s its session back; the next transaction for the
same destination (recipient domain, or relay) ``take``s it, which sends RSET and uses
the connection only when the server answers 250 -- otherwise it is closed and the caller
connects afresh. A session idle for ``idle_time`` seconds, or used ``max_uses`` times,
is closed with QUIT.
"""

from twisted.internet import defer


class ConnectionCache:
    """Idle :class:`~jdmail.queue.client.SMTPSession` objects by destination key."""

    def __init__(self, reactor, idle_time=2.0, max_uses=100, max_idle=5):
        self.reactor = reactor
        self.idle_time = idle_time
        self.max_uses = max_uses
        self.max_idle = max_idle          # per destination
        self._idle = {}                   # key -> [(session, delayed call)]
        self._closing = set()
        self.reused = 0                   # transactions that found a connection here

    @property
    def enabled(self):
        return self.idle_time > 0

    async def take(self, key):
        """An open session for ``key`` that answered RSET with 250, or None."""
        waiting = self._idle.get(key)
        while waiting:
            session, timer = waiting.pop()
            if timer.active():
                timer.cancel()
            if await session.reset():
                self.reused += 1
                return session
            self._close(session)
        return None

    def give(self, key, session):
        """Keep ``session`` for the next transaction to ``key``, or close it."""
        waiting = self._idle.setdefault(key, [])
        if (not self.enabled or not session.usable or session.transactions >= self.max_uses
                or len(waiting) >= self.max_idle):
            self._close(session)
            return
        entry = []

        def expire():
            if entry[0] in waiting:
                waiting.remove(entry[0])
            self._close(session)
        timer = self.reactor.callLater(self.idle_time, expire)
        entry.append((session, timer))
        waiting.append(entry[0])

    def idle(self, key=None):
        """How many sessions are waiting (for ``key``, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def _close(self, session):
        d = defer.ensureDeferred(session.close())
        self._closing.add(d)
        d.addBoth(lambda _r: self._closing.discard(d))

    def close_all(self):
        """Close every idle session; a Deferred firing when they are closed."""
        for waiting in self._idle.values():
            for session, timer in waiting:
                if timer.active():
                    timer.cancel()
                self._close(session)
        self._idle.clear()
        return defer.DeferredList(list(self._closing), consumeErrors=True)
