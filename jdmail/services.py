"""The bundle of shared things every component is built with."""

from dataclasses import dataclass, field


@dataclass
class Services:
    """What ``IComponentFactory.build(name, settings, services)`` receives.

    ``threadpool`` is jdmail's own pool for blocking work (fsync, password
    hashing, SQL): a jdmail.threads.BlockingPool in the server (a Twisted ThreadPool
    also works, e.g. in jdmailctl); run work on it with ``run_blocking``.
    ``directory`` and ``store`` are filled in once built, in that order.
    ``local_addresses`` fills up as listeners bind: the IP addresses this server listens
    on (not the wildcard ones), as strings.
    """
    reactor: object
    config: object
    hostname: str
    datadir: str
    threadpool: object
    directory: object = None
    store: object = None
    queue: object = None            # the outbound QueueStore (issue 4), when the server has one
    extra: dict = field(default_factory=dict)
    local_addresses: set = field(default_factory=set)

    def run_blocking(self, f, *args, **kwargs):
        """Run ``f`` on the thread pool; returns a Deferred of its result."""
        run = getattr(self.threadpool, "run", None)
        if run is not None:
            return run(f, *args, **kwargs)
        from twisted.internet.threads import deferToThreadPool
        return deferToThreadPool(self.reactor, self.threadpool, f, *args, **kwargs)
