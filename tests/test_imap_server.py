"""The IMAP server over an in-memory store: exact responses for RFC 3501 and extensions."""

import base64

from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest

from jdmail.imap import server as imap_server
from jdmail.imap.listing import compile_pattern
from jdmail.imap.responses import parse_date_time
from jdmail.mime import MessageStructure
from tests.imap_fakes import USERS, Session, make_factory

M1 = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: first\r\n"
      b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nHello world\r\n")
M2 = (b"From: carol@example.org\r\nSubject: multi\r\nMIME-Version: 1.0\r\n"
      b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
      b"--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n"
      b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
      b"--inner\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--inner--\r\n"
      b"--outer\r\nContent-Type: application/octet-stream\r\n\r\nxyz\r\n--outer--\r\n")
M3 = b"From: dave@example.org\r\nSubject: third \xc3\xa9\r\n\r\n" + b"x" * 3000 + b"\r\n"
T0 = 1700000000.0       # 14-Nov-2023 22:13:20 +0000


def b64(text):
    return base64.b64encode(text.encode()).decode()


class Base(unittest.TestCase):
    settings = {}

    def setUp(self):
        self.factory = make_factory(**self.settings)
        self.reactor = self.factory.reactor

    def session(self, login=True, **kw):
        s = Session(self.factory, **kw)
        self.addCleanup(s.close)
        if login:
            s.login()
        return s

    def selected(self, messages=(M1, M2, M3), flags=None, name="INBOX"):
        s = self.session()
        store = s.store
        for i, m in enumerate(messages):
            store.deliver(m, folder=name, flags=(flags or {}).get(i + 1, ()), internaldate=T0 + i)
        store.folders[name].recent.clear()     # as if another session had seen them: no \Recent here
        lines = s.cmd("S1 SELECT " + name)
        self.assertTrue(lines[-1].startswith("S1 OK"), lines)
        return s

    def assertTagged(self, lines, expected):
        self.assertEqual(lines[-1], expected, lines)


class GreetingAndCapabilityTests(Base):
    settings = {"implicit_tls": False, "tls_context": object()}

    def test_greeting_before_tls(self):
        s = self.session(login=False, tls_transport=True)
        self.assertEqual(s.greeting, "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE STARTTLS "
                                     "LOGINDISABLED] jdmail IMAP4rev1 Service ready\r\n")

    def test_login_refused_without_tls(self):
        s = self.session(login=False, tls_transport=True)
        self.assertEqual(s.cmd("a LOGIN bob@example.org secret"),
                         ["a NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use STARTTLS"])
        self.assertIsNone(s.proto.account)

    def test_authenticate_plain_refused_without_tls(self):
        s = self.session(login=False, tls_transport=True)
        self.assertEqual(s.cmd("a AUTHENTICATE PLAIN " + b64("\0bob@example.org\0secret")),
                         ["a NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use STARTTLS"])
        self.assertIsNone(s.proto.account)

    def test_starttls_discards_pipelined_plaintext(self):
        s = self.session(login=False, tls_transport=True)
        out = s.send("a STARTTLS\r\nb LOGIN bob@example.org secret\r\n")
        self.assertEqual(out, "a OK Begin TLS negotiation now\r\n")
        self.assertIs(s.transport.tls_started, self.factory.tls_context)
        self.assertIsNone(s.proto.account)
        caps = s.cmd("c CAPABILITY")
        self.assertEqual(caps, ["* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN",
                                "c OK Capability completed"])
        self.assertTagged(s.cmd("d LOGIN bob@example.org secret"), "d OK [CAPABILITY " +
                          " ".join(s.proto.capabilities()) + "] Logged in")

    def test_starttls_twice(self):
        s = self.session(login=False, tls_transport=True)
        s.cmd("a STARTTLS")
        self.assertEqual(s.cmd("b STARTTLS"), ["b BAD TLS is already active"])

    def test_starttls_unavailable(self):
        s = self.session(login=False)       # a transport without startTLS
        self.assertEqual(s.cmd("a STARTTLS"), ["a NO TLS is not available"])


class PlaintextAllowedTests(Base):
    settings = {"implicit_tls": False, "allow_plaintext": True}

    def test_capability(self):
        s = self.session(login=False)
        self.assertIn(" AUTH=PLAIN]", s.greeting)
        self.assertNotIn("LOGINDISABLED", s.greeting)
        self.assertNotIn("STARTTLS", s.greeting)
        s.login()


class AuthTests(Base):

    def test_capability_after_login(self):
        s = self.session()
        caps = s.cmd("a CAPABILITY")[0].split()[2:]
        for c in ("IMAP4rev1", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "NAMESPACE", "QUOTA", "LITERAL+",
                  "ENABLE", "ID", "UNSELECT", "CHILDREN", "CONDSTORE", "QRESYNC", "ESEARCH", "SORT"):
            self.assertIn(c, caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertNotIn("STARTTLS", caps)

    def test_login_quoted_and_literal(self):
        s = self.session(login=False)
        self.assertEqual(s.send('a LOGIN "bob@example.org" {6}\r\n'), "+ Ready for literal data\r\n")
        self.assertTrue(s.send("secret\r\n").startswith("a OK [CAPABILITY IMAP4rev1 "))

    def test_login_wrong_password(self):
        s = self.session(login=False)
        with capturedLogs() as events:
            self.assertEqual(s.cmd("a LOGIN bob@example.org nope"),
                             ["a NO [AUTHENTICATIONFAILED] Authentication failed"])
        lines = [e for e in events if e.get("log_format", "").startswith("imap login")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["result"], "failed: wrong user name or password")
        self.assertEqual(lines[0]["client"], "10.0.0.1")
        self.assertNotIn("nope", repr(lines[0]))

    def test_login_logged_once(self):
        s = self.session(login=False)
        with capturedLogs() as events:
            s.login()
        lines = [e for e in events if e.get("log_format", "").startswith("imap login")]
        self.assertEqual([(e["user"], e["mech"], e["result"]) for e in lines],
                         [("bob@example.org", "LOGIN", "ok")])

    def test_authenticate_plain_initial_response(self):
        s = self.session(login=False)
        lines = s.cmd("a AUTHENTICATE PLAIN " + b64("\0bob@example.org\0secret"))
        self.assertTrue(lines[-1].startswith("a OK [CAPABILITY "), lines)
        self.assertEqual(s.proto.account.name, "bob@example.org")

    def test_authenticate_plain_continuation(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a AUTHENTICATE PLAIN"), ["+ "])
        lines = s.cmd(b64("bob@example.org\0bob@example.org\0secret"))
        self.assertTrue(lines[-1].startswith("a OK [CAPABILITY "), lines)

    def test_authenticate_authzid_must_be_authcid(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a AUTHENTICATE PLAIN " + b64("alice@example.org\0bob@example.org\0secret")),
                         ["a NO [AUTHENTICATIONFAILED] Authentication failed"])
        self.assertIsNone(s.proto.account)

    def test_authenticate_cancel(self):
        s = self.session(login=False)
        s.cmd("a AUTHENTICATE PLAIN")
        self.assertEqual(s.cmd("*"), ["a BAD Authentication cancelled"])
        self.assertEqual(s.cmd("b NOOP"), ["b OK Noop completed"])

    def test_authenticate_bad_base64(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a AUTHENTICATE PLAIN !!!"),
                         ["a BAD Invalid base64 in the authentication response"])

    def test_authenticate_unknown_mechanism(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a AUTHENTICATE CRAM-MD5"), ["a NO Unsupported authentication mechanism"])

    def test_max_failures_closes(self):
        s = self.session(login=False)
        s.cmd("a LOGIN bob@example.org x")
        s.cmd("b LOGIN bob@example.org x")
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.cmd("c LOGIN bob@example.org x"),
                         ["c NO [AUTHENTICATIONFAILED] Authentication failed", "* BYE Too many failed logins"])
        self.assertTrue(s.transport.disconnecting)

    def test_directory_unavailable(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a LOGIN down@example.org x"),
                         ["a NO [UNAVAILABLE] Authentication temporarily unavailable, try again later"])

    def test_already_logged_in(self):
        s = self.session()
        self.assertEqual(s.cmd("a LOGIN bob@example.org secret"), ["a BAD Already logged in"])

    def test_not_logged_in(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a SELECT INBOX"), ["a BAD Not logged in"])
        self.assertEqual(s.cmd("b FETCH 1 FLAGS"), ["b BAD Not logged in"])

    def test_no_mailbox_selected(self):
        s = self.session()
        self.assertEqual(s.cmd("a FETCH 1 FLAGS"), ["a BAD No mailbox selected"])


class FailDelayTests(Base):
    settings = {"fail_delay": 2.0}

    def test_failed_login_is_slowed(self):
        s = self.session(login=False)
        self.assertEqual(s.send("a LOGIN bob@example.org x\r\nb NOOP\r\n"), "")
        self.reactor.advance(1.9)
        self.assertEqual(s.take(), "")
        self.reactor.advance(0.2)
        self.assertEqual(s.take(), "a NO [AUTHENTICATIONFAILED] Authentication failed\r\nb OK Noop completed\r\n")


class LimitTests(Base):
    settings = {"max_connections_per_ip": 2, "max_connections_per_user": 1}

    def test_per_ip(self):
        self.session(login=False)
        self.session(login=False)
        third = self.session(login=False)
        self.assertEqual(third.greeting, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n")
        self.assertTrue(third.transport.disconnecting)
        other = self.session(login=False, ip="10.0.0.2")
        self.assertTrue(other.greeting.startswith("* OK"))

    def test_per_ip_released(self):
        a = self.session(login=False)
        self.session(login=False)
        a.close()
        self.assertTrue(self.session(login=False).greeting.startswith("* OK"))

    def test_per_user(self):
        self.session()
        second = self.session(login=False, ip="10.0.0.3")
        self.assertEqual(second.cmd("a LOGIN bob@example.org secret"),
                         ["a NO [LIMIT] Too many connections for this user"])
        self.assertEqual(self.factory.services.store.accounts.keys(), {"bob@example.org"})
        other = self.session(login=False, ip="10.0.0.3")
        other.login("alice@example.org")


class _Remote:
    """A worker's counter (jdmail.workers.worker.RemoteCounter): every open is a Deferred
    the test answers."""

    remote = True

    def __init__(self):
        self.answers, self.calls = [], []

    def open(self, key, _total, _per_key):
        from twisted.internet.defer import Deferred
        self.calls.append(("open", key))
        self.answers.append(Deferred())
        return self.answers[-1]

    def close(self, key):
        self.calls.append(("close", key))


class RemoteLimitTests(Base):
    """In a worker process the limits are counted by the master: admission and the
    per-user count wait for its answer."""

    def setUp(self):
        self.counter, self.users = _Remote(), _Remote()
        self.factory = make_factory(counter=self.counter, user_counter=self.users)
        self.reactor = self.factory.reactor

    def test_greeting_waits_and_early_input_is_kept(self):
        s = Session(self.factory)
        self.addCleanup(s.close)
        self.assertEqual(s.greeting, "")
        s.proto.dataReceived(b"a NOOP\r\n")
        self.assertEqual(s.take(), "")
        self.counter.answers[0].callback(None)
        lines = s.take().split("\r\n")
        self.assertTrue(lines[0].startswith("* OK [CAPABILITY IMAP4rev1"), lines)
        self.assertEqual(lines[1], "a OK Noop completed")
        self.assertEqual(self.factory.sessions, {s.proto})
        s.close()
        self.assertEqual(self.counter.calls, [("open", "10.0.0.1"), ("close", "10.0.0.1")])
        self.assertEqual(self.factory.sessions, set())

    def test_refused_unknown_and_lost(self):
        refused = Session(self.factory)
        self.counter.answers[0].callback("connections from 10.0.0.1 at limit 2")
        self.assertEqual(refused.take(), "* BYE [UNAVAILABLE] Too many connections, try again later\r\n")
        unknown = Session(self.factory)
        self.counter.answers[1].errback(ConnectionError("channel closed"))
        self.assertEqual(unknown.take(), "* BYE [UNAVAILABLE] Service not available, try again later\r\n")
        self.assertTrue(unknown.transport.disconnecting)
        self.flushLoggedErrors(ConnectionError)
        lost = Session(self.factory)
        lost.close()
        self.counter.answers[2].callback(None)       # counted by the master: given back at once
        self.assertEqual(self.counter.calls[-2:], [("open", "10.0.0.1"), ("close", "10.0.0.1")])

    def test_user_count_asked_of_the_master(self):
        s = Session(self.factory)
        self.addCleanup(s.close)
        self.counter.answers[0].callback(None)
        s.take()
        self.assertEqual(s.send("a LOGIN bob@example.org " + USERS["bob@example.org"] + "\r\n"), "")
        self.users.answers[0].callback("connections from bob@example.org at limit 1")
        self.assertEqual(s.take(), "a NO [LIMIT] Too many connections for this user\r\n")
        self.assertEqual(s.send("b LOGIN bob@example.org " + USERS["bob@example.org"] + "\r\n"), "")
        self.users.answers[1].callback(None)
        self.assertTrue(s.take().startswith("b OK"))
        s.close()
        self.assertEqual(self.users.calls, [("open", "bob@example.org"), ("open", "bob@example.org"),
                                            ("close", "bob@example.org")])

    def test_shut_down(self):
        s = Session(self.factory)
        self.counter.answers[0].callback(None)
        s.take()
        self.assertTrue(s.proto.idle())
        s.proto.shut_down()
        self.assertEqual(s.take(), "* BYE Server shutting down, try again later\r\n")
        self.assertTrue(s.transport.disconnecting)
        s.close()


class FramingTests(Base):

    def test_pipelined_commands_answered_in_order(self):
        s = self.session()
        out = s.send("a NOOP\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n")
        tags = [line.split()[0] for line in out.split("\r\n") if line and not line.startswith("*")]
        self.assertEqual(tags, ["a", "b", "c", "d"])

    def test_pipelined_responses_in_one_write(self):
        s = self.selected()
        writes = []
        original = s.transport.write
        s.transport.write = lambda data: (writes.append(data), original(data))
        s.send("a NOOP\r\nb FETCH 1:3 (FLAGS)\r\nc UID SEARCH ALL\r\n")
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].endswith(b"c OK UID Search completed\r\n"))

    def test_negative_literal(self):
        s = self.session()
        self.assertEqual(s.cmd("a LOGIN {-1}"), ["a BAD Invalid literal size"])
        self.assertFalse(s.transport.disconnecting)

    def test_literal_over_limit_gets_no_continuation(self):
        s = self.session()
        self.assertEqual(s.cmd("a CREATE {%d}" % (64 * 1024 + 1)), ["a BAD Literal too large"])
        self.assertEqual(s.cmd("b NOOP"), ["b OK Noop completed"])

    def test_append_literal_bounded_by_max_message_size(self):
        s = self.session()
        self.assertEqual(s.cmd("a APPEND INBOX {100001}"), ["a BAD [TOOBIG] Literal too large"])
        self.assertEqual(s.cmd("b APPEND INBOX {100000}"), ["+ Ready for literal data"])

    def test_huge_literal(self):
        s = self.session()
        self.assertEqual(s.cmd("a APPEND INBOX {99999999999999999999}"), ["a BAD [TOOBIG] Literal too large"])

    def test_nonsync_literal_over_limit_closes(self):
        s = self.session()
        self.assertEqual(s.cmd("a APPEND INBOX {200000+}"),
                         ["a BAD [TOOBIG] Literal too large", "* BYE Non-synchronizing literal too large"])
        self.assertTrue(s.transport.disconnecting)

    def test_nonsync_literal(self):
        s = self.session()
        self.assertEqual(s.send("a CREATE {3+}\r\nfoo\r\n"), "a OK Create completed\r\n")
        self.assertIn("foo", s.store.folders)

    def test_literal_before_login_limited(self):
        s = self.session(login=False)
        self.assertEqual(s.cmd("a LOGIN {9000}"), ["a BAD Literal too large"])

    def test_line_too_long_before_login(self):
        s = self.session(login=False)
        out = s.send("a LOGIN " + "x" * 9000)
        self.assertEqual(out, "a BAD Command line too long\r\n* BYE Command line too long\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_commands_before_login_counted(self):
        s = self.session(login=False)
        out = s.send("a NOOP\r\n" * 31)
        self.assertTrue(out.endswith("* BYE Too many commands before login\r\n"))
        self.assertTrue(s.transport.disconnecting)

    def test_bad_commands_counted(self):
        s = self.session()
        out = s.send("a FOO\r\n" * 20)
        self.assertTrue(out.endswith("a BAD Unknown command\r\n* BYE Too many invalid commands\r\n"))
        self.assertTrue(s.transport.disconnecting)

    def test_parse_errors(self):
        s = self.session()
        self.assertEqual(s.cmd("+ NOOP"), ["* BAD Invalid tag"])
        self.assertEqual(s.cmd('a LOGIN "x'), ["a BAD Unterminated quoted string"])
        self.assertEqual(s.cmd("a"), ["a BAD Missing command"])

    def test_bytes_split_anywhere(self):
        s = self.session()
        out = ""
        for ch in "a CREATE {3}\r\n":
            out += s.send(ch)
        self.assertEqual(out, "+ Ready for literal data\r\n")
        for ch in "bar\r\n":
            out += s.send(ch)
        self.assertTrue(out.endswith("a OK Create completed\r\n"))

    def test_timeout_before_login(self):
        s = self.session(login=False)
        self.reactor.advance(59)
        self.assertFalse(s.transport.disconnecting)
        self.reactor.advance(2)
        self.assertEqual(s.take(), "* BYE Autologout; idle for too long\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_trickling_bytes_before_login_do_not_keep_the_connection(self):
        s = self.session(login=False)
        out = ""
        for ch in "a LOGIN bob@example.org":
            self.reactor.advance(10)
            out += s.take()
            s.send(ch)
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(out, "* BYE Autologout; idle for too long\r\n")

    def test_timeout_after_login_is_30_minutes(self):
        s = self.session()
        self.reactor.advance(29 * 60)
        self.assertFalse(s.transport.disconnecting)
        self.reactor.advance(61)
        self.assertTrue(s.transport.disconnecting)

    def test_logout(self):
        s = self.session()
        self.assertEqual(s.cmd("a LOGOUT"), ["* BYE Logging out", "a OK Logout completed"])
        self.assertTrue(s.transport.disconnecting)

    def test_nodelay(self):
        class T(StringTransport):
            nodelay = None

            def setTcpNoDelay(self, v):
                self.nodelay = v
        proto = self.factory.buildProtocol(None)
        t = T()
        proto.makeConnection(t)
        self.assertTrue(t.nodelay)
        proto.connectionLost(None)


class SelectTests(Base):

    def test_select_responses(self):
        s = self.session()
        st = s.store
        st.deliver(M1, flags=["\\Seen"], internaldate=T0)
        st.deliver(M2, flags=["$Junk"], internaldate=T0)
        box = st.folders["INBOX"]
        lines = s.cmd("a SELECT INBOX")
        self.assertEqual(lines, [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk \\*)] Flags permitted",
            "* 2 EXISTS",
            "* 2 RECENT",
            "* OK [UNSEEN 2] First unseen",
            "* OK [UIDVALIDITY %d] UIDs valid" % box.uidvalidity,
            "* OK [UIDNEXT 3] Predicted next UID",
            "* OK [HIGHESTMODSEQ 3] Highest",
            "a OK [READ-WRITE] SELECT completed"])

    def test_examine_is_read_only(self):
        s = self.session()
        s.store.deliver(M1)
        lines = s.cmd("a EXAMINE inbox")
        self.assertIn("* OK [PERMANENTFLAGS ()] Read-only mailbox", lines)
        self.assertEqual(lines[-1], "a OK [READ-ONLY] EXAMINE completed")
        self.assertEqual(s.cmd("b STORE 1 +FLAGS (\\Seen)"), ["b NO Mailbox is read-only"])
        self.assertEqual(s.cmd("c FETCH 1 (BODY[])")[-1], "c OK Fetch completed")
        self.assertEqual(s.store.folders["INBOX"].messages[1].flags, frozenset())
        self.assertEqual(s.cmd("d EXPUNGE"), ["d NO Mailbox is read-only"])

    def test_select_missing_deselects(self):
        s = self.selected()
        self.assertEqual(s.cmd("a SELECT nothere"), ["a NO Mailbox does not exist"])
        self.assertEqual(s.cmd("b FETCH 1 FLAGS"), ["b BAD No mailbox selected"])

    def test_unselect_and_close(self):
        s = self.selected(flags={1: ["\\Deleted"]})
        self.assertEqual(s.cmd("a UNSELECT"), ["a OK Unselect completed"])
        self.assertEqual(len(s.store.folders["INBOX"].messages), 3)
        s.cmd("b SELECT INBOX")
        self.assertEqual(s.cmd("c CLOSE"), ["c OK Close completed"])
        self.assertEqual(sorted(s.store.folders["INBOX"].messages), [2, 3])
        self.assertEqual(s.proto.state, "auth")


class FetchTests(Base):

    def test_index_items(self):
        s = self.selected(flags={2: ["\\Seen", "\\Flagged"]})
        self.assertEqual(s.cmd("a FETCH 1:2 (FLAGS UID RFC822.SIZE INTERNALDATE)"), [
            '* 1 FETCH (FLAGS () UID 1 RFC822.SIZE %d INTERNALDATE "14-Nov-2023 22:13:20 +0000")' % len(M1),
            '* 2 FETCH (FLAGS (\\Flagged \\Seen) UID 2 RFC822.SIZE %d INTERNALDATE "14-Nov-2023 22:13:21 +0000")'
            % len(M2),
            "a OK Fetch completed"])

    def test_recent_flag(self):
        s = self.session()
        s.store.deliver(M1)
        s.cmd("a SELECT INBOX")
        self.assertEqual(s.cmd("b FETCH 1 FLAGS"), ["* 1 FETCH (FLAGS (\\Recent))", "b OK Fetch completed"])
        self.assertEqual(s.cmd("c SEARCH RECENT"), ["* SEARCH 1", "c OK Search completed"])
        self.assertEqual(s.cmd("d STORE 1 +FLAGS (\\Seen)"),
                         ["* 1 FETCH (FLAGS (\\Seen \\Recent))", "d OK Store completed"])
        other = self.session()
        other.cmd("a SELECT INBOX")
        self.assertEqual(other.cmd("b FETCH 1 FLAGS"), ["* 1 FETCH (FLAGS (\\Seen))", "b OK Fetch completed"])

    def test_fast_macro(self):
        s = self.selected()
        self.assertEqual(s.cmd("a FETCH 1 FAST")[0],
                         '* 1 FETCH (FLAGS () INTERNALDATE "14-Nov-2023 22:13:20 +0000" RFC822.SIZE %d)' % len(M1))

    def test_flags_fetch_opens_no_file(self):
        s = self.selected()
        folder = s.proto.folder
        opened = []
        folder.open_message = lambda uid: opened.append(uid)
        folder.structure = lambda uid: opened.append(uid)
        s.cmd("a UID FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE MODSEQ)")
        self.assertEqual(opened, [])

    def test_star_and_reversed_ranges(self):
        s = self.selected()
        self.assertEqual(s.cmd("a FETCH * UID"), ["* 3 FETCH (UID 3)", "a OK Fetch completed"])
        self.assertEqual(s.cmd("b FETCH 3:2 UID"), ["* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "b OK Fetch completed"])
        self.assertEqual(s.cmd("c FETCH *:2,1 UID"),
                         ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "c OK Fetch completed"])

    def test_sequence_past_end(self):
        s = self.selected()
        self.assertEqual(s.cmd("a FETCH 4 UID"), ["a BAD Invalid message sequence number: 4"])
        self.assertEqual(s.cmd("b FETCH 0 UID"), ["b BAD Invalid number in sequence set"])
        self.assertEqual(s.cmd("c FETCH 1:x UID"), ["c BAD Invalid sequence set"])

    def test_uid_fetch_past_end(self):
        s = self.selected()
        self.assertEqual(s.cmd("a UID FETCH 10:20 FLAGS"), ["a OK UID Fetch completed"])
        self.assertEqual(s.cmd("b UID FETCH 10:* FLAGS"),
                         ["* 3 FETCH (UID 3 FLAGS ())", "b OK UID Fetch completed"])
        self.assertEqual(s.cmd("c UID FETCH 2,99 FLAGS"),
                         ["* 2 FETCH (UID 2 FLAGS ())", "c OK UID Fetch completed"])

    def test_empty_mailbox(self):
        s = self.selected(messages=())
        self.assertEqual(s.cmd("a FETCH 1:* FLAGS"), ["a OK Fetch completed"])
        self.assertEqual(s.cmd("b UID FETCH 1:* FLAGS"), ["b OK UID Fetch completed"])
        self.assertEqual(s.cmd("c SEARCH ALL"), ["* SEARCH", "c OK Search completed"])

    def test_body_peek_does_not_set_seen(self):
        s = self.selected()
        out = s.send("a FETCH 1 (BODY.PEEK[])\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[] {%d}\r\n" % len(M1) + M1.decode() + ")\r\na OK Fetch completed\r\n")
        self.assertEqual(s.store.folders["INBOX"].messages[1].flags, frozenset())

    def test_body_sets_seen_and_reports_flags(self):
        s = self.selected()
        out = s.send("a FETCH 1 (BODY[TEXT])\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[TEXT] {13}\r\nHello world\r\n FLAGS (\\Seen))\r\na OK Fetch completed\r\n")
        self.assertEqual(s.store.folders["INBOX"].messages[1].flags, frozenset({"\\Seen"}))
        # already seen: no FLAGS added
        out = s.send("b FETCH 1 (BODY[TEXT])\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[TEXT] {13}\r\nHello world\r\n)\r\nb OK Fetch completed\r\n")

    def test_rfc822_sets_seen(self):
        s = self.selected()
        out = s.send("a UID FETCH 1 RFC822\r\n")
        self.assertEqual(out, "* 1 FETCH (UID 1 RFC822 {%d}\r\n%s FLAGS (\\Seen))\r\na OK UID Fetch completed\r\n"
                         % (len(M1), M1.decode()))

    def test_rfc822_header_and_text(self):
        s = self.selected()
        head, _, body = M1.partition(b"\r\n\r\n")
        out = s.send("a FETCH 1 (RFC822.HEADER)\r\n")
        self.assertEqual(out, "* 1 FETCH (RFC822.HEADER {%d}\r\n%s\r\n\r\n)\r\na OK Fetch completed\r\n"
                         % (len(head) + 4, head.decode()))
        self.assertEqual(s.store.folders["INBOX"].messages[1].flags, frozenset())
        out = s.send("b FETCH 1 (RFC822.TEXT)\r\n")
        self.assertEqual(out, "* 1 FETCH (RFC822.TEXT {13}\r\nHello world\r\n FLAGS (\\Seen))\r\n"
                         "b OK Fetch completed\r\n")

    def test_partial(self):
        s = self.selected()
        out = s.send("a FETCH 1 (BODY.PEEK[]<0.4> BODY.PEEK[]<6.5> BODY.PEEK[]<5000.10>)\r\n")
        self.assertEqual(out, '* 1 FETCH (BODY[]<0> {4}\r\nFrom BODY[]<6> {5}\r\nAlice BODY[]<5000> {0}\r\n)\r\n'
                              'a OK Fetch completed\r\n')

    def test_header_fields(self):
        s = self.selected()
        out = s.send("a FETCH 1 (BODY.PEEK[HEADER.FIELDS (subject \"To\")])\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT TO)] {39}\r\n"
                              "To: bob@example.org\r\nSubject: first\r\n\r\n)\r\na OK Fetch completed\r\n")

    def test_header_fields_not(self):
        s = self.selected()
        out = s.send("a FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (From To Date Message-ID)])\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[HEADER.FIELDS.NOT (FROM TO DATE MESSAGE-ID)] {18}\r\n"
                              "Subject: first\r\n\r\n)\r\na OK Fetch completed\r\n")

    def test_mime_part_sections(self):
        s = self.selected()
        structure = MessageStructure.parse(M2)
        expected = structure.section(M2, "1.2.MIME")
        self.assertIn(b"text/html", expected)
        out = s.send("a FETCH 2 (BODY.PEEK[1.2.MIME] BODY.PEEK[1.2] BODY.PEEK[2])\r\n").encode()
        self.assertEqual(out, b"* 2 FETCH (BODY[1.2.MIME] {%d}\r\n%s BODY[1.2] {11}\r\n<b>html</b> BODY[2] {3}\r\nxyz)\r\n"
                              b"a OK Fetch completed\r\n" % (len(expected), expected))

    def test_missing_part_is_empty(self):
        s = self.selected()
        self.assertEqual(s.send("a FETCH 1 (BODY.PEEK[7.1])\r\n"),
                         "* 1 FETCH (BODY[7.1] {0}\r\n)\r\na OK Fetch completed\r\n")

    def test_envelope_and_bodystructure(self):
        s = self.selected()
        st = MessageStructure.parse(M2)
        out = s.send("a FETCH 2 (ENVELOPE BODYSTRUCTURE BODY)\r\n").encode()
        self.assertEqual(out, b"* 2 FETCH (ENVELOPE " + st.envelope() + b" BODYSTRUCTURE " + st.bodystructure(True)
                         + b" BODY " + st.bodystructure(False) + b")\r\na OK Fetch completed\r\n")

    def test_non_ascii_header(self):
        s = self.selected()
        out = s.send("a FETCH 3 (ENVELOPE BODY.PEEK[HEADER])\r\n").encode()
        self.assertIn(b"third \xc3\xa9", out)
        self.assertTrue(out.endswith(b"a OK Fetch completed\r\n"))

    def test_bad_items(self):
        s = self.selected()
        self.assertEqual(s.cmd("a FETCH 1 (FOO)"), ["a BAD Unknown FETCH attribute FOO"])
        self.assertEqual(s.cmd("b FETCH 1 (BODY[MIME])"), ["b BAD MIME needs a part number"])
        self.assertEqual(s.cmd("c FETCH 1 (BODY[]<1>)"), ["c BAD A partial range needs <origin.length>"])
        self.assertEqual(s.cmd("d FETCH 1 ()"), ["d BAD Empty FETCH attribute list"])

    def test_expunged_by_other_session_during_fetch(self):
        a = self.selected()
        box = a.store.folders["INBOX"]
        del box.messages[2]
        lines = a.cmd("a FETCH 1:3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertFalse(any(line.endswith(" EXPUNGE") for line in lines))
        self.assertEqual(lines[-1], "a NO [EXPUNGEISSUED] Some messages were expunged by another session")
        self.assertEqual(a.cmd("b FETCH 2 (FLAGS)"), ["* 2 FETCH (FLAGS ())", "b OK Fetch completed"])
        self.assertEqual(a.cmd("c NOOP"), ["* 2 EXPUNGE", "c OK Noop completed"])


class StructureBatchTests(Base):
    """A folder with ``structures(uids)`` is asked for many structures at once."""

    def batched(self, count):
        s = self.selected(messages=[M1, M2, M3] * (count // 3))
        folder = s.proto.folder
        calls = []

        def structures(uids):
            calls.append(list(uids))
            return {u: MessageStructure.parse(folder.box.messages[u].data) for u in uids
                    if u in folder.box.messages}
        folder.structures = structures
        folder.structure = None         # never called
        return s, calls

    def test_fetch_envelope(self):
        s, calls = self.batched(1200)
        out = s.send("a FETCH 1:* (ENVELOPE)\r\n")
        self.assertEqual(out.count(" FETCH (ENVELOPE ("), 1200)
        self.assertTrue(out.endswith("a OK Fetch completed\r\n"))
        self.assertEqual([len(c) for c in calls], [500, 500, 200])

    def test_search_subject(self):
        s, calls = self.batched(1200)
        self.assertEqual(s.cmd("a SEARCH SUBJECT multi")[0].split()[2:5], ["2", "5", "8"])
        self.assertEqual([len(c) for c in calls], [500, 500, 200])

    def test_search_fields_cached(self):
        s, calls = self.batched(600)
        first = s.cmd("a SEARCH SUBJECT multi FROM carol")
        self.assertEqual(first[0].split()[2:5], ["2", "5", "8"])
        self.assertEqual([len(c) for c in calls], [500, 100])
        self.assertEqual(s.cmd("b SEARCH SUBJECT multi FROM carol"), [first[0], "b OK Search completed"])
        self.assertEqual(s.cmd("c SEARCH OR SUBJECT first HEADER FROM carol")[0].split()[2:6],
                         ["1", "2", "4", "5"])
        self.assertEqual([len(c) for c in calls], [500, 100])      # every field value was known
        self.assertEqual(s.cmd("d SEARCH TO bob")[0].split()[2:4], ["1", "4"])
        self.assertEqual([len(c) for c in calls], [500, 100, 500, 100])     # TO was not
        # SENTBEFORE reads the structure for more than fields: asked for again
        self.assertEqual(s.cmd("e SEARCH SUBJECT first SENTBEFORE 1-Jan-2030")[0].split()[2:4], ["1", "4"])
        self.assertEqual(len(calls), 6)

    def test_gone_messages(self):
        s, calls = self.batched(3)
        del s.proto.folder.box.messages[2]
        self.assertEqual(s.cmd("a FETCH 1:3 (UID ENVELOPE)")[-1],
                         "a NO [EXPUNGEISSUED] Some messages were expunged by another session")


class HeaderCacheTests(Base):
    """FETCH of header sections needs no MIME structure, and its answer comes from the
    section cache the second time (no file opened), byte for byte the same."""

    HEADERS = "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] RFC822.HEADER"

    def counting(self):
        s = self.selected()
        folder = s.proto.folder
        opened = []
        real = folder.open_message

        def open_message(uid):
            opened.append(uid)
            return real(uid)
        folder.open_message = open_message
        folder.structures = folder.structure = None         # never needed
        return s, opened

    def test_second_fetch_from_the_cache(self):
        s, opened = self.counting()
        first = s.send("a FETCH 1:3 (UID %s)\r\n" % self.HEADERS)
        self.assertEqual(opened, [1, 2, 3])
        self.assertIn("* 3 FETCH (UID 3 BODY[HEADER.FIELDS (FROM SUBJECT)] {45}\r\n"
                      "From: dave@example.org\r\nSubject: third \u00e9\r\n\r\n RFC822.HEADER {45}\r\n",
                      first)
        self.assertTrue(first.endswith("a OK Fetch completed\r\n"))
        second = s.send("b FETCH 1:3 (UID %s)\r\n" % self.HEADERS)
        self.assertEqual(opened, [1, 2, 3])
        self.assertEqual(second, first.replace("a OK", "b OK"))
        # a partial range is cut from the cached section; another field list is read again
        self.assertEqual(s.cmd("c FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]<0.4>)"),
                         ["* 1 FETCH (BODY[HEADER.FIELDS (FROM SUBJECT)]<0> {4}", "From)",
                          "c OK Fetch completed"])
        self.assertEqual(opened, [1, 2, 3])
        s.cmd("d FETCH 1 (BODY.PEEK[HEADER.FIELDS (TO)])")
        self.assertEqual(opened, [1, 2, 3, 1])

    def test_gone_message_not_cached(self):
        s, opened = self.counting()
        del s.proto.folder.box.messages[2]
        self.assertEqual(s.cmd("a FETCH 2 (BODY.PEEK[HEADER])"),
                         ["a NO [EXPUNGEISSUED] Some messages were expunged by another session"])

    def test_other_folder_other_answer(self):
        s, opened = self.counting()
        s.cmd("a FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertTagged(s.cmd("b CREATE Other"), "b OK Create completed")
        s.store.deliver(M3, folder="Other")
        s.cmd("c SELECT Other")
        self.assertEqual(s.cmd("d FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
                         ["* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {21}", "Subject: third \u00e9", "", ")",
                          "d OK Fetch completed"])


class StreamingTests(Base):

    def test_big_fetch_is_chunked_and_waits_for_the_transport(self):
        s = self.session()
        st = s.store
        for i in range(10000):
            st.deliver(b"Subject: %d\r\n\r\nx\r\n" % i, internaldate=T0)
        s.cmd("a SELECT INBOX")
        transport = s.transport
        writes = []
        original = transport.write

        def write(data):
            writes.append(len(data))
            original(data)
            if len(writes) == 2:
                transport.producer.pauseProducing()
        transport.write = write
        first = s.send("b UID FETCH 1:* (FLAGS)\r\nc NOOP\r\n")
        self.assertEqual(len(writes), 2)
        self.assertTrue(all(n < 100 * 1024 for n in writes))
        self.assertTrue(IPushProducer.providedBy(transport.producer))
        self.assertNotIn("b OK", first)
        transport.producer.resumeProducing()
        out = first + s.take()
        self.assertEqual(out.count(" FETCH ("), 10000)
        self.assertTrue(out.endswith("b OK UID Fetch completed\r\nc OK Noop completed\r\n"))
        self.assertIsNone(transport.producer)


class BigMessageTests(Base):

    def test_body_of_big_message_is_streamed(self):
        big = b"Subject: big\r\n\r\n" + b"0123456789" * 300000 + b"\r\n"
        s = self.selected(messages=(big,))
        reads = []
        folder = s.proto.folder
        original = folder.open_message

        def open_message(uid):
            f = original(uid)
            read = f.read
            f.read = lambda n=-1: (reads.append(n), read(n))[1]
            return f
        folder.open_message = open_message
        out = s.send("a FETCH 1 (UID BODY[] BODY.PEEK[]<1000000.10>)\r\n").encode()
        self.assertEqual(out, b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {%d}\r\n%s BODY[]<1000000> {10}\r\n%s)\r\n"
                              b"a OK Fetch completed\r\n" % (len(big), big, big[1000000:1000010]))
        self.assertTrue(reads and all(0 < n <= 256 * 1024 for n in reads), reads)

    def test_sections_of_big_message(self):
        big = b"Subject: big\r\n\r\n" + b"x" * 2000000 + b"\r\n"
        s = self.selected(messages=(big,))
        out = s.send("a FETCH 1 (BODY.PEEK[HEADER] RFC822.SIZE)\r\n")
        self.assertEqual(out, "* 1 FETCH (BODY[HEADER] {16}\r\nSubject: big\r\n\r\n RFC822.SIZE %d)\r\n"
                              "a OK Fetch completed\r\n" % len(big))


class StoreTests(Base):

    def test_store_modes(self):
        s = self.selected()
        self.assertEqual(s.cmd("a STORE 1 +FLAGS (\\Seen $Work)"),
                         ["* 1 FETCH (FLAGS (\\Seen $Work))", "a OK Store completed"])
        self.assertEqual(s.cmd("b STORE 1 -FLAGS \\Seen"), ["* 1 FETCH (FLAGS ($Work))", "b OK Store completed"])
        self.assertEqual(s.cmd("c STORE 1:2 FLAGS (\\flagged)"),
                         ["* 1 FETCH (FLAGS (\\Flagged))", "* 2 FETCH (FLAGS (\\Flagged))", "c OK Store completed"])
        self.assertEqual(s.cmd("d STORE 1 +FLAGS.SILENT (\\Deleted)"), ["d OK Store completed"])
        self.assertEqual(s.cmd("e UID STORE 2 +FLAGS (\\Answered)"),
                         ["* 2 FETCH (FLAGS (\\Answered \\Flagged) UID 2)", "e OK UID Store completed"])
        self.assertEqual(s.store.folders["INBOX"].messages[1].flags, frozenset({"\\Flagged", "\\Deleted"}))

    def test_store_bad_flags(self):
        s = self.selected()
        self.assertEqual(s.cmd("a STORE 1 +FLAGS (\\Recent)"), ["a BAD \\Recent cannot be set"])
        self.assertEqual(s.cmd("b STORE 1 +FLAGS (\\Bogus)"), ["b BAD Unknown system flag \\Bogus"])
        self.assertEqual(s.cmd("c STORE 1 XFLAGS (\\Seen)"), ["c BAD Expected FLAGS, +FLAGS or -FLAGS"])

    def test_unchangedsince(self):
        s = self.selected()
        modseq = s.store.folders["INBOX"].messages[1].modseq
        lines = s.cmd("a STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % modseq)
        box = s.store.folders["INBOX"]
        self.assertEqual(lines, ["* 1 FETCH (FLAGS (\\Seen) MODSEQ (%d))" % box.messages[1].modseq,
                                 "a OK [MODIFIED 2] Conditional STORE failed for some messages"])
        self.assertNotIn("\\Seen", box.messages[2].flags)

    def test_silent_under_condstore_reports_modseq(self):
        s = self.selected()
        s.cmd("a FETCH 1 (MODSEQ)")
        lines = s.cmd("b UID STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(lines, ["* 1 FETCH (UID 1 MODSEQ (%d))" % s.store.folders["INBOX"].messages[1].modseq,
                                 "b OK UID Store completed"])


class ExpungeTests(Base):

    def test_expunge_order(self):
        s = self.selected(messages=[M1] * 6, flags={2: ["\\Deleted"], 3: ["\\Deleted"], 5: ["\\Deleted"]})
        self.assertEqual(s.cmd("a EXPUNGE"), ["* 2 EXPUNGE", "* 2 EXPUNGE", "* 3 EXPUNGE", "a OK Expunge completed"])
        self.assertEqual(s.cmd("b FETCH 1:* UID"),
                         ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 4)", "* 3 FETCH (UID 6)", "b OK Fetch completed"])

    def test_uid_expunge(self):
        s = self.selected(messages=[M1] * 4, flags={1: ["\\Deleted"], 3: ["\\Deleted"]})
        self.assertEqual(s.cmd("a UID EXPUNGE 3:10"), ["* 3 EXPUNGE", "a OK UID Expunge completed"])
        self.assertEqual(sorted(s.store.folders["INBOX"].messages), [1, 2, 4])

    def test_expunge_under_qresync_is_vanished(self):
        s = self.session()
        for _ in range(3):
            s.store.deliver(M1, flags=["\\Deleted"])
        s.cmd("a ENABLE QRESYNC")
        s.cmd("b SELECT INBOX")
        box = s.store.folders["INBOX"]
        lines = s.cmd("c EXPUNGE")
        self.assertEqual(lines, ["* VANISHED 1:3", "c OK [HIGHESTMODSEQ %d] Expunge completed" % box.modseq])


class TwoSessionTests(Base):

    def test_other_sessions_changes(self):
        a = self.selected(messages=[M1] * 4)
        b = self.session()
        b.cmd("x SELECT INBOX")
        self.assertEqual(b.cmd("y STORE 2 +FLAGS (\\Deleted \\Seen)")[-1], "y OK Store completed")
        self.assertEqual(b.cmd("z EXPUNGE"), ["* 2 EXPUNGE", "z OK Expunge completed"])
        b.cmd("z2 STORE 3 +FLAGS (\\Flagged)")
        # no EXPUNGE during FETCH, STORE or SEARCH
        self.assertEqual(a.cmd("a FETCH 2 UID"), ["* 2 FETCH (UID 2)", "a OK Fetch completed"])
        self.assertEqual(a.cmd("b STORE 1 +FLAGS (\\Seen)"), ["* 1 FETCH (FLAGS (\\Seen))", "b OK Store completed"])
        self.assertEqual(a.cmd("c SEARCH ALL"), ["* SEARCH 1 2 3 4", "c OK Search completed"])
        # NOOP reports them
        self.assertEqual(a.cmd("d NOOP"), ["* 2 EXPUNGE", "* 3 FETCH (FLAGS (\\Flagged) UID 4)", "d OK Noop completed"])
        a.store.deliver(M2)
        self.assertEqual(a.cmd("e NOOP"), ["* 4 EXISTS", "* 1 RECENT", "e OK Noop completed"])

    def test_uid_commands_may_report_expunges(self):
        a = self.selected(messages=[M1] * 3)
        box = a.store.folders["INBOX"]
        box.messages[1].flags = frozenset({"\\Deleted"})
        b = self.session()
        b.cmd("x SELECT INBOX")
        b.cmd("y EXPUNGE")
        self.assertEqual(a.cmd("a UID FETCH 1:* UID"),
                         ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "* 1 EXPUNGE",
                          "a OK UID Fetch completed"])


class IdleTests(Base):

    def test_idle_push(self):
        s = self.selected()
        self.assertEqual(s.cmd("a IDLE"), ["+ idling"])
        s.store.deliver(M1)
        self.assertEqual(s.take(), "* 4 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(s.cmd("DONE"), ["a OK IDLE terminated"])
        s.store.deliver(M1)
        self.assertEqual(s.take(), "")
        self.assertEqual(s.proto.folder.box.listeners, [])

    def test_idle_reports_pending_changes_at_start(self):
        s = self.selected()
        s.store.deliver(M1)
        self.assertEqual(s.cmd("a IDLE"), ["+ idling", "* 4 EXISTS", "* 1 RECENT"])
        s.cmd("DONE")

    def test_idle_keepalive_and_timeout(self):
        s = self.selected()
        s.cmd("a IDLE")
        self.reactor.advance(120)
        self.assertEqual(s.take(), "* OK Still here\r\n")
        self.reactor.advance(30 * 60)
        self.assertTrue(s.transport.disconnecting)

    def test_idle_without_done(self):
        s = self.selected()
        s.cmd("a IDLE")
        self.assertEqual(s.cmd("b NOOP"), ["a BAD Expected DONE"])

    def test_idle_in_authenticated_state(self):
        s = self.session()
        s.cmd("a IDLE")
        self.assertEqual(s.cmd("done"), ["a OK IDLE terminated"])


class CopyMoveTests(Base):

    def test_copy(self):
        s = self.selected()
        trash = s.store.folders["Trash"]
        self.assertEqual(s.cmd("a COPY 1:2 Trash"),
                         ["a OK [COPYUID %d 1:2 1:2] Copy completed" % trash.uidvalidity])
        self.assertEqual(s.cmd("b UID COPY 3,1 Trash"),
                         ["b OK [COPYUID %d 1,3 3:4] Copy completed" % trash.uidvalidity])

    def test_copy_trycreate(self):
        s = self.selected()
        self.assertEqual(s.cmd("a COPY 1 Nowhere"), ["a NO [TRYCREATE] Mailbox does not exist"])

    def test_move(self):
        s = self.selected()
        trash = s.store.folders["Trash"]
        self.assertEqual(s.cmd("a MOVE 1,3 Trash"),
                         ["* OK [COPYUID %d 1,3 1:2] Moved" % trash.uidvalidity, "* 1 EXPUNGE", "* 2 EXPUNGE",
                          "a OK Move completed"])
        self.assertEqual(s.cmd("b FETCH 1:* UID"), ["* 1 FETCH (UID 2)", "b OK Fetch completed"])
        self.assertEqual(sorted(trash.messages), [1, 2])

    def test_uid_move_nothing(self):
        s = self.selected()
        self.assertEqual(s.cmd("a UID MOVE 50:60 Trash"), ["a OK Move completed"])


class AppendTests(Base):

    def test_append_flags_and_date(self):
        s = self.session()
        box = s.store.folders["Drafts"]
        out = s.send('a APPEND Drafts (\\Seen \\Draft) " 5-Mar-2024 10:20:30 +0200" {%d}\r\n' % len(M1))
        self.assertEqual(out, "+ Ready for literal data\r\n")
        out = s.send(M1 + b"\r\n")
        self.assertEqual(out, "a OK [APPENDUID %d 1] Append completed\r\n" % box.uidvalidity)
        m = box.messages[1]
        self.assertEqual(m.flags, frozenset({"\\Seen", "\\Draft"}))
        self.assertEqual(m.internaldate, parse_date_time("05-Mar-2024 08:20:30 +0000"))
        self.assertEqual(m.data, M1)

    def test_append_without_flags(self):
        s = self.session()
        self.assertEqual(s.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(M1), M1)),
                         "a OK [APPENDUID %d 1] Append completed\r\n" % s.store.folders["INBOX"].uidvalidity)

    def test_append_to_selected_reports_exists(self):
        s = self.selected()
        out = s.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(M1), M1))
        self.assertEqual(out, "* 4 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID %d 4] Append completed\r\n"
                         % s.store.folders["INBOX"].uidvalidity)

    def test_append_bare_lf_normalised(self):
        s = self.session()
        s.send(b"a APPEND INBOX {12+}\r\nSubject: x\n\n\r\n")
        self.assertEqual(s.store.folders["INBOX"].messages[1].data, b"Subject: x\r\n\r\n")

    def test_append_errors(self):
        s = self.session()
        self.assertEqual(s.send(b"a APPEND Nowhere {3+}\r\nabc\r\n"), "a NO [TRYCREATE] Mailbox does not exist\r\n")
        self.assertEqual(s.send(b'b APPEND INBOX "yesterday" {3+}\r\nabc\r\n'),
                         'b BAD Invalid date-time: expected a date-time such as "01-Jan-2020 10:00:00 +0000"\r\n')
        self.assertEqual(s.send(b"c APPEND INBOX {0+}\r\n\r\n"), "c NO Cannot append an empty message\r\n")
        self.assertEqual(s.send(b"d APPEND INBOX (\\Bogus) {3+}\r\nabc\r\n"), "d BAD Unknown system flag \\Bogus\r\n")


class QuotaTests(Base):

    def setUp(self):
        Base.setUp(self)
        self.factory.services.store.quota["bob@example.org"] = 10 * 1024

    def test_getquotaroot(self):
        s = self.session()
        s.store.deliver(b"x" * 1500)
        self.assertEqual(s.cmd("a GETQUOTAROOT INBOX"),
                         ['* QUOTAROOT "INBOX" ""', '* QUOTA "" (STORAGE 2 10)', "a OK Getquotaroot completed"])
        self.assertEqual(s.cmd('b GETQUOTA ""'), ['* QUOTA "" (STORAGE 2 10)', "b OK Getquota completed"])
        self.assertEqual(s.cmd("c GETQUOTA other"), ["c NO [NONEXISTENT] No such quota root"])
        self.assertEqual(s.cmd('d SETQUOTA "" (STORAGE 1)'), ["d NO [NOPERM] Quotas are set by the administrator"])

    def test_append_over_quota(self):
        s = self.session()
        data = b"Subject: big\r\n\r\n" + b"x" * 11000
        self.assertEqual(s.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(data), data)),
                         "a NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(s.store.folders["INBOX"].messages, {})

    def test_copy_over_quota(self):
        s = self.session()
        s.store.deliver(b"Subject: a\r\n\r\n" + b"x" * 6000)
        s.cmd("a SELECT INBOX")
        self.assertEqual(s.cmd("b COPY 1 Trash"), ["b NO [OVERQUOTA] Quota exceeded"])

    def test_no_quota(self):
        self.factory.services.store.quota.clear()
        s = self.session("alice@example.org")
        s = self.session(login=False)
        s.login("alice@example.org")
        self.assertEqual(s.cmd("a GETQUOTAROOT INBOX"), ['* QUOTAROOT "INBOX"', "a OK Getquotaroot completed"])


class FolderTests(Base):

    def test_list(self):
        s = self.session()
        s.cmd("a CREATE Work/Projects")
        self.assertEqual(s.cmd('b LIST "" %'), [
            '* LIST (\\HasNoChildren) "/" "INBOX"',
            '* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
            '* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
            '* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
            '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
            '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
            '* LIST (\\HasChildren) "/" "Work"',
            "b OK List completed"])
        self.assertEqual(s.cmd('c LIST Work %'), ['* LIST (\\HasNoChildren) "/" "Work/Projects"', "c OK List completed"])
        self.assertEqual(s.cmd('d LIST "" "*ojec*"'), ['* LIST (\\HasNoChildren) "/" "Work/Projects"',
                                                      "d OK List completed"])
        self.assertEqual(s.cmd('e LIST "" ""'), ['* LIST (\\Noselect) "/" ""', "e OK List completed"])
        self.assertEqual(s.cmd('f LIST "" inbox'), ['* LIST (\\HasNoChildren) "/" "INBOX"', "f OK List completed"])

    def test_list_hostile_pattern_is_fast(self):
        s = self.session()
        for i in range(50):
            s.store.folders["f%d%s" % (i, "a" * 100)] = type(s.store.folders["INBOX"])("x")
        # No timing assertion: a backtracking matcher hangs, and the timeout below fails it.
        lines = s.cmd('a LIST "" "' + "*a" * 400 + 'b"')
        self.assertEqual(lines, ["a OK List completed"])
        lines = s.cmd('b LIST "" "' + "%*" * 500 + '"')
        self.assertEqual(len(lines), 57)

    test_list_hostile_pattern_is_fast.timeout = 120

    def test_pattern_matcher(self):
        p = compile_pattern("a%/*c")
        self.assertTrue(p.match("abc/xyz/c"))
        self.assertFalse(p.match("a/b/c/d"))
        self.assertTrue(compile_pattern("%").match("INBOX"))
        self.assertFalse(compile_pattern("%").match("a/b"))
        self.assertTrue(compile_pattern("*").match("a/b"))
        self.assertTrue(compile_pattern("Inbox/%").match("INBOX/x"))

    def test_list_extended(self):
        s = self.session()
        self.assertEqual(s.cmd('a LIST (SPECIAL-USE) "" *'), [
            '* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
            '* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
            '* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
            '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
            '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
            "a OK List completed"])
        s.store.deliver(M1)
        self.assertEqual(s.cmd('b LIST "" (INBOX Sent) RETURN (SUBSCRIBED STATUS (MESSAGES UIDNEXT))'), [
            '* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"',
            '* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2)',
            '* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" "Sent"',
            '* STATUS "Sent" (MESSAGES 0 UIDNEXT 1)',
            "b OK List completed"])
        self.assertEqual(s.cmd('c LIST (FOO) "" *'), ["c BAD Unknown LIST selection option FOO"])

    def test_lsub(self):
        s = self.session()
        s.cmd("a CREATE Lists")
        s.cmd("b SUBSCRIBE Lists")
        s.cmd("c UNSUBSCRIBE Junk")
        lines = s.cmd('d LSUB "" *')
        self.assertIn('* LSUB () "/" "Lists"', lines)
        self.assertNotIn('* LSUB () "/" "Junk"', lines)

    def test_subscriptions_of_missing_folders(self):
        s = self.session()
        s.cmd("a SUBSCRIBE Gone/Child")
        self.assertEqual(s.cmd('b LSUB "" Gone*'), ['* LSUB () "/" "Gone/Child"', "b OK Lsub completed"])
        self.assertEqual(s.cmd('c LSUB "" %'), [
            '* LSUB () "/" "INBOX"', '* LSUB () "/" "Archive"', '* LSUB () "/" "Drafts"', '* LSUB () "/" "Junk"',
            '* LSUB () "/" "Sent"', '* LSUB () "/" "Trash"', '* LSUB (\\Noselect) "/" "Gone"', "c OK Lsub completed"])
        self.assertEqual(s.cmd('d LIST (SUBSCRIBED) "" "G*"'),
                         ['* LIST (\\NonExistent \\Subscribed) "/" "Gone/Child"', "d OK List completed"])
        self.assertEqual(s.cmd('e LIST (SUBSCRIBED RECURSIVEMATCH) "" "G%"'),
                         ['* LIST (\\NonExistent) "/" "Gone" ("CHILDINFO" ("SUBSCRIBED"))', "e OK List completed"])

    def test_create_rename_delete(self):
        s = self.session()
        self.assertEqual(s.cmd("a CREATE Projects/"), ["a OK Create completed"])
        self.assertIn("Projects", s.store.folders)
        self.assertEqual(s.cmd("b CREATE Projects"), ["b NO Mailbox already exists"])
        self.assertEqual(s.cmd("c RENAME Projects Old"), ["c OK Rename completed"])
        self.assertEqual(s.cmd("d DELETE Old"), ["d OK Delete completed"])
        self.assertNotIn("Old", s.store.folders)
        self.assertEqual(s.cmd("e DELETE INBOX"), ["e NO INBOX cannot be deleted"])
        self.assertEqual(s.cmd("f CREATE inbox"), ["f NO [ALREADYEXISTS] INBOX already exists"])

    def test_rename_inbox(self):
        s = self.session()
        s.store.deliver(M1)
        self.assertEqual(s.cmd("a RENAME INBOX Saved"), ["a OK Rename completed"])
        self.assertEqual(len(s.store.folders["Saved"].messages), 1)
        self.assertEqual(s.store.folders["INBOX"].messages, {})

    def test_create_special_use(self):
        s = self.session()
        self.assertEqual(s.cmd("a CREATE Outbox (USE (\\Sent))"), ["a OK Create completed"])
        self.assertEqual(s.store.calls[-1], ("create", "Outbox", "\\Sent"))
        self.assertEqual(s.cmd("b CREATE X (USE (\\Bogus))"), ["b NO [USEATTR] Unsupported special-use attribute"])

    def test_modified_utf7_names(self):
        s = self.session()
        self.assertEqual(s.cmd("a CREATE &AOk-t&AOk-"), ["a OK Create completed"])
        self.assertIn("\xe9t\xe9", s.store.folders)
        self.assertIn('* LIST (\\HasNoChildren) "/" "&AOk-t&AOk-"', s.cmd('b LIST "" *'))

    def test_hostile_names(self):
        s = self.session()
        self.assertEqual(s.cmd("a CREATE &Jjo!"), ["a NO Mailbox name is not valid modified UTF-7"])
        self.assertEqual(s.cmd("b CREATE a&b"), ["b NO Mailbox name is not valid modified UTF-7"])
        self.assertEqual(s.cmd("c CREATE ../../etc"), ["c NO Invalid mailbox name"])
        self.assertEqual(s.cmd('d CREATE "a\\\\b/../c"'), ["d NO Invalid mailbox name"])
        self.assertEqual(s.cmd("e CREATE {3}"), ["+ Ready for literal data"])
        self.assertEqual(s.send(b"a\x00b\r\n"), "e NO Mailbox name contains control characters\r\n")
        self.assertEqual(s.cmd('f SELECT "\xc3\xa9"'), ["f NO Mailbox name is not valid modified UTF-7 (8-bit characters)"])
        self.assertEqual(s.cmd("g CREATE &AGE-"), ["g NO Mailbox name is not valid modified UTF-7"])

    def test_status(self):
        s = self.session()
        s.store.deliver(M1, flags=["\\Seen", "\\Deleted"])
        s.store.deliver(M2)
        box = s.store.folders["INBOX"]
        self.assertEqual(s.cmd("a STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY HIGHESTMODSEQ SIZE DELETED)"), [
            '* STATUS "INBOX" (MESSAGES 2 UNSEEN 1 UIDNEXT 3 UIDVALIDITY %d HIGHESTMODSEQ 3 SIZE %d DELETED 1)'
            % (box.uidvalidity, len(M1) + len(M2)), "a OK Status completed"])
        self.assertEqual(s.cmd("b STATUS INBOX (BOGUS)"), ["b BAD Unknown status item"])
        self.assertEqual(s.cmd("c STATUS Nope (MESSAGES)"), ["c NO Mailbox does not exist"])

    def test_namespace_id_enable(self):
        s = self.session()
        self.assertEqual(s.cmd("a NAMESPACE"), ['* NAMESPACE (("" "/")) NIL NIL', "a OK Namespace completed"])
        self.assertEqual(s.cmd('b ID ("name" "test")'), ['* ID ("name" "jdmail" "vendor" "jdmail")', "b OK Id completed"])
        self.assertEqual(s.cmd("c ID NIL")[-1], "c OK Id completed")
        self.assertEqual(s.cmd("d ENABLE CONDSTORE X-FOO"), ["* ENABLED CONDSTORE", "d OK Enable completed"])
        s.cmd("e SELECT INBOX")
        self.assertEqual(s.cmd("f ENABLE QRESYNC"), ["f BAD ENABLE is only valid before a mailbox is selected"])


class CondstoreTests(Base):

    def test_select_condstore_and_changedsince(self):
        s = self.session()
        st = s.store
        for m in (M1, M2, M3):
            st.deliver(m)
        box = st.folders["INBOX"]
        lines = s.cmd("a SELECT INBOX (CONDSTORE)")
        self.assertIn("* OK [HIGHESTMODSEQ %d] Highest" % box.modseq, lines)
        since = box.modseq
        s.cmd("b STORE 2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(s.cmd("c FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % since),
                         ["* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % box.modseq, "c OK Fetch completed"])
        self.assertEqual(s.cmd("d SEARCH MODSEQ %d" % (since + 1)),
                         ["* SEARCH 2 (MODSEQ %d)" % box.modseq, "d OK Search completed"])
        self.assertEqual(s.cmd("e STATUS INBOX (HIGHESTMODSEQ)"),
                         ['* STATUS "INBOX" (HIGHESTMODSEQ %d)' % box.modseq, "e OK Status completed"])

    def test_qresync_select(self):
        s = self.session()
        st = s.store
        for m in (M1, M2, M3, M1):
            st.deliver(m)
        box = st.folders["INBOX"]
        since = box.modseq
        other = self.session()
        other.cmd("a SELECT INBOX")
        other.cmd("b STORE 2 +FLAGS (\\Deleted)")
        other.cmd("c EXPUNGE")
        other.cmd("d STORE 3 +FLAGS (\\Answered)")
        self.assertEqual(s.cmd("a SELECT INBOX (QRESYNC (%d %d))" % (box.uidvalidity, since)),
                         ["a BAD QRESYNC must be enabled first (ENABLE QRESYNC)"])
        s.cmd("b ENABLE QRESYNC")
        lines = s.cmd("c SELECT INBOX (QRESYNC (%d %d 1:4))" % (box.uidvalidity, since))
        self.assertEqual(lines[-3:], ["* VANISHED (EARLIER) 2",
                                      "* 3 FETCH (UID 4 FLAGS (\\Answered) MODSEQ (%d))" % box.modseq,
                                      "c OK [READ-WRITE] SELECT completed"])
        lines = s.cmd("d UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % since)
        self.assertEqual(lines, ["* VANISHED (EARLIER) 2", "* 3 FETCH (UID 4 FLAGS (\\Answered) MODSEQ (%d))" % box.modseq,
                                 "d OK UID Fetch completed"])
        lines = s.cmd("e SELECT Trash")
        self.assertEqual(lines[0], "* OK [CLOSED] Previous mailbox closed")

    def test_vanished_needs_qresync(self):
        s = self.selected()
        self.assertEqual(s.cmd("a UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)"),
                         ["a BAD VANISHED needs UID FETCH and ENABLE QRESYNC"])


class SearchTests(Base):

    def test_search_keys(self):
        s = self.selected(flags={1: ["\\Seen"]})
        self.assertEqual(s.cmd("a SEARCH UNSEEN"), ["* SEARCH 2 3", "a OK Search completed"])
        self.assertEqual(s.cmd("b SEARCH OR SUBJECT first FROM carol"), ["* SEARCH 1 2", "b OK Search completed"])
        self.assertEqual(s.cmd("c SEARCH NOT LARGER 1000"), ["* SEARCH 1 2", "c OK Search completed"])
        self.assertEqual(s.cmd('d SEARCH HEADER Message-ID "<1@x>"'), ["* SEARCH 1", "d OK Search completed"])
        self.assertEqual(s.cmd("e UID SEARCH 2:*"), ["* SEARCH 2 3", "e OK UID Search completed"])
        self.assertEqual(s.cmd("f SEARCH BODY html"), ["* SEARCH 2", "f OK Search completed"])

    def test_flag_only_search(self):
        """Answered from the flags alone (per distinct flag set): same answers as the general way."""
        s = self.selected(flags={1: ["\\Seen"], 3: ["\\Seen", "\\Flagged"]})
        self.assertEqual(s.cmd("a UID SEARCH UNSEEN"), ["* SEARCH 2", "a OK UID Search completed"])
        self.assertEqual(s.cmd("b SEARCH SEEN NOT FLAGGED"), ["* SEARCH 1", "b OK Search completed"])
        self.assertEqual(s.cmd("c SEARCH RETURN (MIN COUNT) SEEN"),
                         ['* ESEARCH (TAG "c") MIN 1 COUNT 2', "c OK Search completed"])
        self.assertEqual(s.cmd("d SEARCH DELETED"), ["* SEARCH", "d OK Search completed"])
        self.assertEqual(s.cmd("e SEARCH ALL"), ["* SEARCH 1 2 3", "e OK Search completed"])

    def test_search_charset_utf8(self):
        s = self.selected()
        self.assertEqual(s.send(b"a SEARCH CHARSET UTF-8 SUBJECT {2}\r\n"), "+ Ready for literal data\r\n")
        self.assertEqual(s.send(b"\xc3\xa9\r\n"), "* SEARCH 3\r\na OK Search completed\r\n")
        self.assertEqual(s.cmd("b SEARCH CHARSET KOI8-Q ALL"),
                         ["b NO [BADCHARSET (US-ASCII UTF-8)] Charset KOI8-Q is not supported"])

    def test_search_syntax_error(self):
        s = self.selected()
        self.assertTrue(s.cmd("a SEARCH FOOBAR")[0].startswith("a BAD "))

    def test_esearch(self):
        s = self.selected()
        self.assertEqual(s.cmd("a SEARCH RETURN (MIN MAX COUNT) ALL"),
                         ['* ESEARCH (TAG "a") MIN 1 MAX 3 COUNT 3', "a OK Search completed"])
        self.assertEqual(s.cmd("b UID SEARCH RETURN () 2:3"),
                         ['* ESEARCH (TAG "b") UID ALL 2:3', "b OK UID Search completed"])
        self.assertEqual(s.cmd("c SEARCH RETURN (COUNT) SUBJECT nothing"),
                         ['* ESEARCH (TAG "c") COUNT 0', "c OK Search completed"])
        self.assertEqual(s.cmd("d SEARCH RETURN (SAVE) ALL"), ["d BAD Unsupported SEARCH return option"])

    def test_sort(self):
        s = self.selected()
        self.assertEqual(s.cmd("a SORT (SUBJECT) UTF-8 ALL"), ["* SORT 1 2 3", "a OK Sort completed"])
        self.assertEqual(s.cmd("b SORT (REVERSE SIZE) UTF-8 ALL"), ["* SORT 3 2 1", "b OK Sort completed"])
        self.assertEqual(s.cmd("c UID SORT (ARRIVAL) UTF-8 NOT UID 2"), ["* SORT 1 3", "c OK UID Sort completed"])
        self.assertTrue(s.cmd("d SORT (BOGUS) UTF-8 ALL")[0].startswith("d BAD "))


class InternalErrorTests(Base):

    def test_store_exception_becomes_no(self):
        s = self.selected()

        def boom(*a, **kw):
            raise RuntimeError("secret detail")
        s.proto.folder.store_flags = boom
        self.flushLoggedErrors()
        lines = s.cmd("a STORE 1 +FLAGS (\\Seen)")
        self.assertEqual(lines, ["a NO [SERVERBUG] Internal error, try again later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(s.cmd("b NOOP"), ["b OK Noop completed"])

    def test_folder_gone_ends_session(self):
        s = self.selected()

        def gone():
            raise imap_server.FolderGone("deleted")
        s.proto.folder.refresh = gone
        self.assertEqual(s.cmd("a NOOP"), ["* BYE [UNAVAILABLE] The selected mailbox was deleted or rebuilt"])
        self.assertTrue(s.transport.disconnecting)
