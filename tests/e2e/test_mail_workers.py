"""POP3 and IMAP in worker processes ([jdmail] workers = 2): a real jdmail whose POP3,
IMAP and SMTP sockets are accepted on by two workers, with real clients (poplib,
imaplib, smtplib). Which worker serves a connection is read from /proc (the process
holding the server side of that TCP connection), so the checks really cross processes:
POP3's one session per mailbox, IMAP's sessions per user, IDLE woken by a change
another process made, a killed worker's lock and counts released, BYE/-ERR at stop."""

import atexit
import imaplib
import os
import poplib
import re
import signal
import time

from twisted.trial.unittest import TestCase

from tests.e2e import message, token, unverified_context, wait_for
from tests.e2e.test_smtp_workers import alive, send, worker_pids
from tests.fixtures.server import JdmailServer

BOB, ANN = "bob@example.org", "ann@example.org"
PROMPT = 10     # IDLE_POLL (jdmail.imap.server) is 30 s: a notice within this came from the other process


def _socket_inode(local_port, remote_port):
    """The inode of the server side of the loopback TCP connection whose server port is
    ``local_port`` and client port ``remote_port`` (from /proc/net/tcp)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            return fields[9]
    return None


def serving_pid(server, sock):
    """The PID of the worker holding the server side of the client socket ``sock``."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inode = wait_for(lambda: _socket_inode(server_port, client_port), timeout=5)
    target = f"socket:[{inode}]"
    for pid in worker_pids(server):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def start(testcase, overrides=None):
    server = JdmailServer(overrides={"jdmail": {"workers": "2"}, "auth": {"allow_plaintext": "yes"},
                                     **(overrides or {})})
    server.write_ini()
    server.ctl("domain", "add", "example.org")
    for address in (BOB, ANN):
        server.ctl("user", "add", address, "--password", "secret")
    server.start()
    if testcase is not None:
        testcase.addCleanup(server.stop)
    wait_for(lambda: len(worker_pids(server)) == 2, timeout=30)
    return server


class Clients:
    """Opening clients until one is served by the wanted worker."""

    server = None

    def imap(self, user=BOB, on=None, login=True):
        """An imaplib client served by the worker ``on`` (a pid; None: any)."""
        for _ in range(60):
            c = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=60)
            pid = serving_pid(self.server, c.sock)
            if on is None or pid == on:
                self.addCleanup(_quietly, c.shutdown)
                c.pid = pid
                if login:
                    c.login(user, "secret")
                return c
            c.shutdown()
        self.fail(f"no IMAP connection reached worker {on}")

    def pop3(self, on=None):
        for _ in range(60):
            c = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=60)
            pid = serving_pid(self.server, c.sock)
            if on is None or pid == on:
                self.addCleanup(_quietly, c.close)
                c.pid = pid
                return c
            c.close()
        self.fail(f"no POP3 connection reached worker {on}")

    def two_workers(self):
        pids = worker_pids(self.server)
        self.assertEqual(len(pids), 2)
        return pids

    def idle(self, c):
        """Start IDLE on an imaplib client with INBOX selected."""
        c.send(b"i1 IDLE\r\n")
        line = c.readline()
        self.assertTrue(line.startswith(b"+ "), line)
        c.sock.settimeout(PROMPT)

    def idle_line(self, c, pattern):
        """The next untagged line in IDLE matching ``pattern``, within PROMPT seconds."""
        deadline = time.monotonic() + PROMPT
        while time.monotonic() < deadline:
            line = c.readline()
            if re.match(pattern, line):
                return line
        self.fail(f"no {pattern!r} within {PROMPT}s")

    def done(self, c):
        c.send(b"DONE\r\n")
        lines = [c.readline()]
        while lines[-1].startswith(b"* "):
            lines.append(c.readline())
        self.assertTrue(lines[-1].startswith(b"i1 OK"), lines)


def _quietly(f):
    try:
        f()
    except Exception:
        pass


class SharedWorkersTests(Clients, TestCase):
    """One server (per test process) with two workers."""

    shared = None

    def setUp(self):
        cls = type(self)
        if cls.shared is None or cls.shared.proc.poll() is not None:
            cls.shared = start(None, {"imap": {"max_connections_per_user": "2"}})
            atexit.register(cls.shared.stop)
        self.server = cls.shared

    def test_both_workers_accept_pop3_and_imap(self):
        pids = set(self.two_workers())
        seen_imap, seen_pop3 = set(), set()
        for _ in range(40):
            if seen_imap == pids and seen_pop3 == pids:
                break
            c = self.imap(login=False)
            self.assertEqual(c.noop()[0], "OK")
            seen_imap.add(c.pid)
            c.logout()
            p = self.pop3()
            self.assertTrue(p.getwelcome().startswith(b"+OK"))
            seen_pop3.add(p.pid)
            p.quit()
        self.assertEqual((seen_imap, seen_pop3), (pids, pids))

    def test_imaps_and_pop3s_in_the_workers(self):
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.server.ports["imaps"], timeout=60,
                                 ssl_context=unverified_context())
        self.addCleanup(_quietly, imap.shutdown)
        self.assertIn(serving_pid(self.server, imap.sock), self.two_workers())
        self.assertEqual(imap.login(ANN, "secret")[0], "OK")
        self.assertEqual(imap.select("INBOX")[0], "OK")
        imap.logout()
        pop = poplib.POP3_SSL("127.0.0.1", self.server.ports["pop3s"], timeout=60, context=unverified_context())
        self.addCleanup(_quietly, pop.close)
        self.assertIn(serving_pid(self.server, pop.sock), self.two_workers())
        pop.user(ANN)
        self.assertTrue(pop.pass_("secret").startswith(b"+OK"))
        pop.quit()

    def test_pop3_one_session_per_mailbox_across_workers(self):
        one, two = self.two_workers()
        a = self.pop3(on=one)
        a.user(BOB)
        a.pass_("secret")
        b = self.pop3(on=two)
        b.user(BOB)
        with self.assertRaises(poplib.error_proto) as e:
            b.pass_("secret")
        self.assertEqual(str(e.exception), str(b"-ERR [IN-USE] Mailbox is locked by another session"))
        # the same worker's other session is refused too
        c = self.pop3(on=one)
        c.user(BOB)
        with self.assertRaises(poplib.error_proto):
            c.pass_("secret")
        a.quit()
        d = self.pop3(on=two)
        d.user(BOB)
        self.assertTrue(d.pass_("secret").startswith(b"+OK"))
        d.quit()

    def test_imap_sessions_per_user_counted_over_both_workers(self):
        one, two = self.two_workers()
        a = self.imap(ANN, on=one)
        b = self.imap(ANN, on=two)
        for on in (one, two):
            c = self.imap(login=False, on=on)
            with self.assertRaises(imaplib.IMAP4.error) as e:
                c.login(ANN, "secret")
            self.assertIn("[LIMIT]", str(e.exception))
        a.logout()
        c = wait_for(lambda: _login_as(self.imap(login=False, on=two), ANN), timeout=10)
        self.assertTrue(c, "the session that logged out still counted")
        b.logout()
        c.logout()

    def test_idle_sees_append_store_expunge_of_the_other_worker(self):
        one, two = self.two_workers()
        watcher = self.imap(on=one)
        before = int(watcher.select("INBOX")[1][0])
        actor = self.imap(on=two)
        actor.select("INBOX")
        self.idle(watcher)
        tok = token()
        self.assertEqual(actor.append("INBOX", None, None, message(tok))[0], "OK")
        self.idle_line(watcher, rb"\* %d EXISTS" % (before + 1))
        actor.store(str(before + 1), "+FLAGS", "(\\Flagged)")
        self.idle_line(watcher, rb"\* %d FETCH \(.*FLAGS \(.*\\Flagged" % (before + 1))
        actor.store(str(before + 1), "+FLAGS", "(\\Deleted)")
        actor.expunge()
        self.idle_line(watcher, rb"\* %d EXPUNGE" % (before + 1))
        self.done(watcher)

    def test_idle_in_both_workers_sees_smtp_delivery_and_pop3_dele(self):
        one, two = self.two_workers()
        watchers = []
        for on in (one, two):
            w = self.imap(on=on)
            w.count = int(w.select("INBOX")[1][0])
            self.idle(w)
            watchers.append(w)
        send(self.server.ports["smtp"], [BOB], message(token()))
        for w in watchers:
            w.count += 1
            self.idle_line(w, rb"\* %d EXISTS" % w.count)
        p = self.pop3(on=one)
        p.user(BOB)
        p.pass_("secret")
        p.dele(1)
        p.quit()
        for w in watchers:
            self.idle_line(w, rb"\* 1 EXPUNGE")
            self.done(w)


class KilledAndStoppedTests(Clients, TestCase):
    """A killed worker's POP3 lock and IMAP sessions are released; at stop idle POP3 and
    IMAP clients are told."""

    def setUp(self):
        self.server = start(self, {"imap": {"max_connections_per_user": "1"}})

    def test_kill_9_releases_pop3_lock_and_imap_user_count(self):
        one, two = self.two_workers()
        p = self.pop3(on=one)
        p.user(BOB)
        p.pass_("secret")
        self.imap(BOB, on=one)
        other = self.imap(login=False, on=two)
        with self.assertRaises(imaplib.IMAP4.error):
            other.login(BOB, "secret")
        os.kill(one, signal.SIGKILL)
        self.assertTrue(wait_for(lambda: not alive(one), timeout=10))
        q = self.pop3(on=two)
        q.user(BOB)
        self.assertTrue(q.pass_("secret").startswith(b"+OK"))
        q.quit()
        c = wait_for(lambda: _login_as(self.imap(login=False, on=two), BOB), timeout=10)
        self.assertTrue(c, "the killed worker's IMAP session still counted")
        self.assertTrue(re.search(r"worker \d pid=%d ended \(signal 9\)" % one, self.server.read_log()))

    def test_stop_says_bye_and_err_to_idle_clients(self):
        one, two = self.two_workers()
        imap = self.imap(on=one)
        imap.select("INBOX")
        idler = self.imap(ANN, on=two)
        idler.select("INBOX")
        self.idle(idler)
        pop = self.pop3(on=two)
        pop.user(BOB)
        pop.pass_("secret")
        os.kill(self.server.proc.pid, signal.SIGTERM)
        imap.sock.settimeout(30)
        idler.sock.settimeout(30)
        pop.sock.settimeout(30)
        self.assertEqual(imap.readline(), b"* BYE Server shutting down, try again later\r\n")
        self.assertEqual(idler.readline(), b"* BYE Server shutting down, try again later\r\n")
        self.assertEqual(pop.file.readline(), b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n")
        self.server.proc.wait(30)
        self.assertEqual([p for p in (one, two) if alive(p)], [])


def _login_as(c, user):
    try:
        c.login(user, "secret")
        return c
    except imaplib.IMAP4.error:
        c.shutdown()
        return None
