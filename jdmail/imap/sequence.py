"""Sequence sets (RFC 3501 9: ``1:3,5,7:*``) resolved against a session's view.

A set resolves to merged, ascending spans of indexes into ``folder.records``
(``[(start, stop), ...]``, Python slice bounds), so ``1:*`` over 100,000
messages is one span, not 100,000 numbers.

- Message sequence numbers: ``*`` is the last message; ``3:1`` is ``1:3``; a
  number past the end is an error (RFC 9051: BAD); any set over an empty
  mailbox is empty.
- UIDs: ``*`` is the highest UID in the mailbox, so ``900:*`` always includes
  the last message even when 900 is past it (RFC 3501 6.4.8); UIDs that do not
  exist are simply not there.
"""

import bisect
import re

__all__ = ["SequenceSetError", "parse_sequence_set", "resolve", "iter_spans", "count_spans",
           "uid_set_contains", "MAX_NUMBER"]

MAX_NUMBER = 0xFFFFFFFF
_SET = re.compile(r"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*$")


class SequenceSetError(ValueError):
    """Not a valid sequence set (or a number out of range)."""


def parse_sequence_set(text):
    """``"1:3,5:*"`` -> ``[(1, 3), (5, None)]`` with None for ``*`` (order as given).
    Raises SequenceSetError."""
    if not isinstance(text, str) or not _SET.match(text):
        raise SequenceSetError("Invalid sequence set")
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo = None if a == "*" else int(a)
        hi = lo if not b else (None if b == "*" else int(b))
        for n in (lo, hi):
            if n is not None and not 0 < n <= MAX_NUMBER:
                raise SequenceSetError("Invalid number in sequence set")
        out.append((lo, hi))
    return out


def _merge(spans):
    spans.sort()
    merged = []
    for start, stop in spans:
        if start >= stop:
            continue
        if merged and start <= merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def _uid(record):
    return record.uid


def resolve(ranges, records, uid=False):
    """Index spans into ``records`` (MessageRecords in UID order) for parsed ``ranges``.
    Raises SequenceSetError for a message sequence number past the end."""
    count = len(records)
    if count == 0:
        return []
    spans = []
    if not uid:
        for lo, hi in ranges:
            lo = count if lo is None else lo
            hi = count if hi is None else hi
            if lo > hi:
                lo, hi = hi, lo
            if hi > count:
                raise SequenceSetError("Invalid message sequence number: %d" % hi)
            spans.append((lo - 1, hi))
        return _merge(spans)
    top = records[-1].uid
    for lo, hi in ranges:
        lo = top if lo is None else lo
        hi = top if hi is None else hi
        if lo > hi:
            lo, hi = hi, lo
        start = bisect.bisect_left(records, lo, key=_uid)
        stop = bisect.bisect_right(records, hi, lo=start, key=_uid)
        spans.append((start, stop))
    return _merge(spans)


def iter_spans(spans):
    for start, stop in spans:
        yield from range(start, stop)


def count_spans(spans):
    return sum(stop - start for start, stop in spans)


def uid_set_contains(ranges, uid_value, top):
    """Whether ``uid_value`` is in a parsed UID set (``*`` = ``top``)."""
    for lo, hi in ranges:
        lo = top if lo is None else lo
        hi = top if hi is None else hi
        if lo > hi:
            lo, hi = hi, lo
        if lo <= uid_value <= hi:
            return True
    return False
