"""The contract between the generic directory and its storage backends.

A backend (SQLite, MySQL/MariaDB, LDAP) answers a handful of primitive lookups;
jdmail.directory.service.DirectoryService builds IUserDirectory on top of them:
alias, domain-alias and catch-all expansion, groups, forwarding, caching, password
checks and rehashing. So every backend gets every account feature, and a new backend
is only the primitives below.

Every lookup is a coroutine or returns a Deferred. Addresses handed to a backend are
already normalised (lower-case domain, local part as jdmail.address.normalize gives
it). A backend that cannot answer now (server down, timeout, lost connection) raises
jdmail.errors.DirectoryUnavailable -- never returns None for "I don't know".

A backend's IDirectoryFactory returns ``DirectoryService(backend, services, name)``
(jdmail.directory.service); the shared [directory] keys (cache_ttl,
negative_cache_ttl, cache_size, rehash, password_scheme) are in jdmail.config's
CORE_SCHEMA, so a factory declares only its own options. A backend that also
provides IDirectoryAdmin is managed by jdmailctl (the service passes admin calls
through); an SQL backend gets all of that from jdmail.directory.sql.
"""

from dataclasses import dataclass

from zope.interface import Attribute, Interface

from jdmail.interfaces import PROTOCOLS

__all__ = ["PROTOCOLS", "UserRecord", "DomainRecord", "GroupRecord", "IDirectoryBackend",
           "IPasswordRehash"]


@dataclass(frozen=True)
class DomainRecord:
    """A domain the directory knows: local, or an alias of a local one."""
    name: str
    alias_of: str = ""           # non-empty: mail for x@name goes to x@alias_of
    quota_bytes: int = 0         # default storage quota for this domain's users (0: none)
    quota_messages: int = 0      # default message-count quota (0: none)


@dataclass(frozen=True)
class UserRecord:
    """One mailbox user as the backend stores it."""
    address: str                          # primary address (the login), normalised
    password: str = None                  # '{SCHEME}...' hash; None when the backend checks by bind
    quota_bytes: int = 0                  # 0: the domain default, or no limit
    quota_messages: int = 0               # 0: the domain default, or no limit
    enabled: bool = True
    protocols: frozenset = PROTOCOLS      # subset of PROTOCOLS this user may use
    forward: tuple = ()                   # addresses mail is forwarded to
    keep_copy: bool = True                # with ``forward``: also deliver to this mailbox
    mailbox: str = ""                     # store key; '' means '<domain>/<local>'


@dataclass(frozen=True)
class GroupRecord:
    """A distribution list: one address, many members."""
    address: str
    members: tuple = ()                   # addresses (local or remote; may be other groups/aliases)
    members_only: bool = False            # only members (and ``senders``) may post
    senders: tuple = ()                   # addresses or '@domain' also allowed to post


class IDirectoryBackend(Interface):
    """Primitive lookups a directory backend answers (see the module docstring)."""

    name = Attribute("The component's INI name, for logs")

    def domain(name):
        """The DomainRecord for ``name``, or None when the domain is not ours."""

    def user(address):
        """The UserRecord whose primary or alternate address is ``address``, or None."""

    def aliases(source):
        """Targets of the alias ``source`` ('a@d' or catch-all '*@d'): a list, empty if none."""

    def group(address):
        """The GroupRecord for ``address``, or None."""

    def verify(record, password):
        """True when ``password`` (str) is right for ``record``.

        Hash-storing backends check record.password (on a thread pool: bcrypt is slow);
        LDAP binds as the user.
        """


class IPasswordRehash(Interface):
    """Optional: a backend that can store a new hash after a successful login."""

    def set_password_hash(address, password_hash):
        """Replace the stored hash of ``address`` (best effort; errors are logged)."""
