"""Scale-out: the same corpus with 1 and 2 worker processes, on the multi-process DirectRunner and
on Beam's portable path (job service + an EXTERNAL SDK worker pool, as Flink and Spark run Python).

    python -m benchmarks.scaleout [--tokens 3000000]

Prints wall time, tokens/s and the speed-up of 2 workers over 1 for each path (target >= 1.6x
on a 2-core machine), and writes benchmarks/results/scaleout.json.
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


@contextlib.contextmanager
def portable_services(log_dir: Path):
    """Beam's job service and an external worker pool (the venv's bin first on PATH: the pool
    starts `python` from PATH for every worker)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    job_port, pool_port = _free_port(), _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                               "--port", str(job_port)], env=env, stdout=open(log_dir / "job.log", "w"),
                              stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                               "--service_port", str(pool_port)], env=env, stdout=open(log_dir / "pool.log", "w"),
                              stderr=subprocess.STDOUT)]
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
        yield ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
               "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}"]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3_000_000)
    args = parser.parse_args(argv)
    from pipeline.demo import DEMO_EPSILON, default_index_dir

    index = str(default_index_dir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pattern, tokens, documents = make_corpus(tmp, args.tokens)
        base = [sys.executable, "-m", "pipeline.cli", "run", "--input", pattern, "--index", index,
                "--epsilon", str(DEMO_EPSILON)]
        with portable_services(tmp) as portable:
            paths = {"DirectRunner multi_processing": ["--runner", "DirectRunner", "--direct_running_mode",
                                                       "multi_processing"],
                     "PortableRunner + EXTERNAL worker pool": portable}
            for path, runner in paths.items():
                walls = {}
                for workers in (1, 2):
                    out = str(tmp / f"{len(rows)}" / "out")
                    # The portable job service's runner reads both: workers it asks the pool for, and
                    # bundles it runs in parallel.
                    walls[workers], _, _, _ = _measure(base + ["--output", out, *runner,
                                                               "--direct_num_workers", str(workers),
                                                               "--sdk_worker_parallelism", str(workers)])
                    rows.append({"path": path, "workers": workers, "seconds": round(walls[workers], 1),
                                 "tokens_per_s": round(tokens / walls[workers])})
                rows[-1]["speedup"] = round(walls[1] / walls[2], 2)
    print(f"{tokens:,} tokens ({documents:,} documents), truncated_gumbel, default index, {os.cpu_count()} cores")
    print(f"{'path':<40} {'workers':>7} {'seconds':>8} {'tokens/s':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['path']:<40} {r['workers']:>7} {r['seconds']:>8} {r['tokens_per_s']:>10,} "
              f"{(str(r['speedup']) + 'x') if 'speedup' in r else '':>9}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaleout.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tokens": tokens,
                                                       "documents": documents, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
