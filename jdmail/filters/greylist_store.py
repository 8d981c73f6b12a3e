"""Greylisting state in SQL, over any DB-API 2 connection (sqlite3 now, pymysql later).

Two tables, created when missing:

- ``greylist_triplet``: (client network, sender, recipient) -> first seen, last seen,
  passed (1 once the triplet was retried after the delay);
- ``greylist_client``: client network -> how many triplets it passed, last seen
  (auto-allowlisting).

The methods are blocking; callers run them in the thread pool. One lock serialises use of
the connection (sqlite3 connections are not shared between threads concurrently).
"""

import threading

_SCHEMA = (
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
    """The two greylist tables on one DB-API connection."""

    def __init__(self, connection, paramstyle="qmark"):
        self.conn = connection
        self._mark = "?" if paramstyle == "qmark" else "%s"
        self._lock = threading.Lock()
        with self._lock:
            cur = self.conn.cursor()
            for statement in _SCHEMA:
                cur.execute(statement)
            self.conn.commit()

    def _sql(self, text):
        return text.replace("?", self._mark)

    def _one(self, sql, args):
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), args)
        return cur.fetchone()

    def triplet(self, client, sender, recipient):
        """(first_seen, last_seen, passed) or None."""
        with self._lock:
            return self._one("SELECT first_seen, last_seen, passed FROM greylist_triplet "
                             "WHERE client = ? AND sender = ? AND recipient = ?", (client, sender, recipient))

    def record_attempt(self, client, sender, recipient, now):
        """Insert a new triplet first seen ``now``, or refresh last_seen of an existing one.
        Returns (first_seen, passed) as stored after the call."""
        with self._lock:
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
            self.conn.commit()
            return row[0], row[1]

    def restart(self, client, sender, recipient, now):
        """Start an expired triplet over: first seen ``now``, not passed."""
        with self._lock:
            self.conn.cursor().execute(
                self._sql("UPDATE greylist_triplet SET first_seen = ?, last_seen = ?, passed = 0 "
                          "WHERE client = ? AND sender = ? AND recipient = ?"),
                (now, now, client, sender, recipient))
            self.conn.commit()

    def mark_passed(self, client, sender, recipient, now):
        """The triplet came back after the delay: mark it passed (once) and count a pass
        for the client network. Returns the client's pass count."""
        with self._lock:
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
            self.conn.commit()
            return passes

    def client_passes(self, client):
        """(passes, last_seen) of a client network, or None."""
        with self._lock:
            return self._one("SELECT passes, last_seen FROM greylist_client WHERE client = ?", (client,))

    def touch_client(self, client, now):
        """An allowlisted client was seen again: keep its entry from expiring."""
        with self._lock:
            self.conn.cursor().execute(self._sql("UPDATE greylist_client SET last_seen = ? WHERE client = ?"),
                                       (now, client))
            self.conn.commit()

    def expire(self, before_triplet, before_client):
        """Delete triplets last seen before ``before_triplet`` and client entries last seen
        before ``before_client``; returns how many rows went."""
        with self._lock:
            cur = self.conn.cursor()
            cur.execute(self._sql("DELETE FROM greylist_triplet WHERE last_seen < ?"), (before_triplet,))
            gone = cur.rowcount
            cur.execute(self._sql("DELETE FROM greylist_client WHERE last_seen < ?"), (before_client,))
            gone += cur.rowcount
            self.conn.commit()
            return gone


def open_sqlite(path):
    """A sqlite3 connection for the store (WAL, usable from the pool's threads)."""
    import sqlite3
    conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn
