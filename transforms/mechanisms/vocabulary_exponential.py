"""Exact batched sampling of exponential mechanisms over the whole vocabulary.

P[M(w) = y] is proportional to exp(log_base[y] - (eps / 2) min(d(w, y), cap)) over every word y:
tem (uniform base, cap = gamma) and kde_prior's exact sampler (base alpha ln pi, no cap).

Touching all n words per token would cost O(n d) each. Instead every token draws from an
envelope: its K + 1 table words with their exact weights, plus one "tail" outcome standing for
every other word y with the weight exp(log_base[y] - (eps / 2) min(dK, cap)), where dK (a lower
bound on the K-th neighbour distance) is at most d(w, y) for every word outside the table. The
envelope is sampled by Gumbel-max; a tail draw picks y by its base weight among the words outside
the table and is accepted with probability exp(-(eps / 2) (min(d(w, y), cap) - min(dK, cap))) <= 1.
A rejected token starts again from scratch, so the accepted outputs follow P exactly (rejection
sampling from an envelope that dominates P).
"""
from __future__ import annotations

import math

import numpy as np

from transforms.mechanisms.base import as_ids

# The table stores float32 distances: shrinking dK by this relative margin keeps it below the
# exact distance of every word outside the table, so an acceptance probability never exceeds 1.
_DK_MARGIN = 1e-5
_PROPOSALS_PER_CALL = 16384   # tail proposals scored at once (memory: x d x 4 bytes)
_U32 = float(np.finfo(np.float32).eps) / 2


def _gamma(d: int) -> float:
    return d * _U32 / (1 - d * _U32)


_GAMMA32 = _gamma(1024)       # covers every d <= 1024; recomputed below for larger embeddings
_NORMS: dict = {}


def _squared_norms(index) -> np.ndarray:
    """Exact (float64) squared norms of the vectors, once per index."""
    global _GAMMA32
    key = id(index)
    if key not in _NORMS or _NORMS[key][0] is not index:
        if len(_NORMS) > 8:
            _NORMS.clear()
        v = np.asarray(index.vectors, dtype=np.float64)
        _NORMS[key] = (index, np.einsum("ij,ij->i", v, v))
        _GAMMA32 = max(_GAMMA32, _gamma(index.d))
    return _NORMS[key][1]


class _Base:
    """Base weights exp(log_base) (max 1), their running sum for inverse-CDF draws, their total."""

    def __init__(self, n: int, log_base):
        if log_base is None:
            self.weights = None
            self.total = float(n)
        else:
            log_base = np.asarray(log_base, dtype=np.float64)
            if log_base.shape != (n,) or np.isnan(log_base).any() or np.isposinf(log_base).any():
                raise ValueError(f"log_base must be {n} finite numbers or -inf")
            self.weights = np.exp(log_base - log_base.max())
            self.log_shift = float(log_base.max())
            self.cumulative = np.cumsum(self.weights)
            self.total = float(self.cumulative[-1])
        self.n = n

    def log(self, ids: np.ndarray) -> np.ndarray:
        return np.zeros(ids.shape) if self.weights is None else np.log(self.weights[ids])

    def row_mass(self, table_rows: np.ndarray) -> np.ndarray:
        if self.weights is None:
            return np.full(len(table_rows), float(table_rows.shape[1]))
        return self.weights[table_rows].sum(axis=1)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.weights is None:
            return rng.integers(0, self.n, size)
        u = rng.random(size) * self.total
        return np.minimum(np.searchsorted(self.cumulative, u, side="right"), self.n - 1)


_BASE_CACHE: dict = {}


def _base(n: int, log_base) -> _Base:
    """One _Base per log_base array (mechanisms pass the same array for every batch)."""
    key = (n, None if log_base is None else id(log_base))
    cached = _BASE_CACHE.get(key)
    if cached is None or (log_base is not None and cached[1] is not log_base):
        if len(_BASE_CACHE) > 16:
            _BASE_CACHE.clear()
        cached = (_Base(n, log_base), log_base)
        _BASE_CACHE[key] = cached
    return cached[0]


def sample_capped_exponential(index, ids, rng: np.random.Generator, epsilon: float, log_base=None,
                              cap: float = math.inf) -> np.ndarray:
    """One exact draw of y ~ exp(log_base[y] - (eps / 2) min(d(w, y), cap)) for every id w."""
    ids = as_ids(ids, index.n)
    out = np.empty(len(ids), dtype=np.int32)
    if not len(ids):
        return out
    base = _base(index.n, log_base)
    half_eps = 0.5 * float(epsilon)
    table_ids = np.asarray(index.neighbour_ids[ids])                       # (m, K + 1)
    table_d = np.asarray(index.neighbour_distances[ids], dtype=np.float64)
    near_logw = base.log(table_ids) - half_eps * np.minimum(table_d, cap)
    dk = np.minimum(table_d[:, -1] * (1.0 - _DK_MARGIN), cap)
    # Envelope: the table words with their exact weights, the other words at weight base x exp(-eps dK / 2).
    shift = near_logw.max(axis=1)
    near_w = np.exp(near_logw - shift[:, None])
    tail_mass = np.maximum(base.total - base.row_mass(table_ids), 0.0)   # base mass outside the table
    tail_mass[tail_mass <= base.total * 1e-12] = 0.0    # no word outside (or only rounding): never chosen
    tail_w = tail_mass * np.exp(-half_eps * dk - shift)
    p_table = near_w.sum(axis=1) / (near_w.sum(axis=1) + tail_w)
    # Each round of the rejection sampler: with probability p_table the envelope draw is a table
    # word (accepted), otherwise a tail proposal accepted with its ratio; several rounds per token
    # are drawn at once, and the first one that ends is the token's draw.
    from_table = np.zeros(len(ids), dtype=bool)
    pending, rounds = np.arange(len(ids)), 4
    while pending.size:
        ended, tail_word = _rounds(index, ids, table_ids, dk, p_table, half_eps, cap, base, rng, pending, rounds)
        resolved = ended >= 0
        done = pending[resolved]
        is_table = tail_word[resolved] < 0
        from_table[done[is_table]] = True
        out[done[~is_table]] = tail_word[resolved][~is_table]
        # Later rounds are for the few tokens whose tail is hard to hit: give each of them more.
        pending = pending[~resolved]
        rounds = int(min(4 * rounds, max(4, _PROPOSALS_PER_CALL // max(pending.size, 1))))
    rows = np.flatnonzero(from_table)
    if rows.size:                          # a table word, by its exact weight (inverse CDF)
        cumulative = np.cumsum(near_w[rows], axis=1)
        u = rng.random(rows.size) * cumulative[:, -1]
        col = np.minimum((cumulative < u[:, None]).sum(axis=1), table_ids.shape[1] - 1)
        out[rows] = table_ids[rows, col]
    return out


def _rounds(index, ids, table_ids, dk, p_table, half_eps, cap, base: _Base, rng, pending, rounds):
    """`rounds` rounds for each pending token: the first that ends (-1 if none) and, when it ended
    with an accepted tail proposal, that word (-1 when it ended on a table draw)."""
    m = pending.size
    table_round = rng.random((m, rounds)) < p_table[pending, None]
    y = base.draw(rng, m * rounds).reshape(m, rounds)
    rows = table_ids[pending]
    inside = (rows[:, None, :] == y[:, :, None]).any(axis=2)
    while inside.any():                    # proposals are restricted to words outside the table
        redo = np.nonzero(inside)
        y[redo] = base.draw(rng, len(redo[0]))
        inside[redo] = (rows[redo[0]] == y[redo][:, None]).any(axis=1)
    vectors = np.asarray(index.vectors)             # a plain view: memmap indexing is slow per call
    sq = _squared_norms(index)
    source = vectors[ids[pending]]
    dot = np.empty((m, rounds), dtype=np.float32)
    step = max(1, _PROPOSALS_PER_CALL // rounds)   # bounds the gathered (rows, rounds, d) vectors
    for s in range(0, m, step):
        dot[s:s + step] = np.einsum("ijk,ik->ij", vectors[y[s:s + step]], source[s:s + step])
    # d^2 = |y|^2 + |w|^2 - 2 y.w with the dot product in float32: its error is at most
    # gamma_d |y| |w| (Higham 3.1, gamma_d = d u / (1 - d u)), plus rounding of the sum; the
    # proposals whose acceptance that error could flip are recomputed exactly in float64.
    sq_y, sq_w = sq[y], sq[ids[pending]][:, None]
    d2 = np.maximum(sq_y + sq_w - 2.0 * dot, 0.0)
    approx = np.minimum(np.sqrt(d2), cap)
    d2_error = 2 * _GAMMA32 * np.sqrt(sq_y * sq_w) + 4 * _U32 * (sq_y + sq_w)
    error = d2_error / np.maximum(np.sqrt(d2) + np.sqrt(np.maximum(d2 - d2_error, 0.0)), 1e-300) + 1e-12
    # Accept iff U < exp(-(eps/2)(min(d, cap) - dK)), i.e. min(d, cap) < dK - ln(U) / (eps/2).
    threshold = dk[pending, None] - np.log(rng.random((m, rounds))) / half_eps
    accepted = approx + error < threshold
    unsure = np.nonzero(np.abs(approx - threshold) <= error)
    if unsure[0].size:
        diff = vectors[y[unsure]].astype(np.float64) - vectors[ids[pending[unsure[0]]]].astype(np.float64)
        exact = np.minimum(np.sqrt(np.einsum("ij,ij->i", diff, diff)), cap)
        accepted[unsure] = exact < threshold[unsure]
    ends = table_round | accepted
    first = np.where(ends.any(axis=1), np.argmax(ends, axis=1), -1)
    picked = np.arange(m), np.maximum(first, 0)
    word = np.where((first >= 0) & ~table_round[picked], y[picked], -1)
    return first, word.astype(np.int32)
