"""IMAP folder names <-> Maildir++ directory names, and what makes a name unsafe.

IMAP names reach the store as Unicode (the protocol layer decodes modified UTF-7),
with "/" separating levels. "INBOX" (any case, as the first level) is the Maildir
itself; every other folder ``A/B`` is the directory ``Maildir/.A.B/`` (Maildir++,
as Dovecot and Courier lay it out).

Escaping on disk (reversible, ``%XX`` of the UTF-8 bytes, upper-case hex): inside a
level name, "." (the Maildir++ separator) becomes ``%2E`` and "%" becomes ``%25``;
everything else is stored as UTF-8 as it is. So ``a.b/c%`` is ``.a%2Eb.c%25``.

Refused with FolderError (and never turned into a path): empty names, empty levels
(a leading, trailing or doubled "/"), "." and ".." levels, control characters (C0,
DEL, C1), unpaired surrogates, more than ``MAX_DEPTH`` levels, and names whose
directory name would exceed 255 bytes. A level has no "/" and the escaped name has no
"." inside a level, so a name can only ever map to one directory directly inside the
user's Maildir; symlinks there are refused by the callers (see folders.py).
"""

import re
import unicodedata

from jdmail.interfaces import FolderError

__all__ = ["normalize", "to_dirname", "from_dirname", "levels", "parent_names",
           "SPECIAL_USE", "DEFAULT_SPECIAL", "MAX_DEPTH"]

MAX_DEPTH = 32
MAX_DIRNAME_BYTES = 255
# RFC 6154 attributes a folder may carry.
SPECIAL_USE = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})
# Created with each new account (name -> attribute), subscribed together with INBOX.
DEFAULT_SPECIAL = (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive"))

_ESCAPED_CHARS = {".": "%2E", "%": "%25"}


def _bad(name, why):
    return FolderError(f"Invalid mailbox name: {why}")


def levels(name):
    """The levels of a normalized name: "A/B" -> ["A", "B"]."""
    return name.split("/")


def normalize(name):
    """Return the canonical form of an IMAP folder name, or raise FolderError.

    The first level is "INBOX" whenever it is INBOX in any case.
    """
    if not isinstance(name, str):
        raise _bad(name, "not text")
    if not name:
        raise _bad(name, "empty")
    if len(name) > 1000:
        raise _bad(name, "too long")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise _bad(name, "too many levels")
    for part in parts:
        if not part:
            raise _bad(name, "empty hierarchy level")
        if part in (".", ".."):
            raise _bad(name, "'.' and '..' are not allowed")
        for ch in part:
            cat = unicodedata.category(ch)
            if cat == "Cc":
                raise _bad(name, "control characters are not allowed")
            if cat == "Cs":
                raise _bad(name, "invalid characters")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    name = "/".join(parts)
    if name != "INBOX" and len(to_dirname_unchecked(name).encode("utf-8")) > MAX_DIRNAME_BYTES:
        raise _bad(name, "too long")
    return name


def _escape(level):
    return "".join(_ESCAPED_CHARS.get(ch, ch) for ch in level)


def to_dirname_unchecked(name):
    return "." + ".".join(_escape(level) for level in name.split("/"))


def to_dirname(name):
    """The Maildir++ directory name of a (normalized, non-INBOX) folder name."""
    name = normalize(name)
    if name == "INBOX":
        raise _bad(name, "INBOX is the Maildir itself")
    return to_dirname_unchecked(name)


def _unescape(level):
    if "%" not in level:
        return level
    if re.search(r"%(?![0-9A-F]{2})", level):
        raise ValueError("bad escape")
    return re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  level.encode("utf-8")).decode("utf-8")


def from_dirname(dirname):
    """The folder name of a Maildir++ directory name (".A.B" -> "A/B"), or None when the
    directory is not a folder this store can represent safely."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    try:
        dirname.encode("utf-8")       # names that were not UTF-8 carry surrogates
        parts = [_unescape(p) for p in dirname[1:].split(".")]
        name = normalize("/".join(parts))
    except (ValueError, UnicodeError, FolderError):
        return None
    if name == "INBOX" or to_dirname_unchecked(name) != dirname:
        return None                   # ".INBOX", or a non-canonical spelling
    return name


def parent_names(name):
    """"A/B/C" -> ["A", "A/B"]."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
