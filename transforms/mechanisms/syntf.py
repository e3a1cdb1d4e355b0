"""syntf: word replacement after SynTF (Weggenmann and Kerschbaum, "SynTF: Synthetic and differentially
private term frequency vectors for privacy-preserving text mining", SIGIR 2018), as mldp-text 0.1.2
adapts it to word replacement: a word is replaced by a word drawn with the exponential mechanism,
favouring its WordNet synonyms.

Here the candidates are every vocabulary word and the score is the synonym relation itself:
u(w, y) = 1 if y is w or a WordNet 3.0 synonym of w (a lemma of a synset of a base form of w,
transforms/wordnet.py), else 0, and P[M(w) = y] is proportional to exp(eps u(w, y) / 2). u takes the
values 0 and 1 only, so its sensitivity over any two inputs is 1, and the exponential mechanism at
eps / (2 x 1) is pure eps-DP per token; with S(w) the words of score 1 and s_w = |S(w)|, the normaliser
is Z(s_w) = s_w e^(eps / 2) + n - s_w, and for every w, w', y

    P[M(w)=y] / P[M(w')=y] = e^((eps/2)(u(w,y) - u(w',y))) Z(s_w') / Z(s_w) <= e^(eps/2) Z(s_max) / Z(s_min),

which is at most e^eps (Z(s) lies in [n, n e^(eps/2)]): the per-token bound the guarantee states.
A word with no synonym in the vocabulary has S(w) = {w}: it is kept with weight e^(eps/2) and any other
word drawn with weight 1, so it is protected like every other word.

The score is public: WordNet and the index's words, fixed when the table is built (`dptext
build-index` stores it with the index; workers only read it). mldp-text scores the synonyms by the
TF-IDF of the corpus it is given, which makes one document's output depend on the others.

Sampling is exact and O(|S(w)|) per token: the output is in S(w) with probability
s_w e^(eps/2) / Z(s_w), uniform within S(w); otherwise uniform over the n - s_w other words, found by
vocabulary_exponential.uniform_outside (exact integer arithmetic, no redraws).
"""

from __future__ import annotations

import math

import numpy as np

from dptext.transforms.audit import exponential_distribution
from dptext.transforms.mechanisms.base import Mechanism
from dptext.transforms.mechanisms.guarantee import Guarantee
from dptext.transforms.mechanisms.vocabulary_exponential import uniform_outside
from dptext.transforms.wordnet import VERSION, WordNet, synonym_table

NAME = "syntf"
PAPER = "Weggenmann and Kerschbaum, SIGIR 2018"
OFFSETS_TABLE, SYNONYMS_TABLE = "syntf_synonym_offsets", "syntf_synonym_ids"
# The table's identity: the WordNet version and this relation (a new relation must change it).
TABLE_PARAMS = {"wordnet": VERSION, "relation": "shared synset of a base form (NLTK 3.10's morphy); lowercase match"}
SYNONYM_SOURCE = (
    f"WordNet {VERSION} synsets (lemmas of a synset of a base form of the word, matched to vocabulary words "
    "case-insensitively), read when the index's table was built; independent of the corpus"
)


def synonym_tables(index) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, ids) of S(w) for every word, stored with the index (computed once, from WordNet)."""
    computed = []  # both tables come from one reading of WordNet

    def compute(which):
        if not computed:
            computed.extend(synonym_table(index.vocabulary, WordNet()))
        return computed[which]

    offsets = index.table(OFFSETS_TABLE, lambda idx: compute(0), TABLE_PARAMS)
    ids = index.table(SYNONYMS_TABLE, lambda idx: compute(1), TABLE_PARAMS)
    return offsets, ids


def per_token_epsilon(epsilon: float, n: int, s_min: int, s_max: int) -> float:
    """eps/2 + ln Z(s_max) - ln Z(s_min): the largest log-ratio any two words can have (at most eps).

    ln Z(s_max) / Z(s_min) = log1p((s_max - s_min)(1 - e^-a) / (s_min + (n - s_min) e^-a)), a = eps/2: every
    step has a small relative error for any a (a difference of the two logarithms loses all digits for
    small eps, and e^a overflows for large eps)."""
    a = 0.5 * epsilon
    ratio = (s_max - s_min) * -math.expm1(-a) / (s_min + (n - s_min) * math.exp(-a))
    bound = a + math.log1p(ratio)
    # Rounded up (a relative 1e-12 covers the float64 roundings above, and never 0 for eps > 0), and
    # never above eps, which bounds it exactly.
    return min(max(bound * (1 + 1e-12), math.ulp(0.0)), epsilon)


def syntf_distribution(score: np.ndarray, epsilon: float) -> np.ndarray:
    """Exact P[w, y] proportional to exp(eps u(w, y) / 2) for a 0/1 score matrix u: the exponential
    mechanism over the whole vocabulary at distance 1 - u (the test oracle)."""
    return exponential_distribution(1.0 - np.asarray(score, dtype=np.float64), epsilon, np.zeros(len(score)))


def score_matrix(offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """u as a dense n x n 0/1 matrix (small vocabularies: tests and audits)."""
    n = len(offsets) - 1
    u = np.zeros((n, n))
    for w in range(n):
        u[w, ids[offsets[w] : offsets[w + 1]]] = 1.0
    return u


class SynTF(Mechanism):
    name = NAME

    def __init__(self, index, epsilon: float, *args, **kwargs):
        super().__init__(index, epsilon, *args, **kwargs)
        self.offsets, self.synonyms = synonym_tables(index)
        self.sizes = np.diff(np.asarray(self.offsets))

    def params(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "outputs": "every vocabulary word: weight exp(epsilon / 2) for w and its synonyms, 1 for the others",
            "synonyms": SYNONYM_SOURCE,
        }

    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.index.n
        s = self.sizes[ids]
        with np.errstate(under="ignore"):
            rest = (n - s) * math.exp(-0.5 * self.epsilon)
        in_set = rng.random(len(ids)) < s / (s + rest)  # P[y in S(w)] = s e^(eps/2) / Z(s)
        out = np.empty(len(ids), dtype=np.int32)
        rows = np.flatnonzero(in_set)
        if rows.size:
            out[rows] = self.synonyms[self.offsets[ids[rows]] + rng.integers(0, s[rows])]
        rows = np.flatnonzero(~in_set)  # here s < n: with s = n the test above is always true
        if rows.size:
            out[rows] = self._outside(ids[rows], s[rows], rng)
        return out

    def _outside(self, ids: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One word uniform among the n - s_w words outside S(w), for each w."""
        n, width = self.index.n, int(s.max())
        cols = np.arange(width)
        valid = cols[None, :] < s[:, None]
        pos = np.minimum(self.offsets[ids][:, None] + cols[None, :], len(self.synonyms) - 1)
        # Padding n + (j - s) keeps each row's t_j - j non-decreasing and above every u < n - s.
        table = np.where(valid, np.asarray(self.synonyms)[pos], n + cols[None, :] - s[:, None])
        u = rng.integers(0, n - s)[:, None]
        return uniform_outside(table, u, n)[:, 0]

    def compute_guarantee(self) -> Guarantee:
        eps, n = self.epsilon, self.index.n
        sizes = self.sizes
        s_min, s_max = int(sizes.min()), int(sizes.max())
        bound = per_token_epsilon(eps, n, s_min, s_max)
        w_min, w_max = int(np.argmin(sizes)), int(np.argmax(sizes))
        row = self.synonyms[self.offsets[w_max] : self.offsets[w_max + 1]]
        attained = w_min not in set(np.asarray(row).tolist())  # y = w_min: in S(w_min), not in S(w_max)
        exactly = "the bound is attained on this index" if attained else "an upper bound on this index"
        return Guarantee(
            mechanism=NAME,
            kind="pure-DP",
            rate=None,
            basis="proved",
            statement=(
                f"syntf (after SynTF, {PAPER}): the exponential mechanism over all {n} vocabulary words with score "
                "u(w, y) = 1 when y is w or a WordNet synonym of w and 0 otherwise, P[M(w)=y] proportional to "
                "exp(epsilon u(w, y) / 2). The score takes only the values 0 and 1 (sensitivity 1), so "
                f"P[M(w)=y] <= exp({bound:.6g}) * P[M(w')=y] for every pair of vocabulary words w, w' and every "
                f"output y: pure epsilon-DP per token with epsilon {bound:.6g} <= {eps:g} (epsilon/2 for the score "
                f"plus the log-ratio of the normalisers of the largest and smallest synonym sets on this index, "
                f"{s_max} and {s_min} words; {exactly}). A word with no synonym in the vocabulary "
                "is protected the same way: it keeps itself with weight exp(epsilon/2) against weight 1 for every "
                "other word. The synonyms come from WordNet and the index, not from the corpus."
            ),
            per_token_pure_epsilon=bound,
            per_token_pure_epsilon_note=(
                f"vocabulary-wide: epsilon/2 + ln Z({s_max}) - ln Z({s_min}) = {bound:.6g} <= epsilon = {eps:g}, "
                "Z(s) = s exp(epsilon/2) + n - s"
            ),
            confirmed_by=(
                "tests/test_syntf.py: the sampler matches the closed form (chi-square, total variation) and the "
                "worst log-ratio of the closed form, computed exactly over every pair, equals the stated bound"
            ),
            extra={
                "synonyms": SYNONYM_SOURCE,
                "words_with_synonyms": int((sizes > 1).sum()),
                "synonym_set_size": {"min": s_min, "median": float(np.median(sizes)), "max": s_max},
                "score_sensitivity": 1,
            },
        )
