"""The outbound queue against Postfix's smtp-sink (tests/fixtures/smtp_sink.py) as the
receiving MTA, found by MX lookup through the loopback DNS fixture: the message arrives
intact, one transaction per domain, with the configured HELO name and source address;
a 5xx from Postfix bounces with the right DSN fields; a message that needs SMTPUTF8
bounces with 5.6.7 (smtp-sink does not offer SMTPUTF8).

[queue] smtp_port points at smtp-sink's port (the test-only override: no port 25)."""

import email
import email.policy
import smtplib

from twisted.trial.unittest import TestCase

from tests.e2e import token, unverified_context, wait_for
from tests.fixtures.dns import running_dns
from tests.fixtures.server import running_server
from tests.fixtures.smtp_sink import running_sink

SENDER = "bob@example.org"
PASSWORD = "secret"
REJECT = "550 5.1.1 <friend@example.net>: Recipient address rejected: User unknown in local recipient table"


class SinkTestCase(TestCase):

    sink_options = ()

    def setUp(self):
        self.sink = running_sink(self, "127.0.0.1", self.sink_options, hostname="postfix.example.net")
        self.dns = running_dns(self, {
            "example.net": {"MX": [(10, "mx.example.net")]},
            "mx.example.net": {"A": ["127.0.0.1"]},
        })
        self.sender = running_server(self, users=((SENDER, PASSWORD),), domains=("example.org",), overrides={
            "dns": {"servers": self.dns.address},
            "queue": {"smtp_port": str(self.sink.port), "scan_interval": "100ms",
                      "min_backoff": "1s", "max_backoff": "2s",
                      "helo": "out.example.org", "source_address": "127.0.0.2"},
        })

    def submit(self, rcpts, data, **kw):
        c = smtplib.SMTP("127.0.0.1", self.sender.ports["submission"], timeout=10)
        self.addCleanup(c.close)
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.login(SENDER, PASSWORD)
        return c.sendmail(SENDER, rcpts, data, **kw)

    def queue_empty(self):
        return "0 message(s)" in self.sender.ctl("queue", "list").stdout

    def dumps_with(self, tok):
        return [d for d in self.sink.dumps() if tok.encode() in d.data]

    def bounces(self, tok):
        out = []
        for path in self.sender.messages(SENDER):
            with open(path, "rb") as f:
                data = f.read()
            if tok.encode() in data and b"multipart/report" in data:
                out.append(data)
        return out


class DeliveryTests(SinkTestCase):

    def test_arrives_intact_in_one_transaction_with_helo_and_source_address(self):
        tok = token()
        original = (f"From: <{SENDER}>\r\nTo: <friend@example.net>, <second@example.net>\r\n"
                    f"Subject: intact {tok}\r\nMessage-ID: <{tok}@example.org>\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                    ".a line starting with a dot\r\n..and two\r\n.\r\n\r\n"
                    "Grüße, 8-bit text\r\n" + "x" * 900 + "\r\n\tindented\r\nlast line\r\n").encode()
        self.assertEqual(self.submit(["friend@example.net", "second@example.net"], original), {})
        wait_for(lambda: self.dumps_with(tok) and self.queue_empty(), timeout=30)
        [dump] = self.dumps_with(tok)
        self.assertEqual(dump.client_addr, "127.0.0.2")           # [queue] source_address
        self.assertEqual(dump.helo, "out.example.org")            # [queue] helo
        self.assertEqual(dump.mail_args, f"<{SENDER}> BODY=8BITMIME")
        self.assertEqual(dump.rcpt_args, ["<friend@example.net>", "<second@example.net>"])
        sent = original.replace(b"\r\n", b"\n")
        self.assertTrue(dump.data.endswith(sent), dump.data[-300:])
        added = dump.data[:-len(sent)]                            # only the submission's Received:
        self.assertTrue(added.startswith(b"Received: from client.test"), added)
        self.assertEqual(added.count(b"\n") - added.count(b"\n\t"), 1, added)
        self.assertEqual(self.bounces(tok), [])


class RejectTests(SinkTestCase):
    """smtp-sink rejects every RCPT with a Postfix-style 550 5.1.1."""

    sink_options = ("-f", "RCPT", "-B", REJECT)

    def test_5xx_bounces_with_dsn_fields(self):
        tok = token()
        data = (f"From: <{SENDER}>\r\nTo: <friend@example.net>\r\nSubject: {tok}\r\n"
                f"Message-ID: <{tok}@example.org>\r\n\r\nHello\r\n").encode()
        self.assertEqual(self.submit(["friend@example.net"], data, mail_options=["ENVID=e1"],
                                     rcpt_options=["ORCPT=rfc822;friend@example.net"]), {})
        [dsn] = wait_for(lambda: self.bounces(tok), timeout=30)
        msg = email.message_from_bytes(dsn, policy=email.policy.compat32)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["To"], SENDER)
        self.assertIn("MAILER-DAEMON@", msg["From"])
        [notification, report, returned] = msg.get_payload()
        self.assertEqual(report.get_content_type(), "message/delivery-status")
        [per_message, per_rcpt] = report.get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; mail.test")
        self.assertEqual(per_message["Original-Envelope-Id"], "e1")
        self.assertEqual(per_rcpt["Final-Recipient"], "rfc822; friend@example.net")
        self.assertEqual(per_rcpt["Original-Recipient"], "rfc822; friend@example.net")
        self.assertEqual(per_rcpt["Action"], "failed")
        self.assertEqual(per_rcpt["Status"], "5.1.1")
        self.assertEqual(per_rcpt["Remote-MTA"], "dns; mx.example.net")
        self.assertEqual(per_rcpt["Diagnostic-Code"], "smtp; " + REJECT)
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn(b"Hello", dsn.split(b"message/rfc822")[1])
        self.assertIn("Recipient address rejected", notification.get_payload())
        self.assertEqual(self.dumps_with(tok), [])
        wait_for(self.queue_empty, timeout=10)
        self.assertTrue(self.queue_empty())


class SMTPUTF8Tests(SinkTestCase):
    """smtp-sink offers no SMTPUTF8: a non-ASCII envelope address, or a UTF-8 header in
    mail received with SMTPUTF8, bounces 5.6.7 (RFC 6531 3.2); plain mail still goes."""

    def test_needs_smtputf8_bounces_5_6_7(self):
        tok1, tok2, tok3 = token(), token(), token()
        self.submit(["jörg@example.net"],
                    f"Subject: {tok1}\r\nTo: <jörg@example.net>\r\n\r\nHallo\r\n".encode(),
                    mail_options=["SMTPUTF8"])
        self.submit(["friend@example.net"],
                    f"Subject: Grüße {tok2}\r\n\r\nHallo\r\n".encode(), mail_options=["SMTPUTF8"])
        self.submit(["friend@example.net"], f"Subject: {tok3}\r\n\r\nHallo\r\n".encode(),
                    mail_options=["SMTPUTF8"])          # nothing non-ASCII: goes without it
        for tok in (tok1, tok2):
            [dsn] = wait_for(lambda tok=tok: self.bounces(tok), timeout=30)
            self.assertIn(b"Action: failed\r\nStatus: 5.6.7\r\n", dsn)
            self.assertIn(b"Diagnostic-Code: X-jdmail; 5.6.7 the message needs SMTPUTF8, which the server "
                          b"does not offer (mx.example.net)", dsn)
            self.assertNotIn(b"Remote-MTA", dsn)            # our decision, not the server's reply
        self.assertIn("jörg@example.net".encode(), self.bounces(tok1)[0])
        [dump] = wait_for(lambda: self.dumps_with(tok3), timeout=30)
        self.assertEqual(dump.mail_args, f"<{SENDER}>")
        self.assertEqual(self.dumps_with(tok1) + self.dumps_with(tok2), [])
