"""dptext as a library: dptext.Privatize inside a user's own Beam pipeline, the public names, and
a wheel whose only import package is dptext."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest

import dptext
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and dog ran to park i love this movie what terrible day".split()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("privatize_index")
    vectors = np.random.default_rng(5).normal(size=(len(WORDS), 5)).astype(np.float32)
    dptext.EmbeddingIndex.build(WORDS, vectors, path, neighbours=6, progress=False)
    return path


_COLLECTED: dict = {}


def _keep(elements, name):
    _COLLECTED[name] = elements


def _run(build):
    """Run a pipeline built by build(p) -> {name: PCollection} in this process; return the elements
    (module-level state: the in-process FnApiRunner unpickles _keep by reference to this module)."""
    _COLLECTED.clear()
    # Beam 2.62 knows the FnApiRunner by object only (the name "FnApiRunner" came in later releases).
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    with beam.Pipeline(FnApiRunner()) as p:
        for name, pcoll in build(p).items():
            pcoll | f"Collect{name}" >> beam.combiners.ToList() | f"Keep{name}" >> beam.Map(_keep, name)
    return dict(_COLLECTED)


def test_strings_next_to_the_users_own_transforms(index_dir):
    texts = ["the cat sat on a mat", "I love this movie", "", "dog and zebracorn"]

    def build(p):
        lines = p | beam.Create(texts) | "UserStrip" >> beam.Map(str.strip)
        private = lines | "Privatize" >> dptext.Privatize(index_dir, mechanism="tem", epsilon=2.0)
        lengths = private.documents | "UserWordCount" >> beam.Map(lambda t: len(t.split()))
        return {
            "documents": private.documents,
            "dead": private.dead_letter,
            "report": private.report,
            "lengths": lengths,
        }

    out = _run(build)
    assert len(out["documents"]) == len(texts) and all(isinstance(t, str) for t in out["documents"])
    assert sorted(out["lengths"]) == sorted(len(t.split()) for t in texts)  # one output word per word
    assert "zebracorn" not in " ".join(out["documents"])  # OOV -> placeholder
    assert out["dead"] == []
    (report,) = out["report"]
    assert report["counts"]["documents"] == len(texts)
    assert report["mechanism"] == "tem" and report["runner"] == "FnApiRunner"
    assert report["input"] is None and report["guarantee"]["kind"] == "metric-DP"


def test_dicts_ride_along_and_bad_elements_are_dead_lettered(index_dir):
    records = [
        {"id": 1, "text": "the cat sat", "label": "pos", "meta": {"k": [1, 2.5, None]}},
        {"id": 2, "text": "what a terrible day", "label": "neg"},
        {"id": 3, "body": "no text field zebracorn"},
        {"id": 4, "text": 42},
        "a bare string zebracorn",
    ]

    def build(p):
        private = (
            p
            | beam.Create(records)
            | dptext.Privatize(
                index_dir,
                "truncated_gumbel",
                epsilon=1.5 * smallest_feasible_epsilon(len(WORDS), _dmin(index_dir)),
                text_field="text",
                test_seed=3,
            )
        )
        return {"documents": private.documents, "dead": private.dead_letter, "report": private.report}

    out = _run(build)
    documents = sorted(out["documents"], key=lambda r: r["id"])
    assert [{k: v for k, v in d.items() if k != "text"} for d in documents] == [
        {k: v for k, v in r.items() if k != "text"} for r in records[:2]
    ]
    assert [len(d["text"].split()) for d in documents] == [3, 4]
    reasons = sorted(d["reason"] for d in out["dead"])
    assert reasons == [
        "element is a str, not a dict with 'text'",
        "missing text field 'text'",
        "text field 'text' is a int, not a string",
    ]
    assert all(set(d) == {"source", "offset", "reason"} and "zebracorn" not in json.dumps(d) for d in out["dead"])
    (report,) = out["report"]
    assert report["counts"]["documents"] == 2
    assert "TEST SEED" in report["randomness"]


def test_an_empty_input_still_gives_exactly_one_report(index_dir):
    def build(p):
        private = (
            p
            | beam.Create([], reshuffle=False).with_output_types(str)
            | dptext.Privatize(index_dir, "tem", epsilon=2.0)
        )
        return {"documents": private.documents, "report": private.report}

    out = _run(build)
    assert out["documents"] == [] and len(out["report"]) == 1 and out["report"][0]["counts"]["documents"] == 0


def _dmin(index_dir) -> float:
    return dptext.EmbeddingIndex.load(index_dir).dmin


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mechanism="tem", epsilon=-1.0), "epsilon must be a finite number > 0"),
        (dict(mechanism="nope", epsilon=1.0), "unknown mechanism 'nope'"),
        (dict(mechanism="tem", epsilon=1.0, candidates=3), "no parameter candidates"),
        (dict(mechanism="truncated_gumbel", epsilon=1.0), "smallest feasible epsilon"),
        (dict(mechanism="tem", epsilon=1.0, oov="drop"), "oov 'drop' is unknown"),
        (dict(mechanism="tem", epsilon=1.0, placeholder="<\n>"), "line break"),
    ],
)
def test_everything_is_checked_when_the_transform_is_built(index_dir, kwargs, message):
    with pytest.raises(dptext.DptextError, match=message):
        dptext.Privatize(index_dir, **kwargs)


def test_a_missing_index_fails_when_the_transform_is_built(tmp_path):
    with pytest.raises(dptext.DptextError, match="nowhere"):
        dptext.Privatize(tmp_path / "nowhere", "tem", epsilon=1.0)


def test_the_readme_example_runs(index_dir, capsys):
    """The README's "Use it inside your own pipeline" example, run as written on a test index."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use it inside your own pipeline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'index="index/"' in code
    exec(compile(code.replace('index="index/"', f"index={str(index_dir)!r}"), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'label': 'pos'" in printed and "'documents': 2" in printed


def test_public_names():
    assert set(dptext.mechanisms.NAMES) >= {"truncated_gumbel", "multivariate_laplace", "tem", "kde_prior"}
    assert callable(dptext.mechanisms.create) and callable(dptext.read_embedding)
    assert re.fullmatch(r"\d+\.\d+\.\d+", dptext.__version__)


def test_the_wheel_holds_only_the_dptext_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dptext-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"dptext", f"dptext-{dptext.__version__}.dist-info"}
    for module in (
        "dptext/__init__.py",
        "dptext/pipeline/privatize.py",
        "dptext/transforms/beam.py",
        "dptext/transforms/mechanisms/tem.py",
    ):
        assert module in names
    assert not any("/api/" in n for n in names)
