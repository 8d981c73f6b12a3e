"""The Maildir message store (the default ``[store] type = maildir``).

Layout: a mailbox key ``"domain/local"`` (Account.mailbox) lives in
``<root>/<domain>/<local>/Maildir/``; INBOX is that Maildir, other folders are
Maildir++ subfolders ``Maildir/.Name/``. Directories are created on first use,
mode 0700.

Messages are stored exactly as the SMTP server received them, with CRLF line
ends (like Dovecot with ``mail_save_crlf = yes``). So the ``,S=<size>`` in a
file name, the file size and the size a POP3/IMAP client receives are one and
the same number; nothing is converted on the way out.

File names follow Dovecot: ``<time>.M<usec>P<pid>Q<counter>.<host>,S=<size>``,
plus ``:2,<flags>`` once a message is in ``cur/``. The name without the
``:2,...`` suffix is the message's key: stable across restarts and across the
move from ``new/`` to ``cur/``, and used as the POP3 UIDL (when it is not
printable ASCII of at most 70 characters, the key is the SHA-1 hex of it).

Delivery hard-links the SMTP server's fsynced spool file into every
recipient's ``new/`` (one copy on disk for all recipients; the spool file must
only be unlinked afterwards, never rewritten). When a link is impossible
(another file system, EPERM, EMLINK) the file is copied into ``tmp/``, fsynced
and renamed into ``new/``. Each ``new/`` directory is fsynced once before
delivery returns. All blocking work runs on jdmail's thread pool.
"""

import errno
import hashlib
import itertools
import os
import re
import shutil
import socket
import time

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import IMailboxStore, IMessageStore, IStoreFactory, MessageInfo, Option

__all__ = ["MaildirStore", "MaildirMailbox", "MaildirStoreFactory", "message_key"]

DIR_MODE = 0o700
FILE_MODE = 0o600
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
_counter = itertools.count(1)
_SIZE_RE = re.compile(r",S=(\d+)")
_ORDER_RE = re.compile(r"^(\d+)(?:\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?)?")
# Maildir flag letter -> IMAP system flag (MessageInfo.flags holds the IMAP names).
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}


def _hostname():
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


def message_key(filename):
    """The stable key (POP3 UIDL) of a Maildir file name: the name without ``:2,flags``,
    or the SHA-1 hex of that when it is not 1-70 printable ASCII characters."""
    base = filename.split(":", 1)[0]
    if 0 < len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def _order(name, path):
    m = _ORDER_RE.match(name)
    if m:
        return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), name)
    try:
        mtime = int(os.stat(path).st_mtime)
    except OSError:
        mtime = 0
    return (mtime, 0, 0, name)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_part(part, what):
    if (not isinstance(part, str) or not part or part in (".", "..") or part.startswith(".")
            or any(c in part for c in "/\\\x00")):
        raise ValueError(f"unsafe {what} {part!r}")


@implementer(IMailboxStore)
class MaildirMailbox:
    """One folder (one Maildir) of one mailbox key.

    ``list`` and ``remove`` run on the thread pool; ``open`` is a plain open().
    The key -> file map from the last ``list`` is kept, and re-read when a
    file has moved (e.g. new/ -> cur/ by another session).
    """

    def __init__(self, store, key, folder, path):
        self.store, self.key, self.folder, self.path = store, key, folder, path
        self._files = {}      # message key -> path relative to self.path ("cur/NAME")

    def __repr__(self):
        return f"<MaildirMailbox {self.key} {self.folder}>"

    async def list(self):
        return await self.store._services.run_blocking(self._list_sync)

    def _scan(self):
        self.store._ensure_maildir(self.path)
        found = {}
        entries = []
        for sub in ("new", "cur"):
            with os.scandir(os.path.join(self.path, sub)) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    try:
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    key = message_key(name)
                    if key in found:
                        continue
                    found[key] = f"{sub}/{name}"
                    entries.append((key, sub, name, entry.path))
        self._files = found
        return entries

    def _list_sync(self):
        infos = []
        for key, sub, name, path in self._scan():
            base, _, info = name.partition(":")
            m = _SIZE_RE.search(base)
            if m:
                size = int(m.group(1))
            else:
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    continue
            flags = frozenset()
            if sub == "cur" and info.startswith("2,"):
                flags = frozenset(MAILDIR_FLAGS[c] for c in info[2:] if c in MAILDIR_FLAGS)
            infos.append((_order(name, path), MessageInfo(key=key, size=size, flags=flags)))
        infos.sort(key=lambda pair: pair[0])
        return [info for _, info in infos]

    def _locate(self, key):
        rel = self._files.get(key)
        if rel is not None and os.path.exists(os.path.join(self.path, rel)):
            return os.path.join(self.path, rel)
        self._scan()
        rel = self._files.get(key)
        if rel is None:
            return None
        return os.path.join(self.path, rel)

    def open(self, key):
        """Return the message file opened for binary reading; FileNotFoundError if gone."""
        for _ in range(3):
            path = self._locate(key)
            if path is None:
                break
            try:
                return open(path, "rb")
            except FileNotFoundError:
                continue        # moved between locate and open: look again
        raise FileNotFoundError(errno.ENOENT, f"no message {key!r} in {self!r}")

    async def remove(self, keys):
        keys = list(keys)
        if keys:
            await self.store._services.run_blocking(self._remove_sync, keys)

    def _remove_sync(self, keys):
        dirs = set()
        for key in keys:
            for _ in range(3):
                path = self._locate(key)
                if path is None:
                    break       # already gone (another session removed it)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                dirs.add(os.path.dirname(path))
                self._files.pop(key, None)
                break
        for d in sorted(dirs):
            _fsync_dir(d)


@implementer(IMessageStore)
class MaildirStore:
    """Maildirs under one root; see the module docstring for the layout."""

    log = Logger()

    def __init__(self, root, services, name="maildir"):
        self.name = name
        self.root = os.path.realpath(os.path.abspath(os.path.expanduser(root)))
        self._services = services
        self._ready = set()          # Maildir paths known to have tmp/ new/ cur/
        self._host = _hostname()
        self._pid = os.getpid()

    # --- paths -----------------------------------------------------------------------------

    def maildir_path(self, mailbox, folder="INBOX"):
        """The Maildir directory of one folder of a mailbox key; ValueError when unsafe."""
        if not isinstance(mailbox, str):
            raise ValueError(f"unsafe mailbox key {mailbox!r}")
        parts = mailbox.split("/")
        if len(parts) != 2:
            raise ValueError(f"unsafe mailbox key {mailbox!r}: expected 'domain/local'")
        for part in parts:
            _check_part(part, "mailbox key part")
        path = os.path.join(self.root, parts[0], parts[1], "Maildir")
        if folder.upper() != "INBOX":
            for part in folder.split("."):
                _check_part(part, "folder name")
            path = os.path.join(path, "." + folder)
        real = os.path.realpath(path)
        if not real.startswith(self.root + os.sep):
            raise ValueError(f"unsafe mailbox key {mailbox!r}: outside the mail root")
        return real

    def _ensure_maildir(self, path):
        """Create ``path`` (and its parents under root) with tmp/ new/ cur/, durably."""
        if path in self._ready:
            return
        made = []
        todo = []
        p = path
        while p != self.root and not os.path.isdir(p):
            todo.append(p)
            p = os.path.dirname(p)
        if not os.path.isdir(self.root):
            os.makedirs(self.root, DIR_MODE, exist_ok=True)
        for d in reversed(todo):
            try:
                os.mkdir(d, DIR_MODE)
                made.append(d)
            except FileExistsError:
                pass
        for sub in ("tmp", "new", "cur"):
            try:
                os.mkdir(os.path.join(path, sub), DIR_MODE)
                made.append(os.path.join(path, sub))
            except FileExistsError:
                pass
        for d in {os.path.dirname(m) for m in made}:
            _fsync_dir(d)
        self._ready.add(path)

    def _unique(self, size):
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{self._pid}Q{next(_counter)}.{self._host},S={size}"

    # --- IMessageStore -----------------------------------------------------------------------

    def mailbox(self, mailbox, folder="INBOX"):
        return MaildirMailbox(self, mailbox, folder, self.maildir_path(mailbox, folder))

    async def deliver(self, mailboxes, path):
        mailboxes = list(dict.fromkeys(mailboxes))
        if not mailboxes:
            return
        await self._services.run_blocking(self._deliver_sync, mailboxes, path)

    def _deliver_sync(self, mailboxes, path):
        size = os.stat(path).st_size
        made = []
        try:
            new_dirs = []
            for key in mailboxes:
                maildir = self.maildir_path(key)
                self._ensure_maildir(maildir)
                made.append(self._place(path, maildir, size))
                new_dirs.append(os.path.join(maildir, "new"))
            for d in dict.fromkeys(new_dirs):
                _fsync_dir(d)
        except BaseException:
            for p in made:
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise

    def _place(self, src, maildir, size):
        """Hard-link (or copy) ``src`` into ``maildir``/new/ under a fresh unique name."""
        while True:
            name = self._unique(size)
            dest = os.path.join(maildir, "new", name)
            try:
                os.link(src, dest)
                return dest
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in _LINK_FALLBACK:
                    raise
            tmp = os.path.join(maildir, "tmp", name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                if os.path.exists(dest):
                    os.unlink(tmp)
                    continue
                os.rename(tmp, dest)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            return dest


@implementer(IStoreFactory)
class MaildirStoreFactory:
    kind = "maildir"
    description = "Maildir folders under one directory tree (hard-linked delivery, CRLF on disk)"
    options = {
        "path": Option.str(default="", help="root of the mail tree (default: <datadir>/mail)"),
    }

    def build(self, name, settings, services):
        root = settings.get("path") or os.path.join(services.datadir, "mail")
        return MaildirStore(root, services, name=name)
