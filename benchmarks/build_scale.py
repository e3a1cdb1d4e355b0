"""Index build time and memory against vocabulary size, on a synthetic embedding.

    python -m benchmarks.build_scale [--words 100000] [--dim 300] [--neighbours 64]
    python -m benchmarks.build_scale --words 1000000 --budget-seconds 600   # a 1M-word build, timed

Generates --words synthetic vectors (no file to read) with the clustered structure of a real
embedding: i.i.d. Gaussian vectors would put every pair at almost the same distance, which no
embedding does and which sends most rows to the exact float64 fallback.

Without --budget-seconds the exact index is built in full (progress bar, exact tables and
extremes, Annoy forest), and its time and peak memory are printed. The build is O(n^2 d) time and
O(n (d + K)) memory plus one bounded block of the distance matrix. With --budget-seconds, the
same exact row blocks (transforms.index_build.row_block, the unit `dptext build-index --beam`
distributes) are computed for that long, spread evenly over the vocabulary, the first row of
blocks is checked against brute force while that costs under a quarter of the time (timed apart:
a build does not do it), and the full build's time is projected from the blocks' rate: for
vocabularies whose full build takes hours on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from benchmarks.spine import RESULTS, _measure

VECTORS = """
import numpy as np
rng = np.random.default_rng(0)
centres = rng.standard_normal((max(2, {words} // 30), {dim})).astype(np.float32) * 0.3
vectors = np.empty(({words}, {dim}), dtype=np.float32)
for s in range(0, {words}, 100_000):       # generated in slices: no float64 copy of 1M x 300
    e = min(s + 100_000, {words})
    vectors[s:e] = centres[rng.integers(0, len(centres), e - s)]
    vectors[s:e] += 0.2 * rng.standard_normal((e - s, {dim}), dtype=np.float32)
"""

FULL = (
    VECTORS
    + """
import json, time
from dptext.transforms.index import EmbeddingIndex
t = time.perf_counter()
index = EmbeddingIndex.build([f"w{{i}}" for i in range({words})], vectors, {out!r}, neighbours={neighbours})
print(json.dumps({{"build_s": time.perf_counter() - t, "rows_done": {words}, "dmin": index.dmin, "dmax": index.dmax}}))
"""
)

BUDGET = (
    VECTORS
    + """
import json, time
from tqdm import tqdm
from dptext.transforms.index_build import Geometry, row_block, candidate_order
t0 = time.perf_counter()
geom = Geometry(vectors)
setup = time.perf_counter() - t0
step = geom.chunk_rows()
starts = list(range(0, {words}, step))
order = np.random.default_rng(1).permutation(starts).tolist()   # blocks from all over the vocabulary
rows = checked = 0
computing = checking = 0.0       # the brute-force check is not part of a build: timed apart
bar = tqdm(total={words}, unit="word", desc="exact neighbours (budgeted)", mininterval=2.0, file=sys.stderr)
for start in order:
    if computing > {budget}:
        break
    t = time.perf_counter()
    block = row_block(geom, start, min(start + step, {words}), {neighbours})
    computing += time.perf_counter() - t
    rows += len(block.min_pos)
    bar.update(len(block.min_pos))
    if checking > 0.25 * computing:   # a brute-force row costs about two blocks at 1M words
        continue
    t = time.perf_counter()
    i = start                     # brute-force check of the block's first row
    exact = geom.exact_row(i)
    want = candidate_order(exact, i)[: {neighbours} + 1]
    assert (block.neighbour_ids[0] == want).all(), f"row {{i}} differs from brute force"
    checked += 1
    checking += time.perf_counter() - t
bar.close()
print(json.dumps({{"budget_s": {budget}, "rows_done": rows, "blocks_checked": checked, "rows_per_block": step,
                  "elapsed_s": computing, "checking_s": checking, "setup_s": setup,
                  "rows_checked_vs_brute_force": checked,
                  "projected_build_s": setup + computing * {words} / max(rows, 1)}}))
"""
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--neighbours", type=int, default=64)
    parser.add_argument("--budget-seconds", type=float, help="compute row blocks this long and project the rest")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fields = dict(
            words=args.words, dim=args.dim, out=tmp + "/index", neighbours=args.neighbours, budget=args.budget_seconds
        )
        code = "import sys\n" + (BUDGET if args.budget_seconds else FULL).format(**fields)
        wall, rss, _, out = _measure(code)
    result = {
        "words": args.words,
        "dim": args.dim,
        "neighbours": args.neighbours,
        **json.loads(out),
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(rss),
    }
    total_s = result.get("projected_build_s", result.get("build_s"))
    per_pair_ns = total_s / args.words**2 * 1e9
    kind = "projected from a budgeted run" if args.budget_seconds else "measured"
    print(f"| words | d | K | rows computed | build time ({kind}) | ns per pair | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.words:,} | {args.dim} | {args.neighbours} | {result['rows_done']:,} | "
        f"{total_s / 3600:.2f} h ({total_s:,.0f} s) | {per_pair_ns:.2f} | {rss:,.0f} MiB |"
    )
    if args.budget_seconds:
        print(
            f"{result['rows_done']:,} rows in {result['elapsed_s']:.0f} s of row blocks, "
            f"{result['blocks_checked']} blocks "
            f"checked against brute force on one row (another {result['checking_s']:.0f} s, not counted)"
        )
    for n in (1_000_000, 2_200_000):
        print(
            f"  at this rate {n:,} words x {args.dim} d: {per_pair_ns * n * n / 1e9 / 3600:.1f} h on this machine "
            f"(a Beam build on W such machines: about 1/W of it)"
        )
    RESULTS.mkdir(exist_ok=True)
    name = f"build-{args.words}" + ("-budgeted" if args.budget_seconds else "")
    (RESULTS / f"{name}.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
