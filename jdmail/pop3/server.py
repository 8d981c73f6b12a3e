"""The POP3 server: RFC 1939, CAPA and response codes (RFC 2449), STLS (RFC 2595),
AUTH PLAIN (RFC 5034), over any IMessageStore.

It subclasses twisted.mail.pop3.POP3 but replaces its input handling and every
command, because of what that class gets wrong on Python 3 (see DESIGN.md):

- RETR/TOP: Twisted dot-stuffs per 16 KB chunk, so a "." line at a chunk
  boundary ends the response early. Here a message is dot-stuffed as one
  stream (the state "at the start of a line" carries over between chunks) and
  a response is written with one ``transport.write`` (messages up to 1 MB; bigger
  ones are streamed in 256 KB chunks read on the thread pool, with flow control).
- STLS: anything the client pipelined after the STLS line is thrown away
  before TLS starts (STARTTLS command injection, CVE-2011-0411 class).
- Lines over 255 octets, NUL or non-UTF-8 bytes get ``-ERR``, never a dropped
  connection or a traceback; a stray exception becomes ``-ERR [SYS/TEMP]`` and a log line.
- TCP_NODELAY is set on every connection (Nagle + delayed ACK costs ~44 ms per reply).

Logins go through the twisted.cred portal asking for jdmail.auth.IAccountAvatar;
each mailbox key is locked in-process while a session has it open.
"""

import base64
import binascii

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet import defer, interfaces, protocol, task
from twisted.logger import Logger
from twisted.mail import pop3

from jdmail.net import peer_host, set_nodelay, write_now
from jdmail.flow import Throttle
from jdmail.auth import DisabledAccount, IAccountAvatar
from jdmail.errors import DirectoryUnavailable
from jdmail.limits import ConnectionCounter

__all__ = ["POP3Server", "POP3Factory", "dot_stuff"]

MAX_COMMAND_LINE = 255          # octets including CRLF (RFC 2449 section 4)
MAX_AUTH_LINE = 8192            # a SASL continuation response
MAX_INPUT_BUFFER = 64 * 1024    # stop reading from a client that pipelines more than this
INLINE_READ = 64 * 1024         # smaller messages are read in the reactor thread
WHOLE_READ = 1024 * 1024        # up to this size a reply is built and written at once
CHUNK = 256 * 1024              # streaming chunk for bigger messages

PLAINTEXT_REFUSED = "[AUTH] Plaintext authentication disallowed on non-secured connection; use STLS"

AUTH_STATE_COMMANDS = {"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT"}
TRANSACTION_COMMANDS = {"CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT"}


def dot_stuff(data, at_line_start=True):
    """Double the '.' that starts any line of ``data`` (``at_line_start``: whether
    ``data`` begins a line, i.e. the previous chunk ended with LF)."""
    if not data:
        return data
    out = data.replace(b"\n.", b"\n..")
    if at_line_start and out[:1] == b".":
        out = b"." + out
    return out


def _terminator(ends_with_lf):
    return b".\r\n" if ends_with_lf else b"\r\n.\r\n"


def _read_all(mbox, key):
    with mbox.open(key) as f:
        return f.read()


def _read_top(mbox, key, lines):
    """The header, the blank line, and the first ``lines`` lines of the body."""
    out = []
    with mbox.open(key) as f:
        while True:
            line = f.readline()
            if not line:
                return b"".join(out)
            out.append(line)
            if line in (b"\r\n", b"\n"):
                break
        for _ in range(lines):
            line = f.readline()
            if not line:
                break
            out.append(line)
    return b"".join(out)


class POP3Server(pop3.POP3):
    """One POP3 session. States: AUTHORIZATION, AUTH (waiting for a SASL
    response), TRANSACTION, UPDATE (QUIT in progress)."""

    log = Logger()

    def __init__(self):
        self.state = "AUTHORIZATION"
        self._buf = b""
        self._busy = False          # a command's reply is still being made
        self._in_process = False
        self._skipping = False      # discarding the rest of an over-long line
        self._reading_paused = False
        self._gone = False
        self._admitted = False
        self._tls = False
        self._user = None
        self._failures = 0
        self._delay = None
        self._account = None
        self._logout = None
        self._lock_key = None
        self._release = None        # the store's session lock (lock_session)
        self.mbox = None
        self._messages = []
        self._deleted = set()
        self.client = "?"

    # --- connection ---------------------------------------------------------------------

    def callLater(self, period, func):
        return self.factory.reactor.callLater(period, func)

    def connectionMade(self):
        self.client = peer_host(self.transport)
        set_nodelay(self.transport)
        self.portal = self.factory.portal
        self.factory.sessions.add(self)
        refused = self.factory.admit(self.client)
        if isinstance(refused, defer.Deferred):
            # A worker process asks the master (global limits): input waits for the answer.
            self._busy = True
            refused.addErrback(self._limits_unknown).addCallback(self._admitted_later)
            return
        self._admit(refused)

    def _limits_unknown(self, failure):
        self.log.warn("pop3 cannot check the connection limits client={client}: {error}",
                      client=self.client, error=failure.getErrorMessage())
        return LIMITS_UNKNOWN

    def _admitted_later(self, refused):
        self._busy = False
        if self._gone:
            if not refused:
                self.factory.release(self.client)
            return
        self._admit(refused)
        self._process()

    def _admit(self, refused):
        if refused:
            self.log.info("pop3 connection refused client={client} reason={reason}",
                          client=self.client, reason=refused)
            if refused == LIMITS_UNKNOWN:
                self._write(b"-ERR [SYS/TEMP] Service not available, try again later\r\n")
            else:
                self._write(b"-ERR [SYS/TEMP] Too many connections\r\n")
            self._close()
            return
        self._admitted = True
        self._tls = bool(self.factory.implicit_tls) or interfaces.ISSLTransport.providedBy(self.transport)
        if self.factory.timeout:
            self.setTimeout(self.factory.timeout)
        self._write(b"+OK " + self.factory.banner.encode("utf-8") + b"\r\n")

    def idle(self):
        """No command is being answered: at a worker's stop the session may end at once."""
        return not self._busy

    def shut_down(self):
        """The server stops: -ERR and close (no UPDATE state: nothing is deleted)."""
        if not self._gone and self.state != "CLOSED":
            self._err("[SYS/TEMP] Server shutting down, try again later")
            self._close()

    def connectionLost(self, reason=protocol.connectionDone):
        self._gone = True
        self.factory.sessions.discard(self)
        self.setTimeout(None)
        if self._delay is not None and not self._delay.called:
            self._delay.cancel()
        if self._admitted:
            self._admitted = False
            self.factory.release(self.client)
        if self.state != "UPDATE":
            self._end_session()

    def timeoutConnection(self):
        self._write(b"-ERR Disconnected for inactivity\r\n")
        self._close()

    def _write(self, data):
        if not self._gone and not self.transport.disconnecting:
            write_now(self.transport, data)

    def _ok(self, text=""):
        self._write(b"+OK" + (b" " + text.encode("utf-8") if text else b"") + b"\r\n")

    def _err(self, text):
        self._write(b"-ERR " + text.encode("utf-8") + b"\r\n")

    def _close(self):
        self.state = "CLOSED"
        self._buf = b""
        if not self._gone:
            self.transport.loseConnection()

    def _end_session(self):
        """Release the mailbox lock and log out (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()
        if self._lock_key is not None:
            self.factory.unlock(self._lock_key)
            self._lock_key = None
        logout, self._logout = self._logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                self.log.failure("pop3 logout failed")

    @property
    def secure(self):
        return self._tls

    def _plaintext_ok(self):
        return self._tls or self.factory.allow_plaintext

    # --- input ----------------------------------------------------------------------------

    def dataReceived(self, data):
        if self._gone or self.state == "CLOSED":
            return
        self._buf += data
        self._process()

    def _process(self):
        if self._in_process:
            return
        self._in_process = True
        try:
            self._process_lines()
        finally:
            self._in_process = False

    def _process_lines(self):
        while not self._busy and not self._gone and self.state != "CLOSED":
            limit = MAX_AUTH_LINE if self.state == "AUTH" else MAX_COMMAND_LINE
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > limit:
                    if not self._skipping:
                        self._skipping = True
                        self._too_long()
                    self._buf = b""
                break
            line, self._buf = self._buf[:i], self._buf[i + 1:]
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            self.resetTimeout()
            if len(line) + 2 > limit:
                self._too_long()
                continue
            self._line(line)
        if self._busy and len(self._buf) > MAX_INPUT_BUFFER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif self._reading_paused and not self._busy:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _too_long(self):
        if self.state == "AUTH":
            self.state = "AUTHORIZATION"
        self._err("line too long")

    def _line(self, line):
        if self.state == "AUTH":
            self.state = "AUTHORIZATION"
            return self._run(self._auth_response(line))
        if b"\x00" in line:
            return self._err("Invalid characters in command")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._err("Command is not valid UTF-8")
        name, _, arg = text.partition(" ")
        name = name.upper()
        if self.state == "TRANSACTION":
            allowed = TRANSACTION_COMMANDS
        else:
            allowed = AUTH_STATE_COMMANDS
        if name not in allowed:
            if name in TRANSACTION_COMMANDS:
                return self._err("Not logged in")
            if name in AUTH_STATE_COMMANDS:
                return self._err("Command not valid in this state")
            return self._err("Unknown command")
        handler = getattr(self, "do_" + name)
        try:
            result = handler(arg)
        except Exception:
            self.log.failure("pop3 command {command} failed client={client}", command=name,
                             client=self.client)
            return self._err("[SYS/TEMP] Internal error")
        if result is not None and hasattr(result, "__await__"):
            self._run(result)

    def _run(self, coro):
        """Run a command's coroutine; further pipelined commands wait until it ends."""
        self._busy = True
        d = defer.Deferred.fromCoroutine(coro)

        def failed(f):
            if not f.check(defer.CancelledError):
                self.log.failure("pop3 command failed client={client}", f, client=self.client)
                self._err("[SYS/TEMP] Internal error")

        def done(_):
            self._busy = False
            if not self._gone:
                self._process()

        d.addErrback(failed)
        d.addBoth(done)
        return d

    # --- AUTHORIZATION state ------------------------------------------------------------------

    def capabilities(self):
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state != "TRANSACTION":
            if self._plaintext_ok():
                caps += [b"USER", b"SASL PLAIN"]
            if self.factory.tls_context is not None and not self._tls:
                caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION jdmail")
        return caps

    def do_CAPA(self, arg):
        self._write(b"+OK Capability list follows\r\n"
                    + b"".join(c + b"\r\n" for c in self.capabilities()) + b".\r\n")

    def do_STLS(self, arg):
        if self._tls:
            return self._err("Command not permitted when TLS active")
        if self.factory.tls_context is None or interfaces.ITLSTransport(self.transport, None) is None:
            return self._err("TLS not available")
        self._ok("Begin TLS negotiation")
        # Anything pipelined after STLS arrived in plaintext: drop it (CVE-2011-0411).
        self._buf = b""
        self._skipping = False
        self._user = None
        self.transport.startTLS(self.factory.tls_context)
        self._tls = True

    def do_USER(self, arg):
        if not self._plaintext_ok():
            return self._err(PLAINTEXT_REFUSED)
        if not arg.strip():
            return self._err("USER needs a user name")
        self._user = arg.strip()
        self._ok()

    def do_PASS(self, arg):
        if not self._plaintext_ok():
            return self._err(PLAINTEXT_REFUSED)
        if self._user is None:
            return self._err("USER first")
        user, self._user = self._user, None
        return self._login(user, arg, "USER")

    def do_AUTH(self, arg):
        mech, _, initial = arg.strip().partition(" ")
        if not mech:
            mechs = b"PLAIN\r\n" if self._plaintext_ok() else b""
            return self._write(b"+OK\r\n" + mechs + b".\r\n")
        if mech.upper() != "PLAIN":
            return self._err("Unsupported authentication mechanism")
        if not self._plaintext_ok():
            return self._err(PLAINTEXT_REFUSED)
        initial = initial.strip()
        if initial:
            return self._plain(initial.encode("ascii", "replace"))
        self.state = "AUTH"
        self._write(b"+ \r\n")

    async def _auth_response(self, line):
        if line.strip() == b"*":
            self._err("Authentication cancelled")
            return
        await self._plain(line.strip())

    async def _plain(self, text):
        try:
            raw = b"" if text == b"=" else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._err("Malformed base64")
            return
        parts = raw.split(b"\x00")
        try:
            if len(parts) != 3:
                raise ValueError("not authzid NUL authcid NUL password")
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except ValueError:
            self._err("Malformed AUTH PLAIN response")
            return
        if not authcid:
            self._err("Malformed AUTH PLAIN response")
            return
        if authzid and authzid.strip().lower() != authcid.strip().lower():
            await self._failed(authcid, "PLAIN", "authzid differs from authcid")
            return
        await self._login(authcid, password, "PLAIN")

    async def _login(self, user, password, mech):
        """Check the password through the portal, lock and list the mailbox."""
        factory = self.factory
        try:
            _, account, logout = await factory.portal.login(
                UsernamePassword(user, password), None, IAccountAvatar)
        except DirectoryUnavailable:
            self._log_login(user, mech, "failed: directory unavailable")
            self._err("[SYS/TEMP] Authentication temporarily unavailable, try again later")
            return
        except DisabledAccount:
            await self._failed(user, mech, "account disabled")
            return
        except (UnauthorizedLogin, LoginFailed):
            await self._failed(user, mech, "wrong user name or password")
            return
        except Exception:
            self.log.failure("pop3 login error user={user} client={client}", user=user,
                             client=self.client)
            self._log_login(user, mech, "failed: internal error")
            self._err("[SYS/TEMP] Authentication temporarily unavailable, try again later")
            return
        if self._gone:
            logout()
            return
        if "pop3" not in account.protocols:
            logout()
            self._log_login(account.name, mech, "failed: pop3 disabled for the account")
            self._err("[AUTH] POP3 access is disabled for this account")
            return
        key = account.mailbox
        if not factory.lock(key):
            logout()
            self._log_login(account.name, mech, "failed: mailbox in use")
            self._err("[IN-USE] Mailbox is locked by another session")
            return
        self._lock_key, self._logout, self._account = key, logout, account
        lock_session = getattr(factory.services.store, "lock_session", None)
        if lock_session is not None:
            # The store's lock covers the other processes (workers, servers on one mail tree).
            try:
                self._release = await lock_session(key)
            except Exception:
                self.log.failure("pop3 cannot lock mailbox {mailbox} user={user}", mailbox=key,
                                 user=account.name)
                self._end_session()
                self._log_login(account.name, mech, "failed: mailbox unavailable")
                self._err("[SYS/TEMP] Cannot open the mailbox, try again later")
                return
            if self._release is None:
                self._end_session()
                self._log_login(account.name, mech, "failed: mailbox in use")
                self._err("[IN-USE] Mailbox is locked by another session")
                return
            if self._gone:
                self._end_session()
                return
        try:
            mbox = factory.services.store.mailbox(key)
            messages = await mbox.list()
        except Exception:
            self.log.failure("pop3 cannot open mailbox {mailbox} user={user}", mailbox=key,
                             user=account.name)
            self._end_session()
            self._log_login(account.name, mech, "failed: mailbox unavailable")
            self._err("[SYS/TEMP] Cannot open the mailbox, try again later")
            return
        if self._gone:
            self._end_session()
            return
        self.mbox, self._messages, self._deleted = mbox, list(messages), set()
        self.state = "TRANSACTION"
        self._log_login(account.name, mech, "ok", len(self._messages))
        self._ok(f"Logged in, {len(self._messages)} messages")

    async def _failed(self, user, mech, reason):
        self._log_login(user, mech, "failed: " + reason)
        self._failures += 1
        delay = self.factory.fail_delay
        if delay and delay > 0:
            self._delay = task.deferLater(self.factory.reactor, delay, lambda: None)
            try:
                await self._delay
            except defer.CancelledError:
                return
            finally:
                self._delay = None
        if self._gone:
            return
        self._err("[AUTH] Authentication failed")
        if self.factory.max_failures and self._failures >= self.factory.max_failures:
            self._close()

    def _log_login(self, user, mech, result, messages=None):
        self.log.info("pop3 login user={user} client={client} mech={mech} tls={tls} result={result}",
                      user=user, client=self.client, mech=mech, tls="yes" if self._tls else "no",
                      result=result, messages=messages)

    # --- TRANSACTION state --------------------------------------------------------------------

    def _number(self, arg):
        """The 1-based message number in ``arg`` if it names a live message, else None."""
        arg = arg.strip()
        if not arg.isascii() or not arg.isdigit() or len(arg) > 9:
            return None
        n = int(arg)
        if n < 1 or n > len(self._messages) or n in self._deleted:
            return None
        return n

    def _live(self):
        return [(n, m) for n, m in enumerate(self._messages, 1) if n not in self._deleted]

    def do_STAT(self, arg):
        live = self._live()
        self._ok(f"{len(live)} {sum(m.size for _, m in live)}")

    def do_LIST(self, arg):
        if arg.strip():
            n = self._number(arg)
            if n is None:
                return self._err("no such message")
            return self._ok(f"{n} {self._messages[n - 1].size}")
        live = self._live()
        total = sum(m.size for _, m in live)
        body = "".join(f"{n} {m.size}\r\n" for n, m in live)
        self._write(f"+OK {len(live)} messages ({total} octets)\r\n{body}.\r\n".encode("ascii"))

    def do_UIDL(self, arg):
        if arg.strip():
            n = self._number(arg)
            if n is None:
                return self._err("no such message")
            return self._ok(f"{n} {self._messages[n - 1].key}")
        body = "".join(f"{n} {m.key}\r\n" for n, m in self._live())
        self._write(f"+OK\r\n{body}.\r\n".encode("ascii", "replace"))

    def do_DELE(self, arg):
        n = self._number(arg)
        if n is None:
            return self._err("no such message")
        self._deleted.add(n)
        self._ok(f"message {n} deleted")

    def do_RSET(self, arg):
        self._deleted.clear()
        live = self._live()
        self._ok(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)")

    def do_NOOP(self, arg):
        self._ok()

    def do_RETR(self, arg):
        n = self._number(arg)
        if n is None:
            return self._err("no such message")
        return self._send(n, None)

    def do_TOP(self, arg):
        args = arg.split()
        if len(args) != 2 or not args[1].isascii() or not args[1].isdigit():
            return self._err("Syntax: TOP <message> <lines>")
        n = self._number(args[0])
        if n is None:
            return self._err("no such message")
        return self._send(n, int(args[1]))

    def _send(self, n, lines):
        """Answer RETR (``lines`` None) or TOP: a small message is read and answered
        here and now (no coroutine, no Deferred); a bigger one by ``_send_later``."""
        info = self._messages[n - 1]
        if info.size > INLINE_READ:
            return self._send_later(info, lines)
        try:
            data = self._read(info, lines)
        except OSError as e:
            return self._read_failed(info, e)
        self._answer(info, lines, data)

    async def _send_later(self, info, lines):
        try:
            if lines is None and info.size > WHOLE_READ:
                await self._stream(info)
                return
            data = await self.factory.services.run_blocking(self._read, info, lines)
        except OSError as e:
            self._read_failed(info, e)
            return
        self._answer(info, lines, data)

    def _read(self, info, lines):
        if lines is None:
            return _read_all(self.mbox, info.key)
        return _read_top(self.mbox, info.key, lines)

    def _read_failed(self, info, e):
        if isinstance(e, FileNotFoundError):
            self._err("Message no longer available")
            return
        self.log.failure("pop3 cannot read message {key} user={user}", key=info.key,
                         user=self._account.name)
        self._err("[SYS/TEMP] Cannot read the message")

    def _answer(self, info, lines, data):
        head = b"+OK\r\n" if lines is not None else b"+OK %d octets\r\n" % info.size
        self._write(head + dot_stuff(data) + _terminator(not data or data.endswith(b"\n")))

    async def _stream(self, info):
        services = self.factory.services
        f = await services.run_blocking(self.mbox.open, info.key)
        throttle = Throttle()
        self.transport.registerProducer(throttle, True)
        try:
            pending = b"+OK %d octets\r\n" % info.size
            at_start = True
            while True:
                try:
                    chunk = await services.run_blocking(f.read, CHUNK)
                except OSError:
                    if pending:
                        raise           # nothing sent yet: the caller answers -ERR
                    self.log.failure("pop3 read error in {key}; closing", key=info.key)
                    self._close()
                    return
                if not chunk:
                    break
                self._write(pending + dot_stuff(chunk, at_start))
                pending = b""
                at_start = chunk.endswith(b"\n")
                self.resetTimeout()
                await throttle.wait()
                if throttle.stopped or self._gone:
                    return
            self._write(pending + _terminator(at_start))
        finally:
            f.close()
            if not self._gone:
                self.transport.unregisterProducer()

    def do_QUIT(self, arg):
        if self.state != "TRANSACTION":
            self._ok("Logging out")
            return self._close()
        return self._update()

    async def _update(self):
        self.state = "UPDATE"
        keys = [self._messages[n - 1].key for n in sorted(self._deleted)]
        try:
            if keys:
                await self.mbox.remove(keys)
        except Exception:
            self.log.failure("pop3 cannot remove messages user={user}", user=self._account.name)
            self._err("[SYS/TEMP] Some deleted messages were not removed")
        else:
            self._ok(f"Logging out, {len(keys)} messages deleted" if keys else "Logging out")
        finally:
            self._end_session()
        self._close()


LIMITS_UNKNOWN = "the master process did not answer"    # a worker could not check the limits

# Mailbox keys that a POP3 session has open, for every POP3 listener of this process
# (the store's lock_session, where it has one, also covers other processes).
MAILBOX_LOCKS = set()


class POP3Factory(protocol.ServerFactory):
    """Builds POP3 sessions for one listener.

    ``settings`` keys (all optional; extra keys such as ``listen`` are ignored):
    banner, timeout (seconds; 0 = none), max_connections, max_connections_per_ip
    (0 = no limit), allow_plaintext, fail_delay (seconds), max_failures (0 = never
    close), tls_context (for STLS; None = no STLS), implicit_tls (the listener
    already speaks TLS: pop3s), counter (a jdmail.limits.ConnectionCounter shared
    by the pop3 and pop3s listeners so the limits cover both; default: this
    factory's own) and locks (the set of open mailbox keys; default: the
    process-wide MAILBOX_LOCKS, so pop3 and pop3s sessions exclude each other).
    """

    protocol = POP3Server
    log = Logger()
    noisy = False

    def __init__(self, services, portal, settings):
        self.services = services
        self.reactor = services.reactor
        self.portal = portal
        get = settings.get
        self.banner = get("banner") or "jdmail POP3 Service ready"
        timeout = get("timeout", 600.0)
        self.timeout = timeout if timeout and timeout > 0 else None
        self.max_connections = get("max_connections", 200) or 0
        self.max_connections_per_ip = get("max_connections_per_ip", 20) or 0
        self.allow_plaintext = bool(get("allow_plaintext", False))
        self.fail_delay = get("fail_delay", 2.0) or 0.0
        self.max_failures = get("max_failures", 3) or 0
        self.tls_context = get("tls_context")
        self.implicit_tls = bool(get("implicit_tls", False))
        counter = get("counter")
        self.counter = counter if counter is not None else ConnectionCounter()
        locks = get("locks")
        self.locks = locks if locks is not None else MAILBOX_LOCKS
        self.sessions = set()

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        return p

    def admit(self, ip):
        """Count a new connection; return why not (and count nothing) when over a limit."""
        return self.counter.open(ip, self.max_connections, self.max_connections_per_ip)

    def release(self, ip):
        self.counter.close(ip)

    def lock(self, key):
        """Take the in-process lock of a mailbox key; False when a session holds it."""
        if key in self.locks:
            return False
        self.locks.add(key)
        return True

    def unlock(self, key):
        self.locks.discard(key)
