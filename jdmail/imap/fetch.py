"""FETCH: parsing the attribute list and writing one message's FETCH response.

Replaces Twisted's FETCH machinery (which builds every response from
twisted.mail IMessage objects, drops the connection on non-ASCII headers and
misreports BODYSTRUCTURE): message data comes from the folder's index
(FLAGS, UID, INTERNALDATE, RFC822.SIZE, MODSEQ need no file at all), MIME
structure from jdmail.mime (cached by the store), and body sections are cut
from the message octets by jdmail.mime.
"""

import functools
import operator
import re
from dataclasses import dataclass

from jdmail.imap.parser import Atom, ParseError, parse_tokens
from jdmail.imap.responses import flags_list, internaldate, quoted
from jdmail.mime import header_section

__all__ = ["FastFetch", "FetchRequest", "Section", "fast_renderer", "parse_fetch", "render", "record_flags"]

_ATTR = re.compile(r"(BODY\.PEEK|BODY|BINARY\.PEEK|BINARY|BINARY\.SIZE)\[([^\]]*)\](?:<([0-9]+)(?:\.([0-9]+))?>)?$",
                   re.IGNORECASE)
_PART = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8}){0,49}")
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
          "MODSEQ", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}


@dataclass
class Section:
    """One BODY[...] (or RFC822, RFC822.HEADER, RFC822.TEXT) item."""
    label: bytes            # the response's item name, e.g. b"BODY[HEADER.FIELDS (FROM)]<0>"
    spec: str               # what jdmail.mime's section() takes: "", "HEADER", "1.2.MIME", ...
    peek: bool              # does not set \Seen
    origin: int = None      # partial: first octet
    length: int = None      # partial: how many octets

    @property
    def header_only(self):
        """HEADER, HEADER.FIELDS or HEADER.FIELDS.NOT of the message itself: cut from
        its octets without its MIME structure."""
        return self.spec == "HEADER" or self.spec.startswith("HEADER.FIELDS")


class FetchRequest:
    """What a FETCH asks for. ``items`` keeps the client's order; each is a name
    ("FLAGS", "UID", ...) or a Section."""

    def __init__(self):
        self.items = []
        self.sections = []
        self.needs_structure = False
        self.needs_data = False
        self.sets_seen = False
        self.changedsince = None
        self.vanished = False

    def wants(self, name):
        return name in self.items

    def add(self, name):
        if name not in self.items:
            self.items.append(name)

    @property
    def index_only(self):
        """True when no message file or structure is needed."""
        return not (self.needs_structure or self.needs_data)


@functools.lru_cache(maxsize=256)
def _section_spec(text):
    """Validate and normalise a section spec (inside the brackets). Returns (spec, label_spec).
    Remembered: clients send the same few header field lists over and over."""
    if text == "":
        return "", ""
    upper = text.upper()
    m = _PART.match(text)
    parts = ""
    rest = upper
    if m:
        parts = m.group(0)
        rest = upper[m.end():]
        if not rest:
            return parts, parts
        if not rest.startswith("."):
            raise ParseError("Invalid section")
        rest = rest[1:]
        prefix = parts + "."
    else:
        prefix = ""
    if rest in ("HEADER", "TEXT"):
        return prefix + rest, prefix + rest
    if rest == "MIME":
        if not parts:
            raise ParseError("MIME needs a part number")
        return prefix + rest, prefix + rest
    for kw in ("HEADER.FIELDS.NOT", "HEADER.FIELDS"):
        if rest.startswith(kw + " ") or rest.startswith(kw + "("):
            original = text[len(text) - len(rest):][len(kw):].strip()
            try:
                tokens = parse_tokens(original.encode("ascii"))
            except (ParseError, UnicodeEncodeError):
                raise ParseError("Invalid header field list") from None
            if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
                raise ParseError("Invalid header field list")
            names = []
            for t in tokens[0]:
                if isinstance(t, list):
                    raise ParseError("Invalid header field name")
                name = t.decode("ascii", "replace") if isinstance(t, bytes) else str(t)
                if not name or any(c <= " " or c == ":" or c > "~" for c in name):
                    raise ParseError("Invalid header field name")
                names.append(name.upper())
            flist = " ".join(n if re.fullmatch(r"[A-Z0-9!#$&'+\-.^_`|~]+", n) else quoted(n).decode()
                             for n in names)
            spec = "%s%s (%s)" % (prefix, kw, flist)
            return spec, spec
    raise ParseError("Invalid section")


def _item(token, req):
    if not isinstance(token, Atom):
        raise ParseError("Invalid FETCH attribute")
    upper = token.upper()
    if upper in SIMPLE:
        if upper in ("ENVELOPE", "BODY", "BODYSTRUCTURE"):
            req.needs_structure = True
        elif upper == "RFC822":
            req.needs_data = True
            req.sets_seen = True
            sec = Section(b"RFC822", "", False)
            req.sections.append(sec)
            req.items.append(sec)
            return
        elif upper in ("RFC822.HEADER", "RFC822.TEXT"):
            req.needs_data = True
            sec = Section(upper.encode(), upper[7:], upper == "RFC822.HEADER")
            req.needs_structure |= not sec.header_only
            req.sets_seen |= not sec.peek
            req.sections.append(sec)
            req.items.append(sec)
            return
        req.add(upper)
        return
    m = _ATTR.match(token)
    if not m:
        raise ParseError("Unknown FETCH attribute %s" % (token if len(token) < 60 else token[:60] + "..."))
    kind = m.group(1).upper()
    if kind.startswith("BINARY"):
        raise ParseError("BINARY is not supported")
    spec, label_spec = _section_spec(m.group(2))
    peek = kind == "BODY.PEEK"
    origin = length = None
    label = b"BODY[" + label_spec.encode("ascii") + b"]"
    if m.group(3) is not None:
        if m.group(4) is None:
            raise ParseError("A partial range needs <origin.length>")
        origin, length = int(m.group(3)), int(m.group(4))
        if length == 0 or origin > 0xFFFFFFFF or length > 0xFFFFFFFF:
            raise ParseError("Invalid partial range")
        label += b"<%d>" % origin
    sec = Section(label, spec, peek, origin, length)
    req.needs_data = True
    if spec and not sec.header_only:
        req.needs_structure = True
    req.sets_seen |= not peek
    req.sections.append(sec)
    req.items.append(sec)


def parse_fetch(attrs, modifiers=None):
    """The FETCH attribute token (an Atom or a list of Atoms) and the optional
    modifier list (CHANGEDSINCE n [VANISHED]) -> FetchRequest. Raises ParseError."""
    req = FetchRequest()
    if isinstance(attrs, list):
        if not attrs:
            raise ParseError("Empty FETCH attribute list")
        for t in attrs:
            _item(t, req)
    elif isinstance(attrs, Atom) and attrs.upper() in MACROS:
        for name in MACROS[attrs.upper()]:
            _item(Atom(name), req)
    else:
        _item(attrs, req)
    if modifiers is not None:
        if not isinstance(modifiers, list) or not modifiers:
            raise ParseError("Invalid FETCH modifiers")
        mods = list(modifiers)
        while mods:
            m = mods.pop(0)
            name = m.upper() if isinstance(m, Atom) else ""
            if name == "CHANGEDSINCE":
                if not mods or not isinstance(mods[0], Atom) or not mods[0].isdigit():
                    raise ParseError("CHANGEDSINCE needs a mod-sequence")
                req.changedsince = int(mods.pop(0))
                if req.changedsince >= 2 ** 63:
                    raise ParseError("Invalid mod-sequence")
            elif name == "VANISHED":
                req.vanished = True
            else:
                raise ParseError("Unknown FETCH modifier")
        if req.vanished and req.changedsince is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
        if req.changedsince is not None:
            req.add("MODSEQ")
    return req


def literal(data):
    return b"{%d}\r\n" % len(data) + data


def section_data(sec, structure, data):
    """The octets of one section (before the partial range is applied)."""
    if sec.spec == "":
        return data
    if sec.header_only:
        return header_section(data, sec.spec)
    return structure.section(data, sec.spec)


_RECENT = frozenset({"\\Recent"})


def record_flags(record, recent=()):
    """The FLAGS of a record as the session shows them: \\Recent added when the UID is
    in ``recent`` (the index never stores \\Recent; it is per session)."""
    if recent and record.uid in recent:
        return flags_list(record.flags | _RECENT)
    return flags_list(record.flags)


# FETCH items answered from the record's numbers and flags (format, column)
_FAST = {"UID": (b"UID %d", operator.itemgetter(0)), "FLAGS": (b"FLAGS %s", None),
         "MODSEQ": (b"MODSEQ (%d)", operator.itemgetter(2)), "RFC822.SIZE": (b"RFC822.SIZE %d", operator.itemgetter(3))}
_FLAGS_OF = operator.itemgetter(1)


class FastFetch:
    """A FETCH of nothing but UID, FLAGS, MODSEQ and RFC822.SIZE, rendered column by
    column (one format operation per message; FETCH 1:* (FLAGS) of a big folder)."""

    def __init__(self, items):
        self.items = items
        self.fmt = b"* %d FETCH (" + b" ".join(_FAST[item][0] for item in items) + b")\r\n"

    def render(self, records, start, stop, recent=()):
        """The responses of records[start:stop] (sequence numbers start+1...), as ``render``
        gives them, joined."""
        chunk = records[start:stop]
        columns = []
        for item in self.items:
            column = _FAST[item][1]
            if column is not None:
                columns.append(map(column, chunk))
            elif recent:
                columns.append([record_flags(record, recent) for record in chunk])
            else:
                shown = {flags: flags_list(flags) for flags in set(map(_FLAGS_OF, chunk))}
                columns.append(map(shown.__getitem__, map(_FLAGS_OF, chunk)))
        fmt = self.fmt
        return b"".join([fmt % values for values in zip(range(start + 1, stop + 1), *columns)])


def fast_renderer(req, uid_fetch):
    """A FastFetch for ``req`` when it asks for nothing but UID, FLAGS, MODSEQ and
    RFC822.SIZE; None otherwise."""
    items = list(req.items)
    if not items or not all(type(item) is str and item in _FAST for item in items):
        return None
    if uid_fetch and "UID" not in items:
        items.insert(0, "UID")
    return FastFetch(items)


def render(req, seq, record, uid_fetch, extra_items=(), structure=None, data=None, recent=(), values=None):
    """One ``* n FETCH (...)`` response (bytes, CRLF-terminated).

    ``extra_items`` are names added by the server (UID for UID FETCH, FLAGS when
    \\Seen was just set, MODSEQ under CONDSTORE), placed where RFCs expect them.
    ``recent`` is the set of UIDs that are \\Recent in this session. ``values``
    ({spec: octets}) gives sections already cut (then ``data`` is not needed).
    """
    out = []
    items = req.items
    if uid_fetch and "UID" not in items:
        out.append(b"UID %d" % record.uid)
    for item in items:
        if isinstance(item, Section):
            value = values[item.spec] if values is not None else section_data(item, structure, data)
            if item.origin is not None:
                value = value[item.origin:item.origin + item.length]
            out.append(item.label + b" " + literal(value))
        elif item == "FLAGS":
            out.append(b"FLAGS " + record_flags(record, recent))
        elif item == "UID":
            out.append(b"UID %d" % record.uid)
        elif item == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % record.size)
        elif item == "INTERNALDATE":
            out.append(b"INTERNALDATE " + internaldate(record.internaldate))
        elif item == "MODSEQ":
            out.append(b"MODSEQ (%d)" % record.modseq)
        elif item == "ENVELOPE":
            out.append(b"ENVELOPE " + structure.envelope())
        elif item == "BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + structure.bodystructure(True))
        elif item == "BODY":
            out.append(b"BODY " + structure.bodystructure(False))
    for name in extra_items:
        if name in items:
            continue
        if name == "FLAGS":
            out.append(b"FLAGS " + record_flags(record, recent))
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % record.modseq)
    return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"
