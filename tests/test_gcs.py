"""gs:// everywhere, against a real GCS emulator: input glob, index, outputs, dead letter, report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline.run import run
from tests.conftest import shard_lines
from tests.gcs_emulator import gcs_emulator
from transforms.index import EmbeddingIndex, IndexLoadError

WORDS = "the cat sat on a mat dog ran to park hello world good bad day night".split()


def _put(uri: str, data: bytes) -> None:
    with FileSystems.create(uri) as handle:
        handle.write(data)


def _get(uri: str) -> bytes:
    with FileSystems.open(uri) as handle:
        return handle.read()


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, request):
    local = tmp_path_factory.mktemp("idx")
    EmbeddingIndex.build(WORDS, np.random.default_rng(3).normal(size=(len(WORDS), 5)).astype(np.float32),
                         local, neighbours=6, progress=False)
    with gcs_emulator("dptext-test") as root:
        for f in local.iterdir():
            _put(f"{root}/index/{f.name}", f.read_bytes())
        yield root


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPTEXT_INDEX_CACHE", str(tmp_path / "index-cache"))
    return tmp_path / "index-cache"


def test_remote_index_is_copied_once_and_verified(bucket, index_cache):
    first = EmbeddingIndex.load(f"{bucket}/index")
    again = EmbeddingIndex.load(f"{bucket}/index")
    assert first.path == again.path and first.path.parent == index_cache
    assert first.words([0, 1]) == WORDS[:2] and first.n == len(WORDS)
    assert not list(first.path.glob(".*.part"))      # no partial files left behind


def test_missing_remote_index_names_the_uri(bucket):
    with pytest.raises(IndexLoadError, match=f"{bucket}/nowhere/manifest.json: cannot read"):
        EmbeddingIndex.load(f"{bucket}/nowhere")


def test_pipeline_reads_and_writes_gs_paths(bucket):
    records = [{"id": 1, "text": "The cat sat on the mat"}, {"id": 2, "text": "hello world"}]
    _put(f"{bucket}/corpus/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    _put(f"{bucket}/corpus/part-1.jsonl", b'{"id": 3, "text": "good day"}\n{"id": 4, broken\n')
    output = f"{bucket}/out/run"
    run(["--input", f"{bucket}/corpus/*.jsonl", "--output", output, "--index", f"{bucket}/index",
         "--epsilon", "1000", "--runner", "DirectRunner"])
    docs = [json.loads(line) for line in shard_lines(output + "-*.jsonl")]
    dead = [json.loads(line) for line in shard_lines(output + ".dead_letter-*.jsonl")]
    assert sorted(d["id"] for d in docs) == [1, 2, 3]
    assert [d["source"] for d in dead] == [f"{bucket}/corpus/part-1.jsonl"] and "invalid JSON" in dead[0]["reason"]
    report = json.loads(_get(output + ".privacy_report.json"))
    assert report["counts"]["documents"] == 3 and report["index"]["path"] == f"{bucket}/index"
    assert _get(output + ".privacy_report.md").startswith(b"# dptext privacy report")
