"""Refusals and one-line errors found by trying the first round of fixes as a hostile user."""

from __future__ import annotations

import json

import pytest

from dptext.pipeline.cli import main
from dptext.pipeline.report import report_json
from tests.conftest import build_random_index


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("refusals_index")
    build_random_index(path, n=12, d=4, neighbours=6, seed=2)
    return path


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args), "--runner", "DirectRunner"])
    return code, capsys.readouterr().err


def test_an_input_that_is_this_prefixs_own_output_is_refused(index_dir, tmp_path, capsys):
    corpus = tmp_path / "in.txt"
    corpus.write_text("w1 w2\nw3\n")
    out = tmp_path / "out" / "c"
    assert (
        _run(capsys, "--input", corpus, "--output", out, "--index", index_dir, "--mechanism", "tem", "--epsilon", 1)[0]
        == 0
    )
    # The outputs of the first run as the input of a second one to the same prefix, with --overwrite:
    code, err = _run(
        capsys,
        "--input",
        f"{out}-*",
        "--output",
        out,
        "--index",
        index_dir,
        "--mechanism",
        "tem",
        "--epsilon",
        1,
        "--overwrite",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "an output of --output" in err


@pytest.mark.parametrize("placeholder", ["w3", "W3", "<w3>"])
def test_a_placeholder_made_of_vocabulary_words_is_refused(index_dir, tmp_path, capsys, placeholder):
    corpus = tmp_path / "in.txt"
    corpus.write_text("w1 zebracorn\n")
    code, err = _run(
        capsys,
        "--input",
        corpus,
        "--output",
        tmp_path / "o" / "c",
        "--index",
        index_dir,
        "--mechanism",
        "tem",
        "--epsilon",
        1,
        "--oov-placeholder",
        placeholder,
    )
    assert code == 2 and "--oov-placeholder" in err and "vocabulary word 'w3'" in err.lower()
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_a_path_with_a_line_break_gives_a_one_line_error(tmp_path, capsys, index_dir):
    code, err = _run(
        capsys,
        "--input",
        tmp_path / "no\nsuch*.txt",
        "--output",
        tmp_path / "o" / "c",
        "--index",
        index_dir,
        "--epsilon",
        1,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no\\nsuch" in err


def test_the_json_report_stays_rfc8259_when_a_bound_overflows():
    text = report_json({"per_document_bound": {"basic": {"max": float("inf")}}, "x": [float("-inf"), 1.5]})
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert json.loads(text) == {"per_document_bound": {"basic": {"max": "inf"}}, "x": ["-inf", 1.5]}
