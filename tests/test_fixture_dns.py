"""The loopback DNS fixture (tests/fixtures/dns.py), queried with twisted.names' client."""

import atexit
import ipaddress

from twisted.internet import defer
from twisted.names import dns, error
from twisted.trial import unittest

from tests.fixtures.dns import DNSServer, dnsbl_name, normalise, ptr_name, resolver_for, running_dns

DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9  # > 255 bytes
BIG_TXT = "y" * 1600  # over 512 bytes on the wire: UDP answer truncated -> TCP

RECORDS = {
    "example.test": {
        "MX": [(20, "mx2.example.test"), (10, "mx1.example.test")],
        "A": ["127.0.0.2"],
        "TXT": ["v=spf1 ip4:127.0.0.0/8 -all"],
    },
    "mx1.example.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": "127.0.0.4", "TTL": 300},
    "NoMail.Test.": {"MX": [(0, ".")]},
    "sel._domainkey.example.test": {"TXT": [DKIM_KEY]},
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@example.test"]},
    "split.test": {"TXT": [("part one ", "part two")]},
    "www.example.test": {"CNAME": ["example.test"]},
    ptr_name("127.0.0.3"): {"PTR": ["mx1.example.test"]},
    dnsbl_name("127.0.0.2", "zen.test"): {"A": ["127.0.0.2"], "TXT": ["listed, see http://zen.test/"]},
    "big.test": {"TXT": [BIG_TXT]},
    "broken.test": "SERVFAIL",
}


_shared = []


def shared_server():
    """One server for the module (startup is ~0.3 s; trial has no setUpClass), stopped at
    exit -- it would exit anyway when this process dies and its stdin closes."""
    if not _shared:
        server = DNSServer(RECORDS)
        server.start()
        atexit.register(server.stop)
        _shared.append(server)
    return _shared[0]


class DNSFixtureTests(unittest.TestCase):
    """Records reset before each test."""

    def setUp(self):
        self.server = shared_server()
        self.server.update(RECORDS)
        self.resolver = resolver_for(self.server.port, self)

    @defer.inlineCallbacks
    def payloads(self, method, name):
        answers, _, _ = yield getattr(self.resolver, method)(name)
        return [rr.payload for rr in answers if rr.name.name.lower() == name.lower().encode()]

    def test_helpers(self):
        self.assertEqual(ptr_name("127.0.0.3"), "3.0.0.127.in-addr.arpa")
        self.assertEqual(dnsbl_name("127.0.0.2", "zen.test."), "2.0.0.127.zen.test")
        self.assertEqual(dnsbl_name("2001:db8::1", "bl.test"),
                         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")
        self.assertEqual(self.server.address, f"127.0.0.1:{self.server.port}")

    def test_bad_records_fail_in_the_test_process(self):
        self.assertRaises(ValueError, normalise, {"a.test": {"A": ["::1"]}})
        self.assertRaises(ValueError, normalise, {"a.test": {"AAAA": ["127.0.0.1"]}})
        self.assertRaises(ValueError, normalise, {"a.test": {"HINFO": ["x"]}})
        self.assertRaises(ValueError, normalise, {"a.test": {"TXT": [("z" * 256,)]}})
        self.assertRaises(ValueError, normalise, {"a.test": ["127.0.0.1"]})

    @defer.inlineCallbacks
    def test_mx_with_preferences_and_additional_addresses(self):
        answers, _, additional = yield self.resolver.lookupMailExchange("example.test")
        self.assertEqual(sorted((rr.payload.preference, rr.payload.name.name) for rr in answers),
                         [(10, b"mx1.example.test"), (20, b"mx2.example.test")])
        self.assertTrue(all(rr.auth for rr in answers))
        self.assertIn((b"mx1.example.test", dns.A), [(rr.name.name, rr.type) for rr in additional])

    @defer.inlineCallbacks
    def test_null_mx_and_case_insensitive_names(self):
        [mx] = yield self.payloads("lookupMailExchange", "nomail.TEST")
        self.assertEqual((mx.preference, mx.name.name), (0, b""))

    @defer.inlineCallbacks
    def test_a_aaaa_and_ttl(self):
        [a] = yield self.payloads("lookupAddress", "mx1.example.test")
        self.assertEqual(a.dottedQuad(), "127.0.0.3")
        [aaaa] = yield self.payloads("lookupIPV6Address", "mx1.example.test")
        self.assertEqual(ipaddress.ip_address(aaaa._address), ipaddress.ip_address("::1"))
        answers, _, _ = yield self.resolver.lookupAddress("mx2.example.test")
        self.assertEqual([rr.ttl for rr in answers], [300])

    @defer.inlineCallbacks
    def test_txt_spf_dmarc_dkim_split(self):
        [spf] = yield self.payloads("lookupText", "example.test")
        self.assertEqual(spf.data, [b"v=spf1 ip4:127.0.0.0/8 -all"])
        [dmarc] = yield self.payloads("lookupText", "_dmarc.example.test")
        self.assertEqual(dmarc.data, [b"v=DMARC1; p=reject; rua=mailto:d@example.test"])
        [dkim] = yield self.payloads("lookupText", "sel._domainkey.example.test")
        self.assertGreater(len(dkim.data), 1)
        self.assertEqual([len(c) for c in dkim.data[:-1]], [255] * (len(dkim.data) - 1))
        self.assertEqual(b"".join(dkim.data), DKIM_KEY.encode())
        [split] = yield self.payloads("lookupText", "split.test")
        self.assertEqual(split.data, [b"part one ", b"part two"])

    @defer.inlineCallbacks
    def test_cname_and_ptr(self):
        answers, _, _ = yield self.resolver.lookupAddress("www.example.test")
        by_type = {rr.type: rr for rr in answers}
        self.assertEqual(by_type[dns.CNAME].payload.name.name, b"example.test")
        self.assertEqual(by_type[dns.A].payload.dottedQuad(), "127.0.0.2")
        [ptr] = yield self.payloads("lookupPointer", "3.0.0.127.in-addr.arpa")
        self.assertEqual(ptr.name.name, b"mx1.example.test")

    @defer.inlineCallbacks
    def test_dnsbl_listed_and_not_listed(self):
        [a] = yield self.payloads("lookupAddress", "2.0.0.127.zen.test")
        self.assertEqual(a.dottedQuad(), "127.0.0.2")
        [txt] = yield self.payloads("lookupText", "2.0.0.127.zen.test")
        self.assertEqual(txt.data, [b"listed, see http://zen.test/"])
        yield self.assertFailure(self.resolver.lookupAddress("9.0.0.127.zen.test"), error.DNSNameError)

    @defer.inlineCallbacks
    def test_nxdomain_nodata_servfail(self):
        yield self.assertFailure(self.resolver.lookupAddress("unknown.test"), error.DNSNameError)
        answers, authority, _ = yield self.resolver.lookupMailExchange("mx1.example.test")
        self.assertEqual((answers, [rr.type for rr in authority]), ([], [dns.SOA]))
        yield self.assertFailure(self.resolver.lookupAddress("broken.test"), error.DNSServerError)
        yield self.assertFailure(self.resolver.lookupMailExchange("broken.test"), error.DNSServerError)

    @defer.inlineCallbacks
    def test_large_txt_truncated_over_udp_then_tcp(self):
        query = [dns.Query(b"big.test", dns.TXT, dns.IN)]
        udp = yield self.resolver.queryUDP(query, timeout=(2,))
        self.assertTrue(udp.trunc)
        tcp = yield self.resolver.queryTCP(query, timeout=2)
        self.assertFalse(tcp.trunc)
        self.assertEqual(b"".join(tcp.answers[0].payload.data), BIG_TXT.encode())
        # the resolver's own lookup falls back to TCP by itself
        [txt] = yield self.payloads("lookupText", "big.test")
        self.assertEqual(b"".join(txt.data), BIG_TXT.encode())

    @defer.inlineCallbacks
    def test_update_while_running(self):
        port = self.server.port
        self.server.update({"example.test": {"A": ["127.0.0.9"]}, "new.test": {"MX": [(5, "example.test")]},
                            "mx1.example.test": "SERVFAIL"})
        self.assertEqual(self.server.port, port)
        [a] = yield self.payloads("lookupAddress", "example.test")
        self.assertEqual(a.dottedQuad(), "127.0.0.9")
        [mx] = yield self.payloads("lookupMailExchange", "new.test")
        self.assertEqual((mx.preference, mx.name.name), (5, b"example.test"))
        yield self.assertFailure(self.resolver.lookupAddress("mx1.example.test"), error.DNSServerError)
        yield self.assertFailure(self.resolver.lookupAddress("nomail.test"), error.DNSNameError)


class RunningDNSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_running_dns_stops_in_cleanup(self):
        procs = []
        self.addCleanup(lambda: self.assertIsNotNone(procs[0].poll()))  # LIFO: after server.stop
        server = running_dns(self, {"a.test": {"A": ["127.0.0.5"]}})
        procs.append(server.proc)
        answers, _, _ = yield resolver_for(server.port, self).lookupAddress("a.test")
        self.assertEqual(answers[0].payload.dottedQuad(), "127.0.0.5")
