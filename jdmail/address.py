"""Mail addresses: RFC 5321 path parsing and the normal form the directory keys on."""

import re

# RFC 5321 4.1.2 / RFC 5322 3.2.3 atext, plus UTF-8 (RFC 6531) when allowed.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"   # '-' escaped: more ranges follow in the UTF-8 class
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(\.[{_ATEXT}]+)*")
_DOT_ATOM_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LABEL_UTF8 = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*\.?")
_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3})\]")
_SOURCE_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")


class AddressError(ValueError):
    """An address that is not valid; str() is a sentence for the client or admin."""


def split_address(address):
    """'Local@Domain' -> ('Local', 'Domain'); the last '@' separates them."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(f"{address!r} is not of the form local-part@domain")
    return local, domain


def check_mailbox(address, utf8=False):
    """Raise AddressError unless ``address`` is an RFC 5321 Mailbox (RFC 6531 with ``utf8``)."""
    if len(address.encode("utf-8")) > 254:
        raise AddressError("address is longer than 254 octets")
    local, domain = split_address(address)
    atom = _DOT_ATOM_UTF8 if utf8 else _DOT_ATOM
    if not (atom.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise AddressError(f"{local!r} is not a valid local part")
    if len(local.encode("utf-8")) > 64:
        raise AddressError("local part is longer than 64 octets")
    dom = _DOMAIN_UTF8 if utf8 else _DOMAIN
    if not (dom.fullmatch(domain) or _ADDRESS_LITERAL.fullmatch(domain)):
        raise AddressError(f"{domain!r} is not a valid domain")


def parse_path(text, utf8=False, allow_null=False):
    """Parse an SMTP reverse-path or forward-path: '<a@b>' (or a bare a@b).

    Returns the address (str) or '' for the null path '<>' when ``allow_null``.
    A source route (<@x,@y:a@b>) is accepted and dropped (RFC 5321 4.1.1.3).
    Raises AddressError.
    """
    text = text.strip()
    if text.startswith("<"):
        if not text.endswith(">"):
            raise AddressError("path is missing its closing '>'")
        text = text[1:-1]
    if text == "":
        if allow_null:
            return ""
        raise AddressError("an empty address is not allowed here")
    route = _SOURCE_ROUTE.match(text)
    if route:
        text = text[route.end():]
    check_mailbox(text, utf8=utf8)
    return text


def normalize(address):
    """The directory's key for an address: lower-cased, trailing dot of the domain dropped.

    Local parts are compared case-insensitively, as Postfix and Dovecot do by default.
    """
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    return f"{local.lower()}@{normalize_domain(domain)}"


def normalize_domain(domain):
    """Lower-case, no trailing dot; IDNs stay in their Unicode form."""
    return domain.strip().rstrip(".").lower()


def domain_of(address):
    """The normalised domain of an address ('' when it has none)."""
    return normalize_domain(address.rpartition("@")[2]) if "@" in address else ""
