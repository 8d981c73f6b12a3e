"""What the filters said in one transaction, and the headers that record it.

A FilterResults lives on each connection (CONNECT and HELO verdicts) and on each
transaction (a copy of the connection's, then MAIL .. OUTBOUND verdicts). The chain
records every verdict in it; at the end of DATA it gives the disposition (deliver,
Junk folder, central quarantine, discard) and the header block to prepend.
"""

import email.header
import re

from jdmail.interfaces import Action

_NAME = re.compile(r"[!-9;-~]+")
_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class FilterResults:
    """Verdicts of one transaction (or connection), as the chain recorded them.

    Read by filters through ``txn.filter_results``: ``score`` (the spam score so far,
    None when no filter scored), ``auth_results`` (AuthResult values so far, e.g. SPF's
    for DMARC) and ``notes`` (a dict each filter may keep per-transaction state in,
    under its own name).
    """

    def __init__(self):
        self.headers = []          # [(name, value)]
        self.scores = []           # [(filter name, points, tests)]
        self.spam = []             # names of filters that tagged the message as spam
        self.auth_results = []     # [AuthResult]
        self.quarantine = []       # [(filter name, "junk" | "central", reason)]
        self.discard = []          # [(filter name, reason)]
        self.accepted = []         # [(filter name, reason)]
        self.accepted_at = None    # chain position of an ACCEPT: later filters are skipped
        self.notes = {}

    def copy(self):
        other = FilterResults()
        for key, value in vars(self).items():
            setattr(other, key, value.copy() if hasattr(value, "copy") else value)
        return other

    def merge(self, other):
        """Add another FilterResults' records (the connection's HELO verdicts) to these."""
        for key in ("headers", "scores", "spam", "auth_results", "quarantine", "discard", "accepted"):
            getattr(self, key).extend(getattr(other, key))
        if other.accepted_at is not None:
            self.accepted_at = min(other.accepted_at, self.accepted_at if self.accepted_at is not None
                                   else other.accepted_at)
        self.notes.update(other.notes)

    @property
    def score(self):
        """The spam score so far (sum of every scoring filter's points), or None."""
        if not self.scores:
            return None
        return round(sum(points for _name, points, _tests in self.scores), 3)

    def record(self, name, verdict, quarantine_to):
        """Keep what one verdict adds; refusals (REJECT, TEMPFAIL) are answered, not kept."""
        headers = [clean_header(h) for h in verdict.headers]       # ValueError before any change
        score = None if verdict.score is None else float(verdict.score)
        if score is not None and score != score:
            raise ValueError("score is NaN")
        self.headers.extend(headers)
        if score is not None:
            self.scores.append((name, score, tuple(str(t) for t in verdict.tests)))
        if verdict.spam:
            self.spam.append(name)
        self.auth_results.extend(verdict.auth_results)
        if verdict.action == Action.QUARANTINE:
            self.quarantine.append((name, quarantine_to, verdict.reason))
        elif verdict.action == Action.DISCARD:
            self.discard.append((name, verdict.reason))
        elif verdict.action == Action.ACCEPT:
            self.accepted.append((name, verdict.reason))

    def outcome(self):
        """The strongest non-refusing action of the transaction: DISCARD, ACCEPT,
        QUARANTINE or CONTINUE."""
        if self.discard:
            return Action.DISCARD
        if self.accepted:
            return Action.ACCEPT
        if self.quarantine:
            return Action.QUARANTINE
        return Action.CONTINUE

    def reasons(self):
        pairs = [(name, reason) for name, _where, reason in self.quarantine] + self.discard
        return [f"{name}: {reason}" if reason else name for name, reason in pairs]


def clean_header(header):
    """(name, value) from a pair or a "Name: value" string; line breaks in the value
    become spaces, so a filter can never inject header lines. ValueError when the
    name is not a header name."""
    if isinstance(header, str):
        name, sep, value = header.partition(":")
        if not sep:
            raise ValueError(f"{header!r} is not 'Name: value'")
    else:
        name, value = header
    name, value = str(name).strip(), _BREAKS.sub(" ", str(value)).strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a header field name")
    return name, value


def render_header(name, value):
    """'Name: value' folded near 78 columns at spaces, CRLF-terminated bytes; non-ASCII
    values are RFC 2047 encoded."""
    if not value.isascii():
        value = email.header.Header(value, "utf-8", header_name=name).encode()
    words = value.split(" ")
    lines, line = [], f"{name}:"
    for word in words:
        if not word:
            continue
        if len(line) + 1 + len(word) > 78 and line != f"{name}:":
            lines.append(line)
            line = "\t" + word
        else:
            line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")
