"""Guarantee: what a mechanism may claim on an index, as data (like dp_accounting's DpEvent).

Every mechanism's guarantee() returns one; the report, its Markdown and the job's context read its
fields, and `as_dict()` is the one place it becomes the JSON report's "guarantee" object
(`from_dict` reads that object back, e.g. to render the Markdown again from the JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from dptext.transforms.audit import json_safe

# What no word-level mechanism protects: every guarantee's not_protected starts with these.
NOT_PROTECTED = (
    "out-of-vocabulary tokens (handled by the OOV policy)",
    "document length, token positions and punctuation",
    "which tokens are in the vocabulary",
)
BASES = ("proved", "computed", "audited")


@dataclass(frozen=True)
class Claim:
    """A claim the mechanism's paper makes and dptext does not prove: its statement and figures."""

    statement: str
    figures: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Guarantee:
    """A mechanism's privacy statement on one index.

    rate is the metric-DP rate where one is proved (None otherwise); per_token_pure_epsilon the
    vocabulary-wide pure epsilon of one token, the figure the report composes per document (None:
    no such bound is stated, so none is composed). basis says how the statement is known: proved,
    computed (in closed form) or audited (exact computation on this embedding), each optionally
    followed by a parenthesised precision. `extra` carries mechanism-specific facts that the JSON
    report lists beside the guarantee (the nearest-word search, the prior's summary, ...).
    """

    mechanism: str
    kind: str
    rate: float | None
    basis: str
    statement: str
    per_token_pure_epsilon: float | None
    per_token_pure_epsilon_note: str | None = None
    not_protected: tuple[str, ...] = NOT_PROTECTED
    worst_case_log_ratio: float | None = None  # where it is known exactly (e.g. infinite)
    worst_case_log_ratio_at_least: float | None = None  # a proved lower bound on it
    claimed: Claim | None = None  # the paper's claim, where dptext does not prove it
    delta_at_distance: Mapping[str, Mapping[str, float]] | None = None  # "D" -> {"epsilon", "delta"}
    audited: Any = None  # the audit's figures (rows per vocabulary, or a dict)
    confirmed_by: str | None = None  # the tests or computation that check the statement
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.basis.split(" ", 1)[0] not in BASES:
            raise ValueError(f"basis {self.basis!r} must start with one of {', '.join(BASES)}")
        object.__setattr__(self, "not_protected", tuple(self.not_protected))

    def as_dict(self) -> dict:
        """The JSON report's "guarantee" object (JSON-safe: infinities as "inf"). rate and
        per_token_pure_epsilon are always present (null when not stated); other fields only when set."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif f.name == "claimed":
                if value is not None:
                    out["claimed"] = {**value.figures, "statement": value.statement}
            elif value is not None or f.name in ("rate", "per_token_pure_epsilon"):
                out[f.name] = value
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Guarantee":
        """A guarantee from its JSON object (as_dict's inverse up to JSON-safe values)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("claimed") is not None:
            claim = dict(values["claimed"])
            values["claimed"] = Claim(claim.pop("statement"), claim)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})
