"""LDAP / Active Directory as jdmail's user directory ([directory] type = ldap).

LDAPBackend answers the IDirectoryBackend primitives from an LDAP server with
ldap3, every call on jdmail's thread pool; jdmail.directory.service builds the
aliases, groups, forwarding, caching and logins on top. Users and groups are
found with filters whose placeholders ({address}, {local}, {domain}) are filled
with the value escaped as RFC 4515 says, so user input can never change a
filter's meaning. Passwords are checked by binding as the user: the DN found by
the search (auth = search) or built from user_dn_template (auth = bind, values
escaped as RFC 4514 says).

Two ready-made attribute sets, overridable key by key: ``schema = openldap``
(inetOrgPerson users, mailLocalAddress alternates, groupOfNames groups) and
``schema = activedirectory`` (userPrincipalName logins, proxyAddresses
``SMTP:``/``smtp:`` addresses, memberOf groups, the userAccountControl
ACCOUNTDISABLE bit). Aliases (and the catch-all ``*@domain``) are entries found
with alias_filter, their targets in alias_target_attribute (openldap: nisMailAlias
/ rfc822MailMember). Domains served are a configured list, domain aliases a
configured ``alias=domain`` list.
"""

import dataclasses
import re

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.address import normalize, normalize_domain
from jdmail.directory.backend import PROTOCOLS, DomainRecord, GroupRecord, IDirectoryBackend, UserRecord
from jdmail.errors import ConfigError, ConfigErrors, DirectoryUnavailable
from jdmail.interfaces import IDirectoryFactory, Option
from jdmail.options import parse_list, parse_size

__all__ = ["LDAPBackend", "LDAPDirectoryFactory", "LDAPUserRecord", "PRESETS",
           "escape_dn_value", "fill_filter"]

ACCOUNTDISABLE = 0x2            # userAccountControl bit (MS-ADTS 2.2.16)

PRESETS = {
    "openldap": {
        "user_filter": "(&(objectClass=inetOrgPerson)(|(mail={address})(mailLocalAddress={address})))",
        "group_filter": "(&(objectClass=groupOfNames)(|(mail={address})(mailLocalAddress={address})))",
        "mail_attribute": "mail",
        "alias_attributes": ["mailLocalAddress"],
        "quota_attribute": "",
        "quota_messages_attribute": "",
        "enabled_attribute": "",
        "enabled_format": "boolean",
        "forward_attribute": "",
        "protocols_attribute": "",
        "member_attribute": "member",
        "member_of_attribute": "",
        "alias_filter": "(&(objectClass=nisMailAlias)(cn={address}))",
        "alias_target_attribute": "rfc822MailMember",
    },
    "activedirectory": {
        "user_filter": "(&(objectClass=user)(|(userPrincipalName={address})"
                       "(proxyAddresses=smtp:{address})(mail={address})))",
        "group_filter": "(&(objectClass=group)(|(mail={address})(proxyAddresses=smtp:{address})))",
        "mail_attribute": "mail",
        "alias_attributes": ["proxyAddresses"],
        "quota_attribute": "",
        "quota_messages_attribute": "",
        "enabled_attribute": "userAccountControl",
        "enabled_format": "accountcontrol",
        "forward_attribute": "",
        "protocols_attribute": "",
        "member_attribute": "member",
        "member_of_attribute": "memberOf",
        "alias_filter": "",            # AD has no alias class: alternates are proxyAddresses
        "alias_target_attribute": "",
    },
}

_PLACEHOLDER = re.compile(r"\{(address|local|domain)\}")
_PROXY = re.compile(r"([A-Za-z0-9-]+):(.*)", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FALSE = frozenset({"false", "no", "0", "off", "disabled", "inactive", "locked"})


def _searchable(text):
    """False for text no address can be: empty, or holding control characters. (slapd
    ends an IA5 assertion value at an escaped NUL, so 'bob@example.org\\00' would find
    bob: such input is never sent.)"""
    return isinstance(text, str) and bool(text.strip()) and not _CONTROL.search(text)


def _escape_filter(value):
    from ldap3.utils.conv import escape_filter_chars
    return escape_filter_chars(value)


def escape_dn_value(value):
    """``value`` escaped for an RFC 4514 attribute value (a DN's RDN)."""
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\{ord(ch):02x}")
        elif (i == 0 and ch in " #") or (i == last and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _fill(template, address, escape):
    local, _, domain = address.rpartition("@")
    values = {"address": address, "local": local if domain else address, "domain": domain}
    return _PLACEHOLDER.sub(lambda m: escape(values[m.group(1)]), template)


def fill_filter(template, address):
    """The filter ``template`` with {address}, {local} and {domain} of ``address``,
    each escaped as RFC 4515 says (``*``, ``(``, ``)``, ``\\`` and NUL as \\XX)."""
    return _fill(template, address, _escape_filter)


@dataclasses.dataclass(frozen=True)
class LDAPUserRecord(UserRecord):
    """A UserRecord that remembers the entry's DN, for the bind that checks a password."""
    dn: str = ""


@implementer(IDirectoryBackend)
class LDAPBackend:
    """IDirectoryBackend over an LDAP server (see the module docstring).

    ``settings`` are the factory's parsed options with the preset applied
    (LDAPDirectoryFactory.settings_for); ``connections`` an LDAPConnections.
    """

    log = Logger()

    def __init__(self, settings, connections, services, name="directory"):
        self.name = name
        self._s = settings
        self._conns = connections
        self._services = services
        self._domains = frozenset(normalize_domain(d) for d in settings["domains"])
        self._domain_aliases = dict(settings.get("domain_alias_map", {}))
        self._all_domains = self._domains | frozenset(self._domain_aliases)
        mapping = [settings["mail_attribute"], *settings["alias_attributes"], settings["quota_attribute"],
                   settings["quota_messages_attribute"],
                   settings["enabled_attribute"], settings["forward_attribute"],
                   settings["protocols_attribute"]]
        self._user_attributes = list(dict.fromkeys(a for a in mapping if a))
        self._address_attributes = list(dict.fromkeys(
            a for a in (settings["mail_attribute"], *settings["alias_attributes"]) if a))

    def _blocking(self, f, *args):
        return self._services.run_blocking(f, *args)

    def close(self):
        """Unbind the pooled connections."""
        self._conns.close()

    # --- IDirectoryBackend ----------------------------------------------------------------

    async def domain(self, name):
        name = normalize_domain(name)
        if name in self._domains:
            return DomainRecord(name, quota_bytes=self._s["default_quota"],
                                quota_messages=self._s["default_quota_messages"])
        if name in self._domain_aliases:
            return DomainRecord(name, alias_of=self._domain_aliases[name])
        return None

    async def aliases(self, source):
        # Alternate addresses are the user's own (user() finds them); these are alias
        # entries, the catch-all being the one whose address is '*@domain'.
        if not self._s["alias_filter"] or not self._plausible(source):
            return []
        return await self._blocking(self._find_aliases, source)

    async def user(self, address):
        # Any domain: an AD login (userPrincipalName) may be in a domain that gets no mail.
        if not _searchable(address):
            return None
        return await self._blocking(self._find_user, address)

    async def group(self, address):
        if not self._plausible(address) or not self._s["group_filter"]:
            return None
        return await self._blocking(self._find_group, address)

    async def verify(self, record, password):
        if not password:
            return False        # an empty password would be an unauthenticated bind
        if self._s["auth"] == "bind":
            dn = _fill(self._s["user_dn_template"], record.address, escape_dn_value)
        else:
            dn = getattr(record, "dn", "")
        if not dn:
            return False
        ok = await self._blocking(self._conns.check_password, dn, password)
        if not ok:
            self.log.info("ldap bind as user failed user={user}", user=record.address)
        return ok

    # --- lookups (run on the thread pool) -------------------------------------------------

    def _plausible(self, address):
        """Only addresses in our domains are looked up (saves a round trip per remote RCPT)."""
        return _searchable(address) and "@" in address and \
            normalize_domain(address.rpartition("@")[2]) in self._all_domains

    def _search(self, base, template, address, attributes):
        search_filter = fill_filter(template, address)
        try:
            return self._conns.search(base, search_filter, attributes)
        except DirectoryUnavailable as e:
            self.log.error("ldap lookup failed: {error}", error=e)
            raise

    def _find_user(self, address):
        entries = self._search(self._s["user_base_dn"], self._s["user_filter"], address,
                               self._user_attributes)
        if not entries:
            return None
        if len(entries) > 1:
            self.log.error("ldap: {address} matches {n} entries ({dns}); refusing it until the "
                           "directory is fixed", address=address, n=len(entries),
                           dns=", ".join(dn for dn, _ in entries[:5]))
            return None
        dn, attrs = entries[0]
        return self._user_record(dn, attrs, address)

    def _find_aliases(self, source):
        """Targets of every alias entry for ``source`` (several entries: all their targets)."""
        attribute = self._s["alias_target_attribute"]
        entries = self._search(self._s["alias_base_dn"], self._s["alias_filter"], source, [attribute])
        targets = []
        for dn, attrs in entries:
            for value in attrs.get(attribute.lower(), ()):
                value = value.strip()
                if "@" in value and not _CONTROL.search(value):
                    targets.append(value)
                else:
                    self.log.warn("ldap: alias {dn} has {attr} = {value!r}, not an address; skipped",
                                  dn=dn, attr=attribute, value=value)
        return list(dict.fromkeys(targets))

    def _addresses(self, attrs):
        """(primary, [every address]) of an entry: an ``SMTP:`` proxy address is the
        primary, else the first mail value; ``smtp:`` values are alternates and other
        proxy types (X500:, SIP:, ...) are skipped."""
        primary, found = None, []
        for name in self._address_attributes:
            for value in attrs.get(name.lower(), ()):
                value = value.strip()
                m = _PROXY.fullmatch(value)
                if m and "@" not in m.group(1):
                    if m.group(1).lower() != "smtp":
                        continue
                    value = m.group(2).strip()
                    if m.group(1) == "SMTP" and primary is None:
                        primary = normalize(value)
                if "@" in value:
                    found.append(normalize(value))
        found = list(dict.fromkeys(found))
        if primary is None and found:
            primary = found[0]
        return primary, found

    def _user_record(self, dn, attrs, address):
        s = self._s
        primary, _ = self._addresses(attrs)
        fields = {"address": primary or address, "dn": dn}
        if s["quota_attribute"]:
            values = attrs.get(s["quota_attribute"].lower())
            if values:
                try:
                    fields["quota_bytes"] = parse_size(values[0])
                except ValueError:
                    self.log.warn("ldap: {dn} has {attr} = {value!r}, not a size; no quota applied",
                                  dn=dn, attr=s["quota_attribute"], value=values[0])
        if s["quota_messages_attribute"]:
            values = attrs.get(s["quota_messages_attribute"].lower())
            if values:
                if values[0].strip().isdigit():
                    fields["quota_messages"] = int(values[0].strip())
                else:
                    self.log.warn("ldap: {dn} has {attr} = {value!r}, not a whole number; no message "
                                  "quota applied", dn=dn, attr=s["quota_messages_attribute"], value=values[0])
        if s["enabled_attribute"]:
            fields["enabled"] = self._enabled(dn, attrs.get(s["enabled_attribute"].lower()))
        if s["forward_attribute"]:
            forward = [normalize(v) for v in attrs.get(s["forward_attribute"].lower(), ()) if "@" in v]
            if forward:
                fields["forward"] = tuple(dict.fromkeys(forward))
                fields["keep_copy"] = s["forward_keep_copy"]
        if s["protocols_attribute"]:
            values = attrs.get(s["protocols_attribute"].lower())
            if values:
                fields["protocols"] = frozenset(v.strip().lower() for v in values) & PROTOCOLS
        return LDAPUserRecord(**fields)

    def _enabled(self, dn, values):
        if not values:
            return True
        value = values[0].strip()
        if self._s["enabled_format"] == "accountcontrol":
            try:
                return not int(value) & ACCOUNTDISABLE
            except ValueError:
                self.log.warn("ldap: {dn} has userAccountControl {value!r}, not a number; "
                              "treated as disabled", dn=dn, value=value)
                return False
        return value.lower() not in _FALSE

    def _find_group(self, address):
        s = self._s
        attributes = [s["member_attribute"]] if not s["member_of_attribute"] else []
        if s["group_senders_attribute"]:
            attributes.append(s["group_senders_attribute"])
        entries = self._search(s["group_base_dn"], s["group_filter"], address, attributes)
        if not entries:
            return None
        if len(entries) > 1:
            self.log.error("ldap: group {address} matches {n} entries; refusing it until the "
                           "directory is fixed", address=address, n=len(entries))
            return None
        dn, attrs = entries[0]
        members, senders = [], []
        if s["member_of_attribute"]:
            member_filter = f"({s['member_of_attribute']}={_escape_filter(dn)})"
            try:
                found = self._conns.search(s["base_dn"], member_filter, self._member_attributes(),
                                           paged=True)
            except DirectoryUnavailable as e:
                self.log.error("ldap lookup failed: {error}", error=e)
                raise
        else:
            found = []
            for member_dn in attrs.get(s["member_attribute"].lower(), ()):
                try:
                    found += self._conns.search(member_dn, "(objectClass=*)", self._member_attributes(),
                                                scope="base")
                except DirectoryUnavailable as e:
                    self.log.error("ldap lookup failed: {error}", error=e)
                    raise
        for member_dn, member_attrs in found:
            primary, every = self._addresses(member_attrs)
            if primary is None:
                self.log.info("ldap: group member {dn} has no mail address; skipped", dn=member_dn)
                continue
            members.append(primary)
            senders += every            # a member may post from any of its addresses
        if s["group_senders_attribute"]:
            for value in attrs.get(s["group_senders_attribute"].lower(), ()):
                value = value.strip()
                senders.append("@" + normalize_domain(value[1:]) if value.startswith("@") else normalize(value))
        members = tuple(dict.fromkeys(members))
        return GroupRecord(address=address, members=members, members_only=s["group_members_only"],
                           senders=tuple(a for a in dict.fromkeys(senders) if a not in members)
                           if s["group_members_only"] else ())

    def _member_attributes(self):
        return self._address_attributes


_PRESET_KEYS = tuple(PRESETS["openldap"])


def _preset_str(help):
    return Option.str(default=None, help=help)


def _preset_list(help):
    return Option("list", parse_list, None, help=help)


@implementer(IDirectoryFactory)
class LDAPDirectoryFactory:
    """Builds the LDAP / Active Directory directory ([directory] type = ldap)."""

    kind = "ldap"
    description = "Users and groups from an LDAP server (OpenLDAP, Active Directory); read-only."
    read_only_reason = ("it is managed with LDAP tools (ldapadd/ldapmodify, Active Directory "
                        "Users and Computers)")
    options = {
        "uri": Option.list(required=True, help="ldap://HOST[:PORT] or ldaps://HOST[:PORT]; several are "
                                               "tried in order"),
        "start_tls": Option.bool(default=False, help="StartTLS on ldap:// connections (required when yes)"),
        "ca_file": Option.str(default="", help="PEM CA certificates for the server's certificate "
                                               "(default: the system's)"),
        "tls_verify": Option.bool(default=True, help="check the server's certificate and name"),
        "bind_dn": Option.str(default="", help="service account for lookups; empty = anonymous"),
        "bind_password": Option.str(default="", help="its password"),
        "bind_password_file": Option.str(default="", help="or a file holding it (first line)"),
        "base_dn": Option.str(required=True, help="where users and groups are searched"),
        "user_base_dn": Option.str(default="", help="where users are searched (default: base_dn)"),
        "group_base_dn": Option.str(default="", help="where groups are searched (default: base_dn)"),
        "alias_base_dn": Option.str(default="", help="where aliases are searched (default: base_dn)"),
        "domains": Option.list(required=True, help="the mail domains served"),
        "domain_aliases": Option.list(default=[], help="ALIAS=DOMAIN pairs: mail for x@ALIAS goes to "
                                                       "x@DOMAIN (one of domains)"),
        "schema": Option.choice(tuple(PRESETS), default="openldap",
                                help="the preset giving the defaults of the keys below"),
        "auth": Option.choice(("search", "bind"), default="search",
                              help="search: bind as the DN the user search found; bind: bind as "
                                   "user_dn_template"),
        "user_dn_template": Option.str(default="", help="DN to bind as with auth = bind, e.g. "
                                                        "uid={local},ou=people,dc=example,dc=org"),
        "user_filter": _preset_str("finds a user by address or login: {address}, {local}, {domain}"),
        "group_filter": _preset_str("finds a group by address; empty = no groups"),
        "mail_attribute": _preset_str("the primary address (its first value)"),
        "alias_attributes": _preset_list("attributes holding alternate addresses (smtp:/SMTP: "
                                         "prefixes understood)"),
        "quota_attribute": _preset_str("storage quota in bytes (or 100M); empty = none"),
        "quota_messages_attribute": _preset_str("message count quota (a whole number); empty = none"),
        "default_quota": Option.size(default=0, help="the storage quota of users without their own "
                                                     "(the domains' default); 0 = none"),
        "default_quota_messages": Option.int(default=0, help="the message count quota of users without "
                                                             "their own; 0 = none"),
        "enabled_attribute": _preset_str("the account switch; empty = always enabled"),
        "enabled_format": Option.choice(("boolean", "accountcontrol"), default=None,
                                        help="boolean: FALSE/no/0/disabled switch off; accountcontrol: "
                                             "the ACCOUNTDISABLE bit (2) switches off"),
        "forward_attribute": _preset_str("addresses mail is forwarded to; empty = none"),
        "forward_keep_copy": Option.bool(default=True, help="with forwarding, also deliver to the mailbox"),
        "protocols_attribute": _preset_str("values smtp, pop3, imap the user may use; empty = all"),
        "member_attribute": _preset_str("a group's member DNs"),
        "member_of_attribute": _preset_str("when set, a group's members are the entries whose "
                                           "attribute holds the group's DN (AD memberOf)"),
        "alias_filter": _preset_str("finds alias entries by address ({address}, {local}, {domain}); "
                                    "the address *@DOMAIN is the catch-all; empty = no aliases"),
        "alias_target_attribute": _preset_str("an alias entry's targets (addresses, local or remote)"),
        "group_members_only": Option.bool(default=False, help="groups take mail only from their members "
                                                              "(any of their addresses) and group senders"),
        "group_senders_attribute": Option.str(default="", help="with group_members_only: a group attribute "
                                                               "listing more allowed senders (addresses, @domain)"),
        "timeout": Option.duration(default=5.0, help="connect and answer timeout per LDAP operation"),
        "pool_size": Option.int(default=4, help="LDAP connections at most, for lookups and for logins each"),
    }

    def settings_for(self, settings, where=(None, "directory")):
        """``settings`` with the preset filled in and checked; raises ConfigErrors."""
        path, section = where
        s = dict(settings)
        preset = PRESETS[s.get("schema") or "openldap"]
        for key in _PRESET_KEYS:
            if s.get(key) is None:
                s[key] = preset[key]
        s["user_base_dn"] = s["user_base_dn"] or s["base_dn"]
        s["group_base_dn"] = s["group_base_dn"] or s["base_dn"]
        s["alias_base_dn"] = s["alias_base_dn"] or s["base_dn"]
        errors = []

        def bad(key, message):
            errors.append(ConfigError(message, path, section, key))

        from jdmail.directory.ldappool import parse_uri
        for uri in s["uri"]:
            try:
                parse_uri(uri)
            except ValueError as e:
                bad("uri", str(e))
        if not s["uri"]:
            bad("uri", "is required: ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
        for key in ("user_filter", "group_filter", "alias_filter"):
            if key != "user_filter" and not s[key]:
                continue
            problem = _filter_problem(s[key])
            if problem:
                bad(key, f"{s[key]!r}: {problem}")
        if s["auth"] == "bind":
            if not _PLACEHOLDER.search(s["user_dn_template"]):
                bad("user_dn_template", "is required with auth = bind and must hold {address}, "
                                        "{local} or {domain}")
        for key in ("mail_attribute", "member_attribute"):
            if not s[key]:
                bad(key, "must name an attribute")
        if s["bind_password_file"]:
            try:
                with open(s["bind_password_file"], encoding="utf-8") as f:
                    s["bind_password"] = f.readline().rstrip("\r\n")
            except OSError as e:
                bad("bind_password_file", f"{s['bind_password_file']!r}: cannot read: {e.strerror or e}")
        if s["ca_file"]:
            try:
                open(s["ca_file"], "rb").close()
            except OSError as e:
                bad("ca_file", f"{s['ca_file']!r}: cannot read: {e.strerror or e}")
        if not s["domains"]:
            bad("domains", "is required: the mail domains this directory serves")
        if s["alias_filter"] and not s["alias_target_attribute"]:
            bad("alias_target_attribute", "must name an attribute when alias_filter is set")
        s["domain_alias_map"] = _domain_aliases(s["domains"], s["domain_aliases"], bad)
        if s["default_quota_messages"] < 0:
            bad("default_quota_messages", f"{s['default_quota_messages']}: expected 0 (no limit) or more")
        if s["pool_size"] < 1:
            bad("pool_size", f"{s['pool_size']}: expected 1 or more")
        if s["timeout"] <= 0:
            bad("timeout", "expected a duration above 0, such as 5s")
        if errors:
            raise ConfigErrors(errors)
        return s

    def backend(self, name, settings, services):
        """The LDAPBackend alone (what build() wraps in DirectoryService)."""
        from jdmail.directory.ldappool import LDAPConnections
        config = getattr(services, "config", None)
        s = self.settings_for(settings, (getattr(config, "path", None), "directory"))
        connections = LDAPConnections(s["uri"], s["bind_dn"], s["bind_password"], s["start_tls"],
                                      s["ca_file"], s["tls_verify"], s["timeout"], s["pool_size"])
        return LDAPBackend(s, connections, services, name=name)

    def build(self, name, settings, services):
        from jdmail.directory.service import DirectoryService
        return DirectoryService(self.backend(name, settings, services), services, name)


def _domain_aliases(domains, pairs, bad):
    """{alias: domain} from ``alias=domain`` pairs, each domain one of ``domains``."""
    served = {normalize_domain(d) for d in domains}
    found = {}
    for pair in pairs:
        alias, eq, target = (part.strip() for part in pair.partition("="))
        alias, target = normalize_domain(alias), normalize_domain(target)
        if not eq or not alias or not target:
            bad("domain_aliases", f"{pair!r}: expected ALIAS=DOMAIN, e.g. example.net=example.org")
        elif target not in served:
            bad("domain_aliases", f"{pair!r}: {target} is not one of domains")
        elif alias in served or alias in found:
            bad("domain_aliases", f"{pair!r}: {alias} is already a domain or domain alias")
        else:
            found[alias] = target
    return found


def _filter_problem(template):
    """Why ``template`` is not a usable filter template, or None."""
    if not _PLACEHOLDER.search(template):
        return "must hold {address} (or {local} / {domain})"
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter
    try:
        parse_filter(fill_filter(template, "user@example.org"), None, False, False, None, False)
    except LDAPException as e:
        return f"not a valid LDAP filter ({' '.join(str(e).split())})"
    return None
