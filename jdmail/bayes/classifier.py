"""The classifier: Robinson's f(w) per token, Fisher's chi-square combining.

For each token with ``spam`` spam and ``ham`` ham occurrences (each message
counts a token once) among ``nspam`` spam and ``nham`` ham trained messages:

    p(w) = (spam/nspam) / (spam/nspam + ham/nham)
    f(w) = (s * x + n * p(w)) / (s + n),   n = spam + ham

so a rare token stays near ``x`` (0.5) and moves away only with evidence
(``s`` is the strength of that prior). Tokens with |f(w) - 0.5| below
``min_strength`` are ignored; of the rest, the ``max_tokens`` strongest are
combined the SpamBayes way: H = C⁻¹(-2 Σ ln f(w), 2n) and S = C⁻¹(-2 Σ ln(1-f(w)),
2n) (C⁻¹: the chi-square survival function) give the score (1 + H - S) / 2 in
[0, 1]. Below ``ham_cutoff`` is ham, at or above ``spam_cutoff`` spam, between
them unsure -- which is where a message with strong evidence both ways lands,
the point of the chi-square method.
"""

import hashlib
import math
from dataclasses import dataclass

from jdmail.bayes.store import GLOBAL
from jdmail.bayes.tokenizer import token_id, tokenize

__all__ = ["Params", "Score", "Classifier", "word_prob", "chi2q", "combine", "digest"]


@dataclass(frozen=True)
class Params:
    """Tuning knobs (the defaults are SpamBayes', checked on the benchmark's training part)."""
    s: float = 0.45                 # strength of the prior for rare tokens
    x: float = 0.5                  # the prior: what an unknown token says
    min_strength: float = 0.1       # ignore tokens with |f(w) - 0.5| below this
    max_tokens: int = 150           # combine at most this many of the strongest tokens
    # SpamBayes ships 0.20/0.90; on the SpamAssassin corpus cross-validation chose
    # 0.10/0.95 (fewer false positives and missed spam, more unsure): bench/README.md
    ham_cutoff: float = 0.10        # below: ham
    spam_cutoff: float = 0.95       # at or above: spam
    bigrams: bool = False           # also weigh pairs of adjacent body words
    min_trained: int = 10           # spam and ham messages each before a table is used


@dataclass(frozen=True)
class Score:
    """A classification: the score in [0, 1], its label and how it came about."""
    value: float
    label: str                      # "spam", "ham" or "unsure"
    tokens: int                     # tokens that counted
    owner: str = GLOBAL             # whose table answered ('' = global)
    trained: bool = True            # False: too little training, the label is "unsure"


def word_prob(spam, ham, nspam, nham, s=0.45, x=0.5):
    """Robinson's f(w) for a token seen in ``spam`` of ``nspam`` spam and ``ham`` of
    ``nham`` ham messages."""
    n = spam + ham
    if n == 0:
        return x
    spam_ratio = spam / nspam if nspam else 0.0
    ham_ratio = ham / nham if nham else 0.0
    total = spam_ratio + ham_ratio
    p = spam_ratio / total if total else x
    return (s * x + n * p) / (s + n)


def chi2q(x2, v):
    """P(chi-square with ``v`` (even) degrees of freedom >= ``x2``)."""
    assert v % 2 == 0
    m = x2 / 2.0
    term = total = math.exp(-m)
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probs):
    """Fisher/Robinson chi-square combining of token probabilities -> score in [0, 1]
    (0.5 when there are none)."""
    if not probs:
        return 0.5
    # products kept as mantissa and exponent: 150 small numbers underflow a float
    h = s = 1.0
    h_exp = s_exp = 0
    for p in probs:
        s *= 1.0 - p
        h *= p
        if s < 1e-200:
            s, e = math.frexp(s)
            s_exp += e
        if h < 1e-200:
            h, e = math.frexp(h)
            h_exp += e
    ln2 = math.log(2)
    s_ln = math.log(s) + s_exp * ln2
    h_ln = math.log(h) + h_exp * ln2
    n = len(probs)
    spamminess = 1.0 - chi2q(-2.0 * s_ln, 2 * n)
    hamminess = 1.0 - chi2q(-2.0 * h_ln, 2 * n)
    return (spamminess - hamminess + 1.0) / 2.0


def digest(data):
    """A 64-bit id of a message's content (line ends ignored), for "already trained"."""
    body = data[:256 * 1024].replace(b"\r\n", b"\n")
    return int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big", signed=True)


def label_for(value, params):
    if value < params.ham_cutoff:
        return "ham"
    if value >= params.spam_cutoff:
        return "spam"
    return "unsure"


class Classifier:
    """Scores and trains messages against a jdmail.bayes.store.TokenStore (blocking:
    the server runs these methods on its thread pool)."""

    def __init__(self, store, params=None):
        self.store = store
        self.params = params or Params()

    def tokens(self, data):
        return tokenize(data, bigrams=self.params.bigrams)

    def score(self, data, owners=(GLOBAL,)):
        """Score a raw message with the first of ``owners`` whose table has at least
        ``min_trained`` spam and ham messages (a user's own, then the global one)."""
        return self.score_tokens(self.tokens(data), owners)

    def score_tokens(self, tokens, owners=(GLOBAL,)):
        p = self.params
        for owner in owners:
            nspam, nham = self.store.totals(owner)
            if nspam >= p.min_trained and nham >= p.min_trained:
                break
        else:
            return Score(0.5, "unsure", 0, owners[-1] if owners else GLOBAL, trained=False)
        ids = {token_id(t): t for t in tokens}
        counts = self.store.counts(ids, owner)
        probs = []
        for tid in ids:
            spam, ham = counts.get(tid, (0, 0))
            f = word_prob(spam, ham, nspam, nham, p.s, p.x)
            if abs(f - 0.5) >= p.min_strength:
                probs.append(f)
        probs.sort(key=lambda f: -abs(f - 0.5))
        probs = probs[:p.max_tokens]
        value = combine(probs)
        return Score(value, label_for(value, p), len(probs), owner)

    def learn(self, data, is_spam, owner=GLOBAL):
        """Train one raw message as spam or ham for ``owner``. A message trained before
        with the other label is untrained first; trained with the same: nothing.
        Returns True when the tables changed."""
        return self.learn_many([(data, is_spam)], owner) > 0

    def learn_many(self, messages, owner=GLOBAL):
        """Train [(raw bytes, is_spam)] in one transaction; returns how many changed
        the tables (a message already trained with its label counts 0)."""
        deltas, dspam, dham, seen, forget = {}, 0, 0, [], []
        changed = 0
        pending = {}
        for data, is_spam in messages:
            label = "spam" if is_spam else "ham"
            key = digest(data)
            before = pending.get(key) or self.store.seen(key, owner)
            if before == label:
                continue
            tokens = [token_id(t) for t in self.tokens(data)]
            if before is not None:          # retrain: take the old label back
                sign_s, sign_h = (-1, 0) if before == "spam" else (0, -1)
                self._add(deltas, tokens, sign_s, sign_h)
                dspam += sign_s
                dham += sign_h
            add_s, add_h = (1, 0) if is_spam else (0, 1)
            self._add(deltas, tokens, add_s, add_h)
            dspam += add_s
            dham += add_h
            pending[key] = label
            changed += 1
        if changed:
            seen = list(pending.items())
            self.store.update(deltas, dspam, dham, owner, seen=seen, forget=forget)
        return changed

    @staticmethod
    def _add(deltas, tokens, ds, dh):
        for t in tokens:
            s, h = deltas.get(t, (0, 0))
            deltas[t] = (s + ds, h + dh)
