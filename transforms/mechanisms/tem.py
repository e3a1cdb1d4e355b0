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

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import Mechanism, parameter
from dptext.transforms.mechanisms.guarantee import Guarantee
from dptext.transforms.mechanisms.vocabulary_exponential import sample_capped_exponential

NAME = "tem"


def tem_log_odds(n: int, beta: float) -> float:
    """ln((1 - beta)(n - 1) / beta), in pieces: (n - 1) / beta overflows for a tiny beta."""
    return math.log1p(-beta) + math.log(n - 1) - math.log(beta)


def tem_gamma(epsilon: float, n: int, beta: float) -> float:
    """gamma = (2 / eps) ln((1 - beta)(n - 1) / beta) (inf when 2 / eps overflows: no cap)."""
    return 2.0 / epsilon * tem_log_odds(n, beta)


@dataclass(frozen=True)
class TEMParams:
    beta: float = parameter(
        0.001,
        "the probability mass the paper's truncation threshold gamma leaves to the far "
        "words (0 < beta < (n-1)/n); gamma = (2/eps) ln((1-beta)(n-1)/beta)",
    )

    def __post_init__(self):
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < 1):
            raise ParameterError(f"beta must be a number in (0, 1), got {self.beta!r}")


class TEM(Mechanism):
    name = NAME
    Params = TEMParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        n, beta = index.n, self.p.beta
        if tem_gamma(self.epsilon, n, beta) <= 0:
            raise ParameterError(
                f"beta {beta:g} gives no truncation threshold (gamma <= 0) for n={n}; "
                f"beta must be below (n - 1) / n = {(n - 1) / n:.6g}"
            )
        self.gamma = tem_gamma(self.epsilon, n, beta)

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "beta": self.p.beta, "gamma": self.gamma}

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_capped_exponential(self.index, ids, rng, self.epsilon, cap=self.gamma)

    def compute_guarantee(self) -> Guarantee:
        eps, dmax, gamma = self.epsilon, self.index.dmax, self.gamma
        # epsilon x gamma = 2 ln((1 - beta)(n - 1) / beta) exactly (gamma overflows for a tiny epsilon, and
        # epsilon x Dmax for a huge one): the bound is the smaller of the two.
        eps_gamma = 2.0 * tem_log_odds(self.index.n, self.p.beta)
        with np.errstate(over="ignore"):
            pure = min(float(np.float64(eps) * dmax), eps_gamma)
        cap = (
            f"never worse than epsilon * gamma = {eps_gamma:.4g} because distances beyond gamma = {gamma:.4g} "
            "all score alike"
            if gamma < dmax
            else f"gamma = {gamma:.4g} is at least Dmax = {dmax:.4g}, so the cap never binds on this vocabulary"
        )
        return Guarantee(
            mechanism=NAME,
            kind="metric-DP",
            rate=eps,
            basis="proved",
            statement=(
                f"P[M(w)=y] <= exp({eps:g} * min(d(w, w'), {gamma:.4g})) * P[M(w')=y] for every pair of "
                f"vocabulary words w, w' and every output y: metric DP at rate epsilon, {cap}."
            ),
            per_token_pure_epsilon=pure,
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: min(epsilon * Dmax, epsilon * gamma) = min({eps:g} * {dmax:.6g}, {eps_gamma:.6g})"
            ),
            confirmed_by=(
                "tests/test_exponential_mechanisms.py: the sampler matches the closed form (chi-square) "
                "and the exact audit finds every log-ratio <= epsilon * min(d(w, w'), gamma)"
            ),
        )
