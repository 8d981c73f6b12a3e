"""The spamassassin filter against a private real spamd with Debian's rules
(tests/fixtures/spamd.py): GTUBE refused over reject_score or tagged into Junk below
it, a normal message delivered untagged, per-user checks, spamd down -> on_error."""

import email.utils
import smtplib
import time

from twisted.trial import unittest

from tests.fixtures.server import running_server
from tests.fixtures.spamd import GTUBE, shared_spamd

USERS = (("bob@example.org", "secret"),)


def mail(subject, body):
    return (f"From: Alice <alice@elsewhere.test>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{time.time_ns()}@elsewhere.test>\r\n"
            f"\r\n{body}\r\n").encode()


HAM = "Hi Bob,\r\n\r\nshall we go through the budget tomorrow at ten? I will bring the figures.\r\n\r\nAlice"


class SpamAssassinTests(unittest.TestCase):

    def server(self, **keys):
        spamd = shared_spamd()
        keys.setdefault("host", "127.0.0.1")
        keys.setdefault("port", spamd.port)
        return running_server(self, users=USERS, overrides={"filters": {"chain": "spamassassin"}},
                              extra_ini="[filter:spamassassin]\n" + "".join(f"{k} = {v}\n"
                                                                           for k, v in keys.items()))

    def send(self, server, data):
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as s:
            s.ehlo("client.test")
            s.mail("alice@elsewhere.test")
            s.rcpt("bob@example.org")
            return s.data(data)

    def stored(self, server, folder=None):
        out = []
        for path in server.messages("bob@example.org", folder):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def test_gtube_rejected_over_reject_score_and_ham_delivered(self):
        server = self.server()          # defaults: tag 5, reject 10
        self.assertEqual(self.send(server, mail("cheap", GTUBE)),
                         (550, b"5.7.1 Message rejected under suspicion of SPAM"))
        self.assertEqual(self.send(server, mail("budget", HAM))[0], 250)
        [ham] = self.stored(server)
        self.assertIn(b"\r\nX-Spam-Status: No, score=", ham)
        self.assertNotIn(b"X-Spam-Flag", ham)
        self.assertNotIn(b"GTUBE", ham)
        log = server.read_log()
        self.assertIn("filter verdict filter=spamassassin stage=data action=reject reply=550 5.7.1", log)
        self.assertRegex(log, r"action=reject reply=550 5\.7\.1 score=\d{3,4}(\.\d+)? .* tests=\S*GTUBE")

    def test_gtube_tagged_into_junk_below_reject_score(self):
        server = self.server(reject_score="0", socket=shared_spamd().socket_path)      # unix socket
        self.assertEqual(self.send(server, mail("cheap", GTUBE))[0], 250)
        self.assertEqual(self.stored(server), [])
        [spam] = self.stored(server, "Junk")
        head = spam.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nX-Spam-Flag: YES\r\n", head)
        self.assertRegex(head, rb"\r\nX-Spam-Score: \d{3,4}\.\d\r\n")        # GTUBE: 1000 and a few
        self.assertRegex(head, rb"\r\nX-Spam-Status: Yes, score=\d{3,4}\.\d required=5\.0\s+tests=\S*GTUBE")

    def test_quarantine_over_reject_score_and_per_user(self):
        server = self.server(on_reject="quarantine", per_user="yes")
        code, text = self.send(server, mail("cheap", GTUBE))
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertIn(queue_id, server.ctl("quarantine", "list").stdout)
        self.assertEqual(self.stored(server), [])
        for _ in range(50):
            if "for bob@example.org:" in shared_spamd().read_log():
                break
            time.sleep(0.1)
        self.assertIn("for bob@example.org:", shared_spamd().read_log())

    def test_spamd_unreachable_gives_on_error(self):
        server = self.server(port="1", on_error="continue")
        self.assertEqual(self.send(server, mail("budget", HAM))[0], 250)
        [ham] = self.stored(server)
        self.assertNotIn(b"X-Spam", ham)
        self.assertIn("filter=spamassassin stage=data action=continue", server.read_log())
        self.assertIn("cannot reach spamd", server.read_log())
