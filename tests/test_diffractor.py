"""diffractor (1-Diffractor): the lists, the sampler against its exact distribution, broken variants
that must fail, the exact audit of its guarantee, the stored table, and runs end to end."""

from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from scipy.stats import chi2

import dptext
from dptext.pipeline.cli import main
from dptext.transforms import mechanisms
from dptext.transforms.audit import audit_pairs, pairwise_distances, total_variation
from dptext.transforms.errors import ParameterError
from dptext.transforms.index import EmbeddingIndex, TableError
from dptext.transforms.mechanisms import diffractor
from dptext.transforms.mechanisms.diffractor import (
    Diffractor,
    diffractor_distribution,
    farthest_point_starts,
    full_table,
    geometric_steps,
    greedy_path,
    list_distance,
    positions_of,
    small_vocabulary_lists,
)
from dptext.transforms.stats import calibrate, word_statistics
from tests.test_truncated_gumbel import _chi_square_matches

DRAWS = 200_000


@pytest.fixture(scope="module")
def short_table(random_index):
    # 40 words in 3-d with K = 4: the greedy paths often find every table neighbour visited and fall
    # back to the exact search of the unvisited words.
    return random_index(n=40, d=3, neighbours=4, seed=31)


@pytest.fixture(scope="module")
def small(random_index):
    return random_index(n=12, d=3, neighbours=11, seed=7)


def _naive_path(vectors: np.ndarray, start: int) -> list[int]:
    """The greedy nearest-unvisited path by brute force in float64, ties by id."""
    v = np.asarray(vectors, dtype=np.float64)
    path, unvisited = [start], set(range(len(v))) - {start}
    while unvisited:
        cur = path[-1]
        nxt = min(unvisited, key=lambda w: (float(((v[w] - v[cur]) ** 2).sum()), w))
        path.append(nxt)
        unvisited.remove(nxt)
    return path


# ---- the lists -----------------------------------------------------------------------------------
def test_lists_are_the_exact_greedy_paths_whatever_the_table(short_table):
    """With K = 4 most steps past the start need the exact fallback; the path equals the brute-force
    greedy path and the one read from a full table (K = n - 1, no fallback)."""
    v = np.asarray(short_table.vectors)
    full = full_table(pairwise_distances(v))
    for start in farthest_point_starts(v, 3):
        from_short = greedy_path(v, short_table.neighbour_ids, int(start))
        assert from_short.tolist() == _naive_path(v, int(start))
        assert from_short.tolist() == greedy_path(v, full, int(start)).tolist()
    mech = mechanisms.create("diffractor", short_table, 1.0, lists=3)
    assert mech.orders.shape == (3, 40)
    assert all(sorted(row.tolist()) == list(range(40)) for row in mech.orders)  # permutations
    assert (mech.orders[np.arange(3)[:, None], mech.positions] == np.arange(40)).all()  # inverse
    # Broken: a path that jumps to the next unvisited id when the table is exhausted (what the
    # dp-diffractor package does past its 50 nearest) is not the greedy path.
    assert _arbitrary_jump_path(v, short_table.neighbour_ids, int(farthest_point_starts(v, 1)[0])) != _naive_path(
        v, int(farthest_point_starts(v, 1)[0])
    )


def _arbitrary_jump_path(vectors, table, start):
    visited, path, cur = set(), [], start
    for _ in range(len(vectors)):
        path.append(cur)
        visited.add(cur)
        free = [w for w in table[cur, 1:] if w not in visited]
        rest = [w for w in range(len(vectors)) if w not in visited]
        cur = int(free[0]) if free else (rest[0] if rest else cur)
    return path


def test_farthest_point_starts_are_spread_and_deterministic():
    v = np.array([[0.0, 0], [1, 0], [0, 1], [5, 5], [-4, -4]])
    starts = farthest_point_starts(v, 3).tolist()
    assert starts[0] == 3 and starts[1] == 4 and starts == farthest_point_starts(v, 3).tolist()
    assert farthest_point_starts(v[:1].repeat(2, 0), 4).tolist() == [0, 0, 0, 0]  # repeats: nothing farther


def test_the_table_is_stored_once_and_read_by_workers(tmp_path):
    path = tmp_path / "idx"
    vectors = np.random.default_rng(4).normal(size=(30, 3)).astype(np.float32)
    EmbeddingIndex.build([f"w{i}" for i in range(30)], vectors, path, neighbours=5, progress=False)
    worker = EmbeddingIndex.load(path, read_only=True)
    with pytest.raises(TableError, match="diffractor_lists"):
        mechanisms.create("diffractor", worker, 1.0)
    launcher = mechanisms.create("diffractor", EmbeddingIndex.load(path), 1.0)
    again = mechanisms.create("diffractor", EmbeddingIndex.load(path, read_only=True), 2.0)
    assert np.array_equal(launcher.orders, again.orders)
    other = mechanisms.create("diffractor", EmbeddingIndex.load(path), 1.0, lists=2)
    assert np.array_equal(other.orders, launcher.orders[:2])  # the same starts, the same paths


@pytest.mark.parametrize("lists", [0, 33, 2.5, True, "3", None])
def test_bad_lists_are_refused_naming_the_range(small, lists):
    with pytest.raises(ParameterError, match=r"lists must be an integer in \[1, 32\]"):
        mechanisms.create("diffractor", small, 1.0, lists=lists)


# ---- the exact distribution ----------------------------------------------------------------------
def test_the_exact_distribution_is_the_clamped_two_sided_geometric():
    """One list of 5 words in order: rows sum to 1 and match the clamped geometric by hand."""
    eps, a = 0.7, math.exp(-0.7)
    P = diffractor_distribution(np.array([[0, 1, 2, 3, 4]]), eps)
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-14)
    c = (1 - a) / (1 + a)
    assert P[2].tolist() == pytest.approx([a**2 / (1 + a), c * a, c, c * a, a**2 / (1 + a)], rel=1e-12)
    assert P[0, 0] == pytest.approx(1 / (1 + a)) and P[0, 4] == pytest.approx(a**4 / (1 + a))
    two = diffractor_distribution(np.array([[1, 0]]), eps)  # n = 2: both positions are ends
    assert two[1].tolist() == pytest.approx([a / (1 + a), 1 / (1 + a)])
    # Lists permute the words: the mean over lists, each in its own order.
    orders = np.array([[0, 1, 2, 3, 4], [4, 2, 0, 1, 3]])
    mixed = diffractor_distribution(orders, eps)
    pos = positions_of(orders)[1]
    second = np.array([[P[pos[w], pos[y]] for y in range(5)] for w in range(5)])
    assert np.allclose(mixed, 0.5 * (P + second), atol=1e-15)


def test_geometric_steps_have_the_two_sided_geometric_law():
    """2,000,000 steps at eps 0.5 against P(k) = (1-a)/(1+a) a^|k| (chi-square, false alarm 1e-6), cells
    |k| <= 20 and one pooled tail."""
    eps, draws = 0.5, 2_000_000
    a = math.exp(-eps)
    k = geometric_steps(np.random.default_rng(3), eps, draws, 10**6)
    cells = np.arange(-20, 21)
    p = (1 - a) / (1 + a) * a ** np.abs(cells)
    observed = np.append([(k == c).sum() for c in cells], (np.abs(k) > 20).sum())
    expected = np.append(p, 1 - p.sum()) * draws
    stat = ((observed - expected) ** 2 / expected).sum()
    assert stat < chi2.ppf(1 - 1e-6, len(cells))
    # The cap: |k| never exceeds the limit, and a subnormal epsilon steps to the cap itself.
    assert np.abs(geometric_steps(np.random.default_rng(0), 1e-3, 10_000, 7)).max() == 7
    tiny = geometric_steps(np.random.default_rng(0), math.ulp(0.0), 1000, 9)
    assert set(np.abs(tiny).tolist()) <= {0, 9} and (tiny != 0).any()
    assert (geometric_steps(np.random.default_rng(0), 1e300, 1000, 9) == 0).all()


# _chi_square_matches: Pearson statistic of 200,000 draws of one word against its exact row, threshold
# at the 1 - 1e-6 quantile of chi2(df) after pooling cells expected below 5 (tests/test_truncated_gumbel.py).
@pytest.mark.parametrize("epsilon", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("lists", [1, 3])
def test_sampler_matches_the_exact_distribution(short_table, epsilon, lists):
    mech = mechanisms.create("diffractor", short_table, epsilon, lists=lists)
    exact = diffractor_distribution(mech.orders, epsilon)
    ends = [int(mech.orders[0, 0]), int(mech.orders[0, -1])]  # the clamped ends of the first list
    for word in sorted({ends[0], ends[1], 17}):
        stat, threshold = _chi_square_matches(mech, word, exact[word], draws=DRAWS, seed=word)
        assert stat < threshold, (word, stat, threshold)


def _oracle_tv(mech, word, exact_row, draws=DRAWS, seed=0):
    """TV between the empirical distribution of `draws` outputs and the exact row, and its tolerance:
    E[TV] <= 0.5 sum_y sqrt(p_y (1 - p_y) / N) (Jensen), and one draw moves TV by at most 1/N, so by
    McDiarmid TV exceeds its mean by more than sqrt(ln(1/1e-6) / (2N)) with probability below 1e-6."""
    out = mech.perturb(np.full(draws, word, dtype=np.int32), np.random.default_rng(seed))
    empirical = np.bincount(out, minlength=len(exact_row)) / draws
    tolerance = 0.5 * np.sqrt(exact_row * (1 - exact_row) / draws).sum() + math.sqrt(math.log(1e6) / (2 * draws))
    return float(total_variation(empirical, exact_row)), float(tolerance)


def test_oracle_total_variation_is_within_sampling_noise(short_table):
    """The figure the README quotes: TV of 200,000 draws to the exact row, at eps 0.62 (median N_w
    ~0.3), 5 lists."""
    mech = mechanisms.create("diffractor", short_table, 0.62)
    exact = diffractor_distribution(mech.orders, 0.62)
    for word in (0, 17, int(mech.orders[2, -1])):
        tv, tolerance = _oracle_tv(mech, word, exact[word], seed=word)
        assert tv < tolerance, (word, tv, tolerance)


class _Broken(Diffractor):
    """diffractor with one deliberate mistake (the name of which is `flaw`)."""

    flaw = ""

    def _perturb(self, ids, rng):
        n = self.index.n
        which = rng.integers(0, self.lists, len(ids))
        steps = geometric_steps(rng, self.epsilon, len(ids), n)
        if self.flaw == "one-sided":
            steps = np.abs(steps)
        elif self.flaw == "first list only":
            which = np.zeros(len(ids), dtype=np.int64)
        elif self.flaw == "zero mass 1 - a":  # the one-sided geometric's P(0) for the two-sided step
            a = math.exp(-self.epsilon)
            keep = rng.random(len(ids)) < 1 - a
            steps = np.where(keep, 0, np.where(steps == 0, 1, steps))
        target = self.positions[which, ids].astype(np.int64) + steps
        if self.flaw == "wrap around":
            target %= n
        else:
            target = np.clip(target, 0, n - 1)
        return self.orders[which, target]


@pytest.mark.parametrize("flaw", ["one-sided", "first list only", "zero mass 1 - a", "wrap around"])
def test_broken_samplers_fail(short_table, flaw):
    good = mechanisms.create("diffractor", short_table, 1.0, lists=3)
    broken = _Broken(short_table, 1.0, lists=3)
    broken.flaw = flaw
    exact = diffractor_distribution(good.orders, 1.0)
    word = int(good.orders[0, 1])  # next to an end of the first list: clamping and wrapping differ
    stat, threshold = _chi_square_matches(broken, word, exact[word], seed=1)
    assert stat > threshold, (flaw, stat, threshold)
    stat, threshold = _chi_square_matches(good, word, exact[word], seed=1)
    assert stat < threshold


def test_a_batch_of_mixed_words_keeps_each_word_exact(short_table):
    mech = mechanisms.create("diffractor", short_table, 1.5)
    exact = diffractor_distribution(mech.orders, 1.5)
    ids = np.tile(np.array([3, 9, 31], dtype=np.int32), 60_000)
    out = mech.perturb(ids, np.random.default_rng(5))
    for w in (3, 9, 31):
        observed = np.bincount(out[ids == w], minlength=short_table.n)
        expected = exact[w] * 60_000
        keep = expected >= 5
        stat = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum()
        assert stat < chi2.ppf(1 - 1e-6, keep.sum()), (w, stat)  # df <= cells: conservative


# ---- the guarantee and its exact audit -------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [0.1, 0.62, 2.0, 8.0])
@pytest.mark.parametrize("lists", [1, 2, 5])
def test_the_exact_audit_confirms_rate_epsilon_in_list_distance(epsilon, lists):
    """Every log-ratio is at most epsilon x d_V on random 3-d and 20-d vocabularies of 9 to 30 words;
    with one list the bound is attained (a word at an end against its neighbour)."""
    rng = np.random.default_rng(int(100 * epsilon) + lists)
    for n, d in ((9, 3), (30, 3), (20, 20)):
        vectors = rng.normal(size=(n, d))
        orders = small_vocabulary_lists(vectors, lists)
        P = diffractor_distribution(orders, epsilon)
        audit = audit_pairs(P, list_distance(orders), rate=epsilon)
        assert audit["worst_metric_rate"] <= epsilon * (1 + 1e-9), audit["worst_metric_rate"]
        assert audit["max_delta_at_rate_times_distance"] <= 1e-12
        if lists == 1:
            assert audit["worst_metric_rate"] == pytest.approx(epsilon, rel=1e-9)


def test_the_audit_catches_a_wrong_metric():
    """Broken claims must be contradicted: rate epsilon in the *smallest* list distance (instead of the
    largest), and rate epsilon in Euclidean distance (no such rate holds)."""
    vectors = np.random.default_rng(8).normal(size=(30, 3))
    orders = small_vocabulary_lists(vectors, 3)
    P = diffractor_distribution(orders, 1.0)
    pos = positions_of(orders).astype(np.int64)
    smallest = np.abs(pos[:, :, None] - pos[:, None, :]).min(axis=0).astype(float)
    assert audit_pairs(P, smallest, rate=1.0)["worst_metric_rate"] > 1.5
    assert audit_pairs(P, pairwise_distances(vectors), rate=1.0)["worst_metric_rate"] > 1.0


def test_the_guarantee_states_what_the_audit_confirms(short_table):
    mech = mechanisms.create("diffractor", short_table, 0.62, lists=3)
    g = mech.guarantee()
    assert g.kind == "metric-DP" and g.rate == 0.62 and g.basis == "proved"
    assert g.per_token_pure_epsilon == pytest.approx(0.62 * (short_table.n - 1))
    assert "d_V" in g.statement and "list positions" in g.statement
    rows = g.audited["exact_audit"]
    assert [r["n"] for r in rows] == [9, 20, 40]
    assert not any(r["metric_rate_contradicted"] for r in rows)
    assert g.audited["worst_metric_rate_in_d_V"] <= 0.62 * (1 + 1e-9)
    json.dumps(g.as_dict(), allow_nan=False)


def test_epsilon_range_is_the_floats_where_the_per_token_bound_is_finite(small):
    with pytest.raises(ParameterError, match=r"outside the range diffractor supports"):
        mechanisms.create("diffractor", small, 1.7e308)
    mech = mechanisms.create("diffractor", small, 1e307)
    assert math.isfinite(mech.guarantee().per_token_pure_epsilon)
    assert (mech.perturb(np.arange(12, dtype=np.int32), np.random.default_rng(0)) == np.arange(12)).all()


# ---- stats, calibrate, and runs end to end ----------------------------------------------------------
def test_unchanged_probability_and_calibration(short_table):
    """N_w is the exact diagonal (4,000 draws: 5.5 standard errors, a 1e-7 false alarm per word);
    calibrate reaches a median N_w of 0.3 (interior words: tanh(eps / 2) = 0.3 at eps = 0.619)."""
    mech = mechanisms.create("diffractor", short_table, 0.62)
    exact = np.diag(diffractor_distribution(mech.orders, 0.62))
    stats = word_statistics(mech, np.arange(short_table.n), 4000, np.random.default_rng(1))
    se = np.sqrt(exact * (1 - exact) / 4000)
    assert (np.abs(stats.unchanged - exact) <= 5.5 * se + 1e-12).all()
    result = calibrate(short_table, "diffractor", 0.3, {}, low=0.05, high=20.0, sample=None, draws=400)
    assert abs(result["median_unchanged"] - 0.3) <= 0.05 + 3 * result["median_standard_error"]
    assert 0.45 < result["epsilon"] < 0.8


WORDS = "the cat sat on a mat and dog ran to park i love this movie what terrible day".split()


@pytest.fixture(scope="module")
def words_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffractor_words")
    vectors = np.random.default_rng(5).normal(size=(len(WORDS), 5)).astype(np.float32)
    EmbeddingIndex.build(WORDS, vectors, path, neighbours=6, progress=False)
    return path


def test_dptext_run_end_to_end(words_index, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("the cat sat on a mat\nI love this movie zebracorn\n", encoding="utf-8")
    args = ["run", "--input", str(tmp_path / "c.txt"), "--output", str(tmp_path / "o" / "x")]
    args += ["--index", str(words_index), "--runner", "DirectRunner", "--mechanism", "diffractor"]
    assert main(args + ["--epsilon", "0.8", "--lists", "3"]) == 0
    report = json.loads((tmp_path / "o" / "x.privacy_report.json").read_text())
    assert report["mechanism"] == "diffractor" and report["parameters"]["lists"] == 3
    assert report["guarantee"]["kind"] == "metric-DP" and report["guarantee"]["rate"] == 0.8
    assert report["per_document_bound"]["per_token_pure_epsilon"] == pytest.approx(0.8 * (len(WORDS) - 1))
    assert report["counts"]["tokens"] == 11 and report["counts"]["oov"] == 1
    out = [line for p in sorted((tmp_path / "o").glob("x-*")) for line in p.read_text().splitlines()]
    assert len(out) == 2 and all(w in WORDS or w == "<unk>" for line in out for w in line.lower().split())
    assert main(args + ["--epsilon", "0.8", "--lists", "40", "--overwrite"]) == 2
    assert "lists must be an integer in [1, 32]" in capsys.readouterr().err


def test_stats_and_calibrate_commands(words_index, tmp_path, capsys):
    out = tmp_path / "stats"
    args = ["stats", "--index", str(words_index), "--mechanism", "diffractor", "--epsilon", "0.5", "3"]
    assert main(args + ["--out", str(out), "--sample", "0", "--draws", "200", "--param", "lists=2"]) == 0
    data = json.loads((out / "stats.json").read_text())
    assert data["parameters"] == {"lists": 2} and [r["epsilon"] for r in data["rows"]] == [0.5, 3.0]
    medians = [r["unchanged"]["p50"] for r in data["rows"]]
    assert medians[0] < medians[1]  # tanh(0.25) = 0.24 and tanh(1.5) = 0.91 for words inside the lists
    capsys.readouterr()
    assert (
        main(["calibrate", "--index", str(words_index), "--mechanism", "diffractor", "--target-unchanged", "0.3"]) == 0
    )
    assert "diffractor: epsilon" in capsys.readouterr().out


def test_privatize_end_to_end(words_index):
    texts = ["the cat sat on a mat", "what a terrible day"]
    with test_pipeline.TestPipeline() as p:
        private = p | beam.Create(texts) | dptext.Privatize(words_index, mechanism="diffractor", epsilon=1.0)
        lengths = private.documents | beam.Map(lambda t: len(t.split()))
        reports = private.report | beam.Map(lambda r: (r["mechanism"], r["guarantee"]["rate"]))
        assert_that(lengths, equal_to([6, 4]), label="lengths")
        assert_that(reports, equal_to([("diffractor", 1.0)]), label="report")


def test_registered_and_public():
    assert "diffractor" in dptext.mechanisms.NAMES and "diffractor" in mechanisms.NAMES
    assert diffractor.NAME == "diffractor"
