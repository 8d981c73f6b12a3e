"""Greylisting decisions on a real SQLite database (through threads, as in the server),
with a fake clock for the delay."""

import os

from twisted.internet import task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jdmail.filters.greylist import Greylist, client_network
from jdmail.filters.greylist_store import GreylistStore, open_sqlite


class NetworkTests(unittest.TestCase):

    def test_client_networks(self):
        self.assertEqual(client_network("192.0.2.77"), "192.0.2.0/24")
        self.assertEqual(client_network("::ffff:192.0.2.77"), "192.0.2.0/24")
        self.assertEqual(client_network("2001:db8:1:2:3::4"), "2001:db8:1:2::/64")


class GreylistTests(unittest.TestCase):

    def setUp(self):
        self.path = os.path.join(self.mktemp() + ".sqlite")
        self.conn = open_sqlite(self.path)
        self.addCleanup(self.conn.close)
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.grey = self.make()

    def make(self, **kw):
        kw.setdefault("delay", 300)
        kw.setdefault("auto_allow_after", 3)
        return Greylist(GreylistStore(self.conn), self.clock, deferToThread, **kw)

    async def test_first_attempt_deferred_then_accepted_after_delay(self):
        first = await self.grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.assertEqual((first.allow, first.wait), (False, 300))
        self.clock.advance(120)
        early = await self.grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.assertEqual((early.allow, early.wait), (False, 180))
        self.assertIn("too early", early.why)
        self.clock.advance(181)
        # the same /24, another host of the sender's pool
        later = await self.grey.check("192.0.2.8", "A@Example.Test", "bob@example.org")
        self.assertTrue(later.allow, later.why)
        self.clock.advance(86400)
        self.assertTrue((await self.grey.check("192.0.2.7", "a@example.test", "bob@example.org")).allow)

    async def test_each_part_of_the_triplet_counts(self):
        await self.grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.clock.advance(301)
        for ip, sender, rcpt in (("192.0.3.7", "a@example.test", "bob@example.org"),
                                 ("192.0.2.7", "b@example.test", "bob@example.org"),
                                 ("192.0.2.7", "a@example.test", "carol@example.org"),
                                 ("192.0.2.7", "", "bob@example.org")):
            self.assertFalse((await self.grey.check(ip, sender, rcpt)).allow, (ip, sender, rcpt))

    async def test_not_retried_within_window_starts_over(self):
        grey = self.make(retry_window=3600)
        await grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.clock.advance(300 + 3600 + 1)
        again = await grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.assertFalse(again.allow)
        self.assertIn("starting over", again.why)
        self.clock.advance(301)
        self.assertTrue((await grey.check("192.0.2.7", "a@example.test", "bob@example.org")).allow)

    async def test_auto_allowlist_after_n_passes(self):
        for i in range(3):
            await self.grey.check("2001:db8:1:2::7", f"s{i}@example.test", "bob@example.org")
        self.clock.advance(301)
        for i in range(3):
            self.assertTrue((await self.grey.check("2001:db8:1:2::9", f"s{i}@example.test",
                                                   "bob@example.org")).allow)
        fresh = await self.grey.check("2001:db8:1:2::10", "new@example.test", "carol@example.org")
        self.assertTrue(fresh.allow)
        self.assertIn("auto-allowlisted after 3 passes", fresh.why)
        other = await self.grey.check("2001:db8:1:3::10", "new@example.test", "carol@example.org")
        self.assertFalse(other.allow)

    async def test_expiry_forgets(self):
        grey = self.make(expiry=86400, cleanup_interval=0)
        await grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.clock.advance(301)
        self.assertTrue((await grey.check("192.0.2.7", "a@example.test", "bob@example.org")).allow)
        self.clock.advance(86401)
        self.assertFalse((await grey.check("192.0.2.7", "a@example.test", "bob@example.org")).allow)
        rows = self.conn.execute("SELECT COUNT(*) FROM greylist_triplet").fetchone()[0]
        self.assertEqual(rows, 1)

    async def test_state_survives_a_new_connection(self):
        await self.grey.check("192.0.2.7", "a@example.test", "bob@example.org")
        self.clock.advance(301)
        conn = open_sqlite(self.path)
        self.addCleanup(conn.close)
        other = Greylist(GreylistStore(conn), self.clock, deferToThread, delay=300)
        self.assertTrue((await other.check("192.0.2.7", "a@example.test", "bob@example.org")).allow)
