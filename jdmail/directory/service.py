"""DirectoryService: IUserDirectory on top of any IDirectoryBackend.

The backend answers primitive lookups (domain, user, aliases, group, verify); this
module does everything built on them, the same for SQLite, MySQL and LDAP:

* alias, domain-alias and catch-all expansion (loops stop, depth limit MAX_DEPTH,
  "bob -> bob, carol" keeps a copy for bob, a catch-all is not followed for owns());
* groups as distribution lists, optionally closed to non-members (REFUSED when
  resolve() is given a sender that may not post);
* forwarding (UserRecord.forward, keeping a local copy or not; remote targets
  become Resolution.remote, which delivery queues);
* effective quotas (the user's own, else the domain default) and protocols in the
  Account;
* a small TTL cache of lookups ([directory] cache_ttl / negative_cache_ttl; 0 turns
  it off), so a change made with jdmailctl is seen within that time. Logins always
  ask the backend, so a new password or a disabled account counts at once;
* password checks: backend.user() then backend.verify(), a dummy check for unknown
  users so the answer's timing does not reveal them, and an optional rehash to
  [directory] password_scheme after a successful login (backends providing
  IPasswordRehash).

DirectoryUnavailable from the backend passes through untouched (and is never cached).
A factory builds one as ``DirectoryService(backend, services, name)``.
"""

import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from jdmail.address import domain_of, normalize, normalize_domain
from jdmail.directory.backend import IPasswordRehash
from jdmail.interfaces import Account, IDirectoryAdmin, IUserDirectory, Resolution, ResolutionKind
from jdmail.passwords import hash_password, scheme_of, verify_password

__all__ = ["DirectoryService", "LookupCache", "MAX_DEPTH", "DEFAULTS", "mailbox_key"]

MAX_DEPTH = 10           # alias expansion depth limit

# [directory] keys every backend shares (declared in jdmail.config.CORE_SCHEMA).
DEFAULTS = {"cache_ttl": 30.0, "negative_cache_ttl": 5.0, "cache_size": 10000,
            "rehash": False, "password_scheme": "blf-crypt"}

GROUP_REFUSAL = "you may not post to this group"

# Verified when the user is unknown, so a miss costs as much as a wrong password.
_DUMMY_HASH = "{BLF-CRYPT}$2y$10$H2wLNxJL.QGlDG2GASdhSOY9dnk8K2CPIjNw1neH9eRwZ5XMyta96"
_MISSING = object()


def mailbox_key(address):
    """The store key of a normalised address: '<domain>/<local>'."""
    local, _, domain = address.rpartition("@")
    return f"{domain}/{local}"


async def _result(value):
    """The value of a backend call that may be a coroutine, a Deferred or plain."""
    if inspect.isawaitable(value):
        return await value
    return value


class LookupCache:
    """Remembers lookup answers for ``ttl`` seconds (``negative_ttl`` for "nothing there").

    ``clock()`` gives seconds; at most ``size`` entries are kept (the oldest go first)."""

    def __init__(self, ttl, negative_ttl, clock, size=10000):
        self.ttl, self.negative_ttl, self.clock, self.size = ttl, negative_ttl, clock, size
        self._entries = OrderedDict()

    def get(self, key):
        """The cached value, or _MISSING when there is none or it expired."""
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return _MISSING
        return value

    def put(self, key, value, negative):
        ttl = self.negative_ttl if negative else self.ttl
        if ttl <= 0 or self.size <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self.clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key):
        self._entries.pop(key, None)

    def clear(self):
        self._entries.clear()

    def __len__(self):
        return len(self._entries)


@dataclass
class _Expansion:
    """The state of one resolve(): where mail goes so far, and what to follow."""
    sender: object = None           # None: no posting check
    catchall: bool = True
    forwards: bool = True
    groups: bool = True
    seen: set = field(default_factory=set)
    accounts: dict = field(default_factory=dict)     # mailbox -> Account, in order
    remote: dict = field(default_factory=dict)       # address -> None, in order
    group_depth: int = 0
    refused: str = ""


@implementer(IUserDirectory)
class DirectoryService:
    """IUserDirectory over an IDirectoryBackend (see the module docstring).

    When the backend provides IDirectoryAdmin, so does the service: the admin
    operations (jdmailctl) go straight to the backend, bypassing the cache.
    ``settings``: the [directory] keys of DEFAULTS; by default taken from
    ``services.config``, else DEFAULTS.
    """

    log = Logger()

    def __init__(self, backend, services=None, name=None, settings=None):
        self.backend = backend
        self.name = name or getattr(backend, "name", "directory")
        self._services = services
        if settings is None and services is not None and services.config is not None:
            settings = services.config["directory"]
        cfg = dict(DEFAULTS)
        cfg.update({k: v for k, v in (settings or {}).items() if k in DEFAULTS})
        self.settings = cfg
        reactor = getattr(services, "reactor", None)
        clock = reactor.seconds if reactor is not None else time.monotonic
        self.cache = LookupCache(cfg["cache_ttl"], cfg["negative_cache_ttl"], clock, cfg["cache_size"])
        self._scheme = cfg["password_scheme"].upper()
        if IDirectoryAdmin.providedBy(backend):
            alsoProvides(self, IDirectoryAdmin)

    def __getattr__(self, attr):
        # only reached for names the service lacks: admin operations and close()
        backend = self.__dict__.get("backend")
        if backend is not None and (attr == "close" or (
                attr in IDirectoryAdmin.names() and IDirectoryAdmin.providedBy(backend))):
            return getattr(backend, attr)
        raise AttributeError(attr)

    # --- cached primitives ---------------------------------------------------------------

    async def _lookup(self, kind, key):
        cache_key = (kind, key)
        value = self.cache.get(cache_key)
        if value is not _MISSING:
            return value
        value = await _result(getattr(self.backend, kind)(key))
        if kind == "aliases":
            value = tuple(normalize(t) if not t.startswith("@") else t for t in value or ())
        self.cache.put(cache_key, value, negative=not value)
        return value

    def _domain(self, name):
        return self._lookup("domain", name)

    def _user(self, address):
        return self._lookup("user", address)

    def _aliases(self, source):
        return self._lookup("aliases", source)

    def _group(self, address):
        return self._lookup("group", address)

    async def _account(self, user):
        quota_bytes, quota_messages = user.quota_bytes or 0, user.quota_messages or 0
        if not quota_bytes or not quota_messages:
            domain = await self._domain(domain_of(user.address))
            if domain is not None:
                quota_bytes = quota_bytes or domain.quota_bytes or 0
                quota_messages = quota_messages or domain.quota_messages or 0
        return Account(name=user.address, mailbox=user.mailbox or mailbox_key(user.address),
                       quota_bytes=quota_bytes, enabled=bool(user.enabled),
                       quota_messages=quota_messages, protocols=frozenset(user.protocols))

    # --- IUserDirectory -------------------------------------------------------------------

    async def is_local_domain(self, domain):
        return await self._domain(normalize_domain(domain)) is not None

    async def resolve(self, address, sender=None):
        return await self._resolve(address, _Expansion(sender=sender))

    async def _resolve(self, address, state):
        text = address.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1]
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain:
            return Resolution(ResolutionKind.UNKNOWN)
        dom = normalize_domain(domain)
        if await self._domain(dom) is None:
            return Resolution(ResolutionKind.REMOTE, remote=(f"{local}@{dom}",))
        await self._expand(normalize(text), 0, state)
        if state.refused:
            return Resolution(ResolutionKind.REFUSED, text=state.refused)
        if not state.accounts and not state.remote:
            return Resolution(ResolutionKind.UNKNOWN)
        accounts = tuple(state.accounts.values())
        return Resolution(ResolutionKind.LOCAL, mailboxes=tuple(a.mailbox for a in accounts),
                          remote=tuple(state.remote), accounts=accounts)

    async def _expand(self, address, depth, st):
        """Add where mail for the normalised ``address`` goes to ``st``."""
        if address in st.seen or st.refused:
            return
        if depth > MAX_DEPTH:
            self.log.warn("alias expansion deeper than {limit} at {address}; skipped",
                          limit=MAX_DEPTH, address=address)
            return
        st.seen.add(address)
        local, _, dom = address.rpartition("@")
        domain = await self._domain(dom)
        if domain is None:
            st.remote.setdefault(address, None)
            return
        targets = await self._aliases(address)
        if targets:
            for target in targets:
                if target == address:
                    user = await self._user(address)     # "bob -> bob, carol": keep a copy for bob
                    if user is not None:
                        account = await self._account(user)
                        st.accounts.setdefault(account.mailbox, account)
                else:
                    await self._expand(target, depth + 1, st)
            return
        user = await self._user(address)
        if user is not None:
            await self._deliver_user(user, depth, st)
            return
        if st.groups:
            group = await self._group(address)
            if group is not None:
                await self._expand_group(group, depth, st)
                return
        if domain.alias_of:
            await self._expand(f"{local}@{domain.alias_of}", depth + 1, st)
            return
        wildcard = "*@" + dom
        if not st.catchall or wildcard in st.seen:
            return
        st.seen.add(wildcard)
        for target in await self._aliases(wildcard):
            await self._expand(target, depth + 1, st)

    async def _deliver_user(self, user, depth, st):
        account = await self._account(user)
        if not (st.forwards and user.forward):
            st.accounts.setdefault(account.mailbox, account)
            return
        before = (len(st.accounts), len(st.remote))
        if user.keep_copy:
            st.accounts.setdefault(account.mailbox, account)
        for target in user.forward:
            target = normalize(target)
            if target == user.address:
                st.accounts.setdefault(account.mailbox, account)
            else:
                await self._expand(target, depth + 1, st)
        if (len(st.accounts), len(st.remote)) == before and not st.refused:
            # every forward target was seen already (a forwarding loop): never lose the mail
            st.accounts.setdefault(account.mailbox, account)

    async def _expand_group(self, group, depth, st):
        # The restriction applies to the group a message is addressed to (directly or
        # through aliases); groups nested in it are posted to by the group itself.
        if group.members_only and st.sender is not None and st.group_depth == 0 \
                and not await self._may_post(group, st.sender):
            st.refused = GROUP_REFUSAL
            return
        st.group_depth += 1
        try:
            for member in group.members:
                await self._expand(normalize(member), depth + 1, st)
        finally:
            st.group_depth -= 1

    async def _may_post(self, group, sender):
        """may_post, also for a member writing from another of their addresses (one the
        backend maps to the member's primary address, e.g. an LDAP alternate address)."""
        if self.may_post(group, sender):
            return True
        if not sender or await self._domain(domain_of(sender)) is None:
            return False
        user = await self._user(normalize(sender))
        return user is not None and user.address != normalize(sender) and self.may_post(group, user.address)

    @staticmethod
    def may_post(group, sender):
        """True when ``sender`` ('' = null sender) may post to the GroupRecord ``group``."""
        if not group.members_only:
            return True
        if not sender:
            return False
        who = normalize(sender)
        allowed = {normalize(a) if not a.startswith("@") else "@" + normalize_domain(a[1:])
                   for a in tuple(group.members) + tuple(group.senders)}
        return who in allowed or "@" + domain_of(who) in allowed

    async def authenticate(self, username, password):
        name = normalize(username)
        user = await _result(self.backend.user(name))      # a login always asks the backend
        self.cache.put(("user", name), user, negative=user is None)
        if user is None:
            await self._blocking(verify_password, _DUMMY_HASH, password)
            return None
        if not await _result(self.backend.verify(user, password)):
            return None
        if self.settings["rehash"]:
            await self._rehash(user, password)
        return await self._account(user)

    async def _rehash(self, user, password):
        """Store the password hashed with [directory] password_scheme when the stored
        hash uses another scheme (best effort: a failure is logged, the login stands)."""
        if not IPasswordRehash.providedBy(self.backend) or not user.password:
            return
        old, _ = scheme_of(user.password)
        if old == self._scheme:
            return
        try:
            new = await self._blocking(hash_password, password, self._scheme)
            await _result(self.backend.set_password_hash(user.address, new))
        except Exception:
            self.log.failure("directory rehash failed user={user}", user=user.address)
            return
        self.cache.forget(("user", user.address))        # the record holds the old hash
        self.log.info("directory rehash user={user} from={old} to={new}", user=user.address,
                      old=old or "-", new=self._scheme)

    def _blocking(self, f, *args):
        services = self._services
        if services is None or services.threadpool is None or services.reactor is None:
            return _result(f(*args))
        return services.run_blocking(f, *args)

    async def account(self, username):
        user = await self._user(normalize(username))
        return None if user is None else await self._account(user)

    async def owns(self, account, address):
        if normalize(address) == account.name:
            return True
        # A catch-all receives for any unknown address, a group or a forward reaches
        # the account's mailbox: none of them makes the address the account's own.
        state = _Expansion(catchall=False, forwards=False, groups=False)
        resolution = await self._resolve(address, state)
        return account.mailbox in resolution.mailboxes
