"""tem, knn_exponential and the exact vocabulary-wide exponential sampler against their exact
distributions, broken variants, and the exact audit of their guarantees."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_truncated_gumbel import _chi_square_matches
from transforms import mechanisms
from transforms.audit import (audit_pairs, capped_exponential_distribution, knn_exponential_distribution,
                              pairwise_distances)
from transforms.mechanisms import vocabulary_exponential
from transforms.mechanisms.knn_exponential import KNNExponential
from transforms.mechanisms.tem import TEM


@pytest.fixture(scope="module")
def wide(random_index):
    # 40 words in 3-d with a table of only K = 4: most of the mass lies outside the table at these
    # epsilons, so the tail envelope and its rejection step decide the distribution.
    return random_index(n=40, d=3, neighbours=4, seed=21)


@pytest.fixture(scope="module")
def short_table(random_index):
    # K = 3 while k ~ Poisson(ln 15 = 2.7): about 31% of draws need k > K (the exact-search fallback).
    return random_index(n=15, d=3, neighbours=3, seed=5)


def _dist(index):
    return pairwise_distances(index.vectors)


class Capped:
    """The vocabulary sampler as a mechanism, for the chi-square helper."""

    def __init__(self, index, epsilon, log_base=None, cap=math.inf):
        self.index, self.epsilon, self.log_base, self.cap = index, epsilon, log_base, cap

    def perturb(self, ids, rng):
        return vocabulary_exponential.sample_capped_exponential(self.index, ids, rng, self.epsilon,
                                                                self.log_base, self.cap)


# _chi_square_matches: Pearson statistic of 200,000 draws of one word against its exact row,
# threshold at the 1 - 1e-6 quantile of chi2(df) (df = cells - 1 after pooling cells expected
# below 5; reasoning in tests/test_truncated_gumbel.py). Every draw is the same word, so the
# batched sampler also handles one word repeated 200,000 times in a batch.
@pytest.mark.parametrize("epsilon, cap, with_base", [(0.8, math.inf, False), (2.0, math.inf, True),
                                                     (3.0, 1.2, False), (6.0, 0.5, True)])
@pytest.mark.parametrize("word", [0, 17])
def test_vocabulary_sampler_matches_the_closed_form(wide, epsilon, cap, with_base, word):
    log_base = np.random.default_rng(3).normal(0, 1.0, wide.n) if with_base else None
    exact = capped_exponential_distribution(_dist(wide), epsilon, log_base, cap)
    stat, threshold = _chi_square_matches(Capped(wide, epsilon, log_base, cap), word, exact[word], seed=word)
    assert stat < threshold, (stat, threshold)


def test_vocabulary_sampler_mixed_batch_keeps_each_word_exact(wide):
    """Words interleaved in one batch: each word's draws still follow its own row."""
    exact = capped_exponential_distribution(_dist(wide), 1.5)
    ids = np.tile(np.array([3, 9, 31], dtype=np.int32), 60_000)
    out = Capped(wide, 1.5).perturb(ids, np.random.default_rng(5))
    for w in (3, 9, 31):
        observed = np.bincount(out[ids == w], minlength=wide.n)
        expected = exact[w] * 60_000
        keep = expected >= 5
        stat = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum()
        from scipy.stats import chi2
        assert stat < chi2.ppf(1 - 1e-6, keep.sum()), (w, stat)     # df <= cells: conservative


def _broken_no_rejection(index, ids, table_ids, dk, p_table, half_eps, cap, base, rng, pending, rounds):
    """Broken: every tail proposal accepted (the envelope sampled as if it were the target)."""
    first, word = GOOD_ROUNDS(index, ids, table_ids, dk, p_table, half_eps, cap, base, rng, pending, 1)
    tail = first < 0
    if tail.any():
        y = base.draw(rng, tail.sum())
        word[tail], first[tail] = y, 0
    return first, word


GOOD_ROUNDS = vocabulary_exponential._rounds


@pytest.mark.parametrize("broken", ["no rejection", "envelope below the tail", "epsilon not halved"])
def test_broken_vocabulary_samplers_fail(wide, monkeypatch, broken):
    exact = capped_exponential_distribution(_dist(wide), 0.8)
    mech = Capped(wide, 0.8)
    if broken == "no rejection":
        monkeypatch.setattr(vocabulary_exponential, "_rounds", _broken_no_rejection)
    elif broken == "envelope below the tail":      # dK too large: the tail envelope no longer dominates
        monkeypatch.setattr(vocabulary_exponential, "_DK_MARGIN", -0.5)
    else:
        mech = Capped(wide, 1.6)
    stat, threshold = _chi_square_matches(mech, 0, exact[0], seed=1)
    assert stat > threshold


# ---- tem -------------------------------------------------------------------------------------
def test_tem_matches_the_truncated_exponential_oracle(wide):
    mech = TEM(wide, 3.0, beta=0.2)               # gamma = (2/3) ln(0.8 x 39 / 0.2) = 3.37
    assert mech.gamma == pytest.approx(2 / 3 * math.log(0.8 * 39 / 0.2))
    assert mech.gamma < _dist(wide).max()         # the cap binds for some pairs
    exact = capped_exponential_distribution(_dist(wide), 3.0, cap=mech.gamma)
    for word in (5, 22):
        stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
        assert stat < threshold


def test_tem_without_its_cap_fails_the_oracle(wide):
    mech = TEM(wide, 3.0, beta=0.2)
    exact = capped_exponential_distribution(_dist(wide), 3.0, cap=mech.gamma)
    stat, threshold = _chi_square_matches(Capped(wide, 3.0), 5, exact[5], seed=5)
    assert stat > threshold


def test_tem_audit_confirms_its_guarantee(wide):
    """Every log-ratio is at most eps * min(d(w, w'), gamma): metric DP at rate eps, and the
    per-token pure bound eps * min(Dmax, gamma) the report composes."""
    mech = TEM(wide, 3.0, beta=0.2)
    dist = _dist(wide)
    P = capped_exponential_distribution(dist, 3.0, cap=mech.gamma)
    ratio = np.log(P[:, None, :] / P[None, :, :]).max(axis=2)
    np.testing.assert_array_less(ratio - 3.0 * np.minimum(dist, mech.gamma), 1e-9)
    audited = audit_pairs(P, dist, rate=3.0)
    assert audited["worst_metric_rate"] <= 3.0 + 1e-9
    assert audited["max_delta_at_rate_times_distance"] < 1e-12
    g = mech.guarantee()
    assert g["kind"] == "metric-DP" and g["per_token_pure_epsilon"] == pytest.approx(3.0 * min(wide.dmax, mech.gamma))
    assert audited["worst_log_ratio"] <= g["per_token_pure_epsilon"] + 1e-9


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.99])
def test_tem_bad_beta_names_what_is_valid(wide, beta):
    with pytest.raises(ValueError, match="beta"):
        mechanisms.create("tem", wide, 3.0, beta=beta)


# ---- knn_exponential -------------------------------------------------------------------------
@pytest.mark.parametrize("candidates", [0, 2, 3])
@pytest.mark.parametrize("word", [1, 12])
def test_knn_exponential_matches_its_oracle(short_table, candidates, word):
    """candidates 0 (Poisson k) needs the exact search for k > K = 3 in about 31% of draws."""
    dist = _dist(short_table)
    exact = knn_exponential_distribution(dist, 2.0, None if candidates == 0 else candidates)
    mech = KNNExponential(short_table, 2.0, candidates)
    stat, threshold = _chi_square_matches(mech, word, exact[word], seed=word)
    assert stat < threshold


class OneCandidateTooMany(KNNExponential):
    """Broken: k + 1 neighbours besides the word."""

    def draw_k(self, rng, size):
        return np.minimum(super().draw_k(rng, size) + 1, self.index.n - 1)


class EpsilonNotHalved(KNNExponential):
    """Broken: weights exp(-eps d) instead of exp(-eps d / 2)."""

    def __init__(self, index, epsilon, candidates=0):
        super().__init__(index, 2 * epsilon, candidates)


@pytest.mark.parametrize("broken", [OneCandidateTooMany, EpsilonNotHalved])
def test_broken_knn_exponential_fails(short_table, broken):
    exact = knn_exponential_distribution(_dist(short_table), 2.0, 2)
    stat, threshold = _chi_square_matches(broken(short_table, 2.0, 2), 1, exact[1], seed=1)
    assert stat > threshold


def test_knn_exponential_fixed_k_larger_than_the_table_is_a_clear_error(short_table):
    with pytest.raises(ValueError, match="exceeds the index's neighbour table"):
        mechanisms.create("knn_exponential", short_table, 2.0, candidates=5)


def _knn_audit(index, candidates, epsilon=2.0):
    dist = _dist(index)
    P = knn_exponential_distribution(dist, epsilon, None if candidates == 0 else candidates)
    return audit_pairs(P, dist, neighbour_ids=index.neighbours, rate=epsilon)


@pytest.mark.xfail(strict=True, reason=(
    "MECHANISMS.md 3 allows knn_exponential the metric rate of truncated_gumbel only if the oracle "
    "confirms it; it does not: on 15 words (K=3, eps 2) the exact worst log-ratio is inf with fixed "
    "k=2 (words outside each other's candidate sets); with Poisson k it is 18.26, a worst metric rate "
    "of 12.03 per unit distance against eps 2 (15.19 even within the 3 nearest)"))
@pytest.mark.parametrize("candidates", [0, 2])
def test_knn_exponential_is_metric_dp_at_rate_epsilon(short_table, candidates):
    assert _knn_audit(short_table, candidates)["worst_metric_rate"] <= 2.0 + 1e-9


def test_knn_exponential_audited_figures(short_table):
    fixed, poisson = _knn_audit(short_table, 2), _knn_audit(short_table, 0)
    assert fixed["worst_log_ratio"] == math.inf
    assert math.isfinite(poisson["worst_log_ratio"]) and poisson["worst_metric_rate"] > 2.0
    # The guarantee reports the audit of the index's own random vocabularies: no metric-DP claim.
    g = mechanisms.create("knn_exponential", short_table, 2.0).guarantee()
    assert g["per_token_pure_epsilon"] is None and g["rate"] is None
    assert g["audited"] and "local" in g["kind"]
