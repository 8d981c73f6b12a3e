"""jdmail.directory.service: the generic directory logic over a backend.

The backend here is a small in-memory one made for these tests only: it answers the
primitive lookups from dicts and counts the calls, so the generic logic (expansion,
groups, forwarding, quotas, cache, rehash, unavailability) is tested by itself.
The real backends have their own tests against real databases and servers.
"""

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from jdmail.directory.backend import (DomainRecord, GroupRecord, IDirectoryBackend, IPasswordRehash,
                                      UserRecord)
from jdmail.directory.service import GROUP_REFUSAL, MAX_DEPTH, DirectoryService, LookupCache
from jdmail.errors import DirectoryUnavailable
from jdmail.interfaces import Account, IDirectoryAdmin, IUserDirectory, Resolution
from jdmail.passwords import hash_password, scheme_of, verify_password
from jdmail.services import Services

LOCAL, REMOTE, UNKNOWN, REFUSED = (Resolution.Kind.LOCAL, Resolution.Kind.REMOTE, Resolution.Kind.UNKNOWN,
                                   Resolution.Kind.REFUSED)
_plain = {}


def plain(password):
    return "{PLAIN}" + password


@implementer(IDirectoryBackend)
class MemoryBackend:
    """Primitive lookups from dicts; ``down`` makes every call raise DirectoryUnavailable."""

    name = "memory"

    def __init__(self):
        self.domains, self.users, self.aliases_, self.groups = {}, {}, {}, {}
        self.calls = []
        self.down = False

    def _answer(self, kind, key, value):
        self.calls.append((kind, key))
        if self.down:
            raise DirectoryUnavailable("backend down")
        return succeed(value)

    def domain(self, name):
        return self._answer("domain", name, self.domains.get(name))

    def user(self, address):
        return self._answer("user", address, self.users.get(address))

    def aliases(self, source):
        return self._answer("aliases", source, list(self.aliases_.get(source, ())))

    def group(self, address):
        return self._answer("group", address, self.groups.get(address))

    async def verify(self, record, password):
        self.calls.append(("verify", record.address))
        return verify_password(record.password, password)

    def add_user(self, address, password="pw", **kw):
        self.users[address] = UserRecord(address=address, password=plain(password), **kw)


@implementer(IDirectoryBackend, IPasswordRehash)
class RehashBackend(MemoryBackend):
    def set_password_hash(self, address, password_hash):
        old = self.users[address]
        self.users[address] = UserRecord(**{**old.__dict__, "password": password_hash})
        return succeed(None)


def make(backend=None, clock=None, **settings):
    backend = backend or MemoryBackend()
    backend.domains.update({"example.org": DomainRecord("example.org"),
                            "example.net": DomainRecord("example.net", quota_bytes=5000, quota_messages=7),
                            "example.com": DomainRecord("example.com", alias_of="example.org")})
    for name in ("bob", "carol", "dave"):
        backend.add_user(f"{name}@example.org", name)
    backend.add_user("erin@example.net", "erin")
    services = None
    if clock is not None:
        services = Services(reactor=clock, config=None, hostname="mx.test", datadir="", threadpool=None)
    base = {"cache_ttl": 0, "negative_cache_ttl": 0}
    base.update(settings)
    return DirectoryService(backend, services, settings=base), backend


class ExpansionTests(TestCase):

    def setUp(self):
        self.d, self.b = make()

    async def test_interfaces(self):
        verifyObject(IUserDirectory, self.d)
        self.assertFalse(IDirectoryAdmin.providedBy(self.d))

    async def test_user_remote_unknown(self):
        r = await self.d.resolve("<Bob@Example.ORG.>")
        self.assertEqual((r.kind, r.mailboxes), (LOCAL, ("example.org/bob",)))
        self.assertEqual((await self.d.resolve("x@elsewhere.test")).remote, ("x@elsewhere.test",))
        self.assertEqual((await self.d.resolve("nobody@example.org")).kind, UNKNOWN)
        self.assertEqual((await self.d.resolve("no-domain")).kind, UNKNOWN)

    async def test_alias_keeps_copy_and_loops(self):
        self.b.aliases_["bob@example.org"] = ["bob@example.org", "carol@example.org"]
        r = await self.d.resolve("bob@example.org")
        self.assertEqual(r.mailboxes, ("example.org/bob", "example.org/carol"))
        self.b.aliases_["x@example.org"] = ["y@example.org"]
        self.b.aliases_["y@example.org"] = ["x@example.org"]
        self.assertEqual((await self.d.resolve("x@example.org")).kind, UNKNOWN)

    async def test_depth_limit(self):
        chain = [f"l{i}@example.org" for i in range(MAX_DEPTH + 3)]
        for source, target in zip(chain, chain[1:]):
            self.b.aliases_[source] = [target]
        self.b.aliases_[chain[-1]] = ["bob@example.org"]
        self.assertEqual((await self.d.resolve(chain[0])).kind, UNKNOWN)
        self.assertEqual((await self.d.resolve(chain[5])).mailboxes, ("example.org/bob",))

    async def test_domain_alias_and_catch_all(self):
        r = await self.d.resolve("Carol@example.com")
        self.assertEqual(r.mailboxes, ("example.org/carol",))
        self.assertTrue(await self.d.is_local_domain("EXAMPLE.com"))
        self.b.aliases_["*@example.org"] = ["dave@example.org"]
        self.assertEqual((await self.d.resolve("anyone@example.com")).mailboxes, ("example.org/dave",))
        dave = await self.d.account("dave@example.org")
        self.assertFalse(await self.d.owns(dave, "anyone@example.org"))

    async def test_effective_quota_from_domain(self):
        self.b.add_user("frank@example.net", quota_bytes=100)
        erin = await self.d.account("erin@example.net")
        self.assertEqual((erin.quota_bytes, erin.quota_messages), (5000, 7))
        frank = (await self.d.resolve("frank@example.net")).accounts[0]
        self.assertEqual((frank.quota_bytes, frank.quota_messages), (100, 7))
        bob = await self.d.account("bob@example.org")
        self.assertEqual((bob.quota_bytes, bob.quota_messages), (0, 0))

    async def test_protocols_in_account(self):
        self.b.add_user("pop@example.org", protocols=frozenset({"pop3"}))
        account = await self.d.account("pop@example.org")
        self.assertEqual(account.protocols, frozenset({"pop3"}))
        self.assertEqual((await self.d.account("bob@example.org")).protocols,
                         frozenset({"smtp", "pop3", "imap"}))


class ForwardTests(TestCase):

    def setUp(self):
        self.d, self.b = make()

    async def test_forward_without_copy(self):
        self.b.add_user("away@example.org", forward=("carol@example.org", "Away@Gmail.test"), keep_copy=False)
        r = await self.d.resolve("away@example.org")
        self.assertEqual((r.kind, r.mailboxes, r.remote), (LOCAL, ("example.org/carol",), ("away@gmail.test",)))

    async def test_forward_with_copy(self):
        self.b.add_user("away@example.org", forward=("x@remote.test",), keep_copy=True)
        r = await self.d.resolve("away@example.org")
        self.assertEqual((r.mailboxes, r.remote), (("example.org/away",), ("x@remote.test",)))

    async def test_forward_loop_keeps_the_mail(self):
        self.b.add_user("a@example.org", forward=("b@example.org",), keep_copy=False)
        self.b.add_user("b@example.org", forward=("a@example.org",), keep_copy=False)
        r = await self.d.resolve("a@example.org")
        self.assertEqual(r.kind, LOCAL)
        self.assertEqual(len(r.mailboxes), 1)

    async def test_forward_is_not_ownership(self):
        self.b.add_user("away@example.org", forward=("carol@example.org",), keep_copy=False)
        carol = await self.d.account("carol@example.org")
        self.assertFalse(await self.d.owns(carol, "away@example.org"))
        away = await self.d.account("away@example.org")
        self.assertTrue(await self.d.owns(away, "away@example.org"))


class GroupTests(TestCase):

    def setUp(self):
        self.d, self.b = make()
        self.b.groups["staff@example.org"] = GroupRecord(
            "staff@example.org", members=("bob@example.org", "carol@example.org", "x@remote.test"))
        self.b.groups["board@example.org"] = GroupRecord(
            "board@example.org", members=("bob@example.org", "staff@example.org"), members_only=True,
            senders=("ceo@partner.test", "@trusted.test"))

    async def test_group_expands(self):
        r = await self.d.resolve("Staff@example.org", sender="anyone@else.test")
        self.assertEqual((r.kind, r.mailboxes, r.remote),
                         (LOCAL, ("example.org/bob", "example.org/carol"), ("x@remote.test",)))

    async def test_members_only(self):
        for sender in ("bob@example.org", "BOB@example.org", "ceo@partner.test", "x@trusted.test"):
            r = await self.d.resolve("board@example.org", sender=sender)
            self.assertEqual(r.kind, LOCAL, sender)
            # the nested group is posted to by the group: all its members get it
            self.assertEqual(r.mailboxes, ("example.org/bob", "example.org/carol"))
        for sender in ("carol@example.org", "", "x@partner.test"):
            r = await self.d.resolve("board@example.org", sender=sender)
            self.assertEqual((r.kind, r.text), (REFUSED, GROUP_REFUSAL), sender)
        # no sender given (EXPN, the queue runner): no check
        self.assertEqual((await self.d.resolve("board@example.org")).kind, LOCAL)

    async def test_member_posting_from_an_alternate_address(self):
        # a backend (LDAP: mail/proxyAddresses) that finds bob under another address too
        self.b.users["robert@example.org"] = self.b.users["bob@example.org"]
        r = await self.d.resolve("board@example.org", sender="Robert@example.org")
        self.assertEqual(r.kind, LOCAL)
        r = await self.d.resolve("board@example.org", sender="carol@example.org")
        self.assertEqual(r.kind, REFUSED)

    async def test_restriction_through_an_alias(self):
        self.b.aliases_["bosses@example.org"] = ["board@example.org"]
        r = await self.d.resolve("bosses@example.org", sender="carol@example.org")
        self.assertEqual(r.kind, REFUSED)

    async def test_group_is_not_ownership(self):
        bob = await self.d.account("bob@example.org")
        self.assertFalse(await self.d.owns(bob, "staff@example.org"))


class CacheTests(TestCase):

    def setUp(self):
        self.clock = Clock()
        self.d, self.b = make(clock=self.clock, cache_ttl=30.0, negative_cache_ttl=5.0)

    async def test_positive_ttl(self):
        await self.d.resolve("bob@example.org")
        calls = len(self.b.calls)
        for _ in range(20):
            self.assertEqual((await self.d.resolve("bob@example.org")).mailboxes, ("example.org/bob",))
        self.assertEqual(len(self.b.calls), calls, "a burst of lookups asked the backend again")
        del self.b.users["bob@example.org"]
        self.clock.advance(29)
        self.assertEqual((await self.d.resolve("bob@example.org")).kind, LOCAL)
        self.clock.advance(1)
        self.assertEqual((await self.d.resolve("bob@example.org")).kind, UNKNOWN)

    async def test_negative_ttl(self):
        self.assertEqual((await self.d.resolve("new@example.org")).kind, UNKNOWN)
        self.b.add_user("new@example.org")
        self.clock.advance(4.9)
        self.assertEqual((await self.d.resolve("new@example.org")).kind, UNKNOWN)
        self.clock.advance(0.1)
        self.assertEqual((await self.d.resolve("new@example.org")).kind, LOCAL)

    async def test_zero_disables(self):
        d, b = make(clock=self.clock, cache_ttl=0, negative_cache_ttl=0)
        await d.resolve("bob@example.org")
        calls = len(b.calls)
        await d.resolve("bob@example.org")
        self.assertGreater(len(b.calls), calls)
        self.assertEqual(len(d.cache), 0)

    async def test_login_asks_the_backend(self):
        await self.d.account("bob@example.org")
        self.b.add_user("bob@example.org", "changed")
        self.assertIsNone(await self.d.authenticate("bob@example.org", "bob"))
        self.assertIsNotNone(await self.d.authenticate("bob@example.org", "changed"))

    def test_size_bound(self):
        cache = LookupCache(10, 10, self.clock.seconds, size=3)
        for i in range(5):
            cache.put(i, i, negative=False)
        self.assertEqual(len(cache), 3)
        self.assertIs(cache.get(0), cache.get(1))       # both dropped (the _MISSING marker)
        self.assertEqual(cache.get(4), 4)


class UnavailableTests(TestCase):

    def setUp(self):
        self.clock = Clock()
        self.d, self.b = make(clock=self.clock, cache_ttl=30.0, negative_cache_ttl=5.0)

    async def test_passed_through_and_not_cached(self):
        self.b.down = True
        for call in (self.d.resolve("bob@example.org"), self.d.authenticate("bob@example.org", "bob"),
                     self.d.account("bob@example.org"), self.d.is_local_domain("example.org")):
            with self.assertRaises(DirectoryUnavailable):
                await call
        self.b.down = False
        self.assertEqual((await self.d.resolve("bob@example.org")).kind, LOCAL)


class AuthTests(TestCase):

    async def test_right_wrong_unknown(self):
        d, b = make()
        account = await d.authenticate(" Bob@Example.org", "bob")
        self.assertEqual(account, Account(name="bob@example.org", mailbox="example.org/bob"))
        self.assertIsNone(await d.authenticate("bob@example.org", "nope"))
        b.calls.clear()
        self.assertIsNone(await d.authenticate("ghost@example.org", "x"))
        # the unknown user was not verified by the backend (nothing to verify against) ...
        self.assertNotIn("verify", [c[0] for c in b.calls])

    async def test_unknown_user_costs_a_hash_check(self):
        import jdmail.directory.service as module
        checked = []
        real = module.verify_password
        self.patch(module, "verify_password", lambda stored, pw: checked.append(stored) or real(stored, pw))
        d, _b = make()
        self.assertIsNone(await d.authenticate("ghost@example.org", "x"))
        self.assertEqual([scheme_of(h)[0] for h in checked], ["BLF-CRYPT"])


class RehashTests(TestCase):

    def setUp(self):
        self.b = RehashBackend()
        self.d, _ = make(self.b, rehash=True, password_scheme="argon2id")

    async def test_rehashed_once_after_login(self):
        self.assertTrue(self.b.users["bob@example.org"].password.startswith("{PLAIN}"))
        self.assertIsNotNone(await self.d.authenticate("bob@example.org", "bob"))
        stored = self.b.users["bob@example.org"].password
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$"), stored)
        self.assertTrue(verify_password(stored, "bob"))
        self.assertIsNotNone(await self.d.authenticate("bob@example.org", "bob"))
        self.assertEqual(self.b.users["bob@example.org"].password, stored)

    async def test_not_on_failure_or_when_off(self):
        self.assertIsNone(await self.d.authenticate("bob@example.org", "wrong"))
        self.assertEqual(self.b.users["bob@example.org"].password, plain("bob"))
        d, b = make(RehashBackend(), rehash=False, password_scheme="argon2id")
        self.assertIsNotNone(await d.authenticate("carol@example.org", "carol"))
        self.assertEqual(b.users["carol@example.org"].password, plain("carol"))

    async def test_same_scheme_left_alone(self):
        hashed = hash_password("pw", "ARGON2ID")
        self.b.users["bob@example.org"] = UserRecord("bob@example.org", password=hashed)
        self.assertIsNotNone(await self.d.authenticate("bob@example.org", "pw"))
        self.assertEqual(self.b.users["bob@example.org"].password, hashed)
