"""Attacks on the SMTP framing, against a real jdmail: SMTP smuggling (an end-of-data
look-alike that another server would take for the end, RFC 5321 2.3.8 / 4.1.1.4)
and STARTTLS command injection (RFC 3207 4.2 / CVE-2011-0411)."""

from twisted.trial.unittest import TestCase

from tests.e2e import ALICE, BOB, SMTPHelpers, files_with, log_lines, token, wait_for

SMUGGLED = ("MAIL FROM:<evil-{tok}@attacker.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
            "From: <ceo@example.org>\r\nSubject: smuggled {tok}\r\n\r\nPay the invoice.\r\n")


class SmugglingTests(SMTPHelpers, TestCase):

    def transaction(self, payload):
        """One transaction on the MX port with ``payload`` (bytes) as DATA; returns
        every reply line that follows it up to a NOOP's reply."""
        c = self.raw()
        c.ehlo("relay.test")
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250, "2.1.5")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(payload + b"NOOP\r\n")
        replies = []
        while not replies or replies[-1] != (250, ["2.0.0 Ok"]):
            replies.append(c.reply())
        return replies

    def smuggle(self, separator):
        outer, inner = token(), token()
        payload = (f"From: <sender@remote.test>\r\nSubject: outer {outer}\r\n\r\nHello.".encode() + separator
                   + SMUGGLED.format(tok=inner).encode() + b"\r\n.\r\n")
        return outer, inner, self.transaction(payload)

    def assertRefused(self, separator):
        """The message is refused as a whole (550 5.6.0) and the smuggled transaction never runs:
        exactly two replies (the refusal, then NOOP's), nothing stored, nothing logged for it."""
        rejected = len(log_lines(self.server, "result=rejected 550 5.6.0"))
        outer, inner, replies = self.smuggle(separator)
        self.assertEqual(replies, [
            (550, ["5.6.0 Message contains bare CR or LF characters; lines must end with CRLF "
                   "(RFC 5321 section 2.3.8)"]),
            (250, ["2.0.0 Ok"])])
        self.assertEqual(files_with(self.server, outer), [])
        self.assertEqual(files_with(self.server, inner), [])
        self.assertEqual(wait_for(lambda: len(log_lines(self.server, "result=rejected 550 5.6.0")) - rejected), 1)
        self.assertEqual(log_lines(self.server, f"from=<evil-{inner}@attacker.test>"), [])

    def test_lf_dot_lf(self):
        self.assertRefused(b"\n.\n")

    def test_lf_dot_crlf(self):
        self.assertRefused(b"\n.\r\n")

    def test_cr_dot_cr(self):
        self.assertRefused(b"\r.\r")

    def test_crlf_dot_lf(self):
        self.assertRefused(b"\r\n.\n")

    def test_cr_dot_crlf(self):
        self.assertRefused(b"\r.\r\n")

    def test_crlf_dot_cr(self):
        self.assertRefused(b"\r\n.\r")

    def test_stuffed_dot_is_content(self):
        """'CRLF..CRLF' is a dot-stuffed '.' line: one message, with the would-be commands
        inside it as text, delivered to bob only."""
        outer, inner, replies = self.smuggle(b"\r\n..\r\n")
        self.assertEqual(len(replies), 2)
        self.assertReply(replies[0], 250, "2.0.0")
        [path] = self.stored(outer, [BOB])
        with open(path, "rb") as f:
            data = f.read()
        self.assertIn(f"Hello.\r\n.\r\nMAIL FROM:<evil-{inner}@attacker.test>\r\n".encode(), data)
        self.assertEqual(files_with(self.server, inner), [path])
        self.assertEqual(log_lines(self.server, f"from=<evil-{inner}@attacker.test>"), [])

    def test_control_real_end_marker(self):
        """With a real CRLF.CRLF in the same place, the second transaction is legitimate and
        runs: what the tests above would see if a look-alike were taken for the end."""
        outer, inner, replies = self.smuggle(b"\r\n.\r\n")
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354, 250, 250])
        self.stored(outer, [BOB])
        self.stored(inner, [ALICE])


class StartTLSTests(SMTPHelpers, TestCase):

    def test_injected_command_discarded(self):
        """'STARTTLS\\r\\nRSET\\r\\n' in one plaintext packet: the RSET is dropped, so the first
        reply inside TLS answers the client's own EHLO."""
        c = self.raw()
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(c.reply(), (220, ["2.0.0 Ready to start TLS"]))
        self.assertEqual(c._buf, b"")
        c.starttls()
        first = c.ehlo("inside.test")
        self.assertEqual(first.code, 250)
        self.assertEqual(first.lines[0], "mail.test Hello inside.test [127.0.0.1]")
        self.assertEqual(c.cmd("NOOP"), (250, ["2.0.0 Ok"]))
        self.assertFalse(c.closed(timeout=0.3), "the session stays open")
        self.assertEqual(c._buf, b"", "no reply to the injected RSET arrives later")

    def test_injected_transaction_discarded(self):
        """A MAIL FROM injected behind STARTTLS does not open a transaction inside TLS."""
        c = self.raw()
        c.ehlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
        self.assertEqual(c.reply().code, 220)
        c.starttls()
        c.ehlo()
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 503, "5.5.1", "need MAIL")

    def test_ehlo_required_after_starttls(self):
        """RFC 3207 4.2: the client's EHLO is forgotten with TLS; MAIL and AUTH need a new one."""
        c = self.raw("submission")
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.starttls()
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 503, "5.5.1")
        self.assertReply(c.auth_plain(BOB, "secret"), 503, "5.5.1")
        self.assertIn("AUTH PLAIN LOGIN", c.ehlo().lines)
        self.assertReply(c.auth_plain(BOB, "secret"), 235, "2.7.0")
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 250, "2.1.0")

    def test_no_second_starttls(self):
        c = self.tls_raw("smtp")
        self.assertReply(c.cmd("STARTTLS"), 503, "5.5.1")
        smtps = self.raw("smtps", greeting=False)
        smtps.starttls()
        self.assertEqual(smtps.reply().code, 220)
        self.assertNotIn("STARTTLS", smtps.ehlo().lines)
        self.assertReply(smtps.cmd("STARTTLS"), 503, "5.5.1")

    def test_starttls_with_argument(self):
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS now"), 501, "5.5.4")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
