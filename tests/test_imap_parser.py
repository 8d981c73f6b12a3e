"""The IMAP command parser: the token format every IMAP module relies on."""

from twisted.trial import unittest

from jdmail.imap.parser import (
    Atom, Literal, ParseError, astring, is_atom_text, literal_suffix, parse_command, parse_tokens)


class ParseCommandTests(unittest.TestCase):

    def parse(self, data):
        return parse_command(data)

    def bad(self, data):
        with self.assertRaises(ParseError) as cm:
            parse_command(data)
        return cm.exception

    def test_simple(self):
        self.assertEqual(self.parse(b"a1 noop\r\n"), ("a1", "NOOP", []))
        self.assertEqual(self.parse(b"a1 NOOP"), ("a1", "NOOP", []))

    def test_atoms_keep_case_and_are_atoms(self):
        tag, cmd, args = self.parse(b"t Select Inbox")
        self.assertEqual(cmd, "SELECT")
        self.assertEqual(args, ["Inbox"])
        self.assertIsInstance(args[0], Atom)
        self.assertEqual(args[0], "Inbox")

    def test_nil_is_an_atom(self):
        args = self.parse(b"t X NIL")[2]
        self.assertIsInstance(args[0], Atom)
        self.assertEqual(args[0].upper(), "NIL")

    def test_quoted_is_bytes(self):
        args = self.parse(b't LOGIN "joe" "p\\"a\\\\ss word"')[2]
        self.assertEqual(args, [b"joe", b'p"a\\ss word'])
        self.assertNotIsInstance(args[0], str)

    def test_quoted_bad_escape(self):
        self.assertEqual(self.bad(b't LOGIN "a\\b" x').tag, "t")

    def test_quoted_unterminated(self):
        self.bad(b't LOGIN "abc')

    def test_empty_quoted(self):
        self.assertEqual(self.parse(b't LIST "" "*"')[2], [b"", b"*"])

    def test_literal_sync_and_nonsync(self):
        args = self.parse(b"t LOGIN {3}\r\nfoo {4+}\r\nb r\r")[2]
        self.assertEqual(args, [b"foo", b"b r\r"])
        self.assertIsInstance(args[0], Literal)
        self.assertFalse(args[0].binary)

    def test_literal8(self):
        args = self.parse(b"t APPEND x ~{3}\r\n\x00\x01\x02")[2]
        self.assertEqual(args, [Atom("x"), b"\x00\x01\x02"])
        self.assertTrue(args[1].binary)

    def test_literal_with_crlf_inside(self):
        args = self.parse(b"t APPEND INBOX {7}\r\na\r\nb\r\nc\r\n")[2]
        self.assertEqual(args, ["INBOX", b"a\r\nb\r\nc"])

    def test_literal_short(self):
        self.bad(b"t LOGIN {5}\r\nab")

    def test_literal_negative(self):
        self.bad(b"t LOGIN {-1}\r\n")

    def test_lists_nest(self):
        args = self.parse(b"t SEARCH NOT (OR (SEEN) (FROM x)) ALL")[2]
        self.assertEqual(args, ["NOT", ["OR", ["SEEN"], ["FROM", "x"]], "ALL"])

    def test_empty_list(self):
        self.assertEqual(self.parse(b"t APPEND x () {1}\r\na")[2], ["x", [], b"a"])

    def test_fetch_attribute_is_one_atom(self):
        args = self.parse(b"t FETCH 1:*,3 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100> "
                          b"BODY[1.2.MIME] BODY[]<5.10> UID)")[2]
        self.assertEqual(args, ["1:*,3", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>",
                                          "BODY[1.2.MIME]", "BODY[]<5.10>", "UID"]])
        for a in args[1]:
            self.assertIsInstance(a, Atom)

    def test_fetch_single_attribute(self):
        self.assertEqual(self.parse(b"t FETCH 2 body[header.fields.not (\"x-a\" b)]")[2],
                         ["2", 'body[header.fields.not ("x-a" b)]'])

    def test_section_unterminated(self):
        self.bad(b"t FETCH 1 BODY[HEADER")

    def test_flags_and_wildcards_are_atoms(self):
        args = self.parse(b"t STORE 1 +FLAGS (\\Seen \\Deleted $Junk)")[2]
        self.assertEqual(args, ["1", "+FLAGS", ["\\Seen", "\\Deleted", "$Junk"]])
        self.assertEqual(self.parse(b"t LIST \"\" %/*")[2], [b"", "%/*"])

    def test_sequence_set_star(self):
        self.assertEqual(self.parse(b"t UID FETCH 4:* FLAGS")[2], ["FETCH", "4:*", "FLAGS"])

    def test_bad_tag(self):
        self.assertIsNone(self.bad(b"+ NOOP").tag)
        self.assertIsNone(self.bad(b"a*b NOOP").tag)
        self.assertIsNone(self.bad(b"").tag)

    def test_missing_command(self):
        self.assertEqual(self.bad(b"abc").tag, "abc")
        self.assertEqual(self.bad(b"abc ").tag, "abc")

    def test_unbalanced(self):
        self.assertEqual(self.bad(b"t FETCH 1 (FLAGS").tag, "t")
        self.assertEqual(self.bad(b"t FETCH 1 FLAGS)").tag, "t")

    def test_missing_space(self):
        self.bad(b't LOGIN "a""b"')
        self.bad(b"t FETCH 1 (FLAGS)UID")

    def test_deep_nesting_refused(self):
        self.bad(b"t SEARCH " + b"(" * 1000 + b")" * 1000)

    def test_control_characters(self):
        self.bad(b"t LOGIN a\x00b c")
        self.bad(b't LOGIN "a\x00b" c')

    def test_eight_bit_quoted_allowed(self):
        self.assertEqual(self.parse(b't SEARCH SUBJECT "\xc3\xa9"')[2], ["SUBJECT", b"\xc3\xa9"])

    def test_eight_bit_atom_refused(self):
        self.bad(b"t SELECT \xc3\xa9")


class HelperTests(unittest.TestCase):

    def test_literal_suffix(self):
        self.assertEqual(literal_suffix(b"t LOGIN {5}"), (5, True, False))
        self.assertEqual(literal_suffix(b"t LOGIN {5+}"), (5, False, False))
        self.assertEqual(literal_suffix(b"t APPEND x ~{5}"), (5, True, True))
        self.assertEqual(literal_suffix(b"t LOGIN {-1}"), (-1, True, False))
        self.assertIsNone(literal_suffix(b"t LOGIN x"))
        self.assertIsNone(literal_suffix(b"t LOGIN {x}"))
        self.assertEqual(literal_suffix(b"t A {99999999999999}"), (99999999999999, True, False))

    def test_astring(self):
        self.assertEqual(astring(Atom("x")), "x")
        self.assertEqual(astring(b"\xc3\xa9"), "\xe9")
        self.assertRaises(ParseError, astring, b"\xff")
        self.assertRaises(ParseError, astring, [])

    def test_is_atom_text(self):
        self.assertTrue(is_atom_text("INBOX"))
        self.assertFalse(is_atom_text("a b"))
        self.assertFalse(is_atom_text("NIL"))
        self.assertFalse(is_atom_text(""))
        self.assertFalse(is_atom_text("a*"))

    def test_parse_tokens(self):
        self.assertEqual(parse_tokens(b"(FLAGS UID) 1"), [["FLAGS", "UID"], "1"])
