"""jdmail with [directory] type = ldap end to end: a real twistd jdmail whose users
live in a real, private slapd (tests/fixtures/ldap.py), real clients (smtplib,
poplib, imaplib). OpenLDAP and Active Directory presets, groups, logins, LDAP
injection through the protocols, a disabled account, quotas and protocol switches from
LDAP attributes, jdmailctl refusing changes but showing users (quota, usage), domains
and groups, and slapd killed under a running server (tempfail, then recovery without a
restart)."""

import atexit
import os
import imaplib
import poplib
import smtplib
import time

from twisted.trial.unittest import TestCase

from tests.e2e import files_with, log_lines, message, token, unverified_context, wait_for
from tests.fixtures.ldap import PASSWORDS, SERVICE_DN, SUFFIX, SlapdServer, seed_ldif, ssha
from tests.fixtures.server import JdmailServer

_shared = {}


def shared_slapd():
    """One slapd for the module's read-only tests (the down test has its own)."""
    if "slapd" not in _shared:
        slapd = SlapdServer(seed_ldif())
        slapd.start()
        atexit.register(slapd.stop)
        _shared["slapd"] = slapd
    return _shared["slapd"]


def ldap_section(slapd, **keys):
    section = {"type": "ldap", "uri": slapd.uri, "start_tls": "yes", "ca_file": slapd.ca_file,
               "bind_dn": SERVICE_DN, "bind_password": PASSWORDS["service"], "base_dn": SUFFIX,
               "domains": "example.org", "timeout": "3s"}
    section.update(keys)
    return section


def shared_jdmail(name, slapd, **keys):
    """A jdmail server per configuration, started on first use, stopped at exit."""
    server = _shared.get(name)
    if server is None or server.proc.poll() is not None:
        server = JdmailServer(overrides={"directory": ldap_section(slapd, **keys)})
        server.start()
        atexit.register(server.stop)
        _shared[name] = server
    return server


def maildir_usage(maildir):
    """(bytes, messages) of the files in a Maildir's new/ and cur/, its folders included."""
    size = count = 0
    for top, dirs, files in os.walk(maildir):
        if os.path.basename(top) in ("new", "cur"):
            for name in files:
                size += os.path.getsize(os.path.join(top, name))
                count += 1
    return size, count


class Clients:
    """Small blocking client helpers against ``self.server``."""

    def smtp(self):
        c = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=10)
        self.addCleanup(self._quit, c)
        c.ehlo("client.test")
        return c

    @staticmethod
    def _quit(c):
        try:
            c.quit()
        except (smtplib.SMTPException, OSError):
            pass

    def send(self, rcpts, tok):
        c = self.smtp()
        return c.sendmail("sender@remote.test", rcpts, message(tok))

    def stored_for(self, tok, mailbox_address):
        """Wait until a message with ``tok`` is in the Maildir of ``mailbox_address``."""
        maildir = self.server.maildir(mailbox_address)
        self.assertTrue(wait_for(lambda: any(maildir in p for p in files_with(self.server, tok))),
                        f"{tok} not delivered to {mailbox_address}")
        return [p for p in files_with(self.server, tok) if maildir in p]

    def imap_login(self, user, password):
        """imaplib over IMAPS: ('OK', ...) or the NO text as bytes."""
        c = imaplib.IMAP4_SSL("127.0.0.1", self.server.ports["imaps"], ssl_context=unverified_context(),
                              timeout=10)
        self.addCleanup(self._logout, c)
        quoted = '"' + user.replace("\\", "\\\\").replace('"', '\\"') + '"'   # imaplib sends it raw
        try:
            return c.login(quoted, password)[0], c
        except imaplib.IMAP4.error as e:
            return str(e), c

    @staticmethod
    def _logout(c):
        try:
            c.logout()
        except Exception:               # already logged out, or the server closed it
            pass

    def pop3_login(self, user, password):
        c = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified_context(),
                            timeout=10)
        self.addCleanup(self._pop_quit, c)
        try:
            c.user(user)
            return c.pass_(password), c
        except poplib.error_proto as e:
            return e.args[0], c

    @staticmethod
    def _pop_quit(c):
        try:
            c.quit()
        except Exception:
            pass


class OpenLDAPTests(Clients, TestCase):
    """schema = openldap over StartTLS, bind as the user's DN from a template, with
    iRedMail-style quota and account status; nisMailAlias aliases, example.net's
    catch-all and the domain alias alias.example of example.org."""

    def setUp(self):
        self.slapd = shared_slapd()
        self.server = shared_jdmail("openldap", self.slapd, quota_attribute="mailQuota",
                                    enabled_attribute="accountStatus", auth="bind",
                                    user_dn_template=f"uid={{local}},ou=people,{SUFFIX}",
                                    domains="example.org, example.net",
                                    domain_aliases="alias.example=example.org")

    def smtp_auth(self, user, password):
        """(code, text) of AUTH PLAIN on the submission port after STARTTLS."""
        c = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=10)
        self.addCleanup(self._quit, c)
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.user, c.password = user, password
        try:
            return c.auth("PLAIN", c.auth_plain)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error

    def test_smtp_auth(self):
        self.assertEqual(self.smtp_auth("bob@example.org", PASSWORDS["bob"]),
                         (235, b"2.7.0 Authentication successful"))
        for user in ("*", "admin*)(|(mail=*", "bob@example.org)(|(mail=*"):
            code, _ = self.smtp_auth(user, PASSWORDS["bob"])
            self.assertEqual(code, 535, user)

    def test_smtp_to_a_user_and_read_it_over_pop3_and_imap(self):
        tok = token()
        self.assertEqual(self.send(["bob@example.org"], tok), {})
        self.stored_for(tok, "bob@example.org")
        reply, c = self.pop3_login("bob@example.org", PASSWORDS["bob"])
        self.assertTrue(reply.startswith(b"+OK"), reply)
        bodies = [b"\r\n".join(c.retr(i)[1]) for i in range(1, len(c.list()[1]) + 1)]
        self.assertTrue(any(tok.encode() in b for b in bodies), f"{tok} not found over POP3")
        status, c = self.imap_login("bob@example.org", PASSWORDS["bob"])
        self.assertEqual(status, "OK")
        self.assertEqual(c.select("INBOX")[0], "OK")
        typ, hits = c.search(None, "SUBJECT", tok)
        self.assertEqual(typ, "OK")
        self.assertEqual(len(hits[0].split()), 1, f"{tok} not found once over IMAP")

    def test_smtp_to_an_alternate_address(self):
        tok = token()
        self.assertEqual(self.send(["Robert@Example.org"], tok), {})
        self.stored_for(tok, "bob@example.org")

    def test_smtp_to_a_group(self):
        tok = token()
        self.assertEqual(self.send(["team@example.org"], tok), {})
        self.stored_for(tok, "bob@example.org")
        self.stored_for(tok, "alice@example.org")

    def test_smtp_to_an_ldap_alias(self):
        tok = token()
        self.assertEqual(self.send(["info@example.org"], tok), {})
        self.assertEqual(len(self.stored_for(tok, "bob@example.org")), 1)

    def test_smtp_to_a_catch_all(self):
        tok = token()
        self.assertEqual(self.send(["whoever@example.net"], tok), {})
        self.stored_for(tok, "alice@example.org")

    def test_smtp_to_a_domain_alias(self):
        tok = token()
        self.assertEqual(self.send(["bob@alias.example", "info@Alias.Example"], tok), {})
        self.assertEqual(len(self.stored_for(tok, "bob@example.org")), 1)   # one copy for both
        c = self.smtp()
        c.mail("sender@remote.test")
        code, text = c.rcpt("nobody@alias.example")
        self.assertEqual(code, 550, text)

    def test_unknown_recipient_550(self):
        c = self.smtp()
        c.mail("sender@remote.test")
        code, text = c.rcpt("nobody@example.org")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith(b"5.1.1"), text)

    def test_injection_in_recipients_matches_nobody(self):
        c = self.smtp()
        c.mail("sender@remote.test")
        for rcpt in ("*@example.org", "b*@example.org", '"admin*)(|(mail=*"@example.org',
                     '")(uid=*"@example.org', '"\\\\2a"@example.org', '"*)(objectClass=*"@example.org'):
            code, text = c.rcpt(rcpt)
            self.assertEqual(code, 550, (rcpt, text))

    def test_login_with_alternate_address(self):
        status, _ = self.imap_login("robert@example.org", PASSWORDS["bob"])
        self.assertEqual(status, "OK")

    def test_wrong_password_and_injection_never_log_in(self):
        attempts = [("bob@example.org", "wrong"), ("bob@example.org", "")]
        for user in ("*", "*@example.org", ")(uid=*", "admin*)(|(mail=*", "admin*)(|(mail=*@example.org",
                     "\\2a", "bob@example.org)(|(mail=*", "bob*", "bob@example.org\x00",
                     f"uid=bob,ou=people,{SUFFIX}", "bob"):
            attempts += [(user, PASSWORDS["bob"]), (user, PASSWORDS["admin"])]
        for user, password in attempts:
            if "\x00" not in user and password:
                status, c = self.imap_login(user, password)
                self._logout(c)                 # at most 10 connections per client IP
                self.assertIn("AUTHENTICATIONFAILED", status, (user, password))
            reply, c = self.pop3_login(user, password or "x")
            self._pop_quit(c)
            if "\x00" in user:
                self.assertEqual(reply, b"-ERR Invalid characters in command")
            else:
                self.assertEqual(reply, b"-ERR [AUTH] Authentication failed", user)

    def test_disabled_account_cannot_log_in(self):
        status, _ = self.imap_login("dave@example.org", PASSWORDS["dave"])
        self.assertIn("[AUTHENTICATIONFAILED]", status)
        reply, _ = self.pop3_login("dave@example.org", PASSWORDS["dave"])
        self.assertEqual(reply, b"-ERR [AUTH] Authentication failed")
        self.assertTrue(log_lines(self.server, "user=dave@example.org"), "no login line for dave")
        self.assertTrue(all("account disabled" in line for line in log_lines(self.server, "user=dave@example.org")))
        status, _ = self.imap_login("alice@example.org", PASSWORDS["alice"])     # accountStatus: active
        self.assertEqual(status, "OK")

    def test_jdmailctl_refuses_changes(self):
        for args in (("domain", "add", "example.net"), ("user", "list"),
                     ("alias", "add", "x@example.org", "bob@example.org"),
                     ("user", "set", "bob@example.org", "--quota", "1M")):
            p = self.server.ctl(*args, check=False)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertEqual(p.stderr, "jdmailctl: the 'ldap' directory cannot be changed with jdmailctl; "
                                       "it is managed with LDAP tools (ldapadd/ldapmodify, Active "
                                       "Directory Users and Computers)\n")

    def test_jdmailctl_user_show_gives_quota_and_usage(self):
        tok = token()
        self.assertEqual(self.send(["Robert@Example.org"], tok), {})
        self.stored_for(tok, "bob@example.org")
        size, count = maildir_usage(self.server.maildir("bob@example.org"))
        self.assertGreater(count, 0)
        p = self.server.ctl("user", "show", "robert@example.org")        # an alternate address
        self.assertEqual((p.returncode, p.stderr), (0, ""))
        self.assertEqual(p.stdout, "address: bob@example.org\nenabled: yes\nprotocols: imap, pop3, smtp\n"
                                   "quota: 10485760 bytes (the user's own)\nquota_messages: none\n"
                                   f"usage: {size} bytes, {count} messages\nforward: none\n"
                                   "mailbox: example.org/bob\n")
        p = self.server.ctl("user", "show", "dave@example.org")
        self.assertIn("enabled: no\n", p.stdout)
        p = self.server.ctl("user", "show", "*)(uid=*@example.org", check=False)
        self.assertEqual((p.returncode, p.stdout, p.stderr),
                         (1, "", "jdmailctl: *)(uid=*@example.org is not a user\n"))

    def test_jdmailctl_domain_and_group_show(self):
        for args, out in ((("domain", "show", "Example.ORG"),
                           "domain: example.org\ndefault quota: none\ndefault quota_messages: none\n"),
                          (("domain", "show", "alias.example"), "domain: alias.example\nalias of: example.org\n"),
                          (("group", "show", "team@example.org"),
                           "group: team@example.org\nposting: anyone\nmember: bob@example.org\n"
                           "member: alice@example.org\n")):
            p = self.server.ctl(*args)
            self.assertEqual((p.stdout, p.stderr), (out, ""), args)
        p = self.server.ctl("domain", "show", "other.test", check=False)
        self.assertEqual((p.returncode, p.stderr), (1, "jdmailctl: other.test is not a local domain\n"))


class ActiveDirectoryTests(Clients, TestCase):
    """schema = activedirectory over ldaps, against the stand-in AD schema."""

    def setUp(self):
        self.slapd = shared_slapd()
        self.server = shared_jdmail("ad", self.slapd, uri=self.slapd.ldaps_uri, start_tls="no",
                                    schema="activedirectory", base_dn=f"ou=ad,{SUFFIX}",
                                    domains="example.com")

    def test_login_with_the_upn_and_mail_to_proxy_addresses(self):
        tok = token()
        self.assertEqual(self.send(["carol@example.com"], tok), {})
        self.stored_for(tok, "carol.jones@example.com")       # the SMTP: proxy address is the mailbox
        status, c = self.imap_login("carol@corp.example.com", PASSWORDS["carol"])
        self.assertEqual(status, "OK")
        c.select("INBOX")
        typ, hits = c.search(None, "SUBJECT", tok)
        self.assertTrue(hits[0].split(), f"{tok} not found over IMAP")

    def test_jdmailctl_user_show_by_upn(self):
        tok = token()
        self.assertEqual(self.send(["carol@example.com"], tok), {})
        self.stored_for(tok, "carol.jones@example.com")
        size, count = maildir_usage(self.server.maildir("carol.jones@example.com"))
        p = self.server.ctl("user", "show", "carol@corp.example.com")
        self.assertEqual(p.stderr, "")
        self.assertIn("address: carol.jones@example.com\n", p.stdout)
        self.assertIn(f"usage: {size} bytes, {count} messages\n", p.stdout)

    def test_group_from_memberof(self):
        tok = token()
        self.assertEqual(self.send(["sales@example.com"], tok), {})
        for address in ("carol.jones@example.com", "erin@example.com", "frank@example.com"):
            self.stored_for(tok, address)

    def test_account_disabled_bit(self):
        status, _ = self.imap_login("erin@example.com", PASSWORDS["erin"])
        self.assertIn("[AUTHENTICATIONFAILED]", status)
        self.assertTrue(log_lines(self.server, "account disabled"))
        status, _ = self.imap_login("frank@example.com", PASSWORDS["frank"])
        self.assertEqual(status, "OK")


class AccountFeatureTests(Clients, TestCase):
    """Quotas (mailQuota, a message-count attribute, the domain default), protocol
    switches (enabledService) and a members-only group from LDAP, on users added for the
    test with ldapmodify."""

    def setUp(self):
        self.slapd = shared_slapd()
        # employeeNumber stands in for a message-count attribute (the fixture's schema has none)
        self.server = shared_jdmail("features", self.slapd, quota_attribute="mailQuota",
                                    quota_messages_attribute="employeeNumber", default_quota_messages="5",
                                    protocols_attribute="enabledService", group_members_only="yes",
                                    group_senders_attribute="description")
        self.uid = f"quinn{time.monotonic_ns()}"
        self.address = f"{self.uid}@example.org"
        self.slapd.modify(f"""
            dn: uid={self.uid},ou=people,{SUFFIX}
            changetype: add
            objectClass: inetOrgPerson
            objectClass: mailUser
            uid: {self.uid}
            cn: Quinn
            sn: Quinn
            mail: {self.address}
            mailQuota: 2000
            enabledService: imap
            enabledService: smtp
            userPassword: {ssha("quinn-pw")}
            """)

    def test_storage_quota_and_protocol_switches(self):
        tok = token()
        c = self.smtp()
        self.assertEqual(c.sendmail("sender@remote.test", [self.address], message(tok, body="x" * 900 + "\r\n")), {})
        self.stored_for(tok, self.address)
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:     # SIZE=~1 kB: over 2000 bytes
            self.smtp().sendmail("sender@remote.test", [self.address], message(token(), body="x" * 900 + "\r\n"))
        self.assertEqual(cm.exception.recipients,
                         {self.address: (452, f"4.2.2 <{self.address}>: Mailbox full".encode())})
        size, count = maildir_usage(self.server.maildir(self.address))
        self.assertEqual(count, 1)
        show = self.server.ctl("user", "show", self.address).stdout
        self.assertIn("protocols: imap, smtp\nquota: 2000 bytes (the user's own)\n", show)
        self.assertIn(f"usage: {size} bytes, 1 messages\n", show)
        self.assertEqual(self.imap_login(self.address, "quinn-pw")[0], "OK")
        reply, _ = self.pop3_login(self.address, "quinn-pw")
        self.assertEqual(reply, b"-ERR [AUTH] POP3 access is disabled for this account")
        self.assertIn("quota_messages: 5 messages (domain default)\n", show)

    def test_members_only_group(self):
        c = self.smtp()
        c.mail("eve@remote.test")
        self.assertEqual(c.rcpt("team@example.org"),
                         (550, b"5.7.1 <team@example.org>: Recipient address rejected: you may not post to "
                               b"this group"))
        c.rset()
        for sender in ("alice@example.org", "Robert@example.org", "someone@partner.example"):
            tok = token()       # a member, a member's alternate address, a listed sender domain
            self.assertEqual(self.smtp().sendmail(sender, ["team@example.org"], message(tok)), {}, sender)
            self.stored_for(tok, "bob@example.org")

    def test_message_count_quota(self):
        address = f"rosa{time.monotonic_ns()}@example.org"
        self.slapd.modify(f"""
            dn: uid={address.split("@")[0]},ou=people,{SUFFIX}
            changetype: add
            objectClass: inetOrgPerson
            uid: {address.split("@")[0]}
            cn: Rosa
            sn: Rosa
            mail: {address}
            employeeNumber: 1
            userPassword: {ssha("rosa-pw")}
            """)
        self.assertEqual(self.smtp().sendmail("sender@remote.test", [address], message(token())), {})
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
            self.smtp().sendmail("sender@remote.test", [address], message(token()))
        self.assertEqual(cm.exception.recipients, {address: (452, f"4.2.2 <{address}>: Mailbox full".encode())})
        show = self.server.ctl("user", "show", address).stdout
        self.assertIn("quota: none\nquota_messages: 1 messages (the user's own)\n", show)
        self.assertRegex(show, r"usage: \d+ bytes, 1 messages\n")


class DirectoryDownTests(Clients, TestCase):
    """slapd killed under a running jdmail: temporary failures only, then it recovers."""

    def setUp(self):
        self.slapd = SlapdServer(seed_ldif())
        self.addCleanup(self.slapd.stop)
        self.slapd.start()
        section = ldap_section(self.slapd, cache_ttl="0", negative_cache_ttl="0")
        self.server = JdmailServer(overrides={"directory": section})
        self.server.start()
        self.addCleanup(self.server.stop)

    def test_killed_then_restarted(self):
        tok = token()
        self.assertEqual(self.send(["bob@example.org"], tok), {})
        self.slapd.kill()
        c = self.smtp()
        c.mail("sender@remote.test")
        code, text = c.rcpt("bob@example.org")
        self.assertEqual((code, text[:6]), (451, b"4.3.0 "), text)
        code, text = c.rcpt("nobody@example.org")
        self.assertEqual(code, 451, text)                     # never 550 while it cannot know
        status, _ = self.imap_login("bob@example.org", PASSWORDS["bob"])
        self.assertIn("[UNAVAILABLE]", status)
        reply, _ = self.pop3_login("bob@example.org", PASSWORDS["bob"])
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        p = self.server.ctl("user", "show", "bob@example.org", check=False)
        self.assertEqual((p.returncode, p.stdout), (1, ""))
        self.assertTrue(p.stderr.startswith("jdmailctl: the directory cannot answer now: "), p.stderr)
        self.assertNotIn("Traceback", p.stderr)

        self.slapd.start()                                     # same port, same data; jdmail untouched
        tok = token()
        self.assertEqual(self.send(["bob@example.org", "team@example.org"], tok), {})
        self.stored_for(tok, "alice@example.org")
        status, _ = self.imap_login("bob@example.org", PASSWORDS["bob"])
        self.assertEqual(status, "OK")
        reply, _ = self.pop3_login("bob@example.org", PASSWORDS["bob"])
        self.assertTrue(reply.startswith(b"+OK"), reply)
