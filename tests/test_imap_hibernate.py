"""jdmail.imap.hibernate in-process, on the real reactor and loopback TCP (the
autologout, at least 30 minutes in the INI, is set to seconds here): a session that
hibernated in IDLE gets its keepalives and its autologout without ever being rebuilt,
its IMAPServer is really freed, and every count it held is released."""

import socket
import weakref
from types import SimpleNamespace

from twisted.internet import reactor, task, threads
from twisted.trial import unittest

from jdmail.imap import server as imap_server
from jdmail.imap.server import IMAPFactory
from tests.imap_fakes import USERS, FakePortal, FakeStoreRegistry


def _client(port):
    """LOGIN, IDLE, then every line until the server closes (blocking; in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        lines = [f.readline()]
        s.sendall(b"L LOGIN bob@example.org secret\r\n")
        lines.append(f.readline())
        s.sendall(b"I IDLE\r\n")
        while True:
            line = f.readline()
            if not line:
                return [x.decode().rstrip("\r\n") for x in lines]
            lines.append(line)


class HibernatedTimersTests(unittest.TestCase):

    def setUp(self):
        self.portal = FakePortal(USERS)
        services = SimpleNamespace(reactor=reactor, store=FakeStoreRegistry(), threadpool=None)
        self.factory = IMAPFactory(services, self.portal, {
            "allow_plaintext": True, "fail_delay": 0, "timeout": 3.5, "hibernate_timeout": 0.2})
        self.built = []
        build = self.factory.buildProtocol

        def tracked(addr):
            p = build(addr)
            self.built.append(weakref.ref(p))
            return p
        self.factory.buildProtocol = tracked
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.patch(imap_server, "IDLE_KEEPALIVE", 1.0)

    async def test_keepalive_and_autologout_while_hibernated(self):
        done = threads.deferToThread(_client, self.port.getHost().port)
        hib = self.factory.hibernation
        for _ in range(200):
            if hib.asleep:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(hib.asleep, 1)
        self.assertEqual(len(self.built), 1)
        self.assertIsNone(self.built[0](), "the hibernated IMAPServer is still referenced")
        self.assertEqual((self.factory.counter.total, self.factory.user_counter.total), (1, 1))
        lines = await done
        self.assertTrue(lines[1].startswith("L OK [CAPABILITY "), lines)
        self.assertEqual(lines[2], "+ idling")
        self.assertIn("* OK Still here", lines[3:-1])
        self.assertEqual(set(lines[3:-1]), {"* OK Still here"})
        self.assertEqual(lines[-1], "* BYE Autologout; idle for too long")
        self.assertEqual(len(self.built), 1, "the session was rebuilt for its keepalive or autologout")
        self.assertEqual(hib.asleep, 0)
        self.assertEqual((self.factory.counter.total, self.factory.user_counter.total), (0, 0))
        self.assertEqual(dict(self.factory.counter.per_ip), {})
        self.assertEqual(dict(self.factory.user_counter.per_ip), {})
        self.assertEqual(self.portal.logouts, 1)


class TimerHeapTests(unittest.TestCase):

    def test_entries_of_woken_sessions_do_not_pile_up(self):
        from twisted.internet.testing import MemoryReactorClock
        from jdmail.imap.hibernate import Hibernation
        hib = Hibernation(SimpleNamespace(reactor=MemoryReactorClock()), 30.0)
        asleep = SimpleNamespace(sock=object(), due=None)
        hib.asleep = 1
        hib._push(asleep, 1800.0)
        for i in range(500):       # a session that sleeps and wakes again and again
            woken = SimpleNamespace(sock=object(), due=None)
            hib._push(woken, 1800.0 + i)
            woken.sock = None
        self.assertLessEqual(len(hib._heap), 2 * hib.asleep + 65)
        self.assertIn(asleep, [e[2] for e in hib._heap])
