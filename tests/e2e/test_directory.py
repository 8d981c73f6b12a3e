"""Account features end to end (issue 5): a real ``twistd jdmail`` on the SQLite
directory, talked to with raw SMTP, poplib and imaplib; changed while it runs with
the real jdmailctl.

Groups and members-only posting, forwarding with and without a copy (remote targets
land in the outbound queue, seen with ``jdmailctl queue list``), domain default quotas,
the message-count quota over SMTP and IMAP, per-protocol switches, ``user show``,
rehash on login, the lookup cache's TTL, and POP3/IMAP logins with every hash scheme.
"""

import atexit
import imaplib
import os
import poplib
import socket
import sqlite3

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jdmail.directory.sqlite import SQLiteBackend
from jdmail.passwords import hash_password
from tests.e2e import RawSMTP, message, token, unverified_context, wait_for
from tests.fixtures.server import JdmailServer

PASSWORDS = {"bob@example.org": "bob-pw", "carol@example.org": "carol-pw", "dave@example.org": "dave-pw",
             "away@example.org": "away-pw", "copy@example.org": "copy-pw", "imaponly@example.org": "i-pw",
             "poponly@example.org": "p-pw", "full@small.test": "full-pw", "old@example.org": "old-pw"}


def closed_port():
    """A loopback port nobody listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(overrides, extra_ini, setup):
    """A JdmailServer with the directory made by ``setup(server)`` (jdmailctl calls)."""
    server = JdmailServer(overrides=overrides, extra_ini=extra_ini)
    server.write_ini()
    setup(server)
    server.start()
    return server


_feature_server = None


def feature_server():
    """The server of DirectoryFeatureTests, started on first use (stopped at exit)."""
    global _feature_server
    if _feature_server is None or _feature_server.proc.poll() is not None:
        _feature_server = _start_feature_server()
        atexit.register(_feature_server.stop)
    return _feature_server


def _start_feature_server():
    def setup(s):
        # made in-process through the admin API jdmailctl uses (its commands have their
        # own tests in tests/test_admin_ctl.py): twenty jdmailctl runs cost half a minute
        d = SQLiteBackend(os.path.join(s.datadir, "directory.sqlite"))
        try:
            d.add_domain("example.org")
            d.add_domain("small.test")
            d.set_domain("small.test", quota_bytes=1024**2, quota_messages=2)
            for address, password in PASSWORDS.items():
                # old@ was imported with an older scheme: rehash turns it into ARGON2ID
                scheme = "BLF-CRYPT" if address == "old@example.org" else "ARGON2ID"
                d.add_user(address, hash_password(password, scheme))
            d.add_group("staff@example.org", ["bob@example.org", "carol@example.org"])
            d.add_group("board@example.org", ["bob@example.org", "dave@example.org"], members_only=True)
            d.add_group_sender("board@example.org", "@partner.test")
            d.set_user("away@example.org", forward=["carol@example.org", "Away@Remote.test"], keep_copy=False)
            d.set_user("copy@example.org", forward=["friend@remote.test"], keep_copy=True)
            d.set_user("imaponly@example.org", protocols=["imap"])
            d.set_user("poponly@example.org", protocols=["pop3"])
        finally:
            d.close()
    extra = (f"[relay:nowhere]\nhost = 127.0.0.1\nport = {closed_port()}\ntls = none\n"
             "[routing]\nrecipient:remote.test = relay:nowhere\n")
    overrides = {"directory": {"cache_ttl": "0", "negative_cache_ttl": "0", "rehash": "yes",
                               "password_scheme": "ARGON2ID"},
                 "auth": {"fail_delay": "100ms", "allow_plaintext": "yes"}}
    return start_server(overrides, extra, setup)


class DirectoryFeatureTests(TestCase):
    """One server for the account features; the cache is off so jdmailctl changes count at once."""

    def setUp(self):
        self.server = feature_server()

    # --- helpers ---------------------------------------------------------------------------

    def raw(self):
        c = RawSMTP(self.server.ports["smtp"])
        self.addCleanup(c.close)
        self.assertEqual(c.ehlo().code, 250)
        return c

    def send(self, sender, rcpts, tok):
        """One message over the MX port; returns {rcpt: reply} and the final reply (or None)."""
        c = self.raw()
        self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>").code, 250)
        replies = {r: c.cmd(f"RCPT TO:<{r}>") for r in rcpts}
        if not any(r.code == 250 for r in replies.values()):
            return replies, None
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message(tok) + b".\r\n")
        return replies, c.reply()

    def inbox(self, address, tok):
        return [p for p in self.server.messages(address) if tok.encode() in open(p, "rb").read()]

    def queued(self):
        return self.server.ctl("queue", "list").stdout

    # --- groups ------------------------------------------------------------------------------

    def test_group_delivers_to_every_member(self):
        tok = token()
        replies, final = self.send("someone@elsewhere.test", ["staff@example.org"], tok)
        self.assertEqual(replies["staff@example.org"].code, 250)
        self.assertEqual(final.code, 250)
        for member in ("bob@example.org", "carol@example.org"):
            self.assertEqual(len(self.inbox(member, tok)), 1, member)
        self.assertEqual(self.inbox("dave@example.org", tok), [])

    def test_members_only_group(self):
        tok = token()
        replies, final = self.send("outsider@elsewhere.test", ["board@example.org"], tok)
        reply = replies["board@example.org"]
        self.assertEqual((reply.code, reply.text),
                         (550, "5.7.1 <board@example.org>: Recipient address rejected: "
                               "you may not post to this group"))
        self.assertIsNone(final)
        self.assertEqual(self.inbox("bob@example.org", tok), [])
        for sender in ("Dave@example.org", "boss@partner.test"):
            tok = token()
            replies, final = self.send(sender, ["board@example.org"], tok)
            self.assertEqual(replies["board@example.org"].code, 250, sender)
            self.assertEqual(final.code, 250)
            self.assertEqual(len(self.inbox("bob@example.org", tok)), 1)
            self.assertEqual(len(self.inbox("dave@example.org", tok)), 1)
        # the null sender (a bounce) is not a member either
        c = self.raw()
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<board@example.org>").code, 550)

    # --- forwarding --------------------------------------------------------------------------

    def test_forward_without_copy(self):
        tok = token()
        replies, final = self.send("someone@elsewhere.test", ["away@example.org"], tok)
        self.assertEqual(final.code, 250, replies)
        self.assertEqual(len(self.inbox("carol@example.org", tok)), 1)
        self.assertEqual(self.inbox("away@example.org", tok), [])
        listing = wait_for(lambda: "away@remote.test" in self.queued() and self.queued())
        self.assertIn("away@remote.test", listing)

    def test_forward_with_copy(self):
        tok = token()
        _replies, final = self.send("someone@elsewhere.test", ["copy@example.org"], tok)
        self.assertEqual(final.code, 250)
        self.assertEqual(len(self.inbox("copy@example.org", tok)), 1)
        self.assertIn("friend@remote.test", self.queued())

    # --- quotas ------------------------------------------------------------------------------

    def test_domain_default_message_quota(self):
        show = self.server.ctl("user", "show", "full@small.test").stdout
        self.assertIn("quota: 1048576 bytes (domain default)\n", show)
        self.assertIn("quota_messages: 2 messages (domain default)\n", show)
        self.assertIn("usage: 0 bytes, 0 messages\n", show)
        for _ in range(2):
            _replies, final = self.send("someone@elsewhere.test", ["full@small.test"], token())
            self.assertEqual(final.code, 250)
        replies, final = self.send("someone@elsewhere.test", ["full@small.test"], token())
        reply = replies["full@small.test"]
        self.assertEqual((reply.code, reply.text), (452, "4.2.2 <full@small.test>: Mailbox full"))
        self.assertEqual(len(self.server.messages("full@small.test")), 2)
        show = self.server.ctl("user", "show", "full@small.test").stdout
        self.assertRegex(show, r"usage: \d+ bytes, 2 messages\n")
        # IMAP sees the limit and refuses an APPEND over it
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        self.addCleanup(imap.shutdown)
        imap.starttls(unverified_context())
        imap.login("full@small.test", PASSWORDS["full@small.test"])
        typ, data = imap.getquotaroot("INBOX")
        self.assertEqual(typ, "OK")
        self.assertIn(b"MESSAGE 2 2", data[1][0])
        typ, data = imap.append("Drafts", None, None, message(token()))
        self.assertEqual(typ, "NO")
        self.assertIn(b"[OVERQUOTA]", data[0])
        imap.select("INBOX")
        typ, data = imap.copy("1", "Trash")
        self.assertEqual(typ, "NO")
        self.assertIn(b"[OVERQUOTA]", data[0])

    # --- protocol switches ---------------------------------------------------------------

    def test_pop3_disabled(self):
        pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=10)
        self.addCleanup(pop.close)
        pop.user("imaponly@example.org")
        with self.assertRaises(poplib.error_proto) as cm:
            pop.pass_(PASSWORDS["imaponly@example.org"])
        self.assertEqual(cm.exception.args[0], b"-ERR [AUTH] POP3 access is disabled for this account")
        # allowed for the other user
        pop2 = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=10)
        self.addCleanup(pop2.close)
        pop2.user("poponly@example.org")
        self.assertTrue(pop2.pass_(PASSWORDS["poponly@example.org"]).startswith(b"+OK"))

    def test_imap_disabled(self):
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        self.addCleanup(imap.shutdown)
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            imap.login("poponly@example.org", PASSWORDS["poponly@example.org"])
        self.assertIn("[AUTHORIZATIONFAILED] IMAP access is disabled for this account", str(cm.exception))
        imap2 = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        self.addCleanup(imap2.logout)
        self.assertEqual(imap2.login("imaponly@example.org", PASSWORDS["imaponly@example.org"])[0], "OK")

    def test_smtp_disabled(self):
        c = RawSMTP(self.server.ports["submission"])
        self.addCleanup(c.close)
        c.ehlo()
        reply = c.auth_plain("imaponly@example.org", PASSWORDS["imaponly@example.org"])
        self.assertEqual((reply.code, reply.text),
                         (535, "5.7.8 Authentication refused: sending mail (SMTP) is disabled for this account"))
        self.assertEqual(c.auth_plain("bob@example.org", PASSWORDS["bob@example.org"]).code, 235)
        # a wrong password still gets the usual answer
        c2 = RawSMTP(self.server.ports["submission"])
        self.addCleanup(c2.close)
        c2.ehlo()
        self.assertEqual(c2.auth_plain("imaponly@example.org", "wrong").text,
                         "5.7.8 Authentication credentials invalid")

    # --- rehash ------------------------------------------------------------------------------

    def stored_hash(self, address):
        db = sqlite3.connect(os.path.join(self.server.datadir, "directory.sqlite"))
        try:
            return db.execute("SELECT password FROM users WHERE address = ?", (address,)).fetchone()[0]
        finally:
            db.close()

    def test_rehash_on_login(self):
        self.assertTrue(self.stored_hash("old@example.org").startswith("{BLF-CRYPT}"))
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        self.addCleanup(imap.logout)
        self.assertEqual(imap.login("old@example.org", PASSWORDS["old@example.org"])[0], "OK")
        new = wait_for(lambda: self.stored_hash("old@example.org").startswith("{ARGON2ID}"))
        self.assertTrue(new, self.stored_hash("old@example.org"))
        self.assertEqual([line for line in self.server.read_log().splitlines()
                          if "directory rehash user=old@example.org" in line][0].split("] ", 1)[1],
                         "directory rehash user=old@example.org from=BLF-CRYPT to=ARGON2ID")
        # the new hash works
        pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=10)
        self.addCleanup(pop.close)
        pop.user("old@example.org")
        self.assertTrue(pop.pass_(PASSWORDS["old@example.org"]).startswith(b"+OK"))


class CacheTests(TestCase):
    """[directory] cache_ttl = 1h, negative_cache_ttl = 0: a known answer stays for the TTL,
    an unknown one is asked again each time. One process ([jdmail] workers = 1): each
    worker process has a cache of its own, and these checks follow one cache."""

    def setUp(self):
        def setup(s):
            d = SQLiteBackend(os.path.join(s.datadir, "directory.sqlite"))
            d.add_domain("example.org")
            d.add_user("bob@example.org", "{PLAIN}pw")
            d.add_alias("info@example.org", ["bob@example.org"])
            d.close()
        self.server = start_server({"directory": {"cache_ttl": "1h", "negative_cache_ttl": "0"},
                                    "jdmail": {"workers": "1"}}, "", setup)
        self.addCleanup(self.server.stop)

    def rcpt(self, address):
        c = RawSMTP(self.server.ports["smtp"])
        try:
            c.ehlo()
            c.cmd("MAIL FROM:<x@elsewhere.test>")
            return c.cmd(f"RCPT TO:<{address}>").code
        finally:
            c.close()

    async def test_ttl(self):
        self.assertEqual(await deferToThread(self.rcpt, "info@example.org"), 250)
        self.server.ctl("alias", "remove", "info@example.org")
        # cached for an hour: the removed alias still accepts mail
        self.assertEqual(await deferToThread(self.rcpt, "info@example.org"), 250)
        # no negative caching: a new alias counts at once
        self.assertEqual(await deferToThread(self.rcpt, "sales@example.org"), 550)
        self.server.ctl("alias", "add", "sales@example.org", "bob@example.org")
        self.assertEqual(await deferToThread(self.rcpt, "sales@example.org"), 250)


class HashSchemeTests(TestCase):
    """Users whose hashes came from another system (written into directory.sqlite as an
    import would) log in over POP3 and IMAP with every scheme jdmail verifies."""

    def test_login_with_every_hash_scheme(self):
        from tests.e2e.test_mysql_e2e import hashes
        users = {scheme: f"{scheme.lower()}@example.org" for scheme in hashes("pw-x")}

        def setup(s):
            d = SQLiteBackend(os.path.join(s.datadir, "directory.sqlite"))
            d.add_domain("example.org")
            for scheme, stored in hashes("pw-x").items():
                d.add_user(users[scheme], stored)
            d.close()
        server = start_server({}, "", setup)
        self.addCleanup(server.stop)
        for scheme, address in users.items():
            for password, ok in (("pw-x", True), ("pw-y", False)):
                imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=unverified_context())
                try:
                    if ok:
                        self.assertEqual(imap.login(address, password)[0], "OK", scheme)
                    else:
                        with self.assertRaises(imaplib.IMAP4.error, msg=scheme):
                            imap.login(address, password)
                finally:
                    imap.shutdown()
                pop = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=unverified_context(), timeout=10)
                try:
                    pop.user(address)
                    if ok:
                        self.assertTrue(pop.pass_(password).startswith(b"+OK"), scheme)
                    else:
                        with self.assertRaises(poplib.error_proto, msg=scheme):
                            pop.pass_(password)
                finally:
                    pop.close()
        self.assertNotIn("pw-x", server.read_log())
