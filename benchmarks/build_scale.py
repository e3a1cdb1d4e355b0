"""Index build time and memory against vocabulary size, on a synthetic embedding.

    python -m benchmarks.build_scale [--words 100000] [--dim 300] [--neighbours 64]

Generates --words synthetic vectors (no file to read) with the clustered structure of a real
embedding: i.i.d. Gaussian vectors would put every pair at almost the same distance, which no
embedding does and which sends most rows to the exact float64 fallback. Builds the exact index
with its progress bar, and prints the build time and peak memory (the build is O(n^2 d) time, O(n (d + K))
memory plus one bounded chunk of the distance matrix). The time for other sizes follows as
(n / --words)^2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from benchmarks.spine import RESULTS, _measure

BUILD = """
import json, time
import numpy as np
from transforms.index import EmbeddingIndex
rng = np.random.default_rng(0)
centres = rng.standard_normal((max(2, {words} // 30), {dim})).astype(np.float32) * 0.3
vectors = centres[rng.integers(0, len(centres), {words})] + 0.2 * rng.standard_normal(({words}, {dim}), dtype=np.float32)
t = time.perf_counter()
index = EmbeddingIndex.build([f"w{{i}}" for i in range({words})], vectors, {out!r}, neighbours={neighbours})
print(json.dumps({{"build_s": time.perf_counter() - t, "dmin": index.dmin, "dmax": index.dmax}}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--neighbours", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss, _, out = _measure(BUILD.format(words=args.words, dim=args.dim, out=tmp + "/index",
                                                  neighbours=args.neighbours))
    result = {"words": args.words, "dim": args.dim, "neighbours": args.neighbours, **json.loads(out),
              "wall_s": round(wall, 1), "peak_rss_mib": round(rss)}
    per_pair_ns = result["build_s"] / args.words ** 2 * 1e9
    print(f"{args.words:,} words x {args.dim} d, K={args.neighbours}: build {result['build_s']:.1f} s "
          f"({per_pair_ns:.2f} ns per pair), peak RSS {rss:.0f} MiB")
    for n in (1_000_000, 2_200_000):
        print(f"  extrapolated to {n:,} words: {per_pair_ns * n * n / 1e9 / 3600:.1f} h on this machine")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"build-{args.words}.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **result},
                                                                 indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
