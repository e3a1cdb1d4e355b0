"""mahalanobis: multivariate Laplace noise shaped by the embedding's covariance (Xu et al. 2020,
"A differentially private text perturbation method using a regularized Mahalanobis metric";
MECHANISMS.md section 4).

S = lambda Sigma + (1 - lambda) I with Sigma the embedding covariance scaled to trace d;
z = r S^(1/2) x with x uniform on the sphere and r ~ Gamma(d, 1/eps) (no renormalisation); the
output is the word nearest to phi(w) + z. S^(1/2) depends only on the embedding: it is computed
once and stored in the index directory.
"""
from __future__ import annotations

import math

import numpy as np

from dptext.transforms.mechanisms import multivariate_laplace
from dptext.transforms.mechanisms.base import largest_epsilon, register, unit_directions
from dptext.transforms.mechanisms.multivariate_laplace import MultivariateLaplace
from dptext.transforms.numerics import mean_and_covariance

NAME = "mahalanobis"
PARAMETERS = {**multivariate_laplace.PARAMETERS,
              "regularization": "mahalanobis: lambda in S = lambda Sigma + (1 - lambda) I (0: plain multivariate "
                                "Laplace; 1: the covariance alone)"}
CHOICES = multivariate_laplace.CHOICES
TABLE = "mahalanobis_sqrt"


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
    name = NAME

    def __init__(self, index, epsilon: float, regularization: float = 0.5, search: str = "auto",
                 search_k: int = -1):
        # S first: the epsilon range checked by the base class depends on its eigenvalues.
        if isinstance(regularization, bool) or not (isinstance(regularization, (int, float))
                                                    and 0 <= regularization <= 1):
            raise ValueError(f"regularization (lambda) must be in [0, 1], got {regularization!r}")
        self.regularization = float(regularization)
        table = index.table(TABLE, lambda idx: regularized_sqrt(idx.vectors, self.regularization),
                            {"lambda": self.regularization})
        self.sqrt_S = np.asarray(table[:-1])
        self.min_eigenvalue = float(table[-1].min())
        self.max_eigenvalue = float(table[-1].max())
        if self.min_eigenvalue <= 0:
            raise ValueError(f"S is singular at regularization {self.regularization:g} (the embedding's covariance "
                             "is degenerate, e.g. fewer words than dimensions): choose regularization < 1")
        super().__init__(index, epsilon, search, search_k)

    def noise_stretch(self) -> float:
        """|S^(1/2) x| <= sqrt(largest eigenvalue of S) for a unit x."""
        return math.sqrt(self.max_eigenvalue)

    def largest_epsilon(self) -> float:
        return largest_epsilon(self.index.dmax, 1.0 / math.sqrt(self.min_eigenvalue))

    def params(self) -> dict:
        return {**super().params(), "lambda": self.regularization, "noise": "r S^(1/2) x, S = lambda Sigma + (1 - "
                "lambda) I, Sigma scaled to trace d", "min_eigenvalue_of_S": self.min_eigenvalue}

    def noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        directions = unit_directions(rng, size, self.index.d) @ self.sqrt_S     # S^(1/2) symmetric
        return self.radii(rng, size)[:, None] * directions

    def guarantee(self) -> dict:
        eps, dmax = self.epsilon, self.index.dmax
        euclidean_rate = eps / math.sqrt(self.min_eigenvalue)
        g = super().guarantee()
        g.update({
            "mechanism": NAME,
            "rate": eps,
            "metric": "regularized Mahalanobis ||S^(-1/2) (phi(w) - phi(w'))||",
            "euclidean_equivalent_rate": euclidean_rate,
            "statement": (f"P[M(w)=y] <= exp({eps:g} * ||S^(-1/2)(phi(w) - phi(w'))||) * P[M(w')=y] for every pair "
                          f"of vocabulary words and every output (S = {self.regularization:g} Sigma + "
                          f"{1 - self.regularization:g} I); in Euclidean distance a rate of epsilon / sqrt(min "
                          f"eigenvalue of S) = {euclidean_rate:.4g}."),
            "per_token_pure_epsilon": euclidean_rate * dmax,
            "per_token_pure_epsilon_note": (f"vocabulary-wide: the Mahalanobis distance is at most Dmax / sqrt(min "
                                            f"eigenvalue of S) = {dmax / math.sqrt(self.min_eigenvalue):.6g}"),
            "confirmed_by": ("tests/test_continuous_mechanisms.py: the noise is r S^(1/2) x with r ~ Gamma(d, 1/eps) "
                             "(KS on the whitened radius) and covariance proportional to S"),
        })
        return g


@register(NAME)
def create(index, epsilon: float, regularization: float = 0.5, search: str = "auto",
           search_k: int = -1) -> Mahalanobis:
    return Mahalanobis(index, epsilon, regularization, search, search_k)
