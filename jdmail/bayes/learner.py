"""Train-on-move: a message a user moves (or copies) into their Junk folder over IMAP is
trained as spam, one moved out of Junk as ham.

The IMAP server calls ``transferred`` after the COPY/MOVE has succeeded and its
answer is on the way; the work (which folders are Junk, reading the messages,
training) happens afterwards, on the reactor and the thread pool, and any failure
is only logged: the user's command has already succeeded.
"""

from twisted.logger import Logger

from jdmail.bayes.store import StoreError

__all__ = ["JunkLearner", "JUNK", "MAX_READ", "BATCH"]

JUNK = "\\Junk"            # RFC 6154 special-use attribute
MAX_READ = 256 * 1024      # what the tokenizer reads of a message
BATCH = 50                 # messages read and trained at a time


class JunkLearner:
    """Trains a BayesEngine from IMAP transfers into and out of \\Junk folders."""

    log = Logger()

    def __init__(self, engine, name="bayes"):
        self.engine = engine
        self.name = name

    async def transferred(self, user, account, source, dest, uids):
        """``uids`` were copied or moved from folder ``source`` to ``dest`` (IMAP names) of
        ``account`` (an IAccountStore) by ``user``; train when one side is Junk. Never
        raises; returns the number of messages that changed the tables."""
        try:
            return await self._transferred(user, account, source, dest, uids)
        except StoreError as e:      # the token database is down: one line, no traceback
            self.log.warn("bayes {name}: training from an IMAP move failed user={user}: {error}",
                          name=self.name, user=user, error=str(e))
            return 0
        except Exception:
            self.log.failure("bayes {name}: training from an IMAP move failed user={user}",
                             name=self.name, user=user)
            return 0

    async def _transferred(self, user, account, source, dest, uids):
        if not uids or _same(source, dest):
            return 0
        junk = {f.name for f in await account.list_folders() if JUNK in f.attributes}
        into, out_of = _member(dest, junk), _member(source, junk)
        if into == out_of:
            return 0
        is_spam = into
        changed = 0
        view = await account.open_folder(dest, readonly=True)
        try:
            run = self.engine.services.run_blocking
            for i in range(0, len(uids), BATCH):
                batch = []
                for uid in uids[i:i + BATCH]:
                    try:
                        batch.append(await run(_read, view, uid))
                    except FileNotFoundError:
                        pass            # already expunged again: nothing to learn
                changed += await self.engine.learn(batch, is_spam, user)
        finally:
            view.close()
        self.log.info("bayes {name}: trained {n} of {total} message(s) as {label} user={user} "
                      "from={source} to={dest}", name=self.name, n=changed, total=len(uids),
                      label="spam" if is_spam else "ham", user=user, source=source, dest=dest)
        return changed


def _read(view, uid):
    with view.open_message(uid) as f:
        return f.read(MAX_READ)


def _same(a, b):
    return _key(a) == _key(b)


def _key(name):
    return "INBOX" if name.upper() == "INBOX" else name


def _member(name, names):
    return _key(name) in {_key(n) for n in names}
