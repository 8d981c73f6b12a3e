"""jdmail.pop3.server: exact replies over a StringTransport, plus one real session with poplib."""

import base64
import io
import os
import poplib
import ssl as stdlib_ssl

from twisted.internet import defer, endpoints, reactor, ssl, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial import unittest
from zope.interface import implementer

import twisted.test
from jdmail.auth import make_portal
from jdmail.errors import DirectoryUnavailable
from jdmail.interfaces import Account, MessageInfo
from jdmail.pop3 import server as pop3server
from jdmail.pop3.server import POP3Factory, dot_stuff
from jdmail.services import Services

PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
PLAINTEXT_REFUSED = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secured "
                     b"connection; use STLS\r\n")


def unstuff(body):
    """What a POP3 client does with a multi-line reply (after the +OK line)."""
    assert body.endswith(b"\r\n.\r\n") or body == b".\r\n", body[-20:]
    lines = body.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    out = [line[1:] if line.startswith(b".") else line for line in lines[:-2]]
    return b"".join(line + b"\r\n" for line in out)


class FakeDirectory:
    def __init__(self, users):
        self.users = users          # name -> password
        self.down = False

    async def authenticate(self, username, password):
        if self.down:
            raise DirectoryUnavailable("backend down")
        if self.users.get(username.lower()) == password:
            return self._account(username.lower())
        return None

    async def account(self, username):
        if username in self.users:
            return self._account(username)
        return None

    def _account(self, name):
        local, domain = name.split("@")
        return Account(name=name, mailbox=f"{domain}/{local}")


class FakeMailbox:
    def __init__(self, messages):
        self.messages = dict(messages)      # key -> bytes, in order
        self.removed = []

    async def list(self):
        return [MessageInfo(key=k, size=len(v)) for k, v in self.messages.items()]

    def open(self, key):
        return io.BytesIO(self.messages[key])

    async def remove(self, keys):
        for k in keys:
            self.removed.append(k)
            del self.messages[k]


class FakeStore:
    def __init__(self):
        self.boxes = {}

    def mailbox(self, key, folder="INBOX"):
        return self.boxes.setdefault(key, FakeMailbox({}))


class FakeServices(Services):
    def run_blocking(self, f, *args, **kwargs):
        self.blocking_calls = getattr(self, "blocking_calls", 0) + 1
        return defer.maybeDeferred(f, *args, **kwargs)


@implementer(ITLSTransport)
class Transport(StringTransport):
    """A StringTransport that records writes, STARTTLS and TCP_NODELAY."""

    def __init__(self, ip="10.0.0.1"):
        super().__init__(peerAddress=IPv4Address("TCP", ip, 40000))
        self.writes = 0
        self.tls = None
        self.nodelay = False

    def write(self, data):
        self.writes += 1
        super().write(data)

    def startTLS(self, context):
        self.tls = context

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


class Session:
    def __init__(self, factory, ip="10.0.0.1"):
        self.proto = factory.buildProtocol(None)
        self.transport = Transport(ip)
        self.proto.makeConnection(self.transport)

    def greeting(self):
        return self.take()

    def take(self):
        value = self.transport.value()
        self.transport.clear()
        self.transport.writes = 0
        return value

    def send(self, data):
        self.take()
        self.proto.dataReceived(data)
        return self.take()

    def cmd(self, line):
        return self.send(line.encode() + b"\r\n")

    def lose(self):
        self.proto.connectionLost(None)


class ProtocolTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.directory = FakeDirectory({"alice@example.org": "secret", "bob@example.org": "pw"})
        self.store = FakeStore()
        self.services = FakeServices(reactor=self.clock, config=None, hostname="mx.example.org",
                                     datadir="/nonexistent", threadpool=None, store=self.store,
                                     directory=self.directory)
        self.portal = make_portal(self.directory)
        self.events = []
        self.patch(pop3server.POP3Server, "log", Logger(observer=self.events.append))

    def factory(self, **settings):
        base = {"banner": "jdmail test ready", "timeout": 600.0, "max_connections": 10,
                "max_connections_per_ip": 5, "allow_plaintext": True, "fail_delay": 2.0,
                "max_failures": 3, "tls_context": None, "implicit_tls": False, "locks": set()}
        base.update(settings)
        return POP3Factory(self.services, self.portal, base)

    def session(self, factory=None, **settings):
        s = Session(factory or self.factory(**settings))
        self.assertEqual(s.greeting(), b"+OK jdmail test ready\r\n")
        return s

    def mailbox(self, messages, key="example.org/alice"):
        self.store.boxes[key] = FakeMailbox(messages)
        return self.store.boxes[key]

    def login(self, s, user="alice@example.org", password="secret"):
        self.assertEqual(s.cmd("USER " + user), b"+OK\r\n")
        return s.cmd("PASS " + password)

    # --- connection --------------------------------------------------------------------------

    def test_greeting_and_nodelay(self):
        s = self.session()
        self.assertTrue(s.transport.nodelay)

    def test_capa_plaintext_allowed(self):
        s = self.session(tls_context=object())
        self.assertEqual(s.cmd("CAPA"), b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
                         b"AUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\n"
                         b"IMPLEMENTATION jdmail\r\n.\r\n")

    def test_capa_plaintext_refused_before_tls(self):
        s = self.session(tls_context=object(), allow_plaintext=False)
        caps = s.cmd("CAPA")
        self.assertEqual(caps, b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
                         b"AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\nIMPLEMENTATION jdmail\r\n.\r\n")

    def test_plaintext_refused(self):
        s = self.session(tls_context=object(), allow_plaintext=False)
        self.assertEqual(s.cmd("USER alice@example.org"), PLAINTEXT_REFUSED)
        self.assertEqual(s.cmd("PASS secret"), PLAINTEXT_REFUSED)
        self.assertEqual(s.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA=="), PLAINTEXT_REFUSED)
        self.assertEqual(s.cmd("AUTH PLAIN"), PLAINTEXT_REFUSED)
        self.assertEqual(s.cmd("AUTH"), b"+OK\r\n.\r\n")
        self.assertEqual(self.events, [])

    def test_implicit_tls_allows_plaintext_and_hides_stls(self):
        s = self.session(tls_context=object(), allow_plaintext=False, implicit_tls=True)
        self.assertNotIn(b"STLS", s.cmd("CAPA"))
        self.mailbox({})
        self.assertEqual(self.login(s), b"+OK Logged in, 0 messages\r\n")
        self.assertEqual(s.cmd("STLS"), b"-ERR Command not valid in this state\r\n")

    def test_stls_discards_pipelined_commands(self):
        context = object()
        s = self.session(tls_context=context, allow_plaintext=False)
        self.mailbox({})
        reply = s.send(b"STLS\r\nUSER alice@example.org\r\nPASS secret\r\n")
        self.assertEqual(reply, b"+OK Begin TLS negotiation\r\n")
        self.assertIs(s.transport.tls, context)
        # nothing of the injected login happened
        self.assertEqual(s.cmd("PASS secret"), b"-ERR USER first\r\n")
        self.assertEqual(self.events, [])
        caps = s.cmd("CAPA")
        self.assertIn(b"\r\nUSER\r\n", caps)
        self.assertNotIn(b"STLS", caps)
        self.assertEqual(s.cmd("STLS"), b"-ERR Command not permitted when TLS active\r\n")
        self.assertEqual(self.login(s), b"+OK Logged in, 0 messages\r\n")

    def test_stls_unavailable_without_context(self):
        s = self.session()
        self.assertEqual(s.cmd("STLS"), b"-ERR TLS not available\r\n")
        self.assertNotIn(b"STLS", s.cmd("CAPA"))

    def test_connection_limit_per_ip(self):
        factory = self.factory(max_connections_per_ip=1)
        first = self.session(factory)
        second = Session(factory)
        self.assertEqual(second.take(), b"-ERR [SYS/TEMP] Too many connections\r\n")
        self.assertTrue(second.transport.disconnecting)
        second.lose()
        other_ip = Session(factory, ip="10.0.0.2")
        self.assertEqual(other_ip.take(), b"+OK jdmail test ready\r\n")
        first.lose()
        self.session(factory)

    def test_connection_limit_total(self):
        factory = self.factory(max_connections=1)
        first = self.session(factory)
        second = Session(factory, ip="10.9.9.9")
        self.assertEqual(second.take(), b"-ERR [SYS/TEMP] Too many connections\r\n")
        second.lose()
        first.lose()
        self.assertEqual((factory.counter.total, dict(factory.counter.per_ip)), (0, {}))

    def test_idle_timeout(self):
        s = self.session(timeout=60.0)
        self.clock.advance(59)
        self.assertEqual(s.cmd("NOOP"), b"-ERR Not logged in\r\n")
        self.clock.advance(59)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(2)
        self.assertEqual(s.take(), b"-ERR Disconnected for inactivity\r\n")
        self.assertTrue(s.transport.disconnecting)

    # --- bad input -----------------------------------------------------------------------------

    def test_unknown_command(self):
        s = self.session()
        self.assertEqual(s.cmd("FOO bar"), b"-ERR Unknown command\r\n")
        self.assertEqual(s.cmd("APOP alice 0123"), b"-ERR Unknown command\r\n")
        self.assertEqual(s.cmd(""), b"-ERR Unknown command\r\n")
        self.assertEqual(s.cmd("STAT"), b"-ERR Not logged in\r\n")

    def test_over_long_line(self):
        s = self.session()
        self.assertEqual(s.cmd("NOOP " + "x" * 248), b"-ERR Not logged in\r\n")   # 255 with CRLF
        self.assertEqual(s.cmd("NOOP " + "x" * 249), b"-ERR line too long\r\n")
        self.assertEqual(s.send(b"USER " + b"a" * 5000 + b"\r\nCAPA\r\n")[:41],
                         b"-ERR line too long\r\n+OK Capability list f")
        # a long line arriving in pieces: one error, the rest of it ignored
        self.assertEqual(s.send(b"USER " + b"a" * 300), b"-ERR line too long\r\n")
        self.assertEqual(s.send(b"a" * 300), b"")
        self.assertEqual(s.send(b"aaa\r\nNOOP\r\n"), b"-ERR Not logged in\r\n")
        self.assertFalse(s.transport.disconnecting)

    def test_non_utf8_and_nul(self):
        s = self.session()
        self.assertEqual(s.send(b"USER \xff\xfe\r\n"), b"-ERR Command is not valid UTF-8\r\n")
        self.assertEqual(s.send(b"\xc3\x28\r\n"), b"-ERR Command is not valid UTF-8\r\n")
        self.assertEqual(s.send(b"USER a\x00b\r\n"), b"-ERR Invalid characters in command\r\n")
        self.assertEqual(s.send(b"US\x00ER\r\n"), b"-ERR Invalid characters in command\r\n")
        self.assertEqual(s.send(b"USER \xe2\x82\xac\r\n"), b"+OK\r\n")
        self.assertFalse(s.transport.disconnecting)
        self.mailbox({})
        self.assertEqual(self.login(s), b"+OK Logged in, 0 messages\r\n")
        self.assertEqual(s.send(b"RETR \xff\r\n"), b"-ERR Command is not valid UTF-8\r\n")
        self.assertEqual(s.send(b"RETR \xd9\xa1\r\n"), b"-ERR no such message\r\n")   # Arabic-Indic 1

    # --- login ---------------------------------------------------------------------------------

    def test_user_pass_login_logged_without_password(self):
        self.mailbox({"k1": b"a\r\n"})
        s = self.session()
        self.assertEqual(self.login(s), b"+OK Logged in, 1 messages\r\n")
        [event] = self.events
        self.assertEqual((event["user"], event["client"], event["result"], event["mech"]),
                         ("alice@example.org", "10.0.0.1", "ok", "USER"))
        self.assertNotIn("secret", repr(event))

    def test_password_with_spaces(self):
        self.directory.users["bob@example.org"] = " two  words "
        self.mailbox({}, "example.org/bob")
        s = self.session()
        self.assertEqual(self.login(s, "bob@example.org", " two  words "), b"+OK Logged in, 0 messages\r\n")

    def test_wrong_password_delayed_then_closed(self):
        s = self.session()
        for attempt in range(3):
            self.assertEqual(self.login(s, password="wrong"), b"")
            self.assertEqual(s.cmd("NOOP"), b"")           # blocked while the delay runs
            self.clock.advance(1.9)
            self.assertEqual(s.take(), b"")
            self.clock.advance(0.1)
            self.assertEqual(s.take(), b"-ERR [AUTH] Authentication failed\r\n"
                             + (b"-ERR Not logged in\r\n" if attempt < 2 else b""))
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual([e["result"] for e in self.events],
                         ["failed: wrong user name or password"] * 3)
        self.assertNotIn("wrong", repr([e["user"] for e in self.events]))

    def test_lost_connection_during_fail_delay(self):
        s = self.session()
        self.login(s, password="wrong")
        s.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_directory_unavailable(self):
        self.directory.down = True
        s = self.session()
        self.assertEqual(self.login(s), b"-ERR [SYS/TEMP] Authentication temporarily unavailable, "
                         b"try again later\r\n")
        self.assertEqual(self.events[0]["result"], "failed: directory unavailable")

    def test_auth_plain_initial_response(self):
        self.mailbox({})
        s = self.session()
        token = base64.b64encode(b"\x00alice@example.org\x00secret").decode()
        self.assertEqual(s.cmd("AUTH PLAIN " + token), b"+OK Logged in, 0 messages\r\n")
        self.assertEqual(self.events[0]["mech"], "PLAIN")

    def test_auth_plain_continuation_with_same_authzid(self):
        self.mailbox({})
        s = self.session()
        self.assertEqual(s.cmd("AUTH PLAIN"), b"+ \r\n")
        token = base64.b64encode(b"alice@example.org\x00alice@example.org\x00secret")
        self.assertEqual(s.send(token + b"\r\n"), b"+OK Logged in, 0 messages\r\n")

    def test_auth_plain_cancel_and_list(self):
        s = self.session()
        self.assertEqual(s.cmd("AUTH"), b"+OK\r\nPLAIN\r\n.\r\n")
        self.assertEqual(s.cmd("AUTH CRAM-MD5"), b"-ERR Unsupported authentication mechanism\r\n")
        self.assertEqual(s.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(s.cmd("*"), b"-ERR Authentication cancelled\r\n")
        self.assertEqual(s.cmd("CAPA")[:3], b"+OK")

    def test_auth_plain_bad_base64(self):
        s = self.session()
        self.assertEqual(s.cmd("AUTH PLAIN !!!notbase64"), b"-ERR Malformed base64\r\n")
        self.assertEqual(s.cmd("AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(s.send(b"AGFsaWNl\xff\r\n"), b"-ERR Malformed base64\r\n")
        self.assertEqual(s.cmd("AUTH PLAIN YWJj"), b"-ERR Malformed AUTH PLAIN response\r\n")
        self.assertFalse(s.transport.disconnecting)

    def test_auth_plain_authzid_mismatch(self):
        self.mailbox({}, "example.org/bob")
        s = self.session()
        token = base64.b64encode(b"bob@example.org\x00alice@example.org\x00secret").decode()
        self.assertEqual(s.cmd("AUTH PLAIN " + token), b"")
        self.clock.advance(2)
        self.assertEqual(s.take(), b"-ERR [AUTH] Authentication failed\r\n")
        self.assertEqual(self.events[0]["result"], "failed: authzid differs from authcid")
        self.assertEqual(s.cmd("STAT"), b"-ERR Not logged in\r\n")

    def test_mailbox_locked(self):
        self.mailbox({})
        factory = self.factory()
        first = self.session(factory)
        self.assertEqual(self.login(first), b"+OK Logged in, 0 messages\r\n")
        second = self.session(factory)
        self.assertEqual(self.login(second), b"-ERR [IN-USE] Mailbox is locked by another session\r\n")
        self.assertEqual(first.cmd("QUIT"), b"+OK Logging out\r\n")
        first.lose()
        self.assertEqual(self.login(second), b"+OK Logged in, 0 messages\r\n")
        second.lose()                      # dropped without QUIT: the lock goes too
        self.assertEqual(factory.locks, set())

    def test_listeners_share_limits_and_locks(self):
        from jdmail.limits import ConnectionCounter
        counter, locks = ConnectionCounter(), set()
        pop3 = self.factory(counter=counter, locks=locks, max_connections_per_ip=2)
        pop3s = self.factory(counter=counter, locks=locks, max_connections_per_ip=2, implicit_tls=True)
        self.mailbox({})
        first = self.session(pop3)
        self.assertEqual(self.login(first), b"+OK Logged in, 0 messages\r\n")
        second = self.session(pop3s)
        self.assertEqual(self.login(second), b"-ERR [IN-USE] Mailbox is locked by another session\r\n")
        third = Session(pop3s)
        self.assertEqual(third.take(), b"-ERR [SYS/TEMP] Too many connections\r\n")
        self.assertEqual(self.events[-1]["reason"], "connections from 10.0.0.1 at limit 2")

    def test_store_lock_held_elsewhere(self):
        """A store with lock_session (the Maildir's flock): held by another process, the
        login is refused [IN-USE] and this process's lock is given back; got, it is
        released when the session ends."""
        self.mailbox({})
        held, released = [True], []
        self.store.lock_session = lambda key: defer.succeed(
            None if held[0] else (lambda: released.append(key)))
        factory = self.factory()
        s = self.session(factory)
        self.assertEqual(self.login(s), b"-ERR [IN-USE] Mailbox is locked by another session\r\n")
        self.assertEqual(factory.locks, set())
        held[0] = False
        self.assertEqual(self.login(s), b"+OK Logged in, 0 messages\r\n")
        self.assertEqual(released, [])
        self.assertEqual(s.cmd("QUIT"), b"+OK Logging out\r\n")
        self.assertEqual(released, ["example.org/alice"])

    def test_store_lock_failure(self):
        self.mailbox({})
        self.store.lock_session = lambda key: defer.fail(PermissionError("lock file"))
        factory = self.factory()
        s = self.session(factory)
        self.assertEqual(self.login(s), b"-ERR [SYS/TEMP] Cannot open the mailbox, try again later\r\n")
        self.assertEqual(factory.locks, set())
        self.flushLoggedErrors(PermissionError)

    def test_remote_limits(self):
        """In a worker the connection limits are the master's: admit gives a Deferred and
        input waits for it; a refusal, a lost connection and a master that does not answer."""
        answers, calls = [], []

        class Remote:
            def open(self, ip, _total, _per_ip):
                calls.append(("open", ip))
                answers.append(defer.Deferred())
                return answers[-1]

            def close(self, ip):
                calls.append(("close", ip))
        factory = self.factory(counter=Remote())
        s = Session(factory)
        s.proto.dataReceived(b"CAPA\r\n")             # an early talker
        self.assertEqual(s.take(), b"")
        answers[0].callback(None)
        self.assertTrue(s.take().startswith(b"+OK jdmail test ready\r\n+OK Capability list follows\r\n"))
        s.lose()
        self.assertEqual(calls, [("open", "10.0.0.1"), ("close", "10.0.0.1")])
        refused = Session(factory)
        answers[1].callback("connections from 10.0.0.1 at limit 2")
        self.assertEqual(refused.take(), b"-ERR [SYS/TEMP] Too many connections\r\n")
        lost = Session(factory)
        lost.lose()
        answers[2].callback(None)                    # counted by the master: given back at once
        self.assertEqual(calls[-2:], [("open", "10.0.0.1"), ("close", "10.0.0.1")])
        unknown = Session(factory)
        answers[3].errback(ConnectionError("channel closed"))
        self.assertEqual(unknown.take(), b"-ERR [SYS/TEMP] Service not available, try again later\r\n")
        self.assertTrue(unknown.transport.disconnecting)

    def test_shut_down(self):
        self.mailbox({})
        factory = self.factory()
        s = self.session(factory)
        self.assertEqual(self.login(s), b"+OK Logged in, 0 messages\r\n")
        self.assertEqual(factory.sessions, {s.proto})
        self.assertTrue(s.proto.idle())
        s.proto.shut_down()
        self.assertEqual(s.take(), b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n")
        self.assertTrue(s.transport.disconnecting)
        s.lose()
        self.assertEqual((factory.sessions, factory.locks), (set(), set()))

    def test_default_locks_are_process_wide(self):
        self.mailbox({})
        one = POP3Factory(self.services, self.portal, {"allow_plaintext": True})
        two = POP3Factory(self.services, self.portal, {})
        self.assertIs(one.locks, pop3server.MAILBOX_LOCKS)
        first = Session(one)
        first.take()
        first.cmd("AUTH PLAIN " + base64.b64encode(b"\x00alice@example.org\x00secret").decode())
        self.addCleanup(first.lose)
        self.assertIn("example.org/alice", two.locks)

    # --- transaction -----------------------------------------------------------------------------

    def logged_in(self, messages, **settings):
        box = self.mailbox(messages)
        s = self.session(**settings)
        self.assertEqual(self.login(s), b"+OK Logged in, %d messages\r\n" % len(messages))
        return s, box

    def test_stat_list_uidl(self):
        s, _ = self.logged_in({"k1": b"a\r\n", "k2": b"bb\r\n", "k3": b"ccc\r\n"})
        self.assertEqual(s.cmd("STAT"), b"+OK 3 12\r\n")
        self.assertEqual(s.cmd("LIST"), b"+OK 3 messages (12 octets)\r\n1 3\r\n2 4\r\n3 5\r\n.\r\n")
        self.assertEqual(s.cmd("LIST 2"), b"+OK 2 4\r\n")
        self.assertEqual(s.cmd("LIST 4"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("LIST 0"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("LIST x"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("UIDL"), b"+OK\r\n1 k1\r\n2 k2\r\n3 k3\r\n.\r\n")
        self.assertEqual(s.cmd("UIDL 3"), b"+OK 3 k3\r\n")
        self.assertEqual(s.cmd("NOOP"), b"+OK\r\n")
        self.assertEqual(s.cmd("USER x"), b"-ERR Command not valid in this state\r\n")

    def test_dele_rset(self):
        s, box = self.logged_in({"k1": b"a\r\n", "k2": b"bb\r\n"})
        self.assertEqual(s.cmd("DELE 1"), b"+OK message 1 deleted\r\n")
        self.assertEqual(s.cmd("DELE 1"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("RETR 1"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("TOP 1 0"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("UIDL 1"), b"-ERR no such message\r\n")
        self.assertEqual(s.cmd("STAT"), b"+OK 1 4\r\n")
        self.assertEqual(s.cmd("LIST"), b"+OK 1 messages (4 octets)\r\n2 4\r\n.\r\n")
        self.assertEqual(s.cmd("UIDL"), b"+OK\r\n2 k2\r\n.\r\n")
        self.assertEqual(s.cmd("RSET"), b"+OK 2 messages (7 octets)\r\n")
        self.assertEqual(s.cmd("STAT"), b"+OK 2 7\r\n")
        self.assertEqual(s.cmd("QUIT"), b"+OK Logging out\r\n")
        self.assertEqual(box.removed, [])

    def test_dele_quit_removes(self):
        s, box = self.logged_in({"k1": b"a\r\n", "k2": b"bb\r\n", "k3": b"c\r\n"})
        s.cmd("DELE 3")
        s.cmd("DELE 1")
        self.assertEqual(s.cmd("QUIT"), b"+OK Logging out, 2 messages deleted\r\n")
        self.assertEqual(box.removed, ["k1", "k3"])
        self.assertEqual(list(box.messages), ["k2"])
        self.assertTrue(s.transport.disconnecting)

    def test_dele_without_quit_keeps(self):
        s, box = self.logged_in({"k1": b"a\r\n"})
        s.cmd("DELE 1")
        s.lose()
        self.assertEqual(box.removed, [])

    def test_quit_remove_failure(self):
        s, box = self.logged_in({"k1": b"a\r\n"})

        async def broken(keys):
            raise OSError("disk on fire")
        box.remove = broken
        s.cmd("DELE 1")
        self.assertEqual(s.cmd("QUIT"), b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
        [failure] = [e["log_failure"] for e in self.events if "log_failure" in e]
        self.assertTrue(failure.check(OSError))
        self.assertTrue(s.transport.disconnecting)

    def test_retr_simple(self):
        msg = b"Subject: x\r\n\r\n.\r\n..two\r\nend\r\n"
        s, _ = self.logged_in({"k1": msg, "k2": b"no final newline"})
        self.assertEqual(s.cmd("RETR 1"), b"+OK %d octets\r\nSubject: x\r\n\r\n..\r\n...two\r\nend\r\n.\r\n"
                         % len(msg))
        self.assertEqual(s.cmd("RETR 2"), b"+OK 16 octets\r\nno final newline\r\n.\r\n")
        self.assertEqual(s.cmd("RETR 3"), b"-ERR no such message\r\n")

    def test_retr_dot_line_at_16k_boundary(self):
        head = b"Subject: boundary\r\n\r\n"
        filler = b"x" * 78 + b"\r\n"
        body = head + filler * ((16384 - len(head)) // 80)
        body += b"y" * (16384 - len(body) - 2) + b"\r\n"
        self.assertEqual(len(body), 16384)
        msg = body + b".\r\n" + b"after the dot\r\n" + b".leading dot\r\n" + filler * 10
        s, _ = self.logged_in({"k1": msg})
        reply = s.cmd("RETR 1")
        self.assertEqual(s.transport.writes, 0)        # take() reset it; count the RETR alone:
        s.proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(s.transport.writes, 1)
        first, rest = reply.split(b"\r\n", 1)
        self.assertEqual(first, b"+OK %d octets" % len(msg))
        self.assertTrue(b"y\r\n..\r\nafter the dot\r\n..leading dot\r\n" in rest)
        self.assertEqual(unstuff(rest), msg)

    def test_retr_gone_or_unreadable(self):
        s, _ = self.logged_in({"k1": b"Subject: a\r\n\r\nx\r\n", "k2": b"Subject: b\r\n\r\ny\r\n",
                               "k3": b"big\r\n" * 20000})
        mbox = s.proto.mbox
        real = mbox.open

        def open_(key):
            if key == "k1":
                raise FileNotFoundError(key)
            if key in ("k2", "k3"):
                raise PermissionError(key)
            return real(key)
        mbox.open = open_
        self.assertEqual(s.cmd("RETR 1"), b"-ERR Message no longer available\r\n")
        self.assertEqual(s.cmd("TOP 2 0"), b"-ERR [SYS/TEMP] Cannot read the message\r\n")
        self.assertEqual(s.cmd("RETR 3"), b"-ERR [SYS/TEMP] Cannot read the message\r\n")     # thread pool
        failures = [e["log_failure"] for e in self.events if "log_failure" in e]
        self.assertEqual(len(failures), 2)
        self.assertTrue(all(f.check(PermissionError) for f in failures))
        self.assertEqual(s.cmd("NOOP"), b"+OK\r\n")

    def test_retr_medium_uses_thread_pool(self):
        msg = (b".x" * 40 + b"\r\n") * 2000          # 164 KB, every line dot-stuffed
        s, _ = self.logged_in({"k1": msg})
        self.services.blocking_calls = 0
        s.proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(self.services.blocking_calls, 1)
        self.assertEqual(s.transport.writes, 1)
        reply = s.take()
        self.assertEqual(unstuff(reply.split(b"\r\n", 1)[1]), msg)

    def test_retr_big_streams(self):
        # a dot line right at each 256 KB chunk boundary, and a message without final CRLF
        line = b"z" * 1022 + b"\r\n"
        chunk = line * 255 + b"w" * 1022 + b"\r\n"
        self.assertEqual(len(chunk), 256 * 1024)
        msg = (chunk + b".") + (b"\r\n" + chunk[:-3]) * 5 + b"\r\n.." + b"x" * 100
        s, _ = self.logged_in({"k1": msg})
        reply = s.cmd("RETR 1")
        first, rest = reply.split(b"\r\n", 1)
        self.assertEqual(first, b"+OK %d octets" % len(msg))
        self.assertEqual(unstuff(rest), msg + b"\r\n")
        self.assertEqual(s.cmd("NOOP"), b"+OK\r\n")

    def test_top(self):
        msg = b"Subject: t\r\nFrom: a@b\r\n\r\nl1\r\n.l2\r\nl3\r\n"
        s, _ = self.logged_in({"k1": msg, "k2": b"Subject: only headers\r\n"})
        self.assertEqual(s.cmd("TOP 1 0"), b"+OK\r\nSubject: t\r\nFrom: a@b\r\n\r\n.\r\n")
        self.assertEqual(s.cmd("TOP 1 2"), b"+OK\r\nSubject: t\r\nFrom: a@b\r\n\r\nl1\r\n..l2\r\n.\r\n")
        self.assertEqual(s.cmd("TOP 1 99"), b"+OK\r\n" + msg.replace(b"\n.", b"\n..") + b".\r\n")
        self.assertEqual(s.cmd("TOP 2 5"), b"+OK\r\nSubject: only headers\r\n.\r\n")
        self.assertEqual(s.cmd("TOP 1"), b"-ERR Syntax: TOP <message> <lines>\r\n")
        self.assertEqual(s.cmd("TOP 1 -1"), b"-ERR Syntax: TOP <message> <lines>\r\n")
        self.assertEqual(s.cmd("TOP 9 1"), b"-ERR no such message\r\n")

    def test_pipelined_commands_answered_in_order(self):
        s, _ = self.logged_in({"k1": b"a\r\n", "k2": b"b\r\n"})
        reply = s.send(b"STAT\r\nRETR 1\r\nDELE 1\r\nUIDL\r\nNOOP\r\n")
        self.assertEqual(reply, b"+OK 2 6\r\n+OK 3 octets\r\na\r\n.\r\n+OK message 1 deleted\r\n"
                         b"+OK\r\n2 k2\r\n.\r\n+OK\r\n")

    def test_pipelined_after_slow_login(self):
        self.mailbox({"k1": b"a\r\n"})
        s = self.session()
        reply = s.send(b"USER alice@example.org\r\nPASS wrong\r\nSTAT\r\n")
        self.assertEqual(reply, b"+OK\r\n")
        self.clock.advance(2)
        self.assertEqual(s.take(), b"-ERR [AUTH] Authentication failed\r\n-ERR Not logged in\r\n")

    def test_dot_stuff(self):
        self.assertEqual(dot_stuff(b".a\r\n.b\r\nc.\r\n"), b"..a\r\n..b\r\nc.\r\n")
        self.assertEqual(dot_stuff(b".a", at_line_start=False), b".a")
        self.assertEqual(dot_stuff(b""), b"")


class EndToEndTests(unittest.TestCase):
    """A real listener, the real SQLite directory and Maildir store, and poplib in a thread."""

    def setUp(self):
        from twisted.python.threadpool import ThreadPool
        from jdmail.store.maildir import MaildirStore
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        pool = ThreadPool(1, 4, name="test-pop3")
        pool.start()
        self.addCleanup(pool.stop)
        self.services = Services(reactor=reactor, config=None, hostname="mx.example.org",
                                 datadir=self.base, threadpool=pool)
        self.services.store = MaildirStore(os.path.join(self.base, "mail"), self.services)
        self.services.directory = self.make_directory()
        self.portal = make_portal(self.services.directory)

    def make_directory(self):
        from jdmail.directory.sqlite import SQLiteDirectory
        from jdmail.passwords import hash_password
        directory = SQLiteDirectory(os.path.join(self.base, "users.db"), self.services)
        directory.add_domain("example.org")
        directory.add_user("alice@example.org", hash_password("s3cret pass"))
        closer = getattr(directory, "close", None)
        if closer is not None:
            self.addCleanup(closer)
        return directory

    async def listen(self, **settings):
        base = {"banner": "jdmail e2e", "allow_plaintext": False, "fail_delay": 0.1}
        base.update(settings)
        self.factory = POP3Factory(self.services, self.portal, base)
        port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def deliver(self, *messages):
        for i, msg in enumerate(messages):
            spool = os.path.join(self.base, f"spool{i}")
            with open(spool, "wb") as f:
                f.write(msg)
            await self.services.store.deliver(["example.org/alice"], spool)
            os.unlink(spool)

    async def test_poplib_session_over_stls(self):
        big = b"Subject: big\r\n\r\n" + b"".join(b"%05d .......................\r\n" % i
                                                  for i in range(45000))
        big = big.replace(b"\r\n00100 ", b"\r\n.\r\n00100 ")
        small = b"Subject: small\r\n\r\n.\r\nhello\r\n"
        await self.deliver(small, big)
        port = await self.listen(tls_context=ssl.PrivateCertificate.loadPEM(
            open(PEM, "rb").read()).options())
        maildir = os.path.join(self.base, "mail", "example.org", "alice", "Maildir")

        def client():
            pop = poplib.POP3("127.0.0.1", port, timeout=20)
            try:
                result = {"welcome": pop.getwelcome()}
                try:
                    pop.user("alice@example.org")
                except poplib.error_proto as e:
                    result["plain_refused"] = e.args[0]
                ctx = stdlib_ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = stdlib_ssl.CERT_NONE
                pop.stls(ctx)
                result["capa"] = pop.capa()
                pop.user("alice@example.org")
                result["login"] = pop.pass_("s3cret pass")
                result["stat"] = pop.stat()
                result["uidl"] = pop.uidl()[1]
                result["small"] = pop.retr(1)[1]
                result["big"] = pop.retr(2)[1]
                result["top"] = pop.top(2, 1)[1]
                pop.dele(1)
                result["quit"] = pop.quit()
            except BaseException:
                pop.close()
                raise
            return result

        r = await threads.deferToThread(client)
        self.assertEqual(r["welcome"], b"+OK jdmail e2e")
        self.assertEqual(r["plain_refused"], PLAINTEXT_REFUSED.rstrip())
        self.assertIn("USER", r["capa"])
        self.assertEqual(r["login"], b"+OK Logged in, 2 messages")
        self.assertEqual(r["stat"], (2, len(small) + len(big)))
        self.assertEqual(r["small"], small.split(b"\r\n")[:-1])
        self.assertEqual(r["big"], big.split(b"\r\n")[:-1])
        self.assertEqual(r["top"], [b"Subject: big", b"", b"00000 ......................."])
        self.assertEqual(r["quit"], b"+OK Logging out, 1 messages deleted")
        uids = [line.split()[1].decode() for line in r["uidl"]]
        left = os.listdir(os.path.join(maildir, "new"))
        self.assertEqual(len(left), 1)
        self.assertEqual(left[0], uids[1])

        # the lock was released: log in again, in plaintext where it is allowed
        await self.factory_port_cleanup()
        port = await self.listen(allow_plaintext=True)

        def again():
            pop = poplib.POP3("127.0.0.1", port, timeout=20)
            pop.user("alice@example.org")
            try:
                pop.pass_("wrong")
            except poplib.error_proto as e:
                failed = e.args[0]
            pop.user("alice@example.org")
            pop.pass_("s3cret pass")
            uidl = pop.uidl()[1]
            pop.quit()
            return failed, uidl

        failed, uidl = await threads.deferToThread(again)
        self.assertEqual(failed, b"-ERR [AUTH] Authentication failed")
        self.assertEqual([line.split()[1].decode() for line in uidl], [uids[1]])

    async def test_pop3s_implicit_tls(self):
        from twisted.protocols.tls import TLSMemoryBIOFactory
        await self.deliver(b"Subject: s\r\n\r\nover pop3s\r\n")
        context = ssl.PrivateCertificate.loadPEM(open(PEM, "rb").read()).options()
        self.factory = POP3Factory(self.services, self.portal,
                                   {"banner": "pop3s", "allow_plaintext": False,
                                    "tls_context": context, "implicit_tls": True})
        port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            TLSMemoryBIOFactory(context, False, self.factory))
        self.addCleanup(port.stopListening)

        def client():
            ctx = stdlib_ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = stdlib_ssl.CERT_NONE
            pop = poplib.POP3_SSL("127.0.0.1", port.getHost().port, context=ctx, timeout=20)
            capa = pop.capa()
            pop.user("alice@example.org")
            pop.pass_("s3cret pass")
            msg = pop.retr(1)[1]
            pop.quit()
            return capa, msg

        capa, msg = await threads.deferToThread(client)
        self.assertIn("USER", capa)
        self.assertNotIn("STLS", capa)
        self.assertEqual(msg, [b"Subject: s", b"", b"over pop3s"])
        await self.factory_port_cleanup()

    async def factory_port_cleanup(self):
        # wait until the server side of the first session has gone, so its lock is released
        for _ in range(100):
            if not self.factory.locks and not self.factory.counter.total:
                return
            d = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        self.fail("the first session never ended")
