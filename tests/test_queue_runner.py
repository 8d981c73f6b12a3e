"""jdmail.queue.runner: the QueueRunner's scheduling on a fake clock.

The store is the real QueueStore (SQLite + files in a temp dir, on a thread pool); the
runner's time is a ``twisted.internet.task.Clock``, and its SMTP side is replaced by a
recording ``deliver_to_domain`` (what the remote answers is the test's choice). The last
class drives a real runner with the real reactor against a small SMTP server to check
connection reuse on the wire.
"""

import email
import email.policy
import os

from twisted.internet import defer, protocol, reactor, task
from twisted.protocols.basic import LineReceiver
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from jdmail.interfaces import Envelope
from jdmail.queue.client import DeliveryResult, TemporaryDeliveryError
from jdmail.queue.routing import Relay, parse_routing
from jdmail.queue.runner import QueueRunner, needs_smtputf8, scan_8bit
from jdmail.queue.store import LOST_REASON, QueueStore
from jdmail.services import Services
from jdmail.smtp.spool import SpoolFile, new_queue_id

T0 = 1_800_000_000.0
SENDER = "alice@example.org"
BODY = b"From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def settings(**kw):
    s = {"lifetime": 5 * 86400.0, "delay_warning": 0.0, "concurrency": 20, "per_destination": 5,
         "helo": "out.example.org", "source_address": "", "scan_interval": 1.0, "smtp_port": 25,
         "connection_reuse_time": 0.0}
    s.update(kw)
    return s


class FakeRemote:
    """Stands in for deliver_to_domain: records each call; answers with ``answer(domain,
    addresses)`` -- a code for every recipient, or an exception to raise. ``gate``, when
    set, is a Deferred each call waits on (to hold transactions open)."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []          # (time, domain, addresses, kwargs)
        self.answer = lambda domain, addresses: 250
        self.in_flight = {}
        self.peak = {}
        self.peak_total = 0
        self.gates = []
        self.dsns = []

    async def __call__(self, reactor, domain, sender, addresses, opener, size, helo, **kw):
        self.calls.append((self.clock.seconds(), domain, list(addresses), dict(kw, helo=helo, sender=sender)))
        if sender == "":                         # a DSN: keep what was sent
            f = await opener()
            with f:
                self.dsns.append(f.read())
        self.in_flight[domain] = self.in_flight.get(domain, 0) + 1
        self.peak[domain] = max(self.peak.get(domain, 0), self.in_flight[domain])
        self.peak_total = max(self.peak_total, sum(self.in_flight.values()))
        try:
            if domain != "example.org":         # DSNs to the sender go straight through
                gate = defer.Deferred()
                self.gates.append(gate)
                if not self.hold:
                    gate.callback(None)
                await gate
            answer = self.answer(domain, addresses) if domain != "example.org" else 250
        finally:
            self.in_flight[domain] -= 1
        if isinstance(answer, Exception):
            raise answer
        text = {250: "2.0.0 ok", 451: "4.2.0 busy", 550: "5.1.1 no such user"}[answer]
        enhanced, _, words = text.partition(" ")
        return DeliveryResult(results={a: (answer, enhanced, words) for a in addresses},
                              host="192.0.2.1", mx=f"mx.{domain}")

    hold = False

    def to(self, domain):
        return [c for c in self.calls if c[1] == domain]


class RunnerTestCase(TestCase):

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.datadir, "spool"))
        pool = ThreadPool(minthreads=1, maxthreads=4, name="test-runner")
        pool.start()
        self.addCleanup(pool.stop)
        self.services = Services(reactor=reactor, config=None, hostname="mx.example.org",
                                 datadir=self.datadir, threadpool=pool)
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.remote = FakeRemote(self.clock)
        self.now = self.clock.seconds
        self.store = QueueStore(None, self.services, min_backoff=300, max_backoff=3600)
        self.addCleanup(self.store.close)

    def runner(self, routing=None, **kw):
        runner = QueueRunner(self.store, self.services, settings(**kw), routing, reactor=self.clock,
                             spool_dir=os.path.join(self.datadir, "spool", "incoming"))
        runner.deliver_to_domain = self.remote
        runner.startService()
        self.addCleanup(runner.stopService)
        return runner

    async def enqueue(self, recipients, body=BODY, sender=SENDER, smtputf8=False, **kw):
        spool = SpoolFile(os.path.join(self.datadir, "spool"), new_queue_id())
        spool.write(body)
        spool.commit()
        envelope = Envelope(queue_id=spool.queue_id, sender=sender, smtputf8=smtputf8)
        message = await self.store.enqueue(envelope, spool.path, list(recipients),
                                           now=self.now(), **kw)
        spool.discard()
        return message

    async def settle(self, runner):
        """Run one scan and wait for every delivery it started (and the DSNs they queued
        are only queued, not attempted: that needs another scan)."""
        d = runner.scan()
        if d is not None:
            await d
        while runner._scanning or runner._running:
            if runner._running:
                await defer.DeferredList(list(runner._running))
            else:
                await task.deferLater(reactor, 0.001, lambda: None)

    async def at(self, runner, t):
        self.clock.advance(T0 + t - self.clock.seconds())
        await self.settle(runner)

    async def dsns(self, kind=None):
        """The DSN messages queued (from the null sender) or sent already."""
        out = [d for d in self.remote.dsns if kind is None or f"Action: {kind}".encode() in d]
        for m in await self.store.list():
            if m.sender == "":
                with open(self.store._file(m.queue_id), "rb") as f:
                    data = f.read()
                if kind is None or f"Action: {kind}".encode() in data:
                    out.append(data)
        return out


class RetryScheduleTests(RunnerTestCase):

    async def test_backoff_doubles_up_to_the_maximum(self):
        runner = self.runner()
        self.remote.answer = lambda d, a: 451
        message = await self.enqueue(["friend@example.net"])
        for t in range(0, 12000, 50):
            await self.at(runner, t)
        times = [c[0] - T0 for c in self.remote.to("example.net")]
        self.assertEqual(times, [0, 300, 900, 2100, 4500, 8100, 11700])
        [row] = [m for m in await self.store.list() if m.queue_id == message.queue_id]
        self.assertEqual(row.recipients[0].state, "deferred")
        self.assertEqual(row.recipients[0].attempts, 7)
        self.assertEqual(row.recipients[0].next_attempt, T0 + 11700 + 3600)
        self.assertIn("mx.example.net said: 451 4.2.0 busy", row.recipients[0].last_error)
        self.assertEqual(await self.dsns(), [])           # no warning (disabled), no bounce

    async def test_connection_failure_is_deferred_too(self):
        runner = self.runner()
        self.remote.answer = lambda d, a: TemporaryDeliveryError("connect to 192.0.2.1:25 failed: refused")
        await self.enqueue(["friend@example.net"])
        await self.at(runner, 0)
        await self.at(runner, 299)
        self.assertEqual(len(self.remote.to("example.net")), 1)
        [row] = await self.store.list()
        self.assertEqual((row.recipients[0].state, row.recipients[0].next_attempt), ("deferred", T0 + 300))
        self.assertIn("refused", row.recipients[0].last_error)

    async def test_success_after_temporary_failures(self):
        runner = self.runner()
        answers = [451, 451, 250]
        self.remote.answer = lambda d, a: answers.pop(0)
        await self.enqueue(["friend@example.net"])
        for t in (0, 300, 900, 2100):
            await self.at(runner, t)
        self.assertEqual(len(self.remote.to("example.net")), 3)
        self.assertEqual(await self.store.list(), [])     # delivered: gone, no DSN
        self.assertEqual(answers, [])


class LifetimeTests(RunnerTestCase):

    async def test_expiry_bounces_with_the_last_error(self):
        runner = self.runner(lifetime=1000.0)
        self.remote.answer = lambda d, a: 451
        await self.enqueue(["friend@example.net"])
        for t in (0, 300, 900, 999):
            await self.at(runner, t)
        self.assertEqual(await self.dsns(), [])           # 900 < 1000: still deferred
        await self.at(runner, 2100)                       # the attempt after the lifetime
        self.assertEqual([c[0] - T0 for c in self.remote.to("example.net")], [0, 300, 900, 2100])
        [bounce] = await self.dsns("failed")
        text = bounce.decode()
        self.assertIn("Final-Recipient: rfc822; friend@example.net", text)
        self.assertIn("Action: failed\r\nStatus: 4.4.7\r\n", text)      # RFC 3463: time expired
        self.assertIn("Remote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 451 4.2.0 busy", text)
        self.assertIn("<friend@example.net>: delivery time expired; last error: host mx.example.net said: 451",
                      text)
        msg = email.message_from_bytes(bounce, policy=email.policy.compat32)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        [original] = [m for m in await self.store.list() if m.sender == SENDER] or [None]
        self.assertIsNone(original)                        # the bounced message is gone
        await self.at(runner, 9000)
        self.assertEqual(len(self.remote.to("example.net")), 4)

    async def test_5xx_bounces_at_once(self):
        runner = self.runner()
        self.remote.answer = lambda d, a: 550
        await self.enqueue(["nobody@example.net"])
        await self.at(runner, 0)
        [bounce] = await self.dsns("failed")
        self.assertIn(b"Status: 5.1.1", bounce)
        self.assertIn(b"Remote-MTA: dns; mx.example.net", bounce)
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 no such user", bounce)


class DelayWarningTests(RunnerTestCase):

    async def test_sent_once_after_the_configured_time(self):
        runner = self.runner(delay_warning=1000.0)
        self.remote.answer = lambda d, a: 451
        await self.enqueue(["friend@example.net"])
        for t in (0, 300, 900):
            await self.at(runner, t)
        self.assertEqual(await self.dsns(), [])           # 900 s < 1000 s: not yet
        await self.at(runner, 2100)                       # first attempt past 1000 s
        [warning] = await self.dsns("delayed")
        self.assertIn(b"Final-Recipient: rfc822; friend@example.net", warning)
        self.assertIn(b"Status: 4.2.0", warning)
        [row] = [m for m in await self.store.list() if m.sender == SENDER]
        self.assertTrue(row.warned)
        for t in (4500, 8100):
            await self.at(runner, t)
        self.assertEqual(len(await self.dsns("delayed")), 1)
        self.assertEqual(len(self.remote.to("example.net")), 6)

    async def test_disabled(self):
        runner = self.runner(delay_warning=0.0)
        self.remote.answer = lambda d, a: 451
        await self.enqueue(["friend@example.net"])
        for t in (0, 300, 900, 2100, 4500, 8100, 11700):
            await self.at(runner, t)
        self.assertEqual(len(self.remote.to("example.net")), 7)
        self.assertEqual(await self.dsns(), [])

    async def test_not_for_null_sender(self):
        runner = self.runner(delay_warning=100.0, lifetime=500.0)
        self.remote.answer = lambda d, a: 451
        await self.enqueue(["friend@example.net"], sender="")
        for t in (0, 300, 900):
            await self.at(runner, t)
        self.assertEqual(await self.store.list(), [])     # expired, and no DSN about a DSN


class ConcurrencyTests(RunnerTestCase):

    async def test_global_and_per_destination_limits(self):
        runner = self.runner(concurrency=3, per_destination=2)
        self.remote.hold = True
        for _ in range(4):
            await self.enqueue(["x@a.example"])
        for _ in range(4):
            await self.enqueue(["y@b.example"])
        runner.scan()
        for _ in range(50):                 # let the runner start what it may
            await task.deferLater(reactor, 0.01, lambda: None)
        # oldest first: a, a (a's limit), then b -- which a waiting a must not hold up
        self.assertEqual(self.remote.in_flight, {"a.example": 2, "b.example": 1})
        while len(self.remote.calls) < 8:
            [gate.callback(None) for gate in self.remote.gates if not gate.called]
            await task.deferLater(reactor, 0.01, lambda: None)
            self.assertLessEqual(sum(self.remote.in_flight.values()), 3)
        self.remote.hold = False
        [gate.callback(None) for gate in self.remote.gates if not gate.called]
        while runner._running:
            await defer.DeferredList(list(runner._running))
        self.assertEqual(self.remote.peak_total, 3)
        self.assertLessEqual(max(self.remote.peak.values()), 2)
        self.assertEqual(len(self.remote.to("a.example")), 4)
        self.assertEqual(await self.store.list(), [])

    async def test_same_domain_recipients_share_one_transaction(self):
        runner = self.runner()
        await self.enqueue(["x@a.example", "y@b.example", "z@A.example", "w@a.example"])
        await self.at(runner, 0)
        calls = sorted((c[1], c[2]) for c in self.remote.calls)
        self.assertEqual(calls, [("a.example", ["x@a.example", "z@A.example", "w@a.example"]),
                                 ("b.example", ["y@b.example"])])
        [kw] = [c[3] for c in self.remote.calls if c[1] == "b.example"]
        self.assertEqual((kw["helo"], kw["sender"], kw["port"]), ("out.example.org", SENDER, 25))


class RouteTests(RunnerTestCase):

    def routing(self):
        relays = {"hq": Relay("hq", "smtp.hq.example", 587)}
        return parse_routing({"recipient:bad.example": "reject Mail to bad.example is not accepted",
                              "recipient:internal.example": "local",
                              "recipient:hq.example": "relay:hq"}, relays, "x.ini")

    async def test_reject_and_local_routes_bounce_without_a_connection(self):
        runner = self.runner(self.routing())
        await self.enqueue(["a@bad.example", "b@internal.example", "c@example.net"])
        await self.at(runner, 0)
        self.assertEqual([c[1] for c in self.remote.calls], ["example.net"])
        [bounce] = await self.dsns("failed")
        text = bounce.decode()
        self.assertIn("Final-Recipient: rfc822; a@bad.example", text)
        self.assertIn("Status: 5.7.1", text)
        self.assertIn("Mail to bad.example is not accepted", text)
        self.assertIn("Final-Recipient: rfc822; b@internal.example", text)
        self.assertIn("Status: 5.1.1", text)
        self.assertIn("routed local, not a local address", text)
        self.assertNotIn("c@example.net", text.split("message/delivery-status")[1].split("--")[0])

    async def test_relay_route_goes_to_the_relay_host(self):
        runner = self.runner(self.routing())
        seen = []

        async def to_host(reactor, host, port, sender, addresses, opener, size, helo, **kw):
            seen.append((host, port, addresses, kw["require_tls"]))
            return DeliveryResult(results={a: (250, "2.0.0", "ok") for a in addresses}, host=host)
        runner.deliver_to_host = to_host
        await self.enqueue(["a@hq.example"])
        await self.at(runner, 0)
        self.assertEqual(seen, [("smtp.hq.example", 587, ["a@hq.example"], False)])
        self.assertEqual(self.remote.calls, [])


class RecoverTests(RunnerTestCase):

    async def test_lost_file_bounces_and_is_deleted(self):
        message = await self.enqueue(["friend@example.net", "other@example.net"])
        os.unlink(self.store._file(message.queue_id))
        runner = self.runner()              # startService: recover(), then the lost bounce
        while runner._running:
            await defer.DeferredList(list(runner._running))
        queued = await self.store.list()
        self.assertNotIn(message.queue_id, [m.queue_id for m in queued])
        [bounce] = await self.dsns("failed")
        text = bounce.decode()
        self.assertIn(f"To: {SENDER}\r\n", text)
        self.assertIn("Final-Recipient: rfc822; friend@example.net", text)
        self.assertIn("Final-Recipient: rfc822; other@example.net", text)
        self.assertIn(LOST_REASON, text)
        await self.at(runner, 0)
        self.assertEqual([c[1] for c in self.remote.calls], ["example.org"])   # only the DSN
        self.assertEqual(await self.store.list(), [])


class SMTPUTF8NeedTests(RunnerTestCase):

    async def test_what_needs_smtputf8(self):
        plain = await self.enqueue(["a@example.net"])
        utf8 = await self.enqueue(["a@example.net"], smtputf8=True)
        self.assertFalse(needs_smtputf8(plain, ["a@example.net"], header8bit=True))
        self.assertTrue(needs_smtputf8(plain, ["jörg@example.net"], header8bit=False))
        self.assertFalse(needs_smtputf8(utf8, ["a@example.net"], header8bit=False))
        self.assertTrue(needs_smtputf8(utf8, ["a@example.net"], header8bit=True))
        self.assertTrue(utf8.smtputf8)                    # kept by the store

    def test_scan_8bit(self):
        cases = {b"Subject: hi\r\n\r\nplain\r\n": (False, False),
                 b"Subject: hi\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n": (True, False),
                 "Subject: Grüße\r\n\r\nplain\r\n".encode(): (True, True),
                 b"Subject: hi\n\nGr\xc3\xbc\n": (True, False)}
        for data, expected in cases.items():
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(data)
            self.assertEqual(scan_8bit(path), expected, data)

    async def test_sent_with_the_flag(self):
        runner = self.runner()
        await self.enqueue(["a@example.net"], body="Subject: Grüße\r\n\r\nhi\r\n".encode(), smtputf8=True)
        await self.enqueue(["b@example.net"], body="Subject: hi\r\n\r\nGrüße\r\n".encode())
        await self.at(runner, 0)
        flags = sorted((c[2][0], c[3]["smtputf8"], c[3]["eightbit"]) for c in self.remote.calls)
        self.assertEqual(flags, [("a@example.net", True, True), ("b@example.net", False, True)])


class Counting(LineReceiver):
    """A minimal SMTP server counting connections and commands (PIPELINING offered)."""

    def connectionMade(self):
        self.factory.connections += 1
        self.in_data = False
        self.sendLine(b"220 counting ESMTP")

    def lineReceived(self, line):
        f = self.factory
        if self.in_data:
            if line == b".":
                self.in_data = False
                f.messages += 1
                self.sendLine(b"250 2.0.0 queued")
            return
        text = line.decode()
        f.commands.append(text)
        verb = text.split()[0].upper()
        if verb == "EHLO":
            self.sendLine(b"250-counting\r\n250-PIPELINING\r\n250 8BITMIME")
        elif verb == "DATA":
            self.in_data = True
            self.sendLine(b"354 go")
        elif verb == "QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")


class ConnectionReuseTests(RunnerTestCase):
    """The real runner and client with the real reactor: a relay on 127.0.0.1."""

    def setUp(self):
        super().setUp()
        self.now = reactor.seconds

    def serve(self):
        f = protocol.Factory.forProtocol(Counting)
        f.connections, f.messages, f.commands = 0, 0, []
        listener = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        return f, listener.getHost().port

    def real_runner(self, port, reuse):
        relays = {"r": Relay("r", "127.0.0.1", port, tls="none")}
        routing = parse_routing({"default": "relay:r"}, relays, "x.ini")
        runner = QueueRunner(self.store, self.services,
                             settings(per_destination=1, connection_reuse_time=reuse, timeout=10),
                             routing, reactor=reactor,
                             spool_dir=os.path.join(self.datadir, "spool", "incoming"))
        runner.startService()
        self.addCleanup(runner.stopService)
        return runner

    async def deliver_all(self, reuse):
        f, port = self.serve()
        runner = self.real_runner(port, reuse)
        for i in range(4):
            await self.enqueue([f"r{i}@example.net"])
        await self.settle(runner)
        self.assertEqual(await self.store.list(), [])
        self.assertEqual(f.messages, 4)
        return f, runner

    async def test_one_connection_for_due_messages_to_one_destination(self):
        f, runner = await self.deliver_all(reuse=2.0)
        self.assertEqual(f.connections, 1)
        self.assertEqual(runner.connections.reused, 3)
        verbs = [c.split()[0].upper() for c in f.commands]
        self.assertEqual(verbs, ["EHLO"] + ["MAIL", "RCPT", "DATA", "RSET"] * 3 + ["MAIL", "RCPT", "DATA"])
        self.assertEqual(runner.connections.idle(), 1)
        await runner.stopService()                     # closes the idle connection with QUIT
        self.assertEqual(f.commands[-1], "QUIT")
        self.assertEqual(runner.connections.idle(), 0)

    async def test_reuse_off_connects_per_message(self):
        f, runner = await self.deliver_all(reuse=0.0)
        self.assertEqual(f.connections, 4)
        self.assertEqual(f.commands.count("QUIT"), 4)
        self.assertEqual(runner.connections.reused, 0)

    async def test_idle_connection_closed_after_the_reuse_time(self):
        f, runner = await self.deliver_all(reuse=0.2)
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(runner.connections.idle(), 0)
        self.assertEqual(f.commands[-1], "QUIT")
        await self.enqueue(["later@example.net"])
        await self.settle(runner)
        self.assertEqual(f.connections, 2)

    async def test_connection_dropped_while_idle_means_a_new_one(self):
        f, runner = await self.deliver_all(reuse=30.0)
        [[(session, _timer)]] = runner.connections._idle.values()
        session.proto.transport.loseConnection()        # as a server's idle timeout would
        await task.deferLater(reactor, 0.1, lambda: None)
        await self.enqueue(["again@example.net"])
        await self.settle(runner)
        self.assertEqual(f.connections, 2)
        self.assertEqual(f.messages, 5)
        self.assertEqual(await self.store.list(), [])
