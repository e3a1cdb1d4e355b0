"""distance_truncated_laplace: multivariate Laplace noise with its radius restricted to [0, R]
(Feyisetan et al., FLAIRS 2021, distance-based truncation; MECHANISMS.md section 3).

v = phi(w) + r x, x uniform on the sphere, r ~ Gamma(d, 1/eps) restricted to [0, R] (sampled
exactly, see restricted_gamma); the output is the word nearest to v. For d(w, w') = D < R it
is (eps D, delta(D))-DP with delta(D) = P(R - D < r <= R) / P(r <= R): the noisy vector of w has
density proportional to exp(-eps |z - phi(w)|) within R of phi(w), so the ratio to w' is at most
exp(eps D) wherever both densities are positive, and the mass where only w's is positive (z
within R of phi(w) but not of phi(w')) lies in the shell |z - phi(w)| > R - D. Words farther
apart than R are not protected: their noisy vectors can have disjoint supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc, gammaincinv, gammaln

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import parameter
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Guarantee
from dptext.transforms.mechanisms.multivariate_laplace import (
    RESOLUTION,
    MultivariateLaplace,
    check_search,
    search_k_parameter,
    search_parameter,
)

DEFAULT_RANK = 10
RADIUS_RULE = "radius must be a finite number > 0 (or 0 for the default), got {!r}"


def log_gamma_cdf(d: int, x: np.ndarray) -> np.ndarray:
    """ln P(d, x), the regularised lower incomplete gamma function, without underflow.

    gammainc underflows to 0 for x far below d (e^-709): there the series
    gamma(d, x) = x^d e^-x sum_k x^k / (d (d+1) ... (d+k)) is summed in logs instead.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    with np.errstate(divide="ignore"):
        direct = np.log(gammainc(d, x))
    small = ~np.isfinite(direct) & (x > 0)
    if small.any():
        xs = x[small]
        terms = np.cumsum(np.log(xs[:, None]) - np.log(d + np.arange(1, 2000))[None, :], axis=1)
        series = np.logaddexp.reduce(np.concatenate([np.zeros((len(xs), 1)), terms], axis=1), axis=1)
        direct[small] = d * np.log(xs) - xs - gammaln(d + 1) + series
    return direct


def restricted_gamma(rng: np.random.Generator, d: int, epsilon: float, R: float, size: int) -> np.ndarray:
    """r ~ Gamma(shape d, scale 1/eps) conditioned on r <= R, exactly.

    With x = eps R >= d - 1 the mass below R is not tiny and the inverse CDF is used directly. Below
    that (mass possibly under 1e-308), write r = R (1 - s): s has density proportional to
    exp((d - 1) ln(1 - s) + x s) on [0, 1], dominated by the Exponential(d - 1 - x) restricted to
    [0, 1] because ln(1 - s) <= -s; a proposal is accepted with exp((d - 1)(ln(1 - s) + s)) (close to
    1: s ~ 1 / (d - 1 - x)), and rejected ones are drawn again.
    """
    x = epsilon * R
    if d == 1:  # Exponential(eps) on [0, R]: r = R t, t = -ln(1 - u (1 - e^-x)) / x (t = u as x -> 0)
        u = rng.random(size)
        if x < 1e-300:  # eps R underflows: the density is flat on [0, R]
            return R * u
        return R * np.minimum(-np.log1p(u * np.expm1(-x)) / x, 1.0)
    if x >= d - 1:
        return gammaincinv(d, rng.random(size) * gammainc(d, x)) / epsilon
    rate = d - 1 - x
    out = np.empty(size)
    pending = np.arange(size)
    while pending.size:
        s = -np.log1p(-rng.random(pending.size) * -np.expm1(-rate)) / rate
        accept = rng.random(pending.size) < np.exp((d - 1) * (np.log1p(-s) + s))
        out[pending[accept]] = R * (1 - s[accept])
        pending = pending[~accept]
    return out


def default_radius(index) -> float:
    """The median over words of the distance to their 10th nearest neighbour (from the table)."""
    rank = min(DEFAULT_RANK, index.neighbours)
    return float(np.median(np.asarray(index.neighbour_distances[:, rank], dtype=np.float64)))


@dataclass(frozen=True)
class DistanceTruncatedLaplaceParams:
    radius: float = parameter(
        0.0, "largest noise radius R (0: the median distance from a word to its 10th nearest neighbour)"
    )
    search: str = search_parameter()
    search_k: int = search_k_parameter()

    def __post_init__(self):
        r = self.radius
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise ParameterError(RADIUS_RULE.format(r))
        check_search(self)


class DistanceTruncatedLaplace(MultivariateLaplace):
    name = "distance_truncated_laplace"
    Params = DistanceTruncatedLaplaceParams

    def prepare(self) -> None:
        """R first: the epsilon range depends on it."""
        index = self.index
        self.radius_rule = (
            "given" if self.p.radius else f"median distance to the {min(DEFAULT_RANK, index.neighbours)}th neighbour"
        )
        self.R = float(self.p.radius) or default_radius(index)
        if not (math.isfinite(self.R) and self.R > 0):
            raise ParameterError(RADIUS_RULE.format(self.R))
        if self.R <= index.dmin:
            raise ParameterError(
                f"radius R = {self.R:.6g} ({self.radius_rule}) does not exceed Dmin = "
                f"{index.dmin:.6g}: no two vocabulary words would be within R of each other, so no "
                f"pair would be protected; give --radius above {index.dmin:.6g}"
            )

    def epsilon_range(self) -> tuple[float, float, str]:
        """The noise radius never exceeds R: when float64 resolves a point R away, any epsilon; otherwise
        the multivariate Laplace bound (the radius reaches R only when epsilon is small)."""
        low, high, why = super().epsilon_range()
        if self.R * 2.0**-52 <= RESOLUTION * self.index.dmin:
            return math.ulp(0.0), high, ""
        return low, high, why

    def params(self) -> dict:
        return {
            **super().params(),
            "radius": f"Gamma(shape={self.index.d}, scale=1/epsilon) restricted to [0, R]",
            "R": self.R,
            "R_rule": self.radius_rule,
        }

    def radii(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return restricted_gamma(rng, self.index.d, self.epsilon, self.R, size)

    def delta(self, D) -> np.ndarray:
        """delta(D) = P(R - D < r <= R) / P(r <= R) = 1 - P(r <= R - D) / P(r <= R), for 0 <= D < R."""
        D = np.atleast_1d(np.asarray(D, dtype=np.float64))
        d, eps, R = self.index.d, self.epsilon, self.R
        if eps * R < 1e-250:
            # P(d, x) = x^d / d! (1 + O(x)) as x -> 0: the ratio tends to ((R - D) / R)^d, and eps (R - D)
            # may underflow to 0 before eps R does.
            log_ratio = d * np.log1p(-D / R)
        else:
            log_ratio = log_gamma_cdf(d, eps * (R - D)) - log_gamma_cdf(d, eps * R)[0]
        return np.clip(-np.expm1(log_ratio), 0.0, 1.0) + 0.0  # + 0.0: never print -0

    def compute_guarantee(self) -> Guarantee:
        eps, R = self.epsilon, self.R
        distances = sorted({D for D in (self.index.dmin, R / 4, R / 2, 3 * R / 4) if D < R})
        table = {f"{D:.4g}": {"epsilon": eps * D, "delta": float(x)} for D, x in zip(distances, self.delta(distances))}
        return Guarantee(
            mechanism=self.name,
            kind="(eps*D, delta(D))-DP for D < R",
            rate=eps,
            basis="computed (delta(D) in closed form)",
            statement=(
                f"For two vocabulary words at distance D < R = {R:.4g}: (epsilon x D, delta(D))-DP with "
                "delta(D) = P(R - D < r <= R) / P(r <= R), r ~ Gamma(d, 1/epsilon) restricted to [0, R] "
                f"(e.g. D = {distances[1]:.3g}: epsilon {eps * distances[1]:.3g}, delta "
                f"{table[f'{distances[1]:.4g}']['delta']:.3g}). Words farther apart than R are NOT "
                "protected from each other: their noisy vectors can have disjoint supports."
            ),
            delta_at_distance=table,
            per_token_pure_epsilon=None,
            confirmed_by=(
                "tests/test_continuous_mechanisms.py: the radius follows the restricted Gamma (KS), the "
                "direction is uniform, delta(D) agrees with direct integration"
            ),
            not_protected=NOT_PROTECTED + (f"words farther apart than R = {R:.4g}, and any pair only up to delta(D)",),
        )
