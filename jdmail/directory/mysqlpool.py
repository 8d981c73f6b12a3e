"""MySQL/MariaDB connections for the directory: pymysql through twisted.enterprise.adbapi.

Queries run on adbapi's own small thread pool, never on the reactor. A connection
that breaks (server restarted, killed, network cut) is dropped and the next query
opens a new one; a query that found its pooled connection dead is tried once more on
a fresh connection, so the first lookup after a restart already succeeds. Whatever
still fails becomes DirectoryUnavailable (a temporary failure for the protocols),
logged once when the server goes away and once when it answers again.
"""

import os
import ssl

import pymysql
from twisted.enterprise import adbapi
from twisted.logger import Logger

from jdmail.errors import ConfigError, DirectoryUnavailable

__all__ = ["connect_kwargs", "MySQLPool", "is_connection_error", "describe"]

# Client error codes meaning "the connection is gone", not "the query is wrong".
_CONNECTION_CODES = {2002, 2003, 2005, 2006, 2013, 2026, 2055, 1053, 1927, 4031}


def is_connection_error(error):
    """True when ``error`` means the connection is unusable (drop it, try a new one)."""
    if isinstance(error, (adbapi.ConnectionLost, pymysql.err.InterfaceError, ConnectionError,
                          BrokenPipeError, TimeoutError)):
        return True
    if isinstance(error, pymysql.err.OperationalError) and error.args:
        return error.args[0] in _CONNECTION_CODES
    return False


def describe(error):
    """One line for the log: pymysql's (code, message) without the tuple punctuation."""
    args = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(error) or type(error).__name__


def _tls_context(mode, cafile):
    if mode == "verify":
        return ssl.create_default_context(cafile=cafile or None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect_kwargs(settings, path=None, section="directory"):
    """pymysql.connect keyword arguments for validated ``settings``; ConfigError when
    password_file cannot be read or tls_ca is missing."""
    password = settings["password"]
    if settings["password_file"]:
        try:
            with open(os.path.expanduser(settings["password_file"]), encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"{settings['password_file']!r}: cannot read: {e.strerror or e}",
                              path, section, "password_file") from None
    kwargs = dict(user=settings["user"], password=password, database=settings["database"],
                  charset="utf8mb4", connect_timeout=max(1, int(settings["timeout"])),
                  read_timeout=max(1, int(settings["timeout"])),
                  write_timeout=max(1, int(settings["timeout"])), autocommit=False)
    if settings["socket"]:
        kwargs["unix_socket"] = settings["socket"]
    else:
        kwargs.update(host=settings["host"], port=settings["port"])
    if settings["tls"] == "no":
        kwargs["ssl_disabled"] = True
    elif settings["tls"] != "preferred":     # pymysql's own default: TLS when offered
        if settings["tls_ca"] and not os.path.isfile(os.path.expanduser(settings["tls_ca"])):
            raise ConfigError(f"{settings['tls_ca']!r}: no such file", path, section, "tls_ca")
        kwargs["ssl"] = _tls_context(settings["tls"], os.path.expanduser(settings["tls_ca"]))
    return kwargs


class MySQLPool(adbapi.ConnectionPool):
    """adbapi.ConnectionPool over pymysql with quiet reconnects and DirectoryUnavailable.

    ``run(interaction, *args)`` is the one entry point: ``interaction(cursor, *args)``
    runs in a pool thread inside one transaction (committed when it returns).
    """

    log = Logger()

    def __init__(self, kwargs, reactor, size=4, name="directory", check=None):
        self.label = name
        self._down = False
        self._check = check           # called with each new raw connection (schema check)
        super().__init__("pymysql", cp_reactor=reactor, cp_min=1, cp_max=max(1, size),
                         cp_reconnect=True, cp_noisy=False, cp_name=f"jdmail-{name}",
                         cp_openfun=self._opened, **kwargs)

    def _opened(self, conn):
        if self._check is not None:
            try:
                self._check(conn)
            except BaseException:
                conn.close()
                raise

    def _forget(self):
        """Close and drop this thread's connection, if any (it is broken)."""
        conn = self.connections.pop(self.threadID(), None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _runInteraction(self, interaction, *args, **kw):
        # adbapi's own version logs a traceback for every failed rollback of a dead
        # connection and never retries; a backend outage would flood the log.
        for attempt in (1, 2):
            reused = self.threadID() in self.connections
            try:
                conn = self.connectionFactory(self)
                trans = self.transactionFactory(self, conn)
                result = interaction(trans, *args, **kw)
                trans.close()
                conn.commit()
                return result
            except Exception as e:
                broken = is_connection_error(e)
                if not broken:
                    try:
                        raw = self.connections.get(self.threadID())
                        if raw is not None:
                            raw.rollback()
                    except Exception:
                        broken = True
                if broken:
                    self._forget()
                    if reused and attempt == 1:
                        continue      # the pooled connection had died: once more, fresh
                raise

    async def run(self, interaction, *args):
        """Run ``interaction(cursor, *args)`` in a pool thread; its result, or
        DirectoryUnavailable when the server cannot answer."""
        try:
            result = await self.runInteraction(interaction, *args)
        except (pymysql.err.MySQLError, adbapi.ConnectionLost, OSError) as e:
            self._failed(e)
            raise DirectoryUnavailable(f"the {self.label} database cannot answer: {describe(e)}") from None
        except DirectoryUnavailable as e:
            self._failed(e)
            raise
        except Exception:
            self.log.failure("{name}: lookup failed", name=self.label)
            raise DirectoryUnavailable(f"the {self.label} lookup failed") from None
        if self._down:
            self._down = False
            self.log.info("{name}: the MySQL server answers again", name=self.label)
        return result

    def _failed(self, error):
        if is_connection_error(error) or isinstance(error, DirectoryUnavailable):
            if not self._down:
                self._down = True
                self.log.error("{name}: the MySQL directory cannot answer: {error}; lookups "
                               "answer with a temporary failure until it is back",
                               name=self.label, error=describe(error))
        else:
            self.log.error("{name}: query failed: {error}", name=self.label, error=describe(error))
