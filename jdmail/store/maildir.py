"""The Maildir message store (the default ``[store] type = maildir``).

Layout: a mailbox key ``"domain/local"`` (Account.mailbox) lives in
``<root>/<domain>/<local>/Maildir/``; INBOX is that Maildir, other folders are
Maildir++ subfolders: IMAP folder ``A/B`` is ``Maildir/.A.B/`` (names.py: how "."
and "%" inside a level are escaped, which names are refused). Directories are created
on first use, mode 0700. Each Maildir has one SQLite index,
``Maildir/jdmail-index.sqlite`` (index.py), shared by IMAP (``account()``: folders.py)
and POP3 (``mailbox()``), so UIDs, flags and expunges are the same for both.

Module map: maildir.py (this: the store, delivery, POP3's IMailboxStore), folders.py
(IMAP: IAccountStore, IFolder, the per-user state, syncing with the directories),
index.py (the SQLite schema, opening and rebuilding it), lock.py (the cross-process
lock of each index), snapshot.py (big folders' rows in one BLOB), names.py (folder
names), files.py (Maildir file names, flags in them, fsync).

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
delivery returns. Delivery does not touch the index: it tells the sessions that
have the INBOX selected (``IFolder.listen``), and their next refresh gives the new
files UIDs. All blocking work runs on jdmail's thread pool.
"""

import collections
import errno
import fcntl
import hashlib
import os
import shutil
import weakref

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import IMailboxStore, IMessageStore, IStoreFactory, MessageInfo, Option
from jdmail.store import names as folder_names
from jdmail.store.files import (DIR_MODE, FILE_MODE, LINK_FALLBACK, MAILDIR_FLAGS, SYSTEM_FLAGS, fsync_dir,
                                open_nofollow, read_crlf, unique_name)
from jdmail.store.folders import AccountState, Folder, MaildirAccount
from jdmail.store.index import transaction
from jdmail.store.lock import hold

SESSION_LOCK = "jdmail-pop3.lock"

__all__ = ["MaildirStore", "MaildirMailbox", "MaildirStoreFactory", "message_key", "MAILDIR_FLAGS"]

def message_key(filename):
    """The stable key (POP3 UIDL) of a Maildir file name: the name without ``:2,flags``,
    or the SHA-1 hex of that when it is not 1-70 printable ASCII characters."""
    base = filename.split(":", 1)[0]
    if 0 < len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def _check_part(part, what):
    if (not isinstance(part, str) or not part or part in (".", "..") or part.startswith(".")
            or any(c in part for c in "/\\\x00")):
        raise ValueError(f"unsafe {what} {part!r}")


@implementer(IMailboxStore)
class MaildirMailbox:
    """One folder of one mailbox key, as POP3 sees it, over the same index as IMAP.

    ``list`` brings the folder's index up to date (new files get UIDs) and lists it in
    UID order; keys are ``message_key`` of the base names (so POP3 UIDLs are the same
    as before the index existed). ``remove`` expunges through the index, so IMAP
    sessions see it at their next refresh. ``open`` is a plain open() of the file the
    last ``list`` saw (found again if another program renamed it).
    """

    def __init__(self, store, key, folder, path):
        self.store, self.key, self.folder, self.path = store, key, folder, path
        self._state = store._state(key)
        self._state.handles += 1
        weakref.finalize(self, _release_handle, self._state)
        self._files = {}      # message key -> (uid, path relative to self.path, lf)

    def __repr__(self):
        return f"<MaildirMailbox {self.key} {self.folder}>"

    async def _folder(self):
        st = self._state
        f = st.folders.get(self.folder)
        if f is None:
            await st._reconcile()
            f = st.folders.get(self.folder)
        if f is None:
            def make():
                st._make_folder_dir(self.folder)
                with transaction(st.conn) as conn:
                    return st._insert_folder(conn, self.folder)
            row = await st.blocking(make)
            f = st.folders[self.folder] = Folder(st, row)
        return f

    async def list(self):
        st = self._state

        def build(c):       # on the pool, under the user's lock: nobody changes the contents
            infos, files = [], {}
            for uid in c.uids:
                m = c.msg(uid)
                key = message_key(m.base)
                if key in files:
                    continue
                files[key] = (uid, m.relpath(), m.lf)
                infos.append(MessageInfo(key=key, size=m.record.size, flags=m.record.flags & SYSTEM_FLAGS))
            return infos, files

        async def work():
            f = await self._folder()
            await st._sync(f, load=True)
            return await st.blocking(build, f.contents)
        infos, self._files = await st.call(work)
        return infos

    def _locate(self, key):
        """The current path of a message key, looking at the directories when it moved."""
        entry = self._files.get(key)
        if entry is not None:
            path = os.path.join(self.path, entry[1])
            if os.path.lexists(path):
                return path, entry[2]
        for sub in ("cur", "new"):
            with os.scandir(os.path.join(self.path, sub)) as it:
                for e in it:
                    if not e.name.startswith(".") and message_key(e.name) == key:
                        return e.path, entry[2] if entry else False
        return None, False

    def open(self, key):
        """Return the message file opened for binary reading; FileNotFoundError if gone."""
        for _ in range(3):
            path, lf = self._locate(key)
            if path is None:
                break
            try:
                return read_crlf(path) if lf else open_nofollow(path)
            except FileNotFoundError:
                continue        # moved between locate and open: look again
        raise FileNotFoundError(errno.ENOENT, f"no message {key!r} in {self!r}")

    async def remove(self, keys):
        keys = [k for k in keys if k in self._files]
        if not keys:
            return
        st = self._state

        async def work():
            f = await self._folder()
            await st._sync(f, load=True)
            uids = [self._files[k][0] for k in keys]
            await st._expunge(f, uids)
        await st.call(work)
        for k in keys:
            self._files.pop(k, None)


def _release_handle(state):
    state.handles -= 1


TRIM_AFTER = 32          # closed index connections after which freed memory is returned (malloc_trim)


@implementer(IMessageStore)
class MaildirStore:
    """Maildirs under one root; see the module docstring for the layout."""

    log = Logger()
    # Messages of folders no session has selected that stay in memory (per process), so a
    # STATUS or a new SELECT of a big folder does not read its index again.
    idle_messages = 400_000
    # Account states (open index connections) kept for users with no session.
    idle_accounts = 200

    def __init__(self, root, services, name="maildir", index_idle_timeout=0.0):
        self.name = name
        self.index_idle_timeout = index_idle_timeout    # see sleep_idle_indexes; 0: never
        self.root = os.path.realpath(os.path.abspath(os.path.expanduser(root)))
        self._services = services
        self.reactor = services.reactor
        self._ready = set()          # Maildir paths known to have tmp/ new/ cur/
        self._accounts = collections.OrderedDict()   # mailbox key -> AccountState
        self._idle = collections.OrderedDict()       # loaded Folder with no session -> None
        self._structure_class = None
        self._lock_waiters = None
        self.on_commit = None        # see committed()

    def committed(self, key):
        """An operation of this process changed ``key``'s index: ``on_commit(key)`` (set by
        jdmail.workers when several processes serve sessions) tells the others, whose
        IMAP IDLE sessions would otherwise only notice at their next check."""
        if self.on_commit is not None:
            self.on_commit(key)

    def changed_elsewhere(self, key):
        """Another process committed a change to ``key``'s index: if sessions of this
        process listen (IMAP IDLE) to one of its folders, catch up with the index now
        (AccountState.call reloads what changed and notifies those folders' sessions)."""
        st = self._accounts.get(key)
        if st is None or st.refreshing or not any(v._listeners for f in st.folders.values() for v in f.views):
            return
        st.refreshing = True

        async def nothing():
            return None

        def done(result):
            st.refreshing = False
            return result
        d = Deferred.fromCoroutine(st.call(nothing)).addBoth(done)
        d.addErrback(lambda f: self.log.failure("maildir: catching up with {key} changed elsewhere", f, key=key))

    def lock_session(self, mailbox):
        """A Deferred of the mailbox's session lock (POP3: one session per mailbox over
        every process on this mail tree): a release function, or None when another
        session holds it. It is a non-blocking flock on ``Maildir/jdmail-pop3.lock``, so
        the kernel releases it when its process dies."""
        return self._services.run_blocking(self._lock_session_io, self.maildir_path(mailbox))

    def _lock_session_io(self, maildir):
        self._ensure_maildir(maildir)
        fd = os.open(os.path.join(maildir, SESSION_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        closed = []

        def release():
            if not closed:
                closed.append(True)
                os.close(fd)        # drops the flock
        return release

    def lock_waiters(self):
        """The threads that wait for mailbox locks other processes hold (lock.py)."""
        if self._lock_waiters is None:
            from jdmail.store.lock import LockWaiters
            self._lock_waiters = LockWaiters(self.reactor)
        return self._lock_waiters

    # --- paths -----------------------------------------------------------------------------

    def maildir_path(self, mailbox, folder="INBOX"):
        """The Maildir directory of one folder of a mailbox key. ValueError for an unsafe
        key, FolderError for an unsafe folder name (see names.py for the encoding)."""
        if not isinstance(mailbox, str):
            raise ValueError(f"unsafe mailbox key {mailbox!r}")
        parts = mailbox.split("/")
        if len(parts) != 2:
            raise ValueError(f"unsafe mailbox key {mailbox!r}: expected 'domain/local'")
        for part in parts:
            _check_part(part, "mailbox key part")
        path = os.path.join(self.root, parts[0], parts[1], "Maildir")
        real = os.path.realpath(path)
        if not real.startswith(self.root + os.sep):
            raise ValueError(f"unsafe mailbox key {mailbox!r}: outside the mail root")
        folder = folder_names.normalize(folder)
        if folder != "INBOX":
            real = os.path.join(real, folder_names.to_dirname(folder))
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
            fsync_dir(d)
        self._ready.add(path)

    # --- per-user state ------------------------------------------------------------------------

    def _state(self, mailbox):
        """The AccountState of a mailbox key (one per key and process)."""
        st = self._accounts.get(mailbox)
        if st is None:
            # Make room first: the new state has no handle yet, and evicting it would
            # hand the caller a state the store no longer knows (the next login of the
            # same user would get a second one: its own index connection, never put to
            # sleep), which is what happened with more users in session than idle_accounts.
            self._evict_accounts(room=1)
            st = AccountState(self, mailbox, self.maildir_path(mailbox))
            self._accounts[mailbox] = st
        else:
            self._accounts.move_to_end(mailbox)
        return st

    def sleep_idle_indexes(self):
        """Close the index connections and lock files of accounts unused for
        ``index_idle_timeout`` seconds (AccountState.sleep), even when sessions have a
        folder selected: idle IMAP sessions then cost no SQLite connection. Called
        periodically by the server (jdmail.service); returns how many were closed."""
        if not self.index_idle_timeout:
            return 0
        cutoff = self.reactor.seconds() - self.index_idle_timeout
        closers = []
        for st in list(self._accounts.values()):
            if st.conn is not None and st.last_used <= cutoff:
                closer = st.sleep(close=False)
                if closer:
                    closers.append(closer)
        if closers:
            d = self._services.run_blocking(_close_all, closers)
            d.addErrback(lambda f: self.log.failure("maildir: closing idle indexes", f))
        return len(closers)

    def _evict_accounts(self, room=0):
        excess = len(self._accounts) + room - self.idle_accounts
        if excess <= 0:
            return
        for key, st in list(self._accounts.items()):
            if excess <= 0:
                break
            if st.handles > 0 or st.busy():
                continue
            for f in st.folders.values():
                self._idle.pop(f, None)
            del self._accounts[key]
            st.close()
            excess -= 1

    def _touch_idle(self, folder):
        """A loaded folder that no session has selected: keep it a while (LRU)."""
        if folder.views or folder.contents is None:
            return
        self._idle.pop(folder, None)
        self._idle[folder] = None
        total = sum(len(f.contents.records) for f in self._idle if f.contents is not None)
        for f in list(self._idle):
            if total <= self.idle_messages:
                break
            if f is folder or f.views or f.account.lock.locked:
                continue
            if f.contents is not None:
                total -= len(f.contents.records)
                f.contents = None
                f.journal = []
            del self._idle[f]

    def _forget_idle(self, folder):
        self._idle.pop(folder, None)

    async def save_snapshots(self):
        """At a clean shutdown: write the snapshot (jdmail.store.snapshot) of every loaded
        folder big enough to need one and lacking it, so it loads fast after the restart.
        Each under its account's lock, on the pool; a failure is logged and skipped."""
        from jdmail.store import snapshot
        saved = 0
        for st in list(self._accounts.values()):
            big = [f for f in st.folders.values()
                   if f.contents is not None and len(f.contents.records) >= snapshot.MIN_MESSAGES]
            if not big:
                continue

            async def work(st=st, big=big):
                return await st.blocking(_write_snapshots, st.conn, [f.id for f in big])
            try:
                saved += await st.call(work)
            except Exception:
                self.log.failure("maildir: snapshot of {key} not written", key=st.key)
        return saved

    def close(self):
        """Close every index connection (at shutdown; no session may use the store after)."""
        for st in self._accounts.values():
            conn, st.conn = st.conn, None
            st.folders = {}
            if conn is not None:
                conn.close()
            st.xlock.close()
        self._accounts.clear()
        self._idle.clear()

    def structure_class(self):
        """jdmail.mime.MessageStructure (imported when first needed; tests may set
        ``_structure_class``)."""
        if self._structure_class is None:
            from jdmail.mime import MessageStructure
            self._structure_class = MessageStructure
        return self._structure_class

    # --- IMessageStore -----------------------------------------------------------------------

    def mailbox(self, mailbox, folder="INBOX"):
        return MaildirMailbox(self, mailbox, folder_names.normalize(folder), self.maildir_path(mailbox, folder))

    def account(self, mailbox, quota_bytes=0, quota_messages=0):
        return MaildirAccount(self._state(mailbox), quota_bytes, quota_messages)

    def disk_usage(self, mailbox):
        """(bytes, messages) of a mailbox key over all folders, counted on disk without
        the index: read-only and synchronous, for jdmailctl while the server runs. It
        holds the mailbox's lock (lock.hold) so no server moves a file while it counts."""
        top = self.maildir_path(mailbox)
        if not os.path.isdir(top):
            return 0, 0
        with hold(top):
            return self._count_files(top)

    @staticmethod
    def _count_files(top):
        folders = [top] + [os.path.join(top, n) for n in sorted(os.listdir(top))
                           if n.startswith(".") and os.path.isdir(os.path.join(top, n, "cur"))]
        size = count = 0
        for folder in folders:
            for sub in ("new", "cur"):
                try:
                    entries = list(os.scandir(os.path.join(folder, sub)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            size += entry.stat(follow_symlinks=False).st_size
                            count += 1
                    except FileNotFoundError:       # expunged meanwhile
                        continue
        return size, count

    async def usage(self, mailbox):
        path = self.maildir_path(mailbox)
        if not os.path.isdir(path):
            return 0, 0
        st = self._state(mailbox)

        async def work():
            await st._sync_all()
            return st.used()
        return await st.call(work)

    async def deliver(self, mailboxes, path, folders=None, before=None):
        """``folders`` ({mailbox: folder name}, default INBOX) delivers into existing
        other folders, e.g. the Junk folder (jdmail.delivery.local finds or makes it).
        ``before`` (a blocking callable, e.g. the SMTP spool file's fsync) runs first on
        the same pool thread: one hand-over to the pool per message instead of two."""
        mailboxes = list(dict.fromkeys(mailboxes))
        if not mailboxes:
            if before is not None:
                await self._services.run_blocking(before)
            return
        folders = folders or {}
        await self._services.run_blocking(self._deliver_sync, mailboxes, path, folders, before)
        self.notify_delivered(mailboxes, folders)

    def notify_delivered(self, mailboxes, folders=None):
        """Files were just linked into these mailboxes' new/ (by this process, or by an SMTP
        worker process, jdmail.workers): this process's sessions of those folders look
        again at once (IMAP IDLE)."""
        folders = folders or {}
        for key in mailboxes:
            st = self._accounts.get(key)
            f = st.folders.get(folders.get(key, "INBOX")) if st is not None else None
            if f is not None:
                f.delivered()

    def _deliver_sync(self, mailboxes, path, folders=None, before=None):
        if before is not None:
            before()
        size = os.stat(path).st_size
        made = []
        try:
            new_dirs = []
            for key in mailboxes:
                maildir = self.maildir_path(key, (folders or {}).get(key, "INBOX"))
                self._ensure_maildir(maildir)
                made.append(self._place(path, maildir, size))
                new_dirs.append(os.path.join(maildir, "new"))
            for d in dict.fromkeys(new_dirs):
                fsync_dir(d)
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
            name = unique_name(size)
            dest = os.path.join(maildir, "new", name)
            try:
                os.link(src, dest)
                return dest
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in LINK_FALLBACK:
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


def _close_all(closers):
    """Run the closers of sleeping accounts, then give the freed memory back to the
    system: glibc keeps it for the process otherwise, and a server that closed thousands
    of index connections would go on holding their memory."""
    for closer in closers:
        try:
            closer()
        except Exception as e:      # one bad close must not keep the others open
            MaildirStore.log.warn("maildir: closing an index: {error}", error=e)
    global _untrimmed
    _untrimmed += len(closers)
    if _untrimmed >= TRIM_AFTER:
        _untrimmed = 0
        _malloc_trim()


def _malloc_trim():
    global _trim
    if _trim is None:
        try:
            import ctypes
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None
_untrimmed = 0          # connections closed since the last trim (approximate: batches may overlap)


def _write_snapshots(conn, folder_ids):
    from jdmail.store import snapshot
    written = 0
    for folder_id in folder_ids:
        if conn.execute("SELECT 1 FROM snapshots WHERE folder=?", (folder_id,)).fetchone() is None:
            written += bool(snapshot.write(conn, folder_id))
    return written


@implementer(IStoreFactory)
class MaildirStoreFactory:
    kind = "maildir"
    description = "Maildir folders under one directory tree (hard-linked delivery, CRLF on disk)"
    options = {
        "path": Option.str(default="", help="root of the mail tree (default: <datadir>/mail)"),
        "index_idle_timeout": Option.duration(
            default=10.0, help="a mailbox's index connection and lock files are closed after this long "
                               "unused, even while IMAP sessions idle in it (reopened at their next command); "
                               "0 keeps them open"),
    }

    def build(self, name, settings, services):
        root = settings.get("path") or os.path.join(services.datadir, "mail")
        return MaildirStore(root, services, name=name, index_idle_timeout=settings.get(
            "index_idle_timeout", self.options["index_idle_timeout"].default))
