"""IMAP SORT (RFC 5256, with DISPLAYFROM/DISPLAYTO of RFC 5957).

``parse_sort(criteria)`` takes the parenthesised sort criteria (a list of atoms,
e.g. ``[Atom("REVERSE"), Atom("DATE")]``); ``sort_messages(program, msgs)``
orders messages (the same objects jdmail.imap.search.match sees). The sort is
stable and ties are broken by ascending sequence number (REVERSE never reverses
the tie-break), as RFC 5256 requires.

Keys (RFC 5256 section 3):
- ARRIVAL: internal date; SIZE: RFC822.SIZE;
- DATE: the Date: header as an instant (its zone applied), the internal date when
  it is missing or unparsable;
- FROM / TO / CC: the mailbox (local part) of the first address, "" when none;
- SUBJECT: the base subject (section 2.1: "Re:", "Fwd:", "[list]" and "(fwd)" removed);
- DISPLAYFROM / DISPLAYTO: the decoded display name of the first address, or its
  address when it has none.
Strings compare with i;ascii-casemap (ASCII letters folded, octets otherwise),
DISPLAY* with Unicode casefolding. Everything but ARRIVAL and SIZE reads only the
cached structure (``needs == {"structure"}``), never the message file.
"""

import email.utils
import re

from jdmail.imap.parser import Atom
from jdmail.imap.search import SearchError, parse_search
from jdmail.mime import MessageStructure, decode_header_value

__all__ = ["Atom", "SortError", "SortProgram", "parse_sort", "parse_sort_command",
           "sort_messages", "base_subject", "sent_time"]


class SortError(SearchError):
    """Sort criteria that are not valid (answer BAD with ``text``)."""


_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
_NO_STRUCTURE = frozenset(("ARRIVAL", "SIZE"))


class SortProgram:
    """Parsed sort criteria: ``keys`` is a tuple of (KEY, reverse); ``needs`` as in
    SearchProgram (frozenset, empty or {"structure"})."""

    __slots__ = ("keys", "needs")

    def __init__(self, keys):
        self.keys = tuple(keys)
        self.needs = frozenset(() if all(k in _NO_STRUCTURE for k, _ in self.keys)
                               else ("structure",))

    def __repr__(self):
        return "<SortProgram %s>" % " ".join(("REVERSE " if r else "") + k for k, r in self.keys)


def parse_sort(criteria):
    """The sort criteria list -> SortProgram. Raises SortError."""
    if isinstance(criteria, (list, tuple)) and len(criteria) == 1 \
            and isinstance(criteria[0], (list, tuple)):
        criteria = criteria[0]
    if not isinstance(criteria, (list, tuple)) or not criteria:
        raise SortError("Missing sort criteria")
    keys = []
    reverse = False
    for token in criteria:
        if not isinstance(token, str):
            raise SortError("Sort criteria must be atoms")
        name = token.upper()
        if name == "REVERSE":
            if reverse:
                raise SortError("REVERSE twice")
            reverse = True
            continue
        if name not in _KEYS:
            raise SortError("Unknown sort key %s" % (token[:40],))
        keys.append((name, reverse))
        reverse = False
    if reverse:
        raise SortError("REVERSE without a sort key")
    return SortProgram(keys)


def parse_sort_command(args, utf8=False):
    """Every token after SORT: ``(criteria) charset search-key...`` ->
    (SortProgram, jdmail.imap.search.SearchProgram). Raises SearchError/SortError."""
    args = list(args)
    if len(args) < 3 or not isinstance(args[0], list) or isinstance(args[1], list):
        raise SortError("Expected SORT (criteria) charset search-criteria")
    return parse_sort(args[0]), parse_search([Atom("CHARSET"), args[1]] + args[2:], utf8)


# --- keys -------------------------------------------------------------------------------------

_ASCII_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def _casemap(text):
    """i;ascii-casemap: ASCII letters upper-cased, everything else as is."""
    return text.translate(_ASCII_UPPER)


_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_LEADER = re.compile(r"(?:\[[^\[\]]*\][ \t]*)*(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:|[ \t]+",
                     re.I)
_BLOB = re.compile(r"\[[^\[\]]*\][ \t]*")


def base_subject(subject):
    """The RFC 5256 section 2.1 base subject of a decoded subject (str)."""
    text = _WSP_RUN.sub(" ", subject)                           # step 1
    while True:
        while True:                                             # step 2
            m = _TRAILER.search(text)
            if m is None:
                break
            text = text[:m.start()]
        while True:                                             # steps 3-5
            before = text
            m = _LEADER.match(text)
            while m is not None and m.end() > 0:                # step 3
                text = text[m.end():]
                m = _LEADER.match(text)
            m = _BLOB.match(text)                               # step 4
            if m is not None and text[m.end():].strip():
                text = text[m.end():]
            if text == before:
                break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # step 6
            text = text[5:-1]
            continue
        return text


def sent_time(structure, internaldate):
    """The Date: header as seconds since the epoch (UTC), else ``internaldate``."""
    raw = structure.field("date") if structure is not None else None
    if raw:
        try:
            parsed = email.utils.parsedate_tz(raw.decode("ascii", "replace"))
            if parsed is not None:
                if parsed[9] is None:
                    parsed = parsed[:9] + (0,)
                return float(email.utils.mktime_tz(parsed))
        except (ValueError, TypeError, OverflowError, IndexError):
            pass
    return internaldate


def _first_address(structure, field):
    for name, _adl, mailbox, host in structure.addresses(field):
        if host is None:            # group start or end
            continue
        return name, mailbox, host
    return None


def _address_key(structure, field):
    first = _first_address(structure, field)
    if first is None or first[1] is None:
        return ""
    return _casemap(first[1].decode("utf-8", "replace"))


def _display_key(structure, field):
    first = _first_address(structure, field)
    if first is None:
        return ""
    name, mailbox, host = first
    if name:
        text = decode_header_value(name).strip()
        if text:
            return text.casefold()
    return (mailbox + b"@" + host).decode("utf-8", "replace").casefold()


def _structure(msg):
    structure = msg.structure()
    if structure is None:
        structure = MessageStructure.parse(msg.data() or b"")
    return structure


def _key_function(name):
    if name == "ARRIVAL":
        return lambda msg, s: msg.internaldate
    if name == "SIZE":
        return lambda msg, s: msg.size
    if name == "DATE":
        return lambda msg, s: sent_time(s, msg.internaldate)
    if name == "SUBJECT":
        return lambda msg, s: _casemap(base_subject(s.decoded("subject")))
    if name in ("FROM", "TO", "CC"):
        field = name.lower()
        return lambda msg, s: _address_key(s, field)
    field = "from" if name == "DISPLAYFROM" else "to"
    return lambda msg, s: _display_key(s, field)


def sort_messages(program, msgs):
    """``msgs`` ordered by ``program`` (a new list); ties by ascending ``seq``."""
    ordered = sorted(msgs, key=lambda m: m.seq)
    if not ordered:
        return ordered
    use_structure = bool(program.needs)
    keyed = []
    functions = [(_key_function(name), reverse) for name, reverse in program.keys]
    for msg in ordered:
        structure = _structure(msg) if use_structure else None
        keyed.append(([fn(msg, structure) for fn, _ in functions], msg))
    # Stable sorts from the last key to the first; reverse=True keeps ties in order.
    for i in range(len(functions) - 1, -1, -1):
        keyed.sort(key=lambda item: item[0][i], reverse=functions[i][1])
    return [msg for _, msg in keyed]
