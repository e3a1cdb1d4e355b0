"""diffractor: 1-Diffractor (Meisenbacher, Chevli, Matthes, IWSPA 2024), the vocabulary ordered into
one-dimensional lists and a two-sided geometric step along one of them.

The lists. The paper turns each embedding model into a list of its words by a greedy
nearest-neighbour path: start at some word, then repeatedly step to the nearest word not yet in
the list (its code asks a faiss IVF index; several lists per model start at different words, drawn
at random or, in its "outside" variant, far from the origin). dptext has one embedding, so it
builds `lists` such paths through it, each the exact greedy path (the nearest unvisited word by
(distance, id), read from the K-nearest-neighbour table while that holds an unvisited word and
from an exact search otherwise), started at words chosen by farthest-point selection from the
embedding's centroid: deterministic, so the lists are a table of the index (stored once, read by
every worker), like the other mechanisms' embedding-only tables.

The step. For a word w at position i in list l, the paper adds two-sided geometric noise
k, P(k) = (1 - a) / (1 + a) a^|k| with a = exp(-eps) (its truncated geometric mechanism, sensitivity
1), keeps the position inside the list (clamping to 0 or n - 1: the truncation), and returns the
word at position i + k. Every list proposes one word and one of them is kept uniformly at random;
drawing the list first and stepping along that list alone has the same output distribution
(the other lists' draws are discarded unseen), so each token costs one draw.

The guarantee. On one list, P[M_l(w) = y] / P[M_l(w') = y] <= exp(eps |pos_l(w) - pos_l(w')|)
for every output y (the geometric mechanism is metric DP in the position; clamping is
post-processing). The mixture over lists keeps the bound with the largest of those distances:
P[M(w) = y] = (1 / L) sum_l P[M_l(w) = y] <= exp(eps d_V(w, w')) P[M(w') = y] with
d_V(w, w') = max_l |pos_l(w) - pos_l(w')|. d_V is a distance in list positions, not in the
embedding; any two words are at most n - 1 positions apart, so every word is protected at least
as pure (eps (n - 1))-DP. `diffractor_distribution` is the exact output distribution (the test
oracle); `audit_diffractor_subsets` runs the exact audit on small vocabularies drawn from the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.audit import AUDIT_SIZES, audit_pairs, pairwise_distances
from dptext.transforms.errors import ParameterError
from dptext.transforms.index_build import candidate_order
from dptext.transforms.mechanisms.base import Mechanism, check_epsilon_range, largest_epsilon, parameter
from dptext.transforms.mechanisms.guarantee import Claim, Guarantee
from dptext.transforms.mechanisms.truncated_gumbel import unbounded_exponential
from dptext.transforms.numerics import U32, gamma32

NAME = "diffractor"
TABLE = "diffractor_lists"
# The list construction's identity in the stored table's key: a changed construction is another table.
CONSTRUCTION = "greedy-nearest-unvisited, farthest-point starts from the centroid, v1"
DEFAULT_LISTS = 5  # the paper's setting: five embedding models, one list each
MAX_LISTS = 32


def check_lists(lists) -> None:
    if isinstance(lists, bool) or not isinstance(lists, (int, np.integer)) or not 1 <= lists <= MAX_LISTS:
        raise ParameterError(
            f"lists must be an integer in [1, {MAX_LISTS}], got {lists!r} (each list is a greedy path "
            "through the whole vocabulary, built once per index)"
        )


@dataclass(frozen=True)
class DiffractorParams:
    lists: int = parameter(
        DEFAULT_LISTS,
        "number of one-dimensional word lists (greedy nearest-neighbour paths through the embedding, "
        f"stored with the index); each token steps along one of them chosen uniformly (1 to {MAX_LISTS})",
    )

    def __post_init__(self):
        check_lists(self.lists)
        object.__setattr__(self, "lists", int(self.lists))


# ---- the lists ---------------------------------------------------------------------------------
def farthest_point_starts(vectors: np.ndarray, count: int) -> np.ndarray:
    """count start words: the word farthest from the centroid, then each time the word farthest from
    every start chosen so far (ties by id). With more starts than distinct vectors, starts repeat."""
    v = np.asarray(vectors)
    centroid = sum(v[i : i + _ROWS].astype(np.float64).sum(axis=0) for i in range(0, len(v), _ROWS)) / len(v)
    nearest = _distances_to(v, centroid)
    starts = []
    for _ in range(count):
        s = int(np.argmax(nearest))
        starts.append(s)
        nearest = np.minimum(nearest, _distances_to(v, v[s].astype(np.float64)))
    return np.array(starts, dtype=np.int64)


_ROWS = 65536  # rows per float64 block: the vectors are never copied whole in float64


def _distances_to(vectors: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Float64 distances from every row to one point, a block of rows at a time."""
    out = np.empty(len(vectors))
    for i in range(0, len(vectors), _ROWS):
        diff = vectors[i : i + _ROWS].astype(np.float64) - point
        out[i : i + _ROWS] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def greedy_path(vectors: np.ndarray, neighbour_ids: np.ndarray, start: int, squared_norms=None) -> np.ndarray:
    """The exact greedy nearest-neighbour path through every word from start (int32 ids in list order).

    Each step goes to the nearest unvisited word by (distance, id). The K-nearest-neighbour table
    (rows ranked by (distance, id), the word first) answers whenever it holds an unvisited word: its
    first unvisited entry is then the nearest unvisited word overall. Otherwise every unvisited
    word is screened with float32 squared distances and the few near the smallest are ranked exactly
    in float64.
    """
    vectors32 = np.asarray(vectors, dtype=np.float32)
    table = np.asarray(neighbour_ids)
    n, d = vectors32.shape
    sq = (
        _distances_to(vectors32, np.zeros(d)) ** 2
        if squared_norms is None
        else np.asarray(squared_norms, dtype=np.float64)
    )
    visited = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int32)
    # The words an exact search screens: a copy of the unvisited ones, compacted when half are visited.
    pool = np.arange(n)
    pool_vectors, pool_sq = vectors32, sq.astype(np.float32)
    current = int(start)
    for step in range(n):
        order[step] = current
        visited[current] = True
        if step == n - 1:
            break
        row = table[current, 1:]
        free = ~visited[row]
        if free.any():
            current = int(row[np.argmax(free)])
            continue
        live = ~visited[pool]
        if 2 * live.sum() < len(pool):
            pool = pool[live]
            pool_vectors, pool_sq = vectors32[pool], sq[pool].astype(np.float32)
            live = np.ones(len(pool), dtype=bool)
        screened = pool_sq - 2.0 * (pool_vectors @ vectors32[current])
        screened[~live] = np.inf
        # |y|^2 - 2 y.x in float32 errs by at most (2 gamma_d + 4 u) (|y|^2 + |x|^2) (Higham 3.1): every
        # word within twice that of the smallest may be the nearest, and is ranked exactly.
        slack = 2 * (2 * gamma32(d) + 4 * U32) * (float(sq.max()) + float(sq[current])) + 1e-30
        close = pool[screened <= screened.min() + slack]
        diff = vectors32[close].astype(np.float64) - vectors32[current].astype(np.float64)
        exact = np.einsum("ij,ij->i", diff, diff)
        current = int(close[np.lexsort((close, exact))[0]])
    return order


def build_lists(vectors: np.ndarray, neighbour_ids: np.ndarray, lists: int, squared_norms=None) -> np.ndarray:
    """(lists, n) int32: row l holds the word ids in the order of list l."""
    starts = farthest_point_starts(vectors, lists)
    return np.stack([greedy_path(vectors, neighbour_ids, s, squared_norms) for s in starts]).astype(np.int32)


def positions_of(orders: np.ndarray) -> np.ndarray:
    """(lists, n) int32: entry [l, w] is w's position in list l (the inverse permutations)."""
    orders = np.asarray(orders)
    L, n = orders.shape
    positions = np.empty((L, n), dtype=np.int32)
    positions[np.arange(L)[:, None], orders] = np.arange(n, dtype=np.int32)[None, :]
    return positions


def full_table(dist: np.ndarray) -> np.ndarray:
    """The (n, n) neighbour table of a small vocabulary (every word ranked, the word first)."""
    return np.stack([candidate_order(dist[i], i) for i in range(len(dist))])


# ---- the step --------------------------------------------------------------------------------
def geometric_steps(rng: np.random.Generator, epsilon: float, size: int, limit: int) -> np.ndarray:
    """size draws of k with P(k) = (1 - a) / (1 + a) a^|k|, a = exp(-epsilon), |k| capped at limit
    (positions beyond the list are clamped anyway, so the cap changes no output when limit >= n - 1).

    k = 0 with probability tanh(epsilon / 2) = (1 - a) / (1 + a); otherwise a random sign and
    |k| = 1 + floor(E / epsilon), E ~ Exponential(1), since P(floor(E / epsilon) >= m) = a^m.
    One uniform decides both zero and sign (given u >= p0, u is uniform on [p0, 1)).
    """
    p0 = math.tanh(0.5 * epsilon)
    u = rng.random(size)
    with np.errstate(over="ignore"):  # E / epsilon overflows to inf for a subnormal epsilon: capped
        magnitude = np.minimum(np.floor(unbounded_exponential(rng, size) / epsilon), limit - 1) + 1
    sign = np.where(u - p0 < 0.5 * (1.0 - p0), 1, -1)
    return np.where(u < p0, 0, sign * magnitude.astype(np.int64))


class Diffractor(Mechanism):
    name = NAME
    Params = DiffractorParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        check_epsilon_range(
            NAME,
            self.epsilon,
            math.ulp(0.0),
            largest_epsilon(max(index.n - 1, 1)),
            "",
            above=(
                "above it epsilon x (n - 1), the per-token bound the report composes, is not a finite float64; "
                "any epsilon near the largest already keeps every word"
            ),
        )
        self.lists = self.p.lists
        table = index.table(
            TABLE,
            lambda idx: build_lists(idx.vectors, idx.neighbour_ids, self.lists, idx.squared_norms()),
            {"lists": self.lists, "construction": CONSTRUCTION},
        )
        self.orders = np.ascontiguousarray(table, dtype=np.int32)
        self.positions = positions_of(self.orders)

    def params(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "lists": self.lists,
            "lists_construction": CONSTRUCTION,
            "step": "two-sided geometric on list positions, a = exp(-epsilon), clamped to the list",
        }

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.index.n
        which = rng.integers(0, self.lists, len(ids)) if self.lists > 1 else np.zeros(len(ids), dtype=np.int64)
        steps = geometric_steps(rng, self.epsilon, len(ids), n)
        target = np.clip(self.positions[which, ids].astype(np.int64) + steps, 0, n - 1)
        return self.orders[which, target]

    def compute_guarantee(self) -> Guarantee:
        eps, n, L = self.epsilon, self.index.n, self.lists
        audited = audit_diffractor_subsets(self.index, eps, L)
        worst_rate = max(r["worst_metric_rate"] for r in audited)
        return Guarantee(
            mechanism=NAME,
            kind="metric-DP",
            rate=eps,
            basis="proved",
            statement=(
                f"P[M(w)=y] <= exp({eps:g} * d_V(w, w')) * P[M(w')=y] for every pair of vocabulary words w, w' "
                f"and every output y, where d_V(w, w') is the largest distance between the positions of w and "
                f"w' in any of the {L} word lists (a distance in list positions, not in the embedding): metric "
                f"DP at rate epsilon in d_V. Words next to each other in every list are hard to tell apart, words "
                f"far apart in some list are not: any two words are protected at least as well as pure "
                f"({eps:g} x {n - 1})-DP, a weak bound on a large vocabulary."
            ),
            per_token_pure_epsilon=eps * (n - 1),
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: epsilon * (n - 1) = {eps:g} * {n - 1}; no two words are more than n - 1 "
                "positions apart in any list"
            ),
            claimed=Claim(
                "the paper states an epsilon d_V-privacy guarantee, built on the truncated geometric mechanism "
                "over the words' indices in its one-dimensional lists",
                {"epsilon": eps},
            ),
            audited={
                "exact_audit": audited,
                "worst_metric_rate_in_d_V": worst_rate,
                "note": (
                    "exact output distributions of diffractor on vocabularies of 9, 20 and 40 words drawn from "
                    "this embedding (lists built on each): worst log-ratio per unit of d_V <= epsilon confirms "
                    "the rate; worst_rate_per_euclidean_distance shows that no rate in embedding distance follows"
                ),
            },
            confirmed_by=(
                "tests/test_diffractor.py: the sampler matches the exact distribution (chi-square and total "
                "variation) and the exact audit finds every log-ratio <= epsilon * d_V(w, w')"
            ),
            extra={"metric": "d_V(w, w') = max over lists of |position difference|", "lists": L},
        )


# ---- the exact output distribution (the test oracle) and the exact audit -------------------------
def list_distance(orders: np.ndarray) -> np.ndarray:
    """(n, n) d_V: the largest distance between two words' positions in any list."""
    positions = positions_of(orders).astype(np.int64)
    return np.abs(positions[:, :, None] - positions[:, None, :]).max(axis=0).astype(np.float64)


def diffractor_distribution(orders: np.ndarray, epsilon: float) -> np.ndarray:
    """Exact P[w, y] of diffractor with these lists ((L, n) word ids in list order), float64.

    On one list, from position i: position j strictly inside gets (1 - a) / (1 + a) a^|i - j|, and
    the ends collect the clamped tails: j = 0 gets a^i / (1 + a), j = n - 1 gets a^(n-1-i) / (1 + a).
    P is the mean over the lists; the factors are taken in logs, accurate at any epsilon.
    """
    orders = np.asarray(orders)
    L, n = orders.shape
    positions = positions_of(orders)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    log_a = -float(epsilon)
    a = math.exp(-epsilon)
    log_interior = math.log(-math.expm1(-epsilon)) - math.log1p(a)  # ln((1 - a) / (1 + a)), any epsilon
    log_end = -math.log1p(a)
    logp = np.abs(i - j) * log_a + np.where((j == 0) | (j == n - 1), log_end, log_interior)
    by_position = np.exp(logp)  # (n positions, n positions) of one list
    P = np.zeros((n, n))
    for order, pos in zip(orders, positions):
        # word w at pos[w]; output word order[j] at position j
        P[:, order] += by_position[pos]
    return P / L


def small_vocabulary_lists(vectors: np.ndarray, lists: int) -> np.ndarray:
    """The lists of a small vocabulary (audits and tests): as on the index, with every word ranked."""
    vectors = np.asarray(vectors, dtype=np.float64)
    table = full_table(pairwise_distances(vectors))
    return np.stack([greedy_path(vectors, table, s) for s in farthest_point_starts(vectors, lists)])


def audit_diffractor_subsets(index, epsilon: float, lists: int, sizes=AUDIT_SIZES, seed: int = 0) -> list[dict]:
    """audit_diffractor on random vocabularies of the given sizes drawn from the index (fixed seed:
    which words are audited is not privacy randomness)."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in dict.fromkeys(min(int(s), index.n) for s in sizes):
        chosen = np.sort(rng.choice(index.n, size, replace=False))
        vectors = np.asarray(index.vectors[chosen], dtype=np.float64)
        dist = pairwise_distances(vectors)
        orders = small_vocabulary_lists(vectors, lists)
        P = diffractor_distribution(orders, epsilon)
        row = {"n": size, "epsilon": epsilon, "lists": lists}
        row.update(audit_pairs(P, list_distance(orders), rate=epsilon))
        row["worst_rate_per_euclidean_distance"] = audit_pairs(P, dist)["worst_metric_rate"]
        row["worst_pair"] = [int(chosen[i]) for i in row["worst_pair"]]
        row["worst_output"] = int(chosen[row["worst_output"]])
        row["metric_rate_contradicted"] = row["worst_metric_rate"] > epsilon * (1 + 1e-9)
        rows.append(row)
    return rows
