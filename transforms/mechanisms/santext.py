"""santext and santext_plus (Yue et al., "Differential privacy for text analytics via natural text
sanitization", Findings of ACL 2021).

santext: P[M(w) = y] proportional to exp(-(eps / 2) d(w, y)) over the whole vocabulary (the
paper's exponential mechanism with score -d, d the Euclidean embedding distance). It is tem without
a cap and kde_prior with alpha 0, and is sampled by the same exact vocabulary-wide sampler
(vocabulary_exponential.sample_capped_exponential).

santext_plus: the floor(w n) least frequent words are sensitive (V_S), the others not (V_N). A
sensitive word is always replaced, a non-sensitive word with probability p (else kept), and a
replacement y is drawn from V_S only, with probability proportional to exp(-(eps / 2) d(w, y)):
the same sampler with base measure 1 on V_S and 0 elsewhere.

Frequency: the index's word order is taken as the frequency rank (GloVe and word2vec files are
written most frequent first; `dptext build-index` keeps the file's order). That table is public
and fixed when the index is built, so which words are sensitive reveals nothing about the corpus
being privatized. The authors' code counts the task's own corpus instead; a set chosen from the
private corpus would itself depend on the data, outside any per-token guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dptext.transforms.audit import exponential_distribution
from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import Mechanism, check_epsilon_range, largest_epsilon, parameter
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Guarantee
from dptext.transforms.mechanisms.vocabulary_exponential import sample_capped_exponential
from dptext.transforms.numerics import gamma32

NAME = "santext"
SENSITIVE_NEIGHBOURS = 64  # the nearest sensitive words tabled for each non-sensitive word
SENSITIVE_IDS_TABLE, SENSITIVE_DISTANCES_TABLE = "santext_plus_sensitive_ids", "santext_plus_sensitive_distances"
PLUS = "santext_plus"
PAPER = "Yue et al., Findings of ACL 2021"
FREQUENCY_SOURCE = (
    "the index's word order, taken as the frequency rank (GloVe and word2vec files list the most frequent "
    "word first); fixed when the index is built, independent of the corpus"
)


def _check_epsilon(name: str, index, epsilon: float) -> None:
    """Any positive epsilon up to the one where epsilon x Dmax stops being a finite float64."""
    check_epsilon_range(name, epsilon, math.ulp(0.0), largest_epsilon(index.dmax), "")


class SanText(Mechanism):
    name = NAME

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        _check_epsilon(NAME, index, self.epsilon)

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "outputs": "every vocabulary word, weight exp(-epsilon d(w, y) / 2)"}

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_capped_exponential(self.index, ids, rng, self.epsilon)

    def compute_guarantee(self) -> Guarantee:
        eps, dmax = self.epsilon, self.index.dmax
        return Guarantee(
            mechanism=NAME,
            kind="metric-DP",
            rate=eps,
            basis="proved",
            statement=(
                f"P[M(w)=y] <= exp({eps:g} * d(w, w')) * P[M(w')=y] for every pair of vocabulary words w, w' and "
                "every output y (Euclidean distance in the embedding): the exponential mechanism over the whole "
                f"vocabulary with score -d(w, y) ({PAPER}), sampled exactly."
            ),
            per_token_pure_epsilon=eps * dmax,
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: epsilon * Dmax = {eps:g} * {dmax:.6g}; any two words are protected at least "
                "this well"
            ),
            confirmed_by=(
                "tests/test_santext.py: the sampler matches the closed form (chi-square) and the exact audit of the "
                "closed form finds a metric rate <= epsilon"
            ),
        )


# ---- santext_plus ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SanTextPlusParams:
    sensitive_fraction: float = parameter(
        0.9,
        "w: the fraction of the vocabulary treated as sensitive, the least frequent words by the index's "
        "order (0 < w <= 1, at least one word); sensitive words are always replaced",
    )
    replace_probability: float = parameter(
        0.3,
        "p: the probability that a non-sensitive word is replaced (0 <= p <= 1); kept otherwise, and a kept "
        "word is not protected",
    )

    def __post_init__(self):
        w, p = self.sensitive_fraction, self.replace_probability
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise ParameterError(f"sensitive_fraction must be a number in (0, 1], got {w!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ParameterError(f"replace_probability must be a number in [0, 1], got {p!r}")


def sensitive_count(n: int, fraction: float) -> int:
    """floor(fraction x n), robust to the rounding of the product (0.29 x 100 is 28.999999999999996)."""
    return min(n, math.floor(round(fraction * n, 9)))


def santext_plus_distribution(dist: np.ndarray, epsilon: float, sensitive: np.ndarray, p: float) -> np.ndarray:
    """Exact P[w, y] of santext_plus on a vocabulary with pairwise distances dist: a sensitive w draws y
    from the sensitive words with weight exp(-eps d(w, y) / 2); any other w keeps itself with
    probability 1 - p and draws the same way with probability p."""
    sensitive = np.asarray(sensitive, dtype=bool)
    n, cols = len(dist), np.flatnonzero(sensitive)
    draw = exponential_distribution(np.asarray(dist)[:, cols], epsilon, np.zeros(len(cols)))
    P = np.zeros((n, n))
    P[:, cols] = np.where(sensitive[:, None], 1.0, p) * draw
    keep = np.flatnonzero(~sensitive)
    P[keep, keep] += 1.0 - p
    return P


def audit_santext_plus(dist: np.ndarray, epsilon: float, sensitive: np.ndarray, p: float) -> dict:
    """Exact figures of santext_plus on one vocabulary: the worst log-ratio per unit distance between two
    sensitive words (the metric rate among them), and over sanitized outputs (y sensitive) the worst
    ln P[M(w)=y] / P[M(w')=y] - eps d(w, w') over all pairs (at most ln(1/p), see SanTextPlus)."""
    P = santext_plus_distribution(dist, epsilon, sensitive, p)
    sensitive = np.asarray(sensitive, dtype=bool)
    n = len(P)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(P)
        diff = logp[:, None, :] - logp[None, :, :]  # [w, w', y]
    diff[np.isnan(diff)] = -np.inf  # 0 / 0: no evidence either way
    ratio_all = diff.max(axis=2)
    ratio_sanitized = diff[:, :, sensitive].max(axis=2)
    pair = ~np.eye(n, dtype=bool)
    both = pair & sensitive[:, None] & sensitive[None, :]
    positive = dist > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(both & positive, ratio_all / np.where(positive, dist, 1.0), -np.inf)
        excess = np.where(pair, ratio_sanitized - epsilon * dist, -np.inf)
    return {
        "n": n,
        "sensitive": int(sensitive.sum()),
        "worst_metric_rate_between_sensitive_words": float(rate.max()) if both.any() else None,
        "worst_excess_over_epsilon_distance_on_sanitized_outputs": float(excess.max()) if pair.any() else None,
        "ln_1_over_p": math.inf if p == 0 else -math.log(p),
        "worst_log_ratio_any_output": float(ratio_all[pair].max()) if pair.any() else None,
    }


class _TableView:
    """An index whose neighbour table is another one (rows: the non-sensitive ids 0 .. first - 1)."""

    def __init__(self, index, neighbour_ids, neighbour_distances):
        self._index, self.neighbour_ids, self.neighbour_distances = index, neighbour_ids, neighbour_distances

    def __getattr__(self, name):
        return getattr(self._index, name)


def nearest_sensitive(index, first: int, k: int, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For every non-sensitive word (ids 0 .. first - 1), its k nearest sensitive words (ids first .. n - 1)
    by exact float64 distance, ties by id: ((first, k) int32 ids, (first, k) float64 distances).

    The vocabulary sampler needs the k-th distance to be at most the distance to every sensitive word
    outside the row. Candidates are ranked by float32 products, whose error is at most gamma_d |x| |y|
    (Higham 3.1); every word within twice that bound of the k-th is re-ranked in float64, so none is missed.
    """
    v = np.asarray(index.vectors)
    sq = index.squared_norms()
    vs, sq_s = v[first:], sq[first:]
    norms_s = np.sqrt(sq_s)
    ids = np.empty((first, k), dtype=np.int32)
    dist = np.empty((first, k))
    for s in range(0, first, rows):
        block = np.arange(s, min(s + rows, first))
        approx = sq[block, None] + sq_s[None, :] - 2.0 * (v[block] @ vs.T).astype(np.float64)
        error = 2.0 * gamma32(index.d) * np.sqrt(sq[block])[:, None] * norms_s.max() + 1e-9
        cut = np.partition(approx, k - 1, axis=1)[:, k - 1 : k]
        for row, word in enumerate(block):
            candidates = np.flatnonzero(approx[row] <= cut[row] + 2 * error[row])
            diff = vs[candidates].astype(np.float64) - v[word].astype(np.float64)
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            best = np.lexsort((candidates, d))[:k]
            ids[word], dist[word] = first + candidates[best], d[best]
    return ids, dist


class SanTextPlus(Mechanism):
    name = PLUS
    Params = SanTextPlusParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        _check_epsilon(PLUS, index, self.epsilon)
        n = index.n
        self.sensitive_words = sensitive_count(n, self.p.sensitive_fraction)
        if self.sensitive_words < 1:
            raise ParameterError(
                f"sensitive_fraction {self.p.sensitive_fraction:g} marks no word of this {n}-word index as "
                f"sensitive (floor(w n) = 0); it must be at least 1/n = {1 / n:.6g}, so that replacements have "
                "words to come from"
            )
        self.first_sensitive = n - self.sensitive_words  # ids >= this are sensitive (least frequent)
        self.log_base = np.where(np.arange(n) >= self.first_sensitive, 0.0, -np.inf)
        self._view = None
        if self.first_sensitive and self.p.replace_probability > 0:
            self._frequent_view()  # the launcher stores the table; a worker only reads it

    def params(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "sensitive_fraction": self.p.sensitive_fraction,
            "replace_probability": self.p.replace_probability,
            "sensitive_words": self.sensitive_words,
            "word_frequencies": FREQUENCY_SOURCE,
        }

    def sensitive(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) >= self.first_sensitive

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sensitive = self.sensitive(ids)
        replace = sensitive | (rng.random(len(ids)) < self.p.replace_probability)
        out = ids.copy()
        rows = np.flatnonzero(replace & sensitive)
        if rows.size:
            out[rows] = sample_capped_exponential(self.index, ids[rows], rng, self.epsilon, log_base=self.log_base)
        rows = np.flatnonzero(replace & ~sensitive)
        if rows.size:  # non-sensitive ids are 0 .. first_sensitive - 1: rows of the nearest-sensitive table
            out[rows] = sample_capped_exponential(self._frequent_view(), ids[rows], rng, self.epsilon, self.log_base)
        return out

    def _frequent_view(self) -> "_TableView":
        """The index as the vocabulary sampler sees it for non-sensitive inputs: their table is their
        SENSITIVE_NEIGHBOURS nearest sensitive words (stored with the index), not their nearest words,
        which for a frequent word are mostly frequent words of weight 0 here."""
        if self._view is None:
            k = min(SENSITIVE_NEIGHBOURS, self.sensitive_words)
            params = {"sensitive_words": self.sensitive_words, "neighbours": k}
            computed = []  # both tables come from one computation

            def compute(which):
                if not computed:
                    computed.extend(nearest_sensitive(self.index, self.first_sensitive, k))
                return computed[which]

            ids = self.index.table(SENSITIVE_IDS_TABLE, lambda idx: compute(0), params)
            dist = self.index.table(SENSITIVE_DISTANCES_TABLE, lambda idx: compute(1), params)
            self._view = _TableView(self.index, ids, dist)
        return self._view

    @property
    def everything_replaced(self) -> bool:
        return self.sensitive_words == self.index.n or self.p.replace_probability == 1

    def compute_guarantee(self) -> Guarantee:
        eps, dmax, n = self.epsilon, self.index.dmax, self.index.n
        p, ns = self.p.replace_probability, self.sensitive_words
        sets = (
            f"the {ns} least frequent of the {n} vocabulary words (sensitive_fraction {self.p.sensitive_fraction:g}, "
            "frequency rank = the index's word order) are sensitive"
        )
        extra = {"sensitive_words": ns, "non_sensitive_words": n - ns, "word_frequencies": FREQUENCY_SOURCE}
        confirmed = (
            "tests/test_santext.py: the sampler matches the closed form (chi-square), and the exact audit of the "
            "closed form confirms every bound stated"
        )
        if self.everything_replaced:
            why = "every word is sensitive" if ns == n else "replace_probability is 1"
            return Guarantee(
                mechanism=PLUS,
                kind="metric-DP",
                rate=eps,
                basis="proved",
                statement=(
                    f"{sets}; {why}, so every word is replaced by a sensitive word y drawn with weight "
                    f"exp(-epsilon d(w, y) / 2): P[M(w)=y] <= exp({eps:g} * d(w, w')) * P[M(w')=y] for every pair "
                    "of vocabulary words w, w' and every output y: metric DP at rate epsilon."
                ),
                per_token_pure_epsilon=eps * dmax,
                per_token_pure_epsilon_note=f"vocabulary-wide: epsilon * Dmax = {eps:g} * {dmax:.6g}",
                confirmed_by=confirmed,
                extra=extra,
            )
        bound = (
            f"exp({eps:g} * d(w, w') + ln(1/p) = {-math.log(p):.4g})"
            if p > 0
            else "nothing (with p = 0 a non-sensitive word is never replaced, so a sensitive output excludes it)"
        )
        statement = (
            f"santext_plus ({PAPER}): {sets}. Two sensitive words are metric DP at rate epsilon: "
            f"P[M(w)=y] <= exp({eps:g} * d(w, w')) * P[M(w')=y] for every output y. A replaced word is always a "
            f"sensitive word, and for such an output any two words w, w' differ by at most a factor {bound}. "
            f"A non-sensitive word is kept with probability 1 - p = {1 - p:.4g}, and a kept word can only have come "
            "from itself: non-sensitive words are not protected (infinite worst-case log-ratio against every other "
            "word), so dptext composes no per-document bound. The paper states a utility-optimized guarantee that "
            "protects sensitive words only; this is the bound dptext proves for it (tests/test_santext.py checks "
            "every part of it on exact distributions)."
        )
        return Guarantee(
            mechanism=PLUS,
            kind="metric DP among sensitive words only; non-sensitive words not protected",
            rate=None,
            basis="proved",
            statement=statement,
            per_token_pure_epsilon=None,
            worst_case_log_ratio=math.inf,
            not_protected=NOT_PROTECTED
            + (
                f"non-sensitive words (the {n - ns} most frequent): each is kept with probability {1 - p:.4g}, and a "
                "kept word identifies itself",
            ),
            confirmed_by=confirmed,
            extra={**extra, "rate_among_sensitive_words": eps, "replace_probability": p},
        )
