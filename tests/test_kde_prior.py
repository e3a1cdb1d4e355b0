"""kde_prior: the KDE prior table, the exact sampler and the Metropolis-Hastings sampler against
their exact distributions, broken variants, and the audit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, multivariate_normal

from dptext.transforms import kde
from dptext.transforms.audit import audit_pairs, json_safe, pairwise_distances, total_variation
from dptext.transforms.index import EmbeddingIndex, TableError
from dptext.transforms.mechanisms.kde_prior import (
    KDEPrior,
    audit_kde_mh_index,
    kde_mh_distribution,
    kde_mh_tv_profile,
    mh_chain_distributions,
    mutual_neighbours,
)
from dptext.transforms.mechanisms.vocabulary_exponential import capped_exponential_distribution
from tests.test_truncated_gumbel import _chi_square_matches

EPS = 2.0
DRAWS = 200_000


@pytest.fixture(scope="module")
def graph(random_index):
    # 30 words in 3-d, K = 5: the mutual 5-NN graph is connected and 30% of the K-NN edges are
    # one-way, so the Hastings correction matters; ln pi varies by 1.3 (a prior with an effect).
    return random_index(n=30, d=3, neighbours=5, seed=4)


@pytest.fixture(scope="module")
def stuck(random_index):
    # Same shape, seed 0: two words have no mutual neighbour and the mutual graph has 3 components.
    return random_index(n=30, d=3, neighbours=5, seed=0)


# ---- the KDE prior ----------------------------------------------------------------------------
def _brute_force_log_kde(x: np.ndarray, factor_dimension: int | None = None) -> np.ndarray:
    """ln (1/n) sum_j N(x_i - x_j; 0, Cov n^(-2/(d+4))), every pair in float64, straight from the definition."""
    n, d = x.shape
    r = factor_dimension or d
    H = np.cov(x, rowvar=False) * n ** (-2.0 / (r + 4))
    dens = multivariate_normal(np.zeros(d), H)
    return np.array([logsumexp(dens.logpdf(x[i] - x)) for i in range(n)]) - math.log(n)


@pytest.mark.parametrize("n, d, seed", [(40, 3, 1), (60, 8, 2), (50, 30, 3)])
def test_kde_log_prior_matches_brute_force_and_scipy(n, d, seed):
    # d = 30 is self-dominated (S_y ~ 1e-10): only the pairwise path runs; d = 3 keeps most pairs.
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x64 = x.astype(np.float64)
    ours = kde.kde_log_density(x)
    assert np.abs(ours - _brute_force_log_kde(x64)).max() < 1e-10
    assert np.abs(ours - gaussian_kde(x64.T).logpdf(x64.T)).max() < 1e-10


@pytest.mark.parametrize("dense_fraction", [0.0, 2.0])
def test_dense_and_pairwise_block_paths_agree(dense_fraction):
    x = np.random.default_rng(5).normal(size=(70, 4)).astype(np.float32)
    x[7] = x[3]  # a duplicated vector: a kernel term of exactly 1
    ours = kde.kde_log_density(x, dense_fraction=dense_fraction)
    assert np.abs(ours - _brute_force_log_kde(x.astype(np.float64))).max() < 1e-10


def test_singular_covariance_uses_the_data_span():
    # Points on a plane in 3-d: the estimate is the 2-d KDE of their coordinates in that plane
    # (an orthonormal basis keeps Lebesgue measure), with Scott's factor for rank 2.
    rng = np.random.default_rng(6)
    coords = rng.normal(size=(40, 2))
    basis = np.linalg.qr(rng.normal(size=(3, 2)))[0]  # orthonormal columns
    x = (coords @ basis.T + np.array([1.0, -2.0, 0.5])).astype(np.float32)
    kernel = kde.scott_kernel(x)
    assert kernel.rank == 2 and kernel.factor == pytest.approx(40 ** (-1 / 6))
    planar = (x.astype(np.float64) - x.astype(np.float64).mean(0)) @ basis
    assert np.abs(kde.kde_log_density(x) - gaussian_kde(planar.T).logpdf(planar.T)).max() < 1e-8
    # More dimensions than words: rank n - 1, still the brute force in the span.
    wide = rng.normal(size=(12, 20)).astype(np.float32)
    assert kde.scott_kernel(wide).rank == 11
    centred = wide.astype(np.float64) - wide.astype(np.float64).mean(0)
    span = np.linalg.svd(centred, full_matrices=False)[2][:11].T
    assert np.abs(kde.kde_log_density(wide) - _brute_force_log_kde(centred @ span)).max() < 1e-8


def test_identical_vectors_and_bad_scales_are_errors():
    with pytest.raises(ValueError, match="no covariance"):
        kde.kde_log_density(np.ones((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="bandwidth_scale must be"):
        kde.scott_kernel(np.eye(3, dtype=np.float32), 0.0)


def test_prior_table_is_computed_once_and_cached_in_the_index(tmp_path, monkeypatch):
    from tests.conftest import build_random_index

    index = build_random_index(tmp_path, 25, 3, 4, seed=8)
    calls = []
    real = kde.kde_log_density
    monkeypatch.setattr(kde, "kde_log_density", lambda v, s=1.0: calls.append(s) or real(v, s))
    first = np.array(kde.kde_log_prior(index))
    assert calls == [1.0]
    again = EmbeddingIndex.load(tmp_path)  # a new process: read from disk
    assert np.array_equal(np.array(kde.kde_log_prior(again)), first) and calls == [1.0]
    assert np.abs(first - real(index.vectors)).max() == 0
    entry = next(e for e in again.manifest["tables"].values() if e["name"] == kde.TABLE)
    assert entry["params"]["bandwidth_rule"].startswith("scott") and entry["params"]["bandwidth_scale"] == 1.0
    wider = np.array(kde.kde_log_prior(again, 2.0))  # another bandwidth: another table
    assert calls == [1.0, 2.0] and np.array_equal(wider, real(index.vectors, 2.0)) and not np.allclose(wider, first)


def test_a_worker_reads_the_launchers_tables_and_never_computes_one(tmp_path, monkeypatch):
    """Workers load the index read-only: the KDE prior (O(n^2 d)) and the MH sampler's mutual graph
    come from the launcher; a missing one is an error naming it, in the order the mechanism needs them."""
    from tests.conftest import build_random_index

    monkeypatch.setenv("DPTEXT_INDEX_CACHE", str(tmp_path / "cache"))
    build_random_index(tmp_path / "idx", 25, 3, 4, seed=8)
    calls = []
    real = kde.kde_log_density
    monkeypatch.setattr(kde, "kde_log_density", lambda v, s=1.0: calls.append(s) or real(v, s))

    def worker():
        return KDEPrior(EmbeddingIndex.load(tmp_path / "idx", read_only=True), 1.0, sampler="mh", bandwidth_scale=2.0)

    with pytest.raises(
        TableError,
        match="the index has no table 'kde_log_prior-[0-9a-f]{10}' "
        r"\(kde_log_prior, .*\"bandwidth_scale\": 2.0",
    ):
        worker()
    KDEPrior(EmbeddingIndex.load(tmp_path / "idx"), 1.0, bandwidth_scale=2.0)  # a launcher, exact sampler
    with pytest.raises(TableError, match="the index has no table 'knn_mutual' \\(knn_mutual\\)"):
        worker()
    launcher = KDEPrior(EmbeddingIndex.load(tmp_path / "idx"), 1.0, sampler="mh", bandwidth_scale=2.0)
    assert calls == [2.0]
    loaded = worker()
    assert calls == [2.0] and np.array_equal(loaded.log_pi, launcher.log_pi)
    assert np.array_equal(loaded._mutual, launcher._mutual)


# ---- the exact sampler ------------------------------------------------------------------------
class PriorExponentIgnored(KDEPrior):
    """Broken: pi^1 whatever alpha is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_base = self.log_base / self.p.alpha


class EpsilonNotHalved(KDEPrior):
    """Broken: exp(-eps d) instead of exp(-eps d / 2)."""

    def __init__(self, index, epsilon, **kwargs):
        super().__init__(index, 2 * epsilon, **kwargs)


@pytest.mark.parametrize("word", [0, 11, 23])
def test_exact_sampler_matches_the_closed_form(graph, word):
    # _chi_square_matches: Pearson statistic of 200,000 draws against the exact row, threshold at
    # the 1 - 1e-6 quantile of chi2(df), df = cells - 1 after pooling cells expected below 5
    # (reasoning in tests/test_truncated_gumbel.py). alpha = 2 so that the prior matters.
    mech = KDEPrior(graph, EPS, alpha=2.0)
    exact = capped_exponential_distribution(pairwise_distances(graph.vectors), EPS, mech.log_base)
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
    assert stat < threshold


@pytest.mark.parametrize("broken", [PriorExponentIgnored, EpsilonNotHalved])
def test_broken_exact_samplers_fail(graph, broken):
    good = KDEPrior(graph, EPS, alpha=2.0)
    exact = capped_exponential_distribution(pairwise_distances(graph.vectors), EPS, good.log_base)
    stat, threshold = _chi_square_matches(broken(graph, EPS, alpha=2.0), 11, exact[11], seed=11)
    assert stat > threshold


def test_alpha_zero_is_the_plain_exponential_mechanism(graph):
    assert not KDEPrior(graph, EPS, alpha=0.0).log_base.any()


# ---- the Metropolis-Hastings sampler --------------------------------------------------------
class NoHastingsCorrection(KDEPrior):
    """Broken: accepts with min(1, p(y)/p(x)) as if the K-NN graph were symmetric."""

    def reverse_possible(self, current, column):
        return np.ones(len(current), dtype=bool)


class DistanceSquared(KDEPrior):
    """Broken: the target uses d(w, y)^2."""

    def log_target(self, source, candidates):
        diff = self.index.vectors[candidates] - source
        return self.log_base[candidates] - 0.5 * self.epsilon * np.einsum("ij,ij->i", diff, diff)


def _one_way_word(index) -> int:
    """The word with the most one-way K-NN edges: where the Hastings correction matters most."""
    return int(np.argmin(mutual_neighbours(index.neighbour_ids).sum(axis=1)))


def _chain_row(mech, word: int, steps: int) -> np.ndarray:
    dist = mech.index.distances_from(word)
    return mh_chain_distributions(mech.log_base - 0.5 * mech.epsilon * dist, mech.index.neighbour_ids, word, [steps])[0]


def test_mutual_neighbours_matches_its_definition(graph):
    table = np.asarray(graph.neighbour_ids)
    expected = [[x in table[y, 1:] for y in table[x, 1:]] for x in range(graph.n)]
    assert np.array_equal(mutual_neighbours(table, rows=7), np.array(expected))


@pytest.mark.parametrize("steps", [1, 4, 12])
def test_mh_sampler_matches_the_exact_chain_distribution(graph, steps):
    # The exact L-step distribution (transition matrix power) is the oracle, so the chi-square test
    # (1e-6 false alarm; see _chi_square_matches) checks the sampler's steps, not only its limit.
    word = _one_way_word(graph)
    mech = KDEPrior(graph, EPS, alpha=2.0, sampler="mh", chain_length=steps)
    stat, threshold = _chi_square_matches(mech, word, _chain_row(mech, word, steps), seed=steps)
    assert stat < threshold


@pytest.mark.parametrize("broken", [NoHastingsCorrection, DistanceSquared])
def test_broken_mh_samplers_fail(graph, broken):
    word = _one_way_word(graph)
    good = KDEPrior(graph, EPS, alpha=2.0, sampler="mh", chain_length=12)
    stat, threshold = _chi_square_matches(
        broken(graph, EPS, alpha=2.0, sampler="mh", chain_length=12), word, _chain_row(good, word, 12), seed=12
    )
    assert stat > threshold


def test_tv_to_the_exact_distribution_falls_with_chain_length(graph):
    # The target of w is stationary for P_w, and a Markov kernel never increases the TV to its
    # stationary distribution, so each start's TV is non-increasing; the mutual graph is
    # connected here, so the chain converges to the target.
    mech = KDEPrior(graph, EPS, sampler="mh")
    lengths = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    rows = kde_mh_tv_profile(pairwise_distances(graph.vectors), EPS, mech.log_base, graph.neighbour_ids, lengths)
    tv_max = [r["tv_max"] for r in rows]
    assert all(b <= a + 1e-12 for a, b in zip(tv_max, tv_max[1:]))
    assert tv_max[0] > 0.5 and tv_max[-1] < 1e-4


def test_a_word_without_mutual_neighbour_never_moves(stuck):
    # Every proposal from it is one-way, so the Hastings ratio is 0: its chain is a point mass at
    # any length, so its TV to the exact distribution is 1 - P[M(w)=w] for ever.
    mech = KDEPrior(stuck, EPS, sampler="mh", chain_length=50)
    lonely = np.flatnonzero(~mutual_neighbours(stuck.neighbour_ids).any(axis=1))
    assert lonely.size == 2
    exact = capped_exponential_distribution(pairwise_distances(stuck.vectors), EPS, mech.log_base)
    for w in lonely:
        chain = mh_chain_distributions(
            mech.log_base - 0.5 * EPS * stuck.distances_from(w), stuck.neighbour_ids, w, [1, 1000]
        )
        assert (chain == np.eye(stuck.n)[w]).all()
        assert total_variation(chain, exact[w]) == pytest.approx([1 - exact[w, w]] * 2, abs=1e-12)
    assert (mech.perturb(np.repeat(lonely, 1000), np.random.default_rng(0)) == np.repeat(lonely, 1000)).all()


# ---- the audit ------------------------------------------------------------------------------
def test_audit_confirms_metric_rate_for_the_exact_distribution(graph):
    dist = pairwise_distances(graph.vectors)
    for alpha in (0.0, 1.0, 3.0):
        base = KDEPrior(graph, EPS, alpha=alpha).log_base
        result = audit_pairs(capped_exponential_distribution(dist, EPS, base), dist, rate=EPS)
        assert result["worst_metric_rate"] <= EPS * (1 + 1e-9)
        assert result["max_delta_at_rate_times_distance"] < 1e-12
        # Broken: without the 1/2 in the exponent the rate bound fails.
        broken = audit_pairs(capped_exponential_distribution(dist, 2 * EPS, base), dist, rate=EPS)
        assert broken["worst_metric_rate"] > EPS


@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured: the MH sampler's exact 16-step distribution on a 30-word vocabulary (connected mutual "
        "5-NN graph) has a worst metric rate of 2.55 > eps = 2 (worst log-ratio 9.6); after 256 steps 1.684"
    ),
)
def test_mh_sampler_metric_rate_after_16_steps(graph):
    dist = pairwise_distances(graph.vectors)
    base = KDEPrior(graph, EPS, sampler="mh").log_base
    result = audit_pairs(kde_mh_distribution(dist, EPS, base, graph.neighbour_ids, 16), dist, rate=EPS)
    assert result["worst_metric_rate"] <= EPS


@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured: with two words that have no mutual neighbour (30 words, 5-NN, 3 mutual components) "
        "the MH sampler's outputs of some pairs are disjoint at any chain length: worst log-ratio inf"
    ),
)
def test_mh_sampler_metric_rate_with_unreachable_words(stuck):
    dist = pairwise_distances(stuck.vectors)
    base = KDEPrior(stuck, EPS, sampler="mh").log_base
    result = audit_pairs(kde_mh_distribution(dist, EPS, base, stuck.neighbour_ids, 1000), dist, rate=EPS)
    assert result["worst_metric_rate"] <= EPS


def test_index_audit_agrees_with_the_dense_profile(stuck):
    # Every word as a start: the sparse audit must reproduce the dense TV profile exactly.
    mech = KDEPrior(stuck, EPS, sampler="mh", chain_length=40)
    audited = audit_kde_mh_index(stuck, EPS, mech.log_base, 40, mech._mutual, starts=stuck.n)
    dense = kde_mh_tv_profile(
        pairwise_distances(stuck.vectors), EPS, mech.log_base, stuck.neighbour_ids, [1, 3, 10, 30, 40]
    )
    for row, ref in zip(audited["tv_by_chain_length"], dense):
        assert row["chain_length"] == ref["chain_length"] and row["tv_max"] == pytest.approx(ref["tv_max"], abs=1e-12)
    lonely = ~mutual_neighbours(stuck.neighbour_ids).any(axis=1)
    exact = capped_exponential_distribution(pairwise_distances(stuck.vectors), EPS, mech.log_base)
    assert audited["words_without_mutual_neighbour"] == lonely.sum()
    assert audited["tv_max_words_without_mutual_neighbour"] == pytest.approx((1 - np.diag(exact)[lonely]).max())
    assert total_variation(exact[0], exact[0]) == 0


# ---- guarantee and parameters ---------------------------------------------------------------
def test_guarantees(graph):
    exact = KDEPrior(graph, EPS).guarantee().as_dict()
    assert exact["kind"] == "metric-DP" and exact["rate"] == EPS
    assert exact["per_token_pure_epsilon"] == pytest.approx(EPS * graph.dmax)
    mh = KDEPrior(graph, EPS, sampler="mh", chain_length=64).guarantee().as_dict()
    assert mh["kind"] == "approximate" and mh["rate"] is None and mh["per_token_pure_epsilon"] is None
    assert mh["statement"].startswith("approximate")
    assert f"{mh['audited']['tv_median']:.3g} (median)" in mh["statement"]
    for g in (exact, mh):
        assert g == json_safe(g) and json.dumps(g) and g["not_protected"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"alpha": -1.0}, "alpha must be"),
        ({"alpha": math.inf}, "alpha must be"),
        ({"sampler": "gibbs"}, "unknown sampler"),
        ({"chain_length": 0}, "chain_length must be"),
        ({"chain_length": 2.5}, "chain_length must be"),
        ({"bandwidth_scale": 0.0}, "bandwidth_scale must be"),
    ],
)
def test_invalid_parameters_are_clear_errors(graph, params, message):
    with pytest.raises(ValueError, match=message):
        KDEPrior(graph, EPS, **params)


# ---- extreme parameters (issue 12 #5, #13) --------------------------------------------------------
def test_extreme_bandwidth_scales(tmp_path):
    """A huge scale used to overflow factor^2 (OverflowError) and a tiny one to give a NaN prior: the
    kernel is now computed in logs (a huge scale gives the uniform prior), and a scale whose whitened
    vectors would overflow the float32 screen is refused with the smallest usable one."""
    x = np.random.default_rng(5).normal(size=(40, 3)).astype(np.float32)
    for scale in (1e17, 1e300, 1.7976931348623157e308):
        log_pi = kde.kde_log_density(x, scale)
        assert np.isfinite(log_pi).all() and np.ptp(log_pi) < 1e-9
    with pytest.raises(
        ValueError,
        match=r"bandwidth_scale 1e-300 is too small .* smallest usable bandwidth_scale is "
        r"[0-9.e+-]+",
    ) as err:
        kde.kde_log_density(x, 1e-300)
    smallest = float(str(err.value).split("smallest usable bandwidth_scale is ")[1].split(" ")[0])
    assert np.isfinite(kde.kde_log_density(x, 1.01 * smallest)).all()
    from tests.conftest import build_random_index

    index = build_random_index(tmp_path, 12, 3, 11, seed=3)
    out = KDEPrior(index, EPS, bandwidth_scale=1e300).perturb(np.arange(12, dtype=np.int32), np.random.default_rng(0))
    assert out.min() >= 0 and out.max() < 12
    with pytest.raises(ValueError, match="bandwidth_scale"):
        KDEPrior(index, EPS, bandwidth_scale=5e-324)


@pytest.mark.timeout(30)
def test_long_chains_are_audited_within_a_bounded_time(graph):
    """The audit computed every step of the chain for 16 start words: chain_length 100,000 took 4.5 s
    on these 30 words and, at ~70 ms per step, about two hours on the default 34k-word index. It now
    stops at MH_AUDIT_MAX_STEPS and states an upper bound (the distance to the target never grows with
    more steps)."""
    from dptext.transforms.mechanisms.kde_prior import MH_AUDIT_MAX_STEPS

    mech = KDEPrior(graph, EPS, sampler="mh", chain_length=100_000)
    g = mech.guarantee().as_dict()
    assert g["audited"]["audited_chain_length"] == MH_AUDIT_MAX_STEPS and g["audited"]["chain_length"] == 100_000
    assert f"at most {g['audited']['tv_median']:.3g} (median)" in g["statement"]
    assert f"computed after {MH_AUDIT_MAX_STEPS} steps" in g["statement"]
    exact = KDEPrior(graph, EPS, sampler="mh", chain_length=MH_AUDIT_MAX_STEPS).guarantee().as_dict()
    assert "at most" not in exact["statement"]
    assert exact["audited"]["tv_by_chain_length"][-1] == g["audited"]["tv_by_chain_length"][-1]
    with pytest.raises(ValueError, match=r"chain_length must be an integer in \[1, 100000\]"):
        KDEPrior(graph, EPS, sampler="mh", chain_length=100_001)


@pytest.mark.timeout(20)
def test_mh_on_a_whole_vocabulary_table_with_duplicate_vectors(tmp_path):
    """K = n - 1 and two words on one vector (distance 0): every K-NN edge is mutual, and the sampler
    still follows the exact chain distribution (chi-square as above); the two words' chains agree."""
    vectors = np.random.default_rng(12).normal(size=(8, 3)).astype(np.float32)
    vectors[6] = vectors[2]
    index = EmbeddingIndex.build([f"w{i}" for i in range(8)], vectors, tmp_path, neighbours=7, progress=False)
    assert mutual_neighbours(index.neighbour_ids).all()
    mech = KDEPrior(index, EPS, alpha=2.0, sampler="mh", chain_length=6)
    rows = {w: _chain_row(mech, w, 6) for w in (2, 6)}
    # From either duplicate the chain reaches the other in one step and every other word alike.
    np.testing.assert_allclose(np.delete(rows[2], [2, 6]), np.delete(rows[6], [2, 6]), rtol=1e-12)
    for word, row in rows.items():
        stat, threshold = _chi_square_matches(mech, word, row, seed=word)
        assert stat < threshold, (word, stat, threshold)
