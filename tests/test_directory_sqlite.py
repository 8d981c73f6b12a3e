"""jdmail.directory.sqlite: the embedded user directory."""

import os
import sqlite3
import threading

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from jdmail.directory.sqlite import MAX_DEPTH, SCHEMA_VERSION, SQLiteDirectory, SQLiteDirectoryFactory
from jdmail.errors import DirectoryError
from jdmail.interfaces import IDirectoryAdmin, IDirectoryFactory, IUserDirectory, Resolution
from jdmail.passwords import hash_password
from jdmail.services import Services

LOCAL, REMOTE, UNKNOWN = Resolution.Kind.LOCAL, Resolution.Kind.REMOTE, Resolution.Kind.UNKNOWN


_hashes = {}


def hashed(password):
    """hash_password, computed once per password for the whole module (bcrypt is slow)."""
    if password not in _hashes:
        _hashes[password] = hash_password(password)
    return _hashes[password]


def make_services(test, datadir):
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-directory")
    pool.start()
    test.addCleanup(pool.stop)
    return Services(reactor=reactor, config=None, hostname="mx.example.org",
                    datadir=datadir, threadpool=pool)


class DirectoryTestCase(TestCase):

    def setUp(self):
        self.datadir = self.mktemp()
        self.services = make_services(self, self.datadir)
        # no cache: these tests change the directory and look again at once
        self.directory = SQLiteDirectory(os.path.join(self.datadir, "directory.sqlite"), self.services,
                                         cache_ttl=0, negative_cache_ttl=0)
        self.addCleanup(self.directory.close)
        d = self.directory
        d.add_domain("example.org")
        d.add_domain("example.net")
        self.bob_hash = hashed("bob-secret")
        d.add_user("bob@example.org", self.bob_hash, 1024)
        d.add_user("carol@example.org", hashed("carol-secret"))
        d.add_user("dave@example.net", hashed("dave-secret"))


class OpenTests(DirectoryTestCase):

    def test_interfaces(self):
        verifyObject(IUserDirectory, self.directory)
        verifyObject(IDirectoryAdmin, self.directory)
        verifyObject(IDirectoryFactory, SQLiteDirectoryFactory())
        self.assertEqual(SQLiteDirectoryFactory.kind, "sqlite")

    def test_default_path_and_schema(self):
        path = os.path.join(self.datadir, "directory.sqlite")
        self.assertEqual(self.directory.backend.path, os.path.abspath(path))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT version FROM schema_version").fetchall(), [(SCHEMA_VERSION,)])
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.execute("SELECT address, password, quota_bytes, enabled FROM users "
                                    "WHERE address = 'bob@example.org'").fetchone(),
                         ("bob@example.org", self.bob_hash, 1024, 1))

    def test_explicit_path_created_with_parents(self):
        path = os.path.join(self.mktemp(), "a", "b", "dir.sqlite")
        directory = SQLiteDirectoryFactory().build("directory", {"path": path}, self.services)
        self.addCleanup(directory.close)
        self.assertTrue(os.path.isfile(path))
        self.assertEqual(directory.list_domains(), [])

    def test_reopen_keeps_data(self):
        again = SQLiteDirectory(self.directory.backend.path, self.services)
        self.addCleanup(again.close)
        self.assertEqual(again.list_domains(), ["example.net", "example.org"])
        db = sqlite3.connect(self.directory.backend.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM schema_version").fetchone()[0], 1)

    def test_newer_schema_refused(self):
        db = sqlite3.connect(self.directory.backend.path)
        db.execute("UPDATE schema_version SET version = 99")
        db.commit()
        db.close()
        e = self.assertRaises(DirectoryError, SQLiteDirectory, self.directory.backend.path, self.services)
        self.assertIn("schema version 99", str(e))

    def test_unopenable_path(self):
        blocker = self.mktemp()
        with open(blocker, "w"):
            pass
        e = self.assertRaises(DirectoryError, SQLiteDirectory, os.path.join(blocker, "x.sqlite"))
        self.assertIn("cannot open the directory database", str(e))

    async def test_other_process_changes_seen(self):
        other = SQLiteDirectory(self.directory.backend.path)
        self.addCleanup(other.close)
        other.add_user("erin@example.org", hashed("x"))
        r = await self.directory.resolve("erin@example.org")
        self.assertEqual(r.mailboxes, ("example.org/erin",))


class ResolveTests(DirectoryTestCase):

    async def test_user(self):
        r = await self.directory.resolve("<Bob@Example.ORG.>")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual(r.mailboxes, ("example.org/bob",))
        self.assertEqual(r.remote, ())
        self.assertEqual([a.name for a in r.accounts], ["bob@example.org"])
        self.assertEqual(r.accounts[0].quota_bytes, 1024)

    async def test_unknown_user(self):
        r = await self.directory.resolve("nobody@example.org")
        self.assertEqual(r.kind, UNKNOWN)
        self.assertEqual((r.mailboxes, r.remote, r.accounts), ((), (), ()))

    async def test_remote_domain(self):
        r = await self.directory.resolve("Someone@Elsewhere.COM")
        self.assertEqual(r.kind, REMOTE)
        self.assertEqual(r.mailboxes, ())
        self.assertEqual(r.remote, ("Someone@elsewhere.com",))

    async def test_no_domain(self):
        r = await self.directory.resolve("postmaster")
        self.assertEqual(r.kind, UNKNOWN)

    async def test_alias_several_targets(self):
        self.directory.add_alias("team@example.org",
                                 ["carol@example.org", "bob@example.org", "dave@example.net"])
        r = await self.directory.resolve("TEAM@example.org")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual(r.mailboxes, ("example.org/carol", "example.org/bob", "example.net/dave"))
        self.assertEqual([a.mailbox for a in r.accounts], list(r.mailboxes))
        self.assertEqual(r.remote, ())

    async def test_alias_to_remote(self):
        self.directory.add_alias("fwd@example.org", ["bob@example.org", "Bob@Gmail.com"])
        r = await self.directory.resolve("fwd@example.org")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual(r.mailboxes, ("example.org/bob",))
        self.assertEqual(r.remote, ("bob@gmail.com",))

    async def test_alias_only_remote(self):
        self.directory.add_alias("away@example.org", ["away@elsewhere.com"])
        r = await self.directory.resolve("away@example.org")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual((r.mailboxes, r.remote), ((), ("away@elsewhere.com",)))

    async def test_nested_aliases_deduplicated(self):
        self.directory.add_alias("all@example.org", ["team@example.org", "bob@example.org"])
        self.directory.add_alias("team@example.org", ["bob@example.org", "carol@example.org"])
        r = await self.directory.resolve("all@example.org")
        self.assertEqual(r.mailboxes, ("example.org/bob", "example.org/carol"))

    async def test_alias_overrides_user_and_keeps_copy(self):
        # Postfix style: bob -> bob, carol keeps a copy for bob
        self.directory.add_alias("bob@example.org", ["bob@example.org", "carol@example.org"])
        r = await self.directory.resolve("bob@example.org")
        self.assertEqual(r.mailboxes, ("example.org/bob", "example.org/carol"))
        # without the self target, mail goes only to the targets
        self.directory.remove_alias("bob@example.org", "bob@example.org")
        r = await self.directory.resolve("bob@example.org")
        self.assertEqual(r.mailboxes, ("example.org/carol",))

    async def test_alias_to_unknown_local_skipped(self):
        self.directory.add_alias("mixed@example.org", ["ghost@example.org", "bob@example.org"])
        self.directory.add_alias("void@example.org", ["ghost@example.org"])
        r = await self.directory.resolve("mixed@example.org")
        self.assertEqual(r.mailboxes, ("example.org/bob",))
        r = await self.directory.resolve("void@example.org")
        self.assertEqual(r.kind, UNKNOWN)

    async def test_alias_loop(self):
        self.directory.add_alias("a@example.org", ["b@example.org"])
        self.directory.add_alias("b@example.org", ["a@example.org", "carol@example.org"])
        r = await self.directory.resolve("a@example.org")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual(r.mailboxes, ("example.org/carol",))
        self.directory.add_alias("x@example.org", ["y@example.org"])
        self.directory.add_alias("y@example.org", ["x@example.org"])
        r = await self.directory.resolve("x@example.org")
        self.assertEqual(r.kind, UNKNOWN)

    async def test_depth_limit(self):
        chain = [f"l{i}@example.org" for i in range(MAX_DEPTH + 3)]
        for source, target in zip(chain, chain[1:]):
            self.directory.add_alias(source, [target])
        self.directory.add_alias(chain[-1], ["bob@example.org"])
        r = await self.directory.resolve(chain[0])
        self.assertEqual(r.kind, UNKNOWN)
        r = await self.directory.resolve(chain[5])
        self.assertEqual(r.mailboxes, ("example.org/bob",))

    async def test_catch_all(self):
        self.directory.add_alias("*@example.org", ["carol@example.org"])
        r = await self.directory.resolve("anything@example.org")
        self.assertEqual((r.kind, r.mailboxes), (LOCAL, ("example.org/carol",)))
        # existing users and aliases win over the catch-all
        r = await self.directory.resolve("bob@example.org")
        self.assertEqual(r.mailboxes, ("example.org/bob",))
        # other domains are not affected
        r = await self.directory.resolve("anything@example.net")
        self.assertEqual(r.kind, UNKNOWN)

    async def test_catch_all_to_unknown_in_same_domain(self):
        self.directory.add_alias("*@example.org", ["ghost@example.org"])
        r = await self.directory.resolve("anything@example.org")
        self.assertEqual(r.kind, UNKNOWN)

    async def test_domain_alias(self):
        self.directory.add_alias("@Example.COM", ["@example.org"])
        self.assertTrue(await self.directory.is_local_domain("EXAMPLE.com"))
        r = await self.directory.resolve("Bob@example.com")
        self.assertEqual((r.kind, r.mailboxes), (LOCAL, ("example.org/bob",)))
        r = await self.directory.resolve("nobody@example.com")
        self.assertEqual(r.kind, UNKNOWN)
        self.directory.add_alias("team@example.org", ["carol@example.org"])
        r = await self.directory.resolve("team@example.com")
        self.assertEqual(r.mailboxes, ("example.org/carol",))
        self.directory.add_alias("*@example.org", ["bob@example.org"])
        r = await self.directory.resolve("nobody@example.com")
        self.assertEqual(r.mailboxes, ("example.org/bob",))

    async def test_alias_target_in_domain_alias(self):
        self.directory.add_alias("@example.com", ["@example.org"])
        self.directory.add_alias("x@example.net", ["carol@example.com"])
        r = await self.directory.resolve("x@example.net")
        self.assertEqual((r.mailboxes, r.remote), (("example.org/carol",), ()))

    async def test_is_local_domain(self):
        self.assertTrue(await self.directory.is_local_domain("example.org"))
        self.assertTrue(await self.directory.is_local_domain("Example.Net."))
        self.assertFalse(await self.directory.is_local_domain("example.com"))


class AccountTests(DirectoryTestCase):

    async def test_authenticate_right(self):
        account = await self.directory.authenticate(" BOB@example.org", "bob-secret")
        self.assertEqual(account.name, "bob@example.org")
        self.assertEqual(account.mailbox, "example.org/bob")
        self.assertEqual(account.quota_bytes, 1024)
        self.assertTrue(account.enabled)

    async def test_authenticate_wrong(self):
        self.assertIsNone(await self.directory.authenticate("bob@example.org", "carol-secret"))
        self.assertIsNone(await self.directory.authenticate("bob@example.org", ""))

    async def test_authenticate_unknown_still_verifies(self):
        calls = []
        real = self.services.run_blocking

        def spy(f, *args):
            calls.append((f.__name__, threading.current_thread().name))
            return real(f, *args)
        self.patch(self.services, "run_blocking", spy)
        self.assertIsNone(await self.directory.authenticate("nobody@example.org", "x"))
        self.assertEqual([c[0] for c in calls], ["verify_password"])

    async def test_verify_runs_on_the_pool(self):
        threads = []
        import jdmail.directory.sql as module
        real = module.verify_password

        def spy(stored, password):
            threads.append(threading.current_thread())
            return real(stored, password)
        self.patch(module, "verify_password", spy)
        self.assertIsNotNone(await self.directory.authenticate("bob@example.org", "bob-secret"))
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())

    async def test_set_password(self):
        self.directory.set_password("Bob@Example.org", hash_password("new", "ARGON2ID"))
        self.assertIsNone(await self.directory.authenticate("bob@example.org", "bob-secret"))
        account = await self.directory.authenticate("bob@example.org", "new")
        self.assertEqual(account.name, "bob@example.org")

    async def test_account(self):
        account = await self.directory.account("Carol@Example.org")
        self.assertEqual((account.name, account.mailbox), ("carol@example.org", "example.org/carol"))
        self.assertIsNone(await self.directory.account("nobody@example.org"))

    async def test_owns(self):
        bob = await self.directory.account("bob@example.org")
        carol = await self.directory.account("carol@example.org")
        self.directory.add_alias("team@example.org", ["bob@example.org", "dave@example.net"])
        self.directory.add_alias("@example.com", ["@example.org"])
        self.assertTrue(await self.directory.owns(bob, "BOB@example.org"))
        self.assertTrue(await self.directory.owns(bob, "team@example.org"))
        self.assertTrue(await self.directory.owns(bob, "bob@example.com"))
        self.assertFalse(await self.directory.owns(carol, "team@example.org"))
        self.assertFalse(await self.directory.owns(bob, "carol@example.org"))
        self.assertFalse(await self.directory.owns(bob, "bob@elsewhere.com"))

    async def test_catch_all_target_does_not_own_the_domain(self):
        bob = await self.directory.account("bob@example.org")
        self.directory.add_alias("*@example.org", ["bob@example.org"])
        resolution = await self.directory.resolve("ceo@example.org")
        self.assertEqual(resolution.mailboxes, ("example.org/bob",))
        self.assertFalse(await self.directory.owns(bob, "ceo@example.org"))


class AdminTests(DirectoryTestCase):

    def test_lists(self):
        d = self.directory
        self.assertEqual(d.list_domains(), ["example.net", "example.org"])
        self.assertEqual(d.list_users(), [("bob@example.org", 1024, True),
                                          ("carol@example.org", 0, True),
                                          ("dave@example.net", 0, True)])
        self.assertEqual(d.list_users("Example.NET"), [("dave@example.net", 0, True)])
        d.add_alias("team@example.org", ["carol@example.org", "bob@example.org"])
        d.add_alias("@example.com", ["@example.net"])
        self.assertEqual(d.list_aliases(), [("@example.com", "@example.net"),
                                            ("team@example.org", "bob@example.org"),
                                            ("team@example.org", "carol@example.org")])
        self.assertEqual(d.list_aliases("example.com"), [("@example.com", "@example.net")])
        self.assertEqual(d.list_aliases("example.net"), [])

    def test_domain_refusals(self):
        d = self.directory
        self.assertRaises(DirectoryError, d.add_domain, "EXAMPLE.org")
        for bad in ("", "exa mple.org", "-bad.org", "a..b", "[127.0.0.1]", "x@y.org"):
            self.assertRaises(DirectoryError, d.add_domain, bad)
        self.assertRaises(DirectoryError, d.remove_domain, "example.com")
        self.assertEqual(d.list_domains(), ["example.net", "example.org"])

    def test_remove_domain_refused_while_used(self):
        d = self.directory
        d.add_alias("*@example.net", ["bob@example.org"])
        e = self.assertRaises(DirectoryError, d.remove_domain, "example.net")
        self.assertEqual(str(e), "example.net still has 1 user and 1 alias; remove them first")
        d.remove_user("dave@example.net")
        d.remove_alias("*@example.net")
        d.add_domain("example.info")
        d.add_alias("@example.biz", ["@example.info"])
        e = self.assertRaises(DirectoryError, d.remove_domain, "example.info")
        self.assertIn("1 alias", str(e))
        d.remove_alias("@example.biz")
        d.remove_domain("example.net")
        d.remove_domain("example.info")
        self.assertEqual(d.list_domains(), ["example.org"])

    def test_user_refusals(self):
        d = self.directory
        h = hashed("x")
        e = self.assertRaises(DirectoryError, d.add_user, "Bob@example.org", h)
        self.assertEqual(str(e), "bob@example.org is already a user")
        e = self.assertRaises(DirectoryError, d.add_user, "x@example.com", h)
        self.assertIn("example.com is not a local domain", str(e))
        for bad in ("no-at-sign", "a@@example.org", ".x@example.org", "a/b@example.org",
                    '"q"@example.org', "*@example.org", "a b@example.org", "a\0@example.org"):
            self.assertRaises(DirectoryError, d.add_user, bad, h)
        self.assertRaises(DirectoryError, d.add_user, "neg@example.org", h, -1)
        self.assertRaises(DirectoryError, d.remove_user, "nobody@example.org")
        self.assertRaises(DirectoryError, d.set_password, "nobody@example.org", h)
        self.assertEqual(len(d.list_users()), 3)

    def test_remove_user(self):
        self.directory.remove_user("CAROL@example.org")
        self.assertEqual([u[0] for u in self.directory.list_users()],
                         ["bob@example.org", "dave@example.net"])

    def test_alias_refusals(self):
        d = self.directory
        self.assertRaises(DirectoryError, d.add_alias, "x@example.com", ["bob@example.org"])
        self.assertRaises(DirectoryError, d.add_alias, "*@example.com", ["bob@example.org"])
        self.assertRaises(DirectoryError, d.add_alias, "x@example.org", [])
        self.assertRaises(DirectoryError, d.add_alias, "x@example.org", ["not an address"])
        self.assertRaises(DirectoryError, d.add_alias, "x@example.org", ["@example.net"])
        # domain aliases: source not local, target local, one target only
        self.assertRaises(DirectoryError, d.add_alias, "@example.net", ["@example.org"])
        self.assertRaises(DirectoryError, d.add_alias, "@example.com", ["@elsewhere.com"])
        self.assertRaises(DirectoryError, d.add_alias, "@example.com", ["bob@example.org"])
        self.assertRaises(DirectoryError, d.add_alias, "@example.com", ["@example.org", "@example.net"])
        d.add_alias("@example.com", ["@example.org"])
        self.assertRaises(DirectoryError, d.add_alias, "@example.com", ["@example.net"])
        e = self.assertRaises(DirectoryError, d.add_domain, "example.com")
        self.assertIn("domain alias", str(e))
        d.add_alias("team@example.org", ["bob@example.org"])
        e = self.assertRaises(DirectoryError, d.add_alias, "team@example.org",
                              ["carol@example.org", "bob@example.org"])
        self.assertEqual(str(e), "team@example.org already points to bob@example.org")
        # the refused add changed nothing
        self.assertEqual(d.list_aliases("example.org"), [("team@example.org", "bob@example.org")])
        self.assertRaises(DirectoryError, d.remove_alias, "team@example.org", "carol@example.org")
        self.assertRaises(DirectoryError, d.remove_alias, "nothing@example.org")

    def test_remove_alias(self):
        d = self.directory
        d.add_alias("team@example.org", ["bob@example.org", "carol@example.org"])
        d.remove_alias("Team@Example.org", "BOB@example.org")
        self.assertEqual(d.list_aliases(), [("team@example.org", "carol@example.org")])
        d.remove_alias("team@example.org")
        self.assertEqual(d.list_aliases(), [])


# The schema jdmail 0.1 wrote (version 1), verbatim.
_V1_SCHEMA = """
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
INSERT INTO schema_version (version) VALUES (1);
"""


class UpgradeTests(TestCase):
    """A version 1 file (as jdmail 0.1 left it) upgrades itself to the current version on open."""

    def setUp(self):
        self.services = make_services(self, self.mktemp())
        self.path = os.path.abspath(self.mktemp())
        db = sqlite3.connect(self.path)
        db.executescript(_V1_SCHEMA)
        db.execute("INSERT INTO domains VALUES ('example.org')")
        db.execute("INSERT INTO users VALUES ('bob@example.org', ?, 4096, 1)", (hashed("bob-secret"),))
        db.execute("INSERT INTO users VALUES ('old@example.org', ?, 0, 0)", (hashed("x"),))
        db.execute("INSERT INTO aliases VALUES ('team@example.org', 'bob@example.org')")
        db.execute("INSERT INTO aliases VALUES ('@example.com', '@example.org')")
        db.commit()
        db.close()

    async def test_v1_file_upgraded(self):
        d = SQLiteDirectory(self.path, self.services, cache_ttl=0, negative_cache_ttl=0)
        self.addCleanup(d.close)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT version FROM schema_version").fetchall(), [(SCHEMA_VERSION,)])
        columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
        self.assertLessEqual({"quota_messages", "protocols", "forward", "keep_copy"}, columns)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertLessEqual({"mail_groups", "group_members", "group_senders"}, tables)
        # v3: the greylist's tables (the Bayes tokens stay in their own SQLite file)
        self.assertLessEqual({"greylist_triplet", "greylist_client"}, tables)
        self.assertFalse({"bayes_tokens", "bayes_totals", "bayes_seen"} & tables)
        # the old data, with the new settings at their defaults
        bob = d.get_user("bob@example.org")
        self.assertEqual((bob.quota_bytes, bob.quota_messages, bob.enabled, bob.protocols, bob.forward,
                          bob.keep_copy), (4096, 0, True, frozenset({"imap", "pop3", "smtp"}), (), True))
        self.assertFalse(d.get_user("old@example.org").enabled)
        self.assertEqual((await d.resolve("team@example.com")).mailboxes, ("example.org/bob",))
        self.assertIsNotNone(await d.authenticate("bob@example.org", "bob-secret"))
        # and the new features work on it
        d.add_group("staff@example.org", ["bob@example.org"])
        d.set_domain("example.org", quota_messages=100)
        self.assertEqual((await d.resolve("staff@example.org")).mailboxes, ("example.org/bob",))
        self.assertEqual((await d.account("bob@example.org")).quota_messages, 100)

    def test_upgrade_happens_once(self):
        SQLiteDirectory(self.path, self.services).close()
        SQLiteDirectory(self.path, self.services).close()
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT version FROM schema_version").fetchall(), [(SCHEMA_VERSION,)])


class AdminV2Tests(DirectoryTestCase):
    """The version 2 settings: per-user switches, domain defaults, groups."""

    async def test_user_settings(self):
        d = self.directory
        d.set_user("Bob@example.org", quota_messages=50, enabled=False, protocols=["imap", "POP3"],
                   forward=["carol@example.org", "Bob@Remote.test"], keep_copy=False)
        bob = d.get_user("bob@example.org")
        self.assertEqual((bob.quota_bytes, bob.quota_messages, bob.enabled, bob.protocols, bob.forward,
                          bob.keep_copy),
                         (1024, 50, False, frozenset({"imap", "pop3"}), ("carol@example.org", "bob@remote.test"),
                          False))
        r = await d.resolve("bob@example.org")
        self.assertEqual((r.mailboxes, r.remote), (("example.org/carol",), ("bob@remote.test",)))
        d.set_user("bob@example.org", forward=[], keep_copy=True)
        self.assertEqual(d.get_user("bob@example.org").forward, ())
        self.assertRaises(DirectoryError, d.set_user, "bob@example.org", protocols=["ftp"])
        self.assertRaises(DirectoryError, d.set_user, "bob@example.org", quota_messages=-1)
        self.assertRaises(DirectoryError, d.set_user, "bob@example.org", forward=["not an address"])
        self.assertRaises(DirectoryError, d.set_user, "ghost@example.org", enabled=True)

    async def test_domain_defaults(self):
        d = self.directory
        d.set_domain("example.org", quota_bytes=2048, quota_messages=9)
        self.assertEqual(d.get_domain("Example.ORG").quota_messages, 9)
        self.assertEqual((await d.account("bob@example.org")).quota_bytes, 1024)     # its own wins
        carol = await d.account("carol@example.org")
        self.assertEqual((carol.quota_bytes, carol.quota_messages), (2048, 9))
        self.assertRaises(DirectoryError, d.set_domain, "nowhere.test", quota_bytes=1)
        self.assertIsNone(d.get_domain("nowhere.test"))

    async def test_groups(self):
        d = self.directory
        d.add_group("staff@example.org", ["bob@example.org", "carol@example.org"])
        d.add_group_member("staff@example.org", "Dave@Example.net")
        self.assertEqual(d.list_groups(), [("staff@example.org", 3, False)])
        d.set_group("staff@example.org", True)
        d.add_group_sender("staff@example.org", "@partner.test")
        g = d.get_group("staff@example.org")
        self.assertEqual((g.members, g.members_only, g.senders),
                         (("bob@example.org", "carol@example.org", "dave@example.net"), True, ("@partner.test",)))
        r = await d.resolve("staff@example.org", sender="x@partner.test")
        self.assertEqual(r.mailboxes, ("example.org/bob", "example.org/carol", "example.net/dave"))
        r = await d.resolve("staff@example.org", sender="x@elsewhere.test")
        self.assertEqual(r.kind, Resolution.Kind.REFUSED)
        e = self.assertRaises(DirectoryError, d.add_group, "bob@example.org")
        self.assertEqual(str(e), "bob@example.org is already a user")
        e = self.assertRaises(DirectoryError, d.add_user, "staff@example.org", hashed("x"))
        self.assertEqual(str(e), "staff@example.org is already a group")
        self.assertRaises(DirectoryError, d.add_group_member, "staff@example.org", "bob@example.org")
        self.assertRaises(DirectoryError, d.remove_group_member, "staff@example.org", "ghost@example.org")
        e = self.assertRaises(DirectoryError, d.remove_domain, "example.net")
        self.assertIn("1 user", str(e))
        d.remove_group_member("staff@example.org", "dave@example.net")
        d.remove_group_sender("staff@example.org", "@partner.test")
        d.remove_group("staff@example.org")
        self.assertEqual(d.list_groups(), [])
        self.assertRaises(DirectoryError, d.remove_group, "staff@example.org")
        self.assertEqual((await d.resolve("staff@example.org")).kind, UNKNOWN)
