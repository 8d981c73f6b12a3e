"""DMARC (RFC 7489): the From domain's policy, applied with the SPF and DKIM results.

``evaluate_dmarc(from_domain, spf, dkim_results, dns)`` looks up ``_dmarc.<from domain>``
(then ``_dmarc.<organisational domain>``, whose ``sp=`` then applies), checks identifier
alignment (relaxed: same organisational domain, strict: same name) and returns a
:class:`DMARCResult` with the disposition after ``pct`` sampling. The organisational
domain comes from the Public Suffix List bundled with ``publicsuffixlist`` (no network).
"""

import random
from dataclasses import dataclass

from zope.interface import implementer

from jdmail.filters.dnsutil import TemporaryDNSError, async_dns_for, trusted_client
from jdmail.interfaces import AuthResult, IFilter, IFilterFactory, Option, Stage, Verdict

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
        """The ``dmarc=`` method result for Authentication-Results, an AuthResult (the
        policy and disposition go in the reason, as ``p=reject dis=none``)."""
        reason = f"p={self.policy} dis={self.disposition}" if self.result in ("pass", "fail") else ""
        return AuthResult("dmarc", self.result, reason, (("header.from", self.from_domain or "unknown"),))


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


# --- the filter ------------------------------------------------------------------------------

def _spf_from(auth_results):
    """The SPF result earlier filters recorded (an SPFResult-like value), or None."""
    from jdmail.filters.spf import SPFResult
    for r in auth_results:
        if r.method == "spf":
            props = dict(r.properties)
            if "smtp.mailfrom" in props:
                return SPFResult(r.result, "mailfrom", props["smtp.mailfrom"].rpartition("@")[2].lower(),
                                 sender=props["smtp.mailfrom"])
            return SPFResult(r.result, "helo", props.get("smtp.helo", "").lower(), helo=props.get("smtp.helo", ""))
    return None


def _dkim_from(auth_results):
    from jdmail.filters.dkim import DKIMResult
    out = []
    for r in auth_results:
        if r.method == "dkim":
            props = dict(r.properties)
            out.append(DKIMResult(r.result, props.get("header.d", "").lower(), props.get("header.s", "")))
    return out


@implementer(IFilter)
class DMARCFilter:
    """At DATA, after the spf and dkim filters in the chain (it reads their
    Authentication-Results), applies the From domain's DMARC policy: p=reject refuses
    (550 5.7.1), p=quarantine quarantines, p=none only records ``dmarc=``."""

    def __init__(self, name, dns, on_reject="reject", on_quarantine="quarantine", rand=random.random):
        self.name, self.dns, self.rand = name, dns, rand
        self.on_reject, self.on_quarantine = on_reject, on_quarantine
        self.stages = frozenset({Stage.DATA})

    async def check(self, stage, txn):
        if trusted_client(txn):
            return Verdict.CONTINUE
        earlier = tuple(getattr(txn.filter_results, "auth_results", ()))
        domain = author_domain(txn.headers.get("From", "") if txn.headers is not None else "")
        result = await evaluate_dmarc(domain, _spf_from(earlier), _dkim_from(earlier), self.dns, self.rand)
        kw = dict(auth_results=(result.auth_result(),), reason=f"dmarc={result.result} from={domain or '-'} "
                  f"policy={result.policy} disposition={result.disposition}: {result.reason}")
        action = {"reject": self.on_reject, "quarantine": self.on_quarantine}.get(result.disposition, "continue")
        if action == "reject":
            return Verdict.reject("Message rejected: it fails the DMARC policy of its From domain",
                                  code=550, enhanced="5.7.1", **kw)
        if action == "quarantine":
            return Verdict.quarantine(**kw)
        if action == "tag":
            return Verdict(spam=True, tests=("DMARC_" + result.disposition.upper(),), **kw)
        return Verdict(**kw)


@implementer(IFilterFactory)
class DMARCFilterFactory:
    kind = "dmarc"
    description = "Apply the From domain's DMARC policy (RFC 7489) to the SPF and DKIM results."
    options = {
        "on_reject": Option.choice(("reject", "quarantine", "tag", "continue"), default="reject",
                                   help="what a failing message under p=reject gets"),
        "on_quarantine": Option.choice(("quarantine", "tag", "continue"), default="quarantine",
                                       help="what a failing message under p=quarantine gets"),
    }

    def build(self, name, settings, services):
        return DMARCFilter(name, async_dns_for(services), settings["on_reject"], settings["on_quarantine"])
