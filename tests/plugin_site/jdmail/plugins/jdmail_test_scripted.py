# A third-party filter plugin as a pip package would ship it: a module in a
# jdmail/plugins/ directory (no __init__.py) of a sys.path entry. The end-to-end
# filter tests put tests/plugin_site on the server's PYTHONPATH; nothing in jdmail
# names it. Its verdict is configured purely in its [filter:NAME] section, so the
# tests can drive every verdict kind at every stage.
import os

from twisted.internet.task import deferLater

from zope.interface import implementer

from jdmail.interfaces import Action, AuthResult, IFilter, IFilterFactory, Option, Stage, Verdict

_STAGES = [s.value for s in Stage]


def _subject(txn, stage):
    """What ``when`` is matched against at each stage."""
    if stage == Stage.CONNECT:
        return txn.client_ip
    if stage == Stage.HELO:
        return txn.helo
    if stage == Stage.MAIL:
        return txn.sender
    if stage == Stage.RCPT:
        return txn.recipient
    return txn.headers.as_string()


@implementer(IFilter)
class ScriptedFilter:
    def __init__(self, name, s, reactor):
        self.name, self.s, self.reactor = name, s, reactor
        self.stages = frozenset(Stage(v) for v in s["stages"])

    async def check(self, stage, txn):
        s = self.s
        if s["record"]:
            with open(s["record"], "a") as f:
                f.write(f"{self.name} {stage.value}\n")
        if s["switch"] and not os.path.exists(s["switch"]):
            return Verdict.CONTINUE
        if s["when"] and s["when"] not in (_subject(txn, stage) or ""):
            return Verdict.CONTINUE
        if s["delay"]:
            await deferLater(self.reactor, s["delay"], lambda: None)
        if s["fail"]:
            raise RuntimeError("scripted failure")
        if s["counts_auth"]:     # what earlier filters recorded is visible to later ones
            seen = ",".join(r.render() for r in txn.filter_results.auth_results) or "none"
            return Verdict.add_headers(("X-Seen-Auth", seen), ("X-Seen-Score", str(txn.filter_results.score)))
        kw = dict(headers=tuple(h.split(":", 1) for h in s["headers"]),
                  score=float(s["score"]) if s["score"] else None, spam=s["spam"], reason=s["reason"])
        if s["auth"]:
            method, _, rest = s["auth"].partition("=")
            result, *props = rest.split()
            kw["auth_results"] = (AuthResult(method, result, properties=tuple(p.split("=", 1) for p in props)),)
        action = Action[s["action"].upper()]
        if action in (Action.REJECT, Action.TEMPFAIL):
            return Verdict(action, s["code"], s["enhanced"], s["text"], **kw)
        return Verdict(action, **kw)


@implementer(IFilterFactory)
class ScriptedFilterFactory:
    kind = "scripted"
    description = "Test filter: gives the verdict its section describes."
    options = {
        "stages": Option.list(str, default=["data"], help=", ".join(_STAGES)),
        "action": Option.choice([a.name.lower() for a in Action], default="continue", help="the verdict"),
        "when": Option.str(help="act only when this text is in the stage's subject (else continue)"),
        "switch": Option.str(help="act only while this file exists"),
        "code": Option.int(default=550, help="reply code for reject/tempfail"),
        "enhanced": Option.str(default="5.7.1", help="enhanced status code"),
        "text": Option.str(default="Scripted refusal", help="reply text"),
        "reason": Option.str(default="scripted", help="log reason"),
        "headers": Option.list(str, help="Name: value, ..."),
        "score": Option.str(help="spam score points"),
        "spam": Option.bool(help="tag as spam"),
        "auth": Option.str(help="method=result ptype.prop=value ..."),
        "delay": Option.duration(help="sleep before answering"),
        "fail": Option.bool(help="raise an exception"),
        "record": Option.str(help="append 'NAME STAGE' to this file on every call"),
        "counts_auth": Option.bool(help="add X-Seen-Auth/X-Seen-Score from earlier filters' results"),
    }

    def build(self, name, settings, services):
        bad = [v for v in settings["stages"] if v not in _STAGES]
        if bad:
            raise ValueError(f"unknown stage {bad[0]!r}")
        return ScriptedFilter(name, settings, services.reactor)


scripted = ScriptedFilterFactory()
