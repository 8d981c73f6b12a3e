"""jdmail.queue.store: the outbound queue's durable store."""

import os
import sqlite3

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from jdmail.interfaces import Envelope, IDeliveryQueue, QueuedRecipient
from jdmail.queue.store import LOST_REASON, QueueError, QueueStore, backoff, expired
from jdmail.services import Services
from jdmail.smtp.spool import SpoolFile, new_queue_id

T0 = 1_800_000_000.0
BODY = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


class QueueTestCase(TestCase):

    def setUp(self):
        self.datadir = os.path.abspath(self.mktemp())
        os.makedirs(self.datadir)
        self.spool = os.path.join(self.datadir, "spool")
        os.makedirs(self.spool)
        pool = ThreadPool(minthreads=1, maxthreads=4, name="test-queue")
        pool.start()
        self.addCleanup(pool.stop)
        self.services = Services(reactor=reactor, config=None, hostname="mx.example.org",
                                 datadir=self.datadir, threadpool=pool)
        self.queue = self.open_store()

    def open_store(self, **kwargs):
        store = QueueStore(None, self.services, **kwargs)
        self.addCleanup(store.close)
        return store

    def spooled(self, body=BODY):
        spool = SpoolFile(self.spool, new_queue_id())
        spool.write(body)
        spool.commit()
        return spool

    async def enqueue(self, recipients=("bob@remote.example",), sender="alice@example.org",
                      now=T0, queue=None, **kwargs):
        spool = self.spooled()
        envelope = Envelope(queue_id=spool.queue_id, sender=sender)
        message = await (queue or self.queue).enqueue(envelope, spool.path, list(recipients),
                                                      now=now, **kwargs)
        spool.discard()           # what SMTP does after delivery: the queue keeps its link
        return message

    def file(self, queue_id):
        return os.path.join(self.datadir, "queue", "messages", queue_id)

    def rows(self, queue_id):
        db = sqlite3.connect(os.path.join(self.datadir, "queue", "queue.sqlite"))
        try:
            m = db.execute("SELECT count(*) FROM messages WHERE queue_id = ?",
                           (queue_id,)).fetchone()[0]
            r = db.execute("SELECT count(*) FROM recipients WHERE queue_id = ?",
                           (queue_id,)).fetchone()[0]
            return m, r
        finally:
            db.close()


class EnqueueTests(QueueTestCase):

    def test_interface(self):
        verifyObject(IDeliveryQueue, self.queue)

    def test_database_settings(self):
        db = self.queue._db
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.execute("PRAGMA synchronous").fetchone()[0], 2)   # FULL
        self.assertGreater(db.execute("PRAGMA busy_timeout").fetchone()[0], 0)

    async def test_enqueue_links_file_and_writes_rows(self):
        spool = self.spooled()
        envelope = Envelope(queue_id=spool.queue_id, sender="alice@example.org")
        rcpts = [QueuedRecipient("bob@remote.example", notify=("SUCCESS", "FAILURE"),
                                 orcpt="rfc822;bob@remote.example"),
                 "carol@remote.example", "carol@remote.example"]
        message = await self.queue.enqueue(envelope, spool.path, rcpts, ret="HDRS",
                                           envid="E1", now=T0)
        path = self.file(spool.queue_id)
        self.assertTrue(os.path.samefile(path, spool.path))         # a hard link, no copy
        self.assertEqual(os.stat(path).st_nlink, 2)
        self.assertEqual(self.rows(spool.queue_id), (1, 2))          # duplicate dropped
        self.assertEqual(message.queue_id, spool.queue_id)
        self.assertEqual((message.sender, message.size, message.arrived, message.ret,
                          message.envid, message.held, message.warned),
                         ("alice@example.org", len(BODY), T0, "HDRS", "E1", False, False))
        bob, carol = message.recipients
        self.assertEqual((bob.address, bob.state, bob.attempts, bob.next_attempt, bob.notify,
                          bob.orcpt),
                         ("bob@remote.example", "pending", 0, T0, ("SUCCESS", "FAILURE"),
                          "rfc822;bob@remote.example"))
        self.assertEqual((carol.address, carol.notify, carol.orcpt),
                         ("carol@remote.example", (), ""))

    async def test_survives_restart(self):
        message = await self.enqueue(["bob@remote.example"], sender="")
        self.queue.close()
        again = self.open_store()
        [listed] = await again.list()
        self.assertEqual(listed, message)
        self.assertEqual(listed.sender, "")
        with await again.open_message(message.queue_id) as f:
            self.assertEqual(f.read(), BODY)
        self.assertEqual(again.recover(), ([], []))
        self.assertTrue(os.path.exists(self.file(message.queue_id)))

    async def test_copy_when_link_fails(self):
        def no_link(src, dst):
            raise OSError(18, "Invalid cross-device link")
        self.patch(os, "link", no_link)
        message = await self.enqueue()
        path = self.file(message.queue_id)
        self.assertEqual(os.stat(path).st_nlink, 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.assertEqual(os.listdir(os.path.dirname(path)), [message.queue_id])

    async def test_enqueue_twice_refused(self):
        spool = self.spooled()
        envelope = Envelope(queue_id=spool.queue_id, sender="a@example.org")
        await self.queue.enqueue(envelope, spool.path, ["b@remote.example"], now=T0)
        with self.assertRaises(QueueError):
            await self.queue.enqueue(envelope, spool.path, ["c@remote.example"], now=T0)
        [message] = await self.queue.list()
        self.assertEqual([r.address for r in message.recipients], ["b@remote.example"])
        self.assertTrue(os.path.exists(self.file(spool.queue_id)))

    async def test_no_recipients_refused(self):
        spool = self.spooled()
        envelope = Envelope(queue_id=spool.queue_id, sender="a@example.org")
        with self.assertRaises(QueueError):
            await self.queue.enqueue(envelope, spool.path, [], now=T0)
        self.assertFalse(os.path.exists(self.file(spool.queue_id)))
        self.assertEqual(self.rows(spool.queue_id), (0, 0))

    async def test_failed_commit_removes_file(self):
        def failing(work):
            raise sqlite3.OperationalError("disk I/O error")
        self.patch(self.queue, "_write", failing)
        spool = self.spooled()
        envelope = Envelope(queue_id=spool.queue_id, sender="a@example.org")
        with self.assertRaises(sqlite3.OperationalError):
            await self.queue.enqueue(envelope, spool.path, ["b@remote.example"], now=T0)
        self.assertFalse(os.path.exists(self.file(spool.queue_id)))
        self.assertEqual(self.rows(spool.queue_id), (0, 0))

    async def test_unsafe_queue_id(self):
        spool = self.spooled()
        with self.assertRaises(QueueError):
            await self.queue.enqueue(Envelope(queue_id="../x", sender=""), spool.path,
                                     ["b@remote.example"])
        with self.assertRaises(QueueError):
            await self.queue.delete("../../etc")


class DueTests(QueueTestCase):

    async def test_oldest_first_and_limit(self):
        late = await self.enqueue(now=T0 + 20)
        early = await self.enqueue(now=T0)
        middle = await self.enqueue(now=T0 + 10)
        due = await self.queue.due(T0 + 100, 10)
        self.assertEqual([m.queue_id for m in due],
                         [early.queue_id, middle.queue_id, late.queue_id])
        due = await self.queue.due(T0 + 100, 2)
        self.assertEqual([m.queue_id for m in due], [early.queue_id, middle.queue_id])
        due = await self.queue.due(T0 + 15, 10)         # the newest is not due yet
        self.assertEqual([m.queue_id for m in due], [early.queue_id, middle.queue_id])

    async def test_held_messages_are_not_due(self):
        a = await self.enqueue(now=T0)
        b = await self.enqueue(now=T0 + 1)
        self.assertTrue(await self.queue.hold(a.queue_id))
        self.assertEqual([m.queue_id for m in await self.queue.due(T0 + 5, 10)], [b.queue_id])
        [held] = [m for m in await self.queue.list() if m.queue_id == a.queue_id]
        self.assertTrue(held.held)
        self.assertTrue(await self.queue.hold(a.queue_id, False))
        self.assertEqual([m.queue_id for m in await self.queue.due(T0 + 5, 10)],
                         [a.queue_id, b.queue_id])
        self.assertFalse(await self.queue.hold("0NOSUCH"))

    async def test_deferred_waits_for_next_attempt_and_flush(self):
        m = await self.enqueue(now=T0)
        await self.queue.record(m.queue_id, {
            "bob@remote.example": ("deferred", "451 4.3.0 try later", T0 + 300)})
        self.assertEqual(await self.queue.due(T0 + 299, 10), [])
        [due] = await self.queue.due(T0 + 300, 10)
        [r] = due.recipients
        self.assertEqual((r.state, r.attempts, r.last_error, r.next_attempt),
                         ("deferred", 1, "451 4.3.0 try later", T0 + 300))
        self.assertEqual(await self.queue.flush(m.queue_id), 1)
        self.assertEqual(len(await self.queue.due(T0 + 1, 10)), 1)

    async def test_flush_all_leaves_held_held(self):
        a = await self.enqueue(now=T0)
        b = await self.enqueue(now=T0)
        for m in (a, b):
            await self.queue.record(m.queue_id, {
                "bob@remote.example": ("deferred", "451", T0 + 3600)})
        await self.queue.hold(b.queue_id)
        self.assertEqual(await self.queue.flush(), 2)
        self.assertEqual([m.queue_id for m in await self.queue.due(T0, 10)], [a.queue_id])


class RecordTests(QueueTestCase):

    async def test_all_delivered_removes_everything(self):
        m = await self.enqueue(["b@remote.example", "c@remote.example"])
        final = await self.queue.record(m.queue_id, {
            "b@remote.example": ("delivered", "250 ok", 0),
            "c@remote.example": ("bounced", "550 5.1.1 no such user", 0)})
        self.assertEqual([r.state for r in final.recipients], ["delivered", "bounced"])
        self.assertFalse(os.path.exists(self.file(m.queue_id)))
        self.assertEqual(self.rows(m.queue_id), (0, 0))
        self.assertEqual(await self.queue.list(), [])
        # idempotent: a second record (or one after jdmailctl delete) is a no-op
        self.assertIsNone(await self.queue.record(m.queue_id, {
            "b@remote.example": ("delivered", "250 ok", 0)}))

    async def test_partial_delivery_keeps_the_others(self):
        m = await self.enqueue(["b@remote.example", "c@other.example"])
        await self.queue.record(m.queue_id, {
            "b@remote.example": ("delivered", "250 ok", 0),
            "c@other.example": ("deferred", "421 busy", T0 + 300)})
        self.assertTrue(os.path.exists(self.file(m.queue_id)))
        self.assertEqual(self.rows(m.queue_id), (1, 2))
        [due] = await self.queue.due(T0 + 300, 10)
        self.assertEqual([(r.address, r.state) for r in due.recipients],
                         [("b@remote.example", "delivered"), ("c@other.example", "deferred")])
        await self.queue.record(m.queue_id, {"c@other.example": ("delivered", "250", 0)})
        self.assertFalse(os.path.exists(self.file(m.queue_id)))
        self.assertEqual(self.rows(m.queue_id), (0, 0))

    async def test_unknown_state_refused(self):
        m = await self.enqueue()
        with self.assertRaises(QueueError):
            await self.queue.record(m.queue_id, {"bob@remote.example": ("gone", "", 0)})
        self.assertEqual(self.rows(m.queue_id), (1, 1))

    async def test_delete(self):
        m = await self.enqueue()
        self.assertTrue(await self.queue.delete(m.queue_id))
        self.assertFalse(os.path.exists(self.file(m.queue_id)))
        self.assertEqual(self.rows(m.queue_id), (0, 0))
        self.assertFalse(await self.queue.delete(m.queue_id))

    async def test_set_warned(self):
        m = await self.enqueue()
        self.assertTrue(await self.queue.set_warned(m.queue_id))
        self.assertTrue((await self.queue.get(m.queue_id)).warned)
        self.assertIsNone(await self.queue.get("0NOSUCH"))


class RecoverTests(QueueTestCase):

    async def test_orphan_files_removed(self):
        kept = await self.enqueue()
        orphan = self.file("0ORPHAN")
        with open(orphan, "wb") as f:
            f.write(BODY)
        leftover = self.file(".0COPY.tmp")
        with open(leftover, "wb") as f:
            f.write(b"half")
        removed, lost = self.open_store().recover()
        self.assertEqual((removed, lost), (["0ORPHAN"], []))
        self.assertFalse(os.path.exists(orphan))
        self.assertFalse(os.path.exists(leftover))
        self.assertTrue(os.path.exists(self.file(kept.queue_id)))

    async def test_lost_file_bounces_recipients(self):
        m = await self.enqueue(["b@remote.example", "c@remote.example"])
        await self.queue.record(m.queue_id, {"b@remote.example": ("delivered", "250", 0)})
        os.unlink(self.file(m.queue_id))
        removed, [lost] = self.queue.recover()
        self.assertEqual(removed, [])
        self.assertEqual(lost.queue_id, m.queue_id)
        self.assertEqual([(r.address, r.state, r.last_error) for r in lost.recipients],
                         [("b@remote.example", "delivered", "250"),
                          ("c@remote.example", "bounced", LOST_REASON)])
        self.assertEqual(await self.queue.due(T0 + 10**6, 10), [])
        self.flushLoggedErrors()
        # the runner sends the DSNs, then deletes it
        self.assertTrue(await self.queue.delete(m.queue_id))
        self.assertEqual(self.queue.recover(), ([], []))


class SchemaTests(QueueTestCase):

    async def test_queue_without_the_smtputf8_column_is_upgraded(self):
        message = await self.enqueue()
        self.queue.close()
        db = sqlite3.connect(os.path.join(self.datadir, "queue", "queue.sqlite"))
        db.execute("ALTER TABLE messages DROP COLUMN smtputf8")     # as made before it existed
        db.commit()
        db.close()
        store = self.open_store()
        [old] = await store.list()
        self.assertEqual((old.queue_id, old.smtputf8), (message.queue_id, False))
        spool = self.spooled()
        new = await store.enqueue(Envelope(queue_id=spool.queue_id, sender="a@example.org", smtputf8=True),
                                  spool.path, ["jörg@remote.example"])
        self.assertTrue(new.smtputf8)


class SecondProcessTests(QueueTestCase):
    """jdmailctl opens its own QueueStore on the same directory while the server runs."""

    async def test_second_instance_sees_and_changes_the_queue(self):
        ctl = self.open_store()
        a = await self.enqueue(now=T0)
        b = await self.enqueue(now=T0 + 1)
        self.assertEqual([m.queue_id for m in await ctl.list()], [a.queue_id, b.queue_id])
        await ctl.hold(a.queue_id)
        self.assertEqual([m.queue_id for m in await self.queue.due(T0 + 5, 10)], [b.queue_id])
        await ctl.delete(b.queue_id)
        self.assertEqual(await self.queue.due(T0 + 5, 10), [])
        self.assertIsNone(await self.queue.record(b.queue_id, {
            "bob@remote.example": ("delivered", "250", 0)}))
        await self.queue.record(a.queue_id, {
            "bob@remote.example": ("deferred", "451", T0 + 3600)})
        await ctl.hold(a.queue_id, False)
        await ctl.flush(a.queue_id)
        [due] = await self.queue.due(T0, 10)
        self.assertEqual(due.recipients[0].attempts, 1)
        c = await self.enqueue(now=T0 + 2, queue=ctl)
        self.assertEqual([m.queue_id for m in await self.queue.list()],
                         [a.queue_id, c.queue_id])

    async def test_other_process_while_open(self):
        """A real second process (as jdmailctl is) holds and deletes while ours is open."""
        import subprocess
        import sys
        from twisted.internet.threads import deferToThread
        a = await self.enqueue(now=T0)
        b = await self.enqueue(now=T0 + 1)
        script = (
            "import sys, asyncio\n"
            "from jdmail.queue.store import QueueStore\n"
            "from jdmail.services import Services\n"
            "class Sync(Services):\n"
            "    async def run_blocking(self, f, *a, **k):\n"
            "        return f(*a, **k)\n"
            "s = Sync(reactor=None, config=None, hostname='h', datadir=sys.argv[1],\n"
            "         threadpool=None)\n"
            "q = QueueStore(None, s)\n"
            "async def main():\n"
            "    assert await q.hold(sys.argv[2])\n"
            "    assert await q.delete(sys.argv[3])\n"
            "    print(len(await q.list()))\n"
            "asyncio.run(main())\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = await deferToThread(
            subprocess.run, [sys.executable, "-c", script, self.datadir, a.queue_id, b.queue_id],
            capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "1"), out.stderr)
        [left] = await self.queue.list()
        self.assertEqual((left.queue_id, left.held), (a.queue_id, True))
        self.assertFalse(os.path.exists(self.file(b.queue_id)))
        self.assertEqual(await self.queue.due(T0 + 5, 10), [])


class BackoffTests(TestCase):

    def test_defaults(self):
        self.assertEqual([backoff(n) for n in range(0, 8)],
                         [300, 300, 600, 1200, 2400, 3600, 3600, 3600])
        self.assertEqual(backoff(10_000), 3600)

    def test_configured(self):
        services = Services(reactor=reactor, config=None, hostname="h",
                            datadir=os.path.abspath(self.mktemp()), threadpool=None)
        store = QueueStore(None, services, min_backoff=60, max_backoff=600)
        self.addCleanup(store.close)
        self.assertEqual([store.backoff(n) for n in (1, 2, 3, 4, 5)], [60, 120, 240, 480, 600])
        self.assertEqual(store.next_attempt(2, T0), T0 + 120)

    def test_expired(self):
        from jdmail.interfaces import QueuedMessage
        m = QueuedMessage(queue_id="X", sender="", recipients=[], arrived=T0, size=1)
        self.assertFalse(expired(m, T0 + 5 * 86400 - 1))
        self.assertTrue(expired(m, T0 + 5 * 86400))
        self.assertTrue(expired(m, T0 + 3601, lifetime=3600))
        self.assertTrue(QueueStore.expired(m, T0 + 5 * 86400))
