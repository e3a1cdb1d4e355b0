"""The exact-audit engine: privacy figures of an exact output distribution on a small vocabulary.

A mechanism supplies its exact distribution P[w, y] (each mechanism module holds its own oracle);
the engine measures, over all pairs of inputs, the worst log-ratio, the worst log-ratio per unit
distance (metric rate), the same within K-nearest-neighbour pairs, and the privacy profile
delta(eps'), on random vocabularies drawn from an index (audit_subsets). It knows no mechanism:
mechanisms import it, never the reverse.
"""

from __future__ import annotations

import math

import numpy as np

from dptext.transforms.index_build import candidate_order

AUDIT_SIZES = (9, 20, 40)
PROFILE_EPSILONS = (1.0, 2.0, 5.0, 10.0, 20.0)


def pairwise_distances(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return np.sqrt(np.maximum(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1), 0.0))


def audit_pairs(
    P: np.ndarray, dist: np.ndarray, neighbour_ids=None, eps_grid=PROFILE_EPSILONS, rate: float | None = None
) -> dict:
    """Worst-case figures over all ordered pairs (w, w'), w != w', of an exact distribution P.

    neighbour_ids: the K-nearest-neighbour table of the audited vocabulary ((n, K + 1) ids, the
    word first, as in the index) or just K (the table is then ranked from dist); with it, the
    worst log-ratio is also reported for pairs where one word is among the other's K nearest.
    eps_grid: the eps' of the privacy profile delta(eps'). rate: when given, the hockey-stick
    delta at eps' = rate * d(w, w') per pair (what metric DP at that rate would make 0).
    A log-ratio is +inf where P[w', y] = 0 < P[w, y].
    """
    P = np.asarray(P, dtype=np.float64)
    n = len(P)
    with np.errstate(divide="ignore"):
        logp = np.log(P)
    pair = ~np.eye(n, dtype=bool)
    # ratio[w, w2] = max_y ln P[w, y] - ln P[w2, y]; 0/0 outputs (nan) are no evidence either way.
    with np.errstate(invalid="ignore"):
        diff = logp[:, None, :] - logp[None, :, :]
    diff[np.isnan(diff)] = -np.inf
    ratio = diff.max(axis=2)
    ratio[~pair] = -np.inf
    w, w2 = np.unravel_index(np.argmax(ratio), ratio.shape)
    result = {
        "n": n,
        "worst_log_ratio": float(ratio[w, w2]),
        "worst_pair": [int(w), int(w2)],
        "worst_output": int(np.argmax(diff[w, w2])),
        "worst_pair_distance": float(dist[w, w2]),
    }
    positive = pair & (dist > 0)
    per_distance = np.where(positive, ratio / np.where(positive, dist, 1.0), -np.inf)
    result["worst_metric_rate"] = float(per_distance.max())
    if neighbour_ids is not None:
        table = _neighbour_table(dist, neighbour_ids)
        result["neighbours"] = table.shape[1] - 1
        result["worst_log_ratio_within_neighbours"] = float(ratio[_near_pairs(table)].max())
        # The typical candidate set has about ln n neighbours: the pairs the mechanism mixes most.
        typical = max(1, round(math.log(n)))
        near = _near_pairs(_neighbour_table(dist, typical))
        result["typical_candidates"] = typical
        result["worst_log_ratio_within_typical_candidates"] = float(ratio[near].max())
        result["delta_profile_within_typical_candidates"] = {
            f"{e:g}": _hockey_stick(P, np.full((n, n), e), near) for e in eps_grid
        }
    result["delta_profile"] = {f"{e:g}": _hockey_stick(P, np.full((n, n), e), pair) for e in eps_grid}
    if rate is not None:
        result["max_delta_at_rate_times_distance"] = _hockey_stick(P, rate * dist, pair)
    return result


def _neighbour_table(dist: np.ndarray, neighbour_ids) -> np.ndarray:
    """A (n, K + 1) table, the word first: the given one, or ranked from dist when K is given."""
    if np.ndim(neighbour_ids) == 0:
        k = int(neighbour_ids)
        if not 1 <= k <= len(dist) - 1:
            raise ValueError(f"K must be between 1 and n - 1 = {len(dist) - 1}, got {k}")
        return np.stack([candidate_order(dist[i], i)[: k + 1] for i in range(len(dist))])
    table = np.asarray(neighbour_ids)
    if table.ndim != 2 or len(table) != len(dist) or (table[:, 0] != np.arange(len(dist))).any():
        raise ValueError("neighbour_ids must be an (n, K + 1) table whose row i starts with i")
    return table


def _near_pairs(table: np.ndarray) -> np.ndarray:
    """Pairs (w, w2), w != w2, where either word is among the other's K nearest (table rows)."""
    n = len(table)
    near = np.zeros((n, n), dtype=bool)
    near[np.repeat(np.arange(n), table.shape[1] - 1), table[:, 1:].ravel()] = True
    return (near | near.T) & ~np.eye(n, dtype=bool)


def _hockey_stick(P: np.ndarray, eps: np.ndarray, pair: np.ndarray) -> float:
    """max over pairs of sum_y max(0, P[w, y] - exp(eps[w, w2]) P[w2, y])."""
    factor = np.exp(np.minimum(eps, 700.0))  # exp(700) already exceeds any ratio of probabilities
    excess = np.maximum(0.0, P[:, None, :] - factor[:, :, None] * P[None, :, :]).sum(axis=2)
    return float(excess[pair].max())


def audit_subsets(index, sizes, seed: int, audit_one) -> list[dict]:
    """audit_pairs on random vocabularies of the given sizes drawn from the index.

    audit_one(dist) -> (row fields, exact distribution P, metric rate to test): the mechanism's
    parameters on that vocabulary and its exact output distribution. The subsets are drawn with a
    fixed seed: which words are audited is not privacy randomness, and a fixed choice makes the
    report reproducible.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for size in dict.fromkeys(min(int(s), index.n) for s in sizes):
        chosen = np.sort(rng.choice(index.n, size, replace=False))
        dist = pairwise_distances(index.vectors[chosen])
        fields, P, rate = audit_one(dist)
        row = {"n": size, **fields}
        row.update(audit_pairs(P, dist, neighbour_ids=min(index.neighbours, size - 1), rate=rate))
        row["worst_pair"] = [int(chosen[i]) for i in row["worst_pair"]]  # vocabulary ids
        row["worst_output"] = int(chosen[row["worst_output"]])
        row["metric_rate_contradicted"] = row["worst_metric_rate"] > rate
        rows.append(row)
    return rows


def json_safe(value):
    """Floats, ints, strings, lists and dicts only; infinities as the strings "inf" / "-inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return value


def format_audit(rows: list[dict]) -> str:
    def cell(value, width):
        return f"{value:>{width}.4g}" if isinstance(value, (int, float)) else f"{str(value):>{width}}"

    columns = [
        ("n", "n", 4),
        ("epsilon", "eps", 8),
        ("claimed_epsilon_times_dmin", "eps*Dmin", 9),
        ("claimed_epsilon_times_dmax", "eps*Dmax", 9),
        ("worst_log_ratio", "worst ln-ratio", 15),
        ("worst_metric_rate", "worst rate", 11),
        ("worst_log_ratio_within_neighbours", "within-KNN", 11),
        ("worst_log_ratio_within_typical_candidates", "within-ln(n)NN", 15),
        ("max_delta_at_rate_times_distance", "delta@eps*d", 12),
    ]
    columns = [c for c in columns if c[0] in rows[0]]  # each mechanism's audit has its own fields
    profiles = [("delta_profile", "d"), ("delta_profile_within_typical_candidates", "near d")]
    profiles = [(key, label) for key, label in profiles if key in rows[0]]
    lines = [
        " ".join(f"{label:>{w}}" for _, label, w in columns)
        + "".join("  " + " ".join(f"{label + '(' + e + ')':>11}" for e in rows[0][key]) for key, label in profiles)
    ]
    for r in rows:
        lines.append(
            " ".join(cell(r[key], w) for key, _, w in columns)
            + "".join("  " + " ".join(cell(v, 11) for v in r[key].values()) for key, _ in profiles)
        )
    legend = (
        "worst ln-ratio: max over pairs w != w' and outputs y of ln P[M(w)=y] / P[M(w')=y]; worst rate: "
        "the same divided by d(w, w'); within-KNN / within-ln(n)NN: only pairs where one word is among "
        "the other's K (table) or round(ln n) nearest; delta@eps*d: max hockey-stick delta at eps x d(w, w'); "
        "d(e) / near d(e): max hockey-stick delta at e over all pairs / over the ln(n)-nearest pairs."
    )
    return "\n".join(lines + ["", legend])


def softmax(logits: np.ndarray) -> np.ndarray:
    """exp(logits) normalised along the last axis (float64)."""
    p = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def exponential_distribution(dist: np.ndarray, epsilon: float, log_base: np.ndarray) -> np.ndarray:
    """Exact P[w, y] proportional to exp(log_base[y] - epsilon dist[w, y] / 2), rows normalised: the
    exponential mechanism over the whole vocabulary with base measure exp(log_base)."""
    return softmax(np.asarray(log_base, dtype=np.float64)[None, :] - 0.5 * epsilon * np.asarray(dist, np.float64))


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance between distributions along the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)
