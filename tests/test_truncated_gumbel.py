"""truncated_gumbel: calibration, the fast sampler against the exact oracle, broken variants, audit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import chi2

from dptext.transforms import mechanisms
from dptext.transforms.audit import audit_pairs, candidate_order, json_safe, pairwise_distances
from dptext.transforms.mechanisms.base import InfeasibleEpsilonError
from dptext.transforms.mechanisms.candidates import truncated_poisson_pmf
from dptext.transforms.mechanisms.truncated_gumbel import (
    TruncatedGumbel,
    audit_truncated_gumbel_subsets,
    epsilon_of_scale,
    gumbel_scale,
    smallest_feasible_epsilon,
    truncated_gumbel_distribution,
)

DRAWS = 200_000
FALSE_ALARM = 1e-6


@pytest.fixture(scope="module")
def small(random_index):
    return random_index(n=9, d=4, neighbours=8, seed=11)


@pytest.fixture(scope="module")
def short_table(random_index):
    # K = 3 while k ~ Poisson(ln 15 = 2.7): about 31% of draws need k > K, i.e. the exact-search fallback.
    return random_index(n=15, d=3, neighbours=3, seed=5)


def _chi_square_matches(
    mech, word: int, oracle_row: np.ndarray, draws: int = DRAWS, seed: int = 0
) -> tuple[float, float]:
    """Pearson statistic of `draws` samples of M(word) against the oracle row, and its threshold.

    Under H0 (a correct sampler) the statistic is chi2(df) distributed whatever `draws` is, so the
    threshold, the 1 - 1e-6 quantile of chi2(df), fixes the false-alarm rate at 1e-6. A sampler
    whose cell probability p is off by delta adds about draws * delta^2 / p to the statistic, so
    it is caught once draws * delta^2 / p exceeds the quantile (~35-45 for df <= 14): with
    200,000 draws, delta ~ 0.005 on a cell with p = 0.1. Cells with expected count < 5 are pooled
    into one so the chi-square approximation holds; an output the oracle gives probability 0
    makes the statistic infinite.
    """
    out = mech.perturb(np.full(draws, word, dtype=np.int32), np.random.default_rng(seed))
    observed = np.bincount(out, minlength=len(oracle_row)).astype(float)
    expected = oracle_row * draws
    pooled = expected < 5
    obs = np.append(observed[~pooled], observed[pooled].sum())
    exp = np.append(expected[~pooled], expected[pooled].sum())
    if (obs[exp == 0] > 0).any():
        return math.inf, float(chi2.ppf(1 - FALSE_ALARM, (exp > 0).sum() - 1))
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, float(chi2.ppf(1 - FALSE_ALARM, keep.sum() - 1))


def _oracle(index, epsilon, mechanism=None):
    mech = (mechanism or TruncatedGumbel)(index, epsilon)
    return mech, truncated_gumbel_distribution(pairwise_distances(index.vectors), mech.gumbel.b, index.dmax)


# ---- calibration ----------------------------------------------------------------------------
# (9, 1, 1.2) and (40, 1, 1) reach the Lambert-W branch of b (a Dmin > exp(2 Dmax / Dmin));
# the others stay on the ln(a Dmin) branch, as GloVe-like embeddings do.
@pytest.mark.parametrize(
    "n, dmin, dmax", [(9, 0.5, 4.0), (33860, 0.7446, 16.25), (1000, 0.01, 3.0), (9, 1.0, 1.2), (40, 1.0, 1.0)]
)
def test_scale_and_epsilon_formulas_agree(n, dmin, dmax):
    floor = smallest_feasible_epsilon(n, dmin)
    for factor in (1.0001, 1.01, 1.5, 3, 10, 100, 1e3, 1e5):
        eps = factor * floor
        b = gumbel_scale(eps, n, dmin, dmax)
        assert b > 0
        assert epsilon_of_scale(b, n, dmin, dmax) == pytest.approx(eps, rel=1e-9)


def test_both_branches_of_the_scale_are_exercised():
    n, dmin, dmax = 9, 1.0, 1.2
    floor = smallest_feasible_epsilon(n, dmin)
    # b >= Dmin exactly on the ln(a Dmin) branch, b < Dmin on the Lambert-W branch.
    assert gumbel_scale(1.5 * floor, n, dmin, dmax) >= dmin
    assert gumbel_scale(1e3 * floor, n, dmin, dmax) < dmin


def test_infeasible_epsilon_names_the_smallest_feasible_one(small):
    floor = smallest_feasible_epsilon(small.n, small.dmin)
    assert floor == pytest.approx((2 * (1 + math.log(9)) + 3) / small.dmin)
    for eps in (floor * 0.5, floor):
        with pytest.raises(InfeasibleEpsilonError, match=f"smallest feasible epsilon is {floor:.6g}") as err:
            mechanisms.create("truncated_gumbel", small, eps)
        assert err.value.smallest_feasible == pytest.approx(floor)
    assert mechanisms.create("truncated_gumbel", small, floor * 1.000001).gumbel.b > 0


# ---- the exact oracle -------------------------------------------------------------------------
def _oracle_by_adaptive_quadrature(dist, b, dmax):
    """The same formula term by term (each k, each candidate) with scipy's adaptive quadrature."""
    n = len(dist)
    pk = truncated_poisson_pmf(math.log(n), n)
    G = lambda z: math.exp(-math.exp(-z / b))  # noqa: E731  (max-Gumbel CDF)
    mass = G(dmax) - G(-dmax)
    f = lambda z: math.exp(-z / b - math.exp(-z / b)) / b / mass if abs(z) <= dmax else 0.0  # noqa: E731
    S = lambda z: 1.0 if z < -dmax else 0.0 if z > dmax else (G(dmax) - G(z)) / mass  # noqa: E731
    P = np.zeros((n, n))
    for w in range(n):
        order = candidate_order(dist[w], w)
        d = dist[w, order]
        for j in range(n):
            for k in range(max(j, 1), n):
                edges = sorted(set(np.concatenate((d[: k + 1] - dmax, d[: k + 1] + dmax)).tolist()))
                integrand = lambda x: f(x - d[j]) * math.prod(S(x - d[i]) for i in range(k + 1) if i != j)  # noqa: E731
                P[w, order[j]] += pk[k] * sum(
                    integrate.quad(integrand, lo, hi, epsabs=0, epsrel=1e-12)[0]
                    for lo, hi in zip(edges[:-1], edges[1:])
                )
    return P


@pytest.mark.parametrize("factor", [1.5, 10.0])
def test_oracle_matches_term_by_term_adaptive_quadrature(factor):
    dist = pairwise_distances(np.random.default_rng(3).normal(size=(6, 3)))
    dmin, dmax = dist[dist > 0].min(), dist.max()
    b = gumbel_scale(factor * smallest_feasible_epsilon(6, dmin), 6, dmin, dmax)
    P = truncated_gumbel_distribution(dist, b, dmax)
    np.testing.assert_allclose(P, _oracle_by_adaptive_quadrature(dist, b, dmax), rtol=1e-9, atol=0)


def test_oracle_rows_are_distributions(small, short_table):
    for index in (small, short_table):
        for factor in (1.2, 1.5, 10.0):
            _, P = _oracle(index, factor * smallest_feasible_epsilon(index.n, index.dmin))
            np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-9)
            assert (P > 0).all()  # the source word and every other word are possible outputs


# ---- the fast sampler against the exact oracle -----------------------------------------------
@pytest.mark.parametrize(
    "fixture, factor, words, draws",
    [
        ("small", 1.2, (0, 4, 8), DRAWS),
        ("small", 10.0, (0, 4, 8), DRAWS),  # b < Dmax: the Gumbel shape matters more
        # The fallback runs per token in Python (~0.2 ms each), so fewer draws here; the false-alarm
        # rate is still 1e-6, the smallest detectable deviation grows by sqrt(2).
        ("short_table", 1.5, (0, 14), DRAWS // 2),
    ],
)
def test_sampler_matches_exact_oracle(request, fixture, factor, words, draws):
    index = request.getfixturevalue(fixture)
    mech, P = _oracle(index, factor * smallest_feasible_epsilon(index.n, index.dmin))
    for word in words:
        assert (P[word] > 0.05).sum() >= 3  # not degenerate: several likely outputs
        stat, threshold = _chi_square_matches(mech, word, P[word], draws, seed=100 + word)
        assert stat < threshold, f"word {word}: chi-square {stat:.1f} >= {threshold:.1f}"


def test_fallback_beyond_the_table_is_exercised(short_table):
    mech = TruncatedGumbel(short_table, 1.5 * smallest_feasible_epsilon(short_table.n, short_table.dmin))
    out = mech.perturb(np.zeros(2000, dtype=np.int32), np.random.default_rng(7))
    # Words outside the table row (rank > K) can only come from the exact-search fallback.
    assert np.isin(out, short_table.neighbour_ids[0], invert=True).sum() > 20


class SquaredNoise(TruncatedGumbel):
    """Broken: the Gumbel noise enters squared (sign(g) g^2 / b)."""

    def _perturb_from_table(self, ids, k, rng):
        width = int(k.max()) + 1
        g = -self.gumbel.b * np.log(self.truncated_exponential(rng, (len(ids), width)).astype(np.float64))
        scores = self.index.neighbour_distances[ids, :width] + np.sign(g) * g**2 / self.gumbel.b
        scores[np.arange(width)[None, :] > k[:, None]] = np.inf
        return self._table_ids[ids, np.argmin(scores, axis=1)]


def _perturb_with_k(mech, ids, k, rng):
    """The sampler's own steps 2-4 for given k: the table up to K, exact search beyond it."""
    out = np.empty(len(ids), dtype=np.int32)
    in_table = k <= mech.index.neighbours
    if in_table.any():
        out[in_table] = mech._perturb_from_table(ids[in_table], k[in_table], rng)
    for i in np.flatnonzero(~in_table):
        out[i] = mech._perturb_exact(int(ids[i]), int(k[i]), rng)
    return out


class ZeroK(TruncatedGumbel):
    """Broken: k ~ Poisson(ln n) not conditioned on k >= 1 (k = 0: the only candidate is w)."""

    def perturb(self, ids, rng):
        k = np.minimum(rng.poisson(self.gumbel.poisson_rate, len(ids)), self.index.n - 1)
        return np.where(k == 0, ids, _perturb_with_k(self, ids, np.maximum(k, 1), rng))


class ClippedK(TruncatedGumbel):
    """Broken: k clipped into [1, n - 1] instead of drawn again (k = 0 becomes 1)."""

    def perturb(self, ids, rng):
        k = np.clip(rng.poisson(self.gumbel.poisson_rate, len(ids)), 1, self.index.n - 1)
        return _perturb_with_k(self, ids, k, rng)


class SourceDropped(TruncatedGumbel):
    """Broken: the source word is not a candidate (only its k nearest neighbours are)."""

    def _perturb_from_table(self, ids, k, rng):
        width = int(k.max()) + 1
        weights = np.exp(-self.index.neighbour_distances[ids, :width] / self.gumbel.b)
        scores = self.truncated_exponential(rng, (len(ids), width)) * weights
        scores[np.arange(width)[None, :] > k[:, None]] = 0
        scores[:, 0] = 0
        return self._table_ids[ids, np.argmax(scores, axis=1)]


@pytest.mark.parametrize("broken", [SquaredNoise, ZeroK, ClippedK, SourceDropped])
def test_broken_variants_fail_the_oracle_test(small, broken):
    eps = 1.5 * smallest_feasible_epsilon(small.n, small.dmin)
    _, P = _oracle(small, eps)
    stat, threshold = _chi_square_matches(broken(small, eps), 4, P[4], seed=104)
    assert stat > threshold, f"{broken.__name__} was not detected: {stat:.1f} <= {threshold:.1f}"


# ---- the audit --------------------------------------------------------------------------------
def test_audit_figures(small):
    mech, P = _oracle(small, 1.5 * smallest_feasible_epsilon(small.n, small.dmin))
    dist = pairwise_distances(small.vectors)
    figures = audit_pairs(P, dist, neighbour_ids=np.asarray(small.neighbour_ids)[:, :4], rate=mech.epsilon)
    assert figures == audit_pairs(P, dist, neighbour_ids=3, rate=mech.epsilon)  # table or K: same pairs
    logp = np.log(P)
    brute = {(w, v, y): logp[w, y] - logp[v, y] for w in range(9) for v in range(9) if w != v for y in range(9)}
    (w, v, y), worst = max(brute.items(), key=lambda item: item[1])
    assert math.isfinite(figures["worst_log_ratio"])
    assert figures["worst_log_ratio"] == pytest.approx(worst)
    assert (figures["worst_pair"], figures["worst_output"]) == ([w, v], y)
    assert figures["worst_pair_distance"] == pytest.approx(dist[w, v])
    assert figures["worst_metric_rate"] == pytest.approx(max(r / dist[w, v] for (w, v, _), r in brute.items()))
    assert 0 < figures["worst_log_ratio_within_typical_candidates"] <= figures["worst_log_ratio_within_neighbours"]
    assert figures["worst_log_ratio_within_neighbours"] <= figures["worst_log_ratio"]
    profile = list(figures["delta_profile"].values())
    near = list(figures["delta_profile_within_typical_candidates"].values())
    assert all(a >= b for a, b in zip(profile, profile[1:])) and profile[0] > profile[-1]
    assert all(n <= a for n, a in zip(near, profile))
    # The profile is the hockey-stick divergence, checked by brute force at eps' = 1.
    brute_delta = max(np.maximum(0, P[w] - np.e * P[v]).sum() for w in range(9) for v in range(9) if w != v)
    assert figures["delta_profile"]["1"] == pytest.approx(brute_delta)


def test_log_ratio_is_infinite_where_the_other_word_never_outputs_y():
    P = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.25, 0.5, 0.25]])
    dist = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=float)
    figures = audit_pairs(P, dist, rate=1.0)
    assert figures["worst_log_ratio"] == math.inf and figures["worst_metric_rate"] == math.inf
    assert figures["delta_profile"]["20"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def sixty(random_index):
    return random_index(n=60, d=5, neighbours=6, seed=21)


def test_subset_audit(sixty):
    eps = 1.5 * smallest_feasible_epsilon(sixty.n, sixty.dmin)
    rows = audit_truncated_gumbel_subsets(sixty, eps)
    assert [r["n"] for r in rows] == [9, 20, 40]
    for r in rows:
        # Each subset is calibrated at the same multiple of its own floor as eps is of the index's.
        assert r["epsilon"] == pytest.approx(1.5 * smallest_feasible_epsilon(r["n"], r["dmin"]))
        assert r["b"] == pytest.approx(gumbel_scale(r["epsilon"], r["n"], r["dmin"], r["dmax"]))
        assert r["claimed_epsilon_times_dmax"] == pytest.approx(r["epsilon"] * r["dmax"])
        assert r["neighbours"] == min(sixty.neighbours, r["n"] - 1)
        assert 0 < r["worst_log_ratio_within_neighbours"] <= r["worst_log_ratio"] < math.inf
        assert 0 < r["worst_metric_rate"] < math.inf
        assert all(0 <= x <= 1 for x in r["delta_profile"].values())
        assert set(r["worst_pair"]) < set(range(sixty.n))
    assert audit_truncated_gumbel_subsets(sixty, eps) == rows  # reproducible, and a fresh list
    rows[0]["n"] = -1
    assert audit_truncated_gumbel_subsets(sixty, eps)[0]["n"] == 9


def test_guarantee_prints_the_audited_figures_and_no_pure_bound(sixty):
    mech = mechanisms.create("truncated_gumbel", sixty, 1.5 * smallest_feasible_epsilon(sixty.n, sixty.dmin))
    g = mech.guarantee().as_dict()
    json.dumps(g, allow_nan=False)
    assert g["per_token_pure_epsilon"] is None
    assert g["kind"] == "local (audited); no vocabulary-wide DP bound"
    assert g["claimed"]["epsilon"] == mech.epsilon and g["claimed"]["b"] == mech.gumbel.b
    audited = audit_truncated_gumbel_subsets(sixty, mech.epsilon)
    assert g["audited"] == json_safe(audited)
    worst = max(r["worst_log_ratio"] for r in audited)
    near = max(r["worst_log_ratio_within_typical_candidates"] for r in audited)
    delta = max(r["max_delta_at_rate_times_distance"] for r in audited)
    assert "local" in g["statement"]
    for figure in (worst, near, delta):
        assert f"{figure:.3g}" in g["statement"]
    # The sentence on distant words rests on a figure that supports it (issue 12 #16): the whole
    # vocabulary's lower bound above eps x Dmax, or an audited hockey-stick delta of at least 0.5.
    from dptext.transforms.mechanisms.candidates import poisson_tail_log_ratio_bound

    (distant,) = [item for item in g["not_protected"] if item.startswith("distant words")]
    if poisson_tail_log_ratio_bound(sixty.n) > mech.epsilon * sixty.dmax:
        assert "above epsilon x Dmax" in distant and "not hidden" in g["statement"]
    elif delta >= 0.5:
        assert f"{delta:.3g}" in distant and "nearly disjoint" in distant
    else:
        assert "proves no bound" in distant and "not hidden" not in g["statement"]


@pytest.mark.parametrize("above_floor", [1e-4, 1e-9])
def test_sampler_matches_the_oracle_just_above_the_feasibility_floor(small, above_floor):
    """There b is huge (Dmax / b ~ 1e-5 to 1e-10): the noise and the weights differ by less than
    float32 resolves, which once made every draw return the word itself. Same chi-square as above."""
    from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon

    eps = smallest_feasible_epsilon(small.n, small.dmin) * (1 + above_floor)
    mech, P = _oracle(small, eps)
    assert small.dmax / mech.gumbel.b < 1e-3
    stat, threshold = _chi_square_matches(mech, 4, P[4], seed=9)
    assert stat < threshold


# ---- the noise's lower tail (issue 12 #14) -------------------------------------------------------
# Kolmogorov-Smirnov with the Dvoretzky-Kiefer-Wolfowitz bound: for N draws from F,
# P(sup |F_N - F| > t) <= 2 exp(-2 N t^2), so t = sqrt(ln(2 / alpha) / (2 N)) with alpha = 1e-6
# is exceeded by a correct sampler with probability at most 1e-6, whatever F is (N = 200,000:
# t = 0.0060). A sampler whose CDF is off by more than t somewhere is caught.
TAIL_DRAWS = 200_000
DKW_ALPHA = 1e-6


def _dkw_tolerance(draws: int) -> float:
    return math.sqrt(math.log(2 / DKW_ALPHA) / (2 * draws))


def _ks_distance(sample: np.ndarray, cdf) -> float:
    x = np.sort(sample)
    f = cdf(x)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


class TailRng:
    """A generator conditioned on the noise's lower tail: standard_exponential returns X given
    X > x0 (x0 + Exponential(1), memoryless), random returns u given u >= u0 = 1 - exp(-x0), on the
    float32 grid when asked for float32. Both are the event E > E(x0), i.e. g below a threshold."""

    def __init__(self, seed: int, x0: float):
        self.rng, self.x0, self.u0 = np.random.default_rng(seed), x0, -math.expm1(-x0)

    def standard_exponential(self, size=None, dtype=np.float64):
        return (self.x0 + self.rng.standard_exponential(size)).astype(dtype)

    def random(self, size=None, dtype=np.float64):
        u = self.u0 + (1 - self.u0) * self.rng.random(size)
        if dtype == np.float32:  # numpy's float32 uniforms: multiples of 2^-24
            u = np.floor(u * 2**24) / 2**24
        return u.astype(dtype)


class Float32Draw(TruncatedGumbel):
    """Broken (the draw before issue 12 #14): E = e_lo - ln(1 - span u) with a float32 u. Its
    smallest 1 - span u is ~6e-8, so E stops at ~16.6 and the noise at -2.81 b."""

    def truncated_exponential(self, rng, shape):
        e_lo, e_hi = _e_range(self)
        u = rng.random(shape, dtype=np.float32)
        u *= -np.float32(-math.expm1(-(e_hi - e_lo)))
        u += np.float32(1.0)
        np.log(u, out=u)
        return np.float32(e_lo) - u


def _mechanism_at_scale(index, dmax_over_b: float, cls=TruncatedGumbel):
    """The mechanism at the epsilon whose Gumbel scale is b = Dmax / dmax_over_b."""
    eps = epsilon_of_scale(index.dmax / dmax_over_b, index.n, index.dmin, index.dmax)
    mech = cls(index, eps)
    assert mech.gumbel.dmax / mech.gumbel.b == pytest.approx(dmax_over_b, rel=1e-9)
    return mech


def _e_range(mech) -> tuple[float, float]:
    """[e_lo, e_hi] = [exp(-Dmax / b), exp(Dmax / b)]: the range of E = exp(-g / b)."""
    return math.exp(-mech.gumbel.dmax / mech.gumbel.b), math.exp(mech.gumbel.dmax / mech.gumbel.b)


def _truncated_gumbel_cdf(mech, below_e: float = None):
    """CDF of g = -b ln E, E ~ Exponential(1) restricted to [e_lo, e_hi] (and to E > below_e when given)."""
    b, (e_lo, e_hi) = mech.gumbel.b, _e_range(mech)
    e0 = e_lo if below_e is None else below_e

    def cdf(t):
        s = np.exp(-np.asarray(t) / b)  # P(g <= t) = P(E >= s)
        return np.exp(-(s - e0)) * -np.expm1(-(e_hi - s)) / -math.expm1(-(e_hi - e0))

    return cdf


@pytest.mark.parametrize("dmax_over_b", [0.3, 2.0, 6.0, 40.0])
def test_noise_follows_the_truncated_gumbel(small, dmax_over_b):
    mech = _mechanism_at_scale(small, dmax_over_b)
    g = -mech.gumbel.b * np.log(mech.truncated_exponential(np.random.default_rng(1), TAIL_DRAWS).astype(np.float64))
    assert g.min() >= -mech.gumbel.dmax * (1 + 1e-6) and g.max() <= mech.gumbel.dmax * (1 + 1e-6)
    assert _ks_distance(g, _truncated_gumbel_cdf(mech)) < _dkw_tolerance(TAIL_DRAWS)


@pytest.mark.parametrize("cls, ok", [(TruncatedGumbel, True), (Float32Draw, False)])
@pytest.mark.parametrize("dmax_over_b", [2.95, 3.5, 6.0])  # 2.95: the inverse-CDF branch, near its width limit
def test_noise_lower_tail_matches_the_truncated_gumbel(small, cls, ok, dmax_over_b):
    """Conditioned on E > E(x0 = 12), i.e. g < -2.48 b, the noise's CDF is the truncated Gumbel's
    conditioned the same way: KS within the DKW tolerance, and a binomial count of g < -3 b (expected
    N exp(-(e^3 - E0)) ~ 60 of 200,000; 5 standard deviations). The float32 draw stops at -2.81 b."""
    mech = _mechanism_at_scale(small, dmax_over_b, cls)
    x0 = 12.0
    e_lo, e_hi = _e_range(mech)  # X > x0 <=> u > 1 - e^-x0 <=> E > e0:
    e0 = e_lo - math.log(math.exp(-(e_hi - e_lo)) - math.expm1(-(e_hi - e_lo)) * math.exp(-x0))
    g = -mech.gumbel.b * np.log(mech.truncated_exponential(TailRng(5, x0), TAIL_DRAWS).astype(np.float64))
    cdf = _truncated_gumbel_cdf(mech, below_e=e0)
    deep = min(3.0, dmax_over_b - 0.08)  # below -2.81 b, where the float32 draw stops
    p_deep = float(cdf(-deep * mech.gumbel.b))
    expected, sd = TAIL_DRAWS * p_deep, math.sqrt(TAIL_DRAWS * p_deep * (1 - p_deep))
    assert expected > 30
    count = int((g < -deep * mech.gumbel.b).sum())
    passed = (_ks_distance(g, cdf) < _dkw_tolerance(TAIL_DRAWS)) and abs(count - expected) <= 5 * sd + 1
    assert passed == ok, (cls.__name__, count, expected, g.min() / mech.gumbel.b)


def test_unbounded_exponential_keeps_the_exponential_law(monkeypatch):
    """With the redraw level lowered to 1 most draws go through the memoryless step; the law must
    stay Exponential(1) (KS, DKW tolerance), and a broken step (no level added) must fail."""
    from dptext.transforms.mechanisms import truncated_gumbel

    monkeypatch.setattr(truncated_gumbel, "_TAIL_STEP", 1.0)
    x = truncated_gumbel.unbounded_exponential(np.random.default_rng(3), TAIL_DRAWS)
    assert _ks_distance(x, lambda t: -np.expm1(-t)) < _dkw_tolerance(TAIL_DRAWS)
    assert x.max() > 10

    def broken(rng, shape):  # a draw above 1 replaced by a fresh one: no tail
        y = rng.standard_exponential(shape)
        deep = y > 1.0
        y[deep] = rng.standard_exponential(deep.sum())
        return y

    y = broken(np.random.default_rng(3), TAIL_DRAWS)
    assert _ks_distance(y, lambda t: -np.expm1(-t)) > _dkw_tolerance(TAIL_DRAWS)


def test_guarantee_states_the_whole_vocabulary_lower_bound(small):
    """The Poisson k puts a word's last-ranked word among its candidates only when k = n - 1: the
    guarantee states the lower bound that follows, and the exact distribution meets it."""
    from dptext.transforms.mechanisms.candidates import poisson_tail_log_ratio_bound

    mech, P = _oracle(small, 1.5 * smallest_feasible_epsilon(small.n, small.dmin))
    bound = poisson_tail_log_ratio_bound(small.n)
    assert 0 < bound <= audit_pairs(P, pairwise_distances(small.vectors))["worst_log_ratio"]
    g = mech.guarantee().as_dict()
    assert g["worst_case_log_ratio_at_least"] == pytest.approx(bound) and f"{bound:.4g}" in g["statement"]
    assert g["per_token_pure_epsilon"] is None and "metric-DP" not in g["kind"]


def test_scale_at_the_next_float_above_the_floor_is_finite():
    """Every epsilon above the floor is feasible, including the next float: ln(a Dmin) used to be
    computed from a Dmin, which rounds to 1 (ln 0: b infinite or a division by zero) for about 0.5%
    of such epsilons; it is now ln(1 + (eps - floor) Dmin / 3)."""
    rng = np.random.default_rng(0)
    for _ in range(5000):
        n, dmin = int(rng.integers(2, 100_000)), float(rng.uniform(0.01, 5))
        dmax = dmin * float(rng.uniform(1, 30))
        eps = float(np.nextafter(smallest_feasible_epsilon(n, dmin), np.inf))
        b = gumbel_scale(eps, n, dmin, dmax)
        assert math.isfinite(b) and b > 0, (n, dmin, dmax)
