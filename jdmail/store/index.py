"""The per-user SQLite index of a Maildir: ``Maildir/jdmail-index.sqlite`` (WAL).

What it holds (schema version 1):

``folders``
    one row per folder directory: IMAP name, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
    the first UID not yet \\Recent to any session, the RFC 6154 attribute, the
    message/byte totals (quota) and the last seen mtimes of ``new/`` and ``cur/``
    (nanoseconds) with a "trusted" bit each (see folders.py: when an mtime may be
    relied on to say "nothing changed").
``messages``
    (folder, uid) -> the file as last seen (``new/<base>`` or ``cur/<base>:2,<flags>``;
    TEXT, or a BLOB for a name that is not UTF-8), IMAP flags (system flags and keywords,
    space-separated; keywords live only here), MODSEQ, internal date, the RFC822.SIZE and
    whether the file has bare LF line ends (converted on read).
``structures``
    (folder, uid) -> the cached ``MessageStructure.to_bytes()``.
``expunged``
    (folder, uid, modseq) of every expunged message, for QRESYNC VANISHED.
``subscriptions``
    subscribed names (they need not exist, RFC 3501 6.3.6).
``snapshots``
    (folder) -> its message rows packed in one BLOB, for big folders (added to any
    index when it is opened, with the triggers that delete a folder's snapshot when
    one of its rows changes; see jdmail/store/snapshot.py).
``meta``
    schema version, the last UIDVALIDITY handed out, whether the default
    special-use folders were created.

Every change is one transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``) with
``synchronous = FULL``, so a crash leaves the index as it was before or after a
change, never between. The files in the Maildir are the truth for which messages
exist and for their system flags; the index for UIDs, MODSEQs and keywords.

An index that is not a SQLite database, lacks a table or a column, or has another
schema version is moved aside to ``jdmail-index.sqlite.damaged`` and rebuilt from the
Maildir: every folder gets a new UIDVALIDITY, messages get new UIDs and keep the
flags their file names carry; keywords and subscriptions of non-default folders are
what is lost (every existing folder is subscribed again).
"""

import os
import sqlite3
import stat
import time

from twisted.logger import Logger

__all__ = ["INDEX_NAME", "open_index", "transaction", "IndexDamaged", "close_stale", "data_version", "file_id"]

INDEX_NAME = "jdmail-index.sqlite"
SCHEMA_VERSION = "1"
log = Logger()

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    first_recent INTEGER NOT NULL,
    special_use TEXT,
    messages INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    new_mtime INTEGER, new_trusted INTEGER NOT NULL DEFAULT 0,
    cur_mtime INTEGER, cur_trusted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    path NOT NULL,
    flags TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    size INTEGER NOT NULL,
    lf INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
CREATE TABLE structures (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (folder, uid)
);
CREATE TABLE expunged (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
CREATE INDEX expunged_modseq ON expunged (folder, modseq);
CREATE TABLE subscriptions (name TEXT PRIMARY KEY);
"""

# table -> columns the code relies on
EXPECTED = {
    "meta": {"key", "value"},
    "folders": {"id", "name", "uidvalidity", "uidnext", "highestmodseq", "first_recent", "special_use",
                "messages", "bytes", "new_mtime", "new_trusted", "cur_mtime", "cur_trusted"},
    "messages": {"folder", "uid", "path", "flags", "modseq", "internaldate", "size", "lf"},
    "structures": {"folder", "uid", "data"},
    "expunged": {"folder", "uid", "modseq"},
    "subscriptions": {"name"},
}


class IndexDamaged(Exception):
    """The index file is not usable (the caller rebuilds it)."""


class transaction:
    """``with transaction(conn):`` -- BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return False


def _remove_non_regular(path):
    """A symlink, directory or device where an index file belongs is removed (the
    entry itself, never what it points to), so SQLite never writes through it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        return
    log.warn("index: {path} is not a regular file; removing it", path=path)
    if stat.S_ISDIR(st.st_mode):
        os.rename(path, f"{path}.moved-{time.time_ns()}")
    else:
        os.unlink(path)


def _connect(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise IndexDamaged(f"journal mode {mode}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
    except BaseException:
        conn.close()
        raise
    return conn


def _valid(conn):
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None                     # a new, empty file
    for table, columns in EXPECTED.items():
        if table not in tables:
            return f"table {table} missing"
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            return f"table {table} lacks {sorted(columns - have)}"
    row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        return f"schema version {row[0] if row else None!r}"
    return ""


def _create(conn):
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        conn.execute("INSERT INTO meta (key, value) VALUES ('created', ?)", (str(int(time.time())),))


def open_index(maildir):
    """Open (creating or rebuilding) the index of the Maildir at ``maildir``.

    Returns ``(connection, state)`` where state is "ok", "new" (no index existed) or
    "rebuilt" (a damaged index was moved aside). Runs on a pool thread.
    """
    path = os.path.join(maildir, INDEX_NAME)
    for suffix in ("", "-wal", "-shm"):
        _remove_non_regular(path + suffix)
    if os.path.isfile(path + "-wal.hold") and not os.path.lexists(path + "-wal"):
        os.rename(path + "-wal.hold", path + "-wal")     # close_stale was interrupted
    problem = None
    conn = None
    try:
        conn = _connect(path)
        problem = _valid(conn)
    except sqlite3.OperationalError:
        # cannot open, busy, I/O error, disk full, out of file descriptors: a
        # condition of the moment, not a damaged file; rebuilding would throw away
        # every UID and keyword. The caller answers "try again later".
        if conn is not None:
            conn.close()
        raise
    except (sqlite3.DatabaseError, IndexDamaged) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is None:                 # empty database: first use
        _create(conn)
        return conn, "new"
    if problem == "":
        return conn, "ok"
    if conn is not None:
        conn.close()
    log.warn("index: {path} is damaged ({problem}); rebuilding it from the Maildir", path=path,
             problem=problem)
    damaged = path + ".damaged"
    try:
        os.replace(path, damaged)
    except FileNotFoundError:
        pass
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    conn = _connect(path)
    _create(conn)
    return conn, "rebuilt"


def data_version(conn):
    """``PRAGMA data_version``: it changes when another connection (another process)
    committed since the last time this connection read it."""
    return conn.execute("PRAGMA data_version").fetchall()[0][0]


def file_id(path):
    """(st_dev, st_ino) of the index file, None when there is none: another process
    that found it damaged moved it aside and made a new one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def close_stale(conn, path):
    """Close a connection to an index file that is no longer at ``path`` (replaced by
    another process). SQLite, closing the last connection to that old file, would delete
    ``path``-wal and -shm by name: the new index's. They are put aside meanwhile (the
    caller holds the cross-process lock, so no process uses them)."""
    held = []
    for suffix in ("-wal", "-shm"):
        try:
            os.rename(path + suffix, path + suffix + ".hold")
            held.append(suffix)
        except FileNotFoundError:
            pass
    try:
        conn.close()
    except sqlite3.Error:
        pass
    finally:
        for suffix in held:
            os.replace(path + suffix + ".hold", path + suffix)
