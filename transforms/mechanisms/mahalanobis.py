"""mahalanobis: multivariate Laplace noise shaped by the embedding's covariance (Xu et al. 2020,
"A differentially private text perturbation method using a regularized Mahalanobis metric";
MECHANISMS.md section 4).

S = lambda Sigma + (1 - lambda) I with Sigma the embedding covariance scaled to trace d;
z = r S^(1/2) x with x uniform on the sphere and r ~ Gamma(d, 1/eps) (no renormalisation); the
output is the word nearest to phi(w) + z. S^(1/2) depends only on the embedding: it is computed
once and stored in the index directory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import largest_epsilon, parameter, unit_directions
from dptext.transforms.mechanisms.guarantee import Guarantee
from dptext.transforms.mechanisms.multivariate_laplace import (
    MultivariateLaplace,
    check_search,
    search_k_parameter,
    search_parameter,
)
from dptext.transforms.numerics import mean_and_covariance

TABLE = "mahalanobis_sqrt"


def regularization_parameter() -> float:
    return parameter(
        0.5, "lambda in S = lambda Sigma + (1 - lambda) I (0: plain multivariate Laplace; 1: the covariance alone)"
    )


def check_regularization(regularization) -> None:
    if isinstance(regularization, bool) or not (isinstance(regularization, (int, float)) and 0 <= regularization <= 1):
        raise ParameterError(f"regularization (lambda) must be in [0, 1], got {regularization!r}")


@dataclass(frozen=True)
class MahalanobisParams:
    regularization: float = regularization_parameter()
    search: str = search_parameter()
    search_k: int = search_k_parameter()

    def __post_init__(self):
        check_regularization(self.regularization)
        object.__setattr__(self, "regularization", float(self.regularization))
        check_search(self)


def covariance_trace_d(vectors: np.ndarray) -> np.ndarray:
    """The embedding covariance (float64, chunked over words) scaled to trace d."""
    cov = mean_and_covariance(vectors)[1]
    return cov * (vectors.shape[1] / np.trace(cov))


def regularized_sqrt(vectors: np.ndarray, regularization: float) -> np.ndarray:
    """S^(1/2) by eigendecomposition, with S's eigenvalues in a last row (for the guarantee)."""
    d = vectors.shape[1]
    S = regularization * covariance_trace_d(vectors) + (1 - regularization) * np.eye(d)
    values, vecs = np.linalg.eigh(S)
    values = np.maximum(values, 0.0)
    return np.vstack([(vecs * np.sqrt(values)) @ vecs.T, values[None, :]])


class Mahalanobis(MultivariateLaplace):
    name = "mahalanobis"
    Params = MahalanobisParams

    def prepare(self) -> None:
        """S first: the epsilon range depends on its eigenvalues."""
        self.regularization = self.p.regularization
        table = self.index.table(
            TABLE, lambda idx: regularized_sqrt(idx.vectors, self.regularization), {"lambda": self.regularization}
        )
        self.sqrt_S = np.asarray(table[:-1])
        self.min_eigenvalue = float(table[-1].min())
        self.max_eigenvalue = float(table[-1].max())
        if self.min_eigenvalue <= 0:
            raise ParameterError(
                f"S is singular at regularization {self.regularization:g} (the embedding's "
                "covariance is degenerate, e.g. fewer words than dimensions): choose "
                "regularization < 1"
            )

    def noise_stretch(self) -> float:
        """|S^(1/2) x| <= sqrt(largest eigenvalue of S) for a unit x."""
        return math.sqrt(self.max_eigenvalue)

    def largest_epsilon(self) -> float:
        return largest_epsilon(self.index.dmax, 1.0 / math.sqrt(self.min_eigenvalue))

    def params(self) -> dict:
        return {
            **super().params(),
            "lambda": self.regularization,
            "noise": "r S^(1/2) x, S = lambda Sigma + (1 - lambda) I, Sigma scaled to trace d",
            "min_eigenvalue_of_S": self.min_eigenvalue,
        }

    def noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        directions = unit_directions(rng, size, self.index.d) @ self.sqrt_S  # S^(1/2) symmetric
        return self.radii(rng, size)[:, None] * directions

    def compute_guarantee(self) -> Guarantee:
        eps, dmax = self.epsilon, self.index.dmax
        euclidean_rate = eps / math.sqrt(self.min_eigenvalue)
        g = super().compute_guarantee()
        return dataclasses.replace(
            g,
            rate=eps,
            statement=(
                f"P[M(w)=y] <= exp({eps:g} * ||S^(-1/2)(phi(w) - phi(w'))||) * P[M(w')=y] for every pair "
                f"of vocabulary words and every output (S = {self.regularization:g} Sigma + "
                f"{1 - self.regularization:g} I); in Euclidean distance a rate of epsilon / sqrt(min "
                f"eigenvalue of S) = {euclidean_rate:.4g}."
            ),
            per_token_pure_epsilon=euclidean_rate * dmax,
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: the Mahalanobis distance is at most Dmax / sqrt(min "
                f"eigenvalue of S) = {dmax / math.sqrt(self.min_eigenvalue):.6g}"
            ),
            confirmed_by=(
                "tests/test_continuous_mechanisms.py: the noise is r S^(1/2) x with r ~ Gamma(d, 1/eps) "
                "(KS on the whitened radius) and covariance proportional to S"
            ),
            extra={
                **g.extra,
                "metric": "regularized Mahalanobis ||S^(-1/2) (phi(w) - phi(w'))||",
                "euclidean_equivalent_rate": euclidean_rate,
            },
        )
