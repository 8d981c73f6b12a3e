"""The IMAP load generator: a small asyncio client on raw sockets, and the workloads.

One process, one event loop, no IMAP library: the client sends each command
and reads until its tagged answer, skipping literals by their length and
tracking ``* n EXISTS`` / ``* n EXPUNGE``. Its own CPU time is measured so a
run can show the generator was not the bottleneck.
"""

import asyncio
import random
import re
import socket
import statistics
import time

SEARCH_WORDS = ("invoice", "meeting", "report", "budget", "release", "holiday", "contract")
HEADER_FIELDS = b"(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (DATE FROM TO CC SUBJECT MESSAGE-ID CONTENT-TYPE)])"


class IMAPError(Exception):
    pass


class _Proto(asyncio.Protocol):
    """Reads IMAP responses straight from a buffer: finds line ends with bytes.find,
    skips literals by their announced length, and wakes the waiting command when
    its tagged line (or a ``+`` continuation) arrives."""

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0
        self.skip = 0
        self.tag = None
        self.waiter = None
        self.lines = None
        self.exists = 0
        self.bytes_in = 0
        self.greeting = None
        self.closed = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(IMAPError("connection closed by server"))

    def _wake(self, value):
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(value)

    def data_received(self, data):
        self.bytes_in += len(data)
        buf = self.buf
        buf += data
        pos = self.pos
        n = len(buf)
        while pos < n:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            e = buf.find(b"\r\n", pos)
            if e < 0:
                break
            if e > pos and buf[e - 1] == 0x7D:                     # ...{n}
                i = buf.rfind(b"{", pos, e)
                if i >= 0:
                    try:
                        self.skip = int(bytes(buf[i + 1:e - 1]).rstrip(b"+"))
                        pos = e + 2
                        continue
                    except ValueError:
                        pass
            c = buf[pos]
            if c == 0x2A:                                           # '*'
                if buf[e - 7:e] == b" EXISTS":
                    self.exists = int(buf[pos + 2:e - 7])
                elif buf[e - 8:e] == b" EXPUNGE":
                    self.exists -= 1
                elif self.greeting is None:
                    self.greeting = bytes(buf[pos:e])
                    self._wake(b"*")
                elif self.lines is not None:
                    self.lines.append(bytes(buf[pos:e]))
            elif c == 0x2B:                                         # '+'
                self._wake((b"+", bytes(buf[pos:e])))
            elif self.tag is not None and buf.startswith(self.tag, pos):
                line = bytes(buf[pos + len(self.tag):e])
                self.tag = None
                self._wake((line[:3].rstrip(), line))
            pos = e + 2
        if pos >= len(buf):
            buf.clear()
            pos = 0
        elif pos > 1 << 16:
            del buf[:pos]
            pos = 0
        self.pos = pos


def _expire(fut, timeout):
    if not fut.done():
        fut.set_exception(IMAPError(f"no answer within {timeout}s"))


class Client:
    """One IMAP connection. Every command waits at most ``timeout`` seconds."""

    timeout = 120

    def __init__(self, proto):
        self.p = proto
        self.n = 0
        self.caps = set()
        self.idling = False
        self.last = b""

    @property
    def exists(self):
        return self.p.exists

    @property
    def bytes_in(self):
        return self.p.bytes_in

    @classmethod
    async def connect(cls, port, timeout=30):
        loop = asyncio.get_running_loop()
        proto = _Proto()
        proto.waiter = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: proto, "127.0.0.1", port), timeout)
        c = cls(proto)
        if proto.greeting is None:
            await asyncio.wait_for(proto.waiter, timeout)
        if not proto.greeting.startswith(b"* OK"):
            c.close()
            raise IMAPError(f"greeting: {proto.greeting[:200]!r}")
        c._caps_from(proto.greeting)
        return c

    def _caps_from(self, line):
        i = line.find(b"[CAPABILITY ")
        if i >= 0:
            self.caps = set(line[i + 12:line.index(b"]", i)].decode("ascii", "replace").upper().split())

    async def _wait(self):
        p = self.p
        if p.closed:
            raise IMAPError("connection closed by server")
        loop = asyncio.get_running_loop()
        fut = p.waiter = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, fut, self.timeout)
        try:
            return await fut
        finally:
            timer.cancel()

    async def command(self, text, literal=None, want_lines=False):
        """Send ``text`` (bytes, no tag/CRLF); return (b'OK'|b'NO'|b'BAD', untagged lines)."""
        p = self.p
        self.n += 1
        tag = b"a%d " % self.n
        p.tag = tag
        p.lines = [] if want_lines else None
        if literal is None:
            p.transport.write(tag + text + b"\r\n")
        else:
            p.transport.write(tag + text + b" {%d}\r\n" % len(literal))
            got = await self._wait()
            if got[0] != b"+":
                return got[0], []
            p.transport.write(literal + b"\r\n")
        while True:
            status, line = await self._wait()
            if status != b"+":
                break
        self.last = line
        if status == b"OK":
            self._caps_from(line)
        lines, p.lines = p.lines, None
        return status, lines or []

    async def start_idle(self):
        """Send IDLE and wait for the server's continuation."""
        p = self.p
        self.n += 1
        p.tag = b"a%d " % self.n
        p.transport.write(p.tag + b"IDLE\r\n")
        got = await self._wait()
        if got[0] != b"+":
            raise IMAPError(f"IDLE: {got[1][:100]!r}")
        self.idling = True

    async def login(self, user, password):
        q = lambda s: b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'  # noqa: E731
        status, _ = await self.command(b"LOGIN " + q(user) + b" " + q(password))
        if status != b"OK":
            raise IMAPError(f"LOGIN {user}: {status!r}")
        if b"[CAPABILITY " not in self.last:      # the server did not send the new list
            _, lines = await self.command(b"CAPABILITY", want_lines=True)
            for line in lines:
                if line.startswith(b"* CAPABILITY "):
                    self.caps = set(line[13:].decode("ascii", "replace").upper().split())

    def close(self):
        try:
            self.p.transport.abort()
        except Exception:   # noqa: BLE001
            pass

    async def logout(self):
        try:
            if not self.p.closed:
                await asyncio.wait_for(self.command(b"LOGOUT"), 5)
        except Exception:   # noqa: BLE001
            pass
        self.close()


# --- mixed load ----------------------------------------------------------------

MIX = ("select", "fetch_headers", "fetch_body_peek", "store_seen", "fetch_body", "store_flagged",
       "search_unseen", "fetch_headers", "fetch_body_peek", "store_unseen", "search_subject",
       "append", "store_deleted", "expunge")


def _percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


async def _mixed_client(port, user, password, appends, seed, start_evt, deadline_box, stats, timeout, ready):
    rng = random.Random(seed)
    c = await Client.connect(port, timeout)
    c.timeout = timeout
    try:
        await asyncio.wait_for(c.login(user, password), timeout)
        status, _ = await asyncio.wait_for(c.command(b"SELECT INBOX"), timeout)
        if status != b"OK":
            raise IMAPError(f"SELECT INBOX as {user}: {status!r}")
        ready[0] += 1
        await start_evt.wait()
        deadline = deadline_box[0]
        i = 0
        now = time.monotonic()
        while now < deadline:
            op = MIX[i % len(MIX)]
            i += 1
            n = max(c.exists, 1)
            if op == "select":
                cmd = b"SELECT INBOX"
            elif op == "fetch_headers":
                end = rng.randint(min(20, n), n)
                cmd = b"FETCH %d:%d " % (max(1, end - 19), end) + HEADER_FIELDS
            elif op == "fetch_body_peek":
                cmd = b"FETCH %d (UID RFC822.SIZE BODY.PEEK[])" % rng.randint(1, n)
            elif op == "fetch_body":
                cmd = b"FETCH %d (UID FLAGS BODY[])" % rng.randint(1, n)
            elif op == "store_seen":
                cmd = b"STORE %d +FLAGS (\\Seen)" % rng.randint(1, n)
            elif op == "store_unseen":
                cmd = b"STORE %d -FLAGS (\\Seen)" % rng.randint(1, n)
            elif op == "store_flagged":
                cmd = b"STORE %d %sFLAGS (\\Flagged)" % (rng.randint(1, n), rng.choice((b"+", b"-")))
            elif op == "search_unseen":
                cmd = b"SEARCH UNSEEN"
            elif op == "search_subject":
                cmd = b'SEARCH SUBJECT "%s"' % rng.choice(SEARCH_WORDS).encode()
            elif op == "append":
                cmd = b"APPEND INBOX"
            elif op == "store_deleted":
                cmd = b"STORE %d +FLAGS.SILENT (\\Deleted)" % rng.randint(1, n)
            else:
                cmd = b"EXPUNGE"
            t0 = time.monotonic()
            if op == "append":
                status, _ = await c.command(cmd, literal=appends[i % len(appends)])
            else:
                status, _ = await c.command(cmd)
            now = time.monotonic()
            if now <= deadline:
                s = stats.setdefault(op, {"ok": 0, "no": 0, "bad": 0, "lat": []})
                s["ok" if status == b"OK" else "no" if status == b"NO" else "bad"] += 1
                s["lat"].append(now - t0)
        stats.setdefault("_bytes", [0])[0] += c.bytes_in
    finally:
        await c.logout()


async def mixed_load(port, users, password, clients, seconds, appends, seed=1, timeout=60, probe=None):
    """``clients`` sessions (client i logs in as users[i % len(users)]) run the fixed
    MIX of commands in a loop for ``seconds``. Returns a dict of figures."""
    start_evt = asyncio.Event()
    deadline_box = [0.0]
    stats = {}
    ready = [0]
    tasks = [asyncio.ensure_future(_mixed_client(port, users[i % len(users)], password, appends,
                                                  f"{seed}:{i}", start_evt, deadline_box, stats, timeout, ready))
             for i in range(clients)]
    # every client logs in and selects before the clock starts (bounded)
    ready_deadline = time.monotonic() + timeout
    while time.monotonic() < ready_deadline:
        await asyncio.sleep(0.02)
        if ready[0] + sum(1 for t in tasks if t.done()) >= clients:
            break
    probe0 = probe() if probe else None
    cpu0 = time.process_time()
    t0 = time.monotonic()
    deadline_box[0] = t0 + seconds
    start_evt.set()
    probe1 = []

    async def at_deadline():
        await asyncio.sleep(seconds)
        probe1.append((time.process_time(), probe() if probe else None))
    marker = asyncio.ensure_future(at_deadline())
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds + 2 * timeout)
    if not marker.done():
        marker.cancel()
        probe1.append((time.process_time(), probe() if probe else None))
    elapsed = min(time.monotonic(), deadline_box[0]) - t0
    cpu = probe1[0][0] - cpu0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    lat = [x for k, s in stats.items() if not k.startswith("_") for x in s["lat"]]
    ops = len(lat)
    per_op = {k: {"ok": s["ok"], "no": s["no"], "bad": s["bad"],
                  "p50_ms": 1000 * _percentile(s["lat"], 0.5), "p99_ms": 1000 * _percentile(s["lat"], 0.99)}
              for k, s in sorted(stats.items()) if not k.startswith("_")}
    return {
        "ops": ops, "seconds": elapsed, "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
        "p50_ms": 1000 * (_percentile(lat, 0.5) or 0), "p99_ms": 1000 * (_percentile(lat, 0.99) or 0),
        "no": sum(s["no"] for s in per_op.values()), "bad": sum(s["bad"] for s in per_op.values()),
        "client_errors": errors, "generator_cpu_s": cpu,
        "generator_cpu_share": cpu / elapsed if elapsed > 0 else 0.0,
        "bytes_in": stats.get("_bytes", [0])[0], "per_op": per_op,
        "probe": (probe0, probe1[0][1]),
    }


# --- big mailbox (blocking socket: no event-loop cost in the timings) ----------

class BlockingClient:
    def __init__(self, port, timeout=600):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.n = 0
        greeting = self._recv_line()
        if not greeting.startswith(b"* OK"):
            raise IMAPError(f"greeting: {greeting[:200]!r}")

    def _recv_line(self):
        buf = bytearray()
        while not buf.endswith(b"\r\n"):
            chunk = self.s.recv(4096)
            if not chunk:
                raise IMAPError("connection closed")
            buf += chunk
        return bytes(buf)

    def command(self, text):
        """Send one command without literals; return (status, response bytes, seconds)."""
        self.n += 1
        tag = b"b%d " % self.n
        buf = bytearray()
        t0 = time.perf_counter()
        self.s.sendall(tag + text + b"\r\n")
        while True:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise IMAPError("connection closed")
            buf += chunk
            if buf.endswith(b"\r\n"):
                i = buf.rfind(b"\r\n", 0, len(buf) - 2)
                last = buf[i + 2:] if i >= 0 else buf
                if last.startswith(tag):
                    dt = time.perf_counter() - t0
                    return bytes(last[len(tag):len(tag) + 2]), bytes(buf), dt

    def login(self, user, password):
        status, data, _ = self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        if status != b"OK":
            raise IMAPError(f"LOGIN {user}: {data[-200:]!r}")

    def close(self):
        try:
            self.s.sendall(b"z LOGOUT\r\n")
            self.s.settimeout(5)
            self.s.recv(4096)
        except OSError:
            pass
        self.s.close()


def flag_counts(data):
    """{'\\Flagged \\Seen': n, ...} over a FETCH (FLAGS) answer, \\Recent left out
    (servers differ on it by design): lets a run check both servers saw the same flags."""
    counts = {}
    for m in re.finditer(rb"FLAGS \(([^)]*)\)", data):
        key = " ".join(sorted(f for f in m.group(1).decode("ascii", "replace").split() if f != "\\Recent"))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def big_mailbox(port, user, password, expect, timeout=600):
    """One session on the big mailbox: SELECT, UID FETCH 1:* (FLAGS), SEARCH UNSEEN.
    Returns {op: milliseconds} and counts to check the answers are whole."""
    c = BlockingClient(port, timeout)
    try:
        c.login(user, password)
        out = {}
        status, data, dt = c.command(b"SELECT INBOX")
        if status != b"OK":
            raise IMAPError(f"SELECT: {data[-300:]!r}")
        out["select_ms"] = dt * 1000
        exists = None
        for line in data.split(b"\r\n"):
            if line.endswith(b" EXISTS"):
                exists = int(line.split()[1])
        out["exists"] = exists
        status, data, dt = c.command(b"UID FETCH 1:* (FLAGS)")
        if status != b"OK":
            raise IMAPError(f"UID FETCH: {data[-300:]!r}")
        out["fetch_flags_ms"] = dt * 1000
        out["fetched"] = data.count(b" FETCH (")
        out["flags"] = flag_counts(data)
        status, data, dt = c.command(b"SEARCH UNSEEN")
        if status != b"OK":
            raise IMAPError(f"SEARCH UNSEEN: {data[-300:]!r}")
        out["search_unseen_ms"] = dt * 1000
        for line in data.split(b"\r\n"):
            if line.startswith(b"* SEARCH"):
                out["unseen"] = len(line.split()) - 2
        if expect and exists != expect:
            out["warning"] = f"SELECT reported {exists} messages, expected {expect}"
        return out
    finally:
        c.close()


# --- idle connections ------------------------------------------------------------

async def open_idle(port, users, password, count, concurrency=32, idle_cmd=True, timeout=120, limit=None):
    """Open ``count`` sessions (LOGIN, SELECT INBOX, then IDLE when the server has it),
    spread over ``users``. Returns (clients, seconds, errors). ``limit`` (seconds): the
    sessions still not open by then are given up (one error says how many) and the
    ones that did open are returned; without it all must open within 4 x ``timeout``."""
    sem = asyncio.Semaphore(concurrency)
    clients, errors = [], []

    async def one(i):
        async with sem:
            c = None
            try:
                c = await Client.connect(port, timeout)
                await asyncio.wait_for(c.login(users[i % len(users)], password), timeout)
                status, _ = await asyncio.wait_for(c.command(b"SELECT INBOX"), timeout)
                if status != b"OK":
                    raise IMAPError(f"SELECT: {status!r}")
                if idle_cmd and "IDLE" in c.caps:
                    await asyncio.wait_for(c.start_idle(), timeout)
                clients.append(c)
                c = None
            except Exception as e:   # noqa: BLE001
                errors.append(repr(e))
            finally:            # (also when cancelled at ``limit``)
                if c is not None:
                    c.close()

    t0 = time.monotonic()
    if limit is None:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout * 4)
        return clients, time.monotonic() - t0, errors
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    _done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        errors.append(f"{len(pending)} sessions not open after {limit:g}s")
    return clients, time.monotonic() - t0, errors


async def close_all(clients):
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
