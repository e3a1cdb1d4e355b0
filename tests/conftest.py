"""Small shared fixtures: tiny real indexes (Annoy file and all) built from random vectors."""
from __future__ import annotations

import numpy as np
import pytest

from transforms.index import EmbeddingIndex


def build_random_index(path, n: int, d: int, neighbours: int, seed: int) -> EmbeddingIndex:
    """An index of n words "w0".."w{n-1}" with standard normal vectors, built in path."""
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return EmbeddingIndex.build([f"w{i}" for i in range(n)], vectors, path, neighbours=neighbours, progress=False)


@pytest.fixture(scope="module")
def random_index(tmp_path_factory):
    """random_index(n, d, neighbours, seed): a tiny real index in a fresh temporary directory."""
    def make(n: int, d: int, neighbours: int, seed: int) -> EmbeddingIndex:
        return build_random_index(tmp_path_factory.mktemp(f"idx{n}x{d}k{neighbours}s{seed}"), n, d, neighbours, seed)
    return make
