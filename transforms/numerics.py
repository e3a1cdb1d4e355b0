"""Numerics shared by the index, its build and the mechanisms, written once.

Every fast float32 screen in dptext (the exact tables of the build, the exact nearest-word search,
the vocabulary-wide exponential sampler, the KDE prior's pair screen) bounds its rounding error with
U32 and gamma32 and recomputes in float64 whatever that bound cannot decide; the embedding's
covariance is the one that the KDE prior and the Mahalanobis noise both use.
"""

from __future__ import annotations

import numpy as np

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32


def gamma32(d: int) -> float:
    """gamma_d = d u / (1 - d u): a float32 dot product of length d is within gamma_d |x| |y| of the
    exact one (Higham, Accuracy and Stability of Numerical Algorithms, 3.1)."""
    return d * U32 / (1 - d * U32)


def mean_and_covariance(vectors: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The mean (d,) and the unbiased covariance (d, d) of the rows, in float64, chunked over rows so
    a memory-mapped embedding is never copied whole to float64."""
    n, d = vectors.shape
    mean = np.zeros(d)
    for s in range(0, n, chunk):
        mean += np.asarray(vectors[s : s + chunk], dtype=np.float64).sum(axis=0)
    mean /= n
    cov = np.zeros((d, d))
    for s in range(0, n, chunk):
        centred = np.asarray(vectors[s : s + chunk], dtype=np.float64) - mean
        cov += centred.T @ centred
    cov /= n - 1
    return mean, cov
