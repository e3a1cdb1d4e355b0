"""The Flex Template, checked offline: metadata in step with the options, strictly valid, accepted
by gcloud; Dockerfiles wired as Dataflow expects; the graph portable (what Flink and Spark run)."""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.runners.portability.portable_runner import PortableRunner

from dptext.pipeline import template_metadata
from dptext.pipeline.options import DPTextOptions
from dptext.pipeline.run import build_pipeline, prepare
from dptext.transforms.index import EmbeddingIndex

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def test_metadata_file_matches_the_options():
    assert template_metadata.main(["--check", "--out", str(TEMPLATES / "metadata.json")]) == 0


def test_an_option_missing_from_metadata_is_caught(monkeypatch, tmp_path):
    original = DPTextOptions._add_argparse_args.__func__

    def with_extra(cls, parser):
        original(cls, parser)
        parser.add_argument("--new-knob", "--new_knob", dest="new_knob", help="added later")

    monkeypatch.setattr(DPTextOptions, "_add_argparse_args", classmethod(with_extra))
    assert template_metadata.main(["--check", "--out", str(TEMPLATES / "metadata.json")]) == 1
    assert "new_knob" in [p["name"] for p in template_metadata.build_metadata()["parameters"]]


def test_metadata_is_strictly_valid_and_test_only_options_are_not_offered():
    meta = json.loads((TEMPLATES / "metadata.json").read_text())
    assert template_metadata.validate_metadata(meta) == []
    names = [p["name"] for p in meta["parameters"]]
    assert "test_seed" not in names and {"input", "output", "index", "epsilon", "text_field"} <= set(names)
    assert all(not p["isOptional"] for p in meta["parameters"] if p["name"] in template_metadata.REQUIRED)


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda p: p.update(parameterType=p.pop("paramType")), "unknown key 'parameterType'"),
        (lambda p: p.update(paramType="STRING"), "paramType 'STRING' is not one of"),
        (lambda p: p.update(name="text-field"), "name must match"),
        (lambda p: p.update(helpText=""), "'helpText' must be a non-empty string"),
        (lambda p: p.update(regexes=["("]), "does not compile"),
        (lambda p: p.update(isOptional="yes"), "'isOptional' must be true or false"),
    ],
)
def test_bad_metadata_is_rejected(mutate, problem):
    meta = json.loads((TEMPLATES / "metadata.json").read_text())
    mutate(meta["parameters"][3])
    assert any(problem in p for p in template_metadata.validate_metadata(meta))


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_accepts_the_template_spec_offline():
    out = subprocess.run(
        [
            "gcloud",
            "dataflow",
            "flex-template",
            "build",
            "gs://bucket/templates/dptext.json",
            "--image",
            "europe-west1-docker.pkg.dev/p/dptext/dptext-launcher:0",
            "--sdk-language",
            "PYTHON",
            "--metadata-file",
            str(TEMPLATES / "metadata.json"),
            "--print-only",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout[out.stdout.index("{") :])
    assert len(spec["metadata"]["parameters"]) == len(template_metadata.build_metadata()["parameters"])


def test_dockerfiles_are_wired_for_dataflow():
    launcher = (TEMPLATES / "Dockerfile").read_text()
    assert "python311-template-launcher-base" in launcher
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/templates/main.py" in launcher
    assert "ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py" in launcher
    worker = (TEMPLATES / "worker.Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={beam.__version__}" in worker and "beam_python3.11_sdk" in worker
    for dockerfile in (launcher, worker):  # dependencies compiled at build time, pinned
        assert re.search(r"pip install .*-c constraints.txt", dockerfile)
        for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
            assert (TEMPLATES.parent / copied.rstrip("/")).exists(), copied
    assert (TEMPLATES / "main.py").is_file()


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """A tiny index and corpus: what graph construction needs."""
    root = tmp_path_factory.mktemp("job")
    words = [f"w{i}" for i in range(12)]
    EmbeddingIndex.build(
        words,
        np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32),
        root / "idx",
        neighbours=4,
        progress=False,
    )
    (root / "c.jsonl").write_text('{"text": "w1 w2"}\n', encoding="utf-8")
    return ["--input", str(root / "c.jsonl"), "--index", str(root / "idx"), "--epsilon", "1000"]


def test_graph_translates_to_portable_primitives_only(small_job, tmp_path):
    options = PipelineOptions(
        [
            *small_job,
            "--output",
            str(tmp_path / "o"),
            "--runner",
            "PortableRunner",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            "localhost:50000",
        ]
    )
    opts = options.view_as(DPTextOptions)
    p = beam.Pipeline(options=options)
    build_pipeline(p, opts, prepare(opts))
    proto = PortableRunner.get_proto_pipeline(p, options)
    leaves = collections.Counter()

    def walk(tid):
        t = proto.components.transforms[tid]
        for sub in t.subtransforms:
            walk(sub)
        if not t.subtransforms:
            leaves[t.spec.urn] += 1

    for root in proto.root_transform_ids:
        walk(root)
    portable = {
        u.urn
        for u in (
            common_urns.primitives.IMPULSE,
            common_urns.primitives.PAR_DO,
            common_urns.primitives.GROUP_BY_KEY,
            common_urns.primitives.FLATTEN,
            common_urns.primitives.ASSIGN_WINDOWS,
            common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE,
            common_urns.combine_components.COMBINE_PER_KEY_MERGE_ACCUMULATORS,
            common_urns.combine_components.COMBINE_PER_KEY_EXTRACT_OUTPUTS,
        )
    }
    assert set(leaves) <= portable, set(leaves) - portable
    assert leaves[common_urns.primitives.PAR_DO.urn] > 0


def test_dataflow_dry_run_builds_the_job_offline(small_job):
    """Beam's DataflowRunner with --dry_run True builds the whole job without credentials or network."""
    from apache_beam.portability.api import beam_runner_api_pb2

    image = "europe-west1-docker.pkg.dev/my-project/dptext/dptext-worker:0"
    options = PipelineOptions(
        [
            *small_job,
            "--output",
            "gs://dptext-dry-run/out/x",
            "--runner",
            "DataflowRunner",
            "--project",
            "my-project",
            "--region",
            "europe-west1",
            "--temp_location",
            "gs://dptext-dry-run/temp",
            "--staging_location",
            "gs://dptext-dry-run/staging",
            "--sdk_container_image",
            image,
            "--dry_run",
            "True",
        ]
    )
    opts = options.view_as(DPTextOptions)
    p = beam.Pipeline(options=options)
    build_pipeline(p, opts, prepare(opts))
    assert p.run().state == "DONE"
    proto = p.runner.proto_pipeline
    steps = {t.unique_name for t in proto.components.transforms.values()}
    assert {
        "ReadCorpus",
        "ParseRecords",
        "Privatize",
        "Privatize/PerturbDocuments",
        "Privatize/PrivacyReport",
        "WriteDocuments",
        "WriteReport",
        "WriteDeadLetter",
    } <= steps
    images = {
        beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
        for e in proto.components.environments.values()
        if e.urn == "beam:env:docker:v1"
    }
    assert images == {image}
