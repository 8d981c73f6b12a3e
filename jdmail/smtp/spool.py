"""Incoming messages are written to a spool file while DATA arrives, then fsynced
once, before delivery; they are never held whole in memory."""

import itertools
import os
import time

_counter = itertools.count()


def new_queue_id():
    """A short, unique, roughly time-ordered id for one accepted message."""
    return f"{time.time_ns() // 1000:013X}{os.getpid() % 4096:03X}{next(_counter) % 65536:04X}"


class SpoolFile:
    """One message being received. ``write`` buffers in the page cache; ``commit``
    (blocking: run it on the thread pool) flushes and fsyncs; ``discard`` removes it."""

    def __init__(self, directory, queue_id):
        self.queue_id = queue_id
        self.path = os.path.join(directory, queue_id)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=256 * 1024)
        self.size = 0

    def write(self, data):
        self._file.write(data)
        self.size += len(data)

    def commit(self):
        """Flush and fsync; after this the file survives a crash. Blocking."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self):
        """Close and remove; safe to call more than once."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def clean_spool(directory):
    """Remove leftovers of interrupted transactions (never acknowledged). Returns how many."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    removed = 0
    for name in os.listdir(directory):
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError:
            pass
    return removed
