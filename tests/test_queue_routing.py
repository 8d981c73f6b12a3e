"""Tests for jdmail.queue.routing: relays, the routing table, trusted networks."""

import configparser
import os
import tempfile

from twisted.trial.unittest import TestCase

from jdmail.errors import ConfigError, ConfigErrors
from jdmail.queue.routing import (
    DIRECT, LOCAL, Relay, Route, RoutingTable, TrustedNetworks, parse_relay, parse_relays,
    parse_route, parse_routing)

HQ = Relay("hq", "smtp.hq.example", 587, "required", "branch", "s3cret")
ISP = Relay("isp", "smtp.isp.example")


class RelayTests(TestCase):
    def test_section_form(self):
        relay = parse_relay("hq", {"host": "smtp.hq.example", "port": "587", "tls": "required",
                                   "username": "branch", "password": "s3cret"})
        self.assertEqual(relay, HQ)
        self.assertNotIn("s3cret", repr(relay))

    def test_defaults(self):
        relay = parse_relay("a", {"host": "relay.example"})
        self.assertEqual((relay.port, relay.tls, relay.username, relay.password, relay.mx_lookup),
                         (25, "starttls", None, None, False))

    def test_implicit_tls_defaults_to_465(self):
        self.assertEqual(parse_relay("a", {"host": "r.example", "tls": "implicit"}).port, 465)
        self.assertEqual(parse_relay("a", {"host": "r.example", "tls": "implicit",
                                           "port": "1465"}).port, 1465)

    def test_password_file(self):
        fd, name = tempfile.mkstemp()
        self.addCleanup(os.unlink, name)
        with os.fdopen(fd, "w") as f:
            f.write("from-file\nignored\n")
        relay = parse_relay("a", {"host": "r.example", "username": "u", "password_file": name})
        self.assertEqual(relay.password, "from-file")

    def test_compact_bracketed(self):
        relay = parse_relay("relayhost", "[smtp.isp.example]:587")
        self.assertEqual((relay.host, relay.port, relay.tls, relay.mx_lookup),
                         ("smtp.isp.example", 587, "starttls", False))

    def test_compact_unbracketed_means_mx_lookup(self):
        relay = parse_relay("relayhost", "isp.example")
        self.assertEqual((relay.host, relay.port, relay.mx_lookup), ("isp.example", 25, True))

    def test_compact_465_is_implicit_and_ipv6(self):
        relay = parse_relay("relayhost", "[2001:db8::1]:465")
        self.assertEqual((relay.host, relay.port, relay.tls), ("2001:db8::1", 465, "implicit"))

    def test_compact_bad(self):
        for text in ("[smtp.isp.example", "host:port", "[a]:70000", "bad host", ""):
            e = self.assertRaises(ConfigError, parse_relay, "relayhost", text, "x.ini")
            self.assertTrue(str(e).startswith("x.ini: [routing] relayhost "), str(e))
            self.assertIn("expected" if text != "[a]:70000" else "65535", str(e))

    def test_section_errors_collected(self):
        errors = []
        relay = parse_relay("hq", {"port": "x", "tls": "maybe", "colour": "red",
                                   "username": "u"}, "x.ini", errors=errors)
        self.assertIsNone(relay)
        lines = sorted(str(e) for e in errors)
        self.assertEqual(lines, sorted([
            "x.ini: [relay:hq] port 'x': expected a whole number",
            "x.ini: [relay:hq] tls 'maybe': expected one of none, starttls, required, implicit",
            "x.ini: [relay:hq] colour is not a relay option; allowed: host, port, tls, "
            "username, password, password_file",
            "x.ini: [relay:hq] host is required: the relay's host name or address",
            "x.ini: [relay:hq] password a username is set but no password; "
            "set password or password_file",
        ]))
        for line in lines:
            self.assertNotIn("\n", line)

    def test_section_raises_first_without_list(self):
        e = self.assertRaises(ConfigError, parse_relay, "hq", {"host": "h.example", "port": "0"})
        self.assertEqual((e.section, e.key), ("relay:hq", "port"))

    def test_password_and_password_file(self):
        e = self.assertRaises(ConfigError, parse_relay, "hq", {
            "host": "h.example", "username": "u", "password": "p", "password_file": "/x"})
        self.assertEqual(e.key, "password_file")

    def test_missing_password_file(self):
        e = self.assertRaises(ConfigError, parse_relay, "hq", {
            "host": "h.example", "username": "u", "password_file": "/nonexistent/secret"})
        self.assertIn("cannot read", str(e))

    def test_parse_relays(self):
        relays = parse_relays({"jdmail": {}, "relay:hq": {"host": "smtp.hq.example"},
                               "relay:b": {"host": "b.example", "tls": "none"}},
                              relayhost="[smtp.isp.example]")
        self.assertEqual(sorted(relays), ["b", "hq", "relayhost"])
        self.assertEqual(relays["b"].tls, "none")

    def test_parse_relays_collects(self):
        e = self.assertRaises(ConfigErrors, parse_relays,
                              {"relay:a": {"host": "bad host"}, "relay:b": {"tls": "x"}},
                              "x.ini", "[oops")
        self.assertEqual(len(e.errors), 4)
        self.assertEqual({x.section for x in e.errors}, {"relay:a", "relay:b", "routing"})


class RouteTests(TestCase):
    relays = {"hq": HQ}

    def test_kinds(self):
        self.assertEqual(parse_route("direct", self.relays), DIRECT)
        self.assertEqual(parse_route("LOCAL", self.relays), LOCAL)
        self.assertEqual(parse_route("relay:hq", self.relays), Route("relay", HQ))
        self.assertEqual(parse_route("reject", self.relays).text,
                         "Mail to this destination is not accepted")
        self.assertEqual(parse_route("reject No mail for you", self.relays),
                         Route("reject", text="No mail for you"))

    def test_bad(self):
        self.assertRaises(ValueError, parse_route, "relay:nope", self.relays)
        self.assertRaises(ValueError, parse_route, "bounce", self.relays)
        self.assertRaises(ValueError, Route, "relay")
        self.assertRaises(ValueError, Route, "direct", HQ)


class RoutingTableTests(TestCase):
    def setUp(self):
        self.relays = {"hq": HQ, "isp": ISP}
        self.table = parse_routing({
            "sender:finance@example.org": "relay:isp",
            "sender:@example.org": "relay:hq",
            "recipient:partner.example": "direct",
            "recipient:*.partner.example": "reject Not here",
            "recipient:*.deep.partner.example": "local",
            "recipient:bad.example": "reject",
            "recipient:internal.example": "local",
            "default": "relay:hq",
        }, self.relays, "x.ini")

    def route(self, sender, recipient):
        return self.table.route(sender, recipient)

    def test_exact_sender_first(self):
        self.assertEqual(self.route("finance@example.org", "a@partner.example"), Route("relay", ISP))

    def test_sender_domain_before_recipient(self):
        self.assertEqual(self.route("bob@example.org", "a@bad.example"), Route("relay", HQ))

    def test_recipient_rules(self):
        self.assertEqual(self.route("x@other.example", "a@partner.example"), DIRECT)
        self.assertEqual(self.route("x@other.example", "a@internal.example"), LOCAL)
        self.assertEqual(self.route("x@other.example", "a@bad.example").kind, "reject")

    def test_recipient_exact_before_wildcard_and_wildcard_excludes_apex(self):
        self.assertEqual(self.route("x@o.example", "a@partner.example"), DIRECT)
        self.assertEqual(self.route("x@o.example", "a@mx.partner.example"),
                         Route("reject", text="Not here"))
        self.assertEqual(self.route("x@o.example", "a@a.b.partner.example").kind, "reject")

    def test_longest_wildcard_suffix_wins(self):
        self.assertEqual(self.route("x@o.example", "a@x.deep.partner.example"), LOCAL)
        # "deep.partner.example" itself is only matched by *.partner.example.
        self.assertEqual(self.route("x@o.example", "a@deep.partner.example").kind, "reject")

    def test_suffix_must_be_a_label_boundary(self):
        self.assertEqual(self.route("x@o.example", "a@notpartner.example"), Route("relay", HQ))

    def test_default(self):
        self.assertEqual(self.route("x@o.example", "a@elsewhere.example"), Route("relay", HQ))

    def test_case_insensitive_and_brackets(self):
        self.assertEqual(self.route("<Finance@Example.ORG>", "A@Elsewhere.example"),
                         Route("relay", ISP))
        self.assertEqual(self.route("x@o.example", "a@PARTNER.Example."), DIRECT)
        table = parse_routing({"Sender:@Example.ORG": "relay:hq"}, self.relays)
        self.assertEqual(table.route("bob@example.org", "a@b.example"), Route("relay", HQ))

    def test_null_sender_matches_only_recipient_rules(self):
        self.assertEqual(self.route("", "a@bad.example").kind, "reject")
        self.assertEqual(self.route("", "a@elsewhere.example"), Route("relay", HQ))
        table = parse_routing({"sender:@example.org": "reject"}, self.relays)
        self.assertEqual(table.route("", "a@example.org"), DIRECT)
        self.assertEqual(table.route("<>", "a@example.org"), DIRECT)

    def test_default_is_direct_or_relayhost(self):
        self.assertEqual(parse_routing({}, {}).default, DIRECT)
        relays = parse_relays({}, relayhost="[smtp.isp.example]:587")
        table = parse_routing({"relayhost": "[smtp.isp.example]:587"}, relays)
        self.assertEqual(table.route("a@b.example", "c@d.example"),
                         Route("relay", relays["relayhost"]))
        table = parse_routing({"relayhost": "[smtp.isp.example]:587", "default": "direct"}, relays)
        self.assertEqual(table.default, DIRECT)

    def test_relays_used(self):
        self.assertEqual(self.table.relays(), {"hq": HQ, "isp": ISP})

    def test_errors_collected_one_line_each(self):
        e = self.assertRaises(ConfigErrors, parse_routing, {
            "sender:finance@example.org": "relay:nope",
            "destination:x.example": "direct",
            "recipient:partner.example": "bounce",
            "recipient:*.": "direct",
            "sender:nobody": "direct",
            "default": "relay:",
            "recipient:fine.example": "local",
        }, self.relays, "etc/jdmail.ini")
        lines = str(e).split("\n")
        self.assertEqual(len(lines), 6)
        self.assertEqual([x.key for x in e.errors], [
            "sender:finance@example.org", "destination:x.example", "recipient:partner.example",
            "recipient:*.", "sender:nobody", "default"])
        for err, line in zip(e.errors, lines):
            self.assertEqual(err.section, "routing")
            self.assertTrue(line.startswith(f"etc/jdmail.ini: [routing] {err.key} "), line)
        self.assertEqual(lines[0], "etc/jdmail.ini: [routing] sender:finance@example.org "
                                   "'relay:nope': no relay named 'nope'; defined relays "
                                   "([relay:NAME] or relayhost): hq, isp")
        self.assertIn("expected direct, local, reject [text] or relay:NAME", lines[2])
        self.assertIn("is not a routing key", lines[1])

    def test_table_direct(self):
        table = RoutingTable([("recipient:a.example", LOCAL)], Route("reject"))
        self.assertEqual(table.route("x@y.example", "u@a.example"), LOCAL)
        self.assertEqual(table.route("x@y.example", "u@b.example").kind, "reject")


class TrustedNetworksTests(TestCase):
    def test_ipv4(self):
        nets = TrustedNetworks("127.0.0.0/8, 192.0.2.0/24,198.51.100.7")
        self.assertTrue(nets.contains("127.0.0.1"))
        self.assertTrue(nets.contains("192.0.2.200"))
        self.assertTrue(nets.contains("198.51.100.7"))
        self.assertFalse(nets.contains("198.51.100.8"))
        self.assertFalse(nets.contains("10.0.0.1"))
        self.assertTrue(nets.contains("::ffff:192.0.2.1"))

    def test_ipv6(self):
        nets = TrustedNetworks(["::1", "2001:db8::/32"])
        self.assertTrue(nets.contains("::1"))
        self.assertTrue(nets.contains("2001:db8:1::5"))
        self.assertFalse(nets.contains("fe80::1%eth0"))
        self.assertFalse(nets.contains("2001:db9::1"))
        self.assertFalse(nets.contains("127.0.0.1"))

    def test_not_an_address_is_not_trusted(self):
        self.assertFalse(TrustedNetworks("0.0.0.0/0").contains("example.org"))

    def test_empty(self):
        self.assertFalse(TrustedNetworks("").contains("127.0.0.1"))

    def test_bad_entries_collected(self):
        e = self.assertRaises(ConfigErrors, TrustedNetworks, "127.0.0.0/8, 300.1.1.1, ::1, x/33",
                              "x.ini")
        self.assertEqual(str(e).split("\n"), [
            "x.ini: [smtp] mynetworks '300.1.1.1': expected an IPv4 or IPv6 address or network, "
            "such as 192.0.2.0/24 or 2001:db8::/32",
            "x.ini: [smtp] mynetworks 'x/33': expected an IPv4 or IPv6 address or network, "
            "such as 192.0.2.0/24 or 2001:db8::/32",
        ])


INI = """
[relay:hq]
host = smtp.hq.example
port = 587
tls = required
username = branch
password = s3cret

[routing]
relayhost = [smtp.isp.example]:587
sender:finance@example.org = relay:relayhost   ; comments allowed
sender:@example.org = relay:hq
recipient:partner.example = direct
recipient:*.partner.example = direct
recipient:bad.example = reject Mail to this domain is not accepted
recipient:internal.example = local
default = relay:hq

[smtp]
mynetworks = 127.0.0.0/8, ::1, 192.0.2.0/24
"""


class IniShapeTests(TestCase):
    """The proposed INI shape, read as config.read_ini reads files but with
    delimiters=("=",), which the colon-bearing routing keys need."""

    def test_proposed_ini(self):
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                           strict=True, empty_lines_in_values=False,
                                           delimiters=("=",))
        parser.optionxform = str
        parser.read_string(INI)
        sections = {name: dict(parser[name]) for name in parser.sections()}
        relays = parse_relays(sections, "jdmail.ini", relayhost=sections["routing"]["relayhost"])
        table = parse_routing(sections["routing"], relays, "jdmail.ini")
        self.assertEqual(table.route("finance@example.org", "x@partner.example").relay.host,
                         "smtp.isp.example")
        self.assertEqual(table.route("bob@example.org", "x@partner.example"), Route("relay", HQ))
        self.assertEqual(table.route("a@b.example", "x@mx.partner.example"), DIRECT)
        self.assertEqual(table.route("a@b.example", "x@bad.example").text,
                         "Mail to this domain is not accepted")
        self.assertEqual(table.route("", "x@internal.example"), LOCAL)
        self.assertEqual(table.route("a@b.example", "x@c.example"), Route("relay", HQ))
        self.assertTrue(TrustedNetworks(sections["smtp"]["mynetworks"]).contains("::1"))
