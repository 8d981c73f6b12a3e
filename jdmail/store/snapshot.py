"""Snapshots of a big folder's message rows, one BLOB per folder in the index
(``snapshots`` table), so a folder of 100,000 messages loads after a restart without
SQLite making 600,000 Python objects out of its rows.

A snapshot is a pure copy of the folder's ``messages`` rows, taken inside one write
transaction. Triggers on ``messages`` delete it in the same transaction as any insert,
update or delete of one of the folder's rows, so a snapshot that exists is always
what the rows say; when there is none (or it cannot be read) the rows are read.
Snapshots are written at a clean shutdown for the big folders that were loaded
(jdmail.store.maildir); a crash leaves none for the folders it changed, never a
stale one.

Format: ``marshal`` of (version, uids, distinct flag texts, flag text index per
message, modseqs, sizes, internal dates, NUL-separated paths, UIDs with bare LF)
with the numbers as ``array`` bytes."""

import array
import marshal

from jdmail.store.index import transaction

__all__ = ["MIN_MESSAGES", "ensure", "pack", "unpack", "write"]

MIN_MESSAGES = 2000         # smaller folders load from their rows fast enough
VERSION = 1

STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS snapshots (folder INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS snapshots_insert AFTER INSERT ON messages "
    "BEGIN DELETE FROM snapshots WHERE folder = NEW.folder; END",
    "CREATE TRIGGER IF NOT EXISTS snapshots_update AFTER UPDATE ON messages "
    "BEGIN DELETE FROM snapshots WHERE folder IN (OLD.folder, NEW.folder); END",
    "CREATE TRIGGER IF NOT EXISTS snapshots_delete AFTER DELETE ON messages "
    "BEGIN DELETE FROM snapshots WHERE folder = OLD.folder; END",
)
_NAMES = {"snapshots", "snapshots_insert", "snapshots_update", "snapshots_delete"}
ROWS = "SELECT uid, flags, modseq, size, internaldate, path, lf FROM messages WHERE folder=? ORDER BY uid"


def ensure(conn):
    """Create the table and its triggers in an index that lacks them (older indexes)."""
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'snapshots%'")}
    if _NAMES <= have:
        return
    with transaction(conn):
        for statement in STATEMENTS:
            conn.execute(statement)


def _encode(path):
    return path if type(path) is bytes else path.encode("utf-8", "surrogateescape")


def pack(rows):
    """The BLOB for ``rows`` as ROWS selects them (ascending UID)."""
    if not rows:
        return marshal.dumps((VERSION, b"", [], b"", b"", b"", b"", b"", b""))
    uids, texts, modseqs, sizes, idates, paths, lfs = zip(*rows)
    distinct = sorted(set(texts))
    where = {text: i for i, text in enumerate(distinct)}
    return marshal.dumps((
        VERSION,
        array.array("q", uids).tobytes(),
        distinct,
        array.array("I", map(where.__getitem__, texts)).tobytes(),
        array.array("q", modseqs).tobytes(),
        array.array("q", sizes).tobytes(),
        array.array("d", idates).tobytes(),
        b"\0".join(map(_encode, paths)),
        array.array("q", [uid for uid, lf in zip(uids, lfs) if lf]).tobytes(),
    ))


def _numbers(code, data):
    a = array.array(code)
    a.frombytes(data)
    return a.tolist()


def unpack(blob):
    """(uids, flag texts, modseqs, sizes, internal dates, paths, UIDs with bare LF) as
    lists, one entry per message; None when the BLOB is not a snapshot this code reads."""
    try:
        value = marshal.loads(blob)
        version, uids, distinct, index, modseqs, sizes, idates, paths, lf = value
        if version != VERSION:
            return None
        uids = _numbers("q", uids)
        if not uids:
            return [], [], [], [], [], [], []
        texts = list(map(distinct.__getitem__, _numbers("I", index)))
        columns = (uids, texts, _numbers("q", modseqs), _numbers("q", sizes), _numbers("d", idates),
                   paths.decode("utf-8", "surrogateescape").split("\0"))
        if any(len(c) != len(uids) for c in columns) or not all(type(t) is str for t in distinct):
            return None
        return (*columns, _numbers("q", lf))
    except (ValueError, TypeError, EOFError, IndexError):
        return None


def write(conn, folder_id):
    """Snapshot one folder's rows (one write transaction: nothing changes in between).
    Returns the number of messages, or 0 when the folder is too small to need one."""
    with transaction(conn):
        rows = conn.execute(ROWS, (folder_id,)).fetchall()
        if len(rows) < MIN_MESSAGES:
            conn.execute("DELETE FROM snapshots WHERE folder=?", (folder_id,))
            return 0
        conn.execute("INSERT OR REPLACE INTO snapshots (folder, data) VALUES (?, ?)", (folder_id, pack(rows)))
    return len(rows)
