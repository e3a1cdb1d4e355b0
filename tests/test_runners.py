"""The same job on the real execution paths we can run: DirectRunner in-process, DirectRunner with
2 worker processes, and Beam's portable path (Job API + an EXTERNAL pool of SDK worker processes,
as Flink and Spark run Python). Outputs, dead letter, report counts and metrics must agree.

multivariate_laplace at an enormous epsilon maps every word to itself, so even the documents
must be identical across runners, not just their counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dptext.pipeline.run import run
from tests.conftest import build_words_index, dptext_counters, identity_job_argv, shard_lines

WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split()
pytestmark = pytest.mark.timeout(300)  # a hung job service or worker pool fails instead of stalling CI


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """Beam's job service and an external SDK worker pool, as separate processes (the venv's bin
    first on PATH: the pool starts `python` from PATH for each worker)."""
    from benchmarks.scaleout import portable_services as services

    with services(tmp_path_factory.mktemp("services")) as runner_args:
        yield runner_args


@pytest.fixture(scope="module")
def parallel_portable_services(tmp_path_factory):
    """The same, with a job service that gives a job the SDK workers it asks for (Beam's own runs
    one whatever the job asks; see benchmarks/parallel_job_service.py)."""
    from benchmarks.scaleout import PARALLEL_JOB_SERVICE
    from benchmarks.scaleout import portable_services as services

    logs = tmp_path_factory.mktemp("parallel-services")
    with services(logs, PARALLEL_JOB_SERVICE) as runner_args:
        yield runner_args, logs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    build_words_index(root / "idx", WORDS, d=5, neighbours=6, seed=5)
    rng = np.random.default_rng(0)
    for shard in range(3):
        lines = []
        for i in range(200):
            if i % 37 == 5:
                lines.append(b'{"id": "broken')
            else:
                text = " ".join(rng.choice(WORDS + ["Unknownish"], size=rng.integers(0, 12)))
                lines.append(json.dumps({"id": f"{shard}-{i}", "text": text.capitalize()}).encode())
        (root / f"part-{shard}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def _run_with(corpus: Path, name: str, runner_args: list[str]) -> dict:
    output = str(corpus / name / "out")
    result = run([*identity_job_argv(str(corpus / "part-*.jsonl"), output, corpus / "idx"), *runner_args])
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    return {
        "documents": sorted(shard_lines(output + "-*.jsonl")),
        "dead_letter": sorted(shard_lines(output + ".dead_letter-*.jsonl")),
        "counts": report["counts"],
        "metrics": dptext_counters(result),
    }


@pytest.fixture(scope="module")
def reference(corpus):
    return _run_with(corpus, "direct", ["--runner", "DirectRunner"])


def test_reference_run_accounts_for_every_record(reference):
    assert len(reference["documents"]) + len(reference["dead_letter"]) == 3 * 200
    assert len(reference["dead_letter"]) == 3 * 6
    assert reference["metrics"]["documents"] == reference["counts"]["documents"] == len(reference["documents"])
    assert reference["metrics"]["dead_lettered"] == len(reference["dead_letter"])


def test_multi_processing_direct_runner_agrees(corpus, reference):
    other = _run_with(
        corpus,
        "multi",
        ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
    )
    assert other == reference


def test_portable_runner_with_external_worker_pool_agrees(corpus, reference, portable_services):
    other = _run_with(corpus, "portable", portable_services)
    assert other == reference


def test_portable_runner_with_two_sdk_workers_agrees(corpus, reference, parallel_portable_services):
    runner_args, logs = parallel_portable_services
    other = _run_with(corpus, "portable-2", [*runner_args, "--sdk_worker_parallelism", "2"])
    assert other == reference
    assert (logs / "pool.log").read_text().count("Starting worker") == 2


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),  # DirectRunner
        (["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], False),
        (["--runner", "FnApiRunner"], False),
        (["--runner", "PortableRunner"], True),
        (["--runner", "DataflowRunner"], True),
        (["--runner", "DataflowRunner", "--rebalance", "false"], False),
        (["--rebalance", "true"], True),
    ],
)
def test_rebalance_is_on_except_on_the_direct_runner(argv, expected):
    from apache_beam.options.pipeline_options import PipelineOptions

    from dptext.pipeline.options import rebalance

    assert rebalance(PipelineOptions(argv)) is expected


def test_with_the_rebalancing_shuffle_agrees(corpus, reference):
    other = _run_with(
        corpus,
        "rebalanced",
        [
            "--runner",
            "DirectRunner",
            "--direct_running_mode",
            "multi_processing",
            "--direct_num_workers",
            "2",
            "--rebalance",
            "true",
        ],
    )
    assert other == reference


# ---- faults: a batch fails on its first attempt; no record is lost or duplicated -------------------
def _run_with_fault(corpus: Path, name: str, runner_args: list[str], error: str) -> dict:
    """The reference job with one injected failure on the first attempt of the batch holding "cat"."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from dptext.pipeline.options import DPTextOptions
    from dptext.pipeline.run import execute, prepare
    from tests.faults import FlakyConfig

    output = str(corpus / name / "out")
    options = PipelineOptions([*identity_job_argv(str(corpus / "part-*.jsonl"), output, corpus / "idx"), *runner_args])
    job = prepare(options.view_as(DPTextOptions))
    flag = corpus / f"{name}.fault"
    flaky = FlakyConfig(
        **{f: getattr(job.config, f) for f in job.config.__dataclass_fields__},
        flag_file=str(flag),
        trigger_id=WORDS.index("cat"),
        error=error,
    )
    result = execute(options, job.with_config(flaky))
    assert flag.exists(), "the fault was never injected"
    report = json.loads(Path(output + ".privacy_report.json").read_text("utf-8"))
    counters = dptext_counters(result)
    return {
        "documents": sorted(shard_lines(output + "-*.jsonl")),
        "dead_letter": sorted(shard_lines(output + ".dead_letter-*.jsonl")),
        "counts": report["counts"],
        "metrics": counters,
    }


def _same_as_reference(faulty: dict, reference: dict, retries: int) -> None:
    assert faulty["metrics"].pop("batch_retries", 0) == retries
    assert faulty == reference


def test_transient_fault_is_retried_in_the_dofn_on_the_direct_runner(corpus, reference):
    """FnApiRunner does not retry failed bundles (an exception fails the job): the DoFn retries a
    batch on a transient error, emitting nothing until the batch succeeded."""
    _same_as_reference(
        _run_with_fault(corpus, "fault-direct", ["--runner", "DirectRunner"], "OSError"), reference, retries=1
    )


def test_any_fault_is_retried_by_the_bundle_based_direct_runner(corpus, reference):
    """BundleBasedDirectRunner retries a failed bundle (up to 4 attempts, executor.TransformExecutor)
    and commits only the successful attempt's outputs, so even a non-transient error is survived."""
    _same_as_reference(
        _run_with_fault(corpus, "fault-bundle", ["--runner", "BundleBasedDirectRunner"], "RuntimeError"),
        reference,
        retries=0,
    )


def test_transient_fault_is_retried_on_the_portable_runner(corpus, reference, portable_services):
    _same_as_reference(_run_with_fault(corpus, "fault-portable", portable_services, "OSError"), reference, retries=1)
