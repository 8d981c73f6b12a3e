"""The outbound SMTP client: one transaction to one host, and delivery to a domain via its MX.

Why an own small protocol on ``LineReceiver`` and not ``twisted.mail.smtp.ESMTPClient``:
Twisted's client is built around a ``getMailFrom``/``getMailTo``/``sentMail`` callback
state machine that reports only the *accepted* addresses and one overall result; it
does not pipeline (RFC 2920), does not send ``SIZE=``/``BODY=8BITMIME`` on MAIL FROM,
does not stream dot-stuffing with flow control from an arbitrary file object, treats a
421 the same as any other failure, and has no clean "opportunistic STARTTLS, continue in
plaintext when it is refused" path. The queue needs the reply of every RCPT and the
final DATA reply per recipient, so a ~300-line explicit client is clearer and easier to
make correct than overriding most of ESMTPClient (see DESIGN.md: relaymanager is not
used either).

API::

    result = await deliver_to_host(reactor, host, port, sender, recipients, open_message,
                                   size, helo, tls_context=None, require_tls=False,
                                   implicit_tls=False, auth=None, timeout=300, eightbit=False,
                                   smtputf8=False, keep=False)
    result = await deliver_to_domain(reactor, domain, sender, recipients, open_message,
                                     size, helo, resolver=None, port=25, ...)
    result.results == {rcpt: (code, enhanced, text)}   # every recipient has an entry
    result.session                                     # keep=True: the open connection
    session = await connect_host(reactor, host, port, helo, ...)
    result = await session.deliver(sender, recipients, open_message, size)
    await session.reset(); await session.close()

``open_message()`` returns a binary file object (or an awaitable of one) positioned at
the start of the message; it is read in chunks, line endings normalised to CRLF and
dot-stuffed on the way out. Connection-level failures (refused, time-out, TLS
handshake, 421, a non-220 greeting, EHLO/HELO refused, TLS required but not offered,
AUTH refused) raise :class:`TemporaryDeliveryError`: nothing was delivered, try the next
host or later. Everything else is a per-recipient answer: a 4xx/5xx MAIL FROM applies
to all recipients; each RCPT reply to its recipient; the final DATA reply to every
recipient whose RCPT was accepted. When the reply has no enhanced status code, a generic
one (X.0.0) is filled in.
"""

import inspect
import io
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from twisted.internet import defer, error as ierror, ssl
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from jdmail.queue.mx import DNSError, NullMX, PermanentDNSError, TemporaryDNSError, resolve_addresses, resolve_mx

log = Logger()

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
CHUNK = 64 * 1024


class TemporaryDeliveryError(Exception):
    """Nothing was delivered on this connection; try another host or later."""

    def __init__(self, reason, code=None):
        super().__init__(reason)
        self.reason, self.code = reason, code


@dataclass
class DeliveryResult:
    """The outcome of one SMTP transaction: ``results = {rcpt: (code, enhanced, text)}``."""
    results: dict
    host: str = None
    port: int = None
    mx: str = None
    tls: bool = False
    tls_verified: bool = False     # None: the caller's tls_context decided
    extensions: dict = field(default_factory=dict)
    attempts: list = field(default_factory=list)   # (host, reason) of hosts that failed first
    session: object = None         # deliver_to_host(keep=True): the open SMTPSession
    local: bool = False            # the results are our own decision (SMTPUTF8, 8BITMIME,
                                   # SIZE missing at the server), not the server's replies

    def accepted(self):
        return [r for r, (c, _e, _t) in self.results.items() if 200 <= c < 300]

    def temporary(self):
        return [r for r, (c, _e, _t) in self.results.items() if 400 <= c < 500]

    def permanent(self):
        return [r for r, (c, _e, _t) in self.results.items() if c >= 500]


class Reply:
    def __init__(self, code, lines):
        self.code, self.lines = code, lines
        text = " ".join(line.strip() for line in lines).strip()
        m = _ENHANCED.match(lines[0] if lines else "")
        if m and m.group(1) == str(code)[0]:
            self.enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
            text = " ".join([lines[0][m.end():].strip()] + [_ENHANCED.sub("", x).strip() for x in lines[1:]]).strip()
        else:
            self.enhanced = f"{str(code)[0]}.0.0" if str(code)[0] in "245" else ""
        self.text = text

    def result(self):
        return (self.code, self.enhanced, self.text)

    def __str__(self):
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")


@implementer(IPushProducer)
class SMTPClientProtocol(LineReceiver):
    """Replies are queued; ``read()`` returns a Deferred for the next one."""
    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self):
        self.replies, self.waiting, self.partial = [], [], []
        self.lost = None
        self.connected_d = defer.Deferred()
        self.paused = None
        self.closed_d = defer.Deferred()

    def connectionMade(self):
        self.connected_d.callback(self)

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit():
            self.transport.abortConnection()   # not SMTP: drop it; the read fails
            return
        self.partial.append(text[4:])
        if len(text) > 3 and text[3] == "-":
            return
        reply = Reply(int(text[:3]), self.partial)
        self.partial = []
        while self.waiting and self.waiting[0].called:   # timed out already
            self.waiting.pop(0)
        if self.waiting:
            self.waiting.pop(0).callback(reply)
        else:
            self.replies.append(reply)

    def lineLengthExceeded(self, line):
        self.transport.abortConnection()

    def read(self, timeout, reactor):
        if self.replies:
            return defer.succeed(self.replies.pop(0))
        if self.lost is not None:
            return defer.fail(TemporaryDeliveryError(f"connection lost: {self.lost}"))
        d = defer.Deferred()
        self.waiting.append(d)

        def on_timeout(f):
            f.trap(defer.TimeoutError)
            self.transport.abortConnection()
            raise TemporaryDeliveryError(f"timed out after {timeout}s waiting for a reply")
        d.addTimeout(timeout, reactor)
        d.addErrback(on_timeout)
        return d

    def send(self, *lines):
        self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def connectionLost(self, reason):
        self.lost = reason.getErrorMessage()
        self.closed_d.callback(None)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:
                d.errback(TemporaryDeliveryError(f"connection lost: {self.lost}"))
        if self.paused is not None and not self.paused.called:
            self.paused.errback(TemporaryDeliveryError(f"connection lost: {self.lost}"))

    # IPushProducer, for streaming DATA
    def pauseProducing(self):
        if self.paused is None or self.paused.called:
            self.paused = defer.Deferred()

    def resumeProducing(self):
        if self.paused is not None and not self.paused.called:
            self.paused.callback(None)

    def stopProducing(self):
        self.resumeProducing()


def _parse_ehlo(reply):
    ext = {}
    for line in reply.lines[1:]:
        parts = line.strip().split(None, 1)
        if parts:
            ext[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
    return ext


def _endpoint(reactor, host, port, timeout, bind_address):
    bind = (bind_address, 0) if bind_address else None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    cls = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
    return cls(reactor, str(ip), port, timeout=timeout, bindAddress=bind)


async def _open(open_message):
    f = open_message()
    if inspect.isawaitable(f):
        f = await f
    return f


async def _stream(proto, f):
    """Write the message from ``f``: CRLF line ends, dot-stuffed, then the end marker."""
    proto.transport.registerProducer(proto, True)
    try:
        rest = b""
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            data = rest + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            if lines:
                out = []
                for line in lines:
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if line.startswith(b"."):
                        line = b"." + line
                    out.append(line + b"\r\n")
                proto.transport.write(b"".join(out))
            if proto.lost is not None:
                raise TemporaryDeliveryError(f"connection lost during DATA: {proto.lost}")
            if proto.paused is not None and not proto.paused.called:
                await proto.paused
        if rest:
            if rest.endswith(b"\r"):
                rest = rest[:-1]
            if rest.startswith(b"."):
                rest = b"." + rest
            proto.transport.write(rest + b"\r\n")
        proto.transport.write(b".\r\n")
    finally:
        try:
            proto.transport.unregisterProducer()
        except Exception:  # noqa: BLE001
            pass


async def deliver_to_host(reactor, host, port, sender, recipients, open_message, size, helo, *,
                          eightbit=False, smtputf8=False, downgrade=None, keep=False, **kw):
    """Deliver one message to ``recipients`` through ``host``:``port``; see the module docstring.

    ``kw`` goes to :func:`connect_host`. With ``keep``, a connection still fit for
    another transaction is not closed but returned as ``result.session`` (the caller
    closes it or hands it to a :class:`~jdmail.queue.pool.ConnectionCache`).
    """
    session = await connect_host(reactor, host, port, helo, **kw)
    try:
        result = await session.deliver(sender, recipients, open_message, size, eightbit=eightbit,
                                       smtputf8=smtputf8, downgrade=downgrade)
    except BaseException:
        await session.close()
        raise
    if keep and session.usable:
        result.session = session
    else:
        await session.close()
    return result


async def connect_host(reactor, host, port, helo, *, tls_context=None, require_tls=False,
                       implicit_tls=False, auth=None, timeout=300, bind_address=None,
                       tls_hostname=None):
    """An :class:`SMTPSession` to ``host``:``port``, greeted, after STARTTLS and AUTH.

    ``host`` is an IP address or a name. ``tls_context``: a Twisted client TLS context
    factory; by default opportunistic STARTTLS does not verify the certificate (logged),
    while ``require_tls`` verifies it against ``tls_hostname`` (or ``host``). ``auth`` is
    ``(username, password)``, used only over TLS (PLAIN, else LOGIN). ``bind_address``:
    the local address the connection comes from. Raises TemporaryDeliveryError.
    """
    tls_name = tls_hostname or host
    if tls_context is None:
        if require_tls:
            tls_context = ssl.optionsForClientTLS(tls_name)
            verified = True
        else:
            tls_context = ssl.CertificateOptions(verify=False)
            verified = False
    else:
        verified = None   # the caller's context: its own verification policy
    proto = SMTPClientProtocol()
    try:
        await connectProtocol(_endpoint(reactor, host, port, timeout, bind_address), proto)
    except (ierror.ConnectError, ierror.TimeoutError, defer.TimeoutError, OSError) as e:
        raise TemporaryDeliveryError(f"connect to {host}:{port} failed: {e}") from None
    session = SMTPSession(reactor, proto, host, port, timeout)
    try:
        await session._open(helo, tls_context, verified, require_tls, implicit_tls, auth)
    except BaseException:
        await session.close()
        raise
    return session


class SMTPSession:
    """One open SMTP connection, greeted and ready for transactions.

    ``deliver()`` runs one transaction; ``reset()`` (RSET) checks the connection is
    still fit before it is used again; ``close()`` says QUIT and disconnects.
    ``usable`` is false once anything went wrong on the connection.
    """

    def __init__(self, reactor, proto, host, port, timeout):
        self.reactor, self.proto, self.host, self.port, self.timeout = reactor, proto, host, port, timeout
        self.where = f"{host}:{port}"
        self.tls = False
        self.tls_verified = False
        self.extensions = {}
        self.mx = None
        self.transactions = 0
        self._broken = False
        self._closed = False

    @property
    def usable(self):
        return not (self._broken or self._closed) and self.proto.lost is None

    async def _read(self):
        reply = await self.proto.read(self.timeout, self.reactor)
        if reply.code == 421:
            raise TemporaryDeliveryError(f"{self.where} closing: {reply}", 421)
        return reply

    async def _command(self, line):
        self.proto.send(line)
        return await self._read()

    async def _open(self, helo, tls_context, verified, require_tls, implicit_tls, auth):
        where = self.where
        if implicit_tls:
            self.proto.transport.startTLS(tls_context)
            self.tls, self.tls_verified = True, verified
        greeting = await self._read()
        if greeting.code != 220:
            raise TemporaryDeliveryError(f"{where} greeted with {greeting}", greeting.code)

        async def hello():
            reply = await self._command(f"EHLO {helo}")
            if reply.code == 250:
                return _parse_ehlo(reply)
            reply = await self._command(f"HELO {helo}")
            if reply.code != 250:
                raise TemporaryDeliveryError(f"{where} refused EHLO/HELO: {reply}", reply.code)
            return {}

        ext = await hello()
        if not self.tls:
            if "STARTTLS" in ext:
                reply = await self._command("STARTTLS")
                if reply.code == 220:
                    self.proto.transport.startTLS(tls_context)
                    self.tls, self.tls_verified = True, verified
                    if verified is False:
                        log.info("STARTTLS to {where}: certificate not verified (opportunistic TLS)",
                                 where=where)
                    ext = await hello()
                elif require_tls:
                    raise TemporaryDeliveryError(f"{where} refused STARTTLS ({reply}) and TLS is required",
                                                 reply.code)
                else:
                    log.warn("STARTTLS to {where} refused ({reply}); continuing in plaintext", where=where,
                             reply=str(reply))
            elif require_tls:
                raise TemporaryDeliveryError(f"{where} does not offer STARTTLS and TLS is required")
        self.extensions = ext
        if auth is not None:
            if not self.tls:
                raise TemporaryDeliveryError(f"{where}: not sending AUTH credentials without TLS")
            await _auth(self.proto, self._read, self._command, ext, auth, where)

    async def reset(self):
        """RSET before another transaction: True when the server answered 250."""
        if not self.usable:
            return False
        try:
            reply = await self._command("RSET")
        except TemporaryDeliveryError:
            self._broken = True
            return False
        if reply.code != 250:
            self._broken = True
        return self.usable

    async def close(self):
        """QUIT (when the connection is fit) and disconnect; never raises."""
        if self._closed:
            return
        self._closed = True
        proto = self.proto
        if proto.transport is None or proto.lost is not None:
            return
        if not self._broken:
            try:
                proto.send("QUIT")
                await proto.read(min(self.timeout, 10), self.reactor)
            except Exception:  # noqa: BLE001 - the connection is done either way
                pass
        if proto.lost is None:
            proto.transport.loseConnection()
            try:
                await proto.closed_d.addTimeout(5, self.reactor)
            except defer.TimeoutError:
                proto.transport.abortConnection()

    async def deliver(self, sender, recipients, open_message, size, *, eightbit=False, smtputf8=False,
                      downgrade=None):
        """One transaction (MAIL, RCPT..., DATA) on this connection: a DeliveryResult.

        ``eightbit``: the content has 8-bit octets (BODY=8BITMIME, or 5.6.3 when the
        server lacks 8BITMIME); ``smtputf8``: the envelope or header needs SMTPUTF8
        (RFC 6531: the SMTPUTF8 parameter, or 5.6.7 when the server lacks it).
        ``downgrade``: for a server without 8BITMIME, an async callable giving the
        message converted to 7-bit (bytes), or None when it cannot be (then 5.6.3).
        """
        recipients = list(dict.fromkeys(recipients))
        result = DeliveryResult(results={}, host=self.host, port=self.port, tls=self.tls,
                                tls_verified=self.tls_verified, extensions=self.extensions)
        self.transactions += 1
        try:
            await self._transaction(result, sender, recipients, open_message, size, eightbit, smtputf8,
                                    downgrade)
        except BaseException:
            self._broken = True
            raise
        return result

    async def _transaction(self, result, sender, recipients, open_message, size, eightbit, smtputf8,
                           downgrade):
        read, command, ext = self._read, self._command, self.extensions

        def all_rcpts(reply):
            for r in recipients:
                result.results.setdefault(r, reply.result() if isinstance(reply, Reply) else reply)

        def refuse(code, enhanced, text):
            result.local = True
            all_rcpts((code, enhanced, text))

        if smtputf8 and "SMTPUTF8" not in ext:
            refuse(553, "5.6.7", "the message needs SMTPUTF8, which the server does not offer")
            return
        if eightbit and "8BITMIME" not in ext:
            converted = await downgrade() if downgrade is not None else None
            if converted is None:
                refuse(554, "5.6.3", "8-bit content to a 7-bit server, and it cannot be converted")
                return
            open_message, size, eightbit = (lambda: io.BytesIO(converted)), len(converted), False
        if "SIZE" in ext and size is not None:
            try:
                limit = int(ext["SIZE"] or 0)
            except ValueError:
                limit = 0
            if limit and size > limit:
                refuse(552, "5.3.4", f"message size {size} exceeds the server's limit of {limit}")
                return

        mail = f"MAIL FROM:<{sender}>"
        if "SIZE" in ext and size is not None:
            mail += f" SIZE={size}"
        if eightbit and "8BITMIME" in ext:
            mail += " BODY=8BITMIME"
        if smtputf8:
            mail += " SMTPUTF8"
        accepted = []
        proto = self.proto
        if "PIPELINING" in ext:
            proto.send(mail, *[f"RCPT TO:<{r}>" for r in recipients], "DATA")
            mail_reply = await read()
            rcpt_replies = [await read() for _ in recipients]
            data_reply = await read()
            if mail_reply.code != 250:
                all_rcpts(mail_reply)
            else:
                for r, rep in zip(recipients, rcpt_replies):
                    result.results[r] = rep.result()
                    if rep.code in (250, 251):
                        accepted.append(r)
            if data_reply.code == 354 and not accepted:
                proto.send(".")          # RFC 2920 3.1: an empty message, whose reply is ignored
                await read()
        else:
            mail_reply = await command(mail)
            if mail_reply.code != 250:
                all_rcpts(mail_reply)
            else:
                for r in recipients:
                    rep = await command(f"RCPT TO:<{r}>")
                    result.results[r] = rep.result()
                    if rep.code in (250, 251):
                        accepted.append(r)
            data_reply = await command("DATA") if accepted else None
        if not accepted:
            return
        if data_reply.code != 354:
            for r in accepted:
                result.results[r] = data_reply.result()
            return
        f = await _open(open_message)
        try:
            await _stream(proto, f)
        finally:
            close = getattr(f, "close", None)
            if close:
                close()
        final = await read()
        for r in accepted:
            result.results[r] = final.result()


async def _auth(proto, read, command, ext, auth, where):
    import base64
    username, password = auth
    mechs = (ext.get("AUTH") or "").upper().split()
    b64 = lambda s: base64.b64encode(s.encode("utf-8")).decode("ascii")  # noqa: E731
    if "PLAIN" in mechs:
        reply = await command("AUTH PLAIN " + b64(f"\0{username}\0{password}"))
    elif "LOGIN" in mechs:
        reply = await command("AUTH LOGIN")
        if reply.code == 334:
            reply = await command(b64(username))
        if reply.code == 334:
            reply = await command(b64(password))
    else:
        raise TemporaryDeliveryError(f"{where} offers no AUTH PLAIN/LOGIN (AUTH {ext.get('AUTH', '')!r})")
    if reply.code != 235:
        raise TemporaryDeliveryError(f"{where} refused AUTH: {reply}", reply.code)


async def deliver_to_domain(reactor, domain, sender, recipients, open_message, size, helo, *,
                            resolver=None, port=25, **kw):
    """Deliver to ``recipients`` at ``domain`` via its MX hosts, in preference order.

    Each MX host's addresses (A, then AAAA) are tried in turn; connection failures,
    time-outs and 421 (``TemporaryDeliveryError``) move on to the next address/host. The
    first host that answers gives the per-recipient results. A null MX gives every
    recipient ``556 5.1.10``; a domain that does not exist ``550 5.1.2``. A temporary DNS
    failure, or no host answering, raises ``TemporaryDeliveryError`` (every reason listed).
    ``kw`` is passed to :func:`deliver_to_host`.
    """
    recipients = list(dict.fromkeys(recipients))
    try:
        mxs = await resolve_mx(domain, resolver)
    except NullMX as e:
        return DeliveryResult(results={r: (556, "5.1.10", str(e)) for r in recipients})
    except PermanentDNSError as e:
        return DeliveryResult(results={r: (550, "5.1.2", f"Domain {domain} not found: {e}") for r in recipients})
    except TemporaryDNSError as e:
        raise TemporaryDeliveryError(f"MX lookup for {domain} failed: {e}") from None
    attempts = []
    for _pref, mx in mxs:
        try:
            addresses = await resolve_addresses(mx, resolver)
        except DNSError as e:
            attempts.append((mx, str(e)))
            continue
        if not addresses:
            attempts.append((mx, "no A/AAAA address"))
            continue
        for address in addresses:
            if ":" in address and not socket.has_ipv6:
                continue
            try:
                result = await deliver_to_host(reactor, address, port, sender, recipients, open_message,
                                               size, helo, tls_hostname=mx, **kw)
            except TemporaryDeliveryError as e:
                log.info("delivery for {domain} via {mx} [{address}] failed: {reason}",
                         domain=domain, mx=mx, address=address, reason=e.reason)
                attempts.append((f"{mx}[{address}]", e.reason))
                continue
            result.mx, result.attempts = mx, attempts
            if result.session is not None:
                result.session.mx = mx
            return result
    reasons = "; ".join(f"{h}: {r}" for h, r in attempts) or "no MX hosts"
    raise TemporaryDeliveryError(f"no MX host for {domain} accepted a connection ({reasons})")
