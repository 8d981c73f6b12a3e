"""jdmail.filters.spamd.parse_response: spamd's answers, and the ones that are errors."""

from twisted.trial.unittest import TestCase

from jdmail.filters.spamd import SpamdError, SpamdResult, parse_response


class ParseTests(TestCase):

    def test_symbols(self):
        data = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 22\r\nSpam: True ; 1000.5 / 5.0\r\n\r\n"
                b"GTUBE,MISSING_DATE,X\r\n")
        self.assertEqual(parse_response(data),
                         SpamdResult(True, 1000.5, 5.0, ("GTUBE", "MISSING_DATE", "X")))

    def test_check(self):
        self.assertEqual(parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n", "CHECK"),
                         SpamdResult(False, -0.1, 5.0, ()))

    def test_errors(self):
        for data, text in ((b"SPAMD/1.0 76 Bad header line: x\r\n\r\n", "spamd error: SPAMD/1.0 76"),
                           (b"HTTP/1.1 400 Bad\r\n\r\n", "not a spamd answer"),
                           (b"SPAMD/1.1 0 EX_OK\r\nSpam: True", "incomplete answer"),
                           (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "no Spam header"),
                           (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5\r\n\r\n", "cannot read")):
            with self.assertRaises(SpamdError) as cm:
                parse_response(data)
            self.assertIn(text, str(cm.exception))
