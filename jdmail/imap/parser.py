"""The IMAP command parser: one complete command (its lines and literals) -> tokens.

The token format is shared by every IMAP module (server, fetch, search, sort):

- ``Atom`` (a ``str`` subclass) for atoms, kept as the client spelled them
  (compare with ``.upper()``). ``NIL`` is ``Atom("NIL")``. Sequence sets
  (``1:*,5``), flags (``\\Seen``), list wildcards (``%``, ``*``) are atoms. A
  FETCH attribute with a section and a partial range is ONE atom, brackets and
  all: ``BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>``.
- ``bytes`` for quoted strings (escapes removed) and literals: synchronizing
  ``{n}``, non-synchronizing ``{n+}`` (LITERAL+) and ``~{n}`` (literal8).
  ``Literal`` (a ``bytes`` subclass) marks the ones that came as literals.
- ``list`` for parenthesised lists (nested lists nest).

``parse_command(data)`` takes a whole command as received: the lines with each
literal's ``{n}`` CRLF and its n octets in place, the final CRLF optional.
``literal_suffix(line)`` is what the framing layer uses to see whether a line
announces a literal.
"""

import re

__all__ = ["Atom", "Literal", "ParseError", "parse_command", "parse_tokens", "literal_suffix",
           "astring", "is_atom_text"]


class Atom(str):
    """An IMAP atom (case preserved; compare ``.upper()``)."""

    __slots__ = ()

    def __repr__(self):
        return "Atom(%s)" % str.__repr__(self)


class Literal(bytes):
    """A string that arrived as a literal (``binary`` for ``~{n}``)."""

    binary = False

    def __repr__(self):
        return "Literal(%s)" % bytes.__repr__(self)


class Literal8(Literal):
    binary = True


class ParseError(ValueError):
    """The command is malformed. ``tag`` is set when the tag could be read, so the
    answer can be ``tag BAD text``; otherwise it is ``* BAD text``."""

    def __init__(self, text, tag=None):
        ValueError.__init__(self, text)
        self.text = text
        self.tag = tag


# Octets that end an atom (RFC 3501 atom-specials, minus the ones we allow inside:
# "%" and "*" (list-wildcards and sequence sets), "\" (flags), "]" (resp-specials)).
_ATOM_END = frozenset(b' (){"') | frozenset(range(0x00, 0x20)) | {0x7F}
_TAG_BAD = frozenset(b'+(){%*"\\ ') | frozenset(range(0x00, 0x20)) | {0x7F}
_LITERAL_RE = re.compile(rb"(~?)\{(-?[0-9]+)(\+?)\}$")
_LITERAL_AT = re.compile(rb"(~?)\{(-?[0-9]+)(\+?)\}\r?\n")
MAX_DEPTH = 32


def literal_suffix(line):
    """If ``line`` (without its CRLF) ends with a literal announcement, return
    ``(size, synchronizing, binary)``; else None. ``size`` may be negative or huge;
    the caller decides whether it is acceptable."""
    if not line.endswith(b"}"):
        return None
    m = _LITERAL_RE.search(line[-40:])
    if m is None:
        return None
    return int(m.group(2)), not m.group(3), bool(m.group(1))


def is_atom_text(text):
    """True when ``text`` (str) can be sent as an atom."""
    return bool(text) and text.upper() != "NIL" and all(
        0x20 < ord(c) < 0x7F and c not in '(){%*"\\]' for c in text)


def astring(token, what="argument"):
    """An astring token (Atom or bytes) as str (UTF-8; bytes that are not UTF-8 raise
    ParseError). Lists are refused."""
    if isinstance(token, str):
        return str(token)
    if isinstance(token, bytes):
        try:
            return token.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("Invalid UTF-8 in %s" % what)
    raise ParseError("Expected a string for %s" % what)


class _Parser:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.end = len(data)

    def error(self, text):
        raise ParseError(text)

    def tokens(self, depth=0, closing=False):
        """Read SP-separated tokens until the end (or ``)`` when ``closing``)."""
        data, out = self.data, []
        first = True
        while True:
            if self.pos >= self.end:
                if closing:
                    self.error("Missing ')'")
                return out
            c = data[self.pos]
            if c == 0x29:                       # ')'
                if not closing:
                    self.error("Unexpected ')'")
                self.pos += 1
                return out
            if not first:
                if c != 0x20:
                    self.error("Expected a space between arguments")
                while self.pos < self.end and data[self.pos] == 0x20:
                    self.pos += 1
                if self.pos >= self.end:
                    if closing:
                        self.error("Missing ')'")
                    return out
                c = data[self.pos]
                if c == 0x29:
                    if not closing:
                        self.error("Unexpected ')'")
                    self.pos += 1
                    return out
            elif c == 0x20:
                # leading space inside "( a)" or after the command name: tolerate
                while self.pos < self.end and data[self.pos] == 0x20:
                    self.pos += 1
                continue
            first = False
            out.append(self.token(depth))

    def token(self, depth):
        data = self.data
        c = data[self.pos]
        if c == 0x28:                           # '('
            if depth >= MAX_DEPTH:
                self.error("Lists nested too deeply")
            self.pos += 1
            return self.tokens(depth + 1, closing=True)
        if c == 0x22:                           # '"'
            return self.quoted()
        if c == 0x7B or (c == 0x7E and data[self.pos + 1:self.pos + 2] == b"{"):   # '{' / '~{'
            return self.literal()
        return self.atom()

    def quoted(self):
        data = self.data
        start = self.pos + 1
        end = data.find(b'"', start)
        # fast path: no backslash
        if end >= 0 and data.find(b"\\", start, end) < 0:
            value = data[start:end]
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                self.error("Invalid character in quoted string")
            self.pos = end + 1
            return bytes(value)
        out = bytearray()
        i = start
        while True:
            if i >= self.end:
                self.error("Unterminated quoted string")
            c = data[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x5C:                       # backslash
                if i + 1 >= self.end or data[i + 1] not in (0x22, 0x5C):
                    self.error("Invalid escape in quoted string")
                out.append(data[i + 1])
                i += 2
                continue
            if c in (0x0D, 0x0A, 0x00):
                self.error("Invalid character in quoted string")
            out.append(c)
            i += 1

    def literal(self):
        m = _LITERAL_AT.match(self.data, self.pos)
        if m is None:
            self.error("Invalid literal")
        size = int(m.group(2))
        if size < 0:
            self.error("Invalid literal size")
        start = m.end()
        if start + size > self.end:
            self.error("Literal shorter than announced")
        self.pos = start + size
        cls = Literal8 if m.group(1) else Literal
        return cls(self.data[start:start + size])

    def atom(self):
        data, i, end = self.data, self.pos, self.end
        start = i
        while i < end:
            c = data[i]
            if c == 0x5B:                       # '[': a section, up to its matching ']'
                i = self._section_end(i)
                continue
            if c in _ATOM_END:
                break
            if c > 0x7E:
                self.error("Invalid character in atom")
            i += 1
        if i == start:
            self.error("Expected an argument")
        self.pos = i
        return Atom(data[start:i].decode("ascii"))

    def _section_end(self, i):
        """Index just after the ']' closing the '[' at ``i`` (quoted strings and
        parentheses inside are skipped over)."""
        data, end = self.data, self.end
        i += 1
        while i < end:
            c = data[i]
            if c == 0x5D:
                return i + 1
            if c == 0x22:
                j = i + 1
                while j < end and data[j] != 0x22:
                    if data[j] == 0x5C:
                        j += 1
                    j += 1
                if j >= end:
                    self.error("Unterminated quoted string")
                i = j + 1
                continue
            if c in (0x0D, 0x0A, 0x00) or c > 0x7E or c == 0x7B:
                self.error("Invalid character in section")
            i += 1
        self.error("Missing ']'")


def parse_tokens(data):
    """Parse ``data`` (bytes) as SP-separated tokens; returns a list."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _Parser(data).tokens()


def parse_command(data):
    """Parse one complete command: returns ``(tag, COMMAND, args)``.

    ``data`` holds the command's lines with literals in place; a final CRLF is
    optional. Raises ParseError (with ``.tag`` when the tag was readable).
    """
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    sp = data.find(b" ")
    tag_bytes = data if sp < 0 else data[:sp]
    if not tag_bytes or any(c in _TAG_BAD or c > 0x7E for c in tag_bytes):
        raise ParseError("Invalid tag")
    tag = tag_bytes.decode("ascii")
    if sp < 0:
        raise ParseError("Missing command", tag)
    p = _Parser(data)
    p.pos = sp + 1
    i = p.pos
    while i < p.end and data[i] not in _ATOM_END and data[i] != 0x5B and data[i] < 0x7F:
        i += 1
    if i == p.pos:
        raise ParseError("Missing command", tag)
    command = data[p.pos:i].decode("ascii").upper()
    if i < p.end and data[i] != 0x20:
        raise ParseError("Invalid command name", tag)
    p.pos = i
    try:
        args = p.tokens()
    except ParseError as e:
        e.tag = tag
        raise
    return tag, command, args
