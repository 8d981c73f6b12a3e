"""IMAP in the configuration and the service: [imap]/[imaps] keys, validation, listeners."""

import os
import shutil
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from jdmail import config
from jdmail.errors import ConfigErrors
from jdmail.imap.server import IMAPFactory
from jdmail.service import ListenersService, make_service


class IMAPConfigTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="jdmail-imapcfg-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def load(self, text):
        path = os.path.join(self.dir, "jdmail.ini")
        with open(path, "w") as f:
            f.write("[jdmail]\nhostname = mail.test\n" + text)
        return config.load(path, datadir=os.path.join(self.dir, "data"))

    def test_defaults(self):
        c = self.load("")
        self.assertEqual(c["imap"], {"listen": ["tcp:143"], "banner": "jdmail IMAP4rev1 Service ready",
                                     "max_connections": 500, "max_connections_per_ip": 10,
                                     "max_connections_per_user": 10, "timeout": 1800.0,
                                     "login_timeout": 60.0, "hibernate_timeout": 30.0})
        self.assertEqual(c["imaps"], {"listen": ["tcp:993"]})

    def test_timeout_below_rfc_minimum(self):
        with self.assertRaises(ConfigErrors) as cm:
            self.load("[imap]\ntimeout = 10m\nlogin_timeout = 0s\n")
        lines = str(cm.exception).splitlines()
        path = os.path.join(self.dir, "jdmail.ini")
        self.assertIn(f"{path}: [imap] login_timeout '0s': must be more than 0", lines)
        self.assertIn(f"{path}: [imap] timeout '10m': must be at least 30m (RFC 3501 5.4)", lines)

    def test_imaps_has_only_listen(self):
        with self.assertRaises(ConfigErrors) as cm:
            self.load("[imaps]\ntimeout = 40m\n")
        self.assertIn("[imaps] timeout is not a known key (allowed here: listen)", str(cm.exception))

    def test_service_listens_for_imap_and_imaps(self):
        c = self.load("[smtp]\nlisten =\nmax_message_size = 1M\n[submission]\nlisten =\n[smtps]\nlisten =\n"
                      "[pop3]\nlisten =\n[pop3s]\nlisten =\n[imap]\nlisten = tcp:1143:interface=127.0.0.1\n"
                      "max_connections_per_user = 3\nhibernate_timeout = 5s\n[imaps]\nlisten = tcp:1993:interface=127.0.0.1\n"
                      "[auth]\nfail_delay = 1s\nmax_failures = 5\n")
        top = make_service(c, MemoryReactorClock())
        listeners = [s for s in top if isinstance(s, ListenersService)][0].listeners
        by_section = {section: factory for section, _d, _e, factory in listeners}
        self.assertEqual(set(by_section), {"imap", "imaps"})
        imap = by_section["imap"]
        self.assertIsInstance(imap, IMAPFactory)
        self.assertFalse(imap.implicit_tls)
        self.assertIsNotNone(imap.tls_context)
        self.assertEqual((imap.max_connections_per_user, imap.fail_delay, imap.max_failures,
                          imap.max_message_size), (3, 1.0, 5, 1024 * 1024))
        self.assertEqual(imap.hibernation.timeout, 5.0)
        imaps = by_section["imaps"]
        self.assertIsInstance(imaps, TLSMemoryBIOFactory)
        inner = imaps.wrappedFactory
        self.assertTrue(inner.implicit_tls)
        self.assertIsNone(inner.hibernation)        # TLS sessions never hibernate
        self.assertIs(inner.counter, imap.counter)
        self.assertIs(inner.user_counter, imap.user_counter)
