"""Greylisting (as postgrey does it): a new (client network, sender, recipient) triplet is
answered 451 4.7.1 until it comes back after ``delay``; real MTAs retry, most spamware
does not.

- the client is reduced to its /24 (IPv4) or /64 (IPv6), so a sender's pool of
  outbound servers counts as one;
- an unpassed triplet that does not come back within ``retry_window`` starts over;
  entries unseen for ``expiry`` are forgotten;
- a client network that passed ``auto_allow_after`` triplets is no longer greylisted
  (0: never auto-allowlisted);
- the state is in :mod:`jdmail.filters.greylist_store`, called through ``run_blocking``, in
  the directory's database (:mod:`jdmail.filters.statedb`: MySQL/MariaDB with a mysql
  directory, so several nodes share it; else SQLite).
"""

import ipaddress
import os
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.filters.dnsutil import client_address, trusted_client
from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

log = Logger()

GREYLIST_TEXT = "Greylisted: mail from new senders is delayed here; please try again in a few minutes"


def client_network(ip):
    """'192.0.2.77' -> '192.0.2.0/24'; '2001:db8:1:2:3::4' -> '2001:db8:1:2::/64';
    anything else is returned unchanged."""
    address = client_address(ip)
    if address is None:
        return str(ip)
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True)
class GreylistDecision:
    """``allow`` True to let the recipient through; ``why`` for the log; ``wait`` the
    seconds left before a retry is accepted (0 when allowed)."""
    allow: bool
    why: str
    wait: float = 0.0


class Greylist:
    """Decides per (client, sender, recipient); ``clock`` is an IReactorTime (seconds())."""

    def __init__(self, store, clock, run_blocking, delay=300.0, retry_window=2 * 86400.0,
                 expiry=35 * 86400.0, auto_allow_after=5, cleanup_interval=3600.0):
        self.store, self.clock, self.run_blocking = store, clock, run_blocking
        self.delay, self.retry_window, self.expiry = delay, retry_window, expiry
        self.auto_allow_after = auto_allow_after
        self.cleanup_interval = cleanup_interval
        self._last_cleanup = None

    async def check(self, ip, sender, recipient):
        """Return a GreylistDecision for one recipient."""
        now = self.clock.seconds()
        await self._maybe_cleanup(now)
        client = client_network(ip)
        sender, recipient = (sender or "").lower(), recipient.lower()
        if self.auto_allow_after:
            known = await self.run_blocking(self.store.client_passes, client)
            if known and known[0] >= self.auto_allow_after and now - known[1] < self.expiry:
                await self.run_blocking(self.store.touch_client, client, now)
                return GreylistDecision(True, f"client {client} auto-allowlisted after {known[0]} passes")
        row = await self.run_blocking(self.store.triplet, client, sender, recipient)
        if row is None:
            await self.run_blocking(self.store.record_attempt, client, sender, recipient, now)
            return GreylistDecision(False, f"new triplet {client} <{sender}> <{recipient}>", self.delay)
        first_seen, last_seen, passed = row
        if passed:
            if now - last_seen >= self.expiry:
                await self.run_blocking(self.store.restart, client, sender, recipient, now)
                return GreylistDecision(False, f"expired triplet {client} <{sender}> <{recipient}>", self.delay)
            await self.run_blocking(self.store.record_attempt, client, sender, recipient, now)
            return GreylistDecision(True, f"known triplet {client} <{sender}> <{recipient}>")
        if now - first_seen >= self.delay + self.retry_window:
            await self.run_blocking(self.store.restart, client, sender, recipient, now)
            return GreylistDecision(False, f"triplet {client} <{sender}> <{recipient}> not retried in time; "
                                    "starting over", self.delay)
        if now - first_seen < self.delay:
            await self.run_blocking(self.store.record_attempt, client, sender, recipient, now)
            wait = self.delay - (now - first_seen)
            return GreylistDecision(False, f"triplet {client} <{sender}> <{recipient}> retried too early "
                                    f"({wait:.0f}s left)", wait)
        passes = await self.run_blocking(self.store.mark_passed, client, sender, recipient, now)
        return GreylistDecision(True, f"triplet {client} <{sender}> <{recipient}> passed after "
                                f"{now - first_seen:.0f}s (client passes: {passes})")

    async def _maybe_cleanup(self, now):
        if self._last_cleanup is not None and now - self._last_cleanup < self.cleanup_interval:
            return
        self._last_cleanup = now
        await self.run_blocking(self.store.expire, now - self.expiry, now - self.expiry)


# --- the filter ------------------------------------------------------------------------------

@implementer(IFilter)
class GreylistFilter:
    """Answers 451 4.7.1 at RCPT for a triplet not seen before; authenticated and
    mynetworks clients are never greylisted."""

    def __init__(self, name, greylist):
        self.name, self.greylist = name, greylist
        self.stages = frozenset({Stage.RCPT})

    async def check(self, stage, txn):
        if trusted_client(txn):
            return Verdict.CONTINUE
        decision = await self.greylist.check(txn.client_ip, txn.sender, txn.recipient)
        if decision.allow:
            return Verdict(reason=decision.why)
        return Verdict.tempfail(GREYLIST_TEXT, code=451, enhanced="4.7.1", reason=decision.why)


def open_store(services):
    """The GreylistStore in the directory's database (jdmail.filters.statedb): its
    MySQL/MariaDB database, the SQLite directory's file, else ``<datadir>/greylist.sqlite``."""
    from jdmail.filters.greylist_store import GreylistStore, open_mysql, open_sqlite
    from jdmail.filters.statedb import mysql_state
    state = mysql_state(getattr(services, "config", None), "greylist")
    if state is not None:
        log.info("greylist: state in the directory's {where}", where=state.where)
        return open_mysql(state.kwargs)
    directory = getattr(services, "directory", None)
    backend = getattr(directory, "backend", directory)      # a DirectoryService, or a bare backend
    path = getattr(backend, "path", None)
    if not (isinstance(path, str) and path.endswith(".sqlite")):
        path = os.path.join(services.datadir, "greylist.sqlite")
    return GreylistStore(open_sqlite(path))


@implementer(IFilterFactory)
class GreylistFilterFactory:
    kind = "greylist"
    description = "Delay mail from new (client /24 or /64, sender, recipient) triplets with 451 4.7.1."
    options = {
        "delay": Option.duration(default=300.0, help="how long a new triplet is refused before a retry passes"),
        "retry_window": Option.duration(default=2 * 86400.0, help="a triplet not retried within this "
                                                                  "(after the delay) starts over"),
        "expiry": Option.duration(default=35 * 86400.0, help="triplets and allowlisted clients unseen "
                                                             "this long are forgotten"),
        "auto_allow_after": Option.int(default=5, help="a client network that passed this many triplets "
                                                       "is no longer greylisted; 0 = never"),
    }

    def build(self, name, settings, services):
        greylist = Greylist(open_store(services), services.reactor, services.run_blocking,
                            settings["delay"], settings["retry_window"], settings["expiry"],
                            settings["auto_allow_after"])
        return GreylistFilter(name, greylist)
