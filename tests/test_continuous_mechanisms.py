"""distance_truncated_laplace, mahalanobis and vickrey: the noise distributions themselves, the
post-processing step, the exact nearest search for noisy points, and broken variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import gammainc

from dptext.transforms import mechanisms
from dptext.transforms.mechanisms.distance_truncated_laplace import log_gamma_cdf, restricted_gamma
from dptext.transforms.mechanisms.mahalanobis import covariance_trace_d
from dptext.transforms.mechanisms.vickrey import Vickrey, first_of_two
from tests.conftest import build_random_index

# KS tests: fixed seeds, N = 20,000 draws; a correct sampler gives p ~ U(0, 1), so p < 1e-6 is a
# one-in-a-million false alarm, while a broken one (radius not restricted, clipped, renormalised
# noise) is off by far more than the KS resolution ~ 1.36 / sqrt(N) = 0.01 and gives p ~ 0.
N, P_MIN = 20_000, 1e-6


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_random_index(tmp_path_factory.mktemp("cont"), n=300, d=6, neighbours=12, seed=2)


def _restricted_cdf(d, eps, R):
    return lambda r: np.exp(log_gamma_cdf(d, eps * np.minimum(np.asarray(r), R)) - log_gamma_cdf(d, eps * R)[0])


@pytest.mark.parametrize("d, eps, R", [(6, 2.0, 4.0), (6, 2.0, 1.0), (300, 10.0, 40.0), (300, 1.0, 5.0)])
def test_restricted_gamma_follows_its_cdf(d, eps, R):
    """Both regimes: eps R >= d - 1 (inverse CDF) and below it (the exponential envelope); the
    last case has P(r <= R) = e^-727, below float64's smallest number."""
    r = restricted_gamma(np.random.default_rng(1), d, eps, R, N)
    assert r.max() <= R and r.min() > 0
    assert stats.kstest(r, _restricted_cdf(d, eps, R)).pvalue > P_MIN


@pytest.mark.parametrize(
    "d, eps, R",
    [(1, 2.0, 1.5), (1, 0.01, 0.25), (1, 1e-320, 0.25), (1, 1e-300, 0.25), (3, 5e-324, 1.4), (2, 1e-300, 1.0)],
)
def test_restricted_gamma_at_edge_parameters(d, eps, R):
    """One-dimensional embeddings and epsilons so small that eps R underflows (issue 12 #13): before
    the fix d = 1 with eps R below ~1e-308 gave r = 0 on every draw (no noise at all). As eps R -> 0
    the law tends to the density proportional to r^(d - 1) on [0, R], CDF (r / R)^d."""
    r = restricted_gamma(np.random.default_rng(1), d, eps, R, N)
    assert r.max() <= R and r.min() >= 0
    cdf = (lambda x: (np.minimum(x, R) / R) ** d) if eps * R < 1e-250 else _restricted_cdf(d, eps, R)
    assert stats.kstest(r, cdf).pvalue > P_MIN


@pytest.mark.parametrize("d", [1, 3])
def test_delta_at_vanishing_epsilon_is_the_uniform_ball_limit(tmp_path, d):
    """delta(D) -> 1 - ((R - D) / R)^d as eps -> 0; at 5e-324 eps (R - D) underflows to 0 (it was NaN)."""
    index = build_random_index(tmp_path, n=9, d=d, neighbours=4, seed=1)
    D = np.array([0.1, 0.5, 0.9])
    for eps in (5e-324, 1e-300, 1e-12):
        mech = mechanisms.create("distance_truncated_laplace", index, eps, radius=1.0)
        np.testing.assert_allclose(mech.delta(D), 1 - (1 - D) ** d, rtol=1e-9)


def test_log_gamma_cdf_matches_scipy_where_scipy_does_not_underflow():
    x = np.array([0.5, 3.0, 50.0, 250.0])
    np.testing.assert_allclose(np.exp(log_gamma_cdf(300, x)), gammainc(300, x), rtol=1e-10)
    assert np.isfinite(log_gamma_cdf(300, np.array([5.0]))[0]) and gammainc(300, 5.0) == 0


@pytest.mark.parametrize("broken", ["unrestricted", "clipped"])
def test_broken_radius_samplers_fail(broken):
    rng = np.random.default_rng(1)
    r = rng.gamma(6, 1 / 2.0, N)
    r = r if broken == "unrestricted" else np.minimum(r, 2.5)
    assert stats.kstest(r, _restricted_cdf(6, 2.0, 2.5)).pvalue < P_MIN


def test_delta_of_distance_matches_direct_integration(index):
    mech = mechanisms.create("distance_truncated_laplace", index, 2.0, radius=3.0)
    d, eps, R = index.d, 2.0, 3.0

    def density(r):
        return r ** (d - 1) * math.exp(-eps * r)

    total = integrate.quad(density, 0, R)[0]
    for D in (0.5, 1.5, 2.9):
        assert mech.delta(D)[0] == pytest.approx(integrate.quad(density, R - D, R)[0] / total, rel=1e-8)
    g = mech.guarantee().as_dict()
    assert g["per_token_pure_epsilon"] is None and "NOT" in g["statement"]
    assert all(0 <= row["delta"] <= 1 for row in g["delta_at_distance"].values())


def test_distance_truncated_default_radius_is_the_median_10th_neighbour_distance(index):
    mech = mechanisms.create("distance_truncated_laplace", index, 2.0)
    assert mech.R == pytest.approx(np.median(index.neighbour_distances[:, 10]))


def test_truncated_noise_direction_is_uniform_and_radius_restricted(index):
    mech = mechanisms.create("distance_truncated_laplace", index, 2.0, radius=2.0)
    z = mech.noise(np.random.default_rng(3), N)
    radius = np.linalg.norm(z, axis=1)
    assert stats.kstest(radius, _restricted_cdf(index.d, 2.0, 2.0)).pvalue > P_MIN
    # A uniform direction's first coordinate u has (u + 1) / 2 ~ Beta((d-1)/2, (d-1)/2).
    u = z[:, 0] / radius
    assert stats.kstest((u + 1) / 2, stats.beta((index.d - 1) / 2, (index.d - 1) / 2).cdf).pvalue > P_MIN


# ---- mahalanobis -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """An embedding whose covariance is far from isotropic (axis scales 0.2 to 3, correlated),
    so S differs from I and the shape of the noise is visible."""
    from dptext.transforms.index import EmbeddingIndex

    rng = np.random.default_rng(6)
    mix = rng.normal(size=(6, 6)) * np.array([0.2, 0.5, 1.0, 1.5, 2.0, 3.0])[:, None]
    vectors = (rng.normal(size=(300, 6)) @ mix).astype(np.float32)
    return EmbeddingIndex.build(
        [f"w{i}" for i in range(300)], vectors, tmp_path_factory.mktemp("skew"), neighbours=12, progress=False
    )


def _whitened_radius(mech, z):
    values, vecs = np.linalg.eigh(mech.sqrt_S @ mech.sqrt_S)
    whiten = (vecs / np.sqrt(values)) @ vecs.T
    return np.linalg.norm(z @ whiten, axis=1)


def test_mahalanobis_noise_is_gamma_in_the_whitened_metric_with_covariance_s(skewed):
    mech = mechanisms.create("mahalanobis", skewed, 3.0, regularization=0.7)
    S = 0.7 * covariance_trace_d(np.asarray(skewed.vectors)) + 0.3 * np.eye(skewed.d)
    np.testing.assert_allclose(mech.sqrt_S @ mech.sqrt_S, S, atol=1e-10)
    z = mech.noise(np.random.default_rng(4), N)
    assert stats.kstest(_whitened_radius(mech, z), stats.gamma(skewed.d, scale=1 / 3.0).cdf).pvalue > P_MIN
    # E[z z^T] = E[r^2] / d * S with E[r^2] = d (d + 1) / eps^2; entries within 5% (N = 20,000:
    # the relative standard error of a second moment is ~ sqrt(2 / N) x kurtosis factor ~ 2%).
    expected = (skewed.d + 1) / 9.0 * S
    np.testing.assert_allclose(z.T @ z / N, expected, atol=0.08 * np.abs(expected).max())


def test_renormalised_mahalanobis_noise_fails(skewed):
    mech = mechanisms.create("mahalanobis", skewed, 3.0, regularization=0.7)
    rng = np.random.default_rng(4)
    shaped = mech.noise(rng, N)
    renormalised = shaped / np.linalg.norm(shaped, axis=1, keepdims=True) * mech.radii(rng, N)[:, None]
    assert stats.kstest(_whitened_radius(mech, renormalised), stats.gamma(skewed.d, scale=1 / 3.0).cdf).pvalue < P_MIN


def test_mahalanobis_table_is_cached_and_guarantee_has_the_euclidean_rate(skewed):
    mech = mechanisms.create("mahalanobis", skewed, 3.0, regularization=0.7)
    assert any(k.startswith("mahalanobis_sqrt") for k in skewed.manifest["tables"])
    g = mech.guarantee().as_dict()
    assert g["euclidean_equivalent_rate"] == pytest.approx(3.0 / math.sqrt(mech.min_eigenvalue))
    assert g["per_token_pure_epsilon"] == pytest.approx(g["euclidean_equivalent_rate"] * skewed.dmax)
    with pytest.raises(ValueError, match="regularization"):
        mechanisms.create("mahalanobis", skewed, 3.0, regularization=1.5)


# ---- vickrey ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.0, 0.3, 0.75, 1.0])
def test_vickrey_choice_follows_its_formula(index, t):
    """The post-processing step alone: one noisy point, its two nearest words, 20,000 choices.
    The count of u1 is Binomial(N, p); |count - N p| < 5.3 sd is a one-in-ten-million false alarm."""
    mech = Vickrey(index, 5.0, threshold=t)
    rng = np.random.default_rng(7)
    point = np.asarray(index.vectors[5], dtype=np.float64) + 0.3
    pair = mech.base.nearest(np.array([5]), point[None, :], m=2)
    d1, d2 = np.linalg.norm(np.asarray(index.vectors, np.float64)[pair[0]] - point, axis=1)
    p = first_of_two(np.array([d1]), np.array([d2]), t)[0]
    chosen = mech.choose(np.repeat(pair, N, axis=0), np.repeat(point[None, :], N, axis=0), rng)
    count = (chosen == pair[0, 0]).sum()
    assert abs(count - N * p) <= 5.3 * math.sqrt(N * p * (1 - p)) + 1e-9
    if 0 < t < 1:  # the broken variant with t and 1 - t swapped is caught
        q = first_of_two(np.array([d1]), np.array([d2]), 1 - t)[0]
        assert abs(count - N * q) > 5.3 * math.sqrt(N * q * (1 - q)) or abs(p - q) < 1e-3


def test_vickrey_keeps_the_input_word_possible(index):
    out = mechanisms.create("vickrey", index, 50.0).perturb(np.full(2000, 7, dtype=np.int32), np.random.default_rng(2))
    assert (out == 7).any()
    assert mechanisms.create("vickrey", index, 5.0, base="mahalanobis").guarantee().mechanism == "vickrey"


# ---- the exact nearest search for noisy points ---------------------------------------------------
@pytest.mark.parametrize("m", [1, 2])
def test_nearest_to_noisy_matches_brute_force_on_both_paths(index, m):
    rng = np.random.default_rng(9)
    vectors = np.asarray(index.vectors, dtype=np.float64)
    ids = rng.integers(0, index.n, 3000).astype(np.int32)
    scale = np.repeat([0.05, 0.3, 1.0, 3.0, 10.0], 600)  # table path through full fallback
    points = vectors[ids] + scale[:, None] * rng.normal(size=(len(ids), index.d))
    got, dist = index.nearest_to_noisy(ids, points, m)
    full = np.linalg.norm(points[:, None, :] - vectors[None, :, :], axis=2)
    want = np.array([np.lexsort((np.arange(index.n), row))[:m] for row in full])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), rtol=1e-12)
    d_k = index.neighbour_distances[ids, -1]
    via_table = np.take_along_axis(full, want, 1)[:, -1] < d_k * (1 - 1e-5) - np.linalg.norm(
        points - vectors[ids], axis=1
    )
    assert 0.1 < via_table.mean() < 0.9  # both paths exercised
