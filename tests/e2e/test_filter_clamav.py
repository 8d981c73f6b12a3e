"""The clamav filter against a private real clamd (tests/fixtures/clamd.py): EICAR
rejected, quarantined or tagged, the postmaster notice, clean mail through, and clamd
stopped mid-test -> on_error (killed: an error; frozen: the filter timeout)."""

import base64
import smtplib

from twisted.trial import unittest

from tests.fixtures.clamd import EICAR, SIGNATURE, running_clamd
from tests.fixtures.server import running_server

USERS = (("bob@example.org", "secret"), ("postmaster@example.org", "secret"))


def eicar_mail(subject):
    b64 = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    return ("From: alice@elsewhere.test\r\nTo: bob@example.org\r\nSubject: " + subject + "\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n"
            "--XYZ\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            "--XYZ\r\nContent-Type: application/octet-stream; name=eicar.com\r\n"
            "Content-Disposition: attachment; filename=eicar.com\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "--XYZ--\r\n").encode()


def clean_mail(subject):
    return (f"From: alice@elsewhere.test\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\r\n"
            "Nothing to see.\r\n").encode()


class ClamAVTests(unittest.TestCase):

    def server(self, clamd, on_virus, unix=False, **extra):
        where = {"socket": clamd.socket_path} if unix else {"host": "127.0.0.1", "port": clamd.port}
        keys = {"on_virus": on_virus, **where, **extra}
        return running_server(self, users=USERS, overrides={"filters": {"chain": "clamav"}},
                              extra_ini="[filter:clamav]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))

    def send(self, server, data):
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@elsewhere.test")
            s.rcpt("bob@example.org")
            return s.data(data)

    def stored(self, server, address="bob@example.org", folder=None):
        out = []
        for path in server.messages(address, folder):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def test_reject_over_unix_socket_with_postmaster_notice(self):
        clamd = running_clamd(self)
        server = self.server(clamd, "reject", unix=True, notify="postmaster@example.org")
        self.assertEqual(self.send(server, eicar_mail("infected")),
                         (554, f"5.7.0 Virus found: {SIGNATURE}".encode()))
        self.assertEqual(self.send(server, clean_mail("clean one"))[0], 250)
        [clean] = self.stored(server)
        self.assertIn(b"Subject: clean one", clean)
        self.assertNotIn(b"X-Virus-Status", clean)
        log = server.read_log()
        self.assertIn(f"filter verdict filter=clamav stage=data action=reject reply=554 5.7.0 ", log)
        self.assertIn(f"reason=virus {SIGNATURE}", log)
        # the notice is delivered in the background, right after the verdict
        for _ in range(100):
            notices = self.stored(server, "postmaster@example.org")
            if notices:
                break
            import time
            time.sleep(0.1)
        [notice] = notices
        self.assertIn(f"Subject: Virus found: {SIGNATURE}\r\n".encode(), notice)
        self.assertIn(b"Sender: <alice@elsewhere.test>\r\nRecipients: bob@example.org\r\nAction: reject", notice)

    def test_quarantine(self):
        clamd = running_clamd(self)
        server = self.server(clamd, "quarantine")
        code, text = self.send(server, eicar_mail("to the quarantine"))
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(self.stored(server), [])
        listing = server.ctl("quarantine", "list").stdout
        self.assertIn(f"{queue_id} ", listing)
        self.assertIn(f"clamav: virus {SIGNATURE}", listing)
        shown = server.ctl("quarantine", "show", queue_id).stdout
        self.assertIn(f"X-Virus-Status: Infected ({SIGNATURE})\n", shown)

    def test_tag(self):
        clamd = running_clamd(self)
        server = self.server(clamd, "tag")
        self.assertEqual(self.send(server, eicar_mail("tag it"))[0], 250)
        [data] = self.stored(server)
        self.assertIn(f"\r\nX-Virus-Status: Infected ({SIGNATURE})\r\n".encode(), data)

    def test_clamd_stopped_mid_test_gives_on_error(self):
        clamd = running_clamd(self)
        server = self.server(clamd, "reject")
        self.assertEqual(self.send(server, clean_mail("before"))[0], 250)
        clamd.stop()
        self.assertEqual(self.send(server, clean_mail("after")),
                         (451, b"4.3.0 Temporary failure in message checks; try again later"))
        self.assertEqual(len(self.stored(server)), 1)
        self.assertIn("filter=clamav stage=data action=tempfail reply=451 4.3.0", server.read_log())
        self.assertIn("ClamdError: cannot reach clamd", server.read_log())

    def test_clamd_hanging_times_out_to_on_error(self):
        """clamd frozen (SIGSTOP) mid-test: the filter's timeout expires, its on_error
        (continue here) applies and the session goes on; clamd answers again after SIGCONT."""
        import os
        import signal
        clamd = running_clamd(self)
        server = self.server(clamd, "reject", timeout="1s", on_error="continue")
        os.kill(clamd.proc.pid, signal.SIGSTOP)
        try:
            self.assertEqual(self.send(server, eicar_mail("while frozen"))[0], 250)
        finally:
            os.kill(clamd.proc.pid, signal.SIGCONT)
        self.assertEqual(len(self.stored(server)), 1)
        self.assertIn("filter=clamav stage=data action=continue reply=- score=- ", server.read_log())
        self.assertIn("on_error=continue (timed out after 1s)", server.read_log())
        self.assertEqual(self.send(server, eicar_mail("thawed"))[0], 554)
