"""custext (Chen et al. 2023): the customized output sets against a direct reading of the paper's
construction, the sampler against the exact distribution, broken variants that must fail, the exact
guarantee (epsilon within a set, nothing across sets), CusText+ (stop words kept), the edge cases of
the set layout, and runs end to end through `dptext run` and dptext.Privatize."""

from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import pytest

import dptext
from dptext.pipeline.cli import main
from dptext.transforms import mechanisms
from dptext.transforms.audit import audit_pairs, pairwise_distances, softmax, total_variation
from dptext.transforms.mechanisms import custext
from dptext.transforms.mechanisms.custext import CusText, output_sets
from tests.test_santext import _tv_tolerance
from tests.test_truncated_gumbel import _chi_square_matches

DRAWS = 200_000


def reference_sets(vectors: np.ndarray, k: int) -> list[list[int]]:
    """The paper's mapping read directly: words in order; a word not yet in a set takes itself and its
    k - 1 nearest words not yet in a set (exact float64 distances, ties by id); fewer than k words left
    join the last set."""
    dist = pairwise_distances(vectors)
    n = len(vectors)
    free, sets = list(range(n)), []
    while free:
        seed = free[0]
        if len(free) < k:
            if sets:
                sets[-1] += free
            else:
                sets.append(list(free))
            break
        others = sorted((w for w in free if w != seed), key=lambda w: (dist[seed, w], w))
        chosen = [seed] + others[: k - 1]
        sets.append(chosen)
        free = [w for w in free if w not in chosen]
    return sets


def exact_distribution(vectors: np.ndarray, sets: list[list[int]], epsilon: float) -> np.ndarray:
    """P[w, y] from the paper's formula: u(w, y) = -(d(w, y) - min) / (max - min) over w's set (min = 0,
    uniform when max = 0), P proportional to exp(eps u / 2) within the set."""
    dist = pairwise_distances(vectors)
    P = np.zeros((len(vectors), len(vectors)))
    for s in sets:
        for w in s:
            d = dist[w, s]
            u = -(d - d.min()) / (d.max() - d.min()) if d.max() > d.min() else np.zeros(len(s))
            P[w, s] = softmax(0.5 * epsilon * u)
    return P


@pytest.fixture(scope="module")
def wide(random_index):
    return random_index(n=40, d=3, neighbours=4, seed=21)


@pytest.mark.parametrize("n, k, table", [(40, 4, 4), (40, 7, 39), (41, 4, 4), (45, 7, 2), (40, 39, 4), (40, 20, 10)])
def test_output_sets_match_the_papers_construction(random_index, n, k, table):
    """Short tables (2, 4) force the exact fallback, a whole table (39) never does."""
    index = random_index(n=n, d=3, neighbours=min(table, n - 1), seed=n + k)
    got = output_sets(index.vectors, k, np.asarray(index.neighbour_ids))
    assert [s.tolist() for s in got] == reference_sets(index.vectors, k)
    assert sorted(np.concatenate(got).tolist()) == list(range(n))  # a partition
    sizes = sorted(len(s) for s in got)
    assert sizes[0] >= min(k, n) and sizes[-1] <= max(2 * k - 1, n if n < 2 * k else 0)


def test_every_word_of_a_set_shares_it(wide):
    mech = mechanisms.create("custext", wide, 2.0, set_size=7)
    members = np.asarray(mech.members)
    for w in range(wide.n):
        mine = set(members[w][members[w] >= 0].tolist())
        assert w in mine
        for y in mine:
            assert set(members[y][members[y] >= 0].tolist()) == mine
    assert mech.set_size_distribution() == {"7": 4, "12": 1}  # 40 = 4 x 7 + 12 (the last 5 joined)


@pytest.mark.parametrize("epsilon, k", [(1.0, 4), (3.0, 7), (8.0, 12)])
@pytest.mark.parametrize("word", [0, 23])
def test_custext_matches_the_papers_distribution(wide, epsilon, k, word):
    mech = mechanisms.create("custext", wide, epsilon, set_size=k)
    exact = exact_distribution(wide.vectors, reference_sets(wide.vectors, k), epsilon)
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
    assert stat < threshold, (stat, threshold)
    out = mech.perturb(np.full(DRAWS, word, dtype=np.int32), np.random.default_rng(300 + word))
    tv = float(total_variation(np.bincount(out, minlength=wide.n) / DRAWS, exact[word]))
    assert tv < _tv_tolerance(exact[word], DRAWS), tv  # formula in tests/test_santext.py


class _NotHalved(CusText):
    """Broken: weights exp(eps u) (the exponential mechanism's 1/2 dropped)."""

    def _perturb(self, ids, rng):
        self.epsilon *= 2
        try:
            return super()._perturb(ids, rng)
        finally:
            self.epsilon /= 2


class _UnnormalisedScore(CusText):
    """Broken: u = -d (no min-max normalisation)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        members = np.asarray(self.members)
        diff = self.index.vectors[np.maximum(members, 0)] - self.index.vectors[:, None, :]
        self.scores = np.where(members >= 0, -np.sqrt((diff**2).sum(-1)), -np.inf)


@pytest.mark.parametrize("broken", [_NotHalved, _UnnormalisedScore])
def test_broken_custext_samplers_fail_the_oracle(wide, broken):
    exact = exact_distribution(wide.vectors, reference_sets(wide.vectors, 7), 3.0)
    stat, threshold = _chi_square_matches(broken(wide, 3.0, set_size=7), 0, exact[0], seed=1)
    assert stat > threshold


def test_the_guarantee_is_exact_within_sets_and_nothing_across(wide):
    """Whole 40-word vocabulary, exactly: every pair within a set has log-ratio <= eps (and the printed
    worst is that exact maximum); pairs of different sets have disjoint outputs (infinite)."""
    eps, k = 3.0, 7
    mech = mechanisms.create("custext", wide, eps, set_size=k)
    sets = reference_sets(wide.vectors, k)
    P = exact_distribution(wide.vectors, sets, eps)
    same = np.zeros((wide.n, wide.n), dtype=bool)
    for s in sets:
        same[np.ix_(s, s)] = True
    np.fill_diagonal(same, False)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.log(P)[:, None, :] - np.log(P)[None, :, :]
    diff[np.isnan(diff)] = -np.inf
    ratio = diff.max(axis=2)
    assert ratio[same].max() <= eps + 1e-12
    assert np.isinf(ratio[~same & ~np.eye(wide.n, dtype=bool)]).all()
    g = mech.guarantee()
    assert g.extra["worst_log_ratio_within_a_set"] == pytest.approx(ratio[same].max(), abs=1e-9)
    assert g.per_token_pure_epsilon is None and g.worst_case_log_ratio == math.inf and g.rate is None
    assert g.extra["set_size_distribution"] == {"7": 4, "12": 1} and "5 customized output sets" in g.statement
    assert audit_pairs(P, pairwise_distances(wide.vectors))["worst_log_ratio"] == math.inf
    json.dumps(g.as_dict(), allow_nan=False)


def test_sets_built_per_word_are_not_shared_and_break_the_bound(wide):
    """Broken construction (pypantera 1.0.2's CusText: every word's own K nearest, no sharing): two words
    that each have the other among their outputs are no longer within eps of each other."""
    eps, k = 3.0, 7
    dist = pairwise_distances(wide.vectors)
    own = [np.argsort(dist[w], kind="stable")[:k].tolist() for w in range(wide.n)]
    P = exact_distribution(wide.vectors, [[w] for w in range(wide.n)], eps)  # shape only
    P[:] = 0
    for w in range(wide.n):
        d = dist[w, own[w]]
        P[w, own[w]] = softmax(-0.5 * eps * d / d.max())
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 (nan): no evidence either way
        worst = max(np.nanmax(np.log(P[w]) - np.log(P[y])) for w in range(wide.n) for y in own[w][1:])
    assert worst > eps  # (infinite: their output sets differ)


def test_one_set_when_the_vocabulary_is_small_is_pure_dp(random_index):
    """n < 2K: every word is in the single set, so the guarantee is pure eps-DP over the vocabulary
    (composed per document); K > n is the same single set."""
    index = random_index(n=9, d=3, neighbours=8, seed=4)
    for k in (5, 9, 50):
        mech = mechanisms.create("custext", index, 2.0, set_size=k)
        g = mech.guarantee()
        assert g.kind == "pure-DP" and g.per_token_pure_epsilon == 2.0
        P = exact_distribution(index.vectors, [list(range(9))], 2.0)
        assert audit_pairs(P, pairwise_distances(index.vectors))["worst_log_ratio"] <= 2.0 + 1e-12
        stat, threshold = _chi_square_matches(mech, 4, P[4], seed=k)
        assert stat < threshold


def test_duplicate_vectors_and_huge_or_tiny_epsilon(tmp_path):
    vectors = np.random.default_rng(12).normal(size=(8, 3)).astype(np.float32)
    vectors[6] = vectors[2]
    vectors[7] = vectors[2]
    index = dptext.EmbeddingIndex.build([f"w{i}" for i in range(8)], vectors, tmp_path, neighbours=3, progress=False)
    ids = np.repeat(np.arange(8, dtype=np.int32), 500)
    huge = mechanisms.create("custext", index, 1e308, set_size=3).perturb(ids, np.random.default_rng(0))
    members = np.asarray(mechanisms.create("custext", index, 1.0, set_size=3).members)
    for w in range(8):  # at a huge epsilon a word stays, or moves to a word on its own vector
        got = set(huge[ids == w].tolist())
        assert got <= {w} | ({2, 6, 7} if w in (2, 6, 7) else set()), (w, got)
        assert got <= set(members[w].tolist())
    tiny = mechanisms.create("custext", index, math.ulp(0.0), set_size=3).perturb(ids, np.random.default_rng(1))
    for w in range(8):  # uniform over the set
        size = int((members[w] >= 0).sum())
        counts = np.bincount(tiny[ids == w], minlength=8)[members[w][:size]]
        assert counts.min() > 500 / size - 5 * math.sqrt(500 / size)  # 5 sigma


@pytest.mark.parametrize(
    "params", [{"set_size": 1}, {"set_size": 0}, {"set_size": 2.5}, {"set_size": 10_000}, {"stop_words": "drop"}]
)
def test_bad_parameters_name_what_is_valid(wide, params):
    with pytest.raises(ValueError, match=next(iter(params))) as err:
        mechanisms.create("custext", wide, 1.0, **params)
    assert "must be" in str(err.value) or "valid" in str(err.value)


# ---- CusText+ ------------------------------------------------------------------------------------
WORDS = "the cat sat on a mat and dog ran to park i love this movie what terrible day".split()


@pytest.fixture(scope="module")
def words_index(tmp_path_factory):
    vectors = np.random.default_rng(5).normal(size=(len(WORDS), 4)).astype(np.float32)
    path = tmp_path_factory.mktemp("custext_words")
    return dptext.EmbeddingIndex.build(WORDS, vectors, path, neighbours=5, progress=False)


def test_custext_plus_keeps_stop_words_and_only_them(words_index):
    eps, k = 2.0, 4
    plus = mechanisms.create("custext", words_index, eps, set_size=k, stop_words="keep")
    stop = [i for i, w in enumerate(WORDS) if w in custext.STOP_WORDS]
    assert [WORDS[i] for i in stop] == ["the", "on", "a", "and", "to", "i", "this", "what"]
    ids = np.repeat(np.arange(len(WORDS), dtype=np.int32), 300)
    out = plus.perturb(ids, np.random.default_rng(0))
    kept = np.isin(ids, stop)
    assert (out[kept] == ids[kept]).all()
    exact = exact_distribution(words_index.vectors, reference_sets(words_index.vectors, k), eps)
    word = WORDS.index("movie")
    stat, threshold = _chi_square_matches(plus, word, exact[word], seed=3)
    assert stat < threshold
    g = plus.guarantee()
    assert g.extra["stop_words_kept"] == 8 and any("stop words" in item for item in g.not_protected)
    assert "CusText+" in g.statement
    # Without the policy the stop words are perturbed like any word (some of them move).
    plain = mechanisms.create("custext", words_index, eps, set_size=k).perturb(ids, np.random.default_rng(0))
    assert (plain[kept] != ids[kept]).any()


def test_the_stop_word_list_is_nltks_english_list():
    assert len(custext.STOP_WORDS) == 179
    assert {"the", "ourselves", "shouldn't", "wouldn", "ma", "y", "that'll"} <= custext.STOP_WORDS


# ---- end to end ----------------------------------------------------------------------------------
def test_dptext_run_end_to_end_with_custext_plus(tmp_path):
    words = "the cat sat on a mat dog ran to park hello world good bad day night".split()
    (tmp_path / "c.txt").write_text("the cat sat on a mat\nhello world, good day\n", encoding="utf-8")
    vectors = np.random.default_rng(4).normal(size=(len(words), 5)).astype(np.float32)
    dptext.EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    prefix = tmp_path / "o" / "x"
    args = ["run", "--input", str(tmp_path / "c.txt"), "--output", str(prefix), "--index", str(tmp_path / "idx")]
    extra = ["--set-size", "4", "--stop-words", "keep", "--test-seed", "3"]
    assert main([*args, "--mechanism", "custext", "--epsilon", "2", "--runner", "DirectRunner", *extra]) == 0
    report = json.loads((tmp_path / "o" / "x.privacy_report.json").read_text())
    assert report["mechanism"] == "custext" and report["parameters"]["set_size"] == 4
    assert report["guarantee"]["set_size_distribution"] == {"4": 4}
    (shard,) = (tmp_path / "o").glob("x-*-of-*.txt")
    (first,) = [line.split() for line in shard.read_text().splitlines() if len(line.split()) == 6]
    assert first[0] == "the" and first[3] == "on" and first[4] == "a"  # stop words kept in place


_COLLECTED: dict = {}


def _keep(elements, name):
    _COLLECTED[name] = elements


def test_privatize_end_to_end(words_index):
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        private = (
            p
            | beam.Create(["the cat sat on a mat", "i love this movie"])
            | dptext.Privatize(words_index.path, mechanism="custext", epsilon=2.0, set_size=5)
        )
        for label, pcoll in (("documents", private.documents), ("report", private.report)):
            pcoll | f"Collect{label}" >> beam.combiners.ToList() | f"Keep{label}" >> beam.Map(_keep, label)
    assert sorted(len(t.split()) for t in _COLLECTED["documents"]) == [4, 6]
    (report,) = _COLLECTED["report"]
    assert report["mechanism"] == "custext" and report["guarantee"]["set_size"] == 5


# ---- dptext stats / calibrate ----------------------------------------------------------------------
def test_stats_and_calibrate_agree_with_the_exact_unchanged_probability(wide):
    """As for santext (tests/test_santext.py): N_w of every word within 6 binomial standard errors of
    the oracle's P[M(w) = w], and calibrate's epsilon gives an exact median N_w within 0.05 of the target."""
    from dptext.transforms.stats import calibrate, privacy_statistics

    sets = reference_sets(wide.vectors, 7)
    draws = 4000
    (stats,) = privacy_statistics(wide, "custext", [3.0], {"set_size": 7}, sample=None, draws=draws, seed=0)
    p = np.diag(exact_distribution(wide.vectors, sets, 3.0))[stats.words]
    assert (np.abs(stats.unchanged - p) <= 6 * np.sqrt(p * (1 - p) / draws)).all()
    result = calibrate(wide, "custext", 0.5, {"set_size": 7}, sample=40, draws=2000, high=200.0)
    exact_median = np.median(np.diag(exact_distribution(wide.vectors, sets, result["epsilon"])))
    assert abs(exact_median - 0.5) < 0.05, result["epsilon"]
