"""DKIM (RFC 6376) with dkimpy: verify every signature of incoming mail, sign outbound mail.

Both are blocking (RSA, and dkimpy's DNS lookups through a dnspython Resolver asking the
``[dns] servers``): callers run them in the thread pool.
"""

from dataclasses import dataclass

from zope.interface import implementer

from jdmail.filters import dkim_keys
from jdmail.filters.dnsutil import TemporaryDNSError, blocking_resolver_for, blocking_txt, trusted_client
from jdmail.interfaces import AuthResult, IFilter, IFilterFactory, Option, Stage, Verdict

SIGNED_HEADERS = (b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
                  b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to",
                  b"references", b"list-id", b"list-unsubscribe")


@dataclass(frozen=True)
class DKIMResult:
    """One signature's outcome: ``result`` is an RFC 8601 dkim result (pass, fail, neutral,
    temperror, permerror, or none when the message has no signature)."""
    result: str
    domain: str = ""
    selector: str = ""
    reason: str = ""

    def auth_result(self):
        """The ``dkim=`` method result for Authentication-Results, an AuthResult."""
        if self.result == "none":
            return AuthResult("dkim", "none")
        reason = self.reason if self.result != "pass" else ""
        return AuthResult("dkim", self.result, reason,
                          (("header.d", self.domain), ("header.s", self.selector)))


def dns_function(resolver, seen=None):
    """dkimpy's ``dnsfunc(name, timeout=...)`` on our Resolver: the first TXT record's bytes.
    ``seen`` (a dict), when given, records the last answer ("record") or a DNS failure
    ("temperror"): dkimpy turns both a missing key and a time-out into a plain False."""
    import dkim

    def txt(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            records = blocking_txt(resolver, name.rstrip("."))
        except TemporaryDNSError as e:
            if seen is not None:
                seen["temperror"] = str(e)
            raise dkim.DnsTimeoutError(str(e)) from None
        record = records[0] if records else None
        if seen is not None:
            seen["record"], seen["name"] = record, name
        return record

    return txt


def verify_message(message, resolver, max_signatures=5):
    """Verify each DKIM-Signature of ``message`` (bytes). Returns [DKIMResult] (one
    ``none`` result when there is no signature)."""
    import dkim

    d = dkim.DKIM(message)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    if count == 0:
        return [DKIMResult("none")]
    results = []
    for idx in range(min(count, max_signatures)):
        d = dkim.DKIM(message, minkey=1024)
        seen = {}
        try:
            if d.verify(idx=idx, dnsfunc=dns_function(resolver, seen)):
                result, reason = "pass", ""
            else:
                result, reason = _why_false(dkim, seen)
        except dkim.ValidationError as e:
            result, reason = ("fail", "body hash mismatch") if "body hash" in str(e) else ("permerror", str(e))
        except dkim.DKIMException as e:
            result, reason = "permerror", str(e)
        results.append(DKIMResult(result, _text(d.domain), _text(d.selector), reason))
    return results


def _why_false(dkim, seen):
    """Tell apart the failures dkimpy reports as False."""
    if "temperror" in seen:
        return "temperror", "key lookup failed"
    if not seen.get("record"):
        return "permerror", "no key for signature"
    try:
        dkim.evaluate_pk(seen["name"].encode(), seen["record"])
    except Exception:  # noqa: BLE001 - any parse failure is a bad key record
        return "permerror", "bad key record"
    return "fail", "signature did not verify"


def _text(value):
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value or ""


def sign_message(message, domain, selector, private_pem, headers=SIGNED_HEADERS):
    """The ``DKIM-Signature: ...\\r\\n`` header (bytes) that signs ``message`` for ``domain``
    with relaxed/relaxed canonicalisation and rsa-sha256; prepend it to the message."""
    import dkim

    d = dkim.DKIM(message)
    present = {name.lower() for name, _ in d.headers}
    include = [h for h in headers if h in present]
    if b"from" not in include:
        include.insert(0, b"from")
    sig = d.sign(selector.encode(), domain.encode(), private_pem,
                 canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
    return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _read(txn):
    with txn.open_message() as f:
        return f.read()


def _from_domain(headers):
    from jdmail.filters.dmarc import author_domain
    return author_domain(headers.get("From", "") if headers is not None else "")


# --- the filter ------------------------------------------------------------------------------

@implementer(IFilter)
class DKIMFilter:
    """At DATA, verifies incoming mail's signatures (``Authentication-Results: dkim=``); at
    OUTBOUND (authenticated or mynetworks mail) signs with the key of the From domain
    (``jdmailctl dkim genkey``), when it has one."""

    def __init__(self, name, resolver, run_blocking, datadir, verify=True, sign=True, max_signatures=5):
        self.name, self.resolver, self.run_blocking, self.datadir = name, resolver, run_blocking, datadir
        self.verify, self.sign, self.max_signatures = verify, sign, max_signatures
        self.stages = frozenset(({Stage.DATA} if verify else set()) | ({Stage.OUTBOUND} if sign else set()))

    async def check(self, stage, txn):
        if stage == Stage.OUTBOUND:
            return await self._sign(txn)
        if trusted_client(txn):
            return Verdict.CONTINUE
        message = await self.run_blocking(_read, txn)
        results = await self.run_blocking(verify_message, message, self.resolver, self.max_signatures)
        why = "; ".join(f"{r.result} d={r.domain} s={r.selector}" + (f" ({r.reason})" if r.reason else "")
                        for r in results if r.result != "none") or "no signature"
        return Verdict(auth_results=tuple(r.auth_result() for r in results), reason=why)

    async def _sign(self, txn):
        domain = _from_domain(getattr(txn, "headers", None))
        if not domain:
            return Verdict(reason="not signed: no single From address")
        key = await self.run_blocking(dkim_keys.current_key, self.datadir, domain)
        if key is None:
            return Verdict(reason=f"not signed: no key for {domain}")
        selector, pem = key
        message = await self.run_blocking(_read, txn)
        header = await self.run_blocking(sign_message, message, domain, selector, pem)
        name, _, value = header.decode("ascii").partition(":")
        return Verdict.add_headers((name, value.strip()), reason=f"signed d={domain} s={selector}")


@implementer(IFilterFactory)
class DKIMFilterFactory:
    kind = "dkim"
    description = "Verify DKIM signatures of incoming mail and sign outbound mail with per-domain keys (dkimpy)."
    options = {
        "verify": Option.bool(default=True, help="verify the signatures of incoming mail "
                                                 "(Authentication-Results: dkim=...)"),
        "sign": Option.bool(default=True, help="sign authenticated/mynetworks mail whose From domain has a "
                                               "key (jdmailctl dkim genkey DOMAIN)"),
        "max_signatures": Option.int(default=5, help="signatures verified per message at most"),
    }

    def build(self, name, settings, services):
        return DKIMFilter(name, blocking_resolver_for(services), services.run_blocking, services.datadir,
                          settings["verify"], settings["sign"], settings["max_signatures"])
