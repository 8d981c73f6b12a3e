"""jdmail.store.snapshot: a big folder's rows packed in one BLOB, deleted by triggers
whenever a row of the folder changes, written at shutdown and read on load."""

import os
import sqlite3

from jdmail.store import snapshot
from jdmail.store.index import open_index
from tests.test_store_index import StoreTestCase


class PackTests(StoreTestCase):

    def test_round_trip(self):
        rows = [(1, "\\Seen", 3, 120, 1700000000.5, "cur/1.a.host:2,S", 0),
                (2, "", 4, 99, 1700000001.0, "new/2.b.host", 1),
                (7, "$Junk \\Flagged", 9, 5, 0.0, b"cur/3.\xff.host:2,F", 0)]
        uids, texts, modseqs, sizes, idates, paths, lf = snapshot.unpack(snapshot.pack(rows))
        self.assertEqual(uids, [1, 2, 7])
        self.assertEqual(texts, ["\\Seen", "", "$Junk \\Flagged"])
        self.assertEqual((modseqs, sizes, idates), ([3, 4, 9], [120, 99, 5], [1700000000.5, 1700000001.0, 0.0]))
        self.assertEqual(paths, ["cur/1.a.host:2,S", "new/2.b.host",
                                 b"cur/3.\xff.host:2,F".decode("utf-8", "surrogateescape")])
        self.assertEqual(lf, [2])
        self.assertEqual(snapshot.unpack(snapshot.pack([])), ([], [], [], [], [], [], []))

    def test_unreadable_blob_is_none(self):
        for blob in (b"", b"not marshal", snapshot.pack([])[:-3], b"\xe9\x01\x00\x00\x00"):
            self.assertIsNone(snapshot.unpack(blob), blob)


class TriggerTests(StoreTestCase):

    def setUp(self):
        super().setUp()
        self.patch(snapshot, "MIN_MESSAGES", 2)
        os.makedirs(self.maildir())
        self.conn, _how = open_index(self.maildir())
        self.addCleanup(self.conn.close)
        snapshot.ensure(self.conn)
        self.conn.execute("INSERT INTO folders (id, name, uidvalidity, uidnext, highestmodseq, first_recent) "
                          "VALUES (1, 'INBOX', 1, 4, 1, 1)")
        for uid in (1, 2, 3):
            self.conn.execute("INSERT INTO messages (folder, uid, path, flags, modseq, internaldate, size) "
                              "VALUES (1, ?, ?, '', 1, 0, 10)", (uid, f"new/{uid}"))

    def has(self):
        return self.conn.execute("SELECT count(*) FROM snapshots WHERE folder=1").fetchone()[0] == 1

    def test_any_row_change_deletes_it(self):
        for change in ("UPDATE messages SET flags='\\Seen' WHERE uid=2",
                       "UPDATE messages SET path='cur/1:2,' WHERE uid=1",
                       "DELETE FROM messages WHERE uid=3",
                       "INSERT INTO messages (folder, uid, path, flags, modseq, internaldate, size) "
                       "VALUES (1, 9, 'new/9', '', 2, 0, 1)"):
            self.assertEqual(snapshot.write(self.conn, 1), len(self.conn.execute(
                "SELECT uid FROM messages WHERE folder=1").fetchall()))
            self.assertTrue(self.has())
            self.conn.execute(change)
            self.assertFalse(self.has(), change)

    def test_other_folders_rows_leave_it(self):
        snapshot.write(self.conn, 1)
        self.conn.execute("INSERT INTO messages (folder, uid, path, flags, modseq, internaldate, size) "
                          "VALUES (2, 1, 'new/x', '', 1, 0, 1)")
        self.assertTrue(self.has())

    def test_small_folder_gets_none(self):
        self.patch(snapshot, "MIN_MESSAGES", 10)
        self.assertEqual(snapshot.write(self.conn, 1), 0)
        self.assertFalse(self.has())

    def test_ensure_adds_them_to_an_older_index(self):
        for name in ("snapshots_insert", "snapshots_update", "snapshots_delete"):
            self.conn.execute(f"DROP TRIGGER {name}")
        self.conn.execute("DROP TABLE snapshots")
        snapshot.ensure(self.conn)
        snapshot.ensure(self.conn)          # idempotent
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'snapshots%'")}
        self.assertEqual(names, {"snapshots", "snapshots_insert", "snapshots_update", "snapshots_delete"})


class StoreSnapshotTests(StoreTestCase):

    def setUp(self):
        super().setUp()
        self.patch(snapshot, "MIN_MESSAGES", 3)

    def snapshot_count(self):
        conn = sqlite3.connect(os.path.join(self.maildir(), "jdmail-index.sqlite"))
        try:
            return conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        finally:
            conn.close()

    async def test_written_at_shutdown_and_loaded_after_restart(self):
        for _ in range(4):
            await self.deliver()
        view = await self.open()
        await view.store_flags([view.records[1].uid], ["\\Seen", "$Work"], "+")
        before = [(r, view.folder.contents.paths[r.uid]) for r in view.records]
        view.close()
        self.assertEqual(await self.store.save_snapshots(), 1)
        self.assertEqual(await self.store.save_snapshots(), 0)      # already there
        self.assertEqual(self.snapshot_count(), 1)
        store = self.restart()
        view = await self.open(store=store)
        self.assertEqual([(r, view.folder.contents.paths[r.uid]) for r in view.records], before)
        self.assertEqual(self.snapshot_count(), 1)
        # a change deletes it; the next load reads the rows and agrees
        await view.store_flags([view.records[0].uid], ["\\Flagged"], "+")
        self.assertEqual(self.snapshot_count(), 0)
        after = [(r, view.folder.contents.paths[r.uid]) for r in view.records]
        view.close()
        view = await self.open(store=self.restart())
        self.assertEqual([(r, view.folder.contents.paths[r.uid]) for r in view.records], after)

    async def test_small_or_unloaded_folders_get_none(self):
        await self.deliver()
        view = await self.open()
        view.close()
        self.assertEqual(await self.store.save_snapshots(), 0)
        self.assertEqual(self.snapshot_count(), 0)

    async def test_unreadable_snapshot_falls_back_to_rows(self):
        for _ in range(3):
            await self.deliver()
        view = await self.open()
        records = list(view.records)
        view.close()
        await self.store.save_snapshots()
        conn = sqlite3.connect(os.path.join(self.maildir(), "jdmail-index.sqlite"))
        conn.execute("UPDATE snapshots SET data=?", (b"garbage",))
        conn.commit()
        conn.close()
        view = await self.open(store=self.restart())
        self.assertEqual(list(view.records), records)


