"""`dptext stats` and `dptext calibrate`: privacy statistics of a mechanism on an index.

    dptext stats --index DIR --mechanism NAME --epsilon E [E ...] --out DIR [--sample N] [--draws S]
    dptext calibrate --index DIR --mechanism NAME --target-unchanged 0.5 [--out FILE.json]

Only the index (the embedding) is read, never a corpus.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from dptext.pipeline.errors import OptionsError
from dptext.transforms.errors import DptextError

STATISTICS = (("unchanged", "N_w: P[M(w) = w]"), ("distinct", "S_w: distinct outputs in S draws"))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory (local or gs://)")
    parser.add_argument("--mechanism", required=True)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a mechanism parameter, as the `dptext run` option of that name (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which words and draws (statistics, not outputs)")


def mechanism_params(mechanism: str, pairs: list[str]) -> dict:
    """NAME=VALUE pairs typed and checked like the `dptext run` options of the same names."""
    from dptext.pipeline.options import mechanism_parameter_specs

    specs, params = mechanism_parameter_specs(), {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in specs or mechanism not in specs[name].mechanisms:
            valid = sorted(n for n, s in specs.items() if mechanism in s.mechanisms)
            raise OptionsError(
                f"--param {pair!r}: {mechanism} takes {', '.join(valid) or 'no parameters'} (NAME=VALUE)"
            )
        params[name] = specs[name].parse(value)
    return params


def write_stats(rows: list[dict], out: Path, meta: dict) -> list[Path]:
    """stats.csv, stats.json and stats.png (percentiles of N_w and S_w against epsilon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stats.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = list(rows[0]["unchanged"])
        writer.writerow(["mechanism", "epsilon", "statistic", *keys, "words", "draws"])
        for row in rows:
            for stat, _ in STATISTICS:
                writer.writerow(
                    [meta["mechanism"], row["epsilon"], stat, *(row[stat][k] for k in keys), row["words"], row["draws"]]
                )
    (out / "stats.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    eps = [r["epsilon"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (stat, label) in zip(axes, STATISTICS):
        ax.fill_between(
            eps, [r[stat]["p5"] for r in rows], [r[stat]["p95"] for r in rows], alpha=0.15, label="5th-95th percentile"
        )
        ax.fill_between(
            eps, [r[stat]["p25"] for r in rows], [r[stat]["p75"] for r in rows], alpha=0.3, label="25th-75th percentile"
        )
        ax.plot(eps, [r[stat]["p50"] for r in rows], "o-", label="median")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(bottom=0)
    axes[0].legend(loc="best", fontsize=8)
    params = f" {meta['parameters']}" if meta["parameters"] else ""
    fig.suptitle(
        f"{meta['mechanism']}{params} on {meta['index']['n']:,} words "
        f"({rows[0]['words']:,} sampled, {rows[0]['draws']} draws each)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "stats.png", dpi=110)
    plt.close(fig)
    return [out / "stats.csv", out / "stats.json", out / "stats.png"]


def stats_main(argv=None) -> int:
    from dptext.transforms.index import EmbeddingIndex
    from dptext.transforms.stats import privacy_statistics

    parser = argparse.ArgumentParser(
        prog="dptext stats",
        description=(
            "N_w (probability a word comes out unchanged) and S_w (distinct outputs in S draws) over a "
            "grid of epsilon: CSV, JSON and a PNG of their percentiles. Reads only the index."
        ),
    )
    _common(parser)
    parser.add_argument("--epsilon", type=float, nargs="+", required=True)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--sample", type=int, default=1000, help="words sampled uniformly (0: every word)")
    parser.add_argument("--draws", type=int, default=100, help="S: draws per word")
    args = parser.parse_args(argv)
    try:
        params = mechanism_params(args.mechanism, args.param)
        index = EmbeddingIndex.load(args.index, verify=False)
        results = privacy_statistics(
            index, args.mechanism, sorted(args.epsilon), params, args.sample or None, args.draws, args.seed
        )
    except DptextError as err:
        print(f"dptext stats: error: {err}", file=sys.stderr)
        return 2
    rows = [r.summary() for r in results]
    meta = {
        "mechanism": args.mechanism,
        "parameters": params,
        "seed": args.seed,
        "index": {k: index.manifest.get(k) for k in ("embedding_id", "n", "d", "dmin", "dmax")},
    }
    paths = write_stats(rows, Path(args.out), meta)
    print(f"{'epsilon':>10} {'median N_w':>11} {'p5-p95 N_w':>15} {'median S_w':>11}")
    for r in rows:
        print(
            f"{r['epsilon']:>10.4g} {r['unchanged']['p50']:>11.3f} "
            f"{r['unchanged']['p5']:>7.3f}-{r['unchanged']['p95']:<7.3f} {r['distinct']['p50']:>11.1f}"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def calibrate_main(argv=None) -> int:
    from dptext.transforms.index import EmbeddingIndex
    from dptext.transforms.stats import calibrate

    parser = argparse.ArgumentParser(
        prog="dptext calibrate",
        description=(
            "The epsilon whose median N_w (probability a word comes out unchanged) reaches a target, by "
            "bisection: compare mechanisms at matched plausible deniability. Reads only the index."
        ),
    )
    _common(parser)
    parser.add_argument("--target-unchanged", type=float, required=True, help="target median N_w, in (0, 1)")
    parser.add_argument("--low", type=float, default=0.01)
    parser.add_argument("--high", type=float, default=10_000.0)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--out", help="also write the result as JSON")
    args = parser.parse_args(argv)
    try:
        params = mechanism_params(args.mechanism, args.param)
        index = EmbeddingIndex.load(args.index, verify=False)
        result = calibrate(
            index,
            args.mechanism,
            args.target_unchanged,
            params,
            args.low,
            args.high,
            args.sample,
            args.draws,
            args.seed,
        )
    except DptextError as err:
        print(f"dptext calibrate: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.mechanism}: epsilon {result['epsilon']:.5g} gives median N_w {result['median_unchanged']:.3f} "
        f"(+- {result['median_standard_error']:.3f}; target {args.target_unchanged:g}; {result['words']} words x "
        f"{result['draws']} draws, {len(result['evaluations'])} evaluations)"
    )
    return 0
