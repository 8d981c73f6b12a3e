"""jdmail.imap.sort: SORT criteria, RFC 5256 base subjects and ordering."""

import datetime
import types

from twisted.trial import unittest

from jdmail.imap.parser import Atom, parse_tokens
from jdmail.imap.search import SearchError, SearchProgram, match
from jdmail.imap.sort import (SortError, base_subject, parse_sort, parse_sort_command,
                              sort_messages, sent_time)
from jdmail.mime import MessageStructure

UTC = datetime.timezone.utc


def ts(y, m, d, hour=12):
    return datetime.datetime(y, m, d, hour, tzinfo=UTC).timestamp()


class Msg:
    def __init__(self, seq, headers=(), size=100, internaldate=None, uid=None):
        self.seq = seq
        self.uid = uid or seq
        self.flags = frozenset()
        self.size = size
        self.internaldate = ts(2024, 1, 1) if internaldate is None else internaldate
        self.modseq = 1
        self.recent = False
        self._data = b"".join(h + b"\r\n" for h in headers) + b"\r\nbody\r\n"
        self.data_calls = self.structure_calls = 0

    def data(self):
        self.data_calls += 1
        return self._data

    def structure(self):
        self.structure_calls += 1
        return MessageStructure.parse(self._data)


def order(criteria, msgs):
    program = parse_sort([Atom(c) for c in criteria.split()])
    return [m.seq for m in sort_messages(program, msgs)]


class BaseSubjectTests(unittest.TestCase):

    def test_rfc5256_examples(self):
        for subject, base in [
            ("Hello", "Hello"),
            ("Re: Hello", "Hello"),
            ("RE: re: Re: Hello", "Hello"),
            ("Fwd: Hello", "Hello"),
            ("FW: Hello", "Hello"),
            ("Re[2]: Hello", "Hello"),
            ("Re [3] : Hello", "Hello"),
            ("[list] Re: Hello", "Hello"),
            ("Re: [list] Re: Hello", "Hello"),
            ("[list] Hello", "Hello"),
            ("[list]", "[list]"),                      # the blob alone stays
            ("[a] [b] Hello", "Hello"),
            ("Hello (fwd)", "Hello"),
            ("Hello (FWD) (fwd)  ", "Hello"),
            ("[Fwd: Re: Hello]", "Hello"),
            ("[fwd: [fwd: Hello] ]", "Hello"),
            ("Re: [Fwd: Hello (fwd)]", "Hello"),
            ("  Hello\t \r\n world  ", "Hello world"),
            ("Reply to this", "Reply to this"),
            ("Fwdx: Hello", "Fwdx: Hello"),
            ("Re:", ""),
            ("", ""),
            ("Sv: Hej", "Sv: Hej"),                    # only re/fw/fwd are leaders
        ]:
            self.assertEqual(base_subject(subject), base, subject)


class ParseTests(unittest.TestCase):

    def test_criteria(self):
        program = parse_sort([Atom("REVERSE"), Atom("date"), Atom("SUBJECT")])
        self.assertEqual(program.keys, (("DATE", True), ("SUBJECT", False)))
        self.assertEqual(program.needs, frozenset({"structure"}))
        self.assertEqual(parse_sort([Atom("ARRIVAL"), Atom("REVERSE"), Atom("SIZE")]).needs,
                         frozenset())
        self.assertEqual(parse_sort([[Atom("SIZE")]]).keys, (("SIZE", False),))
        for key in ("CC", "FROM", "TO", "SUBJECT", "DATE", "DISPLAYFROM", "DISPLAYTO"):
            self.assertEqual(parse_sort([Atom(key)]).needs, frozenset({"structure"}))

    def test_errors(self):
        for criteria in ([], [Atom("REVERSE")], [Atom("BOGUS")], [Atom("REVERSE"), Atom("REVERSE"),
                         Atom("DATE")], [b"DATE"], [Atom("DATE"), Atom("REVERSE")], [[Atom("X")]]):
            e = self.assertRaises(SortError, parse_sort, criteria)
            self.assertIsInstance(e, SearchError)
            self.assertTrue(e.text)

    def test_sort_command(self):
        sort_program, search_program = parse_sort_command(
            parse_tokens(b"(REVERSE ARRIVAL) UTF-8 UNSEEN FROM x"))
        self.assertEqual(sort_program.keys, (("ARRIVAL", True),))
        self.assertIsInstance(search_program, SearchProgram)
        self.assertEqual(search_program.needs, frozenset({"structure"}))
        e = self.assertRaises(SearchError, parse_sort_command, parse_tokens(b"(DATE) KOI8-R ALL"))
        self.assertEqual(e.code, "BADCHARSET")
        self.assertRaises(SortError, parse_sort_command, parse_tokens(b"(DATE) UTF-8"))
        self.assertRaises(SortError, parse_sort_command, parse_tokens(b"DATE UTF-8 ALL"))


class OrderTests(unittest.TestCase):

    def test_arrival_and_size_read_nothing(self):
        msgs = [Msg(1, size=300, internaldate=ts(2024, 1, 3)), Msg(2, size=100, internaldate=ts(2024, 1, 1)),
                Msg(3, size=200, internaldate=ts(2024, 1, 2)), Msg(4, size=100, internaldate=ts(2024, 1, 1))]
        self.assertEqual(order("ARRIVAL", msgs), [2, 4, 3, 1])
        self.assertEqual(order("REVERSE ARRIVAL", msgs), [1, 3, 2, 4])     # ties: ascending seq
        self.assertEqual(order("SIZE", msgs), [2, 4, 3, 1])
        self.assertEqual(order("REVERSE SIZE", msgs), [1, 3, 2, 4])
        self.assertEqual(order("SIZE REVERSE ARRIVAL", msgs), [2, 4, 3, 1])
        for m in msgs:
            self.assertEqual((m.data_calls, m.structure_calls), (0, 0))

    def test_stable_by_sequence_number(self):
        msgs = [Msg(n, [b"Subject: same"]) for n in (5, 2, 9, 1)]
        self.assertEqual(order("SUBJECT", msgs), [1, 2, 5, 9])
        self.assertEqual(order("REVERSE SUBJECT", msgs), [1, 2, 5, 9])
        self.assertEqual(sort_messages(parse_sort([Atom("SIZE")]), []), [])

    def test_date(self):
        msgs = [
            Msg(1, [b"Date: Mon, 1 Apr 2024 23:30:00 -0500"]),                 # 04:30Z on the 2nd
            Msg(2, [b"Date: Tue, 2 Apr 2024 03:00:00 +0000"]),
            Msg(3, [b"Subject: no date"], internaldate=ts(2024, 4, 1)),        # internal date
            Msg(4, [b"Date: garbage"], internaldate=ts(2024, 4, 3)),
            Msg(5, [b"Date: Tue, 2 Apr 2024 04:30:00 GMT"]),                   # same instant as 1
        ]
        self.assertEqual(order("DATE", msgs), [3, 2, 1, 5, 4])
        self.assertEqual(order("REVERSE DATE", msgs), [4, 1, 5, 2, 3])
        for m in msgs:
            self.assertEqual((m.data_calls, m.structure_calls), (0, 2))     # once per sort

    def test_sent_time(self):
        s = MessageStructure.parse(b"Date: Thu, 1 Jan 1970 01:00:00 +0100\r\n\r\n")
        self.assertEqual(sent_time(s, 99.0), 0.0)
        s = MessageStructure.parse(b"Date: 1 Jan 1970 00:01:00\r\n\r\n")          # no zone: UTC
        self.assertEqual(sent_time(s, 99.0), 60.0)
        s = MessageStructure.parse(b"Subject: x\r\n\r\n")
        self.assertEqual(sent_time(s, 99.0), 99.0)

    def test_subject(self):
        msgs = [Msg(1, [b"Subject: Re: banana"]), Msg(2, [b"Subject: [list] Apple"]),
                Msg(3, [b"Subject: cherry"]), Msg(4, []), Msg(5, [b"Subject: Fwd: apple"]),
                Msg(6, [b"Subject: =?utf-8?q?=C3=A4pfel?="]), Msg(7, [b"Subject: Banana (fwd)"])]
        # i;ascii-casemap: "apple" == "Apple"; non-ASCII sorts after ASCII.
        self.assertEqual(order("SUBJECT", msgs), [4, 2, 5, 1, 7, 3, 6])
        self.assertEqual(order("REVERSE SUBJECT", msgs), [6, 3, 1, 7, 2, 5, 4])

    def test_addresses(self):
        msgs = [
            Msg(1, [b"From: Zed <alice@z.example>", b"To: x@y, a@b", b"Cc: mike@c"]),
            Msg(2, [b"From: Alice <zed@a.example>", b"To: Group: b@c;", b"Cc: "]),
            Msg(3, [b"From: =?utf-8?q?=C3=89mile?= <Bob@b.example>", b"To: undisclosed-recipients:;"]),
            Msg(4, [b"Subject: nobody"]),
        ]
        self.assertEqual(order("FROM", msgs), [4, 1, 3, 2])      # "", ALICE, BOB, ZED
        self.assertEqual(order("REVERSE FROM", msgs), [2, 3, 1, 4])
        self.assertEqual(order("TO", msgs), [3, 4, 2, 1])        # "", "", B (in the group), X
        self.assertEqual(order("CC", msgs), [2, 3, 4, 1])
        self.assertEqual(order("DISPLAYFROM", msgs), [4, 2, 1, 3])  # "", alice, zed, émile
        self.assertEqual(order("DISPLAYTO", msgs), [3, 4, 2, 1])    # "", "", b@c, x@y
        self.assertEqual(order("CC FROM", msgs), [4, 3, 2, 1])

    def test_multiple_keys(self):
        msgs = [Msg(1, [b"Subject: b"], size=10), Msg(2, [b"Subject: a"], size=10),
                Msg(3, [b"Subject: a"], size=30), Msg(4, [b"Subject: b"], size=20)]
        self.assertEqual(order("SIZE SUBJECT", msgs), [2, 1, 4, 3])
        self.assertEqual(order("REVERSE SIZE SUBJECT", msgs), [3, 4, 2, 1])
        self.assertEqual(order("SUBJECT REVERSE SIZE", msgs), [3, 2, 4, 1])

    def test_sort_after_search(self):
        msgs = [Msg(n, [b"Subject: s%d" % (5 - n), b"From: u%d@x" % n]) for n in range(1, 6)]
        sort_program, search_program = parse_sort_command(
            parse_tokens(b"(SUBJECT) US-ASCII NOT FROM u3"))
        ctx = types.SimpleNamespace(last_seq=5, last_uid=5)
        hits = [m for m in msgs if match(search_program, m, ctx)]
        self.assertEqual([m.seq for m in sort_messages(sort_program, hits)], [5, 4, 2, 1])

    def test_structure_missing_falls_back_to_data(self):
        msgs = [Msg(1, [b"Subject: b"]), Msg(2, [b"Subject: a"])]
        for m in msgs:
            m.structure = lambda: None
        self.assertEqual(order("SUBJECT", msgs), [2, 1])
