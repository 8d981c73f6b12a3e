"""Runs the configured filters at each SMTP stage and merges their verdicts.

See jdmail.filters for the rules (order, strongest verdict, ACCEPT, timeouts,
on_error, scores and the headers that record them).
"""

import re
import time
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.logger import Logger

from jdmail.errors import FilterUnavailable
from jdmail.filters.results import clean_header, render_header
from jdmail.interfaces import Action, Stage, Verdict

_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")

ON_ERROR_CHOICES = ("tempfail", "continue", "accept", "reject")
QUARANTINE_CHOICES = ("central", "junk")

SPAM_TEXT = "Message rejected under suspicion of SPAM"


def on_error_verdict(choice, why):
    """The verdict standing in for a filter that failed or timed out."""
    if choice == "tempfail":
        return Verdict.tempfail("Temporary failure in message checks; try again later",
                                enhanced="4.3.0", reason=why)
    if choice == "reject":
        return Verdict.reject("Message refused by local policy", enhanced="5.7.1", reason=why)
    if choice == "accept":
        return Verdict.accept(reason=why)
    return Verdict(reason=why)


@dataclass
class ChainEntry:
    """One ``[filter:NAME]`` in the chain with the settings the framework applies to it."""
    filter: object
    on_error: str = None           # None: [filters] on_error
    timeout: float = None          # None: [filters] timeout
    quarantine: str = "central"    # where this filter's QUARANTINE verdicts send the message

    @property
    def name(self):
        return getattr(self.filter, "name", type(self.filter).__name__)


@dataclass
class Disposition:
    """What happens to a message that passed every filter (the end of DATA)."""
    action: Action                 # CONTINUE (deliver), QUARANTINE, DISCARD
    junk: bool = False             # local mailboxes get it in their Junk folder
    reasons: list = field(default_factory=list)
    header_block: bytes = b""      # to insert after jdmail's trace headers


class FilterChain:
    """The ``[filters] chain``, in order. ``run(stage, txn)`` gives the strongest verdict
    and records every verdict in ``txn.filter_results``; ``disposition(txn)`` says what
    to do with an accepted message and which headers to add."""

    log = Logger()

    def __init__(self, entries, reactor, timeout=30.0, on_error="tempfail", hostname="localhost",
                 tag_score=5.0, reject_score=0.0, junk=True):
        self._entries = [e if isinstance(e, ChainEntry) else ChainEntry(*e) for e in entries]
        self._reactor, self._timeout, self._on_error = reactor, timeout, on_error
        self.hostname = hostname
        self.tag_score, self.reject_score, self.junk = tag_score, reject_score, junk
        self.stages = frozenset(s for e in self._entries for s in getattr(e.filter, "stages", ()))

    def __bool__(self):
        return bool(self._entries)

    def __len__(self):
        return len(self._entries)

    def run(self, stage, txn):
        """Return a Deferred firing with the strongest Verdict for ``stage``."""
        return Deferred.fromCoroutine(self._run(stage, txn))

    async def _run(self, stage, txn):
        results = txn.filter_results
        best = Verdict.CONTINUE
        for position, entry in enumerate(self._entries):
            if stage not in entry.filter.stages:
                continue
            if results.accepted_at is not None and position > results.accepted_at:
                continue
            verdict = await self._call(entry, stage, txn)
            try:
                results.record(entry.name, verdict, entry.quarantine)
            except (ValueError, TypeError) as e:     # a bad header or score from a plugin
                verdict = self._failed(entry, stage, txn, f"bad verdict: {e}", time.monotonic())
                results.record(entry.name, verdict, entry.quarantine)
            if verdict.action > best.action:
                best = verdict
            if verdict.action == Action.ACCEPT:
                results.accepted_at = position
                break
            if verdict.action == Action.REJECT:
                break
        if stage == Stage.DATA and best.action < Action.REJECT and self.reject_score > 0:
            score = results.score
            if score is not None and score >= self.reject_score:
                best = Verdict.reject(SPAM_TEXT, enhanced="5.7.1",
                                      reason=f"spam score {score} >= reject_score {self.reject_score}")
                self._log("spam-score", stage, txn, best, 0.0)
        return best

    async def _call(self, entry, stage, txn):
        """One filter call, with its timeout; a failure becomes its on_error verdict."""
        timeout = entry.timeout or self._timeout
        started = time.monotonic()
        try:
            d = maybeDeferred(entry.filter.check, stage, txn)
            d.addTimeout(timeout, self._reactor)
            verdict = await d
        except (TimeoutError, CancelledError):
            return self._failed(entry, stage, txn, f"timed out after {timeout:g}s", started)
        except FilterUnavailable as e:
            return self._failed(entry, stage, txn, f"unavailable: {_one_line(e)}", started)
        except Exception as e:
            self.log.failure("filter {filter} failed at {stage}", filter=entry.name, stage=stage.value)
            return self._failed(entry, stage, txn, f"error: {type(e).__name__}: {_one_line(e)}", started)
        if not isinstance(verdict, Verdict):
            return self._failed(entry, stage, txn, f"returned {type(verdict).__name__}, not a Verdict", started)
        verdict = self._sane(verdict, stage)
        self._log(entry.name, stage, txn, verdict, time.monotonic() - started)
        return verdict

    def _failed(self, entry, stage, txn, why, started):
        choice = entry.on_error or self._on_error
        verdict = self._sane(on_error_verdict(choice, f"on_error={choice} ({why})"), stage)
        self._log(entry.name, stage, txn, verdict, time.monotonic() - started)
        return verdict

    @staticmethod
    def _sane(verdict, stage):
        """Reply codes that fit the action and the stage; one printable line of text."""
        action = verdict.action
        if action not in (Action.REJECT, Action.TEMPFAIL):
            return verdict
        first = "5" if action == Action.REJECT else "4"
        code = verdict.code if isinstance(verdict.code, int) and str(verdict.code)[0] == first \
            and 400 <= verdict.code <= 599 else (550 if first == "5" else 451)
        if stage == Stage.CONNECT:
            code = 554 if first == "5" else 421       # RFC 5321 3.1 / 4.2.3
        elif code == 421:
            code = 451                                 # 421 would mean we close the connection
        enhanced = verdict.enhanced if isinstance(verdict.enhanced, str) else ""
        m = _ENHANCED.fullmatch(enhanced)
        if not m or m.group(1) != first:
            enhanced = f"{first}.7.1"
        text = _UNPRINTABLE.sub("?", " ".join(str(verdict.text or "").split()))[:200]
        text = text or ("Message refused by local policy" if first == "5" else "Try again later")
        if (code, enhanced, text) == (verdict.code, verdict.enhanced, verdict.text):
            return verdict
        return Verdict(action, code, enhanced, text, verdict.reason, verdict.headers, verdict.score,
                       verdict.tests, verdict.spam, verdict.auth_results)

    def _log(self, name, stage, txn, verdict, elapsed):
        reply = f"{verdict.code} {verdict.enhanced}" if verdict.action in (Action.REJECT, Action.TEMPFAIL) else "-"
        self.log.info("filter verdict filter={filter} stage={stage} action={action} reply={reply} "
                      "score={score} id={id} client={client} ms={ms} reason={reason}",
                      filter=name, stage=stage.value, action=verdict.action.name.lower(), reply=reply,
                      score="-" if verdict.score is None else f"{float(verdict.score):g}",
                      id=getattr(txn, "queue_id", None) or "-", client=getattr(txn, "client_ip", "-"),
                      ms=int(elapsed * 1000), reason=_one_line(verdict.reason) or "-")

    # --- the end of DATA --------------------------------------------------------------------

    def spam_tagged(self, results):
        score = results.score
        return bool(results.spam) or (score is not None and self.tag_score > 0 and score >= self.tag_score)

    def disposition(self, txn):
        """What to do with a message every filter let through, and the headers to add."""
        results = txn.filter_results
        action = results.outcome()
        tagged = self.spam_tagged(results)
        junk = False
        if action == Action.QUARANTINE:
            if all(where == "junk" for _n, where, _r in results.quarantine):
                action, junk = Action.CONTINUE, True
        elif action == Action.CONTINUE:
            junk = tagged and self.junk
        return Disposition(action, junk, results.reasons(), self.header_block(results, tagged))

    def header_block(self, results, tagged=None):
        """Authentication-Results, X-Spam-* and every filter's headers, as bytes."""
        tagged = self.spam_tagged(results) if tagged is None else tagged
        out = []
        if results.auth_results:
            parts = [r.render() for r in results.auth_results]
            out.append(render_header("Authentication-Results", f"{self.hostname}; " + "; ".join(parts)))
        score = results.score
        if score is not None or results.spam:
            total = score or 0.0
            tests = []
            for name, _points, names in results.scores:
                tests.extend(names or [name])
            scored = {name for name, _points, _names in results.scores}
            tests.extend(n for n in results.spam if n not in scored and n not in tests)
            if tagged:
                out.append(render_header("X-Spam-Flag", "YES"))
            out.append(render_header("X-Spam-Score", f"{total:.1f}"))
            out.append(render_header(
                "X-Spam-Status", f"{'Yes' if tagged else 'No'}, score={total:.1f} "
                                 f"required={self.tag_score:.1f} tests={','.join(tests) or 'none'}"))
        for name, value in results.headers:
            out.append(render_header(*clean_header((name, value))))
        return b"".join(out)


def _one_line(text):
    return " ".join(str(text).split())
