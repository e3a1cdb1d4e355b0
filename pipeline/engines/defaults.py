"""What `--runner FlinkRunner` / `--runner SparkRunner` mean when the user says nothing else:
the job server from the `make engines` cache, and an engine inside it ([local] / local[*]),
whose SDK workers Beam runs in the launching process (LOOPBACK). Explicit options always win."""

from __future__ import annotations

import dataclasses
from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

from dptext.pipeline.engines.catalog import BEAM_VERSION, Engine, engine_for_runner
from dptext.transforms.errors import DptextError


class EngineNotInstalled(DptextError):
    pass


class EngineUnreachable(DptextError):
    pass


@dataclasses.dataclass(frozen=True)
class EngineRun:
    """Which engine a job runs on, as the report and the CLI say it."""

    engine: str  # "Flink 1.19.0"
    master: str  # "[local]", "http://localhost:8081", "local[*]", "spark://localhost:7077"
    job_server: str  # the jar that ran the job server
    environment: str  # the SDK worker environment: LOOPBACK, EXTERNAL, PROCESS or DOCKER
    beam_version: str = BEAM_VERSION

    def sentence(self) -> str:
        return (
            f"{self.engine} (master {self.master}), through Beam {self.beam_version}'s job server, "
            f"SDK workers {self.environment}"
        )


def apply_engine_defaults(options: PipelineOptions, cache=None) -> Optional[EngineRun]:
    """Fill in the job server jar and the local master for Flink and Spark; None for other runners."""
    engine = engine_for_runner(options.view_as(StandardOptions).runner)
    if engine is None:
        return None
    all_options = options.get_all_options()
    jar = all_options.get(engine.jar_option)
    if not jar:
        launcher = engine.launcher(cache)
        if not launcher.is_file():
            raise EngineNotInstalled(
                f"--runner {engine.runner} needs Beam's {engine.label} job server, which is not installed: "
                f"run `make engines` (it fetches the pinned jars with mvn into {engine.home(cache).parent}), "
                f"or pass --{engine.jar_option} JAR"
            )
        jar = str(launcher)
        setattr(options.view_as(_runner_options(engine)), engine.jar_option, jar)
    master = all_options.get(engine.master_option)
    if master in (None, engine.beam_default_master):
        master = engine.local_master
        setattr(options.view_as(_runner_options(engine)), engine.master_option, master)
    if not _is_local(engine, master):
        _check_reachable(engine, master)
    environment = options.view_as(PortableOptions).environment_type
    if environment is None:
        environment = "LOOPBACK" if _is_local(engine, master) else "DOCKER"
    return EngineRun(
        engine=engine.label,
        master=master,
        job_server=str(jar),
        environment=str(environment).upper(),
    )


def _runner_options(engine: Engine):
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, SparkRunnerOptions

    return FlinkRunnerOptions if engine.name == "flink" else SparkRunnerOptions


def _is_local(engine: Engine, master: str) -> bool:
    """Beam's own rule for defaulting the SDK environment to LOOPBACK (flink_runner, spark_runner)."""
    if engine.name == "flink":
        return master in ("[local]", "[auto]")
    return master == "local" or (master.startswith("local[") and master.endswith("]"))


def _check_reachable(engine: Engine, master: str) -> None:
    """A master nobody answers at fails here in a second, not after the job server's retries
    (87 s for Flink, with a Java stack trace)."""
    import socket
    import urllib.parse

    try:
        parsed = urllib.parse.urlparse(master if "://" in master else f"tcp://{master}")
        host, port = parsed.hostname, parsed.port
    except ValueError:  # several masters (spark://h1:7077,h2:7077): left to the engine
        return
    if not host or not port:  # yarn, k8s://... and the like: left to the engine
        return
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as err:
        raise EngineUnreachable(
            f"--{engine.master_option} {master}: no {engine.label.split()[0]} master answers there "
            f"({err.strerror or type(err).__name__}); start the cluster or fix the address"
        ) from None
