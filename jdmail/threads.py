"""jdmail's pool of threads for blocking work (fsync, SQLite, password hashing).

Twisted's ThreadPool hands each call through its Team/LockWorker coordinators, copies
the logging context and wraps the result twice; per SMTP message and per IMAP command
that was a tenth of the reactor's time. This pool is a C queue
(``queue.SimpleQueue``) and up to ``size`` threads, started as work arrives; each
result reaches the reactor through one ``callFromThread``."""

import queue
import threading

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["BlockingPool"]

_STOP = object()


class BlockingPool:
    """``run(f, *args, **kwargs)`` -> Deferred of ``f``'s result, ``f`` run on one of
    at most ``size`` threads. Work queued before ``start`` waits for it; ``stop``
    lets queued work finish, then joins the threads."""

    def __init__(self, reactor, size, name="jdmail"):
        self.reactor = reactor
        self.max = max(1, size)
        self.name = name
        self.started = False
        self._queue = queue.SimpleQueue()
        self._threads = []
        self._idle = 0
        self._waiting = 0       # queued items no thread has taken yet
        self._lock = threading.Lock()

    def start(self):
        with self._lock:
            self.started = True
            want = min(self.max, self._waiting) - len(self._threads)
            for _ in range(want):
                self._spawn()

    def stop(self, timeout=60):
        """Queued work is done first; then every thread ends (joined up to ``timeout`` s)."""
        with self._lock:
            self.started = False
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        for t in threads:
            t.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self._queue.put((d, f, args, kwargs))
        with self._lock:
            self._waiting += 1
            if self.started and self._idle < self._waiting and len(self._threads) < self.max:
                self._spawn()
        return d

    def _spawn(self):
        """(lock held)"""
        t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self):
        get, lock, call = self._queue.get, self._lock, self.reactor.callFromThread
        while True:
            with lock:
                self._idle += 1
            item = get()
            with lock:
                self._idle -= 1
                if item is not _STOP:
                    self._waiting -= 1
            if item is _STOP:
                return
            d, f, args, kwargs = item
            del item
            try:
                result = f(*args, **kwargs)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)
                del result
            del d, f, args, kwargs
