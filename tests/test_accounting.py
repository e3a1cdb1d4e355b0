"""Per-document accounting: exact percentiles, merging, and composition checked against the exact
optimal composition of pure-DP events (Kairouz, Oh, Viswanath 2015)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import comb

from transforms.accounting import CorpusAccount, DocumentAccount, basic_bound, composed_bound


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
    assert _exact_delta(epsilon, tokens, bound) <= delta * (1 + 1e-6)       # a valid (eps, delta) pair
    # Not needlessly loose: 2% less epsilon (or 0.01) already violates delta, unless basic is tight.
    smaller = bound - max(0.01, 0.02 * bound)
    if bound < basic_bound(tokens, epsilon) - 1e-9:
        assert _exact_delta(epsilon, tokens, smaller) > delta


def test_composition_of_zero_tokens_is_zero():
    assert composed_bound(0, 5.0, 1e-6) == 0.0 and basic_bound(0, 5.0) == 0.0
