"""Candidate sets "the word and its k nearest neighbours, k ~ Poisson(ln n) restricted to [1, n - 1]"
(truncated_gumbel; knn_exponential with Poisson k): the law of k, its sampler, and what it implies
for the guarantee over a whole vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln


def truncated_poisson(rng: np.random.Generator, lam: float, low: int, high: int, size: int) -> np.ndarray:
    """Poisson(lam) conditioned on low <= k <= high: draw again for the draws outside.

    Redraws are batched (one call per round for all rejected draws, not a loop per token).
    """
    if low > high:
        raise ValueError(f"empty support [{low}, {high}]")
    k = rng.poisson(lam, size)
    bad = np.flatnonzero((k < low) | (k > high))
    while bad.size:
        k[bad] = rng.poisson(lam, bad.size)
        bad = bad[(k[bad] < low) | (k[bad] > high)]
    return k


def truncated_poisson_pmf(lam: float, n: int) -> np.ndarray:
    """P(k) for k = 0..n-1 of Poisson(lam) conditioned on 1 <= k <= n - 1."""
    k = np.arange(n)
    pmf = np.exp(k * math.log(lam) - lam - gammaln(k + 1))
    pmf[0] = 0.0
    return pmf / pmf.sum()


def poisson_tail_log_ratio_bound(n: int) -> float:
    """A lower bound on the worst-case log-ratio of a mechanism whose candidates are the word and its
    k nearest, k ~ Poisson(ln n) restricted to [1, n - 1] (truncated_gumbel; knn_exponential with
    Poisson k), over a whole vocabulary of n words.

    Take w and y, the last word in w's candidate order: y is w's candidate only when k = n - 1, so
    P[M(w) = y] <= P(k = n - 1). y is its own first candidate, at distance 0 and noise or weight
    exchangeable with the others', so P[M(y) = y] >= 1 / (k + 1) >= 1 / n. Hence
    max ln P[M(y) = y] / P[M(w) = y] >= -ln P(k = n - 1) - ln n, in logs (P(k = n - 1) underflows).
    """
    from scipy.special import gammainc  # P(k > n - 1) = gammainc(n, lam); scipy.stats costs 20 MB to import

    lam = math.log(n)
    log_mass = math.log1p(-math.exp(-lam) - float(gammainc(n, lam)))  # P(1 <= k <= n - 1)
    log_last = (n - 1) * math.log(lam) - lam - float(gammaln(n)) - log_mass  # ln P(k = n - 1)
    return -log_last - math.log(n)


def distant_words(n: int, eps: float, dmax: float, bound: float, delta: float) -> tuple[str, str]:
    """The statement's sentence on distant words and the not_protected item, each true for the figures
    at hand: the lower bound on the whole vocabulary's worst log-ratio (poisson_tail_log_ratio_bound)
    when it exceeds epsilon x Dmax (so metric DP at rate epsilon fails), else the audit's hockey-stick
    delta at epsilon x distance when it is large, else only that no bound is proved."""
    if bound > eps * dmax:
        why = (
            f"over this vocabulary of n = {n} words the worst-case log-ratio is at least {bound:.4g}, above "
            f"epsilon x Dmax = {eps * dmax:.4g} (a word ranked last among w's {n - 1} others is w's candidate "
            f"only when k = {n - 1})"
        )
    elif delta >= 0.5:
        why = (
            "in the audit the outputs of far-apart words are nearly disjoint (hockey-stick delta up to "
            f"{delta:.3g} at epsilon x distance)"
        )
    else:
        return (
            "Protection is at best local: the candidates are a word's nearest neighbours, and dptext proves no "
            "bound between distant words.",
            "distant words: dptext proves no bound between them",
        )
    return f"Protection is local: distant words are not hidden from each other: {why}.", f"distant words: {why}"
