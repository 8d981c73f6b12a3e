"""RFC 3501 edge cases, scripted over a raw connection to the real server, each
asserting the exact untagged and tagged responses (the human text after OK/NO/BAD
too, since jdmail's is fixed; where only the status matters, only it is checked).

tests/e2e/test_imap.py covers the same areas through imaplib/imapclient; this
module pins the wire format and the corners those clients never send.
"""

import atexit
import base64
import concurrent.futures
import os
import re
import smtplib
import sqlite3
import uuid

from twisted.trial import unittest

from tests.e2e import BOB, USERS, _build_template
from tests.fixtures.imap import RawIMAP
from tests.fixtures.server import JdmailServer

# accounts of their own, for tests that look at a whole account
LISTER, INBOXER = "lists@example.org", "inbox@example.org"
PASSWORDS = dict(USERS, **{LISTER: "lists-pw", INBOXER: "inbox-pw"})

_server = None


def rfc_server():
    """The module's server: the e2e template's users plus this module's."""
    global _server
    if _server is not None and _server.proc.poll() is None:
        return _server
    template = _build_template()
    server = JdmailServer()
    server.write_ini()
    os.makedirs(server.datadir, mode=0o700, exist_ok=True)
    src = sqlite3.connect(os.path.join(template, "directory.sqlite"))
    dst = sqlite3.connect(os.path.join(server.datadir, "directory.sqlite"))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda u: server.ctl("user", "add", u, "--password", PASSWORDS[u]), (LISTER, INBOXER)))
    server.start()
    atexit.register(server.stop)
    _server = server
    return server


def message(n, subject=None, body=None, extra=""):
    """A small message; its Message-ID is <n@rfc.test>."""
    subject = f"message {n}" if subject is None else subject
    body = f"body of message {n}\r\n" if body is None else body
    return (f"From: Sender <sender@remote.test>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{n}@rfc.test>\r\n{extra}"
            f"\r\n{body}").encode()


# multipart/mixed: 1 multipart/alternative (1.1 text/plain, 1.2 text/html QP),
# 2 message/rfc822 (a text/plain message), 3 application/octet-stream base64
NESTED = (b"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: nested\r\n"
          b"Date: Wed, 03 Jan 2024 09:00:00 +0000\r\nMessage-ID: <nested@example.org>\r\nMIME-Version: 1.0\r\n"
          b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
          b"This is a multi-part message in MIME format.\r\n"
          b"--outer\r\n"
          b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
          b"--inner\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain text\r\n"
          b"--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
          b"\r\n<p>html =C3=A9</p>\r\n"
          b"--inner--\r\n"
          b"--outer\r\n"
          b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n"
          b"From: Cem <cem@example.net>\r\nSubject: inner message\r\nMessage-ID: <inner@example.net>\r\n\r\n"
          b"inner body\r\n"
          b"--outer\r\n"
          b'Content-Type: application/octet-stream; name="a.bin"\r\nContent-Transfer-Encoding: base64\r\n'
          b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n'
          b"AAECAwQFBgcICQ==\r\n"
          b"--outer--\r\n")

SELECT_HEAD = ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
               "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted"]


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class RFCTestCase(unittest.TestCase):

    def setUp(self):
        self.server = rfc_server()
        self.ports = self.server.ports

    def raw(self, user=BOB, tls=True):
        c = RawIMAP(self.ports["imaps" if tls else "imap"], tls=tls)
        self.addCleanup(c.close)
        if user:
            c.login(user, PASSWORDS[user])
        return c

    def folder(self, c, messages=(), prefix="R"):
        """A new folder holding ``messages`` (bytes, or (bytes, flags, date)), UIDs from 1."""
        name = unique(prefix)
        self.assertEqual(c.cmd(f"CREATE {name}"), ["T OK Create completed"])
        if messages:
            c.append_many(name, [m if isinstance(m, tuple) else (m, None, None) for m in messages])
        return name

    def select(self, c, name, examine=False):
        lines = c.cmd(("EXAMINE " if examine else "SELECT ") + name)
        self.assertTrue(lines[-1].startswith("T OK [READ-"), lines)
        return lines

    @staticmethod
    def uidvalidity(lines):
        return int(re.search(r"\[UIDVALIDITY (\d+)\]", "\n".join(lines)).group(1))

    def assertStatus(self, lines, status, tag="T"):
        """A single tagged line with ``status`` (the text after it is not checked)."""
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{tag} {status} "), lines)


class SequenceSetTests(RFCTestCase):

    def test_star_and_reversed_ranges(self):
        c = self.raw()
        name = self.folder(c, [message(i) for i in range(5)])
        self.select(c, name)
        self.assertEqual(c.cmd("FETCH *:2 (UID)"), ["* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "* 4 FETCH (UID 4)",
                                                   "* 5 FETCH (UID 5)", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 4:* (UID)"), ["* 4 FETCH (UID 4)", "* 5 FETCH (UID 5)", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH *:* (UID)"), ["* 5 FETCH (UID 5)", "T OK Fetch completed"])
        # overlapping and repeated members: each message once, in order
        self.assertEqual(c.cmd("FETCH 5:4,1,*,2:1 (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 4 FETCH (UID 4)",
                                                           "* 5 FETCH (UID 5)", "T OK Fetch completed"])
        self.assertEqual(c.cmd("STORE *:4 +FLAGS (\\Flagged)"), ["* 4 FETCH (FLAGS (\\Flagged \\Recent))",
                                                                "* 5 FETCH (FLAGS (\\Flagged \\Recent))",
                                                                "T OK Store completed"])
        self.assertEqual(c.cmd("SEARCH 3:* FLAGGED"), ["* SEARCH 4 5", "T OK Search completed"])
        self.assertEqual(c.cmd("SEARCH NOT 2:*"), ["* SEARCH 1", "T OK Search completed"])

    def test_numbers_out_of_range_are_bad(self):
        c = self.raw()
        name = self.folder(c, [message(i) for i in range(3)])
        self.select(c, name)
        self.assertEqual(c.cmd("FETCH 0 (UID)"), ["T BAD Invalid number in sequence set"])
        self.assertEqual(c.cmd("FETCH 2:4 (UID)"), ["T BAD Invalid message sequence number: 4"])
        self.assertEqual(c.cmd("STORE 4:* +FLAGS (\\Seen)"), ["T BAD Invalid message sequence number: 4"])
        self.assertEqual(c.cmd("FETCH 4294967296 (UID)"), ["T BAD Invalid number in sequence set"])
        for bad in ("1:", "1,,2", ":2", "1:2:3", "-1", "1.5"):
            self.assertStatus(c.cmd(f"FETCH {bad} (UID)"), "BAD")
        self.assertEqual(c.cmd("SEARCH SEEN"), ["* SEARCH", "T OK Search completed"])   # nothing was stored
        self.assertEqual(c.cmd("NOOP"), ["T OK Noop completed"])

    def test_uids_past_the_end(self):
        c = self.raw()
        dest = self.folder(c)
        name = self.folder(c, [message(i) for i in range(3)])
        self.select(c, name)
        self.assertEqual(c.cmd("UID FETCH 4:2 (UID)"), ["* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)",
                                                       "T OK UID Fetch completed"])
        # "*" is the highest UID in use, so *:100 is 3:100
        self.assertEqual(c.cmd("UID FETCH *:100 (UID)"), ["* 3 FETCH (UID 3)", "T OK UID Fetch completed"])
        self.assertEqual(c.cmd("UID FETCH 4294967295 (FLAGS)"), ["T OK UID Fetch completed"])
        self.assertEqual(c.cmd("UID STORE 7:9 +FLAGS (\\Seen)"), ["T OK UID Store completed"])
        self.assertEqual(c.cmd("UID SEARCH UID 4:10"), ["* SEARCH", "T OK UID Search completed"])
        self.assertEqual(c.cmd("UID SEARCH 4:10 ALL"), ["* SEARCH", "T OK UID Search completed"])
        self.assertEqual(c.cmd(f"UID COPY 7 {dest}"), ["T OK Copy completed"])
        self.assertEqual(c.cmd(f"UID MOVE 7:8 {dest}"), ["T OK Move completed"])
        self.assertEqual(c.cmd("UID EXPUNGE 7"), ["T OK UID Expunge completed"])
        # nothing happened: no \Seen, nothing copied or moved
        self.assertEqual(c.cmd("SEARCH SEEN"), ["* SEARCH", "T OK Search completed"])
        self.assertEqual(c.cmd(f"STATUS {dest} (MESSAGES UIDNEXT)"),
                         [f'* STATUS "{dest}" (MESSAGES 0 UIDNEXT 1)', "T OK Status completed"])
        self.assertEqual(c.cmd(f"STATUS {name} (MESSAGES)"), [f'* STATUS "{name}" (MESSAGES 3)', "T OK Status completed"])

    def test_uid_commands_on_an_empty_mailbox(self):
        c = self.raw()
        name = self.folder(c)
        lines = self.select(c, name)
        self.assertIn("* 0 EXISTS", lines)
        self.assertIn("* OK [UIDNEXT 1] Predicted next UID", lines)
        self.assertEqual(c.cmd("UID FETCH 1:* (FLAGS)"), ["T OK UID Fetch completed"])
        self.assertEqual(c.cmd("UID SEARCH 1:*"), ["* SEARCH", "T OK UID Search completed"])
        self.assertEqual(c.cmd("UID STORE 1:* +FLAGS (\\Seen)"), ["T OK UID Store completed"])
        self.assertEqual(c.cmd("SEARCH ALL"), ["* SEARCH", "T OK Search completed"])


class FetchTests(RFCTestCase):

    def nested(self, c, examine=False):
        name = self.folder(c, [NESTED])
        self.select(c, name, examine)
        return name

    def test_nested_mime_and_header_sections(self):
        c = self.raw()
        self.nested(c)
        expect = {
            "1.2.MIME": b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
            "1.MIME": b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n',
            "1.1": b"plain text",
            "1.2": b"<p>html =C3=A9</p>",                     # as stored: no transfer decoding
            "2.HEADER": b"From: Cem <cem@example.net>\r\nSubject: inner message\r\n"
                        b"Message-ID: <inner@example.net>\r\n\r\n",
            "2.HEADER.FIELDS (SUBJECT)": b"Subject: inner message\r\n\r\n",
            "2.TEXT": b"inner body",
            "2.MIME": b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n",
            "2": b"From: Cem <cem@example.net>\r\nSubject: inner message\r\nMessage-ID: <inner@example.net>\r\n"
                 b"\r\ninner body",                           # the whole encapsulated message
            "2.1": b"inner body",                             # the body of a non-multipart message
            "3": b"AAECAwQFBgcICQ==",
        }
        for section, data in expect.items():
            self.assertEqual(c.cmd(f"FETCH 1 (BODY.PEEK[{section}])"),
                             [f"* 1 FETCH (BODY[{section}] {{{len(data)}}}\r\n{data.decode()})", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[3]<4.8>)"),
                         ["* 1 FETCH (BODY[3]<4> {8}\r\nAwQFBgcI)", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[0])"), ["T BAD Invalid section"])
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)"), ["* 1 FETCH (FLAGS (\\Recent))", "T OK Fetch completed"])

    def test_nested_bodystructure(self):
        c = self.raw()
        self.nested(c)
        text = '("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
        html = '("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 18 0 NIL NIL NIL NIL)'
        cem = '(("Cem" NIL "cem" "example.net"))'
        envelope = f'(NIL "inner message" {cem} {cem} {cem} NIL NIL NIL NIL "<inner@example.net>")'
        inner = '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
        rfc822 = f'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" 98 {envelope} {inner} 4 NIL NIL NIL NIL)'
        binary = ('("APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 16 NIL '
                  '("ATTACHMENT" ("FILENAME" "a.bin")) NIL NIL)')
        self.assertEqual(c.cmd("FETCH 1 (BODYSTRUCTURE)"), [
            f'* 1 FETCH (BODYSTRUCTURE (({text}{html} "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
            f'{rfc822}{binary} "MIXED" ("BOUNDARY" "outer") NIL NIL NIL))', "T OK Fetch completed"])

    def test_partial_fetches(self):
        c = self.raw()
        data = message(1, body="".join(f"line {i:03d}\r\n" for i in range(20)))
        self.assertGreater(len(data), 200)
        name = self.folder(c, [data])
        self.select(c, name)

        def fetched(origin, part):
            return [f"* 1 FETCH (BODY[]<{origin}> {{{len(part)}}}\r\n{part.decode()})", "T OK Fetch completed"]
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[]<0.100>)"), fetched(0, data[:100]))
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[]<50.10>)"), fetched(50, data[50:60]))
        self.assertEqual(c.cmd(f"FETCH 1 (BODY.PEEK[]<{len(data) - 4}.100>)"), fetched(len(data) - 4, data[-4:]))
        # RFC 3501 6.4.5: an origin past the end gives an empty string
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[]<100000.10>)"), fetched(100000, b""))
        text = data.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[TEXT]<2.7>)"),
                         [f"* 1 FETCH (BODY[TEXT]<2> {{7}}\r\n{text[2:9].decode()})", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[]<0.0>)"), ["T BAD Invalid partial range"])
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)"), ["* 1 FETCH (FLAGS (\\Recent))", "T OK Fetch completed"])

    def test_peek_does_not_set_seen_and_body_does(self):
        c = self.raw()
        data = message(1)
        text = data.split(b"\r\n\r\n", 1)[1].decode()
        name = self.folder(c, [data, message(2)])
        self.select(c, name)
        self.assertEqual(c.cmd("FETCH 1 (BODY.PEEK[TEXT])"),
                         [f"* 1 FETCH (BODY[TEXT] {{{len(text)}}}\r\n{text})", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (RFC822.HEADER)")[-1], "T OK Fetch completed")
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)"), ["* 1 FETCH (FLAGS (\\Recent))", "T OK Fetch completed"])
        # the first BODY[] sets \Seen and says so in the same FETCH response
        self.assertEqual(c.cmd("FETCH 1 (BODY[TEXT])"),
                         [f"* 1 FETCH (BODY[TEXT] {{{len(text)}}}\r\n{text} FLAGS (\\Seen \\Recent))",
                          "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (BODY[TEXT])"),
                         [f"* 1 FETCH (BODY[TEXT] {{{len(text)}}}\r\n{text})", "T OK Fetch completed"])
        self.assertTrue(c.cmd("FETCH 2 (RFC822.TEXT)")[0].endswith(" FLAGS (\\Seen \\Recent))"))
        other = self.raw()
        self.select(other, name, examine=True)
        self.assertEqual(other.cmd("FETCH 1:2 (FLAGS)"), ["* 1 FETCH (FLAGS (\\Seen))", "* 2 FETCH (FLAGS (\\Seen))",
                                                         "T OK Fetch completed"])

    def test_examine_never_sets_seen(self):
        c = self.raw()
        data = message(1)
        name = self.folder(c, [data])
        self.select(c, name, examine=True)
        self.assertEqual(c.cmd("FETCH 1 (BODY[])"),
                         [f"* 1 FETCH (BODY[] {{{len(data)}}}\r\n{data.decode()})", "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 1 (RFC822)"),
                         [f"* 1 FETCH (RFC822 {{{len(data)}}}\r\n{data.decode()})", "T OK Fetch completed"])
        self.assertEqual(c.cmd("STORE 1 +FLAGS (\\Seen)"), ["T NO Mailbox is read-only"])
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)"), ["* 1 FETCH (FLAGS (\\Recent))", "T OK Fetch completed"])


class SearchTests(RFCTestCase):
    """Five messages: 1 \\Seen, 2 \\Flagged and 5 KB, 3 non-ASCII subject with X-Tag,
    4 \\Seen \\Answered with an encoded-word subject and 8-bit body, 5 \\Deleted with X-Tag."""

    def setUp(self):
        RFCTestCase.setUp(self)
        self.c = self.raw()
        msgs = [
            (message(1, "alpha report", extra=""), "\\Seen", "01-Feb-2020 12:00:00 +0000"),
            (message(2, "beta news", body="x" * 5000 + "\r\n"), "\\Flagged", "15-Mar-2021 12:00:00 +0000"),
            (message(3, "Grüße aus Köln", extra="X-Tag: special\r\n").replace(
                b"Tue, 02 Jan 2024 10:00:00 +0000", b"Wed, 10 Jan 2024 08:00:00 +0100"), None,
             "15-Mar-2021 13:00:00 +0000"),
            (message(4, "=?UTF-8?Q?Caf=C3=A9?= menu", body="Crème brûlée\r\n"), "\\Seen \\Answered",
             "20-Jun-2023 12:00:00 +0000"),
            (message(5, "delta", extra="X-Tag: other\r\n"), "\\Deleted", "20-Jun-2023 12:00:00 +0000"),
        ]
        self.name = self.folder(self.c, msgs)
        self.select(self.c, self.name)

    def search(self, criteria, uid=False):
        return self.c.cmd(("UID SEARCH " if uid else "SEARCH ") + criteria)

    def assertFound(self, criteria, numbers, uid=False):
        done = "T OK UID Search completed" if uid else "T OK Search completed"
        self.assertEqual(self.search(criteria, uid), [" ".join(["* SEARCH"] + [str(n) for n in numbers]), done],
                         criteria)

    def test_or_not_and_flags(self):
        self.assertFound("OR SUBJECT alpha FROM nobody", [1])
        self.assertFound("OR SUBJECT alpha SUBJECT delta", [1, 5])
        self.assertFound("NOT SEEN", [2, 3, 5])
        self.assertFound("NOT OR SEEN FLAGGED", [3, 5])
        self.assertFound("OR OR SEEN FLAGGED DELETED", [1, 2, 4, 5])
        self.assertFound("(OR SEEN DELETED) NOT 1", [4, 5])
        self.assertFound("ANSWERED", [4])
        self.assertFound("UNANSWERED UNDELETED UNFLAGGED", [1, 3])
        self.assertFound("NEW", [2, 3, 5])             # \Recent and not \Seen
        self.assertFound("OLD", [])
        self.assertFound("2:4 UNSEEN", [2, 3])
        self.assertFound("UID 2:* NOT DELETED", [2, 3, 4])
        self.assertFound("SUBJECT nothing-matches", [])

    def test_dates(self):
        # internal date (APPEND's), the date part only
        self.assertFound("ON 15-Mar-2021", [2, 3])
        self.assertFound("SINCE 15-Mar-2021", [2, 3, 4, 5])
        self.assertFound("BEFORE 15-Mar-2021", [1])
        self.assertFound("SINCE 16-Mar-2021 BEFORE 20-Jun-2023", [])
        self.assertFound("OR ON 1-Feb-2020 ON 20-Jun-2023", [1, 4, 5])
        # the Date: header
        self.assertFound("SENTON 10-Jan-2024", [3])
        self.assertFound("SENTBEFORE 3-Jan-2024", [1, 2, 4, 5])
        self.assertFound("SENTSINCE 3-Jan-2024", [3])
        self.assertEqual(self.search("ON 31-Feb-2021"), ["T BAD Invalid date 31-Feb-2021 (expected e.g. 1-Feb-1994)"])
        self.assertEqual(self.search("SINCE 2021-03-15"), ["T BAD Invalid date 2021-03-15 (expected e.g. 1-Feb-1994)"])

    def test_header_and_size(self):
        self.assertFound("HEADER X-Tag special", [3])
        self.assertFound('HEADER X-Tag ""', [3, 5])          # an empty string: every message with the field
        self.assertFound('NOT HEADER X-Tag ""', [1, 2, 4])
        self.assertFound("HEADER Message-ID <4@rfc.test>", [4])
        self.assertFound("LARGER 4000", [2])
        self.assertFound("SMALLER 4000", [1, 3, 4, 5])
        self.assertFound("LARGER 100 SMALLER 4000 UNSEEN", [3, 5])
        self.assertFound("TEXT xxxxxxxxxx", [2])
        self.assertEqual(self.search("FOO"), ["T BAD Unknown search key FOO"])
        self.assertStatus(self.search("OR SEEN"), "BAD")
        self.assertStatus(self.search("LARGER x"), "BAD")

    def test_charset_utf8_literals(self):
        for key, word, found in (("SUBJECT", "Köln", [3]), ("SUBJECT", "KÖLN", [3]), ("TEXT", "grüße", [3]),
                                 ("SUBJECT", "Café", [4]),       # in an encoded-word
                                 ("BODY", "brûlée", [4]), ("SUBJECT", "brûlée", [])):
            lines = self.c.literal_cmd(f"SEARCH CHARSET UTF-8 {key} ", word.encode())
            self.assertEqual(lines, [" ".join(["* SEARCH"] + [str(n) for n in found]), "T OK Search completed"],
                             (key, word))
        # LITERAL+ and UID SEARCH
        self.c.send("u UID SEARCH CHARSET UTF-8 OR SUBJECT {5+}\r\nKöln BODY brul\r\n".encode())
        self.assertEqual(self.c.until("u"), ["* SEARCH 3", "u OK UID Search completed"])
        self.c.send(b"v SEARCH CHARSET UTF-8 SUBJECT {2+}\r\n\xc3\x28\r\n")
        self.assertEqual(self.c.until("v"), ["v BAD Invalid UTF-8 in search string"])
        self.assertFound("CHARSET US-ASCII SUBJECT beta", [2])
        self.assertEqual(self.search("CHARSET KOI8-R SUBJECT beta"),
                         ["T NO [BADCHARSET (US-ASCII UTF-8)] Charset KOI8-R is not supported"])


class ExpungeTests(RFCTestCase):

    def test_expunge_numbers_follow_rfc_3501_7_4_1(self):
        """The RFC's own example: 11 messages, 3, 4, 7 and 11 deleted."""
        c, other = self.raw(), self.raw()
        name = self.folder(c, [message(i) for i in range(1, 12)])
        self.select(c, name)
        self.select(other, name)
        self.assertEqual(c.cmd("STORE 3:4,7,11 +FLAGS.SILENT (\\Deleted)"), ["T OK Store completed"])
        expunges = ["* 3 EXPUNGE", "* 3 EXPUNGE", "* 5 EXPUNGE", "* 8 EXPUNGE"]
        self.assertEqual(c.cmd("EXPUNGE"), expunges + ["T OK Expunge completed"])
        self.assertEqual(other.cmd("NOOP"), expunges + ["T OK Noop completed"])
        left = ["* %d FETCH (UID %d)" % (i + 1, u) for i, u in enumerate((1, 2, 5, 6, 8, 9, 10))]
        self.assertEqual(c.cmd("FETCH 1:* (UID)"), left + ["T OK Fetch completed"])
        self.assertEqual(other.cmd("FETCH 1:* (UID)"), left + ["T OK Fetch completed"])

    def test_uid_expunge_only_the_given_uids(self):
        c = self.raw()
        name = self.folder(c, [message(i) for i in range(1, 7)])
        self.select(c, name)
        c.cmd("STORE 1:4 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd("UID EXPUNGE 2:3,5:6"), ["* 2 EXPUNGE", "* 2 EXPUNGE", "T OK UID Expunge completed"])
        self.assertEqual(c.cmd("UID SEARCH DELETED"), ["* SEARCH 1 4", "T OK UID Search completed"])

    def test_close_expunges_silently_unselect_and_examine_do_not(self):
        c, other = self.raw(), self.raw()
        name = self.folder(c, [message(i) for i in range(1, 6)])
        self.select(c, name)
        self.select(other, name)
        c.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd("UNSELECT"), ["T OK Unselect completed"])
        self.assertEqual(other.cmd("NOOP"), ["* 1 FETCH (FLAGS (\\Deleted) UID 1)", "* 2 FETCH (FLAGS (\\Deleted) UID 2)",
                                             "T OK Noop completed"])
        self.select(c, name, examine=True)
        self.assertEqual(c.cmd("CLOSE"), ["T OK Close completed"])
        self.assertEqual(other.cmd("NOOP"), ["T OK Noop completed"])
        self.select(c, name)
        self.assertEqual(c.cmd("CLOSE"), ["T OK Close completed"])     # no untagged EXPUNGE
        self.assertEqual(other.cmd("NOOP"), ["* 1 EXPUNGE", "* 1 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(c.cmd(f"STATUS {name} (MESSAGES)"), [f'* STATUS "{name}" (MESSAGES 3)', "T OK Status completed"])


class AppendTests(RFCTestCase):

    def test_flags_and_internal_date(self):
        c = self.raw()
        name = self.folder(c)
        data = message(1)
        lines = c.literal_cmd(f'APPEND {name} (\\Seen $Work \\flagged) " 5-Mar-2024 10:20:30 +0200" ', data)
        self.assertEqual(len(lines), 1, lines)
        validity = int(re.fullmatch(r"T OK \[APPENDUID (\d+) 1\] Append completed", lines[0]).group(1))
        lines = c.literal_cmd(f'APPEND {name} () "31-Dec-1999 23:59:59 -0800" ', message(2))
        self.assertEqual(lines, [f"T OK [APPENDUID {validity} 2] Append completed"])
        lines = c.literal_cmd(f"APPEND {name} (\\DRAFT) ", message(3))
        self.assertEqual(lines, [f"T OK [APPENDUID {validity} 3] Append completed"])
        lines = self.select(c, name)
        self.assertEqual(lines[:2], ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
                                     "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
                                     "Flags permitted"])
        self.assertEqual(self.uidvalidity(lines), validity)
        # the internal date is kept to the second (reported in UTC)
        self.assertEqual(c.cmd("FETCH 1:2 (INTERNALDATE FLAGS RFC822.SIZE)"), [
            f'* 1 FETCH (INTERNALDATE "05-Mar-2024 08:20:30 +0000" FLAGS (\\Flagged \\Seen \\Recent $Work) '
            f"RFC822.SIZE {len(data)})",
            f'* 2 FETCH (INTERNALDATE "01-Jan-2000 07:59:59 +0000" FLAGS (\\Recent) RFC822.SIZE {len(message(2))})',
            "T OK Fetch completed"])
        self.assertEqual(c.cmd("FETCH 3 (FLAGS)"), ["* 3 FETCH (FLAGS (\\Draft \\Recent))", "T OK Fetch completed"])
        self.assertEqual(c.cmd("SEARCH ON 5-Mar-2024"), ["* SEARCH 1", "T OK Search completed"])
        self.assertEqual(c.cmd("SEARCH KEYWORD $Work"), ["* SEARCH 1", "T OK Search completed"])

    def test_refused_appends(self):
        c = self.raw()
        name = self.folder(c)
        data = message(1)
        self.assertEqual(c.literal_cmd(f'APPEND {name} "31-Feb-2024 10:20:30 +0200" ', data),
                         ["T BAD Invalid date-time: date-time out of range"])
        self.assertEqual(c.literal_cmd(f'APPEND {name} "2024-03-05 10:20:30" ', data)[0][:26],
                         "T BAD Invalid date-time: e")
        self.assertEqual(c.literal_cmd(f"APPEND {name} (\\Bogus) ", data), ["T BAD Unknown system flag \\Bogus"])
        self.assertEqual(c.literal_cmd(f"APPEND {name} ((\\Seen)) ", data), ["T BAD Invalid flag"])
        self.assertEqual(c.literal_cmd(f"APPEND {name} ", b""), ["T NO Cannot append an empty message"])
        self.assertEqual(c.literal_cmd(f"APPEND no-such-{name} ", data), ["T NO [TRYCREATE] Mailbox does not exist"])
        # no TRYCREATE for a name that CREATE refuses as well
        self.assertEqual(c.literal_cmd('APPEND "../x" ', data),
                         ["T NO Invalid mailbox name: '.' and '..' are not allowed"])
        self.assertEqual(c.literal_cmd('APPEND "/abs" ', data), ["T NO Invalid mailbox name: empty hierarchy level"])
        self.assertEqual(c.cmd(f"STATUS {name} (MESSAGES)"), [f'* STATUS "{name}" (MESSAGES 0)', "T OK Status completed"])


class RenameInboxTests(RFCTestCase):

    def test_rename_inbox_moves_messages_and_leaves_inbox_empty(self):
        user = INBOXER
        c, watcher = self.raw(user), self.raw(user)
        c.append_many("INBOX", [(message(1), "\\Seen", None), (message(2), None, None), (message(3), None, None)])
        self.assertEqual(c.cmd("CREATE INBOX/child"), ["T OK Create completed"])
        lines = self.select(watcher, "INBOX")
        validity = self.uidvalidity(lines)
        self.assertIn("* 3 EXISTS", lines)
        self.assertEqual(c.cmd("RENAME INBOX Old"), ["T OK Rename completed"])
        # RFC 3501 6.3.5: the messages move to the new name, INBOX stays (empty), its
        # inferiors are not renamed; a session that had INBOX selected sees them go
        self.assertEqual(watcher.cmd("NOOP"), ["* 1 EXPUNGE", "* 1 EXPUNGE", "* 1 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(c.cmd("STATUS Old (MESSAGES UNSEEN UIDNEXT)"),
                         ['* STATUS "Old" (MESSAGES 3 UNSEEN 2 UIDNEXT 4)', "T OK Status completed"])
        # INBOX keeps its UIDVALIDITY, so its UIDs go on from 4: none is used twice
        self.assertEqual(c.cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY)"),
                         [f'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 4 UIDVALIDITY {validity})', "T OK Status completed"])
        listed = c.cmd('LIST "" *')
        for line in ('* LIST (\\HasChildren) "/" "INBOX"', '* LIST (\\HasNoChildren) "/" "INBOX/child"',
                     '* LIST (\\HasNoChildren) "/" "Old"'):
            self.assertIn(line, listed)
        self.select(c, "Old")
        self.assertEqual(c.cmd("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), [
            "* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (MESSAGE-ID)] {28}\r\n"
            "Message-ID: <1@rfc.test>\r\n\r\n)",
            "* 2 FETCH (UID 2 FLAGS (\\Recent) BODY[HEADER.FIELDS (MESSAGE-ID)] {28}\r\n"
            "Message-ID: <2@rfc.test>\r\n\r\n)",
            "* 3 FETCH (UID 3 FLAGS (\\Recent) BODY[HEADER.FIELDS (MESSAGE-ID)] {28}\r\n"
            "Message-ID: <3@rfc.test>\r\n\r\n)",
            "T OK Fetch completed"])
        # new mail goes to the (new) INBOX
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as s:
            s.sendmail("sender@remote.test", [user], message(4))
        self.assertEqual(watcher.cmd("NOOP"), ["* 1 EXISTS", "* 1 RECENT", "T OK Noop completed"])
        self.assertEqual(watcher.cmd("FETCH 1 (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), [
            "* 1 FETCH (UID 4 BODY[HEADER.FIELDS (MESSAGE-ID)] {28}\r\nMessage-ID: <4@rfc.test>\r\n\r\n)",
            "T OK Fetch completed"])
        self.assertEqual(c.cmd("RENAME Old INBOX"), ["T NO [ALREADYEXISTS] INBOX already exists"])
        self.assertEqual(c.cmd("DELETE INBOX"), ["T NO INBOX cannot be deleted"])


class TwoSessionTests(RFCTestCase):

    def two(self, n=5):
        a, b = self.raw(), self.raw()
        name = self.folder(a, [message(i) for i in range(1, n + 1)])
        self.select(a, name)        # a is told about the messages first: they are \Recent in a
        self.select(b, name)
        return a, b, name

    def test_store_reported_to_the_other_session(self):
        a, b, _name = self.two()
        self.assertEqual(a.cmd("STORE 2 +FLAGS (\\Flagged)"), ["* 2 FETCH (FLAGS (\\Flagged \\Recent))",
                                                              "T OK Store completed"])
        self.assertEqual(b.cmd("NOOP"), ["* 2 FETCH (FLAGS (\\Flagged) UID 2)", "T OK Noop completed"])
        self.assertEqual(b.cmd("NOOP"), ["T OK Noop completed"])
        self.assertEqual(b.cmd("STORE 3 FLAGS.SILENT ($Label1 \\Answered)"), ["T OK Store completed"])
        self.assertEqual(a.cmd("NOOP"), ["* 3 FETCH (FLAGS (\\Answered \\Recent $Label1) UID 3)",
                                         "T OK Noop completed"])

    def test_expunge_reported_only_after_noop(self):
        a, b, name = self.two()
        dest = self.folder(a)
        a.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(a.cmd("EXPUNGE"), ["* 2 EXPUNGE", "T OK Expunge completed"])
        # b still has 5 messages and its numbers do not move during FETCH, STORE, SEARCH, COPY
        self.assertEqual(b.cmd("FETCH 1:* (UID)"), ["* %d FETCH (UID %d)" % (i, i) for i in range(1, 6)]
                         + ["T OK Fetch completed"])
        self.assertEqual(b.cmd("FETCH 2 (BODY.PEEK[])"), ["T NO [EXPUNGEISSUED] Some messages were expunged by another session"])
        self.assertEqual(b.cmd("STORE 3 +FLAGS (\\Seen)"), ["* 3 FETCH (FLAGS (\\Seen))", "T OK Store completed"])
        self.assertEqual(b.cmd("SEARCH ALL"), ["* SEARCH 1 2 3 4 5", "T OK Search completed"])
        self.assertEqual(b.cmd("SEARCH SEEN"), ["* SEARCH 3", "T OK Search completed"])
        lines = b.cmd(f"COPY 4 {dest}")
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^T OK \[COPYUID \d+ 4 1\] Copy completed$")
        self.assertEqual(b.cmd("NOOP"), ["* 2 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(b.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 3)", "* 3 FETCH (UID 4)",
                                                   "* 4 FETCH (UID 5)", "T OK Fetch completed"])
        self.assertEqual(a.cmd("NOOP"), ["* 2 FETCH (FLAGS (\\Seen \\Recent) UID 3)", "T OK Noop completed"])

    def test_move_of_a_message_another_session_expunged(self):
        """MOVE reports EXPUNGE only for what it moved; the other one comes with the next
        NOOP, once (a second EXPUNGE would make the client drop the wrong message)."""
        a, b, name = self.two()
        dest = self.folder(a)
        a.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)")
        a.cmd("EXPUNGE")
        lines = b.cmd(f"MOVE 3:4 {dest}")
        self.assertRegex(lines[0], r"^\* OK \[COPYUID \d+ 4 1\] Moved$")
        self.assertEqual(lines[1:], ["* 4 EXPUNGE", "T OK Move completed"])
        self.assertEqual(b.cmd("NOOP"), ["* 3 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(b.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "* 3 FETCH (UID 5)",
                                                   "T OK Fetch completed"])
        self.assertEqual(b.cmd("FETCH 4 (UID)"), ["T BAD Invalid message sequence number: 4"])
        a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.cmd("EXPUNGE")
        self.assertEqual(b.cmd(f"UID MOVE 1 {dest}"), ["T OK Move completed"])
        self.assertEqual(b.cmd("NOOP"), ["* 1 EXPUNGE", "T OK Noop completed"])
        self.assertEqual(b.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 2)", "* 2 FETCH (UID 5)", "T OK Fetch completed"])
        self.assertEqual(b.cmd(f"STATUS {dest} (MESSAGES)"), [f'* STATUS "{dest}" (MESSAGES 1)', "T OK Status completed"])

    def test_new_message_reported_after_noop(self):
        a, b, name = self.two(2)
        appender = self.raw()
        appender.append_many(name, [(message(3), None, None)])
        self.assertEqual(b.cmd("FETCH 1:* (UID)"), ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)", "T OK Fetch completed"])
        # the first session told about it gets it as \Recent
        self.assertEqual(b.cmd("NOOP"), ["* 3 EXISTS", "* 1 RECENT", "T OK Noop completed"])
        self.assertEqual(a.cmd("NOOP"), ["* 3 EXISTS", "* 2 RECENT", "T OK Noop completed"])
        self.assertEqual(b.cmd("FETCH 3 (UID FLAGS)"), ["* 3 FETCH (UID 3 FLAGS (\\Recent))", "T OK Fetch completed"])


class ListTests(RFCTestCase):

    def test_many_wildcards(self):
        c = self.raw(LISTER)
        for name in ("ax", "b/cx", "b/dy", "x", "Zx/y"):        # CREATE makes the parents "b" and "Zx" too
            self.assertEqual(c.cmd(f'CREATE "{name}"'), ["T OK Create completed"])
        expected = ['* LIST (\\HasChildren) "/" "Zx"', '* LIST (\\HasNoChildren) "/" "ax"',
                    '* LIST (\\HasNoChildren) "/" "b/cx"', '* LIST (\\HasNoChildren) "/" "x"', "T OK List completed"]
        self.assertEqual(c.cmd('LIST "" "*%*%*%*%*%*%*%*%*%*%*%*%*%*%*%*x"'), expected)
        self.assertEqual(c.cmd('LIST "" "' + "%*" * 200 + 'x"'), expected)
        self.assertEqual(c.cmd('LIST "" "%x"'), ['* LIST (\\HasChildren) "/" "Zx"', '* LIST (\\HasNoChildren) "/" "ax"',
                                               '* LIST (\\HasNoChildren) "/" "x"', "T OK List completed"])
        self.assertEqual(c.cmd('LIST "" "%/%"'), ['* LIST (\\HasNoChildren) "/" "Zx/y"',
                                                 '* LIST (\\HasNoChildren) "/" "b/cx"',
                                                 '* LIST (\\HasNoChildren) "/" "b/dy"', "T OK List completed"])
        self.assertEqual(c.cmd('LIST "b/" "%"'), ['* LIST (\\HasNoChildren) "/" "b/cx"',
                                                 '* LIST (\\HasNoChildren) "/" "b/dy"', "T OK List completed"])
        self.assertEqual(c.cmd('LIST "" "B*"'), ["T OK List completed"])        # names are case-sensitive
        self.assertEqual(c.cmd('LIST "" "inBox"'), ['* LIST (\\HasNoChildren) "/" "INBOX"', "T OK List completed"])
        self.assertEqual(c.cmd('LIST "" ""'), ['* LIST (\\Noselect) "/" ""', "T OK List completed"])
        self.assertEqual(c.cmd('SUBSCRIBE "b/cx"'), ["T OK Subscribe completed"])
        # RFC 3501 6.3.9: "%" in LSUB shows an unsubscribed parent of a subscribed name as \Noselect
        self.assertEqual(c.cmd('LSUB "" "%"'), ['* LSUB () "/" "INBOX"', '* LSUB () "/" "Archive"',
                                               '* LSUB () "/" "Drafts"', '* LSUB () "/" "Junk"',
                                               '* LSUB () "/" "Sent"', '* LSUB () "/" "Trash"',
                                               '* LSUB (\\Noselect) "/" "b"', "T OK Lsub completed"])
        self.assertEqual(c.cmd('LSUB "" "b/*"'), ['* LSUB () "/" "b/cx"', "T OK Lsub completed"])


class MailboxNameTests(RFCTestCase):

    BAD_NAMES = {"../x": "'.' and '..' are not allowed", "a/../b": "'.' and '..' are not allowed",
                 "/abs": "empty hierarchy level", "a//b": "empty hierarchy level", ".": "'.' and '..' are not allowed"}

    def test_unsafe_names_refused_by_every_command(self):
        c = self.raw()
        name = self.folder(c, [message(1)])
        self.select(c, name)
        for bad, why in self.BAD_NAMES.items():
            no = [f"T NO Invalid mailbox name: {why}"]
            for cmd in (f'SELECT "{bad}"', f'EXAMINE "{bad}"', f'STATUS "{bad}" (MESSAGES)', f'DELETE "{bad}"',
                        f'RENAME "{bad}" elsewhere', f'RENAME {name} "{bad}"', f'SUBSCRIBE "{bad}"',
                        f'CREATE "{bad}/sub"'):
                self.assertEqual(c.cmd(cmd), no, cmd)
            if not bad.startswith("."):
                self.assertEqual(c.cmd(f'CREATE "{bad}"'), no)
            self.assertEqual(c.literal_cmd(f'APPEND "{bad}" ', message(2)), no)
        for dirpath, dirs, _files in os.walk(self.server.datadir):
            for d in dirs:
                self.assertNotIn(d, ("x", "abs", "b", "etc"), dirpath)
        self.assertEqual(c.cmd(f"STATUS {name} (MESSAGES)"), [f'* STATUS "{name}" (MESSAGES 1)', "T OK Status completed"])

    def test_control_characters_in_literals(self):
        c = self.raw()
        name = self.folder(c)
        for bad in (b"a\x00b", b"x\x01y", b"a\r\nb", b"tab\there", b"del\x7f"):
            for head in ("CREATE ", "SELECT ", f"RENAME {name} "):
                self.assertEqual(c.literal_cmd(head, bad), ["T NO Mailbox name contains control characters"], (head, bad))
        self.assertEqual(c.literal_cmd("CREATE ", b"8bit-\xff"),
                         ["T NO Mailbox name is not valid modified UTF-7 (8-bit characters)"])
        self.assertEqual(c.cmd('LIST "" "*"')[-1], "T OK List completed")

    def test_modified_utf7(self):
        c = self.raw()
        prefix = unique("U")
        # RFC 3501 5.1.3: "&" must be "&-"; base64 must be closed, must not encode
        # printable ASCII ("&AGE-" is "a") and must not be split ("&U,BTFw-&ZeVnLIqe-")
        for bad in ("&", "&Jjo", "&Jjo!", "&AGE-", "&U,BTFw-&ZeVnLIqe-", "&AMk-&AOk-"):
            self.assertEqual(c.cmd(f'CREATE "{prefix}{bad}"'), ["T NO Mailbox name is not valid modified UTF-7"], bad)
        for good in ("&-", "&ZeVnLIqe-", "&2D3eAA-", "caf&AOk-"):
            self.assertEqual(c.cmd(f'CREATE "{prefix}{good}"'), ["T OK Create completed"], good)
        self.assertEqual(c.cmd(f'LIST "" "{prefix}*"'), [
            f'* LIST (\\HasNoChildren) "/" "{prefix}&-"', f'* LIST (\\HasNoChildren) "/" "{prefix}caf&AOk-"',
            f'* LIST (\\HasNoChildren) "/" "{prefix}&ZeVnLIqe-"', f'* LIST (\\HasNoChildren) "/" "{prefix}&2D3eAA-"',
            "T OK List completed"])
        self.assertEqual(c.cmd(f'SELECT "{prefix}caf&AOk-"')[-1], "T OK [READ-WRITE] SELECT completed")


class LiteralTests(RFCTestCase):

    def test_bad_literal_sizes(self):
        c = self.raw()
        self.assertEqual(c.cmd("SELECT {-1}"), ["T BAD Invalid literal size"])
        self.assertEqual(c.cmd("APPEND INBOX {-1}"), ["T BAD Invalid literal size"])
        self.assertEqual(c.cmd("APPEND INBOX {18446744073709551616}"), ["T BAD [TOOBIG] Literal too large"])
        self.assertEqual(c.cmd("SELECT {65537}"), ["T BAD Literal too large"])
        for bad in ("{1a}", "{}", "{+}", "{ 1}"):
            self.assertStatus(c.cmd(f"SELECT {bad}"), "BAD")
        self.assertEqual(c.cmd("NOOP"), ["T OK Noop completed"])
        before = RawIMAP(self.ports["imap"])
        self.addCleanup(before.close)
        self.assertEqual(before.cmd("LOGIN {-1}"), ["T BAD Invalid literal size"])
        self.assertEqual(before.cmd("LOGIN {8193}"), ["T BAD Literal too large"])
        self.assertEqual(before.cmd("NOOP"), ["T OK Noop completed"])

    def test_negative_non_synchronizing_literal_closes(self):
        c = self.raw()
        c.send("a APPEND INBOX {-1+}\r\nxyz\r\n")
        self.assertEqual(c.line(), "a BAD Invalid literal size")
        self.assertEqual(c.line(), "* BYE Non-synchronizing literal too large")
        self.assertTrue(c.closed())


class AuthenticateTests(RFCTestCase):

    PLAIN = base64.b64encode(f"\0{BOB}\0{USERS[BOB]}".encode()).decode()

    def test_plain_before_tls_refused_without_a_continuation(self):
        c = self.raw(user=None, tls=False)
        self.assertIn(" LOGINDISABLED]", c.greeting)
        self.assertNotIn("AUTH=PLAIN", c.greeting)
        # no "+": the client is never invited to send the password in clear
        self.assertEqual(c.cmd("AUTHENTICATE PLAIN"),
                         ["T NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use STARTTLS"])
        self.assertEqual(c.cmd("AUTHENTICATE LOGIN"), ["T NO Unsupported authentication mechanism"])
        self.assertEqual(c.cmd('LOGIN "bob@example.org" "secret"'),
                         ["T NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS; use STARTTLS"])
        self.assertEqual(c.cmd("SELECT INBOX"), ["T BAD Not logged in"])

    def test_sasl_exchange_after_starttls(self):
        c = self.raw(user=None, tls=False)
        self.assertEqual(c.cmd("STARTTLS"), ["T OK Begin TLS negotiation now"])
        c.starttls()
        self.assertEqual(c.cmd("CAPABILITY"), ["* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE AUTH=PLAIN",
                                               "T OK Capability completed"])
        for response, expect in (("*", ["a BAD Authentication cancelled"]),
                                 ("!!not-base64", ["a BAD Invalid base64 in the authentication response"]),
                                 (base64.b64encode(f"alice@example.org\0{BOB}\0{USERS[BOB]}".encode()).decode(),
                                  ["a NO [AUTHENTICATIONFAILED] Authentication failed"])):
            c.send("a AUTHENTICATE PLAIN\r\n")
            self.assertEqual(c.line(), "+ ")
            c.send(response + "\r\n")
            self.assertEqual(c.until("a"), expect, response)
        # an authzid that names the user itself is fine
        same = base64.b64encode(f"{BOB}\0{BOB}\0{USERS[BOB]}".encode()).decode()
        c.send("b AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.line(), "+ ")
        c.send(same + "\r\n")
        lines = c.until("b")
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^b OK \[CAPABILITY IMAP4rev1 .*\] Logged in$")
        self.assertEqual(c.cmd("AUTHENTICATE PLAIN " + self.PLAIN), ["T BAD Already logged in"])
        self.assertEqual(c.cmd("LOGOUT"), ["* BYE Logging out", "T OK Logout completed"])
