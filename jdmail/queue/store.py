"""The outbound queue's durable store (issue 4, first brick).

Layout under the queue directory (``<datadir>/queue`` by default)::

    messages/<queue_id>   one stored copy of each message (a hard link to the fsynced
                          SMTP spool file, or an fsynced copy when linking fails)
    queue.sqlite          WAL, synchronous=FULL: the messages and recipients tables

Crash safety comes from the order of writes:

* ``enqueue``: the file (linked, directory fsynced) first, then the rows in one
  committed transaction. Only then may SMTP answer 250. A crash in between leaves a
  file without rows, which was never acknowledged: ``recover()`` removes it.
* removal (``record`` when nothing is left to do, ``delete``): the rows first, then
  the file. A crash in between leaves a file without rows again (removed by recover).
* rows whose file is missing (a disk problem, a hand-made mistake) are logged by
  ``recover()`` and their open recipients become ``bounced`` with the reason
  "message file lost"; the rows stay so the queue runner can send the DSNs and then
  ``delete`` the message.

The store is safe to use from another process (jdmailctl) while the server runs:
every change is one SQLite transaction (busy_timeout, BEGIN IMMEDIATE), each
operation is idempotent, and an operation on a message that is gone is a no-op.
``recover()`` is the one exception: only the server calls it, at startup, before it
accepts mail (it would otherwise take a file being enqueued for an orphan).
"""

import os
import re
import shutil
import sqlite3
import threading
import time

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import IDeliveryQueue, QueuedMessage, QueuedRecipient
from jdmail.sqlitedb import prepare
from jdmail.store.files import fsync_dir

__all__ = ["QueueStore", "QueueError", "backoff", "expired", "OPEN_STATES", "FINAL_STATES",
           "LOST_REASON", "DEFAULT_LIFETIME"]

SCHEMA_VERSION = 1
OPEN_STATES = ("pending", "deferred")          # still to be attempted
FINAL_STATES = ("delivered", "bounced")
STATES = OPEN_STATES + FINAL_STATES + ("held",)
LOST_REASON = "message file lost"
DEFAULT_LIFETIME = 5 * 86400
_QUEUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    queue_id TEXT PRIMARY KEY,
    sender   TEXT NOT NULL,
    arrived  REAL NOT NULL,
    size     INTEGER NOT NULL,
    ret      TEXT NOT NULL DEFAULT '',
    envid    TEXT NOT NULL DEFAULT '',
    held     INTEGER NOT NULL DEFAULT 0,
    warned   INTEGER NOT NULL DEFAULT 0,
    smtputf8 INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_arrived ON messages (arrived, queue_id);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id     TEXT NOT NULL REFERENCES messages (queue_id) ON DELETE CASCADE,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    notify       TEXT NOT NULL DEFAULT '',
    orcpt        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (queue_id, address)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, next_attempt);
"""


class QueueError(Exception):
    """The queue cannot do what was asked (bad queue id, already queued, unreadable
    database). str() is one line for the log or jdmailctl."""


def backoff(attempts, min_backoff=300, max_backoff=3600):
    """Seconds to wait after the ``attempts``-th failed attempt (Postfix-like):
    min_backoff after the first, doubling each time, never more than max_backoff."""
    attempts = max(1, int(attempts))
    # 2 ** 40 is already far past any sensible cap; avoids huge integers
    return min(max_backoff, min_backoff * (2 ** min(attempts - 1, 40)))


def expired(message, now, lifetime=DEFAULT_LIFETIME):
    """True when ``message`` (a QueuedMessage) has been queued for ``lifetime`` seconds."""
    return now - message.arrived >= lifetime


def _recipient(value):
    if isinstance(value, QueuedRecipient):
        return value
    return QueuedRecipient(address=str(value))


@implementer(IDeliveryQueue)
class QueueStore:
    """The durable outbound queue. Every public method but ``recover`` and ``close`` is
    a coroutine whose blocking work runs on ``services.run_blocking``."""

    log = Logger()

    def __init__(self, directory, services, min_backoff=300, max_backoff=3600):
        if directory is None:
            directory = os.path.join(services.datadir, "queue")
        self.directory = directory
        self.messages_dir = os.path.join(directory, "messages")
        self.db_path = os.path.join(directory, "queue.sqlite")
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._services = services
        self._lock = threading.RLock()
        self._db = self._open()

    # --- opening ------------------------------------------------------------------------

    def _open(self):
        try:
            created = False
            for path in (self.directory, self.messages_dir):
                if not os.path.isdir(path):
                    os.makedirs(path, mode=0o700, exist_ok=True)
                    created = True
            if created:
                fsync_dir(self.messages_dir)
                fsync_dir(self.directory)
                fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
            db = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise QueueError(f"cannot open the queue in {self.directory}: {e}") from None
        prepare(db, ("PRAGMA busy_timeout = 10000", "PRAGMA journal_mode = WAL",
                     "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON"),
                self._create_schema,
                lambda e: QueueError(f"cannot open the queue database {self.db_path}: {e}"))
        return db

    def _create_schema(self, db):
        """Create or upgrade the tables (inside _open's write transaction)."""
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        columns = {r[1] for r in db.execute("PRAGMA table_info(messages)")}
        if "smtputf8" not in columns:     # a queue made before SMTPUTF8 was kept
            db.execute("ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        if row[0] is None:
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise QueueError(f"the queue database {self.db_path} has schema version "
                             f"{row[0]}; this jdmail knows version {SCHEMA_VERSION} only")

    def close(self):
        """Close the database connection (blocking; the store is unusable afterwards)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # --- helpers ------------------------------------------------------------------------

    def _file(self, queue_id):
        if not isinstance(queue_id, str) or not _QUEUE_ID.match(queue_id):
            raise QueueError(f"invalid queue id {queue_id!r}")
        return os.path.join(self.messages_dir, queue_id)

    def _write(self, work):
        """Run ``work(db)`` in one BEGIN IMMEDIATE transaction; returns its result."""
        with self._lock:
            db = self._db
            if db is None:
                raise QueueError("the queue is closed")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result

    def _read(self, work):
        """Run ``work(db)`` in one read transaction (a consistent snapshot)."""
        with self._lock:
            db = self._db
            if db is None:
                raise QueueError("the queue is closed")
            db.execute("BEGIN")
            try:
                return work(db)
            finally:
                db.execute("COMMIT")

    @staticmethod
    def _load(db, rows):
        """QueuedMessages for message rows (in their order), with their recipients."""
        messages = []
        for queue_id, sender, arrived, size, ret, envid, held, warned, smtputf8 in rows:
            recipients = [
                QueuedRecipient(address=a, state=s, attempts=n, next_attempt=t, last_error=e,
                                notify=tuple(x for x in notify.split(",") if x), orcpt=o)
                for a, s, n, t, e, notify, o in db.execute(
                    "SELECT address, state, attempts, next_attempt, last_error, notify, orcpt "
                    "FROM recipients WHERE queue_id = ? ORDER BY rowid", (queue_id,))]
            messages.append(QueuedMessage(queue_id=queue_id, sender=sender, recipients=recipients,
                                          arrived=arrived, size=size, ret=ret, envid=envid,
                                          held=bool(held), warned=bool(warned),
                                          smtputf8=bool(smtputf8)))
        return messages

    _COLUMNS = "queue_id, sender, arrived, size, ret, envid, held, warned, smtputf8"

    def _get(self, db, queue_id):
        rows = db.execute(f"SELECT {self._COLUMNS} FROM messages WHERE queue_id = ?",
                          (queue_id,)).fetchall()
        found = self._load(db, rows)
        return found[0] if found else None

    def _unlink(self, queue_id):
        try:
            os.unlink(self._file(queue_id))
        except FileNotFoundError:
            return
        fsync_dir(self.messages_dir)

    # --- enqueue ------------------------------------------------------------------------

    async def enqueue(self, envelope, path, recipients, ret="", envid="", now=None):
        """Store the fsynced message at ``path`` (the SMTP spool file) for ``recipients``
        (QueuedRecipient or plain addresses) under ``envelope.queue_id``. Returns the
        QueuedMessage once the file and the rows are durable. QueueError when the id is
        queued already."""
        return await self._services.run_blocking(
            self._enqueue, envelope, path, recipients, ret, envid, now)

    def _link(self, path, target):
        try:
            os.link(path, target)
            return
        except FileExistsError:
            raise
        except OSError:
            pass             # another file system, no hard links, protected_hardlinks: copy
        temp = os.path.join(self.messages_dir, "." + os.path.basename(target) + ".tmp")
        try:
            with open(path, "rb") as src, open(temp, "xb") as dst:
                shutil.copyfileobj(src, dst, 256 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(temp, target)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def _enqueue(self, envelope, path, recipients, ret, envid, now):
        queue_id = envelope.queue_id
        target = self._file(queue_id)
        now = time.time() if now is None else now
        wanted, seen = [], set()
        for r in map(_recipient, recipients):
            if r.address not in seen:
                seen.add(r.address)
                wanted.append(r)
        if not wanted:
            raise QueueError(f"nothing to queue for {queue_id}: no recipients")
        size = os.stat(path).st_size

        with self._lock:
            if self._read(lambda db: db.execute("SELECT 1 FROM messages WHERE queue_id = ?",
                                                (queue_id,)).fetchone()):
                raise QueueError(f"{queue_id} is queued already")
            if os.path.lexists(target):
                os.unlink(target)     # a leftover of an enqueue that never committed
            self._link(path, target)
            fsync_dir(self.messages_dir)

            def insert(db):
                db.execute("INSERT INTO messages (queue_id, sender, arrived, size, ret, envid, smtputf8) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (queue_id, envelope.sender, now, size, ret or "", envid or "",
                            int(bool(getattr(envelope, "smtputf8", False)))))
                db.executemany(
                    "INSERT INTO recipients (queue_id, address, state, attempts, next_attempt, "
                    "last_error, notify, orcpt) VALUES (?, ?, 'pending', 0, ?, '', ?, ?)",
                    [(queue_id, r.address, now, ",".join(r.notify), r.orcpt or "")
                     for r in wanted])
                return self._get(db, queue_id)
            try:
                message = self._write(insert)
            except BaseException:
                self._unlink(queue_id)
                raise
        self.log.info("queue enqueue id={id} from={sender} rcpts={n} size={size}",
                      id=queue_id, sender=envelope.sender, n=len(wanted), size=size)
        return message

    # --- the runner's side --------------------------------------------------------------

    async def due(self, now, limit):
        """Messages not held with a pending/deferred recipient whose next_attempt <= now,
        oldest first, at most ``limit``. Each carries all its recipients (the runner
        attempts those in OPEN_STATES whose next_attempt <= now)."""
        return await self._services.run_blocking(self._due, now, limit)

    def _due(self, now, limit):
        def work(db):
            rows = db.execute(
                f"SELECT {self._COLUMNS} FROM messages m WHERE held = 0 AND EXISTS ("
                "SELECT 1 FROM recipients r WHERE r.queue_id = m.queue_id "
                "AND r.state IN ('pending', 'deferred') AND r.next_attempt <= ?) "
                "ORDER BY arrived, queue_id LIMIT ?", (now, int(limit))).fetchall()
            return self._load(db, rows)
        return self._read(work)

    async def record(self, queue_id, results):
        """Record an attempt: ``{address: (state, error text, next_attempt)}``; each
        address named counts one attempt. When no recipient is pending or deferred any
        more, the message (rows, then file) is removed: send DSNs *before* recording.
        Returns the QueuedMessage as recorded (its final states even when removed), or
        None when the message is not queued (deleted meanwhile)."""
        return await self._services.run_blocking(self._record, queue_id, results)

    def _record(self, queue_id, results):
        self._file(queue_id)
        for address, (state, _error, _next) in results.items():
            if state not in STATES:
                raise QueueError(f"{queue_id}: unknown recipient state {state!r} for {address}")

        def work(db):
            if not db.execute("SELECT 1 FROM messages WHERE queue_id = ?",
                              (queue_id,)).fetchone():
                return None, False
            db.executemany(
                "UPDATE recipients SET state = ?, last_error = ?, next_attempt = ?, "
                "attempts = attempts + 1 WHERE queue_id = ? AND address = ?",
                [(state, error or "", float(next_attempt or 0), queue_id, address)
                 for address, (state, error, next_attempt) in results.items()])
            message = self._get(db, queue_id)
            done = not any(r.state in OPEN_STATES or r.state == "held"
                           for r in message.recipients)
            if done:
                db.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
                db.execute("DELETE FROM messages WHERE queue_id = ?", (queue_id,))
            return message, done
        message, done = self._write(work)
        if done:
            self._unlink(queue_id)
            self.log.info("queue removed id={id} delivered={ok} bounced={bad}", id=queue_id,
                          ok=sum(r.state == "delivered" for r in message.recipients),
                          bad=sum(r.state == "bounced" for r in message.recipients))
        return message

    async def set_warned(self, queue_id, warned=True):
        """Note that the delay warning was sent. True when the message is queued."""
        return await self._services.run_blocking(self._set_flag, queue_id, "warned", warned)

    def next_attempt(self, attempts, now):
        """When to try again after the ``attempts``-th failure at ``now``."""
        return now + self.backoff(attempts)

    def backoff(self, attempts):
        """Seconds to wait after the ``attempts``-th failed attempt (module ``backoff``
        with this store's min_backoff/max_backoff)."""
        return backoff(attempts, self.min_backoff, self.max_backoff)

    @staticmethod
    def expired(message, now, lifetime=DEFAULT_LIFETIME):
        return expired(message, now, lifetime)

    async def open_message(self, queue_id):
        """A binary file object with the message's octets (FileNotFoundError when gone)."""
        return await self._services.run_blocking(open, self._file(queue_id), "rb")

    # --- jdmailctl's side ----------------------------------------------------------------

    async def list(self):
        """Every QueuedMessage, oldest first."""
        return await self._services.run_blocking(self._list)

    def _list(self):
        return self._read(lambda db: self._load(db, db.execute(
            f"SELECT {self._COLUMNS} FROM messages ORDER BY arrived, queue_id").fetchall()))

    async def get(self, queue_id):
        """One QueuedMessage (jdmailctl queue show), or None."""
        return await self._services.run_blocking(self._get_one, queue_id)

    def _get_one(self, queue_id):
        self._file(queue_id)
        return self._read(lambda db: self._get(db, queue_id))

    async def flush(self, queue_id=None, now=0.0):
        """Make one message (or all) due now: pending/deferred recipients get
        next_attempt = ``now`` (0 by default). Held messages stay held. Returns how
        many messages were touched."""
        return await self._services.run_blocking(self._flush, queue_id, now)

    def _flush(self, queue_id, now):
        if queue_id is not None:
            self._file(queue_id)

        def work(db):
            where, args = "state IN ('pending', 'deferred')", [now]
            if queue_id is not None:
                where += " AND queue_id = ?"
                args.append(queue_id)
            touched = db.execute(f"SELECT count(DISTINCT queue_id) FROM recipients "
                                 f"WHERE {where}", args[1:]).fetchone()[0]
            db.execute(f"UPDATE recipients SET next_attempt = ? WHERE {where}", args)
            return touched
        return self._write(work)

    async def hold(self, queue_id, held=True):
        """Keep a message from being attempted (held=False releases it). True when the
        message is queued."""
        return await self._services.run_blocking(self._set_flag, queue_id, "held", held)

    def _set_flag(self, queue_id, column, value):
        self._file(queue_id)
        return self._write(lambda db: db.execute(
            f"UPDATE messages SET {column} = ? WHERE queue_id = ?",
            (int(bool(value)), queue_id)).rowcount > 0)

    async def delete(self, queue_id):
        """Remove a message without delivering or bouncing it. True when it was queued."""
        return await self._services.run_blocking(self._delete, queue_id)

    def _delete(self, queue_id):
        self._file(queue_id)

        def work(db):
            db.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
            return db.execute("DELETE FROM messages WHERE queue_id = ?",
                              (queue_id,)).rowcount > 0
        existed = self._write(work)
        self._unlink(queue_id)
        if existed:
            self.log.info("queue deleted id={id}", id=queue_id)
        return existed

    # --- startup ------------------------------------------------------------------------

    def recover(self):
        """Blocking; the server calls it once at startup, before accepting mail (never
        jdmailctl). Removes message files without rows (never acknowledged) and copy
        leftovers; logs rows whose file is missing and bounces their open recipients
        with LOST_REASON. Returns (removed orphan ids, [QueuedMessage] with lost files)."""
        with self._lock:
            names = set(os.listdir(self.messages_dir))
            queued = set(self._read(lambda db: [
                row[0] for row in db.execute("SELECT queue_id FROM messages")]))
            removed = []
            for name in sorted(names - queued):
                try:
                    os.unlink(os.path.join(self.messages_dir, name))
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    self.log.warn("queue recover: {name} in {dir} is a directory; left alone",
                                  name=name, dir=self.messages_dir)
                    continue
                if not name.startswith("."):
                    removed.append(name)
            if names - queued:
                fsync_dir(self.messages_dir)
            lost_ids = sorted(queued - names)

            def work(db):
                db.executemany(
                    "UPDATE recipients SET state = 'bounced', last_error = ? "
                    "WHERE queue_id = ? AND state IN ('pending', 'deferred', 'held')",
                    [(LOST_REASON, q) for q in lost_ids])
                return [self._get(db, q) for q in lost_ids]
            lost = self._write(work) if lost_ids else []
        for name in removed:
            self.log.info("queue recover: removed {id}, never acknowledged (no queue entry)",
                          id=name)
        for message in lost:
            self.log.error("queue recover: the file of {id} from={sender} is missing; "
                           "its recipients are bounced ({reason})",
                           id=message.queue_id, sender=message.sender, reason=LOST_REASON)
        return removed, lost
