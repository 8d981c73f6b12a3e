"""The cross-process lock of one Maildir index (several jdmail processes or nodes on
one mail tree).

Every operation on a user's index or Maildir files (``AccountState.call``) holds it,
besides the process's own DeferredLock, so processes take turns on a mailbox as the
sessions of one process do. It is an ``flock`` on ``Maildir/jdmail-index.lock``.

Taking it costs no thread hand-over when nobody else holds it: ``try_acquire`` is a
non-blocking flock on the reactor thread. When another process holds it, ``wait``
blocks in a ``LockWaiters`` thread, never in the jdmail pool: a pool thread blocked on
another process's lock while that process's lock holder waits for a pool thread of
ours (blocked on our lock) would deadlock both.

Fairness: flock hands nothing over; a process that releases and takes the lock again
in the same reactor turn would starve a waiter in another process. So a second file,
``jdmail-index.lock-turn``, is a turnstile: a waiter holds it while it blocks on the
lock, and ``try_acquire`` gives up when it cannot take the turnstile, so it queues
behind that waiter. Processes under load alternate.

The descriptors are opened with O_CLOEXEC and belong to this process: a forked child
must not use an AccountState made before the fork (flock locks follow the open file,
so parent and child would not exclude each other).
"""

import fcntl
import os
import queue
import threading

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["LOCK_NAME", "TURN_NAME", "IndexLock", "LockWaiters", "hold"]

LOCK_NAME = "jdmail-index.lock"
TURN_NAME = "jdmail-index.lock-turn"
_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class IndexLock:
    """The cross-process lock of the index in one Maildir (see the module docstring)."""

    def __init__(self, maildir):
        self.maildir = maildir
        self._turn = self._main = None

    @property
    def ready(self):
        return self._main is not None

    def open(self):
        """Open (creating) the lock files; blocking (a pool thread). The Maildir exists."""
        if self._main is None:
            turn = os.open(os.path.join(self.maildir, TURN_NAME), _FLAGS, 0o600)
            try:
                main = os.open(os.path.join(self.maildir, LOCK_NAME), _FLAGS, 0o600)
            except BaseException:
                os.close(turn)
                raise
            self._turn, self._main = turn, main

    def try_acquire(self):
        """Take the lock without waiting; False when another process holds it or waits for it."""
        try:
            fcntl.flock(self._turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def acquire(self):
        """Take the lock, waiting for it (a LockWaiters thread)."""
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._main, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def release(self):
        if self._main is not None:      # (None: closed meanwhile, which released it)
            fcntl.flock(self._main, fcntl.LOCK_UN)

    def close(self):
        """Close the descriptors (which releases the lock if held)."""
        fds, self._turn, self._main = (self._turn, self._main), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)


class LockWaiters:
    """Daemon threads that wait for contended IndexLocks (one per waiting mailbox at a
    time: the AccountState's DeferredLock lets one call per process wait). Idle threads
    are kept for the next wait, at most ``keep`` of them. Daemon threads, so a lock that
    another process never gives back (a stopped process) cannot hold up our exit."""

    keep = 4

    def __init__(self, reactor):
        self.reactor = reactor
        self._jobs = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._idle = 0

    def wait(self, lock):
        """A Deferred that fires (on the reactor) once ``lock`` is held."""
        d = Deferred()
        self._jobs.put((lock, d))
        with self._mutex:
            if self._idle > 0:
                self._idle -= 1         # an idle thread takes it
                return d
        threading.Thread(target=self._run, name="jdmail-index-lock", daemon=True).start()
        return d

    def _run(self):
        while True:
            lock, d = self._jobs.get()
            try:
                lock.acquire()
            except BaseException:
                self.reactor.callFromThread(d.errback, Failure())
            else:
                self.reactor.callFromThread(d.callback, None)
            with self._mutex:
                if self._idle >= self.keep:
                    return
                self._idle += 1


class hold:
    """``with hold(maildir):`` -- the index lock taken by a blocking program (jdmailctl),
    when the lock files exist (else no jdmail process has used this index: nothing to
    wait for, and a file created by root here could not be opened by the server)."""

    def __init__(self, maildir):
        self.maildir = maildir
        self._fds = []

    def __enter__(self):
        for name in (TURN_NAME, LOCK_NAME):
            try:
                self._fds.append(os.open(os.path.join(self.maildir, name),
                                         os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)))
            except FileNotFoundError:
                break
        if len(self._fds) == 2:
            turn, main = self._fds
            fcntl.flock(turn, fcntl.LOCK_EX)
            try:
                fcntl.flock(main, fcntl.LOCK_EX)
            finally:
                fcntl.flock(turn, fcntl.LOCK_UN)
        return self

    def __exit__(self, *exc):
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        return False
