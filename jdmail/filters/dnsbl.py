"""DNS blocklist and allowlist lookups (RFC 5782), independent of the filter framework.

A list is written ``zone``, ``zone*WEIGHT`` or ``zone=127.0.0.N*WEIGHT`` (like Postfix's
postscreen_dnsbl_sites): with ``=ADDR`` only that answer counts as listed (several:
``=127.0.0.2;127.0.0.3``); the weight defaults to 1. IP lists are asked for the client
address (IPv4 reversed octets, IPv6 reversed nibbles), domain lists for a domain name
(``example.net.dbl.test``). An answer outside 127.0.0.0/8 is ignored: public lists
answer so when they refuse a resolver, and counting it would block everybody.
"""

import ipaddress
import re
from dataclasses import dataclass, field

from jdmail.filters.dnsutil import TemporaryDNSError, client_address, reverse_name

_SPEC = re.compile(r"^(?P<zone>[A-Za-z0-9._-]+?)(?:=(?P<codes>[0-9.;]+))?(?:\*(?P<weight>-?\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class DNSList:
    """One configured list: its zone, the answers that count (empty: any 127/8), a weight."""
    zone: str
    codes: frozenset = frozenset()
    weight: float = 1.0

    @classmethod
    def parse(cls, text):
        """'zen.test=127.0.0.2;127.0.0.4*3' -> DNSList; ValueError naming the form."""
        m = _SPEC.match(text.strip())
        if not m or "." not in m.group("zone"):
            raise ValueError(f"{text!r}: expected ZONE, ZONE*WEIGHT or ZONE=127.0.0.N*WEIGHT")
        codes = frozenset()
        if m.group("codes"):
            try:
                codes = frozenset(str(ipaddress.IPv4Address(c)) for c in m.group("codes").split(";") if c)
            except ValueError:
                raise ValueError(f"{text!r}: the answers after '=' must be IPv4 addresses "
                                 "separated by ';'") from None
        return cls(m.group("zone").strip(".").lower(), codes, float(m.group("weight") or 1))

    def counts(self, answer):
        """True when an A answer means 'listed' for this list."""
        try:
            if ipaddress.IPv4Address(answer) not in ipaddress.IPv4Network("127.0.0.0/8"):
                return False
        except ValueError:
            return False
        return not self.codes or answer in self.codes


@dataclass(frozen=True)
class Listing:
    """One list that lists the subject: the list, what it answered, its TXT reason."""
    dnslist: DNSList
    subject: str
    answers: tuple
    reason: str = ""


@dataclass
class DNSBLResult:
    """What the lookups found: listings, the allowlist that matched (if any), failures."""
    listings: list = field(default_factory=list)
    allowed_by: str = ""
    errors: list = field(default_factory=list)

    @property
    def score(self):
        """The sum of the listing weights (0 when an allowlist matched)."""
        return 0.0 if self.allowed_by else sum(item.dnslist.weight for item in self.listings)


class DNSBLChecker:
    """Asks IP lists, domain lists and allowlists through an AsyncDNS."""

    def __init__(self, dns, ip_lists=(), domain_lists=(), allowlists=()):
        self.dns = dns
        self.ip_lists = list(ip_lists)
        self.domain_lists = list(domain_lists)
        self.allowlists = list(allowlists)

    async def _ask(self, dnslist, name, subject, result):
        try:
            answers = [a for a in await self.dns.a(name) if dnslist.counts(a)]
        except TemporaryDNSError as e:
            result.errors.append(str(e))
            return None
        if not answers:
            return None
        reason = ""
        try:
            texts = await self.dns.txt(name)
            reason = texts[0] if texts else ""
        except TemporaryDNSError:
            pass
        return Listing(dnslist, subject, tuple(sorted(answers)), reason)

    async def check(self, ip=None, domains=()):
        """Look ``ip`` up in the allowlists, then (unless allowed) in the IP lists, and each
        domain of ``domains`` in the domain lists. Never raises for DNS trouble: failed
        lookups are in ``result.errors`` and count as not listed."""
        result = DNSBLResult()
        address = client_address(ip) if ip else None
        if address is not None:
            for dnslist in self.allowlists:
                hit = await self._ask(dnslist, reverse_name(address, dnslist.zone), str(address), result)
                if hit is not None:
                    result.allowed_by = dnslist.zone
                    return result
            for dnslist in self.ip_lists:
                hit = await self._ask(dnslist, reverse_name(address, dnslist.zone), str(address), result)
                if hit is not None:
                    result.listings.append(hit)
        for domain in dict.fromkeys(d.strip(".").lower() for d in domains if d):
            if not _looks_like_domain(domain):
                continue
            for dnslist in self.domain_lists:
                hit = await self._ask(dnslist, f"{domain}.{dnslist.zone}", domain, result)
                if hit is not None:
                    result.listings.append(hit)
        return result


def _looks_like_domain(name):
    if "." not in name or name.startswith("["):
        return False
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        return True
