"""Exact batched sampling of exponential mechanisms over the whole vocabulary.

P[M(w) = y] is proportional to exp(log_base[y] - (eps / 2) min(d(w, y), cap)) over every word y:
tem (uniform base, cap = gamma) and kde_prior's exact sampler (base alpha ln pi, no cap).

Touching all n words per token would cost O(n d) each. Instead every token draws from an
envelope: its K + 1 table words with their exact weights, plus one "tail" outcome standing for
the n - K - 1 words outside the table, each at the weight exp(max log_base - (eps / 2) min(dK, cap)),
where dK (a lower bound on the K-th neighbour distance) is at most d(w, y) for every word outside
the table. The envelope is sampled by Gumbel-max; a tail draw picks a word uniformly among the
words outside the table (exact integer arithmetic, no redraws) and accepts it with probability
exp(log_base[y] - max log_base - (eps / 2) (min(d(w, y), cap) - min(dK, cap))) <= 1. A rejected
token starts again from scratch, so the accepted outputs follow P exactly (rejection sampling from
an envelope that dominates P). When no word lies outside the table (K = n - 1) the tail has weight
0 and every token is a table draw.

Rejection sampling's number of rounds is independent of the accepted word, so a token that is
still pending after MAX_ROUNDS rounds may take its word from P directly (one exact pass over the
vocabulary, O(n d)) without changing the distribution: no token loops for ever, whatever the
prior or epsilon.
"""

from __future__ import annotations

import math

import numpy as np

from dptext.transforms.audit import exponential_distribution
from dptext.transforms.errors import ParameterError
from dptext.transforms.numerics import U32, gamma32

# The table stores float32 distances: shrinking dK by this relative margin keeps it below the
# exact distance of every word outside the table, so an acceptance probability never exceeds 1.
_DK_MARGIN = 1e-5
_PROPOSALS_PER_CALL = 16384  # tail proposals scored at once (memory: x d x 4 bytes)
# Rounds after which a still pending token is drawn by one exact pass over the vocabulary. With an
# acceptance of 1% per round a token gets there with probability 0.99^1024 = 3e-5.
MAX_ROUNDS = 1024
_EXACT_COLUMNS = 65536  # words per float64 slice of the exact pass


def _log_base(n: int, log_base) -> np.ndarray | None:
    """log_base shifted so that its largest value is 0 (None: the uniform base)."""
    if log_base is None:
        return None
    log_base = np.asarray(log_base, dtype=np.float64)
    if log_base.shape != (n,) or np.isnan(log_base).any() or np.isposinf(log_base).any():
        raise ValueError(f"log_base must be {n} finite numbers or -inf")
    top = float(log_base.max())
    if not math.isfinite(top):
        raise ValueError("log_base gives every word weight 0")
    return log_base - top


def sample_capped_exponential(
    index, ids, rng: np.random.Generator, epsilon: float, log_base=None, cap: float = math.inf
) -> np.ndarray:
    """One exact draw of y ~ exp(log_base[y] - (eps / 2) min(d(w, y), cap)) for every id w (vocabulary ids,
    validated by the mechanism's perturb)."""
    ids = np.asarray(ids)
    out = np.empty(len(ids), dtype=np.int32)
    if not len(ids):
        return out
    base = _log_base(index.n, log_base)
    half_eps = 0.5 * float(epsilon)
    table_ids = np.asarray(index.neighbour_ids[ids])  # (m, K + 1)
    table_d = np.asarray(index.neighbour_distances[ids], dtype=np.float64)
    with np.errstate(over="ignore"):
        near_logw = -half_eps * np.minimum(table_d, cap)  # -inf where eps d overflows
    if base is not None:
        near_logw += base[table_ids]
    dk = np.minimum(table_d[:, -1] * (1.0 - _DK_MARGIN), cap)
    outside = index.n - table_ids.shape[1]  # words outside every table
    # Envelope in logs: the table words at their exact weights, the tail at outside x exp(-eps dK / 2).
    shift = near_logw.max(axis=1)
    shift[~np.isfinite(shift)] = 0.0  # a row of weight 0: log_near is -inf below
    near_w = np.exp(near_logw - shift[:, None])
    with np.errstate(divide="ignore", over="ignore"):
        log_near = np.log(near_w.sum(axis=1)) + shift
        log_tail = (math.log(outside) if outside else -math.inf) - half_eps * dk
    with np.errstate(invalid="ignore"):
        p_table = np.exp(log_near - np.logaddexp(log_near, log_tail))
    # A row whose every weight underflows (or is 0) has no envelope to sample: the exact pass decides.
    unsampled = ~np.isfinite(p_table)
    sorted_table = np.sort(table_ids, axis=1)
    # Each round of the rejection sampler: with probability p_table the envelope draw is a table
    # word (accepted), otherwise a tail proposal accepted with its ratio; several rounds per token
    # are drawn at once, and the first one that ends is the token's draw.
    from_table = np.zeros(len(ids), dtype=bool)
    pending, rounds, spent = np.flatnonzero(~unsampled), 4, 0
    while pending.size and spent < MAX_ROUNDS:
        rounds = min(rounds, MAX_ROUNDS - spent)
        ended, tail_word = _rounds(index, ids, sorted_table, dk, p_table, half_eps, cap, base, rng, pending, rounds)
        spent += rounds
        resolved = ended >= 0
        done = pending[resolved]
        is_table = tail_word[resolved] < 0
        from_table[done[is_table]] = True
        out[done[~is_table]] = tail_word[resolved][~is_table]
        # Later rounds are for the few tokens whose tail is hard to hit: give each of them more.
        pending = pending[~resolved]
        rounds = int(min(4 * rounds, max(4, _PROPOSALS_PER_CALL // max(pending.size, 1))))
    for i in np.concatenate((pending, np.flatnonzero(unsampled))):
        out[i] = _exact_draw(index, int(ids[i]), rng, half_eps, base, cap)
    rows = np.flatnonzero(from_table)
    if rows.size:  # a table word, by its exact weight (inverse CDF)
        cumulative = np.cumsum(near_w[rows], axis=1)
        u = rng.random(rows.size) * cumulative[:, -1]
        col = np.minimum((cumulative <= u[:, None]).sum(axis=1), table_ids.shape[1] - 1)
        out[rows] = table_ids[rows, col]
    return out


def uniform_outside(sorted_table: np.ndarray, u: np.ndarray, n: int) -> np.ndarray:
    """The u-th word (0-based, by id) outside each row's table, for u in [0, n - K - 1).

    Row i's table word t_j (sorted) has t_j - j words outside the table below it, so the u-th
    outside word is u plus the number of table words t_j with t_j - j <= u: exact, no redraws.
    """
    m, width = sorted_table.shape
    below = sorted_table.astype(np.int64) - np.arange(width)  # (m, K + 1), non-decreasing
    # One searchsorted for every row: row r's values are offset by r (n + 1), above any row before it.
    offset = np.arange(m, dtype=np.int64)[:, None] * (n + 1)
    flat = (below + offset).ravel()
    count = np.searchsorted(flat, (np.asarray(u, dtype=np.int64) + offset).ravel(), side="right")
    return u + (count.reshape(np.shape(u)) - np.arange(m)[:, None] * width)


def _rounds(index, ids, sorted_table, dk, p_table, half_eps, cap, base, rng, pending, rounds):
    """`rounds` rounds for each pending token: the first that ends (-1 if none) and, when it ended
    with an accepted tail proposal, that word (-1 when it ended on a table draw)."""
    m = pending.size
    table_round = rng.random((m, rounds)) < p_table[pending, None]
    outside = index.n - sorted_table.shape[1]
    if not outside:  # p_table is 1: every round is a table round
        first = np.where(table_round.any(axis=1), np.argmax(table_round, axis=1), -1)
        return first, np.full(m, -1, dtype=np.int32)
    y = uniform_outside(sorted_table[pending], rng.integers(0, outside, (m, rounds)), index.n)
    vectors = np.asarray(index.vectors)  # a plain view: memmap indexing is slow per call
    sq = index.squared_norms()
    source = vectors[ids[pending]]
    dot = np.empty((m, rounds), dtype=np.float32)
    step = max(1, _PROPOSALS_PER_CALL // rounds)  # bounds the gathered (rows, rounds, d) vectors
    for s in range(0, m, step):
        dot[s : s + step] = np.einsum("ijk,ik->ij", vectors[y[s : s + step]], source[s : s + step])
    # d^2 = |y|^2 + |w|^2 - 2 y.w with the dot product in float32: its error is at most
    # gamma_d |y| |w| (Higham 3.1, gamma_d = d u / (1 - d u)), plus rounding of the sum; the
    # proposals whose acceptance that error could flip are recomputed exactly in float64.
    sq_y, sq_w = sq[y], sq[ids[pending]][:, None]
    d2 = np.maximum(sq_y + sq_w - 2.0 * dot, 0.0)
    approx = np.minimum(np.sqrt(d2), cap)
    d2_error = 2 * gamma32(index.d) * np.sqrt(sq_y * sq_w) + 4 * U32 * (sq_y + sq_w)
    error = d2_error / np.maximum(np.sqrt(d2) + np.sqrt(np.maximum(d2 - d2_error, 0.0)), 1e-300) + 1e-12
    # Accept iff U < exp(log_base[y] - (eps/2)(min(d, cap) - dK)), i.e. min(d, cap) < threshold with
    # threshold = dK + (log_base[y] - ln U) / (eps/2) (log_base shifted to max 0; +-inf where eps/2
    # underflows to 0, which is the exact answer then).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        slack = -np.log(rng.random((m, rounds)))
        if base is not None:
            slack += base[y]
        threshold = dk[pending, None] + slack / half_eps
    threshold[np.isnan(threshold)] = -np.inf  # 0 / 0: U = 1 - never
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


def exact_log_weights(index, word: int, half_eps: float, base, cap: float) -> np.ndarray:
    """log_base[y] - (eps / 2) min(d(w, y), cap) for every word y, distances in float64."""
    vectors = np.asarray(index.vectors)
    source = vectors[word].astype(np.float64)
    dist = np.empty(index.n)
    for s in range(0, index.n, _EXACT_COLUMNS):
        diff = vectors[s : s + _EXACT_COLUMNS].astype(np.float64) - source
        dist[s : s + _EXACT_COLUMNS] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    with np.errstate(over="ignore"):
        logw = -half_eps * np.minimum(dist, cap)
    return logw if base is None else logw + base


def _exact_draw(index, word: int, rng, half_eps: float, base, cap: float) -> int:
    """One draw from P[M(word) = .] by Gumbel-max over every word (O(n d))."""
    logw = exact_log_weights(index, word, half_eps, base, cap)
    if not np.isfinite(logw).any():
        raise ParameterError(
            f"every word has weight 0 for word id {word}: the base measure and epsilon leave nothing to sample"
        )
    return int(np.argmax(logw + rng.gumbel(size=logw.shape)))


# ---- the exact output distribution (the test oracle of tem and of kde_prior's exact sampler) ---------
def capped_exponential_distribution(dist: np.ndarray, epsilon: float, log_base=None, cap: float = math.inf):
    """Exact P[w, y] proportional to exp(log_base[y] - (eps / 2) min(d(w, y), cap)) (tem: no base,
    cap gamma; kde_prior: base alpha ln pi, no cap)."""
    base = np.zeros(len(dist)) if log_base is None else log_base
    return exponential_distribution(np.minimum(dist, cap), epsilon, base)
