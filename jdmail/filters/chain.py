"""Runs the configured filters at each SMTP stage and merges their verdicts."""

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from jdmail.interfaces import Action, Verdict

_ON_ERROR = {
    "tempfail": Verdict.tempfail("Temporary failure in message checks; try again later",
                                 enhanced="4.3.0"),
    "reject": Verdict.reject("Message rejected by content checks", enhanced="5.7.1"),
    "continue": Verdict.CONTINUE,
}


class FilterChain:
    """The ``[filters] chain``, in order. ``run(stage, txn)`` gives the strongest verdict.

    REJECT, TEMPFAIL, DISCARD and ACCEPT stop the chain; QUARANTINE and added headers
    accumulate. A filter that raises or exceeds ``timeout`` yields its on_error verdict.
    """

    log = Logger()

    def __init__(self, filters, timeout, reactor, on_error="tempfail"):
        # filters: [(IFilter, on_error or None)]
        self._filters = list(filters)
        self._timeout, self._reactor, self._on_error = timeout, reactor, on_error

    def __bool__(self):
        return bool(self._filters)

    def run(self, stage, txn):
        """Return a Deferred firing with the merged Verdict for ``stage``."""
        return Deferred.fromCoroutine(self._run(stage, txn))

    async def _run(self, stage, txn):
        headers, quarantine, reasons = [], False, []
        for flt, on_error in self._filters:
            if stage not in flt.stages:
                continue
            try:
                d = maybeDeferred(flt.check, stage, txn)
                d.addTimeout(self._timeout, self._reactor)
                verdict = await d
            except Exception:
                self.log.failure("filter {name} failed at {stage}; applying on_error",
                                 name=flt.name, stage=stage.value)
                verdict = _ON_ERROR[on_error or self._on_error]
            if verdict.action != Action.CONTINUE or verdict.reason:
                self.log.info("filter {name} stage={stage} verdict={action} reason={reason}",
                              name=flt.name, stage=stage.value, action=verdict.action.name,
                              reason=verdict.reason)
            headers.extend(verdict.headers)
            if verdict.action == Action.QUARANTINE:
                quarantine = True
                reasons.append(f"{flt.name}: {verdict.reason}")
            elif verdict.action != Action.CONTINUE:
                return verdict
        if quarantine:
            return Verdict(Action.QUARANTINE, headers=tuple(headers), reason="; ".join(reasons))
        return Verdict(headers=tuple(headers)) if headers else Verdict.CONTINUE
