"""SPF (pyspf), DKIM (dkimpy) and DMARC checks against the loopback DNS fixture."""

import os

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jdmail.filters import dkim_keys
from jdmail.filters.dkim import DKIMResult, sign_message, verify_message
from jdmail.filters.dmarc import (aligned, author_domain, evaluate_dmarc, organisational_domain,
                                  parse_record)
from jdmail.filters.dnsutil import AsyncDNS, blocking_resolver
from jdmail.filters.spf import SPFResult, check_spf
from tests.fixtures.authdns import base_records, shared_dns
from tests.fixtures.dns import resolver_for

MESSAGE = (b"From: Alice <alice@signed.test>\r\nTo: bob@example.org\r\nSubject: hello\r\n"
           b"Date: Sat, 21 Nov 2026 23:00:00 +0000\r\nMessage-ID: <1@signed.test>\r\n\r\n"
           b"Hello Bob,\r\nthe body.\r\n")

_key = []


def test_key():
    """(PEM, TXT value) of one 1024-bit key per process (fast to make, dkimpy's minimum)."""
    if not _key:
        import tempfile
        datadir = tempfile.mkdtemp(prefix="jdmail-dkim-")
        dkim_keys.generate_key(datadir, "signed.test", "sel", bits=1024)
        selector, pem = dkim_keys.current_key(datadir, "signed.test")
        _key.append((pem, dkim_keys.txt_value(dkim_keys.public_key_b64(pem))))
    return _key[0]


class SPFTests(unittest.TestCase):

    def setUp(self):
        self.resolver = blocking_resolver([("127.0.0.1", shared_dns().port)])

    def spf(self, ip, sender, helo="client.example.test"):
        return deferToThread(check_spf, ip, sender, helo, self.resolver, "mx.ours.test")

    async def test_results(self):
        cases = [("192.0.2.44", "a@example.test", "pass"),
                 ("2001:db8::9", "a@example.test", "pass"),
                 ("198.51.100.1", "a@example.test", "fail"),
                 ("192.0.2.44", "a@incl.test", "pass"),
                 ("203.0.113.1", "a@incl.test", "fail"),
                 ("203.0.113.1", "a@soft.test", "softfail"),
                 ("203.0.113.1", "a@neutral.test", "neutral"),
                 ("203.0.113.1", "a@nospf.test", "none"),
                 ("203.0.113.1", "a@nxdomain.test", "none"),
                 ("203.0.113.1", "a@bad-spf.test", "permerror"),
                 ("192.0.2.44", "a@tempfail.test", "temperror")]
        for ip, sender, expected in cases:
            result = await self.spf(ip, sender)
            self.assertEqual(result.result, expected, (ip, sender, result))
            self.assertEqual((result.identity, result.domain), ("mailfrom", sender.split("@")[1]))

    async def test_null_sender_checks_helo(self):
        result = await self.spf("198.51.100.1", "", helo="example.test")
        self.assertEqual((result.result, result.identity, result.domain), ("fail", "helo", "example.test"))
        self.assertEqual(result.auth_result().render(), "spf=fail smtp.helo=example.test")

    def test_headers(self):
        r = SPFResult("pass", "mailfrom", "example.test", "", "192.0.2.44", "a@example.test", "c.example.test")
        self.assertEqual(r.auth_result().render(), "spf=pass smtp.mailfrom=a@example.test")
        self.assertEqual(r.received_spf("mx.ours.test"),
                         'pass (mx.ours.test: domain of a@example.test designates 192.0.2.44) '
                         'client-ip=192.0.2.44; envelope-from="a@example.test"; helo=c.example.test;')


class DKIMTests(unittest.TestCase):

    def setUp(self):
        self.pem, txt = test_key()
        shared_dns(base_records(txt))
        self.resolver = blocking_resolver([("127.0.0.1", shared_dns(base_records(txt)).port)])

    def test_genkey_files_and_record(self):
        datadir = self.mktemp()
        record = dkim_keys.generate_key(datadir, "Example.ORG", "s2026", bits=1024)
        selector, pem = dkim_keys.current_key(datadir, "example.org")
        self.assertEqual(selector, "s2026")
        self.assertEqual(os.stat(os.path.join(datadir, "dkim", "example.org", "s2026.key")).st_mode & 0o777, 0o600)
        self.assertTrue(record.startswith('s2026._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p='))
        strings = record[record.index("(") + 1:record.rindex(")")].split('"')[1::2]
        self.assertEqual("".join(strings), dkim_keys.txt_value(dkim_keys.public_key_b64(pem)))
        with self.assertRaises(dkim_keys.DKIMKeyError):
            dkim_keys.generate_key(datadir, "example.org", "s2026", bits=1024)
        with self.assertRaises(dkim_keys.DKIMKeyError):
            dkim_keys.generate_key(datadir, "example.org", "bad_selector", bits=1024)
        self.assertEqual(dkim_keys.list_keys(datadir), [("example.org", "s2026", True)])

    def sign(self, selector="sel", message=MESSAGE):
        return sign_message(message, "signed.test", selector, self.pem) + message

    def test_signed_message_verifies(self):
        signed = self.sign()
        self.assertTrue(signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=signed.test;"))
        [result] = verify_message(signed, self.resolver)
        self.assertEqual(result, DKIMResult("pass", "signed.test", "sel", ""))
        self.assertEqual(result.auth_result().render(), "dkim=pass header.d=signed.test header.s=sel")

    def test_tampered_body_fails(self):
        signed = self.sign().replace(b"the body.", b"the b0dy.")
        [result] = verify_message(signed, self.resolver)
        self.assertEqual((result.result, result.domain, result.selector), ("fail", "signed.test", "sel"))
        self.assertEqual(result.auth_result().render(),
                         'dkim=fail reason="body hash mismatch" header.d=signed.test header.s=sel')

    def test_unsigned_bad_key_and_dns_failure(self):
        self.assertEqual(verify_message(MESSAGE, self.resolver), [DKIMResult("none")])
        self.assertEqual(verify_message(self.sign("bad"), self.resolver)[0].result, "permerror")
        self.assertEqual(verify_message(self.sign("nokey"), self.resolver)[0].result, "permerror")
        self.assertEqual(verify_message(self.sign("dead"), self.resolver)[0].result, "temperror")


class DMARCTests(unittest.TestCase):

    def setUp(self):
        self.dns = AsyncDNS(resolver_for(shared_dns().port, self))

    def test_parse_and_alignment(self):
        p = parse_record("v=DMARC1; p=Reject; sp=none; adkim=s; pct=30")
        self.assertEqual((p.p, p.sp, p.adkim, p.aspf, p.pct), ("reject", "none", "s", "r", 30))
        self.assertIsNone(parse_record("v=DMARC1; p=bounce"))
        self.assertIsNone(parse_record("p=reject; v=DMARC1"))
        self.assertEqual(organisational_domain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organisational_domain("mail.example.test"), "example.test")
        self.assertTrue(aligned("mail.example.test", "example.test", "r"))
        self.assertFalse(aligned("mail.example.test", "example.test", "s"))
        self.assertFalse(aligned("example.co.uk", "other.co.uk", "r"))
        self.assertEqual(author_domain("Alice <alice@Example.Test>"), "example.test")
        self.assertEqual(author_domain("a@x.test, b@y.test"), "")

    def spf(self, result, domain):
        return SPFResult(result, "mailfrom", domain, "", "192.0.2.1", "a@" + domain, "h.test")

    async def test_pass_by_aligned_spf_or_dkim(self):
        r = await evaluate_dmarc("example.test", self.spf("pass", "bounce.example.test"), [], self.dns)
        self.assertEqual((r.result, r.policy, r.disposition), ("pass", "reject", "none"))
        self.assertEqual(r.auth_result().render(), 'dmarc=pass reason="p=reject dis=none" header.from=example.test')
        r = await evaluate_dmarc("example.test", self.spf("fail", "example.test"),
                                 [DKIMResult("fail", "example.test", "s"), DKIMResult("pass", "example.test", "s")],
                                 self.dns)
        self.assertEqual(r.result, "pass")

    async def test_reject_when_nothing_aligned(self):
        r = await evaluate_dmarc("example.test", self.spf("pass", "elsewhere.test"),
                                 [DKIMResult("pass", "elsewhere.test", "s")], self.dns)
        self.assertEqual((r.result, r.disposition), ("fail", "reject"))
        self.assertEqual(r.auth_result().render(), 'dmarc=fail reason="p=reject dis=reject" header.from=example.test')

    async def test_strict_alignment_and_quarantine(self):
        r = await evaluate_dmarc("quarantine.test", self.spf("pass", "mail.quarantine.test"), [], self.dns)
        self.assertEqual((r.result, r.disposition), ("fail", "quarantine"))
        r = await evaluate_dmarc("quarantine.test", self.spf("pass", "quarantine.test"), [], self.dns)
        self.assertEqual(r.result, "pass")

    async def test_pct_sampling(self):
        r = await evaluate_dmarc("half.test", None, [], self.dns, rand=lambda: 0.2)
        self.assertEqual((r.policy, r.disposition), ("reject", "reject"))
        r = await evaluate_dmarc("half.test", None, [], self.dns, rand=lambda: 0.7)
        self.assertEqual((r.policy, r.disposition), ("reject", "quarantine"))

    async def test_subdomain_policy_from_organisational_domain(self):
        r = await evaluate_dmarc("news.org.test", None, [], self.dns)
        self.assertEqual((r.result, r.policy, r.disposition), ("fail", "reject", "reject"))
        r = await evaluate_dmarc("org.test", None, [], self.dns)
        self.assertEqual((r.result, r.policy, r.disposition), ("fail", "none", "none"))

    async def test_none_temperror_and_several_records(self):
        self.assertEqual((await evaluate_dmarc("nospf.test", None, [], self.dns)).result, "none")
        self.assertEqual((await evaluate_dmarc("twice.test", None, [], self.dns)).result, "none")
        self.assertEqual((await evaluate_dmarc("dmarc-broken.test", None, [], self.dns)).result, "temperror")
        self.assertEqual((await evaluate_dmarc("", None, [], self.dns)).result, "permerror")
