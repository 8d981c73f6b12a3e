"""DKIM (RFC 6376) with dkimpy: verify every signature of incoming mail, sign outbound mail.

Both are blocking (RSA, and dkimpy's DNS lookups through a dnspython Resolver asking the
``[dns] servers``): callers run them in the thread pool.
"""

from dataclasses import dataclass

from jdmail.filters.dnsutil import TemporaryDNSError, blocking_txt

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
        """The ``dkim=`` method result for Authentication-Results."""
        if self.result == "none":
            return "dkim=none"
        reason = f" reason=\"{self.reason}\"" if self.reason and self.result != "pass" else ""
        return f"dkim={self.result}{reason} header.d={self.domain} header.s={self.selector}"


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
