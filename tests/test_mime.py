"""jdmail.mime: MIME structure, ENVELOPE/BODYSTRUCTURE, BODY[section] and decoded text.

Exact values for hand-checked messages of tests/fixtures/messages/, and invariants
for every message of the corpus (and damaged copies of them): each part's size in
BODYSTRUCTURE is the length of BODY[part], its line count the CRLFs in it,
HEADER + TEXT is the message, HEADER.FIELDS ends with the blank line.
"""

import os
import random
import re

from twisted.trial import unittest

from jdmail.mime import (MessageStructure, decode_bytes, decode_header_value,
                         header_section, parse_addresses)

CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "messages")


def corpus():
    """[(file name, octets)] for every message of the corpus."""
    names = sorted(n for n in os.listdir(CORPUS) if n.endswith(".eml"))
    out = []
    for name in names:
        with open(os.path.join(CORPUS, name), "rb") as f:
            out.append((name, f.read()))
    return out


def load(prefix):
    for name, data in corpus():
        if name.startswith(prefix):
            return data, MessageStructure.parse(data)
    raise KeyError(prefix)


# --- a small IMAP response parser (independent of jdmail's own code) ------------------------

_ATOM = re.compile(rb"[^ ()\"{}\r\n]+")


def parse_imap(text):
    """Parse one IMAP value: lists -> list, strings -> bytes, NIL -> None, numbers -> int.
    Raises ValueError unless the whole text is consumed."""
    pos = 0

    def value():
        nonlocal pos
        c = text[pos:pos + 1]
        if c == b"(":
            pos += 1
            out = []
            while True:
                if text[pos:pos + 1] == b")":
                    pos += 1
                    return out
                if out and not (isinstance(out[-1], list) and text[pos:pos + 1] == b"("):
                    if text[pos:pos + 1] != b" ":
                        raise ValueError("expected SP at %d: %r" % (pos, text[pos:pos + 20]))
                    pos += 1
                out.append(value())
        if c == b'"':
            pos += 1
            out = bytearray()
            while True:
                ch = text[pos:pos + 1]
                if ch == b"":
                    raise ValueError("unterminated quoted string")
                if ch in (b"\r", b"\n") or ch[0] >= 0x80:
                    raise ValueError("bad octet in quoted string")
                if ch == b'"':
                    pos += 1
                    return bytes(out)
                if ch == b"\\":
                    pos += 1
                    ch = text[pos:pos + 1]
                    if ch not in (b"\\", b'"'):
                        raise ValueError("bad escape")
                out += ch
                pos += 1
        if c == b"{":
            end = text.index(b"}\r\n", pos)
            n = int(text[pos + 1:end])
            pos = end + 3 + n
            if pos > len(text):
                raise ValueError("literal runs past the end")
            return bytes(text[end + 3:pos])
        m = _ATOM.match(text, pos)
        if m is None:
            raise ValueError("unexpected %r at %d" % (text[pos:pos + 20], pos))
        pos = m.end()
        atom = m.group()
        if atom == b"NIL":
            return None
        if atom.isdigit():
            return int(atom)
        raise ValueError("unexpected atom %r" % (atom,))

    result = value()
    if pos != len(text):
        raise ValueError("trailing data: %r" % (text[pos:pos + 40],))
    return result


def body_parts(body):
    """Walk a parsed BODYSTRUCTURE: yield (section, parsed body) for every part, numbered
    as RFC 3501 6.4.5 does (part 1 of a single-part message is its body)."""
    if isinstance(body[0], list):
        yield from _inside(body, "")
    else:
        yield "1", body
        yield from _inside(body, "1")


def _inside(body, number):
    if isinstance(body[0], list):
        for i, child in enumerate(body):
            if not isinstance(child, list):
                break
            sub = "%s%d" % (number + "." if number else "", i + 1)
            yield sub, child
            yield from _inside(child, sub)
    elif body[0].upper() == b"MESSAGE" and body[1].upper() == b"RFC822":
        inner = body[8]
        if isinstance(inner[0], list):
            yield from _inside(inner, number)
        else:
            yield number + ".1", inner
            yield from _inside(inner, number + ".1")


def check_invariants(test, name, data, ms):
    """The properties every parsed message must have (see the module docstring)."""
    crlf = b"\r\n" in data or not data
    n = len(data)
    for sec, part in ms.walk():
        test.assertTrue(0 <= part.header_start <= part.header_end == part.body_start
                        <= part.body_end <= n, (name, sec, part))
    # BODYSTRUCTURE and BODY are valid IMAP; sizes and lines match the sections.
    for extensible in (True, False):
        bs = parse_imap(ms.bodystructure(extensible))
        parts = list(body_parts(bs))
        walked = [sec for sec, _ in ms.walk()]
        test.assertEqual([sec for sec, _ in parts], walked, (name, extensible))
        for sec, body in parts:
            if isinstance(body[0], list):
                continue
            octets = ms.section(data, sec)
            test.assertEqual(body[6], len(octets), (name, sec, "size"))
            kind = (body[0].upper(), body[1].upper())
            if kind[0] == b"TEXT":
                test.assertEqual(body[7], octets.count(b"\r\n" if crlf else b"\n"),
                                 (name, sec, "lines"))
            if kind == (b"MESSAGE", b"RFC822"):
                test.assertEqual(body[9], octets.count(b"\r\n" if crlf else b"\n"),
                                 (name, sec, "lines"))
                test.assertIsInstance(body[7], list)
                test.assertEqual(len(body[7]), 10)
            test.assertEqual(len(body), (12 if kind[0] == b"TEXT" else 14 if kind == (
                b"MESSAGE", b"RFC822") else 11) - (0 if extensible else 4), (name, sec))
    # ENVELOPE is valid IMAP with ten members.
    envelope = parse_imap(ms.envelope())
    test.assertEqual(len(envelope), 10, name)
    # HEADER + TEXT is the message; "" is the message.
    test.assertEqual(ms.section(data, "") , data, name)
    test.assertEqual(ms.section(data, "HEADER") + ms.section(data, "TEXT"), data, name)
    for fields in ("(FROM TO)", "(SUBJECT)", "(X-NOT-THERE)", "(DATE RECEIVED MESSAGE-ID)"):
        for kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            got = ms.section(data, kind + " " + fields)
            if crlf:
                test.assertTrue(got == b"\r\n" or got.endswith(b"\r\n\r\n"), (name, kind, got))
            else:
                test.assertTrue(got.endswith(b"\n"), (name, kind, got))
    # Every part: MIME header directly followed by its body; nested messages too.
    for sec, part in ms.walk():
        mime = ms.section(data, sec + ".MIME")
        body = ms.section(data, sec)
        test.assertIn(mime + body, data, (name, sec))
        if part.message is not None and part.encoding in ("7BIT", "8BIT", "BINARY"):
            test.assertEqual(ms.section(data, sec + ".HEADER") + ms.section(data, sec + ".TEXT"),
                             body, (name, sec))
            test.assertEqual(len(parse_imap(part.message.envelope())), 10)


class CorpusTests(unittest.TestCase):

    def test_corpus(self):
        self.assertGreaterEqual(len(corpus()), 25)

    def test_invariants(self):
        for name, data in corpus():
            check_invariants(self, name, data, MessageStructure.parse(data))

    def test_serialisation_round_trip(self):
        for name, data in corpus():
            ms = MessageStructure.parse(data)
            blob = ms.to_bytes()
            self.assertIsInstance(blob, bytes)
            again = MessageStructure.from_bytes(blob)
            self.assertEqual(again.bodystructure(True), ms.bodystructure(True), name)
            self.assertEqual(again.bodystructure(False), ms.bodystructure(False), name)
            self.assertEqual(again.envelope(), ms.envelope(), name)
            fresh = MessageStructure.from_bytes(blob)
            fresh._env_cache = fresh._bs_cache = None       # recomputed from the tree
            self.assertEqual(fresh.envelope(), ms.envelope(), name)
            self.assertEqual(fresh.bodystructure(True), ms.bodystructure(True), name)
            for (sec, part), (sec2, part2) in zip(ms.walk(), again.walk()):
                self.assertEqual(sec, sec2)
                for spec in (sec, sec + ".MIME", sec + ".HEADER", sec + ".TEXT"):
                    self.assertEqual(again.section(data, spec), ms.section(data, spec))
                if part.message is not None:
                    self.assertEqual(part2.message.envelope(), part.message.envelope())
            self.assertEqual(again.header(data, "subject"), ms.header(data, "subject"))
            self.assertEqual(again.body_text(data), ms.body_text(data))

    def test_from_bytes_refuses_other_data(self):
        good = MessageStructure.parse(b"Subject: x\r\n\r\nbody\r\n").to_bytes()
        for blob in (b"", b"JM1", b"JM1garbage", b"XX" + good[2:], good[:-5], b"JM9" + good[3:]):
            self.assertRaises(ValueError, MessageStructure.from_bytes, blob)

    def test_blob_is_compact(self):
        data, ms = load("01-")
        self.assertLess(len(ms.to_bytes()), 1024)


class ExactBodyStructureTests(unittest.TestCase):
    """Values computed by hand from the fixture files (and agreeing with Dovecot 2.3)."""

    def test_missing_final_boundary(self):
        data, ms = load("13-")
        self.assertEqual(
            ms.bodystructure(True),
            b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 72 2 NIL NIL NIL NIL)'
            b' "MIXED" ("BOUNDARY" "simple") NIL NIL NIL)')
        self.assertEqual(
            ms.bodystructure(False),
            b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0)'
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 72 2) "MIXED")')
        self.assertEqual(ms.section(data, "1"), b"first part")
        self.assertEqual(ms.section(data, "2"), b"second part, and then the message just ends"
                         b"\r\nwithout a close delimiter\r\n")

    def test_preamble_and_epilogue_ignored(self):
        data, ms = load("23-")
        self.assertEqual(
            ms.bodystructure(True),
            b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 0 NIL NIL NIL NIL)'
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
            b' "MIXED" ("BOUNDARY" "pe") NIL NIL NIL)')
        self.assertEqual(ms.section(data, "2"), b"part two\r\n")
        self.assertEqual(ms.section(data, "3"), b"")

    def test_top_level_message_rfc822(self):
        data, ms = load("32-")
        inner_env = (b'("Thu, 11 Apr 2024 18:00:00 +0000" "inner subject"'
                     b' (("Inner" NIL "inner" "example.org")) (("Inner" NIL "inner" "example.org"))'
                     b' (("Inner" NIL "inner" "example.org")) ((NIL NIL "wrap" "example.org"))'
                     b' NIL NIL NIL NIL)')
        self.assertEqual(
            ms.bodystructure(True),
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 132 ' + inner_env +
            b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)'
            b' 6 NIL NIL NIL NIL)')
        self.assertEqual(ms.section(data, "1"), ms.section(data, "TEXT"))
        self.assertEqual(len(ms.section(data, "1")), 132)
        self.assertEqual(ms.section(data, "1.1"), b"inner body\r\n")
        self.assertEqual(ms.section(data, "1.TEXT"), b"inner body\r\n")
        self.assertTrue(ms.section(data, "1.HEADER").startswith(b"From: Inner"))
        self.assertEqual(ms.section(data, "1.HEADER.FIELDS (SUBJECT)"),
                         b"Subject: inner subject\r\n\r\n")
        self.assertEqual(ms.section(data, "1.2"), b"")

    def test_rfc2231_and_extension_data(self):
        data, ms = load("21-")
        parts = dict(ms.walk())
        self.assertEqual(
            parts["3"].bodystructure(True),
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii" "NAME" "a very long file name that was split'
            b' into two pieces.txt") NIL NIL "7BIT" 5 0 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT"'
            b' ("FILENAME*" "us-ascii\'en\'notes%20for%20bob.txt")) ("en" "de-CH")'
            b' "http://files.example.de/notes.txt")')
        self.assertEqual(
            parts["2"].bodystructure(True),
            b'("APPLICATION" "VND.OPENXMLFORMATS-OFFICEDOCUMENT.SPREADSHEETML.SHEET"'
            b' ("NAME" "=?UTF-8?Q?Kosten=C3=BCbersicht_2024=2Exlsx?=") NIL NIL "BASE64" 98 NIL'
            b' ("ATTACHMENT" ("FILENAME*" "UTF-8\'\'%4B%6F%73%74%65%6E%C3%BC%62%65%72%73%69%63'
            b'%68%74%20%32%30%32%34%2E%78%6C%73%78")) NIL NIL)')
        self.assertEqual(parts["2"].filename(), "Kosten\xfcbersicht 2024.xlsx")
        self.assertEqual(parts["2"].param("name"), "Kosten\xfcbersicht 2024.xlsx")
        self.assertEqual(parts["3"].filename(), "notes for bob.txt")
        self.assertEqual(parts["3"].param("name"),
                         "a very long file name that was split into two pieces.txt")

    def test_attachments(self):
        data, ms = load("03-")
        bs = parse_imap(ms.bodystructure(True))
        self.assertEqual(bs[0][:8], [b"TEXT", b"PLAIN", [b"CHARSET", b"ISO-8859-1"], None, None,
                                     b"7BIT", 90, 5])
        self.assertEqual(bs[1][:7], [b"APPLICATION", b"PDF", [b"NAME", b"invoice-2024-117.pdf"],
                                     None, b"Invoice", b"BASE64", len(ms.section(data, "2"))])
        self.assertEqual(bs[1][7:], [None, [b"ATTACHMENT", [b"FILENAME", b"invoice-2024-117.pdf"]],
                                     None, None])
        self.assertEqual(bs[2][3], b"<logo@billing.example.com>")
        self.assertEqual(bs[2][8], [b"INLINE", [b"FILENAME", b"logo.png"]])
        self.assertEqual(bs[3:], [b"MIXED", [b"BOUNDARY", b"----=_Part_118_1930571372.1710403200000"],
                                  None, None, None])
        self.assertTrue(ms.section(data, "2").startswith(b"JVBERi0xLjQK"))

    def test_nested_rfc822_twice(self):
        data, ms = load("24-")
        self.assertEqual([sec for sec, _ in ms.walk()],
                         ["1", "2", "2.1", "2.2", "2.2.1"])
        self.assertEqual(ms.section(data, "2.2.TEXT"), b"Innermost body\r\nwith two lines")
        self.assertEqual(ms.section(data, "2.2.1"), b"Innermost body\r\nwith two lines")
        self.assertEqual(ms.section(data, "2.1"), b"Level 2 text")
        self.assertEqual(ms.section(data, "2.MIME"),
                         b'Content-Type: message/rfc822; name="fwd.eml"\r\n\r\n')
        self.assertEqual(ms.section(data, "2.2.MIME"), b"Content-Type: message/rfc822\r\n\r\n")
        self.assertTrue(ms.section(data, "2.HEADER").startswith(b"Message-ID: <mid@example.org>"))
        self.assertTrue(ms.section(data, "2.HEADER").endswith(b"MIME-Version: 1.0\r\n"
                                                              b"Content-Type: multipart/mixed;"
                                                              b' boundary="L2"\r\n\r\n'))
        self.assertEqual(ms.section(data, "2.HEADER.FIELDS (from)"),
                         b"From: Middle <middle@example.org>\r\n\r\n")
        self.assertEqual(ms.section(data, "2.2.HEADER.FIELDS (subject)"),
                         b"Subject: original\r\n\r\n")
        for missing in ("3", "2.3", "2.2.2", "1.1", "1.HEADER", "1.TEXT", "0", "MIME", "2.2.1.1",
                        "2..1", "HEADER.FIELDS", "TEXT (FROM)", "BOGUS"):
            self.assertEqual(ms.section(data, missing), b"", missing)
        parts = dict(ms.walk())
        inner = parts["2"].message
        self.assertEqual(parse_imap(inner.envelope())[1], b"Fwd: original")
        self.assertEqual(parse_imap(parts["2.2"].message.envelope())[1], b"original")

    def test_digest_defaults_to_message_rfc822(self):
        data, ms = load("06-")
        parts = dict(ms.walk())
        self.assertEqual((parts["2.1"].type, parts["2.1"].subtype), ("MESSAGE", "RFC822"))
        self.assertEqual((parts["2.2"].type, parts["2.2"].subtype), ("MESSAGE", "RFC822"))
        self.assertEqual(parse_imap(parts["2.1"].message.envelope())[1], b"Build broken")
        self.assertEqual(ms.section(data, "2.1.TEXT"), b"The nightly build is broken again.\r\n")
        self.assertEqual(ms.section(data, "2.2.1"), "Fixed in r1234 \u2013 sorry!\r\n".encode())
        # an explicit type inside the digest is kept
        self.assertEqual((parts["3"].type, parts["3"].subtype), ("TEXT", "PLAIN"))

    def test_empty_body_and_header_only(self):
        for prefix in ("15-", "16-"):
            data, ms = load(prefix)
            self.assertEqual(ms.bodystructure(True),
                             b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0'
                             b' NIL NIL NIL NIL)')
            self.assertEqual(ms.section(data, "HEADER"), data)
            self.assertEqual(ms.section(data, "TEXT"), b"")
            self.assertEqual(ms.section(data, "1"), b"")
        data, ms = load("16-")
        self.assertEqual(ms.section(data, "HEADER.FIELDS (SUBJECT)"), b"Subject: header only\r\n\r\n")
        self.assertEqual(ms.section(data, "HEADER.FIELDS.NOT (SUBJECT MESSAGE-ID DATE FROM)"),
                         b"To: bob@example.net\r\n\r\n")

    def test_bare_lf(self):
        data, ms = load("14-")
        self.assertNotIn(b"\r", data)
        bs = parse_imap(ms.bodystructure(True))
        self.assertEqual(bs[0][6:8], [17, 1])
        self.assertEqual(bs[1][6:8], [8, 0])
        self.assertEqual(ms.section(data, "1"), b"line one\nline two")
        self.assertEqual(ms.section(data, "2"), b"attached")
        self.assertTrue(ms.section(data, "HEADER").endswith(b"\n\n"))

    def test_malformed_multiparts_keep_their_text(self):
        # The declared boundary never occurs / there is none: one text/plain child
        # with the whole body (Dovecot reports an empty child; we keep the text).
        for prefix in ("12-", "29-"):
            data, ms = load(prefix)
            self.assertEqual(len(ms.children), 1)
            self.assertEqual(ms.section(data, "1"), ms.section(data, "TEXT"))
            self.assertEqual(ms.section(data, "1.MIME"), b"")

    def test_boundary_prefix_of_inner_boundary(self):
        data, ms = load("33-")
        self.assertEqual([sec for sec, _ in ms.walk()], ["1", "1.1", "1.2", "2"])
        self.assertEqual(ms.section(data, "1.1"), b"plain")
        self.assertEqual(ms.section(data, "1.2"), b"<p>html</p>")
        self.assertEqual(ms.section(data, "2"), b"after")

    def test_encoded_message_rfc822_is_opaque_and_empty_parts(self):
        data, ms = load("34-")
        bs = parse_imap(ms.bodystructure(True))
        self.assertEqual(bs[0][6:8], [0, 0])                  # "--E" right after "--E"
        self.assertEqual(bs[1][6:8], [0, 0])                  # header, no body
        self.assertEqual(ms.section(data, "2.MIME"), b"Content-Type: text/plain\r\n")
        self.assertEqual(bs[2][:6], [b"MESSAGE", b"RFC822", None, None, None, b"BASE64"])
        self.assertEqual(bs[2][7], [None] * 10)
        self.assertEqual(bs[2][8][:8], [b"TEXT", b"PLAIN", [b"CHARSET", b"US-ASCII"], None, None,
                                        b"7BIT", 0, 0])

    def test_odd_headers(self):
        data, ms = load("28-")
        self.assertEqual(ms.bodystructure(False),
                         b'("TEXT" "PLAIN" ("CHARSET" "ISO-8859-15" "FORMAT" "flowed")'
                         b' "<  spaced@id  >" "=?utf-8?q?Beschreibung?=" "8BIT" 13 1)')
        self.assertEqual(ms.section(data, 'HEADER.FIELDS ("subject")'),
                         b"Subject : first subject\r\nSubject: second subject\r\n\r\n")
        self.assertEqual(ms.section(data, "header.fields (x-folded-tab)"),
                         b"X-Folded-Tab:\r\n\tstarts on the next line\r\n\r\n")
        self.assertEqual(ms.header(data, "Subject"), ["first subject", "second subject"])
        self.assertEqual(ms.header(data, "x-folded-tab"), ["starts on the next line"])
        self.assertEqual(ms.body_text(data), "Preis: 10 \u20ac\r\n")

    def test_long_folded_header_kept_whole(self):
        data, ms = load("17-")
        refs = ms.section(data, "HEADER.FIELDS (REFERENCES)")
        self.assertEqual(refs.count(b"<msg-"), 60)
        self.assertEqual(refs.count(b"\r\n"), 61)
        self.assertTrue(refs.startswith(b"References: <msg-0000"))
        other = ms.section(data, "HEADER.FIELDS.NOT (REFERENCES X-LONG)")
        self.assertNotIn(b"<msg-0001", other)
        self.assertIn(b"\r\n\tover more than one line", other)
        self.assertEqual(ms.field("subject"),
                         b"Re: Re: Re: [list] A subject that is very long and therefore folded"
                         b" over more than one line so that the unfolding code gets exercised"
                         b" properly by the tests")


class EnvelopeTests(unittest.TestCase):

    def test_groups(self):
        data, ms = load("10-")
        self.assertEqual(
            ms.envelope(),
            b'("Thu, 21 Mar 2024 16:45:00 +0000" "Office closed on Friday"'
            b' (("Announcements" NIL "announce" "example.org"))'
            b' (("Announcements" NIL "announce" "example.org"))'
            b' ((NIL NIL "no-reply" "example.org"))'
            b' ((NIL NIL "Team" NIL)(NIL NIL "alice" "example.org")("Bob B." NIL "bob" "example.net")'
            b'(NIL NIL "carol" "example.org")(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)'
            b'(NIL NIL NIL NIL))'
            b' ((NIL NIL "Empty Group" NIL)(NIL NIL NIL NIL)("Dave D." NIL "dave" "example.net"))'
            b' NIL NIL "<grp10@example.org>")')

    def test_missing_fields(self):
        data, ms = load("11-")
        self.assertEqual(ms.envelope(),
                         b'(NIL "no date, no from" NIL NIL NIL ((NIL NIL "bob" "example.net"))'
                         b' NIL NIL NIL NIL)')

    def test_encoded_words_stay_encoded(self):
        data, ms = load("08-")
        env = parse_imap(ms.envelope())
        self.assertEqual(env[1], b"=?ISO-8859-1?Q?Caf=E9_?= =?ISO-8859-1?Q?cr=E8me?= and"
                                 b" =?utf-8?b?0J/RgNC40LLQtdGC?= =?utf-8?b?INC80LjRgA==?=")
        self.assertEqual(env[2], [[b"=?KOI8-R?B?6dfBziDwxdTSz9c=?=", None, b"ivan", b"example.ru"]])
        self.assertEqual(env[5], [[b"=?GB2312?B?1cXI/Q==?=", None, b"zhang", b"example.cn"],
                                  [b"=?ISO-8859-1?Q?Andr=E9?=", None, b"andre", b"example.fr"]])
        self.assertEqual(env[6], [[b"=?utf-8?B?8J+YgA==?= Smiley", None, b"smile", b"example.com"]])

    def test_8bit_headers_as_literals(self):
        data, ms = load("09-")
        subject = "\u4f1a\u8b70\u306e\u4ef6 \u2014 na\xefve caf\xe9".encode()
        self.assertEqual(len(subject), 29)
        self.assertIn(b" {29}\r\n" + subject + b" ((", ms.envelope())
        env = parse_imap(ms.envelope())
        self.assertEqual(env[1], subject)
        self.assertEqual(env[2], [["\u5c71\u7530\u592a\u90ce".encode(), None, b"taro", b"example.jp"]])
        self.assertEqual(env[5], [["Zo\xeb \xc5ngstr\xf6m".encode(), None, b"zoe", b"example.se"]])

    def test_quoting(self):
        ms = MessageStructure.parse(
            b'From: "Q \\" N" <q@r>\r\nSubject: back\\slash "quoted"\r\nDate:\r\n'
            b'Message-ID: <a@b>\r\n\r\n')
        self.assertEqual(ms.envelope(),
                         b'("" "back\\\\slash \\"quoted\\"" (("Q \\" N" NIL "q" "r"))'
                         b' (("Q \\" N" NIL "q" "r")) (("Q \\" N" NIL "q" "r")) NIL NIL NIL NIL'
                         b' "<a@b>")')

    def test_repeated_fields(self):
        # Repeated address fields count with all their addresses (as Dovecot does);
        # for the other fields the first occurrence counts.
        ms = MessageStructure.parse(b"To: a@b\r\nSubject: one\r\nTo: c@d, e@f\r\nCc: \r\n"
                                    b"Cc: g@h\r\nSubject: two\r\n\r\n")
        self.assertEqual(ms.envelope(),
                         b'(NIL "one" NIL NIL NIL ((NIL NIL "a" "b")(NIL NIL "c" "d")'
                         b'(NIL NIL "e" "f")) ((NIL NIL "g" "h")) NIL NIL NIL)')

    def test_sender_and_reply_to(self):
        ms = MessageStructure.parse(b"From: a@b\r\nSender: s@b\r\nReply-To:\r\n\r\n")
        env = parse_imap(ms.envelope())
        self.assertEqual(env[2:5], [[[None, None, b"a", b"b"]], [[None, None, b"s", b"b"]],
                                    [[None, None, b"a", b"b"]]])


class AddressTests(unittest.TestCase):
    """Address parsing, with Dovecot 2.3's answers for the odd ones."""

    def check(self, value, expected):
        self.assertEqual(parse_addresses(value), expected)

    def test_simple(self):
        self.check(b"a@b.c", [(None, None, b"a", b"b.c")])
        self.check(b"John Q. Public <jqp@example.com>, x@y",
                   [(b"John Q. Public", None, b"jqp", b"example.com"), (None, None, b"x", b"y")])
        self.check(b"", [])
        self.check(b" , ,", [])

    def test_odd_forms(self):
        self.check(b"root", [(None, None, b"root", b"MISSING_DOMAIN")])
        self.check(b"<>", [(None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")])
        self.check(b"x@y (Comment Name)", [(b"Comment Name", None, b"x", b"y")])
        self.check(b'"Q \\" N" <q@r>', [(b'Q " N', None, b"q", b"r")])
        self.check(b"Some One <@r1,@r2:u@h>", [(b"Some One", b"@r1,@r2", b"u", b"h")])
        self.check(b'"bad@"@x', [(None, None, b"bad@", b"x")])
        self.check(b"a@[192.0.2.1]", [(None, None, b"a", b"[192.0.2.1]")])
        self.check(b"Name <a@b", [(b"Name", None, b"a", b"b")])
        self.check(b"(only a comment)", [])

    def test_groups(self):
        self.check(b"undisclosed-recipients:;",
                   [(None, None, b"undisclosed-recipients", None), (None, None, None, None)])
        self.check(b"A Group: a@b, C <c@d>; e@f",
                   [(None, None, b"A Group", None), (None, None, b"a", b"b"), (b"C", None, b"c", b"d"),
                    (None, None, None, None), (None, None, b"e", b"f")])
        self.check(b"unterminated: a@b",
                   [(None, None, b"unterminated", None), (None, None, b"a", b"b"),
                    (None, None, None, None)])


class DecodingTests(unittest.TestCase):

    def test_header_values(self):
        data, ms = load("08-")
        self.assertEqual(ms.header(data, "subject"), ["Caf\xe9 cr\xe8me and \u041f\u0440\u0438\u0432"
                                                      "\u0435\u0442 \u043c\u0438\u0440"])
        self.assertEqual(ms.header(data, "FROM"), ["\u0418\u0432\u0430\u043d \u041f\u0435\u0442"
                                                   "\u0440\u043e\u0432 <ivan@example.ru>"])
        self.assertEqual(ms.header(data, "To"), ["\u5f20\u4e09 <zhang@example.cn>, Andr\xe9"
                                                 " <andre@example.fr>"])
        self.assertEqual(ms.header(data, "Cc"), ['"\U0001f600 Smiley" <smile@example.com>'])
        self.assertEqual(ms.header(data, "X-Nothing"), [])
        data, ms = load("30-")
        self.assertEqual(ms.header(data, "From"), ["\u674e\u56db <lisi@example.cn>"])
        data, ms = load("25-")
        self.assertEqual(ms.decoded("subject"), "\xa1Ma\xf1ana es fiesta!")
        data, ms = load("09-")
        self.assertEqual(ms.header(data, "to"), ['"Zo\xeb \xc5ngstr\xf6m" <zoe@example.se>'])

    def test_encoded_words(self):
        self.assertEqual(decode_header_value(b"=?UTF-8?B?4oI=?= =?UTF-8?B?rA==?="), "\u20ac")
        self.assertEqual(decode_header_value(b"=?utf-8?q?a?= b"), "a b")
        self.assertEqual(decode_header_value(b"x =?utf-8?q?a?=\r\n =?utf-8?q?b?= y"), "x ab y")
        self.assertEqual(decode_header_value(b"=?iso-8859-1?q?a?= =?utf-8?q?=C3=A9?="), "a\xe9")
        self.assertEqual(decode_header_value(b"=?x-unknown-cs?q?caf=C3=A9?="), "caf\xe9")
        self.assertEqual(decode_header_value(b"=?utf-8?q?broken"), "=?utf-8?q?broken")
        self.assertEqual(decode_header_value(b"=?utf-8*en?q?lang?="), "lang")
        self.assertEqual(decode_header_value(b"=?base64?q?x?="), "x")
        self.assertEqual(decode_header_value(b"caf\xe9"), "caf\xe9")          # Latin-1 raw
        self.assertEqual(decode_header_value(b"caf\xc3\xa9"), "caf\xe9")      # UTF-8 raw

    def test_decode_bytes(self):
        self.assertEqual(decode_bytes(b"\x80", "iso-8859-1"), "\u20ac")       # as Windows-1252
        self.assertEqual(decode_bytes(b"\xd5\xc5", "gb2312"), "\u5f20")
        self.assertEqual(decode_bytes(b"\xff\xfe", "utf-8"), "\ufffd\ufffd")
        self.assertEqual(decode_bytes(b"abc", "no-such-charset"), "abc")

    def test_body_text(self):
        data, ms = load("02-")
        text = ms.body_text(data)
        self.assertIn("Gr\xfc\xdfe aus M\xfcnchen!", text)
        self.assertIn("Preis: 25 \u20ac", text)
        self.assertIn("länger als sechsundsiebzig Zeichen", text)          # soft line break undone
        self.assertNotIn("<b>", text)
        data, ms = load("25-")
        text = ms.body_text(data)
        self.assertIn("\xa1Ma\xf1ana es fiesta!", text)
        self.assertIn("se\xf1ores & se\xf1oras", text)
        self.assertNotIn("color:red", text)
        data, ms = load("30-")
        self.assertIn("\u4f60\u597d", ms.body_text(data))
        data, ms = load("31-")
        self.assertIn("\u0414\u043e \u0432\u0441\u0442\u0440\u0435\u0447\u0438!", ms.body_text(data))
        data, ms = load("05-")
        text = ms.body_text(data)
        self.assertIn("See the forwarded message below.", text)
        self.assertIn("Subject: Notes from the planning meeting", text)     # inner header
        self.assertIn("The notes.", text)
        data, ms = load("03-")
        text = ms.body_text(data)
        self.assertIn("please find attached invoice", text)
        self.assertNotIn("JVBERi0", text)                                  # PDF skipped
        self.assertNotIn("Invoice 2024-117)", text)

    def test_text_includes_headers(self):
        data, ms = load("17-")
        self.assertIn("X-Long: aaaa", ms.text(data))
        self.assertNotIn("X-Long", ms.body_text(data))
        self.assertIn("Body of a long thread.", ms.text(data))


class ParameterTests(unittest.TestCase):

    def params(self, value):
        data = b"Content-Type: text/plain" + value + b"\r\n\r\nx"
        return MessageStructure.parse(data).params

    def test_lenient_parameters(self):
        self.assertEqual(self.params(b";charset=utf-8;format=flowed"),
                         (("CHARSET", b"utf-8"), ("FORMAT", b"flowed")))
        self.assertEqual(self.params(b"; charset=utf-8 format=flowed"),      # ";" missing
                         (("CHARSET", b"utf-8"), ("FORMAT", b"flowed")))
        self.assertEqual(self.params(b" charset=utf-8"), (("CHARSET", b"utf-8"),))
        self.assertEqual(self.params(b'; name="a;b \\"c\\""; x=1'),
                         (("NAME", b'a;b "c"'), ("X", b"1")))
        self.assertEqual(self.params(b"; name=my file.pdf; size=3"),           # unquoted blanks
                         (("NAME", b"my file.pdf"), ("SIZE", b"3")))
        self.assertEqual(self.params(b'; name="unterminated'), (("NAME", b"unterminated"),))
        self.assertEqual(self.params(b" (comment) ; x=y (another)"), (("X", b"y"),))
        self.assertEqual(self.params(b"; title*0=\"a \"; title*1=b; title*2*=%41"),
                         (("TITLE*", b"''a%20b%41"),))
        self.assertEqual(self.params(b"; title*1=b; title*0=a"), (("TITLE", b"ab"),))
        self.assertEqual(self.params(b"; name*1*=%41%42"), (("NAME*", b"''%41%42"),))
        self.assertEqual(self.params(b"; name*=%41"), (("NAME*", b"''%41"),))
        self.assertEqual(self.params(b"; name*=utf-8''%41"), (("NAME*", b"utf-8''%41"),))

    def test_invalid_content_type(self):
        ms = MessageStructure.parse(b"Content-Type: text; charset=koi8-r\r\n\r\nx")
        self.assertEqual((ms.type, ms.subtype, ms.params), ("TEXT", "PLAIN", (("CHARSET", b"koi8-r"),)))
        ms = MessageStructure.parse(b"Content-Type: \xff/\xfe\r\n\r\nx")
        self.assertEqual((ms.type, ms.subtype, ms.params), ("TEXT", "PLAIN", ()))
        ms = MessageStructure.parse(b"Content-Transfer-Encoding: (c)\r\n\r\nx")
        self.assertEqual(ms.encoding, "7BIT")


class RobustnessTests(unittest.TestCase):

    def test_damaged_copies(self):
        rng = random.Random(3501)
        for name, data in corpus():
            cuts = sorted({rng.randrange(len(data)) for _ in range(6)} | {0, 1, len(data) - 1})
            for cut in cuts:
                damaged = data[:cut]
                check_invariants(self, "%s[:%d]" % (name, cut), damaged,
                                 MessageStructure.parse(damaged))
            for _ in range(4):
                mutated = bytearray(data)
                for _ in range(10):
                    mutated[rng.randrange(len(mutated))] = rng.choice(b"-\r\n:;\"=\x00\xff( ")
                mutated = bytes(mutated)
                ms = MessageStructure.parse(mutated)
                parse_imap(ms.bodystructure(True))
                parse_imap(ms.envelope())
                ms.body_text(mutated)
                MessageStructure.from_bytes(ms.to_bytes())

    def test_degenerate_inputs(self):
        for data in (b"", b"\r\n", b"\n", b"--", b"\x00" * 10, b":", b"a" * 5000,
                     b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
                     b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n",
                     b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
                     b"Content-Type: message/rfc822\r\n\r\n",
                     b"Content-Type: message/rfc822\r\n",
                     b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n--d--",
                     b'Content-Type: text/plain; charset="unterminated\r\n\r\nx',
                     b"Content-Type: text/plain; name*0*=bad; name*x=1; name*=\r\n\r\nx",
                     b"From: " + b"(" * 200 + b"\r\n\r\n",
                     b"To: " + b"a:" * 200 + b"\r\n\r\n"):
            ms = MessageStructure.parse(data)
            check_invariants(self, repr(data[:30]), data, ms)

    def test_deep_nesting(self):
        depth = 2000
        head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                        for i in range(depth))
        data = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + b"--b%d\r\n\r\nx" % depth
        ms = MessageStructure.parse(data)
        parse_imap(ms.bodystructure(True))
        self.assertLessEqual(max(sec.count(".") for sec, _ in ms.walk()), 70)
        inner = b"Subject: deep\r\n\r\nx"
        for _ in range(500):
            inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
        ms = MessageStructure.parse(inner)
        parse_imap(ms.bodystructure(True))

    def test_delimiter_cut_off_at_the_end(self):
        data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b"
        ms = MessageStructure.parse(data)
        self.assertEqual(len(ms.children), 1)
        self.assertEqual(ms.section(data, "1"), b"one")
        ms = MessageStructure.parse(data + b"\r\n")      # a whole delimiter line: one more part
        self.assertEqual(len(ms.children), 2)
        self.assertEqual(ms.section(data + b"\r\n", "2"), b"")

    def test_header_only_parts_before_a_big_body(self):
        # Each part's search for its blank line stops at the next delimiter: this took
        # minutes when every part scanned the rest of the message.
        data = (b"Content-Type: multipart/mixed; boundary=X\r\n\r\n" + b"--X\r\nA: b\r\n" * 5000
                + b"--X\r\n\r\n" + b"x" * 4000000 + b"\r\n--X--\r\n")
        # No timing assertion (tests never assert on timing): a quadratic scan here takes
        # many minutes, which the test's timeout below turns into a failure.
        ms = MessageStructure.parse(data)
        self.assertEqual(len(ms.children), 5001)
        self.assertEqual(ms.section(data, "1.MIME"), b"A: b")

    test_header_only_parts_before_a_big_body.timeout = 300

    def test_many_parts(self):
        data = (b"Content-Type: multipart/mixed; boundary=p\r\n\r\n"
                + b"--p\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\nx\r\n--q--\r\n"
                * 6000 + b"--p--\r\n")
        ms = MessageStructure.parse(data)
        bs = ms.bodystructure(True)
        parse_imap(bs)
        self.assertLess(len(list(ms.walk())), 10000)


class HeaderSectionTests(unittest.TestCase):
    """header_section (FETCH of header fields without the MIME structure) gives what
    MessageStructure.section gives, on every corpus message, damaged copies and
    odd headers."""

    SPECS = ("HEADER", "HEADER.FIELDS (DATE FROM TO CC SUBJECT MESSAGE-ID CONTENT-TYPE)",
             "HEADER.FIELDS.NOT (SUBJECT RECEIVED)", 'HEADER.FIELDS ("subject" X-NONE)',
             "HEADER.FIELDS (REFERENCES)", "HEADER.FIELDS", "HEADER (FROM)")

    def check(self, name, data):
        ms = MessageStructure.parse(data)
        for spec in self.SPECS:
            self.assertEqual(header_section(data, spec), ms.section(data, spec), (name, spec))

    def test_corpus_and_damaged_copies(self):
        rng = random.Random(9051)
        for name, data in corpus():
            self.check(name, data)
            for cut in sorted({rng.randrange(len(data)) for _ in range(5)} | {0, 1}):
                self.check("%s[:%d]" % (name, cut), data[:cut])
            self.check(name + " LF", data.replace(b"\r\n", b"\n"))

    def test_odd_headers(self):
        long_header = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 70) for i in range(1200))
        for data in (b"", b"\r\n", b"\n\nbody", b"Subject: no blank line",
                     b"Subject: a\r\n folded\r\nFrom: x\r\n\r\nbody\r\n",
                     b"Subject: a\n\r\nmixed\r\n", b"Subject: a\r\n\nbody",
                     long_header + b"Subject: far\r\n\r\nbody",
                     long_header + b"Subject: never ends\r\n" + b"line\r\n" * 20000,
                     b"Content-Type: multipart/mixed; boundary=b\r\n--b\r\nX: y\r\n\r\n--b--\r\n"):
            self.check(repr(data[:30]), data)

    def test_other_sections_refused(self):
        for spec in ("", "TEXT", "1", "1.HEADER", "MIME"):
            self.assertRaises(ValueError, header_section, b"Subject: x\r\n\r\n", spec)
