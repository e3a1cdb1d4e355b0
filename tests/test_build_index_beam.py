"""`dptext build-index --beam`: the exact pass as a Beam job gives the very same index files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dptext.pipeline.cli import main


def _embedding(path, n=700, d=9):
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(20, d))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    path.write_text(
        "".join(f"w{i} " + " ".join(f"{x:.6f}" for x in v) + "\n" for i, v in enumerate(vectors)), encoding="utf-8"
    )
    return str(path)


@pytest.mark.timeout(300)
def test_beam_build_on_two_worker_processes_equals_the_single_process_build(tmp_path, capsys):
    embedding = _embedding(tmp_path / "e.txt")
    assert main(["build-index", "--embedding", embedding, "--out", str(tmp_path / "local"), "--neighbours", "12"]) == 0
    assert (
        main(
            [
                "build-index",
                "--embedding",
                embedding,
                "--out",
                str(tmp_path / "beam"),
                "--neighbours",
                "12",
                "--beam",
                "--rows-per-block",
                "64",
                "--runner",
                "DirectRunner",
                "--direct_running_mode",
                "multi_processing",
                "--direct_num_workers",
                "2",
            ]
        )
        == 0
    )
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    beam = json.loads((tmp_path / "beam" / "manifest.json").read_text())
    for key in ("dmin", "dmax", "dmin_pair", "dmax_pair", "embedding_id"):
        assert beam[key] == local[key], key
    for name in ("neighbour_ids.i32", "neighbour_distances.f32", "vectors.f32"):
        assert beam["files"][name]["sha256"] == local["files"][name]["sha256"], name


def test_beam_options_need_the_beam_flag(tmp_path):
    with pytest.raises(SystemExit):
        main(["build-index", "--embedding", "x", "--out", str(tmp_path), "--runner", "DirectRunner"])
