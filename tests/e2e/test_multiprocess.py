"""Two real jdmail servers (two twistd processes) on one mail tree and one SQLite
directory, on different ports: IMAP, POP3 and SMTP clients on both at once must see one
consistent mailbox (jdmail/store/lock.py, the reload in jdmail/store/folders.py).

Each server has its own datadir (run/listening.json, spool, queue, quarantine); they share
``[store] path`` and ``[directory] path``.
"""

import concurrent.futures
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import sqlite3
import tempfile
import threading
import time

from twisted.trial import unittest

from tests.e2e import ALICE, BOB, CAROL, USERS, _build_template, message, token
from tests.fixtures.server import JdmailServer

LOOPBACK = "tcp:0:interface=127.0.0.1"
FETCH_LINE = re.compile(rb"\d+ (?:FETCH )?\(UID (\d+) FLAGS \(([^)]*)\) MODSEQ \((\d+)\) "
                        rb"BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{\d+\}")


def start_pair(testcase):
    """Two servers on one mail tree and directory; stopped in cleanup."""
    base = tempfile.mkdtemp(prefix="jdmail-mp-")
    testcase.addCleanup(shutil.rmtree, base, True)
    shared = {"store": {"path": os.path.join(base, "mail")},
              "directory": {"path": os.path.join(base, "directory.sqlite")},
              "imap": {"listen": LOOPBACK}, "pop3": {"listen": LOOPBACK}, "auth": {"allow_plaintext": "yes"}}
    src = sqlite3.connect(os.path.join(_build_template(), "directory.sqlite"))
    dst = sqlite3.connect(shared["directory"]["path"])
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    servers = []
    for _ in range(2):
        server = JdmailServer(overrides=shared)
        server.start()
        testcase.addCleanup(server.stop)
        servers.append(server)
    return servers


def login(server, user=ALICE):
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=60)
    imap.login(user, USERS[user])
    return imap


def ok(result):
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"{typ} {data}")
    return data


def snapshot(server, folder, user=ALICE):
    """{uid: (subject, flags without \\Recent, modseq)} of a folder, and its UIDVALIDITY."""
    imap = login(server, user)
    try:
        ok(imap.select(f'"{folder}"'))
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(
            x for x in ok(imap.status(f'"{folder}"', "(UIDVALIDITY)")))).group(1))
        out = {}
        data = ok(imap.uid("FETCH", "1:*", "(UID FLAGS MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
        for item in data:
            if not isinstance(item, tuple):
                continue
            m = FETCH_LINE.search(item[0])
            assert m is not None, item[0]
            subject = item[1].decode().split()[1]      # "Subject: <subject> <token>"
            flags = frozenset(f for f in m.group(2).decode().split() if f != "\\Recent")
            out[int(m.group(1))] = (subject, flags, int(m.group(3)))
        return uidvalidity, out
    finally:
        imap.logout()


def imap_loop(server, name, rounds, stop=None, journal=None):
    """One IMAP client's loop in INBOX: APPEND; NOOP; STORE; then COPY, MOVE or
    STORE \\Deleted + UID EXPUNGE by turn. Returns what it did (subject -> fate)."""
    imap = login(server)
    done = {} if journal is None else journal
    try:
        ok(imap.select("INBOX"))
        for i in range(rounds):
            if stop is not None and stop.is_set():
                break
            subject = f"{name}-{i}"
            data = ok(imap.append("INBOX", None, None, message(subject, subject=subject)))
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
            done[subject] = ("appended", uid)
            ok(imap.noop())
            ok(imap.uid("STORE", str(uid), "+FLAGS", f"(\\Seen ${name})"))
            if i % 3 == 0:
                ok(imap.uid("COPY", str(uid), "Shared"))
                done[subject] = ("copied", uid)
            elif i % 3 == 1:
                ok(imap.uid("MOVE", str(uid), "Shared"))
                done[subject] = ("moved", uid)
            else:
                ok(imap.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)"))
                ok(imap.uid("EXPUNGE", str(uid)))
                done[subject] = ("expunged", uid)
        ok(imap.noop())
        imap.logout()
    except (imaplib.IMAP4.abort, OSError):
        if stop is None or not stop.is_set():
            raise
    return done


def in_parallel(*calls):
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(*c) for c in calls]]


class TwoServerTests(unittest.TestCase):

    def setUp(self):
        self.one, self.two = start_pair(self)
        imap = login(self.one)
        ok(imap.create("Shared"))
        imap.logout()

    def check_agree(self, folder, user=ALICE):
        """Both servers show the same folder: UIDVALIDITY, UIDs, subjects, flags, MODSEQs."""
        first = snapshot(self.one, folder, user)
        second = snapshot(self.two, folder, user)
        self.assertEqual(first, second)
        return first[1]

    def test_imap_clients_on_both_servers_at_once(self):
        rounds = 24
        results = in_parallel((imap_loop, self.one, "a", rounds), (imap_loop, self.one, "b", rounds),
                              (imap_loop, self.two, "c", rounds), (imap_loop, self.two, "d", rounds))
        done = {}
        for r in results:
            done.update(r)
        self.assertEqual(len(done), 4 * rounds)
        appended = [uid for _fate, uid in done.values()]
        self.assertEqual(len(set(appended)), len(appended), "an INBOX UID given twice")
        inbox = self.check_agree("INBOX")
        shared = self.check_agree("Shared")
        expect_inbox = {s for s, (fate, _) in done.items() if fate == "copied"}
        expect_shared = {s for s, (fate, _) in done.items() if fate in ("copied", "moved")}
        self.assertEqual(sorted(s for s, _, _ in inbox.values()), sorted(expect_inbox))
        self.assertEqual(sorted(s for s, _, _ in shared.values()), sorted(expect_shared))
        for uid, (subject, flags, _modseq) in inbox.items():
            self.assertEqual((done[subject][1], flags), (uid, {"\\Seen", "$" + subject.split("-")[0]}))
        for subject, flags, _modseq in shared.values():
            self.assertEqual(flags, {"\\Seen", "$" + subject.split("-")[0]})

    def test_pop3_on_one_while_imap_on_the_other(self):
        for i in range(30):
            self.deliver(self.one, BOB, f"pre-{i}")
        stop = threading.Event()
        journal = {}

        def imap_side():
            imap = login(self.two, BOB)
            ok(imap.select("INBOX"))
            i = 0
            while not stop.is_set():
                subject = f"imap-{i}"
                ok(imap.append("INBOX", None, None, message(subject, subject=subject)))
                journal[subject] = True
                ok(imap.noop())
                i += 1
            imap.logout()

        def pop3_side():
            pop = poplib.POP3("127.0.0.1", self.one.ports["pop3"], timeout=60)
            pop.user(BOB)
            pop.pass_(USERS[BOB])
            listing = pop.uidl()[1]
            got = []
            for line in listing:
                num, _key = line.split()
                body = b"\r\n".join(pop.retr(int(num))[1])
                got.append(re.search(rb"Subject: (\S+)", body).group(1).decode())
                if int(num) % 2:
                    pop.dele(int(num))
            pop.quit()
            stop.set()
            return got

        got, _ = in_parallel((pop3_side,), (imap_side,))
        self.assertEqual(len(got), len(set(got)))
        self.assertTrue({f"pre-{i}" for i in range(30)} <= set(got))
        deleted = {s for n, s in enumerate(got, 1) if n % 2}
        expected = ({f"pre-{i}" for i in range(30)} | set(journal)) - deleted
        box = self.check_agree("INBOX", BOB)
        self.assertEqual(sorted(s for s, _, _ in box.values()), sorted(expected))

    def deliver(self, server, rcpt, subject):
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as smtp:
            smtp.sendmail("sender@example.net", [rcpt], message(subject, subject=subject))

    def test_smtp_into_one_imap_idle_and_noop_on_the_other(self):
        imap = login(self.two, CAROL)
        ok(imap.select("INBOX"))
        subjects = [f"mail-{i}-{token()}" for i in range(20)]
        for subject in subjects:
            self.deliver(self.one, CAROL, subject)
        deadline = time.monotonic() + 30
        exists = 0
        while time.monotonic() < deadline and exists < len(subjects):
            typ, data = imap.noop()
            self.assertEqual(typ, "OK")
            for n in imap.untagged_responses.pop("EXISTS", []):
                exists = int(n)
        self.assertEqual(exists, len(subjects))
        # IDLE ends with what it saw reported, DONE is answered OK
        ok(imap.append("INBOX", None, None, message("idle", subject="appended-on-two")))
        tag = imap._new_tag()
        imap.send(tag + b" IDLE\r\n")
        self.assertTrue(imap.readline().startswith(b"+"))
        self.deliver(self.one, CAROL, "during-idle")
        imap.send(b"DONE\r\n")
        line = imap.readline()
        while not line.startswith(tag):
            line = imap.readline()
        self.assertIn(b"OK", line)
        ok(imap.noop())
        imap.logout()
        box = self.check_agree("INBOX", CAROL)
        self.assertEqual(sorted(box), list(range(1, len(subjects) + 3)))
        self.assertEqual(sorted(s for s, _, _ in box.values()),
                         sorted(subjects + ["appended-on-two", "during-idle"]))

    def test_one_killed_in_the_middle_the_other_goes_on(self):
        stop = threading.Event()
        killed_journal = {}
        rounds = 30

        def doomed():
            imap_loop(self.one, "k", 1000, stop=stop, journal=killed_journal)

        def killer():
            while len(killed_journal) < 6:
                time.sleep(0.02)
            stop.set()
            self.one.kill()

        _, _, survivor = in_parallel((doomed,), (killer,), (imap_loop, self.two, "s", rounds))
        self.assertEqual(len(survivor), rounds)
        more = imap_loop(self.two, "t", 6)
        inbox = snapshot(self.two, "INBOX")[1]
        shared = snapshot(self.two, "Shared")[1]
        subjects_inbox = [s for s, _, _ in inbox.values()]
        subjects_shared = [s for s, _, _ in shared.values()]
        self.assertEqual(len(subjects_inbox), len(set(subjects_inbox)))
        self.assertEqual(len(subjects_shared), len(set(subjects_shared)))
        for subject, (fate, uid) in {**survivor, **more}.items():
            self.assertEqual((subject in subjects_inbox, subject in subjects_shared),
                             (fate == "copied", fate in ("copied", "moved")), subject)
            if fate == "copied":
                self.assertEqual(inbox[uid][0], subject)
        for subject, (fate, _uid) in killed_journal.items():
            if fate == "copied":            # its COPY was answered OK before the kill
                self.assertIn(subject, subjects_inbox)
                self.assertIn(subject, subjects_shared)
        # the killed server comes back on the same tree and agrees
        self.one.start()
        self.check_agree("INBOX")
        self.check_agree("Shared")
