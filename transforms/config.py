"""JobConfig: every choice that decides what a privatization computes, validated once.

Built on the driver (from `dptext run`'s options or from `dptext.Privatize`'s arguments), carried
to every worker inside the DoFn, and read by the report: one object, not a re-spelling per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from dptext.transforms.errors import ParameterError

OOV_POLICIES = ("placeholder", "random", "keep")
LONG_DOCUMENT_POLICIES = ("split", "dead-letter")
# keep: a word found only lower-cased gets the input's case pattern back (Title, UPPER): readable
# output, but the case pattern is copied from the input, so it is not protected (the report says so).
# lower: every word the mechanism outputs is lower-cased, so "W3" and "w3" give one distribution.
CASE_POLICIES = ("keep", "lower")
# Every character str.splitlines() breaks at: a placeholder holding one would split a text document.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


class InvalidParameter(ParameterError):
    """A JobConfig field outside its valid range; `parameter` names the field, so the CLI can
    name its option (--max-doc-chars) where a Python caller sees the argument (max_doc_chars)."""

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter, self.problem = parameter, problem


@dataclass(frozen=True)
class JobConfig:
    index_path: str
    mechanism: str
    epsilon: float
    mechanism_params: tuple = ()  # sorted (name, value) pairs; a dict is accepted
    text_field: Optional[str] = None  # None: the elements are the texts
    oov: str = "placeholder"
    placeholder: str = "<unk>"
    case: str = "keep"
    max_doc_chars: int = 1_000_000
    long_docs: str = "split"  # longer documents: processed in chunks, or dead-lettered
    batch_chars: int = 65536
    delta: float = 1e-6  # of the composed per-document bound in the report
    test_seed: Optional[int] = None
    embedding_id: Optional[str] = None  # the index the report describes; every worker checks it
    # Privacy units (pipeline/units.py): the field naming the person, the per-unit cap on released
    # word tokens, and the per-unit budget a ledger enforces across runs.
    privacy_unit: Optional[str] = None
    max_tokens_per_unit: Optional[int] = None
    unit_budget: Optional[float] = None

    def __post_init__(self):
        if isinstance(self.mechanism_params, dict):
            object.__setattr__(self, "mechanism_params", tuple(sorted(self.mechanism_params.items())))
        _check_choice("oov", self.oov, OOV_POLICIES)
        _check_choice("case", self.case, CASE_POLICIES)
        _check_choice("long_docs", self.long_docs, LONG_DOCUMENT_POLICIES)
        try:
            epsilon = float(self.epsilon)
        except (TypeError, ValueError):
            raise InvalidParameter("epsilon", f"must be a finite number > 0, got {self.epsilon!r}") from None
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise InvalidParameter("epsilon", f"must be a finite number > 0, got {self.epsilon}")
        for name in ("max_doc_chars", "batch_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameter(name, f"must be an integer >= 1, got {value!r}")
        if not 0 < self.delta < 1:
            raise InvalidParameter("delta", f"must be in (0, 1), got {self.delta}")
        if self.text_field is not None and (not isinstance(self.text_field, str) or not self.text_field):
            raise InvalidParameter("text_field", f"must be a non-empty string or None, got {self.text_field!r}")
        self._check_units()
        breaks = [c for c in self.placeholder if c in LINE_BREAKS]
        if breaks:
            raise InvalidParameter(
                "oov_placeholder",
                (
                    f"{self.placeholder!r} contains a line break ({ascii(breaks[0])}); text output is one "
                    "document per line, so a placeholder must not break lines (nor confuse line-splitting "
                    "readers of JSONL)"
                ),
            )

    def _check_units(self) -> None:
        if self.privacy_unit is not None:
            if not isinstance(self.privacy_unit, str) or not self.privacy_unit:
                raise InvalidParameter("privacy_unit", f"must be a non-empty field name, got {self.privacy_unit!r}")
            if self.text_field is None:
                raise InvalidParameter(
                    "privacy_unit",
                    f"{self.privacy_unit!r} needs records with fields (JSONL, Parquet or dicts); plain texts "
                    "have no field that could name a person",
                )
            if self.privacy_unit == self.text_field:
                raise InvalidParameter("privacy_unit", f"{self.privacy_unit!r} is the text field itself")
        value = self.max_tokens_per_unit
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidParameter("max_tokens_per_unit", f"must be an integer >= 1, got {value!r}")
        if self.unit_budget is not None:
            budget = self.unit_budget
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
                raise InvalidParameter("unit_budget", f"must be a finite number > 0, got {budget!r}")
        for name in ("max_tokens_per_unit", "unit_budget"):
            if getattr(self, name) is not None and self.privacy_unit is None:
                raise InvalidParameter(name, "needs --privacy-unit (the field that names each person)")

    @property
    def bounds_units(self) -> bool:
        """Whether documents are admitted per unit (a cap, a budget, or both)."""
        return self.max_tokens_per_unit is not None or self.unit_budget is not None

    @property
    def test_seed_used(self) -> bool:
        return self.test_seed is not None

    def load(self) -> "LoadedMechanism":
        """The index and the mechanism, as a worker builds them: the index must be the one the job
        was prepared for (the report describes it), not whatever the path holds now."""
        from dptext.transforms import mechanisms
        from dptext.transforms.index import EmbeddingIndex, IndexLoadError

        index = EmbeddingIndex.load(self.index_path, read_only=True)  # tables: stored by the launcher
        found = index.manifest.get("embedding_id")
        if self.embedding_id is not None and found != self.embedding_id:
            raise IndexLoadError(
                f"{self.index_path}: this worker loaded the index with embedding id {found}, but the job was "
                f"prepared for {self.embedding_id} (the report describes that one); the index at this path "
                "changed after the launch. Launch the job again."
            )
        return LoadedMechanism(
            index, mechanisms.create(self.mechanism, index, self.epsilon, **dict(self.mechanism_params))
        )


class LoadedMechanism:
    """The index and its mechanism; a plain class because Shared keeps only a weak reference."""

    def __init__(self, index, mechanism):
        self.index, self.mechanism = index, mechanism


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise InvalidParameter(name, f"{value!r} is unknown; valid: {', '.join(choices)}")
