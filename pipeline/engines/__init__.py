"""Flink and Spark for dptext: the pinned engines, their job servers and standalone clusters.

Beam's Python FlinkRunner and SparkRunner start a Java job server from a jar. Maven Central
serves no shaded `beam-runners-*-job-server` jar at a Beam version whose Flink and Spark
runners are both served, so `make engines` resolves the unshaded runner artifacts with `mvn`
(poms in this folder), checks every jar against the committed sha256 list, and writes a small
launcher jar whose manifest names the driver class and puts those jars on the class path. That
launcher is what `--flink_job_server_jar` / `--spark_job_server_jar` point at.
"""

from dptext.pipeline.engines.catalog import BEAM_VERSION, ENGINES, Engine, engine_for_runner

__all__ = ["BEAM_VERSION", "ENGINES", "Engine", "engine_for_runner"]
