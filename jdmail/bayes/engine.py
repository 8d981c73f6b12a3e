"""The Bayes classifier as the server uses it: one token store, blocking work on the
thread pool, global or per-user tables."""

from twisted.logger import Logger

from jdmail.bayes.classifier import Classifier
from jdmail.bayes.store import GLOBAL, open_store

__all__ = ["BayesEngine"]


class BayesEngine:
    """Scores and trains through a Classifier; every method returns a Deferred and runs
    the SQL and tokenizing on ``services``' thread pool.

    ``scope`` "global": one table for everybody. "user": a message for exactly one
    local mailbox is scored with that user's own table once it has ``min_trained``
    spam and ham messages (the global one until then); training from a user (IMAP
    moves) goes to their own table. ``jdmailctl bayes train`` trains the global
    table, or with ``--user`` one user's.
    """

    log = Logger()

    def __init__(self, classifier, scope, services):
        self.classifier = classifier
        self.scope = scope
        self.services = services

    @classmethod
    def open(cls, database, datadir, params, scope, services, mysql=None):
        return cls(Classifier(open_store(database, datadir, mysql), params), scope, services)

    def owners(self, user):
        """The tables to try for ``user`` ('' or None: global only), most specific first."""
        if self.scope == "user" and user:
            return (user, GLOBAL)
        return (GLOBAL,)

    def score(self, data, user=None):
        """Deferred Score of raw message bytes."""
        return self.services.run_blocking(self.classifier.score, data, self.owners(user))

    def learn(self, messages, is_spam, user=None):
        """Deferred count of messages that changed the tables. Training goes to the table
        that scores the user's mail: their own with scope = user, else the global one."""
        owner = self.owners(user)[0]
        return self.services.run_blocking(
            self.classifier.learn_many, [(data, is_spam) for data in messages], owner)

    def close(self):
        self.classifier.store.close()
