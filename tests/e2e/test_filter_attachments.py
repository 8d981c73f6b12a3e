"""The attachments filter end to end: blocked extensions and MIME types, in and out of
(nested) zip archives, a forwarded message's attachment, quarantine instead of reject,
and harmless attachments delivered."""

import io
import smtplib
import zipfile
from email.message import EmailMessage

from twisted.trial import unittest

from tests.fixtures.server import running_server

USERS = (("bob@example.org", "secret"),)


def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def mail(subject, attachments=()):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@elsewhere.test", "bob@example.org", subject
    m.set_content("See attached.")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


class AttachmentsTests(unittest.TestCase):

    def setUp(self):
        self.server = running_server(
            self, users=USERS, overrides={"filters": {"chain": "attachments, quarantined"}},
            extra_ini="[filter:attachments]\n\n"
                      "[filter:quarantined]\ntype = attachments\naction = quarantine\n"
                      "extensions = docm\nmime_types =\n")

    def send(self, data):
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@elsewhere.test")
            s.rcpt("bob@example.org")
            return s.data(data)

    def assertRefused(self, data, why):
        self.assertEqual(self.send(data), (554, b"5.7.1 Message refused: attachment type not allowed"))
        self.assertIn(f"reason=blocked attachment: {why}", self.server.read_log())

    def test_blocked_in_and_out_of_zips(self):
        exe = b"MZ\x90\x00" + b"\x00" * 60
        self.assertRefused(mail("exe", [("setup.exe", "application/octet-stream", exe)]), "file 'setup.exe'")
        self.assertRefused(mail("double", [("invoice.pdf.js.", "text/plain", b"x")]), "file 'invoice.pdf.js.'")
        self.assertRefused(mail("type", [("payload.bin", "application/x-msdownload", exe)]),
                           "type application/x-msdownload ('payload.bin')")
        self.assertRefused(mail("zip", [("docs.zip", "application/zip", zipped({"readme.txt": "hi",
                                                                                 "run.vbs": "x"}))]),
                           "file 'run.vbs' in 'docs.zip'")
        nested = zipped({"inner.zip": zipped({"deep/tool.scr": "x"})})
        self.assertRefused(mail("nested", [("outer.zip", "application/octet-stream", nested)]),
                           "file 'deep/tool.scr' in 'outer.zip/inner.zip'")
        inner = EmailMessage()
        inner["Subject"] = "inner"
        inner.set_content("x")
        inner.add_attachment(b"@echo off", maintype="application", subtype="octet-stream", filename="a.bat")
        outer = EmailMessage()
        outer["From"], outer["To"], outer["Subject"] = "alice@elsewhere.test", "bob@example.org", "fwd"
        outer.set_content("Forwarded.")
        outer.add_attachment(inner)             # message/rfc822
        self.assertRefused(outer.as_bytes(policy=outer.policy.clone(linesep="\r\n")), "file 'a.bat'")
        self.assertRefused(mail("lnk", [("fwd.zip", "application/x-zip-compressed",
                                         zipped({"x.LNK": "x"}))]), "file 'x.LNK' in 'fwd.zip'")
        self.assertEqual(self.server.messages("bob@example.org"), [])

    def test_harmless_attachments_delivered(self):
        ok = mail("fine", [("report.pdf", "application/pdf", b"%PDF-1.4 x"),
                           ("photos.zip", "application/zip", zipped({"a.jpg": "x", "notes.txt": "y"})),
                           ("broken.zip", "application/zip", b"PK\x03\x04 not really")])
        self.assertEqual(self.send(ok)[0], 250)
        self.assertEqual(len(self.server.messages("bob@example.org")), 1)

    def test_quarantine_action(self):
        code, text = self.send(mail("macro", [("budget.docm", "application/octet-stream", b"x")]))
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(self.server.messages("bob@example.org"), [])
        self.assertIn(f"{queue_id} ", self.server.ctl("quarantine", "list").stdout)
        self.assertIn("quarantined: blocked attachment: file 'budget.docm'", self.server.ctl(
            "quarantine", "list").stdout)
