"""Maildir file-level helpers shared by delivery (maildir.py) and the IMAP folders
(folders.py): unique names, the ``:2,<letters>`` info part, fsync of directories,
sizes and line ends of files written by other programs.
"""

import errno
import functools
import io
import itertools
import os
import re
import socket
import stat
import time

__all__ = ["DIR_MODE", "FILE_MODE", "LINK_FALLBACK", "MAILDIR_FLAGS", "FLAG_LETTERS", "SYSTEM_FLAGS",
           "fsync_dir", "unique_name", "split_name", "join_name", "info_flags", "make_info",
           "order_key", "size_fields", "scan_crlf_size", "read_crlf", "open_nofollow", "ensure_maildir_dirs"]

DIR_MODE = 0o700
FILE_MODE = 0o600
LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
# Maildir flag letter -> IMAP system flag
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {flag: letter for letter, flag in MAILDIR_FLAGS.items()}
SYSTEM_FLAGS = frozenset(FLAG_LETTERS)

_counter = itertools.count(1)
_SIZE_RE = re.compile(r",([SW])=(\d+)")
_ORDER_RE = re.compile(r"^(\d+)(?:\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?)?")


def _hostname():
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


HOST = _hostname()


def unique_name(size, extra=""):
    """A fresh Dovecot-style base name: ``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>``."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{HOST},S={size}{extra}"


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_name(filename):
    """"base:2,FS" -> ("base", "2,FS"); a name without ":" has the info ""."""
    base, _, info = filename.partition(":")
    return base, info


def join_name(base, info):
    return f"{base}:{info}" if info else base


@functools.lru_cache(maxsize=512)
def info_flags(info):
    """The IMAP system flags an info part carries ("2,FS" -> {\\Flagged, \\Seen});
    remembered, as a mailbox's names carry only a few distinct info parts."""
    if not info.startswith("2,"):
        return frozenset()
    return frozenset(MAILDIR_FLAGS[c] for c in info[2:] if c in MAILDIR_FLAGS)


def make_info(old_info, flags):
    """The info part for IMAP ``flags``, keeping letters of ``old_info`` that are not
    IMAP system flags (e.g. "P" passed, Dovecot's keyword letters a-z)."""
    keep = set(old_info[2:]) - set(MAILDIR_FLAGS) if old_info.startswith("2,") else set()
    letters = keep | {FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS}
    return "2," + "".join(sorted(letters))


def order_key(name, mtime):
    """Delivery order of a file: the time in its name when it has one, else its mtime."""
    m = _ORDER_RE.match(name)
    if m:
        return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), name)
    return (int(mtime), 0, 0, name)


def size_fields(base):
    """(S, W) from a base name's ``,S=`` and ``,W=`` fields (None when absent)."""
    found = {"S": None, "W": None}
    for key, value in _SIZE_RE.findall(base):
        found[key] = int(value)
    return found["S"], found["W"]


def scan_crlf_size(path):
    """(size with CRLF line ends, whether the file has bare LFs), reading the file."""
    size = 0
    bare = 0
    prev = b""
    with open_nofollow(path) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            n = chunk.count(b"\n")
            if n:
                n -= chunk.count(b"\r\n")
                if chunk[0:1] == b"\n" and prev == b"\r":
                    n -= 1
            bare += n
            prev = chunk[-1:]
    return size + bare, bare > 0


_BARE_LF = re.compile(rb"(?<!\r)\n")


def read_crlf(path):
    """The file's octets with bare LFs turned into CRLF, as a BytesIO (for the few
    messages other programs wrote with LF line ends)."""
    with open_nofollow(path) as f:
        return io.BytesIO(_BARE_LF.sub(b"\r\n", f.read()))


def open_nofollow(path):
    """open(path, "rb") that refuses a symlink."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


def ensure_maildir_dirs(path, marker=False):
    """Give an existing directory tmp/ new/ cur/ (and a ``maildirfolder`` file for a
    Maildir++ subfolder); refuse symlinks. Returns True when something was created."""
    made = False
    for sub in ("tmp", "new", "cur"):
        p = os.path.join(path, sub)
        try:
            os.mkdir(p, DIR_MODE)
            made = True
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", p)
    if marker:
        p = os.path.join(path, "maildirfolder")
        if not os.path.lexists(p):
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                             FILE_MODE))
            made = True
    if made:
        fsync_dir(path)
    return made
