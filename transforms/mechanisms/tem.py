"""tem: the truncated exponential mechanism (Carvalho et al. 2021; MECHANISMS.md section 4).

gamma = (2 / eps) ln((1 - beta)(n - 1) / beta). Words within gamma of w are scored by their
distance, every farther word by gamma, and the output follows
P[M(w) = y] proportional to exp(-(eps / 2) min(d(w, y), gamma)) over the whole vocabulary: the
paper's Gumbel-max over the near words plus one "other" outcome (a uniform far word) is exactly
this distribution, which is sampled here without touching the whole vocabulary per token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.mechanisms.base import as_ids, check_epsilon, register
from dptext.transforms.mechanisms.vocabulary_exponential import sample_capped_exponential

NAME = "tem"
PARAMETERS = {"beta": "tem: the probability mass the paper's truncation threshold gamma leaves to the far words "
                      "(0 < beta < (n-1)/n); gamma = (2/eps) ln((1-beta)(n-1)/beta)"}


def tem_log_odds(n: int, beta: float) -> float:
    """ln((1 - beta)(n - 1) / beta), in pieces: (n - 1) / beta overflows for a tiny beta."""
    return math.log1p(-beta) + math.log(n - 1) - math.log(beta)


def tem_gamma(epsilon: float, n: int, beta: float) -> float:
    """gamma = (2 / eps) ln((1 - beta)(n - 1) / beta) (inf when 2 / eps overflows: no cap)."""
    return 2.0 / epsilon * tem_log_odds(n, beta)


@dataclass(frozen=True)
class TEMParams:
    epsilon: float
    n: int
    beta: float = 0.001

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < 1):
            raise ValueError(f"beta must be a number in (0, 1), got {self.beta!r}")
        if tem_gamma(self.epsilon, self.n, self.beta) <= 0:
            raise ValueError(f"beta {self.beta:g} gives no truncation threshold (gamma <= 0) for n={self.n}; "
                             f"beta must be below (n - 1) / n = {(self.n - 1) / self.n:.6g}")

    @property
    def gamma(self) -> float:
        return tem_gamma(self.epsilon, self.n, self.beta)


class TEM:
    name = NAME

    def __init__(self, index, epsilon: float, beta: float = 0.001):
        self.index = index
        self.p = TEMParams(epsilon, index.n, beta)
        self.epsilon = self.p.epsilon
        self.gamma = self.p.gamma

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "beta": self.p.beta, "gamma": self.gamma}

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        return sample_capped_exponential(self.index, ids, rng, self.epsilon, cap=self.gamma)

    def guarantee(self) -> dict:
        eps, dmax, gamma = self.epsilon, self.index.dmax, self.gamma
        # epsilon x gamma = 2 ln((1 - beta)(n - 1) / beta) exactly (gamma overflows for a tiny epsilon, and
        # epsilon x Dmax for a huge one): the bound is the smaller of the two.
        eps_gamma = 2.0 * tem_log_odds(self.index.n, self.p.beta)
        with np.errstate(over="ignore"):
            pure = min(float(np.float64(eps) * dmax), eps_gamma)
        cap = (f"never worse than epsilon * gamma = {eps_gamma:.4g} because distances beyond gamma = {gamma:.4g} "
               "all score alike" if gamma < dmax else
               f"gamma = {gamma:.4g} is at least Dmax = {dmax:.4g}, so the cap never binds on this vocabulary")
        return {
            "mechanism": NAME,
            "kind": "metric-DP",
            "rate": eps,
            "basis": "proved",
            "statement": (f"P[M(w)=y] <= exp({eps:g} * min(d(w, w'), {gamma:.4g})) * P[M(w')=y] for every pair of "
                          f"vocabulary words w, w' and every output y: metric DP at rate epsilon, {cap}."),
            "per_token_pure_epsilon": pure,
            "per_token_pure_epsilon_note": (f"vocabulary-wide: min(epsilon * Dmax, epsilon * gamma) = "
                                            f"min({eps:g} * {dmax:.6g}, {eps_gamma:.6g})"),
            "confirmed_by": ("tests/test_exponential_mechanisms.py: the sampler matches the closed form (chi-square) "
                             "and the exact audit finds every log-ratio <= epsilon * min(d(w, w'), gamma)"),
            "not_protected": ["out-of-vocabulary tokens (handled by the OOV policy)",
                              "document length, token positions and punctuation",
                              "which tokens are in the vocabulary"],
        }


@register(NAME)
def create(index, epsilon: float, beta: float = 0.001) -> TEM:
    return TEM(index, epsilon, beta)
