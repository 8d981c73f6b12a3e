"""Where the greylist and Bayes filters keep their state: the directory's database.

* ``[directory] type = mysql`` with jdmail's own schema: that MariaDB/MySQL
  database, whose tables ``jdmailctl db init`` / ``db upgrade`` create (schema
  version 3), so every jdmail node using the directory shares the state;
* ``[directory] type = mysql`` over an existing schema (user_query, e.g.
  PostfixAdmin): that database too, once ``jdmailctl db init --filters-only`` has
  created jdmail's filter tables in it (jdmail changes nothing else there). Until
  then -- or when the server cannot be reached at startup, so the tables cannot be
  checked -- SQLite files in the data directory, with a warning naming the command;
* any other directory (SQLite, LDAP): SQLite (the greylist in the SQLite
  directory's file, else ``<datadir>/greylist.sqlite``; Bayes in
  ``<datadir>/bayes.sqlite``).

``[filter:bayes] database``, when set, still chooses the Bayes database itself.
"""

from dataclasses import dataclass

from twisted.logger import Logger

__all__ = ["MySQLState", "mysql_state", "FILTER_TABLES", "create_filter_tables"]

log = Logger()


@dataclass(frozen=True)
class MySQLState:
    """A MySQL database for filter state: pymysql.connect keyword arguments, and a
    label for the log and ``jdmailctl bayes stats``."""
    kwargs: dict
    where: str


def _label(kwargs):
    place = kwargs.get("unix_socket") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"mysql database {kwargs.get('database')!r} on {place}"


def filter_statements():
    """CREATE TABLE IF NOT EXISTS statements for the greylist and Bayes tables (MySQL)."""
    from jdmail.directory.sql import FILTER_STATEMENTS, MYSQL
    return [MYSQL.ddl(statement) for _dialects, statement in FILTER_STATEMENTS]


FILTER_TABLES = ("greylist_triplet", "greylist_client", "bayes_tokens", "bayes_totals", "bayes_seen")


def create_filter_tables(cursor):
    """Create the filter tables that are missing (``jdmailctl db init --filters-only``)."""
    for statement in filter_statements():
        cursor.execute(statement)


def _has_tables(kwargs):
    """True/False whether every filter table exists; None when the server cannot be asked."""
    import pymysql
    try:
        conn = pymysql.connect(**kwargs)
    except pymysql.err.MySQLError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
            present = {row[0].lower() for row in cur.fetchall()}
        return set(FILTER_TABLES) <= present
    except pymysql.err.MySQLError:
        return None
    finally:
        conn.close()


def mysql_state(config, what="filter"):
    """The MySQLState to keep ``what``'s state in (see the module docstring), or None
    for SQLite. Blocking (one connection for an existing schema): call at startup."""
    if config is None or "directory" not in getattr(config, "components", {}):
        return None
    factory, settings = config.components["directory"]
    if getattr(factory, "kind", None) != "mysql":
        return None
    from jdmail.directory.mysqlpool import connect_kwargs
    kwargs = connect_kwargs(settings, getattr(config, "path", None))
    where = _label(kwargs)
    if not settings.get("user_query"):
        return MySQLState(kwargs, where)          # jdmail's schema: the tables are part of it
    present = _has_tables(kwargs)
    if present:
        return MySQLState(kwargs, where)
    reason = ("has no jdmail filter tables (create them with: jdmailctl db init --filters-only)"
              if present is False else "cannot be reached now to check for jdmail's filter tables")
    log.warn("{what}: the directory's {where} {reason}; keeping the {what} state in SQLite in the "
             "data directory", what=what, where=where, reason=reason)
    return None
