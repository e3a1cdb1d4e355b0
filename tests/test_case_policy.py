"""--case: whether the input's capitalisation reaches the output (issue 12 #9).

"w3" and "W3" are one vocabulary word. With --case keep (the default) the output copies the
input's case pattern, so the two are distinguishable, and the report lists case as not protected.
With --case lower both give one output distribution.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dptext.pipeline.run import run
from dptext.transforms.beam import perturb_texts
from dptext.transforms.config import JobConfig
from tests.conftest import build_random_index, shard_lines


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("case_index")
    build_random_index(path, n=12, d=4, neighbours=6, seed=3)
    return path


def _outputs(index_dir, text: str, case: str, draws: int = 400) -> Counter:
    config = JobConfig(index_path=str(index_dir), mechanism="tem", epsilon=1.0, case=case)
    loaded = config.load()
    texts, _ = perturb_texts([text] * draws, loaded, config, np.random.default_rng(11))
    return Counter(texts)


def test_keep_copies_the_input_case_so_the_two_spellings_are_distinguishable(index_dir):
    upper, lower = _outputs(index_dir, "W3", "keep"), _outputs(index_dir, "w3", "keep")
    assert all(t[:1] == "W" for t in upper) and all(t[:1] == "w" for t in lower)
    assert not set(upper) & set(lower)


def test_lower_gives_one_output_distribution_for_both_spellings(index_dir):
    # Same seed, same word id: the two spellings must give the very same draws.
    assert _outputs(index_dir, "W3", "lower") == _outputs(index_dir, "w3", "lower")
    assert all(t == t.lower() for t in _outputs(index_dir, "W3 W5 w7", "lower"))


def test_unknown_case_policy_is_refused():
    with pytest.raises(ValueError, match="case .upper. is unknown"):
        JobConfig(index_path="x", mechanism="tem", epsilon=1.0, case="upper")


def _job(index_dir, tmp_path, *extra):
    tmp_path.mkdir()
    corpus = tmp_path / "in.txt"
    corpus.write_text("W3 w3 Hello\nW5 W6\n")
    out = str(tmp_path / "out" / "c")
    run(
        [
            "--input",
            str(corpus),
            "--output",
            out,
            "--index",
            str(index_dir),
            "--mechanism",
            "tem",
            "--epsilon",
            "1",
            "--runner",
            "DirectRunner",
            *extra,
        ]
    )
    return out


def test_the_report_says_whether_case_is_protected(index_dir, tmp_path):
    keep = json.loads(open(_job(index_dir, tmp_path / "keep") + ".privacy_report.json").read())
    assert keep["case_policy"] == "keep"
    assert any("Not protected" in line and "capitalisation" in line for line in keep["statement"])
    out = _job(index_dir, tmp_path / "lower", "--case", "lower")
    lower = json.loads(open(out + ".privacy_report.json").read())
    assert lower["case_policy"] == "lower"
    assert not any("capitalisation" in line for line in lower["statement"])
    lines = shard_lines(out + "-*-of-*.txt")
    assert len(lines) == 2 and all(line == line.lower() for line in lines)
