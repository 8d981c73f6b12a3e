"""jdmailctl dkim genkey|record|list, run as the admin runs it."""

import os
import re

from jdmail.filters import dkim_keys
from tests.test_admin_ctl import CtlTestCase

RECORD = re.compile(r'^(?P<sel>[\w-]+)\._domainkey\.(?P<dom>[\w.-]+)\. IN TXT \( (?P<strings>("[^"]*" ?)+)\)\n$')


class DKIMCtlTests(CtlTestCase):

    def test_genkey_prints_the_record_of_the_stored_key(self):
        code, out, err = self.ctl("dkim", "genkey", "Example.org", "--selector", "s1", "--bits", "1024")
        self.assertEqual((code, err), (0, ""))
        m = RECORD.match(out)
        self.assertIsNotNone(m, out)
        self.assertEqual((m.group("sel"), m.group("dom")), ("s1", "example.org"))
        text = "".join(re.findall(r'"([^"]*)"', m.group("strings")))
        selector, pem = dkim_keys.current_key(self.datadir, "example.org")
        self.assertEqual(text, "v=DKIM1; k=rsa; p=" + dkim_keys.public_key_b64(pem))
        self.assertEqual(selector, "s1")
        self.assertEqual(self.ctl("dkim", "record", "example.org"), (0, out, ""))
        key_file = os.path.join(self.datadir, "dkim", "example.org", "s1.key")
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)

    def test_default_key_is_2048_bits_and_list(self):
        code, out, err = self.ctl("dkim", "genkey", "example.org")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith('default._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p='))
        from cryptography.hazmat.primitives import serialization
        _, pem = dkim_keys.current_key(self.datadir, "example.org")
        self.assertEqual(serialization.load_pem_private_key(pem, None).key_size, 2048)
        self.ctl("dkim", "genkey", "example.org", "--selector", "new", "--bits", "1024")
        self.assertEqual(self.ctl("dkim", "list"),
                         (0, "example.org default\nexample.org new current\n", ""))

    def test_refusals(self):
        self.ctl("dkim", "genkey", "example.org", "--bits", "1024")
        self.assertRefused(self.ctl("dkim", "genkey", "example.org", "--bits", "1024"), "exists already")
        self.assertRefused(self.ctl("dkim", "genkey", "not a domain"), "is not a domain name")
        self.assertRefused(self.ctl("dkim", "genkey", "example.org", "--selector", "a.b"), "a selector is")
        self.assertRefused(self.ctl("dkim", "genkey", "example.org", "--bits", "512"), "expected 1024 to 8192")
        self.assertRefused(self.ctl("dkim", "record", "other.org"), "has no DKIM key")
