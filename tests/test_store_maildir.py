"""jdmail.store.maildir: delivery by hard link, listing, keys, removal, path safety."""

import errno
import os
import stat

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from jdmail.interfaces import FolderError, IMailboxStore, IMessageStore, IStoreFactory
from jdmail.services import Services
from jdmail.store import maildir
from jdmail.store.maildir import MaildirStore, MaildirStoreFactory, message_key

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\n"


def make_services(testcase, datadir):
    pool = ThreadPool(1, 4, name="test-maildir")
    pool.start()
    testcase.addCleanup(pool.stop)
    return Services(reactor=reactor, config=None, hostname="mx.example.org", datadir=datadir,
                    threadpool=pool)


class MaildirStoreTests(unittest.TestCase):

    def setUp(self):
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.services = make_services(self, self.base)
        self.root = os.path.join(self.base, "mail")
        self.store = MaildirStore(self.root, self.services)
        self.spool = os.path.join(self.base, "spool.msg")
        self.write_spool(MESSAGE)

    def write_spool(self, data, path=None):
        path = path or self.spool
        with open(path, "wb") as f:
            f.write(data)
        return path

    def maildir(self, key):
        domain, local = key.split("/")
        return os.path.join(os.path.realpath(self.root), domain, local, "Maildir")

    def files(self, key, sub="new"):
        return sorted(os.listdir(os.path.join(self.maildir(key), sub)))

    def test_interfaces(self):
        verifyObject(IMessageStore, self.store)
        verifyObject(IMailboxStore, self.store.mailbox("example.org/alice"))
        verifyObject(IStoreFactory, MaildirStoreFactory())

    def test_factory_default_root(self):
        store = MaildirStoreFactory().build("maildir", {"path": ""}, self.services)
        self.assertEqual(store.root, os.path.realpath(os.path.join(self.base, "mail")))
        store = MaildirStoreFactory().build("maildir", {"path": "/srv/m"}, self.services)
        self.assertEqual(store.root, os.path.realpath("/srv/m"))

    async def test_deliver_three_share_one_inode(self):
        keys = ["example.org/alice", "example.org/bob", "example.net/carol"]
        await self.store.deliver(keys, self.spool)
        inodes = set()
        for key in keys:
            names = self.files(key)
            self.assertEqual(len(names), 1)
            self.assertTrue(names[0].endswith(",S=%d" % len(MESSAGE)), names[0])
            path = os.path.join(self.maildir(key), "new", names[0])
            st = os.stat(path)
            self.assertEqual(st.st_size, len(MESSAGE))
            inodes.add(st.st_ino)
            for sub in ("tmp", "new", "cur"):
                mode = os.stat(os.path.join(self.maildir(key), sub)).st_mode
                self.assertEqual(stat.S_IMODE(mode), 0o700)
            self.assertEqual(self.files(key, "tmp"), [])
        self.assertEqual(inodes, {os.stat(self.spool).st_ino})
        self.assertEqual(os.stat(self.spool).st_nlink, 4)

    async def test_deliver_same_mailbox_twice_in_one_call_is_one_copy(self):
        await self.store.deliver(["example.org/alice", "example.org/alice"], self.spool)
        self.assertEqual(len(self.files("example.org/alice")), 1)

    async def test_unique_name_format(self):
        await self.store.deliver(["example.org/alice"], self.spool)
        name = self.files("example.org/alice")[0]
        self.assertRegex(name, r"^\d+\.M\d+P%dQ\d+\.[^/:]+,S=%d$" % (os.getpid(), len(MESSAGE)))

    async def test_copy_fallback_when_link_fails(self):
        def no_link(src, dst):
            raise OSError(errno.EXDEV, "cross-device link")
        self.patch(maildir.os, "link", no_link)
        await self.store.deliver(["example.org/alice", "example.org/bob"], self.spool)
        for key in ("example.org/alice", "example.org/bob"):
            [name] = self.files(key)
            path = os.path.join(self.maildir(key), "new", name)
            self.assertNotEqual(os.stat(path).st_ino, os.stat(self.spool).st_ino)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), MESSAGE)
            self.assertEqual(self.files(key, "tmp"), [])

    async def test_failed_delivery_leaves_nothing(self):
        with self.assertRaises(ValueError):
            await self.store.deliver(["example.org/alice", "example.org/.."], self.spool)
        self.assertEqual(self.files("example.org/alice"), [])
        self.assertEqual(os.stat(self.spool).st_nlink, 1)

    async def test_failed_link_removes_earlier_links(self):
        real_link = os.link
        calls = []

        def flaky(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_link(src, dst)
        self.patch(maildir.os, "link", flaky)
        with self.assertRaises(OSError):
            await self.store.deliver(["example.org/alice", "example.org/bob"], self.spool)
        self.assertEqual(self.files("example.org/alice"), [])
        self.assertEqual(os.stat(self.spool).st_nlink, 1)

    async def test_missing_spool_raises(self):
        with self.assertRaises(FileNotFoundError):
            await self.store.deliver(["example.org/alice"], os.path.join(self.base, "nope"))

    async def test_list_open_remove(self):
        box = self.store.mailbox("example.org/alice")
        self.assertEqual(await box.list(), [])
        await self.store.deliver(["example.org/alice"], self.spool)
        second = self.write_spool(b"Subject: two\r\n\r\nsecond\r\n", os.path.join(self.base, "2"))
        await self.store.deliver(["example.org/alice"], second)
        infos = await box.list()
        self.assertEqual([i.size for i in infos], [len(MESSAGE), 24])
        with box.open(infos[0].key) as f:
            self.assertEqual(f.read(), MESSAGE)
        with box.open(infos[1].key) as f:
            self.assertEqual(f.read(), b"Subject: two\r\n\r\nsecond\r\n")
        await box.remove([infos[0].key])
        left = await box.list()
        self.assertEqual([i.key for i in left], [infos[1].key])
        self.assertEqual(len(self.files("example.org/alice")), 1)
        self.assertRaises(FileNotFoundError, box.open, infos[0].key)
        # removing a key that is already gone is not an error
        await box.remove([infos[0].key])

    async def test_list_oldest_first(self):
        path = self.maildir("example.org/alice")
        await self.store.mailbox("example.org/alice").list()     # creates the Maildir
        names = ["1700000001.M5P1Q1.h,S=1", "1700000000.M900000P1Q1.h,S=2",
                 "1700000000.M10P1Q2.h,S=3", "1600000000.M1P1Q1.h,S=4:2,S"]
        for i, name in enumerate(names):
            sub = "cur" if ":2," in name else "new"
            with open(os.path.join(path, sub, name), "wb") as f:
                f.write(b"x")
        infos = await self.store.mailbox("example.org/alice").list()
        self.assertEqual([i.size for i in infos], [4, 3, 2, 1])

    async def test_key_stable_after_move_to_cur(self):
        box = self.store.mailbox("example.org/alice")
        await self.store.deliver(["example.org/alice"], self.spool)
        [before] = await box.list()
        [name] = self.files("example.org/alice")
        self.assertEqual(before.key, name)
        self.assertEqual(before.flags, frozenset())
        os.rename(os.path.join(self.maildir("example.org/alice"), "new", name),
                  os.path.join(self.maildir("example.org/alice"), "cur", name + ":2,S"))
        # open() finds a file that moved after the listing
        with box.open(before.key) as f:
            self.assertEqual(f.read(), MESSAGE)
        [after] = await MaildirStore(self.root, self.services).mailbox("example.org/alice").list()
        self.assertEqual(after.key, before.key)
        self.assertEqual(after.size, before.size)
        self.assertEqual(after.flags, frozenset({"\\Seen"}))
        await box.remove([after.key])
        self.assertEqual(self.files("example.org/alice", "cur"), [])

    async def test_size_without_s_field_comes_from_stat(self):
        await self.store.mailbox("example.org/alice").list()
        with open(os.path.join(self.maildir("example.org/alice"), "new", "123.foreign"), "wb") as f:
            f.write(b"12345")
        [info] = await self.store.mailbox("example.org/alice").list()
        self.assertEqual((info.key, info.size), ("123.foreign", 5))

    def test_message_key(self):
        self.assertEqual(message_key("1.M2P3Q4.host,S=5:2,RS"), "1.M2P3Q4.host,S=5")
        for odd in ("with space", "x" * 71, "caf\u00e9", "tab\there"):
            key = message_key(odd)
            self.assertEqual(len(key), 40)
            self.assertTrue(all(c in "0123456789abcdef" for c in key))
        self.assertEqual(message_key("x" * 70), "x" * 70)

    def test_unsafe_keys_refused(self):
        bad = ["", "alice", "example.org/", "/alice", "example.org/alice/x", ".", "..",
               "example.org/..", "../alice", "example.org/.", "./alice", "example.org/.alice",
               ".example.org/alice", "example.org/al\\ice", "exa\\mple.org/alice",
               "example.org/al\x00ice", None, b"example.org/alice"]
        for key in bad:
            self.assertRaises(ValueError, self.store.mailbox, key)
        # folder names are IMAP names now ("/" separates levels): unsafe ones are FolderErrors
        for folder in ("../x", "..", "a/../b", "/etc", "a//b", "x\x00y", ""):
            self.assertRaises(FolderError, self.store.mailbox, "example.org/alice", folder)
        box = self.store.mailbox("example.org/alice", "a/b.c")
        self.assertEqual(box.path, os.path.join(self.maildir("example.org/alice"), ".a.b%2Ec"))

    async def test_symlink_out_of_root_refused(self):
        outside = os.path.abspath(os.path.join(self.base, "outside"))
        os.makedirs(outside)
        os.makedirs(os.path.join(self.root, "example.org"))
        os.symlink(outside, os.path.join(self.root, "example.org", "mallory"))
        self.assertRaises(ValueError, self.store.mailbox, "example.org/mallory")
        with self.assertRaises(ValueError):
            await self.store.deliver(["example.org/mallory"], self.spool)
        self.assertEqual(os.listdir(outside), [])

    async def test_subfolder_path(self):
        box = self.store.mailbox("example.org/alice", "Sent")
        self.assertEqual(box.path, os.path.join(self.maildir("example.org/alice"), ".Sent"))
        self.assertEqual(await box.list(), [])
        self.assertTrue(os.path.isdir(os.path.join(box.path, "cur")))
