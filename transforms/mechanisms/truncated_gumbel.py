"""truncated_gumbel: density-aware k-NN perturbation with truncated Gumbel noise (MECHANISMS.md 1).

Xu, Feyisetan, Aggarwal, Xu, Teissier, FLAIRS 2021. Each token picks k ~ Poisson(ln n) restricted
to [1, n - 1], adds Gumbel(0, b) noise truncated to [-Dmax, Dmax] to the distances from the word
to itself and its k nearest neighbours, and outputs the candidate with the smallest noisy distance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import lambertw

from transforms.mechanisms.base import InfeasibleEpsilonError, as_ids, check_epsilon, register, truncated_poisson

NAME = "truncated_gumbel"


def smallest_feasible_epsilon(n: int, dmin: float) -> float:
    """eps must exceed (2 (1 + ln n) + 3) / Dmin, i.e. a > 0 and a Dmin > 1."""
    return (2 * (1 + math.log(n)) + 3) / dmin


def gumbel_scale(epsilon: float, n: int, dmin: float, dmax: float) -> float:
    """b = 2 Dmax / min(W0(2 a Dmax), ln(a Dmin)) with a = (eps - 2 (1 + ln n) / Dmin) / 3."""
    a = (epsilon - 2 * (1 + math.log(n)) / dmin) / 3
    floor = smallest_feasible_epsilon(n, dmin)
    if epsilon <= floor:      # the same condition as a > 0 and a Dmin > 1, without rounding at the edge
        raise InfeasibleEpsilonError(
            f"epsilon {epsilon:g} is infeasible for truncated_gumbel on this index "
            f"(n={n}, Dmin={dmin:.6g}); the smallest feasible epsilon is {floor:.6g} "
            f"(= (2 (1 + ln n) + 3) / Dmin); choose a larger epsilon", floor)
    w0 = float(lambertw(2 * a * dmax, 0).real)
    return 2 * dmax / min(w0, math.log(a * dmin))


def epsilon_of_scale(b: float, n: int, dmin: float, dmax: float) -> float:
    """Inverse of gumbel_scale: eps(b) = [2 (1 + ln n) + 3 exp(2 Dmax / b) max(1, Dmin / b)] / Dmin."""
    return (2 * (1 + math.log(n)) + 3 * math.exp(2 * dmax / b) * max(1.0, dmin / b)) / dmin


@dataclass(frozen=True)
class TruncatedGumbelParams:
    epsilon: float
    n: int
    dmin: float
    dmax: float
    b: float = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "b", gumbel_scale(self.epsilon, self.n, self.dmin, self.dmax))

    @property
    def poisson_rate(self) -> float:
        return math.log(self.n)


class TruncatedGumbel:
    name = NAME

    def __init__(self, index, epsilon: float):
        self.index = index
        self.p = TruncatedGumbelParams(epsilon, index.n, index.dmin, index.dmax)
        self.epsilon = self.p.epsilon
        self._table_ids = index.neighbour_ids
        self._table_distances = index.neighbour_distances   # memory-mapped: shared by processes
        # Just above the feasibility floor b grows without bound: the noise and the weights then
        # differ by less than float32 resolves (Dmax / b < 1e-3), so those draws use float64.
        self._dtype = np.float32 if self.p.dmax / self.p.b >= 1e-3 else np.float64
        self._minus_inv_b = self._dtype(-1.0 / self.p.b)
        # Gumbel(0, b) restricted to [-Dmax, Dmax] is g = -b ln E with E ~ Exponential(1)
        # restricted to [exp(-Dmax / b), exp(Dmax / b)].
        self._e_lo = math.exp(-self.p.dmax / self.p.b)
        self._e_span = -math.expm1(-(math.exp(self.p.dmax / self.p.b) - self._e_lo))
        # Groups of tokens by k (upper edges); the last edge is the table's K, beyond it exact search.
        K = index.neighbours
        self._group_edges = np.array(sorted({min(e, K) for e in (11, 19)} | {K}))

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "b": self.p.b, "poisson_rate": self.p.poisson_rate,
                "k_support": [1, self.index.n - 1], "table_neighbours": self.index.neighbours,
                "gumbel_truncation": [-self.p.dmax, self.p.dmax]}

    def truncated_exponential(self, rng: np.random.Generator, shape) -> np.ndarray:
        """E ~ Exponential(1) restricted to [exp(-Dmax/b), exp(Dmax/b)] by inverse CDF."""
        # 1 - span * v is uniform on (1 - span, 1]; float32 np.log is vectorised (log1p is not).
        dtype = self._dtype
        u = rng.random(shape, dtype=dtype)
        u *= -dtype(self._e_span)
        u += dtype(1.0)
        np.log(u, out=u)
        return dtype(self._e_lo) - u

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        k = truncated_poisson(rng, self.p.poisson_rate, 1, self.index.n - 1, len(ids))
        out = np.empty(len(ids), dtype=np.int32)
        # Tokens are grouped by how many candidates they need, so few columns are drawn in vain.
        group = np.searchsorted(self._group_edges, k)
        for g in range(len(self._group_edges) + 1):
            rows = np.flatnonzero(group == g)
            if not rows.size:
                continue
            if g < len(self._group_edges):
                out[rows] = self._perturb_from_table(ids[rows], k[rows], rng)
            else:                              # k beyond the table: P ~ 1e-25 for the default
                for i in rows:
                    out[i] = self._perturb_exact(int(ids[i]), int(k[i]), rng)
        return out

    def _perturb_from_table(self, ids: np.ndarray, k: np.ndarray, rng) -> np.ndarray:
        # argmin(d - b ln E) == argmax(E exp(-d / b)); columns beyond a token's own k get score 0,
        # below every candidate's positive score.
        width = int(k.max()) + 1
        weights = self._table_distances[ids, :width].astype(self._dtype, copy=False) * self._minus_inv_b
        np.exp(weights, out=weights)
        scores = self.truncated_exponential(rng, (len(ids), width))
        scores *= weights
        scores *= np.arange(width)[None, :] <= k[:, None]
        col = np.argmax(scores, axis=1)
        return self._table_ids[ids, col]

    def _perturb_exact(self, word_id: int, k: int, rng) -> int:
        cand, dist = self.index.exact_neighbours(word_id, k)
        e = self.truncated_exponential(rng, len(cand)).astype(np.float64)
        return int(cand[np.argmin(dist - self.p.b * np.log(e))])

    def guarantee(self) -> dict:
        from transforms.audit import truncated_gumbel_guarantee

        return truncated_gumbel_guarantee(self)


@register(NAME)
def create(index, epsilon: float) -> TruncatedGumbel:
    return TruncatedGumbel(index, epsilon)
