"""Outbound delivery (issue 4): MX resolution against the loopback DNS fixture, and the SMTP
client delivering to a real receiving jdmail (tests/fixtures/server.py) and to small
scripted servers for what jdmail never does (no 8BITMIME, 421, no STARTTLS)."""

import io
import socket

from twisted.internet import defer, protocol, reactor, ssl
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from jdmail.queue.client import TemporaryDeliveryError, connect_host, deliver_to_domain, deliver_to_host
from jdmail.queue.downgrade import to_7bit
from jdmail.queue.mx import NullMX, PermanentDNSError, TemporaryDNSError, resolve_addresses, resolve_mx
from tests.fixtures.dns import resolver_for, running_dns
from tests.fixtures.server import running_server

MESSAGE = (b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\n"
           b"line one\r\n.leading dot\r\n..two dots\r\nbare lf line\nlast line without newline")


def message(data=MESSAGE):
    return lambda: io.BytesIO(data)


def free_port_on(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Scripted(LineReceiver):
    """A tiny SMTP server: replies from factory.script, records every command."""

    def connectionMade(self):
        self.in_data = False
        self.sendLine(self.factory.greeting.encode())
        if self.factory.greeting.startswith("421"):
            self.transport.loseConnection()

    def lineReceived(self, line):
        f = self.factory
        text = line.decode()
        if self.in_data:
            if text == ".":
                self.in_data = False
                self.sendLine(b"250 2.0.0 queued")
            else:
                f.body.append(text)
            return
        f.commands.append(text)
        verb = text.split()[0].upper()
        if verb == "EHLO":
            self.sendLine(("250-scripted\r\n" + "".join(f"250-{e}\r\n" for e in f.ext) + "250 HELP").encode())
        elif verb == "DATA":
            self.in_data = True
            self.sendLine(b"354 go")
        elif verb == "QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        elif verb == "RCPT" and "bad" in text:
            self.sendLine(b"550 5.1.1 no such user")
        else:
            self.sendLine(b"250 2.0.0 ok")


def scripted(testcase, ext=("PIPELINING", "SIZE 1000"), greeting="220 scripted ESMTP",
             interface="127.0.0.1", port=0):
    f = protocol.Factory.forProtocol(Scripted)
    f.ext, f.greeting, f.commands, f.body = list(ext), greeting, [], []
    listener = reactor.listenTCP(port, f, interface=interface)
    testcase.addCleanup(listener.stopListening)
    f.port = listener.getHost().port
    return f


class ResolveMXTests(unittest.TestCase):
    def setUp(self):
        self.dns = running_dns(self, {
            "example.test": {"MX": [(20, "mx2.example.test"), (10, "mx1.example.test"),
                                    (20, "mx3.example.test")]},
            "mx1.example.test": {"A": ["127.0.0.3", "127.0.0.5"], "AAAA": ["::1"]},
            "noaddr.example.test": {"TXT": ["no address here"]},
            "plain.test": {"A": ["127.0.0.7"]},
            "nomail.test": {"MX": [(0, ".")]},
            "broken.test": "SERVFAIL",
        })
        self.resolver = resolver_for(self.dns.port, self)

    async def _mx(self, name):
        return await resolve_mx(name, self.resolver)

    def test_preference_order_ties_shuffled(self):
        async def go():
            seen = set()
            for _ in range(30):
                mxs = await self._mx("example.test")
                self.assertEqual(mxs[0], (10, "mx1.example.test"))
                self.assertEqual(sorted(mxs[1:]), [(20, "mx2.example.test"), (20, "mx3.example.test")])
                seen.add(tuple(mxs))
            self.assertEqual(len(seen), 2, "equal preferences should be shuffled")
        return defer.ensureDeferred(go())

    def test_no_mx_falls_back_to_the_domain(self):
        async def go():
            self.assertEqual(await self._mx("plain.test"), [(0, "plain.test")])
        return defer.ensureDeferred(go())

    def test_null_mx(self):
        return self.assertFailure(defer.ensureDeferred(self._mx("nomail.test")), NullMX)

    def test_nxdomain(self):
        return self.assertFailure(defer.ensureDeferred(self._mx("nowhere.test")), PermanentDNSError)

    def test_servfail_is_temporary(self):
        return self.assertFailure(defer.ensureDeferred(self._mx("broken.test")), TemporaryDNSError)

    def test_addresses_a_then_aaaa(self):
        async def go():
            self.assertEqual(await resolve_addresses("mx1.example.test", self.resolver),
                             ["127.0.0.3", "127.0.0.5", "::1"])
            self.assertEqual(await resolve_addresses("noaddr.example.test", self.resolver), [])
            with self.assertRaises(PermanentDNSError):
                await resolve_addresses("gone.example.test", self.resolver)
        return defer.ensureDeferred(go())


class DeliverToRealJdmailTests(unittest.TestCase):
    """MX order with dead hosts first, per-recipient results, STARTTLS, dot-stuffing."""

    def setUp(self):
        self.server = running_server(self, users=(("bob@example.test", "secret"),), domains=("example.test",))
        self.port = self.server.ports["smtp"]

    def _dns(self, records):
        dns = running_dns(self, records)
        return resolver_for(dns.port, self)

    def test_first_mx_down_then_second_delivers_with_tls(self):
        resolver = self._dns({
            "example.test": {"MX": [(10, "down.example.test"), (20, "noaddr.example.test"),
                                    (30, "mx.example.test")]},
            "down.example.test": {"A": ["127.0.0.2"]},        # nothing listens there: refused
            "noaddr.example.test": {"TXT": ["no A"]},
            "mx.example.test": {"A": ["127.0.0.1"]},
        })

        async def go():
            result = await deliver_to_domain(
                reactor, "example.test", "alice@sender.test",
                ["bob@example.test", "nobody@example.test"], message(), len(MESSAGE), "client.test",
                resolver=resolver, port=self.port, timeout=10)
            self.assertEqual(result.mx, "mx.example.test")
            self.assertEqual([h for h, _ in result.attempts],
                             ["down.example.test[127.0.0.2]", "noaddr.example.test"])
            self.assertTrue(result.tls)
            self.assertFalse(result.tls_verified)
            code, enhanced, _ = result.results["bob@example.test"]
            self.assertEqual((code, enhanced[0]), (250, "2"))
            code, enhanced, _ = result.results["nobody@example.test"]
            self.assertEqual(code, 550)
            self.assertTrue(enhanced.startswith("5."))
            self.assertEqual(result.accepted(), ["bob@example.test"])
            self.assertEqual(result.permanent(), ["nobody@example.test"])
            for name in ("PIPELINING", "SIZE", "8BITMIME"):
                self.assertIn(name, result.extensions)
            [path] = self.server.messages("bob@example.test")
            with open(path, "rb") as f:
                stored = f.read()
            head = stored.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in stored else stored.split(b"\n\n", 1)[0]
            self.assertIn(b"using TLS", head)
            self.assertIn(b"from client.test", head)
            body = stored.replace(b"\r\n", b"\n")
            self.assertIn(b"\nline one\n.leading dot\n..two dots\nbare lf line\nlast line without newline",
                          body)
        return defer.ensureDeferred(go())

    def test_null_mx_and_nxdomain_give_permanent_results(self):
        resolver = self._dns({"nomail.test": {"MX": [(0, ".")]}})

        async def go():
            r = await deliver_to_domain(reactor, "nomail.test", "a@s.test", ["x@nomail.test"], message(),
                                        len(MESSAGE), "client.test", resolver=resolver, port=self.port)
            self.assertEqual(r.results["x@nomail.test"][:2], (556, "5.1.10"))
            r = await deliver_to_domain(reactor, "nowhere.test", "a@s.test", ["x@nowhere.test"], message(),
                                        len(MESSAGE), "client.test", resolver=resolver, port=self.port)
            self.assertEqual(r.results["x@nowhere.test"][:2], (550, "5.1.2"))
        return defer.ensureDeferred(go())

    def test_eightbit_to_jdmail_is_accepted(self):
        data = "From: a@s.test\r\nSubject: 8bit\r\n\r\nGrüße aus Köln\r\n".encode("utf-8")

        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", self.port, "a@s.test", ["bob@example.test"],
                                      message(data), len(data), "client.test", eightbit=True, timeout=10)
            self.assertEqual(r.results["bob@example.test"][0], 250)
            [path] = self.server.messages("bob@example.test")
            with open(path, "rb") as f:
                self.assertIn("Grüße aus Köln".encode("utf-8"), f.read())
        return defer.ensureDeferred(go())

    def test_starttls_and_auth_on_submission(self):
        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", self.server.ports["submission"], "bob@example.test",
                                      ["bob@example.test"], message(), len(MESSAGE), "client.test",
                                      require_tls=True, tls_context=ssl.CertificateOptions(verify=False),
                                      auth=("bob@example.test", "secret"), timeout=10)
            self.assertEqual(r.results["bob@example.test"][0], 250)
            self.assertTrue(r.tls)
            [path] = self.server.messages("bob@example.test")
            with open(path, "rb") as f:
                self.assertIn(b"Authenticated sender: bob@example.test", f.read())
            with self.assertRaises(TemporaryDeliveryError) as cm:
                await deliver_to_host(reactor, "127.0.0.1", self.server.ports["submission"], "bob@example.test",
                                      ["bob@example.test"], message(), len(MESSAGE), "client.test",
                                      require_tls=True, tls_context=ssl.CertificateOptions(verify=False),
                                      auth=("bob@example.test", "wrong"), timeout=10)
            self.assertIn("AUTH", str(cm.exception))

        return defer.ensureDeferred(go())

    async def test_implicit_tls_and_auth_on_smtps(self):
        r = await deliver_to_host(reactor, "127.0.0.1", self.server.ports["smtps"], "bob@example.test",
                                  ["bob@example.test"], message(), len(MESSAGE), "client.test",
                                  implicit_tls=True, tls_context=ssl.CertificateOptions(verify=False),
                                  auth=("bob@example.test", "secret"), timeout=10)
        self.assertEqual(r.results["bob@example.test"][0], 250)
        self.assertTrue(r.tls)
        self.assertNotIn("STARTTLS", r.extensions)      # TLS from the first octet
        [path] = self.server.messages("bob@example.test")
        with open(path, "rb") as f:
            received = f.read().split(b"Received:")[1]
        self.assertIn(b"Authenticated sender: bob@example.test", received)
        self.assertIn(b"ESMTPSA", received)

    def test_required_tls_verifies_the_certificate(self):
        # jdmail's self-signed certificate: opportunistic TLS takes it, required TLS does not.
        d = defer.ensureDeferred(deliver_to_host(reactor, "127.0.0.1", self.port, "a@s.test", ["bob@example.test"],
                                                 message(), len(MESSAGE), "client.test", require_tls=True,
                                                 tls_hostname="mail.test", timeout=10))
        d = self.assertFailure(d, TemporaryDeliveryError)
        d.addCallback(lambda e: self.assertIn("connection lost", e.reason))
        d.addCallback(lambda _: self.assertEqual(self.server.messages("bob@example.test"), []))
        return d

    def test_421_greeting_moves_to_the_next_host(self):
        scripted(self, greeting="421 4.3.2 busy, try later", interface="127.0.0.3", port=self.port)
        resolver = self._dns({
            "example.test": {"MX": [(10, "busy.example.test"), (20, "mx.example.test")]},
            "busy.example.test": {"A": ["127.0.0.3"]},
            "mx.example.test": {"A": ["127.0.0.1"]},
        })

        async def go():
            r = await deliver_to_domain(reactor, "example.test", "a@s.test", ["bob@example.test"], message(),
                                        len(MESSAGE), "client.test", resolver=resolver, port=self.port,
                                        timeout=10)
            self.assertEqual(r.mx, "mx.example.test")
            self.assertIn("421", r.attempts[0][1])
            self.assertEqual(r.results["bob@example.test"][0], 250)
        return defer.ensureDeferred(go())


class ScriptedServerTests(unittest.TestCase):
    def test_pipelining_size_and_per_recipient(self):
        f = scripted(self, ext=("PIPELINING", "SIZE 100000", "8BITMIME"))

        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test", "bad@x.test"],
                                      message(), len(MESSAGE), "client.test", eightbit=True, timeout=5)
            self.assertEqual(r.results["good@x.test"], (250, "2.0.0", "queued"))
            self.assertEqual(r.results["bad@x.test"], (550, "5.1.1", "no such user"))
            self.assertEqual(f.commands[1], f"MAIL FROM:<a@s.test> SIZE={len(MESSAGE)} BODY=8BITMIME")
            self.assertEqual(f.commands[2:5], ["RCPT TO:<good@x.test>", "RCPT TO:<bad@x.test>", "DATA"])
            self.assertIn("..leading dot", f.body)
            self.assertIn("...two dots", f.body)
        return defer.ensureDeferred(go())

    def test_eightbit_to_seven_bit_server_fails_per_recipient(self):
        f = scripted(self, ext=("PIPELINING",))

        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"],
                                      message(), len(MESSAGE), "client.test", eightbit=True, timeout=5)
            self.assertEqual(r.results["good@x.test"][:2], (554, "5.6.3"))
            self.assertFalse(any(c.startswith("MAIL") for c in f.commands))
        return defer.ensureDeferred(go())

    def test_too_big_for_the_server(self):
        f = scripted(self, ext=("SIZE 10",))

        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"],
                                      message(), len(MESSAGE), "client.test", timeout=5)
            self.assertEqual(r.results["good@x.test"][:2], (552, "5.3.4"))
        return defer.ensureDeferred(go())

    def test_no_pipelining_sends_one_by_one(self):
        f = scripted(self, ext=())

        async def go():
            r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["bad@x.test", "good@x.test"],
                                      message(), len(MESSAGE), "client.test", timeout=5)
            self.assertEqual(r.accepted(), ["good@x.test"])
            self.assertEqual(f.commands[1], "MAIL FROM:<a@s.test>")
        return defer.ensureDeferred(go())

    def test_require_tls_without_starttls_is_temporary(self):
        f = scripted(self, ext=("PIPELINING",))
        d = defer.ensureDeferred(deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"],
                                                 message(), len(MESSAGE), "client.test", require_tls=True,
                                                 timeout=5))
        return self.assertFailure(d, TemporaryDeliveryError)

    def test_auth_never_in_plaintext(self):
        f = scripted(self, ext=("AUTH PLAIN LOGIN",))

        async def go():
            with self.assertRaises(TemporaryDeliveryError):
                await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"], message(),
                                      len(MESSAGE), "client.test", auth=("u", "p"), timeout=5)
            self.assertFalse(any(c.startswith("AUTH") for c in f.commands))
        return defer.ensureDeferred(go())

    def test_connection_refused_is_temporary(self):
        port = free_port_on("127.0.0.1")
        d = defer.ensureDeferred(deliver_to_host(reactor, "127.0.0.1", port, "a@s.test", ["x@y.test"],
                                                 message(), 1, "client.test", timeout=5))
        return self.assertFailure(d, TemporaryDeliveryError)


class SessionTests(unittest.TestCase):
    """One connection, several transactions (connection reuse), and SMTPUTF8."""

    async def test_keep_then_rset_then_another_transaction(self):
        f = scripted(self, ext=("PIPELINING", "8BITMIME"))
        r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"], message(),
                                  len(MESSAGE), "client.test", timeout=5, keep=True)
        session = r.session
        self.assertIsNotNone(session)
        self.assertTrue(session.usable)
        self.assertTrue(await session.reset())
        r2 = await session.deliver("a@s.test", ["good2@x.test"], message(), len(MESSAGE))
        self.assertEqual(r2.results["good2@x.test"], (250, "2.0.0", "queued"))
        await session.close()
        verbs = [c.split()[0].upper() for c in f.commands]
        self.assertEqual(verbs, ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"])
        self.assertFalse(session.usable)

    async def test_without_keep_the_connection_is_closed(self):
        f = scripted(self, ext=("PIPELINING",))
        r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"], message(),
                                  len(MESSAGE), "client.test", timeout=5)
        self.assertIsNone(r.session)
        self.assertEqual(f.commands[-1], "QUIT")

    async def test_reset_on_a_dropped_connection_is_false(self):
        f = scripted(self, ext=())
        session = await connect_host(reactor, "127.0.0.1", f.port, "client.test", timeout=5)
        session.proto.transport.loseConnection()
        await session.proto.closed_d
        self.assertFalse(await session.reset())
        await session.close()
        self.assertEqual(f.commands, ["EHLO client.test"])

    async def test_smtputf8_parameter_when_offered(self):
        f = scripted(self, ext=("PIPELINING", "8BITMIME", "SMTPUTF8"))
        r = await deliver_to_host(reactor, "127.0.0.1", f.port, "jörg@s.test", ["good@x.test"], message(),
                                  len(MESSAGE), "client.test", timeout=5, eightbit=True, smtputf8=True)
        self.assertEqual(r.accepted(), ["good@x.test"])
        self.assertEqual(f.commands[1], "MAIL FROM:<jörg@s.test> BODY=8BITMIME SMTPUTF8")

    async def test_smtputf8_not_offered_fails_each_recipient_with_5_6_7(self):
        f = scripted(self, ext=("PIPELINING", "8BITMIME"))
        r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["jörg@x.test", "b@x.test"],
                                  message(), len(MESSAGE), "client.test", timeout=5, smtputf8=True)
        self.assertEqual({a: v[:2] for a, v in r.results.items()},
                         {"jörg@x.test": (553, "5.6.7"), "b@x.test": (553, "5.6.7")})
        self.assertFalse(any(c.startswith("MAIL") for c in f.commands))

    async def test_eightbit_converted_for_a_seven_bit_server(self):
        f = scripted(self, ext=("PIPELINING",))
        data = "Subject: x\r\n\r\nGrüße\r\n".encode()

        async def downgrade():
            return to_7bit(data)
        r = await deliver_to_host(reactor, "127.0.0.1", f.port, "a@s.test", ["good@x.test"],
                                  message(data), len(data), "client.test", timeout=5, eightbit=True,
                                  downgrade=downgrade)
        self.assertEqual(r.accepted(), ["good@x.test"])
        self.assertEqual(f.commands[1], "MAIL FROM:<a@s.test>")        # no BODY=8BITMIME
        self.assertIn("Content-Transfer-Encoding: quoted-printable", f.body)
        self.assertIn("Gr=C3=BC=C3=9Fe", f.body)
