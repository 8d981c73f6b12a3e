"""The outbound queue end to end (issue 4): a sending jdmail whose [dns] servers is the
loopback DNS fixture and whose [queue] smtp_port is a second, receiving jdmail's SMTP
port (the test-only override: no port 25 needed)."""

import email
import email.policy
import smtplib
import time

from twisted.trial.unittest import TestCase

from tests.e2e import token, unverified_context, wait_for
from tests.fixtures.dns import running_dns
from tests.fixtures.server import running_server

SENDER = "bob@example.org"
PASSWORD = "secret"


def body(tok, subject="queue test"):
    return (f"From: <{SENDER}>\r\nTo: <friend@example.net>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{tok}@example.org>\r\n\r\nHello {tok}\r\n").encode()


class QueueTestCase(TestCase):

    receiver_users = (("friend@example.net", "pw"),)
    receiver_domains = ("example.net",)
    sender_users = ((SENDER, PASSWORD),)

    def extra(self):
        """More sender config: {section: {key: value}}."""
        return {}

    def extra_ini(self):
        return ""

    def relay_ini(self, routing):
        """[relay:hq]: the receiver's submission port, STARTTLS (self-signed, so
        opportunistic) and AUTH as bob@example.org (a user on the receiver too)."""
        return (f"[relay:hq]\nhost = 127.0.0.1\nport = {self.receiver.ports['submission']}\n"
                f"tls = starttls\nusername = {SENDER}\npassword = relaypw\n"
                f"[routing]\n{routing}\n")

    def setUp(self):
        self.receiver = running_server(self, users=self.receiver_users, domains=self.receiver_domains)
        self.dns = running_dns(self, {
            "example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
            "mx1.example.net": {"A": ["127.0.0.2"]},          # nothing listens there: refused
            "mx2.example.net": {"A": ["127.0.0.1"]},
        })
        overrides = {
            "dns": {"servers": self.dns.address},
            "queue": {"smtp_port": str(self.receiver.ports["smtp"]),
                      "scan_interval": "100ms", "min_backoff": "1s", "max_backoff": "2s"},
            "smtp": {"mynetworks": "127.0.0.0/8"},
        }
        for section, values in self.extra().items():
            overrides.setdefault(section, {}).update(values)
        self.sender = running_server(self, users=self.sender_users, domains=("example.org",),
                                     overrides=overrides, extra_ini=self.extra_ini())

    def submit(self, rcpts, data, user=SENDER, password=PASSWORD, **kw):
        c = smtplib.SMTP("127.0.0.1", self.sender.ports["submission"], timeout=10)
        self.addCleanup(c.close)
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.login(user, password)
        return c.sendmail(user, rcpts, data, **kw)

    def found(self, server, address, tok):
        return [data for data in server.read_messages(address) if tok.encode() in data]


class DirectDeliveryTests(QueueTestCase):

    def test_first_mx_down(self):
        tok = token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok)), {})
        [got] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok), timeout=20)
        self.assertIn(b"Hello " + tok.encode(), got)
        # the sender's Return-Path/Delivered-To are not handed on: one of each, the receiver's
        self.assertEqual(got.count(b"Return-Path:"), 1)
        self.assertEqual(got.count(b"Delivered-To:"), 1)
        self.assertEqual(got.count(b"Received:"), 2)
        first = got.split(b"Received:")[1]          # the receiver's: STARTTLS was used
        self.assertIn(b"using TLS", first)
        self.assertIn(b"with ESMTPS id", first)

    def test_smtputf8_goes_with_smtputf8(self):
        """Received with SMTPUTF8 and a UTF-8 header: MAIL says SMTPUTF8 to the receiving
        jdmail, which offers it (its Received: line says UTF8SMTPS)."""
        tok = token()
        data = f"From: <{SENDER}>\r\nTo: <friend@example.net>\r\nSubject: Grüße {tok}\r\n\r\nHallo\r\n"
        self.assertEqual(self.submit(["friend@example.net"], data.encode(), mail_options=["SMTPUTF8"]), {})
        [got] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok), timeout=20)
        self.assertIn(f"Subject: Grüße {tok}".encode(), got)
        first = got.split(b"Received:")[1]
        self.assertIn(b"with UTF8SMTPS id", first)

    def test_trusted_network_relays_without_auth(self):
        tok = token()
        c = smtplib.SMTP("127.0.0.1", self.sender.ports["smtp"], timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(c.sendmail("someone@elsewhere.test", ["friend@example.net"], body(tok)), {})
        wait_for(lambda: self.found(self.receiver, "friend@example.net", tok), timeout=20)
        self.assertTrue(self.found(self.receiver, "friend@example.net", tok))

    def test_5xx_bounces_to_local_sender(self):
        tok = token()
        self.assertEqual(self.submit(["nobody@example.net"], body(tok)), {})
        [dsn] = wait_for(lambda: self.found(self.sender, SENDER, tok), timeout=20)
        msg = email.message_from_bytes(dsn, policy=email.policy.compat32)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertIn("Undelivered", msg["Subject"])
        text = dsn.decode("utf-8", "replace")
        self.assertIn("Final-Recipient: rfc822; nobody@example.net", text)
        self.assertIn("Action: failed", text)
        self.assertIn("Status: 5.1.1", text)
        self.assertIn("Diagnostic-Code: smtp; 550", text)
        self.assertIn("Reporting-MTA: dns; mail.test", text)
        self.assertEqual(self.found(self.receiver, "friend@example.net", tok), [])


class QueueCtlTests(QueueTestCase):

    def test_queue_commands_on_running_server(self):
        working = dict(self.dns.records)
        self.dns.update({"example.net": {"MX": [(10, "mx1.example.net")]},
                         "mx1.example.net": {"A": ["127.0.0.2"]}})       # refused: deferred
        tok1, tok2 = token(), token()
        self.submit(["friend@example.net"], body(tok1))
        self.submit(["friend@example.net"], body(tok2))

        def listed():
            out = self.sender.ctl("queue", "list").stdout
            return out if out.count(" deferred ") == 2 else None
        out = wait_for(listed, timeout=20)
        self.assertIn("2 message(s)", out)
        ids = [line.split()[0] for line in out.splitlines() if line[:1].strip() and "<" in line]
        self.assertEqual(len(ids), 2, out)
        first, second = ids
        show = self.sender.ctl("queue", "show", first).stdout
        self.assertIn(f"id: {first}", show)
        self.assertIn(f"sender: <{SENDER}>", show)
        self.assertIn("recipient: friend@example.net state=deferred", show)
        self.assertIn("connect to 127.0.0.2", show)

        self.assertEqual(self.sender.ctl("queue", "hold", first).stdout, f"held {first}\n")
        self.assertIn("held: yes", self.sender.ctl("queue", "show", first).stdout)
        self.assertEqual(self.sender.ctl("queue", "delete", second).stdout, f"deleted {second}\n")
        p = self.sender.ctl("queue", "show", second, check=False)
        self.assertEqual((p.returncode, p.stderr), (1, f"jdmailctl: {second} is not queued\n"))

        self.dns.update(working)
        self.assertEqual(self.sender.ctl("queue", "retry", first).stdout, f"{first} is due now\n")
        self.assertIn("flushed", self.sender.ctl("queue", "flush").stdout)
        # held: not delivered even though due
        time.sleep(1.5)
        self.assertEqual(self.found(self.receiver, "friend@example.net", tok1), [])
        self.assertEqual(self.sender.ctl("queue", "release", first).stdout, f"released {first}\n")
        wait_for(lambda: self.found(self.receiver, "friend@example.net", tok1), timeout=20)
        self.assertTrue(self.found(self.receiver, "friend@example.net", tok1))
        self.assertEqual(self.found(self.receiver, "friend@example.net", tok2), [])
        wait_for(lambda: "0 message(s)" in self.sender.ctl("queue", "list").stdout, timeout=10)
        self.assertIn("0 message(s)", self.sender.ctl("queue", "list").stdout)


class RelayhostTests(QueueTestCase):
    """Everything through one smarthost: STARTTLS + AUTH on the receiver's submission port;
    the MX records lead nowhere, so only the relay can deliver."""

    receiver_users = (("friend@example.net", "pw"), (SENDER, "relaypw"))
    receiver_domains = ("example.net", "example.org")

    def extra_ini(self):
        return self.relay_ini("default = relay:hq")

    def test_smarthost_starttls_auth(self):
        self.dns.update({"example.net": {"MX": [(10, "mx1.example.net")]},
                         "mx1.example.net": {"A": ["127.0.0.2"]}})
        tok = token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok)), {})
        [got] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok), timeout=20)
        first = got.split(b"Received:")[1]
        self.assertIn(f"(Authenticated sender: {SENDER})".encode(), first)
        self.assertIn(b"ESMTPSA", first)


class RouteTests(QueueTestCase):
    """sender:bob@example.org goes through [relay:hq], recipient:example.com through
    [relay:inbound] (the receiver's MX port, no AUTH); carol's mail to example.net goes
    direct to the MX; recipient:blocked.example is refused at RCPT."""

    receiver_users = (("friend@example.net", "pw"), ("friend@example.com", "pw"), (SENDER, "relaypw"))
    receiver_domains = ("example.net", "example.com", "example.org")
    sender_users = ((SENDER, PASSWORD), ("carol@example.org", "carolpw"))

    def extra_ini(self):
        return (self.relay_ini(f"sender:{SENDER} = relay:hq\nrecipient:example.com = relay:inbound\n"
                               "recipient:blocked.example = reject Mail to blocked.example is not accepted")
                + f"[relay:inbound]\nhost = 127.0.0.1\nport = {self.receiver.ports['smtp']}\n")

    def carol(self, rcpts, data):
        return self.submit(rcpts, data, user="carol@example.org", password="carolpw")

    def test_per_sender_route(self):
        tok1, tok2 = token(), token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok1)), {})
        self.assertEqual(self.carol(["friend@example.net"], body(tok2)), {})
        [relayed] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok1), timeout=20)
        [direct] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok2), timeout=20)
        # the receiver's own Received: line (the first one) says how the message came in
        first = lambda m: m.split(b"Received:")[1]      # noqa: E731
        self.assertIn(f"(Authenticated sender: {SENDER})".encode(), first(relayed))
        self.assertIn(b"ESMTPSA", first(relayed))
        self.assertNotIn(b"Authenticated sender", first(direct))
        self.assertIn(b"with ESMTPS id", first(direct))

    def test_per_domain_route(self):
        """example.com has no DNS records at all (direct: 5.1.2): only the relay delivers it."""
        tok = token()
        self.assertEqual(self.carol(["friend@example.com"], body(tok)), {})
        [got] = wait_for(lambda: self.found(self.receiver, "friend@example.com", tok), timeout=20)
        self.assertIn(b"with ESMTPS id", got.split(b"Received:")[1])
        wait_for(lambda: "0 message(s)" in self.sender.ctl("queue", "list").stdout, timeout=10)
        self.assertEqual(self.found(self.sender, "carol@example.org", tok), [])  # no bounce

    def test_reject_route_refused_at_rcpt(self):
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
            self.carol(["someone@blocked.example"], body(token()))
        [(code, text)] = cm.exception.recipients.values()
        self.assertEqual(code, 550)
        self.assertEqual(text, b"5.7.1 <someone@blocked.example>: Mail to blocked.example is not accepted")
        self.assertIn("0 message(s)", self.sender.ctl("queue", "list").stdout)


class ScriptedMX:
    """A tiny SMTP server in a thread: RCPT answers come from ``rcpt_replies`` in turn
    (then 250); it records each accepted message."""

    def __init__(self, rcpt_replies):
        import socket
        import threading
        self.rcpt_replies = list(rcpt_replies)
        self.messages = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self._session(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _session(self, conn):
        f = conn.makefile("rb")
        send = lambda text: conn.sendall(text.encode() + b"\r\n")     # noqa: E731
        send("220 scripted.test ESMTP")
        accepted = 0
        while True:
            line = f.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                send("250 scripted.test")
            elif verb == b"MAIL":
                send("250 2.1.0 ok")
            elif verb == b"RCPT":
                reply = self.rcpt_replies.pop(0) if self.rcpt_replies else "250 2.1.5 ok"
                accepted += reply.startswith("2")
                send(reply)
            elif verb == b"DATA":
                if not accepted:
                    send("554 5.5.1 no valid recipients")
                    continue
                send("354 go ahead")
                data = b""
                while True:
                    chunk = f.readline()
                    if chunk in (b".\r\n", b""):
                        break
                    data += chunk
                self.messages.append(data)
                send("250 2.0.0 accepted")
            elif verb == b"QUIT":
                send("221 bye")
                return
            else:
                send("250 ok")

    def stop(self):
        self.sock.close()


class RetryTests(QueueTestCase):

    def extra(self):
        self.mx = ScriptedMX(["451 4.2.0 try again later", "451 4.2.0 still busy"])
        self.addCleanup(self.mx.stop)
        return {"queue": {"smtp_port": str(self.mx.port)}}

    def test_4xx_then_success(self):
        tok = token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok)), {})
        [data] = wait_for(lambda: [m for m in self.mx.messages if tok.encode() in m], timeout=30)
        self.assertIn(b"Hello " + tok.encode(), data)
        self.assertEqual(self.mx.rcpt_replies, [])
        wait_for(lambda: "0 message(s)" in self.sender.ctl("queue", "list").stdout, timeout=10)
        self.assertEqual(self.found(self.sender, SENDER, tok), [])      # no bounce, no warning


class EightBitTests(QueueTestCase):
    """The scripted MX does not offer 8BITMIME: an 8-bit body is converted to
    quoted-printable (RFC 6152 3); 8-bit in a header cannot be, and bounces (5.6.3)."""

    def extra(self):
        self.mx = ScriptedMX([])
        self.addCleanup(self.mx.stop)
        return {"queue": {"smtp_port": str(self.mx.port)}}

    def test_8bit_to_7bit_server_converted_or_bounced(self):
        tok1, tok2, tok3 = token(), token(), token()
        self.submit(["friend@example.net"], body(tok1) + "Grüße\r\n".encode())
        self.submit(["friend@example.net"], body(tok2))
        self.submit(["friend@example.net"], body(tok3, subject="Grüße"))
        [converted] = wait_for(lambda: [m for m in self.mx.messages if tok1.encode() in m], timeout=20)
        self.assertTrue(converted.isascii())
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable\r\n", converted)
        self.assertIn(b"\r\nGr=C3=BC=C3=9Fe\r\n", converted)
        parsed = email.message_from_bytes(converted, policy=email.policy.default)
        self.assertIn("Grüße", parsed.get_payload(decode=True).decode())
        wait_for(lambda: [m for m in self.mx.messages if tok2.encode() in m], timeout=20)
        [dsn] = wait_for(lambda: self.found(self.sender, SENDER, tok3), timeout=20)
        self.assertIn(b"Status: 5.6.3", dsn)
        self.assertEqual([m for m in self.mx.messages if tok3.encode() in m], [])
        self.assertEqual(self.found(self.sender, SENDER, tok1), [])


class CrashTests(QueueTestCase):

    def test_kill_9_mid_delivery_then_restart(self):
        """1,000 messages queued, the sender killed (-9) while delivering; after the restart
        every message arrives (at least once)."""
        n = 1000
        toks = [token() for _ in range(n)]
        c = smtplib.SMTP("127.0.0.1", self.sender.ports["submission"], timeout=30)
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.login(SENDER, PASSWORD)
        for tok in toks:
            self.assertEqual(c.sendmail(SENDER, ["friend@example.net"], body(tok)), {})
        c.close()
        self.sender.kill()
        self.sender.start()

        def arrived():
            seen = b"".join(open(p, "rb").read() for p in self.receiver.messages("friend@example.net"))
            missing = [t for t in toks if t.encode() not in seen]
            return not missing
        self.assertTrue(wait_for(arrived, timeout=120, interval=0.5))
        wait_for(lambda: "0 message(s)" in self.sender.ctl("queue", "list").stdout, timeout=20)
        self.assertIn("0 message(s)", self.sender.ctl("queue", "list").stdout)


class DSNTests(QueueTestCase):
    """RFC 3461 parameters stored and honoured; delay warning; lifetime expiry."""

    def extra(self):
        return {"queue": {"delay_warning": "1s", "lifetime": "4s"}}

    def refuse(self):
        self.dns.update({"example.net": {"MX": [(10, "mx1.example.net")]},
                         "mx1.example.net": {"A": ["127.0.0.2"]}})

    def test_parameters_stored_then_warning_then_expiry(self):
        self.refuse()
        tok = token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok),
                                     mail_options=["RET=HDRS", "ENVID=env+2Bid"],
                                     rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;friend@example.net"]),
                         {})
        out = self.sender.ctl("queue", "list").stdout
        queue_id = out.split()[0]
        show = self.sender.ctl("queue", "show", queue_id).stdout
        self.assertIn("ret: HDRS\nenvid: env+2Bid\n", show)
        self.assertIn("notify=FAILURE,DELAY orcpt=rfc822;friend@example.net", show)

        def notices(kind):
            return [m for m in self.found(self.sender, SENDER, tok) if kind in m]
        [warning] = wait_for(lambda: notices(b"Action: delayed"), timeout=20)
        self.assertIn(b"Original-Envelope-Id: env+id", warning)     # xtext decoded
        [bounce] = wait_for(lambda: notices(b"Action: failed"), timeout=30)
        self.assertIn(b"Original-Recipient: rfc822; friend@example.net", bounce)
        self.assertIn(b"delivery time expired", bounce)
        self.assertIn(b"text/rfc822-headers", bounce)          # RET=HDRS
        self.assertNotIn(b"Hello " + tok.encode(), bounce)
        self.assertEqual(len(notices(b"Action: delayed")), 1)  # warned once

    def test_notify_success_and_never(self):
        tok1, tok2 = token(), token()
        self.submit(["friend@example.net"], body(tok1), rcpt_options=["NOTIFY=SUCCESS"])
        self.submit(["nobody@example.net"], body(tok2), rcpt_options=["NOTIFY=NEVER"])
        [notice] = wait_for(lambda: self.found(self.sender, SENDER, tok1 + "@"), timeout=20)
        self.assertIn(b"Action: delivered", notice)
        wait_for(lambda: "0 message(s)" in self.sender.ctl("queue", "list").stdout, timeout=20)
        self.assertEqual(self.found(self.sender, SENDER, tok2), [])   # NEVER: no bounce
