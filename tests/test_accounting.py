"""Per-document accounting: exact percentiles, merging, and composition checked against the exact
optimal composition of pure-DP events (Kairouz, Oh, Viswanath 2015)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import comb

from dptext.transforms.accounting import CorpusAccount, DocumentAccount, basic_bound, composed_bound


def _exact_delta(epsilon: float, tokens: int, target: float) -> float:
    """delta(target) of `tokens`-fold composed pure epsilon-DP: the randomized-response worst case.

    The privacy loss is (T - 2l) eps with probability C(T, l) e^{eps (T - l)} / (1 + e^eps)^T.
    """
    total = 0.0
    for l in range(tokens + 1):
        p = comb(tokens, l) * math.exp(epsilon * (tokens - l) - tokens * math.log1p(math.exp(epsilon)))
        loss = (tokens - 2 * l) * epsilon
        total += p * max(0.0, 1 - math.exp(target - loss))
    return total


def test_percentiles_are_exact_nearest_rank():
    account = CorpusAccount()
    counts = [0, 3, 3, 5, 8, 13, 21, 34, 55, 89]
    for c in counts:
        account.add(DocumentAccount(tokens=c + 1, perturbed=c, changed=c // 2, oov=1))
    p = account.perturbed_percentiles()
    ordered = sorted(counts)
    assert p == {"p50": ordered[4], "p90": ordered[8], "p99": ordered[9], "max": 89}
    assert (account.documents, account.tokens, account.oov) == (10, sum(counts) + 10, 10)


def test_merge_equals_adding_everything_to_one_account():
    rng = np.random.default_rng(1)
    docs = [DocumentAccount(int(t), int(t) - 1, 0, 1) for t in rng.integers(1, 50, 200)]
    whole = CorpusAccount()
    for d in docs:
        whole.add(d)
    parts = [CorpusAccount() for _ in range(3)]
    for i, d in enumerate(docs):
        parts[i % 3].add(d)
    merged = CorpusAccount()
    for part in parts:
        merged.merge(part)
    assert merged == whole
    assert CorpusAccount().perturbed_percentiles() == {}


@pytest.mark.parametrize("epsilon, tokens", [(0.1, 50), (0.5, 20), (1.0, 10), (3.0, 4)])
def test_composed_bound_is_valid_and_near_the_exact_optimum(epsilon, tokens):
    delta = 1e-6
    bound = composed_bound(tokens, epsilon, delta)
    assert bound <= basic_bound(tokens, epsilon) + 1e-12
    assert _exact_delta(epsilon, tokens, bound) <= delta * (1 + 1e-6)  # a valid (eps, delta) pair
    # Not needlessly loose: 2% less epsilon (or 0.01) already violates delta, unless basic is tight.
    smaller = bound - max(0.01, 0.02 * bound)
    if bound < basic_bound(tokens, epsilon) - 1e-9:
        assert _exact_delta(epsilon, tokens, smaller) > delta


def test_composition_of_zero_tokens_is_zero():
    assert composed_bound(0, 5.0, 1e-6) == 0.0 and basic_bound(0, 5.0) == 0.0


@pytest.mark.parametrize("epsilon, tokens", [(0.05, 1000), (0.1, 50), (2.0, 300), (3.0, 4)])
def test_composed_bound_agrees_with_dp_accounting_pld(epsilon, tokens):
    """dp_accounting's PLD of the same events is a pessimistic discretisation of the same exact
    distribution: it may only be larger, by at most its grid (tokens x step), never smaller."""
    from dp_accounting.pld import common, privacy_loss_distribution

    step = epsilon / 1000
    pld = privacy_loss_distribution.from_privacy_parameters(
        common.DifferentialPrivacyParameters(epsilon, 0.0), value_discretization_interval=step
    )
    reference = min(pld.self_compose(tokens).get_epsilon_for_delta(1e-6), basic_bound(tokens, epsilon))
    exact = composed_bound(tokens, epsilon, 1e-6)
    assert exact <= reference + 1e-9
    assert reference - exact <= tokens * step


def test_composition_of_one_long_document_is_bounded_in_memory():
    """Issue 12 #15: one 200,000-token document at per-token epsilon 0.05 took 39 s and 3.4 GB
    (a PLD grid of T x eps / step points). The exact sum only touches the binomial's central
    window: a few MB at 200,000 tokens and at 20 million."""
    import tracemalloc

    composed_bound.cache_clear()
    tracemalloc.start()
    try:
        long_doc = composed_bound(200_000, 0.05, 1e-6)
        huge_doc = composed_bound(20_000_000, 0.05, 1e-6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64e6
    # Far below the basic sum, and a valid bound: sqrt(2 T ln(1/delta)) eps + T eps^2 / 2 (the
    # advanced composition bound, valid but looser) is above it.
    for tokens, bound in ((200_000, long_doc), (20_000_000, huge_doc)):
        advanced = math.sqrt(2 * tokens * math.log(1e6)) * 0.05 + tokens * 0.05 * math.expm1(0.05)
        assert 0 < bound < advanced < basic_bound(tokens, 0.05)


def test_composition_at_extreme_per_token_epsilons():
    assert composed_bound(5, 1000.0, 1e-6) == pytest.approx(5000.0, rel=1e-6)  # no overflow of e^eps
    assert composed_bound(3, 1e-300, 1e-6) == 0.0
    assert composed_bound(100, 1e300, 0.5) == basic_bound(100, 1e300)
