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

from dptext.transforms.mechanisms.base import (InfeasibleEpsilonError, as_ids, check_epsilon, check_epsilon_range,
                                        largest_epsilon, register, truncated_poisson)

NAME = "truncated_gumbel"
# Above this Dmax / b the noise term E = exp(-g / b) reaches exp(80) ~ 5.5e34, near float32's range:
# scores are then compared in float64.
FLOAT32_SCALE_LIMIT = 80.0


_TAIL_STEP = 30.0


def unbounded_exponential(rng: np.random.Generator, shape) -> np.ndarray:
    """Exponential(1) draws (float64) whose tail is not cut where the generator's uniforms run out.

    numpy's ziggurat ends near 44 (its tail uses one 53-bit uniform). Exponentials are memoryless:
    X given X > 30 is 30 + a fresh Exponential(1), so every draw above 30 is replaced by one, again
    and again (each level has probability e^-30 ~ 1e-13): the support has no end.
    """
    x = rng.standard_exponential(shape)
    flat = x.reshape(-1)
    deep, level = np.flatnonzero(flat > _TAIL_STEP), _TAIL_STEP
    while deep.size:
        fresh = rng.standard_exponential(deep.size)
        flat[deep] = level + fresh
        deep, level = deep[fresh > _TAIL_STEP], level + _TAIL_STEP
    return x


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
    # ln(a Dmin) = ln(1 + (eps - floor) Dmin / 3): positive for every eps above the floor, where
    # a Dmin itself may round to 1 (b would divide by 0).
    return 2 * dmax / min(w0, math.log1p((epsilon - floor) * dmin / 3))


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
        if check_epsilon(epsilon) > largest_epsilon(index.dmax):      # below the floor: gumbel_scale says so
            check_epsilon_range(NAME, epsilon, smallest_feasible_epsilon(index.n, index.dmin),
                                largest_epsilon(index.dmax), "")
        self.p = TruncatedGumbelParams(epsilon, index.n, index.dmin, index.dmax)
        self.epsilon = self.p.epsilon
        self._table_ids = index.neighbour_ids
        self._table_distances = index.neighbour_distances   # memory-mapped: shared by processes
        # Scores E exp(-d / b) are compared in float32 where it resolves them: just above the
        # feasibility floor b grows without bound and the noise and the weights differ by less than
        # float32 resolves (Dmax / b < 1e-3); far above it E reaches exp(Dmax / b), beyond float32's
        # range once Dmax / b > 80. Both ends use float64.
        t = self.p.dmax / self.p.b
        self._dtype = np.float32 if 1e-3 <= t <= FLOAT32_SCALE_LIMIT else np.float64
        self._minus_inv_b = self._dtype(-1.0 / self.p.b)
        # Gumbel(0, b) restricted to [-Dmax, Dmax] is g = -b ln E with E ~ Exponential(1)
        # restricted to [exp(-Dmax / b), exp(Dmax / b)], whose width is 2 sinh(Dmax / b).
        self._e_lo = math.exp(-t)
        self._e_width = 2.0 * math.sinh(t)
        self._e_span = -math.expm1(-self._e_width)            # P(E in range | E > e_lo)
        self._log_span = math.log(self._e_span)
        # Groups of tokens by k (upper edges); the last edge is the table's K, beyond it exact search.
        K = index.neighbours
        self._group_edges = np.array(sorted({min(e, K) for e in (11, 19)} | {K}))

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "b": self.p.b, "poisson_rate": self.p.poisson_rate,
                "k_support": [1, self.index.n - 1], "table_neighbours": self.index.neighbours,
                "gumbel_truncation": [-self.p.dmax, self.p.dmax]}

    def truncated_exponential(self, rng: np.random.Generator, shape) -> np.ndarray:
        """E ~ Exponential(1) restricted to [e_lo, e_hi] = [exp(-Dmax/b), exp(Dmax/b)], exactly, in float64.

        E = e_lo - ln(1 - span u), u uniform, is the inverse CDF. When the range is narrow (width < 1)
        1 - span u >= 1/e and that formula is accurate as it stands. When it is wide, the lower tail of
        the noise (E near e_hi) is where 1 - span u nears 1 - span = exp(-width), far below the spacing
        of any uniform u (a float32 u stopped E at 16.6, i.e. the noise at -2.81 b). There, with
        1 - u = exp(-X), X ~ Exponential(1) (unbounded), 1 - span u = exp(-width) + span exp(-X) and
        E = e_lo - ln(span) + X - ln(1 + exp(X - width - ln span)): every value up to e_hi is reached.
        """
        if self._e_width < 1.0:
            e = np.log1p(rng.random(shape) * -self._e_span)
            np.subtract(self._e_lo, e, out=e)
            return e.astype(self._dtype, copy=False)
        x = unbounded_exponential(rng, shape)
        e = x + (self._e_lo - self._log_span)
        # ln(1 + exp(X - c)) < e^-40 (below float64's resolution of E >= X) unless X > c - 40.
        c = self._e_width + self._log_span
        if c < 60.0:                       # X > c - 40 is common: every draw
            x -= c
            e -= np.logaddexp(0.0, x, out=x)
        else:                              # only the draws in the far tail (probability < e^-20)
            clamp = np.flatnonzero(x.reshape(-1) > c - 40.0)
            if clamp.size:
                e.reshape(-1)[clamp] -= np.logaddexp(0.0, x.reshape(-1)[clamp] - c)
        return e.astype(self._dtype, copy=False)

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
                for word in np.unique(ids[rows]):        # one exact search per distinct word
                    same = rows[ids[rows] == word]
                    out[same] = self._perturb_exact_rows(int(word), k[same], rng)
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

    def _perturb_exact_rows(self, word_id: int, k: np.ndarray, rng) -> np.ndarray:
        """Tokens of one word whose k exceeds the table: candidates from one exact search, each token's
        own first k + 1 of them, noise drawn as in the table path."""
        cand, dist = self.index.exact_neighbours(word_id, int(k.max()))
        e = self.truncated_exponential(rng, (len(k), len(cand))).astype(np.float64)
        scores = dist[None, :] - self.p.b * np.log(e)
        scores[np.arange(len(cand))[None, :] > k[:, None]] = np.inf
        return cand[np.argmin(scores, axis=1)]

    def _perturb_exact(self, word_id: int, k: int, rng) -> int:
        cand, dist = self.index.exact_neighbours(word_id, k)
        e = self.truncated_exponential(rng, len(cand)).astype(np.float64)
        return int(cand[np.argmin(dist - self.p.b * np.log(e))])

    def guarantee(self) -> dict:
        from dptext.transforms.audit import truncated_gumbel_guarantee

        return truncated_gumbel_guarantee(self)


@register(NAME)
def create(index, epsilon: float) -> TruncatedGumbel:
    return TruncatedGumbel(index, epsilon)
