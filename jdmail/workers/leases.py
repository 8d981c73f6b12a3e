"""The global connection limits (total, per client IP) over all worker processes,
without a question to the master per connection.

Each limit is a number of credits: one per connection it allows. Of each limit a
worker holds a share (the limit divided by the number of workers; for an IP it has
not seen, the same share, without any message), and admits a connection at once while
it has an unused credit of both limits that apply. The rest of each limit is the
master's pool. A worker out of credit borrows one from the master (``Borrow``): from
the pool, or else lent by another worker that has an unused one (``Lend``); only when
nobody has one is the connection refused. Borrowed credit goes back when it is no
longer used (``GiveBack``), to a worker that lent it first (``Grant``), else to the
pool. So at every moment the credits held by the workers and the pool add up to the
limit, and a worker never has more connections than credits: the limits hold exactly
over all workers, and the master is only asked by a worker at its share.

A worker's credit of a limit is its share plus ``extra`` (negative when it lent);
only the keys that differ from the share are stored. The master keeps the same
numbers; when a worker dies its borrowed credit is given back (its connections died
with it) and what it had lent stays owed: its successor starts with that less
(``deficits`` in the Hello answer)."""

import collections


TOTAL = "*"         # the key of the total limit (every other key is a client IP)


class Limits:
    """The limits of one protocol over ``workers`` processes: ``limit(key)`` and a
    worker's ``share(key)``; a limit of 0 means none."""

    def __init__(self, max_total, max_per_ip, workers):
        self.max_total, self.max_per_ip, self.workers = max_total, max_per_ip, max(1, workers)

    def limit(self, key):
        return self.max_total if key == TOTAL else self.max_per_ip

    def share(self, key):
        return self.limit(key) // self.workers

    def keys(self, ip):
        """The limited keys a connection from ``ip`` counts against."""
        return [k for k in (TOTAL, ip) if self.limit(k) > 0]

    def refusal(self, key, ip):
        if key == TOTAL:
            return f"total connections at limit {self.max_total}"
        return f"connections from {ip} at limit {self.max_per_ip}"


class WorkerLeases:
    """A worker's side (its SMTPFactory's counter). ``borrow(ip, keys)`` asks the
    master (a Deferred of "" or a refusal), ``give_back(key, n)`` tells it. ``begin``
    (with the master's answer to Hello, before any connection) sets the shares."""

    def __init__(self, borrow, give_back):
        self._borrow, self._give_back = borrow, give_back
        self.limits = None
        self.extra = {}
        self.used = collections.Counter()

    def begin(self, limits, deficits=()):
        self.limits = limits
        self.extra = {key: -n for key, n in deficits if n}

    def credit(self, key):
        return self.limits.share(key) + self.extra.get(key, 0)

    def open(self, ip, _max_total=None, _max_per_ip=None):
        """None (admitted, counted), or a Deferred of None or the refusal reason."""
        keys = self.limits.keys(ip)
        short = [k for k in keys if self.used[k] >= self.credit(k)]
        if not short:
            self._count(keys)
            return None
        d = self._borrow(ip, short)

        def answered(refusal):
            if refusal:
                return refusal
            for k in short:
                self._add(k, 1)
            self._count(keys)
            return None
        return d.addCallback(answered)

    def _count(self, keys):
        for k in keys:
            self.used[k] += 1

    def close(self, ip):
        for k in self.limits.keys(ip):
            self.used[k] -= 1
            if self.used[k] <= 0:
                del self.used[k]
            spare = min(self.extra.get(k, 0), self.credit(k) - self.used[k])
            if spare > 0:
                self._add(k, -spare)
                self._give_back(k, spare)

    def lend(self, key):
        """The master asks for an unused credit of ``key``: True when one was given up."""
        if self.limits is not None and self.limits.limit(key) > 0 and self.credit(key) - self.used[key] > 0:
            self._add(key, -1)
            return True
        return False

    def grant(self, key, n):
        """The master gives back ``n`` credits this worker lent."""
        self._add(key, n)

    def _add(self, key, n):
        extra = self.extra.get(key, 0) + n
        if extra:
            self.extra[key] = extra
        else:
            self.extra.pop(key, None)


class MasterLeases:
    """The master's side: the pool, and every worker's credit beyond (or below) its
    share. ``workers`` are objects with ``lend(key)`` (a Deferred of a bool: the
    worker gave one up) and ``grant(key, n)`` (tell it), and an ``index``."""

    def __init__(self, limits):
        self.limits = limits
        self.free = {}                                  # key -> pool, where not the default
        self.extra = collections.defaultdict(dict)      # worker index -> {key: credit - share}

    def pool(self, key):
        return self.free.get(key, self.limits.limit(key) - self.limits.workers * self.limits.share(key))

    def _set_pool(self, key, n):
        default = self.limits.limit(key) - self.limits.workers * self.limits.share(key)
        if n == default:
            self.free.pop(key, None)
        else:
            self.free[key] = n

    def credit(self, worker, key):
        """``worker``'s credit of ``key`` as the master counts it."""
        return self.limits.share(key) + self.extra.get(worker.index, {}).get(key, 0)

    def _add(self, worker, key, n):
        extra = self.extra[worker.index]
        value = extra.get(key, 0) + n
        if value:
            extra[key] = value
        else:
            extra.pop(key, None)
        if not extra:
            del self.extra[worker.index]

    async def borrow(self, worker, ip, keys, others):
        """One credit of each of ``keys`` for ``worker``: "" when granted, else the
        refusal reason. ``others``: the workers that may lend."""
        got = []
        for key in keys:
            if self.pool(key) > 0:
                self._set_pool(key, self.pool(key) - 1)
            elif not await self._from_others(key, worker, others):
                for k in got:
                    self._returned(k, 1, others)
                return self.limits.refusal(key, ip)
            got.append(key)
        for key in got:
            self._add(worker, key, 1)
        return ""

    async def _from_others(self, key, worker, others):
        for other in others:
            if other is worker:
                continue
            try:
                lent = await other.lend(key)
            except Exception:
                lent = False            # gone meanwhile: what it held is given back by worker_gone
            if lent:
                self._add(other, key, -1)
                return True
        return False

    def give_back(self, worker, key, n, workers):
        """``worker`` no longer needs ``n`` borrowed credits of ``key``."""
        self._add(worker, key, -n)
        self._returned(key, n, workers)

    def _returned(self, key, n, workers=()):
        """Credits free again: to the workers that lent them first, the rest to the pool."""
        for w in workers:
            owed = -self.extra.get(w.index, {}).get(key, 0)
            if n <= 0:
                break
            if owed > 0:
                k = min(owed, n)
                self._add(w, key, k)
                w.grant(key, k)
                n -= k
        if n > 0:
            self._set_pool(key, self.pool(key) + n)

    def worker_gone(self, worker, workers):
        """``worker``'s process ended: its borrowed credits are free (its connections
        ended with it); what it lent stays owed to its successor."""
        for key, extra in list(self.extra.get(worker.index, {}).items()):
            if extra > 0:
                self.give_back(worker, key, extra, [w for w in workers if w is not worker])

    def deficits(self, worker):
        """[(key, n)]: what ``worker`` (its new process) starts without (lent by its predecessor)."""
        return sorted((key, -n) for key, n in self.extra.get(worker.index, {}).items() if n < 0)
