"""Connection counting for the total and per-client-IP limits of a protocol."""

from collections import Counter


class ConnectionCounter:
    """Counts open connections of one protocol, all listeners together."""

    def __init__(self):
        self.total = 0
        self.per_ip = Counter()

    def open(self, ip, max_total, max_per_ip):
        """Count a new connection; return a reason string (and count nothing) when over a limit.
        A limit of 0 means unlimited."""
        if max_total and self.total >= max_total:
            return f"total connections at limit {max_total}"
        if max_per_ip and self.per_ip[ip] >= max_per_ip:
            return f"connections from {ip} at limit {max_per_ip}"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def close(self, ip):
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
