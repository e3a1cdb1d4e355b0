"""multivariate_laplace: the noise radius is Gamma(d, 1/eps), its direction uniform on the sphere,
and the output is the vocabulary word nearest to the noisy vector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dptext.transforms import mechanisms
from dptext.transforms.mechanisms.base import EpsilonOutOfRangeError, unit_directions
from dptext.transforms.mechanisms.multivariate_laplace import MultivariateLaplace

DRAWS = 20_000
# KS tests at a fixed seed, with scipy's exact p-value: a correct sampler fails with probability
# 1e-4. The KS distance sup |F_N - F| that reaches p = 1e-4 is about sqrt(ln(2 / 1e-4) / 2) / sqrt(N)
# = 2.2 / sqrt(N) (1.36 / sqrt(N) at p = 0.05): with N = 20,000 draws any CDF error above ~0.016
# is caught, and four times the draws would halve that.
P_MIN = 1e-4


@pytest.fixture(scope="module")
def index(random_index):
    return random_index(n=60, d=7, neighbours=5, seed=2)


def _noise(mech, index, seed=0):
    ids = np.full(DRAWS, 3, dtype=np.int32)
    return mech.noisy_vectors(ids, np.random.default_rng(seed)) - index.vectors[3].astype(np.float64)


class HalfRadius(MultivariateLaplace):
    """Broken: radius at twice the rate (Gamma(d, 1/(2 eps)))."""

    def noisy_vectors(self, ids, rng):
        base = self.index.vectors[ids].astype(np.float64)
        return base + (super().noisy_vectors(ids, rng) - base) / 2


class ExponentialRadius(MultivariateLaplace):
    """Broken: radius ~ Exponential(1/eps) (the one-dimensional Laplace radius) instead of Gamma(d, 1/eps)."""

    def noisy_vectors(self, ids, rng):
        r = rng.exponential(1 / self.epsilon, len(ids))
        return self.index.vectors[ids] + r[:, None] * unit_directions(rng, len(ids), self.index.d)


class GaussianNotNormalised(MultivariateLaplace):
    """Broken: the Gaussian direction is not normalised (radius r |u| instead of r)."""

    def noisy_vectors(self, ids, rng):
        r = rng.gamma(self.index.d, 1 / self.epsilon, len(ids))
        return self.index.vectors[ids] + r[:, None] * rng.standard_normal((len(ids), self.index.d))


class CubeDirection(MultivariateLaplace):
    """Broken: direction uniform in the cube, then normalised (not uniform on the sphere)."""

    def noisy_vectors(self, ids, rng):
        r = rng.gamma(self.index.d, 1 / self.epsilon, len(ids))
        x = rng.uniform(-1, 1, (len(ids), self.index.d))
        return self.index.vectors[ids] + r[:, None] * x / np.linalg.norm(x, axis=1, keepdims=True)


def _radius_p(mech, index):
    r = np.linalg.norm(_noise(mech, index), axis=1)
    return stats.kstest(r, stats.gamma(a=index.d, scale=1 / mech.epsilon).cdf).pvalue


def _direction_p(mech, index):
    """Bonferroni-combined KS p-value of the projections on a coordinate axis and a diagonal."""
    noise = _noise(mech, index, seed=1)
    x = noise / np.linalg.norm(noise, axis=1, keepdims=True)
    half = (index.d - 1) / 2
    axes = (np.eye(index.d)[0], np.ones(index.d) / np.sqrt(index.d))
    return min(1.0, 2 * min(stats.kstest((1 + x @ u) / 2, stats.beta(half, half).cdf).pvalue for u in axes))


def test_radius_is_gamma_d_over_epsilon(index):
    mech = mechanisms.create("multivariate_laplace", index, 2.5)
    assert _radius_p(mech, index) > P_MIN


@pytest.mark.parametrize("broken", [HalfRadius, ExponentialRadius, GaussianNotNormalised])
def test_broken_radius_fails(index, broken):
    assert _radius_p(broken(index, 2.5), index) < P_MIN


def test_direction_is_uniform_on_the_sphere(index):
    mech = mechanisms.create("multivariate_laplace", index, 2.5)
    # For x uniform on S^{d-1}, (1 + u.x) / 2 ~ Beta((d-1)/2, (d-1)/2) for any unit u.
    assert _direction_p(mech, index) > P_MIN
    assert _direction_p(CubeDirection(index, 2.5), index) < P_MIN
    noise = _noise(mech, index, seed=2)
    x = noise / np.linalg.norm(noise, axis=1, keepdims=True)
    # Each coordinate's mean is 0 with standard error 1/sqrt(d N); 5 standard errors.
    assert np.abs(x.mean(axis=0)).max() < 5 / np.sqrt(index.d * DRAWS)


@pytest.mark.parametrize("search", ["exact", "annoy"])
def test_output_is_the_nearest_word_to_the_noisy_vector(index, search):
    mech = mechanisms.create("multivariate_laplace", index, 4.0, search=search, search_k=100_000)
    ids = np.random.default_rng(5).integers(0, index.n, 2000).astype(np.int32)
    noisy = mech.noisy_vectors(ids, np.random.default_rng(9))
    out = mech.perturb(ids, np.random.default_rng(9))  # the same seed draws the same noise
    v = index.vectors.astype(np.float64)
    nearest = ((noisy[:, None, :] - v[None]) ** 2).sum(-1).argmin(axis=1)
    agreement = (out == nearest).mean()
    assert agreement == 1.0 if search == "exact" else agreement >= 0.9


def test_guarantee_is_metric_dp_at_epsilon(index):
    g = mechanisms.create("multivariate_laplace", index, 4.0).guarantee().as_dict()
    assert g["kind"] == "metric-DP" and g["rate"] == 4.0
    assert g["per_token_pure_epsilon"] == pytest.approx(4.0 * index.dmax)


def test_unknown_parameters_and_names_are_clear_errors(index):
    with pytest.raises(ValueError, match="unknown mechanism 'nope'"):
        mechanisms.create("nope", index, 1.0)
    with pytest.raises(ValueError, match="has no parameter radius"):
        mechanisms.create("multivariate_laplace", index, 1.0, radius=3)
    with pytest.raises(ValueError, match="unknown nearest-word search"):
        mechanisms.create("multivariate_laplace", index, 1.0, search="kd")
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        mechanisms.create("multivariate_laplace", index, -1.0)


# ---- the epsilon range (issue 12 #13): every epsilon that passes validation runs -----------------
@pytest.mark.parametrize("name", ["multivariate_laplace", "mahalanobis", "vickrey"])
@pytest.mark.parametrize("epsilon", [1e-300, 1e-40, 5e-324])
def test_an_epsilon_too_small_to_compute_is_refused_with_the_valid_range(index, name, epsilon):
    """1e-40 used to pass validation and crash inside the job (a noise radius of ~1e41 overflows the
    float32 screen of the nearest-word search). Now it is refused, naming the range and why; both
    ends of the range run."""
    with pytest.raises(
        EpsilonOutOfRangeError, match=r"outside the range .* supports on this index, \[.*\]: below it"
    ) as err:
        mechanisms.create(name, index, epsilon)
    low, high = err.value.smallest_feasible, err.value.largest_feasible
    assert epsilon < low < 1e-3 and high > 1e300
    ids = np.arange(index.n, dtype=np.int32)
    for eps in (low, high):
        mech = mechanisms.create(name, index, eps)
        out = mech.perturb(ids, np.random.default_rng(0))
        assert out.min() >= 0 and out.max() < index.n
        assert np.isfinite(mech.guarantee().per_token_pure_epsilon)
    with pytest.raises(EpsilonOutOfRangeError, match="above it epsilon x Dmax"):
        mechanisms.create(name, index, np.nextafter(high, np.inf) * 1.01)


def test_annoy_search_returning_too_few_words_falls_back_to_exact(index, random_index):
    """search_k = 1 can make Annoy return fewer than the two words vickrey asks for (it did on a
    one-dimensional embedding, and the batch crashed): those points are searched exactly."""
    line = random_index(n=9, d=1, neighbours=8, seed=1)
    mech = mechanisms.create("vickrey", line, 2.0, search="annoy", search_k=1)
    out = mech.perturb(np.arange(line.n, dtype=np.int32).repeat(20), np.random.default_rng(0))
    assert out.min() >= 0 and out.max() < line.n
    with pytest.raises(ValueError, match=r"search_k must be -1 \(Annoy's default\) or in \[1, 2147483647\]"):
        mechanisms.create("multivariate_laplace", index, 2.0, search="annoy", search_k=2**40)
