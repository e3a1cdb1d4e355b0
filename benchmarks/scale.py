"""A large corpus streamed through the DirectRunner: throughput and peak memory against corpus size.

    python -m benchmarks.scale [--tokens 20000000] [--mode in_memory|multi_processing]

Generates a JSONL corpus of at least --tokens word tokens (the public tweets repeated), runs
`dptext run` with truncated_gumbel on the default index, and prints wall time, tokens/s and the
peak RSS of the largest process and of all processes together, next to a run on a corpus a
tenth of the size: memory that grows with the corpus shows up as the ratio between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.spine import RESULTS, _measure, make_corpus


def run_once(tokens: int, mode: str, index: str, tmp: Path) -> dict:
    directory = tmp / f"c{tokens}"
    directory.mkdir()
    pattern, actual, documents = make_corpus(directory, tokens)
    extra = ["--direct_running_mode", mode] + (["--direct_num_workers", "2"] if mode != "in_memory" else [])
    wall, largest, total, _ = _measure(
        [
            sys.executable,
            "-m",
            "dptext.pipeline.cli",
            "run",
            "--input",
            pattern,
            "--output",
            str(directory / "out" / "x"),
            "--index",
            index,
            "--epsilon",
            "52",
            "--runner",
            "DirectRunner",
            *extra,
        ]
    )
    corpus_mib = sum(p.stat().st_size for p in directory.glob("corpus-*.jsonl")) / 2**20
    return {
        "tokens": actual,
        "documents": documents,
        "corpus_mib": round(corpus_mib, 1),
        "mode": mode,
        "seconds": round(wall, 1),
        "tokens_per_s": round(actual / wall),
        "peak_rss_largest_mib": round(largest),
        "peak_rss_all_mib": round(total),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--mode", default="in_memory", choices=("in_memory", "multi_processing"))
    args = parser.parse_args(argv)
    from dptext.pipeline.demo import default_index_dir

    index = str(default_index_dir())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_once(n, args.mode, index, Path(tmp)) for n in (args.tokens // 10, args.tokens)]
    print(
        f"{'tokens':>12} {'documents':>10} {'corpus MiB':>10} {'mode':>16} {'seconds':>8} {'tokens/s':>9} "
        f"{'peak RSS largest':>17} {'peak RSS all':>13}"
    )
    for r in rows:
        print(
            f"{r['tokens']:>12,} {r['documents']:>10,} {r['corpus_mib']:>10} {r['mode']:>16} {r['seconds']:>8} "
            f"{r['tokens_per_s']:>9,} {r['peak_rss_largest_mib']:>13} MiB {r['peak_rss_all_mib']:>9} MiB"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scale-{args.mode}.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
