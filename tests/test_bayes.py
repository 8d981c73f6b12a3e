"""jdmail.bayes: the math, the tokenizer, the SQL token store and a train/score round trip."""

import base64
import math
import os

from twisted.trial.unittest import TestCase

from jdmail.bayes.classifier import Classifier, Params, chi2q, combine, digest, word_prob
from jdmail.bayes.sources import SourceError, read_messages
from jdmail.bayes.store import check_database, open_store
from jdmail.bayes.tokenizer import token_id, tokenize
from tests.fixtures.spamham import corpus, message


class MathTests(TestCase):

    def test_word_prob_unknown_token_is_the_prior(self):
        self.assertEqual(word_prob(0, 0, 100, 100), 0.5)
        self.assertEqual(word_prob(0, 0, 100, 100, x=0.4), 0.4)

    def test_word_prob_robinson(self):
        # seen in 10 of 10 spam, no ham: (0.45 * 0.5 + 10 * 1) / (0.45 + 10)
        self.assertAlmostEqual(word_prob(10, 0, 10, 10), 10.225 / 10.45)
        # equally frequent in both classes (by ratio, not count): 0.5 whatever n
        self.assertAlmostEqual(word_prob(2, 1, 20, 10), 0.5)
        # one ham sighting only: pulled towards 0.5 by s
        self.assertAlmostEqual(word_prob(0, 1, 10, 10), 0.225 / 1.45)

    def test_chi2q(self):
        self.assertEqual(chi2q(0.0, 2), 1.0)
        self.assertAlmostEqual(chi2q(4.0, 2), math.exp(-2))
        self.assertAlmostEqual(chi2q(4.0, 4), math.exp(-2) * 3)
        self.assertLess(chi2q(200.0, 10), 1e-30)

    def test_combine_known_values(self):
        self.assertEqual(combine([]), 0.5)
        # one token f=0.9: S = 1 - 0.1, H = 1 - 0.9 -> (0.9 - 0.1 + 1) / 2
        self.assertAlmostEqual(combine([0.9]), 0.9)
        self.assertAlmostEqual(combine([0.5] * 40), 0.5)
        # strong evidence both ways: unsure, not a coin toss towards one side
        self.assertAlmostEqual(combine([0.99] * 10 + [0.01] * 10), 0.5)
        self.assertGreater(combine([0.99] * 20), 0.999)
        self.assertLess(combine([0.01] * 20), 0.001)

    def test_combine_does_not_underflow(self):
        self.assertLess(combine([1e-5] * 150), 1e-10)
        self.assertGreater(combine([1 - 1e-5] * 150), 1 - 1e-10)


class TokenizerTests(TestCase):

    def test_headers_are_prefixed_and_words_folded(self):
        tokens = tokenize(b"Subject: Cheap WATCHES now\r\nFrom: Promo Team <deals@shop.example>\r\n"
                          b"\r\nBuy Cheap watches\r\n")
        self.assertIn("subject:cheap", tokens)
        self.assertIn("subject:watches", tokens)
        self.assertIn("cheap", tokens)
        self.assertIn("from:addr:shop.example", tokens)
        self.assertIn("from:name:promo", tokens)
        self.assertNotIn("Cheap", tokens)
        self.assertIn("subject:now", tokens)
        self.assertNotIn("now", tokens)          # only in the Subject

    def test_long_words_and_short_words(self):
        tokens = tokenize(b"\r\nan supercalifragilistic word\r\n")
        self.assertIn("skip:s 20", tokens)
        self.assertIn("word", tokens)
        self.assertNotIn("an", tokens)

    def test_html_is_stripped_and_urls_split(self):
        body = (b'<html><body><font size="+3">Click <a href="http://cheap.pills.example/buy">'
                b"here</a></font><!-- hidden text --></body></html>")
        tokens = tokenize(b"Content-Type: text/html\r\n\r\n" + body)
        self.assertIn("click", tokens)
        self.assertIn("here", tokens)
        self.assertIn("html:font", tokens)
        self.assertIn("html:font:size:+3", tokens)
        self.assertIn("url:pills", tokens)
        self.assertIn("proto:http", tokens)
        self.assertNotIn("hidden", tokens)
        self.assertFalse(any("href" in t for t in tokens), tokens)

    def test_mime_parts_are_decoded(self):
        text = base64.b64encode("Grüße aus München, Kollegen".encode("utf-8"))
        raw = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + text + b"\r\n--b\r\nContent-Type: application/zip\r\n"
               b'Content-Disposition: attachment; filename="x.zip"\r\n\r\nUEsDBA==\r\n--b--\r\n')
        tokens = tokenize(raw)
        self.assertIn("grüße", tokens)
        self.assertIn("münchen", tokens)
        self.assertIn("filename:ext:zip", tokens)
        self.assertIn("content-type:application/zip", tokens)
        self.assertIn("charset:utf-8", tokens)

    def test_ips_and_received(self):
        tokens = tokenize(b"Received: from mx.bad.example ([203.0.113.9]) by mail.test\r\n\r\n"
                          b"visit 198.51.100.77 now\r\n")
        self.assertIn("received:bad.example", tokens)
        self.assertIn("received:ip:203.0.113", tokens)
        self.assertIn("ip:198.51.100", tokens)

    def test_bigrams(self):
        raw = b"\r\nfree money today\r\n"
        self.assertNotIn("bi:free money", tokenize(raw))
        self.assertIn("bi:free money", tokenize(raw, bigrams=True))

    def test_mbox_from_line_and_garbage_do_not_break_it(self):
        tokens = tokenize(b"From someone Mon Jan  1 00:00:00 2024\nSubject: hello there\n\nbody text\n")
        self.assertIn("subject:hello", tokens)
        self.assertTrue(tokenize(b"\x00\xff\xfe garbage without header"))

    def test_token_id_is_stable_signed_64_bit(self):
        self.assertEqual(token_id("viagra"), token_id("viagra"))
        self.assertNotEqual(token_id("viagra"), token_id("Viagra"))
        self.assertTrue(-2**63 <= token_id("x") < 2**63)


class StoreTests(TestCase):

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.store = open_store("", self.dir)
        self.addCleanup(self.store.close)

    def test_default_file_in_datadir(self):
        self.assertTrue(os.path.exists(os.path.join(self.dir, "bayes.sqlite")))

    def test_update_counts_and_clamp(self):
        self.store.update({1: (2, 0), 2: (0, 1)}, 2, 1)
        self.assertEqual(self.store.counts([1, 2, 3]), {1: (2, 0), 2: (0, 1)})
        self.assertEqual(self.store.totals(), (2, 1))
        self.store.update({1: (-5, 0), 2: (1, 0)}, -1, 0)
        self.assertEqual(self.store.counts([1, 2]), {2: (1, 1)})     # 1 dropped at zero
        self.assertEqual(self.store.totals(), (1, 1))

    def test_owners_are_separate(self):
        self.store.update({7: (1, 0)}, 1, 0, owner="bob@example.org")
        self.assertEqual(self.store.counts([7]), {})
        self.assertEqual(self.store.counts([7], owner="bob@example.org"), {7: (1, 0)})
        self.assertEqual(self.store.stats(), [("bob@example.org", 1, 0, 1)])

    def test_two_connections_share_the_file(self):
        other = open_store(os.path.join(self.dir, "bayes.sqlite"), "/nonexistent")
        self.addCleanup(other.close)
        other.update({5: (0, 3)}, 0, 3)
        self.assertEqual(self.store.counts([5]), {5: (0, 3)})

    def test_many_tokens_in_one_update(self):
        deltas = {i: (1, 0) for i in range(2000)}
        self.store.update(deltas, 1, 0)
        self.assertEqual(len(self.store.counts(range(2500))), 2000)

    def test_prune_old_rare_tokens_only(self):
        import sqlite3
        import time
        self.store.update({1: (1, 0), 2: (0, 1), 3: (2, 1), 4: (1, 0)}, 3, 1)
        self.store.update({1: (1, 0)}, 1, 0, owner="bob@example.org")
        conn = sqlite3.connect(os.path.join(self.dir, "bayes.sqlite"))
        old = int(time.time()) - 100 * 86400
        conn.execute("UPDATE bayes_tokens SET atime = ? WHERE token IN (1, 2, 3)", (old,))
        conn.commit()
        conn.close()
        # 1, 2 (one message each) and bob's 1 are old and rare; 3 is in 3 messages; 4 is new
        self.assertEqual(self.store.prune(time.time() - 90 * 86400, 1, owner=""), 2)
        self.assertEqual(self.store.counts([1, 2, 3, 4]), {3: (2, 1), 4: (1, 0)})
        self.assertEqual(self.store.counts([1], owner="bob@example.org"), {1: (1, 0)})
        self.assertEqual(self.store.prune(time.time() - 90 * 86400, 3), 2)   # every table: 3, bob's 1
        self.assertEqual(self.store.counts([1, 2, 3, 4]), {4: (1, 0)})
        self.assertEqual(self.store.counts([1], owner="bob@example.org"), {})
        self.assertEqual(self.store.totals(), (3, 1))            # message totals stay

    def test_auto_expiry_once_a_day_and_failures_logged(self):
        from twisted.internet.defer import maybeDeferred
        from jdmail.bayes.expiry import DAY, AutoExpiry

        class Services:
            def run_blocking(self, f, *args):
                return maybeDeferred(f, *args)

        class Store:
            calls, fail = [], False

            def prune(self, before, max_count, owner):
                self.calls.append((before, max_count, owner))
                if self.fail:
                    raise RuntimeError("database gone")
                return 7

        now = [1000.0 * DAY]
        store = Store()
        auto = AutoExpiry(store, Services(), 180 * DAY, 1, clock=lambda: now[0])
        results = []
        auto.due().addCallback(results.append)
        self.assertEqual((results, store.calls), ([7], [(820 * DAY, 1, None)]))
        self.assertIsNone(auto.due())                  # not again the same day
        now[0] += DAY
        store.fail = True
        results = []
        auto.due().addCallback(results.append)        # a failure is logged, not raised
        self.assertEqual((results, len(store.calls)), ([None], 2))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertIsNone(AutoExpiry(store, Services(), 0, 1).due())      # 0 = never

    def test_check_database(self):
        self.assertIsNone(check_database(""))
        self.assertIsNone(check_database("/var/lib/jdmail/bayes.sqlite"))
        self.assertIsNone(check_database("mysql://jd:pw@127.0.0.1:3306/jdmail"))
        self.assertIn("mysql://", check_database("postgres://x/y"))
        self.assertIn("expected", check_database("mysql://nohostpath"))


class RoundTripTests(TestCase):

    def setUp(self):
        self.store = open_store("", os.path.abspath(self.mktemp()))
        self.addCleanup(self.store.close)
        self.classifier = Classifier(self.store, Params(min_trained=5))

    def test_untrained_is_unsure(self):
        score = self.classifier.score(message(__import__("random").Random(3), True))
        self.assertEqual((score.label, score.trained, score.value), ("unsure", False, 0.5))

    def test_train_then_classify_unseen_messages(self):
        self.assertEqual(self.classifier.learn_many(corpus(seed=1, spam=30, ham=30)), 60)
        self.assertEqual(self.store.totals(), (30, 30))
        results = [(self.classifier.score(raw), is_spam) for raw, is_spam in corpus(seed=2, spam=10, ham=10)]
        for score, is_spam in results:
            self.assertEqual(score.label, "spam" if is_spam else "ham", score)
            self.assertGreater(score.tokens, 10)

    def test_same_message_counts_once_and_retraining_moves_it(self):
        raw = message(__import__("random").Random(4), True, 99)
        self.assertTrue(self.classifier.learn(raw, True))
        self.assertFalse(self.classifier.learn(raw, True))
        self.assertEqual(self.store.totals(), (1, 0))
        self.assertEqual(self.store.seen(digest(raw)), "spam")
        some = token_id("subject:" + sorted(t[8:] for t in tokenize(raw) if t.startswith("subject:"))[0])
        self.assertEqual(self.store.counts([some])[some], (1, 0))
        self.assertTrue(self.classifier.learn(raw, False))      # moved out of Junk
        self.assertEqual(self.store.totals(), (0, 1))
        self.assertEqual(self.store.counts([some])[some], (0, 1))
        self.assertEqual(self.store.seen(digest(raw)), "ham")

    def test_user_table_used_once_trained_else_global(self):
        self.classifier.learn_many(corpus(seed=1, spam=10, ham=10))
        raw = message(__import__("random").Random(5), True, 7)
        self.assertEqual(self.classifier.score(raw, owners=("bob@example.org", "")).owner, "")
        self.classifier.learn_many(corpus(seed=6, spam=6, ham=6), owner="bob@example.org")
        score = self.classifier.score(raw, owners=("bob@example.org", ""))
        self.assertEqual((score.owner, score.label), ("bob@example.org", "spam"))


class SourceTests(TestCase):

    def test_maildir_and_mbox(self):
        base = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(base, "md", sub))
        with open(os.path.join(base, "md", "new", "1.x"), "wb") as f:
            f.write(b"Subject: one\r\n\r\nbody\r\n")
        with open(os.path.join(base, "md", "cur", "2.x:2,S"), "wb") as f:
            f.write(b"Subject: two\r\n\r\nbody\r\n")
        self.assertEqual(sorted(m.split(b"\r\n")[0] for m in read_messages(os.path.join(base, "md"))),
                         [b"Subject: one", b"Subject: two"])
        mbox = os.path.join(base, "box")
        with open(mbox, "wb") as f:
            f.write(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nhi\n>From here\n\n"
                    b"From c@d Mon Jan  1 00:00:00 2024\nSubject: y\n\nyo\n")
        got = list(read_messages(mbox))
        self.assertEqual(len(got), 2)
        self.assertTrue(got[0].startswith(b"Subject: x"), got[0])

    def test_not_a_mailbox(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"hello")
        with self.assertRaises(SourceError):
            list(read_messages(path))
        with self.assertRaises(SourceError):
            list(read_messages(path + ".missing"))


class FilterConfigTests(TestCase):
    """[filter:bayes] values are checked at startup, one line each."""

    def load(self, body):
        from jdmail import config
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "jdmail.ini")
        with open(path, "w") as f:
            f.write(f"[jdmail]\ndatadir = {d}/data\n[filters]\nchain = bayes\n[filter:bayes]\n{body}")
        return path, config.load(path)

    def test_bad_values(self):
        from jdmail.errors import ConfigErrors
        with self.assertRaises(ConfigErrors) as cm:
            self.load("spam_cutoff = 1.5\nham_cutoff = low\ndatabase = postgres://h/db\nscope = team\n")
        lines = sorted(str(e).split(": ", 1)[1] for e in cm.exception.errors)
        self.assertEqual(lines, [
            "[filter:bayes] database 'postgres://h/db': expected a file path, sqlite:PATH or "
            "mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
            "[filter:bayes] ham_cutoff 'low': expected a number from 0 to 1, such as 0.9",
            "[filter:bayes] scope 'team': expected one of global, user",
            "[filter:bayes] spam_cutoff '1.5': expected a number from 0 to 1, such as 0.9",
        ])

    def test_cutoffs_in_order_and_database_usable(self):
        from jdmail.errors import ConfigError
        from jdmail.services import Services
        path, cfg = self.load("ham_cutoff = 0.6\nspam_cutoff = 0.5\n")
        factory, settings = cfg.components["filter:bayes"]
        services = Services(reactor=None, config=cfg, hostname="mail.test", datadir=cfg.datadir,
                            threadpool=None)
        with self.assertRaises(ConfigError) as cm:
            factory.build("bayes", settings, services)
        self.assertEqual(str(cm.exception), f"{path}: [filter:bayes] spam_cutoff 0.5: must be more than "
                                            f"ham_cutoff (0.6)")
        blocker = os.path.join(os.path.dirname(path), "file")
        open(blocker, "w").close()
        path, cfg = self.load(f"database = {blocker}/sub/bayes.sqlite\n")
        factory, settings = cfg.components["filter:bayes"]
        services.config = cfg
        with self.assertRaises(ConfigError) as cm:
            factory.build("bayes", settings, services)
        self.assertTrue(str(cm.exception).startswith(f"{path}: [filter:bayes] database cannot open the "
                                                     f"token database {blocker}/sub/bayes.sqlite:"),
                        str(cm.exception))
        self.assertEqual(services.extra.get("junk_learners", []), [])
