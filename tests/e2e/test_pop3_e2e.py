"""POP3 against the real server with Python's poplib: capabilities around STLS,
plaintext refused before TLS, every transaction command with its exact reply,
a big message with '.'-leading lines returned byte for byte, slowed and limited
failed logins, the configured banner, the per-IP connection limit."""

import base64
import os
import poplib
import smtplib
import socket
import ssl
import time

from twisted.trial import unittest

from tests.fixtures.server import running_server

BOB, PASSWORD = "bob@example.org", "secret"
REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secured connection; use STLS"
BEFORE_TLS = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"STLS", b"IMPLEMENTATION jdmail"]
AFTER_TLS = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"USER", b"SASL PLAIN",
             b"IMPLEMENTATION jdmail"]
LOGGED_IN = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION jdmail"]


def unverified():
    return ssl._create_unverified_context()


def send(server, data, to=BOB):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("alice@elsewhere.test", [to], data)


def capa(client):
    """The CAPA lines, exactly as sent."""
    resp, lines, _ = client._longcmd("CAPA")
    assert resp == b"+OK Capability list follows", resp
    return lines


def stored(server):
    """{uidl: bytes} of the user's Maildir files."""
    out = {}
    for path in server.messages(BOB):
        with open(path, "rb") as f:
            out[os.path.basename(path).split(":")[0]] = f.read()
    return out


class POP3TestCase(unittest.TestCase):
    overrides = {}

    def setUp(self):
        self.server = running_server(self, overrides=self.overrides)

    def connect(self, tls=True, login=True):
        c = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.addCleanup(c.close)
        if tls:
            self.assertEqual(c.stls(unverified()), b"+OK Begin TLS negotiation")
        if login:
            self.assertEqual(c.user(BOB), b"+OK")
            self.assertTrue(c.pass_(PASSWORD).startswith(b"+OK Logged in, "))
        return c

    def assertErr(self, call, *args, reply):
        with self.assertRaises(poplib.error_proto) as cm:
            call(*args)
        self.assertEqual(cm.exception.args[0], reply)


class CapabilityTests(POP3TestCase):

    def test_capa_before_and_after_stls(self):
        c = self.connect(tls=False, login=False)
        self.assertEqual(c.getwelcome(), b"+OK jdmail POP3 Service ready")
        self.assertEqual(capa(c), BEFORE_TLS)
        self.assertEqual(c.stls(unverified()), b"+OK Begin TLS negotiation")
        self.assertEqual(capa(c), AFTER_TLS)
        self.assertEqual(c.user(BOB), b"+OK")
        self.assertEqual(c.pass_(PASSWORD), b"+OK Logged in, 0 messages")
        self.assertEqual(capa(c), LOGGED_IN)
        self.assertEqual(c.quit(), b"+OK Logging out")

    def test_pop3s_capa_has_no_stls(self):
        c = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified(), timeout=30)
        self.addCleanup(c.close)
        self.assertEqual(c.getwelcome(), b"+OK jdmail POP3 Service ready")
        self.assertEqual(capa(c), [line for line in AFTER_TLS])
        self.assertErr(c._shortcmd, "STLS", reply=b"-ERR Command not permitted when TLS active")
        self.assertEqual(c.user(BOB), b"+OK")
        self.assertEqual(c.pass_(PASSWORD), b"+OK Logged in, 0 messages")

    def test_plaintext_refused_before_stls(self):
        c = self.connect(tls=False, login=False)
        self.assertErr(c.user, BOB, reply=REFUSED)
        self.assertErr(c.pass_, PASSWORD, reply=REFUSED)
        self.assertErr(c._shortcmd, "AUTH PLAIN " + base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode(),
                       reply=REFUSED)
        self.assertErr(c.stat, reply=b"-ERR Not logged in")
        # the same connection, after STLS, may log in
        c.stls(unverified())
        self.assertEqual(c.user(BOB), b"+OK")
        self.assertEqual(c.pass_(PASSWORD), b"+OK Logged in, 0 messages")
        log = self.server.read_log()
        self.assertIn("pop3 login user=bob@example.org client=127.0.0.1 mech=USER tls=yes result=ok", log)
        self.assertNotIn(PASSWORD, log.replace("password", ""))

    def test_auth_plain_after_stls(self):
        c = self.connect(login=False)
        token = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
        self.assertEqual(c._shortcmd("AUTH PLAIN " + token), b"+OK Logged in, 0 messages")


class TransactionTests(POP3TestCase):

    def setUp(self):
        super().setUp()
        self.bodies = [b"Subject: one\r\n\r\nfirst body\r\n",
                       b"Subject: two\r\nX-Extra: yes\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
                       b"Subject: three\r\n\r\n" + b"third\r\n" * 50]
        for data in self.bodies:
            send(self.server, data)
        self.files = stored(self.server)
        self.assertEqual(len(self.files), 3)
        # in delivery order (POP3 lists the oldest first)
        self.keys = [next(k for k, v in self.files.items() if v.endswith(b)) for b in self.bodies]
        self.sizes = [len(self.files[k]) for k in self.keys]

    def test_stat_list_uidl(self):
        c = self.connect()
        total = sum(self.sizes)
        self.assertEqual(c._shortcmd("STAT"), f"+OK 3 {total}".encode())
        self.assertEqual(c.list(), (f"+OK 3 messages ({total} octets)".encode(),
                                    [f"{n} {s}".encode() for n, s in enumerate(self.sizes, 1)],
                                    sum(len(f"{n} {s}") + 2 for n, s in enumerate(self.sizes, 1))))
        self.assertEqual(c.list(2), f"+OK 2 {self.sizes[1]}".encode())
        self.assertErr(c.list, 4, reply=b"-ERR no such message")
        self.assertErr(c.list, 0, reply=b"-ERR no such message")
        resp, lines, _ = c.uidl()
        self.assertEqual(resp, b"+OK")
        self.assertEqual(lines, [f"{n} {k}".encode() for n, k in enumerate(self.keys, 1)])
        self.assertEqual(c.uidl(3), f"+OK 3 {self.keys[2]}".encode())
        self.assertErr(c.uidl, 7, reply=b"-ERR no such message")
        self.assertEqual(c.noop(), b"+OK")

    def test_retr_and_top(self):
        c = self.connect()
        for n, key in enumerate(self.keys, 1):
            resp, lines, octets = c.retr(n)
            self.assertEqual(resp, f"+OK {self.sizes[n - 1]} octets".encode())
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", self.files[key])
            self.assertTrue(self.files[key].endswith(self.bodies[n - 1]))
        header = self.files[self.keys[1]].split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(c.top(2, 0), (b"+OK", header + [b""], sum(len(h) + 2 for h in header) + 2))
        self.assertEqual(c.top(2, 2)[1], header + [b"", b"line 1", b"line 2"])
        self.assertEqual(c.top(2, 100)[1], header + [b"", b"line 1", b"line 2", b"line 3"])
        self.assertErr(c.top, 9, 1, reply=b"-ERR no such message")
        self.assertErr(c._shortcmd, "TOP 1", reply=b"-ERR Syntax: TOP <message> <lines>")
        self.assertErr(c.retr, 4, reply=b"-ERR no such message")

    def test_dele_rset_quit_update(self):
        c = self.connect()
        self.assertEqual(c.dele(1), b"+OK message 1 deleted")
        self.assertErr(c.dele, 1, reply=b"-ERR no such message")
        self.assertErr(c.retr, 1, reply=b"-ERR no such message")
        rest = sum(self.sizes[1:])
        self.assertEqual(c._shortcmd("STAT"), f"+OK 2 {rest}".encode())
        self.assertEqual(c.list()[1], [f"{n} {s}".encode() for n, s in enumerate(self.sizes, 1)][1:])
        self.assertEqual(c.rset(), f"+OK 3 messages ({sum(self.sizes)} octets)".encode())
        self.assertEqual(c._shortcmd("STAT"), f"+OK 3 {sum(self.sizes)}".encode())
        self.assertEqual(c.dele(1), b"+OK message 1 deleted")
        self.assertEqual(c.dele(3), b"+OK message 3 deleted")
        # nothing is removed before QUIT
        self.assertEqual(len(stored(self.server)), 3)
        self.assertEqual(c.quit(), b"+OK Logging out, 2 messages deleted")
        self.assertEqual(sorted(stored(self.server)), [self.keys[1]])
        c2 = self.connect()
        self.assertEqual(c2._shortcmd("STAT"), f"+OK 1 {self.sizes[1]}".encode())
        self.assertEqual(c2.uidl(1), f"+OK 1 {self.keys[1]}".encode())

    def test_dropped_connection_deletes_nothing(self):
        c = self.connect()
        c.dele(1)
        c.dele(2)
        c.close()                 # no QUIT: no UPDATE state
        deadline = time.monotonic() + 5
        while True:
            c2 = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
            self.addCleanup(c2.close)
            c2.stls(unverified())
            c2.user(BOB)
            try:
                c2.pass_(PASSWORD)
                break
            except poplib.error_proto as e:
                # the old session may not be gone yet
                self.assertEqual(e.args[0], b"-ERR [IN-USE] Mailbox is locked by another session")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
        self.assertEqual(c2._shortcmd("STAT"), f"+OK 3 {sum(self.sizes)}".encode())
        self.assertEqual(len(stored(self.server)), 3)


class BigMessageTests(POP3TestCase):

    def test_100k_with_dot_lines_is_byte_identical(self):
        # '.'-leading lines everywhere, including right at and around every 16 KB boundary
        # of the stored file (where Twisted's per-chunk dot-stuffing ends a response early).
        lines, size = [], 0
        targets = {k * 16384 + d for k in range(1, 8) for d in (-3, -2, -1, 0, 1, 2)}
        n = 0
        while size < 100 * 1024:
            n += 1
            if any(size <= t < size + 80 for t in targets) or n % 37 == 0:
                line = [".", "..", ".x", ". dot space", "...", ".\t"][n % 6]
            else:
                line = f"line {n:05d} " + "abcdefghij" * (n % 7)
            lines.append(line)
            size += len(line) + 2
        body = ("\r\n".join(lines) + "\r\n").encode()
        data = b"Subject: big\r\nMessage-ID: <big@pop3.test>\r\n\r\n" + body
        send(self.server, data)
        (key, content), = stored(self.server).items()
        self.assertTrue(content.endswith(data), "the store changed the message")
        self.assertGreater(len(content), 100 * 1024)
        c = self.connect()
        resp, got, octets = c.retr(1)
        self.assertEqual(resp, f"+OK {len(content)} octets".encode())
        self.assertEqual(b"\r\n".join(got) + b"\r\n", content)
        # and on the wire: every '.'-leading line stuffed, exactly one terminator
        c.sock.sendall(b"RETR 1\r\n")
        wire = b""
        while not wire.endswith(b"\r\n.\r\n") or len(wire) < len(content):
            chunk = c.sock.recv(65536)
            self.assertTrue(chunk)
            wire += chunk
        head, _, rest = wire.partition(b"\r\n")
        self.assertEqual(head, f"+OK {len(content)} octets".encode())
        self.assertEqual(rest, b"\r\n".join(b"." + line if line.startswith(b".") else line
                                            for line in content.split(b"\r\n")[:-1]) + b"\r\n.\r\n")


class FailedLoginTests(POP3TestCase):
    overrides = {"auth": {"fail_delay": "400ms", "max_failures": "2"}}

    def test_failed_login_slowed_then_closed(self):
        c = self.connect(login=False)
        c.user(BOB)
        start = time.monotonic()
        self.assertErr(c.pass_, "wrong", reply=b"-ERR [AUTH] Authentication failed")
        self.assertGreaterEqual(time.monotonic() - start, 0.4)
        c.user("nobody@example.org")
        start = time.monotonic()
        self.assertErr(c.pass_, "wrong", reply=b"-ERR [AUTH] Authentication failed")
        self.assertGreaterEqual(time.monotonic() - start, 0.4)
        # max_failures reached: the server closes the connection
        c.sock.settimeout(10)
        self.assertEqual(c.sock.recv(100), b"")
        log = self.server.read_log()
        self.assertIn("pop3 login user=bob@example.org client=127.0.0.1 mech=USER tls=yes "
                      "result=failed: wrong user name or password", log)
        self.assertNotIn("wrong\n", log)
        # the right password still works on a new connection
        self.connect()


class BannerTests(POP3TestCase):
    overrides = {"pop3": {"banner": "Example Org mail, authorised users only"}}

    def test_banner(self):
        c = self.connect(tls=False, login=False)
        self.assertEqual(c.getwelcome(), b"+OK Example Org mail, authorised users only")
        s = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified(), timeout=30)
        self.addCleanup(s.close)
        self.assertEqual(s.getwelcome(), b"+OK Example Org mail, authorised users only")


class ConnectionLimitTests(POP3TestCase):
    overrides = {"pop3": {"max_connections_per_ip": "2"}}

    def raw(self, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        return sock, sock.makefile("rb")

    def test_per_ip_limit_over_both_listeners(self):
        first, f1 = self.raw(self.server.ports["pop3"])
        self.assertEqual(f1.readline(), b"+OK jdmail POP3 Service ready\r\n")
        second = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified(), timeout=30)
        self.addCleanup(second.close)
        self.assertEqual(second.getwelcome(), b"+OK jdmail POP3 Service ready")
        # a third, on either listener, is refused and closed
        third, f3 = self.raw(self.server.ports["pop3"])
        self.assertEqual(f3.readline(), b"-ERR [SYS/TEMP] Too many connections\r\n")
        self.assertEqual(f3.readline(), b"")
        with self.assertRaises(poplib.error_proto) as cm:
            poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], context=unverified(), timeout=30)
        self.assertEqual(cm.exception.args[0], b"-ERR [SYS/TEMP] Too many connections")
        self.assertIn("pop3 connection refused client=127.0.0.1", self.server.read_log())
        # when one goes, there is room again
        first.sendall(b"QUIT\r\n")
        self.assertEqual(f1.readline(), b"+OK Logging out\r\n")
        deadline = time.monotonic() + 5
        while True:
            sock, f = self.raw(self.server.ports["pop3"])
            line = f.readline()
            if line == b"+OK jdmail POP3 Service ready\r\n" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(line, b"+OK jdmail POP3 Service ready\r\n")
