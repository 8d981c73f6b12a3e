"""The bayes filter: jdmail's own Bayesian classifier (jdmail.bayes) at the DATA stage.

Every message gets an ``X-Spam-Bayes`` header (spam/ham/unsure, the score in [0, 1],
how many tokens counted, whose table) and adds points to the transaction's spam
score: ``spam_points`` for spam, ``ham_points`` (negative) for ham, none for unsure
(the X-Spam-Status test names are BAYES_SPAM, BAYES_HAM, BAYES_UNSURE). Spam is then
tagged (X-Spam-Flag, the Junk folder with ``[filters] junk_tagged``), quarantined
(``quarantine = junk`` or ``central``), rejected, or only scored, as ``on_spam``
says. Building the filter also registers train-on-move for the IMAP server
(``train_on_move``). Old rarely seen tokens expire once a day (jdmail.bayes.expiry).
"""

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.bayes.classifier import Params
from jdmail.bayes.expiry import DAY, AutoExpiry
from jdmail.bayes.learner import JunkLearner
from jdmail.bayes.store import StoreError, check_database
from jdmail.errors import ConfigError, FilterUnavailable
from jdmail.filters.chain import SPAM_TEXT
from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

__all__ = ["BayesFilter", "BayesFilterFactory", "MAX_BYTES"]

MAX_BYTES = 256 * 1024


def _fraction(text):
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r}: expected a number from 0 to 1, such as 0.9") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text.strip()!r}: expected a number from 0 to 1, such as 0.9")
    return value


def _points(text):
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r}: expected a number such as 3.5 or -1") from None


def _database(text):
    value = text.strip()
    problem = check_database(value)
    if problem:
        raise ValueError(f"{value!r}: {problem}")
    return value


OPTIONS = {
    "database": Option("database", _database, default="",
                       help="token database: empty = the directory's MySQL database with [directory] type = mysql "
                            "(see jdmailctl db init), else <datadir>/bayes.sqlite; a file path, sqlite:PATH, "
                            "or mysql://USER:PASSWORD@HOST:PORT/DATABASE"),
    "scope": Option.choice(("global", "user"), default="global",
                           help="global: one token table; user: each user's own once trained (else the global one)"),
    "ham_cutoff": Option("number 0-1", _fraction, default=Params.ham_cutoff,
                         help="a score below this is ham"),
    "spam_cutoff": Option("number 0-1", _fraction, default=Params.spam_cutoff,
                          help="a score at or above this is spam; between the two: unsure"),
    "min_trained": Option.int(default=20, help="spam and ham messages each a table needs before it is used"),
    "bigrams": Option.bool(default=False, help="also weigh pairs of adjacent words (slower; see bench/README.md)"),
    "on_spam": Option.choice(("score", "tag", "quarantine", "reject"), default="tag",
                             help="what spam gets: score (only spam_points), tag (X-Spam-Flag; Junk with "
                                  "[filters] junk_tagged), quarantine (where this section's quarantine says), "
                                  "or reject (550 5.7.1)"),
    "spam_points": Option("number", _points, default=3.5, help="added to the spam score of spam"),
    "ham_points": Option("number", _points, default=-1.0, help="added to the spam score of ham (negative lowers it)"),
    "train_on_move": Option.bool(default=True,
                                 help="train spam when a user moves mail into Junk over IMAP, ham when out of it"),
    "token_expiry": Option.duration(default=180 * DAY,
                                    help="once a day, delete tokens not trained for this long that occur in at "
                                         "most expiry_max_count trained messages; 0 = never (jdmailctl bayes "
                                         "expire does it by hand)"),
    "expiry_max_count": Option.int(default=1, help="tokens seen in more trained messages than this never expire"),
}


@implementer(IFilter)
class BayesFilter:
    """Scores the message at DATA; see the module docstring."""

    stages = frozenset({Stage.DATA})
    log = Logger()

    def __init__(self, name, engine, on_spam, points, expiry=None):
        self.name = name
        self.engine = engine
        self.on_spam = on_spam
        self.points = points            # {"spam": x, "ham": y, "unsure": 0.0}
        self.expiry = expiry            # an AutoExpiry, or None

    async def check(self, stage, txn):
        if self.expiry is not None:
            self.expiry.due()
        data = await self.engine.services.run_blocking(_read_message, txn)
        try:
            score = await self.engine.score(data, _single_user(txn))
        except StoreError as e:
            # the token database is down: the chain applies on_error, with one log line
            raise FilterUnavailable(str(e)) from None
        header = ("X-Spam-Bayes", _describe(score))
        if not score.trained:
            return Verdict.add_headers(header, reason="bayes: not trained yet")
        kw = dict(headers=(header,), score=self.points[score.label],
                  tests=(f"BAYES_{score.label.upper()}",),
                  reason=f"bayes {score.label} {score.value:.4f} table={score.owner or 'global'}")
        if score.label != "spam" or self.on_spam == "score":
            return Verdict(**kw)
        if self.on_spam == "reject":
            return Verdict.reject(SPAM_TEXT, code=550, enhanced="5.7.1", **kw)
        if self.on_spam == "quarantine":
            return Verdict.quarantine(spam=True, **kw)
        return Verdict(spam=True, **kw)


def _describe(score):
    if not score.trained:
        return "untrained"
    table = score.owner or "global"
    return f"{score.label}; score={score.value:.4f}; tokens={score.tokens}; table={table}"


def _read_message(txn):
    with open(txn.message_path, "rb") as f:
        return f.read(MAX_BYTES)


def _single_user(txn):
    """The one local user a message is for (per-user scoring), else None."""
    users = {a.name for _address, resolution in txn.recipients for a in resolution.accounts}
    return users.pop() if len(users) == 1 else None


@implementer(IFilterFactory)
class BayesFilterFactory:
    log = Logger()
    kind = "bayes"
    description = ("jdmail's Bayesian spam classifier (chi-square); trained with jdmailctl bayes "
                   "train and by IMAP moves into and out of Junk")
    options = OPTIONS

    def build(self, name, settings, services):
        from jdmail.bayes.engine import BayesEngine
        path = getattr(services.config, "path", "<config>")
        section = f"filter:{name}"
        if settings["spam_cutoff"] <= settings["ham_cutoff"]:
            raise ConfigError(f"{settings['spam_cutoff']}: must be more than ham_cutoff "
                              f"({settings['ham_cutoff']})", path, section, "spam_cutoff")
        mysql = None
        if not settings["database"]:
            from jdmail.filters.statedb import mysql_state
            mysql = mysql_state(services.config, "bayes")
        try:
            engine = BayesEngine.open(settings["database"], services.datadir, params(settings),
                                      settings["scope"], services, mysql)
        except StoreError as e:
            raise ConfigError(str(e), path, section, "database") from None
        self.log.info("bayes {name}: tokens in {where}", name=name, where=engine.classifier.store.where)
        if settings["train_on_move"]:
            services.extra.setdefault("junk_learners", []).append(JunkLearner(engine, name))
        points = {"spam": settings["spam_points"], "ham": settings["ham_points"], "unsure": 0.0}
        expiry = AutoExpiry(engine.classifier.store, services, settings["token_expiry"],
                            settings["expiry_max_count"])
        return BayesFilter(name, engine, settings["on_spam"], points, expiry)


def params(settings):
    """Classifier Params from a [filter:bayes] section's settings."""
    return Params(ham_cutoff=settings["ham_cutoff"], spam_cutoff=settings["spam_cutoff"],
                  bigrams=settings["bigrams"], min_trained=settings["min_trained"])
