"""One worker process: ``python -m jdmail.workers.worker``, started by the master
(jdmail.workers.pool), never by hand.

It builds the same parts as the server (jdmail.service.build_core) from the same INI
file, adopts the listening sockets the master bound (file descriptors it inherited:
SMTP, POP3 and IMAP alike) and accepts on them itself. Mail delivery (hard links and
fsync before the 250), queueing (the queue's SQLite) and the POP3/IMAP sessions'
mailbox indexes (safe across processes, jdmail.store.lock) are done here; what must be
counted or known in one place goes over the control channel (jdmail.workers.protocol):
connection limits and IMAP sessions per user (SMTP's: beyond the worker's share,
jdmail.workers.leases), quota usage and the Junk folder, "delivered" and "changed"
(IMAP IDLE sessions in every process look again), "queued" (the queue runner). POP3's
one session per mailbox is the store's flock, which the kernel drops when a worker
dies. Log lines go straight into the master's log files (jdmail.workers.logfiles);
until the master has named them, or when it logs elsewhere, events go to stdout as
JSON for the master to publish. It stops on SIGTERM or when the channel closes (the master is gone): it stops
accepting, lets commands and transactions in progress finish (up to ``STOP_GRACE``),
answers idle connections (SMTP 421, IMAP ``* BYE``, POP3 ``-ERR``) and exits.
"""

import argparse
import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from jdmail.delivery.local import LocalDelivery
from jdmail.workers.leases import Limits, WorkerLeases
from jdmail.workers.protocol import (Borrow, Changed, CloseConnection, Delivered, GiveBack, Grant, Hello, JunkFolder,
                                     Lend, OpenConnection, Queued, QuietAMP, Usage)

STOP_GRACE = 10.0          # seconds for transactions in progress at a stop
log = Logger()


class WorkerChannel(QuietAMP):
    """The worker's end of the control channel; ``on_lost`` runs when it closes."""

    def __init__(self, on_lost):
        super().__init__()
        self.on_lost = on_lost
        self.lost = False
        self.store = None       # the worker's own store (the master's notices are for it)
        self.leases = None      # WorkerLeases: the SMTP connection limits

    @Lend.responder
    def lend(self, key):
        return {"lent": self.leases is not None and self.leases.lend(key)}

    @Grant.responder
    def grant(self, key, n):
        if self.leases is not None:
            self.leases.grant(key, n)
        return {}

    @Delivered.responder
    def delivered(self, mailboxes, folders):
        notify = getattr(self.store, "notify_delivered", None)
        if notify is not None:
            notify(mailboxes, dict(zip(mailboxes, folders)))
        return {}

    @Changed.responder
    def changed(self, mailbox):
        elsewhere = getattr(self.store, "changed_elsewhere", None)
        if elsewhere is not None:
            elsewhere(mailbox)
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost = True
        self.on_lost()

    def tell(self, command, **kwargs):
        """Send a command that has no answer; nothing when the channel is gone."""
        if not self.lost:
            try:
                self.callRemote(command, **kwargs)
            except Exception:      # the connection closed in between
                pass


def worker_leases(channel):
    """The worker's share of the SMTP connection limits (SMTPFactory.counter), which
    borrows from the master beyond it (jdmail.workers.leases)."""
    def borrow(ip, keys):
        d = channel.callRemote(Borrow, ip=ip, keys=keys)
        return d.addCallback(lambda answer: answer["refusal"])
    leases = WorkerLeases(borrow, lambda key, n: channel.tell(GiveBack, key=key, n=n))
    channel.leases = leases
    return leases


class RemoteCounter:
    """One of the master's ConnectionCounters, seen from a worker (the factories'
    ``counter``, IMAPFactory's ``user_counter``): ``kind`` names it (pop3, imap,
    imap-user)."""

    remote = True

    def __init__(self, channel, kind):
        self.channel, self.kind = channel, kind

    def open(self, ip, _max_total, _max_per_ip):
        """A Deferred of the refusal (None: admitted); the master applies its own limits."""
        d = self.channel.callRemote(OpenConnection, ip=ip, kind=self.kind)
        return d.addCallback(lambda answer: answer["refusal"] or None)

    def close(self, ip):
        self.channel.tell(CloseConnection, ip=ip, kind=self.kind)


class WorkerStore:
    """The store in a worker: delivery links the files here, then tells the master (which
    tells the other workers); a commit to an index tells them too (``on_commit``);
    ``usage`` is the master's."""

    def __init__(self, store, channel):
        self._store, self._channel = store, channel
        if hasattr(store, "usage"):
            self.usage = self._usage
        if hasattr(store, "on_commit"):
            store.on_commit = self._committed
        channel.store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _committed(self, key):
        self._channel.tell(Changed, mailbox=key)

    async def deliver(self, mailboxes, path, folders=None, before=None):
        await self._store.deliver(mailboxes, path, folders=folders, before=before)
        keys = list(dict.fromkeys(mailboxes))
        if keys:
            self._channel.tell(Delivered, mailboxes=keys, folders=[(folders or {}).get(k, "INBOX") for k in keys])

    async def _usage(self, mailbox):
        answer = await self._channel.callRemote(Usage, mailbox=mailbox)
        return answer["used"], answer["messages"]


class WorkerQueue:
    """The outbound queue in a worker: enqueue as the master would (SQLite, across
    processes), then nudge the master's queue runner."""

    def __init__(self, queue, channel):
        self._queue, self._channel = queue, channel

    def __getattr__(self, name):
        return getattr(self._queue, name)

    async def enqueue(self, *args, **kwargs):
        result = await self._queue.enqueue(*args, **kwargs)
        self._channel.tell(Queued)
        return result


class WorkerDelivery(LocalDelivery):
    """Local delivery whose Junk folder is found (or made) by the master."""

    def __init__(self, store, queue, channel):
        super().__init__(store, queue)
        self._channel = channel

    async def junk_folder(self, mailbox):
        answer = await self._channel.callRemote(JunkFolder, mailbox=mailbox)
        return answer["folder"]


class WorkerSide:
    """What jdmail.service.build_core needs to know it builds a worker."""

    def __init__(self, channel):
        self.channel = channel

    def wrap_store(self, store):
        return None if store is None else WorkerStore(store, self.channel)

    def wrap_queue(self, queue):
        return None if queue is None else WorkerQueue(queue, self.channel)

    def delivery(self, store, queue):
        return WorkerDelivery(store, queue, self.channel)


class WorkerListeners(service.Service):
    """Says Hello to the master, then accepts on the inherited sockets; at stop, stops
    accepting and waits for the transactions in progress."""

    def __init__(self, reactor, channel, services, sockets, factories, session_factories, logs=None):
        self.reactor, self.channel, self.services = reactor, channel, services
        self.logs = logs                      # a LogSwitch (None: keep logging as begun)
        self.sockets = sockets                # [(section, fd, family)]
        self.factories = factories            # section -> protocol factory (TLS-wrapped for smtps...)
        self.session_factories = session_factories  # the unwrapped factories (their sessions)
        self.ports = []
        self._drain = None

    def startService(self):
        super().startService()
        d = self.channel.callRemote(Hello, pid=os.getpid())
        d.addCallbacks(self._accept, self._no_master)

    def _no_master(self, failure):
        log.error("worker: the master did not answer: {error}", error=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()

    def _accept(self, answer):
        self.services.local_addresses.update(answer["addresses"])
        if self.logs is not None and answer["log_files"]:
            self.logs.to_files(answer["log_files"])
        if self.channel.leases is not None:
            smtp = self.services.config["smtp"]
            self.channel.leases.begin(Limits(smtp["max_connections"], smtp["max_connections_per_ip"],
                                             answer["workers"]),
                                      zip(answer["deficit_keys"], answer["deficits"]))
        if not self.running:
            return
        for section, fd, family in self.sockets:
            self.ports.append(self.reactor.adoptStreamPort(fd, family, self.factories[section]))
            os.close(fd)        # adoptStreamPort made its own copy
        log.info("worker pid={pid} accepting on {n} socket(s)", pid=os.getpid(), n=len(self.ports))

    def stopService(self):
        super().stopService()
        return self.drained()

    def drained(self):
        """Stop accepting, let transactions in progress finish (up to STOP_GRACE), close
        the rest; a Deferred. Also run before the thread pool stops (deliveries need it)."""
        if self._drain is None:
            self._drain = defer.ensureDeferred(self._drain_sessions())
        d = defer.Deferred()
        self._drain.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    async def _drain_sessions(self):
        for port in self.ports:
            await defer.maybeDeferred(port.stopListening)
        self.ports = []
        deadline = self.reactor.seconds() + STOP_GRACE
        while True:
            sessions = [s for f in self.session_factories for s in list(f.sessions)]
            for session in sessions:
                if session.idle() and not session.transport.disconnecting:
                    session.shut_down()
            if not sessions or self.reactor.seconds() >= deadline:
                break
            await _sleep(self.reactor, 0.05)
        for session in [s for f in self.session_factories for s in list(f.sessions)]:
            session.transport.abortConnection()


def _sleep(reactor, seconds):
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)


class _OneProtocol(protocol.Factory):
    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


class LogSwitch:
    """The worker's log: events go to the master over stdout (``relay``, a log
    observer) until ``to_files`` names the master's log files to write to."""

    def __init__(self, name, relay, publisher=None):
        from twisted.logger import globalLogPublisher
        self.name, self.relay = name, relay
        self.publisher = publisher or globalLogPublisher
        self.observer = None

    def to_files(self, paths):
        from jdmail.workers.logfiles import WorkerLogObserver
        try:
            observer = WorkerLogObserver(self.name, paths)
        except OSError as e:        # e.g. twistd --uid: the master opened it before dropping root
            log.warn("{name} cannot open the log files ({error}); sending its lines to the server process",
                     name=self.name, error=e)
            return
        self.publisher.addObserver(observer)
        self.publisher.removeObserver(self.relay)
        self.observer = observer


def make_worker_service(config, reactor, channel, sockets, logs=None):
    """The worker's MultiService: thread pool, the store's idle-index timer, and the
    listeners on ``sockets`` ([(section, fd, family)]) built by the same code as the
    server's."""
    from jdmail.config import LISTENER_SECTIONS
    from jdmail.errors import ConfigErrors
    from jdmail.service import build_core, idle_index_timer, imap_factory, pop3_factory, smtp_factory
    errors = []
    core = build_core(config, reactor, errors, worker=WorkerSide(channel))
    if errors:
        raise ConfigErrors(errors)
    counters = {kind: RemoteCounter(channel, kind) for kind in ("pop3", "imap", "imap-user")}
    counters["smtp"] = worker_leases(channel)
    locks = set()
    factories, unwrapped = {}, []
    for section in dict.fromkeys(s for s, _fd, _family in sockets):
        proto = LISTENER_SECTIONS[section][2]
        if proto == "smtp":
            factory = smtp_factory(config, reactor, core, section, counters["smtp"])
        elif proto == "pop3":
            factory = pop3_factory(config, core, section, counters["pop3"], locks)
        else:
            factory = imap_factory(config, core, section, counters["imap"], counters["imap-user"])
        factories[section] = factory
        unwrapped.append(getattr(factory, "wrappedFactory", factory))
    top = service.MultiService()
    core.pool_service.setServiceParent(top)
    timer = idle_index_timer(core.services.store)
    if timer is not None:
        timer.setServiceParent(top)
    listeners = WorkerListeners(reactor, channel, core.services, sockets, factories, unwrapped, logs)
    listeners.setServiceParent(top)
    core.pool_service.before_stop.append(listeners.drained)     # sessions in progress need the pool
    return top


def _socket_arg(text):
    section, fd, family = text.split(":")
    return section, int(fd), {"inet": socket.AF_INET, "inet6": socket.AF_INET6}[family]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jdmail.workers.worker",
                                     description="a worker process of jdmail (started by the server)")
    parser.add_argument("--config")
    parser.add_argument("--datadir")
    parser.add_argument("--channel", type=int, required=True, help="the control socket's descriptor")
    parser.add_argument("--name", default=f"worker-pid{os.getpid()}", help="the worker's name in the log")
    parser.add_argument("--listen", type=_socket_arg, action="append", default=[],
                        help="SECTION:FD:inet|inet6, a listening socket to accept on")
    args = parser.parse_args(argv)

    from twisted.logger import globalLogBeginner, jsonFileLogObserver
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    relay = jsonFileLogObserver(out)
    globalLogBeginner.beginLoggingTo([relay], redirectStandardIO=True)

    from twisted.internet import reactor

    from jdmail import config as jconfig
    from jdmail.errors import ConfigErrors
    try:
        settings = jconfig.load(args.config, datadir=args.datadir)
    except ConfigErrors as e:
        for line in str(e).splitlines():
            log.critical("jdmail: {line}", line=line)
        return 1

    def lost():
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    channel = WorkerChannel(lost)
    reactor.adoptStreamConnection(args.channel, socket.AF_UNIX, _OneProtocol(channel))
    os.close(args.channel)
    try:
        top = make_worker_service(settings, reactor, channel, args.listen, LogSwitch(args.name, relay))
    except ConfigErrors as e:
        for line in str(e).splitlines():
            log.critical("jdmail: {line}", line=line)
        return 1
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
