"""dptext on real Flink and Spark: Beam's job servers from `make engines`, an embedded Flink and a
local Spark by default, and standalone clusters (JobManager + TaskManager; Spark master +
worker) with an EXTERNAL SDK worker pool. The same job must give the same answer as on the
DirectRunner: documents + dead letter = records in, ids and labels ride along, the report's
counts and the counters equal (or, where the engine reports no counters, say so).

multivariate_laplace at an enormous epsilon maps every word to itself, so the documents
themselves must be identical across engines, not just their counts.

By default (CI) the JSONL corpus runs on the embedded Flink and the local Spark; the rest
(Parquet, gs://, clusters, faults) is marked slow: `make test-engines` runs all of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.engines.catalog import BEAM_VERSION, ENGINES
from dptext.pipeline.engines.install import installed
from tests.conftest import build_words_index, identity_job_argv, shard_lines

CANARY = "zanzibarite"  # in the vocabulary: goes through the mechanism, must stay out of everything else
OOV_CANARY = "quokkaflux"  # out of the vocabulary: becomes the placeholder
WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split() + [CANARY]
SHARDS, LINES = 3, 150
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module", autouse=True)
def engines_installed():
    missing = [e.label for e in ENGINES.values() if not installed(e)]
    if missing:  # `make test` installs them first; a bare pytest run must say what is missing
        pytest.fail(f"{', '.join(missing)} not installed: run `make engines`")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """JSONL shards with ids, labels, broken records and canaries, the same records as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("engines")
    build_words_index(root / "idx", WORDS, d=5, neighbours=6, seed=5)
    rng = np.random.default_rng(0)
    rows = []
    for shard in range(SHARDS):
        lines = []
        for i in range(LINES):
            if i % 37 == 5:
                lines.append(b'{"id": "broken')  # not JSON: dead letter
            elif i % 41 == 7:
                lines.append(json.dumps({"id": f"{shard}-{i}", "label": 1, "body": "no text field"}).encode())
            else:
                words = list(rng.choice(WORDS + [OOV_CANARY, "Unknownish"], size=rng.integers(0, 12)))
                record = {"id": f"{shard}-{i}", "label": int(i % 3), "text": " ".join(words).capitalize()}
                lines.append(json.dumps(record).encode())
                rows.append(record)
        (root / f"part-{shard}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows.append({"id": "null-text", "label": 2, "text": None})  # dead letter in Parquet
    (root / "parquet").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "parquet" / "part-0.parquet")
    return root


def run_job(corpus: Path, output: str, runner_args: list[str], input: str | None = None, fault=None) -> dict:
    """One dptext job in this process (as `dptext run` runs it); its outputs, counts and counters."""
    from dptext.pipeline.engines.defaults import apply_engine_defaults
    from dptext.pipeline.options import DPTextOptions, parse_pipeline_options
    from dptext.pipeline.report import job_counters
    from dptext.pipeline.run import execute, prepare

    options = parse_pipeline_options(
        [*identity_job_argv(input or str(corpus / "part-*.jsonl"), output, corpus / "idx"), *runner_args]
    )
    engine = apply_engine_defaults(options)
    job = prepare(options.view_as(DPTextOptions), engine)
    if fault is not None:
        job = job.with_config(fault(job.config))
    result = execute(options, job)
    with _open(output + ".privacy_report.json") as handle:
        report = json.loads(handle.read().decode("utf-8"))
    with _open(output + ".privacy_report.md") as handle:
        markdown = handle.read().decode("utf-8")
    return {
        "documents": sorted(shard_lines(output + "-*.jsonl")),
        "dead_letter": sorted(_without_source_root(shard_lines(output + ".dead_letter-*.jsonl"))),
        "counts": report["counts"],
        "metrics": job_counters(result),
        "report": report,
        "markdown": markdown,
    }


def _open(path: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def _without_source_root(lines: list[str]) -> list[str]:
    """Dead-letter records name their source file: compare them by file name, wherever it lives."""
    out = []
    for line in lines:
        record = json.loads(line)
        record["source"] = record["source"].rsplit("/", 1)[-1]
        out.append(json.dumps(record, sort_keys=True))
    return out


def assert_same_job(got: dict, reference: dict, corpus: Path, counters_reported: bool = True) -> None:
    assert got["documents"] == reference["documents"]
    assert got["dead_letter"] == reference["dead_letter"]
    assert got["counts"] == reference["counts"]
    if counters_reported:
        assert got["metrics"] == reference["metrics"]
    else:  # Spark's job server returns no counters: the report says so, it never prints a zero
        assert set(got["metrics"].values()) == {None}
        assert got["report"]["metrics"] == dict.fromkeys(reference["metrics"])
        assert "| documents | not reported by this runner |" in got["markdown"]
    for text in (json.dumps(got["report"]), got["markdown"], "\n".join(got["dead_letter"])):
        assert CANARY not in text and OOV_CANARY not in text


@pytest.fixture(scope="module")
def reference(corpus):
    """The DirectRunner's answer, checked against the corpus itself."""
    ref = run_job(corpus, str(corpus / "direct" / "out"), ["--runner", "DirectRunner"])
    inputs = {}
    for shard in range(SHARDS):
        for line in (corpus / f"part-{shard}.jsonl").read_text("utf-8").splitlines():
            if line.startswith('{"id": "broken'):
                continue
            record = json.loads(line)
            if "text" in record:
                inputs[record["id"]] = record
    documents = [json.loads(line) for line in ref["documents"]]
    assert len(ref["documents"]) + len(ref["dead_letter"]) == SHARDS * LINES  # every record out once
    assert sorted(d["id"] for d in documents) == sorted(inputs)
    for doc in documents:  # ids and labels ride along; every word is still there, one for one
        assert doc["label"] == inputs[doc["id"]]["label"]
        assert len(doc["text"].split()) == len(inputs[doc["id"]]["text"].split())
    assert ref["metrics"]["documents"] == ref["counts"]["documents"] == len(documents)
    assert ref["metrics"]["dead_lettered"] == len(ref["dead_letter"])
    return ref


# ---- the embedded Flink and the local Spark: what `--runner FlinkRunner|SparkRunner` alone runs ----
def test_flink_by_default_runs_embedded_and_agrees(corpus, reference):
    got = run_job(corpus, str(corpus / "flink-local" / "out"), ["--runner", "FlinkRunner"])
    assert_same_job(got, reference, corpus)
    assert got["report"]["engine"] == (
        f"Flink 1.19.0 (master [local]), through Beam {BEAM_VERSION}'s job server, SDK workers LOOPBACK"
    )


def test_spark_by_default_runs_local_and_agrees(corpus, reference):
    got = run_job(corpus, str(corpus / "spark-local" / "out"), ["--runner", "SparkRunner"])
    assert_same_job(got, reference, corpus, counters_reported=False)
    assert got["report"]["engine"].startswith("Spark 3.5.3 (master local[*]), through Beam")


# ---- Parquet and gs:// ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parquet_reference(corpus):
    return run_job(corpus, str(corpus / "direct-pq" / "out"), ["--runner", "DirectRunner"], _parquet(corpus))


def _parquet(corpus: Path) -> str:
    return str(corpus / "parquet" / "*.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner"])
def test_parquet_corpus_agrees(corpus, parquet_reference, runner):
    got = run_job(corpus, str(corpus / f"{runner}-pq" / "out"), ["--runner", runner], _parquet(corpus))
    assert_same_job(got, parquet_reference, corpus, counters_reported=runner == "FlinkRunner")
    assert len(parquet_reference["dead_letter"]) == 1  # the null text


@pytest.fixture(scope="module")
def bucket(corpus):
    from apache_beam.io.filesystems import FileSystems

    from tests.gcs_emulator import gcs_emulator

    with gcs_emulator("dptext-engines") as root:
        for path in corpus.glob("part-*.jsonl"):
            with FileSystems.create(f"{root}/in/{path.name}") as handle:
                handle.write(path.read_bytes())
        yield root


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["DirectRunner", "FlinkRunner", "SparkRunner"])
def test_gs_corpus_agrees(corpus, reference, bucket, runner):
    got = run_job(corpus, f"{bucket}/{runner}/out", ["--runner", runner], input=f"{bucket}/in/part-*.jsonl")
    assert_same_job(got, reference, corpus, counters_reported=runner != "SparkRunner")


# ---- standalone clusters, submitted to through the job server, SDK workers in an external pool -----
def _cluster(tmp_path_factory, name: str):
    """A standalone cluster of 2 slots / cores and an external worker pool; yields the runner options."""
    from dptext.pipeline.engines import cluster

    work = tmp_path_factory.mktemp(f"{name}-cluster")
    start = cluster.flink_cluster(work, slots=2) if name == "flink" else cluster.spark_cluster(work, cores=2)
    engine = ENGINES[name]
    with start as master, cluster.sdk_worker_pool(work, pythonpath=str(REPO)) as pool:
        yield [f"--runner={engine.runner}", f"--{engine.master_option}={master}", "--environment_type=EXTERNAL"] + [
            f"--environment_config={pool}"
        ]


@pytest.fixture(scope="module")
def flink_master(tmp_path_factory, bucket):
    # After the storage emulator: the worker pool's processes read its address from the environment.
    yield from _cluster(tmp_path_factory, "flink")


@pytest.fixture(scope="module")
def spark_master(tmp_path_factory, bucket):
    yield from _cluster(tmp_path_factory, "spark")


@pytest.mark.slow
def test_flink_cluster_agrees(corpus, reference, flink_master):
    got = run_job(corpus, str(corpus / "flink-cluster" / "out"), flink_master)
    assert_same_job(got, reference, corpus)
    engine = got["report"]["engine"]
    assert re.fullmatch(r"Flink 1\.19\.0 \(master localhost:\d+\), .* SDK workers EXTERNAL", engine)


@pytest.mark.slow
def test_spark_cluster_agrees(corpus, reference, spark_master):
    got = run_job(corpus, str(corpus / "spark-cluster" / "out"), spark_master)
    assert_same_job(got, reference, corpus, counters_reported=False)
    assert got["report"]["engine"].startswith("Spark 3.5.3 (master spark://127.0.0.1:")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["flink", "spark"])
def test_parquet_and_gs_corpora_agree_on_a_cluster(corpus, reference, parquet_reference, bucket, request, engine):
    cluster = request.getfixturevalue(f"{engine}_master")
    got = run_job(corpus, str(corpus / f"{engine}-cluster-pq" / "out"), cluster, _parquet(corpus))
    assert_same_job(got, parquet_reference, corpus, counters_reported=engine == "flink")
    got = run_job(corpus, f"{bucket}/{engine}-cluster/out", cluster, input=f"{bucket}/in/part-*.jsonl")
    assert_same_job(got, reference, corpus, counters_reported=engine == "flink")


# ---- a task that fails once: the engine retries it; nothing lost, nothing doubled -------------------
def _fail_once_on(corpus: Path, name: str):
    """The job's config, made to raise a non-transient error on the first attempt of the batch
    holding "cat" (tests/faults.py): the DoFn does not retry it, so only the engine can."""
    from tests.faults import FlakyConfig

    flag = corpus / f"{name}.fault"

    def flaky(config):
        fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
        return FlakyConfig(**fields, flag_file=str(flag), trigger_id=WORDS.index("cat"), error="RuntimeError")

    return flaky, flag


@pytest.mark.slow
def test_flink_cluster_retries_a_failed_task(corpus, reference, flink_master):
    flaky, flag = _fail_once_on(corpus, "flink-fault")
    got = run_job(corpus, str(corpus / "flink-fault" / "out"), flink_master, fault=flaky)
    assert flag.exists(), "the fault was never injected"
    assert_same_job(got, reference, corpus)


@pytest.mark.slow
def test_spark_cluster_retries_a_failed_task(corpus, reference, spark_master):
    flaky, flag = _fail_once_on(corpus, "spark-fault")
    got = run_job(corpus, str(corpus / "spark-fault" / "out"), spark_master, fault=flaky)
    assert flag.exists(), "the fault was never injected"
    assert_same_job(got, reference, corpus, counters_reported=False)


# ---- what `make engines` installs and what the defaults fill in (no engine started) ----------------
def test_the_job_servers_are_the_beam_version_of_the_python_sdk():
    import apache_beam

    assert apache_beam.__version__ == BEAM_VERSION
    assert f"apache-beam=={BEAM_VERSION}" in (REPO / "setup.py").read_text()
    assert f"apache-beam=={BEAM_VERSION}" in (REPO / "constraints.txt").read_text()
    assert f"ARG BEAM_VERSION={BEAM_VERSION}" in (REPO / "templates" / "worker.Dockerfile").read_text()
    for engine in ENGINES.values():
        assert f"<version>{BEAM_VERSION}</version>" in engine.pom.read_text()


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_jar_is_checked_against_the_lock_and_a_changed_one_is_named(name, tmp_path):
    from dptext.pipeline.engines.install import verify

    engine = ENGINES[name]
    assert verify(engine, engine.lib()) == []
    lib = tmp_path / "lib"
    lib.mkdir()
    jars = sorted(engine.lib().glob("*.jar"))
    for jar in jars[1:]:
        (lib / jar.name).symlink_to(jar)
    (lib / jars[0].name).write_bytes(jars[0].read_bytes() + b"\0")  # one byte more
    (lib / "extra.jar").write_bytes(b"PK")
    assert verify(engine, lib) == ["not in the lock: extra.jar", f"sha256 of {jars[0].name} differs from jars.sha256"]
    (lib / jars[1].name).unlink()
    assert f"missing {jars[1].name}" in verify(engine, lib)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_launcher_manifest_names_the_driver_and_every_jar(name):
    import zipfile

    engine = ENGINES[name]
    with zipfile.ZipFile(engine.launcher()) as jar:
        raw = jar.read("META-INF/MANIFEST.MF").decode()
    lines = raw.split("\r\n")
    assert all(len(line.encode()) <= 72 for line in lines)  # the JAR spec's limit; longer lines break java -jar
    headers = dict(line.split(": ", 1) for line in raw.replace("\r\n ", "").split("\r\n") if ": " in line)
    assert headers["Main-Class"] == engine.driver_class
    assert sorted(headers["Class-Path"].split()) == sorted(f"lib/{p.name}" for p in engine.lib().glob("*.jar"))
    assert "java.base/sun.nio.ch" in headers["Add-Opens"].split()


def _options(argv):
    from dptext.pipeline.options import parse_pipeline_options

    return parse_pipeline_options(["--output", "/tmp/out", *argv])


def test_defaults_fill_in_the_cached_job_server_and_a_local_engine():
    from dptext.pipeline.engines.defaults import apply_engine_defaults

    options = _options(["--runner", "FlinkRunner"])
    run = apply_engine_defaults(options)
    values = options.get_all_options()
    assert values["flink_job_server_jar"] == str(ENGINES["flink"].launcher())
    assert values["flink_master"] == "[local]" and run.environment == "LOOPBACK"
    options = _options(["--runner", "SparkRunner"])
    apply_engine_defaults(options)
    assert options.get_all_options()["spark_master_url"] == "local[*]"
    assert apply_engine_defaults(_options(["--runner", "DirectRunner"])) is None


def test_explicit_engine_options_win(tmp_path):
    import socket

    from dptext.pipeline.engines.defaults import apply_engine_defaults

    jar = tmp_path / "my-job-server.jar"
    jar.write_bytes(b"PK")
    with socket.create_server(("127.0.0.1", 0)) as listening:  # a master that answers
        master = f"127.0.0.1:{listening.getsockname()[1]}"
        options = _options(
            ["--runner", "FlinkRunner", "--flink_job_server_jar", str(jar), "--flink_master", master]
            + ["--environment_type", "EXTERNAL", "--environment_config", "localhost:50000"]
        )
        run = apply_engine_defaults(options)
    values = options.get_all_options()
    assert values["flink_job_server_jar"] == str(jar) and values["flink_master"] == master
    assert (run.master, run.environment, run.job_server) == (master, "EXTERNAL", str(jar))
    options = _options(["--runner", "SparkRunner", "--spark_master_url", "local[1]"])
    apply_engine_defaults(options)
    assert options.get_all_options()["spark_master_url"] == "local[1]"


def test_an_engine_that_is_not_installed_is_a_clear_error(tmp_path):
    from dptext.pipeline.engines.defaults import EngineNotInstalled, apply_engine_defaults

    with pytest.raises(EngineNotInstalled, match=r"needs Beam's Spark 3\.5\.3 job server.*make engines"):
        apply_engine_defaults(_options(["--runner", "SparkRunner"]), cache=tmp_path)


def test_output_is_never_read_as_beams_output_executable_path():
    """Beam's views accept abbreviations: --output PATH became --output_executable_path, and Flink's
    job server then wrote a pipeline jar to PATH instead of running the job (seen on 2.62)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions

    assert PipelineOptions(["--output", "/tmp/out"]).view_as(PortableOptions).output_executable_path == "/tmp/out"
    options = _options(["--runner", "FlinkRunner"])
    assert options.view_as(PortableOptions).output_executable_path is None
    assert options.get_all_options()["output"] == "/tmp/out"


@pytest.mark.parametrize(
    "runner, option, master",
    [
        ("FlinkRunner", "--flink_master", "localhost:{port}"),
        ("SparkRunner", "--spark_master_url", "spark://127.0.0.1:{port}"),
    ],
)
def test_a_master_nobody_answers_is_one_line_before_the_job(corpus, capfd, runner, option, master):
    """Found by hand: Flink's job server retried for 87 s, then a Python stack trace."""
    from dptext.pipeline.cli import main
    from dptext.pipeline.engines.cluster import free_port

    address = master.format(port=free_port())
    argv = ["run", "--input", str(corpus / "part-*.jsonl"), "--output", str(corpus / "nowhere" / "out")]
    argv += ["--index", str(corpus / "idx"), "--epsilon", "5", "--runner", runner, option, address]
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        f"dptext run: error: {option} {address}: no {runner[:-6]} master answers there (Connection refused); "
        "start the cluster or fix the address"
    ]
    assert not (corpus / "nowhere").exists() or not any((corpus / "nowhere").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner"])
def test_on_the_local_engines_a_failed_task_fails_the_job_and_leaves_nothing(corpus, runner):
    """The embedded Flink has no restart strategy and local Spark tries a task once
    (spark.task.maxFailures is 1 in local mode): the job fails, and what the user sees is the
    engine's error and no partial output (the README says how to get retries)."""
    flaky, flag = _fail_once_on(corpus, f"{runner}-local-fault")
    output = corpus / f"{runner}-local-fault"
    with pytest.raises(RuntimeError, match="failed in state FAILED"):
        run_job(corpus, str(output / "out"), ["--runner", runner], fault=flaky)
    assert flag.exists(), "the fault was never injected"
    assert not output.exists() or sorted(p.name for p in output.iterdir()) == []


@pytest.mark.slow
def test_an_interrupted_flink_run_leaves_no_output_and_no_job_server(corpus):
    """SIGTERM to `dptext run --runner FlinkRunner` while the job runs: one line, exit 143, no
    partial output, and the job server's JVM is gone with the job's process group."""
    import signal
    import subprocess
    import sys
    import time

    def job_servers() -> set[str]:
        found = subprocess.run(["pgrep", "-f", str(ENGINES["flink"].launcher())], capture_output=True, text=True)
        return set(found.stdout.split())

    before = job_servers()
    output = corpus / "flink-interrupted" / "out"
    argv = [sys.executable, "-m", "dptext.pipeline.cli", "run", "--runner", "FlinkRunner"]
    argv += identity_job_argv(str(corpus / "part-*.jsonl"), str(output), corpus / "idx")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (job_servers() - before):  # the job server is up: the job is being submitted or running
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before its job server started"
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.decode().splitlines()[-1] == f"dptext run: interrupted; partial outputs under {output} removed"
    assert not output.parent.exists() or list(output.parent.iterdir()) == []
    deadline = time.monotonic() + 30
    while job_servers() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (job_servers() - before), "the job server outlived the run"
