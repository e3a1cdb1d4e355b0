"""One index per machine: memory of each worker process while a multi-process job runs.

    python -m benchmarks.memory [--workers 1,2] [--passes 3]

Runs `dptext run` on the DirectRunner in multi_processing mode with 1 and then 2 worker
processes on the default index, samples /proc/PID/smaps of every process of the job every
0.25 s, and prints per process the peak RSS and PSS, overall and for the index files' mappings,
next to the index size. Memory-mapped index pages live once in the page cache, so a second
worker should add little index memory: target < 10% of the index size per extra worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.spine import RESULTS, _tree, make_corpus


def _smaps(pid: int, index_dir: str) -> dict | None:
    """RSS and PSS (KiB) of a process, overall and for mappings of files in index_dir."""
    totals = {"rss": 0, "pss": 0, "index_rss": 0, "index_pss": 0}
    in_index = False
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            for line in handle:
                first = line.split(maxsplit=1)[0]
                if not first.endswith(":"):  # a mapping header: "start-end perms ... path"
                    parts = line.split()
                    in_index = len(parts) >= 6 and parts[5].startswith(index_dir)
                elif first in ("Rss:", "Pss:"):
                    kib = int(line.split()[1])
                    key = first[:-1].lower()
                    totals[key] += kib
                    if in_index:
                        totals["index_" + key] += kib
    except (OSError, ValueError):
        return None
    return totals


def measure(workers: int, pattern: str, index: str, out: str) -> tuple[list[dict], float]:
    """Per-process peaks, and the peak over time of the workers' summed index PSS (KiB)."""
    argv = [
        sys.executable,
        "-m",
        "dptext.pipeline.cli",
        "run",
        "--input",
        pattern,
        "--output",
        out,
        "--index",
        index,
        "--epsilon",
        "52",
        "--runner",
        "DirectRunner",
        "--direct_running_mode",
        "multi_processing",
        "--direct_num_workers",
        str(workers),
    ]
    peaks: dict[int, dict] = {}
    peak_index_pss = 0  # summed over the workers at one instant (PSS splits shared pages)
    real_index = os.path.realpath(index)
    with tempfile.TemporaryFile() as log:
        job = subprocess.Popen(argv, stdout=log, stderr=log)
        while job.poll() is None:
            instant = 0
            for pid in _tree(job.pid):
                sample = _smaps(pid, real_index)
                if sample:
                    if pid != job.pid:
                        instant += sample["index_pss"]
                    peak = peaks.setdefault(pid, {"pid": pid, **{k: 0 for k in sample}})
                    for k, v in sample.items():
                        peak[k] = max(peak[k], v)
                    peak["role"] = "launcher" if pid == job.pid else "worker"
            peak_index_pss = max(peak_index_pss, instant)
            time.sleep(0.25)
        if job.returncode != 0:
            log.seek(0)
            raise RuntimeError(log.read().decode(errors="replace")[-3000:])
    # Only processes that mapped the index matter (the launcher verifies it; workers use it).
    return [p for p in peaks.values() if p["index_rss"] > 0 or p["role"] == "launcher"], peak_index_pss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    from dptext.pipeline.demo import default_index_dir

    index = str(default_index_dir())
    index_mib = sum(f.stat().st_size for f in Path(index).iterdir()) / 2**20
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        pattern, tokens, _ = make_corpus(Path(tmp), args.tokens)
        for n in (int(w) for w in args.workers.split(",")):
            rows[n] = measure(n, pattern, index, str(Path(tmp) / f"out{n}" / "x"))
    print(f"index {index}: {index_mib:.1f} MiB on disk; corpus {tokens:,} tokens")
    print(f"{'workers':>7} {'process':>9} {'RSS MiB':>8} {'PSS MiB':>8} {'index RSS':>10} {'index PSS':>10}")
    summary = {}
    for n, (procs, index_pss) in rows.items():
        for p in sorted(procs, key=lambda p: p["role"]):
            print(
                f"{n:>7} {p['role']:>9} {p['rss'] / 1024:>8.1f} {p['pss'] / 1024:>8.1f} "
                f"{p['index_rss'] / 1024:>10.1f} {p['index_pss'] / 1024:>10.1f}"
            )
        summary[n] = {"worker_index_pss_mib": index_pss / 1024}
    if 1 in summary and 2 in summary:
        extra = summary[2]["worker_index_pss_mib"] - summary[1]["worker_index_pss_mib"]
        print(
            f"index memory added by the second worker (peak of the workers' summed index PSS, 2 workers "
            f"minus 1): {extra:.1f} MiB "
            f"= {100 * extra / index_mib:.1f}% of the index (target < 10%)"
        )
        summary["extra_index_pss_percent"] = 100 * extra / index_mib
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "index_mib": index_mib, "rows": rows, "summary": summary}, indent=2
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
