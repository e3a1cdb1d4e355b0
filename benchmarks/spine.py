"""Spine benchmark on the default embedding: index build, mechanism-only and end-to-end speed.

    python -m benchmarks.spine [--tokens 1000000] [--runs in_memory,multi_processing]

Every phase runs in its own process so its wall time and peak memory (max RSS, from wait4)
are its own. Prints a table and writes benchmarks/results/spine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ONE_CORE = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _measure(code_or_argv, env_extra=None) -> tuple[float, float, float, str]:
    """Run a child; return (wall s, peak RSS MiB of its largest process, peak RSS MiB of the whole
    process tree, stdout). Peaks are sampled from /proc every 50 ms (VmHWM is a high-water mark;
    wait4's ru_maxrss is useless here because Linux carries the parent's peak across fork/exec)."""
    argv = code_or_argv if isinstance(code_or_argv, list) else [sys.executable, "-c", code_or_argv]
    env = {**os.environ, **(env_extra or {})}
    started = time.perf_counter()
    largest = tree_total = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        while child.poll() is None:
            pids = _tree(child.pid)
            largest = max([largest] + [_status_kib(p, "VmHWM") for p in pids])
            tree_total = max(tree_total, sum(_status_kib(p, "VmRSS") for p in pids))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{errors[-3000:]}")
    return wall, largest / 1024, tree_total / 1024, text


BUILD = """
import json, time
from dptext.transforms.embedding_io import read_embedding
from dptext.transforms.index import EmbeddingIndex
t = time.perf_counter(); words, vectors, _ = read_embedding({embedding!r}); read = time.perf_counter() - t
t = time.perf_counter(); EmbeddingIndex.build(words, vectors, {out!r}, progress=False)
print(json.dumps({{"read_s": read, "build_s": time.perf_counter() - t}}))
"""

MECHANISM = """
import json, time
import numpy as np
from dptext.transforms import mechanisms
from dptext.transforms.index import EmbeddingIndex
index = EmbeddingIndex.load({index!r})
mech = mechanisms.create({name!r}, index, {epsilon!r}, **{params!r})
rng = np.random.default_rng(0)
batches = [rng.integers(0, index.n, 4096).astype(np.int32) for _ in range(8)]
mech.perturb(batches[0], rng)
done, t = 0, time.perf_counter()
while time.perf_counter() - t < {seconds!r}:
    mech.perturb(batches[done % 8], rng); done += 1
print(json.dumps({{"tokens_per_s": done * 4096 / (time.perf_counter() - t), "batches": done}}))
"""


def make_corpus(directory: Path, min_tokens: int) -> tuple[str, int, int]:
    """The public tweet sample repeated to at least min_tokens word tokens, in 4 JSONL shards."""
    from dptext.pipeline.demo import tweets_jsonl
    from dptext.transforms.tokenize import split_tokens

    lines = tweets_jsonl().read_text(encoding="utf-8").split("\n")[:-1]  # not splitlines: U+2028 is text
    per_pass = sum(len(split_tokens(json.loads(line)["text"]).words) for line in lines)
    passes = -(-min_tokens // per_pass)
    shards = [open(directory / f"corpus-{i}.jsonl", "w", encoding="utf-8") for i in range(4)]
    for p in range(passes):
        for i, line in enumerate(lines):
            shards[(p * len(lines) + i) % 4].write(line + "\n")
    for shard in shards:
        shard.close()
    return str(directory / "corpus-*.jsonl"), passes * per_pass, passes * len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=3_000_000, help="end-to-end corpus size (tokens, >= 1M)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per mechanism-only measurement")
    parser.add_argument("--runs", default="in_memory,multi_processing", help="DirectRunner modes to time")
    args = parser.parse_args(argv)

    from dptext.pipeline.demo import DEFAULT_EMBEDDING, DEMO_EPSILON, default_index_dir, fetch

    embedding = str(fetch(DEFAULT_EMBEDDING))
    index = str(default_index_dir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wall, rss, _, out = _measure(BUILD.format(embedding=embedding, out=str(tmp / "index")))
        build = json.loads(out)
        rows.append(
            {
                "phase": "index build (read + exact tables + Annoy)",
                "seconds": round(wall, 1),
                "detail": f"read {build['read_s']:.1f} s, build {build['build_s']:.1f} s",
                "peak_rss_mib": round(rss),
            }
        )
        for name, epsilon, params in (
            ("truncated_gumbel", DEMO_EPSILON, {}),
            ("multivariate_laplace", 10.0, {"search": "exact"}),
            ("multivariate_laplace", 10.0, {"search": "annoy"}),
        ):
            _, rss, _, out = _measure(
                MECHANISM.format(index=index, name=name, epsilon=epsilon, params=params, seconds=args.seconds), ONE_CORE
            )
            result = json.loads(out)
            label = name + (f" ({params['search']})" if params else "")
            rows.append(
                {
                    "phase": f"mechanism only, 1 core, batch 4096: {label}",
                    "tokens_per_s": round(result["tokens_per_s"]),
                    "peak_rss_mib": round(rss),
                }
            )
        pattern, tokens, documents = make_corpus(tmp, args.tokens)
        (tmp / "one.txt").write_text("the cat sat on the mat\n", encoding="utf-8")
        wall, rss, _, _ = _measure(
            [
                sys.executable,
                "-m",
                "dptext.pipeline.cli",
                "run",
                "--input",
                str(tmp / "one.txt"),
                "--output",
                str(tmp / "one" / "out"),
                "--index",
                index,
                "--epsilon",
                str(DEMO_EPSILON),
                "--runner",
                "DirectRunner",
            ]
        )
        rows.append(
            {
                "phase": "fixed cost: end to end on a one-line corpus (imports, checks, audit)",
                "seconds": round(wall, 1),
                "peak_rss_mib": round(rss),
            }
        )
        for mode in args.runs.split(","):
            extra = ["--direct_running_mode", mode] + (["--direct_num_workers", "2"] if mode != "in_memory" else [])
            wall, rss, tree, _ = _measure(
                [
                    sys.executable,
                    "-m",
                    "dptext.pipeline.cli",
                    "run",
                    "--input",
                    pattern,
                    "--output",
                    str(tmp / mode / "out"),
                    "--index",
                    index,
                    "--epsilon",
                    str(DEMO_EPSILON),
                    "--runner",
                    "DirectRunner",
                    *extra,
                ]
            )
            rows.append(
                {
                    "phase": f"end to end, DirectRunner {mode}, truncated_gumbel, {tokens:,} tokens "
                    f"({documents:,} documents)",
                    "seconds": round(wall, 1),
                    "tokens_per_s": round(tokens / wall),
                    "peak_rss_mib": round(rss),
                    "detail": f"all processes together: peak {tree:.0f} MiB",
                }
            )
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spine.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"{'phase':<92} {'seconds':>8} {'tokens/s':>11} {'peak RSS MiB':>13}")
    for r in rows:
        tps = f"{r['tokens_per_s']:,}" if "tokens_per_s" in r else ""
        print(f"{r['phase']:<92} {r.get('seconds', ''):>8} {tps:>11} {r['peak_rss_mib']:>13}")
        if "detail" in r:
            print(f"  {r['detail']}")


if __name__ == "__main__":
    sys.exit(main())
