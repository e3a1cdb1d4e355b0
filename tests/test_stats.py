"""N_w and S_w estimates against exact values, calibration, and the two commands' files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dptext.pipeline.cli import main
from dptext.transforms import mechanisms
from dptext.transforms.audit import pairwise_distances
from dptext.transforms.mechanisms.truncated_gumbel import truncated_gumbel_distribution
from dptext.transforms.mechanisms.vocabulary_exponential import capped_exponential_distribution
from dptext.transforms.stats import TargetUnreachable, calibrate, sample_words, word_statistics


@pytest.fixture(scope="module")
def small(random_index):
    return random_index(n=30, d=3, neighbours=6, seed=13)


def test_unchanged_probability_matches_the_exact_diagonal(small):
    """tem's N_w is the diagonal of its exact distribution. With S = 4,000 draws a word's estimate
    has standard error sqrt(p (1 - p) / S) <= 0.008; 5.5 standard errors is a one-in-ten-million
    false alarm per word (30 words)."""
    mech = mechanisms.create("tem", small, 2.0, beta=0.2)
    exact = np.diag(capped_exponential_distribution(pairwise_distances(small.vectors), 2.0, cap=mech.gamma))
    stats = word_statistics(mech, np.arange(small.n), 4000, np.random.default_rng(1))
    se = np.sqrt(exact * (1 - exact) / 4000)
    assert (np.abs(stats.unchanged - exact) <= 5.5 * se + 1e-12).all()
    assert ((1 <= stats.distinct) & (stats.distinct <= small.n)).all()
    # Broken: counting changed outputs instead of unchanged ones is far outside the tolerance.
    assert not (np.abs((1 - stats.unchanged) - exact) <= 5.5 * se + 1e-12).all()


def test_truncated_gumbel_unchanged_matches_its_oracle(small):
    mech = mechanisms.create("truncated_gumbel", small, 200.0)
    exact = np.diag(truncated_gumbel_distribution(pairwise_distances(small.vectors), mech.gumbel.b, small.dmax))
    stats = word_statistics(mech, np.arange(small.n), 4000, np.random.default_rng(2))
    assert (np.abs(stats.unchanged - exact) <= 5.5 * np.sqrt(exact * (1 - exact) / 4000) + 1e-12).all()


def test_distinct_outputs_count_exactly():
    class Cycle:
        epsilon = 1.0

        def perturb(self, ids, rng):  # word w's draws cycle through w, w+1, w+2
            return (ids + np.arange(len(ids)) % 3).astype(np.int32)

    stats = word_statistics(Cycle(), np.array([0, 5]), 9, np.random.default_rng(0))
    assert stats.distinct.tolist() == [3, 3] and stats.unchanged.tolist() == pytest.approx([1 / 3, 1 / 3])


def test_sample_is_uniform_without_replacement_and_fixed_by_seed():
    a, b = sample_words(1000, 50, seed=3), sample_words(1000, 50, seed=3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50
    assert len(sample_words(10, 50)) == 10


def test_calibration_hits_the_target_and_fails_clearly_when_unreachable(small):
    result = calibrate(small, "tem", 0.5, {"beta": 0.2}, low=0.05, high=200.0, sample=None, draws=400)
    assert abs(result["median_unchanged"] - 0.5) <= 0.05 + 3 * result["median_standard_error"]
    assert result["bracket"][1] / result["bracket"][0] <= 1.0101
    with pytest.raises(TargetUnreachable, match="out of reach"):
        calibrate(small, "tem", 0.999, {"beta": 0.2}, low=0.05, high=0.2, sample=None, draws=100)


def test_stats_and_calibrate_commands_write_their_files(small, tmp_path, capsys):
    out = tmp_path / "stats"
    assert (
        main(
            [
                "stats",
                "--index",
                str(small.path),
                "--mechanism",
                "tem",
                "--epsilon",
                "0.5",
                "2",
                "8",
                "--out",
                str(out),
                "--sample",
                "0",
                "--draws",
                "50",
                "--param",
                "beta=0.2",
            ]
        )
        == 0
    )
    header = (out / "stats.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["mechanism", "epsilon", "statistic"] and "p50" in header
    data = json.loads((out / "stats.json").read_text())
    assert [r["epsilon"] for r in data["rows"]] == [0.5, 2.0, 8.0] and data["parameters"] == {"beta": 0.2}
    assert (out / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    medians = [r["unchanged"]["p50"] for r in data["rows"]]
    assert medians == sorted(medians)
    assert (
        main(
            [
                "calibrate",
                "--index",
                str(small.path),
                "--mechanism",
                "tem",
                "--target-unchanged",
                "0.5",
                "--param",
                "beta=0.2",
                "--sample",
                "0",
                "--draws",
                "100",
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c.json").read_text())["epsilon"] > 0
    assert (
        main(
            [
                "stats",
                "--index",
                str(small.path),
                "--mechanism",
                "tem",
                "--epsilon",
                "1",
                "--out",
                str(out),
                "--param",
                "search=exact",
            ]
        )
        == 2
    )
    assert "tem takes beta" in capsys.readouterr().err
