"""jdmail's own schema in MySQL/MariaDB (jdmail.directory.sql, MySQL dialect).

Two modes:

* jdmail's own schema (jdmail.directory.sql, MySQL dialect), created by
  ``jdmailctl db init`` and upgraded by ``jdmailctl db upgrade``; jdmailctl's domain,
  user, alias and group commands change it. The server refuses to start on a schema
  it does not know (missing, older or newer than this jdmail).
* an existing schema read with the admin's queries (user_query and friends, see
  jdmail.directory.mysqlmap), e.g. PostfixAdmin's or iRedMail's; jdmailctl then
  refuses to change it: its own tools manage it.

Lookups go through an adbapi pool (jdmail.directory.mysqlpool), never blocking the
reactor; jdmailctl uses one plain pymysql connection.
"""

import pymysql
from twisted.logger import Logger

from jdmail.directory.mysqlpool import describe, is_connection_error
from jdmail.directory.service import DirectoryService
from jdmail.directory.sql import MYSQL, SCHEMA_VERSION, SQLDirectoryBackend, migrate
from jdmail.errors import DirectoryError, DirectoryUnavailable

__all__ = ["MySQLSchemaBackend", "MySQLMapDirectory", "read_schema_version", "schema_problem"]

_NO_TABLE = 1146
_LOCK = "jdmail_directory_schema"


def read_schema_version(cursor):
    """The jdmail schema version of the connected database (0: none), read-only."""
    try:
        cursor.execute("SELECT max(version) FROM schema_version")
    except pymysql.err.ProgrammingError as e:
        if e.args and e.args[0] == _NO_TABLE:
            return 0
        raise
    row = cursor.fetchone()
    return row[0] if row and row[0] is not None else 0


def schema_problem(version, subject):
    """The sentence saying why schema ``version`` cannot be served, or '' when it can;
    ``subject`` names the database ("the database 'mail'")."""
    if version == SCHEMA_VERSION:
        return ""
    if version == 0:
        return f"{subject} has no jdmail schema; run: jdmailctl db init"
    if version < SCHEMA_VERSION:
        return (f"{subject} has jdmail schema version {version}, older than this jdmail's "
                f"{SCHEMA_VERSION}; run: jdmailctl db upgrade")
    return (f"{subject} has jdmail schema version {version}; this jdmail knows version "
            f"{SCHEMA_VERSION} only (upgrade jdmail)")


class MySQLSchemaBackend(SQLDirectoryBackend):
    """jdmail's own schema in MySQL/MariaDB: lookups through ``pool`` (None in
    jdmailctl), admin operations and schema changes on one pymysql connection."""

    log = Logger()
    dialect = MYSQL

    def __init__(self, kwargs, pool=None, services=None, name="directory"):
        self.name = name
        self._kwargs = kwargs
        self._pool = pool
        self._services = services
        self._conn = None
        self.database = kwargs.get("database", "")

    # --- what SQLDirectoryBackend needs -----------------------------------------------------

    def _lookup(self, fn):
        if self._pool is None:
            raise DirectoryUnavailable("no connection pool (jdmailctl)")
        return self._pool.run(fn)

    def _connection(self, check=True):
        if self._conn is None:
            try:
                self._conn = pymysql.connect(**self._kwargs)
            except pymysql.err.MySQLError as e:
                raise DirectoryError(f"cannot connect to the MySQL directory: {describe(e)}") from None
        if check:
            with self._conn.cursor() as cur:
                problem = schema_problem(read_schema_version(cur), f"the database {self.database!r}")
            self._conn.commit()
            if problem:
                raise DirectoryError(problem)
        return self._conn

    def _query(self, fn):
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                result = fn(cur)
            conn.commit()
            return result
        except pymysql.err.MySQLError as e:
            self._drop(e)
            raise DirectoryError(f"cannot read the MySQL directory: {describe(e)}") from None

    def _transaction(self, fn):
        conn = self._connection()
        try:
            conn.begin()
            with conn.cursor() as cur:
                result = fn(cur)
            conn.commit()
            return result
        except pymysql.err.MySQLError as e:
            self._drop(e)
            raise DirectoryError(f"cannot change the MySQL directory: {describe(e)}") from None
        except BaseException:
            conn.rollback()
            raise

    def _drop(self, error):
        if self._conn is None:
            return
        try:
            if is_connection_error(error):
                self._conn.close()
            else:
                self._conn.rollback()
                return
        except pymysql.err.MySQLError:
            pass
        self._conn = None

    def close(self):
        """Close jdmailctl's connection (the pool closes with the reactor)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except pymysql.err.MySQLError:
                pass
            self._conn = None

    # --- jdmailctl db init / upgrade --------------------------------------------------------

    def _migrate(self, want_empty):
        conn = self._connection(check=False)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT GET_LOCK(%s, 30)", (_LOCK,))
                try:
                    current = read_schema_version(cur)
                    if want_empty and current:
                        raise DirectoryError(f"the database {self.database!r} already has the jdmail "
                                             f"schema (version {current}); to bring it up to date run: "
                                             "jdmailctl db upgrade")
                    if not want_empty and not current:
                        raise DirectoryError(f"the database {self.database!r} has no jdmail schema; "
                                             "run: jdmailctl db init")
                    result = migrate(cur, MYSQL, f"the database {self.database!r}")
                finally:
                    cur.execute("SELECT RELEASE_LOCK(%s)", (_LOCK,))
            conn.commit()
            return result
        except pymysql.err.MySQLError as e:
            self._drop(e)
            raise DirectoryError(f"cannot change the MySQL directory: {describe(e)}") from None

    def schema_init(self):
        """Create jdmail's schema in an empty database; a sentence saying what was done."""
        _, new = self._migrate(want_empty=True)
        return f"created the jdmail schema (version {new}) in the database {self.database!r}"

    def schema_upgrade(self):
        """Apply the missing migrations; a sentence saying what was done."""
        old, new = self._migrate(want_empty=False)
        if old == new:
            return f"the database {self.database!r} is already at jdmail schema version {new}"
        return f"upgraded the database {self.database!r} from jdmail schema version {old} to {new}"


class MySQLMapDirectory(DirectoryService):
    """The service over an existing schema: read only for jdmailctl."""

    read_only_reason = ("it reads an existing schema through [directory] user_query: manage its "
                        "users with that schema's own tools (e.g. PostfixAdmin)")
