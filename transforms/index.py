"""EmbeddingIndex: the index directory every worker loads (build, save, load, lookup, nearest).

This module is the only place that knows the directory's files. Arrays are raw little-endian
files that numpy memory-maps, so every process on a machine shares one copy in the page cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from dptext.transforms.index_build import Tables, build_tables, candidate_order
from dptext.transforms.numerics import U32, gamma32
from dptext.transforms.errors import DptextError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.txt"
VECTORS = "vectors.f32"
NEIGHBOUR_IDS = "neighbour_ids.i32"
NEIGHBOUR_DISTANCES = "neighbour_distances.f32"
ANNOY = "annoy.ann"

TABLE_LOCK = ".tables.lock"

DEFAULT_NEIGHBOURS = 64
DEFAULT_ANNOY_TREES = 16


class IndexLoadError(DptextError, RuntimeError):
    """A missing, corrupt or inconsistent index directory."""


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class _AnnoyHandle:
    """Lazily loaded Annoy forest (memory-mapped); a plain class so Beam's Shared can weak-ref it."""

    def __init__(self, path: Path, d: int):
        self.path, self.d, self._annoy = path, d, None

    def get(self):
        if self._annoy is None:
            from annoy import AnnoyIndex

            forest = AnnoyIndex(self.d, "euclidean")
            if not forest.load(str(self.path), prefault=False):
                raise IndexLoadError(f"{self.path}: Annoy could not load this file")
            self._annoy = forest
        return self._annoy


class EmbeddingIndex:
    """Vocabulary, vectors, exact K-NN table, distance extremes and an Annoy forest."""

    def __init__(self, path: Path, manifest: dict, words: list[str], vectors: np.ndarray,
                 neighbour_ids: np.ndarray, neighbour_distances: np.ndarray):
        self.path = path
        self.manifest = manifest
        self._words = words
        self._id_of = {w: i for i, w in enumerate(words)}
        self.vectors = vectors
        self.neighbour_ids = neighbour_ids
        self.neighbour_distances = neighbour_distances
        self._annoy = _AnnoyHandle(path / ANNOY, manifest["d"])
        self._sq_norms = None
        self._tables: dict[str, np.ndarray] = {}

    # ---- shape and constants -------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.manifest["n"]

    @property
    def d(self) -> int:
        return self.manifest["d"]

    @property
    def dmin(self) -> float:
        return self.manifest["dmin"]

    @property
    def dmax(self) -> float:
        return self.manifest["dmax"]

    @property
    def neighbours(self) -> int:
        """K: neighbours per word in the table (the table has K + 1 columns, the word first)."""
        return self.manifest["neighbours"]

    # ---- lookup --------------------------------------------------------------------------
    def ids(self, tokens: Iterable[str]) -> np.ndarray:
        """Vocabulary ids of tokens, -1 for out-of-vocabulary."""
        get = self._id_of.get
        return np.fromiter((get(t, -1) for t in tokens), dtype=np.int32)

    def id(self, token: str) -> int:
        return self._id_of.get(token, -1)

    def words(self, ids: Sequence[int]) -> list[str]:
        vocab = self._words
        return [vocab[i] for i in np.asarray(ids).tolist()]

    @property
    def vocabulary(self) -> list[str]:
        return self._words

    # ---- geometry ------------------------------------------------------------------------
    def distances_from(self, word_id: int) -> np.ndarray:
        """Exact float64 Euclidean distances from one word to every word."""
        diff = self.vectors.astype(np.float64) - self.vectors[word_id].astype(np.float64)
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def exact_neighbours(self, word_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The word and its k nearest neighbours by exact search (for k beyond the table)."""
        dist = self.distances_from(word_id)
        ids = candidate_order(dist, word_id)[: k + 1].astype(np.int32)
        return ids, dist[ids]

    def nearest(self, points: np.ndarray, method: str = "annoy", search_k: int = -1) -> np.ndarray:
        """Id of the nearest vocabulary word to each row of points (float, shape (m, d))."""
        return self.nearest_words(points, 1, method, search_k)[:, 0]

    def nearest_words(self, points: np.ndarray, m: int = 1, method: str = "exact", search_k: int = -1,
                      sources: np.ndarray | None = None) -> np.ndarray:
        """The m nearest vocabulary words to each row of points, (len(points), m) int32 ids: the one
        nearest-word search of dptext. exact: by (distance, id); with `sources` (the word each point
        is a noisy copy of) the neighbour table certifies most rows (nearest_to_noisy). annoy:
        Annoy's approximate search (search_k -1: its default); the points it returns fewer than m
        words for are searched exactly."""
        points = np.asarray(points, dtype=np.float64)
        if method == "exact":
            if sources is None:
                return self._nearest_all(points, m)[0]
            return self.nearest_to_noisy(sources, points, m)[0]
        if method != "annoy":
            raise ValueError(f"unknown nearest-word search {method!r}; valid: annoy, exact")
        forest = self._annoy.get()
        found = [forest.get_nns_by_vector(p, m, search_k) for p in points.astype(np.float32)]
        short = np.array([len(f) < m for f in found], dtype=bool)
        out = np.empty((len(points), m), dtype=np.int32)
        if (~short).any():
            out[~short] = np.array([f for f, s in zip(found, short) if not s], dtype=np.int32)
        if short.any():
            out[short] = self.nearest_words(points[short], m, "exact", sources=None if sources is None
                                            else np.asarray(sources)[short])
        return out

    def nearest_to_noisy(self, ids: np.ndarray, points: np.ndarray, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact m nearest words (ids, float64 distances, by (distance, id)) to points = phi(w) + noise.

        Every word outside w's table is at least dK(w) (its K-th neighbour distance) from w, hence
        at least dK(w) - |noise| from the point; when the m-th nearest table word is closer than
        that, the table holds the exact answer. Other rows fall back to a search of every word.
        """
        ids = np.asarray(ids)
        points = np.asarray(points, dtype=np.float64)
        vectors = np.asarray(self.vectors)
        out_ids = np.empty((len(ids), m), dtype=np.int32)
        out_d = np.empty((len(ids), m))
        noise = np.linalg.norm(points - vectors[ids].astype(np.float64), axis=1)
        d_k = np.asarray(self.neighbour_distances[ids, -1], dtype=np.float64) * (1 - 1e-5)
        # Every table word is within dK of w, so the m-th is at least |noise| - dK from the point:
        # with |noise| >= dK the table can never certify (the usual case at small epsilon).
        hopeful = np.flatnonzero(noise < d_k)
        fallback = [np.flatnonzero(noise >= d_k)]
        for s in range(0, len(hopeful), 256):      # bounds the (rows, K + 1, d) float64 differences
            rows = hopeful[s:s + 256]
            table = np.asarray(self.neighbour_ids[ids[rows]])
            diff = vectors[table].astype(np.float64) - points[rows, None, :]
            dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            order = np.lexsort((table, dist), axis=1)[:, :m]
            out_ids[rows] = np.take_along_axis(table, order, 1)
            out_d[rows] = np.take_along_axis(dist, order, 1)
            fallback.append(rows[~(out_d[rows][:, -1] < d_k[rows] - noise[rows])])
        rows = np.sort(np.concatenate(fallback))
        if len(rows):
            out_ids[rows], out_d[rows] = self._nearest_all(points[rows], m)
        return out_ids, out_d

    def _nearest_all(self, points: np.ndarray, m: int, rows_per_product: int = 512):
        """Exact m nearest of every word to each point, by (distance, id).

        Float32 products rank every word; every word within the float32 error bound of the m-th
        is re-scored in float64, so rounding never changes the answer. The m + 1 best of a row are
        peeled off by argmin passes (cheaper than a partition); when the (m + 1)-th is outside the
        bound, the m peeled words are the only candidates, otherwise the row's every word within
        the bound is re-scored.
        """
        self._ensure_norms()
        points = np.asarray(points, dtype=np.float64)
        vectors = np.asarray(self.vectors)
        ids = np.empty((len(points), m), dtype=np.int32)
        dist = np.empty((len(points), m))
        p_norm = np.linalg.norm(points, axis=1)
        peel = min(m + 1, self.n)
        for s in range(0, len(points), rows_per_product):
            block = points[s:s + rows_per_product]
            scores = block.astype(np.float32) @ vectors.T
            scores *= -2.0
            scores += self._sq_norms32[None, :]
            rows = np.arange(len(block))
            best = np.empty((len(block), peel), dtype=np.intp)
            score = np.empty((len(block), peel), dtype=np.float32)
            for j in range(peel):
                best[:, j] = np.argmin(scores, axis=1)
                score[:, j] = scores[rows, best[:, j]]
                scores[rows, best[:, j]] = np.inf
            limit = score[:, m - 1] + _float32_score_error(p_norm[s:s + rows_per_product], self._max_norm, self.d)
            clear = score[:, m] > limit if peel > m else np.ones(len(block), dtype=bool)
            c = np.flatnonzero(clear)
            cand = best[c, :m]
            exact = np.linalg.norm(vectors[cand].astype(np.float64) - block[c, None, :], axis=2)
            order = np.lexsort((cand, exact), axis=1)
            ids[s + c], dist[s + c] = np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)
            for j in range(peel):                  # the peeled scores back, for the rows that need them
                scores[rows, best[:, j]] = score[:, j]
            for r in np.flatnonzero(~clear):
                cand = np.flatnonzero(scores[r] <= limit[r])
                exact = np.linalg.norm(vectors[cand].astype(np.float64) - block[r], axis=1)
                order = np.lexsort((cand, exact))[:m]
                ids[s + r], dist[s + r] = cand[order], exact[order]
        return ids, dist

    def squared_norms(self) -> np.ndarray:
        """Exact (float64) squared norms of the vectors, computed once per index and kept on it."""
        self._ensure_norms()
        return self._sq_norms

    def _ensure_norms(self) -> None:
        if self._sq_norms is None:
            self._sq_norms = np.einsum("ij,ij->i", self.vectors, self.vectors, dtype=np.float64)
            self._max_norm = float(np.sqrt(self._sq_norms.max()))
            self._sq_norms32 = self._sq_norms.astype(np.float32)

    # ---- embedding-only tables of the mechanisms -------------------------------------------
    def table(self, name: str, compute: Callable[["EmbeddingIndex"], np.ndarray],
              params: dict | None = None) -> np.ndarray:
        """A table that depends only on the embedding (a KDE prior, a covariance square root):
        computed once, stored in the index directory with the manifest updated, memory-mapped.

        `params` (JSON-able) are part of the table's identity: other parameters, another table.
        Processes on one machine serialise on a lock file, so the table is computed once; a
        read-only index directory gets the table computed in memory (logged, without data).
        """
        key = table_key(name, params)
        if key in self._tables:
            return self._tables[key]
        try:
            lock = open(self.path / TABLE_LOCK, "a+")
        except OSError:
            logging.warning("dptext: index directory %s is read-only; table %s computed in memory", self.path, key)
            self._tables[key] = np.asarray(compute(self))
            return self._tables[key]
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
            entry = manifest.get("tables", {}).get(key)
            if entry is None:
                started = time.time()
                array = np.ascontiguousarray(compute(self))
                array = array.astype(array.dtype.newbyteorder("<"), copy=False)
                file = f"{key}.{array.dtype.str.lstrip('<|')}"
                _write_atomically(self.path / file, array.tofile)
                manifest["files"][file] = {"sha256": sha256_file(self.path / file), "bytes": array.nbytes,
                                           "dtype": array.dtype.str, "shape": list(array.shape)}
                entry = {"file": file, "name": name, "params": params or {},
                         "build_seconds": round(time.time() - started, 2)}
                manifest.setdefault("tables", {})[key] = entry
                text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
                _write_atomically(self.path / MANIFEST, lambda f: Path(f).write_text(text, encoding="utf-8"))
            meta = manifest["files"][entry["file"]]
            self.manifest.setdefault("tables", {})[key] = entry
            self.manifest["files"][entry["file"]] = meta
        self._tables[key] = np.memmap(self.path / entry["file"], dtype=np.dtype(meta["dtype"]), mode="r",
                                      shape=tuple(meta["shape"]))
        return self._tables[key]

    # ---- build ---------------------------------------------------------------------------
    @classmethod
    def build(cls, words: Sequence[str], vectors: np.ndarray, out_dir, neighbours: int = DEFAULT_NEIGHBOURS,
              annoy_trees: int = DEFAULT_ANNOY_TREES, source: dict | None = None,
              progress: bool = True, tables: Tables | None = None) -> "EmbeddingIndex":
        """Compute the exact tables (unless a distributed build already did) and write the index
        directory; returns the loaded index."""
        words = list(words)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        _check_build_inputs(words, vectors, neighbours)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        if tables is None:
            tables = build_tables(vectors, neighbours, progress=progress)
        elif tables.neighbour_ids.shape != (n, neighbours + 1):
            raise ValueError(f"tables of shape {tables.neighbour_ids.shape} for {n} words and K={neighbours}")
        arrays = {
            VECTORS: vectors,
            NEIGHBOUR_IDS: tables.neighbour_ids,
            NEIGHBOUR_DISTANCES: tables.neighbour_distances,
        }
        for name, array in arrays.items():
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(out / name)
        (out / VOCAB).write_text("".join(w + "\n" for w in words), encoding="utf-8")
        _build_annoy(vectors, out / ANNOY, annoy_trees)
        files = {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                 for name in (VOCAB, ANNOY, *arrays)}
        for name, array in arrays.items():
            files[name].update(dtype=array.dtype.newbyteorder("<").str, shape=list(array.shape))
        manifest = {
            "format_version": FORMAT_VERSION,
            "n": n, "d": d, "neighbours": neighbours,
            "dmin": tables.dmin, "dmin_pair": [words[i] for i in tables.dmin_pair],
            "dmax": tables.dmax, "dmax_pair": [words[i] for i in tables.dmax_pair],
            "metric": "euclidean",
            "annoy_trees": annoy_trees,
            "source": source or {},
            "files": files,
            "build_seconds": round(time.time() - started, 2),
        }
        manifest["embedding_id"] = _embedding_id(files)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return cls.load(out, verify=False)

    # ---- load ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path, verify: bool = True) -> "EmbeddingIndex":
        """Memory-map an index directory; verify sizes always and sha256 hashes when asked.

        A remote index (gs://... or any Beam filesystem URI) is first copied to local disk once
        per machine (see localize), since Annoy and numpy memory-map local files only.
        """
        if "://" in str(path):
            path = localize(str(path))
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise IndexLoadError(f"{path}: index directory not found (build one with `dptext build-index`)")
        if not manifest_path.is_file():
            raise IndexLoadError(f"{manifest_path}: missing manifest; this is not a dptext index directory")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise IndexLoadError(f"{manifest_path}: corrupt manifest ({err})") from None
        if isinstance(manifest, dict) and manifest.get("format_version") != FORMAT_VERSION:
            raise IndexLoadError(f"{manifest_path}: index format {manifest.get('format_version')!r} "
                                 f"is not supported (this dptext reads format {FORMAT_VERSION}); rebuild it")
        check_manifest(manifest, manifest_path)
        for name, meta in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise IndexLoadError(f"{file}: missing from the index directory")
            size = file.stat().st_size
            if size != meta["bytes"]:
                raise IndexLoadError(f"{file}: {size} bytes, the manifest says {meta['bytes']}; "
                                     "the file is truncated or corrupt")
            if verify and sha256_file(file) != meta["sha256"]:
                raise IndexLoadError(f"{file}: sha256 does not match the manifest; the file is corrupt")
        arrays = {name: np.memmap(path / name, dtype=np.dtype(manifest["files"][name]["dtype"]), mode="r",
                                  shape=tuple(manifest["files"][name]["shape"]))
                  for name in (VECTORS, NEIGHBOUR_IDS, NEIGHBOUR_DISTANCES)}
        words = (path / VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
        if len(words) != manifest["n"]:
            raise IndexLoadError(f"{path / VOCAB}: {len(words)} words, the manifest says {manifest['n']}")
        return cls(path, manifest, words, arrays[VECTORS], arrays[NEIGHBOUR_IDS], arrays[NEIGHBOUR_DISTANCES])


# The manifest fields a loaded index relies on, and the arrays' element types as build writes them.
ARRAY_DTYPES = {VECTORS: "<f4", NEIGHBOUR_IDS: "<i4", NEIGHBOUR_DISTANCES: "<f4"}
_REBUILD = "restore the manifest or rebuild the index with `dptext build-index`"


def check_manifest(manifest, where) -> None:
    """Every manifest field the index relies on, with its type and range, so a hand-edited or
    damaged manifest fails at load naming the field, not later inside numpy or a mechanism."""
    def bad(field: str, problem: str) -> IndexLoadError:
        return IndexLoadError(f"{where}: field {field!r} {problem}; {_REBUILD}")

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(manifest, dict):
        raise IndexLoadError(f"{where}: the manifest is a JSON {type(manifest).__name__}, not an object; {_REBUILD}")
    for field, minimum in (("n", 2), ("d", 1), ("neighbours", 1)):
        if field not in manifest:
            raise bad(field, "is missing")
        if not integer(manifest[field]) or manifest[field] < minimum:
            raise bad(field, f"must be an integer >= {minimum}, got {manifest[field]!r}")
    n, d, k = manifest["n"], manifest["d"], manifest["neighbours"]
    if k >= n:
        raise bad("neighbours", f"must be below n = {n}, got {k}")
    for field in ("dmin", "dmax"):
        if field not in manifest:
            raise bad(field, "is missing")
        if not number(manifest[field]) or manifest[field] <= 0:
            raise bad(field, f"must be a finite number > 0 (a distance between distinct words), "
                             f"got {manifest[field]!r}")
    if manifest["dmax"] < manifest["dmin"]:
        raise bad("dmax", f"must be >= dmin {manifest['dmin']!r}, got {manifest['dmax']!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files", "is missing" if files is None else f"must be an object, got a {type(files).__name__}")
    shapes = {VECTORS: [n, d], NEIGHBOUR_IDS: [n, k + 1], NEIGHBOUR_DISTANCES: [n, k + 1]}
    for name in (VOCAB, ANNOY, *shapes):
        if name not in files:
            raise bad(f"files.{name}", "is missing")
    for name, meta in files.items():
        field = f"files.{name}"
        if not isinstance(meta, dict):
            raise bad(field, f"must be an object, got a {type(meta).__name__}")
        if not isinstance(meta.get("sha256"), str) or len(meta["sha256"]) != 64:
            raise bad(f"{field}.sha256", f"must be a 64-digit hex string, got {meta.get('sha256')!r}")
        if not integer(meta.get("bytes")) or meta["bytes"] < 0:
            raise bad(f"{field}.bytes", f"must be an integer >= 0, got {meta.get('bytes')!r}")
        if name in shapes or "dtype" in meta or "shape" in meta:
            expected = ARRAY_DTYPES.get(name)
            try:
                dtype = np.dtype(meta.get("dtype"))
                valid = isinstance(meta.get("dtype"), str) and dtype.kind in "biuf"
            except TypeError:
                valid = False
            if not valid or (expected is not None and meta["dtype"] != expected):
                want = expected or "a little-endian numeric dtype such as '<f4'"
                raise bad(f"{field}.dtype", f"must be {want!r}, got {meta.get('dtype')!r}")
            shape = meta.get("shape")
            if not (isinstance(shape, list) and all(integer(x) and x >= 0 for x in shape)):
                raise bad(f"{field}.shape", f"must be a list of integers, got {shape!r}")
            if name in shapes and shape != shapes[name]:
                raise bad(f"{field}.shape", f"must be {shapes[name]} for n={n}, d={d}, neighbours={k}, got {shape}")
            if math.prod(shape) * dtype.itemsize != meta["bytes"]:
                raise bad(f"{field}.bytes", f"must be {math.prod(shape) * dtype.itemsize} for shape {shape} "
                                            f"and dtype {meta['dtype']}, got {meta['bytes']}")
    tables = manifest.get("tables", {})
    if not isinstance(tables, dict):
        raise bad("tables", f"must be an object, got a {type(tables).__name__}")
    for key, entry in tables.items():
        if not isinstance(entry, dict) or entry.get("file") not in files or "dtype" not in files[entry["file"]]:
            raise bad(f"tables.{key}", "must name an array file listed under 'files'")


def table_key(name: str, params: dict | None) -> str:
    """The file stem of a cached table: its name, plus a short hash of its parameters."""
    if not params:
        return name
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """write(temporary path), then rename into place: readers never see half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    write(str(partial))
    os.replace(partial, path)


def _float32_score_error(point_norms: np.ndarray, max_norm: float, d: int) -> np.ndarray:
    """Twice a bound on |float32 (|v|^2 - 2 p.v) - exact| (Higham 3.1 for the dot product)."""
    error = 2 * gamma32(d) * point_norms * max_norm + 4 * U32 * (max_norm ** 2 + 2 * point_norms * max_norm)
    return 2 * error + 1e-12


def localize(uri: str) -> Path:
    """Copy a remote index directory to a local cache once; return the local directory.

    The local directory is named by the hash of the remote manifest, so a rebuilt index gets a
    fresh copy. Each file is written to a temporary name and renamed into place, and the manifest
    goes last, so concurrent workers on one machine never read half a file or half a directory.
    """
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    def open_remote(name):
        return FileSystems.open(FileSystems.join(uri, name), compression_type=CompressionTypes.UNCOMPRESSED)

    try:
        with open_remote(MANIFEST) as handle:
            manifest_bytes = handle.read()
        manifest = json.loads(manifest_bytes)
    except Exception as err:   # any filesystem's not-found or IO error, or a corrupt manifest
        raise IndexLoadError(f"{uri}/{MANIFEST}: cannot read the index manifest ({err})") from None
    check_manifest(manifest, f"{uri}/{MANIFEST}")
    root = Path(os.environ.get("DPTEXT_INDEX_CACHE") or Path(tempfile.gettempdir()) / "dptext-index")
    local = root / hashlib.sha256(uri.encode() + manifest_bytes).hexdigest()[:20]
    if (local / MANIFEST).is_file():
        return local
    local.mkdir(parents=True, exist_ok=True)
    for name, meta in manifest.get("files", {}).items():
        target = local / name
        if target.is_file() and target.stat().st_size == meta["bytes"]:
            continue

        def copy(partial, name=name):
            with open_remote(name) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        _write_atomically(target, copy)
    _write_atomically(local / MANIFEST, lambda partial: Path(partial).write_bytes(manifest_bytes))
    return local


def _check_build_inputs(words: list[str], vectors: np.ndarray, neighbours: int) -> None:
    n = len(words)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"{n} words but vectors of shape {vectors.shape}")
    if n < 2:
        raise ValueError("an index needs at least 2 words")
    if not 1 <= neighbours <= n - 1:
        raise ValueError(f"neighbours must be between 1 and n - 1 = {n - 1}, got {neighbours}")
    if len(set(words)) != n:
        raise ValueError("duplicate words: read_embedding keeps the first of each")
    bad = next((w for w in words if not w or "\n" in w or "\r" in w), None)
    if bad is not None:
        raise ValueError("a word is empty or contains a line break; the vocabulary file is one word per line")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")


def _build_annoy(vectors: np.ndarray, path: Path, trees: int) -> None:
    from annoy import AnnoyIndex

    forest = AnnoyIndex(vectors.shape[1], "euclidean")
    forest.set_seed(1)  # the forest's shape is not private; a fixed seed makes builds reproducible
    for i, v in enumerate(vectors):
        forest.add_item(i, v)
    forest.build(trees, n_jobs=-1)
    tmp = path.with_suffix(".tmp")
    forest.save(str(tmp))
    forest.unload()
    os.replace(tmp, path)


def _embedding_id(files: dict) -> str:
    """A short id for the embedding content: the hash of the vocabulary and vectors files."""
    digest = hashlib.sha256((files[VOCAB]["sha256"] + files[VECTORS]["sha256"]).encode()).hexdigest()
    return digest[:16]
