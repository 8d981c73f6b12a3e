"""jdmail.service.ThreadPoolService: last work on the pool runs before it stops."""

from twisted.internet import defer
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from jdmail.service import ThreadPoolService


class BeforeStopTests(unittest.TestCase):

    async def test_work_runs_before_the_pool_stops_and_failures_are_logged(self):
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test")
        svc = ThreadPoolService(pool)
        svc.startService()
        seen = []

        async def last_work():
            seen.append(await deferToThreadPool(reactor, pool, lambda: "ran on the pool"))
            seen.append(pool.started)

        async def broken():
            raise RuntimeError("boom")
        svc.before_stop += [broken, last_work]
        await defer.ensureDeferred(defer.maybeDeferred(svc.stopService))
        self.assertEqual(seen, ["ran on the pool", True])
        self.assertFalse(pool.started)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BlockingPoolTests(unittest.TestCase):

    def setUp(self):
        from twisted.internet import reactor
        from jdmail.threads import BlockingPool
        self.pool = BlockingPool(reactor, 3, name="t")

    async def test_results_errors_and_thread_limit(self):
        import threading
        import time
        self.pool.start()
        self.addCleanup(self.pool.stop)
        names = set()
        gate = threading.Event()

        def work(n):
            names.add(threading.current_thread().name)
            gate.wait(5)
            return n * 2
        ds = [self.pool.run(work, n) for n in range(10)]
        time.sleep(0.2)
        gate.set()
        self.assertEqual(await defer.gatherResults(ds), [n * 2 for n in range(10)])
        self.assertLessEqual(len(names), 3)
        self.assertEqual({threading.current_thread().name} & names, set())

        def boom():
            raise ValueError("bad value")
        with self.assertRaises(ValueError):
            await self.pool.run(boom)
        self.assertEqual(await self.pool.run(lambda a, b=0: a + b, 1, b=2), 3)

    async def test_queued_before_start_and_finished_by_stop(self):
        done = []
        d = self.pool.run(done.append, "early")
        self.assertEqual(done, [])
        self.pool.start()
        await d
        d2 = self.pool.run(done.append, "last")
        self.pool.stop()
        self.assertEqual(done, ["early", "last"])
        self.assertEqual(self.pool._threads, [])
        await d2
