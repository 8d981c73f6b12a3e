"""A real jdmail (twistd) with [directory] type = mysql on a private mariadbd.

jdmail's own schema: SMTP to a user, an alias and a group; POP3 and IMAP logins with
every hash scheme jdmail reads; rehash on login; quotas, protocol switches, forwarding
through the queue, a members-only group, a catch-all and a domain alias set with jdmailctl. A PostfixAdmin-shaped database read
with the queries shown in etc/jdmail.ini, unchanged. mariadbd killed mid-test: RCPT
gets 451 4.3.0 (never 550), IMAP LOGIN NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]; after
mariadbd restarts, the same jdmail process serves again by itself."""

import base64
import hashlib
import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import warnings

from argon2 import PasswordHasher, Type
from twisted.trial import unittest

from jdmail.passwords import hash_password
from tests.fixtures.mariadb import MariaDBCase
from tests.fixtures.server import JdmailServer
from tests.test_directory_mysql import load_postfixadmin, postfixadmin_queries

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def unverified():
    return ssl._create_unverified_context()


def salted(algorithm, scheme, password, salt=b"NaCl4jd"):
    digest = hashlib.new(algorithm, password.encode() + salt).digest()
    return "{" + scheme + "}" + base64.b64encode(digest + salt).decode()


def hashes(password):
    """{scheme: stored hash of ``password``} for every scheme jdmail verifies."""
    return {
        "BLF-CRYPT": hash_password(password, "BLF-CRYPT"),
        "ARGON2I": "{ARGON2I}" + PasswordHasher(type=Type.I).hash(password),
        "ARGON2ID": hash_password(password, "ARGON2ID"),
        "SHA512-CRYPT": "{SHA512-CRYPT}" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512)),
        "SHA256-CRYPT": "{SHA256-CRYPT}" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA256)),
        "MD5-CRYPT": "{MD5-CRYPT}" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_MD5)),
        "SSHA": salted("sha1", "SSHA", password),
        "SSHA512": salted("sha512", "SSHA512", password),
        "PLAIN": "{PLAIN}" + password,
    }


def message(subject):
    return (f"From: alice@remote.test\r\nTo: someone\r\nSubject: {subject}\r\n\r\n"
            f"Body of {subject}.\r\n").encode()


class MySQLServerCase(MariaDBCase, unittest.TestCase):
    """A jdmail server on the test's database (started by ``start``)."""

    def server(self, overrides=None, **directory):
        overrides = dict(overrides or {})
        server = JdmailServer(overrides=overrides, extra_ini=self.mariadb.ini(self.database, **directory))
        server.write_ini()
        self.addCleanup(server.stop)
        return server

    def admin(self):
        """jdmail's schema in the test's database, changed in this process (what
        jdmailctl does, without a process start per change)."""
        from jdmail.directory.mysqlschema import MySQLSchemaBackend
        m = self.mariadb
        backend = MySQLSchemaBackend(dict(host=m.host, port=m.port, user=m.user, password=m.password,
                                          database=self.database, charset="utf8mb4", autocommit=False))
        self.addCleanup(backend.close)
        return backend

    def imap_login(self, server, user, password):
        c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=unverified(), timeout=30)
        try:
            return c.login(user, password)
        finally:
            try:
                c.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def pop3_login(self, server, user, password):
        c = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=unverified(), timeout=30)
        try:
            c.user(user)
            return c.pass_(password)
        finally:
            c.close()

    def rcpt(self, server, *recipients):
        """[(code, text)] of RCPT for each recipient in one transaction (then RSET)."""
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@remote.test")
            out = [s.rcpt(r) for r in recipients]
            s.rset()
        return out

    def send(self, server, recipients, subject):
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            return s.sendmail("alice@remote.test", recipients, message(subject))

    def subjects(self, server, address):
        out = []
        for path in server.messages(address):
            with open(path, "rb") as f:
                for line in f.read().split(b"\r\n"):
                    if line.startswith(b"Subject: "):
                        out.append(line[9:].decode())
                        break
        return sorted(out)


class OwnSchemaTests(MySQLServerCase):
    """jdmail's schema, made and filled with jdmailctl."""

    def setUp(self):
        super().setUp()
        overrides = {}
        if "forwarding" in self._testMethodName:         # remote.test's relay is down: mail stays queued
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                port = free.getsockname()[1]
            overrides = {"relay:nowhere": {"host": "127.0.0.1", "port": str(port), "tls": "none"},
                         "routing": {"recipient:remote.test": "relay:nowhere"}}
        self.jd = self.server(overrides, **({"rehash": "yes"} if "rehash" in self._testMethodName else {}))
        self.jd.ctl("db", "init")
        self.directory = admin = self.admin()
        admin.add_domain("example.org")
        admin.add_user("bob@example.org", hash_password("bob-pw"))
        admin.add_user("carol@example.org", hash_password("carol-pw", "ARGON2ID"))
        admin.add_alias("info@example.org", ["bob@example.org"])
        admin.add_group("team@example.org", ["bob@example.org", "carol@example.org"])

    def test_smtp_to_user_alias_and_group(self):
        self.jd.start()
        self.assertEqual(self.rcpt(self.jd, "nobody@example.org"),
                         [(550, b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown")])
        self.assertEqual(self.send(self.jd, ["bob@example.org"], "to bob"), {})
        self.assertEqual(self.send(self.jd, ["info@example.org"], "to info"), {})
        self.assertEqual(self.send(self.jd, ["team@example.org"], "to team"), {})
        self.assertEqual(self.subjects(self.jd, "bob@example.org"), ["to bob", "to info", "to team"])
        self.assertEqual(self.subjects(self.jd, "carol@example.org"), ["to team"])

    def test_quota_switches_forwarding_closed_group_and_aliases(self):
        """The account features on this backend, set with jdmailctl as an admin would."""
        for args in (("user", "add", "dan@example.org", "--password", "dan-pw"),
                     ("user", "set", "dan@example.org", "--quota-messages", "1", "--protocols", "imap"),
                     ("user", "add", "away@example.org", "--password", "away-pw"),
                     ("user", "set", "away@example.org", "--forward", "away@remote.test", "--no-keep-copy"),
                     ("group", "add", "board@example.org", "bob@example.org", "--members-only"),
                     ("alias", "add", "@example.net", "@example.org"),
                     ("alias", "add", "*@example.org", "carol@example.org")):
            self.jd.ctl(*args)
        self.jd.start()
        self.assertEqual(self.rcpt(self.jd, "board@example.org"),
                         [(550, b"5.7.1 <board@example.org>: Recipient address rejected: "
                                b"you may not post to this group")])
        with smtplib.SMTP("127.0.0.1", self.jd.ports["smtp"], timeout=30) as s:
            self.assertEqual(s.sendmail("bob@example.org", ["board@example.org"], message("board")), {})
        self.assertEqual(self.subjects(self.jd, "bob@example.org"), ["board"])
        self.assertEqual(self.send(self.jd, ["bob@example.net", "whoever@example.org"], "aliases"), {})
        self.assertEqual(self.subjects(self.jd, "bob@example.org"), ["aliases", "board"])   # domain alias
        self.assertEqual(self.subjects(self.jd, "carol@example.org"), ["aliases"])          # catch-all
        self.assertEqual(self.send(self.jd, ["dan@example.org"], "first"), {})
        self.assertEqual(self.rcpt(self.jd, "dan@example.org"),
                         [(452, b"4.2.2 <dan@example.org>: Mailbox full")])
        show = self.jd.ctl("user", "show", "dan@example.org").stdout
        self.assertIn("quota_messages: 1 messages (the user's own)\n", show)
        self.assertRegex(show, r"usage: \d+ bytes, 1 messages\n")
        self.assertEqual(self.imap_login(self.jd, "dan@example.org", "dan-pw")[0], "OK")
        with self.assertRaises(poplib.error_proto) as cm:
            self.pop3_login(self.jd, "dan@example.org", "dan-pw")
        self.assertEqual(cm.exception.args[0], b"-ERR [AUTH] POP3 access is disabled for this account")
        self.assertEqual(self.send(self.jd, ["away@example.org"], "away"), {})
        self.assertIn("away@remote.test", self.jd.ctl("queue", "list").stdout)   # its relay is down
        self.assertEqual(self.jd.messages("away@example.org"), [])

    def test_login_with_every_hash_scheme(self):
        users = {}
        for scheme, stored in hashes("pw-" + "x").items():
            address = f"{scheme.lower()}@example.org"
            self.directory.add_user(address, stored)
            users[scheme] = address
        self.jd.start()
        for scheme, address in users.items():
            self.assertEqual(self.imap_login(self.jd, address, "pw-x")[0], "OK", scheme)
            self.assertTrue(self.pop3_login(self.jd, address, "pw-x").startswith(b"+OK Logged in"), scheme)
            with self.assertRaises(imaplib.IMAP4.error, msg=scheme):
                self.imap_login(self.jd, address, "pw-y")
            with self.assertRaises(poplib.error_proto, msg=scheme):
                self.pop3_login(self.jd, address, "pw-y")
        log = self.jd.read_log()
        self.assertIn("imap login user=ssha512@example.org", log)
        self.assertNotIn("pw-x", log)

    def test_rehash_on_login(self):
        stored = hashes("old-pw")["MD5-CRYPT"]
        self.sql(("UPDATE users SET password = %s WHERE address = 'bob@example.org'", (stored,)))
        self.jd.start()
        self.assertEqual(self.imap_login(self.jd, "bob@example.org", "old-pw")[0], "OK")
        (new,), = self.sql("SELECT password FROM users WHERE address = 'bob@example.org'")
        self.assertTrue(new.startswith("{BLF-CRYPT}$2y$"), new)
        self.assertTrue(self.pop3_login(self.jd, "bob@example.org", "old-pw").startswith(b"+OK Logged in"))
        self.assertIn("directory rehash user=bob@example.org from=MD5-CRYPT to=BLF-CRYPT", self.jd.read_log())


class PostfixAdminTests(MySQLServerCase):
    """A PostfixAdmin database, read with etc/jdmail.ini's ready-made queries."""

    def test_smtp_imap_pop3_unchanged(self):
        load_postfixadmin(self)
        before = self.sql("CHECKSUM TABLE domain, mailbox, alias, alias_domain")
        jd = self.server(**postfixadmin_queries())
        jd.start()
        self.assertEqual(self.rcpt(jd, "bob@example.org", "team@example.org", "bob@example.net",
                                   "anyone@example.org", "x@backup.test"),
                         [(250, b"2.1.5 Recipient ok")] * 4 +
                         [(554, b"5.7.1 <x@backup.test>: Relay access denied")])
        self.assertEqual(self.send(jd, ["team@example.org"], "team"), {})
        self.assertEqual(self.send(jd, ["bob@example.net"], "alias domain"), {})
        self.assertEqual(self.send(jd, ["anyone@example.org"], "catch-all"), {})
        self.assertEqual(self.subjects(jd, "bob@example.org"), ["alias domain", "team"])
        self.assertEqual(self.subjects(jd, "carol@example.org"), ["catch-all", "team"])
        self.assertEqual(self.imap_login(jd, "bob@example.org", "md5pass")[0], "OK")        # bare $1$
        self.assertEqual(self.imap_login(jd, "carol@example.org", "shapass")[0], "OK")     # {SHA512-CRYPT}
        self.assertTrue(self.pop3_login(jd, "bob@example.org", "md5pass").startswith(b"+OK Logged in"))
        with self.assertRaises(imaplib.IMAP4.error):
            self.imap_login(jd, "bob@example.org", "shapass")
        self.assertEqual(self.sql("CHECKSUM TABLE domain, mailbox, alias, alias_domain"), before)
        self.assertEqual(jd.ctl("user", "list", check=False).returncode, 2)
        # read-only commands work on it: the quota from the mailbox table, the usage from the store
        files = jd.messages("bob@example.org")
        size = sum(os.path.getsize(p) for p in files)
        p = jd.ctl("user", "show", "bob@example.org")
        self.assertEqual(p.stdout, "address: bob@example.org\nenabled: yes\nprotocols: imap, pop3, smtp\n"
                                   "quota: 1048576 bytes (the user's own)\nquota_messages: none\n"
                                   f"usage: {size} bytes, {len(files)} messages\nforward: none\n"
                                   "mailbox: example.org/bob\n")
        self.assertEqual(len(files), 2)
        self.assertEqual(jd.ctl("domain", "show", "example.net").stdout,
                         "domain: example.net\nalias of: example.org\n")
        p = jd.ctl("user", "show", "nobody@example.org", check=False)
        self.assertEqual((p.returncode, p.stderr), (1, "jdmailctl: nobody@example.org is not a user\n"))


class BackendDownTests(MySQLServerCase):
    """mariadbd killed under a running jdmail, then started again."""

    def test_tempfail_then_recovery_without_restart(self):
        # one process: the outage and the recovery are logged once per process
        jd = self.server({"jdmail": {"workers": "1"}}, cache_ttl="0", negative_cache_ttl="0")
        admin = self.admin()
        admin.schema_init()
        admin.add_domain("example.org")
        admin.add_user("bob@example.org", hash_password("bob-pw"))
        jd.start()
        self.assertEqual(self.rcpt(jd, "bob@example.org"), [(250, b"2.1.5 Recipient ok")])
        self.assertEqual(self.imap_login(jd, "bob@example.org", "bob-pw")[0], "OK")

        self.mariadb.kill()
        self.addCleanup(lambda: self.mariadb.proc.poll() is None or self.mariadb.start())
        for _ in range(2):
            self.assertEqual(self.rcpt(jd, "bob@example.org", "nobody@example.org"),
                             [(451, b"4.3.0 Temporary lookup failure; try again later")] * 2)
            with self.assertRaises(imaplib.IMAP4.error) as cm:
                self.imap_login(jd, "bob@example.org", "bob-pw")
            self.assertEqual(cm.exception.args[0],
                             b"[UNAVAILABLE] Authentication temporarily unavailable, try again later")
            with self.assertRaises(poplib.error_proto) as cm:
                self.pop3_login(jd, "bob@example.org", "bob-pw")
            self.assertEqual(cm.exception.args[0],
                             b"-ERR [SYS/TEMP] Authentication temporarily unavailable, try again later")

        self.mariadb.start()
        self.assertEqual(self.send(jd, ["bob@example.org"], "after restart"), {})
        self.assertEqual(self.subjects(jd, "bob@example.org"), ["after restart"])
        self.assertEqual(self.imap_login(jd, "bob@example.org", "bob-pw")[0], "OK")
        self.assertTrue(self.pop3_login(jd, "bob@example.org", "bob-pw").startswith(b"+OK Logged in"))
        self.assertEqual(self.rcpt(jd, "nobody@example.org"),
                         [(550, b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown")])
        self.assertIsNone(jd.proc.poll())
        log = jd.read_log()
        self.assertEqual(log.count("the MySQL directory cannot answer"), 1, log)
        self.assertEqual(log.count("the MySQL server answers again"), 1, log)
        self.assertNotIn("Traceback", log)
