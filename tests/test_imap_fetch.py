"""jdmail.imap.fetch: the one-format FETCH of UID/FLAGS/MODSEQ/RFC822.SIZE gives the
same octets as the general renderer."""

from twisted.trial import unittest

from jdmail.imap.fetch import fast_renderer, parse_fetch, render
from jdmail.imap.parser import parse_tokens
from jdmail.interfaces import MessageRecord


class FastRendererTests(unittest.TestCase):

    records = [MessageRecord(1, frozenset(), 4, 100, 1700000000.0),
               MessageRecord(5, frozenset({"\\Seen", "$Junk", "\\Flagged"}), 9, 2048, 1700000001.0),
               MessageRecord(70000, frozenset({"\\Answered", "\\Seen"}), 12, 7, 0.0)]

    def request(self, text):
        (attrs,) = parse_tokens(text)
        return parse_fetch(attrs)

    def test_same_octets_as_render(self):
        for text in (b"(FLAGS)", b"FLAGS", b"(UID FLAGS)", b"(FLAGS UID)", b"(UID)", b"(RFC822.SIZE FLAGS MODSEQ)",
                     b"(MODSEQ)", b"(RFC822.SIZE)"):
            req = self.request(text)
            for uid_fetch in (False, True):
                fast = fast_renderer(req, uid_fetch)
                self.assertIsNotNone(fast, text)
                for recent in ((), {5}, {1, 70000}):
                    for start, stop in ((0, 3), (1, 3), (2, 3), (0, 1), (1, 1)):
                        self.assertEqual(fast.render(self.records, start, stop, recent),
                                         b"".join(render(req, seq, record, uid_fetch, recent=recent)
                                                  for seq, record in enumerate(self.records[start:stop], start + 1)),
                                         (text, recent, start, stop))

    def test_other_items_take_the_general_way(self):
        for text in (b"(FLAGS INTERNALDATE)", b"FAST", b"(ENVELOPE)", b"(BODY.PEEK[])", b"(UID BODYSTRUCTURE)"):
            self.assertIsNone(fast_renderer(self.request(text), True), text)
