"""jdmail.store across processes: the per-mailbox lock (lock.py) and the reload of what
another process committed (folders.py, PRAGMA data_version).

Two MaildirStores on one root in this process stand for two processes: each has its own
SQLite connection and its own lock file descriptors, and flock locks exclude each other
per open file, not per process. tests/e2e/test_multiprocess.py runs two real servers.
"""

import fcntl
import os
import sqlite3
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jdmail.interfaces import FolderError, FolderGone
from jdmail.store import folders as folders_module
from jdmail.store.index import INDEX_NAME
from jdmail.store.lock import LOCK_NAME, hold
from tests.test_store_index import ALICE, MESSAGE, StoreTestCase, wait


class TwoProcessTests(StoreTestCase):

    def setUp(self):
        super().setUp()
        self.other = self.new_store()

    def account(self, store=None):
        return (store or self.store).account(ALICE)

    async def test_appends_on_both_get_unique_uids_seen_by_both(self):
        a, b = self.account(), self.account(self.other)
        await a.list_folders()
        view_a = await self.open()
        view_b = await self.open(store=self.other)
        uids = []
        for i in range(6):
            uids.append((await (a if i % 2 else b).append("INBOX", MESSAGE + b"%d\r\n" % i))[1])
        self.assertEqual(uids, [1, 2, 3, 4, 5, 6])
        for view in (view_a, view_b):
            changes = await view.refresh()
            self.assertEqual([r.uid for r in changes.added], uids)
            self.assertEqual(view.uidnext, 7)
        with view_a.open_message(3) as fa, view_b.open_message(3) as fb:
            self.assertEqual(fa.read(), fb.read())
        self.assertEqual(view_a.highestmodseq, view_b.highestmodseq)

    async def test_flags_and_expunge_reach_the_other_as_changes(self):
        b = self.account(self.other)
        for i in range(3):
            await self.deliver(MESSAGE + b"%d\r\n" % i)
        view_a = await self.open()
        view_b = await self.open(store=self.other)
        changed, _ = await view_b.store_flags([2], ["\\Seen", "work"], "+")
        changes = await view_a.refresh()
        self.assertEqual([(r.uid, set(r.flags), r.modseq) for r in changes.changed],
                         [(2, {"\\Seen", "work"}, changed[0].modseq)])
        await view_a.store_flags([1, 2], ["\\Deleted"], "+")
        self.assertEqual(await view_a.expunge(), [1, 2])
        changes = await view_b.refresh()
        self.assertEqual(changes.expunged, [1, 2])
        self.assertEqual([r.uid for r in view_b.records], [3])
        self.assertEqual(view_a.highestmodseq, view_b.highestmodseq)
        self.assertEqual(await view_b.vanished_since(0), [1, 2])
        status = await b.status("INBOX")
        self.assertEqual((status["MESSAGES"], status["UIDNEXT"]), (1, 4))

    async def test_copy_and_move_into_a_folder_the_other_has_loaded(self):
        a, b = self.account(), self.account(self.other)
        await a.create_folder("Work")
        for i in range(4):
            await self.deliver(MESSAGE + b"%d\r\n" % i)
        work_b = await self.open("Work", store=self.other)      # made by the other process
        inbox_a = await self.open()
        _, pairs = await inbox_a.copy([1, 2], "Work")
        _, moved = await inbox_a.move([3], "Work")
        self.assertEqual([new for _, new in pairs + moved], [1, 2, 3])
        changes = await work_b.refresh()
        self.assertEqual([r.uid for r in changes.added], [1, 2, 3])
        await b.append("Work", MESSAGE)
        inbox_b = await self.open(store=self.other)
        self.assertEqual([r.uid for r in inbox_b.records], [1, 2, 4])
        self.assertEqual((await a.status("Work"))["UIDNEXT"], 5)

    async def test_folders_made_renamed_deleted_elsewhere(self):
        a, b = self.account(), self.account(self.other)
        await a.list_folders()
        await b.list_folders()
        await a.create_folder("Projects")
        with self.assertRaises(FolderError):
            await b.create_folder("Projects")
        view_b = await self.open("Projects", store=self.other)
        await a.append("Projects", MESSAGE)
        await a.rename_folder("Projects", "Old")
        self.assertEqual((await view_b.refresh()).added[0].uid, 1)
        self.assertEqual(view_b.name, "Old")
        self.assertIn("Old", {f.name for f in await b.list_folders()})
        await b.append("Old", MESSAGE)
        self.assertEqual((await a.status("Old"))["MESSAGES"], 2)
        await a.delete_folder("Old")
        with self.assertRaises(FolderGone):
            await view_b.refresh()
        self.assertNotIn("Old", {f.name for f in await b.list_folders()})

    async def test_pop3_on_one_imap_on_the_other(self):
        for i in range(3):
            await self.deliver(MESSAGE + b"%d\r\n" % i)
        view = await self.open()
        box = self.other.mailbox(ALICE)
        infos = await box.list()
        await box.remove([infos[0].key])
        self.assertEqual((await view.refresh()).expunged, [1])
        await self.account().append("INBOX", MESSAGE)
        self.assertEqual(len(await box.list()), 3)

    async def test_recent_goes_to_one_session_only(self):
        await self.deliver()
        view_a = await self.open()
        view_b = await self.open(store=self.other)
        self.assertEqual((view_a.recent, view_b.recent), ({1}, set()))

    async def test_nothing_reloaded_when_nothing_changed(self):
        await self.deliver()
        view = await self.open()
        reloads = []
        real = folders_module.AccountState._reload_io
        self.patch(folders_module.AccountState, "_reload_io", lambda st: reloads.append(st) or real(st))
        for _ in range(3):
            await view.refresh()
            await view.store_flags([1], ["\\Seen"], "+")
        self.assertEqual(reloads, [])
        await self.account(self.other).status("INBOX")      # a read: commits nothing
        await view.refresh()
        self.assertEqual(reloads, [])
        await (await self.open(store=self.other)).store_flags([1], ["x"], "+")
        await view.refresh()
        self.assertEqual(len(reloads), 1)

    async def test_a_held_lock_makes_the_other_wait(self):
        a, b = self.account(), self.account(self.other)
        await a.list_folders()
        await b.list_folders()
        st = self.store._state(ALICE)
        release = Deferred()

        async def hold_it():
            await release
        holding = Deferred.fromCoroutine(st.call(hold_it))
        waiting = Deferred.fromCoroutine(b.append("INBOX", MESSAGE))
        await deferLater(reactor, 0.5)      # (without the lock the append is done in a few ms)
        self.assertFalse(waiting.called)
        release.callback(None)
        await holding
        self.assertEqual((await wait(waiting))[1], 1)

    def test_jdmailctl_holds_it_blocking(self):
        os.makedirs(self.maildir())
        with hold(self.maildir()):
            self.assertFalse(os.path.exists(os.path.join(self.maildir(), LOCK_NAME)))   # none made
        with open(os.path.join(self.maildir(), LOCK_NAME), "w"), \
                open(os.path.join(self.maildir(), LOCK_NAME + "-turn"), "w"):
            pass
        with hold(self.maildir()):
            fd = os.open(os.path.join(self.maildir(), LOCK_NAME), os.O_RDONLY)
            try:
                with self.assertRaises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)

    async def test_a_path_only_change_reaches_the_other(self):
        await self.deliver()
        view_a = await self.open()
        view_b = await self.open(store=self.other)
        (name,) = self.files("new")
        os.rename(os.path.join(self.maildir(), "new", name), os.path.join(self.maildir(), "cur", name + ":2,"))
        self.bump("new", "cur")
        await view_a.refresh()      # A finds the move (flags unchanged) and records it
        changed, _ = await view_b.store_flags([1], ["\\Flagged"], "+")     # B renames the file A saw
        self.assertEqual(changed[0].uid, 1)
        self.assertEqual(self.files("cur"), [name + ":2,F"])

    async def test_index_replaced_by_the_other(self):
        await self.deliver()
        view_b = await self.open(store=self.other)
        await self.open()
        st = self.store._state(ALICE)

        async def damage():
            await st._damaged(sqlite3.DatabaseError("malformed (test)"))
        await st.call(damage)
        view_a = await self.open()      # A rebuilt it
        uidvalidity = view_a.uidvalidity
        with self.assertRaises(FolderGone):
            await view_b.refresh()
        view_b = await self.open(store=self.other)
        self.assertEqual((view_b.uidvalidity, [r.uid for r in view_b.records]), (uidvalidity, [1]))
        await self.account(self.other).append("INBOX", MESSAGE)
        self.assertEqual([r.uid for r in (await view_a.refresh()).added], [2])
        self.assertTrue(os.path.exists(os.path.join(self.maildir(), INDEX_NAME + "-wal")))


class NoticeTests(StoreTestCase):
    """What jdmail.workers passes between processes: a commit is reported (on_commit),
    and the other process's listening sessions are woken (changed_elsewhere); POP3's
    session lock excludes every other holder of the Maildir."""

    def setUp(self):
        super().setUp()
        self.other = self.new_store()

    async def test_commits_reported_and_listeners_woken_elsewhere(self):
        await self.deliver()
        reported = []
        self.store.on_commit = reported.append
        view_a = await self.open()
        self.assertEqual(reported, [ALICE])         # the sync gave the delivered file a UID
        view_b = await self.open(store=self.other)
        reported.clear()
        await view_a.refresh()
        self.assertEqual(reported, [])               # nothing committed, nothing said
        woken = Deferred()
        view_b.listen(lambda: woken.called or woken.callback(None))
        self.other.changed_elsewhere(ALICE)          # nothing changed yet: no wake-up
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(woken.called)
        await view_a.store_flags([1], ["\\Flagged"], "+")
        self.assertEqual(reported, [ALICE])
        self.other.changed_elsewhere(ALICE)
        await wait(woken)
        changes = await view_b.refresh()
        self.assertEqual([(r.uid, "\\Flagged" in r.flags) for r in changes.changed], [(1, True)])
        self.other.changed_elsewhere("example.org/nobody")      # no state for it: nothing to do

    async def test_session_lock(self):
        release = await self.store.lock_session(ALICE)
        self.assertTrue(callable(release))
        self.assertIsNone(await self.other.lock_session(ALICE))
        self.assertIsNone(await self.store.lock_session(ALICE))     # one session in this process too
        release()
        release()                                                   # idempotent
        again = await self.other.lock_session(ALICE)
        self.assertTrue(callable(again))
        again()


class CrashTests(StoreTestCase):

    async def test_killed_in_a_transaction_leaves_the_index_usable(self):
        """A process killed -9 inside a write transaction while holding the lock: the
        lock goes with it and its uncommitted change never happened."""
        await self.deliver()
        view = await self.open()
        script = (
            "import fcntl, os, sqlite3, sys\n"
            "md = sys.argv[1]\n"
            "fd = os.open(os.path.join(md, 'jdmail-index.lock'), os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "c = sqlite3.connect(os.path.join(md, 'jdmail-index.sqlite'), isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "c.execute('UPDATE folders SET uidnext=uidnext+100')\n"
            "print('in', flush=True)\n"
            "os.kill(os.getpid(), 9)\n")
        p = subprocess.run([sys.executable, "-c", script, self.maildir()], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual((p.returncode, p.stdout), (-9, "in\n"))
        uid = (await self.store.account(ALICE).append("INBOX", MESSAGE))[1]
        self.assertEqual(uid, 2)
        self.assertEqual([r.uid for r in (await view.refresh()).added], [2])


def index_fds(maildir):
    """How many of this process's descriptors are the index or its lock files in ``maildir``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(os.path.join(maildir, "jdmail-index")):
            n += 1
    return n


class SleepTests(StoreTestCase):
    """AccountState.sleep / MaildirStore.sleep_idle_indexes: the index connection and lock
    files of an unused account are closed while its sessions stay; the next call reopens
    them and catches up with what others committed meanwhile."""

    async def closed(self):
        for _ in range(100):
            if index_fds(os.path.realpath(self.maildir())) == 0:
                return True
            await deferLater(reactor, 0.02)
        return False

    async def test_an_idle_account_sleeps_and_its_session_catches_up(self):
        await self.deliver()
        view = await self.open()
        self.assertGreaterEqual(index_fds(os.path.realpath(self.maildir())), 3)     # index, lock, turnstile
        st = self.store._state(ALICE)
        self.store.index_idle_timeout = 60
        self.assertEqual(self.store.sleep_idle_indexes(), 0)        # used just now
        st.last_used -= 61
        self.assertEqual(self.store.sleep_idle_indexes(), 1)
        self.assertTrue(st.asleep)
        self.assertTrue(await self.closed())
        self.assertEqual(self.store.sleep_idle_indexes(), 0)        # already asleep
        other = self.new_store()                                    # another process meanwhile
        other_view = await self.open(store=other)
        await other_view.store_flags([1], ["\\Seen"], "+")
        uid = (await other.account(ALICE).append("INBOX", MESSAGE))[1]
        changes = await view.refresh()
        self.assertFalse(st.asleep)
        self.assertEqual([r.uid for r in changes.added], [uid])
        self.assertEqual([(r.uid, set(r.flags)) for r in changes.changed], [(1, {"\\Seen"})])
        await other_view.refresh()
        self.assertEqual(view.highestmodseq, other_view.highestmodseq)
        changed, _ = await view.store_flags([uid], ["\\Flagged"], "+")     # and it writes again
        self.assertEqual([r.uid for r in (await other_view.refresh()).changed], [uid])

    async def test_not_while_in_use(self):
        view = await self.open()
        st = self.store._state(ALICE)
        release = Deferred()

        async def hold_it():
            await release
        holding = Deferred.fromCoroutine(st.call(hold_it))
        self.assertFalse(st.sleep())
        release.callback(None)
        await holding
        self.assertTrue(st.sleep())
        self.assertEqual((await view.refresh()).added, [])

    async def test_index_replaced_while_asleep_ends_the_sessions(self):
        await self.deliver()
        view = await self.open()
        st = self.store._state(ALICE)
        self.assertTrue(st.sleep())
        self.assertTrue(await self.closed())
        other = self.new_store()
        await self.open(store=other)
        ost = other._state(ALICE)

        async def damage():
            await ost._damaged(sqlite3.DatabaseError("malformed (test)"))
        await ost.call(damage)
        fresh = await self.open(store=other)        # rebuilt with a new UIDVALIDITY
        with self.assertRaises(FolderGone):
            await view.refresh()
        again = await self.open()
        self.assertEqual((again.uidvalidity, [r.uid for r in again.records]), (fresh.uidvalidity, [1]))
