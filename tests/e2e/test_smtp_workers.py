"""SMTP in worker processes ([jdmail] workers = 2): a real jdmail whose SMTP sockets are
accepted on by two worker processes, with real clients (smtplib, imaplib) and a real
smtp-sink as the relay. What must stay global or in the master is checked through
the workers: connection limits, quota, the Junk folder, IMAP IDLE, the queue runner,
the log; and their lifecycle: a killed worker is restarted, none outlives the server."""

import atexit
import concurrent.futures
import imaplib
import os
import re
import signal
import smtplib
import socket
import time

from twisted.trial.unittest import TestCase

from tests.e2e import RawSMTP, files_with, message, token, unverified_context, wait_for
from tests.fixtures.server import JdmailServer
from tests.fixtures.smtp_sink import SMTPSink

BOB, FULL = "bob@example.org", "full@example.org"


def worker_pids(server):
    """PIDs of the server's worker processes (its children running jdmail.workers.worker)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid and fields[0] != "Z" and b"jdmail.workers.worker" in cmdline:
            out.append(int(name))
    return sorted(out)


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(testcase, overrides, extra_ini="", users=((BOB, "secret"),)):
    server = JdmailServer(overrides={"jdmail": {"workers": "2"}, **overrides}, extra_ini=extra_ini)
    server.write_ini()
    server.ctl("domain", "add", "example.org")
    for address, password in users:
        server.ctl("user", "add", address, "--password", password)
    server.ctl("user", "add", FULL, "--password", "pw", "--quota-messages", "1")
    server.start()
    if testcase is not None:
        testcase.addCleanup(server.stop)
    wait_for(lambda: len(worker_pids(server)) == 2, timeout=30)
    return server


def send(port, rcpts, data, tls=None, sender="someone@remote.test", login=None):
    """One transaction; returns the queue id from the 250 reply. ``tls``: None, "starttls"
    or "implicit"; ``login``: (user, password) for AUTH."""
    if tls == "implicit":
        c = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=unverified_context())
    else:
        c = smtplib.SMTP("127.0.0.1", port, timeout=30)
    with c:
        c.ehlo("client.test")
        if tls == "starttls":
            c.starttls(context=unverified_context())
            c.ehlo("client.test")
        if login:
            c.login(*login)
        code, text = c.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, text, sender)
        for r in rcpts:
            code, text = c.rcpt(r)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({r: (code, text)})
        code, text = c.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        return re.search(rb"queued as (\w+)", text).group(1).decode()


def worker_line(server, queue_id):
    """The transaction log line of ``queue_id``, if a worker wrote it (it is in the master's log)."""
    for line in server.read_log().splitlines():
        if f"smtp transaction id={queue_id} " in line:
            return line if "[worker-" in line else f"not from a worker: {line}"
    return None


class WorkersTests(TestCase):
    """One server (per test process) with two workers, an attachment filter that sends .exe
    mail to Junk, and smtp-sink as the relay host (queue scan_interval 1h: only the
    workers' nudge makes the runner look at once)."""

    shared = None      # (server, sink): started by the first test, stopped when the process exits

    def setUp(self):
        cls = type(self)
        if cls.shared is None or cls.shared[0].proc.poll() is not None:
            sink = SMTPSink()
            sink.start()
            atexit.register(sink.cleanup)
            server = start(None, {
                "smtp": {"mynetworks": "127.0.0.0/8"},
                "queue": {"scan_interval": "1h"},
                "filters": {"chain": "attachments"},
            }, extra_ini=(f"[filter:attachments]\naction = quarantine\nquarantine = junk\n"
                          f"[routing]\nrelayhost = [127.0.0.1]:{sink.port}\n"))
            atexit.register(server.stop)
            cls.shared = (server, sink)
        self.server, self.sink = cls.shared
        self.ports = self.server.ports

    def test_concurrent_sessions_each_message_stored_once(self):
        toks = [token() + f"-{i}" for i in range(40)]

        def one(tok):
            return send(self.ports["smtp"], [BOB], message(tok))
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            ids = list(pool.map(one, toks))
        self.assertEqual(len(set(ids)), 40)
        for tok in toks:
            self.assertEqual(len(files_with(self.server, tok)), 1, tok)
        lines = [worker_line(self.server, i) for i in ids]      # written before the 250 was sent
        self.assertNotIn(None, lines)
        self.assertEqual([line for line in lines if "[worker-" not in line], [])
        self.assertTrue(all("result=accepted" in line for line in lines))

    def test_workers_follow_a_log_rotation(self):
        """twistd rotates its log on SIGUSR1 (as logrotate asks): the workers' lines go
        on into the new file."""
        before = send(self.ports["smtp"], [BOB], message(token()))
        os.kill(self.server.proc.pid, signal.SIGUSR1)
        self.assertTrue(wait_for(lambda: os.path.exists(self.server.log + ".1"), timeout=10))
        after = [send(self.ports["smtp"], [BOB], message(token())) for _ in range(4)]
        with open(self.server.log + ".1", encoding="utf-8") as f:
            self.assertIn(f"smtp transaction id={before} ", f.read())
        self.assertEqual([line for line in (worker_line(self.server, q) for q in after)
                          if line is None or "[worker-" not in line], [])

    def test_quota_refused_at_rcpt(self):
        send(self.ports["smtp"], [FULL], message(token()))
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            send(self.ports["smtp"], [FULL], message(token()))
        code, text = e.exception.recipients[FULL]
        self.assertEqual((code, text), (452, f"4.2.2 <{FULL}>: Mailbox full".encode()))
        self.assertEqual(len(self.server.messages(FULL)), 1)

    def test_junk_folder_through_a_worker(self):
        tok = token()
        data = (f"From: a@remote.test\r\nTo: {BOB}\r\nSubject: {tok}\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                "--b\r\nContent-Type: application/octet-stream\r\n"
                "Content-Disposition: attachment; filename=setup.exe\r\n\r\nMZ\r\n--b--\r\n").encode()
        qid = send(self.ports["smtp"], [BOB], data)
        [path] = files_with(self.server, tok)
        self.assertIn(os.sep + ".Junk" + os.sep + "new" + os.sep, path)
        line = worker_line(self.server, qid)
        self.assertIn("[worker-", line)
        self.assertIn("result=accepted to Junk", line)
        # the folder was made by the master, through the index: IMAP lists it as \Junk
        imap = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=30)
        self.addCleanup(imap.logout)
        imap.starttls(ssl_context=unverified_context())
        imap.login(BOB, "secret")
        typ, data = imap.list()
        self.assertEqual(typ, "OK")
        self.assertTrue(any(b"\\Junk" in line and line.endswith(b'"Junk"') for line in data), data)

    def test_idle_sees_a_worker_delivery_at_once(self):
        imap = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=60)
        self.addCleanup(imap.logout)
        imap.starttls(ssl_context=unverified_context())
        imap.login(BOB, "secret")
        typ, data = imap.select("INBOX")
        before = int(data[0])
        imap.send(b"i1 IDLE\r\n")
        line = imap.readline()
        self.assertTrue(line.startswith(b"+ "), line)
        sent = time.monotonic()
        send(self.ports["smtp"], [BOB], message(token()))
        # IDLE_POLL (jdmail.imap.server) is 30 s: an EXISTS well before it came from the
        # worker's "delivered" through the master, not from the poll.
        imap.sock.settimeout(25)
        line = imap.readline()
        self.assertEqual(line, f"* {before + 1} EXISTS\r\n".encode())
        self.assertLess(time.monotonic() - sent, 25)
        imap.send(b"DONE\r\n")
        lines = [imap.readline()]
        while lines[-1].startswith(b"* "):
            lines.append(imap.readline())
        self.assertTrue(lines[-1].startswith(b"i1 OK"), lines)

    def test_remote_recipient_queued_by_a_worker_is_sent_by_the_runner(self):
        tok = token()
        qid = send(self.ports["smtp"], ["friend@example.net"], message(tok))
        dumps = wait_for(lambda: [d for d in self.sink.dumps() if tok.encode() in d.data], timeout=20)
        self.assertEqual(len(dumps), 1, self.server.read_log()[-3000:])
        self.assertEqual(dumps[0].rcpt_args, ["<friend@example.net>"])
        self.assertIn("[worker-", worker_line(self.server, qid))

    def test_smtps_and_starttls_in_a_worker(self):
        for port, tls, proto in ((self.ports["smtps"], "implicit", "ESMTPSA"),
                                 (self.ports["smtp"], "starttls", "ESMTPSA")):
            tok = token()
            qid = send(port, [BOB], message(tok), tls=tls, sender=BOB, login=(BOB, "secret"))
            [path] = files_with(self.server, tok)
            with open(path, "rb") as f:
                head = f.read(2000)
            self.assertRegex(head, rb"\(using TLSv1\.[23] with cipher [^)]+\)\r\n\t\(Authenticated sender: bob@example.org\)"
                                   rb"\r\n\twith " + proto.encode())
            self.assertIn("[worker-", worker_line(self.server, qid))


class LimitsAndLifecycleTests(TestCase):
    """Connection limits are the master's, over both workers; killed workers are replaced;
    no worker outlives its master."""

    def setUp(self):
        self.server = start(self, {"smtp": {"max_connections_per_ip": "2"}})

    def sessions(self, n):
        """Open ``n`` connections; [(client, greeting code)]."""
        out = []
        for _ in range(n):
            c = RawSMTP(self.server.ports["smtp"], timeout=30)
            self.addCleanup(c.close)
            out.append((c, c.banner.code))
        return out

    def test_per_ip_limit_over_both_workers(self):
        codes = [code for _c, code in self.sessions(5)]
        self.assertEqual(sorted(codes), [220, 220, 421, 421, 421])

        def refused():
            return [line for line in self.server.read_log().splitlines()
                    if "smtp refused client=127.0.0.1 reason=connections from 127.0.0.1 at limit 2" in line]
        wait_for(lambda: len(refused()) == 3, timeout=10)
        self.assertEqual(len(refused()), 3)
        self.assertTrue(all("[worker-" in line for line in refused()), refused())

    def test_killed_workers_restarted_and_their_connections_released(self):
        held = self.sessions(2)
        self.assertEqual([code for _c, code in held], [220, 220])
        old = worker_pids(self.server)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (lambda p: len(p) == 2 and not set(p) & set(old) and p)(worker_pids(self.server)),
                       timeout=30)
        self.assertTrue(new, self.server.read_log()[-3000:])
        for c, _code in held:
            self.assertTrue(c.closed(), "a connection of a killed worker stayed open")
        self.assertEqual(len([line for line in self.server.read_log().splitlines()
                              if re.search(r"worker \d pid=\d+ ended \(signal 9\)", line)]), 2)
        # the dead workers' two connections no longer count: two new ones are admitted
        ok = wait_for(lambda: self._deliver_once(), timeout=30)
        self.assertTrue(ok)
        codes = [code for _c, code in self.sessions(3)]
        self.assertEqual(sorted(codes), [220, 220, 421])

    def _deliver_once(self):
        try:
            send(self.server.ports["smtp"], [BOB], message(token()))
            return True
        except (OSError, smtplib.SMTPException):
            return False

    def test_stop_ends_the_workers(self):
        pids = worker_pids(self.server)
        self.assertEqual(len(pids), 2)
        self.server.stop()
        self.assertEqual([p for p in pids if alive(p)], [])
        self.assertIn("stopped (exit status 0)", self.server.read_log())

    def test_stop_lets_a_transaction_in_progress_finish(self):
        c = RawSMTP(self.server.ports["smtp"], timeout=30)
        self.addCleanup(c.close)
        idle = RawSMTP(self.server.ports["smtp"], timeout=30)
        self.addCleanup(idle.close)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.test>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{BOB}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        tok = token()
        c.send(message(tok)[:40])
        os.kill(self.server.proc.pid, signal.SIGTERM)
        self.assertTrue(wait_for(lambda: len(re.findall(r"\[worker-\d\] Received SIGTERM",
                                                        self.server.read_log())) == 2, timeout=30))
        c.send(message(tok)[40:] + b".\r\n")
        reply = c.reply()
        self.assertEqual(reply.code, 250, reply)
        self.assertEqual(c.reply(), (421, ["4.3.2 mail.test Service shutting down; try again later"]))
        self.assertTrue(c.closed())
        self.assertEqual(idle.reply().code, 421)
        self.assertEqual(len(files_with(self.server, tok)), 1)
        self.server.proc.wait(30)

    def test_workers_leave_when_the_master_is_killed(self):
        pids = worker_pids(self.server)
        self.assertEqual(len(pids), 2)
        port = self.server.ports["smtp"]
        self.server.kill()
        self.assertTrue(wait_for(lambda: not any(alive(p) for p in pids), timeout=30))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
