"""Header sections FETCH has cut (and the envelope fields SEARCH compares), kept in
memory for the next FETCH or SEARCH of them.

Mail clients fetch the same few header fields of the same messages again and
again (BODY.PEEK[HEADER.FIELDS (DATE FROM ...)] on every resync); Dovecot keeps
them in its index cache file. A message's octets never change under its UID
(RFC 3501 2.3.1.1), so ``(folder, UIDVALIDITY, UID, section)`` names the answer
for good: a hit needs no file open, no read and no header parsing. A folder is
known by its shared object (a store's view has it as ``folder``; otherwise the
view itself), through a token of its own that is never reused, so a deleted and
re-created or rebuilt folder is a different folder. The cache is bounded in
octets (least recently used goes first).

A session may be answered from the cache for a message another session has
expunged but this one has not yet been told about; RFC 2180 4.1.1 allows that
(as the NO [EXPUNGEISSUED] it otherwise gets).
"""

import itertools
import weakref
from collections import OrderedDict

__all__ = ["SectionCache", "CACHE"]

MAX_BYTES = 8 * 1024 * 1024
_ENTRY_OVERHEAD = 160           # the key tuple and the dict slot, roughly
_MISS = object()


def _cost(spec, value):
    return (len(value) if value is not None else 0) + len(spec) + _ENTRY_OVERHEAD


class SectionCache:
    """An LRU map (folder key, UID, spec) -> value: a section's octets (spec: the
    section), or a search's value of an envelope field (spec "field:" + name: a str
    or None)."""

    def __init__(self, max_bytes=MAX_BYTES):
        self.max_bytes = max_bytes
        self.size = 0
        self._entries = OrderedDict()
        self._tokens = weakref.WeakKeyDictionary()
        self._count = itertools.count(1)

    def folder_key(self, view):
        """The key of the folder ``view`` shows, or None when it cannot be cached."""
        shared = getattr(view, "folder", None)
        if shared is None:
            shared = view
        try:
            token = self._tokens.get(shared)
            if token is None:
                token = self._tokens[shared] = next(self._count)
        except TypeError:           # not weakly referenceable: no caching
            return None
        return (token, view.uidvalidity)

    def get(self, fkey, uid, specs):
        """{spec: value} for every spec of ``specs``, or None unless all are cached."""
        entries = self._entries
        out = {}
        for spec in specs:
            key = (fkey, uid, spec)
            value = entries.get(key, _MISS)
            if value is _MISS:
                return None
            entries.move_to_end(key)
            out[spec] = value
        return out

    def put(self, fkey, uid, values):
        """Keep ``values`` ({spec: value}) of message ``uid``."""
        entries = self._entries
        for spec, value in values.items():
            cost = _cost(spec, value)
            if cost > self.max_bytes // 64:
                continue            # a huge header is not worth evicting many others
            key = (fkey, uid, spec)
            old = entries.pop(key, _MISS)
            if old is not _MISS:
                self.size -= _cost(spec, old)
            entries[key] = value
            self.size += cost
        while self.size > self.max_bytes and entries:
            (_, _, spec), value = entries.popitem(last=False)
            self.size -= _cost(spec, value)

    def clear(self):
        self._entries.clear()
        self.size = 0


CACHE = SectionCache()
