"""vickrey: multivariate Laplace noise, then a choice between the two words nearest to the noisy
vector (Xu et al. 2021, "On a utilitarian design of differentially private text"; MECHANISMS.md 4).

u1, u2 at distances d1 <= d2 from v = phi(w) + z: u1 with probability
(1 - t) d2 / (t d1 + (1 - t) d2), else u2. The choice only uses v, so it is post-processing and
the guarantee is the base mechanism's. The input word is never excluded from the pair (some
implementations drop it, which gives it probability 0 and an infinite privacy loss).
"""
from __future__ import annotations

import numpy as np

from dptext.transforms.mechanisms import mahalanobis, multivariate_laplace
from dptext.transforms.mechanisms.base import EpsilonOutOfRangeError, as_ids, register

NAME = "vickrey"
PARAMETERS = {**multivariate_laplace.PARAMETERS,
              "threshold": "vickrey: t in [0, 1]; the nearest word wins with probability (1-t) d2 / (t d1 + (1-t) d2)",
              "base": "vickrey: the noise: laplace (multivariate Laplace) or mahalanobis",
              "regularization": mahalanobis.PARAMETERS["regularization"]}
CHOICES = {**multivariate_laplace.CHOICES, "base": ("laplace", "mahalanobis")}


def first_of_two(d1: np.ndarray, d2: np.ndarray, t: float) -> np.ndarray:
    """P(output u1) = (1 - t) d2 / (t d1 + (1 - t) d2); 1 when both distances are 0."""
    den = t * d1 + (1 - t) * d2
    return np.divide((1 - t) * d2, den, out=np.ones_like(d1, dtype=np.float64), where=den > 0)


class Vickrey:
    name = NAME

    def __init__(self, index, epsilon: float, threshold: float = 0.75, base: str = "laplace",
                 regularization: float = 0.5, search: str = "auto", search_k: int = -1):
        if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ValueError(f"threshold t must be in [0, 1], got {threshold!r}")
        if base not in CHOICES["base"]:
            raise ValueError(f"unknown base {base!r}; valid: laplace, mahalanobis")
        self.index, self.t, self.base_name = index, float(threshold), base
        try:
            self.base = (mahalanobis.Mahalanobis(index, epsilon, regularization, search, search_k)
                         if base == "mahalanobis" else
                         multivariate_laplace.MultivariateLaplace(index, epsilon, search, search_k))
        except EpsilonOutOfRangeError as err:      # the noise is the base mechanism's: so is the range
            raise EpsilonOutOfRangeError(f"vickrey (noise of {base}): {err}", err.smallest_feasible,
                                         err.largest_feasible) from None
        self.epsilon = self.base.epsilon

    def params(self) -> dict:
        return {**self.base.params(), "base": self.base_name, "t": self.t}

    def choose(self, pair: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """u1 or u2 of each pair, by the Vickrey probability of their distances to the point."""
        vectors = np.asarray(self.index.vectors)          # only the pair's rows go to float64
        d1 = np.linalg.norm(vectors[pair[:, 0]].astype(np.float64) - points, axis=1)
        d2 = np.linalg.norm(vectors[pair[:, 1]].astype(np.float64) - points, axis=1)
        return np.where(rng.random(len(pair)) < first_of_two(d1, d2, self.t), pair[:, 0], pair[:, 1])

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        if not len(ids):
            return ids
        points = self.base.noisy_vectors(ids, rng)
        return self.choose(self.base.nearest(ids, points, m=2), points, rng).astype(np.int32)

    def guarantee(self) -> dict:
        g = self.base.guarantee()
        g.update({"mechanism": NAME, "post_processing": (
            f"the choice between the two words nearest to the noisy vector (t = {self.t:g}) uses only the noisy "
            f"vector: post-processing of {self.base.name}, same guarantee")})
        g["statement"] = g["statement"] + " The Vickrey choice is post-processing and keeps it."
        return g


@register(NAME)
def create(index, epsilon: float, threshold: float = 0.75, base: str = "laplace", regularization: float = 0.5,
           search: str = "auto", search_k: int = -1) -> Vickrey:
    return Vickrey(index, epsilon, threshold, base, regularization, search, search_k)
