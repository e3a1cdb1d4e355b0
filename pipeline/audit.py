"""`dptext audit`: the exact audit of truncated_gumbel on random vocabularies drawn from an index.

    dptext audit --index DIR --epsilon E [--sizes 9,20,40] [--seed 0]

Each vocabulary is audited at the same multiple of its own feasibility floor as --epsilon is of the
whole index's (the calibration the paper prescribes); the table is the audit engine's
(dptext.transforms.audit), the exact distribution truncated_gumbel's own.
"""

from __future__ import annotations

import argparse

from dptext.transforms.audit import AUDIT_SIZES, format_audit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="dptext audit",
        description=(
            "Exact audit of truncated_gumbel on random vocabularies drawn from an index, at the same "
            "multiple of the feasibility floor as --epsilon is for the whole index."
        ),
    )
    parser.add_argument("--index", required=True)
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--sizes", default=",".join(map(str, AUDIT_SIZES)))
    parser.add_argument("--seed", type=int, default=0, help="which subsets (not privacy randomness)")
    args = parser.parse_args(argv)
    from dptext.transforms.index import EmbeddingIndex
    from dptext.transforms.mechanisms.truncated_gumbel import audit_truncated_gumbel_subsets, smallest_feasible_epsilon

    index = EmbeddingIndex.load(args.index, verify=False)
    floor = smallest_feasible_epsilon(index.n, index.dmin)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rows = audit_truncated_gumbel_subsets(index, args.epsilon, sizes, args.seed)
    print(
        f"truncated_gumbel at epsilon {args.epsilon:g} = {args.epsilon / floor:.3g} x the index's floor "
        f"{floor:.4g}; each subset audited at the same multiple of its own floor"
    )
    print(format_audit(rows))
    return 0
