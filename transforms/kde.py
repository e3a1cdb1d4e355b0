"""The kde_prior mechanism's density prior (MECHANISMS.md section 3): a Gaussian kernel density
estimate of the embedding itself, evaluated at every vocabulary word. It depends only on the
embedding (never on a corpus), so it is computed once and cached in the index directory.

    pi(y) = (1/n) sum_j N(phi(y) - phi(j); 0, H),   H = Cov * (s n^(-1/(r+4)))^2

Scott's rule in scipy.stats.gaussian_kde's convention (Cov the unbiased data covariance, r its
rank, normally d; s = bandwidth_scale, 1 for Scott's rule). log pi is computed in float64 over
all pairs, by chunked matrix products as in index_build: float32 products screen out the pairs
whose kernel term is provably negligible, the rest are summed in float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.errors import ParameterError
from dptext.transforms.index_build import CHUNK_BYTES, CHUNK_ROWS, Geometry
from dptext.transforms.numerics import mean_and_covariance

TABLE = "kde_log_prior"
# Covariance directions with variance below RCOND x the largest are treated as empty (the data
# lie in a lower-dimensional affine subspace). 1e-10 is a standard-deviation ratio of 1e-5: far
# above the float32 rounding of the vectors (relative 6e-8) and far below any real direction of
# an embedding (the default embedding's smallest ratio is 2.3e-3).
RCOND = 1e-10
# A pair's kernel term is dropped only when the float32 screen proves it below exp(-cut) with
# cut = NEGLIGIBLE + ln n: the n - 1 dropped terms then sum to < exp(-40) ~ 4e-18 of the word's
# own kernel term, below float64 resolution (1.1e-16) of log pi, so log pi is float64-exact.
NEGLIGIBLE = 40.0
# Above this fraction of surviving pairs in a row block, the block is summed densely in float64
# (one matrix product) rather than pair by pair (large bandwidth_scale: most pairs matter).
DENSE_FRACTION = 0.05
PAIRS_PER_CHUNK = 8192  # float64 differences of candidate pairs at once: (pairs, r) bounded
# Whitened coordinates above this would overflow float32 when squared and summed (3.4e38).
WHITENED_LIMIT = 1e18


@dataclass(frozen=True)
class ScottKernel:
    """The kernel's whitening: z = (x - mean) @ transform / bandwidth_scale has kernel covariance I_r
    (transform is Scott's rule's, bandwidth_scale 1: an extreme scale never overflows it)."""

    mean: np.ndarray  # (d,) float64
    transform: np.ndarray  # (d, r) float64, at bandwidth_scale 1
    bandwidth_scale: float
    rank: int  # r: dimension of the data's affine span (d unless singular)
    factor: float  # s * n^(-1/(r+4)): the kernel's standard deviations per data standard deviation
    log_norm: float  # ln of the kernel's peak density: -(r/2) ln(2 pi) - (1/2) ln det H
    condition: float  # largest / smallest kept covariance eigenvalue


def scott_kernel(vectors: np.ndarray, bandwidth_scale: float = 1.0, chunk: int = 65536) -> ScottKernel:
    """Scott's-rule kernel of the embedding (scipy.stats.gaussian_kde's convention).

    Full covariance rather than isotropic: Scott's rule is derived for a kernel shaped like the
    data covariance, and that is scipy's convention, which the spec names; it makes pi invariant to
    a linear re-scaling of the embedding's axes. On the default embedding (covariance condition
    number 435) both leave pi nearly uniform (log-pi spread 0.03 full, 0.31 isotropic): in 300
    dimensions the bandwidth, not the kernel's shape, decides how much pi varies.
    A singular covariance (n <= d, or words on a lower-dimensional subspace) is handled by taking
    the estimate in the data's affine span: directions below RCOND are dropped, Scott's factor uses
    the rank r, and pi is a density on that span (constant factors cancel in the mechanism).
    """
    if not (math.isfinite(bandwidth_scale) and bandwidth_scale > 0):
        raise ParameterError(f"bandwidth_scale must be a finite number > 0, got {bandwidth_scale!r}")
    n, d = vectors.shape
    if n < 2:
        raise ValueError("a kernel density estimate needs at least 2 words")
    mean, cov = mean_and_covariance(vectors, chunk)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    if not eigenvalues[-1] > 0:
        raise ValueError("all vectors are identical: the embedding has no covariance")
    keep = eigenvalues > RCOND * eigenvalues[-1]
    rank = int(keep.sum())
    if rank < d:
        logging.info("dptext: embedding covariance has rank %d of %d; KDE taken in the data's span", rank, d)
    # In logs: an extreme bandwidth_scale would overflow factor^2 (or underflow it to 0).
    log_scott = -math.log(n) / (rank + 4)
    log_factor = math.log(bandwidth_scale) + log_scott
    log_kernel_var = np.log(eigenvalues[keep]) + 2.0 * log_factor
    return ScottKernel(
        mean=mean,
        transform=eigenvectors[:, keep] * np.exp(-0.5 * np.log(eigenvalues[keep]) - log_scott),
        bandwidth_scale=float(bandwidth_scale),
        rank=rank,
        factor=math.exp(min(log_factor, 709.0)),
        log_norm=-0.5 * rank * math.log(2 * math.pi) - 0.5 * float(log_kernel_var.sum()),
        condition=float(eigenvalues[keep].max() / eigenvalues[keep].min()),
    )


def kde_log_density(
    vectors: np.ndarray, bandwidth_scale: float = 1.0, dense_fraction: float = DENSE_FRACTION
) -> np.ndarray:
    """ln pi(y) for every row y of vectors, float64 (n,), from all n^2 pairs.

    ln pi(y) = ln(1 + S_y) - ln n + log_norm with S_y = sum_{j != y} exp(-|z_y - z_j|^2 / 2):
    every word's own kernel term is the largest (z at distance 0), so the log-sum-exp needs no
    running maximum and log1p keeps S_y's full precision even when S_y is 1e-40. Each pair is
    visited once (upper triangle) and added to both words.
    """
    kernel = scott_kernel(vectors, bandwidth_scale)
    n = len(vectors)
    z = np.empty((n, kernel.rank))
    for s in range(0, n, 65536):
        z[s : s + 65536] = (vectors[s : s + 65536].astype(np.float64) - kernel.mean) @ kernel.transform
    reach = float(np.abs(z).max())  # at bandwidth_scale 1; z scales as 1 / bandwidth_scale
    if reach > WHITENED_LIMIT * bandwidth_scale:
        raise ParameterError(
            f"bandwidth_scale {bandwidth_scale:g} is too small for this embedding: the whitened "
            f"vectors would reach {reach:.3g} / {bandwidth_scale:g}, beyond {WHITENED_LIMIT:g} where "
            "float32 squared distances overflow in the pairwise screen; the smallest usable "
            f"bandwidth_scale is {reach / WHITENED_LIMIT:.3g} (far below 1, every kernel term between "
            "distinct words is 0 and pi is uniform but for duplicated vectors)"
        )
    z /= bandwidth_scale
    geom = Geometry(z.astype(np.float32))
    sq64 = np.einsum("ij,ij->i", z, z)
    # Screen: a float32 squared distance within 2 tol of the exact one (tol bounds the float32
    # product; the second tol covers rounding z to float32, a smaller error of the same form).
    limit = 2 * (NEGLIGIBLE + math.log(n)) + 2 * geom.tol
    rows_per_block = max(1, min(CHUNK_ROWS, CHUNK_BYTES // (16 * n)))
    others = np.zeros(n)
    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        d2 = geom.v32[start:stop] @ geom.v32[start:].T  # columns start..n-1
        d2 *= -2.0
        d2 += geom.sq32[start:stop, None]
        d2 += geom.sq32[None, start:]
        d2[np.tril_indices(stop - start)] = np.inf  # each pair once: column > row
        near = d2 <= limit[start:stop, None]
        del d2
        count = int(near.sum())
        if count > dense_fraction * near.size:
            terms = _dense_terms(z, sq64, start, stop)
            others[start:stop] += terms.sum(axis=1)
            others[start:] += terms.sum(axis=0)
        elif count:
            rows, cols = np.nonzero(near)
            _add_pair_terms(z, others, rows + start, cols + start)
    return np.log1p(others) - math.log(n) + kernel.log_norm


def _dense_terms(z: np.ndarray, sq64: np.ndarray, start: int, stop: int) -> np.ndarray:
    """exp(-|z_i - z_j|^2 / 2) for rows start..stop-1 and columns start..n-1, pairs j > i only."""
    d2 = z[start:stop] @ z[start:].T
    d2 *= -2.0
    d2 += sq64[start:stop, None]
    d2 += sq64[None, start:]
    np.maximum(d2, 0.0, out=d2)  # the expansion's cancellation error is ~1e-16 |z|^2
    d2[np.tril_indices(stop - start)] = np.inf
    d2 *= -0.5
    return np.exp(d2, out=d2)


def _add_pair_terms(z: np.ndarray, others: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """others[i] += t and others[j] += t with t = exp(-|z_i - z_j|^2 / 2), from exact differences."""
    n = len(others)
    for s in range(0, len(rows), PAIRS_PER_CHUNK):
        i, j = rows[s : s + PAIRS_PER_CHUNK], cols[s : s + PAIRS_PER_CHUNK]
        diff = z[i] - z[j]
        terms = np.exp(-0.5 * np.einsum("ij,ij->i", diff, diff))
        others += np.bincount(i, terms, minlength=n)
        others += np.bincount(j, terms, minlength=n)


def table_params(bandwidth_scale: float) -> dict:
    """The cached table's identity: everything that determines its values."""
    return {
        "kernel": "gaussian",
        "covariance": "full (unbiased data covariance)",
        "bandwidth_rule": "scott: n^(-1/(rank+4)) per data standard deviation",
        "bandwidth_scale": float(bandwidth_scale),
        "rcond": RCOND,
        "negligible": NEGLIGIBLE,
    }


def kde_log_prior(index, bandwidth_scale: float = 1.0) -> np.ndarray:
    """ln pi for every vocabulary word of an EmbeddingIndex: computed once, then memory-mapped."""
    return index.table(
        TABLE, lambda idx: kde_log_density(idx.vectors, bandwidth_scale), params=table_params(bandwidth_scale)
    )


def prior_summary(log_pi: np.ndarray) -> dict:
    """How far pi is from uniform: the spread of ln pi and how many words stand out."""
    rel = np.asarray(log_pi, dtype=np.float64) - float(np.min(log_pi))
    return {
        "log_pi_spread": float(rel.max()),
        "log_pi_percentiles_above_min": {
            f"{q:g}": float(v) for q, v in zip((50, 90, 99, 99.9), np.percentile(rel, (50, 90, 99, 99.9)))
        },
        "fraction_above_min_by_more_than_1e-3": float((rel > 1e-3).mean()),
    }
