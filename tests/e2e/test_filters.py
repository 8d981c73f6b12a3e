"""The filter framework end to end: a real jdmail with a third-party filter plugin
(tests/plugin_site, found only because it is on the server's PYTHONPATH) that gives
every verdict kind at every stage, talked to with smtplib; quarantine with jdmailctl."""

import atexit
import os
import shutil
import smtplib
import tempfile
import textwrap
import time

from twisted.trial import unittest

from tests.e2e import token, unverified_context, wait_for
from tests.fixtures.server import REPO, JdmailServer

SITE = os.path.join(REPO, "tests", "plugin_site")
USERS = (("bob@example.org", "secret"), ("carol@example.org", "secret"))

_shared = []


def _filters_ini(tmp):
    def section(name, **kw):
        kw.setdefault("type", "scripted")
        return f"[filter:{name}]\n" + "".join(f"{k} = {v}\n" for k, v in kw.items()) + "\n"
    calls = os.path.join(tmp, "calls")
    return "".join([
        section("f_connect", stages="connect", action="reject", code="554", enhanced="5.7.1",
                text="Go away", switch=os.path.join(tmp, "connect-on")),
        section("f_connect_tf", stages="connect", when="127.0.0.21", action="tempfail", code="450",
                enhanced="4.7.1", text="Too busy for you now"),
        section("f_helo", stages="helo", when="bad.helo", action="reject", text="Bad HELO name"),
        section("f_mail", stages="mail", when="spammer@", action="reject", code="553", text="Sender refused"),
        section("f_accept", stages="mail", when="friend@", action="accept"),
        section("f_rcpt", stages="rcpt", when="carol@", action="tempfail", code="450", enhanced="4.2.0",
                text="Try carol later"),
        section("f_tag", when="tagme", score="6", headers="X-Test-Tag: yes",
                auth="spf=pass smtp.mailfrom=alice@elsewhere.test"),
        section("f_seen", when="tagme", counts_auth="yes"),
        section("f_tempfirst", when="strong", action="tempfail", code="451", enhanced="4.7.1", text="Later"),
        section("f_strong", when="strong", action="reject", code="554", enhanced="5.7.0",
                text="Strongest wins"),
        section("f_data", when="reject-me", action="reject", text="Scripted refusal", record=calls),
        section("f_discard", when="discard-me", action="discard"),
        section("f_quar", when="quarantine-me", action="quarantine", reason="looks bad"),
        section("f_junk", when="junk-me", action="quarantine", quarantine="junk"),
        section("f_spammy", when="very-spammy", score="60"),
        section("f_slow", when="slow-me", delay="20s", timeout="300ms"),
        section("f_err_default", when="fail-default", fail="yes"),
        section("f_err_continue", when="fail-continue", fail="yes", on_error="continue"),
        section("f_err_reject", when="fail-reject", fail="yes", on_error="reject"),
        section("f_outbound", stages="outbound", headers="X-Outbound: yes"),
    ])


CHAIN = ("f_connect, f_connect_tf, f_helo, f_mail, f_accept, f_rcpt, f_tag, f_seen, f_tempfirst, f_strong, f_data, "
         "f_discard, f_quar, f_junk, f_spammy, f_slow, f_err_default, f_err_continue, f_err_reject, "
         "f_outbound")


def shared_server():
    """One server for the module (trial has no setUpClass), stopped at exit."""
    if not _shared:
        tmp = tempfile.mkdtemp(prefix="jdmail-filters-")
        server = JdmailServer(
            overrides={"filters": {"chain": CHAIN, "timeout": "10s", "reject_score": "50"},
                       "auth": {"allow_plaintext": "yes", "fail_delay": "100ms"}},
            extra_ini=_filters_ini(tmp), pythonpath=[SITE])
        server.write_ini()
        server.ctl("domain", "add", "example.org")
        for address, password in USERS:
            server.ctl("user", "add", address, "--password", password)
        server.start()
        server.scratch = tmp
        atexit.register(shutil.rmtree, tmp, True)
        atexit.register(server.stop)
        _shared.append(server)
    return _shared[0]


def message(subject, extra=""):
    return (f"From: alice@elsewhere.test\r\nTo: bob@example.org\r\nSubject: {subject}\r\n{extra}"
            f"\r\nHello.\r\n").encode()


class FilterVerdictsTests(unittest.TestCase):

    def setUp(self):
        self.server = shared_server()

    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30)
        self.addCleanup(s.close)
        s.ehlo("client.test")
        return s

    def send(self, subject, rcpts=("bob@example.org",), sender="alice@elsewhere.test", extra=""):
        s = self.smtp()
        self.assertEqual(s.mail(sender)[0], 250)
        for r in rcpts:
            self.assertEqual(s.rcpt(r)[0], 250)
        return s.data(message(subject, extra))

    def stored(self, address="bob@example.org", folder=None):
        out = {}
        for path in self.server.messages(address, folder):
            with open(path, "rb") as f:
                out[path] = f.read()
        return out

    def find(self, marker, address="bob@example.org", folder=None):
        return [data for data in self.stored(address, folder).values() if marker.encode() in data]

    def log_lines(self, *needles):
        return [line for line in self.server.read_log().splitlines() if all(n in line for n in needles)]

    # --- each stage -----------------------------------------------------------------------------

    def raw(self, source="127.0.0.1"):
        import socket
        sock = socket.create_connection(("127.0.0.1", self.server.ports["smtp"]), timeout=30,
                                        source_address=(source, 0))
        self.addCleanup(sock.close)
        return sock, sock.makefile("rb")

    def test_connect_reject_554_then_only_quit(self):
        """RFC 5321 3.1: 554 instead of the greeting, then the server waits for QUIT and
        answers anything else with 503."""
        switch = os.path.join(self.server.scratch, "connect-on")
        open(switch, "w").close()
        try:
            with self.assertRaises(smtplib.SMTPConnectError) as cm:
                smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30)
            sock, lines = self.raw()
            self.assertEqual(lines.readline(), b"554 5.7.1 Go away\r\n")
        finally:
            os.unlink(switch)
        self.assertEqual((cm.exception.smtp_code, cm.exception.smtp_error), (554, b"5.7.1 Go away"))
        for command in (b"EHLO client.test", b"MAIL FROM:<alice@elsewhere.test>", b"RCPT TO:<bob@example.org>"):
            sock.sendall(command + b"\r\n")
            self.assertEqual(lines.readline(), b"503 5.5.1 Error: this connection was refused; send QUIT\r\n")
        sock.sendall(b"QUIT\r\n")
        self.assertEqual(lines.readline(), b"221 2.0.0 Bye\r\n")
        self.assertEqual(lines.readline(), b"")            # and closed
        self.assertTrue(self.log_lines("filter=f_connect", "stage=connect", "action=reject", "reply=554 5.7.1"))

    def test_connect_tempfail_421_and_closed(self):
        """A tempfail at connect: 421 with our name (RFC 5321 3.8, 4.2.3), connection closed."""
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30, source_address=("127.0.0.21", 0))
        self.assertEqual((cm.exception.smtp_code, cm.exception.smtp_error),
                         (421, b"4.7.1 mail.test Too busy for you now"))
        sock, lines = self.raw("127.0.0.21")
        self.assertEqual(lines.readline(), b"421 4.7.1 mail.test Too busy for you now\r\n")
        self.assertEqual(lines.readline(), b"")            # closed by the server, nothing else sent
        self.assertTrue(self.log_lines("filter=f_connect_tf", "stage=connect", "action=tempfail",
                                       "reply=421 4.7.1", "client=127.0.0.21"))
        self.assertEqual(self.smtp().noop()[0], 250)       # other clients are greeted as usual

    def test_helo_reject(self):
        s = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30)
        self.addCleanup(s.close)
        self.assertEqual(s.ehlo("bad.helo.test"), (550, b"5.7.1 Bad HELO name"))
        self.assertEqual(s.mail("alice@elsewhere.test")[0], 503)       # no HELO yet
        self.assertEqual(s.ehlo("good.helo.test")[0], 250)
        self.assertEqual(s.mail("alice@elsewhere.test")[0], 250)

    def test_mail_reject(self):
        s = self.smtp()
        self.assertEqual(s.mail("spammer@elsewhere.test"), (553, b"5.7.1 Sender refused"))
        self.assertEqual(s.mail("alice@elsewhere.test")[0], 250)

    def test_rcpt_tempfail_refuses_only_that_recipient(self):
        s = self.smtp()
        self.assertEqual(s.mail("alice@elsewhere.test")[0], 250)
        self.assertEqual(s.rcpt("carol@example.org"), (450, b"4.2.0 Try carol later"))
        self.assertEqual(s.rcpt("bob@example.org")[0], 250)
        code, _ = s.data(message("rcpt-stage-check"))
        self.assertEqual(code, 250)
        self.assertEqual(len(self.find("rcpt-stage-check")), 1)
        self.assertEqual(self.find("rcpt-stage-check", "carol@example.org"), [])

    def test_data_reject(self):
        self.assertEqual(self.send("please reject-me"), (550, b"5.7.1 Scripted refusal"))
        self.assertEqual(self.find("please reject-me"), [])
        self.assertTrue(self.log_lines("filter=f_data", "stage=data", "action=reject", "reason=scripted"))

    def test_accept_skips_the_rest_of_the_chain(self):
        calls = os.path.join(self.server.scratch, "calls")
        before = open(calls).read().count("f_data data") if os.path.exists(calls) else 0
        code, _ = self.send("friend says reject-me", sender="friend@elsewhere.test")
        self.assertEqual(code, 250)
        self.assertEqual(len(self.find("friend says reject-me")), 1)
        after = open(calls).read().count("f_data data") if os.path.exists(calls) else 0
        self.assertEqual(after, before)         # f_data never asked
        self.assertTrue(self.log_lines("filter=f_accept", "stage=mail", "action=accept"))

    def test_discard(self):
        code, text = self.send("discard-me please")
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(self.find("discard-me please"), [])
        self.assertTrue(self.log_lines(f"id={queue_id}", "result=discarded (f_discard: scripted)"))

    # --- combining --------------------------------------------------------------------------------

    def test_strongest_verdict_wins(self):
        # f_tempfirst says tempfail first; f_strong's later reject is stronger
        self.assertEqual(self.send("strong words"), (554, b"5.7.0 Strongest wins"))
        self.assertTrue(self.log_lines("filter=f_tempfirst", "action=tempfail"))

    def test_discard_beats_quarantine(self):
        code, text = self.send("discard-me quarantine-me")
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertNotIn(queue_id, self.server.ctl("quarantine", "list").stdout)
        self.assertTrue(self.log_lines(f"id={queue_id}", "result=discarded"))

    def test_score_reject_threshold(self):
        self.assertEqual(self.send("very-spammy offer"),
                         (550, b"5.7.1 Message rejected under suspicion of SPAM"))
        self.assertTrue(self.log_lines("filter=spam-score", "reason=spam score 60.0 >= reject_score 50.0"))

    # --- failures -----------------------------------------------------------------------------------

    def test_timeout_gives_on_error_tempfail(self):
        self.assertEqual(self.send("slow-me"),
                         (451, b"4.3.0 Temporary failure in message checks; try again later"))
        self.assertTrue(self.log_lines("filter=f_slow", "action=tempfail", "timed out after 0.3s"))

    def test_exception_gives_default_on_error(self):
        self.assertEqual(self.send("fail-default")[0], 451)
        self.assertTrue(self.log_lines("filter=f_err_default", "on_error=tempfail",
                                       "error: RuntimeError: scripted failure"))

    def test_on_error_continue(self):
        self.assertEqual(self.send("fail-continue")[0], 250)
        self.assertEqual(len(self.find("fail-continue")), 1)

    def test_on_error_reject(self):
        self.assertEqual(self.send("fail-reject"), (550, b"5.7.1 Message refused by local policy"))

    # --- what the message records -------------------------------------------------------------------

    def test_headers_score_and_authentication_results(self):
        forged = "Authentication-Results: mail.test; spf=pass smtp.mailfrom=forged@x.test\r\n" \
                 "Authentication-Results: other.example; dkim=pass header.d=other.example\r\n"
        code, _ = self.send("tagme now", extra=forged)
        self.assertEqual(code, 250)
        self.assertEqual(self.find("tagme now"), [])           # tagged: not in the inbox
        [data] = self.find("tagme now", folder="Junk")
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        names = [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]
        self.assertEqual(names[:9], ["Return-Path", "Delivered-To", "Received", "Authentication-Results",
                                     "X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Test-Tag",
                                     "X-Seen-Auth"])
        self.assertIn("\r\nAuthentication-Results: mail.test; spf=pass smtp.mailfrom=alice@elsewhere.test\r\n",
                      head)
        self.assertIn("\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 6.0\r\n"
                      "X-Spam-Status: Yes, score=6.0 required=5.0 tests=f_tag\r\nX-Test-Tag: yes\r\n", head)
        self.assertIn("\r\nX-Seen-Auth: spf=pass smtp.mailfrom=alice@elsewhere.test\r\nX-Seen-Score: 6.0\r\n",
                      head)
        self.assertNotIn("forged@x.test", head)                 # RFC 8601 5: ours removed
        self.assertIn("Authentication-Results: other.example; dkim=pass", head)
        self.assertTrue(data.endswith(b"\r\nHello.\r\n"))

    def test_outbound_stage_only_for_submitted_mail(self):
        s = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30)
        self.addCleanup(s.close)
        s.ehlo("laptop.test")
        s.login("carol@example.org", "secret")
        s.sendmail("carol@example.org", ["bob@example.org"], message("outbound-check"))
        self.send("inbound-check")
        [out] = self.find("outbound-check")
        [inbound] = self.find("inbound-check")
        self.assertIn(b"\r\nX-Outbound: yes\r\n", out)
        self.assertNotIn(b"X-Outbound", inbound)

    # --- quarantine ---------------------------------------------------------------------------------

    def test_quarantine_junk_folder(self):
        self.assertEqual(self.send("junk-me")[0], 250)
        self.assertEqual(self.find("junk-me"), [])
        self.assertEqual(len(self.find("junk-me", folder="Junk")), 1)

    def test_central_quarantine_list_show_release_delete(self):
        code, text = self.send("quarantine-me first")
        self.assertEqual(code, 250)
        first = text.decode().rsplit(" ", 1)[1]
        code, text = self.send("quarantine-me second")
        second = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(self.find("quarantine-me"), [])
        self.assertTrue(self.log_lines(f"id={first}", "result=quarantined (f_quar: looks bad)"))

        listing = self.server.ctl("quarantine", "list").stdout
        self.assertIn(f"{first} ", listing)
        self.assertIn(" <alice@elsewhere.test> bob@example.org f_quar: looks bad\n", listing)
        shown = self.server.ctl("quarantine", "show", first).stdout
        self.assertIn(f"id: {first}\n", shown)
        self.assertIn("recipient: bob@example.org\nreason: f_quar: looks bad\n", shown)
        self.assertIn("\nSubject: quarantine-me first\n", shown)

        released = self.server.ctl("quarantine", "release", first)
        self.assertEqual(released.stdout, f"released {first} to bob@example.org\n")
        [data] = self.find("quarantine-me first")
        self.assertIn(f"with ESMTP id {first}".encode(), data)
        deleted = self.server.ctl("quarantine", "delete", second)
        self.assertEqual(deleted.stdout, f"deleted {second}\n")
        self.assertEqual(self.find("quarantine-me second"), [])
        listing = self.server.ctl("quarantine", "list").stdout
        self.assertNotIn(first, listing)
        self.assertNotIn(second, listing)
        again = self.server.ctl("quarantine", "release", first, check=False)
        self.assertEqual((again.returncode, again.stderr),
                         (1, f"jdmailctl: {first} is not in the quarantine\n"))


class ThirdPartyPluginOnSysPathTests(unittest.TestCase):
    """README's example plugin, copied into <dir>/jdmail/plugins/ of a directory that is
    only on the server's PYTHONPATH (no plugin_dirs): found and used unchanged."""

    def test_readme_plugin_from_sys_path(self):
        site = tempfile.mkdtemp(prefix="jdmail-site-")
        self.addCleanup(shutil.rmtree, site, True)
        os.makedirs(os.path.join(site, "jdmail", "plugins"))
        shutil.copy(os.path.join(REPO, "tests", "dropins", "example_filter.py"),
                    os.path.join(site, "jdmail", "plugins", "acme_subject.py"))
        server = JdmailServer(overrides={"filters": {"chain": "subject_words"}},
                              extra_ini=textwrap.dedent("""\
                                  [filter:subject_words]
                                  words = lottery, viagra
                                  """), pythonpath=[site])
        server.write_ini()
        server.ctl("domain", "add", "example.org")
        server.ctl("user", "add", "bob@example.org", "--password", "secret")
        server.start()
        self.addCleanup(server.stop)
        plugins = server.ctl("plugins").stdout
        self.assertIn(f"filter subject_words  ({os.path.join(site, 'jdmail', 'plugins', 'acme_subject.py')})",
                      plugins)
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@elsewhere.test")
            s.rcpt("bob@example.org")
            self.assertEqual(s.data(b"Subject: lottery win\r\n\r\nx\r\n"), (550, b"5.7.1 Message content rejected"))
            s.mail("alice@elsewhere.test")
            s.rcpt("bob@example.org")
            self.assertEqual(s.data(b"Subject: minutes\r\n\r\nx\r\n")[0], 250)
        self.assertEqual(len(server.messages("bob@example.org")), 1)


_release = []


def release_server():
    """(server, sink): a server whose mail for other domains goes to a private
    smtp-sink (the relayhost), with a filter quarantining 'quarantine-me' centrally."""
    if not _release:
        from tests.fixtures.smtp_sink import SMTPSink
        sink = SMTPSink()
        sink.start()
        atexit.register(sink.cleanup)
        server = JdmailServer(
            overrides={"filters": {"chain": "f_quar"}, "queue": {"scan_interval": "100ms"},
                       "routing": {"relayhost": f"[127.0.0.1]:{sink.port}"}},
            extra_ini="[filter:f_quar]\ntype = scripted\nwhen = quarantine-me\naction = quarantine\n"
                      "reason = held for review\n", pythonpath=[SITE])
        server.write_ini()
        server.ctl("domain", "add", "example.org")
        for address, password in USERS:
            server.ctl("user", "add", address, "--password", password)
        server.start()
        atexit.register(server.stop)
        _release.append((server, sink))
    return _release[0]


class QuarantineReleaseTests(unittest.TestCase):
    """jdmailctl quarantine release delivers a held message as it would have been
    delivered: local recipients into their mailbox, remote ones out through the queue
    (here to a real smtp-sink, the relayhost)."""

    def setUp(self):
        self.server, self.sink = release_server()

    def send(self, subject, rcpts):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=unverified_context())
            s.login("carol@example.org", "secret")
            self.assertEqual(s.mail("carol@example.org")[0], 250)
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, text = s.data((f"From: carol@example.org\r\nTo: {', '.join(rcpts)}\r\n"
                                 f"Subject: {subject}\r\n\r\nHello.\r\n").encode())
        self.assertEqual(code, 250)
        return text.decode().rsplit(" ", 1)[1]

    def sunk(self, marker):
        return [d for d in self.sink.dumps() if marker.encode() in d.data]

    def in_inbox(self, marker, address="bob@example.org"):
        return [data for data in self.server.read_messages(address) if marker.encode() in data]

    def test_release_to_a_remote_and_a_local_recipient(self):
        marker = f"quarantine-me {token()}"
        queue_id = self.send(marker, ["friend@remote.test", "bob@example.org"])
        listing = self.server.ctl("quarantine", "list").stdout
        self.assertIn(f"{queue_id} ", listing)
        self.assertIn("<carol@example.org> friend@remote.test,bob@example.org f_quar: held for review", listing)
        time.sleep(0.5)                                   # two queue scans: nothing may leave
        self.assertEqual((self.sunk(marker), self.in_inbox(marker)), ([], []))

        released = self.server.ctl("quarantine", "release", queue_id)
        self.assertEqual(released.stdout, f"released {queue_id} to friend@remote.test, bob@example.org\n")
        [dump] = wait_for(lambda: self.sunk(marker), timeout=20)
        self.assertEqual(dump.mail_args.split()[0], "<carol@example.org>")
        self.assertEqual([r.split()[0] for r in dump.rcpt_args], ["<friend@remote.test>"])
        self.assertIn(f"with ESMTPSA id {queue_id}".encode(), dump.data)
        self.assertIn(f"Subject: {marker}\n".encode(), dump.data)
        [local] = self.in_inbox(marker)
        self.assertIn(f"with ESMTPSA id {queue_id}".encode(), local)
        self.assertNotIn(queue_id, self.server.ctl("quarantine", "list").stdout)
        self.assertEqual(self.server.ctl("queue", "list").stdout.count(queue_id), 0)

    def test_release_remote_only(self):
        marker = f"quarantine-me {token()}"
        queue_id = self.send(marker, ["someone@remote.test"])
        self.assertEqual(self.server.ctl("quarantine", "release", queue_id).stdout,
                         f"released {queue_id} to someone@remote.test\n")
        [dump] = wait_for(lambda: self.sunk(marker), timeout=20)
        self.assertEqual([r.split()[0] for r in dump.rcpt_args], ["<someone@remote.test>"])
        done = f"queue removed id={queue_id} delivered=1 bounced=0"
        self.assertTrue(wait_for(lambda: done in self.server.read_log(), timeout=20))
