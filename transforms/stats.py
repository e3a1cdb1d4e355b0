"""Privacy statistics of a mechanism on an index (MECHANISMS.md section 5): N_w, the probability
that a word comes out unchanged, and S_w, the number of distinct outputs in S draws, for every
vocabulary word or a uniform sample; and the epsilon whose median N_w reaches a target.

Both depend only on the embedding and the mechanism, never on a corpus. They are Monte Carlo
estimates through the mechanism's own batched perturb. Which words are sampled and the draws use
a fixed seed: these are properties of the mechanism published as statistics, not privatized
outputs, and common random numbers make the calibration's estimates of different epsilons
comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms import mechanisms
from dptext.transforms.errors import DptextError, ParameterError
from dptext.transforms.mechanisms.base import InfeasibleEpsilonError

PERCENTILES = (5, 25, 50, 75, 95)
TOKENS_PER_CALL = 65536


@dataclass(frozen=True)
class WordStatistics:
    epsilon: float
    words: np.ndarray  # vocabulary ids
    unchanged: np.ndarray  # N_w estimate per word: fraction of the draws equal to w
    distinct: np.ndarray  # S_w per word: distinct outputs among the draws
    draws: int

    def summary(self) -> dict:
        """Percentiles and mean over words of N_w and S_w, with Monte Carlo standard errors."""
        n_w, s_w = self.unchanged, self.distinct
        # Binomial error of one word's N_w is sqrt(p (1 - p) / S); the median's, by the order-statistic
        # approximation, is the spread of N_w over words times sqrt(pi / 2) / sqrt(words), plus that.
        word_se = float(np.sqrt(np.mean(n_w * (1 - n_w)) / self.draws))
        spread = float(np.std(n_w)) if len(n_w) > 1 else 0.0
        return {
            "epsilon": self.epsilon,
            "words": int(len(self.words)),
            "draws": self.draws,
            "unchanged": {**{f"p{q}": float(np.percentile(n_w, q)) for q in PERCENTILES}, "mean": float(n_w.mean())},
            "distinct": {**{f"p{q}": float(np.percentile(s_w, q)) for q in PERCENTILES}, "mean": float(s_w.mean())},
            "unchanged_word_standard_error": word_se,
            "unchanged_median_standard_error": math.sqrt(
                word_se**2 / max(len(n_w), 1) + math.pi / 2 * spread**2 / max(len(n_w), 1)
            ),
        }


def sample_words(n: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """Every word (sample None or >= n) or a uniform sample without replacement, sorted."""
    if not sample or sample >= n:
        return np.arange(n, dtype=np.int32)
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False)).astype(np.int32)


def word_statistics(mech, words: np.ndarray, draws: int, rng: np.random.Generator) -> WordStatistics:
    """N_w and S_w of each word from `draws` outputs of the mechanism, in batches of many words."""
    if draws < 1:
        raise ParameterError(f"draws must be >= 1, got {draws}")
    words = np.asarray(words, dtype=np.int32)
    unchanged = np.empty(len(words))
    distinct = np.empty(len(words), dtype=np.int64)
    per_call = max(1, TOKENS_PER_CALL // draws)
    for s in range(0, len(words), per_call):
        chunk = words[s : s + per_call]
        out = mech.perturb(np.repeat(chunk, draws), rng).reshape(len(chunk), draws)
        unchanged[s : s + len(chunk)] = (out == chunk[:, None]).mean(axis=1)
        ordered = np.sort(out, axis=1)
        distinct[s : s + len(chunk)] = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)
    return WordStatistics(float(mech.epsilon), words, unchanged, distinct, draws)


def privacy_statistics(
    index,
    mechanism: str,
    epsilons,
    params: dict | None = None,
    sample: int | None = 1000,
    draws: int = 100,
    seed: int = 0,
) -> list[WordStatistics]:
    """N_w and S_w at each epsilon, for the same sampled words."""
    words = sample_words(index.n, sample, seed)
    return [
        word_statistics(
            mechanisms.create(mechanism, index, eps, **(params or {})), words, draws, np.random.default_rng([seed, i])
        )
        for i, eps in enumerate(epsilons)
    ]


class TargetUnreachable(DptextError, ValueError):
    """No epsilon in the bracket gives the target median N_w."""


def median_unchanged(index, mechanism: str, epsilon: float, words, draws: int, seed: int, params=None) -> float:
    mech = mechanisms.create(mechanism, index, epsilon, **(params or {}))
    return float(np.median(word_statistics(mech, words, draws, np.random.default_rng(seed)).unchanged))


def calibrate(
    index,
    mechanism: str,
    target: float,
    params: dict | None = None,
    low: float = 0.01,
    high: float = 10_000.0,
    sample: int = 300,
    draws: int = 100,
    seed: int = 0,
    rel_tol: float = 0.01,
) -> dict:
    """The epsilon whose median N_w reaches `target`, by bisection on ln(epsilon).

    Every evaluation uses the same words and the same seed (common random numbers), so the
    estimated median is a step function of epsilon that is monotone up to Monte Carlo noise; the
    result is reported with its estimate and standard error. Below a mechanism's feasible
    epsilon (truncated_gumbel) the bracket starts at the smallest feasible one.
    """
    if not 0 < target < 1:
        raise ParameterError(f"target median N_w must be in (0, 1), got {target}")
    words = sample_words(index.n, sample, seed)
    evaluations = []

    def at(eps):
        value = median_unchanged(index, mechanism, eps, words, draws, seed, params)
        evaluations.append({"epsilon": eps, "median_unchanged": value})
        return value

    try:
        mechanisms.create(mechanism, index, low, **(params or {}))
    except InfeasibleEpsilonError as err:
        low = max(low, err.smallest_feasible * (1 + 1e-9))
    lo_value, hi_value = at(low), at(high)
    if lo_value > target:
        raise TargetUnreachable(
            f"{mechanism}: median N_w is already {lo_value:.3g} at the smallest epsilon tried "
            f"({low:.4g}); targets below it are unreachable (reachable: {lo_value:.3g} to "
            f"{hi_value:.3g} for epsilon in [{low:.4g}, {high:.4g}])"
        )
    if hi_value < target:
        raise TargetUnreachable(
            f"{mechanism}: median N_w is only {hi_value:.3g} at epsilon {high:.4g}; the target "
            f"{target:g} is out of reach in [{low:.4g}, {high:.4g}] (reachable: {lo_value:.3g} to "
            f"{hi_value:.3g})"
        )
    lo, hi = math.log(low), math.log(high)
    while hi - lo > math.log1p(rel_tol):
        mid = (lo + hi) / 2
        if at(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    epsilon = math.exp(hi)
    final = word_statistics(
        mechanisms.create(mechanism, index, epsilon, **(params or {})), words, draws, np.random.default_rng(seed)
    ).summary()
    return {
        "mechanism": mechanism,
        "parameters": params or {},
        "target_median_unchanged": target,
        "epsilon": epsilon,
        "median_unchanged": final["unchanged"]["p50"],
        "median_standard_error": final["unchanged_median_standard_error"],
        "bracket": [math.exp(lo), math.exp(hi)],
        "words": len(words),
        "draws": draws,
        "seed": seed,
        "evaluations": evaluations,
    }
