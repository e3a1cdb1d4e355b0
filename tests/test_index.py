"""Index build is exact (brute force agrees), the manifest is complete, loading catches damage."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dptext.transforms import index as index_module
from dptext.transforms import index_build
from dptext.transforms.index import (
    ANNOY,
    MANIFEST,
    NEIGHBOUR_DISTANCES,
    VECTORS,
    EmbeddingIndex,
    IndexLoadError,
    TableError,
    _embedding_id,
    table_key,
)
from tests.conftest import build_random_index


def _brute_force(vectors: np.ndarray):
    v = vectors.astype(np.float64)
    dist = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))
    n = len(v)
    off = ~np.eye(n, dtype=bool)
    positive = dist[off & (dist > 0)]
    return dist, positive.min(), dist[off].max()


@pytest.fixture
def words_vectors():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 12)).astype(np.float32)
    vectors[17] = vectors[5]  # an exact duplicate: distance 0, must come after the word itself
    return [f"w{i}" for i in range(len(vectors))], vectors


@pytest.mark.parametrize(
    "chunk_rows, distrust_float32, sample_columns, chunk_bytes",
    [
        (1024, False, 16384, 256 << 20),
        (7, False, 16384, 256 << 20),
        (64, True, 16384, 256 << 20),
        (64, False, 20, 256 << 20),
        (7, True, 25, 256 << 20),
        (64, False, 20, 64 * 4 * 37),
        (64, True, 25, 64 * 4 * 37),
    ],
)
def test_tables_and_extremes_match_brute_force(
    tmp_path, words_vectors, monkeypatch, chunk_rows, distrust_float32, sample_columns, chunk_bytes
):
    # sample_columns 20 and 25: each row's nearest are selected under a bound from a sample of
    # its columns (the path of vocabularies over 32,768 words) rather than by a full partition;
    # with chunk_bytes 64 x 4 x 37 the blocks are computed in tiles of 37 columns (the path of
    # vocabularies whose 1,024-row block would exceed 256 MB), the bound from its own product
    monkeypatch.setattr(index_build, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(index_build, "SAMPLE_COLUMNS", sample_columns)
    monkeypatch.setattr(index_build, "CHUNK_BYTES", chunk_bytes)
    if distrust_float32:  # every row takes the exact float64 fallback path, in column slices of 7
        monkeypatch.setattr(index_build, "_float32_d2_error_bound", lambda norms, d: np.full(len(norms), 1e9))
        monkeypatch.setattr(index_build, "EXACT_COLUMNS", 7)
    words, vectors = words_vectors
    index = EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=10, progress=False)
    dist, dmin, dmax = _brute_force(vectors)
    assert index.dmin == pytest.approx(dmin, rel=1e-12) and index.dmax == pytest.approx(dmax, rel=1e-12)
    for i in range(len(words)):
        others = np.delete(np.arange(len(words)), i)
        expected = others[np.lexsort((others, dist[i, others]))][:10]
        assert index.neighbour_ids[i, 0] == i and index.neighbour_distances[i, 0] == 0
        np.testing.assert_array_equal(index.neighbour_ids[i, 1:], expected)
        np.testing.assert_allclose(index.neighbour_distances[i, 1:], dist[i, expected], rtol=1e-6)
    assert index.neighbour_ids[5, 1] == 17 and index.neighbour_distances[5, 1] == 0


def test_manifest_records_parameters_shapes_and_hashes(tmp_path, words_vectors):
    words, vectors = words_vectors
    index = EmbeddingIndex.build(
        words, vectors, tmp_path / "idx", neighbours=4, progress=False, source={"file": "x.txt"}
    )
    m = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert (m["n"], m["d"], m["neighbours"]) == (300, 12, 4)
    assert m["files"][VECTORS]["shape"] == [300, 12] and m["files"][VECTORS]["dtype"] == "<f4"
    assert m["files"][NEIGHBOUR_DISTANCES]["shape"] == [300, 5]
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["source"] == {"file": "x.txt"} and index.manifest == m
    assert isinstance(EmbeddingIndex.load(tmp_path / "idx").vectors, np.memmap)


def test_lookup_and_nearest(tmp_path, words_vectors):
    words, vectors = words_vectors
    index = EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    np.testing.assert_array_equal(index.ids(["w3", "nope", "w299"]), [3, -1, 299])
    assert index.words([3, 299]) == ["w3", "w299"]
    rng = np.random.default_rng(0)
    points = vectors[rng.integers(0, 300, 200)] + rng.normal(scale=0.3, size=(200, 12))
    dist = ((points[:, None, :].astype(np.float64) - vectors[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(index.nearest(points, "exact"), dist.argmin(1))
    annoy = index.nearest(points, "annoy", search_k=10_000)
    assert (annoy == dist.argmin(1)).mean() >= 0.95  # approximate by design


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_full_search_orders_by_distance_then_id_like_brute_force(tmp_path, words_vectors, m):
    """The search of every word, where float32 cannot rank: (a) five copies of one vector (exact
    ties, broken by id); (b) groups of four words 0.1 apart around a point equidistant from them
    to float64 precision, then moved by 1e-9 (float32 scores differ by about 1e-6, the true gaps
    by about 1e-10). For m < 5 in (a) and m < 4 in (b) the (m + 1)-th word is within the float32
    bound, so the row must be re-scored in float64; trusting float32 gets most rows wrong."""
    words, vectors = words_vectors
    vectors = vectors.copy()
    vectors[[40, 41, 280]] = vectors[5]  # with 17: five copies of word 5
    rng = np.random.default_rng(4)
    groups = np.arange(100, 260).reshape(40, 4)  # words 100-259 in 40 tight groups of 4
    vectors[groups] = vectors[groups[:, :1]] + 0.1 * rng.normal(size=(40, 4, 12)).astype(np.float32)
    index = EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    v = vectors.astype(np.float64)
    centres = []
    for g in groups:  # the point nearest the group's mean that is equidistant from its words
        a, c = 2 * (v[g[1:]] - v[g[0]]), v[g].mean(axis=0)
        rhs = (v[g[1:]] ** 2).sum(1) - (v[g[0]] ** 2).sum()
        centres.append(c + np.linalg.lstsq(a, rhs - a @ c, rcond=None)[0])
    ties = np.repeat(centres, 5, axis=0) + 1e-9 * rng.normal(size=(200, 12))
    near = v[5] + rng.normal(scale=1e-3, size=(50, 12))
    far = v[rng.integers(0, 300, 500)] + rng.normal(scale=3.0, size=(500, 12))
    points = np.concatenate([near, ties, far, v[[5]]])
    got_ids, got_dist = index._nearest_all(points, m, rows_per_product=64)
    full = np.linalg.norm(points[:, None, :] - v[None], axis=2)
    want = np.array([np.lexsort((np.arange(300), row))[:m] for row in full])
    np.testing.assert_array_equal(got_ids, want)
    np.testing.assert_allclose(got_dist, np.take_along_axis(full, want, 1), rtol=1e-12)
    if m < 5:
        np.testing.assert_array_equal(got_ids[:50], np.tile([5, 17, 40, 41, 280][:m], (50, 1)))
    assert np.isin(want[50:250, 0], groups).all()  # the groups' words are the nearest
    np.testing.assert_array_equal(index.nearest(points, "exact"), want[:, 0])


def test_exact_neighbours_extends_the_table(tmp_path, words_vectors):
    words, vectors = words_vectors
    index = EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    ids, dist = index.exact_neighbours(9, 4)
    np.testing.assert_array_equal(ids, index.neighbour_ids[9])
    ids, _ = index.exact_neighbours(9, 30)
    assert len(ids) == 31 and ids[0] == 9


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / VECTORS).unlink(), "missing from the index directory"),
        (lambda d: (d / VECTORS).write_bytes((d / VECTORS).read_bytes()[:-4]), "truncated or corrupt"),
        (lambda d: (d / ANNOY).write_bytes(bytes(len((d / ANNOY).read_bytes()))), "sha256 does not match"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "corrupt manifest"),
        (lambda d: (d / MANIFEST).unlink(), "missing manifest"),
    ],
)
def test_damaged_index_fails_naming_the_file(tmp_path, words_vectors, damage, message):
    words, vectors = words_vectors
    EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    damage(tmp_path / "idx")
    with pytest.raises(IndexLoadError, match=message) as err:
        EmbeddingIndex.load(tmp_path / "idx")
    assert str(tmp_path / "idx") in str(err.value)


def test_bad_build_inputs(tmp_path):
    v = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="duplicate words"):
        EmbeddingIndex.build(["a", "a", "b"], v, tmp_path / "x", neighbours=1, progress=False)
    with pytest.raises(ValueError, match="neighbours must be between 1 and n - 1"):
        EmbeddingIndex.build(["a", "b", "c"], v, tmp_path / "x", neighbours=3, progress=False)
    with pytest.raises(ValueError, match="all vectors are identical"):
        EmbeddingIndex.build(["a", "b", "c"], v, tmp_path / "x", neighbours=1, progress=False)


def test_cached_table_is_computed_once_stored_verified_and_reloaded(tmp_path):
    from tests.conftest import build_random_index

    index = build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    calls = []

    def column_means(idx):
        calls.append(1)
        return np.asarray(idx.vectors, dtype=np.float64).mean(axis=0)

    first = index.table("means", column_means, {"kind": "mean"})
    again = index.table("means", column_means, {"kind": "mean"})
    assert len(calls) == 1 and np.array_equal(first, again)
    # A fresh load (another worker) finds it in the manifest, verified by hash, without recomputing.
    reloaded = EmbeddingIndex.load(tmp_path / "idx", verify=True)
    assert np.array_equal(reloaded.table("means", column_means, {"kind": "mean"}), first)
    assert len(calls) == 1
    # Other parameters are another table.
    reloaded.table("means", column_means, {"kind": "other"})
    assert len(calls) == 2
    # The stored table is covered by the manifest's hashes like every other file.
    entry = reloaded.manifest["tables"][table_key("means", {"kind": "mean"})]
    with open(tmp_path / "idx" / entry["file"], "r+b") as handle:
        handle.write(b"\xff" * 8)
    with pytest.raises(IndexLoadError, match=entry["file"]):
        EmbeddingIndex.load(tmp_path / "idx", verify=True)


def test_row_blocks_assemble_in_any_order_and_must_cover_every_word(words_vectors):
    """The unit a distributed build hands to workers: blocks computed independently, in any
    order, assemble to the single-process tables; a missing block is an error, not a hole."""
    _, vectors = words_vectors
    geom = index_build.Geometry(vectors)
    whole = index_build.build_tables(vectors, 10, progress=False)
    blocks = [index_build.row_block(geom, s, min(s + 37, len(vectors)), 10) for s in range(0, len(vectors), 37)]
    shuffled = index_build.assemble(geom, blocks[::-1])
    np.testing.assert_array_equal(shuffled.neighbour_ids, whole.neighbour_ids)
    np.testing.assert_array_equal(shuffled.neighbour_distances, whole.neighbour_distances)
    assert (shuffled.dmin, shuffled.dmax, shuffled.dmax_pair) == (whole.dmin, whole.dmax, whole.dmax_pair)
    with pytest.raises(ValueError, match="do not cover every word"):
        index_build.assemble(geom, blocks[1:])


def _edited(manifest: dict, edit) -> object:
    manifest = json.loads(json.dumps(manifest))
    return edit(manifest) or manifest


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: [m], "the manifest is a JSON list, not an object"),
        (lambda m: m.pop("files") and None, "field 'files' is missing"),
        (lambda m: m.pop("dmax") and None, "field 'dmax' is missing"),
        (lambda m: m.pop("n") and None, "field 'n' is missing"),
        (
            lambda m: m.update(dmin=0),
            "field 'dmin' must be a finite number > 0 (a distance between distinct words), got 0",
        ),
        (lambda m: m.update(dmin=-1.5), "field 'dmin' must be a finite number > 0"),
        (lambda m: m.update(dmax="7"), "field 'dmax' must be a finite number > 0"),
        (lambda m: m.update(dmax=m["dmin"] / 2), "field 'dmax' must be >= dmin"),
        (lambda m: m.update(n=1.5), "field 'n' must be an integer >= 2, got 1.5"),
        (lambda m: m.update(neighbours=300), "field 'neighbours' must be below n = 300, got 300"),
        (
            lambda m: m["files"][VECTORS].update(dtype="float128x"),
            "field 'files.vectors.f32.dtype' must be '<f4', got 'float128x'",
        ),
        (lambda m: m["files"][VECTORS].update(dtype="<f8"), "field 'files.vectors.f32.dtype' must be '<f4', got '<f8'"),
        (
            lambda m: m["files"][NEIGHBOUR_DISTANCES].update(dtype=5),
            "field 'files.neighbour_distances.f32.dtype' must be '<f4'",
        ),
        (lambda m: m["files"][VECTORS].update(shape=[300, 11]), "field 'files.vectors.f32.shape' must be [300, 12]"),
        (
            lambda m: m["files"][VECTORS].pop("shape") and None,
            "field 'files.vectors.f32.shape' must be a list of integers, got None",
        ),
        (lambda m: m["files"].pop(ANNOY) and None, "field 'files.annoy.ann' is missing"),
        (
            lambda m: m["files"][ANNOY].update(sha256=None),
            "field 'files.annoy.ann.sha256' must be a 64-digit hex string",
        ),
        (lambda m: m["files"].update({VECTORS: "x"}), "field 'files.vectors.f32' must be an object, got a str"),
        (lambda m: m.update(tables=[]), "field 'tables' must be an object, got a list"),
    ],
)
def test_a_hand_edited_manifest_fails_at_load_naming_the_manifest_and_the_field(tmp_path, words_vectors, edit, message):
    words, vectors = words_vectors
    EmbeddingIndex.build(words, vectors, tmp_path / "idx", neighbours=4, progress=False)
    path = tmp_path / "idx" / MANIFEST
    path.write_text(json.dumps(_edited(json.loads(path.read_text()), edit)))
    with pytest.raises(IndexLoadError) as err:
        EmbeddingIndex.load(tmp_path / "idx")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "rebuild the index with `dptext build-index`" in str(err.value)


# ---- workers only read the index (issue 13 #3) --------------------------------------------------
def _column_means(calls: list):
    def compute(idx):
        calls.append(1)
        return np.asarray(idx.vectors, dtype=np.float64).mean(axis=0)

    return compute


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """This test's own machine cache (verification markers, remote copies)."""
    monkeypatch.setenv("DPTEXT_INDEX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hash_calls(monkeypatch):
    """The files sha256_file hashes, in order."""
    calls = []
    real = index_module.sha256_file
    monkeypatch.setattr(index_module, "sha256_file", lambda path, *a: calls.append(Path(path).name) or real(path, *a))
    return calls


def test_a_second_load_on_the_machine_does_not_hash_again(tmp_path, cache, hash_calls):
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    hash_calls.clear()  # the build's own hashes
    EmbeddingIndex.load(tmp_path / "idx")
    assert sorted(hash_calls) == sorted(json.loads((tmp_path / "idx" / MANIFEST).read_text())["files"])
    EmbeddingIndex.load(tmp_path / "idx")
    EmbeddingIndex.load(tmp_path / "idx", read_only=True)
    assert len(hash_calls) == 5  # the marker vouches for the unchanged files
    assert len(list((cache / "verified").glob("*[!k]"))) == 1


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_file_changed_after_verification_is_hashed_again_and_fails(tmp_path, cache, hash_calls, keep_mtime):
    """Same size, new bytes; with keep_mtime the old mtime is put back (os.utime), which still
    changes ctime: the marker no longer matches, so the damage is found."""
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    EmbeddingIndex.load(tmp_path / "idx")
    annoy = tmp_path / "idx" / ANNOY
    before = annoy.stat()
    data = bytearray(annoy.read_bytes())
    data[100] ^= 0xFF
    annoy.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(annoy, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert annoy.stat().st_mtime_ns == before.st_mtime_ns and annoy.stat().st_size == before.st_size
    with pytest.raises(IndexLoadError, match=f"{annoy}: sha256 does not match the manifest"):
        EmbeddingIndex.load(tmp_path / "idx")
    assert hash_calls.count(ANNOY) == 3  # the build, the first load, this one


def test_a_manifest_edited_after_verification_is_checked_again(tmp_path, cache, hash_calls):
    """The marker is keyed by the manifest's bytes: a hand edit (here, the Annoy file's hash
    replaced by another valid hash) is checked against the files, not waved through."""
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    EmbeddingIndex.load(tmp_path / "idx")
    path = tmp_path / "idx" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][ANNOY]["sha256"] = manifest["files"][VECTORS]["sha256"]
    path.write_text(json.dumps(manifest, indent=1))
    with pytest.raises(IndexLoadError, match=f"{tmp_path / 'idx' / ANNOY}: sha256 does not match"):
        EmbeddingIndex.load(tmp_path / "idx")


_LOAD_AND_COUNT = """
import os, sys, time
from pathlib import Path
import dptext.transforms.index as ix
real, log, go = ix.sha256_file, sys.argv[2], Path(sys.argv[3])
def counted(path, *args):
    with open(log, "a") as out:
        out.write(f"{os.getpid()} {Path(path).name}\\n")
    time.sleep(0.2)          # a slow disk: the other process arrives while this one hashes
    return real(path, *args)
ix.sha256_file = counted
while not go.exists():
    time.sleep(0.005)
ix.EmbeddingIndex.load(sys.argv[1], read_only=True)
"""


def test_processes_that_load_together_hash_once(tmp_path, cache):
    """Two worker processes of one machine starting at once: one hashes, the other waits for its
    marker; without the lock both hash every file."""
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    log, go = tmp_path / "hashes.log", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _LOAD_AND_COUNT, str(tmp_path / "idx"), str(log), str(go)])
        for _ in range(2)
    ]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    assert [p.wait(60) for p in procs] == [0, 0]
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 5 and len({line.split()[0] for line in lines}) == 1


def test_a_read_only_index_never_computes_a_table(tmp_path, cache):
    """A worker's index: a missing table is a one-line error naming it and where tables come from;
    nothing is computed and the index directory is not touched."""
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    before = {f.name: f.read_bytes() for f in (tmp_path / "idx").iterdir()}
    worker = EmbeddingIndex.load(tmp_path / "idx", read_only=True)
    calls = []
    with pytest.raises(TableError) as err:
        worker.table("means", _column_means(calls), {"kind": "mean"})
    message = str(err.value)
    assert calls == [] and "\n" not in message
    assert message.startswith(
        f"{tmp_path / 'idx'}: the index has no table {table_key('means', {'kind': 'mean'})!r} "
        '(means, {"kind": "mean"})'
    )
    assert "`dptext build-index`" in message and "the launcher (`dptext run`)" in message
    assert {f.name: f.read_bytes() for f in (tmp_path / "idx").iterdir()} == before
    # Once the launcher stored it, a worker reads it (memory-mapped, hash-checked at load).
    launcher = EmbeddingIndex.load(tmp_path / "idx")
    stored = np.array(launcher.table("means", _column_means(calls), {"kind": "mean"}))
    worker = EmbeddingIndex.load(tmp_path / "idx", read_only=True)
    assert np.array_equal(worker.table("means", _column_means(calls), {"kind": "mean"}), stored)
    assert calls == [1] and isinstance(worker.table("means", None, {"kind": "mean"}), np.memmap)


def test_adding_a_table_keeps_the_embedding_id(tmp_path, cache):
    """The job carries the embedding id and every worker compares it: a table stored by the
    launcher must not change it (it hashes the vocabulary and the vectors only)."""
    built = build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    embedding_id = built.manifest["embedding_id"]
    EmbeddingIndex.load(tmp_path / "idx").table("means", _column_means([]), {"kind": "mean"})
    stored = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert len(stored["tables"]) == 1 and len(stored["files"]) == 6
    assert stored["embedding_id"] == embedding_id == _embedding_id(stored["files"])
    assert EmbeddingIndex.load(tmp_path / "idx", read_only=True).manifest["embedding_id"] == embedding_id


def test_a_table_is_never_stored_beside_an_index_rebuilt_since_the_load(tmp_path, cache):
    """The launcher loaded the index, then someone rebuilt the directory (other vectors): a table
    computed from the old vectors must not land in the new manifest."""
    launcher = build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=4)
    with pytest.raises(
        TableError, match=f"{tmp_path / 'idx'}: the index there was replaced after this process loaded it"
    ):
        launcher.table("means", _column_means([]), {"kind": "mean"})
    assert "tables" not in json.loads((tmp_path / "idx" / MANIFEST).read_text())


@contextlib.contextmanager
def _read_only_directory(path: Path):
    """No new file can be created in path: mode 555 for a normal user; root ignores modes, so an
    immutable attribute (chattr +i) there. Skips where neither holds."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo = lambda: path.chmod(0o755)  # noqa: E731
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    else:
        pytest.skip("cannot make a directory read-only here (root, and chattr +i failed)")
    try:
        try:
            (path / ".probe").touch()
        except OSError:
            yield
        else:
            (path / ".probe").unlink()
            pytest.skip("the directory stayed writable")
    finally:
        undo()


def test_a_launcher_that_cannot_write_the_index_says_which_table_and_how(tmp_path, cache):
    build_random_index(tmp_path / "idx", 30, 4, 5, seed=3)
    EmbeddingIndex.load(tmp_path / "idx").table("stored", _column_means([]))
    calls = []
    with _read_only_directory(tmp_path / "idx"):
        launcher = EmbeddingIndex.load(tmp_path / "idx")
        launcher.table("stored", _column_means(calls))  # a stored table needs no write
        with pytest.raises(TableError) as err:
            launcher.table("means", _column_means(calls), {"kind": "mean"})
    message = str(err.value)
    assert "\n" not in message and calls == []
    assert message.startswith(
        f"{tmp_path / 'idx'}: cannot store table {table_key('means', {'kind': 'mean'})!r} "
        '(means, {"kind": "mean"}) beside the index ('
    )
    assert "`dptext build-index` stores those of the default parameters" in message
    assert "Launch once with write access to the index (`dptext run` with these parameters" in message


def _word2vec(path: Path, n: int = 40, d: int = 6) -> Path:
    vectors = np.random.default_rng(5).normal(size=(n, d))
    path.write_text(
        f"{n} {d}\n" + "".join(f"w{i} " + " ".join(f"{x:.6f}" for x in v) + "\n" for i, v in enumerate(vectors)),
        encoding="utf-8",
    )
    return path


def test_build_index_stores_every_table_a_mechanism_reads_at_its_defaults(tmp_path, cache, capsys):
    """Every mechanism, at its default parameters and each of its choices (kde_prior's samplers,
    ...), builds on a worker's read-only load of a fresh `dptext build-index` output: no table is
    left for a worker to compute. A mechanism that gains a table fails here until DEFAULT_TABLES
    lists it."""
    import itertools

    from dptext.pipeline.cli import main
    from dptext.pipeline.options import mechanism_parameter_specs
    from dptext.transforms import mechanisms

    out = tmp_path / "idx"
    assert (
        main(["build-index", "--embedding", str(_word2vec(tmp_path / "e.txt")), "--out", str(out), "--neighbours", "8"])
        == 0
    )
    printed = capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    names = sorted(entry["name"] for entry in manifest["tables"].values())
    assert names == [
        "custext_members",
        "custext_scores",
        "diffractor_lists",
        "kde_log_prior",
        "knn_mutual",
        "mahalanobis_sqrt",
        "santext_plus_sensitive_distances",
        "santext_plus_sensitive_ids",
        "syntf_synonym_ids",
        "syntf_synonym_offsets",
    ]
    assert all(entry["file"] in printed for entry in manifest["tables"].values())
    worker = EmbeddingIndex.load(out, read_only=True)
    specs = mechanism_parameter_specs()
    for name in mechanisms.NAMES:
        choices = {spec.name: spec.choices for spec in specs.values() if name in spec.mechanisms and spec.choices}
        for values in itertools.product(*choices.values()):
            try:
                mechanisms.create(name, worker, 5.0, **dict(zip(choices, values)))
            except ValueError:  # an epsilon this mechanism refuses here; a TableError is no ValueError
                pass
    assert (
        main(
            [
                "build-index",
                "--embedding",
                str(tmp_path / "e.txt"),
                "--out",
                str(tmp_path / "bare"),
                "--neighbours",
                "8",
                "--no-tables",
            ]
        )
        == 0
    )
    assert "tables" not in json.loads((tmp_path / "bare" / MANIFEST).read_text())
