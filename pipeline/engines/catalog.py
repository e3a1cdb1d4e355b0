"""The engines dptext is tested on: versions, driver classes and where `make engines` puts them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

# Must equal the apache-beam pin in setup.py: a job server of another Beam version may
# misread the Python SDK's pipeline protos. Checked by tests/test_engines.py.
BEAM_VERSION = "2.62.0"

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str  # "flink" or "spark"
    runner: str  # Beam's Python runner name
    label: str  # engine and version, as the report and the CLI name it
    driver_class: str  # the job server's main class
    jar_option: str  # the Beam option naming the job server jar
    master_option: str  # the Beam option naming the engine's master
    local_master: str  # dptext's default master: an engine inside the job server
    beam_default_master: str  # Beam's own default for master_option

    @property
    def pom(self) -> Path:
        return HERE / self.name / "pom.xml"

    @property
    def lock(self) -> Path:
        """sha256 of every jar `make engines` accepts, one `SHA  FILE` line each."""
        return HERE / self.name / "jars.sha256"

    def home(self, cache: Optional[Path] = None) -> Path:
        return (cache or cache_root()) / f"beam-{BEAM_VERSION}" / self.name

    def lib(self, cache: Optional[Path] = None) -> Path:
        return self.home(cache) / "lib"

    def launcher(self, cache: Optional[Path] = None) -> Path:
        """The job server jar: a manifest naming the driver class and the jars of lib/."""
        return self.home(cache) / f"{self.name}-job-server-{BEAM_VERSION}.jar"


FLINK = Engine(
    name="flink",
    runner="FlinkRunner",
    label="Flink 1.19.0",
    driver_class="org.apache.beam.runners.flink.FlinkJobServerDriver",
    jar_option="flink_job_server_jar",
    master_option="flink_master",
    local_master="[local]",
    beam_default_master="[auto]",
)
SPARK = Engine(
    name="spark",
    runner="SparkRunner",
    label="Spark 3.5.3",
    driver_class="org.apache.beam.runners.spark.SparkJobServerDriver",
    jar_option="spark_job_server_jar",
    master_option="spark_master_url",
    local_master="local[*]",
    beam_default_master="local[4]",
)
ENGINES = {e.name: e for e in (FLINK, SPARK)}


def cache_root() -> Path:
    """Where `make engines` installs: $DPTEXT_ENGINES_CACHE, else ~/.cache/dptext/engines."""
    configured = os.environ.get("DPTEXT_ENGINES_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dptext" / "engines"


def engine_for_runner(runner) -> Optional[Engine]:
    """The engine behind a --runner value (a name, a dotted path or a runner object), if any."""
    if runner is None:
        return None
    name = runner if isinstance(runner, str) else type(runner).__name__
    short = name.rsplit(".", 1)[-1]
    return next((e for e in ENGINES.values() if e.runner == short), None)
