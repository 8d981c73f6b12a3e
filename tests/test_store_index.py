"""jdmail.store (index): UIDs, UIDVALIDITY, flags both ways, outside changes, rebuilds,
sessions seeing each other, CONDSTORE/QRESYNC data, listeners, the 100,000-message folder.

Real thread pool, real SQLite, real files; a "restart" is a new MaildirStore on the same
root after the old one closed its connections.
"""

import os
import sqlite3
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from jdmail.interfaces import FolderGone, IAccountStore, IFolder, IMessageStore, MessageRecord
from jdmail.store import folders as folders_module
from jdmail.store.files import order_key
from jdmail.store.index import INDEX_NAME
from jdmail.store.maildir import MaildirStore
from tests.fixtures.maildir_gen import generate, message
from tests.test_store_maildir import make_services

ALICE = "example.org/alice"
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nline one\r\n"


class StubStructure:
    """Stands in for jdmail.mime.MessageStructure (parse / to_bytes / from_bytes)."""
    parsed = 0

    def __init__(self, data):
        self.data = data

    @classmethod
    def parse(cls, data):
        cls.parsed += 1
        return cls(bytes(data))

    def to_bytes(self):
        return b"STUB" + self.data

    @classmethod
    def from_bytes(cls, blob):
        assert blob.startswith(b"STUB")
        return cls(blob[4:])


class StoreTestCase(unittest.TestCase):

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.services = make_services(self, self.base)
        self.root = os.path.join(self.base, "mail")
        self.store = self.new_store()
        self.spools = 0

    def new_store(self):
        store = MaildirStore(self.root, self.services)
        store._structure_class = StubStructure
        self.addCleanup(store.close)
        return store

    def restart(self):
        """A new process: the old store's connections closed, nothing kept in memory."""
        self.store.close()
        self.store = self.new_store()
        return self.store

    def maildir(self, key=ALICE, folder=None):
        domain, local = key.split("/")
        path = os.path.join(os.path.realpath(self.root), domain, local, "Maildir")
        return os.path.join(path, folder) if folder else path

    def files(self, sub, key=ALICE, folder=None):
        """The file names in a sub-directory, in delivery order (the microseconds in a
        name are not zero-padded, so sorting the names as strings is not that)."""
        return sorted(os.listdir(os.path.join(self.maildir(key, folder), sub)), key=lambda n: order_key(n, 0))

    async def deliver(self, data=MESSAGE, keys=(ALICE,)):
        self.spools += 1
        spool = os.path.join(self.base, f"spool{self.spools}")
        with open(spool, "wb") as f:
            f.write(data)
        await self.store.deliver(list(keys), spool)
        os.unlink(spool)

    async def open(self, folder="INBOX", readonly=False, store=None):
        view = await (store or self.store).account(ALICE).open_folder(folder, readonly)
        self.addCleanup(view.close)
        return view

    def drop(self, name, data, sub="new", key=ALICE, folder=None):
        """Another program puts a file into the Maildir."""
        path = os.path.join(self.maildir(key, folder), sub, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def bump(self, *subs, folder=None):
        """Move a directory's mtime forward, as a change in a later clock tick would."""
        for sub in subs:
            path = os.path.join(self.maildir(ALICE, folder), sub)
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def wait(d, seconds=5):
    return d.addTimeout(seconds, reactor)


class InterfaceTests(StoreTestCase):

    async def test_interfaces(self):
        verifyObject(IMessageStore, self.store)
        account = self.store.account(ALICE)
        verifyObject(IAccountStore, account)
        view = await self.open()
        verifyObject(IFolder, view)


class UIDTests(StoreTestCase):

    async def test_uids_stable_across_restart(self):
        for i in range(3):
            await self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
        view = await self.open()
        self.assertEqual([r.uid for r in view.records], [1, 2, 3])
        uidvalidity = view.uidvalidity
        self.assertEqual(view.uidnext, 4)
        with view.open_message(2) as f:
            self.assertEqual(f.read(), b"Subject: 1\r\n\r\nx\r\n")
        view.close()
        self.restart()
        view = await self.open()
        self.assertEqual([r.uid for r in view.records], [1, 2, 3])
        self.assertEqual(view.uidvalidity, uidvalidity)
        with view.open_message(2) as f:
            self.assertEqual(f.read(), b"Subject: 1\r\n\r\nx\r\n")
        await self.deliver()
        changes = await view.refresh()
        self.assertEqual([r.uid for r in changes.added], [4])

    async def test_uid_never_reused_after_expunge_and_restart(self):
        await self.deliver()
        await self.deliver()
        view = await self.open()
        await view.store_flags([2], ["\\Deleted"], "+")
        self.assertEqual(await view.expunge(), [2])
        view.close()
        self.restart()
        await self.deliver()
        view = await self.open()
        self.assertEqual([r.uid for r in view.records], [1, 3])
        self.assertEqual(view.uidnext, 4)

    async def test_outside_drop_gets_uid(self):
        view = await self.open()
        self.assertEqual(view.records, [])
        # another program's file: no S= size, LF line ends
        self.drop("1700000000.foreign.host", b"Subject: lf\n\nbody\n")
        self.bump("new")
        changes = await view.refresh()
        [rec] = changes.added
        self.assertEqual(rec.uid, 1)
        self.assertEqual(rec.size, len(b"Subject: lf\r\n\r\nbody\r\n"))
        self.assertEqual(view.records, [rec])
        with view.open_message(1) as f:
            self.assertEqual(f.read(), b"Subject: lf\r\n\r\nbody\r\n")

    async def test_outside_drops_ordered_and_ascending(self):
        view = await self.open()
        self.drop("1700000002.b.host,S=1", b"b")
        self.drop("1700000001.a.host,S=1", b"a")
        self.drop("1700000003.c.host,S=1:2,S", b"c", sub="cur")
        self.bump("new", "cur")
        changes = await view.refresh()
        self.assertEqual([r.uid for r in changes.added], [1, 2, 3])
        self.assertEqual([r.flags for r in changes.added],
                         [frozenset(), frozenset(), frozenset({"\\Seen"})])
        with view.open_message(1) as f:
            self.assertEqual(f.read(), b"a")
        self.drop("1600000000.old.host,S=1", b"o")
        self.bump("new")
        changes = await view.refresh()
        self.assertEqual([r.uid for r in changes.added], [4])      # later drops: higher UIDs

    async def test_vanished_file_is_expunged(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        name = self.files("new")[1]
        modseq = view.highestmodseq
        os.unlink(os.path.join(self.maildir(), "new", name))
        changes = await view.refresh()
        self.assertEqual(changes.expunged, [2])
        self.assertEqual([r.uid for r in view.records], [1, 3])
        self.assertGreater(view.highestmodseq, modseq)
        self.assertEqual(await view.vanished_since(modseq), [2])
        self.assertEqual(await view.vanished_since(view.highestmodseq), [])

    async def test_symlink_in_cur_is_not_a_message(self):
        secret = os.path.join(self.base, "secret")
        with open(secret, "wb") as f:
            f.write(b"root:x:0:0\n")
        view = await self.open()
        os.symlink(secret, os.path.join(self.maildir(), "cur", "1700000000.evil.host:2,S"))
        self.bump("cur")
        changes = await view.refresh()
        self.assertEqual(changes.added, [])


class FlagSyncTests(StoreTestCase):

    async def test_imap_flags_rename_the_file(self):
        await self.deliver()
        view = await self.open()
        [name] = self.files("new")
        changed, refused = await view.store_flags([1], ["\\Seen", "\\flagged", "$Label1"], "+")
        self.assertEqual(refused, [])
        self.assertEqual(changed[0].flags, frozenset({"\\Seen", "\\Flagged", "$Label1"}))
        self.assertEqual(self.files("new"), [])
        self.assertEqual(self.files("cur"), [name + ":2,FS"])
        await view.store_flags([1], ["\\Seen"], "-")
        self.assertEqual(self.files("cur"), [name + ":2,F"])
        await view.store_flags([1], ["$Other"], "+")           # keyword only: no rename
        self.assertEqual(self.files("cur"), [name + ":2,F"])
        view.close()
        self.restart()
        view = await self.open()
        self.assertEqual(view.records[0].flags, frozenset({"\\Flagged", "$Label1", "$Other"}))

    async def test_filename_flags_show_in_imap(self):
        await self.deliver()
        view = await self.open()
        [name] = self.files("new")
        before = view.records[0]
        await view.store_flags([1], ["$Keep"], "+")
        os.rename(os.path.join(self.maildir(), "new", name), os.path.join(self.maildir(), "cur", name + ":2,RS"))
        changes = await view.refresh()
        [rec] = changes.changed
        self.assertEqual(rec.flags, frozenset({"\\Seen", "\\Answered", "$Keep"}))
        self.assertGreater(rec.modseq, before.modseq)
        self.assertEqual(view.records, [rec])
        # and another program's rename within cur/ later
        os.rename(os.path.join(self.maildir(), "cur", name + ":2,RS"),
                  os.path.join(self.maildir(), "cur", name + ":2,PRST"))
        self.bump("cur")
        changes = await view.refresh()
        self.assertEqual(changes.changed[0].flags, frozenset({"\\Seen", "\\Answered", "\\Deleted", "$Keep"}))
        # letters we do not map (P) survive our own renames
        await view.store_flags([1], ["\\Deleted"], "-")
        self.assertEqual(self.files("cur"), [name + ":2,PRS"])

    async def test_pop3_sees_imap_flags_and_dele_expunges(self):
        await self.deliver()
        await self.deliver()
        view = await self.open()
        await view.store_flags([1], ["\\Seen"], "+")
        box = self.store.mailbox(ALICE)
        infos = await box.list()
        self.assertEqual([i.flags for i in infos], [frozenset({"\\Seen"}), frozenset()])
        keys = [i.key for i in infos]
        self.assertEqual(keys, [n.split(":")[0] for n in self.files("cur") + self.files("new")])
        await box.remove([keys[0]])
        changes = await view.refresh()
        self.assertEqual(changes.expunged, [1])
        self.assertEqual(await view.vanished_since(0), [1])


class RebuildTests(StoreTestCase):

    async def prepare(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        await view.store_flags([1], ["\\Seen"], "+")
        await view.store_flags([2], ["\\Flagged", "\\Answered"], "+")
        uidvalidity = view.uidvalidity
        view.close()
        self.store.close()
        return uidvalidity

    async def check_rebuilt(self, uidvalidity):
        self.store = self.new_store()
        view = await self.open()
        self.assertEqual([r.flags for r in view.records],
                         [frozenset({"\\Seen"}), frozenset({"\\Flagged", "\\Answered"}), frozenset()])
        self.assertEqual([r.uid for r in view.records], [1, 2, 3])
        self.assertNotEqual(view.uidvalidity, uidvalidity)
        folders = await self.store.account(ALICE).list_folders()
        self.assertIn("Sent", [f.name for f in folders])
        self.assertTrue(all(f.subscribed for f in folders))

    async def test_index_deleted(self):
        uidvalidity = await self.prepare()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(os.path.join(self.maildir(), INDEX_NAME + suffix)):
                os.unlink(os.path.join(self.maildir(), INDEX_NAME + suffix))
        time.sleep(1.01)        # a new UIDVALIDITY needs a later second only when the old one is lost
        await self.check_rebuilt(uidvalidity)

    async def test_index_garbage(self):
        uidvalidity = await self.prepare()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(os.path.join(self.maildir(), INDEX_NAME + suffix)):
                os.unlink(os.path.join(self.maildir(), INDEX_NAME + suffix))
        with open(os.path.join(self.maildir(), INDEX_NAME), "wb") as f:
            f.write(b"this is not a database" * 1000)
        time.sleep(1.01)
        await self.check_rebuilt(uidvalidity)
        self.assertTrue(os.path.exists(os.path.join(self.maildir(), INDEX_NAME + ".damaged")))

    async def test_index_missing_table(self):
        uidvalidity = await self.prepare()
        conn = sqlite3.connect(os.path.join(self.maildir(), INDEX_NAME))
        conn.execute("DROP TABLE messages")
        conn.commit()
        conn.close()
        time.sleep(1.01)
        await self.check_rebuilt(uidvalidity)

    def test_out_of_file_descriptors_is_not_damage(self):
        """An index that cannot be opened for a moment (here: the process is at its
        RLIMIT_NOFILE, as with thousands of idle IMAP sessions) raises; it is not
        renamed to .damaged and rebuilt with new UIDs."""
        maildir = os.path.abspath(self.mktemp())
        os.makedirs(maildir)
        script = (
            "import os, resource, sqlite3, sys\n"
            "from jdmail.store.index import open_index, INDEX_NAME\n"
            "d = sys.argv[1]\n"
            "conn, how = open_index(d); assert how == 'new', how; conn.close()\n"
            "held = []\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "try:\n"
            "    while True: held.append(os.open(os.devnull, os.O_RDONLY))\n"
            "except OSError: pass\n"
            "os.close(held.pop())\n"                    # room for the database, none for its WAL
            "try:\n"
            "    open_index(d)\n"
            "    print('opened')\n"
            "except sqlite3.OperationalError as e:\n"
            "    print('refused:', e)\n"
            "for fd in held: os.close(fd)\n"
            "conn, how = open_index(d); print('then', how)\n")
        out = subprocess.run([sys.executable, "-c", script, maildir], capture_output=True, text=True,
                             timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("refused:", out.stdout)
        self.assertIn("then ok", out.stdout)
        self.assertFalse(os.path.exists(os.path.join(maildir, INDEX_NAME + ".damaged")))

    async def test_index_symlink_is_not_followed(self):
        await self.deliver()
        victim = os.path.join(self.base, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious")
        os.symlink(victim, os.path.join(self.maildir(), INDEX_NAME))
        view = await self.open()
        self.assertEqual(len(view.records), 1)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        self.assertFalse(os.path.islink(os.path.join(self.maildir(), INDEX_NAME)))

    async def test_damaged_in_use_ends_sessions_and_rebuilds(self):
        await self.deliver()
        view = await self.open()
        st = self.store._state(ALICE)

        def broken(*args):
            raise sqlite3.DatabaseError("database disk image is malformed")
        patcher = self.patch(st, "_check_io", broken)
        with self.assertRaises(sqlite3.DatabaseError):
            await view.refresh()
        patcher.restore()
        with self.assertRaises(FolderGone):
            await view.refresh()
        view2 = await self.open()
        self.assertEqual(len(view2.records), 1)

    async def test_crash_between_file_and_index_loses_nothing(self):
        """The file is in cur/ but the UID commit never happened: the next sync finds it."""
        view = await self.open()

        def crash(*args, **kwargs):
            raise OSError("simulated crash before the index commit")
        patcher = self.patch(folders_module.AccountState, "_insert_rows", crash)
        with self.assertRaises(OSError):
            await self.store.account(ALICE).append("INBOX", b"Subject: a\r\n\r\nx\r\n", ["\\Seen"])
        view.close()
        patcher.restore()
        self.restart()
        view = await self.open()
        self.assertEqual([(r.uid, r.flags) for r in view.records], [(1, frozenset({"\\Seen"}))])


class SessionTests(StoreTestCase):

    async def test_two_sessions_see_each_other(self):
        for _ in range(3):
            await self.deliver()
        a = await self.open()
        b = await self.open()
        changed, _ = await a.store_flags([2], ["\\Seen"], "+")
        self.assertEqual(a.records[1], changed[0])                  # a's view at once
        self.assertEqual(b.records[1].flags, frozenset())            # b's only after refresh
        changes = await b.refresh()
        self.assertEqual(changes.changed, changed)
        self.assertEqual(b.records[1].flags, frozenset({"\\Seen"}))
        self.assertEqual((await a.refresh()).changed, [])           # nothing new for a
        await a.store_flags([1, 3], ["\\Deleted"], "+")
        self.assertEqual(await a.expunge([3]), [3])
        self.assertEqual([r.uid for r in a.records], [1, 2])
        self.assertEqual([r.uid for r in b.records], [1, 2, 3])      # sequence numbers stay until refresh
        changes = await b.refresh()
        self.assertEqual(changes.expunged, [3])
        self.assertEqual([r.uid for r in changes.changed], [1])
        await self.deliver()
        changes_a, changes_b = await a.refresh(), await b.refresh()
        self.assertEqual([r.uid for r in changes_a.added], [4])
        self.assertEqual([r.uid for r in changes_b.added], [4])
        self.assertEqual([r.uid for r in a.records], [r.uid for r in b.records])

    async def test_expunge_of_message_the_other_never_saw(self):
        a = await self.open()
        b = await self.open()
        await self.deliver()
        await a.refresh()
        await a.store_flags([1], ["\\Deleted"], "+")
        await a.expunge()
        changes = await b.refresh()
        self.assertEqual((changes.added, changes.expunged, changes.changed), ([], [], []))

    async def test_listen_fires_on_delivery(self):
        view = await self.open()
        fired = Deferred()
        stop = view.listen(lambda: fired.called or fired.callback("yes"))
        await self.deliver()
        self.assertEqual(await wait(fired), "yes")
        changes = await view.refresh()
        self.assertEqual(len(changes.added), 1)
        stop()
        self.assertEqual(view._listeners, [])

    async def test_delivery_in_the_same_clock_tick_is_seen(self):
        """new/'s mtime does not move when a delivery lands in the tick of our last listing;
        the delivery is found anyway (an IDLE session is woken for it and must see it)."""
        view = await self.open()
        new = os.path.join(self.maildir(), "new")
        before = os.stat(new)
        fired = Deferred()
        view.listen(lambda: fired.called or fired.callback(None))
        await self.deliver()
        os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))     # as if in the same tick
        await wait(fired)
        changes = await view.refresh()
        self.assertEqual([r.uid for r in changes.added], [1])

    async def test_listen_fires_for_other_session_not_own(self):
        await self.deliver()
        a = await self.open()
        b = await self.open()
        calls = {"a": 0, "b": 0}
        a.listen(lambda: calls.__setitem__("a", calls["a"] + 1))
        got = Deferred()
        b.listen(lambda: got.called or got.callback(None))
        await a.store_flags([1], ["\\Seen"], "+")
        await wait(got)
        self.assertEqual(calls["a"], 0)

    async def test_listen_fires_when_a_refresh_finds_outside_changes(self):
        a = await self.open()
        b = await self.open()
        got = Deferred()
        b.listen(lambda: got.called or got.callback(None))
        self.drop("1700000000.x.host,S=1", b"x")
        self.bump("new")
        await a.refresh()
        await wait(got)

    async def test_recent(self):
        await self.deliver()
        await self.deliver()
        examine = await self.open(readonly=True)
        self.assertEqual(examine.recent, {1, 2})
        a = await self.open()
        self.assertEqual(a.recent, {1, 2})
        b = await self.open()
        self.assertEqual(b.recent, set())
        await self.deliver()
        await b.refresh()
        await a.refresh()
        self.assertEqual((a.recent, b.recent), ({1, 2}, {3}))
        status = await self.store.account(ALICE).status("INBOX")
        self.assertEqual(status["RECENT"], 0)

    async def test_readonly_refuses_changes(self):
        await self.deliver()
        view = await self.open(readonly=True)
        from jdmail.interfaces import FolderError
        with self.assertRaises(FolderError):
            await view.store_flags([1], ["\\Seen"], "+")
        with self.assertRaises(FolderError):
            await view.expunge()


class MemoryTests(StoreTestCase):

    async def test_idle_folders_unloaded_and_reloaded(self):
        self.store.idle_messages = 2
        account = self.store.account(ALICE)
        for name in ("Sent", "Drafts"):
            await account.list_folders()
            for _ in range(2):
                await account.append(name, MESSAGE)
        sent = await account.open_folder("Sent")
        sent.close()
        drafts = await account.open_folder("Drafts")
        drafts.close()
        st = self.store._state(ALICE)
        self.assertIsNone(st.folders["Sent"].contents)          # over the limit: the older one went
        self.assertIsNotNone(st.folders["Drafts"].contents)
        status = await account.status("Sent")
        self.assertEqual(status["MESSAGES"], 2)
        sent = await self.open("Sent")
        self.assertEqual([r.uid for r in sent.records], [1, 2])

    async def test_idle_accounts_closed(self):
        self.store.idle_accounts = 1
        keys = ["example.org/u%d" % i for i in range(3)]
        for key in keys:
            await self.deliver(keys=(key,))
            self.assertEqual(await self.store.usage(key), (len(MESSAGE), 1))
        self.assertEqual(list(self.store._accounts), keys[-1:])
        # one with a live IAccountStore stays
        account = self.store.account(keys[0])
        await account.quota()
        await self.store.usage(keys[1])
        self.assertIn(keys[0], self.store._accounts)
        del account
        import gc
        gc.collect()
        await self.store.usage(keys[2])
        self.assertEqual(list(self.store._accounts), keys[2:])

    async def test_more_users_in_session_than_idle_accounts_get_one_state_each(self):
        """Over idle_accounts with every state in use, a new user's state is still the
        store's: a second login of that user shares it (one index connection per user)."""
        self.store.idle_accounts = 2
        keys = ["example.org/u%d" % i for i in range(4)]
        views = []
        for key in keys:
            await self.deliver(keys=(key,))
            view = await self.store.account(key).open_folder("INBOX", False)
            self.addCleanup(view.close)
            views.append(view)
        self.assertEqual(list(self.store._accounts), keys)       # all in use: none closed
        for key, view in zip(keys, views):
            again = self.store.account(key)
            self.assertIs(again._state, self.store._accounts[key])
            self.assertIs(view._state, again._state)


class CondstoreTests(StoreTestCase):

    async def test_modseq_and_unchanged_since(self):
        await self.deliver()
        await self.deliver()
        view = await self.open()
        m0 = view.highestmodseq
        self.assertTrue(all(r.modseq <= m0 for r in view.records))
        [c1], _ = await view.store_flags([1], ["\\Seen"], "+")
        self.assertGreater(c1.modseq, m0)
        self.assertEqual(view.highestmodseq, c1.modseq)
        [c2], _ = await view.store_flags([2], ["$X"], "+")
        self.assertGreater(c2.modseq, c1.modseq)
        # message 1 changed after m0: refused; message 2 also; with c2.modseq both pass
        changed, refused = await view.store_flags([1, 2], ["\\Flagged"], "+", unchanged_since=m0)
        self.assertEqual((changed, refused), ([], [1, 2]))
        changed, refused = await view.store_flags([1, 2], ["\\Flagged"], "+", unchanged_since=c1.modseq)
        self.assertEqual(([r.uid for r in changed], refused), ([1], [2]))
        # a no-op store changes nothing and bumps nothing
        before = view.highestmodseq
        changed, refused = await view.store_flags([1], ["\\Flagged"], "+")
        self.assertEqual((changed, refused, view.highestmodseq), ([], [], before))
        status = await self.store.account(ALICE).status("INBOX")
        self.assertEqual(status["HIGHESTMODSEQ"], view.highestmodseq)

    async def test_vanished_since_survives_restart(self):
        for _ in range(4):
            await self.deliver()
        view = await self.open()
        await view.store_flags([1, 3], ["\\Deleted"], "+")
        mark = view.highestmodseq
        await view.expunge([1])
        await view.expunge()
        self.assertEqual(await view.vanished_since(mark), [1, 3])
        view.close()
        self.restart()
        view = await self.open()
        self.assertEqual(await view.vanished_since(mark), [1, 3])
        self.assertEqual(await view.vanished_since(view.highestmodseq), [])


class StructureTests(StoreTestCase):

    async def test_structure_parsed_once_and_cached_in_index(self):
        await self.deliver()
        view = await self.open()
        StubStructure.parsed = 0
        s1 = await view.structure(1)
        s2 = await view.structure(1)
        self.assertEqual((s1.data, s2.data), (MESSAGE, MESSAGE))
        self.assertEqual(StubStructure.parsed, 1)
        view.close()
        self.restart()
        view = await self.open()
        self.assertEqual((await view.structure(1)).data, MESSAGE)
        self.assertEqual(StubStructure.parsed, 1)
        # copies keep the cache
        account = self.store.account(ALICE)
        await account.create_folder("Copies")
        await view.copy([1], "Copies")
        copies = await account.open_folder("Copies")
        self.addCleanup(copies.close)
        self.assertEqual((await copies.structure(copies.records[0].uid)).data, MESSAGE)
        self.assertEqual(StubStructure.parsed, 1)


class StructureBatchTests(StoreTestCase):
    """IFolder.structures(uids): one pool call and one transaction per chunk."""

    def count_pool_calls(self):
        calls = []
        real = self.services.run_blocking

        def run_blocking(f, *args, **kw):
            calls.append(getattr(f, "__name__", f))
            return real(f, *args, **kw)
        self.patch(self.services, "run_blocking", run_blocking)
        return calls

    def count_commits(self):
        conn = self.store._accounts[ALICE].conn
        commits = []
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

        def stop():
            try:
                conn.set_trace_callback(None)
            except sqlite3.ProgrammingError:
                pass                    # closed by a restart
        self.addCleanup(stop)
        return commits

    async def big_view(self, count):
        generate(self.maildir(), count)
        return await self.open()

    async def test_batch_equals_per_message_with_real_parser(self):
        from jdmail.mime import MessageStructure
        from tests.test_mime import CORPUS
        self.store._structure_class = MessageStructure
        names = sorted(n for n in os.listdir(CORPUS) if n.endswith(".eml"))
        for name in names:
            with open(os.path.join(CORPUS, name), "rb") as f:
                await self.deliver(f.read())
        view = await self.open()
        uids = [r.uid for r in view.records]
        self.assertEqual(len(uids), len(names))
        batch = await view.structures(uids)
        self.assertEqual(sorted(batch), uids)
        for uid in uids:
            with view.open_message(uid) as f:
                fresh = MessageStructure.parse(f.read())
            single = await view.structure(uid)
            for s in (batch[uid], single):
                self.assertEqual(s.envelope(), fresh.envelope(), uid)
                self.assertEqual(s.bodystructure(True), fresh.bodystructure(True), uid)
                self.assertEqual(s.bodystructure(False), fresh.bodystructure(False), uid)
        # and from the cache, after a restart
        view.close()
        self.restart()
        self.store._structure_class = MessageStructure
        view = await self.open()
        cached = await view.structures(uids)
        for uid in uids:
            self.assertEqual(cached[uid].envelope(), batch[uid].envelope(), uid)
            self.assertEqual(cached[uid].bodystructure(True), batch[uid].bodystructure(True), uid)

    async def test_one_pool_call_and_one_commit_per_batch(self):
        view = await self.big_view(500)
        calls = self.count_pool_calls()
        commits = self.count_commits()
        StubStructure.parsed = 0
        got = await view.structures([r.uid for r in view.records])
        self.assertEqual(len(got), 500)
        self.assertEqual(got[7].data, message(6))
        self.assertEqual(StubStructure.parsed, 500)
        self.assertEqual(calls, ["_structures_io"])
        self.assertEqual(len(commits), 1)
        conn = self.store._accounts[ALICE].conn
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM structures").fetchone()[0], 500)

    async def test_parsed_once_then_cached(self):
        view = await self.big_view(20)
        StubStructure.parsed = 0
        first = await view.structures(range(1, 11))
        self.assertEqual(StubStructure.parsed, 10)
        commits = self.count_commits()
        both = await view.structures(range(1, 21))         # 10 cached, 10 new
        self.assertEqual(StubStructure.parsed, 20)
        self.assertEqual(len(commits), 1)
        again = await view.structures(range(1, 21))
        self.assertEqual(StubStructure.parsed, 20)
        self.assertEqual(len(commits), 1)                  # nothing new: no transaction
        self.assertEqual({u: s.data for u, s in first.items()}, {u: both[u].data for u in first})
        self.assertEqual({u: s.data for u, s in both.items()}, {u: s.data for u, s in again.items()})
        view.close()
        self.restart()
        view = await self.open()
        self.assertEqual(len(await view.structures(range(1, 21))), 20)
        self.assertEqual(StubStructure.parsed, 20)

    async def test_vanished_and_unknown_uids_left_out(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        os.unlink(os.path.join(self.maildir(), "new", self.files("new")[1]))
        StubStructure.parsed = 0
        got = await view.structures([3, 2, 1, 1, 99])
        self.assertEqual(sorted(got), [1, 3])
        self.assertEqual(StubStructure.parsed, 2)
        with self.assertRaises(FileNotFoundError):
            await view.structure(2)
        with self.assertRaises(FileNotFoundError):
            await view.structure(99)
        self.assertEqual(await view.structures([]), {})
        conn = self.store._accounts[ALICE].conn
        self.assertEqual([r[0] for r in conn.execute("SELECT uid FROM structures ORDER BY uid")], [1, 3])

    async def test_expunged_by_another_session_left_out(self):
        for _ in range(2):
            await self.deliver()
        a = await self.open()
        b = await self.open()
        await b.store_flags([1], ["\\Deleted"], "+")
        await b.expunge()
        self.assertEqual([r.uid for r in a.records], [1, 2])       # a has not refreshed
        self.assertEqual(sorted(await a.structures([1, 2])), [2])
        conn = self.store._accounts[ALICE].conn
        self.assertEqual([r[0] for r in conn.execute("SELECT uid FROM structures")], [2])

    async def test_files_renamed_by_another_program_are_found(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        new, cur = (os.path.join(self.maildir(), sub) for sub in ("new", "cur"))
        names = self.files("new")
        os.rename(os.path.join(new, names[0]), os.path.join(cur, names[0] + ":2,S"))
        # letters only other programs set: found by listing the directories once
        os.rename(os.path.join(new, names[1]), os.path.join(cur, names[1] + ":2,Sa"))
        os.rename(os.path.join(new, names[2]), os.path.join(cur, names[2] + ":2,b"))
        got = await view.structures([1, 2, 3])
        self.assertEqual({u: s.data for u, s in got.items()}, {1: MESSAGE, 2: MESSAGE, 3: MESSAGE})

    async def test_bare_lf_file_parsed_with_crlf(self):
        view = await self.open()
        self.drop("1700000000.foreign.host", b"Subject: lf\n\nbody\n")
        self.bump("new")
        await view.refresh()
        self.assertEqual((await view.structures([1]))[1].data, b"Subject: lf\r\n\r\nbody\r\n")

    async def test_unreadable_cache_is_parsed_again(self):
        view = await self.big_view(3)
        await view.structures([1, 2, 3])
        conn = self.store._accounts[ALICE].conn
        conn.execute("UPDATE structures SET data=? WHERE uid=2", (b"garbage",))
        StubStructure.parsed = 0
        got = await view.structures([1, 2, 3])
        self.assertEqual(got[2].data, message(1))
        self.assertEqual(StubStructure.parsed, 1)
        self.assertEqual(len(self.flushLoggedErrors(AssertionError)), 1)
        self.assertEqual(conn.execute("SELECT data FROM structures WHERE uid=2").fetchone()[0],
                         b"STUB" + message(1))

    async def test_big_requests_in_chunks_releasing_the_lock(self):
        self.patch(folders_module, "STRUCTURE_CHUNK", 4)
        view = await self.big_view(10)
        calls = self.count_pool_calls()
        st = self.store._accounts[ALICE]
        held = []
        real = view._structures_io

        def io(uids, cls):
            held.append(len(uids))
            return real(uids, cls)
        self.patch(view, "_structures_io", io)
        # another session's flag change waits for one chunk, not for all of them
        other = await self.open()
        d = view.structures(range(1, 11))
        await other.store_flags([5], ["\\Seen"], "+")
        self.assertLess(len(held), 3)
        got = await d
        self.assertEqual(sorted(got), list(range(1, 11)))
        self.assertEqual(held, [4, 4, 2])
        self.assertEqual(calls.count("io"), 3)
        self.assertFalse(st.lock.locked)

    async def test_chunks_limited_by_size(self):
        self.patch(folders_module, "STRUCTURE_CHUNK_BYTES", 150)
        view = await self.big_view(6)
        sizes = [r.size for r in view.records]
        self.assertTrue(all(60 < n < 150 for n in sizes), sizes)
        calls = self.count_pool_calls()
        got = await view.structures(range(1, 7))
        self.assertEqual(len(got), 6)
        self.assertEqual(calls, ["_structures_io"] * 3)
        # cached blobs are not file reads: one call
        self.assertEqual(len(await view.structures(range(1, 7))), 6)
        self.assertEqual(len(calls), 4)


class BigFolderTests(StoreTestCase):
    """100,000 messages: counts and a few records right after indexing and after a restart.
    Timings are printed (python -m twisted.trial tests.test_store_index.BigFolderTests)."""

    COUNT = 100_000
    IN_NEW = 10

    async def test_100k_messages(self):
        t = {}
        start = time.perf_counter()
        generate(self.maildir(), self.COUNT, in_new=self.IN_NEW)
        t["generate"] = time.perf_counter() - start
        # a real mailbox was not written in the last 2 s (a younger directory mtime is not
        # trusted and would be listed again at the next sync)
        time.sleep(max(0.0, folders_module.SETTLE_NS / 1e9 + 0.1 - (time.time() - os.stat(
            os.path.join(self.maildir(), "cur")).st_mtime)))

        start = time.perf_counter()
        view = await self.open()
        t["first open (indexing)"] = time.perf_counter() - start
        self.check(view)
        view.close()
        self.restart()

        start = time.perf_counter()
        view = await self.open()
        t["open after restart"] = time.perf_counter() - start
        view.close()
        start = time.perf_counter()
        view = await self.open()
        t["open again (folder kept in memory)"] = time.perf_counter() - start
        start = time.perf_counter()
        lines = [b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (i, r.uid, " ".join(r.flags).encode())
                 for i, r in enumerate(view.records, 1)]      # what UID FETCH 1:* (FLAGS) needs
        t["records -> UID FETCH 1:* (FLAGS) lines"] = time.perf_counter() - start
        self.assertEqual(len(lines), self.COUNT)
        self.check(view)
        start = time.perf_counter()
        unseen = [i + 1 for i, r in enumerate(view.records) if "\\Seen" not in r.flags]
        t["SEARCH UNSEEN (in memory)"] = time.perf_counter() - start
        self.assertEqual(len(unseen), self.expected_unseen())

        start = time.perf_counter()
        changes = await view.refresh()
        t["refresh, no change"] = time.perf_counter() - start
        self.assertEqual((changes.added, changes.expunged, changes.changed), ([], [], []))

        await self.deliver()
        start = time.perf_counter()
        changes = await view.refresh()
        t["refresh after 1 delivery"] = time.perf_counter() - start
        self.assertEqual([r.uid for r in changes.added], [self.COUNT + 1])

        start = time.perf_counter()
        status = await self.store.account(ALICE).status("INBOX")
        t["STATUS (selected)"] = time.perf_counter() - start
        self.assertEqual(status["MESSAGES"], self.COUNT + 1)
        self.assertEqual(status["UNSEEN"], self.expected_unseen() + 1)

        start = time.perf_counter()
        changed, _ = await view.store_flags([5], ["\\Seen"], "+")
        t["STORE one flag"] = time.perf_counter() - start
        view.close()
        self.restart()
        start = time.perf_counter()
        status = await self.store.account(ALICE).status("INBOX")
        t["STATUS after restart (not loaded)"] = time.perf_counter() - start
        self.assertEqual(status["UNSEEN"], self.expected_unseen())
        for name, seconds in t.items():
            print(f"  {name:36} {seconds * 1000:9.1f} ms")

    def expected_unseen(self):
        from tests.fixtures.maildir_gen import DELETED_EVERY, SEEN_EVERY
        return sum(1 for i in range(self.COUNT)
                   if i >= self.COUNT - self.IN_NEW or (i % SEEN_EVERY and i % DELETED_EVERY))

    def check(self, view):
        self.assertEqual(len(view.records), self.COUNT)
        self.assertEqual(view.uidnext, self.COUNT + 1)
        recs = view.records
        self.assertEqual(recs[0].uid, 1)
        self.assertEqual(recs[-1].uid, self.COUNT)
        self.assertEqual(recs[0].flags, frozenset({"\\Seen", "\\Flagged", "\\Deleted"}))   # i = 0
        self.assertEqual(recs[3].flags, frozenset({"\\Seen"}))                           # i = 3
        self.assertEqual(recs[10].flags, frozenset({"\\Flagged"}))                       # i = 10
        self.assertEqual(recs[-1].flags, frozenset())                                    # in new/
        self.assertIsInstance(recs[12345], MessageRecord)
        with view.open_message(12346) as f:
            self.assertIn(b"Subject: message 12345\r\n", f.read())
