"""SPF (RFC 7208) with pyspf, asking the ``[dns] servers`` through dnspython.

pyspf is the reference implementation the RFC's test suite was written against, it is
what pypolicyd-spf (Debian's policyd-spf) runs, and it takes dnspython for lookups. Its
lookup function is a module global, so :func:`check_spf` installs one dispatcher that
uses the Resolver of the calling thread (set around each check), letting filters with
different DNS settings share the process. The check is blocking: run it in the pool.
"""

import threading
from dataclasses import dataclass

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
        """The ``spf=`` method result for Authentication-Results (RFC 8601)."""
        prop = f"smtp.mailfrom={self.sender}" if self.identity == "mailfrom" else f"smtp.helo={self.helo}"
        return f"spf={self.result} {prop}"


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
