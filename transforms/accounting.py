"""Per-document privacy accounting and its composition (MECHANISMS.md section 5).

Each document yields one DocumentAccount (counts only, never text). Accounts are merged into a
CorpusAccount whose histogram of perturbed-token counts gives exact percentiles of the
per-document bound. Composition of per-token pure bounds: basic (a sum) and, at a chosen
delta, dp_accounting's privacy-loss-distribution composition of the same per-token events.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field, fields

PERCENTILES = (50, 90, 99)
# dp_accounting's PLD evaluates exp(eps) in floating point; above this it overflows, and a per-token
# epsilon this large protects nothing anyway, so the basic sum is reported.
PLD_MAX_EPSILON = 500.0


@dataclass(frozen=True)
class DocumentAccount:
    tokens: int             # word tokens in the document
    perturbed: int          # in-vocabulary tokens that went through the mechanism
    changed: int            # perturbed tokens whose output word differs (a quality figure, not a guarantee)
    oov: int                # out-of-vocabulary tokens, handled by the OOV policy

    @classmethod
    def total(cls, parts) -> "DocumentAccount":
        """One document's account from the accounts of its chunks."""
        return cls(*(sum(getattr(p, f.name) for p in parts) for f in fields(cls)))


@dataclass
class CorpusAccount:
    documents: int = 0
    tokens: int = 0
    perturbed: int = 0
    changed: int = 0
    oov: int = 0
    perturbed_histogram: Counter = field(default_factory=Counter)   # perturbed-count -> documents

    def add(self, doc: DocumentAccount) -> "CorpusAccount":
        self.documents += 1
        self.tokens += doc.tokens
        self.perturbed += doc.perturbed
        self.changed += doc.changed
        self.oov += doc.oov
        self.perturbed_histogram[doc.perturbed] += 1
        return self

    def merge(self, other: "CorpusAccount") -> "CorpusAccount":
        self.documents += other.documents
        self.tokens += other.tokens
        self.perturbed += other.perturbed
        self.changed += other.changed
        self.oov += other.oov
        self.perturbed_histogram.update(other.perturbed_histogram)
        return self

    def perturbed_percentiles(self) -> dict:
        """Exact nearest-rank percentiles and the maximum of tokens perturbed per document."""
        if not self.documents:
            return {}
        ordered = sorted(self.perturbed_histogram.items())
        result = {}
        for q in PERCENTILES:
            rank = max(1, -(-q * self.documents // 100))   # ceil(q/100 * documents)
            seen = 0
            for value, count in ordered:
                seen += count
                if seen >= rank:
                    result[f"p{q}"] = value
                    break
        result["max"] = ordered[-1][0]
        return result


def basic_bound(tokens: int, per_token_epsilon: float) -> float:
    """Basic composition: tokens x per-token pure epsilon (a pure epsilon-DP bound)."""
    return tokens * per_token_epsilon


@functools.lru_cache(maxsize=256)
def composed_bound(tokens: int, per_token_epsilon: float, delta: float) -> float:
    """Epsilon at `delta` of `tokens` self-composed pure per-token events, by dp_accounting's PLD.

    A pure eps-DP event is represented by its worst-case privacy-loss distribution
    (from_privacy_parameters(eps, 0)); the pessimistic discretisation keeps the result an upper
    bound. The grid step scales with eps so large per-token epsilons stay fast.
    """
    if tokens == 0:
        return 0.0
    if per_token_epsilon > PLD_MAX_EPSILON:
        return basic_bound(tokens, per_token_epsilon)
    from dp_accounting.pld import common, privacy_loss_distribution

    pld = privacy_loss_distribution.from_privacy_parameters(
        common.DifferentialPrivacyParameters(per_token_epsilon, 0.0),
        value_discretization_interval=max(1e-4, per_token_epsilon / 1000))
    composed = pld.self_compose(tokens).get_epsilon_for_delta(delta)
    return float(min(composed, basic_bound(tokens, per_token_epsilon)))
