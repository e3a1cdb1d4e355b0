"""multivariate_laplace: the metric-DP baseline (Feyisetan et al. WSDM 2020; MECHANISMS.md 2).

v = phi(w) + r x with x uniform on the unit sphere and r ~ Gamma(d, 1/eps); the output is the
vocabulary word nearest to v. The search is post-processing, so Annoy's approximate search keeps
the guarantee; the exact search is a batched matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transforms.mechanisms.base import as_ids, check_epsilon, register, unit_directions

NAME = "multivariate_laplace"
PARAMETERS = {"search": "nearest-word search of multivariate_laplace, distance_truncated_laplace, mahalanobis and "
                        "vickrey's noisy vectors: exact, annoy, or auto (exact up to n*d = 50M)",
              "search_k": "Annoy's search_k with --search annoy (-1: Annoy's default)"}
SEARCHES = ("auto", "annoy", "exact")
CHOICES = {"search": SEARCHES}
# "auto" searches exactly up to this many vocabulary entries (n * d): on the default embedding
# (10M) the exact search is faster than an Annoy search with comparable recall (README).
AUTO_EXACT_LIMIT = 50_000_000


@dataclass(frozen=True)
class MultivariateLaplaceParams:
    epsilon: float
    search: str = "auto"
    search_k: int = -1   # Annoy's search_k; -1 means n_trees * n

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        if self.search not in SEARCHES:
            raise ValueError(f"unknown nearest-word search {self.search!r}; valid: {', '.join(SEARCHES)}")
        if self.search_k != -1 and self.search_k < 1:
            raise ValueError(f"search_k must be -1 (Annoy's default) or >= 1, got {self.search_k}")


class MultivariateLaplace:
    name = NAME

    def __init__(self, index, epsilon: float, search: str = "auto", search_k: int = -1):
        self.index = index
        self.p = MultivariateLaplaceParams(epsilon, search, int(search_k))
        self.epsilon = self.p.epsilon
        self.search = self.p.search
        if self.search == "auto":
            self.search = "exact" if index.n * index.d <= AUTO_EXACT_LIMIT else "annoy"

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "radius": f"Gamma(shape={self.index.d}, scale=1/epsilon)",
                "search": self.search, "search_k": self.p.search_k}

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
        if self.search == "annoy":
            forest = self.index._annoy.get()
            return np.array([forest.get_nns_by_vector(p, m, self.p.search_k) for p in points.astype(np.float32)],
                            dtype=np.int32).reshape(len(points), m)
        return self.index.nearest_to_noisy(ids, points, m)[0]

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        if not len(ids):
            return ids
        return self.nearest(ids, self.noisy_vectors(ids, rng))[:, 0]

    def guarantee(self) -> dict:
        dmax = self.index.dmax
        return {
            "mechanism": NAME,
            "kind": "metric-DP",
            "rate": self.epsilon,
            "statement": (f"P[M(w)=y] <= exp({self.epsilon:g} * d(w, w')) * P[M(w')=y] for every pair of "
                          "vocabulary words w, w' and every output y (Euclidean distance in the embedding)."),
            "per_token_pure_epsilon": self.epsilon * dmax,
            "per_token_pure_epsilon_note": (f"vocabulary-wide: epsilon * Dmax = {self.epsilon:g} * {dmax:.6g}; "
                                            "any two words are protected at least this well"),
            "nearest_search": ("annoy (approximate; post-processing, guarantee unchanged)"
                               if self.search == "annoy" else "exact"),
            "confirmed_by": "noise-distribution tests (radius Gamma(d, 1/eps), uniform direction)",
            "not_protected": ["out-of-vocabulary tokens (handled by the OOV policy)",
                              "document length, token positions and punctuation",
                              "which tokens are in the vocabulary"],
        }


@register(NAME)
def create(index, epsilon: float, search: str = "auto", search_k: int = -1) -> MultivariateLaplace:
    return MultivariateLaplace(index, epsilon, search, search_k)
