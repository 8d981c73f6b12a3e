"""DNSBL and HELO checks against the loopback DNS fixture (a real twisted.names server)."""

from twisted.trial import unittest

from jdmail.filters.dnsbl import DNSBLChecker, DNSList
from jdmail.filters.dnsutil import AsyncDNS, reverse_name
from jdmail.filters.helo import address_literal, check_helo, is_fqdn
from jdmail.interfaces import Action, Stage
from tests.fixtures.authdns import shared_dns
from tests.fixtures.dns import resolver_for


class ReverseNameTests(unittest.TestCase):

    def test_ipv4_ipv6_and_mapped(self):
        self.assertEqual(reverse_name("192.0.2.1", "bl.test."), "1.2.0.192.bl.test")
        self.assertEqual(reverse_name("2001:db8::1", "bl.test"),
                         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")
        self.assertEqual(reverse_name("::ffff:192.0.2.1", "bl.test"), "1.2.0.192.bl.test")

    def test_list_specs(self):
        self.assertEqual(DNSList.parse("zen.test"), DNSList("zen.test", frozenset(), 1.0))
        self.assertEqual(DNSList.parse("Zen.Test.*3"), DNSList("zen.test", frozenset(), 3.0))
        self.assertEqual(DNSList.parse("zen.test=127.0.0.2;127.0.0.4*2.5"),
                         DNSList("zen.test", frozenset({"127.0.0.2", "127.0.0.4"}), 2.5))
        for bad in ("zen", "zen.test*x", "zen.test=1.2.3*2", "zen.test=banana"):
            with self.assertRaises(ValueError) as e:
                DNSList.parse(bad)
            self.assertIn(repr(bad), str(e.exception))


class DNSBLTests(unittest.TestCase):

    def setUp(self):
        self.dns = AsyncDNS(resolver_for(shared_dns().port, self))

    def checker(self, ip_lists=("bl.test*2", "bl2.test"), domain_lists=("dbl.test",), allowlists=("wl.test",)):
        return DNSBLChecker(self.dns, [DNSList.parse(s) for s in ip_lists],
                            [DNSList.parse(s) for s in domain_lists], [DNSList.parse(s) for s in allowlists])

    async def test_listed_ip_with_weights_and_reason(self):
        result = await self.checker().check("192.0.2.66")
        self.assertEqual([(item.dnslist.zone, item.answers) for item in result.listings],
                         [("bl.test", ("127.0.0.2",)), ("bl2.test", ("127.0.0.3",))])
        self.assertEqual(result.listings[0].reason, "listed: spam seen from 192.0.2.66")
        self.assertEqual(result.score, 3.0)
        self.assertEqual(result.errors, [])

    async def test_not_listed(self):
        result = await self.checker().check("192.0.2.1", domains=["example.test"])
        self.assertEqual((result.listings, result.score, result.allowed_by), ([], 0.0, ""))

    async def test_ipv6_client(self):
        result = await self.checker().check("2001:db8::66")
        self.assertEqual([item.dnslist.zone for item in result.listings], ["bl.test"])

    async def test_allowlist_skips_blocklists(self):
        result = await self.checker(ip_lists=("bl.test", "wl.test")).check("192.0.2.77")
        self.assertEqual((result.allowed_by, result.listings, result.score), ("wl.test", [], 0.0))

    async def test_answer_codes_filter_and_non_loopback_answers_ignored(self):
        only4 = self.checker(ip_lists=("bl.test=127.0.0.4",))
        self.assertEqual((await only4.check("192.0.2.66")).listings, [])
        self.assertEqual(len((await only4.check("2001:db8::66")).listings), 1)
        self.assertEqual((await self.checker().check("192.0.2.99")).listings, [])

    async def test_domain_lists(self):
        result = await self.checker().check(None, domains=["Spammy.Test", "example.test", "[192.0.2.1]"])
        self.assertEqual([(item.subject, item.reason) for item in result.listings],
                         [("spammy.test", "domain listed")])

    async def test_dns_failure_is_not_a_listing(self):
        result = await self.checker(ip_lists=("broken-bl.test",)).check("192.0.2.66")
        self.assertEqual(result.listings, [])
        self.assertIn("SERVFAIL", result.errors[0])


class HeloSyntaxTests(unittest.TestCase):

    def test_fqdn(self):
        for good in ("mail.example.test", "a.b.c.example.", "x-1.example.test", "bücher.example"):
            self.assertTrue(is_fqdn(good), good)
        for bad in ("localhost", "mail", "", "-a.example.test", "a..example", "192.0.2.1", "a b.test"):
            self.assertFalse(is_fqdn(bad), bad)

    def test_address_literals(self):
        self.assertEqual(str(address_literal("[192.0.2.1]")), "192.0.2.1")
        self.assertEqual(str(address_literal("[IPv6:2001:db8::1]")), "2001:db8::1")
        for bad in ("[2001:db8::1]", "[IPv6:192.0.2.1]", "[300.1.1.1]", "192.0.2.1"):
            self.assertIsNone(address_literal(bad), bad)


class HeloTests(unittest.TestCase):

    def setUp(self):
        self.dns = AsyncDNS(resolver_for(shared_dns().port, self))

    async def check(self, name, **kw):
        kw.setdefault("hostname", "mx.ours.test")
        kw.setdefault("local_addresses", ["192.0.2.25", "2001:db8::25"])
        return await check_helo(name, dns=self.dns, **kw)

    async def test_non_fqdn_refused_with_501(self):
        problem = await self.check("localhost")
        self.assertEqual((problem.code, problem.enhanced), (501, "5.5.2"))
        self.assertIn("fully-qualified", problem.text)
        self.assertIsNone(await self.check("localhost", require_fqdn=False, reject_self=False))

    async def test_literals_pass(self):
        self.assertIsNone(await self.check("[192.0.2.1]", require_dns=True))
        self.assertIsNone(await self.check("[IPv6:2001:db8::1]", require_dns=True))

    async def test_claims_to_be_us(self):
        for name in ("MX.Ours.Test", "mx.ours.test.", "[192.0.2.25]", "[IPv6:2001:db8::25]"):
            problem = await self.check(name)
            self.assertEqual((problem.code, problem.enhanced), (550, "5.7.1"), name)
        self.assertIsNone(await self.check("mx.ours.test", reject_self=False))

    async def test_mapped_address_is_the_ipv4_one(self):
        """A dual-stack socket reports ::ffff:192.0.2.26; '[192.0.2.26]' is that address."""
        problem = await self.check("[192.0.2.26]", local_addresses=["::ffff:192.0.2.26"])
        self.assertEqual(problem.code, 550)

    async def test_filter_counts_listening_and_connected_addresses(self):
        from jdmail.filters.helo import HeloFilter
        from jdmail.filters.results import FilterResults

        class Txn:
            auth_user, outbound, hostname = "", False, "mx.ours.test"

            def __init__(self, helo, local_ip):
                self.helo, self.local_ip, self.filter_results = helo, local_ip, FilterResults()

        listening = set()
        flt = HeloFilter("helo", self.dns, "", listening=listening)
        verdict = await flt.check(Stage.RCPT, Txn("[198.51.100.7]", "192.0.2.30"))
        self.assertEqual(verdict.action, Action.CONTINUE)
        listening.add("198.51.100.7")       # a listener bound it after the filter was built
        for helo, local_ip in (("[198.51.100.7]", "192.0.2.30"), ("[192.0.2.30]", "192.0.2.30"),
                               ("[192.0.2.30]", "::ffff:192.0.2.30"), ("MX.ours.test", "192.0.2.30")):
            verdict = await flt.check(Stage.RCPT, Txn(helo, local_ip))
            self.assertEqual((verdict.action, verdict.code, verdict.text),
                             (Action.REJECT, 550, "Helo command rejected: you are not me"), helo)

    async def test_forward_dns(self):
        for name in ("mail.example.test", "v6only.test", "mxonly.test"):
            self.assertIsNone(await self.check(name, require_dns=True), name)
        problem = await self.check("nowhere.example.test", require_dns=True)
        self.assertEqual((problem.code, problem.enhanced, problem.text),
                         (550, "5.7.1", "Helo command rejected: host name not found"))
        self.assertIsNone(await self.check("nowhere.example.test"))      # the switch is off

    async def test_dns_failure_is_temporary(self):
        problem = await self.check("broken.test", require_dns=True)
        self.assertEqual((problem.code, problem.enhanced), (450, "4.7.1"))
