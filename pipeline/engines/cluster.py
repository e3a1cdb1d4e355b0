"""Standalone Flink and Spark clusters on loopback, from the `make engines` jars, plus Beam's
external SDK worker pool: what the engine tests and `benchmarks.scaleout` submit dptext to.

Each is a context manager that starts real processes (a JobManager and a TaskManager; a Spark
master and worker), waits until they accept work, yields the address a user would pass as
--flink_master / --spark_master_url, and stops everything it started, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from dptext.pipeline.engines.catalog import FLINK, SPARK, Engine
from dptext.pipeline.engines.install import java_open_flags
from dptext.transforms.errors import DptextError

START_TIMEOUT_SECONDS = 120


class ClusterError(DptextError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _java(engine: Engine, main_class: str, args: list[str], heap: str) -> list[str]:
    classpath = str(engine.lib() / "*")
    return ["java", f"-Xmx{heap}", *java_open_flags(), "-cp", classpath, main_class, *args]


@contextlib.contextmanager
def _processes(log_dir: Path) -> Iterator[callable]:
    """start(name, command, env) -> Popen; every process is stopped (TERM, then KILL) at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, command: list[str], env: Optional[dict] = None) -> subprocess.Popen:
        log = open(log_dir / f"{name}.log", "w")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        log.close()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_until(ready, what: str, procs: list[subprocess.Popen], log_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = f"exited with {dead[0].returncode}" if dead else f"not ready in {START_TIMEOUT_SECONDS} s"
            raise ClusterError(f"{what} {reason}; logs in {log_dir}")
        time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_json(url: str) -> Optional[dict]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read().decode("utf-8"))
    except OSError:
        return None


def _installed(engine: Engine) -> None:
    if not engine.lib().is_dir():
        raise ClusterError(f"{engine.label} is not installed: run `make engines`")


@contextlib.contextmanager
def flink_cluster(work_dir: Path, slots: int = 2) -> Iterator[str]:
    """A standalone Flink session cluster: one JobManager, one TaskManager with `slots` task slots.
    Yields the REST address ("localhost:PORT") for --flink_master."""
    _installed(FLINK)
    conf = work_dir / "flink-conf"
    conf.mkdir(parents=True, exist_ok=True)
    rest, rpc = free_port(), free_port()
    settings = {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": rpc,
        "jobmanager.bind-host": "localhost",
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": rest,
        "taskmanager.host": "localhost",
        "taskmanager.bind-host": "localhost",
        "taskmanager.numberOfTaskSlots": slots,
        "parallelism.default": slots,
        # A TaskManager started without Flink's shell scripts needs its memory spelled out.
        "taskmanager.cpu.cores": slots,
        "taskmanager.memory.task.heap.size": "512m",
        "taskmanager.memory.task.off-heap.size": "0m",
        "taskmanager.memory.network.min": "512m",
        "taskmanager.memory.network.max": "512m",
        # Each blocking shuffle of a batch job asks for 512 buffers by default; a small cluster
        # running job after job ran short of them (Insufficient number of network buffers).
        "taskmanager.network.sort-shuffle.min-buffers": 64,
        "taskmanager.memory.managed.size": "64m",
        "taskmanager.memory.framework.heap.size": "128m",
        "taskmanager.memory.framework.off-heap.size": "128m",
        "taskmanager.memory.jvm-metaspace.size": "256m",
        "taskmanager.memory.jvm-overhead.min": "192m",
        "taskmanager.memory.jvm-overhead.max": "192m",
        "jobmanager.memory.process.size": "1024m",
        "io.tmp.dirs": str(work_dir / "flink-tmp"),
        # A failed task is retried (the fault tests): a fixed-delay restart, as production jobs use.
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": 3,
        "restart-strategy.fixed-delay.delay": "1 s",
    }
    (conf / "flink-conf.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
    (work_dir / "flink-tmp").mkdir(exist_ok=True)
    env = {"FLINK_CONF_DIR": str(conf)}
    with _processes(work_dir) as start:
        jobmanager = start(
            "flink-jobmanager",
            _java(
                FLINK,
                "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
                ["--configDir", str(conf)],
                "768m",
            ),
            env,
        )
        taskmanager = start(
            "flink-taskmanager",
            _java(FLINK, "org.apache.flink.runtime.taskexecutor.TaskManagerRunner", ["--configDir", str(conf)], "1g"),
            env,
        )

        def ready() -> bool:
            overview = _http_json(f"http://localhost:{rest}/overview")
            return bool(overview) and overview.get("slots-total", 0) >= slots

        _wait_until(ready, "the Flink cluster", [jobmanager, taskmanager], work_dir)
        yield f"localhost:{rest}"


@contextlib.contextmanager
def spark_cluster(work_dir: Path, cores: int = 2, memory: str = "2g") -> Iterator[str]:
    """A Spark standalone master and one worker with `cores` cores. Yields "spark://HOST:PORT"."""
    _installed(SPARK)
    home = work_dir / "spark-home"  # the layout a worker needs to launch executors: jars/ and RELEASE
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "jars").exists():
        (home / "jars").symlink_to(SPARK.lib())
    (home / "RELEASE").write_text(f"{SPARK.label} from dptext's make engines\n")
    master_port, master_ui, worker_ui = free_port(), free_port(), free_port()
    env = {"SPARK_HOME": str(home), "SPARK_SCALA_VERSION": "2.12", "SPARK_LOCAL_IP": "127.0.0.1"}
    master_url = f"spark://127.0.0.1:{master_port}"
    with _processes(work_dir) as start:
        master = start(
            "spark-master",
            _java(
                SPARK,
                "org.apache.spark.deploy.master.Master",
                ["--host", "127.0.0.1", "--port", str(master_port), "--webui-port", str(master_ui)],
                "512m",
            ),
            env,
        )
        _wait_until(lambda: _port_open(master_port), "the Spark master", [master], work_dir)
        worker = start(
            "spark-worker",
            _java(
                SPARK,
                "org.apache.spark.deploy.worker.Worker",
                [
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(worker_ui),
                    "--work-dir",
                    str(work_dir / "spark-work"),
                    master_url,
                ],
                "512m",
            ),
            env,
        )

        def ready() -> bool:
            state = _http_json(f"http://127.0.0.1:{master_ui}/json/")
            return bool(state) and state.get("aliveworkers", 0) >= 1

        _wait_until(ready, "the Spark cluster", [master, worker], work_dir)
        yield master_url


@contextlib.contextmanager
def sdk_worker_pool(work_dir: Path, pythonpath: Optional[str] = None) -> Iterator[str]:
    """Beam's external SDK worker pool (the venv's bin first on PATH: the pool starts `python` from
    PATH for each worker). Yields "localhost:PORT" for --environment_config. `pythonpath` makes a
    job's own modules importable by the workers (a DoFn pickled by reference needs its module)."""
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))
    if shutil.which("python", path=env["PATH"]) is None:
        raise ClusterError("no `python` on PATH for the SDK worker pool")
    with _processes(work_dir) as start:
        pool = start(
            "sdk-worker-pool",
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)],
            env,
        )
        _wait_until(lambda: _port_open(port), "the SDK worker pool", [pool], work_dir)
        yield f"localhost:{port}"
