"""HELO/EHLO name checks: syntax, "that's me", forward DNS. Each check is a switch.

``check_helo(name, ...)`` returns None (fine) or a :class:`HeloProblem` with the reply
RFC 5321 and Postfix use: 501 5.5.2 for a name that is neither a fully-qualified domain
name nor an address literal, 550 5.7.1 for a client claiming to be this server, 550 5.7.1
when the name has no A/AAAA/MX (450 4.7.1 when the DNS could not answer).
"""

import ipaddress
import re
from dataclasses import dataclass

from zope.interface import implementer

from jdmail.filters.dnsutil import TemporaryDNSError, async_dns_for, trusted_client
from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class HeloProblem:
    """Why a HELO name is refused: the reply and a log reason."""
    code: int
    enhanced: str
    text: str
    reason: str


def address_literal(name):
    """The ip_address of an RFC 5321 address literal ('[192.0.2.1]', '[IPv6:2001:db8::1]'),
    or None when ``name`` is not one."""
    if not (name.startswith("[") and name.endswith("]")):
        return None
    inner = name[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
        version = 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        return None
    return address if address.version == version else None


def is_fqdn(name):
    """True for a syntactically valid fully-qualified domain name (two labels or more, the
    last not all digits)."""
    name = name[:-1] if name.endswith(".") else name
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return False
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2:
        return False
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


async def check_helo(name, *, hostname="", local_addresses=(), dns=None,
                     require_fqdn=True, reject_self=True, require_dns=False):
    """Return None when ``name`` passes the switched-on checks, else a HeloProblem.

    ``local_addresses``: this server's IP addresses (strings); ``dns``: an AsyncDNS, needed
    when ``require_dns`` is on.
    """
    name = (name or "").strip()
    literal = address_literal(name)
    if require_fqdn and literal is None and not is_fqdn(name):
        return HeloProblem(501, "5.5.2", "Helo command rejected: need fully-qualified hostname",
                           f"helo {name!r} is neither a fully-qualified domain name nor an address literal")
    if reject_self:
        ours = {_plain(ipaddress.ip_address(a)) for a in local_addresses if _is_ip(a)}
        claimed_ip = literal if literal is not None else _bare_ip(name)
        claimed = (claimed_ip is not None and _plain(claimed_ip) in ours) \
            or (hostname and name.rstrip(".").lower() == hostname.rstrip(".").lower())
        if claimed:
            return HeloProblem(550, "5.7.1", "Helo command rejected: you are not me",
                               f"helo {name!r} claims to be this server")
    if require_dns and literal is None and is_fqdn(name):
        try:
            found = await dns.exists(name.rstrip("."))
        except TemporaryDNSError as e:
            return HeloProblem(450, "4.7.1", "Helo command rejected: cannot look up your host name; "
                               "try again later", f"helo {name!r}: {e}")
        if not found:
            return HeloProblem(550, "5.7.1", "Helo command rejected: host name not found",
                               f"helo {name!r} has no A, AAAA or MX record")
    return None


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _plain(address):
    """An IPv4-mapped IPv6 address (::ffff:192.0.2.1, what a dual-stack socket reports) as
    the IPv4 address it stands for."""
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _bare_ip(name):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


# --- the filter ------------------------------------------------------------------------------

@implementer(IFilter)
class HeloFilter:
    """Refuses bad HELO names at HELO, or (``delay_reject``, the default, as Postfix's
    smtpd_delay_reject) at each RCPT, so authenticated and mynetworks clients -- laptops
    that say ``EHLO mylaptop`` -- are known and spared, and the log shows the recipient.

    "This server" is the host name, the configured ``local_addresses``, the addresses
    jdmail listens on (``listening``: a set the listeners fill as they bind) and the
    address the client connected to."""

    def __init__(self, name, dns, hostname, local_addresses=(), require_fqdn=True, reject_self=True,
                 require_dns=False, delay_reject=True, listening=frozenset()):
        self.name, self.dns, self.hostname = name, dns, hostname
        self.local_addresses = list(local_addresses)
        self.listening = listening
        self.switches = dict(require_fqdn=require_fqdn, reject_self=reject_self, require_dns=require_dns)
        self.delay_reject = delay_reject
        self.stages = frozenset({Stage.RCPT} if delay_reject else {Stage.HELO})

    async def check(self, stage, txn):
        if trusted_client(txn):
            return Verdict.CONTINUE
        notes = txn.filter_results.notes
        if self.name not in notes:
            hostname = self.hostname or getattr(txn, "hostname", "")
            ours = [*self.local_addresses, *self.listening, getattr(txn, "local_ip", "") or ""]
            notes[self.name] = await check_helo(getattr(txn, "helo", "") or "", hostname=hostname,
                                                local_addresses=ours, dns=self.dns,
                                                **self.switches)
        problem = notes[self.name]
        if problem is None:
            return Verdict.CONTINUE
        make = Verdict.reject if problem.code >= 500 else Verdict.tempfail
        return make(problem.text, code=problem.code, enhanced=problem.enhanced, reason=problem.reason)


def _address_list(text):
    out = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        if not _is_ip(item):
            raise ValueError(f"{item!r}: expected IP addresses separated by commas")
        out.append(item)
    return out


@implementer(IFilterFactory)
class HeloFilterFactory:
    kind = "helo"
    description = "Refuse HELO names that are not FQDNs or address literals, claim to be us, or do not resolve."
    options = {
        "require_fqdn": Option.bool(default=True, help="refuse a name that is neither a fully-qualified "
                                                       "domain name nor an address literal (501 5.5.2)"),
        "reject_self": Option.bool(default=True, help="refuse a client that calls itself by our host name "
                                                      "or one of our addresses (550 5.7.1)"),
        "require_dns": Option.bool(default=False, help="refuse a name with no A, AAAA or MX record "
                                                       "(550 5.7.1; 450 4.7.1 when the DNS fails)"),
        "local_addresses": Option("list", _address_list, [], False,
                                  "more of this server's IP addresses for reject_self (those it "
                                  "listens on and the one each client connected to count anyway), "
                                  "e.g. the public address of a NAT in front of it"),
        "delay_reject": Option.bool(default=True, help="refuse at RCPT instead of at HELO (authenticated "
                                                       "and mynetworks clients are then spared)"),
    }

    def build(self, name, settings, services):
        return HeloFilter(name, async_dns_for(services), services.hostname, settings["local_addresses"],
                          settings["require_fqdn"], settings["reject_self"], settings["require_dns"],
                          settings["delay_reject"], services.local_addresses)
