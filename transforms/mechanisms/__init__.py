"""Word-level mechanisms: `create(name, index, epsilon, **params)` and `NAMES`."""
from __future__ import annotations

import inspect

from dptext.transforms.mechanisms import multivariate_laplace, truncated_gumbel  # noqa: F401  (registers)
from dptext.transforms.mechanisms import kde_prior  # noqa: F401
from dptext.transforms.mechanisms import knn_exponential  # noqa: F401
from dptext.transforms.mechanisms import tem  # noqa: F401
from dptext.transforms.mechanisms import distance_truncated_laplace, mahalanobis, vickrey  # noqa: F401
from dptext.transforms.mechanisms.base import InfeasibleEpsilonError, Mechanism, check_epsilon, registered

NAMES = tuple(sorted(registered()))


def create(name: str, index, epsilon: float, **params) -> Mechanism:
    """Build a mechanism over an index; unknown names and parameters are clear errors."""
    factory = registered().get(name)
    if factory is None:
        raise ValueError(f"unknown mechanism {name!r}; valid: {', '.join(NAMES)}")
    check_epsilon(epsilon)
    accepted = set(inspect.signature(factory).parameters) - {"index", "epsilon"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"mechanism {name!r} has no parameter {', '.join(unknown)}; "
                         f"it accepts: {', '.join(sorted(accepted)) or 'none'}")
    return factory(index, epsilon, **params)


__all__ = ["NAMES", "create", "InfeasibleEpsilonError", "Mechanism"]
