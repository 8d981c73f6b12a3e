"""A small pool of ldap3 connections, used from jdmail's thread pool only.

Every method blocks (network I/O): callers run them with services.run_blocking. A
connection is used by one thread at a time. One that fails (server gone, reset,
timeout) is thrown away and the operation is tried once more on a fresh connection,
so the pool reconnects by itself when the server comes back; when that fails too
the caller gets DirectoryUnavailable.
"""

import math
import queue
import ssl
import threading
from urllib.parse import urlsplit

from twisted.logger import Logger

from jdmail.errors import DirectoryUnavailable

__all__ = ["LDAPConnections", "parse_uri"]

# Result codes (RFC 4511 4.1.9) that mean "ask again later", not "no".
_TEMPORARY = {1: "operationsError", 3: "timeLimitExceeded", 11: "adminLimitExceeded",
              51: "busy", 52: "unavailable", 53: "unwillingToPerform", 80: "other"}
_INVALID_CREDENTIALS = 49
_NO_SUCH_OBJECT = 32
_SIZE_LIMIT_EXCEEDED = 4
_PAGED_RESULTS = "1.2.840.113556.1.4.319"       # RFC 2696 control


def parse_uri(uri):
    """'ldap://host:389' / 'ldaps://host' -> (host, port, use_ssl); ValueError otherwise."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError(f"{uri!r}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{uri!r}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT] with no path")
    use_ssl = parts.scheme.lower() == "ldaps"
    try:
        port = parts.port or (636 if use_ssl else 389)
    except ValueError:
        raise ValueError(f"{uri!r}: the port is not a number from 1 to 65535") from None
    return parts.hostname, port, use_ssl


class LDAPConnections:
    """Bound ldap3 connections to the first answering server of ``uris``.

    Searches run as ``bind_dn`` (anonymous when empty); ``check_password`` binds
    as a user on separate connections, so a user's rights never leak into lookups.
    """

    log = Logger()

    def __init__(self, uris, bind_dn="", bind_password="", start_tls=False, ca_file="",
                 verify=True, timeout=5.0, size=4, page_size=500):
        import ldap3
        self._ldap3 = ldap3
        self.uris = list(uris)
        self._bind_dn, self._bind_password = bind_dn, bind_password
        self._start_tls, self._timeout = start_tls, timeout
        self.page_size = page_size
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
                        ca_certs_file=ca_file or None, version=ssl.PROTOCOL_TLS_CLIENT)
        self._tls = tls
        self._addresses = [parse_uri(uri) for uri in self.uris]
        self._slots = threading.BoundedSemaphore(size)
        self._idle = {"search": queue.LifoQueue(), "auth": queue.LifoQueue()}
        self._closed = False

    # --- connections ----------------------------------------------------------------------

    def _open(self, user, password):
        """A new connection bound as ``user`` (None: anonymous), to the first server that
        answers. Raises DirectoryUnavailable when none does or the bind is refused."""
        ldap3 = self._ldap3
        errors = []
        for host, port, use_ssl in self._addresses:
            # A new Server each time: ldap3 remembers a failed address for a while and
            # would not even try it again right after the directory came back.
            server = ldap3.Server(host, port=port, use_ssl=use_ssl, tls=self._tls,
                                  get_info=ldap3.NONE, connect_timeout=self._timeout)
            conn = ldap3.Connection(server, user=user or None, password=password or None,
                                    authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                                    receive_timeout=max(1, math.ceil(self._timeout)), raise_exceptions=False,
                                    read_only=True, auto_referrals=False,
                                    return_empty_attributes=False)
            try:
                conn.open()
                if self._start_tls and not server.ssl:
                    if not conn.start_tls():
                        raise ldap3.core.exceptions.LDAPStartTLSError(
                            f"StartTLS refused: {conn.result.get('description')}")
                if not conn.bind():
                    code = conn.result.get("result")
                    conn.unbind()
                    what = f"bind as {user!r}" if user else "anonymous bind"
                    raise DirectoryUnavailable(f"{what} refused by {server.host}:{server.port}: "
                                               f"{conn.result.get('description')} ({code})")
                return conn
            except DirectoryUnavailable:
                raise
            except (ldap3.core.exceptions.LDAPException, OSError, ssl.SSLError) as e:
                self._discard(conn)
                errors.append(f"{server.host}:{server.port}: {_describe(e)}")
        raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(errors))

    def _take(self, kind):
        if self._closed:
            raise DirectoryUnavailable("the LDAP directory is shut down")
        if not self._slots.acquire(timeout=self._timeout * 2):
            raise DirectoryUnavailable("every LDAP connection is busy")
        try:
            return self._idle[kind].get_nowait()
        except queue.Empty:
            try:
                if kind == "search":
                    return self._open(self._bind_dn, self._bind_password)
                return self._open(None, None)
            except BaseException:
                self._slots.release()
                raise

    def _give_back(self, kind, conn, ok):
        if ok and not self._closed and not conn.closed:
            self._idle[kind].put(conn)
        else:
            self._discard(conn)
        self._slots.release()

    @staticmethod
    def _discard(conn):
        try:
            conn.unbind()
        except Exception:
            pass

    def _run(self, kind, operation):
        """``operation(conn)`` on a pooled connection; once more on a new one if it fails."""
        ldap3 = self._ldap3
        for attempt in (1, 2):
            conn = self._take(kind)
            try:
                result = operation(conn)
            except (ldap3.core.exceptions.LDAPException, OSError, ssl.SSLError) as e:
                self._give_back(kind, conn, False)
                if attempt == 2:
                    raise DirectoryUnavailable(f"LDAP operation failed: {_describe(e)}") from None
                continue
            except BaseException:
                self._give_back(kind, conn, False)
                raise
            self._give_back(kind, conn, True)
            return result

    def close(self):
        """Unbind every idle connection; later calls raise DirectoryUnavailable."""
        self._closed = True
        for idle in self._idle.values():
            while True:
                try:
                    self._discard(idle.get_nowait())
                except queue.Empty:
                    break

    # --- operations -----------------------------------------------------------------------

    def search(self, base, search_filter, attributes, scope="sub", paged=False):
        """[(dn, {attribute name (lower-case): [str values]})] for a search; an absent
        base is an empty answer. ``paged``: ask in pages (RFC 2696), past the server's
        size limit (Active Directory answers 1,000 entries at most otherwise).
        Raises DirectoryUnavailable."""
        ldap3 = self._ldap3
        scopes = {"sub": ldap3.SUBTREE, "one": ldap3.LEVEL, "base": ldap3.BASE}

        def operation(conn):
            out, cookie = [], None
            while True:
                conn.search(base, search_filter, search_scope=scopes[scope], attributes=list(attributes),
                            time_limit=max(1, int(self._timeout)),
                            paged_size=self.page_size if paged else None, paged_cookie=cookie)
                result = conn.result or {}
                code = result.get("result")
                if code not in (0, _NO_SUCH_OBJECT, _SIZE_LIMIT_EXCEEDED):
                    raise DirectoryUnavailable(f"LDAP search refused: {result.get('description')} "
                                               f"({code}) {result.get('message') or ''}".strip())
                if code == _SIZE_LIMIT_EXCEEDED:
                    self.log.warn("ldap search hit the server's size limit: base={base} filter={filter}",
                                  base=base, filter=search_filter)
                out += [(entry["dn"], _values(entry)) for entry in conn.response or ()
                        if entry.get("type") == "searchResEntry"]
                control = (result.get("controls") or {}).get(_PAGED_RESULTS) or {}
                cookie = (control.get("value") or {}).get("cookie")
                if not paged or not cookie or code != 0:
                    return out
        return self._run("search", operation)

    def check_password(self, dn, password):
        """True when a simple bind as ``dn`` with ``password`` succeeds; False for wrong
        credentials. An empty password is always False (RFC 4513 5.1.2: it would be an
        unauthenticated bind that servers accept)."""
        if not dn or not password:
            return False

        def operation(conn):
            ok = conn.rebind(user=dn, password=password)
            code = conn.result.get("result")
            if ok:
                return True
            if code in _TEMPORARY:
                raise DirectoryUnavailable(f"LDAP bind refused: {conn.result.get('description')} ({code})")
            return False
        return self._run("auth", operation)


def _describe(error):
    return " ".join(str(error).split()) or type(error).__name__


def _values(entry):
    """An ldap3 search entry's attributes as {lower-case name: [str, ...]}."""
    out = {}
    for name, value in (entry.get("attributes") or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out[name.lower()] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                             for v in values]
    return out
