"""The README's "first mail in five minutes", done as a newcomer would: jdmailctl to
add a domain and users, swaks to send to the MX port, poplib (STLS and POP3S) and
curl to read; aliases, catch-all and domain alias; jdmailctl's one-line errors;
UIDLs that survive a restart."""

import os
import poplib
import ssl
import subprocess
import uuid

from twisted.trial import unittest

from tests.fixtures.server import JdmailServer

BOB, BOB_PASSWORD = "bob@example.org", "correct horse"
CAROL, CAROL_PASSWORD = "carol@example.org", "battery staple"


def unverified():
    return ssl._create_unverified_context()


class NewcomerTestCase(unittest.TestCase):

    def setUp(self):
        self.server = JdmailServer()
        self.server.write_ini()
        self.addCleanup(self.server.stop)

    def ctl(self, *args, input=None):
        return self.server.ctl(*args, check=False, input=input)

    def assertCtlOk(self, p, stdout):
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, stdout, ""))

    def provision(self):
        self.assertCtlOk(self.ctl("domain", "add", "example.org"), "added domain example.org\n")
        self.assertCtlOk(self.ctl("user", "add", BOB, "--password", BOB_PASSWORD), f"added user {BOB}\n")
        # no --password: one line from stdin, as in `echo pw | jdmailctl user add …`
        self.assertCtlOk(self.ctl("user", "add", CAROL, input=CAROL_PASSWORD + "\n"), f"added user {CAROL}\n")

    def swaks(self, to, subject, body="Hello from swaks."):
        p = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.server.ports['smtp']}", "--from", "alice@elsewhere.test",
             "--to", to, "--helo", "client.elsewhere.test", "--header", f"Subject: {subject}",
             "--body", body, "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"\n<-  250 2\.0\.0 Ok: queued as \w+\n")
        return p

    def pop3_stls(self, user, password):
        c = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.addCleanup(c.close)
        self.assertEqual(c.stls(unverified()), b"+OK Begin TLS negotiation")
        self.assertEqual(c.user(user), b"+OK")
        self.assertTrue(c.pass_(password).startswith(b"+OK Logged in"))
        return c

    def subjects(self, address):
        out = []
        for path in self.server.messages(address):
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith(b"Subject: "):
                        out.append(line[9:].strip().decode())
                        break
        return out


class FirstMailTests(NewcomerTestCase):

    def test_send_with_swaks_read_with_poplib_and_curl(self):
        self.provision()
        self.server.start()
        subject = f"first mail {uuid.uuid4().hex[:8]}"
        self.swaks(BOB, subject, "It works.")
        self.assertEqual(self.subjects(BOB), [subject])

        # poplib, USER/PASS after STLS
        c = self.pop3_stls(BOB, BOB_PASSWORD)
        self.assertEqual(c.stat()[0], 1)
        resp, lines, _octets = c.retr(1)
        self.assertTrue(resp.startswith(b"+OK"))
        self.assertIn(f"Subject: {subject}".encode(), lines)
        self.assertIn(b"It works.", lines)
        self.assertIn(b"Delivered-To: bob@example.org", lines)
        self.assertEqual(c.quit(), b"+OK Logging out")

        # poplib over POP3S
        s = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified(), timeout=30)
        self.addCleanup(s.close)
        self.assertEqual(s.user(BOB), b"+OK")
        self.assertTrue(s.pass_(BOB_PASSWORD).startswith(b"+OK"))
        self.assertIn(f"Subject: {subject}".encode(), s.retr(1)[1])
        s.quit()

        # curl, as the README shows it
        p = subprocess.run(["curl", "-sS", "-k", "--ssl-reqd", "--max-time", "30", "--user",
                            f"{BOB}:{BOB_PASSWORD}", f"pop3://127.0.0.1:{self.server.ports['pop3']}/1"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"Subject: {subject}\r\n".encode(), p.stdout)
        self.assertIn(b"\r\n\r\nIt works.\r\n", p.stdout)

    def test_password_from_stdin_logs_in(self):
        self.provision()
        self.server.start()
        self.swaks(CAROL, "for carol")
        c = self.pop3_stls(CAROL, CAROL_PASSWORD)
        self.assertEqual(c.stat()[0], 1)
        c.quit()
        bad = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.addCleanup(bad.close)
        bad.stls(unverified())
        bad.user(CAROL)
        with self.assertRaises(poplib.error_proto) as cm:
            bad.pass_(CAROL_PASSWORD.split()[0])
        self.assertEqual(cm.exception.args[0], b"-ERR [AUTH] Authentication failed")

    def test_aliases_catch_all_and_domain_alias(self):
        self.provision()
        self.assertCtlOk(self.ctl("alias", "add", "postmaster@example.org", BOB),
                         f"added alias postmaster@example.org -> {BOB}\n")
        self.assertCtlOk(self.ctl("alias", "add", "*@example.org", CAROL),
                         f"added alias *@example.org -> {CAROL}\n")
        self.assertCtlOk(self.ctl("alias", "add", "@example.net", "@example.org"),
                         "added alias @example.net -> @example.org\n")
        self.assertCtlOk(self.ctl("alias", "list"),
                         f"*@example.org {CAROL}\n@example.net @example.org\npostmaster@example.org {BOB}\n")
        self.server.start()
        self.swaks("postmaster@example.org", "to postmaster")
        self.swaks("nobody-in-particular@example.org", "to anyone")
        self.swaks("bob@example.net", "to bob via the domain alias")
        self.swaks("whoever@example.net", "to the catch-all via the domain alias")
        self.swaks("BOB@Example.ORG", "to bob in capitals")
        self.assertEqual(sorted(self.subjects(BOB)),
                         ["to bob in capitals", "to bob via the domain alias", "to postmaster"])
        self.assertEqual(sorted(self.subjects(CAROL)),
                         ["to anyone", "to the catch-all via the domain alias"])
        # An alias added while the server runs works at once.
        self.assertCtlOk(self.ctl("alias", "add", "sales@example.org", BOB, CAROL),
                         f"added alias sales@example.org -> {BOB}, {CAROL}\n")
        self.swaks("sales@example.org", "to sales")
        self.assertIn("to sales", self.subjects(BOB))
        self.assertIn("to sales", self.subjects(CAROL))

    def test_unknown_user_without_catch_all(self):
        self.provision()
        self.server.start()
        p = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.server.ports['smtp']}", "--from", "alice@elsewhere.test",
             "--to", "nobody@example.org", "--timeout", "30"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("<** 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown", p.stdout)
        self.assertEqual(self.server.messages(BOB), [])


class CtlErrorTests(NewcomerTestCase):
    """jdmailctl refusals: one line on stderr, exit status not 0, nothing on stdout."""

    def assertRefused(self, p, line):
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(p.stdout, "")
        self.assertNotIn("Traceback", p.stderr)
        self.assertEqual(p.stderr.splitlines(), [line])

    def test_errors(self):
        self.provision()
        self.assertRefused(self.ctl("user", "add", "dave@unknown.test", "--password", "x"),
                           "jdmailctl: unknown.test is not a local domain; add it first")
        self.assertRefused(self.ctl("user", "add", BOB, "--password", "x"),
                           f"jdmailctl: {BOB} is already a user")
        p = self.ctl("user", "add", "not an address", "--password", "x")
        self.assertRefused(p, p.stderr.rstrip("\n"))
        self.assertTrue(p.stderr.startswith("jdmailctl: bad address: 'not an address' is not of the form local-part@domain"), p.stderr)
        self.assertRefused(self.ctl("domain", "add", "example.org"),
                           "jdmailctl: example.org is already a local domain")
        self.assertRefused(self.ctl("alias", "add", "x@unknown.test", BOB),
                           "jdmailctl: unknown.test is not a local domain; add it first")
        p = self.ctl("user", "list")
        self.assertCtlOk(p, f"{BOB} 0 enabled\n{CAROL} 0 enabled\n")

    def test_broken_config_is_one_line(self):
        with open(self.server.ini, "a") as f:
            f.write("[filters]\ntimeout = soon\n")
        p = self.ctl("domain", "list")
        self.assertEqual(p.returncode, 2)
        self.assertEqual(p.stderr, f"jdmailctl: {self.server.ini}: [filters] timeout 'soon': expected a "
                                   "duration with a unit, such as 500ms, 30s, 5m, 1h or 2d\n")


class RestartTests(NewcomerTestCase):

    def uidl(self):
        c = self.pop3_stls(BOB, BOB_PASSWORD)
        resp, lines, _ = c.uidl()
        self.assertEqual(resp, b"+OK")
        c.quit()
        return lines

    def test_uidls_survive_restart(self):
        self.provision()
        self.server.start()
        for n in range(3):
            self.swaks(BOB, f"message {n}")
        c = self.pop3_stls(BOB, BOB_PASSWORD)
        c.retr(1)          # read and keep one; the rest stays unread
        c.quit()
        before = self.uidl()
        self.assertEqual(len(before), 3)
        self.server.stop()
        # a clean stop says so: no listening.json naming ports nobody listens on
        self.assertFalse(os.path.exists(os.path.join(self.server.datadir, "run", "listening.json")))
        self.server.start()
        self.assertEqual(self.uidl(), before)
        self.assertEqual(sorted(self.subjects(BOB)), ["message 0", "message 1", "message 2"])
        # spool/incoming is empty after a clean stop and start
        self.assertEqual(os.listdir(os.path.join(self.server.datadir, "spool", "incoming")), [])
