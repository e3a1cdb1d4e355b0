"""gs:// everywhere, against a real GCS emulator: input glob, index, outputs, dead letter, report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from dptext.pipeline.run import run
from tests.conftest import shard_lines
from tests.gcs_emulator import gcs_emulator
from dptext.transforms.index import EmbeddingIndex, IndexLoadError

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


def test_a_gs_prefix_with_outputs_is_refused_and_overwrite_replaces_exactly_its_outputs(bucket):
    """Issue 12 #1 on gs://: a second run is refused naming an existing object; --overwrite deletes
    every output of the prefix (a larger earlier run's shards, Beam temporary objects) before the
    job, and nothing of a neighbouring prefix."""
    from dptext.pipeline.errors import OptionsError

    _put(f"{bucket}/c2/part-0.jsonl", b'{"id": 1, "text": "the cat sat"}\n{"id": 2, "text": "good day"}\n')
    output = f"{bucket}/out2/run"
    argv = ["--input", f"{bucket}/c2/*.jsonl", "--output", output, "--index", f"{bucket}/index",
            "--epsilon", "1000", "--runner", "DirectRunner"]
    run(argv)
    stale = [f"{output}-00001-of-00003.jsonl", f"{output}.dead_letter-00000-of-00002.jsonl",
             f"{bucket}/out2/beam-temp-run-0123456789abcdef0123456789abcdef/x.run.jsonl"]
    others = [f"{bucket}/out2/run2-00000-of-00001.jsonl", f"{bucket}/out2/run-notes.txt",
              f"{bucket}/out2/beam-temp-run2-0123456789abcdef0123456789abcdef/x.run2.jsonl"]
    for uri in stale + others:
        _put(uri, b"stale\n")
    with pytest.raises(OptionsError, match=rf"--output {output}: {output}-00000-of-00001.jsonl and 6 more of its "
                                           "outputs already exist; pass --overwrite"):
        run(argv)
    run(argv + ["--overwrite"])
    left = sorted(m.path for m in FileSystems.match([f"{bucket}/out2/**"])[0].metadata_list)
    assert left == sorted(others + [f"{output}-00000-of-00001.jsonl", f"{output}.dead_letter-00000-of-00001.jsonl",
                                    f"{output}.privacy_report.json", f"{output}.privacy_report.md"])
    assert sorted(json.loads(line)["id"] for line in shard_lines(output + "-*-of-*.jsonl")) == [1, 2]


def test_an_interrupted_cli_run_on_gs_leaves_no_object_behind(bucket, tmp_path):
    """Issue 12 #7 on gs://: SIGTERM to `dptext run` while Beam's temporary objects hold privatized
    documents; the run removes them (and its lock object) and says so in one line."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    rng = np.random.default_rng(0)
    _put(f"{bucket}/c3/a.txt", "".join(" ".join(rng.choice(WORDS, 10)) + "\n" for _ in range(3000)).encode())
    output = f"{bucket}/out3/c"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "DPTEXT_INDEX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "dptext.pipeline.cli", "run", "--input", f"{bucket}/c3/a.txt", "--output",
                             output, "--index", f"{bucket}/index", "--epsilon", "1000", "--batch-chars", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def objects():
        return [m.path for m in FileSystems.match([f"{bucket}/out3/**"])[0].metadata_list]
    deadline = time.monotonic() + 90
    while not any("/beam-temp-c-" in path for path in objects()):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before writing"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.decode() == f"dptext run: interrupted; partial outputs under {output} removed\n"
    assert objects() == []
