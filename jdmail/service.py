"""Builds the running server from a validated Config: thread pool, directory, store,
cred portal, filters, TLS and one listening service per configured endpoint."""

import json
import os

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from jdmail import tls
from jdmail.auth import make_portal
from jdmail.config import LISTENER_SECTIONS
from jdmail.delivery.local import LocalDelivery
from jdmail.errors import ConfigError, ConfigErrors
from jdmail.filters.chain import FilterChain
from jdmail.limits import ConnectionCounter
from jdmail.services import Services
from jdmail.smtp.server import Listener, SMTPFactory
from jdmail.smtp.spool import clean_spool

log = Logger()


class ThreadPoolService(service.Service):
    """Starts and stops jdmail's own thread pool with the application."""

    def __init__(self, pool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


class ListenersService(service.MultiService):
    """Listens on every configured endpoint; a listener that cannot start stops the
    server with one log line naming the section and endpoint. When all are up, writes
    ``<datadir>/run/listening.json`` ({section: ["host:port", …]}) for tools and tests."""

    def __init__(self, reactor, datadir, listeners):
        super().__init__()
        self.reactor, self.datadir = reactor, datadir
        self.listeners = listeners        # [(section, description, endpoint, factory)]
        self.ports = []

    def startService(self):
        super().startService()
        from twisted.internet.defer import gatherResults
        ds = [self._listen(*entry) for entry in self.listeners]
        gatherResults(ds, consumeErrors=True).addCallback(self._all_listening)

    def _listen(self, section, description, endpoint, factory):
        d = endpoint.listen(factory)

        def ok(port):
            self.ports.append((section, port))
            addr = port.getHost()
            log.info("listening [{section}] {desc} on {host}:{port}", section=section, desc=description,
                     host=addr.host, port=addr.port)
            return port

        def failed(failure):
            log.critical("cannot listen for [{section}] on {desc}: {error}; stopping",
                         section=section, desc=description, error=failure.getErrorMessage())
            if self.reactor.running:
                self.reactor.stop()
            else:
                self.reactor.callWhenRunning(self.reactor.stop)
            return failure
        return d.addCallbacks(ok, failed)

    def _all_listening(self, _ports):
        run = os.path.join(self.datadir, "run")
        os.makedirs(run, mode=0o700, exist_ok=True)
        table = {}
        for section, port in self.ports:
            addr = port.getHost()
            table.setdefault(section, []).append(f"{addr.host}:{addr.port}")
        tmp = os.path.join(run, "listening.json.tmp")
        with open(tmp, "w") as f:
            json.dump(table, f)
        os.replace(tmp, os.path.join(run, "listening.json"))

    def stopService(self):
        super().stopService()
        from twisted.internet.defer import gatherResults
        ports, self.ports = self.ports, []
        return gatherResults([p.stopListening() for _s, p in ports])


def _build_component(config, section, services):
    factory, settings = config.components[section]
    return factory.build(section, settings, services)


def make_service(config, reactor):
    """Return the jdmail MultiService for ``config``. Raises ConfigErrors for problems
    found while building (unreadable certificate, bad endpoint string)."""
    datadir = config.datadir
    os.makedirs(datadir, mode=0o700, exist_ok=True)
    spool_dir = os.path.join(datadir, "spool", "incoming")
    leftovers = clean_spool(spool_dir)
    if leftovers:
        log.info("spool: removed {n} unacknowledged partial message(s) left by an interruption", n=leftovers)
    if config["jdmail"]["log_file"]:
        path = os.path.abspath(os.path.expanduser(config["jdmail"]["log_file"]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        globalLogPublisher.addObserver(textFileLogObserver(open(path, "a", encoding="utf-8")))

    top = service.MultiService()
    pool = ThreadPool(minthreads=1, maxthreads=max(1, config["jdmail"]["threads"]), name="jdmail")
    ThreadPoolService(pool).setServiceParent(top)
    services = Services(reactor=reactor, config=config, hostname=config.hostname, datadir=datadir,
                        threadpool=pool, extra={"spool_dir": spool_dir})
    services.directory = _build_component(config, "directory", services)
    services.store = _build_component(config, "store", services)
    portal = make_portal(services.directory)
    delivery = LocalDelivery(services.store)

    chain = []
    for name in config["filters"]["chain"]:
        section = f"filter:{name}"
        factory, settings = config.components[section]
        chain.append((factory.build(name, settings, services), settings.get("on_error")))
    filters = FilterChain(chain, config["filters"]["timeout"], reactor, config["filters"]["on_error"])

    errors = []
    try:
        context = tls.context_factory(config)
    except ConfigError as e:
        raise ConfigErrors([e]) from None

    smtp_counter, pop3_counter = ConnectionCounter(), ConnectionCounter()
    listeners = []
    for section, (_default, implicit_tls, proto) in LISTENER_SECTIONS.items():
        descriptions = config[section]["listen"]
        if not descriptions:
            continue
        if proto == "imap":
            log.info("[{section}] listen is set, but IMAP is not served by this version of jdmail", section=section)
            continue
        if proto == "smtp":
            listener = Listener(section, implicit_tls, config[section]["require_auth"])
            factory = SMTPFactory(services, listener, smtp_counter, delivery, filters, portal, context, reactor)
        else:
            from jdmail.pop3.server import POP3Factory
            settings = dict(config["pop3"])
            settings.update(allow_plaintext=config["auth"]["allow_plaintext"],
                            fail_delay=config["auth"]["fail_delay"],
                            max_failures=config["auth"]["max_failures"],
                            tls_context=context, implicit_tls=implicit_tls, counter=pop3_counter)
            factory = POP3Factory(services, portal, settings)
        if implicit_tls:
            factory = TLSMemoryBIOFactory(context, False, factory)
        for description in descriptions:
            try:
                endpoint = serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                errors.append(ConfigError(f"{description!r} is not a valid Twisted endpoint string: {e}",
                                          config.path, section, "listen"))
                continue
            listeners.append((section, description, endpoint, factory))
    if errors:
        raise ConfigErrors(errors)
    ListenersService(reactor, datadir, listeners).setServiceParent(top)
    log.info("jdmail starting: hostname={hostname} datadir={datadir} directory={directory} store={store}",
             hostname=config.hostname, datadir=datadir, directory=config["directory"]["type"],
             store=config["store"]["type"])
    return top
