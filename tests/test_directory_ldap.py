"""The LDAP directory backend against a real, private slapd (tests/fixtures/ldap.py):
OpenLDAP and Active Directory presets, search + bind and bind-as-user, attribute
mapping, groups, LDAP injection, StartTLS and ldaps, and the server going away."""

import atexit
import os
import signal
import time

from twisted.internet import reactor
from twisted.trial import unittest

from jdmail.directory.backend import DomainRecord
from jdmail.directory.ldap import (LDAPDirectoryFactory, LDAPUserRecord, escape_dn_value,
                                   fill_filter)
from jdmail.directory.service import DirectoryService
from jdmail.errors import ConfigErrors, DirectoryUnavailable
from jdmail.interfaces import Resolution
from jdmail.services import Services
from tests.e2e import wait_for
from tests.fixtures.ldap import PASSWORDS, SERVICE_DN, SUFFIX, SlapdServer, seed_ldif

FACTORY = LDAPDirectoryFactory()
_shared = []


def shared_slapd():
    """One slapd for the module (trial has no setUpClass); tests only read it."""
    if not _shared:
        server = SlapdServer(seed_ldif())
        server.start()
        atexit.register(server.stop)
        _shared.append(server)
    return _shared[0]


def settings(slapd, **overrides):
    """The factory's defaults for ``slapd`` with the service account, plus overrides."""
    s = {key: option.default for key, option in FACTORY.options.items()}
    s.update(uri=[slapd.uri], base_dn=SUFFIX, domains=["example.org", "example.com"],
             bind_dn=SERVICE_DN, bind_password=PASSWORDS["service"], timeout=5.0)
    s.update(overrides)
    return s


def services():
    return Services(reactor=reactor, config=None, hostname="mail.test", datadir="/nonexistent",
                    threadpool=reactor.getThreadPool())


class LDAPTestCase(unittest.TestCase):

    def setUp(self):
        self.slapd = shared_slapd()

    def backend(self, slapd=None, **overrides):
        backend = FACTORY.backend("directory", settings(slapd or self.slapd, **overrides), services())
        self.addCleanup(backend.close)
        return backend


class OpenLDAPPresetTests(LDAPTestCase):
    """schema = openldap: inetOrgPerson, mail + mailLocalAddress, groupOfNames."""

    async def test_user_by_primary_address(self):
        user = await self.backend().user("bob@example.org")
        self.assertIsInstance(user, LDAPUserRecord)
        self.assertEqual((user.address, user.dn, user.password, user.enabled, user.quota_bytes),
                         ("bob@example.org", f"uid=bob,ou=people,{SUFFIX}", None, True, 0))

    async def test_user_by_alternate_address(self):
        backend = self.backend()
        for address in ("robert@example.org", "bob.builder@example.org"):
            user = await backend.user(address)
            self.assertEqual(user.address, "bob@example.org", address)

    async def test_unknown_user(self):
        backend = self.backend()
        self.assertIsNone(await backend.user("nobody@example.org"))
        self.assertIsNone(await backend.user("bob@example.net"))
        self.assertIsNone(await backend.group("nobody@example.org"))

    async def test_domains_from_the_list(self):
        backend = self.backend(domains=["Example.ORG", "example.com"])
        self.assertEqual((await backend.domain("example.org")).name, "example.org")
        self.assertIsNone(await backend.domain("example.net"))
        self.assertEqual(await backend.aliases("bob@example.org"), [])

    async def test_attribute_mapping(self):
        backend = self.backend(quota_attribute="mailQuota", enabled_attribute="accountStatus",
                               forward_attribute="mailForwardingAddress",
                               protocols_attribute="enabledService")
        bob = await backend.user("bob@example.org")
        self.assertEqual((bob.quota_bytes, bob.enabled, bob.forward, bob.protocols),
                         (10485760, True, (), frozenset({"smtp", "pop3", "imap"})))
        alice = await backend.user("alice@example.org")
        self.assertTrue(alice.enabled)
        dave = await backend.user("dave@example.org")
        self.assertEqual((dave.enabled, dave.forward, dave.keep_copy, dave.protocols),
                         (False, ("alice@example.org",), True, frozenset({"imap"})))
        backend = self.backend(forward_attribute="mailForwardingAddress", forward_keep_copy=False)
        dave = await backend.user("dave@example.org")
        self.assertEqual((dave.forward, dave.keep_copy), (("alice@example.org",), False))

    async def test_group_members_from_member_dns(self):
        group = await self.backend().group("team@example.org")
        # uid=nomail has no address: skipped
        self.assertEqual((group.address, group.members), ("team@example.org",
                                                         ("bob@example.org", "alice@example.org")))

    async def test_group_members_only(self):
        backend = self.backend(group_members_only=True, group_senders_attribute="description")
        group = await backend.group("team@example.org")
        self.assertTrue(group.members_only)
        self.assertEqual(set(group.senders), {"robert@example.org", "bob.builder@example.org",
                                              "@partner.example"})
        directory = DirectoryService(backend, services(), settings={"cache_ttl": 0, "negative_cache_ttl": 0})
        for sender in ("alice@example.org", "Robert@example.org", "anyone@partner.example"):
            resolution = await directory.resolve("team@example.org", sender=sender)
            self.assertEqual((resolution.kind, sorted(resolution.mailboxes)),
                             (Resolution.Kind.LOCAL, ["example.org/alice", "example.org/bob"]), sender)
        for sender in ("eve@remote.test", "", "team@example.org"):
            resolution = await directory.resolve("team@example.org", sender=sender)
            self.assertEqual(resolution.kind, Resolution.Kind.REFUSED, sender)
        open_group = await self.backend().group("team@example.org")
        self.assertEqual((open_group.members_only, open_group.senders), (False, ()))

    async def test_no_groups_when_group_filter_is_empty(self):
        self.assertIsNone(await self.backend(group_filter="").group("team@example.org"))

    async def test_search_and_bind(self):
        backend = self.backend()
        bob = await backend.user("robert@example.org")
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))
        self.assertFalse(await backend.verify(bob, "wrong"))
        self.assertFalse(await backend.verify(bob, ""))          # would be an unauthenticated bind
        self.assertFalse(await backend.verify(bob, PASSWORDS["alice"]))
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))   # the pooled connection rebinds

    async def test_bind_as_user_with_a_dn_template(self):
        backend = self.backend(auth="bind", user_dn_template=f"uid={{local}},ou=people,{SUFFIX}")
        bob = await backend.user("robert@example.org")      # the template takes the primary address
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))
        self.assertFalse(await backend.verify(bob, PASSWORDS["alice"]))
        # the template, not the DN the search found, is what is bound as
        fake = LDAPUserRecord(address="alice@example.org", dn=f"uid=bob,ou=people,{SUFFIX}")
        self.assertTrue(await backend.verify(fake, PASSWORDS["alice"]))
        self.assertFalse(await backend.verify(fake, PASSWORDS["bob"]))

    async def test_anonymous_lookups_refused_are_unavailable(self):
        # this slapd lets anonymous clients bind only: a configuration to fix, not "no such user"
        with self.assertRaises(DirectoryUnavailable) as cm:
            await self.backend(bind_dn="", bind_password="").user("bob@example.org")
        self.assertIn("insufficientAccessRights", str(cm.exception))

    async def test_wrong_service_password_is_unavailable(self):
        backend = self.backend(bind_password="wrong")
        with self.assertRaises(DirectoryUnavailable) as cm:
            await backend.user("bob@example.org")
        self.assertIn("invalidCredentials", str(cm.exception))

    async def test_bind_password_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORDS["service"] + "\n")
        backend = self.backend(bind_password="", bind_password_file=path)
        self.assertEqual((await backend.user("bob@example.org")).address, "bob@example.org")


class PoolTests(LDAPTestCase):

    async def test_concurrent_lookups_share_a_few_connections(self):
        from twisted.internet.defer import Deferred, gatherResults
        backend = self.backend(pool_size=2)
        connections = backend._conns
        opened = []
        real_open = connections._open

        def counting_open(user, password):
            conn = real_open(user, password)
            opened.append(conn)
            return conn
        connections._open = counting_open
        for _ in range(2):
            users = await gatherResults([Deferred.fromCoroutine(backend.user(a)) for a in
                                         ("bob@example.org", "alice@example.org", "robert@example.org") * 4])
            self.assertEqual({u.address for u in users}, {"bob@example.org", "alice@example.org"})
        self.assertIn(len(opened), (1, 2))          # 24 lookups, 10 threads, at most pool_size connections
        bob = users[0]
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))
        self.assertLessEqual(len(opened), 3)        # a login binds on a connection of its own kind


class PagingTests(LDAPTestCase):
    """The fixture answers unpaged searches with 2 entries at most (AD: 1,000)."""

    def test_paged_search_gets_every_entry(self):
        from jdmail.directory.ldappool import LDAPConnections
        pool = LDAPConnections([self.slapd.uri], SERVICE_DN, PASSWORDS["service"], page_size=2)
        self.addCleanup(pool.close)
        people = "(objectClass=inetOrgPerson)"
        self.assertEqual(len(pool.search(SUFFIX, people, ["mail"])), 2)         # cut at the limit
        dns = sorted(dn for dn, _ in pool.search(SUFFIX, people, ["mail"], paged=True))
        self.assertEqual(dns, sorted(f"uid={u},ou=people,{SUFFIX}"
                                     for u in ("bob", "alice", "dave", "admin", "nomail")))
        pool.page_size = 500
        self.assertEqual(sorted(dn for dn, _ in pool.search(SUFFIX, people, ["mail"], paged=True)), dns)


class AliasTests(LDAPTestCase):
    """nisMailAlias entries (alias_filter / alias_target_attribute), the catch-all
    '*@domain' entry and domain_aliases, at the backend and through DirectoryService."""

    def backend(self, **overrides):
        overrides.setdefault("domains", ["example.org", "example.com", "example.net"])
        return super().backend(**overrides)

    def directory(self, **overrides):
        return DirectoryService(self.backend(**overrides), services(),
                                settings={"cache_ttl": 0, "negative_cache_ttl": 0})

    async def test_alias_to_a_user_and_to_a_remote_address(self):
        backend = self.backend()
        self.assertEqual(await backend.aliases("info@example.org"), ["bob@example.org"])
        self.assertEqual(await backend.aliases("outside@example.org"), ["someone@remote.example"])
        self.assertEqual(await backend.aliases("nobody@example.org"), [])
        directory = self.directory()
        resolution = await directory.resolve("Info@example.org")
        self.assertEqual((resolution.kind, resolution.mailboxes, resolution.remote),
                         (Resolution.Kind.LOCAL, ("example.org/bob",), ()))
        resolution = await directory.resolve("outside@example.org")
        self.assertEqual((resolution.kind, resolution.mailboxes, resolution.remote),
                         (Resolution.Kind.LOCAL, (), ("someone@remote.example",)))

    async def test_catch_all(self):
        backend = self.backend()
        self.assertEqual(await backend.aliases("*@example.net"), ["alice@example.org"])
        self.assertEqual(await backend.aliases("*@example.org"), [])    # no catch-all there
        directory = self.directory()
        resolution = await directory.resolve("anything@example.net")
        self.assertEqual((resolution.kind, resolution.mailboxes),
                         (Resolution.Kind.LOCAL, ("example.org/alice",)))
        resolution = await directory.resolve("anything@example.org")
        self.assertEqual(resolution.kind, Resolution.Kind.UNKNOWN)

    async def test_empty_alias_filter_disables_aliases(self):
        backend = self.backend(alias_filter="")
        self.assertEqual(await backend.aliases("info@example.org"), [])
        self.assertEqual(await backend.aliases("*@example.net"), [])
        resolution = await self.directory(alias_filter="").resolve("info@example.org")
        self.assertEqual(resolution.kind, Resolution.Kind.UNKNOWN)

    async def test_aliases_of_domains_not_served_are_not_looked_up(self):
        self.assertEqual(await self.backend(domains=["example.org"]).aliases("*@example.net"), [])

    async def test_domain_alias(self):
        backend = self.backend(domain_aliases=["Alias.Example = example.org"])
        self.assertEqual(await backend.domain("alias.example"), DomainRecord("alias.example",
                                                                             alias_of="example.org"))
        self.assertEqual(await backend.domain("example.org"), DomainRecord("example.org"))
        directory = self.directory(domain_aliases=["alias.example=example.org"])
        for address, mailbox in (("bob@alias.example", "example.org/bob"),
                                 ("robert@alias.example", "example.org/bob"),
                                 ("info@alias.example", "example.org/bob")):
            resolution = await directory.resolve(address)
            self.assertEqual((resolution.kind, resolution.mailboxes),
                             (Resolution.Kind.LOCAL, (mailbox,)), address)
        self.assertEqual((await directory.resolve("nobody@alias.example")).kind, Resolution.Kind.UNKNOWN)
        self.assertTrue(await directory.is_local_domain("ALIAS.example"))

    async def test_no_injection_in_alias_lookups(self):
        backend = self.backend()
        # unescaped, "*@example.org" would be a substring filter matching info@ and outside@
        for text in INJECTIONS + ["info*@example.org", "*nfo@example.org", "*)(cn=info@example.org"]:
            self.assertEqual(await backend.aliases(text), [], text)


class ActiveDirectoryPresetTests(LDAPTestCase):
    """schema = activedirectory against the stand-in AD schema."""

    def backend(self, **overrides):
        overrides.setdefault("schema", "activedirectory")
        overrides.setdefault("base_dn", f"ou=ad,{SUFFIX}")
        overrides.setdefault("domains", ["example.com"])
        return super().backend(**overrides)

    async def test_primary_is_the_SMTP_proxy_address(self):
        backend = self.backend()
        for address in ("carol@corp.example.com", "carol@example.com", "carol.jones@example.com",
                        "CAROL.JONES@example.com"):
            user = await backend.user(address)
            self.assertEqual((user.address, user.dn, user.enabled),
                             ("carol.jones@example.com", f"cn=Carol Jones,ou=ad,{SUFFIX}", True), address)

    async def test_other_proxy_types_are_not_addresses(self):
        backend = self.backend()
        self.assertIsNone(await backend.user("/o=Example/ou=Exchange/cn=Recipients/cn=carol"))
        self.assertIsNone(await backend.user("sip:carol@example.com"))

    async def test_no_mail_attribute_but_a_proxy_address(self):
        self.assertEqual((await self.backend().user("frank@example.com")).address, "frank@example.com")

    async def test_account_disabled_bit(self):
        backend = self.backend()
        self.assertFalse((await backend.user("erin@example.com")).enabled)       # 514 = 512 | 2
        self.assertTrue((await backend.user("frank@example.com")).enabled)       # 512
        self.assertTrue((await backend.user("carol@example.com")).enabled)       # 66048

    async def test_group_members_from_memberof(self):
        group = await self.backend().group("sales@example.com")
        self.assertEqual(sorted(group.members), ["carol.jones@example.com", "erin@example.com",
                                                 "frank@example.com"])

    async def test_group_members_from_member_when_memberof_is_off(self):
        group = await self.backend(member_of_attribute="").group("sales@example.com")
        self.assertEqual(group.members, ("carol.jones@example.com", "erin@example.com",
                                         "frank@example.com"))

    async def test_search_and_bind_with_the_upn(self):
        backend = self.backend()
        carol = await backend.user("carol@corp.example.com")
        self.assertTrue(await backend.verify(carol, PASSWORDS["carol"]))
        self.assertFalse(await backend.verify(carol, PASSWORDS["frank"]))

    async def test_samaccountname_login_by_override(self):
        backend = self.backend(user_filter="(&(objectClass=user)(|(userPrincipalName={address})"
                                           "(sAMAccountName={address})(proxyAddresses=smtp:{address})))")
        carol = await backend.user("carol")
        self.assertEqual(carol.address, "carol.jones@example.com")
        self.assertTrue(await backend.verify(carol, PASSWORDS["carol"]))
        self.assertIsNone(await backend.user("car*"))

    async def test_openldap_users_are_not_ad_users(self):
        self.assertIsNone(await self.backend(base_dn=SUFFIX).user("bob@example.org"))


INJECTIONS = [
    "*", "*@example.org", "b*@example.org", ")(uid=*", "bob@example.org)(|(mail=*",
    "admin*)(|(mail=*", "admin*)(|(mail=*@example.org", "*)(objectClass=*))(|(mail=*@example.org",
    "\\2a", "\\2a@example.org", "bob\x00@example.org", "bob@example.org\x00", "\x00",
    "(mail=*)", "bob@example.org)", "*)(userPassword=*", "uid=bob,ou=people," + SUFFIX,
]


class InjectionTests(LDAPTestCase):
    """User input in filters and DNs is escaped: it never matches more than itself."""

    def test_fill_filter_escapes(self):
        self.assertEqual(fill_filter("(&(mail={address})(uid={local})(o={domain}))", "a*)(x@d\\2a\x00"),
                         "(&(mail=a\\2a\\29\\28x@d\\5c2a\\00)(uid=a\\2a\\29\\28x)(o=d\\5c2a\\00))")
        # a value holding a placeholder is not filled again
        self.assertEqual(fill_filter("(|(mail={address})(uid={local}))", "{local}@x"),
                         "(|(mail={local}@x)(uid={local}))")

    def test_escape_dn_value(self):
        self.assertEqual(escape_dn_value('a,b+c"d\\e<f>g;h=i'), 'a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h\\=i')
        self.assertEqual(escape_dn_value(" #x\x00y "), "\\ #x\\00y\\ ")
        self.assertEqual(escape_dn_value("#x"), "\\#x")

    async def test_no_injection_finds_a_user_or_group(self):
        for schema, base in (("openldap", SUFFIX), ("activedirectory", f"ou=ad,{SUFFIX}")):
            backend = self.backend(schema=schema, base_dn=base)
            for text in INJECTIONS:
                self.assertIsNone(await backend.user(text), (schema, text))
                self.assertIsNone(await backend.group(text), (schema, text))

    async def test_wildcards_are_literal(self):
        # unescaped, "*@example.org" would match every user: prove there are several
        backend = self.backend(user_filter="(&(objectClass=inetOrgPerson)(mail={local}@example.org))")
        self.assertIsNone(await backend.user("*@example.org"))
        self.assertEqual((await backend.user("alice@example.org")).address, "alice@example.org")

    async def test_bind_template_escapes_the_address(self):
        backend = self.backend(auth="bind", user_dn_template=f"uid={{local}},ou=people,{SUFFIX}")
        # an address from the directory that would change the DN if not escaped
        evil = LDAPUserRecord(address=f"bob,ou=people,{SUFFIX}@example.org")
        self.assertFalse(await backend.verify(evil, PASSWORDS["bob"]))
        self.assertTrue(await backend.verify(LDAPUserRecord(address="bob@example.org"), PASSWORDS["bob"]))


class TLSTests(LDAPTestCase):
    """ldaps:// and StartTLS, with the test CA; ou=tls entries are readable over TLS only."""

    async def test_plain_connection_cannot_read_tls_only_entries(self):
        self.assertIsNone(await self.backend().user("tina@example.org"))

    async def test_ldaps(self):
        backend = self.backend(uri=[self.slapd.ldaps_uri], ca_file=self.slapd.ca_file)
        tina = await backend.user("tina@example.org")
        self.assertEqual(tina.dn, f"uid=tina,ou=tls,{SUFFIX}")
        self.assertTrue(await backend.verify(tina, PASSWORDS["tina"]))

    async def test_starttls(self):
        backend = self.backend(start_tls=True, ca_file=self.slapd.ca_file)
        tina = await backend.user("tina@example.org")
        self.assertEqual(tina.dn, f"uid=tina,ou=tls,{SUFFIX}")
        self.assertTrue(await backend.verify(tina, PASSWORDS["tina"]))

    async def test_untrusted_certificate_is_refused(self):
        for overrides in ({"uri": [self.slapd.ldaps_uri]}, {"start_tls": True}):
            backend = self.backend(**overrides)          # the system CAs do not know the test CA
            with self.assertRaises(DirectoryUnavailable):
                await backend.user("bob@example.org")

    async def test_wrong_name_is_refused(self):
        uri = self.slapd.ldaps_uri.replace("127.0.0.1", "127.0.0.2")    # not in the certificate
        backend = self.backend(uri=[uri], ca_file=self.slapd.ca_file)
        with self.assertRaises(DirectoryUnavailable):
            await backend.user("bob@example.org")

    async def test_verification_off(self):
        backend = self.backend(uri=[self.slapd.ldaps_uri], tls_verify=False)
        self.assertEqual((await backend.user("tina@example.org")).address, "tina@example.org")


class UnavailableTests(unittest.TestCase):
    """A slapd of its own, killed, stopped and restarted."""

    def setUp(self):
        self.slapd = SlapdServer(seed_ldif())
        self.addCleanup(self.slapd.stop)
        self.slapd.start()

    def backend(self, **overrides):
        backend = FACTORY.backend("directory", settings(self.slapd, **overrides), services())
        self.addCleanup(backend.close)
        return backend

    async def test_killed_then_restarted(self):
        backend = self.backend(uri=["ldap://127.0.0.1:1", self.slapd.uri])   # the first one is refused
        bob = await backend.user("bob@example.org")
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))
        self.slapd.kill()
        with self.assertRaises(DirectoryUnavailable):
            await backend.user("bob@example.org")
        with self.assertRaises(DirectoryUnavailable):
            await backend.group("team@example.org")
        with self.assertRaises(DirectoryUnavailable):
            await backend.verify(bob, PASSWORDS["bob"])
        self.slapd.start()
        self.assertEqual((await backend.user("bob@example.org")).address, "bob@example.org")
        self.assertTrue(await backend.verify(bob, PASSWORDS["bob"]))
        self.assertFalse(await backend.verify(bob, "wrong"))

    async def test_hung_server_times_out(self):
        backend = self.backend(timeout=1.0)
        self.assertIsNotNone(await backend.user("bob@example.org"))
        os.kill(self.slapd.proc.pid, signal.SIGSTOP)
        self.assertTrue(wait_for(lambda: _state(self.slapd.proc.pid) == "T"), "slapd did not stop")
        try:
            start = time.monotonic()
            with self.assertRaises(DirectoryUnavailable):
                await backend.user("alice@example.org")
        finally:
            os.kill(self.slapd.proc.pid, signal.SIGCONT)
        self.assertLess(time.monotonic() - start, 30)      # bounded, not forever
        self.assertEqual((await backend.user("alice@example.org")).address, "alice@example.org")


def _state(pid):
    """The process state letter from /proc (T: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class SettingsTests(unittest.TestCase):
    """Presets, overrides and the one-line errors for bad values."""

    def base(self, **overrides):
        s = {key: option.default for key, option in FACTORY.options.items()}
        s.update(uri=["ldap://127.0.0.1"], base_dn=SUFFIX, domains=["example.org"])
        s.update(overrides)
        return s

    def errors(self, **overrides):
        with self.assertRaises(ConfigErrors) as cm:
            FACTORY.settings_for(self.base(**overrides), ("/etc/jdmail.ini", "directory"))
        return [str(e) for e in cm.exception.errors]

    def test_presets_and_overrides(self):
        s = FACTORY.settings_for(self.base(schema="activedirectory", enabled_attribute="accountStatus",
                                           enabled_format="boolean", quota_attribute=""))
        self.assertEqual((s["enabled_attribute"], s["enabled_format"], s["quota_attribute"],
                          s["alias_attributes"], s["member_of_attribute"]),
                         ("accountStatus", "boolean", "", ["proxyAddresses"], "memberOf"))
        self.assertEqual((s["user_base_dn"], s["group_base_dn"]), (SUFFIX, SUFFIX))
        self.assertEqual((s["alias_filter"], s["alias_target_attribute"], s["alias_base_dn"]), ("", "", SUFFIX))
        s = FACTORY.settings_for(self.base(domain_aliases=["Alias.Example=Example.ORG"]))
        self.assertEqual((s["alias_filter"], s["alias_target_attribute"], s["domain_alias_map"]),
                         ("(&(objectClass=nisMailAlias)(cn={address}))", "rfc822MailMember",
                          {"alias.example": "example.org"}))
        s = FACTORY.settings_for(self.base(alias_attributes=[]))
        self.assertEqual((s["alias_attributes"], s["mail_attribute"]), ([], "mail"))

    def test_bad_values(self):
        self.assertEqual(self.errors(uri=["http://x"]),
                         ["/etc/jdmail.ini: [directory] uri 'http://x': expected ldap://HOST[:PORT] or "
                          "ldaps://HOST[:PORT]"])
        self.assertEqual(self.errors(user_filter="(mail={address}"),
                         ["/etc/jdmail.ini: [directory] user_filter '(mail={address}': not a valid LDAP "
                          "filter (invalid filter)"])
        self.assertEqual(self.errors(group_filter="(mail=x)"),
                         ["/etc/jdmail.ini: [directory] group_filter '(mail=x)': must hold {address} "
                          "(or {local} / {domain})"])
        self.assertEqual(self.errors(auth="bind"),
                         ["/etc/jdmail.ini: [directory] user_dn_template is required with auth = bind "
                          "and must hold {address}, {local} or {domain}"])
        self.assertEqual(self.errors(ca_file="/nonexistent/ca.pem"),
                         ["/etc/jdmail.ini: [directory] ca_file '/nonexistent/ca.pem': cannot read: "
                          "No such file or directory"])
        self.assertEqual(self.errors(alias_filter="(cn=info)"),
                         ["/etc/jdmail.ini: [directory] alias_filter '(cn=info)': must hold {address} "
                          "(or {local} / {domain})"])
        self.assertEqual(self.errors(default_quota_messages=-1),
                         ["/etc/jdmail.ini: [directory] default_quota_messages -1: expected 0 (no limit) "
                          "or more"])
        self.assertEqual(self.errors(alias_target_attribute=""),
                         ["/etc/jdmail.ini: [directory] alias_target_attribute must name an attribute "
                          "when alias_filter is set"])
        self.assertEqual(self.errors(domain_aliases=["alias.example", "x.example=other.example",
                                                     "example.org=example.org"]),
                         ["/etc/jdmail.ini: [directory] domain_aliases 'alias.example': expected "
                          "ALIAS=DOMAIN, e.g. example.net=example.org",
                          "/etc/jdmail.ini: [directory] domain_aliases 'x.example=other.example': "
                          "other.example is not one of domains",
                          "/etc/jdmail.ini: [directory] domain_aliases 'example.org=example.org': "
                          "example.org is already a domain or domain alias"])
