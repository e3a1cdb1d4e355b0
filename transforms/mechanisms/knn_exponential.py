"""knn_exponential: the exponential mechanism restricted to the word and its k nearest neighbours
(Feyisetan et al., FLAIRS 2021, k-NN truncation; MECHANISMS.md section 3).

Candidates are w and its k nearest neighbours, k fixed or, as in truncated_gumbel,
k ~ Poisson(ln n) restricted to [1, n - 1]; the output is c with probability proportional to
exp(-eps d(w, c) / 2) among them, by Gumbel-max over the neighbour table (exact search for a k
beyond the table). The candidate set depends on w, so this is not metric DP: its guarantee is
what the exact audit measures (transforms.audit, on this module's exact distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.audit import AUDIT_SIZES, audit_subsets, softmax
from dptext.transforms.errors import ParameterError
from dptext.transforms.index_build import candidate_order
from dptext.transforms.mechanisms.base import Mechanism, check_epsilon_range, largest_epsilon, parameter
from dptext.transforms.mechanisms.candidates import (
    distant_words,
    poisson_tail_log_ratio_bound,
    truncated_poisson,
    truncated_poisson_pmf,
)
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Guarantee

NAME = "knn_exponential"
CANDIDATES_RULE = "candidates must be an integer in [0, n - 1{}] (0: Poisson), got {!r}"


@dataclass(frozen=True)
class KNNExponentialParams:
    candidates: int = parameter(
        0,
        "neighbours per token besides the word itself; 0 draws k from Poisson(ln n) "
        "restricted to [1, n-1] as truncated_gumbel does",
    )

    def __post_init__(self):
        k = self.candidates
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ParameterError(CANDIDATES_RULE.format("", k))
        object.__setattr__(self, "candidates", int(k))

    @property
    def poisson(self) -> bool:
        return self.candidates == 0


class KNNExponential(Mechanism):
    name = NAME
    Params = KNNExponentialParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        k = self.p.candidates
        if k > index.n - 1:
            raise ParameterError(CANDIDATES_RULE.format(f" = {index.n - 1}", k))
        if k > index.neighbours:
            raise ParameterError(
                f"candidates {k} exceeds the index's neighbour table (K = {index.neighbours}); "
                f"rebuild the index with `dptext build-index --neighbours {k}` or choose k <= "
                f"{index.neighbours}"
            )
        check_epsilon_range(NAME, self.epsilon, math.ulp(0.0), largest_epsilon(index.dmax), "")

    def params(self) -> dict:
        k = (
            {"k": f"Poisson(ln n = {math.log(self.index.n):.4g}) restricted to [1, {self.index.n - 1}]"}
            if self.p.poisson
            else {"k": self.p.candidates}
        )
        return {
            "epsilon": self.epsilon,
            **k,
            "weights": "exp(-epsilon d(w, c) / 2)",
            "table_neighbours": self.index.neighbours,
        }

    def draw_k(self, rng, size: int) -> np.ndarray:
        if self.p.poisson:
            return truncated_poisson(rng, math.log(self.index.n), 1, self.index.n - 1, size)
        return np.full(size, self.p.candidates)

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(len(ids), dtype=np.int32)
        k = self.draw_k(rng, len(ids))
        table = k <= self.index.neighbours
        rows = np.flatnonzero(table)
        if rows.size:
            width = int(k[rows].max()) + 1
            logw = -0.5 * self.epsilon * np.asarray(self.index.neighbour_distances[ids[rows], :width], np.float64)
            logw[np.arange(width)[None, :] > k[rows, None]] = -np.inf  # columns beyond the token's k
            col = np.argmax(logw + rng.gumbel(size=logw.shape), axis=1)
            out[rows] = self.index.neighbour_ids[ids[rows], col]
        beyond = np.flatnonzero(~table)  # k beyond the table (Poisson tail):
        for word in np.unique(ids[beyond]):  # one exact search per word
            rows = beyond[ids[beyond] == word]
            cand, dist = self.index.exact_neighbours(int(word), int(k[rows].max()))
            logw = np.where(np.arange(len(cand))[None, :] <= k[rows, None], -0.5 * self.epsilon * dist, -np.inf)
            out[rows] = cand[np.argmax(logw + rng.gumbel(size=logw.shape), axis=1)]
        return out

    def compute_guarantee(self) -> Guarantee:
        """What knn_exponential may claim, from the mechanism itself: metric DP only when every candidate
        set is the whole vocabulary (k = n - 1 always); otherwise no vocabulary-wide DP (fixed k < n - 1:
        infinite worst-case loss; Poisson k: a loss at least poisson_tail_log_ratio_bound), with the exact
        audit's figures on small vocabularies as local figures. Whether the audit's subsets happened to be
        covered by the candidate sets never decides the claim."""
        eps, n, dmax, k = self.epsilon, self.index.n, self.index.dmax, self.p.candidates
        candidate_sets = {
            "candidate_sets": (
                f"the word and its k nearest neighbours, k ~ Poisson(ln n) restricted to [1, {n - 1}]"
                if self.p.poisson
                else f"the word and its {k} nearest neighbours"
            )
        }
        if k == n - 1 or (self.p.poisson and n == 2):
            return Guarantee(
                mechanism=NAME,
                kind="metric-DP",
                rate=eps,
                basis="proved",
                statement=(
                    f"Every candidate set is the whole vocabulary (k = n - 1 = {n - 1}), so this is the "
                    "exponential mechanism with weights exp(-epsilon d(w, y) / 2) over all words: "
                    f"P[M(w)=y] <= exp({eps:g} * d(w, w')) * P[M(w')=y] for every pair of vocabulary words "
                    "w, w' and every output y (Euclidean distance in the embedding)."
                ),
                per_token_pure_epsilon=eps * dmax,
                per_token_pure_epsilon_note=(
                    f"vocabulary-wide: epsilon * Dmax = {eps:g} * {dmax:.6g}; any two "
                    "words are protected at least this well"
                ),
                confirmed_by=(
                    "tests/test_exponential_mechanisms.py: the exact distribution of the whole vocabulary "
                    "has a worst metric rate <= epsilon"
                ),
                extra=candidate_sets,
            )
        audited = audit_knn_exponential_subsets(self.index, eps, k)
        near = max(audited, key=lambda r: r["worst_log_ratio_within_typical_candidates"])
        covered = [r["n"] for r in audited if k and k >= r["n"] - 1]
        local = (
            f"Local figures from an exact audit of vocabularies of {', '.join(str(r['n']) for r in audited)} "
            "words drawn from this embedding: a log-ratio up to "
            f"{near['worst_log_ratio_within_typical_candidates']:.3g} between words among each other's "
            f"{near['typical_candidates']} nearest (n={near['n']})"
            + (
                f"; the audited vocabularies of {', '.join(map(str, covered))} words lie wholly inside every "
                "candidate set, so they cannot show the loss between distant words"
                if covered
                else ""
            )
            + "."
        )
        if self.p.poisson:
            bound = poisson_tail_log_ratio_bound(n)
            worst = {"worst_case_log_ratio_at_least": bound}
            distant, _ = distant_words(n, eps, dmax, bound, max(r["max_delta_at_rate_times_distance"] for r in audited))
            head = f"dptext claims no vocabulary-wide DP bound. {distant}"
            if bound <= eps * dmax:  # not already stated by the sentence on distant words
                head += (
                    f" A word ranked last among w's {n - 1} others is w's candidate only when k = {n - 1}: "
                    f"over this vocabulary of n = {n} words the worst-case log-ratio is at least {bound:.4g} "
                    "(-ln P(k = n - 1) - ln n)."
                )
            kind = "local (audited); no vocabulary-wide DP bound"
        else:
            worst = {"worst_case_log_ratio": math.inf}
            head = (
                f"No vocabulary-wide DP: the candidates are the word and its {k} nearest of n = {n} words, so "
                "a word outside w's candidate set is never w's output while it is its own output (probability "
                "> 0): the worst-case privacy loss is infinite, and distant words are not hidden from each "
                "other."
            )
            kind = "no vocabulary-wide DP (infinite worst-case loss); local figures audited"
        return Guarantee(
            mechanism=NAME,
            kind=kind,
            rate=None,
            basis="audited (local figures only)",
            audited=audited,
            statement=head + " " + local,
            per_token_pure_epsilon=None,
            **worst,
            not_protected=NOT_PROTECTED
            + (
                "distant words: a word outside another's candidate set is never its output "
                + ("(infinite log-ratio)" if not self.p.poisson else "except through the Poisson tail of k"),
            ),
            extra=candidate_sets,
        )


# ---- the exact output distribution (the test oracle) and its audit ----------------------------------
def knn_exponential_distribution(
    dist: np.ndarray, epsilon: float, k: int | None = None, lam: float | None = None
) -> np.ndarray:
    """Exact P[w, y] of knn_exponential: fixed k, or (k None) k ~ Poisson(lam = ln n) restricted to
    [1, n - 1]; within the word and its k nearest (candidate_order), softmax of -(eps / 2) d."""
    n = len(dist)
    pk = np.zeros(n)
    if k is None:
        pk = truncated_poisson_pmf(math.log(n) if lam is None else lam, n)
    else:
        pk[k] = 1.0
    out = np.zeros((n, n))
    for w in range(n):
        order = candidate_order(dist[w], w)
        logits = -0.5 * epsilon * dist[w, order]
        for kk in np.flatnonzero(pk):
            out[w, order[: kk + 1]] += pk[kk] * softmax(logits[: kk + 1])
    return out


def audit_knn_exponential_subsets(index, epsilon: float, candidates: int, sizes=AUDIT_SIZES, seed: int = 0):
    """Exact audit of knn_exponential (same epsilon and k) on random vocabularies drawn from the index."""

    def audit_one(dist):
        k = None if candidates == 0 else min(candidates, len(dist) - 1)
        row = {
            "epsilon": epsilon,
            "k": "Poisson(ln n)" if k is None else k,
            "dmin": float(dist[dist > 0].min()),
            "dmax": float(dist.max()),
            "epsilon_times_dmax": epsilon * float(dist.max()),
        }
        return row, knn_exponential_distribution(dist, epsilon, k), epsilon

    return audit_subsets(index, sizes, seed, audit_one)
