"""Greylisting state in SQL, over a DB-API 2 connection: sqlite3, or pymysql for the
directory's MySQL/MariaDB database (jdmail.filters.statedb).

Two tables (created here when missing in SQLite; in MySQL by ``jdmailctl db init`` /
``db upgrade``, or ``db init --filters-only`` for an existing schema):

- ``greylist_triplet``: (client network, sender, recipient) -> first seen, last seen,
  passed (1 once the triplet was retried after the delay);
- ``greylist_client``: client network -> how many triplets it passed, last seen
  (auto-allowlisting).

The methods are blocking; callers run them in the thread pool. One lock serialises use of
the connection (sqlite3 connections are not shared between threads concurrently). Each
method is one transaction; with ``connect`` (MySQL), a method that finds its connection
lost (the server restarted) is run once more on a new one, and while the server is down
every call raises (the filter's on_error applies).
"""

import threading

from jdmail.errors import FilterUnavailable

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS greylist_triplet (
        client VARCHAR(64) NOT NULL,
        sender VARCHAR(255) NOT NULL,
        recipient VARCHAR(255) NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        passed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (client, sender, recipient))""",
    """CREATE TABLE IF NOT EXISTS greylist_client (
        client VARCHAR(64) NOT NULL PRIMARY KEY,
        passes INTEGER NOT NULL DEFAULT 0,
        last_seen DOUBLE PRECISION NOT NULL)""",
)


class GreylistStore:
    """The two greylist tables on one DB-API connection.

    ``connection``: an open connection (SQLite; the tables are created), or None with
    ``connect`` (a function returning a new connection) and ``lost`` (True for an
    exception meaning the connection is gone): connected on first use, reconnected
    after a loss (MySQL; the tables exist already)."""

    def __init__(self, connection, paramstyle="qmark", connect=None, lost=None):
        self.conn = connection
        self._connect, self._lost = connect, lost or (lambda error: False)
        self._mark = "?" if paramstyle == "qmark" else "%s"
        self._lock = threading.Lock()
        if connection is not None:
            with self._lock:
                cur = self.conn.cursor()
                for statement in SCHEMA:
                    cur.execute(statement)
                self.conn.commit()

    def _sql(self, text):
        return text.replace("?", self._mark)

    def _one(self, sql, args):
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), args)
        return cur.fetchone()

    def _run(self, work, *args):
        """``work(*args)`` under the lock as one transaction, committed; see the class docstring."""
        with self._lock:
            for attempt in (1, 2):
                fresh = self.conn is None
                if fresh:
                    self.conn = self._connect()
                try:
                    result = work(*args)
                    self.conn.commit()
                    return result
                except Exception as e:
                    if self._connect is not None and self._lost(e):
                        self._drop()
                        if attempt == 1 and not fresh:
                            continue        # the old connection had died: once more, on a new one
                        raise FilterUnavailable(f"the greylist database cannot answer: {e}") from None
                    else:
                        try:
                            self.conn.rollback()
                        except Exception:
                            if self._connect is not None:
                                self._drop()
                    raise

    def _drop(self):
        conn, self.conn = self.conn, None
        if conn is not None and self._connect is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self):
        """Close the connection."""
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def triplet(self, client, sender, recipient):
        """(first_seen, last_seen, passed) or None."""
        return self._run(self._one, "SELECT first_seen, last_seen, passed FROM greylist_triplet "
                         "WHERE client = ? AND sender = ? AND recipient = ?", (client, sender, recipient))

    def record_attempt(self, client, sender, recipient, now):
        """Insert a new triplet first seen ``now``, or refresh last_seen of an existing one.
        Returns (first_seen, passed) as stored after the call."""
        def work():
            cur = self.conn.cursor()
            row = self._one("SELECT first_seen, passed FROM greylist_triplet "
                            "WHERE client = ? AND sender = ? AND recipient = ?", (client, sender, recipient))
            if row is None:
                cur.execute(self._sql("INSERT INTO greylist_triplet (client, sender, recipient, first_seen, "
                                      "last_seen, passed) VALUES (?, ?, ?, ?, ?, 0)"),
                            (client, sender, recipient, now, now))
                row = (now, 0)
            else:
                cur.execute(self._sql("UPDATE greylist_triplet SET last_seen = ? "
                                      "WHERE client = ? AND sender = ? AND recipient = ?"),
                            (now, client, sender, recipient))
            return row[0], row[1]
        return self._run(work)

    def restart(self, client, sender, recipient, now):
        """Start an expired triplet over: first seen ``now``, not passed."""
        def work():
            self.conn.cursor().execute(
                self._sql("UPDATE greylist_triplet SET first_seen = ?, last_seen = ?, passed = 0 "
                          "WHERE client = ? AND sender = ? AND recipient = ?"),
                (now, now, client, sender, recipient))
        self._run(work)

    def mark_passed(self, client, sender, recipient, now):
        """The triplet came back after the delay: mark it passed (once) and count a pass
        for the client network. Returns the client's pass count."""
        def work():
            cur = self.conn.cursor()
            cur.execute(self._sql("UPDATE greylist_triplet SET passed = 1, last_seen = ? "
                                  "WHERE client = ? AND sender = ? AND recipient = ? AND passed = 0"),
                        (now, client, sender, recipient))
            newly = cur.rowcount == 1
            row = self._one("SELECT passes FROM greylist_client WHERE client = ?", (client,))
            passes = (row[0] if row else 0) + (1 if newly else 0)
            if row is None:
                cur.execute(self._sql("INSERT INTO greylist_client (client, passes, last_seen) VALUES (?, ?, ?)"),
                            (client, passes, now))
            else:
                cur.execute(self._sql("UPDATE greylist_client SET passes = ?, last_seen = ? WHERE client = ?"),
                            (passes, now, client))
            return passes
        return self._run(work)

    def client_passes(self, client):
        """(passes, last_seen) of a client network, or None."""
        return self._run(self._one, "SELECT passes, last_seen FROM greylist_client WHERE client = ?", (client,))

    def touch_client(self, client, now):
        """An allowlisted client was seen again: keep its entry from expiring."""
        def work():
            self.conn.cursor().execute(self._sql("UPDATE greylist_client SET last_seen = ? WHERE client = ?"),
                                       (now, client))
        self._run(work)

    def expire(self, before_triplet, before_client):
        """Delete triplets last seen before ``before_triplet`` and client entries last seen
        before ``before_client``; returns how many rows went."""
        def work():
            cur = self.conn.cursor()
            cur.execute(self._sql("DELETE FROM greylist_triplet WHERE last_seen < ?"), (before_triplet,))
            gone = cur.rowcount
            cur.execute(self._sql("DELETE FROM greylist_client WHERE last_seen < ?"), (before_client,))
            return gone + cur.rowcount
        return self._run(work)


def open_mysql(kwargs):
    """A GreylistStore in a MySQL/MariaDB database (pymysql.connect ``kwargs``), connected
    on first use and again after the server restarted; FilterUnavailable while it is down."""
    import pymysql
    from jdmail.directory.mysqlpool import describe, is_connection_error

    def connect():
        try:
            return pymysql.connect(**kwargs)
        except pymysql.err.MySQLError as e:
            raise FilterUnavailable(f"the greylist database cannot answer: {describe(e)}") from None
    return GreylistStore(None, "format", connect=connect, lost=is_connection_error)


def open_sqlite(path):
    """A sqlite3 connection for the store (WAL, usable from the pool's threads)."""
    import sqlite3
    conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn
