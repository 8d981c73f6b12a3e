"""Incoming messages are written to a spool file while DATA arrives, then fsynced
once, before delivery; they are never held whole in memory.

Headers that filters add are inserted after jdmail's own trace headers when the
file is committed, on the thread pool: the file is copied once (copy_file_range,
so the kernel does it) into a new file that replaces it. The same copy drops
``Authentication-Results:`` fields that claim to come from this server (RFC 8601
5: a forged one must not reach the user)."""

import itertools
import os
import re
import shutil
import time

MAX_HEADER_SCAN = 256 * 1024
_AR_NAME = re.compile(rb"(?i)authentication-results[ \t]*:")
_COMMENT = re.compile(rb"\([^()]*\)")

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
        self._file = os.fdopen(fd, "wb", buffering=64 * 1024)   # below malloc's mmap threshold: no mmap per message
        self.size = 0
        self.trace_len = 0

    def write_trace(self, data):
        """Write jdmail's trace headers (first, before any DATA): inserted headers go after them."""
        self.write(data)
        self.trace_len = self.size

    def write(self, data):
        self._file.write(data)
        self.size += len(data)

    def flush(self):
        """Hand what is buffered to the kernel, so others can read the whole file."""
        self._file.flush()

    def commit(self, insert=b"", authserv_id=None):
        """Flush and fsync; after this the file survives a crash. Blocking.

        ``insert`` (bytes, complete header lines) goes after the trace headers; with
        ``authserv_id`` the message's Authentication-Results fields naming it are dropped."""
        self._file.flush()
        if insert or (authserv_id and self._forged(authserv_id)):
            self._rewrite(insert, authserv_id)
        else:
            os.fsync(self._file.fileno())
        self._file.close()

    def _header_region(self, f):
        """(header bytes, offset of the body) of the message after the trace headers."""
        f.seek(self.trace_len)
        data = f.read(MAX_HEADER_SCAN)
        if data.startswith(b"\r\n"):
            return b"", self.trace_len
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return b"", self.trace_len
        return data[:end + 2], self.trace_len + end + 2

    @staticmethod
    def _fields(header):
        fields = []
        for line in header.split(b"\r\n")[:-1]:
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += b"\r\n" + line
            else:
                fields.append(line)
        return [f + b"\r\n" for f in fields]

    @staticmethod
    def _names_us(field, authserv_id):
        m = _AR_NAME.match(field)
        if not m:
            return False
        value = _COMMENT.sub(b" ", field[m.end():])
        ident = value.split(b";", 1)[0].split()
        return bool(ident) and ident[0].decode("ascii", "replace").lower() == authserv_id.lower()

    def _forged(self, authserv_id):
        with open(self.path, "rb") as f:
            header, _body = self._header_region(f)
        return any(self._names_us(field, authserv_id) for field in self._fields(header))

    def _rewrite(self, insert, authserv_id):
        new = self.path + ".new"
        with open(self.path, "rb") as src, open(new, "wb") as out:
            trace = src.read(self.trace_len)
            header, body_at = self._header_region(src)
            kept = [f for f in self._fields(header) if not (authserv_id and self._names_us(f, authserv_id))]
            out.write(trace + insert + b"".join(kept))
            out.flush()
            src.seek(body_at)
            total = os.fstat(src.fileno()).st_size - body_at
            try:
                while total > 0:
                    n = os.copy_file_range(src.fileno(), out.fileno(), total)
                    if n == 0:
                        break
                    total -= n
            except (AttributeError, OSError):
                out.seek(0, os.SEEK_END)
                src.seek(os.fstat(src.fileno()).st_size - total)
                shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.rename(new, self.path)
        self.size = os.stat(self.path).st_size

    def discard(self):
        """Close and remove; safe to call more than once."""
        if not self._file.closed:
            self._file.close()
        for path in (self.path, self.path + ".new"):
            try:
                os.unlink(path)
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
