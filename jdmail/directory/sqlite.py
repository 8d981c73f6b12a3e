"""The embedded user directory: jdmail's SQL schema (jdmail.directory.sql) in one SQLite file.

Readers (the server) and writers (jdmailctl) may be different processes: the file
is in WAL mode and every statement runs in its own transaction, so a change made
by jdmailctl reaches the next lookup that is not answered from the cache
([directory] cache_ttl). An older file (schema version 1) is upgraded when opened.
"""

import os
import sqlite3
import threading

from zope.interface import implementer

from jdmail.directory.service import MAX_DEPTH, DirectoryService, mailbox_key
from jdmail.directory.sql import SCHEMA_VERSION, SQLITE, SQLDirectoryBackend, migrate
from jdmail.errors import DirectoryError, DirectoryUnavailable
from jdmail.interfaces import IDirectoryFactory, Option
from jdmail.sqlitedb import prepare

__all__ = ["SQLiteBackend", "SQLiteDirectory", "SQLiteDirectoryFactory", "SCHEMA_VERSION", "MAX_DEPTH",
           "mailbox_key"]


class SQLiteBackend(SQLDirectoryBackend):
    """IDirectoryBackend and IDirectoryAdmin over one SQLite file.

    Lookups run on the calling thread: they are index lookups in a local file."""

    dialect = SQLITE

    def __init__(self, path, services=None, name="directory"):
        self.name = name
        self.path = os.path.abspath(os.path.expanduser(path))
        self._services = services
        self._lock = threading.RLock()
        self._db = self._open()

    def _open(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            if not os.path.exists(self.path):
                # password hashes live here: readable by jdmail only
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise DirectoryError(f"cannot open the directory database {self.path}: {e}") from None
        old, new = prepare(
            db, ("PRAGMA busy_timeout = 5000", "PRAGMA journal_mode = WAL"),
            lambda db: migrate(db.cursor(), SQLITE, f"the directory database {self.path}"),
            lambda e: DirectoryError(f"cannot open the directory database {self.path}: {e}"))
        if old and old != new:
            self.log.info("directory {path}: schema upgraded from version {old} to {new}",
                          path=self.path, old=old, new=new)
        return db

    def close(self):
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _lookup(self, fn):
        try:
            with self._lock:
                return _done(fn(self._db.cursor()))
        except sqlite3.Error as e:
            self.log.error("directory read failed path={path} error={error}", path=self.path, error=e)
            raise DirectoryUnavailable(str(e)) from None

    def _query(self, fn):
        try:
            with self._lock:
                return fn(self._db.cursor())
        except sqlite3.Error as e:
            raise DirectoryError(f"cannot read the directory database {self.path}: {e}") from None

    def _transaction(self, fn):
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise DirectoryError(f"cannot change the directory database {self.path}: {e}") from None
            try:
                result = fn(db.cursor())
                db.execute("COMMIT")
                return result
            except sqlite3.Error as e:
                db.execute("ROLLBACK")
                raise DirectoryError(f"cannot change the directory database {self.path}: {e}") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise


def _done(value):
    """A finished Deferred of ``value``, so lookups are awaitable like any backend's."""
    from twisted.internet.defer import succeed
    return succeed(value)


def SQLiteDirectory(path, services=None, name="directory", **settings):
    """The SQLite directory ready to use: a DirectoryService over an SQLiteBackend.
    ``settings``: [directory] keys (cache_ttl, ...); by default those of ``services.config``."""
    return DirectoryService(SQLiteBackend(path, services, name), services, name,
                            settings=settings or None)


@implementer(IDirectoryFactory)
class SQLiteDirectoryFactory:
    """Builds the embedded SQLite directory ([directory] type = sqlite)."""

    kind = "sqlite"
    description = "Domains, users, aliases and groups in one SQLite file (the embedded default)."
    options = {
        "path": Option.str(default="", help="SQLite database file (default: <datadir>/directory.sqlite)"),
    }

    def build(self, name, settings, services):
        path = settings.get("path") or os.path.join(services.datadir, "directory.sqlite")
        return DirectoryService(SQLiteBackend(path, services, name), services, name)
