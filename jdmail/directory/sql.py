"""jdmail's own SQL directory: schema migrations, primitive lookups and admin operations.

Everything here works on a plain DB-API cursor. Statements are written once with
``?`` placeholders; ``Dialect.sql`` turns them into the driver's style (sqlite3 keeps
``?``, pymysql wants ``%s``). Every other difference between databases is a field of
``Dialect`` (column types, table options, the LIKE escape clause, the order of alias
targets, the error classes): SQLITE and MYSQL below.

Schema versions (table ``schema_version``; ``migrate`` applies the missing ones):

* v1: domains(name), users(address, password, quota_bytes, enabled),
  aliases(source, target) -- what jdmail 0.1 created;
* v2: domains.quota_bytes/quota_messages (defaults for the domain's users),
  users.quota_messages, protocols ('imap,pop3,smtp'), forward (comma-separated,
  NULL = none), keep_copy, and mail_groups(address, members_only),
  group_members(group_address, member), group_senders(group_address, sender).
  ("groups" is a reserved word in MySQL 8, hence mail_groups.)
* v3: the filters' state (jdmail.filters.statedb): greylist_triplet and
  greylist_client (jdmail.filters.greylist_store), and in MySQL only bayes_tokens,
  bayes_totals and bayes_seen (jdmail.bayes.store; with SQLite the tokens stay in
  their own file). ``FILTER_STATEMENTS`` also serves ``jdmailctl db init
  --filters-only`` on an existing (PostfixAdmin) schema.

How a backend plugs in: subclass SQLDirectoryBackend, set ``dialect`` and provide
three methods that run a function ``fn(cursor)``:

* ``_lookup(fn)``: for the server's lookups; may return a Deferred (MySQL:
  ``adbapi.ConnectionPool.runInteraction(fn)``); any database failure must become
  jdmail.errors.DirectoryUnavailable;
* ``_query(fn)``: a read for jdmailctl, synchronous; failures become DirectoryError;
* ``_transaction(fn)``: a write for jdmailctl in one transaction, synchronous,
  committed when ``fn`` returns and rolled back when it raises; failures become
  DirectoryError.

The SQLite backend (jdmail.directory.sqlite) runs all three on one connection; a
MySQL backend would use an adbapi pool for ``_lookup`` and one pymysql connection for
the other two, and call ``migrate(cursor, MYSQL)`` from ``jdmailctl db init/upgrade``
(MySQL commits DDL at once: each version is recorded right after its statements).
"""

import sqlite3
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.address import AddressError, check_mailbox, domain_of, normalize, normalize_domain
from jdmail.bayes.store import SCHEMA as BAYES_SCHEMA
from jdmail.directory.backend import (PROTOCOLS, DomainRecord, GroupRecord, IDirectoryBackend,
                                      IPasswordRehash, UserRecord)
from jdmail.errors import DirectoryError
from jdmail.filters.greylist_store import SCHEMA as GREYLIST_SCHEMA
from jdmail.interfaces import IDirectoryAdmin
from jdmail.passwords import verify_password

__all__ = ["Dialect", "SQLITE", "MYSQL", "SCHEMA_VERSION", "MIGRATIONS", "migrate", "schema_version",
           "SQLDirectoryBackend", "check_domain", "check_address"]

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases jdmail's schema lives in."""
    name: str
    placeholder: str            # "?" (sqlite3) or "%s" (pymysql)
    key: str                    # type of indexed text columns (addresses, domains)
    text: str                   # type of long text (hashes, forward lists)
    short: str                  # type of short text with a default
    int: str
    table_options: str          # appended to CREATE TABLE
    like_escape: str            # the ESCAPE clause for LIKE patterns made by like_domain()
    alias_order: str            # ORDER BY for alias targets (insertion order where possible)
    errors: tuple = ()          # the driver's exception classes

    def sql(self, statement):
        """``statement`` with '?' placeholders in this driver's style."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def ddl(self, statement):
        return statement.format(key=self.key, text=self.text, short=self.short, int=self.int,
                                opts=self.table_options)


SQLITE = Dialect("sqlite", "?", key="TEXT", text="TEXT", short="TEXT", int="INTEGER",
                 table_options="", like_escape="ESCAPE '\\'", alias_order="rowid",
                 errors=(sqlite3.Error,))
MYSQL = Dialect("mysql", "%s", key="VARCHAR(255)", text="TEXT", short="VARCHAR(255)", int="BIGINT",
                table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                like_escape="ESCAPE '\\\\'", alias_order="target")

# (dialects, statement): the filter tables (v3); each store creates the same tables itself.
FILTER_STATEMENTS = (
    *((("sqlite", "mysql"), statement + "{opts}") for statement in GREYLIST_SCHEMA),
    *((("mysql",), statement + "{opts}") for statement in BAYES_SCHEMA),
)

MIGRATIONS = (
    (1, (
        "CREATE TABLE IF NOT EXISTS domains (name {key} PRIMARY KEY){opts}",
        "CREATE TABLE IF NOT EXISTS users (address {key} PRIMARY KEY, password {text}, "
        "quota_bytes {int} NOT NULL DEFAULT 0, enabled {int} NOT NULL DEFAULT 1){opts}",
        "CREATE TABLE IF NOT EXISTS aliases (source {key} NOT NULL, target {key} NOT NULL, "
        "PRIMARY KEY (source, target)){opts}",
    )),
    (2, (
        "ALTER TABLE domains ADD COLUMN quota_bytes {int} NOT NULL DEFAULT 0",
        "ALTER TABLE domains ADD COLUMN quota_messages {int} NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN quota_messages {int} NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN protocols {short} NOT NULL DEFAULT 'imap,pop3,smtp'",
        "ALTER TABLE users ADD COLUMN forward {text}",
        "ALTER TABLE users ADD COLUMN keep_copy {int} NOT NULL DEFAULT 1",
        "CREATE TABLE mail_groups (address {key} PRIMARY KEY, "
        "members_only {int} NOT NULL DEFAULT 0){opts}",
        "CREATE TABLE group_members (group_address {key} NOT NULL, member {key} NOT NULL, "
        "PRIMARY KEY (group_address, member)){opts}",
        "CREATE TABLE group_senders (group_address {key} NOT NULL, sender {key} NOT NULL, "
        "PRIMARY KEY (group_address, sender)){opts}",
    )),
    (3, FILTER_STATEMENTS),
)


def schema_version(cur, dialect):
    """The schema version of the database (0: none yet)."""
    cur.execute(dialect.ddl("CREATE TABLE IF NOT EXISTS schema_version (version {int} NOT NULL){opts}"))
    cur.execute("SELECT max(version) FROM schema_version")
    row = cur.fetchone()
    return row[0] if row and row[0] is not None else 0


def migrate(cur, dialect, where="the directory database"):
    """Bring the schema to SCHEMA_VERSION; returns (old version, new version).
    DirectoryError when the database is newer than this jdmail."""
    old = current = schema_version(cur, dialect)
    if current > SCHEMA_VERSION:
        raise DirectoryError(f"{where} has schema version {current}; "
                             f"this jdmail knows version {SCHEMA_VERSION} only")
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        for statement in statements:
            if isinstance(statement, tuple):          # (dialects, statement)
                dialects, statement = statement
                if dialect.name not in dialects:
                    continue
            cur.execute(dialect.ddl(statement))
        if current == 0:
            cur.execute(dialect.sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        else:
            cur.execute(dialect.sql("UPDATE schema_version SET version = ?"), (version,))
        current = version
    return old, current


# --- checks shared by the admin operations ------------------------------------------------

def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def like_domain(domain):
    """A LIKE pattern matching addresses in ``domain`` (with Dialect.like_escape)."""
    escaped = domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%@" + escaped


def check_domain(domain):
    """The normalised domain, or DirectoryError when it is not a valid domain name."""
    name = normalize_domain(domain)
    if not name or name.startswith("[") or "@" in name:
        raise DirectoryError(f"{domain!r} is not a valid domain name")
    try:
        check_mailbox(f"postmaster@{name}")
    except AddressError:
        raise DirectoryError(f"{domain!r} is not a valid domain name") from None
    if len(name) > 253:
        raise DirectoryError(f"{domain!r} is longer than 253 characters")
    return name


def check_address(address, what="address"):
    """The normalised address, or DirectoryError naming what is wrong."""
    text = address.strip()
    try:
        check_mailbox(text)
    except AddressError as e:
        raise DirectoryError(f"{text!r} is not a valid {what}: {e}") from None
    return normalize(text)


def _check_quota(value, what):
    if value is not None and (not isinstance(value, int) or value < 0):
        raise DirectoryError(f"the {what} must be 0 (no limit) or more")


def _check_protocols(protocols):
    chosen = frozenset(p.strip().lower() for p in protocols if p.strip())
    unknown = chosen - PROTOCOLS
    if unknown:
        raise DirectoryError(f"unknown protocol {', '.join(sorted(unknown))!r} "
                             f"(use {', '.join(sorted(PROTOCOLS))})")
    return chosen


def _sender_key(sender):
    text = sender.strip()
    if text.startswith("@"):
        return "@" + check_domain(text[1:])
    return check_address(text, "sender")


def _list(text):
    return tuple(a for a in (text or "").split(",") if a)


# --- the backend ---------------------------------------------------------------------------

@implementer(IDirectoryBackend, IPasswordRehash, IDirectoryAdmin)
class SQLDirectoryBackend:
    """Primitive lookups and admin operations over jdmail's schema (see the module
    docstring for the three methods a concrete backend provides)."""

    log = Logger()
    dialect = SQLITE
    name = "directory"
    _services = None

    # --- provided by the concrete backend -------------------------------------------------

    def _lookup(self, fn):
        raise NotImplementedError

    def _query(self, fn):
        raise NotImplementedError

    def _transaction(self, fn):
        raise NotImplementedError

    # --- helpers over a cursor ----------------------------------------------------------

    def _rows(self, cur, statement, args=()):
        cur.execute(self.dialect.sql(statement), tuple(args))
        return cur.fetchall()

    def _exists(self, cur, statement, args=()):
        return bool(self._rows(cur, statement, args))

    def _count(self, cur, statement, args=()):
        return self._rows(cur, statement, args)[0][0]

    # --- primitive lookups (IDirectoryBackend), as cursor functions ---------------------------

    def domain_record(self, cur, name):
        rows = self._rows(cur, "SELECT name, quota_bytes, quota_messages FROM domains WHERE name = ?", (name,))
        if rows:
            return DomainRecord(rows[0][0], "", rows[0][1] or 0, rows[0][2] or 0)
        rows = self._rows(cur, "SELECT target FROM aliases WHERE source = ?", ("@" + name,))
        if rows:
            return DomainRecord(name, alias_of=rows[0][0][1:])
        return None

    def user_record(self, cur, address):
        rows = self._rows(cur, "SELECT address, password, quota_bytes, quota_messages, enabled, protocols, "
                               "forward, keep_copy FROM users WHERE address = ?", (address,))
        if not rows:
            return None
        address, password, quota, messages, enabled, protocols, forward, keep = rows[0]
        protocols = frozenset(_list(protocols)) & PROTOCOLS
        if protocols == PROTOCOLS:
            protocols = PROTOCOLS       # shared: every session's account holds one (216 bytes each)
        return UserRecord(address=address, password=password, quota_bytes=quota or 0,
                          quota_messages=messages or 0, enabled=bool(enabled),
                          protocols=protocols,
                          forward=_list(forward), keep_copy=bool(keep))

    def alias_targets(self, cur, source):
        return [row[0] for row in self._rows(
            cur, f"SELECT target FROM aliases WHERE source = ? ORDER BY {self.dialect.alias_order}", (source,))]

    def group_record(self, cur, address):
        rows = self._rows(cur, "SELECT address, members_only FROM mail_groups WHERE address = ?", (address,))
        if not rows:
            return None
        members = self._rows(cur, "SELECT member FROM group_members WHERE group_address = ? ORDER BY member",
                             (address,))
        senders = self._rows(cur, "SELECT sender FROM group_senders WHERE group_address = ? ORDER BY sender",
                             (address,))
        return GroupRecord(address=rows[0][0], members=tuple(r[0] for r in members),
                           members_only=bool(rows[0][1]), senders=tuple(r[0] for r in senders))

    def domain(self, name):
        return self._lookup(lambda cur: self.domain_record(cur, name))

    def user(self, address):
        return self._lookup(lambda cur: self.user_record(cur, address))

    def aliases(self, source):
        return self._lookup(lambda cur: self.alias_targets(cur, source))

    def group(self, address):
        return self._lookup(lambda cur: self.group_record(cur, address))

    async def verify(self, record, password):
        if not record.password:
            return False
        services = self._services
        if services is None or services.threadpool is None or services.reactor is None:
            return verify_password(record.password, password)
        return await services.run_blocking(verify_password, record.password, password)

    def set_password_hash(self, address, password_hash):
        def work(cur):
            cur.execute(self.dialect.sql("UPDATE users SET password = ? WHERE address = ?"),
                        (password_hash, address))
        return self._lookup(work)

    # --- admin (IDirectoryAdmin) ----------------------------------------------------------

    def add_domain(self, domain):
        name = check_domain(domain)

        def work(cur):
            if self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise DirectoryError(f"{name} is already a local domain")
            if self._exists(cur, "SELECT 1 FROM aliases WHERE source = ?", ("@" + name,)):
                raise DirectoryError(f"{name} is already a domain alias; remove the alias @{name} first")
            cur.execute(self.dialect.sql("INSERT INTO domains (name) VALUES (?)"), (name,))
        self._transaction(work)
        return name

    def remove_domain(self, domain):
        name = normalize_domain(domain)
        esc = self.dialect.like_escape

        def work(cur):
            if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise DirectoryError(f"{name} is not a local domain")
            pattern = like_domain(name)
            users = self._count(cur, f"SELECT count(*) FROM users WHERE address LIKE ? {esc}", (pattern,))
            aliases = self._count(
                cur, f"SELECT count(DISTINCT source) FROM aliases WHERE source LIKE ? {esc} OR target = ?",
                (pattern, "@" + name))
            groups = self._count(cur, f"SELECT count(*) FROM mail_groups WHERE address LIKE ? {esc}",
                                 (pattern,))
            if users or aliases or groups:
                left = " and ".join(_plural(n, w) for n, w in
                                    ((users, "user"), (aliases, "alias"), (groups, "group")) if n)
                raise DirectoryError(f"{name} still has {left}; remove them first")
            cur.execute(self.dialect.sql("DELETE FROM domains WHERE name = ?"), (name,))
        self._transaction(work)
        return name

    def list_domains(self):
        return [row[0] for row in self._query(lambda cur: self._rows(cur, "SELECT name FROM domains ORDER BY name"))]

    def get_domain(self, domain):
        name = normalize_domain(domain)
        record = self._query(lambda cur: self.domain_record(cur, name))
        return record if record is not None and not record.alias_of else None

    def set_domain(self, domain, quota_bytes=None, quota_messages=None):
        name = normalize_domain(domain)
        _check_quota(quota_bytes, "quota")
        _check_quota(quota_messages, "message quota")

        def work(cur):
            if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise DirectoryError(f"{name} is not a local domain")
            for column, value in (("quota_bytes", quota_bytes), ("quota_messages", quota_messages)):
                if value is not None:
                    cur.execute(self.dialect.sql(f"UPDATE domains SET {column} = ? WHERE name = ?"),
                                (int(value), name))
        self._transaction(work)
        return name

    def _address_taken(self, cur, name):
        """What ``name`` already is ('a user', 'a group', 'an alias') or ''."""
        if self._exists(cur, "SELECT 1 FROM users WHERE address = ?", (name,)):
            return "a user"
        if self._exists(cur, "SELECT 1 FROM mail_groups WHERE address = ?", (name,)):
            return "a group"
        if self._exists(cur, "SELECT 1 FROM aliases WHERE source = ?", (name,)):
            return "an alias"
        return ""

    def add_user(self, address, password_hash, quota_bytes=0):
        name = check_address(address)
        local, _, domain = name.rpartition("@")
        if local.startswith(".") or "/" in local or "\0" in local or local.startswith('"') or local == "*":
            raise DirectoryError(f"{name!r} cannot be a mailbox: its local part must not be '*', "
                                 "be quoted, start with '.' or contain '/'")
        if quota_bytes is None or quota_bytes < 0:
            raise DirectoryError("the quota must be 0 (no limit) or more")

        def work(cur):
            if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (domain,)):
                raise DirectoryError(f"{domain} is not a local domain; add it first")
            if self._exists(cur, "SELECT 1 FROM users WHERE address = ?", (name,)):
                raise DirectoryError(f"{name} is already a user")
            if self._exists(cur, "SELECT 1 FROM mail_groups WHERE address = ?", (name,)):
                raise DirectoryError(f"{name} is already a group")
            cur.execute(self.dialect.sql("INSERT INTO users (address, password, quota_bytes, enabled) "
                                         "VALUES (?, ?, ?, 1)"), (name, password_hash, int(quota_bytes)))
        self._transaction(work)
        return name

    def _require_user(self, cur, name):
        if not self._exists(cur, "SELECT 1 FROM users WHERE address = ?", (name,)):
            raise DirectoryError(f"{name} is not a user")

    def set_password(self, address, password_hash):
        name = normalize(address)

        def work(cur):
            self._require_user(cur, name)
            cur.execute(self.dialect.sql("UPDATE users SET password = ? WHERE address = ?"),
                        (password_hash, name))
        self._transaction(work)
        return name

    def get_user(self, address):
        name = normalize(address)
        return self._query(lambda cur: self.user_record(cur, name))

    def set_user(self, address, quota_bytes=None, quota_messages=None, enabled=None, protocols=None,
                 forward=None, keep_copy=None):
        name = normalize(address)
        _check_quota(quota_bytes, "quota")
        _check_quota(quota_messages, "message quota")
        changes = []
        if quota_bytes is not None:
            changes.append(("quota_bytes", int(quota_bytes)))
        if quota_messages is not None:
            changes.append(("quota_messages", int(quota_messages)))
        if enabled is not None:
            changes.append(("enabled", 1 if enabled else 0))
        if protocols is not None:
            changes.append(("protocols", ",".join(sorted(_check_protocols(protocols)))))
        if forward is not None:
            targets = []
            for target in forward:
                value = check_address(target, "forwarding address")
                if "," in value:
                    raise DirectoryError(f"{value!r}: a forwarding address cannot contain ','")
                if value not in targets:
                    targets.append(value)
            changes.append(("forward", ",".join(targets) or None))
        if keep_copy is not None:
            changes.append(("keep_copy", 1 if keep_copy else 0))

        def work(cur):
            self._require_user(cur, name)
            for column, value in changes:
                cur.execute(self.dialect.sql(f"UPDATE users SET {column} = ? WHERE address = ?"), (value, name))
        self._transaction(work)
        return name

    def remove_user(self, address):
        name = normalize(address)

        def work(cur):
            self._require_user(cur, name)
            cur.execute(self.dialect.sql("DELETE FROM users WHERE address = ?"), (name,))
        self._transaction(work)
        return name

    def list_users(self, domain=None):
        if domain is None:
            rows = self._query(lambda cur: self._rows(
                cur, "SELECT address, quota_bytes, enabled FROM users ORDER BY address"))
        else:
            pattern = like_domain(normalize_domain(domain))
            rows = self._query(lambda cur: self._rows(
                cur, f"SELECT address, quota_bytes, enabled FROM users WHERE address LIKE ? "
                     f"{self.dialect.like_escape} ORDER BY address", (pattern,)))
        return [(address, quota, bool(enabled)) for address, quota, enabled in rows]

    def add_alias(self, source, targets):
        if isinstance(targets, str):
            targets = [targets]
        targets = [t.strip() for t in targets if t.strip()]
        if not targets:
            raise DirectoryError("an alias needs at least one target")
        src = source.strip()

        if src.startswith("@"):
            # domain alias: @dom -> @other, dom not local, other local
            dom = check_domain(src[1:])
            if len(targets) != 1 or not targets[0].startswith("@"):
                raise DirectoryError(f"the domain alias @{dom} needs exactly one target of the form @domain")
            other = check_domain(targets[0][1:])
            key, rows = "@" + dom, [("@" + dom, "@" + other)]

            def check(cur):
                if self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (dom,)):
                    raise DirectoryError(f"{dom} is a local domain, so it cannot be a domain alias")
                if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (other,)):
                    raise DirectoryError(f"{other} is not a local domain; a domain alias must point to one")
                current = self._rows(cur, "SELECT target FROM aliases WHERE source = ?", (key,))
                if current:
                    raise DirectoryError(f"@{dom} is already an alias of {current[0][0]}; remove it first")
        else:
            if src.startswith("*@"):
                dom = check_domain(src[2:])
                key = "*@" + dom
            else:
                key = check_address(src, "alias address")
                dom = domain_of(key)
            rows = []
            for target in targets:
                if target.startswith("@") or target.startswith("*@"):
                    raise DirectoryError(f"{target!r} is not an address; @domain targets are for domain aliases")
                value = check_address(target, "alias target")
                if value == key and key.startswith("*@"):
                    raise DirectoryError("a catch-all cannot point to itself")
                rows.append((key, value))

            def check(cur):
                if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (dom,)):
                    raise DirectoryError(f"{dom} is not a local domain; add it first")
                if self._exists(cur, "SELECT 1 FROM mail_groups WHERE address = ?", (key,)):
                    raise DirectoryError(f"{key} is already a group")

        def work(cur):
            check(cur)
            for row in dict.fromkeys(rows):
                if self._exists(cur, "SELECT 1 FROM aliases WHERE source = ? AND target = ?", row):
                    raise DirectoryError(f"{row[0]} already points to {row[1]}")
                cur.execute(self.dialect.sql("INSERT INTO aliases (source, target) VALUES (?, ?)"), row)
        self._transaction(work)
        return key, [target for _, target in dict.fromkeys(rows)]

    def remove_alias(self, source, target=None):
        src = source.strip()
        key = "@" + normalize_domain(src[1:]) if src.startswith("@") else normalize(src)

        def work(cur):
            if target is None:
                cur.execute(self.dialect.sql("DELETE FROM aliases WHERE source = ?"), (key,))
                if cur.rowcount == 0:
                    raise DirectoryError(f"{key} is not an alias")
            else:
                tgt = target.strip()
                value = "@" + normalize_domain(tgt[1:]) if tgt.startswith("@") else normalize(tgt)
                cur.execute(self.dialect.sql("DELETE FROM aliases WHERE source = ? AND target = ?"), (key, value))
                if cur.rowcount == 0:
                    raise DirectoryError(f"{key} does not point to {value}")
            return cur.rowcount
        return self._transaction(work)

    def list_aliases(self, domain=None):
        if domain is None:
            rows = self._query(lambda cur: self._rows(
                cur, "SELECT source, target FROM aliases ORDER BY source, target"))
        else:
            pattern = like_domain(normalize_domain(domain))
            rows = self._query(lambda cur: self._rows(
                cur, f"SELECT source, target FROM aliases WHERE source LIKE ? {self.dialect.like_escape} "
                     "ORDER BY source, target", (pattern,)))
        return [tuple(row) for row in rows]

    # --- groups ----------------------------------------------------------------------------

    def _require_group(self, cur, name):
        if not self._exists(cur, "SELECT 1 FROM mail_groups WHERE address = ?", (name,)):
            raise DirectoryError(f"{name} is not a group")

    def add_group(self, address, members=(), members_only=False):
        name = check_address(address, "group address")
        domain = domain_of(name)
        values = [check_address(m, "group member") for m in members]

        def work(cur):
            if not self._exists(cur, "SELECT 1 FROM domains WHERE name = ?", (domain,)):
                raise DirectoryError(f"{domain} is not a local domain; add it first")
            taken = self._address_taken(cur, name)
            if taken:
                raise DirectoryError(f"{name} is already {taken}")
            cur.execute(self.dialect.sql("INSERT INTO mail_groups (address, members_only) VALUES (?, ?)"),
                        (name, 1 if members_only else 0))
            for member in dict.fromkeys(values):
                cur.execute(self.dialect.sql("INSERT INTO group_members (group_address, member) VALUES (?, ?)"),
                            (name, member))
        self._transaction(work)
        return name

    def remove_group(self, address):
        name = normalize(address)

        def work(cur):
            self._require_group(cur, name)
            for table in ("group_members", "group_senders"):
                cur.execute(self.dialect.sql(f"DELETE FROM {table} WHERE group_address = ?"), (name,))
            cur.execute(self.dialect.sql("DELETE FROM mail_groups WHERE address = ?"), (name,))
        self._transaction(work)
        return name

    def list_groups(self, domain=None):
        base = ("SELECT g.address, (SELECT count(*) FROM group_members m WHERE m.group_address = g.address), "
                "g.members_only FROM mail_groups g")
        if domain is None:
            rows = self._query(lambda cur: self._rows(cur, base + " ORDER BY g.address"))
        else:
            pattern = like_domain(normalize_domain(domain))
            rows = self._query(lambda cur: self._rows(
                cur, base + f" WHERE g.address LIKE ? {self.dialect.like_escape} ORDER BY g.address", (pattern,)))
        return [(address, count, bool(only)) for address, count, only in rows]

    def get_group(self, address):
        name = normalize(address)
        return self._query(lambda cur: self.group_record(cur, name))

    def set_group(self, address, members_only):
        name = normalize(address)

        def work(cur):
            self._require_group(cur, name)
            cur.execute(self.dialect.sql("UPDATE mail_groups SET members_only = ? WHERE address = ?"),
                        (1 if members_only else 0, name))
        self._transaction(work)
        return name

    def _change_group(self, address, table, column, value, add, what):
        name = normalize(address)

        def work(cur):
            self._require_group(cur, name)
            present = self._exists(cur, f"SELECT 1 FROM {table} WHERE group_address = ? AND {column} = ?",
                                   (name, value))
            if add:
                if present:
                    raise DirectoryError(f"{value} is already a {what} of {name}")
                cur.execute(self.dialect.sql(f"INSERT INTO {table} (group_address, {column}) VALUES (?, ?)"),
                            (name, value))
            else:
                if not present:
                    raise DirectoryError(f"{value} is not a {what} of {name}")
                cur.execute(self.dialect.sql(f"DELETE FROM {table} WHERE group_address = ? AND {column} = ?"),
                            (name, value))
        self._transaction(work)
        return name

    def add_group_member(self, address, member):
        return self._change_group(address, "group_members", "member",
                                  check_address(member, "group member"), True, "member")

    def remove_group_member(self, address, member):
        return self._change_group(address, "group_members", "member", normalize(member), False, "member")

    def add_group_sender(self, address, sender):
        return self._change_group(address, "group_senders", "sender", _sender_key(sender), True,
                                  "permitted sender")

    def remove_group_sender(self, address, sender):
        text = sender.strip()
        value = "@" + normalize_domain(text[1:]) if text.startswith("@") else normalize(text)
        return self._change_group(address, "group_senders", "sender", value, False, "permitted sender")
