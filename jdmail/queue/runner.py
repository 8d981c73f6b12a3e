"""The queue runner (issue 4): delivers due messages from the QueueStore.

Every ``scan_interval`` the runner asks the store for due messages it is not already
working on (kept in ``self.active``), and for each one:

* resolves every due recipient: a local address (a DSN to a local sender, a
  ``local`` route) goes to the message store; an unknown local one bounces; a remote
  one is routed with the RoutingTable (direct, relay, local, reject);
* groups the remote recipients by destination (the recipient domain for direct
  delivery, the relay's name for a relay) into one SMTP transaction each, run under
  the global and per-destination concurrency limits;
* records the outcome: 2xx delivered, 5xx bounced, 4xx or a connection-level
  failure deferred with backoff -- or bounced once the message's lifetime is over;
* sends the DSNs before ``record`` (which removes the file when nothing is left):
  failures (per NOTIFY), success notices when asked for, and one delay warning
  after ``delay_warning``. A DSN is itself queued, from the null sender, to the
  original sender -- never to the null sender.
"""

import dataclasses
import os

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from jdmail.interfaces import Envelope, Resolution
from jdmail.queue import dsn
from jdmail.queue.client import TemporaryDeliveryError, deliver_to_domain, deliver_to_host
from jdmail.queue.downgrade import to_7bit
from jdmail.queue.pool import ConnectionCache
from jdmail.queue.store import OPEN_STATES
from jdmail.smtp.spool import new_queue_id

log = Logger()

STOP_GRACE = 5.0          # seconds stopService waits for deliveries in progress
LIFETIME_TEXT = dsn.EXPIRED + "{error}"


def _domain(address):
    return address.rpartition("@")[2].lower()


class QueueRunner(service.Service):
    """Runs the outbound queue while the server runs.

    ``settings``: the ``[queue]`` section. ``routing``: a RoutingTable. ``directory``
    and ``store``: for recipients that turn out to be local. ``resolver``: a
    twisted.names resolver (None: the system's). Time is ``reactor.seconds()``, so a
    ``twisted.internet.task.Clock`` drives it in tests; ``deliver_to_domain`` and
    ``deliver_to_host`` are attributes for the same reason.
    """

    deliver_to_domain = staticmethod(deliver_to_domain)
    deliver_to_host = staticmethod(deliver_to_host)

    def __init__(self, queue, services, settings, routing, *, directory=None, store=None,
                 resolver=None, spool_dir=None, reactor=None, limit=None):
        self.queue = queue
        self.services = services
        self.reactor = reactor or services.reactor
        self.settings = settings
        self.routing = routing
        self.directory = directory
        self.store = store
        self.resolver = resolver
        self.spool_dir = spool_dir or os.path.join(services.datadir, "spool", "incoming")
        self.hostname = services.hostname
        self.active = set()                 # queue ids being worked on: due() may return them again
        self._global = defer.DeferredSemaphore(max(1, settings["concurrency"]))
        self._per_destination = {}
        self._limit = limit or max(100, 4 * settings["concurrency"])
        self._scanning = False
        self._loop = None
        self._running = set()               # Deferreds of messages in progress
        self.connections = ConnectionCache(self.reactor, settings.get("connection_reuse_time", 0.0),
                                           max_idle=max(1, settings["per_destination"]))

    # --- service ------------------------------------------------------------------------

    def startService(self):
        super().startService()
        os.makedirs(self.spool_dir, exist_ok=True)
        _removed, lost = self.queue.recover()
        self._loop = task.LoopingCall(self.scan)
        self._loop.clock = self.reactor
        d = self._loop.start(self.settings["scan_interval"], now=False)
        d.addErrback(lambda f: log.failure("queue runner loop stopped", f))
        for message in lost:
            self._track(self._lost(message))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        closing = self.connections.close_all()
        running = list(self._running)
        if not running:
            return closing
        # Give transactions in progress a moment; the rest are attempted again after the
        # restart (at least once: a message is removed only once recorded).
        d = defer.DeferredList(running, consumeErrors=True)
        d.addTimeout(STOP_GRACE, self.reactor)
        d.addErrback(lambda _f: None)
        return d

    def _track(self, coro):
        d = defer.ensureDeferred(coro)
        self._running.add(d)

        def done(result):
            self._running.discard(d)
            return result
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("queue runner: unexpected error", f))
        return d

    # --- scanning -----------------------------------------------------------------------

    def scan(self):
        """One scan (also callable from tests); returns a Deferred firing when the scan
        has started the due messages (not when they are done)."""
        if self._scanning or not self.running:
            return None
        self._scanning = True

        def finished(result):
            self._scanning = False
            return result
        d = defer.ensureDeferred(self._scan())
        d.addBoth(finished)
        d.addErrback(lambda f: log.failure("queue scan failed", f))
        return d

    async def _scan(self):
        if len(self.active) >= self._limit:
            return
        now = self.reactor.seconds()
        due = await self.queue.due(now, self._limit + len(self.active))
        for message in due:
            if message.queue_id in self.active or len(self.active) >= self._limit:
                continue
            self.active.add(message.queue_id)
            self._track(self._attempt(message))

    def idle(self):
        """True when nothing is being delivered."""
        return not self.active and not self._running

    # --- one message --------------------------------------------------------------------

    async def _attempt(self, message):
        try:
            await self._attempt_message(message)
        finally:
            self.active.discard(message.queue_id)

    async def _attempt_message(self, message):
        now = self.reactor.seconds()
        due = [r for r in message.recipients if r.state in OPEN_STATES and r.next_attempt <= now]
        if not due:
            return
        outcome = {}            # address -> (code, text)
        local, groups = [], {}
        for rcpt in due:
            kind, target = await self._classify(message.sender, rcpt.address)
            if kind == "result":
                outcome[rcpt.address] = target
            elif kind == "local":
                local.append((rcpt.address, target))
            else:
                groups.setdefault(kind, (target, []))[1].append(rcpt.address)
        work = []
        if local:
            work.append(self._deliver_local(message, local))
        for key, (route, addresses) in groups.items():
            work.append(self._deliver_remote(message, key, route, addresses))
        for part in await defer.gatherResults([defer.ensureDeferred(w) for w in work],
                                             consumeErrors=True):
            outcome.update(part)
        await self._finish(message, due, outcome)

    async def _classify(self, sender, address):
        """('result', (code, text)) | ('local', mailboxes) | (group key, route)."""
        route = self.routing.route(sender, address) if self.routing is not None else None
        if route is not None and route.kind == "reject":
            return "result", (550, f"550 5.7.1 {route.text}")
        if self.directory is not None:
            try:
                resolution = await self.directory.resolve(address)
            except Exception as e:
                return "result", (451, f"451 4.3.0 directory lookup failed: {e}")
            if resolution.kind == Resolution.Kind.UNKNOWN:
                return "result", (550, "550 5.1.1 User unknown")
            if resolution.kind == Resolution.Kind.LOCAL:
                return "local", resolution
        if route is not None and route.kind == "local":
            return "result", (550, "550 5.1.1 User unknown (routed local, not a local address)")
        if route is not None and route.kind == "relay":
            return ("relay", route.relay.name), route
        return ("direct", _domain(address)), route

    async def _deliver_local(self, message, local):
        mailboxes = []
        for _address, resolution in local:
            for m in resolution.mailboxes:
                if m not in mailboxes:
                    mailboxes.append(m)
        path = self.queue._file(message.queue_id)
        try:
            if mailboxes:
                await self.store.deliver(mailboxes, path)
        except Exception as e:
            log.failure("queue local delivery failed id={id}", id=message.queue_id)
            return {a: (451, f"451 4.3.0 local delivery failed: {e}") for a, _r in local}
        results = {a: (250, "250 2.0.0 delivered locally") for a, _r in local}
        for address, resolution in local:
            if resolution.remote:   # an alias forwarding to remote addresses: queue them
                try:
                    await self._enqueue_bytes_file(message, path, resolution.remote)
                except Exception as e:
                    results[address] = (451, f"451 4.3.0 forwarding failed: {e}")
        return results

    async def _enqueue_bytes_file(self, message, path, addresses):
        queue_id = new_queue_id()
        temp = os.path.join(self.spool_dir, queue_id)
        await self.services.run_blocking(os.link, path, temp)
        try:
            await self.queue.enqueue(Envelope(queue_id, message.sender, smtputf8=message.smtputf8),
                                     temp, list(addresses))
        finally:
            await self.services.run_blocking(os.unlink, temp)

    def _semaphore(self, key):
        sem = self._per_destination.get(key)
        if sem is None:
            sem = self._per_destination[key] = defer.DeferredSemaphore(
                max(1, self.settings["per_destination"]))
        return sem

    async def _deliver_remote(self, message, key, route, addresses):
        # The destination's slot first: waiting for a busy destination must not hold one
        # of the global slots, or mail to other destinations would wait behind it.
        sem = self._semaphore(key)
        await sem.acquire()
        try:
            await self._global.acquire()
            try:
                return await self._transaction(message, key, route, addresses)
            finally:
                self._global.release()
        finally:
            sem.release()

    async def _transaction(self, message, key, route, addresses):
        s = self.settings
        path = self.queue._file(message.queue_id)
        opener = lambda: self.services.run_blocking(open_outbound, path)   # noqa: E731
        try:
            eightbit, header8bit = await self.services.run_blocking(scan_8bit, path)
        except OSError:
            eightbit = header8bit = False
        smtputf8 = needs_smtputf8(message, addresses, header8bit)
        content = dict(eightbit=eightbit, smtputf8=smtputf8,
                       downgrade=lambda: self.services.run_blocking(downgrade_file, path))
        common = dict(timeout=s.get("timeout", 300), bind_address=s["source_address"] or None,
                      keep=self.connections.enabled, **content)
        session = await self.connections.take(key) if self.connections.enabled else None
        try:
            if session is not None:
                result = await session.deliver(message.sender, addresses, opener, message.size, **content)
                result.mx = session.mx
            elif route is not None and route.kind == "relay":
                relay = route.relay
                auth = (relay.username, relay.password or "") if relay.username else None
                if relay.mx_lookup:
                    result = await self.deliver_to_domain(
                        self.reactor, relay.host, message.sender, addresses, opener, message.size,
                        s["helo"], resolver=self.resolver, port=relay.port,
                        require_tls=relay.tls == "required", implicit_tls=relay.tls == "implicit",
                        auth=auth, **common)
                else:
                    result = await self.deliver_to_host(
                        self.reactor, relay.host, relay.port, message.sender, addresses, opener,
                        message.size, s["helo"], require_tls=relay.tls == "required",
                        implicit_tls=relay.tls == "implicit", auth=auth, **common)
            else:
                result = await self.deliver_to_domain(
                    self.reactor, key[1], message.sender, addresses, opener, message.size, s["helo"],
                    resolver=self.resolver, port=s["smtp_port"], **common)
            if session is None:
                session = result.session
        except TemporaryDeliveryError as e:
            log.info("queue deferred id={id} to={dest}: {reason}", id=message.queue_id,
                     dest=key[1], reason=e.reason)
            return {a: (e.code if e.code and 400 <= e.code < 500 else 451, e.reason) for a in addresses}
        except Exception as e:
            log.failure("queue delivery error id={id} to={dest}", id=message.queue_id, dest=key[1])
            return {a: (451, f"451 4.4.0 delivery error: {e}") for a in addresses}
        finally:
            if session is not None:
                self.connections.give(key, session)      # kept for the next one, or closed
        host = result.mx or result.host
        out = {}
        for address in addresses:
            code, enhanced, text = result.results.get(address, (451, "4.4.0", "no answer"))
            if result.local:      # our decision about this server: no "said", no SMTP code
                out[address] = (code, f"{enhanced} {text} ({host})")
            else:
                out[address] = (code, f"{host} said: {code} {enhanced} {text}".strip())
        log.info("queue attempt id={id} to={dest} via={host} accepted={ok} temporary={tmp} permanent={bad}",
                 id=message.queue_id, dest=key[1], host=host, ok=len(result.accepted()),
                 tmp=len(result.temporary()), bad=len(result.permanent()))
        return out

    # --- recording and DSNs -------------------------------------------------------------

    async def _finish(self, message, due, outcome):
        now = self.reactor.seconds()
        s = self.settings
        expired = self.queue.expired(message, now, s["lifetime"])
        results, updated = {}, {}
        for rcpt in due:
            code, text = outcome.get(rcpt.address, (451, "451 4.4.0 not attempted"))
            if 200 <= code < 300:
                state, nxt = "delivered", 0.0
            elif code >= 500:
                state, nxt = "bounced", 0.0
            elif expired:
                state, nxt, text = "bounced", 0.0, LIFETIME_TEXT.format(error=text)
            else:
                state, nxt = "deferred", self.queue.next_attempt(rcpt.attempts + 1, now)
            results[rcpt.address] = (state, text, nxt)
            updated[rcpt.address] = dataclasses.replace(rcpt, state=state, last_error=text,
                                                        attempts=rcpt.attempts + 1, next_attempt=nxt)
        current = dataclasses.replace(
            message, recipients=[updated.get(r.address, r) for r in message.recipients])
        bounced = [r for r in updated.values() if r.state == "bounced"]
        delivered = [r for r in updated.values() if r.state == "delivered"]
        deferred = [r for r in current.recipients if r.state == "deferred"]
        try:
            await self._notify(dsn.FAILURE, current, bounced, now)
            await self._notify(dsn.SUCCESS, current, delivered, now)
            if (s["delay_warning"] > 0 and not message.warned and deferred
                    and now - message.arrived >= s["delay_warning"]):
                await self._notify(dsn.DELAY, current, deferred, now)
                await self.queue.set_warned(message.queue_id)
        except Exception:
            # Not recorded: the DSN is retried with the message on a later attempt.
            log.failure("queue: could not queue a DSN for {id}; retrying later", id=message.queue_id)
            results = {a: ("deferred", t, self.queue.next_attempt(1, now))
                       for a, (_st, t, _n) in results.items()}
        await self.queue.record(message.queue_id, results)

    async def _notify(self, kind, message, recipients, now, original_missing=False):
        wanted = dsn.notice_recipients(kind, message, recipients)
        if not wanted:
            return None
        try:
            original = await self.queue.open_message(message.queue_id)
        except FileNotFoundError:
            original = None
        try:
            data = await self.services.run_blocking(
                dsn.build_dsn, kind, message, wanted, original, self.hostname, now,
                lifetime=self.settings["lifetime"])
        finally:
            if original is not None:
                original.close()
        return await self.send_dsn(message.sender, data)

    async def send_dsn(self, to, data):
        """Queue ``data`` (a complete message) from the null sender to ``to``."""
        if not (to or "").strip("<> "):
            return None                     # never a bounce to the null sender
        queue_id = new_queue_id()
        path = os.path.join(self.spool_dir, queue_id)

        def write():
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        await self.services.run_blocking(write)
        try:
            queued = await self.queue.enqueue(Envelope(queue_id, ""), path, [to])
        finally:
            await self.services.run_blocking(_unlink_quietly, path)
        log.info("queue dsn id={id} to={to}", id=queue_id, to=to)
        return queued

    async def _lost(self, message):
        """A message whose file vanished (recover): bounce what was open, then delete."""
        bounced = [r for r in message.recipients if r.state == "bounced"]
        try:
            await self._notify(dsn.FAILURE, message, bounced, self.reactor.seconds())
        finally:
            await self.queue.delete(message.queue_id)


_LOCAL_TRACE = (b"return-path:", b"delivered-to:")


def open_outbound(path):
    """The queued file positioned after our leading Return-Path:/Delivered-To: lines:
    they belong to final delivery (RFC 5321 4.4), not to mail handed on."""
    f = open(path, "rb")
    try:
        while True:
            pos = f.tell()
            line = f.readline(4096)
            if not line.lower().startswith(_LOCAL_TRACE):
                f.seek(pos)
                return f
    except BaseException:
        f.close()
        raise


def downgrade_file(path):
    """The outbound message converted to 7-bit for a server without 8BITMIME, or None."""
    with open_outbound(path) as f:
        return to_7bit(f.read())


def scan_8bit(path):
    """(any 8-bit octet in the file, any in its header section). 8-bit content makes
    MAIL say BODY=8BITMIME (a server without 8BITMIME gets it converted to 7-bit, or
    no copy when that is impossible: 5.6.3); an 8-bit
    header in a message received with SMTPUTF8 needs SMTPUTF8 on the way out too."""
    eightbit = header8bit = False
    in_header, tail = True, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(256 * 1024)
            if not chunk:
                break
            if in_header:
                data = tail + chunk
                end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0),
                          default=-1)
                if end >= 0:
                    in_header = False
                    header8bit = not data[:end].isascii()
                elif not data.isascii():
                    header8bit = True
                    in_header = False
                tail = data[-3:]
            if not chunk.isascii():
                eightbit = True
                if not in_header:
                    break
    return eightbit, header8bit


def needs_smtputf8(message, addresses, header8bit):
    """RFC 6531: a non-ASCII envelope address, or a message received with SMTPUTF8 whose
    header has UTF-8 in it, can only go to a server that offers SMTPUTF8."""
    if not (message.sender or "").isascii() or not all(a.isascii() for a in addresses):
        return True
    return bool(message.smtputf8 and header8bit)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_resolver(servers):
    """A twisted.names resolver for [(host, port)], or None (the system resolver)."""
    if not servers:
        return None
    from twisted.names import client
    return client.Resolver(servers=list(servers))
