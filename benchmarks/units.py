"""Overhead of privacy units: the spine's 3.3M-token end-to-end run, without units, with
--privacy-unit, and with --privacy-unit and a cap.

    python -m benchmarks.units [--tokens 3000000] [--cap 200] [--repeats 2]

The corpus is the spine's (the public tweet sample repeated, 4 JSONL shards) with a "user" field
added to each record: 20,000 users drawn from a Zipf-like law (weight 1 / rank^1.1, seeded), so a
few users write many tweets, as on a real platform. The three configurations run interleaved
(A B C A B C ...) so a change in the machine's load hits them alike; each run is its own process
(wall time and peak RSS as benchmarks.spine measures them). Writes benchmarks/results/units.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.spine import RESULTS, _measure, make_corpus

USERS, ZIPF = 20_000, 1.1


def add_users(pattern: str, seed: int = 0) -> dict:
    """Add a "user" field to every record of the corpus files (in place); returns per-user counts."""
    import glob

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, USERS + 1) ** ZIPF
    weights /= weights.sum()
    counts = np.zeros(USERS, dtype=np.int64)
    for path in sorted(glob.glob(pattern)):
        lines = Path(path).read_text(encoding="utf-8").split("\n")[:-1]
        users = rng.choice(USERS, size=len(lines), p=weights)
        np.add.at(counts, users, 1)
        with open(path, "w", encoding="utf-8") as out:
            for line, user in zip(lines, users.tolist()):
                out.write(line[:-1].rstrip() + f', "user": "u{user}"}}\n')
    used = counts[counts > 0]
    return {"users": int(used.size), "documents_of_the_largest_user": int(used.max()), "median": int(np.median(used))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=3_000_000)
    parser.add_argument("--cap", type=int, default=200, help="--max-tokens-per-unit of the capped run")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from dptext.pipeline.demo import DEMO_EPSILON, default_index_dir

    index = str(default_index_dir())
    configurations = {
        "no units": [],
        "--privacy-unit user": ["--privacy-unit", "user"],
        f"--privacy-unit user --max-tokens-per-unit {args.cap}": [
            "--privacy-unit",
            "user",
            "--max-tokens-per-unit",
            str(args.cap),
        ],
    }
    times: dict[str, list] = {name: [] for name in configurations}
    memory: dict[str, list] = {name: [] for name in configurations}
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pattern, tokens, documents = make_corpus(tmp, args.tokens)
        users = add_users(pattern)
        loads = [os.getloadavg()[0]]
        for repeat in range(args.repeats):
            for i, (name, extra) in enumerate(configurations.items()):
                output = tmp / f"out{repeat}-{i}" / "corpus"
                wall, rss, _, _ = _measure(
                    [
                        sys.executable,
                        "-m",
                        "dptext.pipeline.cli",
                        "run",
                        "--input",
                        pattern,
                        "--output",
                        str(output),
                        "--index",
                        index,
                        "--epsilon",
                        str(DEMO_EPSILON),
                        "--runner",
                        "DirectRunner",
                        *extra,
                    ]  # fmt: skip
                )
                times[name].append(round(wall, 1))
                memory[name].append(round(rss))
                loads.append(os.getloadavg()[0])
                report = json.loads(Path(f"{output}.privacy_report.json").read_text("utf-8"))
                reports[name] = {"counts": report["counts"], "per_unit": report.get("per_unit")}
                print(f"{name:<55} {wall:7.1f} s  {rss:5.0f} MiB", flush=True)
    base = statistics.median(times["no units"])
    rows = []
    for name in configurations:
        median = statistics.median(times[name])
        # Each round's ratio to that round's run without units: a change of load between rounds
        # cancels out, so the median of these is the steadier figure.
        paired = [t / b for t, b in zip(times[name], times["no units"])]
        rows.append(
            {
                "configuration": name,
                "seconds": times[name],
                "median_seconds": median,
                "overhead": round(median / base - 1, 3),
                "overhead_paired_median": round(statistics.median(paired) - 1, 3),
                "peak_rss_mib": memory[name],
                "released_documents": reports[name]["counts"]["documents"],
                "withheld": reports[name]["counts"].get("withheld", 0),
                "released_tokens_per_unit": (reports[name]["per_unit"] or {}).get("released_tokens_per_unit"),
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "tokens": tokens,
        "documents": documents,
        "corpus_users": users,
        "mechanism": f"truncated_gumbel at epsilon {DEMO_EPSILON}",
        "runner": "DirectRunner in_memory",
        "machine": {"cores": os.cpu_count(), "load_average_1min_during": loads},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "units.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['configuration']:<55} median {row['median_seconds']:6.1f} s  overhead {row['overhead']:+.1%}"
            f"  paired {row['overhead_paired_median']:+.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
