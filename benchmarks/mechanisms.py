"""Every mechanism on the default index: mechanism-only speed and the cost of its cached tables.

    python -m benchmarks.mechanisms [--seconds 3]

Each mechanism runs in its own process on one core (batch 4096, ids uniform over the
vocabulary: the hardest case, since no word repeats enough to be cheap) at two epsilons: the one
whose median N_w is 0.3 on this index (`dptext calibrate`, so the mechanisms are compared at
matched plausible deniability) and a larger one. The embedding-only tables (KDE prior,
Mahalanobis square root, mutual K-NN graph, diffractor's lists) are built once in a scratch copy of the index and
timed. Prints a table and writes benchmarks/results/mechanisms.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.spine import MECHANISM, ONE_CORE, RESULTS, _measure

# epsilon with median N_w 0.3 on the default index (dptext calibrate, 200 words x 50 draws), and
# a larger one; kde_prior and vickrey reuse their relatives' calibration.
POINTS = {
    "truncated_gumbel": (243.0, 52.0),
    "multivariate_laplace": (10.4, 20.0),
    "distance_truncated_laplace": (10.4, 20.0),
    "mahalanobis": (10.0, 20.0),
    "vickrey": (10.4, 20.0),
    "knn_exponential": (0.48, 5.0),
    "tem": (2.19, 5.0),
    "kde_prior": (2.19, 5.0),
    "santext": (2.21, 5.0),  # dptext calibrate: 2.2067 (300 words x 100 draws)
    "santext_plus": (2.13, 5.0),  # 2.1335 at the defaults w 0.9, p 0.3
    "custext": (4.83, 10.0),  # 4.8261 at K 20
    "diffractor": (0.619, 2.0),  # median N_w = tanh(eps / 2) (every word inside its lists)
    "syntf": (20.3, 40.0),  # closed form: median of e^(eps/2) / Z(s_w) = 0.3 at 20.28 (calibrate: 20.58 +- 0.011 N_w)
}

TABLE = """
import json, time
from dptext.transforms import mechanisms
from dptext.transforms.index import EmbeddingIndex
index = EmbeddingIndex.load({index!r}, verify=False)
before = set(index.manifest.get("tables", {{}}))
t = time.perf_counter()
mechanisms.create({name!r}, index, 5.0, **{params!r})
print(json.dumps({{"seconds": time.perf_counter() - t,
                  "tables": sorted(set(index.manifest.get("tables", {{}})) - before)}}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--add", default="", help="mechanisms (a,b): measure only these, merge their rows")
    args = parser.parse_args(argv)
    added = set(filter(None, args.add.split(",")))
    from dptext.pipeline.demo import default_index_dir

    index = str(default_index_dir())
    rows, tables = [], []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "index"
        shutil.copytree(index, scratch, ignore=shutil.ignore_patterns(".tables.lock"))
        manifest = json.loads((scratch / "manifest.json").read_text())
        for key, entry in manifest.pop("tables", {}).items():  # start without cached tables
            manifest["files"].pop(entry["file"], None)
            (scratch / entry["file"]).unlink(missing_ok=True)
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for name, params in (
            ("kde_prior", {}),
            ("mahalanobis", {}),
            ("kde_prior", {"sampler": "mh"}),
            ("diffractor", {}),
            ("custext", {}),
            ("santext_plus", {}),
            ("syntf", {}),
        ):
            if added and name not in added:
                continue
            wall, rss, _, out = _measure(TABLE.format(index=str(scratch), name=name, params=params), ONE_CORE)
            tables.append({"mechanism": name, "params": params, **json.loads(out), "peak_rss_mib": round(rss)})
        for name, epsilons in POINTS.items():
            for eps in epsilons if not added or name in added else ():
                _, rss, _, out = _measure(
                    MECHANISM.format(index=str(scratch), name=name, epsilon=eps, params={}, seconds=args.seconds),
                    ONE_CORE,
                )
                rows.append({"mechanism": name, "epsilon": eps, **json.loads(out), "peak_rss_mib": round(rss)})
    print(f"{'mechanism':<28} {'epsilon':>8} {'tokens/s':>12} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['mechanism']:<28} {r['epsilon']:>8g} {round(r['tokens_per_s']):>12,} {r['peak_rss_mib']:>13}")
    print(f"\n{'table built on first use':<52} {'seconds':>8} {'peak RSS MiB':>13}")
    for t in tables:
        label = f"{t['mechanism']} {t['params'] or ''}: {', '.join(t['tables'])}"
        print(f"{label:<52} {t['seconds']:>8.1f} {t['peak_rss_mib']:>13}")
    RESULTS.mkdir(exist_ok=True)
    if added:  # the other mechanisms' rows as they were measured
        old = json.loads((RESULTS / "mechanisms.json").read_text())
        note = {"measured": time.strftime("%Y-%m-%d") + " with --add"}
        rows = [r for r in old["rows"] if r["mechanism"] not in added] + [{**r, **note} for r in rows]
        tables = [t for t in old["tables"] if t["mechanism"] not in added] + [{**t, **note} for t in tables]
        (RESULTS / "mechanisms.json").write_text(json.dumps({**old, "rows": rows, "tables": tables}, indent=2) + "\n")
        return 0
    (RESULTS / "mechanisms.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows, "tables": tables}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
