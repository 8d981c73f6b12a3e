"""The IMAP4rev1 server (RFC 3501) with the extensions modern clients use.

``IMAPServer`` subclasses ``twisted.mail.imap4.IMAP4Server`` (its timeout
handling, its TLS context attribute, its modified UTF-7 codec, and its place in
the twisted.mail family), but replaces its engine, as jdmail's SMTP server
replaces Twisted's, because of what that engine gets wrong (DESIGN.md, measured
on Twisted 26.10 / Python 3.11):

- Framing: Twisted answers ``{-1}`` and multi-gigabyte literals with a
  continuation and buffers them; here a literal gets ``+ Ready`` only when its
  size is acceptable (APPEND: [smtp] max_message_size; anything else 64 KB;
  before login 8 KB), a bad synchronizing literal gets BAD, and an over-limit
  non-synchronizing one (LITERAL+) gets BAD and the connection closes.
- Security: Twisted runs plaintext pipelined after STARTTLS, accepts AUTHENTICATE
  PLAIN in cleartext while advertising LOGINDISABLED, and ignores the SASL
  authzid (one user could log in as another). Here pipelined plaintext is
  discarded, LOGINDISABLED/PRIVACYREQUIRED hold for every mechanism, and the
  authzid must equal the authcid.
- LIST: Twisted compiles patterns to a backtracking regex that hangs the
  process on many wildcards; jdmail.imap.listing matches in linear time.
- Python 3 bugs: APPEND without flags gets BAD, SEARCH with any string or date
  key gets BAD, a non-ASCII header drops the connection mid-FETCH, and
  BODYSTRUCTURE/HEADER.FIELDS are wrong. FETCH (jdmail.imap.fetch over
  jdmail.mime), SEARCH (jdmail.imap.search) and SORT (jdmail.imap.sort) work
  from the store's index (IAccountStore/IFolder) instead of twisted.mail's
  IMailbox/IMessage objects, so ``UID FETCH 1:* (FLAGS)`` on 100,000 messages
  opens no file and is streamed in chunks with transport back-pressure; BODY[]
  of a message over 1 MB is copied from its file in chunks, never read whole.
- Commands run one at a time in order (pipelining-safe); untagged EXPUNGE is
  only sent where RFC 3501 7.4.1 allows it (never during FETCH, STORE or SEARCH);
  responses are collected and written in few writes (pipelined commands that
  complete at once share one write), with TCP_NODELAY.
- Limits: 8 KB lines/literals and 30 commands before login (whose idle timer
  only whole commands reset), connections per IP and per user, 30 minutes of
  idleness after login (RFC 3501 5.4), 20 BAD answers.

Extensions: IDLE, UIDPLUS, MOVE, SPECIAL-USE (+ CREATE-SPECIAL-USE),
NAMESPACE, QUOTA (RFC 9208), LITERAL+, ENABLE, ID, UNSELECT, CHILDREN,
LIST-EXTENDED, LIST-STATUS, CONDSTORE, QRESYNC, ESEARCH, SORT, SASL-IR,
STATUS=SIZE; each is advertised only when the command handlers for it exist.
"""

import base64
import binascii
import bisect
import copy
import os
from types import SimpleNamespace

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet import defer, interfaces, protocol, task
from twisted.logger import Logger
from twisted.mail import imap4

from jdmail.net import peer_host, set_nodelay, write_now
from jdmail.flow import Throttle
from jdmail.auth import DisabledAccount, IAccountAvatar
from jdmail.errors import DirectoryUnavailable
from jdmail.imap import hibernate, listing
from jdmail.imap.fetch import Section, fast_renderer, parse_fetch, record_flags, render
from jdmail.mime import header_section
from jdmail.imap.parser import Atom, ParseError, astring, literal_suffix, parse_command
from jdmail.imap.sectioncache import CACHE as SECTION_CACHE
from jdmail.imap.responses import (
    MailboxNameError, SYSTEM_FLAGS, canonical_flag, decode_mailbox, format_set,
    mailbox as mailbox_out, parse_date_time, quoted)
from jdmail.imap.sequence import SequenceSetError, iter_spans, parse_sequence_set, resolve
from jdmail.interfaces import FolderError, FolderGone, QuotaExceeded
from jdmail.limits import ConnectionCounter

__all__ = ["IMAPServer", "IMAPFactory"]

MAX_LINE = 64 * 1024                # one line of a command (Dovecot's imap_max_line_length)
MAX_LINE_PREAUTH = 8 * 1024
MAX_LITERAL = 64 * 1024             # a literal anywhere but APPEND
MAX_LITERAL_PREAUTH = 8 * 1024
MAX_COMMAND = 1024 * 1024           # all lines and literals of one non-APPEND command
MAX_COMMANDS_PREAUTH = 30           # commands allowed before a successful login
MAX_BAD_COMMANDS = 20               # BAD answers before the connection is closed
MAX_PENDING_INPUT = 256 * 1024      # stop reading while this much waits behind a busy command
FLUSH_AT = 64 * 1024                # FETCH/SEARCH output is written in chunks of about this size
INLINE_READ = 64 * 1024             # smaller messages are read in the reactor thread
STREAM_AT = 1024 * 1024             # BODY[] of bigger messages is streamed from the file
STREAM_CHUNK = 256 * 1024
BATCH = 500                         # messages whose MIME structures are asked for at once
LIMITS_UNKNOWN = "the master process did not answer"    # a worker could not check the limits
IDLE_KEEPALIVE = 120.0              # "* OK Still here" while idling
IDLE_POLL = 30.0                    # re-check the folder while idling, besides its notifications

NOT_AUTH, AUTH, SELECTED, LOGOUT = "unauth", "auth", "selected", "logout"
_ANY = frozenset({NOT_AUTH, AUTH, SELECTED})
_NOT_AUTH = frozenset({NOT_AUTH})
_AUTHED = frozenset({AUTH, SELECTED})
_SELECTED = frozenset({SELECTED})

COMMANDS = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "STARTTLS": _NOT_AUTH, "AUTHENTICATE": _NOT_AUTH, "LOGIN": _NOT_AUTH,
    "SELECT": _AUTHED, "EXAMINE": _AUTHED, "CREATE": _AUTHED, "DELETE": _AUTHED,
    "RENAME": _AUTHED, "SUBSCRIBE": _AUTHED, "UNSUBSCRIBE": _AUTHED, "LIST": _AUTHED,
    "LSUB": _AUTHED, "STATUS": _AUTHED, "APPEND": _AUTHED, "NAMESPACE": _AUTHED,
    "GETQUOTA": _AUTHED, "GETQUOTAROOT": _AUTHED, "SETQUOTA": _AUTHED, "ENABLE": _AUTHED,
    "IDLE": _AUTHED,
    "CHECK": _SELECTED, "CLOSE": _SELECTED, "UNSELECT": _SELECTED, "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED, "FETCH": _SELECTED, "STORE": _SELECTED, "COPY": _SELECTED,
    "MOVE": _SELECTED, "UID": _SELECTED, "SORT": _SELECTED,
}
# Commands after which other sessions' changes are not reported: an EXPUNGE
# response is not allowed during FETCH, STORE or SEARCH (RFC 3501 7.4.1), and
# sequence numbers must stay stable across COPY/MOVE/SORT too.
_NO_SYNC = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "SORT", "SELECT", "EXAMINE",
                      "CLOSE", "UNSELECT", "LOGOUT", "IDLE", "STARTTLS"})
_UID_COMMANDS = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT"})
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
                "DELETED", "DELETED-STORAGE")
_SPECIAL_USE = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})
_SPECIAL_USE_UPPER = {a.upper(): a for a in _SPECIAL_USE}
_HANDLED = object()     # a handler that already wrote its tagged response (STARTTLS, LOGOUT)


class No(Exception):
    """Answer the command with NO [code] text."""

    def __init__(self, text, code=None):
        Exception.__init__(self, text)
        self.text, self.code = text, code


class Bad(No):
    """Answer the command with BAD [code] text."""


async def _maybe(value):
    """Await a Deferred or coroutine; pass anything else through."""
    if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
        return await value
    return value


def _uid_key(record):
    return record.uid


class _SearchMessage:
    """One message as jdmail.imap.search / sort see it."""

    __slots__ = ("seq", "uid", "flags", "size", "internaldate", "modseq", "recent", "_data",
                 "_structure", "record", "fields")

    def __init__(self, seq, record, recent):
        self.seq = seq
        self.record = record
        self.uid = record.uid
        self.flags = record.flags
        self.size = record.size
        self.internaldate = record.internaldate
        self.modseq = record.modseq
        self.recent = recent
        self._data = None
        self._structure = None
        self.fields = None      # {envelope field: search value} when known without the structure

    def data(self):
        return self._data if self._data is not None else b""

    def structure(self):
        return self._structure


class IMAPServer(imap4.IMAP4Server):
    """One IMAP connection. See the module docstring for what differs from Twisted's."""

    log = Logger()

    def __init__(self, factory):
        imap4.IMAP4Server.__init__(self, contextFactory=factory.tls_context)
        self.factory = factory
        self.state = NOT_AUTH
        self.client = "?"
        self._buf = bytearray()     # input not yet consumed starts at _bufpos
        self._bufpos = 0
        self._parts = []            # lines and literals of the command being read
        self._size = 0              # octets in _parts
        self._head = None           # (tag, COMMAND) of the command being read
        self._literal_left = 0
        self._busy = False
        self._pumping = False
        self._paused = False
        self._gone = False
        self._closing = False
        self._admitted = False
        self._user_counted = None
        self._line_waiter = None
        self._out = []
        self._out_size = 0
        self._throttle = None
        self._tls = False
        self._failures = 0
        self._bad = 0
        self._preauth_commands = 0
        self._delay = None
        self.account = None
        self.store = None
        self._logout = None
        self.folder = None
        self.condstore = False
        self.qresync = False
        self._idling = False
        self._idle_stop = None
        self._idle_timer = None
        self._idle_sync_d = None
        self._idle_again = False
        self._idle_running = False
        self._close_after = None
        self._current_tag = "*"
        self._resume = None         # set by jdmail.imap.hibernate when this session wakes up

    # --- connection ---------------------------------------------------------------------

    def callLater(self, period, func, *args):
        return self.factory.reactor.callLater(period, func, *args)

    def connectionMade(self):
        if self._resume is not None:
            return hibernate.resume(self)
        self.client = peer_host(self.transport)
        set_nodelay(self.transport)
        self.factory.sessions.add(self)
        refused = self.factory.admit(self.client)
        if isinstance(refused, defer.Deferred):
            # A worker process asks the master (global limits): input waits for the answer.
            self._busy = True
            refused.addErrback(self._limits_unknown).addCallback(self._admitted_later)
            return
        self._admit(refused)

    def _limits_unknown(self, failure):
        self.log.warn("imap cannot check the connection limits client={client}: {error}",
                      client=self.client, error=failure.getErrorMessage())
        return LIMITS_UNKNOWN

    def _admitted_later(self, refused):
        self._busy = False
        if self._gone:
            if not refused:
                self.factory.release(self.client)
            return
        self._admit(refused)
        self._pump()

    def _admit(self, refused):
        if refused:
            self.log.info("imap connection refused client={client} reason={reason}",
                          client=self.client, reason=refused)
            if refused == LIMITS_UNKNOWN:
                self.transport.write(b"* BYE [UNAVAILABLE] Service not available, try again later\r\n")
            else:
                self.transport.write(b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n")
            self._closing = True
            self.transport.loseConnection()
            return
        self._admitted = True
        self._tls = bool(self.factory.implicit_tls) or interfaces.ISSLTransport.providedBy(self.transport)
        self.setTimeout(self.factory.login_timeout)
        self.transport.write(b"* OK [CAPABILITY " + self.capability_line() + b"] "
                             + self.factory.banner.encode("utf-8") + b"\r\n")

    def idle(self):
        """No command is running (an IDLE command counts as idle): at a worker's stop
        the session may be ended at once."""
        return not self._busy or self._idling

    def shut_down(self):
        """The server stops: ``* BYE`` and close (RFC 3501 7.1.5)."""
        if not self._gone and not self._closing:
            self._write_now(b"* BYE Server shutting down, try again later\r\n")
            self._closing = True
            self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self._gone = True
        self.factory.sessions.discard(self)
        if self.factory.hibernation is not None:
            self.factory.hibernation.unwatch(self)
        self.setTimeout(None)
        if self._delay is not None and not self._delay.called:
            self._delay.cancel()
        waiter, self._line_waiter = self._line_waiter, None
        if waiter is not None and not waiter.called:
            waiter.errback(defer.CancelledError())
        if self._throttle is not None:
            self._throttle.stopProducing()
        self._stop_idle()
        self._deselect()
        if self._user_counted is not None:
            self.factory.release_user(self._user_counted)
            self._user_counted = None
        if self._admitted:
            self._admitted = False
            self.factory.release(self.client)
        logout, self._logout = self._logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                self.log.failure("imap logout failed")

    def timeoutConnection(self):
        if self._busy and not self._idling:
            return self.setTimeout(self.timeOut)    # a command is running: not the client's idleness
        self.log.info("imap timeout client={client} user={user}", client=self.client,
                      user=self.account.name if self.account else "-")
        self._write_now(b"* BYE Autologout; idle for too long\r\n")
        self._close()

    def _close(self):
        self._closing = True
        self._buf = bytearray()
        self._bufpos = 0
        if not self._gone:
            self.transport.loseConnection()

    # --- output -------------------------------------------------------------------------

    def _send(self, data):
        self._out.append(data)
        self._out_size += len(data)

    def _flush(self):
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._out_size = 0
            if not self._gone and not self.transport.disconnecting:
                write_now(self.transport, data)

    def _write_now(self, data):
        self._send(data)
        self._flush()

    async def _drain(self):
        """Write what is collected; while the transport is full, wait."""
        self._flush()
        if self._throttle is None:
            self._throttle = Throttle()
            self.transport.registerProducer(self._throttle, True)
        await self._throttle.wait()
        self.resetTimeout()
        if self._gone or self._throttle.stopped:
            raise defer.CancelledError()

    def _end_streaming(self):
        if self._throttle is not None:
            self._throttle = None
            if not self._gone:
                self.transport.unregisterProducer()

    # --- input framing ------------------------------------------------------------------

    def dataReceived(self, data):
        if self._gone or self._closing:
            return
        self._buf += data
        if self.state != NOT_AUTH:
            # before login only whole commands count as activity: a client that
            # trickles a byte a minute does not keep its connection for ever
            self.resetTimeout()
        self._pump()

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_loop()
        finally:
            self._pumping = False
        # responses of pipelined commands that completed at once go out in one write
        self._flush()
        if self._closing or self._gone:
            return
        if self._busy and self._line_waiter is None and len(self._buf) - self._bufpos > MAX_PENDING_INPUT:
            if not self._paused:
                self._paused = True
                self.transport.pauseProducing()
        elif self._paused and not self._busy:
            self._paused = False
            self.transport.resumeProducing()

    def _pump_loop(self):
        """Consume input from ``_bufpos`` on; the consumed part is dropped once at the end
        (not per line: 256 KB of pipelined commands must not cost a copy per command)."""
        try:
            self._pump_input()
        finally:
            if self._bufpos:
                del self._buf[:self._bufpos]
                self._bufpos = 0

    def _pump_input(self):
        while not self._closing and not self._gone:
            start = self._bufpos
            available = len(self._buf) - start
            if self._literal_left:
                if not available:
                    return
                n = min(available, self._literal_left)
                self._parts.append(bytes(self._buf[start:start + n]))
                self._bufpos = start + n
                self._size += n
                self._literal_left -= n
                continue
            if self._busy and self._line_waiter is None:
                return
            limit = MAX_LINE if self.state in _AUTHED else MAX_LINE_PREAUTH
            i = self._buf.find(b"\n", start, start + limit + 2)
            if i < 0:
                if available > limit:
                    self._too_long()
                return
            line = bytes(self._buf[start:i + 1])
            self._bufpos = i + 1
            if self._line_waiter is not None:
                self.resetTimeout()
                waiter, self._line_waiter = self._line_waiter, None
                waiter.callback(line.rstrip(b"\r\n"))
                continue
            self._command_line(line)

    def _too_long(self):
        if self._head:
            tag = self._head[0]
        else:
            word = bytes(self._buf[self._bufpos:self._bufpos + 100]).split(b" ", 1)[0]
            tag = word.decode("ascii") if 0 < len(word) < 100 and word.isalnum() else "*"
        self._write_now(tag.encode() + b" BAD Command line too long\r\n"
                        b"* BYE Command line too long\r\n")
        self.log.info("imap closing client={client}: command line too long", client=self.client)
        self._close()

    def _reset_command(self):
        self._parts, self._size, self._head, self._literal_left = [], 0, None, 0

    def _command_line(self, line):
        if self._head is None:
            words = line[:200].split(None, 3)
            tag = words[0].decode("ascii", "replace") if words else "*"
            cmd = words[1].decode("ascii", "replace").upper() if len(words) > 1 else ""
            if cmd == "UID" and len(words) > 2:
                cmd = "UID " + words[2].decode("ascii", "replace").upper()
            self._head = (tag, cmd)
        self._parts.append(line)
        self._size += len(line)
        stripped = line.rstrip(b"\r\n")
        lit = literal_suffix(stripped)
        if lit is None:
            data = b"".join(self._parts)
            self._reset_command()
            self._dispatch(data)
            return
        size, sync, _binary = lit
        tag, cmd = self._head
        if self.state not in _AUTHED:
            limit, total = MAX_LITERAL_PREAUTH, MAX_LINE_PREAUTH + MAX_LITERAL_PREAUTH
        elif cmd == "APPEND":
            limit = self.factory.max_message_size
            total = limit + MAX_COMMAND
        else:
            limit, total = MAX_LITERAL, MAX_COMMAND
        if size < 0 or size > limit or self._size + size > total:
            self._reset_command()
            why = "Invalid literal size" if size < 0 else "Literal too large"
            code = b"[TOOBIG] " if cmd == "APPEND" and size > 0 else b""
            if sync:
                self._write_now(tag.encode("ascii", "replace") + b" BAD " + code + why.encode() + b"\r\n")
                self._count_bad()
            else:
                self._write_now(tag.encode("ascii", "replace") + b" BAD " + code + why.encode() + b"\r\n"
                                b"* BYE Non-synchronizing literal too large\r\n")
                self.log.info("imap closing client={client}: literal of {size} octets refused",
                              client=self.client, size=size)
                self._close()
            return
        if sync:
            self._write_now(b"+ Ready for literal data\r\n")
        self._literal_left = size

    def _count_bad(self):
        self._bad += 1
        if self._bad >= MAX_BAD_COMMANDS:
            self._write_now(b"* BYE Too many invalid commands\r\n")
            self._close()

    def _read_line(self):
        """A Deferred firing with the client's next line (CRLF removed): SASL responses, DONE."""
        self._line_waiter = defer.Deferred()
        d = self._line_waiter
        if not self._pumping:
            self.factory.reactor.callLater(0, self._pump)
        return d

    # --- dispatch -----------------------------------------------------------------------

    def _dispatch(self, data):
        self.resetTimeout()
        try:
            tag, cmd, args = parse_command(data)
        except ParseError as e:
            tag = e.tag.encode() if e.tag else b"*"
            self._write_now(tag + b" BAD " + e.text.encode("utf-8", "replace") + b"\r\n")
            self._count_bad()
            return
        if self.state == NOT_AUTH:
            self._preauth_commands += 1
            if self._preauth_commands > MAX_COMMANDS_PREAUTH:
                self._write_now(b"* BYE Too many commands before login\r\n")
                self._close()
                return
        states = COMMANDS.get(cmd)
        if states is None:
            self._write_now(tag.encode() + b" BAD Unknown command\r\n")
            self._count_bad()
            return
        if self.state not in states:
            if self.state == NOT_AUTH:
                text = b"Not logged in"
            elif states is _SELECTED:
                text = b"No mailbox selected"
            elif states is _NOT_AUTH:
                text = b"Already logged in"
            else:
                text = b"Command not valid in this state"
            self._write_now(tag.encode() + b" BAD " + text + b"\r\n")
            self._count_bad()
            return
        self._start_command(tag, cmd, args)

    def _start_command(self, tag, cmd, args):
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._run(tag, cmd, args))
        d.addErrback(self._internal_error)
        d.addBoth(self._command_done)

    def _internal_error(self, failure):
        if not failure.check(defer.CancelledError):
            self.log.failure("imap internal error client={client}", failure, client=self.client)

    def _command_done(self, _):
        self._busy = False
        self._end_streaming()
        if not self._gone:
            self._pump()

    async def _run(self, tag, cmd, args):
        btag = tag.encode()
        self._current_tag = tag
        sync_ok = cmd not in _NO_SYNC
        if cmd == "UID":
            sub = args[0].upper() if args and isinstance(args[0], Atom) else ""
            sync_ok = sub in ("FETCH", "STORE", "SEARCH", "COPY", "EXPUNGE", "SORT")
        status, code, text = b"OK", None, cmd.title() + " completed"
        if cmd == "UID" and sync_ok:
            text = "UID " + sub.title() + " completed"
        try:
            result = await getattr(self, "cmd_" + cmd)(tag, args)
            if result is _HANDLED:
                return
            if isinstance(result, tuple):
                code, text = result[0], result[1] or text
            elif result is not None:
                text = result
        except Bad as e:
            status, code, text = b"BAD", e.code, e.text
        except No as e:
            status, code, text = b"NO", e.code, e.text
        except (ParseError, SequenceSetError) as e:
            status, text = b"BAD", str(e)
        except MailboxNameError as e:
            status, text = b"NO", str(e)
        except QuotaExceeded:
            status, code, text = b"NO", "OVERQUOTA", "Quota exceeded"
        except FolderGone:
            self._gone_folder()
            return
        except FolderError as e:
            status, text = b"NO", str(e) or "Mailbox operation refused"
        except defer.CancelledError:
            return
        except Exception:
            if self._gone:
                return
            self.log.failure("imap command {command} failed client={client} user={user}", command=cmd,
                             client=self.client, user=self.account.name if self.account else "-")
            status, code, text = b"NO", "SERVERBUG", "Internal error, try again later"
        if self._gone:
            return
        if sync_ok and self.state == SELECTED:
            try:
                await self._sync()
            except defer.CancelledError:
                return
            except FolderGone:
                self._gone_folder()
                return
            except Exception:
                self.log.failure("imap refresh failed user={user}", user=self.account.name)
        if self._gone:
            return
        line = btag + b" " + status + b" "
        if code:
            line += b"[" + code.encode("utf-8") + b"] "
        self._send(line + text.encode("utf-8") + b"\r\n")
        if not self._pumping:
            self._flush()
        if self._close_after:
            self._write_now(self._close_after)
            self._close()
        elif status == b"BAD":
            self._count_bad()

    # --- capabilities -------------------------------------------------------------------

    def _plaintext_ok(self):
        return self._tls or self.factory.allow_plaintext

    def capabilities(self):
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state == NOT_AUTH:
            if self.factory.tls_context is not None and not self._tls:
                caps.append("STARTTLS")
            if self._plaintext_ok():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return caps
        return caps + ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE",
                       "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "QUOTA",
                       "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", "CONDSTORE", "QRESYNC", "ESEARCH",
                       "SORT", "STATUS=SIZE"]

    def capability_line(self):
        return " ".join(self.capabilities()).encode("ascii")

    # --- helpers ------------------------------------------------------------------------

    def _mailbox(self, token):
        return decode_mailbox(token)

    def _recent_uids(self):
        recent = getattr(self.folder, "recent", None)
        if recent is None or isinstance(recent, int):
            return frozenset()
        return recent

    def _recent_count(self):
        recent = getattr(self.folder, "recent", None)
        if isinstance(recent, int):
            return recent
        return len(recent) if recent else 0

    def _seq_of(self, uid):
        """The sequence number of ``uid`` in the view, or None."""
        records = self.folder.records
        i = bisect.bisect_left(records, uid, key=_uid_key)
        if i < len(records) and records[i].uid == uid:
            return i + 1
        return None

    def _enable_condstore(self):
        self.condstore = True

    def _report_expunged(self, uids):
        """Untagged EXPUNGE (or VANISHED under QRESYNC) for ``uids`` (ascending), which
        the view no longer holds. EXPUNGE numbers follow RFC 3501's example: each one
        is the message's number after the previous EXPUNGEs took effect."""
        if not uids:
            return
        if self.qresync:
            self._send(b"* VANISHED " + format_set(sorted(uids)).encode() + b"\r\n")
            return
        records = self.folder.records
        out = []
        for uid in sorted(uids):
            n = bisect.bisect_left(records, uid, key=_uid_key) + 1
            out.append(b"* %d EXPUNGE\r\n" % n)
        self._send(b"".join(out))

    def _flag_fetch(self, seq, record, with_flags=True):
        items = []
        if with_flags:
            items.append(b"FLAGS " + record_flags(record, self._recent_uids()))
        items.append(b"UID %d" % record.uid)
        if self.condstore:
            items.append(b"MODSEQ (%d)" % record.modseq)
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

    def _report(self, changes):
        folder = self.folder
        if changes.expunged:
            self._report_expunged(changes.expunged)
        if changes.added:
            self._send(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(folder.records), self._recent_count()))
        for record in changes.changed:
            seq = self._seq_of(record.uid)
            if seq is not None:
                self._send(self._flag_fetch(seq, folder.records[seq - 1]))

    async def _sync(self):
        """Report what changed in the selected folder (other sessions, deliveries)."""
        folder = self.folder
        if folder is None:
            return
        changes = await _maybe(folder.refresh())
        if self.folder is folder and changes is not None:
            self._report(changes)

    def _gone_folder(self):
        """The selected folder was deleted or rebuilt under this session: end it (RFC 3501
        gives no other way to tell the client its sequence numbers mean nothing now)."""
        self.log.info("imap closing user={user}: selected mailbox deleted or rebuilt",
                      user=self.account.name if self.account else "-")
        self._deselect()
        self._write_now(b"* BYE [UNAVAILABLE] The selected mailbox was deleted or rebuilt\r\n")
        self._close()

    def _deselect(self):
        folder, self.folder = self.folder, None
        if folder is not None:
            try:
                folder.close()
            except Exception:
                self.log.failure("imap folder close failed")
        if self.state == SELECTED:
            self.state = AUTH

    def _flags_arg(self, tokens, allow_recent=False):
        """Validate a flag list for STORE/APPEND; returns canonical flags."""
        out = []
        for t in tokens:
            if not isinstance(t, Atom) or not t:
                raise Bad("Invalid flag")
            flag = canonical_flag(str(t))
            if flag.startswith("\\"):
                if flag == "\\Recent":
                    if allow_recent:
                        continue
                    raise Bad("\\Recent cannot be set")
                if flag not in SYSTEM_FLAGS:
                    raise Bad("Unknown system flag %s" % flag)
            elif any(c in flag for c in '(){%*"\\]') or not flag.isascii():
                raise Bad("Invalid keyword")
            out.append(flag)
        return out

    async def _folder_exists(self, name):
        try:
            folders = await _maybe(self.store.list_folders())
        except Exception:
            return True
        return any(f.name == name for f in folders)

    async def _folder_error(self, e, name):
        """NO for a FolderError from APPEND/COPY/MOVE: TRYCREATE when the folder is missing."""
        code = getattr(e, "code", None)
        # no TRYCREATE for a name CREATE would refuse too ("../x", "/abs"): it promises
        # the client that creating the mailbox first makes the command work
        invalid = str(e).startswith("Invalid mailbox name")
        if code is None and not invalid and not await self._folder_exists(name):
            code = "TRYCREATE"
        return No(str(e) or "Mailbox does not exist", code)

    # --- any state ----------------------------------------------------------------------

    async def cmd_CAPABILITY(self, tag, args):
        self._send(b"* CAPABILITY " + self.capability_line() + b"\r\n")

    async def cmd_NOOP(self, tag, args):
        return None

    async def cmd_LOGOUT(self, tag, args):
        self._write_now(b"* BYE Logging out\r\n" + tag.encode() + b" OK Logout completed\r\n")
        self.state = LOGOUT
        self._deselect()
        self._close()
        return _HANDLED

    async def cmd_ID(self, tag, args):
        if len(args) != 1 or not (isinstance(args[0], list) or (isinstance(args[0], Atom)
                                                                 and args[0].upper() == "NIL")):
            raise Bad("Expected ID (field value ...) or ID NIL")
        self._send(b'* ID ("name" "jdmail" "vendor" "jdmail")\r\n')

    # --- not authenticated --------------------------------------------------------------

    async def cmd_STARTTLS(self, tag, args):
        if args:
            raise Bad("STARTTLS takes no arguments")
        if self._tls:
            raise Bad("TLS is already active")
        if self.factory.tls_context is None or interfaces.ITLSTransport(self.transport, None) is None:
            raise No("TLS is not available")
        self._write_now(tag.encode() + b" OK Begin TLS negotiation now\r\n")
        # Anything pipelined after STARTTLS came in plaintext: never run it inside TLS.
        self._buf = bytearray()
        self._bufpos = 0
        self._reset_command()
        self.transport.startTLS(self.factory.tls_context)
        self._tls = True
        return _HANDLED

    async def cmd_LOGIN(self, tag, args):
        if len(args) != 2 or isinstance(args[0], list) or isinstance(args[1], list):
            raise Bad("Expected LOGIN user password")
        if not self._plaintext_ok():
            self._log_login("?", "LOGIN", "refused: plaintext login without TLS")
            raise No("Plaintext authentication disallowed without TLS; use STARTTLS", "PRIVACYREQUIRED")
        try:
            user = astring(args[0])
            password = astring(args[1])
        except ParseError:
            return await self._failed("?", "LOGIN", "user name or password not UTF-8")
        return await self._login(user, password, "LOGIN")

    async def cmd_AUTHENTICATE(self, tag, args):
        if not args or len(args) > 2 or not isinstance(args[0], Atom):
            raise Bad("Expected AUTHENTICATE mechanism [initial-response]")
        if args[0].upper() != "PLAIN":
            raise No("Unsupported authentication mechanism")
        if not self._plaintext_ok():
            self._log_login("?", "PLAIN", "refused: plaintext login without TLS")
            raise No("Plaintext authentication disallowed without TLS; use STARTTLS", "PRIVACYREQUIRED")
        if len(args) == 2:
            if isinstance(args[1], list):
                raise Bad("Invalid initial response")
            response = bytes(args[1].encode("ascii") if isinstance(args[1], str) else args[1])
        else:
            self._write_now(b"+ \r\n")
            response = await self._read_line()
        response = response.strip()
        if response == b"*":
            raise Bad("Authentication cancelled")
        try:
            raw = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            raise Bad("Invalid base64 in the authentication response") from None
        parts = raw.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise Bad("Invalid PLAIN response: expected authzid NUL user NUL password")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return await self._failed("?", "PLAIN", "user name or password not UTF-8")
        if authzid and authzid.strip().lower() != authcid.strip().lower():
            return await self._failed(authcid, "PLAIN", "authzid differs from authcid")
        return await self._login(authcid, password, "PLAIN")

    async def _login(self, user, password, mech):
        factory = self.factory
        try:
            _iface, account, logout = await factory.portal.login(
                UsernamePassword(user, password), None, IAccountAvatar)
        except DirectoryUnavailable:
            self._log_login(user, mech, "failed: directory unavailable")
            raise No("Authentication temporarily unavailable, try again later", "UNAVAILABLE") from None
        except DisabledAccount:
            return await self._failed(user, mech, "account disabled")
        except (UnauthorizedLogin, LoginFailed):
            return await self._failed(user, mech, "wrong user name or password")
        except Exception:
            self.log.failure("imap login error user={user} client={client}", user=user, client=self.client)
            self._log_login(user, mech, "failed: internal error")
            raise No("Authentication temporarily unavailable, try again later", "UNAVAILABLE") from None
        if self._gone:
            logout()
            raise defer.CancelledError()
        if "imap" not in account.protocols:
            logout()
            self._log_login(account.name, mech, "failed: imap disabled for the account")
            raise No("IMAP access is disabled for this account", "AUTHORIZATIONFAILED")
        refused = factory.admit_user(account.name)
        if isinstance(refused, defer.Deferred):
            try:
                refused = await refused
            except Exception as e:
                self.log.warn("imap cannot check the sessions of user={user}: {error}", user=account.name, error=e)
                logout()
                self._log_login(account.name, mech, "failed: session limit unknown")
                raise No("Service temporarily unavailable, try again later", "UNAVAILABLE") from None
            if self._gone:
                if not refused:
                    factory.release_user(account.name)
                logout()
                raise defer.CancelledError()
        if refused:
            logout()
            self._log_login(account.name, mech, "failed: " + refused)
            raise No("Too many connections for this user", "LIMIT")
        self._user_counted = account.name
        try:
            store = factory.services.store.account(account.mailbox, account.quota_bytes,
                                                   getattr(account, "quota_messages", 0))
        except Exception:
            self.log.failure("imap cannot open the mail store user={user}", user=account.name)
            factory.release_user(account.name)
            self._user_counted = None
            logout()
            self._log_login(account.name, mech, "failed: mail store unavailable")
            raise No("Mail store temporarily unavailable, try again later", "UNAVAILABLE") from None
        self.account, self.store, self._logout = account, store, logout
        self.state = AUTH
        self.setTimeout(factory.timeout)
        if factory.hibernation is not None:
            factory.hibernation.watch(self)
        self._log_login(account.name, mech, "ok")
        return "CAPABILITY " + self.capability_line().decode(), "Logged in"

    async def _failed(self, user, mech, reason):
        self._log_login(user, mech, "failed: " + reason)
        self._failures += 1
        delay = self.factory.fail_delay
        if delay and delay > 0:
            self._delay = task.deferLater(self.factory.reactor, delay, lambda: None)
            try:
                await self._delay
            finally:
                self._delay = None
        if self._gone:
            raise defer.CancelledError()
        if self.factory.max_failures and self._failures >= self.factory.max_failures:
            self._close_after = b"* BYE Too many failed logins\r\n"
        raise No("Authentication failed", "AUTHENTICATIONFAILED")

    def _log_login(self, user, mech, result):
        self.log.info("imap login user={user} client={client} mech={mech} tls={tls} result={result}",
                      user=user, client=self.client, mech=mech, tls="yes" if self._tls else "no",
                      result=result)

    # --- authenticated ------------------------------------------------------------------

    async def cmd_ENABLE(self, tag, args):
        if self.state != AUTH:
            raise Bad("ENABLE is only valid before a mailbox is selected")
        if not args:
            raise Bad("ENABLE needs at least one capability")
        enabled = []
        for a in args:
            if not isinstance(a, Atom):
                raise Bad("Invalid capability name")
            name = a.upper()
            if name == "CONDSTORE":
                self.condstore = True
                enabled.append("CONDSTORE")
            elif name == "QRESYNC":
                self.condstore = self.qresync = True
                enabled.append("QRESYNC")
        self._send(b"* ENABLED" + b"".join(b" " + e.encode() for e in enabled) + b"\r\n")

    async def cmd_NAMESPACE(self, tag, args):
        self._send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')

    async def cmd_SELECT(self, tag, args):
        return await self._select(args, readonly=False)

    async def cmd_EXAMINE(self, tag, args):
        return await self._select(args, readonly=True)

    async def _select(self, args, readonly):
        if not args or len(args) > 2:
            raise Bad("Expected a mailbox name")
        qresync = None
        if len(args) == 2:
            if not isinstance(args[1], list):
                raise Bad("Invalid SELECT parameters")
            params = list(args[1])
            while params:
                p = params.pop(0)
                name = p.upper() if isinstance(p, Atom) else ""
                if name == "CONDSTORE":
                    self._enable_condstore()
                elif name == "QRESYNC":
                    if not self.qresync:
                        raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
                    if not params or not isinstance(params[0], list):
                        raise Bad("QRESYNC needs (uidvalidity modseq [known-uids])")
                    qresync = self._qresync_params(params.pop(0))
                else:
                    raise Bad("Unknown SELECT parameter")
        if self.folder is not None:
            self._deselect()
            if self.qresync:
                self._send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        name = self._mailbox(args[0])
        folder = await _maybe(self.store.open_folder(name, readonly))
        if self._gone:
            folder.close()
            raise defer.CancelledError()
        self.folder = folder
        self.state = SELECTED
        records = folder.records
        # the union of the few distinct flag sets, not of one per message
        keywords = set().union(*{r.flags for r in records}) if records else set()
        keywords = sorted(f for f in keywords if not f.startswith("\\"))
        flags = " ".join(list(SYSTEM_FLAGS) + keywords).encode()
        out = [b"* FLAGS (" + flags + b")\r\n"]
        if readonly:
            out.append(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        else:
            out.append(b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted\r\n")
        out.append(b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(records), self._recent_count()))
        for i, r in enumerate(records):
            if "\\Seen" not in r.flags:
                out.append(b"* OK [UNSEEN %d] First unseen\r\n" % (i + 1))
                break
        out.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity)
        out.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % folder.uidnext)
        out.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highestmodseq)
        self._send(b"".join(out))
        if qresync is not None:
            await self._qresync_select(folder, *qresync)
        return ("READ-ONLY" if readonly else "READ-WRITE"), ("EXAMINE" if readonly else "SELECT") + " completed"

    def _qresync_params(self, tokens):
        if len(tokens) < 2 or not all(isinstance(t, Atom) and t.isdigit() for t in tokens[:2]):
            raise Bad("QRESYNC needs (uidvalidity modseq [known-uids])")
        uidvalidity, modseq = int(tokens[0]), int(tokens[1])
        known = None
        rest = tokens[2:]
        if rest and isinstance(rest[0], Atom):
            known = parse_sequence_set(rest.pop(0))
            if any(lo is None or hi is None for lo, hi in known):
                raise Bad("known-uids may not contain *")
        if rest and not isinstance(rest[0], list):
            raise Bad("Invalid QRESYNC parameters")
        return uidvalidity, modseq, known

    async def _qresync_select(self, folder, uidvalidity, modseq, known):
        if uidvalidity != folder.uidvalidity:
            return
        vanished = await _maybe(folder.vanished_since(modseq))
        if known is not None:
            vanished = [u for u in vanished if any(lo <= u <= hi or hi <= u <= lo for lo, hi in known)]
        if vanished:
            self._send(b"* VANISHED (EARLIER) " + format_set(sorted(set(vanished))).encode() + b"\r\n")
        known_spans = resolve(known, folder.records, uid=True) if known is not None else None
        indexes = iter_spans(known_spans) if known_spans is not None else range(len(folder.records))
        for i in indexes:
            r = folder.records[i]
            if r.modseq > modseq:
                self._send(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                           % (i + 1, r.uid, record_flags(r, self._recent_uids()), r.modseq))
                if self._out_size > FLUSH_AT:
                    await self._drain()

    async def cmd_CREATE(self, tag, args):
        if not args or len(args) > 2:
            raise Bad("Expected CREATE mailbox [(USE (attributes))]")
        name = self._mailbox(args[0]).rstrip("/")
        if not name:
            raise No("Invalid mailbox name")
        special = None
        if len(args) == 2:
            opts = args[1]
            if (not isinstance(opts, list) or len(opts) != 2 or not isinstance(opts[0], Atom)
                    or opts[0].upper() != "USE" or not isinstance(opts[1], list)):
                raise Bad("Expected (USE (attributes))")
            uses = []
            for a in opts[1]:
                attr = _SPECIAL_USE_UPPER.get(a.upper()) if isinstance(a, Atom) else None
                if attr is None:
                    raise No("Unsupported special-use attribute", "USEATTR")
                uses.append(attr)
            if len(uses) > 1:
                raise No("Only one special-use attribute per mailbox", "USEATTR")
            special = uses[0] if uses else None
        if name == "INBOX":
            raise No("INBOX already exists", "ALREADYEXISTS")
        if special is not None:
            await _maybe(self.store.create_folder(name, special))
        else:
            await _maybe(self.store.create_folder(name))

    async def cmd_DELETE(self, tag, args):
        if len(args) != 1:
            raise Bad("Expected DELETE mailbox")
        name = self._mailbox(args[0])
        if name == "INBOX":
            raise No("INBOX cannot be deleted")
        if self.folder is not None and self.folder.name == name:
            self._deselect()
        await _maybe(self.store.delete_folder(name))

    async def cmd_RENAME(self, tag, args):
        if len(args) != 2:
            raise Bad("Expected RENAME old new")
        old = self._mailbox(args[0])
        new = self._mailbox(args[1]).rstrip("/")
        if not new:
            raise No("Invalid mailbox name")
        if new == "INBOX":
            raise No("INBOX already exists", "ALREADYEXISTS")
        await _maybe(self.store.rename_folder(old, new))

    async def cmd_SUBSCRIBE(self, tag, args):
        if len(args) != 1:
            raise Bad("Expected SUBSCRIBE mailbox")
        await _maybe(self.store.subscribe(self._mailbox(args[0]), True))

    async def cmd_UNSUBSCRIBE(self, tag, args):
        if len(args) != 1:
            raise Bad("Expected UNSUBSCRIBE mailbox")
        await _maybe(self.store.subscribe(self._mailbox(args[0]), False))

    async def cmd_LIST(self, tag, args):
        req = listing.parse_list_args(args)
        return await self._list(req, lsub=False)

    async def cmd_LSUB(self, tag, args):
        if len(args) != 2 or isinstance(args[0], list) or isinstance(args[1], list):
            raise Bad("Expected LSUB reference pattern")
        req = listing.ListRequest()
        req.reference, req.patterns = args[0], [args[1]]
        return await self._list(req, lsub=True)

    async def _list(self, req, lsub):
        reference = decode_mailbox(req.reference) if req.reference not in (b"", "") else ""
        word = b"LSUB" if lsub else b"LIST"
        patterns = []
        for raw in req.patterns:
            text = decode_mailbox(raw) if raw not in (b"", "") else ""
            patterns.append(text)
        if patterns == [""] and not req.extended:
            self._send(b"* " + word + b' (\\Noselect) "/" ""\r\n')
            return None
        compiled = [listing.compile_pattern(listing.combine(reference, p)) for p in patterns if p]
        folders = await _maybe(self.store.list_folders())
        wants_subscriptions = lsub or req.select_subscribed or req.return_subscribed
        subscribed = set()
        if wants_subscriptions:
            if hasattr(self.store, "subscriptions"):
                subscribed = set(await _maybe(self.store.subscriptions()))
            else:
                subscribed = {f.name for f in folders if f.subscribed}
        existing = {f.name: f for f in folders}
        # (name, attributes, extended data) in the order the LIST answer shows them
        entries = []
        if lsub:
            # RFC 3501 6.3.9: subscribed names (existing or not); with "%", a parent of a
            # subscribed name that matches is shown \Noselect when it is not subscribed itself.
            shown = set()
            for name in sorted(subscribed, key=lambda n: (n != "INBOX", n.split("/"))):
                if any(p.match(name) for p in compiled):
                    f = existing.get(name)
                    attrs = {a for a in (f.attributes if f else ()) if a in ("\\Noselect", "\\NoInferiors")}
                    entries.append((name, attrs, b""))
                    shown.add(name)
            for name in sorted(subscribed):
                if name in shown:
                    continue
                parts = name.split("/")
                for i in range(len(parts) - 1, 0, -1):
                    parent = "/".join(parts[:i])
                    if parent not in shown and parent not in subscribed and any(p.match(parent) for p in compiled):
                        entries.append((parent, {"\\Noselect"}, b""))
                        shown.add(parent)
        else:
            subscribed_below = set()
            if req.recursive:
                for name in subscribed:
                    parts = name.split("/")
                    for i in range(1, len(parts)):
                        subscribed_below.add("/".join(parts[:i]))
            names = [f.name for f in folders]
            if req.select_subscribed:
                names += sorted(n for n in subscribed | subscribed_below if n not in existing)
            for name in names:
                if not any(p.match(name) for p in compiled):
                    continue
                f = existing.get(name)
                attrs = set(f.attributes) if f is not None else {"\\NonExistent"}
                extra = b""
                if req.select_subscribed and name not in subscribed:
                    if req.recursive and name in subscribed_below:
                        extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
                    else:
                        continue
                if req.select_special_use and not (attrs & _SPECIAL_USE):
                    continue
                if name in subscribed:
                    attrs.add("\\Subscribed")
                entries.append((name, attrs, extra))
        status_items = None
        if req.status_items is not None:
            status_items = self._status_items(req.status_items)
        lines = []
        statuses = []
        order = ("\\NonExistent", "\\Noselect", "\\HasChildren", "\\HasNoChildren")
        for name, attrs, extra in entries:
            attr_text = " ".join(sorted(attrs, key=lambda a: (a not in order, a)))
            lines.append(b"* " + word + b" (" + attr_text.encode() + b') "/" ' + mailbox_out(name)
                         + extra + b"\r\n")
            if status_items is not None and not extra and not attrs & {"\\Noselect", "\\NonExistent"}:
                statuses.append((len(lines), name))
        if status_items is None:
            self._send(b"".join(lines))
            return None
        # LIST-STATUS: each STATUS follows its LIST line
        done = 0
        for position, name in statuses:
            self._send(b"".join(lines[done:position]))
            done = position
            try:
                self._send(await self._status_line(name, status_items))
            except (FolderError, MailboxNameError):
                pass
        self._send(b"".join(lines[done:]))
        return None

    def _status_items(self, tokens):
        if not isinstance(tokens, list) or not tokens:
            raise Bad("Expected a list of status items")
        items = []
        for t in tokens:
            name = t.upper() if isinstance(t, Atom) else ""
            if name not in STATUS_ITEMS:
                raise Bad("Unknown status item")
            if name == "HIGHESTMODSEQ":
                self._enable_condstore()
            items.append(name)
        return items

    async def _status_line(self, name, items):
        st = await _maybe(self.store.status(name))
        values = dict(st)
        if "DELETED" in items or "DELETED-STORAGE" in items:
            deleted = deleted_size = 0
            folder = await _maybe(self.store.open_folder(name, True))
            try:
                for r in folder.records:
                    if "\\Deleted" in r.flags:
                        deleted += 1
                        deleted_size += r.size
            finally:
                folder.close()
            values["DELETED"], values["DELETED-STORAGE"] = deleted, deleted_size
        parts = b" ".join(b"%s %d" % (i.encode(), int(values.get(i, 0))) for i in items)
        return b"* STATUS " + mailbox_out(name) + b" (" + parts + b")\r\n"

    async def cmd_STATUS(self, tag, args):
        if len(args) != 2:
            raise Bad("Expected STATUS mailbox (items)")
        name = self._mailbox(args[0])
        items = self._status_items(args[1])
        self._send(await self._status_line(name, items))

    async def cmd_APPEND(self, tag, args):
        if len(args) < 2:
            raise Bad("Expected APPEND mailbox [(flags)] [date-time] message")
        name = self._mailbox(args[0])
        rest = list(args[1:])
        flags = []
        date = None
        if rest and isinstance(rest[0], list):
            flags = self._flags_arg(rest.pop(0), allow_recent=True)
        if len(rest) == 2:
            raw = rest.pop(0)
            if not isinstance(raw, bytes) or isinstance(raw, list):
                raise Bad("Invalid date-time")
            try:
                date = parse_date_time(raw.decode("ascii"))
            except (ValueError, UnicodeDecodeError) as e:
                raise Bad("Invalid date-time: %s" % e) from None
        if len(rest) != 1 or not isinstance(rest[0], bytes):
            raise Bad("Expected the message as a literal")
        data = bytes(rest[0])
        if not data:
            raise No("Cannot append an empty message")
        if len(data) > self.factory.max_message_size:
            raise No("Message too large", "TOOBIG")
        if b"\n" in data and data.count(b"\n") != data.count(b"\r\n"):
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        try:
            uidvalidity, uid = await _maybe(self.store.append(name, data, tuple(flags), date))
        except FolderError as e:
            raise await self._folder_error(e, name) from None
        return "APPENDUID %d %d" % (uidvalidity, uid), "Append completed"

    async def cmd_GETQUOTAROOT(self, tag, args):
        if len(args) != 1:
            raise Bad("Expected GETQUOTAROOT mailbox")
        name = self._mailbox(args[0])
        quota = await _maybe(self.store.quota())
        resources = self._quota_resources(quota)
        if not resources:
            self._send(b"* QUOTAROOT " + mailbox_out(name) + b"\r\n")
            return None
        self._send(b"* QUOTAROOT " + mailbox_out(name) + b' ""\r\n* QUOTA "" (' + resources + b")\r\n")

    async def cmd_GETQUOTA(self, tag, args):
        if len(args) != 1 or isinstance(args[0], list):
            raise Bad("Expected GETQUOTA root")
        root = astring(args[0])
        quota = await _maybe(self.store.quota())
        resources = self._quota_resources(quota)
        if root != "" or not resources:
            raise No("No such quota root", "NONEXISTENT")
        self._send(b'* QUOTA "" (' + resources + b")\r\n")

    async def cmd_SETQUOTA(self, tag, args):
        raise No("Quotas are set by the administrator", "NOPERM")

    @staticmethod
    def _quota_resources(quota):
        used, limit, used_messages, limit_messages = quota
        out = []
        if limit:
            out.append(b"STORAGE %d %d" % ((used + 1023) // 1024, limit // 1024))
        if limit_messages:
            out.append(b"MESSAGE %d %d" % (used_messages, limit_messages))
        return b" ".join(out)

    # --- IDLE (RFC 2177) ----------------------------------------------------------------

    async def cmd_IDLE(self, tag, args):
        resumed = args if isinstance(args, hibernate.Resumed) else None     # after hibernation
        if resumed is None:
            if args:
                raise Bad("IDLE takes no arguments")
            self._write_now(b"+ idling\r\n")
        self._idling = True
        folder = self.folder
        try:
            if folder is not None:
                self._idle_stop = folder.listen(self._idle_wakeup)
            self._idle_timer = self.callLater(resumed.keepalive_in if resumed else IDLE_KEEPALIVE,
                                              self._idle_tick)
            self._idle_wakeup()
            line = await self._read_line()
            if self._idle_sync_d is not None:
                await self._idle_sync_d
        finally:
            self._stop_idle()
        if line.strip().upper() != b"DONE":
            raise Bad("Expected DONE")
        return "IDLE terminated"

    def _idle_tick(self):
        self._idle_timer = None
        if not self._idling or self._gone:
            return
        self._write_now(b"* OK Still here\r\n")
        self._idle_wakeup()
        self._idle_timer = self.callLater(IDLE_KEEPALIVE, self._idle_tick)

    def _idle_wakeup(self, *_args):
        """The folder may have changed: report it now (at most one refresh at a time)."""
        if not self._idling or self._gone or self.folder is None:
            return
        if self._idle_running:
            self._idle_again = True
            return
        self._idle_running = True
        d = defer.Deferred.fromCoroutine(self._idle_sync())
        if self._idle_running:
            self._idle_sync_d = d

    async def _idle_sync(self):
        try:
            while True:
                self._idle_again = False
                try:
                    await self._sync()
                except FolderGone:
                    self._gone_folder()
                    break
                except Exception:
                    self.log.failure("imap refresh during IDLE failed user={user}", user=self.account.name)
                self._flush()
                if not self._idle_again or not self._idling or self._gone:
                    break
        finally:
            self._idle_running = False
            self._idle_sync_d = None

    def _stop_idle(self):
        self._idling = False
        stop, self._idle_stop = self._idle_stop, None
        if stop is not None:
            try:
                stop()
            except Exception:
                self.log.failure("imap stop listening failed")
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # --- selected -----------------------------------------------------------------------

    async def cmd_CHECK(self, tag, args):
        return None

    async def cmd_CLOSE(self, tag, args):
        folder = self.folder
        if not folder.readonly:
            try:
                await _maybe(folder.expunge())
            finally:
                self._deselect()
        else:
            self._deselect()

    async def cmd_UNSELECT(self, tag, args):
        self._deselect()

    async def cmd_EXPUNGE(self, tag, args):
        if args:
            raise Bad("EXPUNGE takes no arguments")
        return await self._expunge(None)

    async def _expunge(self, uids):
        folder = self.folder
        if folder.readonly:
            raise No("Mailbox is read-only")
        await self._sync()
        if uids is not None:
            expunged = await _maybe(folder.expunge(uids))
        else:
            expunged = await _maybe(folder.expunge())
        self._report_expunged(list(expunged))
        if self.qresync:
            return "HIGHESTMODSEQ %d" % folder.highestmodseq, None
        return None

    async def cmd_UID(self, tag, args):
        if not args or not isinstance(args[0], Atom) or args[0].upper() not in _UID_COMMANDS:
            raise Bad("Unknown UID command")
        sub = args[0].upper()
        rest = args[1:]
        if sub == "FETCH":
            return await self._fetch(rest, True)
        if sub == "STORE":
            return await self._store(rest, True)
        if sub == "COPY":
            return await self._copy(rest, True, False)
        if sub == "MOVE":
            return await self._copy(rest, True, True)
        if sub == "SEARCH":
            return await self._search(rest, True)
        if sub == "SORT":
            return await self._sort(rest, True)
        if len(rest) != 1:
            raise Bad("Expected UID EXPUNGE uid-set")
        ranges = parse_sequence_set(rest[0])
        spans = resolve(ranges, self.folder.records, uid=True)
        uids = [self.folder.records[i].uid for i in iter_spans(spans)]
        if not uids:
            if self.folder.readonly:
                raise No("Mailbox is read-only")
            return None
        return await self._expunge(uids)

    # FETCH ----------------------------------------------------------------------------

    async def cmd_FETCH(self, tag, args):
        return await self._fetch(args, False)

    async def _fetch(self, args, uid):
        if len(args) not in (2, 3):
            raise Bad("Expected FETCH sequence-set items")
        ranges = parse_sequence_set(args[0])
        req = parse_fetch(args[1], args[2] if len(args) == 3 else None)
        if req.vanished and not (uid and self.qresync):
            raise Bad("VANISHED needs UID FETCH and ENABLE QRESYNC")
        if "MODSEQ" in req.items:
            self._enable_condstore()
        folder = self.folder
        spans = resolve(ranges, folder.records, uid)
        if req.vanished:
            top = folder.records[-1].uid if folder.records else 0
            vanished = await _maybe(folder.vanished_since(req.changedsince))
            from jdmail.imap.sequence import uid_set_contains
            shown = sorted(u for u in set(vanished) if uid_set_contains(ranges, u, max(top, u)))
            if shown:
                self._send(b"* VANISHED (EARLIER) " + format_set(shown).encode() + b"\r\n")
        extras = []
        seen_set = ()
        if req.sets_seen and not folder.readonly:
            unseen = [folder.records[i].uid for i in iter_spans(spans)
                      if "\\Seen" not in folder.records[i].flags]
            if unseen:
                await _maybe(folder.store_flags(unseen, frozenset({"\\Seen"}), "+"))
                extras.append("FLAGS")
                if self.condstore:
                    extras.append("MODSEQ")
                seen_set = set(unseen)
        missing = False
        changedsince = req.changedsince
        recent = self._recent_uids()
        records = folder.records
        fast = fast_renderer(req, uid) if changedsince is None else None
        if fast is not None:
            for start, stop in spans:
                for k in range(start, stop, 512):
                    self._send(fast.render(records, k, min(k + 512, stop), recent))
                    if self._out_size > FLUSH_AT:
                        await self._drain()
        elif req.index_only:
            for i in iter_spans(spans):
                record = records[i]
                if changedsince is not None and record.modseq <= changedsince:
                    continue
                self._send(render(req, i + 1, record, uid, recent=recent))
                if self._out_size > FLUSH_AT:
                    await self._drain()
        else:
            # BODY[]/RFC822 of a big message is streamed from its file, never read whole
            whole_only = req.needs_data and all(sec.spec == "" for sec in req.sections)
            head_req = None
            if whole_only and any(folder.records[i].size > STREAM_AT for i in iter_spans(spans)):
                head_req = copy.copy(req)
                head_req.items = [item for item in req.items if not isinstance(item, Section)]
            wanted = [i for i in iter_spans(spans)
                      if changedsince is None or folder.records[i].modseq > changedsince]
            if req.needs_data and not req.needs_structure and all(sec.header_only for sec in req.sections):
                fkey = SECTION_CACHE.folder_key(folder)
                if fkey is not None:
                    missing = await self._fetch_headers(req, fkey, wanted, uid, extras, seen_set, recent)
                    wanted = ()
            for k in range(0, len(wanted), BATCH):
                batch = wanted[k:k + BATCH]
                structures = None
                if req.needs_structure:
                    structures = await self._structures(folder, [folder.records[i].uid for i in batch])
                for i in batch:
                    record = folder.records[i]
                    structure = None
                    if structures is not None:
                        structure = structures.get(record.uid)
                        if structure is None:
                            missing = True
                            continue
                    done = await self._fetch_one(req, head_req, whole_only, i + 1, record, uid,
                                                 extras if record.uid in seen_set else (), structure, recent)
                    missing |= not done
                    if self._out_size > FLUSH_AT:
                        await self._drain()
        if missing:
            raise No("Some messages were expunged by another session", "EXPUNGEISSUED")
        return None

    async def _fetch_headers(self, req, fkey, wanted, uid, extras, seen_set, recent):
        """FETCH responses whose sections are all header sections, from the section
        cache where it has them; True when a message turned out to be gone."""
        specs = [sec.spec for sec in req.sections]
        folder = self.folder
        services = self.factory.services
        missing = False
        for i in wanted:
            record = folder.records[i]
            values = SECTION_CACHE.get(fkey, record.uid, specs)
            if values is None:
                try:
                    data = await self._read_message(folder, record, services)
                except FolderGone:
                    raise
                except (OSError, KeyError, LookupError, FolderError):
                    missing = True
                    continue
                values = {spec: header_section(data, spec) for spec in specs}
                SECTION_CACHE.put(fkey, record.uid, values)
            self._send(render(req, i + 1, record, uid, extras if record.uid in seen_set else (),
                              values=values, recent=recent))
            if self._out_size > FLUSH_AT:
                await self._drain()
        return missing

    async def _fetch_one(self, req, head_req, whole_only, seq, record, uid, extra, structure, recent):
        """One message's FETCH response that needs its file; False when it is gone."""
        data = None
        try:
            if whole_only and record.size > STREAM_AT:
                await self._fetch_streamed(req, head_req, seq, record, uid, extra, structure)
                return True
            if req.needs_data:
                data = await self._read_message(self.folder, record, self.factory.services)
        except FolderGone:
            raise
        except (OSError, KeyError, LookupError, FolderError):
            return False
        self._send(render(req, seq, record, uid, extra, structure, data, recent))
        return True

    async def _structures(self, folder, uids):
        """{uid: MIME structure} for ``uids``; messages that are gone are left out. Uses
        the folder's batch ``structures(uids)`` when it has one (one index query and one
        thread hop for many messages), else ``structure(uid)`` per message."""
        batch = getattr(folder, "structures", None)
        if batch is not None:
            return dict(await _maybe(batch(uids)))
        out = {}
        for uid in uids:
            try:
                out[uid] = await _maybe(folder.structure(uid))
            except FolderGone:
                raise
            except (OSError, KeyError, LookupError, FolderError):
                pass
        return out

    async def _fetch_streamed(self, req, head_req, seq, record, uid, extra, structure):
        """One FETCH response whose BODY[] sections are copied from the message file in
        chunks, each written when the transport has room."""
        folder = self.folder
        services = self.factory.services
        f = await self._blocking(folder.open_message, record.uid)
        try:
            try:
                size = os.fstat(f.fileno()).st_size
            except (AttributeError, OSError, ValueError):
                size = record.size
            head = render(head_req, seq, record, uid, extra, structure,
                          recent=self._recent_uids())[:-3]     # without ")\r\n"
            sep = b"" if head.endswith(b"(") else b" "
            self._send(head)
            for sec in req.sections:
                origin = sec.origin or 0
                length = max(0, size - origin)
                if sec.length is not None:
                    length = min(length, sec.length)
                self._send(sep + sec.label + b" {%d}\r\n" % length)
                sep = b" "
                await self._blocking(f.seek, origin)
                left = length
                while left:
                    chunk = await self._blocking(f.read, min(STREAM_CHUNK, left))
                    if not chunk:
                        # the file shrank under us: the literal must still be complete
                        self.log.warn("imap message {uid} shorter than its size user={user}",
                                      uid=record.uid, user=self.account.name)
                        chunk = b" " * left
                    chunk = chunk[:left]
                    left -= len(chunk)
                    self._send(chunk)
                    await self._drain()
            self._send(b")\r\n")
        finally:
            f.close()
        del services

    async def _blocking(self, f, *args):
        services = self.factory.services
        if services is not None and getattr(services, "threadpool", None):
            return await services.run_blocking(f, *args)
        return f(*args)

    async def _read_message(self, folder, record, services):
        def read():
            with folder.open_message(record.uid) as f:
                return f.read()
        if record.size > INLINE_READ and services is not None and getattr(services, "threadpool", None):
            return await services.run_blocking(read)
        return read()

    # STORE ----------------------------------------------------------------------------

    async def cmd_STORE(self, tag, args):
        return await self._store(args, False)

    async def _store(self, args, uid):
        if len(args) < 3:
            raise Bad("Expected STORE sequence-set [(UNCHANGEDSINCE n)] item flags")
        ranges = parse_sequence_set(args[0])
        rest = list(args[1:])
        unchanged = None
        if isinstance(rest[0], list):
            mods = rest.pop(0)
            if (len(mods) != 2 or not isinstance(mods[0], Atom) or mods[0].upper() != "UNCHANGEDSINCE"
                    or not isinstance(mods[1], Atom) or not mods[1].isdigit()):
                raise Bad("Expected (UNCHANGEDSINCE mod-sequence)")
            unchanged = int(mods[1])
            self._enable_condstore()
        if len(rest) < 2 or not isinstance(rest[0], Atom):
            raise Bad("Expected FLAGS, +FLAGS or -FLAGS and a flag list")
        item = rest[0].upper()
        silent = item.endswith(".SILENT")
        if silent:
            item = item[:-7]
        mode = {"FLAGS": "=", "+FLAGS": "+", "-FLAGS": "-"}.get(item)
        if mode is None:
            raise Bad("Expected FLAGS, +FLAGS or -FLAGS")
        tokens = rest[1] if len(rest) == 2 and isinstance(rest[1], list) else rest[1:]
        flags = frozenset(self._flags_arg(tokens))
        folder = self.folder
        if folder.readonly:
            raise No("Mailbox is read-only")
        spans = resolve(ranges, folder.records, uid)
        uids = [folder.records[i].uid for i in iter_spans(spans)]
        if not uids:
            return None
        if unchanged is not None:
            changed, refused = await _maybe(folder.store_flags(uids, flags, mode, unchanged))
        else:
            changed, refused = await _maybe(folder.store_flags(uids, flags, mode))
        refused = set(refused)
        recent = self._recent_uids()
        changed_uids = {r.uid for r in changed}
        records = folder.records
        for i in iter_spans(spans):
            record = records[i]
            if record.uid in refused:
                continue
            if silent:
                if self.condstore and record.uid in changed_uids:
                    self._send(self._flag_fetch(i + 1, record, with_flags=False))
            else:
                items = [b"FLAGS " + record_flags(record, recent)]
                if uid:
                    items.append(b"UID %d" % record.uid)
                if self.condstore:
                    items.append(b"MODSEQ (%d)" % record.modseq)
                self._send(b"* %d FETCH (" % (i + 1) + b" ".join(items) + b")\r\n")
            if self._out_size > FLUSH_AT:
                await self._drain()
        if refused:
            if uid:
                shown = sorted(refused)
            else:
                shown = sorted(n for n in (self._seq_of(u) for u in refused) if n is not None)
            return "MODIFIED " + format_set(shown), "Conditional STORE failed for some messages"
        return None

    # COPY / MOVE ----------------------------------------------------------------------

    async def cmd_COPY(self, tag, args):
        return await self._copy(args, False, False)

    async def cmd_MOVE(self, tag, args):
        return await self._copy(args, False, True)

    async def _copy(self, args, uid, move):
        verb = "MOVE" if move else "COPY"
        if len(args) != 2:
            raise Bad("Expected %s sequence-set mailbox" % verb)
        ranges = parse_sequence_set(args[0])
        dest = self._mailbox(args[1])
        folder = self.folder
        if move and folder.readonly:
            raise No("Mailbox is read-only")
        spans = resolve(ranges, folder.records, uid)
        uids = [folder.records[i].uid for i in iter_spans(spans)]
        if not uids:
            if not await self._folder_exists(dest):
                raise No("Mailbox does not exist", "TRYCREATE")
            return "%s completed" % verb.title()
        try:
            if move:
                uidvalidity, pairs = await _maybe(folder.move(uids, dest))
            else:
                uidvalidity, pairs = await _maybe(folder.copy(uids, dest))
        except FolderError as e:
            raise await self._folder_error(e, dest) from None
        pairs = sorted(pairs)
        self._after_transfer(folder.name, dest, pairs)
        code = None
        if pairs:
            code = "COPYUID %d %s %s" % (uidvalidity, _uid_list([p[0] for p in pairs]),
                                         _uid_list([p[1] for p in pairs]))
        if move:
            if code:
                self._send(b"* OK [" + code.encode() + b"] Moved\r\n")
            # only what left this view: a message another session expunged first is
            # still in it, and its EXPUNGE comes with the next sync (once, not twice)
            self._report_expunged([u for u in uids if self._seq_of(u) is None])
            if self.qresync:
                return "HIGHESTMODSEQ %d" % folder.highestmodseq, "Move completed"
            return "Move completed"
        return code, "Copy completed"

    def _after_transfer(self, source, dest, pairs):
        """Show a successful COPY/MOVE to the junk learners (Bayes train-on-move,
        ``services.extra["junk_learners"]``). They work after the answer, in the
        background; a failure there is theirs to log and never fails this command."""
        learners = (getattr(self.factory.services, "extra", None) or {}).get("junk_learners") or ()
        if not pairs:
            return
        uids = [new for _old, new in pairs]
        for learner in learners:
            try:
                d = defer.Deferred.fromCoroutine(
                    learner.transferred(self.account.name, self.store, source, dest, uids))
            except Exception:
                self.log.failure("imap junk learner failed user={user}", user=self.account.name)
                continue
            d.addErrback(lambda f, user=self.account.name: self.log.failure(
                "imap junk learner failed user={user}", f, user=user))

    # SEARCH / SORT --------------------------------------------------------------------

    async def cmd_SEARCH(self, tag, args):
        return await self._search(args, False)

    async def cmd_SORT(self, tag, args):
        return await self._sort(args, False)

    @staticmethod
    def _search_error(e):
        text = getattr(e, "text", None) or str(e) or "Invalid search criteria"
        code = getattr(e, "code", None)
        if code:
            charsets = getattr(e, "charsets", ())
            if code == "BADCHARSET" and charsets:
                code += " (" + " ".join(charsets) + ")"
            return No(text, code)
        return Bad(text)

    def _search_program(self, args):
        from jdmail.imap.search import SearchError, parse_search
        try:
            return parse_search(args, utf8=False)
        except SearchError as e:
            raise self._search_error(e) from None

    async def _candidates(self, program, keep=None):
        """Every message in the view with what ``program.needs`` loaded; with ``keep``
        (a predicate) only those it accepts, tested batch by batch: the reactor is
        free between batches and the others' octets and structures are let go."""
        folder = self.folder
        needs = set(getattr(program, "needs", ()) or ())
        recent = self._recent_uids()
        records = folder.records
        services = self.factory.services
        if not needs:
            msgs = [_SearchMessage(i + 1, record, record.uid in recent) for i, record in enumerate(records)]
            return msgs if keep is None else [m for m in msgs if keep(m)]
        fields = getattr(program, "fields", None)
        if needs == {"structure"} and fields:
            fkey = SECTION_CACHE.folder_key(folder)
            if fkey is not None:
                return await self._field_candidates(fkey, sorted(fields), keep)
        out = []
        for k in range(0, len(records), BATCH):
            chunk = records[k:k + BATCH]
            structures = None
            if "structure" in needs:
                structures = await self._structures(folder, [r.uid for r in chunk])
            for j, record in enumerate(chunk):
                msg = _SearchMessage(k + j + 1, record, record.uid in recent)
                if structures is not None:
                    msg._structure = structures.get(record.uid)
                    if msg._structure is None:
                        continue
                if "data" in needs:
                    try:
                        msg._data = await self._read_message(folder, record, services)
                    except FolderGone:
                        raise
                    except (OSError, KeyError, LookupError, FolderError):
                        continue
                if keep is None or keep(msg):
                    out.append(msg)
        return out

    async def _field_candidates(self, fkey, names, keep):
        """_candidates for a search that reads nothing but envelope fields: their values
        come from the section cache; only messages it lacks get their structures."""
        from jdmail.imap.search import field_value
        folder = self.folder
        recent = self._recent_uids()
        records = folder.records
        specs = ["field:" + name for name in names]
        out = []
        for k in range(0, len(records), BATCH):
            chunk = records[k:k + BATCH]
            known = {}
            for record in chunk:
                values = SECTION_CACHE.get(fkey, record.uid, specs)
                if values is not None:
                    known[record.uid] = {name: values["field:" + name] for name in names}
            lacking = [r.uid for r in chunk if r.uid not in known]
            if lacking:
                structures = await self._structures(folder, lacking)
                for u, structure in structures.items():
                    values = {name: field_value(structure, name) for name in names}
                    SECTION_CACHE.put(fkey, u, {"field:" + name: values[name] for name in names})
                    known[u] = values
            for j, record in enumerate(chunk):
                values = known.get(record.uid)
                if values is None:
                    continue            # gone
                msg = _SearchMessage(k + j + 1, record, record.uid in recent)
                msg.fields = values
                if keep is None or keep(msg):
                    out.append(msg)
        return out

    async def _search(self, args, uid):
        from jdmail.imap.search import match
        args = list(args)
        returns = None
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "RETURN":
            if not isinstance(args[1], list):
                raise Bad("Expected RETURN (options)")
            returns = set()
            for opt in args[1]:
                name = opt.upper() if isinstance(opt, Atom) else ""
                if name not in ("MIN", "MAX", "COUNT", "ALL"):
                    raise Bad("Unsupported SEARCH return option")
                returns.add(name)
            if not returns:
                returns = {"ALL"}
            args = args[2:]
        if not args:
            raise Bad("Expected search criteria")
        program = self._search_program(args)
        uses_modseq = getattr(program, "uses_modseq", None)
        if uses_modseq is None:
            uses_modseq = _mentions(args, "MODSEQ")
        if uses_modseq:
            self._enable_condstore()
        records = self.folder.records
        ctx = SimpleNamespace(last_seq=len(records), last_uid=records[-1].uid if records else 0)

        if getattr(program, "flags_only", False):
            # decided by the flags alone: once per distinct flag set (a folder has few;
            # records with the same flags share one frozenset), no per-message objects
            numbers, top_modseq = _flag_search(program, records, uid, uses_modseq)
        else:
            def keep(m):
                if match(program, m, ctx):
                    m._data = m._structure = None       # only seq, uid and modseq are used below
                    return True
                return False
            hits = await self._candidates(program, keep)
            numbers = [m.uid if uid else m.seq for m in hits]
            top_modseq = max((m.modseq for m in hits), default=0)
        hits = numbers
        if returns is None:
            out = [b"* SEARCH"]
            for k in range(0, len(numbers), 5000):
                out.append(b"".join(b" %d" % n for n in numbers[k:k + 5000]))
            if uses_modseq and hits:
                out.append(b" (MODSEQ %d)" % top_modseq)
            self._send(b"".join(out) + b"\r\n")
            return None
        parts = [b"* ESEARCH (TAG " + quoted(self._current_tag) + b")"]
        if uid:
            parts.append(b"UID")
        if numbers:
            if "MIN" in returns:
                parts.append(b"MIN %d" % min(numbers))
            if "MAX" in returns:
                parts.append(b"MAX %d" % max(numbers))
            if "ALL" in returns:
                parts.append(b"ALL " + format_set(sorted(numbers)).encode())
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(numbers))
        if uses_modseq and hits:
            parts.append(b"MODSEQ %d" % top_modseq)
        self._send(b" ".join(parts) + b"\r\n")
        return None

    async def _sort(self, args, uid):
        from jdmail.imap.search import SearchError, match
        from jdmail.imap.sort import parse_sort_command, sort_messages
        try:
            sort_program, program = parse_sort_command(args)
        except SearchError as e:
            raise self._search_error(e) from None
        if getattr(program, "uses_modseq", False):
            self._enable_condstore()
        records = self.folder.records
        ctx = SimpleNamespace(last_seq=len(records), last_uid=records[-1].uid if records else 0)
        holder = SimpleNamespace(needs=set(program.needs) | set(sort_program.needs))
        hits = await self._candidates(holder, lambda m: match(program, m, ctx))
        numbers = [m.uid if uid else m.seq for m in sort_messages(sort_program, hits)]
        self._send(b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
        return None


def _flag_search(program, records, by_uid, want_modseq):
    """(UIDs or sequence numbers of the matching records, their highest MODSEQ) for a
    ``flags_only`` search program."""
    verdicts = {}
    for record in records:
        flags = record.flags
        if flags not in verdicts:
            verdicts[flags] = program.flags_match(flags)
    if all(verdicts.values()):
        seqs = range(1, len(records) + 1)
    else:
        seqs = [seq for seq, record in enumerate(records, 1) if verdicts[record.flags]]
    out = [records[seq - 1].uid for seq in seqs] if by_uid else list(seqs)
    top = max((records[seq - 1].modseq or 0 for seq in seqs), default=0) if want_modseq else 0
    return out, top


def _uid_list(uids):
    """A UID list for COPYUID, in the given order (ranges only where ascending by one)."""
    out = []
    start = prev = None
    for u in uids:
        if start is not None and u == prev + 1:
            prev = u
            continue
        if start is not None:
            out.append(str(start) if start == prev else "%d:%d" % (start, prev))
        start = prev = u
    if start is not None:
        out.append(str(start) if start == prev else "%d:%d" % (start, prev))
    return ",".join(out)


def _mentions(tokens, word):
    for t in tokens:
        if isinstance(t, list):
            if _mentions(t, word):
                return True
        elif isinstance(t, Atom) and t.upper() == word:
            return True
    return False


class IMAPFactory(protocol.ServerFactory):
    """Builds IMAP sessions for one listener.

    ``settings`` keys (all optional): banner, timeout (after login; seconds),
    login_timeout, hibernate_timeout (0 = never), max_connections, max_connections_per_ip,
    max_connections_per_user (0 = no limit), allow_plaintext, fail_delay,
    max_failures, max_message_size (APPEND literals), tls_context (None = no
    STARTTLS), implicit_tls, counter (a ConnectionCounter shared by the imap and
    imaps listeners) and user_counter (likewise, per user).
    """

    protocol = IMAPServer
    log = Logger()
    noisy = False

    def __init__(self, services, portal, settings):
        self.services = services
        self.reactor = services.reactor
        self.portal = portal
        get = settings.get
        self.banner = get("banner") or "jdmail IMAP4rev1 Service ready"
        self.timeout = get("timeout") or 30 * 60.0
        self.login_timeout = get("login_timeout") or 60.0
        self.max_connections = get("max_connections", 500) or 0
        self.max_connections_per_ip = get("max_connections_per_ip", 10) or 0
        self.max_connections_per_user = get("max_connections_per_user", 10) or 0
        self.allow_plaintext = bool(get("allow_plaintext", False))
        self.fail_delay = get("fail_delay", 2.0) or 0.0
        self.max_failures = get("max_failures", 3) or 0
        self.max_message_size = get("max_message_size") or 50 * 1024 * 1024
        self.tls_context = get("tls_context")
        self.implicit_tls = bool(get("implicit_tls", False))
        counter = get("counter")
        self.counter = counter if counter is not None else ConnectionCounter()
        user_counter = get("user_counter")
        self.user_counter = user_counter if user_counter is not None else ConnectionCounter()
        self.sessions = set()
        hibernate_after = get("hibernate_timeout") or 0
        self.hibernation = None     # TLS sessions keep their state in OpenSSL: never hibernated
        if hibernate_after > 0 and not self.implicit_tls:
            self.hibernation = hibernate.Hibernation(self, hibernate_after)

    def buildProtocol(self, addr):
        return self.protocol(self)

    def admit(self, ip):
        return self.counter.open(ip, self.max_connections, self.max_connections_per_ip)

    def release(self, ip):
        self.counter.close(ip)

    def admit_user(self, name):
        """Count a logged-in session of ``name``; why not when over the limit, or a Deferred
        of that in a worker process (the master counts)."""
        if getattr(self.user_counter, "remote", False):
            return self.user_counter.open(name, 0, self.max_connections_per_user)
        if self.max_connections_per_user and self.user_counter.per_ip[name] >= self.max_connections_per_user:
            return f"connections of {name} at limit {self.max_connections_per_user}"
        self.user_counter.total += 1
        self.user_counter.per_ip[name] += 1
        return None

    def release_user(self, name):
        self.user_counter.close(name)
