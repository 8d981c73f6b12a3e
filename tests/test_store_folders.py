"""jdmail.store (folders): special-use folders, hierarchy, unsafe names and symlinks,
RENAME (also of INBOX), APPEND/COPY/MOVE/EXPUNGE on disk and their fsyncs, quota in
the store and at SMTP time."""

import os

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jdmail.interfaces import Account, FolderError, FolderGone, QuotaExceeded, Resolution
from jdmail.store import files as files_module
from jdmail.store import folders as folders_module
from jdmail.store import names
from tests.test_store_index import ALICE, MESSAGE, StoreTestCase


def infos(folders):
    return {f.name: (set(f.attributes), f.subscribed) for f in folders}


class SpecialUseTests(StoreTestCase):

    async def test_created_on_first_access_and_subscribed(self):
        account = self.store.account(ALICE)
        folders = infos(await account.list_folders())
        self.assertEqual(folders, {
            "INBOX": ({"\\HasNoChildren"}, True),
            "Sent": ({"\\HasNoChildren", "\\Sent"}, True),
            "Drafts": ({"\\HasNoChildren", "\\Drafts"}, True),
            "Trash": ({"\\HasNoChildren", "\\Trash"}, True),
            "Junk": ({"\\HasNoChildren", "\\Junk"}, True),
            "Archive": ({"\\HasNoChildren", "\\Archive"}, True),
        })
        self.assertEqual([f.name for f in await account.list_folders()][0], "INBOX")
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            path = self.maildir(folder="." + name)
            self.assertEqual(sorted(os.listdir(path)), ["cur", "maildirfolder", "new", "tmp"])
        self.assertEqual(await account.subscriptions(), ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"])

    async def test_not_recreated_after_the_user_deletes_one(self):
        account = self.store.account(ALICE)
        await account.delete_folder("Junk")
        self.restart()
        names_now = [f.name for f in await self.store.account(ALICE).list_folders()]
        self.assertNotIn("Junk", names_now)

    async def test_existing_folder_gets_the_attribute(self):
        os.makedirs(self.maildir(folder=".Sent/cur"))
        folders = infos(await self.store.account(ALICE).list_folders())
        self.assertEqual(folders["Sent"], ({"\\HasNoChildren", "\\Sent"}, True))

    async def test_pop3_and_delivery_do_not_create_them(self):
        await self.deliver()
        await self.store.mailbox(ALICE).list()
        self.assertEqual([n for n in os.listdir(self.maildir()) if n.startswith(".")], [])

    async def test_create_with_special_use(self):
        account = self.store.account(ALICE)
        await account.create_folder("Everything", "\\All")
        folders = infos(await account.list_folders())
        self.assertEqual(folders["Everything"], ({"\\HasNoChildren", "\\All"}, False))
        with self.assertRaises(FolderError):
            await account.create_folder("Other", "\\Bogus")
        with self.assertRaises(FolderError):
            await account.create_folder("Sent2", "\\Sent")      # one folder per attribute


class HierarchyTests(StoreTestCase):

    async def test_create_list_delete(self):
        account = self.store.account(ALICE)
        await account.create_folder("Work/Projects/jdmail")
        folders = infos(await account.list_folders())
        self.assertEqual(folders["Work"], ({"\\HasChildren"}, False))
        self.assertEqual(folders["Work/Projects"], ({"\\HasChildren"}, False))
        self.assertEqual(folders["Work/Projects/jdmail"], ({"\\HasNoChildren"}, False))
        self.assertTrue(os.path.isdir(self.maildir(folder=".Work.Projects.jdmail/cur")))
        with self.assertRaises(FolderError):
            await account.create_folder("work/projects/jdmail/..")
        with self.assertRaises(FolderError):
            await account.create_folder("Work/Projects")                # exists
        with self.assertRaises(FolderError):
            await account.create_folder("inbox")                        # INBOX exists, any case
        await account.subscribe("Work/Projects")
        await account.delete_folder("Work/Projects")
        folders = infos(await account.list_folders())
        # the child keeps its parent name alive, as \Noselect (RFC 3501 6.3.4)
        self.assertEqual(folders["Work/Projects"], ({"\\HasChildren", "\\Noselect"}, True))
        with self.assertRaises(FolderError):
            await account.open_folder("Work/Projects")
        with self.assertRaises(FolderError):
            await account.delete_folder("Work/Projects")
        with self.assertRaises(FolderError):
            await account.delete_folder("INBOX")
        self.assertEqual(os.listdir(os.path.join(self.maildir(), folders_module.TRASH_DIR)), [])

    async def test_names_with_dots_and_unicode(self):
        account = self.store.account(ALICE)
        for name in ("a.b", "100%", "Привет/мир", "日本語", "x~y"):
            await account.create_folder(name)
        listed = [f.name for f in await account.list_folders()]
        for name in ("a.b", "100%", "Привет", "Привет/мир", "日本語", "x~y"):
            self.assertIn(name, listed)
        self.assertTrue(os.path.isdir(self.maildir(folder=".a%2Eb")))
        self.assertTrue(os.path.isdir(self.maildir(folder=".100%25")))
        self.assertTrue(os.path.isdir(self.maildir(folder=".Привет.мир")))
        uidvalidity, uid = await account.append("a.b", MESSAGE)
        self.restart()
        view = await self.open("a.b")
        self.assertEqual((view.uidvalidity, [r.uid for r in view.records]), (uidvalidity, [uid]))

    async def test_inbox_children(self):
        account = self.store.account(ALICE)
        await account.create_folder("inbox/Old")
        folders = infos(await account.list_folders())
        self.assertEqual(folders["INBOX"], ({"\\HasChildren"}, True))
        self.assertIn("INBOX/Old", folders)
        self.assertTrue(os.path.isdir(self.maildir(folder=".INBOX.Old")))

    async def test_rename_with_children_keeps_uidvalidity(self):
        account = self.store.account(ALICE)
        await account.create_folder("A/B")
        await account.subscribe("A/B")
        await account.append("A/B", MESSAGE)
        before = await account.status("A/B")
        view = await self.open("A/B")
        await account.rename_folder("A", "X/Y")
        listed = infos(await account.list_folders())
        self.assertNotIn("A", listed)
        self.assertNotIn("A/B", listed)
        self.assertEqual(listed["X/Y/B"], ({"\\HasNoChildren"}, True))     # subscription follows
        self.assertIn("X", listed)
        after = await account.status("X/Y/B")
        self.assertEqual((after["UIDVALIDITY"], after["MESSAGES"]), (before["UIDVALIDITY"], 1))
        self.assertEqual(view.name, "X/Y/B")
        with view.open_message(view.records[0].uid) as f:      # the selected view still works
            self.assertEqual(f.read(), MESSAGE)
        with self.assertRaises(FolderError):
            await account.rename_folder("X", "X/Y/Z")          # into itself
        with self.assertRaises(FolderError):
            await account.rename_folder("Nope", "Other")
        with self.assertRaises(FolderError):
            await account.rename_folder("X", "Sent")           # exists

    async def test_rename_inbox(self):
        """RFC 3501 6.3.5: the messages move to the new folder, INBOX stays and is empty,
        its children stay where they are."""
        for i in range(3):
            await self.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
        account = self.store.account(ALICE)
        await account.create_folder("INBOX/Child")
        inbox = await self.open()
        await inbox.store_flags([2], ["\\Seen", "$Label"], "+")
        await account.rename_folder("inbox", "Old Mail")
        changes = await inbox.refresh()
        self.assertEqual(changes.expunged, [1, 2, 3])
        self.assertEqual(inbox.records, [])
        old = await self.open("Old Mail")
        self.assertEqual([r.uid for r in old.records], [1, 2, 3])
        self.assertEqual(old.records[1].flags, frozenset({"\\Seen", "$Label"}))
        with old.open_message(3) as f:
            self.assertEqual(f.read(), b"Subject: 2\r\n\r\nx\r\n")
        self.assertEqual(self.files("new") + self.files("cur"), [])
        self.assertEqual(len(self.files("cur", folder=".Old Mail")), 3)
        listed = [f.name for f in await account.list_folders()]
        self.assertIn("INBOX/Child", listed)
        self.assertIn("INBOX", listed)
        await self.deliver()
        self.assertEqual([r.uid for r in (await inbox.refresh()).added], [4])

    async def test_delete_ends_other_sessions(self):
        account = self.store.account(ALICE)
        await account.create_folder("Gone")
        view = await self.open("Gone")
        await account.delete_folder("Gone")
        with self.assertRaises(FolderGone):
            await view.refresh()
        self.assertFalse(os.path.exists(self.maildir(folder=".Gone")))

    async def test_interrupted_delete_is_finished_at_start(self):
        account = self.store.account(ALICE)
        await account.list_folders()
        parked = os.path.join(self.maildir(), folders_module.TRASH_DIR, "123")
        os.makedirs(os.path.join(parked, "cur"))
        self.restart()
        await self.store.account(ALICE).list_folders()
        self.assertEqual(os.listdir(os.path.join(self.maildir(), folders_module.TRASH_DIR)), [])

    async def test_open_message_after_another_program_renamed_it(self):
        await self.deliver()
        view = await self.open()
        [name] = self.files("new")
        os.rename(os.path.join(self.maildir(), "new", name), os.path.join(self.maildir(), "cur", name + ":2,FS"))
        with view.open_message(1) as f:                  # before any refresh
            self.assertEqual(f.read(), MESSAGE)
        os.rename(os.path.join(self.maildir(), "cur", name + ":2,FS"),
                  os.path.join(self.maildir(), "cur", name + ":2,Sabc"))
        with view.open_message(1) as f:                  # odd letters: found by listing
            self.assertEqual(f.read(), MESSAGE)

    async def test_folder_made_by_another_program(self):
        account = self.store.account(ALICE)
        await account.list_folders()
        path = self.maildir(folder=".Elsewhere")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub))
        self.drop("1700000000.e.host,S=1:2,S", b"e", sub="cur", folder=".Elsewhere")
        status = await account.status("Elsewhere")
        self.assertEqual((status["MESSAGES"], status["UNSEEN"]), (1, 0))
        import shutil
        shutil.rmtree(path)
        self.assertNotIn("Elsewhere", [f.name for f in await account.list_folders()])


class UnsafeNameTests(StoreTestCase):

    HOSTILE = ["", "/", "/etc", "/etc/passwd", "..", "../x", "a/../../b", "a/..", ".", "./a", "a/./b",
               "a//b", "a/", "x\x00y", "x\ny", "x\ry", "tab\tname", "\x7f", "\x9b", "\ud800",
               "a/" * 40 + "a", "x" * 300]

    async def test_hostile_names_refused(self):
        account = self.store.account(ALICE)
        for name in self.HOSTILE:
            for call in (lambda: account.create_folder(name), lambda: account.open_folder(name),
                         lambda: account.status(name), lambda: account.delete_folder(name),
                         lambda: account.append(name, MESSAGE), lambda: account.rename_folder("Sent", name),
                         lambda: account.subscribe(name)):
                with self.assertRaises(FolderError, msg=repr(name)):
                    await call()
        # nothing was created outside, or anywhere but the Maildir
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.maildir()))), ["Maildir"])
        self.assertEqual(sorted(os.listdir(self.root)), ["example.org"])
        self.assertEqual(sorted(n for n in os.listdir(self.maildir()) if n.startswith(".")),
                         [".Archive", ".Drafts", ".Junk", ".Sent", ".Trash"])

    def test_encoding_round_trip(self):
        for name in ("a.b", "%", "%2E", "a.b/c%d", "Ünï/コード", "~x", "INBOX/x"):
            dirname = names.to_dirname(name)
            self.assertNotIn("/", dirname)
            self.assertFalse(dirname[1:].startswith("."))
            self.assertEqual(names.from_dirname(dirname), name)
        for odd in (".", "..", ".a..b", ".%zz", ".%41", ".INBOX", "plain", ".a.", "..a"):
            self.assertIsNone(names.from_dirname(odd), odd)

    async def test_symlinked_folder_refused(self):
        outside = os.path.join(self.base, "outside")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(outside, sub))
        with open(os.path.join(outside, "cur", "1700000000.x.host,S=6:2,S"), "wb") as f:
            f.write(b"secret")
        account = self.store.account(ALICE)
        await account.list_folders()
        os.symlink(outside, self.maildir(folder=".Evil"))
        self.assertNotIn("Evil", [f.name for f in await account.list_folders()])
        for call in (lambda: account.open_folder("Evil"), lambda: account.status("Evil"),
                     lambda: account.append("Evil", MESSAGE), lambda: account.create_folder("Evil"),
                     lambda: account.delete_folder("Evil")):
            with self.assertRaises(FolderError):
                await call()
        self.assertEqual(os.listdir(os.path.join(outside, "new")), [])
        self.assertEqual(len(os.listdir(os.path.join(outside, "cur"))), 1)

    async def test_symlinked_cur_refused(self):
        account = self.store.account(ALICE)
        await account.list_folders()
        outside = os.path.join(self.base, "outside")
        os.makedirs(outside)
        path = self.maildir(folder=".Sent")
        os.rmdir(os.path.join(path, "cur"))
        os.symlink(outside, os.path.join(path, "cur"))
        with self.assertRaises(FolderError):
            await account.open_folder("Sent")
        with self.assertRaises(FolderError):
            await account.append("Sent", MESSAGE)
        self.assertEqual(os.listdir(outside), [])


class MessageOperationTests(StoreTestCase):

    def record_fsyncs(self):
        """Log of ("file", path) / ("dir", path) fsyncs and ("link"/"rename", dst) calls."""
        log = []
        real_fsync, real_fsync_dir, real_link, real_rename = os.fsync, files_module.fsync_dir, os.link, os.rename

        def fsync(fd):
            log.append(("file", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def fsync_dir(path):
            log.append(("dir", path))
            return real_fsync_dir(path)

        def link(src, dst):
            log.append(("link", dst))
            return real_link(src, dst)

        def rename(src, dst):
            log.append(("rename", dst))
            return real_rename(src, dst)
        self.patch(os, "fsync", fsync)
        self.patch(folders_module, "fsync_dir", fsync_dir)
        self.patch(os, "link", link)
        self.patch(os, "rename", rename)
        return log

    async def test_append_flags_date_and_durability(self):
        account = self.store.account(ALICE)
        await account.list_folders()
        log = self.record_fsyncs()
        date = 1_500_000_000.0
        uidvalidity, uid = await account.append("Drafts", MESSAGE, ["\\Draft", "\\seen", "$Todo", "\\Recent"], date)
        [name] = self.files("cur", folder=".Drafts")
        self.assertTrue(name.endswith(",S=%d:2,DS" % len(MESSAGE)), name)
        path = os.path.join(self.maildir(folder=".Drafts"), "cur", name)
        self.assertEqual(os.stat(path).st_mtime, date)
        self.assertEqual(self.files("tmp", folder=".Drafts"), [])
        kinds = [(kind, os.path.basename(p)) for kind, p in log]
        # file fsynced (in tmp/) before it is linked into cur/, cur/ fsynced after
        first_file = next(i for i, (k, _) in enumerate(kinds) if k == "file")
        link = kinds.index(("link", name))
        self.assertLess(first_file, link)
        self.assertIn(("dir", "cur"), kinds[link:])
        view = await self.open("Drafts")
        self.assertEqual([(r.uid, r.flags, r.internaldate, r.size) for r in view.records],
                         [(uid, frozenset({"\\Draft", "\\Seen", "$Todo"}), date, len(MESSAGE))])
        self.assertEqual(view.uidvalidity, uidvalidity)
        with self.assertRaises(FolderError):
            await account.append("Nope", MESSAGE)

    async def test_copy_hard_links_and_keeps_flags(self):
        for _ in range(2):
            await self.deliver()
        inbox = await self.open()
        await inbox.store_flags([2], ["\\Flagged", "$K"], "+")
        log = self.record_fsyncs()
        uidvalidity, pairs = await inbox.copy([1, 2, 99], "Archive")
        self.assertEqual(pairs, [(1, 1), (2, 2)])
        archive = await self.open("Archive")
        self.assertEqual(archive.uidvalidity, uidvalidity)
        self.assertEqual([r.flags for r in archive.records], [frozenset(), frozenset({"\\Flagged", "$K"})])
        src = [os.stat(os.path.join(self.maildir(), "new", n)).st_ino for n in self.files("new")]
        src += [os.stat(os.path.join(self.maildir(), "cur", n)).st_ino for n in self.files("cur")]
        dst = [os.stat(os.path.join(self.maildir(folder=".Archive"), "cur", n)).st_ino
               for n in self.files("cur", folder=".Archive")]
        self.assertEqual(sorted(src), sorted(dst))
        self.assertIn(("dir", os.path.join(self.maildir(folder=".Archive"), "cur")), log)
        self.assertEqual(len(inbox.records), 2)
        status = await self.store.account(ALICE).status("Archive")
        self.assertEqual((status["MESSAGES"], status["UIDNEXT"], status["SIZE"]), (2, 3, 2 * len(MESSAGE)))

    async def test_copy_falls_back_to_a_copy(self):
        import errno as errno_module
        await self.deliver()
        inbox = await self.open()

        def no_link(src, dst):
            raise OSError(errno_module.EXDEV, "cross-device link")
        self.patch(os, "link", no_link)
        await inbox.copy([1], "Archive")
        [name] = self.files("cur", folder=".Archive")
        with open(os.path.join(self.maildir(folder=".Archive"), "cur", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertEqual(self.files("tmp", folder=".Archive"), [])

    async def test_move_renames_and_expunges(self):
        for _ in range(3):
            await self.deliver()
        inbox = await self.open()
        other = await self.open()
        mark = inbox.highestmodseq
        inode = os.stat(os.path.join(self.maildir(), "new", self.files("new")[0])).st_ino
        log = self.record_fsyncs()
        uidvalidity, pairs = await inbox.move([1, 3], "Trash")
        self.assertEqual(pairs, [(1, 1), (3, 2)])
        self.assertEqual([r.uid for r in inbox.records], [2])
        self.assertEqual(len(self.files("new")), 1)
        trash_files = self.files("cur", folder=".Trash")
        self.assertEqual(len(trash_files), 2)
        self.assertIn(inode, [os.stat(os.path.join(self.maildir(folder=".Trash"), "cur", n)).st_ino
                              for n in trash_files])
        self.assertIn(("dir", os.path.join(self.maildir(folder=".Trash"), "cur")), log)
        self.assertIn(("dir", os.path.join(self.maildir(), "new")), log)
        self.assertEqual(await inbox.vanished_since(mark), [1, 3])
        changes = await other.refresh()
        self.assertEqual(changes.expunged, [1, 3])
        trash = await self.open("Trash")
        self.assertEqual([r.uid for r in trash.records], [1, 2])
        # a move inside one folder is a copy + expunge
        uidvalidity, pairs = await trash.move([1], "Trash")
        self.assertEqual(pairs, [(1, 3)])
        self.assertEqual([r.uid for r in trash.records], [2])

    async def test_move_crash_before_index_commit(self):
        """Files renamed, index not updated: the next start finds them in the destination."""
        for _ in range(2):
            await self.deliver()
        inbox = await self.open()

        def crash(*args, **kwargs):
            raise OSError("simulated crash before the index commit")
        patcher = self.patch(folders_module.AccountState, "_insert_rows", crash)
        await self.store.account(ALICE).list_folders()
        with self.assertRaises(OSError):
            await inbox.move([1], "Trash")
        patcher.restore()
        inbox.close()
        self.restart()
        inbox = await self.open()
        trash = await self.open("Trash")
        self.assertEqual([r.uid for r in inbox.records], [2])
        self.assertEqual(len(trash.records), 1)

    async def test_expunge_only_deleted_and_fsync(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        await view.store_flags([1, 3], ["\\Deleted"], "+")
        log = self.record_fsyncs()
        self.assertEqual(await view.expunge([1, 2]), [1])
        self.assertEqual(await view.expunge(), [3])
        self.assertEqual([r.uid for r in view.records], [2])
        self.assertEqual(len(self.files("new") + self.files("cur")), 1)
        self.assertIn(("dir", os.path.join(self.maildir(), "cur")), log)

    async def test_status(self):
        for _ in range(3):
            await self.deliver()
        account = self.store.account(ALICE)
        view = await self.open()
        await view.store_flags([2], ["\\Seen"], "+")
        status = await account.status("INBOX")
        self.assertEqual({k: status[k] for k in ("MESSAGES", "UNSEEN", "UIDNEXT", "SIZE")},
                         {"MESSAGES": 3, "UNSEEN": 2, "UIDNEXT": 4, "SIZE": 3 * len(MESSAGE)})
        view.close()
        self.restart()
        await self.deliver()            # not yet indexed: STATUS finds it
        status = await self.store.account(ALICE).status("INBOX")
        self.assertEqual((status["MESSAGES"], status["UNSEEN"], status["UIDNEXT"]), (4, 3, 5))


class QuotaTests(StoreTestCase):

    async def test_append_and_copy_over_quota(self):
        await self.deliver()
        account = self.store.account(ALICE, quota_bytes=3 * len(MESSAGE))
        self.assertEqual(await account.quota(), (len(MESSAGE), 3 * len(MESSAGE), 1, 0))
        await account.append("Drafts", MESSAGE)
        inbox = await account.open_folder("INBOX")
        self.addCleanup(inbox.close)
        await inbox.copy([1], "Archive")
        with self.assertRaises(QuotaExceeded):
            await account.append("Drafts", MESSAGE)
        with self.assertRaises(QuotaExceeded):
            await inbox.copy([1], "Archive")
        # MOVE does not change the usage and is never refused (the way to Trash must stay open)
        await inbox.move([1], "Trash")
        self.assertEqual(await account.quota(), (3 * len(MESSAGE), 3 * len(MESSAGE), 3, 0))
        self.assertEqual(await self.store.usage(ALICE), (3 * len(MESSAGE), 3))

    async def test_message_count_quota(self):
        await self.deliver()
        await self.deliver()
        account = self.store.account(ALICE, quota_messages=3)
        self.assertEqual(await account.quota(), (2 * len(MESSAGE), 0, 2, 3))
        inbox = await account.open_folder("INBOX")
        self.addCleanup(inbox.close)
        uids = [r.uid for r in inbox.records]
        self.assertEqual(len(uids), 2)
        with self.assertRaises(QuotaExceeded):          # two more do not fit: nothing is copied
            await inbox.copy(uids, "Archive")
        self.assertEqual((await account.quota())[2], 2)
        await account.append("Sent", b"x" * 10)
        with self.assertRaises(QuotaExceeded) as cm:
            await account.append("Drafts", b"y")
        self.assertEqual(str(cm.exception), "Quota exceeded (too many messages)")
        with self.assertRaises(QuotaExceeded):
            await inbox.copy(uids[:1], "Archive")
        await inbox.move(uids[:1], "Trash")               # MOVE is never refused
        self.assertEqual(await self.store.usage(ALICE), (2 * len(MESSAGE) + 10, 3))
        self.assertEqual(self.store.disk_usage(ALICE), (2 * len(MESSAGE) + 10, 3))

    async def test_usage_counts_undelivered_index_and_all_folders(self):
        self.assertEqual(await self.store.usage("example.org/nobody"), (0, 0))
        self.assertFalse(os.path.exists(self.maildir("example.org/nobody")))
        await self.deliver()
        self.assertEqual(await self.store.usage(ALICE), (len(MESSAGE), 1))
        await self.store.account(ALICE).append("Sent", b"x" * 100)
        await self.deliver()
        self.assertEqual(await self.store.usage(ALICE), (2 * len(MESSAGE) + 100, 3))


class SMTPQuotaTests(unittest.TestCase):
    """jdmail.smtp.server's quota checks against a store whose usage is given."""

    def setUp(self):
        from tests.test_smtp_server import FakeFactory
        from jdmail.smtp.server import ESMTPServer, Listener
        spool = self.mktemp()
        os.makedirs(spool)
        self.factory = FakeFactory(spool, max_message_size=100000)
        self.usage = {}
        self.accounts = {
            "bob@example.org": Account("bob@example.org", "example.org/bob", quota_bytes=1000),
            "carol@example.org": Account("carol@example.org", "example.org/carol", quota_bytes=1000),
            "free@example.org": Account("free@example.org", "example.org/free", quota_bytes=0),
        }
        test = self

        class Store:
            async def usage(self, mailbox):
                return test.usage.get(mailbox, 0), 1

        class Directory:
            async def resolve(self, address, sender=None):
                address = address.lower()
                if address == "team@example.org":
                    accounts = (test.accounts["bob@example.org"], test.accounts["carol@example.org"])
                elif address in test.accounts:
                    accounts = (test.accounts[address],)
                else:
                    return Resolution(Resolution.Kind.UNKNOWN)
                return Resolution(Resolution.Kind.LOCAL, mailboxes=tuple(a.mailbox for a in accounts),
                                  accounts=accounts)
        self.factory.services.store = Store()
        self.factory.directory = Directory()
        self.proto = ESMTPServer(self.factory, Listener("smtp", False, False))
        self.proto.callLater = Clock().callLater
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.proto.makeConnection(self.transport)
        self.addCleanup(self.proto.connectionLost, None)
        self.send("EHLO c.test\r\n")

    def send(self, data):
        self.proto.dataReceived(data.encode())
        out = self.transport.value().decode().splitlines()
        self.transport.clear()
        return out

    def test_rcpt_over_quota_is_452_and_others_kept(self):
        self.usage["example.org/bob"] = 1000
        self.assertEqual(self.send("MAIL FROM:<a@remote.test>\r\n"), ["250 2.1.0 Sender ok"])
        self.assertEqual(self.send("RCPT TO:<bob@example.org>\r\n"), ["452 4.2.2 <bob@example.org>: Mailbox full"])
        self.assertEqual(self.send("RCPT TO:<free@example.org>\r\n"), ["250 2.1.5 Recipient ok"])
        self.assertEqual(self.send("RCPT TO:<carol@example.org>\r\n"), ["250 2.1.5 Recipient ok"])
        self.send("DATA\r\n")
        self.assertTrue(self.send("Subject: x\r\n\r\nhi\r\n.\r\n")[0].startswith("250 2.0.0"))
        [(envelope, _data)] = self.factory.delivery.delivered
        self.assertEqual([a for a, _ in envelope.recipients], ["free@example.org", "carol@example.org"])

    def test_rcpt_counts_the_declared_size(self):
        self.usage["example.org/bob"] = 900
        self.send("MAIL FROM:<a@remote.test> SIZE=200\r\n")
        self.assertEqual(self.send("RCPT TO:<bob@example.org>\r\n"), ["452 4.2.2 <bob@example.org>: Mailbox full"])
        self.send("RSET\r\n")
        self.send("MAIL FROM:<a@remote.test> SIZE=50\r\n")
        self.assertEqual(self.send("RCPT TO:<bob@example.org>\r\n"), ["250 2.1.5 Recipient ok"])

    def test_list_with_one_full_member_is_accepted(self):
        self.usage["example.org/bob"] = 5000
        self.send("MAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send("RCPT TO:<team@example.org>\r\n"), ["250 2.1.5 Recipient ok"])
        self.usage["example.org/carol"] = 5000
        self.assertEqual(self.send("RCPT TO:<team@example.org>\r\n"), ["452 4.2.2 <team@example.org>: Mailbox full"])

    def test_single_recipient_going_over_at_data_is_552(self):
        self.usage["example.org/bob"] = 990
        self.send("MAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send("RCPT TO:<bob@example.org>\r\n"), ["250 2.1.5 Recipient ok"])
        self.send("DATA\r\n")
        self.assertEqual(self.send("Subject: x\r\n\r\n" + "y" * 100 + "\r\n.\r\n"), ["552 5.2.2 Mailbox full"])
        self.assertEqual(self.factory.delivery.delivered, [])

    def test_several_recipients_soft_overrun(self):
        self.usage["example.org/bob"] = 990
        self.send("MAIL FROM:<a@remote.test>\r\n")
        self.send("RCPT TO:<bob@example.org>\r\n")
        self.send("RCPT TO:<carol@example.org>\r\n")
        self.send("DATA\r\n")
        self.assertTrue(self.send("Subject: x\r\n\r\n" + "y" * 100 + "\r\n.\r\n")[0].startswith("250 2.0.0"))
        self.assertEqual(len(self.factory.delivery.delivered), 1)

    def test_no_quota_no_check(self):
        self.usage["example.org/free"] = 10 ** 12
        self.send("MAIL FROM:<a@remote.test> SIZE=5000\r\n")
        self.assertEqual(self.send("RCPT TO:<free@example.org>\r\n"), ["250 2.1.5 Recipient ok"])



