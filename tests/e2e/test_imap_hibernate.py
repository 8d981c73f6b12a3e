"""[imap] hibernate_timeout against the real server: sessions quiet in IDLE or between
commands hibernate (the log says so, and that their objects were freed), and carry
on exactly as awake ones would when mail arrives, another session changes the
folder, the client sends DONE or a command, or the client goes away."""

import os
import re
import smtplib
import sqlite3
import uuid

from twisted.trial import unittest

from tests.e2e import ALICE, BOB, CAROL, USERS, _build_template, log_lines, wait_for
from tests.fixtures.imap import RawIMAP
from tests.fixtures.server import JdmailServer

LOOPBACK = "tcp:0:interface=127.0.0.1"
SETTINGS = {"imap": {"listen": LOOPBACK, "hibernate_timeout": "1s"}, "auth": {"allow_plaintext": "yes"}}
DAVE, ERIN, PASSWORD = "dave@example.org", "erin@example.org", "h1bernate"

_servers = {}


def server_with(name, overrides, users=()):
    """A server of this module's (started once per process), with the e2e template's users."""
    server = _servers.get(name)
    if server is not None and server.proc.poll() is None:
        return server
    template = _build_template()
    server = JdmailServer(overrides=overrides)
    server.write_ini()
    os.makedirs(server.datadir, mode=0o700, exist_ok=True)
    src = sqlite3.connect(os.path.join(template, "directory.sqlite"))
    dst = sqlite3.connect(os.path.join(server.datadir, "directory.sqlite"))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    for address in users:
        server.ctl("user", "add", address, "--password", PASSWORD)
    server.start()
    import atexit
    atexit.register(server.stop)
    _servers[name] = server
    return server


def message(subject):
    return (f"From: <sender@remote.test>\r\nTo: <x@example.org>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n\r\nHello.\r\n").encode()


def port(c):
    return c.sock.getsockname()[1]


class HibernateTestCase(unittest.TestCase):

    def setUp(self):
        self.server = server_with("hibernate", SETTINGS)

    def raw(self, user, password=None):
        c = RawIMAP(self.server.ports["imap"], timeout=20)
        self.addCleanup(c.close)
        lines = c.cmd(f'LOGIN "{user}" "{password or USERS.get(user, PASSWORD)}"', tag="L")
        self.assertTrue(lines[-1].startswith("L OK"), lines)
        return c

    def slept(self, c, user):
        return log_lines(self.server, f"imap hibernated user={user} client=127.0.0.1 port={port(c)} ")

    def asleep(self, c, user, since, idle=True):
        """Wait until session ``c`` of ``user`` hibernates after its ``since`` earlier
        hibernations; it must have been in IDLE or not as ``idle`` says, and freed."""
        lines = wait_for(lambda: self.slept(c, user)[since:], timeout=20.0)
        self.assertTrue(lines, f"{user} did not hibernate:\n" + self.server.read_log()[-3000:])
        self.assertIn(f" idle={'yes' if idle else 'no'} freed=yes ", lines[0])

    def woken(self, c, user, reason):
        return log_lines(self.server, f"imap woken user={user} client=127.0.0.1 port={port(c)} reason={reason}")

    def folder_with(self, c, count):
        name = "H" + uuid.uuid4().hex[:8]
        self.assertTrue(c.cmd(f"CREATE {name}")[-1].startswith("T OK"))
        for i in range(count):
            data = message(f"m{i}")
            c.send(f"A APPEND {name} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
            self.assertTrue(c.until("A")[-1].startswith("A OK"))
        return name

    def read_until(self, c, pattern):
        """Response lines up to the first that matches ``pattern``."""
        out = []
        while not out or not re.fullmatch(pattern, out[-1]):
            out.append(c.line())
        return out

    def tearDown(self):
        self.assertNotIn("Traceback", self.server.read_log())


class IdleTests(HibernateTestCase):

    def test_delivery_wakes_a_hibernated_idle_then_done_and_commands(self):
        c = self.raw(CAROL)
        exists = [line for line in c.cmd("SELECT INBOX") if line.endswith(" EXISTS")]
        n = int(exists[0].split()[1])
        slept = len(self.slept(c, CAROL))
        c.send("I IDLE\r\n")
        self.assertEqual(c.line(), "+ idling")
        self.asleep(c, CAROL, slept)
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", [CAROL], message("wake up"))
        lines = self.read_until(c, r"\* \d+ EXISTS")
        self.assertEqual(lines[-1], f"* {n + 1} EXISTS")
        self.assertTrue(self.woken(c, CAROL, "change"))
        c.send("DONE\r\n")
        lines = c.until("I")
        self.assertEqual(lines[-1], "I OK IDLE terminated", lines)
        slept = len(self.slept(c, CAROL))
        lines = c.cmd(f"FETCH {n + 1} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertIn("Subject: wake up", lines[0])
        self.assertEqual(lines[-1], "T OK Fetch completed")
        # between commands too; the next command wakes it
        self.asleep(c, CAROL, slept, idle=False)
        self.assertEqual(c.cmd("NOOP"), ["T OK Noop completed"])
        self.assertTrue(self.woken(c, CAROL, "input"))
        self.assertEqual(c.cmd("LOGOUT", tag="Z"), ["* BYE Logging out", "Z OK Logout completed"])

    def test_other_sessions_store_and_expunge_reach_a_hibernated_session(self):
        b = self.raw(ALICE)
        name = self.folder_with(b, 3)
        a = self.raw(ALICE)
        self.assertIn("* 3 EXISTS", a.cmd(f"SELECT {name}"))
        slept = len(self.slept(a, ALICE))
        a.send("I IDLE\r\n")
        self.assertEqual(a.line(), "+ idling")
        self.asleep(a, ALICE, slept)
        b.cmd(f"SELECT {name}")
        b.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)")
        line = self.read_until(a, r"\* \d+ FETCH .*")[-1]
        self.assertRegex(line, r"^\* 2 FETCH \(FLAGS \(\\Flagged( \\Recent)?\) UID 2\)$")
        self.asleep(a, ALICE, slept + 1)     # again, after the wake the FETCH came from
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(b.cmd("EXPUNGE"), ["* 1 EXPUNGE", "T OK Expunge completed"])
        self.read_until(a, r"\* 1 EXPUNGE")
        a.send("DONE\r\n")
        self.assertEqual(a.until("I")[-1], "I OK IDLE terminated")
        slept = len(self.slept(a, ALICE))
        lines = a.cmd("FETCH 1:* (UID)")
        self.assertEqual(lines, ["* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)", "T OK Fetch completed"])
        # hibernated between commands: the change waits for the next command, as awake
        self.asleep(a, ALICE, slept, idle=False)
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("EXPUNGE")
        lines = a.cmd("NOOP")
        self.assertEqual(lines[-2:], ["* 1 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(a.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 3)", "T OK Fetch completed"])

    def test_qresync_state_survives_hibernation(self):
        b = self.raw(BOB)
        name = self.folder_with(b, 2)
        a = self.raw(BOB)
        self.assertEqual(a.cmd("ENABLE QRESYNC"), ["* ENABLED QRESYNC", "T OK Enable completed"])
        lines = a.cmd(f"SELECT {name}")
        modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", " ".join(lines)).group(1))
        slept = len(self.slept(a, BOB))
        a.send("I IDLE\r\n")
        self.assertEqual(a.line(), "+ idling")
        self.asleep(a, BOB, slept)
        b.cmd(f"SELECT {name}")
        b.cmd("STORE 2 +FLAGS.SILENT (\\Seen)")
        line = self.read_until(a, r"\* \d+ FETCH .*")[-1]
        m = re.fullmatch(r"\* 2 FETCH \(FLAGS \(\\Seen( \\Recent)?\) UID 2 MODSEQ \((\d+)\)\)", line)
        self.assertTrue(m, line)
        self.assertGreater(int(m.group(2)), modseq)
        self.asleep(a, BOB, slept + 1)
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("EXPUNGE")
        self.read_until(a, r"\* VANISHED 1")
        a.send("DONE\r\n")
        self.assertEqual(a.until("I")[-1], "I OK IDLE terminated")


class LimitTests(HibernateTestCase):

    def setUp(self):
        settings = {**SETTINGS, "imap": {**SETTINGS["imap"], "max_connections_per_user": "2",
                                         "max_connections_per_ip": "3"}}
        self.server = server_with("limits", settings, users=(DAVE, ERIN))

    def test_disconnect_while_hibernated_releases_the_counts(self):
        d1, d2, e = self.raw(DAVE), self.raw(DAVE), self.raw(ERIN)
        for c in (d1, d2):
            c.cmd("SELECT INBOX")
            c.slept = len(self.slept(c, DAVE))
            c.send("I IDLE\r\n")
            self.assertEqual(c.line(), "+ idling")
        self.asleep(d1, DAVE, d1.slept)
        self.asleep(d2, DAVE, d2.slept)
        self.asleep(e, ERIN, 0, idle=False)
        for c in (d1, d2):
            c.port = port(c)
            c.close()
        for c in (d1, d2):
            ended = f"imap hibernated session ended user={DAVE} client=127.0.0.1 port={c.port}: closed by the client"
            self.assertTrue(wait_for(lambda: log_lines(self.server, ended), timeout=20.0), ended)
        # both per-user places and two of the three per-IP places are free again, no more
        d3, d4 = self.raw(DAVE), self.raw(DAVE)
        extra = RawIMAP(self.server.ports["imap"], timeout=20)
        self.addCleanup(extra.close)
        self.assertEqual(extra.greeting, "* BYE [UNAVAILABLE] Too many connections, try again later")
        d4.close()
        self.assertTrue(wait_for(self._one_place_free, timeout=20.0))
        self.assertEqual(e.cmd("NOOP"), ["T OK Noop completed"])
        self.assertEqual(d3.cmd("LOGOUT", tag="Z")[-1], "Z OK Logout completed")

    def _one_place_free(self):
        c = RawIMAP(self.server.ports["imap"], timeout=20)
        try:
            if not c.greeting.startswith("* OK"):
                return False
            return c.cmd(f'LOGIN "{DAVE}" "{PASSWORD}"', tag="L")[-1].startswith("L OK")
        finally:
            c.close()


class WorkerTests(HibernateTestCase):
    """Hibernation in a worker process ([jdmail] workers): woken by a delivery another
    process made, and told ``* BYE`` at the stop while asleep."""

    def setUp(self):
        from tests.fixtures.server import running_server
        self.server = running_server(self, users=((DAVE, PASSWORD),),
                                     overrides={**SETTINGS, "jdmail": {"workers": "2"}})

    def test_woken_by_delivery_and_told_bye_at_stop(self):
        import signal
        c = self.raw(DAVE)
        self.assertIn("* 0 EXISTS", c.cmd("SELECT INBOX"))
        slept = len(self.slept(c, DAVE))
        c.send("I IDLE\r\n")
        self.assertEqual(c.line(), "+ idling")
        self.asleep(c, DAVE, slept)
        with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", [DAVE], message("to the worker"))
        self.assertEqual(self.read_until(c, r"\* \d+ EXISTS")[-1], "* 1 EXISTS")
        c.send("DONE\r\n")
        self.assertEqual(c.until("I")[-1], "I OK IDLE terminated")
        slept = len(self.slept(c, DAVE))
        self.assertEqual(c.cmd("NOOP"), ["T OK Noop completed"])
        self.asleep(c, DAVE, slept, idle=False)
        os.kill(self.server.proc.pid, signal.SIGTERM)
        self.assertEqual(c.line(), "* BYE Server shutting down, try again later")
        self.server.proc.wait(30)
        self.assertTrue(log_lines(self.server, f"imap hibernated session ended user={DAVE} client=127.0.0.1 "
                                               f"port={port(c)}: server stopping"))
