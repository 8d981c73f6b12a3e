"""Outbound queue throughput: N messages queued in a sending jdmail, then delivered to a
receiving jdmail (the local sink) via the loopback DNS fixture; prints messages/s.

    python bench/queue_rate.py [N]      (default 2000)

The messages are queued while the MX address refuses connections, then the DNS is fixed
and ``jdmailctl queue flush`` starts the clock; it stops when the queue is empty.
"""

import os
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e import unverified_context  # noqa: E402
from tests.fixtures.dns import DNSServer  # noqa: E402
from tests.fixtures.server import JdmailServer  # noqa: E402


def server(users, domains, **kw):
    s = JdmailServer(**kw)
    s.write_ini()
    for d in domains:
        s.ctl("domain", "add", d)
    for a, p in users:
        s.ctl("user", "add", a, "--password", p)
    s.start()
    return s


def main(n):
    receiver = server([("friend@example.net", "pw")], ["example.net"])
    dns = DNSServer({"example.net": {"MX": [(10, "mx.example.net")]}, "mx.example.net": {"A": ["127.0.0.2"]}})
    dns.start()
    sender = server([("bob@example.org", "secret")], ["example.org"], overrides={
        "dns": {"servers": dns.address},
        "queue": {"smtp_port": str(receiver.ports["smtp"]), "scan_interval": "100ms",
                  "min_backoff": "1h", "max_backoff": "1h"}})
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
        while len(receiver.messages("friend@example.net")) < n:
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        print(f"{n} messages delivered from the queue in {elapsed:.2f}s: {n / elapsed:.0f} messages/s")
    finally:
        sender.stop()
        receiver.stop()
        dns.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
