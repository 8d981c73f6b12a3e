"""MIME structure of a raw message, for IMAP FETCH, SEARCH and SORT.

``MessageStructure.parse(data)`` walks the raw octets once and records, for every
MIME part, where its header and body start and end plus the Content-* fields
IMAP reports.  Everything the protocol needs afterwards -- ENVELOPE, BODY and
BODYSTRUCTURE, the octets of any ``BODY[section]``, decoded header values and
decoded text for SEARCH -- comes from that tree and the same octets, without
building Python ``email`` objects.  ``to_bytes()`` / ``from_bytes()`` let the
store cache the tree in its index so FETCH BODYSTRUCTURE never opens the file.

This replaces twisted.mail.imap4's MIME code, which on Python 3 reports the
whole message's size as every part's size, sends NIL instead of "7BIT", has no
default type or charset, drops the blank line at the end of
``HEADER.FIELDS`` and fails on non-ASCII headers.

Conventions (the same as Cyrus and Gmail): type, subtype, encoding, parameter
and disposition names are sent upper-case; values are sent as they appear in
the message.  Strings that are not plain printable ASCII go out as literals.

Parsing never raises: a broken message still gets a structure a client can
use (see ``_parse_part`` for what happens to missing boundaries and the like).

Checked against Dovecot 2.3.19 (BODYSTRUCTURE, BODY, ENVELOPE and every
BODY[section] of tests/fixtures/messages/, plus damaged copies). Where we
differ, on purpose:
- a multipart whose boundary never occurs (or that has none) gets one text/plain
  child with the whole body; Dovecot reports an empty child, hiding the text;
- the line break before a delimiter always belongs to the delimiter (RFC 2046),
  also after a nested close delimiter or a header-only nested message; Dovecot
  counts it in a message/rfc822 part there (2 octets more, 1 line more);
- the first Subject/Date/Message-ID/In-Reply-To counts when a header repeats
  them (Dovecot takes the last); repeated address fields are merged like Dovecot;
- when a parent's boundary is a prefix of a child's, the longer boundary wins
  in every line (Dovecot does that only once the child multipart has begun);
- Content-ID and other values are sent without trailing blanks, and RFC 2231
  continuations are merged even when ``name*0`` is missing;
- HEADER.FIELDS.NOT of a message without a blank line after its header still
  ends with the blank line (Dovecot omits it there; RFC 3501 wants it).
"""

import binascii
import codecs
import functools
import html
import marshal
import re

__all__ = ["MessageStructure", "Part", "decode_header_value", "decode_bytes", "header_section",
           "parse_addresses"]

# Limits that keep hostile messages from costing too much (Dovecot uses similar ones).
MAX_DEPTH = 64          # nested multipart / message/rfc822 levels
MAX_PARTS = 5000        # MIME parts per message

_FORMAT = 1             # to_bytes() layout version

_ENV_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc",
               b"bcc", b"in-reply-to", b"message-id")
_ENV_INDEX = {name.decode(): i for i, name in enumerate(_ENV_FIELDS)}
_ADDRESS_NAMES = frozenset(_ENV_FIELDS[2:8])

# A header field: name, optional blanks, colon, then the value up to the end of its
# last continuation line (the value keeps its CRs; the final LF is not included).
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.M)
_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_CONTENT_TYPE = re.compile(rb"[ \t\r\n]*(" + _TOKEN + rb")[ \t\r\n]*/[ \t\r\n]*(" + _TOKEN + rb")")
_MIME_TOKEN = re.compile(rb"[ \t\r\n]*(" + _TOKEN + rb")")
# A parameter: attribute = quoted-string or token. Lenient like most clients: a
# missing ";" between parameters is tolerated, and an unquoted value runs on over
# blanks (name=my file.pdf) unless the next word starts another "attribute=".
_PARAM = re.compile(rb"[;\s][;\s]*([^\s=;\"]+)[ \t\r\n]*=[ \t\r\n]*"
                    rb"(?:\"((?:[^\"\\]|\\.)*)\"?|([^;\s]*(?:\s+(?![^\s=;\"]+\s*=)[^;\s]+)*))",
                    re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_RFC2231_NAME = re.compile(r"^(.*?)\*(?:(\d+)(\*)?)?$")
_ATTR_CHAR = frozenset(b"!#$&+-.^_`|~0123456789"
                       b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)", re.S)
_QUOTABLE = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"") + b"\t"

_TEXT, _PLAIN = "TEXT", "PLAIN"
_MESSAGE, _RFC822 = "MESSAGE", "RFC822"
_MULTIPART = "MULTIPART"
_US_ASCII = (("CHARSET", b"US-ASCII"),)
_IDENTITY_ENCODINGS = frozenset(("7BIT", "8BIT", "BINARY"))


class Part:
    """One MIME part: where its header and body are, and its Content-* fields.

    Offsets index the octets given to ``MessageStructure.parse``: the header is
    ``data[header_start:header_end]`` (including the blank line that ends it, when
    there is one), the body ``data[body_start:body_end]`` (without the line break
    that belongs to the next boundary).  ``type``/``subtype``/``encoding`` are
    upper-case str; ``params``/``disposition_params`` are tuples of
    (NAME upper-case str, value bytes) as sent in BODYSTRUCTURE (RFC 2231
    continuations merged); ``id``, ``description``, ``md5``, ``location`` are the
    unfolded header values (bytes) or None; ``language`` a tuple of bytes or None.
    A multipart has ``children`` (a list); a message/rfc822 part has ``message``
    (the MessageStructure of the message it carries).
    """

    __slots__ = ("header_start", "header_end", "body_start", "body_end", "lines",
                 "type", "subtype", "params", "id", "description", "encoding", "md5",
                 "disposition", "disposition_params", "language", "location",
                 "children", "message", "_bs_cache")

    def __init__(self):
        self.header_start = self.header_end = self.body_start = self.body_end = 0
        self.lines = 0
        self.type, self.subtype = _TEXT, _PLAIN
        self.params = ()
        self.id = self.description = self.md5 = self.location = None
        self.encoding = "7BIT"
        self.disposition = None
        self.disposition_params = ()
        self.language = None
        self.children = None
        self.message = None
        self._bs_cache = None

    # --- convenience -------------------------------------------------------------------

    @property
    def size(self):
        """Body size in octets (BODYSTRUCTURE body-fld-octets)."""
        return self.body_end - self.body_start

    @property
    def content_type(self):
        """"type/subtype", lower-case."""
        return (self.type + "/" + self.subtype).lower()

    @property
    def is_multipart(self):
        return self.children is not None

    def param(self, name, disposition=False):
        """A Content-Type (or, with ``disposition``, Content-Disposition) parameter,
        decoded to str (RFC 2231 and, as many mailers use it, RFC 2047), or None."""
        name = name.upper()
        params = self.disposition_params if disposition else self.params
        found = None
        for key, value in params:
            if key == name + "*":
                return _decode_rfc2231(value)
            if key == name and found is None:
                found = value
        return None if found is None else decode_header_value(found)

    def filename(self):
        """The attachment's file name (disposition filename, else type name), or None."""
        return self.param("filename", disposition=True) or self.param("name")

    def __repr__(self):
        return "<%s %s/%s header=%d:%d body=%d:%d>" % (
            type(self).__name__, self.type, self.subtype, self.header_start,
            self.header_end, self.body_start, self.body_end)

    # --- BODY / BODYSTRUCTURE ------------------------------------------------------------

    def _write_body(self, out, ext):
        if self.children is not None:
            for child in self.children:
                out.append(b"(")
                child._write_body(out, ext)
                out.append(b")")
            out.append(b" ")
            out.append(_astr(self.subtype))
            if ext:
                out.append(b" ")
                out.append(_param_list(self.params))
                out.append(b" ")
                self._write_ext_tail(out)
            return
        out.append(_astr(self.type))
        out.append(b" ")
        out.append(_astr(self.subtype))
        out.append(b" ")
        params = self.params
        if self.type == _TEXT and not any(k == "CHARSET" for k, _ in params):
            params = params + _US_ASCII
        out.append(_param_list(params))
        out.append(b" ")
        out.append(_nstring(self.id))
        out.append(b" ")
        out.append(_nstring(self.description))
        out.append(b" ")
        out.append(_astr(self.encoding))
        out.append(b" %d" % (self.body_end - self.body_start))
        if self.message is not None:
            out.append(b" (")
            out.append(self.message._envelope_items())
            out.append(b") (")
            self.message._write_body(out, ext)
            out.append(b") %d" % self.lines)
        elif self.type == _TEXT:
            out.append(b" %d" % self.lines)
        if ext:
            out.append(b" ")
            out.append(_nstring(self.md5))
            out.append(b" ")
            self._write_ext_tail(out)

    def _write_ext_tail(self, out):
        # body-fld-dsp SP body-fld-lang SP body-fld-loc
        if self.disposition is None:
            out.append(b"NIL")
        else:
            out.append(b"(")
            out.append(_astr(self.disposition))
            out.append(b" ")
            out.append(_param_list(self.disposition_params))
            out.append(b")")
        out.append(b" ")
        if not self.language:
            out.append(b"NIL")
        else:
            out.append(b"(" + b" ".join(_string(x) for x in self.language) + b")")
        out.append(b" ")
        out.append(_nstring(self.location))

    def bodystructure(self, extensible=True):
        """This part's BODYSTRUCTURE (``extensible``) or BODY, e.g.
        ``("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92 NIL NIL NIL NIL)``."""
        cache = self._bs_cache
        if cache is None:
            cache = self._bs_cache = [None, None]
        index = 1 if extensible else 0
        if cache[index] is None:
            out = [b"("]
            self._write_body(out, extensible)
            out.append(b")")
            cache[index] = b"".join(out)
        return cache[index]


class MessageStructure(Part):
    """A message (the top level, or one a message/rfc822 part carries): a Part whose
    header is the RFC 5322 header, plus the raw fields ENVELOPE needs.

    Build one with ``MessageStructure.parse(data)`` (or ``from_bytes``) and pass
    the same octets to ``section``/``header``/``text``/``body_text``.
    """

    __slots__ = ("env", "_env_cache")

    def __init__(self):
        Part.__init__(self)
        self.env = (None,) * 10
        self._env_cache = None

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def parse(cls, data):
        """Parse raw message octets (CRLF line ends; bare LF tolerated). Never raises
        on malformed input."""
        data = bytes(data)
        msg, _ = _parse_part(data, 0, len(data), (), False, 0, [0], True)
        return msg

    def to_bytes(self):
        """A compact serialisation (for the store's index): the tree, plus the
        ENVELOPE and BODYSTRUCTURE wire forms so FETCH of them costs only a load."""
        self.bodystructure(True)
        return b"JM%d" % _FORMAT + marshal.dumps(
            (_dump(self), self._envelope_items(), self._bs_cache[1]))

    @classmethod
    def from_bytes(cls, blob):
        """The inverse of ``to_bytes``; raises ValueError when ``blob`` is not one
        (e.g. written by an older layout: the caller should parse the message again)."""
        prefix = b"JM%d" % _FORMAT
        if not blob.startswith(prefix):
            raise ValueError("not a serialised MessageStructure (or an older layout)")
        try:
            tree, envelope, bodystructure = marshal.loads(blob[len(prefix):])
            msg = _load(tree, True)
            if type(envelope) is not bytes or type(bodystructure) is not bytes:
                raise ValueError("cached wire forms missing")
            msg._env_cache = envelope
            msg._bs_cache = [None, bodystructure]
            return msg
        except Exception as e:
            raise ValueError("damaged MessageStructure: %s" % (e,)) from None

    # --- envelope ----------------------------------------------------------------------------

    @property
    def message_size(self):
        """The whole message's size in octets (header + body)."""
        return self.body_end - self.header_start

    def field(self, name):
        """Raw unfolded value (bytes) of an ENVELOPE field of this message's header
        ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc",
        "in-reply-to", "message-id"), or None when absent."""
        return self.env[_ENV_INDEX[name.lower()]]

    def addresses(self, name):
        """The addresses of "from", "sender", "reply-to", "to", "cc" or "bcc" as
        (name, adl, mailbox, host) tuples of bytes/None, groups as in ENVELOPE."""
        return parse_addresses(self.env[_ENV_INDEX[name.lower()]])

    def decoded(self, name):
        """An ENVELOPE field decoded to str (RFC 2047), "" when absent."""
        value = self.env[_ENV_INDEX[name.lower()]]
        return "" if value is None else decode_header_value(value)

    def _envelope_items(self):
        cache = self._env_cache
        if cache is None:
            env = self.env
            items = []
            for i in (0, 1):
                items.append(_nstring(env[i]))
            from_ = _address_list(env[2])
            items.append(from_)
            for i in (3, 4):    # sender, reply-to: From when absent or empty
                value = _address_list(env[i])
                items.append(from_ if value == b"NIL" else value)
            for i in (5, 6, 7):
                items.append(_address_list(env[i]))
            for i in (8, 9):
                items.append(_nstring(env[i]))
            cache = self._env_cache = b" ".join(items)
        return cache

    def envelope(self):
        """The ENVELOPE (RFC 3501 7.4.2), e.g. ``("date" "subject" (("name" NIL "mbox"
        "host")) ...)``: raw header text, encoded-words left as they are."""
        return b"(" + self._envelope_items() + b")"

    # --- octets ----------------------------------------------------------------------------

    def walk(self):
        """Yield (section, part) for every part, depth first: section is the IMAP
        part number ("1", "1.2", ...) under this message; multiparts and
        message/rfc822 parts are yielded before their contents."""
        yield from _walk(self, "", True)

    def find(self, numbers):
        """The Part that a list of part numbers (e.g. [2, 1]) names, or None."""
        node, in_message = self, True
        for n in numbers:
            if n < 1:
                return None
            if in_message or node.children is not None:
                if node.children is not None:
                    if n > len(node.children):
                        return None
                    node = node.children[n - 1]
                elif n == 1:
                    pass            # part 1 of a single-part message is its body
                else:
                    return None
                in_message = False
            elif node.message is not None:
                inner = node.message
                if inner.children is not None:
                    if n > len(inner.children):
                        return None
                    node = inner.children[n - 1]
                elif n == 1:
                    node = inner
                else:
                    return None
            else:
                return None
        return node

    def section(self, data, spec):
        """The octets of ``BODY[spec]`` (RFC 3501 6.4.5), spec being what is between
        the brackets: "", "HEADER", "TEXT", "HEADER.FIELDS (FROM TO)",
        "HEADER.FIELDS.NOT (...)", "1", "1.2", "2.MIME", "2.HEADER", "3.TEXT", ...
        A section that does not exist gives b"" (as does ``section`` of a part
        HEADER/TEXT cannot apply to)."""
        spec, fields = _split_spec(spec)
        items = spec.split(".") if spec else []
        if "" in items:
            return b""
        numbers = []
        while items and items[0].isdigit():
            numbers.append(int(items.pop(0)))
        keyword = ".".join(items).upper()
        if keyword in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if fields is None:
                return b""
        elif fields is not None:
            return b""
        if not numbers:
            if keyword == "":
                return data[self.header_start:self.body_end]
            if keyword == "MIME":
                return b""
            msg = self
        else:
            part = self.find(numbers)
            if part is None:
                return b""
            if keyword == "":
                return data[part.body_start:part.body_end]
            if keyword == "MIME":
                return data[part.header_start:part.header_end]
            msg = part.message
            if msg is None:
                return b""
        if keyword == "HEADER":
            return data[msg.header_start:msg.header_end]
        if keyword == "TEXT":
            return data[msg.body_start:msg.body_end]
        if keyword == "HEADER.FIELDS":
            return _select_fields(data, msg.header_start, msg.header_end, fields, True)
        if keyword == "HEADER.FIELDS.NOT":
            return _select_fields(data, msg.header_start, msg.header_end, fields, False)
        return b""

    # --- decoded text --------------------------------------------------------------------

    def header(self, data, name):
        """Every value of header field ``name`` of this message, unfolded and
        decoded (RFC 2047 encoded-words, raw 8-bit as UTF-8 or Latin-1)."""
        wanted = name.lower().encode("ascii", "replace")
        out = []
        for m in _FIELD.finditer(data, self.header_start, self.header_end):
            if m.group(1).lower() == wanted:
                out.append(decode_header_value(_unfold(m.group(2))))
        return out

    def header_text(self, data):
        """The whole header decoded, one "Name: value" line per field."""
        lines = []
        for m in _FIELD.finditer(data, self.header_start, self.header_end):
            lines.append(m.group(1).decode("ascii", "replace") + ": "
                         + decode_header_value(_unfold(m.group(2))))
        return "\n".join(lines)

    def text(self, data):
        """Decoded header and body text (SEARCH TEXT)."""
        return self.header_text(data) + "\n\n" + self.body_text(data)

    def body_text(self, data):
        """Decoded body text (SEARCH BODY): text/* parts with their transfer
        encoding and charset undone (HTML reduced to its text), recursing into
        multiparts and message/rfc822 (whose header is included); other parts skipped."""
        out = []
        _collect_text(self, data, out, top=True)
        return "\n".join(out)


# --- parsing -------------------------------------------------------------------------------


def _eol_before(data, pos, floor):
    """Where the line break just before ``pos`` starts (not below ``floor``)."""
    if pos - 2 >= floor and data[pos - 2:pos] == b"\r\n":
        return pos - 2
    if pos - 1 >= floor and data[pos - 1:pos] == b"\n":
        return pos - 1
    return max(pos, floor)


_delimiter_cache = {}


def _delimiter_pattern(stack):
    """A regex finding a line that starts with one of ``stack``'s delimiters, the
    longest (then the innermost) first, and {delimiter: level}."""
    entry = _delimiter_cache.get(stack)
    if entry is None:
        levels = {}
        for level, delim in enumerate(stack):
            levels[delim] = level           # the innermost level wins a tie
        ordered = sorted(levels, key=len, reverse=True)
        pattern = re.compile(b"|".join(re.escape(d) for d in ordered))
        if len(_delimiter_cache) > 500:
            _delimiter_cache.clear()
        entry = _delimiter_cache[stack] = (pattern, levels)
    return entry


def _find_delimiter(data, pos, end, stack):
    """The first boundary line at or after ``pos`` (a line start) and before ``end``
    whose text starts with one of the delimiters in ``stack`` ("--" + boundary, the
    innermost last).  Like Dovecot, a line only has to start with the delimiter;
    when several match, the longest boundary wins (then the innermost).
    Returns (line start, next line start, level, is close delimiter) or None."""
    if not stack:
        return None
    pattern, levels = _delimiter_pattern(stack)
    if data.startswith(b"--", pos) and pos + 2 <= end:
        cand = pos
    else:
        cand = data.find(b"\n--", pos, end) + 1
        if not cand:
            return None
    while True:
        m = pattern.match(data, cand, end)
        if m is not None:
            break
        cand = data.find(b"\n--", cand, end) + 1
        if not cand:
            return None
    after = m.end()
    close = data.startswith(b"--", after) and after + 2 <= end
    nl = data.find(b"\n", after, end)
    return m.start(), (end if nl < 0 else nl + 1), levels[m.group()], close


def _header_end(data, s, end):
    """(end of the header fields, start of the body): the blank line is in between."""
    if data.startswith(b"\r\n", s) and s + 2 <= end:
        return s, s + 2
    if data.startswith(b"\n", s) and s < end:
        return s, s + 1
    a = data.find(b"\n\r\n", s, end)
    b = data.find(b"\n\n", s, end if a < 0 else a + 1)
    if b >= 0:
        return b + 1, b + 2
    if a >= 0:
        return a + 1, a + 3
    return end, end


def _parse_part(data, s, end, stack, digest, depth, counter, is_message):
    """Parse the part starting at ``s``; it ends at a delimiter of ``stack`` or at
    ``end``.  Returns (part, the delimiter that ended it or None).

    Malformed input: a multipart without a boundary parameter, or whose boundary
    never occurs, gets one header-less text/plain child holding its whole body
    (Dovecot reports an empty child there; the text is more use to a reader);
    a missing close delimiter ends the multipart at its parent's next delimiter
    or the end; a message/rfc822 part with a base64/quoted-printable encoding is
    not parsed inside (its envelope is all NIL and its body an empty text/plain,
    as Dovecot does); past MAX_DEPTH/MAX_PARTS multiparts and messages become
    application/octet-stream leaves.
    """
    counter[0] += 1
    part = MessageStructure() if is_message else Part()
    part.header_start = s
    hend, bs, term = _header_block(data, s, end, stack)
    _header_fields(part, data, s, hend, digest, is_message)
    boundary = _boundary(part)
    if term is not None and boundary is not None:
        # That line may be this multipart's own first delimiter, when the parent's
        # boundary is a prefix of ours ("--=_b" vs "--=_b_alt"): the longer wins.
        own = b"--" + boundary
        if len(own) >= len(stack[term[2]]) and data.startswith(own, term[0]):
            term = None
            hend, bs = _header_end(data, s, end)
            part = MessageStructure() if is_message else Part()
            part.header_start = s
            _header_fields(part, data, s, hend, digest, is_message)
            boundary = _boundary(part)
    part.header_end = part.body_start = bs
    kind = part.type
    nested = depth < MAX_DEPTH and counter[0] < MAX_PARTS
    if kind == _MULTIPART or (kind == _MESSAGE and part.subtype == _RFC822):
        if not nested:
            part.type, part.subtype = "APPLICATION", "OCTET-STREAM"
            kind = None

    if term is not None:
        # Header only, cut short by a delimiter: the body is empty.
        part.body_end = bs
        if kind == _MULTIPART:
            part.children = [_synthetic_child(data, bs, bs)]
        elif kind == _MESSAGE and part.subtype == _RFC822:
            part.message = _empty_message(bs)
        return part, term

    if kind == _MULTIPART and boundary:
        level = len(stack)
        inner = stack + (b"--" + boundary,)
        term = _find_delimiter(data, bs, end, inner)
        if term is None or term[2] != level:
            _set_body_end(part, data, term, end, hend)
            part.children = [_synthetic_child(data, part.body_start, part.body_end)]
            return part, term
        children = []
        child_digest = part.subtype == "DIGEST"
        while not term[3]:
            if term[1] == end and data[end - 1:end] != b"\n":
                break           # a delimiter line cut off at the end: no part follows
            child, term = _parse_part(data, term[1], end, inner, child_digest,
                                      depth + 1, counter, False)
            children.append(child)
            if term is None or term[2] != level:
                break           # the close delimiter is missing
        if term is not None and term[2] == level:
            if not children:
                stop = _eol_before(data, term[0], bs)
                children.append(_synthetic_child(data, bs, stop))
            term = _find_delimiter(data, term[1], end, stack)   # skip the epilogue
        part.children = children
        _set_body_end(part, data, term, end, hend)
        return part, term
    if kind == _MULTIPART:
        # No boundary: the whole body becomes one text/plain child.
        term = _find_delimiter(data, bs, end, stack)
        _set_body_end(part, data, term, end, hend)
        part.children = [_synthetic_child(data, part.body_start, part.body_end)]
        return part, term
    if kind == _MESSAGE and part.subtype == _RFC822 and part.encoding in _IDENTITY_ENCODINGS:
        inner, term = _parse_part(data, bs, end, stack, False, depth + 1, counter, True)
        part.message = inner
        part.body_end = inner.body_end
        part.lines = data.count(b"\n", bs, part.body_end)
        return part, term

    term = _find_delimiter(data, bs, end, stack)
    _set_body_end(part, data, term, end, hend)
    if kind == _MESSAGE and part.subtype == _RFC822:
        part.message = _empty_message(part.body_end)
        part.lines = data.count(b"\n", part.body_start, part.body_end)
    elif kind == _TEXT:
        part.lines = data.count(b"\n", part.body_start, part.body_end)
    return part, term


_HEADER_WINDOW = 65536


def _header_block(data, s, end, stack):
    """Where the header of the part starting at ``s`` ends: (end of the fields,
    start of the body, delimiter or None).  A delimiter of ``stack`` before the
    blank line ends a header-only part (the line break before the delimiter
    belongs to the delimiter); it is returned.  The blank line is looked for
    in a window first, so that header-only parts before a long body without
    blank lines do not each scan the rest of the message."""
    window = s + _HEADER_WINDOW
    if window < end:
        hend, bs = _header_end(data, s, window)
        if bs >= window:                # no blank line near: stop at the next delimiter
            following = _find_delimiter(data, s, end, stack)
            limit = end if following is None else following[0]
            hend, bs = _header_end(data, s, limit)
            if following is not None and bs >= limit:
                hend = bs = _eol_before(data, limit, s)
                return hend, bs, following
            return hend, bs, None
    else:
        hend, bs = _header_end(data, s, end)
    if stack and hend > s:
        cut = _find_delimiter(data, s, hend, stack)
        if cut is not None:
            hend = bs = _eol_before(data, cut[0], s)
            return hend, bs, cut
    return hend, bs, None


def _header_fields(part, data, s, hend, digest, is_message):
    """Read the header fields in data[s:hend] into ``part``."""
    fields = {}
    repeated = None
    for name, value in _FIELD.findall(data, s, hend):
        name = name.lower()
        if name not in fields:
            fields[name] = value
        elif name in _ADDRESS_NAMES:
            if repeated is None:
                repeated = {}
            repeated.setdefault(name, [fields[name]]).append(value)
    if is_message:
        get = fields.get
        part.env = tuple(None if v is None else _unfold(v)
                         for v in [get(f) for f in _ENV_FIELDS])
        if repeated:
            # A repeated address field (two To: lines) counts with all its addresses,
            # as in Dovecot; for the other fields the first occurrence counts.
            env = list(part.env)
            for name, values in repeated.items():
                joined = b", ".join(v for v in (_unfold(x) for x in values) if v)
                env[_ENV_FIELDS.index(name)] = joined
            part.env = tuple(env)
    if digest and b"content-type" not in fields:
        part.type, part.subtype = _MESSAGE, _RFC822
    for name in fields:
        if name.startswith(b"content-"):
            _content_fields(part, fields)
            break


def _boundary(part):
    if part.type == _MULTIPART:
        for key, value in part.params:
            if key == "BOUNDARY":
                return value or None
    return None


def _set_body_end(part, data, term, end, hend):
    """End the body before the line break that belongs to delimiter ``term`` (or at
    ``end``).  When that line break is the header's blank line (an empty body right
    before a delimiter), the header ends before it, as RFC 2046 reads."""
    if term is None:
        part.body_end = end
        return
    be = _eol_before(data, term[0], hend)
    if be < part.body_start:
        part.header_end = part.body_start = be
    part.body_end = be


def _synthetic_child(data, start, stop):
    child = Part()
    child.header_start = child.header_end = child.body_start = start
    child.body_end = stop
    child.params = _US_ASCII
    child.lines = data.count(b"\n", start, stop)
    return child


def _empty_message(pos):
    msg = MessageStructure()
    msg.header_start = msg.header_end = msg.body_start = msg.body_end = pos
    return msg


_upper_cache = {}


def _upper(token):
    """ASCII token bytes -> upper-case str (cached: the same few names recur)."""
    text = _upper_cache.get(token)
    if text is None:
        text = token.decode("ascii", "replace").upper()
        if len(_upper_cache) < 2000:
            _upper_cache[token] = text
    return text


def _content_fields(part, fields):
    get = fields.get
    ct = get(b"content-type")
    if ct is not None:
        m = _CONTENT_TYPE.match(ct)
        if m is not None:
            part.type = _upper(m.group(1))
            part.subtype = _upper(m.group(2))
            rest = ct[m.end():]
        else:
            rest = ct
        if b"=" in rest:
            part.params = _parse_params(rest)
    value = get(b"content-transfer-encoding")
    if value is not None:
        m = _MIME_TOKEN.match(value)
        if m is not None:
            part.encoding = _upper(m.group(1))
    value = get(b"content-disposition")
    if value is not None:
        m = _MIME_TOKEN.match(value)
        if m is not None:
            part.disposition = _upper(m.group(1))
            rest = value[m.end():]
            if b"=" in rest:
                part.disposition_params = _parse_params(rest)
    value = get(b"content-id")
    if value is not None:
        part.id = _unfold(value)
    value = get(b"content-description")
    if value is not None:
        part.description = _unfold(value)
    value = get(b"content-md5")
    if value is not None:
        part.md5 = _unfold(value)
    value = get(b"content-location")
    if value is not None:
        part.location = _unfold(value)
    value = get(b"content-language")
    if value is not None:
        value = _COMMENT.sub(b" ", _unfold(value)) if b"(" in value else _unfold(value)
        tags = tuple(t for t in (x.strip(b" \t") for x in value.split(b",")) if t)
        part.language = tags or None


def _parse_params(rest):
    if b"(" in rest:
        rest = _strip_comments(rest)
    raw = []
    star = False
    for name, quoted, value in _PARAM.findall(rest):
        name = _upper(name)
        if "*" in name:
            star = True
        if quoted:
            value = quoted
            if b"\\" in value:
                value = _QUOTED_PAIR.sub(rb"\1", value)
        else:
            value = value.strip(b" \t\r\n")
        if b"\n" in value or b"\r" in value:
            value = value.replace(b"\r", b"").replace(b"\n", b"")
        raw.append((name, value))
    if star:
        return _merge_rfc2231(raw)
    return tuple(raw)


def _strip_comments(value):
    """Remove RFC 822 comments outside quoted strings."""
    out = bytearray()
    depth = 0
    quoted = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if quoted:
            out.append(c)
            if c == 0x5C and i + 1 < n:
                out.append(value[i + 1])
                i += 1
            elif c == 0x22:
                quoted = False
        elif depth:
            if c == 0x5C:
                i += 1
            elif c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
        elif c == 0x28:
            depth = 1
        else:
            if c == 0x22:
                quoted = True
            out.append(c)
        i += 1
    return bytes(out)


def _merge_rfc2231(raw):
    """Join RFC 2231 continuations: name*0*=utf-8''%E2%82%AC; name*1=x -> one
    ("NAME*", "utf-8''%E2%82%ACx") as Dovecot sends them; name*0/name*1 -> ("NAME", ...)."""
    order = []
    groups = {}
    for name, value in raw:
        m = _RFC2231_NAME.match(name)
        if m is None or not m.group(1):
            key = (name, None)
            if key not in groups:
                order.append(key)
                groups[key] = [(0, False, value)]
            continue
        base = m.group(1)
        if m.group(2) is None:            # name*=charset'lang'value
            key = (base, "ext")
            if key not in groups:
                order.append(key)
                groups[key] = [(0, True, value)]
            continue
        key = (base, "cont")
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append((int(m.group(2)), m.group(3) is not None, value))
    out = []
    for key in order:
        base, kind = key
        if kind is None:
            out.append((base, groups[key][0][2]))
            continue
        segments = sorted(groups[key], key=lambda seg: seg[0])
        if any(ext for _, ext, _ in segments):
            pieces = []
            for _, ext, value in segments:
                pieces.append(value if ext else _percent_encode(value))
            first_index, first_extended, first_value = segments[0]
            if not first_extended or first_index != 0 or first_value.count(b"'") < 2:
                pieces.insert(0, b"''")     # no charset'language' prefix: add an empty one
            out.append((base + "*", b"".join(pieces)))
        else:
            out.append((base, b"".join(value for _, _, value in segments)))
    return tuple(out)


def _percent_encode(value):
    return b"".join(bytes((c,)) if c in _ATTR_CHAR else b"%%%02X" % c for c in value)


def _decode_rfc2231(value):
    charset, _, rest = value.partition(b"'")
    _, _, encoded = rest.partition(b"'")
    if not rest:
        encoded, charset = value, b"us-ascii"
    octets = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m.group(1), 16),)), encoded)
    return decode_bytes(octets, charset.decode("ascii", "replace"))


def _unfold(value):
    """Unfold a header value: line breaks removed; a TAB that starts a continuation
    line becomes a space (as Dovecot and most clients show it); blanks stripped."""
    if b"\n" in value or b"\r" in value:
        value = value.replace(b"\n\t", b"\n ").replace(b"\r", b"").replace(b"\n", b"")
    return value.strip(b" \t")


def _walk(node, prefix, in_message):
    if in_message and node.children is None:
        yield (prefix + "1" if not prefix else prefix + ".1"), node
        if node.message is not None:
            yield from _walk(node.message, prefix + ("." if prefix else "") + "1", True)
        return
    if node.children is not None:
        for i, child in enumerate(node.children, 1):
            number = "%s%d" % (prefix + "." if prefix else "", i)
            yield number, child
            if child.children is not None:
                yield from _walk(child, number, False)
            elif child.message is not None:
                yield from _walk(child.message, number, True)


# --- serialisation -------------------------------------------------------------------------


def _dump(p):
    return (p.header_start, p.header_end, p.body_start, p.body_end, p.lines,
            p.type, p.subtype, p.params, p.id, p.description, p.encoding, p.md5,
            p.disposition, p.disposition_params, p.language, p.location,
            None if p.children is None else tuple(_dump(c) for c in p.children),
            None if p.message is None else _dump(p.message),
            p.env if isinstance(p, MessageStructure) else None)


def _load(t, is_message):
    p = MessageStructure() if is_message else Part()
    (p.header_start, p.header_end, p.body_start, p.body_end, p.lines,
     p.type, p.subtype, p.params, p.id, p.description, p.encoding, p.md5,
     p.disposition, p.disposition_params, p.language, p.location,
     children, message, env) = t
    if children is not None:
        p.children = [_load(c, False) for c in children]
    if message is not None:
        p.message = _load(message, True)
    if is_message:
        if env is None or len(env) != 10:
            raise ValueError("envelope missing")
        p.env = env
    return p


# --- IMAP wire strings ---------------------------------------------------------------------


def _string(value):
    """An IMAP string: quoted when printable ASCII, else a literal (NULs dropped)."""
    rest = value.translate(None, _QUOTABLE)
    if not rest:
        return b'"' + value + b'"'
    if not rest.translate(None, b'"\\'):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if b"\x00" in rest:
        value = value.replace(b"\x00", b"")
    return b"{%d}\r\n" % len(value) + value


def _nstring(value):
    return b"NIL" if value is None else _string(value)


def _astr(text):
    return _string(text.encode("ascii", "replace"))


def _param_list(params):
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_astr(k) + b" " + _string(v) for k, v in params) + b")"


def _address_list(value):
    if value is None:
        return b"NIL"
    addresses = parse_addresses(value)
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(b"(" + b" ".join(_nstring(x) for x in a) + b")"
                           for a in addresses) + b")"


# --- addresses -----------------------------------------------------------------------------

_ADDR_TOKEN = re.compile(rb"""
    (?P<ws>[ \t\r\n]+)
  | "(?P<q>(?:[^"\\]|\\.)*)(?:"|$)
  | (?P<c>\()
  | \[(?P<d>(?:[^\]\\]|\\.)*)(?:\]|$)
  | (?P<s>[<>@,;:])
  | (?P<a>[^ \t\r\n"()\[\]<>@,;:\\]+|\\.?|[\])])
""", re.X | re.S)

MISSING_DOMAIN = b"MISSING_DOMAIN"
MISSING_MAILBOX = b"MISSING_MAILBOX"


def _addr_tokens(value):
    """Tokens (kind, bytes): a atom (dots included), q quoted, c comment, d domain
    literal (with its brackets), s special."""
    tokens = []
    if b"(" not in value:
        for m in _ADDR_TOKEN.finditer(value):
            kind = m.lastgroup
            if kind == "a":
                tokens.append(("a", m.group("a")))
            elif kind == "s":
                tokens.append(("s", m.group("s")))
            elif kind == "q":
                text = m.group("q")
                tokens.append(("q", _QUOTED_PAIR.sub(rb"\1", text) if b"\\" in text else text))
            elif kind == "d":
                tokens.append(("d", b"[" + m.group("d") + b"]"))
        return tokens
    pos, n = 0, len(value)
    while pos < n:
        m = _ADDR_TOKEN.match(value, pos)
        if m is None:         # cannot happen (the last alternative takes anything)
            pos += 1
            continue
        kind = m.lastgroup
        if kind == "c":
            depth, i = 1, m.end()
            start = i
            while i < n and depth:
                c = value[i]
                if c == 0x5C:
                    i += 1
                elif c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                i += 1
            text = value[start:i - 1 if depth == 0 else i]
            tokens.append(("c", _QUOTED_PAIR.sub(rb"\1", text).strip()))
            pos = i
            continue
        if kind == "q":
            tokens.append(("q", _QUOTED_PAIR.sub(rb"\1", m.group("q"))))
        elif kind == "d":
            tokens.append(("d", b"[" + m.group("d") + b"]"))
        elif kind == "s":
            tokens.append(("s", m.group("s")))
        elif kind == "a":
            tokens.append(("a", m.group("a")))
        pos = m.end()
    return tokens


def parse_addresses(value):
    """Parse an address-list header value (bytes, unfolded) into ENVELOPE address
    tuples (name, adl, mailbox, host) -- bytes or None; a group is
    (None, None, b"group name", None) ... (None, None, None, None).
    Like Dovecot: a missing domain is b"MISSING_DOMAIN", a missing local part
    b"MISSING_MAILBOX", a comment stands in for a missing display name."""
    if not value:
        return []
    if b'"' not in value and b"(" not in value and b":" not in value \
            and b"\\" not in value and b"[" not in value:
        simple = _simple_addresses(value)
        if simple is not None:
            return simple
    out = []
    tokens = _addr_tokens(value)
    current = []
    in_group = False
    angle = None
    for kind, text in tokens:
        if angle is not None:
            if kind == "s" and text == b">":
                current.append(("angle", angle))
                angle = None
            elif kind != "c":
                angle.append((kind, text))
            continue
        if kind == "s":
            if text == b"<":
                angle = []
                continue
            if text == b"," or (text == b";" and in_group):
                _flush_address(current, out)
                current = []
                if text == b";":
                    out.append((None, None, None, None))
                    in_group = False
                continue
            if text == b":" and not in_group and not any(
                    k == "angle" or (k == "s" and t == b"@") for k, t in current):
                name = _phrase(current)
                out.append((None, None, name or b"", None))
                in_group = True
                current = []
                continue
        current.append((kind, text))
    if angle is not None:
        current.append(("angle", angle))
    _flush_address(current, out)
    if in_group:
        out.append((None, None, None, None))
    return out


def _simple_addresses(value):
    """Fast path for the common `a@b, Name <c@d>` forms; None to use the full parser."""
    out = []
    for item in value.split(b","):
        item = item.strip(b" \t")
        if not item:
            continue
        lt = item.find(b"<")
        if lt >= 0:
            if not item.endswith(b">") or item.count(b"<") != 1 or item.count(b">") != 1:
                return None
            spec = item[lt + 1:-1].strip(b" \t")
            name = b" ".join(item[:lt].split()) or None
        else:
            if b">" in item:
                return None
            spec, name = item, None
        if spec.count(b"@") != 1 or b" " in spec or b"\t" in spec or b";" in spec:
            return None
        local, host = spec.split(b"@")
        if not local or not host:
            return None
        out.append((name, None, local, host))
    return out


def _phrase(tokens):
    words = [t for k, t in tokens if k in ("a", "q", "d") or (k == "s" and t not in b",;")]
    return b" ".join(words) if words else None


def _flush_address(tokens, out):
    if not tokens:
        return
    comments = [t for k, t in tokens if k == "c" and t]
    angle = next((t for k, t in tokens if k == "angle"), None)
    if angle is not None:
        index = next(i for i, (k, _) in enumerate(tokens) if k == "angle")
        name = _phrase([x for x in tokens[:index] if x[0] != "c"])
        adl = None
        spec = angle
        if spec and spec[0] == ("s", b"@"):
            colon = next((i for i, (k, t) in enumerate(spec) if k == "s" and t == b":"), None)
            if colon is not None:
                adl = b"".join(t for _, t in spec[:colon]) or None
                spec = spec[colon + 1:]
        if not spec:
            mailbox, host = MISSING_MAILBOX, MISSING_DOMAIN
        else:
            mailbox, host = _addr_spec(spec)
    else:
        words = [x for x in tokens if x[0] != "c"]
        if not words:
            return
        name = adl = None
        mailbox, host = _addr_spec(words)
    if name is None and comments:
        name = comments[-1]
    out.append((name, adl, mailbox, host))


def _addr_spec(tokens):
    at = None
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == ("s", b"@"):
            at = i
            break
    if at is None:
        local, domain = tokens, []
    else:
        local, domain = tokens[:at], tokens[at + 1:]
    mailbox = b"".join(t for k, t in local if k != "s" or t not in b",;:") or MISSING_MAILBOX
    host = b"".join(t for k, t in domain if k != "s") or MISSING_DOMAIN
    return mailbox, host


# --- header and body decoding --------------------------------------------------------------

_CHARSET_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "x-euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8", "iso-8859-6-i": "iso-8859-6",
    "shift_jis": "cp932", "x-sjis": "cp932", "sjis": "cp932", "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext", "big5": "big5hkscs",
    "unicode-1-1-utf-7": "utf-7", "x-unknown": "latin-1", "unknown-8bit": "latin-1",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "l1": "cp1252",
    "default": "latin-1", "x-user-defined": "latin-1", "utf8": "utf-8",
}
_codec_cache = {}


def _codec(charset):
    key = charset.strip().strip('"').lower()
    try:
        return _codec_cache[key]
    except KeyError:
        pass
    name = key.split("*", 1)[0]
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
        b"".decode(info.name)       # only real text encodings
        result = info.name
    except Exception:
        result = None
    if len(_codec_cache) < 1000:
        _codec_cache[key] = result
    return result


def decode_bytes(octets, charset=None):
    """Octets in ``charset`` to str, never failing: an unknown charset is tried as
    UTF-8 then Windows-1252; undecodable octets become U+FFFD.  Latin-1 is read
    as Windows-1252 (what mislabelled mail almost always is), and 8-bit octets in
    a US-ASCII part as UTF-8 when they are valid UTF-8, else Windows-1252."""
    codec = _codec(charset) if charset else None
    if codec is None or codec == "ascii":
        try:
            return octets.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    try:
        return octets.decode(codec)
    except UnicodeDecodeError:
        if codec == "cp1252":
            return octets.decode("latin-1")
        return octets.decode(codec, "replace")
    except Exception:
        return octets.decode("latin-1")


_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?(.*?)\?=", re.S)
_BLANK = re.compile(rb"[ \t\r\n]*")


def _decode_q(text):
    text = text.replace(b"_", b" ")
    return binascii.a2b_qp(text)


def _decode_b64(text):
    text = re.sub(rb"[^A-Za-z0-9+/]", b"", text)
    extra = len(text) % 4
    if extra == 1:
        text = text[:-1]
    elif extra:
        text += b"=" * (4 - extra)
    try:
        return binascii.a2b_base64(text)
    except (binascii.Error, ValueError):
        return b""


def decode_header_value(value):
    """A raw header value (bytes, unfolded or not) to str: RFC 2047 encoded-words
    decoded (adjacent ones joined, whitespace between them dropped), raw 8-bit
    read as UTF-8 else Windows-1252/Latin-1, folding removed."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if b"\n" in value or b"\r" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    if b"=?" not in value:
        return decode_bytes(value)
    out = []
    pos = 0
    pending = None      # (charset, bytes) of encoded-words waiting to be decoded together
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos:m.start()]
        if pending is not None and _BLANK.fullmatch(between):
            between = b""
        elif between:
            if pending is not None:
                out.append(decode_bytes(pending[1], pending[0]))
                pending = None
            out.append(decode_bytes(between))
        charset = m.group(1).decode("ascii", "replace")
        raw = m.group(3)
        octets = _decode_b64(raw) if m.group(2) in b"Bb" else _decode_q(raw)
        if pending is not None and pending[0].lower() == charset.lower():
            pending = (charset, pending[1] + octets)
        else:
            if pending is not None:
                out.append(decode_bytes(pending[1], pending[0]))
            pending = (charset, octets)
        pos = m.end()
    if pending is not None:
        out.append(decode_bytes(pending[1], pending[0]))
    out.append(decode_bytes(value[pos:]))
    return "".join(out)


_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_BREAK = re.compile(r"<(?:br|p|div|tr|li|h\d)\b[^>]*>", re.I)


def _html_text(text):
    text = _HTML_DROP.sub(" ", text)
    text = _HTML_BREAK.sub("\n", text)
    return html.unescape(_HTML_TAG.sub("", text))


def _decoded_body(part, data):
    body = data[part.body_start:part.body_end]
    encoding = part.encoding
    if encoding == "BASE64":
        body = _decode_b64(body)
    elif encoding == "QUOTED-PRINTABLE":
        body = binascii.a2b_qp(body)
    charset = None
    for key, value in part.params:
        if key == "CHARSET":
            charset = value.decode("ascii", "replace")
            break
    return decode_bytes(body, charset)


def _collect_text(node, data, out, top=False):
    if node.children is not None:
        for child in node.children:
            _collect_text(child, data, out)
        return
    if node.message is not None:
        out.append(node.message.header_text(data))
        _collect_text(node.message, data, out)
        return
    if node.type == _TEXT:
        text = _decoded_body(node, data)
        if node.subtype == "HTML":
            text = _html_text(text)
        out.append(text)


# --- HEADER.FIELDS -------------------------------------------------------------------------

_FIELD_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s()"]+)')


@functools.lru_cache(maxsize=256)
def _field_names(text):
    return frozenset((q if q else a).replace('\\"', '"').replace("\\\\", "\\").lower()
                     .encode("utf-8", "replace")
                     for q, a in _FIELD_NAME.findall(text))


def _select_fields(data, start, end, names, keep):
    out = []
    for m in _FIELD.finditer(data, start, end):
        if (m.group(1).lower() in names) == keep:
            stop = m.end()
            if data.startswith(b"\n", stop) and stop < end:
                out.append(data[m.start():stop + 1])
            else:
                out.append(data[m.start():stop] + b"\r\n")
    eol = b"\n" if (end > start and b"\r\n" not in data[start:end]) else b"\r\n"
    out.append(eol)
    return b"".join(out)


def _split_spec(spec):
    """A section spec split into its part/keyword text and its field names (None
    without a parenthesised list): "HEADER.FIELDS (FROM TO)" -> ("HEADER.FIELDS", [...])."""
    spec = spec.strip()
    paren = spec.find("(")
    if paren < 0:
        return spec, None
    return spec[:paren].strip(), _field_names(spec[paren:])


def header_section(data, spec):
    """``BODY[HEADER]``, ``BODY[HEADER.FIELDS (...)]`` or ``BODY[HEADER.FIELDS.NOT (...)]``
    of the message ``data`` itself (no part number), without parsing its MIME
    structure: the same octets as ``MessageStructure.parse(data).section(data, spec)``
    (the header ends where the parser ends it). Raises ValueError for other specs."""
    spec, fields = _split_spec(spec)
    keyword = spec.upper()
    if keyword not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        raise ValueError("not a header section: %r" % (spec,))
    if (keyword == "HEADER") != (fields is None):
        return b""
    data = bytes(data)
    _hend, bs, _term = _header_block(data, 0, len(data), ())
    if keyword == "HEADER":
        return data[:bs]
    return _select_fields(data, 0, bs, fields, keyword == "HEADER.FIELDS")
