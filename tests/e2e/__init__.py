"""End-to-end tests: a real ``twistd jdmail`` on loopback ports, real clients.

Helpers shared by the e2e modules live here (not in a test module, because trial
collects every TestCase a module imports). Servers are started lazily, once per
process and per configuration, and stopped when the process exits; their user
directory is a copy of one template built with ``jdmailctl`` once, so a new
configuration costs one server start, not a dozen jdmailctl runs.
"""

import atexit
import base64
import concurrent.futures
import os
import smtplib
import socket
import sqlite3
import ssl
import time
from collections import namedtuple

from tests.fixtures.server import JdmailServer

# The users and aliases every shared server has.
BOB, ALICE, CAROL = "bob@example.org", "alice@example.org", "carol@example.org"
USERS = {BOB: "secret", ALICE: "wonderland", CAROL: "c4rol!pw"}
DOMAINS = ("example.org", "catch.test")
ALIASES = (
    ("team@example.org", "bob@example.org", "alice@example.org", "carol@example.org"),
    ("bobby@example.org", "bob@example.org"),          # an alias that delivers to bob only
    ("@alias.test", "@example.org"),                   # domain alias
    ("*@catch.test", "carol@example.org"),             # catch-all
)

# Shared server configurations: name -> overrides for JdmailServer.
CONFIGS = {
    "default": {},
    "tuned": {
        "smtp": {"banner": "mx.custom.test Custom ESMTP greeting for tests", "vrfy": "yes", "expn": "yes",
                 "max_recipients": "3", "max_message_size": "20000", "max_hops": "5",
                 "max_line_length": "200"},
        "auth": {"max_failures": "2"},
    },
    "limits": {"smtp": {"max_connections": "3", "max_connections_per_ip": "2", "command_timeout": "1s"}},
}

_template = None
_servers = {}


def _build_template():
    """A data directory whose directory.sqlite has DOMAINS, USERS and ALIASES, made with jdmailctl."""
    global _template
    if _template is None:
        t = JdmailServer()
        t.write_ini()
        t.ctl("domain", "add", DOMAINS[0])          # creates the database: alone, before any other writer
        jobs = [("domain", "add", d) for d in DOMAINS[1:]]
        jobs += [("user", "add", a, "--password", p) for a, p in USERS.items()]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda args: t.ctl(*args), jobs))
        with concurrent.futures.ThreadPoolExecutor(len(ALIASES)) as pool:
            list(pool.map(lambda args: t.ctl("alias", "add", *args), ALIASES))
        _template = t.datadir
    return _template


def shared_server(name="default"):
    """The running JdmailServer for CONFIGS[name], started on first use."""
    server = _servers.get(name)
    if server is not None and server.proc.poll() is None:
        return server
    template = _build_template()
    server = JdmailServer(overrides=CONFIGS[name])
    server.write_ini()
    os.makedirs(server.datadir, mode=0o700, exist_ok=True)
    src = sqlite3.connect(os.path.join(template, "directory.sqlite"))
    dst = sqlite3.connect(os.path.join(server.datadir, "directory.sqlite"))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    server.start()
    atexit.register(server.stop)
    _servers[name] = server
    return server


# --- looking at what the server stored and logged ----------------------------------------

def message(tok, subject="test", body="Hello.\r\n"):
    """A small message (bytes, CRLF) whose Subject and Message-ID carry ``tok``."""
    return (f"From: Sender <sender@remote.test>\r\nTo: bob@example.org\r\nSubject: {subject} {tok}\r\n"
            f"Message-ID: <{tok}@remote.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}").encode()


def token():
    """A string unique to one test message, to find it on disk."""
    return f"tok-{time.monotonic_ns()}-{os.getpid()}"


def files_with(server, needle):
    """Every stored file (any mailbox, new/ and cur/) whose bytes contain ``needle``."""
    if isinstance(needle, str):
        needle = needle.encode()
    found = []
    root = os.path.join(server.datadir, "mail")
    for dirpath, _dirs, names in os.walk(root):
        if os.path.basename(dirpath) not in ("new", "cur"):
            continue
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(path)
    return sorted(found)


def mailbox_of(server, path):
    """'bob@example.org' for a file under .../mail/example.org/bob/Maildir/new/."""
    rel = os.path.relpath(path, os.path.join(server.datadir, "mail")).split(os.sep)
    return f"{rel[1]}@{rel[0]}"


def spool_files(server):
    return os.listdir(os.path.join(server.datadir, "spool", "incoming"))


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll ``predicate`` until it returns something true; return that (or the last false value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def log_lines(server, contains):
    return [line for line in server.read_log().splitlines() if contains in line]


# --- a raw SMTP client, for what smtplib will not send -------------------------------------

Reply = namedtuple("Reply", "code lines")
Reply.text = property(lambda r: r.lines[-1] if r.lines else "")


class RawSMTP:
    """A line-level SMTP client over a plain socket (optionally bound to ``source`` IP)."""

    def __init__(self, port, source=None, timeout=5.0, greeting=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self._buf = b""
        self.banner = self.reply() if greeting else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self._buf!r}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        """Read one (possibly multi-line) reply."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.test"):
        return self.cmd(f"EHLO {name}")

    def closed(self, timeout=3.0):
        """True when the server closes the connection (EOF) within ``timeout`` and sent nothing more."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def starttls(self):
        """Wrap the socket in TLS (certificate not verified: the server's is self-signed)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mail.test")
        return self.sock

    def auth_plain(self, user, password, authzid=""):
        raw = f"{authzid}\0{user}\0{password}".encode()
        return self.cmd("AUTH PLAIN " + base64.b64encode(raw).decode())


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unverified_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SMTPHelpers:
    """Mixed into TestCases: the shared server, clients closed in cleanup, reply assertions."""

    config = "default"

    def setUp(self):
        self.server = shared_server(self.config)
        self.ports = self.server.ports

    def raw(self, listener="smtp", **kw):
        c = RawSMTP(self.ports[listener], **kw)
        self.addCleanup(c.close)
        return c

    def smtp(self, listener="smtp", ssl=False):
        cls = smtplib.SMTP_SSL if ssl else smtplib.SMTP
        kw = {"context": unverified_context()} if ssl else {}
        c = cls("127.0.0.1", self.ports[listener], timeout=10, **kw)
        self.addCleanup(self._close_smtp, c)
        return c

    @staticmethod
    def _close_smtp(c):
        try:
            c.close()
        except Exception:
            pass

    def submission(self, user=BOB, password=None, mech="PLAIN"):
        """An smtplib client on the submission port, after STARTTLS and AUTH."""
        c = self.smtp("submission")
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.user, c.password = user, password or USERS[user]
        code, text = c.auth(mech, getattr(c, "auth_" + mech.lower()))
        self.assertEqual((code, text), (235, b"2.7.0 Authentication successful"))
        return c

    def tls_raw(self, listener="submission"):
        """A raw client on ``listener`` after EHLO, STARTTLS and EHLO again."""
        c = self.raw(listener)
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS"), (220, ["2.0.0 Ready to start TLS"]))
        c.starttls()
        self.assertEqual(c.ehlo().code, 250)
        return c

    def assertReply(self, reply, code, enhanced=None, contains=None):
        """``reply`` is a RawSMTP Reply or an smtplib (code, bytes) pair."""
        if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[1], bytes):
            got_code, text = reply[0], reply[1].decode()
        else:
            got_code, text = reply.code, reply.text
        self.assertEqual(got_code, code, f"reply was {got_code} {text!r}")
        if enhanced is not None:
            self.assertTrue(text.startswith(enhanced + " "), f"expected enhanced code {enhanced}: {text!r}")
        if contains is not None:
            self.assertIn(contains, text)

    def stored(self, tok, expected_mailboxes):
        """Assert the message carrying ``tok`` is in exactly these mailboxes (once each); return paths."""
        paths = files_with(self.server, tok)
        self.assertEqual(sorted(mailbox_of(self.server, p) for p in paths), sorted(expected_mailboxes))
        return paths

    def send_raw(self, c, sender, rcpts, data):
        """MAIL/RCPT/DATA over a RawSMTP after EHLO; returns the final reply (data is raw, dot-stuffed)."""
        self.assertReply(c.cmd(f"MAIL FROM:<{sender}>"), 250, "2.1.0")
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(data + b".\r\n")
        return c.reply()
