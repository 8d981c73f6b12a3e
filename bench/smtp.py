"""SMTP inbound: Postfix's ``smtp-source`` sends ``--messages`` messages of
``--size`` bytes over ``--sessions`` concurrent sessions to local users; jdmail
and a private Postfix (virtual(8) into Maildir) each store them durably, and
smtp-sink (stores nothing) gives the ceiling of the load generator and the
loopback. The clock runs from the first connection until every message is a
file in its Maildir (Postfix answers 250 once the message is in its queue and
delivers afterwards; jdmail answers 250 once it is in the Maildir), and the run
only counts when every Maildir holds exactly what was sent.

Latency: smtp-source reports none, so one probe session runs beside it
(Python smtplib, a new connection per message like smtp-source, a 50 ms pause
between messages): connect to the 250 after the final dot.
"""

import os
import re
import shutil
import smtplib
import subprocess
import threading
import time

from bench import harness, servers
from bench.measure import Meter, children_cpu_seconds, percentile, say
from bench.postfix import Postfix, SmtpSink

DOMAIN = "example.org"
SENDER = "sender@bench.test"
PROBE_USER = f"probe@{DOMAIN}"
PASSWORD = "bench-Passw0rd"
SERVERS = ("jdmail", "postfix", "smtp-sink")


def parse_size(text):
    """'4K', '100K', '1M' or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 4K, 100K)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def add_options(p):
    p.add_argument("--messages", type=int, default=10000, help="messages per run (default 10000)")
    p.add_argument("--size", type=parse_size, default=parse_size("4K"),
                   help="message payload size: bytes or 4K, 100K (default 4K)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (default 20)")
    p.add_argument("--users", type=int, default=5,
                   help="local recipients; one smtp-source process per user shares the sessions (default 5)")
    p.add_argument("--keep-connection", action="store_true",
                   help="send every session's messages over one connection (smtp-source -d); "
                        "default: a connection per message, as mail from the Internet comes")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {', '.join(SERVERS)}")


def smoke(args):
    args.messages, args.sessions, args.users, args.rounds, args.servers = 40, 4, 2, 1, "jdmail"


class Probe(threading.Thread):
    """One extra session timing whole transactions (connect .. 250 after the dot)."""

    def __init__(self, port, rcpt, size):
        super().__init__(daemon=True)
        self.port, self.rcpt = port, rcpt
        self.body = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: probe\r\n\r\n".encode()
                     + (b"x" * 70 + b"\r\n") * max(1, size // 72))
        self.stop_evt = threading.Event()
        self.latencies, self.errors = [], []

    def run(self):
        while not self.stop_evt.is_set():
            t0 = time.monotonic()
            try:
                c = smtplib.SMTP("127.0.0.1", self.port, local_hostname="probe.bench.test", timeout=60)
                c.sendmail(SENDER, [self.rcpt], self.body)
                self.latencies.append(time.monotonic() - t0)
                c.quit()
            except (OSError, smtplib.SMTPException) as e:
                self.errors.append(repr(e))
            self.stop_evt.wait(0.05)


def make_targets(args, tmp, users):
    out = []
    for name in args.servers:
        root = os.path.join(tmp, name)
        os.makedirs(root)
        if name == "jdmail":
            out.append(servers.Jdmail(root, max_connections=args.sessions + 100, settings=args.jdmail_settings,
                                      listeners=("smtp",)))
        elif name == "postfix":
            out.append(Postfix(root, domains=[DOMAIN]))
        else:
            out.append(SmtpSink(root))
    return out


def clear_mail(t, users):
    for u in users:
        maildir = t.maildir(u)
        shutil.rmtree(os.path.dirname(maildir), ignore_errors=True)


def delivered(t, users):
    return {u: harness.count_files(t.maildir(u)) for u in users}


def _wait_count(count, want, timeout):
    deadline = time.monotonic() + timeout
    n = count()
    while n < want and time.monotonic() < deadline:
        time.sleep(0.1)
        n = count()
    return n


def one_run(t, args, users, nofile):
    """Send the messages to ``t`` (freshly restarted with empty Maildirs); return the figures."""
    stores = hasattr(t, "maildir")
    if stores:
        t.stop()
        clear_mail(t, users + [PROBE_USER])
    t.restart(nofile)
    per_user = [args.messages // len(users) + (1 if i < args.messages % len(users) else 0) for i in range(len(users))]
    sessions = [max(1, args.sessions // len(users) + (1 if i < args.sessions % len(users) else 0))
                for i in range(len(users))]
    probe = Probe(t.port, PROBE_USER, args.size)
    meter = Meter([t.pid()]).start()
    gen0 = children_cpu_seconds()
    procs = []
    for u, m, s in zip(users, per_user, sessions):
        if not m:
            continue
        cmd = ["smtp-source", "-4", "-s", str(s), "-m", str(m), "-l", str(args.size), "-f", SENDER, "-t", u,
               "-M", "source.bench.test", "-S", "bench"] + (["-d"] if args.keep_connection else []) + \
              [f"127.0.0.1:{t.port}"]
        procs.append((u, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT)))
    probe.start()
    errors = []
    for u, p in procs:
        out = p.communicate()[0].decode(errors="replace").strip()
        if p.returncode != 0 or "fatal" in out or "warning" in out:
            errors.append(f"smtp-source to {u} exited {p.returncode}: {out[-300:]}")
    accepted_s = time.monotonic() - meter.t0
    probe.stop_evt.set()
    probe.join()
    gen_cpu = children_cpu_seconds() - gen0
    want = dict(zip(users, per_user))
    want[PROBE_USER] = len(probe.latencies)
    got = {}
    if stores:
        deadline = time.monotonic() + max(120, args.messages / 20)
        while time.monotonic() < deadline:
            got = delivered(t, list(want))
            if all(got[u] >= n for u, n in want.items()):
                break
            time.sleep(0.2)
    else:       # smtp-sink: its own counter of messages received
        got = {"smtp-sink": _wait_count(t.received, sum(want.values()), 10)}
    meter.stop()
    total = sum(want.values())
    figures = meter.figures(total, gen_cpu)
    if not stores and got["smtp-sink"] != total:
        errors.append(f"smtp-sink received {got['smtp-sink']} messages, {total} were sent")
    if stores and got != want:
        errors.append(f"Maildirs hold {sum(got.values())} messages, {total} were accepted: "
                      + ", ".join(f"{u} {got.get(u)}/{n}" for u, n in want.items() if got.get(u) != n))
    lat = [x * 1000 for x in probe.latencies]
    figures.update({
        "messages": total, "accepted_s": accepted_s,
        "accepted_per_s": total / accepted_s if accepted_s else None,
        "msgs_per_s": total / meter.wall if meter.wall else None,
        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), "probe_messages": len(lat),
        "probe_errors": probe.errors[:5], "errors": errors,
        "generator_share": (gen_cpu + 0.0) / meter.wall if meter.wall else None,
        "delivered": got,
    })
    if probe.errors:
        errors.append(f"probe: {len(probe.errors)} transactions failed, e.g. {probe.errors[0]}")
    return figures


def run(args, tmp):
    nofile = servers.raise_nofile(4096 + 4 * args.sessions)
    users = [f"user{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    hashed = "{PLAIN}" + PASSWORD
    targets = make_targets(args, tmp, users)
    status, running = {}, []
    size = f"{args.size // 1024} KB" if args.size % 1024 == 0 else f"{args.size} B"
    title = (f"SMTP inbound: {args.messages:,} messages of {size}, {args.sessions} sessions "
             f"({'one connection per session' if args.keep_connection else 'a connection per message'}), "
             f"{args.users} users, {args.rounds} round(s), medians")
    result = harness.result_skeleton("smtp", title, {
        "messages": args.messages, "size": args.size, "sessions": args.sessions, "users": args.users,
        "keep_connection": args.keep_connection, "rounds": args.rounds, "servers": args.servers,
        "smoke": args.smoke, "jdmail_settings": args.jdmail_settings}, targets, status)
    try:
        for t in targets:
            try:
                if isinstance(t, servers.Jdmail):
                    t.setup([(a, hashed) for a in users + [PROBE_USER]])
                else:
                    t.setup(users + [PROBE_USER])
            except servers.ServerError as e:
                status[t.name] = {"status": f"setup failed: {str(e).splitlines()[0]}", "log": str(e)[-3000:]}
                say(f"{t.label}: {e}")
        harness.start_all([t for t in targets if t.name not in status], nofile, status, running)
        details = result["details"] = harness.run_rounds(
            running, args.rounds, lambda t: one_run(t, args, users, nofile),
            lambda f: (f"{f['messages']} messages, {f['msgs_per_s']:.0f} msg/s stored "
                       f"({f['accepted_per_s']:.0f} msg/s accepted), probe p50 {f['p50_ms'] or 0:.1f} ms "
                       f"p99 {f['p99_ms'] or 0:.1f} ms"))
        spec = [("smtp_msgs_per_s", "messages/s, sent until all stored", "msg/s", "higher", "msgs_per_s", 1),
                ("smtp_accepted_per_s", "  messages/s accepted (smtp-source done)", "msg/s", "higher",
                 "accepted_per_s", 1)] + harness.common_spec("smtp")
        result["rows"] = harness.make_rows(details, spec)
        result["exit"] = harness.exit_code(details, running, targets)
        return result
    finally:
        for t in targets:
            t.stop()


def packages(args):
    return ["postfix"]      # smtp-source and smtp-sink, even for jdmail alone
