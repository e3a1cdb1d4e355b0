"""Per-document privacy accounting and its composition (MECHANISMS.md section 5).

Each document yields one DocumentAccount (counts only, never text). Accounts are merged into a
CorpusAccount whose histogram of perturbed-token counts gives exact percentiles of the
per-document bound. Composition of per-token pure bounds: basic (a sum) and, at a chosen
delta, dp_accounting's privacy-loss-distribution composition of the same per-token events.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class DocumentAccount:
    tokens: int  # word tokens in the document
    perturbed: int  # in-vocabulary tokens that went through the mechanism
    changed: int  # perturbed tokens whose output word differs (a quality figure, not a guarantee)
    oov: int  # out-of-vocabulary tokens, handled by the OOV policy

    @classmethod
    def total(cls, parts) -> "DocumentAccount":
        """One document's account from the accounts of its chunks."""
        return cls(*(sum(getattr(p, f.name) for p in parts) for f in fields(cls)))


@dataclass
class CorpusAccount:
    documents: int = 0
    tokens: int = 0
    perturbed: int = 0
    changed: int = 0
    oov: int = 0
    perturbed_histogram: Counter = field(default_factory=Counter)  # perturbed-count -> documents

    def add(self, doc: DocumentAccount) -> "CorpusAccount":
        self.documents += 1
        self.tokens += doc.tokens
        self.perturbed += doc.perturbed
        self.changed += doc.changed
        self.oov += doc.oov
        self.perturbed_histogram[doc.perturbed] += 1
        return self

    def merge(self, other: "CorpusAccount") -> "CorpusAccount":
        self.documents += other.documents
        self.tokens += other.tokens
        self.perturbed += other.perturbed
        self.changed += other.changed
        self.oov += other.oov
        self.perturbed_histogram.update(other.perturbed_histogram)
        return self

    def perturbed_percentiles(self) -> dict:
        """Exact nearest-rank percentiles and the maximum of tokens perturbed per document."""
        return histogram_percentiles(self.perturbed_histogram, self.documents)


def histogram_percentiles(histogram, total: int) -> dict:
    """Exact nearest-rank p50/p90/p99 and the maximum of `total` values given as {value: count}."""
    if not total:
        return {}
    ordered = sorted(histogram.items())
    result = {}
    for q in PERCENTILES:
        rank = max(1, -(-q * total // 100))  # ceil(q/100 * total)
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= rank:
                result[f"p{q}"] = value
                break
    result["max"] = ordered[-1][0]
    return result


def basic_bound(tokens: int, per_token_epsilon: float) -> float:
    """Basic composition: tokens x per-token pure epsilon (a pure epsilon-DP bound)."""
    return tokens * per_token_epsilon


@functools.lru_cache(maxsize=256)
def composed_bound(tokens: int, per_token_epsilon: float, delta: float) -> float:
    """The smallest epsilon at `delta` for `tokens` self-composed pure per-token events.

    Exact, by the optimal composition theorem of pure DP (Kairouz, Oh, Viswanath 2015): the
    worst case is randomized response, whose privacy loss after T events is eps (T - 2l) with l
    ~ Binomial(T, q), q = 1 / (1 + e^eps), so delta(eps') = E[max(0, 1 - e^(eps' - loss))].
    This is the distribution dp_accounting's PLD discretizes (tests compare the two), but its
    grid grows with T x eps / step: 39 s and 3.4 GB for one 200,000-token document. Here the
    cost is O(sqrt(T)) per evaluation: only the binomial's central window is summed, and the
    mass left outside it (Hoeffding) is added to delta, so the result stays an upper bound.
    """
    if tokens == 0:
        return 0.0
    basic = basic_bound(tokens, per_token_epsilon)
    losses, log_p, outside = _randomized_response_losses(tokens, float(per_token_epsilon))

    def delta_at(target: float) -> float:
        above = losses > target
        return float(np.sum(np.exp(log_p[above]) * -np.expm1(target - losses[above]))) + outside

    if delta_at(0.0) <= delta:
        return 0.0
    low, high = 0.0, basic  # delta_at(basic) = outside <= delta (checked below)
    if delta_at(high) > delta:
        return basic
    for _ in range(200):  # bisection to float resolution; high stays valid
        middle = 0.5 * (low + high)
        if middle <= low or middle >= high:
            break
        if delta_at(middle) > delta:
            low = middle
        else:
            high = middle
    return float(high)


# Half-width of the summed window in standard deviations of l (at least): the mass outside is
# below 2 exp(-2 t^2 / T) <= 2 exp(-2 x 30^2 / 4) = 2 e^-450 (Hoeffding; sd <= sqrt(T) / 2).
_WINDOW_SDS = 30.0


def _randomized_response_losses(tokens: int, epsilon: float):
    """Privacy losses eps (T - 2l), their log-probabilities over a central window of l, and an
    upper bound on the probability mass outside the window."""
    from scipy.special import gammaln, xlog1py, xlogy  # binom.logpmf's formula; scipy.stats costs 20 MB

    q = 1.0 / (1.0 + math.exp(epsilon)) if epsilon < 700 else 0.0  # P[one event reports the "other" side]
    half = math.ceil(_WINDOW_SDS * math.sqrt(tokens) / 2) + 1
    mean = tokens * q
    first, last = max(0, math.floor(mean - half)), min(tokens, math.ceil(mean + half))
    l = np.arange(first, last + 1, dtype=np.float64)
    if q > 0:
        log_p = (
            gammaln(tokens + 1.0) - gammaln(l + 1.0) - gammaln(tokens - l + 1.0) + xlogy(l, q) + xlog1py(tokens - l, -q)
        )
    else:
        log_p = np.where(l == 0, 0.0, -np.inf)
    outside = 0.0
    if first > 0 or last < tokens:
        t = (
            min(mean - first, last - mean)
            if first > 0 and last < tokens
            else (mean - first if first > 0 else last - mean)
        )
        outside = 2.0 * math.exp(-2.0 * t * t / tokens)
    return epsilon * (tokens - 2.0 * l), log_p, outside
