"""jdmail.filters.chain and the spool's header insertion, in process: reply codes made to
fit, what a plugin may not do (inject header lines, return junk), header rendering."""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from jdmail.filters.chain import ChainEntry, FilterChain
from jdmail.filters.results import FilterResults, render_header
from jdmail.interfaces import Action, AuthResult, Stage, Verdict
from jdmail.smtp.spool import SpoolFile


class Txn:
    queue_id = "Q1"
    client_ip = "192.0.2.1"

    def __init__(self):
        self.filter_results = FilterResults()


class Fixed:
    def __init__(self, name, verdict, stages=(Stage.DATA,)):
        self.name, self.verdict, self.stages = name, verdict, frozenset(stages)

    def check(self, stage, txn):
        return self.verdict


def chain(*filters, **kw):
    return FilterChain([ChainEntry(f, **kw) for f in filters], Clock(), hostname="mail.test")


class ChainTests(TestCase):

    async def run_one(self, verdict, stage=Stage.DATA, **kw):
        txn = Txn()
        result = await chain(Fixed("f", verdict, (stage,)), **kw).run(stage, txn)
        return result, txn

    async def test_codes_made_to_fit_the_action(self):
        v, _ = await self.run_one(Verdict(Action.REJECT, 250, "2.0.0", "nope\r\nInjected: x"))
        self.assertEqual((v.code, v.enhanced, v.text), (550, "5.7.1", "nope Injected: x"))
        v, _ = await self.run_one(Verdict.tempfail("later", code=421, enhanced="4.4.2"))
        self.assertEqual((v.code, v.enhanced), (451, "4.4.2"))       # 421 would mean closing
        v, _ = await self.run_one(Verdict.tempfail("later"), stage=Stage.CONNECT)
        self.assertEqual((v.code, v.enhanced), (421, "4.7.1"))
        v, _ = await self.run_one(Verdict.reject("", enhanced="4.1.1"), stage=Stage.CONNECT)
        self.assertEqual((v.code, v.enhanced, v.text), (554, "5.7.1", "Message refused by local policy"))

    async def test_header_injection_is_one_line(self):
        v, txn = await self.run_one(Verdict.add_headers(("X-A", "a\r\nBcc: victim@example.org")))
        block = chain().header_block(txn.filter_results)
        self.assertEqual(block, b"X-A: a Bcc: victim@example.org\r\n")

    async def test_bad_header_name_is_a_filter_error(self):
        v, txn = await self.run_one(Verdict.add_headers(("Bad Name", "x")), on_error="reject")
        self.assertEqual((v.action, v.code), (Action.REJECT, 550))
        self.assertEqual(txn.filter_results.headers, [])

    async def test_not_a_verdict_is_a_filter_error(self):
        v, _ = await self.run_one("reject")
        self.assertEqual((v.action, v.code, v.enhanced), (Action.TEMPFAIL, 451, "4.3.0"))

    async def test_reject_stops_the_stage(self):
        txn = Txn()
        later = Fixed("later", Verdict.add_headers(("X-Later", "1")))
        v = await chain(Fixed("first", Verdict.reject("no")), later).run(Stage.DATA, txn)
        self.assertEqual(v.action, Action.REJECT)
        self.assertEqual(txn.filter_results.headers, [])

    async def test_accept_skips_later_filters_at_later_stages(self):
        txn = Txn()
        c = chain(Fixed("allow", Verdict.accept(), (Stage.MAIL,)), Fixed("late", Verdict.reject("no")))
        self.assertEqual((await c.run(Stage.MAIL, txn)).action, Action.ACCEPT)
        self.assertEqual((await c.run(Stage.DATA, txn)).action, Action.CONTINUE)

    def test_auth_results_and_spam_headers(self):
        results = FilterResults()
        results.record("spf", Verdict(auth_results=(AuthResult("spf", "pass", properties=(
            ("smtp.mailfrom", "a@example.org"),)),)), "central")
        results.record("bayes", Verdict(score=2.5, tests=("BAYES_99",)), "central")
        results.record("dnsbl", Verdict(score=3), "central")
        c = chain()
        self.assertTrue(c.spam_tagged(results))
        self.assertEqual(c.header_block(results).decode(),
                         "Authentication-Results: mail.test; spf=pass smtp.mailfrom=a@example.org\r\n"
                         "X-Spam-Flag: YES\r\nX-Spam-Score: 5.5\r\n"
                         "X-Spam-Status: Yes, score=5.5 required=5.0 tests=BAYES_99,dnsbl\r\n")
        d = c.disposition(type("T", (), {"filter_results": results})())
        self.assertEqual((d.action, d.junk), (Action.CONTINUE, True))

    def test_long_and_non_ascii_headers(self):
        text = render_header("X-Long", " ".join(["word"] * 40)).decode()
        self.assertTrue(all(len(line) <= 78 for line in text.split("\r\n")), text)
        self.assertEqual(text.replace("\r\n\t", " "), "X-Long: " + " ".join(["word"] * 40) + "\r\n")
        self.assertEqual(render_header("X-Name", "Grüße"), b"X-Name: =?utf-8?b?R3LDvMOfZQ==?=\r\n")


class SpoolInsertTests(TestCase):

    def spool(self, body):
        d = self.mktemp()
        os.makedirs(d)
        spool = SpoolFile(d, "ID1")
        spool.write_trace(b"Return-Path: <a@b.test>\r\nReceived: from x by mail.test; now\r\n")
        spool.write(body)
        return spool

    def read(self, spool):
        with open(spool.path, "rb") as f:
            return f.read()

    def test_insert_after_trace_and_drop_forged(self):
        body = (b"Authentication-Results: MAIL.test (comment); spf=pass\r\n"
                b"Authentication-Results: other.test; spf=fail\r\n"
                b"Subject: hi\r\n\r\n" + b"x" * 300000 + b"\r\n")
        spool = self.spool(body)
        spool.commit(b"X-Added: 1\r\n", "mail.test")
        self.assertEqual(self.read(spool),
                         b"Return-Path: <a@b.test>\r\nReceived: from x by mail.test; now\r\nX-Added: 1\r\n"
                         b"Authentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\n"
                         + b"x" * 300000 + b"\r\n")
        self.assertEqual(os.listdir(os.path.dirname(spool.path)), ["ID1"])

    def test_nothing_to_insert_leaves_the_file(self):
        spool = self.spool(b"Subject: hi\r\n\r\nbody\r\n")
        inode = os.stat(spool.path).st_ino
        spool.commit(b"", None)
        self.assertEqual(os.stat(spool.path).st_ino, inode)
        self.assertTrue(self.read(spool).endswith(b"Subject: hi\r\n\r\nbody\r\n"))

    def test_headerless_message(self):
        spool = self.spool(b"\r\njust a body\r\n")
        spool.commit(b"X-Added: 1\r\n")
        self.assertTrue(self.read(spool).endswith(b"now\r\nX-Added: 1\r\n\r\njust a body\r\n"))
