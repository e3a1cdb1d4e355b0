"""Scale-out: the same corpus with 1 and 2 worker processes, on the multi-process DirectRunner and
on Beam's portable path (job service + an EXTERNAL SDK worker pool, as Flink and Spark run Python).

    python -m benchmarks.scaleout [--tokens 10000000]

Portable runs go through two job services: Beam's `local_job_service_main`, which runs every job
on one SDK worker whatever it asks for (so 2 workers cannot be faster there), and
`benchmarks.parallel_job_service`, Beam's service with the worker count honoured, as a Flink or
Spark job server honours its parallelism. Prints wall time, the fixed start-up and shut-down time
(the same job on one tweet), tokens/s, and the speed-up of 2 workers over 1, whole and beyond the
fixed time (target >= 1.6x on a 2-core machine); writes benchmarks/results/scaleout.json.

Flink and Spark rows (`make engines` first): the embedded Flink and a local Spark (SDK workers
LOOPBACK, in the launching process), and standalone clusters started here with 1 and 2 task
slots / cores and an EXTERNAL worker pool (one SDK worker process per slot). A cluster's own
start-up is reported apart (`cluster s`), outside every row's time. `--paths` picks rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.spine import RESULTS, _measure, make_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


BEAM_JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"  # one SDK worker per job
PARALLEL_JOB_SERVICE = "benchmarks.parallel_job_service"  # N workers, as Flink/Spark


@contextlib.contextmanager
def portable_services(log_dir: Path, job_service: str = BEAM_JOB_SERVICE):
    """A job service (module run with `--port`) and Beam's external worker pool (the venv's bin
    first on PATH: the pool starts `python` from PATH for every worker)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    job_port, pool_port = _free_port(), _free_port()
    repo = Path(__file__).resolve().parent.parent  # so `-m benchmarks...` resolves
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", job_service, "--port", str(job_port)],
            env=env,
            cwd=repo,
            stdout=open(log_dir / "job.log", "w"),
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
            env=env,
            stdout=open(log_dir / "pool.log", "w"),
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        for port in (job_port, pool_port):
            deadline = time.time() + 60
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("localhost", port)) == 0:
                        break
                if time.time() > deadline:
                    raise RuntimeError(f"service on port {port} did not start (logs in {log_dir})")
                time.sleep(0.2)
        yield [
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            f"localhost:{job_port}",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            f"localhost:{pool_port}",
        ]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument(
        "--paths",
        default="direct,portable,flink,spark",
        help="comma-separated: direct, portable, flink, spark (default all)",
    )
    args = parser.parse_args(argv)
    chosen = set(args.paths.split(","))
    from dptext.pipeline.demo import DEMO_EPSILON, default_index_dir

    index = str(default_index_dir())
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "big").mkdir()
        (tmp / "tiny").mkdir()
        pattern, tokens, documents = make_corpus(tmp / "big", args.tokens)
        tiny = tmp / "tiny" / "one.jsonl"
        tiny.write_text(json.dumps({"text": "a tweet of seven words for timing"}) + "\n", encoding="utf-8")
        base = [sys.executable, "-m", "dptext.pipeline.cli", "run", "--index", index, "--epsilon", str(DEMO_EPSILON)]
        multi = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"]
        with portable_services(tmp, BEAM_JOB_SERVICE) as beams, portable_services(tmp, PARALLEL_JOB_SERVICE) as ours:
            # dptext's defaults on every path (--rebalance auto: off on the DirectRunner, on for a
            # portable runner, which may be Flink or Spark); the last row shows what the shuffle
            # costs a portable service that, like the DirectRunner, deals equal splits out evenly.
            paths = {}
            if "direct" in chosen:
                paths["DirectRunner multi_processing"] = _Plain(lambda n: multi)
            if "portable" in chosen:
                paths["Portable: Beam's local job service"] = _Plain(lambda n: beams)
                paths["Portable: job service with N workers"] = _Plain(lambda n: ours)
                paths["  the same, --rebalance false"] = _Plain(lambda n: ours + ["--rebalance", "false"])
            if "flink" in chosen:
                paths["Flink 1.19 embedded ([local], LOOPBACK)"] = _Plain(
                    lambda n: ["--runner", "FlinkRunner", "--parallelism", str(n)]
                )
                paths["Flink 1.19 cluster (EXTERNAL pool)"] = ClusterPath("flink", tmp)
            if "spark" in chosen:
                paths["Spark 3.5 local[N] (LOOPBACK)"] = _Plain(
                    lambda n: ["--runner", "SparkRunner", "--spark_master_url", f"local[{n}]"]
                )
                paths["Spark 3.5 standalone (EXTERNAL pool)"] = ClusterPath("spark", tmp)
            for path, runner_for in paths.items():
                walls, fixed = {}, {}
                for workers in (1, 2):
                    runner = runner_for(workers)
                    # --direct_num_workers: the DirectRunner's worker processes; --sdk_worker_parallelism:
                    # what a portable job asks its job service for (Beam's own ignores it).
                    argv = base + [
                        *runner,
                        "--direct_num_workers",
                        str(workers),
                        "--sdk_worker_parallelism",
                        str(workers),
                    ]
                    walls[workers] = _measure(
                        argv + ["--input", pattern, "--output", str(tmp / f"{len(rows)}" / "out")]
                    )[0]
                    # The same job on one tweet: start-up and shut-down, which no worker count shortens.
                    fixed[workers] = _measure(
                        argv + ["--input", str(tiny), "--output", str(tmp / f"{len(rows)}t" / "out")]
                    )[0]
                    rows.append(
                        {
                            "path": path,
                            "workers": workers,
                            "seconds": round(walls[workers], 1),
                            "fixed_seconds": round(fixed[workers], 1),
                            "tokens_per_s": round(tokens / walls[workers]),
                            **({"cluster_start_seconds": round(runner_for.started, 1)} if runner_for.started else {}),
                        }
                    )
                    runner_for.stop()
                rows[-1]["speedup"] = round(walls[1] / walls[2], 2)
                rows[-1]["speedup_beyond_fixed"] = round((walls[1] - fixed[1]) / (walls[2] - fixed[2]), 2)
    print(
        f"{tokens:,} tokens ({documents:,} documents in 4 JSONL shards), truncated_gumbel, default index, "
        f"{os.cpu_count()} cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{'path':<40} {'workers':>7} {'seconds':>8} {'fixed s':>8} {'tokens/s':>10} {'speed-up':>9} "
        f"{'beyond fixed':>13} {'cluster s':>9}"
    )
    for r in rows:
        print(
            f"{r['path']:<40} {r['workers']:>7} {r['seconds']:>8} {r['fixed_seconds']:>8} {r['tokens_per_s']:>10,} "
            f"{(str(r['speedup']) + 'x') if 'speedup' in r else '':>9} "
            f"{(str(r['speedup_beyond_fixed']) + 'x') if 'speedup' in r else '':>13} "
            f"{r.get('cluster_start_seconds', ''):>9}"
        )
    RESULTS.mkdir(exist_ok=True)
    # A run of some paths only keeps the full run's file: scaleout-flink-spark.json, for example.
    everything = chosen == {"direct", "portable", "flink", "spark"}
    name = "scaleout.json" if everything else f"scaleout-{'-'.join(sorted(chosen))}.json"
    (RESULTS / name).write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "tokens": tokens,
                "documents": documents,
                "cores": os.cpu_count(),
                "load_average_before": load_before,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


class _Plain:
    """A path whose runner options need nothing started: `(n) -> argv`."""

    started = 0.0

    def __init__(self, argv_for):
        self.argv_for = argv_for

    def __call__(self, workers: int) -> list[str]:
        return self.argv_for(workers)

    def stop(self) -> None:
        pass


class ClusterPath:
    """A standalone cluster with `workers` slots / cores and an EXTERNAL worker pool, started for
    each worker count (its start-up time kept apart in `started`) and stopped after the row."""

    def __init__(self, engine: str, tmp: Path):
        self.engine, self.tmp, self.stack, self.started = engine, tmp, None, 0.0

    def __call__(self, workers: int) -> list[str]:
        from dptext.pipeline.engines.cluster import flink_cluster, sdk_worker_pool, spark_cluster

        work = self.tmp / f"{self.engine}-cluster-{workers}"
        work.mkdir()
        self.stack = contextlib.ExitStack()
        start = time.perf_counter()
        if self.engine == "flink":
            master = self.stack.enter_context(flink_cluster(work, slots=workers))
            engine_args = ["--runner", "FlinkRunner", "--flink_master", master, "--parallelism", str(workers)]
        else:
            master = self.stack.enter_context(spark_cluster(work, cores=workers))
            engine_args = ["--runner", "SparkRunner", "--spark_master_url", master]
        pool = self.stack.enter_context(sdk_worker_pool(work))
        self.started = time.perf_counter() - start
        return engine_args + ["--environment_type", "EXTERNAL", "--environment_config", pool]

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.close()
            self.stack = None


if __name__ == "__main__":
    sys.exit(main())
