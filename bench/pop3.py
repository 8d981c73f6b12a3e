"""POP3: ``--clients`` sessions at once, each on its own prepared mailbox of
``--messages`` messages: USER/PASS, UIDL, RETR every message, DELE every
message, QUIT -> jdmail vs a private Dovecot (pop3). Before every run each
server is stopped, its mailboxes are put back (hard links of one generated
template, the servers' own index files removed) and it is started again, so
every run starts alike. A run counts only when every client retrieved every
message with its size and every mailbox is empty after QUIT.
"""

import asyncio
import os
import shutil
import time

from bench import harness, maildata, servers
from bench.imap import password_hash
from bench.measure import Meter, percentile, self_cpu_seconds

DOMAIN = "example.org"
PASSWORD = "bench-Passw0rd"
SERVERS = ("jdmail", "dovecot")


def add_options(p):
    p.add_argument("--clients", type=int, default=20, help="concurrent POP3 sessions, one mailbox each (default 20)")
    p.add_argument("--messages", type=int, default=200, help="messages in each mailbox (default 200)")
    p.add_argument("--servers", default="jdmail,dovecot", help="comma-separated: jdmail, dovecot (default both)")
    p.add_argument("--hash", default="SHA512-CRYPT", choices=("BLF-CRYPT", "SHA512-CRYPT", "PLAIN"),
                   help="password scheme on both servers (default SHA512-CRYPT)")


def smoke(args):
    args.clients, args.messages, args.rounds, args.servers = 3, 20, 1, "jdmail"


def check_args(args, error):
    for name in ("clients", "messages"):
        if getattr(args, name) < 1:
            error(f"--{name} must be at least 1")


def packages(args):
    return ["dovecot-pop3d"] if "dovecot" in args.servers else []


class POP3Error(Exception):
    pass


class Session:
    """A minimal asyncio POP3 client that times every command."""

    def __init__(self, reader, writer, latencies):
        self.r, self.w, self.lat = reader, writer, latencies

    @classmethod
    async def connect(cls, port, latencies):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        s = cls(r, w, latencies)
        line = await r.readline()
        if not line.startswith(b"+OK"):
            raise POP3Error(f"greeting {line!r}")
        return s

    async def cmd(self, text, multi=False):
        t0 = time.monotonic()
        self.w.write(text.encode() + b"\r\n")
        line = await self.r.readline()
        if not line.startswith(b"+OK"):
            raise POP3Error(f"{text.split()[0]}: {line!r}")
        body = b""
        if multi:
            body = await self.r.readuntil(b"\r\n.\r\n") if not line.endswith(b"\r\n.\r\n") else b""
        self.lat.append(time.monotonic() - t0)
        return line, body


async def session(port, user, expect, latencies):
    """One client's whole session; returns (messages retrieved, bytes, seconds)."""
    t0 = time.monotonic()
    s = await Session.connect(port, latencies)
    await s.cmd(f"USER {user}")
    await s.cmd(f"PASS {PASSWORD}")
    _, uidl = await s.cmd("UIDL", multi=True)
    ids = [int(x.split()[0]) for x in uidl.split(b"\r\n")[:-2] if x and x != b"."]
    if len(ids) != expect:
        raise POP3Error(f"{user}: UIDL lists {len(ids)} messages, {expect} expected")
    got = 0
    for i in ids:
        _, body = await s.cmd(f"RETR {i}", multi=True)
        got += len(body)
    for i in ids:
        await s.cmd(f"DELE {i}")
    await s.cmd("QUIT")
    s.w.close()
    return len(ids), got, time.monotonic() - t0


async def load(port, users, expect):
    latencies = []
    results = await asyncio.gather(*(session(port, u, expect, latencies) for u in users), return_exceptions=True)
    return results, latencies


def prepare(t, users, template):
    """Each user's Maildir = hard links of the template (no index files of either server)."""
    for u in users:
        md = t.maildir(u)
        shutil.rmtree(os.path.dirname(md), ignore_errors=True)
        maildata.link_tree(template, md)
    t.prepare_mail()


def one_run(t, args, users, template, nofile):
    t.stop()
    prepare(t, users, template)
    t.start(nofile)
    meter = Meter([t.pid()]).start()
    gen0 = self_cpu_seconds()
    results, latencies = asyncio.run(load(t.ports["pop3"], users, args.messages))
    gen = self_cpu_seconds() - gen0
    meter.stop()
    errors = [f"{u}: {r!r}" for u, r in zip(users, results) if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    total = sum(r[0] for r in ok)
    left = {u: harness.count_files(t.maildir(u)) for u in users}
    if not errors and any(left.values()):
        errors.append("mailboxes not empty after DELE + QUIT: "
                      + ", ".join(f"{u} {n}" for u, n in left.items() if n))
    f = meter.figures(total, gen)
    lat = [x * 1000 for x in latencies]
    f.update({"messages": total, "bytes": sum(r[1] for r in ok), "msgs_per_s": total / meter.wall,
              "sessions_per_s": len(ok) / meter.wall, "p50_ms": percentile(lat, 0.5),
              "p99_ms": percentile(lat, 0.99), "commands": len(lat),
              "session_p50_s": percentile([r[2] for r in ok], 0.5),
              "generator_share": gen / meter.wall, "errors": errors})
    return f


def run(args, tmp):
    nofile = servers.raise_nofile(4096 + 4 * args.clients)
    users = [f"pop{i}@{DOMAIN}" for i in range(1, args.clients + 1)]
    hashed = password_hash(args.hash, PASSWORD)
    targets = []
    for name in args.servers:
        root = os.path.join(tmp, name)
        os.makedirs(root)
        if name == "jdmail":
            targets.append(servers.Jdmail(root, max_connections=args.clients + 100, settings=args.jdmail_settings,
                                          listeners=("pop3",)))
        else:
            targets.append(servers.Dovecot(root, max_connections=args.clients + 100, protocols=("pop3",)))
    status, running = {}, []
    title = (f"POP3: {args.clients} clients, each USER/PASS, UIDL, RETR x {args.messages}, DELE x {args.messages}, "
             f"QUIT; {args.rounds} round(s), medians")
    result = harness.result_skeleton("pop3", title, {
        "clients": args.clients, "messages": args.messages, "rounds": args.rounds, "hash": args.hash,
        "servers": args.servers, "smoke": args.smoke, "jdmail_settings": args.jdmail_settings}, targets, status)
    try:
        uid, gid, _ = servers.mail_owner()
        template = os.path.join(tmp, "template", "Maildir")
        w = maildata.MaildirWriter(maildata.MessageFactory(args.seed), uid=uid, gid=gid, seed=args.seed)
        w.fill(template, users[0], args.messages, big_share=0.02)
        if os.geteuid() == 0:
            maildata.chown_tree(os.path.dirname(template), uid, gid)
        for t in targets:
            t.setup([(u, hashed) for u in users])
        harness.start_all(targets, nofile, status, running)
        details = result["details"] = harness.run_rounds(
            running, args.rounds, lambda t: one_run(t, args, users, template, nofile),
            lambda f: (f"{f['messages']} messages retrieved and deleted, {f['msgs_per_s']:.0f} msg/s, "
                       f"p50 {f['p50_ms'] or 0:.2f} ms p99 {f['p99_ms'] or 0:.1f} ms"))
        spec = [("pop3_msgs_per_s", "messages/s retrieved and deleted", "msg/s", "higher", "msgs_per_s", 1),
                ("pop3_sessions_per_s", "  whole sessions/s", "sess/s", "higher", "sessions_per_s", 1),
                ("pop3_session_p50_s", "  one session, p50", "s", "lower", "session_p50_s", 1)]
        spec += [(k, label.replace("latency", "command latency"), *rest)
                 for k, label, *rest in harness.common_spec("pop3")]
        result["rows"] = harness.make_rows(details, spec)
        result["exit"] = harness.exit_code(details, running, targets)
        return result
    finally:
        for t in targets:
            t.stop()
