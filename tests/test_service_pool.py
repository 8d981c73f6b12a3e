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
