"""Queue: outbound delivery rate from the server's queue to a local smtp-sink ->
jdmail vs a private Postfix, both relaying everything to ``[127.0.0.1]:PORT``
(jdmail: ``[routing] relayhost``; Postfix: ``relayhost``) with the same
concurrency limit.

Each run: ``--messages`` messages of ``--size`` bytes are sent to the
server's SMTP port by smtp-source (to ``friend@example.net``, relayed for
127.0.0.0/8) while nothing listens on the sink's port, so every delivery
attempt is refused and the messages wait in the queue. Then smtp-sink starts
on that port, the queue is flushed (``jdmailctl queue flush`` / ``postqueue
-f``) and the clock runs until the queue is empty; the run counts when
smtp-sink's counter equals the number of messages. No per-message latency:
neither server reports when each message left.
"""

import os
import sqlite3
import subprocess
import sys
import time

from bench import harness, servers
from bench.measure import Meter
from bench.postfix import Postfix, SmtpSink, wait_until
from bench.smtp import parse_size

SENDER = "sender@example.org"
RCPT = "friend@example.net"
SERVERS = ("jdmail", "postfix")


def add_options(p):
    p.add_argument("--messages", type=int, default=5000, help="messages queued per run (default 5000)")
    p.add_argument("--size", type=parse_size, default=parse_size("4K"), help="message payload (default 4K)")
    p.add_argument("--concurrency", type=int, default=20,
                   help="outbound SMTP sessions at once to the one destination, on both servers (default 20: "
                        "Postfix's default_destination_concurrency_limit)")
    p.add_argument("--servers", default="jdmail,postfix", help="comma-separated: jdmail, postfix (default both)")


def smoke(args):
    args.messages, args.rounds, args.servers = 30, 1, "jdmail"


def check_args(args, error):
    for name in ("messages", "concurrency"):
        if getattr(args, name) < 1:
            error(f"--{name} must be at least 1")


def packages(args):
    return ["postfix"]


class JdmailQueue(servers.Jdmail):
    """jdmail with its SMTP listener open to relaying from loopback and its queue
    pointed at the sink."""

    def queued(self):
        db = sqlite3.connect(os.path.join(self.datadir, "queue", "queue.sqlite"), timeout=10)
        try:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()

    def flush(self):
        p = subprocess.run([sys.executable, "-m", "jdmail.admin.ctl", "--config", self.ini, "queue", "flush"],
                           env=servers._jdmail_env(), capture_output=True, text=True, cwd=self.root)
        if p.returncode != 0:
            raise servers.ServerError(f"jdmailctl queue flush failed: {p.stderr.strip()[-500:]}")


def inject(t, args):
    cmd = ["smtp-source", "-4", "-s", "10", "-m", str(args.messages), "-l", str(args.size), "-f", SENDER,
           "-t", RCPT, "-M", "source.bench.test", "-d", f"127.0.0.1:{t.port}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or "fatal" in out or "warning" in out:
        raise servers.ServerError(f"smtp-source exited {p.returncode}: {out[-300:]}")


def deferred(t):
    if isinstance(t, Postfix):
        n = 0
        for _dirpath, _dirs, files in os.walk(os.path.join(t.queue, "deferred")):
            n += len(files)
        return n
    return t.queued()


def one_run(t, sink, args, nofile):
    t.restart(nofile)
    inject(t, args)
    # every message has met the refusing port once and waits for its retry
    if not wait_until(lambda: deferred(t) >= args.messages, 120):
        raise servers.ServerError(f"only {deferred(t)} of {args.messages} messages are waiting in the queue")
    time.sleep(2.0)
    sink.start(nofile)
    # the clock starts when the flush request is in (jdmailctl is a Python process
    # of its own: its start-up is not the server's time)
    t.flush()
    meter = Meter([t.pid()]).start()
    left = wait_until(lambda: t.queued() == 0, max(300, args.messages / 5), interval=0.1)
    wait_until(lambda: sink.received() >= args.messages, 10)
    meter.stop()
    received = sink.received()
    sink.stop()
    errors = []
    if not left:
        errors.append(f"{t.queued()} messages still queued after {meter.wall:.0f}s")
    if received != args.messages:
        errors.append(f"smtp-sink received {received} messages, {args.messages} were queued")
    f = meter.figures(args.messages)
    f.update({"messages": args.messages, "received": received, "msgs_per_s": args.messages / meter.wall,
              "p50_ms": None, "p99_ms": None, "generator_share": 0.0, "errors": errors})
    return f


def run(args, tmp):
    nofile = servers.raise_nofile(4096)
    sink = SmtpSink(os.path.join(tmp, "sink"))
    sink.setup()
    relay = f"[127.0.0.1]:{sink.port}"
    targets = []
    for name in args.servers:
        root = os.path.join(tmp, name)
        os.makedirs(root)
        if name == "jdmail":
            settings = {"smtp": {"mynetworks": "127.0.0.0/8"}, "routing": {"relayhost": relay},
                        "queue": {"scan_interval": "100ms", "min_backoff": "1h", "max_backoff": "1h",
                                  "concurrency": str(args.concurrency), "per_destination": str(args.concurrency)}}
            for section, kv in args.jdmail_settings.items():
                settings.setdefault(section, {}).update(kv)
            targets.append(JdmailQueue(root, max_connections=200, settings=settings, listeners=("smtp",)))
        else:
            targets.append(Postfix(root, relayhost=relay, settings={
                "default_destination_concurrency_limit": args.concurrency,
                "minimal_backoff_time": "1h", "maximal_backoff_time": "1h", "queue_run_delay": "1h"}))
    status, running = {}, []
    size = f"{args.size // 1024} KB" if args.size % 1024 == 0 else f"{args.size} B"
    title = (f"Queue: {args.messages:,} queued messages of {size} delivered to smtp-sink, "
             f"{args.concurrency} sessions at most; {args.rounds} round(s), medians")
    result = harness.result_skeleton("queue", title, {
        "messages": args.messages, "size": args.size, "concurrency": args.concurrency, "rounds": args.rounds,
        "servers": args.servers, "smoke": args.smoke, "jdmail_settings": args.jdmail_settings}, targets, status)
    try:
        for t in targets:
            t.setup([(SENDER, "{PLAIN}x")] if t.name == "jdmail" else ())
        harness.start_all(targets, nofile, status, running)
        details = result["details"] = harness.run_rounds(
            running, args.rounds, lambda t: one_run(t, sink, args, nofile),
            lambda f: (f"{f['received']} of {f['messages']} delivered in {f['wall_s']:.1f}s, "
                       f"{f['msgs_per_s']:.0f} msg/s"),
            after_failure=sink.stop)
        spec = [("queue_msgs_per_s", "messages/s from the queue to smtp-sink", "msg/s", "higher", "msgs_per_s", 1)]
        spec += [r for r in harness.common_spec("queue") if "latency" not in r[1] and "generator" not in r[1]]
        result["rows"] = harness.make_rows(details, spec)
        result["exit"] = harness.exit_code(details, running, targets)
        return result
    finally:
        sink.stop()
        for t in targets:
            t.stop()
