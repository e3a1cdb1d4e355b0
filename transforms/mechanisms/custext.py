"""custext: customized output sets (Chen et al., "A customized text sanitization mechanism with
differential privacy", Findings of ACL 2023), and CusText+ (stop words kept) as stop_words=keep.

Output sets (the paper's mapping, the authors' default "conservative" strategy): the words are
taken in frequency order (the index's word order, most frequent first); each word not yet in a set
opens one with its K - 1 nearest words (Euclidean, ties by id) among the words not yet in a set, so
every word of a set has that set as its output set. The n mod K words left at the end join the
last set (the authors' code fills the last set with words already in other sets, which would break
the sharing); so every set has K to 2K - 1 words, or all n when n < 2K.

Sampling: for w in set S, u(w, y) = -d(w, y) / max_{y' in S} d(w, y') in [-1, 0] (the paper's
min-max normalisation; the minimum is d(w, w) = 0), and P[M(w) = y] proportional to
exp(eps u(w, y) / 2) over y in S (sensitivity of u: 1). Both tables depend only on the embedding
and K: computed once and stored beside the index.

Guarantee, exact by construction: two words w, w' of one set share their outputs, and
|u(w, y) - u(w', y)| <= 1 bounds both the weights' ratio and the normalisers' ratio by
exp(eps / 2), so P[M(w)=y] <= exp(eps) P[M(w')=y]. Words of different sets have disjoint outputs
(infinite log-ratio): the output reveals the input's set. compute_guarantee computes the worst
within-set log-ratio exactly over every set of the index.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dptext.transforms.audit import softmax
from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import Mechanism, parameter
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Guarantee

NAME = "custext"
PAPER = "Chen et al., Findings of ACL 2023"
STOP_WORD_POLICIES = ("perturb", "keep")
MAX_SET_SIZE = 512  # the stored tables take n x (2K - 1) x 12 bytes (277 MB at n = 33,860 and K = 512)
_SEED_BATCH = 64  # seeds whose distances one matrix product computes while building the sets
MEMBERS_TABLE, SCORES_TABLE = "custext_members", "custext_scores"

# NLTK's English stop-word list (179 words), the list the authors' CusText+ keeps unchanged.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him
    his himself she she's her hers herself it it's its itself they them their theirs themselves what which who
    whom this that that'll these those am is are was were be been being have has had having do does did doing a
    an the and but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here there when
    where why how all any both each few more most other some such no nor not only own same so than too very s t
    can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't
    doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't
    shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)


@dataclass(frozen=True)
class CusTextParams:
    set_size: int = parameter(
        20,
        f"K: words per customized output set (2 <= K <= {MAX_SET_SIZE}; K >= n makes one set); the words, "
        "most frequent first, each open a set with their K - 1 nearest words not yet in one, and every word "
        "of a set shares it",
    )
    stop_words: str = parameter(
        "perturb",
        "perturb (CusText) or keep (CusText+: the 179 NLTK English stop words are published unchanged and "
        "are not protected)",
        STOP_WORD_POLICIES,
    )

    def __post_init__(self):
        k = self.set_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= MAX_SET_SIZE:
            raise ParameterError(f"set_size must be an integer in [2, {MAX_SET_SIZE}], got {k!r}")
        if self.stop_words not in STOP_WORD_POLICIES:
            raise ParameterError(f"unknown stop_words {self.stop_words!r}; valid: {', '.join(STOP_WORD_POLICIES)}")


# ---- the output sets and their scores (embedding-only tables) -----------------------------------
def output_sets(vectors: np.ndarray, k: int, neighbour_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """The customized output sets of the words 0..n-1 taken in order (see the module docstring).

    With the index's K-NN table (rows: the word, then its neighbours by (distance, id)), a seed whose
    table row holds at least k - 1 words not yet in a set takes the first k - 1 of them: they are its
    nearest free words, since every word outside the row comes after the row's last in that order.
    Otherwise the free words are ranked by exact float64 distance, ties by id.
    """
    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    sq = np.einsum("ij,ij->i", v, v)
    approx: dict[int, np.ndarray] = {}
    free = np.ones(n, dtype=bool)
    left = n
    sets: list[np.ndarray] = []
    for seed in range(n):
        if not free[seed]:
            continue
        if left < k:  # the last words: they join the last set (or are the only set)
            rest = np.flatnonzero(free)
            if sets:
                sets[-1] = np.concatenate((sets[-1], rest))
            else:
                sets.append(rest)
            break
        chosen = None
        if neighbour_ids is not None:
            row = np.asarray(neighbour_ids[seed, 1:])
            row = row[free[row]]
            if len(row) >= k - 1:
                chosen = np.concatenate(([seed], row[: k - 1]))
        if chosen is None:
            if seed not in approx:  # the next free words' squared distances, in one matrix product
                batch = np.flatnonzero(free[seed:])[:_SEED_BATCH] + seed
                block = sq[:, None] + sq[batch][None, :] - 2.0 * (v @ v[batch].T)
                approx = {int(b): block[:, j] for j, b in enumerate(batch)}
            chosen = np.concatenate(([seed], _nearest_free(v, approx.pop(seed), free, seed, k - 1)))
        sets.append(chosen.astype(np.int64))
        free[chosen] = False
        left -= len(chosen)
    return sets


def _nearest_free(v: np.ndarray, approx: np.ndarray, free: np.ndarray, seed: int, m: int) -> np.ndarray:
    """The m nearest free words to seed (not seed itself), ranked by exact float64 distance, ties by id.

    approx holds |x|^2 + |s|^2 - 2 x.s for every word x; every free word within a margin of the m-th
    smallest (far above that expansion's rounding error) is then ranked exactly.
    """
    others = np.flatnonzero(free)
    others = others[others != seed]
    if len(others) > m:
        near = approx[others]
        cut = np.partition(near, m - 1)[m - 1]
        others = others[near <= cut + 1e-6 * (abs(cut) + np.abs(approx).max()) + 1e-12]
    diff = v[others] - v[seed]
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return others[np.lexsort((others, d))[:m]]


def set_members(vectors: np.ndarray, k: int, neighbour_ids: np.ndarray | None = None) -> np.ndarray:
    """(n, width) int32: row w lists the words of w's set (the set's order, the same for all its
    words), padded with -1; width is the largest set's size."""
    sets = output_sets(vectors, k, neighbour_ids)
    width = max(len(s) for s in sets)
    members = np.full((len(vectors), width), -1, dtype=np.int32)
    for s in sets:
        members[s, : len(s)] = s
    return members


def set_scores(vectors: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(n, width) float64: u(w, y) = -d(w, y) / max_{y' in S} d(w, y') for the members y of w's set
    (0 for every member when they all share w's vector), -inf in the padding."""
    v = np.asarray(vectors, dtype=np.float64)
    scores = np.full(members.shape, -np.inf)
    sizes = (members >= 0).sum(axis=1)
    for size in np.unique(sizes):
        rows = np.flatnonzero(sizes == size)
        step = max(1, (1 << 21) // (size * v.shape[1]))  # (step, size, d) float64 differences: 16 MiB
        for s in range(0, len(rows), step):
            block = rows[s : s + step]
            diff = v[members[block, :size]] - v[block][:, None, :]
            d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            top = d.max(axis=1, keepdims=True)
            scores[block, :size] = np.where(top > 0, -d / np.where(top > 0, top, 1.0), 0.0)
    return scores


def custext_distribution(scores_rows: np.ndarray, epsilon: float) -> np.ndarray:
    """P over each row's members: softmax of eps u / 2 (rows of set_scores; -inf padding gets 0)."""
    scores_rows = np.asarray(scores_rows, dtype=np.float64)
    valid = np.isfinite(scores_rows)
    with np.errstate(over="ignore"):
        logits = np.where(valid, 0.5 * float(epsilon) * np.where(valid, scores_rows, 0.0), -np.inf)
    return softmax(logits)


def stop_word_mask(words) -> np.ndarray:
    """Vocabulary words that are stop words (compared lower-cased, as the list is)."""
    return np.fromiter((w.lower() in STOP_WORDS for w in words), dtype=bool, count=len(words))


def within_set_worst_log_ratio(members: np.ndarray, scores: np.ndarray, epsilon: float, excluded=None) -> float:
    """max over sets S, words w != w' of S (neither excluded), outputs y of ln P[M(w)=y] / P[M(w')=y],
    exactly (-inf when no set has two such words)."""
    n = len(members)
    excluded = np.zeros(n, dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)
    sizes = (members >= 0).sum(axis=1)
    leaders = np.flatnonzero(members[:, 0] == np.arange(n))  # a set's first word stands for it
    worst = -math.inf
    for size in np.unique(sizes[leaders]):
        sets = members[leaders[sizes[leaders] == size], :size]  # (m, s)
        step = max(1, 2**22 // size**2)
        for s in range(0, len(sets), step):
            block = sets[s : s + step]
            with np.errstate(divide="ignore"):
                logp = np.log(custext_distribution(scores[block.ravel(), :size], epsilon)).reshape(
                    len(block), size, size
                )
            usable = ~excluded[block]
            for a in range(size):  # w = the a-th word of each set, against every w' of its set
                ratio = (logp[:, a, None, :] - logp).max(axis=2)  # [set, w']
                pair = usable[:, a, None] & usable
                pair[:, a] = False
                if pair.any():
                    worst = max(worst, float(ratio[pair].max()))
    return worst


class CusText(Mechanism):
    name = NAME
    Params = CusTextParams

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        # Any epsilon: eps u / 2 stays finite for u in [-1, 0].
        n = index.n
        self.k = k = min(self.p.set_size, n)  # K >= n: one set of every word
        params = {"set_size": k}
        self.members = index.table(
            MEMBERS_TABLE, lambda idx: set_members(idx.vectors, k, np.asarray(idx.neighbour_ids)), params
        )
        self.scores = index.table(SCORES_TABLE, lambda idx: set_scores(idx.vectors, np.asarray(self.members)), params)
        self.sizes = (np.asarray(self.members) >= 0).sum(axis=1)
        self.kept = stop_word_mask(index.vocabulary) if self.p.stop_words == "keep" else None

    def params(self) -> dict:
        out = {"epsilon": self.epsilon, "set_size": self.p.set_size, "stop_words": self.p.stop_words}
        if self.k != self.p.set_size:
            out["set_size_used"] = self.k
        out["set_order"] = "the index's word order (most frequent first)"
        return out

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = np.asarray(self.scores[ids])
        valid = np.isfinite(rows)
        with np.errstate(over="ignore"):
            logits = np.where(valid, 0.5 * self.epsilon * np.where(valid, rows, 0.0), -np.inf)
        # Gumbel-max: exact, and a word of weight 0 (logit -inf) can never be drawn.
        column = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        out = np.asarray(self.members[ids, column]).astype(np.int32)
        if self.kept is not None:
            keep = self.kept[ids]
            out[keep] = ids[keep]
        return out

    def set_size_distribution(self) -> dict[str, int]:
        """{set size: number of sets} over the index."""
        leaders = np.asarray(self.members[:, 0]) == np.arange(self.index.n)
        return {str(s): c for s, c in sorted(Counter(self.sizes[leaders].tolist()).items())}

    def compute_guarantee(self) -> Guarantee:
        eps, n, k = self.epsilon, self.index.n, self.k
        sizes = self.set_size_distribution()
        sets = sum(sizes.values())
        kept = self.kept if self.kept is not None else np.zeros(n, dtype=bool)
        worst = within_set_worst_log_ratio(np.asarray(self.members), np.asarray(self.scores), eps, kept)
        layout = ", ".join(f"{c} of {s} words" for s, c in sizes.items())
        extra = {
            "set_size": k,
            "sets": sets,
            "set_size_distribution": sizes,
            "worst_log_ratio_within_a_set": worst,
            "set_order": "the index's word order (most frequent first)",
        }
        stop = int(kept.sum())
        stop_text = (
            f" Stop words are kept (CusText+): the {stop} stop words of this vocabulary are published unchanged and "
            "are not protected; the bound holds between the other words of a set."
            if self.p.stop_words == "keep"
            else ""
        )
        extra["stop_words_kept"] = stop
        exact = (
            f"the exact worst over every set of this index is {worst:.4g}"
            if math.isfinite(worst)
            else "no two protected words share a set on this index"
        )
        within = (
            f"P[M(w)=y] <= exp({eps:g}) * P[M(w')=y] for every two words w, w' of one output set and every "
            f"output y ({exact})"
        )
        not_protected = NOT_PROTECTED + (
            (f"stop words ({stop} in this vocabulary): published unchanged (CusText+)",) if stop else ()
        )
        if sets == 1 and not stop:
            return Guarantee(
                mechanism=NAME,
                kind="pure-DP",
                rate=None,
                basis="proved",
                statement=(
                    f"custext ({PAPER}) with K = {k}: this vocabulary of {n} words is a single output set, so "
                    f"{within}, that is for every pair of vocabulary words: pure epsilon-DP over the whole "
                    "vocabulary."
                ),
                per_token_pure_epsilon=eps,
                per_token_pure_epsilon_note=f"vocabulary-wide: epsilon = {eps:g} (one output set)",
                confirmed_by="tests/test_custext.py",
                extra=extra,
            )
        return Guarantee(
            mechanism=NAME,
            kind="local: epsilon-DP within each output set, none across sets",
            rate=None,
            basis="proved (the worst log-ratio computed exactly over every set of this index)",
            statement=(
                f"custext ({PAPER}) with K = {k}: the vocabulary is split into {sets} customized output sets "
                f"({layout}; words taken most frequent first, each set built from a word and its nearest words "
                f"not yet in a set), and a word's output is always a word of its own set: {within}. Words of "
                "different sets have disjoint outputs (infinite log-ratio), so the output reveals which set the "
                "input belongs to, and dptext composes no per-document bound." + stop_text
            ),
            per_token_pure_epsilon=None,
            worst_case_log_ratio=math.inf,
            not_protected=not_protected
            + ("which output set a word belongs to: words of different sets are never confused",),
            confirmed_by=(
                "tests/test_custext.py: the sets are shared and match the paper's construction, the sampler matches "
                "the closed form (chi-square), and the exact within-set log-ratio is <= epsilon"
            ),
            extra=extra,
        )
