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

from dptext.transforms.errors import ParameterError
from dptext.transforms.numerics import U32, gamma32

CHUNK_ROWS = 1024  # at most this many rows of the n x n distance matrix at once ...
CHUNK_BYTES = 256 << 20  # ... and at most this many bytes of it, so memory stays bounded as n grows
MARGIN = 8  # extra candidates ranked in float32 before exact re-scoring
EXACT_SUBCHUNK = 128  # rows re-scored in float64 at once (bounds the (rows, K, d) difference array)
EXACT_COLUMNS = 65536  # words per float64 slice of an exact row (bounds its (words, d) difference array)
SAMPLE_COLUMNS = 16384  # columns sampled per row to bound its (K + MARGIN + 1)-th smallest distance


@dataclass(frozen=True)
class Tables:
    neighbour_ids: np.ndarray  # int32 (n, K + 1), each row starts with the word itself
    neighbour_distances: np.ndarray  # float32 (n, K + 1), plain Euclidean, row[0] == 0
    dmin: float  # smallest non-zero distance over all pairs
    dmin_pair: tuple[int, int]
    dmax: float  # largest distance over all pairs
    dmax_pair: tuple[int, int]


def _float32_d2_error_bound(norms: np.ndarray, d: int) -> np.ndarray:
    """Per-row bound on |float32 squared distance - exact| against any other word.

    The dot product obeys |fl(x.y) - x.y| <= gamma_d |x| |y| with gamma_d = d u / (1 - d u)
    (Higham, Accuracy and Stability, 3.1); the squared norms and the two additions add at most
    a few u (|x|^2 + |y|^2). The bound is taken against the largest norm in the vocabulary.
    """
    top = norms.max()
    return 2 * gamma32(d) * norms * top + 8 * U32 * (norms**2 + top**2) + 1e-12


class Geometry:
    """What every row block needs: the float32 vectors, their squared norms and the per-row
    float32 error bound. O(n d) float32 and O(n) float64: no float64 copy of the vectors, so a
    worker of a distributed build holds little more than the memory-mapped vectors."""

    def __init__(self, vectors: np.ndarray):
        self.v32 = vectors if vectors.dtype == np.float32 else np.ascontiguousarray(vectors, dtype=np.float32)
        self.n, self.d = self.v32.shape
        sq64 = np.zeros(self.n)
        for s in range(0, self.n, EXACT_COLUMNS):
            block = self.v32[s : s + EXACT_COLUMNS].astype(np.float64)
            sq64[s : s + EXACT_COLUMNS] = np.einsum("ij,ij->i", block, block)
        self.sq32 = sq64.astype(np.float32)
        self.tol = _float32_d2_error_bound(np.sqrt(sq64), self.d)

    def exact_row(self, i: int) -> np.ndarray:
        """Exact float64 squared distances from word i to every word (columns in chunks)."""
        out = np.empty(self.n)
        vi = self.v32[i].astype(np.float64)
        for s in range(0, self.n, EXACT_COLUMNS):
            diff = self.v32[s : s + EXACT_COLUMNS].astype(np.float64) - vi
            out[s : s + EXACT_COLUMNS] = np.einsum("ij,ij->i", diff, diff)
        return out

    def sample_stride(self) -> int:
        """Every how many columns a row's selection bound is sampled; below 2 rows are not sampled
        (the vocabulary is small enough to partition whole rows)."""
        return self.n // SAMPLE_COLUMNS

    def chunk_rows(self) -> int:
        """Rows per block. Where rows select under a sampled bound, column tiles keep memory within
        CHUNK_BYTES and the block keeps CHUNK_ROWS rows, which the matrix product needs to run near
        its peak; otherwise the (rows, n) block itself stays within it."""
        if self.sample_stride() >= 2:
            return CHUNK_ROWS
        return max(1, min(CHUNK_ROWS, CHUNK_BYTES // (4 * self.n)))


def candidate_order(dist_row: np.ndarray, word: int) -> np.ndarray:
    """The word first, then every other word by (distance, id): the order of the neighbour table,
    of the exact-search fallback and of the audit's oracle, which must all agree."""
    others = np.delete(np.arange(len(dist_row)), word)
    return np.concatenate(([word], others[np.lexsort((others, dist_row[others]))]))


def _ranked(ids: np.ndarray, d2: np.ndarray):
    """Sort candidate columns of each row by (squared distance, id)."""
    order = np.lexsort((ids, d2), axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(d2, order, -1)


@dataclass(frozen=True)
class RowBlock:
    """Exact figures of rows [start, start + len): the unit of work of a (distributed) build."""

    start: int
    neighbour_ids: np.ndarray  # int32 (rows, K + 1)
    neighbour_d2: np.ndarray  # float64 (rows, K + 1), exact squared distances
    min_pos: np.ndarray  # float64 (rows,): exact smallest non-zero squared distance of the row
    min_arg: np.ndarray  # int64 (rows,): the word at that distance
    max_approx: np.ndarray  # float64 (rows,): float32 row maximum, for the exact Dmax pass


def row_block(geom: Geometry, start: int, stop: int, k: int) -> RowBlock:
    """Exact K nearest neighbours and row minima of rows [start, stop) against all words.

    Float32 products rank the candidates; they are re-scored in float64; a row whose ranking the
    float32 error bound cannot certify is recomputed exactly, so the block is exact on its own.
    """
    n, v32, tol = geom.n, geom.v32, geom.tol
    m = min(k + MARGIN, n - 1)
    rows = np.arange(start, stop)
    if len(rows) * n * 4 > CHUNK_BYTES and m < n - 1 and geom.sample_stride() >= 2:
        cand, rest_min, max_approx = _candidates_tiled(geom, start, stop, m)
    else:
        cand, rest_min, max_approx = _candidates_whole(geom, start, stop, m)
    ids_out = np.empty((len(rows), k + 1), dtype=np.int32)
    d2_out = np.empty((len(rows), k + 1), dtype=np.float64)
    min_pos = np.full(len(rows), np.inf)
    min_arg = np.zeros(len(rows), dtype=np.int64)
    recheck = []
    for s in range(0, len(rows), EXACT_SUBCHUNK):
        sub = slice(s, s + EXACT_SUBCHUNK)
        r = rows[sub]
        diff = v32[cand[sub]].astype(np.float64) - v32[r].astype(np.float64)[:, None, :]
        exact = np.einsum("bkd,bkd->bk", diff, diff)
        c_ids, c_d2 = _ranked(cand[sub], exact)
        ids_out[sub, 0], d2_out[sub, 0] = r, 0.0
        ids_out[sub, 1:], d2_out[sub, 1:] = c_ids[:, :k], c_d2[:, :k]
        # Exact iff every excluded word is provably farther than the last kept one, and the
        # row's smallest non-zero distance is among the candidates.
        pos = np.where(c_d2 > 0, c_d2, np.inf)
        min_pos[sub] = pos.min(axis=1)
        min_arg[sub] = c_ids[np.arange(len(r)), pos.argmin(axis=1)]
        unsafe = (c_d2[:, k - 1] >= rest_min[sub] - tol[r]) | ~np.isfinite(min_pos[sub])
        unsafe &= np.isfinite(rest_min[sub])
        recheck.extend((s + np.flatnonzero(unsafe)).tolist())
    for local in recheck:
        i = start + local
        exact = geom.exact_row(i)
        order = candidate_order(exact, i)[: k + 1]
        ids_out[local], d2_out[local] = order, exact[order]
        others = np.delete(np.arange(n), i)
        pos = np.where(exact[others] > 0, exact[others], np.inf)
        min_pos[local], min_arg[local] = pos.min(), others[pos.argmin()]
    return RowBlock(start, ids_out, d2_out, min_pos, min_arg, max_approx)


def build_tables(vectors: np.ndarray, neighbours: int, progress: bool = True) -> Tables:
    """Every row block in turn, then the global extremes (a distributed build runs the blocks on
    workers and the same `assemble` on the driver)."""
    from tqdm import tqdm

    geom = Geometry(vectors)
    chunk = geom.chunk_rows()
    blocks = []
    with tqdm(total=geom.n, unit="word", desc="exact neighbours", disable=not progress, mininterval=1.0) as bar:
        for start in range(0, geom.n, chunk):
            blocks.append(row_block(geom, start, min(start + chunk, geom.n), neighbours))
            bar.update(len(blocks[-1].min_pos))
    return assemble(geom, blocks)


def assemble(geom: Geometry, blocks: list[RowBlock]) -> Tables:
    """The tables and the exact global Dmin and Dmax from the row blocks (in any order)."""
    blocks = sorted(blocks, key=lambda b: b.start)
    covered = np.concatenate([np.arange(b.start, b.start + len(b.min_pos)) for b in blocks])
    if not np.array_equal(covered, np.arange(geom.n)):
        raise ValueError("the row blocks do not cover every word exactly once")
    min_pos = np.concatenate([b.min_pos for b in blocks])
    dmin_row = int(np.argmin(min_pos))
    if not np.isfinite(min_pos[dmin_row]):
        raise ParameterError("all vectors are identical: there is no non-zero distance")
    min_arg = np.concatenate([b.min_arg for b in blocks])
    dmax, dmax_pair = _exact_dmax(geom, np.concatenate([b.max_approx for b in blocks]))
    return Tables(
        neighbour_ids=np.concatenate([b.neighbour_ids for b in blocks]),
        neighbour_distances=np.sqrt(np.concatenate([b.neighbour_d2 for b in blocks])).astype(np.float32),
        dmin=float(np.sqrt(min_pos[dmin_row])),
        dmin_pair=(dmin_row, int(min_arg[dmin_row])),
        dmax=dmax,
        dmax_pair=dmax_pair,
    )


def _candidates_whole(geom: Geometry, start: int, stop: int, m: int):
    """The m nearest columns of rows [start, stop) (the word itself excluded), the (m + 1)-th
    float32 squared distance and the float32 row maximum, from the whole (rows, n) block."""
    n = geom.n
    rows = np.arange(start, stop)
    d2 = _float32_d2(geom, start, stop, slice(None))
    max_approx = d2.max(axis=1).astype(np.float64)
    d2[rows - start, rows] = np.inf  # the word itself is added back in front
    if m >= n - 1:
        return np.argsort(d2, axis=1)[:, : n - 1], np.full(len(rows), np.inf), max_approx
    stride = geom.sample_stride()
    if stride < 2:
        part = _argpartition_threaded(d2, m)
        return part[:, :m], np.take_along_axis(d2, part[:, m : m + 1], 1)[:, 0].astype(np.float64), max_approx
    # The (m + 1)-th smallest of an evenly spaced sample bounds the row's (m + 1)-th smallest from
    # above: the columns at or under it hold the m smallest and the (m + 1)-th.
    bound = np.partition(d2[:, ::stride], m, axis=1)[:, m]
    r, c = np.nonzero(d2 <= bound[:, None])
    return (*_smallest_per_row(r, c, d2[r, c], len(rows), m), max_approx)


def _candidates_tiled(geom: Geometry, start: int, stop: int, m: int):
    """What _candidates_whole returns, computed in column tiles of at most CHUNK_BYTES: the bound
    comes from a separate product with the sampled columns. Two float32 computations of one
    distance differ by at most twice the row's error bound, so the bound is raised by that and
    still leaves at least m + 1 columns under it."""
    n, stride = geom.n, geom.sample_stride()
    rows = np.arange(start, stop)
    sample = _float32_d2(geom, start, stop, np.arange(0, n, stride))  # ids: a contiguous copy for the product
    sampled_self = rows % stride == 0  # the word's own column is in the sample
    sample[np.flatnonzero(sampled_self), rows[sampled_self] // stride] = np.inf
    bound = np.partition(sample, m, axis=1)[:, m].astype(np.float64) + 2 * geom.tol[rows]
    bound = np.nextafter(bound.astype(np.float32), np.float32(np.inf))  # rounded up, never down
    del sample
    max_approx = np.full(len(rows), -np.inf, dtype=np.float32)
    found_rows, found_cols, found_d2 = [], [], []
    tile = max(1, CHUNK_BYTES // (4 * len(rows)))
    for c0 in range(0, n, tile):
        c1 = min(c0 + tile, n)
        d2 = _float32_d2(geom, start, stop, slice(c0, c1))
        np.maximum(max_approx, d2.max(axis=1), out=max_approx)
        inside = rows[(rows >= c0) & (rows < c1)]
        d2[inside - start, inside - c0] = np.inf
        r, c = np.nonzero(d2 <= bound[:, None])
        found_rows.append(r), found_cols.append(c + c0), found_d2.append(d2[r, c])
    r = np.concatenate(found_rows)
    order = np.argsort(r, kind="stable")
    cand, rest_min = _smallest_per_row(
        r[order], np.concatenate(found_cols)[order], np.concatenate(found_d2)[order], len(rows), m
    )
    return cand, rest_min, max_approx.astype(np.float64)


def _float32_d2(geom: Geometry, start: int, stop: int, columns) -> np.ndarray:
    """Float32 squared distances from the words [start, stop) to the words `columns` (a slice or
    ids), always computed in the same order, so the float32 error bound holds for every block and
    tile."""
    d2 = (-2.0 * geom.v32[start:stop]) @ geom.v32[columns].T  # scaling by -2 is exact
    d2 += geom.sq32[start:stop, None]
    d2 += geom.sq32[None, columns]
    return d2


def _smallest_per_row(rows: np.ndarray, cols: np.ndarray, d2: np.ndarray, n_rows: int, m: int):
    """From candidate (row, column, float32 d2) triples sorted by row, each holding at least m + 1
    columns of its row including the m + 1 smallest: the m smallest columns (ties in any order)
    and the (m + 1)-th value."""
    ends = np.searchsorted(rows, np.arange(n_rows + 1))
    cand = np.empty((n_rows, m), dtype=np.intp)
    rest_min = np.empty(n_rows)
    for r in range(n_rows):
        c, values = cols[ends[r] : ends[r + 1]], d2[ends[r] : ends[r + 1]]
        part = np.argpartition(values, m)
        cand[r], rest_min[r] = c[part[:m]], values[part[m]]
    return cand, rest_min


def _argpartition_threaded(d2: np.ndarray, m: int) -> np.ndarray:
    """np.argpartition along rows, split across cores (numpy releases the GIL while sorting)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(os.cpu_count() or 1, len(d2)))
    blocks = np.array_split(np.arange(len(d2)), workers)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda b: np.argpartition(d2[b[0] : b[-1] + 1], m, axis=1), blocks)
        return np.concatenate(list(parts))


def _exact_dmax(geom: Geometry, row_max_approx: np.ndarray):
    """Exact global maximum: recompute every row whose float32 maximum could hold it."""
    tol = geom.tol
    floor = np.max(row_max_approx - tol)
    best, pair = -1.0, (0, 0)
    for i in np.flatnonzero(row_max_approx + tol >= floor):
        exact = geom.exact_row(int(i))
        j = int(np.argmax(exact))
        if exact[j] > best:
            best, pair = float(exact[j]), (int(i), j)
    return float(np.sqrt(best)), pair
