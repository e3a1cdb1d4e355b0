"""Small shared fixtures: tiny real indexes (Annoy file and all) built from random vectors."""

from __future__ import annotations

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from dptext.transforms.index import EmbeddingIndex


def shard_lines(pattern: str) -> list[str]:
    """Lines of every file matching a local or gs:// pattern, split on "\n" only (a CR inside a
    document is its text), files in name order."""
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    lines = []
    for path in paths:
        with FileSystems.open(path) as handle:
            lines += handle.read().decode("utf-8").split("\n")[:-1]
    return lines


def dptext_counters(result) -> dict:
    """The job's dptext counters, each summed over the steps that increment it."""
    counters: dict = {}
    for c in result.metrics().query(MetricsFilter().with_namespace("dptext"))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    counters.pop("reports_built", None)  # the marker that the runner reports counters at all
    return counters


def identity_job_argv(input: str, output: str, index) -> list[str]:
    """`dptext run` options of a job whose documents must match byte for byte across runners:
    multivariate_laplace with exact search at an enormous epsilon maps every word to itself."""
    return ["--input", input, "--output", output, "--index", str(index)] + [
        "--mechanism",
        "multivariate_laplace",
        "--search",
        "exact",
        "--epsilon",
        "1e9",
    ]


def build_random_index(path, n: int, d: int, neighbours: int, seed: int) -> EmbeddingIndex:
    """An index of n words "w0".."w{n-1}" with standard normal vectors, built in path."""
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return EmbeddingIndex.build([f"w{i}" for i in range(n)], vectors, path, neighbours=neighbours, progress=False)


def build_words_index(path, words, d: int, neighbours: int, seed: int):
    """An index of the given words with standard normal vectors (seeded), built in path."""
    vectors = np.random.default_rng(seed).normal(size=(len(words), d)).astype(np.float32)
    EmbeddingIndex.build(list(words), vectors, path, neighbours=neighbours, progress=False)
    return path


@pytest.fixture(scope="module")
def random_index(tmp_path_factory):
    """random_index(n, d, neighbours, seed): a tiny real index in a fresh temporary directory."""

    def make(n: int, d: int, neighbours: int, seed: int) -> EmbeddingIndex:
        return build_random_index(tmp_path_factory.mktemp(f"idx{n}x{d}k{neighbours}s{seed}"), n, d, neighbours, seed)

    return make
