"""Where mail for a domain goes: MX lookup with ``twisted.names`` (RFC 5321 5.1, RFC 7505).

``resolve_mx(domain, resolver)`` -> ``[(preference, host), ...]``:

- MX records sorted by preference, equal preferences in random order (load spreading);
- no MX records (NOERROR, empty answer) -> ``[(0, domain)]``: the domain's own A/AAAA
  is the implicit MX;
- a null MX (one MX with exchange ".", RFC 7505) -> :class:`NullMX` (bounce at once);
  "." entries among real MX records are ignored;
- NXDOMAIN -> :class:`PermanentDNSError`; SERVFAIL, REFUSED, time-outs and the like
  -> :class:`TemporaryDNSError` (retry later).

``resolve_addresses(host, resolver)`` -> the host's A addresses, then its AAAA ones.

The resolver is any ``twisted.names`` resolver (``IResolver``); ``None`` means
``twisted.names.client.getResolver()`` (/etc/resolv.conf). Tests pass
``tests.fixtures.dns.resolver_for(port)``.
"""

import random

from twisted.internet import defer
from twisted.names import dns, error


class DNSError(Exception):
    """A DNS lookup failed."""


class TemporaryDNSError(DNSError):
    """SERVFAIL, time-out, refused...: try again later."""


class PermanentDNSError(DNSError):
    """NXDOMAIN: the name does not exist."""


class NullMX(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


def _ascii(name):
    name = name.strip().rstrip(".")
    try:
        name.encode("ascii")
        return name
    except UnicodeEncodeError:
        return name.encode("idna").decode("ascii")


def _default(resolver):
    if resolver is None:
        from twisted.names import client
        resolver = client.getResolver()
    return resolver


def _classify(failure, what):
    """Turn a twisted.names failure into our exception (raised)."""
    exc = failure.value if hasattr(failure, "value") else failure
    if isinstance(exc, error.DNSNameError):
        raise PermanentDNSError(f"{what}: no such domain (NXDOMAIN)")
    if isinstance(exc, error.DNSServerError):
        raise TemporaryDNSError(f"{what}: server failure (SERVFAIL)")
    if isinstance(exc, (error.DNSQueryTimeoutError, defer.TimeoutError)):
        raise TemporaryDNSError(f"{what}: DNS time-out")
    if isinstance(exc, error.DNSQueryRefusedError):
        raise TemporaryDNSError(f"{what}: query refused")
    raise TemporaryDNSError(f"{what}: DNS error {exc.__class__.__name__}: {exc}")


async def resolve_mx(domain, resolver=None):
    """Return ``[(preference, host)]`` for ``domain`` (see the module docstring)."""
    resolver = _default(resolver)
    name = _ascii(domain)
    try:
        answers, _auth, _add = await resolver.lookupMailExchange(name)
    except Exception as e:  # noqa: BLE001 - classified below
        _classify(e, f"MX {name}")
    mxs = [(rr.payload.preference, str(rr.payload.name).rstrip("."))
           for rr in answers if rr.type == dns.MX]
    if not mxs:
        return [(0, name)]
    real = [(p, h) for p, h in mxs if h not in ("", ".")]
    if not real:
        raise NullMX(f"{name} does not accept mail (null MX, RFC 7505)")
    by_pref = {}
    for p, h in real:
        by_pref.setdefault(p, []).append(h.lower())
    out = []
    for p in sorted(by_pref):
        hosts = list(dict.fromkeys(by_pref[p]))
        random.shuffle(hosts)
        out.extend((p, h) for h in hosts)
    return out


async def resolve_addresses(host, resolver=None):
    """Return the A addresses of ``host`` then its AAAA addresses (strings).

    An empty list when the name exists but has no address. Raises
    :class:`PermanentDNSError` for NXDOMAIN and :class:`TemporaryDNSError` when a lookup
    failed temporarily and no address was found by the other one.
    """
    resolver = _default(resolver)
    name = _ascii(host)
    results = await defer.DeferredList(
        [defer.ensureDeferred(_lookup(resolver.lookupAddress, name, dns.A)),
         defer.ensureDeferred(_lookup(resolver.lookupIPV6Address, name, dns.AAAA))],
        consumeErrors=True)
    addresses, errors = [], []
    for ok, value in results:
        if ok:
            addresses.extend(a for a in value if a not in addresses)
        else:
            errors.append(value.value)
    if addresses:
        return addresses
    temporary = [e for e in errors if isinstance(e, TemporaryDNSError)]
    if temporary:
        raise temporary[0]
    if errors and len(errors) == 2:
        raise errors[0]
    return []


async def _lookup(method, name, rtype):
    try:
        answers, _auth, _add = await method(name)
    except Exception as e:  # noqa: BLE001
        _classify(e, f"{'A' if rtype == dns.A else 'AAAA'} {name}")
    return [rr.payload.dottedQuad() if rtype == dns.A else _aaaa(rr.payload)
            for rr in answers if rr.type == rtype]


def _aaaa(payload):
    import socket
    return socket.inet_ntop(socket.AF_INET6, payload.address)
