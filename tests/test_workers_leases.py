"""jdmail.workers.leases: the connection limits over all workers, each admitting up to
its share without asking, borrowing beyond it; the limits hold exactly."""

from twisted.internet import defer
from twisted.trial import unittest

from jdmail.workers.leases import TOTAL, Limits, MasterLeases, WorkerLeases


class Worker:
    """One worker process wired straight to the master's MasterLeases (as the control
    channel would carry the calls), counting its questions to the master."""

    def __init__(self, index, master, workers, limits):
        self.index, self.master, self.workers = index, master, workers
        self.questions = 0
        self.leases = WorkerLeases(self._borrow, self._give_back)
        self.leases.begin(limits, master.deficits(self))

    def _borrow(self, ip, keys):
        self.questions += 1
        return defer.ensureDeferred(self.master.borrow(self, ip, keys, self.workers))

    def _give_back(self, key, n):
        self.master.give_back(self, key, n, self.workers)

    def lend(self, key):
        return defer.succeed(self.leases.lend(key))

    def grant(self, key, n):
        self.leases.grant(key, n)

    def open(self, ip="192.0.2.1"):
        """None (admitted) or the refusal, whether answered at once or by the master."""
        result = self.leases.open(ip)
        if isinstance(result, defer.Deferred):
            return self.successResultOf(result)
        return result

    def successResultOf(self, d):
        out = []
        d.addBoth(out.append)
        return out[0]


class Starting:
    """A worker slot whose process has not said Hello: the master lends from its share
    (as jdmail.workers.pool.Worker.lend does)."""

    def __init__(self, index, master):
        self.index, self.master = index, master

    def lend(self, key):
        return defer.succeed(self.master.credit(self, key) > 0)

    def grant(self, key, n):
        pass


class LeasesTests(unittest.TestCase):

    def pool(self, max_total, max_per_ip, n=2):
        self.limits = Limits(max_total, max_per_ip, n)
        self.master = MasterLeases(self.limits)
        self.workers = []
        for i in range(n):
            self.workers.append(Worker(i, self.master, self.workers, self.limits))
        return self.workers

    def total_credit(self, key):
        """What the workers hold plus the pool: always the limit."""
        return sum(w.leases.credit(key) for w in self.workers) + self.master.pool(key)

    def test_within_the_share_nobody_is_asked(self):
        a, b = self.pool(200, 20)
        for _ in range(10):
            self.assertIsNone(a.open())
            self.assertIsNone(b.open())
        for ip in ("192.0.2.7", "198.51.100.8", "2001:db8::9"):
            self.assertIsNone(a.open(ip))
        self.assertEqual((a.questions, b.questions), (0, 0))

    def test_per_ip_limit_exact_over_the_workers(self):
        a, b = self.pool(0, 4)
        self.assertEqual([a.open(), a.open()], [None, None])
        self.assertEqual(a.questions, 0)
        self.assertEqual([a.open(), a.open()], [None, None], "borrowed the two b does not use")
        self.assertEqual(a.open(), "connections from 192.0.2.1 at limit 4")
        self.assertEqual(b.open(), "connections from 192.0.2.1 at limit 4")
        self.assertIsNone(a.open("192.0.2.2"), "another IP has its own limit")
        self.assertEqual(self.total_credit("192.0.2.1"), 4)
        # one of a's ends: the credit goes back to b, which lent it, and b admits without asking
        a.leases.close("192.0.2.1")
        asked = b.questions
        self.assertIsNone(b.open())
        self.assertEqual(b.questions, asked)
        self.assertEqual(a.open(), "connections from 192.0.2.1 at limit 4")
        self.assertEqual(self.total_credit("192.0.2.1"), 4)

    def test_all_closed_leaves_no_state(self):
        a, b = self.pool(5, 3)
        opened = [(a, ip) for ip in ("192.0.2.1",) * 3] + [(b, "192.0.2.2")] * 2
        for w, ip in opened:
            self.assertIsNone(w.open(ip))
        self.assertEqual(b.open("192.0.2.3"), "total connections at limit 5")
        for w, ip in opened:
            w.leases.close(ip)
        self.assertEqual((a.leases.extra, b.leases.extra, dict(a.leases.used)), ({}, {}, {}))
        self.assertEqual((dict(self.master.extra), self.master.free), ({}, {}))

    def test_remainder_of_an_odd_limit_is_the_pool(self):
        a, b, c = self.pool(0, 5, n=3)          # shares of 1, a pool of 2
        self.assertEqual([a.open(), a.open(), a.open()], [None, None, None])
        self.assertEqual(a.questions, 2)
        self.assertEqual([b.open(), c.open()], [None, None])
        self.assertEqual(b.open(), "connections from 192.0.2.1 at limit 5")
        self.assertEqual(self.total_credit("192.0.2.1"), 5)

    def test_total_and_per_ip_together(self):
        a, b = self.pool(4, 3)
        self.assertEqual([a.open("192.0.2.1"), a.open("192.0.2.1"), a.open("192.0.2.1")], [None] * 3)
        self.assertEqual(a.open("192.0.2.1"), "connections from 192.0.2.1 at limit 3")
        self.assertIsNone(b.open("192.0.2.2"))
        self.assertEqual(b.open("192.0.2.3"), "total connections at limit 4")
        self.assertEqual(self.total_credit(TOTAL), 4)
        self.assertEqual(self.total_credit("192.0.2.2"), 3, "a refused total gives its IP credit back")

    def test_dead_worker_gives_back_what_it_borrowed_and_owes_what_it_lent(self):
        a, b = self.pool(0, 4)
        for _ in range(3):
            self.assertIsNone(a.open())             # a holds one of b's two
        self.master.worker_gone(a, self.workers)    # a's process dies: its connections too
        self.assertEqual(b.leases.credit("192.0.2.1"), 2, "b got back what it lent")
        a2 = Worker(0, self.master, self.workers, self.limits)
        self.workers[0] = a2
        self.assertEqual(a2.leases.credit("192.0.2.1"), 2)
        self.assertEqual(self.total_credit("192.0.2.1"), 4)

        self.assertEqual([b.open(), b.open(), b.open()], [None] * 3)     # b borrows one of a2's
        self.master.worker_gone(a2, self.workers)   # a2 dies having lent one
        a3 = Worker(0, self.master, self.workers, self.limits)
        self.workers[0] = a3
        self.assertEqual(a3.leases.credit("192.0.2.1"), 1, "its successor starts without the lent one")
        self.assertEqual(self.total_credit("192.0.2.1"), 4)
        b.leases.close("192.0.2.1")
        self.assertEqual(a3.leases.credit("192.0.2.1"), 2, "given back to the slot that lent it")
        self.assertEqual(self.total_credit("192.0.2.1"), 4)

    def test_a_worker_not_yet_started_lends_through_the_master(self):
        a, b = self.pool(0, 4)
        self.workers[1] = starting = Starting(1, self.master)
        self.assertEqual([a.open() for _ in range(5)], [None, None, None, None, "connections from 192.0.2.1 at limit 4"])
        b2 = Worker(1, self.master, self.workers, self.limits)     # it says Hello: it starts with nothing
        self.workers[1] = b2
        self.assertEqual(b2.leases.credit("192.0.2.1"), 0)
        self.assertEqual(b2.open(), "connections from 192.0.2.1 at limit 4")
        a.leases.close("192.0.2.1")
        self.assertEqual(b2.leases.credit("192.0.2.1"), 1, "given back to the slot that lent it")
        self.assertIsNotNone(starting)

    def test_no_limits(self):
        a, _b = self.pool(0, 0)
        for _ in range(50):
            self.assertIsNone(a.open())
        self.assertEqual((a.questions, dict(a.leases.used)), (0, {}))
