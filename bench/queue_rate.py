"""Outbound queue throughput: N messages queued in a sending jdmail, then delivered via
the loopback DNS fixture to a local sink; prints messages/s.

    python bench/queue_rate.py [N] [--sink jdmail|smtp-sink] [--reuse SECONDS]

``--sink jdmail`` (default): a second, receiving jdmail (fsync, Maildir).
``--sink smtp-sink``: Postfix's smtp-sink, which stores nothing, so the sending side
alone is measured. ``--reuse``: [queue] connection_reuse_time (default 2; 0 = a new
connection per message).

The messages are queued while the MX address refuses connections, then the DNS is fixed
and ``jdmailctl queue flush`` starts the clock; it stops when the sender's queue is
empty (and, with the jdmail sink, the receiver has every message).
"""

import argparse
import os
import smtplib
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e import unverified_context  # noqa: E402
from tests.fixtures.dns import DNSServer  # noqa: E402
from tests.fixtures.server import JdmailServer  # noqa: E402
from tests.fixtures.smtp_sink import SMTPSink  # noqa: E402


def server(users, domains, **kw):
    s = JdmailServer(**kw)
    s.write_ini()
    for d in domains:
        s.ctl("domain", "add", d)
    for a, p in users:
        s.ctl("user", "add", a, "--password", p)
    s.start()
    return s


def queued(sender):
    db = sqlite3.connect(os.path.join(sender.datadir, "queue", "queue.sqlite"), timeout=10)
    try:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        db.close()


def main(n, sink_kind, reuse):
    receiver = sink = None
    if sink_kind == "jdmail":
        receiver = server([("friend@example.net", "pw")], ["example.net"])
        port = receiver.ports["smtp"]
    else:
        sink = SMTPSink("127.0.0.1", dump=False)
        port = sink.start()
    dns = DNSServer({"example.net": {"MX": [(10, "mx.example.net")]}, "mx.example.net": {"A": ["127.0.0.2"]}})
    dns.start()
    sender = server([("bob@example.org", "secret")], ["example.org"], overrides={
        "dns": {"servers": dns.address},
        "queue": {"smtp_port": str(port), "scan_interval": "100ms", "min_backoff": "1h",
                  "max_backoff": "1h", "connection_reuse_time": f"{reuse}s"}})
    try:
        c = smtplib.SMTP("127.0.0.1", sender.ports["submission"], timeout=30)
        c.ehlo("bench")
        c.starttls(context=unverified_context())
        c.ehlo("bench")
        c.login("bob@example.org", "secret")
        body = b"Subject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"
        for i in range(n):
            c.sendmail("bob@example.org", ["friend@example.net"], body)
        c.quit()
        dns.update({"example.net": {"MX": [(10, "mx.example.net")]}, "mx.example.net": {"A": ["127.0.0.1"]}})
        start = time.monotonic()
        sender.ctl("queue", "flush")
        while queued(sender) or (receiver and len(receiver.messages("friend@example.net")) < n):
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        print(f"{n} messages delivered from the queue to {sink_kind} (connection_reuse_time={reuse}s) "
              f"in {elapsed:.2f}s: {n / elapsed:.0f} messages/s")
    finally:
        sender.stop()
        if receiver:
            receiver.stop()
        if sink:
            sink.cleanup()
        dns.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=2000)
    ap.add_argument("--sink", choices=("jdmail", "smtp-sink"), default="jdmail")
    ap.add_argument("--reuse", type=float, default=2.0)
    a = ap.parse_args()
    main(a.n, a.sink, a.reuse)
