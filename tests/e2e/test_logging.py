"""[jdmail] log_file: the admin's log gets one greppable line per SMTP transaction and per login."""

import os
import poplib
import smtplib
import ssl
import time

from twisted.trial.unittest import TestCase

from tests.fixtures.server import running_server


class LogFileTests(TestCase):
    def test_transactions_and_logins_in_the_log_file_without_passwords(self):
        probe = running_server(self)      # only for a temp dir to hold the log
        probe.stop()
        path = os.path.join(probe.tmp, "logs", "jdmail.log")
        server = running_server(self, overrides={"jdmail": {"log_file": path}})
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as c:
            c.sendmail("alice@remote.test", ["bob@example.org"], b"Subject: hi\r\n\r\nbody\r\n")
        pop = poplib.POP3("127.0.0.1", server.ports["pop3"])
        pop.stls(ssl._create_unverified_context())
        pop.user("bob@example.org")
        self.assertRaises(poplib.error_proto, pop.pass_, "wrong-password-xyz")
        pop.close()
        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if "pop3 login" in text:
                break
            time.sleep(0.05)
        lines = [l for l in text.splitlines() if "smtp transaction" in l]
        self.assertEqual(len(lines), 1, text)
        self.assertIn("client=127.0.0.1", lines[0])
        self.assertIn("from=<alice@remote.test>", lines[0])
        self.assertIn("rcpts=bob@example.org:250", lines[0])
        self.assertIn("result=accepted", lines[0])
        logins = [l for l in text.splitlines() if "pop3 login" in l]
        self.assertEqual(len(logins), 1, text)
        self.assertIn("user=bob@example.org", logins[0])
        self.assertIn("result=failed", logins[0])
        self.assertNotIn("wrong-password-xyz", text)
        self.assertNotIn("secret", text)
