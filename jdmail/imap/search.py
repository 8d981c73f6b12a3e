"""IMAP SEARCH criteria (RFC 3501 6.4.4, MODSEQ of RFC 7162): parse once, match many.

``parse_search(args)`` turns the tokens after ``SEARCH`` (``RETURN (...)`` for
ESEARCH is the protocol's business and already removed) into a SearchProgram;
``match(program, msg, ctx)`` says whether one message satisfies it.

The program says what it has to read (``needs``), so the server never opens a
message file for a search on flags, sizes, dates, UIDs or sequence numbers, and
only loads the cached structure (jdmail.mime.MessageStructure, which carries the
envelope fields) for FROM/TO/CC/BCC/SUBJECT/SENT* and HEADER of an envelope
field (Subject, From, Sender, Reply-To, To, Cc, Bcc, Date, In-Reply-To,
Message-ID -- the first occurrence of each, as ENVELOPE shows it): only BODY,
TEXT and HEADER of other fields read the message itself.

String keys match case-insensitively (Unicode casefold) as substrings of the
decoded text: RFC 2047 encoded-words, quoted-printable/base64 and the part's
charset are undone first, so ``SUBJECT café`` finds ``=?UTF-8?Q?caf=C3=A9?=``.

Dates: BEFORE/ON/SINCE compare the calendar date of the internal date in the
server's local time zone (``ctx.tzinfo`` when the session sets one), like
Dovecot; SENTBEFORE/SENTON/SENTSINCE the date written in the Date: header
(its own zone, time ignored), or the internal date when that is missing or
unparsable.
"""

import datetime
import email.utils
import re

from jdmail.imap.parser import Atom
from jdmail.mime import MessageStructure

__all__ = ["Atom", "SearchError", "SearchProgram", "parse_search", "match",
           "parse_date", "sent_date"]


class SearchError(Exception):
    """Search criteria the server cannot take. ``text`` is a sentence for the client;
    ``code`` is None (answer BAD) or a response code such as "BADCHARSET" (answer
    NO [BADCHARSET (US-ASCII UTF-8)])."""

    def __init__(self, text, code=None):
        Exception.__init__(self, text)
        self.text = text
        self.code = code
        self.charsets = ("US-ASCII", "UTF-8") if code == "BADCHARSET" else ()


class SearchProgram:
    """Parsed criteria. ``needs`` is a frozenset, subset of {"structure", "data"}:
    what ``match`` will ask a message for. ``uses_modseq`` is True when MODSEQ
    appears (the untagged SEARCH answer then carries (MODSEQ n)). ``flags_only`` is True
    when only the message's flags decide (ALL, flag and keyword keys, NOT, OR and
    groups of these): ``flags_match`` then answers for a flag set alone."""

    __slots__ = ("needs", "uses_modseq", "_fn", "text", "flags_only", "fields")

    def __init__(self, fn, needs, uses_modseq, text="", flags_only=False, fields=None):
        self._fn = fn
        self.needs = frozenset(needs)
        self.uses_modseq = uses_modseq
        self.text = text
        self.flags_only = flags_only
        # when the structure is used for nothing but envelope fields: their names (a
        # message may then carry them precomputed, see field_value)
        self.fields = frozenset(fields) if fields else None

    def flags_match(self, flags):
        """For a ``flags_only`` program: True when a message with ``flags`` matches."""
        return bool(self._fn(_FlagsOnly(flags), None, None))

    def __repr__(self):
        return "<SearchProgram needs=%s modseq=%s>" % (sorted(self.needs), self.uses_modseq)


def field_value(structure, name):
    """What a search compares an envelope field with: its decoded, casefolded value,
    or None when the message has no such field."""
    if structure.field(name) is None:
        return None
    return structure.decoded(name).casefold()


def match(program, msg, ctx):
    """True when ``msg`` satisfies ``program``. ``msg`` has seq, uid, flags, size,
    internaldate, modseq, recent and, when ``program.needs`` asks, callables
    ``data()`` and ``structure()``; ``ctx`` has last_seq and last_uid (for ``*``)
    and optionally ``saved`` (the SEARCHRES result ``$``, a set of UIDs) and
    ``tzinfo``."""
    return program._fn(msg, ctx, _Lazy(msg) if program.needs else None)


class _FlagsOnly:
    __slots__ = ("flags",)

    def __init__(self, flags):
        self.flags = flags


# --- per-message lazy values ----------------------------------------------------------------

class _Lazy:
    """Decoded, casefolded views of one message, computed at most once per match."""

    __slots__ = ("msg", "_data", "_structure", "_cache")

    def __init__(self, msg):
        self.msg = msg
        self._data = None
        self._structure = None
        self._cache = {}

    def data(self):
        if self._data is None:
            data = self.msg.data()
            self._data = b"" if data is None else bytes(data)
        return self._data

    def structure(self):
        if self._structure is None:
            structure = self.msg.structure() if hasattr(self.msg, "structure") else None
            if structure is None:
                structure = MessageStructure.parse(self.data())
            self._structure = structure
        return self._structure

    def field(self, name):
        """The casefolded decoded value of an envelope field, or None when absent."""
        given = getattr(self.msg, "fields", None)
        if given is not None:
            return given[name]
        key = ("f", name)
        cache = self._cache
        if key not in cache:
            cache[key] = field_value(self.structure(), name)
        return cache[key]

    def header(self, name):
        """Casefolded decoded values of every header field ``name``."""
        key = ("h", name)
        cache = self._cache
        if key not in cache:
            cache[key] = [v.casefold() for v in self.structure().header(self.data(), name)]
        return cache[key]

    def body(self):
        cache = self._cache
        if "body" not in cache:
            cache["body"] = _normalise(self.structure().body_text(self.data())).casefold()
        return cache["body"]

    def text(self):
        cache = self._cache
        if "text" not in cache:
            cache["text"] = (_normalise(self.structure().header_text(self.data())).casefold()
                             + "\n" + self.body())
        return cache["text"]


def _normalise(text):
    return text.replace("\r\n", "\n")


# --- dates ------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DATE = re.compile(r"^([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})$")


def parse_date(text):
    """An IMAP date ("1-Feb-1994", "01-Feb-1994") -> datetime.date; ValueError if not."""
    m = _DATE.match(text)
    if m is None or m.group(2).lower() not in _MONTHS:
        raise ValueError("not an IMAP date: %r" % (text,))
    return datetime.date(int(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1)))


def _local_date(timestamp, tz):
    try:
        if tz is None:
            return datetime.datetime.fromtimestamp(timestamp).date()
        return datetime.datetime.fromtimestamp(timestamp, tz).date()
    except (OverflowError, OSError, ValueError):
        return datetime.date(1970, 1, 1)


def sent_date(structure):
    """The calendar date written in the Date: header (datetime.date), or None."""
    raw = structure.field("date")
    if not raw:
        return None
    try:
        parsed = email.utils.parsedate_tz(raw.decode("ascii", "replace"))
        if parsed is None:
            return None
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


# --- parsing ----------------------------------------------------------------------------------

_SEQ_SET = re.compile(r"^(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*$")
_SYSTEM_FLAGS = {
    "ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged", "SEEN": "\\Seen",
}
_ENVELOPE_STRING_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject",
                         "TO": "to"}
_ENVELOPE_HEADERS = frozenset(("date", "subject", "from", "sender", "reply-to", "to", "cc",
                               "bcc", "in-reply-to", "message-id"))
_STRUCTURE = frozenset(("structure",))
_DATA = frozenset(("structure", "data"))
_NOTHING = frozenset()
_MAX_DEPTH = 64
_MAX_NUMBER = 0xFFFFFFFF
_MAX_MODSEQ = 0x7FFFFFFFFFFFFFFF


class _Parser:
    def __init__(self, tokens, utf8, charset):
        self.tokens = tokens
        self.pos = 0
        self.utf8 = utf8
        self.charset = charset
        self.needs = set()
        self.fields = set()             # envelope fields read through lazy.field
        self.other_structure = False    # the structure is used for more than those
        self.uses_modseq = False
        self.flags_only = True
        self.depth = 0

    # token helpers

    def next(self, what):
        if self.pos >= len(self.tokens):
            raise SearchError("Missing %s" % what)
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def atom(self, what):
        token = self.next(what)
        if not isinstance(token, str):
            raise SearchError("Expected %s" % what)
        return token

    def string(self, what):
        token = self.next(what)
        if isinstance(token, list):
            raise SearchError("Expected %s" % what)
        if isinstance(token, str):
            return str(token)
        try:
            return bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            if self.charset == "UTF-8" or self.utf8:
                raise SearchError("Invalid UTF-8 in search string") from None
            return bytes(token).decode("latin-1")

    def number(self, what, limit=_MAX_NUMBER):
        token = self.next(what)
        text = token.decode("ascii", "replace") if isinstance(token, (bytes, bytearray)) else token
        if not isinstance(text, str) or not text.isdigit() or not text.isascii():
            raise SearchError("Expected a number for %s" % what)
        value = int(text)
        if value > limit:
            raise SearchError("Number too large for %s" % what)
        return value

    def date(self, what):
        token = self.next(what)
        text = token.decode("ascii", "replace") if isinstance(token, (bytes, bytearray)) else token
        if not isinstance(text, str):
            raise SearchError("Expected a date for %s" % what)
        try:
            return parse_date(text)
        except ValueError:
            raise SearchError("Invalid date %s (expected e.g. 1-Feb-1994)" % (str(text)[:40],)) \
                from None

    # grammar

    def program(self):
        keys = []
        while self.pos < len(self.tokens):
            keys.append(self.key())
        if not keys:
            raise SearchError("Missing search criteria")
        return _all(keys)

    def key(self):
        token = self.next("search key")
        if isinstance(token, list):
            if not token:
                raise SearchError("Empty parenthesised search key")
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise SearchError("Search criteria nested too deeply")
            saved, self.tokens, self.pos = (self.tokens, self.pos), token, 0
            keys = []
            while self.pos < len(self.tokens):
                keys.append(self.key())
            self.tokens, self.pos = saved
            self.depth -= 1
            return _all(keys)
        if not isinstance(token, str):
            raise SearchError("Unexpected string where a search key was expected")
        name = token.upper()
        handler = _KEYS.get(name)
        if name not in _FLAG_KEYS:
            self.flags_only = False
        if handler is not None:
            return handler(self, name)
        if name == "$" or _SEQ_SET.match(token):
            return _sequence_key(token, "seq")
        raise SearchError("Unknown search key %s" % (token[:40],))


def _all(keys):
    if len(keys) == 1:
        return keys[0]
    keys = tuple(keys)

    def fn(msg, ctx, lazy):
        for key in keys:
            if not key(msg, ctx, lazy):
                return False
        return True
    return fn


def _always(msg, ctx, lazy):
    return True


def _flag_key(flag, present, exact=False):
    """System flags are matched as the store spells them ("\\Seen"); keywords
    case-insensitively (RFC 3501 flags are case-insensitive)."""
    if exact:
        if present:
            return lambda msg, ctx, lazy: flag in msg.flags
        return lambda msg, ctx, lazy: flag not in msg.flags
    folded = flag.casefold()

    def has(flags):
        if flag in flags:
            return True
        for f in flags:
            if f.casefold() == folded:
                return True
        return False
    if present:
        return lambda msg, ctx, lazy: has(msg.flags)
    return lambda msg, ctx, lazy: not has(msg.flags)


def _sequence_key(text, kind):
    if text == "$":
        def saved(msg, ctx, lazy):
            uids = getattr(ctx, "saved", None)
            return bool(uids) and msg.uid in uids
        return saved
    ranges = []
    for item in text.split(","):
        a, _, b = item.partition(":")
        lo = None if a == "*" else int(a)
        hi = lo if not b else (None if b == "*" else int(b))
        for n in (lo, hi):
            if n is not None and not 0 < n <= _MAX_NUMBER:
                raise SearchError("Invalid number in sequence set %s" % (text[:40],))
        ranges.append((lo, hi))
    ranges = tuple(ranges)
    resolved = [None, ()]           # (top it was resolved for, [(lo, hi)])

    def resolve(top):
        if resolved[0] != top:
            spans = []
            for lo, hi in ranges:
                lo = top if lo is None else lo
                hi = top if hi is None else hi
                spans.append((lo, hi) if lo <= hi else (hi, lo))
            resolved[0], resolved[1] = top, spans
        return resolved[1]

    if kind == "seq":
        def seq(msg, ctx, lazy):
            value = msg.seq
            for lo, hi in resolve(ctx.last_seq):
                if lo <= value <= hi:
                    return True
            return False
        return seq

    def uid(msg, ctx, lazy):
        value = msg.uid
        for lo, hi in resolve(ctx.last_uid):
            if lo <= value <= hi:
                return True
        return False
    return uid


def _k_all(p, name):
    return _always


def _k_flag(p, name):
    return _flag_key(_SYSTEM_FLAGS[name], True, exact=True)


def _k_unflag(p, name):
    return _flag_key(_SYSTEM_FLAGS[name[2:]], False, exact=True)


def _k_keyword(p, name):
    flag = str(p.atom("keyword"))
    return _flag_key(flag, name == "KEYWORD")


def _k_new(p, name):
    return lambda msg, ctx, lazy: msg.recent and "\\Seen" not in msg.flags


def _k_old(p, name):
    return lambda msg, ctx, lazy: not msg.recent


def _k_recent(p, name):
    return lambda msg, ctx, lazy: bool(msg.recent)


def _k_size(p, name):
    n = p.number(name)
    if name == "LARGER":
        return lambda msg, ctx, lazy: msg.size > n
    return lambda msg, ctx, lazy: msg.size < n


def _arrival(msg, ctx):
    return _local_date(msg.internaldate, getattr(ctx, "tzinfo", None))


def _day_start(day, tz):
    """Seconds since the epoch when ``day`` begins in ``tz`` (None: local time)."""
    try:
        if tz is None:
            return datetime.datetime(day.year, day.month, day.day).timestamp()
        return datetime.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
    except (OverflowError, OSError, ValueError):
        return float("-inf") if day.year < 1970 else float("inf")


def _k_internal_date(p, name):
    day = p.date(name)
    bounds = {}         # tzinfo -> (start of day, start of the next day), computed once

    def window(ctx):
        tz = getattr(ctx, "tzinfo", None)
        found = bounds.get(tz)
        if found is None:
            found = bounds[tz] = (_day_start(day, tz),
                                  _day_start(day + datetime.timedelta(days=1), tz))
        return found
    if name == "BEFORE":
        return lambda msg, ctx, lazy: msg.internaldate < window(ctx)[0]
    if name == "ON":
        def on(msg, ctx, lazy):
            start, stop = window(ctx)
            return start <= msg.internaldate < stop
        return on
    return lambda msg, ctx, lazy: msg.internaldate >= window(ctx)[0]


def _k_sent_date(p, name):
    day = p.date(name)
    p.needs.update(_STRUCTURE)
    p.other_structure = True

    def sent(msg, ctx, lazy):
        cache = lazy._cache
        value = cache.get("sent")
        if value is None:
            value = sent_date(lazy.structure())
            if value is None:
                value = _arrival(msg, ctx)
            cache["sent"] = value
        return value
    if name == "SENTBEFORE":
        return lambda msg, ctx, lazy: sent(msg, ctx, lazy) < day
    if name == "SENTON":
        return lambda msg, ctx, lazy: sent(msg, ctx, lazy) == day
    return lambda msg, ctx, lazy: sent(msg, ctx, lazy) >= day


def _k_envelope_string(p, name):
    needle = p.string(name).casefold()
    field = _ENVELOPE_STRING_KEYS[name]
    p.needs.update(_STRUCTURE)
    p.fields.add(field)

    def fn(msg, ctx, lazy):
        value = lazy.field(field)
        return value is not None and needle in value
    return fn


def _k_header(p, name):
    field = p.string("header field name").strip().lower()
    needle = p.string("header value").casefold()
    if not field:
        raise SearchError("Empty header field name")
    if field in _ENVELOPE_HEADERS:
        p.needs.update(_STRUCTURE)
        p.fields.add(field)

        def env(msg, ctx, lazy):
            value = lazy.field(field)
            return value is not None and needle in value
        return env
    p.needs.update(_DATA)

    def fn(msg, ctx, lazy):
        for value in lazy.header(field):
            if needle in value:
                return True
        return False
    return fn


def _k_body(p, name):
    needle = _normalise(p.string(name)).casefold()
    p.needs.update(_DATA)
    if name == "BODY":
        return lambda msg, ctx, lazy: needle in lazy.body()
    return lambda msg, ctx, lazy: needle in lazy.text()


def _k_not(p, name):
    key = p.key()
    return lambda msg, ctx, lazy: not key(msg, ctx, lazy)


def _k_or(p, name):
    a = p.key()
    b = p.key()
    return lambda msg, ctx, lazy: a(msg, ctx, lazy) or b(msg, ctx, lazy)


def _k_uid(p, name):
    text = p.atom("UID set")
    if text != "$" and not _SEQ_SET.match(text):
        raise SearchError("Invalid UID set %s" % (text[:40],))
    return _sequence_key(text, "uid")


def _k_modseq(p, name):
    # MODSEQ [entry-name entry-type-req] mod-sequence-valzer (RFC 7162 3.1.5)
    if p.pos < len(p.tokens) and isinstance(p.tokens[p.pos], (bytes, bytearray)):
        p.pos += 1                                   # entry name, e.g. "/flags/\\draft"
        kind = p.atom("MODSEQ entry type").lower()
        if kind not in ("priv", "shared", "all"):
            raise SearchError("Invalid MODSEQ entry type %s" % (kind[:20],))
    value = p.number("MODSEQ", _MAX_MODSEQ)
    p.uses_modseq = True
    return lambda msg, ctx, lazy: (msg.modseq or 0) >= value


_KEYS = {
    "ALL": _k_all,
    "ANSWERED": _k_flag, "DELETED": _k_flag, "DRAFT": _k_flag, "FLAGGED": _k_flag,
    "SEEN": _k_flag,
    "UNANSWERED": _k_unflag, "UNDELETED": _k_unflag, "UNDRAFT": _k_unflag,
    "UNFLAGGED": _k_unflag, "UNSEEN": _k_unflag,
    "KEYWORD": _k_keyword, "UNKEYWORD": _k_keyword,
    "NEW": _k_new, "OLD": _k_old, "RECENT": _k_recent,
    "LARGER": _k_size, "SMALLER": _k_size,
    "BEFORE": _k_internal_date, "ON": _k_internal_date, "SINCE": _k_internal_date,
    "SENTBEFORE": _k_sent_date, "SENTON": _k_sent_date, "SENTSINCE": _k_sent_date,
    "BCC": _k_envelope_string, "CC": _k_envelope_string, "FROM": _k_envelope_string,
    "SUBJECT": _k_envelope_string, "TO": _k_envelope_string,
    "HEADER": _k_header,
    "BODY": _k_body, "TEXT": _k_body,
    "NOT": _k_not, "OR": _k_or,
    "UID": _k_uid,
    "MODSEQ": _k_modseq,
}

# keys whose answer depends on nothing but the flags (and on the keys they combine)
_FLAG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
                        "UNDRAFT", "UNFLAGGED", "UNSEEN", "KEYWORD", "UNKEYWORD", "NOT", "OR"})


def parse_search(args, utf8=False):
    """Parse SEARCH criteria: ``args`` is every token after SEARCH (Atom for atoms,
    bytes for strings, list for parenthesised groups), starting with an optional
    ``CHARSET x``. ``utf8`` is True once the session enabled UTF8=ACCEPT (strings
    are UTF-8 then). Raises SearchError: code "BADCHARSET" for a charset other than
    US-ASCII/UTF-8, no code for syntax errors."""
    tokens = list(args)
    charset = None
    if tokens and isinstance(tokens[0], str) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2 or isinstance(tokens[1], list):
            raise SearchError("Missing charset after CHARSET")
        name = tokens[1]
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("ascii", "replace")
        charset = name.upper()
        if charset not in ("US-ASCII", "UTF-8", "UTF8"):
            raise SearchError("Charset %s is not supported" % (name[:40],), code="BADCHARSET")
        charset = "UTF-8" if charset != "US-ASCII" else charset
        tokens = tokens[2:]
    parser = _Parser(tokens, utf8, charset)
    fn = parser.program()
    fields = parser.fields if not parser.other_structure else None
    return SearchProgram(fn, parser.needs, parser.uses_modseq, flags_only=parser.flags_only,
                         fields=fields)
