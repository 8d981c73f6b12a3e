"""DNS for the antispam filters: the ``[dns] servers`` the admin configured, two ways.

- :class:`AsyncDNS` asks with ``twisted.names`` (never blocks the reactor); the DNSBL
  and HELO checks use it.
- :func:`blocking_resolver` is a dnspython ``Resolver`` for the same servers, for the
  blocking libraries (pyspf, dkimpy) that run in the thread pool.

Both treat NXDOMAIN and "no record of that type" as an empty answer and raise
:class:`TemporaryDNSError` for SERVFAIL, refusals and time-outs, so a filter can tell
"not listed" from "could not ask".
"""

import ipaddress
import socket

from twisted.internet import defer
from twisted.names import dns, error


class TemporaryDNSError(Exception):
    """The DNS could not answer now (SERVFAIL, time-out, refused)."""


def servers_from_config(config):
    """``[dns] servers`` -> [(host, port)] (empty: the system resolver)."""
    from jdmail.config import dns_servers
    return dns_servers(config) if config is not None else []


def twisted_resolver(servers, timeout=(1, 3)):
    """A twisted.names resolver for [(host, port)]; the system's when ``servers`` is empty."""
    from twisted.names import client
    if not servers:
        return client.getResolver()
    return client.Resolver(servers=list(servers), timeout=timeout)


def blocking_resolver(servers, timeout=5.0):
    """A dnspython Resolver asking [(host, port)] (or /etc/resolv.conf when empty)."""
    import dns.resolver as dnsresolver
    if not servers:
        resolver = dnsresolver.Resolver()
    else:
        resolver = dnsresolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _port in servers]
        resolver.nameserver_ports = {host: port for host, port in servers}
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)
    return resolver


def blocking_txt(resolver, name):
    """TXT strings of ``name`` (each record's character-strings joined) with dnspython;
    [] for NXDOMAIN/no record, TemporaryDNSError when the DNS cannot answer."""
    import dns.exception
    import dns.resolver as dnsresolver
    try:
        answer = resolver.resolve(name, "TXT", raise_on_no_answer=False, search=False)
    except dnsresolver.NXDOMAIN:
        return []
    except (dnsresolver.NoNameservers, dns.exception.Timeout, dnsresolver.NoResolverConfiguration) as e:
        raise TemporaryDNSError(f"TXT {name}: {e.__class__.__name__}") from None
    if answer.rrset is None:
        return []
    return [b"".join(r.strings) for r in answer.rrset]


def _classify(exc, what):
    if isinstance(exc, error.DNSNameError):
        return None                                   # NXDOMAIN: an empty answer
    if isinstance(exc, error.DNSServerError):
        return TemporaryDNSError(f"{what}: server failure (SERVFAIL)")
    if isinstance(exc, (error.DNSQueryTimeoutError, defer.TimeoutError)):
        return TemporaryDNSError(f"{what}: DNS time-out")
    return TemporaryDNSError(f"{what}: DNS error {exc.__class__.__name__}")


class AsyncDNS:
    """Asynchronous A/AAAA/TXT/MX lookups on a twisted.names resolver."""

    def __init__(self, resolver):
        self.resolver = resolver

    async def _query(self, method, name, rtype, what):
        try:
            answers, _auth, _add = await getattr(self.resolver, method)(name)
        except Exception as e:  # noqa: BLE001 - classified
            problem = _classify(e, f"{what} {name}")
            if problem is None:
                return []
            raise problem from None
        return [rr.payload for rr in answers if rr.type == rtype]

    async def a(self, name):
        """IPv4 addresses of ``name`` (strings); [] when none."""
        return [p.dottedQuad() for p in await self._query("lookupAddress", name, dns.A, "A")]

    async def aaaa(self, name):
        """IPv6 addresses of ``name`` (strings); [] when none."""
        return [socket.inet_ntop(socket.AF_INET6, p.address)
                for p in await self._query("lookupIPV6Address", name, dns.AAAA, "AAAA")]

    async def txt(self, name):
        """TXT records of ``name``, each one's character-strings joined, as str."""
        return [b"".join(p.data).decode("utf-8", "replace")
                for p in await self._query("lookupText", name, dns.TXT, "TXT")]

    async def mx(self, name):
        """MX hosts of ``name``; [] when none."""
        return [str(p.name) for p in await self._query("lookupMailExchange", name, dns.MX, "MX")]

    async def exists(self, name):
        """True when ``name`` has an A, AAAA or MX record (the HELO "forward DNS" test)."""
        for method in (self.a, self.aaaa, self.mx):
            if await method(name):
                return True
        return False


def reverse_name(ip, zone):
    """The DNSBL query name of ``ip`` under ``zone`` (RFC 5782): IPv4 octets reversed,
    IPv6 as 32 reversed nibbles. ('192.0.2.1', 'bl.test') -> '1.2.0.192.bl.test'."""
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    labels = address.reverse_pointer.rsplit(".", 2)[0]       # drop in-addr.arpa / ip6.arpa
    return f"{labels}.{zone.strip('.')}"


def client_address(ip):
    """An ip_address for the client's address (IPv4-mapped IPv6 unwrapped), or None."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def async_dns_for(services):
    """An AsyncDNS on the ``[dns] servers`` of ``services.config``."""
    return AsyncDNS(twisted_resolver(servers_from_config(getattr(services, "config", None))))


def blocking_resolver_for(services, timeout=5.0):
    """A dnspython Resolver on the ``[dns] servers`` of ``services.config``."""
    return blocking_resolver(servers_from_config(getattr(services, "config", None)), timeout)


def trusted_client(txn):
    """True for mail the antispam checks leave alone: an authenticated client, or one in
    ``[smtp] mynetworks`` (``txn.outbound``, known from MAIL on)."""
    return bool(getattr(txn, "auth_user", "")) or bool(getattr(txn, "outbound", False))
