"""The outbound queue end to end (issue 4): a sending jdmail whose [dns] servers is the
loopback DNS fixture and whose [queue] smtp_port is a second, receiving jdmail's SMTP
port (the test-only override: no port 25 needed)."""

import email
import email.policy
import smtplib

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

    def setUp(self):
        self.receiver = running_server(self, users=(("friend@example.net", "pw"),),
                                       domains=("example.net",))
        self.dns = running_dns(self, {
            "example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
            "mx1.example.net": {"A": ["127.0.0.2"]},          # nothing listens there: refused
            "mx2.example.net": {"A": ["127.0.0.1"]},
        })
        self.sender = running_server(self, users=((SENDER, PASSWORD),), domains=("example.org",),
                                     overrides={
                                         "dns": {"servers": self.dns.address},
                                         "queue": {"smtp_port": str(self.receiver.ports["smtp"]),
                                                   "scan_interval": "100ms", "min_backoff": "1s",
                                                   "max_backoff": "2s"},
                                         "smtp": {"mynetworks": "127.0.0.0/8"},
                                     })

    def submit(self, rcpts, data, **kw):
        c = smtplib.SMTP("127.0.0.1", self.sender.ports["submission"], timeout=10)
        self.addCleanup(c.close)
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.login(SENDER, PASSWORD)
        return c.sendmail(SENDER, rcpts, data, **kw)

    def found(self, server, address, tok):
        out = []
        for path in server.messages(address):
            with open(path, "rb") as f:
                data = f.read()
            if tok.encode() in data:
                out.append(data)
        return out


class DirectDeliveryTests(QueueTestCase):

    def test_first_mx_down(self):
        tok = token()
        self.assertEqual(self.submit(["friend@example.net"], body(tok)), {})
        [got] = wait_for(lambda: self.found(self.receiver, "friend@example.net", tok), timeout=20)
        self.assertIn(b"Hello " + tok.encode(), got)

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
