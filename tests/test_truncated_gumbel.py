"""truncated_gumbel: calibration, the fast sampler against the exact oracle, broken variants, audit."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2

from transforms import mechanisms
from transforms.audit import (audit_pairs, audit_truncated_gumbel_subsets, pairwise_distances,
                              truncated_gumbel_distribution)
from transforms.index import EmbeddingIndex
from transforms.mechanisms.base import InfeasibleEpsilonError
from transforms.mechanisms.truncated_gumbel import (TruncatedGumbel, epsilon_of_scale, gumbel_scale,
                                                    smallest_feasible_epsilon)

DRAWS = 200_000
FALSE_ALARM = 1e-6


def _index(tmp_path, n, d, neighbours, seed):
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return EmbeddingIndex.build([f"w{i}" for i in range(n)], vectors, tmp_path / f"idx{n}_{neighbours}",
                                neighbours=neighbours, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _index(tmp_path_factory.mktemp("tg"), n=9, d=4, neighbours=8, seed=11)


@pytest.fixture(scope="module")
def short_table(tmp_path_factory):
    # K = 3 < ln(15) + a few: many draws need k > K and take the exact-search fallback.
    return _index(tmp_path_factory.mktemp("tg"), n=15, d=3, neighbours=3, seed=5)


def _chi_square(mech, word: int, oracle_row: np.ndarray, seed: int) -> tuple[float, float]:
    """Pearson statistic of DRAWS samples of M(word) against the oracle, and its threshold.

    Under a correct sampler the statistic is chi2(df) distributed whatever DRAWS is, so the
    threshold (the 1 - 1e-6 quantile) fixes the false-alarm rate at 1e-6. A sampler whose cell
    probabilities are off by delta raises the statistic by about DRAWS * delta^2 / p, so with
    200,000 draws deviations of ~0.01 on a cell of probability 0.1 are caught (~200 >> ~40).
    Cells with expected count < 5 are pooled so the chi-square approximation holds.
    """
    out = mech.perturb(np.full(DRAWS, word, dtype=np.int32), np.random.default_rng(seed))
    observed = np.bincount(out, minlength=len(oracle_row)).astype(float)
    expected = oracle_row * DRAWS
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    stat = float((((obs - exp) ** 2)[keep] / exp[keep]).sum() + obs[~keep].sum() * 1e12)
    return stat, float(chi2.ppf(1 - FALSE_ALARM, keep.sum() - 1))


def _oracle(index, epsilon):
    mech = mechanisms.create("truncated_gumbel", index, epsilon)
    dist = pairwise_distances(index.vectors)
    return mech, truncated_gumbel_distribution(dist, mech.p.b, index.dmax)


# ---- calibration ----------------------------------------------------------------------------
@pytest.mark.parametrize("n, dmin, dmax", [(9, 0.5, 4.0), (33860, 0.7446, 16.25), (1000, 0.01, 3.0)])
def test_scale_and_epsilon_formulas_agree(n, dmin, dmax):
    floor = smallest_feasible_epsilon(n, dmin)
    for factor in (1.0001, 1.01, 1.5, 3, 10, 1000):
        eps = factor * floor
        assert epsilon_of_scale(gumbel_scale(eps, n, dmin, dmax), n, dmin, dmax) == pytest.approx(eps, rel=1e-9)


def test_infeasible_epsilon_names_the_smallest_feasible_one(small):
    floor = smallest_feasible_epsilon(small.n, small.dmin)
    assert floor == pytest.approx((2 * (1 + math.log(9)) + 3) / small.dmin)
    for eps in (floor * 0.5, floor):
        with pytest.raises(InfeasibleEpsilonError, match=f"smallest feasible epsilon is {floor:.6g}") as err:
            mechanisms.create("truncated_gumbel", small, eps)
        assert err.value.smallest_feasible == pytest.approx(floor)
    mechanisms.create("truncated_gumbel", small, floor * 1.000001)


# ---- the fast sampler against the exact oracle -----------------------------------------------
def test_oracle_rows_are_distributions(small):
    _, P = _oracle(small, 1.5 * smallest_feasible_epsilon(small.n, small.dmin))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)
    assert (P > 0).all()


@pytest.mark.parametrize("fixture, factor", [("small", 1.2), ("small", 2.0), ("short_table", 1.5)])
def test_sampler_matches_exact_oracle(request, fixture, factor):
    index = request.getfixturevalue(fixture)
    mech, P = _oracle(index, factor * smallest_feasible_epsilon(index.n, index.dmin))
    assert np.sort(P, axis=1)[:, -3:].sum(axis=1).min() < 0.99   # not degenerate: several likely outputs
    for word in (0, 4, index.n - 1):
        stat, threshold = _chi_square(mech, word, P[word], seed=100 + word)
        assert stat < threshold, f"word {word}: chi-square {stat:.1f} >= {threshold:.1f}"


class SquaredNoise(TruncatedGumbel):
    """Broken: the Gumbel noise enters squared (sign kept)."""

    def _perturb_from_table(self, ids, k, rng):
        width = int(k.max()) + 1
        g = -self.p.b * np.log(self.truncated_exponential(rng, (len(ids), width)).astype(np.float64))
        scores = self.index.neighbour_distances[ids, :width] + np.sign(g) * g ** 2 / self.p.b
        scores[np.arange(width)[None, :] > k[:, None]] = np.inf
        return self._table_ids[ids, np.argmin(scores, axis=1)]


class UntruncatedK(TruncatedGumbel):
    """Broken: k ~ Poisson(ln n) without conditioning on k >= 1 (k = 0 returns the word itself)."""

    def perturb(self, ids, rng):
        k = rng.poisson(self.p.poisson_rate, len(ids))
        k = np.minimum(k, self.index.neighbours)
        out = self._perturb_from_table(ids, np.maximum(k, 1), rng)
        return np.where(k == 0, ids, out)


class SourceDropped(TruncatedGumbel):
    """Broken: the source word is not a candidate (only its k nearest neighbours are)."""

    def _perturb_from_table(self, ids, k, rng):
        width = int(k.max()) + 1
        weights = np.exp(-self.index.neighbour_distances[ids, :width] / self.p.b)
        scores = self.truncated_exponential(rng, (len(ids), width)) * weights
        scores[np.arange(width)[None, :] > k[:, None]] = 0
        scores[:, 0] = 0
        return self._table_ids[ids, np.argmax(scores, axis=1)]


@pytest.mark.parametrize("broken", [SquaredNoise, UntruncatedK, SourceDropped])
def test_broken_variants_fail_the_oracle_test(small, broken):
    eps = 1.5 * smallest_feasible_epsilon(small.n, small.dmin)
    _, P = _oracle(small, eps)
    stat, threshold = _chi_square(broken(small, eps), 4, P[4], seed=104)
    assert stat > threshold, f"{broken.__name__} was not detected: {stat:.1f} <= {threshold:.1f}"


# ---- the audit --------------------------------------------------------------------------------
def test_audit_figures(small):
    mech, P = _oracle(small, 1.5 * smallest_feasible_epsilon(small.n, small.dmin))
    dist = pairwise_distances(small.vectors)
    figures = audit_pairs(P, dist, neighbours=3, rate=mech.epsilon)
    logp = np.log(P)
    brute = max(logp[w, y] - logp[v, y] for w in range(9) for v in range(9) if w != v for y in range(9))
    assert figures["worst_log_ratio"] == pytest.approx(brute)
    assert 0 < figures["worst_log_ratio_within_typical_candidates"] <= figures["worst_log_ratio_within_neighbours"]
    assert figures["worst_log_ratio_within_neighbours"] <= figures["worst_log_ratio"]
    profile = list(figures["delta_profile"].values())
    near = list(figures["delta_profile_within_typical_candidates"].values())
    assert all(a >= b for a, b in zip(profile, profile[1:]))
    assert all(n <= a for n, a in zip(near, profile))
    # The profile is the hockey-stick divergence, checked by brute force at eps' = 1.
    brute_delta = max(np.maximum(0, P[w] - np.e * P[v]).sum() for w in range(9) for v in range(9) if w != v)
    assert figures["delta_profile"]["1"] == pytest.approx(brute_delta)


def test_guarantee_prints_the_audited_figures_and_no_pure_bound(small):
    mech = mechanisms.create("truncated_gumbel", small, 1.5 * smallest_feasible_epsilon(small.n, small.dmin))
    g = mech.guarantee()
    assert g["per_token_pure_epsilon"] is None
    assert g["audited"] == audit_truncated_gumbel_subsets(small, mech.epsilon)
    worst = max(r["worst_log_ratio"] for r in g["audited"])
    assert f"{worst:.3g}" in g["statement"] and "local" in g["statement"]
