"""The antispam filters end to end (issue 6): a real jdmail whose [dns] servers is the
loopback DNS fixture, real clients (smtplib, swaks), verdicts checked on the wire and on
disk. Loopback clients bind 127.0.0.9 (blocklisted) or 127.0.0.3 (also allowlisted);
127.0.0.2 is every list's RFC 5782 test entry."""

import atexit
import os
import re
import smtplib
import subprocess
import time

from twisted.trial.unittest import TestCase

from tests.e2e import files_with, token, unverified_context, wait_for
from tests.fixtures.dns import DNSServer, dkim_name, dmarc_name, list_zone, merge
from tests.fixtures.server import JdmailServer

BOB, PASSWORD = "bob@example.org", "secret"
FRIEND = "friend@example.net"
HELO = "client.example.test"

RECORDS = merge(
    list_zone("bl.test", {"127.0.0.9": ("127.0.0.2", "spam trap hits"), "127.0.0.3": "127.0.0.2",
                          "::1": ("127.0.0.2", "IPv6 spam source")}),     # nibble-reversed name
    list_zone("wl.test", {"127.0.0.3": "127.0.0.2"}),
    list_zone("score.test", {"127.0.0.5": "127.0.0.2"}),
    list_zone("dbl.test", domains={"spammy.test": "127.0.0.2"}),
    {
        "client.example.test": {"A": ["127.0.0.1"]},
        "example.net": {"MX": [(10, "mx.example.net")]},
        "mx.example.net": {"A": ["127.0.0.1"]},
        "pass.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "fail.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "soft.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 ~all"]},
        "spammy.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "example.org": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        dmarc_name("pass.test"): {"TXT": ["v=DMARC1; p=reject"]},
        dmarc_name("reject.test"): {"TXT": ["v=DMARC1; p=reject"]},
        dmarc_name("quarantine.test"): {"TXT": ["v=DMARC1; p=quarantine"]},
        dmarc_name("example.org"): {"TXT": ["v=DMARC1; p=reject; adkim=s"]},
        dmarc_name("sampled.test"): {"TXT": ["v=DMARC1; p=reject; pct=0"]},
        dmarc_name("org.test"): {"TXT": ["v=DMARC1; p=none; sp=reject"]},
        dmarc_name("parent.test"): {"TXT": ["v=DMARC1; p=reject; sp=none"]},
    })

ANTISPAM_INI = """
[filters]
chain = helo, dnsbl, dnsbl_score, spf, dkim, dmarc
[filter:helo]
require_dns = yes
[filter:dnsbl]
ip_lists = bl.test*2
domain_lists = dbl.test
allowlists = wl.test
[filter:dnsbl_score]
type = dnsbl
ip_lists = score.test*3
action = score
[filter:spf]
[filter:dkim]
[filter:dmarc]
quarantine = junk
"""

GREYLIST_INI = """
[filters]
chain = greylist
[filter:greylist]
delay = 2s
"""

_shared = {}


def shared(name):
    """(DNSServer, JdmailServer) for a configuration, started once per process; the
    'antispam' one has a DKIM key for example.org published in the DNS."""
    if name not in _shared:
        dns = DNSServer(RECORDS)
        dns.start()
        atexit.register(dns.stop)
        # SMTP also on ::1: the IPv6 tests connect there (IPV6_SMTP_PORT)
        overrides = {"dns": {"servers": dns.address},
                     "smtp": {"listen": r"tcp:0:interface=127.0.0.1, tcp6:0:interface=\:\:1"}}
        if name == "antispam":
            # a second address of ours, only listened on: the HELO check must learn it
            overrides["pop3"] = {"listen": "tcp:0:interface=127.0.0.8"}
            # where mail to example.net goes: a plain jdmail, as the MX of example.net
            receiver = JdmailServer()
            receiver.write_ini()
            receiver.ctl("domain", "add", "example.net")
            receiver.ctl("user", "add", FRIEND, "--password", "pw")
            receiver.start()
            atexit.register(receiver.stop)
            overrides["queue"] = {"smtp_port": str(receiver.ports["smtp"]), "scan_interval": "100ms"}
        server = JdmailServer(overrides=overrides,
                              extra_ini=ANTISPAM_INI if name == "antispam" else GREYLIST_INI)
        server.receiver = receiver if name == "antispam" else None
        server.write_ini()
        server.ctl("domain", "add", "example.org")
        server.ctl("user", "add", BOB, "--password", PASSWORD)
        if name == "antispam":
            record = server.ctl("dkim", "genkey", "example.org", "--selector", "s1", "--bits", "1024").stdout
            server.dkim_record = record
            text = "".join(re.findall(r'"([^"]*)"', record))
            dns.update(merge(RECORDS, {dkim_name("s1", "example.org"): {"TXT": [text]}}))
        server.start()
        atexit.register(server.stop)
        _shared[name] = (dns, server)
    return _shared[name]


def ipv6_port(server):
    """The port jdmail's SMTP listener on ::1 was given."""
    import json
    with open(os.path.join(server.datadir, "run", "listening.json")) as f:
        [where] = [w for w in json.load(f)["smtp"] if w.startswith("::1:")]
    return int(where.rsplit(":", 1)[1])


def message(tok, sender="a@pass.test", subject="antispam test"):
    return (f"From: <{sender}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
            f"Date: Sat, 21 Nov 2026 23:00:00 +0000\r\nMessage-ID: <{tok}@test>\r\n\r\n"
            f"Hello {tok}\r\n").encode()


class AntispamCase(TestCase):
    config = "antispam"

    def setUp(self):
        self.dns, self.server = shared(self.config)

    def client(self, source="127.0.0.1", helo=HELO, port="smtp"):
        if source == "::1":
            c = smtplib.SMTP("::1", ipv6_port(self.server), timeout=15, source_address=("::1", 0))
        else:
            c = smtplib.SMTP("127.0.0.1", self.server.ports[port], timeout=15, source_address=(source, 0))
        self.addCleanup(c.close)
        c.ehlo(helo)
        return c

    def rcpt(self, c, sender, rcpt=BOB):
        self.assertEqual(c.mail(sender)[0], 250)
        return c.rcpt(rcpt)

    def stored(self, tok):
        return wait_for(lambda: files_with(self.server, tok))

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def header(self, data, name):
        import email
        import email.policy
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        return [" ".join(str(v).split()) for v in msg.get_all(name, [])]


class DNSBLTests(AntispamCase):

    def test_listed_client_refused_naming_the_list(self):
        code, text = self.rcpt(self.client("127.0.0.9"), "a@pass.test")
        self.assertEqual((code, text), (554, b"5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test"))
        self.assertIn("127.0.0.9 listed by bl.test (127.0.0.2): spam trap hits", self.server.read_log())

    def test_listed_client_refused_over_swaks(self):
        out = subprocess.run(["swaks", "--server", f"127.0.0.1:{self.server.ports['smtp']}",
                              "--local-interface", "127.0.0.9", "--helo", HELO, "--from", "a@pass.test",
                              "--to", BOB, "--timeout", "15"], capture_output=True, text=True, timeout=60)
        self.assertIn("<** 554 5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test", out.stdout)

    def test_ipv6_client_looked_up_by_nibbles(self):
        """RFC 5782 2.4: 1.0.0.0...0.0.bl.test (32 nibbles) lists ::1."""
        code, text = self.rcpt(self.client("::1"), "a@pass.test")
        self.assertEqual((code, text), (554, b"5.7.1 Service unavailable; client [::1] blocked using bl.test"))
        self.assertIn("::1 listed by bl.test (127.0.0.2): IPv6 spam source", self.server.read_log())

    def test_allowlisted_client_passes(self):
        tok = token()
        c = self.client("127.0.0.3")
        self.assertEqual(c.sendmail("a@pass.test", [BOB], message(tok)), {})
        self.assertEqual(len(self.stored(tok)), 1)
        self.assertIn("allowlisted by wl.test", self.server.read_log())

    def test_listed_sender_domain_refused(self):
        code, text = self.rcpt(self.client(), "a@spammy.test")
        self.assertEqual((code, text), (554, b"5.7.1 Service unavailable; domain spammy.test blocked using dbl.test"))


    def test_score_action_adds_to_the_spam_score(self):
        tok = token()
        self.assertEqual(self.client("127.0.0.5").sendmail("a@pass.test", [BOB], message(tok)), {})
        [path] = self.stored(tok)
        data = self.read(path)
        self.assertEqual(self.header(data, "X-Spam-Score"), ["3.0"])
        self.assertIn("tests=DNSBL_SCORE_TEST", self.header(data, "X-Spam-Status")[0])


class HeloTests(AntispamCase):

    def test_non_fqdn_refused_at_rcpt(self):
        c = self.client(helo="localhost")
        self.assertEqual(self.rcpt(c, "a@pass.test"),
                         (501, b"5.5.2 Helo command rejected: need fully-qualified hostname"))

    def test_claiming_to_be_us_refused(self):
        c = self.client(helo="mail.test")
        self.assertEqual(self.rcpt(c, "a@pass.test"), (550, b"5.7.1 Helo command rejected: you are not me"))

    def test_our_address_literals_refused(self):
        """[127.0.0.1] is where the client connected; 127.0.0.8 (POP3) and ::1 (SMTP) are
        listened on too."""
        for helo in ("[127.0.0.1]", "[127.0.0.8]", "[IPv6:::1]", "MAIL.TEST."):
            c = self.client(helo=helo)
            self.assertEqual(self.rcpt(c, "a@pass.test"), (550, b"5.7.1 Helo command rejected: you are not me"),
                             helo)
        self.assertIn("helo '[127.0.0.8]' claims to be this server", self.server.read_log())

    def test_another_address_literal_passes(self):
        tok = token()
        c = self.client(helo="[127.0.0.50]")
        self.assertEqual(c.sendmail("a@pass.test", [BOB], message(tok)), {})
        self.assertEqual(len(self.stored(tok)), 1)

    def test_unknown_name_refused(self):
        c = self.client(helo="nowhere.example.test")
        self.assertEqual(self.rcpt(c, "a@pass.test"), (550, b"5.7.1 Helo command rejected: host name not found"))

    def test_authenticated_laptop_spared(self):
        tok = token()
        c = self.client(helo="mylaptop", port="submission")
        c.starttls(context=unverified_context())
        c.ehlo("mylaptop")
        c.login(BOB, PASSWORD)
        self.assertEqual(c.sendmail(BOB, [BOB], message(tok, sender=BOB)), {})
        self.assertEqual(len(self.stored(tok)), 1)


class SPFTests(AntispamCase):

    def test_fail_refused_with_5_7_23(self):
        code, text = self.rcpt(self.client(), "a@fail.test")
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.7.23 "), text)

    def test_pass_recorded(self):
        tok = token()
        self.assertEqual(self.client().sendmail("a@pass.test", [BOB], message(tok)), {})
        [path] = self.stored(tok)
        data = self.read(path)
        [ar] = self.header(data, "Authentication-Results")
        self.assertTrue(ar.startswith("mail.test; "), ar)
        self.assertIn("spf=pass smtp.mailfrom=a@pass.test", ar)
        self.assertIn("dmarc=pass", ar)
        self.assertTrue(self.header(data, "Received-SPF")[0].startswith("pass (mail.test: domain of a@pass.test"))

    def test_softfail_tagged(self):
        tok = token()
        self.assertEqual(self.client().sendmail("a@soft.test", [BOB], message(tok, sender="a@soft.test")), {})
        [path] = self.stored(tok)
        data = self.read(path)
        self.assertIn("spf=softfail", self.header(data, "Authentication-Results")[0])
        self.assertIn("SPF_SOFTFAIL", self.header(data, "X-Spam-Status")[0])


class DKIMTests(AntispamCase):

    def submit(self, tok):
        c = self.client(port="submission")
        c.starttls(context=unverified_context())
        c.ehlo(HELO)
        c.login(BOB, PASSWORD)
        self.assertEqual(c.sendmail(BOB, [BOB], message(tok, sender=BOB)), {})
        [path] = self.stored(tok)
        return self.read(path)

    def test_genkey_record_published(self):
        self.assertTrue(self.server.dkim_record.startswith('s1._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p='))

    def test_submitted_mail_signed_and_verifies_with_dkimpy(self):
        import dkim
        from jdmail.filters.dkim import dns_function
        from jdmail.filters.dnsutil import blocking_resolver
        data = self.submit(token())
        signature = self.header(data, "DKIM-Signature")
        self.assertEqual(len(signature), 1)
        self.assertIn("d=example.org;", signature[0])
        self.assertIn("s=s1;", signature[0])
        dnsfunc = dns_function(blocking_resolver([("127.0.0.1", self.dns.port)]))
        self.assertTrue(dkim.verify(data, dnsfunc=dnsfunc))
        self.assertFalse(dkim.verify(data.replace(b"Hello tok", b"Hello TOK"), dnsfunc=dnsfunc))

    def test_queued_mail_leaves_signed(self):
        import dkim
        from jdmail.filters.dkim import dns_function
        from jdmail.filters.dnsutil import blocking_resolver
        tok = token()
        c = self.client(port="submission")
        c.starttls(context=unverified_context())
        c.ehlo(HELO)
        c.login(BOB, PASSWORD)
        data = message(tok, sender=BOB).replace(f"To: <{BOB}>".encode(), f"To: <{FRIEND}>".encode())
        self.assertEqual(c.sendmail(BOB, [FRIEND], data), {})
        [path] = wait_for(lambda: files_with(self.server.receiver, tok), timeout=20)
        arrived = self.read(path)
        self.assertIn("d=example.org;", self.header(arrived, "DKIM-Signature")[0])
        dnsfunc = dns_function(blocking_resolver([("127.0.0.1", self.dns.port)]))
        self.assertTrue(dkim.verify(arrived, dnsfunc=dnsfunc))

    def test_signed_mail_verified_at_the_mx_and_tampered_fails(self):
        """Sent back in through the MX from a@pass.test (SPF passes but is not aligned with
        example.org): only the DKIM signature can satisfy example.org's p=reject."""
        signed = self.submit(token())
        signed = signed[signed.index(b"DKIM-Signature:"):]     # as it leaves: our trace headers off
        tok = token()
        self.assertEqual(self.client().sendmail("a@pass.test", [BOB], b"X-Tok: " + tok.encode() + b"\r\n" + signed),
                         {})
        [path] = self.stored(tok)
        ar = self.header(self.read(path), "Authentication-Results")[0]
        self.assertIn("dkim=pass header.d=example.org header.s=s1", ar)
        self.assertIn("dmarc=pass", ar)
        tampered = signed.replace(b"\r\nHello ", b"\r\nJello ")
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.client().sendmail("a@pass.test", [BOB], tampered)
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertIn("fail d=example.org s=s1 (body hash mismatch)", self.server.read_log())


class DMARCTests(AntispamCase):

    def test_p_reject_refused_after_data(self):
        c = self.client()
        with self.assertRaises(smtplib.SMTPDataError) as e:
            c.sendmail("a@pass.test", [BOB], message(token(), sender="a@reject.test"))
        self.assertEqual(e.exception.smtp_code, 550)
        self.assertTrue(e.exception.smtp_error.startswith(b"5.7.1 "), e.exception.smtp_error)

    def refused(self, author):
        with self.assertRaises(smtplib.SMTPDataError) as e:
            self.client().sendmail("a@pass.test", [BOB], message(token(), sender=author))
        return e.exception.smtp_code, e.exception.smtp_error

    def delivered(self, author):
        """Where mail from ``author`` (envelope a@pass.test: SPF passes, not aligned) went,
        and its Authentication-Results."""
        tok = token()
        self.assertEqual(self.client().sendmail("a@pass.test", [BOB], message(tok, sender=author)), {})
        [path] = self.stored(tok)
        return ("Junk" if os.sep + ".Junk" + os.sep in path else "INBOX",
                self.header(self.read(path), "Authentication-Results")[0])

    def test_pct_0_applies_the_next_weaker_policy(self):
        """RFC 7489 6.6.4: a message not selected by pct= gets quarantine instead of reject."""
        folder, ar = self.delivered("a@sampled.test")
        self.assertEqual(folder, "Junk")
        self.assertIn('dmarc=fail reason="p=reject dis=quarantine" header.from=sampled.test', ar)
        self.assertIn("dmarc=fail from=sampled.test policy=reject disposition=quarantine", self.server.read_log())

    def test_sp_reject_for_a_subdomain_only(self):
        """_dmarc.org.test says p=none; sp=reject: news.org.test (no record of its own) is
        refused under sp=, org.test itself only recorded."""
        self.assertEqual(self.refused("a@news.org.test"),
                         (550, b"5.7.1 Message rejected: it fails the DMARC policy of its From domain"))
        folder, ar = self.delivered("a@org.test")
        self.assertEqual(folder, "INBOX")
        self.assertIn('dmarc=fail reason="p=none dis=none" header.from=org.test', ar)

    def test_sp_none_spares_subdomains_of_a_p_reject_domain(self):
        folder, ar = self.delivered("a@news.parent.test")
        self.assertEqual(folder, "INBOX")
        self.assertIn('dmarc=fail reason="p=none dis=none" header.from=news.parent.test', ar)
        self.assertEqual(self.refused("a@parent.test")[0], 550)

    def test_p_quarantine_goes_to_junk(self):
        tok = token()
        self.assertEqual(self.client().sendmail("a@pass.test", [BOB], message(tok, sender="a@quarantine.test")), {})
        [path] = self.stored(tok)
        self.assertIn(os.sep + ".Junk" + os.sep, path)
        self.assertIn("dmarc=fail", self.header(self.read(path), "Authentication-Results")[0])


class GreylistTests(AntispamCase):
    config = "greylist"

    def test_451_then_accepted_after_the_delay(self):
        tok = token()
        sender = f"{tok}@pass.test"
        code, text = self.rcpt(self.client(), sender)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.7.1 Greylisted"), text)
        self.assertEqual(self.rcpt(self.client(), sender)[0], 451)          # too early
        import sqlite3
        db = sqlite3.connect(os.path.join(self.server.datadir, "directory.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT client, recipient, passed FROM greylist_triplet WHERE sender = ?",
                                    (sender,)).fetchall(), [("127.0.0.0/24", BOB, 0)])
        time.sleep(2.2)
        c = self.client()
        self.assertEqual(c.sendmail(sender, [BOB], message(tok, sender=sender)), {})
        self.assertEqual(len(self.stored(tok)), 1)

    def test_network_auto_allowlisted_after_5_passes(self):
        """127.0.1.0/24 (a /24 no other test uses) passes 5 triplets after the delay; then
        a new triplet from another address of that network is accepted at once."""
        tok = token()
        senders = [f"{tok}-{n}@pass.test" for n in range(5)]
        for sender in senders:
            self.assertEqual(self.rcpt(self.client("127.0.1.5"), sender)[0], 451)
        time.sleep(2.2)
        for sender in senders:
            self.assertEqual(self.rcpt(self.client("127.0.1.5"), sender)[0], 250)
        c = self.client("127.0.1.9")
        self.assertEqual(c.sendmail(f"{tok}-new@pass.test", [BOB], message(tok, sender=f"{tok}-new@pass.test")), {})
        self.assertEqual(len(self.stored(tok)), 1)
        self.assertIn("client 127.0.1.0/24 auto-allowlisted after 5 passes", self.server.read_log())

    def test_ipv6_client_greylisted_by_its_64(self):
        tok = token()
        sender = f"{tok}@pass.test"
        code, text = self.rcpt(self.client("::1"), sender)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.7.1 Greylisted"), text)
        import sqlite3
        db = sqlite3.connect(os.path.join(self.server.datadir, "directory.sqlite"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT client FROM greylist_triplet WHERE sender = ?", (sender,)).fetchall(),
                         [("::/64",)])
        time.sleep(2.2)
        self.assertEqual(self.client("::1").sendmail(sender, [BOB], message(tok, sender=sender)), {})
        self.assertEqual(len(self.stored(tok)), 1)

    def test_authenticated_never_greylisted(self):
        tok = token()
        c = self.client(port="submission")
        c.starttls(context=unverified_context())
        c.ehlo(HELO)
        c.login(BOB, PASSWORD)
        self.assertEqual(c.sendmail(BOB, [BOB], message(tok, sender=BOB)), {})
        self.assertEqual(len(self.stored(tok)), 1)
