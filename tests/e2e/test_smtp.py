"""jdmail's SMTP listeners (MX, submission, SMTPS) end to end: a real twistd jdmail,
real clients (smtplib, swaks, curl, raw sockets). Each test asserts the reply code
with its enhanced status code and what was stored or logged."""

import email
import email.policy
import os
import re
import smtplib
import subprocess
import time

from twisted.trial.unittest import TestCase

from tests.e2e import (ALICE, BOB, CAROL, USERS, RawSMTP, SMTPHelpers, b64, files_with, log_lines, message,
                       shared_server, spool_files, token, unverified_context, wait_for)


class SMTPTestCase(SMTPHelpers, TestCase):
    pass


class LocalDeliveryTests(SMTPTestCase):

    def test_smtplib_to_user(self):
        """A message to a user: 250 2.0.0 with the queue id, stored once with trace headers and
        its body intact (dot-stuffed line, 8-bit text, CRLF)."""
        tok = token()
        body = "First line.\r\n.A line starting with a dot\r\n..two dots\r\nGrüße, 8-bit\r\n\r\nlast\r\n"
        raw = message(tok, body=body)
        c = self.smtp()
        c.ehlo("client.test")
        self.assertReply(c.mail("sender@remote.test"), 250, "2.1.0")
        self.assertReply(c.rcpt(BOB), 250, "2.1.5")
        code, text = c.data(raw)
        self.assertEqual(code, 250)
        m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]+)", text)
        self.assertTrue(m, text)
        [path] = self.stored(tok, [BOB])
        self.assertTrue(os.path.dirname(path).endswith(os.path.join("Maildir", "new")))
        with open(path, "rb") as f:
            data = f.read()
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))      # CRLF only
        self.assertTrue(data.endswith(raw), "the message follows the trace headers unchanged")
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(msg["Return-Path"], "<sender@remote.test>")
        self.assertEqual(msg["Delivered-To"], BOB)
        received = msg["Received"]
        self.assertIn("from client.test ([127.0.0.1])", received)
        self.assertIn("by mail.test (jdmail)", received)
        self.assertIn(f"with ESMTP id {m.group(1).decode()}", received)
        self.assertIn(f"for <{BOB}>", received)
        self.assertEqual(msg["Subject"], f"test {tok}")
        self.assertEqual(msg.get_content(), body)
        # header order: the trace fields come first (RFC 5321 4.4)
        self.assertEqual(list(msg.keys())[:3], ["Return-Path", "Delivered-To", "Received"])

    def test_swaks_to_user(self):
        tok = token()
        p = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.ports["smtp"]), "--ehlo", "swaks.test",
             "--from", "someone@remote.test", "--to", BOB, "--header", f"Subject: swaks {tok}",
             "--body", "Sent by swaks.", "--timeout", "10"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"<-  250 2\.0\.0 Ok: queued as [0-9A-F]+")
        [path] = self.stored(tok, [BOB])
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertEqual(msg["Return-Path"], "<someone@remote.test>")
        self.assertIn("from swaks.test ([127.0.0.1])", msg["Received"])
        self.assertEqual(msg.get_content().strip(), "Sent by swaks.")

    def test_alias_with_several_targets_hard_linked(self):
        """team@ -> bob, alice, carol: each mailbox gets the message, all one inode."""
        tok = token()
        c = self.smtp()
        c.ehlo("client.test")
        self.assertEqual(c.sendmail("sender@remote.test", ["team@example.org"], message(tok)), {})
        paths = self.stored(tok, [BOB, ALICE, CAROL])
        inodes = {os.stat(p).st_ino for p in paths}
        self.assertEqual(len(inodes), 1)
        self.assertGreaterEqual(os.stat(paths[0]).st_nlink, 3)
        with open(paths[0], "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertEqual(msg["Delivered-To"], "team@example.org")

    def test_catch_all(self):
        tok = token()
        c = self.smtp()
        c.ehlo("client.test")
        self.assertReply(c.mail("sender@remote.test"), 250, "2.1.0")
        self.assertReply(c.rcpt("anything-at-all@catch.test"), 250, "2.1.5")
        self.assertEqual(c.data(message(tok))[0], 250)
        self.stored(tok, [CAROL])

    def test_domain_alias(self):
        """@alias.test -> @example.org: alice@alias.test reaches alice@example.org; an unknown
        name in the aliased domain is refused like one in the real domain."""
        tok = token()
        c = self.smtp()
        c.ehlo("client.test")
        self.assertReply(c.mail("sender@remote.test"), 250, "2.1.0")
        self.assertReply(c.rcpt("nobody@alias.test"), 550, "5.1.1")
        self.assertReply(c.rcpt("Alice@Alias.Test"), 250, "2.1.5")
        self.assertEqual(c.data(message(tok))[0], 250)
        self.stored(tok, [ALICE])

    def test_several_recipients_stored_once_per_mailbox(self):
        """bob, BOB, bobby (alias of bob) and alice: bob gets one copy, alice one; the trace
        headers name no single recipient."""
        tok = token()
        c = self.smtp()
        c.ehlo("client.test")
        refused = c.sendmail("sender@remote.test", [BOB, "BOB@example.org", "bobby@example.org", ALICE],
                             message(tok))
        self.assertEqual(refused, {})
        paths = self.stored(tok, [BOB, ALICE])
        self.assertEqual(os.stat(paths[0]).st_ino, os.stat(paths[1]).st_ino)
        with open(paths[0], "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertIsNone(msg["Delivered-To"])
        self.assertNotIn(" for <", msg["Received"])

    def test_helo_and_8bit(self):
        """Plain HELO (no extensions): 'with SMTP'; 8-bit bytes in the body are kept as they are."""
        tok = token()
        c = self.raw()
        self.assertEqual(c.cmd("HELO old.test"), (250, ["mail.test Hello old.test [127.0.0.1]"]))
        body = f"Subject: {tok}\r\n\r\nLatin-1 \xe9t\xe9\r\n".encode("latin-1")
        self.assertReply(self.send_raw(c, "a@remote.test", [BOB], body), 250, "2.0.0")
        [path] = self.stored(tok, [BOB])
        with open(path, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(body))
        self.assertIn(b"\r\n\twith SMTP id ", data)

    def test_smtputf8(self):
        """RFC 6531: a UTF-8 header needs no encoding under SMTPUTF8 ('with UTF8SMTP'); a
        non-ASCII address without the SMTPUTF8 parameter is refused with 553 5.6.7."""
        tok = token()
        c = self.raw()
        self.assertIn("SMTPUTF8", c.ehlo().lines)
        self.assertReply(c.cmd("MAIL FROM:<jörg@remote.test>"), 553, "5.6.7")
        self.assertReply(c.cmd("MAIL FROM:<jorg@remote.test> SMTPUTF8 BODY=8BITMIME"), 250, "2.1.0")
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250, "2.1.5")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(f"From: Jörg <jorg@remote.test>\r\nSubject: Grüße {tok}\r\n\r\nHallo\r\n.\r\n".encode())
        self.assertReply(c.reply(), 250, "2.0.0")
        [path] = self.stored(tok, [BOB])
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.SMTPUTF8)
        self.assertEqual(msg["Subject"], f"Grüße {tok}")
        self.assertIn("with UTF8SMTP id ", msg["Received"])

    def test_smtputf8_addresses(self):
        """A UTF-8 sender and recipient under SMTPUTF8 (RFC 6531 3.3)."""
        tok = token()
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<jörg@bücher.test> SMTPUTF8"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<ünknown@example.org>"), 550, "5.1.1")
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250, "2.1.5")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message(tok) + b".\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        [path] = self.stored(tok, [BOB])
        with open(path, "rb") as f:
            self.assertTrue(f.read().startswith("Return-Path: <jörg@bücher.test>\r\n".encode()))

    def test_unknown_local_user(self):
        tok = token()
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{tok}@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<nobody@example.org>"), 550, "5.1.1", "User unknown")
        self.assertReply(c.cmd("DATA"), 554, "5.5.1", "no valid recipients")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertEqual(files_with(self.server, tok), [])
        # the refused transaction has its log line too
        lines = wait_for(lambda: log_lines(self.server, f"from=<{tok}@remote.test>"))
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"smtp transaction id=- client=127\.0\.0\.1 helo=client\.test auth=- from=<\S+> "
                                   r"rcpts=nobody@example\.org:550 size=0 result=abandoned: RSET$")

    def test_relay_denied_without_auth(self):
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<someone@elsewhere.test>"), 554, "5.7.1", "Relay access denied")
        # a local recipient in the same transaction is still fine
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250, "2.1.5")

    def test_relay_authenticated_is_queued(self):
        """Authenticated on submission: remote recipients are accepted and queued (the
        file under queue/messages, fsynced before the 250), nothing is stored locally."""
        tok = token()
        c = self.submission()
        self.assertReply(c.mail(BOB), 250, "2.1.0")
        self.assertReply(c.rcpt("friend@elsewhere.test"), 250, "2.1.5")
        code, text = c.data(message(tok))
        self.assertEqual(code, 250, text)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(files_with(self.server, tok), [])
        path = os.path.join(self.server.datadir, "queue", "messages", queue_id)
        with open(path, "rb") as f:
            self.assertIn(tok.encode(), f.read())
        self.assertEqual(spool_files(self.server), [])


class SubmissionTests(SMTPTestCase):

    def test_mail_without_auth(self):
        """Submission needs AUTH before MAIL, with or without TLS."""
        c = self.raw("submission")
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 530, "5.7.0", "Authentication required")
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.starttls()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 530, "5.7.0")

    def test_auth_needs_tls(self):
        """No AUTH offered in plaintext; trying it anyway gives 538 5.7.11 and checks nothing."""
        c = self.raw("submission")
        ehlo = c.ehlo()
        self.assertIn("STARTTLS", ehlo.lines)
        self.assertFalse([x for x in ehlo.lines if x.startswith("AUTH")])
        before = len(log_lines(self.server, "smtp login "))
        self.assertReply(c.auth_plain(BOB, USERS[BOB]), 538, "5.7.11")
        self.assertReply(c.cmd("AUTH LOGIN"), 538, "5.7.11")
        self.assertEqual(len(log_lines(self.server, "smtp login ")), before)
        # after STARTTLS it is offered
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.starttls()
        ehlo = c.ehlo()
        self.assertIn("AUTH PLAIN LOGIN", ehlo.lines)
        self.assertNotIn("STARTTLS", ehlo.lines)

    def _send_as_bob(self, c):
        tok = token()
        self.assertEqual(c.sendmail(BOB, [ALICE], message(tok)), {})
        [path] = self.stored(tok, [ALICE])
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertIn("(Authenticated sender: bob@example.org)", msg["Received"])
        return msg

    def test_starttls_auth_plain(self):
        c = self.submission(mech="PLAIN")
        msg = self._send_as_bob(c)
        self.assertIn("with ESMTPSA id", msg["Received"])
        self.assertRegex(msg["Received"], r"\(using TLSv1\.[23] with cipher \S+\)")

    def test_starttls_auth_login(self):
        c = self.smtp("submission")
        c.ehlo("client.test")
        c.starttls(context=unverified_context())
        c.ehlo("client.test")
        c.user, c.password = ALICE, USERS[ALICE]
        # no initial response: both 334 challenges are answered
        self.assertEqual(c.auth("LOGIN", c.auth_login, initial_response_ok=False),
                         (235, b"2.7.0 Authentication successful"))
        self.assertReply(c.mail(ALICE), 250, "2.1.0")
        # AUTH again is refused, and no longer advertised
        self.assertReply(c.docmd("AUTH", "PLAIN " + b64(f"\0{ALICE}\0{USERS[ALICE]}")), 503, "5.5.1")

    def test_wrong_password_then_too_many(self):
        """535 5.7.8 per failure; after [auth] max_failures (3 here) 535 and 421, then closed.
        The password is never logged."""
        failed = re.compile(r"smtp login user=bob@example\.org client=127\.0\.0\.1 listener=submission result=failed")
        before = len(failed.findall(self.server.read_log()))
        c = self.tls_raw()
        self.assertReply(c.auth_plain(BOB, "wrong-pass-1"), 535, "5.7.8")
        self.assertReply(c.cmd("AUTH LOGIN " + b64(BOB)), 334)
        self.assertReply(c.cmd(b64("wrong-pass-2")), 535, "5.7.8")
        self.assertReply(c.auth_plain(BOB, "wrong-pass-3"), 535, "5.7.8")
        self.assertReply(c.reply(), 421, "4.7.0", "too many failed authentication attempts")
        self.assertTrue(c.closed())
        log = wait_for(lambda: len(failed.findall(self.server.read_log())) >= before + 3 and self.server.read_log())
        self.assertEqual(len(failed.findall(log)), before + 3)
        self.assertNotIn("wrong-pass", log)

    def test_smtps(self):
        """Implicit TLS: no STARTTLS offered (already TLS), AUTH offered, mail goes through."""
        c = self.smtp("smtps", ssl=True)
        code, text = c.ehlo("client.test")
        self.assertEqual(code, 250)
        self.assertIn(b"AUTH PLAIN LOGIN", text)
        self.assertNotIn(b"STARTTLS", text)
        c.login(BOB, USERS[BOB])
        msg = self._send_as_bob(c)
        self.assertIn("with ESMTPSA id", msg["Received"])

    def test_curl(self):
        tok = token()
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(message(tok, body="Sent by curl.\r\n"))
        p = subprocess.run(
            ["curl", "--silent", "--show-error", "--ssl-reqd", "-k", "--max-time", "20",
             f"smtp://127.0.0.1:{self.ports['submission']}/curl.test",
             "--mail-from", BOB, "--mail-rcpt", CAROL, "--upload-file", path,
             "--user", f"{BOB}:{USERS[BOB]}"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        [stored] = self.stored(tok, [CAROL])
        with open(stored, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertIn("from curl.test ([127.0.0.1])", msg["Received"])
        self.assertIn("with ESMTPSA id", msg["Received"])
        self.assertEqual(msg.get_content().strip(), "Sent by curl.")

    def test_sender_ownership(self):
        c = self.submission()
        self.assertReply(c.mail(BOB), 250, "2.1.0")
        c.rset()
        self.assertReply(c.mail("Bob@Example.org"), 250, "2.1.0")
        c.rset()
        self.assertReply(c.mail("bobby@example.org"), 250, "2.1.0")     # alias delivering to bob
        c.rset()
        self.assertReply(c.mail(ALICE), 553, "5.7.1", "not owned by authenticated user")
        self.assertReply(c.mail("bob@elsewhere.test"), 553, "5.7.1", "not owned by authenticated user")
        self.assertReply(c.mail("nobody@example.org"), 553, "5.7.1", "not owned by authenticated user")


class LimitTests(SMTPTestCase):
    """[smtp] limits set low (the 'tuned' server: SIZE 20000, 3 recipients, 5 hops, 200-octet lines)."""

    config = "tuned"

    def test_size_advertised(self):
        c = self.raw()
        self.assertIn("SIZE 20000", c.ehlo().lines)
        default = RawSMTP(shared_server("default").ports["smtp"])
        self.addCleanup(default.close)
        self.assertIn(f"SIZE {50 * 1024 * 1024}", default.ehlo().lines)

    def test_size_parameter_over_limit(self):
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test> SIZE=20001"), 552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test> SIZE=20000"), 250, "2.1.0")

    def test_message_over_limit_without_size(self):
        tok = token()
        c = self.raw()
        c.ehlo()
        body = message(tok) + (b"x" * 70 + b"\r\n") * 300          # ~21 KB
        reply = self.send_raw(c, "a@remote.test", [BOB], body)
        self.assertReply(reply, 552, "5.3.4")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertEqual(files_with(self.server, tok), [])
        self.assertEqual(spool_files(self.server), [])
        self.assertTrue(wait_for(lambda: log_lines(self.server, "result=rejected 552 5.3.4")))

    def test_max_recipients(self):
        tok = token()
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250)
        for r in (BOB, ALICE, CAROL):
            self.assertReply(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<bobby@example.org>"), 452, "4.5.3", "too many recipients")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message(tok) + b".\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        self.stored(tok, [BOB, ALICE, CAROL])

    def test_max_hops(self):
        """5 Received headers plus ours is 6 > max_hops 5: 554 5.4.6; with 4 it is accepted."""
        c = self.raw()
        c.ehlo()
        for n, code, enhanced in ((5, 554, "5.4.6"), (4, 250, "2.0.0")):
            tok = token()
            hops = b"".join(b"Received: from hop%d.test by hop%d.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                            % (i, i + 1) for i in range(n))
            self.assertReply(self.send_raw(c, "a@remote.test", [BOB], hops + message(tok)), code, enhanced)
            self.assertEqual(len(files_with(self.server, tok)), 0 if code == 554 else 1)

    def test_hops_counted_in_header_only(self):
        """'Received:' lines in the body are not hops, even when the blank line that ends the
        header arrives in a separate TCP segment."""
        tok = token()
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(f"Subject: hops {tok}\r\n".encode())
        time.sleep(0.2)
        c.send(b"\r\n" + b"Received: quoted in the body\r\n" * 10 + b".\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        self.stored(tok, [BOB])

    def test_max_line_length(self):
        c = self.raw()
        c.ehlo()
        tok = token()
        reply = self.send_raw(c, "a@remote.test", [BOB], message(tok, body="y" * 201 + "\r\n"))
        self.assertReply(reply, 550, "5.6.0", "longer than 200")
        self.assertEqual(files_with(self.server, tok), [])
        # a long line split over several segments is caught too, and the session goes on
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message(tok))
        for _ in range(5):
            c.send(b"z" * 100)
            time.sleep(0.05)
        c.send(b"\r\n.\r\n")
        self.assertReply(c.reply(), 550, "5.6.0")
        # exactly the limit is fine
        tok2 = token()
        reply = self.send_raw(c, "a@remote.test", [BOB], message(tok2, body="y" * 200 + "\r\n"))
        self.assertReply(reply, 250, "2.0.0")
        self.assertEqual(files_with(self.server, tok), [])
        self.stored(tok2, [BOB])

    def test_vrfy_expn_enabled(self):
        c = self.raw()
        ehlo = c.ehlo()
        self.assertIn("VRFY", ehlo.lines)
        self.assertIn("EXPN", ehlo.lines)
        self.assertEqual(c.cmd("VRFY <bob@example.org>"), (250, ["2.1.5 <bob@example.org>"]))
        self.assertReply(c.cmd("VRFY nobody@example.org"), 550, "5.1.1")
        self.assertEqual(c.cmd("EXPN team@example.org"),
                         (250, ["2.1.5 <bob@example.org>", "2.1.5 <alice@example.org>",
                                "2.1.5 <carol@example.org>"]))
        self.assertReply(c.cmd("EXPN nobody@example.org"), 550, "5.1.1")

    def test_custom_banner(self):
        self.assertEqual(self.raw().banner, (220, ["mx.custom.test Custom ESMTP greeting for tests"]))

    def test_auth_max_failures_setting(self):
        """[auth] max_failures = 2: the second failure closes the connection."""
        c = self.tls_raw()
        self.assertReply(c.auth_plain(ALICE, "nope"), 535, "5.7.8")
        self.assertReply(c.auth_plain(ALICE, "nope"), 535, "5.7.8")
        self.assertReply(c.reply(), 421, "4.7.0")
        self.assertTrue(c.closed())


class DefaultsTests(SMTPTestCase):

    def test_default_banner(self):
        self.assertEqual(self.raw().banner, (220, ["mail.test jdmail ESMTP Service ready"]))

    def test_ehlo_extensions(self):
        ehlo = self.raw().ehlo("client.test")
        self.assertEqual(ehlo.code, 250)
        self.assertEqual(ehlo.lines[0], "mail.test Hello client.test [127.0.0.1]")
        for ext in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "STARTTLS"):
            self.assertIn(ext, ehlo.lines)
        self.assertNotIn("VRFY", ehlo.lines)

    def test_vrfy_expn_disabled(self):
        c = self.raw()
        c.ehlo()
        self.assertEqual(c.cmd("VRFY bob@example.org"), (502, ["5.5.1 VRFY command is disabled"]))
        self.assertEqual(c.cmd("EXPN team@example.org"), (502, ["5.5.1 EXPN command is disabled"]))


class ConnectionLimitTests(SMTPTestCase):
    """max_connections 3, max_connections_per_ip 2, command_timeout 1s (the 'limits' server)."""

    config = "limits"

    def connect(self, source):
        c = RawSMTP(self.ports["smtp"], source=source)
        self.addCleanup(c.close)
        return c

    def test_connection_limits(self):
        # A connection closed by an earlier test may not be counted down yet: wait for it.
        first = wait_for(lambda: self._fresh("127.0.0.1"))
        self.assertEqual(first.banner.code, 220)
        self.assertEqual(self.connect("127.0.0.1").banner.code, 220)
        third = self.connect("127.0.0.1")
        self.assertEqual(third.banner, (421, ["4.7.0 mail.test Too many connections; try again later"]))
        self.assertTrue(third.closed())
        # another client address is still welcome, up to max_connections in all
        self.assertEqual(self.connect("127.0.0.2").banner.code, 220)
        fourth = self.connect("127.0.0.3")
        self.assertReply(fourth.banner, 421, "4.7.0")
        self.assertTrue(fourth.closed())
        # the submission listener shares the count
        sub = RawSMTP(self.ports["submission"], source="127.0.0.4")
        self.addCleanup(sub.close)
        self.assertReply(sub.banner, 421, "4.7.0")
        # once one leaves, a new one is let in
        first.cmd("QUIT")
        self.assertTrue(first.closed())
        self.assertEqual(wait_for(lambda: self._fresh("127.0.0.5")).banner.code, 220)
        self.assertTrue(wait_for(lambda: log_lines(self.server, "smtp refused client=127.0.0.3")))

    def _fresh(self, source):
        c = self.connect(source)
        if c.banner.code == 220:
            return c
        c.close()
        return None

    def test_command_timeout(self):
        c = self.connect("127.0.0.9")
        self.assertEqual(c.banner.code, 220)
        c.ehlo()
        started = time.monotonic()
        self.assertEqual(c.reply(), (421, ["4.4.2 mail.test Error: timeout exceeded"]))
        self.assertGreater(time.monotonic() - started, 0.5)
        self.assertTrue(c.closed())


class ProtocolErrorTests(SMTPTestCase):
    """Bad input over a raw socket: exact codes, and the session goes on."""

    def test_unknown_command(self):
        c = self.raw()
        self.assertEqual(c.cmd("FOO bar"), (500, ["5.5.1 Error: command not recognized"]))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_sequence_errors(self):
        c = self.raw()
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 503, "5.5.1")
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 503, "5.5.1")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        c.ehlo()
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 503, "5.5.1", "need MAIL")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1", "need MAIL")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1", "need RCPT")
        self.assertReply(c.cmd("MAIL FROM:<b@remote.test>"), 503, "5.5.1", "nested MAIL")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("MAIL FROM:<b@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("AUTH PLAIN"), 503, "5.5.1")

    def test_bad_address_syntax(self):
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<not an address>"), 553, "5.1.7")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test"), 501, "5.5.4")
        self.assertReply(c.cmd("MAIL a@remote.test"), 501, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test> SIZE=lots"), 501, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test> FROB=1"), 555, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<bob@@example.org>"), 501, "5.1.3")
        self.assertReply(c.cmd("RCPT TO:<bob@example..org>"), 501, "5.1.3")
        self.assertReply(c.cmd("RCPT TO:<>"), 501, "5.1.3")
        self.assertReply(c.cmd("RCPT TO:<bøb@example.org>"), 553, "5.6.7")
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250, "2.1.5")

    def test_overlong_command_line(self):
        c = self.raw()
        c.ehlo()
        self.assertEqual(c.cmd("NOOP " + "x" * 20000), (500, ["5.5.2 Error: line too long"]))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        # the same, arriving in pieces
        for _ in range(4):
            c.send(b"y" * 5000)
            time.sleep(0.05)
        c.send(b"\r\n")
        self.assertEqual(c.reply(), (500, ["5.5.2 Error: line too long"]))
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250, "2.1.0")

    def test_nul_and_non_utf8(self):
        c = self.raw()
        c.ehlo()
        self.assertEqual(c.cmd(b"NOOP a\x00b"), (500, ["5.5.2 Error: NUL character in command"]))
        self.assertEqual(c.cmd(b"MAIL FROM:<\xff\xfe@remote.test>"),
                         (500, ["5.5.2 Error: command is not valid UTF-8"]))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250, "2.1.0")

    def test_auth_errors(self):
        c = self.tls_raw()
        self.assertReply(c.cmd("AUTH PLAIN %%%notbase64"), 501, "5.5.2")
        self.assertReply(c.cmd("AUTH PLAIN " + b64("only-one-part")), 501, "5.5.2")
        self.assertReply(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
        self.assertEqual(c.cmd("AUTH PLAIN"), (334, [""]))
        self.assertReply(c.cmd("*"), 501, "5.0.0", "aborted")
        self.assertEqual(c.cmd("AUTH LOGIN"), (334, ["VXNlcm5hbWU6"]))
        self.assertEqual(c.cmd(b64(BOB)), (334, ["UGFzc3dvcmQ6"]))
        self.assertReply(c.cmd("*"), 501, "5.0.0")
        self.assertEqual(c.cmd("AUTH LOGIN"), (334, ["VXNlcm5hbWU6"]))
        self.assertReply(c.cmd("!!!!"), 501, "5.5.2")
        # none of these counted as a failed login; the right password still works
        self.assertReply(c.auth_plain(BOB, USERS[BOB]), 235, "2.7.0")

    def test_auth_as_another_user(self):
        """An authorization identity other than the user's own is refused, password or not."""
        c = self.tls_raw()
        self.assertReply(c.auth_plain(BOB, USERS[BOB], authzid=ALICE), 535, "5.7.8")
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 530, "5.7.0")
        self.assertReply(c.auth_plain(BOB, USERS[BOB], authzid=BOB), 235, "2.7.0")
        self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 250, "2.1.0")

    def test_too_many_errors(self):
        c = self.raw()
        c.send(b"".join(b"BOGUS%d\r\n" % i for i in range(20)))
        for _ in range(20):
            self.assertReply(c.reply(), 500, "5.5.1")
        self.assertReply(c.reply(), 421, "4.7.0", "too many errors")
        self.assertTrue(c.closed())

    def test_pipelining(self):
        """MAIL/RCPT/RCPT/RCPT/DATA in one write: replies come back in order, the refused
        recipient does not stop the others."""
        tok = token()
        c = self.raw()
        self.assertIn("PIPELINING", c.ehlo().lines)
        c.send("RSET\r\nMAIL FROM:<a@remote.test> SIZE=300\r\n"
               f"RCPT TO:<{BOB}>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        self.assertReply(c.reply(), 250, "2.1.0")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertReply(c.reply(), 550, "5.1.1")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertEqual(c.reply().code, 354)
        # message, end, and the next transaction in one write as well
        tok2 = token()
        c.send(message(tok) + b".\r\nMAIL FROM:<>\r\n" + f"RCPT TO:<{CAROL}>\r\nDATA\r\n".encode())
        self.assertReply(c.reply(), 250, "2.0.0")
        self.assertReply(c.reply(), 250, "2.1.0")
        self.assertReply(c.reply(), 250, "2.1.5")
        self.assertEqual(c.reply().code, 354)
        c.send(message(tok2) + b".\r\nQUIT\r\n")
        self.assertReply(c.reply(), 250, "2.0.0")
        self.assertReply(c.reply(), 221, "2.0.0")
        self.assertTrue(c.closed())
        self.stored(tok, [BOB, ALICE])
        [path] = self.stored(tok2, [CAROL])
        with open(path, "rb") as f:
            self.assertTrue(f.read().startswith(b"Return-Path: <>\r\n"))


class InterruptedTransactionTests(SMTPTestCase):

    def test_disconnect_in_data(self):
        """A client gone in the middle of DATA: nothing delivered, nothing left in the spool."""
        tok = token()
        c = self.raw()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@remote.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{BOB}>"), 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(message(tok) + b"the message goes on, but the client leaves\r\n")
        self.assertTrue(wait_for(lambda: spool_files(self.server)), "the spool file exists during DATA")
        c.close()
        self.assertEqual(wait_for(lambda: spool_files(self.server) == [], timeout=3), True,
                         spool_files(self.server))
        self.assertTrue(wait_for(lambda: log_lines(self.server, "result=aborted: connection lost")))
        self.assertEqual(files_with(self.server, tok), [])
        tmp = os.path.join(self.server.maildir(BOB), "tmp")
        self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [])


class LogTests(SMTPTestCase):

    def test_one_line_per_transaction_and_login(self):
        tok = token()
        c = self.submission(user=CAROL)
        self.assertEqual(c.sendmail(CAROL, [BOB, "nobody@example.org"], message(tok)),
                         {"nobody@example.org": (550, b"5.1.1 <nobody@example.org>: Recipient address "
                                                      b"rejected: User unknown")})
        c.quit()
        [path] = self.stored(tok, [BOB])
        queue_id = re.search(r"with ESMTPSA id ([0-9A-F]+)", open(path, encoding="utf-8").read()).group(1)
        lines = wait_for(lambda: log_lines(self.server, f"smtp transaction id={queue_id} "))
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], rf"smtp transaction id={queue_id} client=127\.0\.0\.1 helo=client\.test "
                                   rf"auth=carol@example\.org from=<carol@example\.org> "
                                   rf"rcpts=bob@example\.org:250,nobody@example\.org:550 size=\d+ "
                                   rf"result=accepted$")
        logins = log_lines(self.server, "smtp login user=carol@example.org ")
        self.assertEqual(len(logins), 1, logins)
        self.assertIn("client=127.0.0.1 listener=submission result=ok", logins[0])
        self.assertNotIn(USERS[CAROL], self.server.read_log())
