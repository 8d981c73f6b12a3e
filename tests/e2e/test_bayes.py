"""Bayes against the real server: jdmailctl bayes train on a Maildir and an mbox,
train-on-move over IMAP (imapclient MOVE/COPY into and out of Junk), and the filter over SMTP."""

import functools
import os
import random
import smtplib
import sqlite3
import time

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.e2e import unverified_context, wait_for as e2e_wait_for
from tests.fixtures.server import running_server
from tests.fixtures.spamham import corpus, message

BOB, PASSWORD = "bob@example.org", "secret"
LOOPBACK = "tcp:0:interface=127.0.0.1"
BAYES_INI = "[filters]\nchain = bayes\n\n[filter:bayes]\nmin_trained = 5\n{extra}\n"


def bayes_server(testcase, extra=""):
    return running_server(testcase, users=((BOB, PASSWORD),),
                          overrides={"imap": {"listen": LOOPBACK}},
                          extra_ini=BAYES_INI.format(extra=extra))


def totals(server, owner=""):
    path = os.path.join(server.datadir, "bayes.sqlite")
    if not os.path.exists(path):
        return (0, 0)
    conn = sqlite3.connect(path, timeout=10)
    try:
        row = conn.execute("SELECT spam, ham FROM bayes_totals WHERE owner = ?", (owner,)).fetchone()
    except sqlite3.OperationalError:
        return (0, 0)
    finally:
        conn.close()
    return tuple(row) if row else (0, 0)


# the servers here train, expire and greylist on the thread pool: more patience
wait_for = functools.partial(e2e_wait_for, timeout=15.0, interval=0.05)


def imap(server):
    from imapclient import IMAPClient
    c = IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=10)
    c.starttls(unverified_context())
    c.login(BOB, PASSWORD)
    return c


class CtlTrainTests(unittest.TestCase):
    """jdmailctl bayes train/stats against a Maildir folder and an mbox file."""

    def setUp(self):
        self.server = bayes_server(self)
        self.base = os.path.abspath(self.mktemp())
        spam_dir = os.path.join(self.base, "Spam")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(spam_dir, sub))
        self.spam_dir = spam_dir
        self.mbox = os.path.join(self.base, "ham.mbox")
        n = 0
        with open(self.mbox, "wb") as box:
            for raw, is_spam in corpus(seed=11, spam=12, ham=15):
                if is_spam:
                    with open(os.path.join(spam_dir, "cur" if n % 2 else "new", f"{n}.gen:2,S"), "wb") as f:
                        f.write(raw)
                    n += 1
                else:
                    box.write(b"From someone@example.net Mon Jan  1 00:00:00 2024\n"
                              + raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ") + b"\n")

    def test_train_maildir_and_mbox_then_stats(self):
        p = self.server.ctl("bayes", "train", "--spam", self.spam_dir, "--ham", self.mbox)
        self.assertEqual(p.stdout.splitlines(), [
            f"trained 12 spam message(s) from {self.spam_dir} into the global table",
            f"trained 15 ham message(s) from {self.mbox} into the global table",
            "global: 12 spam, 15 ham"])
        self.assertEqual(totals(self.server), (12, 15))
        # again: nothing new, and said so
        p = self.server.ctl("bayes", "train", "--spam", self.spam_dir)
        self.assertIn("trained 0 spam message(s)", p.stdout)
        self.assertIn("(12 already trained as spam)", p.stdout)
        p = self.server.ctl("bayes", "train", "--ham", self.spam_dir, "--user", "Bob@Example.org")
        self.assertIn("into the table of bob@example.org", p.stdout)
        p = self.server.ctl("bayes", "stats")
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], f"database: {os.path.join(self.server.datadir, 'bayes.sqlite')}")
        self.assertRegex(lines[1], r"^global: 12 spam, 15 ham, \d+ tokens$")
        self.assertRegex(lines[2], r"^bob@example.org: 0 spam, 12 ham, \d+ tokens$")

    def test_refusals(self):
        p = self.server.ctl("bayes", "train", check=False)
        self.assertEqual((p.returncode, p.stderr), (2, "jdmailctl: bayes train needs --spam PATH and/or --ham PATH\n"))
        p = self.server.ctl("bayes", "train", "--spam", "/nonexistent/box", check=False)
        self.assertEqual((p.returncode, p.stderr), (2, "jdmailctl: /nonexistent/box: no such file or directory\n"))
        p = self.server.ctl("bayes", "train", "--ham", self.server.ini, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not an mbox file", p.stderr)
        p = self.server.ctl("bayes", "stats", "--filter", "nope", check=False)
        self.assertEqual((p.returncode, p.stderr),
                         (2, "jdmailctl: --filter nope: there is no [filter:nope] section of type bayes\n"))


class TrainOnMoveTests(unittest.TestCase):
    """A user's MOVE into Junk trains spam, out of Junk ham; the command never waits for it."""

    def setUp(self):
        self.server = bayes_server(self)

    def _append(self, c, raw):
        c.select_folder("INBOX")
        c.append("INBOX", raw)
        return max(c.search(["ALL"]))

    async def test_move_into_and_out_of_junk(self):
        server = self.server
        raw = corpus(seed=21, spam=1, ham=0)[0][0]

        def into_junk():
            c = imap(server)
            try:
                uid = self._append(c, raw)
                c.move([uid], "Junk")
                return c.folder_status("Junk", ["MESSAGES"])[b"MESSAGES"]
            finally:
                c.logout()
        self.assertEqual(await deferToThread(into_junk), 1)
        self.assertEqual(await deferToThread(wait_for, lambda: totals(server) == (1, 0)), True,
                         server.read_log()[-3000:])

        def out_of_junk():
            c = imap(server)
            try:
                c.select_folder("Junk")
                c.move(c.search(["ALL"]), "INBOX")
            finally:
                c.logout()
        await deferToThread(out_of_junk)
        self.assertEqual(await deferToThread(wait_for, lambda: totals(server) == (0, 1)), True,
                         server.read_log()[-3000:])
        line = "bayes bayes: trained 1 of 1 message(s) as ham user=bob@example.org from=Junk to=INBOX"
        # the log line is written after the token counts are committed: wait for it too
        self.assertTrue(await deferToThread(wait_for, lambda: line in server.read_log()),
                        server.read_log()[-3000:])

    async def test_copy_into_junk_trains_and_other_folders_do_not(self):
        server = self.server
        raw = corpus(seed=22, spam=1, ham=0)[0][0]

        def copies():
            c = imap(server)
            try:
                uid = self._append(c, raw)
                c.create_folder("Work")
                c.copy([uid], "Work")          # not Junk: nothing to learn
                c.copy([uid], "Junk")
            finally:
                c.logout()
        await deferToThread(copies)
        self.assertEqual(await deferToThread(wait_for, lambda: totals(server) == (1, 0)), True)
        self.assertNotIn("to=Work", server.read_log())


class TrainingFailureTests(unittest.TestCase):

    async def test_broken_token_database_does_not_fail_the_move(self):
        server = bayes_server(self)
        conn = sqlite3.connect(os.path.join(server.datadir, "bayes.sqlite"))
        conn.execute("DROP TABLE bayes_seen")
        conn.commit()
        conn.close()
        raw = corpus(seed=23, spam=1, ham=0)[0][0]

        def move():
            c = imap(server)
            try:
                c.select_folder("INBOX")
                c.append("INBOX", raw)
                c.move(c.search(["ALL"]), "Junk")        # raises on a NO or BAD answer
                return (c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"],
                        c.folder_status("Junk", ["MESSAGES"])[b"MESSAGES"])
            finally:
                c.logout()
        self.assertEqual(await deferToThread(move), (0, 1))
        logged = await deferToThread(wait_for, lambda: "training from an IMAP move failed" in server.read_log())
        self.assertTrue(logged, server.read_log()[-3000:])


def token_count(server):
    conn = sqlite3.connect(os.path.join(server.datadir, "bayes.sqlite"), timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM bayes_tokens").fetchone()[0]
    finally:
        conn.close()


class ExpiryTests(unittest.TestCase):
    """Old, rarely seen tokens: jdmailctl bayes expire, and the filter's daily run."""

    def age_tokens(self, server, days):
        conn = sqlite3.connect(os.path.join(server.datadir, "bayes.sqlite"), timeout=10)
        conn.execute("UPDATE bayes_tokens SET atime = atime - ?", (int(days * 86400),))
        conn.commit()
        conn.close()

    def test_ctl_expire(self):
        server = _trained_server(self)
        before = token_count(server)
        p = server.ctl("bayes", "expire")
        self.assertEqual(p.stdout, "deleted 0 token(s) not trained for 180 days and seen in at most 1 message(s) "
                                   f"from every table in {os.path.join(server.datadir, 'bayes.sqlite')}\n")
        self.age_tokens(server, 100)
        p = server.ctl("bayes", "expire", "--older-than", "90d")
        deleted = int(p.stdout.split()[1])
        self.assertTrue(0 < deleted < before, (deleted, before))      # words of one message only
        self.assertEqual(token_count(server), before - deleted)
        p = server.ctl("bayes", "expire", "--older-than", "90d", "--max-count", "1000")
        self.assertEqual(token_count(server), 0)
        self.assertIn("global: 20 spam, 20 ham, 0 tokens", server.ctl("bayes", "stats").stdout)
        p = server.ctl("bayes", "expire", "--older-than", "soon", check=False)
        self.assertEqual((p.returncode, p.stderr), (2, "jdmailctl: --older-than: 'soon': expected a duration with "
                                                       "a unit, such as 500ms, 30s, 5m, 1h or 2d\n"))

    async def test_filter_expires_on_its_own(self):
        server = await deferToThread(_trained_server, self, "token_expiry = 1s\nexpiry_max_count = 1000")
        before = token_count(server)
        # atime is whole seconds and the cut-off is int(now - 1s): only 2 s after training
        # is every token certainly older than the cut-off.
        await deferToThread(time.sleep, 2.2)
        await deferToThread(_send, server, message(random.Random(36), False, 904))
        logged = await deferToThread(wait_for, lambda: "bayes expiry: deleted" in server.read_log())
        self.assertTrue(logged, server.read_log()[-3000:])
        self.assertIn(f"bayes expiry: deleted {before} token(s)", server.read_log())
        self.assertEqual(token_count(server), 0)
        self.assertEqual(len(server.read_messages(BOB, "INBOX")), 1)


def _trained_server(testcase, extra=""):
    """A server with bayes in the chain, trained by jdmailctl on a generated corpus."""
    server = bayes_server(testcase, extra)
    base = os.path.abspath(testcase.mktemp())
    paths = {}
    for label in ("spam", "ham"):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(base, label, sub))
        paths[label] = os.path.join(base, label)
    for n, (raw, is_spam) in enumerate(corpus(seed=31, spam=20, ham=20)):
        with open(os.path.join(paths["spam" if is_spam else "ham"], "new", f"{n}.gen"), "wb") as f:
            f.write(raw)
    server.ctl("bayes", "train", "--spam", paths["spam"], "--ham", paths["ham"])
    return server


def _send(server, raw):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        return s.sendmail("sender@elsewhere.test", [BOB], raw)


def _header(raw, name):
    import email
    return email.message_from_bytes(raw).get(name)


class FilterTests(unittest.TestCase):
    """The bayes filter over SMTP: spam tagged into Junk, ham to the INBOX, headers."""

    async def test_spam_tagged_into_junk_and_ham_in_inbox(self):
        server = await deferToThread(_trained_server, self)
        rng = random.Random(32)
        spam, ham = message(rng, True, 900), message(rng, False, 901)
        await deferToThread(_send, server, spam)
        await deferToThread(_send, server, ham)
        junk, inbox = server.read_messages(BOB, "Junk"), server.read_messages(BOB, "INBOX")
        self.assertEqual((len(junk), len(inbox)), (1, 1), server.read_log()[-3000:])
        self.assertRegex(_header(junk[0], "X-Spam-Bayes"), r"^spam; score=(0\.9\d+|1\.0000); tokens=\d+; table=global$")
        self.assertEqual(_header(junk[0], "X-Spam-Flag"), "YES")
        self.assertIn("BAYES_SPAM", _header(junk[0], "X-Spam-Status"))
        self.assertRegex(_header(inbox[0], "X-Spam-Bayes"), r"^ham; score=0\.0\d*; tokens=\d+; table=global$")
        self.assertIn("BAYES_HAM", _header(inbox[0], "X-Spam-Status"))
        self.assertIsNone(_header(inbox[0], "X-Spam-Flag"))

    async def test_reject_and_untrained(self):
        server = await deferToThread(bayes_server, self, "on_spam = reject")
        rng = random.Random(33)
        await deferToThread(_send, server, message(rng, False, 902))
        self.assertEqual(_header(server.read_messages(BOB, "INBOX")[0], "X-Spam-Bayes"), "untrained")
        base = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(base, sub))
        for n, (raw, is_spam) in enumerate(corpus(seed=34, spam=20, ham=0)):
            with open(os.path.join(base, "new", f"{n}.gen"), "wb") as f:
                f.write(raw)
        mbox = os.path.join(base, "ham.mbox")
        with open(mbox, "wb") as f:
            for raw, _ in corpus(seed=35, spam=0, ham=20):
                f.write(b"From x@y Mon Jan  1 00:00:00 2024\n" + raw.replace(b"\r\n", b"\n") + b"\n")
        server.ctl("bayes", "train", "--spam", base, "--ham", mbox)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            await deferToThread(_send, server, message(rng, True, 903))
        self.assertEqual(cm.exception.smtp_code, 550)
        self.assertIn(b"5.7.1", cm.exception.smtp_error)
        self.assertEqual(len(server.read_messages(BOB, "INBOX")), 1)
