"""jdmail.filters.spamd: spamd's answers, and the ones that are errors; CHECK, SYMBOLS
and PROCESS against a private real spamd (tests/fixtures/spamd.py), over TCP and its
unix socket."""

from twisted.trial.unittest import TestCase

from jdmail.filters.spamd import SpamdError, SpamdResult, parse_response, spamc
from tests.fixtures.spamd import GTUBE, shared_spamd

GTUBE_MAIL = (f"From: alice@elsewhere.test\r\nTo: bob@example.org\r\nSubject: cheap\r\n"
              f"Message-ID: <gtube@elsewhere.test>\r\n\r\n{GTUBE}\r\n").encode()


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

    def test_process(self):
        data = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 9\r\nSpam: True ; 7.0 / 5.0\r\n\r\nX: y\r\n\r\nz\r\n"
        self.assertEqual(parse_response(data, "PROCESS"), SpamdResult(True, 7.0, 5.0, (), b"X: y\r\n\r\nz"))


class RealSpamdTests(TestCase):
    """The client against spamd itself."""

    def endpoint(self, unix=False):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
        spamd = shared_spamd()
        if unix:
            return UNIXClientEndpoint(reactor, spamd.socket_path, timeout=10)
        return TCP4ClientEndpoint(reactor, "127.0.0.1", spamd.port, timeout=10)

    async def test_check_symbols_and_process(self):
        check = await spamc(self.endpoint(), GTUBE_MAIL, "CHECK")
        self.assertTrue(check.spam)
        self.assertGreaterEqual(check.score, 1000)
        self.assertEqual((check.symbols, check.message), ((), b""))
        symbols = await spamc(self.endpoint(unix=True), GTUBE_MAIL, "SYMBOLS")
        self.assertIn("GTUBE", symbols.symbols)
        self.assertEqual(symbols.score, check.score)
        processed = await spamc(self.endpoint(), GTUBE_MAIL, "PROCESS")
        self.assertEqual((processed.spam, processed.score), (True, check.score))
        self.assertIn(b"X-Spam-Flag: YES", processed.message)
        self.assertIn(b"GTUBE", processed.message)

    async def test_unknown_command_refused(self):
        with self.assertRaises(ValueError):
            await spamc(self.endpoint(), GTUBE_MAIL, "TELL")
