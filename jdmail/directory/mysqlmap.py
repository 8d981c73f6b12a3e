"""A directory backend over an existing MySQL schema, read with the admin's own queries.

Like Postfix's and Dovecot's sql maps: the INI gives a SELECT per lookup, with named
parameters %(address)s, %(local)s and %(domain)s, so a PostfixAdmin or iRedMail
database serves jdmail unchanged. Columns are read by name (use AS to rename):

- user_query: one row per mailbox: address, password, quota_bytes, quota_messages,
  enabled, smtp/pop3/imap (per-protocol switches) or protocols (a list), forward,
  keep_copy, mailbox. Only what the query returns is used; the rest is the default.
- password_query (optional): the hash (column password, or the first one), when the
  user query does not return it; run with the user's primary address.
- domain_query: a row when the domain is ours; alias_of (its target when it is an
  alias domain), quota_bytes, quota_messages.
- alias_query / catchall_query: targets (first column, may be comma-separated).
- group_query (optional): member rows, with optional members_only and senders.
- forward_query (optional): forward targets (first column), optional keep_copy.
- password_update_query (optional): stores %(password)s after a rehash on login.

Hashes without a {SCHEME} prefix in crypt(3) form ($1$, $5$, $6$, $2y$, $argon2id$)
are read as the matching scheme, as Dovecot's CRYPT does.
"""

import re

from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from jdmail.address import AddressError, check_mailbox, normalize, normalize_domain
from jdmail.directory.backend import (PROTOCOLS, DomainRecord, GroupRecord, IDirectoryBackend,
                                      IPasswordRehash, UserRecord)
from jdmail.errors import ConfigError
from jdmail.options import Option
from jdmail.passwords import verify_password

__all__ = ["QUERY_OPTIONS", "PARAMETERS", "check_queries", "MySQLMapBackend"]

PARAMETERS = ("address", "local", "domain")

QUERY_OPTIONS = {
    "user_query": Option.str(default="", help="existing schema: SELECT the mailbox user %(address)s "
                                              "(setting it chooses the existing-schema mode)"),
    "password_query": Option.str(default="", help="existing schema: SELECT the password hash of "
                                                  "%(address)s, when user_query does not"),
    "domain_query": Option.str(default="", help="existing schema: SELECT a row when %(domain)s is ours"),
    "alias_query": Option.str(default="", help="existing schema: SELECT the targets of alias %(address)s"),
    "catchall_query": Option.str(default="", help="existing schema: SELECT the catch-all targets of "
                                                  "%(domain)s (default: alias_query with *@domain)"),
    "group_query": Option.str(default="", help="existing schema: SELECT the members of group %(address)s"),
    "forward_query": Option.str(default="", help="existing schema: SELECT where mail for user "
                                                 "%(address)s is forwarded"),
    "password_update_query": Option.str(default="", help="existing schema: UPDATE the hash of "
                                                         "%(address)s to %(password)s (rehash on login)"),
}

_REQUIRED = ("user_query", "domain_query", "alias_query")
_USER_COLUMNS = {"address", "password", "quota_bytes", "quota_messages", "enabled", "smtp", "pop3",
                 "imap", "protocols", "forward", "keep_copy", "mailbox"}
_CRYPT_SCHEMES = (("$1$", "MD5-CRYPT"), ("$5$", "SHA256-CRYPT"), ("$6$", "SHA512-CRYPT"),
                  ("$2y$", "BLF-CRYPT"), ("$2b$", "BLF-CRYPT"), ("$2a$", "BLF-CRYPT"),
                  ("$argon2id$", "ARGON2ID"), ("$argon2i$", "ARGON2I"))
_SPLIT = re.compile(r"[,\s;]+")
_MAILBOX = re.compile(r"[^/\0]+/[^/\0]+")


class _Params(dict):
    def __missing__(self, key):
        raise KeyError(key)


def check_queries(settings, path=None, section="directory"):
    """ConfigErrors-style list of problems in the query keys of ``settings``."""
    errors = []
    for key in _REQUIRED:
        if not settings.get(key):
            errors.append(ConfigError(f"is required when user_query is set ({QUERY_OPTIONS[key].help})",
                                      path, section, key))
    for key in QUERY_OPTIONS:
        query = settings.get(key)
        if not query:
            continue
        allowed = PARAMETERS + (("password",) if key == "password_update_query" else ())
        try:
            query % _Params((name, "''") for name in allowed)
        except KeyError as e:
            errors.append(ConfigError(f"uses the parameter %({e.args[0]})s; allowed: "
                                      + ", ".join(f"%({n})s" for n in allowed), path, section, key))
        except (ValueError, TypeError) as e:
            errors.append(ConfigError(f"is not a valid query template ({e}); write a literal % as %%",
                                      path, section, key))
    return errors


def rows_as_dicts(cursor):
    """The cursor's remaining rows as dicts keyed by lower-cased column name."""
    names = [d[0].lower() for d in cursor.description or ()]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _truthy(value):
    if value is None:
        return False
    if isinstance(value, (bytes, bytearray)):
        return any(value) and value.strip().lower() not in (b"0", b"n", b"no", b"false", b"f")
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "n", "no", "false", "f", "off")
    return bool(value)


def _text(value):
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _int(value):
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _addresses(values):
    """Addresses from column values that may each hold several (comma/space separated)."""
    out = []
    for value in values:
        for item in _SPLIT.split(_text(value).strip()):
            if item and item not in out:
                out.append(item)
    return out


def _first(row, name):
    """Column ``name`` of ``row``, or its first column."""
    if name in row:
        return row[name]
    return next(iter(row.values()), None)


def _with_scheme(stored):
    """'$6$...' -> '{SHA512-CRYPT}$6$...'; anything else as it is."""
    if stored and not stored.startswith("{"):
        for prefix, scheme in _CRYPT_SCHEMES:
            if stored.startswith(prefix):
                return "{" + scheme + "}" + stored
    return stored


@implementer(IDirectoryBackend)
class MySQLMapBackend:
    """IDirectoryBackend over the admin's queries (see the module docstring)."""

    log = Logger()

    def __init__(self, pool, settings, run_blocking, name="directory"):
        self.name = name
        self._pool = pool
        self._q = {key: settings.get(key) or "" for key in QUERY_OPTIONS}
        self._run_blocking = run_blocking
        self._warned = set()
        if self._q["password_update_query"]:
            alsoProvides(self, IPasswordRehash)

    @staticmethod
    def _params(address):
        local, _, domain = address.rpartition("@")
        return {"address": address, "local": local, "domain": domain}

    def _select(self, cursor, key, params):
        cursor.execute(self._q[key], params)
        return rows_as_dicts(cursor)

    def _warn_columns(self, key, row, known):
        unknown = set(row) - known
        if unknown and key not in self._warned:
            self._warned.add(key)
            self.log.warn("{name}: {key} returns columns jdmail does not read: {columns} "
                          "(it reads: {known})", name=self.name, key=key,
                          columns=", ".join(sorted(unknown)), known=", ".join(sorted(known)))

    # --- IDirectoryBackend ----------------------------------------------------------------

    async def domain(self, name):
        rows = await self._pool.run(self._select, "domain_query", {"address": "", "local": "",
                                                                   "domain": name})
        if not rows:
            return None
        row = rows[0]
        self._warn_columns("domain_query", row, {"alias_of", "quota_bytes", "quota_messages",
                                                 *list(row)[:1]})
        alias_of = normalize_domain(_text(row.get("alias_of")).strip())
        return DomainRecord(name=name, alias_of="" if alias_of == name else alias_of,
                            quota_bytes=_int(row.get("quota_bytes")),
                            quota_messages=_int(row.get("quota_messages")))

    def _user_rows(self, cursor, params):
        users = self._select(cursor, "user_query", params)
        forwards = passwords = None
        if users and self._q["forward_query"]:
            forwards = self._select(cursor, "forward_query", params)
        if users and self._q["password_query"]:
            primary = _text(users[0].get("address")).strip() or params["address"]
            passwords = self._select(cursor, "password_query", self._params(normalize(primary)))
        return users, forwards, passwords

    async def user(self, address):
        users, forwards, passwords = await self._pool.run(self._user_rows, self._params(address))
        if not users:
            return None
        row = users[0]
        self._warn_columns("user_query", row, _USER_COLUMNS)
        primary = _text(row.get("address")).strip() or address
        try:
            check_mailbox(primary)
            primary = normalize(primary)
        except AddressError:
            primary = address
        protocols = PROTOCOLS
        if "protocols" in row:
            protocols = frozenset(p.lower() for p in _addresses([row["protocols"]])) & PROTOCOLS
        switches = {p for p in PROTOCOLS if p in row}
        if switches:
            protocols = frozenset(p for p in protocols if p not in switches or _truthy(row[p]))
        forward = tuple(_addresses([row["forward"]])) if "forward" in row else ()
        keep_copy = _truthy(row["keep_copy"]) if "keep_copy" in row else True
        if forwards:
            forward = tuple(_addresses(_first(r, "forward") for r in forwards))
            if "keep_copy" in forwards[0]:
                keep_copy = _truthy(forwards[0]["keep_copy"])
        mailbox = _text(row.get("mailbox")).strip().strip("/")
        if mailbox and (not _MAILBOX.fullmatch(mailbox) or ".." in mailbox.split("/")):
            self.log.warn("{name}: user_query gave mailbox {mailbox!r} for {address}: not of the form "
                          "domain/user; using the default", name=self.name, mailbox=mailbox,
                          address=primary)
            mailbox = ""
        password = row.get("password")
        if passwords is not None:
            password = _first(passwords[0], "password") if passwords else None
        return UserRecord(address=primary,
                          password=_with_scheme(_text(password)) if password is not None else None,
                          quota_bytes=_int(row.get("quota_bytes")),
                          quota_messages=_int(row.get("quota_messages")),
                          enabled=_truthy(row["enabled"]) if "enabled" in row else True,
                          protocols=frozenset(protocols), forward=forward, keep_copy=keep_copy,
                          mailbox=mailbox)

    async def aliases(self, source):
        key = "alias_query"
        if source.startswith("*@") and self._q["catchall_query"]:
            key = "catchall_query"
        rows = await self._pool.run(self._select, key, self._params(source))
        targets = []
        for target in _addresses(_first(r, "target") for r in rows):
            try:
                check_mailbox(target)
            except AddressError:
                self._bad_target(key, source, target)
                continue
            target = normalize(target)
            if target not in targets:
                targets.append(target)
        return targets

    def _bad_target(self, key, source, target):
        self.log.warn("{name}: {key} gave {target!r} for {source}, which is not an address; skipped",
                      name=self.name, key=key, target=target, source=source)

    async def group(self, address):
        if not self._q["group_query"]:
            return None
        rows = await self._pool.run(self._select, "group_query", self._params(address))
        if not rows:
            return None
        members = []
        for member in _addresses(_first(r, "member") for r in rows):
            try:
                check_mailbox(member)
            except AddressError:
                self._bad_target("group_query", address, member)
                continue
            members.append(normalize(member))
        senders = _addresses(r["senders"] for r in rows if "senders" in r)
        return GroupRecord(address=address, members=tuple(dict.fromkeys(members)),
                           members_only=any(_truthy(r.get("members_only")) for r in rows),
                           senders=tuple(s.lower() for s in senders))

    async def verify(self, record, password):
        if not record.password:
            return False
        return await self._run_blocking(verify_password, record.password, password)

    # --- IPasswordRehash (only when password_update_query is set) ----------------------------

    async def set_password_hash(self, address, password_hash):
        params = dict(self._params(address), password=password_hash)

        def update(cursor):
            cursor.execute(self._q["password_update_query"], params)
            return cursor.rowcount
        try:
            await self._pool.run(update)
        except Exception as e:
            self.log.warn("{name}: could not store the new hash of {address}: {error}",
                          name=self.name, address=address, error=e)
