"""jdmail.queue.downgrade: 8-bit bodies re-encoded for a server without 8BITMIME."""

import email
import email.policy

from twisted.trial.unittest import TestCase

from jdmail.queue.downgrade import quoted_printable, to_7bit


def parts(data):
    m = email.message_from_bytes(data, policy=email.policy.default)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in m.walk()
            if not p.is_multipart() and p.get_content_type() != "message/rfc822"]


class DowngradeTests(TestCase):

    def test_ascii_unchanged(self):
        data = b"Subject: x\r\n\r\nplain\r\n"
        self.assertIs(to_7bit(data), data)

    def test_single_part_gets_quoted_printable_and_mime_version(self):
        data = "Subject: x\r\n\r\nGrüße = a\r\ntrailing space \r\n".encode()
        out = to_7bit(data)
        self.assertEqual(out, b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable"
                              b"\r\n\r\nGr=C3=BC=C3=9Fe =3D a\r\ntrailing space=20\r\n")

    def test_existing_cte_replaced_even_when_folded(self):
        data = ("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding:\r\n 8bit\r\nSubject: x\r\n\r\nÄ\r\n").encode()
        out = to_7bit(data)
        self.assertEqual(out.count(b"Content-Transfer-Encoding"), 1)
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable\r\nSubject: x\r\n", out)
        self.assertEqual(parts(out), [("text/plain", "Ä\r\n".encode())])

    def test_multipart_text_binary_and_nested_message(self):
        data = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n--XX\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                + "Grüße\r\n".encode() + b"--XX\r\nContent-Type: text/plain\r\n\r\nascii part\r\n"
                b"--XX\r\nContent-Type: application/octet-stream\r\n\r\n\xff\xfe\x00\x80\r\n"
                b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n"
                + "inner Grüße\r\n".encode() + b"--XX--\r\n")
        out = to_7bit(data)
        self.assertTrue(out.isascii())
        self.assertIn(b"boundary=XX\r\nContent-Transfer-Encoding: 7bit\r\n", out)
        self.assertIn(b"Content-Type: text/plain\r\n\r\nascii part\r\n", out)     # untouched
        self.assertEqual(parts(out), [("text/plain", "Grüße".encode()),
                                      ("text/plain", b"ascii part"),
                                      ("application/octet-stream", b"\xff\xfe\x00\x80"),
                                      ("text/plain", "inner Grüße".encode())])

    def test_impossible_cases(self):
        self.assertIsNone(to_7bit("Subject: Grüße\r\n\r\nbody\r\n".encode()))         # header
        self.assertIsNone(to_7bit(b"Content-Transfer-Encoding: base64\r\n\r\n\xff\xff\r\n"))
        self.assertIsNone(to_7bit(b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n\xff\r\n"
                                  b"--XX\r\n\r\nx\r\n--XX--\r\n"))                          # preamble

    def test_long_lines_get_soft_breaks(self):
        out = quoted_printable("é".encode() * 100)
        lines = out.split(b"\r\n")
        self.assertTrue(all(len(line) <= 76 for line in lines))
        self.assertTrue(all(line.endswith(b"=") for line in lines[:-1]))
