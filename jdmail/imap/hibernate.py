"""Hibernation of idle IMAP sessions, as Dovecot's imap-hibernate does it.

A logged-in session that has been quiet for ``[imap] hibernate_timeout`` (in
IDLE, or between commands) costs ~15 KB of Python objects while it waits: the
IMAPServer and its attributes, the tcp.Server transport, the IDLE coroutine
with its Deferreds, two DelayedCalls. Hibernating takes its socket off the
reactor *without* closing or shutting it down, lets those objects go, and
keeps a ``Sleeper`` (``__slots__``) holding the socket and what resuming
needs: the account (its store handle is made again), the selected FolderView (which keeps
the client-visible message list, so the EXPUNGE/EXISTS/FETCH reported after a
wake are exactly those an awake session would have sent), the CONDSTORE/
QRESYNC state, the IDLE tag and the keepalive and autologout times.

The Sleeper is the socket's reader on the reactor. Input wakes the session: a
new IMAPServer is built on a duplicate of the descriptor
(``reactor.adoptStreamConnection``) and carries on, in IDLE under the same
tag when it slept in IDLE; the input is still in the kernel and is read by the
new transport. A change notice for the selected folder wakes an IDLE session
too. The end of the connection (EOF, reset) while asleep releases the
connection, user and IP counts, the folder and the login without waking; the
keepalive ("* OK Still here" and a re-check of the folder) and the autologout
are done asleep, from one timer shared by all sessions of the listener.

TLS sessions (imaps, STARTTLS) never hibernate: their state lives in OpenSSL.
"""

import heapq
import socket
import weakref

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import FolderError, FolderGone

__all__ = ["Hibernation", "Resumed", "resume"]

TICK = 1.0          # at most one scan of the awake sessions per second
TRIM_AFTER = 64     # hibernated sessions after which freed memory goes back to the system
KEEPALIVE = b"* OK Still here\r\n"


class Resumed:
    """The argument list cmd_IDLE gets when an IDLE continues after hibernation:
    no second "+ idling", the keepalive timer keeps its phase."""

    __slots__ = ("keepalive_in",)

    def __init__(self, keepalive_in):
        self.keepalive_in = keepalive_in


def _timeout_call(p):
    """The autologout DelayedCall of ``p`` (twisted.protocols.policies.TimeoutMixin)."""
    call = getattr(p, "_TimeoutMixin__timeoutCall", None)
    return call if call is not None and call.active() else None


def _plain_tcp_quiet(transport):
    """A plain TCP transport (no TLS) with nothing waiting to be written."""
    return (type(transport) is tcp.Server and not transport.TLS and transport.connected and not transport.disconnecting
            and not transport._tempDataLen and transport.offset >= len(transport.dataBuffer)
            and transport.producer is None)


def _can_sleep(p):
    """``p`` is logged in, waits for its client and holds nothing half done."""
    if p.state not in ("auth", "selected") or p._tls or p._closing or p._gone or p._resume is not None:
        return False
    if p._out or p._throttle is not None or p._paused or p._parts or p._literal_left:
        return False
    if len(p._buf) > p._bufpos:
        return False
    if p._busy:
        if not (p._idling and p._line_waiter is not None and not p._idle_running and p._idle_sync_d is None):
            return False
    elif p._line_waiter is not None:
        return False
    return _plain_tcp_quiet(p.transport)


class Hibernation:
    """The sessions of one listener that may hibernate or sleep, and their one timer."""

    log = Logger()

    def __init__(self, factory, timeout):
        self.factory = factory
        self.reactor = factory.reactor
        self.timeout = timeout
        self.awake = {}         # logged-in IMAPServer -> None
        self.asleep = 0
        self._heap = []         # (when, seq, Sleeper): keepalive or autologout due
        self._seq = 0
        self._call = None
        self._last_tick = 0.0
        self._untrimmed = 0

    # --- the timer ----------------------------------------------------------------------------

    def _schedule(self, when):
        now = self.reactor.seconds()
        when = max(when, self._last_tick + TICK)
        call = self._call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.reset(max(0.0, when - now))
            return
        self._call = self.reactor.callLater(max(0.0, when - now), self._tick)

    def _push(self, sleeper, when):
        sleeper.due = when
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (when, self._seq, sleeper))
        if len(heap) > 2 * self.asleep + 64:
            # entries of sessions that woke up wait for their time otherwise (up to the
            # autologout): a client polling every minute would leave dozens each
            heap[:] = [e for e in heap if e[2].sock is not None and e[2].due == e[0]]
            heapq.heapify(heap)
        self._schedule(when)

    def _tick(self):
        self._call = None
        now = self._last_tick = self.reactor.seconds()
        upcoming = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _seq, sleeper = heapq.heappop(heap)
            if sleeper.sock is not None and sleeper.due == when:
                sleeper.timer(now)
        ready, nearest = self._quiet(now)
        if ready:
            self._hibernate_all(ready)
        del ready
        if nearest is not None:
            upcoming.append(nearest)
        if heap:
            upcoming.append(heap[0][0])
        if upcoming:
            self._schedule(min(upcoming))

    def _quiet(self, now):
        """(the awake sessions ready to hibernate, when to look again)."""
        ready = []
        nearest = None
        for p in self.awake:
            call = _timeout_call(p)
            if call is None:
                continue
            due = call.getTime() - p.timeOut + self.timeout     # quiet since the last input
            if due <= now:
                if _can_sleep(p):
                    ready.append(p)
                    continue
                due = now + min(self.timeout, 5.0)      # busy: look again soon
            nearest = due if nearest is None else min(nearest, due)
        return ready, nearest

    # --- awake sessions -----------------------------------------------------------------------

    def watch(self, p):
        """``p`` just logged in (or woke up): it may hibernate once quiet long enough."""
        self.awake[p] = None
        self._schedule(self.reactor.seconds() + self.timeout)

    def unwatch(self, p):
        self.awake.pop(p, None)

    def _hibernate_all(self, protocols):
        done = []
        for p in protocols:
            try:
                sleeper = self._hibernate(p)
            except Exception:
                self.log.failure("imap hibernation failed user={user}", user=p.account.name)
                continue
            done.append((weakref.ref(p), sleeper))
        del protocols[:]
        p = None
        self._untrimmed += len(done)
        if self._untrimmed >= TRIM_AFTER:
            # a session's dict, frames and buffers came from malloc, which keeps what is
            # freed for the process unless told otherwise
            self._untrimmed = 0
            _malloc_trim()
        for ref, sleeper in done:
            # the session's objects are gone now unless something still holds them
            self.log.info("imap hibernated user={user} client={client} port={port} idle={idle} freed={freed} "
                          "asleep={n}", user=sleeper.user, client=sleeper.client, port=_port(sleeper.sock),
                          idle="yes" if sleeper.tag else "no", freed="yes" if ref() is None else "no", n=self.asleep)

    def _hibernate(self, p):
        now = self.reactor.seconds()
        call = _timeout_call(p)
        deadline = call.getTime() if call is not None else now + p.factory.timeout
        tag = keepalive_at = None
        if p._idling:
            tag = p._current_tag
            timer = p._idle_timer
            keepalive_at = timer.getTime() if timer is not None and timer.active() else now
        self.unwatch(p)
        transport = p.transport
        sock = transport.socket
        transport.stopReading()
        transport.stopWriting()
        sleeper = Sleeper(self, sock, p, tag, deadline, keepalive_at)
        # what connectionLost would release now belongs to the sleeper
        p._admitted = False
        p._user_counted = None
        p._logout = None
        p.folder = None
        p.setTimeout(None)
        p._gone = True
        if tag is not None:
            # ends the IDLE coroutine quietly (_run drops a CancelledError): nothing is written
            waiter, p._line_waiter = p._line_waiter, None
            waiter.errback(defer.CancelledError())
        transport.protocol = None
        p.transport = None
        self.asleep += 1
        sessions = p.factory.sessions       # what a worker's stop goes through
        sessions.discard(p)
        sessions.add(sleeper)
        self.reactor.addReader(sleeper)
        if tag is not None:
            sleeper.listen()
        self._push(sleeper, min(deadline, keepalive_at) if tag is not None else deadline)
        return sleeper


def _port(sock):
    """The client's port (for the log: which of a user's sessions this is)."""
    try:
        return sock.getpeername()[1]
    except (AttributeError, OSError, IndexError):
        return "-"


_trim = None


def _malloc_trim():
    global _trim
    if _trim is None:
        try:
            import ctypes
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


class _Adopt:
    """The factory adoptStreamConnection asks for the woken session's protocol."""

    __slots__ = ("protocol",)

    def __init__(self, protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


@implementer(IReadDescriptor)
class Sleeper:
    """One hibernated session: its socket and what resuming it needs."""

    __slots__ = ("hib", "sock", "fd", "client", "user", "account", "logout", "view", "condstore",
                 "qresync", "state", "bad", "tag", "deadline", "keepalive_at", "due", "stop", "busy",
                 "wake_for")

    log = Logger()

    def __init__(self, hib, sock, p, tag, deadline, keepalive_at):
        self.hib, self.sock, self.fd = hib, sock, sock.fileno()
        # not the account's store handle (~500 bytes with its finalizer): made again on waking
        self.client, self.user, self.account = p.client, p._user_counted, p.account
        self.logout, self.view, self.state, self.bad = p._logout, p.folder, p.state, p._bad
        self.condstore, self.qresync = p.condstore, p.qresync
        self.tag, self.deadline, self.keepalive_at = tag, deadline, keepalive_at
        self.due = None
        self.stop = None
        self.busy = False           # a keepalive re-check of the folder is running
        self.wake_for = None        # why to wake once it is done

    # --- IReadDescriptor ----------------------------------------------------------------------

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "imap"

    def doRead(self):
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.hib.reactor.removeReader(self)
            self._end("closed by the client")
            return None
        self.wake("input")
        return None

    def connectionLost(self, reason):
        if self.sock is not None:
            self._end("connection lost")

    # --- as a session in factory.sessions (a worker's stop) -----------------------------------

    @property
    def transport(self):
        return self

    @property
    def disconnecting(self):
        return self.sock is None

    def idle(self):
        return True

    def shut_down(self):
        """The server stops: ``* BYE`` and close, as IMAPServer.shut_down."""
        if self.sock is not None:
            self._send(b"* BYE Server shutting down, try again later\r\n")
            self.abortConnection()

    def abortConnection(self):
        if self.sock is not None:
            self.hib.reactor.removeReader(self)
            self._end("server stopping")

    # --- while asleep -------------------------------------------------------------------------

    def listen(self):
        if self.view is not None:
            self.stop = self.view.listen(self._changed)

    def _changed(self):
        self.wake("change")

    def timer(self, now):
        """The shared timer found this session due: autologout or keepalive."""
        if now >= self.deadline:
            self.log.info("imap timeout client={client} user={user}", client=self.client, user=self.user)
            self._send(b"* BYE Autologout; idle for too long\r\n")
            self.hib.reactor.removeReader(self)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._end(None)
            return
        if self.tag is not None and now >= self.keepalive_at:
            defer.Deferred.fromCoroutine(self._keepalive())
            return
        self.hib._push(self, min(self.deadline, self.keepalive_at) if self.tag is not None else self.deadline)

    def _send(self, data):
        """What of ``data`` the socket did not take at once."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return b""          # the reader learns of the broken connection
        return data[sent:]

    async def _keepalive(self):
        """What an awake IDLE does every IDLE_KEEPALIVE: say it is there, re-check the folder."""
        from jdmail.imap.server import IDLE_KEEPALIVE
        self.keepalive_at = self.hib.reactor.seconds() + IDLE_KEEPALIVE
        pending = self._send(KEEPALIVE)
        changes = None
        if self.view is None:
            self.hib._push(self, min(self.deadline, self.keepalive_at)) if not pending else self.wake("output", None, pending)
            return
        self.busy = True
        try:
            changes = await self.view.refresh()
        except FolderGone:
            self.wake_for = self.wake_for or "mailbox gone"
        except FolderError:
            pass                # closed meanwhile: the connection ended
        except Exception:
            self.log.failure("imap refresh of a hibernated session failed user={user}", user=self.user)
        finally:
            self.busy = False
        if self.sock is None:
            return
        if changes is not None and not (changes.added or changes.expunged or changes.changed):
            changes = None
        if pending or changes is not None or self.wake_for:
            self.wake(self.wake_for or "change", changes, pending)
        else:
            self.hib._push(self, min(self.deadline, self.keepalive_at))

    # --- the end ------------------------------------------------------------------------------

    def _unlisten(self):
        stop, self.stop = self.stop, None
        if stop is not None:
            stop()

    def _end(self, why):
        """Release what the session held, as IMAPServer.connectionLost would."""
        sock, self.sock = self.sock, None
        hib = self.hib
        hib.asleep -= 1
        hib.factory.sessions.discard(self)
        self._unlisten()
        view, self.view = self.view, None
        if view is not None:
            try:
                view.close()
            except Exception:
                self.log.failure("imap folder close failed")
        factory = hib.factory
        if self.user is not None:
            factory.release_user(self.user)
        factory.release(self.client)
        logout, self.logout = self.logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                self.log.failure("imap logout failed")
        if why:
            self.log.info("imap hibernated session ended user={user} client={client} port={port}: {why}",
                          user=self.user, client=self.client, port=_port(sock), why=why)
        try:
            sock.close()
        except OSError:
            pass

    # --- waking up ----------------------------------------------------------------------------

    def wake(self, why, changes=None, pending=b""):
        """Rebuild the session on this socket; it carries on as if it had never slept."""
        if self.sock is None:
            return
        hib = self.hib
        reactor = hib.reactor
        reactor.removeReader(self)      # (level-triggered: waiting input would call again and again)
        if self.busy:
            self.wake_for = self.wake_for or why
            return
        self._unlisten()
        sock, self.sock = self.sock, None
        hib.asleep -= 1
        factory = hib.factory
        factory.sessions.discard(self)
        p = factory.buildProtocol(None)
        p._resume = (self, why, changes, pending)
        try:
            reactor.adoptStreamConnection(sock.fileno(), sock.family, _Adopt(p))
        except OSError:
            # the peer is gone already (getpeername fails): release as at a hang-up
            p._resume = None
            self.sock = sock
            hib.asleep += 1
            factory.sessions.add(self)
            self._end("closed by the client")
            return
        sock.close()    # the new transport has its own descriptor for the same connection


def resume(p):
    """connectionMade of a session woken from hibernation (see ``Sleeper.wake``)."""
    sleeper, why, changes, pending = p._resume
    p._resume = None
    hib = sleeper.hib
    account = sleeper.account
    p.client, p.account, p._logout = sleeper.client, account, sleeper.logout
    p.folder, p.state, p._bad = sleeper.view, sleeper.state, sleeper.bad
    p.condstore, p.qresync = sleeper.condstore, sleeper.qresync
    p._admitted, p._user_counted = True, sleeper.user
    p.factory.sessions.add(p)
    sleeper.view = sleeper.logout = sleeper.account = None
    try:
        p.store = p.factory.services.store.account(account.mailbox, account.quota_bytes,
                                                   getattr(account, "quota_messages", 0))
    except Exception:
        hib.log.failure("imap cannot open the mail store user={user}", user=sleeper.user)
        p._write_now(b"* BYE [UNAVAILABLE] Mail store temporarily unavailable\r\n")
        p._close()
        return
    now = hib.reactor.seconds()
    p.setTimeout(max(0.0, sleeper.deadline - now))
    p.timeOut = p.factory.timeout       # what each later input resets it to
    hib.log.info("imap woken user={user} client={client} port={port} reason={why} asleep={n}",
                 user=sleeper.user, client=sleeper.client, port=_port(p.transport.socket), why=why, n=hib.asleep)
    if pending:
        p._send(pending)
    if changes is not None and p.folder is not None:
        p._report(changes)
    p._flush()
    hib.watch(p)
    if sleeper.tag is not None:
        p._start_command(sleeper.tag, "IDLE", Resumed(max(0.0, sleeper.keepalive_at - now)))
