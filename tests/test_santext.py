"""santext and santext_plus (Yue et al. 2021) against their exact distributions, broken variants that
must fail, the exact audit of the guarantees they print, the frequency order they read from the index,
and runs end to end through `dptext run` and dptext.Privatize."""

from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import pytest

import dptext
from dptext.pipeline.cli import main
from dptext.transforms import mechanisms
from dptext.transforms.audit import audit_pairs, pairwise_distances, total_variation
from dptext.transforms.embedding_io import read_embedding
from dptext.transforms.mechanisms.santext import (
    SanText,
    SanTextPlus,
    audit_santext_plus,
    santext_plus_distribution,
    sensitive_count,
)
from dptext.transforms.mechanisms.vocabulary_exponential import (
    capped_exponential_distribution,
    sample_capped_exponential,
)
from tests.test_truncated_gumbel import _chi_square_matches

DRAWS = 200_000


@pytest.fixture(scope="module")
def wide(random_index):
    # 40 words in 3-d with a table of only K = 4: most of the mass lies outside the table, so the
    # sampler's tail envelope and rejection step decide the distribution.
    return random_index(n=40, d=3, neighbours=4, seed=21)


def _dist(index):
    return pairwise_distances(index.vectors)


def _tv_tolerance(row: np.ndarray, draws: int, false_alarm: float = 1e-6) -> float:
    """A bound on the total-variation distance between `draws` samples of a correct sampler and its
    exact row: E|p^_i - p_i| <= sqrt(p_i (1 - p_i) / N), so E[TV] <= sum_i sqrt(p_i (1 - p_i) / N) / 2;
    one draw moves TV by at most 1 / N, so by McDiarmid P[TV > E[TV] + t] <= exp(-2 N t^2), and
    t = sqrt(ln(1 / false_alarm) / (2 N)) keeps the false-alarm rate at 1e-6."""
    return 0.5 * np.sqrt(row * (1 - row) / draws).sum() + math.sqrt(math.log(1 / false_alarm) / (2 * draws))


def _tv(mech, word: int, row: np.ndarray, seed: int) -> float:
    out = mech.perturb(np.full(DRAWS, word, dtype=np.int32), np.random.default_rng(seed))
    return float(total_variation(np.bincount(out, minlength=len(row)) / DRAWS, row))


# ---- santext -----------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [0.8, 3.0])
@pytest.mark.parametrize("word", [0, 17])
def test_santext_matches_the_exponential_mechanism_over_the_vocabulary(wide, epsilon, word):
    """P[M(w) = y] proportional to exp(-eps d(w, y) / 2) over all 40 words (the paper's Eq. for SanText)."""
    mech = mechanisms.create("santext", wide, epsilon)
    exact = capped_exponential_distribution(_dist(wide), epsilon)
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
    assert stat < threshold, (stat, threshold)
    tv = _tv(mech, word, exact[word], seed=100 + word)
    assert tv < _tv_tolerance(exact[word], DRAWS), tv


class _SanTextWithoutHalf(SanText):
    """Broken: weights exp(-eps d) (the exponential mechanism's factor 1/2 dropped)."""

    def _perturb(self, ids, rng):
        return sample_capped_exponential(self.index, ids, rng, 2 * self.epsilon)


def test_santext_without_the_half_fails_the_oracle(wide):
    exact = capped_exponential_distribution(_dist(wide), 0.8)
    stat, threshold = _chi_square_matches(_SanTextWithoutHalf(wide, 0.8), 0, exact[0], seed=1)
    assert stat > threshold


def test_santext_audit_confirms_metric_dp_at_rate_epsilon(wide):
    dist = _dist(wide)
    P = capped_exponential_distribution(dist, 3.0)
    audited = audit_pairs(P, dist, rate=3.0)
    assert audited["worst_metric_rate"] <= 3.0 + 1e-9
    assert audited["max_delta_at_rate_times_distance"] < 1e-12
    g = mechanisms.create("santext", wide, 3.0).guarantee().as_dict()
    assert g["kind"] == "metric-DP" and g["rate"] == 3.0
    assert g["per_token_pure_epsilon"] == pytest.approx(3.0 * wide.dmax)
    assert audited["worst_log_ratio"] <= g["per_token_pure_epsilon"] + 1e-9
    # A claimed rate below the true one is contradicted by the same audit (the audit can fail).
    assert audit_pairs(P, dist, rate=2.0)["worst_metric_rate"] > 2.0


# ---- santext_plus ------------------------------------------------------------------------------
def _plus(index, epsilon, w, p):
    mech = mechanisms.create("santext_plus", index, epsilon, sensitive_fraction=w, replace_probability=p)
    sensitive = np.arange(index.n) >= index.n - sensitive_count(index.n, w)
    return mech, santext_plus_distribution(_dist(index), epsilon, sensitive, p)


@pytest.mark.parametrize("epsilon, w, p", [(1.0, 0.5, 0.3), (3.0, 0.9, 0.3), (2.0, 0.25, 0.8)])
@pytest.mark.parametrize("word", [3, 33])  # 3: non-sensitive (frequent) in every case; 33: sensitive
def test_santext_plus_matches_its_closed_form(wide, epsilon, w, p, word):
    mech, exact = _plus(wide, epsilon, w, p)
    assert mech.sensitive(np.array([3, 33])).tolist() == [False, True]
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
    assert stat < threshold, (stat, threshold)
    tv = _tv(mech, word, exact[word], seed=200 + word)
    assert tv < _tv_tolerance(exact[word], DRAWS), tv


class _FromEveryWord(SanTextPlus):
    """Broken: replacements drawn from the whole vocabulary (santext's outputs), not the sensitive words."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_base = np.zeros(self.index.n)


class _NeverReplaced(SanTextPlus):
    """Broken: the coin p ignored (non-sensitive words always kept)."""

    def _perturb(self, ids, rng):
        out = super()._perturb(ids, rng)
        keep = ~self.sensitive(ids)
        out[keep] = ids[keep]
        return out


class _FrequentAreSensitive(SanTextPlus):
    """Broken: the most frequent words taken as sensitive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_base = self.log_base[::-1].copy()
        self.first_sensitive = -1  # (only used by sensitive(): every word now replaced)


class _TableMissesTheNearest(SanTextPlus):
    """Broken: the non-sensitive words' table without their nearest sensitive word (it falls outside the
    table, below the envelope's bound)."""

    def _frequent_view(self):
        view = super()._frequent_view()
        ids, dist = np.asarray(view.neighbour_ids)[:, 1:], np.asarray(view.neighbour_distances)[:, 1:]
        return type(view)(self.index, ids, dist)


@pytest.mark.parametrize(
    "broken, word",
    [(_FromEveryWord, 33), (_NeverReplaced, 3), (_FrequentAreSensitive, 33), (_TableMissesTheNearest, 3)],
)
def test_broken_santext_plus_variants_fail_the_oracle(wide, broken, word):
    _, exact = _plus(wide, 1.0, 0.5, 0.3)
    mech = broken(wide, 1.0, sensitive_fraction=0.5, replace_probability=0.3)
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=7)
    assert stat > threshold


@pytest.mark.parametrize("neighbours", [1, 4])
def test_santext_plus_short_sensitive_tables_stay_exact(random_index, monkeypatch, neighbours):
    """Tables of 1 and 4 nearest sensitive words (64 in use): most of a frequent word's mass lies beyond
    them, so the tail and its rejection step decide; the table itself is the exact nearest-sensitive list."""
    from dptext.transforms.mechanisms import santext

    monkeypatch.setattr(santext, "SENSITIVE_NEIGHBOURS", neighbours)
    index = random_index(n=40, d=3, neighbours=4, seed=23)  # a fresh index: tables are stored in it
    mech, exact = _plus(index, 1.5, 0.5, 0.5)
    dist = _dist(index)
    view = mech._frequent_view()
    for w in range(20):
        order = 20 + np.lexsort((np.arange(20), dist[w, 20:]))
        assert np.asarray(view.neighbour_ids)[w].tolist() == order[:neighbours].tolist()
        np.testing.assert_allclose(np.asarray(view.neighbour_distances)[w], dist[w, order[:neighbours]], rtol=1e-9)
    for word in (3, 12):
        stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
        assert stat < threshold, (word, stat, threshold)


def test_santext_plus_mixed_batch_keeps_each_word_exact(wide):
    """Non-sensitive words 3, 5, 11 (the exact-row path, several distinct words per block) and sensitive
    word 33 (the vocabulary sampler) interleaved in one batch: each follows its own row (chi-square at
    the 1 - 1e-6 quantile, df <= cells: conservative)."""
    from scipy.stats import chi2

    mech, exact = _plus(wide, 3.0, 0.5, 0.6)
    ids = np.tile(np.array([3, 33, 5, 11], dtype=np.int32), 50_000)
    out = mech.perturb(ids, np.random.default_rng(9))
    for w in (3, 33, 5, 11):
        observed = np.bincount(out[ids == w], minlength=wide.n)
        expected = exact[w] * 50_000
        keep = expected >= 5
        assert observed[~keep & (exact[w] == 0)].sum() == 0, w
        stat = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum()
        assert stat < chi2.ppf(1 - 1e-6, keep.sum()), (w, stat)


def test_santext_plus_audit_confirms_its_statement(wide):
    """On the whole 40-word vocabulary, exactly: sensitive pairs are metric DP at rate eps; over sanitized
    outputs every pair is within eps d(w, w') + ln(1/p), and that extra ln(1/p) is needed (the audit finds
    a pair above eps d); a kept non-sensitive word is an infinite log-ratio."""
    eps, p = 2.0, 0.3
    dist = _dist(wide)
    mech, _ = _plus(wide, eps, 0.5, p)
    fig = audit_santext_plus(dist, eps, mech.sensitive(np.arange(wide.n)), p)
    assert fig["sensitive"] == 20
    assert fig["worst_metric_rate_between_sensitive_words"] <= eps + 1e-9
    assert 0 < fig["worst_excess_over_epsilon_distance_on_sanitized_outputs"] <= -math.log(p) + 1e-9
    assert fig["worst_log_ratio_any_output"] == math.inf
    g = mech.guarantee()
    assert g.per_token_pure_epsilon is None and g.worst_case_log_ratio == math.inf and g.rate is None
    assert "ln(1/p) = 1.204" in g.statement and "not protected" in g.statement
    for p_other in (0.05, 0.9):  # the bound at other coins, exactly (at 0.05 the 1/p factor is needed)
        fig = audit_santext_plus(dist, eps, mech.sensitive(np.arange(wide.n)), p_other)
        excess = fig["worst_excess_over_epsilon_distance_on_sanitized_outputs"]
        assert excess <= -math.log(p_other) + 1e-9 and (excess > 0 or p_other > 0.5)
    json.dumps(g.as_dict(), allow_nan=False)


@pytest.mark.parametrize("w, p", [(1.0, 0.3), (0.5, 1.0)])
def test_santext_plus_that_replaces_every_word_is_metric_dp(wide, w, p):
    mech, exact = _plus(wide, 2.0, w, p)
    audited = audit_pairs(exact, _dist(wide), rate=2.0)
    assert audited["worst_metric_rate"] <= 2.0 + 1e-9
    g = mech.guarantee()
    assert g.kind == "metric-DP" and g.per_token_pure_epsilon == pytest.approx(2.0 * wide.dmax)
    assert audited["worst_log_ratio"] <= g.per_token_pure_epsilon + 1e-9


@pytest.mark.parametrize(
    "params, named",
    [
        ({"sensitive_fraction": 0.0}, "sensitive_fraction"),
        ({"sensitive_fraction": 1.5}, "sensitive_fraction"),
        ({"sensitive_fraction": 0.01}, "sensitive_fraction"),  # floor(0.01 x 40) = 0 words
        ({"replace_probability": -0.1}, "replace_probability"),
        ({"replace_probability": 1.01}, "replace_probability"),
        ({"replace_probability": "high"}, "replace_probability"),
    ],
)
def test_santext_plus_bad_parameters_name_what_is_valid(wide, params, named):
    with pytest.raises(ValueError, match=named) as err:
        mechanisms.create("santext_plus", wide, 1.0, **params)
    assert "must" in str(err.value)


def test_sensitive_count_is_the_floor_without_rounding_surprises():
    assert sensitive_count(100, 0.29) == 29 and sensitive_count(40, 0.5) == 20 and sensitive_count(7, 1.0) == 7
    assert sensitive_count(40, 0.01) == 0


def test_the_sensitive_words_are_the_last_of_the_embedding_files_order(tmp_path):
    """`dptext build-index` keeps the file's word order (GloVe writes the most frequent first), and
    santext_plus's sensitive words are the last floor(w n) of it."""
    words = [f"w{i}" for i in range(12)][::-1]  # a file order that is not the sorted order
    vectors = np.random.default_rng(2).normal(size=(12, 4))
    (tmp_path / "e.txt").write_text(
        "".join(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(words, vectors)), encoding="utf-8"
    )
    assert read_embedding(tmp_path / "e.txt")[0] == words
    args = ["build-index", "--embedding", str(tmp_path / "e.txt"), "--out", str(tmp_path / "idx")]
    assert main([*args, "--neighbours", "4"]) == 0
    index = dptext.EmbeddingIndex.load(tmp_path / "idx")
    assert index.vocabulary == words
    mech = mechanisms.create("santext_plus", index, 1.0, sensitive_fraction=0.25)
    assert [w for w, s in zip(words, mech.sensitive(np.arange(12))) if s] == words[-3:]


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, extra",
    [("santext", []), ("santext_plus", ["--sensitive-fraction", "0.5", "--replace-probability", "0.2"])],
)
def test_dptext_run_end_to_end(tmp_path, name, extra):
    words = "the cat sat on a mat dog ran to park hello world good bad day night".split()
    (tmp_path / "c.txt").write_text("the cat sat on a mat\nhello world, good day\n", encoding="utf-8")
    vectors = np.random.default_rng(4).normal(size=(len(words), 5)).astype(np.float32)
    dptext.EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    prefix = tmp_path / "o" / "x"
    args = ["run", "--input", str(tmp_path / "c.txt"), "--output", str(prefix), "--index", str(tmp_path / "idx")]
    assert main([*args, "--mechanism", name, "--epsilon", "2", "--runner", "DirectRunner", *extra]) == 0
    report = json.loads((tmp_path / "o" / "x.privacy_report.json").read_text())
    assert report["mechanism"] == name and report["counts"]["tokens"] == 10 and report["counts"]["perturbed"] == 10
    if name == "santext":
        assert report["per_document_bound"]["per_token_pure_epsilon"] == pytest.approx(2 * report["index"]["dmax"])
    else:
        assert report["parameters"]["sensitive_words"] == 8 and report["parameters"]["replace_probability"] == 0.2
        assert report["per_document_bound"]["per_token_pure_epsilon"] is None
    (shard,) = (tmp_path / "o").glob("x-*-of-*.txt")
    outputs = [line.split() for line in shard.read_text().splitlines()]
    assert sorted(len(o) for o in outputs) == [4, 6]  # one output word per word, punctuation in place


_COLLECTED: dict = {}


def _keep(elements, name):
    _COLLECTED[name] = elements


@pytest.mark.parametrize("name, params", [("santext", {}), ("santext_plus", {"replace_probability": 0.5})])
def test_privatize_end_to_end(tmp_path, name, params):
    words = "the cat sat on a mat and dog ran".split()
    vectors = np.random.default_rng(5).normal(size=(len(words), 5)).astype(np.float32)
    dptext.EmbeddingIndex.build(words, vectors, tmp_path, neighbours=4, progress=False)
    _COLLECTED.clear()
    with beam.Pipeline("DirectRunner") as p:
        private = (
            p
            | beam.Create(["the cat sat on a mat", "dog ran"])
            | dptext.Privatize(tmp_path, mechanism=name, epsilon=2.0, **params)
        )
        for label, pcoll in (("documents", private.documents), ("report", private.report)):
            pcoll | f"Collect{label}" >> beam.combiners.ToList() | f"Keep{label}" >> beam.Map(_keep, label)
    assert sorted(len(t.split()) for t in _COLLECTED["documents"]) == [2, 6]
    assert all(w in words for t in _COLLECTED["documents"] for w in t.split())
    (report,) = _COLLECTED["report"]
    assert report["mechanism"] == name and report["guarantee"]["mechanism"] == name


# ---- dptext stats / calibrate ----------------------------------------------------------------------
@pytest.mark.parametrize("name, params", [("santext", {}), ("santext_plus", {"sensitive_fraction": 0.5})])
def test_stats_and_calibrate_agree_with_the_exact_unchanged_probability(wide, name, params):
    """`dptext stats`' N_w against the oracle's P[M(w) = w] for every word (6 binomial standard errors
    each: a false alarm below 40 x 2e-9), and `dptext calibrate`'s epsilon against the exact median N_w
    (bisection to 1% in epsilon plus the median's Monte Carlo error, well inside 0.05)."""
    from dptext.transforms.stats import calibrate, privacy_statistics

    def exact(eps):
        if name == "santext":
            return np.diag(capped_exponential_distribution(_dist(wide), eps))
        return np.diag(_plus(wide, eps, 0.5, 0.3)[1])

    draws = 4000
    (stats,) = privacy_statistics(wide, name, [2.0], params, sample=None, draws=draws, seed=0)
    p = exact(2.0)[stats.words]
    assert (np.abs(stats.unchanged - p) <= 6 * np.sqrt(p * (1 - p) / draws) + 1e-12).all()
    result = calibrate(wide, name, 0.5, params, sample=40, draws=2000, high=200.0)
    assert abs(np.median(exact(result["epsilon"])) - 0.5) < 0.05, result["epsilon"]
