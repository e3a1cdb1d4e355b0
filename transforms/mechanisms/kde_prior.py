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

from dptext.transforms.kde import kde_log_prior
from dptext.transforms.mechanisms.base import (FLOAT_MAX, as_ids, check_epsilon, check_epsilon_range, largest_epsilon,
                                        register)
from dptext.transforms.mechanisms.vocabulary_exponential import sample_capped_exponential

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

PARAMETERS = {
    "alpha": "exponent of the KDE density prior pi(y)^alpha (>= 0; 0 is the plain exponential mechanism over "
             "the vocabulary)",
    "sampler": "exact (exact draw over the whole vocabulary: metric DP) or mh (Metropolis-Hastings on the "
               "K-nearest-neighbour graph: approximate, its total-variation distance is audited)",
    "chain_length": "Metropolis-Hastings steps per token (sampler mh only)",
    "bandwidth_scale": "multiplies the KDE bandwidth of Scott's rule (1 = Scott's rule; in 300 dimensions "
                       "Scott's rule leaves pi nearly uniform, larger values let it follow the local density)",
}
CHOICES = {"sampler": SAMPLERS}


@dataclass(frozen=True)
class KDEPriorParams:
    epsilon: float
    alpha: float = 1.0
    sampler: str = "exact"
    chain_length: int = DEFAULT_CHAIN_LENGTH
    bandwidth_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if isinstance(self.chain_length, bool) or not isinstance(self.chain_length, (int, np.integer)) \
                or not 1 <= self.chain_length <= MAX_CHAIN_LENGTH:
            raise ValueError(f"chain_length must be an integer in [1, {MAX_CHAIN_LENGTH}], got {self.chain_length!r} "
                             f"(every token walks all its steps: {MAX_CHAIN_LENGTH} steps already take minutes per "
                             "batch of 4096 tokens)")
        if not (isinstance(self.bandwidth_scale, (int, float)) and math.isfinite(self.bandwidth_scale)
                and self.bandwidth_scale > 0):
            raise ValueError(f"bandwidth_scale must be a finite number > 0, got {self.bandwidth_scale!r}")


def mutual_neighbours(neighbour_ids: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(n, K) bool: entry [x, k] is True when x is among the K neighbours of y = neighbour_ids[x, k + 1],
    i.e. when the reverse proposal y -> x has probability 1/K rather than 0."""
    table = np.asarray(neighbour_ids)
    out = np.empty((len(table), table.shape[1] - 1), dtype=bool)
    for s in range(0, len(table), rows):
        x = np.arange(s, min(s + rows, len(table)))
        out[x] = (table[table[x, 1:], 1:] == x[:, None, None]).any(axis=2)
    return out


class KDEPrior:
    name = NAME

    def __init__(self, index, epsilon: float, alpha: float = 1.0, sampler: str = "exact",
                 chain_length: int = DEFAULT_CHAIN_LENGTH, bandwidth_scale: float = 1.0):
        self.index = index
        self.p = KDEPriorParams(epsilon, alpha, sampler, chain_length, bandwidth_scale)
        self.epsilon = check_epsilon_range(NAME, self.p.epsilon, math.ulp(0.0), largest_epsilon(index.dmax), "")
        self.log_pi = kde_log_prior(index, self.p.bandwidth_scale)
        # Shifted so the largest weight is exp(0): constant factors cancel in the distribution.
        spread = float(np.max(self.log_pi) - np.min(self.log_pi))
        if self.p.alpha * spread > FLOAT_MAX:
            raise ValueError(f"alpha {self.p.alpha:g} is too large for this prior: alpha x (spread of ln pi = "
                             f"{spread:.6g}) overflows float64, so some words would get weight exactly 0 (the input "
                             f"word itself among them); alpha must be in [0, {FLOAT_MAX / spread:.6g}]")
        self.log_base = self.p.alpha * (np.asarray(self.log_pi, dtype=np.float64) - float(np.max(self.log_pi)))
        self._mutual = index.table(MUTUAL_TABLE, lambda idx: mutual_neighbours(idx.neighbour_ids)) \
            if self.p.sampler == "mh" else None

    def params(self) -> dict:
        out = {"epsilon": self.epsilon, "alpha": self.p.alpha, "sampler": self.p.sampler,
               "prior": "Gaussian KDE of the embedding, full covariance, Scott's rule",
               "bandwidth_scale": self.p.bandwidth_scale}
        if self.p.sampler == "mh":
            out.update(chain_length=self.p.chain_length, proposal_neighbours=self.index.neighbours)
        return out

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        if not len(ids):
            return ids
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
        score = self.log_base[x].copy()              # d(w, w) = 0
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
    def guarantee(self) -> dict:
        from dptext.transforms.audit import kde_prior_guarantee

        return kde_prior_guarantee(self)


@register(NAME)
def create(index, epsilon: float, alpha: float = 1.0, sampler: str = "exact",
           chain_length: int = DEFAULT_CHAIN_LENGTH, bandwidth_scale: float = 1.0) -> KDEPrior:
    return KDEPrior(index, epsilon, alpha, sampler, chain_length, bandwidth_scale)
