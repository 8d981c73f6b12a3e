"""What a workload measures about a server while it runs: CPU seconds of all its
processes, peak memory (sampled), the rest of the machine's CPU, and latency
percentiles. Shared by the smtp, pop3, queue, filters and connections workloads."""

import sys
import threading
import time

from bench import servers


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def percentile(values, q):
    """The ``q`` (0..1) percentile of ``values`` by nearest rank; None when empty."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


def median(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    vals.sort()
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


class Meter:
    """Watches the process trees rooted at ``pids`` from ``start()`` to ``stop()``:
    CPU seconds (utime+stime, reaped children included), peak RSS and PSS (sampled
    every ``interval`` s, summed over every process), and the CPU that programs
    outside those trees used meanwhile (share of one core)."""

    def __init__(self, pids, interval=0.25):
        self.pids = list(pids)
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = None

    def _cpu(self):
        return sum(servers.tree_cpu_seconds(p) for p in self.pids)

    def sample(self):
        rss = pss = n = 0
        for p in self.pids:
            m = servers.tree_memory(p)
            rss, pss, n = rss + m["rss"], pss + m["pss"], n + m["processes"]
        if rss > self.peak_rss:
            self.peak_rss, self.peak_pss, self.peak_processes = rss, pss, n
        return rss

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self):
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()
        self.busy0 = servers.system_busy_seconds()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self, extra_pids=()):
        """Stop sampling; ``extra_pids``: processes outside the server (load generators)
        whose CPU is not the server's nor "other programs'" (their CPU seconds)."""
        self.sample()
        self._stop.set()
        self._thread.join()
        self.wall = time.monotonic() - self.t0
        self.cpu = self._cpu() - self.cpu0
        self.busy = servers.system_busy_seconds() - self.busy0
        return self

    def figures(self, count, generator_cpu=0.0):
        """The common figures for ``count`` messages/operations."""
        other = max(0.0, self.busy - self.cpu - generator_cpu)
        return {
            "wall_s": self.wall,
            "server_cpu_s": self.cpu,
            "cpu_per_1000": 1000 * self.cpu / count if count else None,
            "peak_rss": self.peak_rss, "peak_pss": self.peak_pss, "peak_processes": self.peak_processes,
            "generator_cpu_s": generator_cpu,
            "other_cpu_share": other / self.wall if self.wall else None,
        }


def children_cpu_seconds():
    """CPU seconds of this process's reaped children (smtp-source runs)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
