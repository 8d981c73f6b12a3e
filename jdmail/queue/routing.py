"""Outbound routing (issue 4): relays, the routing table and trusted networks.

Pure values and parsers, no I/O except reading a ``password_file``; config.py
calls these at startup so every mistake is reported before the first message.

INI shape::

    [relay:hq]
    host = smtp.hq.example      ; required
    port = 587                  ; default 25, or 465 when tls = implicit
    tls = required              ; none | starttls | required | implicit  (default starttls)
    username = branch1          ; AUTH is used only when a username is given
    password_file = /etc/jdmail/hq.secret   ; or password = ...; not both

    [routing]
    relayhost = [smtp.isp.example]:587      ; compact relay, named "relayhost"
    sender:finance@example.org = relay:hq
    sender:@example.org = relay:hq
    recipient:partner.example = direct
    recipient:*.partner.example = direct
    recipient:bad.example = reject
    recipient:worse.example = reject Mail to this domain is not accepted
    recipient:internal.example = local
    default = relay:hq                      ; or direct (the default) or local/reject

    [smtp]
    mynetworks = 127.0.0.0/8, ::1, 192.0.2.0/24

Note for config.py: these keys contain ':' so the INI parser must use
``delimiters=("=",)``, otherwise ``sender:x = y`` is read as key ``sender``.

Route precedence, first match wins (all comparisons case-insensitive):

1. ``sender:user@domain`` -- the exact envelope sender address;
2. ``sender:@domain`` -- the envelope sender's domain;
3. ``recipient:domain`` -- the recipient's domain, exactly;
4. ``recipient:*.domain`` -- a subdomain of it (``*.p.example`` matches
   ``a.p.example`` and ``a.b.p.example``, not ``p.example``); the longest
   suffix wins;
5. ``default``.

The null sender ``''`` (bounces) matches no sender rule, only recipient rules
and the default.
"""

import ipaddress
import re

from jdmail.errors import ConfigError, ConfigErrors
from jdmail.options import Option

TLS_MODES = ("none", "starttls", "required", "implicit")
ROUTE_KINDS = ("direct", "relay", "local", "reject")
DEFAULT_REJECT_TEXT = "Mail to this destination is not accepted"

RELAY_OPTIONS = {
    "host": Option.str(required=True, help="relay host name or address"),
    "port": Option.int(default=None, help="TCP port; default 25, or 465 when tls = implicit"),
    "tls": Option.choice(TLS_MODES, default="starttls",
                         help="none, starttls (when offered), required (STARTTLS, verified) or implicit"),
    "username": Option.str(default=None, help="AUTH user name; no AUTH when unset"),
    "password": Option.str(default=None, help="AUTH password"),
    "password_file": Option.str(default=None, help="file whose first line is the AUTH password"),
}


class Relay:
    """A relay (smarthost): where and how to hand mail on.

    ``mx_lookup`` is True only for the compact form without brackets
    (``relayhost = example.net``), where Postfix looks up MX records of the name.
    """

    __slots__ = ("name", "host", "port", "tls", "username", "password", "mx_lookup")

    def __init__(self, name, host, port=None, tls="starttls", username=None, password=None,
                 mx_lookup=False):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}")
        self.name, self.host, self.tls = name, host, tls
        self.port = port if port is not None else (465 if tls == "implicit" else 25)
        self.username, self.password, self.mx_lookup = username, password, mx_lookup

    def _key(self):
        return tuple(getattr(self, a) for a in self.__slots__)

    def __eq__(self, other):
        return isinstance(other, Relay) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        # Never show the password.
        return (f"Relay({self.name!r}, {self.host!r}, port={self.port}, tls={self.tls!r}, "
                f"username={self.username!r}, mx_lookup={self.mx_lookup})")


class Route:
    """What to do with one recipient: kind is direct, relay, local or reject.

    ``relay`` is set only for kind relay; ``text`` only for reject (sent to the client).
    """

    __slots__ = ("kind", "relay", "text")

    def __init__(self, kind, relay=None, text=None):
        if kind not in ROUTE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(ROUTE_KINDS)}")
        if (kind == "relay") != (relay is not None):
            raise ValueError("a relay route needs a relay, and only a relay route has one")
        self.kind, self.relay = kind, relay
        self.text = (text or DEFAULT_REJECT_TEXT) if kind == "reject" else None

    def __eq__(self, other):
        return isinstance(other, Route) and (self.kind, self.relay, self.text) == (
            other.kind, other.relay, other.text)

    def __hash__(self):
        return hash((self.kind, self.relay, self.text))

    def __repr__(self):
        if self.kind == "relay":
            return f"Route('relay', {self.relay.name!r})"
        if self.kind == "reject":
            return f"Route('reject', {self.text!r})"
        return f"Route({self.kind!r})"


DIRECT = Route("direct")
LOCAL = Route("local")

_HOST_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")


def _check_host(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST_RE.fullmatch(host)) and ".." not in host


def _parse_compact(name, text):
    """'[host]:port', 'host:port', '[host]' or 'host' -> Relay, or ValueError."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\[\]]+)\](?::(\d+))?|([^\[\]:]+)(?::(\d+))?", text)
    if not m or not _check_host(m.group(1) or m.group(3)):
        raise ValueError(f"{text!r}: expected [host]:port, host:port or host, "
                         f"such as [smtp.example.net]:587")
    bracketed = m.group(1) is not None
    host = m.group(1) if bracketed else m.group(3)
    port = m.group(2) or m.group(4)
    port = int(port) if port else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    tls = "implicit" if port == 465 else "starttls"
    return Relay(name, host, port, tls, mx_lookup=not bracketed)


def parse_relay(name, source, path=None, section=None, key=None, errors=None):
    """Build a Relay from a ``[relay:NAME]`` section dict or a compact string.

    A string is the Postfix form: ``[host]:port`` (brackets: no MX lookup),
    ``host:port`` or ``host``; port 465 means implicit TLS, else STARTTLS when
    offered. A dict takes the keys of RELAY_OPTIONS.

    Problems are ConfigError(message, path, section, key). With ``errors`` (a
    list) every problem is appended and None returned when there was one;
    without it the first problem is raised.
    """
    found = []
    relay = _parse_relay(name, source, path, section, key, found)
    if errors is not None:
        errors.extend(found)
        return None if found else relay
    if found:
        raise found[0]
    return relay


def _parse_relay(name, source, path, section, key, found):
    if isinstance(source, str):
        try:
            return _parse_compact(name, source)
        except ValueError as e:
            found.append(ConfigError(str(e), path, section if section else "routing",
                                     key or "relayhost"))
            return None
    section = section or f"relay:{name}"

    def err(message, k=None):
        found.append(ConfigError(message, path, section, k))

    values = {}
    for k, text in source.items():
        if k == "type":
            continue
        option = RELAY_OPTIONS.get(k)
        if option is None:
            err(f"is not a relay option; allowed: {', '.join(RELAY_OPTIONS)}", k)
            continue
        try:
            values[k] = option.parse(text)
        except ValueError as e:
            err(str(e), k)
    for k, option in RELAY_OPTIONS.items():
        if option.required and k not in source:
            err("is required: the relay's host name or address", k)
    host = values.get("host")
    if host is not None and not _check_host(host):
        err(f"{host!r}: expected a host name or an IP address", "host")
        host = None
    port = values.get("port")
    if port is not None and not 0 < port < 65536:
        err(f"{port}: expected a port between 1 and 65535", "port")
    password = values.get("password")
    if values.get("password_file"):
        if "password" in source:
            err("give password or password_file, not both", "password_file")
        else:
            try:
                with open(values["password_file"], encoding="utf-8") as f:
                    password = (f.readline().rstrip("\r\n")) or None
            except OSError as e:
                err(f"{values['password_file']!r}: cannot read: {e.strerror or e}", "password_file")
            if password is None and not found:
                err(f"{values['password_file']!r}: the file is empty", "password_file")
    username = values.get("username") or None
    if password and not username:
        err("a password is set but no username; set username too", "username")
    if username and not password:
        err("a username is set but no password; set password or password_file", "password")
    if found:
        return None
    return Relay(name, host, port, values.get("tls", "starttls"), username, password or None)


def parse_relays(sections, path=None, relayhost=None, errors=None):
    """Every ``[relay:NAME]`` section of {section: {key: text}} -> {name: Relay}.

    ``relayhost`` (compact text, e.g. from ``[routing] relayhost``) adds a relay
    named ``relayhost``. Raises ConfigErrors unless an ``errors`` list is given.
    """
    found = []
    relays = {}
    for section, values in sections.items():
        if section.startswith("relay:"):
            name = section[len("relay:"):].strip()
            relay = parse_relay(name, values, path, section, errors=found)
            if relay is not None:
                relays[name] = relay
    if relayhost is not None:
        if "relayhost" in relays:
            found.append(ConfigError("the name relayhost is taken by the routing relayhost key; "
                                     "rename the section", path, "relay:relayhost"))
        else:
            relay = parse_relay("relayhost", relayhost, path, "routing", "relayhost", errors=found)
            if relay is not None:
                relays["relayhost"] = relay
    if errors is not None:
        errors.extend(found)
    elif found:
        raise ConfigErrors(found)
    return relays


def _domain_ok(domain):
    return bool(domain) and _HOST_RE.fullmatch(domain) is not None and ".." not in domain


def parse_route(text, relays):
    """'direct' | 'local' | 'reject [text]' | 'relay:NAME' -> Route, or ValueError."""
    value = text.strip()
    low = value.lower()
    if low in ("direct", "local"):
        return Route(low)
    if low == "reject" or low.startswith("reject "):
        return Route("reject", text=value[len("reject"):].strip() or None)
    if low.startswith("relay:"):
        name = value[len("relay:"):].strip()
        if name not in relays:
            known = ", ".join(sorted(relays)) or "none are defined"
            raise ValueError(f"{value!r}: no relay named {name!r}; "
                             f"defined relays ([relay:NAME] or relayhost): {known}")
        return Route("relay", relays[name])
    raise ValueError(f"{value!r}: expected direct, local, reject [text] or relay:NAME")


def _split_address(address):
    address = address.strip().lower()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.rstrip(".")


class RoutingTable:
    """Chooses a Route for each (sender, recipient); see the module docstring for precedence.

    ``rules`` is an iterable of (selector, Route) where selector is
    ``sender:user@domain``, ``sender:@domain``, ``recipient:domain`` or
    ``recipient:*.domain``; ``default`` is a Route.
    """

    def __init__(self, rules=(), default=DIRECT):
        self.default = default
        self._senders, self._sender_domains = {}, {}
        self._domains, self._wildcards = {}, {}
        for selector, route in rules:
            kind, value = _parse_selector(selector)
            {"sender": self._senders, "sender_domain": self._sender_domains,
             "domain": self._domains, "wildcard": self._wildcards}[kind][value] = route
        # Longest suffix first, so the most specific wildcard wins.
        self._wildcard_order = sorted(self._wildcards, key=len, reverse=True)

    def route(self, sender, recipient):
        """The Route for mail from ``sender`` ('' for the null sender) to ``recipient``."""
        if sender:
            local, domain = _split_address(sender)
            if domain:
                address = f"{local}@{domain}"
                if address in self._senders:
                    return self._senders[address]
                if domain in self._sender_domains:
                    return self._sender_domains[domain]
        _, domain = _split_address(recipient)
        if domain in self._domains:
            return self._domains[domain]
        for suffix in self._wildcard_order:
            if domain.endswith("." + suffix):
                return self._wildcards[suffix]
        return self.default

    def relays(self):
        """Every Relay some rule or the default uses (for connection pools, checks)."""
        routes = [self.default, *self._senders.values(), *self._sender_domains.values(),
                  *self._domains.values(), *self._wildcards.values()]
        return {r.relay.name: r.relay for r in routes if r.relay is not None}


def _parse_selector(selector):
    """'sender:...' / 'recipient:...' -> (kind, normalised value), or ValueError."""
    prefix, colon, value = selector.strip().partition(":")
    prefix, value = prefix.strip().lower(), value.strip().lower()
    if not colon or prefix not in ("sender", "recipient"):
        raise ValueError("is not a routing key; expected sender:user@domain, sender:@domain, "
                         "recipient:domain, recipient:*.domain, default or relayhost")
    if prefix == "sender":
        local, at, domain = value.rpartition("@")
        domain = domain.rstrip(".")
        if not at or not _domain_ok(domain) or "@" in local or " " in local:
            raise ValueError("expected sender:user@domain or sender:@domain")
        return ("sender", f"{local}@{domain}") if local else ("sender_domain", domain)
    if value.startswith("*."):
        domain = value[2:].rstrip(".")
        if not _domain_ok(domain) or "*" in domain:
            raise ValueError("expected recipient:*.domain, such as recipient:*.partner.example")
        return "wildcard", domain
    domain = value.rstrip(".")
    if not _domain_ok(domain):
        raise ValueError("expected recipient:domain or recipient:*.domain")
    return "domain", domain


def parse_routing(section, relays, path=None, section_name="routing"):
    """``[routing]`` {key: text} -> RoutingTable, raising ConfigErrors with every problem.

    ``relays`` is {name: Relay} (see parse_relays). The key ``relayhost`` is the
    compact relay and is skipped here; when there is no ``default`` key and a
    relay named ``relayhost`` exists, the default is that relay, else direct.
    """
    errors, rules, default = [], [], None
    for key, text in section.items():
        if key == "relayhost":
            continue
        if key == "default":
            try:
                default = parse_route(text, relays)
            except ValueError as e:
                errors.append(ConfigError(str(e), path, section_name, key))
            continue
        try:
            _parse_selector(key)
        except ValueError as e:
            errors.append(ConfigError(str(e), path, section_name, key))
            continue
        try:
            rules.append((key, parse_route(text, relays)))
        except ValueError as e:
            errors.append(ConfigError(str(e), path, section_name, key))
    if errors:
        raise ConfigErrors(errors)
    if default is None:
        default = Route("relay", relays["relayhost"]) if "relayhost" in relays else DIRECT
    return RoutingTable(rules, default)


class TrustedNetworks:
    """The mynetworks list: clients in it may relay without AUTH.

    ``cidrs`` is a comma-separated string or an iterable of strings such as
    ``127.0.0.0/8``, ``::1`` or ``2001:db8::/32``; bare addresses are single hosts.
    Bad entries raise ConfigErrors (one line each); ``path``/``section``/``key``
    say where the list came from.
    """

    def __init__(self, cidrs=(), path=None, section="smtp", key="mynetworks"):
        if isinstance(cidrs, str):
            cidrs = [c.strip() for c in cidrs.split(",") if c.strip()]
        networks, errors = [], []
        for entry in cidrs:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                errors.append(ConfigError(
                    f"{entry.strip()!r}: expected an IPv4 or IPv6 address or network, "
                    f"such as 192.0.2.0/24 or 2001:db8::/32", path, section, key))
        if errors:
            raise ConfigErrors(errors)
        self.networks = tuple(networks)

    def contains(self, ip):
        """True when the address (text or ipaddress object) is in one of the networks.

        IPv4-mapped IPv6 addresses (::ffff:192.0.2.1) are checked as IPv4. A
        malformed address is not trusted.
        """
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks if net.version == address.version)

    __contains__ = contains

    def __repr__(self):
        return f"TrustedNetworks({', '.join(str(n) for n in self.networks)!r})"
