"""The master's side of the workers: starts ``[jdmail] workers`` processes on the
listening sockets (SMTP, POP3, IMAP), answers their control channels, passes change
notices between them, restarts one that dies, stops them with the server."""

import collections
import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger

from jdmail.workers import protocol as cmds
from jdmail.workers.protocol import QuietAMP
from jdmail.workers.leases import Limits, MasterLeases
from jdmail.workers.logfiles import ROTATE_CHECK, MasterLogFiles
from jdmail.workers.logrelay import LogRelay
from jdmail.workers.worker import STOP_GRACE, _OneProtocol

READY_TIMEOUT = 60.0       # listening.json is written after this even if a worker is not ready
MIN_BACKOFF, MAX_BACKOFF = 0.5, 30.0
STEADY = 30.0              # a worker that ran this long restarts without delay
log = Logger()


class MasterChannel(QuietAMP):
    """The master's end of one worker's control channel."""

    def __init__(self, pool, worker):
        super().__init__()
        self.pool, self.worker = pool, worker
        self.released = False        # the process is gone: its SMTP credit was given back (once)
        self.hello_done = False

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.worker.release_connections()
        self.worker.release_leases(self)

    @cmds.Hello.responder
    def hello(self, pid):
        self.worker.said_hello()
        self.hello_done = True
        deficits = self.pool.leases.deficits(self.worker)
        return {"addresses": sorted(self.pool.core.services.local_addresses),
                "log_files": (self.pool.log_files and self.pool.log_files.paths) or [],
                "workers": self.pool.count,
                "deficit_keys": [k for k, _n in deficits], "deficits": [n for _k, n in deficits]}

    @cmds.Borrow.responder
    async def borrow(self, ip, keys):
        refusal = await self.pool.leases.borrow(self.worker, ip, keys, self.pool.workers)
        if not refusal and self.released:       # granted to a process that ended meanwhile
            for key in keys:
                self.pool.leases.give_back(self.worker, key, 1, self.pool.workers)
        return {"refusal": refusal}

    @cmds.GiveBack.responder
    def give_back(self, key, n):
        if not self.released:
            self.pool.leases.give_back(self.worker, key, n, self.pool.workers)
        return {}

    @cmds.OpenConnection.responder
    def open_connection(self, ip, kind=None):
        counter, max_total, max_per_ip = self.pool.limits[kind]
        refusal = counter.open(ip, max_total, max_per_ip)
        if refusal is None:
            self.worker.counted[kind, ip] += 1
        return {"refusal": refusal or ""}

    @cmds.CloseConnection.responder
    def close_connection(self, ip, kind=None):
        if self.worker.counted[kind, ip] > 0:
            self.worker.uncount(kind, ip)
        return {}

    @cmds.Usage.responder
    async def usage(self, mailbox):
        try:
            used, messages = await self.pool.core.services.store.usage(mailbox)
        except Exception:
            log.failure("worker quota check: usage of {mailbox} failed", mailbox=mailbox)
            raise cmds.StoreFailed("usage failed") from None
        return {"used": used, "messages": messages}

    @cmds.JunkFolder.responder
    async def junk_folder(self, mailbox):
        try:
            return {"folder": await self.pool.core.delivery.junk_folder(mailbox)}
        except Exception:
            log.failure("worker delivery: the Junk folder of {mailbox} failed", mailbox=mailbox)
            raise cmds.StoreFailed("junk folder failed") from None

    @cmds.Delivered.responder
    def delivered(self, mailboxes, folders):
        notify = getattr(self.pool.core.services.store, "notify_delivered", None)
        if notify is not None:
            notify(mailboxes, dict(zip(mailboxes, folders)))
        self.pool.tell_others(self.worker, cmds.Delivered, mailboxes=mailboxes, folders=folders)
        return {}

    @cmds.Changed.responder
    def changed(self, mailbox):
        elsewhere = getattr(self.pool.core.services.store, "changed_elsewhere", None)
        if elsewhere is not None:
            elsewhere(mailbox)
        self.pool.tell_others(self.worker, cmds.Changed, mailbox=mailbox)
        return {}

    @cmds.Queued.responder
    def queued(self):
        runner = self.pool.core.runner
        if runner is not None and runner.running:
            runner.scan()
        return {}


class Worker(protocol.ProcessProtocol):
    """One worker process (and its successors after a restart)."""

    def __init__(self, pool, index):
        self.pool, self.index = pool, index
        self.name = f"worker-{index}"
        self.process = None
        self.pid = None
        self.started = 0.0
        self.backoff = 0.0
        self.restart_call = None
        self.ready = defer.Deferred()
        self.channel = None
        self.counted = collections.Counter()      # (kind, ip) -> connections this worker has open
        self.relay = LogRelay(self.name)
        self.ended = None                         # Deferred while a process runs

    def spawn(self):
        self.restart_call = None
        pool = self.pool
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [sys.executable, "-m", "jdmail.workers.worker", "--channel", "3", "--name", self.name]
        if pool.config_path:
            args += ["--config", pool.config_path]
        args += ["--datadir", pool.config.datadir]
        fds = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        for n, (section, port) in enumerate(pool.ports, start=4):
            family = "inet6" if port.socket.family == socket.AF_INET6 else "inet"
            fds[n] = port.fileno()
            args += ["--listen", f"{section}:{n}:{family}"]
        self.relay = LogRelay(self.name)
        self.counted = collections.Counter()
        self.ended = defer.Deferred()
        try:
            self.process = pool.reactor.spawnProcess(self, sys.executable, args, env=pool.env,
                                                     path=os.getcwd(), childFDs=fds)
        except Exception as e:
            theirs.close()
            ours.close()
            log.error("worker {index}: cannot start: {error}", index=self.index, error=e)
            ended, self.ended = self.ended, None
            ended.callback(None)
            self._schedule_restart()
            return
        theirs.close()
        self.pid = self.process.pid
        self.started = pool.reactor.seconds()
        self.channel = MasterChannel(pool, self)
        pool.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _OneProtocol(self.channel))
        ours.close()

    def connectionMade(self):
        self.transport.closeStdin()

    def said_hello(self):
        if not self.ready.called:
            self.ready.callback(None)

    def outReceived(self, data):
        self.relay.feed(data)

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("{worker}: {line}", worker=self.name, line=line.rstrip())

    def uncount(self, kind, ip):
        self.counted[kind, ip] -= 1
        if self.counted[kind, ip] <= 0:
            del self.counted[kind, ip]
        self.pool.limits[kind][0].close(ip)

    def release_connections(self):
        """The worker's channel closed: its connections (and IMAP users) are gone with it."""
        for (kind, ip), n in list(self.counted.items()):
            for _ in range(n):
                self.pool.limits[kind][0].close(ip)
        self.counted.clear()

    def release_leases(self, channel):
        """``channel``'s process is gone, its connections with it: the SMTP credit it
        borrowed is free (jdmail.workers.leases)."""
        if channel is None or channel.released:
            return
        channel.released = True
        self.pool.leases.worker_gone(self, self.pool.workers)

    def lend(self, key):
        """A Deferred of True when this worker's process gave up an unused SMTP credit of ``key``."""
        channel = self.channel
        if channel is None or channel.released or not channel.hello_done:
            # no process accepting (starting, or restarting): nothing of its share is in
            # use, and what it lends now its Hello answer will say
            return defer.succeed(self.pool.leases.credit(self, key) > 0)
        return channel.callRemote(cmds.Lend, key=key).addCallback(lambda answer: answer["lent"])

    def grant(self, key, n):
        """Tell this worker's process that ``n`` SMTP credits of ``key`` it lent are its own
        again (a process that has not said Hello yet learns it from the Hello answer)."""
        channel = self.channel
        if channel is not None and not channel.released and channel.hello_done:
            try:
                channel.callRemote(cmds.Grant, key=key, n=n)
            except Exception:           # closed in between: its successor's Hello answer says it
                pass

    def tell(self, command, **kwargs):
        """Send a command that has no answer, when this worker's channel is up."""
        channel = self.channel
        if channel is not None and channel.transport is not None and self.ready.called:
            try:
                channel.callRemote(command, **kwargs)
            except Exception:       # the connection closed in between
                pass

    def processEnded(self, reason):
        self.relay.flush()
        self.release_connections()
        self.release_leases(self.channel)
        pid = self.pid
        status = reason.value
        how = (f"signal {status.signal}" if getattr(status, "signal", None)
               else f"exit status {getattr(status, 'exitCode', '?')}")
        ended, self.ended, self.process = self.ended, None, None
        if self.pool.stopping:
            log.info("worker {index} pid={pid} stopped ({how})", index=self.index, pid=pid, how=how)
        else:
            ran = self.pool.reactor.seconds() - self.started
            self.backoff = 0.0 if ran >= STEADY else min(MAX_BACKOFF, max(MIN_BACKOFF, self.backoff * 2))
            log.error("worker {index} pid={pid} ended ({how}) after {ran:.1f}s; restarting in "
                      "{delay:.1f}s", index=self.index, pid=pid, how=how, ran=ran, delay=self.backoff)
            self._schedule_restart()
        if ended is not None:
            ended.callback(None)

    def _schedule_restart(self):
        if not self.pool.stopping:
            self.restart_call = self.pool.reactor.callLater(self.backoff, self.spawn)

    def stop(self):
        """SIGTERM; SIGKILL when it has not ended after the grace time. A Deferred of its end."""
        if self.restart_call is not None and self.restart_call.active():
            self.restart_call.cancel()
        self.restart_call = None
        if self.process is None or self.ended is None:
            return defer.succeed(None)
        ended = self.ended
        try:
            self.process.signalProcess("TERM")
        except Exception:
            pass
        kill = self.pool.reactor.callLater(STOP_GRACE + 5.0, self._kill)
        d = defer.Deferred()

        def done(_):
            if kill.active():
                kill.cancel()
            d.callback(None)
        ended.addCallback(done)
        return d

    def _kill(self):
        if self.process is not None:
            log.warn("worker {index} pid={pid} did not stop; killing it", index=self.index, pid=self.pid)
            try:
                self.process.signalProcess("KILL")
            except Exception:
                pass


class WorkerPool(service.Service):
    """``count`` worker processes sharing the listening sockets (see the package
    docstring). ``core`` is the master's jdmail.service.Core; ``limits`` maps a kind of
    connection (pop3, imap, imap-user) to (ConnectionCounter, total limit, limit per IP
    or user): the master's counters, so the limits stay global. SMTP's limits are
    ``leases`` (jdmail.workers.leases): no question per connection."""

    def __init__(self, reactor, count, config, core, limits):
        self.reactor, self.count, self.config, self.core, self.limits = reactor, count, config, core, limits
        smtp = config["smtp"]
        self.leases = MasterLeases(Limits(smtp["max_connections"], smtp["max_connections_per_ip"], count))
        self.log_files = None          # MasterLogFiles, once logging has begun (take)
        self._rotation = None
        store = core.services.store
        if hasattr(store, "on_commit"):
            store.on_commit = self._committed       # the master's own commits (quota sync, Junk)
        path = config.path
        self.config_path = os.path.abspath(path) if path and os.path.isfile(path) else None
        self.env = _env()
        self.workers = []
        self.ports = []
        self.stopping = False
        self._stopped = None

    def tell_others(self, sender, command, **kwargs):
        """Pass a notice from ``sender`` (a Worker; None: the master) to every other worker."""
        for w in self.workers:
            if w is not sender:
                w.tell(command, **kwargs)

    def _committed(self, key):
        self.tell_others(None, cmds.Changed, mailbox=key)

    def take(self, ports):
        """Stop accepting on ``ports`` ([(section, port)]) in this process and start the
        workers on them; a Deferred firing when every worker is ready (or after
        READY_TIMEOUT, with a warning)."""
        if not ports or self.stopping:
            return defer.succeed(None)
        self.ports = list(ports)
        self.log_files = MasterLogFiles()
        if self.log_files.rotating:
            self._rotation = task.LoopingCall(self.log_files.check_rotation)
            self._rotation.clock = self.reactor
            self._rotation.start(ROTATE_CHECK, now=False)
        for _section, port in self.ports:
            port.stopReading()
        self.workers = [Worker(self, i) for i in range(self.count)]
        for w in self.workers:
            w.spawn()
        log.info("{n} worker processes accept on {sockets}", n=self.count,
                 sockets=", ".join(f"[{s}] {p.getHost().host}:{p.getHost().port}" for s, p in self.ports))
        ready = defer.DeferredList([w.ready for w in self.workers])
        timeout = self.reactor.callLater(READY_TIMEOUT, self._not_ready, ready)
        ready.addBoth(lambda r: timeout.active() and timeout.cancel())
        return ready

    def _not_ready(self, ready):
        late = [w.index for w in self.workers if not w.ready.called]
        log.warn("workers {late} not ready after {t:.0f}s", late=late, t=READY_TIMEOUT)
        for w in self.workers:
            w.said_hello()

    def stopService(self):
        super().stopService()
        return self.stopped()

    def stopped(self):
        """Stop every worker (once); a Deferred firing when all have ended."""
        if self._stopped is None:
            self.stopping = True
            if self._rotation is not None and self._rotation.running:
                self._rotation.stop()
            self._stopped = defer.DeferredList([w.stop() for w in self.workers])
        d = defer.Deferred()
        self._stopped.addBoth(lambda r: (d.callback(None), r)[1])
        return d


def _env():
    """The workers' environment: ours, with the directory holding this jdmail first on
    the path (twistd may have found it through its current directory)."""
    env = dict(os.environ)
    import jdmail
    root = os.path.dirname(os.path.dirname(os.path.abspath(jdmail.__file__)))
    paths = [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
