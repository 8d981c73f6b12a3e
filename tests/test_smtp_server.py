"""jdmail.smtp.server, in memory: DATA framing (end marker across writes, dot-unstuffing,
bare CR/LF, header/body split), command sequencing and AUTH continuation replies.

The server runs over a StringTransport with a fake directory and delivery agent; all
of it completes synchronously, so each test writes bytes and reads the reply lines.
"""

import os

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from jdmail.auth import make_portal
from jdmail.config import CORE_SCHEMA
from jdmail.errors import DirectoryUnavailable
from jdmail.filters.chain import FilterChain
from jdmail.interfaces import Account, Resolution
from jdmail.smtp import spool as spool_module
from jdmail.smtp.server import ESMTPServer, Listener

BOB = Account(name="bob@example.org", mailbox="example.org/bob")


class FakeDirectory:
    """bob@example.org is a user (password 'secret'); other example.org names are unknown."""

    async def resolve(self, address, sender=None):
        if address.lower() == BOB.name:
            return Resolution(Resolution.Kind.LOCAL, mailboxes=(BOB.mailbox,), accounts=(BOB,))
        if address.lower().endswith("@example.org"):
            return Resolution(Resolution.Kind.UNKNOWN)
        return Resolution(Resolution.Kind.REMOTE, remote=(address,))

    async def owns(self, account, address):
        return address.lower() == account.name

    async def authenticate(self, username, password):
        return BOB if (username, password) == (BOB.name, "secret") else None

    async def account(self, name):
        return BOB if name == BOB.name else None


class FakeDelivery:
    def __init__(self):
        self.delivered = []          # [(envelope, bytes of the spool file)]

    async def deliver(self, envelope, path, commit=None):
        if commit is not None:          # the spool commit (fsync, inserted headers): before any read
            commit()
        with open(path, "rb") as f:
            self.delivered.append((envelope, f.read()))
        return {}


class FakeServices:
    def run_blocking(self, f, *args, **kwargs):
        return maybeDeferred(f, *args, **kwargs)


class FakeFactory:
    """What ESMTPServer takes from its SMTPFactory."""

    hostname = "mail.test"
    tls_context = None
    filters = FilterChain([], None)

    def __init__(self, spool_dir, **smtp):
        self.settings = {key: option.default for key, option in CORE_SCHEMA["smtp"].items()}
        self.settings["banner"] = "mail.test jdmail ESMTP Service ready"
        self.settings.update(smtp)
        self.auth = {"allow_plaintext": True, "fail_delay": 0, "max_failures": 3}
        self.directory = FakeDirectory()
        self.portal = make_portal(self.directory)
        self.delivery = FakeDelivery()
        self.services = FakeServices()
        self.spool_dir = spool_dir
        self.open = 0
        self.sessions = set()

    def open_connection(self, ip):
        self.open += 1

    def close_connection(self, ip):
        self.open -= 1

    def sleep(self, seconds):
        return succeed(None)


class ServerTestCase(TestCase):

    def setUp(self):
        self.spool_dir = self.mktemp()
        os.makedirs(self.spool_dir)
        self.factory = FakeFactory(self.spool_dir, max_line_length=50, max_message_size=1000, max_hops=3)
        self.clock = Clock()
        self.proto = ESMTPServer(self.factory, Listener("smtp", False, False))
        self.proto.callLater = self.clock.callLater
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.proto.makeConnection(self.transport)
        self.addCleanup(self.proto.connectionLost, None)
        self.assertEqual(self.replies(), ["220 mail.test jdmail ESMTP Service ready"])

    def replies(self):
        """Reply lines written since the last call."""
        out = self.transport.value().decode("utf-8")
        self.transport.clear()
        return out.splitlines()

    def send(self, *writes):
        for data in writes:
            self.proto.dataReceived(data if isinstance(data, bytes) else data.encode())
        return self.replies()

    def start_data(self):
        self.assertEqual(self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.org>\r\n"
                                   b"DATA\r\n")[-3:],
                         ["250 2.1.0 Sender ok", "250 2.1.5 Recipient ok", "354 End data with <CR><LF>.<CR><LF>"])

    def body(self, n=0):
        """The n-th delivered message without the trace headers jdmail added."""
        lines = self.factory.delivery.delivered[n][1].split(b"\r\n")
        self.assertTrue(lines.pop(0).startswith(b"Return-Path: "))
        if lines[0].startswith(b"Delivered-To: "):
            lines.pop(0)
        self.assertTrue(lines.pop(0).startswith(b"Received: "))
        while lines[0].startswith(b"\t"):
            lines.pop(0)
        return b"\r\n".join(lines)


class DataFramingTests(ServerTestCase):

    def test_end_marker_in_one_write(self):
        self.start_data()
        self.assertEqual(self.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")[0][:22], "250 2.0.0 Ok: queued a")
        self.assertEqual(self.body(), b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(os.listdir(self.spool_dir), [])

    def test_end_marker_split_over_writes(self):
        """Every way of cutting 'CRLF . CRLF' over two or three writes ends the message, once."""
        marker = b"\r\n.\r\n"
        cuts = [(i,) for i in range(1, 5)] + [(i, j) for i in range(1, 5) for j in range(i + 1, 5)]
        for n, cut in enumerate(cuts):
            self.start_data()
            text = b"Subject: %d\r\n\r\nbody" % n + marker
            base = len(text) - len(marker)
            pieces, last = [], 0
            for c in cut:
                pieces.append(text[last:base + c])
                last = base + c
            pieces.append(text[last:])
            for piece in pieces[:-1]:
                self.assertEqual(self.send(piece), [], (cut, piece))
            self.assertEqual(self.send(pieces[-1])[0][:9], "250 2.0.0", cut)
            self.assertEqual(self.body(n), b"Subject: %d\r\n\r\nbody\r\n" % n)
        self.assertEqual(len(self.factory.delivery.delivered), len(cuts))

    def test_end_marker_right_after_data(self):
        """'.CRLF' as the very first line: an empty message."""
        self.start_data()
        self.assertEqual(self.send(b".", b"\r", b"\n")[0][:9], "250 2.0.0")
        self.assertEqual(self.body(), b"")

    def test_dot_unstuffing(self):
        self.start_data()
        self.send(b"..starts with a dot\r\nmiddle\r\n...two\r\n.", b".split\r\n", b"x.\r\n.", b"\r\n")
        self.assertEqual(self.body(), b".starts with a dot\r\nmiddle\r\n..two\r\n.split\r\nx.\r\n")

    def test_dot_line_not_at_line_start(self):
        """'.CRLF' after a bare LF or CR is not the end: the message goes on and is refused
        (RFC 5321 2.3.8), and nothing pipelined inside it runs as a command."""
        for sep in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n"):
            self.start_data()
            self.assertEqual(self.send(b"Subject: s\r\n\r\nx" + sep + b"MAIL FROM:<evil@x.test>\r\n"
                                       b"RCPT TO:<bob@example.org>\r\nDATA\r\nevil\r\n"), [])
            self.assertEqual(self.send(b".\r\n"), ["550 5.6.0 Message contains bare CR or LF characters; lines "
                                                   "must end with CRLF (RFC 5321 section 2.3.8)"], sep)
        self.assertEqual(self.factory.delivery.delivered, [])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_long_line_split_over_writes(self):
        self.start_data()
        self.assertEqual(self.send(b"Subject: s\r\n\r\n", b"y" * 30, b"y" * 30, b"y" * 30, b"\r\n.\r\n"),
                         ["550 5.6.0 Message contains a line longer than 50 octets"])
        self.start_data()
        self.assertEqual(self.send(b"Subject: s\r\n\r\n", b"y" * 25, b"y" * 25, b"\r\n.\r\n")[0][:9], "250 2.0.0")

    def test_hops_counted_in_header_only(self):
        """The empty line ending the header may start a write: later 'Received:' lines are body."""
        self.start_data()
        self.send(b"Received: a\r\nReceived: b\r\n", b"\r\nReceived: c\r\nReceived: d\r\n.\r\n")
        self.assertEqual(len(self.factory.delivery.delivered), 1)
        self.assertEqual(self.proto.factory.delivery.delivered[0][1].count(b"Received:"), 5)
        self.start_data()
        self.assertEqual(self.send(b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\n.\r\n"),
                         ["554 5.4.6 Too many hops: mail loop detected"])

    def test_size_counted_after_unstuffing(self):
        self.start_data()
        # 16 + 42 + 19 * 50 = 1008 octets as sent, 1007 after unstuffing: over 1000
        self.assertEqual(self.send(b"Subject: s\r\n\r\n" + b"." * 40 + b"\r\n" +
                                   (b"z" * 48 + b"\r\n") * 19 + b".\r\n")[0][:9], "552 5.3.4")
        # 16 + 42 + 18 * 50 + 42 = 1000 as sent with 42 stuffed dots: 958 after unstuffing, fine
        self.start_data()
        self.assertEqual(self.send(b"Subject: s\r\n\r\n" + b"." * 40 + b"\r\n" +
                                   (b"z" * 48 + b"\r\n") * 18 + b"\r\n".join([b".."] * 14) + b"\r\n.\r\n"
                                   )[0][:9], "250 2.0.0")
        self.assertEqual(os.listdir(self.spool_dir), [])

    def test_spool_write_error(self):
        """A failing spool write (full disk) is answered with 451 at the end of DATA."""
        def full(self, data):
            raise OSError(28, "No space left on device")
        self.start_data()
        self.patch(spool_module.SpoolFile, "write", full)
        self.assertEqual(self.send(b"Subject: s\r\n\r\nhi\r\n.\r\n"),
                         ["451 4.3.0 Error: cannot store the message now; try again later"])
        self.assertEqual(self.factory.delivery.delivered, [])
        self.assertEqual(os.listdir(self.spool_dir), [])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_disconnect_in_data_removes_spool(self):
        self.start_data()
        self.send(b"Subject: s\r\n\r\npartial\r\n")
        self.assertEqual(len(os.listdir(self.spool_dir)), 1)
        self.proto.connectionLost(None)
        self.assertEqual(os.listdir(self.spool_dir), [])
        self.assertEqual(self.factory.delivery.delivered, [])


class CommandTests(ServerTestCase):

    def test_data_sequence(self):
        self.send(b"EHLO c.test\r\n")
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Error: need MAIL command first"])
        self.send(b"MAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Error: need RCPT command"])
        self.assertEqual(self.send(b"RCPT TO:<nobody@example.org>\r\n"),
                         ["550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"])
        self.assertEqual(self.send(b"DATA\r\n"), ["554 5.5.1 Error: no valid recipients"])

    def test_pipelined_in_one_write(self):
        """A whole session in one write: replies in order, one per command."""
        out = self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<x@example.org>\r\n"
                        b"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: p\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        self.assertEqual(out[0], "250-mail.test Hello c.test [192.0.2.7]")
        self.assertEqual([line[:9] for line in out if not line.startswith("250-")],
                         ["250 AUTH ", "250 2.1.0", "550 5.1.1", "250 2.1.5", "354 End d", "250 2.0.0", "221 2.0.0"])
        self.assertEqual(self.body(), b"Subject: p\r\n\r\nhi\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_auth_continuation_replies(self):
        """Errors in an AUTH continuation line get their own reply codes (not 451)."""
        self.send(b"EHLO c.test\r\n")
        self.assertEqual(self.send(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b"*\r\n"), ["501 5.0.0 Authentication aborted"])
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(b"not base64!\r\n"), ["501 5.5.2 Cannot decode AUTH response (bad base64)"])
        self.assertEqual(self.send(b"AUTH LOGIN Ym9iQGV4YW1wbGUub3Jn\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b"d3Jvbmc=\r\n"), ["535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(self.send(b"AUTH LOGIN\r\n", b"Ym9iQGV4YW1wbGUub3Jn\r\n", b"c2VjcmV0\r\n"),
                         ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"])
        self.assertEqual(self.proto.account, BOB)

    def test_auth_line_too_long(self):
        self.send(b"EHLO c.test\r\n")
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(b"A" * 13000 + b"\r\n"), ["500 5.5.6 Authentication Exchange line is too long"])
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.assertIsNone(self.proto.account)


class TimeoutTests(ServerTestCase):

    def test_idle_client(self):
        self.send(b"EHLO c.test\r\n")
        self.clock.advance(self.factory.settings["command_timeout"] - 1)
        self.assertEqual(self.replies(), [])
        self.clock.advance(1)
        self.assertEqual(self.replies(), ["421 4.4.2 mail.test Error: timeout exceeded"])
        self.assertTrue(self.transport.disconnecting)

    def test_not_while_the_server_works(self):
        """A slow delivery is not the client's idleness: no 421 while it runs; 250 when it ends."""
        pending = Deferred()
        self.factory.delivery.deliver = lambda envelope, path, commit=None: pending
        self.start_data()
        self.send(b"Subject: slow\r\n\r\nhi\r\n.\r\n")
        self.clock.advance(self.factory.settings["command_timeout"] * 3)
        self.assertEqual(self.replies(), [])
        self.assertFalse(self.transport.disconnecting)
        pending.callback({})
        self.assertEqual(self.replies()[0][:22], "250 2.0.0 Ok: queued a")
        self.clock.advance(self.factory.settings["command_timeout"])
        self.assertEqual(self.replies(), ["421 4.4.2 mail.test Error: timeout exceeded"])

    def test_in_data(self):
        """data_timeout applies inside DATA; the partial message is removed."""
        self.start_data()
        self.send(b"Subject: s\r\n\r\npartial\r\n")
        self.clock.advance(self.factory.settings["data_timeout"])
        self.assertEqual(self.replies(), ["421 4.4.2 mail.test Error: timeout exceeded"])
        self.assertEqual(os.listdir(self.spool_dir), [])


class RemoteLimitsTests(TestCase):
    """In an SMTP worker the connection limits are the master's: open_connection gives a
    Deferred, and the session waits for it (jdmail.workers)."""

    def connect(self):
        spool = self.mktemp()
        os.makedirs(spool)
        factory = FakeFactory(spool)
        answer = Deferred()
        calls = []
        factory.open_connection = lambda ip: calls.append(("open", ip)) or answer
        factory.close_connection = lambda ip: calls.append(("close", ip))
        proto = ESMTPServer(factory, Listener("smtp", False, False))
        proto.callLater = Clock().callLater
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        proto.makeConnection(transport)
        return proto, transport, answer, calls, factory

    def test_input_waits_for_the_answer(self):
        proto, transport, answer, calls, factory = self.connect()
        proto.dataReceived(b"EHLO early.test\r\n")         # an early talker
        self.assertEqual(transport.value(), b"")
        answer.callback(None)
        lines = transport.value().decode().splitlines()
        self.assertEqual(lines[0], "220 mail.test jdmail ESMTP Service ready")
        self.assertEqual(lines[1], "250-mail.test Hello early.test [192.0.2.7]")
        self.assertEqual(factory.sessions, {proto})
        proto.connectionLost(None)
        self.assertEqual(calls, [("open", "192.0.2.7"), ("close", "192.0.2.7")])
        self.assertEqual(factory.sessions, set())

    def test_refusal(self):
        proto, transport, answer, calls, _factory = self.connect()
        answer.callback("connections from 192.0.2.7 at limit 2")
        self.assertEqual(transport.value(), b"421 4.7.0 mail.test Too many connections; try again later\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(calls, [("open", "192.0.2.7")])       # nothing counted, nothing to give back

    def test_lost_before_the_answer(self):
        proto, transport, answer, calls, _factory = self.connect()
        proto.connectionLost(None)
        answer.callback(None)                   # counted by the master: given back at once
        self.assertEqual(calls, [("open", "192.0.2.7"), ("close", "192.0.2.7")])
        self.assertEqual(transport.value(), b"")

    def test_master_gone(self):
        proto, transport, answer, calls, _factory = self.connect()
        answer.errback(ConnectionError("channel closed"))
        self.assertEqual(transport.value(), b"421 4.3.2 mail.test Service not available; try again later\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(calls, [("open", "192.0.2.7")])


class IPv6Tests(TestCase):

    def test_address_literal(self):
        """EHLO and Received name an IPv6 client as [IPv6:...] (RFC 5321 4.1.3)."""
        spool_dir = self.mktemp()
        os.makedirs(spool_dir)
        factory = FakeFactory(spool_dir)
        proto = ESMTPServer(factory, Listener("smtp", False, False))
        proto.callLater = Clock().callLater
        transport = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::7", 40000))
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, None)
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nS: x\r\n\r\n.\r\n")
        self.assertIn(b"250-mail.test Hello c.test [IPv6:2001:db8::7]\r\n", transport.value())
        self.assertIn(b"Received: from c.test ([IPv6:2001:db8::7])\r\n", factory.delivery.delivered[0][1])


class TraceHeaderTests(ServerTestCase):

    def test_helo_sanitised(self):
        """Control characters and (without SMTPUTF8) 8-bit text of the EHLO argument do not
        reach the Received header as they are."""
        self.send(b"EHLO \x1b[2Jx\x7f\xc3\xa9.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.org>\r\n"
                  b"DATA\r\nS: x\r\n\r\n.\r\n")
        self.send(b"MAIL FROM:<a@remote.test> SMTPUTF8\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nS: x\r\n\r\n.\r\n")
        first, second = (m for _, m in self.factory.delivery.delivered)
        self.assertIn(b"Received: from ?[2Jx??.test ([192.0.2.7])\r\n", first)
        self.assertIn("Received: from ?[2Jx?é.test ([192.0.2.7])\r\n".encode(), second)
        self.assertIn(b"\twith UTF8SMTP id ", second)


class SlowDirectoryTests(ServerTestCase):
    """Commands pipelined behind one that waits (a slow directory) run after it, in order."""

    def setUp(self):
        super().setUp()
        self.pending = []
        fast = self.factory.directory.resolve

        async def slow(address, sender=None):
            d = Deferred()
            self.pending.append(d)
            await d
            return await fast(address)
        self.factory.directory.resolve = slow

    def test_replies_in_order(self):
        out = self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.org>\r\n"
                        b"RCPT TO:<x@example.org>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(out[-1], "250 2.1.0 Sender ok")
        self.assertEqual(len(self.pending), 1)
        self.pending.pop().callback(None)
        self.assertEqual(self.replies(), ["250 2.1.5 Recipient ok"])
        self.pending.pop().callback(None)
        out = self.replies()
        self.assertEqual([line[:9] for line in out], ["550 5.1.1", "354 End d", "250 2.0.0"])
        self.assertEqual(self.body(), b"Subject: s\r\n\r\nhi\r\n")

    def test_reading_paused_while_much_waits(self):
        self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.org>\r\n")
        self.assertEqual(self.transport.producerState, "producing")
        self.send(b"NOOP\r\n" * 50000)
        self.assertEqual(self.transport.producerState, "paused")
        self.pending.pop().callback(None)
        self.assertEqual(self.transport.producerState, "producing")
        out = self.replies()
        self.assertEqual(out, ["250 2.1.5 Recipient ok"] + ["250 2.0.0 Ok"] * 50000)


class DirectoryServiceTests(ServerTestCase):
    """The SMTP server over the real DirectoryService (an in-memory backend behind it):
    a backend that cannot answer gives temporary failures, never 550/535."""

    def setUp(self):
        super().setUp()
        from jdmail.directory.service import DirectoryService
        from tests.test_directory_service import MemoryBackend, make
        self.directory, self.backend = make(MemoryBackend())
        self.assertIsInstance(self.directory, DirectoryService)
        self.factory.directory = self.directory
        self.factory.portal = self.proto.portal = make_portal(self.directory)

    def log_events(self):
        """Log events emitted from now on, until the test ends."""
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_backend_down_at_rcpt(self):
        self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.backend.down = True
        events = self.log_events()
        self.assertEqual(self.send(b"RCPT TO:<bob@example.org>\r\n"),
                         ["451 4.3.0 Temporary lookup failure; try again later"])
        # one warning line, no traceback: the backend already logs the outage
        self.assertEqual(self.flushLoggedErrors(DirectoryUnavailable), [])
        self.assertEqual([e["log_format"] for e in events if e.get("log_level") is LogLevel.warn],
                         ["smtp directory unavailable client={client} error={error}"])
        self.backend.down = False
        self.assertEqual(self.send(b"RCPT TO:<bob@example.org>\r\n"), ["250 2.1.5 Recipient ok"])

    def test_backend_down_at_auth(self):
        import base64
        self.send(b"EHLO c.test\r\n")
        self.backend.down = True
        plain = base64.b64encode(b"\0bob@example.org\0bob").decode()
        self.assertEqual(self.send(f"AUTH PLAIN {plain}\r\n"),
                         ["454 4.7.0 Temporary authentication failure; try again later"])
        self.assertEqual(self.flushLoggedErrors(DirectoryUnavailable), [])
        self.backend.down = False
        self.assertEqual(self.send(f"AUTH PLAIN {plain}\r\n"), ["235 2.7.0 Authentication successful"])

    def test_members_only_group_refused_at_rcpt(self):
        from jdmail.directory.backend import GroupRecord
        self.backend.groups["board@example.org"] = GroupRecord(
            "board@example.org", members=("bob@example.org",), members_only=True)
        self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<board@example.org>\r\n"),
                         ["550 5.7.1 <board@example.org>: Recipient address rejected: "
                          "you may not post to this group"])
        self.send(b"RSET\r\nMAIL FROM:<bob@example.org>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<board@example.org>\r\n"), ["250 2.1.5 Recipient ok"])
