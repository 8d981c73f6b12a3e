"""The embedded user directory: domains, users and aliases in one SQLite file.

Readers (the server) and writers (jdmailctl) may be different processes: the file
is in WAL mode and every statement runs in its own transaction, so a change made
by jdmailctl is seen by the next lookup without a restart.
"""

import os
import sqlite3
import threading

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.address import AddressError, check_mailbox, domain_of, normalize, normalize_domain
from jdmail.errors import DirectoryError, DirectoryUnavailable
from jdmail.interfaces import (Account, IDirectoryAdmin, IDirectoryFactory, IUserDirectory,
                               Option, Resolution, ResolutionKind)
from jdmail.passwords import verify_password

__all__ = ["SQLiteDirectory", "SQLiteDirectoryFactory", "SCHEMA_VERSION", "MAX_DEPTH"]

SCHEMA_VERSION = 1
MAX_DEPTH = 10           # alias expansion depth limit

# Verified when the user is unknown, so a miss costs as much as a wrong password.
_DUMMY_HASH = "{BLF-CRYPT}$2y$10$H2wLNxJL.QGlDG2GASdhSOY9dnk8K2CPIjNw1neH9eRwZ5XMyta96"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    password TEXT,
    quota_bytes INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS aliases (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (source, target)
);
"""


def mailbox_key(address):
    """The store key of a normalised address: '<domain>/<local>'."""
    local, _, domain = address.rpartition("@")
    return f"{domain}/{local}"


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def _like_domain(domain):
    """A LIKE pattern matching addresses in ``domain`` (use with ESCAPE '\\')."""
    escaped = domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%@" + escaped


def _check_domain(domain):
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


def _check_address(address, what="address"):
    """The normalised address, or DirectoryError naming what is wrong."""
    text = address.strip()
    try:
        check_mailbox(text)
    except AddressError as e:
        raise DirectoryError(f"{text!r} is not a valid {what}: {e}") from None
    return normalize(text)


@implementer(IUserDirectory, IDirectoryAdmin)
class SQLiteDirectory:
    """IUserDirectory and IDirectoryAdmin over one SQLite file."""

    log = Logger()

    def __init__(self, path, services=None, name="directory"):
        self.name = name
        self.path = os.path.abspath(os.path.expanduser(path))
        self._services = services
        self._lock = threading.RLock()
        self._db = self._open()

    # --- opening ------------------------------------------------------------------------

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
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                row = db.execute("SELECT max(version) FROM schema_version").fetchone()
                if row[0] is None:
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif row[0] > SCHEMA_VERSION:
                    raise DirectoryError(
                        f"the directory database {self.path} has schema version {row[0]}; "
                        f"this jdmail knows version {SCHEMA_VERSION} only")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            db.close()
            raise DirectoryError(f"cannot open the directory database {self.path}: {e}") from None
        except DirectoryError:
            db.close()
            raise
        return db

    def close(self):
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # --- low-level helpers ----------------------------------------------------------------

    def _read(self, sql, args=()):
        """Rows of a read query; a database failure becomes DirectoryUnavailable."""
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            self.log.error("directory read failed path={path} error={error}", path=self.path, error=e)
            raise DirectoryUnavailable(str(e)) from None

    def _write(self, work):
        """Run ``work(db)`` in one write transaction; returns its result."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise DirectoryError(f"cannot change the directory database {self.path}: {e}") from None
            try:
                result = work(db)
                db.execute("COMMIT")
                return result
            except sqlite3.Error as e:
                db.execute("ROLLBACK")
                raise DirectoryError(f"cannot change the directory database {self.path}: {e}") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _admin_read(self, sql, args=()):
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise DirectoryError(f"cannot read the directory database {self.path}: {e}") from None

    @staticmethod
    def _exists(db, sql, args):
        return db.execute(sql, args).fetchone() is not None

    # --- admin (IDirectoryAdmin) ----------------------------------------------------------

    def add_domain(self, domain):
        name = _check_domain(domain)

        def work(db):
            if self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise DirectoryError(f"{name} is already a local domain")
            if self._exists(db, "SELECT 1 FROM aliases WHERE source = ?", ("@" + name,)):
                raise DirectoryError(f"{name} is already a domain alias; remove the alias @{name} first")
            db.execute("INSERT INTO domains (name) VALUES (?)", (name,))
        self._write(work)
        return name

    def remove_domain(self, domain):
        name = normalize_domain(domain)

        def work(db):
            if not self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (name,)):
                raise DirectoryError(f"{name} is not a local domain")
            pattern = _like_domain(name)
            users = db.execute("SELECT count(*) FROM users WHERE address LIKE ? ESCAPE '\\'",
                               (pattern,)).fetchone()[0]
            aliases = db.execute(
                "SELECT count(DISTINCT source) FROM aliases WHERE source LIKE ? ESCAPE '\\' OR target = ?",
                (pattern, "@" + name)).fetchone()[0]
            if users or aliases:
                left = " and ".join(_plural(n, w) for n, w in ((users, "user"), (aliases, "alias")) if n)
                raise DirectoryError(f"{name} still has {left}; remove them first")
            db.execute("DELETE FROM domains WHERE name = ?", (name,))
        self._write(work)
        return name

    def list_domains(self):
        return [row[0] for row in self._admin_read("SELECT name FROM domains ORDER BY name")]

    def add_user(self, address, password_hash, quota_bytes=0):
        name = _check_address(address)
        local, _, domain = name.rpartition("@")
        if local.startswith(".") or "/" in local or "\0" in local or local.startswith('"') or local == "*":
            raise DirectoryError(f"{name!r} cannot be a mailbox: its local part must not be '*', "
                                 "be quoted, start with '.' or contain '/'")
        if quota_bytes is None or quota_bytes < 0:
            raise DirectoryError("the quota must be 0 (no limit) or more")

        def work(db):
            if not self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (domain,)):
                raise DirectoryError(f"{domain} is not a local domain; add it first")
            if self._exists(db, "SELECT 1 FROM users WHERE address = ?", (name,)):
                raise DirectoryError(f"{name} is already a user")
            db.execute("INSERT INTO users (address, password, quota_bytes, enabled) VALUES (?, ?, ?, 1)",
                       (name, password_hash, int(quota_bytes)))
        self._write(work)
        return name

    def set_password(self, address, password_hash):
        name = normalize(address)

        def work(db):
            cur = db.execute("UPDATE users SET password = ? WHERE address = ?", (password_hash, name))
            if cur.rowcount == 0:
                raise DirectoryError(f"{name} is not a user")
        self._write(work)
        return name

    def remove_user(self, address):
        name = normalize(address)

        def work(db):
            cur = db.execute("DELETE FROM users WHERE address = ?", (name,))
            if cur.rowcount == 0:
                raise DirectoryError(f"{name} is not a user")
        self._write(work)
        return name

    def list_users(self, domain=None):
        if domain is None:
            rows = self._admin_read("SELECT address, quota_bytes, enabled FROM users ORDER BY address")
        else:
            rows = self._admin_read(
                "SELECT address, quota_bytes, enabled FROM users WHERE address LIKE ? ESCAPE '\\' "
                "ORDER BY address", (_like_domain(normalize_domain(domain)),))
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
            dom = _check_domain(src[1:])
            if len(targets) != 1 or not targets[0].startswith("@"):
                raise DirectoryError(f"the domain alias @{dom} needs exactly one target of the form @domain")
            other = _check_domain(targets[0][1:])
            key, rows = "@" + dom, [("@" + dom, "@" + other)]

            def check(db):
                if self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (dom,)):
                    raise DirectoryError(f"{dom} is a local domain, so it cannot be a domain alias")
                if not self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (other,)):
                    raise DirectoryError(f"{other} is not a local domain; a domain alias must point to one")
                current = db.execute("SELECT target FROM aliases WHERE source = ?", (key,)).fetchone()
                if current is not None:
                    raise DirectoryError(f"@{dom} is already an alias of {current[0]}; remove it first")
        else:
            if src.startswith("*@"):
                dom = _check_domain(src[2:])
                key = "*@" + dom
            else:
                key = _check_address(src, "alias address")
                dom = domain_of(key)
            rows = []
            for target in targets:
                if target.startswith("@") or target.startswith("*@"):
                    raise DirectoryError(f"{target!r} is not an address; @domain targets are for domain aliases")
                value = _check_address(target, "alias target")
                if value == key and key.startswith("*@"):
                    raise DirectoryError("a catch-all cannot point to itself")
                rows.append((key, value))

            def check(db):
                if not self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (dom,)):
                    raise DirectoryError(f"{dom} is not a local domain; add it first")

        def work(db):
            check(db)
            for row in dict.fromkeys(rows):
                if self._exists(db, "SELECT 1 FROM aliases WHERE source = ? AND target = ?", row):
                    raise DirectoryError(f"{row[0]} already points to {row[1]}")
                db.execute("INSERT INTO aliases (source, target) VALUES (?, ?)", row)
        self._write(work)
        return key, [target for _, target in dict.fromkeys(rows)]

    def remove_alias(self, source, target=None):
        src = source.strip()
        key = "@" + normalize_domain(src[1:]) if src.startswith("@") else normalize(src)

        def work(db):
            if target is None:
                cur = db.execute("DELETE FROM aliases WHERE source = ?", (key,))
                if cur.rowcount == 0:
                    raise DirectoryError(f"{key} is not an alias")
            else:
                tgt = target.strip()
                value = "@" + normalize_domain(tgt[1:]) if tgt.startswith("@") else normalize(tgt)
                cur = db.execute("DELETE FROM aliases WHERE source = ? AND target = ?", (key, value))
                if cur.rowcount == 0:
                    raise DirectoryError(f"{key} does not point to {value}")
            return cur.rowcount
        return self._write(work)

    def list_aliases(self, domain=None):
        if domain is None:
            rows = self._admin_read("SELECT source, target FROM aliases ORDER BY source, target")
        else:
            rows = self._admin_read(
                "SELECT source, target FROM aliases WHERE source LIKE ? ESCAPE '\\' "
                "ORDER BY source, target", (_like_domain(normalize_domain(domain)),))
        return [tuple(row) for row in rows]

    # --- lookups (IUserDirectory) ---------------------------------------------------------

    def _local_domain(self, domain):
        return bool(self._read(
            "SELECT 1 FROM domains WHERE name = ? UNION ALL SELECT 1 FROM aliases WHERE source = ? LIMIT 1",
            (domain, "@" + domain)))

    def _user(self, address):
        rows = self._read("SELECT address, password, quota_bytes, enabled FROM users WHERE address = ?",
                          (address,))
        return rows[0] if rows else None

    @staticmethod
    def _account(row):
        address, _, quota, enabled = row
        return Account(name=address, mailbox=mailbox_key(address), quota_bytes=quota or 0,
                       enabled=bool(enabled))

    def _targets(self, source):
        return [row[0] for row in self._read(
            "SELECT target FROM aliases WHERE source = ? ORDER BY rowid", (source,))]

    async def is_local_domain(self, domain):
        return self._local_domain(normalize_domain(domain))

    async def resolve(self, address):
        return self._resolve(address)

    def _resolve(self, address, catchall=True):
        text = address.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain:
            return Resolution(ResolutionKind.UNKNOWN)
        dom = normalize_domain(domain)
        if not self._local_domain(dom):
            return Resolution(ResolutionKind.REMOTE, remote=(f"{local}@{dom}",))
        accounts, remote = {}, {}
        self._expand(normalize(text), 0, set(), accounts, remote, catchall)
        if not accounts and not remote:
            return Resolution(ResolutionKind.UNKNOWN)
        return Resolution(ResolutionKind.LOCAL, mailboxes=tuple(a.mailbox for a in accounts.values()),
                          remote=tuple(remote), accounts=tuple(accounts.values()))

    def _expand(self, address, depth, seen, accounts, remote, catchall=True):
        """Add where mail for the normalised ``address`` goes to ``accounts``/``remote``.
        With ``catchall`` false, catch-all aliases are not followed."""
        if address in seen:
            return
        if depth > MAX_DEPTH:
            self.log.warn("alias expansion deeper than {limit} at {address}; skipped",
                          limit=MAX_DEPTH, address=address)
            return
        seen.add(address)
        local, _, dom = address.rpartition("@")
        if not self._local_domain(dom):
            remote.setdefault(address, None)
            return

        def deliver_user(addr):
            row = self._user(addr)
            if row is not None:
                account = self._account(row)
                accounts.setdefault(account.mailbox, account)

        targets = self._targets(address)
        if targets:
            for target in targets:
                if target == address:
                    deliver_user(address)      # "bob -> bob, carol": keep a copy for bob
                else:
                    self._expand(target, depth + 1, seen, accounts, remote, catchall)
            return
        row = self._user(address)
        if row is not None:
            account = self._account(row)
            accounts.setdefault(account.mailbox, account)
            return
        domain_targets = self._targets("@" + dom)
        if domain_targets:
            for target in domain_targets:
                self._expand(f"{local}@{target[1:]}", depth + 1, seen, accounts, remote, catchall)
            return
        wildcard = "*@" + dom
        if not catchall or wildcard in seen:
            return
        seen.add(wildcard)
        for target in self._targets(wildcard):
            self._expand(target, depth + 1, seen, accounts, remote, catchall)

    async def authenticate(self, username, password):
        name = normalize(username)
        row = self._user(name)
        stored = row[1] if row is not None and row[1] else None
        ok = await self._verify(stored or _DUMMY_HASH, password)
        if stored is None or not ok:
            return None
        return self._account(row)

    async def _verify(self, stored, password):
        services = self._services
        if services is None or services.threadpool is None or services.reactor is None:
            return verify_password(stored, password)
        return await services.run_blocking(verify_password, stored, password)

    async def account(self, username):
        row = self._user(normalize(username))
        return None if row is None else self._account(row)

    async def owns(self, account, address):
        if normalize(address) == account.name:
            return True
        # A catch-all receives for any unknown address; it does not make them its own.
        resolution = self._resolve(address, catchall=False)
        return account.mailbox in resolution.mailboxes


@implementer(IDirectoryFactory)
class SQLiteDirectoryFactory:
    """Builds the embedded SQLite directory ([directory] type = sqlite)."""

    kind = "sqlite"
    description = "Domains, users and aliases in one SQLite file (the embedded default)."
    options = {
        "path": Option.str(default="", help="SQLite database file (default: <datadir>/directory.sqlite)"),
    }

    def build(self, name, settings, services):
        path = settings.get("path") or os.path.join(services.datadir, "directory.sqlite")
        return SQLiteDirectory(path, services, name=name)
