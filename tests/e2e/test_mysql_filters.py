"""Greylist and Bayes state in the directory's MariaDB ([directory] type = mysql), with
real jdmail servers (twistd) on a private mariadbd: greylisting 451 then accepted after
the delay with the triplet in MariaDB (the delay passes by moving first_seen back), shared by two jdmail instances, and surviving a
mariadbd restart; Bayes trained with jdmailctl into MariaDB, classifying over SMTP, and
IMAP moves into Junk training into MariaDB. For a PostfixAdmin database: SQLite until
``jdmailctl db init --filters-only`` made the tables, MariaDB after."""

import functools
import os
import random
import smtplib

from twisted.internet.threads import deferToThread

from jdmail.passwords import hash_password
from tests.e2e import unverified_context, wait_for as e2e_wait_for
from tests.e2e.test_mysql_e2e import MySQLServerCase
from tests.fixtures.server import running_server
from tests.fixtures.spamham import corpus, message
from tests.test_directory_mysql import load_postfixadmin, postfixadmin_queries

BOB = "bob@example.org"
# An hour's delay; the test moves first_seen back in MariaDB instead of waiting (under
# load, even a short real wait makes "too early" a race).
GREYLIST = {"filters": {"chain": "greylist"}, "filter:greylist": {"delay": "1h"}}
BAYES = {"filters": {"chain": "bayes"}, "filter:bayes": {"min_trained": "5"}}


def rcpt(server, sender, recipient=BOB):
    """(code, text) of RCPT TO for one transaction from ``sender``."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.ehlo("client.example.test")
        s.mail(sender)
        reply = s.rcpt(recipient)
        s.rset()
    return reply


# the servers here train, expire and greylist on the thread pool: more patience
wait_for = functools.partial(e2e_wait_for, timeout=20.0, interval=0.1)


class OwnSchemaCase(MySQLServerCase):
    """jdmail's schema (db init) with bob, and servers on it."""

    def setUp(self):
        super().setUp()
        admin = self.admin()
        admin.schema_init()
        admin.add_domain("example.org")
        admin.add_user(BOB, hash_password("bob-pw"))


class GreylistTests(OwnSchemaCase):

    def test_state_in_mariadb_shared_by_two_servers_and_across_a_restart(self):
        one, two = self.server(GREYLIST), self.server(GREYLIST)
        one.start()
        two.start()
        sender = "alice@pass.test"
        code, text = rcpt(one, sender)
        self.assertEqual((code, text[:16]), (451, b"4.7.1 Greylisted"), text)
        self.assertEqual(self.sql("SELECT client, sender, recipient, passed FROM greylist_triplet"),
                         (("127.0.0.0/24", sender, BOB, 0),))
        self.assertEqual(rcpt(two, sender)[0], 451)                   # the other node: too early
        self.assertTrue(wait_for(lambda: "retried too early" in two.read_log()), two.read_log()[-3000:])
        self.sql("UPDATE greylist_triplet SET first_seen = first_seen - 3601")     # the hour is over
        self.assertEqual(rcpt(two, sender), (250, b"2.1.5 Recipient ok"))
        self.assertEqual(self.sql("SELECT passed FROM greylist_triplet"), ((1,),))
        self.assertEqual(self.sql("SELECT client, passes FROM greylist_client"), (("127.0.0.0/24", 1),))
        self.assertEqual(rcpt(one, sender), (250, b"2.1.5 Recipient ok"))   # known to the first one too
        for server in (one, two):
            self.assertFalse(os.path.exists(os.path.join(server.datadir, "greylist.sqlite")))
            self.assertFalse(os.path.exists(os.path.join(server.datadir, "directory.sqlite")))
            self.assertIn(f"greylist: state in the directory's mysql database '{self.database}'",
                          server.read_log())

        self.mariadb.kill()                    # the greylist's connection dies with it
        self.addCleanup(lambda: self.mariadb.proc.poll() is None or self.mariadb.start())
        code, text = rcpt(one, "carol@pass.test")       # the directory or the greylist cannot answer
        self.assertEqual((code, text[:6]), (451, b"4.3.0 "), text)
        self.mariadb.start()
        code, text = rcpt(one, "carol@pass.test")
        self.assertEqual((code, text[:16]), (451, b"4.7.1 Greylisted"), text)
        self.assertEqual(self.sql("SELECT count(*) FROM greylist_triplet WHERE sender = 'carol@pass.test'"),
                         ((1,),))
        self.assertNotIn("Traceback", one.read_log())


class PostfixAdminGreylistTests(MySQLServerCase):
    """An existing schema gets jdmail's filter tables only from db init --filters-only."""

    def test_sqlite_until_the_tables_exist_then_mariadb(self):
        load_postfixadmin(self)
        jd = self.server(GREYLIST, **postfixadmin_queries())
        jd.start()
        self.assertEqual(rcpt(jd, "dan@pass.test")[0], 451)
        self.assertIn("greylist: the directory's mysql database", jd.read_log())
        self.assertIn("has no jdmail filter tables (create them with: jdmailctl db init --filters-only); "
                      "keeping the greylist state in SQLite in the data directory", jd.read_log())
        self.assertTrue(os.path.exists(os.path.join(jd.datadir, "greylist.sqlite")))
        jd.stop()
        self.assertEqual(jd.ctl("db", "init", "--filters-only").returncode, 0)
        jd.start()
        self.assertEqual(rcpt(jd, "erin@pass.test")[0], 451)
        self.assertEqual(self.sql("SELECT sender, recipient FROM greylist_triplet"), (("erin@pass.test", BOB),))


def _maildir(base, label, messages):
    path = os.path.join(base, label)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub))
    for n, raw in enumerate(messages):
        with open(os.path.join(path, "new", f"{n}.gen"), "wb") as f:
            f.write(raw)
    return path


class BayesTests(OwnSchemaCase):

    async def test_trained_by_jdmailctl_classifies_over_smtp_and_learns_from_imap(self):
        jd = self.server(BAYES)
        base = os.path.abspath(self.mktemp())
        training = corpus(seed=41, spam=20, ham=20)
        spam = _maildir(base, "spam", [raw for raw, is_spam in training if is_spam])
        ham = _maildir(base, "ham", [raw for raw, is_spam in training if not is_spam])
        p = jd.ctl("bayes", "train", "--spam", spam, "--ham", ham)
        self.assertEqual(p.stdout.splitlines()[-1], "global: 20 spam, 20 ham")
        self.assertEqual(self.sql("SELECT owner, spam, ham FROM bayes_totals"), (("", 20, 20),))
        (tokens,), = self.sql("SELECT count(*) FROM bayes_tokens")
        self.assertGreater(tokens, 50)
        stats = jd.ctl("bayes", "stats").stdout.splitlines()
        self.assertEqual(stats[0], f"database: mysql database '{self.database}' on "
                                   f"{self.mariadb.host}:{self.mariadb.port}")
        self.assertEqual(stats[1], f"global: 20 spam, 20 ham, {tokens} tokens")
        self.assertFalse(os.path.exists(os.path.join(jd.datadir, "bayes.sqlite")))

        await deferToThread(jd.start)
        rng = random.Random(42)

        def send(raw):
            with smtplib.SMTP("127.0.0.1", jd.ports["smtp"], timeout=30) as s:
                return s.sendmail("sender@elsewhere.test", [BOB], raw)
        self.assertEqual(await deferToThread(send, message(rng, True, 950)), {})
        self.assertEqual(await deferToThread(send, message(rng, False, 951)), {})
        junk, inbox = jd.read_messages(BOB, "Junk"), jd.read_messages(BOB, "INBOX")
        self.assertEqual((len(junk), len(inbox)), (1, 1), jd.read_log()[-3000:])
        self.assertIn(b"X-Spam-Bayes: spam; score=", junk[0])
        self.assertIn(b"X-Spam-Bayes: ham; score=", inbox[0])

        def into_junk():
            from imapclient import IMAPClient
            c = IMAPClient("127.0.0.1", port=jd.ports["imap"], ssl=False, timeout=10)
            c.starttls(unverified_context())
            c.login(BOB, "bob-pw")
            try:
                c.select_folder("INBOX")
                c.move(c.search(["ALL"]), "Junk")
            finally:
                c.logout()
        await deferToThread(into_junk)
        moved = await deferToThread(
            wait_for, lambda: self.sql("SELECT spam, ham FROM bayes_totals WHERE owner = ''") == ((21, 20),))
        self.assertTrue(moved, jd.read_log()[-3000:])
        self.assertIn(f"bayes bayes: tokens in mysql database '{self.database}'", jd.read_log())


class BayesDatabaseDownTests(MySQLServerCase):
    """[filter:bayes] database = mysql://... with the directory in SQLite: while that
    mariadbd is down, scoring gets the filter's on_error and training from an IMAP move
    is given up, each with one log line and no traceback; scoring resumes when it is back."""

    async def test_scoring_and_training_while_the_token_database_is_down(self):
        m = self.mariadb
        url = f"mysql://{m.user}:{m.password}@{m.host}:{m.port}/{self.database}"
        extra = (f"[filters]\nchain = bayes\n\n[filter:bayes]\ndatabase = {url}\non_error = continue\n")
        jd = await deferToThread(running_server, self, users=((BOB, "bob-pw"),),
                                 overrides={"imap": {"listen": "tcp:0:interface=127.0.0.1"}}, extra_ini=extra)
        self.assertIn(("bayes_totals",), self.sql("SHOW TABLES"))        # made at startup
        rng = random.Random(7)

        def send(raw):
            with smtplib.SMTP("127.0.0.1", jd.ports["smtp"], timeout=30) as s:
                return s.sendmail("sender@elsewhere.test", [BOB], raw)

        self.mariadb.kill()
        self.addCleanup(lambda: self.mariadb.proc.poll() is None or self.mariadb.start())
        self.assertEqual(await deferToThread(send, message(rng, True, 960)), {})
        inbox = jd.read_messages(BOB, "INBOX")
        self.assertEqual(len(inbox), 1)
        self.assertNotIn(b"X-Spam-Bayes", inbox[0])
        self.assertIn("on_error=continue (unavailable: ", jd.read_log())

        def into_junk():
            from imapclient import IMAPClient
            c = IMAPClient("127.0.0.1", port=jd.ports["imap"], ssl=False, timeout=10)
            c.starttls(unverified_context())
            c.login(BOB, "bob-pw")
            try:
                c.select_folder("INBOX")        # Junk (\\Junk) is one of the folders made at first login
                c.copy(c.search(["ALL"]), "Junk")
            finally:
                c.logout()
        await deferToThread(into_junk)
        failed = await deferToThread(
            wait_for, lambda: "training from an IMAP move failed user=bob@example.org: " in jd.read_log())
        self.assertTrue(failed, jd.read_log()[-3000:])

        self.mariadb.start()        # not in a thread: mariadbd dies with the thread that started it
        self.assertEqual(await deferToThread(send, message(rng, False, 961)), {})
        inbox = jd.read_messages(BOB, "INBOX")
        self.assertEqual(len(inbox), 2)
        self.assertEqual(sum(b"X-Spam-Bayes: untrained" in raw for raw in inbox), 1)
        self.assertNotIn("Traceback", jd.read_log())
