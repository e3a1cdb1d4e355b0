"""Exact neighbour tables and global distance extremes, by chunked matrix products.

Float32 matrix products rank all pairs fast; every figure that is stored is then recomputed in
float64 from the vectors, and a rigorous float32 error bound decides when the fast ranking
could have been wrong, in which case that row is recomputed exactly. So the tables and Dmin,
Dmax are exact, never estimated from a sample.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 1024        # at most this many rows of the n x n distance matrix at once ...
CHUNK_BYTES = 256 << 20  # ... and at most this many bytes of it, so memory stays bounded as n grows
MARGIN = 8               # extra candidates ranked in float32 before exact re-scoring
EXACT_SUBCHUNK = 128     # rows re-scored in float64 at once (bounds the (rows, K, d) difference array)
_U32 = np.finfo(np.float32).eps / 2   # unit roundoff of float32


@dataclass(frozen=True)
class Tables:
    neighbour_ids: np.ndarray        # int32 (n, K + 1), each row starts with the word itself
    neighbour_distances: np.ndarray  # float32 (n, K + 1), plain Euclidean, row[0] == 0
    dmin: float                      # smallest non-zero distance over all pairs
    dmin_pair: tuple[int, int]
    dmax: float                      # largest distance over all pairs
    dmax_pair: tuple[int, int]


def _float32_d2_error_bound(norms: np.ndarray, d: int) -> np.ndarray:
    """Per-row bound on |float32 squared distance - exact| against any other word.

    The dot product obeys |fl(x.y) - x.y| <= gamma_d |x| |y| with gamma_d = d u / (1 - d u)
    (Higham, Accuracy and Stability, 3.1); the squared norms and the two additions add at most
    a few u (|x|^2 + |y|^2). The bound is taken against the largest norm in the vocabulary.
    """
    gamma = d * _U32 / (1 - d * _U32)
    top = norms.max()
    return 2 * gamma * norms * top + 8 * _U32 * (norms ** 2 + top ** 2) + 1e-12


def _exact_row(vectors64: np.ndarray, i: int) -> np.ndarray:
    diff = vectors64 - vectors64[i]
    return np.einsum("ij,ij->i", diff, diff)


def candidate_order(dist_row: np.ndarray, word: int) -> np.ndarray:
    """The word first, then every other word by (distance, id): the order of the neighbour table,
    of the exact-search fallback and of the audit's oracle, which must all agree."""
    others = np.delete(np.arange(len(dist_row)), word)
    return np.concatenate(([word], others[np.lexsort((others, dist_row[others]))]))


def _ranked(ids: np.ndarray, d2: np.ndarray):
    """Sort candidate columns of each row by (squared distance, id)."""
    order = np.lexsort((ids, d2), axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(d2, order, -1)


def build_tables(vectors: np.ndarray, neighbours: int, progress: bool = True) -> Tables:
    from tqdm import tqdm

    n, d = vectors.shape
    k = neighbours
    v32 = np.ascontiguousarray(vectors, dtype=np.float32)
    v64 = v32.astype(np.float64)
    sq64 = np.einsum("ij,ij->i", v64, v64)
    sq32 = sq64.astype(np.float32)
    tol = _float32_d2_error_bound(np.sqrt(sq64), d)
    m = min(k + MARGIN, n - 1)

    ids_out = np.empty((n, k + 1), dtype=np.int32)
    d2_out = np.empty((n, k + 1), dtype=np.float64)
    row_min_pos = np.full(n, np.inf)          # exact smallest non-zero squared distance per row
    row_min_arg = np.zeros(n, dtype=np.int64)
    row_max_approx = np.empty(n, dtype=np.float64)
    recheck: list[int] = []                   # rows whose float32 ranking might be wrong

    bar = tqdm(total=n, unit="word", desc="exact neighbours", disable=not progress, mininterval=1.0)
    chunk = max(1, min(CHUNK_ROWS, CHUNK_BYTES // (4 * n)))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = np.arange(start, stop)
        d2 = v32[start:stop] @ v32.T
        d2 *= -2.0
        d2 += sq32[start:stop, None]
        d2 += sq32[None, :]
        row_max_approx[start:stop] = d2.max(axis=1)
        d2[rows - start, rows] = np.inf           # the word itself is added back in front
        if m < n - 1:
            part = _argpartition_threaded(d2, m)
            cand = part[:, :m]
            rest_min = np.take_along_axis(d2, part[:, m:m + 1], 1)[:, 0].astype(np.float64)
        else:
            cand = np.argsort(d2, axis=1)[:, : n - 1]
            rest_min = np.full(len(rows), np.inf)
        for s in range(0, len(rows), EXACT_SUBCHUNK):
            sub = slice(s, s + EXACT_SUBCHUNK)
            r = rows[sub]
            diff = v64[cand[sub]] - v64[r][:, None, :]
            exact = np.einsum("bkd,bkd->bk", diff, diff)
            c_ids, c_d2 = _ranked(cand[sub], exact)
            ids_out[r, 0], d2_out[r, 0] = r, 0.0
            ids_out[r, 1:], d2_out[r, 1:] = c_ids[:, :k], c_d2[:, :k]
            # Exact iff every excluded word is provably farther than the last kept one, and the
            # row's smallest non-zero distance is among the candidates.
            pos = np.where(c_d2 > 0, c_d2, np.inf)
            row_min_pos[r] = pos.min(axis=1)
            row_min_arg[r] = c_ids[np.arange(len(r)), pos.argmin(axis=1)]
            unsafe = (c_d2[:, k - 1] >= rest_min[sub] - tol[r]) | ~np.isfinite(row_min_pos[r])
            unsafe &= np.isfinite(rest_min[sub])
            recheck.extend(r[unsafe].tolist())
        bar.update(len(rows))
    bar.close()

    for i in recheck:
        exact = _exact_row(v64, i)
        order = candidate_order(exact, i)[: k + 1]
        ids_out[i], d2_out[i] = order, exact[order]
        others = np.delete(np.arange(n), i)
        pos = np.where(exact[others] > 0, exact[others], np.inf)
        row_min_pos[i], row_min_arg[i] = pos.min(), others[pos.argmin()]

    dmin_row = int(np.argmin(row_min_pos))
    if not np.isfinite(row_min_pos[dmin_row]):
        raise ValueError("all vectors are identical: there is no non-zero distance")
    dmax, dmax_pair = _exact_dmax(v64, row_max_approx, tol)
    return Tables(
        neighbour_ids=ids_out,
        neighbour_distances=np.sqrt(d2_out).astype(np.float32),
        dmin=float(np.sqrt(row_min_pos[dmin_row])),
        dmin_pair=(dmin_row, int(row_min_arg[dmin_row])),
        dmax=dmax,
        dmax_pair=dmax_pair,
    )


def _argpartition_threaded(d2: np.ndarray, m: int) -> np.ndarray:
    """np.argpartition along rows, split across cores (numpy releases the GIL while sorting)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(os.cpu_count() or 1, len(d2)))
    blocks = np.array_split(np.arange(len(d2)), workers)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda b: np.argpartition(d2[b[0]:b[-1] + 1], m, axis=1), blocks)
        return np.concatenate(list(parts))


def _exact_dmax(v64: np.ndarray, row_max_approx: np.ndarray, tol: np.ndarray):
    """Exact global maximum: recompute every row whose float32 maximum could hold it."""
    floor = np.max(row_max_approx - tol)
    best, pair = -1.0, (0, 0)
    for i in np.flatnonzero(row_max_approx + tol >= floor):
        exact = _exact_row(v64, int(i))
        j = int(np.argmax(exact))
        if exact[j] > best:
            best, pair = float(exact[j]), (int(i), j)
    return float(np.sqrt(best)), pair
