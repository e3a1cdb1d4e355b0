"""Word-level mechanisms: `create(name, index, epsilon, **params)`, `NAMES` and the `REGISTRY` they
come from (one class per mechanism, listed here)."""

from __future__ import annotations

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.base import (
    EpsilonOutOfRangeError,
    InfeasibleEpsilonError,
    Mechanism,
    Parameter,
    check_epsilon,
)
from dptext.transforms.mechanisms.custext import CusText
from dptext.transforms.mechanisms.diffractor import Diffractor
from dptext.transforms.mechanisms.distance_truncated_laplace import DistanceTruncatedLaplace
from dptext.transforms.mechanisms.guarantee import NOT_PROTECTED, Claim, Guarantee
from dptext.transforms.mechanisms.kde_prior import KDEPrior
from dptext.transforms.mechanisms.knn_exponential import KNNExponential
from dptext.transforms.mechanisms.mahalanobis import Mahalanobis
from dptext.transforms.mechanisms.multivariate_laplace import MultivariateLaplace
from dptext.transforms.mechanisms.santext import SanText, SanTextPlus
from dptext.transforms.mechanisms.syntf import SynTF
from dptext.transforms.mechanisms.tem import TEM
from dptext.transforms.mechanisms.truncated_gumbel import TruncatedGumbel
from dptext.transforms.mechanisms.vickrey import Vickrey

MECHANISMS: tuple[type[Mechanism], ...] = (
    TruncatedGumbel,
    MultivariateLaplace,
    DistanceTruncatedLaplace,
    KNNExponential,
    KDEPrior,
    Mahalanobis,
    Vickrey,
    TEM,
    SanText,
    SanTextPlus,
    CusText,
    Diffractor,
    SynTF,
)
REGISTRY: dict[str, type[Mechanism]] = {cls.name: cls for cls in MECHANISMS}
NAMES = tuple(sorted(REGISTRY))


def create(name: str, index, epsilon: float, **params) -> Mechanism:
    """Build a mechanism over an index; unknown names and parameters are clear errors."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise ParameterError(f"unknown mechanism {name!r}; valid: {', '.join(NAMES)}")
    check_epsilon(epsilon)
    accepted = {p.name for p in cls.parameters()}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ParameterError(
            f"mechanism {name!r} has no parameter {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(index, epsilon, **params)


__all__ = [
    "MECHANISMS",
    "NAMES",
    "REGISTRY",
    "create",
    "Guarantee",
    "Claim",
    "NOT_PROTECTED",
    "Mechanism",
    "Parameter",
    "InfeasibleEpsilonError",
    "EpsilonOutOfRangeError",
]
