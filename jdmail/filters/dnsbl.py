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

from zope.interface import implementer

from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

from jdmail.filters.dnsutil import TemporaryDNSError, async_dns_for, client_address, reverse_name, trusted_client

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


# --- the filter ------------------------------------------------------------------------------


@implementer(IFilter)
class DNSBLFilter:
    """Refuses (``action = reject``, at RCPT, 554 5.7.1 naming the list) or scores
    (``action = score``, at DATA) clients listed in DNS blocklists, unless an allowlist
    lists them. Authenticated and mynetworks clients are not looked up."""

    def __init__(self, name, checker, action="reject", threshold=1.0, check_helo=True, check_sender=True):
        self.name, self.checker, self.action = name, checker, action
        self.threshold, self.check_helo, self.check_sender = threshold, check_helo, check_sender
        self.stages = frozenset({Stage.RCPT} if action == "reject" else {Stage.DATA})

    async def _result(self, txn):
        notes = txn.filter_results.notes
        if self.name not in notes:
            domains = []
            if self.check_helo and getattr(txn, "helo", None):
                domains.append(txn.helo)
            if self.check_sender and getattr(txn, "sender", ""):
                domains.append(txn.sender.rpartition("@")[2])
            notes[self.name] = await self.checker.check(txn.client_ip, domains)
        return notes[self.name]

    async def check(self, stage, txn):
        if trusted_client(txn):
            return Verdict.CONTINUE
        result = await self._result(txn)
        if result.allowed_by:
            return Verdict(reason=f"allowlisted by {result.allowed_by}")
        if not result.listings:
            return Verdict(reason="; ".join(result.errors)) if result.errors else Verdict.CONTINUE
        why = "; ".join(f"{item.subject} listed by {item.dnslist.zone} ({','.join(item.answers)})"
                        + (f": {item.reason}" if item.reason else "") for item in result.listings)
        if self.action == "score":
            tests = tuple("DNSBL_" + item.dnslist.zone.upper().replace(".", "_").replace("-", "_")
                          for item in result.listings)
            return Verdict(score=result.score, tests=tests, reason=why)
        if result.score < self.threshold:
            return Verdict(reason=f"below threshold {result.score:g} < {self.threshold:g}: {why}")
        first = result.listings[0]
        what = f"client [{first.subject}]" if first.dnslist in self.checker.ip_lists else f"domain {first.subject}"
        return Verdict.reject(f"Service unavailable; {what} blocked using {first.dnslist.zone}",
                              code=554, enhanced="5.7.1", reason=why)


def _list_option(help):
    return Option("list", lambda t: [DNSList.parse(v) for v in t.split(",") if v.strip()], [], False, help)


@implementer(IFilterFactory)
class DNSBLFilterFactory:
    kind = "dnsbl"
    description = "Refuse or score clients and domains listed in DNS blocklists (RFC 5782); allowlists skip them."
    options = {
        "ip_lists": _list_option("IP blocklists: ZONE, ZONE*WEIGHT or ZONE=127.0.0.N;127.0.0.M*WEIGHT"),
        "domain_lists": _list_option("domain blocklists asked for the HELO name and the sender's domain "
                                     "(same forms)"),
        "allowlists": _list_option("IP allowlists (RWL): a client listed in one is not looked up in the "
                                   "blocklists"),
        "action": Option.choice(("reject", "score"), default="reject",
                                help="reject: 554 5.7.1 at RCPT; score: add the weights to the spam score"),
        "threshold": Option.float(default=1.0, help="with action = reject: the summed weight that refuses"),
        "check_helo": Option.bool(default=True, help="ask the domain lists about the HELO name"),
        "check_sender": Option.bool(default=True, help="ask the domain lists about the sender's domain"),
    }

    def build(self, name, settings, services):
        checker = DNSBLChecker(async_dns_for(services), settings["ip_lists"], settings["domain_lists"],
                               settings["allowlists"])
        return DNSBLFilter(name, checker, settings["action"], settings["threshold"],
                           settings["check_helo"], settings["check_sender"])
