"""vickrey: multivariate Laplace noise, then a choice between the two words nearest to the noisy
vector (Xu et al. 2021, "On a utilitarian design of differentially private text"; MECHANISMS.md 4).

u1, u2 at distances d1 <= d2 from v = phi(w) + z: u1 with probability
(1 - t) d2 / (t d1 + (1 - t) d2), else u2. The choice only uses v, so it is post-processing and
the guarantee is the base mechanism's. The input word is never excluded from the pair (some
implementations drop it, which gives it probability 0 and an infinite privacy loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import EpsilonOutOfRangeError, Mechanism, parameter
from dptext.transforms.mechanisms.guarantee import Guarantee
from dptext.transforms.mechanisms.mahalanobis import Mahalanobis, regularization_parameter
from dptext.transforms.mechanisms.multivariate_laplace import MultivariateLaplace, search_k_parameter, search_parameter

BASES = {"laplace": MultivariateLaplace, "mahalanobis": Mahalanobis}


@dataclass(frozen=True)
class VickreyParams:
    threshold: float = parameter(
        0.75, "t in [0, 1]; the nearest word wins with probability (1-t) d2 / (t d1 + (1-t) d2)"
    )
    base: str = parameter("laplace", "the noise: laplace (multivariate Laplace) or mahalanobis", tuple(BASES))
    regularization: float = regularization_parameter()  # checked by the mahalanobis base
    search: str = search_parameter()  # checked by the base mechanism
    search_k: int = search_k_parameter()

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ParameterError(f"threshold t must be in [0, 1], got {self.threshold!r}")
        if self.base not in BASES:
            raise ParameterError(f"unknown base {self.base!r}; valid: {', '.join(BASES)}")


def first_of_two(d1: np.ndarray, d2: np.ndarray, t: float) -> np.ndarray:
    """P(output u1) = (1 - t) d2 / (t d1 + (1 - t) d2); 1 when both distances are 0."""
    den = t * d1 + (1 - t) * d2
    return np.divide((1 - t) * d2, den, out=np.ones_like(d1, dtype=np.float64), where=den > 0)


class Vickrey(Mechanism):
    name = "vickrey"
    Params = VickreyParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        self.t, self.base_name = float(self.p.threshold), self.p.base
        p = self.p
        try:
            self.base = (
                Mahalanobis(index, epsilon, p.regularization, p.search, p.search_k)
                if p.base == "mahalanobis"
                else MultivariateLaplace(index, epsilon, p.search, p.search_k)
            )
        except EpsilonOutOfRangeError as err:  # the noise is the base mechanism's: so is the range
            raise EpsilonOutOfRangeError(
                f"vickrey (noise of {p.base}): {err}", err.smallest_feasible, err.largest_feasible
            ) from None
        self.epsilon = self.base.epsilon

    def params(self) -> dict:
        return {**self.base.params(), "base": self.base_name, "t": self.t}

    def choose(self, pair: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """u1 or u2 of each pair, by the Vickrey probability of their distances to the point."""
        vectors = np.asarray(self.index.vectors)  # only the pair's rows go to float64
        d1 = np.linalg.norm(vectors[pair[:, 0]].astype(np.float64) - points, axis=1)
        d2 = np.linalg.norm(vectors[pair[:, 1]].astype(np.float64) - points, axis=1)
        return np.where(rng.random(len(pair)) < first_of_two(d1, d2, self.t), pair[:, 0], pair[:, 1])

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        points = self.base.noisy_vectors(ids, rng)
        return self.choose(self.base.nearest(ids, points, m=2), points, rng).astype(np.int32)

    def compute_guarantee(self) -> Guarantee:
        g = self.base.guarantee()
        return dataclasses.replace(
            g,
            mechanism=self.name,
            statement=g.statement + " The Vickrey choice is post-processing and keeps it.",
            extra={
                **g.extra,
                "post_processing": (
                    f"the choice between the two words nearest to the noisy vector (t = {self.t:g}) uses only the "
                    "noisy "
                    f"vector: post-processing of {self.base.name}, same guarantee"
                ),
            },
        )
