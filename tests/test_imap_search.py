"""jdmail.imap.search: SEARCH criteria parsing and matching (RFC 3501 6.4.4, RFC 7162 MODSEQ)."""

import datetime
import os
import types

from twisted.trial import unittest

from jdmail.imap.parser import Atom, Literal, parse_tokens
from jdmail.imap.search import SearchError, SearchProgram, match, parse_date, parse_search
from jdmail.mime import MessageStructure

CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "messages")
UTC = datetime.timezone.utc


def day(y, m, d, hour=12, tz=UTC):
    return datetime.datetime(y, m, d, hour, tzinfo=tz).timestamp()


class Msg:
    """A message as the server hands it to search: counts what it was asked for."""

    def __init__(self, seq, data=b"", uid=None, flags=(), size=None, internaldate=None,
                 modseq=1, recent=False, structure=True):
        self.seq = seq
        self.uid = seq * 10 if uid is None else uid
        self.flags = frozenset(flags)
        self._data = data
        self.size = len(data) if size is None else size
        self.internaldate = day(2024, 3, 1) if internaldate is None else internaldate
        self.modseq = modseq
        self.recent = recent
        self._with_structure = structure
        self.data_calls = self.structure_calls = 0

    def data(self):
        self.data_calls += 1
        return self._data

    def structure(self):
        self.structure_calls += 1
        if not self._with_structure:
            return None
        return MessageStructure.from_bytes(MessageStructure.parse(self._data).to_bytes())


def ctx_for(msgs, **kw):
    return types.SimpleNamespace(last_seq=len(msgs), last_uid=max((m.uid for m in msgs), default=0),
                                 tzinfo=kw.pop("tzinfo", UTC), **kw)


def search(query, msgs, ctx=None, utf8=False):
    """The sequence numbers ``query`` (the bytes after SEARCH) matches."""
    program = parse_search(parse_tokens(query), utf8=utf8)
    ctx = ctx if ctx is not None else ctx_for(msgs)
    return [m.seq for m in msgs if match(program, m, ctx)]


def corpus_messages():
    names = sorted(n for n in os.listdir(CORPUS) if n.endswith(".eml"))
    out = {}
    for i, name in enumerate(names, 1):
        with open(os.path.join(CORPUS, name), "rb") as f:
            out[name[:2]] = Msg(i, f.read())
    return out


def message(headers, body=b"", **kw):
    data = b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    return data


class ParseTests(unittest.TestCase):

    def test_charset(self):
        for charset in (b"UTF-8", b"utf-8", b"US-ASCII", b'"UTF-8"'):
            program = parse_search(parse_tokens(b"CHARSET " + charset + b" ALL"))
            self.assertIsInstance(program, SearchProgram)
        e = self.assertRaises(SearchError, parse_search, parse_tokens(b"CHARSET KOI8-R FROM x"))
        self.assertEqual(e.code, "BADCHARSET")
        self.assertEqual(e.charsets, ("US-ASCII", "UTF-8"))
        e = self.assertRaises(SearchError, parse_search, [Atom("CHARSET")])
        self.assertIsNone(e.code)

    def test_syntax_errors(self):
        for query in (b"", b"FOO", b"FROM", b"OR SEEN", b"NOT", b"LARGER x", b"LARGER -1",
                      b"LARGER 99999999999", b"SINCE 31-Foo-2024", b"SINCE 2024-01-01",
                      b"BEFORE", b"0:3", b"1:0", b"1,,2", b"UID x", b"UID", b"()", b"(SEEN",
                      b"HEADER", b"HEADER X-A", b'HEADER "" x', b"KEYWORD", b"MODSEQ",
                      b'MODSEQ "/flags/\\\\draft" bogus 5', b"MODSEQ x", b'"quoted"',
                      b"(FROM)", b"CHARSET UTF-8", b"SEEN CHARSET UTF-8"):
            try:
                tokens = parse_tokens(query)
            except Exception:
                continue
            e = self.assertRaises(SearchError, parse_search, tokens)
            self.assertIsNone(e.code, query)
            self.assertTrue(e.text, query)

    def test_deep_nesting_refused(self):
        tokens = [Atom("SEEN")]
        for _ in range(100):
            tokens = [tokens]
        self.assertRaises(SearchError, parse_search, tokens)

    def test_needs(self):
        def needs(query):
            return parse_search(parse_tokens(query)).needs
        nothing = frozenset()
        structure = frozenset({"structure"})
        both = frozenset({"structure", "data"})
        for query in (b"ALL", b"SEEN UNDELETED", b"1:*", b"UID 5:*", b"LARGER 10 SMALLER 100",
                      b"SINCE 1-Jan-2024", b"OR NEW OLD", b"KEYWORD $Junk", b"MODSEQ 5",
                      b"NOT (FLAGGED RECENT)"):
            self.assertEqual(needs(query), nothing, query)
        for query in (b"FROM x", b"TO x CC y BCC z", b"SUBJECT x", b"SENTON 1-Jan-2024",
                      b"HEADER Message-ID x", b"HEADER in-reply-to x", b"OR SEEN FROM x"):
            self.assertEqual(needs(query), structure, query)
        for query in (b"BODY x", b"TEXT x", b"HEADER X-Mailer x", b"NOT HEADER Received x",
                      b"OR SEEN (FROM x BODY y)"):
            self.assertEqual(needs(query), both, query)

    def test_uses_modseq(self):
        self.assertFalse(parse_search(parse_tokens(b"SEEN")).uses_modseq)
        self.assertTrue(parse_search(parse_tokens(b"MODSEQ 5")).uses_modseq)
        self.assertTrue(parse_search(parse_tokens(b'NOT MODSEQ "/flags/\\\\draft" all 5')).uses_modseq)

    def test_parse_date(self):
        self.assertEqual(parse_date("1-Feb-1994"), datetime.date(1994, 2, 1))
        self.assertEqual(parse_date("01-feb-1994"), datetime.date(1994, 2, 1))
        for bad in ("1-Feb-94", "32-Jan-2024", "1 Feb 1994", "1-Fbr-1994", ""):
            self.assertRaises(ValueError, parse_date, bad)


class FlagAndNumberTests(unittest.TestCase):

    def setUp(self):
        self.msgs = [
            Msg(1, flags={"\\Seen", "\\Answered"}, size=100, recent=True, modseq=5),
            Msg(2, flags={"\\Deleted", "$Junk"}, size=200, modseq=7),
            Msg(3, flags={"\\Flagged", "\\Draft", "\\Seen"}, size=300, recent=True, modseq=9),
            Msg(4, flags=(), size=400, modseq=11),
            Msg(5, flags={"\\Seen", "NonJunk"}, size=500, uid=99, modseq=13),
        ]

    def s(self, query, **kw):
        result = search(query, self.msgs, **kw)
        for m in self.msgs:
            self.assertEqual((m.data_calls, m.structure_calls), (0, 0), query)
        return result

    def test_flags_only_programs(self):
        """Programs decided by flags alone say so, and flags_match gives match's answer
        (the server answers them per distinct flag set, jdmail.imap.server._flag_search)."""
        flag_queries = [b"ALL", b"UNSEEN", b"SEEN FLAGGED", b"NOT DELETED", b"OR ANSWERED DRAFT",
                        b"(UNSEEN UNDELETED)", b"KEYWORD $junk", b"UNKEYWORD nonjunk NOT (SEEN OR DRAFT DELETED)"]
        for query in flag_queries:
            program = parse_search(parse_tokens(query))
            self.assertTrue(program.flags_only, query)
            ctx = ctx_for(self.msgs)
            self.assertEqual([m.seq for m in self.msgs if program.flags_match(m.flags)],
                             [m.seq for m in self.msgs if match(program, m, ctx)], query)
        for query in [b"NEW", b"OLD", b"RECENT", b"UNSEEN 1:3", b"UID 5", b"SEEN LARGER 10", b"MODSEQ 3",
                      b"NOT SUBJECT x", b"OR SEEN BEFORE 1-Jan-2020", b"(SEEN $)"]:
            self.assertFalse(parse_search(parse_tokens(query)).flags_only, query)

    def test_system_flags(self):
        self.assertEqual(self.s(b"ALL"), [1, 2, 3, 4, 5])
        self.assertEqual(self.s(b"SEEN"), [1, 3, 5])
        self.assertEqual(self.s(b"UNSEEN"), [2, 4])
        self.assertEqual(self.s(b"ANSWERED"), [1])
        self.assertEqual(self.s(b"UNANSWERED"), [2, 3, 4, 5])
        self.assertEqual(self.s(b"DELETED"), [2])
        self.assertEqual(self.s(b"UNDELETED"), [1, 3, 4, 5])
        self.assertEqual(self.s(b"DRAFT"), [3])
        self.assertEqual(self.s(b"UNDRAFT"), [1, 2, 4, 5])
        self.assertEqual(self.s(b"FLAGGED"), [3])
        self.assertEqual(self.s(b"UNFLAGGED"), [1, 2, 4, 5])
        self.assertEqual(self.s(b"seen"), [1, 3, 5])          # keys are case-insensitive

    def test_keywords(self):
        self.assertEqual(self.s(b"KEYWORD $Junk"), [2])
        self.assertEqual(self.s(b"KEYWORD $junk"), [2])        # flags compare case-insensitively
        self.assertEqual(self.s(b"UNKEYWORD $Junk"), [1, 3, 4, 5])
        self.assertEqual(self.s(b"KEYWORD nonjunk"), [5])
        self.assertEqual(self.s(b"KEYWORD nothing"), [])

    def test_recent_new_old(self):
        self.assertEqual(self.s(b"RECENT"), [1, 3])
        self.assertEqual(self.s(b"OLD"), [2, 4, 5])
        self.assertEqual(self.s(b"NEW"), [])
        self.msgs[0].flags = frozenset()
        self.assertEqual(self.s(b"NEW"), [1])

    def test_sizes(self):
        self.assertEqual(self.s(b"LARGER 200"), [3, 4, 5])
        self.assertEqual(self.s(b"SMALLER 200"), [1])
        self.assertEqual(self.s(b"LARGER 100 SMALLER 400"), [2, 3])
        self.assertEqual(self.s(b'LARGER "250"'), [3, 4, 5])

    def test_sequence_sets(self):
        self.assertEqual(self.s(b"1:3,5"), [1, 2, 3, 5])
        self.assertEqual(self.s(b"*"), [5])
        self.assertEqual(self.s(b"3:1"), [1, 2, 3])
        self.assertEqual(self.s(b"4:*"), [4, 5])
        self.assertEqual(self.s(b"*:4"), [4, 5])
        self.assertEqual(self.s(b"9:*"), [5])                  # 9:* is 5:9
        self.assertEqual(self.s(b"7"), [])
        self.assertEqual(self.s(b"2,4 SEEN"), [])
        self.assertEqual(self.s(b"NOT 2:4"), [1, 5])

    def test_uid_sets(self):
        self.assertEqual(self.s(b"UID 10:30"), [1, 2, 3])
        self.assertEqual(self.s(b"UID *"), [5])
        self.assertEqual(self.s(b"UID 1000:*"), [5])           # * is the highest UID (99)
        self.assertEqual(self.s(b"UID 40,99"), [4, 5])
        self.assertEqual(self.s(b"UID 41:98"), [])
        self.assertEqual(self.s(b"uid 30:10"), [1, 2, 3])

    def test_saved_result(self):
        self.assertEqual(self.s(b"$", ctx=ctx_for(self.msgs, saved={20, 99})), [2, 5])
        self.assertEqual(self.s(b"UID $", ctx=ctx_for(self.msgs, saved={20})), [2])
        self.assertEqual(self.s(b"$"), [])                     # nothing saved

    def test_modseq(self):
        self.assertEqual(self.s(b"MODSEQ 9"), [3, 4, 5])
        self.assertEqual(self.s(b'MODSEQ "/flags/\\\\draft" all 10'), [4, 5])
        self.assertEqual(self.s(b'MODSEQ "/flags/$junk" priv 0'), [1, 2, 3, 4, 5])
        self.assertEqual(self.s(b"MODSEQ 14"), [])

    def test_boolean(self):
        self.assertEqual(self.s(b"OR DELETED FLAGGED"), [2, 3])
        self.assertEqual(self.s(b"OR (SEEN LARGER 200) DELETED"), [2, 3, 5])
        self.assertEqual(self.s(b"NOT SEEN NOT DELETED"), [4])
        self.assertEqual(self.s(b"OR OR ANSWERED DRAFT KEYWORD $Junk"), [1, 2, 3])
        self.assertEqual(self.s(b"NOT (OR SEEN DELETED)"), [4])
        self.assertEqual(self.s(b"((SEEN) (UNDELETED (SMALLER 400)))"), [1, 3])
        self.assertEqual(self.s(b"NOT NOT SEEN"), [1, 3, 5])

    def test_internal_dates(self):
        msgs = [Msg(1, internaldate=day(2024, 3, 1, 0)), Msg(2, internaldate=day(2024, 3, 1, 23)),
                Msg(3, internaldate=day(2024, 3, 2, 12)), Msg(4, internaldate=day(2024, 2, 29, 23))]
        self.assertEqual(search(b"ON 1-Mar-2024", msgs), [1, 2])
        self.assertEqual(search(b"BEFORE 1-Mar-2024", msgs), [4])
        self.assertEqual(search(b"SINCE 1-Mar-2024", msgs), [1, 2, 3])
        self.assertEqual(search(b'SINCE "2-Mar-2024"', msgs), [3])
        self.assertEqual(search(b"SINCE 1-Mar-2024 BEFORE 2-Mar-2024", msgs), [1, 2])
        # The calendar date is taken in the session's zone (UTC+10 here).
        plus10 = ctx_for(msgs, tzinfo=datetime.timezone(datetime.timedelta(hours=10)))
        self.assertEqual(search(b"ON 1-Mar-2024", msgs, plus10), [1, 4])
        self.assertEqual(search(b"ON 2-Mar-2024", msgs, plus10), [2, 3])


class ContentTests(unittest.TestCase):

    def setUp(self):
        self.c = corpus_messages()
        self.msgs = sorted(self.c.values(), key=lambda m: m.seq)

    def s(self, query, **kw):
        hits = search(query, self.msgs, **kw)
        return [n for n, m in sorted(self.c.items()) if m.seq in hits]

    def test_from_to_cc_bcc_subject(self):
        self.assertEqual(self.s(b"FROM alice"), ["01"])
        self.assertEqual(self.s(b"FROM ALICE@EXAMPLE"), ["01"])
        self.assertEqual(self.s(b'FROM "j\xc3\xbcrgen m\xc3\xbcller"'), ["02"])   # encoded-word name
        self.assertEqual(self.s(b'FROM "\xd0\xb8\xd0\xb2\xd0\xb0\xd0\xbd"'), ["08"])  # KOI8-R, casefolded
        self.assertEqual(self.s(b'FROM "\xe5\xb1\xb1\xe7\x94\xb0"'), ["09"])     # raw UTF-8 header
        self.assertEqual(self.s(b"TO undisclosed-recipients"), ["10"])
        self.assertEqual(self.s(b'TO "\xe5\xbc\xa0\xe4\xb8\x89"'), ["08"])       # GB2312 name
        self.assertEqual(self.s(b'CC "Dave D."'), ["10"])
        self.assertEqual(self.s(b"CC ian@example.com"), ["18"])
        self.assertEqual(self.s(b"BCC anybody"), [])
        self.assertEqual(self.s(b"SUBJECT invoice"), ["03"])
        self.assertEqual(self.s(b'SUBJECT "caf\xc3\xa9"'), ["08", "09"])
        self.assertEqual(self.s(b'CHARSET UTF-8 SUBJECT "CAF\xc3\x89 CR\xc3\x88ME"'), ["08"])
        self.assertEqual(self.s(b'SUBJECT "r\xc3\xa9union de l\'\xc3\xa9quipe"'), ["07"])
        self.assertEqual(self.s(b'SUBJECT "GR\xc3\x9cSSE"'), ["02"])             # casefold: \xdf == ss
        self.assertEqual(self.s(b"SUBJECT {5}\r\nfolde"), ["17"])                 # literal, unfolded
        self.assertEqual(self.s(b'SUBJECT "folded over"'), ["17"])
        self.assertEqual(self.s(b"SUBJECT second"), [])        # the first Subject: counts

    def test_structure_only_for_envelope_fields(self):
        self.s(b"OR FROM alice SUBJECT x")
        for m in self.msgs:
            self.assertEqual(m.data_calls, 0)
            self.assertEqual(m.structure_calls, 1)

    def test_header(self):
        self.assertEqual(self.s(b"HEADER X-Mailer apple"), ["18"])
        self.assertEqual(self.s(b'HEADER x-mailer ""'), ["18"])                  # presence
        self.assertEqual(self.s(b'HEADER Message-ID ""'),
                         [n for n in sorted(self.c) if n not in ("11",)])
        self.assertEqual(self.s(b"HEADER Content-Type koi8"), ["08", "31"])
        self.assertEqual(self.s(b"HEADER Received EXCH02"), ["19"])
        self.assertEqual(self.s(b"HEADER Received mx.example.net"), ["01"])      # 2nd Received line
        # Envelope fields (Subject, From, Message-ID, ...) are answered from the cached
        # structure, which keeps the first occurrence, as SUBJECT/FROM and ENVELOPE do.
        self.assertEqual(self.s(b"HEADER Subject first"), ["28"])
        self.assertEqual(self.s(b"HEADER Subject second"), [])
        self.assertEqual(self.s(b"HEADER X-Mailer Apple HEADER X-Mailer Mail"), ["18"])
        self.assertEqual(self.s(b'HEADER "In-Reply-To" "<b1@example.org>"'), [])  # only inside the digest
        self.assertEqual(self.s(b"HEADER X-Folded-Tab starts"), ["28"])

    def test_body_and_text(self):
        self.assertEqual(self.s(b'BODY "planning meeting. please"'), ["01"])    # across a line end
        self.assertEqual(self.s(b'CHARSET UTF-8 BODY "m\xc3\xbcnchen"'), ["02"])
        self.assertEqual(self.s(b'BODY "25 \xe2\x82\xac"'), ["02"])              # quoted-printable
        self.assertEqual(self.s(b'BODY "\xc2\xa1ma\xc3\xb1ana"'), ["25"])        # base64 Latin-1 HTML
        self.assertEqual(self.s(b"BODY color"), [])                              # <style> dropped
        self.assertEqual(self.s(b"BODY <h1>"), [])                               # tags dropped
        self.assertEqual(self.s(b'BODY "\xe8\xaf\xb7\xe6\x9f\xa5\xe6\x94\xb6"'), ["30"])  # GB2312
        self.assertEqual(self.s(b'BODY "\xd0\x94\xd0\x9e \xd0\x92\xd0\xa1\xd0\xa2\xd0\xa0\xd0\x95'
                                b'\xd0\xa7\xd0\x98"'), ["31"])                            # KOI8-R, QP
        self.assertEqual(self.s(b"BODY JVBERi0"), [])                            # base64 PDF skipped
        self.assertEqual(self.s(b"BODY Innermost"), ["24"])                      # rfc822 in rfc822
        self.assertEqual(self.s(b'BODY "Room 4.12"'), ["20"])                    # text/calendar
        self.assertEqual(self.s(b"BODY X-Long"), [])
        self.assertEqual(self.s(b"TEXT X-Long"), ["17"])                         # TEXT has headers
        self.assertEqual(self.s(b"TEXT alice@example.org NOT FROM alice"), ["05", "10", "26"])
        self.assertEqual(self.s(b'TEXT "\xd0\xbc\xd0\xb8\xd1\x80"'), ["08"])     # decoded header

    def test_data_read_only_for_body_searches(self):
        self.s(b"BODY nothing-like-this")
        for m in self.msgs:
            self.assertEqual(m.data_calls, 1)

    def test_sent_dates(self):
        self.assertEqual(self.s(b"SENTON 12-Mar-2024"), ["01"])
        self.assertEqual(self.s(b"SENTBEFORE 13-Mar-2024 NOT BEFORE 1-Jan-2024"), ["01", "11", "27"])
        self.assertEqual(self.s(b"SENTSINCE 11-Apr-2024"), ["32", "33", "34"])
        self.assertEqual(self.s(b"SENTON 6-Apr-1994"), ["27"])                   # 2-digit year

    def test_sent_date_uses_written_date_and_falls_back(self):
        msgs = [Msg(1, message([b"Date: Mon, 1 Apr 2024 23:30:00 -0500"])),
                Msg(2, message([b"Date: not a date at all"]), internaldate=day(2024, 4, 1)),
                Msg(3, message([b"Subject: no date"]), internaldate=day(2024, 4, 2)),
                Msg(4, message([b"Date: Tue, 2 Apr 2024 00:30:00 +1400"]))]
        self.assertEqual(search(b"SENTON 1-Apr-2024", msgs), [1, 2])
        self.assertEqual(search(b"SENTON 2-Apr-2024", msgs), [3, 4])
        self.assertEqual(search(b"SENTBEFORE 2-Apr-2024", msgs), [1, 2])
        self.assertEqual(search(b"SENTSINCE 2-Apr-2024", msgs), [3, 4])

    def test_search_strings(self):
        msgs = [Msg(1, message([b"Subject: Stra\xc3\x9fe"])), Msg(2, message([b"Subject: abc"]))]
        self.assertEqual(search(b"SUBJECT STRASSE", msgs), [1])
        self.assertEqual(search(b'SUBJECT "stra\xdfe"', msgs), [1])             # Latin-1 bytes
        self.assertRaises(SearchError, parse_search, parse_tokens(b'CHARSET UTF-8 SUBJECT "\xdf"'))
        self.assertEqual(search(b'SUBJECT ""', msgs), [1, 2])
        program = parse_search([Atom("SUBJECT"), Literal(b"ABC")])
        self.assertTrue(match(program, msgs[1], ctx_for(msgs)))

    def test_missing_structure_is_parsed_from_data(self):
        msgs = [Msg(1, message([b"From: x@y"], b"hello"), structure=False)]
        self.assertEqual(search(b"FROM x@y BODY hello", msgs), [1])
