"""benchmarks.utility: the fixed stratified split, the interval math, the embedding features and the
round trip of texts through `dptext run` in record order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmarks.utility import (
    Cache,
    make_split,
    mean_embeddings,
    merged_results,
    privatize,
    stratified_subset,
    t_interval,
    welch_interval,
)
from tests.conftest import build_random_index

pytest.importorskip("sklearn")


def labels_of(counts: dict[str, int], seed: int = 1) -> np.ndarray:
    labels = np.array([c for c, k in counts.items() for _ in range(k)])
    return np.random.default_rng(seed).permutation(labels)


def test_split_is_stratified_disjoint_and_fixed():
    labels = labels_of({"negative": 530, "neutral": 410, "positive": 160})
    texts = [f"t{i}" for i in range(len(labels))]
    split = make_split(texts, labels, 0, train_size=300, test_size=100)
    again = make_split(texts, labels, 0, train_size=300, test_size=100)
    assert np.array_equal(split.train, again.train) and np.array_equal(split.test, again.test)
    assert len(split.train) == 300 and len(split.test) == 100 and len(split.train_all) == 880
    assert not set(split.train_all) & set(split.test) and set(split.train) <= set(split.train_all)
    # Stratified: each class's count in a subset of size m is its share of the whole times m,
    # up to rounding (scikit-learn allocates the remainders, at most one per class).
    for ids, size in ((split.train, 300), (split.test, 100), (split.train_all, 880)):
        for cls, count in (("negative", 530), ("neutral", 410), ("positive", 160)):
            assert abs((labels[ids] == cls).sum() - count * size / len(labels)) <= 1
    # A different seed gives a different subset (the seed is what fixes it).
    assert not np.array_equal(stratified_subset(split.train_all, labels, 300, seed=7), split.train)
    # 0 or an oversized request keeps everything.
    assert np.array_equal(stratified_subset(split.train_all, labels, 0), np.sort(split.train_all))


def test_t_interval_matches_scipy():
    x = np.array([0.61, 0.64, 0.58, 0.66, 0.63])
    got = t_interval(x)
    expected = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    assert got["mean"] == pytest.approx(x.mean())
    assert (got["low"], got["high"]) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert t_interval([0.5])["low"] is None


def test_welch_interval_matches_scipy():
    a = np.array([0.61, 0.64, 0.58, 0.66, 0.63])
    b = np.array([0.52, 0.60, 0.49, 0.55, 0.58, 0.51])
    got = welch_interval(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["difference"] == pytest.approx(a.mean() - b.mean())
    assert (got["low"], got["high"]) == pytest.approx((expected.low, expected.high), rel=1e-12)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("utility_index")
    return path, build_random_index(path, n=60, d=8, neighbours=8, seed=3)


def test_mean_embeddings_looks_words_up_as_the_pipeline_does(tiny_index):
    _, index = tiny_index
    vectors = np.asarray(index.vectors, dtype=np.float64)
    got = mean_embeddings(["w1 w2, W3!", "nothing known", "w5 zz w5"], index)
    # "W3" is found lower-cased; unknown words do not count in the mean; a text with none is zero.
    assert got[0] == pytest.approx((vectors[1] + vectors[2] + vectors[3]) / 3, rel=1e-5)
    assert np.all(got[1] == 0)
    assert got[2] == pytest.approx(vectors[5], rel=1e-5)


def test_privatize_returns_every_run_in_record_order(tiny_index, tmp_path):
    path, index = tiny_index
    rng = np.random.default_rng(5)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, index.n, rng.integers(1, 6))) for _ in range(40)]
    texts[7] = "w1 unknown w2"
    # Noise of norm ~ d / eps = 8e-6, far below the smallest distance between words: every word
    # comes out as itself, so each output must equal its own input (OOV words -> the placeholder).
    runs, figures = privatize(
        texts, "multivariate_laplace", 1e6, 3, str(path), tmp_path / "job", None, ["--runner", "DirectRunner"]
    )
    expected = [t.replace("unknown", "<unk>") for t in texts]
    assert runs == [expected] * 3
    assert figures["fraction_changed"] == 0 and figures["oov"] == 3
    assert figures["randomness"].startswith("OS entropy")


def test_cache_is_saved_into_the_results_json_and_read_back(tmp_path):
    path = tmp_path / "utility.json"
    path.write_text('{"rows": [1, 2], "cache": []}')
    key = {"what": "calibration", "mechanism": "multivariate_laplace", "target": 0.28, "sample": 300}
    cache = Cache(path)
    assert cache.get(key) is None
    cache.put(key, {"epsilon": 10.1})
    cache.put(key, {"epsilon": 10.2})  # replaces, does not append
    cache.save(path)
    again = Cache(path)
    assert again.get(key) == {"epsilon": 10.2} and len(again.entries) == 1
    assert again.get({**key, "sample": 100}) is None
    assert '"rows": [' in path.read_text()  # the rest of the results file is kept


def _row(mechanism, grid, accuracy):
    runs = [{"accuracy": accuracy + 0.01 * i, "macro_f1": accuracy} for i in range(3)]
    per_run = {m: {"test_clean": runs, "test_private": runs} for m in ("tfidf", "embeddings")}
    return {
        "kind": "matched",
        "mechanism": mechanism,
        "grid_epsilon": grid,
        "epsilon": 1.0,
        "median_nw": 0.28,
        "per_run": per_run,
    }


def test_add_merges_new_mechanisms_and_keeps_every_other_row():
    """--add: the added mechanism's rows and calibrations replace its earlier ones; the baseline, the
    other mechanisms and the ceiling rows stay as measured; gaps are recomputed with the new rows."""
    existing = {
        "config": {"mechanisms": ["truncated_gumbel", "tem", "diffractor"]},
        "points": [{"epsilon": 36.0, "matched": {"tem": {"epsilon": 2.2}, "diffractor": {"epsilon": 9.9}}}],
        "rows": [
            {"kind": "ceiling", "mechanism": "non-private"},
            _row("truncated_gumbel", 36.0, 0.60),
            _row("tem", 36.0, 0.58),
            _row("diffractor", 36.0, 0.10),
        ],
    }
    added = {
        "date": "d",
        "command": "c",
        "machine": {},
        "versions": {},
        "seconds": 1.0,
        "cache": ["new"],
        "points": [{"epsilon": 36.0, "matched": {"diffractor": {"epsilon": 0.58}}}],
        "rows": [{"kind": "ceiling", "mechanism": "non-private", "again": True}, _row("diffractor", 36.0, 0.62)],
    }
    merged = merged_results(existing, added, ["diffractor"])
    kinds = [(r["kind"], r["mechanism"]) for r in merged["rows"]]
    assert kinds.count(("ceiling", "non-private")) == 1 and "again" not in merged["rows"][0]
    assert [
        r["per_run"]["tfidf"]["test_clean"][0]["accuracy"] for r in merged["rows"] if r["mechanism"] == "diffractor"
    ] == [0.62]
    assert merged["points"][0]["matched"] == {"tem": {"epsilon": 2.2}, "diffractor": {"epsilon": 0.58}}
    assert {g["other"] for g in merged["gaps"]} == {"tem", "diffractor"} and merged["cache"] == ["new"]
    gap = next(g for g in merged["gaps"] if g["other"] == "diffractor" and g["model"] == "tfidf")
    assert gap["accuracy"]["difference"] == pytest.approx(-0.02)
    assert merged["additions"][0]["mechanisms"] == ["diffractor"]
