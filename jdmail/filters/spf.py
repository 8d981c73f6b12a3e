"""SPF (RFC 7208) with pyspf, asking the ``[dns] servers`` through dnspython.

pyspf is the reference implementation the RFC's test suite was written against, it is
what pypolicyd-spf (Debian's policyd-spf) runs, and it takes dnspython for lookups. Its
lookup function is a module global, so :func:`check_spf` installs one dispatcher that
uses the Resolver of the calling thread (set around each check), letting filters with
different DNS settings share the process. The check is blocking: run it in the pool.
"""

import threading
from dataclasses import dataclass

from zope.interface import implementer

from jdmail.filters.dnsutil import blocking_resolver_for, trusted_client
from jdmail.interfaces import AuthResult, IFilter, IFilterFactory, Option, Stage, Verdict

_local = threading.local()
_install_lock = threading.Lock()
_installed = False

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True)
class SPFResult:
    """One SPF evaluation: ``result`` (RFC 7208 2.6 name), the identity checked
    (``mailfrom`` or ``helo``), the domain, and pyspf's explanation."""
    result: str
    identity: str
    domain: str
    explanation: str = ""
    client_ip: str = ""
    sender: str = ""
    helo: str = ""

    def received_spf(self, receiver):
        """The Received-SPF header value (RFC 7208 9.1)."""
        comment = f"{receiver}: domain of {self.sender or 'postmaster@' + self.helo} " \
                  f"{_DESIGNATES.get(self.result, 'gives result ' + self.result)} {self.client_ip}"
        return (f"{self.result} ({comment}) client-ip={self.client_ip}; "
                f"envelope-from=\"{self.sender}\"; helo={self.helo or 'unknown'};")

    def auth_result(self):
        """The ``spf=`` method result for Authentication-Results (RFC 8601), an AuthResult."""
        prop = ("smtp.mailfrom", self.sender) if self.identity == "mailfrom" else ("smtp.helo", self.helo)
        return AuthResult("spf", self.result, properties=(prop,))


_DESIGNATES = {
    "pass": "designates",
    "fail": "does not designate",
    "softfail": "does not designate",
    "neutral": "is neutral about",
    "none": "does not publish SPF for",
}


def _install():
    global _installed
    with _install_lock:
        if _installed:
            return
        import spf
        original = spf.DNSLookup

        def lookup(name, qtype, *args, **kwargs):
            resolver = getattr(_local, "resolver", None)
            if resolver is None:
                return original(name, qtype, *args, **kwargs)
            return _dnspython_lookup(resolver, name, qtype, spf)

        spf.DNSLookup = lookup
        _installed = True


def _dnspython_lookup(resolver, name, qtype, spf):
    """pyspf's DNSLookup contract ([((name, qtype), value)]) on our Resolver."""
    import dns.exception
    import dns.resolver as dnsresolver
    out = []
    try:
        answer = resolver.resolve(name, qtype, raise_on_no_answer=False, search=False)
    except dnsresolver.NXDOMAIN:
        return out
    except (dns.exception.Timeout, dnsresolver.NoNameservers) as e:
        raise spf.TempError(f"DNS {e.__class__.__name__}") from None
    for rrset in answer.response.answer:
        owner = rrset.name.to_text(True)
        rtype = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            if rtype in ("A", "AAAA"):
                out.append(((owner, rtype), rdata.address))
            elif rtype == "MX":
                out.append(((owner, rtype), (rdata.preference, rdata.exchange.to_text(True))))
            elif rtype in ("PTR", "CNAME"):
                out.append(((owner, rtype), rdata.target.to_text(True)))
            elif rtype in ("TXT", "SPF"):
                out.append(((owner, rtype), rdata.strings))
    return out


def check_spf(ip, sender, helo, resolver, receiver="unknown", timeout=20):
    """Evaluate SPF for a client (blocking). ``sender`` '' (the null sender) checks the
    HELO identity, as RFC 7208 2.4 says. Returns an SPFResult."""
    import spf
    _install()
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2].lower() if sender else (helo or "").lower()
    _local.resolver = resolver
    try:
        q = spf.query(i=ip, s=sender or "", h=helo or "", receiver=receiver, timeout=timeout)
        result, _code, explanation = q.check()
    finally:
        _local.resolver = None
    return SPFResult(result, identity, domain, explanation, ip, sender or "", helo or "")


# --- the filter ------------------------------------------------------------------------------

ACTIONS = ("continue", "tag", "quarantine", "reject", "tempfail")
DEFAULT_ACTIONS = {"pass": "continue", "fail": "reject", "softfail": "tag", "neutral": "continue",
                   "none": "continue", "permerror": "continue", "temperror": "continue"}
_REFUSALS = {   # RFC 7372 codes
    "fail": (550, "5.7.23", "Message rejected: the sender's domain does not allow your address to send "
                            "its mail (SPF)"),
    "softfail": (550, "5.7.23", "Message rejected: the sender's domain does not allow your address to "
                                "send its mail (SPF)"),
    "permerror": (550, "5.7.24", "Message rejected: the sender's domain publishes a broken SPF record"),
    "temperror": (451, "4.7.24", "Cannot check the sender's SPF record now; try again later"),
}


@implementer(IFilter)
class SPFFilter:
    """Evaluates SPF once per transaction (at the first RCPT, in the thread pool), refuses
    there when the result's action says reject/tempfail, and at DATA records
    ``Authentication-Results: spf=...`` (and ``Received-SPF``), tags or quarantines.
    Authenticated and mynetworks clients are not checked."""

    def __init__(self, name, resolver, run_blocking, receiver, actions=None, tag_points=2.0, received_spf=True,
                 timeout=20.0):
        self.timeout = timeout
        self.name, self.resolver, self.run_blocking, self.receiver = name, resolver, run_blocking, receiver
        self.actions = dict(DEFAULT_ACTIONS, **(actions or {}))
        self.tag_points, self.received_spf = tag_points, received_spf
        self.stages = frozenset({Stage.RCPT, Stage.DATA})

    async def result(self, txn):
        """The transaction's SPFResult (evaluated once, kept in its notes)."""
        notes = txn.filter_results.notes
        if self.name not in notes:
            notes[self.name] = await self.run_blocking(check_spf, txn.client_ip, txn.sender or "",
                                                       getattr(txn, "helo", "") or "", self.resolver,
                                                       self.receiver, self.timeout)
        return notes[self.name]

    async def check(self, stage, txn):
        if trusted_client(txn):
            return Verdict.CONTINUE
        spf = await self.result(txn)
        action = self.actions.get(spf.result, "continue")
        why = f"spf={spf.result} {spf.identity}={spf.domain} ip={spf.client_ip}" + \
            (f": {spf.explanation}" if spf.explanation else "")
        if action in ("reject", "tempfail"):
            code, enhanced, text = _REFUSALS.get(spf.result, _REFUSALS["fail"])
            if action == "tempfail":
                code, enhanced = 451, "4.7.24"
                text = text if spf.result == "temperror" else "Cannot accept mail failing SPF now; try again later"
            make = Verdict.reject if action == "reject" else Verdict.tempfail
            return make(text, code=code, enhanced=enhanced, reason=why)
        if stage != Stage.DATA:
            return Verdict.CONTINUE
        headers = (("Received-SPF", spf.received_spf(self.receiver)),) if self.received_spf else ()
        kw = dict(headers=headers, auth_results=(spf.auth_result(),), reason=why)
        if action == "tag":
            return Verdict(score=self.tag_points, tests=("SPF_" + spf.result.upper(),), **kw)
        if action == "quarantine":
            return Verdict.quarantine(**kw)
        return Verdict(**kw)


@implementer(IFilterFactory)
class SPFFilterFactory:
    kind = "spf"
    description = "Check the sender's SPF record (RFC 7208) with pyspf; per-result actions."
    options = dict(
        {f"on_{result}": Option.choice(ACTIONS, default=DEFAULT_ACTIONS[result],
                                       help=f"what an SPF {result} result does: {', '.join(ACTIONS)}")
         for result in ("fail", "softfail", "neutral", "none", "permerror", "temperror")},
        tag_points=Option.float(default=2.0, help="spam score points a result whose action is 'tag' adds"),
        received_spf=Option.bool(default=True, help="also add a Received-SPF header (RFC 7208 9.1)"),
        lookup_timeout=Option.duration(default=20.0, help="DNS time allowed for one SPF evaluation"),
    )

    def build(self, name, settings, services):
        actions = {k[3:]: v for k, v in settings.items() if k.startswith("on_") and k[3:] in DEFAULT_ACTIONS}
        resolver = blocking_resolver_for(services, min(settings["lookup_timeout"], 10.0))
        return SPFFilter(name, resolver, services.run_blocking, services.hostname, actions,
                         settings["tag_points"], settings["received_spf"], settings["lookup_timeout"])
