"""Builds the running server from a validated Config: thread pool, directory, store,
cred portal, filters, TLS and one listening service per configured endpoint."""

import ipaddress
import json
import os

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import DeferredList, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from jdmail import tls
from jdmail.auth import make_portal
from jdmail.config import LISTENER_SECTIONS
from jdmail.delivery.local import LocalDelivery
from jdmail.errors import ConfigError, ConfigErrors
from jdmail.filters.chain import ChainEntry, FilterChain
from jdmail.filters.quarantine import Quarantine
from jdmail.imap.server import IMAPFactory
from jdmail.limits import ConnectionCounter
from jdmail.pop3.server import POP3Factory
from jdmail.services import Services
from jdmail.threads import BlockingPool
from jdmail.smtp.server import Listener, SMTPFactory
from jdmail.smtp.spool import clean_spool

log = Logger()


class ThreadPoolService(service.Service):
    """Starts and stops jdmail's own thread pool with the application. ``before_stop``:
    coroutine functions (or functions returning a Deferred) of last work on the pool (the store's
    snapshots), run at shutdown before the pool stops; their failures are logged."""

    def __init__(self, pool):
        self.pool = pool
        self.before_stop = []

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        work = [maybeDeferred(lambda f=f: ensureDeferred(f())) for f in self.before_stop]
        d = DeferredList(work, consumeErrors=True)

        def stop(results):
            for ok, failure in results:
                if not ok:
                    log.failure("shutdown work failed", failure)
            self.pool.stop()
        return d.addCallback(stop)


class ListenersService(service.Service):
    """Listens on every configured endpoint.

    The ports are bound in ``privilegedStartService``, before twistd drops root
    privileges (``--uid``) and before the reactor runs, so port 25 works for a
    server that runs as a mail user, and a listener that cannot start stops the
    server at once: one log line naming the section and endpoint, then exit
    status 1 (SystemExit out of twistd's startApplication, no traceback). An
    endpoint type that only fails later (asynchronously) stops the reactor and
    the process exits 1 after shutdown.

    With ``handoff`` (a jdmail.workers.pool.WorkerPool) the plain TCP ports are given
    to the worker processes once bound: this process stops accepting on them.

    When all are up (and the workers ready), writes ``<datadir>/run/listening.json``
    ({section: ["host:port", …]}) for tools and tests."""

    def __init__(self, reactor, datadir, listeners, config_path="<embedded default>", addresses=None):
        self.reactor, self.datadir, self.config_path = reactor, datadir, config_path
        self.addresses = addresses if addresses is not None else set()   # bound IPs, for the HELO check
        self.listeners = listeners        # [(section, description, endpoint, factory)]
        self.ports = []
        self.handoff = None
        self._factories = {}              # id(port) -> the factory it was listened with
        self._pending = []
        self._bound = False

    def privilegedStartService(self):
        super().privilegedStartService()
        self._bind()

    def startService(self):
        super().startService()
        self._bind()            # nothing to do when privilegedStartService ran
        pending = list(self._pending)
        if self.handoff is not None:
            pending.append(self.handoff.take(self._tcp_ports()))
        gatherResults(pending, consumeErrors=True).addCallbacks(
            self._all_listening, lambda _failure: None)

    def _tcp_ports(self):
        """[(section, port)] that workers can adopt: plain TCP ports of the listener
        sections (not TLS endpoints such as ssl:, whose wrapping the port does itself)."""
        from twisted.internet import tcp
        out = []
        for section, port in self.ports:
            if (section in LISTENER_SECTIONS and type(port) is tcp.Port
                    and getattr(port, "_type", "TCP") == "TCP"
                    and port.factory is self._factories.get(id(port))):
                out.append((section, port))
        return out

    @property
    def _state_file(self):
        return os.path.join(self.datadir, "run", "listening.json")

    def _forget_state(self):
        try:
            os.unlink(self._state_file)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=self._state_file, error=e)

    def _bind(self):
        if self._bound:
            return
        self._bound = True
        self._forget_state()        # a file left by a crash names ports nobody listens on
        for section, description, endpoint, factory in self.listeners:
            outcome = []

            def record(result, outcome=outcome):
                outcome.append(result)
                return result

            d = endpoint.listen(factory).addBoth(record)
            if not outcome:
                # An endpoint type that binds asynchronously: finish when it does.
                self._pending.append(d.addCallbacks(self._listening, self._failed_later,
                                                    (section, description), None,
                                                    (section, description), None))
            elif isinstance(outcome[0], Failure):
                d.addErrback(lambda _failure: None)
                self._cannot_listen(section, description, outcome[0])
                self._abort()
            else:
                self._factories[id(outcome[0])] = factory
                self._listening(outcome[0], section, description)

    def _failed_later(self, failure, section, description):
        self._cannot_listen(section, description, failure)
        # Too late for SystemExit out of twistd's startApplication: stop the
        # reactor and leave with exit status 1 once shutdown has run.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        return failure

    def _listening(self, port, section, description):
        self.ports.append((section, port))
        addr = port.getHost()
        ip = _specific_ip(getattr(addr, "host", None))
        if ip:
            self.addresses.add(ip)
        log.info("listening [{section}] {desc} on {host}:{port}", section=section, desc=description,
                 host=getattr(addr, "host", addr), port=getattr(addr, "port", ""))
        return port

    def _cannot_listen(self, section, description, failure):
        log.critical("jdmail: {path}: [{section}] listen {desc!r}: cannot listen: {error}; stopping",
                     path=self.config_path, section=section, desc=description,
                     error=_one_line(failure.getErrorMessage()))

    def _abort(self):
        """Give back what is bound and leave twistd with exit status 1."""
        for _section, port in self.ports:
            try:
                port.stopListening()
            except Exception:
                pass
        self.ports = []
        raise SystemExit(1)

    def _all_listening(self, _ports):
        run = os.path.join(self.datadir, "run")
        table = {}
        for section, port in self.ports:
            addr = port.getHost()
            table.setdefault(section, []).append(f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}")
        tmp = os.path.join(run, "listening.json.tmp")
        try:
            os.makedirs(run, mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(table, f)
            os.replace(tmp, self._state_file)
        except OSError as e:
            log.warn("cannot write {path}: {error}", path=self._state_file, error=e)

    def stopService(self):
        super().stopService()
        self._forget_state()
        ports, self.ports = self.ports, []
        return gatherResults([maybeDeferred(p.stopListening) for _s, p in ports])


def _one_line(text):
    return " ".join(str(text).split())


def _specific_ip(host):
    """``host`` as a canonical IP string, or None for a wildcard (0.0.0.0, ::) or non-IP."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


def _build_component(config, section, services, errors, name=None):
    """Build one configured component; a failure becomes a ConfigError for its section."""
    factory, settings = config.components[section]
    try:
        return factory.build(name or section, settings, services)
    except ConfigErrors as e:
        errors.extend(e.errors)
    except ConfigError as e:
        errors.append(e)
    except Exception as e:
        what = f"{factory.kind!r} ({type(factory).__module__})"
        errors.append(ConfigError(f"cannot start {what}: {_one_line(e) or type(e).__name__}",
                                  config.path, section, "type"))
    return None


def _endpoint(reactor, config, section, description, implicit_tls, errors):
    """Parse one listener's endpoint string; None (and an error) when it is not valid."""
    where = (config.path, section, "listen")
    kind = description.split(":", 1)[0].strip().lower()
    if implicit_tls and kind in ("ssl", "tls", "le", "lets"):
        errors.append(ConfigError(f"{description!r}: [{section}] is already TLS with the [tls] "
                                  f"certificate; use a plain endpoint such as tcp:PORT", *where))
        return None
    try:
        return serverFromString(reactor, description)
    except OSError as e:
        errors.append(ConfigError(f"{description!r}: cannot read {e.filename or 'a file'}: "
                                  f"{e.strerror or e}", *where))
    except Exception as e:
        errors.append(ConfigError(f"{description!r} is not a valid Twisted endpoint string "
                                  f"(such as tcp:25 or tcp:25:interface=192.0.2.1): {_one_line(e)}",
                                  *where))
    return None


class Core:
    """What the server process and its workers build alike from one config (see
    ``build_core``): the thread pool service, Services (directory, store, queue), the
    cred portal, local delivery, the filter chain, the quarantine, the TLS context, and
    the queue runner (None in a worker)."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


def build_core(config, reactor, errors, worker=None):
    """Build the parts every process needs; problems are appended to ``errors``.

    ``worker``: in a worker process, its jdmail.workers.worker.WorkerSide, which wraps
    the store, queue and delivery so that what is kept in one place (quota usage, the
    Junk folder, the queue runner, change notices) is asked of or told to the master;
    no queue runner is built."""
    datadir = config.datadir
    spool_dir = os.path.join(datadir, "spool", "incoming")
    pool = BlockingPool(reactor, config["jdmail"]["threads"], name="jdmail")
    pool_service = ThreadPoolService(pool)
    services = Services(reactor=reactor, config=config, hostname=config.hostname, datadir=datadir,
                        threadpool=pool, extra={"spool_dir": spool_dir})
    services.directory = _build_component(config, "directory", services, errors)
    services.store = _build_component(config, "store", services, errors)
    if hasattr(services.store, "save_snapshots"):
        pool_service.before_stop.append(services.store.save_snapshots)
    portal = make_portal(services.directory)
    queue = runner = None
    if not errors:
        from jdmail.config import dns_servers
        from jdmail.queue.runner import QueueRunner, make_resolver
        from jdmail.queue.store import QueueError, QueueStore
        try:
            queue = QueueStore(os.path.join(datadir, "queue"), services,
                               config["queue"]["min_backoff"], config["queue"]["max_backoff"])
        except (QueueError, OSError) as e:
            errors.append(ConfigError(f"cannot open the outbound queue: {_one_line(e)}",
                                      config.path, "jdmail", "datadir"))
        else:
            if worker is None:
                runner = QueueRunner(queue, services, config["queue"], config.routing,
                                     directory=services.directory, store=services.store,
                                     resolver=make_resolver(dns_servers(config)), spool_dir=spool_dir,
                                     reactor=reactor)
    if worker is not None:
        services.store = worker.wrap_store(services.store)
        queue = worker.wrap_queue(queue)
    services.queue = queue
    delivery = LocalDelivery(services.store, queue) if worker is None else worker.delivery(services.store, queue)

    chain = []
    for name in config["filters"]["chain"]:
        section = f"filter:{name}"
        flt = _build_component(config, section, services, errors, name=name)
        common = config.components[section][1]
        chain.append(ChainEntry(flt, common.get("on_error"), common.get("timeout"),
                                common.get("quarantine") or "central"))
    fcfg = config["filters"]
    filters = FilterChain([] if errors else chain, reactor, fcfg["timeout"], fcfg["on_error"],
                          config.hostname, fcfg["tag_score"], fcfg["reject_score"], fcfg["junk_tagged"])
    quarantine = Quarantine(os.path.join(datadir, "quarantine"), services)

    try:
        context = tls.context_factory(config)
    except ConfigError as e:
        errors.append(e)
        context = None
    return Core(pool_service=pool_service, services=services, portal=portal, queue=queue, runner=runner,
                delivery=delivery, filters=filters, quarantine=quarantine, context=context,
                spool_dir=spool_dir)


def smtp_factory(config, reactor, core, section, counter):
    """The protocol factory of one SMTP listener section (smtp, submission, smtps):
    wrapped in TLS for the implicit-TLS one."""
    _default, implicit_tls, _proto = LISTENER_SECTIONS[section]
    listener = Listener(section, implicit_tls, config[section]["require_auth"])
    factory = SMTPFactory(core.services, listener, counter, core.delivery, core.filters, core.portal,
                          core.context, reactor, core.quarantine)
    if implicit_tls and core.context is not None:
        factory = TLSMemoryBIOFactory(core.context, False, factory)
    return factory


def pop3_factory(config, core, section, counter, locks):
    """The protocol factory of one POP3 listener section (pop3, pop3s: TLS-wrapped)."""
    implicit_tls = LISTENER_SECTIONS[section][1]
    settings = dict(config["pop3"])
    settings.update(allow_plaintext=config["auth"]["allow_plaintext"],
                    fail_delay=config["auth"]["fail_delay"],
                    max_failures=config["auth"]["max_failures"],
                    tls_context=core.context, implicit_tls=implicit_tls,
                    counter=counter, locks=locks)
    return _tls_wrapped(core, implicit_tls, POP3Factory(core.services, core.portal, settings))


def imap_factory(config, core, section, counter, user_counter):
    """The protocol factory of one IMAP listener section (imap, imaps: TLS-wrapped)."""
    implicit_tls = LISTENER_SECTIONS[section][1]
    settings = dict(config["imap"])
    settings.update(allow_plaintext=config["auth"]["allow_plaintext"],
                    fail_delay=config["auth"]["fail_delay"],
                    max_failures=config["auth"]["max_failures"],
                    max_message_size=config["smtp"]["max_message_size"],
                    tls_context=core.context, implicit_tls=implicit_tls,
                    counter=counter, user_counter=user_counter)
    return _tls_wrapped(core, implicit_tls, IMAPFactory(core.services, core.portal, settings))


def _tls_wrapped(core, implicit_tls, factory):
    if implicit_tls and core.context is not None:
        return TLSMemoryBIOFactory(core.context, False, factory)
    return factory


def idle_index_timer(store):
    """The TimerService that closes idle mailbox indexes (``[store] index_idle_timeout``),
    in every process that opens them; None when the store has no such timeout."""
    if getattr(store, "index_idle_timeout", 0):
        return TimerService(max(0.5, store.index_idle_timeout / 5), store.sleep_idle_indexes)
    return None


def worker_count(config):
    """``[jdmail] workers`` as a number of processes (auto = the CPUs this process may use)."""
    value = config["jdmail"]["workers"]
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return value


def make_service(config, reactor):
    """Return the jdmail MultiService for ``config``. Raises ConfigErrors listing every
    problem found while building (unreadable certificate, bad endpoint string, a
    component that cannot start, an unusable data directory)."""
    errors = []
    datadir = config.datadir
    spool_dir = os.path.join(datadir, "spool", "incoming")
    try:
        os.makedirs(datadir, mode=0o700, exist_ok=True)
        leftovers = clean_spool(spool_dir)
    except OSError as e:
        raise ConfigErrors([ConfigError(f"{datadir!r}: cannot use the data directory: "
                                        f"{e.strerror or e}", config.path, "jdmail", "datadir")]) from None
    if leftovers:
        log.info("spool: removed {n} unacknowledged partial message(s) left by an interruption", n=leftovers)
    if config["jdmail"]["log_file"]:
        path = os.path.abspath(os.path.expanduser(config["jdmail"]["log_file"]))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            log_file = open(path, "a", encoding="utf-8")
        except OSError as e:
            errors.append(ConfigError(f"{config['jdmail']['log_file']!r}: cannot open: {e.strerror or e}",
                                      config.path, "jdmail", "log_file"))
        else:
            globalLogPublisher.addObserver(textFileLogObserver(log_file))

    top = service.MultiService()
    core = build_core(config, reactor, errors)
    core.pool_service.setServiceParent(top)
    services, runner = core.services, core.runner
    timer = idle_index_timer(services.store)
    if timer is not None:
        timer.setServiceParent(top)

    smtp_counter = ConnectionCounter()
    pop3_counter = ConnectionCounter()
    pop3_locks = set()          # pop3 and pop3s: one session per mailbox over both
    imap_counter = ConnectionCounter()     # imap and imaps: the limits cover both
    imap_users = ConnectionCounter()
    listeners = []
    for section, (_default, implicit_tls, proto) in LISTENER_SECTIONS.items():
        descriptions = config[section]["listen"]
        if not descriptions:
            continue
        if proto == "smtp":
            factory = smtp_factory(config, reactor, core, section, smtp_counter)
        elif proto == "imap":
            factory = imap_factory(config, core, section, imap_counter, imap_users)
        else:
            factory = pop3_factory(config, core, section, pop3_counter, pop3_locks)
        for description in descriptions:
            endpoint = _endpoint(reactor, config, section, description, implicit_tls, errors)
            if endpoint is not None:
                listeners.append((section, description, endpoint, factory))
    if errors:
        raise ConfigErrors(errors)
    if runner is not None:
        runner.setServiceParent(top)      # recover() before the listeners accept mail
    listening = ListenersService(reactor, datadir, listeners, config.path, services.local_addresses)
    count = worker_count(config)
    if count > 1 and listeners:
        from jdmail.workers.pool import WorkerPool
        limits = {"pop3": (pop3_counter, config["pop3"]["max_connections"], config["pop3"]["max_connections_per_ip"]),
                  "imap": (imap_counter, config["imap"]["max_connections"], config["imap"]["max_connections_per_ip"]),
                  "imap-user": (imap_users, 0, config["imap"]["max_connections_per_user"])}
        pool = WorkerPool(reactor, count, config, core, limits)
        pool.setServiceParent(top)
        listening.handoff = pool
        core.pool_service.before_stop.append(pool.stopped)    # workers may still ask the master
    listening.setServiceParent(top)
    log.info("jdmail starting: hostname={hostname} datadir={datadir} directory={directory} store={store}",
             hostname=config.hostname, datadir=datadir, directory=config["directory"]["type"],
             store=config["store"]["type"])
    return top
