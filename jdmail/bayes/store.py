"""Token counts in a SQL database, over a plain DB-API connection.

SQLite by default (a file in the data directory); MySQL/MariaDB (pymysql) when
``[filter:bayes] database`` is a ``mysql://`` URL, or when it is empty and the
directory is in MySQL (jdmail.filters.statedb: its database, shared by the nodes). The SQL is the
portable subset both understand: no upserts, no dialect functions, ``?``
placeholders rewritten to ``%s`` for drivers that want them. Counts change by
relative ``UPDATE ... SET spam = spam + ?``, so a server and ``jdmailctl bayes
train`` writing at once lose nothing; a row two writers both insert makes one
transaction fail and retry.

Every table row has an ``owner``: '' is the global token table, an address is
one user's own. Tokens are 64-bit hashes (jdmail.bayes.tokenizer.token_id).
All methods block; the server calls them on its thread pool.
"""

import os
import threading
import time
from urllib.parse import unquote, urlsplit

__all__ = ["TokenStore", "open_store", "StoreError", "GLOBAL"]

GLOBAL = ""
_CHUNK = 400            # ids per IN (...) list: under every driver's parameter limit
_RETRIES = 3

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bayes_tokens (
        owner VARCHAR(255) NOT NULL,
        token BIGINT NOT NULL,
        spam INTEGER NOT NULL,
        ham INTEGER NOT NULL,
        atime BIGINT NOT NULL,
        PRIMARY KEY (owner, token))""",
    """CREATE TABLE IF NOT EXISTS bayes_totals (
        owner VARCHAR(255) NOT NULL PRIMARY KEY,
        spam INTEGER NOT NULL,
        ham INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bayes_seen (
        owner VARCHAR(255) NOT NULL,
        digest BIGINT NOT NULL,
        label CHAR(4) NOT NULL,
        atime BIGINT NOT NULL,
        PRIMARY KEY (owner, digest))""",
)


class StoreError(Exception):
    """The token database cannot be opened or used; str() is one line for the admin."""


def open_store(database, datadir, mysql=None):
    """A TokenStore for the ``database`` setting: '' (the directory's MySQL database when
    ``mysql``, a jdmail.filters.statedb.MySQLState, is given; else
    ``<datadir>/bayes.sqlite``), a file path or ``sqlite:PATH``, or
    ``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``."""
    database = (database or "").strip()
    if database.startswith("mysql://"):
        return TokenStore(_mysql_connector(database), "mysql")
    if not database and mysql is not None:
        # the tables are the directory schema's (or db init --filters-only's); connect on
        # first use, so a server down at startup only makes scoring fail until it is back
        return TokenStore(_mysql_connector(kwargs=mysql.kwargs), "mysql", where=mysql.where, lazy=True)
    if database.startswith("sqlite:"):
        database = database[len("sqlite:"):]
    path = os.path.abspath(os.path.expanduser(database or os.path.join(datadir, "bayes.sqlite")))
    return TokenStore(_sqlite_connector(path), "sqlite", where=path)


def check_database(database):
    """None when ``database`` is a setting open_store understands, else the problem."""
    database = (database or "").strip()
    if database.startswith("mysql://"):
        parts = urlsplit(database)
        if not parts.hostname or not parts.path.strip("/"):
            return "expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        try:
            parts.port
        except ValueError:
            return "the port is not a number"
        return None
    if "://" in database:
        return "expected a file path, sqlite:PATH or mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    return None


def _sqlite_connector(path):
    def connect():
        import sqlite3
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn, sqlite3
    return connect


def _mysql_connector(url=None, kwargs=None):
    if kwargs is None:
        parts = urlsplit(url)
        kwargs = dict(host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or ""),
                      password=unquote(parts.password or ""), database=parts.path.strip("/"),
                      charset="utf8mb4", autocommit=False, connect_timeout=10)

    def connect():
        try:
            import pymysql
        except ImportError:
            raise StoreError("mysql:// needs the pymysql package (pip install jdmail[mysql])") from None
        return pymysql.connect(**kwargs), pymysql
    return connect


class TokenStore:
    """Token and message counts per owner; see the module docstring."""

    def __init__(self, connector, dialect, where="", lazy=False):
        self._connector = connector
        self.dialect = dialect
        self.where = where or dialect
        self._lock = threading.RLock()
        self._conn = self._driver = None
        if not lazy:            # connect now and create the tables; lazy: on first use
            with self._lock:
                self._connect()
                self._transaction(lambda cur: [cur.execute(sql) for sql in SCHEMA])

    def _connect(self):
        try:
            self._conn, self._driver = self._connector()
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"cannot open the token database {self.where}: {e}") from None
        self._format = self._driver.paramstyle in ("format", "pyformat")

    def _sql(self, text):
        return text.replace("?", "%s") if self._format else text

    def close(self):
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _transaction(self, work):
        """Run ``work(cursor)`` in one transaction; retry it when a concurrent writer
        inserted the same row first; reconnect once after a lost connection."""
        with self._lock:
            reconnected = False
            attempt = 0
            while True:
                if self._conn is None:
                    self._connect()
                cur = self._conn.cursor()
                try:
                    result = work(cur)
                    self._conn.commit()
                    return result
                except self._driver.IntegrityError:
                    self._rollback()
                    attempt += 1
                    if attempt >= _RETRIES:
                        raise
                except (self._driver.OperationalError, self._driver.InterfaceError) as e:
                    self._rollback()
                    if self.dialect == "mysql":
                        self._drop()            # lost (the server restarted): a new connection
                        if not reconnected:
                            reconnected = True
                            continue
                    raise StoreError(f"token database {self.where}: {e}") from None
                finally:
                    try:
                        cur.close()
                    except Exception:
                        pass

    def _drop(self):
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except Exception:
            pass

    def _rollback(self):
        try:
            self._conn.rollback()
        except Exception:
            pass

    # --- reading --------------------------------------------------------------------

    def totals(self, owner=GLOBAL):
        """(spam messages, ham messages) trained for ``owner``."""
        def work(cur):
            cur.execute(self._sql("SELECT spam, ham FROM bayes_totals WHERE owner = ?"), (owner,))
            row = cur.fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)
        return self._transaction(work)

    def counts(self, ids, owner=GLOBAL):
        """{token id: (spam count, ham count)} for those of ``ids`` that are known."""
        ids = list(ids)

        def work(cur):
            found = {}
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cur.execute(self._sql(f"SELECT token, spam, ham FROM bayes_tokens "
                                      f"WHERE owner = ? AND token IN ({marks})"), [owner, *chunk])
                for token, spam, ham in cur.fetchall():
                    found[int(token)] = (int(spam), int(ham))
            return found
        return self._transaction(work)

    def seen(self, digest, owner=GLOBAL):
        """'spam' or 'ham' when this message was trained for ``owner``, else None."""
        def work(cur):
            cur.execute(self._sql("SELECT label FROM bayes_seen WHERE owner = ? AND digest = ?"),
                        (owner, digest))
            row = cur.fetchone()
            return row[0].strip() if row else None
        return self._transaction(work)

    def stats(self):
        """[(owner, spam messages, ham messages, tokens)] for every owner, global first."""
        def work(cur):
            cur.execute("SELECT owner, spam, ham FROM bayes_totals ORDER BY owner")
            rows = cur.fetchall()
            cur.execute("SELECT owner, COUNT(*) FROM bayes_tokens GROUP BY owner")
            tokens = {o: int(n) for o, n in cur.fetchall()}
            return [(o, int(s), int(h), tokens.get(o, 0)) for o, s, h in rows]
        return self._transaction(work)

    # --- writing --------------------------------------------------------------------

    def update(self, deltas, dspam, dham, owner=GLOBAL, seen=(), forget=()):
        """Add ``deltas`` ({token id: (d spam, d ham)}, negative to untrain) and the
        message totals, in one transaction; counts never go below 0. ``seen``:
        [(digest, label)] to record as trained; ``forget``: digests to drop."""
        now = int(time.time())
        ids = list(deltas)
        untrain = dspam < 0 or dham < 0 or any(s < 0 or h < 0 for s, h in deltas.values())

        def work(cur):
            existing = set()
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                cur.execute(self._sql(f"SELECT token FROM bayes_tokens WHERE owner = ? "
                                      f"AND token IN ({marks})"), [owner, *chunk])
                existing.update(int(r[0]) for r in cur.fetchall())
            changes = [(ds, ds, dh, dh, now, owner, t) for t, (ds, dh) in deltas.items() if t in existing]
            if changes:
                cur.executemany(self._sql(
                    "UPDATE bayes_tokens SET "
                    "spam = CASE WHEN spam + ? < 0 THEN 0 ELSE spam + ? END, "
                    "ham = CASE WHEN ham + ? < 0 THEN 0 ELSE ham + ? END, atime = ? "
                    "WHERE owner = ? AND token = ?"), changes)
            new = [(owner, t, max(ds, 0), max(dh, 0), now) for t, (ds, dh) in deltas.items()
                   if t not in existing and (ds > 0 or dh > 0)]
            if new:
                cur.executemany(self._sql("INSERT INTO bayes_tokens (owner, token, spam, ham, atime) "
                                          "VALUES (?, ?, ?, ?, ?)"), new)
            if untrain:
                cur.execute(self._sql("DELETE FROM bayes_tokens WHERE owner = ? AND spam = 0 AND ham = 0"),
                            (owner,))
            cur.execute(self._sql("SELECT spam FROM bayes_totals WHERE owner = ?"), (owner,))
            if cur.fetchone():
                cur.execute(self._sql(
                    "UPDATE bayes_totals SET spam = CASE WHEN spam + ? < 0 THEN 0 ELSE spam + ? END, "
                    "ham = CASE WHEN ham + ? < 0 THEN 0 ELSE ham + ? END WHERE owner = ?"),
                    (dspam, dspam, dham, dham, owner))
            else:
                cur.execute(self._sql("INSERT INTO bayes_totals (owner, spam, ham) VALUES (?, ?, ?)"),
                            (owner, max(dspam, 0), max(dham, 0)))
            for digest in forget:
                cur.execute(self._sql("DELETE FROM bayes_seen WHERE owner = ? AND digest = ?"),
                            (owner, digest))
            for digest, label in seen:
                cur.execute(self._sql("DELETE FROM bayes_seen WHERE owner = ? AND digest = ?"),
                            (owner, digest))
                cur.execute(self._sql("INSERT INTO bayes_seen (owner, digest, label, atime) "
                                      "VALUES (?, ?, ?, ?)"), (owner, digest, label, now))
        self._transaction(work)

    def prune(self, before, max_messages, owner=None):
        """Delete the tokens last trained before ``before`` (epoch seconds) that occur in
        at most ``max_messages`` trained messages, of ``owner`` (None: every table); return
        how many went. jdmail.bayes.expiry decides when and with what."""
        where = "atime < ? AND spam + ham <= ?" + ("" if owner is None else " AND owner = ?")
        args = (int(before), int(max_messages)) + (() if owner is None else (owner,))

        def work(cur):
            cur.execute(self._sql("DELETE FROM bayes_tokens WHERE " + where), args)
            return max(cur.rowcount, 0)
        return self._transaction(work)
