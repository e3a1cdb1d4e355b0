"""kde_prior: the exponential mechanism over the whole vocabulary with a KDE density prior as its
base measure (Feyisetan et al., FLAIRS 2021; MECHANISMS.md section 3).

P[M(w) = y] is proportional to pi(y)^alpha exp(-eps d(w, y) / 2) over all of W, pi the Gaussian
KDE of the embedding (transforms/kde.py). pi depends only on the embedding, so the mechanism is
metric DP at rate eps: the ratio of the weights of y under w and w' is at most exp(eps d(w, w') / 2)
by the triangle inequality, and so is the ratio of the normalisers.

Samplers: "exact" (sample_capped_exponential, shared with tem: Gumbel-max over the word's table
neighbours plus one tail outcome, with rejection for the tail; exact over all of W) and "mh",
Metropolis-Hastings on the K-nearest-neighbour graph started at w. The MH proposal is uniform over
the current word's K table neighbours, so q(y | x) = 1/K if y in N(x), else 0. The graph is not
symmetric: the Hastings ratio p(y) q(x | y) / (p(x) q(y | x)) is p(y) / p(x) when x is among y's
neighbours and 0 otherwise, so only moves between mutual neighbours are ever accepted. The chain is
then reversible with respect to the target restricted to w's connected component of the mutual
K-NN graph: a word with no mutual neighbour never moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.audit import softmax, total_variation
from dptext.transforms.errors import ParameterError
from dptext.transforms.kde import kde_log_prior, prior_summary
from dptext.transforms.mechanisms.base import FLOAT_MAX, Mechanism, check_epsilon_range, largest_epsilon, parameter
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Guarantee
from dptext.transforms.mechanisms.vocabulary_exponential import (
    capped_exponential_distribution,
    sample_capped_exponential,
)

NAME = "kde_prior"
SAMPLERS = ("exact", "mh")
# From the exact TV audit on the default index (16 random start words, alpha 1, median TV to the
# exact distribution after 100 / 1000 / 3000 / 10000 steps): eps 1: 0.43 / 0.039 / 0.024; eps 2:
# 0.77 / 0.45 / 0.14 / 0.011; eps 3: 0.085 / 0.051 / 0.032; eps >= 4: <= 0.002 at any length. Up to
# ~100 steps the chain barely leaves w (most proposals are one-way or rejected); 1000 brings the
# median below 0.05 except near eps 2 (which needs ~10^4), at ~3 ms per step for 4096 tokens.
DEFAULT_CHAIN_LENGTH = 1000
MAX_CHAIN_LENGTH = 100_000
MUTUAL_TABLE = "knn_mutual"


@dataclass(frozen=True)
class KDEPriorParams:
    alpha: float = parameter(
        1.0,
        "exponent of the KDE density prior pi(y)^alpha (>= 0; 0 is the plain exponential "
        "mechanism over the vocabulary)",
    )
    sampler: str = parameter(
        "exact",
        "exact (exact draw over the whole vocabulary: metric DP) or mh "
        "(Metropolis-Hastings on the K-nearest-neighbour graph: approximate, its "
        "total-variation distance is audited)",
        SAMPLERS,
    )
    chain_length: int = parameter(DEFAULT_CHAIN_LENGTH, "Metropolis-Hastings steps per token (sampler mh only)")
    bandwidth_scale: float = parameter(
        1.0,
        "multiplies the KDE bandwidth of Scott's rule (1 = Scott's rule; in 300 "
        "dimensions Scott's rule leaves pi nearly uniform, larger values let it "
        "follow the local density)",
    )

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ParameterError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.sampler not in SAMPLERS:
            raise ParameterError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if (
            isinstance(self.chain_length, bool)
            or not isinstance(self.chain_length, (int, np.integer))
            or not 1 <= self.chain_length <= MAX_CHAIN_LENGTH
        ):
            raise ParameterError(
                f"chain_length must be an integer in [1, {MAX_CHAIN_LENGTH}], got "
                f"{self.chain_length!r} (every token walks all its steps: {MAX_CHAIN_LENGTH} steps "
                "already take minutes per batch of 4096 tokens)"
            )
        if not (
            isinstance(self.bandwidth_scale, (int, float))
            and math.isfinite(self.bandwidth_scale)
            and self.bandwidth_scale > 0
        ):
            raise ParameterError(f"bandwidth_scale must be a finite number > 0, got {self.bandwidth_scale!r}")


def mutual_neighbours(neighbour_ids: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(n, K) bool: entry [x, k] is True when x is among the K neighbours of y = neighbour_ids[x, k + 1],
    i.e. when the reverse proposal y -> x has probability 1/K rather than 0."""
    table = np.asarray(neighbour_ids)
    out = np.empty((len(table), table.shape[1] - 1), dtype=bool)
    for s in range(0, len(table), rows):
        x = np.arange(s, min(s + rows, len(table)))
        out[x] = (table[table[x, 1:], 1:] == x[:, None, None]).any(axis=2)
    return out


class KDEPrior(Mechanism):
    name = NAME
    Params = KDEPriorParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        check_epsilon_range(NAME, self.epsilon, math.ulp(0.0), largest_epsilon(index.dmax), "")
        self.log_pi = kde_log_prior(index, self.p.bandwidth_scale)
        # Shifted so the largest weight is exp(0): constant factors cancel in the distribution.
        spread = float(np.max(self.log_pi) - np.min(self.log_pi))
        if self.p.alpha * spread > FLOAT_MAX:
            raise ParameterError(
                f"alpha {self.p.alpha:g} is too large for this prior: alpha x (spread of ln pi = "
                f"{spread:.6g}) overflows float64, so some words would get weight exactly 0 (the "
                f"input word itself among them); alpha must be in [0, {FLOAT_MAX / spread:.6g}]"
            )
        self.log_base = self.p.alpha * (np.asarray(self.log_pi, dtype=np.float64) - float(np.max(self.log_pi)))
        self._mutual = (
            index.table(MUTUAL_TABLE, lambda idx: mutual_neighbours(idx.neighbour_ids))
            if self.p.sampler == "mh"
            else None
        )

    def params(self) -> dict:
        out = {
            "epsilon": self.epsilon,
            "alpha": self.p.alpha,
            "sampler": self.p.sampler,
            "prior": "Gaussian KDE of the embedding, full covariance, Scott's rule",
            "bandwidth_scale": self.p.bandwidth_scale,
        }
        if self.p.sampler == "mh":
            out.update(chain_length=self.p.chain_length, proposal_neighbours=self.index.neighbours)
        return out

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p.sampler == "mh":
            return self.mh_chain(ids, rng)
        return sample_capped_exponential(self.index, ids, rng, self.epsilon, log_base=self.log_base, cap=math.inf)

    # ---- Metropolis-Hastings on the K-NN graph -------------------------------------------
    def log_target(self, source: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """alpha ln pi(y) - eps d(w, y) / 2 (up to a constant), d in float64; source: (m, d) phi(w)."""
        diff = self.index.vectors[candidates] - source
        return self.log_base[candidates] - 0.5 * self.epsilon * np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def reverse_possible(self, current: np.ndarray, column: np.ndarray) -> np.ndarray:
        """Whether the proposed word's neighbour list holds the current word (the Hastings correction)."""
        return self._mutual[current, column - 1]

    def mh_chain(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """chain_length MH steps from each id; all tokens advance one step together."""
        K = self.index.neighbours
        table = self.index.neighbour_ids
        source = self.index.vectors[ids].astype(np.float64)
        x = ids.copy()
        score = self.log_base[x].copy()  # d(w, w) = 0
        for _ in range(self.p.chain_length):
            column = rng.integers(1, K + 1, len(x))
            u = rng.random(len(x))
            # Proposals the reverse move could not undo have acceptance 0: score only the others.
            live = np.flatnonzero(self.reverse_possible(x, column))
            y = table[x[live], column[live]]
            proposed = self.log_target(source[live], y)
            accept = u[live] < np.exp(np.minimum(proposed - score[live], 0.0))
            moved = live[accept]
            x[moved] = y[accept]
            score[moved] = proposed[accept]
        return x

    # ---- the privacy statement -----------------------------------------------------------
    def compute_guarantee(self) -> Guarantee:
        """What kde_prior may claim: metric DP with the exact sampler; "approximate" with MH, with the
        audited total-variation distance of the chain to the exact distribution."""
        eps, dmax, p = self.epsilon, self.index.dmax, self.p
        prior = prior_summary(self.log_pi)
        prior_text = (
            f"pi^alpha with alpha = {p.alpha:g}, pi a Gaussian kernel density estimate of the embedding "
            f"(Scott's rule x {p.bandwidth_scale:g}) that depends on the embedding only; ln pi varies by "
            f"{prior['log_pi_spread']:.3g} over the vocabulary"
        )
        extra = {"sampler": p.sampler, "prior": prior}
        if p.sampler == "exact":
            return Guarantee(
                mechanism=NAME,
                kind="metric-DP",
                rate=eps,
                basis="proved",
                statement=(
                    f"P[M(w)=y] <= exp({eps:g} * d(w, w')) * P[M(w')=y] for every pair of vocabulary words "
                    "w, w' and every output y (Euclidean distance in the embedding): the exponential "
                    f"mechanism over the whole vocabulary with the data-independent base measure {prior_text}, "
                    "sampled exactly."
                ),
                per_token_pure_epsilon=eps * dmax,
                per_token_pure_epsilon_note=(
                    f"vocabulary-wide: epsilon * Dmax = {eps:g} * {dmax:.6g}; any two words "
                    "are protected at least this well"
                ),
                confirmed_by=(
                    "tests/test_kde_prior.py: the exact sampler matches the closed form (chi-square) and "
                    "the exact audit of the closed form finds a metric rate <= epsilon"
                ),
                extra=extra,
            )
        audited = audit_kde_mh_index(self.index, eps, self.log_base, p.chain_length, self._mutual)
        shorter = audited["audited_chain_length"] != p.chain_length
        return Guarantee(
            mechanism=NAME,
            kind="approximate",
            rate=None,
            basis="audited (total-variation distance of the chain to the exact distribution)",
            statement=(
                f"approximate: the Metropolis-Hastings sampler ({p.chain_length} steps on the "
                f"{self.index.neighbours}-nearest-neighbour graph from the input word) only approximates the "
                f"kde_prior distribution, which would be metric DP at rate {eps:g}; dptext proves no DP bound for "
                f"the sampler itself. Exact computation of the chain from {audited['start_words']} random start "
                "words on this index finds a total-variation distance to the exact distribution of "
                + ("at most " if shorter else "")
                + f"{audited['tv_median']:.3g} (median) and {audited['tv_max_sampled']:.3g} (largest) after "
                f"{p.chain_length} steps"
                + (
                    f" (computed after {audited['audited_chain_length']} steps; more steps never increase it)"
                    if shorter
                    else ""
                )
                + f". {audited['words_without_mutual_neighbour']} words "
                f"({100 * audited['fraction_without_mutual_neighbour']:.2g}%) have no mutual neighbour in the graph: "
                "the chain never leaves them and no other chain reaches them (total-variation distance up to "
                f"{audited['tv_max_words_without_mutual_neighbour']:.3g})."
            ),
            per_token_pure_epsilon=None,
            audited=audited,
            confirmed_by=(
                "dptext.transforms.mechanisms.kde_prior.audit_kde_mh_index (exact chain distributions on "
                "this index); tests/test_kde_prior.py: the sampler matches the exact chain distribution "
                "(chi-square)"
            ),
            not_protected=NOT_PROTECTED
            + (
                "words the chain cannot reach within its steps, or at all (no mutual neighbour): their outputs are "
                "disjoint, so no ratio bound holds between them",
            ),
            extra={**extra, "target_rate": eps},
        )


# ---- the MH sampler's exact output distribution (the test oracle) and its audit on the index ---------
# The exact sampler's distribution is capped_exponential_distribution(dist, eps, log_base) (cap infinite).
# The MH sampler's output after L steps from w is the row w of P_w^L, P_w its transition matrix for the
# target of w: computed exactly (sparse matrix-vector products), then compared with the exact
# distribution in total variation.
KDE_MH_AUDIT_STARTS = 16
# The chain is computed exactly up to this many steps at most (16 starts x 1000 sparse products: about a
# minute on a 34k-word index). A longer chain is at least as close: the target of w is stationary for its
# kernel, and a Markov kernel never increases the total-variation distance to a stationary distribution,
# so the distance after MH_AUDIT_MAX_STEPS bounds the distance after any longer chain.
MH_AUDIT_MAX_STEPS = 1000


def mh_transition_matrix(log_target: np.ndarray, neighbour_ids: np.ndarray, mutual: np.ndarray | None = None):
    """Sparse (n, n) transition matrix of the MH chain on the K-NN graph for one target.

    P[x, y] = (1/K) min(1, p(y) / p(x)) for y in N(x) when x is in N(y) (else the Hastings ratio,
    with q(x | y) = 0, is 0); the rejected mass stays on the diagonal.
    """
    import scipy.sparse as sparse

    table = np.asarray(neighbour_ids)
    n, K = len(table), table.shape[1] - 1
    mutual = mutual_neighbours(table) if mutual is None else np.asarray(mutual)
    edge = mutual.ravel()  # one-way edges are never taken: not stored
    x = np.repeat(np.arange(n), K)[edge]
    y = table[:, 1:].ravel()[edge]
    log_target = np.asarray(log_target, dtype=np.float64)
    move = np.exp(np.minimum(log_target[y] - log_target[x], 0.0)) / K
    stay = 1.0 - np.bincount(x, move, minlength=n)
    return sparse.csr_matrix(
        (np.concatenate((move, stay)), (np.concatenate((x, np.arange(n))), np.concatenate((y, np.arange(n))))),
        shape=(n, n),
    )


def mh_chain_distributions(
    log_target: np.ndarray, neighbour_ids: np.ndarray, start: int, chain_lengths, mutual: np.ndarray | None = None
) -> np.ndarray:
    """Exact distribution of the chain after each of chain_lengths steps from start: (len, n)."""
    P = mh_transition_matrix(log_target, neighbour_ids, mutual).T.tocsr()
    lengths = sorted(set(int(L) for L in chain_lengths))
    v = np.zeros(P.shape[0])
    v[start] = 1.0
    out, done = {}, 0
    for L in lengths:
        for _ in range(L - done):
            v = P @ v
        done = L
        out[L] = v.copy()
    return np.stack([out[int(L)] for L in chain_lengths])


def kde_mh_distribution(
    dist: np.ndarray, epsilon: float, log_base: np.ndarray, neighbour_ids: np.ndarray, chain_length: int
) -> np.ndarray:
    """Exact (n, n) output distribution of the MH sampler after chain_length steps (small vocabularies)."""
    mutual = mutual_neighbours(neighbour_ids)
    base = np.asarray(log_base, dtype=np.float64)
    return np.stack(
        [
            mh_chain_distributions(base - 0.5 * epsilon * dist[w], neighbour_ids, w, [chain_length], mutual)[0]
            for w in range(len(dist))
        ]
    )


def kde_mh_tv_profile(
    dist: np.ndarray, epsilon: float, log_base: np.ndarray, neighbour_ids: np.ndarray, chain_lengths
) -> list[dict]:
    """Per chain length: the largest and mean TV, over every start word, between the MH sampler's
    exact output distribution and the exact kde_prior distribution (small vocabularies)."""
    exact = capped_exponential_distribution(dist, epsilon, log_base)
    mutual = mutual_neighbours(neighbour_ids)
    base = np.asarray(log_base, dtype=np.float64)
    tv = np.stack(
        [
            total_variation(
                mh_chain_distributions(base - 0.5 * epsilon * dist[w], neighbour_ids, w, chain_lengths, mutual),
                exact[w],
            )
            for w in range(len(dist))
        ]
    )  # (start, chain length)
    return [
        {"chain_length": int(L), "tv_max": float(tv[:, i].max()), "tv_mean": float(tv[:, i].mean())}
        for i, L in enumerate(chain_lengths)
    ]


def audit_kde_mh_index(
    index,
    epsilon: float,
    log_base: np.ndarray,
    chain_length: int,
    mutual: np.ndarray,
    starts: int = KDE_MH_AUDIT_STARTS,
    seed: int = 0,
) -> dict:
    """TV between the MH sampler after chain_length steps and the exact distribution, on the index itself.

    For `starts` start words drawn uniformly (fixed seed: which words are audited is not privacy
    randomness), the chain's distribution is computed exactly by sparse matrix-vector products, at
    chain lengths 1, 3, 10, ... up to chain_length. Words with no mutual neighbour never move, so
    their TV is 1 - P[M(w) = w] at every length; the worst of those is reported over all of them.
    """
    base = np.asarray(log_base, dtype=np.float64)
    audited_length = min(int(chain_length), MH_AUDIT_MAX_STEPS)
    lengths = sorted({L for L in (1, 3, 10, 30, 100, 300, 1000, 3000) if L < audited_length} | {audited_length})
    chosen = np.sort(np.random.default_rng(seed).choice(index.n, min(starts, index.n), replace=False))
    table = np.asarray(index.neighbour_ids)
    vectors = _Float64Vectors(index)
    tv = []
    for w, dist in zip(chosen, vectors.distances(chosen)):
        target = base - 0.5 * epsilon * dist
        tv.append(total_variation(mh_chain_distributions(target, table, int(w), lengths, mutual), softmax(target)))
    tv = np.array(tv)
    stuck = np.flatnonzero(~np.asarray(mutual).any(axis=1))
    stuck_tv = np.array(
        [1.0 - softmax(base - 0.5 * epsilon * dist)[w] for w, dist in zip(stuck, vectors.distances(stuck))]
    )
    result = {
        "chain_length": int(chain_length),
        "audited_chain_length": audited_length,
        "start_words": len(chosen),
        "seed": seed,
        "tv_by_chain_length": [
            {"chain_length": L, "tv_median": float(np.median(tv[:, i])), "tv_max": float(tv[:, i].max())}
            for i, L in enumerate(lengths)
        ],
        "words_without_mutual_neighbour": int(stuck.size),
        "fraction_without_mutual_neighbour": stuck.size / index.n,
        "tv_max_words_without_mutual_neighbour": float(stuck_tv.max()) if stuck.size else 0.0,
        "tv_median_words_without_mutual_neighbour": float(np.median(stuck_tv)) if stuck.size else 0.0,
    }
    result.update(
        tv_median=result["tv_by_chain_length"][-1]["tv_median"],
        tv_max_sampled=result["tv_by_chain_length"][-1]["tv_max"],
    )
    return result


class _Float64Vectors:
    """Exact-enough float64 distances from a few words to every word, by chunked matrix products."""

    def __init__(self, index):
        self.v = np.asarray(index.vectors, dtype=np.float64)
        self.sq = index.squared_norms()

    def distances(self, words: np.ndarray, rows: int = 256):
        """One (n,) distance row per word, in order (the expansion's error is ~1e-16 |v|^2)."""
        for s in range(0, len(words), rows):
            w = np.asarray(words[s : s + rows])
            d2 = self.sq[w, None] + self.sq[None, :] - 2.0 * (self.v[w] @ self.v.T)
            d2[np.arange(len(w)), w] = 0.0
            yield from np.sqrt(np.maximum(d2, 0.0))
