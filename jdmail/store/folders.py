"""IMAP folders over Maildir++: IAccountStore, IFolder and the per-user state behind them.

One ``AccountState`` per mailbox key and process holds the user's SQLite index
connection (index.py), a DeferredLock that serialises every index/disk operation of
that user in this process (and the cross-process lock, see Processes), and one
``Folder`` per folder directory. A Folder always knows its index row (UIDVALIDITY,
UIDNEXT, HIGHESTMODSEQ, totals, directory mtimes); while some session has it selected
(and for a while after, see ``MaildirStore.idle_messages``) it also holds its messages
in memory (``Contents``: uid -> Msg, the UIDs in order, base name -> uid), shared by
every session of the process. Each session's ``FolderView`` (the IFolder)
has its own list of MessageRecords and reads the shared Contents only in ``refresh``.

Processes: several jdmail processes may use one Maildir (one host; SQLite's WAL needs
shared memory). ``AccountState.call`` also holds the mailbox's cross-process lock
(lock.py), so operations of all processes on one user are serialised. When it is
taken, ``PRAGMA data_version`` (it moves when another connection committed) and the
index file's inode are compared with what this process last saw; if another process
committed, ``_reload`` reads the folder rows again and, for loaded folders whose
HIGHESTMODSEQ moved, the message rows with a newer MODSEQ and the UIDs expunged since:
they become a Delta applied like our own, so sessions see them at their next refresh
as ordinary untagged responses. For that, every change of a message row (a path
changed by another program too) gets a new MODSEQ. An index another process replaced
(found damaged) is reopened and every loaded folder is gone for its sessions. The cheap
path (nothing changed elsewhere) costs a non-blocking flock, one PRAGMA and one stat.

Threads: blocking work (directory listings, stat, rename/link/unlink, fsync, SQLite)
runs on the jdmail thread pool while the user's lock is held; the in-memory state is
changed only on the reactor thread, also under the lock, by applying the ``Delta`` a
pool function returns after its SQLite transaction committed. So no session ever sees
a UID that is not durably in the index, and pool functions read the state while nobody
changes it.

Outside changes (SMTP delivery into new/, other Maildir programs) are found like
Dovecot finds them: a folder's new/ and cur/ are listed again only when their mtime
(ns) differs from the one recorded at the last listing, or when that recorded mtime
was too recent to be trusted (a change in the same clock tick would not move it; such
a directory is listed once more after ``SETTLE_NS``). Our own renames/links/unlinks
record the directory's new mtime when it had not changed behind our back before them.
So SELECT, ``UID FETCH 1:* (FLAGS)``, flag-only SEARCH and STATUS never open a message
file and never stat one.

MIME structures (FETCH ENVELOPE/BODYSTRUCTURE, SEARCH and SORT on headers) are parsed
when first asked for and cached in the index's ``structures`` table (COPY and MOVE
take the cached rows along). ``FolderView.structures(uids)`` works in chunks of
``STRUCTURE_CHUNK``: per chunk one pool call, under the lock, reads the cached blobs
with one query, parses the other files and caches them in one transaction; the lock
is released between chunks, so the user's other sessions go on in between.

Flags: the five IMAP system flags live in the file name (``:2,DFRST``, letters other
programs set are kept), keywords only in the index. A flag change renames the file
(new/ -> cur/); a name changed by another program changes the IMAP flags (and MODSEQ)
at the next refresh. MODSEQ: one new value per operation (STORE, EXPUNGE, APPEND, COPY,
MOVE, a sync that found changes), per folder.

Durability: APPEND writes tmp/, fsyncs, sets the mtime (internal date), links into
cur/ and fsyncs cur/ before the UID is committed; COPY hard-links (or copies and
fsyncs), MOVE renames, EXPUNGE unlinks, each followed by an fsync of the directories.
Files change before the index: a crash in between leaves files the next sync
reconciles (new UIDs for them, expunges for files that are gone), never an index row
pointing at a message that was not stored.

Quota: ``quota_bytes`` counts RFC822.SIZE over every folder (hard-linked copies count
once per folder, as in Dovecot), ``quota_messages`` the messages in every folder.
APPEND and COPY that would go over either raise QuotaExceeded. MOVE is never refused: within one account it does not change the usage,
and a user over quota must still be able to move mail to Trash and expunge it.
"""

import bisect
import errno
import functools
import gc
import itertools
import os
import shutil
import sqlite3
import stat
import time
import weakref
from dataclasses import dataclass, field

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import (FolderChanges, FolderError, FolderGone, FolderInfo, IAccountStore, IFolder,
                               MessageRecord, QuotaExceeded)
from jdmail.store import names as folder_names
from jdmail.store.files import (FILE_MODE, LINK_FALLBACK, SYSTEM_FLAGS, DIR_MODE, ensure_maildir_dirs, fsync_dir,
                                info_flags, join_name, make_info, open_nofollow, order_key, read_crlf,
                                scan_crlf_size, size_fields, split_name, unique_name)
from jdmail.store import snapshot
from jdmail.store.index import INDEX_NAME, close_stale, data_version as _data_version, file_id as _file_id, \
    open_index, transaction
from jdmail.store.lock import IndexLock

__all__ = ["AccountState", "Folder", "FolderView", "MaildirAccount", "normalize_flags"]

SETTLE_NS = 2_000_000_000        # a directory mtime younger than this (vs. our listing) is not trusted
MAX_FOLDERS = 5000
STRUCTURE_CHUNK = 500            # UIDs per pool call of FolderView.structures ...
STRUCTURE_CHUNK_BYTES = 16 << 20  # ... which stops once it has read this many octets of files
SQL_VARIABLES = 500              # uids per "IN (...)" (SQLite before 3.32 allows 999 variables)
TRASH_DIR = "jdmail-deleted"     # deleted folders are renamed in here, then removed
FOLDER_COLUMNS = ("id, name, uidvalidity, uidnext, highestmodseq, first_recent, special_use, messages, bytes, "
                  "new_mtime, new_trusted, cur_mtime, cur_trusted")
MESSAGE_COLUMNS = "uid, path, flags, modseq, internaldate, size"

_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}
_FLAGSETS = {}


def _flagset(flags):
    """An interned frozenset (100,000 records share a handful of flag sets)."""
    fs = frozenset(flags)
    got = _FLAGSETS.get(fs)
    if got is None:
        if len(_FLAGSETS) > 20000:
            return fs
        _FLAGSETS[fs] = got = fs
    return got


_FLAGTEXT = {}


def _parse_flags(text):
    fs = _FLAGTEXT.get(text)
    if fs is None:
        fs = _flagset(text.split())
        if len(_FLAGTEXT) < 20000:
            _FLAGTEXT[text] = fs
    return fs


def _flags_text(flags):
    return " ".join(sorted(flags))


def normalize_flags(flags):
    """IMAP flags from a client -> what the store keeps: system flags spelt canonically
    (any case in), keywords as given; \\Recent and unknown \\-flags dropped."""
    out = set()
    for f in flags:
        if not isinstance(f, str) or not f:
            continue
        if f.startswith("\\"):
            canon = _CANONICAL.get(f.lower())
            if canon is not None:
                out.add(canon)
        elif not any(c in f for c in " ()\x00\r\n{%*\"\\]") and f.isprintable():
            out.add(f)
    return _flagset(out)


def _db_path(path):
    """A relative file path as the index stores it: TEXT, or a BLOB when the name is not UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


_make_record = functools.partial(tuple.__new__, MessageRecord)    # (uid, flags, modseq, size, idate) -> record


def _record(uid, flags, modseq, size, internaldate):
    """MessageRecord(uid, flags, modseq, size, internaldate)."""
    return _make_record((uid, flags, modseq, size, internaldate))


class _Vanished(Exception):
    """A folder's directory disappeared (deleted by another program)."""


class Msg:
    """One message of a loaded folder: where its file is and its MessageRecord."""

    __slots__ = ("base", "sub", "info", "lf", "record")

    def __init__(self, base, sub, info, lf, record):
        self.base, self.sub, self.info, self.lf, self.record = base, sub, info, lf, record

    @property
    def uid(self):
        return self.record.uid

    def relpath(self):
        return f"{self.sub}/{join_name(self.base, self.info)}"


class Contents:
    """The messages of a loaded folder (shared by the process's sessions).

    Per message only its MessageRecord and its path string are kept; ``msg(uid)`` makes
    a Msg when one is needed, ``by_base()`` the base name -> UID map a rescan of cur/
    needs (not kept: 100,000 more strings for something needed rarely)."""

    __slots__ = ("records", "paths", "uids", "in_new", "lf", "bytes")

    def __init__(self):
        self.records = {}       # uid -> MessageRecord
        self.paths = {}         # uid -> "new/<base>" or "cur/<base>:2,<letters>"
        self.uids = []          # ascending
        self.in_new = set()     # uids whose file is in new/
        self.lf = set()         # uids whose file has bare LF line ends
        self.bytes = 0

    def msg(self, uid):
        rec = self.records.get(uid)
        if rec is None:
            return None
        sub, _, name = self.paths[uid].partition("/")
        base, _, info = name.partition(":")
        return Msg(base, sub, info, uid in self.lf, rec)

    def by_base(self):
        return {p[4:].partition(":")[0]: uid for uid, p in self.paths.items()}

    def put(self, m):
        uid = m.record.uid
        self.records[uid] = m.record
        self.paths[uid] = m.relpath()
        if m.sub == "new":
            self.in_new.add(uid)
        else:
            self.in_new.discard(uid)
        if m.lf:
            self.lf.add(uid)

    def drop(self, uid):
        rec = self.records.pop(uid, None)
        if rec is None:
            return None
        del self.paths[uid]
        self.in_new.discard(uid)
        self.lf.discard(uid)
        return rec


@dataclass
class Delta:
    """What one committed change does to a Folder (applied on the reactor thread)."""
    folder: object
    added: list = field(default_factory=list)       # Msg, ascending new UIDs
    updated: list = field(default_factory=list)     # Msg replacing the one with its UID
    removed: list = field(default_factory=list)     # UIDs
    meta: dict = field(default_factory=dict)        # Folder attributes to set
    stamps: dict = field(default_factory=dict)      # sub -> (mtime_ns, trusted)
    outside: bool = False                           # found by a sync (not a session's own act)


def _dir_mtime(path):
    """lstat a directory that must be a real directory; its mtime in ns."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _Vanished(path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise FolderError("Mailbox is not accessible")
    return st.st_mtime_ns


def _list_dir(path):
    """{base: info} of the regular files in a Maildir sub-directory."""
    out = {}
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            if name[0] == ".":
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            base, _, info = name.partition(":")
            out[base] = info
    return out


class Folder:
    """One folder of one account: its index row, and its messages while loaded."""

    def __init__(self, account, row):
        (self.id, self.name, self.uidvalidity, self.uidnext, self.highestmodseq, self.first_recent,
         self.special_use, self.messages, self.bytes, new_m, new_t, cur_m, cur_t) = row
        self.stamps = {"new": (new_m, bool(new_t)), "cur": (cur_m, bool(cur_t))}
        self.account = account
        self.path = account.folder_path(self.name)
        self.contents = None
        self.version = 0
        self.journal = []       # [(version, [uids changed or expunged])]
        self.views = []
        self.gone = False
        # Deliveries by this process into new/ (counted on the reactor thread) and the count
        # the last listing of new/ covered: a delivery in the same clock tick as that
        # listing does not move new/'s mtime, so it is found by this instead.
        self.new_gen = 0
        self.new_seen = 0

    def __repr__(self):
        return f"<Folder {self.account.key} {self.name!r}>"

    def delivered(self):
        """A file was just put into new/ by this process (SMTP delivery)."""
        self.new_gen += 1
        self.notify()

    def notify(self, exclude=None):
        """Tell the sessions that have this folder selected that it may have changed."""
        views = [v for v in self.views if v is not exclude and v._listeners]
        if views:
            self.account.store.reactor.callLater(0, _fire, views)

    def trim_journal(self):
        if not self.views:
            self.journal = []
            return
        low = min(v._version for v in self.views)
        if self.journal and self.journal[0][0] <= low:
            self.journal = [entry for entry in self.journal if entry[0] > low]


def _fire(views):
    for view in views:
        for callback in list(view._listeners):
            try:
                callback()
            except Exception:
                FolderView.log.failure("folder listener failed")


class AccountState:
    """Everything one process knows about one user's Maildir (see the module docstring)."""

    log = Logger()

    def __init__(self, store, key, maildir):
        self.store = store
        self.key = key
        self.maildir = maildir
        self.lock = DeferredLock()
        self.xlock = IndexLock(maildir)     # the other processes' side (lock.py)
        self.index_path = os.path.join(maildir, INDEX_NAME)
        self.conn = None
        self.index_id = None        # (st_dev, st_ino) of the index file self.conn has open
        self.data_version = None    # PRAGMA data_version when the state last matched the index
        self.folders = {}           # IMAP name -> Folder
        self.special_done = False
        self.handles = 0            # live MaildirAccount / MaildirMailbox objects
        self.last_used = 0.0        # reactor time the last call ended
        self.asleep = False         # index and lock files closed by sleep(); folders kept
        self.refreshing = False     # a catch-up after another process's commit is on its way

    def __repr__(self):
        return f"<AccountState {self.key}>"

    # --- plumbing ----------------------------------------------------------------------------

    def folder_path(self, name):
        return self.maildir if name == "INBOX" else os.path.join(self.maildir, folder_names.to_dirname(name))

    def blocking(self, f, *args):
        return self.store._services.run_blocking(f, *args)

    def busy(self):
        return self.lock.locked or any(f.views for f in self.folders.values())

    async def call(self, work, *args, special=False):
        """Run ``work(*args)`` (a coroutine function) holding the lock (this process's and
        the other processes', lock.py), with the index open and the in-memory state
        brought up to date with what other processes committed."""
        async with self.lock:
            await self._lock_index()
            conn = changes = None
            try:
                await self._open(special)
                conn = self.conn
                changes = conn.total_changes
                return await work(*args)
            except sqlite3.DatabaseError as e:
                if isinstance(e, (sqlite3.OperationalError, sqlite3.IntegrityError)):
                    raise
                await self._damaged(e)
                raise
            finally:
                self.xlock.release()
                self.last_used = self.store.reactor.seconds()
                if conn is not None and (self.conn is not conn or conn.total_changes != changes):
                    self.store.committed(self.key)

    def sleep(self, close=True):
        """Close the index connection and the lock files of an account nobody is using
        (sessions may still have folders selected: an IDLE client), keeping the folders
        and their loaded contents; the next call reopens the index and catches up with
        what changed meanwhile, as after another process's commit. An open SQLite
        connection costs ~170 KB and three descriptors, the lock files two more: with
        thousands of idle sessions that is most of the server's memory. False when the
        state is in use or already closed. ``close=False``: return the blocking function
        that closes them (for the caller to run on the pool) instead of running it."""
        if self.lock.locked or self.conn is None:
            return False
        conn, self.conn = self.conn, None
        xlock, self.xlock = self.xlock, IndexLock(self.maildir)
        self.asleep = True

        def closer():
            try:
                conn.close()
            finally:
                xlock.close()
        if not close:
            return closer
        self.blocking(closer).addErrback(lambda f: self.log.failure("closing the index of {key}", f, key=self.key))
        return True

    def _wake_io(self):
        conn, _how = open_index(self.maildir)
        return conn, _file_id(self.index_path)

    async def _wake(self):
        """Reopen the index closed by sleep(); the caller's _open then reloads what other
        processes (or this one's other connections) committed in between."""
        self.asleep = False
        conn, index_id = await self.blocking(self._wake_io)
        self.conn = conn
        self.data_version = None            # unknown for a new connection: reload
        if index_id != self.index_id:
            await self._replaced()          # replaced or rebuilt meanwhile: folders are gone

    async def _lock_index(self):
        """Take the cross-process lock: on the reactor when it is free, else wait in a
        LockWaiters thread (lock.py). The first time, open the lock files on the pool."""
        xlock = self.xlock
        if not xlock.ready:
            def open_lock():
                self.store._ensure_maildir(self.maildir)
                xlock.open()
            await self.blocking(open_lock)
        if not xlock.try_acquire():
            await self.store.lock_waiters().wait(xlock)

    async def _damaged(self, error):
        """The index failed in use ("malformed", "not a database"): move it aside; the
        next call rebuilds it; every selected folder is gone for its sessions."""
        self.log.error("index of {key} damaged in use ({error}); it will be rebuilt", key=self.key,
                       error=str(error))
        conn, self.conn = self.conn, None
        folders, self.folders = self.folders, {}
        self.special_done = False
        index_id, self.index_id = self.index_id, None

        def move_aside():
            path = self.index_path
            if _file_id(path) != index_id:
                close_stale(conn, path)     # another process replaced it already
                return
            try:
                conn.close()
            except sqlite3.Error:
                pass
            try:
                os.replace(path, path + ".damaged")
            except FileNotFoundError:
                pass
            for suffix in ("-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass
        await self.blocking(move_aside)
        for f in folders.values():
            self._gone(f)

    def _gone(self, f):
        f.gone = True
        f.contents = None
        self.store._forget_idle(f)
        views, f.views = f.views, []
        for v in views:
            v._gone = True
        if views:
            f.views = views
            f.notify()
            f.views = []

    async def _open(self, special):
        if self.asleep:
            await self._wake()
        if self.conn is not None and self.index_id != _file_id(self.index_path):
            await self._replaced()
        if self.conn is None:
            conn, rows, special_done, self.index_id, self.data_version = await self.blocking(self._open_io)
            self.conn = conn
            self.folders = {row[1]: Folder(self, row) for row in rows}
            self.special_done = special_done
        elif _data_version(self.conn) != self.data_version:
            await self._reload()
        if special and not self.special_done:
            rows = await self.blocking(self._special_io)
            for row in rows:
                if row[1] in self.folders:
                    self.folders[row[1]].special_use = row[6]
                else:
                    self.folders[row[1]] = Folder(self, row)
            self.special_done = True

    def close(self):
        """Close the index connection and the lock files (on the pool); the state must be idle."""
        conn, self.conn = self.conn, None
        self.folders = {}
        self.asleep = False
        # a fresh IndexLock at once: a call that comes before the pool closed the old
        # files (an evicted state used again) must not find them half closed
        xlock, self.xlock = self.xlock, IndexLock(self.maildir)

        def close():
            try:
                if conn is not None:
                    conn.close()
            finally:
                xlock.close()
        self.blocking(close).addErrback(lambda f: None)

    # --- changes committed by other processes (lock held) ---------------------------------------

    async def _replaced(self):
        """Another process moved the index aside (damaged) and made a new one: every
        folder is gone for this process's sessions, as after our own rebuild."""
        self.log.warn("index of {key} was replaced by another process; reopening it", key=self.key)
        conn, self.conn = self.conn, None
        folders, self.folders = self.folders, {}
        self.special_done = False
        self.index_id = None
        await self.blocking(close_stale, conn, self.index_path)
        for f in folders.values():
            self._gone(f)

    def _reload_io(self):
        """Read what other processes changed (one read transaction): the folder rows,
        and for loaded folders whose HIGHESTMODSEQ moved the message rows with a newer
        MODSEQ and the UIDs expunged since (every change of a message row gives it a new
        MODSEQ, so nothing else can differ)."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            version = _data_version(conn)
            rows = self._rows(conn)
            special = conn.execute("SELECT value FROM meta WHERE key='special_created'").fetchone() is not None
            ours = {f.id: f for f in self.folders.values()}
            messages = {}
            for row in rows:
                f = ours.get(row[0])
                if f is None or f.contents is None or row[2] != f.uidvalidity or row[4] == f.highestmodseq:
                    continue
                changed = conn.execute(f"SELECT {MESSAGE_COLUMNS}, lf FROM messages WHERE folder=? AND modseq>? "
                                       "ORDER BY uid", (f.id, f.highestmodseq)).fetchall()
                expunged = [r[0] for r in conn.execute("SELECT uid FROM expunged WHERE folder=? AND modseq>?",
                                                       (f.id, f.highestmodseq))]
                messages[f.id] = (changed, expunged)
        finally:
            conn.execute("COMMIT")
        return version, rows, special, messages

    async def _reload(self):
        """Bring folders, their rows and loaded Contents up to date with the index after
        another process committed; sessions see the changes at their next refresh as
        ordinary untagged responses (the Deltas go through the journal)."""
        version, rows, special, messages = await self.blocking(self._reload_io)
        by_id = {row[0]: row for row in rows}
        folders = {}
        for f in list(self.folders.values()):
            row = by_id.pop(f.id, None)
            if row is None or row[2] != f.uidvalidity:
                self._gone(f)           # deleted (or deleted and made again) elsewhere
                continue
            if row[1] != f.name:        # renamed elsewhere
                f.name = row[1]
                f.path = self.folder_path(f.name)
                for v in f.views:
                    v.name = f.name
            f.special_use = row[6]
            delta = self._reload_delta(f, row, *messages.get(f.id, ((), ())))
            self._apply(delta)
            if delta.added or delta.updated or delta.removed:
                f.notify()
            folders[f.name] = f
        for row in by_id.values():
            folders[row[1]] = Folder(self, row)
        self.folders = folders
        self.special_done = special
        self.data_version = version

    @staticmethod
    def _reload_delta(f, row, changed, expunged):
        meta = dict(zip(("uidnext", "highestmodseq", "first_recent"), row[3:6]))
        meta.update(messages=row[7], bytes=row[8])
        stamps = {"new": (row[9], bool(row[10])), "cur": (row[11], bool(row[12]))}
        c = f.contents
        if c is None:
            return Delta(f, meta=meta, stamps=stamps)
        added, updated = [], []
        for uid, path, flags, modseq, internaldate, size, lf in changed:
            if type(path) is bytes:
                path = path.decode("utf-8", "surrogateescape")
            sub, _, name = path.partition("/")
            base, _, info = name.partition(":")
            m = Msg(base, sub, info, bool(lf), _record(uid, _parse_flags(flags), modseq, size, internaldate))
            (updated if uid in c.records else added).append(m)
        removed = [uid for uid in expunged if uid in c.records]
        return Delta(f, added, updated, removed, meta, stamps, outside=True)

    # --- pool-thread functions: index and folder directories ----------------------------------

    def _folder_dirs(self):
        """{IMAP name: directory name} of the Maildir++ folder directories (no symlinks)."""
        out = {}
        with os.scandir(self.maildir) as it:
            for entry in it:
                if not entry.name.startswith(".") or entry.name in (".", ".."):
                    continue
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                name = folder_names.from_dirname(entry.name)
                if name is not None:
                    out[name] = entry.name
        return out

    def _rows(self, conn, where="", args=()):
        return [tuple(r) for r in conn.execute(f"SELECT {FOLDER_COLUMNS} FROM folders {where}", args)]

    @staticmethod
    def _next_uidvalidity(conn):
        row = conn.execute("SELECT value FROM meta WHERE key='last_uidvalidity'").fetchone()
        last = int(row[0]) if row else 0
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_uidvalidity', ?)", (str(value),))
        return value

    def _insert_folder(self, conn, name, special_use=None):
        uidvalidity = self._next_uidvalidity(conn)
        conn.execute("INSERT INTO folders (name, uidvalidity, uidnext, highestmodseq, first_recent, special_use) "
                     "VALUES (?, ?, 1, 1, 1, ?)", (name, uidvalidity, special_use))
        return self._rows(conn, "WHERE name=?", (name,))[0]

    @staticmethod
    def _delete_folder_rows(conn, folder_id):
        for table in ("messages", "structures", "expunged"):
            conn.execute(f"DELETE FROM {table} WHERE folder=?", (folder_id,))
        conn.execute("DELETE FROM folders WHERE id=?", (folder_id,))

    def _open_io(self):
        self.store._ensure_maildir(self.maildir)
        trash = os.path.join(self.maildir, TRASH_DIR)
        if os.path.isdir(trash) and not os.path.islink(trash):
            for name in os.listdir(trash):      # folders whose DELETE was interrupted
                shutil.rmtree(os.path.join(trash, name), ignore_errors=True)
        conn, how = open_index(self.maildir)
        try:
            snapshot.ensure(conn)
            existing = {row[1]: row for row in self._rows(conn)}
            dirs = self._folder_dirs()
            special = conn.execute("SELECT value FROM meta WHERE key='special_created'").fetchone()
            if how == "ok" and "INBOX" in existing and set(existing) - {"INBOX"} == set(dirs):
                return (conn, list(existing.values()), special is not None,
                        _file_id(self.index_path), _data_version(conn))
            with transaction(conn):
                existing = {row[1]: row for row in self._rows(conn)}
                if "INBOX" not in existing:
                    self._insert_folder(conn, "INBOX")
                for name in sorted(set(dirs) - set(existing))[:MAX_FOLDERS]:
                    self._insert_folder(conn, name)
                for name in set(existing) - set(dirs) - {"INBOX"}:
                    self._delete_folder_rows(conn, existing[name][0])
                if how != "ok":
                    # a new or rebuilt index: what exists is what the user had subscribed
                    for name in ["INBOX", *dirs]:
                        conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))
                    if how == "rebuilt":
                        self.log.warn("index of {key} rebuilt: {n} folders, new UIDVALIDITYs", key=self.key,
                                      n=len(dirs) + 1)
                rows = self._rows(conn)
                special = conn.execute("SELECT value FROM meta WHERE key='special_created'").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn, rows, special is not None, _file_id(self.index_path), _data_version(conn)

    def _special_io(self):
        """Create Sent, Drafts, Trash, Junk and Archive with their RFC 6154 attribute and
        subscribe them and INBOX (once per account: a user may delete them later)."""
        conn = self.conn
        made = []
        with transaction(conn):
            used = {row[0] for row in conn.execute("SELECT special_use FROM folders WHERE special_use IS NOT NULL")}
            for name, attr in folder_names.DEFAULT_SPECIAL:
                row = self._rows(conn, "WHERE name=?", (name,))
                if row:
                    if row[0][6] is None and attr not in used:
                        conn.execute("UPDATE folders SET special_use=? WHERE id=?", (attr, row[0][0]))
                        made.append(self._rows(conn, "WHERE name=?", (name,))[0])
                else:
                    self._make_folder_dir(name)
                    made.append(self._insert_folder(conn, name, attr))
                conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))
            conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES ('INBOX')")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('special_created', '1')")
        return made

    def _make_folder_dir(self, name):
        """Create the folder's Maildir++ directory (tmp/ new/ cur/, maildirfolder), durably."""
        path = self.folder_path(name)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise FolderError("Mailbox name is in use by something else") from None
        ensure_maildir_dirs(path, marker=True)
        fsync_dir(self.maildir)
        return path

    def _reconcile_io(self):
        """Compare the folder directories with the index: rows for new directories, none
        for vanished ones. Returns (new rows, removed folder names)."""
        dirs = self._folder_dirs()
        known = set(self.folders)
        add = sorted(set(dirs) - known)
        remove = [name for name in known - set(dirs) if name != "INBOX"]
        if len(known) + len(add) > MAX_FOLDERS:
            add = add[:max(0, MAX_FOLDERS - len(known))]
        rows = []
        if add or remove:
            with transaction(self.conn) as conn:
                for name in add:
                    rows.append(self._insert_folder(conn, name))
                for name in remove:
                    self._delete_folder_rows(conn, self.folders[name].id)
        return rows, remove

    def _load_io(self, f):
        """Read a folder's messages from the index (no message file is touched): from
        its snapshot when it has one (jdmail.store.snapshot), else from its rows.

        Column by column, without a Python-level step per message (zip, map and C
        constructors), and with the cyclic GC paused: its passes over the growing heap
        cost more than the load itself in a folder of 100,000 messages."""
        _dir_mtime(f.path)
        ensure_maildir_dirs(f.path, marker=f.name != "INBOX")
        c = Contents()
        paused = gc.isenabled()
        gc.disable()
        try:
            row = self.conn.execute("SELECT data FROM snapshots WHERE folder=?", (f.id,)).fetchone()
            columns = snapshot.unpack(row[0]) if row is not None else None
            if columns is None:
                rows = self.conn.execute(snapshot.ROWS, (f.id,)).fetchall()
                uids, texts, modseqs, sizes, idates, paths, lf_flags = zip(*rows) if rows else ((),) * 7
                lf = itertools.compress(uids, lf_flags)
                del rows
            else:
                uids, texts, modseqs, sizes, idates, paths, lf = columns
            flagsets = {text: _parse_flags(text) for text in set(texts)}
            records = list(map(_make_record, zip(uids, map(flagsets.__getitem__, texts), modseqs, sizes, idates)))
            if bytes in set(map(type, paths)):
                paths = [p.decode("utf-8", "surrogateescape") if type(p) is bytes else p for p in paths]
            c.uids = list(uids)
            c.records = dict(zip(uids, records))
            c.paths = dict(zip(uids, paths))
            c.in_new = set(itertools.compress(uids, map(str.startswith, paths, itertools.repeat("new/"))))
            c.lf.update(lf)
            c.bytes = total = sum(sizes)
        finally:
            if paused:
                gc.enable()
        if (len(c.uids), total) != (f.messages, f.bytes):
            with transaction(self.conn) as conn:
                conn.execute("UPDATE folders SET messages=?, bytes=? WHERE id=?", (len(c.uids), total, f.id))
        return c

    def _check_io(self, f, force=False):
        """{sub: mtime_ns} of the sub-directories that must be listed again."""
        _dir_mtime(f.path)
        now = time.time_ns()
        need = {}
        for sub in ("new", "cur"):
            mtime = _dir_mtime(os.path.join(f.path, sub))
            old, trusted = f.stamps[sub]
            if (force or old != mtime or (not trusted and now - mtime > SETTLE_NS)
                    or (sub == "new" and f.new_gen != f.new_seen)):
                need[sub] = mtime
        return need

    def _sync_io(self, f, load, claim, force=False):
        """Load the folder when asked (or when it changed) and bring the index up to date
        with the directories. Returns (Contents newly loaded or None, Delta or None, the
        claimed \\Recent UID range or None)."""
        gen = f.new_gen             # before listing: deliveries counted in it are on disk
        need = self._check_io(f, force)
        c = f.contents
        loaded = None
        if c is None:
            if not (load or need):
                return None, None, None
            loaded = c = self._load_io(f)
        uidnext = f.uidnext
        if not need:
            if claim and f.first_recent < uidnext:
                with transaction(self.conn) as conn:
                    conn.execute("UPDATE folders SET first_recent=? WHERE id=?", (uidnext, f.id))
                return loaded, Delta(f, meta={"first_recent": uidnext}), (f.first_recent, uidnext)
            return loaded, None, None

        t0 = time.time_ns()
        listings = {}
        stamps = {}
        for sub, mtime in need.items():
            listings[sub] = _list_dir(os.path.join(f.path, sub))
            stamps[sub] = (mtime, t0 - mtime > SETTLE_NS)
        # only new/ changed (a delivery): the few messages already in new/ are all it can
        # hold of ours (a file moved from cur/ would have changed cur/ too)
        by_base = c.by_base() if "cur" in need else {c.msg(u).base: u for u in c.in_new}
        if len(listings) == 1:
            # a message gone from the listed directory may have moved to the other one
            (sub,) = listings
            listing = listings[sub]
            if sub == "new":
                gone_here = any(c.msg(u).base not in listing for u in c.in_new)
            else:
                in_new = c.in_new
                gone_here = any(base not in listing for base, uid in by_base.items() if uid not in in_new)
            if gone_here:
                other = "cur" if sub == "new" else "new"
                mtime = _dir_mtime(os.path.join(f.path, other))
                listings[other] = _list_dir(os.path.join(f.path, other))
                stamps[other] = (mtime, t0 - mtime > SETTLE_NS)
                by_base = c.by_base()

        def sub_of(uid):
            return "new" if uid in c.in_new else "cur"

        disk = {}
        for sub in ("new", "cur"):
            listing = listings.get(sub)
            if listing is None:
                continue
            for base, info in listing.items():
                prev = disk.get(base)
                if prev is not None:            # in new/ and in cur/: keep the one the index knows
                    uid = by_base.get(base)
                    if uid is not None and sub_of(uid) == prev[0]:
                        continue
                disk[base] = (sub, info)

        paths = c.paths
        moved = []          # (Msg, sub, info)
        fresh = []
        for base, (sub, info) in disk.items():
            uid = by_base.get(base)
            if uid is None:
                fresh.append((base, sub, info))
            elif paths[uid] != f"{sub}/{join_name(base, info)}":
                moved.append((c.msg(uid), sub, info))
        if "cur" in listings:
            candidates = by_base.items()
        else:
            candidates = [(c.msg(u).base, u) for u in c.in_new]
        vanished = [uid for base, uid in candidates if base not in disk and sub_of(uid) in listings]

        found = []
        for base, sub, info in fresh:
            path = os.path.join(f.path, sub, join_name(base, info))
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                s_size, w_size = size_fields(base)
                if w_size is not None:
                    size, lf = w_size, w_size != st.st_size
                elif s_size is not None:
                    size, lf = s_size, False
                else:
                    size, lf = scan_crlf_size(path)
            except FileNotFoundError:
                continue            # gone again already
            except OSError as e:
                self.log.warn("maildir: skipping unreadable {path}: {error}", path=path, error=str(e))
                continue
            found.append((order_key(base, st.st_mtime), base, sub, info, st.st_mtime, size, lf))
        found.sort()

        changes = bool(found or vanished)
        modseq = f.highestmodseq + 1
        updated = []
        for m, sub, info in moved:
            # a new MODSEQ even when only the path changed: other processes reload the
            # rows whose MODSEQ passed the one they know (_reload_io)
            changes = True
            flags = _flagset(info_flags(info) | (m.record.flags - SYSTEM_FLAGS))
            rec = _record(m.record.uid, flags, modseq, m.record.size, m.record.internaldate)
            updated.append(Msg(m.base, sub, info, m.lf, rec))
        if not changes:
            modseq = f.highestmodseq
        added = []
        uid = uidnext
        for _order, base, sub, info, mtime, size, lf in found:
            rec = _record(uid, _flagset(info_flags(info)), modseq, size, mtime)
            added.append(Msg(base, sub, info, lf, rec))
            uid += 1
        new_uidnext = uid
        first_recent = f.first_recent
        claimed = None
        if claim and first_recent < new_uidnext:
            claimed = (first_recent, new_uidnext)
            first_recent = new_uidnext
        messages = len(c.records) + len(added) - len(vanished)
        nbytes = c.bytes + sum(m.record.size for m in added) - sum(c.records[u].size for u in vanished)
        meta = {"uidnext": new_uidnext, "highestmodseq": modseq, "first_recent": first_recent,
                "messages": messages, "bytes": nbytes}
        if "new" in listings:
            meta["new_seen"] = gen
        # (also when only the directory mtimes changed: a restart need not list them again)
        with transaction(self.conn) as conn:
            self._insert_rows(conn, f, [(None, m) for m in added])
            conn.executemany("UPDATE messages SET path=?, flags=?, modseq=? WHERE folder=? AND uid=?",
                             [(_db_path(m.relpath()), _flags_text(m.record.flags), m.record.modseq, f.id,
                               m.record.uid) for m in updated])
            self._remove_rows(conn, f, vanished, modseq)
            self._update_folder_row(conn, f, meta, {**f.stamps, **stamps})
        return loaded, Delta(f, added, updated, vanished, meta, stamps, outside=changes), claimed

    @staticmethod
    def _remove_rows(conn, f, uids, modseq):
        rows = [(f.id, uid) for uid in uids]
        conn.executemany("DELETE FROM messages WHERE folder=? AND uid=?", rows)
        conn.executemany("DELETE FROM structures WHERE folder=? AND uid=?", rows)
        conn.executemany("INSERT OR REPLACE INTO expunged (folder, uid, modseq) VALUES (?, ?, ?)",
                         [(f.id, uid, modseq) for uid in uids])

    @staticmethod
    def _update_folder_row(conn, f, meta, stamps):
        values = {"uidnext": f.uidnext, "highestmodseq": f.highestmodseq, "first_recent": f.first_recent,
                  "messages": f.messages, "bytes": f.bytes}
        values.update(meta)
        conn.execute("UPDATE folders SET uidnext=?, highestmodseq=?, first_recent=?, messages=?, bytes=?, "
                     "new_mtime=?, new_trusted=?, cur_mtime=?, cur_trusted=? WHERE id=?",
                     (values["uidnext"], values["highestmodseq"], values["first_recent"], values["messages"],
                      values["bytes"], stamps["new"][0], int(stamps["new"][1]), stamps["cur"][0],
                      int(stamps["cur"][1]), f.id))

    def _pre(self, f, subs):
        """Directory mtimes before our own change (see _post)."""
        return {sub: _dir_mtime(os.path.join(f.path, sub)) for sub in subs}

    def _post(self, f, pre):
        """After our own change of these directories: when they had not changed behind
        our back before it, their new mtime is what we have seen (not yet trusted)."""
        stamps = {}
        for sub, before in pre.items():
            if f.stamps[sub][0] == before:
                stamps[sub] = (_dir_mtime(os.path.join(f.path, sub)), False)
        return stamps

    # --- applying changes (reactor thread, lock held) ------------------------------------------

    def _install(self, f, contents):
        f.contents = contents
        f.messages, f.bytes = len(contents.records), contents.bytes
        self.store._touch_idle(f)

    def _apply(self, d):
        f = d.folder
        for key, value in d.meta.items():
            setattr(f, key, value)
        f.stamps.update(d.stamps)
        c = f.contents
        if c is None:
            return
        touched = []
        for m in d.added:
            c.put(m)
            c.uids.append(m.record.uid)
        for m in d.updated:
            uid = m.record.uid
            old = c.records.get(uid)
            if old is None:
                continue
            c.put(m)
            if m.record is not old:
                touched.append(uid)
        if d.removed:
            for uid in d.removed:
                if c.drop(uid) is not None:
                    touched.append(uid)
            gone = set(d.removed)
            if len(gone) > 64:
                c.uids = [u for u in c.uids if u not in gone]
            else:
                for uid in sorted(gone):
                    i = bisect.bisect_left(c.uids, uid)
                    if i < len(c.uids) and c.uids[i] == uid:
                        del c.uids[i]
        c.bytes = f.bytes
        if touched:
            f.version += 1
            if f.views:
                f.journal.append((f.version, touched))
            else:
                f.journal = []      # nobody to catch up (an idle folder reloaded again and again)

    async def _sync(self, f, load=True, claim=False, exclude=None, force=False):
        """Bring one folder up to date (lock held). Returns the claimed \\Recent range."""
        if not force and f.contents is not None and not (claim and f.first_recent < f.uidnext):
            # most commands find nothing changed: three lstats of local directories cost
            # less here than a pool round trip (the reactor already stats the index file)
            try:
                if not self._check_io(f):
                    return None
            except (_Vanished, FolderError):
                pass                # the pool's pass reports it as it always did
        try:
            loaded, delta, claimed = await self.blocking(self._sync_io, f, load, claim, force)
        except _Vanished:
            await self._folder_vanished(f)
            raise FolderGone("The mailbox no longer exists") from None
        if loaded is not None:
            self._install(f, loaded)
        if delta is not None:
            self._apply(delta)
            if delta.outside:
                f.notify(exclude)
        return claimed

    async def _sync_all(self):
        """Pick up outside changes in every folder (cheap when no directory changed)."""
        def check():
            out = []
            for f in list(self.folders.values()):
                try:
                    if self._check_io(f):
                        out.append(f)
                except (_Vanished, FolderError):
                    out.append(f)
            return out
        for f in await self.blocking(check):
            try:
                await self._sync(f, load=True)
            except FolderError:
                pass

    async def _folder_vanished(self, f):
        if f.name == "INBOX":
            return
        def forget():
            with transaction(self.conn) as conn:
                self._delete_folder_rows(conn, f.id)
        await self.blocking(forget)
        self.folders.pop(f.name, None)
        self._gone(f)

    def folder(self, name, must_exist=True):
        name = folder_names.normalize(name)
        f = self.folders.get(name)
        if f is None and must_exist:
            raise FolderError("Mailbox does not exist")
        return f

    async def _lookup(self, name):
        """The Folder for a name, looking at the disk again when the index lacks it."""
        name = folder_names.normalize(name)
        f = self.folders.get(name)
        if f is None:
            await self._reconcile()
            f = self.folders.get(name)
        if f is None:
            raise FolderError("Mailbox does not exist")
        return f

    async def _reconcile(self):
        rows, removed = await self.blocking(self._reconcile_io)
        for row in rows:
            self.folders[row[1]] = Folder(self, row)
        for name in removed:
            f = self.folders.pop(name, None)
            if f is not None:
                self._gone(f)

    def used(self):
        return sum(f.bytes for f in self.folders.values()), sum(f.messages for f in self.folders.values())

    async def _check_quota(self, quota_bytes, extra, quota_messages=0, count=1):
        """QuotaExceeded when ``count`` more messages of ``extra`` octets would pass
        either limit (0 = none)."""
        if (quota_bytes and quota_bytes > 0) or (quota_messages and quota_messages > 0):
            await self._sync_all()
            used, messages = self.used()
            if quota_bytes and quota_bytes > 0 and used + extra > quota_bytes:
                raise QuotaExceeded("Quota exceeded (mailbox is full)")
            if quota_messages and quota_messages > 0 and messages + count > quota_messages:
                raise QuotaExceeded("Quota exceeded (too many messages)")

    # --- message operations (lock held) -------------------------------------------------------

    def _expunge_io(self, f, uids):
        """Unlink the files of ``uids`` (Msgs of f), fsync, record them as expunged."""
        c = f.contents
        victims = [c.msg(u) for u in uids if u in c.records]
        if not victims:
            return None
        subs = {m.sub for m in victims}
        pre = self._pre(f, subs)
        for m in victims:
            try:
                os.unlink(os.path.join(f.path, m.relpath()))
            except FileNotFoundError:
                pass            # renamed or removed by another program: the next sync sees it
        for sub in subs:
            fsync_dir(os.path.join(f.path, sub))
        stamps = self._post(f, pre)
        modseq = f.highestmodseq + 1
        removed = [m.record.uid for m in victims]
        meta = {"highestmodseq": modseq, "messages": len(c.records) - len(victims),
                "bytes": c.bytes - sum(m.record.size for m in victims)}
        with transaction(self.conn) as conn:
            self._remove_rows(conn, f, removed, modseq)
            self._update_folder_row(conn, f, meta, {**f.stamps, **stamps})
        return Delta(f, removed=removed, meta=meta, stamps=stamps)

    async def _expunge(self, f, uids, exclude=None):
        delta = await self.blocking(self._expunge_io, f, uids)
        if delta is None:
            return []
        self._apply(delta)
        f.notify(exclude)
        return delta.removed

    def _store_io(self, f, todo):
        """Set flags: [(Msg, new flag set)]. Renames files whose system flags change."""
        modseq = f.highestmodseq + 1
        pre = self._pre(f, ("new", "cur"))
        updated = []
        renamed_dirs = set()
        for m, flags in todo:
            system = flags & SYSTEM_FLAGS
            sub, info = m.sub, m.info
            if system != info_flags(m.info) or (m.sub == "new" and system):
                sub, info = "cur", make_info(m.info, system)
                src = os.path.join(f.path, m.relpath())
                dst = os.path.join(f.path, "cur", join_name(m.base, info))
                try:
                    os.rename(src, dst)
                except FileNotFoundError:
                    continue        # changed behind our back; the next sync has it
                renamed_dirs.update({m.sub, "cur"})
            rec = _record(m.record.uid, flags, modseq, m.record.size, m.record.internaldate)
            updated.append(Msg(m.base, sub, info, m.lf, rec))
        if not updated:
            return None
        for sub in sorted(renamed_dirs):
            fsync_dir(os.path.join(f.path, sub))
        stamps = self._post(f, {s: pre[s] for s in renamed_dirs})
        meta = {"highestmodseq": modseq}
        with transaction(self.conn) as conn:
            conn.executemany("UPDATE messages SET path=?, flags=?, modseq=? WHERE folder=? AND uid=?",
                             [(_db_path(m.relpath()), _flags_text(m.record.flags), modseq, f.id, m.record.uid)
                              for m in updated])
            self._update_folder_row(conn, f, meta, {**f.stamps, **stamps})
        return Delta(f, updated=updated, meta=meta, stamps=stamps)

    def _place_io(self, dest, items, mode):
        """Put messages into ``dest``: items are (source path, Msg) with mode "link"
        (COPY: hard link, else copy) or "rename" (MOVE). Returns (Delta for dest,
        [(source Msg, new Msg)])."""
        pre = self._pre(dest, ("cur",))
        placed = []
        uid = dest.uidnext
        modseq = dest.highestmodseq + 1
        cur = os.path.join(dest.path, "cur")
        for src, m in items:
            extra = f",W={m.record.size}" if m.lf else ""
            try:
                file_size = os.lstat(src).st_size
            except FileNotFoundError:
                continue
            while True:
                base = unique_name(file_size, extra)
                info = make_info(m.info, m.record.flags & SYSTEM_FLAGS)
                dst = os.path.join(cur, join_name(base, info))
                if not os.path.lexists(dst):
                    break
            try:
                if mode == "rename":
                    os.rename(src, dst)
                else:
                    os.link(src, dst)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno not in LINK_FALLBACK:
                    raise
                self._copy_file(src, dst, dest, m.record.internaldate)
                if mode == "rename":
                    os.unlink(src)
            rec = _record(uid, m.record.flags, modseq, m.record.size, m.record.internaldate)
            placed.append((m, Msg(base, "cur", info, m.lf, rec)))
            uid += 1
        if not placed:
            return None, []
        fsync_dir(cur)
        stamps = self._post(dest, pre)
        meta = {"uidnext": uid, "highestmodseq": modseq, "messages": dest.messages + len(placed),
                "bytes": dest.bytes + sum(new.record.size for _, new in placed)}
        return Delta(dest, added=[new for _, new in placed], meta=meta, stamps=stamps), placed

    @staticmethod
    def _copy_file(src, dst, dest, internaldate):
        tmp = os.path.join(dest.path, "tmp", os.path.basename(dst).split(":")[0])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out, open_nofollow(src) as inp:
                shutil.copyfileobj(inp, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.utime(tmp, (internaldate, internaldate))
            os.rename(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _insert_rows(self, conn, dest, placed, src_folder=None, move=False):
        conn.executemany(
            "INSERT OR REPLACE INTO messages (folder, uid, path, flags, modseq, internaldate, size, lf) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(dest.id, new.record.uid, _db_path(new.relpath()), _flags_text(new.record.flags),
              new.record.modseq, new.record.internaldate, new.record.size, int(new.lf)) for _, new in placed])
        if src_folder is not None:
            verb = "UPDATE structures SET folder=?, uid=? WHERE folder=? AND uid=?" if move else \
                "INSERT OR IGNORE INTO structures (folder, uid, data) SELECT ?, ?, data FROM structures " \
                "WHERE folder=? AND uid=?"
            conn.executemany(verb, [(dest.id, new.record.uid, src_folder.id, old.record.uid)
                                    for old, new in placed])

    def _copy_io(self, src, dest, msgs):
        items = [(os.path.join(src.path, m.relpath()), m) for m in msgs]
        delta, placed = self._place_io(dest, items, "link")
        if delta is None:
            return None, []
        with transaction(self.conn) as conn:
            self._insert_rows(conn, dest, placed, src)
            self._update_folder_row(conn, dest, delta.meta, {**dest.stamps, **delta.stamps})
        return delta, [(old.record.uid, new.record.uid) for old, new in placed]

    def _move_io(self, src, dest, msgs):
        pre = self._pre(src, {m.sub for m in msgs})
        items = [(os.path.join(src.path, m.relpath()), m) for m in msgs]
        delta, placed = self._place_io(dest, items, "rename")
        if delta is None:
            return None, None, []
        for sub in pre:
            fsync_dir(os.path.join(src.path, sub))
        src_stamps = self._post(src, pre)
        c = src.contents
        gone = [old for old, _ in placed]
        modseq = src.highestmodseq + 1
        src_meta = {"highestmodseq": modseq, "messages": len(c.records) - len(gone),
                    "bytes": c.bytes - sum(m.record.size for m in gone)}
        with transaction(self.conn) as conn:
            self._insert_rows(conn, dest, placed, src, move=True)
            self._update_folder_row(conn, dest, delta.meta, {**dest.stamps, **delta.stamps})
            self._remove_rows(conn, src, [m.record.uid for m in gone], modseq)
            self._update_folder_row(conn, src, src_meta, {**src.stamps, **src_stamps})
        src_delta = Delta(src, removed=[m.record.uid for m in gone], meta=src_meta, stamps=src_stamps)
        return delta, src_delta, [(old.record.uid, new.record.uid) for old, new in placed]

    def _append_io(self, f, data, flags, internaldate):
        size = len(data)
        base = unique_name(size)
        tmp = os.path.join(f.path, "tmp", base)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.utime(tmp, (internaldate, internaldate))
            info = make_info("", flags & SYSTEM_FLAGS)
            dst = os.path.join(f.path, "cur", join_name(base, info))
            pre = self._pre(f, ("cur",))
            try:
                os.link(tmp, dst)
                os.unlink(tmp)
            except OSError as e:
                if e.errno not in LINK_FALLBACK:
                    raise
                os.rename(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(os.path.join(f.path, "cur"))
        stamps = self._post(f, pre)
        uid = f.uidnext
        modseq = f.highestmodseq + 1
        rec = _record(uid, flags, modseq, size, internaldate)
        m = Msg(base, "cur", info, False, rec)
        meta = {"uidnext": uid + 1, "highestmodseq": modseq, "messages": f.messages + 1, "bytes": f.bytes + size}
        with transaction(self.conn) as conn:
            self._insert_rows(conn, f, [(None, m)])
            self._update_folder_row(conn, f, meta, {**f.stamps, **stamps})
        return Delta(f, added=[m], meta=meta, stamps=stamps)


@implementer(IAccountStore)
class MaildirAccount:
    """IAccountStore of one user (one per IMAP login; they share the AccountState)."""

    def __init__(self, state, quota_bytes=0, quota_messages=0):
        self._state = state
        self.quota_bytes = quota_bytes or 0
        self.quota_messages = quota_messages or 0
        state.handles += 1
        weakref.finalize(self, _release, state)

    def __repr__(self):
        return f"<MaildirAccount {self._state.key}>"

    @property
    def key(self):
        return self._state.key

    def _call(self, work, *args):
        return self._state.call(work, *args, special=True)

    async def list_folders(self):
        st = self._state

        async def work():
            await st._reconcile()
            present = set(st.folders)
            implied = set()
            for name in present:
                implied.update(folder_names.parent_names(name))
            subscribed = await st.blocking(self._subscriptions_io)
            parents = set(implied)
            everything = present | implied
            out = []
            for name in sorted(everything, key=lambda n: (n != "INBOX", n.split("/"))):
                attrs = {"\\HasChildren" if name in parents else "\\HasNoChildren"}
                f = st.folders.get(name)
                if f is None:
                    attrs.add("\\Noselect")
                elif f.special_use:
                    attrs.add(f.special_use)
                out.append(FolderInfo(name, frozenset(attrs), name in subscribed))
            return out
        return await self._call(work)

    def _subscriptions_io(self):
        return {row[0] for row in self._state.conn.execute("SELECT name FROM subscriptions")}

    async def subscriptions(self):
        st = self._state

        async def work():
            names = await st.blocking(self._subscriptions_io)
            return sorted(names, key=lambda n: (n != "INBOX", n.split("/")))
        return await self._call(work)

    async def subscribe(self, name, subscribed=True):
        name = folder_names.normalize(name)
        st = self._state

        def io():
            with transaction(st.conn) as conn:
                if subscribed:
                    conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))
                else:
                    conn.execute("DELETE FROM subscriptions WHERE name=?", (name,))

        async def work():
            if subscribed and name not in st.folders:
                await st._reconcile()
                if name not in st.folders:
                    raise FolderError("Mailbox does not exist")
            await st.blocking(io)
        await self._call(work)

    async def create_folder(self, name, special_use=None):
        name = folder_names.normalize(name)
        if special_use is not None and special_use not in folder_names.SPECIAL_USE:
            raise FolderError(f"Unknown special-use attribute {special_use}")
        st = self._state

        def io(todo):
            rows = []
            for n in todo:
                st._make_folder_dir(n)
            with transaction(st.conn) as conn:
                for n in todo:
                    rows.append(st._insert_folder(conn, n, special_use if n == name else None))
            return rows

        async def work():
            if name == "INBOX":
                raise FolderError("Mailbox already exists")
            await st._reconcile()
            if name in st.folders:
                raise FolderError("Mailbox already exists")
            if special_use is not None and any(f.special_use == special_use for f in st.folders.values()):
                raise FolderError(f"A mailbox with {special_use} exists already")
            todo = [p for p in folder_names.parent_names(name) if p not in st.folders and p != "INBOX"]
            todo.append(name)
            if len(st.folders) + len(todo) > MAX_FOLDERS:
                raise FolderError("Too many mailboxes")
            for row in await st.blocking(io, todo):
                st.folders[row[1]] = Folder(st, row)
        await self._call(work)

    async def delete_folder(self, name):
        name = folder_names.normalize(name)
        st = self._state

        def io(f):
            try:
                mode = os.lstat(f.path).st_mode
            except FileNotFoundError:
                mode = None             # already gone: only the index rows are left
            if mode is not None and not stat.S_ISDIR(mode):
                raise FolderError("Mailbox is not accessible")
            parked = None
            if mode is not None:
                trash = os.path.join(st.maildir, TRASH_DIR)
                os.makedirs(trash, DIR_MODE, exist_ok=True)
                parked = os.path.join(trash, f"{time.time_ns()}")
                os.rename(f.path, parked)   # one atomic step; removed below or at the next start
                fsync_dir(st.maildir)
            with transaction(st.conn) as conn:
                st._delete_folder_rows(conn, f.id)
            if parked:
                shutil.rmtree(parked, ignore_errors=True)

        async def work():
            if name == "INBOX":
                raise FolderError("INBOX cannot be deleted")
            f = await st._lookup(name)
            await st.blocking(io, f)
            del st.folders[name]
            st._gone(f)
        await self._call(work)

    async def rename_folder(self, old, new):
        old = folder_names.normalize(old)
        new = folder_names.normalize(new)
        st = self._state
        if old == "INBOX":
            return await self._call(self._rename_inbox, new)

        def io(moves, parents):
            made = []
            for p in parents:
                st._make_folder_dir(p)
            for f, target in moves:
                dst = st.folder_path(target)
                if os.path.lexists(dst):
                    raise FolderError("Mailbox already exists")
                os.rename(f.path, dst)
            fsync_dir(st.maildir)
            with transaction(st.conn) as conn:
                for p in parents:
                    made.append(st._insert_folder(conn, p))
                for f, target in moves:
                    conn.execute("UPDATE folders SET name=? WHERE id=?", (target, f.id))
                    if conn.execute("DELETE FROM subscriptions WHERE name=?", (f.name,)).rowcount:
                        conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (target,))
            return made

        async def work():
            await st._reconcile()
            children = [n for n in st.folders if n.startswith(old + "/")]
            if old not in st.folders and not children:
                raise FolderError("Mailbox does not exist")
            if new == old or new.startswith(old + "/"):
                raise FolderError("Cannot rename a mailbox into itself")
            if new == "INBOX" or new in st.folders:
                raise FolderError("Mailbox already exists")
            moves = [(st.folders[n], new + n[len(old):]) for n in sorted([old] * (old in st.folders) + children)]
            parents = [p for p in folder_names.parent_names(new) if p not in st.folders and p != "INBOX"]
            for f, target in moves:
                if folder_names.normalize(target) in st.folders:
                    raise FolderError("Mailbox already exists")
                folder_names.to_dirname(target)
            made = await st.blocking(io, moves, parents)
            for f, target in moves:
                del st.folders[f.name]
            for f, target in moves:
                f.name = target
                f.path = st.folder_path(target)
                st.folders[target] = f
                for v in f.views:
                    v.name = target
            for row in made:
                st.folders[row[1]] = Folder(st, row)
        await self._call(work)

    async def _rename_inbox(self, new):
        """RFC 3501 6.3.5: INBOX's messages move into a new folder; INBOX stays, empty;
        INBOX's children are not touched."""
        st = self._state
        await st._reconcile()
        if new == "INBOX" or new in st.folders:
            raise FolderError("Mailbox already exists")
        folder_names.to_dirname(new)
        inbox = st.folders["INBOX"]
        await st._sync(inbox, load=True)
        todo = [p for p in folder_names.parent_names(new) if p not in st.folders] + [new]

        def make(todo):
            rows = []
            for n in todo:
                st._make_folder_dir(n)
            with transaction(st.conn) as conn:
                for n in todo:
                    rows.append(st._insert_folder(conn, n))
            return rows
        for row in await st.blocking(make, todo):
            st.folders[row[1]] = Folder(st, row)
        dest = st.folders[new]
        msgs = [inbox.contents.msg(u) for u in list(inbox.contents.uids)]
        if msgs:
            await st._sync(dest, load=False)
            dest_delta, src_delta, _pairs = await st.blocking(st._move_io, inbox, dest, msgs)
            if dest_delta is not None:
                st._apply(dest_delta)
                st._apply(src_delta)
                inbox.notify()

    async def status(self, name):
        st = self._state

        def counts(f):
            unseen = st.conn.execute("SELECT COUNT(*) FROM messages WHERE folder=? AND flags NOT LIKE '%\\Seen%'",
                                     (f.id,)).fetchone()[0]
            recent = st.conn.execute("SELECT COUNT(*) FROM messages WHERE folder=? AND uid>=?",
                                     (f.id, f.first_recent)).fetchone()[0]
            return unseen, recent

        async def work():
            f = await st._lookup(name)
            await st._sync(f, load=False)
            c = f.contents
            if c is None:
                unseen, recent = await st.blocking(counts, f)
            else:
                unseen = sum(1 for r in c.records.values() if "\\Seen" not in r.flags)
                recent = len(c.uids) - bisect.bisect_left(c.uids, f.first_recent)
            return {"MESSAGES": f.messages, "RECENT": recent, "UIDNEXT": f.uidnext, "UIDVALIDITY": f.uidvalidity,
                    "UNSEEN": unseen, "HIGHESTMODSEQ": f.highestmodseq, "SIZE": f.bytes}
        return await self._call(work)

    async def open_folder(self, name, readonly=False):
        st = self._state

        async def work():
            f = await st._lookup(name)
            claimed = await st._sync(f, load=True, claim=not readonly)
            view = FolderView(st, f, readonly, self.quota_bytes, self.quota_messages)
            if readonly:
                i = bisect.bisect_left(f.contents.uids, f.first_recent)
                view.recent = set(f.contents.uids[i:])
            elif claimed:
                view._claim(claimed)
            f.views.append(view)
            st.store._forget_idle(f)
            return view
        return await self._call(work)

    async def append(self, name, data, flags=(), internaldate=None):
        data = bytes(data)
        flags = normalize_flags(flags)
        if internaldate is None:
            internaldate = time.time()
        internaldate = float(internaldate)
        st = self._state

        async def work():
            f = await st._lookup(name)
            await st._check_quota(self.quota_bytes, len(data), self.quota_messages, 1)
            try:
                delta = await st.blocking(st._append_io, f, data, flags, internaldate)
            except _Vanished:
                await st._folder_vanished(f)
                raise FolderError("Mailbox does not exist") from None
            st._apply(delta)
            f.notify()
            return f.uidvalidity, delta.added[0].record.uid
        return await self._call(work)

    async def quota(self):
        st = self._state

        async def work():
            await st._sync_all()
            used, count = st.used()
            return used, self.quota_bytes, count, self.quota_messages
        return await self._call(work)


def _release(state):
    state.handles -= 1


@implementer(IFolder)
class FolderView:
    """One session's view of a selected folder (IFolder); see the module docstring.

    Besides IFolder: ``recent`` is the set of UIDs that are \\Recent for this session
    (RFC 3501: each new message is \\Recent in exactly one read-write session).
    """

    log = Logger()

    def __init__(self, state, folder, readonly, quota_bytes=0, quota_messages=0):
        self._state = state
        self.quota_bytes = quota_bytes
        self.quota_messages = quota_messages
        self.folder = folder
        self.name = folder.name
        self.readonly = bool(readonly)
        c = folder.contents
        records = c.records
        self.records = list(map(records.__getitem__, c.uids))
        self.recent = set()
        self.uidvalidity = folder.uidvalidity
        self.uidnext = folder.uidnext
        self.highestmodseq = folder.highestmodseq
        self._version = folder.version
        self._known_uidnext = folder.uidnext
        self._listeners = []
        self._closed = False
        self._gone = False

    def __repr__(self):
        return f"<FolderView {self._state.key} {self.name!r}>"

    # --- helpers -----------------------------------------------------------------------------

    def _check(self, write=False):
        if self._closed:
            raise FolderError("Mailbox is not selected")
        if self._gone or self.folder.gone:
            raise FolderGone("The mailbox was deleted or its index rebuilt")
        if write and self.readonly:
            raise FolderError("Mailbox is read-only")

    def _find(self, uid):
        records = self.records
        i = bisect.bisect_left(records, uid, key=_uid_of)
        if i < len(records) and records[i].uid == uid:
            return i
        return None

    def _claim(self, claimed):
        lo, hi = claimed
        c = self.folder.contents
        i = bisect.bisect_left(c.uids, lo)
        j = bisect.bisect_left(c.uids, hi)
        self.recent.update(c.uids[i:j])

    def _catch_up(self, claimed=None):
        f = self.folder
        c = f.contents
        touched = set()
        for version, uids in f.journal:
            if version > self._version:
                touched.update(uids)
        expunged, changed = [], []
        positions = {}
        for uid in sorted(touched):
            i = self._find(uid)
            if i is None:
                continue
            rec = c.records.get(uid)
            if rec is None:
                expunged.append(uid)
            elif rec is not self.records[i]:
                changed.append(rec)
                positions[uid] = i
        for rec in changed:
            self.records[positions[rec.uid]] = rec
        if expunged:
            gone = set(expunged)
            self.records = [r for r in self.records if r.uid not in gone]
            self.recent -= gone
        start = bisect.bisect_left(c.uids, self._known_uidnext)
        added = [c.records[u] for u in c.uids[start:]]
        self.records.extend(added)
        if claimed:
            self._claim(claimed)
        if self.readonly:
            self.recent.update(r.uid for r in added if r.uid >= f.first_recent)
        self._known_uidnext = f.uidnext
        self._version = f.version
        self.uidnext = f.uidnext
        self.highestmodseq = f.highestmodseq
        f.trim_journal()
        return FolderChanges(expunged=expunged, added=added, changed=changed)

    def _mine(self, uids):
        """The shared Msgs of the UIDs this view holds (and the folder still has), ascending."""
        c = self.folder.contents
        wanted = sorted(set(uids))
        if len(wanted) > 16:        # many: one set of the view's UIDs beats a bisect each
            held = {r.uid for r in self.records}
            wanted = [uid for uid in wanted if uid in held]
        else:
            wanted = [uid for uid in wanted if self._find(uid) is not None]
        out = []
        for uid in wanted:
            m = c.msg(uid)
            if m is not None:
                out.append(m)
        return out

    def _take_own(self, records):
        """This session's own change: its view shows it now (refresh will not repeat it)."""
        for rec in records:
            i = self._find(rec.uid)
            if i is not None:
                self.records[i] = rec
        self.highestmodseq = self.folder.highestmodseq

    def _drop_own(self, uids):
        gone = set(uids)
        if gone:
            self.records = [r for r in self.records if r.uid not in gone]
            self.recent -= gone
        self.highestmodseq = self.folder.highestmodseq

    # --- IFolder ------------------------------------------------------------------------------

    async def refresh(self):
        st = self._state

        async def work():
            self._check()
            claimed = await st._sync(self.folder, load=True, claim=not self.readonly, exclude=self)
            self._check()
            return self._catch_up(claimed)
        return await st.call(work)

    async def store_flags(self, uids, flags, mode, unchanged_since=None):
        if mode not in ("+", "-", "="):
            raise ValueError(f"bad mode {mode!r}")
        flags = normalize_flags(flags)
        st = self._state
        f = self.folder

        async def work():
            self._check(write=True)
            todo, refused = [], []
            for m in self._mine(uids):
                rec = m.record
                if unchanged_since is not None and rec.modseq > unchanged_since:
                    refused.append(rec.uid)
                    continue
                if mode == "+":
                    new = rec.flags | flags
                elif mode == "-":
                    new = rec.flags - flags
                else:
                    new = flags
                new = _flagset(new)
                if new != rec.flags:
                    todo.append((m, new))
            if not todo:
                return [], refused
            delta = await st.blocking(st._store_io, f, todo)
            if delta is None:
                return [], refused
            st._apply(delta)
            changed = [m.record for m in delta.updated]
            self._take_own(changed)
            f.notify(exclude=self)
            return changed, refused
        return await st.call(work)

    async def expunge(self, uids=None):
        st = self._state
        f = self.folder

        async def work():
            self._check(write=True)
            current = f.contents.records
            if uids is None:
                candidates = [r.uid for r in self.records]
            else:
                held = {r.uid for r in self.records}
                candidates = sorted({u for u in uids if u in held})
            victims = [u for u in candidates
                       if (rec := current.get(u)) is not None and "\\Deleted" in rec.flags]
            if not victims:
                return []
            removed = await st._expunge(f, victims, exclude=self)
            self._drop_own(removed)
            return sorted(removed)
        return await st.call(work)

    async def _copy_or_move(self, uids, dest_name, move):
        st = self._state
        src = self.folder

        async def work():
            self._check(write=move)
            dest = await st._lookup(dest_name)
            msgs = self._mine(uids)
            if not msgs:
                return dest.uidvalidity, []
            if move and dest is src:
                delta, pairs = await st.blocking(st._copy_io, src, dest, msgs)
                if delta is not None:
                    st._apply(delta)
                    removed = await st._expunge(src, [old for old, _ in pairs], exclude=self)
                    self._drop_own(removed)
                return dest.uidvalidity, pairs
            if not move:
                await st._check_quota(self.quota_bytes, sum(m.record.size for m in msgs),
                                      self.quota_messages, len(msgs))
                delta, pairs = await st.blocking(st._copy_io, src, dest, msgs)
                if delta is not None:
                    st._apply(delta)
                    dest.notify(exclude=self)
                return dest.uidvalidity, pairs
            dest_delta, src_delta, pairs = await st.blocking(st._move_io, src, dest, msgs)
            if dest_delta is not None:
                st._apply(dest_delta)
                st._apply(src_delta)
                self._drop_own(src_delta.removed)
                dest.notify(exclude=self)
                src.notify(exclude=self)
            return dest.uidvalidity, pairs
        return await st.call(work)

    def copy(self, uids, dest):
        return self._copy_or_move(uids, dest, move=False)

    def move(self, uids, dest):
        return self._copy_or_move(uids, dest, move=True)

    def open_message(self, uid):
        self._check()
        f = self.folder
        m = f.contents.msg(uid) if f.contents is not None else None
        if m is None:
            raise FileNotFoundError(errno.ENOENT, f"message UID {uid} was expunged")
        path = self._locate(m)
        if m.lf:
            return read_crlf(path)
        return open_nofollow(path)

    def _locate(self, m, found=None):
        """The file of a Msg; when another program renamed it (flags), look for it.
        ``found`` (a dict) lets a batch list new/ and cur/ once for all its misses."""
        f = self.folder
        path = os.path.join(f.path, m.relpath())
        if os.path.lexists(path):
            return path
        tries = [os.path.join(f.path, "new", m.base)]
        letters = "DFRST"
        for mask in range(32):
            tries.append(os.path.join(f.path, "cur", m.base + ":2," + "".join(
                letters[i] for i in range(5) if mask & (1 << i))))
        for p in tries:
            if os.path.lexists(p):
                return p
        if found is None:
            for sub in ("cur", "new"):
                with os.scandir(os.path.join(f.path, sub)) as it:
                    for entry in it:
                        if split_name(entry.name)[0] == m.base:
                            return entry.path
            raise FileNotFoundError(errno.ENOENT, f"message UID {m.record.uid} is gone")
        if not found:
            found[None] = None          # listed (even when both are empty)
            for sub in ("cur", "new"):
                try:
                    with os.scandir(os.path.join(f.path, sub)) as it:
                        for entry in it:
                            found.setdefault(split_name(entry.name)[0], entry.path)
                except FileNotFoundError:
                    pass
        path = found.get(m.base)
        if path is None:
            raise FileNotFoundError(errno.ENOENT, f"message UID {m.record.uid} is gone")
        return path

    async def structure(self, uid):
        got = await self.structures([uid])
        structure = got.get(uid)
        if structure is None:
            raise FileNotFoundError(errno.ENOENT, f"message UID {uid} was expunged")
        return structure

    async def structures(self, uids):
        """{uid: MessageStructure} for ``uids``; see IFolder.structures.

        Per chunk of at most STRUCTURE_CHUNK UIDs, one pool call under the user's lock
        reads the cached blobs with one query, parses the files of the others and
        stores their blobs in one transaction (a call that has read
        STRUCTURE_CHUNK_BYTES of files stops there; the next one goes on). The lock is
        released between calls, so the user's other sessions get their turn. The
        reactor only slices the UID list: Msgs are made on the pool thread."""
        self._check()
        st = self._state
        cls = st.store.structure_class()
        wanted = sorted(set(uids))
        out = {}
        k = 0
        while k < len(wanted):
            chunk = wanted[k:k + STRUCTURE_CHUNK]

            async def work(chunk=chunk):
                self._check()
                return await st.blocking(self._structures_io, chunk, cls)
            got, done = await st.call(work)
            out.update(got)
            k += done
        return out

    def _structures_io(self, uids, cls):
        """Pool thread, lock held: the structures of ``uids`` (ascending), from the index
        where cached, else parsed from the file and cached (one transaction). Messages
        that are gone (expunged, file vanished or unreadable) are left out. Returns
        ({uid: structure}, how many of ``uids`` were done: all, unless the files read
        reached STRUCTURE_CHUNK_BYTES)."""
        f = self.folder
        c = f.contents
        if c is None:
            return {}, len(uids)
        records = c.records
        known = [uid for uid in uids if uid in records]
        conn = self._state.conn
        blobs = {}
        for i in range(0, len(known), SQL_VARIABLES):
            part = known[i:i + SQL_VARIABLES]
            blobs.update(conn.execute(f"SELECT uid, data FROM structures WHERE folder=? AND uid IN "
                                      f"({','.join('?' * len(part))})", (f.id, *part)))
        out = {}
        fresh = []
        found = {}
        budget = STRUCTURE_CHUNK_BYTES
        done = len(uids)
        for i, uid in enumerate(uids):
            blob = blobs.get(uid)
            if blob is not None:
                try:
                    out[uid] = cls.from_bytes(bytes(blob))
                    continue
                except Exception:
                    self.log.failure("cached structure of UID {uid} unreadable; parsing again", uid=uid)
            m = c.msg(uid)
            if m is None:
                continue
            try:
                path = self._locate(m, found)
                with (read_crlf(path) if m.lf else open_nofollow(path)) as fp:
                    data = fp.read()
            except FileNotFoundError:
                continue                # removed by another program: the next sync expunges it
            except OSError as e:
                self.log.warn("maildir: cannot read UID {uid} of {folder}: {error}", uid=uid, folder=f.name,
                              error=str(e))
                continue
            try:
                structure = cls.parse(data)
                blob = structure.to_bytes()
            except Exception:
                self.log.failure("maildir: cannot parse UID {uid} of {folder}", uid=uid, folder=f.name)
                continue
            out[uid] = structure
            fresh.append((f.id, uid, blob, f.id, uid))
            budget -= len(data)
            if budget <= 0:
                done = i + 1
                break
        if fresh and not f.gone:
            try:
                with transaction(conn):
                    conn.executemany("INSERT OR REPLACE INTO structures (folder, uid, data) SELECT ?, ?, ? "
                                     "WHERE EXISTS (SELECT 1 FROM messages WHERE folder=? AND uid=?)", fresh)
            except sqlite3.OperationalError as e:
                # only a cache: the answer stands, the next call parses again
                self.log.warn("index: cannot cache {n} structures of {folder}: {error}", n=len(fresh),
                              folder=f.name, error=str(e))
        return out, done

    async def vanished_since(self, modseq):
        st = self._state
        f = self.folder

        async def work():
            self._check()
            return await st.blocking(lambda: [row[0] for row in st.conn.execute(
                "SELECT uid FROM expunged WHERE folder=? AND modseq>? ORDER BY uid", (f.id, modseq))])
        return await st.call(work)

    def listen(self, callback):
        self._listeners.append(callback)

        def stop():
            try:
                self._listeners.remove(callback)
            except ValueError:
                pass
        return stop

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._listeners = []
        f = self.folder
        if self in f.views:
            f.views.remove(self)
        f.trim_journal()
        if not f.views and f.contents is not None:
            self._state.store._touch_idle(f)


def _uid_of(record):
    return record.uid

