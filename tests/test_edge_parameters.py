"""The edge-parameter sweep of issue 12: every mechanism, on tiny real indexes (2, 3 and 9 words with
K = n - 1, a short table, duplicate vectors, a one-dimensional embedding), at the smallest and the
largest epsilon validation accepts and with each parameter at its extremes. Each case either runs
(create, perturb a small batch, guarantee) within the per-test time limit, with every output a valid
id and a guarantee free of NaN, or is refused with a ValueError that names the parameter and what
is valid. Nothing may hang or crash inside a job.
"""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from dptext.transforms import mechanisms
from dptext.transforms.index import EmbeddingIndex
from dptext.transforms.mechanisms.base import EpsilonOutOfRangeError, InfeasibleEpsilonError
from dptext.transforms.mechanisms.custext import MAX_SET_SIZE as CUSTEXT_MAX_SET_SIZE
from dptext.transforms.mechanisms.kde_prior import MAX_CHAIN_LENGTH
from dptext.transforms.mechanisms.multivariate_laplace import SEARCH_K_MAX
from tests.conftest import build_random_index

TINY = math.ulp(0.0)  # 5e-324, the smallest positive float
HUGE = np.finfo(np.float64).max  # 1.8e308

INDEXES = ("n2", "n3", "n9", "n9_short_table", "dup3", "dup9", "line9")


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """Real index directories (Annoy file and all). n2, n3, n9: K = n - 1; n9_short_table: K = 2;
    dup3, dup9: the last word shares the first word's vector (distance 0 between distinct words),
    K = n - 1; line9: a one-dimensional embedding, K = n - 1."""

    def build(name, n, d, neighbours, duplicate=False):
        path = tmp_path_factory.mktemp(name)
        if not duplicate:
            return build_random_index(path, n, d, neighbours, seed=n + d)
        vectors = np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)
        vectors[-1] = vectors[0]
        return EmbeddingIndex.build([f"w{i}" for i in range(n)], vectors, path, neighbours=neighbours, progress=False)

    return {
        "n2": build("n2", 2, 3, 1),
        "n3": build("n3", 3, 3, 2),
        "n9": build("n9", 9, 3, 8),
        "n9_short_table": build("n9s", 9, 3, 2),
        "dup3": build("dup3", 3, 3, 2, True),
        "dup9": build("dup9", 9, 3, 8, True),
        "line9": build("line9", 9, 1, 8),
    }


def _params(name: str, index) -> list[dict]:
    """Each mechanism's parameters at their extremes (and its defaults)."""
    n = index.n
    return {
        "truncated_gumbel": [{}],
        "multivariate_laplace": [
            {},
            {"search": "annoy", "search_k": 1},
            {"search": "annoy", "search_k": SEARCH_K_MAX},
            {"search": "annoy", "search_k": SEARCH_K_MAX + 1},
            {"search_k": 0},
        ],
        "distance_truncated_laplace": [
            {},
            {"radius": float(np.nextafter(index.dmin, np.inf))},
            {"radius": 1e300},
            {"radius": index.dmin},
            {"radius": -1.0},
        ],
        "mahalanobis": [
            {"regularization": 0.0},
            {"regularization": 1.0},
            {"regularization": 1e-300},
            {"regularization": 1.5},
        ],
        "vickrey": [
            {"threshold": 0.0},
            {"threshold": 1.0},
            {"threshold": 1.5},
            {"base": "mahalanobis", "regularization": 1.0},
            {"search": "annoy", "search_k": 1},
        ],
        "tem": [{"beta": TINY}, {"beta": 1e-300}, {"beta": float(np.nextafter((n - 1) / n, 0))}, {"beta": (n - 1) / n}],
        "kde_prior": [
            {"alpha": 0.0},
            {"alpha": 1e300},
            {"alpha": HUGE},
            {"alpha": -1e-300},
            {"bandwidth_scale": 1e300},
            {"bandwidth_scale": 1e-300},
            {"sampler": "mh", "chain_length": 1},
            {"sampler": "mh", "chain_length": 3000, "alpha": 50.0},
            {"sampler": "mh", "chain_length": MAX_CHAIN_LENGTH + 1},
        ],
        "knn_exponential": [
            {"candidates": 0},
            {"candidates": 1},
            {"candidates": n - 1},
            {"candidates": -1},
            {"candidates": index.neighbours + 1},
        ],
        "diffractor": [{"lists": 1}, {"lists": 32}, {"lists": 0}, {"lists": 33}],
        "santext": [{}],
        "syntf": [{}],
        "santext_plus": [
            {},
            {"sensitive_fraction": 1.0},
            {"sensitive_fraction": 1.0 / n},
            {"sensitive_fraction": TINY},
            {"sensitive_fraction": 1.5},
            {"replace_probability": 0.0},
            {"replace_probability": 1.0},
            {"replace_probability": -TINY},
        ],
        "custext": [
            {},
            {"set_size": 2},
            {"set_size": max(2, n - 1)},
            {"set_size": CUSTEXT_MAX_SET_SIZE},
            {"set_size": CUSTEXT_MAX_SET_SIZE + 1},
            {"set_size": 1},
            {"stop_words": "keep", "set_size": 2},
        ],
    }[name]


_SHAPE = SimpleNamespace(n=9, dmin=1.0, neighbours=8)  # the number of cases does not depend on the index
CASES = [(name, which, i) for name in mechanisms.NAMES for which in INDEXES for i in range(len(_params(name, _SHAPE)))]


def _valid_refusal(err: ValueError, params: dict, name: str) -> None:
    """A refusal names what was wrong (the epsilon or one of the parameters given, or with none given,
    one of the mechanism's parameters at its default) and what is valid."""
    message = str(err)
    if isinstance(err, InfeasibleEpsilonError):
        assert "epsilon" in message and re.search(r"smallest feasible epsilon is|\[[-0-9.e+]+, [-0-9.e+]+\]", message)
        return
    candidates = params or {p.name for p in mechanisms.REGISTRY[name].parameters()}
    named = [p for p in candidates if p in message]
    assert named, f"refusal names none of {sorted(candidates)}: {message}"
    assert re.search(r"must be|valid|choose|give|smallest|largest|\[|<|>", message), message


def _epsilons(name: str, index, params: dict) -> list[float]:
    """The smallest and largest epsilon validation accepts (probed at 5e-324 and 1.8e308: a refusal
    states the range), and one ordinary epsilon between them."""

    def probe(eps):
        try:
            mechanisms.create(name, index, eps, **params)
            return eps
        except InfeasibleEpsilonError as err:
            _valid_refusal(err, params, name)
            if eps == TINY:  # truncated_gumbel's floor itself is infeasible: the next float above it
                return (
                    err.smallest_feasible
                    if isinstance(err, EpsilonOutOfRangeError)
                    else float(np.nextafter(err.smallest_feasible, np.inf))
                )
            return err.largest_feasible

    low, high = probe(TINY), probe(HUGE)
    middle = 1.5 * low if name == "truncated_gumbel" else min(max(1.0, low), high)
    return sorted({low, middle, high})


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name, which, case", CASES, ids=[f"{n}-{w}-{i}" for n, w, i in CASES])
def test_every_call_runs_or_is_refused_clearly(indexes, name, which, case):
    index = indexes[which]
    params = _params(name, index)[case]
    try:
        epsilons = _epsilons(name, index, params)
    except InfeasibleEpsilonError:
        raise
    except ValueError as err:  # the parameters themselves are refused
        _valid_refusal(err, params, name)
        return
    ids = np.tile(np.arange(index.n, dtype=np.int32), 4)
    for eps in epsilons:
        mech = mechanisms.create(name, index, eps, **params)
        out = mech.perturb(ids, np.random.default_rng(0))
        assert out.shape == ids.shape and np.issubdtype(out.dtype, np.integer)
        assert out.min() >= 0 and out.max() < index.n, (eps, out)
        assert len(mech.perturb(np.empty(0, dtype=np.int32), np.random.default_rng(1))) == 0
        g = mech.guarantee().as_dict()
        text = json.dumps(g, allow_nan=False)
        assert '"nan"' not in text and g["statement"] and g["not_protected"], (eps, g)
        if g.get("per_token_pure_epsilon") is not None:
            assert math.isfinite(g["per_token_pure_epsilon"]), (eps, g["per_token_pure_epsilon"])


@pytest.mark.parametrize("name", mechanisms.NAMES)
def test_epsilons_beyond_the_accepted_range_are_refused_with_the_range(indexes, name):
    """Just outside the range found by the sweep: refused, naming epsilon and the range."""
    index = indexes["n9"]
    low, *_, high = _epsilons(name, index, {})
    for eps in (float(np.nextafter(low, 0)), float(np.nextafter(high, np.inf))):
        if eps in (0.0, math.inf):  # the range reaches the ends of the floats: check_epsilon refuses these
            with pytest.raises(ValueError, match=r"epsilon must be a finite number > 0"):
                mechanisms.create(name, index, eps)
            continue
        with pytest.raises(InfeasibleEpsilonError, match="epsilon") as err:
            mechanisms.create(name, index, eps)
        _valid_refusal(err.value, {}, name)
