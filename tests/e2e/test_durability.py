"""Crash safety: SIGKILL jdmail while many clients send. Every message that got
250 after its final dot is in the Maildir, whole; nothing partial is ever
visible; a restart on the same data directory cleans the spool and goes on."""

import email
import email.policy
import hashlib
import os
import poplib
import re
import smtplib
import socket
import ssl
import threading
import time

from twisted.trial import unittest

from tests.fixtures.server import running_server

USER = "bob@example.org"
THREADS = 16
RUN_SECONDS = 2.0
_DOTS = ["..", ".", ". leading dot", ".\tdot tab", "..double"]


def make_message(thread, seq, nonce):
    """A message whose last body line checks the rest: 'Checksum: <mid> <sha256>'."""
    mid = f"<t{thread}.s{seq}.{nonce}@durability.test>"
    lines = [f"line {i} of message {thread}/{seq} " + "x" * ((thread * 31 + seq * 17 + i) % 90)
             for i in range(20 + (thread * 7 + seq * 13) % 150)]
    for k, dot in enumerate(_DOTS):           # '.'-leading lines, dot-stuffed on the wire
        lines.insert((seq + k * 11) % len(lines), dot)
    body = "\r\n".join(lines)
    digest = hashlib.sha256(f"{mid}\r\n{body}".encode()).hexdigest()
    head = (f"From: sender{thread}@elsewhere.test\r\nTo: {USER}\r\nMessage-ID: {mid}\r\n"
            f"Subject: durability {thread}/{seq}\r\nX-Seq: {thread} {seq}\r\n")
    return mid, (head + "\r\n" + body + f"\r\nChecksum: {mid} {digest}\r\n").encode()


def check_file(path):
    """(Message-ID, problem or None) for one stored file."""
    with open(path, "rb") as f:
        data = f.read()
    m = re.search(r",S=(\d+)", os.path.basename(path))
    if m and int(m.group(1)) != len(data):
        return None, f"size {len(data)} but the name says {m.group(1)}"
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.defects:
        return None, f"parse defects {msg.defects}"
    mid = msg["Message-ID"]
    if mid is None:
        return None, "no Message-ID"
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return mid, "no header/body separator"
    if not body.endswith(b"\r\n"):
        return mid, "body does not end with CRLF"
    lines = body[:-2].split(b"\r\n")
    last = lines[-1].decode("ascii", "replace")
    m = re.fullmatch(r"Checksum: (\S+) ([0-9a-f]{64})", last)
    if not m or m.group(1) != mid:
        return mid, f"bad checksum line {last[:80]!r}"
    expected = hashlib.sha256(f"{mid}\r\n".encode() + b"\r\n".join(lines[:-1])).hexdigest()
    if expected != m.group(2):
        return mid, "checksum mismatch"
    return mid, None


class Sender(threading.Thread):
    """Sends messages on one connection until the server goes away; records each 250."""

    def __init__(self, port, number, nonce, acked):
        super().__init__(daemon=True)
        self.port, self.number, self.nonce, self.acked = port, number, nonce, acked
        self.sent = 0
        self.errors = []

    def run(self):
        seq = 0
        try:
            client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
            client.ehlo(f"sender{self.number}.test")
            while True:
                seq += 1
                mid, data = make_message(self.number, seq, self.nonce)
                code, _ = client.mail(f"sender{self.number}@elsewhere.test")
                if code != 250:
                    self.errors.append(f"MAIL {code}")
                    return
                code, _ = client.rcpt(USER)
                if code != 250:
                    self.errors.append(f"RCPT {code}")
                    return
                code, text = client.data(data)      # the reply to the final dot
                if code == 250:
                    self.acked.append(mid)
                    self.sent += 1
                else:
                    self.errors.append(f"DATA {code} {text!r}")
                    return
        except (OSError, smtplib.SMTPException):
            return      # the server was killed: whatever was not acknowledged may be lost


class DurabilityTests(unittest.TestCase):

    def test_kill_while_sending(self):
        server = running_server(self, overrides={"smtp": {"max_connections_per_ip": "100"}})
        spool = os.path.join(server.datadir, "spool", "incoming")
        maildir = server.maildir(USER)
        nonce = os.urandom(4).hex()
        acked = []
        senders = [Sender(server.ports["smtp"], n, nonce, acked) for n in range(THREADS)]

        # One client stops half way through DATA: a partial spool file, never acknowledged.
        partial = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10)
        self.addCleanup(partial.close)
        reader = partial.makefile("rb")
        self.assertTrue(reader.readline().startswith(b"220 "))
        partial.sendall(b"EHLO partial.test\r\nMAIL FROM:<p@elsewhere.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        replies = []
        while not replies or not replies[-1].startswith(b"354"):
            line = reader.readline()
            self.assertTrue(line, replies)
            replies.append(line)
        partial.sendall(b"Message-ID: <partial@durability.test>\r\nSubject: never finished\r\n\r\n"
                        + b"half a message\r\n" * 2000)

        for s in senders:
            s.start()
        time.sleep(RUN_SECONDS)
        leftover_before = os.listdir(spool)
        server.kill()
        for s in senders:
            s.join(30)
            self.assertFalse(s.is_alive())

        errors = [e for s in senders for e in s.errors]
        self.assertEqual(errors, [])
        self.assertGreater(len(acked), 2 * THREADS, "too few messages acknowledged to mean anything")
        self.assertEqual(len(set(acked)), len(acked))
        self.assertTrue(leftover_before, "the half-sent message should be in the spool")

        # Every file visible in new/ and cur/ is a whole message; every 250 is one of them.
        stored = {}
        for path in server.messages(USER):
            mid, problem = check_file(path)
            self.assertIsNone(problem, f"{path}: {problem}")
            self.assertNotIn(mid, stored, f"{mid} stored twice")
            stored[mid] = path
        missing = [mid for mid in acked if mid not in stored]
        self.assertEqual(missing, [], f"{len(missing)} acknowledged messages lost")
        self.assertNotIn("<partial@durability.test>", stored)
        unacknowledged = set(stored) - set(acked)
        # At most one per connection can be on disk without its 250 having arrived.
        self.assertLessEqual(len(unacknowledged), THREADS)

        # Restart on the same data directory.
        server.start()
        self.assertEqual(os.listdir(spool), [])
        self.assertRegex(server.read_log(), r"spool: removed [1-9]\d* unacknowledged partial message")
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
            mid, data = make_message(99, 1, nonce)
            client.ehlo("after.test")
            client.mail("after@elsewhere.test")
            client.rcpt(USER)
            code, text = client.data(data)
            self.assertEqual(code, 250, text)
        after = {}
        for path in server.messages(USER):
            got, problem = check_file(path)
            self.assertIsNone(problem, f"{path}: {problem}")
            after[got] = path
        self.assertEqual(set(after), set(stored) | {mid})

        # What POP3 shows is exactly new/ + cur/: nothing from tmp/, nothing partial.
        pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
        self.addCleanup(pop.close)
        pop.stls(ssl._create_unverified_context())
        pop.user(USER)
        pop.pass_("secret")
        count, _size = pop.stat()
        self.assertEqual(count, len(after))
        uidls = {line.split()[1].decode() for line in pop.uidl()[1]}
        names = {os.path.basename(p).split(":")[0] for p in after.values()}
        self.assertEqual(uidls, names)
        tmp = os.path.join(maildir, "tmp")
        for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
            self.assertNotIn(name.split(":")[0], uidls)
        pop.quit()
