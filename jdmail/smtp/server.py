"""The ESMTP server: MX (25), submission (587) and SMTPS (465).

Built on ``twisted.mail.smtp.ESMTP`` (its host/portal/TLS attributes and timeout
handling), with the command engine replaced, because Twisted's:

- runs pipelined commands while an earlier one's Deferred is pending (RCPT before
  MAIL's answer -> 503), so we serialise: one command at a time, in order;
- splits DATA on any line end and hands each line to per-recipient objects; we stream
  DATA to one spool file, end it only at CRLF.CRLF and refuse bare CR/LF (SMTP
  smuggling, RFC 5321 2.3.8);
- keeps plaintext pipelined after STARTTLS; we drop it (STARTTLS injection);
- drops the connection on a non-UTF-8 command and sends exception text; we answer
  with an RFC reply code and log the details.
"""

import base64
import binascii
import functools
import re
import time

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import protocol, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.smtp import rfc822date

from jdmail.address import AddressError, normalize, parse_path
from jdmail.auth import IAccountAvatar
from jdmail.errors import DirectoryUnavailable, SMTPReplyError
from jdmail.filters.results import FilterResults
from jdmail.interfaces import Action, Envelope, Resolution, Stage
from jdmail.smtp.spool import SpoolFile, new_queue_id

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")     # RFC 3461 4: xtext

MAX_COMMAND_LINE = 12288 + 64     # RFC 4954 4: AUTH initial responses may be this long
MAX_PENDING_INPUT = 256 * 1024    # stop reading while this much waits behind a busy command
MAX_HEADER_COPY = 256 * 1024      # header bytes kept for filters
MAX_BAD_COMMANDS = 20             # Postfix's smtpd_hard_error_limit

_COMMAND, _DATA, _AUTH = "command", "data", "auth"
_LIMITS_UNKNOWN = "connection limits cannot be checked"   # a worker whose master does not answer

# What of the client's EHLO argument may not go into our Received header as it is.
_HEADER_UNSAFE = re.compile(r"[^\x21-\x7e]")
_HEADER_UNSAFE_UTF8 = re.compile(r"[\x00-\x20\x7f-\x9f]")


_last_date = (None, "")


def _date_now():
    """RFC 5322 date of now (local time), made once per second."""
    global _last_date
    now = int(time.time())
    if _last_date[0] != now:
        _last_date = (now, rfc822date(time.localtime(now)).decode("ascii"))
    return _last_date[1]


class Connection:
    """One SMTP connection as CONNECT and HELO filters see it (see jdmail.filters)."""

    queue_id = None
    sender = None
    recipients = ()

    def __init__(self, session):
        self.session = session
        self.filter_results = FilterResults()
        self.connect_results = self.filter_results

    @property
    def client_ip(self):
        return self.session.client_ip

    @property
    def client_port(self):
        return self.session.client_port

    @property
    def local_ip(self):
        return self.session.local_ip

    @property
    def helo(self):
        return self.session.helo

    @property
    def auth_user(self):
        return self.session.account.name if self.session.account else ""

    @property
    def listener(self):
        return self.session.listener.name

    @property
    def tls(self):
        return bool(self.session.secure)

    @property
    def hostname(self):
        return self.session.factory.hostname


class Transaction:
    """One MAIL..DATA exchange, as filters and delivery see it (see jdmail.filters)."""

    def __init__(self, session, sender, smtputf8, body_type, declared_size):
        self.session = session
        self.connection = session.connection
        self.filter_results = session.connection.filter_results.copy()
        self.recipient = None          # at RCPT: the address being checked
        self.sender = sender
        self.smtputf8 = smtputf8
        self.body_type = body_type
        self.declared_size = declared_size
        self.recipients = []           # [(address, Resolution)]
        self.rcpt_log = []             # [(address, code)] including refused ones
        self.rcpt_seen = False         # any RCPT command, even a malformed one
        self.headers_raw = b""
        self.spool = None
        self.queue_id = None
        self.ret = ""                  # RFC 3461 MAIL RET=FULL|HDRS
        self.envid = ""                # RFC 3461 MAIL ENVID (xtext, as given)
        self.dsn = {}                  # address -> (NOTIFY tuple, ORCPT) from RCPT

    client_ip = property(lambda self: self.connection.client_ip)
    client_port = property(lambda self: self.connection.client_port)
    local_ip = property(lambda self: self.connection.local_ip)
    helo = property(lambda self: self.connection.helo)
    auth_user = property(lambda self: self.connection.auth_user)
    listener = property(lambda self: self.connection.listener)
    tls = property(lambda self: self.connection.tls)
    hostname = property(lambda self: self.connection.hostname)

    @property
    def outbound(self):
        """Submitted mail: an authenticated client or one in [smtp] mynetworks."""
        return bool(self.auth_user) or self.session._trusted()

    @property
    def message_path(self):
        """The spool file with the whole message as stored (trace headers first); from DATA on."""
        return self.spool.path if self.spool is not None else None

    @property
    def size(self):
        return self.spool.size if self.spool is not None else 0

    def open_message(self):
        """The message (from DATA on) as a binary file; blocking reads: use it in a thread
        (services.run_blocking) unless it is small."""
        return open(self.spool.path, "rb")

    @property
    def headers(self):
        """The message header as an email.message.Message (after DATA)."""
        import email.parser
        import email.policy
        return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.headers_raw)


class ESMTPServer(smtp.ESMTP):
    """One SMTP connection. See the module docstring for what differs from Twisted's."""

    log = Logger()

    def __init__(self, factory, listener):
        super().__init__(chal={}, contextFactory=factory.tls_context)
        self.factory = factory
        self.settings = factory.settings
        self.listener = listener
        self.host = factory.hostname.encode("idna") if factory.hostname.isascii() else b"localhost"
        self.portal = factory.portal
        self.secure = listener.implicit_tls
        self.mode = _COMMAND
        self._buffer = b""
        self._busy = False
        self._skip_to_eol = False
        self._paused = False
        self.helo = None
        self.esmtp = False
        self.account = None
        self.txn = None
        self.client_ip = "?"
        self.client_port = 0
        self.local_ip = ""
        self.connection = Connection(self)
        self._counted = False
        self._bad_commands = 0
        self._auth_failures = 0
        self._sasl = None
        self._refused = False          # a 554 greeting: only QUIT is answered
        self._lost = False
        self._plain_tcp = False        # the transport is twisted.internet.tcp.Server: _send writes directly

    # --- connection ---------------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", str(peer))
        self.client_port = getattr(peer, "port", 0)
        self.local_ip = getattr(self.transport.getHost(), "host", "")
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:
                pass
        self._plain_tcp = type(self.transport) is tcp.Server
        self.factory.sessions.add(self)
        refusal = self.factory.open_connection(self.client_ip)
        if isinstance(refusal, Deferred):
            # A worker process asks the master (global limits): input waits for the answer.
            self._busy = True
            refusal.addErrback(self._limits_unknown).addCallback(self._admitted)
            return
        self._admit(refusal)

    def _limits_unknown(self, failure):
        self.log.warn("smtp cannot check the connection limits client={client}: {error}",
                      client=self.client_ip, error=failure.getErrorMessage())
        return _LIMITS_UNKNOWN

    def _admitted(self, refusal):
        self._busy = False
        if self._lost:
            if not refusal:
                self.factory.close_connection(self.client_ip)
            return
        self._admit(refusal)
        self._process()

    def _admit(self, refusal):
        if refusal:
            self.log.info("smtp refused client={client} reason={reason}", client=self.client_ip, reason=refusal)
            if refusal == _LIMITS_UNKNOWN:
                self.reply(421, "4.3.2", f"{self.factory.hostname} Service not available; try again later")
            else:
                self.reply(421, "4.7.0", f"{self.factory.hostname} Too many connections; try again later")
            self.transport.loseConnection()
            return
        self._counted = True
        self.canStartTLS = (ITLSTransport.providedBy(self.transport) and self.ctx is not None
                            and not self.secure)
        self.setTimeout(self.settings["command_timeout"])
        if Stage.CONNECT in self.factory.filters.stages:
            self._run(self._greet())
        else:
            self.reply(220, None, self.settings["banner"])

    async def _greet(self):
        verdict = await self._filters(Stage.CONNECT, self.connection)
        if verdict is None:
            self.reply(220, None, self.settings["banner"])
        elif verdict.code == 421:           # RFC 5321 3.8: 421, then the connection closes
            self.reply(421, verdict.enhanced, f"{self.factory.hostname} {verdict.text}")
            self._buffer = b""
            self.transport.loseConnection()
        else:                               # RFC 5321 3.1: 554 instead of 220, then wait for QUIT
            self.reply(verdict.code, verdict.enhanced, verdict.text)
            self._refused = True

    def connectionLost(self, reason):
        self._lost = True
        self.factory.sessions.discard(self)
        self.setTimeout(None)
        self._end_transaction("connection lost")
        if self._counted:
            self._counted = False
            self.factory.close_connection(self.client_ip)

    def idle(self):
        """True between transactions with no command in progress (a stopping worker may
        close the connection with 421)."""
        return not self._busy and self.txn is None and self.mode != _DATA

    def shut_down(self):
        """421 and close: the server is stopping (RFC 5321 3.8)."""
        self.reply(421, "4.3.2", f"{self.factory.hostname} Service shutting down; try again later")
        self._buffer = b""
        self.transport.loseConnection()

    def timeoutConnection(self):
        if self._busy:      # waiting for delivery, a filter or a fail delay: not the client's idleness
            return self.setTimeout(self.timeOut)      # the expired call is gone: start a new one
        self.reply(421, "4.4.2", f"{self.factory.hostname} Error: timeout exceeded")
        self._end_transaction("timeout")
        self.transport.loseConnection()

    def reply(self, code, enhanced, text):
        """Send one reply (several lines when ``text`` is a list), in one write."""
        lines = text if isinstance(text, list) else [text]
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            body = f"{enhanced} {line}" if enhanced else line
            out.append(f"{code}{sep}{body}\r\n")
        self._send("".join(out).encode("utf-8"))

    def _send(self, data):
        """Write ``data``: on plain TCP with nothing waiting to be written, straight to the
        socket. (The reactor's write path costs a loop turn and two epoll_ctl calls per
        reply, several per message; what the socket does not take goes that way.)"""
        t = self.transport
        if (self._plain_tcp and not t.TLS and not t.dataBuffer and not t._tempDataBuffer
                and t.connected and not t.disconnecting):
            try:
                sent = t.socket.send(data)
            except OSError:         # full, or broken: Twisted's write path handles it
                sent = 0
            data = data[sent:]
            if not data:
                return
        t.write(data)

    def reply_error(self, err):
        self.reply(err.code, err.enhanced, err.text)

    # --- input framing ------------------------------------------------------------------

    def dataReceived(self, data):
        self._buffer += data
        self.resetTimeout()
        self._process()

    def _process(self):
        while not self._busy and self._buffer and not self.transport.disconnecting:
            if self.mode == _DATA:
                if not self._consume_data():
                    break
                continue
            line, ok = self._next_line()
            if not ok:
                break
            if self.mode == _AUTH:
                self._run(self._sasl_step(line))
            else:
                self._run(self._command(line))
        if self._busy and len(self._buffer) > MAX_PENDING_INPUT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _next_line(self):
        """Take one command line from the buffer (CRLF, or a bare LF, ends it)."""
        idx = self._buffer.find(b"\n")
        if idx < 0:
            if len(self._buffer) > MAX_COMMAND_LINE:
                self._buffer = b""
                if not self._skip_to_eol:
                    self._skip_to_eol = True
                    self._line_too_long()
            return None, False
        line, self._buffer = self._buffer[:idx], self._buffer[idx + 1:]
        if self._skip_to_eol:
            self._skip_to_eol = False
            return None, True
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_COMMAND_LINE:
            self._line_too_long()
            return None, True
        return line, True

    def _line_too_long(self):
        if self.mode == _AUTH:      # RFC 4954 4: the exchange is cancelled
            self.reply(500, "5.5.6", "Authentication Exchange line is too long")
        else:
            self.reply(500, "5.5.2", "Error: line too long")
        self._count_bad()

    def _run(self, coro):
        """Run one command's coroutine; input waits until it has answered."""
        self._busy = True
        d = Deferred.fromCoroutine(coro)
        if self._busy and not d.called:
            d.addBoth(self._done)
        else:
            d.addBoth(self._done_now)

    def _done_now(self, result):
        self._busy = False
        if hasattr(result, "check"):   # a Failure no handler caught
            self._internal_error(result)
        return None

    def _done(self, result):
        self._done_now(result)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._process()

    def _internal_error(self, failure):
        self.log.failure("smtp internal error client={client}", failure, client=self.client_ip)
        self._end_transaction("internal error")
        self.mode = _COMMAND
        self.reply(451, "4.3.0", "Error: internal server error; try again later")

    def _count_bad(self):
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self.reply(421, "4.7.0", f"{self.factory.hostname} Error: too many errors")
            self.transport.loseConnection()

    # --- commands -----------------------------------------------------------------------

    async def _command(self, raw):
        if raw is None:
            return
        if b"\x00" in raw:
            self.reply(500, "5.5.2", "Error: NUL character in command")
            return self._count_bad()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.reply(500, "5.5.2", "Error: command is not valid UTF-8")
            return self._count_bad()
        verb, _, arg = line.strip().partition(" ")
        if self._refused and verb.upper() != "QUIT":
            self.reply(503, "5.5.1", "Error: this connection was refused; send QUIT")
            return self._count_bad()
        handler = getattr(self, "smtp_" + verb.upper(), None) if verb.isascii() and verb.isalpha() else None
        if handler is None:
            self.reply(500, "5.5.1" if verb else "5.5.2",
                       "Error: command not recognized" if verb else "Error: bad syntax")
            return self._count_bad()
        await self._answer(handler(arg.strip()))

    async def _answer(self, step):
        """Await one command step; an SMTPReplyError it raises becomes the reply."""
        try:
            await step
        except SMTPReplyError as e:
            self.reply_error(e)
            if e.code >= 500:
                self._count_bad()
        except DirectoryUnavailable as e:
            # the backend logs the outage once; a traceback per RCPT would flood the log
            self.log.warn("smtp directory unavailable client={client} error={error}",
                          client=self.client_ip, error=e)
            self.reply(451, "4.3.0", "Temporary lookup failure; try again later")

    async def smtp_HELO(self, arg):
        await self._hello(arg, esmtp=False)

    async def smtp_EHLO(self, arg):
        await self._hello(arg, esmtp=True)

    async def _hello(self, arg, esmtp):
        verb = "EHLO" if esmtp else "HELO"
        if not arg:
            raise SMTPReplyError(501, "5.5.4", f"Syntax: {verb} hostname")
        arg = arg.split()[0]
        self._end_transaction(verb)
        self.helo, self.esmtp = arg, esmtp
        if Stage.HELO in self.factory.filters.stages:
            conn = self.connection
            conn.filter_results = conn.connect_results.copy()    # a new EHLO replaces the last one's
            verdict = await self._filters(Stage.HELO, conn)
            if verdict is not None:
                self.helo = None
                raise SMTPReplyError(verdict.code, verdict.enhanced, verdict.text)
        greeting = f"{self.factory.hostname} Hello {arg} [{self._ip_literal()}]"
        if not esmtp:
            return self.reply(250, None, greeting)
        lines = [greeting, "PIPELINING", f"SIZE {self.settings['max_message_size']}", "8BITMIME",
                 "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
        if self.canStartTLS and not self.secure:
            lines.append("STARTTLS")
        if self._auth_allowed():
            lines.append("AUTH PLAIN LOGIN")
        if self.settings["vrfy"]:
            lines.append("VRFY")
        if self.settings["expn"]:
            lines.append("EXPN")
        self.reply(250, None, lines)

    def _ip_literal(self):
        """The client's address as inside an RFC 5321 address literal: 192.0.2.1, IPv6:2001:db8::1."""
        return f"IPv6:{self.client_ip}" if ":" in self.client_ip else self.client_ip

    def _auth_allowed(self):
        return self.account is None and (self.secure or self.factory.auth["allow_plaintext"])

    async def smtp_STARTTLS(self, arg):
        if arg:
            raise SMTPReplyError(501, "5.5.4", "Syntax: STARTTLS")
        if self.secure:
            raise SMTPReplyError(503, "5.5.1", "Error: TLS already active")
        if not self.canStartTLS:
            raise SMTPReplyError(454, "4.7.0", "TLS not available")
        self.reply(220, "2.0.0", "Ready to start TLS")
        # Anything pipelined after STARTTLS was sent in plaintext: never run it inside TLS.
        self._buffer = b""
        self.transport.startTLS(self.ctx)
        self.secure = self.startedTLS = True
        self.helo, self.esmtp, self.account = None, False, None
        self.connection.filter_results = self.connection.connect_results
        self._end_transaction("STARTTLS")

    async def smtp_NOOP(self, arg):
        self.reply(250, "2.0.0", "Ok")

    async def smtp_RSET(self, arg):
        if arg:
            raise SMTPReplyError(501, "5.5.4", "Syntax: RSET")
        self._end_transaction("RSET")
        self.reply(250, "2.0.0", "Ok")

    async def smtp_QUIT(self, arg):
        self._end_transaction("QUIT")
        self.reply(221, "2.0.0", "Bye")
        self._buffer = b""
        self.transport.loseConnection()

    async def smtp_HELP(self, arg):
        self.reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT STARTTLS AUTH; see RFC 5321")

    async def smtp_VRFY(self, arg):
        if not self.settings["vrfy"]:
            raise SMTPReplyError(502, "5.5.1", "VRFY command is disabled")
        address = self._parse_rcpt_path(arg)
        resolution = await self.factory.directory.resolve(address)
        if resolution.kind != Resolution.Kind.LOCAL:
            raise SMTPReplyError(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
        self.reply(250, "2.1.5", f"<{address}>")

    async def smtp_EXPN(self, arg):
        if not self.settings["expn"]:
            raise SMTPReplyError(502, "5.5.1", "EXPN command is disabled")
        address = self._parse_rcpt_path(arg)
        resolution = await self.factory.directory.resolve(address)
        if resolution.kind != Resolution.Kind.LOCAL:
            raise SMTPReplyError(550, "5.1.1", f"<{address}>: no such user or list")
        members = [a.name for a in resolution.accounts] + list(resolution.remote)
        self.reply(250, "2.1.5", [f"<{m}>" for m in members])

    # --- AUTH (RFC 4954) ----------------------------------------------------------------

    async def smtp_AUTH(self, arg):
        if not self.helo or not self.esmtp:
            raise SMTPReplyError(503, "5.5.1", "Error: send EHLO first")
        if self.account is not None:
            raise SMTPReplyError(503, "5.5.1", "Error: already authenticated")
        if self.txn is not None:
            raise SMTPReplyError(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
        mech, _, initial = arg.partition(" ")
        mech, initial = mech.upper(), initial.strip()
        if mech not in ("PLAIN", "LOGIN"):
            raise SMTPReplyError(504, "5.5.4", "Unrecognized authentication type")
        if not (self.secure or self.factory.auth["allow_plaintext"]):
            raise SMTPReplyError(538, "5.7.11", "Encryption required for requested authentication mechanism")
        self._sasl = {"mech": mech, "step": 0, "user": None}
        if initial:
            await self._sasl_response(initial.encode("ascii", "replace"))
        else:
            self.mode = _AUTH
            self.reply(334, None, "" if mech == "PLAIN" else "VXNlcm5hbWU6")

    async def _sasl_step(self, raw):
        self.mode = _COMMAND
        if raw is None:
            self._sasl = None
            return
        await self._answer(self._sasl_response(raw.strip()))

    async def _sasl_response(self, raw):
        sasl = self._sasl
        if raw == b"*":
            self._sasl = None
            raise SMTPReplyError(501, "5.0.0", "Authentication aborted")
        try:
            decoded = base64.b64decode(b"" if raw == b"=" else raw, validate=True)
        except (binascii.Error, ValueError):
            self._sasl = None
            raise SMTPReplyError(501, "5.5.2", "Cannot decode AUTH response (bad base64)") from None
        if sasl["mech"] == "LOGIN":
            if sasl["step"] == 0:
                sasl["user"], sasl["step"] = decoded, 1
                self.mode = _AUTH
                return self.reply(334, None, "UGFzc3dvcmQ6")
            authzid, authcid, password = b"", sasl["user"], decoded
        else:
            parts = decoded.split(b"\x00")
            if len(parts) != 3:
                self._sasl = None
                raise SMTPReplyError(501, "5.5.2", "Invalid PLAIN response: expected authzid NUL user NUL password")
            authzid, authcid, password = parts
        self._sasl = None
        await self._login(authzid, authcid, password)

    async def _login(self, authzid, authcid, password):
        try:
            user = authcid.decode("utf-8")
            pw = password.decode("utf-8")
            authz = authzid.decode("utf-8")
        except UnicodeDecodeError:
            user, pw, authz = "?", "", "?"
        result, account = "failed", None
        try:
            if authz and normalize(authz) != normalize(user):
                raise UnauthorizedLogin("authorization identity differs from the user")
            _iface, account, _logout = await self.portal.login(UsernamePassword(user, pw), None, IAccountAvatar)
            result = "ok"
            if "smtp" not in account.protocols:
                account, result = None, "failed: smtp disabled for the account"
        except UnauthorizedLogin as e:
            result = f"failed: {e}"
        except DirectoryUnavailable:
            result = "tempfail: directory unavailable"
        self.log.info("smtp login user={user} client={client} listener={listener} result={result}",
                      user=user, client=self.client_ip, listener=self.listener.name, result=result)
        if account is not None:
            self.account = account
            return self.reply(235, "2.7.0", "Authentication successful")
        if result.startswith("tempfail"):
            raise SMTPReplyError(454, "4.7.0", "Temporary authentication failure; try again later")
        if result == "failed: smtp disabled for the account":
            # the password was right: no delay, no failure counted
            raise SMTPReplyError(535, "5.7.8", "Authentication refused: sending mail (SMTP) is disabled "
                                               "for this account")
        self._auth_failures += 1
        await self.factory.sleep(self.factory.auth["fail_delay"])
        if self._auth_failures >= self.factory.auth["max_failures"]:
            self.reply(535, "5.7.8", "Authentication credentials invalid")
            self.reply(421, "4.7.0", f"{self.factory.hostname} Error: too many failed authentication attempts")
            self.transport.loseConnection()
            return
        raise SMTPReplyError(535, "5.7.8", "Authentication credentials invalid")

    # --- the mail transaction -----------------------------------------------------------

    def _end_transaction(self, why):
        """Drop the open transaction, if any, with a log line saying why it ended without a
        message: "aborted" in the middle of DATA, "abandoned" before it."""
        txn, self.txn = self.txn, None
        if txn is None:
            return
        if txn.spool is not None:
            txn.spool.discard()
            self._log_transaction(f"aborted: {why}", txn, self._data["size"])
        else:
            self._log_transaction(f"abandoned: {why}", txn)

    async def smtp_MAIL(self, arg):
        if not self.helo:
            raise SMTPReplyError(503, "5.5.1", "Error: send HELO/EHLO first")
        if self.listener.require_auth and self.account is None:
            raise SMTPReplyError(530, "5.7.0", "Authentication required")
        if self.txn is not None:
            raise SMTPReplyError(503, "5.5.1", "Error: nested MAIL command")
        path, params = self._split_path(arg, "FROM")
        smtputf8, body, size, ret, envid = False, "7BIT", None, "", ""
        for name, value in params:
            if name == "SIZE":
                if value is None or not (value.isascii() and value.isdigit()):
                    raise SMTPReplyError(501, "5.5.4", "Syntax: SIZE=<number of octets>")
                size = int(value)
            elif name == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()
            elif name == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif name == "AUTH" and value is not None:
                pass  # RFC 4954 5: accepted; we do not relay the identity further
            elif name == "RET" and value is not None and value.upper() in ("FULL", "HDRS") and not ret:
                ret = value.upper()
            elif name == "ENVID" and value and len(value) <= 100 and _XTEXT.fullmatch(value) and not envid:
                envid = value
            else:
                raise SMTPReplyError(555, "5.5.4", f"Unsupported MAIL FROM parameter {name}")
        if size is not None and size > self.settings["max_message_size"]:
            raise SMTPReplyError(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if not path.isascii() and not smtputf8:
            raise SMTPReplyError(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
        try:
            sender = parse_path(path, utf8=smtputf8, allow_null=True)
        except AddressError as e:
            raise SMTPReplyError(553, "5.1.7", f"Bad sender address syntax: {e}") from None
        if self.account is not None and sender and not await self.factory.directory.owns(self.account, sender):
            raise SMTPReplyError(553, "5.7.1", f"<{sender}>: Sender address rejected: "
                                               "not owned by authenticated user")
        self.txn = Transaction(self, sender, smtputf8, body, size)
        self.txn.ret, self.txn.envid = ret, envid
        verdict = await self._filters(Stage.MAIL)
        if verdict is not None:
            self.txn = None
            return self.reply(verdict.code, verdict.enhanced, verdict.text)
        self.reply(250, "2.1.0", "Sender ok")

    async def smtp_RCPT(self, arg):
        txn = self.txn
        if txn is None:
            raise SMTPReplyError(503, "5.5.1", "Error: need MAIL command first")
        txn.rcpt_seen = True
        path, params = self._split_path(arg, "TO")
        notify, orcpt = (), ""
        for name, value in params:
            if name == "NOTIFY" and value and not notify:
                notify = tuple(v.upper() for v in value.split(","))
                if not set(notify) <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"} or (
                        "NEVER" in notify and len(notify) > 1):
                    raise SMTPReplyError(501, "5.5.4", "Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY")
            elif name == "ORCPT" and value and ";" in value and len(value) <= 500 and not orcpt:
                orcpt = value
            else:
                raise SMTPReplyError(555, "5.5.4", f"Unsupported RCPT TO parameter {name}")
        if len(txn.recipients) >= self.settings["max_recipients"]:
            txn.rcpt_log.append((path, 452))
            raise SMTPReplyError(452, "4.5.3", "Error: too many recipients")
        if not path.isascii() and not txn.smtputf8:
            raise SMTPReplyError(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
        address = self._parse_rcpt_path(path, utf8=txn.smtputf8)
        code, enhanced, text = await self._check_recipient(address)
        txn.rcpt_log.append((address, code))
        if code != 250:
            raise SMTPReplyError(code, enhanced, text)
        if notify or orcpt:
            txn.dsn[address] = (notify, orcpt)
        self.reply(250, "2.1.5", "Recipient ok")

    async def _check_recipient(self, address):
        txn = self.txn
        resolution = await self.factory.directory.resolve(address, sender=txn.sender)
        if resolution.kind == Resolution.Kind.REFUSED:
            return 550, "5.7.1", f"<{address}>: Recipient address rejected: {resolution.text}"
        if resolution.kind == Resolution.Kind.REMOTE:
            if self.account is None and not self._trusted():
                return 554, "5.7.1", f"<{address}>: Relay access denied"
            if self.factory.services.queue is None:
                return 451, "4.3.0", f"<{address}>: Relaying is not available; try again later"
            routing = getattr(self.factory.services.config, "routing", None)
            if routing is not None:
                route = routing.route(txn.sender, address)
                if route.kind == "reject":
                    return 550, "5.7.1", f"<{address}>: {route.text}"
        if resolution.kind == Resolution.Kind.UNKNOWN:
            return 550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown"
        if resolution.remote and self.factory.services.queue is None:
            return 451, "4.3.0", f"<{address}>: Forwarding to remote addresses is not available; try again later"
        if await self._rcpt_over_quota(resolution, max(txn.declared_size or 0, 1)):
            return 452, "4.2.2", f"<{address}>: Mailbox full"
        txn.recipients.append((address, resolution))
        txn.recipient = address
        verdict = await self._filters(Stage.RCPT)
        txn.recipient = None
        if verdict is not None:
            txn.recipients.pop()
            return verdict.code, verdict.enhanced, verdict.text
        return 250, "2.1.5", "Recipient ok"

    def _trusted(self):
        networks = getattr(self.factory.services.config, "mynetworks", None)
        return networks is not None and networks.contains(self.client_ip)

    def _parse_rcpt_path(self, path, utf8=False):
        if path.strip("<>").lower() == "postmaster":
            return f"postmaster@{self.factory.hostname}"
        try:
            return parse_path(path, utf8=utf8)
        except AddressError as e:
            raise SMTPReplyError(501, "5.1.3", f"Bad recipient address syntax: {e}") from None

    _PATH_START = {"FROM": re.compile(r"FROM:\s*", re.I), "TO": re.compile(r"TO:\s*", re.I)}

    def _split_path(self, arg, keyword):
        """'FROM:<a@b> SIZE=10' -> ('<a@b>', [('SIZE', '10')])."""
        m = self._PATH_START[keyword].match(arg)
        if not m:
            raise SMTPReplyError(501, "5.5.4", f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>")
        rest = arg[m.end():]
        if rest.startswith("<"):
            end, quoted, i = -1, False, 1
            while i < len(rest):
                c = rest[i]
                if c == "\\" and quoted:
                    i += 2
                    continue
                if c == '"':
                    quoted = not quoted
                elif c == ">" and not quoted:
                    end = i
                    break
                i += 1
            if end < 0:
                raise SMTPReplyError(501, "5.5.4", "Syntax error: missing '>' in address")
            path, tail = rest[:end + 1], rest[end + 1:]
        else:
            path, _, tail = rest.partition(" ")
        if tail and not tail.startswith(" "):
            raise SMTPReplyError(501, "5.5.4", "Syntax error after address")
        params = []
        for word in tail.split():
            name, eq, value = word.partition("=")
            if not name.replace("-", "").isalnum():
                raise SMTPReplyError(501, "5.5.4", f"Syntax error in parameter {word!r}")
            params.append((name.upper(), value if eq else None))
        return path, params

    async def smtp_DATA(self, arg):
        txn = self.txn
        if arg:
            raise SMTPReplyError(501, "5.5.4", "Syntax: DATA")
        if txn is None:
            raise SMTPReplyError(503, "5.5.1", "Error: need MAIL command first")
        if not txn.recipients:
            if not txn.rcpt_seen:
                raise SMTPReplyError(503, "5.5.1", "Error: need RCPT command")
            raise SMTPReplyError(554, "5.5.1", "Error: no valid recipients")
        self._data = {"size": 0, "in_header": True, "header_len": 0, "hops": 0,
                      "too_big": False, "bare": False, "long": False, "skip_line": False, "io_error": None,
                      "started": time.monotonic()}
        txn.queue_id = new_queue_id()
        txn.spool = SpoolFile(self.factory.spool_dir, txn.queue_id)
        txn.spool.write_trace(self._trace_headers(txn))
        self.mode = _DATA
        self.setTimeout(self.settings["data_timeout"])
        self.reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def _trace_headers(self, txn):
        """Return-Path, Delivered-To (one recipient only) and Received (RFC 5321 4.4)."""
        proto = "UTF8SMTP" if txn.smtputf8 else ("ESMTP" if self.esmtp else "SMTP")
        if self.esmtp or txn.smtputf8:
            proto += ("S" if self.secure else "") + ("A" if self.account else "")
        tls = self._tls_description()
        lines = [f"Return-Path: <{txn.sender}>"]
        single = len(txn.recipients) == 1
        if single:
            lines.append(f"Delivered-To: {txn.recipients[0][0]}")
        helo = _HEADER_UNSAFE_UTF8.sub("?", self.helo) if txn.smtputf8 else _HEADER_UNSAFE.sub("?", self.helo)
        received = f"Received: from {helo} ([{self._ip_literal()}])\r\n\tby {self.factory.hostname} (jdmail)"
        if tls:
            received += f"\r\n\t({tls})"
        if self.account:
            received += f"\r\n\t(Authenticated sender: {self.account.name})"
        received += f"\r\n\twith {proto} id {txn.queue_id}"
        if single:
            received += f"\r\n\tfor <{txn.recipients[0][0]}>"
        received += f"; {_date_now()}"
        lines.append(received)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _tls_description(self):
        if not self.secure:
            return ""
        conn = None
        for candidate in (self.transport, getattr(self.transport, "protocol", None)):
            handle = getattr(candidate, "getHandle", lambda: None)()
            if hasattr(handle, "get_cipher_name"):
                conn = handle
                break
            tls = getattr(candidate, "_tlsConnection", None)
            if tls is not None:
                conn = tls
                break
        if conn is None:
            return "using TLS"
        try:
            return f"using {conn.get_protocol_version_name()} with cipher {conn.get_cipher_name()}"
        except Exception:
            return "using TLS"

    # --- DATA ---------------------------------------------------------------------------

    def _consume_data(self):
        """Take what DATA has in the buffer; True when the end marker was found."""
        if self._data["skip_line"]:
            # The rest of an overlong line: drop it through its CRLF, so the end
            # marker is only ever looked for at a real line start.
            idx = self._buffer.find(b"\r\n")
            if idx < 0:
                self._buffer = self._buffer[-1:]
                return False
            self._buffer = self._buffer[idx + 2:]
            self._data["skip_line"] = False
        buf = self._buffer
        end = (b"\r\n" + buf).find(b"\r\n.\r\n")
        if end >= 0:
            chunk, self._buffer = buf[:end], buf[end + 3:]
            self._data_chunk(chunk)
            self.mode = _COMMAND
            self.setTimeout(self.settings["command_timeout"])
            self._run(self._end_of_data())
            return True
        last = buf.rfind(b"\r\n")
        if last < 0:
            if len(buf) > self.settings["max_line_length"] + 2:
                self._data["long"] = True
                self._data["skip_line"] = True
                self._buffer = buf[-1:]
            return False
        chunk, self._buffer = buf[:last + 2], buf[last + 2:]
        self._data_chunk(chunk)
        return False

    _long_line_res = {}

    def _data_chunk(self, chunk):
        """Handle complete lines of DATA (``chunk`` starts at a line start)."""
        state = self._data
        if not chunk:
            return
        if chunk.count(b"\n") != chunk.count(b"\r\n") or chunk.count(b"\r") != chunk.count(b"\r\n"):
            state["bare"] = True
        limit = self.settings["max_line_length"]
        regex = self._long_line_res.get(limit)
        if regex is None:
            regex = self._long_line_res[limit] = re.compile(rb"[^\n]{%d}" % (limit + 2))
        if regex.search(chunk):
            state["long"] = True
        if chunk[:1] == b".":
            chunk = chunk[1:]
        chunk = chunk.replace(b"\r\n.", b"\r\n")
        if state["in_header"]:
            self._header_lines(chunk)
        state["size"] += len(chunk)
        if state["size"] > self.settings["max_message_size"]:
            state["too_big"] = True
        if not (state["too_big"] or state["bare"] or state["long"] or state["io_error"]):
            try:
                self.txn.spool.write(chunk)
            except OSError as e:         # e.g. a full disk: answered with 451 at the end of DATA
                state["io_error"] = str(e)

    def _header_lines(self, chunk):
        state = self._data
        if chunk.startswith(b"\r\n"):     # chunks start at a line start: this empty line ends the header
            head = b""
        else:
            end = chunk.find(b"\r\n\r\n")
            head = chunk if end < 0 else chunk[:end + 2]
        if len(head) < len(chunk):
            state["in_header"] = False
        state["hops"] += len(re.findall(rb"(?im)^received:", head))
        if state["header_len"] < MAX_HEADER_COPY:
            self.txn.headers_raw += head[:MAX_HEADER_COPY - state["header_len"]]
            state["header_len"] += len(head)

    async def _end_of_data(self):
        txn, state = self.txn, self._data
        self.txn = None
        try:
            await self._finish_message(txn, state)
        finally:
            txn.spool.discard()     # delivered (hard-linked), refused or failed: never left behind

    async def _finish_message(self, txn, state):
        failure = None
        if state["io_error"]:
            self.log.error("smtp spool write failed id={id} error={error}", id=txn.queue_id, error=state["io_error"])
            failure = (451, "4.3.0", "Error: cannot store the message now; try again later")
        elif state["too_big"]:
            failure = (552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif state["bare"]:
            failure = (550, "5.6.0", "Message contains bare CR or LF characters; lines must end with CRLF "
                                     "(RFC 5321 section 2.3.8)")
        elif state["long"]:
            failure = (550, "5.6.0", f"Message contains a line longer than {self.settings['max_line_length']} octets")
        elif state["hops"] + 1 > self.settings["max_hops"]:
            failure = (554, "5.4.6", "Too many hops: mail loop detected")
        chain = self.factory.filters
        if failure is None and (Stage.DATA in chain.stages or Stage.OUTBOUND in chain.stages):
            txn.spool.flush()       # filters read the file
            for stage in (Stage.DATA, Stage.OUTBOUND):
                if stage == Stage.OUTBOUND and not txn.outbound:
                    continue
                verdict = await self._filters(stage, txn)
                if verdict is not None:
                    failure = (verdict.code, verdict.enhanced, verdict.text)
                    break
        if failure is None:
            failure = await self._data_over_quota(txn, state["size"])
        if failure is not None:
            outcome = "tempfail" if failure[0] < 500 else "rejected"
            self._log_transaction(f"{outcome} {failure[0]} {failure[1]}", txn, state["size"])
            return self.reply(*failure)
        disposition = chain.disposition(txn)
        envelope = Envelope(txn.queue_id, txn.sender, txn.recipients, self.client_ip, self.helo,
                            txn.auth_user, txn.smtputf8, ret=txn.ret, envid=txn.envid, dsn=txn.dsn,
                            junk=disposition.junk)
        if disposition.action == Action.DISCARD:
            self._log_transaction(f"discarded ({'; '.join(disposition.reasons)})", txn, state["size"])
            return self.reply(250, "2.0.0", f"Ok: queued as {txn.queue_id}")
        try:
            forged = re.search(rb"(?im)^authentication-results[ \t]*:", txn.headers_raw)
            commit = functools.partial(txn.spool.commit, disposition.header_block,
                                       self.factory.hostname if forged else None)
            if disposition.action == Action.QUARANTINE:
                await self.factory.services.run_blocking(commit)
                await self.factory.quarantine.keep(envelope, txn.spool.path, disposition.reasons)
            else:
                # the spool file's fsync runs with the store's links and directory fsync
                await self.factory.delivery.deliver(envelope, txn.spool.path, commit=commit)
        except Exception:
            self.log.failure("smtp delivery failed id={id}", id=txn.queue_id)
            self._log_transaction("tempfail 451 4.3.0 delivery failed", txn, state["size"])
            return self.reply(451, "4.3.0", "Error: local delivery failed; try again later")
        if disposition.action == Action.QUARANTINE:
            result = f"quarantined ({'; '.join(disposition.reasons)})"
        else:
            result = "accepted to Junk" if disposition.junk else "accepted"
        self._log_transaction(result, txn, state["size"])
        self.reply(250, "2.0.0", f"Ok: queued as {txn.queue_id}")

    # --- quota (kept together with jdmail/store; see jdmail/store/folders.py) ------------------
    #
    # Mailbox quota at SMTP time, for local Accounts with a quota (quota_bytes and/or
    # quota_messages > 0), usage being the store's ``usage(mailbox)`` (bytes and messages
    # over all folders). A mailbox is "over" when this message would pass either limit:
    #
    # - RCPT: when usage + the MAIL FROM SIZE= value (at least 1 octet: a mailbox exactly at
    #   its quota is full), or one more message, is over the quota of every local mailbox the
    #   address resolves to, that recipient gets
    #   ``452 4.2.2 <address>: Mailbox full`` -- temporary (RFC 5321's 452 "insufficient
    #   system storage"; RFC 3463 X.2.2 "mailbox full" is a persistent-transient condition),
    #   because the user can delete mail and the sender's queue retries; the other
    #   recipients are kept.
    # - End of DATA: a message for a single mailbox that would take it over quota gets
    #   ``552 5.2.2 Mailbox full`` and is not stored (RFC 5321's 552 "exceeded storage
    #   allocation", the reply it names for this). A message for several mailboxes is delivered to all
    #   of them, also to one that goes over quota (a soft overrun, logged): refusing it
    #   would refuse it for every recipient.
    # - A store without ``usage``, or one that fails to answer, never refuses mail.

    @staticmethod
    def _has_quota(account):
        return (account.quota_bytes or 0) > 0 or (getattr(account, "quota_messages", 0) or 0) > 0

    async def _over_quota(self, account, size):
        """True when one more message of ``size`` octets passes one of the account's limits;
        None when usage is unknown (no store usage, or it failed)."""
        store = getattr(self.factory.services, "store", None)
        usage = getattr(store, "usage", None)
        if usage is None or not self._has_quota(account):
            return None
        try:
            used, messages = await usage(account.mailbox)
        except Exception:
            self.log.failure("smtp quota check failed for {mailbox}; not enforcing it", mailbox=account.mailbox)
            return None
        limit_bytes, limit_messages = account.quota_bytes or 0, getattr(account, "quota_messages", 0) or 0
        return (limit_bytes > 0 and used + size > limit_bytes) or \
            (limit_messages > 0 and messages + 1 > limit_messages)

    async def _rcpt_over_quota(self, resolution, extra):
        accounts = [a for a in resolution.accounts if self._has_quota(a)]
        if not accounts or len(accounts) != len(resolution.accounts):
            return False
        for account in accounts:
            if not await self._over_quota(account, extra):
                return False
        return True

    async def _data_over_quota(self, txn, size):
        accounts = {}
        for _address, resolution in txn.recipients:
            for account in resolution.accounts:
                accounts.setdefault(account.mailbox, account)
        over = [a for a in accounts.values() if await self._over_quota(a, size)]
        if not over:
            return None
        if len(accounts) == 1:
            return (552, "5.2.2", "Mailbox full")
        for account in over:
            self.log.info("smtp quota soft overrun id={id} mailbox={mailbox} quota={quota} "
                          "quota_messages={messages}", id=txn.queue_id, mailbox=account.mailbox,
                          quota=account.quota_bytes, messages=getattr(account, "quota_messages", 0))
        return None

    async def _filters(self, stage, txn=None):
        """Run the filter chain; return a refusing Verdict or None to go on."""
        chain = self.factory.filters
        if stage not in chain.stages:
            return None
        verdict = await chain.run(stage, txn or self.txn)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return verdict
        return None

    def _log_transaction(self, result, txn=None, size=0):
        txn = txn or self.txn
        if txn is None:
            return
        rcpts = ",".join(f"{a}:{c}" for a, c in txn.rcpt_log)
        self.log.info("smtp transaction id={id} client={client} helo={helo} auth={auth} from=<{sender}> "
                      "rcpts={rcpts} size={size} result={result}",
                      id=txn.queue_id or "-", client=self.client_ip, helo=self.helo, auth=txn.auth_user or "-",
                      sender=txn.sender, rcpts=rcpts, size=size, result=result)


class Listener:
    """What one listening section says: its name, whether it is TLS from the start,
    whether AUTH is required before MAIL."""

    def __init__(self, name, implicit_tls, require_auth):
        self.name, self.implicit_tls, self.require_auth = name, implicit_tls, require_auth


class SMTPFactory(protocol.ServerFactory):
    """Builds ESMTPServer connections for one listener and counts connections
    (the counter is shared by every SMTP listener)."""

    noisy = False

    def __init__(self, services, listener, counter, delivery, filters, portal, tls_context, reactor,
                 quarantine=None):
        self.services = services
        self.settings = services.config["smtp"]
        self.auth = services.config["auth"]
        self.hostname = services.hostname
        self.directory = services.directory
        self.listener = listener
        self.counter = counter
        self.delivery = delivery
        self.filters = filters
        self.quarantine = quarantine
        self.portal = portal
        self.tls_context = tls_context
        self.reactor = reactor
        self.spool_dir = services.extra["spool_dir"]
        self.sessions = set()           # open ESMTPServer connections (for a graceful stop)

    def buildProtocol(self, addr):
        p = ESMTPServer(self, self.listener)
        p.factory = self
        return p

    def open_connection(self, ip):
        """A refusal reason, None to go on, or (in a worker) a Deferred of either."""
        return self.counter.open(ip, self.settings["max_connections"], self.settings["max_connections_per_ip"])

    def close_connection(self, ip):
        self.counter.close(ip)

    def sleep(self, seconds):
        from twisted.internet.task import deferLater
        return deferLater(self.reactor, seconds, lambda: None)
