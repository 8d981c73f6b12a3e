"""jdmail.imap.sectioncache: bounded, keyed by folder incarnation, UIDVALIDITY, UID, spec."""

from twisted.trial import unittest

from jdmail.imap.sectioncache import SectionCache


class _View:
    def __init__(self, uidvalidity, folder=None):
        self.uidvalidity = uidvalidity
        if folder is not None:
            self.folder = folder


class _Shared:
    pass


class SectionCacheTests(unittest.TestCase):

    def test_all_or_nothing(self):
        c = SectionCache()
        k = c.folder_key(_View(7))
        c.put(k, 1, {"HEADER": b"a: b\r\n\r\n"})
        self.assertEqual(c.get(k, 1, ["HEADER"]), {"HEADER": b"a: b\r\n\r\n"})
        self.assertIsNone(c.get(k, 1, ["HEADER", "HEADER.FIELDS (A)"]))
        self.assertIsNone(c.get(k, 2, ["HEADER"]))

    def test_folder_identity(self):
        c = SectionCache()
        shared = _Shared()
        a, b = _View(7, shared), _View(7, shared)
        self.assertEqual(c.folder_key(a), c.folder_key(b))         # two sessions, one folder
        self.assertNotEqual(c.folder_key(a), c.folder_key(_View(8, shared)))   # new UIDVALIDITY
        self.assertNotEqual(c.folder_key(a), c.folder_key(_View(7, _Shared())))
        key = c.folder_key(a)
        del a, b, shared
        # a folder made after the first one is gone never gets its token
        self.assertNotEqual(c.folder_key(_View(7, _Shared())), key)

    def test_not_weakly_referenceable(self):
        c = SectionCache()
        view = _View(1, folder=("not", "weak"))
        self.assertIsNone(c.folder_key(view))

    def test_bounded(self):
        c = SectionCache(max_bytes=64 * 1000)
        k = c.folder_key(_View(1))
        for uid in range(1, 200):
            c.put(k, uid, {"HEADER": b"x" * 300})
            self.assertLessEqual(c.size, 64 * 1000)
        self.assertIsNone(c.get(k, 1, ["HEADER"]))                  # the oldest went first
        self.assertIsNotNone(c.get(k, 199, ["HEADER"]))
        c.get(k, 150, ["HEADER"])       # used: survives the next evictions
        for uid in range(200, 240):
            c.put(k, uid, {"HEADER": b"x" * 300})
        self.assertIsNotNone(c.get(k, 150, ["HEADER"]))
        c.put(k, 999, {"HEADER": b"y" * 5000})                       # over 1/64 of the budget
        self.assertIsNone(c.get(k, 999, ["HEADER"]))
        c.clear()
        self.assertEqual(c.size, 0)
