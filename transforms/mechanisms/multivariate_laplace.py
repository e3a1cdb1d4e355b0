"""multivariate_laplace: the metric-DP baseline (Feyisetan et al. WSDM 2020; MECHANISMS.md 2).

v = phi(w) + r x with x uniform on the unit sphere and r ~ Gamma(d, 1/eps); the output is the
vocabulary word nearest to v. The search is post-processing, so Annoy's approximate search keeps
the guarantee; the exact search is a batched matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammainccinv

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import (
    Mechanism,
    check_epsilon_range,
    largest_epsilon,
    parameter,
    unit_directions,
)
from dptext.transforms.mechanisms.guarantee import Guarantee

SEARCHES = ("auto", "annoy", "exact")
SEARCH_K_MAX = 2**31 - 1
# "auto" searches exactly up to this many vocabulary entries (n * d): on the default embedding
# (10M) the exact search is faster than an Annoy search with comparable recall (README).
AUTO_EXACT_LIMIT = 50_000_000
# The nearest-word search resolves the noisy point phi(w) + z in float64, whose coordinates carry
# about 2^-52 |z| of rounding. An epsilon whose noise radius (at its 1 - 1e-12 quantile) makes that
# more than RESOLUTION x Dmin is refused: rounding, not the mechanism, would decide the nearest word
# (and from |z| ~ 1e38 on the float32 screen of the search overflows).
RESOLUTION = 1e-6
RADIUS_QUANTILE = 1e-12


def largest_radius_factor(d: int) -> float:
    """The 1 - 1e-12 quantile of Gamma(d, 1): the noise radius is at most this / epsilon but for 1e-12."""
    return float(gammainccinv(d, RADIUS_QUANTILE))


def smallest_resolved_epsilon(d: int, dmin: float, stretch: float = 1.0) -> float:
    """The smallest epsilon whose noise (radius up to largest_radius_factor(d) x stretch / epsilon)
    float64 still places within RESOLUTION x Dmin."""
    return largest_radius_factor(d) * stretch * 2.0**-52 / (RESOLUTION * dmin)


def search_parameter() -> str:
    """The nearest-word search of the noisy vector (every mechanism built on this noise has it)."""
    return parameter(
        "auto", "nearest-word search of the noisy vector: exact, annoy, or auto (exact up to n*d = 50M)", SEARCHES
    )


def search_k_parameter() -> int:
    return parameter(-1, "Annoy's search_k with --search annoy (-1: Annoy's default)")


def check_search(params) -> None:
    """Validate (and type) the search and search_k fields of a Params dataclass."""
    if params.search not in SEARCHES:
        raise ParameterError(f"unknown nearest-word search {params.search!r}; valid: {', '.join(SEARCHES)}")
    object.__setattr__(params, "search_k", int(params.search_k))
    if params.search_k != -1 and not 1 <= params.search_k <= SEARCH_K_MAX:
        raise ParameterError(
            f"search_k must be -1 (Annoy's default) or in [1, {SEARCH_K_MAX}] (Annoy takes a C int), "
            f"got {params.search_k}"
        )


@dataclass(frozen=True)
class MultivariateLaplaceParams:
    search: str = search_parameter()
    search_k: int = search_k_parameter()  # Annoy's search_k; -1 means n_trees * n

    def __post_init__(self):
        check_search(self)


class MultivariateLaplace(Mechanism):
    name = "multivariate_laplace"
    Params = MultivariateLaplaceParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        self.prepare()
        self.search = self.p.search
        if self.search == "auto":
            self.search = "exact" if index.n * index.d <= AUTO_EXACT_LIMIT else "annoy"
        check_epsilon_range(self.name, self.epsilon, *self.epsilon_range())

    def prepare(self) -> None:
        """What the epsilon range depends on, besides the index (the radius R, the matrix S in subclasses)."""

    def noise_stretch(self) -> float:
        """How far the noise reaches per unit radius (1: r x, x on the unit sphere)."""
        return 1.0

    def epsilon_range(self) -> tuple[float, float, str]:
        """The smallest and largest epsilon this mechanism computes faithfully here, and why the smallest."""
        low = smallest_resolved_epsilon(self.index.d, self.index.dmin, self.noise_stretch())
        radius = largest_radius_factor(self.index.d) * self.noise_stretch()
        return (
            low,
            self.largest_epsilon(),
            (
                f"below it the noise radius (r ~ Gamma(d = {self.index.d}, 1/epsilon), up to {radius:.4g} / epsilon at "
                f"its 1 - {RADIUS_QUANTILE:g} quantile) is so large that float64 rounds the noisy point by more than "
                f"{RESOLUTION:g} x Dmin (Dmin = {self.index.dmin:.4g}): rounding, not the mechanism, would pick the "
                "output; at the smallest epsilon the per-token bound epsilon x Dmax is already "
                f"{low * self.index.dmax:.3g}"
            ),
        )

    def largest_epsilon(self) -> float:
        return largest_epsilon(self.index.dmax)

    def params(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "radius": f"Gamma(shape={self.index.d}, scale=1/epsilon)",
            "search": self.search,
            "search_k": self.p.search_k,
        }

    def radii(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """r ~ Gamma(d, 1/eps): with a uniform direction, noise of density proportional to exp(-eps |z|)."""
        return rng.gamma(shape=self.index.d, scale=1.0 / self.epsilon, size=size)

    def noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.radii(rng, size)[:, None] * unit_directions(rng, size, self.index.d)

    def noisy_vectors(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """phi(w) + z for each id: the point whose nearest word is the output."""
        return np.asarray(self.index.vectors[ids], dtype=np.float64) + self.noise(rng, len(ids))

    def nearest(self, ids: np.ndarray, points: np.ndarray, m: int = 1) -> np.ndarray:
        """The m nearest words to each point (the post-processing step), by the configured search."""
        return self.index.nearest_words(points, m, self.search, self.p.search_k, sources=ids)

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.nearest(ids, self.noisy_vectors(ids, rng))[:, 0]

    def nearest_search(self) -> str:
        return "annoy (approximate; post-processing, guarantee unchanged)" if self.search == "annoy" else "exact"

    def compute_guarantee(self) -> Guarantee:
        dmax = self.index.dmax
        return Guarantee(
            mechanism=self.name,
            kind="metric-DP",
            rate=self.epsilon,
            basis="proved",
            statement=(
                f"P[M(w)=y] <= exp({self.epsilon:g} * d(w, w')) * P[M(w')=y] for every pair of "
                "vocabulary words w, w' and every output y (Euclidean distance in the embedding)."
            ),
            per_token_pure_epsilon=self.epsilon * dmax,
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: epsilon * Dmax = {self.epsilon:g} * {dmax:.6g}; "
                "any two words are protected at least this well"
            ),
            confirmed_by="noise-distribution tests (radius Gamma(d, 1/eps), uniform direction)",
            extra={"nearest_search": self.nearest_search()},
        )
