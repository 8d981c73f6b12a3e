"""IMAP against the real server (twistd jdmail, Maildir store, SQLite directory) with
imaplib, imapclient and a raw socket client for exact responses.

One server is started for the module (IMAP and IMAPS on loopback, a user with a
20 KB quota added); each test works in its own folders or with its own message
tokens, so tests do not depend on each other's mail.
"""

import atexit
import imaplib
import os
import re
import smtplib
import socket
import sqlite3
import ssl
import time
import uuid

import twisted.mail.imap4  # noqa: F401  registers the "imap4-utf-7" codec
from twisted.trial import unittest

from tests.e2e import ALICE, BOB, CAROL, USERS, _build_template
from tests.fixtures.server import JdmailServer

LOOPBACK = "tcp:0:interface=127.0.0.1"
QUOTA_USER, QUOTA_PASSWORD = "quota@example.org", "q-secret"
DAVE, DAVE_PASSWORD = "dave@example.org", "dave-pw"

_server = None


def imap_server():
    """The module's server: the e2e template's users plus a quota user, IMAP enabled."""
    global _server
    if _server is not None and _server.proc.poll() is None:
        return _server
    template = _build_template()
    server = JdmailServer(overrides={"imap": {"listen": LOOPBACK}, "imaps": {"listen": LOOPBACK}})
    server.write_ini()
    os.makedirs(server.datadir, mode=0o700, exist_ok=True)
    src = sqlite3.connect(os.path.join(template, "directory.sqlite"))
    dst = sqlite3.connect(os.path.join(server.datadir, "directory.sqlite"))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    server.ctl("user", "add", QUOTA_USER, "--password", QUOTA_PASSWORD, "--quota", "20K")
    server.ctl("user", "add", DAVE, "--password", DAVE_PASSWORD)
    server.start()
    atexit.register(server.stop)
    _server = server
    return server


def unverified():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def unique(prefix="t"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def message(subject, body="Hello.\r\n", sender="sender@remote.test", extra=""):
    return (f"From: Sender <{sender}>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@remote.test>\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}").encode()


class RawIMAP:
    """A line-level IMAP client: send exactly what a test says, read exactly what comes."""

    def __init__(self, port, tls=False, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = unverified().wrap_socket(self.sock, server_hostname="mail.test")
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self):
        """One response line; a literal it announces is read and kept in the line."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:
            size = int(m.group(1))
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside a literal")
                self.buf += chunk
            line += b"\r\n" + self.buf[:size]
            self.buf = self.buf[size:]
            line += self.line().encode("latin-1")
        return line.decode("latin-1")

    def cmd(self, text, tag="T"):
        """Send ``tag text``; return every response line up to and including the tagged one."""
        self.send(f"{tag} {text}\r\n")
        return self.until(tag)

    def until(self, tag):
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + " "):
                return out

    def starttls(self):
        self.sock = unverified().wrap_socket(self.sock, server_hostname="mail.test")

    def closed(self, timeout=3.0):
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except socket.timeout:
            return False


class IMAPTestCase(unittest.TestCase):

    def setUp(self):
        self.server = imap_server()
        self.ports = self.server.ports

    def raw(self, tls=True, login=BOB):
        c = RawIMAP(self.ports["imaps" if tls else "imap"], tls=tls)
        self.addCleanup(c.close)
        if login:
            lines = c.cmd(f'LOGIN "{login}" "{self.password(login)}"', tag="L")
            self.assertTrue(lines[-1].startswith("L OK"), lines)
        return c

    @staticmethod
    def password(user):
        return {QUOTA_USER: QUOTA_PASSWORD, DAVE: DAVE_PASSWORD}.get(user) or USERS[user]

    def imaplib(self, user=BOB):
        c = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=unverified(), timeout=10)
        self.addCleanup(self._logout, c)
        c.login(user, self.password(user))
        return c

    def client(self, user=BOB):
        from imapclient import IMAPClient
        c = IMAPClient("127.0.0.1", port=self.ports["imaps"], ssl=True, ssl_context=unverified(), timeout=10)
        self.addCleanup(self._logout, c)
        c.login(user, self.password(user))
        return c

    @staticmethod
    def _logout(c):
        try:
            c.logout()
        except Exception:
            pass

    def folder(self, c, prefix="F"):
        """A fresh folder for this test (imapclient)."""
        name = unique(prefix)
        c.create_folder(name)
        return name

    def smtp_deliver(self, data, to=BOB):
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", [to], data)


class LoginTests(IMAPTestCase):

    def test_logindisabled_before_starttls(self):
        c = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        self.addCleanup(c.shutdown)
        self.assertIn("LOGINDISABLED", c.capabilities)
        self.assertIn("STARTTLS", c.capabilities)
        self.assertNotIn("AUTH=PLAIN", c.capabilities)
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            c.login(BOB, USERS[BOB])
        self.assertIn("PRIVACYREQUIRED", str(cm.exception))
        c.starttls(ssl_context=unverified())
        self.assertNotIn("LOGINDISABLED", c.capabilities)
        self.assertIn("AUTH=PLAIN", c.capabilities)
        self.assertEqual(c.login(BOB, USERS[BOB])[0], "OK")
        self.assertIn("IDLE", c.capabilities)

    def test_raw_capability_and_authenticate_plain(self):
        c = self.raw(tls=False, login=None)
        self.assertEqual(c.greeting, "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE STARTTLS "
                                     "LOGINDISABLED] jdmail IMAP4rev1 Service ready")
        import base64
        plain = base64.b64encode(f"\0{BOB}\0{USERS[BOB]}".encode()).decode()
        self.assertEqual(c.cmd("AUTHENTICATE PLAIN " + plain),
                         ["T NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use STARTTLS"])
        self.assertEqual(c.cmd("STARTTLS"), ["T OK Begin TLS negotiation now"])
        c.starttls()
        lines = c.cmd("AUTHENTICATE PLAIN " + plain)
        self.assertTrue(lines[-1].startswith("T OK [CAPABILITY IMAP4rev1 "), lines)

    def test_authzid_must_match(self):
        c = self.raw(login=None)
        import base64
        plain = base64.b64encode(f"{ALICE}\0{BOB}\0{USERS[BOB]}".encode()).decode()
        self.assertEqual(c.cmd("AUTHENTICATE PLAIN " + plain),
                         ["T NO [AUTHENTICATIONFAILED] Authentication failed"])

    def test_starttls_injection_discarded(self):
        c = self.raw(tls=False, login=None)
        c.send("a STARTTLS\r\nb LOGIN x y\r\n")
        self.assertEqual(c.line(), "a OK Begin TLS negotiation now")
        c.starttls()
        self.assertEqual(c.cmd("NOOP", tag="c"), ["c OK Noop completed"])

    def test_wrong_password_logged_and_slowed(self):
        c = self.raw(login=None)
        start = time.monotonic()
        self.assertEqual(c.cmd(f'LOGIN "{CAROL}" "wrong"'), ["T NO [AUTHENTICATIONFAILED] Authentication failed"])
        self.assertGreaterEqual(time.monotonic() - start, 0.09)
        lines = [line for line in self.server.read_log().splitlines()
                 if f"imap login user={CAROL}" in line and "wrong user name or password" in line]
        self.assertTrue(lines)
        self.assertNotIn("wrong\"", self.server.read_log())

    def test_imapclient_over_tls(self):
        c = self.client()
        caps = c.capabilities()
        for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC", b"QUOTA", b"SPECIAL-USE"):
            self.assertIn(cap, caps)
        self.assertEqual(c.namespace().personal, (("", "/"),))
        self.assertEqual(c.id_({"name": "test"})[0][:2], (b"name", b"jdmail"))


class FramingTests(IMAPTestCase):

    def test_negative_and_huge_literals(self):
        c = self.raw()
        self.assertEqual(c.cmd("LOGIN {-1}"), ["T BAD Invalid literal size"])
        self.assertEqual(c.cmd("APPEND INBOX {99999999999}"), ["T BAD [TOOBIG] Literal too large"])
        self.assertEqual(c.cmd("NOOP")[-1], "T OK Noop completed")

    def test_nonsync_literal_over_limit_closes(self):
        c = self.raw()
        c.send("a APPEND INBOX {999999999+}\r\n" + "x" * 1000)
        self.assertEqual(c.line(), "a BAD [TOOBIG] Literal too large")
        self.assertEqual(c.line(), "* BYE Non-synchronizing literal too large")
        self.assertTrue(c.closed())

    def test_pipelined_commands(self):
        c = self.raw()
        c.send("p1 NOOP\r\np2 EXAMINE INBOX\r\np3 FETCH 1:* (UID)\r\np4 NOOP\r\n")
        self.assertEqual(c.until("p1"), ["p1 OK Noop completed"])
        self.assertTrue(c.until("p2")[-1].startswith("p2 OK [READ-ONLY]"))
        self.assertEqual(c.until("p3")[-1], "p3 OK Fetch completed")
        self.assertEqual(c.until("p4"), ["p4 OK Noop completed"])


class FolderTests(IMAPTestCase):

    def test_special_use_folders(self):
        c = self.client(DAVE)
        folders = {name: flags for flags, _delim, name in c.list_folders()}
        for name, use in (("Sent", b"\\Sent"), ("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"),
                          ("Junk", b"\\Junk"), ("Archive", b"\\Archive")):
            self.assertIn(use, folders[name])
        self.assertEqual(c.find_special_folder(b"\\Sent"), "Sent")
        special = {name for _f, _d, name in c.list_folders()} - {"INBOX"}
        raw = self.raw(login=DAVE)
        lines = raw.cmd('LIST (SPECIAL-USE) "" *')
        self.assertEqual(len(lines) - 1, 5, lines)
        self.assertTrue(special >= {"Sent", "Drafts", "Trash", "Junk", "Archive"})

    def test_create_rename_delete(self):
        c = self.client()
        base = unique("P")
        c.create_folder(f"{base}/2024")
        names = {name for _f, _d, name in c.list_folders("", base)}
        self.assertEqual(names, {base})
        children = {name for _f, _d, name in c.list_folders(f"{base}/", "%")}
        self.assertEqual(children, {f"{base}/2024"})
        flags = dict((n, f) for f, _d, n in c.list_folders("", base))[base]
        self.assertIn(b"\\HasChildren", flags)
        c.rename_folder(base, base + "x")
        self.assertEqual({n for _f, _d, n in c.list_folders("", base + "x*")}, {base + "x", base + "x/2024"})
        c.delete_folder(base + "x/2024")
        c.delete_folder(base + "x")
        self.assertEqual(c.list_folders("", base + "*"), [])
        self.assertFalse(c.folder_exists(base))

    def test_create_with_special_use(self):
        raw = self.raw()
        name = unique("Arch")
        self.assertEqual(raw.cmd(f"CREATE {name} (USE (\\Flagged))"), ["T OK Create completed"])
        lines = raw.cmd(f'LIST "" {name}')
        self.assertIn("\\Flagged", lines[0])

    def test_unicode_names(self):
        c = self.client()
        name = unique("Été-日本-")
        c.create_folder(name)
        self.assertIn(name, {n for _f, _d, n in c.list_folders()})
        raw = self.raw()
        encoded = name.encode("imap4-utf-7").decode()
        lines = raw.cmd(f'LIST "" "{encoded}"')
        self.assertEqual(lines[0], f'* LIST (\\HasNoChildren) "/" "{encoded}"')

    def test_hostile_names(self):
        raw = self.raw()
        for name in ("../../../etc", "a/../b", "/abs", "&Jjo!", "a&b", "x//y", "Sent/./x"):
            lines = raw.cmd(f'CREATE "{name}"')
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith("T NO "), lines)
        self.assertEqual(raw.cmd('SELECT "../bob"'), ["T NO Invalid mailbox name: '.' and '..' are not allowed"])
        raw.send("n1 CREATE {3}\r\n")
        self.assertEqual(raw.line(), "+ Ready for literal data")
        raw.send(b"a\x00b\r\n")
        self.assertEqual(raw.until("n1"), ["n1 NO Mailbox name contains control characters"])
        for _dirpath, dirs, _files in os.walk(self.server.tmp):
            self.assertNotIn("etc", dirs)
            self.assertNotIn("abs", dirs)

    def test_list_pattern_with_many_wildcards_is_fast(self):
        raw = self.raw()
        # No timing assertion: a backtracking matcher would hang here, and the test's
        # timeout turns that into a failure.
        lines = raw.cmd('LIST "" "' + "*%" * 300 + 'zz"')
        self.assertEqual(lines[-1], "T OK List completed")
        self.assertEqual(raw.cmd("NOOP")[-1], "T OK Noop completed")

    test_list_pattern_with_many_wildcards_is_fast.timeout = 120

    def test_rename_inbox(self):
        c = self.client(CAROL)
        c.select_folder("INBOX")
        c.append("INBOX", message("to be moved by rename"))
        before = c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"]
        c.unselect_folder()
        target = unique("OldInbox")
        c.rename_folder("INBOX", target)
        self.assertEqual(c.folder_status(target, ["MESSAGES"])[b"MESSAGES"], before)
        self.assertEqual(c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"], 0)

    def test_status(self):
        c = self.client()
        name = self.folder(c)
        c.append(name, message("one"), flags=[b"\\Seen"])
        c.append(name, message("two"))
        st = c.folder_status(name, ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ"])
        self.assertEqual((st[b"MESSAGES"], st[b"UNSEEN"], st[b"UIDNEXT"]), (2, 1, 3))
        self.assertGreater(st[b"HIGHESTMODSEQ"], 0)


class AppendFetchTests(IMAPTestCase):

    def test_append_flags_date_uidplus(self):
        c = self.client()
        name = self.folder(c)
        when = "05-Mar-2024 10:20:30 +0200"
        raw = self.raw()
        data = message("appended")
        raw.send(f'a APPEND {name} (\\Seen $Work) "{when}" {{{len(data)}}}\r\n')
        self.assertEqual(raw.line(), "+ Ready for literal data")
        raw.send(data + b"\r\n")
        lines = raw.until("a")
        m = re.fullmatch(r"a OK \[APPENDUID (\d+) 1\] Append completed", lines[-1])
        self.assertTrue(m, lines)
        info = c.select_folder(name)
        self.assertEqual(info[b"UIDVALIDITY"], int(m.group(1)))
        got = c.fetch([1], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"])[1]
        self.assertEqual(set(got[b"FLAGS"]), {b"\\Seen", b"$Work", b"\\Recent"})
        self.assertEqual(got[b"INTERNALDATE"].utctimetuple()[:6], (2024, 3, 5, 8, 20, 30))
        self.assertEqual(got[b"BODY[]"], data)
        self.assertEqual(got[b"RFC822.SIZE"], len(data))

    def test_append_without_flags_and_imapclient_uidplus(self):
        c = self.client()
        name = self.folder(c)
        resp = c.append(name, message("plain"))
        self.assertRegex(resp, rb"^\[APPENDUID \d+ 1\] Append completed$")

    def test_sections_partials_and_peek(self):
        c = self.client()
        name = self.folder(c)
        data = (b"From: a@example.org\r\nSubject: multi\r\nMIME-Version: 1.0\r\n"
                b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
                b"--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n"
                b"--b2\r\nContent-Type: text/plain\r\n\r\nalt plain\r\n"
                b"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>alt</p>\r\n--b2--\r\n--b1--\r\n")
        c.append(name, data)
        c.select_folder(name)
        got = c.fetch([1], ["BODY.PEEK[1]", "BODY.PEEK[2.2]", "BODY.PEEK[2.2.MIME]", "BODY.PEEK[]<0.4>",
                            "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "FLAGS"])[1]
        self.assertEqual(got[b"BODY[1]"], b"first part")
        self.assertEqual(got[b"BODY[2.2]"], b"<p>alt</p>")
        self.assertEqual(got[b"BODY[2.2.MIME]"], b"Content-Type: text/html; charset=utf-8\r\n\r\n")
        self.assertEqual(got[b"BODY[]<0>"], b"From")
        self.assertEqual(got[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: multi\r\n\r\n")
        self.assertEqual(got[b"FLAGS"], (b"\\Recent",))     # this session is the first to see it
        self.assertEqual(c.get_flags([1])[1], (b"\\Recent",))
        got = c.fetch([1], ["BODY[1]"])[1]
        self.assertEqual(got[b"FLAGS"], (b"\\Seen", b"\\Recent"))
        self.assertEqual(c.get_flags([1])[1], (b"\\Seen", b"\\Recent"))
        bs = c.fetch([1], ["BODYSTRUCTURE"])[1][b"BODYSTRUCTURE"]
        self.assertTrue(bs.is_multipart)

    def test_big_message_round_trip(self):
        c = self.client()
        name = self.folder(c)
        data = message("big", body="".join(f"line {i:07d} " + "x" * 60 + "\r\n" for i in range(40000)))
        self.assertGreater(len(data), 2 * 1024 * 1024)
        c.append(name, data)
        c.select_folder(name)
        got = c.fetch([1], ["RFC822.SIZE", "BODY.PEEK[]", "BODY.PEEK[]<1000000.100>"])[1]
        self.assertEqual(got[b"RFC822.SIZE"], len(data))
        self.assertEqual(got[b"BODY[]"], data)
        self.assertEqual(got[b"BODY[]<1000000>"], data[1000000:1000100])

    def test_envelope_non_ascii(self):
        c = self.client()
        name = self.folder(c)
        c.append(name, message("Grüße =?UTF-8?Q?caf=C3=A9?=", body="Ünïcödé\r\n"))
        c.select_folder(name)
        env = c.fetch([1], ["ENVELOPE"])[1][b"ENVELOPE"]
        self.assertIn(b"caf", env.subject)
        self.assertEqual(env.from_[0].mailbox, b"sender")

    def test_sequence_sets_and_uids_past_the_end(self):
        raw = self.raw()
        name = unique("S")
        raw.cmd(f"CREATE {name}")
        for i in range(3):
            data = message(f"m{i}")
            raw.send(f"a{i} APPEND {name} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
            raw.until(f"a{i}")
        raw.cmd(f"SELECT {name}")
        self.assertEqual(raw.cmd("FETCH 3:1 (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)",
                                                     "* 3 FETCH (UID 3)", "T OK Fetch completed"])
        self.assertEqual(raw.cmd("FETCH * (UID)"), ["* 3 FETCH (UID 3)", "T OK Fetch completed"])
        self.assertEqual(raw.cmd("FETCH 4 (UID)"), ["T BAD Invalid message sequence number: 4"])
        self.assertEqual(raw.cmd("UID FETCH 10:20 (FLAGS)"), ["T OK UID Fetch completed"])
        self.assertEqual(raw.cmd("UID FETCH 10:* (FLAGS)"), ["* 3 FETCH (UID 3 FLAGS (\\Recent))", "T OK UID Fetch completed"])
        self.assertEqual(raw.cmd("UID STORE 50 +FLAGS (\\Seen)"), ["T OK UID Store completed"])
        self.assertEqual(raw.cmd("UID SEARCH 2:*"), ["* SEARCH 2 3", "T OK UID Search completed"])
        self.assertEqual(raw.cmd("UID SEARCH 90:*"), ["* SEARCH 3", "T OK UID Search completed"])


class SearchTests(IMAPTestCase):

    def setUp(self):
        IMAPTestCase.setUp(self)
        c = self.c = self.client()
        self.name = self.folder(c)
        c.append(self.name, message("alpha report", sender="ann@one.test"), flags=[b"\\Seen"],
                 msg_time=None)
        c.append(self.name, message("beta news", sender="bob@two.test", body="x" * 5000 + "\r\n"))
        c.append(self.name, message("Grüße aus Köln", sender="cem@three.test", extra="X-Tag: special\r\n"))
        raw = self.raw()
        when = "01-Feb-2020 12:00:00 +0000"
        data = message("old one", sender="dan@four.test")
        raw.send(f'o APPEND {self.name} "{when}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
        raw.until("o")
        c.select_folder(self.name)

    def test_keys(self):
        c = self.c
        self.assertEqual(c.search(["OR", "SUBJECT", "alpha", "FROM", "cem"]), [1, 3])
        self.assertEqual(c.search(["NOT", "SEEN"]), [2, 3, 4])
        self.assertEqual(c.search(["LARGER", "3000"]), [2])
        self.assertEqual(c.search(["SMALLER", "3000", "UNSEEN"]), [3, 4])
        self.assertEqual(c.search(["HEADER", "X-Tag", "special"]), [3])
        self.assertEqual(c.search(["BEFORE", "1-Jan-2021"]), [4])
        self.assertEqual(c.search(["SINCE", "1-Jan-2021"]), [1, 2, 3])
        self.assertEqual(c.search(["SENTON", "2-Jan-2024"]), [1, 2, 3, 4])
        self.assertEqual(c.search(["BODY", "xxxxxxxx"]), [2])

    def test_charset_utf8(self):
        c = self.c
        self.assertEqual(c.search(["SUBJECT", "Köln"], charset="UTF-8"), [3])
        self.assertEqual(c.search(["TEXT", "grüße"], charset="UTF-8"), [3])

    def test_esearch_and_sort(self):
        raw = self.raw()
        raw.cmd(f"EXAMINE {self.name}")
        self.assertEqual(raw.cmd("SEARCH RETURN (MIN MAX COUNT) UNSEEN"),
                         ['* ESEARCH (TAG "T") MIN 2 MAX 4 COUNT 3', "T OK Search completed"])
        self.assertEqual(raw.cmd("UID SORT (SIZE) UTF-8 ALL")[0][-2:], " 2")
        self.assertEqual(raw.cmd("SORT (REVERSE ARRIVAL) UTF-8 ALL"), ["* SORT 3 2 1 4", "T OK Sort completed"])
        self.assertEqual(self.c.sort(["SUBJECT"]), [1, 2, 3, 4])


class ExpungeAndSessionsTests(IMAPTestCase):

    def fill(self, c, name, n):
        for i in range(n):
            c.append(name, message(f"msg {i}"))

    def test_expunge_order(self):
        c = self.client()
        name = self.folder(c)
        self.fill(c, name, 6)
        raw = self.raw()
        raw.cmd(f"SELECT {name}")
        raw.cmd("STORE 2:3,5 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(raw.cmd("EXPUNGE"), ["* 2 EXPUNGE", "* 2 EXPUNGE", "* 3 EXPUNGE", "T OK Expunge completed"])
        self.assertEqual(raw.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 4)", "* 3 FETCH (UID 6)",
                                                     "T OK Fetch completed"])

    def test_two_sessions(self):
        c = self.client()
        name = self.folder(c)
        self.fill(c, name, 4)
        a, b = self.raw(), self.raw()
        a.cmd(f"SELECT {name}")
        b.cmd(f"SELECT {name}")
        b.cmd("STORE 2 +FLAGS (\\Deleted)")
        self.assertEqual(b.cmd("EXPUNGE"), ["* 2 EXPUNGE", "T OK Expunge completed"])
        b.cmd("STORE 3 +FLAGS (\\Flagged)")
        # a FETCH, STORE or SEARCH must not carry the EXPUNGE
        lines = a.cmd("FETCH 1:4 (UID)")
        self.assertFalse([line for line in lines if line.endswith(" EXPUNGE")], lines)
        lines = a.cmd("SEARCH ALL")
        self.assertEqual(lines[0], "* SEARCH 1 2 3 4")
        lines = a.cmd("NOOP")
        self.assertEqual(lines[0], "* 2 EXPUNGE")
        self.assertTrue([line for line in lines if re.fullmatch(r"\* 3 FETCH \(FLAGS \(\\Flagged( \\Recent)?\) UID 4\)", line)],
                        lines)
        c.append(name, message("new one"))
        lines = a.cmd("NOOP")
        self.assertIn("* 4 EXISTS", lines)

    def test_idle_push_after_smtp_delivery(self):
        c = self.client(ALICE)
        c.select_folder("INBOX")
        c.idle()
        try:
            tok = unique("idle")
            self.smtp_deliver(message(tok), to=ALICE)
            start = time.monotonic()
            responses = []
            # The push arrives while the client only waits (no polling); how fast is not
            # asserted here (tests never assert on timing), the generous wait keeps it robust.
            while time.monotonic() - start < 15.0 and not any(r[1:2] == (b"EXISTS",) for r in responses):
                responses += c.idle_check(timeout=max(0.05, 15.0 - (time.monotonic() - start)))
        finally:
            c.idle_done()
        self.assertTrue(any(r[1:2] == (b"EXISTS",) for r in responses), responses)
        self.assertTrue(c.search(["SUBJECT", tok]))

    def test_move(self):
        c = self.client()
        src, dst = self.folder(c), self.folder(c)
        self.fill(c, src, 3)
        c.select_folder(src)
        c.move([1, 3], dst)
        self.assertEqual(c.search(["ALL"]), [2])
        self.assertEqual(c.folder_status(dst, ["MESSAGES"])[b"MESSAGES"], 2)
        raw = self.raw()
        raw.cmd(f"SELECT {dst}")
        lines = raw.cmd(f"UID MOVE 1 {src}")
        self.assertRegex(lines[0], r"^\* OK \[COPYUID \d+ 1 4\] Moved$")
        self.assertEqual(lines[1:], ["* 1 EXPUNGE", "T OK Move completed"])
        self.assertEqual(raw.cmd(f"MOVE 1 nowhere-{uuid.uuid4().hex}"),
                         ["T NO [TRYCREATE] Mailbox does not exist"])

    def test_copy_uidplus(self):
        c = self.client()
        src, dst = self.folder(c), self.folder(c)
        self.fill(c, src, 2)
        raw = self.raw()
        raw.cmd(f"SELECT {src}")
        self.assertRegex(raw.cmd(f"COPY 1:2 {dst}")[-1], r"^T OK \[COPYUID \d+ 1:2 1:2\] Copy completed$")


class CondstoreTests(IMAPTestCase):

    def test_condstore_and_qresync_resync(self):
        c = self.client()
        name = self.folder(c)
        for i in range(4):
            c.append(name, message(f"q{i}"))
        first = self.raw()
        first.cmd("ENABLE QRESYNC")
        lines = first.cmd(f"SELECT {name}")
        validity = int(re.search(r"UIDVALIDITY (\d+)", " ".join(lines)).group(1))
        modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", " ".join(lines)).group(1))
        first.cmd("LOGOUT")
        # another client changes things while the first is away
        other = self.raw()
        other.cmd(f"SELECT {name}")
        other.cmd("STORE 2 +FLAGS (\\Deleted)")
        other.cmd("EXPUNGE")
        other.cmd("STORE 3 +FLAGS (\\Flagged)")
        again = self.raw()
        self.assertEqual(again.cmd("ENABLE QRESYNC"), ["* ENABLED QRESYNC", "T OK Enable completed"])
        lines = again.cmd(f"SELECT {name} (QRESYNC ({validity} {modseq} 1:4))")
        self.assertIn("* VANISHED (EARLIER) 2", lines)
        flagged = [line for line in lines if "FETCH" in line]
        self.assertEqual(len(flagged), 1, lines)
        self.assertRegex(flagged[0], r"^\* 3 FETCH \(UID 4 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)$")
        lines = again.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        self.assertEqual(lines[0], "* VANISHED (EARLIER) 2")
        new_modseq = int(re.search(r"MODSEQ \((\d+)\)", flagged[0]).group(1))
        lines = again.cmd(f"STORE 1 (UNCHANGEDSINCE {new_modseq - 1}) +FLAGS (\\Seen)")
        self.assertRegex(lines[-1], r"^T OK")
        lines = again.cmd(f"STORE 3 (UNCHANGEDSINCE {new_modseq - 1}) +FLAGS (\\Seen)")
        self.assertEqual(lines[-1], "T OK [MODIFIED 3] Conditional STORE failed for some messages")

    def test_imapclient_condstore(self):
        c = self.client()
        name = self.folder(c)
        c.append(name, message("cs"))
        info = c.select_folder(name, readonly=False)
        self.assertIn(b"HIGHESTMODSEQ", info)
        c.add_flags([1], [b"\\Answered"])
        got = c.fetch([1], ["FLAGS", "MODSEQ"])[1]
        self.assertGreater(got[b"MODSEQ"][0], 0)
        self.assertEqual(c.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {got[b'MODSEQ'][0]}"]), {})
        changed = c.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {got[b'MODSEQ'][0] - 1}"])
        self.assertEqual(changed[1][b"FLAGS"], (b"\\Answered", b"\\Recent"))


class QuotaTests(IMAPTestCase):

    def test_quota_and_overquota(self):
        c = self.client(QUOTA_USER)
        roots, quotas = c.get_quota_root("INBOX")
        self.assertEqual(roots.mailbox, "INBOX")
        self.assertEqual(quotas[0].resource, "STORAGE")
        self.assertEqual(quotas[0].limit, 20)
        big = message("big", body="y" * 30000 + "\r\n")
        raw = self.raw(login=QUOTA_USER)
        raw.send(f"q1 APPEND INBOX {{{len(big)}+}}\r\n".encode() + big + b"\r\n")
        self.assertEqual(raw.until("q1"), ["q1 NO [OVERQUOTA] Quota exceeded"])
        small = message("small", body="z" * 12000 + "\r\n")
        raw.send(f"q2 APPEND INBOX {{{len(small)}+}}\r\n".encode() + small + b"\r\n")
        self.assertTrue(raw.until("q2")[-1].startswith("q2 OK [APPENDUID"))
        raw.cmd("SELECT INBOX")
        self.assertEqual(raw.cmd("COPY 1 Trash")[-1], "T NO [OVERQUOTA] Quota exceeded")
        lines = raw.cmd("GETQUOTAROOT INBOX")
        self.assertEqual(lines[0], '* QUOTAROOT "INBOX" ""')
        self.assertRegex(lines[1], r'^\* QUOTA "" \(STORAGE 1[23] 20\)$')


def index_fds(pid, maildir):
    """How many of process ``pid``'s descriptors are ``maildir``'s index or lock files."""
    n = 0
    prefix = os.path.join(os.path.realpath(maildir), "jdmail-index")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                n += 1
        except OSError:
            pass
    return n


class IdleIndexTests(unittest.TestCase):
    """[store] index_idle_timeout: an IDLE session's mailbox index is closed while it idles,
    and new mail still reaches it at once; its next commands reopen the index."""

    def test_index_closed_under_an_idle_session_which_still_gets_new_mail(self):
        from imapclient import IMAPClient
        from tests.e2e import wait_for
        from tests.fixtures.server import running_server
        # one process ([jdmail] workers = 1): the descriptors looked at are the server process's
        server = running_server(self, overrides={"imaps": {"listen": LOOPBACK},
                                                 "store": {"index_idle_timeout": "1s"},
                                                 "jdmail": {"workers": "1"}})
        pid, maildir = server.proc.pid, server.maildir("bob@example.org")
        c = IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=unverified(), timeout=10)
        self.addCleanup(IMAPTestCase._logout, c)
        c.login("bob@example.org", "secret")
        c.select_folder("INBOX")
        self.assertGreaterEqual(index_fds(pid, maildir), 3)         # index, lock files
        c.idle()
        try:
            self.assertTrue(wait_for(lambda: index_fds(pid, maildir) == 0, timeout=20.0), "index still open")
            tok = unique("asleep")
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
                s.sendmail("sender@remote.test", ["bob@example.org"], message(tok))
            start = time.monotonic()
            responses = []
            while time.monotonic() - start < 15.0 and (1, b"EXISTS") not in responses:
                responses += c.idle_check(timeout=1.0)
        finally:
            c.idle_done()
        self.assertIn((1, b"EXISTS"), responses)
        self.assertEqual(c.search(["SUBJECT", tok]), [1])
        c.add_flags([1], ["\\Flagged"])
        self.assertEqual(set(c.get_flags([1])[1]), {b"\\Flagged", b"\\Recent"})
        self.assertTrue(wait_for(lambda: index_fds(pid, maildir) == 0, timeout=20.0), "index still open")
        self.assertEqual(set(c.get_flags([1])[1]), {b"\\Flagged", b"\\Recent"})     # reopened for it
        self.assertNotIn("Traceback", server.read_log())
