"""What every mechanism is: the base class, how a mechanism declares its parameters, the epsilon
checks they share, and sampling helpers.

A mechanism is a class with a `name`, a frozen `Params` dataclass (each field declared with
`parameter(default, help, choices)`: the `dptext run` options and the Flex Template metadata are
generated from these), `_perturb` and `compute_guarantee`. The base class validates epsilon and
the ids once, and keeps the guarantee once computed.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dptext.transforms.errors import ParameterError
from dptext.transforms.mechanisms.guarantee import Guarantee


class InfeasibleEpsilonError(ParameterError):
    """The requested epsilon cannot be met by this mechanism on this index."""

    def __init__(self, message: str, smallest_feasible: float):
        super().__init__(message)
        self.smallest_feasible = smallest_feasible


class EpsilonOutOfRangeError(InfeasibleEpsilonError):
    """The requested epsilon lies outside the range this mechanism computes on this index."""

    def __init__(self, message: str, smallest_feasible: float, largest_feasible: float):
        super().__init__(message, smallest_feasible)
        self.largest_feasible = largest_feasible


# ---- parameters ---------------------------------------------------------------------------
def parameter(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A field of a mechanism's Params dataclass: its default, the help text of its `dptext run`
    option (and template parameter), and its valid values when they are a fixed set."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Parameter:
    """One declared mechanism parameter, as the CLI and the template metadata see it."""

    name: str
    default: Any
    help: str
    choices: tuple | None = None


def parameters_of(params_type: type) -> tuple[Parameter, ...]:
    """The declared parameters of a Params dataclass, in field order."""
    return tuple(
        Parameter(f.name, f.default, f.metadata["help"], f.metadata.get("choices"))
        for f in dataclasses.fields(params_type)
        if f.init
    )


@dataclass(frozen=True)
class NoParameters:
    """The parameters of a mechanism that takes none besides epsilon."""


# ---- the base class -----------------------------------------------------------------------
class Mechanism(abc.ABC):
    """A word-level mechanism over an index: one output vocabulary id per input id."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParameters

    def __init__(self, index, epsilon: float, *args, **kwargs):
        """epsilon is checked (a finite number > 0) and the parameters validated (Params'
        __post_init__) before a subclass looks at the index."""
        self.index = index
        self.epsilon = check_epsilon(epsilon)
        self.p = self.Params(*args, **kwargs)
        self._guarantee: Guarantee | None = None

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        return parameters_of(cls.Params)

    def perturb(self, ids, rng: np.random.Generator) -> np.ndarray:
        """One output vocabulary id per input id (all ids >= 0), batched."""
        ids = as_ids(ids, self.index.n)
        if not len(ids):
            return np.empty(0, dtype=np.int32)
        return self._perturb(ids, rng)

    @abc.abstractmethod
    def _perturb(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """perturb for a non-empty batch of validated int32 vocabulary ids."""

    @abc.abstractmethod
    def params(self) -> dict:
        """Every parameter that determines the output distribution (for the report)."""

    def guarantee(self) -> Guarantee:
        """The privacy statement the report prints (computed once per mechanism: some audit)."""
        if self._guarantee is None:
            self._guarantee = self.compute_guarantee()
        return self._guarantee

    @abc.abstractmethod
    def compute_guarantee(self) -> Guarantee:
        """What this mechanism may claim on this index."""


# ---- epsilon ------------------------------------------------------------------------------
FLOAT_MAX = sys.float_info.max
TOO_LARGE = (
    "above it epsilon x Dmax, the per-token bound the report composes, is not a finite float64; "
    "any epsilon near the largest already keeps every word (its outputs equal its inputs)"
)


def largest_epsilon(dmax: float, per_unit_distance: float = 1.0) -> float:
    """The largest epsilon whose per-token bound epsilon x per_unit_distance x Dmax stays finite (with a
    margin of 1e-12 for the roundings of that product)."""
    return FLOAT_MAX / (max(dmax, 1e-300) * per_unit_distance) * (1 - 1e-12)


def check_epsilon_range(
    name: str, epsilon: float, smallest: float, largest: float, below: str, above: str = TOO_LARGE
) -> float:
    """Refuse an epsilon outside [smallest, largest] with the range and the reason for the bound it broke."""
    if not smallest <= epsilon <= largest:
        raise EpsilonOutOfRangeError(
            f"epsilon {epsilon:g} is outside the range {name} supports on this index, "
            f"[{smallest:.6g}, {largest:.6g}]: {below if epsilon < smallest else above}",
            smallest,
            largest,
        )
    return epsilon


def check_epsilon(epsilon) -> float:
    """The one place epsilon is validated: a finite positive number."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ParameterError(f"epsilon must be a number, got {epsilon!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return value


def as_ids(ids, n: int) -> np.ndarray:
    """Validate a batch of vocabulary ids (int32, 0 <= id < n)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ParameterError("ids must be a 1-d integer array")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ParameterError(
            f"ids must be vocabulary ids in [0, {n}); out-of-vocabulary tokens are "
            "handled by the OOV policy before the mechanism"
        )
    return ids.astype(np.int32, copy=False)


# ---- sampling -----------------------------------------------------------------------------
def unit_directions(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """m directions uniform on the unit sphere in R^d (normalised standard normals)."""
    u = rng.standard_normal((m, d))
    return u / np.linalg.norm(u, axis=1, keepdims=True)
