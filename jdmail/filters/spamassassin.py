"""The spamassassin filter: asks spamd (SYMBOLS, jdmail.filters.spamd) at DATA.

Two thresholds on SpamAssassin's score: at ``tag_score`` the message is tagged as spam
(X-Spam-* headers; the Junk folder with ``[filters] junk_tagged``), at ``reject_score``
it is refused (550 5.7.1) or quarantined. The score is also added to the message's
spam score, with the rule names as X-Spam-Status tests. Messages over ``max_size``
are passed unchecked (spamc's habit: big mail is rarely spam and slow to scan).
"""

import os

from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from zope.interface import implementer

from jdmail.filters.chain import SPAM_TEXT
from jdmail.filters.spamd import spamc
from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict


@implementer(IFilter)
class SpamAssassinFilter:
    stages = frozenset({Stage.DATA})

    def __init__(self, name, settings, services):
        self.name, self.settings, self.services = name, settings, services

    def _endpoint(self):
        s, reactor = self.settings, self.services.reactor
        if s["socket"]:
            return UNIXClientEndpoint(reactor, s["socket"], timeout=10)
        return TCP4ClientEndpoint(reactor, s["host"], s["port"], timeout=10)

    def _user(self, txn):
        s = self.settings
        if s["per_user"] and len(txn.recipients) == 1:
            return txn.recipients[0][0]
        return s["user"]

    async def check(self, stage, txn):
        s = self.settings
        if s["max_size"] and txn.size > s["max_size"]:
            return Verdict(reason=f"not checked: {txn.size} octets > max_size {s['max_size']}")

        def read():
            with open(txn.message_path, "rb") as f:
                return f.read()
        message = await self.services.run_blocking(read)
        result = await spamc(self._endpoint(), message, "SYMBOLS", self._user(txn))
        reason = f"score {result.score:g} tests={','.join(result.symbols) or 'none'}"
        kw = dict(score=result.score, tests=result.symbols or ("SPAMASSASSIN",),
                  spam=result.score >= s["tag_score"], reason=reason)
        if s["reject_score"] and result.score >= s["reject_score"]:
            if s["on_reject"] == "quarantine":
                return Verdict.quarantine(**kw)
            return Verdict.reject(SPAM_TEXT, code=550, enhanced="5.7.1", **kw)
        return Verdict(**kw)


@implementer(IFilterFactory)
class SpamAssassinFilterFactory:
    kind = "spamassassin"
    description = "Score each message with spamd (SpamAssassin); tag, then reject or quarantine."
    options = {
        "host": Option.str(default="127.0.0.1", help="spamd's TCP address (when socket is empty)"),
        "port": Option.int(default=783, help="spamd's TCP port"),
        "socket": Option.str(default="", help="spamd's unix socket; empty = TCP"),
        "tag_score": Option.float(default=5.0, help="score at which mail is tagged as spam"),
        "reject_score": Option.float(default=10.0, help="score at which mail is refused or quarantined; "
                                                        "0 = never"),
        "on_reject": Option.choice(("reject", "quarantine"), default="reject",
                                   help="what reject_score does: reject (550 5.7.1) or quarantine"),
        "user": Option.str(default="", help="spamd user name to check as (its preferences, Bayes); "
                                            "empty = spamd's default"),
        "per_user": Option.bool(default=False, help="check a message for one recipient as that "
                                                    "recipient's address"),
        "max_size": Option.size(default=512 * 1024, help="larger messages are not checked; 0 = no limit"),
    }

    def build(self, name, settings, services):
        if not 0 < settings["port"] < 65536:
            raise ValueError(f"port {settings['port']} is not a TCP port")
        if settings["socket"] and not os.path.isabs(settings["socket"]):
            raise ValueError(f"socket {settings['socket']!r} is not an absolute path")
        return SpamAssassinFilter(name, settings, services)
