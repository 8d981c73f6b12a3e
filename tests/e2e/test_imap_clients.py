"""Real IMAP clients against the real server: mbsync (isync) syncing an account
with a local Maildir both ways, curl's imap:// and imaps:// URLs, and imapclient
for what tests/e2e/test_imap.py does not already cover.

The module's server runs with ``[jdmail] hostname = localhost``, so the
self-signed certificate it makes (<datadir>/tls/selfsigned.crt) names the host
the clients connect to: every client here verifies it (mbsync's CertificateFile,
curl's --cacert, an ssl context with cafile) instead of turning verification off.
"""

import atexit
import concurrent.futures
import email
import os
import re
import shutil
import smtplib
import sqlite3
import ssl
import subprocess
import tempfile
import time
import uuid

import twisted.mail.imap4  # noqa: F401  registers the "imap4-utf-7" codec
from twisted.trial import unittest

from tests.e2e import ALICE, BOB, CAROL, USERS, _build_template
from tests.fixtures.imap import RawIMAP
from tests.fixtures.server import JdmailServer

HOST = "localhost"
# Accounts of their own, so a test may sync or count the whole account.
SYNC, SYNC_PASSWORD = "sync@example.org", "sync-pw-1"
SYNC2, SYNC2_PASSWORD = "sync2@example.org", "sync-pw-2"
READER, READER_PASSWORD = "reader@example.org", "reader-pw"
PASSWORDS = dict(USERS, **{SYNC: SYNC_PASSWORD, SYNC2: SYNC2_PASSWORD, READER: READER_PASSWORD})

_server = None


def clients_server():
    """The module's server: the e2e template's users plus this module's, hostname localhost."""
    global _server
    if _server is not None and _server.proc.poll() is None:
        return _server
    template = _build_template()
    server = JdmailServer(overrides={"jdmail": {"hostname": HOST}})
    server.write_ini()
    os.makedirs(server.datadir, mode=0o700, exist_ok=True)
    src = sqlite3.connect(os.path.join(template, "directory.sqlite"))
    dst = sqlite3.connect(os.path.join(server.datadir, "directory.sqlite"))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    jobs = [(u, PASSWORDS[u]) for u in (SYNC, SYNC2, READER)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda up: server.ctl("user", "add", up[0], "--password", up[1]), jobs))
    server.start()
    atexit.register(server.stop)
    _server = server
    return server


def message(subject, body="Hello.\r\n", msgid=None, sender="sender@remote.test", to=BOB):
    msgid = msgid or f"{uuid.uuid4().hex}@remote.test"
    return (f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{msgid}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


# Maildir info letters <-> IMAP system flags (P, "passed", has no IMAP flag).
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
IMAP_FLAGS = {v: k for k, v in MAILDIR_FLAGS.items()}


def canonical(data):
    """A message as both sides should hold it: LF line ends, without mbsync's X-TUID header."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    head = b"\n".join(line for line in head.split(b"\n") if not line.startswith(b"X-TUID: "))
    return head + sep + body


def mid(tag):
    """The Message-ID header value of the sync test's message ``tag``."""
    return f"<{tag}@sync.test>"


def message_id(data):
    return email.message_from_bytes(data)["Message-ID"].strip()


class ClientsTestCase(unittest.TestCase):

    def setUp(self):
        self.server = clients_server()
        self.ports = self.server.ports
        self.cert = os.path.join(self.server.datadir, "tls", "selfsigned.crt")
        self.tmp = tempfile.mkdtemp(prefix="jdmail-clients-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def context(self):
        """An ssl context that trusts exactly the server's self-signed certificate."""
        return ssl.create_default_context(cafile=self.cert)

    def client(self, user=BOB):
        from imapclient import IMAPClient
        c = IMAPClient(HOST, port=self.ports["imaps"], ssl=True, ssl_context=self.context(), timeout=30)
        self.addCleanup(self._logout, c)
        c.login(user, PASSWORDS[user])
        return c

    @staticmethod
    def _logout(c):
        try:
            c.logout()
        except Exception:
            pass

    def fill(self, user, folder, messages):
        """APPEND (data, flags string or None) pairs to ``folder`` in one pipelined write."""
        raw = RawIMAP(self.ports["imaps"], tls=True, context=self.context(), server_hostname=HOST)
        try:
            raw.login(user, PASSWORDS[user])
            raw.append_many(folder, [(data, flags, None) for data, flags in messages])
        finally:
            raw.close()

    def folder(self, c, prefix="F"):
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        c.create_folder(name)
        return name

    def smtp_deliver(self, data, to):
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", list(to), data)


# --- mbsync ---------------------------------------------------------------------------------

class MbsyncTests(ClientsTestCase):
    """mbsync (isync 1.4) keeps a jdmail account and a local Maildir tree equal:
    messages, folders and the flags both sides know, in both directions."""

    def setUp(self):
        if shutil.which("mbsync") is None:
            raise unittest.SkipTest("mbsync is not installed (Debian package isync; ./run-tests installs it)")
        ClientsTestCase.setUp(self)
        self.local = os.path.join(self.tmp, "Mail")
        os.makedirs(self.local)
        self.config = os.path.join(self.tmp, "mbsyncrc")

    def write_config(self, user, ssl_type="IMAPS", auth="PLAIN"):
        port = self.ports["imaps" if ssl_type == "IMAPS" else "imap"]
        with open(self.config, "w") as f:
            f.write(f"""\
IMAPAccount jdmail
Host {HOST}
Port {port}
User {user}
Pass {PASSWORDS[user]}
SSLType {ssl_type}
CertificateFile {self.cert}
SystemCertificates no
AuthMechs {auth}
PipelineDepth 20
Timeout 30

IMAPStore jdmail-remote
Account jdmail

MaildirStore local
Path {self.local}/
Inbox {self.local}/INBOX
SubFolders Verbatim

Channel jdmail
Far :jdmail-remote:
Near :local:
Patterns *
Sync All
Create Both
Expunge Both
CopyArrivalDate yes
SyncState *
""")

    def mbsync(self):
        p = subprocess.run(["mbsync", "-c", self.config, "-a"], capture_output=True, text=True, timeout=120)
        self.assertEqual((p.returncode, p.stderr), (0, ""), p.stdout)
        return p

    # the two sides, as {folder: sorted [(Message-ID, flags, canonical bytes)]}

    def remote_state(self, user):
        c = self.client(user)
        state = {}
        for _flags, _delim, name in c.list_folders():
            c.select_folder(name, readonly=True)
            got = c.fetch(c.search(["ALL"]), ["FLAGS", "BODY.PEEK[]"])
            state[name] = sorted(
                (message_id(v[b"BODY[]"]),
                 "".join(sorted(IMAP_FLAGS[f.decode()] for f in v[b"FLAGS"] if f.decode() in IMAP_FLAGS)),
                 canonical(v[b"BODY[]"]))
                for v in got.values())
        self._logout(c)
        return state

    def local_state(self):
        state = {}
        for dirpath, dirs, _files in os.walk(self.local):
            if not {"cur", "new", "tmp"} <= set(dirs):
                continue
            # mbsync 1.4 names local folders in IMAP's modified UTF-7, as the server sent them
            name = os.path.relpath(dirpath, self.local).replace(os.sep, "/").encode().decode("imap4-utf-7")
            msgs = []
            for sub in ("cur", "new"):
                for fn in os.listdir(os.path.join(dirpath, sub)):
                    with open(os.path.join(dirpath, sub, fn), "rb") as f:
                        data = f.read()
                    letters = fn.split(":2,", 1)[1] if ":2," in fn else ""
                    msgs.append((message_id(data), "".join(sorted(ch for ch in letters if ch in MAILDIR_FLAGS)),
                                 canonical(data)))
            state[name] = sorted(msgs)
        return state

    def remote_snapshot(self, user):
        """What a no-op sync must not change: per folder UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UID->flags."""
        c = self.client(user)
        snap = {}
        for _flags, _delim, name in c.list_folders():
            info = c.select_folder(name, readonly=True)
            uids = c.fetch(c.search(["ALL"]), ["FLAGS"])
            snap[name] = (info[b"UIDVALIDITY"], info[b"UIDNEXT"], info[b"HIGHESTMODSEQ"],
                          sorted((u, sorted(v[b"FLAGS"])) for u, v in uids.items()))
        self._logout(c)
        return snap

    def local_snapshot(self):
        out = []
        for dirpath, _dirs, files in os.walk(self.local):
            for fn in files:
                if fn != ".mbsyncstate.lock":
                    out.append(os.path.relpath(os.path.join(dirpath, fn), self.local))
        return sorted(out)

    def local_maildir(self, name):
        path = os.path.join(self.local, *name.split("/"))
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return path

    def local_add(self, folder, data, flags=None):
        """Drop a message into the local Maildir (cur/ with flags, else new/)."""
        path = self.local_maildir(folder)
        base = f"{time.time_ns()}.M{uuid.uuid4().hex[:8]}P{os.getpid()}.client"
        name = os.path.join(path, "new", base) if flags is None else os.path.join(path, "cur", f"{base}:2,{flags}")
        with open(name, "wb") as f:
            f.write(data.replace(b"\r\n", b"\n"))

    def local_file(self, folder, msgid):
        """The local file of the message with ``msgid`` in ``folder``."""
        path = self.local_maildir(folder)
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(path, sub)):
                with open(os.path.join(path, sub, fn), "rb") as f:
                    if message_id(f.read()) == msgid:
                        return os.path.join(path, sub, fn)
        self.fail(f"{msgid} not in local {folder}")

    def local_set_flags(self, folder, msgid, letters):
        old = self.local_file(folder, msgid)
        base = os.path.basename(old).split(":2,", 1)[0]
        os.rename(old, os.path.join(os.path.dirname(os.path.dirname(old)), "cur", f"{base}:2,{letters}"))

    def assertSynced(self, user):
        remote, local = self.remote_state(user), self.local_state()
        self.assertEqual(sorted(remote), sorted(local))
        for name in remote:
            self.assertEqual(remote[name], local[name], f"folder {name!r} differs")
            ids = [m[0] for m in remote[name]]
            self.assertEqual(len(ids), len(set(ids)), f"duplicates in {name!r}")
        return remote

    @staticmethod
    def ids(state, folder):
        return {m[0] for m in state.get(folder, [])}

    @staticmethod
    def flags(state, folder, msgid):
        return next(m[1] for m in state[folder] if m[0] == msgid)

    def test_sync_both_ways_twice(self):
        user = SYNC
        c = self.client(user)
        # far side: INBOX with flagged/seen/answered/draft messages and one of 300 KB,
        # a nested folder, a non-ASCII one, and mail that arrives by SMTP
        remote_flags = {0: "\\Seen", 1: "\\Flagged", 2: "\\Seen \\Answered", 3: "\\Draft"}
        self.fill(user, "INBOX", [
            (message(f"remote {i}", "y" * 300_000 + "\r\n" if i == 5 else f"remote body {i}\r\n",
                     msgid=f"r{i}@sync.test", to=user), remote_flags.get(i % 5)) for i in range(40)])
        c.create_folder("Projects/2024")
        self.fill(user, "Projects/2024", [(message(f"project {i}", msgid=f"p{i}@sync.test", to=user), None)
                                          for i in range(3)])
        c.create_folder("Été")
        c.append("Été", message("summer", msgid="summer@sync.test", to=user), flags=[b"\\Seen"])
        self.smtp_deliver(message("by smtp", msgid="smtp1@sync.test", to=user), [user])
        self._logout(c)
        # near side: mail in the local INBOX and a folder the server does not have yet
        self.local_add("INBOX", message("local 0", msgid="l0@sync.test", to=user))
        self.local_add("INBOX", message("local 1", msgid="l1@sync.test", to=user), flags="FS")
        self.local_add("Local", message("local folder 0", msgid="lf0@sync.test", to=user), flags="S")
        self.local_add("Local", message("local folder 1", msgid="lf1@sync.test", to=user))

        # first sync: TLS on connect, AUTHENTICATE PLAIN
        self.write_config(user, "IMAPS", "PLAIN")
        self.mbsync()
        state = self.assertSynced(user)
        self.assertEqual(self.ids(state, "INBOX"),
                         {f"<r{i}@sync.test>" for i in range(40)} | {mid("smtp1"), mid("l0"), mid("l1")})
        self.assertEqual(self.ids(state, "Projects/2024"), {mid(f"p{i}") for i in range(3)})
        self.assertEqual(self.ids(state, "Été"), {mid("summer")})
        self.assertEqual(self.ids(state, "Local"), {mid("lf0"), mid("lf1")})
        self.assertEqual(self.flags(state, "INBOX", mid("r1")), "F")
        self.assertEqual(self.flags(state, "INBOX", mid("r2")), "RS")
        self.assertEqual(self.flags(state, "INBOX", mid("r3")), "D")
        self.assertEqual(self.flags(state, "INBOX", mid("l1")), "FS")
        self.assertEqual(self.flags(state, "Local", mid("lf0")), "S")
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertEqual(state[name], [])
        big = next(m for m in state["INBOX"] if m[0] == mid("r5"))
        self.assertIn(b"y" * 300_000, big[2])

        # changes on both sides
        c = self.client(user)
        c.select_folder("INBOX")
        uid_of = {message_id(v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]): u
                  for u, v in c.fetch(c.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).items()}
        c.add_flags([uid_of[mid("r4")]], [b"\\Seen"])
        c.remove_flags([uid_of[mid("r1")]], [b"\\Flagged"])
        c.add_flags([uid_of[mid("l0")]], [b"\\Answered"])
        c.add_flags([uid_of[mid("r6")], uid_of[mid("l1")]], [b"\\Deleted"])
        c.expunge()
        c.append("INBOX", message("remote new", msgid="rnew@sync.test", to=user), flags=[b"\\Flagged"])
        c.create_folder("Remote-new")
        c.append("Remote-new", message("in a new remote folder", msgid="rfolder@sync.test", to=user))
        self._logout(c)
        self.smtp_deliver(message("by smtp again", msgid="smtp2@sync.test", to=user), [user])
        self.local_add("INBOX", message("local new", msgid="lnew@sync.test", to=user))
        self.local_set_flags("INBOX", mid("r7"), "RS")
        self.local_set_flags("INBOX", mid("r2"), "S")                  # \Answered removed
        os.unlink(self.local_file("INBOX", mid("r8")))                 # deleted
        self.local_set_flags("INBOX", mid("r9"), "ST")                 # trashed: expunged on both sides
        self.local_set_flags("Local", mid("lf1"), "F")
        self.local_add("Local/Sub", message("nested local", msgid="lsub@sync.test", to=user), flags="S")

        # second sync: STARTTLS, LOGIN
        self.write_config(user, "STARTTLS", "LOGIN")
        self.mbsync()
        state = self.assertSynced(user)
        expected = ({f"<r{i}@sync.test>" for i in range(40)} - {mid("r6"), mid("r8"), mid("r9")}
                    | {mid("smtp1"), mid("smtp2"), mid("l0"), mid("rnew"), mid("lnew")})
        self.assertEqual(self.ids(state, "INBOX"), expected)
        for msgid, flags in (("r4", "S"), ("r1", ""), ("l0", "R"), ("rnew", "F"), ("r7", "RS"), ("r2", "S"),
                             ("smtp2", ""), ("lnew", "")):
            self.assertEqual(self.flags(state, "INBOX", mid(msgid)), flags, msgid)
        self.assertEqual(self.ids(state, "Remote-new"), {mid("rfolder")})
        self.assertEqual(self.ids(state, "Local/Sub"), {mid("lsub")})
        self.assertEqual(self.flags(state, "Local", mid("lf1")), "F")

        # a third sync has nothing to do: neither side changes
        remote_before, local_before = self.remote_snapshot(user), self.local_snapshot()
        self.write_config(user, "IMAPS", "PLAIN")
        self.mbsync()
        self.assertEqual(self.remote_snapshot(user), remote_before)
        self.assertEqual(self.local_snapshot(), local_before)
        self.assertEqual(self.assertSynced(user), state)

    def test_many_messages_pulled_and_pushed(self):
        """Pipelined FETCHes and APPENDs: 300 messages each way, nothing lost or doubled."""
        user = SYNC2
        c = self.client(user)
        c.create_folder("Bulk")
        self._logout(c)
        self.fill(user, "Bulk", [(message(f"bulk {i}", f"bulk body {i}\r\n", msgid=f"b{i}@bulk.test", to=user),
                                  "\\Seen" if i % 2 else None) for i in range(300)])
        for i in range(300):
            self.local_add("Pushed", message(f"push {i}", msgid=f"u{i}@bulk.test", to=user),
                           flags="F" if i % 3 == 0 else "")
        self.write_config(user)
        self.mbsync()
        state = self.assertSynced(user)
        self.assertEqual(len(state["Bulk"]), 300)
        self.assertEqual(len(state["Pushed"]), 300)
        self.assertEqual(sum(1 for m in state["Bulk"] if m[1] == "S"), 150)
        self.assertEqual(sum(1 for m in state["Pushed"] if m[1] == "F"), 100)
        # the server gave the pushed messages UIDs 1..300 in one UIDVALIDITY
        c = self.client(user)
        info = c.select_folder("Pushed", readonly=True)
        self.assertEqual((info[b"EXISTS"], info[b"UIDNEXT"]), (300, 301))
        self.assertEqual(len(c.search(["FLAGGED"])), 100)


# --- curl -----------------------------------------------------------------------------------

class CurlTests(ClientsTestCase):
    """curl's IMAP URLs (RFC 5092): fetch by UID and sequence number, sections,
    partial fetches, LIST, a custom command, SEARCH, APPEND (upload)."""

    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed")
        ClientsTestCase.setUp(self)

    def curl(self, url, *args, user=READER, password=None, expect_rc=0):
        p = subprocess.run(["curl", "-sS", "--cacert", self.cert, "--max-time", "30",
                            "-u", f"{user}:{password or PASSWORDS[user]}", *args, url],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, expect_rc, p.stderr)
        return p.stdout

    def url(self, path="", tls="starttls"):
        if tls == "implicit":
            return f"imaps://{HOST}:{self.ports['imaps']}/{path}"
        return f"imap://{HOST}:{self.ports['imap']}/{path}"

    def reader_folder(self, *messages):
        """A fresh folder of READER's with ``messages`` (UIDs 1, 2, ...)."""
        c = self.client(READER)
        name = self.folder(c, "Curl")
        for data in messages:
            c.append(name, data)
        return c, name

    def test_fetch_by_uid_over_starttls(self):
        first, second = message("curl one", "first body\r\n"), message("curl two", "second body\r\n")
        c, name = self.reader_folder(first, second)
        self.assertEqual(self.curl(self.url(f"{name};UID=2"), "--ssl-reqd"), second)
        self.assertEqual(self.curl(self.url(f"{name};UID=1"), "--ssl-reqd"), first)
        # curl's UID FETCH BODY[] is not a PEEK: both are \Seen now
        c.select_folder(name, readonly=True)
        self.assertEqual(c.get_flags([1, 2]), {1: (b"\\Seen",), 2: (b"\\Seen",)})

    def test_fetch_sections_and_partial_over_imaps(self):
        data = message("sections", "the text part\r\n")
        _c, name = self.reader_folder(message("other"), data)
        self.assertEqual(self.curl(self.url(f"{name};UID=2;SECTION=TEXT", "implicit")), b"the text part\r\n")
        self.assertEqual(self.curl(self.url(f"{name};UID=2;SECTION=HEADER.FIELDS%20(SUBJECT)", "implicit")),
                         b"Subject: sections\r\n\r\n")
        self.assertEqual(self.curl(self.url(f"{name};UID=2;PARTIAL=0.20", "implicit")), data[:20])
        self.assertEqual(self.curl(self.url(f"{name};MAILINDEX=2", "implicit")), data)

    def test_list_folders(self):
        c = self.client(READER)
        name = self.folder(c, "CurlList")
        c.create_folder(f"{name}/child")
        out = self.curl(self.url(), "--ssl-reqd").decode().splitlines()
        for line in ('* LIST (\\HasNoChildren) "/" "INBOX"',
                     '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
                     '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
                     f'* LIST (\\HasChildren) "/" "{name}"',
                     f'* LIST (\\HasNoChildren) "/" "{name}/child"'):
            self.assertIn(line, out)
        self.assertEqual(len(out), len(c.list_folders()))

    def test_custom_command_examine(self):
        _c, name = self.reader_folder(message("x1"), message("x2"), message("x3"))
        out = self.curl(self.url(), "--ssl-reqd", "-X", f"EXAMINE {name}").decode().splitlines()
        self.assertEqual(out[:4], ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                                   "* OK [PERMANENTFLAGS ()] Read-only mailbox",
                                   "* 3 EXISTS", "* 3 RECENT"])     # EXAMINE shows \Recent, keeps it
        self.assertIn("* OK [UNSEEN 1] First unseen", out)
        self.assertIn("* OK [UIDNEXT 4] Predicted next UID", out)
        self.assertTrue(any(re.fullmatch(r"\* OK \[UIDVALIDITY \d+\] UIDs valid", line) for line in out), out)

    def test_search(self):
        _c, name = self.reader_folder(message("apples"), message("pears"), message("more apples"))
        self.assertEqual(self.curl(self.url(f"{name}?SUBJECT%20apples", "implicit")), b"* SEARCH 1 3\r\n")
        self.assertEqual(self.curl(self.url(f"{name}?SUBJECT%20plums", "implicit")), b"* SEARCH\r\n")

    def test_upload_appends(self):
        c, name = self.reader_folder()
        data = message("uploaded by curl", "sent with curl -T\r\n")
        path = os.path.join(self.tmp, "upload.eml")
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(self.curl(self.url(name), "--ssl-reqd", "-T", path), b"")
        c.select_folder(name, readonly=True)
        got = c.fetch([1], ["BODY.PEEK[]", "FLAGS"])
        self.assertEqual(got[1][b"BODY[]"], data)

    def test_wrong_password_and_no_tls(self):
        self.assertEqual(self.curl(self.url("INBOX;UID=1", "implicit"), password="wrong", expect_rc=67), b"")
        # without TLS the server offers no way to log in (LOGINDISABLED, no AUTH=): curl gives up
        self.assertEqual(self.curl(self.url("INBOX;UID=1"), expect_rc=67), b"")
        self.assertEqual([line for line in self.server.read_log().splitlines()
                          if f"imap login user={READER}" in line and "tls=no" in line], [])


# --- imapclient -----------------------------------------------------------------------------

class IMAPClientTests(ClientsTestCase):
    """imapclient on what test_imap.py leaves out: IDLE seeing other sessions'
    flag changes and expunges, UID EXPUNGE, COPYUID through imapclient's copy(),
    CONDSTORE's CHANGEDSINCE on MODSEQ alone."""

    def test_idle_sees_other_sessions(self):
        c, other = self.client(), self.client()
        name = self.folder(c, "Idle")
        for i in range(3):
            c.append(name, message(f"idle {i}"))
        c.select_folder(name)
        other.select_folder(name)
        c.idle()
        try:
            other.add_flags([2], [b"\\Flagged"])
            other.delete_messages([1])
            other.expunge()
            responses = self.idle_until(c, lambda rs: any(r[1] == b"EXPUNGE" for r in rs))
        finally:
            c.idle_done()
        self.assertIn((1, b"EXPUNGE"), responses)
        fetches = [r for r in responses if r[1] == b"FETCH"]
        self.assertTrue(fetches, responses)
        self.assertIn(b"\\Flagged", fetches[0][2][fetches[0][2].index(b"FLAGS") + 1])
        self.assertEqual(c.search(["ALL"]), [2, 3])            # imapclient searches UIDs

    @staticmethod
    def idle_until(c, done, timeout=5.0):
        start, responses = time.monotonic(), []
        while time.monotonic() - start < timeout and not done(responses):
            responses += c.idle_check(timeout=0.2)
        return responses

    def test_idle_push_to_two_users_from_one_smtp_transaction(self):
        a, b = self.client(ALICE), self.client(CAROL)
        for c in (a, b):
            c.select_folder("INBOX")
            c.idle()
        subject = f"to both {uuid.uuid4().hex}"
        try:
            self.smtp_deliver(message(subject), [ALICE, CAROL])
            got = [self.idle_until(c, lambda rs: any(r[1] == b"EXISTS" for r in rs), timeout=15.0) for c in (a, b)]
        finally:
            for c in (a, b):
                c.idle_done()
        for responses in got:
            self.assertTrue(any(r[1] == b"EXISTS" for r in responses), responses)
        for c in (a, b):
            self.assertEqual(len(c.search(["SUBJECT", subject])), 1)

    def test_uid_expunge_only_given_uids(self):
        c = self.client()
        name = self.folder(c, "UidExp")
        for i in range(4):
            c.append(name, message(f"ue {i}"))
        c.select_folder(name)
        c.add_flags([1, 2, 3], [b"\\Deleted"])
        c.uid_expunge([2])
        self.assertEqual(c.search(["ALL"]), [1, 3, 4])            # imapclient searches UIDs
        self.assertEqual(c.search(["DELETED"]), [1, 3])

    def test_copy_and_move_return_uidplus_codes(self):
        c = self.client()
        src, dst = self.folder(c, "Src"), self.folder(c, "Dst")
        for i in range(3):
            c.append(src, message(f"cp {i}"))
        c.select_folder(src)
        c.copy([1, 3], dst)
        c.move([2], dst)
        self.assertEqual(c.search(["ALL"]), [1, 3])
        dst_c = self.client()
        dst_c.select_folder(dst, readonly=True)
        subjects = {u: v[b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for u, v in
                    dst_c.fetch(dst_c.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items()}
        self.assertEqual(subjects, {1: b"Subject: cp 0", 2: b"Subject: cp 2", 3: b"Subject: cp 1"})

    def test_condstore_changedsince_modseq(self):
        c = self.client()
        name = self.folder(c, "Modseq")
        for i in range(5):
            c.append(name, message(f"ms {i}"))
        info = c.select_folder(name)
        highest = info[b"HIGHESTMODSEQ"]
        self.assertEqual(c.fetch(c.search(["ALL"]), ["MODSEQ"], modifiers=[f"CHANGEDSINCE {highest}"]), {})
        c.add_flags([2, 4], [b"$Label1"])
        changed = c.fetch(c.search(["ALL"]), ["MODSEQ"], modifiers=[f"CHANGEDSINCE {highest}"])
        self.assertEqual(sorted(changed), [2, 4])
        modseqs = {u: v[b"MODSEQ"][0] for u, v in changed.items()}
        self.assertTrue(all(m > highest for m in modseqs.values()), modseqs)
        top = max(modseqs.values())       # one STORE may give all its messages one MODSEQ (RFC 7162 3.1)
        self.assertEqual(c.search(["MODSEQ", str(top)]), sorted(u for u, m in modseqs.items() if m == top))
        self.assertEqual(c.search(["MODSEQ", str(highest + 1)]), [2, 4])
        again = c.select_folder(name, readonly=True)
        self.assertEqual(again[b"HIGHESTMODSEQ"], top)
        self.assertEqual(c.fetch([1, 2, 3, 4, 5], ["MODSEQ"], modifiers=[f"CHANGEDSINCE {top}"]), {})
