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

from dptext.transforms.audit import AUDIT_SIZES, audit_subsets
from dptext.transforms.index_build import candidate_order
from dptext.transforms.mechanisms.base import InfeasibleEpsilonError, Mechanism, check_epsilon_range, largest_epsilon
from dptext.transforms.mechanisms.candidates import (
    distant_words,
    poisson_tail_log_ratio_bound,
    truncated_poisson,
    truncated_poisson_pmf,
)
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Claim, Guarantee

NAME = "truncated_gumbel"
# Above this Dmax / b the noise term E = exp(-g / b) reaches exp(80) ~ 5.5e34, near float32's range:
# scores are then compared in float64.
FLOAT32_SCALE_LIMIT = 80.0


_TAIL_STEP = 30.0
# Below this width the inverse CDF from one float64 uniform reaches every E up to e_hi: 1 - span u
# never falls below exp(-20) ~ 2e-9, where consecutive uniforms (2^-53 apart) still move E by under
# 1e-7 (the float32 draw of old stopped at width ~ 5.6, where 2^-24 apart they moved it by 1).
# It is three times faster than the unbounded-exponential form the wider ranges need.
_NARROW_WIDTH = 20.0


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
    if epsilon <= floor:  # the same condition as a > 0 and a Dmin > 1, without rounding at the edge
        raise InfeasibleEpsilonError(
            f"epsilon {epsilon:g} is infeasible for truncated_gumbel on this index "
            f"(n={n}, Dmin={dmin:.6g}); the smallest feasible epsilon is {floor:.6g} "
            f"(= (2 (1 + ln n) + 3) / Dmin); choose a larger epsilon",
            floor,
        )
    w0 = float(lambertw(2 * a * dmax, 0).real)
    # ln(a Dmin) = ln(1 + (eps - floor) Dmin / 3): positive for every eps above the floor, where
    # a Dmin itself may round to 1 (b would divide by 0).
    return 2 * dmax / min(w0, math.log1p((epsilon - floor) * dmin / 3))


def epsilon_of_scale(b: float, n: int, dmin: float, dmax: float) -> float:
    """Inverse of gumbel_scale: eps(b) = [2 (1 + ln n) + 3 exp(2 Dmax / b) max(1, Dmin / b)] / Dmin."""
    return (2 * (1 + math.log(n)) + 3 * math.exp(2 * dmax / b) * max(1.0, dmin / b)) / dmin


@dataclass(frozen=True)
class GumbelCalibration:
    """The paper's calibration of the Gumbel scale b to epsilon on a vocabulary (n, Dmin, Dmax)."""

    epsilon: float
    n: int
    dmin: float
    dmax: float
    b: float = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "b", gumbel_scale(self.epsilon, self.n, self.dmin, self.dmax))

    @property
    def poisson_rate(self) -> float:
        return math.log(self.n)


class TruncatedGumbel(Mechanism):
    name = NAME

    def __init__(self, index, epsilon: float):
        super().__init__(index, epsilon)
        if self.epsilon > largest_epsilon(index.dmax):  # below the floor: gumbel_scale says so
            check_epsilon_range(
                NAME, self.epsilon, smallest_feasible_epsilon(index.n, index.dmin), largest_epsilon(index.dmax), ""
            )
        self.gumbel = GumbelCalibration(self.epsilon, index.n, index.dmin, index.dmax)
        self._table_ids = index.neighbour_ids
        self._table_distances = index.neighbour_distances  # memory-mapped: shared by processes
        # Scores E exp(-d / b) are compared in float32 where it resolves them: just above the
        # feasibility floor b grows without bound and the noise and the weights differ by less than
        # float32 resolves (Dmax / b < 1e-3); far above it E reaches exp(Dmax / b), beyond float32's
        # range once Dmax / b > 80. Both ends use float64.
        t = self.gumbel.dmax / self.gumbel.b
        self._dtype = np.float32 if 1e-3 <= t <= FLOAT32_SCALE_LIMIT else np.float64
        self._minus_inv_b = self._dtype(-1.0 / self.gumbel.b)
        # Gumbel(0, b) restricted to [-Dmax, Dmax] is g = -b ln E with E ~ Exponential(1)
        # restricted to [exp(-Dmax / b), exp(Dmax / b)], whose width is 2 sinh(Dmax / b).
        self._e_lo = math.exp(-t)
        self._e_width = 2.0 * math.sinh(t)
        self._e_span = -math.expm1(-self._e_width)  # P(E in range | E > e_lo)
        self._log_span = math.log(self._e_span)
        # Groups of tokens by k (upper edges); the last edge is the table's K, beyond it exact search.
        K = index.neighbours
        self._group_edges = np.array(sorted({min(e, K) for e in (11, 19)} | {K}))

    def params(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "b": self.gumbel.b,
            "poisson_rate": self.gumbel.poisson_rate,
            "k_support": [1, self.index.n - 1],
            "table_neighbours": self.index.neighbours,
            "gumbel_truncation": [-self.gumbel.dmax, self.gumbel.dmax],
        }

    def truncated_exponential(self, rng: np.random.Generator, shape) -> np.ndarray:
        """E ~ Exponential(1) restricted to [e_lo, e_hi] = [exp(-Dmax/b), exp(Dmax/b)], exactly, in float64.

        E = e_lo - ln(1 - span u), u uniform in float64, is the inverse CDF. When the range is narrow
        (width < _NARROW_WIDTH) 1 - span u >= exp(-20) and that formula is accurate as it stands. When
        it is wide, the lower tail of the noise (E near e_hi) is where 1 - span u nears 1 - span =
        exp(-width), far below the spacing of any uniform u (a float32 u stopped E at 16.6, i.e. the
        noise at -2.81 b). There, with 1 - u = exp(-X), X ~ Exponential(1) (unbounded),
        1 - span u = exp(-width) + span exp(-X) and E = e_lo - ln(span) + X - ln(1 + exp(X - width -
        ln span)): every value up to e_hi is reached.
        """
        if self._e_width < _NARROW_WIDTH:
            e = np.log1p(rng.random(shape) * -self._e_span)
            np.subtract(self._e_lo, e, out=e)
            return e.astype(self._dtype, copy=False)
        x = unbounded_exponential(rng, shape)
        e = x + (self._e_lo - self._log_span)
        # ln(1 + exp(X - c)) < e^-40 (below float64's resolution of E >= X) unless X > c - 40.
        c = self._e_width + self._log_span
        if c < 60.0:  # X > c - 40 is common: every draw
            x -= c
            e -= np.logaddexp(0.0, x, out=x)
        else:  # only the draws in the far tail (probability < e^-20)
            clamp = np.flatnonzero(x.reshape(-1) > c - 40.0)
            if clamp.size:
                e.reshape(-1)[clamp] -= np.logaddexp(0.0, x.reshape(-1)[clamp] - c)
        return e.astype(self._dtype, copy=False)

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = truncated_poisson(rng, self.gumbel.poisson_rate, 1, self.index.n - 1, len(ids))
        out = np.empty(len(ids), dtype=np.int32)
        # Tokens are grouped by how many candidates they need, so few columns are drawn in vain.
        group = np.searchsorted(self._group_edges, k)
        for g in range(len(self._group_edges) + 1):
            rows = np.flatnonzero(group == g)
            if not rows.size:
                continue
            if g < len(self._group_edges):
                out[rows] = self._perturb_from_table(ids[rows], k[rows], rng)
            else:  # k beyond the table: P ~ 1e-25 for the default
                for word in np.unique(ids[rows]):  # one exact search per distinct word
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
        scores = dist[None, :] - self.gumbel.b * np.log(e)
        scores[np.arange(len(cand))[None, :] > k[:, None]] = np.inf
        return cand[np.argmin(scores, axis=1)]

    def _perturb_exact(self, word_id: int, k: int, rng) -> int:
        cand, dist = self.index.exact_neighbours(word_id, k)
        e = self.truncated_exponential(rng, len(cand)).astype(np.float64)
        return int(cand[np.argmin(dist - self.gumbel.b * np.log(e))])

    def compute_guarantee(self) -> Guarantee:
        """What truncated_gumbel may claim: the paper's parameter next to the audited figures, and the
        lower bound on the whole vocabulary's worst-case log-ratio that follows from the Poisson k."""
        audited = audit_truncated_gumbel_subsets(self.index, self.epsilon)
        worst = max(audited, key=lambda r: r["worst_log_ratio"])
        near = max(audited, key=lambda r: r["worst_log_ratio_within_typical_candidates"])
        delta = max(r["max_delta_at_rate_times_distance"] for r in audited)
        n, eps, dmax = self.index.n, self.epsilon, self.index.dmax
        bound = poisson_tail_log_ratio_bound(n) if n > 2 else -math.inf
        head, distant = distant_words(n, eps, dmax, bound, delta)
        whole = (
            f" Over this vocabulary of n = {n} words the worst-case log-ratio is at least {bound:.4g}: a word "
            f"ranked last among w's {n - 1} others is w's candidate only when k = {n - 1} (-ln P(k = n - 1) - "
            "ln n)."
            if 0 < bound <= eps * dmax
            else ""
        )  # above it, the first sentence says so
        return Guarantee(
            mechanism=NAME,
            kind="local (audited); no vocabulary-wide DP bound",
            rate=None,
            basis="audited (local figures only)",
            worst_case_log_ratio_at_least=bound if bound > 0 else None,
            claimed=Claim(
                "the paper states epsilon-DP from this calibration of b; its proof is not reproduced in "
                "dptext's specification",
                {"epsilon": eps, "b": self.gumbel.b},
            ),
            audited=audited,
            statement=(
                f"{head} An exact audit at the same relative epsilon on vocabularies of "
                f"{', '.join(str(r['n']) for r in audited)} words drawn from this embedding found a worst-case "
                f"log-ratio of {worst['worst_log_ratio']:.3g} (n={worst['n']}; the subset's epsilon x Dmin is "
                f"{worst['claimed_epsilon_times_dmin']:.3g}, epsilon x Dmax "
                f"{worst['claimed_epsilon_times_dmax']:.3g}), {near['worst_log_ratio_within_typical_candidates']:.3g} "
                f"between words among each other's {near['typical_candidates']} nearest (n={near['n']}; that "
                f"subset's epsilon x Dmin is {near['claimed_epsilon_times_dmin']:.3g}), and a hockey-stick delta up "
                f"to {delta:.3g} at epsilon x distance. dptext claims no vocabulary-wide epsilon-DP." + whole
            ),
            per_token_pure_epsilon=None,
            not_protected=NOT_PROTECTED + (distant,),
        )


# ---- the exact output distribution (the test oracle) and its audit ----------------------------------
# P[M(w) = c] = sum_k P(k) integral f_c(x) prod_{c' != c in C_k} (1 - F_c'(x)) dx, by Gauss-Legendre
# quadrature between the breakpoints d(w, c) +- Dmax where the integrand is smooth.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(48)


def _gumbel_pieces(z: np.ndarray, b: float, dmax: float):
    """Density and survival of Gumbel(0, b) restricted to [-dmax, dmax], at offsets z.

    The survival is computed as G(dmax) (1 - G(z) / G(dmax)) with expm1, so it keeps its
    relative accuracy near the upper end where the integrand divides by it.
    """
    lo, hi = math.exp(-math.exp(dmax / b)), math.exp(-math.exp(-dmax / b))  # G(-dmax), G(dmax)
    mass = hi - lo
    inside = np.abs(z) <= dmax
    t = np.exp(-z / b)
    density = np.where(inside, t * np.exp(-t) / b / mass, 0.0)
    above = -hi * np.expm1(math.exp(-dmax / b) - t)  # G(dmax) - G(z)
    survival = np.where(z < -dmax, 1.0, np.where(z > dmax, 0.0, above / mass))
    return density, np.clip(survival, 0.0, 1.0)


def truncated_gumbel_distribution(dist: np.ndarray, b: float, dmax: float, lam: float | None = None) -> np.ndarray:
    """Exact P[M(w) = c] for every input w (row) and output c (column)."""
    n = len(dist)
    lam = math.log(n) if lam is None else lam
    pk = truncated_poisson_pmf(lam, n)
    out = np.zeros((n, n))
    for w in range(n):
        order = candidate_order(dist[w], w)
        d = dist[w, order]
        edges = np.unique(np.concatenate((d - dmax, d + dmax)))
        half = np.diff(edges)[:, None] / 2
        x = (edges[:-1, None] + half * (_NODES[None, :] + 1)).ravel()
        wx = (half * _WEIGHTS[None, :]).ravel()
        density, survival = _gumbel_pieces(x[None, :] - d[:, None], b, dmax)  # (rank, node)
        running = np.cumprod(survival, axis=0)  # prod_{i<=k} S_i
        # T_j = sum_{k >= j} P(k) prod_{i<=k} S_i; then P[j] = integral f_j / S_j * T_j.
        tail = np.cumsum((pk[:, None] * running)[::-1], axis=0)[::-1]
        ratio = np.divide(density, survival, out=np.zeros_like(density), where=survival > 0)
        out[w, order] = (ratio * tail) @ wx
    return out


def audit_truncated_gumbel_subsets(index, epsilon: float, sizes=AUDIT_SIZES, seed: int = 0) -> list[dict]:
    """Exact audit on random vocabulary subsets, at the same multiple of each subset's
    feasibility floor as epsilon is of the full index's (the calibration the paper prescribes)."""
    relative = epsilon / smallest_feasible_epsilon(index.n, index.dmin)

    def audit_one(dist):
        dmin, dmax = float(dist[dist > 0].min()), float(dist.max())
        eps = relative * smallest_feasible_epsilon(len(dist), dmin)
        b = gumbel_scale(eps, len(dist), dmin, dmax)
        row = {
            "epsilon": eps,
            "relative_to_floor": relative,
            "dmin": dmin,
            "dmax": dmax,
            "b": b,
            "claimed_epsilon_times_dmin": eps * dmin,
            "claimed_epsilon_times_dmax": eps * dmax,
        }
        return row, truncated_gumbel_distribution(dist, b, dmax), eps

    return audit_subsets(index, sizes, seed, audit_one)
