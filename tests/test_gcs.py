"""gs:// everywhere, against a real GCS emulator: input glob, index, outputs, dead letter, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from dptext.pipeline.run import run
from dptext.transforms.index import EmbeddingIndex, IndexLoadError
from tests.conftest import build_words_index, shard_lines
from tests.gcs_emulator import gcs_emulator

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
    build_words_index(local, WORDS, d=5, neighbours=6, seed=3)
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
    assert not list(first.path.glob(".*.part"))  # no partial files left behind


def test_missing_remote_index_names_the_uri(bucket):
    with pytest.raises(IndexLoadError, match=f"{bucket}/nowhere/manifest.json: cannot read"):
        EmbeddingIndex.load(f"{bucket}/nowhere")


def test_pipeline_reads_and_writes_gs_paths(bucket):
    records = [{"id": 1, "text": "The cat sat on the mat"}, {"id": 2, "text": "hello world"}]
    _put(f"{bucket}/corpus/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    _put(f"{bucket}/corpus/part-1.jsonl", b'{"id": 3, "text": "good day"}\n{"id": 4, broken\n')
    output = f"{bucket}/out/run"
    run(
        [
            "--input",
            f"{bucket}/corpus/*.jsonl",
            "--output",
            output,
            "--index",
            f"{bucket}/index",
            "--epsilon",
            "1000",
            "--runner",
            "DirectRunner",
        ]
    )
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
    argv = [
        "--input",
        f"{bucket}/c2/*.jsonl",
        "--output",
        output,
        "--index",
        f"{bucket}/index",
        "--epsilon",
        "1000",
        "--runner",
        "DirectRunner",
    ]
    run(argv)
    stale = [
        f"{output}-00001-of-00003.jsonl",
        f"{output}.dead_letter-00000-of-00002.jsonl",
        f"{bucket}/out2/beam-temp-run-0123456789abcdef0123456789abcdef/x.run.jsonl",
    ]
    others = [
        f"{bucket}/out2/run2-00000-of-00001.jsonl",
        f"{bucket}/out2/run-notes.txt",
        f"{bucket}/out2/beam-temp-run2-0123456789abcdef0123456789abcdef/x.run2.jsonl",
    ]
    for uri in stale + others:
        _put(uri, b"stale\n")
    with pytest.raises(
        OptionsError,
        match=rf"--output {output}: {output}-00000-of-00001.jsonl and 6 more of its "
        "outputs already exist; pass --overwrite",
    ):
        run(argv)
    run(argv + ["--overwrite"])
    left = sorted(m.path for m in FileSystems.match([f"{bucket}/out2/**"])[0].metadata_list)
    assert left == sorted(
        others
        + [
            f"{output}-00000-of-00001.jsonl",
            f"{output}.dead_letter-00000-of-00001.jsonl",
            f"{output}.privacy_report.json",
            f"{output}.privacy_report.md",
        ]
    )
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
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "DPTEXT_INDEX_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dptext.pipeline.cli",
            "run",
            "--input",
            f"{bucket}/c3/a.txt",
            "--output",
            output,
            "--index",
            f"{bucket}/index",
            "--epsilon",
            "1000",
            "--batch-chars",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

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


# ---- workers only read the index (issue 13 #3) --------------------------------------------------
def _copy_index(bucket: str, name: str) -> str:
    """A fresh copy of the module's index under its own prefix (tests that add tables get their own)."""
    for m in FileSystems.match([f"{bucket}/index/*"])[0].metadata_list:
        _put(f"{bucket}/{name}/{m.path.rsplit('/', 1)[-1]}", _get(m.path))
    return f"{bucket}/{name}"


def _objects(uri: str) -> list[str]:
    return sorted(m.path.rsplit("/", 1)[-1] for m in FileSystems.match([f"{uri}/*"])[0].metadata_list)


def _means(calls: list):
    def compute(idx):
        calls.append(1)
        return np.asarray(idx.vectors, dtype=np.float64).mean(axis=0)

    return compute


def test_the_launcher_stores_a_table_beside_a_gs_index_and_workers_read_it(bucket, tmp_path, monkeypatch):
    import hashlib

    from dptext.transforms.index import TableError, table_key

    uri = _copy_index(bucket, "tables")
    launcher = EmbeddingIndex.load(uri)
    embedding_id = launcher.manifest["embedding_id"]
    calls = []
    first = np.array(launcher.table("means", _means(calls), {"kind": "mean"}))
    stored = json.loads(_get(f"{uri}/manifest.json"))
    entry = stored["tables"][table_key("means", {"kind": "mean"})]
    assert hashlib.sha256(_get(f"{uri}/{entry['file']}")).hexdigest() == stored["files"][entry["file"]]["sha256"]
    assert stored["embedding_id"] == embedding_id
    assert _objects(uri) == sorted([*stored["files"], "manifest.json"])  # no probe object left
    # A worker on another machine copies the new manifest's files and reads the table; never computes.
    monkeypatch.setenv("DPTEXT_INDEX_CACHE", str(tmp_path / "worker-machine"))
    worker = EmbeddingIndex.load(uri, read_only=True)
    assert np.array_equal(worker.table("means", _means(calls), {"kind": "mean"}), first) and calls == [1]
    assert worker.manifest["embedding_id"] == embedding_id
    with pytest.raises(TableError, match=f"{uri}: the index has no table 'other'"):
        worker.table("other", _means(calls))


def test_launchers_that_loaded_the_same_gs_index_keep_each_others_tables(bucket):
    """Two launchers loaded the index before either stored a table: each re-reads the manifest
    before adding its own entry, reads (never recomputes) a table the other stored, and a manifest
    written back by a stale writer gets the entries again from ensure_tables_stored."""
    from dptext.transforms.index import table_key

    uri = _copy_index(bucket, "two-launchers")
    a, b = EmbeddingIndex.load(uri), EmbeddingIndex.load(uri)
    calls = []
    means = np.array(b.table("means", _means(calls), {"kind": "mean"}))
    a.table("firsts", lambda idx: calls.append(2) or np.asarray(idx.vectors[0], dtype=np.float64))
    assert np.array_equal(a.table("means", _means(calls), {"kind": "mean"}), means) and calls == [1, 2]
    stored = json.loads(_get(f"{uri}/manifest.json"))
    assert sorted(stored["tables"]) == sorted([table_key("means", {"kind": "mean"}), "firsts"])
    stale = dict(stored, tables={})
    _put(f"{uri}/manifest.json", json.dumps(stale).encode())
    a.ensure_tables_stored()
    assert sorted(json.loads(_get(f"{uri}/manifest.json"))["tables"]) == ["firsts"]  # a's own; b re-adds its own
    b.ensure_tables_stored()
    assert len(json.loads(_get(f"{uri}/manifest.json"))["tables"]) == 2


_LOAD_REMOTE = """
import os, sys, time
from pathlib import Path
from apache_beam.io.filesystems import FileSystems
import dptext.transforms.index as ix
log, go = sys.argv[2], Path(sys.argv[3])
def note(text):
    with open(log, "a") as out:
        out.write(f"{os.getpid()} {text}\\n")
real_open, real_hash = FileSystems.open, ix.sha256_file
def counted_open(path, *args, **kwargs):
    name = path.rsplit("/", 1)[-1]
    note(f"open {name}")
    if name != "manifest.json":
        time.sleep(0.2)      # a slow network: the other process arrives while this one copies
    return real_open(path, *args, **kwargs)
FileSystems.open = staticmethod(counted_open)
ix.sha256_file = lambda path, *args: note(f"hash {Path(path).name}") or real_hash(path, *args)
while not go.exists():
    time.sleep(0.005)
index = ix.EmbeddingIndex.load(sys.argv[1], read_only=True)
note(f"loaded {index.path}")
"""


def test_two_processes_loading_a_fresh_gs_index_at_once_copy_and_hash_it_once(bucket, tmp_path):
    """Worker processes of one machine starting together on a gs:// index not yet copied: one copies
    it (hashing as it streams), the other waits for the copy; neither hashes it again at load."""
    import os
    import subprocess
    import sys
    import time

    uri = _copy_index(bucket, "fresh")
    log, go = tmp_path / "events.log", tmp_path / "go"
    env = {**os.environ, "DPTEXT_INDEX_CACHE": str(tmp_path / "machine")}
    procs = [subprocess.Popen([sys.executable, "-c", _LOAD_REMOTE, uri, str(log), str(go)], env=env) for _ in range(2)]
    time.sleep(4.0)  # both imported Beam and wait
    go.touch()
    assert [p.wait(120) for p in procs] == [0, 0]
    events = [line.split(" ", 1) for line in log.read_text().split("\n")[:-1]]
    opened = [e.split()[1] for _, e in events if e.startswith("open ") and e != "open manifest.json"]
    assert sorted(opened) == sorted(n for n in _objects(uri) if n != "manifest.json")  # each object once
    assert [e for _, e in events if e.startswith("hash ")] == []
    loaded = {e for _, e in events if e.startswith("loaded ")}
    assert len(loaded) == 1 and len({pid for pid, _ in events}) == 2


def test_a_corrupt_gs_object_is_an_error_naming_it_and_leaves_no_copy(bucket, index_cache):
    uri = _copy_index(bucket, "corrupt")
    data = bytearray(_get(f"{uri}/annoy.ann"))
    data[100] ^= 0xFF
    _put(f"{uri}/annoy.ann", bytes(data))
    with pytest.raises(IndexLoadError, match=f"{uri}/annoy.ann: sha256 does not match the manifest"):
        EmbeddingIndex.load(uri)
    copies = [p for p in index_cache.iterdir() if p.is_dir() and p.name != "verified"]
    assert len(copies) == 1 and not (copies[0] / "manifest.json").exists()
    assert not (copies[0] / "annoy.ann").exists() and not list(copies[0].glob(".*.part"))


def test_a_job_with_non_default_tables_on_a_gs_index(bucket):
    """kde_prior with the MH sampler and another bandwidth: the launcher stores both tables beside
    the gs:// index before the job; the job's workers (read-only) find them."""
    uri = _copy_index(bucket, "kde")
    _put(f"{bucket}/c4/part-0.jsonl", b'{"id": 1, "text": "the cat sat on the mat"}\n')
    output = f"{bucket}/out4/run"
    run(
        [
            "--input",
            f"{bucket}/c4/*.jsonl",
            "--output",
            output,
            "--index",
            uri,
            "--mechanism",
            "kde_prior",
            "--sampler",
            "mh",
            "--bandwidth-scale",
            "2",
            "--chain-length",
            "5",
            "--epsilon",
            "3",
            "--runner",
            "DirectRunner",
        ]
    )
    assert [json.loads(line)["id"] for line in shard_lines(output + "-*.jsonl")] == [1]
    names = sorted(e["name"] for e in json.loads(_get(f"{uri}/manifest.json"))["tables"].values())
    assert names == ["kde_log_prior", "knn_mutual"]


def test_the_emulator_survives_a_port_taken_after_it_was_chosen(monkeypatch):
    """Seen once in CI's command: a port chosen free was taken before the emulator bound it; its
    server thread died, Server.start() waited forever and pytest never exited."""
    import socket
    import threading

    import tests.gcs_emulator as helper

    taken = socket.create_server(("127.0.0.1", 0))
    ports = iter([taken.getsockname()[1]])
    real = helper._free_port
    monkeypatch.setattr(helper, "_free_port", lambda: next(ports, None) or real())
    before = {t for t in threading.enumerate() if not t.daemon}
    try:
        with helper.gcs_emulator("port-race") as root:
            _put(f"{root}/x", b"ok")
            assert _get(f"{root}/x") == b"ok"
    finally:
        taken.close()
    assert {t for t in threading.enumerate() if not t.daemon} <= before  # nothing keeps the process alive
