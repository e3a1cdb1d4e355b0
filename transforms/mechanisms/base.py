"""What every mechanism is: a protocol, the registry, and sampling helpers they share."""
from __future__ import annotations

import math
import sys
from typing import Callable, Protocol

import numpy as np
from dptext.transforms.errors import DptextError


class Mechanism(Protocol):
    name: str
    epsilon: float

    def perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One output vocabulary id per input id (all ids >= 0), batched."""

    def params(self) -> dict:
        """Every parameter that determines the output distribution (for the report)."""

    def guarantee(self) -> dict:
        """The privacy statement the report prints: kind, rate, what is not protected."""


class InfeasibleEpsilonError(DptextError, ValueError):
    """The requested epsilon cannot be met by this mechanism on this index."""

    def __init__(self, message: str, smallest_feasible: float):
        super().__init__(message)
        self.smallest_feasible = smallest_feasible


class EpsilonOutOfRangeError(InfeasibleEpsilonError):
    """The requested epsilon lies outside the range this mechanism computes on this index."""

    def __init__(self, message: str, smallest_feasible: float, largest_feasible: float):
        super().__init__(message, smallest_feasible)
        self.largest_feasible = largest_feasible


FLOAT_MAX = sys.float_info.max
TOO_LARGE = ("above it epsilon x Dmax, the per-token bound the report composes, is not a finite float64; "
             "any epsilon near the largest already keeps every word (its outputs equal its inputs)")


def largest_epsilon(dmax: float, per_unit_distance: float = 1.0) -> float:
    """The largest epsilon whose per-token bound epsilon x per_unit_distance x Dmax stays finite (with a
    margin of 1e-12 for the roundings of that product)."""
    return FLOAT_MAX / (max(dmax, 1e-300) * per_unit_distance) * (1 - 1e-12)


def check_epsilon_range(name: str, epsilon: float, smallest: float, largest: float, below: str,
                        above: str = TOO_LARGE) -> float:
    """Refuse an epsilon outside [smallest, largest] with the range and the reason for the bound it broke."""
    if not smallest <= epsilon <= largest:
        raise EpsilonOutOfRangeError(
            f"epsilon {epsilon:g} is outside the range {name} supports on this index, "
            f"[{smallest:.6g}, {largest:.6g}]: {below if epsilon < smallest else above}", smallest, largest)
    return epsilon


_REGISTRY: dict[str, Callable[..., Mechanism]] = {}


def register(name: str):
    def decorate(factory):
        _REGISTRY[name] = factory
        return factory
    return decorate


def registered() -> dict[str, Callable[..., Mechanism]]:
    return _REGISTRY


def check_epsilon(epsilon) -> float:
    """The one place epsilon is validated: a finite positive number."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a number, got {epsilon!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return value


def as_ids(ids, n: int) -> np.ndarray:
    """Validate a batch of vocabulary ids (int32, 0 <= id < n)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("ids must be a 1-d integer array")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"ids must be vocabulary ids in [0, {n}); out-of-vocabulary tokens are "
                         "handled by the OOV policy before the mechanism")
    return ids.astype(np.int32, copy=False)


def truncated_poisson(rng: np.random.Generator, lam: float, low: int, high: int, size: int) -> np.ndarray:
    """Poisson(lam) conditioned on low <= k <= high: draw again for the draws outside.

    Redraws are batched (one call per round for all rejected draws, not a loop per token).
    """
    if low > high:
        raise ValueError(f"empty support [{low}, {high}]")
    k = rng.poisson(lam, size)
    bad = np.flatnonzero((k < low) | (k > high))
    while bad.size:
        k[bad] = rng.poisson(lam, bad.size)
        bad = bad[(k[bad] < low) | (k[bad] > high)]
    return k


def unit_directions(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """m directions uniform on the unit sphere in R^d (normalised standard normals)."""
    u = rng.standard_normal((m, d))
    return u / np.linalg.norm(u, axis=1, keepdims=True)
