"""The MySQL/MariaDB directory ([directory] type = mysql): the factory and its INI keys.

Two modes:

* jdmail's own schema (jdmail.directory.sql, MySQL dialect; jdmail.directory.mysqlschema),
  created by ``jdmailctl db init`` and upgraded by ``jdmailctl db upgrade``; jdmailctl's
  domain, user, alias and group commands change it. The server refuses to start on a
  schema it does not know (missing, older or newer than this jdmail).
* an existing schema read with the admin's queries (user_query and friends, see
  jdmail.directory.mysqlmap), e.g. PostfixAdmin's or iRedMail's; jdmailctl then
  refuses to change it: that schema's own tools manage it.

Lookups go through an adbapi pool (jdmail.directory.mysqlpool), never blocking the
reactor; jdmailctl uses one plain pymysql connection. pymysql is imported by build()
only, so the plugin list stays cheap.
"""

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.directory.mysqlmap import QUERY_OPTIONS
from jdmail.errors import ConfigError, ConfigErrors, DirectoryUnavailable
from jdmail.interfaces import IDirectoryFactory
from jdmail.options import Option

__all__ = ["CONNECTION_OPTIONS", "MySQLDirectoryFactory"]

CONNECTION_OPTIONS = {
    "host": Option.str(default="localhost", help="MySQL/MariaDB server host name or address"),
    "port": Option.int(default=3306, help="its TCP port"),
    "socket": Option.str(default="", help="a unix socket path to use instead of host and port"),
    "user": Option.str(default="jdmail", help="the MySQL user jdmail logs in as"),
    "password": Option.str(default="", help="that user's password (or use password_file)"),
    "password_file": Option.str(default="", help="a file whose first line is the password"),
    "database": Option.str(default="jdmail", help="the database (schema) holding the directory"),
    "tls": Option.choice(("no", "preferred", "yes", "verify"), default="preferred",
                         help="no; preferred (encrypt when the server offers TLS); yes (always "
                              "encrypt, no certificate check); verify (check the server's "
                              "certificate and host name against tls_ca)"),
    "tls_ca": Option.str(default="", help="CA file for tls = verify (default: the system CAs)"),
    "pool_size": Option.int(default=4, help="connections (and threads) at most"),
    "timeout": Option.duration(default=5.0, help="connect, read and write timeout for one query"),
}


@implementer(IDirectoryFactory)
class MySQLDirectoryFactory:
    """Builds the MySQL/MariaDB directory ([directory] type = mysql)."""

    kind = "mysql"
    description = ("Users, domains, aliases and groups in MySQL/MariaDB: jdmail's own schema "
                   "(jdmailctl db init), or an existing one read with the INI's queries.")
    options = {**CONNECTION_OPTIONS, **QUERY_OPTIONS}
    log = Logger()

    def build(self, name, settings, services):
        from jdmail.directory.mysqlmap import MySQLMapBackend, check_queries
        from jdmail.directory.mysqlpool import MySQLPool, connect_kwargs
        from jdmail.directory.mysqlschema import MySQLMapDirectory, MySQLSchemaBackend
        from jdmail.directory.service import DirectoryService

        path = getattr(services.config, "path", None)
        kwargs = connect_kwargs(settings, path)
        mapped = bool(settings.get("user_query"))
        if not mapped:
            given = [k for k in QUERY_OPTIONS if settings.get(k)]
            if given:
                raise ConfigError("is set but user_query is not; the queries are for an existing "
                                  "schema and need user_query too", path, "directory", given[0])
        else:
            errors = check_queries(settings, path)
            if errors:
                raise ConfigErrors(errors)
        if services.reactor is None:          # jdmailctl: no pool, one plain connection
            if mapped:
                return MySQLMapDirectory(MySQLMapBackend(None, settings, None, name), services, name)
            return DirectoryService(MySQLSchemaBackend(kwargs, None, services, name), services, name)
        if mapped:
            pool = MySQLPool(kwargs, services.reactor, settings["pool_size"], name)
            return MySQLMapDirectory(MySQLMapBackend(pool, settings, services.run_blocking, name),
                                     services, name)
        self._check_schema(kwargs, path)
        pool = MySQLPool(kwargs, services.reactor, settings["pool_size"], name,
                         check=lambda conn: self._check_connection(conn, kwargs["database"]))
        return DirectoryService(MySQLSchemaBackend(kwargs, pool, services, name), services, name)

    def _check_schema(self, kwargs, path):
        """Refuse to start on a schema this jdmail cannot serve, or with wrong credentials.
        A server that cannot be reached now is not fatal: lookups tempfail until it answers."""
        import pymysql
        from jdmail.directory.mysqlpool import describe, is_connection_error
        from jdmail.directory.mysqlschema import read_schema_version, schema_problem

        try:
            conn = pymysql.connect(**kwargs)
        except pymysql.err.MySQLError as e:
            if is_connection_error(e):
                self.log.warn("directory: cannot reach the MySQL server now ({error}); starting "
                              "anyway, lookups answer with a temporary failure until it is back",
                              error=describe(e))
                return
            raise ConfigError(f"cannot use the MySQL directory: {describe(e)}", path, "directory",
                              "type") from None
        try:
            with conn.cursor() as cur:
                problem = schema_problem(read_schema_version(cur), repr(kwargs["database"]))
        except pymysql.err.MySQLError as e:
            raise ConfigError(f"cannot read the MySQL directory: {describe(e)}", path, "directory",
                              "database") from None
        finally:
            conn.close()
        if problem:
            raise ConfigError(problem, path, "directory", "database")

    @staticmethod
    def _check_connection(conn, database):
        """On every new pooled connection: the schema must still be one we know."""
        from jdmail.directory.mysqlschema import read_schema_version, schema_problem

        with conn.cursor() as cur:
            problem = schema_problem(read_schema_version(cur), f"the database {database!r}")
        conn.commit()
        if problem:
            raise DirectoryUnavailable(problem)
