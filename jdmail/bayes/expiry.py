"""Token expiry: forgetting old, rarely seen tokens, as SpamAssassin's bayes_expiry and
bogofilter's ``bogoutil -a AGE -c COUNT`` do, so the token tables stop growing with
every new word spammers make up while what the classifier leans on stays.

A token goes when it was last trained more than ``max_age`` ago and occurs in at most
``max_count`` trained messages. Message totals stay as they are (the classifier's
priors come from them). ``jdmailctl bayes expire`` runs it by hand; the bayes filter
runs it on its own once a day (``[filter:bayes] token_expiry``).
"""

import time

from twisted.logger import Logger

__all__ = ["expire", "AutoExpiry", "DAY"]

DAY = 86400.0


def expire(store, max_age, max_count, owner=None, now=None):
    """Prune ``store`` (a TokenStore; blocking); returns the number of tokens deleted."""
    now = time.time() if now is None else now
    return store.prune(now - max_age, max_count, owner)


class AutoExpiry:
    """Runs :func:`expire` on ``services``' thread pool at most once per ``interval``,
    started by ``due()`` from the filter; never in the way of a message (not awaited,
    failures only logged)."""

    log = Logger()

    def __init__(self, store, services, max_age, max_count, interval=DAY, clock=time.time):
        self.store, self.services = store, services
        self.max_age, self.max_count, self.interval = max_age, max_count, interval
        self._clock = clock
        self._last = None
        self._running = None

    def due(self):
        """Start an expiry run when none ran within ``interval``; returns its Deferred
        (or None when nothing was started)."""
        now = self._clock()
        if self.max_age <= 0 or self._running is not None or \
                (self._last is not None and now - self._last < self.interval):
            return None
        self._last = self._running = now
        d = self.services.run_blocking(expire, self.store, self.max_age, self.max_count, None, now)
        d.addCallbacks(self._done, self._failed)
        d.addBoth(self._finished)
        return d

    def _done(self, deleted):
        self.log.info("bayes expiry: deleted {n} token(s) not trained for {days:g} days and seen in "
                      "at most {count} message(s)", n=deleted, days=self.max_age / DAY, count=self.max_count)
        return deleted

    def _failed(self, failure):
        self.log.warn("bayes expiry failed: {error}", error=failure.getErrorMessage())
        return None

    def _finished(self, result):
        self._running = None
        return result
