"""The antispam filter classes (dnsbl, helo, greylist, spf, dmarc): verdicts per stage,
trusted clients left alone, factories' option parsing; DNS from the loopback fixture."""

import os
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jdmail.filters.dmarc import DMARCFilter, DMARCFilterFactory
from jdmail.filters.dnsbl import DNSBLChecker, DNSBLFilter, DNSBLFilterFactory, DNSList
from jdmail.filters.dnsutil import AsyncDNS, blocking_resolver
from jdmail.filters.greylist import GREYLIST_TEXT, Greylist, GreylistFilter
from jdmail.filters.greylist_store import GreylistStore, open_sqlite
from jdmail.filters.helo import HeloFilter
from jdmail.filters.results import FilterResults
from jdmail.filters.spf import SPFFilter, SPFFilterFactory
from jdmail.interfaces import Action, AuthResult, Stage
from tests.fixtures.authdns import shared_dns
from tests.fixtures.dns import resolver_for


def txn(**kw):
    values = dict(client_ip="192.0.2.44", helo="client.example.test", sender="a@example.test",
                  recipient="bob@example.org", auth_user="", outbound=False, hostname="mx.ours.test",
                  headers={"From": "A <a@example.test>"})
    values.update(kw)
    return SimpleNamespace(filter_results=FilterResults(), **values)


class FilterTestCase(unittest.TestCase):

    def setUp(self):
        self.port = shared_dns().port
        self.dns = AsyncDNS(resolver_for(self.port, self))


class DNSBLFilterTests(FilterTestCase):

    def make(self, action="reject", threshold=1.0):
        checker = DNSBLChecker(self.dns, [DNSList.parse("bl.test"), DNSList.parse("bl2.test")],
                               [DNSList.parse("dbl.test")], [DNSList.parse("wl.test")])
        return DNSBLFilter("dnsbl", checker, action, threshold)

    async def test_reject_names_the_first_list(self):
        flt = self.make()
        self.assertEqual(flt.stages, frozenset({Stage.RCPT}))
        v = await flt.check(Stage.RCPT, txn(client_ip="192.0.2.66"))
        self.assertEqual((v.action, v.code, v.enhanced, v.text),
                         (Action.REJECT, 554, "5.7.1", "Service unavailable; client [192.0.2.66] blocked using bl.test"))
        self.assertIn("listed by bl2.test", v.reason)

    async def test_threshold(self):
        v = await self.make(threshold=3).check(Stage.RCPT, txn(client_ip="192.0.2.66"))
        self.assertEqual(v.action, Action.CONTINUE)
        self.assertIn("below threshold 2 < 3", v.reason)

    async def test_score_at_data(self):
        flt = self.make("score")
        self.assertEqual(flt.stages, frozenset({Stage.DATA}))
        v = await flt.check(Stage.DATA, txn(client_ip="192.0.2.66", sender="x@spammy.test"))
        self.assertEqual((v.action, v.score, v.tests),
                         (Action.CONTINUE, 3.0, ("DNSBL_BL_TEST", "DNSBL_BL2_TEST", "DNSBL_DBL_TEST")))

    async def test_trusted_clients_not_looked_up(self):
        for t in (txn(client_ip="192.0.2.66", auth_user="bob@example.org"), txn(client_ip="192.0.2.66", outbound=True)):
            v = await self.make().check(Stage.RCPT, t)
            self.assertEqual(v.action, Action.CONTINUE)
            self.assertEqual(t.filter_results.notes, {})

    def test_factory_options(self):
        opts = DNSBLFilterFactory.options
        self.assertEqual(opts["ip_lists"].parse("zen.test*2, bl.test"),
                         [DNSList("zen.test", frozenset(), 2.0), DNSList("bl.test")])
        with self.assertRaises(ValueError) as e:
            opts["ip_lists"].parse("zen.test*x")
        self.assertIn("expected ZONE, ZONE*WEIGHT or ZONE=127.0.0.N*WEIGHT", str(e.exception))


class HeloFilterTests(FilterTestCase):

    async def test_delayed_to_rcpt_and_trusted_spared(self):
        flt = HeloFilter("helo", self.dns, "mx.ours.test")
        self.assertEqual(flt.stages, frozenset({Stage.RCPT}))
        v = await flt.check(Stage.RCPT, txn(helo="laptop"))
        self.assertEqual((v.action, v.code, v.enhanced), (Action.REJECT, 501, "5.5.2"))
        self.assertEqual((await flt.check(Stage.RCPT, txn(helo="laptop", auth_user="bob@example.org"))).action,
                         Action.CONTINUE)

    async def test_at_helo(self):
        flt = HeloFilter("helo", self.dns, "mx.ours.test", require_dns=True, delay_reject=False)
        self.assertEqual(flt.stages, frozenset({Stage.HELO}))
        v = await flt.check(Stage.HELO, txn(helo="broken.test"))
        self.assertEqual((v.action, v.code, v.enhanced), (Action.TEMPFAIL, 450, "4.7.1"))
        v = await flt.check(Stage.HELO, txn(helo="MX.ours.test"))
        self.assertEqual((v.action, v.code, v.text), (Action.REJECT, 550, "Helo command rejected: you are not me"))


class GreylistFilterTests(unittest.TestCase):

    async def test_tempfail_then_pass_and_trusted_never(self):
        conn = open_sqlite(os.path.abspath(self.mktemp()))
        self.addCleanup(conn.close)
        clock = task.Clock()
        flt = GreylistFilter("greylist", Greylist(GreylistStore(conn), clock, deferToThread, delay=60))
        v = await flt.check(Stage.RCPT, txn())
        self.assertEqual((v.action, v.code, v.enhanced, v.text), (Action.TEMPFAIL, 451, "4.7.1", GREYLIST_TEXT))
        clock.advance(61)
        self.assertEqual((await flt.check(Stage.RCPT, txn())).action, Action.CONTINUE)
        for t in (txn(sender="z@z.test", outbound=True), txn(sender="z@z.test", auth_user="bob@example.org")):
            self.assertEqual((await flt.check(Stage.RCPT, t)).action, Action.CONTINUE)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM greylist_triplet WHERE sender = 'z@z.test'").fetchone(),
                         (0,))


class SPFFilterTests(FilterTestCase):

    def make(self, **actions):
        return SPFFilter("spf", blocking_resolver([("127.0.0.1", self.port)]), deferToThread, "mx.ours.test",
                         actions)

    async def test_fail_refused_at_rcpt(self):
        v = await self.make().check(Stage.RCPT, txn(client_ip="198.51.100.1"))
        self.assertEqual((v.action, v.code, v.enhanced), (Action.REJECT, 550, "5.7.23"))
        self.assertIn("spf=fail mailfrom=example.test ip=198.51.100.1", v.reason)

    async def test_pass_recorded_at_data_once(self):
        flt, t = self.make(), txn()
        self.assertEqual((await flt.check(Stage.RCPT, t)).action, Action.CONTINUE)
        first = t.filter_results.notes["spf"]
        v = await flt.check(Stage.DATA, t)
        self.assertIs(t.filter_results.notes["spf"], first)
        self.assertEqual([r.render() for r in v.auth_results], ["spf=pass smtp.mailfrom=a@example.test"])
        self.assertEqual(v.headers[0][0], "Received-SPF")

    async def test_per_result_actions(self):
        soft = txn(client_ip="203.0.113.1", sender="a@soft.test")
        v = await self.make().check(Stage.DATA, soft)
        self.assertEqual((v.action, v.score, v.tests), (Action.CONTINUE, 2.0, ("SPF_SOFTFAIL",)))
        v = await self.make(softfail="quarantine").check(Stage.DATA, txn(client_ip="203.0.113.1", sender="a@soft.test"))
        self.assertEqual(v.action, Action.QUARANTINE)
        v = await self.make(temperror="tempfail").check(Stage.RCPT, txn(sender="a@tempfail.test"))
        self.assertEqual((v.action, v.code, v.enhanced), (Action.TEMPFAIL, 451, "4.7.24"))
        v = await self.make(fail="continue").check(Stage.RCPT, txn(client_ip="198.51.100.1"))
        self.assertEqual(v.action, Action.CONTINUE)

    def test_factory_options(self):
        self.assertEqual(SPFFilterFactory.options["on_fail"].default, "reject")
        self.assertEqual(SPFFilterFactory.options["on_softfail"].default, "tag")
        with self.assertRaises(ValueError):
            SPFFilterFactory.options["on_fail"].parse("bounce")


class DMARCFilterTests(FilterTestCase):

    def with_results(self, from_header, *results, **kw):
        t = txn(headers={"From": from_header}, **kw)
        t.filter_results.auth_results.extend(results)
        return t

    async def test_reads_spf_and_dkim_results_of_earlier_filters(self):
        flt = DMARCFilter("dmarc", self.dns)
        spf = AuthResult("spf", "pass", properties=(("smtp.mailfrom", "a@elsewhere.test"),))
        v = await flt.check(Stage.DATA, self.with_results("a@example.test", spf))
        self.assertEqual((v.action, v.code, v.enhanced), (Action.REJECT, 550, "5.7.1"))
        self.assertEqual([r.render() for r in v.auth_results],
                         ['dmarc=fail reason="p=reject dis=reject" header.from=example.test'])
        dkim = AuthResult("dkim", "pass", properties=(("header.d", "mail.example.test"), ("header.s", "s")))
        v = await flt.check(Stage.DATA, self.with_results("a@example.test", spf, dkim))
        self.assertEqual(v.action, Action.CONTINUE)
        self.assertEqual(v.auth_results[0].result, "pass")

    async def test_actions(self):
        v = await DMARCFilter("dmarc", self.dns).check(Stage.DATA, self.with_results("a@quarantine.test"))
        self.assertEqual(v.action, Action.QUARANTINE)
        v = await DMARCFilter("dmarc", self.dns, on_reject="tag").check(Stage.DATA, self.with_results("a@example.test"))
        self.assertEqual((v.action, v.spam), (Action.CONTINUE, True))
        v = await DMARCFilter("dmarc", self.dns).check(Stage.DATA, self.with_results("a@monitor.test"))
        self.assertEqual((v.action, v.auth_results[0].result), (Action.CONTINUE, "fail"))
        v = await DMARCFilter("dmarc", self.dns).check(Stage.DATA,
                                                       self.with_results("a@example.test", auth_user="bob@example.org"))
        self.assertEqual(v.auth_results, ())

    def test_factory_options(self):
        with self.assertRaises(ValueError):
            DMARCFilterFactory.options["on_quarantine"].parse("reject")
