"""DMARC (RFC 7489): the From domain's policy, applied with the SPF and DKIM results.

``evaluate_dmarc(from_domain, spf, dkim_results, dns)`` looks up ``_dmarc.<from domain>``
(then ``_dmarc.<organisational domain>``, whose ``sp=`` then applies), checks identifier
alignment (relaxed: same organisational domain, strict: same name) and returns a
:class:`DMARCResult` with the disposition after ``pct`` sampling. The organisational
domain comes from the Public Suffix List bundled with ``publicsuffixlist`` (no network).
"""

import random
from dataclasses import dataclass

from jdmail.filters.dnsutil import TemporaryDNSError

_psl = None


def organisational_domain(domain):
    """'mail.example.co.uk' -> 'example.co.uk' (RFC 7489 3.2); the name itself when it is
    a public suffix or unknown."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList
        _psl = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    return _psl.privatesuffix(domain) or domain


@dataclass(frozen=True)
class DMARCPolicy:
    """A parsed DMARC record (the tags this evaluation uses)."""
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_record(text):
    """'v=DMARC1; p=reject; pct=50' -> DMARCPolicy, or None when it is not a valid DMARC
    record (RFC 7489 6.6.3: then it is as if there were none)."""
    tags = {}
    for part in text.split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            tags.setdefault(k.strip().lower(), v.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return None
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        return None
    sp = tags.get("sp", p).lower()
    if sp not in ("none", "quarantine", "reject"):
        sp = p
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DMARCPolicy(p, sp, adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r", pct)


@dataclass(frozen=True)
class DMARCResult:
    """``result``: pass, fail, none (no policy), temperror or permerror. ``disposition``:
    what to do — none, quarantine or reject (after pct sampling). ``policy`` is the
    policy that applied (p or sp) before sampling."""
    result: str
    from_domain: str
    policy: str = "none"
    disposition: str = "none"
    reason: str = ""

    def auth_result(self):
        """The ``dmarc=`` method result for Authentication-Results."""
        if self.result in ("pass", "fail"):
            return f"dmarc={self.result} (p={self.policy} dis={self.disposition}) header.from={self.from_domain}"
        return f"dmarc={self.result} header.from={self.from_domain or 'unknown'}"


def aligned(domain, author_domain, mode):
    """Identifier alignment (RFC 7489 3.1): strict = the same name, relaxed = the same
    organisational domain."""
    a, b = domain.lower().rstrip("."), author_domain.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organisational_domain(a) == organisational_domain(b)


async def fetch_policy(from_domain, dns):
    """(policy, applies_sp) for ``from_domain``; (None, False) when none is published.
    Raises TemporaryDNSError when the DNS cannot answer."""
    records = [t for t in await dns.txt(f"_dmarc.{from_domain}") if t.lower().startswith("v=dmarc1")]
    if len(records) == 1:
        policy = parse_record(records[0])
        if policy is not None:
            return policy, False
    org = organisational_domain(from_domain)
    if org != from_domain:
        records = [t for t in await dns.txt(f"_dmarc.{org}") if t.lower().startswith("v=dmarc1")]
        if len(records) == 1:
            policy = parse_record(records[0])
            if policy is not None:
                return policy, True
    return None, False


_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


async def evaluate_dmarc(from_domain, spf, dkim_results, dns, rand=random.random):
    """Evaluate DMARC for the author domain.

    ``spf``: an SPFResult (its mailfrom domain is the SPF identifier) or None;
    ``dkim_results``: [DKIMResult]; ``dns``: an AsyncDNS; ``rand`` draws in [0, 1) for pct.
    """
    if not from_domain:
        return DMARCResult("permerror", "", reason="no single From domain")
    from_domain = from_domain.lower().rstrip(".")
    try:
        policy, subdomain = await fetch_policy(from_domain, dns)
    except TemporaryDNSError as e:
        return DMARCResult("temperror", from_domain, reason=str(e))
    if policy is None:
        return DMARCResult("none", from_domain, reason="no DMARC record")
    applied = policy.sp if subdomain else policy.p
    spf_ok = spf is not None and spf.result == "pass" and spf.identity == "mailfrom" \
        and aligned(spf.domain, from_domain, policy.aspf)
    dkim_ok = [r for r in dkim_results or () if r.result == "pass" and aligned(r.domain, from_domain, policy.adkim)]
    if spf_ok or dkim_ok:
        why = f"aligned {'spf' if spf_ok else 'dkim d=' + dkim_ok[0].domain}"
        return DMARCResult("pass", from_domain, applied, "none", why)
    disposition = applied
    if applied != "none" and policy.pct < 100 and rand() * 100 >= policy.pct:
        disposition = _WEAKER[applied]
    return DMARCResult("fail", from_domain, applied, disposition,
                       "neither SPF nor DKIM passed aligned with the From domain")


def author_domain(from_header):
    """The domain of the single address in a From header value, or '' (none or several)."""
    from email.utils import getaddresses
    addresses = [a for _n, a in getaddresses([from_header or ""]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return ""
    return addresses[0].rpartition("@")[2].strip().rstrip(">").lower()
