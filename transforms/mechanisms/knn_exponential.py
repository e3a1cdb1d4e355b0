"""knn_exponential: the exponential mechanism restricted to the word and its k nearest neighbours
(Feyisetan et al., FLAIRS 2021, k-NN truncation; MECHANISMS.md section 3).

Candidates are w and its k nearest neighbours, k fixed or, as in truncated_gumbel,
k ~ Poisson(ln n) restricted to [1, n - 1]; the output is c with probability proportional to
exp(-eps d(w, c) / 2) among them, by Gumbel-max over the neighbour table (exact search for a k
beyond the table). The candidate set depends on w, so this is not metric DP: its guarantee is
what the exact audit measures (transforms.audit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.mechanisms.base import (as_ids, check_epsilon, check_epsilon_range, largest_epsilon, register,
                                        truncated_poisson)

NAME = "knn_exponential"
PARAMETERS = {"candidates": "knn_exponential: neighbours per token besides the word itself; 0 draws k from "
                            "Poisson(ln n) restricted to [1, n-1] as truncated_gumbel does"}


@dataclass(frozen=True)
class KNNExponentialParams:
    epsilon: float
    n: int
    table_neighbours: int
    candidates: int = 0

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        k = self.candidates
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= self.n - 1:
            raise ValueError(f"candidates must be an integer in [0, n - 1 = {self.n - 1}] (0: Poisson), got {k!r}")
        if k > self.table_neighbours:
            raise ValueError(f"candidates {k} exceeds the index's neighbour table (K = {self.table_neighbours}); "
                             f"rebuild the index with `dptext build-index --neighbours {k}` or choose k <= "
                             f"{self.table_neighbours}")

    @property
    def poisson(self) -> bool:
        return self.candidates == 0


class KNNExponential:
    name = NAME

    def __init__(self, index, epsilon: float, candidates: int = 0):
        self.index = index
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)):
            raise ValueError(f"candidates must be an integer in [0, n - 1 = {index.n - 1}] (0: Poisson), got "
                             f"{candidates!r}")
        self.p = KNNExponentialParams(epsilon, index.n, index.neighbours, int(candidates))
        self.epsilon = check_epsilon_range(NAME, self.p.epsilon, math.ulp(0.0), largest_epsilon(index.dmax), "")

    def params(self) -> dict:
        k = {"k": f"Poisson(ln n = {math.log(self.index.n):.4g}) restricted to [1, {self.index.n - 1}]"} \
            if self.p.poisson else {"k": self.p.candidates}
        return {"epsilon": self.epsilon, **k, "weights": "exp(-epsilon d(w, c) / 2)",
                "table_neighbours": self.index.neighbours}

    def draw_k(self, rng, size: int) -> np.ndarray:
        if self.p.poisson:
            return truncated_poisson(rng, math.log(self.index.n), 1, self.index.n - 1, size)
        return np.full(size, self.p.candidates)

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        ids = as_ids(ids, self.index.n)
        out = np.empty(len(ids), dtype=np.int32)
        if not len(ids):
            return out
        k = self.draw_k(rng, len(ids))
        table = k <= self.index.neighbours
        rows = np.flatnonzero(table)
        if rows.size:
            width = int(k[rows].max()) + 1
            logw = -0.5 * self.epsilon * np.asarray(self.index.neighbour_distances[ids[rows], :width], np.float64)
            logw[np.arange(width)[None, :] > k[rows, None]] = -np.inf       # columns beyond the token's k
            col = np.argmax(logw + rng.gumbel(size=logw.shape), axis=1)
            out[rows] = self.index.neighbour_ids[ids[rows], col]
        beyond = np.flatnonzero(~table)                                    # k beyond the table (Poisson tail):
        for word in np.unique(ids[beyond]):                                # one exact search per word
            rows = beyond[ids[beyond] == word]
            cand, dist = self.index.exact_neighbours(int(word), int(k[rows].max()))
            logw = np.where(np.arange(len(cand))[None, :] <= k[rows, None], -0.5 * self.epsilon * dist, -np.inf)
            out[rows] = cand[np.argmax(logw + rng.gumbel(size=logw.shape), axis=1)]
        return out

    def guarantee(self) -> dict:
        from dptext.transforms.audit import knn_exponential_guarantee

        return knn_exponential_guarantee(self)


@register(NAME)
def create(index, epsilon: float, candidates: int = 0) -> KNNExponential:
    return KNNExponential(index, epsilon, candidates)
