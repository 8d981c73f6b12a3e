"""The mysql directory against a private mariadbd: jdmailctl db init/upgrade and
domain/user/alias on jdmail's own schema, the server refusing a schema it does not
know, the query mode over a PostfixAdmin-shaped schema, and lookups through the
adbapi pool failing with DirectoryUnavailable while mariadbd is down and working again
after it restarts, with the same pool."""

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from jdmail.directory.sql import MIGRATIONS, MYSQL, SCHEMA_VERSION
from jdmail.errors import DirectoryUnavailable
from jdmail.interfaces import ResolutionKind
from jdmail.passwords import hash_password
from jdmail.services import Services
from tests.fixtures.mariadb import MariaDBCase
from tests.fixtures.server import REPO, env
from tests.test_config import TWISTD

POSTFIXADMIN_SQL = os.path.join(REPO, "tests", "fixtures", "postfixadmin.sql")
SAMPLE = os.path.join(REPO, "etc", "jdmail.ini")


def postfixadmin_queries():
    """The ready-made PostfixAdmin queries shown in etc/jdmail.ini, as {key: query}."""
    queries, inside = {}, False
    with open(SAMPLE, encoding="utf-8") as f:
        for line in f:
            if line.startswith("; Ready-made queries for a PostfixAdmin database"):
                inside = True
            elif inside and line.startswith("; | "):
                key, _, value = line[4:].partition(" = ")
                queries[key.strip()] = value.strip()
            elif inside:
                break
    return queries


def load_postfixadmin(case):
    """PostfixAdmin's tables in the test's database, with a domain, an alias domain,
    mailboxes (and their self-aliases, as PostfixAdmin adds them), an alias and a catch-all."""
    with open(POSTFIXADMIN_SQL, encoding="utf-8") as f:
        ddl = [s for s in f.read().split(";") if "CREATE TABLE" in s]
    case.sql(*ddl)
    import crypt
    md5 = crypt.crypt("md5pass", crypt.mksalt(crypt.METHOD_MD5))
    sha = "{SHA512-CRYPT}" + crypt.crypt("shapass", crypt.mksalt(crypt.METHOD_SHA512))
    case.sql(
        "INSERT INTO domain (domain, description, transport) VALUES ('example.org', 'test', 'virtual'), "
        "('backup.test', 'backup mx', 'relay')",
        "UPDATE domain SET backupmx = 1 WHERE domain = 'backup.test'",
        "INSERT INTO alias_domain (alias_domain, target_domain) VALUES ('example.net', 'example.org')",
        ("INSERT INTO mailbox (username, password, name, maildir, quota, local_part, domain) VALUES "
         "(%s, %s, 'Bob', 'example.org/bob/', 1048576, 'bob', 'example.org'), "
         "(%s, %s, 'Carol', 'example.org/carol/', 0, 'carol', 'example.org')",
         ("bob@example.org", md5, "carol@example.org", sha)),
        "INSERT INTO alias (address, goto, domain) VALUES "
        "('bob@example.org', 'bob@example.org', 'example.org'), "
        "('carol@example.org', 'carol@example.org', 'example.org'), "
        "('team@example.org', 'bob@example.org,carol@example.org', 'example.org'), "
        "('old@example.org', 'carol@example.org', 'example.org'), "
        "('@example.org', 'carol@example.org', 'example.org')",
        "UPDATE alias SET active = 0 WHERE address = 'old@example.org'")


class MySQLCase(MariaDBCase, unittest.TestCase):
    """A jdmail.ini using the test's database; jdmailctl and twistd against it."""

    def setUp(self):
        super().setUp()
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.ini = os.path.join(self.tmp, "jdmail.ini")
        self.write()

    def write(self, extra="", **directory):
        with open(self.ini, "w", encoding="utf-8") as f:
            f.write(f"[jdmail]\ndatadir = {self.tmp}/data\nhostname = mail.test\n\n"
                    + self.mariadb.ini(self.database, **directory) + extra)

    def ctl(self, *args, input=None):
        p = subprocess.run([sys.executable, "-m", "jdmail.admin.ctl", "--config", self.ini, *args],
                           env=env(), capture_output=True, text=True, cwd=self.tmp, input=input)
        return p.returncode, p.stdout, p.stderr

    def init(self):
        self.assertEqual(self.ctl("db", "init")[0], 0)


class DbCommandTests(MySQLCase):

    def test_init_creates_the_schema_once(self):
        status, out, err = self.ctl("db", "init")
        self.assertEqual((status, out, err), (0, f"created the jdmail schema (version {SCHEMA_VERSION}) "
                                                 f"in the database '{self.database}'\n", ""))
        tables = {row[0] for row in self.sql("SHOW TABLES")}
        self.assertEqual(tables, {"schema_version", "domains", "users", "aliases", "mail_groups",
                                  "group_members", "group_senders", "greylist_triplet", "greylist_client",
                                  "bayes_tokens", "bayes_totals", "bayes_seen"})
        self.assertEqual(self.sql("SELECT version FROM schema_version"), ((SCHEMA_VERSION,),))
        status, out, err = self.ctl("db", "init")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"jdmailctl: the database '{self.database}' already has the jdmail schema "
                              f"(version {SCHEMA_VERSION}); to bring it up to date run: jdmailctl db upgrade\n")
        self.assertEqual(self.sql("SELECT count(*) FROM schema_version"), ((1,),))

    def test_upgrade_from_version_1_keeps_the_data(self):
        version, statements = MIGRATIONS[0]
        self.assertEqual(version, 1)
        self.sql(*(MYSQL.ddl(s) for s in statements),
                 "CREATE TABLE schema_version (version BIGINT NOT NULL)",
                 "INSERT INTO schema_version VALUES (1)",
                 "INSERT INTO domains VALUES ('example.org')",
                 ("INSERT INTO users (address, password, quota_bytes, enabled) VALUES (%s, %s, 5, 1)",
                  ("bob@example.org", hash_password("pw"))),
                 "INSERT INTO aliases VALUES ('info@example.org', 'bob@example.org')")
        status, out, err = self.ctl("user", "list")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"jdmailctl: the database '{self.database}' has jdmail schema version 1, "
                              f"older than this jdmail's {SCHEMA_VERSION}; run: jdmailctl db upgrade\n")

        status, out, err = self.ctl("db", "upgrade")
        self.assertEqual((status, out, err), (0, f"upgraded the database '{self.database}' from jdmail "
                                                 f"schema version 1 to {SCHEMA_VERSION}\n", ""))
        self.assertEqual(self.ctl("user", "list"), (0, "bob@example.org 5 enabled\n", ""))
        self.assertEqual(self.ctl("alias", "list"), (0, "info@example.org bob@example.org\n", ""))
        self.assertEqual(self.sql("SELECT protocols, keep_copy FROM users"), (("imap,pop3,smtp", 1),))
        self.assertEqual(self.ctl("db", "upgrade"),
                         (0, f"the database '{self.database}' is already at jdmail schema version "
                             f"{SCHEMA_VERSION}\n", ""))

    def test_upgrade_needs_a_schema(self):
        self.assertEqual(self.ctl("db", "upgrade"),
                         (1, "", f"jdmailctl: the database '{self.database}' has no jdmail schema; "
                                 "run: jdmailctl db init\n"))
        self.assertEqual(self.sql("SHOW TABLES"), ())

    def test_commands_before_init(self):
        self.assertEqual(self.ctl("domain", "add", "example.org"),
                         (1, "", f"jdmailctl: the database '{self.database}' has no jdmail schema; "
                                 "run: jdmailctl db init\n"))

    def test_wrong_password(self):
        self.write(password="not-the-password")
        status, out, err = self.ctl("domain", "list")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("jdmailctl: cannot connect to the MySQL directory: (1045) Access "
                                       "denied for user 'jdmail'@"), err)
        self.assertEqual(len(err.splitlines()), 1, err)

    def test_sqlite_has_no_db_commands(self):
        with open(self.ini, "w", encoding="utf-8") as f:
            f.write(f"[jdmail]\ndatadir = {self.tmp}/data\n")
        self.assertEqual(self.ctl("db", "init"),
                         (2, "", "jdmailctl: the sqlite directory creates and upgrades its schema itself "
                                 "when it is opened (db init and upgrade are for mysql)\n"))


class AdminCommandTests(MySQLCase):
    """jdmailctl domain/user/alias on jdmail's schema in MySQL."""

    def setUp(self):
        super().setUp()
        self.init()

    def test_domains_users_aliases(self):
        self.assertEqual(self.ctl("domain", "add", "Example.ORG"), (0, "added domain example.org\n", ""))
        self.assertEqual(self.ctl("domain", "add", "example.org"),
                         (1, "", "jdmailctl: example.org is already a local domain\n"))
        self.assertEqual(self.ctl("user", "add", "bob@example.org", "--password", "pw", "--quota", "1M"),
                         (0, "added user bob@example.org\n", ""))
        self.assertEqual(self.ctl("user", "add", "eve@nowhere.test", "--password", "pw"),
                         (1, "", "jdmailctl: nowhere.test is not a local domain; add it first\n"))
        self.assertEqual(self.ctl("alias", "add", "info@example.org", "bob@example.org", "boss@elsewhere.test"),
                         (0, "added alias info@example.org -> bob@example.org, boss@elsewhere.test\n", ""))
        self.assertEqual(self.ctl("domain", "list"), (0, "example.org\n", ""))
        self.assertEqual(self.ctl("user", "list"), (0, "bob@example.org 1048576 enabled\n", ""))
        self.assertEqual(self.ctl("alias", "list", "example.org"),
                         (0, "info@example.org bob@example.org\ninfo@example.org boss@elsewhere.test\n", ""))
        (stored,), = self.sql("SELECT password FROM users WHERE address = 'bob@example.org'")
        self.assertTrue(stored.startswith("{BLF-CRYPT}$2y$"), stored)
        self.assertEqual(self.ctl("domain", "remove", "example.org"),
                         (1, "", "jdmailctl: example.org still has 1 user and 1 alias; remove them first\n"))
        self.assertEqual(self.ctl("alias", "remove", "info@example.org", "boss@elsewhere.test"),
                         (0, "removed alias info@example.org -> boss@elsewhere.test\n", ""))
        self.assertEqual(self.ctl("user", "passwd", "bob@example.org", input="new\n")[0], 0)
        (changed,), = self.sql("SELECT password FROM users WHERE address = 'bob@example.org'")
        self.assertNotEqual(changed, stored)
        self.assertEqual(self.ctl("user", "remove", "bob@example.org"),
                         (0, "removed user bob@example.org (its mail is kept)\n", ""))
        self.assertEqual(self.ctl("alias", "remove", "info@example.org"), (0, "removed alias info@example.org\n", ""))
        self.assertEqual(self.ctl("domain", "remove", "example.org"), (0, "removed domain example.org\n", ""))
        self.assertEqual(self.sql("SELECT count(*) FROM domains"), ((0,),))


    def test_groups_user_and_domain_settings(self):
        for args in (("domain", "add", "example.org"), ("user", "add", "bob@example.org", "--password", "pw"),
                     ("group", "add", "team@example.org", "bob@example.org", "--members-only"),
                     ("group", "member", "add", "team@example.org", "carol@example.org"),
                     ("group", "sender", "add", "team@example.org", "@partner.test"),
                     ("user", "set", "bob@example.org", "--protocols", "imap,smtp", "--forward",
                      "bob@home.test", "--no-keep-copy", "--quota-messages", "500", "--disable"),
                     ("domain", "set", "example.org", "--quota", "2M")):
            status, out, err = self.ctl(*args)
            self.assertEqual((status, err), (0, ""), args)
        self.assertEqual(self.sql("SELECT address, members_only FROM mail_groups"), (("team@example.org", 1),))
        self.assertEqual(self.sql("SELECT member FROM group_members ORDER BY member"),
                         (("bob@example.org",), ("carol@example.org",)))
        self.assertEqual(self.sql("SELECT sender FROM group_senders"), (("@partner.test",),))
        self.assertEqual(self.sql("SELECT protocols, forward, keep_copy, quota_messages, enabled FROM users"),
                         (("imap,smtp", "bob@home.test", 0, 500, 0),))
        self.assertEqual(self.sql("SELECT quota_bytes FROM domains"), ((2 * 1024 * 1024,),))
        status, out, err = self.ctl("user", "show", "bob@example.org")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("address: bob@example.org\n", out)
        status, out, err = self.ctl("group", "list")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("team@example.org 2 "), out)


class QueryConfigTests(MySQLCase):
    """An existing schema: the queries are checked at load, jdmailctl will not change it."""

    def test_admin_commands_refused(self):
        self.write(**postfixadmin_queries())
        message = ("jdmailctl: the 'mysql' directory cannot be changed with jdmailctl; it reads an existing "
                   "schema through [directory] user_query: manage its users with that schema's own tools "
                   "(e.g. PostfixAdmin)\n")
        for args in (("user", "add", "bob@example.org", "--password", "pw"), ("domain", "list"),
                     ("alias", "add", "a@example.org", "b@example.org"), ("db", "init")):
            self.assertEqual(self.ctl(*args), (2, "", message), args)

    def test_db_init_filters_only(self):
        load_postfixadmin(self)
        before = self.sql("CHECKSUM TABLE domain, mailbox, alias, alias_domain")
        self.write(**postfixadmin_queries())
        status, out, err = self.ctl("db", "init", "--filters-only")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "created jdmail's filter tables (greylist_triplet, greylist_client, bayes_tokens, "
                              f"bayes_totals, bayes_seen) where missing in the database '{self.database}'; "
                              "its other tables are unchanged\n")
        tables = {row[0] for row in self.sql("SHOW TABLES")}
        self.assertLessEqual({"greylist_triplet", "greylist_client", "bayes_tokens", "bayes_totals",
                              "bayes_seen"}, tables)
        self.assertNotIn("schema_version", tables)
        self.assertEqual(self.sql("CHECKSUM TABLE domain, mailbox, alias, alias_domain"), before)
        self.assertEqual(self.ctl("db", "init", "--filters-only")[0], 0)      # again: nothing missing

    def test_db_init_filters_only_refused_on_jdmails_schema(self):
        self.assertEqual(self.ctl("db", "init", "--filters-only"),
                         (2, "", "jdmailctl: db init --filters-only is for a mysql directory read through "
                                 "user_query; jdmail's own schema has these tables (jdmailctl db init or "
                                 "db upgrade)\n"))

    def test_unknown_parameter(self):
        queries = postfixadmin_queries()
        queries["alias_query"] = "SELECT goto FROM alias WHERE address = %(user)s"
        self.write(**queries)
        self.assertEqual(self.ctl("domain", "list"),
                         (2, "", f"jdmailctl: {self.ini}: [directory] alias_query uses the parameter %(user)s; "
                                 "allowed: %(address)s, %(local)s, %(domain)s\n"))

    def test_literal_percent_and_missing_queries(self):
        self.write(user_query="SELECT password FROM mailbox WHERE username LIKE '%'")
        status, out, err = self.ctl("domain", "list")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(sorted(err.splitlines()), sorted([
            f"jdmailctl: {self.ini}: [directory] alias_query is required when user_query is set "
            "(existing schema: SELECT the targets of alias %(address)s)",
            f"jdmailctl: {self.ini}: [directory] domain_query is required when user_query is set "
            "(existing schema: SELECT a row when %(domain)s is ours)",
            f"jdmailctl: {self.ini}: [directory] user_query is not a valid query template "
            "(unsupported format character ''' (0x27) at index 51); write a literal % as %%"]))

    def test_queries_need_user_query(self):
        self.write(alias_query="SELECT goto FROM alias WHERE address = %(address)s")
        self.assertEqual(self.ctl("domain", "list"),
                         (2, "", f"jdmailctl: {self.ini}: [directory] alias_query is set but user_query is "
                                 "not; the queries are for an existing schema and need user_query too\n"))


class ConnectionOptionTests(MySQLCase):
    """tls, tls_ca, socket and password_file reach the real server as configured."""

    def settings(self, **changes):
        from jdmail.directory.mysql import MySQLDirectoryFactory
        settings = {k: o.default for k, o in MySQLDirectoryFactory.options.items()}
        m = self.mariadb
        settings.update(host=m.host, port=m.port, user=m.user, password=m.password, database=self.database)
        settings.update(changes)
        return settings

    def cipher(self, **changes):
        """The TLS cipher of a connection made as [directory] says ('' for none)."""
        import pymysql
        from jdmail.directory.mysqlpool import connect_kwargs
        with pymysql.connect(**connect_kwargs(self.settings(**changes))) as conn, conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            return cur.fetchone()[1]

    def test_tls(self):
        self.assertEqual(self.cipher(tls="no"), "")
        self.assertNotEqual(self.cipher(), "")                      # preferred: the server offers TLS
        self.assertNotEqual(self.cipher(tls="yes"), "")
        self.assertNotEqual(self.cipher(tls="verify", host="localhost", tls_ca=self.mariadb.tls_cert), "")

    def test_tls_verify_refuses_an_unknown_certificate(self):
        from jdmail.tls import _generate_self_signed
        other = os.path.join(self.tmp, "other.crt")
        _generate_self_signed("localhost", other, os.path.join(self.tmp, "other.key"))
        self.write(tls="verify", host="localhost", tls_ca=other)
        status, out, err = self.ctl("domain", "list")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("jdmailctl: cannot connect to the MySQL directory: "), err)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", err)
        self.write(tls="verify", tls_ca=self.mariadb.tls_cert)       # 127.0.0.1 is not "localhost"
        self.assertIn("CERTIFICATE_VERIFY_FAILED", self.ctl("domain", "list")[2])

    def test_tls_ca_must_exist(self):
        self.write(tls="verify", tls_ca="/nonexistent/ca.pem")
        self.assertEqual(self.ctl("domain", "list"),
                         (2, "", f"jdmailctl: {self.ini}: [directory] tls_ca '/nonexistent/ca.pem': no such file\n"))

    def test_socket_and_password_file(self):
        secret = os.path.join(self.tmp, "mysql.secret")
        with open(secret, "w") as f:
            f.write(self.mariadb.password + "\n")
        self.write(socket=self.mariadb.socket, password="", password_file=secret)
        self.assertEqual(self.ctl("db", "init")[0], 0)
        self.assertEqual(self.ctl("domain", "add", "example.org"), (0, "added domain example.org\n", ""))
        os.unlink(secret)
        self.assertEqual(self.ctl("domain", "list"),
                         (2, "", f"jdmailctl: {self.ini}: [directory] password_file '{secret}': cannot read: "
                                 "No such file or directory\n"))


class ServerRefusesTests(MySQLCase):
    """twistd jdmail stops with one line on a schema it cannot serve."""

    def twistd(self):
        self.write("[smtp]\nlisten = tcp:0:interface=127.0.0.1\n[submission]\nlisten =\n[smtps]\nlisten =\n"
                   "[pop3]\nlisten =\n[pop3s]\nlisten =\n[imap]\nlisten =\n[imaps]\nlisten =\n")
        p = subprocess.run(TWISTD + ["jdmail", "--config", self.ini], env=env(), cwd=self.tmp,
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("Traceback", p.stdout + p.stderr)
        return p.stderr

    def test_newer_schema(self):
        self.init()
        self.sql("UPDATE schema_version SET version = 99")
        self.assertEqual(self.twistd(), f"jdmail: {self.ini}: [directory] database '{self.database}' has jdmail "
                                        f"schema version 99; this jdmail knows version {SCHEMA_VERSION} only "
                                        "(upgrade jdmail)\n")

    def test_no_schema(self):
        self.assertEqual(self.twistd(), f"jdmail: {self.ini}: [directory] database '{self.database}' has no "
                                        "jdmail schema; run: jdmailctl db init\n")

    def test_unknown_database(self):
        self.database = self.database + "_missing"
        self.assertEqual(self.twistd(), f"jdmail: {self.ini}: [directory] type cannot use the MySQL directory: "
                                        f"(1049) Unknown database '{self.database}'\n")


class PoolTests(MariaDBCase, unittest.TestCase):
    """The directory in this process, over the real pool: PostfixAdmin queries, then
    the server killed (DirectoryUnavailable) and restarted (the same pool answers)."""

    def setUp(self):
        super().setUp()
        load_postfixadmin(self)
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-mysql")
        pool.start()
        self.addCleanup(pool.stop)
        self.services = Services(reactor=reactor, config=None, hostname="mail.test", datadir=self.mktemp(),
                                 threadpool=pool)

    def directory(self, **extra):
        from jdmail.directory.mysql import MySQLDirectoryFactory
        factory = MySQLDirectoryFactory()
        settings = {k: o.default for k, o in factory.options.items()}
        settings.update(host=self.mariadb.host, port=self.mariadb.port, user=self.mariadb.user,
                        password=self.mariadb.password, database=self.database, **postfixadmin_queries())
        settings.update(extra)
        directory = factory.build("directory", settings, self.services)
        directory.cache.ttl = directory.cache.negative_ttl = 0
        self.addCleanup(directory.backend._pool.close)
        return directory

    async def test_postfixadmin_lookups(self):
        d = self.directory()
        self.assertTrue(await d.is_local_domain("example.org"))
        self.assertTrue(await d.is_local_domain("example.net"))       # alias_domain
        self.assertFalse(await d.is_local_domain("backup.test"))      # backupmx
        bob = await d.resolve("Bob@Example.org")
        self.assertEqual((bob.kind, bob.mailboxes), (ResolutionKind.LOCAL, ("example.org/bob",)))
        self.assertEqual(bob.accounts[0].quota_bytes, 1048576)
        team = await d.resolve("team@example.org")
        self.assertEqual(set(team.mailboxes), {"example.org/bob", "example.org/carol"})
        self.assertEqual((await d.resolve("bob@example.net")).mailboxes, ("example.org/bob",))
        self.assertEqual((await d.resolve("nobody@example.org")).mailboxes, ("example.org/carol",))  # catch-all
        self.assertEqual((await d.resolve("old@example.org")).mailboxes, ("example.org/carol",))     # inactive
        self.assertEqual((await d.authenticate("bob@example.org", "md5pass")).name, "bob@example.org")
        self.assertIsNone(await d.authenticate("bob@example.org", "wrong"))
        self.assertEqual((await d.authenticate("carol@example.org", "shapass")).mailbox, "example.org/carol")

    async def test_every_query(self):
        """password, group, forward and password_update queries and the protocol switch
        columns, on an iRedMail-like schema of our own."""
        self.sql("CREATE TABLE users (email VARCHAR(255) PRIMARY KEY, enablepop3 TINYINT, enableimap TINYINT, "
                 "maxquota BIGINT)",
                 "CREATE TABLE secrets (email VARCHAR(255) PRIMARY KEY, hash VARCHAR(255))",
                 "CREATE TABLE lists (list VARCHAR(255), member VARCHAR(255), closed TINYINT, allowed TEXT)",
                 "CREATE TABLE forwardings (email VARCHAR(255), dest VARCHAR(255), keep TINYINT)",
                 "INSERT INTO users VALUES ('dan@example.org', 0, 1, 2048), ('bob@example.org', 1, 1, 0)",
                 ("INSERT INTO secrets VALUES ('dan@example.org', %s)", (hash_password("dan-pw"),)),
                 "INSERT INTO lists VALUES ('staff@example.org', 'dan@example.org', 1, '@partner.test'), "
                 "('staff@example.org', 'bob@example.org', 1, '')",
                 "INSERT INTO forwardings VALUES ('dan@example.org', 'dan@home.test, x@remote.test', 0)")
        d = self.directory(
            user_query="SELECT email AS address, enablepop3 AS pop3, enableimap AS imap, maxquota AS quota_bytes "
                       "FROM users WHERE email = %(address)s",
            password_query="SELECT hash FROM secrets WHERE email = %(address)s",
            group_query="SELECT member, closed AS members_only, allowed AS senders FROM lists "
                        "WHERE list = %(address)s",
            forward_query="SELECT dest, keep AS keep_copy FROM forwardings WHERE email = %(address)s",
            password_update_query="UPDATE secrets SET hash = %(password)s WHERE email = %(address)s")
        d.settings["rehash"] = True
        d._scheme = "ARGON2ID"
        account = await d.authenticate("dan@example.org", "dan-pw")
        self.assertEqual((account.name, account.quota_bytes, account.protocols),
                         ("dan@example.org", 2048, frozenset({"imap", "smtp"})))
        (stored,), = self.sql("SELECT hash FROM secrets")
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$"), stored)
        self.assertEqual((await d.authenticate("dan@example.org", "dan-pw")).name, "dan@example.org")
        self.assertIsNone(await d.authenticate("dan@example.org", "wrong"))
        dan = await d.resolve("dan@example.org")
        self.assertEqual((dan.mailboxes, dan.remote), ((), ("dan@home.test", "x@remote.test")))
        staff = await d.resolve("staff@example.org", sender="eve@else.test")
        self.assertEqual(staff.kind, ResolutionKind.REFUSED)
        staff = await d.resolve("staff@example.org", sender="ann@partner.test")
        self.assertEqual((staff.kind, staff.mailboxes, staff.remote),
                         (ResolutionKind.LOCAL, ("example.org/bob",), ("dan@home.test", "x@remote.test")))

    async def test_down_then_back_with_the_same_pool(self):
        d = self.directory()
        self.assertEqual((await d.resolve("bob@example.org")).mailboxes, ("example.org/bob",))
        self.mariadb.kill()
        self.addCleanup(lambda: self.mariadb.proc.poll() is None or self.mariadb.start())
        for _ in range(2):
            with self.assertRaises(DirectoryUnavailable):
                await d.resolve("bob@example.org")
            with self.assertRaises(DirectoryUnavailable):
                await d.authenticate("carol@example.org", "shapass")
        self.mariadb.start()
        self.assertEqual((await d.resolve("bob@example.org")).mailboxes, ("example.org/bob",))
        self.assertEqual((await d.authenticate("carol@example.org", "shapass")).name, "carol@example.org")
        self.flushLoggedErrors()


